/*
 * kinesis_int.h - what the Kinesis files of connectors/ share (kinesis.c):
 * the connection's AWS settings (conn_kinesis.c), and one request of the
 * Kinesis Data Streams API -- JSON over HTTP POST, signed with SigV4
 * (aws.c) -- as a libcurl easy handle that the $source
 * (source_kinesis.c) and the $emit sink (sink_emit_kinesis.c) drive on
 * their own curl multi handle, plus a call that waits (ended early by a
 * stop) for what runs once at open. Processor thread, except the
 * connection accessor.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_KINESIS_INT_H
#define ASPEN_ENGINE_CONNECTORS_KINESIS_INT_H

#include "connectors/aws.h"
#include "connectors/http_body.h"

/* The region used when neither the stage nor the connection has one. */
#define ASPEN_KINESIS_DEFAULT_REGION "us-east-1"

/* The AWS settings of Kinesis connection `conn`, or NULL when it is
 * another kind. (conn_kinesis.c) */
const aspen_aws_t *aspen__conn_kinesis_aws(const aspen_conn_t *conn);

/* Where a stage's requests go: the connection's credentials, the region
 * (the stage's, else the connection's, else the default) and the URL. */
typedef struct {
   const aspen_aws_t *aws; /* borrowed from the connection */
   char region[64];
   char url[512];
   char conn_name[128]; /* for messages */
} aspen_kinesis_target_t;

void aspen__kinesis_target_init(aspen_kinesis_target_t *t,
                                const aspen_conn_t *conn, const char *region);

/* How a request ended. */
typedef enum {
   ASPEN_KINESIS_OK,
   /* Try again later: throttled (ProvisionedThroughputExceeded,
    * LimitExceeded, ...), a 5xx, or the endpoint not reachable. */
   ASPEN_KINESIS_RETRY,
   /* ExpiredIteratorException: get a new shard iterator. */
   ASPEN_KINESIS_EXPIRED,
   /* The credentials were refused (403, UnrecognizedClient, signature,
    * access denied): the processor fails. */
   ASPEN_KINESIS_AUTH,
   /* Anything else the service refused (no such stream, invalid
    * argument): the processor fails. */
   ASPEN_KINESIS_FATAL,
} aspen_kinesis_status_t;

/* Classifies a finished exchange: transport result `cc` (CURLE_OK when an
 * answer came), HTTP status `http` and the answer's error type `type`
 * (its "__type", after any '#'; NULL or "" when none). Pure. */
aspen_kinesis_status_t aspen__kinesis_classify(CURLcode cc, long http,
                                               const char *type);

/* One request. `owner` and `tag` are the caller's. */
typedef struct {
   CURL *h;
   struct curl_slist *hdrs;
   char *body;
   aspen_http_body_t resp;
   char op[40];
   void *owner;
   int tag;
   int64_t started_ms; /* monotonic */
} aspen_kinesis_req_t;

/* A request for operation `op` ("GetRecords") with JSON body `body`
 * (relaxed Extended JSON of plain strings and numbers), ready for
 * curl_easy_perform or a multi handle. NULL with err set (no credentials:
 * code 460). */
aspen_kinesis_req_t *aspen__kinesis_req_new(const aspen_kinesis_target_t *t,
                                            const char *op, const bson_t *body,
                                            aspen_error_t *err);
/* Frees `r` (NULL is a no-op); it must not be in a multi handle. */
void aspen__kinesis_req_destroy(aspen_kinesis_req_t *r);

/* After `r` ended with `cc`: its answer parsed into *reply (always
 * initialised; empty on failure) and how it ended; on anything but OK,
 * `msg` holds "<operation>: <error type>: <message>" or the transport
 * error. */
aspen_kinesis_status_t aspen__kinesis_req_result(aspen_kinesis_req_t *r,
                                                 CURLcode cc, bson_t *reply,
                                                 char *msg, size_t size);

/* Calls `op` and waits for the answer, retrying RETRY outcomes until
 * `timeout_ms` passed or `stop(arg)` says so (NULL: never); a request in
 * flight is abandoned as soon as it does (aspen__http_easy_perform). For
 * what runs once when a stage opens. */
aspen_kinesis_status_t aspen__kinesis_call(const aspen_kinesis_target_t *t,
                                           const char *op, const bson_t *body,
                                           bson_t *reply, int64_t timeout_ms,
                                           bool (*stop)(void *), void *arg,
                                           char *msg, size_t size);

/* aspen_rt_stopping for aspen__kinesis_call's `stop` (`rt` a runtime). */
bool aspen__kinesis_rt_stopping(void *rt);

/* The processor error for a failed outcome: "Kinesis <what> (connection
 * '<name>', stream '<stream>') failed: authentication failed: <msg>" and
 * the like. */
void aspen__kinesis_fail_message(const aspen_kinesis_target_t *t,
                                 const char *what, const char *stream,
                                 aspen_kinesis_status_t st, const char *msg,
                                 char *out, size_t size);

/* Base64 (standard alphabet, padded): encode `len` bytes into a new
 * NUL-terminated string; decode into a new buffer (*out, *out_len), false
 * when `in` is not base64. */
char *aspen__kinesis_b64_encode(const void *data, size_t len);
bool aspen__kinesis_b64_decode(const char *in, size_t in_len, uint8_t **out,
                               size_t *out_len);

#endif /* ASPEN_ENGINE_CONNECTORS_KINESIS_INT_H */
