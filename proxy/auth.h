/*
 * auth.h - authentication and authorization inside proxy/: the privilege
 * actions (action.c), the user store (users.c; `aspen --add-user`,
 * users_cli.c) with the roles it resolves (roles.c, roles.h), principals and
 * the privileges each command needs (principal.c), mongod's refusal
 * message (auth_refuse.c), the SASL and MONGODB-X509 commands,
 * connectionStatus and the check the router runs before every command
 * (cmd_auth.c), and the audit log (audit.c). SCRAM itself is scram.h.
 *
 * Model: users live in one JSON file (security.usersFile, default
 * <stateDir>/users.json) as SCRAM keys only. Auth is required when the file
 * holds a user or security.authorization is "enabled"; then every command
 * except the NO_AUTH rows needs an authenticated session, and each command
 * needs the privilege actions its roles grant (ASP's stream-processing
 * actions, MongoDB's database actions for forwarded commands).
 *
 * Threading: loop thread only, except aspen_users_cli_add (main, before the
 * loop exists), the audit log's writer thread (audit.c), and principals:
 * immutable copies, whose checks (aspen_principal_may_run, the engine's
 * connection grants) run on any thread.
 */
#ifndef ASPEN_AUTH_H
#define ASPEN_AUTH_H

#include "proxy_int.h"
#include "scram.h"

/* The authentication database of MONGODB-X509 users. */
#define ASPEN_EXTERNAL_DB "$external"
/* The engine names sp.process's ephemeral processors "__process_<hex>". */
#define ASPEN_EPHEMERAL_PREFIX "__process_"

/* ---- privilege actions (action.c) ----------------------------------------- */

/* X(name, kind): kind S = stream-processing workspace, D = database or
 * collection, C = cluster, A = every action (on whatever resource the
 * privilege names). */
#define ASPEN_ACTIONS(X)                                                       \
   X(createStreamProcessor, S)                                                 \
   X(processStreamProcessor, S)                                                \
   X(startStreamProcessor, S)                                                  \
   X(stopStreamProcessor, S)                                                   \
   X(dropStreamProcessor, S)                                                   \
   X(modifyStreamProcessor, S)                                                 \
   X(sampleStreamProcessor, S)                                                 \
   X(streamProcessorStats, S)                                                  \
   X(listStreamProcessors, S)                                                  \
   X(getStreamProcessor, S)                                                    \
   X(listStreamConnections, S)                                                 \
   X(find, D)                                                                  \
   X(insert, D)                                                                \
   X(update, D)                                                                \
   X(remove, D)                                                                \
   X(createCollection, D)                                                      \
   X(dropCollection, D)                                                        \
   X(createIndex, D)                                                           \
   X(dropIndex, D)                                                             \
   X(listCollections, D)                                                       \
   X(listIndexes, D)                                                           \
   X(dbStats, D)                                                               \
   X(collStats, D)                                                             \
   X(dropDatabase, D)                                                          \
   X(renameCollectionSameDB, D)                                                \
   X(killCursors, D)                                                           \
   X(changeStream, D)                                                          \
   X(convertToCapped, D)                                                       \
   X(indexStats, D)                                                            \
   X(bypassDocumentValidation, D)                                              \
   X(listDatabases, C)                                                         \
   X(serverStatus, C)                                                          \
   X(getCmdLineOpts, C)                                                        \
   X(getLog, C)                                                                \
   X(getParameter, C)                                                          \
   X(hostInfo, C)                                                              \
   X(inprog, C)                                                                \
   X(listSessions, C)                                                          \
   X(anyAction, A)

typedef enum {
#define ASPEN_ACTION_ENUM(n, k) ASPEN_ACTION_##n,
   ASPEN_ACTIONS(ASPEN_ACTION_ENUM)
#undef ASPEN_ACTION_ENUM
      ASPEN_N_ACTIONS
} aspen_action_t;

const char *aspen_action_name(aspen_action_t a);
/* Parses an action name (also ASP's older "listConnections"). */
bool aspen_action_parse(const char *name, aspen_action_t *a);
/* The kind of `a` (ASPEN_ACTIONS): 'S', 'D', 'C' or 'A'. */
char aspen__action_kind(aspen_action_t a);
/* The action's bit in a mask of actions (a privilege's, a role's). */
#define ASPEN_ACTION_BIT(a) (UINT64_C(1) << ASPEN_ACTION_##a)

