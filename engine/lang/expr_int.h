/*
 * expr_int.h - internals shared by the expression compiler and evaluator
 * (expr.c, expr_num.c, expr_string.c, expr_array.c, expr_convert.c,
 * expr_date.c) and the accumulators (accum.c). Nothing outside lang/
 * includes it.
 *
 * An expression compiles to a tree of aspen_expr_t nodes. Each node carries
 * the evaluation function of its operator (so evaluation is one indirect
 * call per node, no switch), its children, and a small amount of
 * operator-specific data. Variables ($$x bound by $let/$map/$filter/$reduce
 * or by the caller's `let`) are resolved at compile time to slot indexes in a
 * per-evaluation array, so evaluation never looks a name up.
 *
 * Values flowing between nodes are aspen_value_t: a borrowed view when the
 * value lives in the input document, the pipeline or a variable slot, owned
 * when computed. A node that destroys a value its result might borrow from
 * first makes the result owned (aspen__value_own).
 */
#ifndef ASPEN_ENGINE_LANG_EXPR_INT_H
#define ASPEN_ENGINE_LANG_EXPR_INT_H

#include "lang/expr.h"
#include "lang/value_int.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* Shared by the expression operators and the accumulator                    */
/* ------------------------------------------------------------------------ */

/* $mergeObjects' input rule (objects, null or missing), shared by the
 * expression and the accumulator; sets err (code 40400) when broken. */
bool aspen__merge_objects_input_ok(const aspen_value_t *v, aspen_error_t *err);

/* ------------------------------------------------------------------------ */
/* Compiled nodes                                                            */
/* ------------------------------------------------------------------------ */

typedef struct aspen__eval aspen__eval_t;
typedef struct aspen__parse aspen__parse_t;
typedef struct aspen__op aspen__op_t;

typedef bool (*aspen__eval_fn)(const aspen_expr_t *e, aspen__eval_t *st,
                               aspen_value_t *out);
typedef bool (*aspen__parse_fn)(aspen__parse_t *ps, const aspen__op_t *op,
                                const bson_iter_t *arg, aspen_expr_t *e);

/* An operator: name, how its argument is compiled, how it is evaluated. */
struct aspen__op {
   const char *name;
   aspen__parse_fn parse;
   aspen__eval_fn eval;
   int16_t min_args; /* for the n-ary parser; -1: no limit */
   int16_t max_args;
   int32_t sub;      /* operator variant (comparison kind, date part...) */
   uint32_t flags;
};

/* Operator flags. */
#define ASPEN__OP_PURE 0x1u     /* same inputs, same output: foldable */

/* Node flags. */
#define ASPEN__NODE_CONST 0x1u  /* a constant: cval holds the value */

#define ASPEN__VAR_ROOT (-1)
#define ASPEN__VAR_REMOVE (-2)

struct aspen_expr {
   aspen__eval_fn eval;
   const aspen__op_t *op; /* NULL for constants, paths, objects, arrays */
   uint32_t flags;
   uint32_t n_args;
   aspen_expr_t **args; /* children; an optional one may be NULL */
   aspen_value_t cval;  /* constants (borrowed from the pipeline or owned) */
   int64_t ival;        /* small per-op integer (e.g. a parsed date unit) */
   /* Field path / variable: "$a.b" or "$$x.a.b". */
   int32_t var;         /* slot, or ASPEN__VAR_ROOT / _REMOVE */
   uint32_t n_parts;
   char **parts;        /* path components, each NUL-terminated */
   /* Object expressions: keys of the children (args[i] <-> keys[i]). */
   char **keys;
   /* Bound variable slots ($let: one per var; $map/$filter: 1; $reduce:
    * this, value). */
   uint32_t n_binds;
   int32_t *binds;
   /* Operator-private data, freed with aux_free. */
   void *aux;
   void (*aux_free)(void *aux);
   /* Root only: how many slots an evaluation needs and the names of the
    * caller's variables (slots 0..n_ext-1). */
   uint32_t n_slots;
   uint32_t n_ext;
   char **ext_names;
};

struct aspen__eval {
   const aspen_expr_ctx_t *ctx;
   aspen_value_t *slots;
   const bool *ext_unbound; /* per caller variable; NULL when all bound */
   uint32_t n_ext;
   aspen_error_t *err;
   /* What this evaluation has spent (see the limits below). */
   uint64_t steps; /* nodes evaluated */
   uint64_t made;  /* bytes of the values nodes made (owned results) */
};

