/*
 * test_window_group.c - a window's $group (engine/stages/window_block.c):
 * its group keys' fast path against the general path, and whole windows
 * run three ways - the fast path, every key through the general path, and
 * every hash colliding - which must give the same documents, with the
 * groups MongoDB makes (1, 1.0 and NumberLong(1) in one group; null,
 * missing and undefined in one; documents' field order counting; strings
 * with embedded NULs kept apart), through table growth past many keys.
 * Freeing every group at close and at destroy is checked by the
 * sanitizer builds (the suite runs this under ASan).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builtins.h"
#include "connectors/connections.h"
#include "runtime/pipeline.h"
#include "stages/window.h"
#include "stages/window_int.h"

#define T0_MS INT64_C(1795000000000)

static aspen_conns_t g_conns;

/* ---- key bytes: the fast path against the general one ----------------------- */

/* The general path's bytes for `it`'s value: aspen_value_append, then
 * append_normalized, less the document's frame. */
static size_t
general_key(const bson_iter_t *it, uint8_t *out, size_t cap)
{
   aspen_value_t v = aspen_value_borrow(it);
   if (aspen_value_is_missing(&v)) {
      v = aspen_value_null();
   }
   bson_t tmp = BSON_INITIALIZER, key = BSON_INITIALIZER;
   aspen_value_append(&tmp, "", 0, &v);
   bson_iter_t ti;
   assert_true(bson_iter_init(&ti, &tmp) && bson_iter_next(&ti));
   aspen__window_block_append_normalized(&key, "", &ti);
   size_t n = key.len - 5;
   assert_true(n <= cap);
   memcpy(out, bson_get_data(&key) + 4, n);
   bson_destroy(&tmp);
   bson_destroy(&key);
   return n;
}

static void
check_key(const aspen_value_t *v, const uint8_t *want, size_t want_len,
          const char *what)
{
   aspen_bsonw_t kw;
   uint8_t buf[ASPEN_GROUP_KEY_BUF];
   uint32_t len;
   aspen_bsonw_init(&kw);
   const uint8_t *got = aspen__window_block_group_key(&kw, buf, v, &len);
   if (len != want_len || memcmp(got, want, len) != 0) {
      fail_msg("key of %s: %u bytes, want %zu", what, len, want_len);
   }
   aspen_bsonw_cleanup(&kw);
}

/* A value of every BSON type, and numbers' corner cases. */
static const char *const every_type_json =
      "{\"i32\": 1, \"neg\": -7, \"i64\": {\"$numberLong\": \"1\"},"
      " \"big\": {\"$numberLong\": \"9223372036854775807\"},"
      " \"dint\": {\"$numberDouble\": \"1.0\"},"
      " \"dfrac\": 1.5, \"dneg0\": {\"$numberDouble\": \"-0.0\"},"
      " \"dnan\": {\"$numberDouble\": \"NaN\"},"
      " \"dinf\": {\"$numberDouble\": \"Infinity\"},"
      " \"dhuge\": 1e19, \"dedge\": 9.2e18,"
      " \"dec\": {\"$numberDecimal\": \"1\"},"
      " \"str\": \"abc\", \"empty\": \"\","
      " \"long\": \"0123456789012345678901234567890123456789012345678901234"
      "56789\","
      " \"fits\": \"012345678901234567890123456789012345678901234567890123456\","
      " \"doc\": {\"a\": 1, \"b\": {\"c\": 2.0}}, \"arr\": [1, 2.0, [3.0]],"
      " \"bin\": {\"$binary\": {\"base64\": \"AAEC\", \"subType\": \"00\"}},"
      " \"oid\": {\"$oid\": \"0123456789abcdef01234567\"},"
      " \"t\": true, \"f\": false,"
      " \"date\": {\"$date\": {\"$numberLong\": \"1700000000000\"}},"
      " \"null\": null, \"undef\": {\"$undefined\": true},"
      " \"re\": {\"$regularExpression\": {\"pattern\": \"a.b\", \"options\":"
      " \"i\"}},"
      " \"ptr\": {\"$dbPointer\": {\"$ref\": \"c\", \"$id\": {\"$oid\":"
      " \"0123456789abcdef01234567\"}}},"
      " \"code\": {\"$code\": \"f()\"},"
      " \"sym\": {\"$symbol\": \"s\"},"
      " \"cws\": {\"$code\": \"g()\", \"$scope\": {\"x\": 1}},"
      " \"ts\": {\"$timestamp\": {\"t\": 1, \"i\": 2}},"
      " \"min\": {\"$minKey\": 1}, \"max\": {\"$maxKey\": 1}}";

