/*
 * accum.c - $group accumulators (accum.h): the operator table, argument
 * parsing with mongod's messages and codes, and the per-group states the
 * windows (window.c) create, feed one document at a time and read when the
 * window closes.
 *
 * Each operator is a row of one table: its parser and the ops of its state
 * family (init, add, result, size, cleanup), much as stages are vtables. A
 * state is one allocation of the family's fixed size, plus whatever values
 * the family must keep to build its result: $push/$addToSet/$firstN/... own
 * copies of the values they will return (never the whole input document),
 * $median/$percentile keep the numbers as doubles, the others keep
 * aggregates only. Every kept value is made self-contained
 * (aspen__value_own) since input documents live only for the add call.
 *
 * The expression helpers come from expr_int.h (value views, MongoDB's
 * comparison with MISSING ranked low, decimal arithmetic, pre-split field
 * paths), so accumulators and expressions agree on types and order.
 *
 * Thread-safety: a parsed aspen_accum_t is immutable and may be shared by
 * threads; a state belongs to the thread that feeds it.
 */
#include "lang/accum.h"

#include "lang/expr_int.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct acc_op acc_op_t;

/* What an add function gets besides the state and the value: the
 * accumulator, the document (sortBy reads more of it) and where to put an
 * error. */
typedef struct {
   const aspen_accum_t *acc;
   const aspen_expr_ctx_t *ctx;
   aspen_error_t *err;
} add_call_t;

/* One sortBy field of $top/$bottom/$topN/$bottomN. */
typedef struct {
   char *path;   /* the dotted path (to refuse duplicates) */
   char **parts; /* the path split at dots */
   uint32_t n_parts;
   int dir; /* 1 ascending, -1 descending */
} sort_part_t;

struct aspen_accum {
   const acc_op_t *op;
   aspen_expr_t *arg; /* the argument (output/input); NULL for $count */
   int64_t n;         /* $firstN ... $bottomN; 1 for $top/$bottom */
   sort_part_t *sort; /* $top ... $bottomN */
   uint32_t n_sort;
   double *ps; /* $percentile's p (one 0.5 for $median) */
   uint32_t n_ps;
};

struct acc_op {
   const char *name;
   int sub; /* variant within the family (see each family) */
   bool (*parse)(aspen_accum_t *acc, const bson_iter_t *spec,
                 aspen_error_t *err);
   size_t size; /* bytes of the family's state */
   void (*init)(void *st);
   /* Optional: true once further documents cannot change the result, so
    * the argument need not be evaluated ($first, a full $firstN). */
   bool (*is_done)(const aspen_accum_t *acc, const void *st);
   /* Absorbs `val` (it may steal it, leaving MISSING). */
   bool (*add)(const add_call_t *call, void *st, aspen_value_t *val);
   void (*result)(const aspen_accum_t *acc, const void *st, bson_t *out,
                  const char *key);
   /* Optional: bytes held beyond `size`; frees what the state holds. */
   size_t (*heap_size)(const aspen_accum_t *acc, const void *st);
   void (*cleanup)(const aspen_accum_t *acc, void *st);
   /* Optional: refuses a value `add` cannot take, before any state of the
    * document's group has changed; `add` itself never fails. */
   bool (*check)(const aspen_value_t *val, aspen_error_t *err);
};

/* ======================================================================== */
/* Shared helpers                                                            */
/* ======================================================================== */

/* Heap bytes an owned value holds (0 for scalars and borrowed views). */
static size_t
value_heap(const aspen_value_t *val)
{
   if (!val->owned) {
      return 0;
   }
   const bson_value_t *v = &val->v;
   switch (v->value_type) {
   case BSON_TYPE_UTF8:
      return v->value.v_utf8.len + 1u;
   case BSON_TYPE_SYMBOL:
      return v->value.v_symbol.len + 1u;
   case BSON_TYPE_CODE:
      return v->value.v_code.code_len + 1u;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      return v->value.v_doc.data_len;
   case BSON_TYPE_BINARY:
      return v->value.v_binary.data_len;
   case BSON_TYPE_REGEX:
      return strlen(v->value.v_regex.regex) +
             strlen(v->value.v_regex.options) + 2u;
   case BSON_TYPE_CODEWSCOPE:
      return v->value.v_codewscope.code_len + 1u +
             v->value.v_codewscope.scope_len;
   case BSON_TYPE_DBPOINTER:
      return v->value.v_dbpointer.collection_len + 1u;
   default:
      return 0;
   }
}

/* Moves *src into *dst as a self-contained value; *src is left MISSING so
 * the caller's aspen_value_destroy is a no-op. */
static void
value_take(aspen_value_t *dst, aspen_value_t *src)
{
   *dst = *src;
   aspen__value_own(dst);
   *src = ASPEN_VALUE_MISSING;
}

/* Appends `val` under `key`, or null when there is none (NULL): a group
 * field always has a value. */
static void
append_one(bson_t *out, const char *key, const aspen_value_t *val)
{
   if (val) {
      aspen_value_append(out, key, -1, val);
   } else {
      bson_append_null(out, key, -1);
   }
}

/* The next capacity for a vector that holds at most `max` items. */
static uint32_t
grow_cap(uint32_t cap, int64_t max)
{
   int64_t want = cap ? (int64_t) cap * 2 : 4;
   if (max > 0 && want > max) {
      want = max;
   }
   /* Past 2^31 kept values the slots alone take tens of GiB: memory runs
    * out long before input can reach this. */
   ASPEN_ASSERT(want <= (int64_t) UINT32_MAX);
   return (uint32_t) want;
}

/* Binary search of `n` ordered items: the first index whose item compares
 * above `floor` with the probe (cmp(ctx, i) > floor). Floor -1 finds the
 * first item not below the probe, floor 0 the first after it (past equal
 * items, where a multiset inserts, so equal items keep arrival order). */
static uint32_t
search(uint32_t n, int floor, int (*cmp)(const void *ctx, uint32_t i),
       const void *ctx)
{
   uint32_t lo = 0, hi = n;
   while (lo < hi) {
      uint32_t mid = lo + (hi - lo) / 2;
      if (cmp(ctx, mid) > floor) {
         hi = mid;
      } else {
         lo = mid + 1;
      }
   }
   return lo;
}

/* "name: <json>" of a value, for mongod's "found <element>" messages. */
static void
set_not_object(aspen_error_t *err, int32_t code, const char *name,
               const bson_iter_t *spec)
{
   aspen_value_t v = aspen_value_borrow(spec);
   char *json = aspen_value_to_json(&v);
   aspen_error_set(err, code, "specification must be an object; found %s: %s",
                   name, json);
   bson_free(json);
}

/* ======================================================================== */
/* $sum $avg $count                                                          */
/* ======================================================================== */

/* sub: SUM_TOTAL ($sum, $count) or SUM_AVG. */
enum { SUM_TOTAL, SUM_AVG };
/* The widest numeric type absorbed, in MongoDB's widening order. */
enum { WIDE_INT, WIDE_LONG, WIDE_DOUBLE, WIDE_DEC };

/* A double-double running sum as mongod's DoubleDoubleSummation: `hi` is
 * the sum rounded to a double, `lo` what rounding lost, `plain` the naive
 * sum that stands in when infinities turn `hi` into NaN. */
typedef struct {
   double hi, lo, plain;
} ddsum_t;

static void
ddsum_add(ddsum_t *s, double x)
{
   s->plain += x;
   /* Fast2Sum of x and the small part (|lo| is tiny), then 2Sum into the
    * large part, whose error goes back into the small part. */
   double a = x + s->lo;
   s->lo = s->lo - (a - x);
   double t = s->hi + a;
   double hi_part = t - a;
   double a_part = t - hi_part;
   double err = (s->hi - hi_part) + (a - a_part);
   s->hi = t;
   s->lo += err;
}

