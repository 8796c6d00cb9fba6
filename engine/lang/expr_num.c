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
#include "lang/expr_args.h"

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

/* The result of a sum or product, of the widest type its inputs had: the
 * value held for that type. */
static aspen_value_t
num_value(int widest, int64_t l, double d, aspen_dec_t dec)
{
   switch (widest) {
   case NT_INT:
      return aspen__value_int_or_long(l);
   case NT_LONG:
      return aspen_value_int64(l);
   case NT_DOUBLE:
      return aspen_value_double(d);
   default:
      return dec_value(dec);
   }
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

static const aspen__args_t add_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_NUMBER | ASPEN__T(BSON_TYPE_DATE_TIME),
            .flags = ASPEN__ARG_NULL,
            .code = ASPEN_ERR_TypeMismatch,
            .msg = "$add only supports numeric or date types, not {type}"}}};

/* Adds as it goes: a second date is an error before the arguments after it
 * are evaluated, as in mongod. */
static ASPEN__DECL_EVAL(eval_add)
{
   add_state_t s = {0};
   s.dec = aspen__decimal_from_int64(0);
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      int r = aspen__args_eval_arg(e, st, &add_args, i, &v, out);
      if (r <= 0) {
         return r == 0;
      }
      if (aspen__vt(&v) == BSON_TYPE_DATE_TIME && s.is_date) {
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
   *out = num_value(s.widest, s.l, s.d, s.dec);
   return true;
}

/* ------------------------------------------------------------------------ */
/* $subtract                                                                 */
/* ------------------------------------------------------------------------ */

/* Null first, then the types (numbers and dates, in compute_subtract). */
static const aspen__args_t null2_args = {
   .n = 2, .together = 2,
   .arg = {{.flags = ASPEN__ARG_NULL}, {.flags = ASPEN__ARG_NULL}}};

static ASPEN__DECL_COMPUTE(compute_subtract)
{
   (void) e;
   const aspen_value_t a = v[0], b = v[1];
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
   return ok;
}

ASPEN__ARGS_EVAL(eval_subtract, null2_args, compute_subtract)

/* ------------------------------------------------------------------------ */
/* $multiply                                                                 */
/* ------------------------------------------------------------------------ */

static const aspen__args_t multiply_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL,
            .code = ASPEN_ERR_TypeMismatch,
            .msg = "$multiply only supports numeric types, not {type}"}}};

static ASPEN__DECL_EVAL(eval_multiply)
{
   double dprod = 1;
   int64_t lprod = 1;
   aspen_dec_t decprod = aspen__decimal_from_int64(1);
   int type = NT_INT;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      int ar = aspen__args_eval_arg(e, st, &multiply_args, i, &v, out);
      if (ar <= 0) {
         return ar == 0;
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
   *out = num_value(type, lprod, dprod, decprod);
   return true;
}

/* ------------------------------------------------------------------------ */
/* $divide, $mod                                                             */
/* ------------------------------------------------------------------------ */

static const aspen__args_t divide_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL,
            .code = ASPEN_ERR_TypeMismatch,
            .msg = "$divide only supports numeric types, not {type0} and "
                   "{type1}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL,
            .code = ASPEN_ERR_TypeMismatch,
            .msg = "$divide only supports numeric types, not {type0} and "
                   "{type1}"}}};

static ASPEN__DECL_COMPUTE(compute_divide)
{
   (void) e;
   const aspen_value_t *a = &v[0], *b = &v[1];
   if (a->v.value_type == BSON_TYPE_INT32 &&
       b->v.value_type == BSON_TYPE_INT32 && b->v.value.v_int32 != 0) {
      /* The double path below for two ints, without its calls. */
      *out = aspen_value_double((double) a->v.value.v_int32 /
                                (double) b->v.value.v_int32);
      return true;
   }
   if (num_rank(a) == NT_DEC || num_rank(b) == NT_DEC) {
      aspen_dec_t den = aspen__num_to_dec(b);
      if (aspen__decimal_is_zero(den)) {
         return aspen__fail(st, ASPEN_ERR_BadValue, "can't $divide by zero");
      }
      *out = dec_value(aspen__decimal_div(aspen__num_to_dec(a), den));
      return true;
   }
   double den = aspen__num_to_double(b);
   if (den == 0.0) {
      return aspen__fail(st, ASPEN_ERR_BadValue, "can't $divide by zero");
   }
   *out = aspen_value_double(aspen__num_to_double(a) / den);
   return true;
}