/* ---- the user store (users.c), principals (principal.c) ------------------- */

/* What an authenticated session may do: a copy, independent of the store
 * (so a reload of the users file never invalidates a session). */
typedef struct aspen_principal aspen_principal_t;

/* Loads roles from cfg (security.roles) and users from the users file (a
 * missing file means no users). Returns NULL with err set on a malformed,
 * empty or unreadable file, one whose permissions give group or others any
 * access (as mongod refuses such a keyfile), an unknown role or a bad
 * security.authorization value. */
aspen_users_t *aspen_users_new(const aspen_config_t *cfg, aspen_error_t *err);
void aspen_users_destroy(aspen_users_t *users); /* NULL is a no-op */
/* Re-reads the users file if it changed (mtime, size, inode or mode; so
 * `aspen --add-user` takes effect without a restart). A file that cannot be
 * used (gone, empty, unreadable, not JSON, malformed, too open) is logged
 * as an error and the users loaded before are kept; it is tried again when
 * it changes. Once users have been loaded, authentication stays required
 * (in "auto" mode) even if the file later lists none: turning it off takes
 * security.authorization "disabled" and a restart. */
void aspen_users_refresh(aspen_users_t *users);
/* True when commands need an authenticated session. */
bool aspen_users_auth_required(const aspen_users_t *users);
size_t aspen_users_count(const aspen_users_t *users);
const char *aspen_users_path(const aspen_users_t *users);
/* Copies user db.name's credential for `mech` into *cred; false (cred
 * zeroed) when there is no such user. */
bool aspen_users_get_cred(const aspen_users_t *users, const char *db,
                          const char *name, aspen_scram_mech_t mech,
                          aspen_scram_cred_t *cred);
/* Resolves user db.name's roles into a new principal; NULL if unknown. */
aspen_principal_t *aspen_users_principal_new(const aspen_users_t *users,
                                             const char *db,
                                             const char *name);
void aspen_principal_destroy(aspen_principal_t *p); /* NULL is a no-op */
const char *aspen_principal_user(const aspen_principal_t *p);
const char *aspen_principal_db(const aspen_principal_t *p);
/* mongod's user digest: SHA-256 of "user@db" (ASPEN_USER_DIGEST_LEN
 * bytes), what it tells users apart by in cursors and sessions. */
#define ASPEN_USER_DIGEST_LEN 32
const uint8_t *aspen_principal_uid(const aspen_principal_t *p);
/* Appends [{role, db}] and mongod-shaped [{resource, actions}] entries. */
void aspen_principal_append_roles(const aspen_principal_t *p, bson_t *arr);
void aspen_principal_append_privileges(const aspen_principal_t *p,
                                       bson_t *arr);
/* Checks that `p` may run `name` (the command `cmd` on database `db`;
 * `forwarded` when it goes to the backend). Stream commands and forwarded
 * commands need their privilege actions, on every namespace they touch
 * (a $merge or $out target, a $lookup's `from`, both sides of a rename, a
 * view's source, ...); aspen's diagnostics (getCmdLineOpts, getLog,
 * hostInfo, serverStatus) their cluster actions; aspen's other local
 * commands need only an authenticated session; a forwarded command aspen
 * has no mapping for needs anyAction (atlasAdmin), so no role gains more
 * through aspen than it grants. Returns false with err = Unauthorized (13)
 * otherwise: for stream commands ASP's "not authorized: missing privilege
 * for action <action> on resource <resource>", for the others mongod's
 * "not authorized on <db> to execute command { ... }"; `why` (may be NULL)
 * then gets the missing privilege ("missing privilege for action ... on
 * resource ..."), for the log. `p` NULL stands for "no privileges". (The
 * router's check, aspen_auth_check, adds one exception: a user may drop
 * the ephemeral processors of its own sp.process.) Any thread. */
bool aspen_principal_may_run(const aspen_principal_t *p, const char *name,
                             const bson_t *cmd, const char *db,
                             bool forwarded, aspen_error_t *err, char *why,
                             size_t why_len);
