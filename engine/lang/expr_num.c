/*
 * expr_num.c - arithmetic expression operators ($add ... $log10, $round,
 * $trunc, $pow) and the accumulator-style array forms ($sum $avg $min $max
 * $stdDevPop $stdDevSamp). Result types follow MongoDB: the narrowest of
 * int32 < int64 < double < decimal that holds the result, int overflow
 * widening to long and long overflow to double, $divide always double (or
 * decimal). Decimal arithmetic is decimal.c's (exact IEEE decimal128);
 * transcendental functions on decimals ($exp $ln $log $log10, $pow with a
 * non-integral exponent) are computed in long double precision (about 19
 * significant digits) and converted to decimal.
 */
#include "lang/expr_int.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { NT_INT = 0, NT_LONG = 1, NT_DOUBLE = 2, NT_DEC = 3 };

static int
num_rank(const aspen_value_t *val)
{
   switch (aspen__vt(val)) {
   case BSON_TYPE_INT32:
      return NT_INT;
   case BSON_TYPE_INT64:
      return NT_LONG;
   case BSON_TYPE_DOUBLE:
      return NT_DOUBLE;
   default:
      return NT_DEC;
   }
}

static aspen_value_t
dec_value(aspen_dec_t d)
{
   return aspen__value_decimal(aspen__decimal_to_bson(d));
}

/* Evaluates child i; on failure *out is MISSING. */
static bool
arg(const aspen_expr_t *e, uint32_t i, aspen__eval_t *st, aspen_value_t *out)
{
   return aspen__eval_arg(e, i, st, out);
}

/* ------------------------------------------------------------------------ */
/* $add                                                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
   int64_t l;
   double d;
   aspen_dec_t dec;
   int widest;
   bool is_date;
} add_state_t;

static void
add_one(add_state_t *s, const aspen_value_t *v)
{
   int old = s->widest;
   /* A date's millis are added like a number that does not widen the
    * result type. */
   if (aspen__vt(v) == BSON_TYPE_DATE_TIME) {
      s->is_date = true;
   } else if (num_rank(v) > s->widest) {
      s->widest = num_rank(v);
   }
   if (old != s->widest) {
      if (s->widest == NT_DOUBLE) {
         s->d = (double) s->l;
      } else if (s->widest == NT_DEC) {
         s->dec = old == NT_DOUBLE ? aspen__decimal_from_double(s->d, 34)
                                   : aspen__decimal_from_int64(s->l);
      }
   }
   switch (s->widest) {
   case NT_INT:
   case NT_LONG: {
      int64_t add = aspen__vt(v) == BSON_TYPE_DATE_TIME
                       ? v->v.value.v_datetime
                       : aspen__num_to_int64(v);
      int64_t r;
      if (__builtin_add_overflow(s->l, add, &r)) {
         s->widest = NT_DOUBLE;
         s->d = (double) s->l + (double) add;
      } else {
         s->l = r;
      }
      break;
   }
   case NT_DOUBLE:
      s->d += aspen__vt(v) == BSON_TYPE_DATE_TIME
                 ? (double) v->v.value.v_datetime
                 : aspen__num_to_double(v);
      break;
   default:
      s->dec = aspen__decimal_add(
         s->dec, aspen__vt(v) == BSON_TYPE_DATE_TIME
                    ? aspen__decimal_from_int64(v->v.value.v_datetime)
                    : aspen__num_to_dec(v));
      break;
   }
}

ASPEN__DECL_EVAL(aspen__eval_add)
{
   add_state_t s = {0};
   s.dec = aspen__decimal_from_int64(0);
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!arg(e, i, st, &v)) {
         return false;
      }
      if (aspen__is_nullish(&v)) {
         *out = aspen_value_null();
         return true;
      }
      bson_type_t t = aspen__vt(&v);
      if (!aspen__is_num(&v) && t != BSON_TYPE_DATE_TIME) {
         *out = ASPEN_VALUE_MISSING;
         bool failed = aspen__fail(st, ASPEN_ERR_TypeMismatch,
                            "$add only supports numeric or date types, not %s",
                            aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         return failed;
      }
      if (t == BSON_TYPE_DATE_TIME && s.is_date) {
         *out = ASPEN_VALUE_MISSING;
         return aspen__fail(st, 16612,
                            "only one date allowed in an $add expression");
      }
      add_one(&s, &v);
   }
   if (s.is_date) {
      switch (s.widest) {
      case NT_INT:
      case NT_LONG:
         *out = aspen_value_date(s.l);
         return true;
      case NT_DOUBLE:
         if (!(s.d >= -9223372036854775808.0 && s.d < 9223372036854775808.0)) {
            *out = ASPEN_VALUE_MISSING;
            return aspen__fail(st, 45, "date overflow in $add");
         }
         *out = aspen_value_date(llround(s.d));
         return true;
      default: {
         int64_t ms = 0;
         aspen__decimal_to_int64(aspen__decimal_quantize(s.dec, 0, 0), &ms);
         *out = aspen_value_date(ms);
         return true;
      }
      }
   }
   switch (s.widest) {
   case NT_INT:
      *out = aspen__value_int_or_long(s.l);
      break;
   case NT_LONG:
      *out = aspen_value_int64(s.l);
      break;
   case NT_DOUBLE:
      *out = aspen_value_double(s.d);
      break;
   default:
      *out = dec_value(s.dec);
      break;
   }
   return true;
}

