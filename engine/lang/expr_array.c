/*
 * expr_array.c - array, set and object-shaping expression operators:
 * $arrayElemAt $first $last $concatArrays $filter $map $reduce $size $in
 * $indexOfArray $isArray $range $reverseArray $slice $zip $sortArray
 * $arrayToObject $objectToArray, the set operators ($setUnion ...
 * $allElementsTrue; results ordered and de-duplicated as mongod's ordered
 * value sets are) and $maxN/$minN/$firstN/$lastN. Elements are read as
 * borrowed views of the input array; results are built as new BSON arrays.
 */
#include "lang/expr_args.h"

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

/* The element at index i of an array (negative: from the end) into *out;
 * MISSING past either end. */
static void
elem_at(const aspen_value_t *arr, int32_t i, aspen_value_t *out)
{
   uint32_t n = aspen__array_len(arr);
   int64_t pos = i;
   if (pos < 0) {
      pos += n;
   }
   if (pos < 0 || pos >= (int64_t) n) {
      return;
   }
   bson_iter_t it;
   aspen__array_iter(arr, &it);
   for (int64_t k = 0; bson_iter_next(&it); k++) {
      if (k == pos) {
         *out = aspen_value_borrow(&it);
         if (arr->owned) {
            aspen__value_own(out);
         }
         return;
      }
   }
}

static const aspen__args_t array_elem_at_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 28689,
            .msg = "{op}'s first argument must be an array, but is {type}"},
           {.types = ASPEN__T_NUMBER,
            .flags = ASPEN__ARG_NULL | ASPEN__ARG_INT32, .code = 28690,
            .msg = "{op}'s second argument must be a numeric value, but is "
                   "{type}",
            .int_code = 28691,
            .int_msg = "{op}'s second argument must be representable as a "
                       "32-bit integer: {num}"}}};

static ASPEN__DECL_COMPUTE(compute_array_elem_at)
{
   (void) e;
   (void) st;
   elem_at(&v[0], (int32_t) aspen__arg_int(&v[1]), out);
   return true;
}

ASPEN__ARGS_EVAL(eval_array_elem_at, array_elem_at_args, compute_array_elem_at)

static const aspen__args_t first_last_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 28689,
            .msg = "{op}'s argument must be an array, but is {type}"}}};

/* $first (sub 0) / $last (sub 1). */
static ASPEN__DECL_COMPUTE(compute_first_last)
{
   (void) st;
   elem_at(&v[0], e->op->sub ? -1 : 0, out);
   return true;
}

ASPEN__ARGS_EVAL(eval_first_last, first_last_args, compute_first_last)

/* ------------------------------------------------------------------------ */
/* $concatArrays                                                             */
/* ------------------------------------------------------------------------ */

static const aspen__args_t concat_arrays_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 28664,
            .msg = "$concatArrays only supports arrays, not {type}"}}};

static ASPEN__DECL_EVAL(eval_concat_arrays)
{
   bson_t arr = BSON_INITIALIZER;
   uint32_t k = 0;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      int r = aspen__args_eval_arg(e, st, &concat_arrays_args, i, &v, out);
      if (r <= 0) {
         bson_destroy(&arr);
         return r == 0;
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

/* args: input, in. */
static const aspen__named_arg_t map_names[] = {
   {"input", 16880, "Missing 'input' parameter to $map"},
   {"as", 0, NULL},
   {"in", 16882, "Missing 'in' parameter to $map"},
   {NULL, 0, NULL}};
static const aspen__named_spec_t map_spec = {
   map_names, 16878, "$map only supports an object as its argument", 16879,
   "Unrecognized parameter to $map: {key}"};

static ASPEN__DECL_PARSE(parse_map)
{
   aspen__named_it_t its[3];
   uint32_t found;
   if (!aspen__named_find(ps, op, arg, &map_spec, its, &found)) {
      return false;
   }
   aspen__node_args(e, 2);
   return aspen__parse_operand(ps, &its[0].it, &e->args[0]) &&
          parse_with_var(ps, e, &its[1].it, (found & 2u) != 0, &its[2].it, 1);
}

static const aspen__args_t map_args = {
   .n = 2,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 16883,
            .msg = "input to $map must be an array not {type}"},
           {.flags = ASPEN__ARG_LAZY}}};

