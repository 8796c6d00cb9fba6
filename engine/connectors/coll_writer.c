/*
 * coll_writer.c - the MongoDB collection writer (coll_writer.h) that $merge,
 * the time-series $emit and the dead-letter queue write through: batched
 * unordered bulk writes keyed on the `on` fields, whenMatched /
 * whenNotMatched modes (fixed, per-document expressions or a pipeline),
 * literal or per-document targets, time-series collections created before
 * their first write. Blocking; processor thread only.
 */
#include "connectors/authz.h"
#include "connectors/coll_writer.h"
#include "connectors/conn_atlas.h"
#include "lang/vars.h"

#include <inttypes.h>
#include <mongoc/mongoc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH_DOCS 1000
#define BATCH_BYTES (12u * 1024u * 1024u)

typedef enum {
   WM_MERGE,
   WM_REPLACE,
   WM_KEEP,
   WM_DELETE,
   WM_PIPELINE,
} when_matched_t;

/* ASP's cap on distinct databases, and on distinct collections, that
 * dynamic into.db / into.coll expressions may reach. */
#define ASPEN_MERGE_MAX_TARGETS 1000
/* Attempts at writing a batch before a transient failure is fatal. */
#define FLUSH_ATTEMPTS 4

/* One target collection and the writes queued for it. */
typedef struct {
   char *db, *coll;
   mongoc_collection_t *mc;
   bson_t **batch;
   size_t n_batch, cap;
   bool ready; /* time-series: the collection is known to exist as one */
} target_t;

struct aspen_coll_writer {
   mongoc_client_t *client;
   /* The connection and what the writer does through it (authz.c):
    * checked for each target before its first write. */
   const aspen_conn_t *conn;
   unsigned acts;
   char ns[256];           /* literal "db.coll", or a description */
   /* into.db / into.coll: literal names, or expressions (NULL: literal). */
   const char *db_lit, *coll_lit;
   aspen_expr_t *db_expr, *coll_expr;
   bson_t spec;            /* owned copy: expressions borrow from it */
   target_t *targets;
   size_t n_targets, cap_targets;
   size_t n_dbs;           /* distinct databases among the targets */
   char *on[16];
   int n_on;
   when_matched_t when_matched;
   bool insert_unmatched;
   /* whenMatched / whenNotMatched given as expressions: evaluated per
    * document to one of the mode strings (NULL: the fixed mode above). */
   aspen_expr_t *wm_expr, *wnm_expr;
   bool plain_insert;      /* DLQ, time-series $emit: just insert */
   /* Names for messages: the operator in DLQ reasons ("MergeOperator") and
    * the db/coll options ("$merge.into" -> "$merge.into.coll"). */
   const char *op_name;
   const char *label;
   /* Time-series $emit: each target is created with these options before
    * its first write (ts_opts: the `timeseries` document), and documents
    * larger than max_doc_bytes (0: no limit) go to the DLQ. */
   bool timeseries;
   bson_t ts_opts;
   size_t max_doc_bytes;
   /* whenMatched pipeline and its variables. */
   bson_t wm_pipeline;
   char **let_names;
   aspen_expr_t **let_exprs;
   size_t n_let;
   bool let_has_new;
   size_t n_queued;
   size_t queued_bytes;
};

/* Error codes a retry can fix: the server was unreachable or lost. */
static bool
is_transient(const bson_error_t *berr)
{
   return berr->domain == MONGOC_ERROR_STREAM ||
          berr->domain == MONGOC_ERROR_SERVER_SELECTION;
}

static aspen_coll_writer_t *
writer_new(const aspen_conn_t *conn, aspen_error_t *err)
{
   mongoc_client_t *client = aspen__conn_atlas_client_new(conn, true, err);
   if (!client) {
      return NULL;
   }
   /* bson_t members need libbson's 128-byte alignment. */
   aspen_coll_writer_t *w = BSON_ALIGNED_ALLOC0(aspen_coll_writer_t);
   w->client = client;
   w->insert_unmatched = true;
   w->op_name = "MergeOperator";
   w->label = "$merge.into";
   bson_init(&w->spec);
   bson_init(&w->wm_pipeline);
   bson_init(&w->ts_opts);
   return w;
}

static void write_error_reason(const aspen_coll_writer_t *w, int32_t code,
                               const char *msg, char *out, size_t len);

/* Whether the connection's dbRoleToExecute lets the writer write to
 * db.coll; false with err set (422) when it does not. */
static bool
target_allowed(const aspen_coll_writer_t *w, const char *db,
               const char *coll, aspen_error_t *err)
{
   return !w->conn || aspen__conn_authorize(w->conn, w->acts, db, coll, err);
}

static target_t *
target_add(aspen_coll_writer_t *w, const char *db, const char *coll)
{
   if (w->n_targets == w->cap_targets) {
      w->cap_targets = w->cap_targets ? w->cap_targets * 2 : 4;
      w->targets =
         aspen_xrealloc(w->targets, w->cap_targets * sizeof *w->targets);
   }
   target_t *t = &w->targets[w->n_targets++];
   memset(t, 0, sizeof *t);
   t->db = aspen_xstrdup(db);
   t->coll = aspen_xstrdup(coll);
   t->mc = mongoc_client_get_collection(w->client, db, coll);
   return t;
}

aspen_coll_writer_t *
aspen_coll_writer_new_insert(const aspen_conn_t *conn, const char *db,
                             const char *coll, aspen_error_t *err)
{
   aspen_coll_writer_t *w = writer_new(conn, err);
   if (w) {
      w->conn = conn;
      w->acts = ASPEN_ENGINE_ACT_INSERT;
      if (!target_allowed(w, db, coll, err)) {
         aspen_coll_writer_destroy(w);
         return NULL;
      }
      w->plain_insert = true;
      target_add(w, db, coll);
      w->n_dbs = 1;
      snprintf(w->ns, sizeof w->ns, "%s.%s", db, coll);
   }
   return w;
}

