/*
 * engine.c - the stream-processor commands behind mongosh's sp.* helpers
 * and the registry of processors, persisted in <stateDir>/processors/.
 *
 * Commands and replies follow ../shared/spec/mongosh-sp-contract.md §2 and
 * asp-semantics.md §7: create, process (ephemeral), start, stop, drop,
 * modify, stats, sample (start + getMore), list processors, list
 * connections, get one processor. Every command checks its fields strictly,
 * ignoring only what drivers add ($db, lsid, $clusterTime, ...), so a typo
 * in an option is an error, as with ASP's strict option parsing.
 *
 * Each processor is saved in its own file, <stateDir>/processors/<id>.json
 * (canonical Extended JSON), written atomically (temp file, fsync, rename,
 * directory fsync) when that processor changes, so a save costs what one
 * processor's definition does, whatever the number of processors, and a
 * crash leaves the old or the new file, never half of one. A save that
 * cannot be encoded or written leaves the old file and fails the command
 * that asked for it. The state files are checked strictly when aspen
 * starts: a corrupt or wrong-shaped one (an unknown key, a wrong type, an
 * id that is not aspen's) stops aspen with a message naming it, and nothing
 * is ever rewritten from a file that was not understood. An older aspen's
 * single <stateDir>/processors.json is read the same way and migrated
 * (renamed processors.json.migrated once every processor has its file).
 * Processors that were running when aspen stopped are started again when
 * it comes back.
 *
 * Every command's strings (field names included) must be valid UTF-8, as
 * the saved state and every reply must be; processor names follow aspen's
 * rules (check_new_name; README "Limits"), and there are at most
 * `max_processors` processors (streams.maxProcessors).
 *
 * A start launches the processor's thread and, with the caller's hooks set
 * (engine.h), returns without its reply: the processor is PROVISIONING
 * (saved as STARTED) until its thread reports whether its source and sinks
 * opened, and aspen_engine_poll then finishes the start on the command
 * thread (start_finish) and hands the reply to the caller. A stop, a drop
 * or the owning connection closing meanwhile ends the start (start_abort).
 */
#include "connectors/authz.h"
#include "connectors/coll_writer.h"
#include "connectors/connections.h"
#include "connectors/kafka_int.h"
#include "lang/match.h"
#include "runtime/checkpoint.h"
#include "runtime/pipeline.h"
#include "runtime/runtime_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* An older aspen's single state file: read once, then migrated. */
#define LEGACY_STATE_FILE "processors.json"
#define LEGACY_STATE_VERSION 1
/* One file per processor in this directory of the state directory. */
#define PROCS_DIR "processors"
#define PROC_FILE_VERSION 1

#define DEFAULT_CHECKPOINT_INTERVAL_MS 5000
#define DEFAULT_MAX_PROCESSORS 10000
/* Processor names: at most this many bytes (README "Limits"). */
#define NAME_MAX_LEN 64
/* Commands nested deeper than this are refused (the wire layer's own
 * limit is lower; this only bounds the UTF-8 walk). */
#define MAX_CMD_DEPTH 200

struct aspen_engine {
   char *state_dir;
   char *procs_dir; /* <state_dir>/processors */
   int64_t checkpoint_interval_ms;
   uint64_t memory_limit_bytes; /* 0: the tier's */
   size_t max_processors;
   size_t n_procs; /* linked, ephemeral ones included */
   aspen_conns_t conns;
   aspen_proc_t *procs;
   int64_t next_cursor_id;
   /* What every processor is handed when it launches. */
   aspen_proc_env_t env;
   /* How deferred start replies go back (aspen_engine_set_hooks). Set and
    * read under hooks_mu: processor threads call the wake hook. */
   pthread_mutex_t hooks_mu;
   aspen_engine_hooks_t hooks;
};

/* Deletes processor `p`'s checkpoints: it was dropped, or starts (or was
 * modified to start) without resuming. */
static void
drop_checkpoints(aspen_engine_t *eng, const aspen_proc_t *p)
{
   char dir[4200];
   aspen__checkpoint_dir(eng->state_dir, p->id, dir, sizeof dir);
   aspen__checkpoint_remove(dir);
}

static const char *const commands[] = {
   "createStreamProcessor",      "processStreamProcessor",
   "startStreamProcessor",       "stopStreamProcessor",
   "dropStreamProcessor",        "modifyStreamProcessor",
   "getStreamProcessorStats",    "startSampleStreamProcessor",
   "getMoreSampleStreamProcessor", "listStreamProcessors",
   "listStreamConnections",      "getStreamProcessor",
   NULL,
};

bool
aspen_engine_is_command(const char *name)
{
   for (int i = 0; commands[i]; i++) {
      if (strcmp(commands[i], name) == 0) {
         return true;
      }
   }
   return false;
}

/* ---- small helpers ------------------------------------------------------ */

static void
reply_err(bson_t *reply, const aspen_error_t *err)
{
   aspen_error_append_reply(reply, err);
   if (err->code == ASPEN_ERR_StreamProcessorInvalidOptions ||
       err->code == ASPEN_ERR_StreamProcessorAtlasConnectionError) {
      bson_t labels;
      BSON_APPEND_ARRAY_BEGIN(reply, "errorLabels", &labels);
      BSON_APPEND_UTF8(&labels, "0", "StreamProcessorUserError");
      bson_append_array_end(reply, &labels);
   }
}

/* ---- hooks: deferred start replies ----------------------------------------- */

void
aspen_engine_set_hooks(aspen_engine_t *eng, const aspen_engine_hooks_t *hooks)
{
   pthread_mutex_lock(&eng->hooks_mu);
   if (hooks) {
      eng->hooks = *hooks;
   } else {
      memset(&eng->hooks, 0, sizeof eng->hooks);
   }
   pthread_mutex_unlock(&eng->hooks_mu);
}

static aspen_engine_hooks_t
hooks_get(aspen_engine_t *eng)
{
   pthread_mutex_lock(&eng->hooks_mu);
   aspen_engine_hooks_t h = eng->hooks;
   pthread_mutex_unlock(&eng->hooks_mu);
   return h;
}

/* The processors' start_reported (aspen_proc_env_t): a processor's thread
 * has its start's result; the caller's wake hook has the command thread
 * finish it. */
static void
start_reported(void *arg)
{
   aspen_engine_t *eng = arg;
   /* Called under hooks_mu, so that once aspen_engine_set_hooks(NULL)
    * returns, no processor thread is still inside the caller's hook. */
   pthread_mutex_lock(&eng->hooks_mu);
   if (eng->hooks.wake) {
      eng->hooks.wake(eng->hooks.arg);
   }
   pthread_mutex_unlock(&eng->hooks_mu);
}

/* Fields any driver may add to a command; never options. */
static bool
is_generic_field(const char *k)
{
   static const char *const generic[] = {
      "$db", "lsid", "$clusterTime", "$readPreference", "apiVersion",
      "apiStrict", "apiDeprecationErrors", "comment", "maxTimeMS",
      "txnNumber", "autocommit", "$audit", "writeConcern", "readConcern",
      NULL};
   for (int i = 0; generic[i]; i++) {
      if (strcmp(generic[i], k) == 0) {
         return true;
      }
   }
   return false;
}

/* Checks that every field of `cmd` after the first is generic or listed in
 * `allowed` (NULL-terminated). */
static bool
check_fields(const bson_t *cmd, const char *name, const char *const *allowed,
             bson_t *reply)
{
   bson_iter_t it;
   bson_iter_init(&it, cmd);
   bson_iter_next(&it);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (is_generic_field(k)) {
         continue;
      }
      bool ok = false;
      for (int i = 0; allowed && allowed[i]; i++) {
         if (strcmp(allowed[i], k) == 0) {
            ok = true;
         }
      }
      if (!ok) {
         aspen_reply_error(reply, ASPEN_ERR_Location40415,
                           "BSON field '%s.%s' is an unknown field.", name, k);
         return false;
      }
   }
   return true;
}

/* The processor name in the command's first field. */
static const char *
cmd_name_arg(const bson_t *cmd, const char *cmdname, bson_t *reply)
{
   bson_iter_t it;
   bson_iter_init(&it, cmd);
   bson_iter_next(&it);
   if (!BSON_ITER_HOLDS_UTF8(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s' is the wrong type '%s', expected "
                        "type 'string'",
                        cmdname,
                        BSON_ITER_HOLDS_NULL(&it) ? "null" : "non-string");
      return NULL;
   }
   uint32_t len;
   const char *name = bson_iter_utf8(&it, &len);
   if (len == 0) {
      aspen_reply_error(reply, ASPEN_ERR_BadValue,
                        "stream processor name must not be empty");
      return NULL;
   }
   if (strlen(name) != len) {
      /* Names are compared as C strings: "a\0b" must not reach "a". */
      aspen_reply_error(reply, ASPEN_ERR_BadValue,
                        "stream processor name must not contain a NUL "
                        "character");
      return NULL;
   }
   return name;
}

/* aspen's rules for a new processor name (create, a rename through
 * modify): 1 to NAME_MAX_LEN bytes of ASCII letters, digits, '_', '-' and
 * '.', and no "..". ASP documents names with '-' and '.' (addressed as
 * sp["my-proc"]) and recommends alphanumeric ones; '/', control characters
 * and the like never reach a name. `field` is the command field, for the
 * message. */
static bool
check_new_name(const char *name, const char *field, bson_t *reply)
{
   size_t len = strlen(name);
   if (len > NAME_MAX_LEN) {
      aspen_reply_error(reply, ASPEN_ERR_BadValue,
                        "BSON field '%s' is invalid: a stream processor name "
                        "may be at most %d characters long, this one has %zu",
                        field, NAME_MAX_LEN, len);
      return false;
   }
   for (size_t i = 0; i < len; i++) {
      char c = name[i];
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
      if (!ok) {
         aspen_reply_error(reply, ASPEN_ERR_BadValue,
                           "BSON field '%s' is invalid: a stream processor "
                           "name may contain only ASCII letters, digits, '_', "
                           "'-' and '.', found byte 0x%02x at offset %zu",
                           field, (unsigned) (unsigned char) c, i);
         return false;
      }
   }
   if (strstr(name, "..")) {
      aspen_reply_error(reply, ASPEN_ERR_BadValue,
                        "BSON field '%s' is invalid: a stream processor name "
                        "must not contain \"..\"",
                        field);
      return false;
   }
   return true;
}

static aspen_proc_t *
find_proc(aspen_engine_t *eng, const char *name)
{
   for (aspen_proc_t *p = eng->procs; p; p = p->next) {
      if (strcmp(p->name, name) == 0) {
         return p;
      }
   }
   return NULL;
}

static aspen_proc_t *
find_or_error(aspen_engine_t *eng, const char *name, bson_t *reply)
{
   aspen_proc_t *p = find_proc(eng, name);
   if (!p) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorDoesNotExist,
                        "stream processor '%s' does not exist", name);
   }
   return p;
}

