/*
 * source_change_stream.c - the change-stream $source of an atlas
 * connection (../shared/spec/asp-semantics.md §2.3): a mongoc watch on one
 * collection, a list of collections (a database watch filtered on
 * ns.coll), a whole database, or the whole deployment.
 *
 * Each change event becomes one stream document: the event itself, or only
 * its fullDocument with `fullDocumentOnly`. Its event time is the event's
 * wallTime, else its clusterTime seconds (the $source timeField, applied by
 * the runtime, wins), and its metadata is {source: {type: "atlas",
 * operationType, ns, documentKey}}.
 *
 * The last resume token seen is the source's position. Before each event
 * goes down the pipeline the runtime is told the token before it
 * (aspen_rt_mark), and after it the event's own token (aspen_rt_mark_token),
 * so a checkpoint holds the token to resume from: the one before the
 * earliest event an open window still needs, else the latest. A processor
 * resumed from a checkpoint opens its watch with startAfter that token
 * (instead of the $source's startAfter/startAtOperationTime). When the
 * cursor fails with a
 * resumable error (network, failover, a restarted server) the source opens
 * a new watch with startAfter set to it, retrying with a capped backoff
 * until it succeeds or the processor stops. Any other error fails the
 * processor. A server that no longer has the token in its oplog
 * (ChangeStreamHistoryLost) cannot be resumed from it (asp-semantics.md
 * §8.1): the processor fails with StreamProcessorCannotResumeFromSource and
 * says to start it with resumeFromCheckpoint: false. Everything here runs
 * on the processor's thread, except the token accessor, the stats and the
 * catalog's check.
 *
 * With initialSync (README "MongoDB connections"), the source first takes
 * the watch's resume token, then copies the collections as insert events
 * in _id order, its position meanwhile a sync token ({aspenInitialSync:
 * {startAt, colls, i, lastId, synced, est, copied, inCount, inSize}})
 * that checkpoints keep where a resume token would be, so a restart
 * resumes the copy (and its per-collection figures); then it opens the
 * change stream at that first token. The figures are published for
 * verbose stats' targetStats (aspen_rt_source_figures); checkpoints keep
 * the published ones too (sourceFigures), so after a restart past the
 * copy, beside the change stream's resume token, they come back
 * (sync_restore_done).
 */
#include "base/tier.h"
#include "connectors/conn_atlas.h"
#include "connectors/connectors.h"
#include "connectors/source_change_stream.h"
#include "runtime/source.h"

#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASPEN_LOG_DOMAIN "STREAMS"
#define DEFAULT_MAX_AWAIT_MS 1000
#define RETRY_FIRST_MS 250
#define RETRY_MAX_MS 10000
#define FLUSH_EVERY_MS 100

/* ---- options ------------------------------------------------------------ */

typedef struct {
   const char *db;           /* NULL: the whole deployment */
   const char *coll;         /* one collection, or NULL */
   bson_t colls;             /* a list of collections (array), or empty */
   bool has_coll_list;
   bson_t start_after;       /* resume token given by the user, or empty */
   bool has_start_after;
   bool has_start_at;
   uint32_t start_at_t, start_at_i;
   const char *full_document;   /* "default", "updateLookup", ... */
   bool full_document_only;
   const char *before_change;   /* "off", "whenAvailable", "required" */
   bson_t pipeline;             /* config.pipeline (array), or empty */
   int32_t max_await_ms;
   const char *read_preference; /* NULL: primary */
   bool initial_sync;           /* initialSync.enable */
   int32_t sync_parallelism;    /* initialSync.parallelism (accepted; the
                                 * copy reads one collection at a time) */
} cs_opts_t;

static const char *const top_options[] = {
   "db", "coll", "config", "initialSync", "readPreference",
   "readPreferenceTags", NULL};

/* The runtime asks about each $source option it does not read itself:
 * the change stream's are taken here and checked as a whole once all are
 * known (cs_parse_done). */
static bool
cs_parse_option(aspen_source_spec_t *spec, const bson_iter_t *it,
                aspen_parse_ctx_t *pc, bool *handled, aspen_error_t *err)
{
   (void) spec;
   (void) pc;
   (void) err;
   const char *key = bson_iter_key(it);
   *handled = false;
   for (int i = 0; top_options[i]; i++) {
      *handled = *handled || strcmp(top_options[i], key) == 0;
   }
   return true;
}

static const char *
type_name(const bson_iter_t *it)
{
   aspen_value_t v = aspen_value_borrow(it);
   return aspen_value_type_name(&v);
}

static void
wrong_type(aspen_error_t *err, aspen_parse_ctx_t *pc, const char *field,
           const bson_iter_t *it, const char *want)
{
   aspen_parse_error(err, pc, field,
                     "BSON field '%s' is the wrong type '%s', expected type "
                     "'%s'",
                     field, type_name(it), want);
}

static bool
one_of(const char *s, const char *const *allowed)
{
   for (int i = 0; allowed[i]; i++) {
      if (strcmp(s, allowed[i]) == 0) {
         return true;
      }
   }
   return false;
}

static bool
parse_enum(const bson_iter_t *it, aspen_parse_ctx_t *pc, const char *field,
           const char *const *allowed, const char **out, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it)) {
      wrong_type(err, pc, field, it, "string");
      return false;
   }
   const char *s = bson_iter_utf8(it, NULL);
   if (!one_of(s, allowed)) {
      aspen_parse_error(err, pc, field,
                        "Enumeration value '%s' for field '%s' is not a valid "
                        "value.",
                        s, field);
      return false;
   }
   *out = s;
   return true;
}

static void
view_of(const bson_iter_t *it, bson_t *out)
{
   uint32_t len;
   const uint8_t *data;
   if (BSON_ITER_HOLDS_ARRAY(it)) {
      bson_iter_array(it, &len, &data);
   } else {
      bson_iter_document(it, &len, &data);
   }
   (void) bson_init_static(out, data, len);
}

static bool
parse_config(const bson_iter_t *cit, cs_opts_t *o, aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   static const char *const full_modes[] = {"default", "updateLookup",
                                            "required", "whenAvailable", NULL};
   static const char *const before_modes[] = {"off", "whenAvailable",
                                              "required", NULL};
   bson_t config;
   bson_iter_t it;
   view_of(cit, &config);
   bson_iter_init(&it, &config);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      char field[96];
      snprintf(field, sizeof field, "$source.config.%s", k);
      if (strcmp(k, "startAfter") == 0 || strcmp(k, "resumeAfter") == 0) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            wrong_type(err, pc, field, &it, "object");
            return false;
         }
         view_of(&it, &o->start_after);
         o->has_start_after = true;
      } else if (strcmp(k, "startAtOperationTime") == 0) {
         if (BSON_ITER_HOLDS_TIMESTAMP(&it)) {
            bson_iter_timestamp(&it, &o->start_at_t, &o->start_at_i);
         } else if (BSON_ITER_HOLDS_DATE_TIME(&it)) {
            /* ASP: a Date becomes a Timestamp of its whole seconds. */
            int64_t ms = bson_iter_date_time(&it);
            int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
            if (secs < 0 || secs > UINT32_MAX) {
               aspen_parse_error(err, pc, field,
                                 "'%s' is out of range for a Timestamp",
                                 field);
               return false;
            }
            o->start_at_t = (uint32_t) secs;
            o->start_at_i = 0;
         } else {
            wrong_type(err, pc, field, &it, "[timestamp, date]");
            return false;
         }
         o->has_start_at = true;
      } else if (strcmp(k, "fullDocument") == 0) {
         if (!parse_enum(&it, pc, field, full_modes, &o->full_document, err)) {
            return false;
         }
      } else if (strcmp(k, "fullDocumentOnly") == 0) {
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            wrong_type(err, pc, field, &it, "bool");
            return false;
         }
         o->full_document_only = bson_iter_bool(&it);
      } else if (strcmp(k, "fullDocumentBeforeChange") == 0) {
         if (!parse_enum(&it, pc, field, before_modes, &o->before_change,
                         err)) {
            return false;
         }
      } else if (strcmp(k, "pipeline") == 0) {
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            wrong_type(err, pc, field, &it, "array");
            return false;
         }
         bson_t arr;
         bson_iter_t ai;
         view_of(&it, &arr);
         bson_iter_init(&ai, &arr);
         while (bson_iter_next(&ai)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&ai)) {
               aspen_parse_error(err, pc, field,
                                 "Each element of the 'pipeline' array must "
                                 "be an object");
               return false;
            }
         }
         /* In place: a static bson_t points into itself, so a copy of one
          * would dangle once `arr` goes out of scope. */
         view_of(&it, &o->pipeline);
      } else if (strcmp(k, "maxAwaitTimeMS") == 0) {
         if (!BSON_ITER_HOLDS_INT32(&it) && !BSON_ITER_HOLDS_INT64(&it) &&
             !BSON_ITER_HOLDS_DOUBLE(&it)) {
            wrong_type(err, pc, field, &it, "int");
            return false;
         }
         int64_t ms = bson_iter_as_int64(&it);
         if (ms < 1 || ms > INT32_MAX) {
            aspen_parse_error(err, pc, field,
                              "'%s' must be a positive number of "
                              "milliseconds",
                              field);
            return false;
         }
         o->max_await_ms = (int32_t) ms;
      } else {
         aspen_parse_unknown_field(err, pc, field, NULL, field);
         return false;
      }
   }
   return true;
}

