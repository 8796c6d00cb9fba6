/*
 * principal_int.h - principals inside proxy/ (principal.c): what the user
 * store (users.c) needs to make one, and the checks the engine's
 * authorization hook (users.c) runs on a connection role's grant. The
 * rest of a principal's API is in auth.h.
 *
 * Threading: a principal is built on one thread and then only read; the
 * checks read nothing shared and run on any thread.
 */
#ifndef ASPEN_PRINCIPAL_INT_H
#define ASPEN_PRINCIPAL_INT_H

#include "roles.h"

/* A new principal with no privileges: user `user` of database `db` (with
 * mongod's user digest, SHA-256 of "user@db"), or with `db` NULL the grant
 * of a role named `user` (no database, no digest). */
aspen_principal_t *aspen__principal_new(const char *user, const char *db);
/* Records the roles the user holds (connectionStatus lists them); grants
 * nothing by itself. */
void aspen__principal_set_roles(aspen_principal_t *p,
                                const aspen_role_ref_t *refs, size_t n);
/* Adds the privileges of role `name` granted on `role_db` (see
 * aspen__roles_grant). False when there is no such role. */
bool aspen__principal_grant(aspen_principal_t *p, const aspen_roles_t *roles,
                            const char *name, const char *role_db);

/* True when `p` holds action `a` on db.coll (coll NULL or "": the
 * database). Any thread. */
bool aspen__principal_allows_ns(const aspen_principal_t *p, aspen_action_t a,
                                const char *db, const char *coll);
/* Checks what the stages of `pipeline` (an array, its namespaces defaulting
 * to database `db`) touch besides their input, as for a user's aggregate:
 * true, or false with `why` ("<action> on <namespace>") naming the first
 * privilege missing. Any thread. */
bool aspen__principal_may_run_stages(const aspen_principal_t *p,
                                     const char *db, const bson_t *pipeline,
                                     char *why, size_t why_len);

#endif /* ASPEN_PRINCIPAL_INT_H */