/* True when one more processor fits under the limit (streams.
 * maxProcessors); otherwise fills `reply` with the refusal. */
static bool
room_for_one(const aspen_engine_t *eng, bson_t *reply)
{
   if (eng->n_procs < eng->max_processors) {
      return true;
   }
   aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                     "cannot create another stream processor: the workspace "
                     "has %zu, aspen's limit (streams.maxProcessors); drop "
                     "one first",
                     eng->n_procs);
   return false;
}

/* The processor a command names in its first field, after checking the
 * command's other fields; NULL (reply filled) on any problem. */
static aspen_proc_t *
proc_arg(aspen_engine_t *eng, const bson_t *cmd, const char *cmdname,
         const char *const *allowed, bson_t *reply)
{
   const char *name = cmd_name_arg(cmd, cmdname, reply);
   if (!name || !check_fields(cmd, cmdname, allowed, reply)) {
      return NULL;
   }
   return find_or_error(eng, name, reply);
}

static bool save_proc(aspen_engine_t *eng, const aspen_proc_t *p,
                      aspen_error_t *err);

/* A thread that failed by itself is still to be joined; its FAILED state
 * is saved then. */
static void
reap_failed(aspen_proc_t *proc)
{
   if (aspen_proc_reap(proc)) {
      aspen_error_t err;
      (void) save_proc(proc->eng, proc, &err); /* logged when it fails */
   }
}

/* True while a start is under way (or running): what stop and drop end,
 * and what start and modify refuse. */
static bool
is_running(const aspen_proc_t *proc)
{
   return proc->state == ASPEN_PROC_STARTED ||
          proc->state == ASPEN_PROC_PROVISIONING;
}

/* ---- persistence -------------------------------------------------------- */

/* The saved form of `p` with state `st` (PROVISIONING is saved as STARTED,
 * what the user asked for: after a crash it is started again, as a running
 * one is). */
static void
proc_to_bson(const aspen_proc_t *p, aspen_proc_state_t st, bson_t *out)
{
   BSON_APPEND_UTF8(out, "name", p->name);
   BSON_APPEND_UTF8(out, "id", p->id);
   BSON_APPEND_ARRAY(out, "pipeline", &p->pipeline);
   BSON_APPEND_DOCUMENT(out, "options", &p->options);
   BSON_APPEND_UTF8(out, "state",
                    aspen_proc_state_name(st == ASPEN_PROC_PROVISIONING
                                             ? ASPEN_PROC_STARTED
                                             : st));
   BSON_APPEND_UTF8(out, "errorMsg", p->error_msg);
   BSON_APPEND_DATE_TIME(out, "created", p->created_ms);
   BSON_APPEND_DATE_TIME(out, "lastModified", p->modified_ms);
   BSON_APPEND_DATE_TIME(out, "lastStateChange", p->state_changed_ms);
}

/* Encodes `doc` as canonical Extended JSON (bson_free *json) and checks
 * that it reads back: libbson gives NULL for a string that is not UTF-8,
 * and such a file must never replace a good one. */
static bool
encode_json(const bson_t *doc, const char *what, char **json, size_t *len,
            aspen_error_t *err)
{
   *json = bson_as_canonical_extended_json(doc, len);
   bson_t back;
   bson_error_t berr;
   if (*json && bson_init_from_json(&back, *json, (ssize_t) *len, &berr)) {
      bson_destroy(&back);
      return true;
   }
   bson_free(*json);
   *json = NULL;
   aspen_error_set(err, ASPEN_ERR_InternalError,
                   "cannot save %s: it does not encode as JSON (a string "
                   "that is not valid UTF-8?); the saved state is left as "
                   "it was",
                   what);
   return false;
}

/* Saves processor `p` (ephemeral ones are never saved) as state `st` in its
 * own file. False with err set (and logged) when it cannot be encoded or
 * written; the file on disk is then the old one. Command thread. */
static bool
save_proc_as(aspen_engine_t *eng, const aspen_proc_t *p,
             aspen_proc_state_t st, aspen_error_t *err)
{
   if (p->ephemeral) {
      return true;
   }
   bson_t doc = BSON_INITIALIZER;
   BSON_APPEND_INT32(&doc, "version", PROC_FILE_VERSION);
   proc_to_bson(p, st, &doc);
   char what[160], file[40];
   snprintf(what, sizeof what, "stream processor '%s'", p->name);
   snprintf(file, sizeof file, "%s.json", p->id);
   char *json = NULL;
   size_t len = 0;
   bool ok = encode_json(&doc, what, &json, &len, err) &&
             aspen__file_write_atomic(eng->procs_dir, file, json, len, err);
   bson_free(json);
   bson_destroy(&doc);
   if (!ok) {
      aspen_logf(ASPEN_LOG_ERROR, "STREAMS", "engine", "%s", err->message);
   }
   return ok;
}

static bool
save_proc(aspen_engine_t *eng, const aspen_proc_t *p, aspen_error_t *err)
{
   return save_proc_as(eng, p, p->state, err);
}

/* Deletes processor `p`'s file (it was dropped). False with err set (and
 * logged) when it is still there. */
static bool
unsave_proc(aspen_engine_t *eng, const aspen_proc_t *p, aspen_error_t *err)
{
   if (p->ephemeral) {
      return true;
   }
   char path[4200];
   snprintf(path, sizeof path, "%s/%s.json", eng->procs_dir, p->id);
   if ((unlink(path) != 0 && errno != ENOENT) ||
       !aspen__fsync_dir(eng->procs_dir)) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot remove %s: %s",
                      path, strerror(errno));
      aspen_logf(ASPEN_LOG_ERROR, "STREAMS", "engine", "%s", err->message);
      return false;
   }
   return true;
}

static aspen_proc_t *
proc_new(aspen_engine_t *eng, const char *name, const bson_t *pipeline,
         const bson_t *options)
{
   aspen_proc_t *p = aspen_xcalloc(1, sizeof *p);
   p->eng = eng;
   p->name = aspen_xstrdup(name);
   bson_oid_t oid;
   bson_oid_init(&oid, NULL);
   bson_oid_to_string(&oid, p->id);
   bson_copy_to(pipeline, &p->pipeline);
   if (options) {
      bson_copy_to(options, &p->options);
   } else {
      bson_init(&p->options);
   }
   pthread_mutex_init(&p->mu, NULL);
   pthread_cond_init(&p->cv, NULL);
   p->created_ms = p->modified_ms = p->state_changed_ms = aspen_clock_now_ms();
   p->state = ASPEN_PROC_CREATED;
   atomic_store(&p->stats.watermark_ms, INT64_MIN);
   return p;
}

static void start_abort(aspen_engine_t *eng, aspen_proc_t *p, int32_t code,
                        const char *why);

static void
proc_free(aspen_proc_t *p)
{
   /* Never a start left without its reply (aspen_engine_cancel_starts
    * answers them at shutdown; this is the backstop). */
   start_abort(p->eng, p, ASPEN_ERR_StreamProcessorWorkerShuttingDown,
               "was freed before it finished starting");
   aspen_proc_halt(p);
   aspen__cursor_free_all(p);
   bson_destroy(&p->pipeline);
   bson_destroy(&p->options);
   pthread_mutex_destroy(&p->mu);
   pthread_cond_destroy(&p->cv);
   free(p->name);
   free(p);
}

static void
link_proc(aspen_engine_t *eng, aspen_proc_t *p)
{
   aspen_proc_t **pp = &eng->procs;
   while (*pp) {
      pp = &(*pp)->next;
   }
   *pp = p;
   eng->n_procs++;
}

static void
unlink_proc(aspen_engine_t *eng, aspen_proc_t *p)
{
   for (aspen_proc_t **pp = &eng->procs; *pp; pp = &(*pp)->next) {
      if (*pp == p) {
         *pp = p->next;
         eng->n_procs--;
         return;
      }
   }
}

/* ---- loading the saved state ---------------------------------------------- */

/* One saved processor, as read from a state file (views into it). */
typedef struct {
   const char *name, *id, *state, *error_msg;
   bson_t pipeline, options; /* static views; empty when absent */
   int64_t created, modified, changed;
} saved_proc_t;

/* Reads a whole file into a NUL-terminated buffer (free()); NULL with err
 * set when it cannot be read. *missing says it does not exist. */
static char *
read_state_file(const char *path, size_t *len, bool *missing,
                aspen_error_t *err)
{
   *missing = false;
   FILE *f = fopen(path, "rb");
   if (!f) {
      *missing = errno == ENOENT;
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot read %s: %s",
                      path, strerror(errno));
      return NULL;
   }
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   bool ok = aspen_buf_read_file(&buf, f, SIZE_MAX / 2);
   fclose(f);
   if (!ok) {
      aspen_buf_cleanup(&buf);
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot read %s", path);
      return NULL;
   }
   *len = aspen_buf_len(&buf);
   char *out = aspen_xmalloc(*len + 1);
   memcpy(out, aspen_buf_data(&buf), *len);
   out[*len] = '\0';
   aspen_buf_cleanup(&buf);
   return out;
}

/* Parses a state file's JSON into `doc`; a corrupt file (or one holding a
 * string that is not UTF-8) is an error that says how to start without it. */
static bool
parse_state_json(const char *path, const char *json, size_t len, bson_t *doc,
                 aspen_error_t *err)
{
   bson_error_t berr;
   if (!bson_init_from_json(doc, json, (ssize_t) len, &berr)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "%s is corrupt (%s); move it away to start without "
                      "the saved processors",
                      path, berr.message);
      return false;
   }
   if (!bson_validate(doc, BSON_VALIDATE_UTF8 | BSON_VALIDATE_UTF8_ALLOW_NULL,
                      NULL)) {
      bson_destroy(doc);
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "%s is corrupt (a string is not valid UTF-8); move it "
                      "away to start without the saved processors",
                      path);
      return false;
   }
   return true;
}

