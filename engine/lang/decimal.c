/*
 * decimal.c - IEEE 754-2008 decimal128 arithmetic on BSON's BID encoding
 * (lang/decimal.h), for values (comparison) and the expression operators
 * and accumulators ($add, $subtract, $multiply, $divide, $round, $sum, ...),
 * and conversions to and from double, int64 and text. Written out in portable C (unsigned __int128
 * and a small 256-bit helper) rather than with GCC's _Decimal128, which clang
 * does not support, so every build of aspen (gcc, clang, libFuzzer) computes
 * the same results.
 *
 * Results are rounded half-to-even to 34 significant digits with IEEE's
 * preferred exponents (exact sums keep the smaller exponent, exact products
 * ea + eb, exact quotients as close to ea - eb as the digits allow), which
 * is what mongod's Decimal128 (Intel's library underneath) produces.
 * Pure functions; any thread.
 */
#include "lang/decimal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef unsigned __int128 u128;

#define EXP_BIAS 6176
#define EXP_MIN (-6176)
#define EXP_MAX 6111
#define MAX_DIGITS 34

/* ------------------------------------------------------------------------ */
/* 256-bit unsigned helpers (little-endian 64-bit limbs)                     */
/* ------------------------------------------------------------------------ */

typedef struct {
   uint64_t w[4];
} u256;

static u256
u256_from(u128 x)
{
   u256 r = {{(uint64_t) x, (uint64_t) (x >> 64), 0, 0}};
   return r;
}

static bool
u256_is_zero(const u256 *a)
{
   return !(a->w[0] | a->w[1] | a->w[2] | a->w[3]);
}

/* a = a * m + add (m, add < 2^64). */
static void
u256_muladd(u256 *a, uint64_t m, uint64_t add)
{
   u128 carry = add;
   for (int i = 0; i < 4; i++) {
      u128 t = (u128) a->w[i] * m + carry;
      a->w[i] = (uint64_t) t;
      carry = t >> 64;
   }
}

/* a /= d, returns the remainder (d < 2^64). */
static uint64_t
u256_divmod(u256 *a, uint64_t d)
{
   u128 rem = 0;
   for (int i = 3; i >= 0; i--) {
      u128 cur = (rem << 64) | a->w[i];
      a->w[i] = (uint64_t) (cur / d);
      rem = cur % d;
   }
   return (uint64_t) rem;
}

static u256
u256_mul(u128 a, u128 b)
{
   uint64_t x[2] = {(uint64_t) a, (uint64_t) (a >> 64)};
   uint64_t y[2] = {(uint64_t) b, (uint64_t) (b >> 64)};
   u256 r = {{0, 0, 0, 0}};
   for (int i = 0; i < 2; i++) {
      u128 carry = 0;
      for (int j = 0; j < 2; j++) {
         u128 t = (u128) x[i] * y[j] + r.w[i + j] + carry;
         r.w[i + j] = (uint64_t) t;
         carry = t >> 64;
      }
      r.w[i + 2] = (uint64_t) carry;
   }
   return r;
}

/* True when a >= b (b < 2^128). */
static bool
u256_ge(const u256 *a, u128 b)
{
   if (a->w[2] | a->w[3]) {
      return true;
   }
   u128 lo = ((u128) a->w[1] << 64) | a->w[0];
   return lo >= b;
}

static u128
u256_low(const u256 *a)
{
   return ((u128) a->w[1] << 64) | a->w[0];
}

static u128
pow10_u128(int k)
{
   u128 p = 1;
   while (k-- > 0) {
      p *= 10;
   }
   return p;
}

static int
digits_u128(u128 c)
{
   int n = 1;
   while (c >= 10) {
      c /= 10;
      n++;
   }
   return n;
}

/* ------------------------------------------------------------------------ */
/* Unpacked form                                                             */
/* ------------------------------------------------------------------------ */

enum { D_FINITE, D_INF, D_NAN };

typedef struct {
   int kind;
   bool neg;
   u128 coef;
   int exp;
} dnum;

