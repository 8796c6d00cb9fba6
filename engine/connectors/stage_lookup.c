/*
 * stage_lookup.c - $lookup and $cachedLookup against a collection of an
 * atlas connection (../shared/spec/asp-semantics.md §6).
 *
 * Queries run on the processor's thread (never the event loop) through a
 * mongoc client the stage opens on first use:
 *   - localField/foreignField: find({foreignField: <local value>}) with
 *     MongoDB's array semantics (an array local value matches any of its
 *     elements, a missing one matches null or missing). A $lookup of this
 *     form in the main pipeline with no window after it holds up to
 *     BATCH_MAX_DOCS documents back and runs one find({foreignField: {$in:
 *     <every local value>}}) for them all; each document then gets the
 *     results its own condition matches (aspen's matcher, same semantics),
 *     in the server's order, and the documents go on in their input order.
 *     The batch also goes out whenever the processor flushes its sinks
 *     (aspen_pipeline_flush), so a checkpoint never covers a held
 *     document; if the batched query fails, each document runs its own,
 *     exactly as unbatched. A window downstream sees every source document
 *     before the stages do, so there holding back would make them late:
 *     there, as inside windows, each document runs its own query;
 *   - let + pipeline: aggregate(pipeline), the `let` variables evaluated
 *     against the document and substituted into the pipeline as literals
 *     (aspen_vars_substitute), so it runs on servers without the
 *     aggregate command's own `let` (5.0+);
 *   - both: aggregate([{$match: <equality>}, ...pipeline]).
 * The results become the array `as`. A failed query (server unreachable,
 * bad pipeline) sends the document to the DLQ with the reason and the
 * processor carries on.
 *
 * $cachedLookup is the equality form with a per-key result cache: entries
 * live `ttl` and the oldest go first once `maxMemUsageBytes` is reached.
 */
#include "connectors/conn_atlas.h"
#include "hash.h"
#include "lang/match.h"
#include "lang/vars.h"
#include "runtime/pipeline.h"

#include <mongoc/mongoc.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_BUCKETS 4096
#define CACHE_DEFAULT_MAX_BYTES (64 * 1024 * 1024)
#define BATCH_MAX_DOCS 256
#define BATCH_MAX_BYTES (4 * 1024 * 1024) /* of held documents */

/* ---- the result cache ($cachedLookup) -------------------------------------- */

typedef struct entry {
   uint8_t *key;
   uint32_t key_len;
   uint64_t hash;
   bson_t *results; /* array */
   int64_t expires_ms;
   size_t bytes;
   struct entry *next;             /* in its bucket */
   struct entry *older, *newer;    /* insertion order, for eviction */
} entry_t;

typedef struct {
   entry_t *buckets[CACHE_BUCKETS];
   entry_t *oldest, *newest;
   size_t bytes, max_bytes;
   int64_t ttl_ms;
} cache_t;

static void
cache_unlink(cache_t *c, entry_t *e)
{
   entry_t **pp = &c->buckets[e->hash % CACHE_BUCKETS];
   while (*pp != e) {
      pp = &(*pp)->next;
   }
   *pp = e->next;
   if (e->older) {
      e->older->newer = e->newer;
   } else {
      c->oldest = e->newer;
   }
   if (e->newer) {
      e->newer->older = e->older;
   } else {
      c->newest = e->older;
   }
   c->bytes -= e->bytes;
   free(e->key);
   bson_destroy(e->results);
   free(e);
}

static entry_t *
cache_find(cache_t *c, const bson_t *key, int64_t now)
{
   uint64_t h = aspen_hash_fnv1a(bson_get_data(key), key->len);
   for (entry_t *e = c->buckets[h % CACHE_BUCKETS]; e; e = e->next) {
      if (e->hash == h && e->key_len == key->len &&
          memcmp(e->key, bson_get_data(key), key->len) == 0) {
         if (e->expires_ms <= now) {
            cache_unlink(c, e);
            return NULL;
         }
         return e;
      }
   }
   return NULL;
}

