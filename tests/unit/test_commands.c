/*
 * test_commands.c - the sp command handlers (engine/commands/) and the
 * processors store (engine/runtime/registry.c) driven directly, with no
 * socket, no proxy and no engine.c: a command context built the way the
 * composition root builds it, over a registry in a fresh state directory,
 * one unreachable Atlas connection and the built-in connections.
 *  - create, list, get, modify, stop, drop and stats answer as ASP does,
 *    and refuse with ASP's codes (and errorLabels for a user error);
 *  - a named start whose sink cannot connect fails: FAILED, its error
 *    kept in stats and listings;
 *  - sp.process runs a documents source into the shell cursor: getMore
 *    reads it, stats counts it, the connection closing drops it;
 *  - a deferred start (hooks set) replies through the reply hook, from
 *    poll, or with an error when its connection closes first;
 *  - the registry saves, reloads, renames (a failed save rolls back),
 *    drops, enforces its limit and the name rules;
 *  - the command table: every row's handler answers its name, and what
 *    the proxy reads of it (action, flags).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "builtins.h"
#include "engine.h"
#include "commands/commands.h"
#include "connectors/coll_writer.h"
#include "connectors/connections.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MERGE                                                                  \
   "{\"$merge\": {\"into\": {\"connectionName\": \"atlas\", \"db\": \"d\", "   \
   "\"coll\": \"c\"}}}"
#define PIPE "[{\"$source\": {\"documents\": [{\"a\": 1}]}}, " MERGE "]"

/* A command context as engine.c makes one, and what it owns. */
typedef struct {
   char dir[256];
   aspen_conns_t conns;
   aspen_proc_env_t env;
   aspen_cmd_ctx_t ctx;
} fixture_t;

static void
rm_rf(const char *dir)
{
   char cmd[400];
   snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
   assert_int_equal(system(cmd), 0);
}

static void
fixture_open(fixture_t *f, size_t max)
{
   aspen_error_t err;
   f->ctx.reg = aspen_registry_open(f->dir, max, &err);
   if (!f->ctx.reg) {
      fail_msg("registry did not open: %s", err.message);
   }
}

static int
setup(void **state)
{
   fixture_t *f = aspen_xcalloc(1, sizeof *f);
   const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
   snprintf(f->dir, sizeof f->dir, "%s/aspen-test-commands-XXXXXX", base);
   assert_non_null(mkdtemp(f->dir));
   bson_error_t berr;
   bson_t *conns = bson_new_from_json(
      (const uint8_t *) "[{\"name\": \"atlas\", \"type\": \"atlas\", "
                        "\"uri\": \"mongodb://127.0.0.1:9/"
                        "?serverSelectionTimeoutMS=200"
                        "&connectTimeoutMS=200\"}]",
      -1, &berr);
   assert_non_null(conns);
   aspen_error_t err;
   assert_true(aspen_conns_load(&f->conns, aspen_builtins_catalog(), conns,
                                NULL, NULL, &err));
   bson_destroy(conns);
   pthread_mutex_init(&f->ctx.hooks_mu, NULL);
   f->env = (aspen_proc_env_t){
      .state_dir = f->dir,
      .checkpoint_interval_ms = 5000,
      .catalog = aspen_builtins_catalog(),
      .conns = &f->conns,
      .dlq = &aspen_coll_writer_dlq_ops,
      .start_reported = aspen__cmd_start_reported,
      .arg = &f->ctx,
   };
   f->ctx.conns = &f->conns;
   f->ctx.env = &f->env;
   fixture_open(f, 100);
   *state = f;
   return 0;
}

static int
teardown(void **state)
{
   fixture_t *f = *state;
   aspen__cmd_end_starts(&f->ctx);
   aspen_registry_destroy(f->ctx.reg);
   aspen_conns_cleanup(&f->conns);
   pthread_mutex_destroy(&f->ctx.hooks_mu);
   rm_rf(f->dir);
   free(f);
   return 0;
}

/* Runs `json` through `handler` as connection `conn`; *reply is
 * initialised. Returns what the handler returned (false: deferred). */
