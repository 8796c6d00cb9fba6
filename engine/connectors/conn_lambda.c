/*
 * conn_lambda.c - the aws-lambda connection kind: {name, type:
 * "aws-lambda", aws: {roleArn}, region, endpoint, credentials:
 * {accessKeyId, secretAccessKey, sessionToken}}. ASP's AWS Lambda
 * connection (its Admin API type "AWSLambda", external-function-connection
 * in ASP's docs) has only aws.roleArn: Atlas assumes that role. aspen
 * cannot, so it signs the Invoke API requests (SigV4) with the keys of
 * `credentials` (else the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
 * AWS_SESSION_TOKEN of aspen's environment), in `region` (default
 * us-east-1), at `endpoint` (default AWS's own; a local Lambda-compatible
 * server such as moto's for tests). The AWS part is read and signed as for
 * every AWS kind (aws.c). Listings show the role, region and endpoint,
 * never a key.
 */
#include "connectors/conn_lambda.h"
#include "connectors/connectors.h"

#include <stdlib.h>
#include <string.h>

static void
lambda_destroy(void *opts)
{
   aspen_conn_lambda_t *l = opts;
   if (!l) {
      return;
   }
   if (l->aws.secret_key) {
      memset(l->aws.secret_key, 0, strlen(l->aws.secret_key));
   }
   aspen__aws_cleanup(&l->aws);
   free(l->endpoint);
   bson_destroy(&l->listed);
   free(l);
}

static bool
lambda_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
             aspen_error_t *err)
{
   aspen_conn_lambda_t *l = aspen_xcalloc(1, sizeof *l);
   bson_init(&l->listed);
   *opts = NULL;
   if (!aspen__aws_parse(cfg, entry, NULL, &l->aws, NULL, err)) {
      lambda_destroy(l);
      return false;
   }
   if (!l->aws.region) {
      l->aws.region = aspen_xstrdup("us-east-1");
   }
   /* Found now, not at the first invoke: a processor can't start without. */
   if (!l->aws.access_key || !l->aws.secret_key) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.credentials' needs accessKeyId and "
                      "secretAccessKey (or AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY in aspen's environment): aspen "
                      "signs the Invoke requests itself",
                      cfg->where);
      lambda_destroy(l);
      return false;
   }
   char url[1024];
   aspen__aws_base_url(&l->aws, "lambda", l->aws.region, url, sizeof url);
   l->endpoint = aspen_xstrdup(url);
   if (l->aws.role_arn) {
      bson_t a;
      BSON_APPEND_DOCUMENT_BEGIN(&l->listed, "aws", &a);
      BSON_APPEND_UTF8(&a, "roleArn", l->aws.role_arn);
      bson_append_document_end(&l->listed, &a);
   }
   BSON_APPEND_UTF8(&l->listed, "region", l->aws.region);
   char redacted[1024];
   aspen_uri_redact(l->endpoint, redacted, sizeof redacted);
   BSON_APPEND_UTF8(&l->listed, "endpoint", redacted);
   *opts = l;
   return true;
}

static void
lambda_list(const void *opts, bson_t *doc)
{
   const aspen_conn_lambda_t *l = opts;
   if (l) {
      bson_concat(doc, &l->listed);
   }
}

static const char *const lambda_keys[] = {ASPEN_AWS_KEYS, NULL};

const aspen_conn_ops_t aspen_conn_lambda_ops = {
   .keys = lambda_keys,
   .parse = lambda_parse,
   .list = lambda_list,
   .destroy = lambda_destroy,
};

const aspen_conn_lambda_t *
aspen__conn_lambda(const aspen_conn_t *conn)
{
   return conn->kind->conn == &aspen_conn_lambda_ops ? conn->opts : NULL;
}