/* Compiles into.db / into.coll: a literal name or an expression. */
static bool
target_name(const bson_iter_t *it, const char **lit, aspen_expr_t **expr,
            aspen_error_t *err)
{
   if (BSON_ITER_HOLDS_UTF8(it) && bson_iter_utf8(it, NULL)[0] != '$') {
      *lit = bson_iter_utf8(it, NULL);
      return true;
   }
   return aspen_expr_parse(it, NULL, expr, err);
}

/* Replaces *dst (an initialised bson_t) with a copy of the document or
 * array `it` holds. */
static void
copy_sub(const bson_iter_t *it, bson_t *dst)
{
   uint32_t len;
   const uint8_t *data;
   bson_t sub;
   if (BSON_ITER_HOLDS_ARRAY(it)) {
      bson_iter_array(it, &len, &data);
   } else {
      bson_iter_document(it, &len, &data);
   }
   (void) bson_init_static(&sub, data, len);
   bson_destroy(dst);
   bson_copy_to(&sub, dst);
}

static bool
writer_parse_spec(aspen_coll_writer_t *w, const aspen_conns_t *conns,
                  const aspen_conn_t **conn, aspen_error_t *err)
{
   bson_iter_t it;
   const char *conn_name = NULL;
   *conn = NULL;
   if (bson_iter_init_find(&it, &w->spec, "into") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t ii;
      bson_iter_recurse(&it, &ii);
      while (bson_iter_next(&ii)) {
         const char *k = bson_iter_key(&ii);
         if (strcmp(k, "connectionName") == 0 && BSON_ITER_HOLDS_UTF8(&ii)) {
            conn_name = bson_iter_utf8(&ii, NULL);
         } else if (strcmp(k, "db") == 0) {
            if (!target_name(&ii, &w->db_lit, &w->db_expr, err)) {
               return false;
            }
         } else if (strcmp(k, "coll") == 0) {
            if (!target_name(&ii, &w->coll_lit, &w->coll_expr, err)) {
               return false;
            }
         }
      }
   }
   *conn = conn_name ? aspen_conns_find(conns, conn_name) : NULL;
   if (!*conn || (!w->db_lit && !w->db_expr) ||
       (!w->coll_lit && !w->coll_expr)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "StreamProcessorInvalidOptions: invalid $merge.into");
      return false;
   }
   if (bson_iter_init_find(&it, &w->spec, "on")) {
      if (BSON_ITER_HOLDS_UTF8(&it)) {
         w->on[w->n_on++] = aspen_xstrdup(bson_iter_utf8(&it, NULL));
      } else if (BSON_ITER_HOLDS_ARRAY(&it)) {
         bson_iter_t ai;
         bson_iter_recurse(&it, &ai);
         while (bson_iter_next(&ai) && w->n_on < 16) {
            w->on[w->n_on++] = aspen_xstrdup(bson_iter_utf8(&ai, NULL));
         }
      }
   }
   if (w->n_on == 0) {
      w->on[w->n_on++] = aspen_xstrdup("_id");
   }
   w->when_matched = WM_MERGE;
   if (bson_iter_init_find(&it, &w->spec, "whenMatched")) {
      if (BSON_ITER_HOLDS_UTF8(&it)) {
         const char *m = bson_iter_utf8(&it, NULL);
         w->when_matched = strcmp(m, "replace") == 0        ? WM_REPLACE
                           : strcmp(m, "keepExisting") == 0 ? WM_KEEP
                           : strcmp(m, "delete") == 0       ? WM_DELETE
                                                            : WM_MERGE;
      } else if (BSON_ITER_HOLDS_ARRAY(&it)) {
         copy_sub(&it, &w->wm_pipeline);
         w->when_matched = WM_PIPELINE;
      } else if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
         (void) aspen_expr_parse(&it, NULL, &w->wm_expr, err);
      }
   }
   if (bson_iter_init_find(&it, &w->spec, "whenNotMatched")) {
      if (BSON_ITER_HOLDS_UTF8(&it)) {
         w->insert_unmatched =
            strcmp(bson_iter_utf8(&it, NULL), "insert") == 0;
      } else if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
         (void) aspen_expr_parse(&it, NULL, &w->wnm_expr, err);
      }
   }
   if (bson_iter_init_find(&it, &w->spec, "let") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t li;
      size_t n = 0;
      bson_iter_recurse(&it, &li);
      while (bson_iter_next(&li)) {
         n++;
      }
      w->let_names = aspen_xcalloc(n + 1, sizeof *w->let_names);
      w->let_exprs = aspen_xcalloc(n + 1, sizeof *w->let_exprs);
      bson_iter_recurse(&it, &li);
      while (bson_iter_next(&li)) {
         size_t i = w->n_let;
         if (!aspen_expr_parse(&li, NULL, &w->let_exprs[i], err)) {
            return false;
         }
         w->let_names[i] = aspen_xstrdup(bson_iter_key(&li));
         w->let_has_new |= strcmp(w->let_names[i], "new") == 0;
         w->n_let++;
      }
   }
   return true;
}

