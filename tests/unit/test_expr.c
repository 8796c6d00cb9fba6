/*
 * test_expr.c - cmocka unit tests for engine/lang/ (expr*.c, value.c,
 * vars.c).
 *
 * Most tests are data: every .json file in tests/cases/expr is an array of
 * cases, each one cmocka test:
 *   {"name": ..., "doc": {...}, "expr": <expression>, "result": <value>}
 *   {"name": ..., "doc": {...}, "expr": <expression>, "error": "<substring>"}
 *   {"name": ..., "expr": <expression>, "parseError": "<substring>"}
 * with optional "meta" (the $meta "stream" document), "now" (a date, what
 * $currentDate returns), "vars" (an object of caller variables bound with
 * aspen_expr_eval_with_vars), "code" (the expected error code) and
 * "missing": true (the result must be MISSING, e.g. $$REMOVE), and "js": true
 * (a $function case: skipped when aspen is built without JavaScript).
 * Results are compared strictly: same BSON types (int vs long vs double),
 * same field order, decimals by their text.
 *
 * The C tests at the end cover the API around the data: borrowing of plain
 * field paths, constants, parse_object with dotted keys, variables from the
 * caller, the value helpers, the BSON type rank, variable substitution
 * (lang/vars.c), and the operator tables with their argument rows and
 * message templates (expr_int.h, expr_args.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lang/expr.h"
#include "lang/expr_args.h"
#include "lang/vars.h"

#ifndef ASPEN_CASES_DIR
#error "ASPEN_CASES_DIR must be defined"
#endif

/* ======================================================================== */
/* Strict comparison                                                         */
/* ======================================================================== */

static bool strict_equal(const bson_value_t *a, const bson_value_t *b);

static bool
strict_equal_docs(const uint8_t *a, uint32_t alen, const uint8_t *b,
                  uint32_t blen)
{
   bson_iter_t ia, ib;
   if (!bson_iter_init_from_data(&ia, a, alen) ||
       !bson_iter_init_from_data(&ib, b, blen)) {
      return false;
   }
   for (;;) {
      bool na = bson_iter_next(&ia), nb = bson_iter_next(&ib);
      if (!na || !nb) {
         return na == nb;
      }
      if (strcmp(bson_iter_key(&ia), bson_iter_key(&ib)) != 0 ||
          !strict_equal(bson_iter_value(&ia), bson_iter_value(&ib))) {
         return false;
      }
   }
}

static bool
strict_equal(const bson_value_t *a, const bson_value_t *b)
{
   if (a->value_type != b->value_type) {
      return false;
   }
   switch (a->value_type) {
   case BSON_TYPE_DOUBLE: {
      double x = a->value.v_double, y = b->value.v_double;
      if (isnan(x) || isnan(y)) {
         return isnan(x) && isnan(y);
      }
      return x == y && signbit(x) == signbit(y);
   }
   case BSON_TYPE_DECIMAL128: {
      char sa[BSON_DECIMAL128_STRING], sb[BSON_DECIMAL128_STRING];
      bson_decimal128_to_string(&a->value.v_decimal128, sa);
      bson_decimal128_to_string(&b->value.v_decimal128, sb);
      return strcmp(sa, sb) == 0;
   }
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      return strict_equal_docs(a->value.v_doc.data, a->value.v_doc.data_len,
                               b->value.v_doc.data, b->value.v_doc.data_len);
   default: {
      /* Everything else: same bytes once appended. */
      bson_t da = BSON_INITIALIZER, db = BSON_INITIALIZER;
      bson_append_value(&da, "v", 1, a);
      bson_append_value(&db, "v", 1, b);
      bool eq = da.len == db.len &&
                memcmp(bson_get_data(&da), bson_get_data(&db), da.len) == 0;
      bson_destroy(&da);
      bson_destroy(&db);
      return eq;
   }
   }
}

static char *
value_json(const bson_value_t *v)
{
   if (v->value_type == BSON_TYPE_EOD) {
      return bson_strdup("<missing>");
   }
   bson_t tmp = BSON_INITIALIZER;
   bson_append_value(&tmp, "v", 1, v);
   char *json = bson_as_canonical_extended_json(&tmp, NULL);
   bson_destroy(&tmp);
   return json;
}

/* ======================================================================== */
/* Data-driven cases                                                         */
/* ======================================================================== */

typedef struct {
   char *file;
   bson_t *spec; /* the case object, owned */
   char *name;
} expr_case_t;

static expr_case_t *cases;
static size_t n_cases, cap_cases;

static char *
read_file(const char *path, size_t *len)
{
   FILE *f = fopen(path, "rb");
   if (!f) {
      return NULL;
   }
   fseek(f, 0, SEEK_END);
   long n = ftell(f);
   fseek(f, 0, SEEK_SET);
   char *buf = malloc((size_t) n + 1);
   if (fread(buf, 1, (size_t) n, f) != (size_t) n) {
      free(buf);
      fclose(f);
      return NULL;
   }
   buf[n] = '\0';
   fclose(f);
   *len = (size_t) n;
   return buf;
}

static int
cmp_names(const void *a, const void *b)
{
   return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Loads every case; a malformed file is a test failure reported up front. */
static bool
load_cases(void)
{
   const char *dir = ASPEN_CASES_DIR "/expr";
   DIR *d = opendir(dir);
   if (!d) {
      fprintf(stderr, "cannot open %s\n", dir);
      return false;
   }
   char **names = NULL;
   size_t nn = 0;
   struct dirent *de;
   while ((de = readdir(d))) {
      size_t l = strlen(de->d_name);
      if (l > 5 && strcmp(de->d_name + l - 5, ".json") == 0) {
         names = realloc(names, (nn + 1) * sizeof *names);
         names[nn++] = strdup(de->d_name);
      }
   }
   closedir(d);
   qsort(names, nn, sizeof *names, cmp_names);
   bool ok = true;
   for (size_t k = 0; k < nn; k++) {
      char path[1024];
      snprintf(path, sizeof path, "%s/%s", dir, names[k]);
      size_t len;
      char *text = read_file(path, &len);
      if (!text) {
         fprintf(stderr, "cannot read %s\n", path);
         ok = false;
         continue;
      }
      /* Wrap the array so libbson can parse it as a document. */
      size_t wlen = len + 16;
      char *wrapped = malloc(wlen);
      snprintf(wrapped, wlen, "{\"c\": %s}", text);
      bson_error_t berr;
      bson_t *all = bson_new_from_json((const uint8_t *) wrapped, -1, &berr);
      free(wrapped);
      free(text);
      if (!all) {
         fprintf(stderr, "%s: invalid JSON: %s\n", path, berr.message);
         ok = false;
         continue;
      }
      bson_iter_t it, arr;
      if (bson_iter_init_find(&it, all, "c") && BSON_ITER_HOLDS_ARRAY(&it) &&
          bson_iter_recurse(&it, &arr)) {
         while (bson_iter_next(&arr)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&arr)) {
               continue;
            }
            uint32_t dlen;
            const uint8_t *data;
            bson_iter_document(&arr, &dlen, &data);
            if (n_cases == cap_cases) {
               cap_cases = cap_cases ? cap_cases * 2 : 256;
               cases = realloc(cases, cap_cases * sizeof *cases);
            }
            expr_case_t *c = &cases[n_cases++];
            c->file = strdup(names[k]);
            c->spec = bson_new_from_data(data, dlen);
            bson_iter_t ni;
            char nbuf[600];
            if (bson_iter_init_find(&ni, c->spec, "name") &&
                BSON_ITER_HOLDS_UTF8(&ni)) {
               snprintf(nbuf, sizeof nbuf, "%s: %s", names[k],
                        bson_iter_utf8(&ni, NULL));
            } else {
               snprintf(nbuf, sizeof nbuf, "%s: #%zu", names[k], n_cases);
            }
            c->name = strdup(nbuf);
         }
      } else {
         fprintf(stderr, "%s: expected a JSON array of cases\n", path);
         ok = false;
      }
      bson_destroy(all);
   }
   for (size_t k = 0; k < nn; k++) {
      free(names[k]);
   }
   free(names);
   return ok;
}

static void
free_cases(void)
{
   for (size_t i = 0; i < n_cases; i++) {
      free(cases[i].file);
      free(cases[i].name);
      bson_destroy(cases[i].spec);
   }
   free(cases);
}