/* initialSync: {enable: <bool, required>, parallelism: <int >= 1>}. */
static bool
parse_initial_sync(const bson_iter_t *sit, cs_opts_t *o, aspen_parse_ctx_t *pc,
                   aspen_error_t *err)
{
   bson_t sync;
   bson_iter_t it;
   bool has_enable = false;
   view_of(sit, &sync);
   bson_iter_init(&it, &sync);
   o->sync_parallelism = 1;
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      char field[96];
      snprintf(field, sizeof field, "$source.initialSync.%s", k);
      if (strcmp(k, "enable") == 0) {
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            wrong_type(err, pc, field, &it, "bool");
            return false;
         }
         o->initial_sync = bson_iter_bool(&it);
         has_enable = true;
      } else if (strcmp(k, "parallelism") == 0) {
         if (!BSON_ITER_HOLDS_INT32(&it) && !BSON_ITER_HOLDS_INT64(&it) &&
             !BSON_ITER_HOLDS_DOUBLE(&it)) {
            wrong_type(err, pc, field, &it, "int");
            return false;
         }
         int64_t n = bson_iter_as_int64(&it);
         if (n < 1 || n > 64 ||
             (BSON_ITER_HOLDS_DOUBLE(&it) && (double) n != bson_iter_double(&it))) {
            aspen_parse_error(err, pc, field,
                              "'%s' must be a whole number from 1 to 64",
                              field);
            return false;
         }
         o->sync_parallelism = (int32_t) n;
      } else {
         aspen_parse_unknown_field(err, pc, field, NULL, field);
         return false;
      }
   }
   if (!has_enable) {
      aspen_parse_missing_field(err, pc, "$source.initialSync.enable",
                                "$source.initialSync", "enable");
      return false;
   }
   return true;
}

/* Reads the change-stream options of a $source spec into `o` (views into
 * `spec`). */
static bool
parse_opts(const bson_t *spec, cs_opts_t *o, aspen_parse_ctx_t *pc,
           aspen_error_t *err)
{
   memset(o, 0, sizeof *o);
   bson_init(&o->colls);
   bson_init(&o->start_after);
   bson_init(&o->pipeline);
   o->full_document = "default";
   o->before_change = "off";
   o->max_await_ms = DEFAULT_MAX_AWAIT_MS;
   bool has_coll = false;
   bson_iter_t it;
   bson_iter_init(&it, spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      char field[96];
      snprintf(field, sizeof field, "$source.%s", k);
      if (strcmp(k, "db") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            wrong_type(err, pc, field, &it, "string");
            return false;
         }
         o->db = bson_iter_utf8(&it, NULL);
         if (!*o->db) {
            aspen_parse_error(err, pc, field,
                              "Cannot specify an empty database name to "
                              "$source when configuring a change stream");
            return false;
         }
      } else if (strcmp(k, "coll") == 0) {
         has_coll = true;
         if (BSON_ITER_HOLDS_UTF8(&it)) {
            o->coll = bson_iter_utf8(&it, NULL);
            if (!*o->coll) {
               aspen_parse_error(err, pc, field,
                                 "Cannot specify an empty collection name to "
                                 "$source when configuring a change stream");
               return false;
            }
         } else if (BSON_ITER_HOLDS_ARRAY(&it)) {
            bson_t arr;
            bson_iter_t ai;
            view_of(&it, &arr);
            bson_iter_init(&ai, &arr);
            int n = 0;
            while (bson_iter_next(&ai)) {
               if (!BSON_ITER_HOLDS_UTF8(&ai) ||
                   !*bson_iter_utf8(&ai, NULL)) {
                  aspen_parse_error(err, pc, field,
                                    "Each element of '$source.coll' must be "
                                    "a non-empty collection name");
                  return false;
               }
               n++;
            }
            if (n == 0) {
               aspen_parse_error(err, pc, field,
                                 "'$source.coll' must name at least one "
                                 "collection");
               return false;
            }
            view_of(&it, &o->colls); /* in place, as config.pipeline */
            o->has_coll_list = true;
         } else {
            wrong_type(err, pc, field, &it, "[string, array]");
            return false;
         }
      } else if (strcmp(k, "config") == 0) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            wrong_type(err, pc, field, &it, "object");
            return false;
         }
         if (!parse_config(&it, o, pc, err)) {
            return false;
         }
      } else if (strcmp(k, "readPreference") == 0) {
         static const char *const modes[] = {
            "primary", "primaryPreferred", "secondary", "secondaryPreferred",
            "nearest", NULL};
         if (!parse_enum(&it, pc, field, modes, &o->read_preference, err)) {
            return false;
         }
      } else if (strcmp(k, "readPreferenceTags") == 0) {
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            wrong_type(err, pc, field, &it, "array");
            return false;
         }
      } else if (strcmp(k, "initialSync") == 0) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            wrong_type(err, pc, field, &it, "object");
            return false;
         }
         if (!parse_initial_sync(&it, o, pc, err)) {
            return false;
         }
      }
   }
   if (o->initial_sync && !o->db) {
      aspen_parse_error(err, pc, "$source.initialSync",
                        "$source.initialSync needs $source.db: an initial "
                        "sync copies collections of one database");
      return false;
   }
   if (o->initial_sync && (o->has_start_after || o->has_start_at)) {
      aspen_parse_error(err, pc, "$source.initialSync",
                        "$source.initialSync cannot be combined with "
                        "config.startAfter or config.startAtOperationTime: "
                        "the change stream starts where the initial sync "
                        "began");
      return false;
   }
   if (has_coll && !o->db) {
      aspen_parse_error(err, pc, "$source.coll",
                        "If coll is specified, db must be specified.");
      return false;
   }
   if (o->has_start_after && o->has_start_at) {
      aspen_parse_error(err, pc, "$source.config",
                        "startAfter and startAtOperationTime cannot both be "
                        "set");
      return false;
   }
   /* ASP checks the mode whenever fullDocumentOnly is given; aspen only when
    * it is true, since `false` asks for nothing the mode could contradict. */
   if (o->full_document_only && strcmp(o->full_document, "updateLookup") != 0 &&
       strcmp(o->full_document, "required") != 0) {
      aspen_parse_error(err, pc, "$source.config.fullDocumentOnly",
                        "fullDocumentOnly is set to true, fullDocument mode "
                        "can either be updateLookup or required");
      return false;
   }
   if (strcmp(o->before_change, "off") != 0 && o->full_document_only) {
      aspen_parse_error(err, pc, "$source.config.fullDocumentBeforeChange",
                        "fullDocumentBeforeChange is set, so fullDocumentOnly "
                        "should not be set.");
      return false;
   }
   return true;
}

/* Validates the change-stream options of the whole $source argument with
 * ASP's messages; the source parses them again when it opens. */
static bool
cs_parse_done(aspen_source_spec_t *spec, aspen_parse_ctx_t *pc,
              aspen_error_t *err)
{
   cs_opts_t o;
   return parse_opts(&spec->spec, &o, pc, err);
}

/* ---- the running source ---------------------------------------------------- */

typedef struct {
   cs_opts_t o;
   const aspen_conn_t *conn;
   mongoc_client_t *client;
   mongoc_change_stream_t *stream;
   char what[300]; /* "change stream on db.coll (connection 'x')" */
   pthread_mutex_t mu; /* guards token */
   bson_t token;
   bool has_token;
   /* The initial sync (initialSync.enable): while `syncing`, the source
    * copies sync_colls[sync_i..] in _id order, resuming after last_id, and
    * its position is the sync token (sync_token_build), not a resume
    * token; then it opens the change stream at start_at, the resume token
    * taken before the copy began. */
   bool syncing;
   bson_t sync_colls; /* array of collection names, fixed at the start */
   int n_sync, sync_i;
   bson_t start_at;
   bson_t last_id; /* {"_id": <the last copied document's _id>} or empty */
   int64_t synced; /* documents copied (this sync, all runs) */
   /* Per collection of sync_colls (stats' targetStats): the estimated
    * count taken when the sync was planned, the documents copied, the
    * messages read from it (copied and change events) and their bytes.
    * The sync token keeps them, so a restart during the copy goes on
    * from there; published by sync_publish when `moved`. */
   int64_t *est, *copied, *in_count, *in_size;
   bool sync_failed, moved;
} cs_t;

