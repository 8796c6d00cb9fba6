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
 * (every stream action, no database access), and the per-database read and
 * readWrite. Custom roles come from the config's security.roles:
 *
 *   [ { "role": "spRunner", "actions": ["processStreamProcessor", ...],
 *       "privileges": [ { "resource": { "db": "sales", "collection": "" },
 *                         "actions": ["find"] } ],
 *       "roles": ["readAnyDatabase"] } ]
 *
 * "actions" apply to every resource; "roles" inherits built-in roles.
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    BIT(dropDatabase) | BIT(renameCollectionSameDB))

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

typedef struct {
   char db[MAX_NAME]; /* "" = every database */
   uint64_t mask;
} priv_t;

typedef struct {
   char *name;
   priv_t *privs;
   size_t n_privs;
} role_t;

static const struct {
   const char *name;
   uint64_t any_db;  /* granted on every database and the workspace */
   uint64_t role_db; /* granted on the role's own database */
} builtins[] = {
   {"atlasAdmin", BIT(anyAction), 0},
   {"readWriteAnyDatabase", STREAM_ALL | DB_READ | DB_WRITE | BIT(listDatabases),
    0},
   {"readAnyDatabase", STREAM_READ | DB_READ | BIT(listDatabases), 0},
   {"streamProcessingOwner", STREAM_ALL, 0},
   {"readWrite", 0, DB_READ | DB_WRITE},
   {"read", 0, DB_READ},
};

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

static void
add_priv(priv_t **privs, size_t *n, const char *db, uint64_t mask)
{
   if (!mask) {
      return;
   }
   for (size_t i = 0; i < *n; i++) {
      if (strcmp((*privs)[i].db, db) == 0) {
         (*privs)[i].mask |= mask;
         return;
      }
   }
   *privs = aspen_xrealloc(*privs, (*n + 1) * sizeof **privs);
   snprintf((*privs)[*n].db, sizeof (*privs)[*n].db, "%s", db);
   (*privs)[*n].mask = mask;
   (*n)++;
}

/* Adds a built-in role's privileges (role_db: the database it was granted
 * on, for read/readWrite). */
static void
add_builtin(priv_t **privs, size_t *n, int b, const char *role_db)
{
   add_priv(privs, n, "", builtins[b].any_db);
   add_priv(privs, n, role_db, builtins[b].role_db);
}

/* Parses an array of action names into a mask. */
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