/* Every BSON type (and the numbers' corner cases): the key the fast path
 * writes is the general path's, byte for byte. */
static void
key_bytes_every_type(void **state)
{
   (void) state;
   bson_error_t berr;
   bson_t *doc =
      bson_new_from_json((const uint8_t *) every_type_json, -1, &berr);
   assert_non_null(doc);
   /* A string with embedded NULs. */
   bson_append_utf8(doc, "nul", -1, "a\0b\0", 4);
   bson_iter_t it;
   assert_true(bson_iter_init(&it, doc));
   int n = 0;
   while (bson_iter_next(&it)) {
      uint8_t want[256];
      size_t want_len = general_key(&it, want, sizeof want);
      aspen_value_t v = aspen_value_borrow(&it);
      check_key(&v, want, want_len, bson_iter_key(&it));
      n++;
   }
   assert_int_equal(n, 34);
   /* Missing groups as null. */
   uint8_t null_key[] = {BSON_TYPE_NULL, 0};
   aspen_value_t missing = ASPEN_VALUE_MISSING;
   check_key(&missing, null_key, sizeof null_key, "missing");
   /* 1, 1.0 and NumberLong(1) make one key, -0.0 and 0 another. */
   uint8_t one[] = {BSON_TYPE_INT64, 0, 1, 0, 0, 0, 0, 0, 0, 0};
   aspen_value_t ones[] = {aspen_value_int32(1), aspen_value_int64(1),
                           aspen_value_double(1.0)};
   for (int i = 0; i < 3; i++) {
      check_key(&ones[i], one, sizeof one, "one");
   }
   bson_destroy(doc);
}

/* ---- whole windows ------------------------------------------------------------ */

typedef struct {
   bson_t **docs;
   size_t n, cap;
   size_t dlq;
} outputs_t;

static void
on_output(void *arg, const aspen_sdoc_t *out)
{
   outputs_t *o = arg;
   if (o->n == o->cap) {
      o->cap = o->cap ? o->cap * 2 : 64;
      o->docs = aspen_xrealloc(o->docs, o->cap * sizeof *o->docs);
   }
   o->docs[o->n] = bson_new();
   bson_copy_to_excluding_noinit(out->doc, o->docs[o->n], "_stream_meta",
                                 NULL);
   o->n++;
}

static void
on_dlq(void *arg, const aspen_sdoc_t *in, const char *op, const char *reason)
{
   (void) in;
   (void) op;
   (void) reason;
   ((outputs_t *) arg)->dlq++;
}

static void
outputs_cleanup(outputs_t *o)
{
   for (size_t i = 0; i < o->n; i++) {
      bson_destroy(o->docs[i]);
   }
   free(o->docs);
   memset(o, 0, sizeof *o);
}

/* The three ways a window's $group can find its groups. */
enum { MODE_FAST, MODE_GENERAL, MODE_COLLIDE, N_MODES };

static void
set_mode(int mode)
{
   aspen__window_group_key_general = mode == MODE_GENERAL;
   aspen__window_group_inputs_general = mode == MODE_GENERAL;
   aspen__window_group_hash_mask = mode == MODE_COLLIDE ? 0 : ~(uint64_t) 0;
}

/* Runs `docs` through a 10 s tumbling window with $group `group_json`
 * (one event per ms from T0_MS), then one more document a minute later,
 * which closes the window: its results go into `o`. The open state is
 * positive before the close. */