/* Limits of one evaluation (README "Limits"), so that no expression can
 * take unbounded memory or time:
 *  - a string value shorter than 16 MB, as mongod (16493 "Tried to create
 *    string longer than 16MB");
 *  - a document or array value of at most BSONObjMaxInternalSize, 16 MB +
 *    16 KB, as mongod when it serialises one (10334 BSONObjectTooLarge);
 *  - at most ASPEN__EVAL_MAX_MADE bytes of values made in all (every owned
 *    result of every node counts, freed or not: this bounds the copying
 *    of a $reduce that grows its value too), 146 ExceededMemoryLimit;
 *  - at most ASPEN__EVAL_MAX_STEPS nodes evaluated, 262 ExceededTimeLimit;
 *  - and it stops with 11601 Interrupted when the thread's interrupt flag
 *    is set (aspen_expr_set_interrupt: a processor being stopped). */
#define ASPEN__MAX_STRING_LEN (16u * 1024 * 1024)
#define ASPEN__MAX_OBJECT_LEN ASPEN_MAX_OBJECT_LEN
#define ASPEN__EVAL_MAX_MADE (512ull * 1024 * 1024)
#define ASPEN__EVAL_MAX_STEPS 100000000ull

/* Every 1024 steps: the step limit and the interrupt flag. */
bool aspen__eval_check_slow(aspen__eval_t *st);
/* Counts an owned result against the limits; false with st->err set. */
bool aspen__eval_charge(aspen__eval_t *st, const aspen_value_t *val);
/* For operators that build a value piece by piece: false with st->err set
 * once `len` bytes passes the limit of a string (`is_string`) or of a
 * document/array, so a loop stops before it holds more. */
bool aspen__eval_size_ok(aspen__eval_t *st, size_t len, bool is_string);

#define ASPEN__MAX_DEPTH 150

struct aspen__parse {
   const char **names; /* variable names in scope, innermost last */
   int32_t *slots;
   uint32_t n_names;
   uint32_t cap_names;
   uint32_t n_slots; /* slots handed out so far */
   uint32_t depth;
   bool current_rebound; /* CURRENT is a user slot somewhere in scope */
   aspen_error_t *err;
};

static inline bool
aspen__eval_node(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   if ((++st->steps & 1023u) == 0 && !aspen__eval_check_slow(st)) {
      *out = ASPEN_VALUE_MISSING;
      return false;
   }
   if (!e->eval(e, st, out)) {
      return false;
   }
   if (out->owned && !aspen__eval_charge(st, out)) {
      aspen_value_destroy(out);
      return false;
   }
   return true;
}

/* Sets st->err and returns false; *out is left MISSING by the callers. */
bool aspen__fail(aspen__eval_t *st, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));
bool aspen__pfail(aspen__parse_t *ps, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));

/* Compiles one operand (any BSON value) into a node. */
bool aspen__parse_operand(aspen__parse_t *ps, const bson_iter_t *it,
                          aspen_expr_t **out);
/* Allocates an empty node. */
aspen_expr_t *aspen__node_new(void);
/* Allocates n child pointers (zeroed). */
void aspen__node_args(aspen_expr_t *e, uint32_t n);
/* Declares a variable for a sub-scope: returns its slot. The name stays
 * visible until aspen__scope_pop(ps, mark). */
int32_t aspen__scope_push(aspen__parse_t *ps, const char *name);
static inline uint32_t
aspen__scope_mark(const aspen__parse_t *ps)
{
   return ps->n_names;
}
void aspen__scope_pop(aspen__parse_t *ps, uint32_t mark);
/* Validates a user variable name being defined ($let vars, `as`). */
bool aspen__check_var_name(aspen__parse_t *ps, const char *name);

/* Generic parsers used by the operator table. */
bool aspen__parse_nary(aspen__parse_t *ps, const aspen__op_t *op,
                       const bson_iter_t *arg, aspen_expr_t *e);
/* Named-argument parsing: fills e->args (n_names of them, NULL when absent)
 * from an object argument. `what` selects the messages. Returns false with
 * the error already set. */
typedef enum {
   ASPEN__NOTOBJ_ONLY_OBJECT_FOUND,   /* "%s only supports an object as an
                                         argument, found %s" */
   ASPEN__NOTOBJ_REQUIRES_OBJECT,     /* "%s requires an object as an
                                         argument, found: %s" */
   ASPEN__NOTOBJ_EXPECTS_NAMED,       /* "%s expects an object of named
                                         arguments but found: %s" */
   ASPEN__NOTOBJ_SPECIFICATION,       /* "specification of %s must be an
                                         object, found: %s" */
   ASPEN__NOTOBJ_ONLY_OBJECT_ITS,     /* "%s only supports an object as its
                                         argument" */
} aspen__notobj_style_t;

