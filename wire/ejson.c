/*
 * ejson.c - the plain-JSON fast path of Extended JSON (see ejson.h): a
 * recursive-descent reader straight into the BSON writer, and a writer of
 * libbson's relaxed layout ("{ "k" : v, ... }", "{  }" for an empty nested
 * document, "%.20g" doubles with ".0" for integral ones, ISO-8601 dates). Whatever either
 * is not sure to do exactly as libbson does, it declines.
 */
#include "ejson.h"
#include "bytes.h"
#include "wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libbson's reader refuses documents nested past 100 levels and its writer
 * stops at 200: far enough below both, the fast paths decline. */
enum { MAX_DEPTH = 64 };

/* ---- reading ------------------------------------------------------------ */

typedef struct {
   const char *p;
   const char *end;
   aspen_bsonw_t *w;
} rd_t;

static inline void
skip_ws(rd_t *r)
{
   while (r->p < r->end &&
          (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t')) {
      r->p++;
   }
}

/* A string of printable ASCII without escapes; r->p is on its quote. */
static bool
read_str(rd_t *r, const char **s, size_t *n)
{
   const char *q = r->p + 1;
   while (q < r->end) {
      unsigned char c = (unsigned char) *q;
      if (c == '"') {
         *s = r->p + 1;
         *n = (size_t) (q - *s);
         r->p = q + 1;
         return true;
      }
      if (c < 0x20 || c > 0x7e || c == '\\') {
         return false;
      }
      q++;
   }
   return false;
}

/* After a number or a literal: what may follow a value. */
static inline bool
at_delim(const rd_t *r)
{
   if (r->p == r->end) {
      return true;
   }
   char c = *r->p;
   return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' ||
          c == '\r' || c == '\t';
}

static bool
read_literal(rd_t *r, const char *lit, size_t n)
{
   if ((size_t) (r->end - r->p) < n || memcmp(r->p, lit, n) != 0) {
      return false;
   }
   r->p += n;
   return at_delim(r);
}

/* 10^0 .. 10^22: the powers of ten a double holds exactly. */
static const double pow10_exact[] = {
   1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
   1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* -?(0|[1-9][0-9]*)(.[0-9]+)?, then a delimiter: an integer of at most 18
 * digits becomes int32 or int64 as libbson chooses; a decimal fraction
 * (short enough for a stack copy) a double as strtod reads it, as libbson:
 * with at most 15 digits in all, digits / 10^fraction-digits, both exact
 * doubles, whose one IEEE division rounds as strtod does (Clinger's fast
 * path); longer ones through strtod itself. */
static bool
read_number(rd_t *r, const char *key, size_t klen)
{
   const char *start = r->p;
   bool neg = false;
   if (*r->p == '-') {
      neg = true;
      r->p++;
   }
   const char *digits = r->p;
   uint64_t val = 0;
   while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
      val = val * 10 + (uint64_t) (*r->p - '0');
      r->p++;
   }
   size_t nd = (size_t) (r->p - digits);
   if (nd == 0 || nd > 18 || (nd > 1 && *digits == '0')) {
      return false;
   }
   bson_value_t v;
   if (r->p < r->end && *r->p == '.') {
      r->p++;
      const char *frac = r->p;
      while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
         r->p++;
      }
      char buf[64];
      size_t n = (size_t) (r->p - start);
      size_t nf = (size_t) (r->p - frac);
      if (r->p == frac || n >= sizeof buf || !at_delim(r)) {
         return false;
      }
      v.value_type = BSON_TYPE_DOUBLE;
      if (nd + nf <= 15) {
         uint64_t m = val; /* < 10^15 < 2^53: exact as a double */
         for (const char *q = frac; q < r->p; q++) {
            m = m * 10 + (uint64_t) (*q - '0');
         }
         double d = (double) m / pow10_exact[nf];
         v.value.v_double = neg ? -d : d;
      } else {
         memcpy(buf, start, n);
         buf[n] = '\0';
         v.value.v_double = strtod(buf, NULL);
      }
   } else {
      if (!at_delim(r)) {
         return false;
      }
      if (val <= INT32_MAX || (neg && val <= (uint64_t) INT32_MAX + 1)) {
         v.value_type = BSON_TYPE_INT32;
         v.value.v_int32 = (int32_t) (neg ? -(int64_t) val : (int64_t) val);
      } else {
         v.value_type = BSON_TYPE_INT64;
         v.value.v_int64 = neg ? -(int64_t) val : (int64_t) val;
      }
   }
   aspen_bsonw_value(r->w, key, klen, &v);
   return true;
}

