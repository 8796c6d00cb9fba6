/*
 * value.c - aspen_value_t, the unit of data the engine's expressions and
 * matcher pass around: a bson_value_t that is either a borrowed view into a
 * document/pipeline or owns its heap parts. Also MongoDB's total order over
 * BSON values (canonical type rank, numeric comparison across int32/int64/
 * double/decimal128, element-wise documents and arrays), truthiness and the
 * numeric accessors. Pure functions; any thread.
 *
 * Owned payloads are allocated with bson_malloc because they are released
 * with bson_value_destroy (which frees with bson_free).
 */
#include "lang/value_int.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

bool
aspen_value_is_nullish(const aspen_value_t *val)
{
   return aspen__is_nullish(val);
}

bool
aspen_value_is_number(const aspen_value_t *val)
{
   return aspen__is_num(val);
}

static bool
type_has_heap(bson_type_t t)
{
   switch (t) {
   case BSON_TYPE_UTF8:
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
   case BSON_TYPE_BINARY:
   case BSON_TYPE_REGEX:
   case BSON_TYPE_DBPOINTER:
   case BSON_TYPE_CODE:
   case BSON_TYPE_SYMBOL:
   case BSON_TYPE_CODEWSCOPE:
      return true;
   default:
      return false;
   }
}

void
aspen_value_destroy(aspen_value_t *val)
{
   if (!val) {
      return;
   }
   if (val->owned && !val->scratch && type_has_heap(val->v.value_type)) {
      bson_value_destroy(&val->v);
   }
   memset(val, 0, sizeof *val);
}

aspen_value_t
aspen_value_borrow(const bson_iter_t *it)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   /* bson_iter_value writes into the iterator; work on a copy so a const
    * iterator stays untouched. The value's pointers lead into the document,
    * not into the iterator. */
   bson_iter_t copy = *it;
   out.v = *bson_iter_value(&copy);
   return out;
}

aspen_value_t
aspen_value_copy(const aspen_value_t *val)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   if (val->v.value_type == BSON_TYPE_EOD) {
      return out;
   }
   if (!type_has_heap(val->v.value_type)) {
      out.v = val->v;
      return out;
   }
   bson_value_copy(&val->v, &out.v);
   out.owned = true;
   return out;
}

uint32_t
aspen__value_child_count(const bson_iter_t *it)
{
   bson_iter_t child;
   uint32_t n = 0;
   if (bson_iter_recurse(it, &child)) {
      while (bson_iter_next(&child)) {
         n++;
      }
   }
   return n;
}

bool
aspen__value_is_view(const aspen_value_t *val)
{
   return !val->owned && type_has_heap(val->v.value_type);
}

void
aspen__value_own(aspen_value_t *val)
{
   if (aspen__value_is_view(val) || val->scratch) {
      aspen_value_t copy = aspen_value_copy(val);
      *val = copy;
   }
}





aspen_value_t
aspen_value_utf8(const char *s, size_t len)
{
   char *copy = bson_malloc(len + 1);
   if (len) {
      memcpy(copy, s, len);
   }
   copy[len] = '\0';
   return aspen__value_utf8_take(copy, (uint32_t) len);
}

/* Takes a bson_malloc'd, NUL-terminated string. */
aspen_value_t
aspen__value_utf8_take(char *s, uint32_t len)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   out.v.value_type = BSON_TYPE_UTF8;
   out.v.value.v_utf8.str = s;
   out.v.value.v_utf8.len = len;
   out.owned = true;
   return out;
}

aspen_value_t
aspen__value_decimal(bson_decimal128_t d)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   out.v.value_type = BSON_TYPE_DECIMAL128;
   out.v.value.v_decimal128 = d;
   return out;
}

aspen_value_t
aspen__value_binary(bson_subtype_t sub, const uint8_t *data, uint32_t len)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   out.v.value_type = BSON_TYPE_BINARY;
   out.v.value.v_binary.subtype = sub;
   out.v.value.v_binary.data_len = len;
   out.v.value.v_binary.data = bson_malloc(len ? len : 1);
   if (len) {
      memcpy(out.v.value.v_binary.data, data, len);
   }
   out.owned = true;
   return out;
}

