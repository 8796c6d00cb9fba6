/*
 * test_match.c - unit tests for engine/lang/matcher.c, match.c and
 * match_schema.c (the query language of $match and $validate).
 *
 * Data-driven: every .json file in tests/cases/match is one cmocka test. A file
 * is a JSON array of cases, each either
 *   {"name", "filter", "docs": [...], "matches": [true, false, ...]}
 * (one entry per document; an entry may instead be a string, meaning the
 * match must fail at run time with an error containing that text), or
 *   {"name", "filter", "parseError": "<substring>", "code": <optional int>}.
 * Cases are relaxed/canonical extended JSON. libbson's JSON reader would turn
 * the query operators {"$regex": ..., "$options": ...} and {"$type": <n>}
 * into legacy BSON regex/binary values, so the runner hides those three keys
 * from the reader and restores them in the filter afterwards.
 * A few behaviours that are not about filter semantics (NULL handling,
 * default $expr context, concurrent use) are tested directly below.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "lang/match.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef ASPEN_CASES_DIR
#error "ASPEN_CASES_DIR must point at tests/cases"
#endif

#define MATCH_CASES_DIR ASPEN_CASES_DIR "/match"

/* Keys libbson's JSON reader would misread, and what stands in for them. */
static const char *const hidden_keys[][2] = {
   {"\"$regex\"", "\"__aspen_regex\""},
   {"\"$options\"", "\"__aspen_options\""},
   {"\"$type\"", "\"__aspen_type\""},
};

static char *
read_file(const char *path)
{
   FILE *f = fopen(path, "rb");
   if (!f) {
      return NULL;
   }
   fseek(f, 0, SEEK_END);
   long size = ftell(f);
   fseek(f, 0, SEEK_SET);
   char *buf = malloc((size_t) size + 1);
   size_t got = fread(buf, 1, (size_t) size, f);
   buf[got] = '\0';
   fclose(f);
   return buf;
}

/* Returns a malloc'd copy of `text` with every `from` replaced by `to`. */
static char *
replace_all(const char *text, const char *from, const char *to)
{
   size_t from_len = strlen(from);
   size_t to_len = strlen(to);
   size_t count = 0;
   for (const char *p = strstr(text, from); p; p = strstr(p + from_len, from)) {
      count++;
   }
   size_t out_len = strlen(text) + count * (to_len + 1);
   char *out = malloc(out_len + 1);
   char *w = out;
   const char *r = text;
   for (const char *p = strstr(r, from); p; p = strstr(r, from)) {
      memcpy(w, r, (size_t) (p - r));
      w += p - r;
      memcpy(w, to, to_len);
      w += to_len;
      r = p + from_len;
   }
   size_t rest = strlen(r);
   memcpy(w, r, rest + 1);
   return out;
}

static const char *
restore_key(const char *key)
{
   for (size_t i = 0; i < sizeof hidden_keys / sizeof hidden_keys[0]; i++) {
      /* Compare without the quotes. */
      const char *stand_in = hidden_keys[i][1] + 1;
      size_t len = strlen(stand_in) - 1;
      if (strlen(key) == len && strncmp(key, stand_in, len) == 0) {
         static char restored[3][16];
         size_t real_len = strlen(hidden_keys[i][0]) - 2;
         memcpy(restored[i], hidden_keys[i][0] + 1, real_len);
         restored[i][real_len] = '\0';
         return restored[i];
      }
   }
   return key;
}

/* Copies `src` into `dst`, restoring hidden keys at every depth. */
static void
copy_restored(bson_t *dst, const bson_t *src)
{
   bson_iter_t it;
   ASPEN_ASSERT(bson_iter_init(&it, src));
   while (bson_iter_next(&it)) {
      const char *key = restore_key(bson_iter_key(&it));
      if (BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it)) {
         uint32_t len;
         const uint8_t *data;
         bson_t sub_src;
         bson_t sub_dst;
         bool is_array = BSON_ITER_HOLDS_ARRAY(&it);
         if (is_array) {
            bson_iter_array(&it, &len, &data);
            bson_append_array_begin(dst, key, -1, &sub_dst);
         } else {
            bson_iter_document(&it, &len, &data);
            bson_append_document_begin(dst, key, -1, &sub_dst);
         }
         ASPEN_ASSERT(bson_init_static(&sub_src, data, len));
         copy_restored(&sub_dst, &sub_src);
         if (is_array) {
            bson_append_array_end(dst, &sub_dst);
         } else {
            bson_append_document_end(dst, &sub_dst);
         }
      } else {
         bson_append_value(dst, key, -1, bson_iter_value(&it));
      }
   }
}

/* Runs one case; returns the number of failures (printed). */
static int
run_case(const char *file, const bson_t *tc)
{
   bson_iter_t it;
   const char *name = "?";
   bson_t filter_raw;
   bool have_filter = false;
   bson_t docs;
   bool have_docs = false;
   bson_t matches;
   bool have_matches = false;
   const char *parse_error = NULL;
   int32_t code = -1;

   ASPEN_ASSERT(bson_iter_init(&it, tc));
   while (bson_iter_next(&it)) {
      const char *key = bson_iter_key(&it);
      if (strcmp(key, "name") == 0) {
         name = bson_iter_utf8(&it, NULL);
      } else if (strcmp(key, "filter") == 0) {
         have_filter = aspen_bson_view(&it, &filter_raw);
      } else if (strcmp(key, "docs") == 0) {
         have_docs = aspen_bson_view(&it, &docs);
      } else if (strcmp(key, "matches") == 0) {
         have_matches = aspen_bson_view(&it, &matches);
      } else if (strcmp(key, "parseError") == 0) {
         parse_error = bson_iter_utf8(&it, NULL);
      } else if (strcmp(key, "code") == 0) {
         code = bson_iter_int32(&it);
      } else if (strcmp(key, "comment") != 0) {
         print_error("%s: %s: unknown case field '%s'\n", file, name, key);
         return 1;
      }
   }
   if (!have_filter || (!parse_error && (!have_docs || !have_matches))) {
      print_error("%s: %s: malformed case\n", file, name);
      return 1;
   }

   bson_t *filter = bson_new();
   copy_restored(filter, &filter_raw);
   aspen_matcher_t *m = NULL;
   aspen_error_t err = {0};
   bool ok = aspen_matcher_new(filter, &m, &err);
   int failures = 0;
   if (parse_error) {
      if (ok) {
         print_error("%s: %s: expected parse error '%s', filter compiled\n",
                     file, name, parse_error);
         failures++;
      } else if (!strstr(err.message, parse_error)) {
         print_error("%s: %s: expected parse error '%s', got '%s'\n", file,
                     name, parse_error, err.message);
         failures++;
      } else if (code >= 0 && err.code != code) {
         print_error("%s: %s: expected code %d, got %d\n", file, name, code,
                     err.code);
         failures++;
      } else if (m != NULL) {
         print_error("%s: %s: *out not NULL after failure\n", file, name);
         failures++;
      }
      aspen_matcher_destroy(m);
      bson_destroy(filter);
      return failures;
   }
   if (!ok) {
      print_error("%s: %s: unexpected parse error: %s\n", file, name,
                  err.message);
      bson_destroy(filter);
      return 1;
   }

   bson_iter_t d;
   bson_iter_t e;
   ASPEN_ASSERT(bson_iter_init(&d, &docs) && bson_iter_init(&e, &matches));
   int index = 0;
   while (bson_iter_next(&d)) {
      if (!bson_iter_next(&e)) {
         print_error("%s: %s: fewer 'matches' than 'docs'\n", file, name);
         failures++;
         break;
      }
      bson_t doc;
      ASPEN_ASSERT(aspen_bson_view(&d, &doc));
      bool matched = true;
      aspen_error_t merr = {0};
      bool run = aspen_matcher_match(m, &doc, NULL, &matched, &merr);
      char *json = bson_as_relaxed_extended_json(&doc, NULL);
      if (BSON_ITER_HOLDS_UTF8(&e)) {
         const char *want = bson_iter_utf8(&e, NULL);
         if (run || !strstr(merr.message, want)) {
            print_error("%s: %s: doc %d %s: expected runtime error '%s', got "
                        "%s '%s'\n",
                        file, name, index, json, want,
                        run ? "success" : "error", merr.message);
            failures++;
         } else if (matched) {
            print_error("%s: %s: doc %d: *matched true after error\n", file,
                        name, index);
            failures++;
         }
      } else if (!run) {
         print_error("%s: %s: doc %d %s: unexpected runtime error: %s\n",
                     file, name, index, json, merr.message);
         failures++;
      } else if (matched != bson_iter_bool(&e)) {
         print_error("%s: %s: doc %d %s: expected %s, got %s\n", file, name,
                     index, json, bson_iter_bool(&e) ? "match" : "no match",
                     matched ? "match" : "no match");
         failures++;
      }
      bson_free(json);
      index++;
   }
   if (bson_iter_next(&e)) {
      print_error("%s: %s: more 'matches' than 'docs'\n", file, name);
      failures++;
   }
   aspen_matcher_destroy(m);
   bson_destroy(filter);
   return failures;
}