static bool read_value(rd_t *r, const char *key, size_t klen, int depth);

/* After an item of an object or array: 1 at its `close`, 0 after a ',',
 * -1 (declined) for anything else. */
static int
after_item(rd_t *r, char close)
{
   skip_ws(r);
   if (r->p == r->end) {
      return -1;
   }
   if (*r->p == close) {
      r->p++;
      return 1;
   }
   if (*r->p != ',') {
      return -1;
   }
   r->p++;
   skip_ws(r);
   return 0;
}

/* The members of an object, r->p after its '{'. */
static bool
read_members(rd_t *r, int depth)
{
   skip_ws(r);
   if (r->p < r->end && *r->p == '}') {
      r->p++;
      return true;
   }
   for (;;) {
      const char *key;
      size_t klen;
      if (r->p == r->end || *r->p != '"' || !read_str(r, &key, &klen) ||
          (klen > 0 && key[0] == '$')) {
         return false; /* '$' keys are Extended JSON's: libbson's */
      }
      skip_ws(r);
      if (r->p == r->end || *r->p != ':') {
         return false;
      }
      r->p++;
      skip_ws(r);
      if (!read_value(r, key, klen, depth)) {
         return false;
      }
      int end = after_item(r, '}');
      if (end != 0) {
         return end > 0;
      }
   }
}

/* The elements of an array, r->p after its '['. */
static bool
read_elements(rd_t *r, int depth)
{
   skip_ws(r);
   if (r->p < r->end && *r->p == ']') {
      r->p++;
      return true;
   }
   for (uint32_t i = 0;; i++) {
      char buf[16];
      const char *key;
      size_t klen = bson_uint32_to_string(i, &key, buf, sizeof buf);
      if (!read_value(r, key, klen, depth)) {
         return false;
      }
      int end = after_item(r, ']');
      if (end != 0) {
         return end > 0;
      }
   }
}

static bool
read_value(rd_t *r, const char *key, size_t klen, int depth)
{
   if (r->p == r->end) {
      return false;
   }
   switch (*r->p) {
   case '{':
   case '[': {
      if (depth >= MAX_DEPTH) {
         return false;
      }
      bool obj = *r->p == '{';
      r->p++;
      size_t start = aspen_bsonw_begin(
         r->w, obj ? BSON_TYPE_DOCUMENT : BSON_TYPE_ARRAY, key, klen);
      if (!(obj ? read_members(r, depth + 1) : read_elements(r, depth + 1))) {
         return false;
      }
      aspen_bsonw_end(r->w, start);
      return true;
   }
   case '"': {
      const char *s;
      size_t n;
      if (!read_str(r, &s, &n)) {
         return false;
      }
      bson_value_t v = {.value_type = BSON_TYPE_UTF8};
      v.value.v_utf8.str = (char *) s;
      v.value.v_utf8.len = (uint32_t) n;
      aspen_bsonw_value(r->w, key, klen, &v);
      return true;
   }
   case 't':
   case 'f': {
      bool t = *r->p == 't';
      if (!read_literal(r, t ? "true" : "false", t ? 4 : 5)) {
         return false;
      }
      bson_value_t v = {.value_type = BSON_TYPE_BOOL};
      v.value.v_bool = t;
      aspen_bsonw_value(r->w, key, klen, &v);
      return true;
   }
   case 'n': {
      if (!read_literal(r, "null", 4)) {
         return false;
      }
      bson_value_t v = {.value_type = BSON_TYPE_NULL};
      aspen_bsonw_value(r->w, key, klen, &v);
      return true;
   }
   default:
      if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9')) {
         return read_number(r, key, klen);
      }
      return false;
   }
}

