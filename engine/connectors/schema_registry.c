/*
 * schema_registry.c - a client of a Confluent-compatible Schema Registry
 * (its REST API: GET /schemas/ids/{id}, POST /subjects/{subject}/versions
 * to register, POST /subjects/{subject} to look a schema up), on libcurl,
 * for one Kafka $source or $emit on its processor's thread.
 *
 * Nothing is asked per message: a schema id's schema and a subject's id
 * are fetched once and cached for the processor's life (a registered
 * schema never changes). A fetch that fails (the registry unreachable or
 * answering 5xx, an unknown id, a subject without the schema) is
 * remembered for RETRY_MS: messages needing it meanwhile fail at once
 * (their caller sends them to the DLQ) and the next one after that asks
 * again, so a registry outage costs each message no more than a look-up,
 * and the processor recovers by itself when the registry is back. Each
 * request is bounded (CONNECT_MS, REQUEST_MS); the registry's URLs are tried
 * in order.
 *
 * A request runs on the client's libcurl multi handle, waited on in short
 * slices (http_easy.c) between which the processor's stop flag is read: a
 * stop, drop or shutdown while the registry is slow or dead abandons the
 * request at once. The message it was for then fails with Interrupted,
 * which is neither remembered nor logged, and the processor notes the
 * interruption (aspen_expr_note_interrupted): no DLQ entry, no final
 * checkpoint past it, so a restart reads that message again.
 */
#include "connectors/schema_registry.h"
#include "connectors/http_body.h"
#include "connectors/http_easy.h"
#include "lang/expr.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASPEN_LOG_DOMAIN "schemaRegistry"
#define RETRY_MS 1000
#define CONNECT_MS 2000
#define REQUEST_MS 5000
#define MAX_BODY (16 * 1024 * 1024)

typedef struct {
   uint32_t id;
   aspen_avro_schema_t *schema; /* NULL: the fetch failed */
   char error[ASPEN_ERROR_MSG_MAX];
   int64_t retry_at; /* monotonic ms, when schema is NULL */
} id_entry_t;

typedef struct {
   char *subject;
   uint32_t id;
   bool ok;
   char error[ASPEN_ERROR_MSG_MAX];
   int64_t retry_at;
} subject_entry_t;

