/*
 * test_restore.c - a windowed processor restored from its checkpoints
 * (engine/runtime/checkpointing.c, the window's watermarks in
 * engine/stages/window.c) after crashes, driven by a scripted two-partition
 * source instead of Kafka, so that the order in which partitions are read
 * after each restart is the test's, not a broker's:
 *  - a checkpoint taken while a restore's replay has not yet read a
 *    partition back up to where the restored checkpoint had read it still
 *    counts those inputs as replays: a second crash and restore then
 *    sends none of them to the DLQ as late (the flake of
 *    e2e:test_checkpoint_crash), and every window's result counts each of
 *    its inputs once; the same for a token source (as a change stream's),
 *    whose replay is a count of inputs after the token, and whose figures
 *    still count each input once;
 *  - after a restore, the partition read first (further ahead in event
 *    time) does not make the other partition's inputs late: the restored
 *    partitions hold the watermark back;
 *  - the same when the two are partition 0 of two topics (a multi-topic
 *    Kafka source's keys, topic index << 32 | partition): each has a
 *    watermark of its own, so the topic read first does not make the
 *    other's inputs late, before or after a restore.
 * The processor runs on its own thread with the built-in catalog plus one
 * row, "scripted": its $source reads what the running test's plan says, its
 * $emit keeps the window results, and the DLQ writer keeps the entries.
 * A crash is the source failing the processor (no final checkpoint).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builtins.h"
#include "connectors/connections.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/runtime.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Event time of offset o of partition p: the partitions interleave, 100 ms
 * apart, so each holds 5 inputs of every 1 s window. Offset FAR of each
 * partition is an hour later and closes every window before it. */
#define BASE_MS 1700000000000LL
#define N_PER_PART 30
#define FAR N_PER_PART

/* The source's mode: partitions and offsets (as Kafka's), or one stream
 * positioned by resume tokens {o: <next offset>} (as a change stream's);
 * and an offset whose event time is 1 s (late by then), or -1. */
static bool g_tokens;
static int64_t g_late_o;
/* Partitions mode, two topics: stream p is partition 0 of topic "a" or "b"
 * (index p), marked with Kafka's key for it, p << 32. */
static bool g_topics;

static int64_t
part_key(int p)
{
   return g_topics ? (int64_t) p << 32 : p;
}

static int64_t
event_time(int p, int64_t o)
{
   if (o == g_late_o) {
      return BASE_MS + 1000;
   }
   return o == FAR ? BASE_MS + 3600 * 1000 + p : BASE_MS + (2 * o + p) * 100;
}

/* ---- the plan of one run ---------------------------------------------------- */

enum { READ, FLUSH, CRASH, END };

typedef struct {
   int op;
   int part;      /* READ: from partition part */
   int64_t until; /* READ: up to offset until (exclusive) */
} step_t;

static const step_t *g_plan;  /* the steps of the run under way */
static atomic_bool g_plan_done;

/* What the run saw. */
#define MAX_OUT 64
static struct {
   int64_t start; /* a window result: its window's start, and n */
   int64_t n;
} g_out[MAX_OUT];
static int g_n_out;
static int g_n_dlq;
static char g_first_dlq[512];

/* ---- the scripted $source ------------------------------------------------------- */

typedef struct {
   int64_t pos[2]; /* the next offset of each partition */
} scripted_t;

static bool
scripted_open(aspen_runtime_t *rt, void **state, aspen_error_t *err)
{
   (void) err;
   scripted_t *s = aspen_xcalloc(1, sizeof *s);
   const bson_t *pos = aspen_rt_restored_position(rt);
   bson_iter_t it, o;
   if (g_tokens && pos && bson_iter_init(&it, pos) &&
       bson_iter_find_descendant(&it, "token.o", &o)) {
      s->pos[0] = bson_iter_as_int64(&o);
   }
   for (int p = 0; p < 2 && !g_tokens; p++) {
      /* As Kafka's: each partition starts at the checkpoint's offset, and
       * is declared to the window when it is assigned. */
      int64_t off;
      s->pos[p] = aspen_rt_restored_offset(rt, part_key(p), &off) ? off : 0;
      aspen_rt_partition_assigned(rt, part_key(p));
   }
   *state = s;
   return true;
}

