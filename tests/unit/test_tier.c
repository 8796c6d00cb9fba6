/*
 * test_tier.c - ASP's tiers (engine/base/tier.c): the table's limits, the
 * smallest tier for a parallelism or a partition count, and where a
 * processor's options ({tier, autoscaling}) place it.
 */
#include "base/tier.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

static void
test_table(void **state)
{
   (void) state;
   assert_int_equal(aspen_tier_count(), 5);
   assert_string_equal(aspen_tier_at(0)->name, "SP2");
   assert_int_equal(aspen_tier_rank("SP10"), 2);
   assert_int_equal(aspen_tier_rank("SP7"), -1);
   assert_null(aspen_tier_find(NULL));
   assert_int_equal(aspen_tier_find("SP5")->max_parallelism, 2);
   assert_int_equal(aspen_tier_find("SP2")->kafka_partitions, 32);
   assert_int_equal(aspen_tier_find("SP30")->kafka_partitions, 0);
   assert_string_equal(aspen_tier_for_parallelism(1)->name, "SP2");
   assert_string_equal(aspen_tier_for_parallelism(2)->name, "SP5");
   assert_string_equal(aspen_tier_for_parallelism(9)->name, "SP30");
   assert_null(aspen_tier_for_parallelism(65));
   assert_string_equal(aspen_tier_for_partitions(32)->name, "SP2");
   assert_string_equal(aspen_tier_for_partitions(33)->name, "SP5");
   assert_string_equal(aspen_tier_for_partitions(1000)->name, "SP10");
}

static void
plan_of(const char *json, aspen_tier_plan_t *plan)
{
   bson_error_t berr;
   bson_t *opts = json ? bson_new_from_json((const uint8_t *) json, -1, &berr)
                       : NULL;
   aspen_tier_plan(opts, plan);
   bson_destroy(opts);
}

static void
test_plan(void **state)
{
   (void) state;
   aspen_tier_plan_t p;
   plan_of(NULL, &p); /* the workspace default */
   assert_int_equal(p.rank, aspen_tier_rank("SP10"));
   assert_int_equal(p.max_rank, p.rank);
   assert_false(p.autoscaling);
   plan_of("{\"tier\": \"SP2\"}", &p);
   assert_int_equal(p.rank, 0);
   assert_int_equal(p.asked_rank, 0);
   /* Disabled autoscaling changes nothing. */
   plan_of("{\"tier\": \"SP2\", \"autoscaling\": {\"enabled\": false, "
           "\"maxTier\": \"SP50\"}}",
           &p);
   assert_int_equal(p.rank, 0);
   assert_int_equal(p.max_rank, 0);
   assert_false(p.autoscaling);
   /* Enabled: up to maxTier (default the largest), the tier brought up to
    * minTier. */
   plan_of("{\"tier\": \"SP2\", \"autoscaling\": {\"enabled\": true}}", &p);
   assert_true(p.autoscaling);
   assert_int_equal(p.rank, 0);
   assert_int_equal(p.max_rank, aspen_tier_rank("SP50"));
   plan_of("{\"autoscaling\": {\"enabled\": true, \"minTier\": \"SP30\", "
           "\"maxTier\": \"SP50\"}}",
           &p);
   assert_int_equal(p.asked_rank, aspen_tier_rank("SP10"));
   assert_int_equal(p.rank, aspen_tier_rank("SP30"));
   /* A tier above maxTier is brought down to it. */
   plan_of("{\"tier\": \"SP50\", \"autoscaling\": {\"enabled\": true, "
           "\"maxTier\": \"SP5\"}}",
           &p);
   assert_int_equal(p.rank, aspen_tier_rank("SP5"));
   assert_int_equal(p.max_rank, aspen_tier_rank("SP5"));
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table),
      cmocka_unit_test(test_plan),
   };
   return cmocka_run_group_tests_name("tier", tests, NULL, NULL);
}
