/*
 * test_users.c - proxy/principal.c's privilege evaluation: custom roles are
 * parsed strictly (a misspelled key, a wrong type, an unknown action stop
 * aspen naming the role and key) and their resources matched as mongod
 * matches them ({db, collection}, "" for any, {cluster: true},
 * {anyResource: true}); a command needs its actions on every namespace it
 * touches ($merge / $out targets, $lookup / $unionWith / $graphLookup
 * sources, nested pipelines, mapReduce output, both sides of a rename, a
 * view's source, ...), refused with mongod's "not authorized on <db> to
 * execute command { ... }"; aspen's diagnostics need cluster-monitor
 * privileges; and the engine's hook resolves a connection's
 * dbRoleToExecute into the same checks. Also proxy/cursor_owners.c: a
 * forwarded cursor may be continued or killed only by the user (and in
 * the session) that opened it, with mongod's messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char users_path[256];

/* Users of the fixture (no credentials: the checks do not need them). */
static const char *const USERS_JSON =
   "{\"users\": ["
   " {\"user\": \"rwA\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"readWrite\", \"db\": \"a\"}]},"
   " {\"user\": \"readA\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"read\", \"db\": \"a\"}]},"
   " {\"user\": \"rwAny\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"readWriteAnyDatabase\", \"db\": \"admin\"}]},"
   " {\"user\": \"rAny\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"readAnyDatabase\", \"db\": \"admin\"}]},"
   " {\"user\": \"admin\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"atlasAdmin\", \"db\": \"admin\"}]},"
   " {\"user\": \"monitor\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"clusterMonitor\", \"db\": \"admin\"}]},"
   " {\"user\": \"orders\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"ordersOnly\", \"db\": \"admin\"}]},"
   " {\"user\": \"anycoll\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"logsEverywhere\", \"db\": \"admin\"}]},"
   " {\"user\": \"status\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"statusOnly\", \"db\": \"admin\"}]},"
   " {\"user\": \"salesAll\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"salesAnyAction\", \"db\": \"admin\"}]},"
   " {\"user\": \"updater\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"updateOnly\", \"db\": \"admin\"}]},"
   " {\"user\": \"spProc\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"spProcessOnly\", \"db\": \"admin\"}]},"
   " {\"user\": \"spRunner\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"spRunner\", \"db\": \"admin\"}]},"
   " {\"user\": \"spSampler\", \"db\": \"admin\","
   "  \"roles\": [{\"role\": \"spSampler\", \"db\": \"admin\"}]}"
   "]}";

/* The custom roles of the fixture. */
static const char *const ROLES_JSON =
   "["
   " {\"role\": \"ordersOnly\", \"privileges\": ["
   "   {\"resource\": {\"db\": \"sales\", \"collection\": \"orders\"},"
   "    \"actions\": [\"find\", \"insert\"]}]},"
   " {\"role\": \"logsEverywhere\", \"privileges\": ["
   "   {\"resource\": {\"db\": \"\", \"collection\": \"logs\"},"
   "    \"actions\": [\"find\"]}]},"
   " {\"role\": \"statusOnly\", \"privileges\": ["
   "   {\"resource\": {\"cluster\": true}, \"actions\": [\"serverStatus\"]}]},"
   " {\"role\": \"salesAnyAction\", \"privileges\": ["
   "   {\"resource\": {\"db\": \"sales\"}, \"actions\": [\"anyAction\"]}]},"
   " {\"role\": \"updateOnly\", \"privileges\": ["
   "   {\"resource\": {\"db\": \"a\", \"collection\": \"\"},"
   "    \"actions\": [\"update\"]}]},"
   " {\"role\": \"spProcessOnly\", \"actions\": [\"processStreamProcessor\"]},"
   " {\"role\": \"spRunner\", \"actions\": [\"processStreamProcessor\","
   "   \"sampleStreamProcessor\"]},"
   " {\"role\": \"spSampler\", \"actions\": [\"sampleStreamProcessor\"]}"
   "]";

static void
json_doc(const char *json, bson_t *out)
{
   bson_error_t berr;
   if (!bson_init_from_json(out, json, -1, &berr)) {
      fail_msg("bad test JSON (%s): %s", berr.message, json);
   }
}

/* Loads the users and roles; NULL with err set when refused. */
static aspen_users_t *
load(const char *roles_json, aspen_error_t *err)
{
   aspen_config_t cfg;
   aspen_config_init(&cfg);
   cfg.users_file = aspen_xstrdup(users_path);
   bson_destroy(&cfg.roles);
   json_doc(roles_json, &cfg.roles);
   aspen_users_t *users = aspen_users_new(&cfg, err);
   aspen_config_cleanup(&cfg);
   return users;
}

static aspen_users_t *g_users;

static int
setup(void **state)
{
   (void) state;
   snprintf(users_path, sizeof users_path, "/tmp/aspen-test-users-%d.json",
            (int) getpid());
   FILE *f = fopen(users_path, "w");
   assert_non_null(f);
   fputs(USERS_JSON, f);
   fclose(f);
   /* aspen refuses a users file its group or others may access. */
   assert_int_equal(chmod(users_path, 0600), 0);
   aspen_error_t err;
   g_users = load(ROLES_JSON, &err);
   if (!g_users) {
      fail_msg("fixture refused: %s", err.message);
   }
   return 0;
}

static int
teardown(void **state)
{
   (void) state;
   aspen_users_destroy(g_users);
   unlink(users_path);
   return 0;
}

/* Whether `user` may run the command `json` on `db` (forwarded); on a
 * refusal `msg` gets the client's message. */