static void
run_window(const char *group_json, bson_t *const *docs, size_t n, int mode,
           outputs_t *o)
{
   char json[2048];
   snprintf(json, sizeof json,
            "[{\"$source\": {\"documents\": []}},"
            " {\"$tumblingWindow\": {\"interval\": {\"size\": 10, \"unit\":"
            " \"second\"}, \"allowedLateness\": 0, \"pipeline\": ["
            "   {\"$group\": %s}]}}]",
            group_json);
   bson_error_t berr;
   bson_t *def = bson_new_from_json((const uint8_t *) json, -1, &berr);
   assert_non_null(def);
   aspen_error_t err;
   aspen_pipeline_t *pl = aspen_pipeline_parse(def, aspen_builtins_catalog(),
                                               &g_conns, true, false, &err);
   if (!pl) {
      fail_msg("pipeline: %s", err.message);
   }
   memset(o, 0, sizeof *o);
   pl->output = on_output;
   pl->dlq = on_dlq;
   pl->hook_arg = o;
   bson_t meta = BSON_INITIALIZER, src;
   BSON_APPEND_DOCUMENT_BEGIN(&meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "generated");
   bson_append_document_end(&meta, &src);
   set_mode(mode);
   for (size_t i = 0; i < n; i++) {
      int64_t ts = T0_MS + (int64_t) (i % 9000);
      aspen_sdoc_t d = {.doc = docs[i], .meta = &meta, .ts_ms = ts};
      pl->now_ms = ts;
      aspen_pipeline_push(pl, &d);
   }
   assert_int_equal(o->n, 0);
   assert_true(atomic_load(&pl->state_size) > 0);
   bson_t late = BSON_INITIALIZER;
   BSON_APPEND_INT32(&late, "k", -1);
   aspen_sdoc_t d = {.doc = &late, .meta = &meta, .ts_ms = T0_MS + 60000};
   pl->now_ms = d.ts_ms;
   aspen_pipeline_push(pl, &d);
   set_mode(MODE_FAST);
   /* The window after stays open: destroy frees its group. */
   aspen_pipeline_destroy(pl);
   bson_destroy(&late);
   bson_destroy(&meta);
   bson_destroy(def);
}

/* The three modes' outputs, compared as canonical Extended JSON (types
 * and field order count); returns the fast path's. */
static void
run_all_modes(const char *group_json, bson_t *const *docs, size_t n,
              outputs_t *fast)
{
   run_window(group_json, docs, n, MODE_FAST, fast);
   for (int mode = MODE_GENERAL; mode < N_MODES; mode++) {
      outputs_t o;
      run_window(group_json, docs, n, mode, &o);
      assert_int_equal(o.n, fast->n);
      assert_int_equal(o.dlq, fast->dlq);
      for (size_t i = 0; i < o.n; i++) {
         char *a = bson_as_canonical_extended_json(fast->docs[i], NULL);
         char *b = bson_as_canonical_extended_json(o.docs[i], NULL);
         if (strcmp(a, b) != 0) {
            fail_msg("mode %d, result %zu: %s, fast path %s", mode, i, b, a);
         }
         bson_free(a);
         bson_free(b);
      }
      outputs_cleanup(&o);
   }
}

static bson_t *
doc_from_json(const char *json)
{
   bson_error_t berr;
   bson_t *doc = bson_new_from_json((const uint8_t *) json, -1, &berr);
   if (!doc) {
      fail_msg("%s: %s", json, berr.message);
   }
   return doc;
}

/* `doc` as relaxed Extended JSON is `want`. */
static void
assert_relaxed(const bson_t *doc, const char *want)
{
   char *got = bson_as_relaxed_extended_json(doc, NULL);
   assert_string_equal(got, want);
   bson_free(got);
}

/* A result's field `f` as an int64 (asserting it is a number). */
static int64_t
result_int(const bson_t *doc, const char *f)
{
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, doc, f));
   assert_true(BSON_ITER_HOLDS_NUMBER(&it));
   return bson_iter_as_int64(&it);
}

static bson_type_t
result_id_type(const bson_t *doc)
{
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, doc, "_id"));
   return bson_iter_type(&it);
}