static double
ddsum_value(const ddsum_t *s)
{
   return isnan(s->hi) ? s->plain : s->hi;
}

typedef struct {
   int wide;
   int64_t count;   /* numbers absorbed ($avg's divisor) */
   __int128 ints;   /* exact sum of the int32/int64 inputs */
   ddsum_t dbl;     /* the double inputs */
   aspen_dec_t dec; /* the decimal inputs */
} sum_state_t;

static void
sum_init(void *st)
{
   sum_state_t *s = st;
   s->dec = aspen__decimal_from_int64(0);
}

static bool
sum_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   (void) call;
   sum_state_t *s = st;
   int wide;
   switch (aspen__vt(val)) {
   case BSON_TYPE_INT32:
      s->ints += val->v.value.v_int32;
      wide = WIDE_INT;
      break;
   case BSON_TYPE_INT64:
      s->ints += val->v.value.v_int64;
      wide = WIDE_LONG;
      break;
   case BSON_TYPE_DOUBLE:
      ddsum_add(&s->dbl, val->v.value.v_double);
      wide = WIDE_DOUBLE;
      break;
   case BSON_TYPE_DECIMAL128:
      s->dec = aspen__decimal_add(s->dec, val->v.value.v_decimal128);
      wide = WIDE_DEC;
      break;
   default:
      return true; /* non-numbers are ignored */
   }
   if (wide > s->wide) {
      s->wide = wide;
   }
   s->count++;
   return true;
}

static bool
sum_ints_fit_long(const sum_state_t *s)
{
   return s->ints >= INT64_MIN && s->ints <= INT64_MAX;
}

/* The non-decimal total as a double: the integer part split in two
 * doubles (exact below 2^106) folded into the double-double sum. */
static double
sum_double(const sum_state_t *s)
{
   ddsum_t t = s->dbl;
   double high = (double) s->ints;
   ddsum_add(&t, (double) (s->ints - (__int128) high));
   ddsum_add(&t, high);
   return ddsum_value(&t);
}

/* The whole total as a decimal: decimals plus the exact integer part plus
 * the double part rounded to 34 digits (as mongod's getDecimal). */
static aspen_dec_t
sum_decimal(const sum_state_t *s)
{
   aspen_dec_t d = s->dec;
   if (s->ints != 0) {
      /* Exact: split at 10^18 so both halves fit an int64 (the high half
       * does for any sum of fewer than 10^18 inputs). */
      const int64_t half = 1000000000000000000; /* 10^18 */
      __int128 high = s->ints / half;
      aspen_dec_t low = aspen__decimal_from_int64((int64_t) (s->ints % half));
      aspen_dec_t whole =
         high == 0
            ? low
            : aspen__decimal_add(
                 aspen__decimal_mul(aspen__decimal_from_int64((int64_t) high),
                                    aspen__decimal_from_int64(half)),
                 low);
      d = aspen__decimal_add(d, whole);
   }
   if (!isfinite(s->dbl.hi)) {
      d = aspen__decimal_add(d, aspen__decimal_from_double(s->dbl.plain, 34));
   } else if (s->dbl.hi != 0 || s->dbl.lo != 0) {
      d = aspen__decimal_add(d, aspen__decimal_from_double(s->dbl.hi, 34));
      if (s->dbl.lo != 0) {
         d = aspen__decimal_add(d, aspen__decimal_from_double(s->dbl.lo, 34));
      }
   }
   return d;
}

static void
sum_result(const aspen_accum_t *acc, const void *st, bson_t *out,
           const char *key)
{
   const sum_state_t *s = st;
   if (acc->op->sub == SUM_AVG) {
      if (s->count == 0) {
         bson_append_null(out, key, -1);
      } else if (s->wide == WIDE_DEC) {
         bson_decimal128_t q = aspen__decimal_div(
            sum_decimal(s), aspen__decimal_from_int64(s->count));
         bson_append_decimal128(out, key, -1, &q);
      } else {
         bson_append_double(out, key, -1, sum_double(s) / (double) s->count);
      }
      return;
   }
   /* int and long sums stay integral while they fit a long (an int sum
    * that left int32 becomes a long); past that they become a double. */
   if (s->wide == WIDE_DEC) {
      bson_decimal128_t d = sum_decimal(s);
      bson_append_decimal128(out, key, -1, &d);
   } else if (s->wide == WIDE_DOUBLE || !sum_ints_fit_long(s)) {
      bson_append_double(out, key, -1, sum_double(s));
   } else if (s->wide == WIDE_INT && s->ints >= INT32_MIN &&
              s->ints <= INT32_MAX) {
      bson_append_int32(out, key, -1, (int32_t) s->ints);
   } else {
      bson_append_int64(out, key, -1, (int64_t) s->ints);
   }
}

/* ======================================================================== */
/* $stdDevPop $stdDevSamp                                                    */
/* ======================================================================== */

/* sub: the count subtracted from n (0 for the population, 1 for a sample). */
typedef struct {
   int64_t n;
   double mean, m2; /* Welford's running mean and sum of squared deltas */
} stddev_state_t;

static bool
stddev_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   (void) call;
   stddev_state_t *s = st;
   if (!aspen__is_num(val)) {
      return true;
   }
   double x = aspen__num_to_double(val);
   s->n++;
   double before = x - s->mean;
   if (before != 0.0) {
      s->mean += before / (double) s->n;
      s->m2 += before * (x - s->mean);
   }
   return true;
}

static void
stddev_result(const aspen_accum_t *acc, const void *st, bson_t *out,
              const char *key)
{
   const stddev_state_t *s = st;
   int64_t df = s->n - acc->op->sub;
   if (df <= 0) {
      bson_append_null(out, key, -1);
   } else {
      bson_append_double(out, key, -1, sqrt(s->m2 / (double) df));
   }
}

/* ======================================================================== */
/* $first $last $min $max $push $addToSet $firstN $lastN $minN $maxN        */
/* ======================================================================== */

/* These keep values, and share one state: a vector of owned values, read
 * back as one value (the first four) or as an array. The operator's `sub`
 * says which it is. $mergeObjects (below) uses it too. */
enum {
   V_FIRST, /* the first value, missing kept as null */
   V_LAST,  /* the latest value, missing kept as null */
   V_MIN,   /* the smallest non-nullish value (null if none) */
   V_MAX,   /* the largest non-nullish value */
   V_PUSH,  /* every non-missing value, in arrival order */
   V_SET,   /* distinct non-missing values, in first-arrival order */
   V_FIRST_N,
   V_LAST_N,
   V_MIN_N,
   V_MAX_N,
   V_MERGE, /* $mergeObjects: values with their field names */
};

typedef struct {
   aspen_value_t *v;
   uint32_t len, cap;
   size_t heap;      /* bytes the values hold */
   uint32_t start;   /* $lastN: the oldest slot once the ring is full */
   uint32_t *sorted; /* $addToSet: indexes into v, in value order */
   char **keys;      /* $mergeObjects: the field name of each value */
} vals_t;

/* Inserts (stealing) *val at position `pos`; the vector never grows past
 * `max` slots (0: no limit). */
static void
vals_insert(vals_t *vs, uint32_t pos, aspen_value_t *val, int64_t max)
{
   if (vs->len == vs->cap) {
      vs->cap = grow_cap(vs->cap, max);
      vs->v = aspen_xrealloc(vs->v, vs->cap * sizeof *vs->v);
   }
   memmove(vs->v + pos + 1, vs->v + pos, (vs->len - pos) * sizeof *vs->v);
   value_take(&vs->v[pos], val);
   vs->heap += value_heap(&vs->v[pos]);
   vs->len++;
}

