/*
 * expr.h - aggregation expressions: compiled once from the pipeline's BSON,
 * evaluated per document without copying where a view will do.
 *
 * Supported (each with MongoDB's semantics for missing, null, arrays and
 * types): field paths "$a.b" (through arrays, yielding arrays as MongoDB
 * does) and variables "$$ROOT", "$$CURRENT", "$$REMOVE", let/$let/$map/
 * $filter/$reduce variables; literals ($literal, constants, object and array
 * expressions); arithmetic ($add $subtract $multiply $divide $mod $abs $ceil
 * $floor $round $trunc $sqrt $pow $exp $ln $log $log10); comparison ($cmp $eq
 * $ne $gt $gte $lt $lte); boolean ($and $or $not); conditional ($cond $ifNull
 * $switch); string ($concat $substr $substrBytes $substrCP $toLower $toUpper
 * $strLenBytes $strLenCP $split $trim $ltrim $rtrim $indexOfBytes $indexOfCP
 * $strcasecmp $regexMatch $regexFind $regexFindAll $replaceOne $replaceAll);
 * array ($arrayElemAt $first $last $concatArrays $filter $map $reduce $size
 * $in $indexOfArray $isArray $range $reverseArray $slice $zip $sortArray
 * $arrayToObject $objectToArray $setUnion $setIntersection $setDifference
 * $setEquals $setIsSubset $anyElementTrue $allElementsTrue $maxN $minN
 * $firstN $lastN); object ($mergeObjects $getField $setField $unsetField);
 * type ($type $convert $toBool $toDate $toDecimal $toDouble $toInt $toLong
 * $toObjectId $toString $isNumber); date ($dateFromString $dateToString
 * $dateFromParts $dateToParts $dateTrunc $dateAdd $dateSubtract $dateDiff
 * $year $month $dayOfMonth $dayOfWeek $dayOfYear $hour $minute $second
 * $millisecond $week $isoWeek $isoWeekYear $isoDayOfWeek); accumulator-style
 * array forms ($sum $avg $min $max $stdDevPop $stdDevSamp on arrays or
 * argument lists); ASP's own ($meta with a dotted "stream..." path,
 * $currentDate, $createUUID). Also mongod's $binarySize $bsonSize $rand
 * $tsSecond $tsIncrement, the trigonometric operators ($sin ... $atanh,
 * $atan2, $degreesToRadians, $radiansToDegrees) and $bitAnd $bitOr $bitXor
 * $bitNot. $convert also does ASP's binData <-> int/long/double/string
 * conversions (byteOrder, format). Timezones: "UTC"/"GMT", offsets and Olson
 * names (read from /usr/share/zoneinfo).
 * Refused at parse time as ASP does: $$NOW, $$CLUSTER_TIME, $$USER_ROLES,
 * $$SEARCH_META, unknown operators ("Unrecognized expression '$foo'").
 *
 * Errors: parse errors are code 168 InvalidPipelineOperator for unknown
 * operators, 15983-style messages for malformed arguments (aspen uses codes
 * from wire.h: FailedToParse / BadValue / TypeMismatch / InvalidOptions).
 * Evaluation errors (e.g. "can't $divide by zero", a failed $convert) return
 * false with err set; the caller sends the document to the DLQ.
 */
#ifndef ASPEN_ENGINE_LANG_EXPR_H
#define ASPEN_ENGINE_LANG_EXPR_H

#include "lang/fields.h"
#include "lang/value.h"

#include <stdatomic.h>

typedef struct aspen_expr aspen_expr_t;
typedef struct aspen_expr_paths aspen_expr_paths_t;

/* Caller-provided room for the short strings an evaluation makes
 * ($concat, $toString of an integer): a string that fits is written here
 * (no heap string) and its value, owned as a heap one would be, is marked
 * `scratch` (value.h): valid until the caller sets `used` back to 0 or the
 * buffer goes away; one that does not fit is a heap string as without a
 * scratch. The caller resets it only once it is done with every value
 * evaluated since the last reset. */
typedef struct {
   char *buf;
   size_t cap;
   size_t used;
} aspen_expr_scratch_t;