static void
cache_put(cache_t *c, const bson_t *key, const bson_t *results, int64_t now)
{
   entry_t *e = aspen_xcalloc(1, sizeof *e);
   e->key_len = key->len;
   e->key = aspen_xmalloc(key->len);
   memcpy(e->key, bson_get_data(key), key->len);
   e->hash = aspen_hash_fnv1a(e->key, e->key_len);
   e->results = bson_copy(results);
   e->expires_ms = now + c->ttl_ms;
   e->bytes = sizeof *e + key->len + results->len;
   if (e->bytes > c->max_bytes) {
      free(e->key);
      bson_destroy(e->results);
      free(e);
      return;
   }
   while (c->oldest && c->bytes + e->bytes > c->max_bytes) {
      cache_unlink(c, c->oldest);
   }
   entry_t **b = &c->buckets[e->hash % CACHE_BUCKETS];
   e->next = *b;
   *b = e;
   e->older = c->newest;
   if (c->newest) {
      c->newest->newer = e;
   } else {
      c->oldest = e;
   }
   c->newest = e;
   c->bytes += e->bytes;
}

/* The cache of stage `st` went from `before` to `after` bytes: the
 * processor's state (stateSize and its limit) follows. */
static void
cache_counted(aspen_stage_t *st, size_t before, size_t after)
{
   if (before == after) {
      return;
   }
   aspen_pipeline_t *pl = st->pl;
   pl->cache_bytes = pl->cache_bytes + after >= before
                        ? pl->cache_bytes + after - before
                        : 0;
   aspen__pipeline_state_update(pl);
}

static void
cache_destroy(cache_t *c)
{
   while (c && c->oldest) {
      cache_unlink(c, c->oldest);
   }
   free(c);
}

/* ---- parsing ------------------------------------------------------------- */

typedef struct {
   bson_t spec;              /* owned copy: the views below point into it */
   const aspen_conn_t *conn;
   const char *db, *coll;
   const char *local_field, *foreign_field;
   const char *as;
   bson_t pipeline;          /* view, or empty */
   bool has_pipeline;
   char **let_names;
   aspen_expr_t **let_exprs;
   size_t n_let;
   cache_t *cache;           /* $cachedLookup only */
   mongoc_client_t *client;  /* opened on first use, processor thread */
   mongoc_collection_t *mc;
   /* Batching (the equality form, see the top): decided at the first
    * document; the documents held back, copied. */
   int batching;             /* 0 undecided, 1 yes, -1 no */
   struct held {
      bson_t *doc, *meta;
      int64_t ts_ms;
   } *held;
   size_t n_held, held_cap, held_bytes;
} lookup_t;

/* Frees the let variables (a second 'let' replaces the first, as in mongod). */
static void
let_clear(lookup_t *lk)
{
   for (size_t i = 0; i < lk->n_let; i++) {
      free(lk->let_names[i]);
      aspen_expr_destroy(lk->let_exprs[i]);
   }
   free(lk->let_names);
   free(lk->let_exprs);
   lk->let_names = NULL;
   lk->let_exprs = NULL;
   lk->n_let = 0;
}

static void
held_clear(lookup_t *lk)
{
   for (size_t i = 0; i < lk->n_held; i++) {
      bson_destroy(lk->held[i].doc);
      if (lk->held[i].meta) {
         bson_destroy(lk->held[i].meta);
      }
   }
   lk->n_held = 0;
   lk->held_bytes = 0;
}

static void
lookup_destroy(aspen_stage_t *st)
{
   lookup_t *lk = st->state;
   if (!lk) {
      return;
   }
   let_clear(lk);
   held_clear(lk);
   free(lk->held);
   cache_destroy(lk->cache);
   if (lk->mc) {
      mongoc_collection_destroy(lk->mc);
   }
   if (lk->client) {
      mongoc_client_destroy(lk->client);
   }
   bson_destroy(&lk->spec);
   bson_free(lk);
   st->state = NULL;
}

