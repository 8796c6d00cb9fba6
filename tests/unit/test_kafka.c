/*
 * test_kafka.c - unit tests for engine/connectors/kafka.c (Extended JSON
 * codecs for message values, key formats), the Kafka $source and $emit
 * option parsers (through aspen_pipeline_parse, as createStreamProcessor
 * uses them), which pipelines may run exactly-once (options.exactlyOnce),
 * Kafka connections in the registry (secrets kept for the client, never
 * listed), and a librdkafka client configured by
 * aspen__conn_kafka_client_conf producing to and consuming from
 * librdkafka's mock cluster, and the broker aspen hosts for a connection
 * with "local": true; which pipelines may spread a Kafka $source's
 * partitions over worker threads (runtime/workers.c); the $emit sink
 * failing with the topic-missing error when its topic is deleted.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builtins.h"
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"
#include "engine.h"
#include "base/tier.h"
#include "runtime/runtime_int.h"

#include <librdkafka/rdkafka_mock.h>

/* A bson_t from relaxed JSON (mongoc's tmp_bson); the test owns it. */
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

/* aspen__kafka_json_decode into a heap copy the test owns, through a
 * writer smaller than most test documents (so its growth is used too). */
static bool
json_decode(const void *data, size_t len, bson_t *doc, aspen_error_t *err)
{
   uint8_t buf[48];
   aspen_bsonw_t w;
   bson_t view;
   aspen_bsonw_init_static(&w, buf, sizeof buf);
   bool ok = aspen__kafka_json_decode(data, len, &w, &view, err);
   bson_copy_to(&view, doc);
   bson_destroy(&view);
   aspen_bsonw_cleanup(&w);
   return ok;
}

static void
assert_canonical(const bson_t *doc, const char *want_json)
{
   bson_t *want = tmp_bson(want_json);
   char *a = bson_as_canonical_extended_json(doc, NULL);
   char *b = bson_as_canonical_extended_json(want, NULL);
   if (strcmp(a, b) != 0) {
      fail_msg("got %s\nwant %s", a, b);
   }
   bson_free(a);
   bson_free(b);
   bson_destroy(want);
}

/* ---- values ------------------------------------------------------------- */

static void
test_decode_relaxed_and_canonical(void **state)
{
   (void) state;
   bson_t doc;
   aspen_error_t err;
   const char *relaxed = " {\"a\": 1, \"b\": {\"$date\": \"2024-05-01T00:00:00Z\"},"
                         " \"c\": 2.5, \"d\": 5000000000}\n";
   assert_true(json_decode(relaxed, strlen(relaxed), &doc, &err));
   assert_canonical(&doc, "{\"a\": {\"$numberInt\": \"1\"}, \"b\": {\"$date\": "
                          "{\"$numberLong\": \"1714521600000\"}}, \"c\": "
                          "{\"$numberDouble\": \"2.5\"}, \"d\": {\"$numberLong\": "
                          "\"5000000000\"}}");
   bson_destroy(&doc);
   const char *canonical = "{\"n\": {\"$numberLong\": \"7\"}, \"o\": {\"$oid\": "
                           "\"0123456789abcdef01234567\"}}";
   assert_true(json_decode(canonical, strlen(canonical), &doc, &err));
   assert_canonical(&doc, canonical);
   bson_destroy(&doc);
}

static void
test_decode_refuses_non_documents(void **state)
{
   (void) state;
   static const char *const bad[] = {"", "   ", "not json", "[1, 2]", "42",
                                     "\"s\"", "{\"a\": ", "{\"a\": 1} x"};
   for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
      bson_t doc;
      aspen_error_t err = {0};
      bool ok = json_decode(bad[i], strlen(bad[i]), &doc, &err);
      if (ok) {
         fail_msg("'%s' was accepted", bad[i]);
      }
      assert_true(err.message[0] != '\0');
      assert_true(bson_empty(&doc)); /* initialised even on failure */
      bson_destroy(&doc);
   }
}

static void
test_decode_schema_registry_prefix(void **state)
{
   (void) state;
   const char msg[] = "\0\0\0\0\x07{\"a\": true}";
   bson_t doc;
   aspen_error_t err;
   assert_true(json_decode(msg, sizeof msg - 1, &doc, &err));
   assert_canonical(&doc, "{\"a\": true}");
   bson_destroy(&doc);
}

static void
test_encode_formats(void **state)
{
   (void) state;
   bson_t *doc = tmp_bson("{\"n\": {\"$numberLong\": \"5\"}, \"d\": {\"$date\": "
                          "{\"$numberLong\": \"1500\"}}, \"a\": [{\"$date\": "
                          "{\"$numberLong\": \"0\"}}]}");
   aspen_kafka_json_opts_t relaxed = {0}, canonical = {.canonical = true},
                           iso = {.iso_dates = true};
   size_t len;
   char *s = aspen__kafka_json_encode(doc, &relaxed, &len);
   assert_int_equal(len, strlen(s));
   assert_non_null(strstr(s, "\"n\" : 5"));
   assert_non_null(strstr(s, "\"$date\" : \"1970-01-01T00:00:01.500Z\""));
   bson_free(s);
   s = aspen__kafka_json_encode(doc, &canonical, &len);
   assert_non_null(strstr(s, "\"$numberLong\" : \"5\""));
   bson_free(s);
   s = aspen__kafka_json_encode(doc, &iso, &len);
   assert_non_null(strstr(s, "\"d\" : \"1970-01-01T00:00:01.500Z\""));
   assert_non_null(strstr(s, "[ \"1970-01-01T00:00:00.000Z\" ]"));
   bson_free(s);
   /* What $emit writes, a $source reads back unchanged. */
   s = aspen__kafka_json_encode(doc, &canonical, &len);
   bson_t back;
   aspen_error_t err;
   assert_true(json_decode(s, len, &back, &err));
   assert_true(bson_equal(&back, doc));
   bson_destroy(&back);
   bson_free(s);
   bson_destroy(doc);
}

/* ---- keys ------------------------------------------------------------------ */

static void
roundtrip_key(aspen_kafka_key_format_t f, const char *value_json,
              const char *want_bytes, size_t want_len)
{
   bson_t *wrap = tmp_bson(value_json);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, wrap, "v"));
   uint8_t *buf;
   size_t len;
   aspen_error_t err;
   assert_true(aspen__kafka_key_encode(f, bson_iter_value(&it), &buf, &len, &err));
   if (want_bytes) {
      assert_int_equal(len, want_len);
      assert_memory_equal(buf, want_bytes, len);
   }
   bson_t out = BSON_INITIALIZER;
   assert_true(aspen__kafka_key_decode(f, buf, len, &out, "v", &err));
   bson_iter_t oi;
   assert_true(bson_iter_init_find(&oi, &out, "v"));
   bson_t want = BSON_INITIALIZER;
   bson_append_iter(&want, "v", 1, &it);
   if (!bson_equal(&want, &out)) {
      char *a = bson_as_canonical_extended_json(&out, NULL);
      fail_msg("key %s came back as %s", value_json, a);
   }
   bson_destroy(&want);
   bson_destroy(&out);
   bson_free(buf);
   bson_destroy(wrap);
}

