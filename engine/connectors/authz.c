/*
 * authz.c - what stream processors may reach through Atlas connections.
 *
 * Every database access of a processor goes through an Atlas connection,
 * with the credentials of that connection's URI (for the backing
 * deployment: aspen's own). As in ASP, each connection runs as one
 * database role, its dbRoleToExecute (conn_atlas.c reads it; the
 * default is readWriteAnyDatabase), and this file holds the processors to
 * that role: a change-stream $source needs find and changeStream on what
 * it watches, $lookup and $cachedLookup find on their collection (and
 * whatever their pipeline's stages reach), $merge insert and update
 * (remove for whenMatched "delete"), a time-series $emit createCollection
 * and insert, the DLQ insert.
 *
 * Literal namespaces are checked when a processor is created, modified and
 * started (aspen__pipeline_authorize): a refusal is error 422
 * StreamProcessorAtlasUnauthorizedError. Namespaces a $merge or $emit
 * computes per document are checked per document by the collection writer
 * (coll_writer.c), which dead-letters a refused one and carries on.
 *
 * The engine does not know users or roles: the proxy hands it an
 * authorization hook (engine_types.h, aspen_engine_authz_t) that resolves
 * a role into a grant and answers "does this grant allow these actions on
 * this namespace". Without a hook nothing is checked.
 */
#include "connectors/authz.h"
#include "connectors/conn_atlas.h"
#include "connectors/connectors.h"

#include <string.h>

static const char *
act_verb(unsigned acts)
{
   return (acts & (ASPEN_ENGINE_ACT_FIND | ASPEN_ENGINE_ACT_CHANGE_STREAM))
             ? "read"
             : "write";
}

bool
aspen__conn_authorize(const aspen_conn_t *conn, unsigned acts,
                      const char *db, const char *coll, aspen_error_t *err)
{
   const aspen_conn_atlas_t *a = aspen__conn_atlas(conn);
   const char *missing = NULL;
   if (!a || !a->grant || a->authz.allows(a->grant, acts, db, coll, &missing)) {
      return true;
   }
   char ns[600];
   if (!db) {
      snprintf(ns, sizeof ns, "every database");
   } else if (!coll) {
      snprintf(ns, sizeof ns, "database %s", db);
   } else {
      snprintf(ns, sizeof ns, "%s.%s", db, coll);
   }
   aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasUnauthorizedError,
                   "connection '%s' is not authorized to %s %s: its "
                   "dbRoleToExecute (%s) does not grant %s there",
                   conn->name, act_verb(acts), ns, a->role,
                   missing ? missing : "it");
   return false;
}

bool
aspen__conn_authorize_stages(const aspen_conn_t *conn, const char *db,
                             const bson_t *pipeline, aspen_error_t *err)
{
   const aspen_conn_atlas_t *a = aspen__conn_atlas(conn);
   char why[ASPEN_ERROR_MSG_MAX];
   if (!a || !a->grant || !a->authz.allows_stages ||
       a->authz.allows_stages(a->grant, db, pipeline, why, sizeof why)) {
      return true;
   }
   aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasUnauthorizedError,
                   "connection '%s' is not authorized to run the pipeline "
                   "it is given on database %s: its dbRoleToExecute (%s) does "
                   "not grant %s",
                   conn->name, db, a->role, why);
   return false;
}

/* ---- a processor's literal namespaces -------------------------------------- */

/* Appends " (at <where>)" to a refusal. */
static bool
refused_at(aspen_error_t *err, const char *where)
{
   char msg[ASPEN_ERROR_MSG_MAX];
   snprintf(msg, sizeof msg, "%s (at %s)", err->message, where);
   aspen_error_set(err, err->code, "%s", msg);
   return false;
}

/* The Atlas connection `spec`'s connectionName names, or NULL. */
static const aspen_conn_t *
atlas_conn(const bson_t *spec, const aspen_conns_t *conns)
{
   const char *name = aspen_bson_utf8(spec, "connectionName");
   const aspen_conn_t *c = name ? aspen_conns_find(conns, name) : NULL;
   return c && aspen__conn_atlas(c) ? c : NULL;
}

/* A literal name: a string that is not an expression ("$field"). */
static const char *
literal_of(const bson_t *doc, const char *key)
{
   const char *v = aspen_bson_utf8(doc, key);
   return v && v[0] != '$' ? v : NULL;
}

/* Writes to {connectionName, db, coll} (`spec`; db/coll literal, or
 * checked per document when either is an expression). */
static bool
check_write(const bson_t *spec, const aspen_conns_t *conns, unsigned acts,
            const char *where, aspen_error_t *err)
{
   const aspen_conn_t *c = atlas_conn(spec, conns);
   const char *db = literal_of(spec, "db"), *coll = literal_of(spec, "coll");
   if (c && db && coll && !aspen__conn_authorize(c, acts, db, coll, err)) {
      return refused_at(err, where);
   }
   return true;
}

/* The change-stream $source: find + changeStream on its collection(s), its
 * database, or every database; its config.pipeline's stages. */