static dnum
unpack(aspen_dec_t d)
{
   dnum x = {D_FINITE, (d.high >> 63) != 0, 0, 0};
   uint64_t comb = (d.high >> 58) & 0x1f;
   if (comb == 0x1f) {
      x.kind = D_NAN;
      return x;
   }
   if (comb == 0x1e) {
      x.kind = D_INF;
      return x;
   }
   if (((d.high >> 61) & 0x3) == 0x3) {
      /* Coefficient over 34 digits: non-canonical, reads as zero. */
      x.exp = (int) ((d.high >> 47) & 0x3fff) - EXP_BIAS;
      return x;
   }
   x.exp = (int) ((d.high >> 49) & 0x3fff) - EXP_BIAS;
   x.coef = ((u128) (d.high & 0x1ffffffffffffULL) << 64) | d.low;
   if (x.coef >= pow10_u128(MAX_DIGITS)) {
      x.coef = 0;
   }
   return x;
}

static aspen_dec_t
pack_raw(bool neg, u128 coef, int exp)
{
   aspen_dec_t d;
   d.low = (uint64_t) coef;
   d.high = ((uint64_t) (coef >> 64) & 0x1ffffffffffffULL) |
            ((uint64_t) (exp + EXP_BIAS) << 49) | (neg ? (1ULL << 63) : 0);
   return d;
}

static aspen_dec_t
special(int kind, bool neg)
{
   aspen_dec_t d;
   d.low = 0;
   d.high = (kind == D_NAN ? 0x7c00000000000000ULL : 0x7800000000000000ULL) |
            (neg && kind == D_INF ? (1ULL << 63) : 0);
   return d;
}

/* Rounds c * 10^exp (sticky: the exact value is a little more than c) to
 * 34 digits, half to even, and fits the exponent range. */
static aspen_dec_t
finish(bool neg, u256 c, int exp, bool sticky)
{
   const u128 limit = pow10_u128(MAX_DIGITS);
   int msd = 0; /* most significant dropped digit */
   bool dropped = false;
   while (u256_ge(&c, limit) || exp < EXP_MIN) {
      if (dropped && msd != 0) {
         sticky = true;
      }
      msd = (int) u256_divmod(&c, 10);
      dropped = true;
      exp++;
      if (u256_is_zero(&c) && exp > EXP_MAX) {
         break;
      }
   }
   u128 q = u256_low(&c);
   if (dropped) {
      bool up = msd > 5 || (msd == 5 && (sticky || (q & 1)));
      if (up) {
         q++;
         if (q == limit) {
            q /= 10;
            exp++;
         }
      }
   }
   if (exp > EXP_MAX) {
      /* Clamp by adding zeros when the digits allow it, else overflow. */
      while (exp > EXP_MAX && q != 0 && q * 10 < limit) {
         q *= 10;
         exp--;
      }
      if (q == 0) {
         exp = EXP_MAX;
      } else if (exp > EXP_MAX) {
         return special(D_INF, neg);
      }
   }
   return pack_raw(neg, q, exp);
}

static aspen_dec_t
nan_value(void)
{
   return special(D_NAN, false);
}

/* ------------------------------------------------------------------------ */
/* Public operations                                                         */
/* ------------------------------------------------------------------------ */

aspen_dec_t
aspen__decimal_from_int64(int64_t v)
{
   u128 c = v < 0 ? (u128) (-(v + 1)) + 1 : (u128) v;
   return pack_raw(v < 0, c, 0);
}

bool
aspen__decimal_is_nan(aspen_dec_t d)
{
   return unpack(d).kind == D_NAN;
}

bool
aspen__decimal_is_inf(aspen_dec_t d)
{
   return unpack(d).kind == D_INF;
}

bool
aspen__decimal_is_zero(aspen_dec_t d)
{
   dnum x = unpack(d);
   return x.kind == D_FINITE && x.coef == 0;
}