/* The privileges of one role as a principal, for an Atlas connection's
 * dbRoleToExecute: a built-in role ("readWriteAnyDatabase", "read@sales")
 * or, with `custom`, a security.roles one. NULL with err set (BadValue)
 * when there is no such role. */
aspen_principal_t *aspen_users_role_principal_new(const aspen_users_t *users,
                                                  const char *role,
                                                  bool custom,
                                                  aspen_error_t *err);
/* Fills `out` with the engine's authorization hook (engine.h): connection
 * roles resolved by aspen_users_role_principal_new, namespaces checked as
 * for a user. `users` must outlive the grants' resolution (aspen_engine_new);
 * the grants themselves are independent copies. */
void aspen_users_engine_authz(aspen_users_t *users,
                              aspen_engine_authz_t *out);

/* `aspen --add-user NAME --password PW --roles r1,r2` (users_cli.c): adds
 * or replaces the user in the users file (atomically: temp file, fsync,
 * rename, fsync of the folder) with SCRAM-SHA-1 and SCRAM-SHA-256 keys. The
 * read-modify-write holds an exclusive flock on "<users file>.lock", so
 * concurrent runs all land; a users file with group/other permissions is
 * refused. With `password` NULL (--external) the user goes in "$external"
 * with no credentials: NAME is a client certificate subject (RFC 2253) for
 * MONGODB-X509. Roles are built-in or security.roles names, optionally
 * "role@db". Prints one line; returns the process exit status. Main
 * thread, before the loop. */
int aspen_users_cli_add(const aspen_config_t *cfg, const char *name,
                        const char *password, const char *roles);

/* ---- per-session state and the router hook (cmd_auth.c) ------------------- */

/* The largest message a client may send while authentication is required
 * and it has not logged in. What a handshake needs is far less: hello with
 * the driver's client metadata (at most 512 bytes by the drivers' handshake
 * spec, as mongod enforces), saslSupportedMechs and a speculativeAuthenticate
 * SCRAM client-first message or MONGODB-X509 document (user names are at
 * most 255 bytes), then saslStart/saslContinue (a few hundred bytes). A
 * limit this low keeps unauthenticated clients from each holding a
 * maxMessageSizeBytes buffer (48 MB by default). */
#define ASPEN_PREAUTH_MAX_MESSAGE 16384

/* The largest frame `sess` may send now: ASPEN_PREAUTH_MAX_MESSAGE while
 * authentication is required and no user is logged in on it, else
 * net.maxMessageSizeBytes. Loop thread. */
size_t aspen_auth_max_message(aspen_server_t *srv, aspen_session_t *sess);
/* Ends a session's authentication state (conversation, principal). */
void aspen_auth_state_destroy(aspen_auth_state_t *st); /* NULL is a no-op */
/* The router's check before any handler or forward: true to go on; false
 * with `reply` holding the refusal (code 13). Besides its roles' actions, a
 * user may always drop an ephemeral processor (ASPEN_EPHEMERAL_PREFIX) that
 * its own sp.process started, as mongosh does when the sample loop ends or
 * on Ctrl+C, so processStreamProcessor + sampleStreamProcessor suffice for
 * sp.process. */
bool aspen_auth_check(aspen_request_t *req, const aspen_command_t *row,
                      bson_t *reply);
/* Logs `sess` in as user db.name (of srv->users) as a successful SASL
 * conversation would, without one: for tests and fuzz targets, which
 * cannot compute a client proof. False when there is no such user. */
bool aspen__auth_login(aspen_server_t *srv, aspen_session_t *sess,
                       const char *db, const char *name);
/* Adds saslSupportedMechs and speculativeAuthenticate to a hello reply when
 * the request asks for them. */
void aspen_auth_hello(aspen_request_t *req, bson_t *reply);

/* The session's connection has closed: audits its end (with the user, if
 * one was logged in). Loop thread, from the session's close callback. */
void aspen_auth_session_closed(aspen_server_t *srv, aspen_session_t *sess);
/* A stream-processor command `op` on processor `target` (may be NULL)
 * finished with `reply`: audits create, process, start, stop, drop, modify
 * and sample (other commands are not management events), and remembers
 * which user started each sp.process processor (see aspen_auth_check).
 * Loop thread. */
void aspen_auth_sp_done(aspen_server_t *srv, aspen_session_t *sess,
                        const char *op, const char *target,
                        const bson_t *reply);