bool
aspen_ejson_read(const char *text, size_t len, aspen_bsonw_t *w, bson_t *out)
{
   rd_t r = {.p = text, .end = text + len, .w = w};
   aspen_bsonw_reset(w);
   skip_ws(&r);
   if (r.p == r.end || *r.p != '{') {
      bson_init(out);
      return false;
   }
   r.p++;
   if (!read_members(&r, 1)) {
      bson_init(out);
      return false;
   }
   skip_ws(&r);
   if (r.p != r.end) {
      bson_init(out);
      return false;
   }
   return aspen_bsonw_finish(w, out);
}

/* ---- writing ------------------------------------------------------------ */

void
aspen_ejson_text_cleanup(aspen_ejson_text_t *t)
{
   free(t->data);
   t->data = NULL;
   t->len = t->cap = 0;
}

static inline char *
t_reserve(aspen_ejson_text_t *t, size_t n)
{
   if (t->cap - t->len < n + 1) {
      size_t cap = t->cap ? t->cap : 256;
      while (cap - t->len < n + 1) {
         cap *= 2;
      }
      t->data = aspen_xrealloc(t->data, cap);
      t->cap = cap;
   }
   return t->data + t->len;
}

static inline void
t_put(aspen_ejson_text_t *t, const char *s, size_t n)
{
   memcpy(t_reserve(t, n), s, n);
   t->len += n;
}

#define T_LIT(t, s) t_put((t), (s), sizeof(s) - 1)

/* A quoted string of printable ASCII, '"' and '\' escaped as libbson
 * escapes them; false (declined) for anything else. */
static bool
put_str(aspen_ejson_text_t *t, const char *s, size_t n)
{
   char *p = t_reserve(t, 2 * n + 2);
   char *q = p;
   *q++ = '"';
   for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char) s[i];
      if (c < 0x20 || c > 0x7e) {
         return false;
      }
      if (c == '"' || c == '\\') {
         *q++ = '\\';
      }
      *q++ = (char) c;
   }
   *q++ = '"';
   t->len += (size_t) (q - p);
   return true;
}

static void
put_int(aspen_ejson_text_t *t, int64_t v)
{
   t->len += aspen_bytes_dec_int64(v, t_reserve(t, 21));
}

/* libbson's relaxed double: "%.20g", with ".0" added when that printed
 * only digits and '-'. Integral doubles and halves below 1e15 have few
 * enough digits that "%.20g" prints them exactly: those are written
 * without printf. */
static bool
put_double(aspen_ejson_text_t *t, double d)
{
   if (!isfinite(d)) {
      return false; /* {"$numberDouble": ...}: libbson's */
   }
   if (fabs(d) < 1e15) {
      double twice = d * 2;
      if (twice == floor(twice)) {
         int64_t i = (int64_t) d; /* toward zero */
         bool half = (double) i != d;
         if (signbit(d) && i == 0) {
            T_LIT(t, "-"); /* -0.0 and -0.5 */
         }
         put_int(t, i);
         if (half) {
            T_LIT(t, ".5");
         } else {
            T_LIT(t, ".0");
         }
         return true;
      }
   }
   char buf[40];
   int n = snprintf(buf, sizeof buf, "%.20g", d);
   if (n <= 0 || (size_t) n >= sizeof buf) {
      return false;
   }
   t_put(t, buf, (size_t) n);
   if (strspn(buf, "0123456789-") == (size_t) n) {
      T_LIT(t, ".0");
   }
   return true;
}

static void
put_2(char *p, int v)
{
   p[0] = (char) ('0' + v / 10);
   p[1] = (char) ('0' + v % 10);
}

/* libbson's relaxed Date from 1970 to 9999: { "$date" : "%Y-%m-%dT%H:%M:%S"
 * and, when the milliseconds are not 0, "." and them in three digits, then
 * "Z" }. Earlier and later dates are declined. */
