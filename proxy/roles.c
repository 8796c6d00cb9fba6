/*
 * roles.c - what a role grants (see roles.h): the built-in roles (atlasAdmin
 * everything; readWriteAnyDatabase every stream action, read and write on
 * every database; readAnyDatabase the read-only stream actions and read on
 * every database; streamProcessingOwner every stream action, no database
 * access; clusterMonitor serverStatus, getCmdLineOpts, getLog,
 * getParameter, hostInfo, listDatabases and the like; the per-database
 * read and readWrite) and the custom roles of the config's security.roles:
 *
 *   [ { "role": "spRunner", "actions": ["processStreamProcessor", ...],
 *       "privileges": [ { "resource": { "db": "sales", "collection": "" },
 *                         "actions": ["find"] },
 *                       { "resource": { "cluster": true },
 *                         "actions": ["serverStatus"] } ],
 *       "roles": ["readAnyDatabase"] } ]
 *
 * "actions" apply to every resource; "roles" inherits built-in roles. A
 * privilege's resource is matched as mongod matches it (principal.c):
 * {db, collection} with "" for any database or collection, {cluster:
 * true}, {anyResource: true}.
 */
#include "roles.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAME ASPEN_ROLES_MAX_NAME
#define BIT(a) ASPEN_ACTION_BIT(a)

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

typedef struct {
   char *name;
   aspen_privs_t privs;
} role_t;

struct aspen_roles {
   role_t *v;
   size_t n;
};

#define CLUSTER_MONITOR                                                        \
   (BIT(listDatabases) | BIT(serverStatus) | BIT(getCmdLineOpts) |             \
    BIT(getLog) | BIT(getParameter) | BIT(hostInfo) | BIT(inprog) |            \
    BIT(listSessions))

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

void
aspen__roles_add_priv(aspen_privs_t *privs, aspen_res_kind_t kind,
                      const char *db, const char *coll, uint64_t mask)
{
   if (!mask) {
      return;
   }
   db = kind == ASPEN_RES_NS ? db : "";
   coll = kind == ASPEN_RES_NS ? coll : "";
   for (size_t i = 0; i < privs->n; i++) {
      aspen_priv_t *pv = &privs->v[i];
      if (pv->kind == kind && strcmp(pv->db, db) == 0 &&
          strcmp(pv->coll, coll) == 0) {
         pv->mask |= mask;
         return;
      }
   }
   privs->v = aspen_xrealloc(privs->v, (privs->n + 1) * sizeof *privs->v);
   aspen_priv_t *pv = &privs->v[privs->n];
   pv->kind = kind;
   snprintf(pv->db, sizeof pv->db, "%s", db);
   snprintf(pv->coll, sizeof pv->coll, "%s", coll);
   pv->mask = mask;
   privs->n++;
}

/* Adds a built-in role's privileges (role_db: the database it was granted
 * on, for read/readWrite). */
static void
add_builtin(aspen_privs_t *privs, int b, const char *role_db)
{
   aspen__roles_add_priv(privs, ASPEN_RES_ANY, "", "",
                         builtins[b].any_resource);
   aspen__roles_add_priv(privs, ASPEN_RES_NS, "", "", builtins[b].any_ns);
   aspen__roles_add_priv(privs, ASPEN_RES_CLUSTER, "", "",
                         builtins[b].cluster);
   aspen__roles_add_priv(privs, ASPEN_RES_NS, role_db, "",
                         builtins[b].role_db);
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
parse_resource(bson_iter_t *it, const char *where, aspen_priv_t *pv,
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
   pv->kind = has_any       ? ASPEN_RES_ANY
              : has_cluster ? ASPEN_RES_CLUSTER
                            : ASPEN_RES_NS;
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
   aspen_priv_t pv;
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
      char kind = aspen__action_kind((aspen_action_t) a);
      if (!(pv.mask & (UINT64_C(1) << a)) || pv.kind == ASPEN_RES_ANY ||
          kind == 'S' || kind == 'A' ||
          (kind == 'C') == (pv.kind == ASPEN_RES_CLUSTER)) {
         continue;
      }
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "%s: action %s applies to %s, not to this resource",
                      where, aspen_action_name((aspen_action_t) a),
                      kind == 'C' ? "the cluster ({cluster: true})"
                                  : "databases and collections ({db, "
                                    "collection})");
      return false;
   }
   aspen__roles_add_priv(&role->privs, pv.kind, pv.db, pv.coll, pv.mask);
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
         aspen__roles_add_priv(&role->privs, ASPEN_RES_ANY, "", "", mask);
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
            add_builtin(&role->privs, b, "");
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


