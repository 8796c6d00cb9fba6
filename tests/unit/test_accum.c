/*
 * test_accum.c - cmocka unit tests for engine/lang/accum.c, the $group
 * accumulators windows use.
 *
 * Most tests are data: every .json file in tests/cases/accum is an array of
 * cases, each one cmocka test:
 *   {"name": ..., "accumulator": {"$avg": "$x"}, "docs": [...], "result": v}
 *   {"name": ..., "accumulator": ..., "parseError": "<substring>"}
 *   {"name": ..., "accumulator": ..., "docs": [...], "error": "<substring>"}
 * with an optional "code" (the expected error code). The accumulator is
 * parsed from the "accumulator" field (so parse errors name the field
 * 'accumulator'), fed the documents in order, and its result compared with
 * "result" through canonical extended JSON: same BSON types (int vs long vs
 * double vs decimal), same field and element order, same double bits. An
 * "error" case passes when one of the documents is refused with it.
 *
 * The C tests at the end cover what the data cannot: state sizes, that a
 * refused document leaves the state as it was, that $first stops
 * evaluating, destroy(NULL), and many states built and freed under
 * LeakSanitizer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lang/accum.h"

#ifndef ASPEN_CASES_DIR
#error "ASPEN_CASES_DIR must be defined"
#endif

/* ======================================================================== */
/* Loading the cases                                                         */
/* ======================================================================== */

typedef struct {
   bson_t *spec; /* the case object, owned */
   char *label;  /* "file.json: name" */
} accum_case_t;

static accum_case_t *cases;
static size_t n_cases;

/* The whole file as a NUL-terminated string wrapped as {"c": <text>}, so
 * libbson can read a top-level array; NULL when unreadable. */
static char *
slurp_wrapped(const char *path)
{
   FILE *f = fopen(path, "rb");
   if (!f) {
      return NULL;
   }
   static const char head[] = "{\"c\": ";
   size_t cap = 4096, len = sizeof head - 1;
   char *text = malloc(cap);
   memcpy(text, head, len);
   size_t got;
   while ((got = fread(text + len, 1, cap - len - 2, f)) > 0) {
      len += got;
      if (cap - len < 4096) {
         cap *= 2;
         text = realloc(text, cap);
      }
   }
   fclose(f);
   text[len++] = '}';
   text[len] = '\0';
   return text;
}

static void
add_case(const char *file, const uint8_t *data, uint32_t len)
{
   cases = realloc(cases, (n_cases + 1) * sizeof *cases);
   accum_case_t *c = &cases[n_cases++];
   c->spec = bson_new_from_data(data, len);
   bson_iter_t it;
   const char *name = "(unnamed)";
   if (bson_iter_init_find(&it, c->spec, "name") && BSON_ITER_HOLDS_UTF8(&it)) {
      name = bson_iter_utf8(&it, NULL);
   }
   const char *base = strrchr(file, '/');
   c->label = bson_strdup_printf("%s: %s", base ? base + 1 : file, name);
}

/* Loads every case file (glob sorts them); false when one is malformed. */
static bool
load_cases(void)
{
   glob_t g;
   if (glob(ASPEN_CASES_DIR "/accum/*.json", 0, NULL, &g) != 0) {
      fprintf(stderr, "no case files in %s/accum\n", ASPEN_CASES_DIR);
      return false;
   }
   bool ok = true;
   for (size_t k = 0; k < g.gl_pathc; k++) {
      const char *path = g.gl_pathv[k];
      char *text = slurp_wrapped(path);
      bson_error_t berr;
      bson_t *all =
         text ? bson_new_from_json((const uint8_t *) text, -1, &berr) : NULL;
      free(text);
      bson_iter_t it, arr;
      if (!all || !bson_iter_init_find(&it, all, "c") ||
          !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &arr)) {
         fprintf(stderr, "%s: not a JSON array of cases: %s\n", path,
                 all ? "wrong shape" : berr.message);
         bson_destroy(all);
         ok = false;
         continue;
      }
      while (bson_iter_next(&arr)) {
         if (BSON_ITER_HOLDS_DOCUMENT(&arr)) {
            uint32_t len;
            const uint8_t *data;
            bson_iter_document(&arr, &len, &data);
            add_case(path, data, len);
         }
      }
      bson_destroy(all);
   }
   globfree(&g);
   return ok;
}