static bool
may(const char *user, const char *db, const char *json, char *msg,
    size_t msg_len)
{
   bson_t cmd;
   json_doc(json, &cmd);
   aspen_principal_t *p = aspen_users_principal_new(g_users, "admin", user);
   assert_non_null(p);
   bson_iter_t it;
   assert_true(bson_iter_init(&it, &cmd) && bson_iter_next(&it));
   aspen_error_t err;
   char why[ASPEN_ERROR_MSG_MAX];
   bool ok = aspen_principal_may_run(p, bson_iter_key(&it), &cmd, db, true,
                                     &err, why, sizeof why);
   if (!ok) {
      assert_int_equal(err.code, ASPEN_ERR_Unauthorized);
      assert_true(strncmp(why, "missing privilege for action ", 29) == 0);
      if (msg) {
         snprintf(msg, msg_len, "%s", err.message);
      }
   }
   aspen_principal_destroy(p);
   bson_destroy(&cmd);
   return ok;
}

#define ALLOWED(user, db, json) assert_true(may(user, db, json, NULL, 0))
#define REFUSED(user, db, json) assert_false(may(user, db, json, NULL, 0))

/* ---- custom roles: strict parsing -------------------------------------- */

/* A role document that must stop aspen, with a message holding `want`. */
static void
refused_role(const char *roles_json, const char *want)
{
   aspen_error_t err;
   aspen_users_t *u = load(roles_json, &err);
   if (u) {
      aspen_users_destroy(u);
      fail_msg("accepted: %s", roles_json);
   }
   if (!strstr(err.message, want)) {
      fail_msg("message '%s' lacks '%s'", err.message, want);
   }
}

static void
test_roles_strict(void **state)
{
   (void) state;
   /* The misspelling once granted find on every database. */
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resourse\": {\"db\": "
                "\"sales\"}, \"actions\": [\"find\"]}]}]",
                "security.roles[0] (role 'r').privileges[0] has an unknown "
                "key 'resourse'");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": {\"db\": "
                "5}, \"actions\": [\"find\"]}]}]",
                "security.roles[0] (role 'r').privileges[0].resource.db must "
                "be a string");
   refused_role("[{\"role\": \"ok\", \"actions\": []}, {\"role\": \"r\", "
                "\"privileges\": [{\"resource\": {\"db\": \"s\", \"colection\":"
                " \"x\"}, \"actions\": [\"find\"]}]}]",
                "security.roles[1] (role 'r').privileges[0].resource has an "
                "unknown key 'colection'");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": {\"db\": "
                "\"s\"}, \"actions\": [\"fnd\"]}]}]",
                "unknown privilege action 'fnd'");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": {\"db\": "
                "\"s\"}}]}]",
                "(role 'r').privileges[0] needs \"actions\"");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"actions\": "
                "[\"find\"]}]}]",
                "(role 'r').privileges[0] needs a \"resource\"");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": {}, "
                "\"actions\": [\"find\"]}]}]",
                "must be exactly one of");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": "
                "{\"cluster\": false}, \"actions\": [\"serverStatus\"]}]}]",
                "resource.cluster must be true");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": "
                "{\"cluster\": true, \"db\": \"x\"}, \"actions\": "
                "[\"serverStatus\"]}]}]",
                "must be exactly one of");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": {\"db\": "
                "\"x\"}, \"actions\": [\"serverStatus\"]}]}]",
                "action serverStatus applies to the cluster");
   refused_role("[{\"role\": \"r\", \"privileges\": [{\"resource\": "
                "{\"cluster\": true}, \"actions\": [\"find\"]}]}]",
                "action find applies to databases and collections");
   refused_role("[{\"role\": \"r\", \"privileges\": {\"resource\": {}}}]",
                "(role 'r').privileges must be an array");
   refused_role("[{\"role\": \"r\", \"privileges\": [], \"note\": 1}]",
                "security.roles[0] (role 'r') has an unknown key 'note'");
   refused_role("[{\"role\": \"r\", \"roles\": \"readAnyDatabase\"}]",
                "(role 'r').roles must be an array");
   refused_role("[{\"role\": \"r\", \"roles\": [\"read\"]}]",
                "may inherit only the any-database built-in roles");
   refused_role("[{\"privileges\": []}]",
                "security.roles[0] needs a \"role\" name");
   refused_role("[{\"role\": \"readWrite\"}]", "is a built-in role name");
   refused_role("[{\"role\": \"r\"}, {\"role\": \"r\", \"actions\": []}]",
                "security.roles[1]: role 'r' is defined twice");
}

/* ---- custom roles: what they grant ------------------------------------- */

static void
test_collection_scope(void **state)
{
   (void) state;
   /* {db: "sales", collection: "orders"} grants that collection only. */
   ALLOWED("orders", "sales", "{\"find\": \"orders\"}");
   ALLOWED("orders", "sales", "{\"insert\": \"orders\", \"documents\": []}");
   REFUSED("orders", "sales", "{\"find\": \"customers\"}");
   REFUSED("orders", "sales", "{\"listCollections\": 1}");
   REFUSED("orders", "other", "{\"find\": \"orders\"}");
   REFUSED("orders", "sales", "{\"delete\": \"orders\", \"deletes\": []}");
   REFUSED("orders", "sales", "{\"aggregate\": 1, \"pipeline\": "
                              "[{\"$changeStream\": {}}], \"cursor\": {}}");
   /* {db: "", collection: "logs"}: logs in every database, nothing else. */
   ALLOWED("anycoll", "x", "{\"find\": \"logs\"}");
   ALLOWED("anycoll", "y", "{\"count\": \"logs\"}");
   REFUSED("anycoll", "x", "{\"find\": \"other\"}");
   REFUSED("anycoll", "x", "{\"dbStats\": 1}");
   /* anyAction on one database is every action there, and nothing more. */
   ALLOWED("salesAll", "sales", "{\"drop\": \"orders\"}");
   REFUSED("salesAll", "other", "{\"find\": \"x\"}");
   REFUSED("salesAll", "admin", "{\"listDatabases\": 1}");
   REFUSED("salesAll", "admin", "{\"createStreamProcessor\": \"p\", "
                                "\"pipeline\": []}");
   REFUSED("salesAll", "sales", "{\"replSetGetStatus\": 1}");
   /* connectionStatus shows the resources as mongod does. */
   aspen_principal_t *p = aspen_users_principal_new(g_users, "admin",
                                                    "orders");
   bson_t arr = BSON_INITIALIZER;
   aspen_principal_append_privileges(p, &arr);
   char *json = bson_as_relaxed_extended_json(&arr, NULL);
   assert_non_null(strstr(json, "{ \"db\" : \"sales\", \"collection\" : "
                                "\"orders\" }"));
   bson_free(json);
   bson_destroy(&arr);
   aspen_principal_destroy(p);
}

