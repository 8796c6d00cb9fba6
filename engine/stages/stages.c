/*
 * stages.c - the stage table: which stages exist and where each may stand.
 * The stages themselves live one file per stage or small family, here in
 * stages/ (stage_*.c, window.c, not_yet.c) and, for those that talk to a
 * peer, in connectors/.
 *
 * Placement follows ASP's table (../shared/spec/asp-semantics.md §1.3).
 */
#include "stages/stages.h"

#include <string.h>

extern const aspen_stage_ops_t aspen_stage_project_ops;
extern const aspen_stage_ops_t aspen_stage_add_fields_ops;
extern const aspen_stage_ops_t aspen_stage_set_ops;
extern const aspen_stage_ops_t aspen_stage_unset_ops;
extern const aspen_stage_ops_t aspen_stage_replace_root_ops;
extern const aspen_stage_ops_t aspen_stage_replace_with_ops;
extern const aspen_stage_ops_t aspen_stage_unwind_ops;
extern const aspen_stage_ops_t aspen_stage_merge_ops;
extern const aspen_stage_ops_t aspen_stage_emit_ops;
extern const aspen_stage_ops_t aspen_stage_cached_lookup_ops;
extern const aspen_stage_ops_t aspen_stage_tumbling_ops;
extern const aspen_stage_ops_t aspen_stage_hopping_ops;
extern const aspen_stage_ops_t aspen_stage_session_ops;
extern const aspen_stage_ops_t aspen_stage_group_ops;
extern const aspen_stage_ops_t aspen_stage_sort_ops;
extern const aspen_stage_ops_t aspen_stage_limit_ops;
extern const aspen_stage_ops_t aspen_stage_count_ops;
extern const aspen_stage_ops_t aspen_stage_match_ops;
extern const aspen_stage_ops_t aspen_stage_validate_ops;
extern const aspen_stage_ops_t aspen_stage_redact_ops;
extern const aspen_stage_ops_t aspen_stage_lookup_ops;
extern const aspen_stage_ops_t aspen_stage_https_ops;
extern const aspen_stage_ops_t aspen_stage_external_function_ops;
extern const aspen_stage_ops_t aspen_stage_set_stream_meta_ops;
extern const aspen_stage_ops_t aspen_stage_throttle_ops;

/* ---- the table ---------------------------------------------------------- */

#define MW (ASPEN_PLACE_MAIN | ASPEN_PLACE_WINDOW)
#define M ASPEN_PLACE_MAIN
#define W ASPEN_PLACE_WINDOW
#define S ASPEN_PLACE_SINK
#define O ASPEN_SPEC_OPTIONS

static const struct {
   const char *name;
   const aspen_stage_ops_t *ops;
   unsigned place;
} table[] = {
   {"$addFields", &aspen_stage_add_fields_ops, MW},
   {"$project", &aspen_stage_project_ops, MW},
   {"$replaceRoot", &aspen_stage_replace_root_ops, MW | O},
   {"$set", &aspen_stage_set_ops, MW},
   {"$redact", &aspen_stage_redact_ops, MW},
   {"$match", &aspen_stage_match_ops, MW},
   {"$replaceWith", &aspen_stage_replace_with_ops, MW},
   {"$unset", &aspen_stage_unset_ops, MW},
   {"$unwind", &aspen_stage_unwind_ops, MW},
   {"$validate", &aspen_stage_validate_ops, MW | O},
   {"$lookup", &aspen_stage_lookup_ops, MW},
   {"$https", &aspen_stage_https_ops, MW},
   {"$externalFunction", &aspen_stage_external_function_ops, MW},
   {"$cachedLookup", &aspen_stage_cached_lookup_ops, M | O},
   {"$setStreamMeta", &aspen_stage_set_stream_meta_ops, M},
   {"$throttle", &aspen_stage_throttle_ops, M},
   {"$tumblingWindow", &aspen_stage_tumbling_ops, M | O},
   {"$hoppingWindow", &aspen_stage_hopping_ops, M | O},
   {"$sessionWindow", &aspen_stage_session_ops, M | O},
   {"$merge", &aspen_stage_merge_ops, S | O},
   {"$emit", &aspen_stage_emit_ops, S | O},
   {"$group", &aspen_stage_group_ops, W},
   {"$sort", &aspen_stage_sort_ops, W},
   {"$count", &aspen_stage_count_ops, W},
   {"$limit", &aspen_stage_limit_ops, W},
};

const aspen_stage_ops_t *
aspen_stage_lookup(const char *name, unsigned *place)
{
   for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
      if (strcmp(table[i].name, name) == 0) {
         *place = table[i].place;
         return table[i].ops;
      }
   }
   *place = 0;
   return NULL;
}
