/*
 * source_kafka.c - the Apache Kafka $source (../shared/spec/asp-semantics.md
 * §2.2, §2.6): a librdkafka high-level consumer polled on the processor's
 * thread.
 *
 * Each message value is parsed as relaxed or canonical Extended JSON; one
 * that is not goes to the DLQ with its raw bytes and the parser's reason, and
 * the processor carries on. The document gets `_stream_meta.source` = {type:
 * "kafka", topic, partition, offset, key, headers} and, unless the $source
 * has a timeField, the message timestamp as its event time.
 *
 * Offsets (at-least-once): auto-commit and the automatic offset store are
 * off. Each message is marked with the runtime (aspen_rt_mark: partition
 * key topic index << 32 | partition, and its offset) before it goes down
 * the pipeline. Every ~200 ms, every 5000 messages and whenever the topic
 * is idle the runtime flushes the sink and the DLQ (aspen_rt_wait) and,
 * when that succeeded, may write a checkpoint holding each partition's
 * replay offset: the earliest message an open window still needs, or the
 * next unread one. Only offsets a checkpoint holds are committed to the
 * group, so a committed offset never runs ahead of what the sink has
 * durably accepted nor of the open windows. A processor resumed from a
 * checkpoint is assigned its partitions at the checkpoint's offsets (the
 * rebalance callback); the group's committed offsets only matter without
 * one. After a crash everything after the checkpoint is read again. On
 * stop the sink is flushed once more, the final checkpoint written and its
 * offsets committed synchronously; then the consumer leaves its group, so
 * that the next start is assigned the partitions at once. With exactlyOnce
 * the $emit sink commits the checkpoint's offsets inside its Kafka
 * transaction (kafka_txn.c) and this source commits nothing itself.
 * Ephemeral processors (sp.process) without config.group_id read under a
 * throw-away group and never commit.
 *
 * Partitions in parallel (runtime/workers.c): when the pipeline allows it
 * (stateless stages into a per-worker sink, a tier with more than one
 * vCPU, several partitions), this thread only polls, marks each message's
 * position and hands it to the worker its partition was dealt to, which
 * decodes it and runs it through its own pipeline and sink. The flushes,
 * checkpoints and commits above stay on this thread; each flush first
 * waits for the workers to finish what they were handed.
 */
#include "base/tier.h"
#include "connectors/kafka_int.h"
#include "connectors/schema_registry.h"
#include "runtime/source.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASPEN_LOG_DOMAIN "kafka"
#define POLL_MS 100
#define FLUSH_EVERY_MS 200
#define FLUSH_EVERY_MSGS 5000
#define METADATA_TIMEOUT_MS 10000
#define STATS_EVERY_MS 1000
#define CLOSE_WAIT_MS 5000

typedef struct {
   aspen_kafka_client_hdr_t hdr; /* first: the client's opaque */
   rd_kafka_t *rk;
   const aspen_kafka_source_opts_t *opts;
   const aspen_conn_t *conn;
   bool commit; /* offsets are committed to a named group */
   /* The runtime and the options it owns; NULL once the source is being
    * shut down, which may outlive the processor (ksrc_free). */
   aspen_runtime_t *rt;
   char *name; /* hdr.ctx: the processor's name, a copy */
   uint64_t committed_gen; /* the runtime's checkpoint count committed */
   bool assigned_once;     /* checkpoint offsets used for one assignment */
   /* A fatal client error seen by error_cb (librdkafka calls it from
    * rd_kafka_consumer_poll, so on the processor's thread). */
   char fatal[ASPEN_ERROR_MSG_MAX];
   /* Stats (aspen__kafka_stats_publish): the group, and per assigned
    * partition the last committed offset and when a message last came. */
   char group[128];
   struct kpart {
      char *topic;
      int32_t partition;
      int64_t committed;   /* -1 until an offset commit succeeds */
      int64_t last_msg_ms; /* monotonic: last message, or first seen */
      int worker;          /* the worker its messages go to, for good */
   } *parts;
   int n_parts, cap_parts;
   int64_t stats_ms; /* when the stats were last published */
   const char *proc_id;      /* the stats table's key */
   aspen_sr_t *sr; /* with $source.schemaRegistry: values are Avro */
   int64_t idle_timeout_ms;  /* partitionIdleTimeout, 0 for none */
   int64_t n_partitions;     /* of every topic, when the source opened */
   /* Worker threads the partitions are spread over (runtime/workers.c),
    * 1 for none: then this thread processes every message. */
   int workers;
} ksrc_t;

/* Errors after which reading cannot go on: the processor fails. Transport
 * errors (a broker restarting) are not among them: the client reconnects. */
static bool
is_fatal(rd_kafka_resp_err_t e)
{
   switch (e) {
   case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
   case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
   case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
   case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
   case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
   case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
   case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
   case RD_KAFKA_RESP_ERR__AUTHENTICATION:
   case RD_KAFKA_RESP_ERR__SSL:
   case RD_KAFKA_RESP_ERR__FATAL:
      return true;
   default:
      return false;
   }
}

static bool
is_topic_gone(rd_kafka_resp_err_t e)
{
   return e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
          e == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
          e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION;
}

/* The processor's error for fatal error `e`: a topic that went away says
 * so with ASP's "no partitions found", an authentication failure says it
 * is one. */