static bool
shape_error(aspen_error_t *err, const char *path, const char *where,
            const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Sets the error for a state file that parses but is not what aspen
 * writes; aspen stops rather than lose or rewrite the definitions. */
static bool
shape_error(aspen_error_t *err, const char *path, const char *where,
            const char *fmt, ...)
{
   char what[300];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(what, sizeof what, fmt, ap);
   va_end(ap);
   aspen_error_set(err, ASPEN_ERR_FailedToParse,
                   "%s is not a state file aspen can read: %s%s%s; fix it, "
                   "or move it away to start without the saved processors",
                   path, where, *where ? ": " : "", what);
   return false;
}

/* Checks one saved processor `entry` (at `where` in `path`) field by
 * field and fills `out` with views into it. A "version" field is allowed
 * only in a per-processor file (`own_file`). */
static bool
parse_saved_proc(const bson_t *entry, const char *path, const char *where,
                 bool own_file, saved_proc_t *out, aspen_error_t *err)
{
   static const char *const states[] = {"CREATED", "STARTED", "STOPPED",
                                        "FAILED", NULL};
   memset(out, 0, sizeof *out);
   bson_init(&out->pipeline);
   bson_init(&out->options);
   bson_iter_t it;
   bson_iter_init(&it, entry);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      bson_type_t t = bson_iter_type(&it);
      uint32_t len;
      const uint8_t *data;
      if (strcmp(k, "version") == 0 && own_file) {
         if (!BSON_ITER_HOLDS_NUMBER(&it) ||
             bson_iter_as_int64(&it) != PROC_FILE_VERSION) {
            return shape_error(err, path, where,
                               "'version' must be %d (a newer aspen may "
                               "have written it)",
                               PROC_FILE_VERSION);
         }
      } else if (strcmp(k, "name") == 0 || strcmp(k, "id") == 0 ||
                 strcmp(k, "state") == 0 || strcmp(k, "errorMsg") == 0) {
         if (t != BSON_TYPE_UTF8) {
            return shape_error(err, path, where, "'%s' must be a string", k);
         }
         const char *v = bson_iter_utf8(&it, &len);
         if (strlen(v) != len) {
            return shape_error(err, path, where,
                               "'%s' holds a NUL character", k);
         }
         if (k[0] == 'n') {
            out->name = v;
         } else if (k[0] == 'i') {
            if (!aspen__proc_id_is_valid(v, len)) {
               return shape_error(err, path, where,
                                  "'id' must be 24 lowercase hex digits "
                                  "(aspen's processor ids), found \"%.40s\"",
                                  v);
            }
            out->id = v;
         } else if (k[0] == 's') {
            bool known = false;
            for (int i = 0; states[i]; i++) {
               known = known || strcmp(states[i], v) == 0;
            }
            if (!known) {
               return shape_error(err, path, where,
                                  "'state' must be CREATED, STARTED, "
                                  "STOPPED or FAILED, found \"%.40s\"",
                                  v);
            }
            out->state = v;
         } else {
            out->error_msg = v;
         }
      } else if (strcmp(k, "pipeline") == 0) {
         if (t != BSON_TYPE_ARRAY) {
            return shape_error(err, path, where,
                               "'pipeline' must be an array");
         }
         bson_iter_array(&it, &len, &data);
         (void) bson_init_static(&out->pipeline, data, len);
      } else if (strcmp(k, "options") == 0) {
         if (t != BSON_TYPE_DOCUMENT) {
            return shape_error(err, path, where,
                               "'options' must be an object");
         }
         bson_iter_document(&it, &len, &data);
         (void) bson_init_static(&out->options, data, len);
      } else if (strcmp(k, "created") == 0 ||
                 strcmp(k, "lastModified") == 0 ||
                 strcmp(k, "lastStateChange") == 0) {
         if (t != BSON_TYPE_DATE_TIME) {
            return shape_error(err, path, where, "'%s' must be a date", k);
         }
         int64_t v = bson_iter_date_time(&it);
         *(k[0] == 'c'   ? &out->created
           : k[4] == 'M' ? &out->modified
                         : &out->changed) = v;
      } else {
         return shape_error(err, path, where, "unknown field '%.60s'", k);
      }
   }
   if (!out->name || !*out->name) {
      return shape_error(err, path, where, "'name' is missing or empty");
   }
   if (!out->id) {
      return shape_error(err, path, where, "'id' is missing");
   }
   if (bson_empty(&out->pipeline) &&
       !bson_has_field(entry, "pipeline")) {
      return shape_error(err, path, where, "'pipeline' is missing");
   }
   return true;
}

/* Makes the processor a checked saved entry describes and links it,
 * refusing a second processor with the same name or id. */
static bool
link_saved(aspen_engine_t *eng, const saved_proc_t *sp, const char *path,
           const char *where, aspen_error_t *err)
{
   for (aspen_proc_t *q = eng->procs; q; q = q->next) {
      if (strcmp(q->name, sp->name) == 0 || strcmp(q->id, sp->id) == 0) {
         return shape_error(err, path, where,
                            "a second processor named '%.64s' or with id "
                            "%s",
                            sp->name, sp->id);
      }
   }
   aspen_proc_t *p = proc_new(eng, sp->name, &sp->pipeline, &sp->options);
   memcpy(p->id, sp->id, sizeof p->id);
   p->created_ms = sp->created;
   p->modified_ms = sp->modified;
   p->state_changed_ms = sp->changed;
   const char *st = sp->state ? sp->state : "CREATED";
   p->state = strcmp(st, "STARTED") == 0   ? ASPEN_PROC_STARTED
              : strcmp(st, "STOPPED") == 0 ? ASPEN_PROC_STOPPED
              : strcmp(st, "FAILED") == 0  ? ASPEN_PROC_FAILED
                                           : ASPEN_PROC_CREATED;
   if (sp->error_msg) {
      snprintf(p->error_msg, sizeof p->error_msg, "%s", sp->error_msg);
      aspen_utf8_scrub(p->error_msg);
   }
   char rules[ASPEN_ERROR_MSG_MAX];
   bson_t scratch = BSON_INITIALIZER;
   if (!check_new_name(p->name, "name", &scratch)) {
      /* Kept (it can be renamed or dropped): an older aspen took it. */
      bson_iter_t m;
      snprintf(rules, sizeof rules, "%s",
               bson_iter_init_find(&m, &scratch, "errmsg")
                  ? bson_iter_utf8(&m, NULL)
                  : "");
      aspen_logf(ASPEN_LOG_WARNING, "STREAMS", "engine",
                 "the saved processor %s breaks today's name rules (%s); "
                 "rename it with modify",
                 p->id, rules);
   }
   bson_destroy(&scratch);
   link_proc(eng, p);
   return true;
}

/* Loads an older aspen's processors.json: {version: 1, processors: [...]},
 * nothing else. */
static bool
load_legacy(aspen_engine_t *eng, const char *path, const char *json,
            size_t len, aspen_error_t *err)
{
   bson_t doc;
   if (!parse_state_json(path, json, len, &doc, err)) {
      return false;
   }
   bool ok = true, have_list = false;
   bson_iter_t it, pi;
   bson_iter_init(&it, &doc);
   while (ok && bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "version") == 0) {
         if (!BSON_ITER_HOLDS_NUMBER(&it) ||
             bson_iter_as_int64(&it) != LEGACY_STATE_VERSION) {
            ok = shape_error(err, path, "", "'version' must be %d",
                             LEGACY_STATE_VERSION);
         }
      } else if (strcmp(k, "processors") == 0) {
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            ok = shape_error(err, path, "",
                             "'processors' must be an array of processor "
                             "definitions");
         } else {
            have_list = true;
            pi = it;
         }
      } else {
         ok = shape_error(err, path, "", "unknown field '%.60s'", k);
      }
   }
   if (ok && !have_list) {
      ok = shape_error(err, path, "", "'processors' is missing");
   }
   if (ok) {
      bson_iter_t ei;
      uint32_t n = 0;
      bson_iter_recurse(&pi, &ei);
      while (ok && bson_iter_next(&ei)) {
         char where[48];
         snprintf(where, sizeof where, "processors[%u]", n++);
         if (!BSON_ITER_HOLDS_DOCUMENT(&ei)) {
            ok = shape_error(err, path, where, "not an object");
            break;
         }
         uint32_t elen;
         const uint8_t *data;
         bson_t entry;
         bson_iter_document(&ei, &elen, &data);
         (void) bson_init_static(&entry, data, elen);
         saved_proc_t sp;
         ok = parse_saved_proc(&entry, path, where, false, &sp, err) &&
              link_saved(eng, &sp, path, where, err);
      }
   }
   bson_destroy(&doc);
   return ok;
}

/* Loads one per-processor file, <procs_dir>/<id>.json. */
static bool
load_proc_file(aspen_engine_t *eng, const char *path, const char *file_id,
               aspen_error_t *err)
{
   size_t len;
   bool missing;
   char *json = read_state_file(path, &len, &missing, err);
   if (!json) {
      return false;
   }
   bson_t doc;
   bool ok = parse_state_json(path, json, len, &doc, err);
   free(json);
   if (!ok) {
      return false;
   }
   saved_proc_t sp;
   ok = parse_saved_proc(&doc, path, "", true, &sp, err);
   if (ok && strcmp(sp.id, file_id) != 0) {
      ok = shape_error(err, path, "",
                       "its 'id' %s is not the one its name says", sp.id);
   }
   ok = ok && link_saved(eng, &sp, path, "", err);
   bson_destroy(&doc);
   return ok;
}

static int
cmp_proc_order(const void *a, const void *b)
{
   const aspen_proc_t *x = *(aspen_proc_t *const *) a;
   const aspen_proc_t *y = *(aspen_proc_t *const *) b;
   if (x->created_ms != y->created_ms) {
      return x->created_ms < y->created_ms ? -1 : 1;
   }
   return strcmp(x->id, y->id);
}

/* Orders the loaded processors as they were created (a directory lists
 * its files in no particular order). */
static void
sort_procs(aspen_engine_t *eng)
{
   size_t n = eng->n_procs;
   if (n < 2) {
      return;
   }
   aspen_proc_t **v = aspen_xcalloc(n, sizeof *v);
   size_t i = 0;
   for (aspen_proc_t *p = eng->procs; p; p = p->next) {
      v[i++] = p;
   }
   qsort(v, n, sizeof *v, cmp_proc_order);
   for (i = 0; i + 1 < n; i++) {
      v[i]->next = v[i + 1];
   }
   v[n - 1]->next = NULL;
   eng->procs = v[0];
   free(v);
}

/* True when `file` is "<valid id>.json"; copies the id to `id`. */
static bool
is_proc_file(const char *file, char id[25])
{
   size_t n = strlen(file);
   if (n != 24 + 5 || strcmp(file + 24, ".json") != 0) {
      return false;
   }
   memcpy(id, file, 24);
   id[24] = '\0';
   return aspen__proc_id_is_valid(id, 24);
}

/* Loads every <procs_dir>/<id>.json; leftover "*.tmp" files (a crash during
 * a save) are removed, anything else is left alone with a warning. When
 * `migrating` (the legacy file, already loaded, is the truth) the
 * processor files there are removed instead: each loaded processor then
 * writes its own. */
static bool
load_procs_dir(aspen_engine_t *eng, bool migrating, aspen_error_t *err)
{
   DIR *d = opendir(eng->procs_dir);
   if (!d) {
      if (errno == ENOENT) {
         return true;
      }
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot read %s: %s",
                      eng->procs_dir, strerror(errno));
      return false;
   }
   bool ok = true;
   struct dirent *de;
   while (ok && (de = readdir(d))) {
      const char *f = de->d_name;
      char path[4400], id[25];
      snprintf(path, sizeof path, "%s/%s", eng->procs_dir, f);
      size_t n = strlen(f);
      if (strcmp(f, ".") == 0 || strcmp(f, "..") == 0) {
         continue;
      }
      if (n > 4 && strcmp(f + n - 4, ".tmp") == 0) {
         (void) unlink(path); /* a save that never finished */
      } else if (!is_proc_file(f, id)) {
         aspen_logf(ASPEN_LOG_WARNING, "STREAMS", "engine",
                    "ignoring %s: not a processor file (<id>.json)", path);
      } else if (migrating) {
         (void) unlink(path); /* the legacy file says what exists */
      } else {
         ok = load_proc_file(eng, path, id, err);
      }
   }
   closedir(d);
   return ok;
}

