/*
 * sink_merge.c - $merge: validating its options at create time, and writing
 * a processor's output to a MongoDB collection at run time, plus the
 * collection writer the dead-letter queue shares.
 *
 * Writes are batched into unordered bulk operations keyed on the `on` fields
 * (default _id), so replaying the same input leaves the same collection. A
 * document the server refuses goes to the DLQ with the server's error; an
 * unreachable server fails the processor. Runs on the processor's thread;
 * mongoc calls block there, never on the event loop.
 */
#include "engine_int.h"
#include "sink.h"
#include "source.h"

#include <mongoc/mongoc.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_DOCS 1000
#define BATCH_BYTES (12u * 1024u * 1024u)

typedef enum { WM_MERGE, WM_REPLACE, WM_KEEP, WM_DELETE } when_matched_t;

/* ---- option parsing ---------------------------------------------------- */

static bool
parse_into(const bson_iter_t *it, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "into",
                        "$merge.into must be an object {connectionName, db, "
                        "coll}");
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t into;
   bson_iter_t ii;
   bson_iter_document(it, &len, &data);
   (void) bson_init_static(&into, data, len);
   const char *conn = NULL;
   bool db = false, coll = false;
   bson_iter_init(&ii, &into);
   while (bson_iter_next(&ii)) {
      const char *k = bson_iter_key(&ii);
      char opt[64];
      snprintf(opt, sizeof opt, "into.%s", k);
      if (strcmp(k, "connectionName") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&ii)) {
            aspen_parse_error(err, pc, opt, "connectionName must be a string");
            return false;
         }
         conn = bson_iter_utf8(&ii, NULL);
      } else if (strcmp(k, "db") == 0 || strcmp(k, "coll") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&ii)) {
            aspen_parse_error(err, pc, opt,
                              "$merge.into.%s must be a string (dynamic "
                              "targets are not supported by this version of "
                              "aspen yet)",
                              k);
            return false;
         }
         const char *v = bson_iter_utf8(&ii, NULL);
         if (!*v || v[0] == '$') {
            aspen_parse_error(err, pc, opt,
                              "$merge.into.%s must be a non-empty literal "
                              "name (dynamic targets are not supported by "
                              "this version of aspen yet)",
                              k);
            return false;
         }
         *(k[0] == 'd' ? &db : &coll) = true;
      } else {
         aspen_parse_error(err, pc, opt,
                           "BSON field '$merge.into.%s' is an unknown field.",
                           k);
         return false;
      }
   }
   if (!conn || !db || !coll) {
      aspen_parse_error(err, pc, "into",
                        "$merge.into requires connectionName, db and coll");
      return false;
   }
   const aspen_conn_t *c = aspen_conns_find(pc->conns, conn);
   if (!c) {
      aspen_parse_error(err, pc, "into.connectionName",
                        "Unknown connection name %s", conn);
      return false;
   }
   if (c->type != ASPEN_CONN_ATLAS) {
      aspen_parse_error(err, pc, "into.connectionName",
                        "Only atlas merge connection type is currently "
                        "supported");
      return false;
   }
   return true;
}