static void
test_key_formats(void **state)
{
   (void) state;
   roundtrip_key(ASPEN_KAFKA_KEY_INT, "{\"v\": 258}", "\0\0\x01\x02", 4);
   roundtrip_key(ASPEN_KAFKA_KEY_INT, "{\"v\": -1}", "\xff\xff\xff\xff", 4);
   roundtrip_key(ASPEN_KAFKA_KEY_LONG, "{\"v\": {\"$numberLong\": \"258\"}}",
                 "\0\0\0\0\0\0\x01\x02", 8);
   roundtrip_key(ASPEN_KAFKA_KEY_STRING, "{\"v\": \"k1\"}", "k1", 2);
   roundtrip_key(ASPEN_KAFKA_KEY_JSON, "{\"v\": {\"a\": [1, \"x\"]}}", NULL, 0);
   roundtrip_key(ASPEN_KAFKA_KEY_JSON, "{\"v\": \"plain\"}", "\"plain\"", 7);
   roundtrip_key(ASPEN_KAFKA_KEY_DOUBLE, "{\"v\": 1.5}", NULL, 0);
   roundtrip_key(ASPEN_KAFKA_KEY_BINDATA,
                 "{\"v\": {\"$binary\": {\"base64\": \"AAEC\", \"subType\": \"00\"}}}",
                 "\0\x01\x02", 3);

   /* Keys that do not decode or encode in a format. */
   bson_t out = BSON_INITIALIZER;
   aspen_error_t err;
   assert_false(aspen__kafka_key_decode(ASPEN_KAFKA_KEY_INT, "abc", 3, &out, "k", &err));
   assert_false(aspen__kafka_key_decode(ASPEN_KAFKA_KEY_LONG, "abc", 3, &out, "k", &err));
   assert_false(aspen__kafka_key_decode(ASPEN_KAFKA_KEY_STRING, "\xff\xfe", 2, &out, "k", &err));
   assert_false(aspen__kafka_key_decode(ASPEN_KAFKA_KEY_JSON, "{oops", 5, &out, "k", &err));
   assert_true(bson_empty(&out));
   bson_destroy(&out);
   bson_t *wrap = tmp_bson("{\"s\": \"x\", \"big\": {\"$numberLong\": \"5000000000\"}, \"f\": 1.5}");
   bson_iter_t it;
   uint8_t *buf;
   size_t len;
   bson_iter_init_find(&it, wrap, "s");
   assert_false(aspen__kafka_key_encode(ASPEN_KAFKA_KEY_INT, bson_iter_value(&it), &buf, &len, &err));
   assert_null(buf);
   assert_non_null(strstr(err.message, "keyFormat int"));
   bson_iter_init_find(&it, wrap, "big");
   assert_false(aspen__kafka_key_encode(ASPEN_KAFKA_KEY_INT, bson_iter_value(&it), &buf, &len, &err));
   bson_iter_init_find(&it, wrap, "f");
   assert_false(aspen__kafka_key_encode(ASPEN_KAFKA_KEY_LONG, bson_iter_value(&it), &buf, &len, &err));
   bson_destroy(wrap);
}

/* ---- connections and option validation ----------------------------------- */

static const char *const conns_json =
   "{\"c\": [{\"name\": \"atlas\", \"type\": \"atlas\"},"
   " {\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"127.0.0.1:9\","
   "  \"security\": {\"protocol\": \"SASL_SSL\", \"mechanism\": \"PLAIN\","
   "                \"username\": \"u\", \"password\": \"pw-secret\", \"caFile\": \"/ca.pem\"},"
   "  \"config\": {\"socket.timeout.ms\": 5000, \"ssl.key.password\": \"kp-secret\","
   "              \"enable.ssl.certificate.verification\": false}},"
   " {\"name\": \"sr\", \"type\": \"schemaRegistry\","
   "  \"schemaRegistryUrls\": \"http://127.0.0.1:1/\"}]}";

/* A static view of the array `key` of `doc` (which must have it). */
static void
array_field(const bson_t *doc, const char *key, bson_t *arr)
{
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   assert_true(bson_iter_init_find(&it, doc, key));
   assert_true(BSON_ITER_HOLDS_ARRAY(&it));
   bson_iter_array(&it, &len, &data);
   assert_true(bson_init_static(arr, data, len));
}

/* Loads the registry from {"c": [connections]} in relaxed JSON. */
static bool
conns_from_json(aspen_conns_t *conns, const char *json, const char *backend,
                aspen_error_t *err)
{
   bson_t *cfg = tmp_bson(json);
   bson_t arr;
   array_field(cfg, "c", &arr);
   bool ok = aspen_conns_load(conns, aspen_builtins_catalog(), &arr, backend,
                              NULL, err);
   bson_destroy(cfg);
   return ok;
}

static void
load_conns(aspen_conns_t *conns)
{
   aspen_error_t err;
   if (!conns_from_json(conns, conns_json, "mongodb://127.0.0.1:1", &err)) {
      fail_msg("%s", err.message);
   }
}

static void
test_connections(void **state)
{
   (void) state;
   aspen_conns_t conns;
   load_conns(&conns);
   const aspen_conn_t *k = aspen_conns_find(&conns, "k");
   assert_non_null(k);
   assert_string_equal(k->kind->type_name, "kafka");
   char *listed = bson_as_relaxed_extended_json(&k->doc, NULL);
   assert_null(strstr(listed, "secret"));
   assert_non_null(strstr(listed, "\"bootstrapServers\" : \"127.0.0.1:9\""));
   assert_non_null(strstr(listed, "\"username\" : \"u\""));
   assert_non_null(strstr(listed, "socket.timeout.ms"));
   bson_free(listed);
   bson_iter_t it;
   const bson_t *props = aspen__conn_kafka_conf(k);
   assert_non_null(props);
   assert_true(bson_iter_init_find(&it, props, "sasl.password"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "pw-secret");
   assert_true(bson_iter_init_find(&it, props, "ssl.ca.location"));
   assert_true(bson_iter_init_find(&it, props, "socket.timeout.ms"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "5000");
   /* librdkafka accepts every setting. */
   aspen_kafka_client_hdr_t hdr = {"test"};
   aspen_error_t err;
   rd_kafka_conf_t *conf = aspen__conn_kafka_client_conf(k, &hdr, &err);
   assert_non_null(conf);
   rd_kafka_conf_destroy(conf);
   aspen_conns_cleanup(&conns);

   /* Bad connection entries. */
   static const char *const bad[] = {
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\"}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"h:1\","
      " \"security\": {\"protocol\": \"SASL_SSL\"}}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"h:1\","
      " \"security\": {\"protocol\": \"TLS\"}}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"h:1\","
      " \"config\": {\"bootstrap.servers\": \"x\"}}]}",
      "{\"c\": [{\"name\": \"a\", \"type\": \"atlas\", \"bootstrapServers\": \"h:1\"}]}",
   };
   for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
      if (conns_from_json(&conns, bad[i], "mongodb://127.0.0.1:1", &err)) {
         fail_msg("accepted %s", bad[i]);
      }
      aspen_conns_cleanup(&conns);
   }
}

/* Parses the pipeline array "p" of `wrap` (as sp.process when `ephemeral`,
 * else as a persistent processor; with a DLQ when `has_dlq`). */
static aspen_pipeline_t *
parse_p(const bson_t *wrap, const aspen_conns_t *conns, bool ephemeral,
        bool has_dlq, aspen_error_t *err)
{
   bson_t arr;
   array_field(wrap, "p", &arr);
   return aspen_pipeline_parse(&arr, aspen_builtins_catalog(), conns,
                               ephemeral, has_dlq, err);
}

/* Parses `pipeline_json` ({"p": [...]}) as a persistent processor with a
 * DLQ; returns the error message ("" when it parsed). */
static void
parse_expect(const aspen_conns_t *conns, const char *pipeline_json,
             const char *want_error)
{
   bson_t *wrap = tmp_bson(pipeline_json);
   aspen_error_t err = {0};
   aspen_pipeline_t *pl = parse_p(wrap, conns, false, true, &err);
   if (!want_error) {
      if (!pl) {
         fail_msg("%s: %s", pipeline_json, err.message);
      }
   } else if (pl || !strstr(err.message, want_error)) {
      fail_msg("%s\n gave '%s'\n want '%s'", pipeline_json,
               pl ? "(parsed)" : err.message, want_error);
   } else {
      assert_int_equal(err.code, 420);
   }
   if (pl && !want_error) {
      assert_ptr_equal(pl->source.ops, &aspen_source_kafka_ops);
   }
   aspen_pipeline_destroy(pl);
   bson_destroy(wrap);
}

#define MERGE "{\"$merge\": {\"into\": {\"connectionName\": \"atlas\", \"db\": \"d\", \"coll\": \"c\"}}}"
#define EMIT(args) "{\"$emit\": {\"connectionName\": \"k\", \"topic\": \"t\"" args "}}"
#define SRC(args) "{\"$source\": {\"connectionName\": \"k\"" args "}}"

static void
test_source_options(void **state)
{
   (void) state;
   aspen_conns_t conns;
   load_conns(&conns);
   parse_expect(&conns, "{\"p\": [" SRC(", \"topic\": \"t\"") ", " MERGE "]}", NULL);
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": [\"a\", \"b\"], \"tsFieldName\": \"t2\","
                " \"timeField\": {\"$toDate\": \"$t\"},"
                " \"partitionIdleTimeout\": {\"size\": 5, \"unit\": \"second\"},"
                " \"config\": {\"auto_offset_reset\": \"smallest\", \"group_id\": \"g\","
                " \"enable_auto_commit\": false, \"keyFormat\": \"long\","
                " \"keyFormatError\": \"passThrough\"}") ", " MERGE "]}",
                NULL);
   parse_expect(&conns, "{\"p\": [" SRC("") ", " MERGE "]}",
                "BSON field '$source.topic' is missing but a required field");
   parse_expect(&conns, "{\"p\": [" SRC(", \"topic\": []") ", " MERGE "]}",
                "must name at least one topic");
   parse_expect(&conns, "{\"p\": [" SRC(", \"topic\": 5") ", " MERGE "]}",
                "is the wrong type");
   parse_expect(&conns, "{\"p\": [" SRC(", \"topic\": \"t\", \"x\": 1") ", " MERGE "]}",
                "BSON field '$source.x' is an unknown field.");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\", \"config\": {\"y\": 1}") ", " MERGE "]}",
                "BSON field '$source.config.y' is an unknown field.");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\", \"config\": {\"keyFormat\": \"avro\"}") ", " MERGE "]}",
                "Enumeration value 'avro' for field '$source.config.keyFormat'");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\", \"config\": {\"keyFormatError\": \"discard\"}") ", " MERGE "]}",
                "Enumeration value 'discard'");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\", \"partitionIdleTimeout\": {\"size\": 1}") ", " MERGE "]}",
                "partitionIdleTimeout.unit' is missing");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\", \"partitionIdleTimeout\": {\"size\": -1, \"unit\": \"ms\"}") ", " MERGE "]}",
                "non-negative");

   /* The idle timeout is kept, in ms, for the watermark code. */
   bson_t *wrap = tmp_bson("{\"p\": [" SRC(", \"topic\": \"t\", \"partitionIdleTimeout\": "
                           "{\"size\": 2, \"unit\": \"minute\"}") ", " MERGE "]}");
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   bson_t arr;
   aspen_error_t err;
   bson_iter_init_find(&it, wrap, "p");
   bson_iter_array(&it, &len, &data);
   assert_true(bson_init_static(&arr, data, len));
   aspen_pipeline_t *pl = aspen_pipeline_parse(&arr, aspen_builtins_catalog(),
                                               &conns, false, true, &err);
   assert_non_null(pl);
   assert_int_equal(pl->source.partition_idle_timeout_ms, 120000);
   const aspen_kafka_source_opts_t *opts = pl->source.opts;
   assert_int_equal(opts->n_topics, 1);
   assert_false(opts->earliest);
   assert_int_equal(opts->key_format, ASPEN_KAFKA_KEY_BINDATA);
   aspen_pipeline_destroy(pl);
   bson_destroy(wrap);
   aspen_conns_cleanup(&conns);
}

