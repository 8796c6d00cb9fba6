/*
 * expr_string.c - string expression operators: $concat, $substr*, $toLower/
 * $toUpper (ASCII only, as MongoDB), $strLen*, $split, $trim family,
 * $indexOf*, $strcasecmp, $replaceOne/$replaceAll, $binarySize and the
 * regular-expression operators ($regexMatch, $regexFind, $regexFindAll),
 * which use PCRE2 in UTF mode like mongod. Constant patterns are compiled
 * once at parse time; a compiled pattern is read-only, so evaluations on
 * several threads may share it.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "lang/expr_args.h"

#include <inttypes.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

size_t
aspen__utf8_cp_len(unsigned char lead)
{
   if (lead < 0x80) {
      return 1;
   }
   if ((lead & 0xe0) == 0xc0) {
      return 2;
   }
   if ((lead & 0xf0) == 0xe0) {
      return 3;
   }
   if ((lead & 0xf8) == 0xf0) {
      return 4;
   }
   return 1; /* continuation or invalid byte: step over it */
}

static bool
is_cont(unsigned char c)
{
   return (c & 0xc0) == 0x80;
}

static size_t
cp_count(const char *s, size_t len)
{
   size_t n = 0;
   for (size_t i = 0; i < len; i++) {
      if (!is_cont((unsigned char) s[i])) {
         n++;
      }
   }
   return n;
}

/* A growable string that ends up as an owned value. It starts on the
 * heap ({0}) or, with `on_stack`, in a caller's buffer (sb_init_stack),
 * moving to the heap when it outgrows it. */
typedef struct {
   char *p;
   size_t len, cap;
   bool on_stack;
} sbuf_t;

static void
sb_init_stack(sbuf_t *b, char *buf, size_t cap)
{
   b->p = buf;
   b->len = 0;
   b->cap = cap;
   b->on_stack = true;
   buf[0] = '\0';
}

static void
sb_free(sbuf_t *b)
{
   if (!b->on_stack) {
      bson_free(b->p);
   }
}

static void
sb_add(sbuf_t *b, const char *s, size_t n)
{
   if (b->len + n + 1 > b->cap) {
      size_t cap = b->cap ? b->cap : 64;
      while (cap < b->len + n + 1) {
         cap *= 2;
      }
      if (b->on_stack) {
         char *p = bson_malloc(cap);
         memcpy(p, b->p, b->len);
         b->p = p;
         b->on_stack = false;
      } else {
         b->p = bson_realloc(b->p, cap);
      }
      b->cap = cap;
   }
   if (n) {
      memcpy(b->p + b->len, s, n);
   }
   b->len += n;
   b->p[b->len] = '\0';
}

static aspen_value_t
sb_finish(sbuf_t *b)
{
   if (!b->p) {
      sb_add(b, "", 0);
   }
   return aspen__value_utf8_take(b->p, (uint32_t) b->len);
}

/* ------------------------------------------------------------------------ */
/* $concat                                                                   */
/* ------------------------------------------------------------------------ */

static const aspen__args_t concat_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_STRING, .flags = ASPEN__ARG_NULL, .code = 16702,
            .msg = "$concat only supports strings, not {type}"}}};

/* Up to this many arguments, $concat evaluates them all first and writes
 * the result once, straight into the caller's scratch when it has room. */
#define CONCAT_DIRECT 16

/* The result is built on the stack and, when the caller gave a scratch
 * with room, left there (aspen__value_str_make): no heap string. */
static bool
concat_general(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   char small[256];
   sbuf_t b;
   sb_init_stack(&b, small, sizeof small);
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      int r = aspen__args_eval_arg(e, st, &concat_args, i, &v, out);
      if (r <= 0) {
         sb_free(&b);
         return r == 0;
      }
      sb_add(&b, v.v.value.v_utf8.str, v.v.value.v_utf8.len);
      aspen_value_destroy(&v);
      if (!aspen__eval_size_ok(st, b.len, true)) {
         sb_free(&b);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
   }
   if (!b.on_stack) {
      *out = sb_finish(&b);
      return true;
   }
   *out = aspen__value_str_make(st, b.p, b.len);
   return true;
}

static void
concat_release(aspen_value_t *v, uint32_t n)
{
   for (uint32_t i = 0; i < n; i++) {
      aspen_value_destroy(&v[i]);
   }
}

/* The same evaluations, checks and errors in the same order as
 * concat_general (the running length is checked after each argument), but
 * the strings are copied once, into the scratch when there is room (the
 * arguments' own short strings may sit in it too: the result goes after
 * them). */
