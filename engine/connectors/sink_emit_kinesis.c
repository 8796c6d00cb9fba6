/*
 * sink_emit_kinesis.c - $emit to Amazon Kinesis Data Streams, the $emit
 * sink of the kinesis row of connectors.def (ASP's options: stream, region,
 * partitionKey, config.{outputFormat, dateFormat}).
 *
 * Each document becomes one record: its data the document as JSON
 * (config.outputFormat relaxedJson, the default, canonicalJson or
 * basicJson; Dates as ISO-8601 strings with dateFormat ISO8601), its
 * partition key `partitionKey` (a string, "$field" or an expression,
 * evaluated per document; it must give a non-empty string of at most 256
 * characters, or the document goes to the DLQ). Without partitionKey each
 * record gets a random key, so records spread over the shards. A record
 * over the service's 1 MiB goes to the DLQ.
 *
 * Delivery. Records are gathered into PutRecords batches (up to 500
 * records and 5 MiB), sent on the sink's curl multi handle: write never
 * waits for an answer unless MAX_INFLIGHT batches are already on their way
 * (back-pressure). A record the service throttled
 * (ProvisionedThroughputExceeded) or failed internally is sent again in a
 * later batch, and a whole batch that was throttled, got a 5xx or did not
 * reach the service is sent again, after a growing pause (RETRY_MIN_MS ..
 * RETRY_MAX_MS), indefinitely while the processor runs. flush, which the
 * runtime calls before a checkpoint, sends the partial batch and waits
 * until every record is accepted, so a checkpoint never covers a record
 * the stream does not hold (at-least-once: a crash replays what came after
 * it). Refused credentials or a missing stream fail the processor with the
 * service's reason; at a stop, records still not accepted after
 * STOP_GRACE_MS fail it too (its last checkpoint stays). Records of one
 * partition key keep their order unless one is retried, as with the AWS
 * SDKs' own PutRecords.
 */
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"
#include "connectors/kinesis_int.h"
#include "connectors/sink_int.h"
#include "lang/expr.h"
#include "runtime/sink.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASPEN_LOG_DOMAIN "kinesis"
#define OPERATOR "KinesisEmitOperator"
#define BATCH_RECORDS 500
#define BATCH_BYTES (5u << 20)
#define RECORD_BYTES (1u << 20)
#define KEY_MAX 256
#define MAX_INFLIGHT 4
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 10000
#define STOP_GRACE_MS 10000

typedef struct {
   char *data64; /* the document's JSON, base64 */
   char *key;
} rec_t;

typedef struct batch {
   rec_t *recs;
   int n, cap;
   size_t bytes;
   aspen_kinesis_req_t *req;
   int64_t not_before_ms; /* a retry waits until then */
   int64_t backoff_ms;
   struct batch *next;
} batch_t;

typedef struct {
   const aspen_conn_t *conn;
   char *stream;
   char *region;
   aspen_expr_t *pkey; /* NULL: a random key per record */
   aspen_kafka_json_opts_t json;
   /* Run time. */
   aspen_runtime_t *rt;
   aspen_kinesis_target_t t;
   CURLM *multi;
   batch_t *cur;     /* being gathered */
   batch_t *waiting; /* retries, sent when their pause is over */
   batch_t *flying;  /* sent, answer pending */
   int inflight;
   char fatal[ASPEN_ERROR_MSG_MAX];
   char ctx[128];
} kemit_t;

static void
batch_free(batch_t *b)
{
   if (!b) {
      return;
   }
   for (int i = 0; i < b->n; i++) {
      free(b->recs[i].data64);
      free(b->recs[i].key);
   }
   free(b->recs);
   aspen__kinesis_req_destroy(b->req);
   free(b);
}

/* Appends a record to `b`, taking ownership of its strings. */
static void
batch_add(batch_t *b, char *data64, char *key)
{
   if (b->n == b->cap) {
      b->cap = b->cap ? 2 * b->cap : 64;
      b->recs = aspen_xrealloc(b->recs, (size_t) b->cap * sizeof *b->recs);
   }
   b->recs[b->n++] = (rec_t){.data64 = data64, .key = key};
   b->bytes += strlen(data64) / 4 * 3 + strlen(key);
}