/* Loads the saved processors: an older aspen's processors.json when there
 * is one (then migrated to one file per processor, and renamed
 * processors.json.migrated), else the files in processors/. Any file that
 * is not understood stops aspen (err set) with nothing rewritten. */
static bool
load_state(aspen_engine_t *eng, aspen_error_t *err)
{
   char legacy[4096];
   snprintf(legacy, sizeof legacy, "%s/%s", eng->state_dir,
            LEGACY_STATE_FILE);
   size_t len;
   bool missing;
   char *json = read_state_file(legacy, &len, &missing, err);
   if (!json && !missing) {
      return false;
   }
   if (!json) {
      bool ok = load_procs_dir(eng, false, err);
      sort_procs(eng);
      return ok;
   }
   bool ok = load_legacy(eng, legacy, json, len, err);
   free(json);
   if (!ok) {
      return false;
   }
   /* Migrate: every processor gets its file, stale ones go (an earlier
    * migration that did not finish), then the old file is renamed. */
   ok = load_procs_dir(eng, true, err);
   for (aspen_proc_t *p = eng->procs; ok && p; p = p->next) {
      ok = save_proc(eng, p, err);
   }
   char done[4200];
   snprintf(done, sizeof done, "%s.migrated", legacy);
   if (ok && (rename(legacy, done) != 0 ||
              !aspen__fsync_dir(eng->state_dir))) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot rename %s: %s",
                      legacy, strerror(errno));
      ok = false;
   }
   if (ok) {
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", "engine",
                 "migrated %zu processor(s) from %s to %s (one file each); "
                 "the old file is now %s",
                 eng->n_procs, legacy, eng->procs_dir, done);
   }
   return ok;
}

/* ---- options ------------------------------------------------------------ */

/* Validates createStreamProcessor/modify options; dlq connections must be
 * atlas connections. */
static bool
check_dlq(aspen_engine_t *eng, const bson_iter_t *it, bson_t *reply)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: options.dlq must be an "
                        "object {connectionName, db, coll}");
      return false;
   }
   bson_iter_t di;
   bson_iter_recurse(it, &di);
   const char *cn = NULL;
   int have = 0, n = 0;
   while (bson_iter_next(&di)) {
      const char *k = bson_iter_key(&di);
      n++;
      if (strcmp(k, "connectionName") != 0 && strcmp(k, "db") != 0 &&
          strcmp(k, "coll") != 0) {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                           "StreamProcessorInvalidOptions: BSON field "
                           "'options.dlq.%s' is an unknown field.",
                           k);
         return false;
      }
      if (!BSON_ITER_HOLDS_UTF8(&di) || !*bson_iter_utf8(&di, NULL)) {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                           "StreamProcessorInvalidOptions: options.dlq.%s "
                           "must be a non-empty string",
                           k);
         return false;
      }
      if (strcmp(k, "connectionName") == 0) {
         cn = bson_iter_utf8(&di, NULL);
      }
      have++;
   }
   if (n == 0) {
      return true; /* {} removes the DLQ (modify) */
   }
   if (have != 3 || !cn) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: options.dlq needs "
                        "connectionName, db and coll");
      return false;
   }
   const aspen_conn_t *conn = aspen_conns_find(&eng->conns, cn);
   if (!conn) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: Unknown connection "
                        "name %s (at options.dlq.connectionName)",
                        cn);
      return false;
   }
   if (conn->type != ASPEN_CONN_ATLAS) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: the DLQ must use an "
                        "atlas connection, '%s' is %s",
                        cn, aspen_conn_type_name(conn->type));
      return false;
   }
   return true;
}

static bool
check_tier(const bson_iter_t *it, const char *where, bson_t *reply)
{
   static const char *const tiers[] = {"SP2", "SP5", "SP10", "SP30", "SP50",
                                       NULL};
   const char *t = BSON_ITER_HOLDS_UTF8(it) ? bson_iter_utf8(it, NULL) : NULL;
   for (int i = 0; t && tiers[i]; i++) {
      if (strcmp(t, tiers[i]) == 0) {
         return true;
      }
   }
   aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                     "StreamProcessorInvalidOptions: invalid tier '%s' for %s "
                     "(expected SP2, SP5, SP10, SP30 or SP50)",
                     t ? t : "(not a string)", where);
   return false;
}

/* Validates an options document; copies the accepted ones to `out`. */
static bool
check_options(aspen_engine_t *eng, const bson_t *options, bson_t *out,
              bson_t *reply)
{
   bson_iter_t it;
   bson_iter_init(&it, options);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "dlq") == 0) {
         if (!check_dlq(eng, &it, reply)) {
            return false;
         }
         bson_iter_t sub;
         bson_iter_recurse(&it, &sub);
         if (bson_iter_next(&sub)) {
            bson_append_iter(out, NULL, 0, &it);
         }
      } else if (strcmp(k, "tier") == 0) {
         if (!check_tier(&it, "options.tier", reply)) {
            return false;
         }
         bson_append_iter(out, NULL, 0, &it);
      } else if (strcmp(k, "virtualClock") == 0 ||
                 strcmp(k, "exactlyOnce") == 0) {
         /* aspen's own (README): virtualClock, windows on a clock driven
          * by the input; exactlyOnce, Kafka transactions for Kafka ->
          * $emit (checked against the pipeline by pipeline_options_ok). */
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                              "StreamProcessorInvalidOptions: options.%s must "
                              "be a boolean",
                              k);
            return false;
         }
         bson_append_iter(out, NULL, 0, &it);
      } else {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                           "StreamProcessorInvalidOptions: BSON field "
                           "'options.%s' is an unknown field.",
                           k);
         return false;
      }
   }
   return true;
}

/* Checks what depends on the parsed pipeline: the namespaces it reaches
 * through Atlas connections (their dbRoleToExecute), and exactlyOnce. */
static bool
pipeline_options_ok(void *arg, const aspen_pipeline_t *pl,
                    const bson_t *options, bool ephemeral, aspen_error_t *err)
{
   aspen_engine_t *eng = arg;
   bson_iter_t it;
   if (!aspen__pipeline_authorize(pl, options, &eng->conns, err)) {
      return false;
   }
   if (bson_iter_init_find(&it, options, "exactlyOnce") &&
       bson_iter_as_bool(&it)) {
      return aspen__kafka_txn_check(pl, &eng->conns, ephemeral, err);
   }
   return true;
}

static bool
get_array(const bson_t *cmd, const char *key, bson_t *out, bool required,
          const char *cmdname, bson_t *reply)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, cmd, key)) {
      if (required) {
         aspen_reply_error(reply, ASPEN_ERR_FailedToParse,
                           "BSON field '%s.%s' is missing but a required field",
                           cmdname, key);
      }
      return false;
   }
   if (!BSON_ITER_HOLDS_ARRAY(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s.%s' is the wrong type, expected type "
                        "'array'",
                        cmdname, key);
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_array(&it, &len, &data);
   return bson_init_static(out, data, len);
}

static bool
get_options_doc(const bson_t *cmd, const char *cmdname, bson_t *out,
                bool *present, bson_t *reply)
{
   bson_iter_t it;
   *present = false;
   if (!bson_iter_init_find(&it, cmd, "options") || BSON_ITER_HOLDS_NULL(&it)) {
      bson_init(out);
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s.options' is the wrong type, expected "
                        "type 'object'",
                        cmdname);
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(&it, &len, &data);
   *present = true;
   return bson_init_static(out, data, len);
}

/* ---- starts: launch, finish, abort ------------------------------------------ */

/* Hands a deferred reply to the caller's reply hook. Command thread. */
static void
deliver(aspen_engine_t *eng, void *ticket, const bson_t *reply)
{
   aspen_engine_hooks_t h = hooks_get(eng);
   if (h.reply) {
      h.reply(h.arg, ticket, reply);
   }
}

/* Finishes the start of `p` (PROVISIONING) once its thread has reported,
 * waiting for that if need be: sets the state (STARTED, or FAILED with the
 * reason), saves it, and fills `reply` as a start's reply. A failed
 * sp.process processor is unlinked and freed. */
static void
start_finish(aspen_engine_t *eng, aspen_proc_t *p, bson_t *reply)
{
   aspen_error_t err, perr;
   if (!aspen_proc_finish_start(p, &err)) {
      if (p->ephemeral) {
         unlink_proc(eng, p);
         proc_free(p);
      } else {
         aspen_proc_set_state(p, ASPEN_PROC_FAILED, err.message);
         (void) save_proc(eng, p, &perr); /* logged when it fails */
      }
      reply_err(reply, &err);
      return;
   }
   (void) save_proc(eng, p, &perr); /* logged when it fails */
   aspen_reply_ok(reply);
   if (p->ephemeral) {
      BSON_APPEND_UTF8(reply, "name", p->name);
      BSON_APPEND_INT64(reply, "cursorId", p->start_cursor_id);
   }
}

/* `p` was launched (aspen_proc_launch): PROVISIONING until its thread
 * reports. Without hooks, waits for that and fills `reply` (true). With
 * hooks, keeps `ticket` and returns false: aspen_engine_poll replies once
 * the thread has reported, and other commands run meanwhile. */
static bool
start_wait(aspen_engine_t *eng, aspen_proc_t *p, void *ticket, bson_t *reply)
{
   if (!hooks_get(eng).reply) {
      start_finish(eng, p, reply);
      return true;
   }
   p->start_pending = true;
   p->start_ticket = ticket;
   return false;
}

/* Ends `p`'s start if one is under way: stops and joins its thread (a
 * Kafka metadata wait notices within half a second) and answers the
 * pending start with error `code`, "stream processor '<name>' <why>".
 * Also just halts a running processor. The caller sets the state. */
static void
start_abort(aspen_engine_t *eng, aspen_proc_t *p, int32_t code,
            const char *why)
{
   aspen_proc_halt(p);
   if (!p->start_pending) {
      return;
   }
   void *ticket = p->start_ticket;
   p->start_pending = false;
   p->start_ticket = NULL;
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", p->name,
              "the pending start ends: the processor %s", why);
   bson_t r = BSON_INITIALIZER;
   aspen_reply_error(&r, code, "stream processor '%s' %s", p->name, why);
   deliver(eng, ticket, &r);
   bson_destroy(&r);
}