static ASPEN__DECL_COMPUTE(compute_map)
{
   aspen_value_t *slot = &st->slots[e->binds[0]];
   bson_t arr = BSON_INITIALIZER;
   bson_iter_t it;
   uint32_t k = 0;
   bool ok = true;
   aspen__array_iter(&v[0], &it);
   while (bson_iter_next(&it)) {
      *slot = aspen_value_borrow(&it);
      aspen_value_t r;
      if (!aspen__eval_node(e->args[1], st, &r)) {
         ok = false;
         break;
      }
      aspen__array_append(&arr, k++, &r);
      aspen_value_destroy(&r);
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
   return ok;
}

ASPEN__ARGS_EVAL(eval_map, map_args, compute_map)

/* args: input, cond, limit. */
static const aspen__named_arg_t filter_names[] = {
   {"input", 28648, "Missing 'input' parameter to $filter"},
   {"as", 0, NULL},
   {"cond", 28650, "Missing 'cond' parameter to $filter"},
   {"limit", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t filter_spec = {
   filter_names, 28646, "$filter only supports an object as its argument",
   28647, "Unrecognized parameter to $filter: {key}"};

static ASPEN__DECL_PARSE(parse_filter)
{
   aspen__named_it_t its[4];
   uint32_t found;
   if (!aspen__named_find(ps, op, arg, &filter_spec, its, &found)) {
      return false;
   }
   aspen__node_args(e, 3);
   if (!aspen__parse_operand(ps, &its[0].it, &e->args[0])) {
      return false;
   }
   if ((found & 8u) && !aspen__parse_operand(ps, &its[3].it, &e->args[2])) {
      return false;
   }
   return parse_with_var(ps, e, &its[1].it, (found & 2u) != 0, &its[2].it, 1);
}

static const aspen__args_t filter_args = {
   .n = 3,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 28651,
            .msg = "input to $filter must be an array not {type}"},
           {.flags = ASPEN__ARG_LAZY},
           {.types = ASPEN__T_NUMBER | ASPEN__T_NULLISH,
            .flags = ASPEN__ARG_INT32 | ASPEN__ARG_RANGE,
            .code = 327391,
            .msg = "$filter: limit must be represented as a 32-bit integral "
                   "value: {value}",
            .range_code = 327392,
            .range_msg = "$filter: limit must be greater than 0: {value}",
            .min = 1,
            .max = INT32_MAX}}};

/* args: input, cond, limit (null or absent: none). */
static ASPEN__DECL_COMPUTE(compute_filter)
{
   int64_t remaining = aspen__is_num(&v[2]) ? aspen__arg_int(&v[2]) : -1;
   aspen_value_t *slot = &st->slots[e->binds[0]];
   bson_t arr = BSON_INITIALIZER;
   bson_iter_t it;
   uint32_t k = 0;
   bool ok = true;
   aspen__array_iter(&v[0], &it);
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
   return ok;
}

ASPEN__ARGS_EVAL(eval_filter, filter_args, compute_filter)

/* args: input, initialValue, in; binds: this, value */
static ASPEN__DECL_PARSE(parse_reduce)
{
   if (!aspen__parse_object_arg(ps, op, arg, 40075,
                                "$reduce requires an object as an argument, "
                                "found: {type}")) {
      return false;
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

static const aspen__args_t reduce_args = {
   .n = 3,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 40080,
            .msg = "$reduce requires that 'input' be an array, found: {value}"},
           {0},
           {.flags = ASPEN__ARG_LAZY}}};

/* args: input, initialValue, in. */
static ASPEN__DECL_COMPUTE(compute_reduce)
{
   aspen_value_t acc = aspen__value_move(&v[1]);
   aspen_value_t *this_slot = &st->slots[e->binds[0]];
   aspen_value_t *value_slot = &st->slots[e->binds[1]];
   bson_iter_t it;
   bool ok = true;
   aspen__array_iter(&v[0], &it);
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
      if (v[0].owned) {
         aspen__value_own(&acc);
      }
      *out = acc;
   } else {
      aspen_value_destroy(&acc);
   }
   return ok;
}

ASPEN__ARGS_EVAL(eval_reduce, reduce_args, compute_reduce)