aspen_value_t
aspen_value_take_doc(bson_t *doc, bool is_array)
{
   aspen_value_t out;
   uint32_t len = 0;
   memset(&out, 0, sizeof out);
   uint8_t *data = bson_destroy_with_steal(doc, true, &len);
   out.v.value_type = is_array ? BSON_TYPE_ARRAY : BSON_TYPE_DOCUMENT;
   out.v.value.v_doc.data = data;
   out.v.value.v_doc.data_len = len;
   out.owned = true;
   return out;
}

/* ------------------------------------------------------------------------ */
/* Numbers                                                                   */
/* ------------------------------------------------------------------------ */

double
aspen__num_to_double(const aspen_value_t *val)
{
   switch (val->v.value_type) {
   case BSON_TYPE_INT32:
      return (double) val->v.value.v_int32;
   case BSON_TYPE_INT64:
      return (double) val->v.value.v_int64;
   case BSON_TYPE_DOUBLE:
      return val->v.value.v_double;
   case BSON_TYPE_DECIMAL128:
      return aspen__decimal_to_double(val->v.value.v_decimal128);
   default:
      return 0.0;
   }
}

int64_t
aspen__num_to_int64(const aspen_value_t *val)
{
   switch (val->v.value_type) {
   case BSON_TYPE_INT32:
      return val->v.value.v_int32;
   case BSON_TYPE_INT64:
      return val->v.value.v_int64;
   case BSON_TYPE_DOUBLE: {
      double d = val->v.value.v_double;
      if (isnan(d)) {
         return 0;
      }
      if (d >= 9223372036854775807.0) {
         return INT64_MAX;
      }
      if (d <= -9223372036854775808.0) {
         return INT64_MIN;
      }
      return (int64_t) d;
   }
   case BSON_TYPE_DECIMAL128: {
      int64_t out = 0;
      aspen__decimal_to_int64(
         aspen__decimal_from_bson(&val->v.value.v_decimal128), &out);
      return out;
   }
   default:
      return 0;
   }
}

bool
aspen__num_is_int64(const aspen_value_t *val, int64_t *out)
{
   switch (val->v.value_type) {
   case BSON_TYPE_INT32:
      *out = val->v.value.v_int32;
      return true;
   case BSON_TYPE_INT64:
      *out = val->v.value.v_int64;
      return true;
   case BSON_TYPE_DOUBLE: {
      double d = val->v.value.v_double;
      if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) ||
          d != trunc(d)) {
         return false;
      }
      *out = (int64_t) d;
      return true;
   }
   case BSON_TYPE_DECIMAL128: {
      aspen_dec_t d = aspen__decimal_from_bson(&val->v.value.v_decimal128);
      int64_t i;
      if (!aspen__decimal_to_int64(d, &i) ||
          aspen__decimal_cmp(aspen__decimal_from_int64(i), d) != 0) {
         return false;
      }
      *out = i;
      return true;
   }
   default:
      return false;
   }
}

bool
aspen__num_is_int32(const aspen_value_t *val, int32_t *out)
{
   int64_t i;
   if (!aspen__num_is_int64(val, &i) || i < INT32_MIN || i > INT32_MAX) {
      return false;
   }
   *out = (int32_t) i;
   return true;
}

aspen_value_t
aspen__value_int_or_long(int64_t v)
{
   if (v >= INT32_MIN && v <= INT32_MAX) {
      return aspen_value_int32((int32_t) v);
   }
   return aspen_value_int64(v);
}

bool
aspen_value_as_double(const aspen_value_t *val, double *out)
{
   if (!aspen__is_num(val)) {
      *out = 0.0;
      return false;
   }
   *out = aspen__num_to_double(val);
   return true;
}

bool
aspen_value_as_int64(const aspen_value_t *val, int64_t *out)
{
   if (!aspen__is_num(val)) {
      *out = 0;
      return false;
   }
   *out = aspen__num_to_int64(val);
   return true;
}

static void
format_double(double d, char *buf, size_t len)
{
   if (isnan(d)) {
      snprintf(buf, len, "NaN");
   } else if (isinf(d)) {
      snprintf(buf, len, d < 0 ? "-Infinity" : "Infinity");
   } else {
      snprintf(buf, len, "%.17g", d);
      /* Prefer the shortest text that reads back to the same double. */
      for (int prec = 1; prec <= 17; prec++) {
         char tmp[40];
         snprintf(tmp, sizeof tmp, "%.*g", prec, d);
         if (strtod(tmp, NULL) == d) {
            snprintf(buf, len, "%s", tmp);
            break;
         }
      }
   }
}

