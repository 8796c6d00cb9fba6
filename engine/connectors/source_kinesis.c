/*
 * source_kinesis.c - the Amazon Kinesis Data Streams $source, the source of
 * the kinesis row of connectors.def (ASP's options: stream, region,
 * shardIdleTimeout, timeField, tsFieldName, config.{consumerARN,
 * initialPosition, atTimestamp, reshardDetectionIntervalSecs}).
 *
 * Reading. Every shard being read has at most one request in flight on the
 * source's curl multi handle: GetShardIterator, then GetRecords (up to
 * GET_LIMIT records) again and again, at most every POLL_MS per shard (the
 * service allows five reads a second per shard). The processor's thread
 * drives the transfers between documents and never waits on one: records
 * are handed to the pipeline as their answers arrive. A throttled read
 * (ProvisionedThroughputExceeded), a 5xx or an unreachable endpoint is
 * retried with a growing pause (RETRY_MIN_MS .. RETRY_MAX_MS, logged); an
 * expired iterator is renewed after the last sequence number read;
 * refused credentials or a stream that went away fail the processor with
 * the service's reason. consumerARN (enhanced fan-out, SubscribeToShard
 * over HTTP/2) is accepted and listed but not used: the source reads with
 * GetRecords, which the local emulators serve.
 *
 * Each record's data is parsed as relaxed or canonical Extended JSON; one
 * that is not goes to the DLQ with its bytes. The document gets
 * `_stream_meta.source` = {type: "kinesis", kinesisStream, shardId,
 * sequenceNumber, partitionKey} and, without a timeField, the record's
 * ApproximateArrivalTimestamp as its event time. All shards feed one
 * watermark (the metadata has no partition), so shardIdleTimeout, accepted,
 * has nothing to hold back.
 *
 * Resharding, as the Kinesis rules have it: a shard is read only once its
 * parents (ParentShardId, AdjacentParentShardId) have been read to their
 * end, and a child starts at its oldest record (TRIM_HORIZON). A shard is
 * at its end when GetRecords answers without a NextShardIterator; the
 * source then lists the shards again (ListShards) to find its children, and
 * also every reshardDetectionIntervalSecs. At a fresh start with
 * initialPosition LATEST the closed shards are skipped and the open ones
 * read from their tip; with TRIM_HORIZON or AT_TIMESTAMP every shard is
 * read, parents first.
 *
 * Positions (at-least-once). The source is positioned by a token (as a
 * change stream): {shards: [{id, seq?, done?}]}, the last sequence number
 * handed over of every shard and the shards read to their end. Before each
 * record goes down the pipeline the runtime gets the token before it
 * (aspen_rt_mark), after it the token after it (aspen_rt_mark_token), so a
 * checkpoint holds where every shard resumes from, taken only after the
 * sink flushed. A restart reads each shard AFTER_SEQUENCE_NUMBER of its
 * checkpointed one, skips the shards that were done, and reads shards the
 * checkpoint did not know from TRIM_HORIZON once their parents are done.
 */
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"
#include "connectors/kinesis_int.h"
#include "lang/value.h"
#include "runtime/source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASPEN_LOG_DOMAIN "kinesis"
#define OPERATOR "KinesisConsumerOperator"
#define POLL_MS 200
#define GET_LIMIT 10000
#define MAX_INFLIGHT 32
#define RETRY_MIN_MS 250
#define RETRY_MAX_MS 10000
#define FLUSH_EVERY_MS 200
#define FLUSH_EVERY_RECORDS 5000
#define OPEN_TIMEOUT_MS 15000
#define RESHARD_DEFAULT_S 300

enum init_pos { INIT_LATEST, INIT_TRIM_HORIZON, INIT_AT_TIMESTAMP };

typedef struct {
   char *stream;
   char *region;
   char *consumer_arn;
   enum init_pos init;
   int64_t at_ts_ms;
   bool has_at_ts;
   int64_t reshard_ms;
} kopts_t;

/* ---- options ------------------------------------------------------------- */

static void
kopts_destroy(void *p)
{
   kopts_t *o = p;
   if (!o) {
      return;
   }
   free(o->stream);
   free(o->region);
   free(o->consumer_arn);
   free(o);
}

