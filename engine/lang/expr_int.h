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

#include "bsonw.h"
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
typedef struct aspen__args aspen__args_t;

typedef bool (*aspen__eval_fn)(const aspen_expr_t *e, aspen__eval_t *st,
                               aspen_value_t *out);
/* Evaluates node `e` and appends its value under `key` to `w` (nothing
 * when MISSING), as aspen__eval_node then aspen_bsonw_value would, except
 * that the node's own step is already counted (aspen_expr_eval_write). */
typedef bool (*aspen__write_fn)(const aspen_expr_t *e, aspen__eval_t *st,
                                aspen_bsonw_t *w, const char *key,
                                size_t key_len);
typedef bool (*aspen__parse_fn)(aspen__parse_t *ps, const aspen__op_t *op,
                                const bson_iter_t *arg, aspen_expr_t *e);
/* An operator: name, how its argument is compiled, how it is evaluated.
 * `args`, when not NULL, says what its arguments must be (expr_args.h):
 * the operators whose arguments follow the common shape (evaluate, null or
 * missing gives null, a wrong type is an error) declare it there instead of
 * writing it out. */
struct aspen__op {
   const char *name;
   aspen__parse_fn parse;
   aspen__eval_fn eval;
   int16_t min_args; /* for the n-ary parser; -1: no limit */
   int16_t max_args;
   int32_t sub;      /* operator variant (comparison kind, date part...) */
   uint32_t flags;
   const aspen__args_t *args;
};

/* Each operator file's table, sorted by name (strcmp order) so that
 * expr.c's lookup can binary-search it; no name is in two tables. */
typedef struct {
   const aspen__op_t *ops;
   size_t n;
} aspen__op_table_t;

extern const aspen__op_table_t aspen__expr_core_ops;    /* expr.c */
extern const aspen__op_table_t aspen__expr_num_ops;     /* expr_num.c */
extern const aspen__op_table_t aspen__expr_string_ops;  /* expr_string.c */
extern const aspen__op_table_t aspen__expr_array_ops;   /* expr_array.c */
extern const aspen__op_table_t aspen__expr_convert_ops; /* expr_convert.c */
extern const aspen__op_table_t aspen__expr_date_ops;    /* expr_date.c */
extern const aspen__op_table_t aspen__expr_function_ops; /* expr_function.c */

/* Operator flags. */
#define ASPEN__OP_PURE 0x1u     /* same inputs, same output: foldable */

/* Node flags. */
#define ASPEN__NODE_CONST 0x1u  /* a constant: cval holds the value */
#define ASPEN__NODE_TO_STRING 0x2u /* {$toString: x} (one argument) */

#define ASPEN__VAR_ROOT (-1)
#define ASPEN__VAR_REMOVE (-2)

