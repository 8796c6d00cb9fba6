/*
 * value_int.h - value.c's internals for the rest of lang/ (the expression
 * operators, the accumulators): type tests, borrowed views, owned
 * constructors, number coercions and the full comparison. Nothing outside
 * lang/ includes it. Pure; any thread.
 */
#ifndef ASPEN_ENGINE_LANG_VALUE_INT_H
#define ASPEN_ENGINE_LANG_VALUE_INT_H

#include "lang/decimal.h"
#include "lang/value.h"

#include <string.h>

static inline bson_type_t
aspen__vt(const aspen_value_t *val)
{
   return val->v.value_type;
}

static inline bool
aspen__is_nullish(const aspen_value_t *val)
{
   bson_type_t t = val->v.value_type;
   return t == BSON_TYPE_EOD || t == BSON_TYPE_NULL || t == BSON_TYPE_UNDEFINED;
}

static inline bool
aspen__is_num(const aspen_value_t *val)
{
   bson_type_t t = val->v.value_type;
   return t == BSON_TYPE_INT32 || t == BSON_TYPE_INT64 ||
          t == BSON_TYPE_DOUBLE || t == BSON_TYPE_DECIMAL128;
}

static inline bool
aspen__is_array(const aspen_value_t *val)
{
   return val->v.value_type == BSON_TYPE_ARRAY;
}

static inline bool
aspen__is_doc(const aspen_value_t *val)
{
   return val->v.value_type == BSON_TYPE_DOCUMENT;
}

static inline bool
aspen__is_str(const aspen_value_t *val)
{
   return val->v.value_type == BSON_TYPE_UTF8;
}

/* A borrowed view of another value (same bits, never owns). */
static inline aspen_value_t
aspen__value_view(const aspen_value_t *val)
{
   aspen_value_t out = *val;
   out.owned = false;
   out.scratch = false;
   return out;
}

/* A borrowed string value over `len` bytes at `s` (not copied). */
static inline aspen_value_t
aspen__value_str_view(const char *s, uint32_t len)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   out.v.value_type = BSON_TYPE_UTF8;
   out.v.value.v_utf8.str = (char *) s;
   out.v.value.v_utf8.len = len;
   return out;
}

/* A borrowed document/array value over a bson_t's bytes. */
static inline aspen_value_t
aspen__value_doc_view(const bson_t *doc, bool is_array)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   out.v.value_type = is_array ? BSON_TYPE_ARRAY : BSON_TYPE_DOCUMENT;
   out.v.value.v_doc.data = (uint8_t *) bson_get_data(doc);
   out.v.value.v_doc.data_len = doc->len;
   return out;
}

/* The number of elements of the document or array the iterator is on (0
 * for any other value). */
uint32_t aspen__value_child_count(const bson_iter_t *it);
/* True when the value is borrowed and of a type with heap parts (so it
 * points into storage someone else owns). */
bool aspen__value_is_view(const aspen_value_t *val);
/* Makes `val` self-contained: a borrowed string/document/binary/... and
 * a string in a scratch (value.h) are deep-copied; scalars and other owned
 * values are left alone. */
void aspen__value_own(aspen_value_t *val);
/* An owned string value that takes `s` (bson_malloc'd, NUL-terminated,
 * `len` bytes before the NUL). */
aspen_value_t aspen__value_utf8_take(char *s, uint32_t len);
/* An owned decimal128 value. */
aspen_value_t aspen__value_decimal(bson_decimal128_t d);
/* An owned binary value (copies the bytes). */
aspen_value_t aspen__value_binary(bson_subtype_t sub, const uint8_t *data,
                                  uint32_t len);

/* Full comparison; `missing_low` as in aspen__value_type_rank (value.h). */
int aspen__value_cmp(const aspen_value_t *a, const aspen_value_t *b,
                     bool missing_low);
/* Compares two BSON documents (or arrays) element by element as MongoDB's
 * woCompare does: canonical type, then field name, then value. */
int aspen__bson_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b,
                    uint32_t blen, bool compare_names);

/* Any numeric value -> decimal (doubles to 15 digits, as coerceToDecimal). */
aspen_dec_t aspen__num_to_dec(const aspen_value_t *val);
/* Number coercions (caller checked aspen__is_num). */
double aspen__num_to_double(const aspen_value_t *val);
int64_t aspen__num_to_int64(const aspen_value_t *val); /* truncates */
/* True when the number is integral and fits in int32 / int64. */
bool aspen__num_is_int32(const aspen_value_t *val, int32_t *out);
bool aspen__num_is_int64(const aspen_value_t *val, int64_t *out);
/* int64 -> int32 value when it fits, else int64 (MongoDB createIntOrLong). */
aspen_value_t aspen__value_int_or_long(int64_t v);
/* Renders a number for error messages (no allocation). */
void aspen__num_to_text(const aspen_value_t *val, char *buf, size_t len);

#endif /* ASPEN_ENGINE_LANG_VALUE_INT_H */
