/*
 * stage_redact.c - the $redact stage: an expression deciding per level of
 * the document whether to keep it ($$KEEP), drop it ($$PRUNE) or look into
 * its fields ($$DESCEND).
 */
#include "runtime/pipeline.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
   aspen_expr_t *expr;
} redact_t;

static void
redact_destroy(aspen_stage_t *st)
{
   redact_t *r = st->state;
   if (r) {
      aspen_expr_destroy(r->expr);
      free(r);
      st->state = NULL;
   }
}

static bool
redact_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   (void) pc;
   redact_t *r = aspen_xcalloc(1, sizeof *r);
   st->state = r;
   /* $$DESCEND, $$PRUNE and $$KEEP are system variables of the expression
    * language ("descend", "prune", "keep"). */
   if (!aspen_expr_parse(arg, NULL, &r->expr, err)) {
      redact_destroy(st);
      return false;
   }
   return true;
}

typedef enum { R_DESCEND, R_PRUNE, R_KEEP } redact_action_t;

static bool
redact_decide(const redact_t *r, const aspen_expr_ctx_t *ctx,
              redact_action_t *action, aspen_error_t *err)
{
   aspen_value_t out;
   if (!aspen_expr_eval(r->expr, ctx, &out, err)) {
      return false;
   }
   char s[16] = "";
   if (out.v.value_type == BSON_TYPE_UTF8 && out.v.value.v_utf8.len < sizeof s) {
      memcpy(s, out.v.value.v_utf8.str, out.v.value.v_utf8.len);
      s[out.v.value.v_utf8.len] = '\0';
   }
   if (strcmp(s, "descend") == 0) {
      *action = R_DESCEND;
   } else if (strcmp(s, "prune") == 0) {
      *action = R_PRUNE;
   } else if (strcmp(s, "keep") == 0) {
      *action = R_KEEP;
   } else {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "$redact's expression should not return anything aside "
                      "from the variables $$KEEP, $$DESCEND, and $$PRUNE");
      aspen_value_destroy(&out);
      return false;
   }
   aspen_value_destroy(&out);
   return true;
}

/* Applies $redact to one level; returns false on error, *keep=false when the
 * level is pruned. $$CURRENT (the context root) is the level itself. */
static bool
redact_level(const redact_t *r, const bson_t *doc, const aspen_expr_ctx_t *ctx0,
             bson_t *out, bool *keep, aspen_error_t *err);

static bool
redact_value(const redact_t *r, const bson_iter_t *it,
             const aspen_expr_ctx_t *ctx0, bson_t *out, const char *key,
             aspen_error_t *err)
{
   uint32_t len;
   const uint8_t *data;
   if (BSON_ITER_HOLDS_DOCUMENT(it)) {
      bson_t sub, outsub = BSON_INITIALIZER;
      bool keep;
      bson_iter_document(it, &len, &data);
      (void) bson_init_static(&sub, data, len);
      if (!redact_level(r, &sub, ctx0, &outsub, &keep, err)) {
         bson_destroy(&outsub);
         return false;
      }
      if (keep) {
         bson_append_document(out, key, -1, &outsub);
      }
      bson_destroy(&outsub);
      return true;
   }
   if (BSON_ITER_HOLDS_ARRAY(it)) {
      bson_t sub, outarr;
      bson_iter_t ai;
      uint32_t idx = 0;
      bson_iter_array(it, &len, &data);
      (void) bson_init_static(&sub, data, len);
      bson_append_array_begin(out, key, -1, &outarr);
      bson_iter_init(&ai, &sub);
      while (bson_iter_next(&ai)) {
         char buf[16];
         const char *k;
         bson_uint32_to_string(idx, &k, buf, sizeof buf);
         uint32_t before = outarr.len;
         if (!redact_value(r, &ai, ctx0, &outarr, k, err)) {
            bson_append_array_end(out, &outarr);
            return false;
         }
         if (outarr.len != before) {
            idx++;
         }
      }
      bson_append_array_end(out, &outarr);
      return true;
   }
   bson_append_iter(out, key, -1, it);
   return true;
}

static bool
redact_level(const redact_t *r, const bson_t *doc, const aspen_expr_ctx_t *ctx0,
             bson_t *out, bool *keep, aspen_error_t *err)
{
   aspen_expr_ctx_t ctx = *ctx0;
   ctx.current = doc; /* $$ROOT stays the whole document */
   redact_action_t action;
   if (!redact_decide(r, &ctx, &action, err)) {
      return false;
   }
   *keep = action != R_PRUNE;
   if (action == R_KEEP) {
      bson_concat(out, doc);
      return true;
   }
   if (action == R_PRUNE) {
      return true;
   }
   bson_iter_t it;
   bson_iter_init(&it, doc);
   while (bson_iter_next(&it)) {
      if (!redact_value(r, &it, ctx0, out, bson_iter_key(&it), err)) {
         return false;
      }
   }
   return true;
}

static bool
redact_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   redact_t *r = st->state;
   aspen_expr_ctx_t ctx;
   bson_t out = BSON_INITIALIZER;
   bool keep;
   aspen_stage_expr_ctx(st, in, &ctx);
   if (!redact_level(r, in->doc, &ctx, &out, &keep, err)) {
      bson_destroy(&out);
      return false;
   }
   if (keep) {
      aspen_sdoc_t next = *in;
      next.doc = &out;
      aspen_stage_emit(st, &next);
   }
   bson_destroy(&out);
   return true;
}

const aspen_stage_ops_t aspen_stage_redact_ops = {
   .name = "$redact",
   .operator_name = "RedactOperator",
   .per_document = true,
   .parse = redact_parse,
   .push = redact_push,
   .destroy = redact_destroy,
};