static void
kemit_free(kemit_t *e)
{
   if (!e) {
      return;
   }
   batch_free(e->cur);
   for (batch_t *l[] = {e->waiting, e->flying}, **p = l; p < l + 2; p++) {
      while (*p) {
         batch_t *next = (*p)->next;
         if ((*p)->req && e->multi) {
            curl_multi_remove_handle(e->multi, (*p)->req->h);
         }
         batch_free(*p);
         *p = next;
      }
   }
   if (e->multi) {
      curl_multi_cleanup(e->multi);
   }
   aspen_expr_destroy(e->pkey);
   free(e->stream);
   free(e->region);
   free(e);
}

/* ---- parsing --------------------------------------------------------------- */

static bool
string_opt(const bson_iter_t *it, const aspen_parse_ctx_t *pc, const char *k,
           char **out, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it) || !*bson_iter_utf8(it, NULL)) {
      aspen_parse_error(err, pc, k,
                        "BSON field '$emit.%s' must be a non-empty string",
                        k);
      return false;
   }
   free(*out);
   *out = aspen_xstrdup(bson_iter_utf8(it, NULL));
   return true;
}

/* $emit.config to Kinesis has only the JSON options. */
static bool
no_config_opt(void *sink, const bson_iter_t *ci, const char *k,
              const char *opt, const aspen_parse_ctx_t *pc, bool *known,
              aspen_error_t *err)
{
   (void) sink, (void) ci, (void) k, (void) opt, (void) pc, (void) err;
   *known = false;
   return true;
}

/* Validates an $emit to Kinesis and compiles it; the expression borrows
 * from `spec`, which must outlive the result. */
static bool
kemit_compile(const bson_t *spec, const aspen_conns_t *conns,
              const aspen_parse_ctx_t *pc, kemit_t **out, aspen_error_t *err)
{
   *out = NULL;
   kemit_t *e = aspen_xcalloc(1, sizeof *e);
   const char *conn_name = NULL;
   bson_iter_t it;
   bson_iter_init(&it, spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "connectionName") == 0) {
         if (!aspen__emit_conn_name(&it, pc, &conn_name, err)) {
            goto fail;
         }
      } else if (strcmp(k, "stream") == 0) {
         if (!string_opt(&it, pc, k, &e->stream, err)) {
            goto fail;
         }
      } else if (strcmp(k, "region") == 0) {
         if (!string_opt(&it, pc, k, &e->region, err)) {
            goto fail;
         }
      } else if (strcmp(k, "partitionKey") == 0) {
         if (BSON_ITER_HOLDS_UTF8(&it) && !*bson_iter_utf8(&it, NULL)) {
            aspen_parse_error(err, pc, k, "$emit.partitionKey cannot be "
                                          "empty");
            goto fail;
         }
         aspen_expr_destroy(e->pkey);
         e->pkey = NULL;
         if (!aspen_expr_parse(&it, NULL, &e->pkey, err)) {
            aspen_parse_wrap_error(err, pc);
            goto fail;
         }
      } else if (strcmp(k, "config") == 0) {
         if (!aspen__emit_config_parse(&it, pc, true, &e->json,
                                       no_config_opt, NULL, err)) {
            goto fail;
         }
      } else {
         aspen_parse_unknown_field(err, pc, k, "$emit", k);
         goto fail;
      }
   }
   e->conn = aspen__emit_conn_find(conns, conn_name, &aspen_conn_kinesis_ops,
                                   pc, err);
   if (!e->conn) {
      goto fail;
   }
   if (!e->stream) {
      aspen_parse_missing_field(err, pc, "stream", "$emit", "stream");
      goto fail;
   }
   *out = e;
   return true;

fail:
   kemit_free(e);
   return false;
}

static bool
kemit_parse(const bson_t *spec, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   kemit_t *e;
   if (!kemit_compile(spec, pc->conns, pc, &e, err)) {
      return false;
   }
   kemit_free(e);
   return true;
}

