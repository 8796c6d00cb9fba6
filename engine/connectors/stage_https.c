/*
 * stage_https.c - the $https stage: for each document, one HTTP request to
 * an https connection (conn_https.c), its answer set in the document's
 * `as` field and its metadata in _stream_meta.https ({$meta:
 * "stream.https"}: url, method, httpStatusCode, responseTimeMs).
 *
 * What ASP documents (sp-agg-https, sp-agg-meta; checked December 2026):
 *   - fields connectionName (required), path (string or expression that
 *     must give a string), parameters and headers (expressions; parameter
 *     values numbers, strings or booleans, header values strings, else the
 *     document goes to the DLQ; invalid header names and values are left
 *     out), method (GET, POST, PUT, PATCH, DELETE; default GET), as
 *     (required), onError (dlq, ignore, fail; default dlq), payload (an
 *     inner pipeline of $project, $addFields, $replaceRoot and $set that
 *     shapes the body, by default the whole document as relaxed JSON),
 *     config.connectionTimeoutSec (30), config.requestTimeoutSec (60),
 *     config.parseJsonStrings (false);
 *   - 2xx is success; 400, 404, 410, 413, 414 and 431 follow onError; any
 *     other status fails the processor whatever onError says;
 *   - bodies of type application/json (or without a Content-Type) and
 *     text/plain are accepted, any other type follows onError; an empty
 *     body sets no `as` field;
 *   - onError does not cover the stage's own mistakes (an expression that
 *     fails): those documents go to the DLQ;
 *   - it stands in the main pipeline, in window pipelines, and (since
 *     January 2026) as the last stage.
 * aspen's choices where ASP says nothing: a transport failure (refused
 * connection, timeout, TLS) and a response over 16 MB (a BSON document's
 * limit) follow onError like the listed statuses; a body is sent for POST,
 * PUT and PATCH; connectionTimeoutSec bounds the connect phase and
 * connectionTimeoutSec + requestTimeoutSec the whole request.
 *
 * Never blocking the processor on one request: each stage has a libcurl
 * multi handle driven from the processor's thread, with up to the
 * connection's maxInFlight requests (default 16) in flight. Results leave
 * in input order (the oldest request is released first). A full window
 * makes push wait on curl_multi_poll, 100 ms at a time, checking the
 * processor's stop flag between waits: that is the back-pressure on the
 * source, and a stop, drop or SIGTERM interrupts it (the documents still in
 * flight are dropped; no checkpoint covered them, so a restart replays
 * them). `flush` drains every request before the sinks flush, so a
 * checkpoint never commits past a request in flight. Inside a window's
 * pipeline each request is drained before push returns, since the window's
 * later stages need its result at once.
 */
#include "connectors/connectors.h"
#include "connectors/http_call.h"
#include "lang/value.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void
curl_init_once(void)
{
   curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- requests -------------------------------------------------------------- */

static void
req_clear(aspen_http_call_t *h, aspen_http_req_t *r)
{
   if (r->easy) {
      if (!r->done && h->multi) {
         curl_multi_remove_handle(h->multi, r->easy);
      }
      curl_easy_cleanup(r->easy);
   }
   if (r->doc) {
      bson_destroy(r->doc);
   }
   if (r->meta) {
      bson_destroy(r->meta);
   }
   curl_slist_free_all(r->hdrs);
   free(r->url);
   free(r->body);
   aspen__http_body_free(&r->resp);
   memset(r, 0, sizeof *r);
}

/* Keeps Lambda's X-Amz-Function-Error header (a function error). */
static size_t
on_header(char *data, size_t size, size_t nmemb, void *arg)
{
   aspen_http_req_t *r = arg;
   size_t n = size * nmemb;
   static const char name[] = "x-amz-function-error:";
   if (n > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
      const char *v = data + sizeof name - 1;
      size_t vlen = n - (sizeof name - 1);
      while (vlen > 0 && (*v == ' ' || *v == '\t')) {
         v++;
         vlen--;
      }
      while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' ||
                          v[vlen - 1] == ' ')) {
         vlen--;
      }
      snprintf(r->fn_error, sizeof r->fn_error, "%.*s",
               (int) (vlen < sizeof r->fn_error ? vlen
                                                : sizeof r->fn_error - 1),
               v);
      if (!r->fn_error[0]) {
         snprintf(r->fn_error, sizeof r->fn_error, "error");
      }
   }
   return n;
}

/* ---- the answer ------------------------------------------------------------ */

/* Appends `it`'s value to `out` under `key`, with strings holding a JSON
 * object or array turned into documents, recursively (parseJsonStrings). */
static void append_parsed(bson_t *out, const char *key, const bson_iter_t *it);

