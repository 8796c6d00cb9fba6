/*
 * fuzz_expr.c - aggregation expressions on arbitrary documents. The input
 * (Extended JSON or BSON, see fuzz_common.h) is one document
 *   {e: <expression>, d: <input document>, o: <object of expressions>}
 * (every field optional): `e` is compiled with aspen_expr_parse (with a user
 * variable "x" in scope) and `o` with aspen_expr_parse_object, and each is
 * evaluated with `d` (or a fixed document when `d` is absent or not a
 * document) as $$ROOT, and again with "x" bound to `d`'s first value. When
 * neither `e` nor `o` is there, the whole input is the object expression.
 */
#include "lang/expr.h"
#include "fuzz_common.h"
#include "wire.h"

static bson_t g_root;
static bson_t g_meta;
static bool g_ready;

static void
init_once(void)
{
   if (g_ready) {
      return;
   }
   g_ready = true;
   aspen_log_set_level(ASPEN_LOG_ERROR);
   fuzz_fixed_doc(
      &g_root,
      "{\"_id\": 1, \"a\": 5, \"b\": \"Hello\", \"c\": [1, 2.5, {\"d\": null}],"
      " \"t\": {\"$date\": \"2024-02-29T12:34:56.789Z\"},"
      " \"dec\": {\"$numberDecimal\": \"-1.25E+3\"}, \"l\": {\"$numberLong\":"
      " \"9007199254740993\"}, \"o\": {\"p\": [\"x\", \"y\"]}}");
   fuzz_fixed_doc(
      &g_meta,
      "{\"source\": {\"type\": \"kafka\", \"topic\": \"t\", \"partition\": 0,"
      " \"offset\": 7}, \"window\": {\"start\": {\"$date\": "
      "\"2024-01-01T00:00:00Z\"}, \"end\": {\"$date\": "
      "\"2024-01-01T00:01:00Z\"}}}");
}

static void
eval_all(const aspen_expr_t *e, const bson_t *root)
{
   aspen_expr_ctx_t ctx = {.root = root, .meta = &g_meta,
                           .now_ms = 1704067200000, .current = NULL};
   aspen_value_t v;
   aspen_error_t err;
   if (aspen_expr_eval(e, &ctx, &v, &err)) {
      aspen_value_destroy(&v);
   } else {
      ASPEN_ASSERT(err.code != 0);
      aspen_value_destroy(&v);
   }
   /* "x" bound to the root's first value (or MISSING). */
   static const char *const names[] = {"x"};
   aspen_value_t x = aspen_expr_get_path(root, "_id");
   if (aspen_expr_eval_with_vars(e, &ctx, names, &x, 1, &v, &err)) {
      aspen_value_destroy(&v);
   } else {
      aspen_value_destroy(&v);
   }
   aspen_value_destroy(&x);
   aspen_value_t c;
   (void) aspen_expr_is_constant(e, &c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   if (size > FUZZ_MAX_INPUT) {
      return 0;
   }
   init_once();
   bson_t doc;
   if (!fuzz_doc_from_bytes(data, size, &doc)) {
      bson_destroy(&doc);
      return 0;
   }
   static const char *const vars[] = {"x", NULL};
   const bson_t *root = &g_root;
   bson_t d;
   bson_iter_t it;
   if (bson_iter_init_find(&it, &doc, "d") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
       aspen_bson_view(&it, &d)) {
      root = &d;
   }
   bool any = false;
   aspen_expr_t *e = NULL;
   aspen_error_t err;
   if (bson_iter_init_find(&it, &doc, "e")) {
      any = true;
      if (aspen_expr_parse(&it, vars, &e, &err)) {
         eval_all(e, root);
         aspen_expr_destroy(e);
      } else {
         ASPEN_ASSERT(err.code != 0);
      }
   }
   const bson_t *obj = NULL;
   bson_t o;
   if (bson_iter_init_find(&it, &doc, "o") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      any = true;
      if (aspen_bson_view(&it, &o)) {
         obj = &o;
      }
   }
   if (!any) {
      obj = &doc;
   }
   if (obj) {
      if (aspen_expr_parse_object(obj, vars, &e, &err)) {
         eval_all(e, root);
         aspen_expr_destroy(e);
      } else {
         ASPEN_ASSERT(err.code != 0);
      }
   }
   bson_destroy(&doc);
   return 0;
}