static bool
run_as(fixture_t *f, aspen_cmd_fn handler, uint64_t conn, const char *json,
       void *ticket, bson_t *reply)
{
   bson_error_t berr;
   bson_t cmd;
   if (!bson_init_from_json(&cmd, json, -1, &berr)) {
      fail_msg("bad test JSON %s: %s", json, berr.message);
   }
   bson_init(reply);
   bool done = handler(&f->ctx, &cmd, conn, ticket, reply);
   bson_destroy(&cmd);
   return done;
}

static void
run(fixture_t *f, aspen_cmd_fn handler, const char *json, bson_t *reply)
{
   assert_true(run_as(f, handler, 1, json, NULL, reply));
}

static int32_t
code_of(const bson_t *reply)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, reply, "ok") && bson_iter_as_double(&it) == 1) {
      return 0;
   }
   assert_true(bson_iter_init_find(&it, reply, "code"));
   return bson_iter_int32(&it);
}

/* Runs `json` and checks the reply's code (0: ok). */
static void
expect(fixture_t *f, aspen_cmd_fn handler, const char *json, int32_t code)
{
   bson_t reply;
   run(f, handler, json, &reply);
   if (code_of(&reply) != code) {
      char *r = bson_as_relaxed_extended_json(&reply, NULL);
      fail_msg("%s: expected code %d, got %s", json, code, r);
   }
   bson_destroy(&reply);
}

/* The string at dotted `path` of `doc` ("" when there is none). */
static const char *
str_at(const bson_t *doc, const char *path)
{
   bson_iter_t it, d;
   if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &d) &&
       BSON_ITER_HOLDS_UTF8(&d)) {
      return bson_iter_utf8(&d, NULL);
   }
   return "";
}

static int64_t
int_at(const bson_t *doc, const char *path)
{
   bson_iter_t it, d;
   if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &d) &&
       BSON_ITER_HOLDS_NUMBER(&d)) {
      return bson_iter_as_int64(&d);
   }
   return -1;
}

static void
nap(void)
{
   struct timespec ts = {0, 20 * 1000 * 1000};
   nanosleep(&ts, NULL);
}

/* ---- create, list, get, modify, drop; ASP's codes -------------------------- */

