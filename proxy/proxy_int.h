/*
 * proxy_int.h - types shared inside proxy/: the configuration, the server
 * (listener + every live session), the per-connection session, the command
 * router and the backend forwarder. Nothing outside proxy/ includes this.
 *
 * Threading: everything here runs on the loop thread except the backend
 * lanes (backend.c, when the relay cannot serve the backend URI), which own
 * their mongoc clients and talk to the loop only through job queues and a
 * uv_async_t, and mongoc's topology monitor (upstream_topo.c).
 */
#ifndef ASPEN_PROXY_INT_H
#define ASPEN_PROXY_INT_H

#include "engine.h"
#include "tls.h"
#include "wire.h"

#include <uv.h>

/* ------------------------------------------------------------------------ */
/* Configuration (config.c)                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
   char *bind;             /* "127.0.0.1" */
   int port;               /* 27017 */
   char *backend_uri;      /* NULL: no backend, forwarded commands fail */
   char *backend_forwarding; /* "relay" (NULL: the default) or "lanes" */
   int backend_lanes;      /* worker threads talking to the backend */
   char *state_dir;        /* NULL: "./aspen-state" */
   int checkpoint_interval_ms; /* streams.checkpointIntervalMs; 0: engine's */
   size_t memory_limit_bytes;  /* streams.memoryLimitBytes; 0: the tier's */
   size_t max_processors;      /* streams.maxProcessors; 0: 10000 */
   size_t function_time_limit_ms;      /* streams.functionTimeLimitMillis */
   size_t function_memory_limit_bytes; /* streams.functionMemoryLimitBytes */
   bson_t connections;     /* the "connections" array of the config file */
   aspen_tls_mode_t tls_mode;
   char *tls_cert;
   char *tls_key;
   char *tls_ca;
   int max_connections;
   size_t max_message_size;
   size_t output_high_water;
   int idle_timeout_secs;  /* net.idleTimeoutSecs; 0: never idle out */
   bool load_balanced;     /* net.loadBalanced: answer loadBalanced hellos */
   int metrics_port;       /* metrics.port; -1 (default): no endpoint */
   aspen_log_level_t log_level;
   /* Authentication (users.c, roles.c): "auto" (default: on once a user
    * exists), "enabled" or "disabled"; the users file (default
    * <stateDir>/users.json); the custom roles (the "security.roles" array
    * of the config file). */
   char *auth_mode;
   char *users_file;
   bson_t roles;
   char *audit_log_path; /* security.auditLog.path; NULL: no audit log */
   /* The command line as given, for getCmdLineOpts. */
   int argc;
   char **argv;
   bson_t parsed; /* the effective configuration, for getCmdLineOpts */
} aspen_config_t;

void aspen_config_init(aspen_config_t *cfg);
void aspen_config_cleanup(aspen_config_t *cfg);
/* Loads an Extended JSON config file into cfg. Unknown keys and wrong types
 * fail with the key's dotted path in err. */
bool aspen_config_load_file(aspen_config_t *cfg, const char *path,
                            aspen_error_t *err);
/* Parses argv (after --config has been applied) over cfg. Returns false with
 * err set on a bad flag; sets *exit_now for --help / --version. */
bool aspen_config_parse_args(aspen_config_t *cfg, int argc, char **argv,
                             bool *exit_now, aspen_error_t *err);
/* Fills cfg->parsed from the effective settings (the backend URI
 * redacted: aspen_uri_redact). */
void aspen_config_finish(aspen_config_t *cfg);
/* Appends the command line to the array `arr` as getCmdLineOpts shows it:
 * URIs redacted (aspen_uri_redact), and the value of a flag whose name is
 * a secret's (aspen_secret_name) replaced. */
void aspen_config_append_argv(const aspen_config_t *cfg, bson_t *arr);

/* ------------------------------------------------------------------------ */
/* Backend forwarding (backend.c)                                            */
/* ------------------------------------------------------------------------ */

typedef struct aspen_backend aspen_backend_t;
typedef struct aspen_backend_job aspen_backend_job_t;

/* Called on the loop thread when a job finishes. `reply` is the document to
 * send to the client (the backend's reply verbatim, or an aspen error); the
 * callee may keep it only by copying. */
typedef void (*aspen_backend_cb)(void *arg, const bson_t *reply);

/* The forwarder for `uri`. `forwarding` is "relay" (or NULL): aspen's own
 * connections on the loop thread (upstream.h) when the relay supports the
 * URI, else (an auth mechanism other than SCRAM, load-balanced mode, ...)
 * `lanes` worker threads with clients from a mongoc pool, which is also
 * what "lanes" asks for. Returns NULL with err set when the URI or the
 * mode is invalid or a TLS file cannot be loaded. Loop thread only. */
