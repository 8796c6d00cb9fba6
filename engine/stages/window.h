/*
 * window.h - what the processor's checkpoints and memory limit ask of the
 * window stage (window.c): $tumblingWindow, $hoppingWindow and
 * $sessionWindow with their inner pipelines. Processor thread, except
 * where noted.
 */
#ifndef ASPEN_ENGINE_STAGES_WINDOW_H
#define ASPEN_ENGINE_STAGES_WINDOW_H

#include "runtime/pipeline.h"

/* Frees every open window of the window stage `st` (its state counted
 * out): what a processor that ran out of memory lets go of. */
void aspen__window_drop_state(aspen_stage_t *st);

/* Checkpoint support for the window stage `st` (window.c): the smallest
 * cur_seq of the first input of any open window (UINT64_MAX when none is
 * open), and the watermark to start from after a restore. Processor
 * thread. */
uint64_t aspen__window_min_seq(const aspen_stage_t *st);
void aspen__window_restore_watermark(aspen_stage_t *st, int64_t wm);
/* How many windows one event belongs to: ceil(interval / hopSize) for an
 * overlapping $hoppingWindow, else 1. Each costs a window per event, so the
 * work per event grows with it. Any thread, after parsing. */
int64_t aspen__window_fanout(const aspen_stage_t *st);
/* The per-partition watermarks (up to `max`: ids and watermarks), and
 * restoring one (or, with wm INT64_MIN, declaring a partition before its
 * first input), so a partition read first cannot move the watermark past
 * one not read yet. */
size_t aspen__window_partition_watermarks(const aspen_stage_t *st,
                                          int64_t *ids, int64_t *wms,
                                          size_t max);
void aspen__window_restore_partition(aspen_stage_t *st, int64_t id,
                                     int64_t wm);

#endif /* ASPEN_ENGINE_STAGES_WINDOW_H */
