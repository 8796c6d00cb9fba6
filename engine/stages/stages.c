/*
 * stages.c - the stage table (which stages exist, where each may stand) and
 * the filtering stages: $match, $validate and $redact.
 *
 * Placement follows ASP's table (../shared/spec/asp-semantics.md §1.3).
 * Stages ASP supports that this build of aspen does not run yet are listed
 * with a parser that refuses them by name, so a pipeline is never accepted
 * here and then silently does something else.
 */
#include "engine_int.h"

#include <stdlib.h>
#include <string.h>

extern const aspen_stage_ops_t aspen_stage_project_ops;
extern const aspen_stage_ops_t aspen_stage_add_fields_ops;
extern const aspen_stage_ops_t aspen_stage_set_ops;
extern const aspen_stage_ops_t aspen_stage_unset_ops;
extern const aspen_stage_ops_t aspen_stage_replace_root_ops;
extern const aspen_stage_ops_t aspen_stage_replace_with_ops;
extern const aspen_stage_ops_t aspen_stage_unwind_ops;
extern const aspen_stage_ops_t aspen_stage_merge_ops;
extern const aspen_stage_ops_t aspen_stage_emit_ops;
extern const aspen_stage_ops_t aspen_stage_cached_lookup_ops;
extern const aspen_stage_ops_t aspen_stage_tumbling_ops;
extern const aspen_stage_ops_t aspen_stage_hopping_ops;
extern const aspen_stage_ops_t aspen_stage_session_ops;
extern const aspen_stage_ops_t aspen_stage_group_ops;
extern const aspen_stage_ops_t aspen_stage_sort_ops;
extern const aspen_stage_ops_t aspen_stage_limit_ops;
extern const aspen_stage_ops_t aspen_stage_count_ops;

/* ---- $match ------------------------------------------------------------- */

typedef struct {
   bson_t filter; /* owned: the matcher keeps views into it */
   aspen_matcher_t *m;
} match_t;

static void
match_destroy(aspen_stage_t *st)
{
   match_t *m = st->state;
   if (m) {
      aspen_matcher_destroy(m->m);
      bson_destroy(&m->filter);
      bson_free(m);
      st->state = NULL;
   }
}

static bool
match_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   (void) pc;
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "the match filter must be an expression in an object");
      return false;
   }
   match_t *m = BSON_ALIGNED_ALLOC0(match_t); /* bson_t: 128-aligned */
   uint32_t len;
   const uint8_t *data;
   bson_t f;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&f, data, len);
   bson_copy_to(&f, &m->filter);
   st->state = m;
   if (!aspen_matcher_new(&m->filter, &m->m, err)) {
      match_destroy(st);
      return false;
   }
   return true;
}

static bool
match_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   match_t *m = st->state;
   aspen_expr_ctx_t ctx;
   bool matched = false;
   aspen_stage_expr_ctx(st, in, &ctx);
   if (!aspen_matcher_match(m->m, in->doc, &ctx, &matched, err)) {
      return false;
   }
   if (matched) {
      aspen_stage_emit(st, in); /* the same document: no copy */
   }
   return true;
}

static const aspen_stage_ops_t match_ops = {
   "$match", "MatchOperator", match_parse, match_push, match_destroy, NULL};

/* ---- $validate ---------------------------------------------------------- */

typedef struct {
   bson_t validator;
   aspen_matcher_t *m;
   bool to_dlq;
} validate_t;

static void
validate_destroy(aspen_stage_t *st)
{
   validate_t *v = st->state;
   if (v) {
      aspen_matcher_destroy(v->m);
      bson_destroy(&v->validator);
      bson_free(v);
      st->state = NULL;
   }
}

static bool
validate_parse(aspen_stage_t *st, const bson_iter_t *arg,
               aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$validate specification must be an object");
      return false;
   }
   validate_t *v = BSON_ALIGNED_ALLOC0(validate_t); /* bson_t: 128-aligned */
   bson_init(&v->validator);
   st->state = v;
   uint32_t len;
   const uint8_t *data;
   bson_t spec;
   bson_iter_t it;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&spec, data, len);
   bson_iter_init(&it, &spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "validator") == 0) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "BSON field '$validate.validator' is the wrong "
                            "type, expected type 'object'");
            validate_destroy(st);
            return false;
         }
         bson_t f;
         bson_iter_document(&it, &len, &data);
         (void) bson_init_static(&f, data, len);
         bson_destroy(&v->validator);
         bson_copy_to(&f, &v->validator);
      } else if (strcmp(k, "validationAction") == 0) {
         const char *a = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : NULL;
         if (!a || (strcmp(a, "discard") != 0 && strcmp(a, "dlq") != 0)) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "Enumeration value '%s' for field "
                            "'$validate.validationAction' is not a valid "
                            "value.",
                            a ? a : "(not a string)");
            validate_destroy(st);
            return false;
         }
         v->to_dlq = strcmp(a, "dlq") == 0;
      } else {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "BSON field '$validate.%s' is an unknown field.", k);
         validate_destroy(st);
         return false;
      }
   }
   if (v->to_dlq && !pc->has_dlq && !pc->ephemeral) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "DLQ must be specified if validation action is dlq.");
      validate_destroy(st);
      return false;
   }
   if (!aspen_matcher_new(&v->validator, &v->m, err)) {
      char msg[ASPEN_ERROR_MSG_MAX];
      char *json = bson_as_relaxed_extended_json(&v->validator, NULL);
      snprintf(msg, sizeof msg, "failed to parse validator: %s (%s)",
               json ? json : "?", err->message);
      bson_free(json);
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions, "%s", msg);
      validate_destroy(st);
      return false;
   }
   return true;
}

