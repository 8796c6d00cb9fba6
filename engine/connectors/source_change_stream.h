/*
 * source_change_stream.h - the MongoDB change-stream $source: the
 * resume-token accessor the checkpoint code reads. The source itself
 * (options included) is aspen_source_change_stream_ops
 * (source_change_stream.c), the $source of the atlas row of
 * connectors.def.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_SOURCE_CHANGE_STREAM_H
#define ASPEN_ENGINE_CONNECTORS_SOURCE_CHANGE_STREAM_H

#include "runtime/pipeline.h"

/* Copies the last resume token the source has seen (the change event's
 * `_id`, or the cursor's post-batch token) into `out` (initialized by the
 * call). False, with `out` empty, when there is none yet. `state` is the
 * source state the runtime holds for a change-stream source. Any thread:
 * the token is guarded by the source's own lock. */
bool aspen__change_stream_resume_token(void *state, bson_t *out);

/* What stats show of a change stream $source's published position
 * `token` (NULL or empty: none), in a processor whose pipeline definition
 * is `pipeline`: changeStreamState, and with initialSync its phase
 * ({initialSync: {phase, ...}}). Command thread. */
void aspen__change_stream_stats_append(const bson_t *pipeline,
                                       const bson_t *token, bson_t *st);
/* What a change stream $source's operatorStats entry adds from the
 * figures it published (aspen_proc_source_figures): with initialSync,
 * targetStats (one {db, coll, inputMessageCount, inputMessageSize,
 * initialSync: {estimatedDocs, copiedDocs, status}} per collection, in
 * the sync's order; sizes divided by `scale`) and initialSync (the sums).
 * Command thread. */
void aspen__change_stream_operator_stats(const bson_t *figures,
                                         int64_t scale, bson_t *op);
/* The catalog's check of a whole pipeline: no window stage after a
 * $source with initialSync enabled. */
bool aspen__change_stream_check(const aspen_pipeline_t *pl,
                                aspen_error_t *err);

#endif /* ASPEN_ENGINE_CONNECTORS_SOURCE_CHANGE_STREAM_H */
