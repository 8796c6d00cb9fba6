/*
 * match_schema.c - $jsonSchema for $match and $validate: the JSON Schema
 * draft 4 subset MongoDB supports, compiled once into a tree of schema nodes
 * and evaluated directly on BSON values.
 *
 * mongod translates a schema into ordinary match expressions; aspen
 * evaluates it directly, with the same meaning:
 * - a schema applies to one literal value (no implicit array traversal);
 * - `type` (JSON names) or `bsonType` ($type names) restricts the type;
 * - every other keyword restricts only values of its own type (minimum only
 *   numbers, pattern only strings, items only arrays, properties only
 *   objects) and lets other types through;
 * - `properties` applies to fields that are present; `required` demands
 *   presence; `enum` and `uniqueItems` compare documents ignoring field
 *   order and numbers across numeric types.
 * Keywords: type bsonType properties required minimum maximum
 * exclusiveMinimum exclusiveMaximum multipleOf minLength maxLength pattern
 * enum items additionalItems minItems maxItems uniqueItems
 * additionalProperties patternProperties minProperties maxProperties allOf
 * anyOf oneOf not dependencies encrypt encryptMetadata, with description and
 * title checked and ignored. $ref $schema default definitions format id are
 * refused as mongod refuses them; unknown keywords too. Parse errors use
 * mongod's messages and codes (FailedToParse, TypeMismatch, BadValue).
 *
 * Thread-safety: a compiled schema is immutable; validation may run on any
 * thread.
 */
#include "lang/match_int.h"
#include "lang/value_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keywords, in the order mongod's keyword table lists them, each with the
 * BSON types its value may have (0: its parser checks) and how the
 * TypeMismatch error for another type goes on after "$jsonSchema keyword
 * '<name>' " (TYPED: the value's type name ends it). */
#define T(t) (1u << BSON_TYPE_##t)
#define NUMBER (T(INT32) | T(INT64) | T(DOUBLE) | T(DECIMAL128))
#define TYPED true
#define SCHEMA_KEYWORDS(X)                                                     \
   X(ADDITIONAL_ITEMS, "additionalItems", T(BOOL) | T(DOCUMENT),              \
     "must be either an object or a boolean, but got a ", TYPED)               \
   X(ADDITIONAL_PROPERTIES, "additionalProperties", T(BOOL) | T(DOCUMENT),    \
     "must be an object or a boolean", false)                                  \
   X(ALL_OF, "allOf", T(ARRAY), "must be an array", false)                     \
   X(ANY_OF, "anyOf", T(ARRAY), "must be an array", false)                     \
   X(BSON_TYPE, "bsonType", T(UTF8) | T(ARRAY),                               \
     "must be either a string or an array of strings", false)                 \
   X(DEPENDENCIES, "dependencies", T(DOCUMENT), "must be an object", false)    \
   X(DESCRIPTION, "description", T(UTF8), "must be of type string", false)     \
   X(ENCRYPT, "encrypt", T(DOCUMENT), "must be an object ", false)             \
   X(ENCRYPT_METADATA, "encryptMetadata", T(DOCUMENT), "must be an object ",   \
     false)                                                                    \
   X(ENUM, "enum", T(ARRAY), "must be an array, but found an element of type ", \
     TYPED)                                                                    \
   X(EXCLUSIVE_MAXIMUM, "exclusiveMaximum", T(BOOL), "must be a boolean",      \
     false)                                                                    \
   X(EXCLUSIVE_MINIMUM, "exclusiveMinimum", T(BOOL), "must be a boolean",      \
     false)                                                                    \
   X(ITEMS, "items", T(ARRAY) | T(DOCUMENT),                                  \
     "must be an array or an object, not ", TYPED)                             \
   X(MAX_ITEMS, "maxItems", 0, NULL, false)                                    \
   X(MAX_LENGTH, "maxLength", 0, NULL, false)                                  \
   X(MAX_PROPERTIES, "maxProperties", 0, NULL, false)                          \
   X(MAXIMUM, "maximum", NUMBER, "must be a number", false)                    \
   X(MIN_ITEMS, "minItems", 0, NULL, false)                                    \
   X(MIN_LENGTH, "minLength", 0, NULL, false)                                  \
   X(MIN_PROPERTIES, "minProperties", 0, NULL, false)                          \
   X(MINIMUM, "minimum", NUMBER, "must be a number", false)                    \
   X(MULTIPLE_OF, "multipleOf", NUMBER, "must be a number", false)             \
   X(NOT, "not", T(DOCUMENT),                                                 \
     "must be an object, but found an element of type ", TYPED)                \
   X(ONE_OF, "oneOf", T(ARRAY), "must be an array", false)                     \
   X(PATTERN, "pattern", T(UTF8), "must be a string", false)                   \
   X(PATTERN_PROPERTIES, "patternProperties", T(DOCUMENT),                    \
     "must be an object", false)                                               \
   X(PROPERTIES, "properties", T(DOCUMENT), "must be an object", false)        \
   X(REQUIRED, "required", T(ARRAY),                                          \
     "must be an array, but found an element of type ", TYPED)                 \
   X(TITLE, "title", T(UTF8), "must be of type string", false)                 \
   X(TYPE, "type", T(UTF8) | T(ARRAY),                                        \
     "must be either a string or an array of strings", false)                 \
   X(UNIQUE_ITEMS, "uniqueItems", T(BOOL), "must be a boolean", false)