/* ---- delivery ------------------------------------------------------------ */

static bool
kemit_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
           aspen_error_t *err)
{
   aspen_parse_ctx_t pc = {.conns = aspen_rt_conns(rt)};
   snprintf(pc.path, sizeof pc.path, "$emit");
   kemit_t *e;
   if (!kemit_compile(spec, pc.conns, &pc, &e, err)) {
      return false;
   }
   e->rt = rt;
   snprintf(e->ctx, sizeof e->ctx, "%s", aspen_rt_processor_name(rt));
   aspen__kinesis_target_init(&e->t, e->conn, e->region);
   /* The stream must be there and the credentials good before the start
    * is reported. */
   bson_t body = BSON_INITIALIZER, reply;
   BSON_APPEND_UTF8(&body, "StreamName", e->stream);
   char msg[ASPEN_ERROR_MSG_MAX];
   aspen_kinesis_status_t st = aspen__kinesis_call(
      &e->t, "DescribeStreamSummary", &body, &reply, 15000,
      aspen__kinesis_rt_stopping, rt, msg, sizeof msg);
   bson_destroy(&body);
   bson_destroy(&reply);
   if (st != ASPEN_KINESIS_OK) {
      char full[ASPEN_ERROR_MSG_MAX];
      aspen__kinesis_fail_message(&e->t, "$emit", e->stream, st, msg, full,
                                  sizeof full);
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKinesisConnectionError,
                      "%s", full);
      kemit_free(e);
      return false;
   }
   e->multi = curl_multi_init();
   *state = e;
   return true;
}

static void
batch_send(kemit_t *e, batch_t *b)
{
   bson_t body = BSON_INITIALIZER, arr;
   BSON_APPEND_UTF8(&body, "StreamName", e->stream);
   BSON_APPEND_ARRAY_BEGIN(&body, "Records", &arr);
   for (int i = 0; i < b->n; i++) {
      char buf[16];
      const char *key;
      bson_t r;
      bson_uint32_to_string((uint32_t) i, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, key, &r);
      BSON_APPEND_UTF8(&r, "Data", b->recs[i].data64);
      BSON_APPEND_UTF8(&r, "PartitionKey", b->recs[i].key);
      bson_append_document_end(&arr, &r);
   }
   bson_append_array_end(&body, &arr);
   aspen_error_t err;
   b->req = aspen__kinesis_req_new(&e->t, "PutRecords", &body, &err);
   bson_destroy(&body);
   if (!b->req) {
      aspen__kinesis_fail_message(&e->t, "$emit", e->stream,
                                  ASPEN_KINESIS_AUTH, err.message, e->fatal,
                                  sizeof e->fatal);
      batch_free(b);
      return;
   }
   b->req->owner = b;
   curl_multi_add_handle(e->multi, b->req->h);
   b->next = e->flying;
   e->flying = b;
   e->inflight++;
}

static void
unlink_flying(kemit_t *e, batch_t *b)
{
   for (batch_t **p = &e->flying; *p; p = &(*p)->next) {
      if (*p == b) {
         *p = b->next;
         b->next = NULL;
         return;
      }
   }
}

static void
retry_later(kemit_t *e, batch_t *b, const char *why)
{
   int64_t prev = b->backoff_ms;
   b->backoff_ms = prev ? (prev * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : prev * 2)
                        : RETRY_MIN_MS;
   b->not_before_ms = aspen_clock_mono_ms() + b->backoff_ms;
   aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, e->ctx,
              "Kinesis $emit to '%s': %d records again in %lld ms (%s)",
              e->stream, b->n, (long long) b->backoff_ms, why);
   b->next = e->waiting;
   e->waiting = b;
}

/* The answer to batch `b`: records the service refused for the moment go
 * into a retry batch. */
