/*
 * sink_emit_kafka.c - $emit to Apache Kafka (../shared/spec/asp-semantics.md
 * §5.1), the $emit sink of the kafka row of connectors.def: option
 * validation at create time (its parse) and, at run time, a librdkafka
 * producer on the processor's thread. An $emit whose connection is an
 * Atlas one is that row's sink instead, a time-series collection (§5.2,
 * sink_timeseries.c); an $emit whose connection has no $emit sink is
 * reported here (sink_stages.c).
 *
 * Each document becomes one message: the value is the document as Extended
 * JSON v2 (relaxed unless config.outputFormat is canonicalJson; Dates as
 * ISO-8601 strings with dateFormat ISO8601), the topic is `topic` (a name or
 * an expression evaluated per document), the key is config.key serialised as
 * config.keyFormat, the headers come from config.headers, and
 * config.tombstoneWhen true sends a null value instead.
 *
 * Delivery: the producer is idempotent (with acks all, the default) and
 * flush (called by the runtime before a source commits its offsets) waits
 * for every delivery report, so "flushed" means acknowledged by the broker.
 * A document Kafka refuses for itself (too large, invalid record) goes to the
 * DLQ (counted in dlqMessageCount); the broker judges max.message.bytes per
 * batch, so documents refused as too large are first sent again one at a
 * time. Any other delivery failure (timeout after 30 s, authentication or
 * authorisation, a deleted topic that is not auto-created, a fatal
 * idempotence error) fails the processor, whose source then does not commit
 * the unacknowledged tail. When the producer's queue is full, write serves
 * delivery reports and waits (back-pressure) instead of dropping.
 *
 * With the processor option exactlyOnce the producer is transactional
 * (kafka_txn.c): the runtime's checkpoints commit each transaction together
 * with the $source offsets (emit_commit), and a message the broker refuses
 * fails the processor instead of going to the DLQ, since the transaction
 * cannot commit without it.
 */
#include "base/not_yet.h"
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"
#include "connectors/schema_registry.h"
#include "connectors/sink_int.h"
#include "runtime/sink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ASPEN_LOG_DOMAIN "kafka"
#define MAX_TOPICS 1000
#define OPERATOR "KafkaEmitOperator"
#define CLOSE_WAIT_MS 5000
/* Messages produced between two polls for delivery reports. */
#define POLL_EVERY 64

typedef struct {
   aspen_kafka_client_hdr_t hdr; /* first: the producer's opaque */
   const aspen_conn_t *conn;
   aspen_expr_t *topic;
   aspen_expr_t *key;
   aspen_kafka_key_format_t key_format;
   bool has_key_format; /* config.keyFormat given */
   aspen_expr_t *headers;
   aspen_expr_t *tombstone_when;
   /* An expression among the above may read the document's
    * _stream_meta ($meta): emit_write finds it only then. */
   bool reads_meta;
   aspen_kafka_json_opts_t json;
   char acks[8];
   char compression[8];
   /* schemaRegistry: values are Avro of `avro` (its JSON `schema_json`),
    * registered (or looked up) under the subject `strategy` names. */
   const aspen_conn_t *sr_conn;
   char *schema_json;
   aspen_avro_schema_t *avro;
   enum { SUBJECT_TOPIC, SUBJECT_RECORD, SUBJECT_TOPIC_RECORD } strategy;
   bool auto_register;
   aspen_sr_t *sr; /* run time */
   /* Run time. */
   aspen_runtime_t *rt;
   rd_kafka_t *rk;
   char *name; /* hdr.ctx: the processor's name, a copy */
   char **topics_seen;
   /* Each one's topic handle, made on its first message (NULL before):
    * librdkafka then need not look the name up for every message. */
   rd_kafka_topic_t **rkts;
   int n_topics_seen;
   bool closing;
   /* Documents whose batch the broker refused as too large, to send again
    * one at a time (emit_flush); `resending` while that runs. */
   bson_t **resend;
   int n_resend, cap_resend;
   bool resending;
   bool txn; /* exactly-once: a transactional producer */
   aspen_ejson_text_t text; /* a value's JSON, its buffer reused */
   unsigned since_poll;     /* messages produced since the last poll */
   char fatal[ASPEN_ERROR_MSG_MAX];
   int32_t fatal_code;
} emit_t;

/* Frees what only the processor's thread uses (the expressions borrow
 * from the pipeline's spec); the struct itself may outlive it (emit_close). */
static void
emit_free_compiled(emit_t *e)
{
   aspen_expr_destroy(e->topic);
   aspen_expr_destroy(e->key);
   aspen_expr_destroy(e->headers);
   aspen_expr_destroy(e->tombstone_when);
   e->topic = e->key = e->headers = e->tombstone_when = NULL;
   bson_free(e->schema_json);
   e->schema_json = NULL;
   aspen__avro_schema_destroy(e->avro);
   e->avro = NULL;
   aspen__sr_destroy(e->sr);
   e->sr = NULL;
   for (int i = 0; i < e->n_topics_seen; i++) {
      free(e->topics_seen[i]);
      if (e->rkts[i]) {
         rd_kafka_topic_destroy(e->rkts[i]);
      }
   }
   free(e->topics_seen);
   free(e->rkts);
   e->topics_seen = NULL;
   e->rkts = NULL;
   e->n_topics_seen = 0;
   for (int i = 0; i < e->n_resend; i++) {
      bson_destroy(e->resend[i]);
   }
   free(e->resend);
   e->resend = NULL;
   e->n_resend = e->cap_resend = 0;
   aspen_ejson_text_cleanup(&e->text);
}

