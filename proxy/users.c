/*
 * users.c - users, roles and privileges (see auth.h).
 *
 * The users file (security.usersFile, default <stateDir>/users.json) is
 * Extended JSON shaped like mongod's admin.system.users documents, with
 * SCRAM keys only, never a password:
 *
 *   { "users": [ { "user": "alice", "db": "admin",
 *                  "roles": [ { "role": "atlasAdmin", "db": "admin" } ],
 *                  "credentials": {
 *                    "SCRAM-SHA-1":   { "iterationCount": 10000, "salt": b64,
 *                                       "storedKey": b64, "serverKey": b64 },
 *                    "SCRAM-SHA-256": { ... 15000 ... } } } ] }
 *
 * Built-in roles: atlasAdmin (everything), readWriteAnyDatabase (every
 * stream action, read and write on every database), readAnyDatabase (the
 * read-only stream actions and read on every database), streamProcessingOwner
 * (every stream action, no database access), clusterMonitor (serverStatus,
 * getCmdLineOpts, getLog, hostInfo, listDatabases and the like), and the
 * per-database read and readWrite. Custom roles come from the config's
 * security.roles:
 *
 *   [ { "role": "spRunner", "actions": ["processStreamProcessor", ...],
 *       "privileges": [ { "resource": { "db": "sales", "collection": "" },
 *                         "actions": ["find"] },
 *                       { "resource": { "cluster": true },
 *                         "actions": ["serverStatus"] } ],
 *       "roles": ["readAnyDatabase"] } ]
 *
 * "actions" apply to every resource; "roles" inherits built-in roles. A
 * privilege's resource is matched as mongod matches it: {db, collection}
 * with "" for any database or collection, {cluster: true}, {anyResource:
 * true}. A command needs its actions on every namespace it touches (a
 * $merge target, a $lookup's `from`, both sides of a rename, ...), the
 * way mongod derives them.
 *
 * Roles are read once, at start; principals are copies, so the privilege
 * checks (aspen_principal_may_run, the engine's connection grants) read
 * nothing shared and may run on any thread.
 */
#include "auth.h"
#include "file.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define COMPONENT "ACCESS"
#define MAX_NAME 256
#define MAX_ROLES 32
#define MAX_FILE (16u * 1024u * 1024u)

#define BIT(a) (UINT64_C(1) << ASPEN_ACTION_##a)
#define STREAM_ALL                                                             \
   (BIT(createStreamProcessor) | BIT(processStreamProcessor) |                 \
    BIT(startStreamProcessor) | BIT(stopStreamProcessor) |                     \
    BIT(dropStreamProcessor) | BIT(modifyStreamProcessor) |                    \
    BIT(sampleStreamProcessor) | BIT(streamProcessorStats) |                   \
    BIT(listStreamProcessors) | BIT(getStreamProcessor) |                      \
    BIT(listStreamConnections))
#define STREAM_READ                                                            \
   (BIT(getStreamProcessor) | BIT(listStreamProcessors) |                      \
    BIT(streamProcessorStats) | BIT(listStreamConnections))
#define DB_READ                                                                \
   (BIT(find) | BIT(listCollections) | BIT(listIndexes) | BIT(dbStats) |       \
    BIT(collStats) | BIT(killCursors) | BIT(changeStream))
#define DB_WRITE                                                               \
   (BIT(insert) | BIT(update) | BIT(remove) | BIT(createCollection) |          \
    BIT(dropCollection) | BIT(createIndex) | BIT(dropIndex) |                  \
    BIT(renameCollectionSameDB) | BIT(convertToCapped))

/* ---- actions ---------------------------------------------------------------- */

static const struct {
   const char *name;
   char kind;
} actions[] = {
#define ASPEN_ACTION_ROW(n, k) {#n, #k[0]},
   ASPEN_ACTIONS(ASPEN_ACTION_ROW)
#undef ASPEN_ACTION_ROW
};

const char *
aspen_action_name(aspen_action_t a)
{
   return a < ASPEN_N_ACTIONS ? actions[a].name : "?";
}

bool
aspen_action_parse(const char *name, aspen_action_t *a)
{
   if (strcmp(name, "listConnections") == 0) { /* ASP's older name */
      *a = ASPEN_ACTION_listStreamConnections;
      return true;
   }
   for (int i = 0; i < ASPEN_N_ACTIONS; i++) {
      if (strcmp(actions[i].name, name) == 0) {
         *a = (aspen_action_t) i;
         return true;
      }
   }
   return false;
}

/* ---- roles ------------------------------------------------------------------- */

/* What a privilege's resource is, as mongod's resource patterns: a
 * namespace pattern {db, collection} ("" in either matches any: {db: "x",
 * collection: ""} is database x and every collection in it, {db: "",
 * collection: ""} every database and collection), the cluster
 * ({cluster: true}), or every resource ({anyResource: true}). */
typedef enum {
   RES_NS,
   RES_CLUSTER,
   RES_ANY,
} res_kind_t;

typedef struct {
   res_kind_t kind;
   char db[MAX_NAME];   /* RES_NS */
   char coll[MAX_NAME]; /* RES_NS */
   uint64_t mask;
} priv_t;

typedef struct {
   char *name;
   priv_t *privs;
   size_t n_privs;
} role_t;

#define CLUSTER_MONITOR                                                        \
   (BIT(listDatabases) | BIT(serverStatus) | BIT(getCmdLineOpts) |             \
    BIT(getLog) | BIT(hostInfo) | BIT(inprog) | BIT(listSessions))

/* Each built-in role's privileges: on every resource, on every database
 * and collection, on the cluster, and on the database the role is granted
 * on (read@DB, readWrite@DB; such roles need one). */
static const struct {
   const char *name;
   uint64_t any_resource;
   uint64_t any_ns;
   uint64_t cluster;
   uint64_t role_db;
} builtins[] = {
   {"atlasAdmin", BIT(anyAction), 0, 0, 0},
   {"readWriteAnyDatabase", 0, STREAM_ALL | DB_READ | DB_WRITE,
    BIT(listDatabases), 0},
   {"readAnyDatabase", 0, STREAM_READ | DB_READ, BIT(listDatabases), 0},
   {"streamProcessingOwner", STREAM_ALL, 0, 0, 0},
   {"clusterMonitor", 0, BIT(dbStats) | BIT(collStats) | BIT(indexStats),
    CLUSTER_MONITOR, 0},
   {"readWrite", 0, 0, 0, DB_READ | DB_WRITE},
   {"read", 0, 0, 0, DB_READ},
};

#define BUILTIN_NAMES                                                          \
   "atlasAdmin, readWriteAnyDatabase, readAnyDatabase, "                       \
   "streamProcessingOwner, clusterMonitor, readWrite@DB, read@DB"

static int
find_builtin(const char *name)
{
   for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++) {
      if (strcmp(builtins[i].name, name) == 0) {
         return (int) i;
      }
   }
   return -1;
}

/* Adds `mask` on a resource, merged into the privilege already on it. */
static void
add_priv(priv_t **privs, size_t *n, res_kind_t kind, const char *db,
         const char *coll, uint64_t mask)
{
   if (!mask) {
      return;
   }
   db = kind == RES_NS ? db : "";
   coll = kind == RES_NS ? coll : "";
   for (size_t i = 0; i < *n; i++) {
      priv_t *pv = &(*privs)[i];
      if (pv->kind == kind && strcmp(pv->db, db) == 0 &&
          strcmp(pv->coll, coll) == 0) {
         pv->mask |= mask;
         return;
      }
   }
   *privs = aspen_xrealloc(*privs, (*n + 1) * sizeof **privs);
   priv_t *pv = &(*privs)[*n];
   pv->kind = kind;
   snprintf(pv->db, sizeof pv->db, "%s", db);
   snprintf(pv->coll, sizeof pv->coll, "%s", coll);
   pv->mask = mask;
   (*n)++;
}

/* Adds a built-in role's privileges (role_db: the database it was granted
 * on, for read/readWrite). */
static void
add_builtin(priv_t **privs, size_t *n, int b, const char *role_db)
{
   add_priv(privs, n, RES_ANY, "", "", builtins[b].any_resource);
   add_priv(privs, n, RES_NS, "", "", builtins[b].any_ns);
   add_priv(privs, n, RES_CLUSTER, "", "", builtins[b].cluster);
   add_priv(privs, n, RES_NS, role_db, "", builtins[b].role_db);
}

/* Parses an array of action names into a mask. `where` names the field in
 * messages. */
static bool
parse_actions(bson_iter_t *it, const char *where, uint64_t *mask,
              aspen_error_t *err)
{
   bson_iter_t a;
   if (!BSON_ITER_HOLDS_ARRAY(it) || !bson_iter_recurse(it, &a)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch, "%s must be an array",
                      where);
      return false;
   }
   while (bson_iter_next(&a)) {
      aspen_action_t act;
      if (!BSON_ITER_HOLDS_UTF8(&a) ||
          !aspen_action_parse(bson_iter_utf8(&a, NULL), &act)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "%s: unknown privilege action '%s'", where,
                         BSON_ITER_HOLDS_UTF8(&a) ? bson_iter_utf8(&a, NULL)
                                                  : "(not a string)");
         return false;
      }
      *mask |= UINT64_C(1) << act;
   }
   return true;
}

/* Parses a privilege's resource: {db, collection} (either may be left
 * out: ""), {cluster: true} or {anyResource: true}, nothing else. */
static bool
parse_resource(bson_iter_t *it, const char *where, priv_t *pv,
               aspen_error_t *err)
{
   bson_iter_t r;
   bool has_ns = false, has_cluster = false, has_any = false;
   if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &r)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "%s must be an object ({db, collection}, {cluster: "
                      "true} or {anyResource: true})",
                      where);
      return false;
   }
   while (bson_iter_next(&r)) {
      const char *k = bson_iter_key(&r);
      if (strcmp(k, "db") == 0 || strcmp(k, "collection") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&r)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "%s.%s must be a string", where, k);
            return false;
         }
         uint32_t len;
         const char *v = bson_iter_utf8(&r, &len);
         if (len >= MAX_NAME || strlen(v) != len) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "%s.%s is not a valid name", where, k);
            return false;
         }
         snprintf(k[0] == 'd' ? pv->db : pv->coll, MAX_NAME, "%s", v);
         has_ns = true;
      } else if (strcmp(k, "cluster") == 0 || strcmp(k, "anyResource") == 0) {
         if (!BSON_ITER_HOLDS_BOOL(&r) || !bson_iter_bool(&r)) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "%s.%s must be true", where, k);
            return false;
         }
         *(k[0] == 'c' ? &has_cluster : &has_any) = true;
      } else {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "%s has an unknown key '%s' (a resource is {db, "
                         "collection}, {cluster: true} or {anyResource: "
                         "true})",
                         where, k);
         return false;
      }
   }
   if (has_ns + has_cluster + has_any != 1) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "%s must be exactly one of {db, collection}, "
                      "{cluster: true} and {anyResource: true}",
                      where);
      return false;
   }
   pv->kind = has_any ? RES_ANY : has_cluster ? RES_CLUSTER : RES_NS;
   return true;
}