static bool
parse_from(lookup_t *lk, const bson_iter_t *it, aspen_parse_ctx_t *pc,
           const char *stage, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "from",
                        "%s.from must be an object {connectionName, db, coll}",
                        stage);
      return false;
   }
   bson_iter_t fi;
   const char *conn = NULL;
   bson_iter_recurse(it, &fi);
   while (bson_iter_next(&fi)) {
      const char *k = bson_iter_key(&fi);
      const char **slot = strcmp(k, "connectionName") == 0 ? &conn
                          : strcmp(k, "db") == 0           ? &lk->db
                          : strcmp(k, "coll") == 0         ? &lk->coll
                                                           : NULL;
      if (!slot) {
         char path[64];
         snprintf(path, sizeof path, "%s.from", stage);
         aspen_parse_unknown_field(err, pc, "from", path, k);
         return false;
      }
      if (!BSON_ITER_HOLDS_UTF8(&fi) || !*bson_iter_utf8(&fi, NULL)) {
         aspen_parse_error(err, pc, "from",
                           "%s.from.%s must be a non-empty string", stage, k);
         return false;
      }
      *slot = bson_iter_utf8(&fi, NULL);
   }
   if (!conn || !lk->db || !lk->coll) {
      aspen_parse_error(err, pc, "from",
                        "%s.from requires connectionName, db and coll", stage);
      return false;
   }
   lk->conn = aspen_conns_find(pc->conns, conn);
   if (!lk->conn) {
      aspen_parse_error(err, pc, "from.connectionName",
                        "Unknown connection name %s", conn);
      return false;
   }
   if (!aspen__conn_atlas(lk->conn)) {
      aspen_parse_error(err, pc, "from.connectionName",
                        "Only atlas connection type is currently supported "
                        "for $lookup");
      return false;
   }
   return true;
}

static bool
parse_let(lookup_t *lk, const bson_iter_t *it, aspen_parse_ctx_t *pc,
          aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "let", "$lookup.let must be an object");
      return false;
   }
   let_clear(lk);
   bson_iter_t li;
   size_t n = 0;
   bson_iter_recurse(it, &li);
   while (bson_iter_next(&li)) {
      n++;
   }
   lk->let_names = aspen_xcalloc(n + 1, sizeof *lk->let_names);
   lk->let_exprs = aspen_xcalloc(n + 1, sizeof *lk->let_exprs);
   bson_iter_recurse(it, &li);
   while (bson_iter_next(&li)) {
      const char *name = bson_iter_key(&li);
      if (!(name[0] >= 'a' && name[0] <= 'z') &&
          (unsigned char) name[0] < 0x80) {
         aspen_parse_error(err, pc, "let",
                           "'%s' starts with an invalid character for a user "
                           "variable name",
                           name);
         return false;
      }
      if (!aspen_expr_parse(&li, NULL, &lk->let_exprs[lk->n_let], err)) {
         return false;
      }
      lk->let_names[lk->n_let++] = aspen_xstrdup(name);
   }
   return true;
}

static bool
parse_ttl(cache_t *c, const bson_iter_t *it, aspen_parse_ctx_t *pc,
          aspen_error_t *err)
{
   static const struct {
      const char *unit;
      int64_t ms;
   } units[] = {{"ms", 1},           {"millisecond", 1},
                {"second", 1000},    {"minute", 60000},
                {"hour", 3600000},   {"day", 86400000}};
   int64_t size = -1;
   const char *unit = NULL;
   if (BSON_ITER_HOLDS_DOCUMENT(it)) {
      bson_iter_t ti;
      bson_iter_recurse(it, &ti);
      while (bson_iter_next(&ti)) {
         if (strcmp(bson_iter_key(&ti), "size") == 0 &&
             (BSON_ITER_HOLDS_INT32(&ti) || BSON_ITER_HOLDS_INT64(&ti) ||
              BSON_ITER_HOLDS_DOUBLE(&ti))) {
            size = bson_iter_as_int64(&ti);
         } else if (strcmp(bson_iter_key(&ti), "unit") == 0 &&
                    BSON_ITER_HOLDS_UTF8(&ti)) {
            unit = bson_iter_utf8(&ti, NULL);
         } else {
            size = -1;
            break;
         }
      }
   }
   for (size_t i = 0; unit && size > 0 && i < sizeof units / sizeof units[0];
        i++) {
      if (strcmp(units[i].unit, unit) == 0) {
         c->ttl_ms = size * units[i].ms;
         return true;
      }
   }
   aspen_parse_error(err, pc, "ttl",
                     "$cachedLookup.ttl must be {size: <positive integer>, "
                     "unit: \"ms\"|\"second\"|\"minute\"|\"hour\"|\"day\"}");
   return false;
}