static bool
merge_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   (void) st;
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_parse_error(err, pc, NULL, "$merge must be an object");
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t spec;
   bson_iter_t it;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&spec, data, len);
   bool has_into = false;
   bson_iter_init(&it, &spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "into") == 0) {
         if (!parse_into(&it, pc, err)) {
            return false;
         }
         has_into = true;
      } else if (strcmp(k, "on") == 0) {
         if (BSON_ITER_HOLDS_UTF8(&it)) {
            continue;
         }
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            aspen_parse_error(err, pc, "on",
                              "$merge.on must be a string or an array of "
                              "strings");
            return false;
         }
         bson_t arr;
         bson_iter_t ai, aj;
         bson_iter_array(&it, &len, &data);
         (void) bson_init_static(&arr, data, len);
         bson_iter_init(&ai, &arr);
         int n = 0;
         while (bson_iter_next(&ai)) {
            n++;
            if (!BSON_ITER_HOLDS_UTF8(&ai)) {
               aspen_parse_error(err, pc, "on",
                                 "$merge.on array elements must be strings");
               return false;
            }
            bson_iter_init(&aj, &arr);
            while (bson_iter_next(&aj) &&
                   strcmp(bson_iter_key(&aj), bson_iter_key(&ai)) != 0) {
               if (BSON_ITER_HOLDS_UTF8(&aj) &&
                   strcmp(bson_iter_utf8(&aj, NULL),
                          bson_iter_utf8(&ai, NULL)) == 0) {
                  aspen_parse_error(err, pc, "on",
                                    "Found a duplicate field in the "
                                    "$merge.on list: '%s'",
                                    bson_iter_utf8(&ai, NULL));
                  return false;
               }
            }
         }
         if (n == 0) {
            aspen_parse_error(err, pc, "on",
                              "If explicitly specifying $merge.on, must "
                              "include at least one field");
            return false;
         }
      } else if (strcmp(k, "whenMatched") == 0) {
         const char *m = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : NULL;
         if (BSON_ITER_HOLDS_ARRAY(&it)) {
            aspen_parse_error(err, pc, "whenMatched",
                              "a pipeline for $merge.whenMatched is not "
                              "supported by this version of aspen yet");
            return false;
         }
         if (!m || (strcmp(m, "merge") != 0 && strcmp(m, "replace") != 0 &&
                    strcmp(m, "keepExisting") != 0 &&
                    strcmp(m, "delete") != 0)) {
            aspen_parse_error(err, pc, "whenMatched",
                              "Unsupported whenMatched mode: %s",
                              m ? m : "(not a string)");
            return false;
         }
      } else if (strcmp(k, "whenNotMatched") == 0) {
         const char *m = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : NULL;
         if (!m || (strcmp(m, "insert") != 0 && strcmp(m, "discard") != 0)) {
            aspen_parse_error(err, pc, "whenNotMatched",
                              "Unsupported whenNotMatched mode: %s",
                              m ? m : "(not a string)");
            return false;
         }
      } else if (strcmp(k, "parallelism") == 0) {
         if (!BSON_ITER_HOLDS_INT32(&it) && !BSON_ITER_HOLDS_INT64(&it)) {
            aspen_parse_error(err, pc, "parallelism",
                              "$merge.parallelism must be an integer");
            return false;
         }
         int64_t p = bson_iter_as_int64(&it);
         if (p < 1 || p > 64) {
            aspen_parse_error(err, pc, "parallelism",
                              "$merge.parallelism must be between 1 and 64");
            return false;
         }
      } else if (strcmp(k, "let") == 0) {
         aspen_parse_error(err, pc, "let",
                           "$merge.let is not supported by this version of "
                           "aspen yet");
         return false;
      } else {
         aspen_parse_error(err, pc, k,
                           "BSON field '$merge.%s' is an unknown field.", k);
         return false;
      }
   }
   if (!has_into) {
      aspen_parse_error(err, pc, "into",
                        "BSON field '$merge.into' is missing but a required "
                        "field");
      return false;
   }
   return true;
}

const aspen_stage_ops_t aspen_stage_merge_ops = {
   "$merge", "MergeOperator", merge_parse, NULL, NULL};

/* ---- the collection writer --------------------------------------------- */

struct aspen_coll_writer {
   mongoc_client_t *client;
   mongoc_collection_t *coll;
   char ns[256];
   char *on[16];
   int n_on;
   when_matched_t when_matched;
   bool insert_unmatched;
   bool plain_insert; /* DLQ: just insert */
   bson_t **batch;
   size_t n_batch;
   size_t batch_bytes;
};

static void
ping_error(aspen_error_t *err, int32_t code, const char *what,
           const bson_error_t *berr)
{
   aspen_error_set(err, code, "%s: %s", what, berr->message);
}