void
aspen__num_to_text(const aspen_value_t *val, char *buf, size_t len)
{
   switch (val->v.value_type) {
   case BSON_TYPE_INT32:
      snprintf(buf, len, "%" PRId32, val->v.value.v_int32);
      break;
   case BSON_TYPE_INT64:
      snprintf(buf, len, "%" PRId64, val->v.value.v_int64);
      break;
   case BSON_TYPE_DOUBLE:
      format_double(val->v.value.v_double, buf, len);
      break;
   case BSON_TYPE_DECIMAL128:
      aspen__decimal_to_string(
         aspen__decimal_from_bson(&val->v.value.v_decimal128), buf, len);
      break;
   default:
      snprintf(buf, len, "?");
   }
}

/* ------------------------------------------------------------------------ */
/* Numbers as decimals                                                       */
/* ------------------------------------------------------------------------ */

aspen_dec_t
aspen__num_to_dec(const aspen_value_t *val)
{
   switch (val->v.value_type) {
   case BSON_TYPE_INT32:
      return aspen__decimal_from_int64(val->v.value.v_int32);
   case BSON_TYPE_INT64:
      return aspen__decimal_from_int64(val->v.value.v_int64);
   case BSON_TYPE_DOUBLE:
      return aspen__decimal_from_double(val->v.value.v_double, 15);
   case BSON_TYPE_DECIMAL128:
      return aspen__decimal_from_bson(&val->v.value.v_decimal128);
   default:
      return aspen__decimal_from_int64(0);
   }
}

/* ------------------------------------------------------------------------ */
/* Comparison                                                                */
/* ------------------------------------------------------------------------ */

int
aspen__value_type_rank(bson_type_t t, bool missing_low)
{
   switch (t) {
   case BSON_TYPE_MINKEY:
      return -1;
   case BSON_TYPE_EOD:
   case BSON_TYPE_UNDEFINED:
      return missing_low ? 0 : 5;
   case BSON_TYPE_NULL:
      return 5;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_INT32:
   case BSON_TYPE_INT64:
   case BSON_TYPE_DECIMAL128:
      return 10;
   case BSON_TYPE_UTF8:
   case BSON_TYPE_SYMBOL:
      return 15;
   case BSON_TYPE_DOCUMENT:
      return 20;
   case BSON_TYPE_ARRAY:
      return 25;
   case BSON_TYPE_BINARY:
      return 30;
   case BSON_TYPE_OID:
      return 35;
   case BSON_TYPE_BOOL:
      return 40;
   case BSON_TYPE_DATE_TIME:
      return 45;
   case BSON_TYPE_TIMESTAMP:
      return 47;
   case BSON_TYPE_REGEX:
      return 50;
   case BSON_TYPE_DBPOINTER:
      return 55;
   case BSON_TYPE_CODE:
      return 60;
   case BSON_TYPE_CODEWSCOPE:
      return 65;
   case BSON_TYPE_MAXKEY:
      return 127;
   default:
      return 126;
   }
}

static int
sign(int64_t d)
{
   return d < 0 ? -1 : d > 0 ? 1 : 0;
}

static int
cmp_double(double a, double b)
{
   /* NaN sorts below every number and equal to itself. */
   if (isnan(a)) {
      return isnan(b) ? 0 : -1;
   }
   if (isnan(b)) {
      return 1;
   }
   return a < b ? -1 : a > b ? 1 : 0;
}

/* int64 vs double without precision loss. */
static int
cmp_long_double(int64_t l, double d)
{
   if (isnan(d)) {
      return 1;
   }
   if (d >= 9223372036854775808.0) {
      return -1;
   }
   if (d < -9223372036854775808.0) {
      return 1;
   }
   double t = trunc(d);
   int64_t di = (int64_t) t;
   if (l != di) {
      return l < di ? -1 : 1;
   }
   /* Same integer part: the fraction decides. */
   return d > t ? -1 : d < t ? 1 : 0;
}