static void
test_lifecycle_and_codes(void **state)
{
   fixture_t *f = *state;
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p1\", \"pipeline\": " PIPE "}", 0);
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p1\", \"pipeline\": " PIPE "}",
          ASPEN_ERR_StreamProcessorAlreadyExists);
   /* Strict fields, types and names. */
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p2\", \"pipeline\": " PIPE
          ", \"pipline\": []}",
          ASPEN_ERR_Location40415);
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": 5, \"pipeline\": " PIPE "}",
          ASPEN_ERR_TypeMismatch);
   expect(f, aspen__cmd_create, "{\"createStreamProcessor\": \"p2\"}",
          ASPEN_ERR_FailedToParse);
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"a/b\", \"pipeline\": " PIPE "}",
          ASPEN_ERR_BadValue);
   /* An invalid pipeline is a user error: 420 with ASP's label. */
   bson_t reply;
   run(f, aspen__cmd_create,
       "{\"createStreamProcessor\": \"p2\", \"pipeline\": [{\"$source\": "
       "{\"documents\": []}}, {\"$group\": {\"_id\": 1}}, " MERGE "]}",
       &reply);
   assert_int_equal(code_of(&reply), ASPEN_ERR_StreamProcessorInvalidOptions);
   assert_non_null(strstr(str_at(&reply, "errmsg"), "(at pipeline[1])"));
   assert_string_equal(str_at(&reply, "errorLabels.0"),
                       "StreamProcessorUserError");
   bson_destroy(&reply);
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p2\", \"pipeline\": " PIPE
          ", \"options\": {\"dlq\": {\"connectionName\": \"nope\", "
          "\"db\": \"d\", \"coll\": \"c\"}}}",
          ASPEN_ERR_StreamProcessorInvalidOptions);
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p2\", \"pipeline\": " PIPE
          ", \"options\": {\"tier\": \"SP7\"}}",
          ASPEN_ERR_StreamProcessorInvalidOptions);

   /* Listed and got, CREATED, with ASP's default tier. */
   run(f, aspen__cmd_list, "{\"listStreamProcessors\": 1}", &reply);
   assert_int_equal(code_of(&reply), 0);
   assert_string_equal(str_at(&reply, "streamProcessors.0.name"), "p1");
   assert_string_equal(str_at(&reply, "streamProcessors.0.state"), "CREATED");
   assert_string_equal(str_at(&reply, "streamProcessors.0.tier"), "SP10");
   assert_string_equal(str_at(&reply, "streamProcessors.1.name"), "");
   bson_destroy(&reply);
   run(f, aspen__cmd_list,
       "{\"listStreamProcessors\": 1, \"filter\": {\"name\": \"zz\"}}",
       &reply);
   assert_string_equal(str_at(&reply, "streamProcessors.0.name"), "");
   bson_destroy(&reply);
   run(f, aspen__cmd_get, "{\"getStreamProcessor\": \"p1\"}", &reply);
   assert_int_equal(code_of(&reply), 0);
   assert_int_equal(strlen(str_at(&reply, "id")), 24);
   bson_destroy(&reply);
   expect(f, aspen__cmd_get, "{\"getStreamProcessor\": \"nope\"}",
          ASPEN_ERR_StreamProcessorDoesNotExist);

   /* Only a running processor stops, or is sampled. */
   expect(f, aspen__cmd_stop, "{\"stopStreamProcessor\": \"p1\"}",
          ASPEN_ERR_IllegalOperation);
   expect(f, aspen__cmd_start_sample, "{\"startSampleStreamProcessor\": \"p1\"}",
          ASPEN_ERR_IllegalOperation);
   expect(f, aspen__cmd_get_more,
          "{\"getMoreSampleStreamProcessor\": \"p1\", \"cursorId\": 7}",
          ASPEN_ERR_CursorNotFound);
   expect(f, aspen__cmd_stats,
          "{\"getStreamProcessorStats\": \"p1\", \"scale\": 0}",
          ASPEN_ERR_BadValue);

   /* Stats of a processor that never ran. */
   run(f, aspen__cmd_stats,
       "{\"getStreamProcessorStats\": \"p1\", \"options\": {\"verbose\": "
       "true}}",
       &reply);
   assert_int_equal(code_of(&reply), 0);
   assert_string_equal(str_at(&reply, "stats.status"), "created");
   assert_int_equal(int_at(&reply, "stats.inputMessageCount"), 0);
   assert_string_equal(str_at(&reply, "ns"), "aspen.local.p1");
   bson_destroy(&reply);

   /* ASP's autoscaling (issue 17): accepted on modify. */
   expect(f, aspen__cmd_modify,
          "{\"modifyStreamProcessor\": \"p1\", \"autoscaling\": "
          "{\"enabled\": true}}",
          0);
   /* Modify: checked, renamed, saved. */
   expect(f, aspen__cmd_modify,
          "{\"modifyStreamProcessor\": \"p1\", \"resumeFromCheckpoint\": 1}",
          ASPEN_ERR_TypeMismatch);
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p2\", \"pipeline\": " PIPE "}", 0);
   expect(f, aspen__cmd_modify,
          "{\"modifyStreamProcessor\": \"p1\", \"name\": \"p2\"}",
          ASPEN_ERR_StreamProcessorAlreadyExists);
   expect(f, aspen__cmd_modify,
          "{\"modifyStreamProcessor\": \"p1\", \"name\": \"p3\", "
          "\"tier\": \"SP30\", \"pipeline\": [{\"$source\": {\"documents\": "
          "[{\"b\": 2}]}}, " MERGE "]}",
          ASPEN_ERR_StreamProcessorInvalidOptions); /* a new $source */
   expect(f, aspen__cmd_modify,
          "{\"modifyStreamProcessor\": \"p1\", \"name\": \"p3\", "
          "\"tier\": \"SP30\", \"resumeFromCheckpoint\": false, "
          "\"pipeline\": [{\"$source\": {\"documents\": [{\"b\": 2}]}}, " MERGE
          "]}",
          0);
   run(f, aspen__cmd_get, "{\"getStreamProcessor\": \"p3\"}", &reply);
   assert_string_equal(str_at(&reply, "tier"), "SP30");
   assert_int_equal(int_at(&reply, "pipeline.0.$source.documents.0.b"), 2);
   bson_destroy(&reply);

   /* Drop: gone, and gone from disk. */
   expect(f, aspen__cmd_drop, "{\"dropStreamProcessor\": \"p2\"}", 0);
   expect(f, aspen__cmd_drop, "{\"dropStreamProcessor\": \"p2\"}",
          ASPEN_ERR_StreamProcessorDoesNotExist);
   aspen_registry_destroy(f->ctx.reg);
   fixture_open(f, 100);
   assert_int_equal(aspen_registry_count(f->ctx.reg), 1);
   assert_non_null(aspen_registry_find(f->ctx.reg, "p3"));
   assert_null(aspen_registry_find(f->ctx.reg, "p1"));
}