static void
free_cases(void)
{
   for (size_t i = 0; i < n_cases; i++) {
      bson_destroy(cases[i].spec);
      bson_free(cases[i].label);
   }
   free(cases);
}

/* ======================================================================== */
/* Running one case                                                          */
/* ======================================================================== */

static const char *
utf8_field(const bson_t *spec, const char *key)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, spec, key) && BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return NULL;
}

/* Canonical extended JSON of {"r": <value>}: equal strings mean equal
 * types, order and bits. */
static char *
canonical(const bson_value_t *v)
{
   bson_t tmp = BSON_INITIALIZER;
   bson_append_value(&tmp, "r", 1, v);
   char *json = bson_as_canonical_extended_json(&tmp, NULL);
   bson_destroy(&tmp);
   return json;
}

/* Checks a failure against the case's expectation; the message and code
 * must match when given. */
static void
check_error(const accum_case_t *c, const char *what, const char *want,
            const aspen_error_t *err)
{
   bson_iter_t it;
   if (!strstr(err->message, want)) {
      fail_msg("%s: %s \"%s\" does not contain \"%s\"", c->label, what,
               err->message, want);
   }
   if (bson_iter_init_find(&it, c->spec, "code") &&
       BSON_ITER_HOLDS_INT32(&it) && bson_iter_int32(&it) != err->code) {
      fail_msg("%s: %s code %d, want %d", c->label, what, err->code,
               bson_iter_int32(&it));
   }
}

static void
run_case(void **state)
{
   const accum_case_t *c = *state;
   bson_iter_t acc_it, it;
   if (!bson_iter_init_find(&acc_it, c->spec, "accumulator")) {
      fail_msg("%s: no \"accumulator\"", c->label);
   }
   const char *want_parse_err = utf8_field(c->spec, "parseError");
   const char *want_err = utf8_field(c->spec, "error");

   aspen_accum_t *acc = (aspen_accum_t *) 1;
   aspen_error_t err;
   aspen_error_clear(&err);
   bool parsed = aspen_accum_parse(&acc_it, &acc, &err);
   if (want_parse_err) {
      if (parsed) {
         aspen_accum_destroy(acc);
         fail_msg("%s: expected parse error \"%s\", parse succeeded",
                  c->label, want_parse_err);
      }
      assert_null(acc);
      check_error(c, "parse error", want_parse_err, &err);
      return;
   }
   if (!parsed) {
      fail_msg("%s: unexpected parse error %d: %s", c->label, err.code,
               err.message);
   }

   aspen_accum_state_t *st = aspen_accum_state_new(acc);
   bool refused = false;
   if (bson_iter_init_find(&it, c->spec, "docs") &&
       BSON_ITER_HOLDS_ARRAY(&it)) {
      bson_iter_t docs;
      bson_iter_recurse(&it, &docs);
      while (!refused && bson_iter_next(&docs)) {
         uint32_t len;
         const uint8_t *data;
         bson_t doc;
         assert_true(BSON_ITER_HOLDS_DOCUMENT(&docs));
         bson_iter_document(&docs, &len, &data);
         assert_true(bson_init_static(&doc, data, len));
         aspen_expr_ctx_t ctx = {.root = &doc};
         refused = !aspen_accum_add(acc, st, &ctx, &err);
      }
   }

   char *want_json = NULL, *got_json = NULL, *again_json = NULL;
   bson_t got = BSON_INITIALIZER, again = BSON_INITIALIZER;
   if (!want_err && !refused) {
      aspen_accum_result(acc, st, &got, "r");
      aspen_accum_result(acc, st, &again, "r");
      got_json = bson_as_canonical_extended_json(&got, NULL);
      again_json = bson_as_canonical_extended_json(&again, NULL);
      if (bson_iter_init_find(&it, c->spec, "result")) {
         want_json = canonical(bson_iter_value(&it));
      }
   }
   size_t size = aspen_accum_state_size(acc, st);
   aspen_accum_state_destroy(acc, st);
   aspen_accum_destroy(acc);
   bson_destroy(&got);
   bson_destroy(&again);

   /* Copy what the messages need, so every path frees first. */
   static char msg[8192];
   msg[0] = '\0';
   if (want_err && !refused) {
      snprintf(msg, sizeof msg, "%s: expected a document to be refused with "
               "\"%s\"", c->label, want_err);
   } else if (!want_err && refused) {
      snprintf(msg, sizeof msg, "%s: unexpected error %d: %s", c->label,
               err.code, err.message);
   } else if (!want_err && !want_json) {
      snprintf(msg, sizeof msg, "%s: case has no result/error/parseError",
               c->label);
   } else if (!want_err && strcmp(want_json, got_json) != 0) {
      snprintf(msg, sizeof msg, "%s:\n   want %s\n   got  %s", c->label,
               want_json, got_json);
   } else if (!want_err && strcmp(got_json, again_json) != 0) {
      snprintf(msg, sizeof msg, "%s: a second result differs: %s", c->label,
               again_json);
   } else if (size == 0) {
      snprintf(msg, sizeof msg, "%s: state size 0", c->label);
   }
   bson_free(want_json);
   bson_free(got_json);
   bson_free(again_json);
   if (msg[0]) {
      fail_msg("%s", msg);
   }
   if (want_err) {
      check_error(c, "error", want_err, &err);
   }
}