bool
aspen__decimal_is_neg(aspen_dec_t d)
{
   dnum x = unpack(d);
   return x.kind != D_NAN && x.neg && !(x.kind == D_FINITE && x.coef == 0);
}

aspen_dec_t
aspen__decimal_abs(aspen_dec_t d)
{
   d.high &= ~(1ULL << 63);
   return d;
}

double
aspen__decimal_to_double(aspen_dec_t d)
{
   char buf[BSON_DECIMAL128_STRING];
   bson_decimal128_to_string(&d, buf);
   if (strcmp(buf, "NaN") == 0) {
      return NAN;
   }
   if (strcmp(buf, "Infinity") == 0) {
      return INFINITY;
   }
   if (strcmp(buf, "-Infinity") == 0) {
      return -INFINITY;
   }
   return strtod(buf, NULL);
}

long double
aspen__decimal_to_ld(aspen_dec_t d)
{
   char buf[BSON_DECIMAL128_STRING];
   bson_decimal128_to_string(&d, buf);
   if (strcmp(buf, "NaN") == 0) {
      return NAN;
   }
   return strtold(buf, NULL); /* handles "Infinity" */
}

int
aspen__decimal_cmp(aspen_dec_t a, aspen_dec_t b)
{
   dnum x = unpack(a), y = unpack(b);
   if (x.kind == D_NAN || y.kind == D_NAN) {
      return x.kind == D_NAN ? (y.kind == D_NAN ? 0 : -1) : 1;
   }
   bool xz = x.kind == D_FINITE && x.coef == 0;
   bool yz = y.kind == D_FINITE && y.coef == 0;
   if (xz && yz) {
      return 0;
   }
   int xs = xz ? 0 : x.neg ? -1 : 1;
   int ys = yz ? 0 : y.neg ? -1 : 1;
   if (xs != ys) {
      return xs < ys ? -1 : 1;
   }
   /* Same sign, both nonzero: compare magnitudes. */
   int mag;
   if (x.kind == D_INF || y.kind == D_INF) {
      mag = x.kind == y.kind ? 0 : x.kind == D_INF ? 1 : -1;
   } else {
      int dx = digits_u128(x.coef), dy = digits_u128(y.coef);
      int ax = x.exp + dx, ay = y.exp + dy;
      if (ax != ay) {
         mag = ax < ay ? -1 : 1;
      } else {
         u128 cx = x.coef, cy = y.coef;
         if (dx < dy) {
            cx *= pow10_u128(dy - dx);
         } else {
            cy *= pow10_u128(dx - dy);
         }
         mag = cx < cy ? -1 : cx > cy ? 1 : 0;
      }
   }
   return xs < 0 ? -mag : mag;
}

