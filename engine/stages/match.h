/*
 * match.h - the $match stage (stage_match.c) beyond its ops: what the
 * pipeline's tests ask of it.
 */
#ifndef ASPEN_ENGINE_STAGES_MATCH_H
#define ASPEN_ENGINE_STAGES_MATCH_H

#include "runtime/pipeline.h"

/* True if the $match stage `st` makes its input's field table
 * (lang/fields.h) for the stage after it, a shaping stage: decided when it
 * is parsed, from the name of the stage after it (pc->next_stage). Any
 * thread, after parsing. */
bool aspen__match_makes_table(const aspen_stage_t *st);

#endif /* ASPEN_ENGINE_STAGES_MATCH_H */