ASPEN__ARGS_EVAL(eval_divide, divide_args, compute_divide)

/* eval_divide of two leaves that are ints or doubles, the divisor not
 * zero: compute_divide's double path, without the argument checks they
 * pass. Anything else (null, other types, decimals, zero) is eval_divide's. */
static inline bool
divide_leaves(const aspen_expr_t *e, aspen__eval_t *st, double *q)
{
   const aspen_value_t *a, *b;
   if (e->n_args == 2 && (a = aspen__leaf_at(e->args[0], st)) &&
       (b = aspen__leaf_at(e->args[1], st))) {
      bson_type_t ta = a->v.value_type, tb = b->v.value_type;
      if ((ta == BSON_TYPE_INT32 || ta == BSON_TYPE_DOUBLE) &&
          (tb == BSON_TYPE_INT32 || tb == BSON_TYPE_DOUBLE)) {
         double x = ta == BSON_TYPE_INT32 ? (double) a->v.value.v_int32
                                          : a->v.value.v_double;
         double y = tb == BSON_TYPE_INT32 ? (double) b->v.value.v_int32
                                          : b->v.value.v_double;
         if (y != 0.0 && aspen__steps_skip(st, 2)) {
            *q = x / y;
            return true;
         }
      }
   }
   return false;
}

static ASPEN__DECL_EVAL(eval_divide_leaves)
{
   double q;
   if (divide_leaves(e, st, &q)) {
      *out = aspen_value_double(q);
      return true;
   }
   return eval_divide(e, st, out);
}

/* The same, the quotient written straight into the output. */
static ASPEN__DECL_WRITE(write_divide_leaves)
{
   double q;
   if (divide_leaves(e, st, &q)) {
      aspen_bsonw_double(w, key, key_len, q);
      return true;
   }
   return aspen__write_eval(e, st, w, key, key_len);
}

static ASPEN__DECL_PARSE(parse_divide)
{
   return aspen__parse_nary_leaves(ps, op, arg, e, eval_divide_leaves,
                                   write_divide_leaves);
}

static const aspen__args_t mod_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 16611,
            .msg = "$mod only supports numeric types, not {type0} and "
                   "{type1}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 16611,
            .msg = "$mod only supports numeric types, not {type0} and "
                   "{type1}"}}};

static ASPEN__DECL_COMPUTE(compute_mod)
{
   (void) e;
   const aspen_value_t *a = &v[0], *b = &v[1];
   int ra = num_rank(a), rb = num_rank(b);
   if (ra == NT_DEC || rb == NT_DEC) {
      aspen_dec_t x = aspen__num_to_dec(a), y = aspen__num_to_dec(b);
      if (aspen__decimal_is_zero(y)) {
         return aspen__fail(st, 5733415, "can't $mod by zero");
      }
      aspen_dec_t q = aspen__decimal_quantize(aspen__decimal_div(x, y), 0, 1);
      *out = dec_value(aspen__decimal_sub(x, aspen__decimal_mul(y, q)));
      return true;
   }
   double y = aspen__num_to_double(b);
   int64_t yl;
   bool y_integral = aspen__num_is_int64(b, &yl);
   if (y == 0) {
      return aspen__fail(st, 16610, "can't $mod by zero");
   }
   if (ra == NT_DOUBLE || (rb == NT_DOUBLE && !y_integral)) {
      *out = aspen_value_double(fmod(aspen__num_to_double(a), y));
   } else if (ra == NT_LONG || rb == NT_LONG) {
      int64_t x = aspen__num_to_int64(a);
      *out = aspen_value_int64(yl == -1 ? 0 : x % yl);
   } else {
      int32_t x = (int32_t) aspen__num_to_int64(a);
      int32_t yi = (int32_t) yl;
      *out = aspen_value_int32(yi == -1 ? 0 : x % yi);
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_mod, mod_args, compute_mod)

/* ------------------------------------------------------------------------ */
/* Single numeric argument: $abs $ceil $floor $sqrt $exp $ln $log10          */
/* ------------------------------------------------------------------------ */

/* One number; null gives null. */
static const aspen__args_t numeric1_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 28765,
            .msg = "{op} only supports numeric types, not {type}"}}};