static bool
parse_common(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
             bool cached, aspen_error_t *err)
{
   const char *stage = cached ? "$cachedLookup" : "$lookup";
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_parse_error(err, pc, NULL, "the %s specification must be an object",
                        stage);
      return false;
   }
   /* bson_t members need libbson's 128-byte alignment. */
   lookup_t *lk = BSON_ALIGNED_ALLOC0(lookup_t);
   st->state = lk;
   uint32_t len;
   const uint8_t *data;
   bson_t spec;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&spec, data, len);
   bson_copy_to(&spec, &lk->spec);
   bson_init(&lk->pipeline);
   bool has_from = false, has_ttl = false;
   if (cached) {
      lk->cache = aspen_xcalloc(1, sizeof *lk->cache);
      lk->cache->max_bytes = CACHE_DEFAULT_MAX_BYTES;
   }
   bson_iter_t it;
   bson_iter_init(&it, &lk->spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      bool ok = true;
      if (strcmp(k, "from") == 0) {
         ok = parse_from(lk, &it, pc, stage, err);
         has_from = true;
      } else if (strcmp(k, "localField") == 0 ||
                 strcmp(k, "foreignField") == 0 || strcmp(k, "as") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&it) || !*bson_iter_utf8(&it, NULL)) {
            aspen_parse_error(err, pc, k, "%s.%s must be a non-empty string",
                              stage, k);
            ok = false;
         } else {
            const char *v = bson_iter_utf8(&it, NULL);
            *(k[0] == 'l' ? &lk->local_field
              : k[0] == 'f' ? &lk->foreign_field
                            : &lk->as) = v;
         }
      } else if (!cached && strcmp(k, "let") == 0) {
         ok = parse_let(lk, &it, pc, err);
      } else if (!cached && strcmp(k, "pipeline") == 0) {
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            aspen_parse_error(err, pc, k, "$lookup.pipeline must be an array");
            ok = false;
         } else {
            bson_iter_array(&it, &len, &data);
            (void) bson_init_static(&lk->pipeline, data, len);
            lk->has_pipeline = true;
            bson_iter_t pi;
            bson_iter_init(&pi, &lk->pipeline);
            while (ok && bson_iter_next(&pi)) {
               if (!BSON_ITER_HOLDS_DOCUMENT(&pi)) {
                  aspen_parse_error(err, pc, k,
                                    "Each element of the 'pipeline' array "
                                    "must be an object");
                  ok = false;
               }
            }
         }
      } else if (!cached && (strcmp(k, "parallelism") == 0 ||
                             strcmp(k, "partitionBy") == 0)) {
         /* Accepted: aspen runs lookups in order on the processor thread,
          * which ASP's parallel execution must also appear to do. */
      } else if (cached && strcmp(k, "ttl") == 0) {
         ok = parse_ttl(lk->cache, &it, pc, err);
         has_ttl = true;
      } else if (cached && strcmp(k, "maxMemUsageBytes") == 0) {
         if ((!BSON_ITER_HOLDS_INT32(&it) && !BSON_ITER_HOLDS_INT64(&it) &&
              !BSON_ITER_HOLDS_DOUBLE(&it)) ||
             bson_iter_as_int64(&it) <= 0) {
            aspen_parse_error(err, pc, k,
                              "$cachedLookup.maxMemUsageBytes must be a "
                              "positive number");
            ok = false;
         } else {
            lk->cache->max_bytes = (size_t) bson_iter_as_int64(&it);
         }
      } else {
         aspen_parse_error(err, pc, k, "unknown argument to %s: %s", stage, k);
         ok = false;
      }
      if (!ok) {
         lookup_destroy(st);
         return false;
      }
   }
   /* The message is pre + stage name + post. */
   const char *pre = NULL, *post = "";
   if (!lk->as) {
      pre = "must specify 'as' field for a ";
      post = " stage";
   } else if (!lk->local_field != !lk->foreign_field) {
      pre = "";
      post = " requires both or neither of 'localField' and 'foreignField' "
             "to be specified";
   } else if (!lk->local_field && !lk->has_pipeline) {
      pre = "";
      post = cached ? " requires 'localField' and 'foreignField'"
                    : " requires either 'pipeline' or both 'localField' and "
                      "'foreignField' to be specified";
   } else if (lk->n_let && !lk->has_pipeline) {
      pre = "";
      post = " with 'let' requires a 'pipeline'";
   } else if (!has_from) {
      /* The collection-less form ({$documents} pipelines) would need a
       * connection to run on; aspen refuses it by name. */
      pre = "";
      post = " without 'from' (the collection-less form) is not supported "
             "by this version of aspen yet";
   } else if (cached && !has_ttl) {
      pre = "BSON field '";
      post = ".ttl' is missing but a required field";
   }
   if (pre) {
      aspen_parse_error(err, pc, NULL, "%s%s%s", pre, stage, post);
      lookup_destroy(st);
      return false;
   }
   return true;
}