/* Replaces (stealing) the value at `pos`. */
static void
vals_replace(vals_t *vs, uint32_t pos, aspen_value_t *val)
{
   vs->heap -= value_heap(&vs->v[pos]);
   aspen_value_destroy(&vs->v[pos]);
   value_take(&vs->v[pos], val);
   vs->heap += value_heap(&vs->v[pos]);
}

static void
vals_remove(vals_t *vs, uint32_t pos)
{
   vs->heap -= value_heap(&vs->v[pos]);
   aspen_value_destroy(&vs->v[pos]);
   memmove(vs->v + pos, vs->v + pos + 1,
           (vs->len - pos - 1) * sizeof *vs->v);
   vs->len--;
}

static void
vals_cleanup(const aspen_accum_t *acc, void *st)
{
   (void) acc;
   vals_t *vs = st;
   for (uint32_t i = 0; i < vs->len; i++) {
      aspen_value_destroy(&vs->v[i]);
      if (vs->keys) {
         bson_free(vs->keys[i]);
      }
   }
   free(vs->v);
   free(vs->sorted);
   free(vs->keys);
}

static size_t
vals_heap_size(const aspen_accum_t *acc, const void *st)
{
   (void) acc;
   const vals_t *vs = st;
   return vs->cap * (sizeof *vs->v + (vs->sorted ? sizeof *vs->sorted : 0) +
                     (vs->keys ? sizeof *vs->keys : 0)) +
          vs->heap;
}

static bool
vals_is_done(const aspen_accum_t *acc, const void *st)
{
   const vals_t *vs = st;
   switch (acc->op->sub) {
   case V_FIRST:
      return vs->len == 1;
   case V_FIRST_N:
      return (int64_t) vs->len == acc->n;
   default:
      return false;
   }
}

/* A value compared with the vector's items, for search(). */
typedef struct {
   const vals_t *vs;
   const aspen_value_t *val;
} vals_probe_t;

static int
cmp_item(const void *ctx, uint32_t i)
{
   const vals_probe_t *pr = ctx;
   return aspen_value_compare(&pr->vs->v[i], pr->val);
}

static int
cmp_sorted_item(const void *ctx, uint32_t i)
{
   const vals_probe_t *pr = ctx;
   return aspen_value_compare(&pr->vs->v[pr->vs->sorted[i]], pr->val);
}

/* $first $last $min $max: at most one value. Equal values do not replace
 * the kept one, as in mongod ($min of 1 then 1.0 stays the int). */
/* aspen_value_compare for two doubles that are not NaN, or two int32 or
 * two int64 (the usual $min/$max inputs); false for anything else. */
static inline bool
same_type_compare(const aspen_value_t *a, const aspen_value_t *b, int *c)
{
   bson_type_t t = a->v.value_type;
   if (t != b->v.value_type) {
      return false;
   }
   switch (t) {
   case BSON_TYPE_DOUBLE: {
      double x = a->v.value.v_double, y = b->v.value.v_double;
      if (x != x || y != y) {
         return false; /* NaN: the general order */
      }
      *c = x < y ? -1 : x > y ? 1 : 0;
      return true;
   }
   case BSON_TYPE_INT32:
      *c = a->v.value.v_int32 < b->v.value.v_int32   ? -1
           : a->v.value.v_int32 > b->v.value.v_int32 ? 1
                                                     : 0;
      return true;
   case BSON_TYPE_INT64:
      *c = a->v.value.v_int64 < b->v.value.v_int64   ? -1
           : a->v.value.v_int64 > b->v.value.v_int64 ? 1
                                                     : 0;
      return true;
   default:
      return false;
   }
}

static bool
one_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   const aspen_accum_t *acc = call->acc;
   vals_t *vs = st;
   int kind = acc->op->sub;
   aspen_value_t null_val = {.v = {.value_type = BSON_TYPE_NULL}};
   if (kind == V_MIN || kind == V_MAX) {
      if (aspen__is_nullish(val)) {
         return true;
      }
      int c = 0;
      if (vs->len && !same_type_compare(val, &vs->v[0], &c)) {
         c = aspen_value_compare(val, &vs->v[0]);
      }
      if (vs->len && (kind == V_MIN ? c >= 0 : c <= 0)) {
         return true;
      }
   } else if (kind == V_FIRST && vs->len) {
      return true;
   } else if (aspen_value_is_missing(val)) {
      val = &null_val;
   }
   if (vs->len) {
      vals_replace(vs, 0, val);
   } else {
      vals_insert(vs, 0, val, 1);
   }
   return true;
}

static bool
push_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   (void) call;
   vals_t *vs = st;
   if (!aspen_value_is_missing(val)) {
      vals_insert(vs, vs->len, val, 0);
   }
   return true;
}

/* $addToSet: a binary search of `sorted` (aspen_value_compare, whose 0 is
 * aspen_value_equal) finds duplicates; values stay in arrival order, one
 * of the orders MongoDB allows, and deterministic. */
static bool
add_to_set_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   (void) call;
   vals_t *vs = st;
   if (aspen_value_is_missing(val)) {
      return true;
   }
   vals_probe_t pr = {vs, val};
   uint32_t lo = search(vs->len, -1, cmp_sorted_item, &pr);
   if (lo < vs->len && cmp_sorted_item(&pr, lo) == 0) {
      return true; /* already in the set */
   }
   uint32_t cap = vs->cap;
   vals_insert(vs, vs->len, val, 0);
   if (vs->cap != cap) {
      vs->sorted = aspen_xrealloc(vs->sorted, vs->cap * sizeof *vs->sorted);
   }
   memmove(vs->sorted + lo + 1, vs->sorted + lo,
           (vs->len - 1 - lo) * sizeof *vs->sorted);
   vs->sorted[lo] = vs->len - 1;
   return true;
}

/* $firstN $lastN: at most n values, missing kept as null. $firstN stops
 * taking input when full (vals_is_done); $lastN then overwrites its oldest
 * value, as a ring. The ring only wraps once full, and the capacity never
 * exceeds n, so it is exactly n slots then. */
static bool
ring_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   const aspen_accum_t *acc = call->acc;
   vals_t *vs = st;
   aspen_value_t null_val = aspen_value_null();
   if (aspen_value_is_missing(val)) {
      val = &null_val;
   }
   if ((int64_t) vs->len < acc->n) {
      vals_insert(vs, vs->len, val, acc->n);
   } else {
      vals_replace(vs, vs->start, val);
      vs->start = (vs->start + 1) % vs->len;
   }
   return true;
}

/* $minN $maxN: at most n non-nullish values in ascending order. When full,
 * $minN drops its largest for a smaller newcomer and $maxN its smallest
 * for a larger one, as mongod's multiset does; $maxN reads backwards. */
static bool
extreme_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   const aspen_accum_t *acc = call->acc;
   vals_t *vs = st;
   bool is_max = acc->op->sub == V_MAX_N;
   if (aspen__is_nullish(val)) {
      return true;
   }
   if ((int64_t) vs->len == acc->n) {
      uint32_t worst = is_max ? 0 : vs->len - 1;
      int c = aspen_value_compare(&vs->v[worst], val);
      if (is_max ? c >= 0 : c <= 0) {
         return true;
      }
      vals_remove(vs, worst);
   }
   vals_probe_t pr = {vs, val};
   vals_insert(vs, search(vs->len, 0, cmp_item, &pr), val, acc->n);
   return true;
}

static void
vals_result(const aspen_accum_t *acc, const void *st, bson_t *out,
            const char *key)
{
   const vals_t *vs = st;
   int kind = acc->op->sub;
   if (kind <= V_MAX) {
      append_one(out, key, vs->len ? &vs->v[0] : NULL);
      return;
   }
   bson_t arr;
   bson_append_array_begin(out, key, -1, &arr);
   for (uint32_t i = 0; i < vs->len; i++) {
      uint32_t at = kind == V_MAX_N ? vs->len - 1 - i
                                    : (vs->start + i) % vs->len;
      aspen__array_append(&arr, i, &vs->v[at]);
   }
   bson_append_array_end(out, &arr);
}