bool
aspen__change_stream_resume_token(void *state, bson_t *out)
{
   cs_t *cs = state;
   bson_init(out);
   if (!cs) {
      return false;
   }
   pthread_mutex_lock(&cs->mu);
   bool has = cs->has_token;
   if (has) {
      bson_concat(out, &cs->token);
   }
   pthread_mutex_unlock(&cs->mu);
   return has;
}

static void
set_token(cs_t *cs, const bson_t *token)
{
   pthread_mutex_lock(&cs->mu);
   bson_reinit(&cs->token);
   bson_concat(&cs->token, token);
   cs->has_token = true;
   pthread_mutex_unlock(&cs->mu);
}

/* The watch's pipeline: {pipeline: [<ns.coll filter>?, ...config.pipeline]}. */
static void
build_pipeline(const cs_t *cs, bson_t *out)
{
   bson_t arr, stage, match, in;
   bson_init(out);
   BSON_APPEND_ARRAY_BEGIN(out, "pipeline", &arr);
   uint32_t i = 0;
   char key[16];
   const char *k;
   if (cs->o.has_coll_list) {
      bson_uint32_to_string(i++, &k, key, sizeof key);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, k, &stage);
      BSON_APPEND_DOCUMENT_BEGIN(&stage, "$match", &match);
      BSON_APPEND_DOCUMENT_BEGIN(&match, "ns.coll", &in);
      BSON_APPEND_ARRAY(&in, "$in", &cs->o.colls);
      bson_append_document_end(&match, &in);
      bson_append_document_end(&stage, &match);
      bson_append_document_end(&arr, &stage);
   }
   bson_iter_t it;
   bson_iter_init(&it, &cs->o.pipeline);
   while (bson_iter_next(&it)) {
      bson_uint32_to_string(i++, &k, key, sizeof key);
      bson_append_iter(&arr, k, -1, &it);
   }
   bson_append_array_end(out, &arr);
}

static void
build_opts(cs_t *cs, bson_t *out)
{
   bson_init(out);
   if (strcmp(cs->o.full_document, "default") != 0) {
      BSON_APPEND_UTF8(out, "fullDocument", cs->o.full_document);
   }
   if (strcmp(cs->o.before_change, "off") != 0) {
      BSON_APPEND_UTF8(out, "fullDocumentBeforeChange", cs->o.before_change);
   }
   BSON_APPEND_INT64(out, "maxAwaitTimeMS", cs->o.max_await_ms);
   bson_t token;
   if (aspen__change_stream_resume_token(cs, &token)) {
      /* startAfter, not resumeAfter: it also resumes after an invalidate. */
      BSON_APPEND_DOCUMENT(out, "startAfter", &token);
   } else if (cs->o.has_start_after) {
      BSON_APPEND_DOCUMENT(out, "startAfter", &cs->o.start_after);
   } else if (cs->o.has_start_at) {
      BSON_APPEND_TIMESTAMP(out, "startAtOperationTime", cs->o.start_at_t,
                            cs->o.start_at_i);
   }
   bson_destroy(&token);
}

/* Resumable as the change-stream spec defines it: network and server
 * selection errors, the ResumableChangeStreamError label, or one of the
 * codes older servers send without labels. */
static bool
is_resumable(const bson_error_t *berr, const bson_t *reply)
{
   static const uint32_t codes[] = {
      6,     /* HostUnreachable */
      7,     /* HostNotFound */
      43,    /* CursorNotFound */
      63,    /* StaleShardVersion */
      89,    /* NetworkTimeout */
      91,    /* ShutdownInProgress */
      133,   /* FailedToSatisfyReadPreference */
      150,   /* StaleEpoch */
      189,   /* PrimarySteppedDown */
      234,   /* RetryChangeStream */
      262,   /* ExceededTimeLimit */
      9001,  /* SocketException */
      10107, /* NotWritablePrimary */
      11600, /* InterruptedAtShutdown */
      11602, /* InterruptedDueToReplStateChange */
      13388, /* StaleConfig */
      13435, /* NotPrimaryNoSecondaryOk */
      13436, /* NotPrimaryOrSecondary */
   };
   if (berr->domain == MONGOC_ERROR_STREAM ||
       berr->domain == MONGOC_ERROR_SERVER_SELECTION) {
      return true;
   }
   bson_iter_t it, li;
   if (reply && bson_iter_init_find(&it, reply, "errorLabels") &&
       BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &li)) {
      while (bson_iter_next(&li)) {
         if (BSON_ITER_HOLDS_UTF8(&li) &&
             strcmp(bson_iter_utf8(&li, NULL), "ResumableChangeStreamError") ==
                0) {
            return true;
         }
      }
   }
   if (berr->domain == MONGOC_ERROR_SERVER ||
       berr->domain == MONGOC_ERROR_QUERY) {
      for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
         if (berr->code == codes[i]) {
            return true;
         }
      }
   }
   return false;
}

/* The server's oplog no longer holds the point a watch was asked to resume
 * from: ChangeStreamHistoryLost, or (older servers) ChangeStreamFatalError
 * for a resume token it cannot find. */
static bool
history_lost(const cs_t *cs, const bson_error_t *berr)
{
   if (berr->domain != MONGOC_ERROR_SERVER &&
       berr->domain != MONGOC_ERROR_QUERY) {
      return false;
   }
   bool resuming = cs->has_token || cs->o.has_start_after;
   return berr->code == 286 || (berr->code == 280 && resuming);
}

/* Describes a change-stream error that stops the source in msg; returns
 * the code to report when the processor starts. `doing` names what failed
 * ("cannot open", "cannot resume", ...). */
static int32_t
describe_failure(const cs_t *cs, const char *doing, const bson_error_t *berr,
                 bool resumable, char *msg, size_t size)
{
   if (history_lost(cs, berr)) {
      snprintf(msg, size,
               "%s: cannot resume the %s: its resume point is no longer in "
               "the server's oplog (%s, code %u: %s); start the processor "
               "with resumeFromCheckpoint: false to continue from now",
               aspen_error_code_name(
                  ASPEN_ERR_StreamProcessorCannotResumeFromSource),
               cs->what, berr->code == 286 ? "ChangeStreamHistoryLost"
                                           : "ChangeStreamFatalError",
               berr->code, berr->message);
      return ASPEN_ERR_StreamProcessorCannotResumeFromSource;
   }
   snprintf(msg, size, "%s the %s: %s", doing, cs->what, berr->message);
   return resumable ? ASPEN_ERR_StreamProcessorAtlasConnectionError
                    : ASPEN_ERR_StreamProcessorInvalidOptions;
}

/* Opens the watch; the first aggregate runs here, so errors surface now.
 * On failure: false, *berr and *resumable set. */
static bool
open_stream(cs_t *cs, bson_error_t *berr, bool *resumable)
{
   bson_t pipeline, opts;
   build_pipeline(cs, &pipeline);
   build_opts(cs, &opts);
   if (cs->o.db && cs->o.coll) {
      mongoc_collection_t *coll =
         mongoc_client_get_collection(cs->client, cs->o.db, cs->o.coll);
      cs->stream = mongoc_collection_watch(coll, &pipeline, &opts);
      mongoc_collection_destroy(coll);
   } else if (cs->o.db) {
      mongoc_database_t *db = mongoc_client_get_database(cs->client, cs->o.db);
      cs->stream = mongoc_database_watch(db, &pipeline, &opts);
      mongoc_database_destroy(db);
   } else {
      cs->stream = mongoc_client_watch(cs->client, &pipeline, &opts);
   }
   bson_destroy(&pipeline);
   bson_destroy(&opts);
   const bson_t *reply = NULL;
   if (mongoc_change_stream_error_document(cs->stream, berr, &reply)) {
      *resumable = is_resumable(berr, reply);
      mongoc_change_stream_destroy(cs->stream);
      cs->stream = NULL;
      return false;
   }
   *resumable = false;
   return true;
}

static bool sync_restore(cs_t *cs, const bson_t *token, bool *is_sync,
                         aspen_error_t *err);
static void sync_restore_done(cs_t *cs, const bson_t *pos);
static bool sync_start(aspen_runtime_t *rt, cs_t *cs, bool resumed,
                       aspen_error_t *err);