static bool
lookup_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   return parse_common(st, arg, pc, false, err);
}

static bool
cached_lookup_parse(aspen_stage_t *st, const bson_iter_t *arg,
                    aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   return parse_common(st, arg, pc, true, err);
}

/* ---- running ------------------------------------------------------------- */

/* The equality condition on foreignField for the document's localField:
 * MongoDB's $lookup semantics (arrays match any element; missing or null
 * matches null and missing). */
static void
equality_filter(const lookup_t *lk, const bson_t *doc, bson_t *filter)
{
   aspen_value_t local = aspen_expr_get_path(doc, lk->local_field);
   bson_t cond;
   bson_init(filter);
   BSON_APPEND_DOCUMENT_BEGIN(filter, lk->foreign_field, &cond);
   if (aspen_value_is_missing(&local)) {
      BSON_APPEND_NULL(&cond, "$eq");
   } else if (local.v.value_type == BSON_TYPE_ARRAY) {
      aspen_value_append(&cond, "$in", 3, &local);
   } else {
      aspen_value_append(&cond, "$eq", 3, &local);
   }
   bson_append_document_end(filter, &cond);
   aspen_value_destroy(&local);
}

/* The aggregate pipeline for one document: the equality $match (if any),
 * then the user's pipeline with the let variables bound. */