static void
fatal_message(const ksrc_t *ks, rd_kafka_resp_err_t e, const char *reason,
              char *out, size_t len)
{
   const char *what = is_topic_gone(e)
                         ? "a $source topic was deleted or is no longer "
                           "available (no partitions found)"
                      : e == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
                            e == RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED
                         ? "authentication failed"
                         : rd_kafka_err2name(e);
   snprintf(out, len, "Kafka $source (connection '%s') failed: %s: %s",
            ks->conn->name, what, reason);
}

static void
error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
   ksrc_t *ks = opaque;
   (void) rk;
   rd_kafka_resp_err_t e = (rd_kafka_resp_err_t) err;
   if (is_fatal(e)) {
      if (!ks->fatal[0]) {
         fatal_message(ks, e, reason, ks->fatal, sizeof ks->fatal);
      }
      return;
   }
   aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, ks->hdr.ctx,
              "Kafka consumer error (%s), retrying: %s", rd_kafka_err2name(e),
              reason);
}

/* The stats entry of a partition, added on first sight. */
static struct kpart *
kpart_get(ksrc_t *ks, const char *topic, int32_t partition)
{
   for (int i = 0; i < ks->n_parts; i++) {
      if (ks->parts[i].partition == partition &&
          strcmp(ks->parts[i].topic, topic) == 0) {
         return &ks->parts[i];
      }
   }
   if (ks->n_parts == ks->cap_parts) {
      ks->cap_parts = ks->cap_parts ? 2 * ks->cap_parts : 8;
      ks->parts = aspen_xrealloc(ks->parts,
                                 (size_t) ks->cap_parts * sizeof *ks->parts);
   }
   struct kpart *kp = &ks->parts[ks->n_parts++];
   kp->topic = aspen_xstrdup(topic);
   kp->partition = partition;
   kp->committed = -1;
   kp->last_msg_ms = 0;
   /* Partitions dealt round-robin, in the order first seen. */
   kp->worker = (ks->n_parts - 1) % ks->workers;
   return kp;
}

/* Offsets the group accepted: the stats' checkpointOffset. librdkafka calls
 * this from rd_kafka_consumer_poll (or the commit call), on the processor's
 * thread. */
static void
offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                 rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
   ksrc_t *ks = opaque;
   (void) rk;
   (void) err; /* each partition carries its own */
   for (int i = 0; offsets && i < offsets->cnt; i++) {
      const rd_kafka_topic_partition_t *tp = &offsets->elems[i];
      if (!tp->err && tp->offset >= 0) {
         kpart_get(ks, tp->topic, tp->partition)->committed = tp->offset;
      }
   }
}

/* The partition key used with aspen_rt_mark: topic index and partition. */
static int64_t
part_key(const ksrc_t *ks, const char *topic, int32_t partition)
{
   int64_t idx = 0;
   for (int i = 0; i < ks->opts->n_topics; i++) {
      if (strcmp(ks->opts->topics[i], topic) == 0) {
         idx = i;
         break;
      }
   }
   return idx << 32 | (int64_t) (uint32_t) partition;
}

/* Partitions assigned: each is declared to the window (its watermark waits
 * for every partition); the first time, each starts at the offset the
 * restored checkpoint has for it (others at the group's committed offset,
 * else auto.offset.reset). Later assignments (a rebalance) start at the
 * committed offsets. librdkafka calls this from rd_kafka_consumer_poll, on
 * the processor's thread. */
static void
rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
             rd_kafka_topic_partition_list_t *parts, void *opaque)
{
   ksrc_t *ks = opaque;
   bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") ==
                      0;
   if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && !ks->rt) {
      /* Shutting down: take nothing new. */
      rd_kafka_assign(rk, NULL);
   } else if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      int restored = 0;
      for (int i = 0; i < parts->cnt; i++) {
         aspen_rt_partition_assigned(
            ks->rt, part_key(ks, parts->elems[i].topic,
                             parts->elems[i].partition));
      }
      for (int i = 0; i < parts->cnt && !ks->assigned_once; i++) {
         int64_t off;
         rd_kafka_topic_partition_t *tp = &parts->elems[i];
         if (aspen_rt_restored_offset(
                ks->rt, part_key(ks, tp->topic, tp->partition), &off)) {
            tp->offset = off;
            restored++;
         }
      }
      if (!ks->assigned_once && parts->cnt > 0 &&
          aspen_rt_restored_position(ks->rt)) {
         aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, ks->hdr.ctx,
                    "%d of %d assigned partition(s) resume from the "
                    "checkpoint's offsets",
                    restored, parts->cnt);
      }
      if (parts->cnt > 0) {
         /* An empty assignment (the group still lists a dead member of a
          * crashed run) does not use up the checkpoint's offsets. */
         ks->assigned_once = true;
      }
      if (cooperative) {
         rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, parts);
         if (e) {
            rd_kafka_error_destroy(e);
         }
      } else {
         rd_kafka_assign(rk, parts);
      }
   } else if (cooperative) {
      rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
      if (e) {
         rd_kafka_error_destroy(e);
      }
   } else {
      rd_kafka_assign(rk, NULL);
   }
}

/* Checks every topic exists with at least one partition, which also proves
 * the brokers are reachable and the credentials good. */