static kopts_t *
kopts_of(aspen_source_spec_t *spec)
{
   if (!spec->opts) {
      kopts_t *o = aspen_xcalloc(1, sizeof *o);
      o->reshard_ms = RESHARD_DEFAULT_S * 1000;
      spec->opts = o;
   }
   return spec->opts;
}

static const char *
type_name(bson_type_t t)
{
   aspen_value_t v = ASPEN_VALUE_MISSING;
   v.v.value_type = t;
   return aspen_value_type_name(&v);
}

static bool
wrong_type(const aspen_parse_ctx_t *pc, const char *opt, const bson_iter_t *it,
           const char *want, aspen_error_t *err)
{
   aspen_parse_error(err, pc, opt,
                     "BSON field '%s' is the wrong type '%s', expected type "
                     "'%s'",
                     opt, type_name(bson_iter_type(it)), want);
   return false;
}

static bool
string_opt(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
           const char *opt, char **out, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it)) {
      return wrong_type(pc, opt, it, "string", err);
   }
   if (!*bson_iter_utf8(it, NULL)) {
      aspen_parse_error(err, pc, opt, "%s cannot be empty", opt);
      return false;
   }
   free(*out);
   *out = aspen_xstrdup(bson_iter_utf8(it, NULL));
   return true;
}

static bool
parse_config(kopts_t *o, const bson_iter_t *it, const aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      return wrong_type(pc, "$source.config", it, "object", err);
   }
   bson_iter_t ci;
   bson_iter_recurse(it, &ci);
   while (bson_iter_next(&ci)) {
      const char *k = bson_iter_key(&ci);
      char opt[96];
      snprintf(opt, sizeof opt, "$source.config.%s", k);
      if (strcmp(k, "consumerARN") == 0) {
         if (!string_opt(&ci, pc, opt, &o->consumer_arn, err)) {
            return false;
         }
      } else if (strcmp(k, "initialPosition") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&ci)) {
            return wrong_type(pc, opt, &ci, "string", err);
         }
         const char *v = bson_iter_utf8(&ci, NULL);
         if (strcmp(v, "LATEST") == 0) {
            o->init = INIT_LATEST;
         } else if (strcmp(v, "TRIM_HORIZON") == 0) {
            o->init = INIT_TRIM_HORIZON;
         } else if (strcmp(v, "AT_TIMESTAMP") == 0) {
            o->init = INIT_AT_TIMESTAMP;
         } else if (strcmp(v, "AT_SEQUENCE_NUMBER") == 0 ||
                    strcmp(v, "AFTER_SEQUENCE_NUMBER") == 0) {
            /* ASP lists them, but the $source has no option carrying the
             * sequence number they start from. */
            aspen_parse_error(err, pc, opt,
                              "$source.config.initialPosition %s is "
                              "supported by Atlas Stream Processing but not "
                              "yet by this version of aspen",
                              v);
            return false;
         } else {
            aspen_parse_error(err, pc, opt,
                              "Enumeration value '%s' for field '%s' is not "
                              "a valid value.",
                              v, opt);
            return false;
         }
      } else if (strcmp(k, "atTimestamp") == 0) {
         if (!BSON_ITER_HOLDS_DATE_TIME(&ci)) {
            return wrong_type(pc, opt, &ci, "date", err);
         }
         o->at_ts_ms = bson_iter_date_time(&ci);
         o->has_at_ts = true;
      } else if (strcmp(k, "reshardDetectionIntervalSecs") == 0) {
         if (!BSON_ITER_HOLDS_INT32(&ci) && !BSON_ITER_HOLDS_INT64(&ci)) {
            return wrong_type(pc, opt, &ci, "int", err);
         }
         int64_t s = bson_iter_as_int64(&ci);
         if (s <= 0 || s > 86400 * 365) {
            aspen_parse_error(err, pc, opt,
                              "%s must be a positive number of seconds",
                              opt);
            return false;
         }
         o->reshard_ms = s * 1000;
      } else {
         aspen_parse_unknown_field(err, pc, opt, NULL, opt);
         return false;
      }
   }
   return true;
}

