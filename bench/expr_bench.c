/*
 * expr_bench.c - the cost of one expression operator call: each expression
 * below (one operator over field paths and constants) is compiled once and
 * evaluated N times against one document, on one thread. Prints ns per
 * evaluation for each, and their sum. A benchmark, not a test: it never
 * fails on a timing.
 *
 *   aspen_bench_expr [N] [filter]   (default 2000000; only the expressions
 *                                    whose text contains `filter`)
 */
#include "lang/expr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
now_s(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_MONOTONIC, &ts);
   return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static const char *const exprs[] = {
   "{\"$divide\": [\"$a\", 1000]}",
   "{\"$add\": [\"$a\", \"$b\", 1]}",
   "{\"$multiply\": [\"$a\", \"$d\"]}",
   "{\"$subtract\": [\"$a\", \"$b\"]}",
   "{\"$mod\": [\"$a\", 7]}",
   "{\"$abs\": \"$n\"}",
   "{\"$round\": [\"$d\", 1]}",
   "{\"$gt\": [\"$a\", 20]}",
   "{\"$concat\": [\"$s\", \"-\", \"$s\"]}",
   "{\"$toString\": \"$a\"}",
   "{\"$substrBytes\": [\"$s\", 1, 3]}",
   "{\"$strLenCP\": \"$s\"}",
   "{\"$toUpper\": \"$s\"}",
   "{\"$indexOfBytes\": [\"$s\", \"ce\"]}",
   "{\"$size\": \"$arr\"}",
   "{\"$arrayElemAt\": [\"$arr\", 1]}",
   "{\"$slice\": [\"$arr\", 1, 2]}",
   "{\"$in\": [2, \"$arr\"]}",
   "{\"$setUnion\": [\"$arr\", [9]]}",
   "{\"$year\": \"$t\"}",
   "{\"$dateTrunc\": {\"date\": \"$t\", \"unit\": \"hour\"}}",
   "{\"$dateAdd\": {\"startDate\": \"$t\", \"unit\": \"day\", \"amount\": 2}}",
   "{\"$bitAnd\": [\"$a\", 6]}",
};

int
main(int argc, char **argv)
{
   long n = argc > 1 ? atol(argv[1]) : 2000000;
   const char *only = argc > 2 ? argv[2] : NULL;
   bson_error_t berr;
   bson_t *doc = bson_new_from_json(
      (const uint8_t *) "{\"a\": 42, \"b\": 7, \"d\": 2.75, \"n\": -5, "
                        "\"s\": \"abcdefgh\", \"arr\": [1, 2, 3, 4], "
                        "\"t\": {\"$date\": \"2024-02-29T12:34:56.789Z\"}}",
      -1, &berr);
   aspen_expr_ctx_t ctx = {.root = doc, .meta = NULL, .now_ms = 0};
   double total = 0;
   printf("expression operators, 1 thread, %ld evaluations each\n", n);
   for (size_t k = 0; k < sizeof exprs / sizeof exprs[0]; k++) {
      if (only && !strstr(exprs[k], only)) {
         continue;
      }
      bson_t *spec = bson_new_from_json((const uint8_t *) exprs[k], -1, &berr);
      bson_t wrap = BSON_INITIALIZER;
      BSON_APPEND_DOCUMENT(&wrap, "e", spec);
      bson_iter_t it;
      bson_iter_init_find(&it, &wrap, "e");
      aspen_expr_t *e;
      aspen_error_t err;
      if (!aspen_expr_parse(&it, NULL, &e, &err)) {
         fprintf(stderr, "%s: %s\n", exprs[k], err.message);
         return 1;
      }
      aspen_value_t v;
      for (long i = 0; i < n / 10; i++) {
         aspen_expr_eval(e, &ctx, &v, &err);
         aspen_value_destroy(&v);
      }
      double t0 = now_s();
      for (long i = 0; i < n; i++) {
         if (!aspen_expr_eval(e, &ctx, &v, &err)) {
            fprintf(stderr, "%s: %s\n", exprs[k], err.message);
            return 1;
         }
         aspen_value_destroy(&v);
      }
      double dt = now_s() - t0;
      total += dt;
      printf("  %-62s %7.1f ns\n", exprs[k], dt * 1e9 / (double) n);
      aspen_expr_destroy(e);
      bson_destroy(&wrap);
      bson_destroy(spec);
   }
   printf("  %-62s %7.1f ns\n", "all", total * 1e9 / (double) n);
   bson_destroy(doc);
   return 0;
}