static void
read_one(aspen_runtime_t *rt, scripted_t *s, int p)
{
   int64_t o = s->pos[p]++;
   bson_t doc = BSON_INITIALIZER, meta = BSON_INITIALIZER, src;
   BSON_APPEND_DATE_TIME(&doc, "t", event_time(p, o));
   BSON_APPEND_INT32(&doc, "p", p);
   BSON_APPEND_INT64(&doc, "o", o);
   BSON_APPEND_DOCUMENT_BEGIN(&meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "scripted");
   if (g_topics) {
      BSON_APPEND_UTF8(&src, "topic", p ? "b" : "a");
   }
   if (!g_tokens) {
      BSON_APPEND_INT32(&src, "partition", g_topics ? 0 : p);
      BSON_APPEND_INT64(&src, "offset", o);
   }
   bson_append_document_end(&meta, &src);
   bson_t before = BSON_INITIALIZER, after = BSON_INITIALIZER;
   BSON_APPEND_INT64(&before, "o", o);
   BSON_APPEND_INT64(&after, "o", o + 1);
   if (g_tokens) {
      aspen_rt_mark(rt, 0, -1, &before);
   } else {
      aspen_rt_mark(rt, part_key(p), o, NULL);
   }
   aspen_rt_ingest(rt, &doc, &meta, INT64_MIN);
   if (g_tokens) {
      aspen_rt_mark_token(rt, &after);
   }
   bson_destroy(&before);
   bson_destroy(&after);
   bson_destroy(&doc);
   bson_destroy(&meta);
}

static void
scripted_run(aspen_runtime_t *rt, void *state)
{
   scripted_t *s = state;
   for (const step_t *st = g_plan; st->op != END; st++) {
      if (st->op == READ) {
         while (s->pos[st->part] < st->until) {
            read_one(rt, s, st->part);
         }
      } else if (st->op == FLUSH) {
         assert_true(aspen_rt_flush(rt)); /* and a checkpoint */
      } else {
         aspen_rt_fail(rt, "crash"); /* no final checkpoint */
         break;
      }
   }
   atomic_store(&g_plan_done, true);
}

static void
scripted_close(void *state)
{
   free(state);
}

static const aspen_source_ops_t scripted_source_ops = {
   .type = "scripted",
   .operator_name = "ScriptedSourceOperator",
   .what = "a scripted $source",
   .open = scripted_open,
   .run = scripted_run,
   .close = scripted_close,
};

/* ---- its $emit: the window results -------------------------------------------- */

static bool
emit_parse(const bson_t *spec, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   (void) spec;
   (void) pc;
   (void) err;
   return true;
}

static bool
emit_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
          aspen_error_t *err)
{
   (void) rt;
   (void) spec;
   (void) err;
   *state = NULL;
   return true;
}

static bool
emit_write(aspen_runtime_t *rt, void *state, const bson_t *doc,
           aspen_error_t *err)
{
   (void) rt;
   (void) state;
   (void) err;
   bson_iter_t it, f;
   assert_true(bson_iter_init(&it, doc) &&
               bson_iter_find_descendant(&it, "_stream_meta.window.start", &f));
   assert_true(g_n_out < MAX_OUT);
   g_out[g_n_out].start = bson_iter_date_time(&f);
   g_out[g_n_out].n = aspen_bson_int64(doc, "n", -1);
   g_n_out++;
   return true;
}

static bool
emit_flush(aspen_runtime_t *rt, void *state, aspen_error_t *err)
{
   (void) rt;
   (void) state;
   (void) err;
   return true;
}

static void
emit_close(void *state)
{
   (void) state;
}

