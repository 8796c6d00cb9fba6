/*
 * sink_emit_s3.c - $emit to Amazon S3, the $emit sink of the s3 row of
 * connectors.def: {connectionName, bucket, region, path, config:
 * {writeOptions: {count, bytes, interval}, delimiter, outputFormat,
 * compression}}. The files and their uploads are objstore.c's; this file
 * makes the requests: path-style URLs (endpoint/bucket/key, which both AWS
 * and the emulators serve), signed with SigV4 (aws.c). The probe at start
 * is GetBucketLocation, which needs the bucket and accepted credentials. A
 * file goes up with PutObject, a large one as a multipart upload
 * (CreateMultipartUpload, UploadPart, CompleteMultipartUpload): S3 shows
 * the object only once it is complete.
 */
#include "connectors/connectors.h"
#include "connectors/objstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_REGION "us-east-1"

static bool
s3_request(const aspen_conn_t *conn, const char *region, const char *bucket,
           const aspen_objreq_t *req, CURL *h, struct curl_slist **hdrs,
           aspen_error_t *err)
{
   const aspen_aws_t *aws = aspen__conn_s3_aws(conn);
   if (!region) {
      region = aws->region ? aws->region : DEFAULT_REGION;
   }
   char url[4096];
   aspen__aws_base_url(aws, "s3", region, url, sizeof url);
   size_t n = strlen(url);
   snprintf(url + n, sizeof url - n, "/");
   aspen__objstore_encode(bucket, true, url, sizeof url);
   if (req->kind != ASPEN_OBJ_PROBE) {
      n = strlen(url);
      snprintf(url + n, sizeof url - n, "/");
      aspen__objstore_encode(req->key, true, url, sizeof url);
   }
   n = strlen(url);
   const char *method = "PUT";
   switch (req->kind) {
   case ASPEN_OBJ_PROBE:
      /* libcurl signs the query as written, and the canonical form of a
       * parameter without a value ends with "=". */
      snprintf(url + n, sizeof url - n, "?location=");
      method = NULL;
      break;
   case ASPEN_OBJ_PUT:
      break;
   case ASPEN_OBJ_MP_BEGIN:
      snprintf(url + n, sizeof url - n, "?uploads=");
      method = "POST";
      break;
   case ASPEN_OBJ_MP_PART:
      snprintf(url + n, sizeof url - n, "?partNumber=%d&uploadId=", req->part);
      aspen__objstore_encode(req->upload_id, false, url, sizeof url);
      break;
   case ASPEN_OBJ_MP_COMMIT:
      snprintf(url + n, sizeof url - n, "?uploadId=");
      aspen__objstore_encode(req->upload_id, false, url, sizeof url);
      method = "POST";
      break;
   }
   char sha[65];
   aspen__aws_sha256_hex(req->body ? req->body : "", req->len, sha);
   if (method) {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->len);
      *hdrs = curl_slist_append(*hdrs, req->kind == ASPEN_OBJ_MP_COMMIT
                                          ? "Content-Type: application/xml"
                                          : "Content-Type: "
                                            "application/octet-stream");
      /* No "Expect:" to turn 100-continue off: libcurl would sign that
       * empty header, and S3 would not find it in the request. */
   }
   curl_easy_setopt(h, CURLOPT_URL, url);
   if (!aspen__aws_sign(h, hdrs, aws, "s3", region, sha, err)) {
      err->code = ASPEN_ERR_StreamProcessorS3Error;
      return false;
   }
   return true;
}

static char *
s3_commit_body(int n, char *const *etags)
{
   size_t cap = 128;
   for (int i = 0; i < n; i++) {
      cap += strlen(etags[i]) + 96;
   }
   char *out = aspen_xmalloc(cap);
   size_t len = (size_t) snprintf(out, cap, "<CompleteMultipartUpload>");
   for (int i = 0; i < n; i++) {
      len += (size_t) snprintf(out + len, cap - len,
                               "<Part><PartNumber>%d</PartNumber><ETag>%s"
                               "</ETag></Part>",
                               i + 1, etags[i]);
   }
   snprintf(out + len, cap - len, "</CompleteMultipartUpload>");
   return out;
}

static char *
s3_upload_id(const char *resp)
{
   char id[1024];
   aspen__objstore_xml_field(resp, "UploadId", id, sizeof id);
   return id[0] ? aspen_xstrdup(id) : NULL;
}

static const aspen_objstore_backend_t s3_backend = {
   .label = "S3",
   .operator_name = "S3EmitOperator",
   .bucket_opt = "bucket",
   .has_region = true,
   .kind = &aspen_conn_s3_ops,
   .conn_code = ASPEN_ERR_StreamProcessorS3ConnectionError,
   .code = ASPEN_ERR_StreamProcessorS3Error,
   .mp_begin = true,
   .request = s3_request,
   .commit_body = s3_commit_body,
   .upload_id = s3_upload_id,
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