static int
cmp_numbers(const aspen_value_t *a, const aspen_value_t *b)
{
   bson_type_t ta = a->v.value_type, tb = b->v.value_type;
   if (ta == BSON_TYPE_DECIMAL128 || tb == BSON_TYPE_DECIMAL128) {
      aspen_dec_t da, db;
      if (ta == BSON_TYPE_DOUBLE) {
         da = aspen__decimal_from_double(a->v.value.v_double, 34);
      } else {
         da = aspen__num_to_dec(a);
      }
      if (tb == BSON_TYPE_DOUBLE) {
         db = aspen__decimal_from_double(b->v.value.v_double, 34);
      } else {
         db = aspen__num_to_dec(b);
      }
      return aspen__decimal_cmp(da, db);
   }
   if (ta == BSON_TYPE_DOUBLE && tb == BSON_TYPE_DOUBLE) {
      return cmp_double(a->v.value.v_double, b->v.value.v_double);
   }
   if (ta == BSON_TYPE_DOUBLE) {
      return -cmp_long_double(aspen__num_to_int64(b), a->v.value.v_double);
   }
   if (tb == BSON_TYPE_DOUBLE) {
      return cmp_long_double(aspen__num_to_int64(a), b->v.value.v_double);
   }
   int64_t la = aspen__num_to_int64(a), lb = aspen__num_to_int64(b);
   return la < lb ? -1 : la > lb ? 1 : 0;
}

static int
cmp_bytes(const void *a, size_t alen, const void *b, size_t blen)
{
   size_t n = alen < blen ? alen : blen;
   int c = n ? memcmp(a, b, n) : 0;
   if (c) {
      return c < 0 ? -1 : 1;
   }
   return alen < blen ? -1 : alen > blen ? 1 : 0;
}

int
aspen__bson_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b,
                uint32_t blen, bool compare_names)
{
   bson_iter_t ia, ib;
   if (!bson_iter_init_from_data(&ia, a, alen) ||
       !bson_iter_init_from_data(&ib, b, blen)) {
      return cmp_bytes(a, alen, b, blen);
   }
   for (;;) {
      bool ma = bson_iter_next(&ia), mb = bson_iter_next(&ib);
      if (!ma || !mb) {
         return ma == mb ? 0 : ma ? 1 : -1;
      }
      aspen_value_t va = aspen_value_borrow(&ia);
      aspen_value_t vb = aspen_value_borrow(&ib);
      int ra = aspen__value_type_rank(va.v.value_type, true);
      int rb = aspen__value_type_rank(vb.v.value_type, true);
      if (ra != rb) {
         return ra < rb ? -1 : 1;
      }
      if (compare_names) {
         int c = strcmp(bson_iter_key(&ia), bson_iter_key(&ib));
         if (c) {
            return c < 0 ? -1 : 1;
         }
      }
      int c = aspen__value_cmp(&va, &vb, true);
      if (c) {
         return c;
      }
   }
}

