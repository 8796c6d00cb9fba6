/*
 * kafka_int.h - what the Kafka $source (source_kafka.c) and the Kafka $emit
 * sink (sink_emit_kafka.c) share, implemented in kafka.c: a librdkafka
 * configuration built from a registry connection, the Extended JSON codecs
 * for message values, the key formats ASP knows, and the parsing of the
 * Kafka $source's options (its parse hooks, which the pipeline parser
 * calls through the source's ops).
 *
 * Everything here is engine-internal. Nothing blocks except where a
 * function says it talks to a broker.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_KAFKA_INT_H
#define ASPEN_ENGINE_CONNECTORS_KAFKA_INT_H

#include "connectors/connections.h"
#include "ejson.h"
#include "runtime/pipeline.h"
#include "runtime/source.h"

#include <librdkafka/rdkafka.h>

/* ---- key formats (config.keyFormat of $source and $emit) ---------------- */

typedef enum {
   ASPEN_KAFKA_KEY_BINDATA, /* default: the bytes as BinData subtype 0 */
   ASPEN_KAFKA_KEY_STRING,  /* UTF-8 */
   ASPEN_KAFKA_KEY_JSON,    /* (Extended) JSON: any JSON value */
   ASPEN_KAFKA_KEY_INT,     /* 4-byte big-endian, as Java's IntegerSerializer */
   ASPEN_KAFKA_KEY_LONG,    /* 8-byte big-endian, as Java's LongSerializer */
   ASPEN_KAFKA_KEY_DOUBLE,  /* 8-byte big-endian IEEE 754 */
} aspen_kafka_key_format_t;

/* Parses a keyFormat name; false when it is not one. */
bool aspen__kafka_key_format_parse(const char *name,
                                   aspen_kafka_key_format_t *out);
const char *aspen__kafka_key_format_name(aspen_kafka_key_format_t f);

/* Decodes a message key per `f` and appends it to `out` as field `field`.
 * False (err set, `out` unchanged) when the bytes are not of that format. */
bool aspen__kafka_key_decode(aspen_kafka_key_format_t f, const void *data,
                             size_t len, bson_t *out, const char *field,
                             aspen_error_t *err);
/* Encodes `v` as a key of format `f` into a new buffer (*out, freed with
 * bson_free; *out_len bytes). False (err set, *out NULL) when `v` cannot be
 * serialised that way. */
bool aspen__kafka_key_encode(aspen_kafka_key_format_t f, const bson_value_t *v,
                             uint8_t **out, size_t *out_len,
                             aspen_error_t *err);

/* ---- message values ------------------------------------------------------ */

/* Parses a message value: one JSON object in relaxed or canonical Extended
 * JSON (surrounding whitespace allowed), optionally behind the 5-byte
 * Schema Registry prefix (0x00 + schema id). Plain JSON is written into
 * `w` (reset first; e.g. a stack buffer, aspen_bsonw_init_static), which
 * `doc` then views, so the caller keeps `w` (aspen_bsonw_cleanup, after
 * bson_destroy(doc)) as long as `doc`; what the fast path declines libbson
 * reads onto the heap. `doc` is always initialised (bson_destroy it in
 * every case); false (err set with the parser's reason) when the value is
 * not such an object. The one entry point: the Kafka and Kinesis sources
 * decode each message with it, without a copy of the document. */
bool aspen__kafka_json_decode(const void *data, size_t len, aspen_bsonw_t *w,
                              bson_t *doc, aspen_error_t *err);

/* A duration option, {size: <int >= 0>, unit: "ms"|"second"|"minute"|
 * "hour"|"day"}, into *ms. `field` names it in messages ("BSON field
 * '$emit.config.writeOptions.interval' ..."), `where` is its position
 * below pc's (aspen_parse_error). False with ASP's 420 error. */
bool aspen__parse_duration(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                           const char *where, const char *field, int64_t *ms,
                           aspen_error_t *err);
/* A source's idle timeout option `name` ("partitionIdleTimeout", Kinesis'
 * "shardIdleTimeout"): aspen__parse_duration of $source.<name>. */
bool aspen__source_parse_idle_timeout(const bson_iter_t *it,
                                      const aspen_parse_ctx_t *pc,
                                      const char *name, int64_t *ms,
                                      aspen_error_t *err);