/* ------------------------------------------------------------------------ */
/* $size, $in, $indexOfArray, $isArray                                       */
/* ------------------------------------------------------------------------ */

static const aspen__args_t size_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .code = 17124,
            .msg = "The argument to $size must be an array, but was of type: "
                   "{type}"}}};

static ASPEN__DECL_COMPUTE(compute_size)
{
   (void) e;
   (void) st;
   *out = aspen_value_int32((int32_t) aspen__array_len(&v[0]));
   return true;
}

ASPEN__ARGS_EVAL(eval_size, size_args, compute_size)

static const aspen__args_t in_args = {
   .n = 2, .together = 2,
   .arg = {{0},
           {.types = ASPEN__T_ARRAY, .code = 40081,
            .msg = "$in requires an array as a second argument, found: "
                   "{type}"}}};

static ASPEN__DECL_COMPUTE(compute_in)
{
   (void) e;
   (void) st;
   bool found = false;
   bson_iter_t it;
   aspen__array_iter(&v[1], &it);
   while (!found && bson_iter_next(&it)) {
      aspen_value_t el = aspen_value_borrow(&it);
      found = aspen__value_cmp(&v[0], &el, true) == 0;
   }
   *out = aspen_value_bool(found);
   return true;
}

ASPEN__ARGS_EVAL(eval_in, in_args, compute_in)

/* args: array, value (evaluated after the indexes, as in mongod), start,
 * end. */
static const aspen__args_t index_of_array_args = {
   .n = 4,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 40090,
            .msg = "$indexOfArray requires an array as a first argument, "
                   "found: {type}"},
           {.flags = ASPEN__ARG_LAZY},
           ASPEN__ARG_INDEX("starting index"),
           ASPEN__ARG_INDEX("ending index")}};

