/*
 * fuzz_command.c - a client session fed arbitrary command documents. The
 * input (Extended JSON or BSON, see fuzz_common.h) is one command, or, when
 * it is an array (JSON "[...]": keys "0", "1", ...), up to MAX_CMDS commands
 * run in order on one connection. Each command gets "$db": "admin" unless
 * it names its own, is framed as an OP_MSG and fed to a detached session
 * (proxy/session.c: no socket), so it goes through the real request
 * decoding, the router (commands.def), the authorization check and the
 * local handlers, and the sp commands through the bridge thread to the
 * embedded engine, exactly as a client's would.
 *
 * Every input runs twice: once on a session that is not logged in while
 * access control is on (most commands are refused there, the NO_AUTH ones
 * run; for a quarter of the inputs, by a hash of the input, the commands go
 * as legacy OP_QUERY on admin.$cmd instead, as old drivers send hello),
 * then on one of three sessions picked by the same hash: access control
 * off, logged in as an atlasAdmin, or logged in as a user with a custom role
 * that grants only some stream actions. Forwarded commands fail fast: there
 * is no backend (the router answers without network I/O). Audit events are
 * written to /dev/null. The engine resolves its Atlas connections' roles
 * (one runs as readWrite@sales) through the users' hook, as in aspen.
 *
 * In a sequence, the string "$cursor" as a top-level value is replaced by
 * the last cursorId a reply carried, and "$name" by the last processor name
 * one carried (sp.process's ephemeral "__process_<hex>"), so a sequence can
 * read the cursors it opened; the fuzzer could not guess them.
 *
 * Checked for every command: exactly one reply comes back, and it is a well
 * formed OP_MSG whose body has "ok". Between inputs every processor is
 * dropped (ephemeral ones go with their connection, the others through
 * dropStreamProcessor), and the list must then be empty, so no input sees
 * another's processors. FUZZ_COMMAND_VERBOSE=1 prints every reply. The
 * engine and its bridge thread live across
 * inputs; the state directory is a fresh one (on /dev/shm when there is
 * one: the engine fsyncs its state file on every change), removed at exit.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw */
#endif
#include "auth.h"
#include "fuzz_common.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_CMDS 8
#define SLOW_COMMAND_SECS 2.0

static aspen_config_t g_cfg;
static aspen_server_t g_srv;
static uv_loop_t g_loop;
static aspen_users_t *g_users_on;  /* users exist: access control on */
static aspen_users_t *g_users_off; /* security.authorization "disabled" */
static char g_state_dir[256];
static bool g_ready;
static bool g_verbose; /* FUZZ_COMMAND_VERBOSE set: print every reply */
static unsigned g_peer_seq;
static int32_t g_request_id;

/* What one session's replies told the harness. */
typedef struct {
   int replies;
   bson_t last;        /* the last reply's body */
   int64_t cursor_id;  /* the last cursorId seen, 0 if none */
   char name[128];     /* the last processor "name" seen, "" if none */
} replies_t;

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
   (void) st;
   (void) flag;
   (void) ftw;
   return remove(path);
}