/* ======================================================================== */
/* $mergeObjects                                                             */
/* ======================================================================== */

/* The merged document as values with field names (vals_t's keys), in
 * first-seen order; a later value for a field replaces the earlier one in
 * place, as mongod's setField does. */
static void
merge_set(vals_t *vs, const char *key, uint32_t key_len, aspen_value_t *val)
{
   for (uint32_t i = 0; i < vs->len; i++) {
      if (strcmp(vs->keys[i], key) == 0) {
         vals_replace(vs, i, val);
         return;
      }
   }
   uint32_t cap = vs->cap;
   vals_insert(vs, vs->len, val, 0);
   if (vs->cap != cap) {
      vs->keys = aspen_xrealloc(vs->keys, vs->cap * sizeof *vs->keys);
   }
   vs->keys[vs->len - 1] = bson_strndup(key, key_len);
   vs->heap += key_len + 1u;
}

static bool
merge_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   (void) call;
   vals_t *vs = st;
   if (!aspen__is_doc(val)) { /* null or missing: the check let it by */
      return true;
   }
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, val->v.value.v_doc.data,
                                 val->v.value.v_doc.data_len)) {
      return true;
   }
   while (bson_iter_next(&it)) {
      aspen_value_t field = aspen_value_borrow(&it);
      merge_set(vs, bson_iter_key(&it), bson_iter_key_len(&it), &field);
   }
   return true;
}

static void
merge_result(const aspen_accum_t *acc, const void *st, bson_t *out,
             const char *key)
{
   (void) acc;
   const vals_t *vs = st;
   bson_t doc;
   bson_append_document_begin(out, key, -1, &doc);
   for (uint32_t i = 0; i < vs->len; i++) {
      aspen_value_append(&doc, vs->keys[i], -1, &vs->v[i]);
   }
   bson_append_document_end(out, &doc);
}

/* ======================================================================== */
/* $median $percentile                                                       */
/* ======================================================================== */

/* The numeric inputs as doubles (NaN dropped, as the t-digest drops it).
 * "approximate" is answered exactly: the discrete percentile of the kept
 * values, which is what mongod's t-digest gives on small inputs and is
 * within any approximation bound. sub: 1 for $median (a scalar result). */
typedef struct {
   double *x;
   uint32_t len, cap;
} quantile_state_t;

static void
quantile_cleanup(const aspen_accum_t *acc, void *st)
{
   (void) acc;
   free(((quantile_state_t *) st)->x);
}

static size_t
quantile_heap_size(const aspen_accum_t *acc, const void *st)
{
   (void) acc;
   return ((const quantile_state_t *) st)->cap * sizeof(double);
}

static bool
quantile_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   (void) call;
   quantile_state_t *s = st;
   if (!aspen__is_num(val)) {
      return true;
   }
   double x = aspen__num_to_double(val);
   if (isnan(x)) {
      return true;
   }
   if (s->len == s->cap) {
      s->cap = grow_cap(s->cap, 0);
      s->x = aspen_xrealloc(s->x, s->cap * sizeof *s->x);
   }
   s->x[s->len++] = x;
   return true;
}

static int
cmp_double(const void *a, const void *b)
{
   double x = *(const double *) a, y = *(const double *) b;
   return (x > y) - (x < y);
}

/* mongod's discrete rank: the smallest value with at least p of the data
 * at or below it. */
static double
quantile_at(const double *sorted, uint32_t n, double p)
{
   if (p >= 1.0) {
      return sorted[n - 1];
   }
   double r = ceil(p * (double) n) - 1.0;
   return sorted[r < 0 ? 0 : (uint32_t) r];
}

static void
quantile_result(const aspen_accum_t *acc, const void *st, bson_t *out,
                const char *key)
{
   const quantile_state_t *s = st;
   double *sorted = NULL;
   if (s->len) {
      sorted = aspen_xmalloc(s->len * sizeof *sorted);
      memcpy(sorted, s->x, s->len * sizeof *sorted);
      qsort(sorted, s->len, sizeof *sorted, cmp_double);
   }
   bson_t arr;
   if (!acc->op->sub) {
      bson_append_array_begin(out, key, -1, &arr);
   }
   for (uint32_t i = 0; i < acc->n_ps; i++) {
      aspen_value_t v = sorted ? aspen_value_double(quantile_at(
                                    sorted, s->len, acc->ps[i]))
                               : aspen_value_null();
      if (acc->op->sub) {
         append_one(out, key, &v); /* $median: the one p, as a scalar */
      } else {
         aspen__array_append(&arr, i, &v);
      }
   }
   if (!acc->op->sub) {
      bson_append_array_end(out, &arr);
   }
   free(sorted);
}

/* ======================================================================== */
/* $top $bottom $topN $bottomN                                               */
/* ======================================================================== */

/* At most n entries in sortBy order, ties in arrival order (as mongod's
 * multimap). Each entry is 1 + n_sort values: the output, then the sort
 * key of each sortBy field. When full, $top/$topN (sub TB_TOP) drop the
 * last entry for a newcomer that sorts strictly before it, and $bottom/
 * $bottomN (TB_BOTTOM) drop the first for one that sorts strictly after
 * it, so ties keep the earlier document either way. */
typedef struct {
   aspen_value_t *slots; /* len entries of (1 + n_sort) values */
   uint32_t len, cap;
   size_t heap;
} topn_state_t;

enum { TB_TOP = 0, TB_BOTTOM = 1, TB_SINGLE = 2 };

static void
topn_cleanup(const aspen_accum_t *acc, void *st)
{
   topn_state_t *s = st;
   size_t n = (size_t) s->len * (1 + acc->n_sort);
   for (size_t i = 0; i < n; i++) {
      aspen_value_destroy(&s->slots[i]);
   }
   free(s->slots);
}

/* The sort key of one sortBy field, as mongod's sort key generator makes
 * it: missing reads as null; an array contributes its smallest element
 * when ascending and its largest when descending, an empty array sorting
 * below null (undefined ranks there). Borrowed from `root` when possible;
 * the caller destroys it. */
static aspen_value_t
sort_key(const bson_t *root, const sort_part_t *part)
{
   aspen_value_t v = aspen__path_get(bson_get_data(root), root->len,
                                     part->parts, part->n_parts);
   if (aspen_value_is_missing(&v)) {
      return aspen_value_null();
   }
   if (!aspen__is_array(&v)) {
      return v;
   }
   aspen_value_t best = ASPEN_VALUE_MISSING;
   bson_iter_t it;
   if (aspen__array_iter(&v, &it)) {
      while (bson_iter_next(&it)) {
         aspen_value_t e = aspen_value_borrow(&it);
         if (aspen_value_is_missing(&best) ||
             aspen__value_cmp(&e, &best, true) * part->dir < 0) {
            best = e;
         }
      }
   }
   if (aspen_value_is_missing(&best)) {
      best.v.value_type = BSON_TYPE_UNDEFINED;
   } else if (v.owned) {
      best = aspen_value_copy(&best); /* `best` points into v */
   }
   aspen_value_destroy(&v);
   return best;
}

static int
cmp_keys(const aspen_accum_t *acc, const aspen_value_t *a,
         const aspen_value_t *b)
{
   for (uint32_t i = 0; i < acc->n_sort; i++) {
      int c = aspen__value_cmp(&a[i], &b[i], true);
      if (c) {
         return c * acc->sort[i].dir;
      }
   }
   return 0;
}

/* A document's sort keys compared with the kept entries, for search(). */
typedef struct {
   const aspen_accum_t *acc;
   const topn_state_t *s;
   const aspen_value_t *keys;
} topn_probe_t;

