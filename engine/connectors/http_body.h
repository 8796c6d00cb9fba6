/*
 * http_body.h - a response body that libcurl writes into, for every
 * connector that talks HTTP ($https and $externalFunction, Kinesis, the
 * Schema Registry): CURLOPT_WRITEFUNCTION aspen__http_body_write with
 * CURLOPT_WRITEDATA the body. Kept NUL-terminated; a body that would pass
 * `max` bytes aborts the transfer (CURLE_WRITE_ERROR) with too_big set.
 * Internal to connectors/.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_HTTP_BODY_H
#define ASPEN_ENGINE_CONNECTORS_HTTP_BODY_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
   char *data; /* NULL until something arrives */
   size_t len, cap;
   size_t max; /* set by the owner before the transfer */
   bool too_big;
} aspen_http_body_t;

/* libcurl's write callback; `arg` is the aspen_http_body_t. */
size_t aspen__http_body_write(char *ptr, size_t size, size_t nmemb,
                              void *arg);
/* Frees the data; the body is empty (and keeps its max) afterwards. */
void aspen__http_body_free(aspen_http_body_t *b);

#endif /* ASPEN_ENGINE_CONNECTORS_HTTP_BODY_H */