static ASPEN__DECL_COMPUTE(compute_abs)
{
   (void) e;
   switch (aspen__vt(&v[0])) {
   case BSON_TYPE_DOUBLE:
      *out = aspen_value_double(fabs(v[0].v.value.v_double));
      break;
   case BSON_TYPE_DECIMAL128: {
      *out = dec_value(aspen__decimal_abs(
         aspen__decimal_from_bson(&v[0].v.value.v_decimal128)));
      break;
   }
   case BSON_TYPE_INT32: {
      int64_t x = v[0].v.value.v_int32;
      *out = aspen__value_int_or_long(x < 0 ? -x : x);
      break;
   }
   default: {
      int64_t x = v[0].v.value.v_int64;
      if (x == INT64_MIN) {
         return aspen__fail(st, 28680, "can't take $abs of long long min");
      }
      *out = aspen_value_int64(x < 0 ? -x : x);
      break;
   }
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_abs, numeric1_args, compute_abs)

static bool
ceil_floor(aspen_value_t *v, aspen_value_t *out, bool is_ceil)
{
   switch (aspen__vt(&v[0])) {
   case BSON_TYPE_DOUBLE:
      *out = aspen_value_double(is_ceil ? ceil(v[0].v.value.v_double)
                                        : floor(v[0].v.value.v_double));
      break;
   case BSON_TYPE_DECIMAL128:
      *out = dec_value(aspen__decimal_quantize(
         aspen__decimal_from_bson(&v[0].v.value.v_decimal128), 0,
         is_ceil ? 3 : 2));
      break;
   default:
      *out = aspen__value_move(&v[0]);
      break;
   }
   return true;
}

static ASPEN__DECL_COMPUTE(compute_ceil)
{
   (void) e;
   (void) st;
   return ceil_floor(v, out, true);
}

ASPEN__ARGS_EVAL(eval_ceil, numeric1_args, compute_ceil)

static ASPEN__DECL_COMPUTE(compute_floor)
{
   (void) e;
   (void) st;
   return ceil_floor(v, out, false);
}

ASPEN__ARGS_EVAL(eval_floor, numeric1_args, compute_floor)

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

static ASPEN__DECL_COMPUTE(compute_sqrt)
{
   (void) e;
   if (aspen__vt(&v[0]) == BSON_TYPE_DECIMAL128) {
      aspen_dec_t d = aspen__decimal_from_bson(&v[0].v.value.v_decimal128);
      if (aspen__decimal_is_neg(d)) {
         return aspen__fail(st, 28714,
                            "$sqrt's argument must be greater than or equal "
                            "to 0");
      }
      *out = dec_value(aspen__decimal_sqrt(d));
      return true;
   }
   double d = aspen__num_to_double(&v[0]);
   if (d < 0) {
      return aspen__fail(st, 28714,
                         "$sqrt's argument must be greater than or equal to "
                         "0");
   }
   *out = aspen_value_double(sqrt(d));
   return true;
}

ASPEN__ARGS_EVAL(eval_sqrt, numeric1_args, compute_sqrt)

static ASPEN__DECL_COMPUTE(compute_exp)
{
   (void) e;
   (void) st;
   if (aspen__vt(&v[0]) == BSON_TYPE_DECIMAL128) {
      aspen_dec_t d = aspen__decimal_from_bson(&v[0].v.value.v_decimal128);
      *out = dec_value(ld_to_dec(expl(aspen__decimal_to_ld(d))));
      return true;
   }
   *out = aspen_value_double(exp(aspen__num_to_double(&v[0])));
   return true;
}

ASPEN__ARGS_EVAL(eval_exp, numeric1_args, compute_exp)

static bool
log_common(aspen__eval_t *st, const aspen_value_t *v, aspen_value_t *out,
           bool base10)
{
   if (aspen__vt(&v[0]) == BSON_TYPE_DECIMAL128) {
      aspen_dec_t d = aspen__decimal_from_bson(&v[0].v.value.v_decimal128);
      if (!aspen__decimal_is_neg(d) && !aspen__decimal_is_zero(d) &&
          !aspen__decimal_is_nan(d)) {
         long double x = aspen__decimal_to_ld(d);
         *out = dec_value(ld_to_dec(base10 ? log10l(x) : logl(x)));
         return true;
      }
   }
   double d = aspen__num_to_double(&v[0]);
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

static ASPEN__DECL_COMPUTE(compute_ln)
{
   (void) e;
   return log_common(st, v, out, false);
}

ASPEN__ARGS_EVAL(eval_ln, numeric1_args, compute_ln)

static ASPEN__DECL_COMPUTE(compute_log10)
{
   (void) e;
   return log_common(st, v, out, true);
}

ASPEN__ARGS_EVAL(eval_log10, numeric1_args, compute_log10)

static const aspen__args_t log_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 28756,
            .msg = "$log's argument must be numeric, not {type}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 28757,
            .msg = "$log's base must be numeric, not {type}"}}};