/* ------------------------------------------------------------------------ */
/* $subtract                                                                 */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_subtract)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!arg(e, 0, st, &a)) {
      return false;
   }
   if (!arg(e, 1, st, &b)) {
      aspen_value_destroy(&a);
      return false;
   }
   bool ok = true;
   if (aspen__is_num(&a) && aspen__is_num(&b)) {
      int w = num_rank(&a) > num_rank(&b) ? num_rank(&a) : num_rank(&b);
      if (w == NT_DEC) {
         *out = dec_value(
            aspen__decimal_sub(aspen__num_to_dec(&a), aspen__num_to_dec(&b)));
      } else if (w == NT_DOUBLE) {
         *out = aspen_value_double(aspen__num_to_double(&a) -
                                   aspen__num_to_double(&b));
      } else {
         int64_t r;
         if (__builtin_sub_overflow(aspen__num_to_int64(&a),
                                    aspen__num_to_int64(&b), &r)) {
            *out = aspen_value_double(aspen__num_to_double(&a) -
                                      aspen__num_to_double(&b));
         } else {
            *out = w == NT_LONG ? aspen_value_int64(r)
                                : aspen__value_int_or_long(r);
         }
      }
   } else if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
   } else if (aspen__vt(&a) == BSON_TYPE_DATE_TIME) {
      int64_t r;
      if (aspen__vt(&b) == BSON_TYPE_DATE_TIME) {
         if (__builtin_sub_overflow(a.v.value.v_datetime,
                                    b.v.value.v_datetime, &r)) {
            ok = aspen__fail(st, 45, "date overflow in $subtract");
         } else {
            *out = aspen_value_int64(r);
         }
      } else if (aspen__is_num(&b)) {
         if (__builtin_sub_overflow(a.v.value.v_datetime,
                                    aspen__num_to_int64(&b), &r)) {
            ok = aspen__fail(st, 45, "date overflow in $subtract");
         } else {
            *out = aspen_value_date(r);
         }
      } else {
         ok = aspen__fail(st, ASPEN_ERR_TypeMismatch,
                          "can't $subtract %s from Date",
                          aspen_value_type_name(&b));
      }
   } else {
      ok = aspen__fail(st, ASPEN_ERR_TypeMismatch, "can't $subtract %s from %s",
                       aspen_value_type_name(&b), aspen_value_type_name(&a));
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $multiply                                                                 */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_multiply)
{
   double dprod = 1;
   int64_t lprod = 1;
   aspen_dec_t decprod = aspen__decimal_from_int64(1);
   int type = NT_INT;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!arg(e, i, st, &v)) {
         return false;
      }
      if (aspen__is_nullish(&v)) {
         *out = aspen_value_null();
         return true;
      }
      if (!aspen__is_num(&v)) {
         *out = ASPEN_VALUE_MISSING;
         bool failed = aspen__fail(st, ASPEN_ERR_TypeMismatch,
                            "$multiply only supports numeric types, not %s",
                            aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         return failed;
      }
      int old = type;
      int r = num_rank(&v);
      if (r > type) {
         type = r;
      }
      if (type == NT_DEC) {
         if (old != NT_DEC) {
            decprod = old == NT_DOUBLE ? aspen__decimal_from_double(dprod, 15)
                                       : aspen__decimal_from_int64(lprod);
         }
         decprod = aspen__decimal_mul(decprod, aspen__num_to_dec(&v));
      } else {
         double dv = aspen__num_to_double(&v);
         dprod *= dv;
         if (type != NT_DOUBLE) {
            int64_t p;
            if (!isfinite(dv) ||
                __builtin_mul_overflow(lprod, aspen__num_to_int64(&v), &p)) {
               type = NT_DOUBLE;
            } else {
               lprod = p;
            }
         }
      }
   }
   switch (type) {
   case NT_INT:
      *out = aspen__value_int_or_long(lprod);
      break;
   case NT_LONG:
      *out = aspen_value_int64(lprod);
      break;
   case NT_DOUBLE:
      *out = aspen_value_double(dprod);
      break;
   default:
      *out = dec_value(decprod);
      break;
   }
   return true;
}

/* ------------------------------------------------------------------------ */
/* $divide, $mod                                                             */
/* ------------------------------------------------------------------------ */

