/*
 * test_kinesis.c - unit tests for the Kinesis connector: what an answer of
 * the service means (aspen__kinesis_classify: retry, renew the iterator,
 * authentication failure, refusal), base64 of record data, the basicJson
 * output format (kafka.c's encoder, as $emit to Kinesis uses it), Kinesis
 * connections in the registry (the secret key kept, never listed), and the
 * $source and $emit options through aspen_pipeline_parse, as
 * createStreamProcessor uses them, and a call at open to an endpoint that
 * never answers, abandoned as soon as the processor is stopped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builtins.h"
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"
#include "connectors/kinesis_int.h"
#include "dead_peer.h"

static bson_t *
tmp_bson(const char *json)
{
   bson_error_t berr;
   bson_t *b = bson_new_from_json((const uint8_t *) json, -1, &berr);
   if (!b) {
      fail_msg("bad test JSON %s: %s", json, berr.message);
   }
   return b;
}

static void
test_classify(void **state)
{
   (void) state;
   static const struct {
      CURLcode cc;
      long http;
      const char *type;
      aspen_kinesis_status_t want;
   } cases[] = {
      {CURLE_OK, 200, NULL, ASPEN_KINESIS_OK},
      {CURLE_COULDNT_CONNECT, 0, NULL, ASPEN_KINESIS_RETRY},
      {CURLE_OPERATION_TIMEDOUT, 0, NULL, ASPEN_KINESIS_RETRY},
      {CURLE_OK, 400, "ProvisionedThroughputExceededException",
       ASPEN_KINESIS_RETRY},
      {CURLE_OK, 400, "LimitExceededException", ASPEN_KINESIS_RETRY},
      {CURLE_OK, 500, "InternalFailure", ASPEN_KINESIS_RETRY},
      {CURLE_OK, 503, NULL, ASPEN_KINESIS_RETRY},
      {CURLE_OK, 400, "ExpiredIteratorException", ASPEN_KINESIS_EXPIRED},
      {CURLE_OK, 400, "UnrecognizedClientException", ASPEN_KINESIS_AUTH},
      {CURLE_OK, 400, "InvalidSignatureException", ASPEN_KINESIS_AUTH},
      {CURLE_OK, 400, "AccessDeniedException", ASPEN_KINESIS_AUTH},
      {CURLE_OK, 403, NULL, ASPEN_KINESIS_AUTH},
      {CURLE_OK, 400, "ResourceNotFoundException", ASPEN_KINESIS_FATAL},
      {CURLE_OK, 400, "ValidationException", ASPEN_KINESIS_FATAL},
      {CURLE_OK, 400, "", ASPEN_KINESIS_FATAL},
   };
   for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
      aspen_kinesis_status_t got = aspen__kinesis_classify(
         cases[i].cc, cases[i].http, cases[i].type);
      if (got != cases[i].want) {
         fail_msg("case %zu (%ld %s): got %d, want %d", i, cases[i].http,
                  cases[i].type ? cases[i].type : "-", (int) got,
                  (int) cases[i].want);
      }
   }
}

static void
test_base64(void **state)
{
   (void) state;
   const char *in = "{\"a\": 1}\xff";
   for (size_t n = 0; n <= strlen(in); n++) {
      char *b = aspen__kinesis_b64_encode(in, n);
      uint8_t *out;
      size_t out_len;
      assert_true(aspen__kinesis_b64_decode(b, strlen(b), &out, &out_len));
      assert_int_equal(out_len, n);
      assert_memory_equal(out, in, n);
      free(out);
      free(b);
   }
   uint8_t *out;
   size_t out_len;
   assert_false(aspen__kinesis_b64_decode("abc", 3, &out, &out_len));
   assert_false(aspen__kinesis_b64_decode("ab!d", 4, &out, &out_len));
   assert_null(out);
}

static void
test_basic_json(void **state)
{
   (void) state;
   bson_t *doc = tmp_bson(
      "{\"_id\": {\"$oid\": \"671a8ce1497407eff0e17cba\"},"
      " \"d\": {\"$date\": {\"$numberLong\": \"1729625275856\"}},"
      " \"dec\": {\"$numberDecimal\": \"9.9\"},"
      " \"ts\": {\"$timestamp\": {\"t\": 1729793249, \"i\": 1}},"
      " \"bin\": {\"$binary\": {\"base64\": \"gf1UcxdHTJ2HQ/EGQrO7mQ==\", "
      "\"subType\": \"00\"}},"
      " \"uuid\": {\"$binary\": {\"base64\": \"QgtHroEaRpiqZMg0fHGc8Q==\", "
      "\"subType\": \"04\"}},"
      " \"inf\": {\"$numberDouble\": \"-Infinity\"},"
      " \"re\": {\"$regularExpression\": {\"pattern\": \"ab+c\", "
      "\"options\": \"i\"}},"
      " \"n\": {\"$numberLong\": \"5\"}, \"arr\": [{\"$oid\": "
      "\"671a8ce1497407eff0e17cba\"}]}");
   aspen_kafka_json_opts_t basic = {.basic = true};
   size_t len;
   char *s = aspen__kafka_json_encode(doc, &basic, &len);
   static const char *const want[] = {
      "\"_id\" : \"671a8ce1497407eff0e17cba\"",
      "\"d\" : 1729625275856",
      "\"dec\" : \"9.9\"",
      "\"ts\" : 1729793249000",
      "\"bin\" : \"gf1UcxdHTJ2HQ/EGQrO7mQ==\"",
      "\"uuid\" : \"420b47ae-811a-4698-aa64-c8347c719cf1\"",
      "\"inf\" : \"-Infinity\"",
      "\"re\" : { \"pattern\" : \"ab+c\", \"options\" : \"i\" }",
      "\"n\" : 5",
      "\"arr\" : [ \"671a8ce1497407eff0e17cba\" ]",
   };
   for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
      if (!strstr(s, want[i])) {
         fail_msg("%s lacks %s", s, want[i]);
      }
   }
   assert_null(strstr(s, "$"));
   bson_free(s);
   /* With dateFormat ISO8601 a Date is its ISO-8601 string. */
   aspen_kafka_json_opts_t basic_iso = {.basic = true, .iso_dates = true};
   s = aspen__kafka_json_encode(doc, &basic_iso, &len);
   assert_non_null(strstr(s, "\"d\" : \"2024-10-22T19:27:55.856Z\""));
   bson_free(s);
   bson_destroy(doc);
}