typedef enum {
   ASPEN__UNKNOWN_FOUND,        /* "%s found an unknown argument: %s" */
   ASPEN__UNKNOWN_UNRECOGNIZED, /* "Unrecognized argument to %s: %s" */
   ASPEN__UNKNOWN_ARGUMENT_TO,  /* "Unknown argument to %s '%s'" */
} aspen__unknown_style_t;

typedef struct {
   const char *const *names; /* NULL-terminated */
   int32_t not_object_code;
   aspen__notobj_style_t not_object_style;
   int32_t unknown_code;
   aspen__unknown_style_t unknown_style;
} aspen__named_spec_t;
bool aspen__parse_named(aspen__parse_t *ps, const aspen__op_t *op,
                        const bson_iter_t *arg, aspen_expr_t *e,
                        const aspen__named_spec_t *spec);
/* Missing required named argument (args[i] == NULL) -> error. */
bool aspen__require(aspen__parse_t *ps, const aspen_expr_t *e, uint32_t i,
                    int32_t code, const char *msg);

/* Evaluates child i (MISSING when the child is absent). */
bool aspen__eval_arg(const aspen_expr_t *e, uint32_t i, aspen__eval_t *st,
                     aspen_value_t *out);

/* Looks up `path` (pre-split) in a document value. Arrays along the way are
 * traversed as MongoDB's field paths do. Borrowed when the result is a plain
 * field of the input. */
aspen_value_t aspen__path_get(const uint8_t *doc, uint32_t len,
                              char *const *parts, uint32_t n_parts);

/* Builds an array value from the values appended to `arr` (takes it). */
aspen_value_t aspen__array_finish(bson_t *arr);
/* Appends `val` at array index `i` (MISSING is appended as null, as array
 * expressions do). */
void aspen__array_append(bson_t *arr, uint32_t i, const aspen_value_t *val);

/* Array iteration helper over an array value. */
static inline bool
aspen__array_iter(const aspen_value_t *arr, bson_iter_t *it)
{
   return bson_iter_init_from_data(it, arr->v.value.v_doc.data,
                                   arr->v.value.v_doc.data_len);
}
uint32_t aspen__array_len(const aspen_value_t *arr);
/* Collects borrowed views of an array's elements into a malloc'd vector. */
aspen_value_t *aspen__array_items(const aspen_value_t *arr, uint32_t *n);

/* Date coercion as MongoDB's coerceToDate: Date, Timestamp (seconds), and
 * ObjectId (its timestamp). */
bool aspen__coerce_date(const aspen_value_t *val, int64_t *ms);

/* UTF-8 helpers. */
size_t aspen__utf8_cp_len(unsigned char lead);

/* Regular expressions (PCRE2), shared by the string operators. */
void *aspen__regex_compile(const char *pattern, const char *options,
                           const char *opname, aspen_error_t *err);
void aspen__regex_free(void *re);

/* Timezones (expr_date.c). */
typedef struct aspen__tz aspen__tz_t;
const aspen__tz_t *aspen__tz_utc(void);
/* Offset in ms of the timezone at UTC instant `ms`. */
int64_t aspen__tz_offset(const aspen__tz_t *tz, int64_t ms);
/* Parses a timezone name or offset; returns NULL with err set. The result
 * is cached and lives until exit. */
const aspen__tz_t *aspen__tz_parse(const char *name, size_t len,
                                   aspen_error_t *err);
bool aspen__tz_is_utc(const aspen__tz_t *tz);

/* $dateToString's default format (UTC), and without the Z for other zones. */
#define ASPEN__ISO_FORMAT "%Y-%m-%dT%H:%M:%S.%LZ"
#define ASPEN__ISO_FORMAT_LOCAL "%Y-%m-%dT%H:%M:%S.%L"

/* Formats `ms` (UTC instant) with the $dateToString specifiers into `buf`;
 * false with err set on a bad format. */
bool aspen__date_format(int64_t ms, const char *fmt, size_t fmt_len,
                        const aspen__tz_t *tz, char *buf, size_t cap,
                        size_t *len, aspen_error_t *err);
/* Parses a date string (ISO-8601-ish when fmt is NULL). */
bool aspen__date_parse(const char *s, size_t len, const char *fmt,
                       size_t fmt_len, const aspen__tz_t *tz, bool tz_given,
                       int64_t *ms, aspen_error_t *err);