static bool
kin_parse_option(aspen_source_spec_t *spec, const bson_iter_t *it,
                 aspen_parse_ctx_t *pc, bool *handled, aspen_error_t *err)
{
   const char *k = bson_iter_key(it);
   kopts_t *o = kopts_of(spec);
   *handled = true;
   if (strcmp(k, "stream") == 0) {
      return string_opt(it, pc, "$source.stream", &o->stream, err);
   }
   if (strcmp(k, "region") == 0) {
      return string_opt(it, pc, "$source.region", &o->region, err);
   }
   if (strcmp(k, "shardIdleTimeout") == 0) {
      return aspen__source_parse_idle_timeout(
         it, pc, "shardIdleTimeout", &spec->partition_idle_timeout_ms, err);
   }
   if (strcmp(k, "config") == 0) {
      return parse_config(o, it, pc, err);
   }
   *handled = false;
   return true;
}

static bool
kin_parse_done(aspen_source_spec_t *spec, aspen_parse_ctx_t *pc,
               aspen_error_t *err)
{
   kopts_t *o = kopts_of(spec);
   if (!o->stream) {
      aspen_parse_missing_field(err, pc, "$source.stream", "$source", "stream");
      return false;
   }
   if (o->init == INIT_AT_TIMESTAMP && !o->has_at_ts) {
      aspen_parse_error(err, pc, "$source.config.atTimestamp",
                        "$source.config.atTimestamp is required when "
                        "$source.config.initialPosition is AT_TIMESTAMP");
      return false;
   }
   return true;
}

/* ---- run time -------------------------------------------------------------- */

enum shard_state { SH_WAITING, SH_READING, SH_DONE };
enum req_tag { TAG_ITERATOR, TAG_RECORDS, TAG_LIST };

typedef struct {
   char *id, *parent, *adj_parent;
   enum shard_state state;
   const char *start; /* iterator type without a sequence number */
   char *iter;        /* the next GetRecords' iterator; NULL: get one */
   char *seq;         /* last sequence number handed over, or NULL */
   bool listed;       /* in the latest complete listing */
   aspen_kinesis_req_t *req;
   int64_t next_ms; /* monotonic: not before */
   int64_t backoff_ms;
} shard_t;

typedef struct {
   aspen_runtime_t *rt;
   const kopts_t *o;
   aspen_kinesis_target_t t;
   CURLM *multi;
   shard_t *sh;
   int n, cap;
   int inflight;
   bool fresh; /* no checkpoint: initialPosition applies to the first list */
   bool restored;
   bson_t restored_token;
   /* Listing. */
   aspen_kinesis_req_t *list_req;
   bool list_wanted;           /* list again as soon as allowed */
   int64_t list_not_before_ms; /* after a failed listing */
   int64_t next_list_ms;       /* reshardDetectionIntervalSecs */
   int64_t list_backoff_ms;
   bson_t token; /* the position after everything handed over */
   char fatal[ASPEN_ERROR_MSG_MAX];
   char ctx[128]; /* the processor's name, for log lines */
} ksrc_t;

static shard_t *
shard_find(ksrc_t *ks, const char *id)
{
   for (int i = 0; i < ks->n; i++) {
      if (strcmp(ks->sh[i].id, id) == 0) {
         return &ks->sh[i];
      }
   }
   return NULL;
}

/* The restored token's entry of shard `id`: *seq (borrowed, NULL when
 * none) and *done; false when the checkpoint did not know the shard. */
static bool
restored_shard(const ksrc_t *ks, const char *id, const char **seq, bool *done)
{
   bson_iter_t it, ai, si;
   *seq = NULL;
   *done = false;
   if (!ks->restored || !bson_iter_init_find(&it, &ks->restored_token,
                                             "shards") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &ai)) {
      return false;
   }
   while (bson_iter_next(&ai)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&ai) || !bson_iter_recurse(&ai, &si)) {
         continue;
      }
      bool match = false;
      const char *s = NULL;
      bool d = false;
      while (bson_iter_next(&si)) {
         const char *k = bson_iter_key(&si);
         if (strcmp(k, "id") == 0 && BSON_ITER_HOLDS_UTF8(&si)) {
            match = strcmp(bson_iter_utf8(&si, NULL), id) == 0;
         } else if (strcmp(k, "seq") == 0 && BSON_ITER_HOLDS_UTF8(&si)) {
            s = bson_iter_utf8(&si, NULL);
         } else if (strcmp(k, "done") == 0 && BSON_ITER_HOLDS_BOOL(&si)) {
            d = bson_iter_bool(&si);
         }
      }
      if (match) {
         *seq = s;
         *done = d;
         return true;
      }
   }
   return false;
}

