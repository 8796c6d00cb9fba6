/*
 * tier.h - ASP's processor tiers and what each allows (asp-semantics.md
 * §8.3, ASP's tier guide): RAM (the state limit is 80 % of it), the
 * cumulative parallelism of a pipeline, the partitions a Kafka
 * $source may read, and its vCPUs (the most threads a processor's
 * partitions are spread over, runtime/workers.c). The one table of them: the commands check tier
 * names and parallelism against it, the runtime the state limit, the
 * Kafka source its partitions. Pure data, any thread.
 */
#ifndef ASPEN_ENGINE_BASE_TIER_H
#define ASPEN_ENGINE_BASE_TIER_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
   const char *name;     /* "SP10" */
   uint64_t ram_mb;      /* decimal megabytes, as ASP states them */
   const char *ram;      /* "2 GB", for messages */
   int64_t max_parallelism;  /* a pipeline's cumulative parallelism */
   int64_t kafka_partitions; /* a Kafka $source's partitions; 0: no limit */
   int64_t initial_sync_colls; /* collections one initialSync copies */
   int64_t vcpus;        /* whole vCPUs (0: a fraction of one, SP2/SP5) */
} aspen_tier_t;

/* The workspace's default tier and its largest (listWorkspaceDefaults). */
#define ASPEN_TIER_DEFAULT "SP10"
#define ASPEN_TIER_MAX "SP50"

/* The tiers, smallest first: `i` from 0 to aspen_tier_count() - 1. */
int aspen_tier_count(void);
const aspen_tier_t *aspen_tier_at(int i);
/* The tier named `name` and its rank (its index), or NULL / -1. */
const aspen_tier_t *aspen_tier_find(const char *name);
int aspen_tier_rank(const char *name);
/* The smallest tier whose max_parallelism is at least `parallelism`,
 * NULL when none is. */
const aspen_tier_t *aspen_tier_for_parallelism(int64_t parallelism);
/* The smallest tier that reads `partitions` Kafka partitions. */
const aspen_tier_t *aspen_tier_for_partitions(int64_t partitions);
/* The smallest tier whose initial sync copies `colls` collections. */
const aspen_tier_t *aspen_tier_for_initial_sync(int64_t colls);

/* Where a processor with `options` ({tier, autoscaling: {enabled,
 * minTier, maxTier}}, already checked) runs: its tier (options.tier, else
 * the default), and with autoscaling enabled the range it may scale in
 * (minTier, default its tier; maxTier, default the workspace's largest),
 * its tier brought into that range. */
typedef struct {
   int rank;         /* the tier it starts on: aspen_tier_at(rank) */
   int asked_rank;   /* options.tier's (or the default's) */
   int max_rank;     /* the highest it may scale to (rank without) */
   bool autoscaling;
} aspen_tier_plan_t;

void aspen_tier_plan(const bson_t *options, aspen_tier_plan_t *out);

#endif /* ASPEN_ENGINE_BASE_TIER_H */