aspen_coll_writer_t *
aspen_coll_writer_new_merge(const aspen_conns_t *conns, const bson_t *spec,
                            aspen_error_t *err)
{
   /* Parse first, so a bad spec fails before any connection attempt. The
    * writer keeps its own copy of the spec: expressions borrow from it. */
   /* bson_t members need libbson's 128-byte alignment. */
   aspen_coll_writer_t *w = BSON_ALIGNED_ALLOC0(aspen_coll_writer_t);
   bson_copy_to(spec, &w->spec);
   bson_init(&w->wm_pipeline);
   bson_init(&w->ts_opts);
   w->insert_unmatched = true;
   w->op_name = "MergeOperator";
   w->label = "$merge.into";
   const aspen_conn_t *conn = NULL;
   if (!writer_parse_spec(w, conns, &conn, err)) {
      aspen_coll_writer_destroy(w);
      return NULL;
   }
   w->conn = conn;
   w->acts = aspen__merge_required_acts(&w->spec);
   if ((w->db_lit && w->coll_lit &&
        !target_allowed(w, w->db_lit, w->coll_lit, err)) ||
       !(w->client = aspen__conn_atlas_client_new(conn, true, err))) {
      aspen_coll_writer_destroy(w);
      return NULL;
   }
   if (w->db_lit && w->coll_lit) {
      target_add(w, w->db_lit, w->coll_lit);
      w->n_dbs = 1;
      snprintf(w->ns, sizeof w->ns, "%s.%s", w->db_lit, w->coll_lit);
   } else {
      snprintf(w->ns, sizeof w->ns, "%s.%s",
               w->db_lit ? w->db_lit : "<db expression>",
               w->coll_lit ? w->coll_lit : "<coll expression>");
   }
   return w;
}

const char *
aspen_coll_writer_ns(const aspen_coll_writer_t *w)
{
   return w->ns;
}

void
aspen_coll_writer_destroy(aspen_coll_writer_t *w)
{
   if (!w) {
      return;
   }
   for (size_t t = 0; t < w->n_targets; t++) {
      target_t *tg = &w->targets[t];
      for (size_t i = 0; i < tg->n_batch; i++) {
         bson_destroy(tg->batch[i]);
      }
      free(tg->batch);
      free(tg->db);
      free(tg->coll);
      mongoc_collection_destroy(tg->mc);
   }
   free(w->targets);
   for (int i = 0; i < w->n_on; i++) {
      free(w->on[i]);
   }
   for (size_t i = 0; i < w->n_let; i++) {
      free(w->let_names[i]);
      aspen_expr_destroy(w->let_exprs[i]);
   }
   free(w->let_names);
   free(w->let_exprs);
   aspen_expr_destroy(w->wm_expr);
   aspen_expr_destroy(w->wnm_expr);
   aspen_expr_destroy(w->db_expr);
   aspen_expr_destroy(w->coll_expr);
   bson_destroy(&w->wm_pipeline);
   bson_destroy(&w->ts_opts);
   bson_destroy(&w->spec);
   if (w->client) {
      mongoc_client_destroy(w->client);
   }
   bson_free(w);
}

/* Builds the filter on the `on` fields; false if one is missing. */
static bool
on_filter(const aspen_coll_writer_t *w, const bson_t *doc, bson_t *filter,
          const char **missing)
{
   for (int i = 0; i < w->n_on; i++) {
      bson_iter_t it, found;
      if (!bson_iter_init(&it, doc) ||
          !bson_iter_find_descendant(&it, w->on[i], &found)) {
         *missing = w->on[i];
         return false;
      }
      bson_append_value(filter, w->on[i], -1, bson_iter_value(&found));
   }
   return true;
}

/* The stream metadata {$meta: "stream..."} reads in the sink's own
 * expressions (into.db / into.coll, whenMatched / whenNotMatched, let):
 * the document's _stream_meta, viewed in `meta`; NULL when it has none. */
static const bson_t *
doc_meta(const bson_t *doc, bson_t *meta)
{
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   if (!bson_iter_init_find(&it, doc, "_stream_meta") ||
       !BSON_ITER_HOLDS_DOCUMENT(&it)) {
      return NULL;
   }
   bson_iter_document(&it, &len, &data);
   return bson_init_static(meta, data, len) ? meta : NULL;
}

/* Evaluates a dynamic into.db / into.coll for `doc`; false with `why` set
 * when it does not give a usable name (the document goes to the DLQ). */
static bool
eval_name(const aspen_coll_writer_t *w, const aspen_expr_t *e,
          const bson_t *doc, const char *what, char *out, size_t out_len,
          char *why, size_t why_len)
{
   bson_t meta;
   aspen_expr_ctx_t ctx = {.root = doc, .meta = doc_meta(doc, &meta)};
   aspen_value_t v;
   aspen_error_t err;
   if (!aspen_expr_eval(e, &ctx, &v, &err)) {
      snprintf(why, why_len,
               "Failed to evaluate the %s.%s expression: %s", w->label, what,
               err.message);
      return false;
   }
   bool ok = v.v.value_type == BSON_TYPE_UTF8 && v.v.value.v_utf8.len > 0 &&
             v.v.value.v_utf8.len < out_len &&
             strlen(v.v.value.v_utf8.str) == v.v.value.v_utf8.len;
   if (ok) {
      snprintf(out, out_len, "%s", v.v.value.v_utf8.str);
   } else {
      snprintf(why, why_len,
               "%s.%s must evaluate to a non-empty string, but it gave a "
               "value of type %s",
               w->label, what, aspen_value_type_name(&v));
   }
   aspen_value_destroy(&v);
   return ok;
}

/* The target for `doc`: the literal one, or the one its expressions name.
 * NULL with *fatal false: the document goes to the DLQ with `why`. NULL
 * with *fatal true: too many targets, err set (the processor fails). */