static bool
parse_custom_role(const bson_t *doc, int idx, role_t *role,
                  aspen_error_t *err)
{
   bson_iter_t it;
   char where[128];
   memset(role, 0, sizeof *role);
   snprintf(where, sizeof where, "security.roles[%d]", idx);
   if (!bson_iter_init(&it, doc)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse, "%s is invalid", where);
      return false;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      char sub[192];
      snprintf(sub, sizeof sub, "%s.%s", where, k);
      if (strcmp(k, "role") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
         free(role->name);
         role->name = aspen_xstrdup(bson_iter_utf8(&it, NULL));
      } else if (strcmp(k, "actions") == 0) {
         uint64_t mask = 0;
         if (!parse_actions(&it, sub, &mask, err)) {
            return false;
         }
         add_priv(&role->privs, &role->n_privs, "", mask);
      } else if (strcmp(k, "roles") == 0 && BSON_ITER_HOLDS_ARRAY(&it)) {
         bson_iter_t r;
         bson_iter_recurse(&it, &r);
         while (bson_iter_next(&r)) {
            int b = BSON_ITER_HOLDS_UTF8(&r)
                       ? find_builtin(bson_iter_utf8(&r, NULL))
                       : -1;
            if (b < 0 || builtins[b].role_db) {
               aspen_error_set(err, ASPEN_ERR_BadValue,
                               "%s: custom roles may inherit only the "
                               "any-database built-in roles (atlasAdmin, "
                               "readWriteAnyDatabase, readAnyDatabase, "
                               "streamProcessingOwner)",
                               sub);
               return false;
            }
            add_builtin(&role->privs, &role->n_privs, b, "");
         }
      } else if (strcmp(k, "privileges") == 0 && BSON_ITER_HOLDS_ARRAY(&it)) {
         bson_iter_t p;
         bson_iter_recurse(&it, &p);
         while (bson_iter_next(&p)) {
            bson_iter_t f;
            const char *db = "";
            uint64_t mask = 0;
            if (!BSON_ITER_HOLDS_DOCUMENT(&p) || !bson_iter_recurse(&p, &f)) {
               aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                               "%s entries must be objects", sub);
               return false;
            }
            while (bson_iter_next(&f)) {
               if (strcmp(bson_iter_key(&f), "actions") == 0) {
                  if (!parse_actions(&f, sub, &mask, err)) {
                     return false;
                  }
               } else if (strcmp(bson_iter_key(&f), "resource") == 0 &&
                          BSON_ITER_HOLDS_DOCUMENT(&f)) {
                  bson_iter_t rdb;
                  if (bson_iter_recurse(&f, &rdb) &&
                      bson_iter_find(&rdb, "db") &&
                      BSON_ITER_HOLDS_UTF8(&rdb)) {
                     db = bson_iter_utf8(&rdb, NULL);
                  }
               }
            }
            add_priv(&role->privs, &role->n_privs, db, mask);
         }
      } else {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "unknown or mistyped config key '%s' (a role has "
                         "role, actions, privileges, roles)",
                         sub);
         return false;
      }
   }
   if (!role->name || !*role->name) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "%s needs a \"role\" name",
                      where);
      return false;
   }
   if (find_builtin(role->name) >= 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "%s: '%s' is a built-in role name", where, role->name);
      return false;
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
   bson_error_t berr;
   bson_destroy(doc);
   bool ok = aspen_buf_len(&buf) > 0 &&
             bson_init_from_json(doc, (const char *) aspen_buf_data(&buf),
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
                    st.st_ino == users->st.st_ino))) {
      return;
   }
   user_t *list;
   size_t n;
   aspen_error_t err;
   users->st_valid = exists;
   if (exists) {
      users->st = st;
   }
   if (!load_users(users, &list, &n, &err)) {
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, "users",
                 "users file changed but cannot be read; keeping the %zu "
                 "users loaded before: %s",
                 users->n_users, err.message);
      return;
   }
   aspen_logf(ASPEN_LOG_INFO, COMPONENT, "users",
              "users file %s reloaded: %zu users (was %zu)", users->path, n,
              users->n_users);
   free(users->users);
   users->users = list;
   users->n_users = n;
}

bool
aspen_users_auth_required(const aspen_users_t *users)
{
   if (users->mode_disabled) {
      return false;
   }
   return users->mode_enabled || users->n_users > 0;
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
   role_ref_t roles[MAX_ROLES];
   size_t n_roles;
   priv_t *privs;
   size_t n_privs;
};

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
   memcpy(p->roles, u->roles, sizeof p->roles);
   p->n_roles = u->n_roles;
   for (size_t i = 0; i < u->n_roles; i++) {
      int b = find_builtin(u->roles[i].role);
      if (b >= 0) {
         add_builtin(&p->privs, &p->n_privs, b, u->roles[i].db);
         continue;
      }
      const role_t *r = find_custom(users, u->roles[i].role);
      for (size_t j = 0; r && j < r->n_privs; j++) {
         add_priv(&p->privs, &p->n_privs, r->privs[j].db, r->privs[j].mask);
      }
   }
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
      char buf[16];
      const char *key;
      bson_t doc, res, acts;
      key = index_key(k++, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(arr, key, &doc);
      BSON_APPEND_DOCUMENT_BEGIN(&doc, "resource", &res);
      if (p->privs[i].mask & BIT(anyAction)) {
         BSON_APPEND_BOOL(&res, "anyResource", true);
      } else {
         BSON_APPEND_UTF8(&res, "db", p->privs[i].db);
         BSON_APPEND_UTF8(&res, "collection", "");
      }
      bson_append_document_end(&doc, &res);
      BSON_APPEND_ARRAY_BEGIN(&doc, "actions", &acts);
      uint32_t n = 0;
      for (int a = 0; a < ASPEN_N_ACTIONS; a++) {
         if (p->privs[i].mask & (UINT64_C(1) << a)) {
            key = index_key(n++, buf, sizeof buf);
            BSON_APPEND_UTF8(&acts, key,
                             actions[a].name);
         }
      }
      bson_append_array_end(&doc, &acts);
      bson_append_document_end(arr, &doc);
   }
}

