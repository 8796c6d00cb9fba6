/*
 * conn_kinesis.c - the Kinesis connection kind (ASP's AWSKinesisDataStreams
 * connection): its config entry ({name, type: "kinesis", aws: {roleArn}}
 * as ASP's, plus aspen's region, endpoint and credentials, read by aws.c so
 * that an emulator such as kinesalite can serve) and what listings show of
 * it (never the secret key). Its $source is source_kinesis.c, its $emit
 * sink sink_emit_kinesis.c.
 */
#include "connectors/connectors.h"
#include "connectors/kinesis_int.h"

#include <stdlib.h>

static void
kinesis_destroy(void *opts)
{
   aspen_aws_t *aws = opts;
   if (!aws) {
      return;
   }
   aspen__aws_cleanup(aws);
   free(aws);
}

static bool
kinesis_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
              aspen_error_t *err)
{
   *opts = NULL;
   aspen_aws_t *aws = aspen_xcalloc(1, sizeof *aws);
   if (!aspen__aws_parse(cfg, entry, NULL, aws, NULL, err)) {
      kinesis_destroy(aws);
      return false;
   }
   *opts = aws;
   return true;
}

static void
kinesis_list(const void *opts, bson_t *doc)
{
   aspen__aws_list(opts, NULL, doc);
}

static const char *const kinesis_keys[] = {ASPEN_AWS_KEYS, NULL};

const aspen_conn_ops_t aspen_conn_kinesis_ops = {
   .keys = kinesis_keys,
   .parse = kinesis_parse,
   .list = kinesis_list,
   .destroy = kinesis_destroy,
};

const aspen_aws_t *
aspen__conn_kinesis_aws(const aspen_conn_t *conn)
{
   return conn->kind->conn == &aspen_conn_kinesis_ops ? conn->opts : NULL;
}