/* ---- commands touching several namespaces ------------------------------- */

static void
test_cross_namespace(void **state)
{
   (void) state;
   char msg[ASPEN_ERROR_MSG_MAX];
   /* The scenario, with mongod's message. */
   assert_false(may("rwA", "a",
                    "{\"aggregate\": \"x\", \"pipeline\": [{\"$merge\": "
                    "{\"into\": {\"db\": \"b\", \"coll\": \"c\"}}}], "
                    "\"cursor\": {}, \"$db\": \"a\"}",
                    msg, sizeof msg));
   assert_string_equal(msg,
                       "not authorized on a to execute command { aggregate: "
                       "\"x\", pipeline: [ { $merge: { into: { db: \"b\", "
                       "coll: \"c\" } } } ], cursor: {}, $db: \"a\" }");
   ALLOWED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$merge\": "
                       "{\"into\": {\"db\": \"a\", \"coll\": \"c\"}}}]}");
   ALLOWED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$merge\": "
                       "{\"into\": \"c\"}}]}");
   ALLOWED("rwAny", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$merge\": "
                         "{\"into\": {\"db\": \"b\", \"coll\": \"c\"}}}]}");
   /* A read-only user merges nowhere, its own database included. */
   REFUSED("readA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$merge\": "
                         "{\"into\": \"c\"}}]}");
   /* $out: a name, or {db, coll}. */
   REFUSED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$out\": "
                       "{\"db\": \"b\", \"coll\": \"c\"}}]}");
   ALLOWED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$out\": "
                       "\"c\"}]}");
   /* Reads of other namespaces: $lookup, $graphLookup, $unionWith, also
    * nested in $facet and in sub-pipelines. */
   REFUSED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$lookup\": "
                       "{\"from\": {\"db\": \"b\", \"coll\": \"s\"}, "
                       "\"as\": \"j\", \"pipeline\": []}}]}");
   ALLOWED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$lookup\": "
                       "{\"from\": \"y\", \"localField\": \"k\", "
                       "\"foreignField\": \"k\", \"as\": \"j\"}}]}");
   REFUSED("anycoll", "x", "{\"aggregate\": \"logs\", \"pipeline\": "
                           "[{\"$lookup\": {\"from\": \"secret\", "
                           "\"localField\": \"k\", \"foreignField\": \"k\", "
                           "\"as\": \"j\"}}]}");
   REFUSED("anycoll", "x", "{\"aggregate\": \"logs\", \"pipeline\": "
                           "[{\"$graphLookup\": {\"from\": \"secret\", "
                           "\"startWith\": \"$a\", \"connectFromField\": "
                           "\"a\", \"connectToField\": \"b\", \"as\": "
                           "\"j\"}}]}");
   REFUSED("anycoll", "x", "{\"aggregate\": \"logs\", \"pipeline\": "
                           "[{\"$unionWith\": \"secret\"}]}");
   REFUSED("anycoll", "x", "{\"aggregate\": \"logs\", \"pipeline\": "
                           "[{\"$unionWith\": {\"coll\": \"logs\", "
                           "\"pipeline\": [{\"$lookup\": {\"from\": "
                           "\"secret\", \"as\": \"s\", \"pipeline\": []}}]}}]}");
   ALLOWED("anycoll", "x", "{\"aggregate\": \"logs\", \"pipeline\": "
                           "[{\"$unionWith\": {\"coll\": \"logs\"}}]}");
   REFUSED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$facet\": "
                       "{\"f\": [{\"$lookup\": {\"from\": {\"db\": \"b\", "
                       "\"coll\": \"s\"}, \"as\": \"j\", \"pipeline\": "
                       "[]}}]}}]}");
   REFUSED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$lookup\": "
                       "{\"from\": \"y\", \"as\": \"j\", \"pipeline\": "
                       "[{\"$out\": {\"db\": \"b\", \"coll\": \"z\"}}]}}]}");
   /* A collectionless $documents pipeline reads nothing, but still
    * writes somewhere. */
   ALLOWED("updater", "a", "{\"aggregate\": 1, \"pipeline\": "
                           "[{\"$documents\": [{}]}, {\"$merge\": {\"into\": "
                           "\"c\", \"whenNotMatched\": \"discard\"}}]}");
   REFUSED("updater", "a", "{\"aggregate\": 1, \"pipeline\": "
                           "[{\"$documents\": [{}]}, {\"$merge\": {\"into\": "
                           "\"c\"}}]}");
   /* Change streams: the collection, the database, the deployment. */
   ALLOWED("readA", "a", "{\"aggregate\": 1, \"pipeline\": "
                         "[{\"$changeStream\": {}}]}");
   REFUSED("readA", "admin", "{\"aggregate\": 1, \"pipeline\": "
                             "[{\"$changeStream\": {\"allChangesForCluster\":"
                             " true}}]}");
   ALLOWED("rAny", "admin", "{\"aggregate\": 1, \"pipeline\": "
                            "[{\"$changeStream\": {\"allChangesForCluster\":"
                            " true}}]}");
   /* Seeing everyone's operations and sessions. */
   REFUSED("rAny", "admin", "{\"aggregate\": 1, \"pipeline\": "
                            "[{\"$currentOp\": {}}]}");
   ALLOWED("monitor", "admin", "{\"aggregate\": 1, \"pipeline\": "
                               "[{\"$currentOp\": {\"allUsers\": true}}]}");
   /* mapReduce output. */
   REFUSED("rwA", "a", "{\"mapReduce\": \"x\", \"map\": \"\", \"reduce\": "
                       "\"\", \"out\": {\"replace\": \"o\", \"db\": \"b\"}}");
   ALLOWED("rwA", "a", "{\"mapReduce\": \"x\", \"map\": \"\", \"reduce\": "
                       "\"\", \"out\": {\"merge\": \"o\"}}");
   ALLOWED("readA", "a", "{\"mapReduce\": \"x\", \"map\": \"\", \"reduce\": "
                         "\"\", \"out\": {\"inline\": 1}}");
   REFUSED("readA", "a", "{\"mapreduce\": \"x\", \"map\": \"\", \"reduce\": "
                         "\"\", \"out\": \"o\"}");
   /* renameCollection, run on admin: both sides count. */
   ALLOWED("rwA", "admin", "{\"renameCollection\": \"a.x\", \"to\": \"a.y\"}");
   REFUSED("rwA", "admin", "{\"renameCollection\": \"a.x\", \"to\": \"b.y\"}");
   REFUSED("rwA", "admin", "{\"renameCollection\": \"b.x\", \"to\": \"a.y\"}");
   ALLOWED("rwAny", "admin", "{\"renameCollection\": \"a.x\", \"to\": "
                             "\"b.y\", \"dropTarget\": true}");
   REFUSED("rwA", "admin", "{\"renameCollection\": \"nodot\", \"to\": "
                           "\"a.y\"}");
   /* cloneCollectionAsCapped writes its copy. */
   ALLOWED("rwA", "a", "{\"cloneCollectionAsCapped\": \"x\", "
                       "\"toCollection\": \"y\", \"size\": 1000}");
   REFUSED("readA", "a", "{\"cloneCollectionAsCapped\": \"x\", "
                         "\"toCollection\": \"y\", \"size\": 1000}");
   /* A view needs what its pipeline reads. */
   ALLOWED("rwA", "a", "{\"create\": \"v\", \"viewOn\": \"x\", \"pipeline\": "
                       "[]}");
   REFUSED("rwA", "a", "{\"create\": \"v\", \"viewOn\": \"x\", \"pipeline\": "
                       "[{\"$lookup\": {\"from\": {\"db\": \"b\", \"coll\": "
                       "\"s\"}, \"as\": \"j\", \"pipeline\": []}}]}");
   /* Hidden writes: an upsert inserts, findAndModify's remove removes. */
   ALLOWED("updater", "a", "{\"update\": \"x\", \"updates\": [{\"q\": {}, "
                           "\"u\": {}}]}");
   REFUSED("updater", "a", "{\"update\": \"x\", \"updates\": [{\"q\": {}, "
                           "\"u\": {}, \"upsert\": true}]}");
   REFUSED("rwA", "a", "{\"insert\": \"x\", \"documents\": [], "
                       "\"bypassDocumentValidation\": true}");
   /* explain needs what the explained command needs. */
   assert_false(may("rwA", "a",
                    "{\"explain\": {\"aggregate\": \"x\", \"pipeline\": "
                    "[{\"$out\": {\"db\": \"b\", \"coll\": \"c\"}}]}}",
                    msg, sizeof msg));
   assert_true(strncmp(msg, "not authorized on a to execute command { "
                            "explain: { aggregate: ", 60) == 0);
   /* Pipelines nested deeper than mongod allows are refused. */
   char deep[4096];
   size_t n = (size_t) snprintf(deep, sizeof deep,
                                "{\"aggregate\": \"x\", \"pipeline\": ");
   for (int i = 0; i < 25; i++) {
      n += (size_t) snprintf(deep + n, sizeof deep - n,
                             "[{\"$facet\": {\"f\": ");
   }
   n += (size_t) snprintf(deep + n, sizeof deep - n, "[]");
   for (int i = 0; i < 25; i++) {
      n += (size_t) snprintf(deep + n, sizeof deep - n, "}}]");
   }
   snprintf(deep + n, sizeof deep - n, "}");
   REFUSED("rwA", "a", deep);
   /* ... within the limit, they are checked level by level. */
   ALLOWED("rwA", "a", "{\"aggregate\": \"x\", \"pipeline\": [{\"$facet\": "
                       "{\"f\": [{\"$facet\": {\"g\": []}}]}}]}");
}