typedef enum {
#define KW_ENUM(id, name, types, must, typed) KW_##id,
   SCHEMA_KEYWORDS(KW_ENUM)
#undef KW_ENUM
      KW_COUNT
} keyword_t;

static const struct {
   const char *name;
   uint32_t types;
   const char *must; /* the rest of the error, after the keyword's name */
   bool typed;       /* the value's type name follows `must` */
} keywords[] = {
#define KW_ROW(id, name, types, must, typed) {name, types, must, typed},
   SCHEMA_KEYWORDS(KW_ROW)
#undef KW_ROW
};

#undef T
#undef NUMBER
#undef TYPED

typedef aspen__match_schema_t schema_t;

/* The keywords present in one schema object. Iterators are found again on
 * use (parse time only): bson_iter_t is over-aligned, so no arrays of it. */
typedef struct {
   const uint8_t *data;
   uint32_t len;
   bool has[KW_COUNT];
} kwmap_t;

/* Finds keyword k's value (present: the caller checked km->has[k]) and
 * checks its BSON type against the keyword table: false with err set
 * (TypeMismatch, mongod's message) when the table refuses it. */
static bool
kw_arg(const kwmap_t *km, keyword_t k, bson_iter_t *it, aspen_error_t *err)
{
   ASPEN_ASSERT(km->has[k]);
   bson_iter_init_from_data(it, km->data, km->len);
   bson_iter_find(it, keywords[k].name);
   uint32_t types = keywords[k].types;
   bson_type_t t = bson_iter_type(it);
   if (!types || ((int) t < 32 && (types & (1u << (int) t)))) {
      return true;
   }
   aspen_error_set(err, ASPEN_ERR_TypeMismatch, "$jsonSchema keyword '%s' %s%s",
                   keywords[k].name, keywords[k].must,
                   keywords[k].typed ? aspen__match_type_name(t) : "");
   return false;
}

typedef struct {
   const char *name; /* view into the filter */
   uint32_t len;
} name_t;

typedef struct {
   name_t name;
   schema_t *schema;
} prop_t;

typedef struct {
   aspen__match_regex_t *re;
   schema_t *schema;
} pattern_prop_t;

typedef struct {
   name_t name;
   schema_t *schema; /* schema dependency, or NULL ... */
   name_t *names;    /* ... property dependency */
   size_t n_names;
} dep_t;

/* additionalItems / additionalProperties: absent or true, false, or a
 * schema. */
typedef enum { ADD_ANY, ADD_NONE, ADD_SCHEMA } add_kind_t;

typedef struct {
   add_kind_t kind;
   schema_t *schema;
} additional_t;

/* minimum or maximum: the bound, exclusive or not. */
typedef struct {
   bool has;
   bool exclusive;
   bson_value_t value; /* a view into the filter */
} bound_t;

/* The limits of a count (a string's length, an array's items, an
 * object's properties): -1 where absent. */
typedef struct {
   int64_t min, max;
} limits_t;

typedef struct {
   schema_t **v;
   size_t n;
} schema_list_t;

/* Nesting limit, so that a hostile schema cannot exhaust the stack while
 * being compiled or evaluated (mongod bounds BSON depth similarly). */
#define MAX_SCHEMA_DEPTH 100

struct aspen__match_schema {
   int depth; /* 1 for the top-level schema */
   bool has_types;
   aspen__match_types_t types;
   bool encrypt; /* value must be BinData subtype 6 */

   /* numbers */
   bound_t minimum;
   bound_t maximum;
   bool has_multiple_of;
   bson_value_t multiple_of;

   /* strings */
   limits_t length;
   aspen__match_regex_t *pattern;

   /* arrays */
   limits_t item_count;
   bool unique_items;
   schema_t *items; /* items: {schema} */
   bool has_tuple;  /* items: [schemas] */
   schema_list_t tuple;
   additional_t additional_items;

   /* objects */
   prop_t *props;
   size_t n_props;
   name_t *required;
   size_t n_required;
   bool has_allowed; /* patternProperties or additionalProperties */
   pattern_prop_t *pattern_props;
   size_t n_pattern_props;
   additional_t additional_props;
   limits_t prop_count;
   dep_t *deps;
   size_t n_deps;

   /* logic */
   schema_list_t all_of;
   schema_list_t any_of;
   schema_list_t one_of;
   schema_t *not_schema;
   bson_value_t *enum_vals; /* views */
   size_t n_enum;
};

/* ------------------------------------------------------------------------ */
/* Lifetime                                                                  */
/* ------------------------------------------------------------------------ */

static void
list_cleanup(schema_list_t *l)
{
   for (size_t i = 0; i < l->n; i++) {
      aspen__match_schema_destroy(l->v[i]);
   }
   free(l->v);
}