/* Parses one entry of a role's "privileges": {resource, actions}, both
 * required. Cluster actions need the cluster resource, database actions a
 * namespace, since anything else could never match (mongod's rule);
 * stream-processing actions apply to the workspace whatever the resource. */
static bool
parse_privilege(bson_iter_t *it, const char *where, role_t *role,
                aspen_error_t *err)
{
   bson_iter_t f;
   priv_t pv;
   char sub[320];
   bool has_resource = false, has_actions = false;
   memset(&pv, 0, sizeof pv);
   if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &f)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "%s must be an object {resource, actions}", where);
      return false;
   }
   while (bson_iter_next(&f)) {
      const char *k = bson_iter_key(&f);
      snprintf(sub, sizeof sub, "%s.%s", where, k);
      if (strcmp(k, "resource") == 0) {
         if (!parse_resource(&f, sub, &pv, err)) {
            return false;
         }
         has_resource = true;
      } else if (strcmp(k, "actions") == 0) {
         if (!parse_actions(&f, sub, &pv.mask, err)) {
            return false;
         }
         has_actions = true;
      } else {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "%s has an unknown key '%s' (a privilege is "
                         "{resource, actions})",
                         where, k);
         return false;
      }
   }
   if (!has_resource || !has_actions) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "%s needs %s", where,
                      has_resource ? "\"actions\"" : "a \"resource\"");
      return false;
   }
   for (int a = 0; a < ASPEN_N_ACTIONS; a++) {
      char kind = actions[a].kind;
      if (!(pv.mask & (UINT64_C(1) << a)) || pv.kind == RES_ANY ||
          kind == 'S' || kind == 'A' ||
          (kind == 'C') == (pv.kind == RES_CLUSTER)) {
         continue;
      }
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "%s: action %s applies to %s, not to this resource",
                      where, actions[a].name,
                      kind == 'C' ? "the cluster ({cluster: true})"
                                  : "databases and collections ({db, "
                                    "collection})");
      return false;
   }
   add_priv(&role->privs, &role->n_privs, pv.kind, pv.db, pv.coll, pv.mask);
   return true;
}

/* Parses one security.roles entry: {role, actions?, privileges?, roles?}.
 * Every key and type is checked, so a misspelled or mistyped one stops
 * aspen naming the role and the key rather than granting something else. */
static bool
parse_custom_role(const bson_t *doc, int idx, role_t *role,
                  aspen_error_t *err)
{
   bson_iter_t it;
   char where[MAX_NAME + 64];
   memset(role, 0, sizeof *role);
   if (bson_iter_init_find(&it, doc, "role") && BSON_ITER_HOLDS_UTF8(&it)) {
      role->name = aspen_xstrdup(bson_iter_utf8(&it, NULL));
   }
   if (!role->name || !*role->name || strlen(role->name) >= MAX_NAME) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "security.roles[%d] needs a \"role\" name (a string "
                      "of 1 to %d bytes)",
                      idx, MAX_NAME - 1);
      return false;
   }
   snprintf(where, sizeof where, "security.roles[%d] (role '%s')", idx,
            role->name);
   if (find_builtin(role->name) >= 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "%s: '%s' is a built-in role "
                      "name", where, role->name);
      return false;
   }
   if (!bson_iter_init(&it, doc)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse, "%s is invalid", where);
      return false;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      char sub[MAX_NAME + 128];
      snprintf(sub, sizeof sub, "%s.%s", where, k);
      if (strcmp(k, "role") == 0) {
         continue;
      }
      if (strcmp(k, "actions") == 0) {
         /* Actions on every resource (aspen's shorthand). */
         uint64_t mask = 0;
         if (!parse_actions(&it, sub, &mask, err)) {
            return false;
         }
         add_priv(&role->privs, &role->n_privs, RES_ANY, "", "", mask);
      } else if (strcmp(k, "roles") == 0) {
         bson_iter_t r;
         if (!BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &r)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "%s must be an array of role names", sub);
            return false;
         }
         while (bson_iter_next(&r)) {
            int b = BSON_ITER_HOLDS_UTF8(&r)
                       ? find_builtin(bson_iter_utf8(&r, NULL))
                       : -1;
            if (b < 0 || builtins[b].role_db) {
               aspen_error_set(err, ASPEN_ERR_BadValue,
                               "%s: custom roles may inherit only the "
                               "any-database built-in roles (atlasAdmin, "
                               "readWriteAnyDatabase, readAnyDatabase, "
                               "streamProcessingOwner, clusterMonitor), "
                               "not '%s'",
                               sub,
                               BSON_ITER_HOLDS_UTF8(&r)
                                  ? bson_iter_utf8(&r, NULL)
                                  : "(not a string)");
               return false;
            }
            add_builtin(&role->privs, &role->n_privs, b, "");
         }
      } else if (strcmp(k, "privileges") == 0) {
         bson_iter_t p;
         if (!BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &p)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "%s must be an array of {resource, actions}",
                            sub);
            return false;
         }
         int i = 0;
         while (bson_iter_next(&p)) {
            char pw[MAX_NAME + 160];
            snprintf(pw, sizeof pw, "%s[%d]", sub, i++);
            if (!parse_privilege(&p, pw, role, err)) {
               return false;
            }
         }
      } else {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "%s has an unknown key '%s' (a role has role, "
                         "actions, privileges, roles)",
                         where, k);
         return false;
      }
   }
   return true;
}

/* ---- users ------------------------------------------------------------------ */

typedef struct {
   char role[MAX_NAME];
   char db[MAX_NAME];
} role_ref_t;

typedef struct {
   char name[MAX_NAME];
   char db[MAX_NAME];
   role_ref_t roles[MAX_ROLES];
   size_t n_roles;
   bool has[ASPEN_SCRAM_N_MECHS];
   aspen_scram_cred_t cred[ASPEN_SCRAM_N_MECHS];
} user_t;

struct aspen_users {
   char *path;
   bool mode_enabled;  /* security.authorization "enabled" */
   bool mode_disabled; /* "disabled" (--no-auth) */
   role_t *roles;
   size_t n_roles;
   user_t *users;
   size_t n_users;
   struct stat st; /* the users file as last read */
   bool st_valid;
   /* Users were loaded once: from then on authentication stays required
    * (in "auto" mode) whatever later happens to the file; only an explicit
    * security.authorization "disabled" and a restart turn it off. */
   bool had_users;
};

static const role_t *
find_custom(const aspen_users_t *users, const char *name)
{
   for (size_t i = 0; i < users->n_roles; i++) {
      if (strcmp(users->roles[i].name, name) == 0) {
         return &users->roles[i];
      }
   }
   return NULL;
}

static bool
role_exists(const aspen_users_t *users, const char *name)
{
   return find_builtin(name) >= 0 || find_custom(users, name) != NULL;
}

/* Reads the users file at `path` into `doc`. A file that does not exist
 * is no error: *missing is set and `doc` is empty. Refused (false, err
 * set): a file that cannot be read, is empty or is not (Extended) JSON, and
 * one whose permissions give its group or others any access. The file
 * holds SCRAM keys (a stolen StoredKey/ServerKey pair allows offline
 * guessing and impersonating aspen), and one others may write could give
 * anyone a user, so aspen treats it as mongod treats its keyfile: mode
 * 0600 or stricter, or it is not used. */
static bool
read_file(const char *path, bson_t *doc, bool *missing, aspen_error_t *err)
{
   *missing = false;
   bson_init(doc);
   FILE *f = fopen(path, "rb");
   if (!f) {
      if (errno == ENOENT) {
         *missing = true;
         return true;
      }
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot open users file %s: %s",
                      path, strerror(errno));
      return false;
   }
   struct stat st;
   if (fstat(fileno(f), &st) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot stat users file %s: %s",
                      path, strerror(errno));
      fclose(f);
      return false;
   }
   if (st.st_mode & (S_IRWXG | S_IRWXO)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "permissions on users file %s are too open (mode "
                      "%04o): it holds SCRAM keys and must be readable and "
                      "writable by aspen's user only (chmod 600 %s)",
                      path, (unsigned) (st.st_mode & 07777), path);
      fclose(f);
      return false;
   }
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   bool read_ok = aspen_buf_read_file(&buf, f, MAX_FILE);
   fclose(f);
   if (!read_ok) {
      aspen_buf_cleanup(&buf);
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot read users file %s (too large, or a read "
                      "error)",
                      path);
      return false;
   }
   if (aspen_buf_len(&buf) == 0) {
      aspen_buf_cleanup(&buf);
      aspen_error_set(err, ASPEN_ERR_FailedToParse, "users file %s is empty",
                      path);
      return false;
   }
   bson_error_t berr;
   bson_destroy(doc);
   bool ok = bson_init_from_json(doc, (const char *) aspen_buf_data(&buf),
                                 (ssize_t) aspen_buf_len(&buf), &berr);
   aspen_buf_cleanup(&buf);
   if (!ok) {
      bson_init(doc);
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "users file %s is not valid (Extended) JSON", path);
   }
   return ok;
}

static bool
b64_field(bson_iter_t *c, const char *key, uint8_t *out, size_t size,
          size_t *len)
{
   bson_iter_t f = *c;
   if (!bson_iter_find(&f, key) || !BSON_ITER_HOLDS_UTF8(&f)) {
      return false;
   }
   uint32_t n;
   const char *s = bson_iter_utf8(&f, &n);
   return aspen_scram_b64_decode(s, n, out, size, len);
}

static bool
parse_cred(bson_iter_t *it, aspen_scram_mech_t mech, aspen_scram_cred_t *cred)
{
   bson_iter_t c, f;
   size_t len, hl = aspen_scram_hash_len(mech);
   memset(cred, 0, sizeof *cred);
   if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &c)) {
      return false;
   }
   f = c;
   if (!bson_iter_find(&f, "iterationCount") || !BSON_ITER_HOLDS_NUMBER(&f)) {
      return false;
   }
   int64_t iters = bson_iter_as_int64(&f);
   if (iters < ASPEN_SCRAM_MIN_ITERATIONS || iters > 10000000) {
      return false;
   }
   cred->iterations = (int) iters;
   if (!b64_field(&c, "salt", cred->salt, sizeof cred->salt, &cred->salt_len) ||
       cred->salt_len == 0) {
      return false;
   }
   return b64_field(&c, "storedKey", cred->stored_key, hl, &len) &&
          len == hl && b64_field(&c, "serverKey", cred->server_key, hl, &len) &&
          len == hl;
}

