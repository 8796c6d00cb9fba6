/*
 * kinesis.c - one request of the Kinesis Data Streams API (kinesis_int.h).
 *
 * The API is JSON 1.1 over HTTP: POST / with the operation in
 * X-Amz-Target ("Kinesis_20131202.GetRecords"), signed with SigV4 for the
 * service "kinesis" (aws.c, libcurl's CURLOPT_AWS_SIGV4). An error answer
 * is {"__type": "...Exception", "message": "..."} with status 400 (500/503
 * for the service's own trouble); aspen__kinesis_classify tells what to do
 * with it. Record data travels base64-encoded.
 */
#include "connectors/kinesis_int.h"
#include "connectors/connectors.h"
#include "connectors/http_easy.h"
#include "runtime/source.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RESPONSE (16u << 20) /* GetRecords answers up to 10 MB */
#define CALL_RETRY_MS 250

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void
curl_init_once(void)
{
   curl_global_init(CURL_GLOBAL_DEFAULT);
}

void
aspen__kinesis_target_init(aspen_kinesis_target_t *t, const aspen_conn_t *conn,
                           const char *region)
{
   memset(t, 0, sizeof *t);
   t->aws = aspen__conn_kinesis_aws(conn);
   ASPEN_ASSERT(t->aws);
   snprintf(t->region, sizeof t->region, "%s",
            region && *region       ? region
            : t->aws->region        ? t->aws->region
                                    : ASPEN_KINESIS_DEFAULT_REGION);
   aspen__aws_base_url(t->aws, "kinesis", t->region, t->url, sizeof t->url);
   size_t n = strlen(t->url);
   if (n + 1 < sizeof t->url && (n == 0 || t->url[n - 1] != '/')) {
      t->url[n] = '/';
      t->url[n + 1] = '\0';
   }
   snprintf(t->conn_name, sizeof t->conn_name, "%s", conn->name);
}

aspen_kinesis_status_t
aspen__kinesis_classify(CURLcode cc, long http, const char *type)
{
   static const char *const auth[] = {
      "UnrecognizedClientException", "InvalidSignatureException",
      "AccessDeniedException",       "MissingAuthenticationTokenException",
      "IncompleteSignatureException", "ExpiredTokenException",
      "InvalidClientTokenId",        "SignatureDoesNotMatch",
      "KMSAccessDeniedException",    NULL};
   static const char *const retry[] = {
      "ProvisionedThroughputExceededException", "LimitExceededException",
      "ThrottlingException",  "KMSThrottlingException",
      "InternalFailure",      "ServiceUnavailable",
      "InternalFailureException", NULL};
   if (cc != CURLE_OK) {
      return ASPEN_KINESIS_RETRY;
   }
   if (http >= 200 && http < 300) {
      return ASPEN_KINESIS_OK;
   }
   type = type ? type : "";
   if (strcmp(type, "ExpiredIteratorException") == 0) {
      return ASPEN_KINESIS_EXPIRED;
   }
   for (const char *const *a = auth; *a; a++) {
      if (strcmp(type, *a) == 0) {
         return ASPEN_KINESIS_AUTH;
      }
   }
   for (const char *const *a = retry; *a; a++) {
      if (strcmp(type, *a) == 0) {
         return ASPEN_KINESIS_RETRY;
      }
   }
   if (http == 401 || http == 403) {
      return ASPEN_KINESIS_AUTH;
   }
   if (http >= 500 || http == 429 || http == 408) {
      return ASPEN_KINESIS_RETRY;
   }
   return ASPEN_KINESIS_FATAL;
}

aspen_kinesis_req_t *
aspen__kinesis_req_new(const aspen_kinesis_target_t *t, const char *op,
                       const bson_t *body, aspen_error_t *err)
{
   pthread_once(&curl_once, curl_init_once);
   aspen_kinesis_req_t *r = aspen_xcalloc(1, sizeof *r);
   snprintf(r->op, sizeof r->op, "%s", op);
   r->h = curl_easy_init();
   if (!r->h) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKinesisConnectionError,
                      "cannot create an HTTP client for Kinesis");
      free(r);
      return NULL;
   }
   size_t len = 0;
   r->body = bson_as_relaxed_extended_json(body, &len);
   char line[128];
   snprintf(line, sizeof line, "X-Amz-Target: Kinesis_20131202.%s", op);
   r->hdrs = curl_slist_append(r->hdrs, line);
   r->hdrs = curl_slist_append(r->hdrs,
                               "Content-Type: application/x-amz-json-1.1");
   r->hdrs = curl_slist_append(r->hdrs, "Expect:");
   aspen_error_t serr;
   if (!aspen__aws_sign(r->h, &r->hdrs, t->aws, "kinesis", t->region, NULL,
                        &serr)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKinesisConnectionError,
                      "Kinesis connection '%s': %s", t->conn_name,
                      serr.message);
      aspen__kinesis_req_destroy(r);
      return NULL;
   }
   curl_easy_setopt(r->h, CURLOPT_URL, t->url);
   curl_easy_setopt(r->h, CURLOPT_POST, 1L);
   curl_easy_setopt(r->h, CURLOPT_POSTFIELDS, r->body);
   curl_easy_setopt(r->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
   curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, r->hdrs);
   curl_easy_setopt(r->h, CURLOPT_WRITEFUNCTION, aspen__http_body_write);
   r->resp.max = MAX_RESPONSE;
   curl_easy_setopt(r->h, CURLOPT_WRITEDATA, &r->resp);
   curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
   curl_easy_setopt(r->h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
   curl_easy_setopt(r->h, CURLOPT_TIMEOUT_MS, 30000L);
   curl_easy_setopt(r->h, CURLOPT_PRIVATE, r);
   r->started_ms = aspen_clock_mono_ms();
   return r;
}