static void
test_message_shape(void **state)
{
   (void) state;
   char msg[ASPEN_ERROR_MSG_MAX];
   assert_false(may("readA", "a",
                    "{\"insert\": \"docs\", \"ordered\": true, \"lsid\": "
                    "{\"id\": {\"$binary\": {\"base64\": "
                    "\"AAECAwQFBgcICQoLDA0ODw==\", \"subType\": \"04\"}}}, "
                    "\"n\": {\"$numberLong\": \"7\"}, \"d\": 1.0, \"f\": 2.5, "
                    "\"$db\": \"a\"}",
                    msg, sizeof msg));
   assert_string_equal(msg,
                       "not authorized on a to execute command { insert: "
                       "\"docs\", ordered: true, lsid: { id: UUID(\"00010203-"
                       "0405-0607-0809-0a0b0c0d0e0f\") }, n: 7, d: 1.0, f: 2.5, "
                       "$db: \"a\" }");
   /* A password never appears; a long command is cut to fit. */
   assert_false(may("readA", "admin",
                    "{\"createUser\": \"u\", \"pwd\": \"hunter2\", \"roles\": "
                    "[]}",
                    msg, sizeof msg));
   assert_null(strstr(msg, "hunter2"));
   assert_non_null(strstr(msg, "pwd: \"xxx\""));
   char big[2048];
   snprintf(big, sizeof big, "{\"insert\": \"docs\", \"documents\": [{\"s\": "
                             "\"%0900d\"}]}", 0);
   assert_false(may("readA", "a", big, msg, sizeof msg));
   assert_int_equal(strlen(msg), ASPEN_ERROR_MSG_MAX - 1);
   assert_string_equal(msg + strlen(msg) - 3, "...");
   /* The message stays valid UTF-8: a cut never splits a character, and
    * bytes that are not UTF-8 are escaped. */
   for (int pad = 0; pad < 4; pad++) {
      size_t n = (size_t) snprintf(big, sizeof big,
                                   "{\"insert\": \"docs\", \"p\": \"%.*s\", "
                                   "\"documents\": [{\"s\": \"",
                                   pad, "xxxx");
      for (int i = 0; i < 300; i++) {
         n += (size_t) snprintf(big + n, sizeof big - n, "\u00e9");
      }
      snprintf(big + n, sizeof big - n, "\"}]}");
      assert_false(may("readA", "a", big, msg, sizeof msg));
      assert_true(bson_utf8_validate(msg, strlen(msg), false));
      assert_string_equal(msg + strlen(msg) - 3, "...");
   }
   bson_t raw = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&raw, "insert", "docs");
   bson_append_utf8(&raw, "k\xff", 2, "v\xc3\x28", 3);
   aspen_principal_t *p = aspen_users_principal_new(g_users, "admin", "readA");
   aspen_error_t err;
   assert_false(aspen_principal_may_run(p, "insert", &raw, "a\xfe", true, &err,
                                        NULL, 0));
   assert_true(bson_utf8_validate(err.message, strlen(err.message), false));
   assert_string_equal(err.message, "not authorized on a\\xfe to execute "
                                    "command { insert: \"docs\", k\\xff: "
                                    "\"v\\xc3(\" }");
   aspen_principal_destroy(p);
   bson_destroy(&raw);
   /* Stream commands keep ASP's message. */
   assert_false(may("readA", "admin",
                    "{\"createStreamProcessor\": \"p\", \"pipeline\": []}", msg,
                    sizeof msg));
   assert_string_equal(msg, "not authorized: missing privilege for action "
                            "createStreamProcessor on resource <stream "
                            "processing workspace>");
}