static bool
parse_user(const aspen_users_t *users, bson_iter_t *uit, size_t idx,
           user_t *u, aspen_error_t *err)
{
   bson_iter_t it;
   memset(u, 0, sizeof *u);
   snprintf(u->db, sizeof u->db, "admin");
   if (!BSON_ITER_HOLDS_DOCUMENT(uit) || !bson_iter_recurse(uit, &it)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "users[%zu] must be an object", idx);
      return false;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "user") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
         snprintf(u->name, sizeof u->name, "%s", bson_iter_utf8(&it, NULL));
      } else if (strcmp(k, "db") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
         snprintf(u->db, sizeof u->db, "%s", bson_iter_utf8(&it, NULL));
      } else if (strcmp(k, "roles") == 0 && BSON_ITER_HOLDS_ARRAY(&it)) {
         bson_iter_t r;
         bson_iter_recurse(&it, &r);
         while (bson_iter_next(&r) && u->n_roles < MAX_ROLES) {
            role_ref_t *ref = &u->roles[u->n_roles];
            snprintf(ref->db, sizeof ref->db, "admin");
            if (BSON_ITER_HOLDS_UTF8(&r)) {
               snprintf(ref->role, sizeof ref->role, "%s",
                        bson_iter_utf8(&r, NULL));
            } else if (BSON_ITER_HOLDS_DOCUMENT(&r)) {
               bson_iter_t f;
               bson_iter_recurse(&r, &f);
               while (bson_iter_next(&f)) {
                  if (!BSON_ITER_HOLDS_UTF8(&f)) {
                     continue;
                  }
                  if (strcmp(bson_iter_key(&f), "role") == 0) {
                     snprintf(ref->role, sizeof ref->role, "%s",
                              bson_iter_utf8(&f, NULL));
                  } else if (strcmp(bson_iter_key(&f), "db") == 0) {
                     snprintf(ref->db, sizeof ref->db, "%s",
                              bson_iter_utf8(&f, NULL));
                  }
               }
            }
            if (!role_exists(users, ref->role)) {
               aspen_error_set(err, ASPEN_ERR_BadValue,
                               "users[%zu] (%s) has unknown role '%s'", idx,
                               u->name, ref->role);
               return false;
            }
            u->n_roles++;
         }
      } else if (strcmp(k, "credentials") == 0 &&
                 BSON_ITER_HOLDS_DOCUMENT(&it)) {
         bson_iter_t c;
         bson_iter_recurse(&it, &c);
         while (bson_iter_next(&c)) {
            aspen_scram_mech_t mech;
            if (!aspen_scram_mech_parse(bson_iter_key(&c), &mech)) {
               continue; /* other mechanisms are not aspen's */
            }
            if (!parse_cred(&c, mech, &u->cred[mech])) {
               aspen_error_set(err, ASPEN_ERR_BadValue,
                               "users[%zu] (%s) has a malformed %s "
                               "credential",
                               idx, u->name, bson_iter_key(&c));
               return false;
            }
            u->has[mech] = true;
         }
      }
   }
   if (!u->name[0]) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "users[%zu] has no \"user\"",
                      idx);
      return false;
   }
   return true;
}

/* Reads the users file into a fresh array. */
static bool
load_users(const aspen_users_t *users, user_t **out, size_t *n_out,
           aspen_error_t *err)
{
   bson_t doc;
   bool missing;
   bson_iter_t it, arr;
   *out = NULL;
   *n_out = 0;
   if (!read_file(users->path, &doc, &missing, err)) {
      bson_destroy(&doc);
      return false;
   }
   if (missing) {
      bson_destroy(&doc);
      return true;
   }
   bool ok = true;
   if (!bson_iter_init_find(&it, &doc, "users") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &arr)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "users file %s needs a \"users\" array", users->path);
      ok = false;
   }
   while (ok && bson_iter_next(&arr)) {
      *out = aspen_xrealloc(*out, (*n_out + 1) * sizeof **out);
      if (!parse_user(users, &arr, *n_out, &(*out)[*n_out], err)) {
         char msg[ASPEN_ERROR_MSG_MAX];
         snprintf(msg, sizeof msg, "users file %s: %s", users->path,
                  err->message);
         aspen_error_set(err, err->code, "%s", msg);
         ok = false;
         break;
      }
      (*n_out)++;
   }
   bson_destroy(&doc);
   if (!ok) {
      free(*out);
      *out = NULL;
      *n_out = 0;
   }
   return ok;
}

static char *
default_users_path(const aspen_config_t *cfg)
{
   if (cfg->users_file) {
      return aspen_xstrdup(cfg->users_file);
   }
   char path[4096];
   snprintf(path, sizeof path, "%s/users.json",
            cfg->state_dir ? cfg->state_dir : "./aspen-state");
   return aspen_xstrdup(path);
}

static void
free_roles(aspen_users_t *users)
{
   for (size_t i = 0; i < users->n_roles; i++) {
      free(users->roles[i].name);
      free(users->roles[i].privs);
   }
   free(users->roles);
   users->roles = NULL;
   users->n_roles = 0;
}

/* The parts of aspen_users_new that need no users file. */
static aspen_users_t *
users_new_roles(const aspen_config_t *cfg, aspen_error_t *err)
{
   aspen_users_t *users = aspen_xcalloc(1, sizeof *users);
   users->path = default_users_path(cfg);
   const char *mode = cfg->auth_mode ? cfg->auth_mode : "auto";
   if (strcmp(mode, "enabled") == 0) {
      users->mode_enabled = true;
   } else if (strcmp(mode, "disabled") == 0) {
      users->mode_disabled = true;
   } else if (strcmp(mode, "auto") != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "security.authorization must be one of auto, enabled, "
                      "disabled, not '%s'",
                      mode);
      aspen_users_destroy(users);
      return NULL;
   }
   bson_iter_t it;
   int idx = 0;
   if (bson_iter_init(&it, &cfg->roles)) {
      while (bson_iter_next(&it)) {
         uint32_t len;
         const uint8_t *data;
         bson_t doc;
         role_t role;
         memset(&role, 0, sizeof role);
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "security.roles[%d] must be an object", idx);
            aspen_users_destroy(users);
            return NULL;
         }
         bson_iter_document(&it, &len, &data);
         if (!bson_init_static(&doc, data, len) ||
             !parse_custom_role(&doc, idx, &role, err)) {
            free(role.name);
            free(role.privs);
            aspen_users_destroy(users);
            return NULL;
         }
         if (find_custom(users, role.name)) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "security.roles[%d]: role '%s' is defined twice",
                            idx, role.name);
            free(role.name);
            free(role.privs);
            aspen_users_destroy(users);
            return NULL;
         }
         users->roles = aspen_xrealloc(users->roles,
                                       (users->n_roles + 1) * sizeof *users->roles);
         users->roles[users->n_roles++] = role;
         idx++;
      }
   }
   return users;
}

aspen_users_t *
aspen_users_new(const aspen_config_t *cfg, aspen_error_t *err)
{
   aspen_users_t *users = users_new_roles(cfg, err);
   if (!users) {
      return NULL;
   }
   if (!load_users(users, &users->users, &users->n_users, err)) {
      aspen_users_destroy(users);
      return NULL;
   }
   users->st_valid = stat(users->path, &users->st) == 0;
   users->had_users = users->n_users > 0;
   return users;
}

void
aspen_users_destroy(aspen_users_t *users)
{
   if (!users) {
      return;
   }
   free_roles(users);
   if (users->users) {
      memset(users->users, 0, users->n_users * sizeof *users->users);
   }
   free(users->users);
   free(users->path);
   free(users);
}

void
aspen_users_refresh(aspen_users_t *users)
{
   struct stat st;
   bool exists = stat(users->path, &st) == 0;
   if (exists == users->st_valid &&
       (!exists || (st.st_mtim.tv_sec == users->st.st_mtim.tv_sec &&
                    st.st_mtim.tv_nsec == users->st.st_mtim.tv_nsec &&
                    st.st_size == users->st.st_size &&
                    st.st_ino == users->st.st_ino &&
                    st.st_mode == users->st.st_mode))) {
      return;
   }
   user_t *list;
   size_t n;
   aspen_error_t err;
   /* Remembered before loading: a file that cannot be used now is tried
    * again when it changes (or reappears), not on every hello. */
   users->st_valid = exists;
   if (exists) {
      users->st = st;
   }
   bool ok = load_users(users, &list, &n, &err);
   if (ok && !exists && users->had_users) {
      /* A file that vanishes (moved, deleted, a volume unmounted) is not
       * "no users": that would switch authentication off for everyone. */
      ok = false;
      aspen_error_set(&err, ASPEN_ERR_BadValue,
                      "users file %s no longer exists", users->path);
   }
   if (!ok) {
      aspen_logf(ASPEN_LOG_ERROR, COMPONENT, "users",
                 "users file changed but cannot be used; keeping the %zu "
                 "users loaded before (authentication stays %s), and "
                 "trying again when the file changes: %s",
                 users->n_users,
                 aspen_users_auth_required(users) ? "on" : "off",
                 err.message);
      return;
   }
   aspen_logf(ASPEN_LOG_INFO, COMPONENT, "users",
              "users file %s reloaded: %zu users (was %zu)", users->path, n,
              users->n_users);
   if (n == 0 && users->had_users && !users->mode_disabled) {
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, "users",
                 "users file %s lists no users: nobody can log in, and "
                 "authentication stays on (security.authorization "
                 "\"disabled\" and a restart turn it off)",
                 users->path);
   }
   free(users->users);
   users->users = list;
   users->n_users = n;
   users->had_users = users->had_users || n > 0;
}

bool
aspen_users_auth_required(const aspen_users_t *users)
{
   if (users->mode_disabled) {
      return false;
   }
   return users->mode_enabled || users->n_users > 0 || users->had_users;
}

size_t
aspen_users_count(const aspen_users_t *users)
{
   return users->n_users;
}

const char *
aspen_users_path(const aspen_users_t *users)
{
   return users->path;
}

static const user_t *
find_user(const aspen_users_t *users, const char *db, const char *name)
{
   for (size_t i = 0; i < users->n_users; i++) {
      if (strcmp(users->users[i].name, name) == 0 &&
          strcmp(users->users[i].db, db) == 0) {
         return &users->users[i];
      }
   }
   return NULL;
}

bool
aspen_users_get_cred(const aspen_users_t *users, const char *db,
                     const char *name, aspen_scram_mech_t mech,
                     aspen_scram_cred_t *cred)
{
   const user_t *u = find_user(users, db, name);
   memset(cred, 0, sizeof *cred);
   if (!u || !u->has[mech]) {
      return false;
   }
   *cred = u->cred[mech];
   return true;
}

/* ---- principals ------------------------------------------------------------- */