static bool
check_topics(ksrc_t *ks, aspen_error_t *err)
{
   int64_t partitions = 0;
   for (int i = 0; i < ks->opts->n_topics; i++) {
      const char *name = ks->opts->topics[i];
      rd_kafka_topic_t *rkt = rd_kafka_topic_new(ks->rk, name, NULL);
      const struct rd_kafka_metadata *md = NULL;
      rd_kafka_resp_err_t e = aspen__kafka_metadata(
         ks->rk, rkt, &md, METADATA_TIMEOUT_MS, ks->fatal,
         aspen__kafka_rt_stopping, ks->rt);
      rd_kafka_topic_destroy(rkt);
      if (e == RD_KAFKA_RESP_ERR__FATAL) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                         "%s", ks->fatal);
         return false;
      }
      if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                         "Kafka connection error on connection '%s' "
                         "(bootstrap servers unreachable or refused): %s",
                         ks->conn->name, rd_kafka_err2str(e));
         return false;
      }
      bool found = md->topic_cnt == 1 && md->topics[0].partition_cnt > 0 &&
                   md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR;
      partitions += found ? md->topics[0].partition_cnt : 0;
      rd_kafka_resp_err_t terr = md->topic_cnt == 1 ? md->topics[0].err
                                                    : RD_KAFKA_RESP_ERR_NO_ERROR;
      rd_kafka_metadata_destroy(md);
      if (!found) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                         "Kafka $source topic '%s' on connection '%s': no "
                         "partitions found (%s)",
                         name, ks->conn->name,
                         terr ? rd_kafka_err2str(terr)
                              : "the topic does not exist");
         return false;
      }
   }
   ks->n_partitions = partitions;
   /* ASP's tiers limit the partitions a Kafka $source reads (SP2: 32,
    * SP5: 64). */
   const char *tier;
   int64_t limit = aspen_rt_tier_kafka_partitions(ks->rt, &tier);
   if (limit > 0 && partitions > limit) {
      const aspen_tier_t *need = aspen_tier_for_partitions(partitions);
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "StreamProcessorInvalidOptions: the Kafka $source "
                      "reads %lld partitions, more than the %lld tier %s "
                      "allows: use tier %s or higher",
                      (long long) partitions, (long long) limit, tier,
                      need ? need->name : ASPEN_TIER_MAX);
      return false;
   }
   return true;
}

static void
ksrc_free_mem(void *p)
{
   ksrc_t *ks = p;
   for (int i = 0; i < ks->n_parts; i++) {
      free(ks->parts[i].topic);
   }
   free(ks->parts);
   free(ks->name);
   aspen__sr_destroy(ks->sr); /* NULL unless open failed */
   free(ks);
}

/* Drops the stats, then closes the consumer, without waiting for ever
 * (aspen__kafka_client_destroy); `ks` is gone afterwards. */
static void
ksrc_free(ksrc_t *ks)
{
   if (!ks) {
      return;
   }
   if (ks->proc_id) {
      aspen__kafka_stats_clear(ks->proc_id);
   }
   /* From here on the callbacks see only `ks` itself: the runtime, the
    * options and proc_id belong to the processor, which may be freed
    * before an abandoned consumer finishes. */
   ks->rt = NULL;
   ks->opts = NULL;
   ks->proc_id = NULL;
   aspen__sr_destroy(ks->sr);
   ks->sr = NULL;
   if (ks->rk) {
      aspen__kafka_client_destroy(ks->rk, true, ksrc_free_mem, ks, ks->name,
                                  CLOSE_WAIT_MS);
   } else {
      ksrc_free_mem(ks);
   }
}

/* The local broker is librdkafka 2.0's mock cluster. When a member joins
 * or leaves a group whose partitions are assigned, its coordinator waits
 * the group's session timeout less 1 s for members to (re)join before it
 * assigns anything, even when the group is left with no member; a group
 * with no member waits a fixed 3 s (as a broker's
 * group.initial.rebalance.delay.ms). With librdkafka's default
 * session.timeout.ms, 45 s, a processor stopped and started again was
 * assigned its partitions after 44 s. The coordinator takes the session
 * timeout from the consumers' joins, so those of a local connection ask
 * for a short one, with heartbeats to match (unless the connection's
 * config sets them): a start right after a stop is then assigned within
 * 2 s, a later one within the 3 s of a new group. Real brokers keep
 * librdkafka's defaults (they refuse sessions under their
 * group.min.session.timeout.ms, 6 s by default). */
#define LOCAL_SESSION_TIMEOUT_MS "3000"
#define LOCAL_HEARTBEAT_INTERVAL_MS "1000"

static bool
group_timing(const ksrc_t *ks, rd_kafka_conf_t *conf, aspen_error_t *err)
{
   if (!aspen__conn_kafka_local(ks->conn)) {
      return true;
   }
   const bson_t *props = aspen__conn_kafka_conf(ks->conn);
   if (!bson_has_field(props, "session.timeout.ms") &&
       !aspen__kafka_conf_set(conf, "session.timeout.ms",
                              LOCAL_SESSION_TIMEOUT_MS, err)) {
      return false;
   }
   return bson_has_field(props, "heartbeat.interval.ms") ||
          aspen__kafka_conf_set(conf, "heartbeat.interval.ms",
                                LOCAL_HEARTBEAT_INTERVAL_MS, err);
}

