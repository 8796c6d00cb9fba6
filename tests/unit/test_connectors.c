/*
 * test_connectors.c - the connector kinds driven through the connector
 * table (engine/connectors/connectors.def) and the catalog that hands it
 * down:
 *  - the registry (connections.c) with the built-in catalog's kinds:
 *    sample_stream_solar built in, each configured entry parsed by its
 *    type's kind, listings without secrets;
 *  - what the registry itself refuses (name, type, keys of no kind or of
 *    another kind) and what each kind refuses, with aspen's messages;
 *  - a kind that exists only as a row of this test's own catalog is
 *    configured, listed and freed like the built-in ones, and the pipeline
 *    parser reaches its $source, the source's options, its $emit sink and
 *    the catalog's source without a connection only through the catalog:
 *    adding a connector is its file plus its row;
 *  - a pipeline's sink is the $merge or $emit sink of its connection's
 *    row, and a connection without one gets the messages it always got.
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
#include "connectors/conn_https.h"
#include "connectors/conn_lambda.h"
#include "connectors/connectors.h"
#include "connectors/objstore.h"
#include "runtime/catalog.h"

/* The relaxed-JSON array `json` as a document `arr` views; the caller
 * destroys what is returned (what `arr` borrows from). */
static bson_t *
json_array(const char *json, bson_t *arr)
{
   bson_error_t berr;
   char *wrapped = bson_strdup_printf("{\"a\": %s}", json);
   bson_t *doc = bson_new_from_json((const uint8_t *) wrapped, -1, &berr);
   bson_free(wrapped);
   if (!doc) {
      fail_msg("bad test JSON %s: %s", json, berr.message);
   }
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, doc, "a"));
   assert_true(aspen_bson_view(&it, arr));
   return doc;
}

/* Loads `conns` from the relaxed-JSON array `json` through `cat`. */
static bool
load(aspen_conns_t *conns, const aspen_catalog_t *cat, const char *json,
     const char *backend, aspen_error_t *err)
{
   bson_t arr;
   bson_t *doc = json_array(json, &arr);
   memset(err, 0, sizeof *err);
   bool ok = aspen_conns_load(conns, cat, &arr, backend, NULL, err);
   bson_destroy(doc);
   return ok;
}

/* Fails unless connection `name`'s listing is `want` (relaxed JSON, in
 * field order). */
static void
assert_listed(const aspen_conns_t *conns, const char *name, const char *want)
{
   const aspen_conn_t *c = aspen_conns_find(conns, name);
   assert_non_null(c);
   bson_error_t berr;
   bson_t *w = bson_new_from_json((const uint8_t *) want, -1, &berr);
   assert_non_null(w);
   if (!bson_equal(w, &c->doc)) {
      char *got = bson_as_relaxed_extended_json(&c->doc, NULL);
      fail_msg("%s is listed as %s\n want %s", name, got, want);
   }
   bson_destroy(w);
}

/* Fails unless loading `json` is refused with exactly `want`. */
static void
assert_refused(const aspen_catalog_t *cat, const char *json, const char *want)
{
   aspen_conns_t conns;
   aspen_error_t err;
   if (load(&conns, cat, json, "mongodb://127.0.0.1:1", &err)) {
      fail_msg("accepted %s", json);
   }
   if (strcmp(err.message, want) != 0) {
      fail_msg("%s\n gave '%s'\n want '%s'", json, err.message, want);
   }
   assert_true(err.code != 0);
   aspen_conns_cleanup(&conns);
}

static void
test_builtin_kinds(void **state)
{
   (void) state;
   const aspen_catalog_t *cat = aspen_builtins_catalog();
   aspen_conns_t conns;
   aspen_error_t err;
   if (!load(&conns, cat,
             "[{\"name\": \"a\", \"type\": \"atlas\","
             "  \"uri\": \"mongodb://user:pw@h:1/db\","
             "  \"dbRoleToExecute\": {\"role\": \"r\", \"type\": \"CUSTOM\"}},"
             " {\"name\": \"b\", \"clusterName\": \"Cluster0\"},"
             " {\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"h:2\","
             "  \"security\": {\"protocol\": \"SASL_SSL\", \"mechanism\": \"PLAIN\","
             "                \"username\": \"u\", \"password\": \"pw\"},"
             "  \"config\": {\"linger.ms\": 5, \"sasl.oauthbearer.token\": \"t\"}}]",
             "mongodb://backend:3", &err)) {
      fail_msg("%s", err.message);
   }
   /* The built-in connection first, then the config's in order. */
   assert_int_equal(conns.n, 4);
   assert_string_equal(conns.items[0].name, "sample_stream_solar");
   assert_string_equal(conns.items[0].kind->type_name, "sample_solar");
   assert_null(conns.items[0].opts);
   assert_string_equal(conns.items[1].name, "a");
   assert_string_equal(conns.items[3].kind->type_name, "kafka");
   /* As ASP lists them: the sample "inmemory", an atlas connection's
    * cluster (its clusterName, else its URI's hosts). */
   assert_listed(&conns, "sample_stream_solar",
                 "{\"name\": \"sample_stream_solar\", \"type\": \"inmemory\"}");
   assert_listed(&conns, "a",
                 "{\"name\": \"a\", \"type\": \"atlas\", \"cluster\": \"h:1\","
                 " \"uri\": \"mongodb://<redacted>@h:1/db\","
                 " \"dbRoleToExecute\": {\"role\": \"r\", \"type\": \"CUSTOM\"}}");
   /* No type: atlas, at the backend, as readWriteAnyDatabase; its
    * clusterName listed as its cluster. */
   assert_listed(&conns, "b",
                 "{\"name\": \"b\", \"type\": \"atlas\","
                 " \"cluster\": \"Cluster0\", \"uri\": \"mongodb://backend:3\","
                 " \"dbRoleToExecute\": {\"role\": \"readWriteAnyDatabase\","
                 " \"type\": \"BUILT_IN\"}}");
   assert_listed(&conns, "k",
                 "{\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"h:2\","
                 " \"security\": {\"protocol\": \"SASL_SSL\", \"mechanism\": \"PLAIN\","
                 " \"username\": \"u\"}, \"config\": {\"linger.ms\": 5,"
                 " \"sasl.oauthbearer.token\": \"<redacted>\"}}");
   /* Each connection's kind is its row of the catalog's table. */
   for (size_t i = 0; i < conns.n; i++) {
      const aspen_connector_t *kind = conns.items[i].kind;
      assert_true(kind >= cat->connectors &&
                  kind < cat->connectors + cat->n_connectors);
   }
   assert_null(aspen_conns_find(&conns, "nope"));
   aspen_conns_cleanup(&conns);

   /* Without a config: the built-in connections only. */
   assert_true(aspen_conns_load(&conns, cat, NULL, NULL, NULL, &err));
   assert_int_equal(conns.n, 1);
   aspen_conns_cleanup(&conns);
}

