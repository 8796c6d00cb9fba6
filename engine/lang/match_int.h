/*
 * match_int.h - internals shared by the query matcher (matcher.c) and its
 * $jsonSchema compiler (match_schema.c). Nothing outside lang/ includes it.
 *
 * match.c owns the pieces both halves need, below them both: the
 * comparison predicate with type bracketing (on value.c's canonical type
 * rank), BSON type sets ($type and bsonType share their names), compiled
 * regular expressions (PCRE2) and integer arguments.
 * match_schema.c compiles a $jsonSchema object into a tree that validates
 * one value directly (JSON Schema applies to literal values: no implicit
 * array traversal, keywords only restrict values of their own type).
 */
#ifndef ASPEN_ENGINE_LANG_MATCH_INT_H
#define ASPEN_ENGINE_LANG_MATCH_INT_H

#include "lang/match.h"

/* ------------------------------------------------------------------------ */
/* Comparisons                                                               */
/* ------------------------------------------------------------------------ */

typedef enum {
   ASPEN__MATCH_EQ,
   ASPEN__MATCH_LT,
   ASPEN__MATCH_LTE,
   ASPEN__MATCH_GT,
   ASPEN__MATCH_GTE,
} aspen__match_op_t;

/* One comparison predicate ($eq/$lt/$lte/$gt/$gte) applied to a single value
 * `val` (which may be BSON_TYPE_EOD for a missing field) against the filter's
 * constant `rhs`, with mongod's type bracketing, MinKey/MaxKey, null-matches-
 * missing and NaN rules. Pure; any thread. */
bool aspen__match_compare(aspen__match_op_t op, const bson_value_t *val,
                          const bson_value_t *rhs);

/* Equality as JSON Schema's enum and uniqueItems see it: numbers compare by
 * value across types, and embedded documents compare field-by-field ignoring
 * field order. Pure; any thread. */
bool aspen__match_unordered_equal(const bson_value_t *a, const bson_value_t *b);
/* MongoDB's order of two values (aspen_value_compare on borrowed views). */
int aspen__match_value_cmp(const bson_value_t *a, const bson_value_t *b);
/* True for a double or decimal128 NaN. */
bool aspen__match_value_is_nan(const bson_value_t *v);
/* True for the four numeric types. */
bool aspen__match_is_number_type(bson_type_t t);
/* A number as a double (decimal128 through value.c); 0 for a non-number. */
double aspen__match_number_as_double(const bson_value_t *v);

/* ------------------------------------------------------------------------ */
/* Type sets ($type, bsonType, type)                                         */
/* ------------------------------------------------------------------------ */

/* A set of BSON types: bit n for type code n (1..19), plus MinKey and
 * MaxKey. "number" sets the four numeric bits. */
typedef uint32_t aspen__match_types_t;

#define ASPEN__MATCH_TYPE_BIT_MINKEY 30
#define ASPEN__MATCH_TYPE_BIT_MAXKEY 31
#define ASPEN__MATCH_TYPES_NUMBER                                              \
   ((1u << BSON_TYPE_DOUBLE) | (1u << BSON_TYPE_INT32) |                      \
    (1u << BSON_TYPE_INT64) | (1u << BSON_TYPE_DECIMAL128))

/* The set bit for a BSON type, or 0 for a type no alias names (EOD). */
aspen__match_types_t aspen__match_type_bit(bson_type_t t);
/* Looks up a $type / bsonType alias ("double", "string", ..., "number");
 * false if unknown. */
bool aspen__match_type_alias(const char *name, aspen__match_types_t *bits);
/* The $type alias of a BSON type ("double", "int", "object", "missing" for
 * EOD); used in error messages. */
const char *aspen__match_type_name(bson_type_t t);

/* ------------------------------------------------------------------------ */
/* Regular expressions                                                       */
/* ------------------------------------------------------------------------ */

typedef struct aspen__match_regex aspen__match_regex_t;

/* Compiles `pattern` (`len` bytes, may be unterminated) with MongoDB's option
 * letters (i m s x u) in `flags` (NUL-terminated, may be NULL). The pattern
 * must outlive the regex (kept as a view for regex-to-regex equality).
 * Returns false with err set (BadValue) for an embedded NUL byte, an unknown
 * flag or a pattern PCRE2 rejects; *out is then NULL. */
bool aspen__match_regex_new(const char *pattern, size_t len, const char *flags,
                            aspen__match_regex_t **out, aspen_error_t *err);
void aspen__match_regex_destroy(aspen__match_regex_t *re);
/* Unanchored search in `len` bytes of `s`. Allocation-free after the first
 * call on a thread (the match block is cached per thread). */
bool aspen__match_regex_search(const aspen__match_regex_t *re, const char *s,
                               size_t len);
/* mongod's RegexMatchExpression on one value: strings and symbols are
 * searched; a regex value matches only the identical regex. */
bool aspen__match_regex_matches_value(const aspen__match_regex_t *re,
                                      const bson_value_t *v);

/* ------------------------------------------------------------------------ */
/* Integer arguments                                                         */
/* ------------------------------------------------------------------------ */

/* "<what>: <value as JSON>" into `buf`, as mongod prints an element in
 * messages. */
void aspen__match_describe(const bson_iter_t *it, const char *what, char *buf,
                           size_t size);
/* mongod's parseIntegerElementToLong: a whole number representable as
 * int64. `what` names the argument in messages; FailedToParse errors. */
bool aspen__match_parse_int64(const bson_iter_t *it, const char *what,
                              int64_t *out, aspen_error_t *err);
/* mongod's parseIntegerElementToNonNegativeLong: the iterator's value must be
 * a whole number, representable as int64, >= 0. `what` names the keyword in
 * messages ("minLength"). Sets FailedToParse errors on failure. */
bool aspen__match_parse_count(const bson_iter_t *it, const char *what,
                              int64_t *out, aspen_error_t *err);

/* ------------------------------------------------------------------------ */
/* $jsonSchema (match_schema.c)                                              */
/* ------------------------------------------------------------------------ */

typedef struct aspen__match_schema aspen__match_schema_t;

/* Compiles the $jsonSchema object the iterator points at (the caller checked
 * it is a document). Views into the filter; the filter must outlive it.
 * Returns false with err set (FailedToParse, TypeMismatch or BadValue, with
 * mongod's messages) and *out NULL on an invalid schema. */
bool aspen__match_schema_new(const bson_iter_t *it,
                             aspen__match_schema_t **out, aspen_error_t *err);
void aspen__match_schema_destroy(aspen__match_schema_t *schema);
/* Validates the document in `len` bytes at `data` against the schema. */
bool aspen__match_schema_validate_doc(const aspen__match_schema_t *schema,
                                      const uint8_t *data, uint32_t len);

#endif /* ASPEN_ENGINE_LANG_MATCH_INT_H */
