/*
 * stage_external_function.c - the $externalFunction stage: one AWS Lambda
 * Invoke API call per document through an aws-lambda connection
 * (conn_lambda.c), signed with SigV4, sent and answered by the $https
 * machinery (stage_https.c, http_call.h: a bounded window of requests in
 * flight on the processor's thread, released in input order, drained
 * before the sinks flush).
 *
 * What ASP documents (sp-agg-externalFunction, checked December 2026):
 * connectionName and functionName (an ARN or a name) are required;
 * execution "sync" (default: the function's result goes to `as`) or
 * "async" (InvocationType Event: the pipeline goes on without the result);
 * `as` is required for a synchronous call that is not the last stage and
 * refused for an asynchronous one; onError (dlq default, ignore, fail)
 * covers the Invoke API's errors for both and the function's own errors
 * (X-Amz-Function-Error) for synchronous calls; payload shapes the body
 * like $https's; parallelism (default 1; above 1 only with sync) is the
 * number of calls in flight; partitionBy (only with sync and parallelism
 * above 1) groups documents per thread in ASP. aspen keeps the input order
 * over all documents, which keeps every partition's order too, so
 * partitionBy is validated and parsed but changes nothing. Mid-pipeline,
 * in windows, and as the last stage (the processor's sink).
 */
#include "connectors/connectors.h"
#include "connectors/http_call.h"

#include <stdlib.h>
#include <string.h>

static bool
wrong_type(aspen_error_t *err, aspen_parse_ctx_t *pc, const char *field,
           const bson_iter_t *it, const char *expected)
{
   return aspen__http_call_wrong_type(err, pc, "$externalFunction", field, it,
                                      expected);
}

/* True when the stage being parsed is the last of the main pipeline. */
static bool
is_last(const aspen_stage_t *st, const aspen_parse_ctx_t *pc)
{
   return !pc->in_window &&
          (uint32_t) pc->index + 1 == bson_count_keys(&st->pl->def);
}

static bool
xfn_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
          aspen_error_t *err)
{
   aspen_http_call_t *h =
      aspen__http_call_new(st, "$externalFunction", arg, pc, err);
   if (!h) {
      return false;
   }
   snprintf(h->method, sizeof h->method, "POST");
   /* ASP waits for the function's own timeout; aspen bounds a call to
    * 15 minutes, Lambda's longest. */
   h->connect_timeout_s = 30;
   h->request_timeout_s = 900;
   int64_t parallelism = 1;
   int shared;
   bool has_partition_by = false;
   bson_iter_t it;
   bson_iter_recurse(arg, &it);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if ((shared = aspen__http_call_parse_shared(st, h, "$externalFunction",
                                                  &it, pc, err)) != 0) {
         if (shared < 0) {
            goto fail;
         }
      } else if (strcmp(k, "functionName") == 0 || strcmp(k, "execution") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            wrong_type(err, pc, k, &it, "string");
            goto fail;
         }
         const char *v = bson_iter_utf8(&it, NULL);
         if (strcmp(k, "functionName") == 0) {
            if (!*v) {
               aspen_parse_error(err, pc, NULL,
                                 "$externalFunction.functionName must not be "
                                 "empty");
               goto fail;
            }
            free(h->function);
            h->function = aspen_xstrdup(v);
         } else if (strcmp(v, "sync") != 0 && strcmp(v, "async") != 0) {
            aspen_parse_error(err, pc, NULL,
                              "Enumeration value '%s' for field "
                              "'$externalFunction.execution' is not a valid "
                              "value.",
                              v);
            goto fail;
         } else {
            h->async = strcmp(v, "async") == 0;
         }
      } else if (strcmp(k, "parallelism") == 0) {
         if (!BSON_ITER_HOLDS_INT32(&it) && !BSON_ITER_HOLDS_INT64(&it)) {
            wrong_type(err, pc, k, &it, "int");
            goto fail;
         }
         parallelism = bson_iter_as_int64(&it);
         if (parallelism < 1 || parallelism > 1024) {
            aspen_parse_error(err, pc, NULL,
                              "$externalFunction.parallelism must be between "
                              "1 and 1024, not %lld",
                              (long long) parallelism);
            goto fail;
         }
      } else if (strcmp(k, "partitionBy") == 0) {
         aspen_expr_t *e = NULL;
         if (!aspen_expr_parse(&it, NULL, &e, err)) {
            goto fail;
         }
         aspen_expr_destroy(e);
         has_partition_by = true;
      } else {
         aspen_parse_unknown_field(err, pc, NULL, "$externalFunction", k);
         goto fail;
      }
   }
   if (!h->function) {
      aspen_parse_missing_field(err, pc, NULL, "$externalFunction",
                                "functionName");
      goto fail;
   }
   if (h->async && h->as) {
      aspen_parse_error(err, pc, NULL,
                        "$externalFunction.as cannot be set when execution "
                        "is async");
      goto fail;
   }
   if (!h->async && !h->as && !is_last(st, pc)) {
      aspen_parse_error(err, pc, NULL,
                        "$externalFunction.as is required when execution is "
                        "sync and the stage is not the last one");
      goto fail;
   }
   if (parallelism > 1 && h->async) {
      aspen_parse_error(err, pc, NULL,
                        "$externalFunction.parallelism above 1 requires "
                        "execution sync");
      goto fail;
   }
   if (has_partition_by && (h->async || parallelism < 2)) {
      aspen_parse_error(err, pc, NULL,
                        "$externalFunction.partitionBy requires execution "
                        "sync and parallelism above 1");
      goto fail;
   }
   const aspen_conn_t *conn =
      aspen__http_call_conn(h, "$externalFunction", pc, err);
   if (!conn) {
      goto fail;
   }
   h->lambda = aspen__conn_lambda(conn);
   if (!h->lambda) {
      aspen_parse_error(err, pc, "connectionName",
                        "$externalFunction requires a connection of type "
                        "aws-lambda; '%s' is of type %s",
                        h->conn_name, conn->kind->type_name);
      goto fail;
   }
   aspen__http_call_ready(h, (int) parallelism);
   return true;

fail:
   aspen__http_call_destroy(st);
   return false;
}

const aspen_stage_ops_t aspen_stage_external_function_ops = {
   .name = "$externalFunction",
   .operator_name = "ExternalFunctionOperator",
   .parse = xfn_parse,
   .push = aspen__http_call_push,
   .destroy = aspen__http_call_destroy,
   .flush = aspen__http_call_flush,
};
