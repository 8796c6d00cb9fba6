/*
 * clock.c - the two clocks every folder reads (wire.h): the wall clock for
 * what users see (dates in replies, listings and stats, event times) and
 * the monotonic clock for intervals and timeouts, which a wall-clock step
 * must not stretch or cut short.
 */
#include "wire.h"

#include <time.h>

int64_t
aspen_clock_now_ms(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_REALTIME, &ts);
   return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
aspen_clock_mono_ms(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_MONOTONIC, &ts);
   return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