static bool
check_source(const aspen_pipeline_t *pl, aspen_error_t *err)
{
   const bson_t *spec = &pl->source.spec;
   const aspen_conn_t *c = pl->source.conn;
   const unsigned acts = ASPEN_ENGINE_ACT_FIND | ASPEN_ENGINE_ACT_CHANGE_STREAM;
   if (pl->source.ops != &aspen_source_change_stream_ops || !c) {
      return true;
   }
   const char *db = aspen_bson_utf8(spec, "db");
   bson_iter_t it, ci;
   bool ok = true;
   if (db && bson_iter_init_find(&it, spec, "coll")) {
      if (BSON_ITER_HOLDS_UTF8(&it)) {
         ok = aspen__conn_authorize(c, acts, db, bson_iter_utf8(&it, NULL),
                                    err);
      } else if (BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &ci)) {
         while (ok && bson_iter_next(&ci)) {
            ok = !BSON_ITER_HOLDS_UTF8(&ci) ||
                 aspen__conn_authorize(c, acts, db, bson_iter_utf8(&ci, NULL),
                                       err);
         }
      }
   } else {
      ok = aspen__conn_authorize(c, acts, db, NULL, err);
   }
   bson_t cfg, arr;
   if (ok && bson_iter_init_find(&it, spec, "config") && aspen_bson_view(&it, &cfg) &&
       bson_iter_init_find(&ci, &cfg, "pipeline") && aspen_bson_view(&ci, &arr)) {
      ok = aspen__conn_authorize_stages(c, db ? db : "admin", &arr, err);
   }
   return ok || refused_at(err, "pipeline[0].$source");
}

/* $lookup / $cachedLookup: find on from {connectionName, db, coll}, and
 * what its pipeline's stages reach. */
static bool
check_lookup(const bson_iter_t *arg, const aspen_conns_t *conns,
             const char *where, aspen_error_t *err)
{
   bson_t spec, from, arr;
   bson_iter_t it;
   if (!aspen_bson_view(arg, &spec) || !bson_iter_init_find(&it, &spec, "from") ||
       !aspen_bson_view(&it, &from)) {
      return true;
   }
   const aspen_conn_t *c = atlas_conn(&from, conns);
   const char *db = aspen_bson_utf8(&from, "db"), *coll = aspen_bson_utf8(&from, "coll");
   if (!c || !db || !coll) {
      return true;
   }
   if (!aspen__conn_authorize(c, ASPEN_ENGINE_ACT_FIND, db, coll, err)) {
      return refused_at(err, where);
   }
   if (bson_iter_init_find(&it, &spec, "pipeline") && aspen_bson_view(&it, &arr) &&
       !aspen__conn_authorize_stages(c, db, &arr, err)) {
      return refused_at(err, where);
   }
   return true;
}

/* The stages of a pipeline array, recursing into window stages' inner
 * pipelines; `prefix` is where the array is ("pipeline"). */
static bool
check_stages(const bson_t *arr, const aspen_conns_t *conns,
             const char *prefix, aspen_error_t *err)
{
   bson_iter_t it, st;
   int idx = -1;
   bson_iter_init(&it, arr);
   while (bson_iter_next(&it)) {
      idx++;
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &st) ||
          !bson_iter_next(&st)) {
         continue;
      }
      const char *name = bson_iter_key(&st);
      char where[256];
      snprintf(where, sizeof where, "%s[%d].%s", prefix, idx, name);
      bson_t spec, inner;
      bson_iter_t pi;
      if (strcmp(name, "$lookup") == 0 || strcmp(name, "$cachedLookup") == 0) {
         if (!check_lookup(&st, conns, where, err)) {
            return false;
         }
      } else if (strstr(name, "Window") && aspen_bson_view(&st, &spec) &&
                 bson_iter_init_find(&pi, &spec, "pipeline") &&
                 aspen_bson_view(&pi, &inner)) {
         char sub[300];
         snprintf(sub, sizeof sub, "%s.pipeline", where);
         if (!check_stages(&inner, conns, sub, err)) {
            return false;
         }
      }
   }
   return true;
}

unsigned
aspen__merge_required_acts(const bson_t *spec)
{
   unsigned acts = ASPEN_ENGINE_ACT_INSERT | ASPEN_ENGINE_ACT_UPDATE;
   bson_iter_t it;
   if (bson_iter_init_find(&it, spec, "whenMatched") &&
       (BSON_ITER_HOLDS_DOCUMENT(&it) ||
        (BSON_ITER_HOLDS_UTF8(&it) &&
         strcmp(bson_iter_utf8(&it, NULL), "delete") == 0))) {
      acts |= ASPEN_ENGINE_ACT_REMOVE; /* "delete", or an expression */
   }
   return acts;
}

bool
aspen__pipeline_authorize(const aspen_pipeline_t *pl, const bson_t *options,
                          const aspen_conns_t *conns, aspen_error_t *err)
{
   if (!check_source(pl, err) ||
       !check_stages(&pl->def, conns, "pipeline", err)) {
      return false;
   }
   int last = (int) bson_count_keys(&pl->def) - 1;
   char where[64];
   bson_iter_t it;
   bson_t into, dlq;
   if (pl->sink == &aspen_sink_merge_ops &&
       bson_iter_init_find(&it, &pl->sink_spec, "into") &&
       aspen_bson_view(&it, &into)) {
      snprintf(where, sizeof where, "pipeline[%d].$merge", last);
      if (!check_write(&into, conns, aspen__merge_required_acts(&pl->sink_spec),
                       where, err)) {
         return false;
      }
   } else if (pl->sink == &aspen_sink_timeseries_ops) {
      snprintf(where, sizeof where, "pipeline[%d].$emit", last);
      if (!check_write(&pl->sink_spec, conns,
                       ASPEN_ENGINE_ACT_INSERT |
                          ASPEN_ENGINE_ACT_CREATE_COLLECTION,
                       where, err)) {
         return false;
      }
   }
   if (options && bson_iter_init_find(&it, options, "dlq") &&
       aspen_bson_view(&it, &dlq) &&
       !check_write(&dlq, conns, ASPEN_ENGINE_ACT_INSERT, "options.dlq", err)) {
      return false;
   }
   return true;
}
