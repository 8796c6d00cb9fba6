/*
 * expr_args.h - what an expression operator's arguments must be, declared
 * as a table, and the one routine that evaluates and checks them.
 *
 * Most operators start the same way: evaluate the arguments, let a null or
 * missing one make the result null, refuse a wrong type with mongod's code
 * and message for that operator and argument, and for some demand an
 * integral number in a range. An operator declares this in an aspen__args_t
 * (one aspen__arg_t per argument: BSON types, flags, the errors) and does
 * its own work in a compute function; ASPEN__ARGS_EVAL(name, args, compute)
 * then defines its eval, which evaluates and checks the arguments in the
 * order mongod does, calls compute and releases the arguments. An operator
 * that evaluates an argument itself (a lazy one, or each argument of a
 * variadic operator as it goes) checks it with aspen__args_eval_arg against
 * the same table. Its row in the operator table (expr_int.h) points at the
 * table too.
 *
 * The routine is inline and each operator's eval gets its own copy with its
 * table constant, so the compiler drops the tests a table does not ask for:
 * checking costs what the hand-written checks cost. Only the error path
 * (formatting mongod's message from the row's template) and the coercion
 * to a string are out of line, in expr_args.c.
 *
 * Inside lang/'s expression files only. Pure; any thread (tables are
 * read-only).
 */
#ifndef ASPEN_ENGINE_LANG_EXPR_ARGS_H
#define ASPEN_ENGINE_LANG_EXPR_ARGS_H

#include "lang/expr_int.h"

#include <stdlib.h>

/* ------------------------------------------------------------------------ */
/* The tables                                                                */
/* ------------------------------------------------------------------------ */

/* Sets of BSON types, bit n for type code n (MinKey and MaxKey have none:
 * no argument row admits them). */
static inline uint32_t
aspen__type_bit(bson_type_t t)
{
   return (uint32_t) t < 32u ? 1u << (uint32_t) t : 0u;
}

#define ASPEN__T(t) (1u << (t))
#define ASPEN__T_NUMBER                                                        \
   (ASPEN__T(BSON_TYPE_INT32) | ASPEN__T(BSON_TYPE_INT64) |                   \
    ASPEN__T(BSON_TYPE_DOUBLE) | ASPEN__T(BSON_TYPE_DECIMAL128))
#define ASPEN__T_NULLISH                                                       \
   (ASPEN__T(BSON_TYPE_EOD) | ASPEN__T(BSON_TYPE_NULL) |                      \
    ASPEN__T(BSON_TYPE_UNDEFINED))
#define ASPEN__T_STRING ASPEN__T(BSON_TYPE_UTF8)
#define ASPEN__T_ARRAY ASPEN__T(BSON_TYPE_ARRAY)
#define ASPEN__T_OBJECT ASPEN__T(BSON_TYPE_DOCUMENT)
#define ASPEN__T_BOOL ASPEN__T(BSON_TYPE_BOOL)
#define ASPEN__T_INTEGER (ASPEN__T(BSON_TYPE_INT32) | ASPEN__T(BSON_TYPE_INT64))
/* What mongod's coerceToString accepts. */
#define ASPEN__T_STRINGABLE                                                    \
   (ASPEN__T_STRING | ASPEN__T(BSON_TYPE_SYMBOL) | ASPEN__T(BSON_TYPE_CODE) |  \
    ASPEN__T_NULLISH | ASPEN__T_NUMBER | ASPEN__T(BSON_TYPE_TIMESTAMP) |      \
    ASPEN__T(BSON_TYPE_DATE_TIME))

/* Argument flags. */
#define ASPEN__ARG_NULL 0x1u  /* null/undefined/missing: the result is null */
#define ASPEN__ARG_LAZY 0x2u  /* not evaluated up front (the operator does) */
#define ASPEN__ARG_INT32 0x4u /* a number must be integral and fit int32 */
#define ASPEN__ARG_INT64 0x8u /* ... fit int64 */
#define ASPEN__ARG_RANGE 0x10u /* ... and lie in [min, max] */
#define ASPEN__ARG_TO_STRING 0x20u /* coerced to a string (coerceToString) */
/* What one argument must be. `types` (0: any) is checked first, with
 * `code`/`msg`; then, for a number, ASPEN__ARG_INT32/INT64 with
 * `int_code`/`int_msg` (0/NULL: code/msg again) and ASPEN__ARG_RANGE with
 * `range_code`/`range_msg`. Messages are templates (aspen__msg_format). An
 * all-zero row takes any value. */