static const role_t *
find_custom(const aspen_roles_t *roles, const char *name)
{
   for (size_t i = 0; i < roles->n; i++) {
      if (strcmp(roles->v[i].name, name) == 0) {
         return &roles->v[i];
      }
   }
   return NULL;
}

aspen_roles_t *
aspen__roles_new(const bson_t *config_roles, aspen_error_t *err)
{
   aspen_roles_t *roles = aspen_xcalloc(1, sizeof *roles);
   bson_iter_t it;
   int idx = 0;
   if (bson_iter_init(&it, config_roles)) {
      while (bson_iter_next(&it)) {
         uint32_t len;
         const uint8_t *data;
         bson_t doc;
         role_t role;
         memset(&role, 0, sizeof role);
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "security.roles[%d] must be an object", idx);
            aspen__roles_destroy(roles);
            return NULL;
         }
         bson_iter_document(&it, &len, &data);
         if (!bson_init_static(&doc, data, len) ||
             !parse_custom_role(&doc, idx, &role, err)) {
            free(role.name);
            free(role.privs.v);
            aspen__roles_destroy(roles);
            return NULL;
         }
         if (find_custom(roles, role.name)) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "security.roles[%d]: role '%s' is defined twice",
                            idx, role.name);
            free(role.name);
            free(role.privs.v);
            aspen__roles_destroy(roles);
            return NULL;
         }
         roles->v =
            aspen_xrealloc(roles->v, (roles->n + 1) * sizeof *roles->v);
         roles->v[roles->n++] = role;
         idx++;
      }
   }
   return roles;
}

void
aspen__roles_destroy(aspen_roles_t *roles)
{
   if (!roles) {
      return;
   }
   for (size_t i = 0; i < roles->n; i++) {
      free(roles->v[i].name);
      free(roles->v[i].privs.v);
   }
   free(roles->v);
   free(roles);
}

bool
aspen__roles_exists(const aspen_roles_t *roles, const char *name)
{
   return find_builtin(name) >= 0 || find_custom(roles, name) != NULL;
}

bool
aspen__roles_grant(const aspen_roles_t *roles, const char *name,
                   const char *role_db, aspen_privs_t *privs)
{
   int b = find_builtin(name);
   if (b >= 0) {
      add_builtin(privs, b, role_db);
      return true;
   }
   const role_t *r = find_custom(roles, name);
   for (size_t j = 0; r && j < r->privs.n; j++) {
      const aspen_priv_t *pv = &r->privs.v[j];
      aspen__roles_add_priv(privs, pv->kind, pv->db, pv->coll, pv->mask);
   }
   return r != NULL;
}

bool
aspen__roles_parse_ref(const aspen_roles_t *roles, const char *role,
                       bool custom, aspen_role_ref_t *ref, aspen_error_t *err)
{
   char *name = ref->role;
   memset(ref, 0, sizeof *ref);
   if (strlen(role) >= sizeof ref->role) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "role name too long");
      return false;
   }
   snprintf(name, sizeof ref->role, "%s", role);
   if (custom) {
      if (!find_custom(roles, name)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "no custom role '%s' in security.roles", name);
         return false;
      }
      return true;
   }
   char *at = strchr(name, '@');
   if (at) {
      *at = '\0';
      snprintf(ref->db, sizeof ref->db, "%s", at + 1);
   }
   int b = find_builtin(name);
   if (b < 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "'%s' is not a built-in role (" BUILTIN_NAMES
                      "; a security.roles role has type CUSTOM)",
                      role);
      return false;
   }
   if (builtins[b].role_db ? !*ref->db : at != NULL) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      builtins[b].role_db
                         ? "built-in role '%s' is granted on one database: "
                           "write it %s@<db>"
                         : "built-in role '%s' covers every database: "
                           "write it without @<db> (%s)",
                      role, name);
      return false;
   }
   return true;
}