static ASPEN__DECL_COMPUTE(compute_index_of_array)
{
   uint32_t n = aspen__array_len(&v[0]);
   int32_t start = e->n_args > 2 ? (int32_t) aspen__arg_int(&v[2]) : 0;
   int32_t end = (int32_t) n;
   if (e->n_args > 3 && aspen__arg_int(&v[3]) < end) {
      end = (int32_t) aspen__arg_int(&v[3]);
   }
   if (!aspen__eval_arg(e, 1, st, &v[1])) {
      return false;
   }
   *out = aspen_value_int32(-1);
   bson_iter_t it;
   aspen__array_iter(&v[0], &it);
   for (int32_t i = 0; i < end && bson_iter_next(&it); i++) {
      if (i < start) {
         continue;
      }
      aspen_value_t el = aspen_value_borrow(&it);
      if (aspen__value_cmp(&el, &v[1], true) == 0) {
         *out = aspen_value_int32(i);
         break;
      }
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_index_of_array, index_of_array_args,
                 compute_index_of_array)

static const aspen__args_t plain_args = {.n = 1};

static ASPEN__DECL_COMPUTE(compute_is_array)
{
   (void) e;
   (void) st;
   *out = aspen_value_bool(aspen__is_array(&v[0]));
   return true;
}

ASPEN__ARGS_EVAL(eval_is_array, plain_args, compute_is_array)

/* ------------------------------------------------------------------------ */
/* $range, $reverseArray, $slice                                             */
/* ------------------------------------------------------------------------ */

#define RANGE_MEM_LIMIT (64 * 1024 * 1024)

static const aspen__args_t range_args = {
   .n = 3, .together = 3,
   .arg = {{.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_INT32,
            .code = 34443,
            .msg = "$range requires a numeric starting value, found value of "
                   "type: {type}",
            .int_code = 34444,
            .int_msg = "$range requires a starting value that can be "
                       "represented as a 32-bit integer, found value: {num}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_INT32,
            .code = 34445,
            .msg = "$range requires a numeric ending value, found value of "
                   "type: {type}",
            .int_code = 34446,
            .int_msg = "$range requires an ending value that can be "
                       "represented as a 32-bit integer, found value: {num}"},
           {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_INT32,
            .code = 34447,
            .msg = "$range requires a numeric step value, found value of "
                   "type:{type}",
            .int_code = 34448,
            .int_msg = "$range requires a step value that can be represented "
                       "as a 32-bit integer, found value: {num}"}}};

static ASPEN__DECL_COMPUTE(compute_range)
{
   int32_t start = (int32_t) aspen__arg_int(&v[0]);
   int32_t end = (int32_t) aspen__arg_int(&v[1]);
   int32_t step = 1;
   if (e->n_args == 3) {
      step = (int32_t) aspen__arg_int(&v[2]);
      if (step == 0) {
         return aspen__fail(st, 34449, "$range requires a non-zero step value");
      }
   }
   int64_t cur = start, stop = end;
   int64_t steps = (stop - cur) / step;
   int64_t length = steps >= 0 ? 1 + steps : 0;
   int64_t mem = 24 + length * 16;
   if (mem >= RANGE_MEM_LIMIT) {
      return aspen__fail(st, 146,
                         "$range would use too much memory (%" PRId64
                         " bytes) and cannot spill to disk. Memory limit: %d "
                         "bytes",
                         mem, RANGE_MEM_LIMIT);
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
   return true;
}

ASPEN__ARGS_EVAL(eval_range, range_args, compute_range)

static const aspen__args_t reverse_array_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 34435,
            .msg = "The argument to $reverseArray must be an array, but was "
                   "of type: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_reverse_array)
{
   (void) e;
   (void) st;
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&v[0], &n);
   for (uint32_t i = 0; i < n / 2; i++) {
      aspen_value_t t = items[i];
      items[i] = items[n - 1 - i];
      items[n - 1 - i] = t;
   }
   *out = array_of(items, n);
   free(items);
   return true;
}

ASPEN__ARGS_EVAL(eval_reverse_array, reverse_array_args, compute_reverse_array)

/* args: array, position or count, count (after the first two are
 * checked). */
static const aspen__args_t slice_args = {
   .n = 3, .together = 2,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 28724,
            .msg = "First argument to $slice must be an array, but is of "
                   "type: {type}"},
           {.types = ASPEN__T_NUMBER,
            .flags = ASPEN__ARG_NULL | ASPEN__ARG_INT32, .code = 28725,
            .msg = "Second argument to $slice must be a numeric value, but is "
                   "of type: {type}",
            .int_code = 28726,
            .int_msg = "Second argument to $slice can't be represented as a "
                       "32-bit integer: {num}"},
           {.types = ASPEN__T_NUMBER,
            .flags = ASPEN__ARG_NULL | ASPEN__ARG_INT32 | ASPEN__ARG_RANGE,
            .code = 28727,
            .msg = "Third argument to $slice must be numeric, but is of type: "
                   "{type}",
            .int_code = 28728,
            .int_msg = "Third argument to $slice can't be represented as a "
                       "32-bit integer: {num}",
            .range_code = 28729,
            .range_msg = "Third argument to $slice must be positive: {int}",
            .min = 1,
            .max = INT32_MAX}}};

static ASPEN__DECL_COMPUTE(compute_slice)
{
   (void) st;
   int32_t second = (int32_t) aspen__arg_int(&v[1]);
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&v[0], &n);
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
      int32_t count = (int32_t) aspen__arg_int(&v[2]);
      end = start + count < (int64_t) n ? start + count : n;
   }
   *out = array_of(items + start, (uint32_t) (end - start));
   free(items);
   return true;
}

ASPEN__ARGS_EVAL(eval_slice, slice_args, compute_slice)

/* ------------------------------------------------------------------------ */
/* $zip: args = inputs..., defaults...; ival = number of inputs, flags in   */
/* n_binds (1 = useLongestLength).                                           */
/* ------------------------------------------------------------------------ */

static ASPEN__DECL_PARSE(parse_zip)
{
   if (!aspen__parse_object_arg(ps, op, arg, 34460,
                                "$zip only supports an object as an argument, "
                                "found {type}")) {
      return false;
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
   uint32_t ni = have_inputs ? aspen__value_child_count(&inputs_it) : 0;
   uint32_t nd = have_defaults ? aspen__value_child_count(&defaults_it) : 0;
   bson_iter_t it;
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

/* args 0..ni-1: the inputs (this row), then the defaults. */
static const aspen__args_t zip_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 34468,
            .msg = "$zip found a non-array expression in input: {value}"}}};

