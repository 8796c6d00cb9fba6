/*
 * engine_types.h - the types of engine.h that the engine's own folders
 * use as well: the authorization hook the proxy implements (connectors/
 * checks Atlas connections' roles through it) and the hooks deferred
 * replies go through (commands/ keeps them). Types only: code below
 * engine.c includes this, never engine.h, the composition root's API.
 */
#ifndef ASPEN_ENGINE_TYPES_H
#define ASPEN_ENGINE_TYPES_H

#include "wire.h"

/* Database actions a processor takes through an Atlas connection, checked
 * against the connection's dbRoleToExecute: a change-stream $source
 * watches (find + changeStream), $lookup and $cachedLookup read (find),
 * $merge writes (insert, update; remove for whenMatched "delete"), a
 * time-series $emit creates its collections and inserts, the DLQ inserts. */
enum {
   ASPEN_ENGINE_ACT_FIND = 1u << 0,
   ASPEN_ENGINE_ACT_CHANGE_STREAM = 1u << 1,
   ASPEN_ENGINE_ACT_INSERT = 1u << 2,
   ASPEN_ENGINE_ACT_UPDATE = 1u << 3,
   ASPEN_ENGINE_ACT_REMOVE = 1u << 4,
   ASPEN_ENGINE_ACT_CREATE_COLLECTION = 1u << 5,
};

/* The authorization hook: how the engine learns what an Atlas connection's
 * role (its dbRoleToExecute) allows, without knowing about users or roles
 * (the proxy implements it: aspen_users_engine_authz).
 *
 * - grant_new(arg, role, custom, err): resolves a role name ("BUILT_IN",
 *   or "CUSTOM" with `custom`) into an opaque grant the engine keeps for
 *   the connection's lifetime; NULL with err set when there is no such
 *   role. Called while the connections load (aspen_engine_new).
 * - allows(grant, acts, db, coll, missing): true when the grant allows
 *   every ASPEN_ENGINE_ACT_* in `acts` on collection db.coll (coll NULL:
 *   the database itself; db NULL: every database, as a whole-deployment
 *   change stream); false with *missing set to the first action's name
 *   that it lacks. Any thread, concurrently (grants are immutable).
 * - allows_stages(grant, db, pipeline, why, why_len): true when the grant
 *   allows what the stages of the aggregation pipeline `pipeline` (an
 *   array, run on a collection of database `db`) reach besides their
 *   input: nested $lookup / $unionWith / $graphLookup collections, $out and
 *   $merge targets. False with `why` set to what is missing ("find on
 *   b.c"). Any thread.
 * - grant_destroy(grant): frees it (registry cleanup). */
typedef struct {
   void *(*grant_new)(void *arg, const char *role, bool custom,
                      aspen_error_t *err);
   bool (*allows)(const void *grant, unsigned acts, const char *db,
                  const char *coll, const char **missing);
   bool (*allows_stages)(const void *grant, const char *db,
                         const bson_t *pipeline, char *why, size_t why_len);
   void (*grant_destroy)(void *grant);
   void *arg;
} aspen_engine_authz_t;

/* Where deferred replies go. `wake(arg)` is called from a processor's
 * thread, with no engine state held but a lock that also guards the hooks
 * themselves (so it must not call back into the engine), when a start has
 * finished provisioning: the caller then calls aspen_engine_poll on its
 * command thread, soon. `reply(arg, ticket, reply)` is called on the
 * command thread with a deferred command's ticket and its reply
 * (borrowed). */
typedef struct {
   void (*wake)(void *arg);
   void (*reply)(void *arg, void *ticket, const bson_t *reply);
   void *arg;
} aspen_engine_hooks_t;

#endif /* ASPEN_ENGINE_TYPES_H */