static aspen_dec_t
add_signed(dnum x, dnum y)
{
   if (x.kind == D_NAN || y.kind == D_NAN) {
      return nan_value();
   }
   if (x.kind == D_INF || y.kind == D_INF) {
      if (x.kind == D_INF && y.kind == D_INF && x.neg != y.neg) {
         return nan_value();
      }
      return special(D_INF, x.kind == D_INF ? x.neg : y.neg);
   }
   if (x.coef == 0 && y.coef == 0) {
      int e = x.exp < y.exp ? x.exp : y.exp;
      return pack_raw(x.neg && y.neg, 0, e);
   }
   if (x.coef == 0) {
      /* 0 + y: y, at the smaller exponent when the digits allow. */
      int e = x.exp < y.exp ? x.exp : y.exp;
      u256 c = u256_from(y.coef);
      for (int i = y.exp; i > e && !u256_ge(&c, pow10_u128(MAX_DIGITS) / 10);
           i--) {
         u256_muladd(&c, 10, 0);
         y.exp--;
      }
      return finish(y.neg, c, y.exp, false);
   }
   if (y.coef == 0) {
      dnum t = x;
      x = y;
      y = t;
      return add_signed(x, y);
   }
   /* x gets the larger exponent. */
   if (x.exp < y.exp) {
      dnum t = x;
      x = y;
      y = t;
   }
   int shift = x.exp - y.exp;
   int room = 38 - digits_u128(x.coef); /* cx stays below 10^38 < 2^128 */
   int up = shift < room ? shift : room;
   u256 cx = u256_from(x.coef);
   for (int i = 0; i < up; i++) {
      u256_muladd(&cx, 10, 0);
   }
   int r = shift - up;
   u128 cy = y.coef;
   bool sticky = false;
   if (r > 0) {
      if (r > 36) {
         sticky = cy != 0;
         cy = 0;
      } else {
         u128 p = pow10_u128(r);
         sticky = cy % p != 0;
         cy /= p;
      }
   }
   int exp = x.exp - up;
   u256 c;
   bool neg;
   if (x.neg == y.neg) {
      c = cx;
      u256 add = u256_from(cy);
      /* c += add */
      u128 carry = 0;
      for (int i = 0; i < 4; i++) {
         u128 t = (u128) c.w[i] + add.w[i] + carry;
         c.w[i] = (uint64_t) t;
         carry = t >> 64;
      }
      neg = x.neg;
   } else {
      /* |x| >= |y| whenever r > 0; otherwise compare exactly. cx < 10^40
       * fits in 128 bits. */
      u128 a = u256_low(&cx), b = cy;
      if (a >= b) {
         u128 diff = a - b;
         if (sticky) {
            diff -= 1; /* the exact value is diff - epsilon */
         }
         c = u256_from(diff);
         neg = x.neg;
      } else {
         c = u256_from(b - a);
         neg = y.neg;
      }
      if (u256_is_zero(&c) && !sticky) {
         /* Exact cancellation: +0 (round half even), smaller exponent. */
         return pack_raw(false, 0, exp);
      }
   }
   return finish(neg, c, exp, sticky);
}

aspen_dec_t
aspen__decimal_add(aspen_dec_t a, aspen_dec_t b)
{
   return add_signed(unpack(a), unpack(b));
}

aspen_dec_t
aspen__decimal_sub(aspen_dec_t a, aspen_dec_t b)
{
   dnum y = unpack(b);
   if (y.kind != D_NAN) {
      y.neg = !y.neg;
   }
   return add_signed(unpack(a), y);
}

aspen_dec_t
aspen__decimal_mul(aspen_dec_t a, aspen_dec_t b)
{
   dnum x = unpack(a), y = unpack(b);
   bool neg = x.neg != y.neg;
   if (x.kind == D_NAN || y.kind == D_NAN) {
      return nan_value();
   }
   if (x.kind == D_INF || y.kind == D_INF) {
      if ((x.kind == D_FINITE && x.coef == 0) ||
          (y.kind == D_FINITE && y.coef == 0)) {
         return nan_value();
      }
      return special(D_INF, neg);
   }
   u256 c = u256_mul(x.coef, y.coef);
   int exp = x.exp + y.exp;
   if (u256_is_zero(&c)) {
      if (exp < EXP_MIN) {
         exp = EXP_MIN;
      } else if (exp > EXP_MAX) {
         exp = EXP_MAX;
      }
      return pack_raw(neg, 0, exp);
   }
   return finish(neg, c, exp, false);
}

/* Divides the 256-bit n by d (d != 0, d < 2^127); returns the quotient and
 * sets *rem_nonzero. */
static u256
u256_div_u128(u256 n, u128 d, bool *rem_nonzero)
{
   u256 q = {{0, 0, 0, 0}};
   u128 rem = 0;
   for (int bit = 255; bit >= 0; bit--) {
      rem = (rem << 1) | ((n.w[bit / 64] >> (bit % 64)) & 1);
      if (rem >= d) {
         rem -= d;
         q.w[bit / 64] |= 1ULL << (bit % 64);
      }
   }
   *rem_nonzero = rem != 0;
   return q;
}