static bool
eval_two(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *a,
         aspen_value_t *b)
{
   if (!arg(e, 0, st, a)) {
      return false;
   }
   if (!arg(e, 1, st, b)) {
      aspen_value_destroy(a);
      return false;
   }
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_divide)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!eval_two(e, st, &a, &b)) {
      return false;
   }
   bool ok = true;
   if (aspen__is_num(&a) && aspen__is_num(&b)) {
      if (num_rank(&a) == NT_DEC || num_rank(&b) == NT_DEC) {
         aspen_dec_t den = aspen__num_to_dec(&b);
         if (aspen__decimal_is_zero(den)) {
            ok = aspen__fail(st, ASPEN_ERR_BadValue, "can't $divide by zero");
         } else {
            *out = dec_value(aspen__decimal_div(aspen__num_to_dec(&a), den));
         }
      } else {
         double den = aspen__num_to_double(&b);
         if (den == 0.0) {
            ok = aspen__fail(st, ASPEN_ERR_BadValue, "can't $divide by zero");
         } else {
            *out = aspen_value_double(aspen__num_to_double(&a) / den);
         }
      }
   } else if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
   } else {
      ok = aspen__fail(st, ASPEN_ERR_TypeMismatch,
                       "$divide only supports numeric types, not %s and %s",
                       aspen_value_type_name(&a), aspen_value_type_name(&b));
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_mod)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!eval_two(e, st, &a, &b)) {
      return false;
   }
   bool ok = true;
   if (aspen__is_num(&a) && aspen__is_num(&b)) {
      int ra = num_rank(&a), rb = num_rank(&b);
      if (ra == NT_DEC || rb == NT_DEC) {
         aspen_dec_t x = aspen__num_to_dec(&a), y = aspen__num_to_dec(&b);
         if (aspen__decimal_is_zero(y)) {
            ok = aspen__fail(st, 5733415, "can't $mod by zero");
         } else {
            aspen_dec_t q =
               aspen__decimal_quantize(aspen__decimal_div(x, y), 0, 1);
            *out = dec_value(aspen__decimal_sub(x, aspen__decimal_mul(y, q)));
         }
      } else {
         double y = aspen__num_to_double(&b);
         int64_t yl;
         bool y_integral = aspen__num_is_int64(&b, &yl);
         if (y == 0) {
            ok = aspen__fail(st, 16610, "can't $mod by zero");
         } else if (ra == NT_DOUBLE || (rb == NT_DOUBLE && !y_integral)) {
            *out = aspen_value_double(fmod(aspen__num_to_double(&a), y));
         } else if (ra == NT_LONG || rb == NT_LONG) {
            int64_t x = aspen__num_to_int64(&a);
            *out = aspen_value_int64(yl == -1 ? 0 : x % yl);
         } else {
            int32_t x = (int32_t) aspen__num_to_int64(&a);
            int32_t yi = (int32_t) yl;
            *out = aspen_value_int32(yi == -1 ? 0 : x % yi);
         }
      }
   } else if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
   } else {
      ok = aspen__fail(st, 16611,
                       "$mod only supports numeric types, not %s and %s",
                       aspen_value_type_name(&a), aspen_value_type_name(&b));
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* Single numeric argument: $abs $ceil $floor $sqrt $exp $ln $log10          */
/* ------------------------------------------------------------------------ */

/* Evaluates the argument; returns 1 when it is a number (in *v), 0 when the
 * result is already in *out (null), -1 on error. */
static int
single_numeric(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *v,
               aspen_value_t *out)
{
   *out = ASPEN_VALUE_MISSING;
   if (!arg(e, 0, st, v)) {
      return -1;
   }
   if (aspen__is_nullish(v)) {
      *out = aspen_value_null();
      return 0;
   }
   if (!aspen__is_num(v)) {
      aspen__fail(st, 28765, "%s only supports numeric types, not %s",
                  e->op->name, aspen_value_type_name(v));
      aspen_value_destroy(v);
      return -1;
   }
   return 1;
}

ASPEN__DECL_EVAL(aspen__eval_abs)
{
   aspen_value_t v;
   int r = single_numeric(e, st, &v, out);
   if (r <= 0) {
      return r == 0;
   }
   switch (aspen__vt(&v)) {
   case BSON_TYPE_DOUBLE:
      *out = aspen_value_double(fabs(v.v.value.v_double));
      break;
   case BSON_TYPE_DECIMAL128: {
      *out = dec_value(
         aspen__decimal_abs(aspen__decimal_from_bson(&v.v.value.v_decimal128)));
      break;
   }
   case BSON_TYPE_INT32: {
      int64_t x = v.v.value.v_int32;
      *out = aspen__value_int_or_long(x < 0 ? -x : x);
      break;
   }
   default: {
      int64_t x = v.v.value.v_int64;
      if (x == INT64_MIN) {
         return aspen__fail(st, 28680, "can't take $abs of long long min");
      }
      *out = aspen_value_int64(x < 0 ? -x : x);
      break;
   }
   }
   return true;
}

static bool
ceil_floor(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out,
           bool is_ceil)
{
   aspen_value_t v;
   int r = single_numeric(e, st, &v, out);
   if (r <= 0) {
      return r == 0;
   }
   switch (aspen__vt(&v)) {
   case BSON_TYPE_DOUBLE:
      *out = aspen_value_double(is_ceil ? ceil(v.v.value.v_double)
                                        : floor(v.v.value.v_double));
      break;
   case BSON_TYPE_DECIMAL128:
      *out = dec_value(aspen__decimal_quantize(
         aspen__decimal_from_bson(&v.v.value.v_decimal128), 0,
         is_ceil ? 3 : 2));
      break;
   default:
      *out = v;
      break;
   }
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_ceil)
{
   return ceil_floor(e, st, out, true);
}

ASPEN__DECL_EVAL(aspen__eval_floor)
{
   return ceil_floor(e, st, out, false);
}

/* long double -> decimal with the 19 significant digits long double holds,
 * trailing zeros dropped ("1.000..." -> "1"). */
static aspen_dec_t
ld_to_dec(long double v)
{
   char buf[64];
   bson_decimal128_t bd;
   if (isnan(v)) {
      snprintf(buf, sizeof buf, "NaN");
   } else if (isinf(v)) {
      snprintf(buf, sizeof buf, v < 0 ? "-Infinity" : "Infinity");
   } else {
      char mant[40];
      int exp10;
      snprintf(buf, sizeof buf, "%.18Le", v);
      char *e = strchr(buf, 'e');
      exp10 = e ? (int) strtol(e + 1, NULL, 10) : 0;
      size_t mlen = e ? (size_t) (e - buf) : strlen(buf);
      if (mlen >= sizeof mant) {
         mlen = sizeof mant - 1;
      }
      memcpy(mant, buf, mlen);
      mant[mlen] = '\0';
      char *dot = strchr(mant, '.');
      if (dot) {
         char *end = mant + strlen(mant) - 1;
         while (end > dot && *end == '0') {
            *end-- = '\0';
         }
         if (end == dot) {
            *end = '\0';
         }
      }
      snprintf(buf, sizeof buf, "%sE%d", mant, exp10);
   }
   bson_decimal128_from_string(buf, &bd);
   return aspen__decimal_from_bson(&bd);
}

ASPEN__DECL_EVAL(aspen__eval_sqrt)
{
   aspen_value_t v;
   int r = single_numeric(e, st, &v, out);
   if (r <= 0) {
      return r == 0;
   }
   if (aspen__vt(&v) == BSON_TYPE_DECIMAL128) {
      aspen_dec_t d = aspen__decimal_from_bson(&v.v.value.v_decimal128);
      if (aspen__decimal_is_neg(d)) {
         return aspen__fail(st, 28714,
                            "$sqrt's argument must be greater than or equal "
                            "to 0");
      }
      *out = dec_value(aspen__decimal_sqrt(d));
      return true;
   }
   double d = aspen__num_to_double(&v);
   if (d < 0) {
      return aspen__fail(st, 28714,
                         "$sqrt's argument must be greater than or equal to "
                         "0");
   }
   *out = aspen_value_double(sqrt(d));
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_exp)
{
   aspen_value_t v;
   int r = single_numeric(e, st, &v, out);
   if (r <= 0) {
      return r == 0;
   }
   if (aspen__vt(&v) == BSON_TYPE_DECIMAL128) {
      aspen_dec_t d = aspen__decimal_from_bson(&v.v.value.v_decimal128);
      *out = dec_value(ld_to_dec(expl(aspen__decimal_to_ld(d))));
      return true;
   }
   *out = aspen_value_double(exp(aspen__num_to_double(&v)));
   return true;
}

static bool
log_common(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out,
           bool base10)
{
   aspen_value_t v;
   int r = single_numeric(e, st, &v, out);
   if (r <= 0) {
      return r == 0;
   }
   if (aspen__vt(&v) == BSON_TYPE_DECIMAL128) {
      aspen_dec_t d = aspen__decimal_from_bson(&v.v.value.v_decimal128);
      if (!aspen__decimal_is_neg(d) && !aspen__decimal_is_zero(d) &&
          !aspen__decimal_is_nan(d)) {
         long double x = aspen__decimal_to_ld(d);
         *out = dec_value(ld_to_dec(base10 ? log10l(x) : logl(x)));
         return true;
      }
   }
   double d = aspen__num_to_double(&v);
   if (!(d > 0 || isnan(d))) {
      if (base10) {
         return aspen__fail(st, 28761,
                            "$log10's argument must be a positive number, but "
                            "is %g",
                            d);
      }
      return aspen__fail(st, 28766,
                         "$ln's argument must be a positive number, but is %g",
                         d);
   }
   *out = aspen_value_double(base10 ? log10(d) : log(d));
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_ln)
{
   return log_common(e, st, out, false);
}

ASPEN__DECL_EVAL(aspen__eval_log10)
{
   return log_common(e, st, out, true);
}

ASPEN__DECL_EVAL(aspen__eval_log)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!eval_two(e, st, &a, &b)) {
      return false;
   }
   bool ok = true;
   if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
   } else if (!aspen__is_num(&a)) {
      ok = aspen__fail(st, 28756, "$log's argument must be numeric, not %s",
                       aspen_value_type_name(&a));
   } else if (!aspen__is_num(&b)) {
      ok = aspen__fail(st, 28757, "$log's base must be numeric, not %s",
                       aspen_value_type_name(&b));
   } else {
      bool done = false;
      if (num_rank(&a) == NT_DEC || num_rank(&b) == NT_DEC) {
         aspen_dec_t x = aspen__num_to_dec(&a), y = aspen__num_to_dec(&b);
         aspen_dec_t zero = aspen__decimal_from_int64(0);
         if (aspen__decimal_cmp(x, zero) > 0 &&
             aspen__decimal_cmp(y, zero) > 0 &&
             aspen__decimal_cmp(y, aspen__decimal_from_int64(1)) != 0) {
            *out = dec_value(ld_to_dec(logl(aspen__decimal_to_ld(x)) /
                                       logl(aspen__decimal_to_ld(y))));
            done = true;
         }
      }
      if (!done) {
         double x = aspen__num_to_double(&a), y = aspen__num_to_double(&b);
         if (!(x > 0 || isnan(x))) {
            ok = aspen__fail(st, 28758,
                             "$log's argument must be a positive number, but "
                             "is %g",
                             x);
         } else if (!((y > 0 && y != 1) || isnan(y))) {
            ok = aspen__fail(st, 28759,
                             "$log's base must be a positive number not equal "
                             "to 1, but is %g",
                             y);
         } else {
            *out = aspen_value_double(log(x) / log(y));
         }
      }
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_pow)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!eval_two(e, st, &a, &b)) {
      return false;
   }
   bool ok = true;
   if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
      goto done;
   }
   if (!aspen__is_num(&a)) {
      ok = aspen__fail(st, 28762, "$pow's base must be numeric, not %s",
                       aspen_value_type_name(&a));
      goto done;
   }
   if (!aspen__is_num(&b)) {
      ok = aspen__fail(st, 28763, "$pow's exponent must be numeric, not %s",
                       aspen_value_type_name(&b));
      goto done;
   }
   int ra = num_rank(&a), rb = num_rank(&b);
   if (ra == NT_DEC || rb == NT_DEC) {
      aspen_dec_t x = aspen__num_to_dec(&a), y = aspen__num_to_dec(&b);
      if (aspen__decimal_is_zero(x) && aspen__decimal_is_neg(y)) {
         ok = aspen__fail(st, 28764,
                          "$pow cannot take a base of 0 and a negative "
                          "exponent");
         goto done;
      }
      aspen_dec_t yi = aspen__decimal_quantize(y, 0, 1);
      int64_t yl;
      if (!aspen__decimal_is_nan(yi) && aspen__decimal_cmp(yi, y) == 0 &&
          aspen__decimal_to_int64(y, &yl) && yl >= -1000 && yl <= 1000) {
         /* Integral exponent: exact repeated squaring in decimal. */
         bool neg = yl < 0;
         uint64_t k = (uint64_t) (neg ? -yl : yl);
         aspen_dec_t res = aspen__decimal_from_int64(1), base = x;
         while (k) {
            if (k & 1) {
               res = aspen__decimal_mul(res, base);
            }
            k >>= 1;
            if (k) {
               base = aspen__decimal_mul(base, base);
            }
         }
         *out = dec_value(
            neg ? aspen__decimal_div(aspen__decimal_from_int64(1), res) : res);
      } else {
         *out = dec_value(
            ld_to_dec(powl(aspen__decimal_to_ld(x), aspen__decimal_to_ld(y))));
      }
      goto done;
   }
   double x = aspen__num_to_double(&a), y = aspen__num_to_double(&b);
   if (x == 0 && y < 0) {
      ok = aspen__fail(st, 28764,
                       "$pow cannot take a base of 0 and a negative exponent");
      goto done;
   }
   if (ra == NT_DOUBLE || rb == NT_DOUBLE) {
      *out = aspen_value_double(pow(x, y));
      goto done;
   }
   {
      bool want_long = ra == NT_LONG || rb == NT_LONG;
      int64_t base = aspen__num_to_int64(&a), ex = aspen__num_to_int64(&b);
      int64_t res;
      if (base == 0) {
         res = ex == 0 ? 1 : 0;
      } else if (base == 1) {
         res = 1;
      } else if (base == -1) {
         res = ex % 2 == 0 ? 1 : -1;
      } else if (ex < 0 || ex > 63) {
         *out = aspen_value_double(pow((double) base, (double) ex));
         goto done;
      } else {
         res = 1;
         bool overflow = false;
         for (int64_t i = 0; i < ex; i++) {
            if (__builtin_mul_overflow(res, base, &res)) {
               overflow = true;
               break;
            }
         }
         if (overflow) {
            *out = aspen_value_double(pow((double) base, (double) ex));
            goto done;
         }
      }
      *out = want_long ? aspen_value_int64(res) : aspen__value_int_or_long(res);
   }
