/*
 * conn_lambda.h - AWS Lambda connections (conn_lambda.c), which
 * $externalFunction (stage_external_function.c) invokes functions through
 * (the Lambda Invoke API, requests signed with AWS SigV4 by aws.c).
 */
#ifndef ASPEN_ENGINE_CONNECTORS_CONN_LAMBDA_H
#define ASPEN_ENGINE_CONNECTORS_CONN_LAMBDA_H

#include "connectors/aws.h"
#include "connectors/connections.h"

/* What an aws-lambda connection holds (aspen_conn_t.opts of its kind):
 * its AWS part as every AWS kind's (aws.c: role, region, endpoint, keys),
 * signed through aspen__aws_sign. */
typedef struct {
   aspen_aws_t aws;   /* region defaults to us-east-1; keys always set */
   char *endpoint;    /* "https://lambda.<region>.amazonaws.com" or the
                       * configured one (a local Lambda-compatible server) */
   bson_t listed;
} aspen_conn_lambda_t;

/* The Lambda side of `conn`, or NULL when it is of another kind. Any
 * thread. */
const aspen_conn_lambda_t *aspen__conn_lambda(const aspen_conn_t *conn);

#endif /* ASPEN_ENGINE_CONNECTORS_CONN_LAMBDA_H */