void
aspen__kinesis_req_destroy(aspen_kinesis_req_t *r)
{
   if (!r) {
      return;
   }
   if (r->h) {
      curl_easy_cleanup(r->h);
   }
   curl_slist_free_all(r->hdrs);
   bson_free(r->body);
   aspen__http_body_free(&r->resp);
   free(r);
}

aspen_kinesis_status_t
aspen__kinesis_req_result(aspen_kinesis_req_t *r, CURLcode cc, bson_t *reply,
                          char *msg, size_t size)
{
   bson_init(reply);
   msg[0] = '\0';
   if (cc != CURLE_OK) {
      snprintf(msg, size, "%s: %s", r->op,
               r->resp.too_big ? "answer too large"
                                 : curl_easy_strerror(cc));
      return r->resp.too_big ? ASPEN_KINESIS_FATAL : ASPEN_KINESIS_RETRY;
   }
   long http = 0;
   curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &http);
   bson_error_t berr;
   bool parsed = r->resp.len > 0 &&
                 bson_init_from_json(reply, r->resp.data, (ssize_t) r->resp.len,
                                     &berr);
   if (!parsed) {
      bson_init(reply);
   }
   const char *type = NULL, *message = NULL;
   bson_iter_t it;
   if (parsed && bson_iter_init_find(&it, reply, "__type") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      type = bson_iter_utf8(&it, NULL);
      const char *hash = strrchr(type, '#');
      type = hash ? hash + 1 : type;
   }
   if (parsed && (bson_iter_init_find(&it, reply, "message") ||
                  bson_iter_init_find(&it, reply, "Message")) &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      message = bson_iter_utf8(&it, NULL);
   }
   aspen_kinesis_status_t st = aspen__kinesis_classify(cc, http, type);
   if (st == ASPEN_KINESIS_OK && !parsed) {
      snprintf(msg, size, "%s: the answer is not JSON (HTTP %ld)", r->op,
               http);
      return ASPEN_KINESIS_RETRY;
   }
   if (st != ASPEN_KINESIS_OK) {
      snprintf(msg, size, "%s: %s (HTTP %ld): %s", r->op,
               type && *type ? type : "error", http,
               message ? message : "");
   }
   return st;
}

aspen_kinesis_status_t
aspen__kinesis_call(const aspen_kinesis_target_t *t, const char *op,
                    const bson_t *body, bson_t *reply, int64_t timeout_ms,
                    bool (*stop)(void *), void *arg, char *msg, size_t size)
{
   int64_t end = aspen_clock_mono_ms() + timeout_ms;
   for (;;) {
      aspen_error_t err;
      aspen_kinesis_req_t *r = aspen__kinesis_req_new(t, op, body, &err);
      if (!r) {
         bson_init(reply);
         snprintf(msg, size, "%s", err.message);
         return ASPEN_KINESIS_AUTH;
      }
      /* Waited on in slices: a stop (the processor is stopped while it
       * starts) ends the wait at once, not after the request's timeout. */
      CURLcode cc = aspen__http_easy_perform(NULL, r->h, stop, arg);
      aspen_kinesis_status_t st =
         aspen__kinesis_req_result(r, cc, reply, msg, size);
      aspen__kinesis_req_destroy(r);
      if (st != ASPEN_KINESIS_RETRY || aspen_clock_mono_ms() >= end ||
          (stop && stop(arg))) {
         return st;
      }
      bson_destroy(reply);
      struct timespec ts = {0, CALL_RETRY_MS * 1000000L};
      nanosleep(&ts, NULL);
   }
}

bool
aspen__kinesis_rt_stopping(void *rt)
{
   return aspen_rt_stopping(rt);
}

void
aspen__kinesis_fail_message(const aspen_kinesis_target_t *t, const char *what,
                            const char *stream, aspen_kinesis_status_t st,
                            const char *msg, char *out, size_t size)
{
   snprintf(out, size, "Kinesis %s (connection '%s', stream '%s') failed: %s%s",
            what, t->conn_name, stream,
            st == ASPEN_KINESIS_AUTH    ? "authentication failed: "
            : st == ASPEN_KINESIS_RETRY ? "the service cannot be reached: "
                                        : "",
            msg);
}

char *
aspen__kinesis_b64_encode(const void *data, size_t len)
{
   char *out = aspen_xmalloc(4 * ((len + 2) / 3) + 1);
   EVP_EncodeBlock((unsigned char *) out, data, (int) len);
   return out;
}

bool
aspen__kinesis_b64_decode(const char *in, size_t in_len, uint8_t **out,
                          size_t *out_len)
{
   *out = NULL;
   *out_len = 0;
   if (in_len % 4 != 0) {
      return false;
   }
   uint8_t *buf = aspen_xmalloc(in_len / 4 * 3 + 1);
   int n = in_len ? EVP_DecodeBlock(buf, (const unsigned char *) in,
                                    (int) in_len)
                  : 0;
   if (n < 0) {
      free(buf);
      return false;
   }
   /* EVP_DecodeBlock counts the padding as data bytes. */
   size_t pad = 0;
   if (in_len >= 1 && in[in_len - 1] == '=') {
      pad++;
   }
   if (in_len >= 2 && in[in_len - 2] == '=') {
      pad++;
   }
   *out = buf;
   *out_len = (size_t) n - pad;
   return true;
}