static bool
put_date(aspen_ejson_text_t *t, int64_t ms)
{
   if (ms < 0 || ms >= 253402300800000) {
      return false;
   }
   int64_t days = ms / 86400000;
   int sod = (int) ((ms / 1000) % 86400);
   int msec = (int) (ms % 1000);
   /* The civil date of a day count (days since 1970-01-01), by eras of
    * 400 years. */
   int64_t z = days + 719468;
   int64_t era = z / 146097;
   int64_t doe = z - era * 146097;
   int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
   int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
   int64_t mp = (5 * doy + 2) / 153;
   int d = (int) (doy - (153 * mp + 2) / 5 + 1);
   int m = (int) (mp < 10 ? mp + 3 : mp - 9);
   int y = (int) (yoe + era * 400 + (m <= 2));
   char buf[40];
   char *p = buf;
   memcpy(p, "{ \"$date\" : \"", 13);
   p += 13;
   put_2(p, y / 100);
   put_2(p + 2, y % 100);
   p[4] = '-';
   put_2(p + 5, m);
   p[7] = '-';
   put_2(p + 8, d);
   p[10] = 'T';
   put_2(p + 11, sod / 3600);
   p[13] = ':';
   put_2(p + 14, sod / 60 % 60);
   p[16] = ':';
   put_2(p + 17, sod % 60);
   p += 19;
   if (msec) {
      *p++ = '.';
      *p++ = (char) ('0' + msec / 100);
      *p++ = (char) ('0' + msec / 10 % 10);
      *p++ = (char) ('0' + msec % 10);
   }
   memcpy(p, "Z\" }", 4);
   p += 4;
   t_put(t, buf, (size_t) (p - buf));
   return true;
}

static bool
put_doc(aspen_ejson_text_t *t, const uint8_t *data, uint32_t len, bool array,
        bool top, int depth)
{
   bson_iter_t it;
   if (depth > MAX_DEPTH || !bson_iter_init_from_data(&it, data, len)) {
      return false;
   }
   if (array) {
      T_LIT(t, "[ ");
   } else {
      T_LIT(t, "{ ");
   }
   bool first = true;
   while (aspen_bsonw_iter_next(&it)) {
      if (!first) {
         T_LIT(t, ", ");
      }
      first = false;
      if (!array) {
         if (!put_str(t, bson_iter_key(&it), aspen_bsonw_key_len(&it))) {
            return false;
         }
         T_LIT(t, " : ");
      }
      switch (bson_iter_type(&it)) {
      case BSON_TYPE_UTF8: {
         uint32_t n;
         const char *s = bson_iter_utf8(&it, &n);
         if (!put_str(t, s, n)) {
            return false;
         }
         break;
      }
      case BSON_TYPE_INT32:
         put_int(t, bson_iter_int32(&it));
         break;
      case BSON_TYPE_INT64:
         put_int(t, bson_iter_int64(&it));
         break;
      case BSON_TYPE_DOUBLE:
         if (!put_double(t, bson_iter_double(&it))) {
            return false;
         }
         break;
      case BSON_TYPE_BOOL:
         if (bson_iter_bool(&it)) {
            T_LIT(t, "true");
         } else {
            T_LIT(t, "false");
         }
         break;
      case BSON_TYPE_NULL:
         T_LIT(t, "null");
         break;
      case BSON_TYPE_DATE_TIME:
         if (!put_date(t, bson_iter_date_time(&it))) {
            return false;
         }
         break;
      case BSON_TYPE_DOCUMENT:
      case BSON_TYPE_ARRAY: {
         uint32_t n;
         const uint8_t *sub;
         bool arr = BSON_ITER_HOLDS_ARRAY(&it);
         if (arr) {
            bson_iter_array(&it, &n, &sub);
         } else {
            bson_iter_document(&it, &n, &sub);
         }
         if (!put_doc(t, sub, n, arr, false, depth + 1)) {
            return false;
         }
         break;
      }
      default:
         return false; /* the other types' wrappers are libbson's */
      }
   }
   if (it.err_off) {
      return false; /* corrupt: libbson's writer gives up on it */
   }
   if (first && top) {
      T_LIT(t, "}");
   } else if (array) {
      T_LIT(t, " ]");
   } else {
      T_LIT(t, " }");
   }
   return true;
}

bool
aspen_ejson_write(const bson_t *doc, aspen_ejson_text_t *t)
{
   t->len = 0;
   if (!put_doc(t, bson_get_data(doc), doc->len, false, true, 0)) {
      t->len = 0;
      return false;
   }
   *t_reserve(t, 0) = '\0';
   return true;
}
