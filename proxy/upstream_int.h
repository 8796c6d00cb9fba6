/*
 * upstream_int.h - the relay's parts inside proxy/ (see upstream.h): the
 * relay itself, its servers, cursors and command queues (upstream.c); one
 * backend connection, its socket, TLS and framing (upstream_conn.c); the
 * connection's handshake and login (upstream_login.c); and the OP_MSG aspen
 * sends and the labels of its own errors (upstream_msg.c).
 *
 * The parts call downwards only: the relay drives the login and the
 * connections, the login drives its connection, and a connection tells
 * the relay what happens to it through the relay's events (up_events_t),
 * never by name.
 *
 * Threading: loop thread only.
 */
#ifndef ASPEN_UPSTREAM_INT_H
#define ASPEN_UPSTREAM_INT_H

#include "upstream.h"
#include "scram.h"

#define ASPEN_UPSTREAM_COMPONENT "BACKEND"
#define CURSOR_BUCKETS 4096
#define KILL_IDS_MAX 8

typedef enum {
   UC_RESOLVING,
   UC_CONNECTING,
   UC_HELLO,
   UC_SASL_START,
   UC_SASL_KEYS,
   UC_SASL_CONTINUE,
   UC_SASL_FINAL,
   UC_IDLE,
   UC_BUSY,
   UC_CLOSED,
} uc_state_t;

typedef struct up_request up_request_t;
typedef struct up_conn up_conn_t;
typedef struct up_server up_server_t;

struct up_request {
   up_request_t *next;
   aspen_upstream_cb cb;
   void *arg;
   uint8_t *frame; /* the OP_MSG to send (request id set at send time) */
   size_t len;
   char name[48];
   up_server_t *pinned;  /* the cursor's server, or NULL */
   uint64_t deadline_ms; /* while waiting for a selectable server */
   int n_cursor_ids;     /* getMore: 1, killCursors: up to KILL_IDS_MAX */
   int64_t cursor_ids[KILL_IDS_MAX];
   bool is_kill;
   bson_t error; /* a failed request's reply, delivered by on_defer */
};

typedef struct {
   up_request_t *head, *tail;
   size_t n;
} req_queue_t;

struct up_server {
   up_server_t *next;
   char host[ASPEN_TOPO_HOST_MAX];
   uint16_t port;
   char name[ASPEN_TOPO_HOST_MAX + 8]; /* host:port, [v6]:port */
   up_conn_t *conns;                   /* every open connection */
   up_conn_t *idle;                    /* ready ones, most recent first */
   int n_conns;
   int n_opening;
   req_queue_t queue; /* commands waiting for a connection */
   uint64_t suspect_until_ms;
   bool down_logged;
};

struct up_conn {
   up_conn_t *prev, *next; /* the server's list */
   up_conn_t *next_idle;
   aspen_upstream_t *up;
   up_server_t *srv;
   char ctx[32];
   uv_tcp_t tcp;
   uv_connect_t creq;
   uv_getaddrinfo_t gai;
   uv_work_t work;
   int refs; /* open tcp handle, pending getaddrinfo, key derivation */
   bool tcp_open;
   bool counted_opening;
   uc_state_t state;
   aspen_tls_conn_t *tls;
   aspen_buf_t netbuf; /* ciphertext in (TLS only) */
   aspen_buf_t rbuf;   /* plaintext in */
   bool read_into_net;
   int32_t awaiting; /* requestId whose reply is expected */
   up_request_t *req;
   uint64_t deadline_ms; /* 0: none */
   uint64_t idle_since_ms;
   /* SCRAM */
   aspen_scram_mech_t mech;
   aspen_scram_client_t *scram;
   int32_t conversation_id;
   uint8_t salt[ASPEN_SCRAM_MAX_SALT];
   size_t salt_len;
   int iterations;
   aspen_scram_keys_t keys;
   aspen_error_t work_err;
   bool work_ok;
};

typedef struct cursor_ent {
   struct cursor_ent *next;
   int64_t id;
   up_server_t *srv;
   uint64_t used_ms;
} cursor_ent_t;

/* What happens to a connection, told to the relay (upstream.c), which
 * owns the commands, the servers' queues and the relay's memory. */