static void
test_emit_options(void **state)
{
   (void) state;
   aspen_conns_t conns;
   load_conns(&conns);
#define DOCS "{\"$source\": {\"documents\": [{\"a\": 1}]}}"
   parse_expect(&conns, "{\"p\": [" SRC(", \"topic\": \"t\"") ", " EMIT("") "]}", NULL);
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", " EMIT(", \"config\": {\"key\": \"$a\","
                " \"keyFormat\": \"string\", \"headers\": {\"h\": \"$a\"}, \"acks\": 1,"
                " \"compression_type\": \"zstd\", \"outputFormat\": \"canonicalJson\","
                " \"dateFormat\": \"ISO8601\", \"tombstoneWhen\": {\"$eq\": [\"$a\", 0]}}") "]}",
                NULL);
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", " EMIT(", \"config\": {\"key\": \"$a\"}") "]}",
                "Expected config.keyFormat to be specified when config.key is specified");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", " EMIT(", \"config\": {\"outputFormat\": \"xml\"}") "]}",
                "Enumeration value 'xml' for field '$emit.config.outputFormat' is not "
                "a valid value. (at pipeline[1].$emit.config.outputFormat)");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", " EMIT(", \"config\": {\"acks\": 2}") "]}",
                "config.acks must be");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", " EMIT(", \"config\": {\"linger\": 2}") "]}",
                "BSON field '$emit.config.linger' is an unknown field. "
                "(at pipeline[1].$emit.config.linger)");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", {\"$emit\": {\"connectionName\": \"k\"}}]}",
                "BSON field '$emit.topic' is missing");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", {\"$emit\": {\"connectionName\": \"nope\", \"topic\": \"t\"}}]}",
                "Unknown connection name nope");
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", {\"$emit\": {\"connectionName\": \"sample_stream_solar\", \"topic\": \"t\"}}]}",
                "Expected Atlas connection for $emit");
   /* The time-series form's options with a Kafka connection. */
   parse_expect(&conns,
                "{\"p\": [" SRC(", \"topic\": \"t\"") ", " EMIT(", \"db\": \"d\", \"coll\": \"c\"") "]}",
                "BSON field '$emit.db' is an unknown field. (db is an option of $emit to a time-series collection");
   aspen_conns_cleanup(&conns);
}

/* ---- exactly-once: which pipelines may use Kafka transactions ------------ */

/* Parses `pipeline_json` ({"p": [...]}) and checks it for options.exactlyOnce:
 * NULL `want_error` expects it accepted, else refused with that text. */
static void
txn_expect(const aspen_conns_t *conns, const char *pipeline_json,
           bool ephemeral, const char *want_error)
{
   bson_t *wrap = tmp_bson(pipeline_json);
   aspen_error_t err = {0};
   aspen_pipeline_t *pl = parse_p(wrap, conns, ephemeral, false, &err);
   if (!pl) {
      fail_msg("%s: %s", pipeline_json, err.message);
   }
   bool ok = aspen__kafka_txn_check(pl, conns, ephemeral, &err);
   if (!want_error && !ok) {
      fail_msg("%s refused: %s", pipeline_json, err.message);
   }
   if (want_error) {
      if (ok || !strstr(err.message, want_error)) {
         fail_msg("%s\n gave '%s'\n want '%s'", pipeline_json,
                  ok ? "(accepted)" : err.message, want_error);
      }
      assert_int_equal(err.code, 420);
      assert_non_null(strstr(err.message, "StreamProcessorInvalidOptions: "
                                          "options.exactlyOnce: "));
   }
   aspen_pipeline_destroy(pl);
   bson_destroy(wrap);
}

