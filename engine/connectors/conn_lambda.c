/*
 * conn_lambda.c - the aws-lambda connection kind: {name, type:
 * "aws-lambda", aws: {roleArn}, region, endpoint, credentials:
 * {accessKeyId, secretAccessKey}}. ASP's AWS Lambda connection (its
 * Admin API type "AWSLambda", external-function-connection in ASP's docs)
 * has only aws.roleArn: Atlas assumes that role. aspen cannot, so it signs
 * the Invoke API requests (SigV4) with the keys of `credentials` (else the
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of aspen's environment), in
 * `region` (default us-east-1), at `endpoint` (default AWS's own; a local
 * Lambda-compatible server such as moto's for tests). Listings show the
 * role, region and endpoint, never a key.
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
   free(l->role_arn);
   free(l->region);
   free(l->endpoint);
   if (l->userpwd) {
      memset(l->userpwd, 0, strlen(l->userpwd));
      free(l->userpwd);
   }
   bson_destroy(&l->listed);
   free(l);
}

/* The string at `key` of `doc` into *out (copied); false with err set
 * when it is there but not a non-empty string. */
static bool
opt_string(const bson_t *doc, const char *key, const char *where,
           const char *path, char **out, aspen_error_t *err)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, doc, key)) {
      return true;
   }
   if (!BSON_ITER_HOLDS_UTF8(&it) || !*bson_iter_utf8(&it, NULL)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "config key '%s.%s' must be a non-empty string", where,
                      path);
      return false;
   }
   free(*out);
   *out = aspen_xstrdup(bson_iter_utf8(&it, NULL));
   return true;
}

/* The sub-document at `key` (a view), or false with err set. */
static bool
sub_doc(const bson_t *entry, const char *key, const char *where, bson_t *out,
        const char *const *allowed, aspen_error_t *err)
{
   bson_iter_t it, si;
   uint32_t len;
   const uint8_t *data;
   bson_init(out);
   if (!bson_iter_init_find(&it, entry, key)) {
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "config key '%s.%s' must be an object", where, key);
      return false;
   }
   bson_iter_document(&it, &len, &data);
   bson_destroy(out);
   (void) bson_init_static(out, data, len);
   bson_iter_init(&si, out);
   while (bson_iter_next(&si)) {
      const char *const *a = allowed;
      while (*a && strcmp(*a, bson_iter_key(&si)) != 0) {
         a++;
      }
      if (!*a) {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "unknown config key '%s.%s.%s'", where, key,
                         bson_iter_key(&si));
         return false;
      }
   }
   return true;
}

static bool
lambda_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
             aspen_error_t *err)
{
   static const char *const aws_keys[] = {"roleArn", NULL};
   static const char *const cred_keys[] = {"accessKeyId", "secretAccessKey",
                                           NULL};
   aspen_conn_lambda_t *l = aspen_xcalloc(1, sizeof *l);
   char *key_id = NULL, *secret = NULL;
   bson_t aws, creds;
   bson_init(&l->listed);
   *opts = NULL;
   if (!sub_doc(entry, "aws", cfg->where, &aws, aws_keys, err) ||
       !opt_string(&aws, "roleArn", cfg->where, "aws.roleArn", &l->role_arn,
                   err) ||
       !opt_string(entry, "region", cfg->where, "region", &l->region, err) ||
       !opt_string(entry, "endpoint", cfg->where, "endpoint", &l->endpoint,
                   err) ||
       !sub_doc(entry, "credentials", cfg->where, &creds, cred_keys, err) ||
       !opt_string(&creds, "accessKeyId", cfg->where,
                   "credentials.accessKeyId", &key_id, err) ||
       !opt_string(&creds, "secretAccessKey", cfg->where,
                   "credentials.secretAccessKey", &secret, err)) {
      goto fail;
   }
   if (!l->region) {
      l->region = aspen_xstrdup("us-east-1");
   }
   if (!l->endpoint) {
      size_t n = strlen(l->region) + 40;
      l->endpoint = aspen_xmalloc(n);
      snprintf(l->endpoint, n, "https://lambda.%s.amazonaws.com", l->region);
   } else if (strncmp(l->endpoint, "https://", 8) != 0 &&
              strncmp(l->endpoint, "http://", 7) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.endpoint' must start with https:// or "
                      "http://",
                      cfg->where);
      goto fail;
   }
   if (!key_id && getenv("AWS_ACCESS_KEY_ID")) {
      key_id = aspen_xstrdup(getenv("AWS_ACCESS_KEY_ID"));
   }
   if (!secret && getenv("AWS_SECRET_ACCESS_KEY")) {
      secret = aspen_xstrdup(getenv("AWS_SECRET_ACCESS_KEY"));
   }
   if (!key_id || !secret || strchr(key_id, ':')) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.credentials' needs accessKeyId and "
                      "secretAccessKey (or AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY in aspen's environment): aspen "
                      "signs the Invoke requests itself",
                      cfg->where);
      goto fail;
   }
   size_t n = strlen(key_id) + strlen(secret) + 2;
   l->userpwd = aspen_xmalloc(n);
   snprintf(l->userpwd, n, "%s:%s", key_id, secret);
   snprintf(l->sigv4, sizeof l->sigv4, "aws:amz:%s:lambda", l->region);
   if (l->role_arn) {
      bson_t a;
      BSON_APPEND_DOCUMENT_BEGIN(&l->listed, "aws", &a);
      BSON_APPEND_UTF8(&a, "roleArn", l->role_arn);
      bson_append_document_end(&l->listed, &a);
   }
   BSON_APPEND_UTF8(&l->listed, "region", l->region);
   char redacted[1024];
   aspen_uri_redact(l->endpoint, redacted, sizeof redacted);
   BSON_APPEND_UTF8(&l->listed, "endpoint", redacted);
   free(key_id);
   free(secret);
   *opts = l;
   return true;

fail:
   free(key_id);
   free(secret);
   lambda_destroy(l);
   return false;
}

static void
lambda_list(const void *opts, bson_t *doc)
{
   const aspen_conn_lambda_t *l = opts;
   if (l) {
      bson_concat(doc, &l->listed);
   }
}

static const char *const lambda_keys[] = {"aws", "region", "endpoint",
                                          "credentials", NULL};

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