static void
batch_done(kemit_t *e, batch_t *b, CURLcode cc)
{
   bson_t reply;
   char msg[ASPEN_ERROR_MSG_MAX];
   aspen_kinesis_status_t st =
      aspen__kinesis_req_result(b->req, cc, &reply, msg, sizeof msg);
   aspen__kinesis_req_destroy(b->req);
   b->req = NULL;
   if (st == ASPEN_KINESIS_RETRY || st == ASPEN_KINESIS_EXPIRED) {
      bson_destroy(&reply);
      retry_later(e, b, msg);
      return;
   }
   if (st != ASPEN_KINESIS_OK) {
      aspen__kinesis_fail_message(&e->t, "$emit", e->stream, st, msg,
                                  e->fatal, sizeof e->fatal);
      bson_destroy(&reply);
      batch_free(b);
      return;
   }
   batch_t *again = NULL;
   bson_iter_t it, ai;
   int i = 0;
   char why[256] = "";
   if (aspen_bson_int64(&reply, "FailedRecordCount", 0) > 0 &&
       bson_iter_init_find(&it, &reply, "Records") &&
       BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &ai)) {
      while (bson_iter_next(&ai) && i < b->n) {
         bson_iter_t ri;
         const char *code = NULL, *rmsg = NULL;
         if (BSON_ITER_HOLDS_DOCUMENT(&ai) && bson_iter_recurse(&ai, &ri)) {
            while (bson_iter_next(&ri)) {
               if (strcmp(bson_iter_key(&ri), "ErrorCode") == 0 &&
                   BSON_ITER_HOLDS_UTF8(&ri)) {
                  code = bson_iter_utf8(&ri, NULL);
               } else if (strcmp(bson_iter_key(&ri), "ErrorMessage") == 0 &&
                          BSON_ITER_HOLDS_UTF8(&ri)) {
                  rmsg = bson_iter_utf8(&ri, NULL);
               }
            }
         }
         if (code) {
            /* PutRecords fails a record only for the moment
             * (ProvisionedThroughputExceeded, InternalFailure). */
            if (!again) {
               again = aspen_xcalloc(1, sizeof *again);
               again->backoff_ms = b->backoff_ms;
               snprintf(why, sizeof why, "%s: %s", code, rmsg ? rmsg : "");
            }
            batch_add(again, b->recs[i].data64, b->recs[i].key);
            b->recs[i].data64 = b->recs[i].key = NULL;
         }
         i++;
      }
   }
   bson_destroy(&reply);
   batch_free(b);
   if (again) {
      retry_later(e, again, why);
   }
}

/* Sends what may go and serves finished transfers; waits up to `wait_ms`
 * for one when nothing finished. */
static void
drive(kemit_t *e, int wait_ms)
{
   int64_t now = aspen_clock_mono_ms();
   for (batch_t **p = &e->waiting; *p && e->inflight < MAX_INFLIGHT;) {
      batch_t *b = *p;
      if (b->not_before_ms <= now) {
         *p = b->next;
         b->next = NULL;
         batch_send(e, b);
      } else {
         p = &b->next;
      }
   }
   int running = 0, left;
   curl_multi_perform(e->multi, &running);
   bool served = false;
   CURLMsg *m;
   while ((m = curl_multi_info_read(e->multi, &left))) {
      if (m->msg != CURLMSG_DONE) {
         continue;
      }
      aspen_kinesis_req_t *r = NULL;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &r);
      CURLcode cc = m->data.result;
      batch_t *b = r->owner;
      curl_multi_remove_handle(e->multi, r->h);
      e->inflight--;
      unlink_flying(e, b);
      batch_done(e, b, cc);
      served = true;
   }
   if (!served && wait_ms > 0) {
      curl_multi_poll(e->multi, NULL, 0, wait_ms, NULL);
   }
}

/* Sends the batch being gathered, waiting while MAX_INFLIGHT are out. */
static void
send_current(kemit_t *e)
{
   batch_t *b = e->cur;
   e->cur = NULL;
   if (!b || b->n == 0) {
      batch_free(b);
      return;
   }
   while (e->inflight >= MAX_INFLIGHT && !e->fatal[0]) {
      drive(e, 50);
   }
   if (e->fatal[0]) {
      batch_free(b);
      return;
   }
   batch_send(e, b);
}

static char *
random_key(aspen_runtime_t *rt)
{
   char buf[32];
   snprintf(buf, sizeof buf, "%016llx",
            (unsigned long long) aspen_rt_random(rt));
   return aspen_xstrdup(buf);
}