static void
test_exactly_once_check(void **state)
{
   (void) state;
   aspen_conns_t conns;
   aspen_error_t err;
   if (!conns_from_json(
          &conns,
          "{\"c\": [{\"name\": \"atlas\", \"type\": \"atlas\"},"
          " {\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"127.0.0.1:9\"},"
          " {\"name\": \"k_same\", \"type\": \"kafka\", \"bootstrapServers\": \"127.0.0.1:9\"},"
          " {\"name\": \"k2\", \"type\": \"kafka\", \"bootstrapServers\": \"127.0.0.1:10\"},"
          " {\"name\": \"loc\", \"type\": \"kafka\", \"local\": true}]}",
          "mongodb://127.0.0.1:1", &err)) {
      fail_msg("%s", err.message);
   }
#define KSRC(conn) "{\"$source\": {\"connectionName\": \"" conn "\", \"topic\": \"t\"}}"
#define KEMIT(conn) "{\"$emit\": {\"connectionName\": \"" conn "\", \"topic\": \"o\"}}"
#define WIN "{\"$tumblingWindow\": {\"interval\": {\"size\": 1, \"unit\": \"second\"}," \
            " \"pipeline\": [{\"$group\": {\"_id\": null, \"n\": {\"$sum\": 1}}}]}}"
   /* Accepted: Kafka -> stateless stages or a window -> $emit, also through
    * another connection name for the same cluster. */
   txn_expect(&conns, "{\"p\": [" KSRC("k") ", {\"$match\": {\"a\": 1}}, " KEMIT("k") "]}",
              false, NULL);
   txn_expect(&conns, "{\"p\": [" KSRC("k") ", " WIN ", " KEMIT("k_same") "]}", false, NULL);
   /* Refused. */
   txn_expect(&conns, "{\"p\": [" KSRC("k") ", " KEMIT("k") "]}", true,
              "sp.process() keeps no checkpoints");
   txn_expect(&conns, "{\"p\": [{\"$source\": {\"documents\": [{\"a\": 1}]}}, " KEMIT("k") "]}",
              false, "needs a Kafka $source");
   txn_expect(&conns, "{\"p\": [{\"$source\": {\"connectionName\": \"atlas\", \"db\": \"d\","
              " \"coll\": \"c\"}}, " KEMIT("k") "]}",
              false, "a change stream $source cannot take part");
   txn_expect(&conns, "{\"p\": [" KSRC("k") ", " MERGE "]}", false,
              "needs $emit to Kafka as the sink");
   txn_expect(&conns, "{\"p\": [" KSRC("k") ", {\"$emit\": {\"connectionName\": \"atlas\","
              " \"db\": \"d\", \"coll\": \"c\", \"timeseries\": {\"timeField\": \"_ts\"}}}]}",
              false, "$emit to a time-series collection is at-least-once");
   txn_expect(&conns, "{\"p\": [" KSRC("loc") ", " KEMIT("loc") "]}", false,
              "connection 'loc' is aspen's local broker");
   txn_expect(&conns, "{\"p\": [" KSRC("k") ", " KEMIT("loc") "]}", false,
              "connection 'loc' is aspen's local broker");
   txn_expect(&conns, "{\"p\": [" KSRC("k") ", " KEMIT("k2") "]}", false,
              "must use the same Kafka cluster");
#undef KSRC
#undef KEMIT
#undef WIN
   aspen_conns_cleanup(&conns);
}

/* ---- partitions over worker threads ----------------------------------------- */

/* aspen_rt_workers_allowed for `pipeline_json` ({"p": [...]}) parsed as a
 * persistent processor on tier rank `tier` reading `parts` partitions. */
static int
workers_for(const aspen_conns_t *conns, const char *pipeline_json, int tier,
            bool exactly_once, int64_t parts)
{
   aspen_error_t err;
   bson_t *wrap = tmp_bson(pipeline_json);
   aspen_pipeline_t *pl = parse_p(wrap, conns, false, true, &err);
   if (!pl) {
      fail_msg("%s: %s", pipeline_json, err.message);
   }
   pl->tier_rank = tier;
   pl->exactly_once = exactly_once;
   aspen_runtime_t rt;
   memset(&rt, 0, sizeof rt);
   rt.pl = pl;
   int n = aspen_rt_workers_allowed(&rt, parts);
   aspen_runtime_t wrt; /* a worker's own runtime never spreads further */
   memset(&wrt, 0, sizeof wrt);
   wrt.pl = pl;
   wrt.main = &rt;
   assert_int_equal(aspen_rt_workers_allowed(&wrt, parts), 1);
   aspen_pipeline_destroy(pl);
   bson_destroy(wrap);
   return n;
}

static void
test_workers_allowed(void **state)
{
   (void) state;
   aspen_conns_t conns;
   load_conns(&conns);
   long cpus = sysconf(_SC_NPROCESSORS_ONLN);
   int sp30 = aspen_tier_rank("SP30"), sp50 = aspen_tier_rank("SP50");
   int sp10 = aspen_tier_rank("SP10"), sp5 = aspen_tier_rank("SP5");
#define KSRC "{\"$source\": {\"connectionName\": \"k\", \"topic\": \"t\"}}"
#define KEMIT "{\"$emit\": {\"connectionName\": \"k\", \"topic\": \"o\"}}"
#define STATELESS "{\"$match\": {\"a\": 1}}, {\"$addFields\": {\"b\": 2}}, " \
                  "{\"$project\": {\"a\": 1, \"b\": 1}}, {\"$unwind\": \"$u\"}, "
   const char *ok = "{\"p\": [" KSRC ", " STATELESS KEMIT "]}";
   /* The least of the partitions, the tier's vCPUs and the host's CPUs. */
   int64_t want = cpus < 2 ? 1 : cpus < 4 ? cpus : 4;
   assert_int_equal(workers_for(&conns, ok, sp50, false, 4), want);
   assert_int_equal(workers_for(&conns, ok, sp50, false, 64),
                    cpus < 2 ? 1 : cpus < 8 ? cpus : 8);
   assert_int_equal(workers_for(&conns, ok, sp30, false, 4), cpus < 2 ? 1 : 2);
   assert_int_equal(workers_for(&conns, ok, sp50, false, 1), 1);
   /* One vCPU or less: the processor's own thread, as ASP. */
   assert_int_equal(workers_for(&conns, ok, sp10, false, 4), 1);
   assert_int_equal(workers_for(&conns, ok, sp5, false, 4), 1);
   /* Exactly-once commits in one transaction: one thread. */
   assert_int_equal(workers_for(&conns, ok, sp50, true, 4), 1);
   /* Stages with state across documents or connections of their own, and
    * sinks not made per worker: one thread. */
   static const char *const one[] = {
      "{\"p\": [" KSRC ", {\"$tumblingWindow\": {\"interval\": {\"size\": 1, "
      "\"unit\": \"second\"}, \"pipeline\": [{\"$group\": {\"_id\": null, "
      "\"n\": {\"$sum\": 1}}}]}}, " KEMIT "]}",
      "{\"p\": [" KSRC ", {\"$lookup\": {\"from\": {\"connectionName\": \"atlas\", "
      "\"db\": \"d\", \"coll\": \"c\"}, \"localField\": \"a\", \"foreignField\": "
      "\"a\", \"as\": \"l\"}}, " KEMIT "]}",
      "{\"p\": [" KSRC ", {\"$match\": {\"a\": 1}}, {\"$merge\": {\"into\": "
      "{\"connectionName\": \"atlas\", \"db\": \"d\", \"coll\": \"c\"}}}]}",
   };
   for (size_t i = 0; i < sizeof one / sizeof *one; i++) {
      assert_int_equal(workers_for(&conns, one[i], sp50, false, 4), 1);
   }
   /* A source whose inputs decode on one thread only (Avro through a
    * Schema Registry: its schema cache), whatever the rest: one thread;
    * the same pipeline reading JSON spreads. */
   const char *avro =
      "{\"p\": [{\"$source\": {\"connectionName\": \"k\", \"topic\": \"t\", "
      "\"schemaRegistry\": {\"connectionName\": \"sr\"}}}, " STATELESS KEMIT "]}";
   assert_int_equal(workers_for(&conns, avro, sp50, false, 4), 1);
   assert_int_equal(workers_for(&conns, ok, sp50, false, 4), want);
#undef KSRC
#undef KEMIT
#undef STATELESS
   aspen_conns_cleanup(&conns);
}

/* A consumer made with `cconf` (taken), subscribed to `topic`. */
static rd_kafka_t *
consumer_subscribed(rd_kafka_conf_t *cconf, const char *topic)
{
   char errstr[256];
   rd_kafka_t *cons = rd_kafka_new(RD_KAFKA_CONSUMER, cconf, errstr, sizeof errstr);
   assert_non_null(cons);
   rd_kafka_poll_set_consumer(cons);
   rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
   rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
   assert_int_equal(rd_kafka_subscribe(cons, topics), 0);
   rd_kafka_topic_partition_list_destroy(topics);
   return cons;
}

/* ---- workers that cannot start ----------------------------------------------- */

static rd_kafka_mock_cluster_t *mock_cluster_new(rd_kafka_t **mrk,
                                                 const char *topic);

static int g_creates; /* worker threads asked for, for failing_create */

/* pthread_create failing for the second worker thread (the first one was
 * started: it must be stopped and joined). */
static int
failing_create(pthread_t *thread, const pthread_attr_t *attr,
               void *(*start)(void *), void *arg)
{
   if (++g_creates == 2) {
      return EAGAIN;
   }
   return pthread_create(thread, attr, start, arg);
}

/* Before the second worker's sink opens: its cluster goes down (the first
 * worker's sink, and the processor thread's, opened while it was up). */
static void
emit_cluster_down(int i, void *arg)
{
   if (i == 1) {
      assert_int_equal(rd_kafka_mock_broker_set_down(arg, 1), 0);
   }
}

