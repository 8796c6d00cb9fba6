/*
 * ejson.c - the plain-JSON fast path of Extended JSON (see ejson.h): a
 * recursive-descent reader straight into the BSON writer, and a writer of
 * libbson's relaxed layout ("{ "k" : v, ... }", "{  }" for an empty nested
 * document, "%.20g" doubles with ".0" for integral ones, ISO-8601 dates,
 * text escaped as bson_utf8_escape_for_json escapes it) that walks the BSON
 * bytes itself. Whatever either is not sure to do exactly as libbson does,
 * it declines.
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

/* The bytes of the eight in `x` (in memory order, little-endian) that a
 * string's text does not hold as they are, in JSON or in libbson's
 * escaping: below 0x20, 0x80 and up, '"' or '\\'. Nonzero if there is
 * one, and then its lowest set bit (0x80 in a byte) marks the first one
 * exactly (a borrow only ever flags bytes after a flagged one). */
static inline uint64_t
care_mask(uint64_t x)
{
   const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
   uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
   uint64_t zero_q = (q - ones) & ~q, zero_b = (b - ones) & ~b;
   uint64_t low = x - ones * 0x20; /* a borrow into the high bit */
   return (zero_q | zero_b | low | x) & high;
}

/* ---- reading ------------------------------------------------------------ */

typedef struct {
   const char *p;
   const char *end;
   aspen_bsonw_t *w;
   size_t key_room; /* bytes of the text at the key being read, 0 if not */
} rd_t;

/* Whitespace is at most ' ' (0x20): anything above it ends the run in one
 * comparison, the usual case (no space, or one already stepped over). */