/* librdkafka 2.0 (Debian's) stops fetching a partition for a fixed 1 s
 * once its local queue holds queued.min.messages (100 000 by default):
 * a consumer that drains it in less than that then waits out the rest of
 * the second, which capped a processor near 100-150 k messages/s
 * whatever its speed (bench/kafka.sh). A threshold above a second's worth
 * of processing keeps the queue from running dry; queued.max.messages.kbytes
 * (64 MB by default) still bounds its memory, and the connection's config
 * may set either. */
#define QUEUED_MIN_MESSAGES "500000"

static bool
fetch_queue(const ksrc_t *ks, rd_kafka_conf_t *conf, aspen_error_t *err)
{
   const bson_t *props = aspen__conn_kafka_conf(ks->conn);
   return (props && bson_has_field(props, "queued.min.messages")) ||
          aspen__kafka_conf_set(conf, "queued.min.messages",
                                QUEUED_MIN_MESSAGES, err);
}

static void work(aspen_runtime_t *wrt, void *item, void *arg);
static void drop(void *item);

static bool
kafka_open(aspen_runtime_t *rt, void **state, aspen_error_t *err)
{
   const aspen_source_spec_t *spec = aspen_rt_source_spec(rt);
   *state = NULL;
   ksrc_t *ks = aspen_xcalloc(1, sizeof *ks);
   ks->name = aspen_xstrdup(aspen_rt_processor_name(rt));
   ks->hdr.ctx = ks->name;
   ks->proc_id = aspen_rt_processor_id(rt);
   ks->idle_timeout_ms = spec->partition_idle_timeout_ms;
   ks->workers = 1;
   ks->rt = rt;
   ks->opts = spec->opts;
   ks->conn = spec->conn;
   if (!ks->opts || !ks->conn) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "Kafka $source without options or connection");
      ksrc_free_mem(ks);
      return false;
   }
   if (ks->opts->schema_registry) {
      ks->sr = aspen__sr_new(
         aspen__conn_schema_registry(ks->opts->schema_registry), ks->name);
   }

   /* The consumer group: config.group_id, else ASP's default for a named
    * processor, else (sp.process) a group of its own that never commits. */
   char group[128];
   ks->commit = true;
   if (ks->opts->group_id || !aspen_rt_is_ephemeral(rt)) {
      aspen__kafka_group_id(ks->opts, aspen_rt_processor_id(rt), group,
                            sizeof group);
   } else {
      unsigned char rnd[8] = {0};
      (void) RAND_bytes(rnd, sizeof rnd);
      snprintf(group, sizeof group,
               "asp-ephemeral-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0],
               rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
      ks->commit = false;
   }

   snprintf(ks->group, sizeof ks->group, "%s", group);
   rd_kafka_conf_t *conf =
      aspen__conn_kafka_client_conf(ks->conn, &ks->hdr, err);
   if (!conf) {
      ksrc_free_mem(ks);
      return false;
   }
   char errstr[512];
   if (!aspen__kafka_conf_set(conf, "group.id", group, err) ||
       !aspen__kafka_conf_set(conf, "enable.auto.commit", "false", err) ||
       !aspen__kafka_conf_set(conf, "enable.auto.offset.store", "false",
                              err) ||
       !aspen__kafka_conf_set(conf, "auto.offset.reset",
                              ks->opts->earliest ? "earliest" : "latest",
                              err)) {
      rd_kafka_conf_destroy(conf);
      ksrc_free_mem(ks);
      return false;
   }
   if (!group_timing(ks, conf, err) || !fetch_queue(ks, conf, err)) {
      rd_kafka_conf_destroy(conf);
      ksrc_free_mem(ks);
      return false;
   }
   if (ks->commit && !ks->opts->group_id &&
       !aspen__conn_kafka_local(ks->conn)) {
      /* Static membership for the processor's own group: after a crash
       * the restarted consumer takes its partitions back at once, instead
       * of waiting for the dead member's session to time out (45 s). A
       * clean stop leaves the group all the same (kafka.c's closer). Not
       * on the local broker: librdkafka 2.0's mock cluster knows members
       * by member id only and ignores group.instance.id, and a crash
       * takes that broker with it anyway. */
      char instance[64];
      snprintf(instance, sizeof instance, "aspen-%s",
               aspen_rt_processor_id(rt));
      if (!aspen__kafka_conf_set(conf, "group.instance.id", instance, err)) {
         rd_kafka_conf_destroy(conf);
         ksrc_free_mem(ks);
         return false;
      }
   }
   rd_kafka_conf_set_error_cb(conf, error_cb);
   rd_kafka_conf_set_offset_commit_cb(conf, offset_commit_cb);
   rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
   ks->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
   if (!ks->rk) {
      rd_kafka_conf_destroy(conf); /* not taken on failure */
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                      "cannot create a Kafka consumer for connection '%s': %s",
                      ks->conn->name, errstr);
      ksrc_free_mem(ks);
      return false;
   }
   /* Before poll_set_consumer: check_topics serves error callbacks with
    * rd_kafka_poll. */
   if (!check_topics(ks, err)) {
      rd_kafka_destroy(ks->rk);
      ksrc_free_mem(ks);
      return false;
   }
   /* Partitions in parallel when the pipeline allows it (not with a
    * Schema Registry: aspen__kafka_source_parse_done). */
   int workers = aspen_rt_workers_allowed(rt, ks->n_partitions);
   if (workers > 1) {
      if (!aspen_rt_workers_start(rt, workers, work, drop, ks, err)) {
         rd_kafka_destroy(ks->rk);
         ksrc_free_mem(ks);
         return false;
      }
      ks->workers = workers;
   }
   rd_kafka_poll_set_consumer(ks->rk);
   rd_kafka_topic_partition_list_t *topics =
      rd_kafka_topic_partition_list_new(ks->opts->n_topics);
   for (int i = 0; i < ks->opts->n_topics; i++) {
      rd_kafka_topic_partition_list_add(topics, ks->opts->topics[i],
                                        RD_KAFKA_PARTITION_UA);
   }
   rd_kafka_resp_err_t e = rd_kafka_subscribe(ks->rk, topics);
   rd_kafka_topic_partition_list_destroy(topics);
   if (e) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                      "cannot subscribe to the Kafka $source topics: %s",
                      rd_kafka_err2str(e));
      rd_kafka_destroy(ks->rk);
      ksrc_free_mem(ks);
      return false;
   }
   aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, ks->hdr.ctx,
              "Kafka $source subscribed to %d topic(s) on connection '%s' "
              "with group '%s' (%s, start %s)",
              ks->opts->n_topics, ks->conn->name, group,
              !ks->commit ? "offsets not committed"
              : aspen_rt_exactly_once(rt)
                 ? "offsets committed in $emit's transactions"
                 : "offsets committed after each sink flush",
              ks->opts->earliest ? "earliest" : "latest");
   *state = ks;
   return true;
}