static void
run_case(void **state)
{
   const expr_case_t *c = *state;
   bson_iter_t it, expr_it;
   bson_t doc = BSON_INITIALIZER, meta;
   bool have_meta = false;
   aspen_expr_ctx_t ctx = {.root = &doc, .meta = NULL, .now_ms = 0};
   const char *names[32];
   aspen_value_t values[32];
   size_t n_vars = 0;
   const char *var_decl[33];

   /* "js": true: a $function case, which needs the JavaScript engine. */
   if (bson_iter_init_find(&it, c->spec, "js") && BSON_ITER_HOLDS_BOOL(&it) &&
       bson_iter_bool(&it) && !aspen_expr_function_available()) {
      skip();
   }
   if (bson_iter_init_find(&it, c->spec, "doc") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&it, &len, &data);
      bson_destroy(&doc);
      bson_init_static(&doc, data, len);
   }
   if (bson_iter_init_find(&it, c->spec, "meta") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&it, &len, &data);
      bson_init_static(&meta, data, len);
      ctx.meta = &meta;
      have_meta = true;
   }
   (void) have_meta;
   if (bson_iter_init_find(&it, c->spec, "now") &&
       BSON_ITER_HOLDS_DATE_TIME(&it)) {
      ctx.now_ms = bson_iter_date_time(&it);
   }
   if (bson_iter_init_find(&it, c->spec, "vars") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t vi;
      bson_iter_recurse(&it, &vi);
      while (bson_iter_next(&vi) && n_vars < 32) {
         names[n_vars] = bson_iter_key(&vi);
         values[n_vars] = aspen_value_borrow(&vi);
         var_decl[n_vars] = names[n_vars];
         n_vars++;
      }
   }
   var_decl[n_vars] = NULL;
   if (!bson_iter_init_find(&expr_it, c->spec, "expr")) {
      fail_msg("%s: no \"expr\"", c->name);
   }

   const char *want_parse_err = NULL, *want_err = NULL;
   int32_t want_code = -1;
   if (bson_iter_init_find(&it, c->spec, "parseError") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      want_parse_err = bson_iter_utf8(&it, NULL);
   }
   if (bson_iter_init_find(&it, c->spec, "error") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      want_err = bson_iter_utf8(&it, NULL);
   }
   if (bson_iter_init_find(&it, c->spec, "code") &&
       BSON_ITER_HOLDS_INT32(&it)) {
      want_code = bson_iter_int32(&it);
   }

   aspen_expr_t *e = NULL;
   aspen_error_t err;
   aspen_error_clear(&err);
   bool parsed = aspen_expr_parse(&expr_it, n_vars ? var_decl : NULL, &e, &err);
   if (want_parse_err) {
      if (parsed) {
         aspen_expr_destroy(e);
         fail_msg("%s: expected parse error containing \"%s\", parse succeeded",
                  c->name, want_parse_err);
      }
      if (!strstr(err.message, want_parse_err)) {
         fail_msg("%s: parse error \"%s\" does not contain \"%s\"", c->name,
                  err.message, want_parse_err);
      }
      if (want_code >= 0 && err.code != want_code) {
         fail_msg("%s: parse error code %d, want %d", c->name, err.code,
                  want_code);
      }
      return;
   }
   if (!parsed) {
      fail_msg("%s: unexpected parse error %d: %s", c->name, err.code,
               err.message);
   }
   aspen_value_t out;
   bool ok = n_vars ? aspen_expr_eval_with_vars(e, &ctx, names, values, n_vars,
                                                &out, &err)
                    : aspen_expr_eval(e, &ctx, &out, &err);
   if (want_err) {
      if (ok) {
         static char msg[4096];
         char *got = value_json(&out.v);
         snprintf(msg, sizeof msg, "%s: expected error containing \"%s\", got %s",
                  c->name, want_err, got);
         bson_free(got);
         aspen_value_destroy(&out);
         aspen_expr_destroy(e);
         fail_msg("%s", msg);
      }
      aspen_expr_destroy(e);
      if (!aspen_value_is_missing(&out)) {
         fail_msg("%s: failed evaluation left a value", c->name);
      }
      if (!strstr(err.message, want_err)) {
         fail_msg("%s: error \"%s\" does not contain \"%s\"", c->name,
                  err.message, want_err);
      }
      if (want_code >= 0 && err.code != want_code) {
         fail_msg("%s: error code %d, want %d (%s)", c->name, err.code,
                  want_code, err.message);
      }
      return;
   }
   if (!ok) {
      aspen_expr_destroy(e);
      fail_msg("%s: unexpected error %d: %s", c->name, err.code, err.message);
   }
   bool want_missing = bson_iter_init_find(&it, c->spec, "missing") &&
                       BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
   if (want_missing) {
      bool missing = aspen_value_is_missing(&out);
      static char msg[4096];
      char *got = value_json(&out.v);
      snprintf(msg, sizeof msg, "%s: expected MISSING, got %s", c->name, got);
      bson_free(got);
      aspen_value_destroy(&out);
      aspen_expr_destroy(e);
      if (!missing) {
         fail_msg("%s", msg);
      }
      return;
   }
   if (!bson_iter_init_find(&it, c->spec, "result")) {
      aspen_value_destroy(&out);
      aspen_expr_destroy(e);
      fail_msg("%s: case has no result/error/parseError", c->name);
   }
   const bson_value_t *want = bson_iter_value(&it);
   if (!strict_equal(want, &out.v)) {
      static char msg[4096];
      char *w = value_json(want), *g = value_json(&out.v);
      snprintf(msg, sizeof msg, "%s:\n   want %s\n   got  %s", c->name, w, g);
      bson_free(w);
      bson_free(g);
      aspen_value_destroy(&out);
      aspen_expr_destroy(e);
      fail_msg("%s", msg);
   }
   aspen_value_destroy(&out);
   aspen_expr_destroy(e);
}

/* ======================================================================== */
/* API tests                                                                 */
/* ======================================================================== */

static bson_t *
json(const char *s)
{
   bson_error_t berr;
   char *dq = strdup(s);
   for (char *p = dq; *p; p++) {
      if (*p == '\'') {
         *p = '"';
      }
   }
   bson_t *b = bson_new_from_json((const uint8_t *) dq, -1, &berr);
   free(dq);
   if (!b) {
      fail_msg("bad JSON %s: %s", s, berr.message);
   }
   return b;
}

static aspen_expr_t *
compile(const bson_t *spec, const char *const *vars)
{
   bson_iter_t it;
   aspen_expr_t *e = NULL;
   aspen_error_t err;
   assert_true(bson_iter_init_find(&it, spec, "e"));
   if (!aspen_expr_parse(&it, vars, &e, &err)) {
      fail_msg("parse: %s", err.message);
   }
   return e;
}

static void
test_path_borrows(void **state)
{
   (void) state;
   bson_t *doc = json("{'a': {'b': 'hello'}, 'n': 5}");
   bson_t *spec = json("{'e': '$a.b'}");
   aspen_expr_t *e = compile(spec, NULL);
   aspen_expr_ctx_t ctx = {.root = doc};
   aspen_value_t v;
   aspen_error_t err;
   assert_true(aspen_expr_eval(e, &ctx, &v, &err));
   assert_int_equal(v.v.value_type, BSON_TYPE_UTF8);
   assert_false(v.owned);
   /* The string points into the document itself: no copy was made. */
   const uint8_t *base = bson_get_data(doc);
   assert_true((const uint8_t *) v.v.value.v_utf8.str > base &&
               (const uint8_t *) v.v.value.v_utf8.str < base + doc->len);
   aspen_value_destroy(&v);
   aspen_expr_destroy(e);
   bson_destroy(spec);
   bson_destroy(doc);
}

/* The scratch (aspen_expr_ctx_t.scratch) where $concat and $toString of
 * an integer leave short strings: the same results, errors and messages as
 * without one, over many inputs, with a scratch that fits, one too small,
 * and one filled by earlier evaluations; and a short result is really
 * left in the scratch (no heap string). */
static void
scratch_doc(bson_t *doc, int i)
{
   bson_decimal128_t dec;
   bson_init(doc);
   BSON_APPEND_UTF8(doc, "s", i % 3 ? "device_7" : "h\xc3\xa9llo \xe2\x98\x83");
   switch (i) {
   case 0: BSON_APPEND_INT32(doc, "x", 0); break;
   case 1: BSON_APPEND_INT32(doc, "x", -1); break;
   case 2: BSON_APPEND_INT32(doc, "x", INT32_MIN); break;
   case 3: BSON_APPEND_INT32(doc, "x", INT32_MAX); break;
   case 4: BSON_APPEND_INT64(doc, "x", INT64_MIN); break;
   case 5: BSON_APPEND_INT64(doc, "x", INT64_MAX); break;
   case 6: BSON_APPEND_INT64(doc, "x", 1234567890123LL); break;
   case 7: BSON_APPEND_DOUBLE(doc, "x", -0.0); break;
   case 8: BSON_APPEND_DOUBLE(doc, "x", NAN); break;
   case 9: BSON_APPEND_DOUBLE(doc, "x", -INFINITY); break;
   case 10: BSON_APPEND_DOUBLE(doc, "x", 1e300); break;
   case 11: BSON_APPEND_DOUBLE(doc, "x", 0.1); break;
   case 12:
      bson_decimal128_from_string("-1.50E+3", &dec);
      BSON_APPEND_DECIMAL128(doc, "x", &dec);
      break;
   case 13:
      bson_decimal128_from_string("NaN", &dec);
      BSON_APPEND_DECIMAL128(doc, "x", &dec);
      break;
   case 14: BSON_APPEND_UTF8(doc, "x", "\xe2\x82\xac 5"); break;
   case 15: BSON_APPEND_NULL(doc, "x"); break;
   case 16: break; /* missing */
   case 17: BSON_APPEND_BOOL(doc, "x", true); break;
   case 18: BSON_APPEND_DATE_TIME(doc, "x", -62135596800001LL); break;
   case 19: {
      bson_t sub;
      BSON_APPEND_DOCUMENT_BEGIN(doc, "x", &sub);
      BSON_APPEND_INT32(&sub, "a", 1);
      bson_append_document_end(doc, &sub);
      break;
   }
   case 20: {
      char big[301];
      memset(big, 'b', 300);
      big[300] = '\0';
      BSON_APPEND_UTF8(doc, "x", big); /* past the $concat stack buffer */
      break;
   }
   default: {
      char mid[201];
      memset(mid, 'm', 200);
      mid[200] = '\0';
      BSON_APPEND_UTF8(doc, "x", mid); /* fits it, fills the scratch */
      break;
   }
   }
}