static const char *conns_json =
   "{\"c\": [{\"name\": \"kin\", \"type\": \"kinesis\","
   "  \"aws\": {\"roleArn\": \"arn:aws:iam::1:role/r\"}, \"region\": "
   "\"eu-west-1\", \"endpoint\": \"http://127.0.0.1:4567/\","
   "  \"credentials\": {\"accessKeyId\": \"AKID\", \"secretAccessKey\": "
   "\"sk-secret\"}},"
   " {\"name\": \"atlas\", \"type\": \"atlas\"}]}";

static bool
conns_from_json(aspen_conns_t *conns, const char *json, aspen_error_t *err)
{
   bson_t *cfg = tmp_bson(json);
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   bson_t arr;
   assert_true(bson_iter_init_find(&it, cfg, "c"));
   bson_iter_array(&it, &len, &data);
   assert_true(bson_init_static(&arr, data, len));
   bool ok = aspen_conns_load(conns, aspen_builtins_catalog(), &arr,
                              "mongodb://127.0.0.1:1", NULL, err);
   bson_destroy(cfg);
   return ok;
}

static void
test_connection(void **state)
{
   (void) state;
   aspen_conns_t conns;
   aspen_error_t err;
   if (!conns_from_json(&conns, conns_json, &err)) {
      fail_msg("%s", err.message);
   }
   const aspen_conn_t *k = aspen_conns_find(&conns, "kin");
   assert_non_null(k);
   assert_string_equal(k->kind->type_name, "kinesis");
   char *listed = bson_as_relaxed_extended_json(&k->doc, NULL);
   assert_null(strstr(listed, "secret"));
   assert_non_null(strstr(listed, "\"roleArn\" : \"arn:aws:iam::1:role/r\""));
   assert_non_null(strstr(listed, "\"accessKeyId\" : \"AKID\""));
   bson_free(listed);
   /* The stage's region wins over the connection's; the endpoint is the
    * URL (one slash). */
   aspen_kinesis_target_t t;
   aspen__kinesis_target_init(&t, k, NULL);
   assert_string_equal(t.region, "eu-west-1");
   assert_string_equal(t.url, "http://127.0.0.1:4567/");
   aspen__kinesis_target_init(&t, k, "ap-south-1");
   assert_string_equal(t.region, "ap-south-1");
   assert_string_equal(t.aws->secret_key, "sk-secret");
   aspen_conns_cleanup(&conns);

   static const char *const bad[] = {
      "{\"c\": [{\"name\": \"k\", \"type\": \"kinesis\", \"stream\": \"s\"}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kinesis\", \"endpoint\": "
      "\"127.0.0.1:1\"}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kinesis\", \"credentials\": "
      "{\"accessKeyId\": \"a\"}}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kinesis\", \"aws\": {\"role\": "
      "\"x\"}}]}",
   };
   for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
      if (conns_from_json(&conns, bad[i], &err)) {
         fail_msg("accepted %s", bad[i]);
      }
      aspen_conns_cleanup(&conns);
   }
}

