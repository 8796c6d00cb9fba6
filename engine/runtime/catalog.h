/*
 * catalog.h - the kinds the runtime is handed instead of naming them: the
 * stage table (rows of stages/stages.def). The catalog is built at the
 * top of the engine (builtins.c) and reaches the pipeline parser in its
 * parse context, so the runtime finds a stage by looking it up here and
 * never names one. Read-only once built: any thread.
 */
#ifndef ASPEN_ENGINE_RUNTIME_CATALOG_H
#define ASPEN_ENGINE_RUNTIME_CATALOG_H

#include "runtime/pipeline.h"

/* A row of the stage table (stages/stages.def). */
typedef struct {
   const char *name;             /* "$match" */
   const aspen_stage_ops_t *ops;
   unsigned place;               /* ASPEN_PLACE_* and ASPEN_SPEC_OPTIONS bits */
} aspen_stage_def_t;

struct aspen_catalog {
   const aspen_stage_def_t *stages;
   size_t n_stages;
};

/* The stage table's row for `name` ("$match"); NULL for a name that is no
 * stage. Any thread. */
const aspen_stage_def_t *aspen_catalog_stage(const aspen_catalog_t *cat,
                                             const char *name);

#endif /* ASPEN_ENGINE_RUNTIME_CATALOG_H */