/* ======================================================================== */
/* API tests                                                                 */
/* ======================================================================== */

/* Parses {"f": <json>} (single quotes allowed) into an accumulator; the
 * returned holder must outlive it. */
static aspen_accum_t *
parse_acc(const char *json, bson_t **holder)
{
   char *text = bson_strdup_printf("{\"f\": %s}", json);
   for (char *p = text; *p; p++) {
      if (*p == '\'') {
         *p = '"';
      }
   }
   bson_error_t berr;
   *holder = bson_new_from_json((const uint8_t *) text, -1, &berr);
   bson_free(text);
   assert_non_null(*holder);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, *holder, "f"));
   aspen_accum_t *acc = NULL;
   aspen_error_t err;
   if (!aspen_accum_parse(&it, &acc, &err)) {
      fail_msg("parse %s: %s", json, err.message);
   }
   return acc;
}

/* Feeds {x: <i>} or {s: "<i as text>"} documents. */
static bool
feed_int(const aspen_accum_t *acc, aspen_accum_state_t *st, int32_t i,
         aspen_error_t *err)
{
   bson_t doc = BSON_INITIALIZER;
   char s[32];
   snprintf(s, sizeof s, "value-%d", i);
   BSON_APPEND_INT32(&doc, "x", i);
   BSON_APPEND_UTF8(&doc, "s", s);
   aspen_expr_ctx_t ctx = {.root = &doc};
   bool ok = aspen_accum_add(acc, st, &ctx, err);
   bson_destroy(&doc);
   return ok;
}

static void
test_names(void **state)
{
   (void) state;
   static const char *const specs[][2] = {
      {"{'$sum': '$x'}", "$sum"},
      {"{'$count': {}}", "$count"},
      {"{'$topN': {'n': 2, 'output': '$x', 'sortBy': {'x': 1}}}", "$topN"},
      {"{'$median': {'input': '$x', 'method': 'approximate'}}", "$median"},
   };
   for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
      bson_t *holder;
      aspen_accum_t *acc = parse_acc(specs[i][0], &holder);
      assert_string_equal(aspen_accum_name(acc), specs[i][1]);
      aspen_accum_destroy(acc);
      bson_destroy(holder);
   }
   aspen_accum_destroy(NULL);
}

