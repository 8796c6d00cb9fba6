/*
 * kafka_txn.c - the exactly-once mode of a Kafka $source -> $emit processor
 * (processor option exactlyOnce, an aspen extension; README "Checkpoints and
 * delivery guarantees"): which pipelines may use it, and the Kafka
 * transactions the $emit producer (sink_emit_kafka.c) runs for the runtime
 * (checkpointing.c).
 *
 * The producer has a transactional.id stable per processor, so the
 * init_transactions of a restarted aspen fences a producer left from the
 * previous run and aborts the transaction it had open. Everything $emit
 * produces between two checkpoints is one transaction. At a checkpoint the
 * runtime flushes, writes the checkpoint file, then asks the sink to commit:
 * the $source's replay offsets go into the same transaction
 * (send_offsets_to_transaction, for the $source's consumer group), each
 * carrying the checkpoint's id as offset metadata, and the transaction
 * commits. So the output and the consumer positions become visible
 * together or not at all, and a read_committed consumer sees each result
 * once. The checkpoint is written before the commit, so after a crash
 * between the two the newest checkpoint is one whose transaction never
 * committed: on restart the runtime reads the ids committed with the
 * group's offsets (aspen__kafka_txn_committed_ids) and resumes from the
 * checkpoint that matches (checkpoint.c aspen__checkpoint_pick_committed).
 *
 * Everything here runs on the processor's thread and talks to the broker
 * (blocking, bounded by timeouts), except aspen__kafka_txn_check (parse
 * time, no I/O).
 */
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASPEN_LOG_DOMAIN "kafka"
#define META_PREFIX "aspen-checkpoint:"
#define TXN_TIMEOUT_MS 60000
#define INIT_TIMEOUT_MS 30000
#define QUERY_TIMEOUT_MS 30000
/* The broker's default transaction.max.timeout.ms (15 minutes). */
#define TXN_TIMEOUT_MAX_MS 900000

#define PREFIX "StreamProcessorInvalidOptions: options.exactlyOnce: "

/* A Kafka connection's bootstrap servers ("" if none). */
static const char *
bootstrap_of(const aspen_conn_t *conn)
{
   bson_iter_t it;
   return bson_iter_init_find(&it, aspen__conn_kafka_conf(conn),
                              "bootstrap.servers") &&
                BSON_ITER_HOLDS_UTF8(&it)
             ? bson_iter_utf8(&it, NULL)
             : "";
}

bool
aspen__kafka_txn_check(const aspen_pipeline_t *pl, const aspen_conns_t *conns,
                       bool ephemeral, aspen_error_t *err)
{
   const int code = ASPEN_ERR_StreamProcessorInvalidOptions;
   if (ephemeral) {
      aspen_error_set(err, code,
                      PREFIX "sp.process() keeps no checkpoints; use a named "
                             "processor (sp.createStreamProcessor)");
      return false;
   }
   if (pl->source.ops != &aspen_source_kafka_ops || !pl->source.conn) {
      aspen_error_set(err, code,
                      PREFIX "needs a Kafka $source, whose consumer offsets "
                             "commit in the same transaction as the output; "
                             "%s cannot take part in a Kafka transaction",
                      pl->source.ops->what);
      return false;
   }
   if (pl->sink == &aspen_sink_timeseries_ops) {
      aspen_error_set(err, code,
                      PREFIX "needs $emit to Kafka as the sink; $emit to a "
                             "time-series collection is at-least-once");
      return false;
   }
   if (pl->sink != &aspen_sink_emit_ops) {
      aspen_error_set(err, code,
                      PREFIX "needs $emit to Kafka as the sink; $merge is "
                             "at-least-once (and idempotent when keyed on "
                             "`on`)");
      return false;
   }
   bson_iter_t it;
   const aspen_conn_t *sink = NULL;
   if (bson_iter_init_find(&it, &pl->sink_spec, "connectionName") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      sink = aspen_conns_find(conns, bson_iter_utf8(&it, NULL));
   }
   if (!sink || !aspen__conn_kafka_conf(sink)) {
      aspen_error_set(err, code, PREFIX "needs $emit to a Kafka connection");
      return false;
   }
   const aspen_conn_t *both[] = {pl->source.conn, sink};
   for (int i = 0; i < 2; i++) {
      if (aspen__conn_kafka_local(both[i])) {
         aspen_error_set(
            err, code,
            PREFIX "connection '%s' is aspen's local broker (\"local\": "
                   "true), librdkafka's mock cluster, whose transactions are "
                   "simulated; exactly-once needs a real Kafka cluster",
            both[i]->name);
         return false;
      }
   }
   if (strcmp(bootstrap_of(pl->source.conn), bootstrap_of(sink)) != 0) {
      aspen_error_set(err, code,
                      PREFIX "$source (connection '%s') and $emit "
                             "(connection '%s') must use the same Kafka "
                             "cluster (the same bootstrapServers): the "
                             "consumer offsets commit in the producer's "
                             "transaction",
                      pl->source.conn->name, sink->name);
      return false;
   }
   return true;
}