/* The https kind: URL, headers, auth and CA file; listings show the URL
 * without credentials and only the header names and the auth kind. */
static void
test_https_kind(void **state)
{
   (void) state;
   const aspen_catalog_t *cat = aspen_builtins_catalog();
   aspen_conns_t conns;
   aspen_error_t err;
   if (!load(&conns, cat,
             "[{\"name\": \"h\", \"type\": \"https\","
             "  \"url\": \"https://u:secret@api.example.com/v1\","
             "  \"headers\": {\"X-Api-Key\": \"k123\"},"
             "  \"auth\": {\"bearerToken\": \"tok\"},"
             "  \"tlsCAFile\": \"/ca.pem\", \"maxInFlight\": 4},"
             " {\"name\": \"b\", \"type\": \"https\", \"url\": \"http://127.0.0.1:1\","
             "  \"auth\": {\"username\": \"Aladdin\", \"password\": \"open sesame\"}}]",
             "mongodb://backend:3", &err)) {
      fail_msg("%s", err.message);
   }
   assert_listed(&conns, "h",
                 "{\"name\": \"h\", \"type\": \"https\","
                 " \"url\": \"https://<redacted>@api.example.com/v1\","
                 " \"headers\": [\"X-Api-Key\"], \"auth\": \"bearer\","
                 " \"tlsCAFile\": \"/ca.pem\", \"maxInFlight\": 4}");
   assert_listed(&conns, "b",
                 "{\"name\": \"b\", \"type\": \"https\","
                 " \"url\": \"http://127.0.0.1:1\", \"auth\": \"basic\","
                 " \"maxInFlight\": 16}");
   const aspen_conn_https_t *h = aspen__conn_https(aspen_conns_find(&conns, "h"));
   assert_non_null(h);
   assert_int_equal(h->n_headers, 2);
   assert_string_equal(h->headers[0], "X-Api-Key: k123");
   assert_string_equal(h->headers[1], "Authorization: Bearer tok");
   const aspen_conn_https_t *b = aspen__conn_https(aspen_conns_find(&conns, "b"));
   /* RFC 7617's example. */
   assert_string_equal(b->headers[0],
                       "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
   assert_null(aspen__conn_https(aspen_conns_find(&conns, "sample_stream_solar")));
   aspen_conns_cleanup(&conns);

   assert_refused(cat, "[{\"name\": \"h\", \"type\": \"https\"}]",
                  "config key 'connections[0].url' is required for an https "
                  "connection: a string starting with https:// (or http://)");
   assert_refused(cat,
                  "[{\"name\": \"h\", \"type\": \"https\", \"url\": \"ftp://x\"}]",
                  "config key 'connections[0].url' is required for an https "
                  "connection: a string starting with https:// (or http://)");
   assert_refused(cat,
                  "[{\"name\": \"h\", \"type\": \"https\", \"url\": \"http://x\","
                  "  \"headers\": {\"Bad Name\": \"v\"}}]",
                  "config key 'connections[0].headers.Bad Name' must be a "
                  "valid HTTP header: a token name and a string value on one "
                  "line");
   assert_refused(cat,
                  "[{\"name\": \"h\", \"type\": \"https\", \"url\": \"http://x\","
                  "  \"auth\": {\"bearerToken\": \"t\", \"username\": \"u\"}}]",
                  "config key 'connections[0].auth' must be {bearerToken} or "
                  "{username, password}");
   assert_refused(cat,
                  "[{\"name\": \"h\", \"type\": \"https\", \"url\": \"http://x\","
                  "  \"maxInFlight\": 0}]",
                  "config key 'connections[0].maxInFlight' must be an integer "
                  "from 1 to 1024");
   /* A key of another kind. */
   assert_refused(cat,
                  "[{\"name\": \"h\", \"type\": \"https\", \"url\": \"http://x\","
                  "  \"uri\": \"mongodb://h\"}]",
                  "config key 'connections[0].uri' is for atlas connections "
                  "only");
}

/* The aws-lambda kind: ASP's aws.roleArn plus aspen's region, endpoint and
 * keys; listings show no key. */
static void
test_lambda_kind(void **state)
{
   (void) state;
   const aspen_catalog_t *cat = aspen_builtins_catalog();
   aspen_conns_t conns;
   aspen_error_t err;
   if (!load(&conns, cat,
             "[{\"name\": \"l\", \"type\": \"aws-lambda\","
             "  \"aws\": {\"roleArn\": \"arn:aws:iam::1:role/r\"},"
             "  \"region\": \"eu-west-1\","
             "  \"credentials\": {\"accessKeyId\": \"AK\", \"secretAccessKey\": \"SK\"}},"
             " {\"name\": \"m\", \"type\": \"aws-lambda\", \"endpoint\": \"http://127.0.0.1:5\","
             "  \"credentials\": {\"accessKeyId\": \"AK\", \"secretAccessKey\": \"SK\"}}]",
             "mongodb://backend:3", &err)) {
      fail_msg("%s", err.message);
   }
   assert_listed(&conns, "l",
                 "{\"name\": \"l\", \"type\": \"aws-lambda\","
                 " \"aws\": {\"roleArn\": \"arn:aws:iam::1:role/r\"},"
                 " \"region\": \"eu-west-1\","
                 " \"endpoint\": \"https://lambda.eu-west-1.amazonaws.com\"}");
   assert_listed(&conns, "m",
                 "{\"name\": \"m\", \"type\": \"aws-lambda\","
                 " \"region\": \"us-east-1\", \"endpoint\": \"http://127.0.0.1:5\"}");
   const aspen_conn_lambda_t *l = aspen__conn_lambda(aspen_conns_find(&conns, "l"));
   assert_non_null(l);
   /* Its AWS part is aws.c's, as every AWS kind's. */
   assert_string_equal(l->aws.region, "eu-west-1");
   assert_string_equal(l->aws.access_key, "AK");
   assert_string_equal(l->aws.secret_key, "SK");
   assert_null(l->aws.session_token);
   assert_string_equal(l->endpoint, "https://lambda.eu-west-1.amazonaws.com");
   assert_null(aspen__conn_lambda(aspen_conns_find(&conns, "sample_stream_solar")));
   aspen_conns_cleanup(&conns);
   assert_refused(cat,
                  "[{\"name\": \"l\", \"type\": \"aws-lambda\","
                  "  \"aws\": {\"roleArn\": \"r\", \"externalId\": \"x\"}}]",
                  "unknown config key 'connections[0].aws.externalId'");
   assert_refused(cat,
                  "[{\"name\": \"l\", \"type\": \"aws-lambda\", \"endpoint\": \"ftp://x\","
                  "  \"credentials\": {\"accessKeyId\": \"AK\", \"secretAccessKey\": \"SK\"}}]",
                  "config key 'connections[0].endpoint' must be an http:// or "
                  "https:// URL, not 'ftp://x'");
   /* Temporary credentials, as for S3 and Kinesis: the session token is
    * sent with each signed request, never listed. */
   if (!load(&conns, cat,
             "[{\"name\": \"t\", \"type\": \"aws-lambda\","
             "  \"credentials\": {\"accessKeyId\": \"AK\", \"secretAccessKey\": \"SK\","
             "                    \"sessionToken\": \"TOK\"}}]",
             "mongodb://backend:3", &err)) {
      fail_msg("%s", err.message);
   }
   l = aspen__conn_lambda(aspen_conns_find(&conns, "t"));
   assert_non_null(l);
   assert_string_equal(l->aws.session_token, "TOK");
   assert_listed(&conns, "t",
                 "{\"name\": \"t\", \"type\": \"aws-lambda\","
                 " \"region\": \"us-east-1\","
                 " \"endpoint\": \"https://lambda.us-east-1.amazonaws.com\"}");
   aspen_conns_cleanup(&conns);
   /* Without keys (none in the environment either): refused at load. */
   unsetenv("AWS_ACCESS_KEY_ID");
   assert_refused(cat, "[{\"name\": \"l\", \"type\": \"aws-lambda\"}]",
                  "config key 'connections[0].credentials' needs accessKeyId "
                  "and secretAccessKey (or AWS_ACCESS_KEY_ID and "
                  "AWS_SECRET_ACCESS_KEY in aspen's environment): aspen signs "
                  "the Invoke requests itself");
}

static void
test_refused(void **state)
{
   (void) state;
   const aspen_catalog_t *cat = aspen_builtins_catalog();
   /* The registry's own checks. */
   assert_refused(cat, "[5]", "config key 'connections[0]' must be an object");
   assert_refused(cat, "[{\"type\": \"atlas\"}]",
                  "config key 'connections[0].name' is required");
   assert_refused(cat, "[{\"name\": 1}]",
                  "config key 'connections[0].name' must be a string");
   assert_refused(cat, "[{\"name\": \"a\", \"type\": 1}]",
                  "config key 'connections[0].type' must be a string");
   assert_refused(cat, "[{\"name\": \"a\", \"colour\": \"red\"}]",
                  "unknown config key 'connections[0].colour'");
   assert_refused(cat, "[{\"name\": \"a\"}, {\"name\": \"a\"}]",
                  "config key 'connections[1].name': connection 'a' is "
                  "defined twice");
   assert_refused(cat, "[{\"name\": \"sample_stream_solar\"}]",
                  "config key 'connections[0].name': connection "
                  "'sample_stream_solar' is defined twice");
   /* Only configurable kinds are types; the message lists them. */
   assert_refused(cat, "[{\"name\": \"a\", \"type\": \"sample_solar\"}]",
                  "config key 'connections[0].type' must be 'atlas', "
                  "'kafka', 'schemaRegistry', 'https', 'aws-lambda', 's3', "
                  "'azure-blob' or 'kinesis', not 'sample_solar'");
   assert_refused(cat, "[{\"name\": \"a\", \"type\": \"nosuch\"}]",
                  "config key 'connections[0].type' must be 'atlas', "
                  "'kafka', 'schemaRegistry', 'https', 'aws-lambda', 's3', "
                  "'azure-blob' or 'kinesis', not 'nosuch'");
   assert_refused(cat, "[{\"name\": \"a\", \"type\": \"gcs\"}]",
                  "config key 'connections[0].type' must be 'atlas', "
                  "'kafka', 'schemaRegistry', 'https', 'aws-lambda', 's3', "
                  "'azure-blob' or 'kinesis', not 'gcs'");
   /* A type ASP has and aspen not yet (the not-yet list): said so, not
    * called unknown. */
   assert_refused(cat, "[{\"name\": \"a\", \"type\": \"pubsub\"}]",
                  "config key 'connections[0].type': connection type "
                  "'pubsub' is supported by Atlas Stream Processing but not "
                  "yet by this version of aspen (Google Cloud Pub/Sub)");
   /* A key of another kind. */
   assert_refused(cat,
                  "[{\"name\": \"a\", \"bootstrapServers\": \"h:1\"}]",
                  "config key 'connections[0].bootstrapServers' is for "
                  "kafka connections only");
   assert_refused(cat,
                  "[{\"name\": \"k\", \"type\": \"kafka\", \"local\": true,"
                  " \"dbRoleToExecute\": {\"role\": \"r\"}}]",
                  "config key 'connections[0].dbRoleToExecute' is for "
                  "atlas connections only");
   /* The kinds' own checks. */
   assert_refused(cat, "[{\"name\": \"a\", \"uri\": 7}]",
                  "config key 'connections[0].uri' must be a string");
   assert_refused(cat,
                  "[{\"name\": \"a\", \"dbRoleToExecute\": {\"role\": \"r\","
                  " \"type\": \"OWN\"}}]",
                  "config key 'connections[0].dbRoleToExecute.type' must be "
                  "BUILT_IN or CUSTOM, not 'OWN'");
   assert_refused(cat, "[{\"name\": \"k\", \"type\": \"kafka\"}]",
                  "config key 'connections[0].bootstrapServers' is required "
                  "for a kafka connection (or \"local\": true for a broker "
                  "aspen hosts)");
   assert_refused(cat,
                  "[{\"name\": \"k\", \"type\": \"kafka\", \"local\": 1}]",
                  "config key 'connections[0].local' must be a boolean");
}

/* The object-store kinds: ASP's fields listed, aspen's secrets never. */
static void
test_cloud_kinds(void **state)
{
   (void) state;
   const aspen_catalog_t *cat = aspen_builtins_catalog();
   aspen_conns_t conns;
   aspen_error_t err;
   if (!load(&conns, cat,
             "[{\"name\": \"s\", \"type\": \"s3\","
             "  \"aws\": {\"roleArn\": \"arn:aws:iam::1:role/r\", \"testBucket\": \"b\"},"
             "  \"region\": \"eu-west-1\", \"endpoint\": \"http://127.0.0.1:5000/\","
             "  \"credentials\": {\"accessKeyId\": \"AKID\","
             "                   \"secretAccessKey\": \"SECRET\", \"sessionToken\": \"TOK\"}},"
             " {\"name\": \"z\", \"type\": \"azure-blob\","
             "  \"azure\": {\"storageAccountName\": \"acct\", \"servicePrincipalId\": \"sp\"},"
             "  \"accountKey\": \"a2V5\"},"
             " {\"name\": \"z2\", \"type\": \"azure-blob\","
             "  \"azure\": {\"storageAccountName\": \"dev\"},"
             "  \"endpoint\": \"http://127.0.0.1:10000/dev\"}]",
             NULL, &err)) {
      fail_msg("%s", err.message);
   }
   assert_listed(&conns, "s",
                 "{\"name\": \"s\", \"type\": \"s3\", \"aws\": {\"roleArn\":"
                 " \"arn:aws:iam::1:role/r\", \"testBucket\": \"b\"}, \"region\":"
                 " \"eu-west-1\", \"endpoint\": \"http://127.0.0.1:5000\","
                 " \"credentials\": {\"accessKeyId\": \"AKID\"}}");
   assert_listed(&conns, "z",
                 "{\"name\": \"z\", \"type\": \"azure-blob\", \"azure\":"
                 " {\"storageAccountName\": \"acct\", \"servicePrincipalId\": \"sp\"},"
                 " \"endpoint\": \"https://acct.blob.core.windows.net\"}");
   const aspen_aws_t *aws = aspen__conn_s3_aws(aspen_conns_find(&conns, "s"));
   assert_non_null(aws);
   assert_string_equal(aws->secret_key, "SECRET");
   assert_string_equal(aws->session_token, "TOK");
   const aspen_azure_blob_t *az =
      aspen__conn_azure_blob(aspen_conns_find(&conns, "z"));
   assert_non_null(az);
   assert_int_equal(az->key_len, 3);
   assert_memory_equal(az->key, "key", 3);
   assert_int_equal(aspen__conn_azure_blob(aspen_conns_find(&conns, "z2"))
                       ->key_len,
                    0);
   assert_null(aspen__conn_s3_aws(aspen_conns_find(&conns, "z")));
   aspen_conns_cleanup(&conns);

   assert_refused(cat,
                  "[{\"name\": \"s\", \"type\": \"s3\", \"aws\": {\"role\": \"x\"}}]",
                  "unknown config key 'connections[0].aws.role'");
   assert_refused(cat,
                  "[{\"name\": \"s\", \"type\": \"s3\", \"endpoint\": \"ftp://h\"}]",
                  "config key 'connections[0].endpoint' must be an http:// "
                  "or https:// URL, not 'ftp://h'");
   assert_refused(cat,
                  "[{\"name\": \"s\", \"type\": \"s3\","
                  " \"credentials\": {\"accessKeyId\": \"a\"}}]",
                  "config key 'connections[0].credentials' needs accessKeyId "
                  "and secretAccessKey");
   assert_refused(cat, "[{\"name\": \"z\", \"type\": \"azure-blob\"}]",
                  "config key 'connections[0].azure.storageAccountName' is "
                  "required for an azure-blob connection");
   assert_refused(cat,
                  "[{\"name\": \"z\", \"type\": \"azure-blob\","
                  " \"azure\": {\"storageAccountName\": \"a\"},"
                  " \"accountKey\": \"not base64!\"}]",
                  "config key 'connections[0].accountKey' must be the storage "
                  "account's key in base64");
   assert_refused(cat,
                  "[{\"name\": \"z\", \"type\": \"azure-blob\","
                  " \"azure\": {\"storageAccountName\": \"a\"},"
                  " \"credentials\": {}}]",
                  "config key 'connections[0].credentials' is for "
                  "aws-lambda, s3 or kinesis connections only");
}

/* ---- a kind that is only a row of this test's catalog --------------------- */

static int g_fake_freed;

static bool
fake_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
           aspen_error_t *err)
{
   *opts = NULL;
   const char *path = aspen_bson_utf8(entry, "path");
   if (!path) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.path' is required for a fake "
                      "connection",
                      cfg->where);
      return false;
   }
   *opts = bson_strdup(path);
   return true;
}