static void
engine_cmd(aspen_engine_t *eng, const char *json, bson_t *reply)
{
   bson_t *cmd = tmp_bson(json);
   bson_iter_t it;
   assert_true(bson_iter_init(&it, cmd) && bson_iter_next(&it));
   bson_init(reply);
   assert_true(aspen_engine_command(eng, bson_iter_key(&it), cmd, 1, NULL, reply));
   bson_destroy(cmd);
}

/* Runs `json`; expects error `code` with `needle` in its message, or
 * success when code is 0. */
static void
engine_expect(aspen_engine_t *eng, const char *json, int32_t code,
              const char *needle)
{
   bson_t reply;
   bson_iter_t it;
   engine_cmd(eng, json, &reply);
   char *r = bson_as_relaxed_extended_json(&reply, NULL);
   int32_t got = bson_iter_init_find(&it, &reply, "code") ? bson_iter_int32(&it) : 0;
   if (got != code) {
      fail_msg("%s: expected code %d, got %s", json, code, r);
   }
   if (needle && !strstr(r, needle)) {
      fail_msg("%s: expected '%s' in %s", json, needle, r);
   }
   bson_free(r);
   bson_destroy(&reply);
}

/* Reads `topic` of the cluster at `bootstrap` until `n` outputs of the
 * test processors came: input {"i": i} was written to partition i % 4 of
 * topic "in", at offset i / 4. Each must come out once, with
 * _stream_meta.source {type, ts, topic, partition, offset} saying so
 * (relaxed JSON: the numbers' values, not their BSON types). */
static void
expect_outputs(const char *bootstrap, const char *topic, int n)
{
   char errstr[256], group[64];
   aspen_error_t err;
   snprintf(group, sizeof group, "check-%s", topic);
   rd_kafka_conf_t *cconf = rd_kafka_conf_new();
   assert_int_equal(rd_kafka_conf_set(cconf, "bootstrap.servers", bootstrap,
                                      errstr, sizeof errstr), RD_KAFKA_CONF_OK);
   assert_int_equal(rd_kafka_conf_set(cconf, "group.id", group, errstr,
                                      sizeof errstr), RD_KAFKA_CONF_OK);
   assert_int_equal(rd_kafka_conf_set(cconf, "auto.offset.reset", "earliest",
                                      errstr, sizeof errstr), RD_KAFKA_CONF_OK);
   rd_kafka_t *cons = consumer_subscribed(cconf, topic);
   int *seen = aspen_xcalloc((size_t) n, sizeof *seen), total = 0;
   static const char *const keys[] = {"type", "ts", "topic", "partition", "offset"};
   for (int t = 0; t < 600 && total < n; t++) {
      rd_kafka_message_t *m = rd_kafka_consumer_poll(cons, 100);
      if (m && !m->err) {
         bson_t back;
         bson_iter_t it, src;
         assert_true(json_decode(m->payload, m->len, &back, &err));
         assert_true(bson_iter_init_find(&it, &back, "i"));
         int i = bson_iter_int32(&it);
         assert_true(i >= 0 && i < n);
         seen[i]++;
         total++;
         assert_true(bson_iter_init(&it, &back));
         assert_true(bson_iter_find_descendant(&it, "_stream_meta.source", &src));
         assert_true(bson_iter_recurse(&src, &it));
         for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            assert_true(bson_iter_next(&it));
            assert_string_equal(bson_iter_key(&it), keys[k]);
            switch (k) {
            case 0:
               assert_string_equal(bson_iter_utf8(&it, NULL), "kafka");
               break;
            case 1:
               assert_true(BSON_ITER_HOLDS_DATE_TIME(&it));
               assert_true(bson_iter_date_time(&it) > 1700000000000);
               break;
            case 2:
               assert_string_equal(bson_iter_utf8(&it, NULL), "in");
               break;
            case 3:
               assert_int_equal(bson_iter_as_int64(&it), i % 4);
               break;
            default:
               assert_int_equal(bson_iter_as_int64(&it), i / 4);
            }
         }
         assert_false(bson_iter_next(&it)); /* no key, no headers */
         bson_destroy(&back);
      }
      if (m) {
         rd_kafka_message_destroy(m);
      }
   }
   for (int i = 0; i < n; i++) {
      if (seen[i] != 1) {
         fail_msg("%s: input %d came out %d times", topic, i, seen[i]);
      }
   }
   free(seen);
   rd_kafka_consumer_close(cons);
   rd_kafka_destroy(cons);
}

/* A processor on tier SP30 (two workers on a host with two CPUs or more)
 * whose second worker cannot start - its thread is refused, then its
 * $emit's cluster is down when its sink opens - fails its start with the
 * reason (every worker started is stopped and freed: the ASan build's
 * leak check), and starts afterwards with every input read: nothing was
 * consumed or committed by the failed starts. */
static void
test_worker_start_failures(void **state)
{
   (void) state;
   if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
      skip(); /* one CPU: no workers to fail */
   }
   enum { N = 40 };
   char errstr[256];
   rd_kafka_t *mrk_in, *mrk_out;
   rd_kafka_mock_cluster_t *mc_in = mock_cluster_new(&mrk_in, "out0");
   rd_kafka_mock_cluster_t *mc_out = mock_cluster_new(&mrk_out, "out");
   assert_int_equal(rd_kafka_mock_topic_create(mc_in, "in", 4, 1), 0);
   assert_int_equal(rd_kafka_mock_topic_create(mc_out, "out1", 1, 1), 0);
   char bs_in[128], bs_out[128];
   snprintf(bs_in, sizeof bs_in, "%s", rd_kafka_mock_cluster_bootstraps(mc_in));
   snprintf(bs_out, sizeof bs_out, "%s", rd_kafka_mock_cluster_bootstraps(mc_out));

   rd_kafka_conf_t *pconf = rd_kafka_conf_new();
   assert_int_equal(rd_kafka_conf_set(pconf, "bootstrap.servers", bs_in, errstr,
                                      sizeof errstr), RD_KAFKA_CONF_OK);
   rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, errstr, sizeof errstr);
   assert_non_null(prod);
   for (int i = 0; i < N; i++) {
      char v[32];
      int len = snprintf(v, sizeof v, "{\"i\": %d}", i);
      assert_int_equal(rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("in"),
                                         RD_KAFKA_V_PARTITION(i % 4),
                                         RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                         RD_KAFKA_V_VALUE(v, (size_t) len),
                                         RD_KAFKA_V_END),
                       0);
   }
   assert_int_equal(rd_kafka_flush(prod, 10000), 0);
   rd_kafka_destroy(prod);

   char dir[64];
   snprintf(dir, sizeof dir, "/tmp/aspen-test-kafka-XXXXXX");
   assert_non_null(mkdtemp(dir));
   char json[1024];
   snprintf(json, sizeof json,
            "{\"0\": {\"name\": \"kin\", \"type\": \"kafka\", \"bootstrapServers\": \"%s\"},"
            " \"1\": {\"name\": \"kout\", \"type\": \"kafka\", \"bootstrapServers\": \"%s\"}}",
            bs_in, bs_out);
   bson_t *conns = tmp_bson(json);
   aspen_engine_opts_t eopts = {.state_dir = dir, .connections = conns};
   aspen_error_t err;
   aspen_engine_t *eng = aspen_engine_new(&eopts, &err);
   if (!eng) {
      fail_msg("engine: %s", err.message);
   }
   engine_expect(eng,
                 "{\"createStreamProcessor\": \"w\", \"pipeline\": ["
                 "{\"$source\": {\"connectionName\": \"kin\", \"topic\": \"in\","
                 " \"config\": {\"auto_offset_reset\": \"earliest\"}}},"
                 "{\"$match\": {\"i\": {\"$gte\": 0}}},"
                 "{\"$emit\": {\"connectionName\": \"kout\", \"topic\": \"out\"}}],"
                 " \"options\": {\"tier\": \"SP30\"}}",
                 0, NULL);

   /* The second worker's thread is refused. */
   g_creates = 0;
   aspen__workers_hooks.thread_create = failing_create;
   engine_expect(eng, "{\"startStreamProcessor\": \"w\"}", ASPEN_ERR_InternalError,
                 "cannot start worker thread 2 of 2 for the processor's "
                 "partitions: Resource temporarily unavailable");
   aspen__workers_hooks.thread_create = pthread_create;
   assert_int_equal(g_creates, 2);

   /* The second worker's $emit cannot reach its cluster. */
   aspen__workers_hooks.before_init = emit_cluster_down;
   aspen__workers_hooks.arg = mc_out;
   engine_expect(eng, "{\"startStreamProcessor\": \"w\"}",
                 ASPEN_ERR_StreamProcessorKafkaConnectionError,
                 "Kafka connection error on connection 'kout'");
   aspen__workers_hooks.before_init = NULL;
   aspen__workers_hooks.arg = NULL;
   assert_int_equal(rd_kafka_mock_broker_set_up(mc_out, 1), 0);

   /* Then it runs, and every input comes out once. */
   engine_expect(eng, "{\"startStreamProcessor\": \"w\"}", 0, NULL);
   expect_outputs(bs_out, "out", N);
   engine_expect(eng, "{\"stopStreamProcessor\": \"w\"}", 0, NULL);
   engine_expect(eng, "{\"dropStreamProcessor\": \"w\"}", 0, NULL);
   /* The same on the default tier: the processor's thread alone, its
    * $emit topic read from the metadata. */
   engine_expect(eng,
                 "{\"createStreamProcessor\": \"w1\", \"pipeline\": ["
                 "{\"$source\": {\"connectionName\": \"kin\", \"topic\": \"in\","
                 " \"config\": {\"auto_offset_reset\": \"earliest\"}}},"
                 "{\"$match\": {\"i\": {\"$gte\": 0}}},"
                 "{\"$emit\": {\"connectionName\": \"kout\", \"topic\": {\"$cond\": "
                 "[{\"$eq\": [{\"$meta\": \"stream.source.topic\"}, \"in\"]}, "
                 "\"out1\", \"never\"]}}}]}",
                 0, NULL);
   engine_expect(eng, "{\"startStreamProcessor\": \"w1\"}", 0, NULL);
   expect_outputs(bs_out, "out1", N);
   engine_expect(eng, "{\"stopStreamProcessor\": \"w1\"}", 0, NULL);
   engine_expect(eng, "{\"dropStreamProcessor\": \"w1\"}", 0, NULL);
   aspen_engine_destroy(eng);
   bson_destroy(conns);
   char rm[128];
   snprintf(rm, sizeof rm, "rm -rf %s", dir);
   assert_int_equal(system(rm), 0);
   rd_kafka_mock_cluster_destroy(mc_out);
   rd_kafka_destroy(mrk_out);
   rd_kafka_mock_cluster_destroy(mc_in);
   rd_kafka_destroy(mrk_in);
}