void
aspen_engine_poll(aspen_engine_t *eng)
{
   aspen_proc_t *p = eng->procs;
   while (p) {
      aspen_proc_t *next = p->next; /* start_finish may free p */
      if (p->start_pending && aspen_proc_start_reported(p)) {
         void *ticket = p->start_ticket;
         p->start_pending = false;
         p->start_ticket = NULL;
         bson_t r = BSON_INITIALIZER;
         start_finish(eng, p, &r);
         deliver(eng, ticket, &r);
         bson_destroy(&r);
      }
      p = next;
   }
}

void
aspen_engine_cancel_starts(aspen_engine_t *eng)
{
   aspen_engine_poll(eng); /* those that have finished reply as usual */
   for (aspen_proc_t *p = eng->procs; p; p = p->next) {
      /* The state file already says STARTED: such a processor starts
       * again with aspen, like a running one. */
      if (p->start_pending) {
         start_abort(eng, p, ASPEN_ERR_StreamProcessorWorkerShuttingDown,
                     "did not finish starting: aspen is shutting down");
      }
   }
}

/* ---- commands ----------------------------------------------------------- */

static void
cmd_create(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   static const char *const allowed[] = {"pipeline", "options", NULL};
   const char *name = cmd_name_arg(cmd, "createStreamProcessor", reply);
   bson_t pipeline, options, accepted = BSON_INITIALIZER;
   bool has_opts;
   if (!name || !check_fields(cmd, "createStreamProcessor", allowed, reply) ||
       !get_array(cmd, "pipeline", &pipeline, true, "createStreamProcessor",
                  reply) ||
       !get_options_doc(cmd, "createStreamProcessor", &options, &has_opts,
                        reply)) {
      bson_destroy(&accepted);
      return;
   }
   if (!check_new_name(name, "createStreamProcessor", reply)) {
      bson_destroy(&accepted);
      return;
   }
   if (find_proc(eng, name)) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorAlreadyExists,
                        "stream processor '%s' already exists", name);
      bson_destroy(&accepted);
      return;
   }
   if (!room_for_one(eng, reply) ||
       !check_options(eng, &options, &accepted, reply)) {
      bson_destroy(&accepted);
      return;
   }
   aspen_error_t err;
   aspen_pipeline_t *pl = aspen_pipeline_parse(
      &pipeline, &eng->conns, false, bson_has_field(&accepted, "dlq"), &err);
   bool ok = pl && pipeline_options_ok(eng, pl, &accepted, false, &err);
   aspen_pipeline_destroy(pl);
   if (!ok) {
      reply_err(reply, &err);
      bson_destroy(&accepted);
      return;
   }
   aspen_proc_t *p = proc_new(eng, name, &pipeline, &accepted);
   bson_destroy(&accepted);
   if (!save_proc(eng, p, &err)) {
      proc_free(p);
      reply_err(reply, &err);
      return;
   }
   link_proc(eng, p);
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", name, "stream processor created");
   aspen_reply_ok(reply);
}

static bool
cmd_start(aspen_engine_t *eng, const bson_t *cmd, void *ticket,
          bson_t *reply)
{
   static const char *const allowed[] = {
      "tier", "resumeFromCheckpoint", "startAfter", "startAtOperationTime",
      "workers", "options", NULL};
   const char *name = cmd_name_arg(cmd, "startStreamProcessor", reply);
   if (!name || !check_fields(cmd, "startStreamProcessor", allowed, reply)) {
      return true;
   }
   bson_iter_t it;
   char tier[8] = "";
   if (bson_iter_init_find(&it, cmd, "tier")) {
      if (!check_tier(&it, "startStreamProcessor.tier", reply)) {
         return true;
      }
      snprintf(tier, sizeof tier, "%s", bson_iter_utf8(&it, NULL));
   }
   if (bson_iter_init_find(&it, cmd, "resumeFromCheckpoint") &&
       !BSON_ITER_HOLDS_BOOL(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field "
                        "'startStreamProcessor.resumeFromCheckpoint' is the "
                        "wrong type, expected type 'bool'");
      return true;
   }
   bool resume = !bson_iter_init_find(&it, cmd, "resumeFromCheckpoint") ||
                 bson_iter_bool(&it);
   aspen_proc_t *p = find_or_error(eng, name, reply);
   if (!p) {
      return true;
   }
   reap_failed(p);
   if (p->state == ASPEN_PROC_STARTED) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is already started", name);
      return true;
   }
   if (p->state == ASPEN_PROC_PROVISIONING) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is already started (it is still "
                        "starting: state PROVISIONING)",
                        name);
      return true;
   }
   aspen_error_t err, perr;
   /* Saved as STARTED before it launches: a start that cannot be saved
    * does not happen (and after a crash a saved one starts again). */
   if (!save_proc_as(eng, p, ASPEN_PROC_STARTED, &err)) {
      reply_err(reply, &err);
      return true;
   }
   if (!resume) {
      /* Start fresh: the checkpoint (positions, open windows) goes. */
      drop_checkpoints(eng, p);
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", name,
                 "starting without resuming: checkpoint removed");
   }
   if (!aspen_proc_launch(p, &eng->env, tier, &err)) {
      aspen_proc_set_state(p, ASPEN_PROC_FAILED, err.message);
      (void) save_proc(eng, p, &perr); /* logged when it fails */
      reply_err(reply, &err);
      return true;
   }
   return start_wait(eng, p, ticket, reply);
}

static void
cmd_stop(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   static const char *const allowed[] = {"force", "options", NULL};
   aspen_proc_t *p = proc_arg(eng, cmd, "stopStreamProcessor", allowed, reply);
   if (!p) {
      return;
   }
   const char *name = p->name;
   reap_failed(p);
   if (!is_running(p)) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is not running (state %s)", name,
                        aspen_proc_state_name(p->state));
      return;
   }
   /* Saved first: a stop that cannot be saved is refused, the processor
    * left running (it would start again with aspen otherwise). */
   aspen_error_t err;
   if (!save_proc_as(eng, p, ASPEN_PROC_STOPPED, &err)) {
      reply_err(reply, &err);
      return;
   }
   /* Still starting (PROVISIONING): the start ends with an error. */
   start_abort(eng, p, ASPEN_ERR_Interrupted,
               "was stopped before it finished starting");
   aspen_proc_set_state(p, ASPEN_PROC_STOPPED, NULL);
   aspen_reply_ok(reply);
}

static void
cmd_drop(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   static const char *const allowed[] = {"force", "ttl", "options", NULL};
   aspen_proc_t *p = proc_arg(eng, cmd, "dropStreamProcessor", allowed, reply);
   if (!p) {
      return;
   }
   const char *name = p->name;
   /* Its file goes first: a drop that cannot be saved is refused. */
   aspen_error_t err;
   if (!unsave_proc(eng, p, &err)) {
      reply_err(reply, &err);
      return;
   }
   /* A running processor is stopped first, as ASP does; one still
    * starting ends its start with an error. */
   start_abort(eng, p, ASPEN_ERR_Interrupted,
               "was dropped before it finished starting");
   unlink_proc(eng, p);
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", name, "stream processor dropped");
   if (!p->ephemeral) {
      drop_checkpoints(eng, p);
   }
   proc_free(p);
   aspen_reply_ok(reply);
}

/* ---- modify and checkpoints ------------------------------------------------ */

/* Finds the window stage of pipeline `pl`: its name ("$tumblingWindow")
 * and a view of its argument. NULL when there is none. */
static const char *
window_of(const bson_t *pl, bson_t *spec)
{
   bson_iter_t it, st;
   bson_iter_init(&it, pl);
   while (bson_iter_next(&it)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &st) ||
          !bson_iter_next(&st)) {
         continue;
      }
      const char *k = bson_iter_key(&st);
      if ((strcmp(k, "$tumblingWindow") == 0 ||
           strcmp(k, "$hoppingWindow") == 0 ||
           strcmp(k, "$sessionWindow") == 0) &&
          BSON_ITER_HOLDS_DOCUMENT(&st)) {
         uint32_t len;
         const uint8_t *data;
         bson_iter_document(&st, &len, &data);
         if (bson_init_static(spec, data, len)) {
            return k;
         }
      }
   }
   return NULL;
}

/* True when field `key` has the same value (or is missing) in both. */
static bool
same_field(const bson_t *a, const bson_t *b, const char *key)
{
   bson_iter_t ia, ib;
   bool ha = bson_iter_init_find(&ia, a, key);
   bool hb = bson_iter_init_find(&ib, b, key);
   if (!ha || !hb) {
      return ha == hb;
   }
   const bson_value_t *va = bson_iter_value(&ia);
   const bson_value_t *vb = bson_iter_value(&ib);
   bson_t da = BSON_INITIALIZER, db = BSON_INITIALIZER;
   bson_append_value(&da, "", 0, va);
   bson_append_value(&db, "", 0, vb);
   bool same = bson_equal(&da, &db);
   bson_destroy(&da);
   bson_destroy(&db);
   return same;
}

/* True when a window's inner pipeline has a $group or a $sort. */
static bool
has_blocking_stage(const bson_t *spec)
{
   bson_iter_t it, arr, st;
   if (!bson_iter_init_find(&it, spec, "pipeline") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &arr)) {
      return false;
   }
   while (bson_iter_next(&arr)) {
      if (BSON_ITER_HOLDS_DOCUMENT(&arr) && bson_iter_recurse(&arr, &st) &&
          bson_iter_next(&st) &&
          (strcmp(bson_iter_key(&st), "$group") == 0 ||
           strcmp(bson_iter_key(&st), "$sort") == 0)) {
         return true;
      }
   }
   return false;
}

/* ASP's rules for modifying a processor's pipeline while keeping its
 * checkpoint (../shared/spec/asp-semantics.md §8.1): the new pipeline must
 * replay the old one's source positions into the same kind of windows.
 * Returns the reason (the tail of ASP's message) when `new_pl` needs
 * resumeFromCheckpoint: false, NULL when it does not. */
static const char *
modify_needs_fresh_start(const bson_t *old_pl, const bson_t *new_pl)
{
   if (bson_equal(old_pl, new_pl)) {
      return NULL;
   }
   bson_iter_t oi, ni;
   if (!bson_iter_init_find(&oi, old_pl, "0") ||
       !bson_iter_init_find(&ni, new_pl, "0") || !same_field(old_pl, new_pl, "0")) {
      return "modify a stream processor's $source stage";
   }
   bson_t ow, nw;
   const char *okind = window_of(old_pl, &ow);
   const char *nkind = window_of(new_pl, &nw);
   if (!okind) {
      return NULL;
   }
   if (!nkind) {
      return "remove a window from a stream processor";
   }
   if (strcmp(okind, nkind) != 0) {
      return "change a stream processor's window type";
   }
   if (strcmp(okind, "$sessionWindow") == 0) {
      return "modify a processor with a window that is not a tumbling or "
             "hopping window";
   }
   if (!same_field(&ow, &nw, "interval")) {
      return "change a window stage's interval";
   }
   if (!same_field(&ow, &nw, "allowedLateness")) {
      return "change a window stage's allowedLateness";
   }
   if (!same_field(&ow, &nw, "hopSize")) {
      return "change a window stage's hopSize";
   }
   if (!has_blocking_stage(&ow) || !has_blocking_stage(&nw)) {
      return "modify a processor that has a window without a blocking stage";
   }
   return NULL;
}