static target_t *
target_for(aspen_coll_writer_t *w, const bson_t *doc, char *why,
           size_t why_len, bool *fatal, aspen_error_t *err)
{
   *fatal = false;
   if (!w->db_expr && !w->coll_expr) {
      return &w->targets[0];
   }
   char db[256], coll[256];
   if (w->db_expr) {
      if (!eval_name(w, w->db_expr, doc, "db", db, sizeof db, why,
                     why_len)) {
         return NULL;
      }
   } else {
      snprintf(db, sizeof db, "%s", w->db_lit);
   }
   if (w->coll_expr) {
      if (!eval_name(w, w->coll_expr, doc, "coll", coll, sizeof coll, why,
                     why_len)) {
         return NULL;
      }
   } else {
      snprintf(coll, sizeof coll, "%s", w->coll_lit);
   }
   bool db_known = false;
   for (size_t i = 0; i < w->n_targets; i++) {
      target_t *t = &w->targets[i];
      if (strcmp(t->db, db) == 0) {
         if (strcmp(t->coll, coll) == 0) {
            return t;
         }
         db_known = true;
      }
   }
   /* A new target: the connection's role must cover it. A refused one is
    * never added (each of its documents is checked again), and its
    * documents go to the DLQ like writes the server refuses. */
   aspen_error_t refusal;
   if (!target_allowed(w, db, coll, &refusal)) {
      write_error_reason(w, ASPEN_ERR_Unauthorized, refusal.message, why,
                         why_len);
      return NULL;
   }
   /* ASP's limits on dynamic targets, with its messages. */
   if (!db_known && w->n_dbs >= ASPEN_MERGE_MAX_TARGETS) {
      *fatal = true;
      aspen_error_set(err, ASPEN_ERR_StreamProcessorTooManyOutputTargets,
                      "Too many unique databases: %zu", w->n_dbs);
      return NULL;
   }
   if (w->n_targets >= ASPEN_MERGE_MAX_TARGETS) {
      *fatal = true;
      aspen_error_set(err, ASPEN_ERR_StreamProcessorTooManyOutputTargets,
                      "Too many unique collections: %zu", w->n_targets);
      return NULL;
   }
   if (!db_known) {
      w->n_dbs++;
   }
   return target_add(w, db, coll);
}

bool
aspen_coll_writer_add(aspen_coll_writer_t *w, const bson_t *doc,
                      aspen_coll_writer_fail_fn on_fail, void *arg,
                      aspen_error_t *err)
{
   char why[ASPEN_ERROR_MSG_MAX];
   bool fatal;
   target_t *t = target_for(w, doc, why, sizeof why, &fatal, err);
   if (!t) {
      if (fatal) {
         return false;
      }
      on_fail(arg, doc, why);
      return true;
   }
   if (w->max_doc_bytes && doc->len > w->max_doc_bytes) {
      snprintf(why, sizeof why,
               "Failed to process an input document in %s: the document is "
               "%" PRIu32 " bytes, more than the %zu bytes (4 MB) a "
               "time-series $emit writes",
               w->op_name, doc->len, w->max_doc_bytes);
      on_fail(arg, doc, why);
      return true;
   }
   if (t->n_batch == t->cap) {
      t->cap = t->cap ? t->cap * 2 : 16;
      t->batch = aspen_xrealloc(t->batch, t->cap * sizeof *t->batch);
   }
   bson_t *copy;
   if (w->plain_insert && !bson_has_field(doc, "_id")) {
      /* The _id is fixed before the first attempt, so a retried insert
       * cannot write the same entry twice. */
      bson_oid_t oid;
      bson_oid_init(&oid, NULL);
      copy = bson_new();
      BSON_APPEND_OID(copy, "_id", &oid);
      bson_concat(copy, doc);
   } else {
      copy = bson_copy(doc);
   }
   t->batch[t->n_batch++] = copy;
   w->n_queued++;
   w->queued_bytes += copy->len;
   if (w->n_queued >= BATCH_DOCS || w->queued_bytes >= BATCH_BYTES) {
      return aspen_coll_writer_flush(w, on_fail, arg, err);
   }
   return true;
}

/* Evaluates whenMatched / whenNotMatched expressions for `doc`; false (with
 * `why`) when one does not give a mode, and the document is dead-lettered. */
static bool
modes_for(const aspen_coll_writer_t *w, const bson_t *doc,
          when_matched_t *when_matched, bool *insert_unmatched, char *why,
          size_t why_len)
{
   bson_t meta;
   aspen_expr_ctx_t ctx = {.root = doc, .meta = doc_meta(doc, &meta)};
   aspen_error_t err;
   aspen_value_t v;
   char mode[16];
   const aspen_expr_t *exprs[2] = {w->wm_expr, w->wnm_expr};
   for (int i = 0; i < 2; i++) {
      if (!exprs[i]) {
         continue;
      }
      const char *field = i == 0 ? "whenMatched" : "whenNotMatched";
      if (!aspen_expr_eval(exprs[i], &ctx, &v, &err)) {
         snprintf(why, why_len, "$merge.%s failed: %s", field, err.message);
         return false;
      }
      mode[0] = '\0';
      if (v.v.value_type == BSON_TYPE_UTF8 &&
          v.v.value.v_utf8.len < sizeof mode) {
         memcpy(mode, v.v.value.v_utf8.str, v.v.value.v_utf8.len);
         mode[v.v.value.v_utf8.len] = '\0';
      }
      aspen_value_destroy(&v);
      if (i == 0) {
         if (strcmp(mode, "merge") == 0) {
            *when_matched = WM_MERGE;
         } else if (strcmp(mode, "replace") == 0) {
            *when_matched = WM_REPLACE;
         } else if (strcmp(mode, "keepExisting") == 0) {
            *when_matched = WM_KEEP;
         } else if (strcmp(mode, "delete") == 0) {
            *when_matched = WM_DELETE;
         } else {
            snprintf(why, why_len, "Unsupported whenMatched mode: %s",
                     mode[0] ? mode : "(not a string)");
            return false;
         }
      } else if (strcmp(mode, "insert") == 0 ||
                 strcmp(mode, "discard") == 0) {
         *insert_unmatched = mode[0] == 'i';
      } else {
         snprintf(why, why_len, "Unsupported whenNotMatched mode: %s",
                  mode[0] ? mode : "(not a string)");
         return false;
      }
   }
   return true;
}