static ASPEN__DECL_COMPUTE(compute_log)
{
   (void) e;
   const aspen_value_t *a = &v[0], *b = &v[1];
   if (num_rank(a) == NT_DEC || num_rank(b) == NT_DEC) {
      aspen_dec_t x = aspen__num_to_dec(a), y = aspen__num_to_dec(b);
      aspen_dec_t zero = aspen__decimal_from_int64(0);
      if (aspen__decimal_cmp(x, zero) > 0 && aspen__decimal_cmp(y, zero) > 0 &&
          aspen__decimal_cmp(y, aspen__decimal_from_int64(1)) != 0) {
         *out = dec_value(ld_to_dec(logl(aspen__decimal_to_ld(x)) /
                                    logl(aspen__decimal_to_ld(y))));
         return true;
      }
   }
   double x = aspen__num_to_double(a), y = aspen__num_to_double(b);
   if (!(x > 0 || isnan(x))) {
      return aspen__fail(st, 28758,
                         "$log's argument must be a positive number, but is "
                         "%g",
                         x);
   }
   if (!((y > 0 && y != 1) || isnan(y))) {
      return aspen__fail(st, 28759,
                         "$log's base must be a positive number not equal to "
                         "1, but is %g",
                         y);
   }
   *out = aspen_value_double(log(x) / log(y));
   return true;
}

ASPEN__ARGS_EVAL(eval_log, log_args, compute_log)

static const aspen__args_t pow_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 28762,
            .msg = "$pow's base must be numeric, not {type}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 28763,
            .msg = "$pow's exponent must be numeric, not {type}"}}};

