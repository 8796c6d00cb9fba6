/*
 * hist.h - a latency histogram: log-linear buckets (four per power of
 * two, exact below 16), so a percentile is known to within a quarter of
 * its value in a fixed 1.3 KB, whatever the range (the idea of
 * HdrHistogram's buckets, at its coarsest). Verbose stats' `latency`
 * (runtime/) and the Prometheus histograms are read from it. Plain data:
 * no locking; any thread that owns it.
 */
#ifndef ASPEN_ENGINE_BASE_HIST_H
#define ASPEN_ENGINE_BASE_HIST_H

#include <stdint.h>

/* 16 exact values, then 4 buckets for each power of two from 2^4 to
 * 2^40 (values above fall in the last). */
#define ASPEN_HIST_BUCKETS (16 + 4 * 37)

typedef struct {
   uint64_t n[ASPEN_HIST_BUCKETS];
   uint64_t count, sum;
} aspen_hist_t;

/* Counts one value. */
void aspen_hist_add(aspen_hist_t *h, uint64_t v);
/* Adds every count of `from` to `into`. */
void aspen_hist_merge(aspen_hist_t *into, const aspen_hist_t *from);
/* The value at quantile `q` (0..1): the upper bound of the bucket the
 * ceil(q * count)th value falls in; 0 for an empty histogram. */
uint64_t aspen_hist_quantile(const aspen_hist_t *h, double q);
/* The largest value bucket `i` holds. */
uint64_t aspen_hist_bucket_upper(int i);
/* The bucket value `v` falls in. */
int aspen_hist_bucket(uint64_t v);

#endif /* ASPEN_ENGINE_BASE_HIST_H */
