/*
 * source_change_stream.h - the MongoDB change-stream $source: what the
 * pipeline parser asks it about its options, and the resume-token accessor
 * the checkpoint code reads. The source itself is
 * aspen_source_change_stream_ops (source_change_stream.c), listed in
 * sources.c.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_SOURCE_CHANGE_STREAM_H
#define ASPEN_ENGINE_CONNECTORS_SOURCE_CHANGE_STREAM_H

#include "runtime/pipeline.h"

/* True if `key` is a top-level $source option of a change-stream source
 * (db, coll, config, readPreference, ...). Any thread. */
bool aspen__change_stream_is_option(const char *key);

/* Validates the change-stream options of `src->spec` with ASP's messages
 * (code 420, path from `pc`). Called by the pipeline parser once the source
 * kind is known; true when they are valid. Any thread (no I/O). */
bool aspen__change_stream_check(const aspen_source_spec_t *src,
                                aspen_parse_ctx_t *pc, aspen_error_t *err);

/* Copies the last resume token the source has seen (the change event's
 * `_id`, or the cursor's post-batch token) into `out` (initialized by the
 * call). False, with `out` empty, when there is none yet. `state` is the
 * source state the runtime holds for a change-stream source. Any thread:
 * the token is guarded by the source's own lock. */
bool aspen__change_stream_resume_token(void *state, bson_t *out);

#endif /* ASPEN_ENGINE_CONNECTORS_SOURCE_CHANGE_STREAM_H */