static void
fake_list(const void *opts, bson_t *doc)
{
   BSON_APPEND_UTF8(doc, "path", opts ? (const char *) opts : "(built in)");
}

static void
fake_destroy(void *opts)
{
   g_fake_freed += opts != NULL;
   bson_free(opts);
}

static const char *const fake_keys[] = {"path", NULL};

static const aspen_conn_ops_t fake_conn_ops = {
   .builtin = "fake_builtin",
   .keys = fake_keys,
   .parse = fake_parse,
   .list = fake_list,
   .destroy = fake_destroy,
};

/* A second kind of the same shape, without a built-in connection or a
 * $source. */
static const aspen_conn_ops_t mute_conn_ops = {
   .keys = fake_keys,
   .parse = fake_parse,
   .list = fake_list,
   .destroy = fake_destroy,
};

/* The fake kind's $source: one option, depth (a positive int), required. */
typedef struct {
   int32_t depth;
} fake_opts_t;

static int g_fake_specs_freed;

static bool
fake_parse_option(aspen_source_spec_t *spec, const bson_iter_t *it,
                  aspen_parse_ctx_t *pc, bool *handled, aspen_error_t *err)
{
   *handled = strcmp(bson_iter_key(it), "depth") == 0;
   if (!*handled) {
      return true;
   }
   if (!BSON_ITER_HOLDS_INT32(it) || bson_iter_int32(it) < 1) {
      aspen_parse_error(err, pc, "$source.depth",
                        "$source.depth must be a positive int");
      return false;
   }
   fake_opts_t *o = spec->opts;
   if (!o) {
      spec->opts = o = aspen_xcalloc(1, sizeof *o);
   }
   o->depth = bson_iter_int32(it);
   return true;
}