/* Frees a compiled schema; NULL is a no-op. */
void
aspen__match_schema_destroy(aspen__match_schema_t *s)
{
   if (!s) {
      return;
   }
   aspen__match_regex_destroy(s->pattern);
   aspen__match_schema_destroy(s->items);
   list_cleanup(&s->tuple);
   aspen__match_schema_destroy(s->additional_items.schema);
   for (size_t i = 0; i < s->n_props; i++) {
      aspen__match_schema_destroy(s->props[i].schema);
   }
   free(s->props);
   free(s->required);
   for (size_t i = 0; i < s->n_pattern_props; i++) {
      aspen__match_regex_destroy(s->pattern_props[i].re);
      aspen__match_schema_destroy(s->pattern_props[i].schema);
   }
   free(s->pattern_props);
   aspen__match_schema_destroy(s->additional_props.schema);
   for (size_t i = 0; i < s->n_deps; i++) {
      aspen__match_schema_destroy(s->deps[i].schema);
      free(s->deps[i].names);
   }
   free(s->deps);
   list_cleanup(&s->all_of);
   list_cleanup(&s->any_of);
   list_cleanup(&s->one_of);
   aspen__match_schema_destroy(s->not_schema);
   free(s->enum_vals);
   free(s);
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                   */
/* ------------------------------------------------------------------------ */

static bool parse_schema(const uint8_t *data, uint32_t len, int depth,
                         schema_t **out, aspen_error_t *err);

static const char *
iter_type_name(const bson_iter_t *it)
{
   return aspen__match_type_name(bson_iter_type(it));
}

static bool
is_number(bson_type_t t)
{
   return t == BSON_TYPE_INT32 || t == BSON_TYPE_INT64 ||
          t == BSON_TYPE_DOUBLE || t == BSON_TYPE_DECIMAL128;
}

static double
as_double(const bson_value_t *v)
{
   aspen_value_t val = {.v = *v, .owned = false};
   double d = 0;
   (void) aspen_value_as_double(&val, &d);
   return d;
}

static bool
parse_nested(const bson_iter_t *it, int depth, schema_t **out,
             aspen_error_t *err)
{
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(it, &len, &data);
   return parse_schema(data, len, depth, out, err);
}

/* JSON Schema's `type` names. */
static bool
json_type_alias(const char *name, aspen__match_types_t *bits)
{
   static const struct {
      const char *name;
      aspen__match_types_t bits;
   } aliases[] = {
      {"array", 1u << BSON_TYPE_ARRAY},
      {"boolean", 1u << BSON_TYPE_BOOL},
      {"null", 1u << BSON_TYPE_NULL},
      {"number", ASPEN__MATCH_TYPES_NUMBER},
      {"object", 1u << BSON_TYPE_DOCUMENT},
      {"string", 1u << BSON_TYPE_UTF8},
   };
   for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
      if (strcmp(name, aliases[i].name) == 0) {
         *bits = aliases[i].bits;
         return true;
      }
   }
   *bits = 0;
   return false;
}

static bool
not_integer(const char *name, aspen_error_t *err)
{
   if (strcmp(name, "integer") == 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$jsonSchema type 'integer' is not currently "
                      "supported.");
      return false;
   }
   return true;
}

static bool
parse_one_type_name(const char *name, bool json, aspen__match_types_t *bits,
                    aspen_error_t *err)
{
   if (!not_integer(name, err)) {
      return false;
   }
   bool ok = json ? json_type_alias(name, bits)
                  : aspen__match_type_alias(name, bits);
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "Unknown type name alias: %s",
                      name);
      return false;
   }
   return true;
}

/* `type` or `bsonType` (the keyword table checked it is a string or an
 * array): a name or an array of distinct names. */
static bool
parse_types(const bson_iter_t *it, bool json, aspen__match_types_t *out,
            aspen_error_t *err)
{
   const char *kw = bson_iter_key(it);
   *out = 0;
   if (BSON_ITER_HOLDS_UTF8(it)) {
      return parse_one_type_name(bson_iter_utf8(it, NULL), json, out, err);
   }
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   size_t count = 0;
   while (bson_iter_next(&el)) {
      if (!BSON_ITER_HOLDS_UTF8(&el)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "$jsonSchema keyword '%s' array elements must be "
                         "strings",
                         kw);
         return false;
      }
      const char *name = bson_iter_utf8(&el, NULL);
      if (!not_integer(name, err)) {
         return false;
      }
      /* Duplicates are checked by name, before aliases resolve. */
      bson_iter_t prev;
      bson_iter_recurse(it, &prev);
      for (size_t i = 0; i < count && bson_iter_next(&prev); i++) {
         if (strcmp(bson_iter_utf8(&prev, NULL), name) == 0) {
            aspen_error_set(err, ASPEN_ERR_FailedToParse,
                            "$jsonSchema keyword '%s' has duplicate value: %s",
                            kw, name);
            return false;
         }
      }
      count++;
   }
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      aspen__match_types_t bits;
      if (!parse_one_type_name(bson_iter_utf8(&el, NULL), json, &bits, err)) {
         return false;
      }
      *out |= bits;
   }
   if (count == 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$jsonSchema keyword '%s' must name at least one type",
                      kw);
      return false;
   }
   return true;
}

/* A count keyword (minLength, maxItems, ...): a whole number >= 0. */
static bool
parse_count(const kwmap_t *km, keyword_t k, int64_t *out, aspen_error_t *err)
{
   bson_iter_t it;
   return !km->has[k] ||
          (kw_arg(km, k, &it, err) &&
           aspen__match_parse_count(&it, keywords[k].name, out, err));
}

/* maximum (with exclusiveMaximum) or minimum (with exclusiveMinimum): the
 * exclusive flag is read first, and needs its bound. */