/* Appends the message's key (decoded with keyFormat) and headers to `src`.
 * A key that does not decode is left out and *key_err says why. */
static void
append_key_headers(const ksrc_t *ks, const rd_kafka_message_t *m,
                   bson_t *src, aspen_error_t *key_err, bool *key_failed)
{
   if (m->key && m->key_len > 0) {
      if (!aspen__kafka_key_decode(ks->opts->key_format, m->key, m->key_len,
                                   src, "key", key_err)) {
         *key_failed = true;
      }
   }
   rd_kafka_headers_t *hdrs = NULL;
   if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
       rd_kafka_header_cnt(hdrs) > 0) {
      bson_t arr;
      BSON_APPEND_ARRAY_BEGIN(src, "headers", &arr);
      const char *name;
      const void *val;
      size_t size;
      for (size_t i = 0;
           rd_kafka_header_get_all(hdrs, i, &name, &val, &size) ==
           RD_KAFKA_RESP_ERR_NO_ERROR;
           i++) {
         char idx[16];
         const char *key;
         bson_t h;
         bson_uint32_to_string((uint32_t) i, &key, idx, sizeof idx);
         bson_append_document_begin(&arr, key, -1, &h);
         BSON_APPEND_UTF8(&h, "k", name);
         if (val) {
            bson_append_binary(&h, "v", 1, BSON_SUBTYPE_BINARY, val,
                               (uint32_t) size);
         } else {
            BSON_APPEND_NULL(&h, "v");
         }
         bson_append_document_end(&arr, &h);
      }
      bson_append_array_end(src, &arr);
   }
}

/* The metadata of a message without key or headers, kept per partition
 * on each thread that handles messages (the processor's, or a worker's):
 * from one message of a partition to the next only source.ts and
 * source.offset change, so the bytes write_meta wrote for the first are
 * patched in place for the next ones (the thread's own copy: the
 * metadata only lives through one handle call). A slot is found by its
 * partition and topic name; with more partitions than slots on one
 * thread, the oldest is written again. */
#define META_TPL_MAX 320
#define META_TPL_SLOTS 8

typedef struct {
   uint32_t len; /* 0: free */
   int32_t partition;
   uint32_t topic_at, topic_len; /* the topic name's bytes */
   uint32_t ts_at, offset_at;    /* where those values' 8 bytes are */
   uint8_t bytes[META_TPL_MAX];
} meta_tpl_t;

static __thread meta_tpl_t meta_tpls[META_TPL_SLOTS];
static __thread unsigned meta_tpl_last, meta_tpl_next;

static meta_tpl_t *
meta_tpl_find(const char *topic, size_t topic_len, int32_t partition)
{
   for (unsigned k = 0; k < META_TPL_SLOTS; k++) {
      unsigned i = (meta_tpl_last + k) % META_TPL_SLOTS;
      meta_tpl_t *t = &meta_tpls[i];
      if (t->len && t->partition == partition && t->topic_len == topic_len &&
          memcmp(t->bytes + t->topic_at, topic, topic_len) == 0) {
         meta_tpl_last = i;
         return t;
      }
   }
   return NULL;
}

static void
meta_tpl_save(const aspen_bsonw_t *w, int32_t partition, size_t topic_at,
              size_t topic_len, size_t ts_at, size_t offset_at)
{
   if (w->len > META_TPL_MAX) {
      return; /* a long topic name: written each time */
   }
   meta_tpl_t *t = &meta_tpls[meta_tpl_next];
   meta_tpl_last = meta_tpl_next;
   meta_tpl_next = (meta_tpl_next + 1) % META_TPL_SLOTS;
   memcpy(t->bytes, w->data, w->len);
   t->len = (uint32_t) w->len;
   t->partition = partition;
   t->topic_at = (uint32_t) topic_at;
   t->topic_len = (uint32_t) topic_len;
   t->ts_at = (uint32_t) ts_at;
   t->offset_at = (uint32_t) offset_at;
}