/* Whether a consumed message carries headers (rd_kafka_message_headers
 * with at least one). Any thread that may read the message. */
bool aspen__kafka_message_has_headers(const rd_kafka_message_t *m);

/* Appends `len` bytes at `data` as field `field` of `doc`: a string when
 * they are UTF-8, else binary data (what a DLQ entry shows of a message
 * that is not a document). */
void aspen__kafka_append_raw(bson_t *doc, const char *field, const void *data,
                             size_t len);

typedef struct {
   bool canonical; /* canonicalJson instead of relaxedJson */
   bool iso_dates; /* dateFormat ISO8601: Dates as "YYYY-MM-DDTHH:mm:ss.sssZ" */
   bool basic;     /* basicJson: no Extended JSON wrappers (kafka.c) */
} aspen_kafka_json_opts_t;

/* Serialises `doc` as Extended JSON v2. Returns a string to bson_free and
 * its length in *len; never NULL. */
char *aspen__kafka_json_encode(const bson_t *doc,
                               const aspen_kafka_json_opts_t *opts,
                               size_t *len);
/* The same into `t` (its text replaced, NUL-terminated, t->len long),
 * which keeps its buffer for the next call (aspen_ejson_text_cleanup). */
void aspen__kafka_json_encode_into(const bson_t *doc,
                                   const aspen_kafka_json_opts_t *opts,
                                   aspen_ejson_text_t *t);

/* ---- client configuration ---------------------------------------------- */

/* Every aspen Kafka client's opaque (rd_kafka_opaque) starts with this, so
 * the shared log callback can name the processor. */
typedef struct {
   const char *ctx; /* the processor's name, for log lines */
} aspen_kafka_client_hdr_t;

/* A new librdkafka configuration with the properties `props` (name ->
 * string) of connection `conn_name`, logging into aspen's log, with `hdr`
 * (borrowed; it must outlive the client) as the client's opaque. NULL with
 * err set (code 419) when librdkafka refuses a setting. The caller owns the
 * result until rd_kafka_new takes it. */
rd_kafka_conf_t *aspen__kafka_conf_new(const char *conn_name,
                                       const bson_t *props,
                                       aspen_kafka_client_hdr_t *hdr,
                                       aspen_error_t *err);
/* Sets one property; false with err set (code 419) if refused. */
bool aspen__kafka_conf_set(rd_kafka_conf_t *conf, const char *name,
                           const char *value, aspen_error_t *err);

/* Asks the cluster for metadata (of `rkt` only, or NULL for all topics) as
 * rd_kafka_metadata does, waiting at most `timeout_ms`, but in short slices
 * with the client's error callbacks served in between (rd_kafka_poll), so
 * an error that callback records as fatal -- a SASL authentication failure
 * never answers, it only closes the connection -- ends the wait at once:
 * `fatal` is the client's fatal-error buffer, checked after each slice.
 * For a consumer, call this before rd_kafka_poll_set_consumer. Returns
 * librdkafka's error (RD_KAFKA_RESP_ERR__FATAL when `fatal` was set), and
 * *md to free with rd_kafka_metadata_destroy on success. With a `stopping`
 * predicate (may be NULL), asked with `arg` before each slice, the wait
 * also ends, with RD_KAFKA_RESP_ERR__INTR, once it says true: a stop or
 * drop of a processor that is still starting (PROVISIONING) joins its
 * thread within a slice instead of the whole timeout. Blocks; the client's
 * own thread. */
rd_kafka_resp_err_t aspen__kafka_metadata(rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                                          const struct rd_kafka_metadata **md,
                                          int timeout_ms, const char *fatal,
                                          bool (*stopping)(void *arg),
                                          void *arg);
/* The `stopping` predicate of a processor's source or sink: `rt` (its
 * aspen_runtime_t) is stopping (aspen_rt_stopping). Processor thread. */
static inline bool
aspen__kafka_rt_stopping(void *rt)
{
   return aspen_rt_stopping(rt);
}

/* Closes (a consumer, after it left its group, even as a static member:
 * its rebalance callback is served meanwhile) and destroys client `rk`,
 * then calls free_fn(arg) to free what the client's callbacks use (its
 * opaque). Takes ownership of both. librdkafka 2.0 can hang for ever in
 * that shutdown after a topic the client used was deleted (librdkafka
 * issue 4362), and a processor's shutdown must not hang the engine's
 * command thread that joins it, so the shutdown runs on a thread of its
 * own and this waits `wait_ms` at most; after that the client is
 * abandoned (logged, with `ctx` naming the processor) and its thread frees
 * everything if it ever finishes. The caller must not use `rk` or `arg`
 * after this call, and the callbacks must not touch anything but `arg`
 * once it is made. */