/* ---- forwarded cursors (cursor_owners.c) --------------------------------- */

/* Who a forwarded command runs for, captured when it is sent: a cursor its
 * reply opens belongs to them. */
typedef struct {
   bool track; /* access control is on and a user is logged in */
   uint8_t uid[ASPEN_USER_DIGEST_LEN];
   bool has_lsid; /* lsid.id, when the command has one (a 16-byte UUID) */
   uint8_t lsid[16];
   int64_t get_more_id; /* the cursor a getMore continues; 0 otherwise */
} aspen_cursor_owner_t;

/* Fills `o` for command `name` (`cmd`) sent by `p` (NULL: nobody logged in
 * or access control off: nothing is tracked). */
void aspen_cursor_owner_init(aspen_cursor_owner_t *o,
                             const aspen_principal_t *p, const char *name,
                             const bson_t *cmd);
/* Checks a getMore or killCursors (any other command passes) against the
 * owners of the cursors it names. False with err set: CursorNotFound (43)
 * for a cursor aspen does not know; Unauthorized (13) for a getMore of a
 * cursor opened by another user, in another session or on another
 * namespace (mongod's messages); for a killCursors naming another user's
 * cursor *foreign is set and err is left for the caller (mongod refuses
 * it as an authorization failure: "not authorized on ..."). Loop thread. */
bool aspen_cursors_check(const aspen_cursor_owner_t *o, const char *name,
                         const bson_t *cmd, const char *db, bool *foreign,
                         aspen_error_t *err);
/* A forwarded command's reply: remembers the cursor it opened, forgets
 * those it says ended. Loop thread. */
void aspen_cursors_note_reply(const aspen_cursor_owner_t *o,
                              const bson_t *reply);
/* How many cursors are remembered (tests). */
size_t aspen__cursors_count(void);
/* Fills `o` for the request about to be forwarded (see
 * aspen_cursor_owner_init): its session's user when access control is
 * on. */
void aspen_auth_cursor_owner(aspen_request_t *req, aspen_cursor_owner_t *o);
/* The key of the backend session a client lsid maps to (backend.c): with
 * access control on, the lsid plus the user's digest, as mongod's session
 * ids are, so users never share a backend session (its cursors and
 * transactions) by sending the same lsid. True with `out` initialised; false
 * (out untouched) when the lsid is the key as it is. _keys does the same
 * for each {id} of an endSessions array. Loop thread. */
bool aspen_auth_session_key(aspen_request_t *req, const bson_t *lsid,
                            bson_t *out);
bool aspen_auth_session_keys(aspen_request_t *req, const bson_t *ids,
                             bson_t *out);
/* mongod's authorization refusal of `cmd` on `db` (code 13, "not
 * authorized on <db> to execute command { ... }"; auth_refuse.c). */
void aspen__auth_refuse_command(const bson_t *cmd, const char *db,
                                aspen_error_t *err);

/* ---- the audit log (audit.c) ----------------------------------------------- */

/* One event; every string is borrowed, NULL ones are left out. Classes and
 * activities follow OCSF: Authentication (3002) Logon 1 / Logoff 2; API
 * Activity (6003) Create 1 / Read 2 / Update 3 / Delete 4 / Other 99. */
typedef struct {
   const char *class_name;
   int class_uid;
   const char *activity;
   int activity_id;
   const char *user; /* NULL: no authenticated user */
   const char *db;
   const char *peer; /* "host:port" */
   const char *operation;
   bool success;
   const char *status_detail;
   const bson_t *unmapped; /* aspen's extra fields, or NULL */
} aspen_audit_event_t;

/* Opens the audit file (append, 0600) and starts its writer thread; NULL
 * with err set if the file cannot be opened. Main thread. */
aspen_audit_t *aspen_audit_new(const char *path, aspen_error_t *err);
/* Writes what is pending, joins the writer, closes. NULL is a no-op. Main
 * thread, once the loop has stopped. */
void aspen_audit_destroy(aspen_audit_t *audit);
/* Queues one JSON line; never waits for the disk. NULL audit: no-op. */
void aspen_audit_write(aspen_audit_t *audit, const aspen_audit_event_t *ev);

#endif /* ASPEN_AUTH_H */