/* Rebuilds ks->token from the shards' positions. */
static void
token_build(ksrc_t *ks)
{
   bson_t arr;
   bson_reinit(&ks->token);
   BSON_APPEND_ARRAY_BEGIN(&ks->token, "shards", &arr);
   int k = 0;
   for (int i = 0; i < ks->n; i++) {
      const shard_t *s = &ks->sh[i];
      if (!s->seq && s->state != SH_DONE) {
         continue;
      }
      char buf[16];
      const char *key;
      bson_t e;
      bson_uint32_to_string((uint32_t) k++, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, key, &e);
      BSON_APPEND_UTF8(&e, "id", s->id);
      if (s->seq) {
         BSON_APPEND_UTF8(&e, "seq", s->seq);
      }
      if (s->state == SH_DONE) {
         BSON_APPEND_BOOL(&e, "done", true);
      }
      bson_append_document_end(&arr, &e);
   }
   bson_append_array_end(&ks->token, &arr);
}

/* Adds the shard `doc` of a ListShards answer when it is new. */
static void
shard_add(ksrc_t *ks, const bson_t *doc)
{
   const char *id = aspen_bson_utf8(doc, "ShardId");
   if (!id) {
      return;
   }
   shard_t *s = shard_find(ks, id);
   if (s) {
      s->listed = true;
      return;
   }
   bool closed = false;
   bson_iter_t it, found;
   if (bson_iter_init(&it, doc) &&
       bson_iter_find_descendant(&it, "SequenceNumberRange.EndingSequenceNumber",
                                 &found) &&
       BSON_ITER_HOLDS_UTF8(&found)) {
      closed = true;
   }
   if (ks->n == ks->cap) {
      ks->cap = ks->cap ? 2 * ks->cap : 8;
      ks->sh = aspen_xrealloc(ks->sh, (size_t) ks->cap * sizeof *ks->sh);
   }
   s = &ks->sh[ks->n++];
   memset(s, 0, sizeof *s);
   s->id = aspen_xstrdup(id);
   const char *p = aspen_bson_utf8(doc, "ParentShardId");
   const char *a = aspen_bson_utf8(doc, "AdjacentParentShardId");
   s->parent = p ? aspen_xstrdup(p) : NULL;
   s->adj_parent = a ? aspen_xstrdup(a) : NULL;
   s->listed = true;
   s->state = SH_WAITING;
   s->start = "TRIM_HORIZON";
   const char *seq;
   bool done;
   if (restored_shard(ks, id, &seq, &done)) {
      if (done) {
         s->state = SH_DONE;
      } else if (seq) {
         s->seq = aspen_xstrdup(seq);
      }
   } else if (ks->fresh) {
      if (ks->o->init == INIT_LATEST) {
         /* The tip of every open shard; the closed ones hold only what
          * came before it. */
         s->state = closed ? SH_DONE : SH_WAITING;
         s->start = "LATEST";
      } else if (ks->o->init == INIT_AT_TIMESTAMP) {
         s->start = "AT_TIMESTAMP";
      }
   }
   aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, ks->ctx,
              "shard %s of stream '%s' found (%s%s%s)", s->id, ks->o->stream,
              s->state == SH_DONE ? "done"
              : s->seq            ? "resumes after its checkpoint"
                                  : s->start,
              s->parent ? ", parent " : "", s->parent ? s->parent : "");
}

static bool
parent_done(const ksrc_t *ks, const char *id)
{
   if (!id) {
      return true;
   }
   for (int i = 0; i < ks->n; i++) {
      if (strcmp(ks->sh[i].id, id) == 0) {
         /* A parent no longer listed has aged out of the stream. */
         return ks->sh[i].state == SH_DONE || !ks->sh[i].listed;
      }
   }
   return true; /* never seen: trimmed before this source looked */
}

