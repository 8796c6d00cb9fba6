/*
 * test_avro.c - unit tests for the Avro <-> BSON mapping (connectors/avro.c)
 * and the schema registry client (connectors/schema_registry.c) without a
 * registry: a round trip of every type and logical type, the mapping's
 * values, refusals naming the field, and a registry that is unreachable
 * (the error, then the back-off that answers without asking again), and
 * one that accepts connections and never answers: a stop of the processor
 * abandons the request in flight (Interrupted, not remembered), and
 * without a stop the request's own timeout still ends it with the error
 * it always gave.
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
#include "connectors/schema_registry.h"
#include "dead_peer.h"
#include "lang/expr.h"

static const char *const schema_json =
   "{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"t\",\"fields\":["
   "{\"name\":\"i\",\"type\":\"int\"},"
   "{\"name\":\"l\",\"type\":\"long\"},"
   "{\"name\":\"s\",\"type\":\"string\"},"
   "{\"name\":\"n\",\"type\":[\"null\",\"string\"]},"
   "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"E\","
   "\"symbols\":[\"A\",\"B\"]}},"
   "{\"name\":\"a\",\"type\":{\"type\":\"array\",\"items\":\"double\"}},"
   "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":\"R2\"}},"
   "{\"name\":\"d\",\"type\":{\"type\":\"bytes\",\"logicalType\":\"decimal\","
   "\"precision\":9,\"scale\":2}},"
   "{\"name\":\"day\",\"type\":{\"type\":\"int\",\"logicalType\":\"date\"}},"
   "{\"name\":\"ts\",\"type\":{\"type\":\"long\","
   "\"logicalType\":\"timestamp-micros\"}},"
   "{\"name\":\"f\",\"type\":{\"type\":\"fixed\",\"name\":\"F\",\"size\":2}}"
   "]}";

/* R2 is referenced before it is defined: refused. */
static void
test_unknown_named_type(void **state)
{
   (void) state;
   aspen_error_t err;
   assert_null(aspen__avro_schema_new(schema_json, strlen(schema_json), &err));
   assert_non_null(strstr(err.message, "R2"));
}

static const char *
fixed_schema(void)
{
   static char buf[2048];
   snprintf(buf, sizeof buf, "%s", schema_json);
   char *p = strstr(buf, "\"R2\"");
   const char *inner =
      "{\"type\":\"record\",\"name\":\"R2\",\"fields\":[{\"name\":\"x\","
      "\"type\":\"int\"}]}";
   char tail[2048];
   snprintf(tail, sizeof tail, "%s", p + 4);
   snprintf(p, sizeof buf - (size_t) (p - buf), "%s%s", inner, tail);
   return buf;
}

static void
test_round_trip(void **state)
{
   (void) state;
   aspen_error_t err;
   const char *js = fixed_schema();
   aspen_avro_schema_t *s = aspen__avro_schema_new(js, strlen(js), &err);
   assert_non_null(s);
   assert_string_equal(aspen__avro_schema_fullname(s), "t.R");
   bson_error_t berr;
   bson_t *doc = bson_new_from_json(
      (const uint8_t *) "{\"i\": 7, \"l\": {\"$numberLong\": \"9000000000\"},"
                        " \"s\": \"x\", \"e\": \"B\", \"a\": [1.5, 2],"
                        " \"m\": {\"k\": {\"x\": 3}},"
                        " \"d\": {\"$numberDecimal\": \"-12.30\"},"
                        " \"day\": {\"$date\": \"2026-03-02T00:00:00Z\"},"
                        " \"ts\": {\"$date\": \"2026-03-02T01:02:03.456Z\"},"
                        " \"f\": {\"$binary\": {\"base64\": \"AQI=\","
                        " \"subType\": \"00\"}},"
                        " \"_stream_meta\": {\"x\": 1}}",
      -1, &berr);
   assert_non_null(doc);
   uint8_t *buf;
   size_t len;
   assert_true(aspen__avro_encode(s, doc, 5, &buf, &len, &err));
   bson_t out;
   assert_true(aspen__avro_decode(s, buf + 5, len - 5, &out, &err));
   char *json = bson_as_canonical_extended_json(&out, NULL);
   assert_string_equal(
      json,
      "{ \"i\" : { \"$numberInt\" : \"7\" }, \"l\" : { \"$numberLong\" : "
      "\"9000000000\" }, \"s\" : \"x\", \"n\" : null, \"e\" : \"B\", \"a\" : "
      "[ { \"$numberDouble\" : \"1.5\" }, { \"$numberDouble\" : \"2.0\" } ], "
      "\"m\" : { \"k\" : { \"x\" : { \"$numberInt\" : \"3\" } } }, \"d\" : { "
      "\"$numberDecimal\" : \"-12.30\" }, \"day\" : { \"$date\" : { "
      "\"$numberLong\" : \"1772409600000\" } }, \"ts\" : { \"$date\" : { "
      "\"$numberLong\" : \"1772413323456\" } }, \"f\" : { \"$binary\" : { "
      "\"base64\" : \"AQI=\", \"subType\" : \"00\" } } }");
   bson_free(json);
   /* decode initialises *out again: the caller destroys it after each
    * call, as source_kafka.c does. */
   bson_destroy(&out);
   /* Bytes left over after the value are refused. */
   assert_false(aspen__avro_decode(s, buf + 5, len - 4, &out, &err));
   bson_destroy(&out);
   bson_free(buf);
   bson_destroy(doc);
   aspen__avro_schema_destroy(s);
}

