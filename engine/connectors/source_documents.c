/*
 * source_documents.c - the `documents` $source: a literal array of documents
 * (or an expression evaluated once to one), emitted in order. Afterwards the
 * source idles; as in ASP it does not end the processor. Its position is
 * the index of a document (partition 0): a processor resumed from a
 * checkpoint starts at the index the checkpoint says.
 */
#include "runtime/source.h"

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
   const aspen_source_spec_t *spec = aspen_rt_source_spec(rt);
   aspen_value_t computed = ASPEN_VALUE_MISSING;
   bson_t arr;
   if (spec->documents_expr) {
      bson_t empty = BSON_INITIALIZER;
      aspen_expr_ctx_t ctx = {.root = &empty, .meta = NULL, .now_ms = 0};
      aspen_error_t err;
      if (!aspen_expr_eval(spec->documents_expr, &ctx, &computed, &err) ||
          computed.v.value_type != BSON_TYPE_ARRAY) {
         aspen_rt_fail(rt, "The documents list expression does not evaluate "
                           "to an array.");
         aspen_value_destroy(&computed);
         return;
      }
      (void) bson_init_static(&arr, computed.v.value.v_doc.data,
                              computed.v.value.v_doc.data_len);
   } else {
      (void) bson_init_static(&arr, bson_get_data(&spec->documents),
                              spec->documents.len);
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
   .open = docs_open,
   .run = docs_run,
   .close = docs_close,
};