static void
emit_free_mem(void *p)
{
   emit_t *e = p;
   free(e->name);
   free(e);
}

static void
emit_free(emit_t *e)
{
   if (!e) {
      return;
   }
   emit_free_compiled(e);
   emit_free_mem(e);
}

/* ---- options ---------------------------------------------------------------- */

static bool
compile_expr(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
             const char *opt, aspen_expr_t **out, aspen_error_t *err)
{
   /* A key given twice ({topic: "a", topic: "b"}) compiles again: the last
    * one wins, and the first must not leak (found by fuzz_pipeline). */
   aspen_expr_destroy(*out);
   *out = NULL;
   if (!aspen_expr_parse(it, NULL, out, err)) {
      char msg[ASPEN_ERROR_MSG_MAX];
      snprintf(msg, sizeof msg, "%s", err->message);
      aspen_parse_error(err, pc, opt, "%s", msg);
      return false;
   }
   return true;
}

/* A Kafka option of $emit.config (aspen__emit_config_opt_fn). */
static bool
config_opt(void *sink, const bson_iter_t *ci, const char *k, const char *opt,
           const aspen_parse_ctx_t *pc, bool *known, aspen_error_t *err)
{
   static const char *const compressions[] = {"none", "gzip", "snappy", "lz4",
                                              "zstd", NULL};
   static const char *const key_formats[] = {"binData", "string", "json",
                                             "int",     "long",   "double",
                                             NULL};
   emit_t *e = sink;
   const char *v = NULL;
   if (strcmp(k, "acks") == 0) {
      if (BSON_ITER_HOLDS_INT32(ci) || BSON_ITER_HOLDS_INT64(ci)) {
         int64_t n = bson_iter_as_int64(ci);
         if (n != -1 && n != 0 && n != 1) {
            aspen_parse_error(err, pc, opt,
                              "config.acks must be \"all\", -1, 0 or 1");
            return false;
         }
         snprintf(e->acks, sizeof e->acks, "%s",
                  n == -1 ? "all" : n == 0 ? "0" : "1");
      } else {
         static const char *const acks[] = {"all", "-1", "0", "1", NULL};
         if (!aspen__sink_enum_value(ci, acks, pc, opt, &v, err)) {
            return false;
         }
         snprintf(e->acks, sizeof e->acks, "%s",
                  strcmp(v, "-1") == 0 ? "all" : v);
      }
   } else if (strcmp(k, "compression_type") == 0) {
      if (!aspen__sink_enum_value(ci, compressions, pc, opt, &v, err)) {
         return false;
      }
      snprintf(e->compression, sizeof e->compression, "%s", v);
   } else if (strcmp(k, "keyFormat") == 0) {
      if (!aspen__sink_enum_value(ci, key_formats, pc, opt, &v, err)) {
         return false;
      }
      (void) aspen__kafka_key_format_parse(v, &e->key_format);
      e->has_key_format = true;
   } else if (strcmp(k, "key") == 0) {
      return compile_expr(ci, pc, opt, &e->key, err);
   } else if (strcmp(k, "headers") == 0) {
      return compile_expr(ci, pc, opt, &e->headers, err);
   } else if (strcmp(k, "tombstoneWhen") == 0) {
      return compile_expr(ci, pc, opt, &e->tombstone_when, err);
   } else {
      *known = false;
   }
   return true;
}

/* Validates an $emit argument and compiles it. The expressions borrow from
 * `spec`, which must outlive the result. */
/* $emit.schemaRegistry: {connectionName, valueSchema: {type: "avro",
 * schema: <Avro schema>, options: {autoRegisterSchemas, subjectNameStrategy}}}
 * (ASP's fields; valueSchema as an expression is not supported yet). */