static int cases_run;

static void
test_case_file(void **state)
{
   const char *path = *state;
   char *text = read_file(path);
   assert_non_null(text);
   for (size_t i = 0; i < sizeof hidden_keys / sizeof hidden_keys[0]; i++) {
      char *next = replace_all(text, hidden_keys[i][0], hidden_keys[i][1]);
      free(text);
      text = next;
   }
   bson_error_t berr;
   bson_t *all = bson_new_from_json((const uint8_t *) text, -1, &berr);
   free(text);
   if (!all) {
      fail_msg("%s: invalid JSON: %s", path, berr.message);
   }
   int failures = 0;
   int count = 0;
   bson_iter_t it;
   ASPEN_ASSERT(bson_iter_init(&it, all));
   while (bson_iter_next(&it)) {
      bson_t tc;
      if (!aspen_bson_view(&it, &tc)) {
         print_error("%s: case %d is not an object\n", path, count);
         failures++;
         continue;
      }
      failures += run_case(path, &tc);
      count++;
   }
   bson_destroy(all);
   cases_run += count;
   if (count == 0) {
      fail_msg("%s: no cases", path);
   }
   if (failures) {
      fail_msg("%s: %d failure(s) in %d case(s)", path, failures, count);
   }
}

/* ------------------------------------------------------------------------ */
/* Direct tests                                                              */
/* ------------------------------------------------------------------------ */

static void
test_destroy_null(void **state)
{
   (void) state;
   aspen_matcher_destroy(NULL);
}

static aspen_matcher_t *
compile_json(const char *json, bson_t **keep)
{
   bson_error_t berr;
   *keep = bson_new_from_json((const uint8_t *) json, -1, &berr);
   assert_non_null(*keep);
   aspen_matcher_t *m = NULL;
   aspen_error_t err = {0};
   if (!aspen_matcher_new(*keep, &m, &err)) {
      fail_msg("compile %s: %s", json, err.message);
   }
   return m;
}

static bool
match_json(const aspen_matcher_t *m, const char *json,
           const aspen_expr_ctx_t *ctx)
{
   bson_error_t berr;
   bson_t *doc = bson_new_from_json((const uint8_t *) json, -1, &berr);
   assert_non_null(doc);
   bool matched = false;
   aspen_error_t err = {0};
   assert_true(aspen_matcher_match(m, doc, ctx, &matched, &err));
   bson_destroy(doc);
   return matched;
}

/* aspen_fields_key_eq (8 and 4 bytes at a time, then bytes) says what
 * memcmp says, for every length up to 40, every position of a difference
 * and unaligned starts. */
static void
test_key_eq(void **state)
{
   (void) state;
   uint8_t a[48], b[48];
   for (size_t i = 0; i < sizeof a; i++) {
      a[i] = (uint8_t) ('a' + i % 26);
   }
   for (size_t shift = 0; shift < 3; shift++) {
      for (size_t n = 0; n <= 40; n++) {
         memcpy(b + shift, a + 1, n);
         assert_true(aspen_fields_key_eq(a + 1, b + shift, n));
         for (size_t d = 0; d < n; d++) {
            b[shift + d] ^= 0x80;
            assert_false(aspen_fields_key_eq(a + 1, b + shift, n));
            assert_false(aspen_fields_key_eq(b + shift, a + 1, n));
            b[shift + d] ^= 0x80;
         }
      }
   }
}

/* The matcher reads a number at the end of a path, and a sub-document to
 * descend into, straight from the element's bytes (walk_top through the
 * field table, walk_found after a scan): pinned against the general path,
 * the same value as the only element of an array (each element through
 * bson_iter_value), for every comparison over many values, with and
 * without a field table. */
static bool
match_doc(const aspen_matcher_t *m, const bson_t *doc, bool with_table)
{
   aspen_fields_t tab;
   aspen_expr_ctx_t ctx = {.root = doc};
   if (with_table) {
      assert_true(aspen_fields_scan(&tab, doc));
      ctx.fields = &tab;
   }
   bool matched = false;
   aspen_error_t err = {0};
   assert_true(aspen_matcher_match(m, doc, &ctx, &matched, &err));
   return matched;
}

/* A comparison of a path with a constant is read without the general walk
 * (matcher.c's cmp_fast: the first component through the field table or a
 * raw scan, the next ones in their sub-documents, an array or a malformed
 * element left to the walk): the same answers as with field tables off
 * (the walk alone), over paths one to three deep that are there, missing,
 * cut short by a scalar, or cross arrays, with duplicate keys, nulls,
 * documents and mixed types at their end, $ne and conjunctions. */
static void
test_cmp_fast_same_results(void **state)
{
   (void) state;
   static const char *const filters[] = {
      "{\"a\": 1}", "{\"a\": null}", "{\"a\": {\"$ne\": 1}}",
      "{\"a\": {\"$gte\": 1, \"$lt\": 3}}", "{\"a\": \"x\"}",
      "{\"a\": {\"$gt\": \"a\"}}", "{\"a\": {\"b\": 1}}",
      "{\"o.b\": 2}", "{\"o.b\": {\"$lte\": 2.5}}", "{\"o.b\": null}",
      "{\"o.b\": {\"$ne\": null}}", "{\"o.p.q\": true}",
      "{\"o.p.q\": {\"$gt\": 0}}", "{\"o.0\": 5}", "{\"o.b\": 2, \"a\": 1}",
      "{\"a\": {\"$eq\": {\"$numberLong\": \"1\"}}}",
      "{\"a\": {\"$lt\": {\"$date\": {\"$numberLong\": \"5\"}}}}",
      "{\"$or\": [{\"o.b\": 2}, {\"a\": {\"$gt\": 1}}]}",
      "{\"a\": {\"$lt\": {\"$maxKey\": 1}}}", "{\"\": 1}",
      /* Conjunctions: their comparisons go to cmp_fast from the $and
       * loop, the others (and what cmp_fast leaves) to the walk. */
      "{\"a\": {\"$gt\": 0}, \"o.b\": {\"$lt\": 3}, \"o.p.q\": true}",
      "{\"o.b\": {\"$gte\": 2}, \"a\": {\"$in\": [1, 2]}}",
      "{\"$and\": [{\"a\": 1}, {\"o.b\": {\"$ne\": 3}}]}",
      "{\"a\": {\"$gte\": 1, \"$lte\": 1}, \"o\": {\"$exists\": true}}",
      "{\"a\": {\"$ne\": 1}, \"o.b\": {\"$ne\": null}}",
      "{\"o.b\": {\"$gt\": 1}, \"$or\": [{\"a\": 2}, {\"a\": 1}]}",
      "{\"a\": {\"$type\": \"number\"}, \"o.b\": {\"$lte\": 2}}",
   };
   static const char *const docs[] = {
      "{\"a\": 1, \"o\": {\"b\": 2, \"p\": {\"q\": true}}}",
      "{\"a\": {\"$numberLong\": \"1\"}, \"o\": {\"b\": 2.5}}",
      "{\"a\": 1.0, \"o\": {\"b\": {\"$numberDecimal\": \"2\"}}}",
      "{\"a\": null, \"o\": null}", "{\"z\": 0}", "{}",
      "{\"a\": \"x\", \"o\": 3}", "{\"a\": \"b\", \"o\": {\"p\": 4}}",
      "{\"a\": [1, 2], \"o\": [{\"b\": 2}, {\"b\": 3}]}",
      "{\"a\": 2, \"o\": {\"b\": [1, 2]}}",
      "{\"o\": {\"p\": [{\"q\": true}]}, \"a\": {\"b\": 1}}",
      "{\"a\": 3, \"a\": 1, \"o\": {\"b\": 1, \"b\": 2}}",
      "{\"a\": {\"$date\": {\"$numberLong\": \"1\"}}, \"o\": {\"0\": 5}}",
      "{\"o\": [5, 6], \"a\": {\"$numberDouble\": \"NaN\"}}",
      "{\"a\": {\"$maxKey\": 1}, \"\": 1}",
      "{\"a\": true, \"o\": {\"p\": {\"q\": 1}}}",
   };
   size_t n_f = sizeof filters / sizeof filters[0];
   size_t n_d = sizeof docs / sizeof docs[0];
   size_t matched = 0, unmatched = 0;
   for (size_t f = 0; f < n_f; f++) {
      bson_t *keep;
      aspen_matcher_t *m = compile_json(filters[f], &keep);
      for (size_t d = 0; d < n_d; d++) {
         bson_error_t berr;
         bson_t *doc = bson_new_from_json((const uint8_t *) docs[d], -1,
                                          &berr);
         assert_non_null(doc);
         aspen_fields_set_enabled(false);
         bool want = match_doc(m, doc, false);
         aspen_fields_set_enabled(true);
         if (match_doc(m, doc, true) != want ||
             match_doc(m, doc, false) != want) {
            fail_msg("%s on %s: %d with the walk alone, not with cmp_fast",
                     filters[f], docs[d], want);
         }
         matched += want;
         unmatched += !want;
         bson_destroy(doc);
      }
      aspen_matcher_destroy(m);
      bson_destroy(keep);
   }
   /* Both answers occur often enough to mean something. */
   assert_true(matched > 40 && unmatched > 40);
}