static bool
fake_parse_done(aspen_source_spec_t *spec, aspen_parse_ctx_t *pc,
                aspen_error_t *err)
{
   if (!spec->opts) {
      aspen_parse_error(err, pc, "$source.depth",
                        "BSON field '$source.depth' is missing but a "
                        "required field");
      return false;
   }
   return true;
}

static void
fake_spec_destroy(void *opts)
{
   g_fake_specs_freed += opts != NULL;
   free(opts);
}

static const aspen_source_ops_t fake_source_ops = {
   .type = "fake",
   .operator_name = "FakeSourceOperator",
   .what = "a fake $source",
   .parse_option = fake_parse_option,
   .parse_done = fake_parse_done,
   .spec_destroy = fake_spec_destroy,
};

/* The catalog's $source without a connection, in place of documents: it
 * takes `documents` and anything else. */
static bool
any_parse_option(aspen_source_spec_t *spec, const bson_iter_t *it,
                 aspen_parse_ctx_t *pc, bool *handled, aspen_error_t *err)
{
   (void) spec;
   (void) it;
   (void) pc;
   (void) err;
   *handled = true;
   return true;
}

static const aspen_source_ops_t fake_documents_ops = {
   .type = "generated",
   .operator_name = "FakeDocumentsOperator",
   .what = "a fake documents $source",
   .parse_option = any_parse_option,
};

