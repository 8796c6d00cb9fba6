/*
 * expr_args.c - the out-of-line half of argument checking (expr_args.h):
 * what happens when an argument fails its row's fast test (the error with
 * mongod's code and message, the integral and range checks, the coercion to
 * a string), and the message templates rows and named-argument tables
 * use.
 *
 * Pure; any thread.
 */
#include "lang/expr_args.h"

#include <inttypes.h>
#include <stdio.h>

/* ------------------------------------------------------------------------ */
/* Message templates                                                         */
/* ------------------------------------------------------------------------ */

static void
put(char *buf, size_t cap, size_t *n, const char *s, size_t len)
{
   if (*n + 1 >= cap) {
      return;
   }
   size_t room = cap - 1 - *n;
   if (len > room) {
      len = room;
   }
   memcpy(buf + *n, s, len);
   *n += len;
   buf[*n] = '\0';
}

/* The text a template name stands for: a pointer into `tmp`, a static
 * string or (*heap) a bson_malloc'd JSON the caller frees; NULL when the
 * name is unknown or has nothing to name. */
static const char *
name_text(const char *name, size_t len, const aspen__msg_t *m, char *tmp,
          size_t cap, char **heap)
{
#define IS(lit) (len == sizeof(lit) - 1 && memcmp(name, lit, len) == 0)
   if (IS("op")) {
      return m->op;
   }
   if (IS("key")) {
      return m->key;
   }
   if (IS("nth")) {
      snprintf(tmp, cap, "%u", m->pos + 1);
      return tmp;
   }
   if (IS("int")) {
      snprintf(tmp, cap, "%" PRId64, m->ival);
      return tmp;
   }
   if ((IS("type0") || IS("type1")) && m->vals) {
      return aspen_value_type_name(&m->vals[name[4] - '0']);
   }
   if (!m->val) {
      return NULL;
   }
   if (IS("type")) {
      return aspen_value_type_name(m->val);
   }
   if (IS("num")) {
      aspen__num_to_text(m->val, tmp, cap);
      return tmp;
   }
   if (IS("value")) {
      *heap = aspen_value_to_json(m->val);
      return *heap;
   }
#undef IS
   return NULL;
}

void
aspen__msg_format(char *buf, size_t cap, const char *tmpl,
                  const aspen__msg_t *m)
{
   size_t n = 0;
   if (cap == 0) {
      return;
   }
   buf[0] = '\0';
   const char *p = tmpl;
   while (*p) {
      const char *brace = strchr(p, '{');
      const char *end = brace ? strchr(brace, '}') : NULL;
      if (!end) {
         put(buf, cap, &n, p, strlen(p));
         break;
      }
      put(buf, cap, &n, p, (size_t) (brace - p));
      char tmp[64];
      char *heap = NULL;
      const char *s = name_text(brace + 1, (size_t) (end - brace - 1), m, tmp,
                                sizeof tmp, &heap);
      if (s) {
         put(buf, cap, &n, s, strlen(s));
         p = end + 1;
      } else {
         put(buf, cap, &n, brace, 1);
         p = brace + 1;
      }
      bson_free(heap);
   }
}

bool
aspen__msg_fail(aspen_error_t *err, int32_t code, const char *tmpl,
                const aspen__msg_t *m)
{
   if (err) {
      err->code = code;
      aspen__msg_format(err->message, sizeof err->message, tmpl, m);
   }
   return false;
}

/* ------------------------------------------------------------------------ */
/* Checking one argument                                                     */
/* ------------------------------------------------------------------------ */

static bool
arg_fail(const aspen_expr_t *e, aspen__eval_t *st, int32_t code,
         const char *msg, const aspen_value_t *val, const aspen_value_t *vals,
         uint32_t pos, int64_t ival)
{
   aspen__msg_t m = {.op = e->op->name, .val = val, .vals = vals, .pos = pos,
                     .ival = ival};
   return aspen__msg_fail(st->err, code, msg, &m);
}

/* mongod's Value::coerceToString, in place: a string stays as it is, the
 * others (a row's types say which may come) become a string value. */
static bool
to_string(aspen__eval_t *st, aspen_value_t *v)
{
   char buf[128];
   const char *s = buf;
   size_t len;
   switch (aspen__vt(v)) {
   case BSON_TYPE_UTF8:
      return true;
   case BSON_TYPE_SYMBOL:
   case BSON_TYPE_CODE: {
      bool sym = aspen__vt(v) == BSON_TYPE_SYMBOL;
      const char *text =
         sym ? v->v.value.v_symbol.symbol : v->v.value.v_code.code;
      uint32_t tlen =
         sym ? v->v.value.v_symbol.len : v->v.value.v_code.code_len;
      aspen_value_t str = v->owned ? aspen_value_utf8(text, tlen)
                                   : aspen__value_str_view(text, tlen);
      aspen_value_destroy(v);
      *v = str;
      return true;
   }
   case BSON_TYPE_INT32:
      snprintf(buf, sizeof buf, "%" PRId32, v->v.value.v_int32);
      break;
   case BSON_TYPE_INT64:
      snprintf(buf, sizeof buf, "%" PRId64, v->v.value.v_int64);
      break;
   case BSON_TYPE_DOUBLE:
      snprintf(buf, sizeof buf, "%g", v->v.value.v_double);
      break;
   case BSON_TYPE_DECIMAL128:
      aspen__decimal_to_string(
         aspen__decimal_from_bson(&v->v.value.v_decimal128), buf, sizeof buf);
      break;
   case BSON_TYPE_TIMESTAMP:
      snprintf(buf, sizeof buf, "Timestamp(%" PRIu32 ", %" PRIu32 ")",
               v->v.value.v_timestamp.timestamp,
               v->v.value.v_timestamp.increment);
      break;
   case BSON_TYPE_DATE_TIME: {
      size_t n;
      if (!aspen__date_format(v->v.value.v_datetime, ASPEN__ISO_FORMAT,
                              strlen(ASPEN__ISO_FORMAT), aspen__tz_utc(), buf,
                              sizeof buf, &n, st->err)) {
         return false;
      }
      break;
   }
   default: /* null, undefined, missing */
      s = "";
      break;
   }
   len = strlen(s);
   aspen_value_destroy(v);
   *v = len ? aspen_value_utf8(s, len) : aspen__value_str_view("", 0);
   return true;
}

bool
aspen__arg_check(const aspen_expr_t *e, aspen__eval_t *st,
                 const aspen__arg_t *a, aspen_value_t *v,
                 const aspen_value_t *vals, uint32_t pos)
{
   if (a->types && !(a->types & aspen__type_bit(aspen__vt(v)))) {
      return arg_fail(e, st, a->code, a->msg, v, vals, pos, 0);
   }
   if ((a->flags & (ASPEN__ARG_INT32 | ASPEN__ARG_INT64)) && aspen__is_num(v)) {
      int64_t x = 0;
      switch (aspen__args_integral(a, v, &x)) {
      case 1:
         return arg_fail(e, st, a->int_code ? a->int_code : a->code,
                         a->int_msg ? a->int_msg : a->msg, v, vals, pos, 0);
      case 2:
         return arg_fail(e, st, a->range_code, a->range_msg, v, vals, pos, x);
      default:
         break;
      }
   }
   if (a->flags & ASPEN__ARG_TO_STRING) {
      return to_string(st, v);
   }
   return true;
}