/* Evaluates e on doc and writes {ok, code, message, v} into *res. */
static void
scratch_ctx_eval(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
                 bson_t *res)
{
   aspen_expr_scratch_t *sc = ctx->scratch;
   aspen_value_t v;
   aspen_error_t err;
   memset(&err, 0, sizeof err);
   bool ok = aspen_expr_eval(e, ctx, &v, &err);
   bson_init(res);
   BSON_APPEND_BOOL(res, "ok", ok);
   if (ok) {
      aspen_value_append(res, "v", 1, &v);
      if (v.scratch) {
         /* Owned as a heap string would be, but in the scratch. */
         const uint8_t *p = (const uint8_t *) v.v.value.v_utf8.str;
         assert_true(v.owned);
         assert_int_equal(v.v.value_type, BSON_TYPE_UTF8);
         assert_non_null(sc);
         assert_true(p >= (const uint8_t *) sc->buf &&
                     p + v.v.value.v_utf8.len < (const uint8_t *) sc->buf +
                                                   sc->cap);
      }
      aspen_value_destroy(&v);
   } else {
      BSON_APPEND_INT32(res, "code", err.code);
      BSON_APPEND_UTF8(res, "message", err.message);
   }
}

static void
scratch_eval(const aspen_expr_t *e, const bson_t *doc,
             aspen_expr_scratch_t *sc, bson_t *res)
{
   aspen_expr_ctx_t ctx = {.root = doc, .scratch = sc};
   scratch_ctx_eval(e, &ctx, res);
}

static void
test_scratch_same_results(void **state)
{
   (void) state;
   static const char *const exprs[] = {
      "{'e': {'$toString': '$x'}}",
      "{'e': {'$concat': ['$s', '-', {'$toString': '$x'}]}}",
      "{'e': {'$concat': ['$s', '$x']}}",
      "{'e': {'$concat': ['$x', '$x', '$x']}}",
      "{'e': {'$concat': []}}",
      "{'e': {'$concat': ['']}}",
      "{'e': {'$concat': ['$s', null, {'$toString': '$x'}]}}",
      "{'e': {'$concat': ['$s', '$nope']}}",
      "{'e': {'$concat': ['$s', 5]}}",
      "{'e': {'$concat': [{'$concat': ['$s', '$s']}, {'$toString': '$x'}]}}",
      "{'e': {'$toUpper': {'$concat': ['$s', {'$toString': '$x'}]}}}",
      "{'e': {'$strLenCP': {'$concat': ['$s', {'$toString': '$x'}]}}}",
      "{'e': {'$let': {'vars': {'a': {'$toString': '$x'}}, 'in': "
      "{'$concat': ['$$a', '/', '$$a']}}}}",
      "{'e': {'$toString': {'$toString': '$x'}}}",
      "{'e': {'$toInt': {'$toString': '$x'}}}",
      "{'e': {'$toLong': '$x'}}",
      "{'e': [{'$toString': '$x'}, {'$concat': ['$s', '$s']}]}",
      "{'e': {'k': {'$concat': ['$s', {'$toString': '$x'}]}}}",
      "{'e': {'$reduce': {'input': {'$range': [0, 40]}, 'initialValue': '', "
      "'in': {'$concat': ['$$value', {'$toString': '$$this'}, '$s']}}}}",
      "{'e': {'$eq': [{'$toString': '$x'}, {'$concat': [{'$toString': "
      "'$x'}]}]}}",
      "{'e': {'$ifNull': [{'$concat': ['$s', '$x']}, {'$toString': '$x'}]}}",
      "{'e': {'$cond': [{'$isNumber': '$x'}, {'$toString': '$x'}, "
      "{'$concat': ['$s']}]}}",
      "{'e': {'$max': [{'$toString': '$x'}, {'$concat': ['$s', '-']}]}}",
      "{'e': {'$arrayElemAt': [[{'$toString': '$x'}, '$s'], 0]}}",
      "{'e': {'$substrBytes': [{'$concat': ['$s', {'$toString': '$x'}]}, "
      "1, 4]}}",
      /* Arguments released on an error or a null after owned ones. */
      "{'e': {'$concat': [{'$toUpper': '$s'}, {'$toString': '$x'}, 5]}}",
      "{'e': {'$concat': [{'$toUpper': '$s'}, {'$toString': '$x'}, null]}}",
      /* More arguments than $concat evaluates before writing. */
      "{'e': {'$concat': ['$s', '1', '2', '3', '4', '5', '6', '7', '8', '9', "
      "'a', 'b', 'c', 'd', 'e', 'f', {'$toString': '$x'}]}}",
   };
   char big[512], tiny[8];
   for (size_t k = 0; k < sizeof exprs / sizeof exprs[0]; k++) {
      bson_t *spec = json(exprs[k]);
      aspen_expr_t *e = compile(spec, NULL);
      aspen_expr_scratch_t filled = {.buf = big, .cap = sizeof big};
      for (int i = 0; i < 22; i++) {
         bson_t doc, want, got;
         scratch_doc(&doc, i);
         scratch_eval(e, &doc, NULL, &want);
         aspen_expr_scratch_t fits = {.buf = big, .cap = sizeof big};
         aspen_expr_scratch_t small = {.buf = tiny, .cap = sizeof tiny};
         aspen_expr_scratch_t *scs[] = {&fits, &small, &filled};
         for (size_t j = 0; j < 3; j++) {
            scratch_eval(e, &doc, scs[j], &got);
            if (!bson_equal(&want, &got)) {
               char *a = bson_as_relaxed_extended_json(&want, NULL);
               char *b = bson_as_relaxed_extended_json(&got, NULL);
               fail_msg("%s on doc %d, scratch %zu: %s vs %s", exprs[k], i,
                        j, a, b);
            }
            bson_destroy(&got);
         }
         bson_destroy(&want);
         bson_destroy(&doc);
      }
      assert_true(filled.used <= filled.cap);
      aspen_expr_destroy(e);
      bson_destroy(spec);
   }

   /* A short result is left in the scratch, not on the heap. */
   bson_t *spec = json("{'e': {'$concat': ['$s', '-', {'$toString': '$x'}]}}");
   aspen_expr_t *e = compile(spec, NULL);
   bson_t doc;
   scratch_doc(&doc, 4);
   aspen_expr_scratch_t sc = {.buf = big, .cap = sizeof big};
   aspen_expr_ctx_t ctx = {.root = &doc, .scratch = &sc};
   aspen_value_t v;
   aspen_error_t err;
   assert_true(aspen_expr_eval(e, &ctx, &v, &err));
   assert_true(v.owned && v.scratch);
   assert_ptr_equal(v.v.value.v_utf8.str + v.v.value.v_utf8.len + 1,
                    big + sc.used);
   assert_string_equal(v.v.value.v_utf8.str,
                       "device_7--9223372036854775808");
   aspen_value_destroy(&v);
   bson_destroy(&doc);
   aspen_expr_destroy(e);
   bson_destroy(spec);
}

/* The int32 fast paths of $cmp/$eq/.../$lte and $divide give what the
 * general path gives the same numbers as longs (which it takes): values,
 * errors and messages; and, for other operands (doubles incl. -0.0/NaN/inf,
 * decimals, strings, null, missing), what aspen_value_compare says. */
static void
num_pair_doc(bson_t *doc, int32_t x, int32_t y, bool as_long)
{
   bson_init(doc);
   if (as_long) {
      BSON_APPEND_INT64(doc, "x", x);
      BSON_APPEND_INT64(doc, "y", y);
   } else {
      BSON_APPEND_INT32(doc, "x", x);
      BSON_APPEND_INT32(doc, "y", y);
   }
}