static void
parse_strings_in(const bson_iter_t *parent, bson_t *out)
{
   bson_iter_t ci;
   bson_iter_recurse(parent, &ci);
   while (bson_iter_next(&ci)) {
      append_parsed(out, bson_iter_key(&ci), &ci);
   }
}

/* Parses `json` as one JSON value into `out` (a {v: value} document). */
static bool
json_value(const char *json, size_t len, bson_t *out)
{
   bson_error_t berr;
   size_t n = len + 8;
   char *wrapped = aspen_xmalloc(n);
   memcpy(wrapped, "{\"v\":", 5);
   memcpy(wrapped + 5, json, len);
   wrapped[5 + len] = '}';
   bool ok = bson_init_from_json(out, wrapped, (ssize_t) (6 + len), &berr);
   free(wrapped);
   return ok && bson_has_field(out, "v");
}

static void
append_parsed(bson_t *out, const char *key, const bson_iter_t *it)
{
   if (BSON_ITER_HOLDS_UTF8(it)) {
      uint32_t len;
      const char *s = bson_iter_utf8(it, &len);
      size_t i = 0;
      while (i < len && strchr(" \t\r\n", s[i])) {
         i++;
      }
      bson_t v;
      bson_iter_t vi;
      if (i < len && (s[i] == '{' || s[i] == '[') && json_value(s, len, &v)) {
         bson_iter_init_find(&vi, &v, "v");
         append_parsed(out, key, &vi);
         bson_destroy(&v);
         return;
      }
   } else if (BSON_ITER_HOLDS_DOCUMENT(it) || BSON_ITER_HOLDS_ARRAY(it)) {
      bson_t child;
      if (BSON_ITER_HOLDS_ARRAY(it)) {
         bson_append_array_begin(out, key, -1, &child);
         parse_strings_in(it, &child);
         bson_append_array_end(out, &child);
      } else {
         bson_append_document_begin(out, key, -1, &child);
         parse_strings_in(it, &child);
         bson_append_document_end(out, &child);
      }
      return;
   }
   bson_append_iter(out, key, -1, it);
}

/* The body as a value in `holder` ({v: ...}); false with `why` set when it
 * is not acceptable. An empty body is a missing value (no `as`). */
static bool
body_value(const aspen_http_call_t *h, aspen_http_req_t *r, const char *ctype, bson_t *holder,
           char *why, size_t why_len)
{
   bson_init(holder);
   if (r->resp.len == 0) {
      return true;
   }
   if (h->lambda) {
      ctype = NULL; /* a function's result is JSON whatever the type */
   }
   if (ctype && strncasecmp(ctype, "text/plain", 10) == 0) {
      if (!bson_utf8_validate(r->resp.data, r->resp.len, false)) {
         snprintf(why, why_len, "the text/plain response is not UTF-8");
         return false;
      }
      bson_append_utf8(holder, "v", 1, r->resp.data, (int) r->resp.len);
      return true;
   }
   if (ctype && strncasecmp(ctype, "application/json", 16) != 0) {
      snprintf(why, why_len,
               "unsupported response Content-Type '%.100s' (application/json "
               "or text/plain expected)",
               ctype);
      return false;
   }
   bson_t parsed;
   if (!json_value(r->resp.data, r->resp.len, &parsed)) {
      snprintf(why, why_len, "the response body is not valid JSON");
      return false;
   }
   if (h->parse_json_strings) {
      bson_iter_t vi;
      bson_iter_init_find(&vi, &parsed, "v");
      append_parsed(holder, "v", &vi);
      bson_destroy(&parsed);
   } else {
      bson_destroy(holder);
      bson_steal(holder, &parsed);
   }
   return true;
}

static bool
status_follows_on_error(long status)
{
   return status == 400 || status == 404 || status == 410 || status == 413 ||
          status == 414 || status == 431;
}

/* Sends the finished request's document on, to the DLQ, or fails the
 * processor, as its answer and onError say. */
