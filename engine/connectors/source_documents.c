/*
 * source_documents.c - the `documents` $source: a literal array of documents
 * (or an expression evaluated once to one), emitted in order. Afterwards the
 * source idles; as in ASP it does not end the processor. Its position is
 * the index of a document (partition 0): a processor resumed from a
 * checkpoint starts at the index the checkpoint says. It names no
 * connection: the catalog hands it to the pipeline parser as the $source
 * of {documents: ...}.
 */
#include "connectors/connectors.h"
#include "connectors/source_documents.h"

#include <stdlib.h>
#include <string.h>

/* The parsed `documents` option (aspen_source_spec_t.opts). */
typedef struct {
   bson_t *array;     /* a literal array of objects, or NULL */
   aspen_expr_t *expr; /* ... or an expression */
} docs_opts_t;

static void
docs_opts_destroy(void *opts)
{
   docs_opts_t *o = opts;
   if (!o) {
      return;
   }
   bson_destroy(o->array);
   aspen_expr_destroy(o->expr);
   free(o);
}

/* documents: an array of objects, or an expression that is to evaluate to
 * one. */
static bool
docs_parse_option(aspen_source_spec_t *spec, const bson_iter_t *it,
                  aspen_parse_ctx_t *pc, bool *handled, aspen_error_t *err)
{
   *handled = strcmp(bson_iter_key(it), "documents") == 0;
   if (!*handled) {
      return true;
   }
   docs_opts_t *o = spec->opts;
   if (!o) {
      spec->opts = o = aspen_xcalloc(1, sizeof *o);
   }
   bson_t arr;
   if (BSON_ITER_HOLDS_ARRAY(it) && aspen_bson_view(it, &arr)) {
      bson_iter_t ai;
      bson_iter_init(&ai, &arr);
      while (bson_iter_next(&ai)) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&ai)) {
            aspen_parse_error(err, pc, "$source.documents",
                              "The documents list expression does not "
                              "evaluate to an array of objects.");
            return false;
         }
      }
      bson_destroy(o->array);
      o->array = bson_copy(&arr);
      return true;
   }
   if (!aspen_expr_parse(it, NULL, &o->expr, err)) {
      aspen_parse_wrap_error(err, pc);
      return false;
   }
   return true;
}

const bson_t *
aspen__source_documents_array(const aspen_source_spec_t *spec)
{
   const docs_opts_t *o = spec->ops == &aspen_source_documents_ops
                             ? spec->opts
                             : NULL;
   return o ? o->array : NULL;
}

static bool
docs_open(aspen_runtime_t *rt, void **state, aspen_error_t *err)
{
   (void) rt;
   (void) err;
   *state = NULL;
   return true;
}

static void
docs_run(aspen_runtime_t *rt, void *state)
{
   (void) state;
   const docs_opts_t *o = aspen_rt_source_spec(rt)->opts;
   aspen_value_t computed = ASPEN_VALUE_MISSING;
   bson_t arr;
   if (o->expr) {
      bson_t empty = BSON_INITIALIZER;
      aspen_expr_ctx_t ctx = {.root = &empty, .meta = NULL, .now_ms = 0};
      aspen_error_t err;
      if (!aspen_expr_eval(o->expr, &ctx, &computed, &err) ||
          computed.v.value_type != BSON_TYPE_ARRAY) {
         aspen_rt_fail(rt, "The documents list expression does not evaluate "
                           "to an array.");
         aspen_value_destroy(&computed);
         return;
      }
      (void) bson_init_static(&arr, computed.v.value.v_doc.data,
                              computed.v.value.v_doc.data_len);
   } else {
      (void) bson_init_static(&arr, bson_get_data(o->array), o->array->len);
   }
   bson_iter_t it;
   bson_iter_init(&it, &arr);
   int64_t idx = -1, start = 0;
   if (!aspen_rt_restored_offset(rt, 0, &start)) {
      start = 0;
   }
   while (bson_iter_next(&it) && !aspen_rt_stopping(rt)) {
      if (++idx < start) {
         continue;
      }
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_rt_fail(rt, "The documents list expression does not evaluate "
                           "to an array of objects.");
         break;
      }
      uint32_t len;
      const uint8_t *data;
      bson_t doc;
      bson_iter_document(&it, &len, &data);
      (void) bson_init_static(&doc, data, len);
      aspen_rt_mark(rt, 0, idx, NULL);
      aspen_rt_ingest(rt, &doc, NULL, INT64_MIN);
   }
   aspen_value_destroy(&computed);
   while (!aspen_rt_wait(rt, 100)) {
   }
}

static void
docs_close(void *state)
{
   (void) state;
}

const aspen_source_ops_t aspen_source_documents_ops = {
   .type = "generated",
   .operator_name = "DocumentsDataSourceOperator",
   .what = "a documents $source",
   .parse_option = docs_parse_option,
   .spec_destroy = docs_opts_destroy,
   .open = docs_open,
   .run = docs_run,
   .close = docs_close,
};