static bool
parse_schema_registry(emit_t *e, const bson_iter_t *it,
                      const aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "schemaRegistry",
                        "BSON field '$emit.schemaRegistry' must be an object");
      return false;
   }
   bson_iter_t ri, vi;
   bool has_conn = false, has_value = false, has_strategy = false;
   e->auto_register = true;
   bson_iter_recurse(it, &ri);
   while (bson_iter_next(&ri)) {
      const char *k = bson_iter_key(&ri);
      if (strcmp(k, "connectionName") == 0) {
         if (!aspen__sr_conn_resolve(&ri, pc, "$emit.schemaRegistry",
                                     &e->sr_conn, err)) {
            return false;
         }
         has_conn = true;
      } else if (strcmp(k, "valueSchema") == 0) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&ri)) {
            aspen_parse_error(err, pc, "schemaRegistry.valueSchema",
                              "BSON field '$emit.schemaRegistry.valueSchema' "
                              "must be an object");
            return false;
         }
         vi = ri;
         has_value = true;
      } else {
         char opt[96];
         snprintf(opt, sizeof opt, "schemaRegistry.%s", k);
         aspen_parse_unknown_field(err, pc, opt, "$emit.schemaRegistry", k);
         return false;
      }
   }
   if (!has_conn || !has_value) {
      const char *f = has_conn ? "valueSchema" : "connectionName";
      char opt[96];
      snprintf(opt, sizeof opt, "schemaRegistry.%s", f);
      aspen_parse_missing_field(err, pc, opt, "$emit.schemaRegistry", f);
      return false;
   }
   bson_iter_t fi;
   const char *type = NULL;
   bool has_schema = false;
   bson_iter_recurse(&vi, &fi);
   while (bson_iter_next(&fi)) {
      const char *k = bson_iter_key(&fi);
      if (k[0] == '$') {
         aspen_parse_error(err, pc, "schemaRegistry.valueSchema",
                           "$emit.schemaRegistry.valueSchema as an "
                           "expression is supported by Atlas Stream "
                           "Processing but not yet by this version of aspen");
         return false;
      }
      if (strcmp(k, "type") == 0 && BSON_ITER_HOLDS_UTF8(&fi)) {
         type = bson_iter_utf8(&fi, NULL);
      } else if (strcmp(k, "schema") == 0 && BSON_ITER_HOLDS_DOCUMENT(&fi)) {
         bson_t sd;
         aspen_bson_view(&fi, &sd);
         e->schema_json = bson_as_relaxed_extended_json(&sd, NULL);
         has_schema = true;
      } else if (strcmp(k, "options") == 0 && BSON_ITER_HOLDS_DOCUMENT(&fi)) {
         bson_iter_t oi;
         bson_iter_recurse(&fi, &oi);
         while (bson_iter_next(&oi)) {
            const char *ok = bson_iter_key(&oi);
            if (strcmp(ok, "autoRegisterSchemas") == 0 &&
                BSON_ITER_HOLDS_BOOL(&oi)) {
               e->auto_register = bson_iter_bool(&oi);
            } else if (strcmp(ok, "subjectNameStrategy") == 0 &&
                       BSON_ITER_HOLDS_UTF8(&oi)) {
               const char *s = bson_iter_utf8(&oi, NULL);
               has_strategy = true;
               if (strcmp(s, "TopicNameStrategy") == 0) {
                  e->strategy = SUBJECT_TOPIC;
               } else if (strcmp(s, "RecordNameStrategy") == 0) {
                  e->strategy = SUBJECT_RECORD;
               } else if (strcmp(s, "TopicRecordNameStrategy") == 0) {
                  e->strategy = SUBJECT_TOPIC_RECORD;
               } else {
                  aspen_parse_error(
                     err, pc,
                     "schemaRegistry.valueSchema.options.subjectNameStrategy",
                     "Enumeration value '%s' for field "
                     "'$emit.schemaRegistry.valueSchema.options."
                     "subjectNameStrategy' is not a valid value.",
                     s);
                  return false;
               }
            } else {
               char opt[128];
               snprintf(opt, sizeof opt,
                        "schemaRegistry.valueSchema.options.%s", ok);
               aspen_parse_error(err, pc, opt,
                                 "BSON field '$emit.%s' is an unknown field "
                                 "or has the wrong type.",
                                 opt);
               return false;
            }
         }
      } else {
         char opt[96];
         snprintf(opt, sizeof opt, "schemaRegistry.valueSchema.%s", k);
         aspen_parse_error(err, pc, opt,
                           "BSON field '$emit.%s' is an unknown field or has "
                           "the wrong type.",
                           opt);
         return false;
      }
   }
   if (!type || !has_schema) {
      const char *f = type ? "schema" : "type";
      char opt[96];
      snprintf(opt, sizeof opt, "schemaRegistry.valueSchema.%s", f);
      aspen_parse_missing_field(err, pc, opt, "$emit", opt);
      return false;
   }
   if (strcasecmp(type, "avro") != 0) {
      /* ASP documents Avro as the only serialization through a schema
       * registry (JSON Schema and Protobuf subjects are not written). */
      aspen_parse_error(err, pc, "schemaRegistry.valueSchema.type",
                        "Enumeration value '%s' for field "
                        "'$emit.schemaRegistry.valueSchema.type' is not a "
                        "valid value: Atlas Stream Processing supports only "
                        "\"avro\" serialization through a Schema Registry "
                        "connection",
                        type);
      return false;
   }
   if (has_strategy && !e->auto_register) {
      aspen_parse_error(err, pc,
                        "schemaRegistry.valueSchema.options.subjectNameStrategy",
                        "subjectNameStrategy can be set only if "
                        "autoRegisterSchemas is true");
      return false;
   }
   aspen_error_t serr;
   e->avro = aspen__avro_schema_new(e->schema_json, strlen(e->schema_json),
                                    &serr);
   if (!e->avro) {
      aspen_parse_error(err, pc, "schemaRegistry.valueSchema.schema",
                        "$emit.schemaRegistry.valueSchema.schema is not a "
                        "valid Avro schema: %s",
                        serr.message);
      return false;
   }
   if (e->strategy != SUBJECT_TOPIC && !aspen__avro_schema_fullname(e->avro)) {
      aspen_parse_error(err, pc,
                        "schemaRegistry.valueSchema.options.subjectNameStrategy",
                        "%s needs a named schema (a record)",
                        e->strategy == SUBJECT_RECORD
                           ? "RecordNameStrategy"
                           : "TopicRecordNameStrategy");
      return false;
   }
   return true;
}