static void
finish(aspen_stage_t *st, aspen_http_req_t *r)
{
   aspen_http_call_t *h = st->state;
   long status = 0;
   curl_off_t total_us = 0;
   const char *ctype = NULL;
   curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
   curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &total_us);
   curl_easy_getinfo(r->easy, CURLINFO_CONTENT_TYPE, &ctype);

   /* The metadata: what came in, plus https for $https (ASP documents
    * none for $externalFunction). */
   bson_t meta = BSON_INITIALIZER, hm;
   if (h->lambda) {
      bson_concat(&meta, r->meta);
   } else {
      bson_copy_to_excluding_noinit(r->meta, &meta, "https", NULL);
      BSON_APPEND_DOCUMENT_BEGIN(&meta, "https", &hm);
      BSON_APPEND_UTF8(&hm, "url", r->url);
      BSON_APPEND_UTF8(&hm, "method", h->method);
      if (r->rc == CURLE_OK) {
         BSON_APPEND_INT32(&hm, "httpStatusCode", (int32_t) status);
      }
      BSON_APPEND_INT64(&hm, "responseTimeMs", (int64_t) (total_us / 1000));
      bson_append_document_end(&meta, &hm);
   }

   aspen_sdoc_t in = {.doc = r->doc, .meta = &meta, .ts_ms = r->ts_ms};
   char why[ASPEN_ERROR_MSG_MAX];
   bool fatal = false;
   why[0] = '\0';
   bson_t holder = BSON_INITIALIZER;
   if (r->rc != CURLE_OK) {
      if (r->resp.too_big || r->rc == CURLE_FILESIZE_EXCEEDED) {
         snprintf(why, sizeof why,
                  "Request to %.300s failed: the response is larger than %u "
                  "bytes",
                  r->url, ASPEN_HTTP_MAX_BODY);
      } else {
         snprintf(why, sizeof why, "Request to %.300s failed: %s", r->url,
                  r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->rc));
      }
   } else if (h->lambda && (status < 200 || status > 299)) {
      /* Every API error of the Invoke call follows onError. */
      snprintf(why, sizeof why,
               "Invoking %.200s failed with HTTP status code %ld: %.200s",
               h->function, status, r->resp.data ? r->resp.data : "");
   } else if (h->lambda && !h->async && r->fn_error[0]) {
      /* The function itself failed (a synchronous call's payload is its
       * error). */
      snprintf(why, sizeof why, "Function %.200s returned an error (%s): %.300s",
               h->function, r->fn_error, r->resp.data ? r->resp.data : "");
   } else if (h->lambda && (h->async || !h->as)) {
      /* Nothing of the answer is kept. */
   } else if (status < 200 || status > 299) {
      snprintf(why, sizeof why,
               "Request to %.300s failed with HTTP status code %ld", r->url,
               status);
      fatal = !status_follows_on_error(status);
   } else {
      char reason[256];
      bson_destroy(&holder);
      if (!body_value(h, r, ctype, &holder, reason, sizeof reason)) {
         snprintf(why, sizeof why, "Request to %.300s: %s", r->url, reason);
      }
   }

   if (!why[0]) {
      bson_iter_t vi;
      aspen_value_t v = ASPEN_VALUE_MISSING;
      if (bson_iter_init_find(&vi, &holder, "v")) {
         v = aspen_value_borrow(&vi);
      }
      bson_t out = BSON_INITIALIZER;
      if (h->as) {
         aspen_doc_set_path(r->doc, h->as, &v, &out);
      } else {
         bson_concat(&out, r->doc);
      }
      aspen_sdoc_t o = {.doc = &out, .meta = &meta, .ts_ms = r->ts_ms};
      aspen_stage_emit(st, &o);
      bson_destroy(&out);
   } else if (fatal || h->on_error == ASPEN_HTTP_ON_ERROR_FAIL) {
      aspen_pipeline_t *pl = st->pl;
      if (!pl->fatal_code) {
         pl->fatal_code = ASPEN_ERR_OperationFailed;
         snprintf(pl->fatal, sizeof pl->fatal, "%s: %s", st->ops->name, why);
      }
      h->failed = true;
   } else if (h->on_error == ASPEN_HTTP_ON_ERROR_DLQ) {
      aspen_error_t err;
      aspen_error_set(&err, ASPEN_ERR_OperationFailed, "%s", why);
      aspen_stage_dead_letter(st, &in, &err);
   } else {
      aspen_stage_emit(st, &in);
   }
   bson_destroy(&holder);
   bson_destroy(&meta);
}

/* ---- the window of requests ------------------------------------------------ */

/* Collects finished transfers and releases the oldest ones, in order. */
static void
harvest(aspen_stage_t *st)
{
   aspen_http_call_t *h = st->state;
   int running = 0, left = 0;
   CURLMsg *msg;
   curl_multi_perform(h->multi, &running);
   while ((msg = curl_multi_info_read(h->multi, &left))) {
      if (msg->msg != CURLMSG_DONE) {
         continue;
      }
      aspen_http_req_t *r = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &r);
      r->rc = msg->data.result;
      r->done = true;
      curl_multi_remove_handle(h->multi, msg->easy_handle);
   }
   while (h->count > 0 && h->ring[h->head].done) {
      aspen_http_req_t *r = &h->ring[h->head];
      if (!h->failed) {
         /* Later stages see the input this document came from (a window
          * keeps the first one it saw as where a restore replays from). */
         uint64_t seq = st->pl->cur_seq;
         st->pl->cur_seq = r->seq;
         finish(st, r);
         st->pl->cur_seq = seq;
      }
      req_clear(h, r);
      h->head = (h->head + 1) % h->cap;
      h->count--;
   }
}