/* What one group's result should be, in order of first arrival: its _id's
 * type (as first seen), how many inputs, the first input's v. */
typedef struct {
   bson_type_t id_type;
   int64_t n, first;
} group_want_t;

static void
assert_groups(const outputs_t *o, const group_want_t *want, size_t n_want)
{
   assert_int_equal(o->n, n_want);
   assert_int_equal(o->dlq, 0);
   for (size_t i = 0; i < n_want; i++) {
      assert_int_equal(result_id_type(o->docs[i]), want[i].id_type);
      assert_int_equal(result_int(o->docs[i], "n"), want[i].n);
      assert_int_equal(result_int(o->docs[i], "first"), want[i].first);
   }
}

static void
docs_free(bson_t **docs, size_t n)
{
   for (size_t i = 0; i < n; i++) {
      bson_destroy(docs[i]);
   }
   free(docs);
}

/* Keys MongoDB groups together, and keys it keeps apart. */
static void
groups_as_mongodb(void **state)
{
   (void) state;
   const char *inputs[] = {
      "{\"k\": 1, \"v\": 0}",
      "{\"k\": {\"$numberDouble\": \"1.0\"}, \"v\": 1}",
      "{\"k\": {\"$numberLong\": \"1\"}, \"v\": 2}",
      "{\"k\": \"1\", \"v\": 3}",
      "{\"k\": null, \"v\": 4}",
      "{\"v\": 5}",
      "{\"k\": {\"$undefined\": true}, \"v\": 6}",
      NULL, /* "a\0b", built below */
      "{\"k\": \"a\", \"v\": 8}",
      "{\"k\": {\"a\": 1, \"b\": 2}, \"v\": 9}",
      "{\"k\": {\"b\": 2, \"a\": 1}, \"v\": 10}",
      "{\"k\": {\"a\": {\"$numberDouble\": \"1.0\"}, \"b\": 2}, \"v\": 11}",
      "{\"k\": [1, \"x\"], \"v\": 12}",
      "{\"k\": [{\"$numberDouble\": \"1.0\"}, \"x\"], \"v\": 13}",
      "{\"k\": 1.5, \"v\": 14}",
      "{\"k\": true, \"v\": 15}",
      "{\"k\": \"a string longer than the fast path's buffer of sixty-four "
      "bytes\", \"v\": 16}",
      "{\"k\": \"a string longer than the fast path's buffer of sixty-four "
      "bytes\", \"v\": 17}",
      "{\"k\": 0, \"v\": 18}",
      "{\"k\": {\"$numberDouble\": \"-0.0\"}, \"v\": 19}",
      "{\"k\": \"a\", \"v\": 20}",
   };
   size_t n = sizeof inputs / sizeof inputs[0];
   bson_t **docs = aspen_xcalloc(n, sizeof *docs);
   for (size_t i = 0; i < n; i++) {
      if (inputs[i]) {
         docs[i] = doc_from_json(inputs[i]);
      } else {
         docs[i] = bson_new();
         bson_append_utf8(docs[i], "k", 1, "a\0b", 3);
         BSON_APPEND_INT32(docs[i], "v", (int32_t) i);
      }
   }
   outputs_t o;
   run_all_modes("{\"_id\": \"$k\", \"n\": {\"$sum\": 1},"
                 " \"first\": {\"$first\": \"$v\"},"
                 " \"vs\": {\"$push\": \"$v\"}, \"max\": {\"$max\": \"$v\"}}",
                 docs, n, &o);
   /* In order of first arrival: the _id as first seen, how many, the
    * first input's v. */
   const group_want_t want[] = {
      {BSON_TYPE_INT32, 3, 0},  {BSON_TYPE_UTF8, 1, 3},
      {BSON_TYPE_NULL, 3, 4},   {BSON_TYPE_UTF8, 1, 7},
      {BSON_TYPE_UTF8, 2, 8},   {BSON_TYPE_DOCUMENT, 2, 9},
      {BSON_TYPE_DOCUMENT, 1, 10}, {BSON_TYPE_ARRAY, 2, 12},
      {BSON_TYPE_DOUBLE, 1, 14}, {BSON_TYPE_BOOL, 1, 15},
      {BSON_TYPE_UTF8, 2, 16},  {BSON_TYPE_INT32, 2, 18},
   };
   assert_groups(&o, want, sizeof want / sizeof want[0]);
   /* The embedded NUL is part of the key: "a\0b" is not "a". */
   bson_iter_t it;
   uint32_t len;
   assert_true(bson_iter_init_find(&it, o.docs[3], "_id"));
   assert_memory_equal(bson_iter_utf8(&it, &len), "a\0b", 3);
   assert_int_equal(len, 3);
   outputs_cleanup(&o);
   docs_free(docs, n);
}

