/*
 * expr_function.c - the $function expression ({body, args, lang: "js"}):
 * a JavaScript function run on each document by an embedded engine,
 * Duktape, built from Debian's duktape-dev source (cmake/AspenDuktape.cmake).
 * Built without it (ASPEN_JS=OFF), $function is refused as "supported by
 * Atlas Stream Processing but not yet by this version of aspen".
 *
 * The argument is checked as mongod checks it (codes 31260-31266, 31418,
 * 31419, 31432). Each compiled $function node has its own Duktape heap,
 * made at its first evaluation and guarded by a mutex (a compiled
 * expression may be evaluated by several threads; a heap is not thread
 * safe). The body is compiled once per heap; each call gets the
 * evaluated `args` converted to JavaScript values, and its result is
 * converted back, as mongod's $function does:
 *
 *   BSON                    JavaScript                back to BSON
 *   double, int32           number                    double
 *   int64                   NumberLong (valueOf: number)   int64
 *   decimal128              NumberDecimal             decimal128
 *   string, bool, null      string, boolean, null     the same
 *   undefined               undefined                 null
 *   date                    Date                      date
 *   ObjectId                ObjectId (.str, toHexString(), getTimestamp())
 *   document, array         object, array             document, array
 *   binData                 BinData (.subtype(), base64(), hex())
 *   timestamp               Timestamp (.t, .i)
 *   regex                   RegExp                    regex
 *   minKey, maxKey          MinKey, MaxKey
 *   code                    string                    (a function: code)
 *
 * Limits, so that a runaway function fails its document (to the DLQ) and
 * never holds the processor's thread: each call has a time limit (Duktape's
 * exec-timeout check, which also ends the call when the processor is being
 * stopped: 11601 Interrupted), and each heap a memory limit (its allocator
 * refuses past it). Both are the engine's (aspen_expr_function_set_limits:
 * streams.functionTimeLimitMillis, streams.functionMemoryLimitBytes). A
 * JavaScript error fails the document with 139 JSInterpreterFailure.
 *
 * Thread-safety: evaluation takes the node's mutex; the limits are atomics.
 */
#include "lang/expr_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

static atomic_uint_fast64_t fn_time_limit_ms = ASPEN_EXPR_FUNCTION_TIME_LIMIT_MS;
static atomic_uint_fast64_t fn_memory_limit = ASPEN_EXPR_FUNCTION_MEMORY_LIMIT;

void
aspen_expr_function_set_limits(uint64_t time_ms, uint64_t memory_bytes)
{
   atomic_store(&fn_time_limit_ms,
                time_ms ? time_ms : ASPEN_EXPR_FUNCTION_TIME_LIMIT_MS);
   atomic_store(&fn_memory_limit,
                memory_bytes ? memory_bytes : ASPEN_EXPR_FUNCTION_MEMORY_LIMIT);
}

bool
aspen_expr_function_available(void)
{
#ifdef ASPEN_HAVE_JS
   return true;
#else
   return false;
#endif
}

static const char *
iter_type_name(const bson_iter_t *it)
{
   aspen_value_t v = aspen_value_borrow(it);
   return aspen_value_type_name(&v);
}

/* mongod's checks of the argument, in its order; fills `body` (a view into
 * the pipeline) and compiles `args` into e->args[0]. */
static bool
parse_spec(aspen__parse_t *ps, const bson_iter_t *arg, aspen_expr_t *e,
           const char **body, uint32_t *body_len)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      return aspen__pfail(ps, 31260,
                          "$function requires an object as an argument, "
                          "found: %s",
                          iter_type_name(arg));
   }
   bson_iter_t it, body_it, args_it, lang_it;
   bool has_body = false, has_args = false, has_lang = false;
   bson_iter_recurse(arg, &it);
   while (bson_iter_next(&it)) {
      const char *key = bson_iter_key(&it);
      if (!has_body && strcmp(key, "body") == 0) {
         body_it = it;
         has_body = true;
      } else if (!has_args && strcmp(key, "args") == 0) {
         args_it = it;
         has_args = true;
      } else if (!has_lang && strcmp(key, "lang") == 0) {
         lang_it = it;
         has_lang = true;
      }
   }
   if (!has_body) {
      return aspen__pfail(ps, 31261, "The body function must be specified.");
   }
   if (BSON_ITER_HOLDS_UTF8(&body_it)) {
      *body = bson_iter_utf8(&body_it, body_len);
      if (*body_len > 0 && (*body)[0] == '$') {
         return aspen__pfail(ps, 31432,
                             "The body function must be a constant "
                             "expression");
      }
   } else if (BSON_ITER_HOLDS_CODE(&body_it)) {
      *body = bson_iter_code(&body_it, body_len);
   } else if (BSON_ITER_HOLDS_DOCUMENT(&body_it) ||
              BSON_ITER_HOLDS_ARRAY(&body_it)) {
      return aspen__pfail(ps, 31432,
                          "The body function must be a constant expression");
   } else {
      return aspen__pfail(ps, 31262,
                          "The body function must evaluate to type string "
                          "or code");
   }
   if (!has_args) {
      return aspen__pfail(ps, 31263, "The args field must be specified.");
   }
   aspen__node_args(e, 1);
   if (!aspen__parse_operand(ps, &args_it, &e->args[0])) {
      return false;
   }
   if (!has_lang) {
      return aspen__pfail(ps, 31418, "The lang field must be specified.");
   }
   if (!BSON_ITER_HOLDS_UTF8(&lang_it) ||
       strcmp(bson_iter_utf8(&lang_it, NULL), "js") != 0) {
      return aspen__pfail(ps, 31419,
                          "Currently the only supported language specifier "
                          "is 'js'.");
   }
   return true;
}