struct aspen_principal {
   char user[MAX_NAME];
   char db[MAX_NAME];
   uint8_t uid[ASPEN_USER_DIGEST_LEN]; /* SHA-256 of "user@db" */
   role_ref_t roles[MAX_ROLES];
   size_t n_roles;
   priv_t *privs;
   size_t n_privs;
};

/* Adds the privileges of role `name` (built-in, granted on `role_db`, or a
 * security.roles one) to `p`. False when there is no such role. */
static bool
principal_add_role(aspen_principal_t *p, const aspen_users_t *users,
                   const char *name, const char *role_db)
{
   int b = find_builtin(name);
   if (b >= 0) {
      add_builtin(&p->privs, &p->n_privs, b, role_db);
      return true;
   }
   const role_t *r = find_custom(users, name);
   for (size_t j = 0; r && j < r->n_privs; j++) {
      const priv_t *pv = &r->privs[j];
      add_priv(&p->privs, &p->n_privs, pv->kind, pv->db, pv->coll, pv->mask);
   }
   return r != NULL;
}

aspen_principal_t *
aspen_users_principal_new(const aspen_users_t *users, const char *db,
                          const char *name)
{
   const user_t *u = find_user(users, db, name);
   if (!u) {
      return NULL;
   }
   aspen_principal_t *p = aspen_xcalloc(1, sizeof *p);
   snprintf(p->user, sizeof p->user, "%s", u->name);
   snprintf(p->db, sizeof p->db, "%s", u->db);
   char key[2 * MAX_NAME + 2];
   int n = snprintf(key, sizeof key, "%s@%s", p->user, p->db);
   SHA256((const uint8_t *) key, (size_t) n, p->uid);
   memcpy(p->roles, u->roles, sizeof p->roles);
   p->n_roles = u->n_roles;
   for (size_t i = 0; i < u->n_roles; i++) {
      (void) principal_add_role(p, users, u->roles[i].role, u->roles[i].db);
   }
   return p;
}

aspen_principal_t *
aspen_users_role_principal_new(const aspen_users_t *users, const char *role,
                               bool custom, aspen_error_t *err)
{
   char name[MAX_NAME];
   const char *role_db = "";
   if (strlen(role) >= sizeof name) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "role name too long");
      return NULL;
   }
   snprintf(name, sizeof name, "%s", role);
   if (custom) {
      if (!find_custom(users, name)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "no custom role '%s' in security.roles", name);
         return NULL;
      }
   } else {
      char *at = strchr(name, '@');
      if (at) {
         *at = '\0';
         role_db = at + 1;
      }
      int b = find_builtin(name);
      if (b < 0) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "'%s' is not a built-in role (" BUILTIN_NAMES
                         "; a security.roles role has type CUSTOM)",
                         role);
         return NULL;
      }
      if (builtins[b].role_db ? !*role_db : at != NULL) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         builtins[b].role_db
                            ? "built-in role '%s' is granted on one database: "
                              "write it %s@<db>"
                            : "built-in role '%s' covers every database: "
                              "write it without @<db> (%s)",
                         role, name);
         return NULL;
      }
   }
   aspen_principal_t *p = aspen_xcalloc(1, sizeof *p);
   snprintf(p->user, sizeof p->user, "%s", role);
   (void) principal_add_role(p, users, name, role_db);
   return p;
}

void
aspen_principal_destroy(aspen_principal_t *p)
{
   if (p) {
      free(p->privs);
      free(p);
   }
}

const char *
aspen_principal_user(const aspen_principal_t *p)
{
   return p->user;
}

const char *
aspen_principal_db(const aspen_principal_t *p)
{
   return p->db;
}

const uint8_t *
aspen_principal_uid(const aspen_principal_t *p)
{
   return p->uid;
}

static const char *
index_key(uint32_t i, char *buf, size_t size)
{
   const char *key;
   bson_uint32_to_string(i, &key, buf, size);
   return key;
}

void
aspen_principal_append_roles(const aspen_principal_t *p, bson_t *arr)
{
   for (size_t i = 0; i < p->n_roles; i++) {
      char buf[16];
      bson_t doc;
      BSON_APPEND_DOCUMENT_BEGIN(arr, index_key((uint32_t) i, buf, sizeof buf),
                                 &doc);
      BSON_APPEND_UTF8(&doc, "role", p->roles[i].role);
      BSON_APPEND_UTF8(&doc, "db", p->roles[i].db);
      bson_append_document_end(arr, &doc);
   }
}

void
aspen_principal_append_privileges(const aspen_principal_t *p, bson_t *arr)
{
   uint32_t k = 0;
   for (size_t i = 0; i < p->n_privs; i++) {
      const priv_t *pv = &p->privs[i];
      char buf[16];
      const char *key;
      bson_t doc, res, acts;
      key = index_key(k++, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(arr, key, &doc);
      BSON_APPEND_DOCUMENT_BEGIN(&doc, "resource", &res);
      if (pv->kind == RES_ANY) {
         BSON_APPEND_BOOL(&res, "anyResource", true);
      } else if (pv->kind == RES_CLUSTER) {
         BSON_APPEND_BOOL(&res, "cluster", true);
      } else {
         BSON_APPEND_UTF8(&res, "db", pv->db);
         BSON_APPEND_UTF8(&res, "collection", pv->coll);
      }
      bson_append_document_end(&doc, &res);
      BSON_APPEND_ARRAY_BEGIN(&doc, "actions", &acts);
      uint32_t n = 0;
      for (int a = 0; a < ASPEN_N_ACTIONS; a++) {
         if (pv->mask & (UINT64_C(1) << a)) {
            key = index_key(n++, buf, sizeof buf);
            BSON_APPEND_UTF8(&acts, key, actions[a].name);
         }
      }
      bson_append_array_end(&doc, &acts);
      bson_append_document_end(arr, &doc);
   }
}

/* ---- privilege checks ---------------------------------------------------- */

/* A resource a command touches: a namespace (db.coll; coll "" for the
 * database itself; db "" for every database, as a deployment-wide change
 * stream reads), the cluster, or every resource (what aspen asks for a
 * command it has no mapping for). Stream-processing actions are on the
 * workspace whatever the resource. */
typedef struct {
   res_kind_t kind;
   const char *db;
   const char *coll;
} res_t;

/* Whether privilege `pv`'s resource pattern covers `r` (mongod's rules). */
static bool
priv_matches(const priv_t *pv, const res_t *r)
{
   switch (pv->kind) {
   case RES_ANY:
      return true;
   case RES_CLUSTER:
      return r->kind == RES_CLUSTER;
   case RES_NS:
      break;
   }
   if (r->kind != RES_NS) {
      return false;
   }
   if (!r->db[0]) {
      return !pv->db[0] && !pv->coll[0];
   }
   if (pv->db[0] && strcmp(pv->db, r->db) != 0) {
      return false;
   }
   if (!r->coll[0]) {
      return !pv->coll[0];
   }
   return !pv->coll[0] || strcmp(pv->coll, r->coll) == 0;
}

static bool
allows(const aspen_principal_t *p, aspen_action_t a, const res_t *r)
{
   if (!p) {
      return false;
   }
   uint64_t bit = UINT64_C(1) << a;
   for (size_t i = 0; i < p->n_privs; i++) {
      const priv_t *pv = &p->privs[i];
      if (actions[a].kind == 'S') {
         /* The workspace: any privilege naming the action, or anyAction
          * on every resource. */
         if ((pv->mask & bit) ||
             ((pv->mask & BIT(anyAction)) && pv->kind == RES_ANY)) {
            return true;
         }
      } else if ((pv->mask & (bit | BIT(anyAction))) && priv_matches(pv, r)) {
         return true;
      }
   }
   return false;
}

/* mongod's names for resources in messages. */
static void
describe_resource(const res_t *r, aspen_action_t a, char *out, size_t size)
{
   if (actions[a].kind == 'S') {
      snprintf(out, size, "<stream processing workspace>");
   } else if (r->kind == RES_ANY) {
      snprintf(out, size, "<all resources>");
   } else if (r->kind == RES_CLUSTER) {
      snprintf(out, size, "<system resource>");
   } else if (!r->db[0]) {
      snprintf(out, size, "<all normal resources>");
   } else if (!r->coll[0]) {
      snprintf(out, size, "<database %s>", r->db);
   } else {
      snprintf(out, size, "<%s.%s>", r->db, r->coll);
   }
}

/* One check in progress: whose privileges, and the first one missing:
 * mongod's wording for the log, and "<action> on <namespace>" for the
 * engine's messages. */
typedef struct {
   const aspen_principal_t *p;
   char missing[ASPEN_ERROR_MSG_MAX]; /* "missing privilege for ..." */
   char missing_short[ASPEN_ERROR_MSG_MAX]; /* "find on b.c" */
} authz_t;

static bool
need(authz_t *az, aspen_action_t a, res_kind_t kind, const char *db,
     const char *coll)
{
   res_t r = {kind, db ? db : "", coll ? coll : ""};
   if (allows(az->p, a, &r)) {
      return true;
   }
   char res[2 * MAX_NAME + 32];
   describe_resource(&r, a, res, sizeof res);
   snprintf(az->missing, sizeof az->missing,
            "missing privilege for action %s on resource %s",
            aspen_action_name(a), res);
   if (kind == RES_NS && r.db[0]) {
      snprintf(az->missing_short, sizeof az->missing_short, "%s on %s%s%s%s",
               aspen_action_name(a), r.coll[0] ? "" : "database ", r.db,
               r.coll[0] ? "." : "", r.coll);
   } else {
      snprintf(az->missing_short, sizeof az->missing_short, "%s on %s",
               aspen_action_name(a),
               kind == RES_NS        ? "every database"
               : kind == RES_CLUSTER ? "the cluster"
                                     : "every resource");
   }
   return false;
}

/* Needs action `a` on db.coll (coll NULL or "": the database). */
#define NEED_NS(az, a, db, coll)                                               \
   need((az), ASPEN_ACTION_##a, RES_NS, (db), (coll))

/* What aspen asks for when it cannot tell which namespaces a command
 * touches: everything (atlasAdmin). Refusing is the safe side. */
static bool
need_everything(authz_t *az)
{
   return need(az, ASPEN_ACTION_anyAction, RES_ANY, NULL, NULL);
}

static bool
bool_field(const bson_t *doc, const char *key)
{
   bson_iter_t it;
   return bson_iter_init_find(&it, doc, key) && bson_iter_as_bool(&it);
}

/* A target namespace as pipeline stages name it: a collection name (in
 * `dflt_db`), or {<db_key>: db, <coll_key>: coll} (db defaulting to
 * `dflt_db`). *db and *coll point into the command. False when it is
 * neither. */
static bool
target_ns(const bson_iter_t *it, const char *db_key, const char *coll_key,
          const char *dflt_db, const char **db, const char **coll)
{
   bson_t doc;
   *db = dflt_db;
   *coll = NULL;
   if (BSON_ITER_HOLDS_UTF8(it)) {
      *coll = bson_iter_utf8(it, NULL);
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(it) || !aspen_bson_view(it, &doc)) {
      return false;
   }
   bson_iter_t f;
   if (bson_iter_init_find(&f, &doc, db_key)) {
      if (!BSON_ITER_HOLDS_UTF8(&f)) {
         return false;
      }
      *db = bson_iter_utf8(&f, NULL);
   }
   *coll = aspen_bson_utf8(&doc, coll_key);
   return *coll != NULL;
}

/* Needs what writing to db.coll the way $out, $merge and mapReduce write
 * requires: `acts` (a mask of ACTION bits), plus bypassDocumentValidation
 * when the command asks to bypass it. */
static bool
need_write(authz_t *az, uint64_t acts, bool bypass, const char *db,
           const char *coll)
{
   if (bypass) {
      acts |= BIT(bypassDocumentValidation);
   }
   for (int a = 0; a < ASPEN_N_ACTIONS; a++) {
      if ((acts & (UINT64_C(1) << a)) &&
          !need(az, (aspen_action_t) a, RES_NS, db, coll)) {
         return false;
      }
   }
   return true;
}

/* mongod's limit on nested sub-pipelines ($lookup, $unionWith, $facet). */
#define MAX_PIPELINE_DEPTH 20

static bool check_stages(authz_t *az, const bson_iter_t *pipeline,
                         const char *db, bool bypass, int depth);

/* The privileges stage `name` (argument `arg`) needs beyond reading its
 * input, in a pipeline whose namespaces default to database `db`. */
static bool
check_stage(authz_t *az, const char *name, const bson_iter_t *arg,
            const char *db, bool bypass, int depth)
{
   const char *tdb, *tcoll;
   bson_t spec;
   bson_iter_t it;
   if (strcmp(name, "$out") == 0) {
      /* "coll" or {db, coll, timeseries?}: the collection is replaced. */
      if (!target_ns(arg, "db", "coll", db, &tdb, &tcoll)) {
         return need_everything(az);
      }
      return need_write(az, BIT(insert) | BIT(remove), bypass, tdb, tcoll);
   }
   if (strcmp(name, "$merge") == 0) {
      /* mongod's table: insert when unmatched documents are inserted (the
       * default), update unless matched ones fail the stage. */
      if (!aspen_bson_view(arg, &spec) ||
          !bson_iter_init_find(&it, &spec, "into") ||
          !target_ns(&it, "db", "coll", db, &tdb, &tcoll)) {
         return need_everything(az);
      }
      const char *wm = aspen_bson_utf8(&spec, "whenMatched");
      const char *wnm = aspen_bson_utf8(&spec, "whenNotMatched");
      uint64_t acts = 0;
      if (!wnm || strcmp(wnm, "insert") == 0) {
         acts |= BIT(insert);
      }
      if (!wm || strcmp(wm, "fail") != 0) {
         acts |= BIT(update);
      }
      return need_write(az, acts, bypass, tdb, tcoll);
   }
   if (strcmp(name, "$lookup") == 0 || strcmp(name, "$graphLookup") == 0) {
      /* {from: "coll" | {db, coll}, pipeline?} (no from: the pipeline
       * starts with $documents). The sub-pipeline runs in from's
       * database. */
      const char *fdb = db, *fcoll = NULL;
      if (!BSON_ITER_HOLDS_DOCUMENT(arg) || !aspen_bson_view(arg, &spec)) {
         return need_everything(az);
      }
      if (bson_iter_init_find(&it, &spec, "from") &&
          !target_ns(&it, "db", "coll", db, &fdb, &fcoll)) {
         return need_everything(az);
      }
      if (fcoll && !NEED_NS(az, find, fdb, fcoll)) {
         return false;
      }
      return !bson_iter_init_find(&it, &spec, "pipeline") ||
             check_stages(az, &it, fdb, bypass, depth + 1);
   }
   if (strcmp(name, "$unionWith") == 0) {
      /* "coll" or {coll?, pipeline?} (and Atlas Data Federation's db). */
      if (BSON_ITER_HOLDS_UTF8(arg)) {
         return NEED_NS(az, find, db, bson_iter_utf8(arg, NULL));
      }
      if (!BSON_ITER_HOLDS_DOCUMENT(arg) || !aspen_bson_view(arg, &spec)) {
         return need_everything(az);
      }
      const char *udb = db, *ucoll = NULL;
      if (bson_iter_init_find(&it, &spec, "db")) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            return need_everything(az);
         }
         udb = bson_iter_utf8(&it, NULL);
      }
      if (bson_iter_init_find(&it, &spec, "coll")) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            return need_everything(az);
         }
         ucoll = bson_iter_utf8(&it, NULL);
         if (!NEED_NS(az, find, udb, ucoll)) {
            return false;
         }
      }
      return !bson_iter_init_find(&it, &spec, "pipeline") ||
             check_stages(az, &it, udb, bypass, depth + 1);
   }
   if (strcmp(name, "$facet") == 0) {
      if (!aspen_bson_view(arg, &spec) || !BSON_ITER_HOLDS_DOCUMENT(arg) ||
          !bson_iter_init(&it, &spec)) {
         return need_everything(az);
      }
      while (bson_iter_next(&it)) {
         if (!check_stages(az, &it, db, bypass, depth + 1)) {
            return false;
         }
      }
      return true;
   }
   /* aspen runs every command as one backend user, so the "own" operations
    * and sessions these list are everyone's: they need the privilege to
    * see all of them. */
   if (strcmp(name, "$currentOp") == 0) {
      return need(az, ASPEN_ACTION_inprog, RES_CLUSTER, NULL, NULL);
   }
   if (strcmp(name, "$listSessions") == 0 ||
       strcmp(name, "$listLocalSessions") == 0) {
      return need(az, ASPEN_ACTION_listSessions, RES_CLUSTER, NULL, NULL);
   }
   return true; /* the other stages only transform their input */
}

