/*
 * conn_s3.c - the S3 connection kind: its config entry ({name, type: "s3",
 * aws: {roleArn, testBucket}} as ASP's, plus aspen's region, endpoint and
 * credentials: aws.c) and what listings show of it (no secret). Its one
 * sink is $emit (sink_emit_s3.c); S3 is no $source in ASP.
 */
#include "connectors/connectors.h"
#include "connectors/objstore.h"

#include <stdlib.h>

typedef struct {
   aspen_aws_t aws;
   bson_t listed_aws; /* aws.testBucket */
} aspen_conn_s3_t;

static void
s3_destroy(void *opts)
{
   aspen_conn_s3_t *c = opts;
   if (!c) {
      return;
   }
   aspen__aws_cleanup(&c->aws);
   bson_destroy(&c->listed_aws);
   free(c);
}

static bool
s3_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
         aspen_error_t *err)
{
   static const char *const aws_extra[] = {"testBucket", NULL};
   *opts = NULL;
   aspen_conn_s3_t *c = aspen_xcalloc(1, sizeof *c);
   bson_init(&c->listed_aws);
   if (!aspen__aws_parse(cfg, entry, aws_extra, &c->aws, &c->listed_aws,
                         err)) {
      s3_destroy(c);
      return false;
   }
   *opts = c;
   return true;
}

static void
s3_list(const void *opts, bson_t *doc)
{
   const aspen_conn_s3_t *c = opts;
   aspen__aws_list(&c->aws, &c->listed_aws, doc);
}

static const char *const s3_keys[] = {ASPEN_AWS_KEYS, NULL};

const aspen_conn_ops_t aspen_conn_s3_ops = {
   .keys = s3_keys,
   .parse = s3_parse,
   .list = s3_list,
   .destroy = s3_destroy,
};

const aspen_aws_t *
aspen__conn_s3_aws(const aspen_conn_t *conn)
{
   if (conn->kind->conn != &aspen_conn_s3_ops || !conn->opts) {
      return NULL;
   }
   return &((const aspen_conn_s3_t *) conn->opts)->aws;
}