static void
test_int_fast_paths(void **state)
{
   (void) state;
   static const char *const ops[] = {"$cmp", "$eq",  "$ne",    "$gt",
                                     "$gte", "$lt",  "$lte",   "$divide"};
   static const int32_t nums[] = {0, 1, -1, 2, 3, 7, -7, 1000, 20, 21, 19,
                                  INT32_MAX, INT32_MIN, INT32_MAX - 1,
                                  INT32_MIN + 1, 16777217, -16777217};
   const size_t nn = sizeof nums / sizeof nums[0];
   for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
      char js[96];
      snprintf(js, sizeof js, "{'e': {'%s': ['$x', '$y']}}", ops[k]);
      bson_t *spec = json(js);
      aspen_expr_t *e = compile(spec, NULL);
      for (size_t i = 0; i < nn; i++) {
         for (size_t j = 0; j < nn; j++) {
            bson_t d32, d64, want, got;
            num_pair_doc(&d32, nums[i], nums[j], false);
            num_pair_doc(&d64, nums[i], nums[j], true);
            scratch_eval(e, &d64, NULL, &want);
            scratch_eval(e, &d32, NULL, &got);
            if (!bson_equal(&want, &got)) {
               char *a = bson_as_relaxed_extended_json(&want, NULL);
               char *b = bson_as_relaxed_extended_json(&got, NULL);
               fail_msg("%s(%d, %d): %s vs %s", ops[k], nums[i], nums[j], a,
                        b);
            }
            bson_destroy(&want);
            bson_destroy(&got);
            bson_destroy(&d32);
            bson_destroy(&d64);
         }
      }
      aspen_expr_destroy(e);
      bson_destroy(spec);
   }

   /* Mixed and non-int operands take the general path, as before. */
   static const char *const others[] = {
      "{'x': 20, 'y': 20.0}",
      "{'x': -0.0, 'y': 0}",
      "{'x': {'$numberDouble': 'NaN'}, 'y': 1}",
      "{'x': 1, 'y': {'$numberDouble': 'NaN'}}",
      "{'x': {'$numberDouble': '-Infinity'}, 'y': -2147483648}",
      "{'x': 1e300, 'y': 2147483647}",
      "{'x': 3, 'y': {'$numberDecimal': '3.0'}}",
      "{'x': {'$numberDecimal': '-1.5'}, 'y': 2}",
      "{'x': 'h\u00e9', 'y': 5}",
      "{'x': null, 'y': 5}",
      "{'y': 5}",
      "{'x': 9007199254740993, 'y': 9007199254740992.0}",
   };
   for (size_t k = 0; k < 7; k++) {
      char js[96];
      snprintf(js, sizeof js, "{'e': {'%s': ['$x', '$y']}}", ops[k]);
      bson_t *spec = json(js);
      aspen_expr_t *e = compile(spec, NULL);
      for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
         bson_t *doc = json(others[i]);
         aspen_value_t x = aspen_expr_get_path(doc, "x");
         aspen_value_t y = aspen_expr_get_path(doc, "y");
         int c = aspen__value_cmp(&x, &y, true);
         bool want[] = {false, c == 0, c != 0, c > 0, c >= 0, c < 0, c <= 0};
         aspen_expr_ctx_t ctx = {.root = doc};
         aspen_value_t v;
         aspen_error_t err;
         assert_true(aspen_expr_eval(e, &ctx, &v, &err));
         if (k == 0) {
            assert_int_equal(v.v.value_type, BSON_TYPE_INT32);
            assert_int_equal(v.v.value.v_int32, c < 0 ? -1 : c > 0 ? 1 : 0);
         } else {
            assert_int_equal(v.v.value_type, BSON_TYPE_BOOL);
            assert_int_equal(v.v.value.v_bool, want[k]);
         }
         aspen_value_destroy(&v);
         bson_destroy(doc);
      }
      aspen_expr_destroy(e);
      bson_destroy(spec);
   }
}

/* The leaf evals ($cmp/$eq/.../$lte, $divide, $concat with $toString over
 * constants and resolved paths: expr_int.h, aspen__leaf_get) give what the
 * general evaluation gives - values, errors with codes and messages - for
 * every BSON type in each operand position, with paths resolved through a
 * slot table (the fast path) or not (its fallback), and scratches with
 * room, too small or none. */
enum { LEAF_KINDS = 38 };

static void
leaf_value(bson_t *doc, const char *key, int k)
{
   bson_decimal128_t dec;
   bson_oid_t oid;
   bson_t sub;
   char big[601];
   static const uint8_t bin[3] = {1, 2, 3};
   switch (k) {
   case 0: BSON_APPEND_INT32(doc, key, 0); break;
   case 1: BSON_APPEND_INT32(doc, key, -1); break;
   case 2: BSON_APPEND_INT32(doc, key, 7); break;
   case 3: BSON_APPEND_INT32(doc, key, INT32_MIN); break;
   case 4: BSON_APPEND_INT32(doc, key, INT32_MAX); break;
   case 5: BSON_APPEND_INT32(doc, key, 20); break;
   case 6: BSON_APPEND_INT64(doc, key, INT64_MIN); break;
   case 7: BSON_APPEND_INT64(doc, key, INT64_MAX); break;
   case 8: BSON_APPEND_INT64(doc, key, 0); break;
   case 9: BSON_APPEND_INT64(doc, key, 20); break;
   case 10: BSON_APPEND_DOUBLE(doc, key, -0.0); break;
   case 11: BSON_APPEND_DOUBLE(doc, key, 0.0); break;
   case 12: BSON_APPEND_DOUBLE(doc, key, NAN); break;
   case 13: BSON_APPEND_DOUBLE(doc, key, -INFINITY); break;
   case 14: BSON_APPEND_DOUBLE(doc, key, 1e300); break;
   case 15: BSON_APPEND_DOUBLE(doc, key, 20.0); break;
   case 16: BSON_APPEND_DOUBLE(doc, key, 4e-320); break; /* subnormal */
   case 17:
      bson_decimal128_from_string("-1.50E+3", &dec);
      BSON_APPEND_DECIMAL128(doc, key, &dec);
      break;
   case 18:
      bson_decimal128_from_string("0", &dec);
      BSON_APPEND_DECIMAL128(doc, key, &dec);
      break;
   case 19:
      bson_decimal128_from_string("NaN", &dec);
      BSON_APPEND_DECIMAL128(doc, key, &dec);
      break;
   case 20: BSON_APPEND_UTF8(doc, key, ""); break;
   case 21: BSON_APPEND_UTF8(doc, key, "h\xc3\xa9-7"); break;
   case 22: BSON_APPEND_UTF8(doc, key, "0123456789abcdefXYZ"); break;
   case 23:
      memset(big, 'b', 600); /* longer than the scratches */
      big[600] = '\0';
      BSON_APPEND_UTF8(doc, key, big);
      break;
   case 24: BSON_APPEND_NULL(doc, key); break;
   case 25: break; /* missing */
   case 26: BSON_APPEND_BOOL(doc, key, true); break;
   case 27: BSON_APPEND_BOOL(doc, key, false); break;
   case 28: BSON_APPEND_DATE_TIME(doc, key, -62135596800001LL); break;
   case 29:
      BSON_APPEND_DOCUMENT_BEGIN(doc, key, &sub);
      BSON_APPEND_INT32(&sub, "a", 20);
      bson_append_document_end(doc, &sub);
      break;
   case 30:
      BSON_APPEND_ARRAY_BEGIN(doc, key, &sub);
      BSON_APPEND_INT32(&sub, "0", 20);
      BSON_APPEND_UTF8(&sub, "1", "x");
      bson_append_array_end(doc, &sub);
      break;
   case 31:
      bson_oid_init_from_string(&oid, "0123456789abcdef01234567");
      BSON_APPEND_OID(doc, key, &oid);
      break;
   case 32:
      BSON_APPEND_BINARY(doc, key, BSON_SUBTYPE_BINARY, bin, 3);
      break;
   case 33: BSON_APPEND_REGEX(doc, key, "a.c", "i"); break;
   case 34: BSON_APPEND_TIMESTAMP(doc, key, 5, 7); break;
   case 35: BSON_APPEND_MINKEY(doc, key); break;
   case 36: BSON_APPEND_MAXKEY(doc, key); break;
   default: BSON_APPEND_UNDEFINED(doc, key); break;
   }
}

static const char *const leaf_exprs[] = {
   "{'e': {'$OP': ['$x', '$y']}}",
   "{'e': {'$OP': ['$x', 20]}}",
   "{'e': {'$OP': [20.0, '$y']}}",
   "{'e': {'$OP': ['$x', '$x']}}",
   "{'e': {'$OP': ['$x.a', '$y']}}",
   "{'e': {'$OP': ['$nope', '$y']}}",
   "{'e': {'$OP': ['$x', null]}}",
   "{'e': {'$OP': ['$x', {'$numberDecimal': '2'}]}}",
   "{'e': {'$OP': [{'$add': ['$x', 1]}, '$y']}}",
   "{'e': {'$OP': ['$$ROOT.x', '$$CURRENT.y']}}",
};

static const char *const leaf_ops[] = {"cmp", "eq",  "ne",  "gt",
                                       "gte", "lt",  "lte", "divide"};

static const char *const leaf_more[] = {
   "{'e': {'$divide': ['$x', 0]}}",
   "{'e': {'$divide': ['$x', -0.0]}}",
   "{'e': {'$divide': ['$x', 1000]}}",
   "{'e': {'$divide': [1, '$y']}}",
   "{'e': {'$concat': ['$x', '-', {'$toString': '$y'}]}}",
   "{'e': {'$concat': ['$s', '$x']}}",
   "{'e': {'$concat': [{'$toString': '$x'}, {'$toString': '$y'}]}}",
   "{'e': {'$concat': ['$x', '$x', '$x']}}",
   "{'e': {'$concat': ['$s', '$s', '$s', {'$toString': '$x'}]}}",
   "{'e': {'$concat': ['$x']}}",
   "{'e': {'$concat': []}}",
   "{'e': {'$concat': ['$x', null]}}",
   "{'e': {'$concat': ['$x', '$nope']}}",
   "{'e': {'$concat': ['$x', {'$toString': 5}]}}",
   "{'e': {'$concat': ['$x', {'$toString': '$x.a'}]}}",
   "{'e': {'$concat': ['$x', {'$toString': {'$add': ['$y', 1]}}]}}",
   "{'e': {'$concat': ['$x', {'$toLower': '$y'}]}}",
   "{'e': {'$concat': ['$s', '1', '2', '3', '4', '5', '6', '7', '8', '9', "
   "'a', 'b', 'c', 'd', 'e', '$x', {'$toString': '$y'}]}}",
   "{'e': {'$concat': ['$s', '1', '2', '3', '4', '5', '6', '7', '8', '9', "
   "'a', 'b', 'c', 'd', 'e', '$x', {'$toString': '$y'}, 'f']}}",
   "{'e': {'$cond': [{'$gt': ['$x', '$y']}, {'$concat': ['$s', {'$toString': "
   "'$y'}]}, {'$divide': ['$y', '$x']}]}}",
   "{'e': {'$map': {'input': {'$range': [0, 3]}, 'in': {'$concat': ['$s', "
   "{'$toString': '$x'}, {'$toString': '$$this'}]}}}}",
   "{'e': {'$map': {'input': [1, 2], 'as': 'x', 'in': {'$gt': ['$$x', "
   "'$y']}}}}",
   "{'e': [{'$concat': ['$s', '-']}, {'$concat': ['$s', {'$toString': "
   "'$y'}]}, {'$lte': ['$x', 1]}]}",
};