/* Adds one document's write to the bulk operation. Returns false (and calls
 * on_fail) when the document cannot be written at all. */
static bool
add_write(aspen_coll_writer_t *w, mongoc_bulk_operation_t *bulk,
          const bson_t *doc, bson_error_t *berr, char *why, size_t why_len)
{
   if (w->plain_insert) {
      return mongoc_bulk_operation_insert_with_opts(bulk, doc, NULL, berr);
   }
   when_matched_t when_matched = w->when_matched;
   bool insert_unmatched = w->insert_unmatched;
   if ((w->wm_expr || w->wnm_expr) &&
       !modes_for(w, doc, &when_matched, &insert_unmatched, why, why_len)) {
      return false;
   }
   bool id_only = w->n_on == 1 && strcmp(w->on[0], "_id") == 0;
   if (id_only && !bson_has_field(doc, "_id")) {
      /* No key: nothing can match, so this is an insert with a new _id. */
      if (!insert_unmatched) {
         return true;
      }
      return mongoc_bulk_operation_insert_with_opts(bulk, doc, NULL, berr);
   }
   bson_t filter = BSON_INITIALIZER;
   const char *missing = NULL;
   if (!on_filter(w, doc, &filter, &missing)) {
      snprintf(why, why_len,
               "$merge write error: 'on' field '%s' cannot be missing, null, "
               "undefined or an array",
               missing);
      bson_destroy(&filter);
      return false;
   }
   bson_t opts = BSON_INITIALIZER;
   BSON_APPEND_BOOL(&opts, "upsert", insert_unmatched);
   bool ok;
   switch (when_matched) {
   case WM_REPLACE: {
      ok = mongoc_bulk_operation_replace_one_with_opts(bulk, &filter, doc,
                                                       &opts, berr);
      break;
   }
   case WM_KEEP: {
      bson_t update = BSON_INITIALIZER;
      BSON_APPEND_DOCUMENT(&update, "$setOnInsert", doc);
      ok = insert_unmatched
              ? mongoc_bulk_operation_update_one_with_opts(bulk, &filter,
                                                           &update, &opts,
                                                           berr)
              : true;
      bson_destroy(&update);
      break;
   }
   case WM_DELETE:
      ok = mongoc_bulk_operation_remove_one_with_opts(bulk, &filter, NULL,
                                                      berr);
      break;
   case WM_PIPELINE: /* written one by one: see write_with_pipeline */
   case WM_MERGE:
   default: {
      bson_t update = BSON_INITIALIZER;
      BSON_APPEND_DOCUMENT(&update, "$set", doc);
      ok = mongoc_bulk_operation_update_one_with_opts(bulk, &filter, &update,
                                                      &opts, berr);
      bson_destroy(&update);
      break;
   }
   }
   bson_destroy(&opts);
   bson_destroy(&filter);
   return ok;
}

/* The DLQ reason for a document the server refused, in ASP's words. */
static void
write_error_reason(const aspen_coll_writer_t *w, int32_t code,
                   const char *msg, char *out, size_t len)
{
   const char *name = code == 11000 ? "DuplicateKey"
                                    : aspen_error_code_name(code);
   snprintf(out, len,
            "Failed to process an input document in the current batch in "
            "%s with error: code = %s, reason = %s",
            w->op_name, name, msg);
}

/* ---- whenMatched pipelines ------------------------------------------------ */

/* The whenMatched pipeline for `doc`, its variables bound: `new` is the
 * incoming document (unless `let` defines it), and each `let` variable is
 * evaluated against it. False with `why` set on an evaluation error. */
static bool
bind_pipeline(const aspen_coll_writer_t *w, const bson_t *doc, bson_t *out,
              char *why, size_t why_len)
{
   size_t n = w->n_let + 1;
   const char **names = aspen_xcalloc(n, sizeof *names);
   aspen_value_t *values = aspen_xcalloc(n, sizeof *values);
   bson_t meta;
   aspen_expr_ctx_t ctx = {.root = doc, .meta = doc_meta(doc, &meta)};
   size_t k = 0;
   bool ok = true;
   for (size_t i = 0; i < w->n_let && ok; i++) {
      aspen_error_t err;
      names[k] = w->let_names[i];
      if (!aspen_expr_eval(w->let_exprs[i], &ctx, &values[k], &err)) {
         snprintf(why, why_len, "Failed to evaluate $merge.let.%s: %s",
                  w->let_names[i], err.message);
         ok = false;
         break;
      }
      k++;
   }
   if (ok && !w->let_has_new) {
      names[k] = "new";
      values[k].v.value_type = BSON_TYPE_DOCUMENT;
      values[k].v.value.v_doc.data = (uint8_t *) bson_get_data(doc);
      values[k].v.value.v_doc.data_len = doc->len;
      values[k].owned = false;
      k++;
   }
   bson_init(out);
   if (ok) {
      aspen_vars_substitute(&w->wm_pipeline, out, names, values, k);
   }
   for (size_t i = 0; i < k; i++) {
      aspen_value_destroy(&values[i]);
   }
   free(names);
   free(values);
   return ok;
}