typedef struct {
   uint32_t types;
   uint32_t flags;
   int32_t code;
   const char *msg;
   int32_t int_code;
   const char *int_msg;
   int32_t range_code;
   const char *range_msg;
   int64_t min, max;
} aspen__arg_t;

#define ASPEN__ARGS_MAX 11 /* $dateFromParts */

/* Flags of an argument table. */
#define ASPEN__ARGS_TYPES_FIRST 0x1u /* `together`: types before nulls */

/* An operator's arguments: row i for argument i, the last row for every
 * further one (n >= 1). The first `together` arguments are all evaluated
 * before any is looked at (as mongod evaluates them); then a null one
 * (ASPEN__ARG_NULL) makes the result null, before any type is checked or,
 * with ASPEN__ARGS_TYPES_FIRST, after all were (a null one passes its type
 * check then). Every further argument is evaluated and checked in turn, and
 * a null one stops there. An argument the expression does not have (an
 * optional one left out) is MISSING and is neither checked nor null. */
struct aspen__args {
   uint8_t n;
   uint8_t together;
   uint8_t flags;
   aspen__arg_t arg[ASPEN__ARGS_MAX];
};

/* The optional start or end index of $indexOfBytes, $indexOfCP and
 * $indexOfArray (`what`: "starting index" or "ending index"). */
#define ASPEN__ARG_INDEX(what)                                                 \
   {.types = ASPEN__T_NUMBER,                                                  \
    .flags = ASPEN__ARG_INT32 | ASPEN__ARG_RANGE,                              \
    .code = 40096,                                                             \
    .msg = "{op}requires an integral " what ", found a value of type: "        \
           "{type}, with value: {value}",                                      \
    .range_code = 40097,                                                       \
    .range_msg = "{op} requires a nonnegative " what ", found: {int}",         \
    .min = 0,                                                                  \
    .max = INT32_MAX}

/* ------------------------------------------------------------------------ */
/* Evaluating and checking                                                   */
/* ------------------------------------------------------------------------ */

/* The work of an operator once its arguments passed: v[i] is argument i's
 * value, for each argument and each row of the table (a lazy or absent
 * one is MISSING; a TO_STRING one is a string now, an INT32/INT64 one an
 * int64), which the caller releases afterwards: an operator that hands one
 * on as its result moves it out (aspen__value_move). Returns true with
 * *out set, or false with st->err set and *out left MISSING. */
#define ASPEN__DECL_COMPUTE(name)                                              \
   bool name(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *v,     \
             aspen_value_t *out)
typedef ASPEN__DECL_COMPUTE((*aspen__compute_fn));

/* The integral value of an argument whose row has ASPEN__ARG_INT32 or
 * ASPEN__ARG_INT64, once it passed (aspen__args_pass leaves it an int64). */
static inline int64_t
aspen__arg_int(const aspen_value_t *v)
{
   return v->v.value.v_int64;
}

/* Moves a value out of an argument slot (leaving it MISSING), for an
 * operator whose result is one of its arguments. */
static inline aspen_value_t
aspen__value_move(aspen_value_t *v)
{
   aspen_value_t out = *v;
   *v = ASPEN_VALUE_MISSING;
   return out;
}

/* Defines `static bool name(e, st, out)`, the eval of an operator whose
 * arguments `args` (an aspen__args_t object) describes and whose work is
 * `compute`. */
#define ASPEN__ARGS_EVAL(name, args, compute)                                  \
   static ASPEN__DECL_EVAL(name)                                               \
   {                                                                           \
      return aspen__args_call(e, st, out, &(args), compute);                  \
   }

/* The full check of v (vals[pos] when vals is not NULL) against row a,
 * after the fast test failed: its types (error from the row), integral and
 * range, coercion to a string. False with st->err set. */
bool aspen__arg_check(const aspen_expr_t *e, aspen__eval_t *st,
                      const aspen__arg_t *a, aspen_value_t *v,
                      const aspen_value_t *vals, uint32_t pos);

#define ASPEN__ARGS_INLINE static inline __attribute__((always_inline))
/* Loops over a table's rows: their count is a constant once inlined
 * (at most ASPEN__ARGS_MAX). */
#define ASPEN__ARGS_UNROLL _Pragma("GCC unroll 11")

ASPEN__ARGS_INLINE const aspen__arg_t *
aspen__args_row(const aspen__args_t *args, uint32_t i)
{
   uint32_t last = args->n - 1u;
   return &args->arg[i < last ? i : last];
}