static inline void
skip_ws(rd_t *r)
{
   while (r->p < r->end && (unsigned char) *r->p <= ' ' &&
          (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t')) {
      r->p++;
   }
}

/* Whether c is text a string holds as it is: 0x20 to 0x7f but '"' and
 * '\\'. */
static inline bool
is_plain(unsigned char c)
{
   return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/* A string of ASCII text without escapes (is_plain); r->p is on its
 * quote. Eight bytes at a time while eight remain, the first that is not
 * plain text found from care_mask's lowest bit (a key or a short value
 * ends in the first word or two), then the last few one at a time. */
static inline bool
read_str(rd_t *r, const char **s, size_t *n)
{
   const char *q = r->p + 1;
   for (;;) {
      if (r->end - q < 8) {
         while (q < r->end && is_plain((unsigned char) *q)) {
            q++;
         }
         break;
      }
      uint64_t x;
      memcpy(&x, q, 8);
      uint64_t m = care_mask(x);
      if (m) {
         q += __builtin_ctzll(m) >> 3; /* on the byte to look at */
         break;
      }
      q += 8;
   }
   if (q == r->end || *q != '"') {
      return false; /* an escape, a control character, UTF-8, the end */
   }
   *s = r->p + 1;
   *n = (size_t) (q - *s);
   r->p = q + 1;
   return true;
}

/* An element's type byte and key, with room for `n` bytes of value after
 * them; returns where the value goes (w->len already past it). */
static inline uint8_t *
w_elem(const rd_t *r, bson_type_t type, const char *key, size_t klen,
       size_t n)
{
   aspen_bsonw_t *w = r->w;
   /* A key of up to 16 bytes that has 16 bytes of the text being read at
    * it (its closing quote and what follows) is copied as 16, no memcpy
    * call: the bytes past its end are overwritten by the value or left
    * past the writer's length. An array's index keys are not in the
    * text (r->key_room 0). */
   uint8_t *p = aspen_bsonw_reserve(w, klen + 2 + n + 16);
   p[0] = (uint8_t) type;
   if (klen <= 16 && r->key_room >= 16) {
      memcpy(p + 1, key, 16);
   } else {
      memcpy(p + 1, key, klen);
   }
   p[1 + klen] = 0;
   w->len += klen + 2 + n;
   return p + klen + 2;
}

static inline void
w_u64(uint8_t *p, uint64_t u)
{
   aspen_bytes_put_le32(p, (uint32_t) u);
   aspen_bytes_put_le32(p + 4, (uint32_t) (u >> 32));
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
      double d;
      if (nd + nf <= 15) {
         uint64_t m = val; /* < 10^15 < 2^53: exact as a double */
         for (const char *q = frac; q < r->p; q++) {
            m = m * 10 + (uint64_t) (*q - '0');
         }
         d = (double) m / pow10_exact[nf];
         d = neg ? -d : d;
      } else {
         memcpy(buf, start, n);
         buf[n] = '\0';
         d = strtod(buf, NULL);
      }
      uint64_t u;
      memcpy(&u, &d, 8);
      w_u64(w_elem(r, BSON_TYPE_DOUBLE, key, klen, 8), u);
      return true;
   }
   if (!at_delim(r)) {
      return false;
   }
   int64_t i = neg ? -(int64_t) val : (int64_t) val;
   if (val <= INT32_MAX || (neg && val <= (uint64_t) INT32_MAX + 1)) {
      aspen_bytes_put_le32(w_elem(r, BSON_TYPE_INT32, key, klen, 4),
                           (uint32_t) (int32_t) i);
   } else {
      w_u64(w_elem(r, BSON_TYPE_INT64, key, klen, 8), (uint64_t) i);
   }
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
      r->key_room = (size_t) (r->end - key);
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
      r->key_room = 0;
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
      uint8_t *p = w_elem(r, BSON_TYPE_UTF8, key, klen, n + 5);
      aspen_bytes_put_le32(p, (uint32_t) n + 1);
      memcpy(p + 4, s, n);
      p[4 + n] = 0;
      return true;
   }
   case 't':
   case 'f': {
      bool t = *r->p == 't';
      if (!read_literal(r, t ? "true" : "false", t ? 4 : 5)) {
         return false;
      }
      *w_elem(r, BSON_TYPE_BOOL, key, klen, 1) = t;
      return true;
   }
   case 'n': {
      if (!read_literal(r, "null", 4)) {
         return false;
      }
      w_elem(r, BSON_TYPE_NULL, key, klen, 0);
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

/* What libbson's bson_utf8_escape_for_json makes of each byte: 0 copied as
 * it is; a character for the two-character escapes ('\' and it); 'u' for
 * the other control characters, written \u00XX with lowercase hex; 'h'
 * for the first byte of a multi-byte UTF-8 sequence, copied once checked. */
static const char str_esc[256] = {
   ['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', ['\f'] = 'f', ['\r'] = 'r',
   [0] = 'u', [1] = 'u', [2] = 'u', [3] = 'u', [4] = 'u', [5] = 'u',
   [6] = 'u', [7] = 'u', [11] = 'u', [14] = 'u', [15] = 'u', [16] = 'u',
   [17] = 'u', [18] = 'u', [19] = 'u', [20] = 'u', [21] = 'u', [22] = 'u',
   [23] = 'u', [24] = 'u', [25] = 'u', [26] = 'u', [27] = 'u', [28] = 'u',
   [29] = 'u', [30] = 'u', [31] = 'u', ['"'] = '"', ['\\'] = '\\',
#define H8(b) [b] = 'h', [b + 1] = 'h', [b + 2] = 'h', [b + 3] = 'h', \
              [b + 4] = 'h', [b + 5] = 'h', [b + 6] = 'h', [b + 7] = 'h'
   H8(0x80), H8(0x88), H8(0x90), H8(0x98), H8(0xa0), H8(0xa8), H8(0xb0),
   H8(0xb8), H8(0xc0), H8(0xc8), H8(0xd0), H8(0xd8), H8(0xe0), H8(0xe8),
   H8(0xf0), H8(0xf8),
#undef H8
};

/* The length of the well-formed UTF-8 sequence at s[0 .. n) (s[0] >=
 * 0x80): 2 to 4, or 0 for anything else (a stray continuation byte, an
 * overlong form, a surrogate, past U+10FFFF, cut short). */
static size_t
utf8_seq_len(const uint8_t *s, size_t n)
{
   uint8_t c = s[0];
   if (c >= 0xc2 && c <= 0xdf) {
      return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
   }
   if (c >= 0xe0 && c <= 0xef) {
      uint8_t lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
      return n >= 3 && s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80
                ? 3
                : 0;
   }
   if (c >= 0xf0 && c <= 0xf4) {
      uint8_t lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
      return n >= 4 && s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 &&
                   (s[3] & 0xc0) == 0x80
                ? 4
                : 0;
   }
   return 0;
}

/* The bits of the first `n` bytes (n <= 8) of a word, in memory order. */
static inline uint64_t
below(size_t n)
{
   return n >= 8 ? ~0ull : (1ull << (8 * n)) - 1;
}

/* A quoted string as libbson escapes it, written at `q` (6 * n + 2 bytes
 * of room, and 18 at least): runs of plain bytes copied eight at a time, the escapes from
 * str_esc, well-formed UTF-8 as it is; returns the end, or NULL (declined)
 * for bytes that are not well-formed UTF-8, which libbson's writer
 * handles in its own way. Text of up to 16 bytes that has 16 readable
 * bytes at `str` (`room`) is checked as two words at once: a key or a
 * short value is one step. */
static char *
put_str_at(char *q, const char *str, size_t n, size_t room)
{
   static const char hex[] = "0123456789abcdef";
   const uint8_t *s = (const uint8_t *) str;
   size_t i = 0;
   *q++ = '"';
   if (n <= 16 && room >= 16) {
      uint64_t x0, x1;
      memcpy(&x0, s, 8);
      memcpy(&x1, s + 8, 8);
      uint64_t m = n >= 8 ? care_mask(x0) | (care_mask(x1) & below(n - 8))
                          : care_mask(x0) & below(n);
      if (!m) {
         memcpy(q, &x0, 8);
         memcpy(q + 8, &x1, 8);
         q += n;
         *q++ = '"';
         return q;
      }
   }
   while (i < n) {
      while (n - i >= 8) {
         uint64_t x;
         memcpy(&x, s + i, 8);
         if (care_mask(x)) {
            break;
         }
         memcpy(q, &x, 8);
         q += 8;
         i += 8;
      }
      uint8_t c = 0;
      while (i < n && !str_esc[c = s[i]]) {
         *q++ = (char) c;
         i++;
      }
      if (i == n) {
         break;
      }
      char e = str_esc[c];
      if (e == 'h') {
         size_t l = utf8_seq_len(s + i, n - i);
         if (!l) {
            return NULL;
         }
         memcpy(q, s + i, l);
         q += l;
         i += l;
         continue;
      }
      *q++ = '\\';
      if (e == 'u') {
         memcpy(q, "u00", 3);
         q[3] = hex[c >> 4];
         q[4] = hex[c & 15];
         q += 5;
      } else {
         *q++ = e;
      }
      i++;
   }
   *q++ = '"';
   return q;
}

/* libbson's relaxed double: "%.20g", with ".0" added when that printed
 * only digits and '-', written at `q` (48 bytes of room); NULL when
 * declined. Integral doubles and halves below 1e15 have few enough digits
 * that "%.20g" prints them exactly: those are written without printf. */
static char *
put_double_at(char *q, double d)
{
   if (!isfinite(d)) {
      return NULL; /* {"$numberDouble": ...}: libbson's */
   }
   if (fabs(d) < 1e15) {
      double twice = d * 2;
      if (twice == floor(twice)) {
         int64_t i = (int64_t) d; /* toward zero */
         bool half = (double) i != d;
         if (signbit(d) && i == 0) {
            *q++ = '-'; /* -0.0 and -0.5 */
         }
         q += aspen_bytes_dec_int64(i, q);
         memcpy(q, half ? ".5" : ".0", 2);
         return q + 2;
      }
   }
   char buf[40];
   int n = snprintf(buf, sizeof buf, "%.20g", d);
   if (n <= 0 || (size_t) n >= sizeof buf) {
      return NULL;
   }
   memcpy(q, buf, (size_t) n);
   q += n;
   if (strspn(buf, "0123456789-") == (size_t) n) {
      memcpy(q, ".0", 2);
      q += 2;
   }
   return q;
}

static void
put_2(char *p, int v)
{
   p[0] = (char) ('0' + v / 10);
   p[1] = (char) ('0' + v % 10);
}

/* libbson's relaxed Date from 1970 to 9999: { "$date" : "%Y-%m-%dT%H:%M:%S"
 * and, when the milliseconds are not 0, "." and them in three digits, then
 * "Z" }, written at `q` (40 bytes of room). Earlier and later dates are
 * declined (NULL). */
static char *
put_date_at(char *q, int64_t ms)
{
   if (ms < 0 || ms >= 253402300800000) {
      return NULL;
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
   char *p = q;
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
   return p + 4;
}

/* libbson's relaxed ObjectId: { "$oid" : "<24 lowercase hex digits>" },
 * written at `q` (39 bytes of room). */
static char *
put_oid_at(char *q, const uint8_t *oid)
{
   static const char hex[] = "0123456789abcdef";
   memcpy(q, "{ \"$oid\" : \"", 12);
   for (int i = 0; i < 12; i++) {
      q[12 + 2 * i] = hex[oid[i] >> 4];
      q[13 + 2 * i] = hex[oid[i] & 15];
   }
   memcpy(q + 36, "\" }", 3);
   return q + 39;
}

/* Room enough for an element's separator, its key's quoted text (6 bytes
 * a byte at most), " : " and any value of a fixed size written in place
 * (a date's 40 bytes, a double's printf, an ObjectId). */
#define ELEM_ROOM(klen) (6 * (klen) + 64)

/* Writes the document or array data[0 .. len) by walking its bytes, each
 * element checked against the bounds as libbson's iterator checks them:
 * anything malformed, or of a type not written here, is declined (libbson's
 * writer then gives its own text, or none, as always). Each element takes
 * one reservation for its separator, key and a fixed-size value, written
 * in place; a key's end and whether its text is plain come from the same
 * two words when 16 bytes of the document follow it. */
static bool
put_doc(aspen_ejson_text_t *t, const uint8_t *data, uint32_t len, bool array,
        bool top, int depth)
{
   if (depth > MAX_DEPTH || len < 5 || aspen_bytes_get_le32(data) != len ||
       data[len - 1] != 0) {
      return false;
   }
   const uint8_t *p = data + 4;
   const uint8_t *end = data + len - 1; /* the document's final NUL */
   char *o = t_reserve(t, 2);
   o[0] = array ? '[' : '{';
   o[1] = ' ';
   t->len += 2;
   bool first = true;
   while (p < end) {
      uint8_t type = *p++;
      const uint8_t *key = p;
      /* stops at the final NUL at the latest */
      size_t klen = aspen_bsonw_raw_key_len(key, (size_t) (end - key) + 1);
      p += klen;
      if (p == end) {
         return false; /* a key without a value */
      }
      p++; /* the value */
      size_t left = (size_t) (end - p);
      char *q = t_reserve(t, ELEM_ROOM(klen));
      if (!first) {
         memcpy(q, ", ", 2);
         q += 2;
      }
      first = false;
      if (!array) {
         q = put_str_at(q, (const char *) key, klen, (size_t) (end - key) + 1);
         if (!q) {
            return false;
         }
         memcpy(q, " : ", 3);
         q += 3;
      }
      uint32_t n;
      switch (type) {
      case BSON_TYPE_UTF8:
         if (left < 4) {
            return false;
         }
         n = aspen_bytes_get_le32(p);
         if (n == 0 || n > left - 4 || p[4 + n - 1] != 0) {
            return false;
         }
         t->len = (size_t) (q - t->data);
         q = t_reserve(t, 6 * (size_t) n + 18); /* 18: put_str_at's words */
         /* the text's room: up to the document's final NUL */
         q = put_str_at(q, (const char *) p + 4, n - 1, left - 4 + 1);
         if (!q) {
            return false;
         }
         p += 4 + n;
         break;
      case BSON_TYPE_INT32:
         if (left < 4) {
            return false;
         }
         q += aspen_bytes_dec_int64((int32_t) aspen_bytes_get_le32(p), q);
         p += 4;
         break;
      case BSON_TYPE_INT64:
      case BSON_TYPE_DATE_TIME:
      case BSON_TYPE_DOUBLE: {
         if (left < 8) {
            return false;
         }
         uint64_t u = aspen_bytes_get_le64(p);
         p += 8;
         if (type == BSON_TYPE_INT64) {
            q += aspen_bytes_dec_int64((int64_t) u, q);
         } else if (type == BSON_TYPE_DATE_TIME) {
            q = put_date_at(q, (int64_t) u);
         } else {
            double d;
            memcpy(&d, &u, 8);
            q = put_double_at(q, d);
         }
         if (!q) {
            return false;
         }
         break;
      }
      case BSON_TYPE_BOOL:
         if (left < 1 || *p > 1) {
            return false;
         }
         if (*p) {
            memcpy(q, "true", 4);
            q += 4;
         } else {
            memcpy(q, "false", 5);
            q += 5;
         }
         p++;
         break;
      case BSON_TYPE_NULL:
         memcpy(q, "null", 4);
         q += 4;
         break;
      case BSON_TYPE_OID:
         if (left < 12) {
            return false;
         }
         q = put_oid_at(q, p);
         p += 12;
         break;
      case BSON_TYPE_DOCUMENT:
      case BSON_TYPE_ARRAY:
         if (left < 5) {
            return false;
         }
         n = aspen_bytes_get_le32(p);
         t->len = (size_t) (q - t->data);
         if (n > left ||
             !put_doc(t, p, n, type == BSON_TYPE_ARRAY, false, depth + 1)) {
            return false;
         }
         p += n;
         continue; /* t->len is past it */
      default:
         return false; /* the other types' wrappers are libbson's */
      }
      t->len = (size_t) (q - t->data);
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