static bool
build_pipeline(const lookup_t *lk, const bson_t *doc, const aspen_stage_t *st,
               const aspen_sdoc_t *in, bson_t *out, aspen_error_t *err)
{
   bson_t arr;
   uint32_t i = 0;
   char key[16];
   const char *k;
   bson_init(out);
   BSON_APPEND_ARRAY_BEGIN(out, "pipeline", &arr);
   if (lk->local_field) {
      bson_t filter, stage;
      equality_filter(lk, doc, &filter);
      bson_uint32_to_string(i++, &k, key, sizeof key);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, k, &stage);
      BSON_APPEND_DOCUMENT(&stage, "$match", &filter);
      bson_append_document_end(&arr, &stage);
      bson_destroy(&filter);
   }
   aspen_value_t *values = aspen_xcalloc(lk->n_let + 1, sizeof *values);
   aspen_expr_ctx_t ctx;
   aspen_stage_expr_ctx(st, in, &ctx);
   bool ok = true;
   size_t n = 0;
   for (; n < lk->n_let; n++) {
      if (!aspen_expr_eval(lk->let_exprs[n], &ctx, &values[n], err)) {
         ok = false;
         break;
      }
   }
   if (ok) {
      bson_t bound = BSON_INITIALIZER;
      aspen_vars_substitute(&lk->pipeline, &bound,
                            (const char *const *) lk->let_names, values, n);
      bson_iter_t it;
      bson_iter_init(&it, &bound);
      while (bson_iter_next(&it)) {
         bson_uint32_to_string(i++, &k, key, sizeof key);
         bson_append_iter(&arr, k, -1, &it);
      }
      bson_destroy(&bound);
   }
   for (size_t j = 0; j < n; j++) {
      aspen_value_destroy(&values[j]);
   }
   free(values);
   bson_append_array_end(out, &arr);
   return ok;
}

static bool
open_client(lookup_t *lk, aspen_error_t *err)
{
   if (!lk->client) {
      lk->client = aspen__conn_atlas_client_new(lk->conn, false, err);
      if (!lk->client) {
         return false;
      }
      lk->mc = mongoc_client_get_collection(lk->client, lk->db, lk->coll);
   }
   return true;
}

/* Reads every document of `cur` into the array `results` and destroys the
 * cursor. False with err set when the query failed. */
static bool
drain(lookup_t *lk, mongoc_cursor_t *cur, bson_t *results, aspen_error_t *err)
{
   const bson_t *doc;
   uint32_t i = 0;
   char key[16];
   const char *k;
   while (mongoc_cursor_next(cur, &doc)) {
      bson_uint32_to_string(i++, &k, key, sizeof key);
      BSON_APPEND_DOCUMENT(results, k, doc);
   }
   bson_error_t berr;
   bool ok = !mongoc_cursor_error(cur, &berr);
   if (!ok) {
      aspen_error_set(err, berr.domain == MONGOC_ERROR_SERVER
                              ? (int32_t) berr.code
                              : ASPEN_ERR_StreamProcessorAtlasConnectionError,
                      "$lookup on %s.%s (connection '%s') failed: %s", lk->db,
                      lk->coll, lk->conn->name, berr.message);
   }
   mongoc_cursor_destroy(cur);
   return ok;
}

/* Runs the query for one document; *results is an array (initialized by
 * the call). False with err set when the query failed. */
static bool
run_query(lookup_t *lk, const aspen_stage_t *st, const aspen_sdoc_t *in,
          bson_t *results, aspen_error_t *err)
{
   bson_init(results);
   if (!open_client(lk, err)) {
      return false;
   }
   mongoc_cursor_t *cur;
   if (lk->has_pipeline) {
      bson_t pipeline;
      if (!build_pipeline(lk, in->doc, st, in, &pipeline, err)) {
         bson_destroy(&pipeline);
         return false;
      }
      cur = mongoc_collection_aggregate(lk->mc, MONGOC_QUERY_NONE, &pipeline,
                                        NULL, NULL);
      bson_destroy(&pipeline);
   } else {
      bson_t filter;
      equality_filter(lk, in->doc, &filter);
      cur = mongoc_collection_find_with_opts(lk->mc, &filter, NULL, NULL);
      bson_destroy(&filter);
   }
   return drain(lk, cur, results, err);
}

/* Copies `doc` with `path` (possibly dotted) set to the array `value`. */
static void
set_path(const bson_t *doc, const char *path, const bson_t *value,
         bson_t *out)
{
   aspen_value_t v = {.v = {.value_type = BSON_TYPE_ARRAY}};
   v.v.value.v_doc.data = (uint8_t *) bson_get_data(value);
   v.v.value.v_doc.data_len = value->len;
   aspen_doc_set_path(doc, path, &v, out);
}