/* Field tables tagged with their keys' layout (aspen_fields_scan_layout,
 * one layout kept across the documents, as a $match keeps it) give the same
 * tables as aspen_fields_scan, the same id exactly when the keys are
 * byte-equal to the previous document's (count, lengths, bytes, order),
 * and the matcher's memo of where each path starts (aspen_fields_find_memo)
 * the answers the walk alone gives, over documents whose layout changes
 * from one to the next: each twice in a row, then reordered, with a key
 * added or removed, a key of the same length with other bytes (short and
 * long), duplicate keys, arrays on the paths, missing fields, and types
 * the raw scan leaves to libbson's iterator (binary, regex). */
static void
test_layout_memo_same_results(void **state)
{
   (void) state;
   static const char *const filters[] = {
      "{\"a\": 1}", "{\"a\": {\"$gte\": 1}, \"o.b\": 2}", "{\"o.b\": null}",
      "{\"a\": {\"$in\": [1, 3]}}", "{\"k\": {\"$exists\": false}}",
      "{\"o\": {\"$size\": 2}}", "{\"a_rather_long_key1\": 1}",
      "{\"$or\": [{\"k\": 1}, {\"a\": {\"$lt\": 2}}]}",
   };
   static const char *const docs[] = {
      "{\"a\": 1, \"o\": {\"b\": 2}, \"k\": 1}",
      "{\"a\": 2, \"o\": {\"b\": 3}, \"k\": 0}",
      "{\"o\": {\"b\": 2}, \"a\": 1, \"k\": 1}",
      "{\"a\": 1, \"o\": {\"b\": 2}, \"k\": 1, \"z\": 1}",
      "{\"a\": 1, \"o\": {\"b\": 2}}",
      "{\"a\": 1, \"o\": {\"b\": 2}, \"j\": 1}",
      "{\"a\": 3, \"a\": 1, \"o\": {\"b\": 2}, \"k\": 1}",
      "{\"a\": 1, \"a\": 3, \"o\": {\"b\": 2}, \"k\": 1}",
      "{\"a\": [1, 2], \"o\": [{\"b\": 2}, {\"b\": 3}], \"k\": 1}",
      "{\"a_rather_long_key1\": 1, \"a\": 0}",
      "{\"a_rather_long_key2\": 1, \"a\": 0}",
      "{\"a_rather_long_key1\": 2, \"a\": 1}",
      "{\"a\": 1, \"o\": {\"$binary\": {\"base64\": \"AQI=\","
      " \"subType\": \"00\"}}, \"k\": 1}",
      "{\"a\": 1, \"o\": {\"$regularExpression\": {\"pattern\": \"x\","
      " \"options\": \"\"}}, \"k\": 1}",
      "{\"k\": 2}",
      "{}",
   };
   size_t n_d = sizeof docs / sizeof docs[0];
   size_t matched = 0, unmatched = 0, same_ids = 0;
   for (size_t f = 0; f < sizeof filters / sizeof filters[0]; f++) {
      bson_t *keep;
      aspen_matcher_t *m = compile_json(filters[f], &keep);
      aspen_fields_layout_t lay;
      memset(&lay, 0, sizeof lay);
      bson_t *prev = NULL;
      uint64_t prev_id = 0;
      for (size_t i = 0; i < 2 * n_d; i++) {
         bson_error_t berr;
         bson_t *doc = bson_new_from_json((const uint8_t *) docs[i / 2], -1,
                                          &berr);
         assert_non_null(doc);
         aspen_fields_t tab, plain;
         assert_true(aspen_fields_scan_layout(&tab, doc, &lay));
         assert_true(aspen_fields_scan(&plain, doc));
         assert_int_equal(tab.n, plain.n);
         assert_memory_equal(tab.f, plain.f, tab.n * sizeof tab.f[0]);
         assert_int_equal(plain.layout, 0);
         assert_true(tab.layout != 0);
         /* The same id exactly when the keys are the previous ones. */
         bool same_keys = false;
         if (prev) {
            aspen_fields_t p;
            assert_true(aspen_fields_scan(&p, prev));
            same_keys = p.n == plain.n;
            for (uint32_t k = 0; same_keys && k < p.n; k++) {
               same_keys = p.f[k].klen == plain.f[k].klen &&
                           memcmp(p.data + p.f[k].off + 1,
                                  plain.data + plain.f[k].off + 1,
                                  p.f[k].klen) == 0;
            }
         }
         assert_int_equal(tab.layout == prev_id, same_keys);
         same_ids += same_keys;
         aspen_fields_set_enabled(false);
         bool want = match_doc(m, doc, false);
         aspen_fields_set_enabled(true);
         aspen_expr_ctx_t ctx = {.root = doc, .fields = &tab};
         bool got = false;
         aspen_error_t err = {0};
         assert_true(aspen_matcher_match(m, doc, &ctx, &got, &err));
         if (got != want) {
            fail_msg("%s on %s (#%zu): %d with the walk alone", filters[f],
                     docs[i / 2], i, want);
         }
         matched += want;
         unmatched += !want;
         bson_destroy(prev);
         prev = doc;
         prev_id = tab.layout;
      }
      bson_destroy(prev);
      aspen_matcher_destroy(m);
      bson_destroy(keep);
   }
   assert_true(matched > 20 && unmatched > 20 && same_ids > 100);
}

/* One answer of `m` on `doc` with the field table `tab` (NULL: none) and
 * the plan `plan`, checked against the walk alone (field tables and plans
 * off) and against cmp_fast with the same table (plans off): fails naming
 * `what` if they differ. */
static bool
plan_same_as_general(const aspen_matcher_t *m, aspen_matcher_plan_t *plan,
                     const bson_t *doc, const aspen_fields_t *tab,
                     const char *filter, const char *what)
{
   aspen_error_t err = {0};
   bool want = false, fast = false, got = false;
   aspen_fields_set_enabled(false);
   aspen_matcher_set_plan_enabled(false);
   assert_true(aspen_matcher_match(m, doc, NULL, &want, &err));
   aspen_fields_set_enabled(true);
   aspen_expr_ctx_t ctx = {.root = doc, .fields = tab};
   assert_true(aspen_matcher_match(m, doc, &ctx, &fast, &err));
   assert_true(aspen_matcher_match_plan(m, NULL, doc, tab, NULL, &fast, &err));
   aspen_matcher_set_plan_enabled(true);
   assert_true(aspen_matcher_match_plan(m, plan, doc, tab, NULL, &got, &err));
   if (got != fast || fast != want) {
      fail_msg("%s on %s: %d with the walk alone, %d without the plan, %d "
               "with it", filter, what, want, fast, got);
   }
   return want;
}

/* Filters the plan reads (comparisons of paths of one or two components
 * with numbers, in place or through aspen__match_compare) and some it
 * leaves to the general path, for the plan tests below. */
static const char *const plan_filters[] = {
   "{\"o.w\": {\"$gte\": 50}, \"e\": 0}",
   "{\"o.w\": {\"$lt\": 50}}",
   "{\"o.w\": {\"$lte\": 50.5}}",
   "{\"o.w\": {\"$gt\": {\"$numberLong\": \"50\"}}}",
   "{\"o.w\": 50}",
   "{\"o.w\": null}",
   "{\"o.w\": {\"$eq\": {\"$numberDouble\": \"NaN\"}}}",
   "{\"o.w\": {\"$gte\": {\"$numberDecimal\": \"50\"}}}",
   "{\"o.t\": {\"$gt\": 10}, \"o.w\": {\"$lte\": 100}}",
   "{\"e\": {\"$lt\": {\"$numberLong\": \"-9223372036854775808\"}}}",
   "{\"e\": {\"$lte\": {\"$numberLong\": \"-9223372036854775808\"}}}",
   "{\"e\": {\"$gt\": {\"$numberLong\": \"9223372036854775807\"}}}",
   "{\"e\": {\"$gte\": {\"$numberLong\": \"9223372036854775807\"}}}",
   "{\"e\": {\"$gte\": -1.5}}",
   "{\"e\": {\"$lt\": 1}, \"o.w\": {\"$ne\": 3}}",
   "{\"e\": \"x\"}",
   "{\"o.w\": {\"$gt\": \"a\"}}",
   "{\"o.a_longer_key1\": {\"$gte\": 1}}",
   "{\"o.0\": 5}",
   "{\"o.w.v\": 1}",
   "{\"$or\": [{\"o.w\": 50}, {\"e\": 1}]}",
   "{\"e\": {\"$in\": [0, 1]}, \"o.w\": {\"$gte\": 0}}",
   "{\"o\": {\"w\": 50}}",
   "{\"$expr\": {\"$gt\": [\"$o.w\", 10]}, \"e\": 0}",
};