/* mongod's BSONObjMaxInternalSize, 16 MB + 16 KB: the largest document or
 * array an evaluation makes, and the largest document a stage hands on
 * (10334 BSONObjectTooLarge past it). */
#define ASPEN_MAX_OBJECT_LEN (16u * 1024 * 1024 + 16 * 1024)

/* Evaluation context. `root` is $$ROOT (and $$CURRENT); `meta` is the stream
 * metadata document that {$meta: "stream..."} reads ({source: {...}, window:
 * {start, end}}), or NULL. `now_ms` is what $currentDate returns. */
typedef struct {
   const bson_t *root;
   const bson_t *meta;
   int64_t now_ms;
   const bson_t *current; /* $$CURRENT and "$field" paths; NULL: root */
   /* root's top-level field table (lang/fields.h), or NULL: "$field"
    * paths start from it instead of scanning root when it covers root. */
   const aspen_fields_t *fields;
   /* Where short computed strings go, or NULL: heap strings. */
   aspen_expr_scratch_t *scratch;
   /* The field paths of the caller's expressions, resolved against root
    * (aspen_expr_paths_resolve), or NULL: a path node compiled into this
    * table reads its slot instead of looking its path up. */
   const aspen_expr_paths_t *paths;
} aspen_expr_ctx_t;

/* Compiles the expression held by `it` (any BSON value: a string field path,
 * an operator object, an object/array literal, a constant). The compiled
 * expression borrows constants from the bson the iterator points into: that
 * document must outlive it (the engine keeps pipelines alive). `vars` is a
 * NULL-terminated list of user variable names in scope (from an enclosing
 * let), or NULL. */
bool aspen_expr_parse(const bson_iter_t *it, const char *const *vars,
                      aspen_expr_t **out, aspen_error_t *err);
/* Compiles an object of expressions as one expression that evaluates to a
 * document (as in $addFields / $project computed fields / $group _id). */
bool aspen_expr_parse_object(const bson_t *obj, const char *const *vars,
                             aspen_expr_t **out, aspen_error_t *err);
void aspen_expr_destroy(aspen_expr_t *e);

/* A path slot table (expr_paths.c): the distinct field paths that a set
 * of expressions reads from the document ("$a.b", "$$ROOT.a.b",
 * "$$CURRENT.a.b"), compiled once so that each document's values are
 * found in one go - every top-level name through the document's field
 * table or one scan of its top level, the names under one prefix by one
 * scan of the prefix's sub-document - before the expressions run; the
 * path nodes then read their slot (a borrowed view). A path whose prefix
 * is an array (MongoDB's array traversal), and any evaluation whose
 * $$CURRENT is not the resolved document ($redact), takes the general
 * lookup, with the same result.
 *
 * The table borrows the path names of the expressions added to it: they
 * must outlive it. An expression is added to one table at most. A table
 * belongs to the thread that resolves it. */
aspen_expr_paths_t *aspen_expr_paths_new(void);
void aspen_expr_paths_destroy(aspen_expr_paths_t *p);
/* Gives each path node of `e`'s tree read from the document a slot in `p`
 * (one slot per distinct path, shared). */
void aspen_expr_paths_add(aspen_expr_paths_t *p, aspen_expr_t *e);
/* How many slots `p` has. */
uint32_t aspen_expr_paths_count(const aspen_expr_paths_t *p);
/* Resolves every slot of `p` against `doc`, through `fields` when not
 * NULL: the caller has checked that it covers `doc` (aspen_fields_covers).
 * The values borrow from `doc`, which must stay as it is while an
 * evaluation reads them (ctx.paths = p, ctx.root = doc). */
void aspen_expr_paths_resolve(aspen_expr_paths_t *p, const bson_t *doc,
                              const aspen_fields_t *fields);
/* Whether tables are used at all (default true): tests turn them off to
 * compare against the general lookup. */
void aspen_expr_paths_set_enabled(bool on);
/* Whether expressions compiled from now on get the specialised evals of
 * operators over leaves ($cmp/$eq/.../$lte, $divide, $concat with
 * $toString: expr_int.h, aspen__leaf_get); default true. Tests turn them
 * off to compare against the general evaluation. */