/* Date parts ($year ... $isoDayOfWeek), the `sub` of their table entries. */
enum {
   ASPEN__DP_YEAR,
   ASPEN__DP_MONTH,
   ASPEN__DP_DAY_OF_MONTH,
   ASPEN__DP_HOUR,
   ASPEN__DP_MINUTE,
   ASPEN__DP_SECOND,
   ASPEN__DP_MILLISECOND,
   ASPEN__DP_DAY_OF_YEAR,
   ASPEN__DP_DAY_OF_WEEK,
   ASPEN__DP_WEEK,
   ASPEN__DP_ISO_WEEK_YEAR,
   ASPEN__DP_ISO_WEEK,
   ASPEN__DP_ISO_DAY_OF_WEEK,
};

/* Trigonometric operators, the `sub` of their table entries. */
enum {
   ASPEN__TRIG_SIN,
   ASPEN__TRIG_COS,
   ASPEN__TRIG_TAN,
   ASPEN__TRIG_ASIN,
   ASPEN__TRIG_ACOS,
   ASPEN__TRIG_ATAN,
   ASPEN__TRIG_SINH,
   ASPEN__TRIG_COSH,
   ASPEN__TRIG_TANH,
   ASPEN__TRIG_ASINH,
   ASPEN__TRIG_ACOSH,
   ASPEN__TRIG_ATANH,
   ASPEN__TRIG_DEG2RAD,
   ASPEN__TRIG_RAD2DEG,
};

/* Operator implementations, by file. They share two contracts:
 *  - aspen__eval_<op>(e, st, out): evaluates node `e`. On success returns
 *    true and *out holds the result (owned, or a view into the input
 *    document, the pipeline, or a variable slot that outlives the caller's
 *    use); the caller destroys it with aspen_value_destroy. On a runtime
 *    error returns false with st->err set and *out MISSING. Nodes are
 *    read-only, so any thread may evaluate with its own aspen__eval_t.
 *  - aspen__parse_<op>(ps, op, arg, e): compiles the operator's argument
 *    `arg` into `e` (children in e->args, private data in e->aux). Returns
 *    false with ps->err set; the caller destroys the partly built node. */
