/*
 * test_hist.c - the latency histogram (engine/base/hist.c): every value
 * falls in a bucket whose bounds hold it, within a quarter of its value;
 * quantiles, merges and the empty histogram.
 */
#include "base/hist.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static void
test_buckets_hold_their_values(void **state)
{
   (void) state;
   uint64_t prev_upper = 0;
   for (int i = 0; i < ASPEN_HIST_BUCKETS; i++) {
      uint64_t up = aspen_hist_bucket_upper(i);
      if (i > 0) {
         assert_true(up > prev_upper); /* increasing, no gap */
         assert_int_equal(aspen_hist_bucket(prev_upper + 1), i);
      }
      assert_int_equal(aspen_hist_bucket(up), i);
      prev_upper = up;
   }
   /* Within a quarter: a bucket's lower bound is more than 3/4 of its
    * upper one. */
   for (uint64_t v = 1; v < (1ull << 40); v = v * 3 + 1) {
      uint64_t up = aspen_hist_bucket_upper(aspen_hist_bucket(v));
      assert_true(up >= v);
      assert_true(up - v <= v / 4 + 1);
   }
   /* Past 2^41: the last bucket. */
   assert_int_equal(aspen_hist_bucket(UINT64_MAX), ASPEN_HIST_BUCKETS - 1);
}

static void
test_quantiles(void **state)
{
   (void) state;
   aspen_hist_t h;
   memset(&h, 0, sizeof h);
   assert_int_equal(aspen_hist_quantile(&h, 0.5), 0);
   for (uint64_t v = 1; v <= 100; v++) {
      aspen_hist_add(&h, v * 1000);
   }
   assert_int_equal(h.count, 100);
   assert_int_equal(h.sum, 5050 * 1000);
   uint64_t p50 = aspen_hist_quantile(&h, 0.50);
   uint64_t p99 = aspen_hist_quantile(&h, 0.99);
   /* The 50th value is 50000, the 99th 99000: each within its bucket. */
   assert_true(p50 >= 50000 && p50 <= 50000 + 50000 / 4);
   assert_true(p99 >= 99000 && p99 <= 99000 + 99000 / 4);
   assert_true(p50 <= p99);
   assert_int_equal(aspen_hist_quantile(&h, 1.0),
                    aspen_hist_bucket_upper(aspen_hist_bucket(100000)));
   /* Exact below 16. */
   aspen_hist_t small;
   memset(&small, 0, sizeof small);
   aspen_hist_add(&small, 3);
   aspen_hist_add(&small, 7);
   assert_int_equal(aspen_hist_quantile(&small, 0.5), 3);
   assert_int_equal(aspen_hist_quantile(&small, 0.99), 7);
}

static void
test_merge(void **state)
{
   (void) state;
   aspen_hist_t a, b;
   memset(&a, 0, sizeof a);
   memset(&b, 0, sizeof b);
   aspen_hist_add(&a, 10);
   aspen_hist_add(&b, 1000);
   aspen_hist_add(&b, 1000);
   aspen_hist_merge(&a, &b);
   assert_int_equal(a.count, 3);
   assert_int_equal(a.sum, 2010);
   assert_int_equal(a.n[aspen_hist_bucket(1000)], 2);
   assert_int_equal(aspen_hist_quantile(&a, 0.5),
                    aspen_hist_bucket_upper(aspen_hist_bucket(1000)));
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buckets_hold_their_values),
      cmocka_unit_test(test_quantiles),
      cmocka_unit_test(test_merge),
   };
   return cmocka_run_group_tests_name("hist", tests, NULL, NULL);
}