static bool
validate_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   validate_t *v = st->state;
   aspen_expr_ctx_t ctx;
   bool ok = false;
   aspen_stage_expr_ctx(st, in, &ctx);
   if (!aspen_matcher_match(v->m, in->doc, &ctx, &ok, err)) {
      /* A validator that throws is a failed validation: dropped with
       * "discard", dead-lettered (with the error) with "dlq". */
      if (!v->to_dlq) {
         return true;
      }
      char reason[ASPEN_ERROR_MSG_MAX + 96];
      snprintf(reason, sizeof reason,
               "Failed to process input document in $validate stage with "
               "error: %s",
               err->message);
      st->pl->dlq(st->pl->hook_arg, in, st->ops->operator_name, reason);
      return true;
   }
   if (ok) {
      aspen_stage_emit(st, in);
   } else if (v->to_dlq) {
      st->pl->dlq(st->pl->hook_arg, in, st->ops->operator_name,
                  "Input document found to be invalid in $validate stage");
   }
   return true;
}

static const aspen_stage_ops_t validate_ops = {
   "$validate", "ValidateOperator", validate_parse, validate_push,
   validate_destroy, NULL};

/* ---- $redact ------------------------------------------------------------ */

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

static const aspen_stage_ops_t redact_ops = {
   "$redact", "RedactOperator", redact_parse, redact_push, redact_destroy, NULL};

/* ---- stages aspen knows but does not run in this build ------------------ */

static bool
not_yet_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
              aspen_error_t *err)
{
   (void) arg;
   (void) pc;
   aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                   "%s is supported by Atlas Stream Processing but not yet "
                   "by this version of aspen",
                   st->ops->name);
   return false;
}

#define NOT_YET(var, name)                                                     \
   static const aspen_stage_ops_t var = {name, name, not_yet_parse, NULL, NULL,  \
                                         NULL}

NOT_YET(https_ops, "$https");
NOT_YET(external_function_ops, "$externalFunction");
NOT_YET(set_stream_meta_ops, "$setStreamMeta");
NOT_YET(throttle_ops, "$throttle");

/* ---- the table ---------------------------------------------------------- */

#define MW (ASPEN_PLACE_MAIN | ASPEN_PLACE_WINDOW)
#define M ASPEN_PLACE_MAIN
#define W ASPEN_PLACE_WINDOW
#define S ASPEN_PLACE_SINK
#define O ASPEN_SPEC_OPTIONS

static const struct {
   const char *name;
   const aspen_stage_ops_t *ops;
   unsigned place;
} table[] = {
   {"$addFields", &aspen_stage_add_fields_ops, MW},
   {"$project", &aspen_stage_project_ops, MW},
   {"$replaceRoot", &aspen_stage_replace_root_ops, MW | O},
   {"$set", &aspen_stage_set_ops, MW},
   {"$redact", &redact_ops, MW},
   {"$match", &match_ops, MW},
   {"$replaceWith", &aspen_stage_replace_with_ops, MW},
   {"$unset", &aspen_stage_unset_ops, MW},
   {"$unwind", &aspen_stage_unwind_ops, MW},
   {"$validate", &validate_ops, MW | O},
   {"$lookup", &aspen_stage_lookup_ops, MW},
   {"$https", &https_ops, MW},
   {"$externalFunction", &external_function_ops, MW},
   {"$cachedLookup", &aspen_stage_cached_lookup_ops, M | O},
   {"$setStreamMeta", &set_stream_meta_ops, M},
   {"$throttle", &throttle_ops, M},
   {"$tumblingWindow", &aspen_stage_tumbling_ops, M | O},
   {"$hoppingWindow", &aspen_stage_hopping_ops, M | O},
   {"$sessionWindow", &aspen_stage_session_ops, M | O},
   {"$merge", &aspen_stage_merge_ops, S | O},
   {"$emit", &aspen_stage_emit_ops, S | O},
   {"$group", &aspen_stage_group_ops, W},
   {"$sort", &aspen_stage_sort_ops, W},
   {"$count", &aspen_stage_count_ops, W},
   {"$limit", &aspen_stage_limit_ops, W},
};

const aspen_stage_ops_t *
aspen_stage_lookup(const char *name, unsigned *place)
{
   for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
      if (strcmp(table[i].name, name) == 0) {
         *place = table[i].place;
         return table[i].ops;
      }
   }
   *place = 0;
   return NULL;
}