/* Numerically equal keys of every numeric type group together, decimals
 * included (NumberDecimal("2.000") with 2, "0.5" with 0.5, "-0" with 0, an
 * integral decimal past int64 with the double of the same value), and
 * every NaN (either sign, any payload, a decimal's) is one group; 0.1 as
 * a double and as a decimal are different numbers, so different groups. */
static void
decimal_and_nan_keys(void **state)
{
   (void) state;
   const char *inputs[] = {
      "{\"k\": 2, \"v\": 0}",
      "{\"k\": {\"$numberDecimal\": \"2\"}, \"v\": 1}",
      "{\"k\": {\"$numberDecimal\": \"2.000\"}, \"v\": 2}",
      "{\"k\": 0.5, \"v\": 3}",
      "{\"k\": {\"$numberDecimal\": \"0.50\"}, \"v\": 4}",
      "{\"k\": 0.1, \"v\": 5}",
      "{\"k\": {\"$numberDecimal\": \"0.1\"}, \"v\": 6}",
      "{\"k\": {\"$numberDouble\": \"NaN\"}, \"v\": 7}",
      "{\"k\": {\"$numberDecimal\": \"NaN\"}, \"v\": 8}",
      NULL, /* a NaN with another payload, built below */
      NULL, /* a negative NaN, built below */
      "{\"k\": {\"$numberDouble\": \"Infinity\"}, \"v\": 11}",
      "{\"k\": {\"$numberDecimal\": \"Infinity\"}, \"v\": 12}",
      "{\"k\": {\"$numberDecimal\": \"-0\"}, \"v\": 13}",
      "{\"k\": 0, \"v\": 14}",
      "{\"k\": {\"$numberDecimal\": \"1180591620717411303424\"}, \"v\": 15}",
      "{\"k\": {\"$numberDouble\": \"1180591620717411303424\"}, \"v\": 16}",
      "{\"k\": {\"$numberDecimal\": \"9223372036854775807\"}, \"v\": 17}",
      "{\"k\": {\"$numberLong\": \"9223372036854775807\"}, \"v\": 18}",
      "{\"k\": {\"$numberDecimal\": \"-Infinity\"}, \"v\": 19}",
      "{\"k\": {\"$numberDecimal\": \"1E+400\"}, \"v\": 20}",
   };
   const uint64_t nan_bits[] = {0x7ff0000000000001ull, 0xfff8000000000000ull};
   size_t n = sizeof inputs / sizeof inputs[0];
   bson_t **docs = aspen_xcalloc(n, sizeof *docs);
   for (size_t i = 0; i < n; i++) {
      if (inputs[i]) {
         docs[i] = doc_from_json(inputs[i]);
      } else {
         double nan;
         memcpy(&nan, &nan_bits[i - 9], 8);
         docs[i] = bson_new();
         BSON_APPEND_DOUBLE(docs[i], "k", nan);
         BSON_APPEND_INT32(docs[i], "v", (int32_t) i);
      }
   }
   outputs_t o;
   run_all_modes("{\"_id\": \"$k\", \"n\": {\"$sum\": 1},"
                 " \"first\": {\"$first\": \"$v\"}}",
                 docs, n, &o);
   const group_want_t want[] = {
      {BSON_TYPE_INT32, 3, 0},       {BSON_TYPE_DOUBLE, 2, 3},
      {BSON_TYPE_DOUBLE, 1, 5},      {BSON_TYPE_DECIMAL128, 1, 6},
      {BSON_TYPE_DOUBLE, 4, 7},      {BSON_TYPE_DOUBLE, 2, 11},
      {BSON_TYPE_DECIMAL128, 2, 13}, {BSON_TYPE_DECIMAL128, 2, 15},
      {BSON_TYPE_DECIMAL128, 2, 17}, {BSON_TYPE_DECIMAL128, 1, 19},
      {BSON_TYPE_DECIMAL128, 1, 20},
   };
   assert_groups(&o, want, sizeof want / sizeof want[0]);
   outputs_cleanup(&o);
   docs_free(docs, n);
}