static int
cmp_entry(const void *ctx, uint32_t i)
{
   const topn_probe_t *pr = ctx;
   const aspen_value_t *e = pr->s->slots + (size_t) i * (1 + pr->acc->n_sort);
   return cmp_keys(pr->acc, e + 1, pr->keys);
}

static bool
topn_add(const add_call_t *call, void *st, aspen_value_t *val)
{
   const aspen_accum_t *acc = call->acc;
   const aspen_expr_ctx_t *ctx = call->ctx;
   topn_state_t *s = st;
   uint32_t stride = 1 + acc->n_sort;
   aspen_value_t stack_keys[8];
   aspen_value_t *keys =
      acc->n_sort <= 8 ? stack_keys
                       : aspen_xmalloc(acc->n_sort * sizeof *keys);
   for (uint32_t i = 0; i < acc->n_sort; i++) {
      keys[i] = sort_key(ctx->root, &acc->sort[i]);
   }
   bool is_bottom = (acc->op->sub & TB_BOTTOM) != 0;
   bool keep = true;
   if ((int64_t) s->len == acc->n) {
      uint32_t drop = is_bottom ? 0 : s->len - 1;
      aspen_value_t *e = s->slots + (size_t) drop * stride;
      int c = cmp_keys(acc, keys, e + 1);
      keep = is_bottom ? c > 0 : c < 0;
      if (keep) {
         for (uint32_t j = 0; j < stride; j++) {
            s->heap -= value_heap(&e[j]);
            aspen_value_destroy(&e[j]);
         }
         memmove(e, e + stride,
                 (size_t) (s->len - drop - 1) * stride * sizeof *e);
         s->len--;
      }
   }
   if (keep) {
      topn_probe_t pr = {acc, s, keys};
      uint32_t lo = search(s->len, 0, cmp_entry, &pr);
      if (s->len == s->cap) {
         s->cap = grow_cap(s->cap, acc->n);
         s->slots = aspen_xrealloc(s->slots,
                                   (size_t) s->cap * stride * sizeof *s->slots);
      }
      aspen_value_t *e = s->slots + (size_t) lo * stride;
      memmove(e + stride, e, (size_t) (s->len - lo) * stride * sizeof *e);
      aspen_value_t null_val = aspen_value_null();
      value_take(&e[0], aspen_value_is_missing(val) ? &null_val : val);
      for (uint32_t j = 0; j < acc->n_sort; j++) {
         value_take(&e[1 + j], &keys[j]);
      }
      for (uint32_t j = 0; j < stride; j++) {
         s->heap += value_heap(&e[j]);
      }
      s->len++;
   }
   for (uint32_t i = 0; i < acc->n_sort; i++) {
      aspen_value_destroy(&keys[i]);
   }
   if (keys != stack_keys) {
      free(keys);
   }
   return true;
}

static void
topn_result(const aspen_accum_t *acc, const void *st, bson_t *out,
            const char *key)
{
   const topn_state_t *s = st;
   uint32_t stride = 1 + acc->n_sort;
   if (acc->op->sub & TB_SINGLE) {
      append_one(out, key, s->len ? &s->slots[0] : NULL);
      return;
   }
   bson_t arr;
   bson_append_array_begin(out, key, -1, &arr);
   for (uint32_t i = 0; i < s->len; i++) {
      aspen__array_append(&arr, i, &s->slots[(size_t) i * stride]);
   }
   bson_append_array_end(out, &arr);
}

static size_t
topn_heap_size(const aspen_accum_t *acc, const void *st)
{
   const topn_state_t *s = st;
   return (size_t) s->cap * (1 + acc->n_sort) * sizeof *s->slots + s->heap;
}

/* ======================================================================== */
/* Parsing                                                                   */
/* ======================================================================== */

static bool
parse_unary(aspen_accum_t *acc, const bson_iter_t *spec, aspen_error_t *err)
{
   return aspen_expr_parse(spec, NULL, &acc->arg, err);
}

static bool
parse_count(aspen_accum_t *acc, const bson_iter_t *spec, aspen_error_t *err)
{
   (void) acc;
   bson_iter_t sub;
   if (!BSON_ITER_HOLDS_DOCUMENT(spec) || !bson_iter_recurse(spec, &sub) ||
       bson_iter_next(&sub)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "$count takes no arguments, i.e. $count:{}");
      return false;
   }
   return true;
}

/* `n` as mongod validates it (5787902/5787903/5787908). It must be a
 * constant here: mongod also allows expressions of the group key, but
 * states are created without the key, and streams rarely need that. */
static bool
parse_n(aspen_accum_t *acc, const bson_iter_t *it, aspen_error_t *err)
{
   aspen_expr_t *e = NULL;
   if (!aspen_expr_parse(it, NULL, &e, err)) {
      return false;
   }
   aspen_value_t nv;
   bool ok = false;
   char *json = NULL;
   if (!aspen_expr_is_constant(e, &nv)) {
      aspen_error_set(err, 5787902,
                      "Value for 'n' must be a constant of integral type in a "
                      "stream processor's $group, but found an expression");
   } else if (!aspen__is_num(&nv)) {
      json = aspen_value_to_json(&nv);
      aspen_error_set(err, 5787902,
                      "Value for 'n' must be of integral type, but found %s",
                      json);
   } else if (!aspen__num_is_int64(&nv, &acc->n)) {
      json = aspen_value_to_json(&nv);
      aspen_error_set(err, 5787903,
                      "Value for 'n' must be of integral type, but found %s",
                      json);
   } else if (acc->n <= 0) {
      aspen_error_set(err, 5787908,
                      "'n' must be greater than 0, found %" PRId64, acc->n);
   } else {
      ok = true;
   }
   bson_free(json);
   aspen_expr_destroy(e);
   return ok;
}

/* One named argument of an operator's object ({n, input}, {output,
 * sortBy}, ...): filled by find_args. */
typedef struct {
   const char *name;
   int32_t missing_code; /* the error when absent; 0: optional */
   bool found;
   bson_iter_t it;
} named_arg_t;

/* Points each named argument at its field of the object `spec`. Returns the
 * first field that is none of them (NULL when all are known). Names may be
 * left out of `args` by passing a smaller `n` (n of $top, p of $median). */
static const char *
find_args(const bson_iter_t *spec, named_arg_t *args, size_t n)
{
   bson_iter_t it;
   bson_iter_recurse(spec, &it);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      size_t i = 0;
      while (i < n && strcmp(args[i].name, k) != 0) {
         i++;
      }
      if (i == n) {
         return k;
      }
      args[i].it = it;
      args[i].found = true;
   }
   return NULL;
}

/* Fails on the first required argument that is absent, in `args` order,
 * with mongod's message: the IDL parser's when `idl_op` names the
 * operator, else the accumulators' own "Missing value for ...". */
static bool
require_args(const named_arg_t *args, size_t n, const char *idl_op,
             aspen_error_t *err)
{
   for (size_t i = 0; i < n; i++) {
      if (args[i].missing_code && !args[i].found) {
         if (idl_op) {
            aspen_error_set(err, args[i].missing_code,
                            "BSON field '%s.%s' is missing but a required "
                            "field",
                            idl_op, args[i].name);
         } else {
            aspen_error_set(err, args[i].missing_code,
                            "Missing value for '%s'", args[i].name);
         }
         return false;
      }
   }
   return true;
}

/* {input, n} of $firstN/$lastN/$minN/$maxN. */
static bool
parse_input_n(aspen_accum_t *acc, const bson_iter_t *spec, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(spec)) {
      set_not_object(err, acc->op->add == ring_add ? 5787801 : 5787900,
                     acc->op->name, spec);
      return false;
   }
   named_arg_t args[] = {
      {.name = "n", .missing_code = 5787906},
      {.name = "input", .missing_code = 5787907},
   };
   const char *unknown = find_args(spec, args, 2);
   if (unknown) {
      aspen_error_set(err, 5787901, "Unknown argument for 'n' operator: %s",
                      unknown);
      return false;
   }
   return require_args(args, 2, NULL, err) &&
          aspen_expr_parse(&args[1].it, NULL, &acc->arg, err) &&
          parse_n(acc, &args[0].it, err);
}