static void
cmd_modify(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   /* mongosh spreads modify's options into the command, so the options
    * (ASP's dlq and tier, aspen's virtualClock and exactlyOnce) come at
    * the top level as well as under `options`. */
   static const char *const allowed[] = {
      "pipeline", "resumeFromCheckpoint", "dlq", "name", "tier",
      "virtualClock", "exactlyOnce", "options", NULL};
   aspen_proc_t *p = proc_arg(eng, cmd, "modifyStreamProcessor", allowed, reply);
   if (!p) {
      return;
   }
   const char *name = p->name;
   reap_failed(p);
   if (is_running(p)) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' must be stopped before it is "
                        "modified",
                        name);
      return;
   }
   bson_iter_t it;
   bson_t pipeline;
   bool new_pipeline = false;
   if (bson_iter_init_find(&it, cmd, "pipeline")) {
      if (!get_array(cmd, "pipeline", &pipeline, true, "modifyStreamProcessor",
                     reply)) {
         return;
      }
      new_pipeline = true;
   }
   if (bson_iter_init_find(&it, cmd, "resumeFromCheckpoint") &&
       !BSON_ITER_HOLDS_BOOL(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field "
                        "'modifyStreamProcessor.resumeFromCheckpoint' is the "
                        "wrong type, expected type 'bool'");
      return;
   }
   bool resume = !bson_iter_init_find(&it, cmd, "resumeFromCheckpoint") ||
                 bson_iter_bool(&it);
   const char *why = new_pipeline && resume
                        ? modify_needs_fresh_start(&p->pipeline, &pipeline)
                        : NULL;
   if (why) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "resumeFromCheckpoint must be false to %s", why);
      return;
   }
   /* New options: the old ones, with dlq/tier replaced when given. */
   bson_t opts = BSON_INITIALIZER;
   bson_copy_to_excluding_noinit(&p->options, &opts, "dlq", "tier", NULL);
   bson_t given = BSON_INITIALIZER;
   bool has_opts_doc;
   bson_t options_doc;
   if (!get_options_doc(cmd, "modifyStreamProcessor", &options_doc,
                        &has_opts_doc, reply)) {
      bson_destroy(&opts);
      bson_destroy(&given);
      return;
   }
   bson_concat(&given, &options_doc);
   if (bson_iter_init_find(&it, cmd, "dlq")) {
      bson_append_iter(&given, NULL, 0, &it);
   }
   static const char *const top_level[] = {"tier", "virtualClock",
                                           "exactlyOnce"};
   for (size_t i = 0; i < sizeof top_level / sizeof *top_level; i++) {
      if (bson_iter_init_find(&it, cmd, top_level[i])) {
         bson_append_iter(&given, NULL, 0, &it);
      }
   }
   bson_t accepted = BSON_INITIALIZER;
   if (!check_options(eng, &given, &accepted, reply)) {
      bson_destroy(&opts);
      bson_destroy(&given);
      bson_destroy(&accepted);
      return;
   }
   /* dlq given but empty ({}) removes it; not given keeps the old one. */
   bson_iter_t oi;
   if (!bson_has_field(&given, "dlq") &&
       bson_iter_init_find(&oi, &p->options, "dlq")) {
      bson_append_iter(&opts, NULL, 0, &oi);
   }
   if (!bson_has_field(&given, "tier") &&
       bson_iter_init_find(&oi, &p->options, "tier")) {
      bson_append_iter(&opts, NULL, 0, &oi);
   }
   /* Given aspen options (virtualClock, exactlyOnce) replace the old. */
   bson_t kept = BSON_INITIALIZER;
   bson_iter_init(&oi, &opts);
   while (bson_iter_next(&oi)) {
      if (!bson_has_field(&accepted, bson_iter_key(&oi))) {
         bson_append_iter(&kept, NULL, 0, &oi);
      }
   }
   bson_concat(&kept, &accepted);
   bson_destroy(&opts);
   bson_steal(&opts, &kept);
   bson_destroy(&given);
   bson_destroy(&accepted);

   const char *new_name = NULL;
   if (bson_iter_init_find(&it, cmd, "name")) {
      if (!BSON_ITER_HOLDS_UTF8(&it) || !*bson_iter_utf8(&it, NULL)) {
         aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                           "BSON field 'modifyStreamProcessor.name' must be a "
                           "non-empty string");
         bson_destroy(&opts);
         return;
      }
      uint32_t nlen;
      new_name = bson_iter_utf8(&it, &nlen);
      if (strlen(new_name) != nlen) {
         aspen_reply_error(reply, ASPEN_ERR_BadValue,
                           "stream processor name must not contain a NUL "
                           "character");
         bson_destroy(&opts);
         return;
      }
      if (strcmp(new_name, name) != 0 &&
          !check_new_name(new_name, "modifyStreamProcessor.name", reply)) {
         bson_destroy(&opts);
         return;
      }
      if (strcmp(new_name, name) != 0 && find_proc(eng, new_name)) {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorAlreadyExists,
                           "stream processor '%s' already exists", new_name);
         bson_destroy(&opts);
         return;
      }
   }
   aspen_error_t err;
   const bson_t *pl_def = new_pipeline ? &pipeline : &p->pipeline;
   aspen_pipeline_t *pl = aspen_pipeline_parse(
      pl_def, &eng->conns, false, bson_has_field(&opts, "dlq"), &err);
   bool ok = pl && pipeline_options_ok(eng, pl, &opts, false, &err);
   aspen_pipeline_destroy(pl);
   if (!ok) {
      reply_err(reply, &err);
      bson_destroy(&opts);
      return;
   }
   /* The new definition replaces the old one only once it is saved. */
   bson_t old_pipeline, old_options;
   char *old_name = p->name;
   int64_t old_modified = p->modified_ms;
   bson_steal(&old_pipeline, &p->pipeline);
   bson_steal(&old_options, &p->options);
   bson_copy_to(new_pipeline ? &pipeline : &old_pipeline, &p->pipeline);
   bson_steal(&p->options, &opts);
   if (new_name) {
      p->name = aspen_xstrdup(new_name);
   }
   p->modified_ms = aspen_clock_now_ms();
   if (!save_proc(eng, p, &err)) {
      bson_destroy(&p->pipeline);
      bson_destroy(&p->options);
      bson_steal(&p->pipeline, &old_pipeline);
      bson_steal(&p->options, &old_options);
      if (p->name != old_name) {
         free(p->name);
         p->name = old_name;
      }
      p->modified_ms = old_modified;
      reply_err(reply, &err);
      return;
   }
   bson_destroy(&old_pipeline);
   bson_destroy(&old_options);
   if (p->name != old_name) {
      free(old_name);
   }
   if (!resume) {
      /* Only the summary stats survive; the next start reads afresh. */
      drop_checkpoints(eng, p);
   }
   aspen_reply_ok(reply);
}

static const char *
status_name(const aspen_proc_t *p)
{
   switch (p->state) {
   case ASPEN_PROC_STARTED:
      return "running";
   case ASPEN_PROC_FAILED:
      return "error";
   case ASPEN_PROC_STOPPED:
      return "stopped";
   case ASPEN_PROC_PROVISIONING:
      return "provisioning";
   case ASPEN_PROC_CREATED:
   default:
      return "created";
   }
}

static void
cmd_stats(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   static const char *const allowed[] = {"scale", "verbose", "options", NULL};
   aspen_proc_t *p = proc_arg(eng, cmd, "getStreamProcessorStats", allowed, reply);
   if (!p) {
      return;
   }
   reap_failed(p);
   int64_t scale = 1;
   bool verbose = false;
   /* Both {scale, verbose} and {options: {scale, verbose}} arrive. */
   bson_iter_t it;
   bson_t nested;
   bool has_nested = false;
   if (!get_options_doc(cmd, "getStreamProcessorStats", &nested, &has_nested,
                        reply)) {
      return;
   }
   const bson_t *srcs[2] = {cmd, has_nested ? &nested : NULL};
   for (int i = 0; i < 2; i++) {
      if (!srcs[i]) {
         continue;
      }
      if (bson_iter_init_find(&it, srcs[i], "scale")) {
         if (!BSON_ITER_HOLDS_NUMBER(&it) || bson_iter_as_int64(&it) < 1) {
            aspen_reply_error(reply, ASPEN_ERR_BadValue,
                              "scale must be a positive number");
            return;
         }
         scale = bson_iter_as_int64(&it);
      }
      if (bson_iter_init_find(&it, srcs[i], "verbose")) {
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                              "verbose must be a boolean");
            return;
         }
         verbose = bson_iter_bool(&it);
      }
   }
   char ns[512];
   snprintf(ns, sizeof ns, "aspen.local.%s", p->name);
   BSON_APPEND_DOUBLE(reply, "ok", 1.0);
   BSON_APPEND_UTF8(reply, "ns", ns);
   BSON_APPEND_UTF8(reply, "name", p->name);
   BSON_APPEND_UTF8(reply, "state", aspen_proc_state_name(p->state));
   bson_t st;
   BSON_APPEND_DOCUMENT_BEGIN(reply, "stats", &st);
   BSON_APPEND_UTF8(&st, "name", p->name);
   BSON_APPEND_UTF8(&st, "processorId", p->id);
   BSON_APPEND_UTF8(&st, "status", status_name(p));
   BSON_APPEND_INT64(&st, "scaleFactor", scale);
   aspen_proc_stats_t ps;
   aspen_proc_stats(p, &ps);
   BSON_APPEND_INT64(&st, "inputMessageCount", (int64_t) ps.input_count);
   BSON_APPEND_DOUBLE(&st, "inputMessageSize",
                      (double) ps.input_size / (double) scale);
   BSON_APPEND_INT64(&st, "outputMessageCount", (int64_t) ps.output_count);
   BSON_APPEND_DOUBLE(&st, "outputMessageSize",
                      (double) ps.output_size / (double) scale);
   BSON_APPEND_INT64(&st, "dlqMessageCount", (int64_t) ps.dlq_count);
   BSON_APPEND_INT64(&st, "dlqMessageSize", (int64_t) ps.dlq_size / scale);
   BSON_APPEND_INT64(&st, "stateSize", (int64_t) ps.state_size / scale);
   if (ps.watermark_ms != INT64_MIN) {
      BSON_APPEND_DATE_TIME(&st, "watermark", ps.watermark_ms);
   }
   if (p->error_msg[0]) {
      BSON_APPEND_UTF8(&st, "error", p->error_msg);
   }
   if (ps.last_checkpoint_ms > 0) {
      BSON_APPEND_DATE_TIME(&st, "lastCheckpointTime", ps.last_checkpoint_ms);
   }
   /* A running Kafka $source: partitions, offsets, lag, group (kafka.c). */
   aspen__kafka_stats_append(p->id, &st);
   if (verbose) {
      BSON_APPEND_DATE_TIME(&st, "lastStateChange", p->state_changed_ms);
      BSON_APPEND_BOOL(&st, "ephemeral", p->ephemeral);
   }
   BSON_APPEND_DOUBLE(&st, "ok", 1.0);
   bson_append_document_end(reply, &st);
   BSON_APPEND_ARRAY(reply, "pipeline", &p->pipeline);
}