static const aspen_sink_ops_t scripted_emit_ops = {
   .operator_name = "ScriptedEmitOperator",
   .parse = emit_parse,
   .open = emit_open,
   .write = emit_write,
   .flush = emit_flush,
   .close = emit_close,
};

/* ---- the DLQ writer: counts, and keeps the first entry ------------------------- */

static int g_dlq_handle;

static void *
dlq_open(const aspen_conns_t *conns, const char *conn_name, const char *db,
         const char *coll, aspen_error_t *err)
{
   (void) conns;
   (void) conn_name;
   (void) db;
   (void) coll;
   (void) err;
   return &g_dlq_handle;
}

static bool
dlq_add(void *w, const bson_t *doc, aspen_dlq_refused_fn refused, void *arg,
        aspen_error_t *err)
{
   (void) w;
   (void) refused;
   (void) arg;
   (void) err;
   if (g_n_dlq++ == 0) {
      char *json = bson_as_relaxed_extended_json(doc, NULL);
      snprintf(g_first_dlq, sizeof g_first_dlq, "%s", json);
      bson_free(json);
   }
   return true;
}

static bool
dlq_flush(void *w, aspen_dlq_refused_fn refused, void *arg,
          aspen_error_t *err)
{
   (void) w;
   (void) refused;
   (void) arg;
   (void) err;
   return true;
}

static void
dlq_close(void *w)
{
   (void) w;
}

static const aspen_dlq_ops_t dlq_ops = {
   .open = dlq_open, .add = dlq_add, .flush = dlq_flush, .close = dlq_close};

/* ---- the catalog, the connections, the processor ------------------------------ */

static const aspen_conn_ops_t scripted_conn_ops = {.builtin = "scripted"};

static aspen_connector_t g_rows[32];
static aspen_catalog_t g_cat;

static const aspen_catalog_t *
scripted_catalog(void)
{
   const aspen_catalog_t *base = aspen_builtins_catalog();
   size_t n = base->n_connectors;
   assert_true(n + 1 <= sizeof g_rows / sizeof g_rows[0]);
   g_cat = *base;
   memcpy(g_rows, base->connectors, n * sizeof g_rows[0]);
   g_rows[n] = (aspen_connector_t){.type_name = "scripted",
                                   .conn = &scripted_conn_ops,
                                   .source = &scripted_source_ops,
                                   .emit = &scripted_emit_ops};
   g_cat.connectors = g_rows;
   g_cat.n_connectors = n + 1;
   return &g_cat;
}

#define PIPELINE                                                               \
   "{\"0\": {\"$source\": {\"connectionName\": \"scripted\","                  \
   " \"timeField\": \"$t\"}},"                                                 \
   " \"1\": {\"$tumblingWindow\": {\"interval\": {\"size\": 1,"                \
   " \"unit\": \"second\"}, \"allowedLateness\": 0, \"pipeline\": [{\"$group\":" \
   " {\"_id\": null, \"n\": {\"$sum\": 1}}}]}},"                               \
   " \"2\": {\"$emit\": {\"connectionName\": \"scripted\"}}}"
#define OPTIONS                                                                \
   "{\"dlq\": {\"connectionName\": \"scripted\", \"db\": \"d\","               \
   " \"coll\": \"dlq\"}}"

typedef struct {
   char dir[256];
   aspen_conns_t conns;
   aspen_proc_env_t env;
   aspen_proc_t *proc;
} fixture_t;