static void append_phase(bson_t *src, bool syncing);
static void sync_count(cs_t *cs, const char *coll, uint32_t len);
static void sync_free(cs_t *cs);
static void sync_publish(aspen_runtime_t *rt, cs_t *cs);

static void
cs_destroy(cs_t *cs)
{
   if (!cs) {
      return;
   }
   mongoc_change_stream_destroy(cs->stream);
   mongoc_client_destroy(cs->client);
   bson_destroy(&cs->token);
   bson_destroy(&cs->sync_colls);
   bson_destroy(&cs->start_at);
   bson_destroy(&cs->last_id);
   sync_free(cs);
   pthread_mutex_destroy(&cs->mu);
   bson_free(cs);
}

static bool
cs_open(aspen_runtime_t *rt, void **state, aspen_error_t *err)
{
   const aspen_source_spec_t *spec = aspen_rt_source_spec(rt);
   *state = NULL;
   /* bson_t members need libbson's 128-byte alignment. */
   cs_t *cs = BSON_ALIGNED_ALLOC0(cs_t);
   pthread_mutex_init(&cs->mu, NULL);
   bson_init(&cs->token);
   bson_init(&cs->sync_colls);
   bson_init(&cs->start_at);
   bson_init(&cs->last_id);
   aspen_parse_ctx_t pc = {.conns = aspen_rt_conns(rt)};
   snprintf(pc.path, sizeof pc.path, "pipeline[0]");
   if (!parse_opts(&spec->spec, &cs->o, &pc, err)) {
      cs_destroy(cs);
      return false;
   }
   cs->conn = spec->conn;
   snprintf(cs->what, sizeof cs->what, "change stream on %s%s%s (connection "
            "'%s')",
            cs->o.db ? cs->o.db : "the whole deployment",
            cs->o.coll ? "." : "", cs->o.coll ? cs->o.coll : "",
            cs->conn->name);
   cs->client = aspen__conn_atlas_client_new(cs->conn, true, err);
   if (!cs->client) {
      cs_destroy(cs);
      return false;
   }
   if (cs->o.read_preference) {
      mongoc_read_prefs_t *rp = mongoc_read_prefs_new(MONGOC_READ_PRIMARY);
      mongoc_read_prefs_set_mode(
         rp, strcmp(cs->o.read_preference, "primaryPreferred") == 0
                ? MONGOC_READ_PRIMARY_PREFERRED
             : strcmp(cs->o.read_preference, "secondary") == 0
                ? MONGOC_READ_SECONDARY
             : strcmp(cs->o.read_preference, "secondaryPreferred") == 0
                ? MONGOC_READ_SECONDARY_PREFERRED
             : strcmp(cs->o.read_preference, "nearest") == 0
                ? MONGOC_READ_NEAREST
                : MONGOC_READ_PRIMARY);
      bson_iter_t it;
      if (bson_iter_init_find(&it, &spec->spec, "readPreferenceTags") &&
          BSON_ITER_HOLDS_ARRAY(&it)) {
         bson_t tags;
         view_of(&it, &tags);
         mongoc_read_prefs_set_tags(rp, &tags);
      }
      mongoc_client_set_read_prefs(cs->client, rp);
      mongoc_read_prefs_destroy(rp);
   }
   const bson_t *pos = aspen_rt_restored_position(rt);
   bson_iter_t tit;
   bool restored_sync = false;
   if (pos && bson_iter_init_find(&tit, pos, "token") &&
       BSON_ITER_HOLDS_DOCUMENT(&tit)) {
      /* Resuming from a checkpoint: its token wins over the $source's
       * startAfter/startAtOperationTime. A sync token resumes the initial
       * sync where it was. */
      bson_t token;
      view_of(&tit, &token);
      if (!sync_restore(cs, &token, &restored_sync, err)) {
         cs_destroy(cs);
         return false;
      }
      if (!restored_sync) {
         set_token(cs, &token);
         if (cs->o.initial_sync) {
            sync_restore_done(cs, pos);
            sync_publish(rt, cs);
         }
      }
   }
   bson_error_t berr;
   bool resumable;
   if (cs->o.initial_sync && !cs->has_token) {
      /* An initial sync, new or resumed: the change stream opens after the
       * copy (sync_run). */
      if (!sync_start(rt, cs, restored_sync, err)) {
         cs_destroy(cs);
         return false;
      }
      *state = cs;
      return true;
   }
   if (!open_stream(cs, &berr, &resumable)) {
      char msg[ASPEN_ERROR_MSG_MAX];
      int32_t code = describe_failure(cs, "cannot open", &berr, resumable, msg,
                                      sizeof msg);
      aspen_error_set(err, code, "%s", msg);
      cs_destroy(cs);
      return false;
   }
   aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, aspen_rt_processor_name(rt),
              "opened the %s%s", cs->what,
              cs->has_token ? " from the checkpoint's resume token" : "");
   if (!cs->has_token) {
      /* The initial post-batch token: the position before the first event,
       * so even the first checkpoint can resume without a gap. */
      const bson_t *pbrt = mongoc_change_stream_get_resume_token(cs->stream);
      if (pbrt && !bson_empty(pbrt)) {
         set_token(cs, pbrt);
         aspen_rt_mark_token(rt, pbrt);
      }
   }
   *state = cs;
   return true;
}

/* The event's clusterTime in ms, INT64_MIN when it has none. */
static int64_t
cluster_time_ms(const bson_t *ev)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, ev, "clusterTime") &&
       BSON_ITER_HOLDS_TIMESTAMP(&it)) {
      uint32_t t, i;
      bson_iter_timestamp(&it, &t, &i);
      return (int64_t) t * 1000;
   }
   return INT64_MIN;
}

static int64_t
event_time_ms(const bson_t *ev)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, ev, "wallTime") &&
       BSON_ITER_HOLDS_DATE_TIME(&it)) {
      return bson_iter_date_time(&it);
   }
   return cluster_time_ms(ev);
}

/* Builds {source: {type: "atlas", operationType, ns, documentKey}}. */
static void
event_meta(const cs_t *cs, const bson_t *ev, const char *op, bson_t *meta)
{
   bson_t src;
   bson_iter_t it;
   bson_init(meta);
   BSON_APPEND_DOCUMENT_BEGIN(meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "atlas");
   if (op) {
      BSON_APPEND_UTF8(&src, "operationType", op);
   }
   if (bson_iter_init_find(&it, ev, "ns") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_append_iter(&src, "ns", 2, &it);
   } else if (cs->o.db) {
      /* Servers always send ns for data events; one that does not still
       * gets what the watch itself names. */
      bson_t ns;
      BSON_APPEND_DOCUMENT_BEGIN(&src, "ns", &ns);
      BSON_APPEND_UTF8(&ns, "db", cs->o.db);
      if (cs->o.coll) {
         BSON_APPEND_UTF8(&ns, "coll", cs->o.coll);
      }
      bson_append_document_end(&src, &ns);
   }
   if (bson_iter_init_find(&it, ev, "documentKey") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_append_iter(&src, "documentKey", -1, &it);
   }
   if (cs->o.initial_sync) {
      append_phase(&src, cs->syncing);
   }
   bson_append_document_end(meta, &src);
}

/* One change event. Returns true when the stream was invalidated (the
 * caller reopens it after the invalidate's token). */
static bool
on_event(aspen_runtime_t *rt, cs_t *cs, const bson_t *ev)
{
   bson_iter_t it;
   const char *op = NULL;
   if (bson_iter_init_find(&it, ev, "operationType") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      op = bson_iter_utf8(&it, NULL);
   }
   bool invalidated = op && strcmp(op, "invalidate") == 0;
   if (!invalidated) {
      bson_t meta;
      aspen_rt_mark(rt, 0, -1, cs->has_token ? &cs->token : NULL);
      event_meta(cs, ev, op, &meta);
      int64_t ts = event_time_ms(ev);
      int64_t ct = cluster_time_ms(ev);
      if (ct != INT64_MIN) {
         aspen_rt_source_lag(rt, aspen_clock_now_ms() - ct);
      }
      bson_iter_t ns, coll;
      if (cs->n_sync) {
         /* The event's collection (a server that sends no ns watches
          * the one collection). The bytes: the event, or its document,
          * as the runtime counts them. */
         const char *name = cs->o.coll;
         if (bson_iter_init_find(&ns, ev, "ns") &&
             BSON_ITER_HOLDS_DOCUMENT(&ns) && bson_iter_recurse(&ns, &coll) &&
             bson_iter_find(&coll, "coll") && BSON_ITER_HOLDS_UTF8(&coll)) {
            name = bson_iter_utf8(&coll, NULL);
         }
         uint32_t len = ev->len;
         const uint8_t *data;
         if (cs->o.full_document_only &&
             bson_iter_init_find(&it, ev, "fullDocument") &&
             BSON_ITER_HOLDS_DOCUMENT(&it)) {
            bson_iter_document(&it, &len, &data);
         }
         if (name) {
            sync_count(cs, name, len);
         }
      }
      if (!cs->o.full_document_only) {
         aspen_rt_ingest(rt, ev, &meta, ts);
      } else if (bson_iter_init_find(&it, ev, "fullDocument") &&
                 BSON_ITER_HOLDS_DOCUMENT(&it)) {
         bson_t full;
         view_of(&it, &full);
         aspen_rt_ingest(rt, &full, &meta, ts);
      } else {
         char reason[160];
         snprintf(reason, sizeof reason,
                  "fullDocumentOnly is set but the '%s' change event has no "
                  "fullDocument",
                  op ? op : "?");
         aspen_rt_dead_letter(rt, ev, &meta, reason);
      }
      bson_destroy(&meta);
   }
   /* The position moves only once the event has gone down the pipeline. */
   if (bson_iter_init_find(&it, ev, "_id") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_t token;
      view_of(&it, &token);
      set_token(cs, &token);
      aspen_rt_mark_token(rt, &token);
   }
   return invalidated;
}