static int64_t
cursor_id_arg(const bson_t *cmd, bool *ok)
{
   bson_iter_t it;
   *ok = false;
   if ((bson_iter_init_find(&it, cmd, "cursorId") ||
        bson_iter_init_find(&it, cmd, "cursorID")) &&
       BSON_ITER_HOLDS_NUMBER(&it)) {
      *ok = true;
      return bson_iter_as_int64(&it);
   }
   return 0;
}

static void
start_cursor(aspen_engine_t *eng, aspen_proc_t *p, uint64_t conn_id,
             bool is_shell, int64_t limit, bson_t *reply)
{
   int64_t id = ++eng->next_cursor_id;
   aspen_cursor_open(p, id, conn_id, is_shell, limit);
   aspen_reply_ok(reply);
   BSON_APPEND_INT64(reply, "cursorId", id);
}

static bool
cmd_process(aspen_engine_t *eng, const bson_t *cmd, uint64_t conn_id,
            void *ticket, bson_t *reply)
{
   static const char *const allowed[] = {"options", NULL};
   bson_t pipeline, options, accepted = BSON_INITIALIZER;
   bool has_opts;
   bson_iter_t it;
   bson_iter_init(&it, cmd);
   bson_iter_next(&it);
   if (!BSON_ITER_HOLDS_ARRAY(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field 'processStreamProcessor' is the wrong "
                        "type, expected type 'array'");
      bson_destroy(&accepted);
      return true;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_array(&it, &len, &data);
   (void) bson_init_static(&pipeline, data, len);
   if (!check_fields(cmd, "processStreamProcessor", allowed, reply) ||
       !get_options_doc(cmd, "processStreamProcessor", &options, &has_opts,
                        reply) ||
       !check_options(eng, &options, &accepted, reply)) {
      bson_destroy(&accepted);
      return true;
   }
   if (!room_for_one(eng, reply)) {
      bson_destroy(&accepted);
      return true;
   }
   char name[64];
   bson_oid_t oid;
   char hex[25];
   bson_oid_init(&oid, NULL);
   bson_oid_to_string(&oid, hex);
   snprintf(name, sizeof name, "__process_%s", hex);
   aspen_proc_t *p = proc_new(eng, name, &pipeline, &accepted);
   bson_destroy(&accepted);
   p->ephemeral = true;
   p->owner_conn = conn_id;
   aspen_error_t err;
   /* The shell cursor exists before the first document can be produced. */
   int64_t id = ++eng->next_cursor_id;
   aspen_cursor_open(p, id, conn_id, true, 0);
   p->start_cursor_id = id;
   if (!aspen_proc_launch(p, &eng->env, "", &err)) {
      proc_free(p);
      reply_err(reply, &err);
      return true;
   }
   /* Linked while it starts: its connection may close meanwhile, and
    * shutdown must find it. Never listed nor saved (ephemeral). */
   link_proc(eng, p);
   return start_wait(eng, p, ticket, reply);
}

static void
cmd_start_sample(aspen_engine_t *eng, const bson_t *cmd, uint64_t conn_id,
                 bson_t *reply)
{
   static const char *const allowed[] = {"limit", "options", NULL};
   const char *name = cmd_name_arg(cmd, "startSampleStreamProcessor", reply);
   if (!name ||
       !check_fields(cmd, "startSampleStreamProcessor", allowed, reply)) {
      return;
   }
   int64_t limit = 0;
   bson_iter_t it;
   if (bson_iter_init_find(&it, cmd, "limit")) {
      if (!BSON_ITER_HOLDS_NUMBER(&it) || bson_iter_as_int64(&it) < 1) {
         aspen_reply_error(reply, ASPEN_ERR_BadValue,
                           "limit must be a positive integer");
         return;
      }
      limit = bson_iter_as_int64(&it);
   }
   aspen_proc_t *p = find_or_error(eng, name, reply);
   if (!p) {
      return;
   }
   reap_failed(p);
   if (p->state != ASPEN_PROC_STARTED) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is not running (state %s): "
                        "only a running processor can be sampled",
                        name, aspen_proc_state_name(p->state));
      return;
   }
   start_cursor(eng, p, conn_id, false, limit, reply);
}

static void
cmd_get_more(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   static const char *const allowed[] = {"cursorId", "cursorID", "batchSize",
                                         NULL};
   const char *name = cmd_name_arg(cmd, "getMoreSampleStreamProcessor", reply);
   if (!name ||
       !check_fields(cmd, "getMoreSampleStreamProcessor", allowed, reply)) {
      return;
   }
   bool ok;
   int64_t id = cursor_id_arg(cmd, &ok);
   if (!ok) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "getMoreSampleStreamProcessor needs a numeric "
                        "cursorId");
      return;
   }
   aspen_proc_t *p = find_or_error(eng, name, reply);
   if (!p) {
      return;
   }
   int64_t batch = 0;
   bson_iter_t it;
   if (bson_iter_init_find(&it, cmd, "batchSize") &&
       BSON_ITER_HOLDS_NUMBER(&it) && bson_iter_as_int64(&it) > 0) {
      batch = bson_iter_as_int64(&it);
   }
   /* cursorId comes before messages in the reply, and whether the
    * cursor is done is known once they are taken. */
   bson_t arr = BSON_INITIALIZER, msgs;
   bool done;
   if (!aspen_cursor_fetch(p, id, batch, &arr, &done)) {
      bson_destroy(&arr);
      aspen_reply_error(reply, ASPEN_ERR_CursorNotFound,
                        "cursor id %lld not found for stream processor '%s'",
                        (long long) id, name);
      return;
   }
   aspen_reply_ok(reply);
   BSON_APPEND_INT64(reply, "cursorId", done ? 0 : id);
   BSON_APPEND_ARRAY_BEGIN(reply, "messages", &msgs);
   bson_concat(&msgs, &arr);
   bson_append_array_end(reply, &msgs);
   bson_destroy(&arr);
}

static void
proc_entry(const aspen_proc_t *p, bson_t *out)
{
   BSON_APPEND_UTF8(out, "id", p->id);
   BSON_APPEND_UTF8(out, "name", p->name);
   BSON_APPEND_UTF8(out, "state", aspen_proc_state_name(p->state));
   BSON_APPEND_ARRAY(out, "pipeline", &p->pipeline);
   bson_iter_t it;
   if (bson_iter_init_find(&it, &p->options, "tier") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      BSON_APPEND_UTF8(out, "tier", bson_iter_utf8(&it, NULL));
   } else {
      BSON_APPEND_UTF8(out, "tier", "SP10");
   }
   if (!bson_empty(&p->options)) {
      BSON_APPEND_DOCUMENT(out, "options", &p->options);
   }
   BSON_APPEND_UTF8(out, "errorMsg", p->error_msg);
   BSON_APPEND_DATE_TIME(out, "lastModified", p->modified_ms);
   BSON_APPEND_DATE_TIME(out, "lastStateChange", p->state_changed_ms);
}

/* Parses the optional filter; NULL means "everything". */
static bool
filter_arg(const bson_t *cmd, const char *cmdname, bson_t *filter,
           aspen_matcher_t **m, bson_t *reply)
{
   bson_iter_t it;
   *m = NULL;
   bson_init(filter);
   if (!bson_iter_init_find(&it, cmd, "filter") || BSON_ITER_HOLDS_NULL(&it)) {
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s.filter' is the wrong type, expected "
                        "type 'object'",
                        cmdname);
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t f;
   bson_iter_document(&it, &len, &data);
   (void) bson_init_static(&f, data, len);
   bson_destroy(filter);
   bson_copy_to(&f, filter);
   aspen_error_t err;
   if (!aspen_matcher_new(filter, m, &err)) {
      aspen_reply_error(reply, err.code ? err.code : ASPEN_ERR_BadValue, "%s",
                        err.message);
      return false;
   }
   return true;
}

static bool
passes(aspen_matcher_t *m, const bson_t *doc)
{
   if (!m) {
      return true;
   }
   bool matched = false;
   aspen_error_t err;
   aspen_expr_ctx_t ctx = {.root = doc, .meta = NULL,
                           .now_ms = aspen_clock_now_ms()};
   return aspen_matcher_match(m, doc, &ctx, &matched, &err) && matched;
}

static void
cmd_list(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   static const char *const allowed[] = {"filter", "verbose", NULL};
   if (!check_fields(cmd, "listStreamProcessors", allowed, reply)) {
      return;
   }
   bson_t filter;
   aspen_matcher_t *m;
   if (!filter_arg(cmd, "listStreamProcessors", &filter, &m, reply)) {
      bson_destroy(&filter);
      return;
   }
   aspen_reply_ok(reply);
   bson_t arr;
   uint32_t i = 0;
   BSON_APPEND_ARRAY_BEGIN(reply, "streamProcessors", &arr);
   for (aspen_proc_t *p = eng->procs; p; p = p->next) {
      if (p->ephemeral) {
         continue;
      }
      reap_failed(p);
      bson_t entry = BSON_INITIALIZER;
      proc_entry(p, &entry);
      if (passes(m, &entry)) {
         char buf[16];
         const char *key;
         bson_uint32_to_string(i++, &key, buf, sizeof buf);
         BSON_APPEND_DOCUMENT(&arr, key, &entry);
      }
      bson_destroy(&entry);
   }
   bson_append_array_end(reply, &arr);
   aspen_matcher_destroy(m);
   bson_destroy(&filter);
}

static void
cmd_list_connections(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   static const char *const allowed[] = {"filter", NULL};
   if (!check_fields(cmd, "listStreamConnections", allowed, reply)) {
      return;
   }
   bson_t filter;
   aspen_matcher_t *m;
   if (!filter_arg(cmd, "listStreamConnections", &filter, &m, reply)) {
      bson_destroy(&filter);
      return;
   }
   aspen_reply_ok(reply);
   bson_t arr;
   uint32_t i = 0;
   BSON_APPEND_ARRAY_BEGIN(reply, "connections", &arr);
   for (size_t j = 0; j < eng->conns.n; j++) {
      const bson_t *doc = &eng->conns.items[j].doc;
      if (passes(m, doc)) {
         char buf[16];
         const char *key;
         bson_uint32_to_string(i++, &key, buf, sizeof buf);
         BSON_APPEND_DOCUMENT(&arr, key, doc);
      }
   }
   bson_append_array_end(reply, &arr);
   aspen_matcher_destroy(m);
   bson_destroy(&filter);
}