int
aspen__value_cmp(const aspen_value_t *a, const aspen_value_t *b,
                 bool missing_low)
{
   bson_type_t ta = a->v.value_type, tb = b->v.value_type;
   int ra = aspen__value_type_rank(ta, missing_low);
   int rb = aspen__value_type_rank(tb, missing_low);
   if (ra != rb) {
      return ra < rb ? -1 : 1;
   }
   const bson_value_t *x = &a->v, *y = &b->v;
   switch (ra) {
   case 10:
      return cmp_numbers(a, b);
   case 15: {
      const char *sa, *sb;
      uint32_t la, lb;
      if (ta == BSON_TYPE_SYMBOL) {
         sa = x->value.v_symbol.symbol;
         la = x->value.v_symbol.len;
      } else {
         sa = x->value.v_utf8.str;
         la = x->value.v_utf8.len;
      }
      if (tb == BSON_TYPE_SYMBOL) {
         sb = y->value.v_symbol.symbol;
         lb = y->value.v_symbol.len;
      } else {
         sb = y->value.v_utf8.str;
         lb = y->value.v_utf8.len;
      }
      return cmp_bytes(sa, la, sb, lb);
   }
   case 20:
      return aspen__bson_cmp(x->value.v_doc.data, x->value.v_doc.data_len,
                             y->value.v_doc.data, y->value.v_doc.data_len,
                             true);
   case 25:
      return aspen__bson_cmp(x->value.v_doc.data, x->value.v_doc.data_len,
                             y->value.v_doc.data, y->value.v_doc.data_len,
                             false);
   case 30:
      if (x->value.v_binary.data_len != y->value.v_binary.data_len) {
         return x->value.v_binary.data_len < y->value.v_binary.data_len ? -1
                                                                        : 1;
      }
      if (x->value.v_binary.subtype != y->value.v_binary.subtype) {
         return x->value.v_binary.subtype < y->value.v_binary.subtype ? -1
                                                                      : 1;
      }
      return cmp_bytes(x->value.v_binary.data, x->value.v_binary.data_len,
                       y->value.v_binary.data, y->value.v_binary.data_len);
   case 35:
      return cmp_bytes(x->value.v_oid.bytes, 12, y->value.v_oid.bytes, 12);
   case 40:
      return (int) x->value.v_bool - (int) y->value.v_bool;
   case 45:
      return sign(x->value.v_datetime < y->value.v_datetime ? -1
                  : x->value.v_datetime > y->value.v_datetime ? 1
                                                              : 0);
   case 47:
      if (x->value.v_timestamp.timestamp != y->value.v_timestamp.timestamp) {
         return x->value.v_timestamp.timestamp <
                      y->value.v_timestamp.timestamp
                   ? -1
                   : 1;
      }
      return x->value.v_timestamp.increment < y->value.v_timestamp.increment
                ? -1
             : x->value.v_timestamp.increment > y->value.v_timestamp.increment
                ? 1
                : 0;
   case 50: {
      int c = strcmp(x->value.v_regex.regex, y->value.v_regex.regex);
      if (c) {
         return c < 0 ? -1 : 1;
      }
      c = strcmp(x->value.v_regex.options ? x->value.v_regex.options : "",
                 y->value.v_regex.options ? y->value.v_regex.options : "");
      return c < 0 ? -1 : c > 0 ? 1 : 0;
   }
   case 55: {
      if (x->value.v_dbpointer.collection_len !=
          y->value.v_dbpointer.collection_len) {
         return x->value.v_dbpointer.collection_len <
                      y->value.v_dbpointer.collection_len
                   ? -1
                   : 1;
      }
      int c = strcmp(x->value.v_dbpointer.collection,
                     y->value.v_dbpointer.collection);
      if (c) {
         return c < 0 ? -1 : 1;
      }
      return cmp_bytes(x->value.v_dbpointer.oid.bytes, 12,
                       y->value.v_dbpointer.oid.bytes, 12);
   }
   case 60:
      return cmp_bytes(x->value.v_code.code, x->value.v_code.code_len,
                       y->value.v_code.code, y->value.v_code.code_len);
   case 65: {
      int c = cmp_bytes(x->value.v_codewscope.code,
                        x->value.v_codewscope.code_len,
                        y->value.v_codewscope.code,
                        y->value.v_codewscope.code_len);
      if (c) {
         return c;
      }
      return aspen__bson_cmp(x->value.v_codewscope.scope_data,
                             x->value.v_codewscope.scope_len,
                             y->value.v_codewscope.scope_data,
                             y->value.v_codewscope.scope_len, true);
   }
   default:
      return 0; /* null, undefined, missing, MinKey, MaxKey */
   }
}

int
aspen_value_compare(const aspen_value_t *a, const aspen_value_t *b)
{
   return aspen__value_cmp(a, b, false);
}

bool
aspen_value_equal(const aspen_value_t *a, const aspen_value_t *b)
{
   return aspen__value_cmp(a, b, false) == 0;
}

bool
aspen_value_truthy(const aspen_value_t *val)
{
   switch (val->v.value_type) {
   case BSON_TYPE_EOD:
   case BSON_TYPE_NULL:
   case BSON_TYPE_UNDEFINED:
      return false;
   case BSON_TYPE_BOOL:
      return val->v.value.v_bool;
   case BSON_TYPE_INT32:
      return val->v.value.v_int32 != 0;
   case BSON_TYPE_INT64:
      return val->v.value.v_int64 != 0;
   case BSON_TYPE_DOUBLE:
      return val->v.value.v_double != 0.0;
   case BSON_TYPE_DECIMAL128: {
      aspen_dec_t d = aspen__decimal_from_bson(&val->v.value.v_decimal128);
      return aspen__decimal_is_nan(d) || !aspen__decimal_is_zero(d);
   }
   default:
      return true;
   }
}

