/*
 * conn_lambda.h - AWS Lambda connections (conn_lambda.c), which
 * $externalFunction (stage_external_function.c) invokes functions through
 * (the Lambda Invoke API, requests signed with AWS SigV4).
 */
#ifndef ASPEN_ENGINE_CONNECTORS_CONN_LAMBDA_H
#define ASPEN_ENGINE_CONNECTORS_CONN_LAMBDA_H

#include "connectors/connections.h"

/* What an aws-lambda connection holds (aspen_conn_t.opts of its kind). */
typedef struct {
   char *role_arn;    /* ASP's aws.roleArn (listed; aspen signs with keys) */
   char *region;      /* "us-east-1" */
   char *endpoint;    /* "https://lambda.<region>.amazonaws.com" or the
                       * configured one (a local Lambda-compatible server) */
   char *userpwd;     /* "<accessKeyId>:<secretAccessKey>": a secret */
   char sigv4[96];    /* CURLOPT_AWS_SIGV4: "aws:amz:<region>:lambda" */
   bson_t listed;
} aspen_conn_lambda_t;

/* The Lambda side of `conn`, or NULL when it is of another kind. Any
 * thread. */
const aspen_conn_lambda_t *aspen__conn_lambda(const aspen_conn_t *conn);

#endif /* ASPEN_ENGINE_CONNECTORS_CONN_LAMBDA_H */