static void
cmd_get(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   aspen_proc_t *p = proc_arg(eng, cmd, "getStreamProcessor", NULL, reply);
   if (!p) {
      return;
   }
   reap_failed(p);
   aspen_reply_ok(reply);
   proc_entry(p, reply);
}

/* Appends ".<key>" (or the key alone at the top) to the dotted `path`,
 * cut to its buffer on a character boundary (the key is valid UTF-8). */
static void
path_push(char *path, size_t cap, const char *key)
{
   size_t used = strlen(path);
   snprintf(path + used, cap - used, "%s%s", used ? "." : "", key);
   aspen_utf8_scrub(path);
}

static bool
utf8_ok(const char *s, size_t len, bool allow_nul)
{
   return bson_utf8_validate(s, len, allow_nul);
}

typedef enum { BAD_STRING, BAD_KEY, BAD_DEPTH } bad_utf8_t;

/* Walks `doc` for a field name or string (string values, symbols, code,
 * regular expressions, DBPointer namespaces) that is not valid UTF-8.
 * False with `path` naming where and *why what when one is found, or when
 * the nesting passes MAX_CMD_DEPTH. */
static bool
find_bad_utf8(const bson_t *doc, int depth, char *path, size_t cap,
              bad_utf8_t *why)
{
   bson_iter_t it;
   *why = BAD_DEPTH;
   if (depth > MAX_CMD_DEPTH || !bson_iter_init(&it, doc)) {
      return false;
   }
   size_t mark = strlen(path);
   while (bson_iter_next(&it)) {
      const char *key = bson_iter_key(&it);
      path[mark] = '\0';
      if (!utf8_ok(key, strlen(key), false)) {
         *why = BAD_KEY;
         return false;
      }
      path_push(path, cap, key);
      uint32_t len = 0;
      bool ok = true;
      switch (bson_iter_type(&it)) {
      case BSON_TYPE_UTF8: {
         const char *v = bson_iter_utf8(&it, &len);
         ok = utf8_ok(v, len, true);
         break;
      }
      case BSON_TYPE_SYMBOL: {
         const char *v = bson_iter_symbol(&it, &len);
         ok = utf8_ok(v, len, true);
         break;
      }
      case BSON_TYPE_CODE: {
         const char *v = bson_iter_code(&it, &len);
         ok = utf8_ok(v, len, true);
         break;
      }
      case BSON_TYPE_CODEWSCOPE: {
         uint32_t slen;
         const uint8_t *sdata;
         const char *v = bson_iter_codewscope(&it, &len, &slen, &sdata);
         bson_t scope;
         ok = utf8_ok(v, len, true);
         if (ok && bson_init_static(&scope, sdata, slen)) {
            if (!find_bad_utf8(&scope, depth + 1, path, cap, why)) {
               return false;
            }
         }
         break;
      }
      case BSON_TYPE_REGEX: {
         const char *opts;
         const char *v = bson_iter_regex(&it, &opts);
         ok = utf8_ok(v, strlen(v), false) && utf8_ok(opts, strlen(opts), false);
         break;
      }
      case BSON_TYPE_DBPOINTER: {
         const char *coll;
         const bson_oid_t *oid;
         bson_iter_dbpointer(&it, &len, &coll, &oid);
         ok = utf8_ok(coll, len, false);
         break;
      }
      case BSON_TYPE_DOCUMENT:
      case BSON_TYPE_ARRAY: {
         const uint8_t *data;
         bson_t sub;
         if (bson_iter_type(&it) == BSON_TYPE_DOCUMENT) {
            bson_iter_document(&it, &len, &data);
         } else {
            bson_iter_array(&it, &len, &data);
         }
         if (bson_init_static(&sub, data, len) &&
             !find_bad_utf8(&sub, depth + 1, path, cap, why)) {
            return false;
         }
         break;
      }
      default:
         break;
      }
      if (!ok) {
         *why = BAD_STRING;
         return false;
      }
   }
   path[mark] = '\0';
   return true;
}

bool
aspen_engine_command(aspen_engine_t *eng, const char *name, const bson_t *cmd,
                     uint64_t conn_id, void *ticket, bson_t *reply)
{
   /* Names, pipelines and options are saved and sent back in replies:
    * text that is not UTF-8 is refused here, before anything keeps it. */
   char path[256] = "";
   bad_utf8_t why;
   if (!find_bad_utf8(cmd, 0, path, sizeof path, &why)) {
      if (why == BAD_KEY) {
         aspen_reply_error(reply, ASPEN_ERR_InvalidBSON,
                           "%s: a field name%s%s is not valid UTF-8", name,
                           *path ? " under " : "", path);
      } else if (why == BAD_STRING) {
         aspen_reply_error(reply, ASPEN_ERR_InvalidBSON,
                           "%s: BSON field '%s' holds a string that is not "
                           "valid UTF-8",
                           name, path);
      } else {
         aspen_reply_error(reply, ASPEN_ERR_InvalidBSON,
                           "%s: the command is nested more than %d levels deep",
                           name, MAX_CMD_DEPTH);
      }
      return true;
   }
   if (strcmp(name, "processStreamProcessor") == 0) {
      return cmd_process(eng, cmd, conn_id, ticket, reply);
   }
   if (strcmp(name, "startStreamProcessor") == 0) {
      return cmd_start(eng, cmd, ticket, reply);
   }
   if (strcmp(name, "createStreamProcessor") == 0) {
      cmd_create(eng, cmd, reply);
   } else if (strcmp(name, "stopStreamProcessor") == 0) {
      cmd_stop(eng, cmd, reply);
   } else if (strcmp(name, "dropStreamProcessor") == 0) {
      cmd_drop(eng, cmd, reply);
   } else if (strcmp(name, "modifyStreamProcessor") == 0) {
      cmd_modify(eng, cmd, reply);
   } else if (strcmp(name, "getStreamProcessorStats") == 0) {
      cmd_stats(eng, cmd, reply);
   } else if (strcmp(name, "startSampleStreamProcessor") == 0) {
      cmd_start_sample(eng, cmd, conn_id, reply);
   } else if (strcmp(name, "getMoreSampleStreamProcessor") == 0) {
      cmd_get_more(eng, cmd, reply);
   } else if (strcmp(name, "listStreamProcessors") == 0) {
      cmd_list(eng, cmd, reply);
   } else if (strcmp(name, "listStreamConnections") == 0) {
      cmd_list_connections(eng, cmd, reply);
   } else if (strcmp(name, "getStreamProcessor") == 0) {
      cmd_get(eng, cmd, reply);
   } else {
      aspen_reply_error(reply, ASPEN_ERR_CommandNotFound,
                        "no such command: '%s'",
                        name);
   }
   return true;
}

void
aspen_engine_connection_closed(aspen_engine_t *eng, uint64_t conn_id)
{
   aspen_proc_t *p = eng->procs;
   while (p) {
      aspen_proc_t *next = p->next;
      if (p->ephemeral && p->owner_conn == conn_id) {
         aspen_logf(ASPEN_LOG_INFO, "STREAMS", p->name,
                    "the shell reading this ephemeral processor went away; "
                    "dropping it");
         start_abort(eng, p, ASPEN_ERR_Interrupted,
                     "was dropped before it finished starting: the "
                     "connection that started it closed");
         unlink_proc(eng, p);
         proc_free(p);
         p = next;
         continue;
      }
      aspen_cursor_close_conn(p, conn_id);
      p = next;
   }
}

static bool
mkdir_p(const char *dir, aspen_error_t *err)
{
   if (!aspen__mkdirs(dir)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot create state directory %s: %s", dir,
                      strerror(errno));
      return false;
   }
   return true;
}

aspen_engine_t *
aspen_engine_new(const aspen_engine_opts_t *opts, aspen_error_t *err)
{
   if (!mkdir_p(opts->state_dir, err)) {
      return NULL;
   }
   aspen_engine_t *eng = aspen_xcalloc(1, sizeof *eng);
   pthread_mutex_init(&eng->hooks_mu, NULL);
   eng->state_dir = aspen_xstrdup(opts->state_dir);
   size_t dlen = strlen(opts->state_dir) + sizeof "/" PROCS_DIR;
   eng->procs_dir = aspen_xmalloc(dlen);
   snprintf(eng->procs_dir, dlen, "%s/%s", opts->state_dir, PROCS_DIR);
   eng->max_processors = opts->max_processors > 0 ? opts->max_processors
                                                  : DEFAULT_MAX_PROCESSORS;
   eng->checkpoint_interval_ms = opts->checkpoint_interval_ms > 0
                                    ? opts->checkpoint_interval_ms
                                    : DEFAULT_CHECKPOINT_INTERVAL_MS;
   eng->memory_limit_bytes = opts->memory_limit_bytes;
   eng->env = (aspen_proc_env_t){
      .state_dir = eng->state_dir,
      .checkpoint_interval_ms = eng->checkpoint_interval_ms,
      .memory_limit_bytes = eng->memory_limit_bytes,
      .conns = &eng->conns,
      .dlq = &aspen_coll_writer_dlq_ops,
      .check = pipeline_options_ok,
      .start_reported = start_reported,
      .arg = eng,
   };
   if (!aspen_conns_load(&eng->conns, opts->connections, opts->backend_uri,
                         opts->authz, err) ||
       !load_state(eng, err)) {
      aspen_engine_destroy(eng);
      return NULL;
   }
   /* Processors that were running when aspen stopped run again. */
   for (aspen_proc_t *p = eng->procs; p; p = p->next) {
      if (p->state != ASPEN_PROC_STARTED) {
         continue;
      }
      /* Synchronously: nobody waits for a reply yet. */
      aspen_error_t serr;
      if (aspen_proc_launch(p, &eng->env, "", &serr)) {
         bson_t scratch = BSON_INITIALIZER;
         start_finish(eng, p, &scratch);
         bson_destroy(&scratch);
         if (p->state == ASPEN_PROC_STARTED) {
            aspen_logf(ASPEN_LOG_INFO, "STREAMS", p->name,
                       "stream processor restarted");
         }
      } else {
         aspen_proc_set_state(p, ASPEN_PROC_FAILED, serr.message);
         (void) save_proc(eng, p, &serr); /* logged when it fails */
      }
   }
   return eng;
}

void
aspen_engine_destroy(aspen_engine_t *eng)
{
   if (!eng) {
      return;
   }
   aspen_proc_t *p = eng->procs;
   while (p) {
      aspen_proc_t *next = p->next;
      proc_free(p); /* stops the thread; the saved state stays STARTED */
      p = next;
   }
   aspen_conns_cleanup(&eng->conns);
   pthread_mutex_destroy(&eng->hooks_mu);
   free(eng->state_dir);
   free(eng->procs_dir);
   free(eng);
}
