/*
 * users.c - the user store (see auth.h): users, read from the users file,
 * and the principals their roles make.
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
 * A user's roles are built-in or custom ones (roles.c); a principal
 * (principal.c) is the copy of what they grant that a session holds, so
 * the privilege checks read nothing shared and may run on any thread. The
 * engine's authorization hook (the end of this file) resolves an Atlas
 * connection's dbRoleToExecute into such a principal. `aspen --add-user`
 * writes the file (users_cli.c).
 */
#include "principal_int.h"
#include "users_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define COMPONENT "ACCESS"
#define MAX_NAME ASPEN_ROLES_MAX_NAME
#define MAX_ROLES ASPEN_ROLES_MAX_PER_USER
#define MAX_FILE (16u * 1024u * 1024u)

/* ---- users ------------------------------------------------------------------ */

typedef struct {
   char name[MAX_NAME];
   char db[MAX_NAME];
   aspen_role_ref_t roles[MAX_ROLES];
   size_t n_roles;
   bool has[ASPEN_SCRAM_N_MECHS];
   aspen_scram_cred_t cred[ASPEN_SCRAM_N_MECHS];
} user_t;

struct aspen_users {
   char *path;
   bool mode_enabled;  /* security.authorization "enabled" */
   bool mode_disabled; /* "disabled" (--no-auth) */
   aspen_roles_t *roles; /* security.roles */
   user_t *users;
   size_t n_users;
   struct stat st; /* the users file as last read */
   bool st_valid;
   /* Users were loaded once: from then on authentication stays required
    * (in "auto" mode) whatever later happens to the file; only an explicit
    * security.authorization "disabled" and a restart turn it off. */
   bool had_users;
};

/* The users file holds SCRAM keys (a stolen StoredKey/ServerKey pair
 * allows offline guessing and impersonating aspen), and one others may
 * write could give anyone a user, so aspen treats it as mongod treats its
 * keyfile: mode 0600 or stricter, or it is not used. */
bool
aspen__users_read_file(const char *path, bson_t *doc, bool *missing,
                       aspen_error_t *err)
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
            aspen_role_ref_t *ref = &u->roles[u->n_roles];
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
            if (!aspen__roles_exists(users->roles, ref->role)) {
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
   if (!aspen__users_read_file(users->path, &doc, &missing, err)) {
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

aspen_users_t *
aspen__users_new_unloaded(const aspen_config_t *cfg, aspen_error_t *err)
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
   users->roles = aspen__roles_new(&cfg->roles, err);
   if (!users->roles) {
      aspen_users_destroy(users);
      return NULL;
   }
   return users;
}

const aspen_roles_t *
aspen__users_roles(const aspen_users_t *users)
{
   return users->roles;
}

aspen_users_t *
aspen_users_new(const aspen_config_t *cfg, aspen_error_t *err)
{
   aspen_users_t *users = aspen__users_new_unloaded(cfg, err);
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
   aspen__roles_destroy(users->roles);
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

aspen_principal_t *
aspen_users_principal_new(const aspen_users_t *users, const char *db,
                          const char *name)
{
   const user_t *u = find_user(users, db, name);
   if (!u) {
      return NULL;
   }
   aspen_principal_t *p = aspen__principal_new(u->name, u->db);
   aspen__principal_set_roles(p, u->roles, u->n_roles);
   for (size_t i = 0; i < u->n_roles; i++) {
      (void) aspen__principal_grant(p, users->roles, u->roles[i].role,
                                    u->roles[i].db);
   }
   return p;
}

aspen_principal_t *
aspen_users_role_principal_new(const aspen_users_t *users, const char *role,
                               bool custom, aspen_error_t *err)
{
   aspen_role_ref_t ref;
   if (!aspen__roles_parse_ref(users->roles, role, custom, &ref, err)) {
      return NULL;
   }
   aspen_principal_t *p = aspen__principal_new(role, NULL);
   (void) aspen__principal_grant(p, users->roles, ref.role, ref.db);
   return p;
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
   for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
      if ((acts & map[i].bit) &&
          !aspen__principal_allows_ns(grant, map[i].a, db, coll)) {
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
   return aspen__principal_may_run_stages(grant, db, pipeline, why, why_len);
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