/* Checks every stage of the pipeline array `arr`, whose namespaces
 * default to database `db`. */
static bool
check_stage_list(authz_t *az, const bson_t *arr, const char *db, bool bypass,
                 int depth)
{
   bson_iter_t st, k;
   if (depth > MAX_PIPELINE_DEPTH || !bson_iter_init(&st, arr)) {
      return need_everything(az);
   }
   while (bson_iter_next(&st)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&st) || !bson_iter_recurse(&st, &k) ||
          !bson_iter_next(&k)) {
         continue; /* the server refuses it before running anything */
      }
      if (!check_stage(az, bson_iter_key(&k), &k, db, bypass, depth)) {
         return false;
      }
   }
   return true;
}

/* The same for a pipeline field (`pipeline`: an iterator on it), which
 * must be an array. */
static bool
check_stages(authz_t *az, const bson_iter_t *pipeline, const char *db,
             bool bypass, int depth)
{
   bson_t arr;
   if (!BSON_ITER_HOLDS_ARRAY(pipeline) || !aspen_bson_view(pipeline, &arr)) {
      return need_everything(az);
   }
   return check_stage_list(az, &arr, db, bypass, depth);
}

/* The first stage's name of a pipeline (iterator on the array), or "". */
static const char *
first_stage(const bson_iter_t *pipeline, bson_iter_t *arg)
{
   bson_iter_t st;
   if (BSON_ITER_HOLDS_ARRAY(pipeline) && bson_iter_recurse(pipeline, &st) &&
       bson_iter_next(&st) && BSON_ITER_HOLDS_DOCUMENT(&st) &&
       bson_iter_recurse(&st, arg) && bson_iter_next(arg)) {
      return bson_iter_key(arg);
   }
   return "";
}

/* An aggregation on db.coll (coll NULL: `aggregate: 1`): reading its
 * input, as its first stage decides, then every stage's own needs. */
static bool
check_pipeline(authz_t *az, const char *db, const char *coll,
               const bson_iter_t *pipeline, bool bypass)
{
   bson_iter_t arg;
   const char *first = first_stage(pipeline, &arg);
   if (strcmp(first, "$changeStream") == 0) {
      /* A collection, a database (aggregate: 1), or the whole deployment
       * (allChangesForCluster on admin): changeStream + find on it. */
      bson_t opts;
      bool cluster = aspen_bson_view(&arg, &opts) &&
                     BSON_ITER_HOLDS_DOCUMENT(&arg) &&
                     bool_field(&opts, "allChangesForCluster");
      const char *wdb = cluster ? NULL : db;
      const char *wcoll = cluster ? NULL : coll;
      if (!NEED_NS(az, changeStream, wdb, wcoll) ||
          !NEED_NS(az, find, wdb, wcoll)) {
         return false;
      }
   } else if (strcmp(first, "$collStats") == 0) {
      if (!NEED_NS(az, collStats, db, coll)) {
         return false;
      }
   } else if (strcmp(first, "$indexStats") == 0) {
      if (!NEED_NS(az, indexStats, db, coll)) {
         return false;
      }
   } else if (strcmp(first, "$documents") != 0 &&
              strcmp(first, "$currentOp") != 0 &&
              strcmp(first, "$listSessions") != 0 &&
              strcmp(first, "$listLocalSessions") != 0) {
      /* Stages that read no collection aside, the input is read. */
      if (!NEED_NS(az, find, db, coll)) {
         return false;
      }
   }
   return check_stages(az, pipeline, db, bypass, 0);
}

/* ---- what each command needs -------------------------------------------- */

/* The collection a command's first value names, or NULL (aggregate: 1,
 * a UUID, ...: then the database is the resource). */
static const char *
cmd_collection(const bson_t *cmd)
{
   bson_iter_t it;
   if (bson_iter_init(&it, cmd) && bson_iter_next(&it) &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return NULL;
}

/* Splits "db.coll" at its first dot into the two buffers; false when there
 * is no dot or a side is empty or too long. */
static bool
split_ns(const char *ns, char *db, char *coll)
{
   const char *dot = ns ? strchr(ns, '.') : NULL;
   if (!dot || dot == ns || !dot[1] || (size_t) (dot - ns) >= MAX_NAME ||
       strlen(dot + 1) >= MAX_NAME) {
      return false;
   }
   snprintf(db, MAX_NAME, "%.*s", (int) (dot - ns), ns);
   snprintf(coll, MAX_NAME, "%s", dot + 1);
   return true;
}

static bool
check_aggregate(authz_t *az, const bson_t *cmd, const char *db,
                const char *coll)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, cmd, "pipeline")) {
      return NEED_NS(az, find, db, coll); /* the server refuses it */
   }
   return check_pipeline(az, db, coll, &it,
                         bool_field(cmd, "bypassDocumentValidation"));
}

/* insert, update, findAndModify: bypassDocumentValidation needs its own
 * action. */
static bool
check_bypass(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   return !bool_field(cmd, "bypassDocumentValidation") ||
          NEED_NS(az, bypassDocumentValidation, db, coll);
}