aspen_dec_t
aspen__decimal_div(aspen_dec_t a, aspen_dec_t b)
{
   dnum x = unpack(a), y = unpack(b);
   bool neg = x.neg != y.neg;
   if (x.kind == D_NAN || y.kind == D_NAN) {
      return nan_value();
   }
   if (x.kind == D_INF) {
      return y.kind == D_INF ? nan_value() : special(D_INF, neg);
   }
   if (y.kind == D_INF) {
      return pack_raw(neg, 0, EXP_MIN);
   }
   if (y.coef == 0) {
      return x.coef == 0 ? nan_value() : special(D_INF, neg);
   }
   int pref = x.exp - y.exp;
   if (x.coef == 0) {
      if (pref < EXP_MIN) {
         pref = EXP_MIN;
      } else if (pref > EXP_MAX) {
         pref = EXP_MAX;
      }
      return pack_raw(neg, 0, pref);
   }
   /* Scale the dividend so the quotient has at least 36 digits. */
   int k = 37 + digits_u128(y.coef) - digits_u128(x.coef);
   if (k < 0) {
      k = 0;
   }
   u256 n = u256_from(x.coef);
   for (int i = 0; i < k; i++) {
      u256_muladd(&n, 10, 0);
   }
   bool inexact;
   u256 q = u256_div_u128(n, y.coef, &inexact);
   int exp = pref - k;
   if (!inexact) {
      /* Exact: strip zeros back toward the preferred exponent. */
      while (exp < pref && !u256_is_zero(&q)) {
         u256 t = q;
         if (u256_divmod(&t, 10) != 0) {
            break;
         }
         q = t;
         exp++;
      }
   }
   return finish(neg, q, exp, inexact);
}

/* Square root: Newton's iteration in decimal from the double estimate; an
 * exact root takes the preferred exponent floor(exp / 2). */
aspen_dec_t
aspen__decimal_sqrt(aspen_dec_t a)
{
   dnum x = unpack(a);
   if (x.kind != D_FINITE || x.coef == 0) {
      return a;
   }
   aspen_dec_t g =
      aspen__decimal_from_double(sqrt(aspen__decimal_to_double(a)), 17);
   if (aspen__decimal_is_zero(g) || aspen__decimal_is_inf(g)) {
      /* Out of double range: start from 10^(adjusted exponent / 2). */
      int adj = x.exp + digits_u128(x.coef) - 1;
      g = pack_raw(false, 1, adj / 2);
   }
   aspen_dec_t two = aspen__decimal_from_int64(2);
   for (int i = 0; i < 12; i++) {
      aspen_dec_t next = aspen__decimal_div(
         aspen__decimal_add(g, aspen__decimal_div(a, g)), two);
      if (aspen__decimal_cmp(next, g) == 0) {
         break;
      }
      g = next;
   }
   int pref = x.exp >= 0 ? x.exp / 2 : -((-x.exp + 1) / 2);
   aspen_dec_t q = aspen__decimal_quantize(g, -pref, 0);
   if (!aspen__decimal_is_nan(q) &&
       aspen__decimal_cmp(aspen__decimal_mul(q, q), a) == 0) {
      return q;
   }
   return g;
}

/* ------------------------------------------------------------------------ */
/* Conversions and quantize                                                  */
/* ------------------------------------------------------------------------ */

aspen_dec_t
aspen__decimal_from_double(double d, int digits)
{
   char buf[64];
   bson_decimal128_t bd;
   if (isnan(d)) {
      bson_decimal128_from_string("NaN", &bd);
   } else if (isinf(d)) {
      bson_decimal128_from_string(d < 0 ? "-Infinity" : "Infinity", &bd);
   } else {
      snprintf(buf, sizeof buf, "%.*e", digits - 1, d);
      if (!bson_decimal128_from_string(buf, &bd)) {
         bson_decimal128_from_string("NaN", &bd);
      }
   }
   return aspen__decimal_from_bson(&bd);
}

void
aspen__decimal_to_string(aspen_dec_t d, char *buf, size_t len)
{
   char tmp[BSON_DECIMAL128_STRING];
   bson_decimal128_t bd = aspen__decimal_to_bson(d);
   bson_decimal128_to_string(&bd, tmp);
   snprintf(buf, len, "%s", tmp);
}