#ifndef ASPEN_HAVE_JS

static bool
parse_function(aspen__parse_t *ps, const aspen__op_t *op,
               const bson_iter_t *arg, aspen_expr_t *e)
{
   (void) op;
   const char *body;
   uint32_t body_len;
   if (!parse_spec(ps, arg, e, &body, &body_len)) {
      return false;
   }
   return aspen__pfail(ps, ASPEN_ERR_StreamProcessorInvalidOptions,
                       "$function is supported by Atlas Stream Processing "
                       "but not yet by this version of aspen (built without "
                       "a JavaScript engine: ASPEN_JS=OFF)");
}

static bool
eval_function(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   (void) e;
   *out = ASPEN_VALUE_MISSING;
   return aspen__fail(st, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "$function is not available");
}

#else /* ASPEN_HAVE_JS */

#include <duktape.h>
#include <pthread.h>
#include <time.h>

#define MAX_DEPTH ASPEN__MAX_DEPTH

/* The JavaScript types of mongod's shell values, defined in each heap
 * before the body is compiled; the constructors are kept in the heap's
 * stash too, so a body that reassigns the globals does not change how
 * values convert. */
static const char prelude[] =
   "(function (g) {\n"
   "  function def(o, k, v) {\n"
   "    Object.defineProperty(o, k, {value: v, writable: true,\n"
   "                                 configurable: true});\n"
   "  }\n"
   "  function ObjectId(s) {\n"
   "    if (!(this instanceof ObjectId)) return new ObjectId(s);\n"
   "    if (typeof s !== 'string' || !/^[0-9a-fA-F]{24}$/.test(s))\n"
   "      throw new TypeError('ObjectId wants a string of 24 hex digits');\n"
   "    this.str = s.toLowerCase();\n"
   "  }\n"
   "  def(ObjectId.prototype, 'toHexString', function () { return this.str; });\n"
   "  def(ObjectId.prototype, 'valueOf', function () { return this.str; });\n"
   "  def(ObjectId.prototype, 'toString', function () {\n"
   "    return 'ObjectId(\"' + this.str + '\")'; });\n"
   "  def(ObjectId.prototype, 'toJSON', function () { return this.str; });\n"
   "  def(ObjectId.prototype, 'equals', function (o) {\n"
   "    return o instanceof ObjectId && o.str === this.str; });\n"
   "  def(ObjectId.prototype, 'getTimestamp', function () {\n"
   "    return new Date(parseInt(this.str.substring(0, 8), 16) * 1000); });\n"
   "  function NumberLong(v) {\n"
   "    if (!(this instanceof NumberLong)) return new NumberLong(v);\n"
   "    var s = String(v === undefined ? 0 : v);\n"
   "    if (!/^-?[0-9]+$/.test(s)) s = String(Math.trunc(Number(s)));\n"
   "    def(this, '__v', s);\n"
   "  }\n"
   "  def(NumberLong.prototype, 'valueOf', function () { return Number(this.__v); });\n"
   "  def(NumberLong.prototype, 'toNumber', function () { return Number(this.__v); });\n"
   "  def(NumberLong.prototype, 'toString', function () {\n"
   "    return 'NumberLong(' + this.__v + ')'; });\n"
   "  def(NumberLong.prototype, 'toJSON', function () { return Number(this.__v); });\n"
   "  function NumberDecimal(v) {\n"
   "    if (!(this instanceof NumberDecimal)) return new NumberDecimal(v);\n"
   "    def(this, '__v', String(v === undefined ? 0 : v));\n"
   "  }\n"
   "  def(NumberDecimal.prototype, 'valueOf', function () { return Number(this.__v); });\n"
   "  def(NumberDecimal.prototype, 'toString', function () {\n"
   "    return 'NumberDecimal(\"' + this.__v + '\")'; });\n"
   "  def(NumberDecimal.prototype, 'toJSON', function () { return this.__v; });\n"
   "  function Timestamp(t, i) {\n"
   "    if (!(this instanceof Timestamp)) return new Timestamp(t, i);\n"
   "    this.t = t >>> 0; this.i = i >>> 0;\n"
   "  }\n"
   "  def(Timestamp.prototype, 'toString', function () {\n"
   "    return 'Timestamp(' + this.t + ', ' + this.i + ')'; });\n"
   "  function BinData(sub, b64) {\n"
   "    if (!(this instanceof BinData)) return new BinData(sub, b64);\n"
   "    def(this, '__sub', sub & 255); def(this, '__b64', String(b64));\n"
   "  }\n"
   "  def(BinData.prototype, 'subtype', function () { return this.__sub; });\n"
   "  def(BinData.prototype, 'base64', function () { return this.__b64; });\n"
   "  def(BinData.prototype, 'hex', function () {\n"
   "    return Duktape.enc('hex', Duktape.dec('base64', this.__b64)); });\n"
   "  def(BinData.prototype, 'toString', function () {\n"
   "    return 'BinData(' + this.__sub + ',\"' + this.__b64 + '\")'; });\n"
   "  function MinKey() { if (!(this instanceof MinKey)) return new MinKey(); }\n"
   "  function MaxKey() { if (!(this instanceof MaxKey)) return new MaxKey(); }\n"
   "  var t = {ObjectId: ObjectId, NumberLong: NumberLong,\n"
   "           NumberDecimal: NumberDecimal, Timestamp: Timestamp,\n"
   "           BinData: BinData, MinKey: MinKey, MaxKey: MaxKey};\n"
   "  for (var k in t) g[k] = t[k];\n"
   "  t.Date = Date; t.RegExp = RegExp;\n"
   "  return t;\n"
   "})(this)\n";