static bool
emit_compile(const bson_t *spec, const aspen_conns_t *conns,
             const aspen_parse_ctx_t *pc, emit_t **out, aspen_error_t *err)
{
   *out = NULL;
   emit_t *e = aspen_xcalloc(1, sizeof *e);
   snprintf(e->acks, sizeof e->acks, "all");
   snprintf(e->compression, sizeof e->compression, "none");
   bool has_topic = false;
   const char *conn_name = NULL, *ts_field = NULL;
   bson_iter_t it;
   bson_iter_init(&it, spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "connectionName") == 0) {
         if (!aspen__emit_conn_name(&it, pc, &conn_name, err)) {
            goto fail;
         }
      } else if (strcmp(k, "topic") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&it) && !BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_parse_error(err, pc, "topic",
                              "BSON field '$emit.topic' must be a string or "
                              "an expression");
            goto fail;
         }
         if (BSON_ITER_HOLDS_UTF8(&it) && !*bson_iter_utf8(&it, NULL)) {
            aspen_parse_error(err, pc, "topic",
                              "$emit.topic cannot be empty");
            goto fail;
         }
         if (!compile_expr(&it, pc, "topic", &e->topic, err)) {
            goto fail;
         }
         has_topic = true;
      } else if (strcmp(k, "config") == 0) {
         if (!aspen__emit_config_parse(&it, pc, false, &e->json, config_opt,
                                       e, err)) {
            goto fail;
         }
      } else if (strcmp(k, "schemaRegistry") == 0) {
         if (!parse_schema_registry(e, &it, pc, err)) {
            goto fail;
         }
      } else if (strcmp(k, "db") == 0 || strcmp(k, "coll") == 0 ||
                 strcmp(k, "timeseries") == 0) {
         /* The time-series form's options: refused below, once the
          * connection says which form this is. */
         if (!ts_field) {
            ts_field = k;
         }
      } else {
         if (aspen_not_yet_parse_error("$emit", k, pc, k, err)) {
            goto fail;
         }
         aspen_parse_unknown_field(err, pc, k, "$emit", k);
         goto fail;
      }
   }
   e->conn = aspen__emit_conn_find(conns, conn_name, NULL, pc, err);
   if (!e->conn) {
      goto fail;
   }
   if (e->conn->kind->emit != &aspen_sink_emit_ops) {
      aspen_parse_error(err, pc, "connectionName",
                        "Expected Atlas connection for $emit, but connection "
                        "'%s' is of type %s",
                        conn_name, e->conn->kind->type_name);
      goto fail;
   }
   if (ts_field) {
      aspen_parse_error(err, pc, ts_field,
                        "BSON field '$emit.%s' is an unknown field. (%s is "
                        "an option of $emit to a time-series collection, "
                        "whose connection is an Atlas one; connection '%s' "
                        "is a Kafka one)",
                        ts_field, ts_field, conn_name);
      goto fail;
   }
   if (!has_topic) {
      aspen_parse_missing_field(err, pc, "topic", "$emit", "topic");
      goto fail;
   }
   if (e->key && !e->has_key_format) {
      aspen_parse_error(err, pc, "config.key",
                        "Expected config.keyFormat to be specified when "
                        "config.key is specified");
      goto fail;
   }
   aspen_value_t constant;
   e->reads_meta = !aspen_expr_is_constant(e->topic, &constant) || e->key ||
                   e->headers || e->tombstone_when;
   *out = e;
   return true;

fail:
   emit_free(e);
   return false;
}

/* Validates an $emit argument (the sink's parse). */
static bool
emit_parse(const bson_t *spec, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   emit_t *e;
   if (!emit_compile(spec, pc->conns, pc, &e, err)) {
      return false;
   }
   /* The sink compiles its own copy when the processor starts. */
   emit_free(e);
   return true;
}

/* ---- the producer ------------------------------------------------------------ */

/* Delivery failures Kafka reports for one message only: that document goes
 * to the DLQ. Everything else fails the processor. */
static bool
is_per_message(rd_kafka_resp_err_t e)
{
   switch (e) {
   case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
   case RD_KAFKA_RESP_ERR_INVALID_RECORD:
   case RD_KAFKA_RESP_ERR_INVALID_MSG:
   case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
   case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
   case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
   case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
      return true;
   default:
      return false;
   }
}

static void
set_fatal(emit_t *e, const char *topic, rd_kafka_resp_err_t err,
          const char *detail)
{
   if (!e->fatal[0]) {
      /* Name the two causes a user can act on. */
      const char *why =
         err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
               err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
               err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION
            ? "the topic does not exist (deleted, and topics are not "
              "auto-created): "
         : err == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
               err == RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED
            ? "authentication failed: "
            : "";
      snprintf(e->fatal, sizeof e->fatal,
               "Kafka $emit%s%s%s (connection '%s') failed: %s%s",
               topic ? " to topic '" : "", topic ? topic : "",
               topic ? "'" : "", e->conn->name, why, detail);
      e->fatal_code = ASPEN_ERR_StreamProcessorKafkaConnectionError;
   }
}

/* The broker checks a topic's max.message.bytes against a whole batch, so
 * one large document refuses the small ones batched with it, and a batch
 * of small ones can be refused too when the topic's limit is below the
 * producer's. Such documents are sent again alone before they are judged
 * (as Kafka's Java producer splits such a batch). */
static bool
is_batch_size_error(rd_kafka_resp_err_t e)
{
   return e == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
          e == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE;
}

/* Served from rd_kafka_poll/flush, so on the processor's thread. A failed
 * document is never dropped: it goes to the DLQ (counted in the stats'
 * dlqMessageCount), is sent again, or fails the processor. */