/* ---- the sp commands: privileges from the engine's command table ---------- */

/* What each sp command needs is its row of engine/commands/commands.def
 * (aspen_engine_command_find): the action named there, every one of them
 * an action aspen knows, and sampleStreamProcessor as well for sp.process,
 * which reads its processor's output. */
static void
test_sp_command_actions(void **state)
{
   (void) state;
   static const char *const names[] = {
      "createStreamProcessor",      "processStreamProcessor",
      "startStreamProcessor",       "stopStreamProcessor",
      "dropStreamProcessor",        "modifyStreamProcessor",
      "getStreamProcessorStats",    "startSampleStreamProcessor",
      "getMoreSampleStreamProcessor", "listStreamProcessors",
      "listStreamConnections",      "getStreamProcessor"};
   for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
      const aspen_engine_command_t *c = aspen_engine_command_find(names[i]);
      assert_non_null(c);
      aspen_action_t a;
      assert_true(aspen_action_parse(c->action, &a));
      assert_string_equal(aspen_action_name(a), c->action);
   }
   REFUSED("spProc", "admin", "{\"processStreamProcessor\": []}");
   ALLOWED("spRunner", "admin", "{\"processStreamProcessor\": []}");
   REFUSED("spRunner", "admin",
           "{\"createStreamProcessor\": \"p\", \"pipeline\": []}");
   ALLOWED("spSampler", "admin", "{\"startSampleStreamProcessor\": \"p\"}");
   ALLOWED("spSampler", "admin",
           "{\"getMoreSampleStreamProcessor\": \"p\", \"cursorId\": 1}");
   REFUSED("spSampler", "admin", "{\"getStreamProcessorStats\": \"p\"}");
   ALLOWED("rAny", "admin", "{\"getStreamProcessorStats\": \"p\"}");
   ALLOWED("rAny", "admin", "{\"listStreamConnections\": 1}");
   REFUSED("rAny", "admin", "{\"dropStreamProcessor\": \"p\"}");
   ALLOWED("admin", "admin", "{\"dropStreamProcessor\": \"p\"}");
}

/* ---- aspen's diagnostics need cluster-monitor privileges ---------------- */

/* dropDatabase is dbAdmin's (and dbOwner's), not readWrite's: mongod's
 * readWrite and readWriteAnyDatabase drop collections but never a whole
 * database; atlasAdmin may. */
static void
test_drop_database(void **state)
{
   (void) state;
   REFUSED("rwA", "a", "{\"dropDatabase\": 1, \"$db\": \"a\"}");
   REFUSED("rwAny", "a", "{\"dropDatabase\": 1, \"$db\": \"a\"}");
   ALLOWED("rwA", "a", "{\"drop\": \"x\", \"$db\": \"a\"}");
   ALLOWED("rwAny", "b", "{\"drop\": \"x\", \"$db\": \"b\"}");
   ALLOWED("admin", "a", "{\"dropDatabase\": 1, \"$db\": \"a\"}");
}

static void
test_cluster_monitor(void **state)
{
   (void) state;
   static const char *const cmds[] = {
      "{\"getCmdLineOpts\": 1}", "{\"getLog\": \"startupWarnings\"}",
      "{\"hostInfo\": 1}", "{\"serverStatus\": 1}",
      "{\"getParameter\": 1, \"featureCompatibilityVersion\": 1}"};
   for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
      char msg[ASPEN_ERROR_MSG_MAX];
      assert_false(may("rAny", "admin", cmds[i], msg, sizeof msg));
      assert_true(strncmp(msg, "not authorized on admin to execute command {",
                          44) == 0);
      REFUSED("rwAny", "admin", cmds[i]);
      REFUSED("salesAll", "admin", cmds[i]);
      ALLOWED("monitor", "admin", cmds[i]);
      ALLOWED("admin", "admin", cmds[i]);
   }
   ALLOWED("status", "admin", "{\"serverStatus\": 1}");
   REFUSED("status", "admin", "{\"getLog\": \"global\"}");
}