/* The stash keys of the types (prelude's `t`). */
enum {
   T_OBJECTID,
   T_LONG,
   T_DECIMAL,
   T_TIMESTAMP,
   T_BINDATA,
   T_MINKEY,
   T_MAXKEY,
   T_DATE,
   T_REGEXP,
   T_N
};
static const char *const type_keys[T_N] = {
   "ObjectId", "NumberLong", "NumberDecimal", "Timestamp", "BinData",
   "MinKey",   "MaxKey",     "Date",          "RegExp"};

/* One $function node's engine. */
typedef struct {
   pthread_mutex_t mu;
   char *body;
   uint32_t body_len;
   duk_context *ctx; /* NULL until the first call, and after a limit */
   /* The current call (under mu). */
   uint64_t deadline_ns;
   uint64_t mem_used, mem_limit;
   bool timed_out, over_memory, interrupted;
} js_fn_t;

static uint64_t
now_ns(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_MONOTONIC, &ts);
   return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

/* Duktape's exec-timeout hook (duk_config.h, cmake/AspenDuktape.cmake):
 * non-zero ends the running call. It must keep answering non-zero until
 * the call has unwound, which a passed deadline and a set stop flag do. */
int
aspen__js_timeout_check(void *udata)
{
   js_fn_t *fn = udata;
   if (!fn) {
      return 0;
   }
   if (aspen_expr_stop_requested()) {
      fn->interrupted = true;
      return 1;
   }
   if (fn->deadline_ns && now_ns() > fn->deadline_ns) {
      fn->timed_out = true;
      return 1;
   }
   return 0;
}

/* The heap's allocator: each block carries its size, so the heap's total
 * is known and capped. */
#define HDR 16

static void *
js_alloc(void *udata, duk_size_t size)
{
   js_fn_t *fn = udata;
   if (fn->mem_used + size > fn->mem_limit) {
      fn->over_memory = true;
      return NULL;
   }
   uint8_t *p = malloc(size + HDR);
   if (!p) {
      return NULL;
   }
   memcpy(p, &size, sizeof size);
   fn->mem_used += size;
   return p + HDR;
}

static void
js_free(void *udata, void *ptr)
{
   js_fn_t *fn = udata;
   if (!ptr) {
      return;
   }
   uint8_t *p = (uint8_t *) ptr - HDR;
   duk_size_t size;
   memcpy(&size, p, sizeof size);
   fn->mem_used -= size;
   free(p);
}

