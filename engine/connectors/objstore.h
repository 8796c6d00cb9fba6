/*
 * objstore.h - the $emit sinks that write files to an object store (S3:
 * sink_emit_s3.c, Azure Blob Storage: sink_emit_azure_blob.c) share one
 * core (objstore.c): the options (bucket or container, path, config
 * {writeOptions, delimiter, outputFormat, compression}), the files being
 * filled, and their uploads through libcurl's multi interface. A backend
 * says how a request to its store is made and signed.
 *
 * The connection kinds' options are read by their sinks through the
 * accessors below (conn_s3.c, conn_azure_blob.c).
 */
#ifndef ASPEN_ENGINE_CONNECTORS_OBJSTORE_H
#define ASPEN_ENGINE_CONNECTORS_OBJSTORE_H

#include "connectors/aws.h"
#include "runtime/sink.h"

#include <curl/curl.h>

/* One request of an upload: the probe at start, a whole object, or a step
 * of a multipart one (a file of more than one part: begin, each part,
 * then commit, which makes the object appear whole). */
typedef enum {
   ASPEN_OBJ_PROBE,     /* the bucket itself: it exists, credentials work */
   ASPEN_OBJ_PUT,       /* object `key` is `body` */
   ASPEN_OBJ_MP_BEGIN,  /* start a multipart upload of `key` */
   ASPEN_OBJ_MP_PART,   /* part `part` (1-based) is `body` */
   ASPEN_OBJ_MP_COMMIT, /* `body` (commit_body's) completes the upload */
} aspen_objreq_kind_t;

typedef struct {
   aspen_objreq_kind_t kind;
   const char *key;
   const void *body;
   size_t len;
   int part;
   const char *upload_id; /* what MP_BEGIN's answer named, or NULL */
} aspen_objreq_t;

/* What one object store provides to the core. */
typedef struct {
   const char *label;         /* "S3": in messages */
   const char *operator_name; /* "S3EmitOperator": DLQ entries */
   const char *bucket_opt;    /* "bucket" or "container" */
   bool has_region;           /* the stage takes a `region` */
   const aspen_conn_ops_t *kind; /* the connection kind it writes through */
   int32_t conn_code;         /* the error code of an unreachable store */
   int32_t code;              /* the error code of a refused request */
   bool mp_begin;             /* multipart uploads start with MP_BEGIN */
   /* Sets `h` up for request `req` on the connection `conn` to `bucket`:
    * the URL, method, body and headers (into *hdrs, freed by the caller)
    * and the signature. False (err set) when it cannot be made. */
   bool (*request)(const aspen_conn_t *conn, const char *region,
                   const char *bucket, const aspen_objreq_t *req, CURL *h,
                   struct curl_slist **hdrs, aspen_error_t *err);
   /* The body of MP_COMMIT for parts 1..n, whose answers gave `etags`
    * (their ETag headers, as sent), into a new string. */
   char *(*commit_body)(int n, char *const *etags);
   /* The upload id in MP_BEGIN's answer `resp`, into a new string, or
    * NULL when it has none. */
   char *(*upload_id)(const char *resp);
} aspen_objstore_backend_t;

/* The text between <tag> and </tag> in the XML `xml` into out (empty
 * when it is not there). */
void aspen__objstore_xml_field(const char *xml, const char *tag, char *out,
                               size_t size);

/* The sink ops' work, for the sink of backend `be`. */
bool aspen__objstore_parse(const aspen_objstore_backend_t *be,
                           const bson_t *spec, aspen_parse_ctx_t *pc,
                           aspen_error_t *err);
bool aspen__objstore_open(const aspen_objstore_backend_t *be,
                          aspen_runtime_t *rt, const bson_t *spec,
                          void **state, aspen_error_t *err);
bool aspen__objstore_write(aspen_runtime_t *rt, void *state,
                           const bson_t *doc, aspen_error_t *err);
bool aspen__objstore_flush(aspen_runtime_t *rt, void *state,
                           aspen_error_t *err);
void aspen__objstore_close(void *state);

/* Appends `s` to the string `out` (of `size` bytes) percent-encoded as
 * SigV4 and SharedKey sign it: RFC 3986's unreserved characters stay, and
 * '/' with `keep_slash` (a path; a query value has it encoded). */
void aspen__objstore_encode(const char *s, bool keep_slash, char *out,
                            size_t size);

/* The S3 connection's AWS options, or NULL when `conn` is no S3 one. */
const aspen_aws_t *aspen__conn_s3_aws(const aspen_conn_t *conn);

/* An Azure Blob Storage connection's options. */
typedef struct {
   char *account;   /* azure.storageAccountName */
   char *principal; /* azure.servicePrincipalId (listed, not used) */
   char *endpoint;  /* the blob service URL, without a trailing '/' */
   unsigned char key[128]; /* accountKey, decoded: a secret */
   size_t key_len;  /* 0: no key (the start fails) */
} aspen_azure_blob_t;

/* The Azure Blob connection's options, or NULL when `conn` is no such
 * one. */
const aspen_azure_blob_t *aspen__conn_azure_blob(const aspen_conn_t *conn);

#endif /* ASPEN_ENGINE_CONNECTORS_OBJSTORE_H */
