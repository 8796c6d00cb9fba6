/*
 * expr_array.c - array, set and object-shaping expression operators:
 * $arrayElemAt $first $last $concatArrays $filter $map $reduce $size $in
 * $indexOfArray $isArray $range $reverseArray $slice $zip $sortArray
 * $arrayToObject $objectToArray, the set operators ($setUnion ...
 * $allElementsTrue; results ordered and de-duplicated as mongod's ordered
 * value sets are) and $maxN/$minN/$firstN/$lastN. Elements are read as
 * borrowed views of the input array; results are built as new BSON arrays.
 */
#include "lang/expr_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static void
destroy_n(aspen_value_t *v, uint32_t n)
{
   for (uint32_t i = 0; i < n; i++) {
      aspen_value_destroy(&v[i]);
   }
}

/* An array value built from views. */
static aspen_value_t
array_of(const aspen_value_t *items, uint32_t n)
{
   bson_t arr = BSON_INITIALIZER;
   for (uint32_t i = 0; i < n; i++) {
      aspen__array_append(&arr, i, &items[i]);
   }
   return aspen__array_finish(&arr);
}

static aspen_value_t
empty_array(void)
{
   bson_t arr = BSON_INITIALIZER;
   return aspen__array_finish(&arr);
}

/* Stable merge sort of values; cmp returns <0, 0, >0. */
typedef int (*vcmp_fn)(const aspen_value_t *a, const aspen_value_t *b,
                       const void *ctx);

static void
merge_sort(aspen_value_t *v, aspen_value_t *tmp, uint32_t n, vcmp_fn cmp,
           const void *ctx)
{
   if (n < 2) {
      return;
   }
   uint32_t mid = n / 2;
   merge_sort(v, tmp, mid, cmp, ctx);
   merge_sort(v + mid, tmp, n - mid, cmp, ctx);
   uint32_t i = 0, j = mid, k = 0;
   while (i < mid && j < n) {
      if (cmp(&v[j], &v[i], ctx) < 0) {
         tmp[k++] = v[j++];
      } else {
         tmp[k++] = v[i++];
      }
   }
   while (i < mid) {
      tmp[k++] = v[i++];
   }
   while (j < n) {
      tmp[k++] = v[j++];
   }
   memcpy(v, tmp, n * sizeof *v);
}

static void
sort_values(aspen_value_t *v, uint32_t n, vcmp_fn cmp, const void *ctx)
{
   if (n < 2) {
      return;
   }
   aspen_value_t *tmp = aspen_xmalloc(n * sizeof *tmp);
   merge_sort(v, tmp, n, cmp, ctx);
   free(tmp);
}

static int
cmp_plain(const aspen_value_t *a, const aspen_value_t *b, const void *ctx)
{
   (void) ctx;
   return aspen__value_cmp(a, b, true);
}

/* ------------------------------------------------------------------------ */
/* $arrayElemAt, $first, $last                                               */
/* ------------------------------------------------------------------------ */

static bool
elem_at(aspen__eval_t *st, const char *opname, bool unary,
        const aspen_value_t *arr, const aspen_value_t *idx, aspen_value_t *out)
{
   *out = ASPEN_VALUE_MISSING;
   if (aspen__is_nullish(arr) || aspen__is_nullish(idx)) {
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_array(arr)) {
      return aspen__fail(st, 28689, "%s's %s must be an array, but is %s",
                         opname, unary ? "argument" : "first argument",
                         aspen_value_type_name(arr));
   }
   if (!aspen__is_num(idx)) {
      return aspen__fail(st, 28690,
                         "%s's second argument must be a numeric value, but "
                         "is %s",
                         opname, aspen_value_type_name(idx));
   }
   int32_t i;
   if (!aspen__num_is_int32(idx, &i)) {
      char num[64];
      aspen__num_to_text(idx, num, sizeof num);
      return aspen__fail(st, 28691,
                         "%s's second argument must be representable as a "
                         "32-bit integer: %s",
                         opname, num);
   }
   uint32_t n = aspen__array_len(arr);
   int64_t pos = i;
   if (pos < 0) {
      pos += n;
   }
   if (pos < 0 || pos >= (int64_t) n) {
      return true;
   }
   bson_iter_t it;
   aspen__array_iter(arr, &it);
   for (int64_t k = 0; bson_iter_next(&it); k++) {
      if (k == pos) {
         *out = aspen_value_borrow(&it);
         if (arr->owned) {
            aspen__value_own(out);
         }
         break;
      }
   }
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_array_elem_at)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &b)) {
      aspen_value_destroy(&a);
      return false;
   }
   bool ok = elem_at(st, "$arrayElemAt", false, &a, &b, out);
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_first_last)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   aspen_value_t idx = aspen_value_int32(e->op->sub ? -1 : 0);
   bool ok = elem_at(st, e->op->name, true, &a, &idx, out);
   aspen_value_destroy(&a);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $concatArrays                                                             */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_concat_arrays)
{
   bson_t arr = BSON_INITIALIZER;
   uint32_t k = 0;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!aspen__eval_arg(e, i, st, &v)) {
         bson_destroy(&arr);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
      if (aspen__is_nullish(&v)) {
         bson_destroy(&arr);
         *out = aspen_value_null();
         return true;
      }
      if (!aspen__is_array(&v)) {
         bson_destroy(&arr);
         *out = ASPEN_VALUE_MISSING;
         bool failed = aspen__fail(st, 28664,
                            "$concatArrays only supports arrays, not %s",
                            aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         return failed;
      }
      bson_iter_t it;
      aspen__array_iter(&v, &it);
      while (bson_iter_next(&it)) {
         aspen_value_t el = aspen_value_borrow(&it);
         aspen__array_append(&arr, k++, &el);
      }
      aspen_value_destroy(&v);
      if (!aspen__eval_size_ok(st, arr.len, false)) {
         bson_destroy(&arr);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
   }
   *out = aspen__array_finish(&arr);
   return true;
}

/* ------------------------------------------------------------------------ */
/* $map, $filter, $reduce                                                    */
/* ------------------------------------------------------------------------ */

/* Parses the `as` name (default "this") and the body with it in scope.
 * body_key is "in" or "cond". */
static bool
parse_with_var(aspen__parse_t *ps, aspen_expr_t *e, const bson_iter_t *as_it,
               bool have_as, const bson_iter_t *body_it, uint32_t body_slot)
{
   const char *name = "this";
   if (have_as) {
      name = bson_iter_type(as_it) == BSON_TYPE_UTF8
                ? bson_iter_utf8(as_it, NULL)
                : "";
   }
   if (!aspen__check_var_name(ps, name)) {
      return false;
   }
   uint32_t mark = aspen__scope_mark(ps);
   bool current_before = ps->current_rebound;
   if (strcmp(name, "CURRENT") == 0) {
      ps->current_rebound = true;
   }
   e->n_binds = 1;
   e->binds = aspen_xcalloc(1, sizeof *e->binds);
   e->binds[0] = aspen__scope_push(ps, name);
   bool ok = aspen__parse_operand(ps, body_it, &e->args[body_slot]);
   aspen__scope_pop(ps, mark);
   ps->current_rebound = current_before;
   return ok;
}

/* args: input, in */
ASPEN__DECL_PARSE(aspen__parse_map)
{
   (void) op;
   if (bson_iter_type(arg) != BSON_TYPE_DOCUMENT) {
      return aspen__pfail(ps, 16878,
                          "$map only supports an object as its argument");
   }
   bson_iter_t child, input_it, as_it, in_it;
   bool have_input = false, have_as = false, have_in = false;
   bson_iter_recurse(arg, &child);
   while (bson_iter_next(&child)) {
      const char *key = bson_iter_key(&child);
      if (strcmp(key, "input") == 0) {
         input_it = child;
         have_input = true;
      } else if (strcmp(key, "as") == 0) {
         as_it = child;
         have_as = true;
      } else if (strcmp(key, "in") == 0) {
         in_it = child;
         have_in = true;
      } else {
         return aspen__pfail(ps, 16879, "Unrecognized parameter to $map: %s",
                             key);
      }
   }
   if (!have_input) {
      return aspen__pfail(ps, 16880, "Missing 'input' parameter to $map");
   }
   if (!have_in) {
      return aspen__pfail(ps, 16882, "Missing 'in' parameter to $map");
   }
   aspen__node_args(e, 2);
   if (!aspen__parse_operand(ps, &input_it, &e->args[0])) {
      return false;
   }
   return parse_with_var(ps, e, &as_it, have_as, &in_it, 1);
}

ASPEN__DECL_EVAL(aspen__eval_map)
{
   aspen_value_t input;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &input)) {
      return false;
   }
   if (aspen__is_nullish(&input)) {
      aspen_value_destroy(&input);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_array(&input)) {
      bool failed = aspen__fail(st, 16883, "input to $map must be an array not %s",
                         aspen_value_type_name(&input));
      aspen_value_destroy(&input);
      return failed;
   }
   aspen_value_t *slot = &st->slots[e->binds[0]];
   bson_t arr = BSON_INITIALIZER;
   bson_iter_t it;
   uint32_t k = 0;
   bool ok = true;
   aspen__array_iter(&input, &it);
   while (bson_iter_next(&it)) {
      *slot = aspen_value_borrow(&it);
      aspen_value_t v;
      if (!aspen__eval_node(e->args[1], st, &v)) {
         ok = false;
         break;
      }
      aspen__array_append(&arr, k++, &v);
      aspen_value_destroy(&v);
      if (!aspen__eval_size_ok(st, arr.len, false)) {
         ok = false;
         break;
      }
   }
   *slot = ASPEN_VALUE_MISSING;
   if (ok) {
      *out = aspen__array_finish(&arr);
   } else {
      bson_destroy(&arr);
   }
   aspen_value_destroy(&input);
   return ok;
}