static ASPEN__DECL_COMPUTE(compute_pow)
{
   (void) e;
   const aspen_value_t *a = &v[0], *b = &v[1];
   int ra = num_rank(a), rb = num_rank(b);
   if (ra == NT_DEC || rb == NT_DEC) {
      aspen_dec_t x = aspen__num_to_dec(a), y = aspen__num_to_dec(b);
      if (aspen__decimal_is_zero(x) && aspen__decimal_is_neg(y)) {
         return aspen__fail(st, 28764,
                            "$pow cannot take a base of 0 and a negative "
                            "exponent");
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
      return true;
   }
   double x = aspen__num_to_double(a), y = aspen__num_to_double(b);
   if (x == 0 && y < 0) {
      return aspen__fail(st, 28764,
                         "$pow cannot take a base of 0 and a negative "
                         "exponent");
   }
   if (ra == NT_DOUBLE || rb == NT_DOUBLE) {
      *out = aspen_value_double(pow(x, y));
      return true;
   }
   {
      bool want_long = ra == NT_LONG || rb == NT_LONG;
      int64_t base = aspen__num_to_int64(a), ex = aspen__num_to_int64(b);
      int64_t res;
      if (base == 0) {
         res = ex == 0 ? 1 : 0;
      } else if (base == 1) {
         res = 1;
      } else if (base == -1) {
         res = ex % 2 == 0 ? 1 : -1;
      } else if (ex < 0 || ex > 63) {
         *out = aspen_value_double(pow((double) base, (double) ex));
         return true;
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
            return true;
         }
      }
      *out = want_long ? aspen_value_int64(res) : aspen__value_int_or_long(res);
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_pow, pow_args, compute_pow)

/* ------------------------------------------------------------------------ */
/* $round / $trunc (sub 0: round half to even, 1: truncate)                 */
/* ------------------------------------------------------------------------ */

static const aspen__args_t round_args = {
   .n = 2,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 51081,
            .msg = "{op} only supports numeric types, not {type}"},
           {.types = ASPEN__T_NUMBER,
            .flags = ASPEN__ARG_NULL | ASPEN__ARG_INT64 | ASPEN__ARG_RANGE,
            .code = 51082,
            .msg = "precision argument to  {op} must be a integral value",
            .range_code = 51083,
            .range_msg = "cannot apply {op} with precision value {int} value "
                         "must be in [-20, 100]",
            .min = -20, .max = 100}}};

static ASPEN__DECL_COMPUTE(compute_round)
{
   int mode = e->op->sub == 1 ? 1 : 0;
   int64_t places = e->n_args > 1 ? aspen__arg_int(&v[1]) : 0;
   switch (aspen__vt(&v[0])) {
   case BSON_TYPE_DECIMAL128: {
      aspen_dec_t d = aspen__decimal_from_bson(&v[0].v.value.v_decimal128);
      if (aspen__decimal_is_inf(d)) {
         *out = aspen__value_move(&v[0]);
      } else {
         *out = dec_value(aspen__decimal_quantize(d, (int) places, mode));
      }
      return true;
   }
   case BSON_TYPE_DOUBLE: {
      double x = v[0].v.value.v_double;
      if (isinf(x)) {
         *out = aspen__value_move(&v[0]);
         return true;
      }
      aspen_dec_t d = aspen__decimal_from_double(x, 34);
      *out = aspen_value_double(aspen__decimal_to_double(
         aspen__decimal_quantize(d, (int) places, mode)));
      return true;
   }
   default: {
      if (places >= 0) {
         *out = aspen__value_move(&v[0]);
         return true;
      }
      int64_t x = aspen__num_to_int64(&v[0]);
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
      *out = aspen__vt(&v[0]) == BSON_TYPE_INT64 ? aspen_value_int64(r)
                                                  : aspen__value_int_or_long(r);
      return true;
   }
   }
}

ASPEN__ARGS_EVAL(eval_round, round_args, compute_round)

/* ------------------------------------------------------------------------ */
/* Accumulator-style operators on arrays or argument lists                   */
/* ------------------------------------------------------------------------ */

enum { ACC_SUM, ACC_AVG, ACC_MIN, ACC_MAX, ACC_STDPOP, ACC_STDSAMP };

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