/* Drops every request still in flight (stopped, or failed). */
static void
abandon(aspen_http_call_t *h)
{
   while (h->count > 0) {
      req_clear(h, &h->ring[h->head]);
      h->head = (h->head + 1) % h->cap;
      h->count--;
   }
}

/* Waits until at most `max` requests are in flight; false when the
 * processor was asked to stop meanwhile (the rest is dropped). */
static bool
wait_until(aspen_stage_t *st, int max)
{
   aspen_http_call_t *h = st->state;
   harvest(st);
   while (h->count > max) {
      if (aspen_expr_stop_requested()) {
         abandon(h);
         aspen_expr_note_interrupted();
         return false;
      }
      curl_multi_poll(h->multi, NULL, 0, 100, NULL);
      harvest(st);
   }
   return true;
}

/* ---- building a request ---------------------------------------------------- */

/* The value of a parameter as text, or false (not a number, string or
 * boolean). */
static bool
param_text(const aspen_value_t *v, char *buf, size_t len)
{
   switch (v->v.value_type) {
   case BSON_TYPE_UTF8:
      return false; /* handled by the caller, any length */
   case BSON_TYPE_BOOL:
      snprintf(buf, len, "%s", v->v.value.v_bool ? "true" : "false");
      return true;
   case BSON_TYPE_INT32:
      snprintf(buf, len, "%d", v->v.value.v_int32);
      return true;
   case BSON_TYPE_INT64:
      snprintf(buf, len, "%lld", (long long) v->v.value.v_int64);
      return true;
   case BSON_TYPE_DOUBLE:
      snprintf(buf, len, "%.17g", v->v.value.v_double);
      return true;
   default:
      return false;
   }
}

static void
url_append(char **url, size_t *len, const char *s)
{
   size_t n = strlen(s);
   *url = aspen_xrealloc(*url, *len + n + 1);
   memcpy(*url + *len, s, n + 1);
   *len += n;
}

/* Builds the URL, headers and body of the request for `in` into `r`;
 * false with err set (the document goes to the DLQ). */
static bool
build(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_http_req_t *r, aspen_error_t *err)
{
   aspen_http_call_t *h = st->state;
   aspen_expr_ctx_t ctx;
   aspen_stage_expr_ctx(st, in, &ctx);
   size_t len = 0;
   char *url = NULL;
   if (h->lambda) {
      /* The Lambda Invoke API: POST /2015-03-31/functions/NAME/invocations,
       * InvocationType in a header. */
      char *fn = curl_easy_escape(NULL, h->function, 0);
      url_append(&url, &len, h->lambda->endpoint);
      while (len > 0 && url[len - 1] == '/') {
         url[--len] = '\0';
      }
      url_append(&url, &len, "/2015-03-31/functions/");
      url_append(&url, &len, fn);
      url_append(&url, &len, "/invocations");
      curl_free(fn);
      r->url = url;
      r->hdrs = curl_slist_append(r->hdrs,
                                  h->async ? "X-Amz-Invocation-Type: Event"
                                           : "X-Amz-Invocation-Type: "
                                             "RequestResponse");
      goto body;
   }
   url_append(&url, &len, h->conn->url);

   /* path */
   aspen_value_t pv = ASPEN_VALUE_MISSING;
   const char *path = h->path;
   if (h->path_expr) {
      if (!aspen_expr_eval(h->path_expr, &ctx, &pv, err)) {
         free(url);
         return false;
      }
      if (pv.v.value_type != BSON_TYPE_UTF8) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "$https.path must evaluate to a string, not %s",
                         aspen_value_type_name(&pv));
         aspen_value_destroy(&pv);
         free(url);
         return false;
      }
      path = pv.v.value.v_utf8.str;
   }
   if (path && *path) {
      while (len > 0 && url[len - 1] == '/') {
         url[--len] = '\0';
      }
      while (*path == '/') {
         path++;
      }
      url_append(&url, &len, "/");
      url_append(&url, &len, path);
   }
   aspen_value_destroy(&pv);

   /* parameters */
   for (int i = 0; i < h->n_params; i++) {
      aspen_value_t v;
      char num[64];
      if (!aspen_expr_eval(h->params[i].expr, &ctx, &v, err)) {
         free(url);
         return false;
      }
      const char *text = num;
      if (v.v.value_type == BSON_TYPE_UTF8) {
         text = v.v.value.v_utf8.str;
      } else if (!param_text(&v, num, sizeof num)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "$https.parameters.%s must evaluate to a number, "
                         "a string or a boolean, not %s",
                         h->params[i].name, aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         free(url);
         return false;
      }
      char *k = curl_easy_escape(NULL, h->params[i].name, 0);
      char *e = curl_easy_escape(NULL, text, 0);
      url_append(&url, &len, i == 0 && !strchr(url, '?') ? "?" : "&");
      url_append(&url, &len, k);
      url_append(&url, &len, "=");
      url_append(&url, &len, e);
      curl_free(k);
      curl_free(e);
      aspen_value_destroy(&v);
   }
   r->url = url;

   /* headers: the connection's, then the stage's (invalid ones left
    * out, as ASP does) */
   for (size_t i = 0; i < h->conn->n_headers; i++) {
      r->hdrs = curl_slist_append(r->hdrs, h->conn->headers[i]);
   }
   for (int i = 0; i < h->n_headers; i++) {
      aspen_value_t v;
      if (!aspen_expr_eval(h->headers[i].expr, &ctx, &v, err)) {
         return false;
      }
      if (v.v.value_type != BSON_TYPE_UTF8) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "$https.headers.%s must evaluate to a string, not %s",
                         h->headers[i].name, aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         return false;
      }
      const char *val = v.v.value.v_utf8.str;
      if (!strpbrk(val, "\r\n") && !strpbrk(h->headers[i].name, ": \t\r\n")) {
         size_t n = strlen(h->headers[i].name) + strlen(val) + 3;
         char *line = aspen_xmalloc(n);
         snprintf(line, n, "%s: %s", h->headers[i].name, val);
         r->hdrs = curl_slist_append(r->hdrs, line);
         free(line);
      }
      aspen_value_destroy(&v);
   }

