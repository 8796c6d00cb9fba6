/*
 * stage_set_stream_meta.c - the $setStreamMeta stage (ASP, 2025-26):
 * {$setStreamMeta: {"stream.<key>": <expression>, ...}} sets fields of the
 * document's stream metadata (what {$meta: "stream.<key>"} and
 * `_stream_meta` show later, e.g. in $merge.into.coll) without touching
 * the document itself.
 *
 * ASP's page (sp-agg-setStreamMeta): every key must be a string beginning
 * with "stream.", every value an expression; an expression that fails to
 * evaluate sends the document to the DLQ; the stage stands after $source
 * and before the sink, in the main pipeline only (stages.def: MAIN).
 * A dotted key ("stream.route.coll") sets a nested field; an expression
 * that evaluates to missing leaves the field out, as $addFields does.
 */
#include "lang/value.h"
#include "runtime/pipeline.h"

#include <string.h>

typedef struct {
   char *path;      /* after "stream." */
   aspen_expr_t *expr;
} ssm_field_t;

typedef struct {
   ssm_field_t *fields;
   int n;
} ssm_t;

static void
ssm_destroy(aspen_stage_t *st)
{
   ssm_t *s = st->state;
   if (!s) {
      return;
   }
   for (int i = 0; i < s->n; i++) {
      bson_free(s->fields[i].path);
      aspen_expr_destroy(s->fields[i].expr);
   }
   bson_free(s->fields);
   bson_free(s);
   st->state = NULL;
}

static bool
ssm_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
          aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_parse_error(err, pc, NULL,
                        "$setStreamMeta specification must be an object");
      return false;
   }
   bson_iter_t it;
   bson_iter_recurse(arg, &it);
   ssm_t *s = bson_malloc0(sizeof *s);
   st->state = s;
   int cap = 0;
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      size_t klen = strlen(k);
      if (klen <= 7 || strncmp(k, "stream.", 7) != 0 || k[klen - 1] == '.' ||
          strstr(k + 7, "..") || k[7] == '.') {
         aspen_parse_error(err, pc, NULL,
                           "$setStreamMeta field names must be paths "
                           "beginning with 'stream.', found: '%s'",
                           k);
         ssm_destroy(st);
         return false;
      }
      if (s->n == cap) {
         cap = cap ? cap * 2 : 4;
         s->fields = bson_realloc(s->fields, (size_t) cap * sizeof *s->fields);
      }
      ssm_field_t *f = &s->fields[s->n];
      f->path = bson_strdup(k + 7);
      f->expr = NULL;
      s->n++;
      if (!aspen_expr_parse(&it, NULL, &f->expr, err)) {
         aspen_parse_wrap_error(err, pc);
         ssm_destroy(st);
         return false;
      }
   }
   if (s->n == 0) {
      aspen_parse_error(err, pc, NULL,
                        "$setStreamMeta requires at least one field");
      ssm_destroy(st);
      return false;
   }
   return true;
}

static bool
ssm_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   ssm_t *s = st->state;
   aspen_expr_ctx_t ctx;
   aspen_stage_expr_ctx(st, in, &ctx);
   /* Every expression sees the metadata the document came with. */
   bson_t cur = BSON_INITIALIZER;
   if (in->meta) {
      bson_concat(&cur, in->meta);
   }
   for (int i = 0; i < s->n; i++) {
      aspen_value_t v;
      if (!aspen_expr_eval(s->fields[i].expr, &ctx, &v, err)) {
         bson_destroy(&cur);
         return false;
      }
      bson_t next = BSON_INITIALIZER;
      aspen_doc_set_path(&cur, s->fields[i].path, &v, &next);
      aspen_value_destroy(&v);
      bson_destroy(&cur);
      bson_steal(&cur, &next);
   }
   aspen_sdoc_t out = *in;
   out.meta = &cur;
   aspen_stage_emit(st, &out);
   bson_destroy(&cur);
   return true;
}

const aspen_stage_ops_t aspen_stage_set_stream_meta_ops = {
   .name = "$setStreamMeta",
   .operator_name = "SetStreamMetaOperator",
   .per_document = true,
   .parse = ssm_parse,
   .push = ssm_push,
   .destroy = ssm_destroy,
};