/* Where the value of an element with a `key_len`-byte key starts, when
 * the writer appends it next (type byte, key, NUL, value). */
static size_t
value_at(const aspen_bsonw_t *w, size_t key_len)
{
   return w->len + 1 + key_len + 1;
}

/* Writes {source: {type, ts, topic, partition, offset, key?, headers?}}
 * into `w` and points `meta` at it: ts, the ingestion time, only when
 * `ingest_ms` is not INT64_MIN (aspen_rt_ingest_stamped's metadata; a
 * dead letter's has none). The fixed fields are written as bytes, not
 * with libbson's appenders, and without key or headers once per
 * partition on this thread (meta_tpl_t): this runs for every message. */
static void
write_meta(const ksrc_t *ks, const rd_kafka_message_t *m, int64_t ingest_ms,
           aspen_bsonw_t *w, bson_t *meta, aspen_error_t *key_err,
           bool *key_failed)
{
   bson_value_t v;
   const char *topic = rd_kafka_topic_name(m->rkt);
   size_t topic_len = strlen(topic);
   *key_failed = false;
   bool extra = (m->key && m->key_len > 0) ||
                aspen__kafka_message_has_headers(m);
   bool reuse = !extra && ingest_ms != INT64_MIN;
   if (reuse) {
      meta_tpl_t *t = meta_tpl_find(topic, topic_len, m->partition);
      if (t) {
         aspen_bytes_put_le64(t->bytes + t->ts_at, (uint64_t) ingest_ms);
         aspen_bytes_put_le64(t->bytes + t->offset_at, (uint64_t) m->offset);
         (void) bson_init_static(meta, t->bytes, t->len);
         return;
      }
   }
   size_t ts_at = 0, topic_at, offset_at;
   aspen_bsonw_reset(w);
   size_t src = aspen_bsonw_begin(w, BSON_TYPE_DOCUMENT, "source", 6);
   v.value_type = BSON_TYPE_UTF8;
   v.value.v_utf8.str = (char *) "kafka";
   v.value.v_utf8.len = 5;
   aspen_bsonw_value(w, "type", 4, &v);
   if (ingest_ms != INT64_MIN) {
      v.value_type = BSON_TYPE_DATE_TIME;
      v.value.v_datetime = ingest_ms;
      ts_at = value_at(w, 2);
      aspen_bsonw_value(w, "ts", 2, &v);
   }
   v.value_type = BSON_TYPE_UTF8;
   v.value.v_utf8.str = (char *) topic;
   v.value.v_utf8.len = (uint32_t) topic_len;
   topic_at = value_at(w, 5) + 4; /* past the string's length */
   aspen_bsonw_value(w, "topic", 5, &v);
   v.value_type = BSON_TYPE_INT32;
   v.value.v_int32 = m->partition;
   aspen_bsonw_value(w, "partition", 9, &v);
   v.value_type = BSON_TYPE_INT64;
   v.value.v_int64 = m->offset;
   offset_at = value_at(w, 6);
   aspen_bsonw_value(w, "offset", 6, &v);
   if (extra) {
      bson_t kh = BSON_INITIALIZER;
      bson_iter_t it;
      append_key_headers(ks, m, &kh, key_err, key_failed);
      if (bson_iter_init(&it, &kh)) {
         while (bson_iter_next(&it)) {
            aspen_bsonw_element(w, &it);
         }
      }
      bson_destroy(&kh);
   }
   aspen_bsonw_end(w, src);
   (void) aspen_bsonw_finish(w, meta);
   if (reuse) {
      meta_tpl_save(w, m->partition, topic_at, topic_len, ts_at, offset_at);
   }
}