/* No checks: the accumulator forms skip what is not a number. */
static const aspen__args_t plain_args = {.n = 1};

/* {$sum: [a, b]} sums the arguments; {$sum: "$arr"} sums the array. */
static ASPEN__DECL_COMPUTE(compute_accum)
{
   (void) st;
   int kind = e->op->sub;
   acc_t a;
   memset(&a, 0, sizeof a);
   /* 0E0: all-zero bits would be 0E-6176 and skew the result's exponent. */
   a.dec = aspen__decimal_from_int64(0);
   if (e->n_args == 1 && aspen__is_array(&v[0])) {
      bson_iter_t it;
      if (aspen__array_iter(&v[0], &it)) {
         while (bson_iter_next(&it)) {
            aspen_value_t el = aspen_value_borrow(&it);
            acc_process(&a, kind, &el);
         }
      }
   } else {
      for (uint32_t i = 0; i < e->n_args; i++) {
         acc_process(&a, kind, &v[i]);
      }
   }
   *out = acc_result(&a, kind);
   /* $min/$max return a view into one of the inputs. */
   aspen__value_own(out);
   return true;
}

ASPEN__ARGS_EVAL(eval_accum, plain_args, compute_accum)

/* ------------------------------------------------------------------------ */
/* Trigonometry (sub: which function); beyond expr.h's list, as mongod has  */
/* them. Doubles in, doubles out; a decimal argument gives a decimal.        */
/* ------------------------------------------------------------------------ */

/* The trigonometric operators, the `sub` of their table rows. */
enum {
   TRIG_SIN,
   TRIG_COS,
   TRIG_TAN,
   TRIG_ASIN,
   TRIG_ACOS,
   TRIG_ATAN,
   TRIG_SINH,
   TRIG_COSH,
   TRIG_TANH,
   TRIG_ASINH,
   TRIG_ACOSH,
   TRIG_ATANH,
   TRIG_DEG2RAD,
   TRIG_RAD2DEG,
};

static ASPEN__DECL_COMPUTE(compute_trig)
{
   bool is_dec = aspen__vt(&v[0]) == BSON_TYPE_DECIMAL128;
   long double x = is_dec ? aspen__decimal_to_ld(v[0].v.value.v_decimal128)
                          : (long double) aspen__num_to_double(&v[0]);
   const char *bounds = NULL;
   switch (e->op->sub) {
   case TRIG_SIN:
   case TRIG_COS:
   case TRIG_TAN:
      if (isinf(x)) {
         bounds = "(-inf,inf)";
      }
      break;
   case TRIG_ASIN:
   case TRIG_ACOS:
   case TRIG_ATANH:
      if (x < -1 || x > 1) {
         bounds = "[-1,1]";
      }
      break;
   case TRIG_ACOSH:
      if (x < 1) {
         bounds = "[1,inf]";
      }
      break;
   default:
      break;
   }
   if (bounds) {
      char num[64];
      aspen__num_to_text(&v[0], num, sizeof num);
      return aspen__fail(st, 50989, "cannot apply %s to %s, value must be in %s",
                         e->op->name, num, bounds);
   }
   long double res;
   switch (e->op->sub) {
   case TRIG_SIN:
      res = sinl(x);
      break;
   case TRIG_COS:
      res = cosl(x);
      break;
   case TRIG_TAN:
      res = tanl(x);
      break;
   case TRIG_ASIN:
      res = asinl(x);
      break;
   case TRIG_ACOS:
      res = acosl(x);
      break;
   case TRIG_ATAN:
      res = atanl(x);
      break;
   case TRIG_SINH:
      res = sinhl(x);
      break;
   case TRIG_COSH:
      res = coshl(x);
      break;
   case TRIG_TANH:
      res = tanhl(x);
      break;
   case TRIG_ASINH:
      res = asinhl(x);
      break;
   case TRIG_ACOSH:
      res = acoshl(x);
      break;
   case TRIG_ATANH:
      res = atanhl(x);
      break;
   case TRIG_DEG2RAD:
      if (!is_dec) {
         *out = aspen_value_double(aspen__num_to_double(&v[0]) *
                                   (3.14159265358979323846 / 180.0));
         return true;
      }
      res = x * (3.14159265358979323846264338327950288L / 180.0L);
      break;
   default:
      if (!is_dec) {
         *out = aspen_value_double(aspen__num_to_double(&v[0]) *
                                   (180.0 / 3.14159265358979323846));
         return true;
      }
      res = x * (180.0L / 3.14159265358979323846264338327950288L);
      break;
   }
   if (is_dec) {
      *out = dec_value(ld_to_dec(res));
   } else {
      /* Computed in double like mongod (std::sin etc. on doubles). */
      double xd = aspen__num_to_double(&v[0]);
      double rd;
      switch (e->op->sub) {
      case TRIG_SIN:
         rd = sin(xd);
         break;
      case TRIG_COS:
         rd = cos(xd);
         break;
      case TRIG_TAN:
         rd = tan(xd);
         break;
      case TRIG_ASIN:
         rd = asin(xd);
         break;
      case TRIG_ACOS:
         rd = acos(xd);
         break;
      case TRIG_ATAN:
         rd = atan(xd);
         break;
      case TRIG_SINH:
         rd = sinh(xd);
         break;
      case TRIG_COSH:
         rd = cosh(xd);
         break;
      case TRIG_TANH:
         rd = tanh(xd);
         break;
      case TRIG_ASINH:
         rd = asinh(xd);
         break;
      case TRIG_ACOSH:
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

ASPEN__ARGS_EVAL(eval_trig, numeric1_args, compute_trig)

static const aspen__args_t atan2_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 51044,
            .msg = "$atan2 only supports numeric types, not {type0} and "
                   "{type1}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_NULL, .code = 51044,
            .msg = "$atan2 only supports numeric types, not {type0} and "
                   "{type1}"}}};