static void *
js_realloc(void *udata, void *ptr, duk_size_t size)
{
   js_fn_t *fn = udata;
   if (!ptr) {
      return size ? js_alloc(udata, size) : NULL;
   }
   if (size == 0) {
      js_free(udata, ptr);
      return NULL;
   }
   uint8_t *p = (uint8_t *) ptr - HDR;
   duk_size_t old;
   memcpy(&old, p, sizeof old);
   if (size > old && fn->mem_used + (size - old) > fn->mem_limit) {
      fn->over_memory = true;
      return NULL;
   }
   uint8_t *q = realloc(p, size + HDR);
   if (!q) {
      return NULL;
   }
   memcpy(q, &size, sizeof size);
   fn->mem_used = fn->mem_used - old + size;
   return q + HDR;
}

/* Only reached for an error outside every protected call, which this file
 * never makes: a broken invariant. */
static void
js_fatal(void *udata, const char *msg)
{
   (void) udata;
   fprintf(stderr, "aspen: Duktape fatal error: %s\n", msg ? msg : "");
   abort();
}

/* ---- BSON -> JavaScript (inside a protected call: may throw) ------------ */

static void push_bson_value(duk_context *ctx, const bson_iter_t *it,
                            int depth);

static void
push_type(duk_context *ctx, int t)
{
   duk_push_global_stash(ctx);
   duk_get_prop_string(ctx, -1, "aspen_types");
   duk_get_prop_string(ctx, -1, type_keys[t]);
   duk_remove(ctx, -2);
   duk_remove(ctx, -2);
}

/* new T(args...) with the n values on the stack above it. */
static void
push_new(duk_context *ctx, int t, int n)
{
   push_type(ctx, t);
   duk_insert(ctx, -1 - n);
   duk_new(ctx, n);
}

static void
push_doc(duk_context *ctx, const bson_iter_t *it, bool is_array, int depth)
{
   if (depth > MAX_DEPTH) {
      (void) duk_range_error(ctx, "document nested too deeply");
   }
   bson_iter_t child;
   bson_iter_recurse(it, &child);
   duk_idx_t obj = is_array ? duk_push_array(ctx) : duk_push_object(ctx);
   duk_uarridx_t i = 0;
   while (bson_iter_next(&child)) {
      push_bson_value(ctx, &child, depth + 1);
      if (is_array) {
         duk_put_prop_index(ctx, obj, i++);
      } else {
         duk_put_prop_lstring(ctx, obj, bson_iter_key(&child),
                              bson_iter_key_len(&child));
      }
   }
}