static ASPEN__DECL_EVAL(eval_zip)
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
      int r = aspen__args_eval_arg(e, st, &zip_args, done, &vals[done], out);
      if (r <= 0) {
         ok = r == 0;
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

static ASPEN__DECL_PARSE(parse_sort_array)
{
   if (!aspen__parse_object_arg(ps, op, arg, 2942500,
                                "$sortArray requires an object as an "
                                "argument, found: {type}")) {
      return false;
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
            uint32_t n = aspen__value_child_count(&child);
            bson_iter_t si;
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

static const aspen__args_t sort_array_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL,
            .code = 2942504,
            .msg = "The input argument to $sortArray must be an array, but "
                   "was of type: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_sort_array)
{
   (void) st;
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&v[0], &n);
   sort_values(items, n, cmp_by_spec, e->aux);
   *out = array_of(items, n);
   free(items);
   return true;
}

ASPEN__ARGS_EVAL(eval_sort_array, sort_array_args, compute_sort_array)

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

static const aspen__args_t array_to_object_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 40386,
            .msg = "$arrayToObject requires an array input, found: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_array_to_object)
{
   (void) e;
   uint32_t n;
   aspen_value_t *items = aspen__array_items(&v[0], &n);
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
   return ok;
}

ASPEN__ARGS_EVAL(eval_array_to_object, array_to_object_args,
                 compute_array_to_object)

static const aspen__args_t object_to_array_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_OBJECT, .flags = ASPEN__ARG_NULL, .code = 40390,
            .msg = "$objectToArray requires a document input, found: "
                   "{type}"}}};

static ASPEN__DECL_COMPUTE(compute_object_to_array)
{
   (void) e;
   (void) st;
   bson_t arr = BSON_INITIALIZER;
   bson_iter_t it;
   uint32_t k = 0;
   aspen__array_iter(&v[0], &it);
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
   return true;
}

ASPEN__ARGS_EVAL(eval_object_to_array, object_to_array_args,
                 compute_object_to_array)

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

#define SET_ARGS(err_code)                                                     \
   {.n = 1,                                                                    \
    .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL,                \
             .code = (err_code),                                               \
             .msg = "All operands of {op} must be arrays. One argument is of " \
                    "type: {type}"}}}
static const aspen__args_t set_union_args = SET_ARGS(17043);
static const aspen__args_t set_intersection_args = SET_ARGS(17047);
#undef SET_ARGS