/* ---- a start whose sink cannot connect --------------------------------------- */

static void
test_start_fails(void **state)
{
   fixture_t *f = *state;
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p\", \"pipeline\": " PIPE "}", 0);
   expect(f, aspen__cmd_start,
          "{\"startStreamProcessor\": \"p\", \"tier\": \"SP1\"}",
          ASPEN_ERR_StreamProcessorInvalidOptions);
   bson_t reply;
   run(f, aspen__cmd_start, "{\"startStreamProcessor\": \"p\"}", &reply);
   /* 421: the Atlas connection cannot be reached. */
   assert_int_equal(code_of(&reply),
                    ASPEN_ERR_StreamProcessorAtlasConnectionError);
   assert_string_equal(str_at(&reply, "errorLabels.0"),
                       "StreamProcessorUserError");
   bson_destroy(&reply);
   aspen_proc_t *p = aspen_registry_find(f->ctx.reg, "p");
   assert_int_equal(aspen_proc_state(p), ASPEN_PROC_FAILED);
   assert_false(aspen_proc_is_running(p));
   run(f, aspen__cmd_stats, "{\"getStreamProcessorStats\": \"p\"}", &reply);
   assert_string_equal(str_at(&reply, "stats.status"), "error");
   assert_true(strlen(str_at(&reply, "stats.error")) > 0);
   bson_destroy(&reply);
   /* Saved FAILED: so it reloads. */
   aspen_registry_destroy(f->ctx.reg);
   fixture_open(f, 100);
   p = aspen_registry_find(f->ctx.reg, "p");
   assert_non_null(p);
   assert_int_equal(aspen_proc_state(p), ASPEN_PROC_FAILED);
   assert_true(strlen(aspen_proc_error(p)) > 0);
}

/* ---- sp.process: documents into the shell cursor ----------------------------- */

/* getMore on `name`'s cursor `id` until `want` messages came or the
 * cursor ended (bounded); the messages' `a` fields are summed. */
static int64_t
drain(fixture_t *f, const char *name, int64_t id, int want, int *got)
{
   int64_t sum = 0;
   *got = 0;
   for (int tries = 0; tries < 500 && *got < want; tries++) {
      char json[256];
      snprintf(json, sizeof json,
               "{\"getMoreSampleStreamProcessor\": \"%s\", \"cursorId\": "
               "%lld}",
               name, (long long) id);
      bson_t reply;
      run(f, aspen__cmd_get_more, json, &reply);
      assert_int_equal(code_of(&reply), 0);
      bson_iter_t it, arr;
      assert_true(bson_iter_init_find(&it, &reply, "messages"));
      bson_iter_recurse(&it, &arr);
      while (bson_iter_next(&arr)) {
         bson_t m;
         assert_true(aspen_bson_view(&arr, &m));
         sum += aspen_bson_int64(&m, "a", 0);
         (*got)++;
      }
      bool ended = int_at(&reply, "cursorId") == 0;
      bson_destroy(&reply);
      if (ended) {
         break;
      }
      nap();
   }
   return sum;
}