/* Reopens the watch after `why`, from the last token, until it works or
 * the processor stops. False when it should not (stopped, or a
 * non-resumable error, which has failed the processor). */
static bool
reopen(aspen_runtime_t *rt, cs_t *cs, const char *why)
{
   const char *name = aspen_rt_processor_name(rt);
   int64_t backoff = RETRY_FIRST_MS;
   mongoc_change_stream_destroy(cs->stream);
   cs->stream = NULL;
   aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, name,
              "the %s was interrupted (%s); resuming it", cs->what, why);
   for (int attempt = 1;; attempt++) {
      if (aspen_rt_wait(rt, backoff)) {
         return false;
      }
      bson_error_t berr;
      bool resumable;
      if (open_stream(cs, &berr, &resumable)) {
         aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, name,
                    "resumed the %s after %d attempt(s)", cs->what, attempt);
         return true;
      }
      if (!resumable) {
         char msg[ASPEN_ERROR_MSG_MAX];
         describe_failure(cs, "cannot resume", &berr, false, msg, sizeof msg);
         aspen_rt_fail(rt, msg);
         return false;
      }
      aspen_logf(ASPEN_LOG_WARNING, ASPEN_LOG_DOMAIN, name,
                 "resuming the %s failed (attempt %d: %s); retrying in %lld "
                 "ms",
                 cs->what, attempt, berr.message, (long long) backoff);
      backoff = backoff * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : backoff * 2;
   }
}

/* ---- the initial sync ------------------------------------------------------ */

#define SYNC_KEY "aspenInitialSync"
#define SYNC_BATCH 1000

/* {initialSync: {phase}} in a document's _stream_meta.source: "initialSync"
 * while the collections are copied, "changeStream" after. */
static void
append_phase(bson_t *src, bool syncing)
{
   bson_t is;
   BSON_APPEND_DOCUMENT_BEGIN(src, "initialSync", &is);
   BSON_APPEND_UTF8(&is, "phase", syncing ? "initialSync" : "changeStream");
   bson_append_document_end(src, &is);
}

static const char *const figure_keys[] = {"est", "copied", "inCount",
                                          "inSize"};

static int64_t *
figure(const cs_t *cs, int f)
{
   int64_t *const all[] = {cs->est, cs->copied, cs->in_count, cs->in_size};
   return all[f];
}

/* The per-collection figures as arrays of Longs: {est: [...], copied,
 * inCount, inSize}. */
static void
append_figures(const cs_t *cs, bson_t *out)
{
   for (int f = 0; f < 4; f++) {
      const int64_t *v = figure(cs, f);
      bson_t arr;
      BSON_APPEND_ARRAY_BEGIN(out, figure_keys[f], &arr);
      for (int j = 0; j < cs->n_sync; j++) {
         char key[16];
         const char *k;
         bson_uint32_to_string((uint32_t) j, &k, key, sizeof key);
         BSON_APPEND_INT64(&arr, k, v[j]);
      }
      bson_append_array_end(out, &arr);
   }
}

static void
sync_free(cs_t *cs)
{
   for (int f = 0; f < 4; f++) {
      free(figure(cs, f));
   }
}

/* Zeroed figures for the n_sync collections. */
static void
sync_alloc(cs_t *cs)
{
   size_t n = cs->n_sync > 0 ? (size_t) cs->n_sync : 1;
   sync_free(cs);
   cs->est = aspen_xcalloc(n, sizeof *cs->est);
   cs->copied = aspen_xcalloc(n, sizeof *cs->copied);
   cs->in_count = aspen_xcalloc(n, sizeof *cs->in_count);
   cs->in_size = aspen_xcalloc(n, sizeof *cs->in_size);
}

/* The index of `coll` in sync_colls, -1 when it is not there. */
static int
sync_index(const cs_t *cs, const char *coll)
{
   bson_iter_t it;
   int j = 0;
   if (bson_iter_init(&it, &cs->sync_colls)) {
      for (; bson_iter_next(&it); j++) {
         if (BSON_ITER_HOLDS_UTF8(&it) &&
             strcmp(bson_iter_utf8(&it, NULL), coll) == 0) {
            return j;
         }
      }
   }
   return -1;
}

/* One message read from `coll` (copied or a change event), `len` bytes. */
static void
sync_count(cs_t *cs, const char *coll, uint32_t len)
{
   int j = sync_index(cs, coll);
   if (j >= 0) {
      cs->in_count[j]++;
      cs->in_size[j] += len;
      cs->moved = true;
   }
}

/* Publishes the figures for stats (aspen__change_stream_operator_stats)
 * when they moved: {db, colls, i, syncing, failed, est, copied, inCount,
 * inSize}. */
static void
sync_publish(aspen_runtime_t *rt, cs_t *cs)
{
   if (!cs->moved || !cs->n_sync) {
      return;
   }
   cs->moved = false;
   bson_t fig = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&fig, "db", cs->o.db);
   BSON_APPEND_ARRAY(&fig, "colls", &cs->sync_colls);
   BSON_APPEND_INT32(&fig, "i", cs->sync_i);
   BSON_APPEND_BOOL(&fig, "syncing", cs->syncing);
   BSON_APPEND_BOOL(&fig, "failed", cs->sync_failed);
   append_figures(cs, &fig);
   aspen_rt_source_figures(rt, &fig);
   bson_destroy(&fig);
}

/* The estimated count of each collection (the `count` command without a
 * query, as estimatedDocumentCount), taken when the sync is planned. */
static bool
sync_estimate(cs_t *cs, aspen_error_t *err)
{
   bson_iter_t it;
   int j = 0;
   bson_iter_init(&it, &cs->sync_colls);
   for (; bson_iter_next(&it) && j < cs->n_sync; j++) {
      const char *coll = bson_iter_utf8(&it, NULL);
      mongoc_collection_t *c =
         mongoc_client_get_collection(cs->client, cs->o.db, coll);
      bson_error_t berr;
      int64_t n = mongoc_collection_estimated_document_count(c, NULL, NULL,
                                                             NULL, &berr);
      mongoc_collection_destroy(c);
      if (n < 0) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                         "cannot count %s.%s for the initial sync "
                         "(connection '%s'): %s",
                         cs->o.db, coll, cs->conn->name, berr.message);
         return false;
      }
      cs->est[j] = n;
   }
   return true;
}

/* The source's position while it copies: the checkpoint keeps it where a
 * change stream's resume token would be, so a restart resumes the copy
 * after the last document a checkpoint covers (and stats show it). */
static void
sync_token_build(const cs_t *cs, bson_t *out)
{
   bson_t s;
   bson_init(out);
   BSON_APPEND_DOCUMENT_BEGIN(out, SYNC_KEY, &s);
   BSON_APPEND_DOCUMENT(&s, "startAt", &cs->start_at);
   BSON_APPEND_ARRAY(&s, "colls", &cs->sync_colls);
   BSON_APPEND_INT32(&s, "i", cs->sync_i);
   bson_iter_t it;
   if (bson_iter_init_find(&it, &cs->last_id, "_id")) {
      bson_append_iter(&s, "lastId", -1, &it);
   }
   BSON_APPEND_INT64(&s, "synced", cs->synced);
   append_figures(cs, &s);
   bson_append_document_end(out, &s);
}

/* The per-collection figures in `doc` (a sync token's, or the figures
 * sync_publish published): sync_colls must hold its collections already;
 * a figure `doc` lacks stays 0. */