/* Starts reading every waiting shard whose parents are done. */
static void
promote(ksrc_t *ks)
{
   for (int i = 0; i < ks->n; i++) {
      shard_t *s = &ks->sh[i];
      if (s->state == SH_WAITING && parent_done(ks, s->parent) &&
          parent_done(ks, s->adj_parent)) {
         s->state = SH_READING;
         s->next_ms = 0;
         aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, ks->ctx,
                    "reading shard %s", s->id);
      }
   }
}

static bool
start_req(ksrc_t *ks, const char *op, const bson_t *body, int tag,
          void *owner, aspen_kinesis_req_t **slot)
{
   aspen_error_t err;
   aspen_kinesis_req_t *r = aspen__kinesis_req_new(&ks->t, op, body, &err);
   if (!r) {
      aspen__kinesis_fail_message(&ks->t, "$source", ks->o->stream,
                                  ASPEN_KINESIS_AUTH, err.message, ks->fatal,
                                  sizeof ks->fatal);
      return false;
   }
   r->tag = tag;
   r->owner = owner;
   curl_multi_add_handle(ks->multi, r->h);
   ks->inflight++;
   *slot = r;
   return true;
}

static void
list_start(ksrc_t *ks, const char *next_token)
{
   bson_t body = BSON_INITIALIZER;
   if (next_token) {
      BSON_APPEND_UTF8(&body, "NextToken", next_token);
   } else {
      BSON_APPEND_UTF8(&body, "StreamName", ks->o->stream);
      for (int i = 0; i < ks->n; i++) {
         ks->sh[i].listed = false;
      }
   }
   (void) start_req(ks, "ListShards", &body, TAG_LIST, NULL, &ks->list_req);
   bson_destroy(&body);
}

static void
shard_start(ksrc_t *ks, shard_t *s)
{
   bson_t body = BSON_INITIALIZER;
   if (!s->iter) {
      BSON_APPEND_UTF8(&body, "StreamName", ks->o->stream);
      BSON_APPEND_UTF8(&body, "ShardId", s->id);
      if (s->seq) {
         BSON_APPEND_UTF8(&body, "ShardIteratorType", "AFTER_SEQUENCE_NUMBER");
         BSON_APPEND_UTF8(&body, "StartingSequenceNumber", s->seq);
      } else {
         BSON_APPEND_UTF8(&body, "ShardIteratorType", s->start);
         if (strcmp(s->start, "AT_TIMESTAMP") == 0) {
            BSON_APPEND_DOUBLE(&body, "Timestamp",
                               (double) ks->o->at_ts_ms / 1000.0);
         }
      }
      (void) start_req(ks, "GetShardIterator", &body, TAG_ITERATOR, s,
                       &s->req);
   } else {
      BSON_APPEND_UTF8(&body, "ShardIterator", s->iter);
      BSON_APPEND_INT32(&body, "Limit", GET_LIMIT);
      (void) start_req(ks, "GetRecords", &body, TAG_RECORDS, s, &s->req);
   }
   bson_destroy(&body);
}