/* Parses {"p": [...]} as a persistent processor with a DLQ and checks the
 * error ("" for none). */
static void
parse_expect(const aspen_conns_t *conns, const char *json, const char *want)
{
   bson_t *wrap = tmp_bson(json);
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   bson_t arr;
   assert_true(bson_iter_init_find(&it, wrap, "p"));
   bson_iter_array(&it, &len, &data);
   assert_true(bson_init_static(&arr, data, len));
   aspen_error_t err = {0};
   aspen_pipeline_t *pl =
      aspen_pipeline_parse(&arr, aspen_builtins_catalog(), conns, false, true,
                           &err);
   if (!*want) {
      if (!pl) {
         fail_msg("%s: %s", json, err.message);
      }
   } else {
      if (pl) {
         fail_msg("%s: accepted, want %s", json, want);
      }
      if (!strstr(err.message, want)) {
         fail_msg("%s: got '%s', want '%s'", json, err.message, want);
      }
      assert_int_equal(err.code, 420);
   }
   aspen_pipeline_destroy(pl);
   bson_destroy(wrap);
}

#define MERGE "{\"$merge\": {\"into\": {\"connectionName\": \"atlas\", " \
              "\"db\": \"d\", \"coll\": \"c\"}}}"
#define SRC(x) "{\"p\": [{\"$source\": {\"connectionName\": \"kin\", " x "}}, " MERGE "]}"
#define EMIT(x) "{\"p\": [{\"$source\": {\"documents\": [{\"a\": 1}]}}, " \
                "{\"$emit\": {\"connectionName\": \"kin\" " x "}}]}"