static bool
parse_bound(const kwmap_t *km, keyword_t k, keyword_t exclusive_k,
            bound_t *b, aspen_error_t *err)
{
   bson_iter_t it;
   if (!km->has[k]) {
      if (km->has[exclusive_k]) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "$jsonSchema keyword '%s' must be a present if %s "
                         "is present",
                         keywords[k].name, keywords[exclusive_k].name);
         return false;
      }
      return true;
   }
   if (km->has[exclusive_k]) {
      if (!kw_arg(km, exclusive_k, &it, err)) {
         return false;
      }
      b->exclusive = bson_iter_bool(&it);
   }
   if (!kw_arg(km, k, &it, err)) {
      return false;
   }
   b->value = *bson_iter_value(&it);
   b->has = true;
   return true;
}

/* additionalItems or additionalProperties: a boolean or a schema. */
static bool
parse_additional(const kwmap_t *km, keyword_t k, int depth, additional_t *a,
                 aspen_error_t *err)
{
   bson_iter_t it;
   if (!km->has[k]) {
      return true;
   }
   if (!kw_arg(km, k, &it, err)) {
      return false;
   }
   if (BSON_ITER_HOLDS_BOOL(&it)) {
      a->kind = bson_iter_bool(&it) ? ADD_ANY : ADD_NONE;
      return true;
   }
   a->kind = ADD_SCHEMA;
   return parse_nested(&it, depth, &a->schema, err);
}

/* The array at `it` of schemas (allOf, anyOf, oneOf: not empty) or the
 * tuple form of items. */
static bool
parse_schema_array(const bson_iter_t *it, bool is_items, int depth,
                   schema_list_t *out, aspen_error_t *err)
{
   const char *kw = bson_iter_key(it);
   size_t count = aspen__value_child_count(it);
   if (count == 0 && !is_items) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "$jsonSchema keyword '%s' must be a non-empty array", kw);
      return false;
   }
   out->v = aspen_xcalloc(count ? count : 1, sizeof *out->v);
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&el)) {
         if (is_items) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "$jsonSchema keyword 'items' requires that each "
                            "element of the array is an object, but found a "
                            "%s",
                            iter_type_name(&el));
         } else {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "$jsonSchema keyword '%s' must be an array of "
                            "objects, but found an element of type %s",
                            kw, iter_type_name(&el));
         }
         return false;
      }
      if (!parse_nested(&el, depth, &out->v[out->n], err)) {
         return false;
      }
      out->n++;
   }
   return true;
}

/* allOf, anyOf or oneOf. */
static bool
parse_logical(const kwmap_t *km, keyword_t k, int depth, schema_list_t *out,
              aspen_error_t *err)
{
   bson_iter_t it;
   return !km->has[k] || (kw_arg(km, k, &it, err) &&
                          parse_schema_array(&it, false, depth, out, err));
}

static bool
parse_scalar_keywords(schema_t *s, const kwmap_t *km, aspen_error_t *err)
{
   bson_iter_t it;
   if (km->has[KW_PATTERN]) {
      if (!kw_arg(km, KW_PATTERN, &it, err)) {
         return false;
      }
      uint32_t len;
      const char *p = bson_iter_utf8(&it, &len);
      /* JSON Schema patterns take no flags. */
      if (!aspen__match_regex_new(p, len, "", &s->pattern, err)) {
         return false;
      }
   }
   if (!parse_count(km, KW_MAX_LENGTH, &s->length.max, err) ||
       !parse_count(km, KW_MIN_LENGTH, &s->length.min, err)) {
      return false;
   }
   if (km->has[KW_MULTIPLE_OF]) {
      if (!kw_arg(km, KW_MULTIPLE_OF, &it, err)) {
         return false;
      }
      s->multiple_of = *bson_iter_value(&it);
      if (!(as_double(&s->multiple_of) > 0)) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "$jsonSchema keyword 'multipleOf' must have a "
                         "positive value");
         return false;
      }
      s->has_multiple_of = true;
   }
   return parse_bound(km, KW_MAXIMUM, KW_EXCLUSIVE_MAXIMUM, &s->maximum,
                      err) &&
          parse_bound(km, KW_MINIMUM, KW_EXCLUSIVE_MINIMUM, &s->minimum, err);
}

static bool
parse_array_keywords(schema_t *s, const kwmap_t *km, aspen_error_t *err)
{
   bson_iter_t it;
   if (!parse_count(km, KW_MIN_ITEMS, &s->item_count.min, err) ||
       !parse_count(km, KW_MAX_ITEMS, &s->item_count.max, err)) {
      return false;
   }
   if (km->has[KW_UNIQUE_ITEMS]) {
      if (!kw_arg(km, KW_UNIQUE_ITEMS, &it, err)) {
         return false;
      }
      s->unique_items = bson_iter_bool(&it);
   }
   if (km->has[KW_ITEMS]) {
      if (!kw_arg(km, KW_ITEMS, &it, err)) {
         return false;
      }
      if (BSON_ITER_HOLDS_ARRAY(&it)) {
         if (!parse_schema_array(&it, true, s->depth + 1, &s->tuple, err)) {
            return false;
         }
         s->has_tuple = true;
      } else if (!parse_nested(&it, s->depth + 1, &s->items, err)) {
         return false;
      }
   }
   return parse_additional(km, KW_ADDITIONAL_ITEMS, s->depth + 1,
                           &s->additional_items, err);
}

