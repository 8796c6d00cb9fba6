/*
 * checkpoint.h - the on-disk checkpoint of one stream processor
 * (checkpoint.c): framing with a format version, length and CRC-32C, and
 * atomic writes that keep the previous good checkpoint.
 *
 * A checkpoint file is a 20-byte header followed by one BSON document (the
 * body, built and read by the runtime in checkpointing.c):
 *
 *    0  8  magic "ASPNCKPT"
 *    8  4  format version (little-endian), ASPEN_CHECKPOINT_VERSION
 *   12  4  body length in bytes (little-endian)
 *   16  4  CRC-32C of the body (little-endian)
 *   20  n  body: {processorId, takenAt, ...}
 *
 * A processor's checkpoints live in <stateDir>/checkpoints/<processorId>/:
 * "current" and "previous". Writing goes to "tmp" (fsync), renames current
 * to previous, renames tmp to current, then fsyncs the directory, so a
 * crash at any point leaves at least one complete checkpoint, and a torn or
 * corrupted "current" is detected by its length or checksum and the
 * "previous" one is used instead.
 *
 * Everything here is blocking file I/O: processor and command threads only,
 * never the event loop.
 */
#ifndef ASPEN_ENGINE_RUNTIME_CHECKPOINT_H
#define ASPEN_ENGINE_RUNTIME_CHECKPOINT_H

#include "wire.h"

#define ASPEN_CHECKPOINT_VERSION 1u
#define ASPEN_CHECKPOINT_HEADER_LEN 20u
/* A body larger than this is refused (and never read). */
#define ASPEN_CHECKPOINT_MAX_BODY (256u * 1024 * 1024)

/* Frames `body` as a checkpoint file. Returns a new buffer (free()) and its
 * length in *len. Never NULL. */
uint8_t *aspen__checkpoint_encode(const bson_t *body, size_t *len);

/* Checks and unframes a checkpoint file of `len` bytes. On success `body`
 * is initialised with a copy of the body and true returned; on a short,
 * truncated, oversized, foreign, newer-version or corrupted input (checksum
 * or BSON validation) false with err saying which, `body` empty. When
 * `processor_id` is not NULL the body's processorId must equal it. */
bool aspen__checkpoint_decode(const uint8_t *data, size_t len,
                              const char *processor_id, bson_t *body,
                              aspen_error_t *err);

/* True when `id` (`len` bytes) is a processor id as aspen makes them: an
 * ObjectId's 24 lowercase hex digits, so it is safe in a file name. */
bool aspen__proc_id_is_valid(const char *id, size_t len);

/* The directory of processor `processor_id`'s checkpoints (no I/O); the id
 * must be valid (aspen__proc_id_is_valid). */
void aspen__checkpoint_dir(const char *state_dir, const char *processor_id,
                           char *out, size_t n);

/* Writes `body` as the new current checkpoint in `dir` (created with its
 * parents if missing), keeping the old current as previous. False with err
 * set on any I/O error; what was on disk stays usable. */
bool aspen__checkpoint_write(const char *dir, const bson_t *body,
                             aspen_error_t *err);

/* Loads the newest good checkpoint from `dir`: current, else previous. A
 * file that exists but does not decode is reported in the log (with `ctx`,
 * the processor's name) and skipped. True with `body` initialised when one
 * was found (*used_previous says whether it was the previous one); false
 * with `body` empty when there is none. */
bool aspen__checkpoint_load(const char *dir, const char *processor_id,
                            const char *ctx, bson_t *body,
                            bool *used_previous);

/* Loads and checks one checkpoint file, `name` ("current" or "previous")
 * in `dir`. True with `body` initialised when it decodes; false with `body`
 * empty when it is missing or unusable (the latter reported in the log with
 * `ctx`, the processor's name). */
bool aspen__checkpoint_load_file(const char *dir, const char *name,
                                 const char *processor_id, const char *ctx,
                                 bson_t *body);

/* Exactly-once restore (checkpointing.c): which checkpoint matches what the
 * sink's transactions committed. `current` and `previous` are the two
 * bodies (NULL when missing or unusable), `committed_ids` an array of the
 * checkpointId strings the broker holds with the committed positions.
 * Returns 0 for current, 1 for previous, -1 when neither matches. A
 * checkpoint whose id was committed wins, current first; when no id
 * matches, one that holds no positions (taken before any input) is
 * consistent with nothing committed. Pure: no I/O. */
int aspen__checkpoint_pick_committed(const bson_t *current,
                                     const bson_t *previous,
                                     const bson_t *committed_ids);

/* Deletes "current" in `dir` (exactly-once: its transaction never
 * committed and "previous" was restored), so that the next write keeps
 * "previous" as the fallback. */
void aspen__checkpoint_discard_current(const char *dir);

/* Removes the checkpoints in `dir` (a processor dropped or started fresh).
 * Missing files are fine. */
void aspen__checkpoint_remove(const char *dir);

#endif /* ASPEN_ENGINE_RUNTIME_CHECKPOINT_H */
