/*
 * registry.c - the processors store: every processor aspen knows (named
 * ones and the sp.process ones while they run), found by name, in the
 * order they were created, and persisted in <stateDir>/processors/.
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
 * Command thread only.
 */
#include "runtime/runtime_int.h"
#include "runtime/checkpoint.h"
#include "file.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* An older aspen's single state file: read once, then migrated. */
#define LEGACY_STATE_FILE "processors.json"
#define LEGACY_STATE_VERSION 1
/* One file per processor in this directory of the state directory. */
#define PROCS_DIR "processors"
#define PROC_FILE_VERSION 1
/* Processor names: at most this many bytes (README "Limits"). */
#define NAME_MAX_LEN 64

struct aspen_registry {
   char *state_dir;
   char *procs_dir; /* <state_dir>/processors */
   size_t max;      /* streams.maxProcessors */
   size_t n;        /* linked, ephemeral ones included */
   aspen_proc_t *procs;
};

/* ASP documents names with '-' and '.' (addressed as sp["my-proc"]) and
 * recommends alphanumeric ones; '/', control characters and the like
 * never reach a name. */
bool
aspen_registry_check_name(const char *name, const char *field,
                          aspen_error_t *err)
{
   size_t len = strlen(name);
   if (len > NAME_MAX_LEN) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
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
         aspen_error_set(err, ASPEN_ERR_BadValue,
                           "BSON field '%s' is invalid: a stream processor "
                           "name may contain only ASCII letters, digits, '_', "
                           "'-' and '.', found byte 0x%02x at offset %zu",
                           field, (unsigned) (unsigned char) c, i);
         return false;
      }
   }
   if (strstr(name, "..")) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                        "BSON field '%s' is invalid: a stream processor name "
                        "must not contain \"..\"",
                        field);
      return false;
   }
   return true;
}

aspen_proc_t *
aspen_registry_find(const aspen_registry_t *reg, const char *name)
{
   for (aspen_proc_t *p = reg->procs; p; p = p->next) {
      if (strcmp(p->name, name) == 0) {
         return p;
      }
   }
   return NULL;
}

aspen_proc_t *
aspen_registry_first(const aspen_registry_t *reg)
{
   return reg->procs;
}

aspen_proc_t *
aspen_registry_next(const aspen_proc_t *p)
{
   return p->next;
}

size_t
aspen_registry_count(const aspen_registry_t *reg)
{
   return reg->n;
}

bool
aspen_registry_is_full(const aspen_registry_t *reg)
{
   return reg->n >= reg->max;
}

void
aspen_registry_drop_checkpoints(const aspen_registry_t *reg,
                                const aspen_proc_t *p)
{
   char dir[4200];
   aspen__checkpoint_dir(reg->state_dir, p->id, dir, sizeof dir);
   aspen__checkpoint_remove(dir);
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

bool
aspen_registry_save_as(aspen_registry_t *reg, const aspen_proc_t *p,
                       aspen_proc_state_t st, aspen_error_t *err)
{
   if (p->ephemeral) {
      return true;
   }
   bson_t doc = BSON_INITIALIZER;
   BSON_APPEND_INT32(&doc, "version", PROC_FILE_VERSION);
   proc_to_bson(p, st, &doc);
   char what[160], path[4200];
   snprintf(what, sizeof what, "stream processor '%s'", p->name);
   snprintf(path, sizeof path, "%s/%s.json", reg->procs_dir, p->id);
   char *json = NULL;
   size_t len = 0;
   bool ok = encode_json(&doc, what, &json, &len, err) &&
             aspen_file_write_atomic(path, json, len, 0600, 0, err);
   bson_free(json);
   bson_destroy(&doc);
   if (!ok) {
      aspen_logf(ASPEN_LOG_ERROR, "STREAMS", "engine", "%s", err->message);
   }
   return ok;
}

bool
aspen_registry_save(aspen_registry_t *reg, const aspen_proc_t *p,
                    aspen_error_t *err)
{
   return aspen_registry_save_as(reg, p, p->state, err);
}

bool
aspen_registry_unsave(aspen_registry_t *reg, const aspen_proc_t *p,
                      aspen_error_t *err)
{
   if (p->ephemeral) {
      return true;
   }
   char path[4200];
   snprintf(path, sizeof path, "%s/%s.json", reg->procs_dir, p->id);
   if ((unlink(path) != 0 && errno != ENOENT) ||
       !aspen_file_fsync_dir(reg->procs_dir)) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot remove %s: %s",
                      path, strerror(errno));
      aspen_logf(ASPEN_LOG_ERROR, "STREAMS", "engine", "%s", err->message);
      return false;
   }
   return true;
}