/* The fake kind's $emit sink: its argument needs `lines`, a string. */
static bool
fake_emit_parse(const bson_t *spec, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!aspen_bson_utf8(spec, "lines")) {
      aspen_parse_error(err, pc, "lines", "$emit.lines must be a string");
      return false;
   }
   return true;
}

static const aspen_sink_ops_t fake_emit_ops = {
   .operator_name = "FakeEmitOperator",
   .parse = fake_emit_parse,
};

/* The built-in catalog with two more rows, {"fake", fake_conn_ops,
 * fake_source_ops, fake_emit_ops} and {"mute", mute_conn_ops}, and
 * fake_documents_ops as its $source without a connection. */
static aspen_connector_t g_rows[16];
static aspen_catalog_t g_cat;

static const aspen_catalog_t *
fake_catalog(void)
{
   const aspen_catalog_t *base = aspen_builtins_catalog();
   size_t n = base->n_connectors;
   assert_true(n + 2 <= sizeof g_rows / sizeof g_rows[0]);
   g_cat = *base;
   memcpy(g_rows, base->connectors, n * sizeof g_rows[0]);
   g_rows[n] = (aspen_connector_t){.type_name = "fake",
                                   .conn = &fake_conn_ops,
                                   .source = &fake_source_ops,
                                   .emit = &fake_emit_ops};
   g_rows[n + 1] =
      (aspen_connector_t){.type_name = "mute", .conn = &mute_conn_ops};
   g_cat.connectors = g_rows;
   g_cat.n_connectors = n + 2;
   g_cat.documents = &fake_documents_ops;
   return &g_cat;
}

