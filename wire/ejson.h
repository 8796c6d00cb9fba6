/*
 * ejson.h - a fast path for the commonest Extended JSON: plain JSON objects
 * of strings, numbers, booleans, nulls, objects and arrays, read into BSON
 * and written back as relaxed Extended JSON, with byte-for-byte the results
 * of libbson's bson_init_from_json and bson_as_relaxed_extended_json.
 *
 * Each function does only what it is sure of and otherwise says so by
 * returning false, leaving the caller to run libbson's own reader or
 * writer, which then gives the same result (or error) as always: the
 * reader declines any '$' key (Extended JSON's wrappers), string escapes,
 * bytes outside printable ASCII, exponents and numbers libbson might
 * refuse; the writer declines every BSON type but those six plus int64,
 * ObjectId and Date (from 1970 to 9999), text that is not well-formed
 * UTF-8, non-finite doubles and malformed BSON.
 *
 * Both write into a caller-owned buffer that is reused across calls.
 * Thread-safety: pure functions; one buffer per thread.
 */
#ifndef ASPEN_WIRE_EJSON_H
#define ASPEN_WIRE_EJSON_H

#include "bsonw.h"

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>

/* Reads the JSON object text[0 .. len) (whitespace around it allowed) into
 * `w` (reset first) and points `out` at the result; false, `out` empty, if
 * it declines. */
bool aspen_ejson_read(const char *text, size_t len, aspen_bsonw_t *w,
                      bson_t *out);

/* A growable text buffer for aspen_ejson_write. */
typedef struct {
   char *data;
   size_t len;
   size_t cap;
} aspen_ejson_text_t;

void aspen_ejson_text_cleanup(aspen_ejson_text_t *t);

/* Writes `doc` as relaxed Extended JSON into `t` (replacing its text, NUL
 * terminated, length in t->len); false if it declines. */
bool aspen_ejson_write(const bson_t *doc, aspen_ejson_text_t *t);

#endif /* ASPEN_WIRE_EJSON_H */
