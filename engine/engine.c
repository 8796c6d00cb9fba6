/*
 * engine.c - the stream-processor commands behind mongosh's sp.* helpers
 * and the registry of processors, persisted in <stateDir>/processors.json.
 *
 * Commands and replies follow ../shared/spec/mongosh-sp-contract.md §2 and
 * asp-semantics.md §7: create, process (ephemeral), start, stop, drop,
 * modify, stats, sample (start + getMore), list processors, list
 * connections, get one processor. Every command checks its fields strictly,
 * ignoring only what drivers add ($db, lsid, $clusterTime, ...), so a typo
 * in an option is an error, as with ASP's strict option parsing.
 *
 * The state file is rewritten whole on every change: temp file, fsync,
 * rename, directory fsync, so a crash leaves the old or the new file, never
 * half of one. Processors that were running when aspen stopped are started
 * again when it comes back.
 *
 * A start launches the processor's thread and, with the caller's hooks set
 * (engine.h), returns without its reply: the processor is PROVISIONING
 * (saved as STARTED) until its thread reports whether its source and sinks
 * opened, and aspen_engine_poll then finishes the start on the command
 * thread (start_finish) and hands the reply to the caller. A stop, a drop
 * or the owning connection closing meanwhile ends the start (start_abort).
 */
#include "engine_int.h"
#include "checkpoint.h"
#include "processor.h"
#include "kafka_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_FILE "processors.json"
#define STATE_VERSION 1

#define DEFAULT_CHECKPOINT_INTERVAL_MS 5000

struct aspen_engine {
   char *state_dir;
   int64_t checkpoint_interval_ms;
   uint64_t memory_limit_bytes; /* 0: the tier's */
   aspen_conns_t conns;
   aspen_proc_t *procs;
   int64_t next_cursor_id;
   /* How deferred start replies go back (aspen_engine_set_hooks). Set and
    * read under hooks_mu: processor threads call the wake hook. */
   pthread_mutex_t hooks_mu;
   aspen_engine_hooks_t hooks;
};

const aspen_conns_t *
aspen_engine_conns(const aspen_engine_t *eng)
{
   return &eng->conns;
}

const char *
aspen__engine_state_dir(const aspen_engine_t *eng)
{
   return eng->state_dir;
}

int64_t
aspen__engine_checkpoint_interval_ms(const aspen_engine_t *eng)
{
   return eng->checkpoint_interval_ms;
}

uint64_t
aspen__engine_memory_limit_bytes(const aspen_engine_t *eng)
{
   return eng->memory_limit_bytes;
}

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
reply_error(bson_t *reply, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));

static void
reply_error(bson_t *reply, int32_t code, const char *fmt, ...)
{
   aspen_error_t err;
   va_list ap;
   err.code = code;
   va_start(ap, fmt);
   vsnprintf(err.message, sizeof err.message, fmt, ap);
   va_end(ap);
   aspen_error_append_reply(reply, &err);
}

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