static aspen_coll_writer_t *
writer_new(const aspen_conn_t *conn, const char *db, const char *coll,
           aspen_error_t *err)
{
   bson_error_t berr;
   mongoc_uri_t *uri = mongoc_uri_new_with_error(conn->uri, &berr);
   if (!uri) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                      "connection '%s' has an invalid URI: %s", conn->name,
                      berr.message);
      return NULL;
   }
   if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
      mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                     5000);
   }
   aspen_coll_writer_t *w = aspen_xcalloc(1, sizeof *w);
   w->client = mongoc_client_new_from_uri(uri);
   mongoc_uri_destroy(uri);
   if (!w->client) {
      free(w);
      aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                      "cannot create a client for connection '%s'",
                      conn->name);
      return NULL;
   }
   mongoc_client_set_error_api(w->client, MONGOC_ERROR_API_VERSION_2);
   mongoc_client_set_appname(w->client, "aspen-processor");
   bson_t ping = BSON_INITIALIZER;
   BSON_APPEND_INT32(&ping, "ping", 1);
   bool ok = mongoc_client_command_simple(w->client, "admin", &ping, NULL,
                                          NULL, &berr);
   bson_destroy(&ping);
   if (!ok) {
      char what[300];
      snprintf(what, sizeof what, "cannot reach connection '%s'", conn->name);
      ping_error(err, ASPEN_ERR_StreamProcessorAtlasConnectionError, what,
                 &berr);
      mongoc_client_destroy(w->client);
      free(w);
      return NULL;
   }
   w->coll = mongoc_client_get_collection(w->client, db, coll);
   snprintf(w->ns, sizeof w->ns, "%s.%s", db, coll);
   w->batch = aspen_xcalloc(BATCH_DOCS, sizeof *w->batch);
   w->insert_unmatched = true;
   return w;
}

aspen_coll_writer_t *
aspen_coll_writer_new_insert(const aspen_conn_t *conn, const char *db,
                             const char *coll, aspen_error_t *err)
{
   aspen_coll_writer_t *w = writer_new(conn, db, coll, err);
   if (w) {
      w->plain_insert = true;
   }
   return w;
}