/* `js` ({'e': expr}) compiled without the leaf evals (e[0]) and with
 * them (e[1]), each with a slot table of its paths. */
static bson_t *
leaf_pair_compile(const char *js, aspen_expr_t **e, aspen_expr_paths_t **p)
{
   bson_t *spec = json(js);
   for (int fast = 0; fast < 2; fast++) {
      aspen_expr_leaves_set_enabled(fast == 1);
      e[fast] = compile(spec, NULL);
      p[fast] = aspen_expr_paths_new();
      aspen_expr_paths_add(p[fast], e[fast]);
   }
   aspen_expr_leaves_set_enabled(true);
   return spec;
}

static void
leaf_pair_destroy(bson_t *spec, aspen_expr_t **e, aspen_expr_paths_t **p)
{
   for (int fast = 0; fast < 2; fast++) {
      aspen_expr_paths_destroy(p[fast]);
      aspen_expr_destroy(e[fast]);
   }
   bson_destroy(spec);
}

static void
leaf_case(const char *js, bson_t *const *docs, size_t n_docs)
{
   aspen_expr_t *e[2];
   aspen_expr_paths_t *p[2];
   bson_t *spec = leaf_pair_compile(js, e, p);
   char big[512], tiny[8];
   for (size_t d = 0; d < n_docs; d++) {
      bson_t want, got;
      aspen_expr_paths_resolve(p[0], docs[d], NULL);
      aspen_expr_paths_resolve(p[1], docs[d], NULL);
      for (int k = 0; k < 3; k++) {
         aspen_expr_scratch_t sc = {.buf = k == 1 ? tiny : big,
                                    .cap = k == 1 ? sizeof tiny : sizeof big};
         aspen_expr_scratch_t *scp = k == 2 ? NULL : &sc;
         aspen_expr_ctx_t ctx = {.root = docs[d], .scratch = scp,
                                 .paths = p[0]};
         scratch_ctx_eval(e[0], &ctx, &want);
         for (int with_table = 0; with_table < 2; with_table++) {
            sc.used = 0;
            ctx.paths = with_table ? p[1] : NULL;
            scratch_ctx_eval(e[1], &ctx, &got);
            if (!bson_equal(&want, &got)) {
               char *a = bson_as_relaxed_extended_json(&want, NULL);
               char *b = bson_as_relaxed_extended_json(&got, NULL);
               char *dj = bson_as_relaxed_extended_json(docs[d], NULL);
               fail_msg("%s on %s (scratch %d, table %d): %s vs %s", js, dj,
                        k, with_table, a, b);
            }
            bson_destroy(&got);
         }
         bson_destroy(&want);
      }
   }
   leaf_pair_destroy(spec, e, p);
}

/* Documents {s, x, y} with x and y every pair of leaf_value kinds, s one
 * of `n_s` strings (the first two: ASCII and multi-byte UTF-8, the third
 * with an embedded NUL). */
static bson_t **
leaf_docs(int n_s, size_t *n)
{
   bson_t **docs = calloc(LEAF_KINDS * LEAF_KINDS, sizeof *docs);
   *n = 0;
   for (int i = 0; i < LEAF_KINDS; i++) {
      for (int j = 0; j < LEAF_KINDS; j++) {
         bson_t *d = docs[(*n)++] = bson_new();
         switch ((i + j) % n_s) {
         case 0: BSON_APPEND_UTF8(d, "s", "h\xc3\xa9"); break;
         case 1: BSON_APPEND_UTF8(d, "s", "device_7"); break;
         default: bson_append_utf8(d, "s", 1, "a\0b", 3); break;
         }
         leaf_value(d, "x", i);
         leaf_value(d, "y", j);
      }
   }
   return docs;
}

static void
docs_destroy(bson_t **docs, size_t n)
{
   for (size_t i = 0; i < n; i++) {
      bson_destroy(docs[i]);
   }
   free(docs);
}

/* Runs `one` for every leaf_exprs entry with every leaf_ops operator, then
 * every leaf_more entry. */
static void
leaf_all_cases(void (*one)(const char *js, bson_t *const *docs, size_t n),
               bson_t *const *docs, size_t n)
{
   for (size_t k = 0; k < sizeof leaf_exprs / sizeof leaf_exprs[0]; k++) {
      for (size_t o = 0; o < sizeof leaf_ops / sizeof leaf_ops[0]; o++) {
         char js[160], *at;
         snprintf(js, sizeof js, "%s", leaf_exprs[k]);
         at = strstr(js, "OP");
         char rest[160];
         snprintf(rest, sizeof rest, "%s", at + 2);
         snprintf(at, sizeof js - (size_t) (at - js), "%s%s", leaf_ops[o],
                  rest);
         one(js, docs, n);
      }
   }
   for (size_t k = 0; k < sizeof leaf_more / sizeof leaf_more[0]; k++) {
      one(leaf_more[k], docs, n);
   }
}

static void
test_leaves_same_results(void **state)
{
   (void) state;
   size_t n;
   bson_t **docs = leaf_docs(2, &n);
   leaf_all_cases(leaf_case, docs, n);
   docs_destroy(docs, n);
}

/* The leaf evals count the node evaluations they skip, so an interrupt
 * (checked every 1024 of them) stops an evaluation at the same point as
 * the general path does: a $map over leaf operators, interrupted, fails
 * exactly when the general one fails, for every length around the first
 * checks. */
static void
test_leaves_count_steps(void **state)
{
   (void) state;
   bson_t *doc = json("{'s': 'dev', 'x': 5, 'y': 7}");
   static const char *const bodies[] = {
      "{'$gt': ['$x', '$y']}",
      "{'$divide': ['$x', 2]}",
      "{'$concat': ['$s', {'$toString': '$y'}, '-']}",
   };
   atomic_bool stop = true;
   char big[512];
   for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
      for (int len = 150; len <= 700; len++) {
         char js[256];
         snprintf(js, sizeof js,
                  "{'e': {'$map': {'input': {'$range': [0, %d]}, 'in': %s}}}",
                  len, bodies[b]);
         bson_t *spec = json(js);
         bson_t res[2];
         for (int fast = 0; fast < 2; fast++) {
            aspen_expr_leaves_set_enabled(fast == 1);
            aspen_expr_t *e = compile(spec, NULL);
            aspen_expr_paths_t *p = aspen_expr_paths_new();
            aspen_expr_paths_add(p, e);
            aspen_expr_paths_resolve(p, doc, NULL);
            aspen_expr_scratch_t sc = {.buf = big, .cap = sizeof big};
            aspen_expr_ctx_t ctx = {.root = doc, .scratch = &sc, .paths = p};
            aspen_expr_set_interrupt(&stop);
            scratch_ctx_eval(e, &ctx, &res[fast]);
            aspen_expr_set_interrupt(NULL);
            aspen_expr_paths_destroy(p);
            aspen_expr_destroy(e);
         }
         aspen_expr_leaves_set_enabled(true);
         if (!bson_equal(&res[0], &res[1])) {
            fail_msg("%s: the leaf evals stop elsewhere", js);
         }
         bson_destroy(&res[0]);
         bson_destroy(&res[1]);
         bson_destroy(spec);
      }
   }
   bson_destroy(doc);
}

/* ---- aspen_expr_eval_write: written straight vs evaluated then written */

/* One way of putting `e` under `key` into a fresh document: 0 - the
 * general path, aspen_expr_eval then aspen_bsonw_value (what $addFields
 * did); 1 - aspen_expr_eval_write. res: {ok, out: <the bytes>} or {ok,
 * code, message}. Checks that eval_write leaves the scratch as it was. */
