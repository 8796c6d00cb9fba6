/*
 * sink_emit_s3.c - $emit to Amazon S3, the $emit sink of the s3 row of
 * connectors.def: {connectionName, bucket, region, path, config:
 * {writeOptions: {count, bytes, interval}, delimiter, outputFormat,
 * compression}}. The files and their uploads are objstore.c's; this file
 * makes the requests: path-style URLs (endpoint/bucket/key, which both AWS
 * and the emulators serve), signed with SigV4 (aws.c). The probe at start
 * is GetBucketLocation, which needs the bucket and accepted credentials.
 */
#include "connectors/connectors.h"
#include "connectors/objstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_REGION "us-east-1"

static bool
s3_request(const aspen_conn_t *conn, const char *region, const char *bucket,
           const char *key, const void *body, size_t len, CURL *h,
           struct curl_slist **hdrs, aspen_error_t *err)
{
   const aspen_aws_t *aws = aspen__conn_s3_aws(conn);
   if (!region) {
      region = aws->region ? aws->region : DEFAULT_REGION;
   }
   char url[4096];
   aspen__aws_base_url(aws, "s3", region, url, sizeof url);
   size_t n = strlen(url);
   snprintf(url + n, sizeof url - n, "/");
   aspen__objstore_encode_path(bucket, url, sizeof url);
   char sha[65];
   if (!key) {
      n = strlen(url);
      snprintf(url + n, sizeof url - n, "?location");
      aspen__aws_sha256_hex("", 0, sha);
   } else {
      n = strlen(url);
      snprintf(url + n, sizeof url - n, "/");
      aspen__objstore_encode_path(key, url, sizeof url);
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
      *hdrs = curl_slist_append(*hdrs, "Content-Type: application/octet-stream");
      *hdrs = curl_slist_append(*hdrs, "Expect:");
      aspen__aws_sha256_hex(body, len, sha);
   }
   curl_easy_setopt(h, CURLOPT_URL, url);
   if (!aspen__aws_sign(h, hdrs, aws, "s3", region, sha, err)) {
      err->code = ASPEN_ERR_StreamProcessorS3Error;
      return false;
   }
   return true;
}

static const aspen_objstore_backend_t s3_backend = {
   .label = "S3",
   .operator_name = "S3EmitOperator",
   .bucket_opt = "bucket",
   .has_region = true,
   .kind = &aspen_conn_s3_ops,
   .conn_code = ASPEN_ERR_StreamProcessorS3ConnectionError,
   .code = ASPEN_ERR_StreamProcessorS3Error,
   .request = s3_request,
};

static bool
s3_parse(const bson_t *spec, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   return aspen__objstore_parse(&s3_backend, spec, pc, err);
}

static bool
s3_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
        aspen_error_t *err)
{
   return aspen__objstore_open(&s3_backend, rt, spec, state, err);
}

const aspen_sink_ops_t aspen_sink_s3_ops = {
   .operator_name = "S3EmitOperator",
   .parse = s3_parse,
   .open = s3_open,
   .write = aspen__objstore_write,
   .flush = aspen__objstore_flush,
   .close = aspen__objstore_close,
};
