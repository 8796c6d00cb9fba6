/*
 * decimal.h - IEEE 754-2008 decimal128 numbers on BSON's BID encoding
 * (decimal.c): the arithmetic, comparison and conversions values,
 * expressions and accumulators use. Below value.c: it knows no
 * aspen_value_t. Pure functions; any thread.
 */
#ifndef ASPEN_ENGINE_LANG_DECIMAL_H
#define ASPEN_ENGINE_LANG_DECIMAL_H

#include <bson/bson.h>

typedef bson_decimal128_t aspen_dec_t;

static inline aspen_dec_t
aspen__decimal_from_bson(const bson_decimal128_t *d)
{
   return *d;
}

static inline bson_decimal128_t
aspen__decimal_to_bson(aspen_dec_t d)
{
   return d;
}

aspen_dec_t aspen__decimal_from_int64(int64_t v);
bool aspen__decimal_is_nan(aspen_dec_t d);
bool aspen__decimal_is_inf(aspen_dec_t d);
bool aspen__decimal_is_zero(aspen_dec_t d);
/* True for values below zero (not -0, not NaN). */
bool aspen__decimal_is_neg(aspen_dec_t d);
aspen_dec_t aspen__decimal_abs(aspen_dec_t d);
/* Arithmetic rounded half-even to 34 digits with IEEE's preferred
 * exponents; NaN and infinities propagate. Division by zero gives an
 * infinity (callers check for zero first, as mongod errors instead). */
aspen_dec_t aspen__decimal_add(aspen_dec_t a, aspen_dec_t b);
aspen_dec_t aspen__decimal_sub(aspen_dec_t a, aspen_dec_t b);
aspen_dec_t aspen__decimal_mul(aspen_dec_t a, aspen_dec_t b);
aspen_dec_t aspen__decimal_div(aspen_dec_t a, aspen_dec_t b);
aspen_dec_t aspen__decimal_sqrt(aspen_dec_t a);
/* Numeric order; NaN sorts below everything and equals NaN. */
int aspen__decimal_cmp(aspen_dec_t a, aspen_dec_t b);
double aspen__decimal_to_double(aspen_dec_t d);
long double aspen__decimal_to_ld(aspen_dec_t d);
/* Double -> decimal rounded to `digits` significant digits (15 as MongoDB's
 * default Decimal128(double), or 34). */
aspen_dec_t aspen__decimal_from_double(double d, int digits);
/* Rounds a decimal to `places` digits after the point (negative: before),
 * with mode 0 = half-even, 1 = toward zero, 2 = floor, 3 = ceiling (IEEE
 * quantize: pads with zeros, NaN when more than 34 digits would be needed). */
aspen_dec_t aspen__decimal_quantize(aspen_dec_t d, int places, int mode);
/* Decimal -> int64 truncating toward zero; false on NaN/inf/overflow. */
bool aspen__decimal_to_int64(aspen_dec_t d, int64_t *out);
/* Text form as MongoDB prints decimals. */
void aspen__decimal_to_string(aspen_dec_t d, char *buf, size_t len);

#endif /* ASPEN_ENGINE_LANG_DECIMAL_H */