/* Checks a sortBy field path as FieldPath does. */
static bool
check_sort_path(const char *path, aspen_error_t *err)
{
   if (!*path) {
      aspen_error_set(err, 40352,
                      "FieldPath cannot be constructed with empty string");
      return false;
   }
   const char *p = path;
   for (;;) {
      const char *dot = strchr(p, '.');
      size_t len = dot ? (size_t) (dot - p) : strlen(p);
      if (len == 0) {
         aspen_error_set(err, 15998,
                         "FieldPath field names may not be empty strings.");
         return false;
      }
      if (*p == '$') {
         aspen_error_set(err, 16410,
                         "FieldPath field names may not start with '$'. "
                         "Consider using $getField or $setField.");
         return false;
      }
      if (!dot) {
         return true;
      }
      p = dot + 1;
   }
}

static bool
parse_sort_by(aspen_accum_t *acc, const bson_iter_t *sort_it,
              aspen_error_t *err)
{
   bson_iter_t it;
   uint32_t n = aspen__value_child_count(sort_it);
   if (n == 0) {
      aspen_error_set(err, 9657900,
                      "'sortBy' of %s must have at least one sort key",
                      acc->op->name);
      return false;
   }
   acc->sort = aspen_xcalloc(n, sizeof *acc->sort);
   bson_iter_recurse(sort_it, &it);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      aspen_value_t v = aspen_value_borrow(&it);
      if (aspen__is_doc(&v)) {
         bson_iter_t meta;
         bool is_meta = bson_iter_recurse(&it, &meta) &&
                        bson_iter_next(&meta) &&
                        strcmp(bson_iter_key(&meta), "$meta") == 0;
         char *json = aspen_value_to_json(&v);
         if (is_meta) {
            aspen_error_set(err, 31138, "Illegal $meta sort: %s", json);
         } else {
            aspen_error_set(err, 17312,
                            "$meta is the only expression supported by $sort "
                            "right now");
         }
         bson_free(json);
         return false;
      }
      if (!aspen__is_num(&v)) {
         char *json = aspen_value_to_json(&v);
         aspen_error_set(err, 15974,
                         "Illegal key in $sort specification: %s: %s", k,
                         json);
         bson_free(json);
         return false;
      }
      int64_t dir = aspen__num_to_int64(&v); /* truncates, as mongod */
      if (dir != 1 && dir != -1) {
         aspen_error_set(err, 15975,
                         "$sort key ordering must be 1 (for ascending) or -1 "
                         "(for descending)");
         return false;
      }
      if (!check_sort_path(k, err)) {
         return false;
      }
      for (uint32_t i = 0; i < acc->n_sort; i++) {
         if (strcmp(acc->sort[i].path, k) == 0) {
            aspen_error_set(err, 7472500,
                            "$sort key must not contain duplicate keys "
                            "(duplicate: '%s')",
                            k);
            return false;
         }
      }
      sort_part_t *part = &acc->sort[acc->n_sort++];
      part->path = aspen_xstrdup(k);
      part->dir = (int) dir;
      part->n_parts = 1;
      for (const char *p = k; *p; p++) {
         part->n_parts += *p == '.';
      }
      part->parts = aspen_xcalloc(part->n_parts, sizeof *part->parts);
      const char *p = k;
      for (uint32_t i = 0; i < part->n_parts; i++) {
         const char *dot = strchr(p, '.');
         size_t len = dot ? (size_t) (dot - p) : strlen(p);
         part->parts[i] = bson_strndup(p, len);
         p += len + 1;
      }
   }
   return true;
}

/* {output, sortBy} of $top/$bottom, plus n for $topN/$bottomN. */
static bool
parse_top_bottom(aspen_accum_t *acc, const bson_iter_t *spec,
                 aspen_error_t *err)
{
   const char *name = acc->op->name;
   bool single = (acc->op->sub & TB_SINGLE) != 0;
   if (!BSON_ITER_HOLDS_DOCUMENT(spec)) {
      set_not_object(err, 5788001, name, spec);
      return false;
   }
   /* mongod checks n, then output, then sortBy; $top takes no n. */
   named_arg_t args[] = {
      {.name = "output", .missing_code = 5788004},
      {.name = "sortBy", .missing_code = 5788005},
      {.name = "n", .missing_code = 5788003},
   };
   size_t n_args = single ? 2 : 3;
   const char *unknown = find_args(spec, args, n_args);
   if (unknown) {
      aspen_error_set(err, 5788002, "Unknown argument to %s '%s'", name,
                      unknown);
      return false;
   }
   if (args[1].found && !BSON_ITER_HOLDS_DOCUMENT(&args[1].it)) {
      aspen_error_set(err, 10065,
                      "invalid parameter: expected an object (sortBy)");
      return false;
   }
   if ((!single && !require_args(args + 2, 1, NULL, err)) ||
       !require_args(args, 2, NULL, err) ||
       !parse_sort_by(acc, &args[1].it, err) ||
       !aspen_expr_parse(&args[0].it, NULL, &acc->arg, err)) {
      return false;
   }
   if (single) {
      acc->n = 1;
      return true;
   }
   return parse_n(acc, &args[2].it, err);
}

/* p of $percentile: a constant array of numbers in [0, 1]. */
static bool
parse_ps(aspen_accum_t *acc, const bson_iter_t *p_it, aspen_error_t *err)
{
   static const char msg[] = "The $percentile 'p' field must be an array of "
                             "numbers from [0.0, 1.0], but found: %s";
   aspen_expr_t *e = NULL;
   if (!aspen_expr_parse(p_it, NULL, &e, err)) {
      return false;
   }
   aspen_value_t pv;
   char *json = NULL;
   bool ok = false;
   if (!aspen_expr_is_constant(e, &pv)) {
      aspen_value_t raw = aspen_value_borrow(p_it);
      json = aspen_value_to_json(&raw);
      aspen_error_set(err, 7750300,
                      "The $percentile 'p' field must be an array of constant "
                      "values, but found value: %s.",
                      json);
      goto done;
   }
   if (!aspen__is_array(&pv) || aspen__array_len(&pv) == 0) {
      json = aspen_value_to_json(&pv);
      aspen_error_set(err, 7750301, msg, json);
      goto done;
   }
   acc->ps = aspen_xcalloc(aspen__array_len(&pv), sizeof *acc->ps);
   bson_iter_t it;
   aspen__array_iter(&pv, &it);
   while (bson_iter_next(&it)) {
      aspen_value_t item = aspen_value_borrow(&it);
      if (!aspen__is_num(&item)) {
         json = aspen_value_to_json(&item);
         aspen_error_set(err, 7750302, msg, json);
         goto done;
      }
      double p = aspen__num_to_double(&item);
      if (!(p >= 0.0 && p <= 1.0)) { /* NaN fails too */
         json = aspen_value_to_json(&item);
         aspen_error_set(err, 7750303, msg, json);
         goto done;
      }
      acc->ps[acc->n_ps++] = p;
   }
   ok = true;
done:
   bson_free(json);
   aspen_expr_destroy(e);
   return ok;
}

/* {input, p, method} of $percentile and {input, method} of $median, with
 * the IDL parser's messages (mongod parses them with IDL). */