static void
reply_ok(bson_t *reply)
{
   BSON_APPEND_DOUBLE(reply, "ok", 1.0);
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

void
aspen__engine_start_reported(aspen_engine_t *eng)
{
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
         reply_error(reply, ASPEN_ERR_Location40415,
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
      reply_error(reply, ASPEN_ERR_TypeMismatch,
                  "BSON field '%s' is the wrong type '%s', expected type "
                  "'string'",
                  cmdname, BSON_ITER_HOLDS_NULL(&it) ? "null" : "non-string");
      return NULL;
   }
   const char *name = bson_iter_utf8(&it, NULL);
   if (!*name) {
      reply_error(reply, ASPEN_ERR_BadValue,
                  "stream processor name must not be empty");
      return NULL;
   }
   return name;
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
      reply_error(reply, ASPEN_ERR_StreamProcessorDoesNotExist,
                  "stream processor '%s' does not exist", name);
   }
   return p;
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

/* A thread that failed by itself is still to be joined. */
static void
reap_failed(aspen_proc_t *proc)
{
   if (proc->thread_running && proc->state != ASPEN_PROC_STARTED &&
       proc->state != ASPEN_PROC_PROVISIONING) {
      aspen_proc_halt(proc);
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

static void
proc_to_bson(const aspen_proc_t *p, bson_t *out)
{
   BSON_APPEND_UTF8(out, "name", p->name);
   BSON_APPEND_UTF8(out, "id", p->id);
   BSON_APPEND_ARRAY(out, "pipeline", &p->pipeline);
   BSON_APPEND_DOCUMENT(out, "options", &p->options);
   /* A processor still starting is saved as STARTED, what the user asked
    * for: after a crash it is started again, as a running one is. */
   BSON_APPEND_UTF8(out, "state",
                    aspen_proc_state_name(p->state == ASPEN_PROC_PROVISIONING
                                             ? ASPEN_PROC_STARTED
                                             : p->state));
   BSON_APPEND_UTF8(out, "errorMsg", p->error_msg);
   BSON_APPEND_DATE_TIME(out, "created", p->created_ms);
   BSON_APPEND_DATE_TIME(out, "lastModified", p->modified_ms);
   BSON_APPEND_DATE_TIME(out, "lastStateChange", p->state_changed_ms);
}

/* Writes the state file atomically. Logs and returns false on I/O errors;
 * the in-memory state stays as it is. */
static bool
persist(aspen_engine_t *eng, aspen_error_t *err)
{
   bson_t doc = BSON_INITIALIZER, arr;
   BSON_APPEND_INT32(&doc, "version", STATE_VERSION);
   BSON_APPEND_ARRAY_BEGIN(&doc, "processors", &arr);
   uint32_t i = 0;
   for (aspen_proc_t *p = eng->procs; p; p = p->next) {
      if (p->ephemeral) {
         continue;
      }
      char buf[16];
      const char *key;
      bson_t entry;
      bson_uint32_to_string(i++, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, key, &entry);
      proc_to_bson(p, &entry);
      bson_append_document_end(&arr, &entry);
   }
   bson_append_array_end(&doc, &arr);
   size_t len;
   char *json = bson_as_canonical_extended_json(&doc, &len);
   bson_destroy(&doc);

   char path[4096], tmp[4200];
   snprintf(path, sizeof path, "%s/%s", eng->state_dir, STATE_FILE);
   snprintf(tmp, sizeof tmp, "%s.tmp", path);
   int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
   bool ok = fd >= 0;
   if (ok) {
      size_t off = 0;
      while (ok && off < len) {
         ssize_t n = write(fd, json + off, len - off);
         if (n < 0 && errno == EINTR) {
            continue;
         }
         ok = n > 0;
         off += ok ? (size_t) n : 0;
      }
      ok = ok && fsync(fd) == 0;
      ok = close(fd) == 0 && ok;
   }
   ok = ok && rename(tmp, path) == 0;
   ok = ok && aspen__fsync_dir(eng->state_dir);
   bson_free(json);
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "cannot write %s: %s", path, strerror(errno));
      aspen_logf(ASPEN_LOG_ERROR, "STREAMS", "engine", "%s", err->message);
   }
   return ok;
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
   p->created_ms = p->modified_ms = p->state_changed_ms = aspen_proc_now_ms();
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
   aspen_cursor_t *c = p->cursors;
   while (c) {
      aspen_cursor_t *next = c->next;
      aspen_cursor_destroy_locked(c);
      c = next;
   }
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
}

static void
unlink_proc(aspen_engine_t *eng, aspen_proc_t *p)
{
   for (aspen_proc_t **pp = &eng->procs; *pp; pp = &(*pp)->next) {
      if (*pp == p) {
         *pp = p->next;
         return;
      }
   }
}

static bool
load_state(aspen_engine_t *eng, aspen_error_t *err)
{
   char path[4096];
   snprintf(path, sizeof path, "%s/%s", eng->state_dir, STATE_FILE);
   FILE *f = fopen(path, "rb");
   if (!f) {
      return true; /* first run */
   }
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   bool read_ok = aspen_buf_read_file(&buf, f, SIZE_MAX / 2);
   fclose(f);
   if (!read_ok) {
      aspen_buf_cleanup(&buf);
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot read %s", path);
      return false;
   }
   bson_error_t berr;
   bson_t doc;
   bool ok = bson_init_from_json(&doc, (const char *) aspen_buf_data(&buf),
                                 (ssize_t) aspen_buf_len(&buf), &berr);
   aspen_buf_cleanup(&buf);
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "%s is corrupt (%s); move it away to start without "
                      "the saved processors",
                      path, berr.message);
      return false;
   }
   bson_iter_t it, pi;
   if (bson_iter_init_find(&it, &doc, "processors") &&
       BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &pi)) {
      while (bson_iter_next(&pi)) {
         bson_t entry, pipeline, options;
         uint32_t len;
         const uint8_t *data;
         if (!BSON_ITER_HOLDS_DOCUMENT(&pi)) {
            continue;
         }
         bson_iter_document(&pi, &len, &data);
         (void) bson_init_static(&entry, data, len);
         bson_iter_t f2;
         const char *name = NULL, *id = NULL, *state = NULL, *emsg = NULL;
         bson_init(&pipeline);
         bson_init(&options);
         int64_t created = 0, modified = 0, changed = 0;
         bson_iter_init(&f2, &entry);
         while (bson_iter_next(&f2)) {
            const char *k = bson_iter_key(&f2);
            if (strcmp(k, "name") == 0 && BSON_ITER_HOLDS_UTF8(&f2)) {
               name = bson_iter_utf8(&f2, NULL);
            } else if (strcmp(k, "id") == 0 && BSON_ITER_HOLDS_UTF8(&f2)) {
               id = bson_iter_utf8(&f2, NULL);
            } else if (strcmp(k, "state") == 0 && BSON_ITER_HOLDS_UTF8(&f2)) {
               state = bson_iter_utf8(&f2, NULL);
            } else if (strcmp(k, "errorMsg") == 0 &&
                       BSON_ITER_HOLDS_UTF8(&f2)) {
               emsg = bson_iter_utf8(&f2, NULL);
            } else if (strcmp(k, "pipeline") == 0 &&
                       BSON_ITER_HOLDS_ARRAY(&f2)) {
               bson_t tmp;
               bson_iter_array(&f2, &len, &data);
               (void) bson_init_static(&tmp, data, len);
               bson_destroy(&pipeline);
               bson_copy_to(&tmp, &pipeline);
            } else if (strcmp(k, "options") == 0 &&
                       BSON_ITER_HOLDS_DOCUMENT(&f2)) {
               bson_t tmp;
               bson_iter_document(&f2, &len, &data);
               (void) bson_init_static(&tmp, data, len);
               bson_destroy(&options);
               bson_copy_to(&tmp, &options);
            } else if (strcmp(k, "created") == 0) {
               created = bson_iter_date_time(&f2);
            } else if (strcmp(k, "lastModified") == 0) {
               modified = bson_iter_date_time(&f2);
            } else if (strcmp(k, "lastStateChange") == 0) {
               changed = bson_iter_date_time(&f2);
            }
         }
         if (name && !find_proc(eng, name)) {
            aspen_proc_t *p = proc_new(eng, name, &pipeline, &options);
            if (id && strlen(id) == 24) {
               memcpy(p->id, id, 25);
            }
            p->created_ms = created;
            p->modified_ms = modified;
            p->state_changed_ms = changed;
            p->state = !state                       ? ASPEN_PROC_CREATED
                       : strcmp(state, "STARTED") == 0 ? ASPEN_PROC_STARTED
                       : strcmp(state, "STOPPED") == 0 ? ASPEN_PROC_STOPPED
                       : strcmp(state, "FAILED") == 0  ? ASPEN_PROC_FAILED
                                                       : ASPEN_PROC_CREATED;
            if (emsg) {
               snprintf(p->error_msg, sizeof p->error_msg, "%s", emsg);
            }
            link_proc(eng, p);
         }
         bson_destroy(&pipeline);
         bson_destroy(&options);
      }
   }
   bson_destroy(&doc);
   return true;
}

