/*
 * stages.h - the stage table (stages.c): every stage aspen knows by name,
 * and where each may stand in a pipeline.
 */
#ifndef ASPEN_ENGINE_STAGES_STAGES_H
#define ASPEN_ENGINE_STAGES_STAGES_H

#include "runtime/pipeline.h"

/* The stage named `name` ("$match") and its placements (ASPEN_PLACE_*
 * and ASPEN_SPEC_OPTIONS bits) in *place; NULL (and 0) for a name that is
 * no stage. */
const aspen_stage_ops_t *aspen_stage_lookup(const char *name, unsigned *place);

#endif /* ASPEN_ENGINE_STAGES_STAGES_H */
