/*
 * not_yet.c - stages ASP supports that this build of aspen does not run
 * yet. Each is in the stage table with a parser that refuses it by name, so
 * a pipeline is never accepted here and then silently does something else.
 */
#include "runtime/pipeline.h"

static bool
not_yet_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
              aspen_error_t *err)
{
   (void) arg;
   (void) pc;
   aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                   "%s is supported by Atlas Stream Processing but not yet "
                   "by this version of aspen",
                   st->ops->name);
   return false;
}

#define NOT_YET(var, stage)                                                    \
   const aspen_stage_ops_t var = {                                            \
      .name = stage, .operator_name = stage, .parse = not_yet_parse}

NOT_YET(aspen_stage_throttle_ops, "$throttle");