static ASPEN__DECL_COMPUTE(compute_atan2)
{
   (void) e;
   (void) st;
   const aspen_value_t *a = &v[0], *b = &v[1];
   if (num_rank(a) == NT_DEC || num_rank(b) == NT_DEC) {
      *out = dec_value(
         ld_to_dec(atan2l(aspen__decimal_to_ld(aspen__num_to_dec(a)),
                          aspen__decimal_to_ld(aspen__num_to_dec(b)))));
   } else {
      *out = aspen_value_double(
         atan2(aspen__num_to_double(a), aspen__num_to_double(b)));
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_atan2, atan2_args, compute_atan2)

/* ------------------------------------------------------------------------ */
/* $bitAnd $bitOr $bitXor (sub 0..2) and $bitNot                             */
/* ------------------------------------------------------------------------ */

static const aspen__args_t bit_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_INTEGER, .flags = ASPEN__ARG_NULL,
            .code = ASPEN_ERR_TypeMismatch,
            .msg = "All operands of {op} must be ints or longs, but got: "
                   "{type}"}}};

static ASPEN__DECL_EVAL(eval_bit)
{
   int kind = e->op->sub;
   int64_t acc = kind == 0 ? -1 : 0;
   bool any_long = false;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      int r = aspen__args_eval_arg(e, st, &bit_args, i, &v, out);
      if (r <= 0) {
         return r == 0;
      }
      any_long |= aspen__vt(&v) == BSON_TYPE_INT64;
      int64_t x = aspen__num_to_int64(&v);
      acc = kind == 0 ? (acc & x) : kind == 1 ? (acc | x) : (acc ^ x);
   }
   *out = any_long ? aspen_value_int64(acc) : aspen_value_int32((int32_t) acc);
   return true;
}