static bool
parse_encrypt_keywords(schema_t *s, const kwmap_t *km, aspen_error_t *err)
{
   bson_iter_t it;
   if (km->has[KW_ENCRYPT] && km->has[KW_ENCRYPT_METADATA]) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "Cannot specify both $jsonSchema keywords 'encrypt' and "
                      "'encryptMetadata'");
      return false;
   }
   if (km->has[KW_ENCRYPT_METADATA]) {
      if (!kw_arg(km, KW_ENCRYPT_METADATA, &it, err)) {
         return false;
      }
      if (aspen__value_child_count(&it) == 0) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "$jsonSchema keyword 'encryptMetadata' cannot be an "
                         "empty object ");
         return false;
      }
   }
   if (km->has[KW_ENCRYPT]) {
      if (!kw_arg(km, KW_ENCRYPT, &it, err)) {
         return false;
      }
      /* The encryption options (keyId, algorithm, bsonType) describe the
       * ciphertext's contents, which aspen cannot see: only the shape of
       * the value (BinData subtype 6) is checked. */
      s->encrypt = true;
   }
   return true;
}

static bool
names_contain(const name_t *names, size_t n, const char *name, uint32_t len)
{
   for (size_t i = 0; i < n; i++) {
      if (names[i].len == len && memcmp(names[i].name, name, len) == 0) {
         return true;
      }
   }
   return false;
}

static bool
parse_required(schema_t *s, const bson_iter_t *it, aspen_error_t *err)
{
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   size_t count = 0;
   while (bson_iter_next(&el)) {
      if (!BSON_ITER_HOLDS_UTF8(&el)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "$jsonSchema keyword 'required' must be an array of "
                         "strings, but found an element of type: %s",
                         iter_type_name(&el));
         return false;
      }
      count++;
   }
   if (count == 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$jsonSchema keyword 'required' cannot be an empty "
                      "array");
      return false;
   }
   s->required = aspen_xcalloc(count, sizeof *s->required);
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      uint32_t len;
      const char *name = bson_iter_utf8(&el, &len);
      if (names_contain(s->required, s->n_required, name, len)) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "$jsonSchema keyword 'required' array cannot contain "
                         "duplicate values");
         return false;
      }
      s->required[s->n_required++] = (name_t){name, len};
   }
   return true;
}

static bool
parse_properties(schema_t *s, const bson_iter_t *it, aspen_error_t *err)
{
   size_t count = aspen__value_child_count(it);
   s->props = aspen_xcalloc(count ? count : 1, sizeof *s->props);
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&el)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "Nested schema for $jsonSchema property '%s' must be "
                         "an object",
                         bson_iter_key(&el));
         return false;
      }
      prop_t *p = &s->props[s->n_props];
      p->name = (name_t){bson_iter_key(&el), bson_iter_key_len(&el)};
      if (!parse_nested(&el, s->depth + 1, &p->schema, err)) {
         return false;
      }
      s->n_props++;
   }
   return true;
}

static bool
parse_pattern_properties(schema_t *s, const bson_iter_t *it,
                         aspen_error_t *err)
{
   size_t count = aspen__value_child_count(it);
   s->pattern_props =
      aspen_xcalloc(count ? count : 1, sizeof *s->pattern_props);
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&el)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "$jsonSchema keyword 'patternProperties' has "
                         "property '%s' which is not an object",
                         bson_iter_key(&el));
         return false;
      }
      pattern_prop_t *pp = &s->pattern_props[s->n_pattern_props];
      if (!parse_nested(&el, s->depth + 1, &pp->schema, err)) {
         return false;
      }
      if (!aspen__match_regex_new(bson_iter_key(&el), bson_iter_key_len(&el),
                                  "", &pp->re, err)) {
         aspen__match_schema_destroy(pp->schema);
         pp->schema = NULL;
         return false;
      }
      s->n_pattern_props++;
   }
   return true;
}

static bool
parse_dependency(dep_t *d, const bson_iter_t *it, int depth,
                 aspen_error_t *err)
{
   const char *name = bson_iter_key(it);
   d->name = (name_t){name, bson_iter_key_len(it)};
   if (BSON_ITER_HOLDS_DOCUMENT(it)) {
      return parse_nested(it, depth, &d->schema, err);
   }
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "property '%s' in $jsonSchema keyword 'dependencies' "
                      "must be either an object or an array",
                      name);
      return false;
   }
   size_t count = aspen__value_child_count(it);
   if (count == 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "property '%s' in $jsonSchema keyword 'dependencies' "
                      "cannot be an empty array",
                      name);
      return false;
   }
   d->names = aspen_xcalloc(count, sizeof *d->names);
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      if (!BSON_ITER_HOLDS_UTF8(&el)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "array '%s' in $jsonSchema keyword 'dependencies' "
                         "can only contain strings, but found element of "
                         "type: %s",
                         name, iter_type_name(&el));
         return false;
      }
      uint32_t len;
      const char *dep = bson_iter_utf8(&el, &len);
      if (names_contain(d->names, d->n_names, dep, len)) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "array '%s' in $jsonSchema keyword 'dependencies' "
                         "contains duplicate element: %s",
                         name, dep);
         return false;
      }
      d->names[d->n_names++] = (name_t){dep, len};
   }
   return true;
}

static bool
parse_dependencies(schema_t *s, const bson_iter_t *it, aspen_error_t *err)
{
   size_t count = aspen__value_child_count(it);
   s->deps = aspen_xcalloc(count ? count : 1, sizeof *s->deps);
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      /* Counted first so a half-parsed entry is freed with the rest. */
      s->n_deps++;
      if (!parse_dependency(&s->deps[s->n_deps - 1], &el, s->depth + 1,
                            err)) {
         return false;
      }
   }
   return true;
}