/* ---- a round trip through the mock cluster ------------------------------- */

static void
set_flag(void *arg)
{
   *(bool *) arg = true;
}

/* A one-broker mock cluster (its handle in *mrk) with `topic`, one
 * partition. */
static rd_kafka_mock_cluster_t *
mock_cluster_new(rd_kafka_t **mrk, const char *topic)
{
   char errstr[256];
   rd_kafka_conf_t *mconf = rd_kafka_conf_new();
   rd_kafka_conf_set(mconf, "log_level", "0", NULL, 0);
   *mrk = rd_kafka_new(RD_KAFKA_PRODUCER, mconf, errstr, sizeof errstr);
   assert_non_null(*mrk);
   rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(*mrk, 1);
   assert_non_null(mc);
   assert_int_equal(rd_kafka_mock_topic_create(mc, topic, 1, 1), 0);
   return mc;
}

static void
test_mock_cluster_roundtrip(void **state)
{
   (void) state;
   char errstr[256];
   rd_kafka_t *mrk;
   rd_kafka_mock_cluster_t *mc = mock_cluster_new(&mrk, "t");

   /* A connection to the mock cluster, as the config file would give it. */
   char json[512];
   snprintf(json, sizeof json,
            "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"%s\","
            " \"config\": {\"socket.timeout.ms\": 10000}}]}",
            rd_kafka_mock_cluster_bootstraps(mc));
   bson_iter_t it;
   aspen_error_t err;
   aspen_conns_t conns;
   assert_true(conns_from_json(&conns, json, NULL, &err));
   const aspen_conn_t *k = aspen_conns_find(&conns, "k");
   aspen_kafka_client_hdr_t hdr = {"mock"};

   /* Produce one encoded document with a long key. */
   rd_kafka_conf_t *pconf = aspen__conn_kafka_client_conf(k, &hdr, &err);
   assert_non_null(pconf);
   rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, errstr, sizeof errstr);
   assert_non_null(prod);
   /* The cluster answers a metadata request; a fatal error a callback had
    * recorded would end the wait with _FATAL instead. */
   const struct rd_kafka_metadata *md;
   assert_int_equal(aspen__kafka_metadata(prod, NULL, &md, 10000, "", NULL, NULL), 0);
   assert_true(md->broker_cnt == 1);
   rd_kafka_metadata_destroy(md);
   bson_t *doc = tmp_bson("{\"x\": {\"$numberLong\": \"9\"}, \"s\": \"é\"}");
   aspen_kafka_json_opts_t opts = {.canonical = true};
   size_t vlen;
   char *value = aspen__kafka_json_encode(doc, &opts, &vlen);
   bson_t *kw = tmp_bson("{\"v\": {\"$numberLong\": \"42\"}}");
   bson_iter_init_find(&it, kw, "v");
   uint8_t *key;
   size_t klen;
   assert_true(aspen__kafka_key_encode(ASPEN_KAFKA_KEY_LONG, bson_iter_value(&it), &key, &klen, &err));
   assert_int_equal(rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("t"),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_VALUE(value, vlen),
                                      RD_KAFKA_V_KEY(key, klen), RD_KAFKA_V_END),
                    0);
   assert_int_equal(rd_kafka_flush(prod, 10000), 0);
   rd_kafka_destroy(prod);

   /* Consume it back and decode. */
   rd_kafka_conf_t *cconf = aspen__conn_kafka_client_conf(k, &hdr, &err);
   assert_true(aspen__kafka_conf_set(cconf, "group.id", "g", &err));
   assert_true(aspen__kafka_conf_set(cconf, "session.timeout.ms", "6000", &err));
   assert_true(aspen__kafka_conf_set(cconf, "auto.offset.reset", "earliest", &err));
   assert_false(aspen__kafka_conf_set(cconf, "no.such.setting", "1", &err));
   assert_int_equal(err.code, 419);
   rd_kafka_t *cons = consumer_subscribed(cconf, "t");
   rd_kafka_message_t *m = NULL;
   for (int i = 0; i < 200 && !m; i++) {
      m = rd_kafka_consumer_poll(cons, 100);
      if (m && m->err) {
         rd_kafka_message_destroy(m);
         m = NULL;
      }
   }
   assert_non_null(m);
   bson_t back;
   assert_true(json_decode(m->payload, m->len, &back, &err));
   assert_true(bson_equal(&back, doc));
   bson_t meta = BSON_INITIALIZER;
   assert_true(aspen__kafka_key_decode(ASPEN_KAFKA_KEY_LONG, m->key, m->key_len, &meta, "key", &err));
   assert_canonical(&meta, "{\"key\": {\"$numberLong\": \"42\"}}");
   bson_destroy(&meta);
   bson_destroy(&back);
   rd_kafka_message_destroy(m);
   /* A consumer that shuts down normally is closed, destroyed and its
    * opaque freed before aspen__kafka_client_destroy returns. */
   bool freed = false;
   aspen__kafka_client_destroy(cons, true, set_flag, &freed, "mock", 30000);
   assert_true(freed);

   bson_free(value);
   bson_free(key);
   bson_destroy(kw);
   bson_destroy(doc);
   aspen_conns_cleanup(&conns);
   rd_kafka_mock_cluster_destroy(mc);
   rd_kafka_destroy(mrk);
}

/* aspen__kafka_message_has_headers against the headers produced, over
 * records with and without headers (one with enough for a two-byte count),
 * with a value, an empty one and none, produced plain and compressed (the
 * consumer then reads the values from the decompressed batch). */