static void
write_one(const aspen_expr_t *e, int how, const aspen_expr_ctx_t *ctx,
          const char *key, bson_t *res)
{
   aspen_bsonw_t w;
   aspen_bsonw_init(&w);
   aspen_bsonw_reset(&w);
   aspen_error_t err;
   memset(&err, 0, sizeof err);
   size_t used = ctx->scratch ? ctx->scratch->used : 0;
   bool ok;
   if (how == 0) {
      aspen_value_t v;
      ok = aspen_expr_eval(e, ctx, &v, &err);
      if (ok) {
         aspen_bsonw_value(&w, key, strlen(key), &v.v);
         aspen_value_destroy(&v);
      }
      if (ctx->scratch) {
         ctx->scratch->used = used;
      }
   } else {
      size_t before = w.len;
      ok = aspen_expr_eval_write(e, ctx, &w, key, strlen(key), &err);
      if (!ok) {
         assert_int_equal(w.len, before); /* nothing written */
      }
      if (ctx->scratch) {
         assert_int_equal(ctx->scratch->used, used);
      }
   }
   bson_init(res);
   BSON_APPEND_BOOL(res, "ok", ok);
   if (ok) {
      bson_t out;
      assert_true(aspen_bsonw_finish(&w, &out));
      BSON_APPEND_BINARY(res, "out", BSON_SUBTYPE_BINARY, bson_get_data(&out),
                         out.len);
   } else {
      BSON_APPEND_INT32(res, "code", err.code);
      BSON_APPEND_UTF8(res, "message", err.message);
   }
   aspen_bsonw_cleanup(&w);
}

/* `js` ({'e': expr}) compiled with the leaf evals and without, written
 * with the specialised writes and without, under a short and a long key (past
 * the writer's inline 16 bytes) for each document, through a resolved
 * slot table or none, with a scratch with room, a tiny one or none: the
 * same bytes or the same error each way. */
static void
write_case(const char *js, bson_t *const *docs, size_t n_docs,
           const atomic_bool *stop)
{
   static const char *const keys[] = {
      "e", "a_key_longer_than_sixteen_bytes_for_the_slow_path"};
   aspen_expr_t *e[2];
   aspen_expr_paths_t *p[2];
   bson_t *spec = leaf_pair_compile(js, e, p);
   char big[512], tiny[8];
   for (size_t d = 0; d < n_docs; d++) {
      aspen_expr_paths_resolve(p[0], docs[d], NULL);
      aspen_expr_paths_resolve(p[1], docs[d], NULL);
      for (int k = 0; k < 3; k++) {
         aspen_expr_scratch_t sc = {.buf = k == 1 ? tiny : big,
                                    .cap = k == 1 ? sizeof tiny : sizeof big,
                                    .used = k == 1 ? 0 : 3};
         aspen_expr_ctx_t ctx = {.root = docs[d],
                                 .scratch = k == 2 ? NULL : &sc};
         for (int with_table = 0; with_table < 2; with_table++) {
            for (size_t kk = 0; kk < 2; kk++) {
               bson_t want, got;
               aspen_expr_set_interrupt(stop);
               ctx.paths = with_table ? p[0] : NULL;
               write_one(e[0], 0, &ctx, keys[kk], &want);
               for (int fast = 0; fast < 3; fast++) {
                  /* The general write (the general nodes, and the leaf
                   * nodes with the writes off), the specialised one. */
                  const aspen_expr_t *x = e[fast != 0];
                  aspen_expr_write_set_enabled(fast == 2);
                  ctx.paths = with_table ? p[fast != 0] : NULL;
                  write_one(x, 1, &ctx, keys[kk], &got);
                  aspen_expr_write_set_enabled(true);
                  if (!bson_equal(&want, &got)) {
                     char *a = bson_as_relaxed_extended_json(&want, NULL);
                     char *b = bson_as_relaxed_extended_json(&got, NULL);
                     char *dj = bson_as_relaxed_extended_json(docs[d], NULL);
                     fail_msg("%s on %s (scratch %d, table %d, key %zu, "
                              "fast %d): %.300s vs %.300s",
                              js, dj, k, with_table, kk, fast, a, b);
                  }
                  bson_destroy(&got);
               }
               aspen_expr_set_interrupt(NULL);
               bson_destroy(&want);
            }
         }
      }
   }
   leaf_pair_destroy(spec, e, p);
}

static const char *const write_more[] = {
   "{'e': 5}",
   "{'e': 'const'}",
   "{'e': null}",
   "{'e': '$x'}",
   "{'e': '$x.a'}",
   "{'e': '$nope'}",
   "{'e': {'$literal': [1, 'a']}}",
   "{'e': {'$divide': [6, 4]}}",
   "{'e': {'$concat': ['a', 'b']}}",
   "{'e': {'$toString': '$x'}}",
   "{'e': {'$toString': ['$y']}}",
   "{'e': {'$toString': '$s'}}",
   "{'e': {'$toString': 12}}",
   "{'e': {'$toString': {'$add': ['$x', 1]}}}",
   "{'e': {'$concat': ['$s', {'$toString': '$x'}, '$s', '$y']}}",
   "{'e': {'$concat': ['$s', '\\u00e9\\u20ac', {'$toString': '$y'}]}}",
   "{'e': {'$add': ['$x', '$y']}}",
   "{'e': {'$let': {'vars': {'a': '$x'}, 'in': {'$concat': ['$$a', "
   "'$s']}}}}",
   "{'e': {'$let': {'vars': {'a': '$x'}, 'in': {'$divide': ['$$a', "
   "'$y']}}}}",
   "{'e': {'$gt': [{'$toString': '$x'}, '$s']}}",
};

/* aspen_expr_eval_write gives what aspen_expr_eval then aspen_bsonw_value
 * gives - the same bytes, or the same error code and message - for every
 * operator with a specialised write ($cmp $eq $ne $gt $gte $lt $lte,
 * $divide, $concat, $toString) and the general ones, over every BSON type
 * in each operand (ints, longs, doubles, decimals, NaN, strings with
 * multi-byte UTF-8 or an embedded NUL, null, missing, arrays, documents,
 * ...), errors included (division by zero, $concat of a non-string). */
static void
write_case_plain(const char *js, bson_t *const *docs, size_t n)
{
   write_case(js, docs, n, NULL);
}

static void
test_write_same_results(void **state)
{
   (void) state;
   size_t n;
   bson_t **docs = leaf_docs(3, &n);
   leaf_all_cases(write_case_plain, docs, n);
   for (size_t k = 0; k < sizeof write_more / sizeof write_more[0]; k++) {
      write_case(write_more[k], docs, n, NULL);
   }
   docs_destroy(docs, n);
}

/* The limits stay exact: strings at and past ASPEN__MAX_STRING_LEN (16 MB:
 * 16493), made by a $concat of leaves, with a $toString's digits adding
 * the last bytes; and a $concat of enough leaves to reach the 1024th
 * step, where an interrupt stops the evaluation (11601) just as it stops
 * the general one. */
static void
test_write_limits(void **state)
{
   (void) state;
   enum { MB8 = 8 * 1024 * 1024 };
   char *h = malloc(MB8 + 1);
   memset(h, 'h', MB8);
   h[MB8] = '\0';
   bson_t *doc = bson_new();
   bson_append_utf8(doc, "h", 1, h, MB8);       /* 8 MB */
   bson_append_utf8(doc, "g", 1, h, MB8 - 1);   /* 8 MB - 1 */
   BSON_APPEND_INT32(doc, "i", 5);
   BSON_APPEND_INT64(doc, "l", -12);
   BSON_APPEND_UTF8(doc, "s", "dev");
   free(h);
   static const char *const exprs[] = {
      "{'e': {'$concat': ['$h', '$h']}}",          /* 16 MB: too long */
      "{'e': {'$concat': ['$h', '$g']}}",          /* 16 MB - 1 */
      "{'e': {'$concat': ['$h', '$g', 'x']}}",     /* 16 MB */
      "{'e': {'$concat': ['$g', '$g', 'x']}}",     /* 16 MB - 1 */
      "{'e': {'$concat': ['$g', '$g', {'$toString': '$i'}]}}",
      "{'e': {'$concat': ['$g', '$g', {'$toString': '$l'}]}}",
      "{'e': {'$concat': ['$h', '$h', '$h', 'x']}}",
      "{'e': {'$concat': ['$h', '$g', {'$toString': '$s'}]}}",
   };
   for (size_t k = 0; k < sizeof exprs / sizeof exprs[0]; k++) {
      write_case(exprs[k], &doc, 1, NULL);
   }
   /* {$concat: ['$s' x n]}: n + 1 steps. */
   atomic_bool stop = true;
   for (int n = 1018; n <= 1030; n++) {
      size_t cap = 32 + 6 * (size_t) n;
      char *js = malloc(cap);
      size_t at = (size_t) snprintf(js, cap, "{'e': {'$concat': [");
      for (int i = 0; i < n; i++) {
         at += (size_t) snprintf(js + at, cap - at, "%s'$s'", i ? ", " : "");
      }
      snprintf(js + at, cap - at, "]}}");
      write_case(js, &doc, 1, &stop);
      write_case(js, &doc, 1, NULL);
      free(js);
   }
   bson_destroy(doc);
}

static void
test_get_path(void **state)
{
   (void) state;
   bson_t *doc = json("{'a': [{'b': 1}, {'c': 2}, {'b': [3]}, 7], 'x': {'y': "
                      "{'z': true}}}");
   aspen_value_t v = aspen_expr_get_path(doc, "a.b");
   char *s = aspen_value_to_json(&v);
   assert_string_equal(s, "[ 1, [ 3 ] ]");
   bson_free(s);
   aspen_value_destroy(&v);
   v = aspen_expr_get_path(doc, "x.y.z");
   assert_int_equal(v.v.value_type, BSON_TYPE_BOOL);
   assert_false(v.owned);
   v = aspen_expr_get_path(doc, "x.nope.z");
   assert_true(aspen_value_is_missing(&v));
   bson_destroy(doc);
}