static void
test_options(void **state)
{
   (void) state;
   aspen_conns_t conns;
   aspen_error_t err;
   if (!conns_from_json(&conns, conns_json, &err)) {
      fail_msg("%s", err.message);
   }
   parse_expect(&conns, SRC("\"stream\": \"s\""), "");
   parse_expect(&conns,
                SRC("\"stream\": \"s\", \"region\": \"us-east-1\", "
                    "\"shardIdleTimeout\": {\"size\": 2, \"unit\": "
                    "\"second\"}, \"tsFieldName\": \"t\", \"config\": "
                    "{\"consumerARN\": \"arn:x\", \"initialPosition\": "
                    "\"AT_TIMESTAMP\", \"atTimestamp\": {\"$date\": "
                    "\"2024-01-01T00:00:00Z\"}, "
                    "\"reshardDetectionIntervalSecs\": 30}"),
                "");
   parse_expect(&conns, SRC("\"region\": \"x\""),
                "'$source.stream' is missing");
   parse_expect(&conns, SRC("\"stream\": 5"), "wrong type");
   parse_expect(&conns, SRC("\"stream\": \"s\", \"topic\": \"t\""),
                "'$source.topic' is an unknown field");
   parse_expect(&conns,
                SRC("\"stream\": \"s\", \"config\": {\"initialPosition\": "
                    "\"OLDEST\"}"),
                "Enumeration value 'OLDEST'");
   parse_expect(&conns,
                SRC("\"stream\": \"s\", \"config\": {\"initialPosition\": "
                    "\"AFTER_SEQUENCE_NUMBER\"}"),
                "not yet by this version of aspen");
   parse_expect(&conns,
                SRC("\"stream\": \"s\", \"config\": {\"initialPosition\": "
                    "\"AT_TIMESTAMP\"}"),
                "atTimestamp is required");
   parse_expect(&conns,
                SRC("\"stream\": \"s\", \"config\": "
                    "{\"reshardDetectionIntervalSecs\": 0}"),
                "positive number of seconds");
   parse_expect(&conns,
                SRC("\"stream\": \"s\", \"shardIdleTimeout\": {\"size\": 1}"),
                "'$source.shardIdleTimeout.unit' is missing");

   parse_expect(&conns, EMIT(", \"stream\": \"o\""), "");
   parse_expect(&conns,
                EMIT(", \"stream\": \"o\", \"region\": \"us-east-1\", "
                     "\"partitionKey\": \"$a\", \"config\": "
                     "{\"outputFormat\": \"basicJson\", \"dateFormat\": "
                     "\"ISO8601\"}"),
                "");
   parse_expect(&conns,
                EMIT(", \"stream\": \"o\", \"partitionKey\": {\"$concat\": "
                     "[\"k\", {\"$toString\": \"$a\"}]}"),
                "");
   parse_expect(&conns, EMIT(""), "'$emit.stream' is missing");
   parse_expect(&conns, EMIT(", \"stream\": \"o\", \"partitionKey\": \"\""),
                "partitionKey cannot be empty");
   parse_expect(&conns,
                EMIT(", \"stream\": \"o\", \"config\": {\"outputFormat\": "
                     "\"xml\"}"),
                "Enumeration value 'xml'");
   parse_expect(&conns,
                EMIT(", \"stream\": \"o\", \"config\": {\"compression\": "
                     "\"gzip\"}"),
                "'$emit.config.compression' is an unknown field");
   parse_expect(&conns, EMIT(", \"stream\": \"o\", \"topic\": \"t\""),
                "'$emit.topic' is an unknown field");
   aspen_conns_cleanup(&conns);
}

static bool
flag_raised(void *flag)
{
   return atomic_load((atomic_bool *) flag);
}

/* The endpoint accepts the connection and never answers: the call waits
 * on it until the stop comes (the peer raises it once the request is in),
 * then gives up at once, with a transport error saying it was abandoned,
 * not after its request's 30 s timeout. */
static void
test_call_stopped(void **state)
{
   (void) state;
   atomic_bool stop = false;
   dead_peer_t peer;
   char json[512];
   snprintf(json, sizeof json,
            "{\"c\": [{\"name\": \"kin\", \"type\": \"kinesis\","
            " \"region\": \"eu-west-1\","
            " \"endpoint\": \"http://127.0.0.1:%u/\","
            " \"credentials\": {\"accessKeyId\": \"AKID\","
            " \"secretAccessKey\": \"sk\"}}]}",
            dead_peer_open(&peer, &stop));
   aspen_conns_t conns;
   aspen_error_t err;
   if (!conns_from_json(&conns, json, &err)) {
      fail_msg("%s", err.message);
   }
   aspen_kinesis_target_t t;
   aspen__kinesis_target_init(&t, aspen_conns_find(&conns, "kin"), NULL);
   bson_t body = BSON_INITIALIZER, reply;
   BSON_APPEND_UTF8(&body, "StreamName", "s");
   char msg[256];
   dead_peer_accept(&peer);
   aspen_kinesis_status_t st =
      aspen__kinesis_call(&t, "ListShards", &body, &reply, 60000,
                          flag_raised, &stop, msg, sizeof msg);
   assert_true(dead_peer_accepted(&peer));
   assert_int_equal(st, ASPEN_KINESIS_RETRY);
   if (!strstr(msg, "ListShards: ") || !strstr(msg, "aborted")) {
      fail_msg("the call ended with '%s'", msg);
   }
   bson_destroy(&reply);
   bson_destroy(&body);
   dead_peer_close(&peer);
   aspen_conns_cleanup(&conns);
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_classify),   cmocka_unit_test(test_base64),
      cmocka_unit_test(test_basic_json), cmocka_unit_test(test_connection),
      cmocka_unit_test(test_options),
      cmocka_unit_test(test_call_stopped),
   };
   return cmocka_run_group_tests(tests, NULL, NULL);
}