static void
test_message_has_headers(void **state)
{
   (void) state;
   char errstr[256];
   rd_kafka_t *mrk;
   rd_kafka_mock_cluster_t *mc = mock_cluster_new(&mrk, "h");
   const char *codecs[] = {"none", "gzip", "lz4"};
   enum { PER_CODEC = 7 };
   /* value (NULL: none), its length, header count */
   static const struct {
      const char *value;
      size_t len;
      int headers;
   } msgs[PER_CODEC] = {
      {"{\"a\": 1}", 8, 0}, {"{\"a\": 2}", 8, 1}, {"{\"a\": 3}", 8, 70},
      {"", 0, 1},           {"", 0, 0},           {NULL, 0, 1},
      {NULL, 0, 0},
   };
   for (size_t c = 0; c < sizeof codecs / sizeof *codecs; c++) {
      rd_kafka_conf_t *pconf = rd_kafka_conf_new();
      assert_int_equal(rd_kafka_conf_set(pconf, "bootstrap.servers",
                                         rd_kafka_mock_cluster_bootstraps(mc),
                                         errstr, sizeof errstr),
                       RD_KAFKA_CONF_OK);
      assert_int_equal(rd_kafka_conf_set(pconf, "compression.codec",
                                         codecs[c], errstr, sizeof errstr),
                       RD_KAFKA_CONF_OK);
      rd_kafka_conf_set(pconf, "linger.ms", "50", NULL, 0);
      rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, errstr, sizeof errstr);
      assert_non_null(prod);
      for (int i = 0; i < PER_CODEC; i++) {
         rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
         for (int h = 0; h < msgs[i].headers; h++) {
            rd_kafka_header_add(hdrs, "k", -1, h % 2 ? NULL : "v",
                                h % 2 ? 0 : 1);
         }
         assert_int_equal(
            rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("h"),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_VALUE((void *) msgs[i].value, msgs[i].len),
                              RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END),
            0); /* the headers are the producer's now */
      }
      assert_int_equal(rd_kafka_flush(prod, 10000), 0);
      rd_kafka_destroy(prod);
   }
   rd_kafka_conf_t *cconf = rd_kafka_conf_new();
   rd_kafka_conf_set(cconf, "bootstrap.servers",
                     rd_kafka_mock_cluster_bootstraps(mc), NULL, 0);
   rd_kafka_conf_set(cconf, "group.id", "hg", NULL, 0);
   rd_kafka_conf_set(cconf, "auto.offset.reset", "earliest", NULL, 0);
   rd_kafka_t *cons = rd_kafka_new(RD_KAFKA_CONSUMER, cconf, errstr, sizeof errstr);
   assert_non_null(cons);
   rd_kafka_poll_set_consumer(cons);
   rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
   rd_kafka_topic_partition_list_add(topics, "h", RD_KAFKA_PARTITION_UA);
   assert_int_equal(rd_kafka_subscribe(cons, topics), 0);
   rd_kafka_topic_partition_list_destroy(topics);
   int seen = 0, with = 0;
   for (int i = 0; i < 300 && seen < 3 * PER_CODEC; i++) {
      rd_kafka_message_t *m = rd_kafka_consumer_poll(cons, 100);
      if (m && !m->err) {
         int idx = (int) (m->offset % PER_CODEC);
         bool fast = aspen__kafka_message_has_headers(m);
         rd_kafka_headers_t *hdrs = NULL;
         bool want = rd_kafka_message_headers(m, &hdrs) == 0 &&
                     rd_kafka_header_cnt(hdrs) > 0;
         assert_true(fast == (msgs[idx].headers > 0));
         assert_true(want == (msgs[idx].headers > 0));
         if (want) {
            assert_int_equal(rd_kafka_header_cnt(hdrs), msgs[idx].headers);
            with++;
         }
         seen++;
      }
      if (m) {
         rd_kafka_message_destroy(m);
      }
   }
   assert_int_equal(seen, 3 * PER_CODEC);
   assert_int_equal(with, 3 * 4);
   rd_kafka_consumer_close(cons);
   rd_kafka_destroy(cons);
   rd_kafka_mock_cluster_destroy(mc);
   rd_kafka_destroy(mrk);
}

/* A delivery report of a message librdkafka destroyed with its partition
 * (its topic deleted: the report may come before the one saying the
 * partition is unknown, or alone) names the topic-missing cause, as that
 * one does; every other error, the topic-missing ones included, is
 * itself. librdkafka 2.0's mock cluster cannot delete a topic, and a
 * topic it reports unknown while a produce request is answered late left
 * the messages to time out, not destroyed, so the report is not made
 * through the mock. */
static void
test_delivery_error(void **state)
{
   (void) state;
   assert_int_equal(aspen__kafka_delivery_error(RD_KAFKA_RESP_ERR__DESTROY),
                    RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION);
   static const rd_kafka_resp_err_t same[] = {
      RD_KAFKA_RESP_ERR_NO_ERROR,
      RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION,
      RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
      RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
      RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
      RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
      RD_KAFKA_RESP_ERR__PURGE_QUEUE,
      RD_KAFKA_RESP_ERR__FATAL,
   };
   for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
      assert_int_equal(aspen__kafka_delivery_error(same[i]), same[i]);
   }
}

/* A stop predicate that says "stop" at once, counting how often it was
 * asked in *(int *) arg. */
static bool
count_and_stop(void *arg)
{
   ++*(int *) arg;
   return true;
}

/* Nothing listens on port 1: the metadata wait gives up after its timeout
 * with librdkafka's error (not a fatal one), and a fatal error recorded by
 * the client's error callback (here, set beforehand) or the caller's stop
 * predicate ends it at once. */
static void
test_metadata_unreachable(void **state)
{
   (void) state;
   char errstr[256];
   rd_kafka_conf_t *conf = rd_kafka_conf_new();
   rd_kafka_conf_set(conf, "bootstrap.servers", "127.0.0.1:1", NULL, 0);
   rd_kafka_conf_set(conf, "log_level", "0", NULL, 0);
   rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
   assert_non_null(rk);
   const struct rd_kafka_metadata *md = (void *) 1;
   rd_kafka_resp_err_t e = aspen__kafka_metadata(rk, NULL, &md, 1500, "", NULL, NULL);
   assert_true(e == RD_KAFKA_RESP_ERR__TRANSPORT ||
               e == RD_KAFKA_RESP_ERR__TIMED_OUT);
   assert_null(md);
   assert_int_equal(aspen__kafka_metadata(rk, NULL, &md, 60000,
                                          "authentication failed", NULL,
                                          NULL),
                    RD_KAFKA_RESP_ERR__FATAL);
   /* The caller's stop predicate ends the wait before the first slice: a
    * processor stopped while it starts does not wait out the timeout. The
    * predicate is asked with the caller's argument. */
   int asked = 0;
   assert_int_equal(aspen__kafka_metadata(rk, NULL, &md, 60000, "",
                                          count_and_stop, &asked),
                    RD_KAFKA_RESP_ERR__INTR);
   assert_int_equal(asked, 1);
   assert_null(md);
   bool freed = false;
   aspen__kafka_client_destroy(rk, false, set_flag, &freed, "t", 30000);
   assert_true(freed);
}

/* ---- the local broker ("local": true) ------------------------------------ */

static void
on_sigusr1(int sig)
{
   (void) sig;
}

/* Found by fuzz_command: a signal the process gets may be delivered to the
 * local broker's thread, and an interrupted poll() ended librdkafka's mock
 * cluster for good (every later client saw "connection refused"). Here the
 * broker is made by a thread that takes SIGUSR1, which then blocks it, so
 * only a broker thread could take one; after a burst of them the broker
 * must still take a produce. */
