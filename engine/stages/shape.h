/*
 * shape.h - the shaping stages (stage_shape.c) beyond their ops: the
 * switches the pipeline's tests turn to compare a fast path with the
 * general one.
 */
#ifndef ASPEN_ENGINE_STAGES_SHAPE_H
#define ASPEN_ENGINE_STAGES_SHAPE_H

#include <stdbool.h>

/* Whether a computed field that is a plain field path ("$a.b") is written
 * by copying its value's bytes (default true) or evaluated. Tests only:
 * set before a pipeline runs, on its thread. */
void aspen_shape_path_copy_set_enabled(bool on);

/* Whether a shaping stage keeps a plan per input layout (the runs it
 * copies, where its plain paths start) and runs it for the next inputs
 * with the same keys (default true), or walks every input's table. Tests
 * only, as above. */
void aspen_shape_plan_set_enabled(bool on);

/* Whether an $addFields/$set of top-level computed fields over an input
 * with none of them (its table says so) copies the input as one span and
 * appends the computed fields (default true), or walks the input like any
 * other. Tests only, as above. */
void aspen_shape_append_new_set_enabled(bool on);

#endif /* ASPEN_ENGINE_STAGES_SHAPE_H */