static ASPEN__DECL_EVAL(eval_concat)
{
   aspen_expr_scratch_t *sc = st->ctx->scratch;
   uint32_t n = e->n_args;
   if (!sc || n > CONCAT_DIRECT) {
      return concat_general(e, st, out);
   }
   aspen_value_t v[CONCAT_DIRECT];
   size_t total = 0;
   for (uint32_t i = 0; i < n; i++) {
      int r = aspen__args_eval_arg(e, st, &concat_args, i, &v[i], out);
      if (r <= 0) {
         concat_release(v, i);
         return r == 0;
      }
      total += v[i].v.value.v_utf8.len;
      if (!aspen__eval_size_ok(st, total, true)) {
         concat_release(v, i + 1);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
   }
   char *p;
   bool in_scratch = total < sc->cap - sc->used;
   if (in_scratch) {
      p = sc->buf + sc->used;
      sc->used += total + 1;
   } else {
      p = bson_malloc(total + 1);
   }
   size_t len = 0;
   for (uint32_t i = 0; i < n; i++) {
      uint32_t l = v[i].v.value.v_utf8.len;
      if (l) {
         memcpy(p + len, v[i].v.value.v_utf8.str, l);
         len += l;
      }
   }
   p[len] = '\0';
   concat_release(v, n);
   if (!in_scratch) {
      *out = aspen__value_utf8_take(p, (uint32_t) len);
      return true;
   }
   *out = aspen__value_str_view(p, (uint32_t) len);
   out->owned = true;
   out->scratch = true;
   return true;
}

/* eval_concat when every argument is a leaf holding a string or a
 * {$toString: leaf} of an int or a long: the pieces (the integers' digits
 * written once, as compute_to_type writes them) copied straight into the
 * scratch, counting the same steps and bytes made as the general path
 * (each $toString's result is charged there). Anything else - a piece
 * that is no string or integer, no room, a result at the string limit -
 * is eval_concat's, which gives the same result or error. */
static ASPEN__DECL_EVAL(eval_concat_leaves)
{
   aspen_expr_scratch_t *sc = st->ctx->scratch;
   uint32_t n = e->n_args;
   if (!sc || n > CONCAT_DIRECT) {
      return eval_concat(e, st, out);
   }
   const char *str[CONCAT_DIRECT];
   uint32_t len[CONCAT_DIRECT];
   char digits[CONCAT_DIRECT][24];
   uint32_t steps = n;
   uint64_t total = 0, made = 0;
   for (uint32_t i = 0; i < n; i++) {
      const aspen_expr_t *a = e->args[i];
      const aspen_value_t *v;
      int64_t x;
      if (!a) {
         return eval_concat(e, st, out);
      }
      if ((v = aspen__leaf_at(a, st)) != NULL) {
         if (v->v.value_type != BSON_TYPE_UTF8) {
            return eval_concat(e, st, out);
         }
         str[i] = v->v.value.v_utf8.str;
         len[i] = v->v.value.v_utf8.len;
      } else if (aspen__to_string_int_leaf(a, st, &x)) {
         str[i] = digits[i];
         len[i] = (uint32_t) aspen_bytes_dec_int64(x, digits[i]);
         made += len[i];
         steps++;
      } else {
         return eval_concat(e, st, out);
      }
      total += len[i];
   }
   if (total >= ASPEN__MAX_STRING_LEN || total >= sc->cap - sc->used ||
       st->made + made > ASPEN__EVAL_MAX_MADE || !aspen__steps_skip(st, steps)) {
      return eval_concat(e, st, out);
   }
   st->made += made;
   char *p = sc->buf + sc->used;
   sc->used += total + 1;
   size_t at = 0;
   for (uint32_t i = 0; i < n; i++) {
      if (len[i] <= 16) {
         aspen_bsonw_copy_short((uint8_t *) p + at, str[i], len[i]);
      } else {
         memcpy(p + at, str[i], len[i]);
      }
      at += len[i];
   }
   p[at] = '\0';
   *out = aspen__value_str_view(p, (uint32_t) at);
   out->owned = true;
   out->scratch = true;
   return true;
}

/* eval_concat_leaves written straight into the output, in one pass: the
 * element opened, each piece copied (an integer's digits written in
 * place) as it comes, then the length and the NUL put in. The steps and
 * bytes made are the general path's - one per argument and per
 * $toString, the $toStrings' results and then the whole result
 * (aspen__eval_charge) - so a result at either limit is eval's, with its
 * error. Anything else drops what it wrote and is aspen__write_eval's. */
static ASPEN__DECL_WRITE(write_concat_leaves)
{
   uint32_t n = e->n_args, steps = n;
   size_t start = w->len;
   aspen_bsonw_elem(w, BSON_TYPE_UTF8, key, key_len, 4);
   size_t body = w->len;
   uint64_t made = 0;
   for (uint32_t i = 0; i < n; i++) {
      const aspen_expr_t *a = e->args[i];
      const aspen_value_t *v;
      int64_t x;
      if (!a) {
         goto general;
      }
      if ((v = aspen__leaf_at(a, st)) != NULL) {
         if (v->v.value_type != BSON_TYPE_UTF8) {
            goto general;
         }
         uint32_t l = v->v.value.v_utf8.len;
         if (w->len - body + l >= ASPEN__MAX_STRING_LEN) {
            goto general; /* (past the limit: grow the writer no more) */
         }
         uint8_t *d = aspen_bsonw_reserve(w, l);
         if (l <= 16) {
            aspen_bsonw_copy_short(d, v->v.value.v_utf8.str, l);
         } else {
            memcpy(d, v->v.value.v_utf8.str, l);
         }
         w->len += l;
      } else if (aspen__to_string_int_leaf(a, st, &x)) {
         /* (its digits and NUL: at most 21 bytes) */
         char *d = (char *) aspen_bsonw_reserve(w, 24);
         size_t l = aspen_bytes_dec_int64(x, d);
         w->len += l;
         made += l;
         steps++;
      } else {
         goto general;
      }
   }
   size_t total = w->len - body;
   if (total >= ASPEN__MAX_STRING_LEN ||
       st->made + made + total > ASPEN__EVAL_MAX_MADE ||
       !aspen__steps_skip(st, steps)) {
      goto general;
   }
   st->made += made + total;
   *aspen_bsonw_reserve(w, 1) = 0;
   w->len++;
   aspen_bytes_put_le32(w->data + body - 4, (uint32_t) total + 1);
   return true;
general:
   w->len = start;
   return aspen__write_eval(e, st, w, key, key_len);
}

static ASPEN__DECL_PARSE(parse_concat)
{
   return aspen__parse_nary_leaves(ps, op, arg, e, eval_concat_leaves,
                                   write_concat_leaves);
}

/* ------------------------------------------------------------------------ */
/* $substrBytes / $substr / $substrCP                                        */
/* ------------------------------------------------------------------------ */

/* Value::coerceToString's argument: a string, or what becomes one. */
#define TO_STRING_ARG                                                          \
   {.types = ASPEN__T_STRINGABLE, .flags = ASPEN__ARG_TO_STRING,               \
    .code = 16007, .msg = "can't convert from BSON type {type} to String"}

static const aspen__args_t substr_bytes_args = {
   .n = 3, .together = 3,
   .arg = {TO_STRING_ARG,
           {.types = ASPEN__T_NUMBER, .code = 16034,
            .msg = "$substrBytes:  starting index must be a numeric type (is "
                   "BSON type {type})"},
           {.types = ASPEN__T_NUMBER, .code = 16035,
            .msg = "$substrBytes:  length must be a numeric type (is BSON "
                   "type {type})"}}};

static ASPEN__DECL_COMPUTE(compute_substr_bytes)
{
   (void) e;
   const char *name = "$substrBytes";
   const char *s = v[0].v.value.v_utf8.str;
   size_t len = v[0].v.value.v_utf8.len;
   int64_t lower = aspen__num_to_int64(&v[1]);
   if (lower < 0) {
      return aspen__fail(st, 50752,
                         "%s:  starting index must be non-negative (got: "
                         "%" PRId64 ")",
                         name, lower);
   }
   int64_t slen = aspen__num_to_int64(&v[2]);
   size_t length = slen < 0 || (uint64_t) slen > len ? len : (size_t) slen;
   if ((size_t) lower < len && is_cont((unsigned char) s[lower])) {
      return aspen__fail(st, 28656,
                         "%s:  Invalid range, starting index is a UTF-8 "
                         "continuation byte.",
                         name);
   }
   if ((size_t) lower + length < len &&
       is_cont((unsigned char) s[(size_t) lower + length])) {
      return aspen__fail(st, 28657,
                         "%s:  Invalid range, ending index is in the middle "
                         "of a UTF-8 character.",
                         name);
   }
   if ((size_t) lower >= len) {
      *out = aspen_value_utf8("", 0);
   } else {
      size_t avail = len - (size_t) lower;
      *out = aspen_value_utf8(s + lower, length < avail ? length : avail);
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_substr_bytes, substr_bytes_args, compute_substr_bytes)

static const aspen__args_t substr_cp_args = {
   .n = 3, .together = 3,
   .arg = {TO_STRING_ARG,
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_INT32,
            .code = 34450,
            .msg = "$substrCP: starting index must be a numeric type (is BSON "
                   "type {type})",
            .int_code = 34451,
            .int_msg = "$substrCP: starting index cannot be represented as a "
                       "32-bit integral value: {num}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_INT32,
            .code = 34452,
            .msg = "$substrCP: length must be a numeric type (is BSON type "
                   "{type})",
            .int_code = 34453,
            .int_msg = "$substrCP: length cannot be represented as a 32-bit "
                       "integral value: {num}"}}};

static ASPEN__DECL_COMPUTE(compute_substr_cp)
{
   (void) e;
   const char *name = "$substrCP";
   const char *s = v[0].v.value.v_utf8.str;
   size_t len = v[0].v.value.v_utf8.len;
   int32_t start = (int32_t) aspen__arg_int(&v[1]);
   int32_t count = (int32_t) aspen__arg_int(&v[2]);
   if (count < 0) {
      return aspen__fail(st, 34454, "%s: length must be a nonnegative integer.",
                         name);
   }
   if (start < 0) {
      return aspen__fail(st, 34455,
                         "%s: the starting index must be nonnegative integer.",
                         name);
   }
   size_t b0 = 0;
   for (int32_t i = 0; i < start; i++) {
      if (b0 >= len) {
         *out = aspen_value_utf8("", 0);
         return true;
      }
      if (is_cont((unsigned char) s[b0])) {
         return aspen__fail(st, 34456, "%s: invalid UTF-8 string", name);
      }
      b0 += aspen__utf8_cp_len((unsigned char) s[b0]);
   }
   size_t b1 = b0;
   for (int32_t i = 0; i < count && b1 < len; i++) {
      if (is_cont((unsigned char) s[b1])) {
         return aspen__fail(st, 34458, "%s: invalid UTF-8 string", name);
      }
      b1 += aspen__utf8_cp_len((unsigned char) s[b1]);
   }
   if (b0 > len) {
      b0 = len;
   }
   if (b1 > len) {
      b1 = len;
   }
   *out = aspen_value_utf8(s + b0, b1 - b0);
   return true;
}

ASPEN__ARGS_EVAL(eval_substr_cp, substr_cp_args, compute_substr_cp)

/* ------------------------------------------------------------------------ */
/* $toLower / $toUpper, $strLenBytes / $strLenCP, $strcasecmp               */
/* ------------------------------------------------------------------------ */

static const aspen__args_t to_string_args = {.n = 1, .arg = {TO_STRING_ARG}};

/* ASCII only, as mongod. */
static ASPEN__DECL_COMPUTE(compute_case)
{
   (void) st;
   /* A string made for the argument is this operator's to change. */
   *out = v[0].owned ? aspen__value_move(&v[0])
                     : aspen_value_utf8(v[0].v.value.v_utf8.str,
                                        v[0].v.value.v_utf8.len);
   char *p = out->v.value.v_utf8.str;
   size_t len = out->v.value.v_utf8.len;
   bool upper = e->op->sub != 0;
   for (size_t i = 0; i < len; i++) {
      char c = p[i];
      if (upper && c >= 'a' && c <= 'z') {
         p[i] = (char) (c - 'a' + 'A');
      } else if (!upper && c >= 'A' && c <= 'Z') {
         p[i] = (char) (c - 'A' + 'a');
      }
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_case, to_string_args, compute_case)

static const aspen__args_t strlen_bytes_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_STRING, .code = 34473,
            .msg = "$strLenBytes requires a string argument, found: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_strlen_bytes)
{
   (void) e;
   (void) st;
   *out = aspen_value_int32((int32_t) v[0].v.value.v_utf8.len);
   return true;
}

ASPEN__ARGS_EVAL(eval_strlen_bytes, strlen_bytes_args, compute_strlen_bytes)

static const aspen__args_t strlen_cp_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_STRING, .code = 34471,
            .msg = "$strLenCP requires a string argument, found: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_strlen_cp)
{
   (void) e;
   (void) st;
   *out = aspen_value_int32(
      (int32_t) cp_count(v[0].v.value.v_utf8.str, v[0].v.value.v_utf8.len));
   return true;
}

ASPEN__ARGS_EVAL(eval_strlen_cp, strlen_cp_args, compute_strlen_cp)

static const aspen__args_t strcasecmp_args = {
   .n = 2, .together = 2, .arg = {TO_STRING_ARG, TO_STRING_ARG}};

static ASPEN__DECL_COMPUTE(compute_strcasecmp)
{
   (void) e;
   (void) st;
   const char *sa = v[0].v.value.v_utf8.str, *sb = v[1].v.value.v_utf8.str;
   size_t la = v[0].v.value.v_utf8.len, lb = v[1].v.value.v_utf8.len;
   int c = 0;
   size_t n = la < lb ? la : lb;
   for (size_t i = 0; i < n && c == 0; i++) {
      unsigned char x = (unsigned char) sa[i], y = (unsigned char) sb[i];
      if (x >= 'a' && x <= 'z') {
         x = (unsigned char) (x - 'a' + 'A');
      }
      if (y >= 'a' && y <= 'z') {
         y = (unsigned char) (y - 'a' + 'A');
      }
      c = x < y ? -1 : x > y ? 1 : 0;
   }
   if (c == 0) {
      c = la < lb ? -1 : la > lb ? 1 : 0;
   }
   *out = aspen_value_int32(c);
   return true;
}

ASPEN__ARGS_EVAL(eval_strcasecmp, strcasecmp_args, compute_strcasecmp)

/* ------------------------------------------------------------------------ */
/* $split                                                                    */
/* ------------------------------------------------------------------------ */

static const char *
find_bytes(const char *hay, size_t hlen, const char *needle, size_t nlen)
{
   if (nlen == 0) {
      return hay;
   }
   if (nlen > hlen) {
      return NULL;
   }
   const char *last = hay + (hlen - nlen);
   for (const char *p = hay; p <= last; p++) {
      p = memchr(p, needle[0], (size_t) (last - p) + 1);
      if (!p) {
         return NULL;
      }
      if (memcmp(p, needle, nlen) == 0) {
         return p;
      }
   }
   return NULL;
}

static const aspen__args_t split_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_STRING, .flags = ASPEN__ARG_NULL, .code = 40085,
            .msg = "$split requires an expression that evaluates to a string "
                   "as a first argument, found: {type}"},
           {.types = ASPEN__T_STRING, .flags = ASPEN__ARG_NULL, .code = 40086,
            .msg = "$split requires an expression that evaluates to a string "
                   "as a second argument, found: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_split)
{
   (void) e;
   if (v[1].v.value.v_utf8.len == 0) {
      return aspen__fail(st, 40087, "$split requires a non-empty separator");
   }
   const char *s = v[0].v.value.v_utf8.str;
   size_t len = v[0].v.value.v_utf8.len;
   const char *sep = v[1].v.value.v_utf8.str;
   size_t slen = v[1].v.value.v_utf8.len;
   bson_t arr = BSON_INITIALIZER;
   uint32_t i = 0;
   const char *p = s, *end = s + len;
   for (;;) {
      const char *hit = find_bytes(p, (size_t) (end - p), sep, slen);
      const char *stop = hit ? hit : end;
      aspen_value_t piece = aspen__value_str_view(p, (uint32_t) (stop - p));
      aspen__array_append(&arr, i++, &piece);
      if (!aspen__eval_size_ok(st, arr.len, false)) {
         bson_destroy(&arr);
         return false;
      }
      if (!hit) {
         break;
      }
      p = hit + slen;
   }
   *out = aspen__array_finish(&arr);
   return true;
}

ASPEN__ARGS_EVAL(eval_split, split_args, compute_split)

/* ------------------------------------------------------------------------ */
/* $trim / $ltrim / $rtrim (sub: 0 both, 1 left, 2 right)                    */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t trim_names[] = {
   {"input", 50695, "{op} requires an 'input' field"},
   {"chars", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t trim_spec = {
   trim_names, 50696,
   "{op} only supports an object as an argument, found {type}", 50694,
   "{op} found an unknown argument: {key}"};

static ASPEN__DECL_PARSE(parse_trim)
{
   return aspen__parse_named(ps, op, arg, e, &trim_spec);
}

/* Code points trimmed by default (mongod's list). */
static const char *const default_trim[] = {
   "\0",           " ",            "\t",           "\n",
   "\v",           "\f",           "\r",           "\xc2\xa0",
   "\xe1\x9a\x80", "\xe2\x80\x80", "\xe2\x80\x81", "\xe2\x80\x82",
   "\xe2\x80\x83", "\xe2\x80\x84", "\xe2\x80\x85", "\xe2\x80\x86",
   "\xe2\x80\x87", "\xe2\x80\x88", "\xe2\x80\x89", "\xe2\x80\x8a",
};

typedef struct {
   const char *p;
   size_t len;
} cp_t;

static size_t
match_any_left(const char *s, size_t len, const cp_t *cps, size_t n)
{
   for (size_t k = 0; k < n; k++) {
      if (cps[k].len <= len && memcmp(s, cps[k].p, cps[k].len) == 0) {
         return cps[k].len;
      }
   }
   return 0;
}

static size_t
match_any_right(const char *s, size_t len, const cp_t *cps, size_t n)
{
   for (size_t k = 0; k < n; k++) {
      if (cps[k].len <= len &&
          memcmp(s + len - cps[k].len, cps[k].p, cps[k].len) == 0) {
         return cps[k].len;
      }
   }
   return 0;
}

static const aspen__args_t trim_args = {
   .n = 2,
   .arg = {{.types = ASPEN__T_STRING, .flags = ASPEN__ARG_NULL, .code = 50699,
            .msg = "{op} requires its input to be a string, got {value} (of "
                   "type {type}) instead."},
           {.types = ASPEN__T_STRING, .flags = ASPEN__ARG_NULL, .code = 50700,
            .msg = "{op} requires 'chars' to be a string, got {value} (of type "
                   "{type}) instead."}}};

static ASPEN__DECL_COMPUTE(compute_trim)
{
   const aspen_value_t *in = &v[0], *chars = &v[1];
   cp_t stack_cps[32];
   cp_t *cps = stack_cps;
   size_t n_cps = 0;
   bool ok = true;
   if (e->args[1]) {
      const char *c = chars->v.value.v_utf8.str;
      size_t clen = chars->v.value.v_utf8.len;
      size_t cap = 32;
      for (size_t i = 0; i < clen;) {
         if (is_cont((unsigned char) c[i])) {
            ok = aspen__fail(st, 50698,
                             "Failed to parse \"chars\" argument to %s: "
                             "Detected invalid UTF-8. Got continuation byte "
                             "when expecting the start of a new code point.",
                             e->op->name);
            goto done;
         }
         size_t l = aspen__utf8_cp_len((unsigned char) c[i]);
         if (i + l > clen) {
            ok = aspen__fail(st, 50697,
                             "Failed to parse \"chars\" argument to %s: "
                             "Detected invalid UTF-8. Missing expected "
                             "continuation byte at end of string.",
                             e->op->name);
            goto done;
         }
         if (n_cps == cap) {
            cap *= 2;
            if (cps == stack_cps) {
               cps = aspen_xmalloc(cap * sizeof *cps);
               memcpy(cps, stack_cps, sizeof stack_cps);
            } else {
               cps = aspen_xrealloc(cps, cap * sizeof *cps);
            }
         }
         cps[n_cps].p = c + i;
         cps[n_cps].len = l;
         n_cps++;
         i += l;
      }
   } else {
      for (size_t k = 0; k < sizeof default_trim / sizeof *default_trim;
           k++) {
         cps[n_cps].p = default_trim[k];
         cps[n_cps].len = k == 0 ? 1 : strlen(default_trim[k]);
         n_cps++;
      }
   }
   {
      const char *s = in->v.value.v_utf8.str;
      size_t len = in->v.value.v_utf8.len;
      int mode = e->op->sub;
      if (mode != 2) {
         size_t l;
         while (len > 0 && (l = match_any_left(s, len, cps, n_cps)) > 0) {
            s += l;
            len -= l;
         }
      }
      if (mode != 1) {
         size_t l;
         while (len > 0 && (l = match_any_right(s, len, cps, n_cps)) > 0) {
            len -= l;
         }
      }
      *out = aspen_value_utf8(s, len);
   }
done:
   if (cps != stack_cps) {
      free(cps);
   }
   return ok;
}

ASPEN__ARGS_EVAL(eval_trim, trim_args, compute_trim)

/* ------------------------------------------------------------------------ */
/* $indexOfBytes / $indexOfCP                                                */
/* ------------------------------------------------------------------------ */

/* args: string, token, optional start and end (integral, >= 0). */
#define INDEX_OF_ARGS(code1, code2)                                            \
   {.n = 4,                                                                    \
    .arg = {{.types = ASPEN__T_STRING, .flags = ASPEN__ARG_NULL,               \
             .code = (code1),                                                  \
             .msg = "{op} requires a string as the first argument, found: "    \
                    "{type}"},                                                 \
            {.types = ASPEN__T_STRING, .code = (code2),                        \
             .msg = "{op} requires a string as the second argument, found: "   \
                    "{type}"},                                                 \
            ASPEN__ARG_INDEX("starting index"),                                \
            ASPEN__ARG_INDEX("ending index")}}
static const aspen__args_t index_of_bytes_args = INDEX_OF_ARGS(40091, 40092);
static const aspen__args_t index_of_cp_args = INDEX_OF_ARGS(40093, 40094);
#undef INDEX_OF_ARGS

static bool
index_of_common(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *v,
                aspen_value_t *out, bool cp)
{
   const char *in = v[0].v.value.v_utf8.str;
   size_t len = v[0].v.value.v_utf8.len;
   const char *tok = v[1].v.value.v_utf8.str;
   size_t tlen = v[1].v.value.v_utf8.len;
   int32_t start = e->n_args > 2 ? (int32_t) aspen__arg_int(&v[2]) : 0;
   int32_t endi = e->n_args > 3 ? (int32_t) aspen__arg_int(&v[3]) : -1;
   if (!cp) {
      size_t end = len;
      if (endi >= 0 && (size_t) endi < end) {
         end = (size_t) endi;
      }
      if ((size_t) start > len || end < (size_t) start) {
         *out = aspen_value_int32(-1);
      } else {
         const char *hit =
            find_bytes(in + start, end - (size_t) start, tok, tlen);
         *out = aspen_value_int32(hit ? (int32_t) (hit - in) : -1);
      }
      return true;
   }
   /* Code points: find the byte offset of `start`, count the length. */
   size_t ncp = 0, start_byte = 0;
   for (size_t b = 0; b < len; ncp++) {
      if (ncp == (size_t) start) {
         start_byte = b;
      }
      if (is_cont((unsigned char) in[b])) {
         return aspen__fail(st, 40095,
                            "$indexOfCP found bad UTF-8 in the input");
      }
      b += aspen__utf8_cp_len((unsigned char) in[b]);
   }
   size_t end_cp = ncp;
   if (endi >= 0 && (size_t) endi < end_cp) {
      end_cp = (size_t) endi;
   }
   if (end_cp < (size_t) start) {
      *out = aspen_value_int32(-1);
      return true;
   }
   if (start_byte == 0 && len == 0 && tlen == 0) {
      *out = aspen_value_int32(0);
      return true;
   }
   *out = aspen_value_int32(-1);
   size_t b = start_byte;
   for (size_t c = (size_t) start; c < end_cp; c++) {
      if (b + tlen <= len && memcmp(in + b, tok, tlen) == 0) {
         *out = aspen_value_int32((int32_t) c);
         break;
      }
      b += aspen__utf8_cp_len((unsigned char) in[b]);
   }
   return true;
}

static ASPEN__DECL_COMPUTE(compute_index_of_bytes)
{
   return index_of_common(e, st, v, out, false);
}

ASPEN__ARGS_EVAL(eval_index_of_bytes, index_of_bytes_args,
                 compute_index_of_bytes)

static ASPEN__DECL_COMPUTE(compute_index_of_cp)
{
   return index_of_common(e, st, v, out, true);
}

ASPEN__ARGS_EVAL(eval_index_of_cp, index_of_cp_args, compute_index_of_cp)

/* ------------------------------------------------------------------------ */
/* $replaceOne / $replaceAll (sub: 0 one, 1 all)                             */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t replace_names[] = {
   {"input", 51749, "{op} requires 'input' to be specified"},
   {"find", 51748, "{op} requires 'find' to be specified"},
   {"replacement", 51747, "{op} requires 'replacement' to be specified"},
   {NULL, 0, NULL}};
static const aspen__named_spec_t replace_spec = {
   replace_names, 51751,
   "{op} requires an object as an argument, found: {type}", 51750,
   "{op} found an unknown argument: {key}"};

static ASPEN__DECL_PARSE(parse_replace)
{
   return aspen__parse_named(ps, op, arg, e, &replace_spec);
}

/* All three strings (null passes) before a null gives null. */
#define REPLACE_ARG(what, err_code)                                            \
   {.types = ASPEN__T_STRING, .flags = ASPEN__ARG_NULL, .code = (err_code),    \
    .msg = "{op} requires that '" what "' be a string, found: {value}"}
static const aspen__args_t replace_args = {
   .n = 3, .together = 3, .flags = ASPEN__ARGS_TYPES_FIRST,
   .arg = {REPLACE_ARG("input", 51746), REPLACE_ARG("find", 51745),
           REPLACE_ARG("replacement", 51744)}};
#undef REPLACE_ARG

static ASPEN__DECL_COMPUTE(compute_replace)
{
   const char *in = v[0].v.value.v_utf8.str;
   size_t len = v[0].v.value.v_utf8.len;
   const char *find = v[1].v.value.v_utf8.str;
   size_t flen = v[1].v.value.v_utf8.len;
   const char *rep = v[2].v.value.v_utf8.str;
   size_t rlen = v[2].v.value.v_utf8.len;
   sbuf_t b = {0};
   if (e->op->sub == 0) {
      const char *hit = find_bytes(in, len, find, flen);
      if (!hit) {
         *out = aspen_value_utf8(in, len);
      } else {
         sb_add(&b, in, (size_t) (hit - in));
         sb_add(&b, rep, rlen);
         sb_add(&b, hit + flen, len - (size_t) (hit - in) - flen);
         *out = sb_finish(&b);
      }
   } else if (flen == 0) {
      for (size_t i = 0; i < len; i++) {
         sb_add(&b, rep, rlen);
         sb_add(&b, in + i, 1);
         if (!aspen__eval_size_ok(st, b.len, true)) {
            bson_free(b.p);
            return false;
         }
      }
      sb_add(&b, rep, rlen);
      *out = sb_finish(&b);
   } else {
      const char *p = in, *end = in + len;
      for (;;) {
         const char *hit = find_bytes(p, (size_t) (end - p), find, flen);
         if (!hit) {
            sb_add(&b, p, (size_t) (end - p));
            break;
         }
         sb_add(&b, p, (size_t) (hit - p));
         sb_add(&b, rep, rlen);
         p = hit + flen;
         if (!aspen__eval_size_ok(st, b.len, true)) {
            bson_free(b.p);
            return false;
         }
      }
      *out = sb_finish(&b);
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_replace, replace_args, compute_replace)

/* ------------------------------------------------------------------------ */
/* $binarySize                                                               */
/* ------------------------------------------------------------------------ */

static const aspen__args_t binary_size_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_STRING | ASPEN__T(BSON_TYPE_BINARY),
            .flags = ASPEN__ARG_NULL, .code = 51276,
            .msg = "$binarySize requires a string or BinData argument, found: "
                   "{type}"}}};

static ASPEN__DECL_COMPUTE(compute_binary_size)
{
   (void) e;
   (void) st;
   *out = aspen_value_int32((int32_t) (aspen__is_str(&v[0])
                                          ? v[0].v.value.v_utf8.len
                                          : v[0].v.value.v_binary.data_len));
   return true;
}

ASPEN__ARGS_EVAL(eval_binary_size, binary_size_args, compute_binary_size)

/* ------------------------------------------------------------------------ */
/* Regular expressions                                                       */
/* ------------------------------------------------------------------------ */

void *
aspen__regex_compile(const char *pattern, const char *options,
                     const char *opname, aspen_error_t *err)
{
   uint32_t flags = PCRE2_UTF;
   for (const char *o = options ? options : ""; *o; o++) {
      switch (*o) {
      case 'i':
         flags |= PCRE2_CASELESS;
         break;
      case 'm':
         flags |= PCRE2_MULTILINE;
         break;
      case 's':
         flags |= PCRE2_DOTALL;
         break;
      case 'x':
         flags |= PCRE2_EXTENDED;
         break;
      case 'u':
         break;
      default:
         aspen_error_set(err, 51108, "%s invalid flag in regex options: %c",
                         opname, *o);
         return NULL;
      }
   }
   int code;
   PCRE2_SIZE off;
   pcre2_code *re = pcre2_compile((PCRE2_SPTR) pattern, PCRE2_ZERO_TERMINATED,
                                  flags, &code, &off, NULL);
   if (!re) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(code, msg, sizeof msg);
      aspen_error_set(err, 51111, "Invalid Regex in %s: %s", opname,
                      (const char *) msg);
      return NULL;
   }
   return re;
}

void
aspen__regex_free(void *re)
{
   pcre2_code_free(re);
}

/* Pattern and options from the evaluated values. Returns 1 with *pattern set,
 * 0 when the regex is nullish, -1 on error. */
static int
regex_source(aspen__eval_t *st, const char *opname, const aspen_value_t *re,
             const aspen_value_t *opts, const char **pattern,
             const char **options)
{
   *pattern = NULL;
   *options = "";
   if (!aspen__is_nullish(re) && !aspen__is_str(re) &&
       aspen__vt(re) != BSON_TYPE_REGEX) {
      aspen__fail(st, 51105, "%s needs 'regex' to be of type string or regex",
                  opname);
      return -1;
   }
   if (!aspen__is_nullish(opts) && !aspen__is_str(opts)) {
      aspen__fail(st, 51106, "%s needs 'options' to be of type string",
                  opname);
      return -1;
   }
   if (aspen__vt(re) == BSON_TYPE_REGEX) {
      const char *flags = re->v.value.v_regex.options;
      *pattern = re->v.value.v_regex.regex;
      if (flags && *flags) {
         if (!aspen__is_nullish(opts)) {
            aspen__fail(st, 51107,
                        "%s: found regex option(s) specified in both 'regex' "
                        "and 'option' fields",
                        opname);
            return -1;
         }
         *options = flags;
      }
   } else if (aspen__is_str(re)) {
      *pattern = re->v.value.v_utf8.str;
      if (strlen(*pattern) != re->v.value.v_utf8.len) {
         aspen__fail(st, 51109,
                     "%s: regular expression cannot contain an embedded null "
                     "byte",
                     opname);
         return -1;
      }
   }
   if (aspen__is_str(opts)) {
      *options = opts->v.value.v_utf8.str;
      if (strlen(*options) != opts->v.value.v_utf8.len) {
         aspen__fail(st, 51110,
                     "%s: regular expression options cannot contain an "
                     "embedded null byte",
                     opname);
         return -1;
      }
   }
   return *pattern ? 1 : 0;
}

/* args: input, regex, options. aux: the compiled pattern when regex and
 * options are constants (compiled once; errors are parse errors then). */
static const aspen__named_arg_t regex_names[] = {
   {"input", 31022, "{op} requires 'input' parameter"},
   {"regex", 31023, "{op} requires 'regex' parameter"},
   {"options", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t regex_spec = {
   regex_names, 51103,
   "{op} expects an object of named arguments but found: {type}", 31024,
   "{op} found an unknown argument: {key}"};

static ASPEN__DECL_PARSE(parse_regex)
{
   if (!aspen__parse_named(ps, op, arg, e, &regex_spec)) {
      return false;
   }
   if (!(e->args[1]->flags & ASPEN__NODE_CONST) ||
       (e->args[2] && !(e->args[2]->flags & ASPEN__NODE_CONST))) {
      return true;
   }
   aspen__eval_t st = {.err = ps->err};
   aspen_value_t opts = e->args[2] ? e->args[2]->cval : ASPEN_VALUE_MISSING;
   const char *pattern, *options;
   int r = regex_source(&st, op->name, &e->args[1]->cval, &opts, &pattern,
                        &options);
   if (r < 0) {
      return false;
   }
   if (r > 0) {
      e->aux = aspen__regex_compile(pattern, options, op->name, ps->err);
      if (!e->aux) {
         return false;
      }
      e->aux_free = aspen__regex_free;
   }
   return true;
}

/* One match document {match, idx, captures}. */
static aspen_value_t
match_doc(pcre2_code *re, pcre2_match_data *md, const char *in, uint32_t cp_idx)
{
   PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
   uint32_t ncap = 0;
   pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ncap);
   bson_t doc = BSON_INITIALIZER;
   bson_append_utf8(&doc, "match", 5, in + ov[0], (int) (ov[1] - ov[0]));
   bson_append_int32(&doc, "idx", 3, (int32_t) cp_idx);
   bson_t caps;
   bson_append_array_begin(&doc, "captures", 8, &caps);
   for (uint32_t i = 1; i <= ncap; i++) {
      char buf[16];
      const char *key;
      size_t klen = bson_uint32_to_string(i - 1, &key, buf, sizeof buf);
      if (ov[2 * i] == PCRE2_UNSET) {
         bson_append_null(&caps, key, (int) klen);
      } else {
         bson_append_utf8(&caps, key, (int) klen, in + ov[2 * i],
                          (int) (ov[2 * i + 1] - ov[2 * i]));
      }
   }
   bson_append_array_end(&doc, &caps);
   return aspen_value_take_doc(&doc, false);
}

/* args: input (a string, or null), regex, options (regex_source checks
 * those two, at parse time when they are constant). */
static const aspen__args_t regex_args = {
   .n = 3, .together = 3,
   .arg = {{.types = ASPEN__T_STRING | ASPEN__T_NULLISH, .code = 51104,
            .msg = "{op} needs 'input' to be of type string"},
           {0},
           {0}}};

static ASPEN__DECL_COMPUTE(compute_regex)
{
   int mode = e->op->sub; /* 0 match, 1 find, 2 findAll */
   pcre2_code *re = NULL;
   pcre2_match_data *md = NULL;
   bool ok = false;
   const char *pattern = NULL, *options = "";
   int r = 1;
   if (!e->aux) {
      r = regex_source(st, e->op->name, &v[1], &v[2], &pattern, &options);
      if (r < 0) {
         goto done;
      }
   }
   if (r == 0 || aspen__is_nullish(&v[0])) {
      if (mode == 0) {
         *out = aspen_value_bool(false);
      } else if (mode == 1) {
         *out = aspen_value_null();
      } else {
         bson_t arr = BSON_INITIALIZER;
         *out = aspen__array_finish(&arr);
      }
      ok = true;
      goto done;
   }
   re = e->aux ? e->aux
               : aspen__regex_compile(pattern, options, e->op->name, st->err);
   if (!re) {
      goto done;
   }
   md = pcre2_match_data_create_from_pattern(re, NULL);
   const char *in = v[0].v.value.v_utf8.str;
   size_t len = v[0].v.value.v_utf8.len;
   size_t pos = 0;
   uint32_t cp_pos = 0; /* code points before `pos` */
   bson_t arr = BSON_INITIALIZER;
   uint32_t n_found = 0;
   /* The subject's UTF-8 is checked by the first match only: checking it
    * again at every match made $regexFindAll quadratic (found by fuzzing). */
   uint32_t match_opts = 0;
   for (;;) {
      int rc = pcre2_match(re, (PCRE2_SPTR) in, len, pos, match_opts, md,
                           NULL);
      match_opts = PCRE2_NO_UTF_CHECK;
      if (rc == PCRE2_ERROR_NOMATCH) {
         break;
      }
      if (rc < 0) {
         PCRE2_UCHAR msg[256];
         pcre2_get_error_message(rc, msg, sizeof msg);
         aspen__fail(st, 51156,
                     "Error occurred while executing the regular expression in "
                     "%s. Result code: %s",
                     e->op->name, (const char *) msg);
         bson_destroy(&arr);
         goto done;
      }
      if (mode == 0) {
         *out = aspen_value_bool(true);
         bson_destroy(&arr);
         ok = true;
         goto done;
      }
      PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
      uint32_t idx = cp_pos + (uint32_t) cp_count(in + pos, ov[0] - pos);
      aspen_value_t m = match_doc(re, md, in, idx);
      if (mode == 1) {
         *out = m;
         bson_destroy(&arr);
         ok = true;
         goto done;
      }
      aspen__array_append(&arr, n_found++, &m);
      aspen_value_destroy(&m);
      if (!aspen__eval_size_ok(st, arr.len, false)) {
         bson_destroy(&arr);
         goto done;
      }
      if (ov[1] == ov[0]) {
         /* Empty match: move on by one code point. */
         cp_pos = idx + 1;
         pos = ov[0] + aspen__utf8_cp_len((unsigned char) in[ov[0]]);
      } else {
         cp_pos = idx + (uint32_t) cp_count(in + ov[0], ov[1] - ov[0]);
         pos = ov[1];
      }
      if (pos >= len) {
         break;
      }
   }
   if (mode == 0) {
      *out = aspen_value_bool(false);
      bson_destroy(&arr);
   } else if (mode == 1) {
      *out = aspen_value_null();
      bson_destroy(&arr);
   } else {
      *out = aspen__array_finish(&arr);
   }
   ok = true;
done:
   if (md) {
      pcre2_match_data_free(md);
   }
   if (re && re != e->aux) {
      pcre2_code_free(re);
   }
   return ok;
}

ASPEN__ARGS_EVAL(eval_regex, regex_args, compute_regex)

/* ------------------------------------------------------------------------ */
/* The operator table (expr_int.h, aspen__op_t)                              */
/* ------------------------------------------------------------------------ */

#define P ASPEN__OP_PURE
#define NARY aspen__parse_nary

static const aspen__op_t ops[] = {
   {"$binarySize", NARY, eval_binary_size, 1, 1, 0, P, &binary_size_args},
   {"$concat", parse_concat, eval_concat, -1, -1, 0, P, &concat_args},
   {"$indexOfBytes", NARY, eval_index_of_bytes, 2, 4, 0, P,
    &index_of_bytes_args},
   {"$indexOfCP", NARY, eval_index_of_cp, 2, 4, 0, P, &index_of_cp_args},
   {"$ltrim", parse_trim, eval_trim, 0, 0, 1, P, &trim_args},
   {"$regexFind", parse_regex, eval_regex, 0, 0, 1, P, &regex_args},
   {"$regexFindAll", parse_regex, eval_regex, 0, 0, 2, P, &regex_args},
   {"$regexMatch", parse_regex, eval_regex, 0, 0, 0, P, &regex_args},
   {"$replaceAll", parse_replace, eval_replace, 0, 0, 1, P, &replace_args},
   {"$replaceOne", parse_replace, eval_replace, 0, 0, 0, P, &replace_args},
   {"$rtrim", parse_trim, eval_trim, 0, 0, 2, P, &trim_args},
   {"$split", NARY, eval_split, 2, 2, 0, P, &split_args},
   {"$strLenBytes", NARY, eval_strlen_bytes, 1, 1, 0, P, &strlen_bytes_args},
   {"$strLenCP", NARY, eval_strlen_cp, 1, 1, 0, P, &strlen_cp_args},
   {"$strcasecmp", NARY, eval_strcasecmp, 2, 2, 0, P, &strcasecmp_args},
   {"$substr", NARY, eval_substr_bytes, 3, 3, 0, P, &substr_bytes_args},
   {"$substrBytes", NARY, eval_substr_bytes, 3, 3, 0, P, &substr_bytes_args},
   {"$substrCP", NARY, eval_substr_cp, 3, 3, 0, P, &substr_cp_args},
   {"$toLower", NARY, eval_case, 1, 1, 0, P, &to_string_args},
   {"$toUpper", NARY, eval_case, 1, 1, 1, P, &to_string_args},
   {"$trim", parse_trim, eval_trim, 0, 0, 0, P, &trim_args},
};

#undef P
#undef NARY

const aspen__op_table_t aspen__expr_string_ops = {
   ops, sizeof ops / sizeof ops[0]};