/* The $group field name itself is checked: no dots, no leading $. */
static void
test_field_names(void **state)
{
   (void) state;
   static const char *const docs[][2] = {
      {"{\"a.b\": {\"$sum\": 1}}", "The field name 'a.b' cannot contain '.'"},
      {"{\"$a\": {\"$sum\": 1}}",
       "The field name '$a' cannot be an operator name"},
   };
   for (size_t i = 0; i < 2; i++) {
      bson_error_t berr;
      bson_t *doc = bson_new_from_json((const uint8_t *) docs[i][0], -1, &berr);
      assert_non_null(doc);
      bson_iter_t it;
      assert_true(bson_iter_init(&it, doc) && bson_iter_next(&it));
      aspen_accum_t *acc = NULL;
      aspen_error_t err;
      assert_false(aspen_accum_parse(&it, &acc, &err));
      assert_null(acc);
      assert_string_equal(err.message, docs[i][1]);
      bson_destroy(doc);
   }
}

/* Sizes follow what a state keeps: a $push grows with its values, a $minN
 * stays at n values, a $sum never grows. */
static void
test_state_sizes(void **state)
{
   (void) state;
   bson_t *h1, *h2, *h3;
   aspen_accum_t *push = parse_acc("{'$push': '$s'}", &h1);
   aspen_accum_t *min_n = parse_acc("{'$minN': {'n': 3, 'input': '$x'}}", &h2);
   aspen_accum_t *sum = parse_acc("{'$sum': '$x'}", &h3);
   aspen_accum_state_t *sp = aspen_accum_state_new(push);
   aspen_accum_state_t *sm = aspen_accum_state_new(min_n);
   aspen_accum_state_t *ss = aspen_accum_state_new(sum);
   aspen_accum_state_destroy(push, NULL);
   aspen_error_t err;
   size_t push0 = aspen_accum_state_size(push, sp);
   size_t sum0 = aspen_accum_state_size(sum, ss);
   size_t min3 = 0;
   for (int32_t i = 0; i < 1000; i++) {
      assert_true(feed_int(push, sp, i, &err));
      assert_true(feed_int(min_n, sm, 1000 - i, &err));
      assert_true(feed_int(sum, ss, i, &err));
      if (i == 2) {
         min3 = aspen_accum_state_size(min_n, sm);
      }
   }
   assert_true(push0 > 0);
   /* 1000 strings of 9+ bytes plus their value slots. */
   assert_true(aspen_accum_state_size(push, sp) > push0 + 1000 * 10);
   assert_int_equal(aspen_accum_state_size(min_n, sm), min3);
   assert_int_equal(aspen_accum_state_size(sum, ss), sum0);
   aspen_accum_state_destroy(push, sp);
   aspen_accum_state_destroy(min_n, sm);
   aspen_accum_state_destroy(sum, ss);
   aspen_accum_destroy(push);
   aspen_accum_destroy(min_n);
   aspen_accum_destroy(sum);
   bson_destroy(h1);
   bson_destroy(h2);
   bson_destroy(h3);
}

/* A refused document leaves the state as it was: the next result is as if
 * the document never came. */
static void
test_refused_document(void **state)
{
   (void) state;
   bson_t *holder;
   aspen_accum_t *acc =
      parse_acc("{'$sum': {'$divide': [10, '$x']}}", &holder);
   aspen_accum_state_t *st = aspen_accum_state_new(acc);
   aspen_error_t err;
   assert_true(feed_int(acc, st, 2, &err));
   assert_false(feed_int(acc, st, 0, &err));
   assert_non_null(strstr(err.message, "divide by zero"));
   assert_true(feed_int(acc, st, 5, &err));
   bson_t out = BSON_INITIALIZER;
   aspen_accum_result(acc, st, &out, "r");
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, &out, "r"));
   assert_true(BSON_ITER_HOLDS_DOUBLE(&it));
   assert_true(bson_iter_double(&it) == 7.0);
   bson_destroy(&out);
   aspen_accum_state_destroy(acc, st);
   aspen_accum_destroy(acc);
   bson_destroy(holder);
}

/* Once $first (or a full $firstN) has its value, later documents are not
 * evaluated, so they cannot fail. */