/* args: input, cond, limit */
ASPEN__DECL_PARSE(aspen__parse_filter)
{
   (void) op;
   if (bson_iter_type(arg) != BSON_TYPE_DOCUMENT) {
      return aspen__pfail(ps, 28646,
                          "$filter only supports an object as its argument");
   }
   bson_iter_t child, input_it, as_it, cond_it, limit_it;
   bool have_input = false, have_as = false, have_cond = false,
        have_limit = false;
   bson_iter_recurse(arg, &child);
   while (bson_iter_next(&child)) {
      const char *key = bson_iter_key(&child);
      if (strcmp(key, "input") == 0) {
         input_it = child;
         have_input = true;
      } else if (strcmp(key, "as") == 0) {
         as_it = child;
         have_as = true;
      } else if (strcmp(key, "cond") == 0) {
         cond_it = child;
         have_cond = true;
      } else if (strcmp(key, "limit") == 0) {
         limit_it = child;
         have_limit = true;
      } else {
         return aspen__pfail(ps, 28647,
                             "Unrecognized parameter to $filter: %s", key);
      }
   }
   if (!have_input) {
      return aspen__pfail(ps, 28648, "Missing 'input' parameter to $filter");
   }
   if (!have_cond) {
      return aspen__pfail(ps, 28650, "Missing 'cond' parameter to $filter");
   }
   aspen__node_args(e, 3);
   if (!aspen__parse_operand(ps, &input_it, &e->args[0])) {
      return false;
   }
   if (have_limit && !aspen__parse_operand(ps, &limit_it, &e->args[2])) {
      return false;
   }
   return parse_with_var(ps, e, &as_it, have_as, &cond_it, 1);
}

ASPEN__DECL_EVAL(aspen__eval_filter)
{
   aspen_value_t input;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &input)) {
      return false;
   }
   if (aspen__is_nullish(&input)) {
      aspen_value_destroy(&input);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_array(&input)) {
      bool failed = aspen__fail(st, 28651, "input to $filter must be an array not %s",
                         aspen_value_type_name(&input));
      aspen_value_destroy(&input);
      return failed;
   }
   int64_t remaining = -1;
   if (e->args[2]) {
      aspen_value_t lim;
      if (!aspen__eval_node(e->args[2], st, &lim)) {
         aspen_value_destroy(&input);
         return false;
      }
      if (!aspen__is_nullish(&lim)) {
         int32_t l;
         char *json = aspen_value_to_json(&lim);
         bool bad_type = !aspen__is_num(&lim) || !aspen__num_is_int32(&lim, &l);
         if (bad_type || l <= 0) {
            if (bad_type) {
               aspen__fail(st, 327391,
                           "$filter: limit must be represented as a 32-bit "
                           "integral value: %s",
                           json);
            } else {
               aspen__fail(st, 327392,
                           "$filter: limit must be greater than 0: %s", json);
            }
            bson_free(json);
            aspen_value_destroy(&lim);
            aspen_value_destroy(&input);
            return false;
         }
         bson_free(json);
         remaining = l;
      }
      aspen_value_destroy(&lim);
   }
   aspen_value_t *slot = &st->slots[e->binds[0]];
   bson_t arr = BSON_INITIALIZER;
   bson_iter_t it;
   uint32_t k = 0;
   bool ok = true;
   aspen__array_iter(&input, &it);
   while (remaining != 0 && bson_iter_next(&it)) {
      aspen_value_t el = aspen_value_borrow(&it);
      *slot = el;
      aspen_value_t c;
      if (!aspen__eval_node(e->args[1], st, &c)) {
         ok = false;
         break;
      }
      if (aspen_value_truthy(&c)) {
         aspen__array_append(&arr, k++, &el);
         if (remaining > 0) {
            remaining--;
         }
      }
      aspen_value_destroy(&c);
   }
   *slot = ASPEN_VALUE_MISSING;
   if (ok) {
      *out = aspen__array_finish(&arr);
   } else {
      bson_destroy(&arr);
   }
   aspen_value_destroy(&input);
   return ok;
}