/* Reads writeErrors[0] of a failed single write into a DLQ reason. */
static bool
single_write_error(const aspen_coll_writer_t *w, const bson_t *reply,
                   char *why, size_t why_len, int32_t *code_out)
{
   bson_iter_t it, ei, f;
   if (!bson_iter_init_find(&it, reply, "writeErrors") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &ei) ||
       !bson_iter_next(&ei) || !bson_iter_recurse(&ei, &f)) {
      return false;
   }
   int32_t code = 0;
   const char *msg = "";
   while (bson_iter_next(&f)) {
      if (strcmp(bson_iter_key(&f), "code") == 0) {
         code = (int32_t) bson_iter_as_int64(&f);
      } else if (strcmp(bson_iter_key(&f), "errmsg") == 0 &&
                 BSON_ITER_HOLDS_UTF8(&f)) {
         msg = bson_iter_utf8(&f, NULL);
      }
   }
   *code_out = code;
   write_error_reason(w, code, msg, why, why_len);
   return true;
}

/* Writes one document with a whenMatched pipeline: an update with the
 * bound pipeline on the `on` match (no upsert: an upsert would run the
 * pipeline on an empty document), then, if nothing matched and
 * whenNotMatched is insert, the document itself, as mongod's $merge does.
 * A duplicate key on that insert means a concurrent writer inserted it
 * first, so the update is tried once more. False (err set) only when the
 * server cannot be reached. */
static bool
write_with_pipeline(aspen_coll_writer_t *w, target_t *t, const bson_t *doc,
                    aspen_coll_writer_fail_fn on_fail, void *arg,
                    bson_error_t *berr)
{
   char why[ASPEN_ERROR_MSG_MAX];
   bson_t filter = BSON_INITIALIZER, pipeline;
   const char *missing = NULL;
   if (!on_filter(w, doc, &filter, &missing)) {
      snprintf(why, sizeof why,
               "$merge write error: 'on' field '%s' cannot be missing, null, "
               "undefined or an array",
               missing);
      on_fail(arg, doc, why);
      bson_destroy(&filter);
      return true;
   }
   if (!bind_pipeline(w, doc, &pipeline, why, sizeof why)) {
      on_fail(arg, doc, why);
      bson_destroy(&filter);
      bson_destroy(&pipeline);
      return true;
   }
   bool ok = true;
   for (int attempt = 0; attempt < 2; attempt++) {
      bson_t reply;
      int32_t code = 0;
      if (!mongoc_collection_update_one(t->mc, &filter, &pipeline, NULL,
                                        &reply, berr)) {
         if (single_write_error(w, &reply, why, sizeof why, &code)) {
            on_fail(arg, doc, why);
         } else if (is_transient(berr)) {
            ok = false;
         } else {
            write_error_reason(w, (int32_t) berr->code, berr->message, why,
                               sizeof why);
            on_fail(arg, doc, why);
         }
         bson_destroy(&reply);
         break;
      }
      bson_iter_t it;
      int64_t matched = 0;
      if (bson_iter_init_find(&it, &reply, "matchedCount")) {
         matched = bson_iter_as_int64(&it);
      }
      bson_destroy(&reply);
      if (matched > 0 || !w->insert_unmatched) {
         break;
      }
      if (mongoc_collection_insert_one(t->mc, doc, NULL, &reply, berr)) {
         bson_destroy(&reply);
         break;
      }
      bool dup = single_write_error(w, &reply, why, sizeof why, &code) &&
                 code == 11000;
      bson_destroy(&reply);
      if (dup && attempt == 0) {
         continue;
      }
      if (!dup && is_transient(berr)) {
         ok = false;
      } else {
         if (code == 0) {
            write_error_reason(w, (int32_t) berr->code, berr->message, why,
                               sizeof why);
         }
         on_fail(arg, doc, why);
      }
      break;
   }
   bson_destroy(&filter);
   bson_destroy(&pipeline);
   return ok;
}

/* The sink's name in fatal errors, as ASP words them. */
static const char *
sink_name(const aspen_coll_writer_t *w)
{
   return w->timeseries ? "Time series $emit" : "$merge";
}

/* Whether db.coll exists as a time-series collection (false: it exists as
 * something else). False with err set when the listing fails. */
static bool
is_timeseries_coll(aspen_coll_writer_t *w, const target_t *t, bool *is_ts,
                   aspen_error_t *err)
{
   *is_ts = false;
   mongoc_database_t *mdb = mongoc_client_get_database(w->client, t->db);
   bson_t opts = BSON_INITIALIZER, filter;
   BSON_APPEND_DOCUMENT_BEGIN(&opts, "filter", &filter);
   BSON_APPEND_UTF8(&filter, "name", t->coll);
   bson_append_document_end(&opts, &filter);
   mongoc_cursor_t *cur = mongoc_database_find_collections_with_opts(mdb, &opts);
   const bson_t *info;
   bson_error_t berr;
   while (mongoc_cursor_next(cur, &info)) {
      bson_iter_t it;
      /* Servers that ignore the filter list every collection. */
      if (!bson_iter_init_find(&it, info, "name") ||
          !BSON_ITER_HOLDS_UTF8(&it) ||
          strcmp(bson_iter_utf8(&it, NULL), t->coll) != 0) {
         continue;
      }
      *is_ts = bson_iter_init_find(&it, info, "type") &&
               BSON_ITER_HOLDS_UTF8(&it) &&
               strcmp(bson_iter_utf8(&it, NULL), "timeseries") == 0;
   }
   bool ok = !mongoc_cursor_error(cur, &berr);
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                      "Time series $emit to %s.%s failed: %s", t->db, t->coll,
                      berr.message);
   }
   mongoc_cursor_destroy(cur);
   bson_destroy(&opts);
   mongoc_database_destroy(mdb);
   return ok;
}