static bool
parse_object_keywords(schema_t *s, const kwmap_t *km, aspen_error_t *err)
{
   bson_iter_t it;
   if (km->has[KW_REQUIRED] && (!kw_arg(km, KW_REQUIRED, &it, err) ||
                                !parse_required(s, &it, err))) {
      return false;
   }
   if (km->has[KW_PROPERTIES] && (!kw_arg(km, KW_PROPERTIES, &it, err) ||
                                  !parse_properties(s, &it, err))) {
      return false;
   }
   s->has_allowed =
      km->has[KW_PATTERN_PROPERTIES] || km->has[KW_ADDITIONAL_PROPERTIES];
   if (km->has[KW_PATTERN_PROPERTIES] &&
       (!kw_arg(km, KW_PATTERN_PROPERTIES, &it, err) ||
        !parse_pattern_properties(s, &it, err))) {
      return false;
   }
   if (!parse_additional(km, KW_ADDITIONAL_PROPERTIES, s->depth + 1,
                         &s->additional_props, err) ||
       !parse_count(km, KW_MIN_PROPERTIES, &s->prop_count.min, err) ||
       !parse_count(km, KW_MAX_PROPERTIES, &s->prop_count.max, err)) {
      return false;
   }
   return !km->has[KW_DEPENDENCIES] ||
          (kw_arg(km, KW_DEPENDENCIES, &it, err) &&
           parse_dependencies(s, &it, err));
}

static bool
parse_enum(schema_t *s, const bson_iter_t *it, aspen_error_t *err)
{
   size_t count = aspen__value_child_count(it);
   if (count == 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$jsonSchema keyword 'enum' cannot be an empty array");
      return false;
   }
   s->enum_vals = aspen_xcalloc(count, sizeof *s->enum_vals);
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      const bson_value_t *v = bson_iter_value(&el);
      for (size_t i = 0; i < s->n_enum; i++) {
         if (aspen__match_unordered_equal(&s->enum_vals[i], v)) {
            aspen_error_set(err, ASPEN_ERR_FailedToParse,
                            "$jsonSchema keyword 'enum' array cannot "
                            "contain duplicate values.");
            return false;
         }
      }
      s->enum_vals[s->n_enum++] = *v;
   }
   return true;
}

static bool
parse_logical_keywords(schema_t *s, const kwmap_t *km, aspen_error_t *err)
{
   bson_iter_t it;
   if (!parse_logical(km, KW_ALL_OF, s->depth + 1, &s->all_of, err) ||
       !parse_logical(km, KW_ANY_OF, s->depth + 1, &s->any_of, err) ||
       !parse_logical(km, KW_ONE_OF, s->depth + 1, &s->one_of, err)) {
      return false;
   }
   if (km->has[KW_NOT] &&
       (!kw_arg(km, KW_NOT, &it, err) ||
        !parse_nested(&it, s->depth + 1, &s->not_schema, err))) {
      return false;
   }
   return !km->has[KW_ENUM] ||
          (kw_arg(km, KW_ENUM, &it, err) && parse_enum(s, &it, err));
}

/* Which keywords the schema object has; unknown, unsupported and repeated
 * ones are refused. */
static bool
map_keywords(kwmap_t *km, const uint8_t *data, uint32_t len,
             aspen_error_t *err)
{
   memset(km, 0, sizeof *km);
   km->data = data;
   km->len = len;
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, data, len)) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "invalid BSON in $jsonSchema");
      return false;
   }
   while (bson_iter_next(&it)) {
      const char *key = bson_iter_key(&it);
      int found = -1;
      for (int i = 0; i < KW_COUNT; i++) {
         if (strcmp(key, keywords[i].name) == 0) {
            found = i;
            break;
         }
      }
      if (found < 0) {
         static const char *const unsupported[] = {
            "$ref", "$schema", "default", "definitions", "format", "id", NULL,
         };
         for (size_t i = 0; unsupported[i]; i++) {
            if (strcmp(key, unsupported[i]) == 0) {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "$jsonSchema keyword '%s' is not currently "
                               "supported",
                               key);
               return false;
            }
         }
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Unknown $jsonSchema keyword: %s", key);
         return false;
      }
      if (km->has[found]) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Duplicate $jsonSchema keyword: %s", key);
         return false;
      }
      km->has[found] = true;
   }
   return true;
}

static bool
parse_schema_into(schema_t *s, const uint8_t *data, uint32_t len,
                  aspen_error_t *err)
{
   kwmap_t km;
   bson_iter_t it;
   if (!map_keywords(&km, data, len, err)) {
      return false;
   }
   /* description and title are only checked. */
   if ((km.has[KW_DESCRIPTION] && !kw_arg(&km, KW_DESCRIPTION, &it, err)) ||
       (km.has[KW_TITLE] && !kw_arg(&km, KW_TITLE, &it, err))) {
      return false;
   }
   bool has_type = km.has[KW_TYPE];
   bool has_bson_type = km.has[KW_BSON_TYPE];
   if (has_type && has_bson_type) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "Cannot specify both $jsonSchema keywords 'type' and "
                      "'bsonType'");
      return false;
   }
   if ((has_type || has_bson_type) && km.has[KW_ENCRYPT]) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$jsonSchema keyword 'encrypt' cannot be used in "
                      "conjunction with '%s', 'encrypt' implies type "
                      "'bsonType::BinData'",
                      has_type ? "type" : "bsonType");
      return false;
   }
   if (has_type || has_bson_type) {
      if (!kw_arg(&km, has_type ? KW_TYPE : KW_BSON_TYPE, &it, err) ||
          !parse_types(&it, has_type, &s->types, err)) {
         return false;
      }
      s->has_types = true;
   }
   return parse_scalar_keywords(s, &km, err) &&
          parse_array_keywords(s, &km, err) &&
          parse_encrypt_keywords(s, &km, err) &&
          parse_object_keywords(s, &km, err) &&
          parse_logical_keywords(s, &km, err);
}

