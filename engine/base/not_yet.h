/*
 * not_yet.h - the "not yet" list (not_yet.def): what ASP documents and
 * this version of aspen lacks, refused by name wherever a parser would
 * otherwise call it unknown.
 */
#ifndef ASPEN_ENGINE_BASE_NOT_YET_H
#define ASPEN_ENGINE_BASE_NOT_YET_H

#include "base/parse.h"
#include "wire.h"

#include <stdbool.h>

/* Whether `name` of `scope` is on the list (a connection type matched
 * without case); *what gets its row's note (NULL for none). */
bool aspen_not_yet_find(const char *scope, const char *name,
                        const char **what);

/* Sets err (StreamProcessorInvalidOptions, `code` when non-zero) to
 * "<subject> is supported by Atlas Stream Processing but not yet by this
 * version of aspen" plus " (<what>)" when the row has a note, if `name`
 * of `scope` is on the list; false (err untouched) when it is not. */
bool aspen_not_yet_error(const char *scope, const char *name,
                         const char *subject, int code, aspen_error_t *err);

/* For a parser's unknown option `key` of `scope` ("$source", "$emit"):
 * when the pair is on the list, sets err to the pipeline error (code 420,
 * at pc's position and `option`) saying "<scope>.<key> is supported by
 * Atlas Stream Processing but not yet ..." and returns true; false (err
 * untouched) when it is not, and the caller says "unknown field". */
bool aspen_not_yet_parse_error(const char *scope, const char *key,
                               const aspen_parse_ctx_t *pc,
                               const char *option, aspen_error_t *err);

#endif /* ASPEN_ENGINE_BASE_NOT_YET_H */