typedef struct {
   /* The TCP connection (and the TLS one, through it) is up: start the
    * handshake. */
   void (*connected)(up_conn_t *conn);
   /* A reply to what the connection sent came, `body` a view valid for the
    * call. */
   void (*reply)(up_conn_t *conn, const bson_t *body);
   /* The connection is unusable for `reason`; it is closed right after. */
   void (*failed)(up_conn_t *conn, int32_t code, const char *reason);
   /* A connection was freed (the relay may be freed with its last one). */
   void (*freed)(aspen_upstream_t *up);
} up_events_t;

struct aspen_upstream {
   const up_events_t *events;
   uv_loop_t *loop;
   mongoc_uri_t *uri;
   bool single; /* one server, no monitor */
   up_server_t *servers;
   aspen_topo_watch_t *watch;
   aspen_topo_t topo;
   bool have_topo;
   req_queue_t waiting; /* commands waiting for a selectable server */
   req_queue_t deferred; /* failed commands whose callbacks are due */
   aspen_tls_ctx_t *tls_ctx;
   bool backend_is_mongos;
   /* The latest $clusterTime the deployment sent (gossiped back to it in
    * place of the client's, as a mongos does). */
   bson_t cluster_time;
   bool has_cluster_time;
   uint32_t cluster_t, cluster_i;
   /* credentials (NULL user: none) */
   char *user;
   char *password;
   char *auth_source;
   bool mech_fixed;
   aspen_scram_mech_t mech;
   bool keys_cached;
   aspen_scram_mech_t keys_mech;
   uint8_t keys_salt[ASPEN_SCRAM_MAX_SALT];
   size_t keys_salt_len;
   int keys_iterations;
   aspen_scram_keys_t keys;
   /* limits */
   int max_pool;
   uint64_t connect_timeout_ms;
   uint64_t socket_timeout_ms;
   uint64_t selection_timeout_ms;
   uint64_t max_idle_ms;
   char appname[128];
   uv_timer_t sweep;
   uv_timer_t defer;
   uint64_t last_cursor_sweep_ms;
   int32_t next_request_id;
   uint64_t next_conn_id;
   cursor_ent_t *cursors[CURSOR_BUCKETS];
   size_t n_cursors;
   aspen_upstream_stats_t stats;
   bool destroying;
   int handles; /* timers and connections still to be closed and freed */
};

static inline uint64_t
aspen__upstream_now_ms(const aspen_upstream_t *up)
{
   return uv_now(up->loop);
}

/* ---- one connection (upstream_conn.c) ------------------------------------ */

/* Opens a new connection to `srv` (resolve, connect, TLS); the relay's
 * `connected` event follows, or `failed`. */
void aspen__upstream_conn_open(up_server_t *srv, aspen_upstream_t *up);
/* Closes a connection (idempotent). It is freed once its handle closed and
 * no getaddrinfo or key derivation refers to it. */
void aspen__upstream_conn_close(up_conn_t *conn);
/* The connection is unusable: the relay's `failed` event with `code` and
 * the reason, then it is closed. */
void aspen__upstream_conn_fail(up_conn_t *conn, int32_t code,
                               const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));
/* Drops one reference (a finished getaddrinfo or key derivation); a closed
 * connection is freed with its last one. */
void aspen__upstream_conn_release(up_conn_t *conn);
void aspen__upstream_conn_set_state(up_conn_t *conn, uc_state_t st);
const char *aspen__upstream_conn_state_name(uc_state_t st);
/* Sends a forwarded command on an idle connection (which becomes busy). */
void aspen__upstream_conn_send(up_conn_t *conn, up_request_t *req);
/* Sends one of aspen's own commands (handshake, SASL); false when the
 * connection failed. */
bool aspen__upstream_conn_send_doc(up_conn_t *conn, const bson_t *doc);

/* ---- handshake and login (upstream_login.c) ------------------------------ */

/* Sends the handshake (isMaster) on a connection just connected. */
void aspen__upstream_login_start(up_conn_t *conn);
/* A reply during the handshake or the SASL conversation: sends the next
 * step, or fails the connection. True when the connection is now ready
 * for commands (the handshake done and, with credentials, logged in). */
bool aspen__upstream_login_on_reply(up_conn_t *conn, const bson_t *body);

#endif /* ASPEN_UPSTREAM_INT_H */