/* args: input, initialValue, in; binds: this, value */
ASPEN__DECL_PARSE(aspen__parse_reduce)
{
   (void) op;
   if (bson_iter_type(arg) != BSON_TYPE_DOCUMENT) {
      aspen_value_t v = aspen_value_borrow(arg);
      return aspen__pfail(ps, 40075,
                          "$reduce requires an object as an argument, found: "
                          "%s",
                          aspen_value_type_name(&v));
   }
   bson_iter_t child, in_it;
   bool have_in = false;
   aspen__node_args(e, 3);
   bson_iter_recurse(arg, &child);
   while (bson_iter_next(&child)) {
      const char *key = bson_iter_key(&child);
      if (strcmp(key, "input") == 0) {
         aspen_expr_destroy(e->args[0]);
         e->args[0] = NULL;
         if (!aspen__parse_operand(ps, &child, &e->args[0])) {
            return false;
         }
      } else if (strcmp(key, "initialValue") == 0) {
         aspen_expr_destroy(e->args[1]);
         e->args[1] = NULL;
         if (!aspen__parse_operand(ps, &child, &e->args[1])) {
            return false;
         }
      } else if (strcmp(key, "in") == 0) {
         in_it = child;
         have_in = true;
      } else {
         return aspen__pfail(ps, 40076, "$reduce found an unknown argument: %s",
                             key);
      }
   }
   if (!e->args[0]) {
      return aspen__pfail(ps, 40077, "$reduce requires 'input' to be specified");
   }
   if (!e->args[1]) {
      return aspen__pfail(ps, 40078,
                          "$reduce requires 'initialValue' to be specified");
   }
   if (!have_in) {
      return aspen__pfail(ps, 40079, "$reduce requires 'in' to be specified");
   }
   uint32_t mark = aspen__scope_mark(ps);
   e->n_binds = 2;
   e->binds = aspen_xcalloc(2, sizeof *e->binds);
   e->binds[0] = aspen__scope_push(ps, "this");
   e->binds[1] = aspen__scope_push(ps, "value");
   bool ok = aspen__parse_operand(ps, &in_it, &e->args[2]);
   aspen__scope_pop(ps, mark);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_reduce)
{
   aspen_value_t input, acc;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &input)) {
      return false;
   }
   if (aspen__is_nullish(&input)) {
      aspen_value_destroy(&input);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_array(&input)) {
      char *json = aspen_value_to_json(&input);
      aspen__fail(st, 40080,
                  "$reduce requires that 'input' be an array, found: %s", json);
      bson_free(json);
      aspen_value_destroy(&input);
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &acc)) {
      aspen_value_destroy(&input);
      return false;
   }
   aspen_value_t *this_slot = &st->slots[e->binds[0]];
   aspen_value_t *value_slot = &st->slots[e->binds[1]];
   bson_iter_t it;
   bool ok = true;
   aspen__array_iter(&input, &it);
   while (bson_iter_next(&it)) {
      *this_slot = aspen_value_borrow(&it);
      *value_slot = aspen__value_view(&acc);
      aspen_value_t next;
      if (!aspen__eval_node(e->args[2], st, &next)) {
         ok = false;
         break;
      }
      /* `next` may point into the old accumulator: keep it alive. */
      if (acc.owned) {
         aspen__value_own(&next);
      }
      aspen_value_destroy(&acc);
      acc = next;
   }
   *this_slot = ASPEN_VALUE_MISSING;
   *value_slot = ASPEN_VALUE_MISSING;
   if (ok) {
      if (input.owned) {
         aspen__value_own(&acc);
      }
      *out = acc;
   } else {
      aspen_value_destroy(&acc);
   }
   aspen_value_destroy(&input);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $size, $in, $indexOfArray, $isArray                                       */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_size)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__is_array(&a)) {
      bool failed = aspen__fail(st, 17124,
                         "The argument to $size must be an array, but was of "
                         "type: %s",
                         aspen_value_type_name(&a));
      aspen_value_destroy(&a);
      return failed;
   }
   *out = aspen_value_int32((int32_t) aspen__array_len(&a));
   aspen_value_destroy(&a);
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_in)
{
   aspen_value_t x, a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &x)) {
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &a)) {
      aspen_value_destroy(&x);
      return false;
   }
   bool ok = true;
   if (!aspen__is_array(&a)) {
      ok = aspen__fail(st, 40081,
                       "$in requires an array as a second argument, found: %s",
                       aspen_value_type_name(&a));
   } else {
      bool found = false;
      bson_iter_t it;
      aspen__array_iter(&a, &it);
      while (!found && bson_iter_next(&it)) {
         aspen_value_t el = aspen_value_borrow(&it);
         found = aspen__value_cmp(&x, &el, true) == 0;
      }
      *out = aspen_value_bool(found);
   }
   aspen_value_destroy(&x);
   aspen_value_destroy(&a);
   return ok;
}

static bool
int_index_arg(const aspen_expr_t *e, uint32_t i, aspen__eval_t *st,
              const char *what, int32_t *out_idx)
{
   aspen_value_t v;
   if (!aspen__eval_arg(e, i, st, &v)) {
      return false;
   }
   int32_t idx;
   if (!aspen__is_num(&v) || !aspen__num_is_int32(&v, &idx)) {
      char *json = aspen_value_to_json(&v);
      aspen__fail(st, 40096,
                  "%srequires an integral %s, found a value of type: %s, with "
                  "value: %s",
                  e->op->name, what, aspen_value_type_name(&v), json);
      bson_free(json);
      aspen_value_destroy(&v);
      return false;
   }
   aspen_value_destroy(&v);
   if (idx < 0) {
      return aspen__fail(st, 40097, "%s requires a nonnegative %s, found: %d",
                         e->op->name, what, idx);
   }
   *out_idx = idx;
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_index_of_array)
{
   aspen_value_t a, x = ASPEN_VALUE_MISSING;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   bool ok = false;
   if (aspen__is_nullish(&a)) {
      *out = aspen_value_null();
      ok = true;
      goto done;
   }
   if (!aspen__is_array(&a)) {
      aspen__fail(st, 40090,
                  "$indexOfArray requires an array as a first argument, "
                  "found: %s",
                  aspen_value_type_name(&a));
      goto done;
   }
   uint32_t n = aspen__array_len(&a);
   int32_t start = 0, end = (int32_t) n;
   if (e->n_args > 2 && !int_index_arg(e, 2, st, "starting index", &start)) {
      goto done;
   }
   if (e->n_args > 3) {
      int32_t endi;
      if (!int_index_arg(e, 3, st, "ending index", &endi)) {
         goto done;
      }
      if (endi < end) {
         end = endi;
      }
   }
   if (!aspen__eval_arg(e, 1, st, &x)) {
      goto done;
   }
   *out = aspen_value_int32(-1);
   bson_iter_t it;
   aspen__array_iter(&a, &it);
   for (int32_t i = 0; i < end && bson_iter_next(&it); i++) {
      if (i < start) {
         continue;
      }
      aspen_value_t el = aspen_value_borrow(&it);
      if (aspen__value_cmp(&el, &x, true) == 0) {
         *out = aspen_value_int32(i);
         break;
      }
   }
   ok = true;
done:
   aspen_value_destroy(&a);
   aspen_value_destroy(&x);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_is_array)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   *out = aspen_value_bool(aspen__is_array(&a));
   aspen_value_destroy(&a);
   return true;
}

/* ------------------------------------------------------------------------ */
/* $range, $reverseArray, $slice                                             */
/* ------------------------------------------------------------------------ */

#define RANGE_MEM_LIMIT (64 * 1024 * 1024)