/* Emits `in` with `as` set to `results`. */
static void
emit_with(aspen_stage_t *st, const aspen_sdoc_t *in, const bson_t *results)
{
   lookup_t *lk = st->state;
   bson_t out = BSON_INITIALIZER;
   set_path(in->doc, lk->as, results, &out);
   aspen_sdoc_t next = *in;
   next.doc = &out;
   aspen_stage_emit(st, &next);
   bson_destroy(&out);
}

/* Whether this stage batches (see the top): the equality form, not cached,
 * in the main chain, with no window after it. */
static bool
batches(const aspen_stage_t *st)
{
   const lookup_t *lk = st->state;
   const aspen_pipeline_t *pl = st->pl;
   return !lk->has_pipeline && !lk->cache && st->chain == &pl->main &&
          (!pl->window || pl->window < st);
}

/* Appends the values a document's condition can match to the $in array
 * `in` (numbered from *n): its local value, each element of an array one,
 * null for a missing one. */
static void
append_local_values(const lookup_t *lk, const bson_t *doc, bson_t *in,
                    uint32_t *n)
{
   aspen_value_t local = aspen_expr_get_path(doc, lk->local_field);
   char key[16];
   const char *k;
   if (aspen_value_is_missing(&local)) {
      bson_uint32_to_string((*n)++, &k, key, sizeof key);
      BSON_APPEND_NULL(in, k);
   } else if (local.v.value_type == BSON_TYPE_ARRAY) {
      bson_t arr;
      bson_iter_t it;
      (void) bson_init_static(&arr, local.v.value.v_doc.data,
                              local.v.value.v_doc.data_len);
      bson_iter_init(&it, &arr);
      while (bson_iter_next(&it)) {
         bson_uint32_to_string((*n)++, &k, key, sizeof key);
         bson_append_iter(in, k, -1, &it);
      }
   } else {
      bson_uint32_to_string((*n)++, &k, key, sizeof key);
      aspen_value_append(in, k, -1, &local);
   }
   aspen_value_destroy(&local);
}

/* The documents of `all` (an array) that a document's own condition
 * matches, in order, into the array `results` (initialized here). False
 * when the condition cannot be evaluated here. */