#define ASPEN__DECL_EVAL(name)                                                 \
   bool name(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
#define ASPEN__DECL_PARSE(name)                                                \
   bool name(aspen__parse_t *ps, const aspen__op_t *op,                        \
             const bson_iter_t *arg, aspen_expr_t *e)

/* expr_num.c */
ASPEN__DECL_EVAL(aspen__eval_add);
ASPEN__DECL_EVAL(aspen__eval_subtract);
ASPEN__DECL_EVAL(aspen__eval_multiply);
ASPEN__DECL_EVAL(aspen__eval_divide);
ASPEN__DECL_EVAL(aspen__eval_mod);
ASPEN__DECL_EVAL(aspen__eval_abs);
ASPEN__DECL_EVAL(aspen__eval_ceil);
ASPEN__DECL_EVAL(aspen__eval_floor);
ASPEN__DECL_EVAL(aspen__eval_round);
ASPEN__DECL_EVAL(aspen__eval_sqrt);
ASPEN__DECL_EVAL(aspen__eval_pow);
ASPEN__DECL_EVAL(aspen__eval_exp);
ASPEN__DECL_EVAL(aspen__eval_ln);
ASPEN__DECL_EVAL(aspen__eval_log);
ASPEN__DECL_EVAL(aspen__eval_log10);
ASPEN__DECL_EVAL(aspen__eval_accum);
ASPEN__DECL_PARSE(aspen__parse_accum);
ASPEN__DECL_EVAL(aspen__eval_trig);
ASPEN__DECL_EVAL(aspen__eval_atan2);
ASPEN__DECL_EVAL(aspen__eval_bit);
ASPEN__DECL_EVAL(aspen__eval_bit_not);

/* expr_string.c */
ASPEN__DECL_EVAL(aspen__eval_concat);
ASPEN__DECL_EVAL(aspen__eval_substr_bytes);
ASPEN__DECL_EVAL(aspen__eval_substr_cp);
ASPEN__DECL_EVAL(aspen__eval_case);
ASPEN__DECL_EVAL(aspen__eval_strlen_bytes);
ASPEN__DECL_EVAL(aspen__eval_strlen_cp);
ASPEN__DECL_EVAL(aspen__eval_split);
ASPEN__DECL_PARSE(aspen__parse_trim);
ASPEN__DECL_EVAL(aspen__eval_trim);
ASPEN__DECL_EVAL(aspen__eval_index_of_bytes);
ASPEN__DECL_EVAL(aspen__eval_index_of_cp);
ASPEN__DECL_EVAL(aspen__eval_strcasecmp);
ASPEN__DECL_PARSE(aspen__parse_regex);
ASPEN__DECL_EVAL(aspen__eval_regex);
ASPEN__DECL_PARSE(aspen__parse_replace);
ASPEN__DECL_EVAL(aspen__eval_replace);
ASPEN__DECL_EVAL(aspen__eval_binary_size);

/* expr_array.c */
ASPEN__DECL_EVAL(aspen__eval_array_elem_at);
ASPEN__DECL_EVAL(aspen__eval_first_last);
ASPEN__DECL_EVAL(aspen__eval_concat_arrays);
ASPEN__DECL_PARSE(aspen__parse_filter);
ASPEN__DECL_EVAL(aspen__eval_filter);
ASPEN__DECL_PARSE(aspen__parse_map);
ASPEN__DECL_EVAL(aspen__eval_map);
ASPEN__DECL_PARSE(aspen__parse_reduce);
ASPEN__DECL_EVAL(aspen__eval_reduce);
ASPEN__DECL_EVAL(aspen__eval_size);
ASPEN__DECL_EVAL(aspen__eval_in);
ASPEN__DECL_EVAL(aspen__eval_index_of_array);
ASPEN__DECL_EVAL(aspen__eval_is_array);
ASPEN__DECL_EVAL(aspen__eval_range);
ASPEN__DECL_EVAL(aspen__eval_reverse_array);
ASPEN__DECL_EVAL(aspen__eval_slice);
ASPEN__DECL_PARSE(aspen__parse_zip);
ASPEN__DECL_EVAL(aspen__eval_zip);
ASPEN__DECL_PARSE(aspen__parse_sort_array);
ASPEN__DECL_EVAL(aspen__eval_sort_array);
ASPEN__DECL_EVAL(aspen__eval_array_to_object);
ASPEN__DECL_EVAL(aspen__eval_object_to_array);
ASPEN__DECL_EVAL(aspen__eval_set_union);
ASPEN__DECL_EVAL(aspen__eval_set_intersection);
ASPEN__DECL_EVAL(aspen__eval_set_difference);
ASPEN__DECL_PARSE(aspen__parse_set_equals);
ASPEN__DECL_EVAL(aspen__eval_set_equals);
ASPEN__DECL_EVAL(aspen__eval_set_is_subset);
ASPEN__DECL_EVAL(aspen__eval_any_element_true);
ASPEN__DECL_EVAL(aspen__eval_all_elements_true);
ASPEN__DECL_PARSE(aspen__parse_n_array);
ASPEN__DECL_EVAL(aspen__eval_n_array);

/* expr_convert.c */
ASPEN__DECL_EVAL(aspen__eval_type);
ASPEN__DECL_EVAL(aspen__eval_is_number);
ASPEN__DECL_PARSE(aspen__parse_convert);
ASPEN__DECL_EVAL(aspen__eval_convert);
ASPEN__DECL_PARSE(aspen__parse_to_type);
ASPEN__DECL_EVAL(aspen__eval_to_type);

/* expr_date.c */
ASPEN__DECL_PARSE(aspen__parse_date_part);
ASPEN__DECL_EVAL(aspen__eval_date_part);
ASPEN__DECL_PARSE(aspen__parse_date_to_string);
ASPEN__DECL_EVAL(aspen__eval_date_to_string);
ASPEN__DECL_PARSE(aspen__parse_date_from_string);
ASPEN__DECL_EVAL(aspen__eval_date_from_string);
ASPEN__DECL_PARSE(aspen__parse_date_from_parts);
ASPEN__DECL_EVAL(aspen__eval_date_from_parts);
ASPEN__DECL_PARSE(aspen__parse_date_to_parts);
ASPEN__DECL_EVAL(aspen__eval_date_to_parts);
ASPEN__DECL_PARSE(aspen__parse_date_trunc);
ASPEN__DECL_EVAL(aspen__eval_date_trunc);
ASPEN__DECL_PARSE(aspen__parse_date_add);
ASPEN__DECL_EVAL(aspen__eval_date_add);
ASPEN__DECL_PARSE(aspen__parse_date_diff);
ASPEN__DECL_EVAL(aspen__eval_date_diff);

#endif /* ASPEN_ENGINE_LANG_EXPR_INT_H */