void
aspen__kafka_group_id(const aspen_kafka_source_opts_t *opts,
                      const char *proc_id, char *out, size_t n)
{
   if (opts->group_id) {
      snprintf(out, n, "%s", opts->group_id);
   } else {
      snprintf(out, n, "asp-%s-consumer", proc_id);
   }
}

/* Sets err from a librdkafka transaction error and frees it. */
static void
txn_error(rd_kafka_error_t *e, const char *what, aspen_error_t *err)
{
   aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                   "exactly-once $emit: %s failed: %s%s", what,
                   rd_kafka_error_string(e),
                   rd_kafka_error_is_fatal(e)
                      ? " (fatal: another producer with this processor's "
                        "transactional.id, or the broker refused the "
                        "transaction)"
                      : "");
   rd_kafka_error_destroy(e);
}

bool
aspen__kafka_txn_conf(rd_kafka_conf_t *conf, const aspen_runtime_t *rt,
                      aspen_error_t *err)
{
   char id[96], timeout[24];
   snprintf(id, sizeof id, "aspen-%s", aspen_rt_processor_id(rt));
   /* A transaction spans one checkpoint interval; leave room for a slow
    * flush, within the broker's default ceiling. */
   int64_t ms = 2 * aspen_rt_checkpoint_interval_ms(rt) + 30000;
   ms = ms < TXN_TIMEOUT_MS ? TXN_TIMEOUT_MS : ms;
   ms = ms > TXN_TIMEOUT_MAX_MS ? TXN_TIMEOUT_MAX_MS : ms;
   snprintf(timeout, sizeof timeout, "%lld", (long long) ms);
   return aspen__kafka_conf_set(conf, "transactional.id", id, err) &&
          aspen__kafka_conf_set(conf, "transaction.timeout.ms", timeout, err);
}

bool
aspen__kafka_txn_init(rd_kafka_t *rk, aspen_error_t *err)
{
   rd_kafka_error_t *e = rd_kafka_init_transactions(rk, INIT_TIMEOUT_MS);
   if (e) {
      txn_error(e, "initialising the transactional producer", err);
      return false;
   }
   e = rd_kafka_begin_transaction(rk);
   if (e) {
      txn_error(e, "beginning a transaction", err);
      return false;
   }
   return true;
}

void
aspen__kafka_txn_abort(rd_kafka_t *rk)
{
   rd_kafka_error_t *e = rd_kafka_abort_transaction(rk, 10000);
   if (e) {
      rd_kafka_error_destroy(e);
   }
}

/* The $source offsets to commit: each partition's replay offset, tagged
 * with the checkpoint id. */
static rd_kafka_topic_partition_list_t *
offsets_list(const aspen_kafka_source_opts_t *opts, const aspen_rt_pos_t *pos,
             size_t n, const char *checkpoint_id)
{
   rd_kafka_topic_partition_list_t *list =
      rd_kafka_topic_partition_list_new((int) n + 1);
   char meta[160];
   int meta_len = snprintf(meta, sizeof meta, META_PREFIX "%s", checkpoint_id);
   for (size_t i = 0; i < n; i++) {
      int64_t idx = pos[i].part >> 32;
      if (idx < 0 || idx >= opts->n_topics || pos[i].replay < 0) {
         continue;
      }
      rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_add(
         list, opts->topics[idx], (int32_t) (pos[i].part & 0xffffffff));
      tp->offset = pos[i].replay;
      /* The list frees it (with free()). */
      tp->metadata = aspen_xstrdup(meta);
      tp->metadata_size = (size_t) meta_len;
   }
   return list;
}

bool
aspen__kafka_txn_commit(rd_kafka_t *rk, const aspen_runtime_t *rt,
                        const aspen_rt_pos_t *pos, size_t n,
                        const char *checkpoint_id, aspen_error_t *err)
{
   const aspen_kafka_source_opts_t *opts = aspen_rt_source_spec(rt)->opts;
   rd_kafka_error_t *e = NULL;
   const char *what = "sending the $source offsets to the transaction";
   rd_kafka_topic_partition_list_t *list =
      offsets_list(opts, pos, n, checkpoint_id);
   if (list->cnt > 0) {
      char group[256];
      aspen__kafka_group_id(opts, aspen_rt_processor_id(rt), group,
                            sizeof group);
      rd_kafka_consumer_group_metadata_t *cgmd =
         rd_kafka_consumer_group_metadata_new(group);
      for (int tries = 0; tries < 3; tries++) {
         e = rd_kafka_send_offsets_to_transaction(rk, list, cgmd,
                                                  TXN_TIMEOUT_MS);
         if (!e || !rd_kafka_error_is_retriable(e)) {
            break;
         }
         rd_kafka_error_destroy(e);
         e = NULL;
      }
      rd_kafka_consumer_group_metadata_destroy(cgmd);
   }
   rd_kafka_topic_partition_list_destroy(list);
   if (!e) {
      what = "committing the transaction";
      for (int tries = 0; tries < 3; tries++) {
         /* A retriable error (a timeout) leaves the commit in progress:
          * calling again resumes it. */
         e = rd_kafka_commit_transaction(rk, TXN_TIMEOUT_MS);
         if (!e || !rd_kafka_error_is_retriable(e)) {
            break;
         }
         rd_kafka_error_destroy(e);
         e = NULL;
      }
   }
   if (e) {
      if (rd_kafka_error_txn_requires_abort(e)) {
         aspen__kafka_txn_abort(rk);
      }
      txn_error(e, what, err);
      return false;
   }
   e = rd_kafka_begin_transaction(rk);
   if (e) {
      txn_error(e, "beginning the next transaction", err);
      return false;
   }
   return true;
}