aspen_coll_writer_t *
aspen_coll_writer_new_merge(const aspen_conns_t *conns, const bson_t *spec,
                            aspen_error_t *err)
{
   bson_iter_t it;
   const char *conn_name = NULL, *db = NULL, *coll = NULL;
   if (bson_iter_init_find(&it, spec, "into") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t ii;
      bson_iter_recurse(&it, &ii);
      while (bson_iter_next(&ii)) {
         const char *k = bson_iter_key(&ii);
         const char *v = bson_iter_utf8(&ii, NULL);
         if (strcmp(k, "connectionName") == 0) {
            conn_name = v;
         } else if (strcmp(k, "db") == 0) {
            db = v;
         } else if (strcmp(k, "coll") == 0) {
            coll = v;
         }
      }
   }
   const aspen_conn_t *conn = conn_name ? aspen_conns_find(conns, conn_name)
                                        : NULL;
   if (!conn || !db || !coll) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "StreamProcessorInvalidOptions: invalid $merge.into");
      return NULL;
   }
   aspen_coll_writer_t *w = writer_new(conn, db, coll, err);
   if (!w) {
      return NULL;
   }
   w->when_matched = WM_MERGE;
   if (bson_iter_init_find(&it, spec, "on")) {
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
   if (bson_iter_init_find(&it, spec, "whenMatched") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      const char *m = bson_iter_utf8(&it, NULL);
      w->when_matched = strcmp(m, "replace") == 0        ? WM_REPLACE
                        : strcmp(m, "keepExisting") == 0 ? WM_KEEP
                        : strcmp(m, "delete") == 0       ? WM_DELETE
                                                         : WM_MERGE;
   }
   if (bson_iter_init_find(&it, spec, "whenNotMatched") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      w->insert_unmatched = strcmp(bson_iter_utf8(&it, NULL), "insert") == 0;
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
   for (size_t i = 0; i < w->n_batch; i++) {
      bson_destroy(w->batch[i]);
   }
   free(w->batch);
   for (int i = 0; i < w->n_on; i++) {
      free(w->on[i]);
   }
   mongoc_collection_destroy(w->coll);
   mongoc_client_destroy(w->client);
   free(w);
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

bool
aspen_coll_writer_add(aspen_coll_writer_t *w, const bson_t *doc,
                      aspen_coll_writer_fail_fn on_fail, void *arg,
                      aspen_error_t *err)
{
   w->batch[w->n_batch++] = bson_copy(doc);
   w->batch_bytes += doc->len;
   if (w->n_batch >= BATCH_DOCS || w->batch_bytes >= BATCH_BYTES) {
      return aspen_coll_writer_flush(w, on_fail, arg, err);
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
   bool id_only = w->n_on == 1 && strcmp(w->on[0], "_id") == 0;
   if (id_only && !bson_has_field(doc, "_id")) {
      /* No key: nothing can match, so this is an insert with a new _id. */
      if (!w->insert_unmatched) {
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
   BSON_APPEND_BOOL(&opts, "upsert", w->insert_unmatched);
   bool ok;
   switch (w->when_matched) {
   case WM_REPLACE: {
      ok = mongoc_bulk_operation_replace_one_with_opts(bulk, &filter, doc,
                                                       &opts, berr);
      break;
   }
   case WM_KEEP: {
      bson_t update = BSON_INITIALIZER;
      BSON_APPEND_DOCUMENT(&update, "$setOnInsert", doc);
      ok = w->insert_unmatched
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

bool
aspen_coll_writer_flush(aspen_coll_writer_t *w,
                        aspen_coll_writer_fail_fn on_fail, void *arg,
                        aspen_error_t *err)
{
   if (w->n_batch == 0) {
      return true;
   }
   bson_t opts = BSON_INITIALIZER;
   BSON_APPEND_BOOL(&opts, "ordered", false);
   mongoc_bulk_operation_t *bulk =
      mongoc_collection_create_bulk_operation_with_opts(w->coll, &opts);
   bson_destroy(&opts);
   /* index in the bulk -> index in the batch */
   size_t *map = aspen_xcalloc(w->n_batch, sizeof *map);
   size_t n_ops = 0;
   for (size_t i = 0; i < w->n_batch; i++) {
      bson_error_t berr;
      char why[256] = "";
      uint32_t before = n_ops;
      (void) before;
      if (!add_write(w, bulk, w->batch[i], &berr, why, sizeof why)) {
         on_fail(arg, w->batch[i], *why ? why : berr.message);
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
               if (index >= 0 && (size_t) index < n_ops) {
                  char reason[1024];
                  const char *name = aspen_error_code_name(code);
                  if (code == 11000) {
                     name = "DuplicateKey";
                  }
                  snprintf(reason, sizeof reason,
                           "Failed to process an input document in the "
                           "current batch in MergeOperator with error: code "
                           "= %s, reason = %s",
                           name, msg);
                  on_fail(arg, w->batch[map[index]], reason);
               }
            }
         }
         if (!any_write_errors) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                            "$merge to %s failed: %s", w->ns, berr.message);
            ok = false;
         }
      }
      bson_destroy(&reply);
   }
   mongoc_bulk_operation_destroy(bulk);
   free(map);
   if (ok) {
      for (size_t i = 0; i < w->n_batch; i++) {
         bson_destroy(w->batch[i]);
      }
      w->n_batch = 0;
      w->batch_bytes = 0;
   }
   return ok;
}

/* ---- $merge as a processor sink ----------------------------------------- */

static void
merge_refused(void *arg, const bson_t *doc, const char *reason)
{
   aspen_rt_sink_failed(arg, doc, reason);
}

static bool
merge_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
           aspen_error_t *err)
{
   *state = aspen_coll_writer_new_merge(aspen_rt_conns(rt), spec, err);
   return *state != NULL;
}

static bool
merge_write(aspen_runtime_t *rt, void *state, const bson_t *doc,
            aspen_error_t *err)
{
   return aspen_coll_writer_add(state, doc, merge_refused, rt, err);
}

static bool
merge_flush(aspen_runtime_t *rt, void *state, aspen_error_t *err)
{
   return aspen_coll_writer_flush(state, merge_refused, rt, err);
}

static void
merge_close(void *state)
{
   aspen_coll_writer_destroy(state);
}

const aspen_sink_ops_t aspen_sink_merge_ops = {
   "MergeOperator", merge_open, merge_write, merge_flush, merge_close};