/* A matcher's per-layout plan (aspen_matcher_match_plan: each root
 * comparison's first field by its index for the table's layout, a
 * sub-document's field by the heads before it, numbers compared in place)
 * gives the walk's answers and cmp_fast's, as a $match keeps one, over
 * documents whose top-level layout alternates or repeats, whose
 * predicate field changes type (int32, int64, double, NaN, decimal,
 * string, null, a document), with arrays at each level of the path,
 * missing fields, scalars in the middle, duplicate keys and sub-documents
 * that grow, shrink and reorder (the field first, later, after fields of
 * other sizes and types, with long keys). */
static void
test_plan_same_results(void **state)
{
   (void) state;
   static const char *const docs[] = {
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": 60, \"t\": 20}}",
      "{\"d\": \"device_10\", \"e\": 0, \"o\": {\"w\": 40, \"t\": 5}}",
      "{\"d\": \"dev1\", \"e\": 1, \"o\": {\"w\": 50, \"t\": 20}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": 50.5, \"t\": 20}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": {\"$numberLong\": \"51\"}}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": {\"$numberDouble\": "
      "\"NaN\"}}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": {\"$numberDecimal\": "
      "\"50\"}}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": \"b\", \"t\": 1}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": null}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": {\"v\": 1}}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": [1, 60]}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": [{\"w\": 60}, {\"w\": 1}]}",
      "{\"d\": \"dev1\", \"e\": [0, 1], \"o\": {\"w\": 60}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": 10, \"w\": 70}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"t\": 20, \"w\": 60}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"t\": 20.5, \"n\": null, \"w\": "
      "70}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"s\": \"x\", \"w\": 70}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"a_longer_key1\": 3, \"w\": 70}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"a_longer_key1\": 0}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"x\": {\"$numberDecimal\": "
      "\"1\"}, \"y\": {\"$oid\": \"0123456789abcdef01234567\"}, \"w\": 55}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"a\": 1, \"b\": 2, \"c\": 3, "
      "\"d\": 4, \"e\": 5, \"w\": 55}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {}}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": 7}",
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"0\": 5, \"w\": 60}}",
      "{\"d\": \"dev1\", \"e\": {\"$numberLong\": \"-9223372036854775808\"}, "
      "\"o\": {\"w\": 60}}",
      "{\"d\": \"dev1\", \"e\": {\"$numberLong\": \"9223372036854775807\"}, "
      "\"o\": {\"w\": 60}}",
      "{\"d\": \"dev1\", \"e\": -1.5, \"o\": {\"w\": 60}}",
      "{\"d\": \"dev1\", \"e\": \"x\", \"o\": {\"w\": 60}}",
      "{\"d\": \"dev1\", \"e\": null, \"o\": {\"w\": 60}}",
      "{\"d\": \"dev1\", \"o\": {\"w\": 60}}",
      "{\"o\": {\"w\": 60}, \"e\": 0, \"d\": \"dev1\"}",
      "{\"e\": 0, \"e\": 1, \"o\": {\"w\": 60}}",
      "{\"e\": 0}",
      "{}",
   };
   size_t n_d = sizeof docs / sizeof docs[0];
   bson_t *parsed[sizeof docs / sizeof docs[0]];
   for (size_t d = 0; d < n_d; d++) {
      bson_error_t berr;
      parsed[d] = bson_new_from_json((const uint8_t *) docs[d], -1, &berr);
      assert_non_null(parsed[d]);
   }
   /* Orders: each document twice, then alternating with the first (the
    * layout and the sub-document's heads change back and forth), then
    * backwards. */
   size_t order[8 * sizeof docs / sizeof docs[0]], n_o = 0;
   for (size_t d = 0; d < n_d; d++) {
      order[n_o++] = d;
      order[n_o++] = d;
   }
   for (size_t d = 0; d < n_d; d++) {
      order[n_o++] = d;
      order[n_o++] = 0;
   }
   for (size_t d = n_d; d-- > 0;) {
      order[n_o++] = d;
   }
   /* Each pair of neighbours backwards after a document of another layout
    * (the plan made afresh): what the first taught it, then the second (a
    * sub-document with its field after another, then one with the same
    * heads but the first's key: a duplicate of the field). */
   for (size_t d = 0; d + 1 < n_d; d++) {
      order[n_o++] = n_d - 1;
      order[n_o++] = d + 1;
      order[n_o++] = d;
   }
   size_t matched = 0, unmatched = 0;
   for (size_t f = 0; f < sizeof plan_filters / sizeof plan_filters[0]; f++) {
      bson_t *keep;
      aspen_matcher_t *m = compile_json(plan_filters[f], &keep);
      aspen_matcher_plan_t *plan = aspen_matcher_plan_new(m);
      aspen_fields_layout_t lay;
      memset(&lay, 0, sizeof lay);
      for (size_t i = 0; i < n_o; i++) {
         const bson_t *doc = parsed[order[i]];
         aspen_fields_t tab;
         assert_true(aspen_fields_scan_layout(&tab, doc, &lay));
         bool want = plan_same_as_general(m, plan, doc, &tab, plan_filters[f],
                                          docs[order[i]]);
         /* A table without a layout id, and none: the general path. */
         aspen_fields_t plain;
         assert_true(aspen_fields_scan(&plain, doc));
         assert_int_equal(plan_same_as_general(m, plan, doc, &plain,
                                               plan_filters[f],
                                               docs[order[i]]),
                          want);
         assert_int_equal(plan_same_as_general(m, plan, doc, NULL,
                                               plan_filters[f],
                                               docs[order[i]]),
                          want);
         matched += want;
         unmatched += !want;
      }
      aspen_matcher_plan_destroy(plan);
      aspen_matcher_destroy(m);
      bson_destroy(keep);
   }
   for (size_t d = 0; d < n_d; d++) {
      bson_destroy(parsed[d]);
   }
   aspen_matcher_plan_destroy(NULL);
   assert_true(matched > 300 && unmatched > 300);
}

/* Every one-byte corruption of a document (five values at each byte),
 * matched with a plan that learned the original's layout and
 * sub-document (the original before each copy, so the plan's heads are
 * the original's when the copy comes): the walk's answers and cmp_fast's,
 * whether the copy's table has the original's layout id, another one, or
 * none (a copy the scan refuses). */
static void
test_plan_corruptions(void **state)
{
   (void) state;
   static const char *const docs[] = {
      "{\"d\": \"dev1\", \"e\": 0, \"o\": {\"w\": 60, \"t\": 20}, \"z\": 1}",
      "{\"e\": 0, \"o\": {\"t\": 2.5, \"a_longer_key1\": 1, \"w\": {"
      "\"$numberLong\": \"70\"}}}",
      "{\"o\": {\"n\": null, \"w\": 50.5}, \"e\": {\"$numberLong\": \"0\"}}",
   };
   static const uint8_t vals[] = {0x00, 0x01, 0x04, 0x10, 0xff};
   size_t refused = 0, seen = 0, matched = 0, unmatched = 0;
   for (size_t f = 0; f < sizeof plan_filters / sizeof plan_filters[0]; f++) {
      bson_t *keep;
      aspen_matcher_t *m = compile_json(plan_filters[f], &keep);
      aspen_matcher_plan_t *plan = aspen_matcher_plan_new(m);
      aspen_fields_layout_t lay;
      memset(&lay, 0, sizeof lay);
      for (size_t d = 0; d < sizeof docs / sizeof docs[0]; d++) {
         bson_error_t berr;
         bson_t *doc = bson_new_from_json((const uint8_t *) docs[d], -1, &berr);
         assert_non_null(doc);
         const uint8_t *orig = bson_get_data(doc);
         uint32_t len = doc->len;
         uint8_t *copy = malloc(len);
         for (uint32_t pos = 0; pos < len; pos++) {
            for (size_t v = 0; v < sizeof vals; v++) {
               aspen_fields_t tab;
               assert_true(aspen_fields_scan_layout(&tab, doc, &lay));
               plan_same_as_general(m, plan, doc, &tab, plan_filters[f],
                                    docs[d]);
               memcpy(copy, orig, len);
               copy[pos] = vals[v];
               bson_t view;
               if (!bson_init_static(&view, copy, len)) {
                  continue;
               }
               char what[160];
               snprintf(what, sizeof what, "%s with byte %u = 0x%02x",
                        docs[d], pos, vals[v]);
               bool ok = aspen_fields_scan_layout(&tab, &view, &lay);
               refused += !ok;
               seen++;
               bool want = plan_same_as_general(m, plan, &view,
                                                ok ? &tab : NULL,
                                                plan_filters[f], what);
               matched += want;
               unmatched += !want;
            }
         }
         free(copy);
         bson_destroy(doc);
      }
      aspen_matcher_plan_destroy(plan);
      aspen_matcher_destroy(m);
      bson_destroy(keep);
   }
   assert_true(refused > 100 && seen - refused > 1000);
   assert_true(matched > 500 && unmatched > 500);
}