/* Inputs read by the top-level scan against expression evaluation: a
 * value of every type as _id and as every accumulator's input, the first
 * of two fields with the same name, fields missing, other fields before
 * and after. */
static void
top_level_inputs(void **state)
{
   (void) state;
   bson_error_t berr;
   bson_t *every =
      bson_new_from_json((const uint8_t *) every_type_json, -1, &berr);
   assert_non_null(every);
   bson_t *docs[64];
   size_t n = 0;
   bson_iter_t it;
   assert_true(bson_iter_init(&it, every));
   while (bson_iter_next(&it)) {
      bson_t *d = bson_new();
      BSON_APPEND_UTF8(d, "before", "x");
      bson_append_iter(d, "k", 1, &it);
      BSON_APPEND_INT32(d, "mid", 1);
      bson_append_iter(d, "v", 1, &it);
      BSON_APPEND_INT32(d, "v", 99); /* a second "v": not read */
      docs[n++] = d;
   }
   docs[n] = bson_new(); /* neither k nor v */
   BSON_APPEND_INT32(docs[n], "kk", 1);
   n++;
   docs[n] = bson_new(); /* v before k, k twice */
   BSON_APPEND_INT32(docs[n], "v", 5);
   BSON_APPEND_INT32(docs[n], "k", 1);
   BSON_APPEND_INT32(docs[n], "k", 2);
   n++;
   outputs_t o;
   run_all_modes("{\"_id\": \"$k\", \"n\": {\"$count\": {}},"
                 " \"all\": {\"$push\": \"$v\"}, \"s\": {\"$sum\": \"$v\"},"
                 " \"lo\": {\"$min\": \"$v\"}, \"f\": {\"$first\": \"$mid\"},"
                 " \"set\": {\"$addToSet\": \"$k\"}}",
                 docs, n, &o);
   assert_int_equal(o.dlq, 0);
   /* 33 values and two more documents make 29 groups: 1, NumberLong(1),
    * 1.0, NumberDecimal("1") and the k-twice document (its first k) are
    * one; null, undefined and the document without k another. */
   assert_int_equal(o.n, 29);
   assert_int_equal(result_int(o.docs[0], "n"), 5);
   assert_relaxed(o.docs[0], "{ \"_id\" : 1, \"n\" : 5, \"all\" : [ 1, 1, 1.0, "
                  "{ \"$numberDecimal\" : \"1\" }, 5 ], \"s\" : "
                  "{ \"$numberDecimal\" : "
                  "\"9.000000000000000000000000000000000\" }, "
                  "\"lo\" : 1, \"f\" : 1, \"set\" : [ 1 ] }");
   outputs_cleanup(&o);
   for (size_t i = 0; i < n; i++) {
      bson_destroy(docs[i]);
   }
   bson_destroy(every);
}

/* $min and $max over numbers (their same-type comparisons skip the
 * general one): NaN below every number, -0.0 equal to 0.0, an equal value
 * never replacing the kept one (so its type stays), mixed types. */
