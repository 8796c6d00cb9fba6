/*
 * accum.h - $group accumulators, as windows use them: parsed once from the
 * $group spec, then one small state per (window, group key) that absorbs
 * documents one at a time and yields the result when the window closes.
 * States keep aggregates, not documents, except where the operator needs
 * the values ($push, $addToSet, $median, $percentile, $firstN/$lastN,
 * $topN/$bottomN, $minN/$maxN hold at most what they return).
 *
 * Operators: $sum $avg $min $max $first $last $push $addToSet $count
 * $stdDevPop $stdDevSamp $median $percentile $top $bottom $topN $bottomN
 * $firstN $lastN $maxN $minN $mergeObjects. Semantics as MongoDB's $group
 * (e.g. $sum ignores non-numbers and gives int32/int64/double/decimal as
 * MongoDB widens; $avg of no numbers is null; $min/$max ignore missing and
 * null unless all are; $first/$last keep missing as null; $count is
 * {$count: {}}; $median/$percentile take {input, method: "approximate"} and
 * p: [numbers in 0..1]; $topN etc. take {n, sortBy, output}; n must be a
 * positive integer constant).
 *
 * Thread-safety: a spec is immutable after parse; states belong to one
 * thread.
 */
#ifndef ASPEN_ENGINE_LANG_ACCUM_H
#define ASPEN_ENGINE_LANG_ACCUM_H

#include "lang/expr.h"

typedef struct aspen_accum aspen_accum_t;         /* a parsed accumulator */
typedef struct aspen_accum_state aspen_accum_state_t;

/* Parses one accumulator field of $group: `it` points at the field's value,
 * e.g. {$avg: "$obs.watts"}. Errors use mongod's messages ("unknown group
 * operator '$foo'", code 15952; "The field 'x' must be an accumulator
 * object", code 40234; ...). The bson `it` points into must outlive the
 * accumulator. */
bool aspen_accum_parse(const bson_iter_t *it, aspen_accum_t **out,
                       aspen_error_t *err);
void aspen_accum_destroy(aspen_accum_t *acc);
/* The operator's name, e.g. "$avg". */
const char *aspen_accum_name(const aspen_accum_t *acc);

aspen_accum_state_t *aspen_accum_state_new(const aspen_accum_t *acc);
void aspen_accum_state_destroy(const aspen_accum_t *acc,
                               aspen_accum_state_t *st);
/* States inside the caller's memory (a $group's one block per group):
 * the bytes a state takes, making `mem` (that many zeroed bytes, 16-byte
 * aligned) an empty state, and freeing what a state keeps but not its
 * bytes. */
size_t aspen_accum_state_bytes(const aspen_accum_t *acc);
aspen_accum_state_t *aspen_accum_state_init(const aspen_accum_t *acc,
                                            void *mem);
void aspen_accum_state_cleanup(const aspen_accum_t *acc,
                               aspen_accum_state_t *st);
/* False when a state's size never changes (aspen_accum_state_size is then
 * aspen_accum_state_bytes, so the caller need not ask per document). */
bool aspen_accum_state_grows(const aspen_accum_t *acc);
/* The argument's expression (NULL for $count): the caller may give its
 * field paths slots (aspen_expr_paths_add) before any evaluation. */
aspen_expr_t *aspen_accum_arg(aspen_accum_t *acc);
/* One document's input to one accumulator, evaluated but not yet absorbed,
 * so a $group can refuse a document before any of its states change. */
typedef struct {
   aspen_value_t val;
   bool skip; /* the state takes no more input ($first, a full $firstN) */
} aspen_accum_input_t;

/* Evaluates the argument for ctx->root and checks it can be absorbed; false
 * with err set when it cannot (the caller dead-letters the document). `st`
 * may be NULL (a group not created yet). On success the caller must commit
 * or discard `in`. */
bool aspen_accum_prepare(const aspen_accum_t *acc,
                         const aspen_accum_state_t *st,
                         const aspen_expr_ctx_t *ctx, aspen_accum_input_t *in,
                         aspen_error_t *err);
/* aspen_accum_prepare with the argument already evaluated: `val`, a
 * borrowed view (not owned) that outlives the commit, e.g. another
 * accumulator's input over the same field path. */
bool aspen_accum_prepare_given(const aspen_accum_t *acc,
                               const aspen_accum_state_t *st,
                               const aspen_value_t *val,
                               aspen_accum_input_t *in, aspen_error_t *err);
/* Absorbs a prepared input (never fails) and releases it. `st` is the
 * state prepare was given, or a fresh one where that was NULL (prepare
 * decided whether the state takes more input). */
void aspen_accum_commit(const aspen_accum_t *acc, aspen_accum_state_t *st,
                        const aspen_expr_ctx_t *ctx, aspen_accum_input_t *in);
void aspen_accum_input_discard(aspen_accum_input_t *in);
/* prepare + commit: absorbs one document (ctx->root); false with err set
 * when evaluating the argument fails. */
bool aspen_accum_add(const aspen_accum_t *acc, aspen_accum_state_t *st,
                     const aspen_expr_ctx_t *ctx, aspen_error_t *err);
/* Reads the top-level fields names[0 .. n) (n <= 32, lens[i] bytes each)
 * of `doc` into vals[0 .. n) in one pass, as borrowed views: each what
 * the field path "$name" evaluates to (MISSING when absent), for a caller
 * whose inputs are all such paths (a $group's _id and accumulators). */
void aspen_accum_top_fields(const bson_t *doc, const char *const *names,
                            const uint32_t *lens, uint32_t n,
                            aspen_value_t *vals);
/* Appends the result under `key` to `out`. */
void aspen_accum_result(const aspen_accum_t *acc,
                        const aspen_accum_state_t *st, bson_t *out,
                        const char *key);
/* Bytes the state holds (for stats' stateSize). */
size_t aspen_accum_state_size(const aspen_accum_t *acc,
                              const aspen_accum_state_t *st);

#endif /* ASPEN_ENGINE_LANG_ACCUM_H */