/* ---- the engine's hook: connections' roles ------------------------------ */

static void
test_engine_grants(void **state)
{
   (void) state;
   aspen_engine_authz_t az;
   aspen_error_t err;
   const char *missing;
   aspen_users_engine_authz(g_users, &az);

   void *ro = az.grant_new(az.arg, "readAnyDatabase", false, &err);
   assert_non_null(ro);
   assert_true(az.allows(ro, ASPEN_ENGINE_ACT_FIND |
                                ASPEN_ENGINE_ACT_CHANGE_STREAM,
                         "b", "c", &missing));
   assert_true(az.allows(ro, ASPEN_ENGINE_ACT_FIND, NULL, NULL, &missing));
   assert_false(az.allows(ro, ASPEN_ENGINE_ACT_FIND | ASPEN_ENGINE_ACT_INSERT,
                          "b", "c", &missing));
   assert_string_equal(missing, "insert");
   az.grant_destroy(ro);

   void *ra = az.grant_new(az.arg, "readWrite@a", false, &err);
   assert_non_null(ra);
   assert_true(az.allows(ra, ASPEN_ENGINE_ACT_INSERT | ASPEN_ENGINE_ACT_UPDATE,
                         "a", "c", &missing));
   assert_false(az.allows(ra, ASPEN_ENGINE_ACT_FIND, "b", "c", &missing));
   assert_false(az.allows(ra, ASPEN_ENGINE_ACT_FIND, NULL, NULL, &missing));
   /* What a $lookup's pipeline reaches. */
   char why[ASPEN_ERROR_MSG_MAX];
   bson_t pl;
   json_doc("[{\"$match\": {}}, {\"$lookup\": {\"from\": \"y\", \"as\": "
            "\"j\", \"pipeline\": []}}]",
            &pl);
   assert_true(az.allows_stages(ra, "a", &pl, why, sizeof why));
   bson_destroy(&pl);
   json_doc("[{\"$unionWith\": {\"coll\": \"s\", \"db\": \"b\"}}]", &pl);
   assert_false(az.allows_stages(ra, "a", &pl, why, sizeof why));
   assert_string_equal(why, "find on b.s");
   bson_destroy(&pl);
   az.grant_destroy(ra);

   void *custom = az.grant_new(az.arg, "ordersOnly", true, &err);
   assert_non_null(custom);
   assert_true(az.allows(custom, ASPEN_ENGINE_ACT_INSERT, "sales", "orders",
                         &missing));
   assert_false(az.allows(custom, ASPEN_ENGINE_ACT_INSERT, "sales", "x",
                          &missing));
   az.grant_destroy(custom);

   assert_null(az.grant_new(az.arg, "nope", true, &err));
   assert_non_null(strstr(err.message, "no custom role 'nope'"));
   assert_null(az.grant_new(az.arg, "ordersOnly", false, &err));
   assert_non_null(strstr(err.message, "is not a built-in role"));
   assert_null(az.grant_new(az.arg, "readWrite", false, &err));
   assert_non_null(strstr(err.message, "write it readWrite@<db>"));
   assert_null(az.grant_new(az.arg, "readAnyDatabase@a", false, &err));
   assert_non_null(strstr(err.message, "covers every database"));
}

/* ---- forwarded cursors belong to who opened them (cursor_owners.c) ----- */

/* The owner of `json` (a command) sent by `user` (NULL: nobody). */
static void
owner_of(const char *user, const char *json, aspen_cursor_owner_t *o)
{
   bson_t cmd;
   json_doc(json, &cmd);
   aspen_principal_t *p =
      user ? aspen_users_principal_new(g_users, "admin", user) : NULL;
   bson_iter_t it;
   assert_true(bson_iter_init(&it, &cmd) && bson_iter_next(&it));
   aspen_cursor_owner_init(o, p, bson_iter_key(&it), &cmd);
   aspen_principal_destroy(p);
   bson_destroy(&cmd);
}

static void
reply_to(const aspen_cursor_owner_t *o, const char *json)
{
   bson_t reply;
   json_doc(json, &reply);
   aspen_cursors_note_reply(o, &reply);
   bson_destroy(&reply);
}

/* Checks `json` sent by `user` on db "a": 0 when it may go on, else the
 * error code (-1: killCursors of another user's cursor), `msg` the
 * message. */
static int
cursor_check(const char *user, const char *json, char *msg, size_t len)
{
   aspen_cursor_owner_t o;
   aspen_error_t err;
   bool foreign;
   bson_t cmd;
   owner_of(user, json, &o);
   json_doc(json, &cmd);
   bson_iter_t it;
   assert_true(bson_iter_init(&it, &cmd) && bson_iter_next(&it));
   bool ok = aspen_cursors_check(&o, bson_iter_key(&it), &cmd, "a", &foreign,
                                 &err);
   bson_destroy(&cmd);
   if (ok) {
      return 0;
   }
   if (foreign) {
      return -1;
   }
   snprintf(msg, len, "%s", err.message);
   return err.code;
}

#define LSID1                                                                  \
   "\"lsid\": {\"id\": {\"$binary\": {\"base64\": "                            \
   "\"AAECAwQFBgcICQoLDA0ODw==\", \"subType\": \"04\"}}}"
#define LSID2                                                                  \
   "\"lsid\": {\"id\": {\"$binary\": {\"base64\": "                            \
   "\"/wECAwQFBgcICQoLDA0ODw==\", \"subType\": \"04\"}}}"

