/*
 * value.h - BSON values as the engine evaluates them.
 *
 * An aspen_value_t wraps a bson_value_t and says whether it owns its heap
 * parts. Values read from a document (a field path) or from a pipeline
 * constant are borrowed views: no copy, valid as long as that document or
 * pipeline lives. Computed values own their storage (short strings may sit
 * in a caller's scratch instead: `scratch`). Either way the holder calls
 * aspen_value_destroy, which frees only what is owned.
 *
 * A MISSING value (type 0, BSON_TYPE_EOD) stands for an absent field; it is
 * distinct from null, as in MongoDB.
 *
 * Thread-safety: pure functions, callable from any thread.
 */
#ifndef ASPEN_ENGINE_LANG_VALUE_H
#define ASPEN_ENGINE_LANG_VALUE_H

#include "wire.h"

#include <string.h>

typedef struct {
   bson_value_t v;
   bool owned;
   /* Owned, but its string lives in the caller's scratch (expr.h,
    * aspen_expr_scratch_t), not on the heap: everything treats it as owned
    * except aspen_value_destroy, which frees nothing, and aspen__value_own,
    * which copies it to the heap. */
   bool scratch;
} aspen_value_t;

#define ASPEN_VALUE_MISSING ((aspen_value_t){.v = {.value_type = BSON_TYPE_EOD}, .owned = false})

static inline bool
aspen_value_is_missing(const aspen_value_t *val)
{
   return val->v.value_type == BSON_TYPE_EOD;
}

/* null, undefined or missing: what $ifNull and friends treat as "nullish". */
bool aspen_value_is_nullish(const aspen_value_t *val);
bool aspen_value_is_number(const aspen_value_t *val);

/* Frees what the value owns and resets it to MISSING. */
void aspen_value_destroy(aspen_value_t *val);
/* A borrowed view of the iterator's current value (no copy). */
aspen_value_t aspen_value_borrow(const bson_iter_t *it);
/* An owned deep copy. */
aspen_value_t aspen_value_copy(const aspen_value_t *val);
/* Owned constructors. The scalar ones are inline: operators make one per
 * evaluation (a comparison's bool, a division's double), and a call to a
 * function that clears a 32-byte struct cost more than the operator. */
#define ASPEN__VALUE_SCALAR(name, arg_t, btype, field)                         \
   static inline aspen_value_t name(arg_t x)                                   \
   {                                                                           \
      aspen_value_t out;                                                       \
      memset(&out, 0, sizeof out);                                             \
      out.v.value_type = btype;                                                \
      out.v.value.field = x;                                                   \
      return out;                                                              \
   }
ASPEN__VALUE_SCALAR(aspen_value_int32, int32_t, BSON_TYPE_INT32, v_int32)
ASPEN__VALUE_SCALAR(aspen_value_int64, int64_t, BSON_TYPE_INT64, v_int64)
ASPEN__VALUE_SCALAR(aspen_value_double, double, BSON_TYPE_DOUBLE, v_double)
ASPEN__VALUE_SCALAR(aspen_value_bool, bool, BSON_TYPE_BOOL, v_bool)
ASPEN__VALUE_SCALAR(aspen_value_date, int64_t, BSON_TYPE_DATE_TIME,
                    v_datetime)
#undef ASPEN__VALUE_SCALAR
static inline aspen_value_t
aspen_value_null(void)
{
   aspen_value_t out;
   memset(&out, 0, sizeof out);
   out.v.value_type = BSON_TYPE_NULL;
   return out;
}
aspen_value_t aspen_value_utf8(const char *s, size_t len); /* copies */
/* Takes ownership of `doc` (bson_destroy'd later) as a document/array value. */
aspen_value_t aspen_value_take_doc(bson_t *doc, bool is_array);

/* MongoDB's comparison: first by canonical type order (MinKey < null <
 * numbers < string/symbol < object < array < binData < ObjectId < bool < date
 * < timestamp < regex < MaxKey), then by value; numbers of different types
 * compare numerically (int32/int64/double/decimal128). MISSING sorts as null
 * unless the caller distinguishes it first. Returns <0, 0, >0. */
int aspen_value_compare(const aspen_value_t *a, const aspen_value_t *b);
bool aspen_value_equal(const aspen_value_t *a, const aspen_value_t *b);
/* mongod's canonical rank of a BSON type, the one cross-type order of the
 * aggregation language and the query matcher: MinKey -1 < null 5 < numbers
 * 10 (all four alike) < string and symbol 15 < object 20 < array 25 <
 * binData 30 < ObjectId 35 < bool 40 < date 45 < timestamp 47 < regex 50 <
 * DBPointer 55 < code 60 < code with scope 65 < MaxKey 127. With
 * `missing_low`, MISSING (BSON_TYPE_EOD) and undefined rank 0, below null,
 * as in mongod's comparisons and query matching; without, they rank as null
 * (5), as sorting treats a missing field. A type byte BSON does not define
 * (never read from a valid document) ranks 126, so MaxKey stays above
 * everything. Inside lang/ only. */
int aspen__value_type_rank(bson_type_t t, bool missing_low);
/* Truthiness for $cond/$and/$or/$not: false, null, undefined, missing and
 * numeric zero are false; everything else is true. */
bool aspen_value_truthy(const aspen_value_t *val);
/* Numeric accessors; false if not a number. */
bool aspen_value_as_double(const aspen_value_t *val, double *out);
bool aspen_value_as_int64(const aspen_value_t *val, int64_t *out);
/* MongoDB's type name ("double", "string", "object", "array", "binData",
 * "objectId", "bool", "date", "null", "regex", "int", "timestamp", "long",
 * "decimal", "minKey", "maxKey", "missing", ...). */
const char *aspen_value_type_name(const aspen_value_t *val);
/* Appends the value to `doc` under `key`; a MISSING value appends nothing. */
void aspen_value_append(bson_t *doc, const char *key, int key_len,
                        const aspen_value_t *val);
/* Copies `doc` into `out` (initialized, appended to) with the field at the
 * dotted `path` set to `val`, in place when it exists, else at the end
 * (a missing parent, or one that is not a document, becomes a document);
 * a MISSING `val` leaves the field out. */
void aspen_doc_set_path(const bson_t *doc, const char *path,
                        const aspen_value_t *val, bson_t *out);
/* A short relaxed-JSON rendering for error messages (caller frees with
 * bson_free). */
char *aspen_value_to_json(const aspen_value_t *val);

#endif /* ASPEN_ENGINE_LANG_VALUE_H */