static void
push_bson_value(duk_context *ctx, const bson_iter_t *it, int depth)
{
   char buf[64];
   switch (bson_iter_type(it)) {
   case BSON_TYPE_DOUBLE:
      duk_push_number(ctx, bson_iter_double(it));
      break;
   case BSON_TYPE_INT32:
      duk_push_number(ctx, bson_iter_int32(it));
      break;
   case BSON_TYPE_INT64:
      snprintf(buf, sizeof buf, "%lld", (long long) bson_iter_int64(it));
      duk_push_string(ctx, buf);
      push_new(ctx, T_LONG, 1);
      break;
   case BSON_TYPE_DECIMAL128: {
      bson_decimal128_t d;
      char s[BSON_DECIMAL128_STRING];
      bson_iter_decimal128(it, &d);
      bson_decimal128_to_string(&d, s);
      duk_push_string(ctx, s);
      push_new(ctx, T_DECIMAL, 1);
      break;
   }
   case BSON_TYPE_UTF8:
   case BSON_TYPE_SYMBOL: {
      uint32_t len;
      const char *s = BSON_ITER_HOLDS_UTF8(it) ? bson_iter_utf8(it, &len)
                                               : bson_iter_symbol(it, &len);
      duk_push_lstring(ctx, s, len);
      break;
   }
   case BSON_TYPE_CODE: {
      uint32_t len;
      const char *s = bson_iter_code(it, &len);
      duk_push_lstring(ctx, s, len);
      break;
   }
   case BSON_TYPE_CODEWSCOPE: {
      uint32_t len, scope_len;
      const uint8_t *scope;
      const char *s = bson_iter_codewscope(it, &len, &scope_len, &scope);
      duk_push_lstring(ctx, s, len);
      break;
   }
   case BSON_TYPE_BOOL:
      duk_push_boolean(ctx, bson_iter_bool(it));
      break;
   case BSON_TYPE_NULL:
      duk_push_null(ctx);
      break;
   case BSON_TYPE_UNDEFINED:
      duk_push_undefined(ctx);
      break;
   case BSON_TYPE_DATE_TIME:
      duk_push_number(ctx, (double) bson_iter_date_time(it));
      push_new(ctx, T_DATE, 1);
      break;
   case BSON_TYPE_OID: {
      char hex[25];
      bson_oid_to_string(bson_iter_oid(it), hex);
      duk_push_string(ctx, hex);
      push_new(ctx, T_OBJECTID, 1);
      break;
   }
   case BSON_TYPE_DOCUMENT:
      push_doc(ctx, it, false, depth);
      break;
   case BSON_TYPE_ARRAY:
      push_doc(ctx, it, true, depth);
      break;
   case BSON_TYPE_BINARY: {
      bson_subtype_t sub;
      uint32_t len;
      const uint8_t *data;
      bson_iter_binary(it, &sub, &len, &data);
      duk_push_int(ctx, (int) sub);
      duk_push_fixed_buffer(ctx, len);
      if (len) {
         memcpy(duk_get_buffer(ctx, -1, NULL), data, len);
      }
      duk_base64_encode(ctx, -1);
      push_new(ctx, T_BINDATA, 2);
      break;
   }
   case BSON_TYPE_TIMESTAMP: {
      uint32_t t, i;
      bson_iter_timestamp(it, &t, &i);
      duk_push_number(ctx, t);
      duk_push_number(ctx, i);
      push_new(ctx, T_TIMESTAMP, 2);
      break;
   }
   case BSON_TYPE_REGEX: {
      const char *opts;
      const char *re = bson_iter_regex(it, &opts);
      char flags[8];
      size_t n = 0;
      for (const char *o = opts; *o && n + 1 < sizeof flags; o++) {
         if (*o == 'i' || *o == 'm' || *o == 's' || *o == 'u') {
            flags[n++] = *o;
         }
      }
      flags[n] = '\0';
      duk_push_string(ctx, re);
      duk_push_string(ctx, flags);
      push_new(ctx, T_REGEXP, 2);
      break;
   }
   case BSON_TYPE_MINKEY:
      push_new(ctx, T_MINKEY, 0);
      break;
   case BSON_TYPE_MAXKEY:
      push_new(ctx, T_MAXKEY, 0);
      break;
   default:
      duk_push_undefined(ctx);
      break;
   }
}

/* ---- JavaScript -> BSON (inside a protected call: may throw) ------------ */

static bool
is_type(duk_context *ctx, duk_idx_t idx, int t)
{
   if (!duk_is_object(ctx, idx)) {
      return false;
   }
   idx = duk_normalize_index(ctx, idx);
   push_type(ctx, t);
   bool yes = duk_instanceof(ctx, idx, -1);
   duk_pop(ctx);
   return yes;
}

static const char *
get_string_prop(duk_context *ctx, duk_idx_t idx, const char *key,
                duk_size_t *len)
{
   duk_get_prop_string(ctx, idx, key);
   const char *s = duk_safe_to_lstring(ctx, -1, len);
   return s; /* stays on the stack until the caller pops it */
}

static void append_js(duk_context *ctx, duk_idx_t idx, bson_t *doc,
                      const char *key, int key_len, int depth);

static void
append_object(duk_context *ctx, duk_idx_t idx, bson_t *doc, const char *key,
              int key_len, bool is_array, int depth)
{
   if (depth > MAX_DEPTH) {
      (void) duk_range_error(ctx, "the function's result is nested too "
                                  "deeply (cyclic?)");
   }
   bson_t child;
   if (is_array) {
      bson_append_array_begin(doc, key, key_len, &child);
      duk_size_t n = duk_get_length(ctx, idx);
      for (duk_size_t i = 0; i < n; i++) {
         char ikey[16];
         int klen = snprintf(ikey, sizeof ikey, "%zu", (size_t) i);
         duk_get_prop_index(ctx, idx, (duk_uarridx_t) i);
         append_js(ctx, -1, &child, ikey, klen, depth + 1);
         duk_pop(ctx);
      }
      bson_append_array_end(doc, &child);
   } else {
      bson_append_document_begin(doc, key, key_len, &child);
      duk_enum(ctx, idx, DUK_ENUM_OWN_PROPERTIES_ONLY);
      while (duk_next(ctx, -1, 1)) {
         duk_size_t klen;
         const char *k = duk_get_lstring(ctx, -2, &klen);
         append_js(ctx, -1, &child, k, (int) klen, depth + 1);
         duk_pop_2(ctx);
      }
      duk_pop(ctx);
      bson_append_document_end(doc, &child);
   }
   if (doc->len > ASPEN__MAX_OBJECT_LEN) {
      (void) duk_range_error(ctx, "the function's result is larger than "
                                  "16 MB");
   }
}