done:
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $round / $trunc (sub 0: round half to even, 1: truncate)                 */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_round)
{
   bool trunc_mode = e->op->sub == 1;
   int mode = trunc_mode ? 1 : 0;
   aspen_value_t v, p = ASPEN_VALUE_MISSING;
   *out = ASPEN_VALUE_MISSING;
   if (!arg(e, 0, st, &v)) {
      return false;
   }
   if (aspen__is_nullish(&v)) {
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_num(&v)) {
      bool failed = aspen__fail(st, 51081, "%s only supports numeric types, not %s",
                         e->op->name, aspen_value_type_name(&v));
      aspen_value_destroy(&v);
      return failed;
   }
   int64_t places = 0;
   if (e->n_args > 1) {
      if (!arg(e, 1, st, &p)) {
         return false;
      }
      if (aspen__is_nullish(&p)) {
         aspen_value_destroy(&p);
         *out = aspen_value_null();
         return true;
      }
      if (!aspen__is_num(&p) || !aspen__num_is_int64(&p, &places)) {
         aspen_value_destroy(&p);
         return aspen__fail(st, 51082,
                            "precision argument to  %s must be a integral "
                            "value",
                            e->op->name);
      }
      aspen_value_destroy(&p);
      if (places < -20 || places > 100) {
         return aspen__fail(st, 51083,
                            "cannot apply %s with precision value %" PRId64
                            " value must be in [-20, 100]",
                            e->op->name, places);
      }
   }
   switch (aspen__vt(&v)) {
   case BSON_TYPE_DECIMAL128: {
      aspen_dec_t d = aspen__decimal_from_bson(&v.v.value.v_decimal128);
      if (aspen__decimal_is_inf(d)) {
         *out = v;
      } else {
         *out = dec_value(aspen__decimal_quantize(d, (int) places, mode));
      }
      return true;
   }
   case BSON_TYPE_DOUBLE: {
      double x = v.v.value.v_double;
      if (isinf(x)) {
         *out = v;
         return true;
      }
      aspen_dec_t d = aspen__decimal_from_double(x, 34);
      *out = aspen_value_double(aspen__decimal_to_double(
         aspen__decimal_quantize(d, (int) places, mode)));
      return true;
   }
   default: {
      if (places >= 0) {
         *out = v;
         return true;
      }
      int64_t x = aspen__num_to_int64(&v);
      int64_t r;
      aspen_dec_t q = aspen__decimal_quantize(aspen__decimal_from_int64(x),
                                              (int) places, mode);
      if (!aspen__decimal_to_int64(q, &r)) {
         return aspen__fail(st, 51080,
                            "invalid conversion from Decimal128 result in %s "
                            "resulting from arguments: [%" PRId64 ", %" PRId64
                            "]",
                            e->op->name, x, places);
      }
      *out = aspen__vt(&v) == BSON_TYPE_INT64 ? aspen_value_int64(r)
                                               : aspen__value_int_or_long(r);
      return true;
   }
   }
}