/* Time-series $emit: before a target's first write, creates it with the
 * `timeseries` options. A collection already there (NamespaceExists, 48:
 * created earlier, by another processor, or with other options) is fine if
 * it is a time-series collection; anything else there, or a create the
 * server refuses, is an error (err set): the processor fails with the
 * server's reason, as does an unreachable server once the flush gives up. */
static bool
ensure_timeseries(aspen_coll_writer_t *w, target_t *t, aspen_error_t *err)
{
   if (!w->timeseries || t->ready) {
      return true;
   }
   bson_t cmd = BSON_INITIALIZER, reply;
   BSON_APPEND_UTF8(&cmd, "create", t->coll);
   BSON_APPEND_DOCUMENT(&cmd, "timeseries", &w->ts_opts);
   bson_error_t berr;
   bool ok = mongoc_client_write_command_with_opts(w->client, t->db, &cmd,
                                                   NULL, &reply, &berr);
   bson_destroy(&cmd);
   bson_destroy(&reply);
   if (ok) {
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", w->ns,
                 "created the time-series collection %s.%s", t->db, t->coll);
      t->ready = true;
      return true;
   }
   if (berr.domain == MONGOC_ERROR_SERVER && berr.code == 48) {
      bool is_ts;
      if (!is_timeseries_coll(w, t, &is_ts, err)) {
         return false;
      }
      if (!is_ts) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                         "Time series $emit to %s.%s failed: the collection "
                         "exists and is not a time-series collection",
                         t->db, t->coll);
         return false;
      }
      t->ready = true;
      return true;
   }
   aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                   "Time series $emit to %s.%s failed: %s", t->db, t->coll,
                   berr.message);
   return false;
}

aspen_coll_writer_t *
aspen_coll_writer_new_timeseries(const aspen_conns_t *conns,
                                 const bson_t *spec, aspen_error_t *err)
{
   aspen_coll_writer_t *w = BSON_ALIGNED_ALLOC0(aspen_coll_writer_t);
   bson_copy_to(spec, &w->spec);
   bson_init(&w->wm_pipeline);
   bson_init(&w->ts_opts);
   w->plain_insert = true;
   w->timeseries = true;
   w->max_doc_bytes = ASPEN_EMIT_TS_MAX_DOC_BYTES;
   w->op_name = ASPEN_EMIT_TS_OPERATOR;
   w->label = "$emit";
   const aspen_conn_t *conn = NULL;
   bson_iter_t it;
   bson_iter_init(&it, &w->spec);
   bool ok = true;
   while (ok && bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "connectionName") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
         conn = aspen_conns_find(conns, bson_iter_utf8(&it, NULL));
      } else if (strcmp(k, "db") == 0) {
         ok = target_name(&it, &w->db_lit, &w->db_expr, err);
      } else if (strcmp(k, "coll") == 0) {
         ok = target_name(&it, &w->coll_lit, &w->coll_expr, err);
      } else if (strcmp(k, "timeseries") == 0 &&
                 BSON_ITER_HOLDS_DOCUMENT(&it)) {
         copy_sub(&it, &w->ts_opts);
      }
   }
   if (ok && (!conn || (!w->db_lit && !w->db_expr) ||
              (!w->coll_lit && !w->coll_expr) || bson_empty(&w->ts_opts))) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "StreamProcessorInvalidOptions: invalid time-series "
                      "$emit");
      ok = false;
   }
   w->conn = conn;
   w->acts = ASPEN_ENGINE_ACT_INSERT | ASPEN_ENGINE_ACT_CREATE_COLLECTION;
   if (!ok ||
       (w->db_lit && w->coll_lit &&
        !target_allowed(w, w->db_lit, w->coll_lit, err)) ||
       !(w->client = aspen__conn_atlas_client_new(conn, true, err))) {
      aspen_coll_writer_destroy(w);
      return NULL;
   }
   snprintf(w->ns, sizeof w->ns, "%s.%s",
            w->db_lit ? w->db_lit : "<db expression>",
            w->coll_lit ? w->coll_lit : "<coll expression>");
   if (w->db_lit && w->coll_lit) {
      /* A literal target is created now, so a refused one fails the
       * start, as in ASP. */
      target_t *t = target_add(w, w->db_lit, w->coll_lit);
      w->n_dbs = 1;
      if (!ensure_timeseries(w, t, err)) {
         aspen_coll_writer_destroy(w);
         return NULL;
      }
   }
   return w;
}

/* Writes one target's queued documents. False (err set) when the server
 * could not be reached: the batch is kept for the next attempt. Documents
 * the server refused go to on_fail and leave the batch. */