aspen_backend_t *aspen_backend_new(uv_loop_t *loop, const char *uri,
                                   const char *forwarding, int lanes,
                                   aspen_error_t *err);
/* Stops forwarding: every command still owed a reply gets its callback
 * (a shutdown error for those that did not finish), the lanes are joined,
 * connections and handles closed. Loop thread only. */
void aspen_backend_destroy(aspen_backend_t *be);
/* True when the relay (not the lanes) forwards. */
bool aspen_backend_is_relay(const aspen_backend_t *be);

typedef struct aspen_request aspen_request_t;
/* Forwards the request's command (its OP_MSG as the client sent it, with
 * the rewrites upstream.c lists; the lanes send it through mongoc with
 * $db, lsid, $clusterTime and $readPreference stripped). `lsid_key` is the
 * key of the client's backend session (the router's: the lsid, or the lsid
 * plus the user's digest with access control on) or NULL: the lanes map it
 * to a mongoc session of one lane. `cb` runs on the loop thread exactly
 * once, never from inside this call. */
void aspen_backend_forward(aspen_backend_t *be, const aspen_request_t *req,
                           const bson_t *lsid_key, aspen_backend_cb cb,
                           void *arg);
/* What the backing deployment says about itself in its isMaster reply,
 * which decides the topology aspen presents (topology.c). */
typedef struct {
   bool known;        /* the backend answered a probe at least once */
   bool probed;       /* a probe finished (answered or failed) at least once */
   bool transactions; /* a replica-set member or a mongos with sessions */
   int32_t session_timeout_minutes; /* logicalSessionTimeoutMinutes; -1: none */
   int32_t max_wire_version;
} aspen_backend_facts_t;
typedef void (*aspen_backend_facts_cb)(void *arg,
                                       const aspen_backend_facts_t *facts);

/* The latest facts (all false / -1 before the first answer). Loop thread. */
void aspen_backend_facts(const aspen_backend_t *be, aspen_backend_facts_t *out);
/* Sends the backend an isMaster, unless one is on its way or the facts are
 * younger than `max_age_ms` (0: always ask). When it ends (answered or
 * not) the hook set by aspen_backend_set_facts_hook runs with the facts.
 * Loop thread; the hook never runs from inside this call. */
void aspen_backend_probe(aspen_backend_t *be, uint64_t max_age_ms);
void aspen_backend_set_facts_hook(aspen_backend_t *be, aspen_backend_facts_cb cb,
                                  void *arg);

/* Ends the backend sessions of the given client lsids (an array of
 * {id: UUID} documents, as in endSessions): the relay sends endSessions to
 * the backend, the lanes end the mongoc sessions they mapped. Fire and
 * forget. */
void aspen_backend_end_sessions(aspen_backend_t *be, const bson_t *ids);

/* ------------------------------------------------------------------------ */
/* The bridge to the stream engine (bridge.c)                                */
/* ------------------------------------------------------------------------ */

typedef struct aspen_bridge aspen_bridge_t;
typedef void (*aspen_bridge_cb)(void *arg, const bson_t *reply);

/* Starts the bridge thread that runs engine commands and sets the engine's
 * hooks (deferred start replies come back through it). Loop thread only. */
aspen_bridge_t *aspen_bridge_new(uv_loop_t *loop, aspen_engine_t *eng);
/* Finishes queued work, joins the thread, ends the starts still pending
 * (each still gets its reply, an error), unhooks from the engine, closes
 * the async handle. Call before aspen_engine_destroy. */
void aspen_bridge_destroy(aspen_bridge_t *br);
/* Queues an engine command (copied); cb runs on the loop thread, exactly
 * once, when the reply is there (for a start, once the processor has
 * opened its peers or failed to). */
void aspen_bridge_submit(aspen_bridge_t *br, const char *name,
                         const bson_t *cmd, uint64_t conn_id,
                         aspen_bridge_cb cb, void *arg);
/* Tells the engine a client connection closed (its cursors end). */
void aspen_bridge_connection_closed(aspen_bridge_t *br, uint64_t conn_id);
/* Queues a request for the engine's Prometheus text
 * (aspen_engine_metrics); cb runs on the loop thread, exactly once, with
 * {text: "..."}. */
void aspen_bridge_metrics(aspen_bridge_t *br, aspen_bridge_cb cb, void *arg);

/* ------------------------------------------------------------------------ */
/* Server and sessions (listener.c, session.c)                               */
/* ------------------------------------------------------------------------ */