/* ---- what each command needs -------------------------------------------- */

/* Scope of a command's resource: S the stream-processing workspace, C the
 * collection named by the command's value (or the database, when the value
 * is not a string), D the database, X the cluster, N nothing beyond an
 * authenticated session. */
typedef struct {
   const char *name;
   char scope;
   aspen_action_t a[3];
   int n;
} need_t;

#define A(x) ASPEN_ACTION_##x
static const need_t needs[] = {
   /* ASP's stream commands (spec §9.1). */
   {"createStreamProcessor", 'S', {A(createStreamProcessor)}, 1},
   {"processStreamProcessor", 'S',
    {A(processStreamProcessor), A(sampleStreamProcessor)}, 2},
   {"startStreamProcessor", 'S', {A(startStreamProcessor)}, 1},
   {"stopStreamProcessor", 'S', {A(stopStreamProcessor)}, 1},
   {"dropStreamProcessor", 'S', {A(dropStreamProcessor)}, 1},
   {"modifyStreamProcessor", 'S', {A(modifyStreamProcessor)}, 1},
   {"getStreamProcessorStats", 'S', {A(streamProcessorStats)}, 1},
   {"startSampleStreamProcessor", 'S', {A(sampleStreamProcessor)}, 1},
   {"getMoreSampleStreamProcessor", 'S', {A(sampleStreamProcessor)}, 1},
   {"listStreamProcessors", 'S', {A(listStreamProcessors)}, 1},
   {"listStreamConnections", 'S', {A(listStreamConnections)}, 1},
   {"getStreamProcessor", 'S', {A(getStreamProcessor)}, 1},
   /* Forwarded CRUD and catalog commands. */
   {"find", 'C', {A(find)}, 1},
   {"count", 'C', {A(find)}, 1},
   {"distinct", 'C', {A(find)}, 1},
   {"aggregate", 'C', {A(find)}, 1}, /* + $out/$merge/$changeStream */
   {"getMore", 'C', {A(find)}, 1},
   {"killCursors", 'C', {A(killCursors)}, 1},
   {"insert", 'C', {A(insert)}, 1},
   {"update", 'C', {A(update)}, 1},
   {"delete", 'C', {A(remove)}, 1},
   {"findAndModify", 'C', {A(find), A(update)}, 2},
   {"findandmodify", 'C', {A(find), A(update)}, 2},
   {"create", 'C', {A(createCollection)}, 1},
   {"drop", 'C', {A(dropCollection)}, 1},
   {"createIndexes", 'C', {A(createIndex)}, 1},
   {"dropIndexes", 'C', {A(dropIndex)}, 1},
   {"deleteIndexes", 'C', {A(dropIndex)}, 1},
   {"listIndexes", 'C', {A(listIndexes)}, 1},
   {"collStats", 'C', {A(collStats)}, 1},
   {"dbStats", 'D', {A(dbStats)}, 1},
   {"listCollections", 'D', {A(listCollections)}, 1},
   {"dropDatabase", 'D', {A(dropDatabase)}, 1},
   {"renameCollection", 'D', {A(renameCollectionSameDB)}, 1},
   {"listDatabases", 'X', {A(listDatabases)}, 1},
   /* Commands mongod runs for any authenticated user. */
   {"commitTransaction", 'N', {A(anyAction)}, 0},
   {"abortTransaction", 'N', {A(anyAction)}, 0},
   {"startSession", 'N', {A(anyAction)}, 0},
   {"getLastError", 'N', {A(anyAction)}, 0},
   {"resetError", 'N', {A(anyAction)}, 0},
   {"listCommands", 'N', {A(anyAction)}, 0},
};
#undef A