static void
test_is_constant(void **state)
{
   (void) state;
   bson_t *spec = json("{'e': {'$add': [1, {'$multiply': [2, 3]}]}}");
   aspen_expr_t *e = compile(spec, NULL);
   aspen_value_t v;
   assert_true(aspen_expr_is_constant(e, &v));
   assert_int_equal(v.v.value_type, BSON_TYPE_INT32);
   assert_int_equal(v.v.value.v_int32, 7);
   aspen_expr_destroy(e);
   bson_destroy(spec);

   spec = json("{'e': {'$add': [1, '$x']}}");
   e = compile(spec, NULL);
   assert_false(aspen_expr_is_constant(e, &v));
   aspen_expr_destroy(e);
   bson_destroy(spec);

   spec = json("{'e': {'$currentDate': {}}}");
   e = compile(spec, NULL);
   assert_false(aspen_expr_is_constant(e, &v));
   aspen_expr_destroy(e);
   bson_destroy(spec);
}

static void
test_parse_object_dotted(void **state)
{
   (void) state;
   bson_t *obj = json("{'a.b': 1, 'a.c': '$x', 'd': {'$add': [1, 1]}}");
   bson_t *doc = json("{'x': 'X'}");
   aspen_expr_t *e = NULL;
   aspen_error_t err;
   assert_true(aspen_expr_parse_object(obj, NULL, &e, &err));
   aspen_expr_ctx_t ctx = {.root = doc};
   aspen_value_t v;
   assert_true(aspen_expr_eval(e, &ctx, &v, &err));
   char *s = aspen_value_to_json(&v);
   assert_string_equal(s, "{ \"a\" : { \"b\" : 1, \"c\" : \"X\" }, \"d\" : 2 }");
   bson_free(s);
   aspen_value_destroy(&v);
   aspen_expr_destroy(e);
   bson_destroy(obj);

   obj = json("{'a': 1, 'a.b': 2}");
   assert_false(aspen_expr_parse_object(obj, NULL, &e, &err));
   assert_non_null(strstr(err.message, "conflicting"));
   assert_null(e);
   bson_destroy(obj);

   obj = json("{'$add': [1, 2]}");
   assert_false(aspen_expr_parse_object(obj, NULL, &e, &err));
   assert_non_null(strstr(err.message, "may not start with '$'"));
   bson_destroy(obj);
   bson_destroy(doc);
}

static void
test_caller_vars(void **state)
{
   (void) state;
   static const char *const vars[] = {"limit", "name", NULL};
   bson_t *spec = json("{'e': {'$concat': ['$$name', '-', {'$toString': "
                       "'$$limit'}]}}");
   aspen_expr_t *e = compile(spec, vars);
   aspen_value_t vals[2] = {aspen_value_int32(42),
                            aspen_value_utf8("n", 1)};
   const char *names[2] = {"limit", "name"};
   aspen_value_t v;
   aspen_error_t err;
   assert_true(aspen_expr_eval_with_vars(e, NULL, names, vals, 2, &v, &err));
   assert_string_equal(v.v.value.v_utf8.str, "n-42");
   aspen_value_destroy(&v);
   /* Without the variables bound, reading one is an error. */
   assert_false(aspen_expr_eval(e, NULL, &v, &err));
   assert_int_equal(err.code, 17276);
   assert_true(aspen_value_is_missing(&v));
   aspen_value_destroy(&vals[1]);
   aspen_expr_destroy(e);
   bson_destroy(spec);

   /* A name not declared at parse time is a parse error. */
   spec = json("{'e': '$$nope'}");
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, spec, "e"));
   assert_false(aspen_expr_parse(&it, vars, &e, &err));
   assert_int_equal(err.code, 17276);
   bson_destroy(spec);
}

static void
test_value_helpers(void **state)
{
   (void) state;
   aspen_value_t a = aspen_value_int32(1), b = aspen_value_double(1.0);
   assert_true(aspen_value_equal(&a, &b));
   aspen_value_t n = aspen_value_null(), m = ASPEN_VALUE_MISSING;
   /* The public comparison treats MISSING as null (as sorting does). */
   assert_int_equal(aspen_value_compare(&n, &m), 0);
   aspen_value_t s = aspen_value_utf8("abc", 3);
   assert_true(aspen_value_compare(&a, &s) < 0);
   assert_true(aspen_value_truthy(&s));
   aspen_value_t z = aspen_value_double(0.0);
   assert_false(aspen_value_truthy(&z));
   assert_string_equal(aspen_value_type_name(&s), "string");
   assert_string_equal(aspen_value_type_name(&m), "missing");
   aspen_value_t c = aspen_value_copy(&s);
   assert_true(c.owned);
   assert_true(aspen_value_equal(&c, &s));
   double d;
   assert_true(aspen_value_as_double(&a, &d));
   assert_true(d == 1.0);
   int64_t i;
   assert_false(aspen_value_as_int64(&s, &i));
   bson_t doc = BSON_INITIALIZER;
   aspen_value_append(&doc, "x", 1, &m);
   aspen_value_append(&doc, "y", 1, &c);
   assert_int_equal(bson_count_keys(&doc), 1);
   bson_destroy(&doc);
   aspen_value_destroy(&c);
   aspen_value_destroy(&s);
   aspen_value_destroy(NULL);
   bson_t *arr = bson_new();
   BSON_APPEND_INT32(arr, "0", 1);
   aspen_value_t av = aspen_value_take_doc(arr, true);
   assert_int_equal(av.v.value_type, BSON_TYPE_ARRAY);
   char *j = aspen_value_to_json(&av);
   assert_string_equal(j, "[ 1 ]");
   bson_free(j);
   aspen_value_destroy(&av);
}

/* The same compiled expression evaluated against many documents: each call
 * must leave nothing behind (run under LeakSanitizer). */
static void
test_many_evals(void **state)
{
   (void) state;
   bson_t *spec = json(
      "{'e': {'$let': {'vars': {'t': {'$concat': ['$s', '!']}}, 'in': "
      "{'$map': {'input': '$arr', 'as': 'x', 'in': {'$concat': ['$$t', "
      "{'$toString': '$$x'}]}}}}}}");
   aspen_expr_t *e = compile(spec, NULL);
   for (int i = 0; i < 200; i++) {
      bson_t doc = BSON_INITIALIZER;
      BSON_APPEND_UTF8(&doc, "s", "v");
      bson_t arr;
      BSON_APPEND_ARRAY_BEGIN(&doc, "arr", &arr);
      BSON_APPEND_INT32(&arr, "0", i);
      BSON_APPEND_INT32(&arr, "1", i + 1);
      bson_append_array_end(&doc, &arr);
      aspen_expr_ctx_t ctx = {.root = &doc};
      aspen_value_t v;
      aspen_error_t err;
      assert_true(aspen_expr_eval(e, &ctx, &v, &err));
      assert_int_equal(v.v.value_type, BSON_TYPE_ARRAY);
      aspen_value_destroy(&v);
      bson_destroy(&doc);
   }
   aspen_expr_destroy(e);
   bson_destroy(spec);
}

/* aspen_vars_substitute (lang/vars.c): references to the given variables
 * become literals, at any depth, dotted ones read into a document value;
 * what is missing becomes $$REMOVE; other variables and $literal arguments
 * are left alone. */
static void
test_vars_substitute(void **state)
{
   (void) state;
   bson_t *in = json(
      "{'p': [{'$match': {'$expr': {'$eq': ['$a', '$$x']}}}, {'$project': "
      "{'y': '$$obj.k', 'm': '$$obj.nope', 'n': '$$x.k', 'o': '$$other', "
      "'l': {'$literal': ['$$x']}, 's': {'$literal': '$$x'}, 'xs': ['$$x', "
      "1]}}]}");
   bson_t *want = json(
      "{'p': [{'$match': {'$expr': {'$eq': ['$a', {'$literal': 5}]}}}, "
      "{'$project': {'y': {'$literal': 'v'}, 'm': '$$REMOVE', 'n': "
      "'$$REMOVE', 'o': '$$other', 'l': {'$literal': ['$$x']}, 's': "
      "{'$literal': '$$x'}, 'xs': [{'$literal': 5}, 1]}}]}");
   bson_t *obj = json("{'k': 'v'}");
   const char *names[] = {"x", "obj"};
   aspen_value_t values[2] = {aspen_value_int32(5),
                              aspen_value_take_doc(obj, false)};
   bson_t out = BSON_INITIALIZER;
   aspen_vars_substitute(in, &out, names, values, 2);
   char *got_json = bson_as_relaxed_extended_json(&out, NULL);
   char *want_json = bson_as_relaxed_extended_json(want, NULL);
   assert_string_equal(got_json, want_json);
   bson_free(got_json);
   bson_free(want_json);
   bson_destroy(&out);
   aspen_value_destroy(&values[0]);
   aspen_value_destroy(&values[1]);
   bson_destroy(want);
   bson_destroy(in);
}

/* The one BSON type rank (lang/value.c) against mongod's documented
 * comparison order ("Comparison/Sort Order" in the MongoDB manual): MinKey,
 * null, numbers, symbol and string, object, array, binData, ObjectId, bool,
 * date, timestamp, regex, (DBPointer,) code, code with scope, MaxKey. The
 * query matcher and the expression language both use it. */