static void
handle(aspen_runtime_t *rt, ksrc_t *ks, const rd_kafka_message_t *m)
{
   bson_t meta, doc;
   aspen_error_t key_err, err;
   bool key_failed;
   uint8_t meta_buf[512], doc_buf[1024];
   aspen_bsonw_t mw, dw;
   aspen_bsonw_init_static(&mw, meta_buf, sizeof meta_buf);
   aspen_bsonw_init_static(&dw, doc_buf, sizeof doc_buf);
   aspen_rt_mark(rt, part_key(ks, rd_kafka_topic_name(m->rkt), m->partition),
                 m->offset, NULL);
   int64_t ingest_ms = aspen_clock_now_ms(); /* source.ts */
   write_meta(ks, m, ingest_ms, &mw, &meta, &key_err, &key_failed);
   bool decoded =
      ks->sr ? aspen__sr_decode(ks->sr, m->payload, m->payload ? m->len : 0,
                                &doc, &err)
             : aspen__kafka_json_decode(m->payload, m->payload ? m->len : 0,
                                        &dw, &doc, &err);
   if (!decoded) {
      /* Not a document: the raw bytes go to the DLQ with the reason (and
       * the metadata without source.ts, never ingested). */
      bson_t raw = BSON_INITIALIZER;
      write_meta(ks, m, INT64_MIN, &mw, &meta, &key_err, &key_failed);
      aspen__kafka_append_raw(&raw, "value", m->payload, m->payload ? m->len : 0);
      char reason[ASPEN_ERROR_MSG_MAX + 64];
      snprintf(reason, sizeof reason,
               ks->sr ? "Failed to deserialize the Kafka message value as "
                        "Avro: %s"
                      : "Failed to parse the Kafka message value as JSON: %s",
               err.message);
      aspen_rt_dead_letter(rt, &raw, &meta, reason);
      bson_destroy(&raw);
   } else if (key_failed && !ks->opts->key_error_pass_through) {
      char reason[ASPEN_ERROR_MSG_MAX + 64];
      write_meta(ks, m, INT64_MIN, &mw, &meta, &key_err, &key_failed);
      snprintf(reason, sizeof reason,
               "Failed to deserialize the Kafka message key with keyFormat "
               "%s: %s",
               aspen__kafka_key_format_name(ks->opts->key_format),
               key_err.message);
      aspen_rt_dead_letter(rt, &doc, &meta, reason);
   } else {
      rd_kafka_timestamp_type_t tstype;
      int64_t ts = rd_kafka_message_timestamp(m, &tstype);
      aspen_rt_ingest_stamped(rt, &doc, &meta, ingest_ms,
                              tstype == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ||
                                    ts < 0
                                 ? INT64_MIN
                                 : ts);
   }
   bson_destroy(&doc);
   aspen_bsonw_cleanup(&dw);
   aspen_bsonw_cleanup(&mw);
}

/* A message handed to a worker (aspen_rt_workers_submit), on its thread:
 * the processor thread marked its position, the worker does the rest
 * with its own runtime `wrt` (its pipeline and sink). */
static void
work(aspen_runtime_t *wrt, void *item, void *arg)
{
   rd_kafka_message_t *m = item;
   handle(wrt, arg, m);
   rd_kafka_message_destroy(m);
}

static void
drop(void *item)
{
   rd_kafka_message_destroy(item);
}

/* Commits the replay offsets of the runtime's last checkpoint, if it wrote
 * a new one since the last commit: only call after a successful flush. */
static void
commit(ksrc_t *ks, bool sync)
{
   size_t n;
   uint64_t gen;
   const aspen_rt_pos_t *pos = aspen_rt_checkpointed(ks->rt, &n, &gen);
   if (!ks->commit || gen == ks->committed_gen || n == 0) {
      return;
   }
   if (aspen_rt_exactly_once(ks->rt)) {
      /* Committed in the sink's transaction with the checkpoint: only the
       * stats' checkpointOffset to update. */
      for (size_t i = 0; i < n; i++) {
         int64_t idx = pos[i].part >> 32;
         if (idx >= 0 && idx < ks->opts->n_topics && pos[i].replay >= 0) {
            kpart_get(ks, ks->opts->topics[idx],
                      (int32_t) (pos[i].part & 0xffffffff))
               ->committed = pos[i].replay;
         }
      }
      ks->committed_gen = gen;
      return;
   }
   rd_kafka_topic_partition_list_t *list =
      rd_kafka_topic_partition_list_new((int) n);
   for (size_t i = 0; i < n; i++) {
      int64_t idx = pos[i].part >> 32;
      if (idx < 0 || idx >= ks->opts->n_topics || pos[i].replay < 0) {
         continue;
      }
      rd_kafka_topic_partition_list_add(list, ks->opts->topics[idx],
                                        (int32_t) (pos[i].part & 0xffffffff))
         ->offset = pos[i].replay;
   }
   rd_kafka_resp_err_t e = list->cnt > 0
                              ? rd_kafka_commit(ks->rk, list, sync ? 0 : 1)
                              : RD_KAFKA_RESP_ERR_NO_ERROR;
   rd_kafka_topic_partition_list_destroy(list);
   if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET) {
      aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, ks->hdr.ctx,
                 "committing Kafka offsets failed (they are committed with "
                 "the next checkpoint): %s",
                 rd_kafka_err2str(e));
      return;
   }
   ks->committed_gen = gen;
}

/* Publishes kafkaConsumerGroup, kafkaPartitions [{partition, topic,
 * currentOffset (the next offset to read, -1 before the first), checkpointOffset
 * (the last committed, -1 for none), partitionOffsetLag, isIdle}] and
 * kafkaTotalOffsetLag for the stats command. The high watermarks are the ones
 * librdkafka learnt from its last fetch (no broker round trip). */
