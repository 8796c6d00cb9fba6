/*
 * catalog.c - looking kinds up in the catalog the runtime is handed
 * (catalog.h).
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