/* ------------------------------------------------------------------------ */
/* Accumulator-style operators on arrays or argument lists                   */
/* ------------------------------------------------------------------------ */

enum { ACC_SUM, ACC_AVG, ACC_MIN, ACC_MAX, ACC_STDPOP, ACC_STDSAMP };

ASPEN__DECL_PARSE(aspen__parse_accum)
{
   /* {$sum: [a, b]} sums the arguments; {$sum: "$arr"} sums the array. */
   return aspen__parse_nary(ps, op, arg, e);
}

typedef struct {
   int type;
   __int128 isum;
   double dsum, dcomp; /* Neumaier compensated sum of doubles */
   aspen_dec_t dec;
   int64_t count;
   double mean, m2;
   aspen_value_t best;
   bool have_best;
} acc_t;

static void
neumaier(acc_t *a, double x)
{
   double t = a->dsum + x;
   if (fabs(a->dsum) >= fabs(x)) {
      a->dcomp += (a->dsum - t) + x;
   } else {
      a->dcomp += (x - t) + a->dsum;
   }
   a->dsum = t;
}

static void
acc_process(acc_t *a, int kind, const aspen_value_t *v)
{
   if (kind == ACC_MIN || kind == ACC_MAX) {
      if (aspen__is_nullish(v)) {
         return;
      }
      if (!a->have_best) {
         a->best = aspen__value_view(v);
         a->have_best = true;
         return;
      }
      int c = aspen__value_cmp(v, &a->best, true);
      if ((kind == ACC_MIN && c < 0) || (kind == ACC_MAX && c > 0)) {
         a->best = aspen__value_view(v);
      }
      return;
   }
   if (!aspen__is_num(v)) {
      return;
   }
   a->count++;
   if (kind == ACC_STDPOP || kind == ACC_STDSAMP) {
      double x = aspen__num_to_double(v);
      double delta = x - a->mean;
      if (delta != 0.0) {
         a->mean += delta / (double) a->count;
         a->m2 += delta * (x - a->mean);
      }
      return;
   }
   int r = num_rank(v);
   if (r > a->type) {
      a->type = r;
   }
   switch (r) {
   case NT_INT:
   case NT_LONG:
      a->isum += aspen__num_to_int64(v);
      break;
   case NT_DOUBLE:
      neumaier(a, v->v.value.v_double);
      break;
   default:
      a->dec = aspen__decimal_add(
         a->dec, aspen__decimal_from_bson(&v->v.value.v_decimal128));
      break;
   }
}