/* update: an upsert may insert. */
static bool
check_update(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   bson_iter_t it, u;
   if (bson_iter_init_find(&it, cmd, "updates") &&
       BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &u)) {
      while (bson_iter_next(&u)) {
         bson_t one;
         if (aspen_bson_view(&u, &one) && BSON_ITER_HOLDS_DOCUMENT(&u) &&
             bool_field(&one, "upsert")) {
            if (!NEED_NS(az, insert, db, coll)) {
               return false;
            }
            break;
         }
      }
   }
   return check_bypass(az, cmd, db, coll);
}

/* findAndModify: find, then remove, or update (+ insert for an upsert). */
static bool
check_find_and_modify(authz_t *az, const bson_t *cmd, const char *db,
                      const char *coll)
{
   if (bool_field(cmd, "remove")) {
      return NEED_NS(az, remove, db, coll);
   }
   return NEED_NS(az, update, db, coll) &&
          (!bool_field(cmd, "upsert") || NEED_NS(az, insert, db, coll)) &&
          check_bypass(az, cmd, db, coll);
}

/* create: a view needs what its pipeline on `viewOn` needs. */
static bool
check_create(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   (void) coll;
   bson_iter_t it;
   if (!bson_iter_init_find(&it, cmd, "viewOn")) {
      return true;
   }
   if (!BSON_ITER_HOLDS_UTF8(&it)) {
      return need_everything(az);
   }
   const char *view_on = bson_iter_utf8(&it, NULL);
   if (!bson_iter_init_find(&it, cmd, "pipeline")) {
      return NEED_NS(az, find, db, view_on);
   }
   return check_pipeline(az, db, view_on, &it, false);
}

/* mapReduce: out "coll" (replace) or {replace | merge | reduce: coll,
 * db?} writes there; {inline: 1} writes nothing. */
static bool
check_map_reduce(authz_t *az, const bson_t *cmd, const char *db,
                 const char *coll)
{
   (void) coll;
   bson_iter_t it, o;
   bool bypass = bool_field(cmd, "bypassDocumentValidation");
   if (!bson_iter_init_find(&it, cmd, "out")) {
      return true; /* the server refuses it */
   }
   if (BSON_ITER_HOLDS_UTF8(&it)) {
      return need_write(az, BIT(insert) | BIT(remove), bypass, db,
                        bson_iter_utf8(&it, NULL));
   }
   bson_t out;
   if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !aspen_bson_view(&it, &out) ||
       !bson_iter_init(&o, &out)) {
      return need_everything(az);
   }
   if (bson_has_field(&out, "inline")) {
      return true;
   }
   const char *odb = aspen_bson_utf8(&out, "db");
   while (bson_iter_next(&o)) {
      const char *k = bson_iter_key(&o);
      bool replace = strcmp(k, "replace") == 0;
      if (replace || strcmp(k, "merge") == 0 || strcmp(k, "reduce") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&o)) {
            return need_everything(az);
         }
         return need_write(az,
                           BIT(insert) | (replace ? BIT(remove) : BIT(update)),
                           bypass, odb ? odb : db, bson_iter_utf8(&o, NULL));
      }
   }
   return need_everything(az);
}

/* renameCollection (run on admin) {renameCollection: "a.x", to: "b.y",
 * dropTarget?}: within one database renameCollectionSameDB on it may do,
 * when the user can read the source or cannot read the target (so a
 * rename never makes readable what was not); otherwise find and
 * dropCollection on the source, insert and createIndex on the target
 * (and dropCollection there with dropTarget). mongod's rule. */
static bool
check_rename(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   (void) db;
   (void) coll;
   char sdb[MAX_NAME], scoll[MAX_NAME], tdb[MAX_NAME], tcoll[MAX_NAME];
   if (!split_ns(cmd_collection(cmd), sdb, scoll) ||
       !split_ns(aspen_bson_utf8(cmd, "to"), tdb, tcoll)) {
      return need_everything(az);
   }
   bson_iter_t it;
   bool drop_target = bson_iter_init_find(&it, cmd, "dropTarget") &&
                      (!BSON_ITER_HOLDS_BOOL(&it) || bson_iter_bool(&it));
   if (strcmp(sdb, tdb) == 0) {
      res_t dbres = {RES_NS, sdb, ""}, src = {RES_NS, sdb, scoll},
            dst = {RES_NS, tdb, tcoll};
      if (allows(az->p, ASPEN_ACTION_renameCollectionSameDB, &dbres) &&
          (!drop_target ||
           allows(az->p, ASPEN_ACTION_dropCollection, &dst)) &&
          (allows(az->p, ASPEN_ACTION_find, &src) ||
           !allows(az->p, ASPEN_ACTION_find, &dst))) {
         return true;
      }
   }
   return NEED_NS(az, find, sdb, scoll) &&
          NEED_NS(az, dropCollection, sdb, scoll) &&
          NEED_NS(az, insert, tdb, tcoll) &&
          NEED_NS(az, createIndex, tdb, tcoll) &&
          (!drop_target || NEED_NS(az, dropCollection, tdb, tcoll));
}

/* cloneCollectionAsCapped {cloneCollectionAsCapped: src, toCollection}:
 * find on the source, insert, createIndex and convertToCapped on the
 * copy. */
static bool
check_clone_capped(authz_t *az, const bson_t *cmd, const char *db,
                   const char *coll)
{
   (void) coll;
   const char *to = aspen_bson_utf8(cmd, "toCollection");
   if (!to) {
      return need_everything(az);
   }
   return NEED_NS(az, insert, db, to) && NEED_NS(az, createIndex, db, to) &&
          NEED_NS(az, convertToCapped, db, to);
}

/* getMore: find on the namespace of the cursor, named by `collection`
 * (aspen checks separately that the cursor is the user's, cmd_auth.c). */
static bool
check_get_more(authz_t *az, const bson_t *cmd, const char *db,
               const char *coll)
{
   (void) coll;
   return NEED_NS(az, find, db, aspen_bson_utf8(cmd, "collection"));
}

/* Scope of a command's resource: S the stream-processing workspace, C the
 * collection named by the command's value (or the database, when the value
 * is not a string), D the database, X the cluster, N nothing beyond an
 * authenticated session (and `extra`). `extra` checks what the command
 * touches besides (other namespaces, hidden writes). */
typedef bool (*extra_fn)(authz_t *az, const bson_t *cmd, const char *db,
                         const char *coll);

typedef struct {
   const char *name;
   char scope;
   aspen_action_t a[2];
   int n;
   extra_fn extra;
} need_t;

#define A(x) ASPEN_ACTION_##x
static const need_t needs[] = {
   /* ASP's stream commands (spec §9.1) are the engine's: sp_need. */
   /* Forwarded CRUD and catalog commands. */
   {"find", 'C', {A(find)}, 1, NULL},
   {"count", 'C', {A(find)}, 1, NULL},
   {"distinct", 'C', {A(find)}, 1, NULL},
   {"aggregate", 'C', {0}, 0, check_aggregate},
   {"getMore", 'N', {0}, 0, check_get_more},
   /* A user kills its own cursors with no privilege (cmd_auth.c refuses
    * another user's), as on mongod. */
   {"killCursors", 'N', {0}, 0, NULL},
   {"insert", 'C', {A(insert)}, 1, check_bypass},
   {"update", 'C', {A(update)}, 1, check_update},
   {"delete", 'C', {A(remove)}, 1, NULL},
   {"findAndModify", 'C', {A(find)}, 1, check_find_and_modify},
   {"findandmodify", 'C', {A(find)}, 1, check_find_and_modify},
   {"mapReduce", 'C', {A(find)}, 1, check_map_reduce},
   {"mapreduce", 'C', {A(find)}, 1, check_map_reduce},
   {"create", 'C', {A(createCollection)}, 1, check_create},
   {"drop", 'C', {A(dropCollection)}, 1, NULL},
   {"createIndexes", 'C', {A(createIndex)}, 1, NULL},
   {"dropIndexes", 'C', {A(dropIndex)}, 1, NULL},
   {"deleteIndexes", 'C', {A(dropIndex)}, 1, NULL},
   {"listIndexes", 'C', {A(listIndexes)}, 1, NULL},
   {"collStats", 'C', {A(collStats)}, 1, NULL},
   {"convertToCapped", 'C', {A(convertToCapped)}, 1, NULL},
   {"cloneCollectionAsCapped", 'C', {A(find)}, 1, check_clone_capped},
   {"renameCollection", 'N', {0}, 0, check_rename},
   {"dbStats", 'D', {A(dbStats)}, 1, NULL},
   {"listCollections", 'D', {A(listCollections)}, 1, NULL},
   {"dropDatabase", 'D', {A(dropDatabase)}, 1, NULL},
   {"listDatabases", 'X', {A(listDatabases)}, 1, NULL},
   /* aspen's own diagnostics, cluster-monitor privileges as on mongod. */
   {"getCmdLineOpts", 'X', {A(getCmdLineOpts)}, 1, NULL},
   {"getLog", 'X', {A(getLog)}, 1, NULL},
   {"hostInfo", 'X', {A(hostInfo)}, 1, NULL},
   {"serverStatus", 'X', {A(serverStatus)}, 1, NULL},
   /* Commands mongod runs for any authenticated user. */
   {"commitTransaction", 'N', {0}, 0, NULL},
   {"abortTransaction", 'N', {0}, 0, NULL},
   {"startSession", 'N', {0}, 0, NULL},
   {"getLastError", 'N', {0}, 0, NULL},
   {"resetError", 'N', {0}, 0, NULL},
   {"listCommands", 'N', {0}, 0, NULL},
};

/* What an sp command needs (spec §9.1), from the engine's command table:
 * its privilege action, and sampleStreamProcessor too when it reads the
 * processor's output (sp.process). An action aspen does not know needs
 * everything (never nothing). NULL when `name` is no sp command. */
static const need_t *
sp_need(const char *name, need_t *out)
{
   const aspen_engine_command_t *c = aspen_engine_command_find(name);
   if (!c) {
      return NULL;
   }
   *out = (need_t){.name = c->name, .scope = 'S'};
   if (!aspen_action_parse(c->action, &out->a[0])) {
      out->a[0] = A(anyAction);
   }
   out->n = 1;
   if (c->flags & ASPEN_ENGINE_CMD_SAMPLES) {
      out->a[out->n++] = A(sampleStreamProcessor);
   }
   return out;
}
#undef A

/* ---- mongod's refusal message ------------------------------------------ */

/* A bounded text buffer: what does not fit is cut, and ends in "...". It
 * stays valid UTF-8: a cut never splits a character. */
typedef struct {
   char *s;
   size_t size, len;
   bool cut;
} text_t;

static void text_put(text_t *t, const char *fmt, ...)
   __attribute__((format(printf, 2, 3)));