static void
test_cursor_owners(void **state)
{
   (void) state;
   char msg[ASPEN_ERROR_MSG_MAX], want[ASPEN_ERROR_MSG_MAX];
   aspen_cursor_owner_t o;
   size_t before = aspen__cursors_count();

   /* rwA opens cursor 42 in session LSID1, cursor 43 with no session. */
   owner_of("rwA", "{\"find\": \"x\", " LSID1 "}", &o);
   reply_to(&o, "{\"cursor\": {\"firstBatch\": [], \"id\": "
                "{\"$numberLong\": \"42\"}, \"ns\": \"a.x\"}, \"ok\": 1}");
   owner_of("rwA", "{\"find\": \"x\"}", &o);
   reply_to(&o, "{\"cursor\": {\"firstBatch\": [], \"id\": "
                "{\"$numberLong\": \"43\"}, \"ns\": \"a.x\"}, \"ok\": 1}");
   assert_int_equal(aspen__cursors_count(), before + 2);

   /* Its owner goes on, in its session. */
   assert_int_equal(cursor_check("rwA", "{\"getMore\": {\"$numberLong\": "
                                        "\"42\"}, \"collection\": \"x\", "
                                        LSID1 "}",
                                 msg, sizeof msg),
                    0);
   assert_int_equal(cursor_check("rwA", "{\"getMore\": {\"$numberLong\": "
                                        "\"43\"}, \"collection\": \"x\"}",
                                 msg, sizeof msg),
                    0);
   /* Another user: mongod's messages (the session includes the user). */
   assert_int_equal(cursor_check("readA", "{\"getMore\": {\"$numberLong\": "
                                          "\"43\"}, \"collection\": \"x\"}",
                                 msg, sizeof msg),
                    ASPEN_ERR_Unauthorized);
   assert_string_equal(msg, "cursor id 43 was not created by the "
                            "authenticated user");
   assert_int_equal(cursor_check("readA", "{\"getMore\": {\"$numberLong\": "
                                          "\"42\"}, \"collection\": \"x\", "
                                          LSID1 "}",
                                 msg, sizeof msg),
                    ASPEN_ERR_Unauthorized);
   /* base64 of SHA-256("rwA@admin") and ("readA@admin"), as mongod's
    * user digests print. */
   aspen_principal_t *p1 = aspen_users_principal_new(g_users, "admin", "rwA");
   aspen_principal_t *p2 =
      aspen_users_principal_new(g_users, "admin", "readA");
   char b1[64], b2[64];
   aspen_scram_b64_encode(aspen_principal_uid(p1), ASPEN_USER_DIGEST_LEN, b1,
                          sizeof b1);
   aspen_scram_b64_encode(aspen_principal_uid(p2), ASPEN_USER_DIGEST_LEN, b2,
                          sizeof b2);
   aspen_principal_destroy(p1);
   aspen_principal_destroy(p2);
   snprintf(want, sizeof want,
            "Cursor session id (00010203-0405-0607-0809-0a0b0c0d0e0f - %s -  "
            "- ) is not the same as the operation context's session id "
            "(00010203-0405-0607-0809-0a0b0c0d0e0f - %s -  - )",
            b1, b2);
   assert_string_equal(msg, want);
   /* The owner, in another session or none. */
   assert_int_equal(cursor_check("rwA", "{\"getMore\": {\"$numberLong\": "
                                        "\"42\"}, \"collection\": \"x\", "
                                        LSID2 "}",
                                 msg, sizeof msg),
                    ASPEN_ERR_Unauthorized);
   assert_int_equal(cursor_check("rwA", "{\"getMore\": {\"$numberLong\": "
                                        "\"42\"}, \"collection\": \"x\"}",
                                 msg, sizeof msg),
                    ASPEN_ERR_Unauthorized);
   snprintf(want, sizeof want,
            "Cursor session id (00010203-0405-0607-0809-0a0b0c0d0e0f - %s -  "
            "- ) is not the same as the operation context's session id "
            "(none)",
            b1);
   assert_string_equal(msg, want);
   /* Another namespace. */
   assert_int_equal(cursor_check("rwA", "{\"getMore\": {\"$numberLong\": "
                                        "\"43\"}, \"collection\": \"y\"}",
                                 msg, sizeof msg),
                    ASPEN_ERR_Unauthorized);
   assert_string_equal(msg, "Requested getMore on namespace 'a.y', but "
                            "cursor belongs to a different namespace a.x");
   /* A cursor aspen never saw. */
   assert_int_equal(cursor_check("rwA", "{\"getMore\": {\"$numberLong\": "
                                        "\"99\"}, \"collection\": \"x\"}",
                                 msg, sizeof msg),
                    ASPEN_ERR_CursorNotFound);
   assert_string_equal(msg, "cursor id 99 not found");
   /* killCursors: another user's is refused whole. */
   assert_int_equal(cursor_check("readA", "{\"killCursors\": \"x\", "
                                          "\"cursors\": [{\"$numberLong\": "
                                          "\"43\"}]}",
                                 msg, sizeof msg),
                    -1);
   assert_int_equal(cursor_check("rwA", "{\"killCursors\": \"x\", "
                                        "\"cursors\": [{\"$numberLong\": "
                                        "\"43\"}, {\"$numberLong\": \"7\"}]}",
                                 msg, sizeof msg),
                    ASPEN_ERR_CursorNotFound);
   assert_int_equal(cursor_check("rwA", "{\"killCursors\": \"x\", "
                                        "\"cursors\": [{\"$numberLong\": "
                                        "\"43\"}]}",
                                 msg, sizeof msg),
                    0);
   /* Without access control nothing is tracked or checked. */
   assert_int_equal(cursor_check(NULL, "{\"getMore\": {\"$numberLong\": "
                                       "\"43\"}, \"collection\": \"x\"}",
                                 msg, sizeof msg),
                    0);
   owner_of(NULL, "{\"find\": \"x\"}", &o);
   reply_to(&o, "{\"cursor\": {\"firstBatch\": [], \"id\": "
                "{\"$numberLong\": \"44\"}, \"ns\": \"a.x\"}, \"ok\": 1}");
   assert_int_equal(aspen__cursors_count(), before + 2);

   /* Forgotten when killed, exhausted, or not found by the backend. */
   owner_of("rwA", "{\"killCursors\": \"x\", \"cursors\": [43]}", &o);
   reply_to(&o, "{\"cursorsKilled\": [{\"$numberLong\": \"43\"}], "
                "\"cursorsNotFound\": [], \"ok\": 1}");
   owner_of("rwA", "{\"getMore\": {\"$numberLong\": \"42\"}, "
                   "\"collection\": \"x\", " LSID1 "}",
            &o);
   reply_to(&o, "{\"cursor\": {\"nextBatch\": [], \"id\": "
                "{\"$numberLong\": \"0\"}, \"ns\": \"a.x\"}, \"ok\": 1}");
   assert_int_equal(aspen__cursors_count(), before);
   owner_of("rwA", "{\"find\": \"x\"}", &o);
   reply_to(&o, "{\"cursor\": {\"firstBatch\": [], \"id\": 45, "
                "\"ns\": \"a.x\"}, \"ok\": 1}");
   owner_of("rwA", "{\"getMore\": 45, \"collection\": \"x\"}", &o);
   reply_to(&o, "{\"ok\": 0, \"code\": 43, \"errmsg\": \"cursor id 45 not "
                "found\"}");
   assert_int_equal(aspen__cursors_count(), before);

   /* Bounded: past the limit the least recently used goes. */
   for (int64_t id = 1000; id < 1000 + 65536 + 10; id++) {
      char r[160];
      snprintf(r, sizeof r,
               "{\"cursor\": {\"firstBatch\": [], \"id\": "
               "{\"$numberLong\": \"%lld\"}, \"ns\": \"a.x\"}, \"ok\": 1}",
               (long long) id);
      reply_to(&o, r);
   }
   assert_int_equal(aspen__cursors_count(), 65536);
   assert_int_equal(cursor_check("rwA", "{\"getMore\": 1000, "
                                        "\"collection\": \"x\"}",
                                 msg, sizeof msg),
                    ASPEN_ERR_CursorNotFound);
   assert_int_equal(cursor_check("rwA", "{\"getMore\": 66545, "
                                        "\"collection\": \"x\"}",
                                 msg, sizeof msg),
                    0);
}

