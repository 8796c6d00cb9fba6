/*
 * catalog.c - looking things up in what the runtime is handed (catalog.h):
 * a stage in the catalog's stage table, a connection in the registry.
 */
#include "runtime/catalog.h"

#include <string.h>

const aspen_stage_def_t *
aspen_catalog_stage(const aspen_catalog_t *cat, const char *name)
{
   for (size_t i = 0; i < cat->n_stages; i++) {
      if (strcmp(cat->stages[i].name, name) == 0) {
         return &cat->stages[i];
      }
   }
   return NULL;
}

bool
aspen_catalog_check(const aspen_catalog_t *cat, const aspen_pipeline_t *pl,
                    const bson_t *options, const aspen_conns_t *conns,
                    bool ephemeral, aspen_error_t *err)
{
   return !cat->check || cat->check(pl, options, conns, ephemeral, err);
}

const aspen_conn_t *
aspen_conns_find(const aspen_conns_t *conns, const char *name)
{
   for (size_t i = 0; i < conns->n; i++) {
      if (strcmp(conns->items[i].name, name) == 0) {
         return &conns->items[i];
      }
   }
   return NULL;
}