/* fake_catalog's row of type `name` (the built-in rows come first, as
 * many as connectors.def has). */
static const aspen_connector_t *
row_named(const char *name)
{
   for (size_t i = 0; i < g_cat.n_connectors; i++) {
      if (strcmp(g_rows[i].type_name, name) == 0) {
         return &g_rows[i];
      }
   }
   fail_msg("no row '%s' in the fake catalog", name);
   return NULL;
}

/* Parses the pipeline `json` (an array) as sp.process would
 * (`ephemeral`), or as a processor's. */
static aspen_pipeline_t *
parse_as(const aspen_catalog_t *cat, const aspen_conns_t *conns,
         const char *json, bool ephemeral, aspen_error_t *err)
{
   bson_t arr;
   bson_t *doc = json_array(json, &arr);
   memset(err, 0, sizeof *err);
   aspen_pipeline_t *pl = aspen_pipeline_parse(&arr, cat, conns, ephemeral,
                                               false, err);
   bson_destroy(doc);
   return pl;
}

static aspen_pipeline_t *
parse(const aspen_catalog_t *cat, const aspen_conns_t *conns,
      const char *json, aspen_error_t *err)
{
   return parse_as(cat, conns, json, true, err);
}

/* Fails unless parsing `json` is refused with a message containing
 * `want`. */
static void
assert_parse_refused(const aspen_catalog_t *cat, const aspen_conns_t *conns,
                     const char *json, const char *want)
{
   aspen_error_t err;
   aspen_pipeline_t *pl = parse(cat, conns, json, &err);
   if (pl || !strstr(err.message, want)) {
      fail_msg("%s\n gave '%s'\n want '%s'", json,
               pl ? "(parsed)" : err.message, want);
   }
   assert_int_equal(err.code, 420);
}