/* Appends `id` to the array `ids` unless it is there. */
static void
add_id(bson_t *ids, const char *id, size_t len)
{
   bson_iter_t it;
   uint32_t n = 0;
   if (bson_iter_init(&it, ids)) {
      while (bson_iter_next(&it)) {
         uint32_t l;
         const char *s = bson_iter_utf8(&it, &l);
         if (l == len && memcmp(s, id, len) == 0) {
            return;
         }
         n++;
      }
   }
   char key[16];
   const char *k;
   bson_uint32_to_string(n, &k, key, sizeof key);
   bson_append_utf8(ids, k, -1, id, (int) len);
}

bool
aspen__kafka_txn_committed_ids(const aspen_runtime_t *rt, bson_t *ids,
                               aspen_error_t *err)
{
   const aspen_source_spec_t *spec = aspen_rt_source_spec(rt);
   const aspen_kafka_source_opts_t *opts = spec->opts;
   aspen_kafka_client_hdr_t hdr = {.ctx = aspen_rt_processor_name(rt)};
   char group[256], errstr[512];
   aspen__kafka_group_id(opts, aspen_rt_processor_id(rt), group, sizeof group);
   rd_kafka_conf_t *conf =
      aspen__conn_kafka_client_conf(spec->conn, &hdr, err);
   if (!conf) {
      return false;
   }
   /* Not a member of the group: it only reads the group's offsets, and
    * only stable ones (read_committed waits out a pending transaction). */
   if (!aspen__kafka_conf_set(conf, "group.id", group, err) ||
       !aspen__kafka_conf_set(conf, "enable.auto.commit", "false", err) ||
       !aspen__kafka_conf_set(conf, "isolation.level", "read_committed",
                              err)) {
      rd_kafka_conf_destroy(conf);
      return false;
   }
   rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr,
                                 sizeof errstr);
   if (!rk) {
      rd_kafka_conf_destroy(conf);
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                      "exactly-once: cannot create a Kafka client: %s",
                      errstr);
      return false;
   }
   rd_kafka_topic_partition_list_t *list =
      rd_kafka_topic_partition_list_new(16);
   rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
   for (int i = 0; i < opts->n_topics && !e; i++) {
      rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, opts->topics[i], NULL);
      const struct rd_kafka_metadata *md = NULL;
      e = rd_kafka_metadata(rk, 0, rkt, &md, QUERY_TIMEOUT_MS);
      rd_kafka_topic_destroy(rkt);
      if (e) {
         break;
      }
      for (int t = 0; t < md->topic_cnt; t++) {
         for (int p = 0; p < md->topics[t].partition_cnt; p++) {
            rd_kafka_topic_partition_list_add(
               list, opts->topics[i], md->topics[t].partitions[p].id);
         }
      }
      rd_kafka_metadata_destroy(md);
   }
   if (!e && list->cnt > 0) {
      e = rd_kafka_committed(rk, list, QUERY_TIMEOUT_MS);
   }
   if (e) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                      "exactly-once: cannot read the committed offsets of "
                      "consumer group '%s' on connection '%s': %s",
                      group, spec->conn->name, rd_kafka_err2str(e));
   }
   size_t plen = strlen(META_PREFIX);
   for (int i = 0; !e && i < list->cnt; i++) {
      const rd_kafka_topic_partition_t *tp = &list->elems[i];
      if (tp->err || tp->offset < 0 || !tp->metadata ||
          tp->metadata_size <= plen ||
          memcmp(tp->metadata, META_PREFIX, plen) != 0 ||
          !bson_utf8_validate((const char *) tp->metadata + plen,
                              tp->metadata_size - plen, false)) {
         continue;
      }
      add_id(ids, (const char *) tp->metadata + plen, tp->metadata_size - plen);
   }
   rd_kafka_topic_partition_list_destroy(list);
   rd_kafka_destroy(rk);
   return !e;
}