/* BID decoding of a finite decimal: sign, 113-bit coefficient, exponent. */
static bool
dec_decode(aspen_dec_t d, bool *neg, unsigned __int128 *coef, int *exp)
{
   bson_decimal128_t bd = aspen__decimal_to_bson(d);
   uint64_t hi = bd.high, lo = bd.low;
   *neg = (hi >> 63) != 0;
   if (((hi >> 58) & 0x1f) == 0x1f || ((hi >> 58) & 0x1f) == 0x1e) {
      return false; /* NaN or infinity */
   }
   if (((hi >> 61) & 0x3) == 0x3) {
      /* Coefficient would exceed 34 digits: non-canonical, reads as 0. */
      *exp = (int) ((hi >> 47) & 0x3fff) - 6176;
      *coef = 0;
      return true;
   }
   *exp = (int) ((hi >> 49) & 0x3fff) - 6176;
   *coef = ((unsigned __int128) (hi & 0x1ffffffffffffULL) << 64) | lo;
   return true;
}

static const unsigned __int128 DEC_MAX_COEF =
   (unsigned __int128) 10000000000000000ULL * 10000000000000000ULL * 100ULL;

/* IEEE 754 quantize to exponent -places: rounds when digits are dropped,
 * pads with zeros when the exponent grows smaller, NaN when the result would
 * need more than 34 digits. */
aspen_dec_t
aspen__decimal_quantize(aspen_dec_t d, int places, int mode)
{
   bool neg;
   unsigned __int128 coef;
   int exp;
   if (!dec_decode(d, &neg, &coef, &exp)) {
      return d;
   }
   int target = -places;
   if (exp == target) {
      return d;
   }
   if (exp > target) {
      int shift = exp - target;
      for (int i = 0; i < shift; i++) {
         coef *= 10;
         if (coef >= DEC_MAX_COEF) {
            return coef == 0 ? pack_raw(neg, 0, target) : nan_value();
         }
      }
      return pack_raw(neg, coef, target);
   }
   int shift = target - exp;
   unsigned __int128 q, r;
   bool below_half = true, exactly_half = false;
   if (shift > 36) {
      q = 0;
      r = coef;
      /* coef < 10^34 <= 10^shift / 100: strictly below half. */
   } else {
      unsigned __int128 p = 1;
      for (int i = 0; i < shift; i++) {
         p *= 10;
      }
      q = coef / p;
      r = coef % p;
      below_half = r < p / 2;
      exactly_half = r == p / 2;
   }
   bool up = false;
   if (r != 0) {
      switch (mode) {
      case 0:
         up = !below_half && !(exactly_half && !(q & 1));
         break;
      case 1:
         up = false;
         break;
      case 2:
         up = neg;
         break;
      default:
         up = !neg;
         break;
      }
   }
   if (up) {
      q++;
   }
   if (q >= DEC_MAX_COEF) {
      return nan_value();
   }
   return pack_raw(neg, q, target);
}

bool
aspen__decimal_to_int64(aspen_dec_t d, int64_t *out)
{
   bool neg;
   unsigned __int128 coef;
   int exp;
   *out = 0;
   if (!dec_decode(d, &neg, &coef, &exp)) {
      return false;
   }
   if (exp >= 0) {
      for (int i = 0; i < exp && coef != 0; i++) {
         coef *= 10;
         if (coef > ((unsigned __int128) 1 << 64)) {
            return false;
         }
      }
   } else {
      for (int i = 0; i < -exp && coef != 0; i++) {
         coef /= 10;
      }
   }
   if (neg) {
      if (coef > (unsigned __int128) INT64_MAX + 1) {
         return false;
      }
      *out = (int64_t) (0 - (uint64_t) coef);
   } else {
      if (coef > (unsigned __int128) INT64_MAX) {
         return false;
      }
      *out = (int64_t) coef;
   }
   return true;
}