static bool
allows(const aspen_principal_t *p, aspen_action_t a, const char *db)
{
   if (!p) {
      return false;
   }
   uint64_t bit = UINT64_C(1) << a;
   for (size_t i = 0; i < p->n_privs; i++) {
      const priv_t *pv = &p->privs[i];
      if (pv->mask & BIT(anyAction)) {
         return true;
      }
      if (!(pv->mask & bit)) {
         continue;
      }
      switch (actions[a].kind) {
      case 'S':
         return true; /* actions apply to the whole workspace */
      case 'D':
         if (!pv->db[0] || strcmp(pv->db, db) == 0) {
            return true;
         }
         break;
      default: /* cluster-wide: only privileges on every database */
         if (!pv->db[0]) {
            return true;
         }
         break;
      }
   }
   return false;
}

static bool
refuse(aspen_action_t a, const char *resource, aspen_error_t *err)
{
   aspen_error_set(err, ASPEN_ERR_Unauthorized,
                   "not authorized: missing privilege for action %s on "
                   "resource %s",
                   aspen_action_name(a), resource);
   return false;
}

/* True when an aggregate pipeline has a stage named `stage`. */
static bool
pipeline_has(const bson_t *cmd, const char *stage)
{
   bson_iter_t it, st, k;
   if (!bson_iter_init_find(&it, cmd, "pipeline") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &st)) {
      return false;
   }
   while (bson_iter_next(&st)) {
      if (BSON_ITER_HOLDS_DOCUMENT(&st) && bson_iter_recurse(&st, &k) &&
          bson_iter_next(&k) && strcmp(bson_iter_key(&k), stage) == 0) {
         return true;
      }
   }
   return false;
}

bool
aspen_principal_may_run(const aspen_principal_t *p, const char *name,
                        const bson_t *cmd, const char *db, bool forwarded,
                        aspen_error_t *err)
{
   bson_iter_t it;
   if (strcmp(name, "explain") == 0 && bson_iter_init(&it, cmd) &&
       bson_iter_next(&it) && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      /* explain needs what the explained command needs. */
      uint32_t len;
      const uint8_t *data;
      bson_t inner;
      bson_iter_t k;
      bson_iter_document(&it, &len, &data);
      if (bson_init_static(&inner, data, len) && bson_iter_init(&k, &inner) &&
          bson_iter_next(&k) && strcmp(bson_iter_key(&k), "explain") != 0) {
         return aspen_principal_may_run(p, bson_iter_key(&k), &inner, db,
                                        forwarded, err);
      }
   }
   const need_t *need = NULL;
   for (size_t i = 0; i < sizeof needs / sizeof needs[0]; i++) {
      if (strcmp(needs[i].name, name) == 0) {
         need = &needs[i];
         break;
      }
   }
   if (!need) {
      if (!forwarded) {
         return true; /* aspen's own informational commands */
      }
      if (allows(p, ASPEN_ACTION_anyAction, db)) {
         return true;
      }
      return refuse(ASPEN_ACTION_anyAction, "<all resources>", err);
   }
   if (need->scope == 'N') {
      return true;
   }
   char resource[2 * MAX_NAME + 32];
   const char *coll = NULL;
   if (need->scope == 'C' && bson_iter_init(&it, cmd) && bson_iter_next(&it) &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      coll = bson_iter_utf8(&it, NULL);
   }
   if (strcmp(name, "getMore") == 0 && bson_iter_init_find(&it, cmd,
                                                           "collection") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      coll = bson_iter_utf8(&it, NULL);
   }
   switch (need->scope) {
   case 'S':
      snprintf(resource, sizeof resource, "<stream processing workspace>");
      break;
   case 'X':
      snprintf(resource, sizeof resource, "<system resource>");
      break;
   default:
      if (coll) {
         snprintf(resource, sizeof resource, "<%s.%s>", db, coll);
      } else {
         snprintf(resource, sizeof resource, "<database %s>", db);
      }
      break;
   }
   for (int i = 0; i < need->n; i++) {
      if (!allows(p, need->a[i], db)) {
         return refuse(need->a[i], resource, err);
      }
   }
   /* Writes hidden inside read commands. */
   if (strcmp(name, "aggregate") == 0) {
      if ((pipeline_has(cmd, "$out") || pipeline_has(cmd, "$merge"))) {
         if (!allows(p, ASPEN_ACTION_insert, db)) {
            return refuse(ASPEN_ACTION_insert, resource, err);
         }
         if (!allows(p, ASPEN_ACTION_remove, db)) {
            return refuse(ASPEN_ACTION_remove, resource, err);
         }
      }
      if (pipeline_has(cmd, "$changeStream") &&
          !allows(p, ASPEN_ACTION_changeStream, db)) {
         return refuse(ASPEN_ACTION_changeStream, resource, err);
      }
   }
   if ((strcmp(name, "findAndModify") == 0 ||
        strcmp(name, "findandmodify") == 0) &&
       bson_iter_init_find(&it, cmd, "remove") && bson_iter_as_bool(&it) &&
       !allows(p, ASPEN_ACTION_remove, db)) {
      return refuse(ASPEN_ACTION_remove, resource, err);
   }
   return true;
}