static void
test_process_into_shell(void **state)
{
   fixture_t *f = *state;
   bson_t reply;
   run(f, aspen__cmd_process,
       "{\"processStreamProcessor\": [{\"$source\": {\"documents\": "
       "[{\"a\": 1}, {\"a\": 2}, {\"a\": 3}]}}, {\"$match\": {\"a\": "
       "{\"$gte\": 2}}}]}",
       &reply);
   assert_int_equal(code_of(&reply), 0);
   char name[64];
   snprintf(name, sizeof name, "%s", str_at(&reply, "name"));
   int64_t id = int_at(&reply, "cursorId");
   bson_destroy(&reply);
   assert_true(strncmp(name, "__process_", 10) == 0);
   assert_true(id > 0);
   aspen_proc_t *p = aspen_registry_find(f->ctx.reg, name);
   assert_non_null(p);
   assert_true(aspen_proc_is_ephemeral(p));
   assert_int_equal(aspen_proc_state(p), ASPEN_PROC_STARTED);
   int got;
   assert_int_equal(drain(f, name, id, 2, &got), 5);
   assert_int_equal(got, 2);
   char json[256];
   snprintf(json, sizeof json, "{\"getStreamProcessorStats\": \"%s\"}", name);
   run(f, aspen__cmd_stats, json, &reply);
   assert_string_equal(str_at(&reply, "stats.status"), "running");
   assert_int_equal(int_at(&reply, "stats.inputMessageCount"), 3);
   assert_int_equal(int_at(&reply, "stats.outputMessageCount"), 2);
   bson_destroy(&reply);
   /* Never listed, never saved. */
   run(f, aspen__cmd_list, "{\"listStreamProcessors\": 1}", &reply);
   assert_string_equal(str_at(&reply, "streamProcessors.0.name"), "");
   bson_destroy(&reply);
   /* Another connection closing leaves it; its own drops it. */
   aspen__cmd_connection_closed(&f->ctx, 2);
   assert_non_null(aspen_registry_find(f->ctx.reg, name));
   aspen__cmd_connection_closed(&f->ctx, 1);
   assert_null(aspen_registry_find(f->ctx.reg, name));
   assert_int_equal(aspen_registry_count(f->ctx.reg), 0);
   /* The workspace limit counts sp.process processors too. */
   aspen_registry_destroy(f->ctx.reg);
   fixture_open(f, 1);
   expect(f, aspen__cmd_create,
          "{\"createStreamProcessor\": \"p\", \"pipeline\": " PIPE "}", 0);
   expect(f, aspen__cmd_process,
          "{\"processStreamProcessor\": [{\"$source\": {\"documents\": []}}]}",
          ASPEN_ERR_IllegalOperation);
}

/* ---- deferred starts ------------------------------------------------------------ */

typedef struct {
   atomic_int wakes;
   int replies;
   void *ticket;
   bson_t last;
} hooks_seen_t;

static void
on_wake(void *arg)
{
   hooks_seen_t *h = arg;
   atomic_fetch_add(&h->wakes, 1);
}

static void
on_reply(void *arg, void *ticket, const bson_t *reply)
{
   hooks_seen_t *h = arg;
   h->replies++;
   h->ticket = ticket;
   bson_destroy(&h->last);
   bson_copy_to(reply, &h->last);
}

