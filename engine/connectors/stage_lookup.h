/*
 * stage_lookup.h - the $lookup stage (stage_lookup.c) as the pipeline
 * sees it: a batched $lookup holds documents back, and the pipeline's
 * flush lets them go.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_STAGE_LOOKUP_H
#define ASPEN_ENGINE_CONNECTORS_STAGE_LOOKUP_H

#include "runtime/pipeline.h"

extern const aspen_stage_ops_t aspen_stage_lookup_ops;

/* Runs the held batch's query and emits its documents in input order (a
 * $lookup stage `st` that holds none: nothing). Processor thread. */
void aspen__lookup_flush(aspen_stage_t *st);

#endif /* ASPEN_ENGINE_CONNECTORS_STAGE_LOOKUP_H */