void aspen_expr_leaves_set_enabled(bool on);

/* Evaluates. On success *out holds the result (borrowed or owned: always
 * aspen_value_destroy it). On a runtime error returns false, err set, *out
 * MISSING. */
bool aspen_expr_eval(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
                     aspen_value_t *out, aspen_error_t *err);

/* Evaluates `e` and appends its value to `w` under key[0 .. key_len)
 * (nothing when it is MISSING): the same bytes, errors and limits as
 * aspen_expr_eval then aspen_bsonw_value, but the common results of the
 * operators that have a specialised write - $divide, $cmp/$eq/.../$lte
 * and $concat over leaves, $toString of an integer, a constant or a
 * resolved path - are written straight into `w` (no value made, boxed or
 * freed). On an error returns false, err set, nothing written. Leaves
 * ctx->scratch as it found it. */
bool aspen_expr_eval_write(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
                           aspen_bsonw_t *w, const char *key, size_t key_len,
                           aspen_error_t *err);
/* Whether aspen_expr_eval_write uses the operators' specialised writes
 * (default true); off, it evaluates then writes. Any time (a plain flag:
 * tests turn it off, on one thread, to compare). */
void aspen_expr_write_set_enabled(bool on);

/* Evaluates with extra user variables bound (name -> value); used by stages
 * that have `let` (e.g. $lookup, $merge). */
bool aspen_expr_eval_with_vars(const aspen_expr_t *e,
                               const aspen_expr_ctx_t *ctx,
                               const char *const *names,
                               const aspen_value_t *values, size_t n_vars,
                               aspen_value_t *out, aspen_error_t *err);

/* From now on, evaluations on the calling thread stop with 11601
 * Interrupted soon after `*flag` becomes true (checked every 1024 nodes);
 * NULL: never. A processor's thread sets its stop flag, so that a stop, a
 * drop or shutdown never waits for one long evaluation. Also clears the
 * flag aspen_expr_interrupted reports. */
void aspen_expr_set_interrupt(const atomic_bool *flag);
/* True once an evaluation on this thread was interrupted (since the last
 * aspen_expr_set_interrupt): the document it was for did not finish. */
bool aspen_expr_interrupted(void);
/* True when this thread's interrupt flag (aspen_expr_set_interrupt) is set
 * now: a stage waiting on a peer checks it to stop waiting promptly. */
bool aspen_expr_stop_requested(void);
/* Says that a stage of this thread gave documents up because of the stop
 * (a request in flight): aspen_expr_interrupted is true from now, so no
 * final checkpoint covers them and a restart reads them again. */
void aspen_expr_note_interrupted(void);

/* The $function expression's limits (expr_function.c): each call's
 * wall-clock time (its document fails with 262 ExceededTimeLimit past it)
 * and each $function's JavaScript heap (146 ExceededMemoryLimit). The
 * engine's, set when it opens (streams.functionTimeLimitMillis,
 * streams.functionMemoryLimitBytes); 0 restores the default. Any thread. */
#define ASPEN_EXPR_FUNCTION_TIME_LIMIT_MS 60000u
#define ASPEN_EXPR_FUNCTION_MEMORY_LIMIT (64u * 1024 * 1024)
void aspen_expr_function_set_limits(uint64_t time_ms, uint64_t memory_bytes);
/* False when aspen was built without a JavaScript engine (ASPEN_JS=OFF):
 * $function is then refused as "not yet". */
bool aspen_expr_function_available(void);

/* Field-path lookup as expressions do it: "a.b" on {a: [{b:1},{b:2}]} gives
 * [1, 2]. Borrowed when possible. */
aspen_value_t aspen_expr_get_path(const bson_t *doc, const char *path);

/* True if the expression is a constant (no paths, variables, $meta or
 * time-dependent operators); then *out (borrowed) is its value. */
bool aspen_expr_is_constant(const aspen_expr_t *e, aspen_value_t *out);

#endif /* ASPEN_ENGINE_LANG_EXPR_H */