static void
test_deferred_start(void **state)
{
   fixture_t *f = *state;
   hooks_seen_t h = {.replies = 0};
   bson_init(&h.last);
   f->ctx.hooks = (aspen_engine_hooks_t){on_wake, on_reply, &h};
   int ticket1, ticket2;
   static const char *const process =
      "{\"processStreamProcessor\": [{\"$source\": {\"documents\": "
      "[{\"a\": 1}]}}]}";
   bson_t reply;
   /* Deferred: no reply now; the thread's report wakes the caller, whose
    * poll delivers it with the ticket. */
   assert_false(run_as(f, aspen__cmd_process, 1, process, &ticket1, &reply));
   assert_true(bson_empty(&reply));
   bson_destroy(&reply);
   for (int i = 0; i < 500 && atomic_load(&h.wakes) == 0; i++) {
      nap();
   }
   assert_true(atomic_load(&h.wakes) > 0);
   aspen__cmd_poll(&f->ctx);
   assert_int_equal(h.replies, 1);
   assert_ptr_equal(h.ticket, &ticket1);
   assert_int_equal(code_of(&h.last), 0);
   assert_true(int_at(&h.last, "cursorId") > 0);
   aspen__cmd_poll(&f->ctx); /* exactly once */
   assert_int_equal(h.replies, 1);
   /* One whose connection closes before anyone polled: its start ends
    * with an error reply, and it is gone. */
   assert_false(run_as(f, aspen__cmd_process, 3, process, &ticket2, &reply));
   bson_destroy(&reply);
   aspen__cmd_connection_closed(&f->ctx, 3);
   assert_int_equal(h.replies, 2);
   assert_ptr_equal(h.ticket, &ticket2);
   assert_int_equal(code_of(&h.last), ASPEN_ERR_Interrupted);
   assert_int_equal(aspen_registry_count(f->ctx.reg), 1);
   aspen__cmd_poll(&f->ctx);
   assert_int_equal(h.replies, 2);
   f->ctx.hooks = (aspen_engine_hooks_t){0};
   bson_destroy(&h.last);
}

/* ---- the registry alone ---------------------------------------------------------- */

static void
test_registry(void **state)
{
   fixture_t *f = *state;
   aspen_registry_t *reg = f->ctx.reg;
   aspen_error_t err;
   assert_true(aspen_registry_check_name("ok-name.v2_X", "f", &err));
   assert_false(aspen_registry_check_name("a..b", "f", &err));
   assert_int_equal(err.code, ASPEN_ERR_BadValue);
   assert_false(aspen_registry_check_name("tab\t", "f", &err));

   bson_error_t berr;
   bson_t pipeline, options;
   assert_true(bson_init_from_json(&pipeline, PIPE, -1, &berr));
   assert_true(bson_init_from_json(&options, "{\"tier\": \"SP5\"}", -1, &berr));
   aspen_proc_t *p = aspen_registry_proc_new("r1", &pipeline, &options, false,
                                             0);
   char id[25];
   snprintf(id, sizeof id, "%s", aspen_proc_id(p));
   assert_true(aspen_registry_save_as(reg, p, ASPEN_PROC_PROVISIONING, &err));
   aspen_registry_link(reg, p);
   assert_int_equal(aspen_registry_count(reg), 1);
   assert_ptr_equal(aspen_registry_first(reg), p);
   assert_null(aspen_registry_next(p));

   /* A rename whose save fails (the temp file's name is a directory)
    * leaves the old definition, in memory as on disk. */
   char tmp[400];
   snprintf(tmp, sizeof tmp, "%s/processors/%s.json.tmp", f->dir, id);
   assert_int_equal(mkdir(tmp, 0700), 0);
   bson_t none = BSON_INITIALIZER;
   assert_false(aspen_registry_redefine(reg, p, "r2", NULL, &none, &err));
   assert_string_equal(aspen_proc_name(p), "r1");
   assert_true(bson_equal(aspen_proc_options(p), &options));
   assert_int_equal(rmdir(tmp), 0);

   /* Reloaded: same id, definition, and PROVISIONING saved as STARTED
    * (what the user asked for). */
   aspen_registry_destroy(reg);
   fixture_open(f, 100);
   reg = f->ctx.reg;
   p = aspen_registry_find(reg, "r1");
   assert_non_null(p);
   assert_string_equal(aspen_proc_id(p), id);
   assert_int_equal(aspen_proc_state(p), ASPEN_PROC_STARTED);
   assert_true(bson_equal(aspen_proc_pipeline(p), &pipeline));
   assert_true(bson_equal(aspen_proc_options(p), &options));
   bson_t entry = BSON_INITIALIZER;
   aspen_registry_entry(p, &entry);
   assert_string_equal(str_at(&entry, "tier"), "SP5");
   assert_string_equal(str_at(&entry, "state"), "STARTED");
   bson_destroy(&entry);

   /* A rename that saves. */
   bson_init(&none);
   assert_true(aspen_registry_redefine(reg, p, "r2", NULL, &none, &err));
   assert_null(aspen_registry_find(reg, "r1"));
   assert_true(bson_empty(aspen_proc_options(p)));

   /* The limit. */
   aspen_registry_destroy(reg);
   fixture_open(f, 1);
   reg = f->ctx.reg;
   assert_non_null(aspen_registry_find(reg, "r2"));
   assert_true(aspen_registry_is_full(reg));

   /* Unsaved: gone after a reload. */
   p = aspen_registry_find(reg, "r2");
   assert_true(aspen_registry_unsave(reg, p, &err));
   aspen_registry_unlink(reg, p);
   aspen_registry_proc_free(p);
   assert_false(aspen_registry_is_full(reg));
   aspen_registry_destroy(reg);
   fixture_open(f, 100);
   assert_int_equal(aspen_registry_count(f->ctx.reg), 0);

   /* An ephemeral processor is never saved. */
   p = aspen_registry_proc_new("__process_x", &pipeline, NULL, true, 9);
   assert_true(aspen_registry_save(f->ctx.reg, p, &err));
   assert_int_equal(aspen_proc_owner_conn(p), 9);
   aspen_registry_proc_free(p);
   aspen_registry_destroy(f->ctx.reg);
   fixture_open(f, 100);
   assert_int_equal(aspen_registry_count(f->ctx.reg), 0);
   bson_destroy(&pipeline);
   bson_destroy(&options);
}