void aspen__kafka_client_destroy(rd_kafka_t *rk, bool consumer,
                                 void (*free_fn)(void *), void *arg,
                                 const char *ctx, int wait_ms);

/* ---- the local broker ("local": true) ------------------------------------ */

/* A Kafka broker hosted inside aspen for a connection that asks for one:
 * librdkafka's mock cluster (one broker, in memory) on a loopback port that
 * other clients can reach too. Test-grade: no transactions, no SASL/SSL, no
 * persistence, each partition keeps only its newest ~5 MB / 100000 batches.
 * It runs on librdkafka's own threads, so nothing here blocks for long. */
typedef struct aspen_kafka_local aspen_kafka_local_t;

/* Starts a local broker for connection `conn_name` (for log lines). NULL
 * with err set (code 419) when librdkafka cannot start one. The caller
 * owns the result (aspen__kafka_local_destroy). Any thread. */
aspen_kafka_local_t *aspen__kafka_local_new(const char *conn_name,
                                            aspen_error_t *err);
/* The broker's "127.0.0.1:PORT", valid as long as `kl`. */
const char *aspen__kafka_local_bootstrap(const aspen_kafka_local_t *kl);
/* Tells this broker from any other (earlier aspen processes' included):
 * 24 hex digits, valid as long as `kl`. */
const char *aspen__kafka_local_epoch(const aspen_kafka_local_t *kl);
/* Stops the broker; every client of it must be gone. NULL is a no-op. */
void aspen__kafka_local_destroy(aspen_kafka_local_t *kl);

/* ---- Kafka connections (conn_kafka.c) ------------------------------------ */

/* The librdkafka properties of Kafka connection `conn` (name -> string:
 * bootstrap servers, security, its config; secrets included, so never
 * listed or logged), or NULL when it is of another kind. Any thread. */
const bson_t *aspen__conn_kafka_conf(const aspen_conn_t *conn);
/* A new librdkafka configuration for Kafka connection `conn`
 * (aspen__kafka_conf_new with its properties); NULL with err set when
 * librdkafka refuses a setting (419) or `conn` is of another kind. */
rd_kafka_conf_t *aspen__conn_kafka_client_conf(const aspen_conn_t *conn,
                                               aspen_kafka_client_hdr_t *hdr,
                                               aspen_error_t *err);
/* The broker aspen hosts for `conn` ("local": true), owned by the
 * connection; NULL for any other connection. Any thread. */
aspen_kafka_local_t *aspen__conn_kafka_local(const aspen_conn_t *conn);

/* ---- $source stats ------------------------------------------------------ */

/* The stats command runs on the loop thread while a Kafka $source lives
 * (and is freed) on its processor's thread, so the source publishes a
 * snapshot of its Kafka fields (kafkaPartitions, kafkaTotalOffsetLag,
 * kafkaConsumerGroup) here, keyed by processor id, and the stats command
 * copies it out. Any thread; a mutex guards the table. */

/* Replaces the snapshot of processor `proc_id` with a copy of `fields`. */
void aspen__kafka_stats_publish(const char *proc_id, const bson_t *fields);
/* Drops the snapshot of `proc_id` (the source closed). */
void aspen__kafka_stats_clear(const char *proc_id);
/* Appends the snapshot's fields to `out`; false (out unchanged) if none. */
bool aspen__kafka_stats_append(const char *proc_id, bson_t *out);

/* ---- $source options ------------------------------------------------------ */

/* The Kafka options of a parsed $source (aspen_source_spec_t.opts of the
 * Kafka $source). */
typedef struct aspen_kafka_source_opts {
   char **topics;
   int n_topics;
   char *group_id;          /* config.group_id, or NULL for the default */
   bool earliest;           /* auto_offset_reset earliest (default latest) */
   int enable_auto_commit;  /* -1 unset, else 0/1 */
   aspen_kafka_key_format_t key_format;
   bool key_error_pass_through; /* keyFormatError passThrough (default dlq) */
   /* schemaRegistry.connectionName's connection: values are Avro in the
    * registry's wire format (schema_registry.h). NULL: JSON. */
   const aspen_conn_t *schema_registry;
} aspen_kafka_source_opts_t;