static void
publish_stats(ksrc_t *ks, int64_t now)
{
   rd_kafka_topic_partition_list_t *assigned = NULL;
   if (rd_kafka_assignment(ks->rk, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return;
   }
   rd_kafka_position(ks->rk, assigned);
   bson_t fields = BSON_INITIALIZER, arr;
   int64_t total = 0;
   BSON_APPEND_UTF8(&fields, "kafkaConsumerGroup", ks->group);
   BSON_APPEND_ARRAY_BEGIN(&fields, "kafkaPartitions", &arr);
   for (int i = 0; i < assigned->cnt; i++) {
      const rd_kafka_topic_partition_t *tp = &assigned->elems[i];
      struct kpart *kp = kpart_get(ks, tp->topic, tp->partition);
      int64_t low = -1, high = -1;
      rd_kafka_get_watermark_offsets(ks->rk, tp->topic, tp->partition, &low,
                                     &high);
      int64_t pos = tp->offset >= 0 ? tp->offset : -1;
      int64_t from = pos >= 0 ? pos : kp->committed >= 0 ? kp->committed : low;
      int64_t lag = high >= 0 && from >= 0 && high > from ? high - from : 0;
      total += lag;
      /* Idle as partitionIdleTimeout means it: nothing to read, and no
       * message for that long. */
      if (!kp->last_msg_ms) {
         kp->last_msg_ms = now; /* idle time counts from here */
      }
      bool idle = lag == 0 && ks->idle_timeout_ms > 0 &&
                  now - kp->last_msg_ms >= ks->idle_timeout_ms;
      char idx[16];
      const char *key;
      bson_t d;
      bson_uint32_to_string((uint32_t) i, &key, idx, sizeof idx);
      bson_append_document_begin(&arr, key, -1, &d);
      BSON_APPEND_INT32(&d, "partition", tp->partition);
      BSON_APPEND_INT64(&d, "currentOffset", pos);
      BSON_APPEND_INT64(&d, "checkpointOffset", kp->committed);
      BSON_APPEND_BOOL(&d, "isIdle", idle);
      BSON_APPEND_UTF8(&d, "topic", tp->topic);
      BSON_APPEND_INT64(&d, "partitionOffsetLag", lag);
      bson_append_document_end(&arr, &d);
   }
   bson_append_array_end(&fields, &arr);
   BSON_APPEND_INT64(&fields, "kafkaTotalOffsetLag", total);
   rd_kafka_topic_partition_list_destroy(assigned);
   aspen__kafka_stats_publish(ks->proc_id, &fields);
   bson_destroy(&fields);
}

static void
kafka_run(aspen_runtime_t *rt, void *state)
{
   ksrc_t *ks = state;
   int64_t last_flush = aspen_clock_mono_ms();
   int since_flush = 0;
   while (!aspen_rt_stopping(rt)) {
      rd_kafka_message_t *m = rd_kafka_consumer_poll(ks->rk, POLL_MS);
      int64_t now = aspen_clock_mono_ms(); /* read once per message */
      if (ks->fatal[0]) {
         if (m) {
            rd_kafka_message_destroy(m);
         }
         aspen_rt_fail(rt, ks->fatal);
         return;
      }
      if (m && m->err) {
         if (is_fatal(m->err)) {
            char msg[ASPEN_ERROR_MSG_MAX];
            fatal_message(ks, m->err, rd_kafka_message_errstr(m), msg,
                          sizeof msg);
            rd_kafka_message_destroy(m);
            aspen_rt_fail(rt, msg);
            return;
         }
         if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, ks->hdr.ctx,
                       "Kafka consumer error (%s), retrying: %s",
                       rd_kafka_err2name(m->err), rd_kafka_message_errstr(m));
         }
         rd_kafka_message_destroy(m);
         m = NULL;
      } else if (m) {
         const char *topic = rd_kafka_topic_name(m->rkt);
         struct kpart *kp = kpart_get(ks, topic, m->partition);
         kp->last_msg_ms = now;
         if (ks->workers > 1) {
            /* Marked here, in the order read; the partition's worker
             * does the rest (work), and no checkpoint is taken before it
             * has. */
            aspen_rt_mark(rt, part_key(ks, topic, m->partition), m->offset,
                          NULL);
            aspen_rt_workers_submit(rt, kp->worker, m);
         } else {
            handle(rt, ks, m);
            rd_kafka_message_destroy(m);
         }
         since_flush++;
      }
      /* With workers, each still gets about FLUSH_EVERY_MSGS between
       * flushes: a flush stops the handing out until every worker's
       * producer has its acknowledgements. */
      if (!m || since_flush >= FLUSH_EVERY_MSGS * ks->workers ||
          now - last_flush >= FLUSH_EVERY_MS) {
         /* Flushes sink and DLQ; false means they succeeded and we are
          * still running, so what was stored may be committed. */
         if (aspen_rt_wait(rt, 0)) {
            break;
         }
         commit(ks, false);
         since_flush = 0;
         last_flush = now;
         if (now - ks->stats_ms >= STATS_EVERY_MS) {
            publish_stats(ks, now);
            ks->stats_ms = now;
         }
      }
   }
   /* Stopping (not failed): make the tail durable, then commit it. */
   if (aspen_rt_flush(rt)) {
      commit(ks, true);
   }
}

static void
kafka_close(void *state)
{
   ksrc_free(state);
}

/* A local connection's broker is new in each aspen process: positions in
 * it are only valid for that broker (aspen_source_ops_t.epoch). */
static const char *
kafka_epoch(const aspen_source_spec_t *spec)
{
   const aspen_kafka_local_t *kl = aspen__conn_kafka_local(spec->conn);
   return kl ? aspen__kafka_local_epoch(kl) : NULL;
}

const aspen_source_ops_t aspen_source_kafka_ops = {
   .type = "kafka",
   .operator_name = "KafkaConsumerOperator",
   .what = "a Kafka $source",
   .parse_option = aspen__kafka_source_parse_option,
   .parse_done = aspen__kafka_source_parse_done,
   .spec_destroy = aspen__kafka_source_opts_destroy,
   .open = kafka_open,
   .run = kafka_run,
   .close = kafka_close,
   .epoch = kafka_epoch,
};