static void
min_max_numbers(void **state)
{
   (void) state;
   const char *inputs[] = {
      "{\"k\": 1, \"v\": 3.5}",
      "{\"k\": 1, \"v\": {\"$numberDouble\": \"NaN\"}}",
      "{\"k\": 1, \"v\": {\"$numberDouble\": \"Infinity\"}}",
      "{\"k\": 1, \"v\": {\"$numberDouble\": \"-Infinity\"}}",
      "{\"k\": 2, \"v\": {\"$numberDouble\": \"0.0\"}}",
      "{\"k\": 2, \"v\": {\"$numberDouble\": \"-0.0\"}}",
      "{\"k\": 3, \"v\": {\"$numberLong\": \"7\"}}",
      "{\"k\": 3, \"v\": {\"$numberDouble\": \"7.0\"}}",
      "{\"k\": 3, \"v\": 7}",
      "{\"k\": 3, \"v\": {\"$numberLong\": \"6\"}}",
      "{\"k\": 4, \"v\": 5}",
      "{\"k\": 4, \"v\": -5}",
      "{\"k\": 4, \"v\": 9}",
      "{\"k\": 4, \"v\": null}",
   };
   size_t n = sizeof inputs / sizeof inputs[0];
   bson_t *docs[16];
   for (size_t i = 0; i < n; i++) {
      docs[i] = doc_from_json(inputs[i]);
   }
   outputs_t o;
   run_all_modes("{\"_id\": \"$k\", \"lo\": {\"$min\": \"$v\"},"
                 " \"hi\": {\"$max\": \"$v\"}}",
                 docs, n, &o);
   assert_int_equal(o.n, 4);
   assert_relaxed(o.docs[0], "{ \"_id\" : 1, \"lo\" : { \"$numberDouble\" : "
                             "\"NaN\" }, \"hi\" : { \"$numberDouble\" : "
                             "\"Infinity\" } }");
   assert_relaxed(o.docs[1], "{ \"_id\" : 2, \"lo\" : 0.0, \"hi\" : 0.0 }");
   assert_relaxed(o.docs[2], "{ \"_id\" : 3, \"lo\" : 6, \"hi\" : 7 }");
   assert_relaxed(o.docs[3], "{ \"_id\" : 4, \"lo\" : -5, \"hi\" : 9 }");
   /* 7 kept as the NumberLong it came as, 6 as one too. */
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, o.docs[2], "hi"));
   assert_int_equal(bson_iter_type(&it), BSON_TYPE_INT64);
   outputs_cleanup(&o);
   for (size_t i = 0; i < n; i++) {
      bson_destroy(docs[i]);
   }
}

/* Many keys (the table grows many times over), each of them as int32,
 * int64, double and string: every group gets exactly its inputs, in
 * first-arrival order. With every hash colliding, fewer keys (each probe
 * then walks the whole run). */
static void
run_many_keys(int n_keys, bool all_modes)
{
   size_t n = (size_t) n_keys * 4;
   bson_t **docs = aspen_xcalloc(n, sizeof *docs);
   for (int pass = 0; pass < 4; pass++) {
      for (int k = 0; k < n_keys; k++) {
         bson_t *d = bson_new();
         char s[32];
         switch (pass) {
         case 0:
            BSON_APPEND_INT32(d, "k", k);
            break;
         case 1:
            BSON_APPEND_INT64(d, "k", k);
            break;
         case 2:
            BSON_APPEND_DOUBLE(d, "k", (double) k);
            break;
         default:
            snprintf(s, sizeof s, "key %d", k);
            BSON_APPEND_UTF8(d, "k", s);
            break;
         }
         BSON_APPEND_INT32(d, "v", pass);
         docs[(size_t) pass * (size_t) n_keys + (size_t) k] = d;
      }
   }
   outputs_t o;
   const char *group = "{\"_id\": \"$k\", \"n\": {\"$sum\": 1},"
                       " \"s\": {\"$sum\": \"$v\"}}";
   if (all_modes) {
      run_all_modes(group, docs, n, &o);
   } else {
      run_window(group, docs, n, MODE_COLLIDE, &o);
   }
   assert_int_equal(o.n, (size_t) n_keys * 2);
   for (int k = 0; k < n_keys; k++) {
      /* The numbers' group: int32, int64 and double inputs. */
      const bson_t *num = o.docs[k];
      assert_int_equal(result_id_type(num), BSON_TYPE_INT32);
      assert_int_equal(result_int(num, "_id"), k);
      assert_int_equal(result_int(num, "n"), 3);
      assert_int_equal(result_int(num, "s"), 0 + 1 + 2);
      const bson_t *str = o.docs[n_keys + k];
      assert_int_equal(result_id_type(str), BSON_TYPE_UTF8);
      assert_int_equal(result_int(str, "n"), 1);
      assert_int_equal(result_int(str, "s"), 3);
   }
   outputs_cleanup(&o);
   docs_free(docs, n);
}