static void
append_js(duk_context *ctx, duk_idx_t idx, bson_t *doc, const char *key,
          int key_len, int depth)
{
   idx = duk_normalize_index(ctx, idx);
   switch (duk_get_type(ctx, idx)) {
   case DUK_TYPE_UNDEFINED:
   case DUK_TYPE_NULL:
   case DUK_TYPE_NONE:
      bson_append_null(doc, key, key_len);
      return;
   case DUK_TYPE_BOOLEAN:
      bson_append_bool(doc, key, key_len, duk_get_boolean(ctx, idx));
      return;
   case DUK_TYPE_NUMBER:
      bson_append_double(doc, key, key_len, duk_get_number(ctx, idx));
      return;
   case DUK_TYPE_STRING: {
      duk_size_t len;
      const char *s = duk_get_lstring(ctx, idx, &len);
      if (len > ASPEN__MAX_STRING_LEN) {
         (void) duk_range_error(ctx, "the function returned a string "
                                     "longer than 16 MB");
      }
      if (!bson_utf8_validate(s, len, true)) {
         (void) duk_type_error(ctx, "the function returned a string that "
                                    "is not valid UTF-8");
      }
      bson_append_utf8(doc, key, key_len, s, (int) len);
      return;
   }
   case DUK_TYPE_OBJECT:
      break;
   default: /* buffer, pointer, lightfunc */
      bson_append_null(doc, key, key_len);
      return;
   }
   if (duk_is_function(ctx, idx)) {
      duk_dup(ctx, idx);
      duk_size_t len;
      const char *s = duk_safe_to_lstring(ctx, -1, &len);
      bson_append_code(doc, key, key_len, s);
      duk_pop(ctx);
   } else if (duk_is_array(ctx, idx)) {
      append_object(ctx, idx, doc, key, key_len, true, depth);
   } else if (is_type(ctx, idx, T_DATE)) {
      duk_get_prop_string(ctx, idx, "getTime");
      duk_dup(ctx, idx);
      duk_call_method(ctx, 0);
      double ms = duk_get_number(ctx, -1);
      duk_pop(ctx);
      bson_append_date_time(doc, key, key_len,
                            ms == ms ? (int64_t) ms : INT64_MIN);
   } else if (is_type(ctx, idx, T_OBJECTID)) {
      duk_size_t len;
      const char *s = get_string_prop(ctx, idx, "str", &len);
      bson_oid_t oid;
      if (len != 24 || !bson_oid_is_valid(s, len)) {
         (void) duk_type_error(ctx, "an ObjectId's str is not 24 hex "
                                    "digits");
      }
      bson_oid_init_from_string(&oid, s);
      duk_pop(ctx);
      bson_append_oid(doc, key, key_len, &oid);
   } else if (is_type(ctx, idx, T_LONG)) {
      duk_size_t len;
      const char *s = get_string_prop(ctx, idx, "__v", &len);
      char *end;
      long long v = strtoll(s, &end, 10);
      duk_pop(ctx);
      bson_append_int64(doc, key, key_len, v);
   } else if (is_type(ctx, idx, T_DECIMAL)) {
      duk_size_t len;
      const char *s = get_string_prop(ctx, idx, "__v", &len);
      bson_decimal128_t d;
      if (!bson_decimal128_from_string(s, &d)) {
         (void) duk_type_error(ctx, "NumberDecimal: '%s' is not a number", s);
      }
      duk_pop(ctx);
      bson_append_decimal128(doc, key, key_len, &d);
   } else if (is_type(ctx, idx, T_TIMESTAMP)) {
      duk_get_prop_string(ctx, idx, "t");
      duk_get_prop_string(ctx, idx, "i");
      uint32_t t = duk_to_uint32(ctx, -2), i = duk_to_uint32(ctx, -1);
      duk_pop_2(ctx);
      bson_append_timestamp(doc, key, key_len, t, i);
   } else if (is_type(ctx, idx, T_BINDATA)) {
      duk_get_prop_string(ctx, idx, "__sub");
      int sub = duk_to_int(ctx, -1);
      duk_pop(ctx);
      duk_get_prop_string(ctx, idx, "__b64");
      duk_base64_decode(ctx, -1);
      duk_size_t len;
      const uint8_t *data = duk_get_buffer_data(ctx, -1, &len);
      bson_append_binary(doc, key, key_len, (bson_subtype_t) sub, data,
                         (uint32_t) len);
      duk_pop(ctx);
   } else if (is_type(ctx, idx, T_REGEXP)) {
      duk_size_t len;
      const char *src = get_string_prop(ctx, idx, "source", &len);
      char flags[8];
      size_t n = 0;
      static const struct {
         const char *prop;
         char flag;
      } fl[] = {{"ignoreCase", 'i'}, {"multiline", 'm'}};
      for (size_t f = 0; f < sizeof fl / sizeof fl[0]; f++) {
         duk_get_prop_string(ctx, idx, fl[f].prop);
         if (duk_to_boolean(ctx, -1)) {
            flags[n++] = fl[f].flag;
         }
         duk_pop(ctx);
      }
      flags[n] = '\0';
      bson_append_regex(doc, key, key_len, src, flags);
      duk_pop(ctx);
   } else if (is_type(ctx, idx, T_MINKEY)) {
      bson_append_minkey(doc, key, key_len);
   } else if (is_type(ctx, idx, T_MAXKEY)) {
      bson_append_maxkey(doc, key, key_len);
   } else {
      append_object(ctx, idx, doc, key, key_len, false, depth);
   }
}