/* ---- the command table ------------------------------------------------------------ */

static void
test_command_table(void **state)
{
   (void) state;
   static const struct {
      const char *name, *action;
      unsigned flags;
   } rows[] = {
      {"createStreamProcessor", "createStreamProcessor",
       ASPEN_ENGINE_CMD_CREATES},
      {"processStreamProcessor", "processStreamProcessor",
       ASPEN_ENGINE_CMD_CREATES | ASPEN_ENGINE_CMD_SAMPLES},
      {"startStreamProcessor", "startStreamProcessor",
       ASPEN_ENGINE_CMD_UPDATES},
      {"stopStreamProcessor", "stopStreamProcessor", ASPEN_ENGINE_CMD_UPDATES},
      {"dropStreamProcessor", "dropStreamProcessor", ASPEN_ENGINE_CMD_DELETES},
      {"modifyStreamProcessor", "modifyStreamProcessor",
       ASPEN_ENGINE_CMD_UPDATES},
      {"getStreamProcessorStats", "streamProcessorStats", 0},
      {"startSampleStreamProcessor", "sampleStreamProcessor",
       ASPEN_ENGINE_CMD_READS},
      {"getMoreSampleStreamProcessor", "sampleStreamProcessor", 0},
      {"listStreamProcessors", "listStreamProcessors", 0},
      {"listStreamConnections", "listStreamConnections", 0},
      {"getStreamProcessor", "getStreamProcessor", 0},
   };
   for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
      const aspen_engine_command_t *c = aspen_engine_command_find(rows[i].name);
      assert_non_null(c);
      assert_string_equal(c->name, rows[i].name);
      assert_string_equal(c->action, rows[i].action);
      assert_int_equal(c->flags, rows[i].flags);
   }
   assert_null(aspen_engine_command_find("createstreamprocessor"));
   assert_null(aspen_engine_command_find("find"));
   assert_null(aspen_engine_command_find(""));
}

int
main(void)
{
   aspen_log_set_level(ASPEN_LOG_ERROR);
   const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_lifecycle_and_codes, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_start_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(test_process_into_shell, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_deferred_start, setup, teardown),
      cmocka_unit_test_setup_teardown(test_registry, setup, teardown),
      cmocka_unit_test(test_command_table),
   };
   return cmocka_run_group_tests_name("commands", tests, NULL, NULL);
}