static bool
parse_quantile(aspen_accum_t *acc, const bson_iter_t *spec,
               aspen_error_t *err)
{
   const char *name = acc->op->name;
   bool median = acc->op->sub != 0;
   if (!BSON_ITER_HOLDS_DOCUMENT(spec)) {
      set_not_object(err, median ? 7436100 : 7429703, name, spec);
      return false;
   }
   named_arg_t args[] = {
      {.name = "input", .missing_code = 40414},
      {.name = "method", .missing_code = 40414},
      {.name = "p", .missing_code = 40414},
   };
   size_t n_args = median ? 2 : 3;
   const char *unknown = find_args(spec, args, n_args);
   if (unknown) {
      aspen_error_set(err, 40415, "BSON field '%s.%s' is an unknown field.",
                      name, unknown);
      return false;
   }
   /* The IDL reports input, then p, then method. */
   if (!require_args(args, 1, name, err) ||
       (!median && !require_args(args + 2, 1, name, err)) ||
       !require_args(args + 1, 1, name, err)) {
      return false;
   }
   const bson_iter_t *method_it = &args[1].it;
   if (!BSON_ITER_HOLDS_UTF8(method_it)) {
      aspen_value_t mv = aspen_value_borrow(method_it);
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "BSON field '%s.method' is the wrong type '%s', expected "
                      "type 'string'",
                      name, aspen_value_type_name(&mv));
      return false;
   }
   if (strcmp(bson_iter_utf8(method_it, NULL), "approximate") != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "Currently only 'approximate' can be used as percentile "
                      "'method'.");
      return false;
   }
   if (median) {
      acc->ps = aspen_xmalloc(sizeof *acc->ps);
      acc->ps[0] = 0.5;
      acc->n_ps = 1;
   } else if (!parse_ps(acc, &args[2].it, err)) {
      return false;
   }
   return aspen_expr_parse(&args[0].it, NULL, &acc->arg, err);
}

/* ======================================================================== */
/* The operator table                                                        */
/* ======================================================================== */

#define SUM_OPS                                                                \
   sizeof(sum_state_t), sum_init, NULL, sum_add, sum_result, NULL, NULL, NULL
#define STDDEV_OPS                                                             \
   sizeof(stddev_state_t), NULL, NULL, stddev_add, stddev_result, NULL, NULL,    \
      NULL
/* Only $first and $firstN can be done (vals_is_done); the others skip
 * the call. */
#define VALS_OPS(add)                                                          \
   sizeof(vals_t), NULL, NULL, add, vals_result, vals_heap_size, vals_cleanup, \
      NULL
#define VALS_OPS_DONE(add)                                                     \
   sizeof(vals_t), NULL, vals_is_done, add, vals_result, vals_heap_size,       \
      vals_cleanup, NULL
#define QUANTILE_OPS                                                           \
   sizeof(quantile_state_t), NULL, NULL, quantile_add, quantile_result,        \
      quantile_heap_size, quantile_cleanup, NULL
#define TOPN_OPS                                                               \
   sizeof(topn_state_t), NULL, NULL, topn_add, topn_result, topn_heap_size,    \
      topn_cleanup, NULL

/* Sorted by name for bsearch. */
static const acc_op_t acc_ops[] = {
   {"$addToSet", V_SET, parse_unary, VALS_OPS(add_to_set_add)},
   {"$avg", SUM_AVG, parse_unary, SUM_OPS},
   {"$bottom", TB_BOTTOM | TB_SINGLE, parse_top_bottom, TOPN_OPS},
   {"$bottomN", TB_BOTTOM, parse_top_bottom, TOPN_OPS},
   {"$count", SUM_TOTAL, parse_count, SUM_OPS},
   {"$first", V_FIRST, parse_unary, VALS_OPS_DONE(one_add)},
   {"$firstN", V_FIRST_N, parse_input_n, VALS_OPS_DONE(ring_add)},
   {"$last", V_LAST, parse_unary, VALS_OPS(one_add)},
   {"$lastN", V_LAST_N, parse_input_n, VALS_OPS(ring_add)},
   {"$max", V_MAX, parse_unary, VALS_OPS(one_add)},
   {"$maxN", V_MAX_N, parse_input_n, VALS_OPS(extreme_add)},
   {"$median", 1, parse_quantile, QUANTILE_OPS},
   {"$mergeObjects", V_MERGE, parse_unary, sizeof(vals_t), NULL, NULL,
    merge_add, merge_result, vals_heap_size, vals_cleanup,
    aspen__merge_objects_input_ok},
   {"$min", V_MIN, parse_unary, VALS_OPS(one_add)},
   {"$minN", V_MIN_N, parse_input_n, VALS_OPS(extreme_add)},
   {"$percentile", 0, parse_quantile, QUANTILE_OPS},
   {"$push", V_PUSH, parse_unary, VALS_OPS(push_add)},
   {"$stdDevPop", 0, parse_unary, STDDEV_OPS},
   {"$stdDevSamp", 1, parse_unary, STDDEV_OPS},
   {"$sum", SUM_TOTAL, parse_unary, SUM_OPS},
   {"$top", TB_TOP | TB_SINGLE, parse_top_bottom, TOPN_OPS},
   {"$topN", TB_TOP, parse_top_bottom, TOPN_OPS},
};

static int
cmp_op_name(const void *key, const void *elem)
{
   return strcmp(key, ((const acc_op_t *) elem)->name);
}

static const acc_op_t *
find_op(const char *name)
{
   return bsearch(name, acc_ops, sizeof acc_ops / sizeof acc_ops[0],
                  sizeof acc_ops[0], cmp_op_name);
}

/* ======================================================================== */
/* API                                                                       */
/* ======================================================================== */

/* Parses one $group field (accum.h). The checks run in mongod's order:
 * an accumulator object (40234), a plain field name (40235, 40236), one
 * operator (40238) that is not given an array (40237), a known operator
 * (15952), then the operator's own arguments. *out is NULL on failure.
 * Any thread. */
bool
aspen_accum_parse(const bson_iter_t *it, aspen_accum_t **out,
                  aspen_error_t *err)
{
   *out = NULL;
   const char *field = bson_iter_key(it);
   bson_iter_t sub;
   if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &sub) ||
       !bson_iter_next(&sub) || bson_iter_key(&sub)[0] != '$') {
      aspen_error_set(err, 40234,
                      "The field '%s' must be an accumulator object", field);
      return false;
   }
   if (strchr(field, '.')) {
      aspen_error_set(err, 40235, "The field name '%s' cannot contain '.'",
                      field);
      return false;
   }
   if (field[0] == '$') {
      aspen_error_set(err, 40236,
                      "The field name '%s' cannot be an operator name", field);
      return false;
   }
   bson_iter_t spec = sub;
   if (bson_iter_next(&sub)) {
      aspen_error_set(err, 40238,
                      "The field '%s' must specify one accumulator", field);
      return false;
   }
   const char *name = bson_iter_key(&spec);
   if (BSON_ITER_HOLDS_ARRAY(&spec)) {
      aspen_error_set(err, 40237, "The %s accumulator is a unary operator",
                      name);
      return false;
   }
   const acc_op_t *op = find_op(name);
   if (!op) {
      aspen_error_set(err, 15952, "unknown group operator '%s'", name);
      return false;
   }
   aspen_accum_t *acc = aspen_xcalloc(1, sizeof *acc);
   acc->op = op;
   if (!op->parse(acc, &spec, err)) {
      aspen_accum_destroy(acc);
      return false;
   }
   *out = acc;
   return true;
}

/* Frees a parsed accumulator; NULL is a no-op. States made from it must be
 * destroyed first. */
void
aspen_accum_destroy(aspen_accum_t *acc)
{
   if (!acc) {
      return;
   }
   aspen_expr_destroy(acc->arg);
   for (uint32_t i = 0; i < acc->n_sort; i++) {
      for (uint32_t j = 0; j < acc->sort[i].n_parts; j++) {
         bson_free(acc->sort[i].parts[j]);
      }
      free(acc->sort[i].parts);
      free(acc->sort[i].path);
   }
   free(acc->sort);
   free(acc->ps);
   free(acc);
}

