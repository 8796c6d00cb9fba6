/*
 * http_call.h - what $https (stage_https.c) and $externalFunction
 * (stage_external_function.c) share: one HTTP request per document through
 * a libcurl multi handle on the processor's thread, a bounded window of
 * requests in flight released in input order, and the answer set in the
 * document or handled as its onError says. stage_https.c holds the
 * machinery (its header comment says how it waits and drains); each stage's
 * file parses its own options into an aspen_http_call_t. Internal to
 * connectors/.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_HTTP_CALL_H
#define ASPEN_ENGINE_CONNECTORS_HTTP_CALL_H

#include "connectors/conn_https.h"
#include "connectors/conn_lambda.h"
#include "connectors/http_body.h"
#include "runtime/pipeline.h"

#include <curl/curl.h>

/* The largest response body kept (a BSON document's limit). */
#define ASPEN_HTTP_MAX_BODY (16u * 1024 * 1024)

/* onError */
enum { ASPEN_HTTP_ON_ERROR_DLQ, ASPEN_HTTP_ON_ERROR_IGNORE,
       ASPEN_HTTP_ON_ERROR_FAIL };

/* A request in flight, with the document it is for (copied). */
typedef struct {
   CURL *easy;
   bool done;
   bson_t *doc, *meta;
   int64_t ts_ms;
   uint64_t seq;      /* the source input it came from (pl->cur_seq) */
   char *url;
   char *body;
   struct curl_slist *hdrs;
   aspen_http_body_t resp;
   char fn_error[64]; /* Lambda's X-Amz-Function-Error, or "" */
   CURLcode rc;
   char errbuf[CURL_ERROR_SIZE];
} aspen_http_req_t;

/* A parameter or header: a name and its expression. */
typedef struct {
   char *name;
   aspen_expr_t *expr;
} aspen_http_kv_t;

typedef struct {
   /* $https: its connection and request options. */
   const aspen_conn_https_t *conn;
   char *path;                /* a constant path, or NULL */
   aspen_expr_t *path_expr;   /* or an expression */
   aspen_http_kv_t *params, *headers;
   int n_params, n_headers;
   char method[8];
   long connect_timeout_s, request_timeout_s;
   bool parse_json_strings;
   /* $externalFunction: its connection (NULL for $https), the function
    * and how it is invoked. */
   const aspen_conn_lambda_t *lambda;
   char *function;
   bool async;
   /* Both. */
   char *conn_name;
   char *as;                  /* NULL: the answer is not kept */
   int on_error;              /* ASPEN_HTTP_ON_ERROR_* */
   /* The payload pipeline and what its last stage gave. */
   aspen_stage_t *payload;
   int n_payload;
   aspen_chain_t payload_chain;
   bson_t *payload_out;
   /* The requests: a ring of `cap` slots, `count` from `head`. */
   CURLM *multi;
   aspen_http_req_t *ring;
   int cap, head, count;
   bool failed;
} aspen_http_call_t;

/* Starts parsing stage `stage`'s argument `arg` (st's): false with err
 * set unless it is an object; else st->state is a new aspen_http_call_t
 * with onError dlq, freed by aspen__http_call_destroy. */
aspen_http_call_t *aspen__http_call_new(aspen_stage_t *st, const char *stage,
                                        const bson_iter_t *arg,
                                        aspen_parse_ctx_t *pc,
                                        aspen_error_t *err);
/* Parses the option at `it` if both stages have it (connectionName, as,
 * onError, payload): 1 parsed, 0 not one of them, -1 invalid (err set). */
int aspen__http_call_parse_shared(aspen_stage_t *st, aspen_http_call_t *h,
                                  const char *stage, const bson_iter_t *it,
                                  aspen_parse_ctx_t *pc, aspen_error_t *err);
/* The connection h->conn_name names; NULL with err set when it is missing
 * or unknown. */
const aspen_conn_t *aspen__http_call_conn(const aspen_http_call_t *h,
                                          const char *stage,
                                          aspen_parse_ctx_t *pc,
                                          aspen_error_t *err);
/* IDL's "BSON field '<stage>.<field>' is the wrong type" error; false. */
bool aspen__http_call_wrong_type(aspen_error_t *err, aspen_parse_ctx_t *pc,
                                 const char *stage, const char *field,
                                 const bson_iter_t *it, const char *expected);
/* Parses `payload` (an array of $project, $addFields, $replaceRoot and
 * $set) for stage `stage` ("$https") into h; false with err set. */
bool aspen__http_call_parse_payload(aspen_stage_t *st, aspen_http_call_t *h,
                                    const char *stage, const bson_iter_t *it,
                                    aspen_parse_ctx_t *pc, aspen_error_t *err);
/* Sizes the window (`cap` requests in flight) once parsing is done. */
void aspen__http_call_ready(aspen_http_call_t *h, int cap);
/* The stage ops over st->state, an aspen_http_call_t (processor thread). */
bool aspen__http_call_push(aspen_stage_t *st, const aspen_sdoc_t *in,
                           aspen_error_t *err);
void aspen__http_call_flush(aspen_stage_t *st);
void aspen__http_call_destroy(aspen_stage_t *st);

#endif /* ASPEN_ENGINE_CONNECTORS_HTTP_CALL_H */