const char *
aspen_value_type_name(const aspen_value_t *val)
{
   switch (val->v.value_type) {
   case BSON_TYPE_EOD:
      return "missing";
   case BSON_TYPE_DOUBLE:
      return "double";
   case BSON_TYPE_UTF8:
      return "string";
   case BSON_TYPE_DOCUMENT:
      return "object";
   case BSON_TYPE_ARRAY:
      return "array";
   case BSON_TYPE_BINARY:
      return "binData";
   case BSON_TYPE_UNDEFINED:
      return "undefined";
   case BSON_TYPE_OID:
      return "objectId";
   case BSON_TYPE_BOOL:
      return "bool";
   case BSON_TYPE_DATE_TIME:
      return "date";
   case BSON_TYPE_NULL:
      return "null";
   case BSON_TYPE_REGEX:
      return "regex";
   case BSON_TYPE_DBPOINTER:
      return "dbPointer";
   case BSON_TYPE_CODE:
      return "javascript";
   case BSON_TYPE_SYMBOL:
      return "symbol";
   case BSON_TYPE_CODEWSCOPE:
      return "javascriptWithScope";
   case BSON_TYPE_INT32:
      return "int";
   case BSON_TYPE_TIMESTAMP:
      return "timestamp";
   case BSON_TYPE_INT64:
      return "long";
   case BSON_TYPE_DECIMAL128:
      return "decimal";
   case BSON_TYPE_MINKEY:
      return "minKey";
   case BSON_TYPE_MAXKEY:
      return "maxKey";
   default:
      return "unknown";
   }
}

void
aspen_value_append(bson_t *doc, const char *key, int key_len,
                   const aspen_value_t *val)
{
   if (val->v.value_type == BSON_TYPE_EOD) {
      return;
   }
   bson_append_value(doc, key, key_len, &val->v);
}

void
aspen_doc_set_path(const bson_t *doc, const char *path,
                   const aspen_value_t *val, bson_t *out)
{
   size_t head = strcspn(path, ".");
   bool found = false;
   bson_iter_t it;
   if (doc && bson_iter_init(&it, doc)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strlen(k) != head || strncmp(k, path, head) != 0) {
            bson_append_iter(out, k, -1, &it);
            continue;
         }
         found = true;
         if (path[head] == '\0') {
            aspen_value_append(out, k, -1, val);
            continue;
         }
         bson_t sub, child;
         bool have = false;
         if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
            uint32_t len;
            const uint8_t *data;
            bson_iter_document(&it, &len, &data);
            have = bson_init_static(&sub, data, len);
         }
         bson_append_document_begin(out, k, -1, &child);
         aspen_doc_set_path(have ? &sub : NULL, path + head + 1, val, &child);
         bson_append_document_end(out, &child);
      }
   }
   if (!found && val->v.value_type != BSON_TYPE_EOD) {
      if (path[head] == '\0') {
         aspen_value_append(out, path, (int) head, val);
      } else {
         bson_t child;
         bson_append_document_begin(out, path, (int) head, &child);
         aspen_doc_set_path(NULL, path + head + 1, val, &child);
         bson_append_document_end(out, &child);
      }
   }
}

char *
aspen_value_to_json(const aspen_value_t *val)
{
   if (val->v.value_type == BSON_TYPE_EOD) {
      return bson_strdup("missing");
   }
   bson_t tmp = BSON_INITIALIZER;
   bson_append_value(&tmp, "v", 1, &val->v);
   size_t len = 0;
   char *json = bson_as_relaxed_extended_json(&tmp, &len);
   bson_destroy(&tmp);
   if (!json) {
      return bson_strdup("?");
   }
   /* Strip the wrapper: '{ "v" : ' ... ' }'. */
   const char *start = strstr(json, ": ");
   char *out;
   if (start && len >= 2) {
      start += 2;
      size_t n = strlen(start);
      if (n >= 2 && start[n - 1] == '}' && start[n - 2] == ' ') {
         n -= 2;
      }
      const size_t max = 200;
      if (n > max) {
         out = bson_malloc(max + 4);
         memcpy(out, start, max);
         memcpy(out + max, "...", 4);
      } else {
         out = bson_strndup(start, n);
      }
   } else {
      out = bson_strdup(json);
   }
   bson_free(json);
   return out;
}