/* ---- backend sessions are per user (cmd_auth.c) -------------------------- */

static void
discard_output(void *arg, const uint8_t *data, size_t len)
{
   (void) arg;
   (void) data;
   (void) len;
}

static void
test_session_keys(void **state)
{
   (void) state;
   uv_loop_t loop;
   aspen_config_t cfg;
   aspen_server_t srv;
   uv_loop_init(&loop);
   aspen_config_init(&cfg);
   memset(&srv, 0, sizeof srv);
   srv.loop = &loop;
   srv.cfg = &cfg;
   srv.users = g_users;
   aspen_session_t *s1 =
      aspen__session_new_detached(&srv, "127.0.0.1:1", discard_output, NULL);
   aspen_session_t *s2 =
      aspen__session_new_detached(&srv, "127.0.0.1:2", discard_output, NULL);
   bson_t lsid, cmd = BSON_INITIALIZER, k1, k2, k1b;
   json_doc("{\"id\": {\"$binary\": {\"base64\": \"AAECAwQFBgcICQoLDA0ODw==\", "
            "\"subType\": \"04\"}}}",
            &lsid);
   aspen_request_t r1 = {.sess = s1, .srv = &srv, .name = "find", .db = "a",
                         .cmd = &cmd};
   aspen_request_t r2 = r1;
   r2.sess = s2;
   /* Nobody logged in: the lsid is the key as it is. */
   assert_false(aspen_auth_session_key(&r1, &lsid, &k1));
   /* Two users sending the same lsid get two backend sessions; one user
    * gets the same one each time. */
   assert_true(aspen__auth_login(&srv, s1, "admin", "rwA"));
   assert_true(aspen__auth_login(&srv, s2, "admin", "readA"));
   assert_true(aspen_auth_session_key(&r1, &lsid, &k1));
   assert_true(aspen_auth_session_key(&r2, &lsid, &k2));
   assert_true(aspen_auth_session_key(&r1, &lsid, &k1b));
   assert_false(bson_equal(&k1, &k2));
   assert_true(bson_equal(&k1, &k1b));
   /* endSessions ends the caller's sessions only. */
   bson_t ids = BSON_INITIALIZER, keyed;
   BSON_APPEND_DOCUMENT(&ids, "0", &lsid);
   assert_true(aspen_auth_session_keys(&r2, &ids, &keyed));
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, &keyed, "0"));
   bson_t one;
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(&it, &len, &data);
   assert_true(bson_init_static(&one, data, len));
   assert_true(bson_equal(&one, &k2));
   bson_destroy(&keyed);
   bson_destroy(&ids);
   bson_destroy(&k1);
   bson_destroy(&k2);
   bson_destroy(&k1b);
   bson_destroy(&lsid);
   bson_destroy(&cmd);
   aspen_session_close(s1, "done");
   aspen_session_unref(s1);
   aspen_session_close(s2, "done");
   aspen_session_unref(s2);
   while (srv.n_sessions > 0) {
      uv_run(&loop, UV_RUN_ONCE);
   }
   assert_int_equal(uv_loop_close(&loop), 0);
   aspen_config_cleanup(&cfg);
}

int
main(void)
{
   aspen_log_set_level(ASPEN_LOG_ERROR);
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roles_strict),
      cmocka_unit_test(test_collection_scope),
      cmocka_unit_test(test_cross_namespace),
      cmocka_unit_test(test_message_shape),
      cmocka_unit_test(test_sp_command_actions),
      cmocka_unit_test(test_cluster_monitor),
      cmocka_unit_test(test_drop_database),
      cmocka_unit_test(test_engine_grants),
      cmocka_unit_test(test_cursor_owners),
      cmocka_unit_test(test_session_keys),
   };
   return cmocka_run_group_tests(tests, setup, teardown);
}