static int
setup(void **state)
{
   fixture_t *f = aspen_xcalloc(1, sizeof *f);
   const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
   snprintf(f->dir, sizeof f->dir, "%s/aspen-test-restore-XXXXXX", base);
   assert_non_null(mkdtemp(f->dir));
   const aspen_catalog_t *cat = scripted_catalog();
   aspen_error_t err;
   assert_true(aspen_conns_load(&f->conns, cat, NULL, NULL, NULL, &err));
   f->env = (aspen_proc_env_t){
      .state_dir = f->dir,
      /* Checkpoints only where the plan flushes (and at start and stop). */
      .checkpoint_interval_ms = 3600 * 1000,
      .catalog = cat,
      .conns = &f->conns,
      .dlq = &dlq_ops,
   };
   bson_error_t berr;
   bson_t *pl = bson_new_from_json((const uint8_t *) PIPELINE, -1, &berr);
   bson_t *opts = bson_new_from_json((const uint8_t *) OPTIONS, -1, &berr);
   assert_non_null(pl);
   assert_non_null(opts);
   f->proc = aspen_registry_proc_new("restore", pl, opts, false, 0);
   bson_destroy(pl);
   bson_destroy(opts);
   g_n_out = g_n_dlq = 0;
   g_tokens = false;
   g_topics = false;
   g_late_o = -1;
   g_first_dlq[0] = '\0';
   *state = f;
   return 0;
}

static int
teardown(void **state)
{
   fixture_t *f = *state;
   aspen_registry_proc_free(f->proc);
   aspen_conns_cleanup(&f->conns);
   char cmd[300];
   snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
   assert_int_equal(system(cmd), 0);
   free(f);
   return 0;
}

/* Starts the processor (resuming from its last checkpoint, if any), lets
 * its source run `plan` to the end, then stops it: after a CRASH step that
 * only joins its thread. */
static void
run_plan(fixture_t *f, const step_t *plan)
{
   g_plan = plan;
   atomic_store(&g_plan_done, false);
   aspen_error_t err;
   if (!aspen_proc_launch(f->proc, &f->env, &err) ||
       !aspen_proc_finish_start(f->proc, &err)) {
      fail_msg("the processor did not start: %s", err.message);
   }
   /* Bounded: the plan is a few dozen inputs. */
   for (int i = 0; i < 3000 && !atomic_load(&g_plan_done); i++) {
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
   }
   assert_true(atomic_load(&g_plan_done));
   aspen_proc_halt(f->proc);
}

/* `dlq` DLQ entries, and the last result of each window [BASE + k s,
 * + 1 s), k < 6, counts its `want[k]` inputs (a window's result may be
 * emitted again after a crash: at-least-once). */
static void
assert_results(int dlq, const int64_t want[6])
{
   if (g_n_dlq != dlq) {
      fail_msg("%d DLQ entries, want %d; the first: %s", g_n_dlq, dlq,
               g_first_dlq);
   }
   for (int k = 0; k < 6; k++) {
      int64_t n = -1;
      for (int i = 0; i < g_n_out; i++) {
         if (g_out[i].start == BASE_MS + k * 1000) {
            n = g_out[i].n;
         }
      }
      if (n != want[k]) {
         fail_msg("window %d: n = %lld, want %lld", k, (long long) n,
                  (long long) want[k]);
      }
   }
}

/* The processor's figures count each of `n` inputs once, and `dlq` DLQ
 * entries. */
static void
assert_counted(fixture_t *f, uint64_t n, uint64_t dlq)
{
   aspen_proc_stats_t st;
   aspen_proc_stats(f->proc, &st);
   assert_int_equal(st.input_count, n);
   assert_int_equal(st.dlq_count, dlq);
}

/* Both partitions read: 10 inputs a window, nothing in the DLQ. */
static void
assert_complete(fixture_t *f)
{
   const int64_t want[6] = {10, 10, 10, 10, 10, 10};
   assert_results(0, want);
   assert_counted(f, 2 * (FAR + 1), 0);
}

/* Run 1 reads every input but the closing ones, partition 0 first; the
 * checkpoint then has window [5 s, 6 s) open, so it replays partition 0
 * from offset 25 and partition 1 (read after) from offset 0. Run 2 starts
 * that replay with partition 1, which is still in windows that closed
 * before the crash, and checkpoints before partition 1 is back where it
 * was, or partition 0 read at all. Run 3 reads the rest: partition 1's
 * inputs up to offset 29 are still replays (their windows closed in run 1,
 * without them in the DLQ), and [5 s, 6 s) gets all of its 10. */