/* Hands one record of shard `s` to the pipeline. */
static void
handle_record(ksrc_t *ks, shard_t *s, const bson_t *rec)
{
   aspen_runtime_t *rt = ks->rt;
   const char *seq = aspen_bson_utf8(rec, "SequenceNumber");
   const char *pkey = aspen_bson_utf8(rec, "PartitionKey");
   const char *data64 = aspen_bson_utf8(rec, "Data");
   if (!seq) {
      return;
   }
   aspen_rt_mark(rt, 0, -1, &ks->token);
   bson_t meta, src;
   bson_init(&meta);
   BSON_APPEND_DOCUMENT_BEGIN(&meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "kinesis");
   BSON_APPEND_UTF8(&src, "kinesisStream", ks->o->stream);
   BSON_APPEND_UTF8(&src, "shardId", s->id);
   BSON_APPEND_UTF8(&src, "sequenceNumber", seq);
   if (pkey) {
      BSON_APPEND_UTF8(&src, "partitionKey", pkey);
   }
   bson_append_document_end(&meta, &src);
   int64_t ts = INT64_MIN;
   bson_iter_t it;
   if (bson_iter_init_find(&it, rec, "ApproximateArrivalTimestamp") &&
       BSON_ITER_HOLDS_NUMBER(&it)) {
      ts = (int64_t) (bson_iter_as_double(&it) * 1000.0);
   }
   uint8_t *data = NULL;
   size_t len = 0;
   bson_t doc;
   aspen_error_t err;
   uint8_t doc_buf[1024];
   aspen_bsonw_t dw;
   aspen_bsonw_init_static(&dw, doc_buf, sizeof doc_buf);
   if (!data64 ||
       !aspen__kinesis_b64_decode(data64, strlen(data64), &data, &len)) {
      bson_t raw = BSON_INITIALIZER;
      BSON_APPEND_UTF8(&raw, "data", data64 ? data64 : "");
      aspen_rt_dead_letter(rt, &raw, &meta,
                           "The Kinesis record's data is not base64");
      bson_destroy(&raw);
   } else if (!aspen__kafka_json_decode(data, len, &dw, &doc, &err)) {
      bson_t raw = BSON_INITIALIZER;
      aspen__kafka_append_raw(&raw, "data", data, len);
      char reason[ASPEN_ERROR_MSG_MAX + 64];
      snprintf(reason, sizeof reason,
               "Failed to parse the Kinesis record's data as JSON: %s",
               err.message);
      aspen_rt_dead_letter(rt, &raw, &meta, reason);
      bson_destroy(&raw);
      bson_destroy(&doc);
   } else {
      aspen_rt_ingest(rt, &doc, &meta, ts);
      bson_destroy(&doc);
   }
   aspen_bsonw_cleanup(&dw);
   free(data);
   bson_destroy(&meta);
   free(s->seq);
   s->seq = aspen_xstrdup(seq);
   token_build(ks);
   aspen_rt_mark_token(rt, &ks->token);
}

static int64_t
backoff(int64_t *b)
{
   *b = *b ? (*b * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : *b * 2) : RETRY_MIN_MS;
   return *b;
}

/* A finished GetShardIterator or GetRecords of shard `s`; returns the
 * number of records handed over. */
static int
shard_done_req(ksrc_t *ks, shard_t *s, aspen_kinesis_req_t *r, CURLcode cc)
{
   bson_t reply;
   char msg[ASPEN_ERROR_MSG_MAX];
   aspen_kinesis_status_t st =
      aspen__kinesis_req_result(r, cc, &reply, msg, sizeof msg);
   int64_t now = aspen_clock_mono_ms();
   int handed = 0;
   if (st == ASPEN_KINESIS_EXPIRED) {
      free(s->iter);
      s->iter = NULL;
      s->next_ms = now;
   } else if (st == ASPEN_KINESIS_RETRY) {
      int64_t b = backoff(&s->backoff_ms);
      aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, ks->ctx,
                 "Kinesis shard %s: %s; retrying in %lld ms", s->id, msg,
                 (long long) b);
      s->next_ms = now + b;
   } else if (st != ASPEN_KINESIS_OK) {
      aspen__kinesis_fail_message(&ks->t, "$source", ks->o->stream, st, msg,
                                  ks->fatal, sizeof ks->fatal);
   } else if (r->tag == TAG_ITERATOR) {
      s->backoff_ms = 0;
      const char *iter = aspen_bson_utf8(&reply, "ShardIterator");
      free(s->iter);
      s->iter = iter ? aspen_xstrdup(iter) : NULL;
      if (!iter) {
         /* No iterator: the shard holds nothing more (closed, read). */
         s->state = SH_DONE;
         ks->list_wanted = true;
      }
      s->next_ms = now;
   } else {
      s->backoff_ms = 0;
      bson_iter_t it, ai;
      if (bson_iter_init_find(&it, &reply, "Records") &&
          BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &ai)) {
         while (bson_iter_next(&ai) && !aspen_rt_stopping(ks->rt)) {
            bson_t rec;
            if (aspen_bson_view(&ai, &rec)) {
               handle_record(ks, s, &rec);
               handed++;
            }
         }
      }
      if (aspen_rt_stopping(ks->rt)) {
         bson_destroy(&reply);
         return handed;
      }
      const char *next = aspen_bson_utf8(&reply, "NextShardIterator");
      free(s->iter);
      s->iter = next ? aspen_xstrdup(next) : NULL;
      if (!next) {
         s->state = SH_DONE;
         aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, ks->ctx,
                    "shard %s read to its end", s->id);
         token_build(ks);
         aspen_rt_mark_token(ks->rt, &ks->token);
         ks->list_wanted = true;
      }
      /* A full answer means more is waiting: read again soon. */
      s->next_ms = now + (handed >= GET_LIMIT ? 0 : POLL_MS);
   }
   bson_destroy(&reply);
   return handed;
}