/* ---- options ------------------------------------------------------------ */

/* Validates createStreamProcessor/modify options; dlq connections must be
 * atlas connections. */
static bool
check_dlq(aspen_engine_t *eng, const bson_iter_t *it, bson_t *reply)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
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
         reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                     "StreamProcessorInvalidOptions: BSON field "
                     "'options.dlq.%s' is an unknown field.",
                     k);
         return false;
      }
      if (!BSON_ITER_HOLDS_UTF8(&di) || !*bson_iter_utf8(&di, NULL)) {
         reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                     "StreamProcessorInvalidOptions: options.dlq.%s must be "
                     "a non-empty string",
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
      reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                  "StreamProcessorInvalidOptions: options.dlq needs "
                  "connectionName, db and coll");
      return false;
   }
   const aspen_conn_t *conn = aspen_conns_find(&eng->conns, cn);
   if (!conn) {
      reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                  "StreamProcessorInvalidOptions: Unknown connection name %s "
                  "(at options.dlq.connectionName)",
                  cn);
      return false;
   }
   if (conn->type != ASPEN_CONN_ATLAS) {
      reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                  "StreamProcessorInvalidOptions: the DLQ must use an atlas "
                  "connection, '%s' is %s",
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
   reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
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
            reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: options.%s must be "
                        "a boolean",
                        k);
            return false;
         }
         bson_append_iter(out, NULL, 0, &it);
      } else {
         reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                     "StreamProcessorInvalidOptions: BSON field 'options.%s' "
                     "is an unknown field.",
                     k);
         return false;
      }
   }
   return true;
}