static void
text_put(text_t *t, const char *fmt, ...)
{
   if (t->cut) {
      return;
   }
   va_list ap;
   va_start(ap, fmt);
   int n = vsnprintf(t->s + t->len, t->size - t->len, fmt, ap);
   va_end(ap);
   if (n >= 0 && (size_t) n < t->size - t->len) {
      t->len += (size_t) n;
      return;
   }
   /* Full: end with "..." at a character boundary. */
   t->cut = true;
   size_t end = t->size > 4 ? t->size - 4 : 0;
   while (end > 0 && ((unsigned char) t->s[end] & 0xC0) == 0x80) {
      end--;
   }
   snprintf(t->s + end, t->size - end, "...");
   t->len = strlen(t->s);
}

/* Text from the client: UTF-8 as it is when it is valid UTF-8, escaped
 * otherwise, control characters (and, `quoted`, '"' and '\\') escaped. */
static void
text_bytes(text_t *t, const char *v, size_t len, bool quoted)
{
   bool utf8 = bson_utf8_validate(v, len, false);
   for (size_t i = 0; i < len && !t->cut; i++) {
      unsigned char c = (unsigned char) v[i];
      if (quoted && (c == '"' || c == '\\')) {
         text_put(t, "\\%c", c);
      } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8)) {
         text_put(t, "\\x%02x", c);
      } else {
         text_put(t, "%c", c);
      }
   }
}

static void
text_string(text_t *t, const char *v, uint32_t len)
{
   text_put(t, "\"");
   text_bytes(t, v, len, true);
   text_put(t, "\"");
}

static void text_doc(text_t *t, bson_iter_t *it, bool array, int depth);

/* One value as mongod's BSONObj::toString writes it. */
static void
text_value(text_t *t, bson_iter_t *it, int depth)
{
   bson_iter_t sub;
   uint32_t len;
   switch (bson_iter_type(it)) {
   case BSON_TYPE_DOUBLE: {
      double d = bson_iter_double(it);
      char num[64];
      snprintf(num, sizeof num, "%.16g", d);
      text_put(t, "%s%s", num, strpbrk(num, ".eEn") ? "" : ".0");
      break;
   }
   case BSON_TYPE_UTF8: {
      const char *v = bson_iter_utf8(it, &len);
      text_string(t, v, len);
      break;
   }
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      if (bson_iter_recurse(it, &sub)) {
         text_doc(t, &sub, BSON_ITER_HOLDS_ARRAY(it), depth + 1);
      }
      break;
   case BSON_TYPE_BINARY: {
      bson_subtype_t st;
      const uint8_t *b;
      bson_iter_binary(it, &st, &len, &b);
      if ((st == BSON_SUBTYPE_UUID || st == BSON_SUBTYPE_UUID_DEPRECATED) &&
          len == 16) {
         text_put(t,
                  "UUID(\"%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                  "%02x%02x%02x%02x%02x%02x\")",
                  b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
                  b[10], b[11], b[12], b[13], b[14], b[15]);
      } else {
         text_put(t, "BinData(%d, ", (int) st);
         for (uint32_t i = 0; i < len && !t->cut; i++) {
            text_put(t, "%02X", b[i]);
         }
         text_put(t, ")");
      }
      break;
   }
   case BSON_TYPE_OID: {
      char hex[25];
      bson_oid_to_string(bson_iter_oid(it), hex);
      text_put(t, "ObjectId('%s')", hex);
      break;
   }
   case BSON_TYPE_BOOL:
      text_put(t, "%s", bson_iter_bool(it) ? "true" : "false");
      break;
   case BSON_TYPE_DATE_TIME:
      text_put(t, "new Date(%" PRId64 ")", bson_iter_date_time(it));
      break;
   case BSON_TYPE_NULL:
      text_put(t, "null");
      break;
   case BSON_TYPE_UNDEFINED:
      text_put(t, "undefined");
      break;
   case BSON_TYPE_INT32:
      text_put(t, "%" PRId32, bson_iter_int32(it));
      break;
   case BSON_TYPE_INT64:
      text_put(t, "%" PRId64, bson_iter_int64(it));
      break;
   case BSON_TYPE_TIMESTAMP: {
      uint32_t ts, inc;
      bson_iter_timestamp(it, &ts, &inc);
      text_put(t, "Timestamp(%" PRIu32 ", %" PRIu32 ")", ts, inc);
      break;
   }
   case BSON_TYPE_REGEX: {
      const char *opts;
      const char *re = bson_iter_regex(it, &opts);
      text_put(t, "/");
      text_bytes(t, re, strlen(re), false);
      text_put(t, "/");
      text_bytes(t, opts, strlen(opts), false);
      break;
   }
   case BSON_TYPE_DECIMAL128: {
      bson_decimal128_t dec;
      char str[BSON_DECIMAL128_STRING];
      bson_iter_decimal128(it, &dec);
      bson_decimal128_to_string(&dec, str);
      text_put(t, "%s", str);
      break;
   }
   case BSON_TYPE_MINKEY:
      text_put(t, "MinKey");
      break;
   case BSON_TYPE_MAXKEY:
      text_put(t, "MaxKey");
      break;
   default:
      text_put(t, "?");
      break;
   }
}

static void
text_doc(text_t *t, bson_iter_t *it, bool array, int depth)
{
   bool any = false;
   text_put(t, "%s", array ? "[" : "{");
   while (!t->cut && bson_iter_next(it)) {
      text_put(t, "%s", any ? ", " : " ");
      any = true;
      if (!array) {
         text_bytes(t, bson_iter_key(it), bson_iter_key_len(it), false);
         text_put(t, ": ");
      }
      if (depth > 100) {
         text_put(t, "...");
      } else if (depth == 0 && strcmp(bson_iter_key(it), "pwd") == 0) {
         text_put(t, "\"xxx\""); /* mongod's snip of passwords */
      } else {
         text_value(t, it, depth);
      }
   }
   text_put(t, "%s", any ? (array ? " ]" : " }") : (array ? "]" : "}"));
}

/* mongod's refusal of a command: "not authorized on <db> to execute
 * command { ... }" (the command as BSONObj::toString writes it, cut to
 * fit the message). */
void
aspen__auth_refuse_command(const bson_t *cmd, const char *db,
                           aspen_error_t *err)
{
   char msg[ASPEN_ERROR_MSG_MAX];
   text_t t = {msg, sizeof msg, 0, false};
   bson_iter_t it;
   text_put(&t, "not authorized on ");
   text_bytes(&t, db, strlen(db), false);
   text_put(&t, " to execute command ");
   if (bson_iter_init(&it, cmd)) {
      text_doc(&t, &it, false, 0);
   }
   aspen_error_set(err, ASPEN_ERR_Unauthorized, "%s", msg);
}

bool
aspen_principal_may_run(const aspen_principal_t *p, const char *name,
                        const bson_t *cmd, const char *db, bool forwarded,
                        aspen_error_t *err, char *why, size_t why_len)
{
   bson_iter_t it;
   authz_t az = {.p = p};
   if (why && why_len) {
      why[0] = '\0';
   }
   if (strcmp(name, "explain") == 0 && bson_iter_init(&it, cmd) &&
       bson_iter_next(&it) && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      /* explain needs what the explained command needs. */
      bson_t inner;
      bson_iter_t k;
      if (aspen_bson_view(&it, &inner) && bson_iter_init(&k, &inner) &&
          bson_iter_next(&k) && strcmp(bson_iter_key(&k), "explain") != 0) {
         if (aspen_principal_may_run(p, bson_iter_key(&k), &inner, db,
                                     forwarded, err, why, why_len)) {
            return true;
         }
         if (err->code == ASPEN_ERR_Unauthorized) {
            /* The command sent was the explain. */
            aspen__auth_refuse_command(cmd, db, err);
         }
         return false;
      }
   }
   need_t sp;
   const need_t *need_row = sp_need(name, &sp);
   for (size_t i = 0; !need_row && i < sizeof needs / sizeof needs[0]; i++) {
      if (strcmp(needs[i].name, name) == 0) {
         need_row = &needs[i];
         break;
      }
   }
   bool ok = true;
   if (!need_row) {
      /* aspen's own informational commands need only a login; a forwarded
       * command aspen has no mapping for needs everything. */
      ok = !forwarded || need_everything(&az);
   } else {
      const char *coll = need_row->scope == 'C' ? cmd_collection(cmd) : NULL;
      for (int i = 0; ok && i < need_row->n; i++) {
         aspen_action_t a = need_row->a[i];
         switch (need_row->scope) {
         case 'X':
            ok = need(&az, a, RES_CLUSTER, NULL, NULL);
            break;
         case 'S':
            ok = need(&az, a, RES_ANY, NULL, NULL);
            break;
         default:
            ok = need(&az, a, RES_NS, db, coll);
            break;
         }
      }
      if (ok && need_row->extra) {
         ok = need_row->extra(&az, cmd, db, coll);
      }
   }
   if (ok) {
      return true;
   }
   if (why && why_len) {
      snprintf(why, why_len, "%s", az.missing);
   }
   if (need_row && need_row->scope == 'S') {
      /* ASP's message for its own commands. */
      aspen_error_set(err, ASPEN_ERR_Unauthorized, "not authorized: %s",
                      az.missing);
   } else {
      aspen__auth_refuse_command(cmd, db, err);
   }
   return false;
}

/* ---- the engine's connection roles (dbRoleToExecute) -------------------- */

static void *
engine_grant_new(void *arg, const char *role, bool custom, aspen_error_t *err)
{
   return aspen_users_role_principal_new(arg, role, custom, err);
}

static bool
engine_allows(const void *grant, unsigned acts, const char *db,
              const char *coll, const char **missing)
{
   static const struct {
      unsigned bit;
      aspen_action_t a;
   } map[] = {
      {ASPEN_ENGINE_ACT_FIND, ASPEN_ACTION_find},
      {ASPEN_ENGINE_ACT_CHANGE_STREAM, ASPEN_ACTION_changeStream},
      {ASPEN_ENGINE_ACT_INSERT, ASPEN_ACTION_insert},
      {ASPEN_ENGINE_ACT_UPDATE, ASPEN_ACTION_update},
      {ASPEN_ENGINE_ACT_REMOVE, ASPEN_ACTION_remove},
      {ASPEN_ENGINE_ACT_CREATE_COLLECTION, ASPEN_ACTION_createCollection},
   };
   authz_t az = {.p = grant};
   for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
      if ((acts & map[i].bit) && !need(&az, map[i].a, RES_NS, db, coll)) {
         *missing = aspen_action_name(map[i].a);
         return false;
      }
   }
   *missing = NULL;
   return true;
}

static bool
engine_allows_stages(const void *grant, const char *db, const bson_t *pipeline,
                     char *why, size_t why_len)
{
   authz_t az = {.p = grant};
   if (check_stage_list(&az, pipeline, db, false, 0)) {
      return true;
   }
   snprintf(why, why_len, "%s", az.missing_short);
   return false;
}