/* The table libbson's iterator gives (bson_iter_next): each element's
 * offset and key length, and whether it reached the last byte. */
static bool
iter_table(const uint8_t *data, uint32_t len, aspen_fields_t *t)
{
   aspen_fields_reset(t);
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, data, len)) {
      return false;
   }
   uint32_t end = 4;
   while (bson_iter_next(&it)) {
      aspen_fields_add(t, bson_iter_offset(&it), bson_iter_key_len(&it));
      end = it.next_off;
   }
   return !t->overflow && end + 1 == len;
}

/* Scans the `len` bytes at `copy` (a corrupted or cut copy of `orig`,
 * whose table `first` was tagged with the layout `lay` keeps) with
 * aspen_fields_scan and with aspen_fields_scan_layout from a copy of `lay`,
 * and fails (naming `what`) unless both accept exactly what libbson's
 * iterator accepts, with its table, and the kept-layout scan tags the copy
 * with the original's id exactly when its keys are the original's. True
 * if the iterator accepted the copy. */
static bool
scan_same_as_iter(const uint8_t *copy, uint32_t len, const uint8_t *orig,
                  const aspen_fields_t *first,
                  const aspen_fields_layout_t *lay, const char *what)
{
   bson_t view;
   aspen_fields_t want, got;
   bool want_ok = iter_table(copy, len, &want);
   bool got_ok =
      bson_init_static(&view, copy, len) && aspen_fields_scan(&got, &view);
   if (got_ok != want_ok) {
      fail_msg("%s: scan %d, iterator %d", what, got_ok, want_ok);
   }
   if (want_ok) {
      assert_int_equal(got.n, want.n);
      assert_memory_equal(got.f, want.f, want.n * sizeof want.f[0]);
   }
   aspen_fields_layout_t kept = *lay;
   aspen_fields_t got_kept;
   bool kept_ok = bson_init_static(&view, copy, len) &&
                  aspen_fields_scan_layout(&got_kept, &view, &kept);
   if (kept_ok != want_ok) {
      fail_msg("%s: scan with a kept layout %d, iterator %d", what, kept_ok,
               want_ok);
   }
   if (want_ok) {
      assert_int_equal(got_kept.n, want.n);
      assert_memory_equal(got_kept.f, want.f, want.n * sizeof want.f[0]);
      assert_ptr_equal(got_kept.data, copy);
      assert_int_equal(got_kept.len, len);
      /* The original's id exactly when the keys are unchanged. */
      bool keys_same = want.n == first->n;
      for (uint32_t k = 0; keys_same && k < want.n; k++) {
         keys_same = want.f[k].klen == first->f[k].klen &&
                     memcmp(copy + want.f[k].off + 1,
                            orig + first->f[k].off + 1,
                            want.f[k].klen) == 0;
      }
      assert_int_equal(got_kept.layout == first->layout, keys_same);
   }
   return want_ok;
}

/* Every one-byte corruption of `doc` (five values at each byte) and every
 * cut of it to a shorter length whose length word says so (the elements
 * then run past the end), each scanned with the layout of `keep` kept (the
 * original or another document with its keys), against libbson's
 * iterator (scan_same_as_iter). Counts the copies the iterator refused
 * and accepted. */
static void
scan_corruptions(const bson_t *doc, const bson_t *keep, size_t *refused,
                 size_t *accepted)
{
   const uint8_t *orig = bson_get_data(doc);
   uint32_t len = doc->len;
   uint8_t *copy = malloc(len);
   aspen_fields_layout_t lay;
   aspen_fields_t first, same;
   memset(&lay, 0, sizeof lay);
   assert_true(aspen_fields_scan_layout(&first, keep, &lay));
   /* The document itself, through the kept layout's loop. */
   assert_true(aspen_fields_scan_layout(&same, doc, &lay));
   if (keep != doc) {
      assert_true(aspen_fields_scan(&first, doc));
      first.layout = same.layout;
   }
   for (uint32_t pos = 0; pos <= len; pos++) {
      static const uint8_t vals[] = {0x00, 0x01, 0x02, 0x7f, 0xff};
      for (size_t v = 0; v < (pos == len ? 1 : sizeof vals); v++) {
         memcpy(copy, orig, len);
         if (pos < len) {
            copy[pos] = vals[v];
         }
         char what[64];
         snprintf(what, sizeof what, "byte %u set to %u", pos, vals[v]);
         bool ok = scan_same_as_iter(copy, len, orig, &first, &lay, what);
         *refused += !ok;
         *accepted += ok;
      }
   }
   free(copy);
   /* Each cut in a buffer of its size: a read past it is ASan's. */
   for (uint32_t cut = 5; cut < len; cut++) {
      copy = malloc(cut);
      memcpy(copy, orig, cut);
      copy[0] = (uint8_t) cut; /* the length word lies about the elements */
      copy[1] = (uint8_t) (cut >> 8);
      copy[2] = copy[3] = 0;
      copy[cut - 1] = 0;
      char what[64];
      snprintf(what, sizeof what, "cut to %u bytes", cut);
      bool ok = scan_same_as_iter(copy, cut, orig, &first, &lay, what);
      *refused += !ok;
      *accepted += ok;
      free(copy);
   }
}

/* aspen_fields_scan's raw walk finds what libbson's iterator finds, over a
 * document with every element type and over corrupted copies of it
 * (lengths, key ends, bool bytes, the frame), where both must refuse the
 * same documents; and so does aspen_fields_scan_layout with the original's
 * layout kept (element heads compared, fixed-size elements stepped over),
 * tagging a copy with the original's layout id exactly when its keys are
 * the original's. */
static void
test_fields_scan_same_table(void **state)
{
   (void) state;
   bson_t *doc = bson_new();
   bson_oid_t oid;
   bson_decimal128_t dec = {.high = 0x3040000000000000ull, .low = 5};
   bson_t sub;
   uint8_t bin[3] = {1, 2, 3};
   bson_oid_init_from_string(&oid, "0123456789abcdef01234567");
   BSON_APPEND_DOUBLE(doc, "d", 1.5);
   BSON_APPEND_UTF8(doc, "string_key", "v");
   BSON_APPEND_DOCUMENT_BEGIN(doc, "o", &sub);
   BSON_APPEND_INT32(&sub, "x", 1);
   bson_append_document_end(doc, &sub);
   BSON_APPEND_ARRAY_BEGIN(doc, "arr", &sub);
   BSON_APPEND_INT32(&sub, "0", 1);
   bson_append_array_end(doc, &sub);
   BSON_APPEND_BINARY(doc, "bin", BSON_SUBTYPE_BINARY, bin, 3);
   BSON_APPEND_UNDEFINED(doc, "u");
   BSON_APPEND_OID(doc, "_id", &oid);
   BSON_APPEND_BOOL(doc, "b", true);
   BSON_APPEND_DATE_TIME(doc, "dt", 5);
   BSON_APPEND_NULL(doc, "n");
   BSON_APPEND_REGEX(doc, "re", "a.b", "i");
   BSON_APPEND_CODE(doc, "code", "f()");
   BSON_APPEND_SYMBOL(doc, "sym", "s");
   BSON_APPEND_INT32(doc, "i", 7);
   BSON_APPEND_TIMESTAMP(doc, "ts", 1, 2);
   BSON_APPEND_INT64(doc, "a_much_longer_key_name", 8);
   BSON_APPEND_DECIMAL128(doc, "dec", &dec);
   BSON_APPEND_MINKEY(doc, "min");
   BSON_APPEND_MAXKEY(doc, "max");
   size_t refused = 0, accepted = 0;
   scan_corruptions(doc, doc, &refused, &accepted);
   assert_true(refused > 20 && accepted > 20);
   bson_destroy(doc);
}

/* Appends an element of `type` under `key`: `big` picks a longer value for
 * the variable-size types (a string, a sub-document, an array, binary, a
 * regex, code), so that two documents with the same keys and types differ
 * in where their elements start. */