static void
test_local_broker_survives_signals(void **state)
{
   (void) state;
   char errstr[256];
   aspen_error_t err;
   struct sigaction sa, old_sa;
   memset(&sa, 0, sizeof sa);
   sa.sa_handler = on_sigusr1; /* no SA_RESTART: poll() sees EINTR */
   sigemptyset(&sa.sa_mask);
   assert_int_equal(sigaction(SIGUSR1, &sa, &old_sa), 0);
   /* Made while this thread takes SIGUSR1 (threads inherit the mask)... */
   aspen_kafka_local_t *kl = aspen__kafka_local_new("sig", &err);
   assert_non_null(kl);
   /* ... then this thread stops taking it. */
   sigset_t usr1, old_mask;
   sigemptyset(&usr1);
   sigaddset(&usr1, SIGUSR1);
   assert_int_equal(pthread_sigmask(SIG_BLOCK, &usr1, &old_mask), 0);
   for (int i = 0; i < 50; i++) {
      kill(getpid(), SIGUSR1);
      usleep(2000);
   }
   rd_kafka_conf_t *conf = rd_kafka_conf_new();
   assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers",
                                      aspen__kafka_local_bootstrap(kl),
                                      errstr, sizeof errstr),
                    RD_KAFKA_CONF_OK);
   rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr,
                                   sizeof errstr);
   assert_non_null(prod);
   assert_int_equal(rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("sig"),
                                      RD_KAFKA_V_VALUE("{}", 2),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_END),
                    0);
   assert_int_equal(rd_kafka_flush(prod, 5000), 0);
   assert_int_equal(rd_kafka_outq_len(prod), 0);
   rd_kafka_destroy(prod);
   aspen__kafka_local_destroy(kl);

   /* The SIGUSR1 still pending (nobody took it) runs the no-op handler. */
   assert_int_equal(pthread_sigmask(SIG_SETMASK, &old_mask, NULL), 0);
   assert_int_equal(sigaction(SIGUSR1, &old_sa, NULL), 0);
}

/* A connection with "local": true gets a broker of its own, listed with its
 * address; a client configured from the connection produces to a topic the
 * broker creates on first use, and a consumer group reads it back. */
static void
test_local_broker(void **state)
{
   (void) state;
   char errstr[256];
   aspen_error_t err;
   aspen_conns_t conns;
   if (!conns_from_json(&conns,
                        "{\"c\": [{\"name\": \"loc\", \"type\": \"kafka\", \"local\": true,"
                        " \"config\": {\"socket.timeout.ms\": 10000}}]}",
                        NULL, &err)) {
      fail_msg("%s", err.message);
   }
   const aspen_conn_t *k = aspen_conns_find(&conns, "loc");
   assert_non_null(k);
   aspen_kafka_local_t *kl = aspen__conn_kafka_local(k);
   assert_non_null(kl);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, &k->doc, "bootstrapServers"));
   const char *listed = bson_iter_utf8(&it, NULL);
   assert_int_equal(strncmp(listed, "127.0.0.1:", 10), 0);
   assert_string_equal(listed, aspen__kafka_local_bootstrap(kl));
   assert_true(bson_iter_init_find(&it, &k->doc, "local"));
   assert_true(bson_iter_bool(&it));
   assert_true(bson_iter_init_find(&it, aspen__conn_kafka_conf(k),
                                   "bootstrap.servers"));
   assert_string_equal(bson_iter_utf8(&it, NULL), listed);

   aspen_kafka_client_hdr_t hdr = {"local"};
   rd_kafka_conf_t *pconf = aspen__conn_kafka_client_conf(k, &hdr, &err);
   assert_non_null(pconf);
   assert_true(aspen__kafka_conf_set(pconf, "enable.idempotence", "true", &err));
   rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, errstr, sizeof errstr);
   assert_non_null(prod);
   aspen_kafka_json_opts_t opts = {.canonical = false};
   for (int i = 1; i <= 3; i++) {
      bson_t doc = BSON_INITIALIZER;
      BSON_APPEND_INT32(&doc, "i", i);
      size_t vlen;
      char *value = aspen__kafka_json_encode(&doc, &opts, &vlen);
      assert_int_equal(rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("fresh"),
                                         RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                         RD_KAFKA_V_VALUE(value, vlen), RD_KAFKA_V_END),
                       0);
      bson_free(value);
      bson_destroy(&doc);
   }
   assert_int_equal(rd_kafka_flush(prod, 10000), 0);
   assert_int_equal(rd_kafka_outq_len(prod), 0);
   rd_kafka_destroy(prod);

   rd_kafka_conf_t *cconf = aspen__conn_kafka_client_conf(k, &hdr, &err);
   assert_true(aspen__kafka_conf_set(cconf, "group.id", "g", &err));
   assert_true(aspen__kafka_conf_set(cconf, "auto.offset.reset", "earliest", &err));
   rd_kafka_t *cons = consumer_subscribed(cconf, "fresh");
   int seen = 0, sum = 0;
   for (int i = 0; i < 300 && seen < 3; i++) {
      rd_kafka_message_t *m = rd_kafka_consumer_poll(cons, 100);
      if (m && !m->err) {
         bson_t back;
         assert_true(json_decode(m->payload, m->len, &back, &err));
         assert_true(bson_iter_init_find(&it, &back, "i"));
         sum += bson_iter_int32(&it);
         seen++;
         bson_destroy(&back);
      }
      if (m) {
         rd_kafka_message_destroy(m);
      }
   }
   assert_int_equal(seen, 3);
   assert_int_equal(sum, 6);
   rd_kafka_consumer_close(cons);
   rd_kafka_destroy(cons);
   aspen_conns_cleanup(&conns);

   /* A local broker has no address or security to configure. */
   static const char *const bad[] = {
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"local\": true,"
      " \"bootstrapServers\": \"h:1\"}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"local\": true,"
      " \"security\": {\"protocol\": \"SSL\"}}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"local\": 1}]}",
      "{\"c\": [{\"name\": \"k\", \"type\": \"kafka\", \"local\": false}]}",
      "{\"c\": [{\"name\": \"a\", \"type\": \"atlas\", \"uri\": \"mongodb://h\","
      " \"local\": true}]}",
   };
   for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
      if (conns_from_json(&conns, bad[i], NULL, &err)) {
         fail_msg("accepted %s", bad[i]);
      }
      aspen_conns_cleanup(&conns);
   }
}

/* ---- the stats snapshots --------------------------------------------------- */

static void
test_stats_table(void **state)
{
   (void) state;
   bson_t out = BSON_INITIALIZER;
   assert_false(aspen__kafka_stats_append("p1", &out));
   bson_t *a = tmp_bson("{\"kafkaConsumerGroup\": \"g\", \"kafkaTotalOffsetLag\": 5}");
   bson_t *b = tmp_bson("{\"kafkaConsumerGroup\": \"g\", \"kafkaTotalOffsetLag\": 0}");
   aspen__kafka_stats_publish("p1", a);
   aspen__kafka_stats_publish("p2", a);
   aspen__kafka_stats_publish("p1", b); /* replaces p1's */
   assert_true(aspen__kafka_stats_append("p1", &out));
   assert_canonical(&out, "{\"kafkaConsumerGroup\": \"g\", \"kafkaTotalOffsetLag\": 0}");
   aspen__kafka_stats_clear("p1");
   aspen__kafka_stats_clear("p1"); /* twice is fine */
   bson_reinit(&out);
   assert_false(aspen__kafka_stats_append("p1", &out));
   assert_true(bson_empty(&out));
   assert_true(aspen__kafka_stats_append("p2", &out));
   aspen__kafka_stats_clear("p2");
   bson_destroy(&out);
   bson_destroy(a);
   bson_destroy(b);
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_relaxed_and_canonical),
      cmocka_unit_test(test_decode_refuses_non_documents),
      cmocka_unit_test(test_decode_schema_registry_prefix),
      cmocka_unit_test(test_encode_formats),
      cmocka_unit_test(test_key_formats),
      cmocka_unit_test(test_connections),
      cmocka_unit_test(test_source_options),
      cmocka_unit_test(test_emit_options),
      cmocka_unit_test(test_exactly_once_check),
      cmocka_unit_test(test_workers_allowed),
      cmocka_unit_test(test_mock_cluster_roundtrip),
      cmocka_unit_test(test_worker_start_failures),
      cmocka_unit_test(test_message_has_headers),
      cmocka_unit_test(test_delivery_error),
      cmocka_unit_test(test_metadata_unreachable),
      cmocka_unit_test(test_local_broker),
      cmocka_unit_test(test_local_broker_survives_signals),
      cmocka_unit_test(test_stats_table),
   };
   return cmocka_run_group_tests_name("kafka", tests, NULL, NULL);
}
