/*
 * vars.h - variable substitution (vars.c): user variables written into a
 * pipeline (or any document) as literals, for a server that is to run it
 * without being sent the variables. Pure: no I/O, any thread.
 */
#ifndef ASPEN_ENGINE_LANG_VARS_H
#define ASPEN_ENGINE_LANG_VARS_H

#include "lang/expr.h"

/* Copies `in` (a pipeline, or part of one) to `out` with each reference to
 * one of the `n` variables ("$$name", "$$name.a.b") replaced by its value as
 * {$literal: <value>} ("$$REMOVE" when missing), leaving {$literal}
 * arguments alone. How $lookup's `let` and $merge's `$$new` reach a server
 * without sending `let` (which needs MongoDB 5.0). `out` is initialised by
 * the caller; `names` and `values` are borrowed. */
void aspen_vars_substitute(const bson_t *in, bson_t *out,
                           const char *const *names,
                           const aspen_value_t *values, size_t n);

#endif /* ASPEN_ENGINE_LANG_VARS_H */