ASPEN__DECL_EVAL(aspen__eval_range)
{
   aspen_value_t v[3] = {ASPEN_VALUE_MISSING, ASPEN_VALUE_MISSING,
                         ASPEN_VALUE_MISSING};
   bool ok = false;
   char num[64];
   *out = ASPEN_VALUE_MISSING;
   for (uint32_t i = 0; i < e->n_args; i++) {
      if (!aspen__eval_arg(e, i, st, &v[i])) {
         destroy_n(v, i);
         return false;
      }
   }
   int32_t start, end, step = 1;
   if (!aspen__is_num(&v[0])) {
      aspen__fail(st, 34443,
                  "$range requires a numeric starting value, found value of "
                  "type: %s",
                  aspen_value_type_name(&v[0]));
      goto done;
   }
   if (!aspen__num_is_int32(&v[0], &start)) {
      aspen__num_to_text(&v[0], num, sizeof num);
      aspen__fail(st, 34444,
                  "$range requires a starting value that can be represented "
                  "as a 32-bit integer, found value: %s",
                  num);
      goto done;
   }
   if (!aspen__is_num(&v[1])) {
      aspen__fail(st, 34445,
                  "$range requires a numeric ending value, found value of "
                  "type: %s",
                  aspen_value_type_name(&v[1]));
      goto done;
   }
   if (!aspen__num_is_int32(&v[1], &end)) {
      aspen__num_to_text(&v[1], num, sizeof num);
      aspen__fail(st, 34446,
                  "$range requires an ending value that can be represented as "
                  "a 32-bit integer, found value: %s",
                  num);
      goto done;
   }
   if (e->n_args == 3) {
      if (!aspen__is_num(&v[2])) {
         aspen__fail(st, 34447,
                     "$range requires a numeric step value, found value of "
                     "type:%s",
                     aspen_value_type_name(&v[2]));
         goto done;
      }
      if (!aspen__num_is_int32(&v[2], &step)) {
         aspen__num_to_text(&v[2], num, sizeof num);
         aspen__fail(st, 34448,
                     "$range requires a step value that can be represented as "
                     "a 32-bit integer, found value: %s",
                     num);
         goto done;
      }
      if (step == 0) {
         aspen__fail(st, 34449, "$range requires a non-zero step value");
         goto done;
      }
   }
   {
      int64_t cur = start, stop = end;
      int64_t steps = (stop - cur) / step;
      int64_t length = steps >= 0 ? 1 + steps : 0;
      int64_t mem = 24 + length * 16;
      if (mem >= RANGE_MEM_LIMIT) {
         aspen__fail(st, 146,
                     "$range would use too much memory (%" PRId64
                     " bytes) and cannot spill to disk. Memory limit: %d bytes",
                     mem, RANGE_MEM_LIMIT);
         goto done;
      }
      bson_t arr = BSON_INITIALIZER;
      uint32_t k = 0;
      while (step > 0 ? cur < stop : cur > stop) {
         char buf[16];
         const char *key;
         size_t klen = bson_uint32_to_string(k++, &key, buf, sizeof buf);
         bson_append_int32(&arr, key, (int) klen, (int32_t) cur);
         cur += step;
      }
      *out = aspen__array_finish(&arr);
   }
   ok = true;
done:
   destroy_n(v, 3);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_reverse_array)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (aspen__is_nullish(&a)) {
      aspen_value_destroy(&a);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_array(&a)) {
      bool failed = aspen__fail(st, 34435,
                         "The argument to $reverseArray must be an array, but "
                         "was of type: %s",
                         aspen_value_type_name(&a));
      aspen_value_destroy(&a);
      return failed;
   }
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&a, &n);
   for (uint32_t i = 0; i < n / 2; i++) {
      aspen_value_t t = items[i];
      items[i] = items[n - 1 - i];
      items[n - 1 - i] = t;
   }
   *out = array_of(items, n);
   free(items);
   aspen_value_destroy(&a);
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_slice)
{
   aspen_value_t a, b, c = ASPEN_VALUE_MISSING;
   char num[64];
   bool ok = false;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &b)) {
      aspen_value_destroy(&a);
      return false;
   }
   if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
      ok = true;
      goto done;
   }
   if (!aspen__is_array(&a)) {
      aspen__fail(st, 28724,
                  "First argument to $slice must be an array, but is of type: "
                  "%s",
                  aspen_value_type_name(&a));
      goto done;
   }
   if (!aspen__is_num(&b)) {
      aspen__fail(st, 28725,
                  "Second argument to $slice must be a numeric value, but is "
                  "of type: %s",
                  aspen_value_type_name(&b));
      goto done;
   }
   int32_t second;
   if (!aspen__num_is_int32(&b, &second)) {
      aspen__num_to_text(&b, num, sizeof num);
      aspen__fail(st, 28726,
                  "Second argument to $slice can't be represented as a 32-bit "
                  "integer: %s",
                  num);
      goto done;
   }
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&a, &n);
   int64_t start, end;
   if (e->n_args == 2) {
      start = 0;
      end = n;
      if (second >= 0) {
         end = second < (int64_t) n ? (int64_t) second : (int64_t) n;
      } else {
         start = (int64_t) n + second;
         if (start < 0) {
            start = 0;
         }
      }
   } else {
      if (second < 0) {
         start = (int64_t) n + second;
         if (start < 0) {
            start = 0;
         }
      } else {
         start = second < (int64_t) n ? (int64_t) second : (int64_t) n;
      }
      if (!aspen__eval_arg(e, 2, st, &c)) {
         free(items);
         goto done;
      }
      if (aspen__is_nullish(&c)) {
         free(items);
         *out = aspen_value_null();
         ok = true;
         goto done;
      }
      int32_t count;
      if (!aspen__is_num(&c)) {
         free(items);
         aspen__fail(st, 28727,
                     "Third argument to $slice must be numeric, but is of "
                     "type: %s",
                     aspen_value_type_name(&c));
         goto done;
      }
      if (!aspen__num_is_int32(&c, &count)) {
         free(items);
         aspen__num_to_text(&c, num, sizeof num);
         aspen__fail(st, 28728,
                     "Third argument to $slice can't be represented as a "
                     "32-bit integer: %s",
                     num);
         goto done;
      }
      if (count <= 0) {
         free(items);
         aspen__fail(st, 28729, "Third argument to $slice must be positive: %d",
                     count);
         goto done;
      }
      end = start + count < (int64_t) n ? start + count : n;
   }
   *out = array_of(items + start, (uint32_t) (end - start));
   free(items);
   ok = true;