static const aspen__args_t bit_not_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_INTEGER, .flags = ASPEN__ARG_NULL,
            .code = ASPEN_ERR_TypeMismatch,
            .msg = "$bitNot only supports int and long, not: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_bit_not)
{
   (void) e;
   (void) st;
   *out = aspen__vt(&v[0]) == BSON_TYPE_INT32
             ? aspen_value_int32(~v[0].v.value.v_int32)
             : aspen_value_int64(~v[0].v.value.v_int64);
   return true;
}

ASPEN__ARGS_EVAL(eval_bit_not, bit_not_args, compute_bit_not)

/* ------------------------------------------------------------------------ */
/* The operator table (expr_int.h, aspen__op_t)                              */
/* ------------------------------------------------------------------------ */

#define P ASPEN__OP_PURE
#define NARY aspen__parse_nary
#define NUMERIC1(name, eval)                                                   \
   {name, NARY, eval, 1, 1, 0, P, &numeric1_args}
#define TRIG(name, fn)                                                         \
   {name, NARY, eval_trig, 1, 1, TRIG_##fn, P, &numeric1_args}
#define ACCUM(name, kind)                                                      \
   {name, NARY, eval_accum, -1, -1, kind, P, &plain_args}

static const aspen__op_t ops[] = {
   NUMERIC1("$abs", eval_abs),
   TRIG("$acos", ACOS),
   TRIG("$acosh", ACOSH),
   {"$add", NARY, eval_add, -1, -1, 0, P, &add_args},
   TRIG("$asin", ASIN),
   TRIG("$asinh", ASINH),
   TRIG("$atan", ATAN),
   {"$atan2", NARY, eval_atan2, 2, 2, 0, P, &atan2_args},
   TRIG("$atanh", ATANH),
   ACCUM("$avg", ACC_AVG),
   {"$bitAnd", NARY, eval_bit, -1, -1, 0, P, &bit_args},
   {"$bitNot", NARY, eval_bit_not, 1, 1, 0, P, &bit_not_args},
   {"$bitOr", NARY, eval_bit, -1, -1, 1, P, &bit_args},
   {"$bitXor", NARY, eval_bit, -1, -1, 2, P, &bit_args},
   NUMERIC1("$ceil", eval_ceil),
   TRIG("$cos", COS),
   TRIG("$cosh", COSH),
   TRIG("$degreesToRadians", DEG2RAD),
   {"$divide", parse_divide, eval_divide, 2, 2, 0, P, &divide_args},
   NUMERIC1("$exp", eval_exp),
   NUMERIC1("$floor", eval_floor),
   NUMERIC1("$ln", eval_ln),
   {"$log", NARY, eval_log, 2, 2, 0, P, &log_args},
   NUMERIC1("$log10", eval_log10),
   ACCUM("$max", ACC_MAX),
   ACCUM("$min", ACC_MIN),
   {"$mod", NARY, eval_mod, 2, 2, 0, P, &mod_args},
   {"$multiply", NARY, eval_multiply, -1, -1, 0, P, &multiply_args},
   {"$pow", NARY, eval_pow, 2, 2, 0, P, &pow_args},
   TRIG("$radiansToDegrees", RAD2DEG),
   {"$round", NARY, eval_round, 1, 2, 0, P, &round_args},
   TRIG("$sin", SIN),
   TRIG("$sinh", SINH),
   NUMERIC1("$sqrt", eval_sqrt),
   ACCUM("$stdDevPop", ACC_STDPOP),
   ACCUM("$stdDevSamp", ACC_STDSAMP),
   {"$subtract", NARY, eval_subtract, 2, 2, 0, P, &null2_args},
   ACCUM("$sum", ACC_SUM),
   TRIG("$tan", TAN),
   TRIG("$tanh", TANH),
   {"$trunc", NARY, eval_round, 1, 2, 1, P, &round_args},
};

#undef P
#undef NARY
#undef NUMERIC1
#undef TRIG
#undef ACCUM

const aspen__op_table_t aspen__expr_num_ops = {ops, sizeof ops / sizeof ops[0]};