static double
acc_double(const acc_t *a)
{
   double isum = (double) a->isum;
   return (isum + a->dsum) + a->dcomp;
}

static aspen_dec_t
acc_dec(const acc_t *a)
{
   aspen_dec_t d = a->dec;
   if (a->isum != 0) {
      if (a->isum >= INT64_MIN && a->isum <= INT64_MAX) {
         d = aspen__decimal_add(d,
                                aspen__decimal_from_int64((int64_t) a->isum));
      } else {
         d = aspen__decimal_add(
            d, aspen__decimal_from_double((double) a->isum, 34));
      }
   }
   if (a->dsum != 0 || a->dcomp != 0) {
      d = aspen__decimal_add(
         d, aspen__decimal_from_double(a->dsum + a->dcomp, 34));
   }
   return d;
}

static aspen_value_t
acc_result(const acc_t *a, int kind)
{
   switch (kind) {
   case ACC_SUM:
      switch (a->type) {
      case NT_INT:
         if (a->isum >= INT64_MIN && a->isum <= INT64_MAX) {
            return aspen__value_int_or_long((int64_t) a->isum);
         }
         return aspen_value_double(acc_double(a));
      case NT_LONG:
         if (a->isum >= INT64_MIN && a->isum <= INT64_MAX) {
            return aspen_value_int64((int64_t) a->isum);
         }
         return aspen_value_double(acc_double(a));
      case NT_DOUBLE:
         return aspen_value_double(acc_double(a));
      default:
         return dec_value(acc_dec(a));
      }
   case ACC_AVG:
      if (a->count == 0) {
         return aspen_value_null();
      }
      if (a->type == NT_DEC) {
         return dec_value(aspen__decimal_div(
            acc_dec(a), aspen__decimal_from_int64(a->count)));
      }
      return aspen_value_double(acc_double(a) / (double) a->count);
   case ACC_MIN:
   case ACC_MAX:
      return a->have_best ? a->best : aspen_value_null();
   case ACC_STDPOP:
      if (a->count == 0) {
         return aspen_value_null();
      }
      return aspen_value_double(sqrt(a->m2 / (double) a->count));
   default:
      if (a->count < 2) {
         return aspen_value_null();
      }
      return aspen_value_double(sqrt(a->m2 / (double) (a->count - 1)));
   }
}