/* ---- a call ------------------------------------------------------------- */

typedef struct {
   js_fn_t *fn;
   const aspen_value_t *args; /* an array */
   bson_t *result;            /* {"v": <the result>} */
} call_t;

/* Under duk_safe_call: the stack has the compiled function at index 0 of
 * the heap's bottom frame; pushes the arguments, calls it, converts the
 * result. Anything thrown unwinds to the safe call. */
static duk_ret_t
call_safe(duk_context *ctx, void *udata)
{
   call_t *call = udata;
   duk_push_global_stash(ctx);
   duk_get_prop_string(ctx, -1, "aspen_fn");
   duk_remove(ctx, -2);
   bson_iter_t it, child;
   int nargs = 0;
   if (bson_iter_init_from_data(&it, call->args->v.value.v_doc.data,
                                call->args->v.value.v_doc.data_len)) {
      (void) child;
      while (bson_iter_next(&it)) {
         duk_require_stack(ctx, 1);
         push_bson_value(ctx, &it, 1);
         nargs++;
      }
   }
   duk_call(ctx, nargs);
   append_js(ctx, -1, call->result, "v", 1, 0);
   return 0;
}

/* Makes the heap: the prelude's types in the stash, then the body compiled
 * (a SyntaxError is kept and reported by each call, as mongod reports it
 * when it runs the function). */
static bool
heap_open(js_fn_t *fn, aspen__eval_t *st)
{
   fn->mem_used = 0;
   fn->ctx = duk_create_heap(js_alloc, js_realloc, js_free, fn, js_fatal);
   if (!fn->ctx) {
      return aspen__fail(st, ASPEN_ERR_ExceededMemoryLimit,
                         "$function: could not make a JavaScript heap "
                         "within aspen's limit of %llu bytes",
                         (unsigned long long) fn->mem_limit);
   }
   duk_context *ctx = fn->ctx;
   duk_push_global_stash(ctx);
   if (duk_peval_string(ctx, prelude) != 0) {
      aspen__fail(st, ASPEN_ERR_JSInterpreterFailure, "$function: the JavaScript prelude failed: %s",
                  duk_safe_to_string(ctx, -1));
      duk_destroy_heap(ctx);
      fn->ctx = NULL;
      return false;
   }
   duk_put_prop_string(ctx, -2, "aspen_types");
   duk_push_string(ctx, "$function");
   if (duk_pcompile_lstring_filename(ctx, DUK_COMPILE_FUNCTION, fn->body,
                                     fn->body_len) != 0) {
      /* Keep the error: every call reports it. */
      duk_put_prop_string(ctx, -2, "aspen_compile_error");
   } else {
      duk_put_prop_string(ctx, -2, "aspen_fn");
   }
   duk_pop(ctx);
   return true;
}

static void
heap_close(js_fn_t *fn)
{
   if (fn->ctx) {
      duk_destroy_heap(fn->ctx);
      fn->ctx = NULL;
   }
}