static void
cleanup_state_dir(void)
{
   if (g_state_dir[0]) {
      (void) nftw(g_state_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
   }
}

/* The server, its users and its engine, made by the first input. */
static void
setup(void)
{
   aspen_log_set_level(ASPEN_LOG_ERROR);
   g_verbose = getenv("FUZZ_COMMAND_VERBOSE") != NULL;
   const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
   snprintf(g_state_dir, sizeof g_state_dir, "%s/aspen-fuzz-command-XXXXXX",
            base);
   ASPEN_ASSERT(mkdtemp(g_state_dir) != NULL);
   atexit(cleanup_state_dir);

   aspen_config_init(&g_cfg);
   g_cfg.state_dir = aspen_xstrdup(g_state_dir);
   g_cfg.log_level = ASPEN_LOG_ERROR;
   bson_destroy(&g_cfg.connections);
   fuzz_fixed_doc(
      &g_cfg.connections,
      "[{\"name\": \"atlas\", \"type\": \"atlas\", \"uri\": "
      "\"mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1&"
      "connectTimeoutMS=1\"},"
      " {\"name\": \"atlasSales\", \"type\": \"atlas\", \"uri\": "
      "\"mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1&"
      "connectTimeoutMS=1\", \"dbRoleToExecute\": {\"role\": "
      "\"readWrite@sales\", \"type\": \"BUILT_IN\"}},"
      " {\"name\": \"kafka\", \"type\": \"kafka\", \"local\": true}]");
   bson_destroy(&g_cfg.roles);
   fuzz_fixed_doc(&g_cfg.roles,
                  "[{\"role\": \"spRunner\", \"actions\": "
                  "[\"processStreamProcessor\", \"listStreamProcessors\", "
                  "\"sampleStreamProcessor\", \"getStreamProcessor\"], "
                  "\"privileges\": [{\"resource\": {\"db\": \"sales\", "
                  "\"collection\": \"\"}, \"actions\": [\"find\"]}]}]");
   aspen_config_finish(&g_cfg);

   /* Two users (the SCRAM keys are derived once, here). */
   ASPEN_ASSERT(aspen_users_cli_add(&g_cfg, "admin", "pencil",
                                    "atlasAdmin") == 0);
   ASPEN_ASSERT(aspen_users_cli_add(&g_cfg, "runner", "pencil",
                                    "spRunner") == 0);
   aspen_error_t err;
   g_users_on = aspen_users_new(&g_cfg, &err);
   ASPEN_ASSERT(g_users_on && aspen_users_auth_required(g_users_on));
   g_cfg.auth_mode = aspen_xstrdup("disabled");
   g_users_off = aspen_users_new(&g_cfg, &err);
   ASPEN_ASSERT(g_users_off && !aspen_users_auth_required(g_users_off));

   uv_loop_init(&g_loop);
   memset(&g_srv, 0, sizeof g_srv);
   g_srv.loop = &g_loop;
   g_srv.cfg = &g_cfg;
   g_srv.start_time_ms = aspen_clock_now_ms();
   /* Audit events are formatted and written, to nowhere. */
   g_srv.audit = aspen_audit_new("/dev/null", &err);
   ASPEN_ASSERT(g_srv.audit != NULL);
   /* Connections run as their dbRoleToExecute, as in aspen. */
   aspen_engine_authz_t authz;
   aspen_users_engine_authz(g_users_on, &authz);
   aspen_engine_opts_t eopts = {
      .state_dir = g_cfg.state_dir,
      .connections = &g_cfg.connections,
      .authz = &authz,
   };
   g_srv.engine = aspen_engine_new(&eopts, &err);
   ASPEN_ASSERT(g_srv.engine != NULL);
   g_srv.bridge = aspen_bridge_new(&g_loop, g_srv.engine);
}

/* The session's output callback: checks each reply frame and notes the
 * cursor id and processor name it carries. */
static void
on_reply(void *arg, const uint8_t *data, size_t len)
{
   replies_t *r = arg;
   aspen_frame_t f;
   aspen_error_t err;
   ASPEN_ASSERT(aspen_frame_parse(data, len, ASPEN_WIRE_MAX_MESSAGE_LEN, &f,
                                  &err) == ASPEN_PARSE_OK);
   ASPEN_ASSERT((size_t) f.message_length == len);
   ASPEN_ASSERT(f.op_code == ASPEN_OP_MSG || f.op_code == ASPEN_OP_REPLY);
   r->replies++;
   if (f.op_code == ASPEN_OP_REPLY) {
      /* responseFlags, cursorID, startingFrom, numberReturned = 1, a doc */
      bson_t doc;
      int32_t n;
      ASPEN_ASSERT(f.body_len > 20);
      memcpy(&n, f.body + 16, sizeof n);
      ASPEN_ASSERT(n == 1);
      ASPEN_ASSERT(bson_init_static(&doc, f.body + 20, f.body_len - 20) &&
                   bson_validate(&doc, BSON_VALIDATE_NONE, NULL) &&
                   bson_has_field(&doc, "ok"));
      return;
   }
   aspen_op_msg_t msg;
   ASPEN_ASSERT(aspen_op_msg_parse(&f, &msg, &err));
   ASPEN_ASSERT(bson_has_field(&msg.body, "ok"));
   if (g_verbose) {
      char *json = bson_as_relaxed_extended_json(&msg.body, NULL);
      printf("reply: %s\n", json);
      bson_free(json);
   }
   bson_destroy(&r->last);
   bson_copy_to(&msg.body, &r->last);
   bson_iter_t it;
   if (bson_iter_init_find(&it, &msg.body, "cursorId") &&
       BSON_ITER_HOLDS_INT64(&it) && bson_iter_int64(&it) != 0) {
      r->cursor_id = bson_iter_int64(&it);
   }
   if (bson_iter_init_find(&it, &msg.body, "name") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      snprintf(r->name, sizeof r->name, "%s", bson_iter_utf8(&it, NULL));
   }
}

/* `cmd` with "$cursor" / "$name" values replaced (see the top of the file)
 * and "$db": "admin" added when it has no $db, into `out`. */
static void
prepare(const bson_t *cmd, const replies_t *r, bson_t *out)
{
   bson_iter_t it;
   bool has_db = false;
   bson_init(out);
   if (!bson_iter_init(&it, cmd)) {
      return;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      uint32_t klen = bson_iter_key_len(&it);
      has_db = has_db || strcmp(k, "$db") == 0;
      if (BSON_ITER_HOLDS_UTF8(&it)) {
         const char *v = bson_iter_utf8(&it, NULL);
         if (strcmp(v, "$cursor") == 0 && r->cursor_id) {
            bson_append_int64(out, k, (int) klen, r->cursor_id);
            continue;
         }
         if (strcmp(v, "$name") == 0 && r->name[0]) {
            bson_append_utf8(out, k, (int) klen, r->name, -1);
            continue;
         }
      }
      bson_append_iter(out, k, (int) klen, &it);
   }
   if (!has_db) {
      BSON_APPEND_UTF8(out, "$db", "admin");
   }
}

/* The frame for `doc`: an OP_MSG, or with `legacy` an OP_QUERY on
 * "admin.$cmd" as old drivers send hello. */
static void
frame_command(aspen_buf_t *frame, const bson_t *doc, bool legacy)
{
   static const uint8_t msg_head[5] = {0, 0, 0, 0, 0}; /* flags, kind 0 */
   /* flags, "admin.$cmd", numberToSkip 0, numberToReturn -1 */
   static const uint8_t query_head[] = {
      0, 0, 0, 0, 'a', 'd', 'm', 'i', 'n', '.', '$', 'c', 'm', 'd', 0,
      0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff};
   const uint8_t *head = legacy ? query_head : msg_head;
   size_t head_len = legacy ? sizeof query_head : sizeof msg_head;
   int32_t header[4] = {(int32_t) (16 + head_len + doc->len), ++g_request_id,
                        0, legacy ? ASPEN_OP_QUERY : ASPEN_OP_MSG};
   aspen_buf_append(frame, (const uint8_t *) header, sizeof header);
   aspen_buf_append(frame, head, head_len);
   aspen_buf_append(frame, bson_get_data(doc), doc->len);
}

/* Sends `cmd` on `sess` (see frame_command) and runs the loop until it is
 * answered; exactly one reply must come. */
static void
run_one(aspen_session_t *sess, const bson_t *cmd, bool legacy, replies_t *r)
{
   bson_t doc;
   prepare(cmd, r, &doc);
   aspen_buf_t frame;
   aspen_buf_init(&frame);
   frame_command(&frame, legacy ? cmd : &doc, legacy);
   bson_destroy(&doc);
   int before = r->replies;
   uint64_t t0 = uv_hrtime();
   aspen__session_feed(sess, aspen_buf_data(&frame), aspen_buf_len(&frame));
   aspen_buf_cleanup(&frame);
   while (aspen__session_waiting(sess)) {
      uv_run(&g_loop, UV_RUN_ONCE);
   }
   ASPEN_ASSERT(r->replies == before + 1);
   double secs = (double) (uv_hrtime() - t0) / 1e9;
   if (secs > SLOW_COMMAND_SECS) {
      /* Bounded waits on peers (a Kafka metadata request: 10 s) are
       * allowed but worth seeing in the fuzz log, with what they answered. */
      char *in = bson_as_relaxed_extended_json(cmd, NULL);
      char *out = bson_as_relaxed_extended_json(&r->last, NULL);
      fprintf(stderr, "fuzz_command: slow command (%.1f s): %.300s -> %.300s\n",
              secs, in ? in : "?", out ? out : "?");
      bson_free(in);
      bson_free(out);
   }
}

/* A detached session with a peer address of its own (failed logins are
 * rate-limited per address, which must not carry over between inputs). */
static aspen_session_t *
open_session(replies_t *r)
{
   char peer[64];
   unsigned n = ++g_peer_seq;
   snprintf(peer, sizeof peer, "10.%u.%u.%u:4242", (n >> 16) & 255,
            (n >> 8) & 255, n & 255);
   memset(r, 0, sizeof *r);
   bson_init(&r->last);
   return aspen__session_new_detached(&g_srv, peer, on_reply, r);
}

/* Closes the session and runs the loop until its close callback ran (which
 * tells the engine, dropping its ephemeral processors). */
static void
close_session(aspen_session_t *sess, replies_t *r)
{
   int before = g_srv.n_sessions;
   aspen_session_close(sess, "fuzz input done");
   aspen_session_unref(sess);
   while (g_srv.n_sessions >= before) {
      uv_run(&g_loop, UV_RUN_ONCE);
   }
   bson_destroy(&r->last);
}

/* Runs a command given as relaxed Extended JSON. */
static void
run_json(aspen_session_t *sess, replies_t *r, const char *json)
{
   bson_t cmd;
   fuzz_fixed_doc(&cmd, json);
   run_one(sess, &cmd, false, r);
   bson_destroy(&cmd);
}

/* Drops every processor the input left, then checks that none is left. */
static void
reset_engine(void)
{
   replies_t r;
   g_srv.users = g_users_off;
   aspen_session_t *sess = open_session(&r);
   for (int pass = 0; pass < 2; pass++) {
      run_json(sess, &r, "{\"listStreamProcessors\": 1}");
      bson_iter_t it, arr, entry;
      bson_t procs;
      bson_copy_to(&r.last, &procs);
      bool any = false;
      ASPEN_ASSERT(bson_iter_init_find(&it, &procs, "streamProcessors") &&
                   bson_iter_recurse(&it, &arr));
      while (bson_iter_next(&arr)) {
         ASPEN_ASSERT(bson_iter_recurse(&arr, &entry) &&
                      bson_iter_find(&entry, "name") &&
                      BSON_ITER_HOLDS_UTF8(&entry));
         ASPEN_ASSERT(pass == 0); /* the first pass dropped them all */
         any = true;
         bson_t drop = BSON_INITIALIZER;
         BSON_APPEND_UTF8(&drop, "dropStreamProcessor",
                          bson_iter_utf8(&entry, NULL));
         run_one(sess, &drop, false, &r);
         bson_destroy(&drop);
         ASPEN_ASSERT(bson_iter_init_find(&it, &r.last, "ok") &&
                      bson_iter_as_double(&it) == 1.0);
      }
      bson_destroy(&procs);
      if (!any) {
         break;
      }
   }
   close_session(sess, &r);
}

/* Runs the input's commands on a new session: logged in as `user` (NULL:
 * not logged in) with `users` as the user store; `legacy`: as OP_QUERY. */
static void
run_session(const bson_t *cmds, bool is_list, aspen_users_t *users,
            const char *user, bool legacy)
{
   replies_t r;
   g_srv.users = users;
   aspen_session_t *sess = open_session(&r);
   if (user) {
      ASPEN_ASSERT(aspen__auth_login(&g_srv, sess, "admin", user));
   }
   if (!is_list) {
      run_one(sess, cmds, legacy, &r);
   } else {
      bson_iter_t it;
      int n = 0;
      bson_iter_init(&it, cmds);
      while (bson_iter_next(&it) && n < MAX_CMDS) {
         bson_t cmd;
         if (BSON_ITER_HOLDS_DOCUMENT(&it) && aspen_bson_view(&it, &cmd)) {
            run_one(sess, &cmd, legacy, &r);
            n++;
         }
      }
   }
   close_session(sess, &r);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   bson_t doc;
   if (!fuzz_doc_from_bytes(data, size, &doc)) {
      bson_destroy(&doc);
      return 0;
   }
   if (!g_ready) {
      g_ready = true;
      setup();
   }
   /* An array (keys "0", "1", ...) is a sequence of commands. */
   bson_iter_t it;
   bool is_list = bson_iter_init(&it, &doc) && bson_iter_next(&it) &&
                  strcmp(bson_iter_key(&it), "0") == 0 &&
                  BSON_ITER_HOLDS_DOCUMENT(&it);
   uint32_t h = 2166136261u; /* FNV-1a picks the sessions' kinds */
   for (size_t i = 0; i < size; i++) {
      h = (h ^ data[i]) * 16777619u;
   }
   run_session(&doc, is_list, g_users_on, NULL, (h / 3) % 4 == 0);
   switch (h % 3) {
   case 0:
      run_session(&doc, is_list, g_users_off, NULL, false);
      break;
   case 1:
      run_session(&doc, is_list, g_users_on, "admin", false);
      break;
   default:
      run_session(&doc, is_list, g_users_on, "runner", false);
      break;
   }
   reset_engine();
   bson_destroy(&doc);
   return 0;
}