static void
dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
   emit_t *e = opaque;
   /* The document rides behind the value in the payload (emit_write),
    * freed with it; a tombstone's is a copy of its own. */
   bson_t view, *doc = m->_private;
   bool owned = true;
   (void) rk;
   if (doc && m->payload && (char *) doc == (char *) m->payload + m->len) {
      uint32_t len;
      memcpy(&len, doc, sizeof len);
      if (!bson_init_static(&view, (const uint8_t *) doc, BSON_UINT32_FROM_LE(len))) {
         bson_init(&view); /* cannot happen: emit_write copied a valid one */
      }
      doc = &view;
      owned = false;
   }
   if (m->err && !e->closing) {
      const char *topic = rd_kafka_topic_name(m->rkt);
      rd_kafka_resp_err_t why = aspen__kafka_delivery_error(m->err);
      /* Exactly-once: a refused message makes the transaction abortable,
       * so resending or dead-lettering cannot help; it fails (below). */
      if (is_batch_size_error(why) && doc && !e->resending && !e->txn) {
         if (e->n_resend == e->cap_resend) {
            e->cap_resend = e->cap_resend ? 2 * e->cap_resend : 16;
            e->resend = aspen_xrealloc(
               e->resend, (size_t) e->cap_resend * sizeof *e->resend);
         }
         /* the list owns it (a copy of the payload's) now */
         e->resend[e->n_resend++] = owned ? doc : bson_copy(doc);
         return;
      }
      if (is_per_message(why) && doc && !e->txn) {
         char reason[ASPEN_ERROR_MSG_MAX];
         snprintf(reason, sizeof reason,
                  "Failed to emit the document to Kafka topic '%s': %s",
                  topic, rd_kafka_err2str(why));
         aspen_rt_sink_failed(e->rt, doc, reason);
      } else {
         set_fatal(e, topic, why, rd_kafka_err2str(why));
      }
   }
   if (doc && owned) {
      bson_destroy(doc);
   }
}

static void
producer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
   emit_t *e = opaque;
   rd_kafka_resp_err_t code = (rd_kafka_resp_err_t) err;
   if (code == RD_KAFKA_RESP_ERR__FATAL) {
      char why[512];
      rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
      set_fatal(e, NULL, orig, why);
      return;
   }
   if (code == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
       code == RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED) {
      set_fatal(e, NULL, code, reason);
      return;
   }
   aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, e->hdr.ctx,
              "Kafka producer error (%s), retrying: %s",
              rd_kafka_err2name(code), reason);
}

static bool
emit_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
          aspen_error_t *err)
{
   *state = NULL;
   aspen_parse_ctx_t pc = {.conns = aspen_rt_conns(rt)};
   snprintf(pc.path, sizeof pc.path, "$emit");
   emit_t *e;
   if (!emit_compile(spec, pc.conns, &pc, &e, err)) {
      return false;
   }
   e->rt = rt;
   e->name = aspen_xstrdup(aspen_rt_processor_name(rt));
   e->hdr.ctx = e->name;
   if (e->sr_conn) {
      e->sr = aspen__sr_new(aspen__conn_schema_registry(e->sr_conn), e->name);
   }
   rd_kafka_conf_t *conf =
      aspen__conn_kafka_client_conf(e->conn, &e->hdr, err);
   if (!conf) {
      emit_free(e);
      return false;
   }
   bool idempotent = strcmp(e->acks, "all") == 0;
   if (!aspen__kafka_conf_set(conf, "enable.idempotence",
                              idempotent ? "true" : "false", err) ||
       !aspen__kafka_conf_set(conf, "acks", e->acks, err) ||
       !aspen__kafka_conf_set(conf, "compression.type", e->compression,
                              err) ||
       !aspen__kafka_conf_set(conf, "linger.ms", "5", err) ||
       !aspen__kafka_conf_set(conf, "message.timeout.ms", "30000", err)) {
      rd_kafka_conf_destroy(conf);
      emit_free(e);
      return false;
   }
   e->txn = aspen_rt_exactly_once(rt);
   if (e->txn && (!idempotent || !aspen__kafka_txn_conf(conf, rt, err))) {
      if (!idempotent) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                         "StreamProcessorInvalidOptions: options.exactlyOnce "
                         "needs $emit's config.acks to be \"all\"");
      }
      rd_kafka_conf_destroy(conf);
      emit_free(e);
      return false;
   }
   rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
   rd_kafka_conf_set_error_cb(conf, producer_error_cb);
   char errstr[512];
   e->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
   if (!e->rk) {
      rd_kafka_conf_destroy(conf);
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                      "cannot create a Kafka producer for connection '%s': %s",
                      e->conn->name, errstr);
      emit_free(e);
      return false;
   }
   /* Reach the cluster now, so a wrong address or wrong credentials fail
    * the start. */
   const struct rd_kafka_metadata *md = NULL;
   rd_kafka_resp_err_t me =
      aspen__kafka_metadata(e->rk, NULL, &md, 10000, e->fatal,
                            aspen__kafka_rt_stopping, e->rt);
   if (me) {
      if (me == RD_KAFKA_RESP_ERR__FATAL) {
         aspen_error_set(err, e->fatal_code, "%s", e->fatal);
      } else {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                         "Kafka connection error on connection '%s' "
                         "(bootstrap servers unreachable or refused): %s",
                         e->conn->name, rd_kafka_err2str(me));
      }
      rd_kafka_destroy(e->rk);
      emit_free(e);
      return false;
   }
   rd_kafka_metadata_destroy(md);
   if (e->txn && !aspen__kafka_txn_init(e->rk, err)) {
      rd_kafka_destroy(e->rk);
      emit_free(e);
      return false;
   }
   *state = e;
   return true;
}