/* ---- aspen --add-user ------------------------------------------------------- */

static bool
write_atomically(const char *path, const char *text, aspen_error_t *err)
{
   char tmp[4200];
   snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int) getpid());
   int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
   if (fd < 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot create %s: %s", tmp,
                      strerror(errno));
      return false;
   }
   size_t len = strlen(text), off = 0;
   while (off < len) {
      ssize_t n = write(fd, text + off, len - off);
      if (n < 0 && errno == EINTR) {
         continue;
      }
      if (n <= 0) {
         aspen_error_set(err, ASPEN_ERR_BadValue, "cannot write %s: %s", tmp,
                         strerror(errno));
         close(fd);
         unlink(tmp);
         return false;
      }
      off += (size_t) n;
   }
   if (fsync(fd) != 0 || close(fd) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot sync %s: %s", tmp,
                      strerror(errno));
      unlink(tmp);
      return false;
   }
   if (rename(tmp, path) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot rename %s to %s: %s",
                      tmp, path, strerror(errno));
      unlink(tmp);
      return false;
   }
   char dir[4096];
   snprintf(dir, sizeof dir, "%s", path);
   int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
   if (dfd >= 0) {
      (void) fsync(dfd);
      close(dfd);
   }
   return true;
}

static bool
mkdir_parents(const char *path, aspen_error_t *err)
{
   char dir[4096];
   snprintf(dir, sizeof dir, "%s", path);
   char *d = dirname(dir);
   for (char *p = d + 1; *p; p++) {
      if (*p == '/') {
         *p = '\0';
         (void) mkdir(d, 0700);
         *p = '/';
      }
   }
   if (mkdir(d, 0700) != 0 && errno != EEXIST) {
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
   bool missing = false, ok = make_user_doc(users, name, password, roles,
                                            &user, err) &&
                              read_file(users->path, &old, &missing, err);
   if (!ok) {
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
   size_t len;
   char *json = bson_as_relaxed_extended_json(&out, &len);
   ok = mkdir_parents(users->path, err);
   if (ok) {
      char *text = aspen_xmalloc(len + 2);
      snprintf(text, len + 2, "%s\n", json);
      ok = write_atomically(users->path, text, err);
      free(text);
   }
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
