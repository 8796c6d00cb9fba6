/*
 * sink_emit_azure_blob.c - $emit to Azure Blob Storage, the $emit sink of
 * the azure-blob row of connectors.def: {connectionName, container, path,
 * config: {writeOptions, delimiter, outputFormat, compression}}, written as
 * objstore.c writes files. Each file is one block blob: Put Blob, or for a
 * large one Put Block per part and Put Block List, which makes the blob
 * appear whole; the probe at start is Get Container Properties. Requests are signed with the
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

/* Block `part`'s id: base64 of its number in 8 digits (a blob's block ids
 * must all have one length). */
static void
block_id(int part, char out[16])
{
   char digits[16];
   snprintf(digits, sizeof digits, "%08d", part);
   EVP_EncodeBlock((unsigned char *) out, (const unsigned char *) digits, 8);
}

static bool
azure_request(const aspen_conn_t *conn, const char *region, const char *bucket,
              const aspen_objreq_t *req, CURL *h, struct curl_slist **hdrs,
              aspen_error_t *err)
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
   aspen__objstore_encode(bucket, true, url, sizeof url);
   if (req->kind != ASPEN_OBJ_PROBE) {
      size_t n = strlen(url);
      snprintf(url + n, sizeof url - n, "/");
      aspen__objstore_encode(req->key, true, url, sizeof url);
   }
   char path[4096];
   snprintf(path, sizeof path, "%s", url_path(url));
   char date[64];
   time_t now = time(NULL);
   struct tm tm;
   gmtime_r(&now, &tm);
   strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);

   /* The query (in the URL, encoded) and its canonical form (decoded,
    * one "\nname:value" per parameter, sorted by name). */
   char query[128] = "", canon_query[128] = "", id[16];
   const char *blob_type = "";
   switch (req->kind) {
   case ASPEN_OBJ_PROBE:
      snprintf(query, sizeof query, "?restype=container");
      snprintf(canon_query, sizeof canon_query, "\nrestype:container");
      break;
   case ASPEN_OBJ_PUT:
      blob_type = "x-ms-blob-type:BlockBlob\n";
      break;
   case ASPEN_OBJ_MP_PART:
      block_id(req->part, id);
      snprintf(query, sizeof query, "?comp=block&blockid=");
      aspen__objstore_encode(id, false, query, sizeof query);
      snprintf(canon_query, sizeof canon_query, "\nblockid:%s\ncomp:block",
               id);
      break;
   case ASPEN_OBJ_MP_COMMIT:
      snprintf(query, sizeof query, "?comp=blocklist");
      snprintf(canon_query, sizeof canon_query, "\ncomp:blocklist");
      break;
   case ASPEN_OBJ_MP_BEGIN: /* not used: blocks need no begin */
      break;
   }
   bool put = req->kind != ASPEN_OBJ_PROBE;
   char length[32] = "";
   if (put && req->len) {
      snprintf(length, sizeof length, "%zu", req->len);
   }
   char canon[8192];
   snprintf(canon, sizeof canon,
            "%s\n\n\n%s\n\n%s\n\n\n\n\n\n\n%sx-ms-date:%s\nx-ms-version:%s\n"
            "/%s%s%s",
            put ? "PUT" : "GET", length,
            put ? "application/octet-stream" : "", blob_type, date,
            API_VERSION, a->account, path, canon_query);
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
   if (put) {
      if (req->kind == ASPEN_OBJ_PUT) {
         *hdrs = curl_slist_append(*hdrs, "x-ms-blob-type: BlockBlob");
      }
      *hdrs = curl_slist_append(*hdrs,
                                "Content-Type: application/octet-stream");
      *hdrs = curl_slist_append(*hdrs, "Expect:");
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->len);
   }
   size_t n = strlen(url);
   snprintf(url + n, sizeof url - n, "%s", query);
   curl_easy_setopt(h, CURLOPT_URL, url);
   return true;
}

static char *
azure_commit_body(int n, char *const *etags)
{
   (void) etags;
   size_t cap = 96 + (size_t) n * 40;
   char *out = aspen_xmalloc(cap);
   size_t len = (size_t) snprintf(out, cap,
                                  "<?xml version=\"1.0\" encoding=\"utf-8\"?>"
                                  "<BlockList>");
   for (int i = 0; i < n; i++) {
      char id[16];
      block_id(i + 1, id);
      len += (size_t) snprintf(out + len, cap - len, "<Latest>%s</Latest>",
                               id);
   }
   snprintf(out + len, cap - len, "</BlockList>");
   return out;
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
   .commit_body = azure_commit_body,
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