/* Row a's integral test (ASPEN__ARG_INT32/INT64, ASPEN__ARG_RANGE) on the
 * number v: 0 with *x its value, 1 when it is not integral or does not
 * fit, 2 when it lies outside [min, max]. */
ASPEN__ARGS_INLINE int
aspen__args_integral(const aspen__arg_t *a, const aspen_value_t *v,
                     int64_t *x)
{
   bool fits;
   if (a->flags & ASPEN__ARG_INT32) {
      int32_t x32 = 0;
      fits = aspen__num_is_int32(v, &x32);
      *x = x32;
   } else {
      fits = aspen__num_is_int64(v, x);
   }
   if (!fits) {
      return 1;
   }
   return (a->flags & ASPEN__ARG_RANGE) && (*x < a->min || *x > a->max) ? 2
                                                                        : 0;
}

/* Row a's checks on v, inline; a failure (and a coercion) goes out of line
 * to aspen__arg_check. A number that passes ASPEN__ARG_INT32/INT64 is left
 * as an int64 value: its integral value is all compute needs of it (the
 * messages that show it as given are behind us). */
ASPEN__ARGS_INLINE bool
aspen__args_pass(const aspen_expr_t *e, aspen__eval_t *st,
                 const aspen__arg_t *a, aspen_value_t *v,
                 const aspen_value_t *vals, uint32_t pos)
{
   if (a->types && !(a->types & aspen__type_bit(aspen__vt(v)))) {
      return aspen__arg_check(e, st, a, v, vals, pos);
   }
   if ((a->flags & (ASPEN__ARG_INT32 | ASPEN__ARG_INT64)) && aspen__is_num(v)) {
      int64_t x;
      if (aspen__args_integral(a, v, &x) != 0) {
         return aspen__arg_check(e, st, a, v, vals, pos);
      }
      v->v.value_type = BSON_TYPE_INT64;
      v->v.value.v_int64 = x;
   }
   if ((a->flags & ASPEN__ARG_TO_STRING) && aspen__vt(v) != BSON_TYPE_UTF8) {
      return aspen__arg_check(e, st, a, v, vals, pos);
   }
   return true;
}

/* Evaluates argument i into *slot (MISSING when absent) and checks it
 * against row a: 1 passed, 0 null result (*out null), -1 error. One
 * argument at a time, so its messages cannot name the others. */
ASPEN__ARGS_INLINE int
aspen__args_eval_next(const aspen_expr_t *e, aspen__eval_t *st,
                      const aspen__arg_t *a, uint32_t i, aspen_value_t *slot,
                      aspen_value_t *out)
{
   const aspen_expr_t *arg = i < e->n_args ? e->args[i] : NULL;
   if (!arg) {
      *slot = ASPEN_VALUE_MISSING;
      return 1;
   }
   /* A node that fails may leave *slot unwritten (aspen__fail), and the
    * caller releases what it holds if owned: not owned until written. */
   slot->owned = false;
   if (!aspen__eval_node(arg, st, slot)) {
      return -1;
   }
   if ((a->flags & ASPEN__ARG_NULL) && aspen__is_nullish(slot)) {
      *out = aspen_value_null();
      return 0;
   }
   return aspen__args_pass(e, st, a, slot, NULL, i) ? 1 : -1;
}

/* Evaluates argument i alone and checks it against its row in `args`, the
 * operator's table: for an argument an operator evaluates itself (a lazy
 * one, or each of a variadic operator's as it goes). Returns 1 with *v set;
 * 0 when the argument is null and its row says the result is null (*out is
 * null then); -1 on error (st->err set). *v is MISSING unless 1 is
 * returned. */
ASPEN__ARGS_INLINE int
aspen__args_eval_arg(const aspen_expr_t *e, aspen__eval_t *st,
                     const aspen__args_t *args, uint32_t i, aspen_value_t *v,
                     aspen_value_t *out)
{
   int r = aspen__args_eval_next(e, st, aspen__args_row(args, i), i, v, out);
   if (r <= 0 && v->owned) {
      aspen_value_destroy(v);
   }
   if (r <= 0) {
      *v = ASPEN_VALUE_MISSING;
   }
   return r;
}

/* Evaluates and checks e's arguments into v as the table says; v has a
 * slot for each argument and each row (an absent argument's is MISSING).
 * Returns 1 when all passed, 0 when the result is null (*out set), -1 on
 * error. *done is how many slots hold a value to release.
 *
 * The loops over the table's rows have the row count, a constant, as their
 * bound, so that the compiler unrolls them and keeps only the tests each
 * row asks for; only the arguments past the last row (a variadic
 * operator's) are looped over at run time. */