static void
append_typed(bson_t *doc, const char *key, bson_type_t type, bool big)
{
   bson_t sub;
   bson_oid_t oid;
   bson_decimal128_t dec = {.high = 0x3040000000000000ull, .low = 5};
   uint8_t bin[5] = {1, 2, 3, 4, 5};
   switch (type) {
   case BSON_TYPE_DOUBLE:
      BSON_APPEND_DOUBLE(doc, key, 2.5);
      break;
   case BSON_TYPE_UTF8:
      BSON_APPEND_UTF8(doc, key, big ? "a longer value" : "v");
      break;
   case BSON_TYPE_DOCUMENT:
      BSON_APPEND_DOCUMENT_BEGIN(doc, key, &sub);
      BSON_APPEND_INT32(&sub, "x", 1);
      if (big) {
         BSON_APPEND_UTF8(&sub, "y", "z");
      }
      bson_append_document_end(doc, &sub);
      break;
   case BSON_TYPE_ARRAY:
      BSON_APPEND_ARRAY_BEGIN(doc, key, &sub);
      if (big) {
         BSON_APPEND_INT32(&sub, "0", 1);
      }
      bson_append_array_end(doc, &sub);
      break;
   case BSON_TYPE_BINARY:
      BSON_APPEND_BINARY(doc, key, BSON_SUBTYPE_BINARY, bin, big ? 5 : 1);
      break;
   case BSON_TYPE_UNDEFINED:
      BSON_APPEND_UNDEFINED(doc, key);
      break;
   case BSON_TYPE_OID:
      bson_oid_init_from_string(&oid, "0123456789abcdef01234567");
      BSON_APPEND_OID(doc, key, &oid);
      break;
   case BSON_TYPE_BOOL:
      BSON_APPEND_BOOL(doc, key, big);
      break;
   case BSON_TYPE_DATE_TIME:
      BSON_APPEND_DATE_TIME(doc, key, 5);
      break;
   case BSON_TYPE_NULL:
      BSON_APPEND_NULL(doc, key);
      break;
   case BSON_TYPE_REGEX:
      BSON_APPEND_REGEX(doc, key, big ? "a.b+" : "a", "i");
      break;
   case BSON_TYPE_CODE:
      BSON_APPEND_CODE(doc, key, big ? "f(1)" : "f");
      break;
   case BSON_TYPE_SYMBOL:
      BSON_APPEND_SYMBOL(doc, key, "s");
      break;
   case BSON_TYPE_INT32:
      BSON_APPEND_INT32(doc, key, 7);
      break;
   case BSON_TYPE_TIMESTAMP:
      BSON_APPEND_TIMESTAMP(doc, key, 1, 2);
      break;
   case BSON_TYPE_INT64:
      BSON_APPEND_INT64(doc, key, 8);
      break;
   case BSON_TYPE_DECIMAL128:
      BSON_APPEND_DECIMAL128(doc, key, &dec);
      break;
   case BSON_TYPE_MINKEY:
      BSON_APPEND_MINKEY(doc, key);
      break;
   default:
      BSON_APPEND_MAXKEY(doc, key);
      break;
   }
}

/* aspen_fields_scan_layout's kept-layout loop (heads compared as one or two
 * words, bounds checked once per run of elements) against libbson's
 * iterator: for every key length 1-17 (heads of 3-19 bytes, across the
 * one-word, two-word and long-key cases) and every BSON type, a layout
 * {K: T, "i": int32, K': T, "s": string, "z": T} (K' the same length as K,
 * another last byte; the last element leaves fewer bytes than a head's
 * word for some types) kept from one document and applied to another with
 * the same keys and other value sizes, to each one-byte corruption of it
 * and to each cut of it (scan_corruptions); and the same documents with
 * the keys' types changed (the same keys: the same id) or a key changed
 * (another id). */
/* aspen_fields_raw_find (cmp_fast's scan without a table) stops where
 * libbson's walk does on a string, code or symbol value whose last byte is
 * not a NUL (and on every other one-byte change of such documents): the
 * key after the value is found only when the walk reaches it too. */
static void
test_raw_find_string_nul(void **state)
{
   (void) state;
   static const uint8_t types[] = {BSON_TYPE_UTF8, BSON_TYPE_CODE,
                                   BSON_TYPE_SYMBOL};
   for (size_t t = 0; t < sizeof types; t++) {
      /* {a: <"xy" of types[t]>, b: 1} */
      uint8_t doc[] = {27, 0, 0, 0, types[t], 'a', 0, 3, 0, 0, 0, 'x', 'y', 0,
                       BSON_TYPE_INT32, 'b', 0, 1, 0, 0, 0, 0};
      doc[0] = sizeof doc;
      for (size_t i = 4; i + 1 < sizeof doc; i++) {
         for (int x = 0; x < 256; x += (i == 13 ? 1 : 37)) {
            uint8_t c[sizeof doc];
            memcpy(c, doc, sizeof doc);
            c[i] = (uint8_t) x;
            bson_t b;
            assert_true(bson_init_static(&b, c, sizeof c));
            bson_iter_t it;
            bool walk = false;
            if (bson_iter_init(&it, &b)) {
               while (bson_iter_next(&it)) {
                  if (strcmp(bson_iter_key(&it), "b") == 0) {
                     walk = true;
                     break;
                  }
               }
            }
            uint32_t off = 0;
            int raw = aspen_fields_raw_find(c, sizeof c, "b", 1, &off);
            /* The callers read the value found by its type (a type 0, the
             * walk's end, has no size). */
            if (raw == 1 && aspen_bsonw_value_size(c[off], c + off + 3,
                                                   sizeof c - off - 3) < 0) {
               raw = -1;
            }
            if ((raw == 1) != walk || (raw == 1 && off != 14)) {
               fail_msg("type %u byte %zu = %d: raw %d at %u, walk %d",
                        types[t], i, x, raw, off, walk);
            }
         }
      }
      doc[13] = 'z';
      uint32_t off = 0;
      assert_int_equal(aspen_fields_raw_find(doc, sizeof doc, "b", 1, &off),
                       -1);
   }
}

static void
test_fields_scan_kept_layouts(void **state)
{
   (void) state;
   static const bson_type_t types[] = {
      BSON_TYPE_DOUBLE,    BSON_TYPE_UTF8,       BSON_TYPE_DOCUMENT,
      BSON_TYPE_ARRAY,     BSON_TYPE_BINARY,     BSON_TYPE_UNDEFINED,
      BSON_TYPE_OID,       BSON_TYPE_BOOL,       BSON_TYPE_DATE_TIME,
      BSON_TYPE_NULL,      BSON_TYPE_REGEX,      BSON_TYPE_CODE,
      BSON_TYPE_SYMBOL,    BSON_TYPE_INT32,      BSON_TYPE_TIMESTAMP,
      BSON_TYPE_INT64,     BSON_TYPE_DECIMAL128, BSON_TYPE_MINKEY,
      BSON_TYPE_MAXKEY,
   };
   const size_t nt = sizeof types / sizeof types[0];
   size_t refused = 0, accepted = 0, same_ids = 0, new_ids = 0;
   for (size_t klen = 1; klen <= 17; klen++) {
      char k1[24], k2[24];
      for (size_t i = 0; i < klen; i++) {
         k1[i] = k2[i] = (char) ('a' + i);
      }
      k2[klen - 1] = 'Z';
      k1[klen] = k2[klen] = '\0';
      for (size_t ti = 0; ti < nt; ti++) {
         bson_type_t ty = types[ti];
         bson_t *docs[4];
         for (int d = 0; d < 4; d++) {
            /* 0, 1: the layout with small and big values; 2: the next
             * type at K'; 3: the key "i" renamed "j". */
            docs[d] = bson_new();
            append_typed(docs[d], k1, ty, d == 1);
            BSON_APPEND_INT32(docs[d], d == 3 ? "j" : "i", 1);
            append_typed(docs[d], k2, d == 2 ? types[(ti + 1) % nt] : ty,
                         d == 1);
            BSON_APPEND_UTF8(docs[d], "s", d == 1 ? "another" : "s");
            append_typed(docs[d], "z", ty, d == 1);
         }
         scan_corruptions(docs[1], docs[0], &refused, &accepted);
         if (klen % 4 == 1) {
            scan_corruptions(docs[0], docs[0], &refused, &accepted);
         }
         /* One layout kept across 0, 1, 2, 3, 0: the id moves exactly when
          * the keys do, the tables are the iterator's. */
         aspen_fields_layout_t lay;
         memset(&lay, 0, sizeof lay);
         uint64_t ids[5];
         static const int order[5] = {0, 1, 2, 3, 0};
         for (int i = 0; i < 5; i++) {
            aspen_fields_t tab, want;
            const bson_t *doc = docs[order[i]];
            assert_true(aspen_fields_scan_layout(&tab, doc, &lay));
            assert_true(iter_table(bson_get_data(doc), doc->len, &want));
            assert_int_equal(tab.n, want.n);
            assert_memory_equal(tab.f, want.f, want.n * sizeof want.f[0]);
            ids[i] = tab.layout;
         }
         assert_true(ids[0] != 0);
         assert_true(ids[1] == ids[0] && ids[2] == ids[0]);
         assert_true(ids[3] != ids[0] && ids[4] != ids[3] &&
                     ids[4] != ids[0]);
         same_ids += 2;
         new_ids += 2;
         for (int d = 0; d < 4; d++) {
            bson_destroy(docs[d]);
         }
      }
   }
   assert_true(refused > 1000 && accepted > 1000 && same_ids && new_ids);

   /* Length words that lie so that the walk lands on a well-formed next
    * element: {K: V, "i": int32} with V a string or a sub-document whose
    * length word is 0-8 and whose value bytes are that many zeros (a
    * string of length 0, a sub-document shorter than its frame), with the
    * layout of {K: "x", "i": 1} (or {K: {}, "i": 1}) kept. */
   for (int sub = 0; sub < 2; sub++) {
      bson_t *keep = bson_new();
      if (sub) {
         bson_t o;
         BSON_APPEND_DOCUMENT_BEGIN(keep, "k", &o);
         bson_append_document_end(keep, &o);
      } else {
         BSON_APPEND_UTF8(keep, "k", "x");
      }
      BSON_APPEND_INT32(keep, "i", 1);
      aspen_fields_layout_t lay;
      aspen_fields_t first;
      memset(&lay, 0, sizeof lay);
      assert_true(aspen_fields_scan_layout(&first, keep, &lay));
      for (uint32_t l = 0; l <= 8; l++) {
         uint8_t b[64] = {0};
         uint32_t n = 4;
         b[n++] = sub ? 0x03 : 0x02;
         b[n++] = 'k';
         b[n++] = 0;
         b[n] = (uint8_t) l;
         n += 4 + (sub ? (l >= 4 ? l - 4 : 0) : l);
         static const uint8_t i_elem[] = {0x10, 'i', 0, 1, 0, 0, 0, 0};
         memcpy(b + n, i_elem, sizeof i_elem);
         n += sizeof i_elem;
         b[0] = (uint8_t) n;
         char what[64];
         snprintf(what, sizeof what, "%s length word %u",
                  sub ? "sub-document" : "string", l);
         uint8_t *exact = malloc(n); /* a read past it is ASan's */
         memcpy(exact, b, n);
         bool ok = scan_same_as_iter(exact, n, bson_get_data(keep), &first,
                                     &lay, what);
         free(exact);
         refused += !ok;
      }
      bson_destroy(keep);
   }
}