static void
expect_refused(aspen_avro_schema_t *s, const char *json, const char *want)
{
   bson_error_t berr;
   aspen_error_t err;
   bson_t *doc = bson_new_from_json((const uint8_t *) json, -1, &berr);
   assert_non_null(doc);
   uint8_t *buf;
   size_t len;
   assert_false(aspen__avro_encode(s, doc, 0, &buf, &len, &err));
   if (!strstr(err.message, want)) {
      fail_msg("%s: got '%s', want '%s'", json, err.message, want);
   }
   bson_destroy(doc);
}

static void
test_refusals(void **state)
{
   (void) state;
   aspen_error_t err;
   const char *js = fixed_schema();
   aspen_avro_schema_t *s = aspen__avro_schema_new(js, strlen(js), &err);
   assert_non_null(s);
   const char *base =
      "\"l\": 1, \"s\": \"x\", \"a\": [], \"m\": {}, "
      "\"day\": {\"$date\": 0}, \"ts\": {\"$date\": 0}, "
      "\"f\": {\"$binary\": {\"base64\": \"AQI=\", \"subType\": \"00\"}}";
   char json[1024];
   snprintf(json, sizeof json, "{\"i\": \"7\", \"e\": \"A\", \"d\": 1, %s}",
            base);
   expect_refused(s, json, "field 'i': the schema wants int");
   snprintf(json, sizeof json, "{\"i\": 7, \"e\": \"Z\", \"d\": 1, %s}", base);
   expect_refused(s, json, "field 'e' is not a symbol of its enum");
   snprintf(json, sizeof json,
            "{\"i\": 7, \"e\": \"A\", \"d\": {\"$numberDecimal\": \"1.234\"}, "
            "%s}",
            base);
   expect_refused(s, json, "more decimal places than the schema's scale 2");
   snprintf(json, sizeof json, "{\"e\": \"A\", \"d\": 1, %s}", base);
   expect_refused(s, json, "field 'i': the schema wants int, the document "
                           "has missing");
   aspen__avro_schema_destroy(s);
}

/* A registry nobody listens on: the first message's error says so, the
 * next within the back-off gets the same answer at once. */
static void
test_registry_unreachable(void **state)
{
   (void) state;
   aspen_conns_t conns;
   aspen_error_t err;
   bson_error_t berr;
   bson_t *list = bson_new_from_json(
      (const uint8_t *) "[{\"name\": \"r\", \"type\": \"schemaRegistry\","
                        " \"schemaRegistryUrls\": \"http://127.0.0.1:1/\"}]",
      -1, &berr);
   assert_non_null(list);
   assert_true(aspen_conns_load(&conns, aspen_builtins_catalog(), list, NULL,
                                NULL, &err));
   const aspen_sr_conn_t *c =
      aspen__conn_schema_registry(aspen_conns_find(&conns, "r"));
   assert_non_null(c);
   aspen_sr_t *sr = aspen__sr_new(c, "test");
   const uint8_t msg[] = {0, 0, 0, 0, 5, 2};
   bson_t out;
   assert_false(aspen__sr_decode(sr, msg, sizeof msg, &out, &err));
   bson_destroy(&out);
   assert_non_null(strstr(err.message, "unreachable"));
   assert_false(aspen__sr_decode(sr, msg, sizeof msg, &out, &err));
   bson_destroy(&out);
   assert_non_null(strstr(err.message, "unreachable"));
   const uint8_t bad[] = {1, 2, 3};
   assert_false(aspen__sr_decode(sr, bad, sizeof bad, &out, &err));
   bson_destroy(&out);
   assert_non_null(strstr(err.message, "wire format"));
   aspen__sr_destroy(sr);
   aspen_conns_cleanup(&conns);
   bson_destroy(list);
}

/* A registry client of a registry at 127.0.0.1:`port`; the caller frees
 * it and cleans *conns up. */
static aspen_sr_t *
dead_peer_client(unsigned port, aspen_conns_t *conns)
{
   char json[256];
   snprintf(json, sizeof json,
            "[{\"name\": \"r\", \"type\": \"schemaRegistry\","
            " \"schemaRegistryUrls\": \"http://127.0.0.1:%u/\"}]", port);
   bson_error_t berr;
   aspen_error_t err;
   bson_t *list = bson_new_from_json((const uint8_t *) json, -1, &berr);
   assert_non_null(list);
   assert_true(aspen_conns_load(conns, aspen_builtins_catalog(), list, NULL,
                                NULL, &err));
   bson_destroy(list);
   return aspen__sr_new(
      aspen__conn_schema_registry(aspen_conns_find(conns, "r")), "test");
}