done:
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   aspen_value_destroy(&c);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $zip: args = inputs..., defaults...; ival = number of inputs, flags in   */
/* n_binds (1 = useLongestLength).                                           */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_PARSE(aspen__parse_zip)
{
   (void) op;
   if (bson_iter_type(arg) != BSON_TYPE_DOCUMENT) {
      aspen_value_t v = aspen_value_borrow(arg);
      return aspen__pfail(ps, 34460,
                          "$zip only supports an object as an argument, found "
                          "%s",
                          aspen_value_type_name(&v));
   }
   bson_iter_t child, inputs_it, defaults_it;
   bool have_inputs = false, have_defaults = false, longest = false;
   bson_iter_recurse(arg, &child);
   while (bson_iter_next(&child)) {
      const char *key = bson_iter_key(&child);
      aspen_value_t v = aspen_value_borrow(&child);
      if (strcmp(key, "inputs") == 0) {
         if (!aspen__is_array(&v)) {
            return aspen__pfail(ps, 34461,
                                "inputs must be an array of expressions, found "
                                "%s",
                                aspen_value_type_name(&v));
         }
         inputs_it = child;
         have_inputs = true;
      } else if (strcmp(key, "defaults") == 0) {
         if (!aspen__is_array(&v)) {
            return aspen__pfail(ps, 34462,
                                "defaults must be an array of expressions, "
                                "found %s",
                                aspen_value_type_name(&v));
         }
         defaults_it = child;
         have_defaults = true;
      } else if (strcmp(key, "useLongestLength") == 0) {
         if (aspen__vt(&v) != BSON_TYPE_BOOL) {
            return aspen__pfail(ps, 34463,
                                "useLongestLength must be a bool, found %s",
                                aspen_value_type_name(&v));
         }
         longest = v.v.value.v_bool;
      } else {
         return aspen__pfail(ps, 34464, "$zip found an unknown argument: %s",
                             key);
      }
   }
   uint32_t ni = 0, nd = 0;
   bson_iter_t it;
   if (have_inputs) {
      bson_iter_recurse(&inputs_it, &it);
      while (bson_iter_next(&it)) {
         ni++;
      }
   }
   if (have_defaults) {
      bson_iter_recurse(&defaults_it, &it);
      while (bson_iter_next(&it)) {
         nd++;
      }
   }
   if (ni == 0) {
      return aspen__pfail(ps, 34465, "$zip requires at least one input array");
   }
   if (!longest && nd > 0) {
      return aspen__pfail(ps, 34466,
                          "cannot specify defaults unless useLongestLength is "
                          "true");
   }
   if (nd > 0 && nd != ni) {
      return aspen__pfail(ps, 34467,
                          "defaults and inputs must have the same length");
   }
   aspen__node_args(e, ni + nd);
   /* ival: number of inputs, bit 32: useLongestLength. */
   e->ival = (int64_t) ni | (longest ? (int64_t) 1 << 32 : 0);
   uint32_t k = 0;
   bson_iter_recurse(&inputs_it, &it);
   while (bson_iter_next(&it)) {
      if (!aspen__parse_operand(ps, &it, &e->args[k++])) {
         return false;
      }
   }
   if (have_defaults) {
      bson_iter_recurse(&defaults_it, &it);
      while (bson_iter_next(&it)) {
         if (!aspen__parse_operand(ps, &it, &e->args[k++])) {
            return false;
         }
      }
   }
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_zip)
{
   uint32_t ni = (uint32_t) (e->ival & 0xffffffff);
   bool longest = ((e->ival >> 32) & 1) != 0;
   aspen_value_t *vals = aspen_xcalloc(ni, sizeof *vals);
   aspen_value_t **items = aspen_xcalloc(ni, sizeof *items);
   uint32_t *lens = aspen_xcalloc(ni, sizeof *lens);
   aspen_value_t *defs = aspen_xcalloc(ni, sizeof *defs);
   uint32_t done = 0, ndefs = 0;
   bool ok = false;
   *out = ASPEN_VALUE_MISSING;
   uint32_t minlen = 0, maxlen = 0;
   for (; done < ni; done++) {
      if (!aspen__eval_node(e->args[done], st, &vals[done])) {
         goto cleanup;
      }
      if (aspen__is_nullish(&vals[done])) {
         done++;
         *out = aspen_value_null();
         ok = true;
         goto cleanup;
      }
      if (!aspen__is_array(&vals[done])) {
         char *json = aspen_value_to_json(&vals[done]);
         aspen__fail(st, 34468, "$zip found a non-array expression in input: %s",
                     json);
         bson_free(json);
         done++;
         goto cleanup;
      }
      items[done] = aspen__array_items(&vals[done], &lens[done]);
      if (done == 0 || lens[done] < minlen) {
         minlen = lens[done];
      }
      if (done == 0 || lens[done] > maxlen) {
         maxlen = lens[done];
      }
   }
   for (uint32_t i = 0; i < ni; i++) {
      defs[i] = aspen_value_null();
   }
   if (minlen != maxlen && e->n_args > ni) {
      for (; ndefs < ni; ndefs++) {
         if (!aspen__eval_node(e->args[ni + ndefs], st, &defs[ndefs])) {
            goto cleanup;
         }
      }
   }
   {
      uint32_t outlen = longest ? maxlen : minlen;
      bson_t arr = BSON_INITIALIZER;
      for (uint32_t row = 0; row < outlen; row++) {
         char buf[16];
         const char *key;
         size_t klen = bson_uint32_to_string(row, &key, buf, sizeof buf);
         bson_t sub;
         bson_append_array_begin(&arr, key, (int) klen, &sub);
         for (uint32_t col = 0; col < ni; col++) {
            const aspen_value_t *v =
               row < lens[col] ? &items[col][row] : &defs[col];
            aspen__array_append(&sub, col, v);
         }
         bson_append_array_end(&arr, &sub);
         if (!aspen__eval_size_ok(st, arr.len, false)) {
            break;
         }
      }
      if (arr.len > ASPEN__MAX_OBJECT_LEN) {
         bson_destroy(&arr); /* st->err says why */
         goto cleanup;
      }
      *out = aspen__array_finish(&arr);
   }
   ok = true;
cleanup:
   for (uint32_t i = 0; i < ni; i++) {
      free(items[i]);
   }
   destroy_n(vals, done);
   destroy_n(defs, ndefs);
   free(vals);
   free(items);
   free(lens);
   free(defs);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $sortArray                                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
   uint32_t n;       /* 0: sort whole values */
   int whole_dir;    /* direction when n == 0 */
   char ***paths;    /* per key: split path */
   uint32_t *n_parts;
   int *dirs;
} sort_spec_t;

static void
sort_spec_free(void *p)
{
   sort_spec_t *s = p;
   for (uint32_t i = 0; i < s->n; i++) {
      for (uint32_t k = 0; k < s->n_parts[i]; k++) {
         free(s->paths[i][k]);
      }
      free(s->paths[i]);
   }
   free(s->paths);
   free(s->n_parts);
   free(s->dirs);
   free(s);
}

static bool
sort_dir(const aspen_value_t *v, int *dir)
{
   if (!aspen__is_num(v)) {
      return false;
   }
   double d = aspen__num_to_double(v);
   if (d != 1 && d != -1) {
      return false;
   }
   *dir = d > 0 ? 1 : -1;
   return true;
}