body:
   if (strcmp(h->method, "POST") == 0 || strcmp(h->method, "PUT") == 0 ||
       strcmp(h->method, "PATCH") == 0) {
      const bson_t *body = in->doc;
      if (h->n_payload > 0) {
         h->payload_out = NULL;
         aspen_chain_push(&h->payload_chain, 0, in);
         if (!h->payload_out) {
            /* A payload stage failed: it sent the document to the DLQ. */
            aspen_error_set(err, ASPEN_ERR_OK, "%s", "");
            return false;
         }
         body = h->payload_out;
      }
      size_t blen = 0;
      r->body = bson_as_relaxed_extended_json(body, &blen);
      if (h->payload_out) {
         bson_destroy(h->payload_out);
         h->payload_out = NULL;
      }
      r->hdrs = curl_slist_append(r->hdrs, "Content-Type: application/json");
   }
   r->hdrs = curl_slist_append(r->hdrs, "Expect:");
   return true;
}

static void
payload_terminal(void *arg, const aspen_sdoc_t *doc)
{
   aspen_http_call_t *h = arg;
   if (!h->payload_out) {
      h->payload_out = bson_copy(doc->doc);
   }
}

/* ---- the stage ------------------------------------------------------------- */

bool
aspen__http_call_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   aspen_http_call_t *h = st->state;
   if (h->failed) {
      return true;
   }
   if (!h->multi) {
      pthread_once(&curl_once, curl_init_once);
      h->multi = curl_multi_init();
      ASPEN_ASSERT(h->multi);
      /* Keep a connection per request in flight for reuse. */
      curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long) h->cap);
   }
   aspen_http_req_t tmp;
   memset(&tmp, 0, sizeof tmp);
   if (!build(st, in, &tmp, err)) {
      req_clear(h, &tmp);
      if (err->code == ASPEN_ERR_OK) {
         return true; /* already dead-lettered by the payload */
      }
      return false;
   }
   /* Room for it: the back-pressure. */
   if (!wait_until(st, h->cap - 1)) {
      req_clear(h, &tmp);
      return true;
   }
   aspen_http_req_t *r = &h->ring[(h->head + h->count) % h->cap];
   *r = tmp;
   r->doc = bson_copy(in->doc);
   r->meta = in->meta ? bson_copy(in->meta) : bson_new();
   r->ts_ms = in->ts_ms;
   r->seq = st->pl->cur_seq;
   r->easy = curl_easy_init();
   ASPEN_ASSERT(r->easy);
   h->count++;
   CURL *e = r->easy;
   if (h->lambda) {
      /* The one AWS signing path (aws.c); the connection has its keys
       * (conn_lambda.c refuses one without), so this cannot fail. */
      aspen_error_t serr;
      bool signed_ok = aspen__aws_sign(e, &r->hdrs, &h->lambda->aws, "lambda",
                                       h->lambda->aws.region, NULL, &serr);
      ASPEN_ASSERT(signed_ok);
   }
   curl_easy_setopt(e, CURLOPT_URL, r->url);
   curl_easy_setopt(e, CURLOPT_PRIVATE, (char *) r);
   curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
   r->resp.max = ASPEN_HTTP_MAX_BODY;
   curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, aspen__http_body_write);
   curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->resp);
   curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
   curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
   curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
   curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, h->connect_timeout_s);
   curl_easy_setopt(e, CURLOPT_TIMEOUT,
                    h->connect_timeout_s + h->request_timeout_s);
   curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) ASPEN_HTTP_MAX_BODY);
   if (h->lambda) {
      curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
      curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
   } else if (h->conn->ca_file) {
      curl_easy_setopt(e, CURLOPT_CAINFO, h->conn->ca_file);
   }
   if (strcmp(h->method, "GET") != 0) {
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, h->method);
   }
   if (r->body) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                       (curl_off_t) strlen(r->body));
   }
   curl_multi_add_handle(h->multi, e);
   /* In a window's pipeline the next stages want the answer now. */
   wait_until(st, st->chain == &st->pl->main ? h->cap : 0);
   return true;
}

