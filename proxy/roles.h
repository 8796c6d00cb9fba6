/*
 * roles.h - roles inside proxy/ (roles.c): what a role grants, as a list
 * of privileges (actions on a resource pattern), for the built-in roles
 * and the custom ones of the config's security.roles. The user store
 * (users.c) resolves a user's roles through these; principals (principal.c)
 * hold the privileges that result and match commands against them.
 *
 * Threading: a role set is built once, at start, and only read afterwards
 * (loop thread, and `aspen --add-user` before the loop); privilege lists are
 * plain values.
 */
#ifndef ASPEN_ROLES_H
#define ASPEN_ROLES_H

#include "auth.h"

/* The longest user, database, collection or role name, with its NUL. */
#define ASPEN_ROLES_MAX_NAME 256
/* The most roles one user holds. */
#define ASPEN_ROLES_MAX_PER_USER 32

/* What a privilege's resource is, as mongod's resource patterns: a
 * namespace pattern {db, collection} ("" in either matches any: {db: "x",
 * collection: ""} is database x and every collection in it, {db: "",
 * collection: ""} every database and collection), the cluster
 * ({cluster: true}), or every resource ({anyResource: true}). */
typedef enum {
   ASPEN_RES_NS,
   ASPEN_RES_CLUSTER,
   ASPEN_RES_ANY,
} aspen_res_kind_t;

/* One privilege: a mask of actions (ASPEN_ACTION_BIT) on a resource. */
typedef struct {
   aspen_res_kind_t kind;
   char db[ASPEN_ROLES_MAX_NAME];   /* ASPEN_RES_NS */
   char coll[ASPEN_ROLES_MAX_NAME]; /* ASPEN_RES_NS */
   uint64_t mask;
} aspen_priv_t;

/* A list of privileges, at most one per resource (free() `v`). */
typedef struct {
   aspen_priv_t *v;
   size_t n;
} aspen_privs_t;

/* A role as a user holds it: its name and the database it was granted on. */
typedef struct {
   char role[ASPEN_ROLES_MAX_NAME];
   char db[ASPEN_ROLES_MAX_NAME];
} aspen_role_ref_t;

/* The custom roles of security.roles. */
typedef struct aspen_roles aspen_roles_t;

/* Adds `mask` on a resource to `privs`, merged into the privilege already
 * on it (db and coll count for ASPEN_RES_NS only). */
void aspen__roles_add_priv(aspen_privs_t *privs, aspen_res_kind_t kind,
                           const char *db, const char *coll, uint64_t mask);

/* Parses the config's security.roles array (`config_roles`, may be empty)
 * strictly: a misspelled or mistyped key, an unknown action, a resource
 * that cannot hold an action, a built-in role's name or a name given twice
 * stops aspen, naming the role and the key. NULL with err set then. */
aspen_roles_t *aspen__roles_new(const bson_t *config_roles,
                                aspen_error_t *err);
void aspen__roles_destroy(aspen_roles_t *roles); /* NULL is a no-op */

/* True when `name` is a built-in role or one of `roles`. */
bool aspen__roles_exists(const aspen_roles_t *roles, const char *name);

/* Adds the privileges of role `name` (built-in, granted on `role_db`, or
 * one of `roles`) to `privs`. False when there is no such role. */
bool aspen__roles_grant(const aspen_roles_t *roles, const char *name,
                        const char *role_db, aspen_privs_t *privs);

/* Reads a role as an Atlas connection's dbRoleToExecute names it: with
 * `custom`, one of `roles`; otherwise a built-in role, "role@db" for those
 * granted on one database (read, readWrite) and "role" for the others.
 * Fills `ref` (db "" when none); false with err set (BadValue) when there
 * is no such role or the @db does not fit it. */
bool aspen__roles_parse_ref(const aspen_roles_t *roles, const char *role,
                            bool custom, aspen_role_ref_t *ref,
                            aspen_error_t *err);

#endif /* ASPEN_ROLES_H */