static bool
js_call(js_fn_t *fn, aspen__eval_t *st, const aspen_value_t *args,
        aspen_value_t *out)
{
   uint64_t limit_ms = atomic_load(&fn_time_limit_ms);
   fn->mem_limit = atomic_load(&fn_memory_limit);
   fn->timed_out = fn->over_memory = fn->interrupted = false;
   fn->deadline_ns = 0;
   if (!fn->ctx && !heap_open(fn, st)) {
      return false;
   }
   duk_context *ctx = fn->ctx;
   duk_push_global_stash(ctx);
   if (duk_get_prop_string(ctx, -1, "aspen_compile_error")) {
      bool ok = aspen__fail(st, ASPEN_ERR_JSInterpreterFailure, "%s", duk_safe_to_string(ctx, -1));
      duk_pop_2(ctx);
      return ok;
   }
   duk_pop_2(ctx);

   bson_t result = BSON_INITIALIZER;
   call_t call = {fn, args, &result};
   fn->deadline_ns = now_ns() + limit_ms * 1000000ull;
   duk_int_t rc = duk_safe_call(ctx, call_safe, &call, 0, 1);
   fn->deadline_ns = 0;
   bool ok = true;
   if (rc != DUK_EXEC_SUCCESS) {
      if (fn->interrupted) {
         aspen_expr_note_interrupted();
         ok = aspen__fail(st, ASPEN_ERR_Interrupted,
                          "operation was interrupted");
      } else if (fn->over_memory) {
         ok = aspen__fail(st, ASPEN_ERR_ExceededMemoryLimit,
                          "$function exceeded aspen's memory limit of %llu "
                          "bytes for its JavaScript heap",
                          (unsigned long long) fn->mem_limit);
      } else if (fn->timed_out) {
         ok = aspen__fail(st, ASPEN_ERR_ExceededTimeLimit,
                          "$function exceeded aspen's time limit of %llu ms "
                          "for one call",
                          (unsigned long long) limit_ms);
      } else {
         duk_dup(ctx, -1);
         const char *msg = duk_safe_to_string(ctx, -1);
         ok = aspen__fail(st, ASPEN_ERR_JSInterpreterFailure, "%s", msg);
         duk_pop(ctx);
      }
   }
   duk_pop(ctx);
   if (!ok) {
      bson_destroy(&result);
      /* After a limit the heap may hold what the call made (or be in the
       * middle of unwinding): start the next call on a fresh one. */
      if (fn->timed_out || fn->over_memory || fn->interrupted) {
         heap_close(fn);
      }
      *out = ASPEN_VALUE_MISSING;
      return false;
   }
   bson_iter_t it;
   if (!bson_iter_init_find(&it, &result, "v")) {
      bson_destroy(&result);
      *out = aspen_value_null();
      return true;
   }
   aspen_value_t borrowed = aspen_value_borrow(&it);
   *out = aspen_value_copy(&borrowed);
   bson_destroy(&result);
   return true;
}

static void
fn_free(void *aux)
{
   js_fn_t *fn = aux;
   if (!fn) {
      return;
   }
   heap_close(fn);
   pthread_mutex_destroy(&fn->mu);
   bson_free(fn->body);
   bson_free(fn);
}

static bool
parse_function(aspen__parse_t *ps, const aspen__op_t *op,
               const bson_iter_t *arg, aspen_expr_t *e)
{
   (void) op;
   const char *body = NULL;
   uint32_t body_len = 0;
   if (!parse_spec(ps, arg, e, &body, &body_len)) {
      return false;
   }
   js_fn_t *fn = bson_malloc0(sizeof *fn);
   pthread_mutex_init(&fn->mu, NULL);
   fn->body = bson_strndup(body, body_len);
   fn->body_len = body_len;
   e->aux = fn;
   e->aux_free = fn_free;
   return true;
}

static bool
eval_function(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   js_fn_t *fn = e->aux;
   aspen_value_t args;
   if (!aspen__eval_node(e->args[0], st, &args)) {
      *out = ASPEN_VALUE_MISSING;
      return false;
   }
   if (args.v.value_type != BSON_TYPE_ARRAY) {
      aspen_value_destroy(&args);
      *out = ASPEN_VALUE_MISSING;
      return aspen__fail(st, 31266, "The args field must be of type array");
   }
   pthread_mutex_lock(&fn->mu);
   bool ok = js_call(fn, st, &args, out);
   pthread_mutex_unlock(&fn->mu);
   aspen_value_destroy(&args);
   return ok;
}

#endif /* ASPEN_HAVE_JS */

/* Never folded: a function may read the clock or Math.random. */
static const aspen__op_t ops[] = {
   {"$function", parse_function, eval_function, 0, 0, 0, 0, NULL},
};

const aspen__op_table_t aspen__expr_function_ops = {
   ops, sizeof ops / sizeof ops[0]};