static void
test_first_stops_evaluating(void **state)
{
   (void) state;
   static const char *const specs[] = {
      "{'$first': {'$divide': [10, '$x']}}",
      "{'$firstN': {'n': 1, 'input': {'$divide': [10, '$x']}}}",
   };
   for (size_t i = 0; i < 2; i++) {
      bson_t *holder;
      aspen_accum_t *acc = parse_acc(specs[i], &holder);
      aspen_accum_state_t *st = aspen_accum_state_new(acc);
      aspen_error_t err;
      assert_true(feed_int(acc, st, 2, &err));
      assert_true(feed_int(acc, st, 0, &err));
      aspen_accum_state_destroy(acc, st);
      aspen_accum_destroy(acc);
      bson_destroy(holder);
   }
}

/* Every operator with values that own heap storage, many states, results
 * read twice: LeakSanitizer checks that destroy frees it all, and ASan that
 * no state points into a freed input document. */
static void
test_many_states(void **state)
{
   (void) state;
   static const char *const specs[] = {
      "{'$sum': '$x'}",
      "{'$avg': '$x'}",
      "{'$min': '$s'}",
      "{'$max': '$s'}",
      "{'$first': '$s'}",
      "{'$last': '$s'}",
      "{'$push': {'s': '$s', 'x': '$x'}}",
      "{'$addToSet': '$s'}",
      "{'$count': {}}",
      "{'$stdDevPop': '$x'}",
      "{'$stdDevSamp': '$x'}",
      "{'$median': {'input': '$x', 'method': 'approximate'}}",
      ("{'$percentile': {'input': '$x', 'p': [0.1, 0.9], 'method': "
       "'approximate'}}"),
      "{'$top': {'output': '$s', 'sortBy': {'x': -1}}}",
      "{'$bottom': {'output': '$s', 'sortBy': {'s': 1}}}",
      "{'$topN': {'n': 3, 'output': ['$s'], 'sortBy': {'s': 1}}}",
      "{'$bottomN': {'n': 3, 'output': '$s', 'sortBy': {'x': 1, 's': -1}}}",
      "{'$firstN': {'n': 3, 'input': '$s'}}",
      "{'$lastN': {'n': 3, 'input': '$s'}}",
      "{'$maxN': {'n': 3, 'input': '$s'}}",
      "{'$minN': {'n': 3, 'input': '$s'}}",
      "{'$mergeObjects': {'$arrayToObject': [[['$s', '$x']]]}}",
   };
   for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
      bson_t *holder;
      aspen_accum_t *acc = parse_acc(specs[i], &holder);
      aspen_accum_state_t *sts[16];
      for (int32_t g = 0; g < 16; g++) {
         sts[g] = aspen_accum_state_new(acc);
      }
      aspen_error_t err;
      for (int32_t d = 0; d < 200; d++) {
         if (!feed_int(acc, sts[d % 16], (d * 7919) % 101, &err)) {
            fail_msg("%s: %s", specs[i], err.message);
         }
      }
      for (int32_t g = 0; g < 16; g++) {
         bson_t out = BSON_INITIALIZER;
         aspen_accum_result(acc, sts[g], &out, "a");
         aspen_accum_result(acc, sts[g], &out, "b");
         assert_int_equal(bson_count_keys(&out), 2);
         bson_destroy(&out);
         aspen_accum_state_destroy(acc, sts[g]);
      }
      aspen_accum_destroy(acc);
      bson_destroy(holder);
   }
}

/* One group: the API tests, then a test per data case. */
int
main(void)
{
   static const struct CMUnitTest api_tests[] = {
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_field_names),
      cmocka_unit_test(test_state_sizes),
      cmocka_unit_test(test_refused_document),
      cmocka_unit_test(test_first_stops_evaluating),
      cmocka_unit_test(test_many_states),
   };
   const size_t n_api = sizeof api_tests / sizeof api_tests[0];
   bool loaded = load_cases();
   struct CMUnitTest *all = calloc(n_api + n_cases, sizeof *all);
   size_t n = 0;
   for (size_t i = 0; i < n_api; i++) {
      all[n++] = api_tests[i];
   }
   for (size_t i = 0; i < n_cases; i++) {
      all[n++] = (struct CMUnitTest){.name = cases[i].label,
                                     .test_func = run_case,
                                     .initial_state = &cases[i]};
   }
   int rc = loaded ? _cmocka_run_group_tests("accum", all, n, NULL, NULL) : 1;
   free(all);
   free_cases();
   return rc;
}