/* The processor is stopped while its schema registry request waits on a
 * peer that never answers: the request is abandoned (Interrupted), the
 * interruption noted (so the message is neither dead-lettered nor covered
 * by a final checkpoint), and nothing remembered: the next request, with
 * no stop, asks again and ends by its own timeout with the error a dead
 * registry always gave. The same for a subject's id ($emit). */
static void
test_registry_dead_peer_stop(void **state)
{
   (void) state;
   atomic_bool stop = false;
   aspen_expr_set_interrupt(&stop);
   aspen_conns_t conns;
   dead_peer_t peer;
   aspen_sr_t *sr = dead_peer_client(dead_peer_open(&peer, &stop), &conns);
   dead_peer_accept(&peer);
   const uint8_t msg[] = {0, 0, 0, 0, 5, 2};
   bson_t out;
   aspen_error_t err;
   assert_false(aspen__sr_decode(sr, msg, sizeof msg, &out, &err));
   bson_destroy(&out);
   assert_true(dead_peer_accepted(&peer)); /* asking when the stop came */
   assert_int_equal(err.code, ASPEN_ERR_Interrupted);
   assert_non_null(strstr(err.message, "stopping"));
   assert_true(aspen_expr_interrupted());

   /* A subject's id, stopped the same way. */
   aspen_expr_set_interrupt(&stop);
   uint32_t id;
   assert_false(aspen__sr_subject_id(sr, "s-value", schema_json, true, &id,
                                     &err));
   assert_int_equal(err.code, ASPEN_ERR_Interrupted);

   /* No stop: the request's timeout ends it, with today's error. */
   atomic_store(&stop, false);
   aspen_expr_set_interrupt(&stop);
   peer.stop = NULL;
   dead_peer_accept(&peer);
   assert_false(aspen__sr_decode(sr, msg, sizeof msg, &out, &err));
   bson_destroy(&out);
   assert_true(dead_peer_accepted(&peer));
   assert_int_equal(err.code, ASPEN_ERR_HostUnreachable);
   assert_non_null(strstr(err.message, "the schema registry is unreachable"));
   assert_non_null(strstr(err.message, "timed out"));
   assert_false(aspen_expr_interrupted());
   aspen_expr_set_interrupt(NULL);
   dead_peer_close(&peer);
   aspen__sr_destroy(sr);
   aspen_conns_cleanup(&conns);
}

static void
test_connection_refusals(void **state)
{
   (void) state;
   static const struct {
      const char *json;
      const char *want;
   } cases[] = {
      {"[{\"name\": \"r\", \"type\": \"schemaRegistry\"}]",
       "schemaRegistryUrls' is required"},
      {"[{\"name\": \"r\", \"type\": \"schemaRegistry\", "
       "\"schemaRegistryUrls\": [\"ftp://x\"]}]",
       "http:// or https://"},
      {"[{\"name\": \"r\", \"type\": \"schemaRegistry\", "
       "\"schemaRegistryUrls\": [\"http://x\"], "
       "\"schemaRegistryAuthentication\": {\"type\": \"SASL_INHERIT\"}}]",
       "SASL_INHERIT is supported by Atlas Stream Processing but not yet"},
      {"[{\"name\": \"r\", \"type\": \"schemaRegistry\", "
       "\"schemaRegistryUrls\": [\"http://x\"], "
       "\"schemaRegistryAuthentication\": {\"type\": \"USER_INFO\", "
       "\"username\": \"u\"}}]",
       "needs username and password"},
      /* The not-yet list: a type ASP has, said so before its keys. */
      {"[{\"name\": \"feed\", \"type\": \"PubSub\", \"gcp\": {}}]",
       "config key 'connections[0].type': connection type 'PubSub' is "
       "supported by Atlas Stream Processing but not yet by this version "
       "of aspen (Google Cloud Pub/Sub)"},
      {"[{\"name\": \"x\", \"type\": \"nosuch\"}]",
       "config key 'connections[0].type' must be"},
   };
   for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      bson_error_t berr;
      aspen_error_t err;
      aspen_conns_t conns;
      bson_t *list =
         bson_new_from_json((const uint8_t *) cases[i].json, -1, &berr);
      assert_non_null(list);
      assert_false(aspen_conns_load(&conns, aspen_builtins_catalog(), list,
                                    NULL, NULL, &err));
      if (!strstr(err.message, cases[i].want)) {
         fail_msg("%s: got '%s'", cases[i].json, err.message);
      }
      aspen_conns_cleanup(&conns);
      bson_destroy(list);
   }
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unknown_named_type),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_registry_unreachable),
      cmocka_unit_test(test_registry_dead_peer_stop),
      cmocka_unit_test(test_connection_refusals),
   };
   return cmocka_run_group_tests(tests, NULL, NULL);
}