static void
test_new_kind(void **state)
{
   (void) state;
   const aspen_catalog_t *cat = fake_catalog();
   aspen_conns_t conns;
   aspen_error_t err;
   g_fake_freed = 0;
   if (!load(&conns, cat,
             "[{\"name\": \"f\", \"type\": \"fake\", \"path\": \"/x\"},"
             " {\"name\": \"a\"}]",
             "mongodb://backend:3", &err)) {
      fail_msg("%s", err.message);
   }
   /* Its built-in connection, after the other kinds' (table order). */
   assert_int_equal(conns.n, 4);
   assert_string_equal(conns.items[0].name, "sample_stream_solar");
   assert_string_equal(conns.items[1].name, "fake_builtin");
   assert_listed(&conns, "fake_builtin",
                 "{\"name\": \"fake_builtin\", \"type\": \"fake\","
                 " \"path\": \"(built in)\"}");
   assert_listed(&conns, "f",
                 "{\"name\": \"f\", \"type\": \"fake\", \"path\": \"/x\"}");
   assert_ptr_equal(aspen_conns_find(&conns, "f")->kind, row_named("fake"));
   aspen_conns_cleanup(&conns);
   assert_int_equal(g_fake_freed, 1);

   assert_refused(cat, "[{\"name\": \"f\", \"type\": \"nope\"}]",
                  "config key 'connections[0].type' must be 'atlas', "
                  "'kafka', 'schemaRegistry', 'https', 'aws-lambda', 's3', "
                  "'azure-blob', 'kinesis', 'fake' or 'mute', not 'nope'");
   assert_refused(cat, "[{\"name\": \"f\", \"type\": \"fake\"}]",
                  "config key 'connections[0].path' is required for a fake "
                  "connection");
   assert_refused(cat, "[{\"name\": \"a\", \"path\": \"/x\"}]",
                  "config key 'connections[0].path' is for fake or mute "
                  "connections only");
   assert_refused(cat,
                  "[{\"name\": \"f\", \"type\": \"fake\", \"path\": \"/x\","
                  " \"uri\": \"mongodb://h\"}]",
                  "config key 'connections[0].uri' is for atlas connections "
                  "only");
   /* Nothing was parsed into a connection, so nothing more to free. */
   assert_int_equal(g_fake_freed, 1);
}

/* The pipeline parser gets a $source, and its options, from the row of
 * the connection it names, and the $source without a connection from the
 * catalog: it names no source kind of its own. */
static void
test_source_through_kind(void **state)
{
   (void) state;
   const aspen_catalog_t *cat = fake_catalog();
   aspen_conns_t conns;
   aspen_error_t err;
   if (!load(&conns, cat,
             "[{\"name\": \"f\", \"type\": \"fake\", \"path\": \"/x\"},"
             " {\"name\": \"m\", \"type\": \"mute\", \"path\": \"/y\"}]",
             NULL, &err)) {
      fail_msg("%s", err.message);
   }
   g_fake_specs_freed = 0;
   aspen_pipeline_t *pl =
      parse(cat, &conns,
            "[{\"$source\": {\"connectionName\": \"f\", \"depth\": 3,"
            " \"tsFieldName\": \"t\"}}, {\"$match\": {}}]",
            &err);
   if (!pl) {
      fail_msg("%s", err.message);
   }
   assert_ptr_equal(pl->source.ops, &fake_source_ops);
   assert_ptr_equal(pl->source.conn, aspen_conns_find(&conns, "f"));
   assert_int_equal(((const fake_opts_t *) pl->source.opts)->depth, 3);
   assert_string_equal(pl->source.ts_field, "t"); /* the runtime's own */
   aspen_pipeline_destroy(pl);
   assert_int_equal(g_fake_specs_freed, 1);

   /* The kind's hooks refuse what they refuse... */
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"connectionName\": \"f\"}}]",
                        "BSON field '$source.depth' is missing but a "
                        "required field (at pipeline[0].$source.depth)");
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"connectionName\": \"f\","
                        " \"depth\": 0}}]",
                        "$source.depth must be a positive int");
   /* ...the runtime an option no hook takes, and a kind without a
    * $source. */
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"connectionName\": \"f\","
                        " \"depth\": 1, \"topic\": \"t\"}}]",
                        "BSON field '$source.topic' is an unknown field.");
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"connectionName\": \"m\"}}]",
                        "Connection m of type mute cannot be a $source");
   /* Options the kind parsed before a refusal (the $source.topic one
    * above, and this) are freed with the pipeline that never was. */
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"connectionName\": \"f\","
                        " \"depth\": 1, \"x\": 1}}]",
                        "BSON field '$source.x' is an unknown field.");
   assert_int_equal(g_fake_specs_freed, 3);

   /* {documents: ...} is the catalog's source without a connection. */
   pl = parse(cat, &conns,
              "[{\"$source\": {\"documents\": 5, \"anything\": 1}}]", &err);
   if (!pl) {
      fail_msg("%s", err.message);
   }
   assert_ptr_equal(pl->source.ops, &fake_documents_ops);
   assert_null(pl->source.conn);
   aspen_pipeline_destroy(pl);
   aspen_conns_cleanup(&conns);
}

/* The pipeline's sink is the $merge or $emit sink of the row of the
 * connection the stage names; a connection without one is reported as
 * before, by the Atlas $merge or the Kafka $emit. */