typedef struct aspen_session aspen_session_t;
typedef struct aspen_users aspen_users_t;           /* auth.h */
typedef struct aspen_auth_state aspen_auth_state_t; /* auth.h */
typedef struct aspen_audit aspen_audit_t;           /* auth.h */
typedef struct aspen_cmd_counts aspen_cmd_counts_t; /* metrics.c */

typedef struct {
   uv_loop_t *loop;
   aspen_config_t *cfg;
   uv_tcp_t listener;
   bool listening;
   aspen_tls_ctx_t *tls_ctx;
   aspen_backend_t *backend;
   aspen_engine_t *engine;
   aspen_bridge_t *bridge;
   aspen_users_t *users;      /* users and roles; never NULL once listening */
   aspen_audit_t *audit;      /* the audit log, or NULL when it is off */
   aspen_session_t *sessions; /* intrusive list of live sessions */
   int n_sessions;
   uint64_t next_conn_id;
   uint64_t start_time_ms;
   bool shutting_down;
   uv_timer_t idle_timer;     /* sweeps idle sessions (net.idleTimeoutSecs) */
   bool idle_timer_on;
   struct aspen_topology *topology; /* topology.c's; NULL until needed */
   /* The Prometheus endpoint (metrics.c), with metrics.port only. */
   uv_tcp_t metrics_listener;
   bool metrics_on;
   aspen_cmd_counts_t *cmd_counts; /* NULL: off */
   struct mconn *metrics_conns;    /* its open connections */
} aspen_server_t;

bool aspen_listener_start(aspen_server_t *srv, aspen_error_t *err);
void aspen_listener_stop(aspen_server_t *srv);

/* The opt-in Prometheus endpoint (metrics.c): listens on net.bindIp at
 * metrics.port when it is set (0: a free port; the log says which), and
 * counts commands by name from then on. Stop closes the listener (a
 * connection waiting for the engine still gets its reply); cleanup, after
 * the loop, frees the counters. Loop thread. */
bool aspen_metrics_start(aspen_server_t *srv, aspen_error_t *err);
void aspen_metrics_stop(aspen_server_t *srv);
void aspen_metrics_cleanup(aspen_server_t *srv);
/* Counts a command (local: answered by aspen; else forwarded); nothing
 * when the endpoint is off. */
void aspen_metrics_count_command(aspen_server_t *srv, const char *name,
                                 bool local);

/* Accepts one pending connection on `listener` into a new session, or
 * refuses it when net.maxConnections sessions are open. */
void aspen__session_accept(aspen_server_t *srv, uv_stream_t *listener);
/* Closes a session (idempotent); it is freed once its handle is closed and
 * no backend job refers to it. */
void aspen_session_close(aspen_session_t *sess, const char *why);
void aspen_session_close_all(aspen_server_t *srv);
/* Closes every session that has been idle for net.idleTimeoutSecs: no
 * request completed and no reply bytes written for that long, and nothing
 * in flight to the backend or the engine. Loop thread only. */
void aspen__session_close_idle(aspen_server_t *srv, uint64_t now_ms);

/* ------------------------------------------------------------------------ */
/* Requests and the router (router.c, commands.def, cmd_*.c)                  */
/* ------------------------------------------------------------------------ */

/* One decoded command, valid for the duration of a handler call. */
struct aspen_request {
   aspen_session_t *sess;
   aspen_server_t *srv;
   const char *name;  /* first key of cmd */
   const char *db;    /* $db, or the OP_QUERY namespace's database */
   const bson_t *cmd; /* the whole command document */
   bool legacy;       /* arrived as OP_QUERY */
   bool more_to_come; /* the client wants no reply */
   const aspen_op_msg_t *msg; /* the OP_MSG as sent (NULL for OP_QUERY) */
};

/* How a handler finished. */
typedef enum {
   ASPEN_HANDLED_REPLY, /* `reply` holds the answer, send it now */
   ASPEN_HANDLED_ASYNC, /* the handler will call aspen_session_reply later */
} aspen_handled_t;

typedef aspen_handled_t (*aspen_cmd_handler)(aspen_request_t *req,
                                             bson_t *reply);

enum {
   ASPEN_CMD_LOCAL = 1u << 0,   /* answered by aspen */
   ASPEN_CMD_FORWARD = 1u << 1, /* sent to the backend */
   ASPEN_CMD_NO_AUTH = 1u << 2, /* allowed before authentication */
};

typedef struct {
   const char *name;
   aspen_cmd_handler handler;
   unsigned flags;
} aspen_command_t;

/* Finds the row for a command name (exact match, as mongod). NULL when the
 * command is not aspen's: it is forwarded then. */
