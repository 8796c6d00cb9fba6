/*
 * hist.c - the latency histogram (hist.h).
 */
#include "base/hist.h"

int
aspen_hist_bucket(uint64_t v)
{
   if (v < 16) {
      return (int) v;
   }
   int e = 63 - __builtin_clzll(v); /* 2^e <= v < 2^(e+1), e >= 4 */
   if (e > 40) {
      return ASPEN_HIST_BUCKETS - 1;
   }
   int sub = (int) ((v >> (e - 2)) & 3);
   return 16 + (e - 4) * 4 + sub;
}

uint64_t
aspen_hist_bucket_upper(int i)
{
   if (i < 16) {
      return (uint64_t) i;
   }
   int e = 4 + (i - 16) / 4;
   uint64_t sub = (uint64_t) ((i - 16) % 4);
   /* Bucket (e, sub) holds [2^e + sub 2^(e-2), 2^e + (sub + 1) 2^(e-2)). */
   return (1ull << e) + (sub + 1) * (1ull << (e - 2)) - 1;
}

void
aspen_hist_add(aspen_hist_t *h, uint64_t v)
{
   h->n[aspen_hist_bucket(v)]++;
   h->count++;
   h->sum += v;
}

void
aspen_hist_merge(aspen_hist_t *into, const aspen_hist_t *from)
{
   if (!from->count) {
      return;
   }
   for (int i = 0; i < ASPEN_HIST_BUCKETS; i++) {
      into->n[i] += from->n[i];
   }
   into->count += from->count;
   into->sum += from->sum;
}

uint64_t
aspen_hist_quantile(const aspen_hist_t *h, double q)
{
   if (!h->count) {
      return 0;
   }
   double want = q * (double) h->count;
   uint64_t rank = (uint64_t) want;
   if ((double) rank < want || rank == 0) {
      rank++;
   }
   if (rank > h->count) {
      rank = h->count;
   }
   uint64_t seen = 0;
   for (int i = 0; i < ASPEN_HIST_BUCKETS; i++) {
      seen += h->n[i];
      if (seen >= rank) {
         return aspen_hist_bucket_upper(i);
      }
   }
   return aspen_hist_bucket_upper(ASPEN_HIST_BUCKETS - 1);
}