void
aspen__http_call_flush(aspen_stage_t *st)
{
   aspen_http_call_t *h = st->state;
   if (h->multi) {
      wait_until(st, 0);
   }
}

static void
kv_free(aspen_http_kv_t *kv, int n)
{
   for (int i = 0; i < n; i++) {
      free(kv[i].name);
      aspen_expr_destroy(kv[i].expr);
   }
   free(kv);
}

void
aspen__http_call_destroy(aspen_stage_t *st)
{
   aspen_http_call_t *h = st->state;
   if (!h) {
      return;
   }
   if (h->ring) {
      abandon(h);
      free(h->ring);
   }
   if (h->multi) {
      curl_multi_cleanup(h->multi);
   }
   for (int i = 0; i < h->n_payload; i++) {
      if (h->payload[i].ops && h->payload[i].ops->destroy) {
         h->payload[i].ops->destroy(&h->payload[i]);
      }
   }
   free(h->payload);
   kv_free(h->params, h->n_params);
   kv_free(h->headers, h->n_headers);
   aspen_expr_destroy(h->path_expr);
   free(h->path);
   free(h->function);
   free(h->conn_name);
   free(h->as);
   free(h);
   st->state = NULL;
}

void
aspen__http_call_ready(aspen_http_call_t *h, int cap)
{
   h->cap = cap;
   h->ring = aspen_xcalloc((size_t) cap, sizeof *h->ring);
}

/* ---- parsing --------------------------------------------------------------- */

bool
aspen__http_call_wrong_type(aspen_error_t *err, aspen_parse_ctx_t *pc,
                            const char *stage, const char *field,
                            const bson_iter_t *it, const char *expected)
{
   aspen_value_t v = aspen_value_borrow(it);
   aspen_parse_error(err, pc, NULL,
                     "BSON field '%s.%s' is the wrong type '%s', expected "
                     "type '%s'",
                     stage, field, aspen_value_type_name(&v), expected);
   return false;
}

static bool
wrong_type(aspen_error_t *err, aspen_parse_ctx_t *pc, const char *field,
           const bson_iter_t *it, const char *expected)
{
   return aspen__http_call_wrong_type(err, pc, "$https", field, it, expected);
}

aspen_http_call_t *
aspen__http_call_new(aspen_stage_t *st, const char *stage,
                     const bson_iter_t *arg, aspen_parse_ctx_t *pc,
                     aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_parse_error(err, pc, NULL, "%s specification must be an object",
                        stage);
      return NULL;
   }
   aspen_http_call_t *h = aspen_xcalloc(1, sizeof *h);
   st->state = h;
   h->on_error = ASPEN_HTTP_ON_ERROR_DLQ;
   return h;
}

int
aspen__http_call_parse_shared(aspen_stage_t *st, aspen_http_call_t *h,
                              const char *stage, const bson_iter_t *it,
                              aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   const char *k = bson_iter_key(it);
   if (strcmp(k, "payload") == 0) {
      return aspen__http_call_parse_payload(st, h, stage, it, pc, err) ? 1
                                                                       : -1;
   }
   if (strcmp(k, "connectionName") != 0 && strcmp(k, "as") != 0 &&
       strcmp(k, "onError") != 0) {
      return 0;
   }
   if (!BSON_ITER_HOLDS_UTF8(it)) {
      aspen__http_call_wrong_type(err, pc, stage, k, it, "string");
      return -1;
   }
   const char *v = bson_iter_utf8(it, NULL);
   if (strcmp(k, "connectionName") == 0) {
      free(h->conn_name);
      h->conn_name = aspen_xstrdup(v);
   } else if (strcmp(k, "as") == 0) {
      if (!*v || *v == '$' || strstr(v, "..") || v[0] == '.' ||
          v[strlen(v) - 1] == '.') {
         aspen_parse_error(err, pc, NULL, "%s.as must be a field name, not '%s'",
                           stage, v);
         return -1;
      }
      free(h->as);
      h->as = aspen_xstrdup(v);
   } else if (strcasecmp(v, "dlq") == 0) {
      h->on_error = ASPEN_HTTP_ON_ERROR_DLQ;
   } else if (strcasecmp(v, "ignore") == 0) {
      h->on_error = ASPEN_HTTP_ON_ERROR_IGNORE;
   } else if (strcasecmp(v, "fail") == 0) {
      h->on_error = ASPEN_HTTP_ON_ERROR_FAIL;
   } else {
      aspen_parse_error(err, pc, NULL,
                        "Enumeration value '%s' for field '%s.onError' is "
                        "not a valid value.",
                        v, stage);
      return -1;
   }
   return 1;
}