static void
list_done_req(ksrc_t *ks, aspen_kinesis_req_t *r, CURLcode cc)
{
   bson_t reply;
   char msg[ASPEN_ERROR_MSG_MAX];
   aspen_kinesis_status_t st =
      aspen__kinesis_req_result(r, cc, &reply, msg, sizeof msg);
   int64_t now = aspen_clock_mono_ms();
   if (st == ASPEN_KINESIS_RETRY || st == ASPEN_KINESIS_EXPIRED) {
      int64_t b = backoff(&ks->list_backoff_ms);
      aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, ks->ctx,
                 "Kinesis stream '%s': %s; listing again in %lld ms",
                 ks->o->stream, msg, (long long) b);
      ks->list_wanted = true;
      ks->list_not_before_ms = now + b;
   } else if (st != ASPEN_KINESIS_OK) {
      aspen__kinesis_fail_message(&ks->t, "$source", ks->o->stream, st, msg,
                                  ks->fatal, sizeof ks->fatal);
   } else {
      ks->list_backoff_ms = 0;
      bson_iter_t it, ai;
      if (bson_iter_init_find(&it, &reply, "Shards") &&
          BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &ai)) {
         while (bson_iter_next(&ai)) {
            bson_t sd;
            if (aspen_bson_view(&ai, &sd)) {
               shard_add(ks, &sd);
            }
         }
      }
      const char *next = aspen_bson_utf8(&reply, "NextToken");
      if (next) {
         list_start(ks, next);
      } else {
         ks->fresh = false;
         promote(ks);
         ks->next_list_ms = now + ks->o->reshard_ms;
      }
   }
   bson_destroy(&reply);
}

/* Serves finished transfers; returns the number of records handed over. */
static int
serve(ksrc_t *ks)
{
   int handed = 0, left;
   CURLMsg *m;
   while ((m = curl_multi_info_read(ks->multi, &left))) {
      if (m->msg != CURLMSG_DONE) {
         continue;
      }
      aspen_kinesis_req_t *r = NULL;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &r);
      CURLcode cc = m->data.result;
      curl_multi_remove_handle(ks->multi, r->h);
      ks->inflight--;
      if (r->tag == TAG_LIST) {
         ks->list_req = NULL;
         list_done_req(ks, r, cc);
      } else {
         shard_t *s = r->owner;
         s->req = NULL;
         handed += shard_done_req(ks, s, r, cc);
      }
      aspen__kinesis_req_destroy(r);
      if (ks->fatal[0] || aspen_rt_stopping(ks->rt)) {
         break;
      }
   }
   return handed;
}

static void
ksrc_free(ksrc_t *ks)
{
   if (!ks) {
      return;
   }
   for (int i = 0; i < ks->n; i++) {
      shard_t *s = &ks->sh[i];
      if (s->req) {
         curl_multi_remove_handle(ks->multi, s->req->h);
         aspen__kinesis_req_destroy(s->req);
      }
      free(s->id);
      free(s->parent);
      free(s->adj_parent);
      free(s->iter);
      free(s->seq);
   }
   if (ks->list_req) {
      curl_multi_remove_handle(ks->multi, ks->list_req->h);
      aspen__kinesis_req_destroy(ks->list_req);
   }
   free(ks->sh);
   if (ks->multi) {
      curl_multi_cleanup(ks->multi);
   }
   bson_destroy(&ks->token);
   bson_destroy(&ks->restored_token);
   free(ks);
}