/* Builds Kafka headers from an object {k: v} or an array [{k, v}]. */
static bool
add_header(rd_kafka_headers_t *hdrs, const char *name, const bson_iter_t *vi,
           aspen_error_t *err)
{
   const bson_value_t *v = bson_iter_value((bson_iter_t *) vi);
   uint8_t *buf = NULL;
   size_t len = 0;
   switch (v->value_type) {
   case BSON_TYPE_NULL:
      rd_kafka_header_add(hdrs, name, -1, NULL, 0);
      return true;
   case BSON_TYPE_BINARY:
      rd_kafka_header_add(hdrs, name, -1, v->value.v_binary.data,
                          v->value.v_binary.data_len);
      return true;
   case BSON_TYPE_UTF8:
      rd_kafka_header_add(hdrs, name, -1, v->value.v_utf8.str,
                          v->value.v_utf8.len);
      return true;
   case BSON_TYPE_DOCUMENT:
      (void) aspen__kafka_key_encode(ASPEN_KAFKA_KEY_JSON, v, &buf, &len, err);
      break;
   case BSON_TYPE_INT32:
      (void) aspen__kafka_key_encode(ASPEN_KAFKA_KEY_INT, v, &buf, &len, err);
      break;
   case BSON_TYPE_INT64:
      (void) aspen__kafka_key_encode(ASPEN_KAFKA_KEY_LONG, v, &buf, &len, err);
      break;
   case BSON_TYPE_DOUBLE:
      (void) aspen__kafka_key_encode(ASPEN_KAFKA_KEY_DOUBLE, v, &buf, &len,
                                     err);
      break;
   default:
      break;
   }
   if (!buf) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "header '%s' must be binData, string, object, int, "
                      "long, double or null",
                      name);
      return false;
   }
   rd_kafka_header_add(hdrs, name, -1, buf, (ssize_t) len);
   bson_free(buf);
   return true;
}

static bool
build_headers(const aspen_value_t *val, rd_kafka_headers_t **out,
              aspen_error_t *err)
{
   *out = NULL;
   if (aspen_value_is_nullish(val)) {
      return true;
   }
   bool is_doc = val->v.value_type == BSON_TYPE_DOCUMENT;
   if (!is_doc && val->v.value_type != BSON_TYPE_ARRAY) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config.headers must evaluate to an object or an array "
                      "of {k, v} objects");
      return false;
   }
   bson_t b;
   bson_iter_t it;
   (void) bson_init_static(&b, val->v.value.v_doc.data,
                           val->v.value.v_doc.data_len);
   rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
   bson_iter_init(&it, &b);
   while (bson_iter_next(&it)) {
      if (is_doc) {
         if (!add_header(hdrs, bson_iter_key(&it), &it, err)) {
            goto fail;
         }
         continue;
      }
      bson_iter_t hi, ki, vi;
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &hi) ||
          !bson_iter_find_w_len(&hi, "k", 1) || !BSON_ITER_HOLDS_UTF8(&hi)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "each config.headers array element must be {k: "
                         "<string>, v: <value>}");
         goto fail;
      }
      ki = hi;
      bson_iter_recurse(&it, &vi);
      if (!bson_iter_find_w_len(&vi, "v", 1)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "a config.headers array element has no 'v'");
         goto fail;
      }
      if (!add_header(hdrs, bson_iter_utf8(&ki, NULL), &vi, err)) {
         goto fail;
      }
   }
   *out = hdrs;
   return true;
fail:
   rd_kafka_headers_destroy(hdrs);
   return false;
}

/* Remembers `topic` and sets *rkt to its handle (NULL if librdkafka
 * refuses to make one: the name is then given with each message); false
 * once more than MAX_TOPICS names were used. */
static bool
note_topic(emit_t *e, const char *topic, rd_kafka_topic_t **rkt,
           aspen_error_t *err)
{
   int i = 0;
   while (i < e->n_topics_seen && strcmp(e->topics_seen[i], topic) != 0) {
      i++;
   }
   if (i < e->n_topics_seen) {
      if (!e->rkts[i]) {
         e->rkts[i] = rd_kafka_topic_new(e->rk, topic, NULL);
      }
      *rkt = e->rkts[i];
      return true;
   }
   if (e->n_topics_seen >= MAX_TOPICS) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorTooManyOutputTargets,
                      "Too many unique topic names: %d",
                      e->n_topics_seen + 1);
      return false;
   }
   e->topics_seen = aspen_xrealloc(e->topics_seen, (size_t) (e->n_topics_seen +
                                                             1) *
                                                      sizeof *e->topics_seen);
   e->rkts = aspen_xrealloc(e->rkts,
                            (size_t) (e->n_topics_seen + 1) * sizeof *e->rkts);
   e->topics_seen[e->n_topics_seen] = aspen_xstrdup(topic);
   e->rkts[e->n_topics_seen] = rd_kafka_topic_new(e->rk, topic, NULL);
   *rkt = e->rkts[e->n_topics_seen++];
   return true;
}