static bool
parse_schema(const uint8_t *data, uint32_t len, int depth, schema_t **out,
             aspen_error_t *err)
{
   if (depth > MAX_SCHEMA_DEPTH) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$jsonSchema is nested more than %d levels deep",
                      MAX_SCHEMA_DEPTH);
      *out = NULL;
      return false;
   }
   schema_t *s = aspen_xcalloc(1, sizeof *s);
   s->depth = depth;
   s->length = s->item_count = s->prop_count = (limits_t){-1, -1};
   if (!parse_schema_into(s, data, len, err)) {
      aspen__match_schema_destroy(s);
      *out = NULL;
      return false;
   }
   *out = s;
   return true;
}

/*
 * Compiles the $jsonSchema object at `it` (a document; the caller checked).
 * The compiled schema keeps views into the filter, which must outlive it.
 * Returns true with *out set, or false with err set (mongod's message and
 * code) and *out NULL. Any thread.
 */
bool
aspen__match_schema_new(const bson_iter_t *it, aspen__match_schema_t **out,
                        aspen_error_t *err)
{
   *out = NULL;
   return parse_nested(it, 1, out, err);
}

/* ------------------------------------------------------------------------ */
/* Validation                                                                */
/* ------------------------------------------------------------------------ */

static bool validate(const schema_t *s, const bson_value_t *v);

static bool
multiple_of(const bson_value_t *v, const bson_value_t *m)
{
   bool int_v = v->value_type == BSON_TYPE_INT32 ||
                v->value_type == BSON_TYPE_INT64;
   bool int_m = m->value_type == BSON_TYPE_INT32 ||
                m->value_type == BSON_TYPE_INT64;
   if (int_v && int_m) {
      int64_t x = v->value_type == BSON_TYPE_INT32 ? v->value.v_int32
                                                   : v->value.v_int64;
      int64_t d = m->value_type == BSON_TYPE_INT32 ? m->value.v_int32
                                                   : m->value.v_int64;
      return d == -1 || x % d == 0;
   }
   /* mongod computes this in decimal, where 0.3 is a multiple of 0.1; in
    * binary floating point it is not, so allow rounding noise. */
   double x = as_double(v);
   double d = as_double(m);
   if (!isfinite(x)) {
      return false;
   }
   double q = x / d;
   if (!isfinite(q)) {
      return false;
   }
   return fabs(q - nearbyint(q)) <= 1e-9 * fmax(1.0, fabs(q));
}

static int64_t
utf8_length(const char *s, uint32_t len)
{
   int64_t n = 0;
   for (uint32_t i = 0; i < len; i++) {
      if (((unsigned char) s[i] & 0xc0) != 0x80) {
         n++;
      }
   }
   return n;
}

static bool
doc_find(const bson_value_t *doc, const char *name, uint32_t len,
         bson_iter_t *out)
{
   return bson_iter_init_from_data(out, doc->value.v_doc.data,
                                   doc->value.v_doc.data_len) &&
          bson_iter_find_w_len(out, name, (int) len);
}

/* A count within its limits (-1: none). */
static bool
within(int64_t n, const limits_t *l)
{
   return (l->min < 0 || n >= l->min) && (l->max < 0 || n <= l->max);
}

/* A number on the right side of a bound. */
static bool
bound_ok(const bson_value_t *v, const bound_t *b, aspen__match_op_t exclusive,
         aspen__match_op_t inclusive)
{
   return !b->has ||
          aspen__match_compare(b->exclusive ? exclusive : inclusive, v,
                               &b->value);
}

/* An item or property that no other keyword covers. */
static bool
additional_ok(const additional_t *a, const bson_value_t *v)
{
   return a->kind == ADD_ANY ||
          (a->kind == ADD_SCHEMA && validate(a->schema, v));
}

static bool
validate_array(const schema_t *s, const bson_value_t *v)
{
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, v->value.v_doc.data,
                                 v->value.v_doc.data_len)) {
      return false;
   }
   int64_t count = 0;
   while (bson_iter_next(&it)) {
      const bson_value_t *e = bson_iter_value(&it);
      if (s->items && !validate(s->items, e)) {
         return false;
      }
      if (s->has_tuple) {
         if ((size_t) count < s->tuple.n) {
            if (!validate(s->tuple.v[count], e)) {
               return false;
            }
         } else if (!additional_ok(&s->additional_items, e)) {
            return false;
         }
      }
      count++;
   }
   if (!within(count, &s->item_count)) {
      return false;
   }
   if (s->unique_items) {
      bson_iter_t a;
      bson_iter_init_from_data(&a, v->value.v_doc.data,
                               v->value.v_doc.data_len);
      while (bson_iter_next(&a)) {
         bson_iter_t b = a;
         while (bson_iter_next(&b)) {
            if (aspen__match_unordered_equal(bson_iter_value(&a),
                                             bson_iter_value(&b))) {
               return false;
            }
         }
      }
   }
   return true;
}