static bool
kin_open(aspen_runtime_t *rt, void **state, aspen_error_t *err)
{
   const aspen_source_spec_t *spec = aspen_rt_source_spec(rt);
   ksrc_t *ks = aspen_xcalloc(1, sizeof *ks);
   ks->rt = rt;
   ks->o = spec->opts;
   bson_init(&ks->token);
   bson_init(&ks->restored_token);
   snprintf(ks->ctx, sizeof ks->ctx, "%s", aspen_rt_processor_name(rt));
   aspen__kinesis_target_init(&ks->t, spec->conn, ks->o->region);
   const bson_t *pos = aspen_rt_restored_position(rt);
   bson_iter_t it;
   bson_t tok;
   if (pos && bson_iter_init_find(&it, pos, "token") &&
       aspen_bson_view(&it, &tok)) {
      bson_concat(&ks->restored_token, &tok);
      ks->restored = true;
   }
   ks->fresh = !ks->restored;
   /* The stream must be there (and the credentials good) before the start
    * is reported: the first listing runs here, waiting. */
   bson_t body = BSON_INITIALIZER, reply;
   BSON_APPEND_UTF8(&body, "StreamName", ks->o->stream);
   char msg[ASPEN_ERROR_MSG_MAX];
   aspen_kinesis_status_t st =
      aspen__kinesis_call(&ks->t, "ListShards", &body, &reply,
                          OPEN_TIMEOUT_MS, aspen__kinesis_rt_stopping, rt, msg, sizeof msg);
   bson_destroy(&body);
   if (st != ASPEN_KINESIS_OK) {
      char full[ASPEN_ERROR_MSG_MAX];
      aspen__kinesis_fail_message(&ks->t, "$source", ks->o->stream, st, msg,
                                  full, sizeof full);
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKinesisConnectionError,
                      "%s", full);
      bson_destroy(&reply);
      ksrc_free(ks);
      return false;
   }
   bson_destroy(&reply);
   ks->multi = curl_multi_init();
   ks->list_wanted = true; /* the run's own listing, paginated */
   token_build(ks);
   if (ks->restored) {
      /* Until a record moves it, the position is the restored one. */
      bson_reinit(&ks->token);
      bson_concat(&ks->token, &ks->restored_token);
   }
   *state = ks;
   return true;
}

static void
kin_run(aspen_runtime_t *rt, void *state)
{
   ksrc_t *ks = state;
   int64_t last_flush = aspen_clock_mono_ms();
   int since_flush = 0;
   while (!aspen_rt_stopping(rt)) {
      if (ks->fatal[0]) {
         aspen_rt_fail(rt, ks->fatal);
         return;
      }
      int64_t now = aspen_clock_mono_ms();
      if (!ks->list_req && now >= ks->list_not_before_ms &&
          (ks->list_wanted || now >= ks->next_list_ms)) {
         ks->list_wanted = false;
         list_start(ks, NULL);
      }
      int64_t wake = now + 50;
      for (int i = 0; i < ks->n && ks->inflight < MAX_INFLIGHT; i++) {
         shard_t *s = &ks->sh[i];
         if (s->state != SH_READING || s->req) {
            continue;
         }
         if (s->next_ms <= now) {
            shard_start(ks, s);
         } else if (s->next_ms < wake) {
            wake = s->next_ms;
         }
      }
      int running = 0;
      curl_multi_perform(ks->multi, &running);
      int handed = serve(ks);
      since_flush += handed;
      if (ks->fatal[0]) {
         continue;
      }
      now = aspen_clock_mono_ms();
      if (handed == 0 || since_flush >= FLUSH_EVERY_RECORDS ||
          now - last_flush >= FLUSH_EVERY_MS) {
         /* Flushes sink and DLQ and may take a checkpoint. */
         if (aspen_rt_wait(rt, 0)) {
            break;
         }
         since_flush = 0;
         last_flush = now;
      }
      if (handed == 0) {
         int64_t ms = wake - aspen_clock_mono_ms();
         ms = ms < 1 ? 1 : ms > 50 ? 50 : ms;
         curl_multi_poll(ks->multi, NULL, 0, (int) ms, NULL);
      }
   }
   (void) aspen_rt_flush(rt);
}

static void
kin_close(void *state)
{
   ksrc_free(state);
}

const aspen_source_ops_t aspen_source_kinesis_ops = {
   .type = "kinesis",
   .operator_name = OPERATOR,
   .what = "a Kinesis $source",
   .parse_option = kin_parse_option,
   .parse_done = kin_parse_done,
   .spec_destroy = kopts_destroy,
   .open = kin_open,
   .run = kin_run,
   .close = kin_close,
};