ASPEN__DECL_PARSE(aspen__parse_sort_array)
{
   (void) op;
   if (bson_iter_type(arg) != BSON_TYPE_DOCUMENT) {
      aspen_value_t v = aspen_value_borrow(arg);
      return aspen__pfail(ps, 2942500,
                          "$sortArray requires an object as an argument, "
                          "found: %s",
                          aspen_value_type_name(&v));
   }
   aspen__node_args(e, 1);
   sort_spec_t *spec = aspen_xcalloc(1, sizeof *spec);
   e->aux = spec;
   e->aux_free = sort_spec_free;
   bool have_sort = false;
   bson_iter_t child;
   bson_iter_recurse(arg, &child);
   while (bson_iter_next(&child)) {
      const char *key = bson_iter_key(&child);
      if (strcmp(key, "input") == 0) {
         aspen_expr_destroy(e->args[0]);
         e->args[0] = NULL;
         if (!aspen__parse_operand(ps, &child, &e->args[0])) {
            return false;
         }
      } else if (strcmp(key, "sortBy") == 0) {
         aspen_value_t v = aspen_value_borrow(&child);
         have_sort = true;
         if (aspen__is_doc(&v)) {
            uint32_t n = 0;
            bson_iter_t si;
            bson_iter_recurse(&child, &si);
            while (bson_iter_next(&si)) {
               n++;
            }
            if (n == 0) {
               return aspen__pfail(ps, 2942505,
                                   "$sort stage must have at least one sort "
                                   "key");
            }
            spec->paths = aspen_xcalloc(n, sizeof *spec->paths);
            spec->n_parts = aspen_xcalloc(n, sizeof *spec->n_parts);
            spec->dirs = aspen_xcalloc(n, sizeof *spec->dirs);
            bson_iter_recurse(&child, &si);
            for (uint32_t i = 0; bson_iter_next(&si); i++) {
               aspen_value_t dv = aspen_value_borrow(&si);
               if (!sort_dir(&dv, &spec->dirs[i])) {
                  return aspen__pfail(ps, 2942505,
                                      "$sort key ordering must be 1 (for "
                                      "ascending) or -1 (for descending)");
               }
               const char *path = bson_iter_key(&si);
               uint32_t np = 1;
               for (const char *p = path; *p; p++) {
                  np += *p == '.';
               }
               spec->paths[i] = aspen_xcalloc(np, sizeof(char *));
               spec->n_parts[i] = np;
               spec->n = i + 1;
               const char *s0 = path;
               for (uint32_t k = 0; k < np; k++) {
                  const char *dot = strchr(s0, '.');
                  size_t l = dot ? (size_t) (dot - s0) : strlen(s0);
                  spec->paths[i][k] = aspen_xmalloc(l + 1);
                  memcpy(spec->paths[i][k], s0, l);
                  spec->paths[i][k][l] = '\0';
                  s0 = dot ? dot + 1 : s0 + l;
               }
            }
         } else if (aspen__is_num(&v)) {
            if (!sort_dir(&v, &spec->whole_dir)) {
               return aspen__pfail(ps, 2942506,
                                   "The $sort element value must be either 1 "
                                   "or -1");
            }
         } else {
            return aspen__pfail(ps, 2942507,
                                "The $sort is invalid: use 1/-1 to sort the "
                                "whole element, or {field:1/-1} to sort "
                                "embedded fields");
         }
      } else {
         return aspen__pfail(ps, 2942501,
                             "$sortArray found an unknown argument: %s", key);
      }
   }
   if (!e->args[0]) {
      return aspen__pfail(ps, 2942502,
                          "$sortArray requires 'input' to be specified");
   }
   if (!have_sort) {
      return aspen__pfail(ps, 2942503,
                          "$sortArray requires 'sortBy' to be specified");
   }
   return true;
}

static int
cmp_by_spec(const aspen_value_t *a, const aspen_value_t *b, const void *ctx)
{
   const sort_spec_t *spec = ctx;
   if (spec->n == 0) {
      return spec->whole_dir * aspen__value_cmp(a, b, true);
   }
   if (!aspen__is_doc(a) || !aspen__is_doc(b)) {
      return spec->dirs[0] * aspen__value_cmp(a, b, true);
   }
   for (uint32_t i = 0; i < spec->n; i++) {
      aspen_value_t x = aspen__path_get(a->v.value.v_doc.data,
                                        a->v.value.v_doc.data_len,
                                        spec->paths[i], spec->n_parts[i]);
      aspen_value_t y = aspen__path_get(b->v.value.v_doc.data,
                                        b->v.value.v_doc.data_len,
                                        spec->paths[i], spec->n_parts[i]);
      int c = aspen__value_cmp(&x, &y, true);
      aspen_value_destroy(&x);
      aspen_value_destroy(&y);
      if (c) {
         return spec->dirs[i] * c;
      }
   }
   return 0;
}

ASPEN__DECL_EVAL(aspen__eval_sort_array)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (aspen__is_nullish(&a)) {
      aspen_value_destroy(&a);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_array(&a)) {
      bool failed = aspen__fail(st, 2942504,
                         "The input argument to $sortArray must be an array, "
                         "but was of type: %s",
                         aspen_value_type_name(&a));
      aspen_value_destroy(&a);
      return failed;
   }
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&a, &n);
   sort_values(items, n, cmp_by_spec, e->aux);
   *out = array_of(items, n);
   free(items);
   aspen_value_destroy(&a);
   return true;
}

/* ------------------------------------------------------------------------ */
/* $arrayToObject / $objectToArray                                           */
/* ------------------------------------------------------------------------ */

typedef struct {
   const char *key;
   uint32_t klen;
   aspen_value_t val;
} kv_t;

static void
kv_set(kv_t **kvs, uint32_t *n, uint32_t *cap, const char *key, uint32_t klen,
       const aspen_value_t *val)
{
   for (uint32_t i = 0; i < *n; i++) {
      if ((*kvs)[i].klen == klen && memcmp((*kvs)[i].key, key, klen) == 0) {
         (*kvs)[i].val = *val;
         return;
      }
   }
   if (*n == *cap) {
      *cap = *cap ? *cap * 2 : 16;
      *kvs = aspen_xrealloc(*kvs, *cap * sizeof **kvs);
   }
   (*kvs)[*n].key = key;
   (*kvs)[*n].klen = klen;
   (*kvs)[*n].val = *val;
   (*n)++;
}