const aspen_command_t *aspen_router_find(const char *name);
/* Runs a request through the table: local handler, or forward. */
aspen_handled_t aspen_router_dispatch(aspen_request_t *req, bson_t *reply);

/* A session without a socket, for tests and fuzz targets: the bytes given
 * to aspen__session_feed are read as if from a client (plaintext; TLS must
 * be disabled), and every reply's wire bytes go to `out_fn` (synchronously,
 * on the loop thread; the callee copies what it keeps). The caller holds a
 * reference: aspen_session_close then aspen_session_unref it, and run the
 * loop until the close callback has run. */
typedef void (*aspen_session_out_fn)(void *arg, const uint8_t *data,
                                     size_t len);
aspen_session_t *aspen__session_new_detached(aspen_server_t *srv,
                                             const char *peer,
                                             aspen_session_out_fn out_fn,
                                             void *out_arg);
void aspen__session_feed(aspen_session_t *sess, const uint8_t *data,
                         size_t len);
/* True while a request waits for the engine or the backend (its reply
 * comes when the loop runs). */
bool aspen__session_waiting(const aspen_session_t *sess);

/* Sends the reply of the request in flight (for ASYNC handlers) and resumes
 * reading. Loop thread only. */
void aspen_session_reply(aspen_session_t *sess, const bson_t *reply);
/* Sends `reply` to the request in flight as one reply of an exhaust
 * stream (OP_MSG flag moreToCome): the session keeps waiting, and the next
 * reply (this function again, or aspen_session_reply to end the stream)
 * answers this one, as mongod's streamed hello replies do. False when the
 * session is no longer waiting (closed meanwhile). Loop thread only. */
bool aspen_session_reply_more(aspen_session_t *sess, const bson_t *reply);
/* Session accessors for handlers. */
uint64_t aspen_session_id(const aspen_session_t *sess);
const char *aspen_session_peer(const aspen_session_t *sess);
bool aspen_session_is_tls(const aspen_session_t *sess);
/* The verified TLS client certificate's subject (RFC 2253), or NULL: no
 * TLS, no certificate, or no tls.CAFile to verify it against. */
const char *aspen_session_peer_subject(aspen_session_t *sess);
void aspen_session_ref(aspen_session_t *sess);
/* The session's authentication state (NULL until cmd_auth.c sets one);
 * set_auth destroys the previous state and takes ownership of `st`. */
aspen_auth_state_t *aspen_session_auth(const aspen_session_t *sess);
void aspen_session_set_auth(aspen_session_t *sess, aspen_auth_state_t *st);
void aspen_session_unref(aspen_session_t *sess);

/* Command handlers (cmd_hello.c). */
#define ASPEN_DECLARE_HANDLER(fn)                                              \
   aspen_handled_t fn(aspen_request_t *req, bson_t *reply);
#define ASPEN_COMMAND(name, fn, flags) ASPEN_DECLARE_HANDLER(fn)
#include "commands.def"
#undef ASPEN_COMMAND
#undef ASPEN_DECLARE_HANDLER
/* Every sp command (aspen_engine_command_find): the engine runs it
 * (cmd_sp.c). */
aspen_handled_t aspen_cmd_sp(aspen_request_t *req, bson_t *reply);

/* Wire constants aspen announces in hello. */
#define ASPEN_MIN_WIRE_VERSION 0
#define ASPEN_MAX_WIRE_VERSION 21
#define ASPEN_SERVER_VERSION "7.0.0"
#define ASPEN_VERSION "0.1.0"

/* ------------------------------------------------------------------------ */
/* The topology aspen presents in hello (topology.c)                         */
/* ------------------------------------------------------------------------ */

typedef struct aspen_topology aspen_topology_t;

/* Answers hello/isMaster (cmd_hello.c's handler): standalone-style, or
 * mongos-style when the backing deployment has sessions and transactions,
 * with serviceId for a loadBalanced hello; an awaitable hello (topologyVersion
 * + maxAwaitTimeMS) waits, and with exhaustAllowed streams its replies. */
aspen_handled_t aspen_topology_hello(aspen_request_t *req, bson_t *reply);
/* The backend facts hook (aspen_backend_set_facts_hook): answers hellos
 * waiting for the first facts, and wakes awaitable ones when they changed.
 * `arg` is the aspen_server_t. Loop thread. */
void aspen_topology_on_facts(void *arg, const aspen_backend_facts_t *facts);
/* Ends every waiting hello (their sessions are closing) and frees the
 * topology once its timer is closed. Loop thread; srv->topology is NULL
 * after it. */
void aspen_topology_shutdown(aspen_server_t *srv);

#endif /* ASPEN_PROXY_INT_H */
