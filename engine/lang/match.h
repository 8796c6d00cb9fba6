/*
 * match.h - the query language of $match and $validate, compiled once and
 * evaluated per document.
 *
 * Supported with MongoDB's semantics (implicit array traversal on dotted
 * paths, numeric array indexes in paths, null matching missing, BSON type
 * ordering and type bracketing for comparisons): $eq $ne $gt $gte $lt $lte
 * $in $nin; $and $or $nor $not; $exists $type (all type names, numbers and
 * "number"); $regex with $options (i m x s) and regex literals; $expr
 * (aggregation expressions, see expr.h); $mod; $jsonSchema (draft 4 subset
 * MongoDB supports: bsonType, type, properties, required, minimum, maximum,
 * exclusiveMinimum/Maximum, minLength, maxLength, pattern, enum, items,
 * minItems, maxItems, uniqueItems, additionalProperties, patternProperties,
 * minProperties, maxProperties, allOf, anyOf, oneOf, not, dependencies,
 * description/title ignored); $all $elemMatch $size; $comment ignored;
 * $alwaysTrue/$alwaysFalse. Refused as ASP does: $text ("Cannot use $text in
 * $match stage in Atlas Stream Processing."), $where, $near, $nearSphere
 * (unsupported), unknown operators ("unknown operator: $foo", code 2
 * BadValue), and malformed arguments with mongod's messages where known
 * (e.g. "$in needs an array").
 */
#ifndef ASPEN_ENGINE_LANG_MATCH_H
#define ASPEN_ENGINE_LANG_MATCH_H

#include "lang/expr.h"

typedef struct aspen_matcher aspen_matcher_t;

/* Compiles a filter document. The filter must outlive the matcher (views). */
bool aspen_matcher_new(const bson_t *filter, aspen_matcher_t **out,
                       aspen_error_t *err);
void aspen_matcher_destroy(aspen_matcher_t *m);
/* Evaluates: *matched set on success. Returns false with err set only when
 * evaluating an $expr fails at run time. `ctx` gives $expr its context
 * (ctx->root should be `doc`); may be NULL, then a default is used. */
bool aspen_matcher_match(const aspen_matcher_t *m, const bson_t *doc,
                         const aspen_expr_ctx_t *ctx, bool *matched,
                         aspen_error_t *err);

/* A caller's per-layout state for one matcher (matcher.c): for the
 * comparisons of a path with a constant at the filter's root, where their
 * fields are in documents of the field tables' layout (lang/fields.h),
 * checked per document. One thread at a time uses a plan; the matcher
 * stays shared and immutable, and outlives its plans. */
typedef struct aspen_matcher_plan aspen_matcher_plan_t;

aspen_matcher_plan_t *aspen_matcher_plan_new(const aspen_matcher_t *m);
void aspen_matcher_plan_destroy(aspen_matcher_plan_t *plan);
/* aspen_matcher_match with `doc`'s field table `fields` given apart from
 * `ctx` (may be NULL), and `plan` (may be NULL) made for `m`: the same
 * results. `fields` is NULL or describes `doc` (aspen_fields_covers, which
 * the caller checked). */
bool aspen_matcher_match_plan(const aspen_matcher_t *m,
                              aspen_matcher_plan_t *plan, const bson_t *doc,
                              const aspen_fields_t *fields,
                              const aspen_expr_ctx_t *ctx, bool *matched,
                              aspen_error_t *err);
/* True if the filter has an $expr (whose evaluation reads ctx). */
bool aspen_matcher_has_expr(const aspen_matcher_t *m);
/* Whether plans are used (default true). Tests turn them off to compare
 * against the path without them; any thread, before matching. */
extern bool aspen__match_plan_on;
void aspen_matcher_set_plan_enabled(bool on);

#endif /* ASPEN_ENGINE_LANG_MATCH_H */