static void
test_checkpoint_during_replay(void **state)
{
   fixture_t *f = *state;
   const step_t run1[] = {{READ, 0, N_PER_PART}, {READ, 1, N_PER_PART},
                          {FLUSH, 0, 0}, {CRASH, 0, 0}};
   const step_t run2[] = {{READ, 1, 10}, {FLUSH, 0, 0}, {CRASH, 0, 0}};
   const step_t run3[] = {{READ, 1, N_PER_PART}, {READ, 0, N_PER_PART},
                          {READ, 0, FAR + 1}, {READ, 1, FAR + 1},
                          {END, 0, 0}};
   run_plan(f, run1);
   assert_int_equal(g_n_out, 5); /* [0 s, 1 s) .. [4 s, 5 s) closed */
   run_plan(f, run2);
   run_plan(f, run3);
   assert_complete(f);
}

/* After a restore, partition 1 is read to its end (an hour ahead in event
 * time) before partition 0 is read at all: partition 0, restored from the
 * checkpoint, holds the watermark back, so none of its inputs is late. */
static void
test_partition_read_first_after_restore(void **state)
{
   fixture_t *f = *state;
   const step_t run1[] = {{READ, 0, 15}, {READ, 1, 15}, {FLUSH, 0, 0},
                          {CRASH, 0, 0}};
   const step_t run2[] = {{READ, 1, FAR + 1}, {READ, 0, FAR + 1},
                          {END, 0, 0}};
   run_plan(f, run1);
   run_plan(f, run2);
   assert_complete(f);
}

/* The same two tests with the partitions as partition 0 of two topics: the
 * checkpoint's positions, replays and window watermarks keep them apart. */
static void
test_topics_checkpoint_during_replay(void **state)
{
   g_topics = true;
   test_checkpoint_during_replay(state);
}

static void
test_topics_read_first_after_restore(void **state)
{
   g_topics = true;
   test_partition_read_first_after_restore(state);
}

/* Rewrites the processor's last checkpoint as aspen wrote it before a
 * multi-topic source's partitions had keys of their own: its window kept
 * one watermark for partition 0 of both topics, under the bare number 0
 * (the largest of the two). Checks first that this run's has one per
 * topic, keyed 0 and 1 << 32. */
static void
rewrite_as_bare_partitions(fixture_t *f)
{
   char dir[512];
   bson_t body, old = BSON_INITIALIZER, pw, e;
   bool used_previous;
   bson_iter_t it, ai;
   aspen_error_t err;
   aspen__checkpoint_dir(f->dir, aspen_proc_id(f->proc), dir, sizeof dir);
   assert_true(aspen__checkpoint_load(dir, aspen_proc_id(f->proc), "test",
                                      &body, &used_previous));
   assert_true(bson_iter_init_find(&it, &body, "partitionWatermarks") &&
               bson_iter_recurse(&it, &ai));
   int64_t keys[2], wm = INT64_MIN;
   int n = 0;
   while (bson_iter_next(&ai)) {
      bson_t one;
      uint32_t len;
      const uint8_t *data;
      assert_true(n < 2 && BSON_ITER_HOLDS_DOCUMENT(&ai));
      bson_iter_document(&ai, &len, &data);
      assert_true(bson_init_static(&one, data, len));
      keys[n++] = aspen_bson_int64(&one, "p", -1);
      int64_t w = aspen_bson_int64(&one, "wm", INT64_MIN);
      wm = w > wm ? w : wm;
   }
   assert_int_equal(n, 2);
   assert_true((keys[0] == 0 && keys[1] == (int64_t) 1 << 32) ||
               (keys[1] == 0 && keys[0] == (int64_t) 1 << 32));
   bson_copy_to_excluding_noinit(&body, &old, "partitionWatermarks", NULL);
   BSON_APPEND_ARRAY_BEGIN(&old, "partitionWatermarks", &pw);
   BSON_APPEND_DOCUMENT_BEGIN(&pw, "0", &e);
   BSON_APPEND_INT64(&e, "p", 0);
   BSON_APPEND_INT64(&e, "wm", wm);
   bson_append_document_end(&pw, &e);
   bson_append_array_end(&old, &pw);
   assert_true(aspen__checkpoint_write(dir, &old, &err));
   bson_destroy(&body);
   bson_destroy(&old);
}