static void
figures_read(cs_t *cs, const bson_t *doc)
{
   bson_iter_t s;
   sync_alloc(cs);
   if (bson_iter_init(&s, doc)) {
      while (bson_iter_next(&s)) {
         for (int f = 0; f < 4; f++) {
            bson_iter_t a;
            if (strcmp(bson_iter_key(&s), figure_keys[f]) != 0 ||
                !BSON_ITER_HOLDS_ARRAY(&s) || !bson_iter_recurse(&s, &a)) {
               continue;
            }
            for (int j = 0; bson_iter_next(&a) && j < cs->n_sync; j++) {
               figure(cs, f)[j] = bson_iter_as_int64(&a);
            }
         }
      }
   }
   cs->moved = true;
}

/* A restart after the copy: the checkpoint's position (`pos`) holds a
 * change stream's resume token, and beside it the figures the source last
 * published (sourceFigures); those of a finished sync come back, so
 * verbose stats keep its targetStats. A checkpoint from before they were
 * kept has none: targetStats stays absent. */
static void
sync_restore_done(cs_t *cs, const bson_t *pos)
{
   bson_iter_t it, c;
   bson_t fig, colls;
   if (!bson_iter_init_find(&it, pos, "sourceFigures") ||
       !BSON_ITER_HOLDS_DOCUMENT(&it)) {
      return;
   }
   view_of(&it, &fig);
   if (!bson_iter_init_find(&c, &fig, "colls") || !BSON_ITER_HOLDS_ARRAY(&c) ||
       (bson_iter_init_find(&it, &fig, "syncing") && bson_iter_as_bool(&it))) {
      return;
   }
   view_of(&c, &colls);
   bson_reinit(&cs->sync_colls);
   bson_concat(&cs->sync_colls, &colls);
   cs->n_sync = (int) bson_count_keys(&cs->sync_colls);
   cs->sync_i = cs->n_sync;
   figures_read(cs, &fig);
}

/* A checkpoint's token: a sync token (the copy was under way) sets the
 * sync state and *is_sync; a resume token is left to the caller. */
static bool
sync_restore(cs_t *cs, const bson_t *token, bool *is_sync, aspen_error_t *err)
{
   bson_iter_t it, s;
   *is_sync = false;
   if (!bson_iter_init_find(&it, token, SYNC_KEY)) {
      return true;
   }
   *is_sync = true;
   bool ok = BSON_ITER_HOLDS_DOCUMENT(&it) && bson_iter_recurse(&it, &s);
   bool has_start = false, has_colls = false;
   while (ok && bson_iter_next(&s)) {
      const char *k = bson_iter_key(&s);
      if (strcmp(k, "startAt") == 0 && BSON_ITER_HOLDS_DOCUMENT(&s)) {
         bson_t v;
         view_of(&s, &v);
         bson_reinit(&cs->start_at);
         bson_concat(&cs->start_at, &v);
         has_start = true;
      } else if (strcmp(k, "colls") == 0 && BSON_ITER_HOLDS_ARRAY(&s)) {
         bson_t v;
         view_of(&s, &v);
         bson_reinit(&cs->sync_colls);
         bson_concat(&cs->sync_colls, &v);
         cs->n_sync = (int) bson_count_keys(&cs->sync_colls);
         has_colls = true;
      } else if (strcmp(k, "i") == 0 && BSON_ITER_HOLDS_INT32(&s)) {
         cs->sync_i = bson_iter_int32(&s);
      } else if (strcmp(k, "lastId") == 0) {
         bson_reinit(&cs->last_id);
         bson_append_iter(&cs->last_id, "_id", 3, &s);
      } else if (strcmp(k, "synced") == 0 && BSON_ITER_HOLDS_INT64(&s)) {
         cs->synced = bson_iter_int64(&s);
      }
   }
   if (ok && has_colls) {
      /* The figures, once the number of collections is known (a
       * checkpoint from before they were kept has none: zeros). */
      bson_t v;
      view_of(&it, &v);
      figures_read(cs, &v);
   }
   if (!ok || !has_start || !has_colls || cs->sync_i < 0 ||
       cs->sync_i > cs->n_sync) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorCannotResumeFromSource,
                      "the checkpoint's initial-sync position is not one "
                      "aspen wrote; start the processor with "
                      "resumeFromCheckpoint: false");
      return false;
   }
   return true;
}

/* The collections to copy: the $source's coll (one or a list), else every
 * collection of its database as it is now (the set is fixed then, as in
 * ASP: later collections are not copied). */
static bool
sync_list_colls(cs_t *cs, aspen_error_t *err)
{
   bson_reinit(&cs->sync_colls);
   int n = 0;
   char key[16];
   const char *k;
   if (cs->o.coll) {
      BSON_APPEND_UTF8(&cs->sync_colls, "0", cs->o.coll);
      n = 1;
   } else if (cs->o.has_coll_list) {
      bson_concat(&cs->sync_colls, &cs->o.colls);
      n = (int) bson_count_keys(&cs->o.colls);
   } else {
      mongoc_database_t *db = mongoc_client_get_database(cs->client, cs->o.db);
      bson_t opts = BSON_INITIALIZER, filter;
      BSON_APPEND_DOCUMENT_BEGIN(&opts, "filter", &filter);
      BSON_APPEND_UTF8(&filter, "type", "collection");
      bson_append_document_end(&opts, &filter);
      mongoc_cursor_t *cur = mongoc_database_find_collections_with_opts(db, &opts);
      const bson_t *doc;
      bson_iter_t it;
      while (mongoc_cursor_next(cur, &doc)) {
         if (bson_iter_init_find(&it, doc, "type") && BSON_ITER_HOLDS_UTF8(&it) &&
             strcmp(bson_iter_utf8(&it, NULL), "collection") != 0) {
            continue; /* a view or a time-series collection */
         }
         if (!bson_iter_init_find(&it, doc, "name") || !BSON_ITER_HOLDS_UTF8(&it) ||
             strncmp(bson_iter_utf8(&it, NULL), "system.", 7) == 0) {
            continue;
         }
         bson_uint32_to_string((uint32_t) n++, &k, key, sizeof key);
         BSON_APPEND_UTF8(&cs->sync_colls, k, bson_iter_utf8(&it, NULL));
      }
      bson_error_t berr;
      bool failed = mongoc_cursor_error(cur, &berr);
      mongoc_cursor_destroy(cur);
      bson_destroy(&opts);
      mongoc_database_destroy(db);
      if (failed) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                         "cannot list the collections of %s for the initial "
                         "sync (connection '%s'): %s",
                         cs->o.db, cs->conn->name, berr.message);
         return false;
      }
   }
   cs->n_sync = n;
   sync_alloc(cs);
   cs->moved = true;
   return true;
}

/* Opens the initial sync: a new one lists its collections, checks them
 * against the tier (ASP: SP2 and SP5 sync 1 collection, SP10 5, SP30 10,
 * SP50 50) and takes the change stream's resume token before copying
 * anything, so that nothing written meanwhile is missed; a resumed one
 * has all that from its checkpoint. */
static bool
sync_start(aspen_runtime_t *rt, cs_t *cs, bool resumed, aspen_error_t *err)
{
   const char *name = aspen_rt_processor_name(rt);
   if (!resumed) {
      if (!sync_list_colls(cs, err)) {
         return false;
      }
      const char *tier;
      int64_t limit = aspen_rt_tier_initial_sync_colls(rt, &tier);
      if (limit > 0 && cs->n_sync > limit) {
         const aspen_tier_t *need = aspen_tier_for_initial_sync(cs->n_sync);
         aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                         "StreamProcessorInvalidOptions: the initial sync "
                         "copies %d collections, more than the %lld tier %s "
                         "allows: use tier %s or higher",
                         cs->n_sync, (long long) limit, tier,
                         need ? need->name : ASPEN_TIER_MAX);
         return false;
      }
      if (!sync_estimate(cs, err)) {
         return false;
      }
      bson_error_t berr;
      bool resumable;
      if (!open_stream(cs, &berr, &resumable)) {
         char msg[ASPEN_ERROR_MSG_MAX];
         int32_t code = describe_failure(cs, "cannot open", &berr, resumable,
                                         msg, sizeof msg);
         aspen_error_set(err, code, "%s", msg);
         return false;
      }
      const bson_t *pbrt = mongoc_change_stream_get_resume_token(cs->stream);
      if (!pbrt || bson_empty(pbrt)) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                         "cannot start the initial sync: the server gave no "
                         "resume token for the %s",
                         cs->what);
         return false;
      }
      bson_reinit(&cs->start_at);
      bson_concat(&cs->start_at, pbrt);
      mongoc_change_stream_destroy(cs->stream);
      cs->stream = NULL;
   }
   cs->syncing = cs->sync_i < cs->n_sync;
   bson_t tok;
   sync_token_build(cs, &tok);
   aspen_rt_mark_token(rt, &tok);
   bson_destroy(&tok);
   sync_publish(rt, cs);
   aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, name,
              "%s the initial sync of %d collection(s) of %s (at collection "
              "%d, %lld document(s) copied), then the %s",
              resumed ? "resuming" : "starting", cs->n_sync, cs->o.db,
              cs->sync_i, (long long) cs->synced, cs->what);
   return true;
}