static void
test_number_fast_paths(void **state)
{
   (void) state;
   static const char *const vals[] = {
      "0", "-1", "5", "2147483647", "-2147483648",
      "{\"$numberLong\": \"5\"}", "{\"$numberLong\": \"-9223372036854775808\"}",
      "{\"$numberLong\": \"9007199254740993\"}", "0.5", "-0.0", "5.0",
      "{\"$numberDouble\": \"NaN\"}", "{\"$numberDouble\": \"Infinity\"}",
      "{\"$numberDouble\": \"-Infinity\"}", "1e300",
      "{\"$numberDecimal\": \"5\"}", "{\"$date\": {\"$numberLong\": \"5\"}}",
      "{\"$date\": {\"$numberLong\": \"-1\"}}", "\"h\\u00e9\"", "null", "true",
      "{\"k\": 1}"};
   static const char *const ops[] = {"$eq", "$ne", "$gt", "$gte", "$lt",
                                     "$lte"};
   const size_t nv = sizeof vals / sizeof vals[0];
   size_t matched = 0;
   for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++) {
      for (size_t r = 0; r < nv; r++) {
         if (strcmp(vals[r], "{\"k\": 1}") == 0) {
            continue;
         }
         char js[256];
         bson_t *f1, *f2;
         snprintf(js, sizeof js, "{\"a\": {\"%s\": %s}}", ops[o], vals[r]);
         aspen_matcher_t *top = compile_json(js, &f1);
         snprintf(js, sizeof js, "{\"o.a\": {\"%s\": %s}}", ops[o], vals[r]);
         aspen_matcher_t *nested = compile_json(js, &f2);
         for (size_t x = 0; x < nv; x++) {
            /* {a: x}, {a: [x]}, {o: {a: x}}, {o: {a: [x]}} */
            static const char *const pre[4] = {
               "{\"a\": ", "{\"a\": [", "{\"z\": 1, \"o\": {\"a\": ",
               "{\"z\": 1, \"o\": {\"a\": ["};
            static const char *const post[4] = {", \"z\": 1}", "], \"z\": 1}",
                                                "}}", "]}}"};
            bson_t *docs[4];
            for (int k = 0; k < 4; k++) {
               char dj[256];
               bson_error_t berr;
               snprintf(dj, sizeof dj, "%s%s%s", pre[k], vals[x], post[k]);
               docs[k] = bson_new_from_json((const uint8_t *) dj, -1, &berr);
               assert_non_null(docs[k]);
            }
            bool want = match_doc(top, docs[1], false);
            bool want_nested = match_doc(nested, docs[3], false);
            if (match_doc(top, docs[0], true) != want ||
                match_doc(top, docs[0], false) != want ||
                match_doc(nested, docs[2], true) != want_nested ||
                match_doc(nested, docs[2], false) != want_nested ||
                want != want_nested) {
               fail_msg("%s %s on %s: fast path differs", ops[o], vals[r],
                        vals[x]);
            }
            matched += want;
            for (int k = 0; k < 4; k++) {
               bson_destroy(docs[k]);
            }
         }
         aspen_matcher_destroy(top);
         aspen_matcher_destroy(nested);
         bson_destroy(f1);
         bson_destroy(f2);
      }
   }
   assert_true(matched > 100); /* both outcomes occur */
}

/* $expr with an explicit context whose root is some other document: the
 * matcher evaluates against the document it is given. */
static void
test_expr_context(void **state)
{
   (void) state;
   bson_t *filter;
   aspen_matcher_t *m = compile_json("{\"$expr\": {\"$gt\": [\"$a\", \"$b\"]}}",
                                     &filter);
   bson_t *other = BCON_NEW("a", BCON_INT32(0), "b", BCON_INT32(9));
   aspen_expr_ctx_t ctx = {.root = other, .meta = NULL, .now_ms = 0};
   assert_true(match_json(m, "{\"a\": 2, \"b\": 1}", &ctx));
   assert_false(match_json(m, "{\"a\": 1, \"b\": 2}", &ctx));
   assert_true(match_json(m, "{\"a\": 2, \"b\": 1}", NULL));
   bson_destroy(other);
   aspen_matcher_destroy(m);
   bson_destroy(filter);
}

static void
test_error_codes(void **state)
{
   (void) state;
   static const struct {
      const char *filter;
      int32_t code;
   } cases[] = {
      {"{\"a\": {\"$foo\": 1}}", 2},
      {"{\"$foo\": 1}", 2},
      {"{\"$text\": {\"$search\": \"x\"}}", 2},
      {"{\"$jsonSchema\": {\"format\": \"email\"}}", 9},
      {"{\"$jsonSchema\": {\"properties\": 1}}", 14},
      {"{\"$jsonSchema\": 1}", 14},
      {"{\"a\": {\"$mod\": [0, 1]}}", 2},
   };
   for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      bson_error_t berr;
      bson_t *f = bson_new_from_json((const uint8_t *) cases[i].filter, -1,
                                     &berr);
      assert_non_null(f);
      aspen_matcher_t *m = (aspen_matcher_t *) 1;
      aspen_error_t err = {0};
      assert_false(aspen_matcher_new(f, &m, &err));
      assert_null(m);
      if (err.code != cases[i].code) {
         fail_msg("%s: code %d, want %d (%s)", cases[i].filter, err.code,
                  cases[i].code, err.message);
      }
      bson_destroy(f);
   }
}

typedef struct {
   const aspen_matcher_t *m;
   int hits;
} thread_arg_t;

static void *
regex_thread(void *p)
{
   thread_arg_t *arg = p;
   bson_t *yes = BCON_NEW("s", BCON_UTF8("hello world"));
   bson_t *no = BCON_NEW("s", BCON_UTF8("goodbye"));
   for (int i = 0; i < 200; i++) {
      bool matched = false;
      aspen_error_t err;
      ASPEN_ASSERT(aspen_matcher_match(arg->m, i % 2 ? yes : no, NULL,
                                       &matched, &err));
      arg->hits += matched;
   }
   bson_destroy(yes);
   bson_destroy(no);
   return NULL;
}

/* One matcher shared by threads: regex searches use per-thread match data,
 * freed when each thread exits (checked by LeakSanitizer). */
static void
test_concurrent_regex(void **state)
{
   (void) state;
   bson_t *filter;
   aspen_matcher_t *m = compile_json(
      "{\"s\": {\"$regularExpression\": {\"pattern\": \"^hel+o\", "
      "\"options\": \"i\"}}}",
      &filter);
   pthread_t th[4];
   thread_arg_t args[4];
   for (int i = 0; i < 4; i++) {
      args[i] = (thread_arg_t){.m = m, .hits = 0};
      assert_int_equal(pthread_create(&th[i], NULL, regex_thread, &args[i]),
                       0);
   }
   for (int i = 0; i < 4; i++) {
      assert_int_equal(pthread_join(th[i], NULL), 0);
      assert_int_equal(args[i].hits, 100);
   }
   aspen_matcher_destroy(m);
   bson_destroy(filter);
}