static bool
emit_write(aspen_runtime_t *rt, void *state, const bson_t *doc,
           aspen_error_t *err)
{
   emit_t *e = state;
   if (e->fatal[0]) {
      aspen_error_set(err, e->fatal_code, "%s", e->fatal);
      return false;
   }
   bson_t meta;
   aspen_expr_ctx_t ctx = {.root = doc, .meta = NULL, .now_ms = 0};
   if (e->reads_meta && aspen__sink_stream_meta(doc, &meta)) {
      ctx.meta = &meta;
   }
   char reason[ASPEN_ERROR_MSG_MAX + 96];
   aspen_error_t xerr;
   aspen_value_t topic = ASPEN_VALUE_MISSING, key = ASPEN_VALUE_MISSING,
                 hv = ASPEN_VALUE_MISSING, tomb = ASPEN_VALUE_MISSING;
   uint8_t *key_buf = NULL;
   size_t key_len = 0;
   rd_kafka_headers_t *hdrs = NULL;
   char *value = NULL;
   size_t value_len = 0;
   bool ok = true;

   if (!aspen_expr_eval(e->topic, &ctx, &topic, &xerr)) {
      snprintf(reason, sizeof reason,
               "Failed to evaluate the $emit topic: %s", xerr.message);
      goto refuse;
   }
   if (topic.v.value_type != BSON_TYPE_UTF8 || !topic.v.value.v_utf8.len) {
      snprintf(reason, sizeof reason,
               "The $emit topic must evaluate to a non-empty string, not %s",
               aspen_value_type_name(&topic));
      goto refuse;
   }
   const char *topic_name = topic.v.value.v_utf8.str;
   rd_kafka_topic_t *rkt = NULL;
   if (!note_topic(e, topic_name, &rkt, err)) {
      ok = false;
      goto done;
   }
   bool tombstone = false;
   if (e->tombstone_when) {
      if (!aspen_expr_eval(e->tombstone_when, &ctx, &tomb, &xerr)) {
         snprintf(reason, sizeof reason,
                  "Failed to evaluate config.tombstoneWhen: %s", xerr.message);
         goto refuse;
      }
      if (tomb.v.value_type != BSON_TYPE_BOOL) {
         snprintf(reason, sizeof reason,
                  "config.tombstoneWhen must evaluate to a boolean, not %s",
                  aspen_value_type_name(&tomb));
         goto refuse;
      }
      tombstone = tomb.v.value.v_bool;
   }
   if (e->key) {
      if (!aspen_expr_eval(e->key, &ctx, &key, &xerr)) {
         snprintf(reason, sizeof reason,
                  "Failed to evaluate config.key: %s", xerr.message);
         goto refuse;
      }
      if (!aspen__kafka_key_encode(e->key_format, &key.v, &key_buf, &key_len,
                                   &xerr)) {
         snprintf(reason, sizeof reason, "%s", xerr.message);
         goto refuse;
      }
   }
   if (e->headers) {
      if (!aspen_expr_eval(e->headers, &ctx, &hv, &xerr)) {
         snprintf(reason, sizeof reason,
                  "Failed to evaluate config.headers: %s", xerr.message);
         goto refuse;
      }
      if (!build_headers(&hv, &hdrs, &xerr)) {
         snprintf(reason, sizeof reason, "%s", xerr.message);
         goto refuse;
      }
   }
   if (!tombstone && e->avro) {
      uint32_t id;
      char subject[1024];
      const char *rec = aspen__avro_schema_fullname(e->avro);
      if (e->strategy == SUBJECT_RECORD) {
         snprintf(subject, sizeof subject, "%s", rec);
      } else if (e->strategy == SUBJECT_TOPIC_RECORD) {
         snprintf(subject, sizeof subject, "%s-%s", topic_name, rec);
      } else {
         snprintf(subject, sizeof subject, "%s-value", topic_name);
      }
      if (!aspen__sr_subject_id(e->sr, subject, e->schema_json,
                                e->auto_register, &id, &xerr)) {
         snprintf(reason, sizeof reason,
                  "Failed to get the Avro schema's id from the schema "
                  "registry: %s",
                  xerr.message);
         goto refuse;
      }
      uint8_t *buf;
      if (!aspen__avro_encode(e->avro, doc, 5, &buf, &value_len, &xerr)) {
         snprintf(reason, sizeof reason,
                  "Failed to serialize the document as Avro: %s",
                  xerr.message);
         goto refuse;
      }
      buf[0] = 0;
      buf[1] = (uint8_t) (id >> 24);
      buf[2] = (uint8_t) (id >> 16);
      buf[3] = (uint8_t) (id >> 8);
      buf[4] = (uint8_t) id;
      value = (char *) buf;
   }
   /* One allocation that librdkafka frees after the delivery report: the
    * value, then the document for the DLQ should delivery fail (dr_cb). A
    * tombstone has no value: its document is a copy of its own. */
   char *payload = NULL;
   void *opaque;
   if (!tombstone) {
      const char *text = value;
      if (!e->avro) {
         aspen__kafka_json_encode_into(doc, &e->json, &e->text);
         text = e->text.data;
         value_len = e->text.len;
      }
      payload = bson_malloc(value_len + doc->len); /* librdkafka free()s it */
      memcpy(payload, text, value_len);
      memcpy(payload + value_len, bson_get_data(doc), doc->len);
      opaque = payload + value_len;
   } else {
      opaque = bson_copy(doc);
   }
   for (;;) {
#define PRODUCE(topic_arg)                                                   \
   rd_kafka_producev(e->rk, topic_arg,                                        \
                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),                \
                     RD_KAFKA_V_VALUE(payload, value_len),                    \
                     RD_KAFKA_V_KEY(key_buf, key_len),                        \
                     RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(opaque),     \
                     RD_KAFKA_V_END)
      rd_kafka_resp_err_t pe = rkt ? PRODUCE(RD_KAFKA_V_RKT(rkt))
                                   : PRODUCE(RD_KAFKA_V_TOPIC(topic_name));
#undef PRODUCE
      if (pe == RD_KAFKA_RESP_ERR_NO_ERROR) {
         hdrs = NULL;    /* the message owns them now */
         payload = NULL; /* and the payload */
         break;
      }
      if (pe == RD_KAFKA_RESP_ERR__QUEUE_FULL && !e->fatal[0]) {
         /* Back-pressure: wait for deliveries to make room. */
         rd_kafka_poll(e->rk, 100);
         continue;
      }
      /* Refused: the payload (and a tombstone's copy) stay ours. */
      bson_free(payload);
      payload = NULL;
      if (tombstone) {
         bson_destroy(opaque);
      }
      if (e->fatal[0]) {
         aspen_error_set(err, e->fatal_code, "%s", e->fatal);
         ok = false;
         goto done;
      }
      if (pe == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
          pe == RD_KAFKA_RESP_ERR__INVALID_ARG) {
         snprintf(reason, sizeof reason,
                  "Failed to emit the document to Kafka topic '%s': %s",
                  topic_name, rd_kafka_err2str(pe));
         goto refuse;
      }
      set_fatal(e, topic_name, pe, rd_kafka_err2str(pe));
      aspen_error_set(err, e->fatal_code, "%s", e->fatal);
      ok = false;
      goto done;
   }
   /* Delivery reports are served every POLL_EVERY messages (and by every
    * flush, which waits for them all). */
   if (++e->since_poll >= POLL_EVERY) {
      rd_kafka_poll(e->rk, 0);
      e->since_poll = 0;
   }
   goto done;

