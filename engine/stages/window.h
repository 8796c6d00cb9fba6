/*
 * window.h - the window stages (window.c: $tumblingWindow, $hoppingWindow
 * and $sessionWindow with their inner pipelines) beyond their ops, which
 * carry their checkpoint and memory hooks: what the pipeline's tests and
 * fuzz target ask of them. Processor thread, except where noted.
 */
#ifndef ASPEN_ENGINE_STAGES_WINDOW_H
#define ASPEN_ENGINE_STAGES_WINDOW_H

#include "runtime/pipeline.h"

/* Frees every open window of the window stage `st` (its state counted
 * out): what a processor that ran out of memory lets go of (the stage's
 * drop_state hook). */
void aspen__window_drop_state(aspen_stage_t *st);

/* How many windows one event belongs to: ceil(interval / hopSize) for an
 * overlapping $hoppingWindow, else 1. Each costs a window per event, so the
 * work per event grows with it. Any thread, after parsing. */
int64_t aspen__window_fanout(const aspen_stage_t *st);

#endif /* ASPEN_ENGINE_STAGES_WINDOW_H */