/* The filter compiles once and can be evaluated many times; a large $in
 * list takes the sorted path. */
static void
test_large_in(void **state)
{
   (void) state;
   bson_t *filter = bson_new();
   bson_t a, arr;
   bson_append_document_begin(filter, "a", -1, &a);
   bson_append_array_begin(&a, "$in", -1, &arr);
   for (int i = 0; i < 100; i++) {
      char key[16];
      snprintf(key, sizeof key, "%d", i);
      if (i % 3 == 0) {
         bson_append_utf8(&arr, key, -1, key, -1);
      } else {
         bson_append_int64(&arr, key, -1, i * 2);
      }
   }
   bson_append_null(&arr, "100", -1);
   bson_append_array_end(&a, &arr);
   bson_append_document_end(filter, &a);
   aspen_matcher_t *m = NULL;
   aspen_error_t err;
   assert_true(aspen_matcher_new(filter, &m, &err));
   for (int i = 0; i < 100; i++) {
      bson_t *d1 = BCON_NEW("a", BCON_DOUBLE(i * 2.0));
      char s[16];
      snprintf(s, sizeof s, "%d", i);
      bson_t *d2 = BCON_NEW("a", "[", BCON_INT32(-1), BCON_UTF8(s), "]");
      bool m1, m2;
      assert_true(aspen_matcher_match(m, d1, NULL, &m1, &err));
      assert_true(aspen_matcher_match(m, d2, NULL, &m2, &err));
      assert_int_equal(m1, i % 3 != 0);
      assert_int_equal(m2, i % 3 == 0);
      bson_destroy(d1);
      bson_destroy(d2);
   }
   bson_t *missing = BCON_NEW("b", BCON_INT32(1));
   bool mm;
   assert_true(aspen_matcher_match(m, missing, NULL, &mm, &err));
   assert_true(mm); /* null in the list matches a missing field */
   bson_destroy(missing);
   aspen_matcher_destroy(m);
   bson_destroy(filter);
}

/* Builds {"$and": [{"$and": [ ... {"a": 1} ... ]}]} `depth` levels deep. */
static char *
nested_and(int depth)
{
   size_t cap = (size_t) depth * 16 + 32;
   char *json = malloc(cap);
   size_t n = 0;
   for (int i = 0; i < depth; i++) {
      n += (size_t) snprintf(json + n, cap - n, "{\"$and\": [");
   }
   n += (size_t) snprintf(json + n, cap - n, "{\"a\": 1}");
   for (int i = 0; i < depth; i++) {
      n += (size_t) snprintf(json + n, cap - n, "]}");
   }
   return json;
}

/* Builds a $jsonSchema with `depth` nested "properties". */
static char *
nested_schema(int depth)
{
   size_t cap = (size_t) depth * 24 + 64;
   char *json = malloc(cap);
   size_t n = (size_t) snprintf(json, cap, "{\"$jsonSchema\": ");
   for (int i = 0; i < depth; i++) {
      n += (size_t) snprintf(json + n, cap - n, "{\"properties\": {\"a\": ");
   }
   n += (size_t) snprintf(json + n, cap - n, "{}");
   for (int i = 0; i < depth; i++) {
      n += (size_t) snprintf(json + n, cap - n, "}}");
   }
   snprintf(json + n, cap - n, "}");
   return json;
}

static bool
compiles(const char *json, aspen_error_t *err)
{
   bson_error_t berr;
   bson_t *filter = bson_new_from_json((const uint8_t *) json, -1, &berr);
   if (!filter) {
      fail_msg("bad JSON: %s", berr.message);
   }
   aspen_matcher_t *m = NULL;
   bool ok = aspen_matcher_new(filter, &m, err);
   aspen_matcher_destroy(m);
   bson_destroy(filter);
   return ok;
}

/* Nesting is bounded (mongod's query tree depth of 100), so a hostile
 * pipeline cannot exhaust the stack. libbson's JSON reader stops at 100
 * levels, hence the modest depths. */
static void
test_depth_limits(void **state)
{
   (void) state;
   aspen_error_t err = {0};
   char *json = nested_and(40);
   assert_true(compiles(json, &err));
   free(json);
   json = nested_schema(30);
   assert_true(compiles(json, &err));
   free(json);

   /* Deeper than the limit: build BSON directly. */
   bson_t *filter = bson_new();
   bson_t *levels[130];
   bson_t arr[130];
   bson_t docs[130];
   bson_t *cur = filter;
   for (int i = 0; i < 120; i++) {
      bson_append_array_begin(cur, "$and", -1, &arr[i]);
      bson_append_document_begin(&arr[i], "0", -1, &docs[i]);
      levels[i] = cur;
      cur = &docs[i];
   }
   BSON_APPEND_INT32(cur, "a", 1);
   for (int i = 119; i >= 0; i--) {
      bson_append_document_end(&arr[i], &docs[i]);
      bson_append_array_end(levels[i], &arr[i]);
   }
   aspen_matcher_t *m = NULL;
   assert_false(aspen_matcher_new(filter, &m, &err));
   assert_non_null(strstr(err.message, "exceeded maximum query tree depth"));
   assert_null(m);
   bson_destroy(filter);

   filter = bson_new();
   bson_t schema;
   bson_t props[130];
   bson_t sub[130];
   bson_append_document_begin(filter, "$jsonSchema", -1, &schema);
   cur = &schema;
   for (int i = 0; i < 120; i++) {
      bson_append_document_begin(cur, "properties", -1, &props[i]);
      bson_append_document_begin(&props[i], "a", -1, &sub[i]);
      levels[i] = cur;
      cur = &sub[i];
   }
   for (int i = 119; i >= 0; i--) {
      bson_append_document_end(&props[i], &sub[i]);
      bson_append_document_end(levels[i], &props[i]);
   }
   bson_append_document_end(filter, &schema);
   assert_false(aspen_matcher_new(filter, &m, &err));
   assert_non_null(strstr(err.message, "nested more than"));
   assert_null(m);
   bson_destroy(filter);
}

static int
cmp_names(const void *a, const void *b)
{
   return strcmp(*(char *const *) a, *(char *const *) b);
}

int
main(void)
{
   DIR *dir = opendir(MATCH_CASES_DIR);
   if (!dir) {
      fprintf(stderr, "cannot open %s\n", MATCH_CASES_DIR);
      return 1;
   }
   char **paths = NULL;
   size_t n = 0;
   struct dirent *de;
   while ((de = readdir(dir)) != NULL) {
      size_t len = strlen(de->d_name);
      if (len > 5 && strcmp(de->d_name + len - 5, ".json") == 0) {
         paths = realloc(paths, (n + 1) * sizeof *paths);
         size_t size = strlen(MATCH_CASES_DIR) + len + 2;
         paths[n] = malloc(size);
         snprintf(paths[n], size, "%s/%s", MATCH_CASES_DIR, de->d_name);
         n++;
      }
   }
   closedir(dir);
   qsort(paths, n, sizeof *paths, cmp_names);

   static const struct CMUnitTest direct[] = {
      cmocka_unit_test(test_destroy_null),
      cmocka_unit_test(test_expr_context),
      cmocka_unit_test(test_number_fast_paths),
      cmocka_unit_test(test_cmp_fast_same_results),
      cmocka_unit_test(test_layout_memo_same_results),
      cmocka_unit_test(test_plan_same_results),
      cmocka_unit_test(test_plan_corruptions),
      cmocka_unit_test(test_fields_scan_same_table),
      cmocka_unit_test(test_fields_scan_kept_layouts),
      cmocka_unit_test(test_raw_find_string_nul),
      cmocka_unit_test(test_key_eq),
      cmocka_unit_test(test_error_codes),
      cmocka_unit_test(test_concurrent_regex),
      cmocka_unit_test(test_large_in),
      cmocka_unit_test(test_depth_limits),
   };
   size_t n_direct = sizeof direct / sizeof direct[0];
   struct CMUnitTest *tests = calloc(n + n_direct, sizeof *tests);
   for (size_t i = 0; i < n_direct; i++) {
      tests[i] = direct[i];
   }
   for (size_t i = 0; i < n; i++) {
      tests[n_direct + i] = (struct CMUnitTest){
         .name = strrchr(paths[i], '/') + 1,
         .test_func = test_case_file,
         .initial_state = paths[i],
      };
   }
   int rc = _cmocka_run_group_tests("match", tests, n + n_direct, NULL, NULL);
   printf("test_match: %d data-driven cases in %zu files\n", cases_run, n);
   for (size_t i = 0; i < n; i++) {
      free(paths[i]);
   }
   free(paths);
   free(tests);
   return n == 0 ? 1 : rc;
}