static bool
validate_object(const schema_t *s, const bson_value_t *v)
{
   bson_iter_t f;
   for (size_t i = 0; i < s->n_required; i++) {
      if (!doc_find(v, s->required[i].name, s->required[i].len, &f)) {
         return false;
      }
   }
   for (size_t i = 0; i < s->n_props; i++) {
      const prop_t *p = &s->props[i];
      if (doc_find(v, p->name.name, p->name.len, &f) &&
          !validate(p->schema, bson_iter_value(&f))) {
         return false;
      }
   }
   bson_iter_t it;
   int64_t count = 0;
   bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len);
   while (bson_iter_next(&it)) {
      count++;
      if (!s->has_allowed) {
         continue;
      }
      const char *key = bson_iter_key(&it);
      uint32_t key_len = bson_iter_key_len(&it);
      bool other = true;
      for (size_t i = 0; i < s->n_pattern_props; i++) {
         if (aspen__match_regex_search(s->pattern_props[i].re, key,
                                       key_len)) {
            other = false;
            if (!validate(s->pattern_props[i].schema, bson_iter_value(&it))) {
               return false;
            }
         }
      }
      if (other) {
         for (size_t i = 0; i < s->n_props && other; i++) {
            other = !(s->props[i].name.len == key_len &&
                      memcmp(s->props[i].name.name, key, key_len) == 0);
         }
      }
      if (other &&
          !additional_ok(&s->additional_props, bson_iter_value(&it))) {
         return false;
      }
   }
   if (!within(count, &s->prop_count)) {
      return false;
   }
   for (size_t i = 0; i < s->n_deps; i++) {
      const dep_t *d = &s->deps[i];
      if (!doc_find(v, d->name.name, d->name.len, &f)) {
         continue;
      }
      if (d->schema && !validate(d->schema, v)) {
         return false;
      }
      for (size_t j = 0; j < d->n_names; j++) {
         if (!doc_find(v, d->names[j].name, d->names[j].len, &f)) {
            return false;
         }
      }
   }
   return true;
}

static bool
validate(const schema_t *s, const bson_value_t *v)
{
   bson_type_t t = v->value_type;
   if (s->has_types && !(aspen__match_type_bit(t) & s->types)) {
      return false;
   }
   if (s->encrypt && (t != BSON_TYPE_BINARY ||
                      v->value.v_binary.subtype != BSON_SUBTYPE_ENCRYPTED)) {
      return false;
   }
   if (is_number(t)) {
      if (!bound_ok(v, &s->minimum, ASPEN__MATCH_GT, ASPEN__MATCH_GTE) ||
          !bound_ok(v, &s->maximum, ASPEN__MATCH_LT, ASPEN__MATCH_LTE)) {
         return false;
      }
      if (s->has_multiple_of && !multiple_of(v, &s->multiple_of)) {
         return false;
      }
   } else if (t == BSON_TYPE_UTF8) {
      if ((s->length.min >= 0 || s->length.max >= 0) &&
          !within(utf8_length(v->value.v_utf8.str, v->value.v_utf8.len),
                  &s->length)) {
         return false;
      }
      if (s->pattern &&
          !aspen__match_regex_search(s->pattern, v->value.v_utf8.str,
                                     v->value.v_utf8.len)) {
         return false;
      }
   } else if (t == BSON_TYPE_ARRAY) {
      if (!validate_array(s, v)) {
         return false;
      }
   } else if (t == BSON_TYPE_DOCUMENT) {
      if (!validate_object(s, v)) {
         return false;
      }
   }
   for (size_t i = 0; i < s->all_of.n; i++) {
      if (!validate(s->all_of.v[i], v)) {
         return false;
      }
   }
   if (s->any_of.n) {
      bool any = false;
      for (size_t i = 0; i < s->any_of.n && !any; i++) {
         any = validate(s->any_of.v[i], v);
      }
      if (!any) {
         return false;
      }
   }
   if (s->one_of.n) {
      size_t hits = 0;
      for (size_t i = 0; i < s->one_of.n && hits < 2; i++) {
         hits += validate(s->one_of.v[i], v) ? 1 : 0;
      }
      if (hits != 1) {
         return false;
      }
   }
   if (s->not_schema && validate(s->not_schema, v)) {
      return false;
   }
   if (s->n_enum) {
      bool any = false;
      for (size_t i = 0; i < s->n_enum && !any; i++) {
         any = aspen__match_unordered_equal(v, &s->enum_vals[i]);
      }
      if (!any) {
         return false;
      }
   }
   return true;
}

/*
 * Validates the document in `len` bytes at `data` (borrowed) against the
 * schema: true if it conforms. Never allocates except on a thread's first
 * regex search. Any thread.
 */
bool
aspen__match_schema_validate_doc(const aspen__match_schema_t *schema,
                                 const uint8_t *data, uint32_t len)
{
   bson_value_t root = {.value_type = BSON_TYPE_DOCUMENT};
   root.value.v_doc.data = (uint8_t *) data;
   root.value.v_doc.data_len = len;
   return validate(schema, &root);
}