/* One copied document, as an insert change event (or only the document,
 * with fullDocumentOnly). */
static void
sync_ingest(aspen_runtime_t *rt, cs_t *cs, const char *coll, const bson_t *doc)
{
   bson_t before, ev, meta, src, ns, key;
   bson_iter_t it;
   bool has_id = bson_iter_init_find(&it, doc, "_id");
   uint32_t len = doc->len;
   sync_token_build(cs, &before);
   aspen_rt_mark(rt, 0, -1, &before);
   bson_destroy(&before);

   bson_init(&meta);
   BSON_APPEND_DOCUMENT_BEGIN(&meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "atlas");
   BSON_APPEND_UTF8(&src, "operationType", "insert");
   BSON_APPEND_DOCUMENT_BEGIN(&src, "ns", &ns);
   BSON_APPEND_UTF8(&ns, "db", cs->o.db);
   BSON_APPEND_UTF8(&ns, "coll", coll);
   bson_append_document_end(&src, &ns);
   BSON_APPEND_DOCUMENT_BEGIN(&src, "documentKey", &key);
   if (has_id) {
      bson_append_iter(&key, "_id", 3, &it);
   }
   bson_append_document_end(&src, &key);
   append_phase(&src, true);
   bson_append_document_end(&meta, &src);

   if (cs->o.full_document_only) {
      aspen_rt_ingest(rt, doc, &meta, INT64_MIN);
   } else {
      bson_init(&ev);
      BSON_APPEND_UTF8(&ev, "operationType", "insert");
      BSON_APPEND_DOCUMENT(&ev, "fullDocument", doc);
      BSON_APPEND_DOCUMENT_BEGIN(&ev, "ns", &ns);
      BSON_APPEND_UTF8(&ns, "db", cs->o.db);
      BSON_APPEND_UTF8(&ns, "coll", coll);
      bson_append_document_end(&ev, &ns);
      BSON_APPEND_DOCUMENT_BEGIN(&ev, "documentKey", &key);
      if (has_id) {
         bson_append_iter(&key, "_id", 3, &it);
      }
      bson_append_document_end(&ev, &key);
      aspen_rt_ingest(rt, &ev, &meta, INT64_MIN);
      len = ev.len; /* the bytes the runtime counts */
      bson_destroy(&ev);
   }
   bson_destroy(&meta);

   bson_reinit(&cs->last_id);
   if (has_id) {
      bson_append_iter(&cs->last_id, "_id", 3, &it);
   }
   cs->synced++;
   cs->copied[cs->sync_i]++;
   cs->in_count[cs->sync_i]++;
   cs->in_size[cs->sync_i] += len;
   cs->moved = true;
   bson_t after;
   sync_token_build(cs, &after);
   aspen_rt_mark_token(rt, &after);
   bson_destroy(&after);
}

/* Copies one collection from after last_id, in _id order. False when the
 * processor stops or fails (a read error fails it, as in ASP: one
 * collection that cannot be synced fails the processor). */
static bool
sync_one(aspen_runtime_t *rt, cs_t *cs, const char *coll, int64_t *last_flush)
{
   mongoc_collection_t *c =
      mongoc_client_get_collection(cs->client, cs->o.db, coll);
   bson_t filter = BSON_INITIALIZER, gt, opts = BSON_INITIALIZER, sort;
   bson_iter_t it;
   if (bson_iter_init_find(&it, &cs->last_id, "_id")) {
      BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &gt);
      bson_append_iter(&gt, "$gt", 3, &it);
      bson_append_document_end(&filter, &gt);
   }
   BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
   BSON_APPEND_INT32(&sort, "_id", 1);
   bson_append_document_end(&opts, &sort);
   BSON_APPEND_INT32(&opts, "batchSize", SYNC_BATCH);
   mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts,
                                                           NULL);
   const bson_t *doc;
   bool ok = true;
   while (!aspen_rt_stopping(rt) && mongoc_cursor_next(cur, &doc)) {
      sync_ingest(rt, cs, coll, doc);
      int64_t now_ms = aspen_clock_mono_ms();
      if (now_ms - *last_flush >= FLUSH_EVERY_MS) {
         *last_flush = now_ms;
         sync_publish(rt, cs);
         if (aspen_rt_wait(rt, 0)) {
            ok = false;
            break;
         }
      }
   }
   bson_error_t berr;
   if (ok && !aspen_rt_stopping(rt) && mongoc_cursor_error(cur, &berr)) {
      char msg[ASPEN_ERROR_MSG_MAX];
      snprintf(msg, sizeof msg,
               "the initial sync cannot read %s.%s (connection '%s'): %s",
               cs->o.db, coll, cs->conn->name, berr.message);
      cs->sync_failed = cs->moved = true;
      sync_publish(rt, cs);
      aspen_rt_fail(rt, msg);
      ok = false;
   }
   ok = ok && !aspen_rt_stopping(rt);
   mongoc_cursor_destroy(cur);
   bson_destroy(&filter);
   bson_destroy(&opts);
   mongoc_collection_destroy(c);
   return ok;
}

/* The copy, then the change stream opened at start_at. False when the
 * processor stops or fails meanwhile. */
static bool
sync_run(aspen_runtime_t *rt, cs_t *cs)
{
   int64_t last_flush = aspen_clock_mono_ms();
   while (cs->sync_i < cs->n_sync) {
      bson_iter_t it;
      char key[16];
      const char *k;
      bson_uint32_to_string((uint32_t) cs->sync_i, &k, key, sizeof key);
      if (!bson_iter_init_find(&it, &cs->sync_colls, k) ||
          !BSON_ITER_HOLDS_UTF8(&it)) {
         aspen_rt_fail(rt, "the initial sync's collection list is broken");
         return false;
      }
      if (!sync_one(rt, cs, bson_iter_utf8(&it, NULL), &last_flush)) {
         return false;
      }
      cs->sync_i++;
      cs->moved = true;
      bson_reinit(&cs->last_id);
      bson_t tok;
      sync_token_build(cs, &tok);
      aspen_rt_mark_token(rt, &tok);
      bson_destroy(&tok);
   }
   cs->syncing = false;
   cs->moved = true;
   sync_publish(rt, cs);
   aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, aspen_rt_processor_name(rt),
              "the initial sync copied %lld document(s) of %d collection(s); "
              "opening the %s where the sync began",
              (long long) cs->synced, cs->n_sync, cs->what);
   set_token(cs, &cs->start_at);
   aspen_rt_mark_token(rt, &cs->start_at);
   bson_error_t berr;
   bool resumable;
   if (open_stream(cs, &berr, &resumable)) {
      return true;
   }
   if (!resumable) {
      char msg[ASPEN_ERROR_MSG_MAX];
      describe_failure(cs, "cannot open", &berr, false, msg, sizeof msg);
      aspen_rt_fail(rt, msg);
      return false;
   }
   return reopen(rt, cs, berr.message);
}

/* Stats of a change-stream $source (commands/stats.c): a sync token
 * becomes {initialSync: {phase: "initialSync", ...}} (with no
 * changeStreamState, which has no resume token yet); after the sync,
 * changeStreamState and {initialSync: {phase: "changeStream"}}. */