static void
test_sink_through_kind(void **state)
{
   (void) state;
   /* The built-in rows. */
   const aspen_catalog_t *cat = aspen_builtins_catalog();
   aspen_conns_t conns;
   aspen_error_t err;
   if (!load(&conns, cat,
             "[{\"name\": \"a\", \"uri\": \"mongodb://h\"},"
             " {\"name\": \"k\", \"type\": \"kafka\", \"bootstrapServers\": \"h:1\"}]",
             NULL, &err)) {
      fail_msg("%s", err.message);
   }
   static const struct {
      const char *sink;
      const aspen_sink_ops_t *ops;
   } sinks[] = {
      {"{\"$merge\": {\"into\": {\"connectionName\": \"a\", \"db\": \"d\","
       " \"coll\": \"c\"}}}",
       &aspen_sink_merge_ops},
      {"{\"$emit\": {\"connectionName\": \"a\", \"db\": \"d\", \"coll\": \"c\","
       " \"timeseries\": {\"timeField\": \"t\"}}}",
       &aspen_sink_timeseries_ops},
      {"{\"$emit\": {\"connectionName\": \"k\", \"topic\": \"t\"}}",
       &aspen_sink_emit_ops},
   };
   for (size_t i = 0; i < sizeof sinks / sizeof sinks[0]; i++) {
      char *json = bson_strdup_printf(
         "[{\"$source\": {\"documents\": []}}, %s]", sinks[i].sink);
      aspen_pipeline_t *pl = parse_as(cat, &conns, json, false, &err);
      if (!pl) {
         fail_msg("%s: %s", json, err.message);
      }
      assert_ptr_equal(pl->sink, sinks[i].ops);
      aspen_pipeline_destroy(pl);
      bson_free(json);
   }
   /* sp.process without a sink: the shell. */
   aspen_pipeline_t *pl =
      parse(cat, &conns, "[{\"$source\": {\"documents\": []}}]", &err);
   assert_non_null(pl);
   assert_null(pl->sink);
   aspen_pipeline_destroy(pl);
   aspen_conns_cleanup(&conns);

   /* A row of the test's own catalog. */
   cat = fake_catalog();
   if (!load(&conns, cat,
             "[{\"name\": \"f\", \"type\": \"fake\", \"path\": \"/x\"},"
             " {\"name\": \"m\", \"type\": \"mute\", \"path\": \"/y\"}]",
             "mongodb://h", &err)) {
      fail_msg("%s", err.message);
   }
   pl = parse_as(cat, &conns,
                 "[{\"$source\": {\"documents\": []}},"
                 " {\"$emit\": {\"connectionName\": \"f\", \"lines\": \"l\"}}]",
                 false, &err);
   if (!pl) {
      fail_msg("%s", err.message);
   }
   assert_ptr_equal(pl->sink, &fake_emit_ops);
   assert_int_equal(pl->n_stages, 0); /* the sink is no stage of the chain */
   aspen_pipeline_destroy(pl);
   /* Its parse refuses what it refuses, at the stage's position. */
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"documents\": []}},"
                        " {\"$emit\": {\"connectionName\": \"f\"}}]",
                        "$emit.lines must be a string (at "
                        "pipeline[1].$emit.lines)");
   /* A kind without a $merge sink, or without an $emit sink. */
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"documents\": []}},"
                        " {\"$merge\": {\"into\": {\"connectionName\": \"f\","
                        " \"db\": \"d\", \"coll\": \"c\"}}}]",
                        "Only atlas merge connection type is currently "
                        "supported");
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"documents\": []}},"
                        " {\"$emit\": {\"connectionName\": \"m\", \"topic\": \"t\"}}]",
                        "Expected Atlas connection for $emit, but connection "
                        "'m' is of type mute");
   /* No such connection. */
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"documents\": []}},"
                        " {\"$emit\": {\"connectionName\": \"x\", \"topic\": \"t\"}}]",
                        "Unknown connection name x");
   assert_parse_refused(cat, &conns,
                        "[{\"$source\": {\"documents\": []}}, {\"$emit\": 1}]",
                        "$emit must be an object");
   aspen_conns_cleanup(&conns);
}

/* The field errors every connector parser uses (base/parse.c): IDL's
 * words, byte for byte, code 420, at the parse context's position. */
static void
test_parse_field_errors(void **unused)
{
   (void) unused;
   aspen_parse_ctx_t pc = {0};
   aspen_error_t err;
   snprintf(pc.path, sizeof pc.path, "pipeline[1]");
   aspen_parse_unknown_field(&err, &pc, "config.x", "$emit.config", "x");
   assert_int_equal(err.code, ASPEN_ERR_StreamProcessorInvalidOptions);
   assert_string_equal(err.message,
                       "StreamProcessorInvalidOptions: BSON field "
                       "'$emit.config.x' is an unknown field. (at "
                       "pipeline[1].config.x)");
   aspen_parse_unknown_field(&err, &pc, NULL, NULL, "$source.config.y");
   assert_string_equal(err.message,
                       "StreamProcessorInvalidOptions: BSON field "
                       "'$source.config.y' is an unknown field. (at "
                       "pipeline[1])");
   aspen_parse_missing_field(&err, &pc, "topic", "$emit", "topic");
   assert_int_equal(err.code, ASPEN_ERR_StreamProcessorInvalidOptions);
   assert_string_equal(err.message,
                       "StreamProcessorInvalidOptions: BSON field "
                       "'$emit.topic' is missing but a required field (at "
                       "pipeline[1].topic)");
   aspen_parse_missing_field(&err, &pc, "", NULL, "$source.stream");
   assert_string_equal(err.message,
                       "StreamProcessorInvalidOptions: BSON field "
                       "'$source.stream' is missing but a required field "
                       "(at pipeline[1])");
}

int
main(void)
{
   aspen_log_set_level(ASPEN_LOG_ERROR);
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_builtin_kinds),
      cmocka_unit_test(test_parse_field_errors),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_https_kind),
      cmocka_unit_test(test_lambda_kind),
      cmocka_unit_test(test_cloud_kinds),
      cmocka_unit_test(test_new_kind),
      cmocka_unit_test(test_source_through_kind),
      cmocka_unit_test(test_sink_through_kind),
   };
   return cmocka_run_group_tests_name("connectors", tests, NULL, NULL);
}