ASPEN__DECL_EVAL(aspen__eval_accum)
{
   int kind = e->op->sub;
   acc_t a;
   memset(&a, 0, sizeof a);
   /* 0E0: all-zero bits would be 0E-6176 and skew the result's exponent. */
   a.dec = aspen__decimal_from_int64(0);
   uint32_t n = e->n_args;
   aspen_value_t stackv[8];
   aspen_value_t *vals = n <= 8 ? stackv : aspen_xmalloc(n * sizeof *vals);
   uint32_t done;
   bool ok = true;
   for (done = 0; done < n; done++) {
      if (!arg(e, done, st, &vals[done])) {
         ok = false;
         break;
      }
   }
   if (ok) {
      if (n == 1 && aspen__is_array(&vals[0])) {
         bson_iter_t it;
         if (aspen__array_iter(&vals[0], &it)) {
            while (bson_iter_next(&it)) {
               aspen_value_t v = aspen_value_borrow(&it);
               acc_process(&a, kind, &v);
            }
         }
      } else {
         for (uint32_t i = 0; i < n; i++) {
            acc_process(&a, kind, &vals[i]);
         }
      }
      *out = acc_result(&a, kind);
      /* $min/$max return a view into one of the inputs. */
      aspen__value_own(out);
   } else {
      *out = ASPEN_VALUE_MISSING;
   }
   for (uint32_t i = 0; i < done; i++) {
      aspen_value_destroy(&vals[i]);
   }
   if (vals != stackv) {
      free(vals);
   }
   return ok;
}

