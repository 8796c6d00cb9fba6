/*
 * builtins.h - the catalog aspen ships (builtins.c): every stage of
 * stages/stages.def and every connection type of
 * connectors/connectors.def. The engine builds it here, at its top, and
 * hands it down (the registry of connections loads through it, the
 * pipeline parser gets it in its parse context), so nothing below engine.c
 * looks a stage or a connector up in a table of its own.
 */
#ifndef ASPEN_ENGINE_BUILTINS_H
#define ASPEN_ENGINE_BUILTINS_H

#include "runtime/catalog.h"

/* The built-in catalog: static, never freed. Any thread. */
const aspen_catalog_t *aspen_builtins_catalog(void);

#endif /* ASPEN_ENGINE_BUILTINS_H */