/* Such a checkpoint still restores: its entry is topic a's partition 0,
 * topic b's is declared by its assignment, and with topic b read to its
 * end first, neither topic's inputs are late. */
static void
test_topics_restore_bare_partitions(void **state)
{
   fixture_t *f = *state;
   g_topics = true;
   const step_t run1[] = {{READ, 0, 15}, {READ, 1, 15}, {FLUSH, 0, 0},
                          {CRASH, 0, 0}};
   const step_t run2[] = {{READ, 1, FAR + 1}, {READ, 0, FAR + 1},
                          {END, 0, 0}};
   run_plan(f, run1);
   rewrite_as_bare_partitions(f);
   run_plan(f, run2);
   assert_complete(f);
}

/* Partition 0 of topic "a" is read to offset 30 before partition 0 of
 * topic "b" is read at all, and offset 27 of each has an event time of
 * 1 s. Topic b, assigned but not read yet, holds the watermark back, so
 * a's 27 is not late (window [1 s, 2 s) counts 11); b's 27 comes after
 * b's own offset 26 (5.3 s), and is late: one DLQ entry, from topic b.
 * Had the two shared partition 0's watermark, every input of b before
 * [5 s, 6 s) would have been late behind a's. */
static void
test_topics_read_at_different_paces(void **state)
{
   fixture_t *f = *state;
   g_topics = true;
   g_late_o = 27;
   const step_t run[] = {{READ, 0, N_PER_PART}, {READ, 1, N_PER_PART},
                         {READ, 0, FAR + 1},    {READ, 1, FAR + 1},
                         {END, 0, 0}};
   run_plan(f, run);
   const int64_t want[6] = {10, 11, 10, 10, 10, 8};
   assert_results(1, want);
   assert_counted(f, 2 * (FAR + 1), 1);
   assert_non_null(strstr(g_first_dlq, "\"topic\" : \"b\""));
   assert_non_null(strstr(g_first_dlq, "\"o\" : 27"));
}

/* The same with a token source (one stream, read again from the token of
 * the first input an open window holds): its offset 27 has an event time
 * of 1 s, late in run 1 (one DLQ entry). Run 2 reads two of the five
 * inputs to replay and checkpoints; run 3 replays from the same token,
 * and input 27 is still a replay, not a second DLQ entry. */
static void
test_token_checkpoint_during_replay(void **state)
{
   fixture_t *f = *state;
   g_tokens = true;
   g_late_o = 27;
   const step_t run1[] = {{READ, 0, N_PER_PART}, {FLUSH, 0, 0},
                          {CRASH, 0, 0}};
   const step_t run2[] = {{READ, 0, 27}, {FLUSH, 0, 0}, {CRASH, 0, 0}};
   const step_t run3[] = {{READ, 0, FAR + 1}, {END, 0, 0}};
   run_plan(f, run1);
   assert_int_equal(g_n_dlq, 1);
   run_plan(f, run2);
   run_plan(f, run3);
   /* One partition: 5 inputs a window, 4 in [5 s, 6 s) without 27. */
   const int64_t want[6] = {5, 5, 5, 5, 5, 4};
   assert_results(1, want);
   assert_counted(f, FAR + 1, 1);
}

int
main(void)
{
   aspen_log_set_level(ASPEN_LOG_ERROR);
   const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_checkpoint_during_replay, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_partition_read_first_after_restore,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_token_checkpoint_during_replay,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_topics_checkpoint_during_replay,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_topics_read_first_after_restore,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_topics_read_at_different_paces,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_topics_restore_bare_partitions,
                                      setup, teardown),
   };
   return cmocka_run_group_tests_name("restore", tests, NULL, NULL);
}