static bool
select_results(const lookup_t *lk, const bson_t *doc, const bson_t *all,
               bson_t *results)
{
   bson_t filter;
   aspen_matcher_t *m = NULL;
   aspen_error_t err;
   bson_init(results);
   equality_filter(lk, doc, &filter);
   bool ok = aspen_matcher_new(&filter, &m, &err);
   bson_iter_t it;
   uint32_t n = 0;
   char key[16];
   const char *k;
   bson_iter_init(&it, all);
   while (ok && bson_iter_next(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_t one;
      bool matched = false;
      bson_iter_document(&it, &len, &data);
      (void) bson_init_static(&one, data, len);
      ok = aspen_matcher_match(m, &one, NULL, &matched, &err);
      if (ok && matched) {
         bson_uint32_to_string(n++, &k, key, sizeof key);
         BSON_APPEND_DOCUMENT(results, k, &one);
      }
   }
   aspen_matcher_destroy(m);
   bson_destroy(&filter);
   return ok;
}

/* One query for every held document, then each goes on with its results;
 * any that cannot be served from it runs its own query. */
static void
lookup_flush(aspen_stage_t *st)
{
   lookup_t *lk = st->state;
   if (!lk || lk->n_held == 0) {
      return;
   }
   bson_t all, filter = BSON_INITIALIZER, cond, in;
   aspen_error_t err;
   uint32_t n = 0;
   BSON_APPEND_DOCUMENT_BEGIN(&filter, lk->foreign_field, &cond);
   BSON_APPEND_ARRAY_BEGIN(&cond, "$in", &in);
   for (size_t i = 0; i < lk->n_held; i++) {
      append_local_values(lk, lk->held[i].doc, &in, &n);
   }
   bson_append_array_end(&cond, &in);
   bson_append_document_end(&filter, &cond);
   bool batch_ok = false;
   bson_init(&all);
   if (open_client(lk, &err)) {
      mongoc_cursor_t *cur =
         mongoc_collection_find_with_opts(lk->mc, &filter, NULL, NULL);
      batch_ok = drain(lk, cur, &all, &err);
   }
   bson_destroy(&filter);
   /* Emitting never comes back into this stage (chains do not loop), so
    * the held documents stay where they are until cleared. */
   for (size_t i = 0; i < lk->n_held; i++) {
      struct held *h = &lk->held[i];
      aspen_sdoc_t one = {.doc = h->doc, .meta = h->meta, .ts_ms = h->ts_ms};
      bson_t results;
      if (!(batch_ok && select_results(lk, one.doc, &all, &results))) {
         if (batch_ok) {
            bson_destroy(&results);
         }
         if (!run_query(lk, st, &one, &results, &err)) {
            bson_destroy(&results);
            aspen_stage_dead_letter(st, &one, &err);
            continue;
         }
      }
      emit_with(st, &one, &results);
      bson_destroy(&results);
   }
   bson_destroy(&all);
   held_clear(lk);
}

/* Holds `in` back for the next batch, which goes out once full. */
static void
hold(aspen_stage_t *st, const aspen_sdoc_t *in)
{
   lookup_t *lk = st->state;
   if (lk->n_held == lk->held_cap) {
      lk->held_cap = lk->held_cap ? lk->held_cap * 2 : 16;
      lk->held = aspen_xrealloc(lk->held, lk->held_cap * sizeof *lk->held);
   }
   struct held *h = &lk->held[lk->n_held++];
   h->doc = bson_copy(in->doc);
   h->meta = in->meta ? bson_copy(in->meta) : NULL;
   h->ts_ms = in->ts_ms;
   lk->held_bytes += in->doc->len + (in->meta ? in->meta->len : 0);
   if (lk->n_held >= BATCH_MAX_DOCS || lk->held_bytes >= BATCH_MAX_BYTES) {
      lookup_flush(st);
   }
}

static bool
lookup_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   lookup_t *lk = st->state;
   if (lk->batching == 0) {
      lk->batching = batches(st) ? 1 : -1;
   }
   if (lk->batching > 0) {
      hold(st, in);
      return true;
   }
   bson_t results, key;
   bool have = false;
   int64_t now = 0;
   bson_init(&key);
   if (lk->cache) {
      aspen_value_t local = aspen_expr_get_path(in->doc, lk->local_field);
      aspen_value_append(&key, "k", 1, &local);
      aspen_value_destroy(&local);
      now = aspen_clock_mono_ms();
      size_t before = lk->cache->bytes;
      entry_t *e = cache_find(lk->cache, &key, now);
      if (e) {
         bson_copy_to(e->results, &results);
         have = true;
      }
      cache_counted(st, before, lk->cache->bytes);
   }
   if (!have) {
      if (!run_query(lk, st, in, &results, err)) {
         bson_destroy(&results);
         bson_destroy(&key);
         return false;
      }
      if (lk->cache) {
         size_t before = lk->cache->bytes;
         cache_put(lk->cache, &key, &results, now);
         cache_counted(st, before, lk->cache->bytes);
      }
   }
   emit_with(st, in, &results);
   bson_destroy(&results);
   bson_destroy(&key);
   return true;
}

const aspen_stage_ops_t aspen_stage_lookup_ops = {
   .name = "$lookup",
   .operator_name = "LookUpOperator",
   .parse = lookup_parse,
   .push = lookup_push,
   .destroy = lookup_destroy,
   .flush = lookup_flush,
};

const aspen_stage_ops_t aspen_stage_cached_lookup_ops = {
   .name = "$cachedLookup",
   .operator_name = "CachedLookUpOperator",
   .parse = cached_lookup_parse,
   .push = lookup_push,
   .destroy = lookup_destroy,
};