ASPEN__ARGS_INLINE int
aspen__args_eval_all(const aspen_expr_t *e, aspen__eval_t *st,
                     const aspen__args_t *args, aspen_value_t *v,
                     uint32_t *done, aspen_value_t *out)
{
   const uint32_t rows = args->n, together = args->together;
   const uint32_t n = e->n_args;
   uint32_t i;
   if (together) {
      /* Bit i: argument i was evaluated (present, not lazy); is null where
       * that makes the result null. */
      uint32_t evaluated = 0, nulls = 0;
      ASPEN__ARGS_UNROLL
      for (i = 0; i < together; i++) {
         const aspen__arg_t *a = &args->arg[i];
         const aspen_expr_t *arg = i < n ? e->args[i] : NULL;
         *done = i + 1;
         if (!arg || (a->flags & ASPEN__ARG_LAZY)) {
            v[i] = ASPEN_VALUE_MISSING;
            continue;
         }
         v[i].owned = false; /* as in aspen__args_eval_next */
         if (!aspen__eval_node(arg, st, &v[i])) {
            return -1;
         }
         evaluated |= 1u << i;
         if ((a->flags & ASPEN__ARG_NULL) && aspen__is_nullish(&v[i])) {
            nulls |= 1u << i;
         }
      }
      if (nulls && !(args->flags & ASPEN__ARGS_TYPES_FIRST)) {
         *out = aspen_value_null();
         return 0;
      }
      ASPEN__ARGS_UNROLL
      for (i = 0; i < together; i++) {
         if (((evaluated & ~nulls) >> i) & 1u &&
             !aspen__args_pass(e, st, &args->arg[i], &v[i], v, i)) {
            return -1;
         }
      }
      if (nulls) {
         *out = aspen_value_null();
         return 0;
      }
   }
   ASPEN__ARGS_UNROLL
   for (i = together; i < rows; i++) {
      *done = i + 1;
      if (args->arg[i].flags & ASPEN__ARG_LAZY) {
         v[i] = ASPEN_VALUE_MISSING;
         continue;
      }
      int r = aspen__args_eval_next(e, st, &args->arg[i], i, &v[i], out);
      if (r <= 0) {
         return r;
      }
   }
   for (i = rows; i < n; i++) {
      *done = i + 1;
      if (args->arg[rows - 1].flags & ASPEN__ARG_LAZY) {
         v[i] = ASPEN_VALUE_MISSING;
         continue;
      }
      int r =
         aspen__args_eval_next(e, st, &args->arg[rows - 1], i, &v[i], out);
      if (r <= 0) {
         return r;
      }
   }
   *done = n > rows ? n : rows;
   return 1;
}

/* Slots on the stack: enough for every table's rows, and for the
 * arguments of all but the longest variadic calls. */
#define ASPEN__ARGS_STACK ASPEN__ARGS_MAX

/* The body of an ASPEN__ARGS_EVAL eval: evaluates and checks e's arguments
 * against `args`, calls compute, releases the arguments. */
ASPEN__ARGS_INLINE bool
aspen__args_call(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out,
                 const aspen__args_t *args, aspen__compute_fn compute)
{
   uint32_t n = e->n_args;
   aspen_value_t stackv[ASPEN__ARGS_STACK];
   aspen_value_t *v =
      n <= ASPEN__ARGS_STACK ? stackv : aspen_xmalloc(n * sizeof *v);
   uint32_t done = 0;
   *out = ASPEN_VALUE_MISSING;
   int r = aspen__args_eval_all(e, st, args, v, &done, out);
   bool ok = r == 0;
   if (r > 0) {
      ok = compute(e, st, v, out);
      if (!ok) {
         aspen_value_destroy(out);
      }
   }
   /* Only an owned value has anything to free. */
   ASPEN__ARGS_UNROLL
   for (uint32_t i = 0; i < args->n; i++) {
      if (i < done && v[i].owned) {
         aspen_value_destroy(&v[i]);
      }
   }
   for (uint32_t i = args->n; i < done; i++) {
      if (v[i].owned) {
         aspen_value_destroy(&v[i]);
      }
   }
   if (v != stackv) {
      free(v);
   }
   return ok;
}

#endif /* ASPEN_ENGINE_LANG_EXPR_ARGS_H */
