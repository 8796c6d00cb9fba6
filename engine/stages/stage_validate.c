/*
 * stage_validate.c - the $validate stage: a query validator (lang/matcher.c,
 * with $jsonSchema) that passes valid documents on and drops or
 * dead-letters the others (validationAction "discard" or "dlq").
 */
#include "lang/match.h"
#include "runtime/pipeline.h"

#include <stdio.h>
#include <string.h>

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

const aspen_stage_ops_t aspen_stage_validate_ops = {
   .name = "$validate",
   .operator_name = "ValidateOperator",
   .per_document = true,
   .parse = validate_parse,
   .push = validate_push,
   .destroy = validate_destroy,
};