static bool
kemit_write(aspen_runtime_t *rt, void *state, const bson_t *doc,
            aspen_error_t *err)
{
   kemit_t *e = state;
   if (e->fatal[0]) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKinesisError, "%s",
                      e->fatal);
      return false;
   }
   char *key = NULL;
   if (e->pkey) {
      aspen_expr_ctx_t ctx = {.root = doc, .meta = NULL, .now_ms = 0};
      aspen_value_t v = ASPEN_VALUE_MISSING;
      aspen_error_t xerr;
      char reason[ASPEN_ERROR_MSG_MAX + 96];
      if (!aspen_expr_eval(e->pkey, &ctx, &v, &xerr)) {
         snprintf(reason, sizeof reason,
                  "Failed to evaluate the $emit partitionKey: %s",
                  xerr.message);
         aspen_rt_sink_failed(rt, doc, reason);
         return true;
      }
      if (v.v.value_type != BSON_TYPE_UTF8 || v.v.value.v_utf8.len == 0 ||
          v.v.value.v_utf8.len > KEY_MAX) {
         snprintf(reason, sizeof reason,
                  "The $emit partitionKey must evaluate to a string of 1 to "
                  "%d characters, not %s",
                  KEY_MAX,
                  v.v.value_type == BSON_TYPE_UTF8
                     ? "a longer one"
                     : aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         aspen_rt_sink_failed(rt, doc, reason);
         return true;
      }
      key = aspen_xstrdup(v.v.value.v_utf8.str);
      aspen_value_destroy(&v);
   } else {
      key = random_key(rt);
   }
   size_t len = 0;
   char *json = aspen__kafka_json_encode(doc, &e->json, &len);
   if (len + strlen(key) > RECORD_BYTES) {
      char reason[160];
      snprintf(reason, sizeof reason,
               "The document is %zu bytes as JSON, more than a Kinesis "
               "record holds (1 MiB with its partition key)",
               len);
      bson_free(json);
      free(key);
      aspen_rt_sink_failed(rt, doc, reason);
      return true;
   }
   char *data64 = aspen__kinesis_b64_encode(json, len);
   bson_free(json);
   if (e->cur && (e->cur->n >= BATCH_RECORDS ||
                  e->cur->bytes + len + strlen(key) > BATCH_BYTES)) {
      send_current(e);
   }
   if (!e->cur) {
      e->cur = aspen_xcalloc(1, sizeof *e->cur);
   }
   batch_add(e->cur, data64, key);
   if (e->cur->n >= BATCH_RECORDS) {
      send_current(e);
   }
   drive(e, 0);
   if (e->fatal[0]) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKinesisError, "%s",
                      e->fatal);
      return false;
   }
   return true;
}

static bool
kemit_flush(aspen_runtime_t *rt, void *state, aspen_error_t *err)
{
   kemit_t *e = state;
   send_current(e);
   int64_t stop_deadline = 0;
   while (!e->fatal[0] && (e->flying || e->waiting)) {
      if (aspen_rt_stopping(rt)) {
         int64_t now = aspen_clock_mono_ms();
         if (!stop_deadline) {
            stop_deadline = now + STOP_GRACE_MS;
         } else if (now >= stop_deadline) {
            snprintf(e->fatal, sizeof e->fatal,
                     "Kinesis $emit (connection '%s', stream '%s') failed: "
                     "records were still not accepted %d s after the "
                     "processor was stopped",
                     e->t.conn_name, e->stream, STOP_GRACE_MS / 1000);
            break;
         }
      }
      drive(e, 50);
   }
   if (e->fatal[0]) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKinesisError, "%s",
                      e->fatal);
      return false;
   }
   return true;
}

static void
kemit_close(void *state)
{
   kemit_free(state);
}

const aspen_sink_ops_t aspen_sink_kinesis_ops = {
   .operator_name = OPERATOR,
   .parse = kemit_parse,
   .open = kemit_open,
   .write = kemit_write,
   .flush = kemit_flush,
   .close = kemit_close,
};