/* Checks the options that depend on the parsed pipeline (exactlyOnce). */
static bool
pipeline_options_ok(aspen_engine_t *eng, const aspen_pipeline_t *pl,
                    const bson_t *options, aspen_error_t *err)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, options, "exactlyOnce") &&
       bson_iter_as_bool(&it)) {
      return aspen__kafka_txn_check(pl, &eng->conns, false, err);
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
         reply_error(reply, ASPEN_ERR_FailedToParse,
                     "BSON field '%s.%s' is missing but a required field",
                     cmdname, key);
      }
      return false;
   }
   if (!BSON_ITER_HOLDS_ARRAY(&it)) {
      reply_error(reply, ASPEN_ERR_TypeMismatch,
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
      reply_error(reply, ASPEN_ERR_TypeMismatch,
                  "BSON field '%s.options' is the wrong type, expected type "
                  "'object'",
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
         persist(eng, &perr);
      }
      reply_err(reply, &err);
      return;
   }
   pthread_mutex_lock(&p->mu);
   if (p->run_failed) {
      /* It opened, then failed before this took the result: the start
       * itself succeeded, the processor did not last (as when it fails
       * just after a start's reply). */
      char msg[ASPEN_ERROR_MSG_MAX];
      snprintf(msg, sizeof msg, "%s", p->error_msg);
      aspen_proc_set_state(p, ASPEN_PROC_FAILED, msg);
   } else {
      aspen_proc_set_state(p, ASPEN_PROC_STARTED, NULL);
   }
   pthread_mutex_unlock(&p->mu);
   if (!p->ephemeral) {
      persist(eng, &perr);
   }
   reply_ok(reply);
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
   aspen_error_t perr;
   if (!p->ephemeral) {
      persist(eng, &perr); /* as STARTED: see proc_to_bson */
   }
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
   reply_error(&r, code, "stream processor '%s' %s", p->name, why);
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
   if (find_proc(eng, name)) {
      reply_error(reply, ASPEN_ERR_StreamProcessorAlreadyExists,
                  "stream processor '%s' already exists", name);
      bson_destroy(&accepted);
      return;
   }
   if (!check_options(eng, &options, &accepted, reply)) {
      bson_destroy(&accepted);
      return;
   }
   aspen_error_t err;
   aspen_pipeline_t *pl = aspen_pipeline_parse(
      &pipeline, &eng->conns, false, bson_has_field(&accepted, "dlq"), &err);
   bool ok = pl && pipeline_options_ok(eng, pl, &accepted, &err);
   aspen_pipeline_destroy(pl);
   if (!ok) {
      reply_err(reply, &err);
      bson_destroy(&accepted);
      return;
   }
   aspen_proc_t *p = proc_new(eng, name, &pipeline, &accepted);
   bson_destroy(&accepted);
   link_proc(eng, p);
   if (!persist(eng, &err)) {
      unlink_proc(eng, p);
      proc_free(p);
      reply_err(reply, &err);
      return;
   }
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", name, "stream processor created");
   reply_ok(reply);
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
      reply_error(reply, ASPEN_ERR_TypeMismatch,
                  "BSON field 'startStreamProcessor.resumeFromCheckpoint' is "
                  "the wrong type, expected type 'bool'");
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
      reply_error(reply, ASPEN_ERR_IllegalOperation,
                  "stream processor '%s' is already started", name);
      return true;
   }
   if (p->state == ASPEN_PROC_PROVISIONING) {
      reply_error(reply, ASPEN_ERR_IllegalOperation,
                  "stream processor '%s' is already started (it is still "
                  "starting: state PROVISIONING)",
                  name);
      return true;
   }
   if (!resume) {
      /* Start fresh: the checkpoint (positions, open windows) goes. */
      drop_checkpoints(eng, p);
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", name,
                 "starting without resuming: checkpoint removed");
   }
   aspen_error_t err, perr;
   memcpy(p->start_tier, tier, sizeof tier);
   if (!aspen_proc_launch(p, &err)) {
      aspen_proc_set_state(p, ASPEN_PROC_FAILED, err.message);
      persist(eng, &perr);
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
      reply_error(reply, ASPEN_ERR_IllegalOperation,
                  "stream processor '%s' is not running (state %s)", name,
                  aspen_proc_state_name(p->state));
      return;
   }
   /* Still starting (PROVISIONING): the start ends with an error. */
   start_abort(eng, p, ASPEN_ERR_Interrupted,
               "was stopped before it finished starting");
   aspen_proc_set_state(p, ASPEN_PROC_STOPPED, NULL);
   aspen_error_t err;
   persist(eng, &err);
   reply_ok(reply);
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
   /* A running processor is stopped first, as ASP does; one still
    * starting ends its start with an error. */
   start_abort(eng, p, ASPEN_ERR_Interrupted,
               "was dropped before it finished starting");
   unlink_proc(eng, p);
   bool ephemeral = p->ephemeral;
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", name, "stream processor dropped");
   if (!ephemeral) {
      drop_checkpoints(eng, p);
   }
   proc_free(p);
   if (!ephemeral) {
      aspen_error_t err;
      persist(eng, &err);
   }
   reply_ok(reply);
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
      reply_error(reply, ASPEN_ERR_IllegalOperation,
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
      reply_error(reply, ASPEN_ERR_TypeMismatch,
                  "BSON field 'modifyStreamProcessor.resumeFromCheckpoint' is "
                  "the wrong type, expected type 'bool'");
      return;
   }
   bool resume = !bson_iter_init_find(&it, cmd, "resumeFromCheckpoint") ||
                 bson_iter_bool(&it);
   const char *why = new_pipeline && resume
                        ? modify_needs_fresh_start(&p->pipeline, &pipeline)
                        : NULL;
   if (why) {
      reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
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
         reply_error(reply, ASPEN_ERR_TypeMismatch,
                     "BSON field 'modifyStreamProcessor.name' must be a "
                     "non-empty string");
         bson_destroy(&opts);
         return;
      }
      new_name = bson_iter_utf8(&it, NULL);
      if (strcmp(new_name, name) != 0 && find_proc(eng, new_name)) {
         reply_error(reply, ASPEN_ERR_StreamProcessorAlreadyExists,
                     "stream processor '%s' already exists", new_name);
         bson_destroy(&opts);
         return;
      }
   }
   aspen_error_t err;
   const bson_t *pl_def = new_pipeline ? &pipeline : &p->pipeline;
   aspen_pipeline_t *pl = aspen_pipeline_parse(
      pl_def, &eng->conns, false, bson_has_field(&opts, "dlq"), &err);
   bool ok = pl && pipeline_options_ok(eng, pl, &opts, &err);
   aspen_pipeline_destroy(pl);
   if (!ok) {
      reply_err(reply, &err);
      bson_destroy(&opts);
      return;
   }
   if (new_pipeline) {
      bson_t copy;
      bson_copy_to(&pipeline, &copy);
      bson_destroy(&p->pipeline);
      bson_steal(&p->pipeline, &copy);
   }
   bson_destroy(&p->options);
   bson_steal(&p->options, &opts);
   if (new_name) {
      free(p->name);
      p->name = aspen_xstrdup(new_name);
   }
   p->modified_ms = aspen_proc_now_ms();
   if (!resume) {
      /* Only the summary stats survive; the next start reads afresh. */
      drop_checkpoints(eng, p);
   }
   if (!persist(eng, &err)) {
      reply_err(reply, &err);
      return;
   }
   reply_ok(reply);
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
            reply_error(reply, ASPEN_ERR_BadValue,
                        "scale must be a positive number");
            return;
         }
         scale = bson_iter_as_int64(&it);
      }
      if (bson_iter_init_find(&it, srcs[i], "verbose")) {
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            reply_error(reply, ASPEN_ERR_TypeMismatch,
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
   BSON_APPEND_INT64(&st, "inputMessageCount",
                     (int64_t) atomic_load(&p->stats.input_count));
   BSON_APPEND_DOUBLE(&st, "inputMessageSize",
                      (double) atomic_load(&p->stats.input_size) /
                         (double) scale);
   BSON_APPEND_INT64(&st, "outputMessageCount",
                     (int64_t) atomic_load(&p->stats.output_count));
   BSON_APPEND_DOUBLE(&st, "outputMessageSize",
                      (double) atomic_load(&p->stats.output_size) /
                         (double) scale);
   BSON_APPEND_INT64(&st, "dlqMessageCount",
                     (int64_t) atomic_load(&p->stats.dlq_count));
   BSON_APPEND_INT64(&st, "dlqMessageSize",
                     (int64_t) atomic_load(&p->stats.dlq_size) / scale);
   int64_t wm = atomic_load(&p->stats.watermark_ms);
   uint64_t state_size = 0;
   if (p->pl && p->pl->window) {
      /* With a window, the watermark is the window's (event time, per
       * partition, never backwards). */
      wm = atomic_load(&p->pl->watermark_ms);
   }
   if (p->pl) {
      /* State: open windows and $cachedLookup caches. */
      state_size = atomic_load(&p->pl->state_size);
   }
   BSON_APPEND_INT64(&st, "stateSize", (int64_t) state_size / scale);
   if (wm != INT64_MIN) {
      BSON_APPEND_DATE_TIME(&st, "watermark", wm);
   }
   if (p->error_msg[0]) {
      BSON_APPEND_UTF8(&st, "error", p->error_msg);
   }
   int64_t ckpt = atomic_load(&p->last_checkpoint_ms);
   if (ckpt > 0) {
      BSON_APPEND_DATE_TIME(&st, "lastCheckpointTime", ckpt);
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
   aspen_cursor_new(p, id, conn_id, is_shell, limit);
   reply_ok(reply);
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
      reply_error(reply, ASPEN_ERR_TypeMismatch,
                  "BSON field 'processStreamProcessor' is the wrong type, "
                  "expected type 'array'");
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
   aspen_cursor_new(p, id, conn_id, true, 0);
   p->start_cursor_id = id;
   if (!aspen_proc_launch(p, &err)) {
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
         reply_error(reply, ASPEN_ERR_BadValue,
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
      reply_error(reply, ASPEN_ERR_IllegalOperation,
                  "stream processor '%s' is not running (state %s): only a "
                  "running processor can be sampled",
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
      reply_error(reply, ASPEN_ERR_TypeMismatch,
                  "getMoreSampleStreamProcessor needs a numeric cursorId");
      return;
   }
   aspen_proc_t *p = find_or_error(eng, name, reply);
   if (!p) {
      return;
   }
   pthread_mutex_lock(&p->mu);
   aspen_cursor_t *c = p->cursors;
   while (c && c->id != id) {
      c = c->next;
   }
   if (!c) {
      pthread_mutex_unlock(&p->mu);
      reply_error(reply, ASPEN_ERR_CursorNotFound,
                  "cursor id %lld not found for stream processor '%s'",
                  (long long) id, name);
      return;
   }
   int64_t batch = c->is_shell ? 1000 : 5;
   bson_iter_t it;
   if (bson_iter_init_find(&it, cmd, "batchSize") &&
       BSON_ITER_HOLDS_NUMBER(&it) && bson_iter_as_int64(&it) > 0) {
      batch = bson_iter_as_int64(&it);
   }
   bson_t msgs;
   reply_ok(reply);
   /* cursorId is appended after messages are known; build messages first
    * into a temporary array. */
   bson_t arr = BSON_INITIALIZER;
   uint32_t n = 0;
   size_t bytes = 0;
   while (c->len > 0 && (int64_t) n < batch && bytes < 8u * 1024u * 1024u) {
      bson_t *d = c->docs[c->head];
      char buf[16];
      const char *key;
      bson_uint32_to_string(n++, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT(&arr, key, d);
      bytes += d->len;
      bson_destroy(d);
      c->head = (c->head + 1) % c->cap;
      c->len--;
      c->delivered++;
   }
   bool running = is_running(p) && !p->thread_done;
   bool done = (c->limit > 0 && c->delivered >= c->limit) ||
               (!running && c->len == 0);
   pthread_cond_broadcast(&p->cv); /* room for a waiting shell push */
   pthread_mutex_unlock(&p->mu);
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
      reply_error(reply, ASPEN_ERR_TypeMismatch,
                  "BSON field '%s.filter' is the wrong type, expected type "
                  "'object'",
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
      reply_error(reply, err.code ? err.code : ASPEN_ERR_BadValue, "%s",
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
                           .now_ms = aspen_proc_now_ms()};
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
   reply_ok(reply);
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
   reply_ok(reply);
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
   reply_ok(reply);
   proc_entry(p, reply);
}

bool
aspen_engine_command(aspen_engine_t *eng, const char *name, const bson_t *cmd,
                     uint64_t conn_id, void *ticket, bson_t *reply)
{
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
      reply_error(reply, ASPEN_ERR_CommandNotFound, "no such command: '%s'",
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
      pthread_mutex_lock(&p->mu);
      aspen_cursor_t **cp = &p->cursors;
      while (*cp) {
         if ((*cp)->conn_id == conn_id && !(*cp)->is_shell) {
            aspen_cursor_t *c = *cp;
            *cp = c->next;
            aspen_cursor_destroy_locked(c);
         } else {
            cp = &(*cp)->next;
         }
      }
      pthread_cond_broadcast(&p->cv);
      pthread_mutex_unlock(&p->mu);
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
   eng->checkpoint_interval_ms = opts->checkpoint_interval_ms > 0
                                    ? opts->checkpoint_interval_ms
                                    : DEFAULT_CHECKPOINT_INTERVAL_MS;
   eng->memory_limit_bytes = opts->memory_limit_bytes;
   if (!aspen_conns_load(&eng->conns, opts->connections, opts->backend_uri,
                         err) ||
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
      if (aspen_proc_launch(p, &serr)) {
         bson_t scratch = BSON_INITIALIZER;
         start_finish(eng, p, &scratch);
         bson_destroy(&scratch);
         if (p->state == ASPEN_PROC_STARTED) {
            aspen_logf(ASPEN_LOG_INFO, "STREAMS", p->name,
                       "stream processor restarted");
         }
      } else {
         aspen_proc_set_state(p, ASPEN_PROC_FAILED, serr.message);
      }
   }
   aspen_error_t perr;
   persist(eng, &perr);
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
   free(eng);
}