struct aspen_sr {
   const aspen_sr_conn_t *conn;
   char *ctx;
   CURL *curl;
   CURLM *multi; /* what curl runs on, so a stop can end the wait */
   id_entry_t *ids;
   int n_ids, cap_ids;
   subject_entry_t *subjects;
   int n_subjects, cap_subjects;
   /* The last schema decoded with, to skip the look-up for runs of one id. */
   id_entry_t *last;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void
curl_init_once(void)
{
   curl_global_init(CURL_GLOBAL_DEFAULT);
}

aspen_sr_t *
aspen__sr_new(const aspen_sr_conn_t *conn, const char *ctx)
{
   pthread_once(&curl_once, curl_init_once);
   aspen_sr_t *sr = aspen_xcalloc(1, sizeof *sr);
   sr->conn = conn;
   sr->ctx = aspen_xstrdup(ctx ? ctx : "");
   return sr;
}

void
aspen__sr_destroy(aspen_sr_t *sr)
{
   if (!sr) {
      return;
   }
   for (int i = 0; i < sr->n_ids; i++) {
      aspen__avro_schema_destroy(sr->ids[i].schema);
   }
   for (int i = 0; i < sr->n_subjects; i++) {
      free(sr->subjects[i].subject);
   }
   free(sr->ids);
   free(sr->subjects);
   if (sr->curl) {
      curl_easy_cleanup(sr->curl);
   }
   if (sr->multi) {
      curl_multi_cleanup(sr->multi);
   }
   free(sr->ctx);
   free(sr);
}

/* ---- HTTP ------------------------------------------------------------------- */

/* One request to `path` (below each URL in turn until one answers): GET,
 * or POST of `post` (JSON). *status is the HTTP status and *resp the
 * parsed JSON body (NULL when it is none). False with err when no URL
 * answered, or (Interrupted, noted) when the processor was asked to stop
 * meanwhile. */
static bool
request(aspen_sr_t *sr, const char *path, const char *post, long *status,
        bson_t **resp, aspen_error_t *err)
{
   *status = 0;
   *resp = NULL;
   if (!sr->multi) {
      sr->multi = curl_multi_init();
   }
   if (!sr->curl) {
      sr->curl = curl_easy_init();
      if (!sr->curl || !sr->multi) {
         aspen_error_set(err, ASPEN_ERR_InternalError,
                         "cannot create an HTTP client");
         return false;
      }
   }
   const char *const *urls;
   int n = aspen__sr_conn_urls(sr->conn, &urls);
   const char *user, *password;
   aspen__sr_conn_user(sr->conn, &user, &password);
   char curl_err[CURL_ERROR_SIZE] = "";
   for (int i = 0; i < n; i++) {
      CURL *c = sr->curl;
      size_t ulen = strlen(urls[i]) + strlen(path) + 1;
      char *url = aspen_xmalloc(ulen);
      snprintf(url, ulen, "%s%s", urls[i], path);
      aspen_http_body_t body = {.max = MAX_BODY};
      struct curl_slist *hdrs = curl_slist_append(
         NULL, "Accept: application/vnd.schemaregistry.v1+json, "
               "application/json");
      if (post) {
         hdrs = curl_slist_append(
            hdrs, "Content-Type: application/vnd.schemaregistry.v1+json");
      }
      curl_easy_reset(c);
      curl_easy_setopt(c, CURLOPT_URL, url);
      curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
      curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
      curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long) CONNECT_MS);
      curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long) REQUEST_MS);
      curl_easy_setopt(c, CURLOPT_WRITEFUNCTION,
                       aspen__http_body_write);
      curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
      curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
      curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
      if (user) {
         curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
         curl_easy_setopt(c, CURLOPT_USERNAME, user);
         curl_easy_setopt(c, CURLOPT_PASSWORD, password);
      }
      if (post) {
         curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
      }
      curl_err[0] = '\0';
      CURLcode rc = aspen__http_easy_perform(
         sr->multi, c, aspen__http_easy_stop_requested, NULL);
      curl_slist_free_all(hdrs);
      free(url);
      if (rc == CURLE_ABORTED_BY_CALLBACK) {
         aspen__http_body_free(&body);
         aspen_expr_note_interrupted();
         aspen_error_set(err, ASPEN_ERR_Interrupted,
                         "the processor is stopping: the schema registry "
                         "request was abandoned");
         return false;
      }
      if (rc != CURLE_OK) {
         aspen__http_body_free(&body);
         if (!curl_err[0]) {
            snprintf(curl_err, sizeof curl_err, "%s", curl_easy_strerror(rc));
         }
         continue;
      }
      curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
      if (*status >= 500) {
         aspen__http_body_free(&body);
         snprintf(curl_err, sizeof curl_err, "HTTP status %ld", *status);
         continue;
      }
      if (body.len) {
         bson_error_t berr;
         *resp = bson_new_from_json((const uint8_t *) body.data,
                                    (ssize_t) body.len, &berr);
      }
      aspen__http_body_free(&body);
      return true;
   }
   aspen_error_set(err, ASPEN_ERR_HostUnreachable,
                   "the schema registry is unreachable (%s); retrying",
                   curl_err);
   return false;
}