struct aspen_expr {
   aspen__eval_fn eval;
   /* How the node, the root of a field's expression, is evaluated into
    * the output (aspen_expr_eval_write): an operator's specialised write,
    * which writes the common cases' result straight under the key and
    * hands anything else to aspen__write_eval; NULL: aspen__write_eval
    * (eval, then write). Chosen by the parser; a folded constant drops
    * it. */
   aspen__write_fn write;
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
   uint32_t part0_len;  /* strlen(parts[0]) (field paths, $$var paths) */
   /* Document paths: the slot table it was added to (NULL: none) and its
    * slot there (expr_paths.c). */
   const aspen_expr_paths_t *ptab;
   uint32_t pslot;
   bool pcurrent; /* read from $$CURRENT (else $$ROOT) */
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
/* An owned string value holding a copy of the `len` bytes at `s`: in the
 * context's scratch (aspen_expr_ctx_t.scratch) when it has room (marked
 * `scratch`: owned for every decision and limit, never freed), else on the
 * heap. */
aspen_value_t aspen__value_str_make(aspen__eval_t *st, const char *s,
                                    size_t len);

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

/* The resolved path table (expr_paths.c). */
enum { ASPEN__PSLOT_VALUE = 0, ASPEN__PSLOT_GENERAL = 1 };
typedef struct {
   int32_t parent;    /* the slot of the path's prefix; -1: top level */
   const char *key;   /* the path's last component (borrowed) */
   uint32_t klen;
   char *const *parts; /* the whole path (borrowed), to share slots */
   uint32_t n_parts;
} aspen__pslot_t;
/* Siblings: the slots order[start..start+n-1], all under `parent`. */
typedef struct {
   int32_t parent;
   uint32_t start, n;
} aspen__pgroup_t;
/* A sibling group's last scan of a sub-document (expr_paths.c,
 * scan_siblings), kept to check the next one's against: the heads (type
 * byte, key, NUL) of the elements it walked, in order, and which slot
 * each filled. A sub-document whose elements start with the same heads
 * fills the same slots from the same elements. */
#define ASPEN__PNEST_STEPS 8
#define ASPEN__PNEST_HEAD 16
typedef struct {
   /* The head as two little-endian words (zero past it), the bytes of
    * the last one that count, and how many words it takes (1 or 2). */
   uint64_t kw[2];
   uint64_t kmask;
   uint8_t words;
   uint8_t hlen;
   uint8_t type;
   int32_t slot;   /* the slot it filled, -1: none */
   uint32_t esize; /* the whole element's size if its type has a fixed
                    * one, 0: read from its value */
   uint32_t off;   /* where it starts, for a fixed walk (below) */
} aspen__pstep_t;
typedef struct {
   bool valid;
   bool to_end; /* the walk reached the end (some names absent) */
   /* Every slot of the group holds ASPEN__PSLOT_VALUE (no state to
    * write). */
   bool all_value;
   uint8_t n_steps;
   /* A fixed walk: every element walked has a fixed size, and those that
    * fill a slot an int32, a double, an int64, a date, a bool or null, so
    * each starts at a known offset (steps[i].off) and the walk ends at
    * `end`; a sub-document of `need` bytes or more has room for each
    * head's words and each element. */
   bool fixed;
   uint32_t end, need;
   aspen__pstep_t steps[ASPEN__PNEST_STEPS];
   /* A fixed walk as flat checks (expr_paths.c, nest_fixed): a length
    * within need .. `lmax` (end + 1 after a walk to the end, else any),
    * each head's words (at their offsets, masked to its bytes), then the
    * slots' values at their offsets. */
   uint32_t lmax;
   uint8_t n_words, n_fills;
   uint8_t n_fill4, n_fill8; /* fill[0..n_fill4-1]: int32s; to n_fill8: 8
                              * bytes; then bools and nulls */
   bool ptop;  /* its prefix is a top-level slot */
   bool quick; /* fixed, all_value and ptop (aspen_expr_paths_resolve) */
   /* The group's prefix: its slot's value and state. */
   const aspen_value_t *pv;
   const uint8_t *pstate;
   struct {
      uint64_t kw, kmask;
      uint32_t off;
   } word[2 * ASPEN__PNEST_STEPS];
   struct {
      aspen_value_t *out;
      uint32_t voff;
      uint8_t type;
   } fill[ASPEN__PNEST_STEPS];
} aspen__pnest_t;
/* A top-level slot found in a table of the memo's layout: the field's
 * index there, its key's length, where the slot's value goes. */
typedef struct {
   aspen_value_t *out;
   uint32_t klen;
   uint8_t fi;
} aspen__ptop_t;
/* No layout (ids count up from 1: lang/fields.h). */
#define ASPEN__PMEMO_NONE UINT64_MAX
struct aspen_expr_paths {
   aspen__pslot_t *slots;
   uint32_t n, cap;
   /* Slot indexes by parent (stable), parents before children, and the
    * groups of siblings in that order: each group is resolved by one scan.
    * Rebuilt when slots are added. */
   uint32_t *order;
   aspen__pgroup_t *groups;
   aspen__pnest_t *nest; /* per group: its last scan (not the top level's) */
   uint32_t n_groups;
   bool order_ok;
   /* Where the top-level slots are in the input's field table, as found
    * for a table of layout `memo_layout` (lang/fields.h; ASPEN__PMEMO_NONE:
    * none kept): a table of that layout fills them without a lookup. The
    * table is its stage's (one thread), so plain fields. */
   uint64_t memo_layout;
   /* The top-level slots found for it (those not found hold MISSING
    * while the memo stands: only the top level's fill writes them). */
   aspen__ptop_t *tops;
   uint32_t n_tops;
   /* Per document (aspen_expr_paths_resolve). */
   const bson_t *doc;
   aspen_value_t *vals;
   uint8_t *state; /* ASPEN__PSLOT_* */
};
extern bool aspen__expr_paths_on;

/* The path node `e`'s slot in the context's resolved table, if it holds
 * its value: the table it was compiled into, resolved against the
 * document it reads ($$ROOT, or $$CURRENT for a "$a.b" path); else NULL.
 * aspen__slot_get: true, *out set (a copy of the slot's view), the same. */
static inline const aspen_value_t *
aspen__slot_at(const aspen_expr_t *e, const aspen__eval_t *st)
{
   const aspen_expr_paths_t *p = st->ctx->paths;
   if (!p || p != e->ptab) {
      return NULL;
   }
   const bson_t *doc = e->pcurrent && st->ctx->current ? st->ctx->current
                                                       : st->ctx->root;
   if (p->doc != doc || p->state[e->pslot] != ASPEN__PSLOT_VALUE) {
      return NULL;
   }
   return &p->vals[e->pslot];
}

static inline bool
aspen__slot_get(const aspen_expr_t *e, const aspen__eval_t *st,
                aspen_value_t *out)
{
   const aspen_value_t *at = aspen__slot_at(e, st);
   if (!at) {
      return false;
   }
   *out = *at;
   return true;
}

/* Where a leaf's value is, without evaluating its node or copying the
 * value: the constant, or the slot of a path that holds its value (a
 * borrowed view either way); NULL: the node must be evaluated. Does not
 * count the step: see aspen__steps_skip. */
static inline const aspen_value_t *
aspen__leaf_at(const aspen_expr_t *e, const aspen__eval_t *st)
{
   if (e->flags & ASPEN__NODE_CONST) {
      return &e->cval;
   }
   return e->ptab ? aspen__slot_at(e, st) : NULL;
}

/* A leaf's value without evaluating its node: a constant, or a path
 * whose slot holds its value (what aspen__eval_node does inline for them;
 * a borrowed view either way). False: the node must be evaluated. Does
 * not count the step: see aspen__steps_skip. */
static inline bool
aspen__leaf_get(const aspen_expr_t *e, const aspen__eval_t *st,
                aspen_value_t *out)
{
   if (e->flags & ASPEN__NODE_CONST) {
      *out = aspen__value_view(&e->cval);
      return true;
   }
   return e->ptab && aspen__slot_get(e, st, out);
}

/* The integer x when `e` is {$toString: leaf} of an int or a long (the
 * leaf's value in place, aspen__leaf_at): what the leaf evals of $concat
 * and the writes turn into digits themselves. */
static inline bool
aspen__to_string_int_leaf(const aspen_expr_t *e, const aspen__eval_t *st,
                          int64_t *x)
{
   const aspen_value_t *v;
   if (!(e->flags & ASPEN__NODE_TO_STRING) || e->n_args != 1 ||
       !e->args[0] || !(v = aspen__leaf_at(e->args[0], st))) {
      return false;
   }
   if (v->v.value_type == BSON_TYPE_INT32) {
      *x = v->v.value.v_int32;
      return true;
   }
   if (v->v.value_type == BSON_TYPE_INT64) {
      *x = v->v.value.v_int64;
      return true;
   }
   return false;
}

/* Whether the parsers install their operators' leaf evals (expr.h,
 * aspen_expr_leaves_set_enabled); whether aspen_expr_eval_write uses the
 * nodes' specialised writes (aspen_expr_write_set_enabled). */
extern bool aspen__expr_leaves_on;
extern bool aspen__expr_write_on;

/* Counts `k` node evaluations at once, for a fast path that skipped them
 * (aspen__leaf_get), when that passes no multiple of 1024 - where
 * aspen__eval_node checks the step limit and the interrupt flag - so the
 * count and the checks stay exactly the general path's. False (nothing
 * counted): take the general path. */
static inline bool
aspen__steps_skip(aspen__eval_t *st, uint32_t k)
{
   if ((st->steps & 1023u) + k >= 1024u) {
      return false;
   }
   st->steps += k;
   return true;
}

static inline bool
aspen__eval_node(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   if ((++st->steps & 1023u) == 0 && !aspen__eval_check_slow(st)) {
      *out = ASPEN_VALUE_MISSING;
      return false;
   }
   /* The leaves most expressions are made of, without a call: a constant
    * (eval_const) and a path whose slot holds its value (slot_get). */
   if (e->flags & ASPEN__NODE_CONST) {
      *out = aspen__value_view(&e->cval);
      return true;
   }
   if (e->ptab && aspen__slot_get(e, st, out)) {
      return true;
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

/* The general write (aspen__write_fn): node `e` evaluated as
 * aspen__eval_node does past its step count - a leaf read in place, else
 * its eval and the charge of an owned result - then its value written
 * with aspen_bsonw_value. What every specialised write falls back to. */
bool aspen__write_eval(const aspen_expr_t *e, aspen__eval_t *st,
                       aspen_bsonw_t *w, const char *key, size_t key_len);
#define ASPEN__DECL_WRITE(name)                                                \
   bool name(const aspen_expr_t *e, aspen__eval_t *st, aspen_bsonw_t *w,       \
             const char *key, size_t key_len)

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

/* Generic parsers used by the operator tables. */
bool aspen__parse_nary(aspen__parse_t *ps, const aspen__op_t *op,
                       const bson_iter_t *arg, aspen_expr_t *e);
/* aspen__parse_nary, then `leaves` as the node's eval (when they are on:
 * aspen__expr_leaves_on): an operator's specialised eval over leaves
 * (aspen__leaf_get), which hands anything else to op->eval; and `write`
 * as its write (may be NULL). */
bool aspen__parse_nary_leaves(aspen__parse_t *ps, const aspen__op_t *op,
                              const bson_iter_t *arg, aspen_expr_t *e,
                              aspen__eval_fn leaves, aspen__write_fn write);

/* Named-argument parsing ({input: ..., chars: ...}): one row per name, in
 * the order of e->args. A row with a missing_code is required: after all
 * names are read, the first absent one (in row order) fails with its
 * message. */
typedef struct {
   const char *name;
   int32_t missing_code; /* 0: optional */
   const char *missing_msg;
} aspen__named_arg_t;

/* The names (ending with a {NULL} row) and the errors for an argument that
 * is not an object (template with {op} and {type}) and for an unknown name
 * ({op} and {key}). Message templates: see aspen__msg_format. */
typedef struct {
   const aspen__named_arg_t *args;
   int32_t not_object_code;
   const char *not_object_msg;
   int32_t unknown_code;
   const char *unknown_msg;
} aspen__named_spec_t;

/* True when the operator's argument is an object; else false with ps->err
 * set to code and the template (with {op} and {type}). */
bool aspen__parse_object_arg(aspen__parse_t *ps, const aspen__op_t *op,
                             const bson_iter_t *arg, int32_t code,
                             const char *tmpl);
/* Fills e->args (one per name, NULL when absent) from an object argument,
 * compiling each as it comes. Returns false with ps->err set. */
bool aspen__parse_named(aspen__parse_t *ps, const aspen__op_t *op,
                        const bson_iter_t *arg, aspen_expr_t *e,
                        const aspen__named_spec_t *spec);
/* An iterator in an array element (bson_iter_t alone is over-aligned for
 * arrays). */
typedef struct {
   bson_iter_t it;
} aspen__named_it_t;
/* The same checks for an operator that compiles its named arguments itself
 * (a variable's name, a body in a scope of its own): its[i] is where
 * spec->args[i] is, when bit i of *found is set. */
bool aspen__named_find(aspen__parse_t *ps, const aspen__op_t *op,
                       const bson_iter_t *arg, const aspen__named_spec_t *spec,
                       aspen__named_it_t *its, uint32_t *found);

/* ------------------------------------------------------------------------ */
/* Error message templates (expr_args.c)                                     */
/* ------------------------------------------------------------------------ */

/* What a message template can name: {op}, {key}, {type} (of val), {value}
 * (val as JSON), {num} (val as a number's text), {int} (ival), {nth}
 * (pos + 1), {type0} and {type1} (of vals[0] and vals[1]). */
typedef struct {
   const char *op;
   const char *key;
   const aspen_value_t *val;
   const aspen_value_t *vals;
   uint32_t pos;
   int64_t ival;
} aspen__msg_t;

/* Expands `tmpl` into buf (cap bytes, always NUL-terminated, cut to fit as
 * snprintf does). A brace that does not open a known name stays as is. */
void aspen__msg_format(char *buf, size_t cap, const char *tmpl,
                       const aspen__msg_t *m);
/* Sets err (when not NULL) to code and the expanded template; returns
 * false. */
bool aspen__msg_fail(aspen_error_t *err, int32_t code, const char *tmpl,
                     const aspen__msg_t *m);

/* Evaluates child i (MISSING when the child is absent). */
static inline bool
aspen__eval_arg(const aspen_expr_t *e, uint32_t i, aspen__eval_t *st,
                aspen_value_t *out)
{
   if (i >= e->n_args || !e->args[i]) {
      *out = ASPEN_VALUE_MISSING;
      return true;
   }
   return aspen__eval_node(e->args[i], st, out);
}

/* Looks up `path` (pre-split) in a document value. Arrays along the way are
 * traversed as MongoDB's field paths do. Borrowed when the result is a plain
 * field of the input. */
aspen_value_t aspen__path_get(const uint8_t *doc, uint32_t len,
                              char *const *parts, uint32_t n_parts);

/* The value of the element at `off` of the BSON document at data/len (its
 * type byte), whose key is `kl` bytes long, as a borrowed view; false if
 * malformed. Inline: field paths are the hottest code in the engine. */
static inline bool
aspen__raw_value(const uint8_t *data, uint32_t len, uint32_t off, size_t kl,
                 aspen_value_t *out)
{
   uint8_t type = data[off];
   uint32_t voff = off + 1 + (uint32_t) kl + 1;
   const uint8_t *v = data + voff;
   size_t avail = len - voff;
   memset(out, 0, sizeof *out);
   out->v.value_type = (bson_type_t) type;
   switch (type) {
   case BSON_TYPE_INT32:
      if (avail < 4) {
         return false;
      }
      out->v.value.v_int32 = (int32_t) aspen_bytes_get_le32(v);
      return true;
   case BSON_TYPE_INT64:
   case BSON_TYPE_DATE_TIME:
      if (avail < 8) {
         return false;
      }
      out->v.value.v_int64 = (int64_t) aspen_bytes_get_le64(v);
      return true;
   case BSON_TYPE_DOUBLE:
      if (avail < 8) {
         return false;
      }
      {
         uint64_t x = aspen_bytes_get_le64(v);
         memcpy(&out->v.value.v_double, &x, 8);
      }
      return true;
   case BSON_TYPE_BOOL:
      if (avail < 1) {
         return false;
      }
      out->v.value.v_bool = *v != 0;
      return true;
   case BSON_TYPE_NULL:
      return true;
   case BSON_TYPE_UTF8: {
      int64_t sz = aspen_bsonw_value_size(type, v, avail);
      if (sz < 0) {
         return false;
      }
      out->v.value.v_utf8.str = (char *) v + 4;
      out->v.value.v_utf8.len = (uint32_t) (sz - 5);
      return true;
   }
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY: {
      int64_t sz = aspen_bsonw_value_size(type, v, avail);
      if (sz < 0) {
         return false;
      }
      out->v.value.v_doc.data = (uint8_t *) v;
      out->v.value.v_doc.data_len = (uint32_t) sz;
      return true;
   }
   default: {
      bson_iter_t it;
      if (!bson_iter_init_from_data_at_offset(&it, data, len, off,
                                              (uint32_t) kl)) {
         return false;
      }
      *out = aspen_value_borrow(&it);
      return true;
   }
   }
}

/* True if `e` is a path read from the document: "$a.b", "$$CURRENT.a.b"
 * (`*current` true) or "$$ROOT.a.b" (false). */
bool aspen__node_is_doc_path(const aspen_expr_t *e, bool *current);


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

/* Operator implementations live in their files, static, reached through
 * the tables. They share two contracts:
 *  - eval(e, st, out): evaluates node `e`. On success returns true and *out
 *    holds the result (owned, or a view into the input document, the
 *    pipeline, or a variable slot that outlives the caller's use); the
 *    caller destroys it with aspen_value_destroy. On a runtime error
 *    returns false with st->err set and *out MISSING. Nodes are read-only,
 *    so any thread may evaluate with its own aspen__eval_t.
 *  - parse(ps, op, arg, e): compiles the operator's argument `arg` into `e`
 *    (children in e->args, private data in e->aux). Returns false with
 *    ps->err set; the caller destroys the partly built node.
 * Most evals are made by ASPEN__ARGS_EVAL (expr_args.h) from a table of
 * what the arguments must be and a compute function. */
#define ASPEN__DECL_EVAL(name)                                                 \
   bool name(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
#define ASPEN__DECL_PARSE(name)                                                \
   bool name(aspen__parse_t *ps, const aspen__op_t *op,                        \
             const bson_iter_t *arg, aspen_expr_t *e)

#endif /* ASPEN_ENGINE_LANG_EXPR_INT_H */