refuse:
   aspen_rt_sink_failed(rt, doc, reason);
done:
   if (hdrs) {
      rd_kafka_headers_destroy(hdrs);
   }
   bson_free(value);
   bson_free(key_buf);
   aspen_value_destroy(&topic);
   aspen_value_destroy(&key);
   aspen_value_destroy(&hv);
   aspen_value_destroy(&tomb);
   if (ok && e->fatal[0]) {
      aspen_error_set(err, e->fatal_code, "%s", e->fatal);
      ok = false;
   }
   return ok;
}

static bool
emit_flush(aspen_runtime_t *rt, void *state, aspen_error_t *err)
{
   emit_t *e = state;
   /* Every message handed over is acknowledged (or failed) when this
    * returns; message.timeout.ms bounds the wait. */
   while (!e->fatal[0] &&
          rd_kafka_flush(e->rk, 500) == RD_KAFKA_RESP_ERR__TIMED_OUT) {
   }
   /* Documents of refused batches go again, each alone (nothing else is in
    * flight now, and each is acknowledged before the next is sent): one
    * the broker still refuses goes to the DLQ. They come after documents
    * emitted later; nothing is committed before they are settled. */
   if (e->n_resend > 0 && !e->fatal[0]) {
      bson_t **docs = e->resend;
      int n = e->n_resend;
      e->resend = NULL;
      e->n_resend = e->cap_resend = 0;
      bool ok = true;
      e->resending = true;
      for (int i = 0; i < n; i++) {
         if (ok && !e->fatal[0]) {
            ok = emit_write(rt, e, docs[i], err); /* err set if false */
            while (ok && !e->fatal[0] && rd_kafka_flush(e->rk, 500) ==
                                            RD_KAFKA_RESP_ERR__TIMED_OUT) {
            }
         }
         bson_destroy(docs[i]);
      }
      free(docs);
      e->resending = false;
      if (!ok) {
         return false;
      }
   }
   if (e->fatal[0]) {
      aspen_error_set(err, e->fatal_code, "%s", e->fatal);
      return false;
   }
   return true;
}

static void
emit_close(void *state)
{
   emit_t *e = state;
   if (!e) {
      return;
   }
   if (e->rk) {
      /* Anything not delivered by now is dropped (the source has not
       * committed it); purged messages still get their delivery reports,
       * which free the documents they carry. */
      e->closing = true;
      if (e->txn) {
         /* Whatever the last commit did not take is dropped with it. */
         aspen__kafka_txn_abort(e->rk);
      }
      rd_kafka_purge(e->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      rd_kafka_flush(e->rk, 5000);
      emit_free_compiled(e);
      aspen__kafka_client_destroy(e->rk, false, emit_free_mem, e, e->name,
                                  CLOSE_WAIT_MS);
      return;
   }
   emit_free(e);
}

/* Exactly-once: the checkpoint's positions commit with the transaction. */
static bool
emit_commit(aspen_runtime_t *rt, void *state, const aspen_rt_pos_t *pos,
            size_t n, const char *checkpoint_id, aspen_error_t *err)
{
   emit_t *e = state;
   if (e->fatal[0]) {
      aspen_error_set(err, e->fatal_code, "%s", e->fatal);
      return false;
   }
   return aspen__kafka_txn_commit(e->rk, rt, pos, n, checkpoint_id, err);
}

static bool
emit_committed(aspen_runtime_t *rt, void *state, bson_t *ids,
               aspen_error_t *err)
{
   (void) state;
   return aspen__kafka_txn_committed_ids(rt, ids, err);
}

const aspen_sink_ops_t aspen_sink_emit_ops = {
   .operator_name = OPERATOR,
   /* Each instance has its own producer, its own delivery reports and
    * resend list. */
   .per_worker = true,
   .parse = emit_parse,
   .open = emit_open,
   .write = emit_write,
   .flush = emit_flush,
   .close = emit_close,
   .commit = emit_commit,
   .committed = emit_committed,
};