static void
table_growth(void **state)
{
   (void) state;
   run_many_keys(20000, true);
}

static void
all_hashes_collide(void **state)
{
   (void) state;
   run_many_keys(700, false);
}

/* Accumulator inputs through the path table: dotted paths, a path under
 * an array (the general lookup), an expression over two paths and a
 * $$ROOT path give what the general evaluation gives, with a document
 * refused by one accumulator ($mergeObjects of a number) leaving no
 * trace in the others. */
static void
inputs_through_paths(void **state)
{
   (void) state;
   const char *inputs[] = {
      "{\"g\": {\"h\": 1}, \"a\": {\"b\": 2}, \"x\": 3, \"o\": {\"p\": 1}}",
      "{\"g\": {\"h\": 1}, \"a\": [{\"b\": 4}, {\"b\": 5}], \"x\": 6,"
      " \"o\": {\"q\": 2}}",
      "{\"g\": {\"h\": 1}, \"a\": {\"b\": 7}, \"x\": 8, \"o\": 9}",
      "{\"g\": {\"h\": 2.0}, \"x\": 10, \"o\": {}}",
      "{\"g\": 5, \"a\": {\"b\": 11}, \"x\": 12, \"o\": {\"r\": 3}}",
   };
   size_t n = sizeof inputs / sizeof inputs[0];
   bson_t *docs[5];
   for (size_t i = 0; i < n; i++) {
      docs[i] = doc_from_json(inputs[i]);
   }
   outputs_t o;
   run_all_modes("{\"_id\": \"$g.h\", \"b\": {\"$push\": \"$a.b\"},"
                 " \"sum\": {\"$sum\": {\"$add\": [\"$x\", \"$g.h\"]}},"
                 " \"root\": {\"$last\": \"$$ROOT.x\"},"
                 " \"m\": {\"$mergeObjects\": \"$o\"}}",
                 docs, n, &o);
   /* Groups h = 1 (the third input refused: o is 9), h = 2 and missing
    * (g is 5: null). */
   assert_int_equal(o.n, 3);
   assert_int_equal(o.dlq, 1);
   assert_relaxed(o.docs[0], "{ \"_id\" : 1, \"b\" : [ 2, [ 4, 5 ] ], "
                  "\"sum\" : 11, \"root\" : 6, \"m\" : { \"p\" : 1, "
                  "\"q\" : 2 } }");
   assert_relaxed(o.docs[2], "{ \"_id\" : null, \"b\" : [ 11 ], \"sum\" : 0, "
                  "\"root\" : 12, \"m\" : { \"r\" : 3 } }");
   outputs_cleanup(&o);
   for (size_t i = 0; i < n; i++) {
      bson_destroy(docs[i]);
   }
}

int
main(void)
{
   aspen_error_t err;
   if (!aspen_conns_load(&g_conns, aspen_builtins_catalog(), NULL, NULL, NULL,
                         &err)) {
      fprintf(stderr, "connections: %s\n", err.message);
      return 1;
   }
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(key_bytes_every_type),
      cmocka_unit_test(groups_as_mongodb),
      cmocka_unit_test(decimal_and_nan_keys),
      cmocka_unit_test(top_level_inputs),
      cmocka_unit_test(min_max_numbers),
      cmocka_unit_test(table_growth),
      cmocka_unit_test(all_hashes_collide),
      cmocka_unit_test(inputs_through_paths),
   };
   int rc = cmocka_run_group_tests(tests, NULL, NULL);
   aspen_conns_cleanup(&g_conns);
   return rc;
}