static bool
flush_target(aspen_coll_writer_t *w, target_t *t,
             aspen_coll_writer_fail_fn on_fail, void *arg, aspen_error_t *err)
{
   if (t->n_batch == 0) {
      return true;
   }
   char ns[600];
   snprintf(ns, sizeof ns, "%s.%s", t->db, t->coll);
   if (!ensure_timeseries(w, t, err)) {
      return false;
   }
   if (w->when_matched == WM_PIPELINE && !w->plain_insert) {
      size_t done = 0;
      bool ok = true;
      for (; done < t->n_batch; done++) {
         bson_error_t berr;
         if (!write_with_pipeline(w, t, t->batch[done], on_fail, arg, &berr)) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                            "%s to %s failed: %s", sink_name(w), ns,
                            berr.message);
            ok = false;
            break;
         }
         bson_destroy(t->batch[done]);
      }
      /* Keep what was not written, in order. */
      memmove(t->batch, t->batch + done, (t->n_batch - done) * sizeof *t->batch);
      t->n_batch -= done;
      return ok;
   }
   bson_t opts = BSON_INITIALIZER;
   BSON_APPEND_BOOL(&opts, "ordered", false);
   mongoc_bulk_operation_t *bulk =
      mongoc_collection_create_bulk_operation_with_opts(t->mc, &opts);
   bson_destroy(&opts);
   /* index in the bulk -> index in the batch */
   size_t *map = aspen_xcalloc(t->n_batch, sizeof *map);
   size_t n_ops = 0;
   for (size_t i = 0; i < t->n_batch; i++) {
      bson_error_t berr;
      char why[256] = "";
      if (!add_write(w, bulk, t->batch[i], &berr, why, sizeof why)) {
         on_fail(arg, t->batch[i], *why ? why : berr.message);
         continue;
      }
      map[n_ops++] = i;
   }
   bool ok = true;
   if (n_ops > 0) {
      bson_t reply;
      bson_error_t berr;
      uint32_t hint = mongoc_bulk_operation_execute(bulk, &reply, &berr);
      if (!hint) {
         bson_iter_t it;
         bool any_write_errors = false;
         if (bson_iter_init_find(&it, &reply, "writeErrors") &&
             BSON_ITER_HOLDS_ARRAY(&it)) {
            bson_iter_t ei;
            bson_iter_recurse(&it, &ei);
            while (bson_iter_next(&ei)) {
               bson_iter_t f;
               int64_t index = -1;
               int32_t code = 0;
               const char *msg = "";
               if (bson_iter_recurse(&ei, &f)) {
                  while (bson_iter_next(&f)) {
                     if (strcmp(bson_iter_key(&f), "index") == 0) {
                        index = bson_iter_as_int64(&f);
                     } else if (strcmp(bson_iter_key(&f), "code") == 0) {
                        code = (int32_t) bson_iter_as_int64(&f);
                     } else if (strcmp(bson_iter_key(&f), "errmsg") == 0 &&
                                BSON_ITER_HOLDS_UTF8(&f)) {
                        msg = bson_iter_utf8(&f, NULL);
                     }
                  }
               }
               any_write_errors = true;
               /* A retried DLQ insert that had reached the server already:
                * its fixed _id makes it a duplicate, and it is written. */
               if (w->plain_insert && code == 11000) {
                  continue;
               }
               if (index >= 0 && (size_t) index < n_ops) {
                  char reason[1024];
                  write_error_reason(w, code, msg, reason, sizeof reason);
                  on_fail(arg, t->batch[map[index]], reason);
               }
            }
         }
         if (!any_write_errors) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                            "%s to %s failed: %s", sink_name(w), ns,
                            berr.message);
            ok = false;
         }
      }
      bson_destroy(&reply);
   }
   mongoc_bulk_operation_destroy(bulk);
   free(map);
   if (ok) {
      for (size_t i = 0; i < t->n_batch; i++) {
         bson_destroy(t->batch[i]);
      }
      t->n_batch = 0;
   }
   return ok;
}

bool
aspen_coll_writer_flush(aspen_coll_writer_t *w,
                        aspen_coll_writer_fail_fn on_fail, void *arg,
                        aspen_error_t *err)
{
   bool ok = true;
   for (size_t i = 0; i < w->n_targets; i++) {
      /* A transient failure (the server restarting, a failover) is retried
       * a few times before the caller fails the processor. */
      for (int attempt = 0;; attempt++) {
         if (flush_target(w, &w->targets[i], on_fail, arg, err)) {
            break;
         }
         if (attempt + 1 >= FLUSH_ATTEMPTS) {
            ok = false;
            break;
         }
         aspen_logf(ASPEN_LOG_WARNING, "STREAMS", w->ns,
                    "write to %s.%s failed (%s); retrying", w->targets[i].db,
                    w->targets[i].coll, err->message);
         struct timespec pause = {.tv_sec = 0,
                                  .tv_nsec = 200000000L << attempt};
         nanosleep(&pause, NULL);
      }
      if (!ok) {
         break;
      }
   }
   size_t queued = 0, bytes = 0;
   for (size_t i = 0; i < w->n_targets; i++) {
      for (size_t j = 0; j < w->targets[i].n_batch; j++) {
         queued++;
         bytes += w->targets[i].batch[j]->len;
      }
   }
   w->n_queued = queued;
   w->queued_bytes = bytes;
   return ok;
}

/* ---- the dead-letter queue's writer ---------------------------------------- */

static void *
dlq_open(const aspen_conns_t *conns, const char *conn_name, const char *db,
         const char *coll, aspen_error_t *err)
{
   const aspen_conn_t *conn = aspen_conns_find(conns, conn_name);
   if (!conn) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "Unknown connection name %s (options.dlq)", conn_name);
      return NULL;
   }
   aspen_coll_writer_t *w = aspen_coll_writer_new_insert(conn, db, coll, err);
   if (!w) {
      char msg[ASPEN_ERROR_MSG_MAX];
      snprintf(msg, sizeof msg, "cannot open the DLQ: %s", err->message);
      aspen_error_set(err, err->code, "%s", msg);
   }
   return w;
}

static bool
dlq_add(void *w, const bson_t *doc, aspen_dlq_refused_fn refused, void *arg,
        aspen_error_t *err)
{
   return aspen_coll_writer_add(w, doc, refused, arg, err);
}

static bool
dlq_flush(void *w, aspen_dlq_refused_fn refused, void *arg, aspen_error_t *err)
{
   return aspen_coll_writer_flush(w, refused, arg, err);
}

static void
dlq_close(void *w)
{
   aspen_coll_writer_destroy(w);
}

const aspen_dlq_ops_t aspen_coll_writer_dlq_ops = {
   .open = dlq_open,
   .add = dlq_add,
   .flush = dlq_flush,
   .close = dlq_close,
};