static const char *
resp_message(const bson_t *resp)
{
   bson_iter_t it;
   if (resp && bson_iter_init_find(&it, resp, "message") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return "no message";
}

/* A fetch failed with `ferr`: remembered (its message in `error`, the
 * next try at *retry_at) and logged, then passed on in err. A fetch the
 * processor's stop abandoned is only passed on: it says nothing about the
 * registry. */
static void
failed(aspen_sr_t *sr, const aspen_error_t *ferr,
       char error[ASPEN_ERROR_MSG_MAX], int64_t *retry_at, aspen_error_t *err)
{
   if (ferr->code != ASPEN_ERR_Interrupted) {
      snprintf(error, ASPEN_ERROR_MSG_MAX, "%s", ferr->message);
      *retry_at = aspen_clock_mono_ms() + RETRY_MS;
      aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, sr->ctx, "%s",
                 ferr->message);
   }
   aspen_error_set(err, ferr->code, "%s", ferr->message);
}

/* ---- schemas by id ------------------------------------------------------------ */

static bool
fetch_schema(aspen_sr_t *sr, uint32_t id, aspen_avro_schema_t **out,
             aspen_error_t *err)
{
   *out = NULL;
   char path[64];
   snprintf(path, sizeof path, "/schemas/ids/%u", id);
   long status;
   bson_t *resp;
   if (!request(sr, path, NULL, &status, &resp, err)) {
      return false;
   }
   bool ok = false;
   bson_iter_t it;
   if (status == 404) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "schema id %u is not in the schema registry (%s)", id,
                      resp_message(resp));
   } else if (status != 200 || !resp) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the schema registry answered HTTP %ld for schema id "
                      "%u (%s)",
                      status, id, resp_message(resp));
   } else if (bson_iter_init_find(&it, resp, "schemaType") &&
              BSON_ITER_HOLDS_UTF8(&it) &&
              strcmp(bson_iter_utf8(&it, NULL), "AVRO") != 0) {
      /* ASP reads only Avro through a schema registry. */
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "schema id %u is a %s schema: Atlas Stream Processing "
                      "reads only Avro through a schema registry",
                      id, bson_iter_utf8(&it, NULL));
   } else if (bson_iter_init_find(&it, resp, "references") &&
              BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &it) &&
              bson_iter_next(&it)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "schema id %u has schema references, which this "
                      "version of aspen does not resolve yet",
                      id);
   } else if (!bson_iter_init_find(&it, resp, "schema") ||
              !BSON_ITER_HOLDS_UTF8(&it)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the schema registry's answer for schema id %u has no "
                      "schema",
                      id);
   } else {
      uint32_t len;
      const char *json = bson_iter_utf8(&it, &len);
      aspen_error_t serr;
      *out = aspen__avro_schema_new(json, len, &serr);
      if (*out) {
         ok = true;
      } else {
         aspen_error_set(err, ASPEN_ERR_BadValue, "schema id %u: %s", id,
                         serr.message);
      }
   }
   bson_destroy(resp);
   return ok;
}

static id_entry_t *
id_entry(aspen_sr_t *sr, uint32_t id)
{
   if (sr->last && sr->last->id == id) {
      return sr->last;
   }
   for (int i = 0; i < sr->n_ids; i++) {
      if (sr->ids[i].id == id) {
         return sr->last = &sr->ids[i];
      }
   }
   if (sr->n_ids == sr->cap_ids) {
      sr->cap_ids = sr->cap_ids ? sr->cap_ids * 2 : 8;
      sr->ids = aspen_xrealloc(sr->ids, sr->cap_ids * sizeof *sr->ids);
   }
   id_entry_t *e = &sr->ids[sr->n_ids++];
   memset(e, 0, sizeof *e);
   e->id = id;
   return sr->last = e;
}