void
aspen__change_stream_stats_append(const bson_t *pipeline, const bson_t *token,
                                  bson_t *st)
{
   bson_iter_t it, s;
   bson_t is;
   if (token && bson_iter_init_find(&it, token, SYNC_KEY) &&
       BSON_ITER_HOLDS_DOCUMENT(&it) && bson_iter_recurse(&it, &s)) {
      int32_t i = 0, n = 0;
      int64_t synced = 0;
      const char *current = NULL;
      bson_iter_t colls;
      while (bson_iter_next(&s)) {
         const char *k = bson_iter_key(&s);
         if (strcmp(k, "i") == 0 && BSON_ITER_HOLDS_INT32(&s)) {
            i = bson_iter_int32(&s);
         } else if (strcmp(k, "synced") == 0 && BSON_ITER_HOLDS_INT64(&s)) {
            synced = bson_iter_int64(&s);
         } else if (strcmp(k, "colls") == 0 && BSON_ITER_HOLDS_ARRAY(&s) &&
                    bson_iter_recurse(&s, &colls)) {
            while (bson_iter_next(&colls)) {
               if (n++ == i && BSON_ITER_HOLDS_UTF8(&colls)) {
                  current = bson_iter_utf8(&colls, NULL);
               }
            }
         }
      }
      BSON_APPEND_DOCUMENT_BEGIN(st, "initialSync", &is);
      BSON_APPEND_UTF8(&is, "phase", "initialSync");
      BSON_APPEND_INT32(&is, "collectionsTotal", n);
      BSON_APPEND_INT32(&is, "collectionsSynced", i);
      if (current) {
         BSON_APPEND_UTF8(&is, "collection", current);
      }
      BSON_APPEND_INT64(&is, "documentsSynced", synced);
      bson_append_document_end(st, &is);
      return;
   }
   if (token && !bson_empty(token)) {
      BSON_APPEND_DOCUMENT(st, "changeStreamState", token);
   }
   /* The definition's first stage: {$source: {..., initialSync: {enable:
    * true}}}. */
   bson_iter_t p0, src, en;
   if (pipeline && bson_iter_init(&p0, pipeline) && bson_iter_next(&p0) &&
       BSON_ITER_HOLDS_DOCUMENT(&p0) && bson_iter_recurse(&p0, &src) &&
       bson_iter_find(&src, "$source") && BSON_ITER_HOLDS_DOCUMENT(&src) &&
       bson_iter_recurse(&src, &en) &&
       bson_iter_find_descendant(&en, "initialSync.enable", &s) &&
       BSON_ITER_HOLDS_BOOL(&s) && bson_iter_bool(&s)) {
      BSON_APPEND_DOCUMENT_BEGIN(st, "initialSync", &is);
      BSON_APPEND_UTF8(&is, "phase", "changeStream");
      bson_append_document_end(st, &is);
   }
}

/* ASP's figures of a collection's sync from `fig` (sync_publish), at
 * index j: {estimatedDocs, copiedDocs, status}. */
static void
append_target_sync(bson_t *t, const bson_t *fig, int j, int i, bool syncing,
                   bool failed, int64_t *sums)
{
   int64_t v[2] = {0, 0};
   for (int f = 0; f < 2; f++) {
      bson_iter_t a;
      char path[32];
      snprintf(path, sizeof path, "%s.%d", figure_keys[f], j);
      if (bson_iter_init(&a, fig) && bson_iter_find_descendant(&a, path, &a)) {
         v[f] = bson_iter_as_int64(&a);
      }
      sums[f] += v[f];
   }
   const char *status = !syncing || j < i ? "completed"
                        : j > i           ? "pending"
                        : failed          ? "failed"
                                          : "in_progress";
   bson_t is;
   BSON_APPEND_DOCUMENT_BEGIN(t, "initialSync", &is);
   BSON_APPEND_INT64(&is, "estimatedDocs", v[0]);
   BSON_APPEND_INT64(&is, "copiedDocs", v[1]);
   BSON_APPEND_UTF8(&is, "status", status);
   bson_append_document_end(t, &is);
}

void
aspen__change_stream_operator_stats(const bson_t *fig, int64_t scale,
                                    bson_t *op)
{
   bson_iter_t it, colls;
   if (!bson_iter_init_find(&it, fig, "colls") || !BSON_ITER_HOLDS_ARRAY(&it) ||
       !bson_iter_recurse(&it, &colls)) {
      return;
   }
   const char *db = "";
   int32_t i = 0;
   bool syncing = false, failed = false;
   if (bson_iter_init_find(&it, fig, "db") && BSON_ITER_HOLDS_UTF8(&it)) {
      db = bson_iter_utf8(&it, NULL);
   }
   if (bson_iter_init_find(&it, fig, "i") && BSON_ITER_HOLDS_INT32(&it)) {
      i = bson_iter_int32(&it);
   }
   if (bson_iter_init_find(&it, fig, "syncing")) {
      syncing = bson_iter_as_bool(&it);
   }
   if (bson_iter_init_find(&it, fig, "failed")) {
      failed = bson_iter_as_bool(&it);
   }
   int64_t sums[2] = {0, 0};
   bson_t arr, t;
   BSON_APPEND_ARRAY_BEGIN(op, "targetStats", &arr);
   for (int j = 0; bson_iter_next(&colls); j++) {
      char key[16], path[32];
      const char *k;
      bson_uint32_to_string((uint32_t) j, &k, key, sizeof key);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, k, &t);
      BSON_APPEND_UTF8(&t, "db", db);
      BSON_APPEND_UTF8(&t, "coll",
                       BSON_ITER_HOLDS_UTF8(&colls)
                          ? bson_iter_utf8(&colls, NULL)
                          : "");
      int64_t count = 0, size = 0;
      snprintf(path, sizeof path, "inCount.%d", j);
      if (bson_iter_init(&it, fig) && bson_iter_find_descendant(&it, path, &it)) {
         count = bson_iter_as_int64(&it);
      }
      snprintf(path, sizeof path, "inSize.%d", j);
      if (bson_iter_init(&it, fig) && bson_iter_find_descendant(&it, path, &it)) {
         size = bson_iter_as_int64(&it);
      }
      BSON_APPEND_INT64(&t, "inputMessageCount", count);
      /* A plain number, as the processor's inputMessageSize. */
      BSON_APPEND_DOUBLE(&t, "inputMessageSize", (double) (size / scale));
      append_target_sync(&t, fig, j, i, syncing, failed, sums);
      bson_append_document_end(&arr, &t);
   }
   bson_append_array_end(op, &arr);
   bson_t is;
   BSON_APPEND_DOCUMENT_BEGIN(op, "initialSync", &is);
   BSON_APPEND_INT64(&is, "estimatedDocs", sums[0]);
   BSON_APPEND_INT64(&is, "copiedDocs", sums[1]);
   bson_append_document_end(op, &is);
}

/* The catalog's check (builtins.c): ASP runs no window stage after an
 * initial sync's $source. */
bool
aspen__change_stream_check(const aspen_pipeline_t *pl, aspen_error_t *err)
{
   cs_opts_t o;
   aspen_parse_ctx_t pc = {0};
   if (!pl || pl->source.ops != &aspen_source_change_stream_ops ||
       !parse_opts(&pl->source.spec, &o, &pc, err) || !o.initial_sync ||
       !pl->has_window) {
      return true;
   }
   aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                   "a window stage cannot follow a $source with "
                   "initialSync enabled");
   return false;
}

static void
cs_run(aspen_runtime_t *rt, void *state)
{
   cs_t *cs = state;
   int64_t last_flush = 0;
   if (cs->syncing && !sync_run(rt, cs)) {
      return;
   }
   while (!aspen_rt_stopping(rt)) {
      const bson_t *ev = NULL;
      bool got = mongoc_change_stream_next(cs->stream, &ev);
      if (got) {
         if (on_event(rt, cs, ev)) {
            if (!reopen(rt, cs, "invalidated")) {
               return;
            }
            continue;
         }
      } else {
         /* An empty getMore still moves the position (post-batch token). */
         const bson_t *pbrt = mongoc_change_stream_get_resume_token(cs->stream);
         if (pbrt && !bson_empty(pbrt)) {
            set_token(cs, pbrt);
            aspen_rt_mark_token(rt, pbrt);
         }
         aspen_rt_source_lag(rt, 0); /* caught up */
         bson_error_t berr;
         const bson_t *reply = NULL;
         if (mongoc_change_stream_error_document(cs->stream, &berr, &reply)) {
            if (!is_resumable(&berr, reply)) {
               char msg[ASPEN_ERROR_MSG_MAX];
               describe_failure(cs, "error reading", &berr, false, msg,
                                sizeof msg);
               aspen_rt_fail(rt, msg);
               return;
            }
            if (!reopen(rt, cs, berr.message)) {
               return;
            }
            continue;
         }
      }
      /* Idle, or busy for a while: let the sinks flush. */
      int64_t now_ms = aspen_clock_mono_ms();
      if (!got || now_ms - last_flush >= FLUSH_EVERY_MS) {
         last_flush = now_ms;
         sync_publish(rt, cs);
         if (aspen_rt_wait(rt, 0)) {
            return;
         }
      }
   }
}

static void
cs_close(void *state)
{
   cs_destroy(state);
}

const aspen_source_ops_t aspen_source_change_stream_ops = {
   .type = "atlas",
   .operator_name = "ChangeStreamConsumerOperator",
   .what = "a change stream $source",
   .parse_option = cs_parse_option,
   .parse_done = cs_parse_done,
   .open = cs_open,
   .run = cs_run,
   .close = cs_close,
};
