/*
 * tier.c - ASP's processor tiers (tier.h).
 */
#include "base/tier.h"

#include <stddef.h>
#include <string.h>

static const aspen_tier_t tiers[] = {
   {"SP2", 500, "0.5 GB", 1, 32, 1, 0},
   {"SP5", 1000, "1 GB", 2, 64, 1, 0},
   {"SP10", 2000, "2 GB", 8, 0, 5, 1},
   {"SP30", 8000, "8 GB", 16, 0, 10, 2},
   {"SP50", 32000, "32 GB", 64, 0, 50, 8},
};

#define N_TIERS ((int) (sizeof tiers / sizeof tiers[0]))

int
aspen_tier_count(void)
{
   return N_TIERS;
}

const aspen_tier_t *
aspen_tier_at(int i)
{
   return i >= 0 && i < N_TIERS ? &tiers[i] : NULL;
}

int
aspen_tier_rank(const char *name)
{
   for (int i = 0; name && i < N_TIERS; i++) {
      if (strcmp(name, tiers[i].name) == 0) {
         return i;
      }
   }
   return -1;
}

const aspen_tier_t *
aspen_tier_find(const char *name)
{
   return aspen_tier_at(aspen_tier_rank(name));
}

const aspen_tier_t *
aspen_tier_for_parallelism(int64_t parallelism)
{
   for (int i = 0; i < N_TIERS; i++) {
      if (tiers[i].max_parallelism >= parallelism) {
         return &tiers[i];
      }
   }
   return NULL;
}

const aspen_tier_t *
aspen_tier_for_partitions(int64_t partitions)
{
   for (int i = 0; i < N_TIERS; i++) {
      if (tiers[i].kafka_partitions == 0 ||
          tiers[i].kafka_partitions >= partitions) {
         return &tiers[i];
      }
   }
   return NULL;
}

const aspen_tier_t *
aspen_tier_for_initial_sync(int64_t colls)
{
   for (int i = 0; i < N_TIERS; i++) {
      if (tiers[i].initial_sync_colls >= colls) {
         return &tiers[i];
      }
   }
   return NULL;
}

/* The rank of the tier named by the string at `key` of `doc`, else
 * `dflt`. */
static int
rank_at(const bson_t *doc, const char *key, int dflt)
{
   bson_iter_t it;
   if (doc && bson_iter_init_find(&it, doc, key) &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      int r = aspen_tier_rank(bson_iter_utf8(&it, NULL));
      return r >= 0 ? r : dflt;
   }
   return dflt;
}

void
aspen_tier_plan(const bson_t *options, aspen_tier_plan_t *out)
{
   int rank = rank_at(options, "tier", aspen_tier_rank(ASPEN_TIER_DEFAULT));
   out->asked_rank = rank;
   out->rank = rank;
   out->max_rank = rank;
   out->autoscaling = false;
   bson_iter_t it, en;
   if (!options || !bson_iter_init_find(&it, options, "autoscaling") ||
       !BSON_ITER_HOLDS_DOCUMENT(&it)) {
      return;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t as;
   bson_iter_document(&it, &len, &data);
   if (!bson_init_static(&as, data, len) ||
       !bson_iter_init_find(&en, &as, "enabled") || !BSON_ITER_HOLDS_BOOL(&en) ||
       !bson_iter_bool(&en)) {
      return;
   }
   int lo = rank_at(&as, "minTier", rank);
   int hi = rank_at(&as, "maxTier", aspen_tier_rank(ASPEN_TIER_MAX));
   out->autoscaling = true;
   out->rank = rank < lo ? lo : rank > hi ? hi : rank;
   out->max_rank = hi;
}
