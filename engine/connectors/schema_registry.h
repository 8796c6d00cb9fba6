/*
 * schema_registry.h - Avro through a Confluent-compatible Schema Registry,
 * for the Kafka $source and $emit (`schemaRegistry` options):
 *   - the schemaRegistry connection kind's options (conn_schema_registry.c);
 *   - Avro schemas and the Avro <-> BSON mapping (avro.c, on Apache Avro C);
 *   - a registry client with a cache (schema_registry.c, on libcurl), one per
 *     source or sink, used on its processor's thread only.
 * Messages are in the Confluent wire format: a 0 byte, the schema id as a
 * big-endian 32-bit integer, then the Avro binary encoding of the value.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_SCHEMA_REGISTRY_H
#define ASPEN_ENGINE_CONNECTORS_SCHEMA_REGISTRY_H

#include "connectors/connections.h"

#include <stdint.h>

/* ---- the connection (conn_schema_registry.c) ------------------------------ */

typedef struct aspen_sr_conn aspen_sr_conn_t;

/* The registry options of `conn`, or NULL when it is no schemaRegistry
 * connection. */
const aspen_sr_conn_t *aspen__conn_schema_registry(const aspen_conn_t *conn);
/* Its URLs (without a trailing '/'); returns how many. */
int aspen__sr_conn_urls(const aspen_sr_conn_t *c, const char *const **urls);
/* Its USER_INFO credentials, both NULL without. */
void aspen__sr_conn_user(const aspen_sr_conn_t *c, const char **user,
                         const char **password);
/* Resolves `<opt>.connectionName` (the value `it`) to a schemaRegistry
 * connection of pc->conns; false with a 420 error naming `opt`
 * ("$source.schemaRegistry") when it is not a string, names no connection
 * or one of another type. */
bool aspen__sr_conn_resolve(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                            const char *opt, const aspen_conn_t **out,
                            aspen_error_t *err);

/* ---- Avro (avro.c) ---------------------------------------------------------- */

typedef struct aspen_avro_schema aspen_avro_schema_t;

/* Parses an Avro schema (JSON text). NULL with err (BadValue) saying why. */
aspen_avro_schema_t *aspen__avro_schema_new(const char *json, size_t len,
                                            aspen_error_t *err);
void aspen__avro_schema_destroy(aspen_avro_schema_t *s);
/* The full name of the schema's top-level named type (a record's
 * "namespace.name"), or NULL when it is not a named type. */
const char *aspen__avro_schema_fullname(const aspen_avro_schema_t *s);

/* Decodes one Avro binary datum into *out (always initialised; the
 * caller destroys it): a record becomes the document, any other top-level
 * value {value: ...}. ASP's mapping: records and maps -> documents, enums ->
 * their symbol, arrays, unions -> the branch's value, bytes and fixed ->
 * BinData, decimal -> Decimal128, date and timestamp-millis/micros (local
 * too) -> Date, uuid -> string. False with err on bytes that do not decode. */
bool aspen__avro_decode(aspen_avro_schema_t *s, const uint8_t *data,
                        size_t len, bson_t *out, aspen_error_t *err);
/* Encodes `doc` with schema `s` after `prefix` bytes left for the caller
 * (the wire-format header): *out (bson_malloc'd) and *len, prefix
 * included. False with err naming the field that does not fit. */
bool aspen__avro_encode(aspen_avro_schema_t *s, const bson_t *doc,
                        size_t prefix, uint8_t **out, size_t *len,
                        aspen_error_t *err);

/* ---- the registry client (schema_registry.c) ------------------------------- */

typedef struct aspen_sr aspen_sr_t;

/* A client of `conn`'s registry; `ctx` names the processor in log lines
 * (copied). */
aspen_sr_t *aspen__sr_new(const aspen_sr_conn_t *conn, const char *ctx);
void aspen__sr_destroy(aspen_sr_t *sr);

/* Decodes a message value in the Confluent wire format into *out (always
 * initialised). The writer's schema is fetched once per id and cached; an
 * unknown id, a schema that is not Avro, an unreachable registry and bytes
 * that do not decode are errors (err's message is the reason, for the
 * DLQ). A failed fetch is retried after a short back-off, not per message. */
bool aspen__sr_decode(aspen_sr_t *sr, const void *data, size_t len,
                      bson_t *out, aspen_error_t *err);

/* The id of Avro schema `schema_json` under `subject`: registered there
 * when `auto_register`, else looked up (not registered: an error). Cached
 * per subject; failures retried after a back-off as for decode. */
bool aspen__sr_subject_id(aspen_sr_t *sr, const char *subject,
                          const char *schema_json, bool auto_register,
                          uint32_t *id, aspen_error_t *err);

#endif /* ASPEN_ENGINE_CONNECTORS_SCHEMA_REGISTRY_H */