static ASPEN__DECL_COMPUTE(compute_set_union)
{
   (void) st;
   uint32_t total = 0, k = 0;
   for (uint32_t i = 0; i < e->n_args; i++) {
      total += aspen__array_len(&v[i]);
   }
   aspen_value_t *all = aspen_xmalloc((total ? total : 1) * sizeof *all);
   for (uint32_t i = 0; i < e->n_args; i++) {
      bson_iter_t it;
      aspen__array_iter(&v[i], &it);
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
   return true;
}

ASPEN__ARGS_EVAL(eval_set_union, set_union_args, compute_set_union)

static ASPEN__DECL_COMPUTE(compute_set_intersection)
{
   (void) st;
   if (e->n_args == 0) {
      *out = empty_array();
      return true;
   }
   uint32_t n;
   aspen_value_t *cur = set_of(&v[0], &n);
   for (uint32_t i = 1; i < e->n_args && n > 0; i++) {
      uint32_t m;
      aspen_value_t *other = set_of(&v[i], &m);
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
   return true;
}

ASPEN__ARGS_EVAL(eval_set_intersection, set_intersection_args,
                 compute_set_intersection)

static const aspen__args_t set_difference_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 17048,
            .msg = "both operands of $setDifference must be arrays. First "
                   "argument is of type: {type}"},
           {.types = ASPEN__T_ARRAY, .flags = ASPEN__ARG_NULL, .code = 17049,
            .msg = "both operands of $setDifference must be arrays. Second "
                   "argument is of type: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_set_difference)
{
   (void) e;
   (void) st;
   uint32_t nb, na;
   aspen_value_t *rhs = set_of(&v[1], &nb);
   aspen_value_t *lhs = aspen__array_items(&v[0], &na);
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
   return true;
}

ASPEN__ARGS_EVAL(eval_set_difference, set_difference_args,
                 compute_set_difference)

static ASPEN__DECL_PARSE(parse_set_equals)
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

static const aspen__args_t set_equals_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_ARRAY, .code = 17044,
            .msg = "All operands of $setEquals must be arrays. {nth}-th "
                   "argument is of type: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_set_equals)
{
   (void) st;
   uint32_t n0;
   aspen_value_t *first = set_of(&v[0], &n0);
   bool eq = true;
   for (uint32_t i = 1; eq && i < e->n_args; i++) {
      uint32_t m;
      aspen_value_t *other = set_of(&v[i], &m);
      eq = m == n0;
      for (uint32_t j = 0; eq && j < m; j++) {
         eq = aspen__value_cmp(&first[j], &other[j], true) == 0;
      }
      free(other);
   }
   free(first);
   *out = aspen_value_bool(eq);
   return true;
}

ASPEN__ARGS_EVAL(eval_set_equals, set_equals_args, compute_set_equals)

static const aspen__args_t set_is_subset_args = {
   .n = 2, .together = 2,
   .arg = {{.types = ASPEN__T_ARRAY, .code = 17046,
            .msg = "both operands of $setIsSubset must be arrays. First "
                   "argument is of type: {type}"},
           {.types = ASPEN__T_ARRAY, .code = 17042,
            .msg = "both operands of $setIsSubset must be arrays. Second "
                   "argument is of type: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_set_is_subset)
{
   (void) e;
   (void) st;
   uint32_t nb, na;
   aspen_value_t *rhs = set_of(&v[1], &nb);
   aspen_value_t *lhs = aspen__array_items(&v[0], &na);
   bool sub = true;
   for (uint32_t i = 0; sub && i < na; i++) {
      sub = set_contains(rhs, nb, &lhs[i]);
   }
   *out = aspen_value_bool(sub);
   free(lhs);
   free(rhs);
   return true;
}

ASPEN__ARGS_EVAL(eval_set_is_subset, set_is_subset_args, compute_set_is_subset)

#define ANY_ALL_ARGS(err_code)                                                 \
   {.n = 1,                                                                    \
    .arg = {{.types = ASPEN__T_ARRAY, .code = (err_code),                      \
             .msg = "{op}'s argument must be an array, but is {type}"}}}
static const aspen__args_t any_element_true_args = ANY_ALL_ARGS(17041);
static const aspen__args_t all_elements_true_args = ANY_ALL_ARGS(17040);
#undef ANY_ALL_ARGS

/* $anyElementTrue (sub 1) / $allElementsTrue (sub 0). */
static ASPEN__DECL_COMPUTE(compute_any_all)
{
   (void) st;
   bool any = e->op->sub != 0;
   bool res = !any;
   bson_iter_t it;
   aspen__array_iter(&v[0], &it);
   while (bson_iter_next(&it)) {
      aspen_value_t el = aspen_value_borrow(&it);
      if (aspen_value_truthy(&el) == any) {
         res = any;
         break;
      }
   }
   *out = aspen_value_bool(res);
   return true;
}

ASPEN__ARGS_EVAL(eval_any_element_true, any_element_true_args, compute_any_all)
ASPEN__ARGS_EVAL(eval_all_elements_true, all_elements_true_args,
                 compute_any_all)

/* ------------------------------------------------------------------------ */
/* $maxN $minN $firstN $lastN (sub 0..3): args = n, input                    */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t n_array_names[] = {
   {"n", 5787906, "Missing value for 'n'"},
   {"input", 5787907, "Missing value for 'input'"},
   {NULL, 0, NULL}};
static const aspen__named_spec_t n_array_spec = {
   n_array_names, 5787900, "specification of {op} must be an object, found: "
                           "{type}",
   5787901, "Unknown argument to {op} '{key}'"};

static ASPEN__DECL_PARSE(parse_n_array)
{
   return aspen__parse_named(ps, op, arg, e, &n_array_spec);
}

static int
cmp_desc(const aspen_value_t *a, const aspen_value_t *b, const void *ctx)
{
   (void) ctx;
   return -aspen__value_cmp(a, b, true);
}

static const aspen__args_t n_array_args = {
   .n = 2,
   .arg = {{.types = ASPEN__T_NUMBER,
            .flags = ASPEN__ARG_INT64 | ASPEN__ARG_RANGE, .code = 5787902,
            .msg = "Value for 'n' must be of integral type, but found {value}",
            .range_code = 5787908,
            .range_msg = "'n' must be greater than 0, found {value}",
            .min = 1,
            .max = INT64_MAX},
           {.types = ASPEN__T_ARRAY, .code = 5788200,
            .msg = "Input to {op} must be an array, but found {value}"}}};

/* $maxN $minN $firstN $lastN (sub 0..3). */
static ASPEN__DECL_COMPUTE(compute_n_array)
{
   (void) st;
   int kind = e->op->sub;
   int64_t n = aspen__arg_int(&v[0]);
   uint32_t cnt;
   aspen_value_t *items = aspen__array_items(&v[1], &cnt);
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
   return true;
}

ASPEN__ARGS_EVAL(eval_n_array, n_array_args, compute_n_array)

/* ------------------------------------------------------------------------ */
/* The operator table (expr_int.h, aspen__op_t)                              */
/* ------------------------------------------------------------------------ */

#define P ASPEN__OP_PURE
#define NARY aspen__parse_nary

/* Operators that bind variables ($map, $filter, $reduce) are never
 * folded. */
static const aspen__op_t ops[] = {
   {"$allElementsTrue", NARY, eval_all_elements_true, 1, 1, 0, P,
    &all_elements_true_args},
   {"$anyElementTrue", NARY, eval_any_element_true, 1, 1, 1, P,
    &any_element_true_args},
   {"$arrayElemAt", NARY, eval_array_elem_at, 2, 2, 0, P, &array_elem_at_args},
   {"$arrayToObject", NARY, eval_array_to_object, 1, 1, 0, P,
    &array_to_object_args},
   {"$concatArrays", NARY, eval_concat_arrays, -1, -1, 0, P,
    &concat_arrays_args},
   {"$filter", parse_filter, eval_filter, 0, 0, 0, 0, &filter_args},
   {"$first", NARY, eval_first_last, 1, 1, 0, P, &first_last_args},
   {"$firstN", parse_n_array, eval_n_array, 0, 0, 2, P, &n_array_args},
   {"$in", NARY, eval_in, 2, 2, 0, P, &in_args},
   {"$indexOfArray", NARY, eval_index_of_array, 2, 4, 0, P,
    &index_of_array_args},
   {"$isArray", NARY, eval_is_array, 1, 1, 0, P, &plain_args},
   {"$last", NARY, eval_first_last, 1, 1, 1, P, &first_last_args},
   {"$lastN", parse_n_array, eval_n_array, 0, 0, 3, P, &n_array_args},
   {"$map", parse_map, eval_map, 0, 0, 0, 0, &map_args},
   {"$maxN", parse_n_array, eval_n_array, 0, 0, 0, P, &n_array_args},
   {"$minN", parse_n_array, eval_n_array, 0, 0, 1, P, &n_array_args},
   {"$objectToArray", NARY, eval_object_to_array, 1, 1, 0, P,
    &object_to_array_args},
   {"$range", NARY, eval_range, 2, 3, 0, P, &range_args},
   {"$reduce", parse_reduce, eval_reduce, 0, 0, 0, 0, &reduce_args},
   {"$reverseArray", NARY, eval_reverse_array, 1, 1, 0, P, &reverse_array_args},
   {"$setDifference", NARY, eval_set_difference, 2, 2, 0, P,
    &set_difference_args},
   {"$setEquals", parse_set_equals, eval_set_equals, -1, -1, 0, P,
    &set_equals_args},
   {"$setIntersection", NARY, eval_set_intersection, -1, -1, 0, P,
    &set_intersection_args},
   {"$setIsSubset", NARY, eval_set_is_subset, 2, 2, 0, P, &set_is_subset_args},
   {"$setUnion", NARY, eval_set_union, -1, -1, 0, P, &set_union_args},
   {"$size", NARY, eval_size, 1, 1, 0, P, &size_args},
   {"$slice", NARY, eval_slice, 2, 3, 0, P, &slice_args},
   {"$sortArray", parse_sort_array, eval_sort_array, 0, 0, 0, P,
    &sort_array_args},
   {"$zip", parse_zip, eval_zip, 0, 0, 0, P, &zip_args},
};

#undef P
#undef NARY

const aspen__op_table_t aspen__expr_array_ops = {
   ops, sizeof ops / sizeof ops[0]};