/* The Kafka $source's parse hooks (runtime/source.h). parse_option: one
 * $source option, topic, partitionIdleTimeout or config, into src->opts;
 * *handled is false for options that are not Kafka's (the runtime then
 * refuses them). False with a 420 error (ASP's wording) on a bad value. */
bool aspen__kafka_source_parse_option(aspen_source_spec_t *src,
                                      const bson_iter_t *it,
                                      aspen_parse_ctx_t *pc, bool *handled,
                                      aspen_error_t *err);
/* Checks what is required once all options are read (topic). */
bool aspen__kafka_source_parse_done(aspen_source_spec_t *src,
                                    aspen_parse_ctx_t *pc,
                                    aspen_error_t *err);
/* Frees an aspen_kafka_source_opts_t (NULL is a no-op). */
void aspen__kafka_source_opts_destroy(void *opts);

/* ---- exactly-once (options.exactlyOnce; kafka_txn.c) ---------------------- */

/* Whether a parsed pipeline may run with the processor option exactlyOnce
 * (kafka_txn.c): a named processor, a Kafka $source, $emit to Kafka on the
 * same cluster (bootstrapServers), and no connection that is aspen's local
 * (mock) broker. False with a 420 error saying which. No I/O. */
bool aspen__kafka_txn_check(const aspen_pipeline_t *pl,
                            const aspen_conns_t *conns, bool ephemeral,
                            aspen_error_t *err);

/* The consumer group of a named processor's Kafka $source: config.group_id,
 * else ASP's default "asp-<processorId>-consumer". */
void aspen__kafka_group_id(const aspen_kafka_source_opts_t *opts,
                           const char *proc_id, char *out, size_t n);
/* Makes a producer configuration transactional: transactional.id
 * "aspen-<processorId>" (stable, so a restart fences the old producer) and
 * a transaction timeout above the checkpoint interval. */
bool aspen__kafka_txn_conf(rd_kafka_conf_t *conf, const aspen_runtime_t *rt,
                           aspen_error_t *err);
/* init_transactions (fencing an older producer with the same id and
 * aborting its open transaction), then begins the first transaction.
 * Blocking, up to 30 s; false with err set (419). */
bool aspen__kafka_txn_init(rd_kafka_t *rk, aspen_error_t *err);
/* Commits the open transaction with the $source's replay offsets `pos`
 * (for its consumer group, each tagged with `checkpoint_id`), then begins
 * the next. Blocking. False with err set when it could not commit (the
 * transaction is then aborted, or the producer is fenced). */
bool aspen__kafka_txn_commit(rd_kafka_t *rk, const aspen_runtime_t *rt,
                             const aspen_rt_pos_t *pos, size_t n,
                             const char *checkpoint_id, aspen_error_t *err);
/* Aborts the open transaction, if any (errors ignored: closing). */
void aspen__kafka_txn_abort(rd_kafka_t *rk);
/* Appends to the array `ids` the checkpoint ids committed with the
 * $source's consumer group offsets (stable offsets only). Blocking; false
 * with err set (419) when the broker cannot be asked. */
bool aspen__kafka_txn_committed_ids(const aspen_runtime_t *rt, bson_t *ids,
                                    aspen_error_t *err);

/* What a failed delivery report says went wrong. librdkafka reports a
 * message still queued on a partition it dropped because the topic left
 * the cluster's metadata (deleted) as destroyed (RD_KAFKA_RESP_ERR__DESTROY,
 * sent when the partition's last reference goes), not as unknown; whether
 * those reports come before or after the ones naming the partition or
 * topic unknown is a race between librdkafka's threads, and when every
 * message was on its way to the broker they are the only ones. Outside a
 * producer's own teardown (whose reports the caller ignores), a destroyed
 * message is that dropped partition: RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION,
 * so a deleted topic fails an $emit with the same error whichever report
 * comes first. Any other error is itself. */
rd_kafka_resp_err_t aspen__kafka_delivery_error(rd_kafka_resp_err_t err);

#endif /* ASPEN_ENGINE_CONNECTORS_KAFKA_INT_H */