static void
test_type_rank(void **state)
{
   (void) state;
   static const bson_type_t order[][4] = {
      {BSON_TYPE_MINKEY},
      {BSON_TYPE_NULL},
      {BSON_TYPE_INT32, BSON_TYPE_INT64, BSON_TYPE_DOUBLE,
       BSON_TYPE_DECIMAL128},
      {BSON_TYPE_SYMBOL, BSON_TYPE_UTF8},
      {BSON_TYPE_DOCUMENT},
      {BSON_TYPE_ARRAY},
      {BSON_TYPE_BINARY},
      {BSON_TYPE_OID},
      {BSON_TYPE_BOOL},
      {BSON_TYPE_DATE_TIME},
      {BSON_TYPE_TIMESTAMP},
      {BSON_TYPE_REGEX},
      {BSON_TYPE_DBPOINTER},
      {BSON_TYPE_CODE},
      {BSON_TYPE_CODEWSCOPE},
      {BSON_TYPE_MAXKEY},
   };
   size_t n = sizeof order / sizeof order[0];
   for (int low = 0; low < 2; low++) {
      int prev = INT32_MIN;
      for (size_t i = 0; i < n; i++) {
         int r = aspen__value_type_rank(order[i][0], low);
         /* Types of one class rank alike ... */
         for (size_t j = 1; j < 4 && order[i][j]; j++) {
            assert_int_equal(aspen__value_type_rank(order[i][j], low), r);
         }
         /* ... and each class above the one before. */
         assert_true(r > prev);
         prev = r;
      }
   }
   int minkey = aspen__value_type_rank(BSON_TYPE_MINKEY, true);
   int null = aspen__value_type_rank(BSON_TYPE_NULL, true);
   /* Missing and undefined: between MinKey and null where they are told
    * apart from null (comparisons, query matching), null's rank where a
    * missing field sorts as null. */
   static const bson_type_t nullish[] = {BSON_TYPE_EOD, BSON_TYPE_UNDEFINED};
   for (size_t i = 0; i < 2; i++) {
      int r = aspen__value_type_rank(nullish[i], true);
      assert_true(r > minkey && r < null);
      assert_int_equal(aspen__value_type_rank(nullish[i], false), null);
   }
   /* A type byte BSON does not define never ranks above MaxKey. */
   int maxkey = aspen__value_type_rank(BSON_TYPE_MAXKEY, true);
   assert_true(aspen__value_type_rank((bson_type_t) 0x20, true) < maxkey);
   assert_true(aspen__value_type_rank((bson_type_t) 0x20, true) >
               aspen__value_type_rank(BSON_TYPE_CODEWSCOPE, true));
}

/* The operator tables: expr.c's lookup binary-searches each one, so each
 * must be sorted, and a name may be in one table only; every argument row
 * must carry the errors its checks can raise, in templates that name only
 * what aspen__msg_format knows. */
static const aspen__op_table_t *const op_tables[] = {
   &aspen__expr_core_ops,   &aspen__expr_num_ops,     &aspen__expr_string_ops,
   &aspen__expr_array_ops,  &aspen__expr_convert_ops, &aspen__expr_date_ops,
};

static void
check_template(const char *op, const char *tmpl)
{
   aspen_value_t vals[2] = {aspen_value_int32(1), aspen_value_double(2.5)};
   aspen__msg_t m = {.op = op, .key = "k", .val = &vals[1], .vals = vals,
                     .pos = 1, .ival = -3};
   char buf[512];
   assert_non_null(tmpl);
   aspen__msg_format(buf, sizeof buf, tmpl, &m);
   if (strchr(buf, '{') || strchr(buf, '}')) {
      fail_msg("%s: template \"%s\" names something unknown: %s", op, tmpl,
               buf);
   }
}

static void
check_arg_row(const char *op, const aspen__arg_t *a)
{
   if (a->types) {
      assert_int_not_equal(a->code, 0);
      check_template(op, a->msg);
   }
   if (a->flags & (ASPEN__ARG_INT32 | ASPEN__ARG_INT64)) {
      assert_true(a->types & ASPEN__T_NUMBER);
      check_template(op, a->int_msg ? a->int_msg : a->msg);
   }
   if (a->flags & ASPEN__ARG_RANGE) {
      assert_true(a->flags & (ASPEN__ARG_INT32 | ASPEN__ARG_INT64));
      assert_int_not_equal(a->range_code, 0);
      assert_true(a->min <= a->max);
      check_template(op, a->range_msg);
   }
   if (a->flags & ASPEN__ARG_TO_STRING) {
      assert_int_equal(a->types, ASPEN__T_STRINGABLE);
   }
}

static void
test_op_tables(void **state)
{
   (void) state;
   size_t n_tables = sizeof op_tables / sizeof op_tables[0];
   size_t total = 0;
   for (size_t t = 0; t < n_tables; t++) {
      const aspen__op_table_t *tab = op_tables[t];
      assert_true(tab->n > 0);
      for (size_t i = 0; i < tab->n; i++) {
         const aspen__op_t *op = &tab->ops[i];
         total++;
         assert_non_null(op->parse);
         assert_non_null(op->eval);
         if (i > 0 && strcmp(tab->ops[i - 1].name, op->name) >= 0) {
            fail_msg("table %zu is not sorted at %s", t, op->name);
         }
         for (size_t u = t + 1; u < n_tables; u++) {
            for (size_t j = 0; j < op_tables[u]->n; j++) {
               if (strcmp(op_tables[u]->ops[j].name, op->name) == 0) {
                  fail_msg("%s is in two tables", op->name);
               }
            }
         }
         const aspen__args_t *args = op->args;
         if (!args) {
            continue;
         }
         assert_true(args->n >= 1 && args->n <= ASPEN__ARGS_MAX);
         assert_true(args->together <= args->n);
         for (uint8_t k = 0; k < args->n; k++) {
            check_arg_row(op->name, &args->arg[k]);
         }
      }
   }
   /* The 150 operators of expr.h, each in one table. */
   assert_int_equal(total, 150);
}

/* The message templates argument rows and named-argument tables use. */
static void
test_msg_format(void **state)
{
   (void) state;
   aspen_value_t vals[2] = {aspen_value_utf8("x\"y", 3),
                            aspen_value_int64(7)};
   aspen__msg_t m = {.op = "$op", .key = "bad", .val = &vals[0],
                     .vals = vals, .pos = 1, .ival = -42};
   char buf[256];
   aspen__msg_format(buf, sizeof buf,
                     "{op} {key} {type} {value} {int} {nth} {type0} "
                     "{type1}",
                     &m);
   assert_string_equal(buf, "$op bad string \"x\\\"y\" -42 2 string long");
   m.val = &vals[1];
   aspen__msg_format(buf, sizeof buf, "{num}: {value}", &m);
   assert_string_equal(buf, "7: 7");
   /* What is not a known name stays as it is. */
   aspen__msg_format(buf, sizeof buf, "{$literal: 1} {x} {op", &m);
   assert_string_equal(buf, "{$literal: 1} {x} {op");
   /* Cut to fit, as snprintf does. */
   aspen__msg_format(buf, 6, "{op} is long", &m);
   assert_string_equal(buf, "$op i");
   /* An error set from a template. */
   aspen_error_t err;
   assert_false(aspen__msg_fail(&err, 51081, "{op} only supports numeric "
                                             "types, not {type}",
                                &m));
   assert_int_equal(err.code, 51081);
   assert_string_equal(err.message, "$op only supports numeric types, not long");
   assert_false(aspen__msg_fail(NULL, 1, "{op}", &m));
   aspen_value_destroy(&vals[0]);
}

int
main(void)
{
   if (!load_cases()) {
      free_cases();
      return 1;
   }
   static const struct CMUnitTest api_tests[] = {
      cmocka_unit_test(test_path_borrows),
      cmocka_unit_test(test_scratch_same_results),
      cmocka_unit_test(test_int_fast_paths),
      cmocka_unit_test(test_leaves_same_results),
      cmocka_unit_test(test_leaves_count_steps),
      cmocka_unit_test(test_write_same_results),
      cmocka_unit_test(test_write_limits),
      cmocka_unit_test(test_get_path),
      cmocka_unit_test(test_is_constant),
      cmocka_unit_test(test_parse_object_dotted),
      cmocka_unit_test(test_caller_vars),
      cmocka_unit_test(test_value_helpers),
      cmocka_unit_test(test_many_evals),
      cmocka_unit_test(test_vars_substitute),
      cmocka_unit_test(test_type_rank),
      cmocka_unit_test(test_op_tables),
      cmocka_unit_test(test_msg_format),
   };
   size_t n_api = sizeof api_tests / sizeof api_tests[0];
   struct CMUnitTest *tests = calloc(n_cases + n_api, sizeof *tests);
   for (size_t i = 0; i < n_cases; i++) {
      tests[i].name = cases[i].name;
      tests[i].test_func = run_case;
      tests[i].initial_state = &cases[i];
   }
   memcpy(tests + n_cases, api_tests, sizeof api_tests);
   /* $function's limits, small so that the runaway cases end soon. */
   aspen_expr_function_set_limits(200, 16u * 1024 * 1024);
   int rc = _cmocka_run_group_tests("expr", tests, n_cases + n_api, NULL,
                                    NULL);
   free(tests);
   free_cases();
   return rc;
}