static void
engine_grant_destroy(void *grant)
{
   aspen_principal_destroy(grant);
}

void
aspen_users_engine_authz(aspen_users_t *users, aspen_engine_authz_t *out)
{
   out->grant_new = engine_grant_new;
   out->allows = engine_allows;
   out->allows_stages = engine_allows_stages;
   out->grant_destroy = engine_grant_destroy;
   out->arg = users;
}

/* ---- aspen --add-user ------------------------------------------------------- */

/* Creates the folder of `path` and its parents (mode 0700). */
static bool
mkdir_parents(const char *path, aspen_error_t *err)
{
   char dir[4096];
   snprintf(dir, sizeof dir, "%s", path);
   const char *d = dirname(dir);
   if (!aspen_file_mkdirs(d)) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot create %s: %s", d,
                      strerror(errno));
      return false;
   }
   return true;
}

static void
append_cred(bson_t *creds, aspen_scram_mech_t mech,
            const aspen_scram_cred_t *cred)
{
   char b64[128];
   size_t hl = aspen_scram_hash_len(mech);
   bson_t doc;
   BSON_APPEND_DOCUMENT_BEGIN(creds, aspen_scram_mech_name(mech), &doc);
   BSON_APPEND_INT32(&doc, "iterationCount", cred->iterations);
   aspen_scram_b64_encode(cred->salt, cred->salt_len, b64, sizeof b64);
   BSON_APPEND_UTF8(&doc, "salt", b64);
   aspen_scram_b64_encode(cred->stored_key, hl, b64, sizeof b64);
   BSON_APPEND_UTF8(&doc, "storedKey", b64);
   aspen_scram_b64_encode(cred->server_key, hl, b64, sizeof b64);
   BSON_APPEND_UTF8(&doc, "serverKey", b64);
   bson_append_document_end(creds, &doc);
}

/* Builds the user document for --add-user: in "admin" with SCRAM keys, or
 * (password NULL) in "$external" with no credentials at all, for a
 * MONGODB-X509 user whose name is its certificate subject. */
static bool
make_user_doc(const aspen_users_t *users, const char *name,
              const char *password, const char *roles, bson_t *doc,
              aspen_error_t *err)
{
   bson_t arr, creds;
   BSON_APPEND_UTF8(doc, "user", name);
   BSON_APPEND_UTF8(doc, "db", password ? "admin" : ASPEN_EXTERNAL_DB);
   BSON_APPEND_ARRAY_BEGIN(doc, "roles", &arr);
   char list[4096];
   snprintf(list, sizeof list, "%s", roles);
   uint32_t n = 0;
   const char *key;
   char *save = NULL;
   for (char *r = strtok_r(list, ",", &save); r; r = strtok_r(NULL, ",", &save)) {
      while (*r == ' ') {
         r++;
      }
      char *at = strchr(r, '@');
      const char *rdb = "admin";
      if (at) {
         *at = '\0';
         rdb = at + 1;
      }
      if (!*r) {
         continue;
      }
      if (!role_exists(users, r)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "unknown role '%s' (built-in: atlasAdmin, "
                         "readWriteAnyDatabase, readAnyDatabase, "
                         "streamProcessingOwner, readWrite@DB, read@DB; or a "
                         "security.roles name)",
                         r);
         bson_append_array_end(doc, &arr);
         return false;
      }
      char buf[16];
      bson_t ref;
      key = index_key(n++, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, key, &ref);
      BSON_APPEND_UTF8(&ref, "role", r);
      BSON_APPEND_UTF8(&ref, "db", rdb);
      bson_append_document_end(&arr, &ref);
   }
   bson_append_array_end(doc, &arr);
   if (n == 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "--roles needs at least one role");
      return false;
   }
   if (!password) {
      return true; /* $external: the TLS layer proves who the user is */
   }
   BSON_APPEND_DOCUMENT_BEGIN(doc, "credentials", &creds);
   for (int m = 0; m < ASPEN_SCRAM_N_MECHS; m++) {
      aspen_scram_cred_t cred;
      if (!aspen_scram_cred_make((aspen_scram_mech_t) m, name, password, 0,
                                 &cred, err)) {
         bson_append_document_end(doc, &creds);
         return false;
      }
      append_cred(&creds, (aspen_scram_mech_t) m, &cred);
   }
   bson_append_document_end(doc, &creds);
   return true;
}

/* Opens "<path>.lock" (created 0600) and waits for an exclusive flock on
 * it: --add-user runs take it around their read-modify-write of the users
 * file. (aspen itself only reads the file, which is always replaced by a
 * rename, so it never needs the lock.) Returns the descriptor, or -1 with
 * err set. */
static int
lock_users_file(const char *path, aspen_error_t *err)
{
   char lock[4200];
   snprintf(lock, sizeof lock, "%s.lock", path);
   int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
   if (fd < 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot open %s: %s", lock,
                      strerror(errno));
      return -1;
   }
   while (flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
         aspen_error_set(err, ASPEN_ERR_BadValue, "cannot lock %s: %s", lock,
                         strerror(errno));
         close(fd);
         return -1;
      }
   }
   return fd;
}

/* Releases lock_users_file's lock; -1 is a no-op. */
static void
unlock_users_file(int fd)
{
   if (fd >= 0) {
      close(fd); /* closing the descriptor releases the flock */
   }
}

static bool
add_user(const aspen_config_t *cfg, const char *name, const char *password,
         const char *roles, bool *replaced, char *path_out, size_t path_size,
         aspen_error_t *err)
{
   *replaced = false;
   size_t nlen = strlen(name);
   if (nlen == 0 || nlen >= MAX_NAME) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "user name must be 1 to %d bytes", MAX_NAME - 1);
      return false;
   }
   for (size_t i = 0; i < nlen; i++) {
      if ((unsigned char) name[i] < 0x20 || name[i] == 0x7f) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "user name has a control character");
         return false;
      }
   }
   if (!bson_utf8_validate(name, nlen, false)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "user name must be valid UTF-8");
      return false;
   }
   if (password && !*password) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "password must not be empty");
      return false;
   }
   const char *db = password ? "admin" : ASPEN_EXTERNAL_DB;
   aspen_users_t *users = users_new_roles(cfg, err);
   if (!users) {
      return false;
   }
   snprintf(path_out, path_size, "%s", users->path);
   bson_t user = BSON_INITIALIZER, old, out = BSON_INITIALIZER, arr;
   /* The keys are derived (slow on purpose) before taking the lock; from
    * reading the file to renaming the new one over it, other --add-user
    * runs wait, so none of their users is lost. */
   int lock_fd = -1;
   bool missing = false,
        ok = make_user_doc(users, name, password, roles, &user, err) &&
             mkdir_parents(users->path, err) &&
             (lock_fd = lock_users_file(users->path, err)) >= 0;
   if (ok) {
      ok = read_file(users->path, &old, &missing, err);
   } else {
      bson_init(&old);
   }
   if (!ok) {
      unlock_users_file(lock_fd);
      bson_destroy(&old);
      bson_destroy(&user);
      aspen_users_destroy(users);
      return false;
   }
   /* Keep every other user; replace this one (same name and database) in
    * place. A user without "db" is in admin. */
   BSON_APPEND_ARRAY_BEGIN(&out, "users", &arr);
   bson_iter_t it, u;
   uint32_t n = 0;
   char buf[16];
   const char *key;
   if (bson_iter_init_find(&it, &old, "users") && BSON_ITER_HOLDS_ARRAY(&it) &&
       bson_iter_recurse(&it, &u)) {
      while (bson_iter_next(&u)) {
         bson_iter_t f, g;
         bool same = false;
         if (BSON_ITER_HOLDS_DOCUMENT(&u) && bson_iter_recurse(&u, &f) &&
             bson_iter_recurse(&u, &g) && bson_iter_find(&f, "user") &&
             BSON_ITER_HOLDS_UTF8(&f)) {
            const char *udb = "admin";
            if (bson_iter_find(&g, "db") && BSON_ITER_HOLDS_UTF8(&g)) {
               udb = bson_iter_utf8(&g, NULL);
            }
            same = strcmp(bson_iter_utf8(&f, NULL), name) == 0 &&
                   strcmp(udb, db) == 0;
         }
         if (same) {
            *replaced = true;
            key = index_key(n++, buf, sizeof buf);
            BSON_APPEND_DOCUMENT(&arr, key, &user);
         } else {
            key = index_key(n++, buf, sizeof buf);
            bson_append_value(&arr, key, -1,
                              bson_iter_value(&u));
         }
      }
   }
   if (!*replaced) {
      key = index_key(n++, buf, sizeof buf);
      BSON_APPEND_DOCUMENT(&arr, key, &user);
   }
   bson_append_array_end(&out, &arr);
   size_t len = 0;
   char *json = bson_as_relaxed_extended_json(&out, &len);
   if (!json) {
      /* A string in another user's entry is not UTF-8 (a hand-edited
       * file): never replace the file with a failed encoding. */
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "users file %s holds a string that is not valid "
                      "UTF-8; it was left unchanged",
                      users->path);
      ok = false;
   } else {
      /* The temp file is per process: the lock aside, two runs never
       * write into one. */
      char *text = aspen_xmalloc(len + 2);
      snprintf(text, len + 2, "%s\n", json);
      ok = aspen_file_write_atomic(users->path, text, len + 1, 0600,
                                   ASPEN_FILE_TMP_PER_PROCESS, err);
      free(text);
   }
   unlock_users_file(lock_fd);
   bson_free(json);
   bson_destroy(&out);
   bson_destroy(&old);
   bson_destroy(&user);
   aspen_users_destroy(users);
   return ok;
}

int
aspen_users_cli_add(const aspen_config_t *cfg, const char *name,
                    const char *password, const char *roles)
{
   const bool external = password == NULL;
   aspen_error_t err;
   bool replaced;
   char path[4096] = "";
   char line[1024];
   if (password && strcmp(password, "-") == 0) {
      /* Read the password from stdin, so it stays out of `ps`. */
      if (!fgets(line, sizeof line, stdin)) {
         fprintf(stderr, "aspen: --password -: nothing on stdin\n");
         return 2;
      }
      line[strcspn(line, "\r\n")] = '\0';
      password = line;
   }
   bool ok = add_user(cfg, name, password, roles, &replaced, path, sizeof path,
                      &err);
   OPENSSL_cleanse(line, sizeof line);
   if (!ok) {
      fprintf(stderr, "aspen: --add-user %s: %s\n", name, err.message);
      return 2;
   }
   printf("aspen: %s user \"%s\"%s (roles %s) in %s\n",
          replaced ? "updated" : "added", name,
          external ? " in $external (MONGODB-X509)" : "", roles, path);
   return 0;
}