const aspen_conn_t *
aspen__http_call_conn(const aspen_http_call_t *h, const char *stage,
                      aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!h->conn_name) {
      aspen_parse_missing_field(err, pc, NULL, stage, "connectionName");
      return NULL;
   }
   const aspen_conn_t *conn = aspen_conns_find(pc->conns, h->conn_name);
   if (!conn) {
      aspen_parse_error(err, pc, "connectionName",
                        "Unknown connection name %s", h->conn_name);
   }
   return conn;
}

static bool
parse_kv(const bson_iter_t *it, aspen_parse_ctx_t *pc, const char *field,
         aspen_http_kv_t **out, int *n, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      return wrong_type(err, pc, field, it, "object");
   }
   bson_iter_t ki;
   int cap = 0;
   bson_iter_recurse(it, &ki);
   while (bson_iter_next(&ki)) {
      if (*n == cap) {
         cap = cap ? cap * 2 : 4;
         *out = aspen_xrealloc(*out, (size_t) cap * sizeof **out);
      }
      aspen_http_kv_t *kv = &(*out)[*n];
      kv->name = aspen_xstrdup(bson_iter_key(&ki));
      kv->expr = NULL;
      (*n)++;
      if (!aspen_expr_parse(&ki, NULL, &kv->expr, err)) {
         return false;
      }
   }
   return true;
}

static bool
parse_int_sec(const bson_iter_t *it, aspen_parse_ctx_t *pc, const char *field,
              long *out, aspen_error_t *err)
{
   int64_t v;
   if (BSON_ITER_HOLDS_INT32(it)) {
      v = bson_iter_int32(it);
   } else if (BSON_ITER_HOLDS_INT64(it)) {
      v = bson_iter_int64(it);
   } else if (BSON_ITER_HOLDS_DOUBLE(it) &&
              bson_iter_double(it) == (double) (int64_t) bson_iter_double(it)) {
      v = (int64_t) bson_iter_double(it);
   } else {
      return wrong_type(err, pc, field, it, "int");
   }
   if (v <= 0 || v > 3600) {
      aspen_parse_error(err, pc, NULL,
                        "$https.%s must be between 1 and 3600 seconds, not "
                        "%lld",
                        field, (long long) v);
      return false;
   }
   *out = (long) v;
   return true;
}

static bool
parse_config(aspen_http_call_t *h, const bson_iter_t *it, aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      return wrong_type(err, pc, "config", it, "object");
   }
   bson_iter_t ci;
   bson_iter_recurse(it, &ci);
   while (bson_iter_next(&ci)) {
      const char *k = bson_iter_key(&ci);
      if (strcmp(k, "connectionTimeoutSec") == 0) {
         if (!parse_int_sec(&ci, pc, "config.connectionTimeoutSec",
                            &h->connect_timeout_s, err)) {
            return false;
         }
      } else if (strcmp(k, "requestTimeoutSec") == 0) {
         if (!parse_int_sec(&ci, pc, "config.requestTimeoutSec",
                            &h->request_timeout_s, err)) {
            return false;
         }
      } else if (strcmp(k, "parseJsonStrings") == 0) {
         if (!BSON_ITER_HOLDS_BOOL(&ci)) {
            return wrong_type(err, pc, "config.parseJsonStrings", &ci,
                              "bool");
         }
         h->parse_json_strings = bson_iter_bool(&ci);
      } else {
         aspen_parse_unknown_field(err, pc, NULL, "$https.config", k);
         return false;
      }
   }
   return true;
}