ASPEN__DECL_EVAL(aspen__eval_array_to_object)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (aspen__is_nullish(&a)) {
      aspen_value_destroy(&a);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_array(&a)) {
      bool failed = aspen__fail(st, 40386,
                         "$arrayToObject requires an array input, found: %s",
                         aspen_value_type_name(&a));
      aspen_value_destroy(&a);
      return failed;
   }
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&a, &n);
   kv_t *kvs = NULL;
   uint32_t nk = 0, cap = 0;
   bool ok = true;
   bool pairs = n > 0 && aspen__is_array(&items[0]);
   if (n > 0 && !pairs && !aspen__is_doc(&items[0])) {
      ok = aspen__fail(st, 40398,
                       "Unrecognised input type format for $arrayToObject: %s",
                       aspen_value_type_name(&items[0]));
   }
   for (uint32_t i = 0; ok && i < n; i++) {
      aspen_value_t key, val;
      if (pairs) {
         if (!aspen__is_array(&items[i])) {
            ok = aspen__fail(st, 40396,
                             "$arrayToObject requires a consistent input "
                             "format. Elements must all be arrays or all be "
                             "objects. Array was detected, now found: %s",
                             aspen_value_type_name(&items[i]));
            break;
         }
         uint32_t m;
         aspen_value_t *pair = aspen__array_items(&items[i], &m);
         if (m != 2) {
            free(pair);
            ok = aspen__fail(st, 40397,
                             "$arrayToObject requires an array of size 2 "
                             "arrays,found array of size: %u",
                             m);
            break;
         }
         key = pair[0];
         val = pair[1];
         free(pair);
         if (!aspen__is_str(&key)) {
            ok = aspen__fail(st, 40395,
                             "$arrayToObject requires an array of key-value "
                             "pairs, where the key must be of type string. "
                             "Found key type: %s",
                             aspen_value_type_name(&key));
            break;
         }
      } else {
         if (!aspen__is_doc(&items[i])) {
            ok = aspen__fail(st, 40391,
                             "$arrayToObject requires a consistent input "
                             "format. Elements must all be arrays or all be "
                             "objects. Object was detected, now found: %s",
                             aspen_value_type_name(&items[i]));
            break;
         }
         bson_iter_t it;
         uint32_t nf = 0;
         key = ASPEN_VALUE_MISSING;
         val = ASPEN_VALUE_MISSING;
         aspen__array_iter(&items[i], &it);
         while (bson_iter_next(&it)) {
            nf++;
            if (strcmp(bson_iter_key(&it), "k") == 0) {
               key = aspen_value_borrow(&it);
            } else if (strcmp(bson_iter_key(&it), "v") == 0) {
               val = aspen_value_borrow(&it);
            }
         }
         if (nf != 2) {
            ok = aspen__fail(st, 40392,
                             "$arrayToObject requires an object keys of 'k' "
                             "and 'v'. Found incorrect number of keys:%u",
                             nf);
            break;
         }
         if (aspen_value_is_missing(&key) || aspen_value_is_missing(&val)) {
            char *json = aspen_value_to_json(&items[i]);
            ok = aspen__fail(st, 40393,
                             "$arrayToObject requires an object with keys 'k' "
                             "and 'v'. Missing either or both keys from: %s",
                             json);
            bson_free(json);
            break;
         }
         if (!aspen__is_str(&key)) {
            ok = aspen__fail(st, 40394,
                             "$arrayToObject requires an object with keys 'k' "
                             "and 'v', where the value of 'k' must be of type "
                             "string. Found type: %s",
                             aspen_value_type_name(&key));
            break;
         }
      }
      if (strlen(key.v.value.v_utf8.str) != key.v.value.v_utf8.len) {
         ok = aspen__fail(st, pairs ? 4940400 : 4940401,
                          "Key field cannot contain an embedded null byte");
         break;
      }
      kv_set(&kvs, &nk, &cap, key.v.value.v_utf8.str, key.v.value.v_utf8.len,
             &val);
   }
   if (ok) {
      bson_t doc = BSON_INITIALIZER;
      for (uint32_t i = 0; i < nk; i++) {
         aspen_value_append(&doc, kvs[i].key, (int) kvs[i].klen, &kvs[i].val);
      }
      *out = aspen_value_take_doc(&doc, false);
   }
   free(kvs);
   free(items);
   aspen_value_destroy(&a);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_object_to_array)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (aspen__is_nullish(&a)) {
      aspen_value_destroy(&a);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_doc(&a)) {
      bool failed = aspen__fail(st, 40390,
                         "$objectToArray requires a document input, found: %s",
                         aspen_value_type_name(&a));
      aspen_value_destroy(&a);
      return failed;
   }
   bson_t arr = BSON_INITIALIZER;
   bson_iter_t it;
   uint32_t k = 0;
   aspen__array_iter(&a, &it);
   while (bson_iter_next(&it)) {
      char buf[16];
      const char *key;
      size_t klen = bson_uint32_to_string(k++, &key, buf, sizeof buf);
      bson_t kv;
      bson_append_document_begin(&arr, key, (int) klen, &kv);
      bson_append_utf8(&kv, "k", 1, bson_iter_key(&it),
                       (int) bson_iter_key_len(&it));
      bson_append_iter(&kv, "v", 1, &it);
      bson_append_document_end(&arr, &kv);
   }
   *out = aspen__array_finish(&arr);
   aspen_value_destroy(&a);
   return true;
}

/* ------------------------------------------------------------------------ */
/* Set operators                                                             */
/* ------------------------------------------------------------------------ */

/* Sorted, de-duplicated copy of an array's elements (first occurrence of
 * equal values kept). */
static aspen_value_t *
set_of(const aspen_value_t *arr, uint32_t *n)
{
   aspen_value_t *items = aspen__array_items(arr, n);
   sort_values(items, *n, cmp_plain, NULL);
   uint32_t k = 0;
   for (uint32_t i = 0; i < *n; i++) {
      if (k == 0 || aspen__value_cmp(&items[k - 1], &items[i], true) != 0) {
         items[k++] = items[i];
      }
   }
   *n = k;
   return items;
}

static bool
set_contains(const aspen_value_t *set, uint32_t n, const aspen_value_t *v)
{
   uint32_t lo = 0, hi = n;
   while (lo < hi) {
      uint32_t mid = (lo + hi) / 2;
      int c = aspen__value_cmp(&set[mid], v, true);
      if (c == 0) {
         return true;
      }
      if (c < 0) {
         lo = mid + 1;
      } else {
         hi = mid;
      }
   }
   return false;
}

/* Evaluates all arguments; nullish -> null result (when null_ok), non-array
 * -> error. Returns 1 ok, 0 null result set, -1 error. */
static int
eval_arrays(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *vals,
            uint32_t *done, bool null_ok, int32_t code)
{
   for (*done = 0; *done < e->n_args; (*done)++) {
      aspen_value_t *v = &vals[*done];
      if (!aspen__eval_node(e->args[*done], st, v)) {
         return -1;
      }
      if (null_ok && aspen__is_nullish(v)) {
         (*done)++;
         return 0;
      }
      if (!aspen__is_array(v)) {
         const char *tn = aspen_value_type_name(v);
         if (code == 17044) {
            aspen__fail(st, code,
                        "All operands of $setEquals must be arrays. %u-th "
                        "argument is of type: %s",
                        *done + 1, tn);
         } else {
            aspen__fail(st, code,
                        "All operands of %s must be arrays. One argument is "
                        "of type: %s",
                        e->op->name, tn);
         }
         (*done)++;
         return -1;
      }
   }
   return 1;
}

ASPEN__DECL_EVAL(aspen__eval_set_union)
{
   aspen_value_t *vals = aspen_xcalloc(e->n_args ? e->n_args : 1,
                                       sizeof *vals);
   uint32_t done;
   *out = ASPEN_VALUE_MISSING;
   int r = eval_arrays(e, st, vals, &done, true, 17043);
   if (r == 0) {
      *out = aspen_value_null();
   } else if (r > 0) {
      uint32_t total = 0, k = 0;
      for (uint32_t i = 0; i < e->n_args; i++) {
         total += aspen__array_len(&vals[i]);
      }
      aspen_value_t *all = aspen_xmalloc((total ? total : 1) * sizeof *all);
      for (uint32_t i = 0; i < e->n_args; i++) {
         bson_iter_t it;
         aspen__array_iter(&vals[i], &it);
         while (bson_iter_next(&it)) {
            all[k++] = aspen_value_borrow(&it);
         }
      }
      sort_values(all, k, cmp_plain, NULL);
      uint32_t m = 0;
      for (uint32_t i = 0; i < k; i++) {
         if (m == 0 || aspen__value_cmp(&all[m - 1], &all[i], true) != 0) {
            all[m++] = all[i];
         }
      }
      *out = array_of(all, m);
      free(all);
   }
   destroy_n(vals, done);
   free(vals);
   return r >= 0;
}

ASPEN__DECL_EVAL(aspen__eval_set_intersection)
{
   aspen_value_t *vals = aspen_xcalloc(e->n_args ? e->n_args : 1,
                                       sizeof *vals);
   uint32_t done;
   *out = ASPEN_VALUE_MISSING;
   int r = eval_arrays(e, st, vals, &done, true, 17047);
   if (r == 0) {
      *out = aspen_value_null();
   } else if (r > 0) {
      if (e->n_args == 0) {
         *out = empty_array();
      } else {
         uint32_t n;
         aspen_value_t *cur = set_of(&vals[0], &n);
         for (uint32_t i = 1; i < e->n_args && n > 0; i++) {
            uint32_t m;
            aspen_value_t *other = set_of(&vals[i], &m);
            uint32_t k = 0;
            for (uint32_t j = 0; j < n; j++) {
               if (set_contains(other, m, &cur[j])) {
                  cur[k++] = cur[j];
               }
            }
            n = k;
            free(other);
         }
         *out = array_of(cur, n);
         free(cur);
      }
   }
   destroy_n(vals, done);
   free(vals);
   return r >= 0;
}