aspen_proc_t *
aspen_registry_proc_new(const char *name, const bson_t *pipeline,
                        const bson_t *options, bool ephemeral,
                        uint64_t owner_conn)
{
   aspen_proc_t *p = aspen_xcalloc(1, sizeof *p);
   p->name = aspen_xstrdup(name);
   p->ephemeral = ephemeral;
   p->owner_conn = owner_conn;
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
   bson_init(&p->source_token);
   bson_init(&p->source_figures);
   p->created_ms = p->modified_ms = p->state_changed_ms = aspen_clock_now_ms();
   p->state = ASPEN_PROC_CREATED;
   atomic_store(&p->stats.watermark_ms, INT64_MIN);
   return p;
}

void
aspen_registry_proc_free(aspen_proc_t *p)
{
   if (!p) {
      return;
   }
   aspen_proc_halt(p);
   aspen__cursor_free_all(p);
   bson_destroy(&p->pipeline);
   bson_destroy(&p->options);
   bson_destroy(&p->source_token);
   bson_destroy(&p->source_figures);
   pthread_mutex_destroy(&p->mu);
   pthread_cond_destroy(&p->cv);
   free(p->name);
   free(p);
}

void
aspen_registry_link(aspen_registry_t *reg, aspen_proc_t *p)
{
   aspen_proc_t **pp = &reg->procs;
   while (*pp) {
      pp = &(*pp)->next;
   }
   *pp = p;
   reg->n++;
}

