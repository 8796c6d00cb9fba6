/*
 * aws.h - what AWS connections share (aws.c): the config entry's AWS part
 * (ASP's aws.roleArn, plus aspen's own region, endpoint and local
 * credentials, so that an emulator such as moto can serve), its listing
 * without secrets, and signing a libcurl request with AWS Signature
 * Version 4 (libcurl's CURLOPT_AWS_SIGV4): the one home of AWS
 * credentials, region and endpoint for every AWS kind (conn_s3.c,
 * conn_kinesis.c, conn_lambda.c).
 */
#ifndef ASPEN_ENGINE_CONNECTORS_AWS_H
#define ASPEN_ENGINE_CONNECTORS_AWS_H

#include "connectors/connections.h"

#include <curl/curl.h>

typedef struct {
   char *role_arn;    /* aws.roleArn (ASP's; listed, not used locally) */
   char *region;      /* region: the default of a stage's `region` */
   char *endpoint;    /* endpoint: "http://127.0.0.1:4566"; NULL: AWS's */
   char *access_key;  /* credentials.accessKeyId (listed) */
   char *secret_key;  /* credentials.secretAccessKey: a secret */
   char *session_token; /* credentials.sessionToken: a secret, or NULL */
} aspen_aws_t;

/* The config keys aspen_aws_parse reads (add them to the kind's keys). */
#define ASPEN_AWS_KEYS "aws", "region", "endpoint", "credentials"

/* Reads the AWS part of config entry `entry` into *aws (zeroed first).
 * Without credentials, the environment's AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN are taken when set. `extra`
 * (NULL-terminated, or NULL) are further keys allowed in the `aws`
 * object, copied into `listed_aws` when given. False with err naming the
 * config key; *aws needs aspen_aws_cleanup either way. */
bool aspen__aws_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry,
                      const char *const *extra, aspen_aws_t *aws,
                      bson_t *listed_aws, aspen_error_t *err);
void aspen__aws_cleanup(aspen_aws_t *aws);

/* Appends the listing of `aws` (no secret) and the `aws` object `extra`
 * (what aspen__aws_parse kept of it) to `doc`. */
void aspen__aws_list(const aspen_aws_t *aws, const bson_t *listed_aws,
                     bson_t *doc);

/* The base URL of `service` in `region` ("https://s3.eu-west-1.amazonaws.com"
 * or the endpoint), into out. */
void aspen__aws_base_url(const aspen_aws_t *aws, const char *service,
                         const char *region, char *out, size_t size);

/* Makes libcurl sign request `h` with SigV4 for `service` in `region`,
 * adding what it needs to *hdrs (the session token, the payload hash
 * `payload_sha256`, hex, which S3 wants as x-amz-content-sha256). The
 * strings are copied by libcurl. False (err set) without credentials. */
bool aspen__aws_sign(CURL *h, struct curl_slist **hdrs, const aspen_aws_t *aws,
                     const char *service, const char *region,
                     const char *payload_sha256, aspen_error_t *err);

/* The SHA-256 of `len` bytes at `data` as 64 hex digits and a NUL. */
void aspen__aws_sha256_hex(const void *data, size_t len, char out[65]);

#endif /* ASPEN_ENGINE_CONNECTORS_AWS_H */