bool
aspen__sr_decode(aspen_sr_t *sr, const void *data, size_t len, bson_t *out,
                 aspen_error_t *err)
{
   const uint8_t *p = data;
   if (!p || len < 5 || p[0] != 0) {
      bson_init(out);
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the message is not in the schema registry's wire "
                      "format (a 0 byte and a 4-byte schema id before the "
                      "Avro value)");
      return false;
   }
   uint32_t id = (uint32_t) p[1] << 24 | (uint32_t) p[2] << 16 |
                 (uint32_t) p[3] << 8 | p[4];
   id_entry_t *e = id_entry(sr, id);
   if (!e->schema) {
      int64_t now = aspen_clock_mono_ms();
      if (e->retry_at && now < e->retry_at) {
         bson_init(out);
         aspen_error_set(err, ASPEN_ERR_BadValue, "%s", e->error);
         return false;
      }
      aspen_error_t ferr;
      if (!fetch_schema(sr, id, &e->schema, &ferr)) {
         failed(sr, &ferr, e->error, &e->retry_at, err);
         bson_init(out);
         return false;
      }
   }
   return aspen__avro_decode(e->schema, p + 5, len - 5, out, err);
}

/* ---- subjects --------------------------------------------------------------- */

static bool
fetch_subject_id(aspen_sr_t *sr, const char *subject, const char *schema_json,
                 bool auto_register, uint32_t *id, aspen_error_t *err)
{
   char *esc = curl_easy_escape(sr->curl, subject, 0);
   if (!esc) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot escape '%s'",
                      subject);
      return false;
   }
   size_t plen = strlen(esc) + 32;
   char *path = aspen_xmalloc(plen);
   snprintf(path, plen, "/subjects/%s%s", esc,
            auto_register ? "/versions" : "");
   curl_free(esc);
   bson_t req = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&req, "schema", schema_json);
   char *post = bson_as_relaxed_extended_json(&req, NULL);
   bson_destroy(&req);
   long status;
   bson_t *resp;
   bool ok = request(sr, path, post, &status, &resp, err);
   free(path);
   bson_free(post);
   if (!ok) {
      return false;
   }
   bson_iter_t it;
   ok = false;
   if (status == 200 && resp && bson_iter_init_find(&it, resp, "id") &&
       BSON_ITER_HOLDS_NUMBER(&it)) {
      *id = (uint32_t) bson_iter_as_int64(&it);
      ok = true;
   } else if (!auto_register && status == 404) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the schema is not registered under subject '%s' and "
                      "autoRegisterSchemas is false (%s)",
                      subject, resp_message(resp));
   } else {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the schema registry refused the schema under subject "
                      "'%s': HTTP %ld (%s)",
                      subject, status, resp_message(resp));
   }
   bson_destroy(resp);
   return ok;
}

bool
aspen__sr_subject_id(aspen_sr_t *sr, const char *subject,
                     const char *schema_json, bool auto_register,
                     uint32_t *id, aspen_error_t *err)
{
   subject_entry_t *e = NULL;
   for (int i = 0; i < sr->n_subjects; i++) {
      if (strcmp(sr->subjects[i].subject, subject) == 0) {
         e = &sr->subjects[i];
         break;
      }
   }
   if (!e) {
      if (sr->n_subjects == sr->cap_subjects) {
         sr->cap_subjects = sr->cap_subjects ? sr->cap_subjects * 2 : 4;
         sr->subjects = aspen_xrealloc(
            sr->subjects, sr->cap_subjects * sizeof *sr->subjects);
      }
      e = &sr->subjects[sr->n_subjects++];
      memset(e, 0, sizeof *e);
      e->subject = aspen_xstrdup(subject);
   }
   if (e->ok) {
      *id = e->id;
      return true;
   }
   int64_t now = aspen_clock_mono_ms();
   if (e->retry_at && now < e->retry_at) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "%s", e->error);
      return false;
   }
   if (!sr->curl && !(sr->curl = curl_easy_init())) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "cannot create an HTTP client");
      return false;
   }
   aspen_error_t ferr;
   if (!fetch_subject_id(sr, subject, schema_json, auto_register, &e->id,
                         &ferr)) {
      failed(sr, &ferr, e->error, &e->retry_at, err);
      return false;
   }
   e->ok = true;
   *id = e->id;
   return true;
}