ASPEN__DECL_EVAL(aspen__eval_set_difference)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &b)) {
      aspen_value_destroy(&a);
      return false;
   }
   bool ok = true;
   if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
   } else if (!aspen__is_array(&a)) {
      ok = aspen__fail(st, 17048,
                       "both operands of $setDifference must be arrays. First "
                       "argument is of type: %s",
                       aspen_value_type_name(&a));
   } else if (!aspen__is_array(&b)) {
      ok = aspen__fail(st, 17049,
                       "both operands of $setDifference must be arrays. Second "
                       "argument is of type: %s",
                       aspen_value_type_name(&b));
   } else {
      uint32_t nb, na;
      aspen_value_t *rhs = set_of(&b, &nb);
      aspen_value_t *lhs = aspen__array_items(&a, &na);
      aspen_value_t *res = aspen_xmalloc((na ? na : 1) * sizeof *res);
      uint32_t k = 0;
      for (uint32_t i = 0; i < na; i++) {
         if (set_contains(rhs, nb, &lhs[i])) {
            continue;
         }
         bool dup = false;
         for (uint32_t j = 0; j < k && !dup; j++) {
            dup = aspen__value_cmp(&res[j], &lhs[i], true) == 0;
         }
         if (!dup) {
            res[k++] = lhs[i];
         }
      }
      *out = array_of(res, k);
      free(res);
      free(lhs);
      free(rhs);
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

ASPEN__DECL_PARSE(aspen__parse_set_equals)
{
   if (!aspen__parse_nary(ps, op, arg, e)) {
      return false;
   }
   if (e->n_args < 2) {
      return aspen__pfail(ps, 17045,
                          "$setEquals needs at least two arguments had: %u",
                          e->n_args);
   }
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_set_equals)
{
   aspen_value_t *vals = aspen_xcalloc(e->n_args, sizeof *vals);
   uint32_t done;
   *out = ASPEN_VALUE_MISSING;
   int r = eval_arrays(e, st, vals, &done, false, 17044);
   if (r > 0) {
      uint32_t n0;
      aspen_value_t *first = set_of(&vals[0], &n0);
      bool eq = true;
      for (uint32_t i = 1; eq && i < e->n_args; i++) {
         uint32_t m;
         aspen_value_t *other = set_of(&vals[i], &m);
         eq = m == n0;
         for (uint32_t j = 0; eq && j < m; j++) {
            eq = aspen__value_cmp(&first[j], &other[j], true) == 0;
         }
         free(other);
      }
      free(first);
      *out = aspen_value_bool(eq);
   }
   destroy_n(vals, done);
   free(vals);
   return r > 0;
}

ASPEN__DECL_EVAL(aspen__eval_set_is_subset)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &b)) {
      aspen_value_destroy(&a);
      return false;
   }
   bool ok = true;
   if (!aspen__is_array(&a)) {
      ok = aspen__fail(st, 17046,
                       "both operands of $setIsSubset must be arrays. First "
                       "argument is of type: %s",
                       aspen_value_type_name(&a));
   } else if (!aspen__is_array(&b)) {
      ok = aspen__fail(st, 17042,
                       "both operands of $setIsSubset must be arrays. Second "
                       "argument is of type: %s",
                       aspen_value_type_name(&b));
   } else {
      uint32_t nb, na;
      aspen_value_t *rhs = set_of(&b, &nb);
      aspen_value_t *lhs = aspen__array_items(&a, &na);
      bool sub = true;
      for (uint32_t i = 0; sub && i < na; i++) {
         sub = set_contains(rhs, nb, &lhs[i]);
      }
      *out = aspen_value_bool(sub);
      free(lhs);
      free(rhs);
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

static bool
any_all(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out,
        bool any)
{
   aspen_value_t a;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__is_array(&a)) {
      bool failed = aspen__fail(st, any ? 17041 : 17040,
                         "%s's argument must be an array, but is %s",
                         e->op->name, aspen_value_type_name(&a));
      aspen_value_destroy(&a);
      return failed;
   }
   bool res = !any;
   bson_iter_t it;
   aspen__array_iter(&a, &it);
   while (bson_iter_next(&it)) {
      aspen_value_t el = aspen_value_borrow(&it);
      if (aspen_value_truthy(&el) == any) {
         res = any;
         break;
      }
   }
   *out = aspen_value_bool(res);
   aspen_value_destroy(&a);
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_any_element_true)
{
   return any_all(e, st, out, true);
}

ASPEN__DECL_EVAL(aspen__eval_all_elements_true)
{
   return any_all(e, st, out, false);
}

/* ------------------------------------------------------------------------ */
/* $maxN $minN $firstN $lastN (sub 0..3): args = n, input                    */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_PARSE(aspen__parse_n_array)
{
   static const char *const names[] = {"n", "input", NULL};
   static const aspen__named_spec_t spec = {
      names, 5787900, ASPEN__NOTOBJ_SPECIFICATION, 5787901,
      ASPEN__UNKNOWN_ARGUMENT_TO};
   if (!aspen__parse_named(ps, op, arg, e, &spec)) {
      return false;
   }
   if (!e->args[0]) {
      return aspen__pfail(ps, 5787906, "Missing value for 'n'");
   }
   if (!e->args[1]) {
      return aspen__pfail(ps, 5787907, "Missing value for 'input'");
   }
   return true;
}

static int
cmp_desc(const aspen_value_t *a, const aspen_value_t *b, const void *ctx)
{
   (void) ctx;
   return -aspen__value_cmp(a, b, true);
}

ASPEN__DECL_EVAL(aspen__eval_n_array)
{
   int kind = e->op->sub;
   aspen_value_t nv, in = ASPEN_VALUE_MISSING;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &nv)) {
      return false;
   }
   bool ok = false;
   int64_t n;
   char *json = NULL;
   if (!aspen__is_num(&nv) || !aspen__num_is_int64(&nv, &n)) {
      json = aspen_value_to_json(&nv);
      aspen__fail(st, 5787902,
                  "Value for 'n' must be of integral type, but found %s", json);
      goto done;
   }
   if (n <= 0) {
      json = aspen_value_to_json(&nv);
      aspen__fail(st, 5787908, "'n' must be greater than 0, found %s", json);
      goto done;
   }
   if (!aspen__eval_arg(e, 1, st, &in)) {
      goto done;
   }
   if (!aspen__is_array(&in)) {
      json = aspen_value_to_json(&in);
      aspen__fail(st, 5788200, "Input to %s must be an array, but found %s",
                  e->op->name, json);
      goto done;
   }
   {
      uint32_t cnt;
      aspen_value_t *items = aspen__array_items(&in, &cnt);
      uint32_t k = 0, start = 0;
      if (kind <= 1) {
         for (uint32_t i = 0; i < cnt; i++) {
            if (!aspen__is_nullish(&items[i])) {
               items[k++] = items[i];
            }
         }
         cnt = k;
         sort_values(items, cnt, kind == 0 ? cmp_desc : cmp_plain, NULL);
      } else if (kind == 3 && (int64_t) cnt > n) {
         start = cnt - (uint32_t) n;
      }
      uint32_t take = (int64_t) (cnt - start) < n ? cnt - start : (uint32_t) n;
      *out = array_of(items + start, take);
      free(items);
   }
   ok = true;
done:
   bson_free(json);
   aspen_value_destroy(&nv);
   aspen_value_destroy(&in);
   return ok;
}
