/*
 * test_nojs.c - engine/lang/ as a build without a JavaScript engine
 * (-DASPEN_JS=OFF) has it: expr_function.c compiled without ASPEN_HAVE_JS,
 * linked with the rest of lang/ as every build compiles it
 * (tests/unit/nojs.cmake), so CI checks that configuration without a
 * second build of aspen.
 *
 * Every $function of tests/cases/expr/function.json is read as such a
 * build reads it: one a JavaScript engine would run (a "js" case) is
 * refused when parsed with ASP's code 420 and the honest "supported by
 * Atlas Stream Processing but not yet by this version of aspen" message;
 * one whose specification is wrong is refused as with JavaScript (its
 * "parseError" and code), since the specification is checked first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lang/expr.h"

#define NOT_YET                                                            \
   "$function is supported by Atlas Stream Processing but not yet by this " \
   "version of aspen (built without a JavaScript engine: ASPEN_JS=OFF)"

static bson_t *
load_cases(void)
{
   const char *path = ASPEN_CASES_DIR "/expr/function.json";
   FILE *f = fopen(path, "rb");
   assert_non_null(f);
   char *text = NULL;
   size_t len = 0, cap = 0, n;
   char chunk[4096];
   while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
      if (len + n + 16 > cap) {
         cap = 2 * (len + n + 16);
         text = realloc(text, cap);
      }
      memcpy(text + len, chunk, n);
      len += n;
   }
   fclose(f);
   assert_non_null(text);
   text[len] = '\0';
   /* Wrap the array so libbson can parse it as a document. */
   char *wrapped = malloc(len + 16);
   snprintf(wrapped, len + 16, "{\"c\": %s}", text);
   free(text);
   bson_error_t berr;
   bson_t *all = bson_new_from_json((const uint8_t *) wrapped, -1, &berr);
   free(wrapped);
   if (!all) {
      fail_msg("%s: invalid JSON: %s", path, berr.message);
   }
   return all;
}

static void
test_function_refused(void **unused)
{
   (void) unused;
   assert_false(aspen_expr_function_available());
   bson_t *all = load_cases();
   bson_iter_t it, arr, c;
   int js = 0, spec = 0;
   assert_true(bson_iter_init_find(&it, all, "c") &&
               bson_iter_recurse(&it, &arr));
   while (bson_iter_next(&arr)) {
      const char *name = "?", *parse_error = NULL;
      bool is_js = false;
      int32_t code = 0;
      bson_iter_t expr;
      bool has_expr = false;
      assert_true(bson_iter_recurse(&arr, &c));
      while (bson_iter_next(&c)) {
         const char *k = bson_iter_key(&c);
         if (strcmp(k, "name") == 0) {
            name = bson_iter_utf8(&c, NULL);
         } else if (strcmp(k, "js") == 0) {
            is_js = bson_iter_as_bool(&c);
         } else if (strcmp(k, "parseError") == 0) {
            parse_error = bson_iter_utf8(&c, NULL);
         } else if (strcmp(k, "code") == 0) {
            code = (int32_t) bson_iter_as_int64(&c);
         } else if (strcmp(k, "expr") == 0) {
            expr = c;
            has_expr = true;
         }
      }
      assert_true(has_expr);
      aspen_expr_t *e = NULL;
      aspen_error_t err = {0};
      bool parsed = aspen_expr_parse(&expr, NULL, &e, &err);
      aspen_expr_destroy(e);
      if (parsed) {
         fail_msg("%s: parsed without a JavaScript engine", name);
      }
      if (parse_error) {
         /* The specification's own errors come first, as with JS. */
         if (!strstr(err.message, parse_error) || err.code != code) {
            fail_msg("%s: got %d \"%s\", want %d \"%s\"", name, err.code,
                     err.message, code, parse_error);
         }
         spec++;
      } else {
         assert_true(is_js);
         if (err.code != ASPEN_ERR_StreamProcessorInvalidOptions ||
             strcmp(err.message, NOT_YET) != 0) {
            fail_msg("%s: got %d \"%s\"", name, err.code, err.message);
         }
         js++;
      }
   }
   bson_destroy(all);
   /* The file has both kinds; an empty or renamed file is a failure. */
   assert_true(js >= 5);
   assert_true(spec >= 5);
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_function_refused),
   };
   return cmocka_run_group_tests(tests, NULL, NULL);
}
