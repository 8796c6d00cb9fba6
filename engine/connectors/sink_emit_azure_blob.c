/*
 * sink_emit_azure_blob.c - $emit to Azure Blob Storage, the $emit sink of
 * the azure-blob row of connectors.def: {connectionName, container, path,
 * config: {writeOptions, delimiter, outputFormat, compression}}, written as
 * objstore.c writes files. Each file is one block blob (Put Blob); the
 * probe at start is Get Container Properties. Requests are signed with the
 * storage account's shared key (Authorization: SharedKey, an HMAC-SHA256
 * of the canonical request with the decoded key).
 */
#include "connectors/connectors.h"
#include "connectors/objstore.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API_VERSION "2021-08-06"

/* The path part of `url` ("/devstoreaccount1/c/k" of
 * "http://127.0.0.1:10000/devstoreaccount1/c/k"). */
static const char *
url_path(const char *url)
{
   const char *p = strstr(url, "://");
   p = p ? strchr(p + 3, '/') : NULL;
   return p ? p : "/";
}

static bool
azure_request(const aspen_conn_t *conn, const char *region, const char *bucket,
              const char *key, const void *body, size_t len, CURL *h,
              struct curl_slist **hdrs, aspen_error_t *err)
{
   (void) region;
   const aspen_azure_blob_t *a = aspen__conn_azure_blob(conn);
   if (!a->key_len) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorS3Error,
                      "connection '%s' has no accountKey to sign requests "
                      "with",
                      conn->name);
      return false;
   }
   char url[4096];
   snprintf(url, sizeof url, "%s/", a->endpoint);
   aspen__objstore_encode_path(bucket, url, sizeof url);
   if (key) {
      size_t n = strlen(url);
      snprintf(url + n, sizeof url - n, "/");
      aspen__objstore_encode_path(key, url, sizeof url);
   }
   char date[64];
   time_t now = time(NULL);
   struct tm tm;
   gmtime_r(&now, &tm);
   strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);

   char canon[8192];
   char length[32] = "";
   if (key) {
      snprintf(length, sizeof length, "%zu", len);
      snprintf(canon, sizeof canon,
               "PUT\n\n\n%s\n\napplication/octet-stream\n\n\n\n\n\n\n"
               "x-ms-blob-type:BlockBlob\nx-ms-date:%s\nx-ms-version:%s\n"
               "/%s%s",
               len ? length : "", date, API_VERSION, a->account,
               url_path(url));
   } else {
      snprintf(canon, sizeof canon,
               "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:%s\nx-ms-version:%s\n"
               "/%s%s\nrestype:container",
               date, API_VERSION, a->account, url_path(url));
      size_t n = strlen(url);
      snprintf(url + n, sizeof url - n, "?restype=container");
   }
   unsigned char mac[32];
   unsigned int mac_len = 0;
   HMAC(EVP_sha256(), a->key, (int) a->key_len, (const unsigned char *) canon,
        strlen(canon), mac, &mac_len);
   char sig[64];
   EVP_EncodeBlock((unsigned char *) sig, mac, (int) mac_len);

   char line[512];
   snprintf(line, sizeof line, "x-ms-date: %s", date);
   *hdrs = curl_slist_append(*hdrs, line);
   *hdrs = curl_slist_append(*hdrs, "x-ms-version: " API_VERSION);
   snprintf(line, sizeof line, "Authorization: SharedKey %s:%s", a->account,
            sig);
   *hdrs = curl_slist_append(*hdrs, line);
   if (key) {
      *hdrs = curl_slist_append(*hdrs, "x-ms-blob-type: BlockBlob");
      *hdrs = curl_slist_append(*hdrs,
                                "Content-Type: application/octet-stream");
      *hdrs = curl_slist_append(*hdrs, "Expect:");
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
   }
   curl_easy_setopt(h, CURLOPT_URL, url);
   return true;
}

static const aspen_objstore_backend_t azure_backend = {
   .label = "Azure Blob",
   .operator_name = "AzureBlobEmitOperator",
   .bucket_opt = "container",
   .has_region = false,
   .kind = &aspen_conn_azure_blob_ops,
   .conn_code = ASPEN_ERR_StreamProcessorS3ConnectionError,
   .code = ASPEN_ERR_StreamProcessorS3Error,
   .request = azure_request,
};

static bool
azure_parse(const bson_t *spec, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   return aspen__objstore_parse(&azure_backend, spec, pc, err);
}

static bool
azure_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
           aspen_error_t *err)
{
   return aspen__objstore_open(&azure_backend, rt, spec, state, err);
}

const aspen_sink_ops_t aspen_sink_azure_blob_ops = {
   .operator_name = "AzureBlobEmitOperator",
   .parse = azure_parse,
   .open = azure_open,
   .write = aspen__objstore_write,
   .flush = aspen__objstore_flush,
   .close = aspen__objstore_close,
};