bool
aspen__http_call_parse_payload(aspen_stage_t *st, aspen_http_call_t *h,
                               const char *stage, const bson_iter_t *it,
                               aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   static const char *const allowed[] = {"$project", "$addFields",
                                         "$replaceRoot", "$set", NULL};
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_value_t v = aspen_value_borrow(it);
      aspen_parse_error(err, pc, NULL,
                        "BSON field '%s.payload' is the wrong type '%s', "
                        "expected type 'array'",
                        stage, aspen_value_type_name(&v));
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t arr;
   bson_iter_array(it, &len, &data);
   (void) bson_init_static(&arr, data, len);
   bson_iter_t ai;
   bson_iter_init(&ai, &arr);
   while (bson_iter_next(&ai)) {
      bson_iter_t si;
      if (BSON_ITER_HOLDS_DOCUMENT(&ai) && bson_iter_recurse(&ai, &si) &&
          bson_iter_next(&si)) {
         const char *name = bson_iter_key(&si);
         bool ok = false;
         for (const char *const *a = allowed; *a; a++) {
            ok = ok || strcmp(*a, name) == 0;
         }
         if (!ok) {
            aspen_parse_error(err, pc, "payload",
                              "%s stage is not permitted in the payload "
                              "(inner pipeline) of an %s stage",
                              name, strcmp(stage, "$https") == 0
                                       ? "https"
                                       : "external function");
            return false;
         }
      }
   }
   aspen_parse_ctx_t inner = *pc;
   snprintf(inner.path, sizeof inner.path, "%s.payload", pc->path);
   if (!aspen_pipeline_parse_stages(st->pl, &arr, &inner, &h->payload,
                                    &h->n_payload, err)) {
      return false;
   }
   h->payload_chain.stages = h->payload;
   h->payload_chain.n = h->n_payload;
   h->payload_chain.terminal = payload_terminal;
   h->payload_chain.arg = h;
   for (int i = 0; i < h->n_payload; i++) {
      h->payload[i].chain = &h->payload_chain;
      h->payload[i].index = i;
   }
   return true;
}

static bool
https_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   aspen_http_call_t *h = aspen__http_call_new(st, "$https", arg, pc, err);
   if (!h) {
      return false;
   }
   snprintf(h->method, sizeof h->method, "GET");
   h->connect_timeout_s = 30;
   h->request_timeout_s = 60;
   int shared;
   bson_iter_t it;
   bson_iter_recurse(arg, &it);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "path") == 0) {
         free(h->path);
         h->path = NULL;
         aspen_expr_destroy(h->path_expr);
         h->path_expr = NULL;
         if (BSON_ITER_HOLDS_UTF8(&it) && bson_iter_utf8(&it, NULL)[0] != '$') {
            h->path = aspen_xstrdup(bson_iter_utf8(&it, NULL));
         } else if (!aspen_expr_parse(&it, NULL, &h->path_expr, err)) {
            goto fail;
         }
      } else if (strcmp(k, "parameters") == 0) {
         if (!parse_kv(&it, pc, k, &h->params, &h->n_params, err)) {
            goto fail;
         }
      } else if (strcmp(k, "headers") == 0) {
         if (!parse_kv(&it, pc, k, &h->headers, &h->n_headers, err)) {
            goto fail;
         }
      } else if (strcmp(k, "method") == 0) {
         static const char *const methods[] = {"GET", "POST", "PUT", "PATCH",
                                               "DELETE", NULL};
         const char *m = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : NULL;
         if (!m) {
            wrong_type(err, pc, k, &it, "string");
            goto fail;
         }
         const char *const *p = methods;
         while (*p && strcasecmp(*p, m) != 0) {
            p++;
         }
         if (!*p) {
            aspen_parse_error(err, pc, NULL,
                              "Enumeration value '%s' for field "
                              "'$https.method' is not a valid value.",
                              m);
            goto fail;
         }
         snprintf(h->method, sizeof h->method, "%s", *p);
      } else if ((shared = aspen__http_call_parse_shared(st, h, "$https", &it,
                                                         pc, err)) != 0) {
         if (shared < 0) {
            goto fail;
         }
      } else if (strcmp(k, "config") == 0) {
         if (!parse_config(h, &it, pc, err)) {
            goto fail;
         }
      } else {
         aspen_parse_unknown_field(err, pc, NULL, "$https", k);
         goto fail;
      }
   }
   if (!h->as) {
      aspen_parse_missing_field(err, pc, NULL, "$https", "as");
      goto fail;
   }
   const aspen_conn_t *conn =
      aspen__http_call_conn(h, "$https", pc, err);
   if (!conn) {
      goto fail;
   }
   h->conn = aspen__conn_https(conn);
   if (!h->conn) {
      aspen_parse_error(err, pc, "connectionName",
                        "$https requires a connection of type https; '%s' "
                        "is of type %s",
                        h->conn_name, conn->kind->type_name);
      goto fail;
   }
   aspen__http_call_ready(h, h->conn->max_in_flight);
   return true;

fail:
   aspen__http_call_destroy(st);
   return false;
}

const aspen_stage_ops_t aspen_stage_https_ops = {
   .name = "$https",
   .operator_name = "HttpsOperator",
   .parse = https_parse,
   .push = aspen__http_call_push,
   .destroy = aspen__http_call_destroy,
   .flush = aspen__http_call_flush,
};