/* ------------------------------------------------------------------------ */
/* Trigonometry (sub: which function); beyond expr.h's list, as mongod has  */
/* them. Doubles in, doubles out; a decimal argument gives a decimal.        */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_trig)
{
   aspen_value_t v;
   int r = single_numeric(e, st, &v, out);
   if (r <= 0) {
      return r == 0;
   }
   bool is_dec = aspen__vt(&v) == BSON_TYPE_DECIMAL128;
   long double x = is_dec ? aspen__decimal_to_ld(v.v.value.v_decimal128)
                          : (long double) aspen__num_to_double(&v);
   const char *bounds = NULL;
   switch (e->op->sub) {
   case ASPEN__TRIG_SIN:
   case ASPEN__TRIG_COS:
   case ASPEN__TRIG_TAN:
      if (isinf(x)) {
         bounds = "(-inf,inf)";
      }
      break;
   case ASPEN__TRIG_ASIN:
   case ASPEN__TRIG_ACOS:
   case ASPEN__TRIG_ATANH:
      if (x < -1 || x > 1) {
         bounds = "[-1,1]";
      }
      break;
   case ASPEN__TRIG_ACOSH:
      if (x < 1) {
         bounds = "[1,inf]";
      }
      break;
   default:
      break;
   }
   if (bounds) {
      char num[64];
      aspen__num_to_text(&v, num, sizeof num);
      return aspen__fail(st, 50989, "cannot apply %s to %s, value must be in %s",
                         e->op->name, num, bounds);
   }
   long double res;
   switch (e->op->sub) {
   case ASPEN__TRIG_SIN:
      res = sinl(x);
      break;
   case ASPEN__TRIG_COS:
      res = cosl(x);
      break;
   case ASPEN__TRIG_TAN:
      res = tanl(x);
      break;
   case ASPEN__TRIG_ASIN:
      res = asinl(x);
      break;
   case ASPEN__TRIG_ACOS:
      res = acosl(x);
      break;
   case ASPEN__TRIG_ATAN:
      res = atanl(x);
      break;
   case ASPEN__TRIG_SINH:
      res = sinhl(x);
      break;
   case ASPEN__TRIG_COSH:
      res = coshl(x);
      break;
   case ASPEN__TRIG_TANH:
      res = tanhl(x);
      break;
   case ASPEN__TRIG_ASINH:
      res = asinhl(x);
      break;
   case ASPEN__TRIG_ACOSH:
      res = acoshl(x);
      break;
   case ASPEN__TRIG_ATANH:
      res = atanhl(x);
      break;
   case ASPEN__TRIG_DEG2RAD:
      if (!is_dec) {
         *out = aspen_value_double(aspen__num_to_double(&v) * (3.14159265358979323846 / 180.0));
         return true;
      }
      res = x * (3.14159265358979323846264338327950288L / 180.0L);
      break;
   default:
      if (!is_dec) {
         *out = aspen_value_double(aspen__num_to_double(&v) * (180.0 / 3.14159265358979323846));
         return true;
      }
      res = x * (180.0L / 3.14159265358979323846264338327950288L);
      break;
   }
   if (is_dec) {
      *out = dec_value(ld_to_dec(res));
   } else {
      /* Computed in double like mongod (std::sin etc. on doubles). */
      double xd = aspen__num_to_double(&v);
      double rd;
      switch (e->op->sub) {
      case ASPEN__TRIG_SIN:
         rd = sin(xd);
         break;
      case ASPEN__TRIG_COS:
         rd = cos(xd);
         break;
      case ASPEN__TRIG_TAN:
         rd = tan(xd);
         break;
      case ASPEN__TRIG_ASIN:
         rd = asin(xd);
         break;
      case ASPEN__TRIG_ACOS:
         rd = acos(xd);
         break;
      case ASPEN__TRIG_ATAN:
         rd = atan(xd);
         break;
      case ASPEN__TRIG_SINH:
         rd = sinh(xd);
         break;
      case ASPEN__TRIG_COSH:
         rd = cosh(xd);
         break;
      case ASPEN__TRIG_TANH:
         rd = tanh(xd);
         break;
      case ASPEN__TRIG_ASINH:
         rd = asinh(xd);
         break;
      case ASPEN__TRIG_ACOSH:
         rd = acosh(xd);
         break;
      default:
         rd = atanh(xd);
         break;
      }
      *out = aspen_value_double(rd);
   }
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_atan2)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!eval_two(e, st, &a, &b)) {
      return false;
   }
   bool ok = true;
   if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
   } else if (!aspen__is_num(&a) || !aspen__is_num(&b)) {
      ok = aspen__fail(st, 51044,
                       "$atan2 only supports numeric types, not %s and %s",
                       aspen_value_type_name(&a), aspen_value_type_name(&b));
   } else if (num_rank(&a) == NT_DEC || num_rank(&b) == NT_DEC) {
      *out = dec_value(
         ld_to_dec(atan2l(aspen__decimal_to_ld(aspen__num_to_dec(&a)),
                          aspen__decimal_to_ld(aspen__num_to_dec(&b)))));
   } else {
      *out = aspen_value_double(
         atan2(aspen__num_to_double(&a), aspen__num_to_double(&b)));
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $bitAnd $bitOr $bitXor (sub 0..2) and $bitNot                             */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_bit)
{
   int kind = e->op->sub;
   int64_t acc = kind == 0 ? -1 : 0;
   bool any_long = false;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!arg(e, i, st, &v)) {
         return false;
      }
      if (aspen__is_nullish(&v)) {
         *out = aspen_value_null();
         return true;
      }
      bson_type_t t = aspen__vt(&v);
      if (t != BSON_TYPE_INT32 && t != BSON_TYPE_INT64) {
         *out = ASPEN_VALUE_MISSING;
         bool failed = aspen__fail(st, ASPEN_ERR_TypeMismatch,
                                   "All operands of %s must be ints or longs, "
                                   "but got: %s",
                                   e->op->name, aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         return failed;
      }
      any_long |= t == BSON_TYPE_INT64;
      int64_t x = aspen__num_to_int64(&v);
      acc = kind == 0 ? (acc & x) : kind == 1 ? (acc | x) : (acc ^ x);
   }
   *out = any_long ? aspen_value_int64(acc) : aspen_value_int32((int32_t) acc);
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_bit_not)
{
   aspen_value_t v;
   *out = ASPEN_VALUE_MISSING;
   if (!arg(e, 0, st, &v)) {
      return false;
   }
   if (aspen__is_nullish(&v)) {
      *out = aspen_value_null();
   } else if (aspen__vt(&v) == BSON_TYPE_INT32) {
      *out = aspen_value_int32(~v.v.value.v_int32);
   } else if (aspen__vt(&v) == BSON_TYPE_INT64) {
      *out = aspen_value_int64(~v.v.value.v_int64);
   } else {
      bool failed = aspen__fail(st, ASPEN_ERR_TypeMismatch,
                                "$bitNot only supports int and long, not: %s",
                                aspen_value_type_name(&v));
      aspen_value_destroy(&v);
      return failed;
   }
   return true;
}