/* The operator's name ("$avg"); static storage. */
const char *
aspen_accum_name(const aspen_accum_t *acc)
{
   return acc->op->name;
}

/* Bytes of a state of `acc`: what aspen_accum_state_init takes. */
size_t
aspen_accum_state_bytes(const aspen_accum_t *acc)
{
   return acc->op->size;
}

/* Makes `mem` (aspen_accum_state_bytes zeroed bytes, 16-byte aligned) a
 * fresh, empty state for `acc`; aspen_accum_state_cleanup frees what it
 * comes to hold. */
aspen_accum_state_t *
aspen_accum_state_init(const aspen_accum_t *acc, void *mem)
{
   if (acc->op->init) {
      acc->op->init(mem);
   }
   return mem;
}

/* Frees the values a state keeps, not the state's own bytes. */
void
aspen_accum_state_cleanup(const aspen_accum_t *acc, aspen_accum_state_t *st)
{
   if (acc->op->cleanup) {
      acc->op->cleanup(acc, st);
   }
}

/* A fresh, empty state for `acc` (what the result is with no input:
 * 0 for $sum/$count, null for $avg/$min/..., [] for $push/...). Never
 * NULL. The state's thread owns it. */
aspen_accum_state_t *
aspen_accum_state_new(const aspen_accum_t *acc)
{
   return aspen_accum_state_init(acc, aspen_xcalloc(1, acc->op->size));
}

/* Frees a state and the values it keeps; NULL is a no-op. */
void
aspen_accum_state_destroy(const aspen_accum_t *acc, aspen_accum_state_t *st)
{
   if (!st) {
      return;
   }
   aspen_accum_state_cleanup(acc, st);
   free(st);
}

/* Whether a state's size can change as it absorbs documents (else
 * aspen_accum_state_size is always aspen_accum_state_bytes). */
bool
aspen_accum_state_grows(const aspen_accum_t *acc)
{
   return acc->op->heap_size != NULL;
}

/* The argument's expression (NULL for $count), so the caller can give its
 * field paths slots (aspen_expr_paths_add) at parse time. */
aspen_expr_t *
aspen_accum_arg(aspen_accum_t *acc)
{
   return acc->arg;
}

/* Evaluates the argument on ctx->root and absorbs the value. Returns false
 * with err set when evaluation fails or the operator refuses the value
 * ($mergeObjects of a non-object); the state is then unchanged, and the
 * caller dead-letters the document. The state's thread only. */
bool
aspen_accum_prepare(const aspen_accum_t *acc, const aspen_accum_state_t *st,
                    const aspen_expr_ctx_t *ctx, aspen_accum_input_t *in,
                    aspen_error_t *err)
{
   in->skip = st && acc->op->is_done && acc->op->is_done(acc, st);
   in->val = ASPEN_VALUE_MISSING;
   if (in->skip) {
      return true;
   }
   if (!acc->arg) {
      in->val = aspen_value_int32(1); /* $count is $sum: 1 */
      return true;
   }
   if (!aspen_expr_eval(acc->arg, ctx, &in->val, err)) {
      return false;
   }
   if (acc->op->check && !acc->op->check(&in->val, err)) {
      aspen_accum_input_discard(in);
      return false;
   }
   return true;
}

bool
aspen_accum_prepare_given(const aspen_accum_t *acc,
                          const aspen_accum_state_t *st,
                          const aspen_value_t *val, aspen_accum_input_t *in,
                          aspen_error_t *err)
{
   ASPEN_ASSERT(acc->arg && !val->owned);
   in->skip = st && acc->op->is_done && acc->op->is_done(acc, st);
   in->val = ASPEN_VALUE_MISSING;
   if (in->skip) {
      return true;
   }
   in->val = *val;
   if (acc->op->check && !acc->op->check(&in->val, err)) {
      aspen_accum_input_discard(in);
      return false;
   }
   return true;
}

void
aspen_accum_commit(const aspen_accum_t *acc, aspen_accum_state_t *st,
                   const aspen_expr_ctx_t *ctx, aspen_accum_input_t *in)
{
   /* A state found done at prepare was skipped there; one made since
    * (st NULL at prepare) is empty, hence not done. */
   if (!in->skip) {
      aspen_error_t err; /* add never fails: check ran in prepare */
      add_call_t call = {acc, ctx, &err};
      bool ok = acc->op->add(&call, st, &in->val);
      ASPEN_ASSERT(ok); /* failures are caught by check, in prepare */
   }
   if (in->val.owned) {
      aspen_accum_input_discard(in);
   } else {
      in->val.v.value_type = BSON_TYPE_EOD; /* a view: nothing to free */
   }
}

void
aspen_accum_input_discard(aspen_accum_input_t *in)
{
   aspen_value_destroy(&in->val); /* leaves it MISSING */
}

bool
aspen_accum_add(const aspen_accum_t *acc, aspen_accum_state_t *st,
                const aspen_expr_ctx_t *ctx, aspen_error_t *err)
{
   aspen_accum_input_t in;
   if (!aspen_accum_prepare(acc, st, ctx, &in, err)) {
      return false;
   }
   aspen_accum_commit(acc, st, ctx, &in);
   return true;
}

/* The values of top-level fields names[0 .. n) (n <= 32; lens[i] bytes
 * each, no NUL needed) in `doc`, as borrowed views, by one raw walk of its
 * elements: each what the field path "$name" evaluates to (the first
 * element with the name, as expr.c's raw_find; MISSING when there is none,
 * or past a malformed element, where the walk stops). Any thread. */
void
aspen_accum_top_fields(const bson_t *doc, const char *const *names,
                       const uint32_t *lens, uint32_t n, aspen_value_t *vals)
{
   ASPEN_ASSERT(n <= 32);
   const uint8_t *data = bson_get_data(doc);
   uint32_t len = doc->len;
   uint32_t todo = (uint32_t) ((1ull << n) - 1);
   for (uint32_t i = 0; i < n; i++) {
      vals[i] = ASPEN_VALUE_MISSING;
   }
   uint32_t off = 4;
   while (todo && off + 1 < len) {
      uint8_t type = data[off];
      const uint8_t *k = data + off + 1;
      size_t room = len - off - 1;
      size_t kl = aspen_bsonw_raw_key_len(k, room);
      if (kl == room) {
         break;
      }
      for (uint32_t left = todo; left; left &= left - 1) {
         uint32_t j = (uint32_t) __builtin_ctz(left);
         if (lens[j] == kl && memcmp(k, names[j], kl) == 0) {
            if (!aspen__raw_value(data, len, off, kl, &vals[j])) {
               vals[j] = ASPEN_VALUE_MISSING;
            }
            todo &= ~(1u << j);
            break;
         }
      }
      uint32_t voff = off + 1 + (uint32_t) kl + 1;
      int64_t sz = aspen_bsonw_value_size(type, data + voff, len - voff);
      if (sz < 0) {
         break;
      }
      off = voff + (uint32_t) sz;
   }
}

/* Appends the result under `key`; the state is unchanged, so a result can
 * be read more than once. The state's thread only. */
void
aspen_accum_result(const aspen_accum_t *acc, const aspen_accum_state_t *st,
                   bson_t *out, const char *key)
{
   acc->op->result(acc, st, out, key);
}

/* Bytes the state holds: its fixed part plus the kept values and their
 * vectors. An estimate for stats' stateSize, not an allocator count. */
size_t
aspen_accum_state_size(const aspen_accum_t *acc,
                       const aspen_accum_state_t *st)
{
   size_t size = acc->op->size;
   if (acc->op->heap_size) {
      size += acc->op->heap_size(acc, st);
   }
   return size;
}