void
aspen_registry_unlink(aspen_registry_t *reg, aspen_proc_t *p)
{
   for (aspen_proc_t **pp = &reg->procs; *pp; pp = &(*pp)->next) {
      if (*pp == p) {
         *pp = p->next;
         reg->n--;
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
link_saved(aspen_registry_t *reg, const saved_proc_t *sp, const char *path,
           const char *where, aspen_error_t *err)
{
   for (aspen_proc_t *q = reg->procs; q; q = q->next) {
      if (strcmp(q->name, sp->name) == 0 || strcmp(q->id, sp->id) == 0) {
         return shape_error(err, path, where,
                            "a second processor named '%.64s' or with id "
                            "%s",
                            sp->name, sp->id);
      }
   }
   aspen_proc_t *p = aspen_registry_proc_new(sp->name, &sp->pipeline,
                                             &sp->options, false, 0);
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
   aspen_error_t rules;
   if (!aspen_registry_check_name(p->name, "name", &rules)) {
      /* Kept (it can be renamed or dropped): an older aspen took it. */
      char msg[ASPEN_ERROR_MSG_MAX];
      snprintf(msg, sizeof msg, "%s", rules.message);
      aspen_utf8_scrub(msg);
      aspen_logf(ASPEN_LOG_WARNING, "STREAMS", "engine",
                 "the saved processor %s breaks today's name rules (%s); "
                 "rename it with modify",
                 p->id, msg);
   }
   aspen_registry_link(reg, p);
   return true;
}

/* Loads an older aspen's processors.json: {version: 1, processors: [...]},
 * nothing else. */
static bool
load_legacy(aspen_registry_t *reg, const char *path, const char *json,
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
              link_saved(reg, &sp, path, where, err);
      }
   }
   bson_destroy(&doc);
   return ok;
}

/* Loads one per-processor file, <procs_dir>/<id>.json. */
static bool
load_proc_file(aspen_registry_t *reg, const char *path, const char *file_id,
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
   ok = ok && link_saved(reg, &sp, path, "", err);
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
sort_procs(aspen_registry_t *reg)
{
   size_t n = reg->n;
   if (n < 2) {
      return;
   }
   aspen_proc_t **v = aspen_xcalloc(n, sizeof *v);
   size_t i = 0;
   for (aspen_proc_t *p = reg->procs; p; p = p->next) {
      v[i++] = p;
   }
   qsort(v, n, sizeof *v, cmp_proc_order);
   for (i = 0; i + 1 < n; i++) {
      v[i]->next = v[i + 1];
   }
   v[n - 1]->next = NULL;
   reg->procs = v[0];
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
load_procs_dir(aspen_registry_t *reg, bool migrating, aspen_error_t *err)
{
   DIR *d = opendir(reg->procs_dir);
   if (!d) {
      if (errno == ENOENT) {
         return true;
      }
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot read %s: %s",
                      reg->procs_dir, strerror(errno));
      return false;
   }
   bool ok = true;
   struct dirent *de;
   while (ok && (de = readdir(d))) {
      const char *f = de->d_name;
      char path[4400], id[25];
      snprintf(path, sizeof path, "%s/%s", reg->procs_dir, f);
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
         ok = load_proc_file(reg, path, id, err);
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
load_state(aspen_registry_t *reg, aspen_error_t *err)
{
   char legacy[4096];
   snprintf(legacy, sizeof legacy, "%s/%s", reg->state_dir,
            LEGACY_STATE_FILE);
   size_t len;
   bool missing;
   char *json = read_state_file(legacy, &len, &missing, err);
   if (!json && !missing) {
      return false;
   }
   if (!json) {
      bool ok = load_procs_dir(reg, false, err);
      sort_procs(reg);
      return ok;
   }
   bool ok = load_legacy(reg, legacy, json, len, err);
   free(json);
   if (!ok) {
      return false;
   }
   /* Migrate: every processor gets its file, stale ones go (an earlier
    * migration that did not finish), then the old file is renamed. */
   ok = load_procs_dir(reg, true, err);
   for (aspen_proc_t *p = reg->procs; ok && p; p = p->next) {
      ok = aspen_registry_save(reg, p, err);
   }
   char done[4200];
   snprintf(done, sizeof done, "%s.migrated", legacy);
   if (ok && (rename(legacy, done) != 0 ||
              !aspen_file_fsync_dir(reg->state_dir))) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot rename %s: %s",
                      legacy, strerror(errno));
      ok = false;
   }
   if (ok) {
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", "engine",
                 "migrated %zu processor(s) from %s to %s (one file each); "
                 "the old file is now %s",
                 reg->n, legacy, reg->procs_dir, done);
   }
   return ok;
}

void
aspen_registry_entry(const aspen_proc_t *p, bson_t *out)
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


bool
aspen_registry_redefine(aspen_registry_t *reg, aspen_proc_t *p,
                        const char *new_name, const bson_t *pipeline,
                        bson_t *options, aspen_error_t *err)
{
   bson_t old_pipeline, old_options;
   char *old_name = p->name;
   int64_t old_modified = p->modified_ms;
   bson_steal(&old_pipeline, &p->pipeline);
   bson_steal(&old_options, &p->options);
   bson_copy_to(pipeline ? pipeline : &old_pipeline, &p->pipeline);
   bson_steal(&p->options, options);
   if (new_name) {
      p->name = aspen_xstrdup(new_name);
   }
   p->modified_ms = aspen_clock_now_ms();
   if (!aspen_registry_save(reg, p, err)) {
      bson_destroy(&p->pipeline);
      bson_destroy(&p->options);
      bson_steal(&p->pipeline, &old_pipeline);
      bson_steal(&p->options, &old_options);
      if (p->name != old_name) {
         free(p->name);
         p->name = old_name;
      }
      p->modified_ms = old_modified;
      return false;
   }
   bson_destroy(&old_pipeline);
   bson_destroy(&old_options);
   if (p->name != old_name) {
      free(old_name);
   }
   return true;
}

aspen_registry_t *
aspen_registry_open(const char *state_dir, size_t max, aspen_error_t *err)
{
   aspen_registry_t *reg = aspen_xcalloc(1, sizeof *reg);
   reg->state_dir = aspen_xstrdup(state_dir);
   size_t dlen = strlen(state_dir) + sizeof "/" PROCS_DIR;
   reg->procs_dir = aspen_xmalloc(dlen);
   snprintf(reg->procs_dir, dlen, "%s/%s", state_dir, PROCS_DIR);
   reg->max = max;
   if (!load_state(reg, err)) {
      aspen_registry_destroy(reg);
      return NULL;
   }
   return reg;
}

void
aspen_registry_destroy(aspen_registry_t *reg)
{
   if (!reg) {
      return;
   }
   aspen_proc_t *p = reg->procs;
   while (p) {
      aspen_proc_t *next = p->next;
      aspen_registry_proc_free(p); /* its saved state stays as it is */
      p = next;
   }
   free(reg->state_dir);
   free(reg->procs_dir);
   free(reg);
}
