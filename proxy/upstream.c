/*
 * upstream.c - forwarding on the loop thread: a pool of non-blocking
 * connections to the backing deployment (see upstream.h).
 *
 * Per server (host:port) aspen keeps up to maxPoolSize connections (the URI
 * option, default 100). A forwarded command takes an idle connection, or
 * waits in the server's FIFO while a new one opens (only as many open at
 * once as commands wait) or while every connection is busy: concurrency to
 * the backend is bounded, and a session waiting for its reply reads no more
 * requests (session.c), so waiting is back-pressure on the client. One
 * command is in flight per connection, as drivers do; replies are matched
 * by responseTo, and a connection whose reply is late, mismatched or cut is
 * closed, never reused, so a reply can never be taken for another command's.
 *
 * A connection's life: resolve (uv_getaddrinfo, unless the host is an
 * address) -> connect -> [TLS client handshake over memory BIOs] -> isMaster
 * (OP_MSG, with saslSupportedMechs when there are credentials) -> [SCRAM:
 * saslStart, saslContinue; PBKDF2 runs on libuv's thread pool and its keys
 * are reused while the server sends the same salt] -> idle <-> busy ->
 * closed. Every step is a callback; nothing blocks the loop.
 *
 * What is sent: the client's OP_MSG, body and document sequences as they
 * came, minus
 *   - $clusterTime: aspen relays the backend's replies, so a client's
 *     $clusterTime is normally the backend's own, but it may come from
 *     another deployment (aspen restarted on another backend while the
 *     client kept its connection): its signature would then fail the
 *     server's check (KeyNotFound) for the backend user, who may not hold
 *     advanceClusterTime. In its place goes the latest $clusterTime the
 *     deployment itself sent (signed by it), as a mongos gossips its own:
 *     a server that is behind (another mongos, a new primary) learns the
 *     time the client may have seen. afterClusterTime in readConcern
 *     passes through.
 *   - $readPreference, unless the backend is a mongos: aspen always sends
 *     to the primary (or the one server), as the mongoc lanes did.
 * and with no flag bits (upstream.h: aspen_upstream_encode). The client's
 * lsid goes through unchanged, as through a mongos: every connection logs
 * in as the same backend user, so the server ties the session, its cursors
 * and transactions to (lsid, that user) whichever connection carries them.
 * With access control on, aspen's users all share that backend user, so
 * the lsid is replaced by one derived from it and the aspen user
 * (aspen_upstream_backend_lsid): one user's lsid never reaches another's
 * backend session, as mongod keys sessions by (lsid, user).
 * The reply's body is handed to the session as a view of the receive
 * buffer; the session frames it for the client with one copy.
 *
 * Cursors live on the server that opened them: with several servers
 * (replica set, mongos list) each cursor id seen in a reply is remembered
 * with its server, and getMore / killCursors for it go there whatever is
 * primary now. With one server there is nothing to remember.
 *
 * Transactions and retryable writes: aspen presents itself as a mongos when
 * the deployment has them (topology.c), so drivers send txnNumber,
 * startTransaction, autocommit, commitTransaction/abortTransaction and
 * recoveryToken; they go through with the lsid, and every command goes to
 * the primary (or the one server), where the server keeps the transaction
 * and its retryable-write record under (lsid, backend user) whichever pooled
 * connection carries them. Error labels (TransientTransactionError,
 * UnknownTransactionCommitResult, RetryableWriteError) in the server's
 * replies go back unchanged; aspen's own errors for a lost connection get
 * the labels a mongos would give them (router.c, aspen_upstream_error_labels).
 *
 * Errors: a server that cannot be reached, a connection that breaks or
 * times out, a failed login: the command gets HostUnreachable (6) or
 * NetworkTimeout (89) with the reason, never one of the codes that make a
 * driver drop its pool, and the next command tries a new connection. A
 * reply with a NotWritablePrimary-class code (or a broken connection) makes
 * aspen skip that server for a second or until mongoc's monitor reports a
 * new view, and asks the monitor to look again; the reply itself goes to
 * the client unchanged, as a mongos passes a shard's error on.
 */
#include "upstream.h"
#include "scram.h"

#include <stdlib.h>
#include <string.h>

#define COMPONENT "BACKEND"
#define READ_CHUNK 65536
#define DEFAULT_MAX_POOL 100
#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_SOCKET_TIMEOUT_MS 300000 /* mongoc's default */
#define DEFAULT_SERVER_SELECTION_MS 5000
#define SUSPECT_MS 1000
#define SWEEP_MS 250
#define CURSOR_BUCKETS 4096
#define CURSOR_IDLE_MS (11u * 60u * 1000u) /* mongod's cursor timeout + 1 */
#define REPLY_MAX ((size_t) ASPEN_WIRE_MAX_MESSAGE_LEN + 65536)
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

static const char *const uc_state_names[] = {
   "resolving", "connecting", "hello", "saslStart", "deriving keys",
   "saslContinue", "saslFinal", "idle", "busy", "closed",
};

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

struct aspen_upstream {
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

static void conn_ready(up_conn_t *conn);
static void on_defer(uv_timer_t *t);
static void conn_fail(up_conn_t *conn, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));
static void dispatch(aspen_upstream_t *up, up_request_t *req);
static void server_submit(up_server_t *srv, up_request_t *req);

/* ---- small helpers --------------------------------------------------------- */

static uint64_t
now_ms(const aspen_upstream_t *up)
{
   return uv_now(up->loop);
}

static void
queue_push(req_queue_t *q, up_request_t *req)
{
   req->next = NULL;
   if (q->tail) {
      q->tail->next = req;
   } else {
      q->head = req;
   }
   q->tail = req;
   q->n++;
}

static up_request_t *
queue_pop(req_queue_t *q)
{
   up_request_t *req = q->head;
   if (req) {
      q->head = req->next;
      if (!q->head) {
         q->tail = NULL;
      }
      q->n--;
      req->next = NULL;
   }
   return req;
}

static void
req_free(up_request_t *req)
{
   free(req->frame);
   bson_destroy(&req->error);
   free(req);
}

static void
maybe_free_up(aspen_upstream_t *up)
{
   if (up->destroying && up->handles == 0) {
      aspen_topo_cleanup(&up->topo);
      for (up_server_t *s = up->servers, *n; s; s = n) {
         n = s->next;
         free(s);
      }
      for (size_t b = 0; b < CURSOR_BUCKETS; b++) {
         for (cursor_ent_t *e = up->cursors[b], *n; e; e = n) {
            n = e->next;
            free(e);
         }
      }
      aspen_tls_ctx_destroy(up->tls_ctx);
      if (up->has_cluster_time) {
         bson_destroy(&up->cluster_time);
      }
      mongoc_uri_destroy(up->uri);
      free(up->user);
      if (up->password) {
         memset(up->password, 0, strlen(up->password));
      }
      free(up->password);
      free(up->auth_source);
      free(up);
   }
}

/* Fails a command: its callback gets {ok: 0, code, errmsg} from the defer
 * timer (never from inside the call that failed it, which may be
 * aspen_upstream_forward itself). */
static void
req_fail(aspen_upstream_t *up, up_request_t *req, int32_t code,
         const char *msg)
{
   bson_reinit(&req->error);
   aspen_reply_error(&req->error, code, "%s", msg);
   up->stats.failed++;
   queue_push(&up->deferred, req);
   if (!up->destroying) {
      uv_timer_start(&up->defer, on_defer, 0, 0);
   }
}

static void
run_deferred(aspen_upstream_t *up)
{
   up_request_t *req;
   while ((req = queue_pop(&up->deferred))) {
      if (req->cb) {
         req->cb(req->arg, &req->error);
      }
      req_free(req);
   }
}

static void
on_defer(uv_timer_t *t)
{
   run_deferred(t->data);
}

static void
fail_queue(aspen_upstream_t *up, req_queue_t *q, int32_t code,
           const char *msg)
{
   up_request_t *req;
   while ((req = queue_pop(q))) {
      req_fail(up, req, code, msg);
   }
}

/* ---- servers and cursors ----------------------------------------------------- */

static up_server_t *
server_get(aspen_upstream_t *up, const char *host, uint16_t port)
{
   for (up_server_t *s = up->servers; s; s = s->next) {
      if (s->port == port && strcmp(s->host, host) == 0) {
         return s;
      }
   }
   up_server_t *s = aspen_xcalloc(1, sizeof *s);
   snprintf(s->host, sizeof s->host, "%s", host);
   s->port = port;
   if (strchr(host, ':')) {
      snprintf(s->name, sizeof s->name, "[%s]:%u", host, (unsigned) port);
   } else {
      snprintf(s->name, sizeof s->name, "%s:%u", host, (unsigned) port);
   }
   s->next = up->servers;
   up->servers = s;
   return s;
}

static size_t
cursor_bucket(int64_t id)
{
   uint64_t h = (uint64_t) id * 0x9e3779b97f4a7c15ull;
   return (size_t) (h >> 52) % CURSOR_BUCKETS;
}

static cursor_ent_t **
cursor_slot(aspen_upstream_t *up, int64_t id)
{
   cursor_ent_t **pp = &up->cursors[cursor_bucket(id)];
   while (*pp && (*pp)->id != id) {
      pp = &(*pp)->next;
   }
   return pp;
}

static void
cursor_put(aspen_upstream_t *up, int64_t id, up_server_t *srv)
{
   cursor_ent_t **pp = cursor_slot(up, id);
   if (!*pp) {
      *pp = aspen_xcalloc(1, sizeof **pp);
      (*pp)->id = id;
      up->n_cursors++;
   }
   (*pp)->srv = srv;
   (*pp)->used_ms = now_ms(up);
}

static up_server_t *
cursor_get(aspen_upstream_t *up, int64_t id)
{
   cursor_ent_t *e = *cursor_slot(up, id);
   if (!e) {
      return NULL;
   }
   e->used_ms = now_ms(up);
   return e->srv;
}

static void
cursor_forget(aspen_upstream_t *up, int64_t id)
{
   cursor_ent_t **pp = cursor_slot(up, id);
   if (*pp) {
      cursor_ent_t *e = *pp;
      *pp = e->next;
      free(e);
      up->n_cursors--;
   }
}

/* Drops cursors unused for longer than mongod keeps an idle cursor. */
static void
cursor_sweep(aspen_upstream_t *up, uint64_t now)
{
   for (size_t b = 0; b < CURSOR_BUCKETS; b++) {
      cursor_ent_t **pp = &up->cursors[b];
      while (*pp) {
         if (now - (*pp)->used_ms > CURSOR_IDLE_MS) {
            cursor_ent_t *e = *pp;
            *pp = e->next;
            free(e);
            up->n_cursors--;
         } else {
            pp = &(*pp)->next;
         }
      }
   }
}

/* Marks a server as not to be chosen for a while (multi-host only) and asks
 * the monitor to look at it again. */
static void
server_suspect(aspen_upstream_t *up, up_server_t *srv)
{
   if (up->single || up->destroying) {
      return;
   }
   srv->suspect_until_ms = now_ms(up) + SUSPECT_MS;
   if (up->watch) {
      aspen_topo_watch_refresh(up->watch, srv->host, srv->port);
   }
}

/* The server a command needing the primary goes to now, or NULL. */
static up_server_t *
select_server(aspen_upstream_t *up)
{
   if (up->single) {
      return up->servers;
   }
   if (!up->have_topo || up->topo.n == 0) {
      return NULL;
   }
   bool skip_local[16];
   bool *skip = up->topo.n <= 16 ? skip_local
                                 : aspen_xcalloc(up->topo.n, sizeof *skip);
   uint64_t now = now_ms(up);
   for (size_t i = 0; i < up->topo.n; i++) {
      up_server_t *s = server_get(up, up->topo.servers[i].host,
                                  up->topo.servers[i].port);
      skip[i] = s->suspect_until_ms > now;
   }
   int idx = aspen_topo_select(&up->topo, skip);
   if (skip != skip_local) {
      free(skip);
   }
   if (idx < 0) {
      return NULL;
   }
   return server_get(up, up->topo.servers[idx].host,
                     up->topo.servers[idx].port);
}

/* ---- connection plumbing ------------------------------------------------------ */

static void
conn_free(up_conn_t *conn)
{
   aspen_upstream_t *up = conn->up;
   aspen_tls_conn_destroy(conn->tls);
   aspen_scram_client_destroy(conn->scram);
   aspen_buf_cleanup(&conn->netbuf);
   aspen_buf_cleanup(&conn->rbuf);
   memset(&conn->keys, 0, sizeof conn->keys);
   free(conn);
   up->handles--;
   maybe_free_up(up);
}

/* Drops one reference (a closed handle, a finished getaddrinfo or key
 * derivation); a closed connection is freed with its last one. */
static void
conn_release(up_conn_t *conn)
{
   ASPEN_ASSERT(conn->refs > 0);
   if (--conn->refs == 0 && conn->state == UC_CLOSED) {
      conn_free(conn);
   }
}

static void
on_tcp_closed(uv_handle_t *h)
{
   conn_release(h->data);
}

static void
idle_remove(up_conn_t *conn)
{
   for (up_conn_t **pp = &conn->srv->idle; *pp; pp = &(*pp)->next_idle) {
      if (*pp == conn) {
         *pp = conn->next_idle;
         conn->next_idle = NULL;
         return;
      }
   }
}

static void
set_state(up_conn_t *conn, uc_state_t st)
{
   if (aspen_log_enabled(ASPEN_LOG_DEBUG)) {
      aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, conn->ctx,
                 "backend connection to %s: %s -> %s", conn->srv->name,
                 uc_state_names[conn->state], uc_state_names[st]);
   }
   conn->state = st;
}

/* Closes a connection (idempotent). It is freed once its handle closed and
 * no getaddrinfo or key derivation refers to it. */
static void
conn_close(up_conn_t *conn)
{
   if (conn->state == UC_CLOSED) {
      return;
   }
   up_server_t *srv = conn->srv;
   if (conn->state == UC_IDLE) {
      idle_remove(conn);
   }
   if (conn->counted_opening) {
      conn->counted_opening = false;
      srv->n_opening--;
   }
   set_state(conn, UC_CLOSED);
   if (conn->prev) {
      conn->prev->next = conn->next;
   } else {
      srv->conns = conn->next;
   }
   if (conn->next) {
      conn->next->prev = conn->prev;
   }
   conn->prev = conn->next = NULL;
   srv->n_conns--;
   conn->up->stats.open_now--;
   if (conn->tcp_open) {
      conn->tcp_open = false;
      uv_close((uv_handle_t *) &conn->tcp, on_tcp_closed);
   } else if (conn->refs == 0) {
      conn_free(conn);
   }
}

typedef struct {
   uv_write_t req;
   up_conn_t *conn;
   uint8_t *data;
} write_req_t;

static void
on_write(uv_write_t *req, int status)
{
   write_req_t *w = (write_req_t *) req;
   up_conn_t *conn = w->conn;
   free(w->data);
   free(w);
   if (status < 0 && status != UV_ECANCELED && conn->state != UC_CLOSED) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "write failed: %s",
                uv_strerror(status));
   }
}

/* Writes bytes (owned) to the socket as they are. False when the
 * connection failed (it is closed then). */
static bool
conn_write_raw(up_conn_t *conn, uint8_t *data, size_t len)
{
   /* Most commands fit in the socket buffer at once: then no write request,
    * no callback and no extra loop iteration for it. */
   uv_buf_t b = uv_buf_init((char *) data, (unsigned) len);
   int n = uv_try_write((uv_stream_t *) &conn->tcp, &b, 1);
   if (n == (int) len) {
      free(data);
      return true;
   }
   size_t done = 0;
   if (n > 0) {
      done = (size_t) n;
   } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
      free(data);
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "write failed: %s",
                uv_strerror(n));
      return false;
   }
   write_req_t *w = aspen_xmalloc(sizeof *w);
   w->conn = conn;
   w->data = data; /* freed whole in on_write */
   b = uv_buf_init((char *) data + done, (unsigned) (len - done));
   int rc = uv_write(&w->req, (uv_stream_t *) &conn->tcp, &b, 1, on_write);
   if (rc < 0) {
      free(data);
      free(w);
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "write failed: %s",
                uv_strerror(rc));
      return false;
   }
   return true;
}

/* Writes wire bytes (owned; through TLS when on). False when the connection
 * failed (it is closed then). */
static bool
conn_write(up_conn_t *conn, uint8_t *data, size_t len)
{
   if (conn->tls) {
      aspen_buf_t cipher;
      aspen_error_t err;
      aspen_buf_init(&cipher);
      bool ok = aspen_tls_conn_write(conn->tls, data, len, &cipher, &err);
      free(data);
      data = aspen_buf_steal(&cipher, &len);
      aspen_buf_cleanup(&cipher);
      if (!ok) {
         free(data);
         conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s", err.message);
         return false;
      }
      if (!data) {
         return true; /* queued until the TLS handshake is done */
      }
   }
   return conn_write_raw(conn, data, len);
}

/* Sends one of aspen's own commands (handshake, SASL) on `conn`. */
static bool
conn_send_doc(up_conn_t *conn, const bson_t *doc)
{
   aspen_buf_t out;
   size_t len;
   aspen_buf_init(&out);
   conn->awaiting = ++conn->up->next_request_id;
   aspen_reply_op_msg(&out, conn->awaiting, 0, doc);
   uint8_t *data = aspen_buf_steal(&out, &len);
   aspen_buf_cleanup(&out);
   return conn_write(conn, data, len);
}

static void
put_le32(uint8_t *p, uint32_t v)
{
   p[0] = (uint8_t) v;
   p[1] = (uint8_t) (v >> 8);
   p[2] = (uint8_t) (v >> 16);
   p[3] = (uint8_t) (v >> 24);
}

static uint32_t
get_le32(const uint8_t *p)
{
   return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
          (uint32_t) p[3] << 24;
}

/* Sends a forwarded command on an idle connection. */
static void
conn_send(up_conn_t *conn, up_request_t *req)
{
   aspen_upstream_t *up = conn->up;
   set_state(conn, UC_BUSY);
   conn->req = req;
   conn->awaiting = ++up->next_request_id;
   conn->deadline_ms =
      up->socket_timeout_ms ? now_ms(up) + up->socket_timeout_ms : 0;
   put_le32(req->frame + 4, (uint32_t) conn->awaiting);
   uint8_t *data = req->frame;
   size_t len = req->len;
   req->frame = NULL;
   up->stats.forwarded++;
   conn_write(conn, data, len);
}

/* ---- failures --------------------------------------------------------------- */

/* The connection is unusable: its command (if any) fails with `code` and
 * the reason, as do the commands waiting for this server when it never got
 * ready (the server cannot be reached: waiting would not help), and it is
 * closed. */
static void
conn_fail(up_conn_t *conn, int32_t code, const char *fmt, ...)
{
   if (conn->state == UC_CLOSED) {
      return;
   }
   aspen_upstream_t *up = conn->up;
   up_server_t *srv = conn->srv;
   char reason[ASPEN_ERROR_MSG_MAX / 2];
   char msg[ASPEN_ERROR_MSG_MAX];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(reason, sizeof reason, fmt, ap);
   va_end(ap);
   bool opening = conn->state < UC_IDLE;
   if (conn->req) {
      up_request_t *req = conn->req;
      conn->req = NULL;
      snprintf(msg, sizeof msg,
               "aspen lost its connection to the backing MongoDB deployment "
               "(%s) while running '%s': %s",
               srv->name, req->name, reason);
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, conn->ctx, "%s", msg);
      req_fail(up, req, code, msg);
   }
   if (opening) {
      snprintf(msg, sizeof msg,
               "aspen could not reach the backing MongoDB deployment at %s: "
               "%s",
               srv->name, reason);
      if (!srv->down_logged) {
         srv->down_logged = true;
         aspen_logf(ASPEN_LOG_WARNING, COMPONENT, conn->ctx, "%s", msg);
      }
      /* Other connections still opening may yet succeed; the last one to
       * fail answers the commands waiting. */
      if (srv->n_opening <= 1) {
         fail_queue(up, &srv->queue, code, msg);
      }
   }
   server_suspect(up, srv);
   conn_close(conn);
}

/* ---- reading ----------------------------------------------------------------- */

/* The body of an OP_MSG reply, as a view. Exhaust replies never come
 * (aspen never sets exhaustAllowed), and mongod replies with a single
 * kind-0 section; anything else is a protocol error. The body is not
 * validated here: aspen reads a few top-level fields with bson_iter, which
 * checks bounds, and the client validates what it receives. */
static bool
reply_body(const aspen_frame_t *f, bson_t *body, const char **why)
{
   if (f->op_code != ASPEN_OP_MSG) {
      *why = "reply is not an OP_MSG";
      return false;
   }
   if (f->body_len < 4 + 1 + 5) {
      *why = "reply is too short";
      return false;
   }
   uint32_t flags = get_le32(f->body);
   size_t avail = f->body_len - 5 -
                  ((flags & ASPEN_OP_MSG_CHECKSUM_PRESENT) ? 4 : 0);
   if (flags & ASPEN_OP_MSG_MORE_TO_COME) {
      *why = "reply has moreToCome, which aspen never allows";
      return false;
   }
   if (f->body[4] != 0) {
      *why = "reply does not start with a body section";
      return false;
   }
   uint32_t doc_len = get_le32(f->body + 5);
   if (doc_len < 5 || doc_len > avail ||
       !bson_init_static(body, f->body + 5, doc_len)) {
      *why = "reply body has a bad length";
      return false;
   }
   return true;
}

static int32_t
reply_code(const bson_t *body, bool *ok)
{
   bson_iter_t it;
   int32_t code = 0;
   *ok = false;
   if (bson_iter_init(&it, body)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "ok") == 0) {
            *ok = bson_iter_as_double(&it) == 1.0;
         } else if (strcmp(k, "code") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
            code = (int32_t) bson_iter_as_int64(&it);
         }
      }
   }
   return code;
}

static const char *
reply_errmsg(const bson_t *body)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, body, "errmsg") && BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return "no errmsg";
}

/* The codes after which a driver would stop taking this server for the
 * primary (the SDAM "not writable primary" and "node is recovering" ones). */
static bool
is_state_change_code(int32_t code)
{
   switch (code) {
   case 10107: /* NotWritablePrimary */
   case 13435: /* NotPrimaryNoSecondaryOk */
   case 10058: /* LegacyNotPrimary */
   case 13436: /* NotPrimaryOrSecondary */
   case 189:   /* PrimarySteppedDown */
   case 11602: /* InterruptedDueToReplStateChange */
   case 11600: /* InterruptedAtShutdown */
   case 91:    /* ShutdownInProgress */
      return true;
   default:
      return false;
   }
}

/* Keeps a reply's $clusterTime when it is later than the one held: the
 * next forwarded command carries it, so every server of the deployment
 * (several mongos, a new primary) learns the latest time a client may have
 * seen, as mongos gossips it. */
static void
note_cluster_time(aspen_upstream_t *up, const bson_iter_t *it)
{
   bson_iter_t sub;
   uint32_t t = 0, i = 0;
   if (!bson_iter_recurse(it, &sub) || !bson_iter_find(&sub, "clusterTime") ||
       !BSON_ITER_HOLDS_TIMESTAMP(&sub)) {
      return;
   }
   bson_iter_timestamp(&sub, &t, &i);
   if (up->has_cluster_time &&
       (t < up->cluster_t || (t == up->cluster_t && i <= up->cluster_i))) {
      return;
   }
   bson_t doc;
   if (!aspen_bson_view(it, &doc)) {
      return;
   }
   if (up->has_cluster_time) {
      bson_destroy(&up->cluster_time);
   }
   bson_copy_to(&doc, &up->cluster_time);
   up->has_cluster_time = true;
   up->cluster_t = t;
   up->cluster_i = i;
}

/* Looks at what a reply says about the server and the cursors. */
static void
inspect_reply(up_conn_t *conn, const up_request_t *req, const bson_t *body)
{
   aspen_upstream_t *up = conn->up;
   bson_iter_t it, sub;
   int32_t code = 0;
   int64_t cursor_id = -1;
   bool ok = false;
   if (!bson_iter_init(&it, body)) {
      return;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "ok") == 0) {
         ok = bson_iter_as_double(&it) == 1.0;
      } else if (strcmp(k, "code") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
         code = (int32_t) bson_iter_as_int64(&it);
      } else if (strcmp(k, "writeConcernError") == 0 &&
                 BSON_ITER_HOLDS_DOCUMENT(&it) &&
                 bson_iter_recurse(&it, &sub) &&
                 bson_iter_find(&sub, "code") &&
                 BSON_ITER_HOLDS_NUMBER(&sub) &&
                 is_state_change_code((int32_t) bson_iter_as_int64(&sub))) {
         code = (int32_t) bson_iter_as_int64(&sub);
      } else if (k[0] == '$' && strcmp(k, "$clusterTime") == 0 &&
                 BSON_ITER_HOLDS_DOCUMENT(&it)) {
         note_cluster_time(up, &it);
      } else if (!up->single && strcmp(k, "cursor") == 0 &&
                 BSON_ITER_HOLDS_DOCUMENT(&it) &&
                 bson_iter_recurse(&it, &sub) && bson_iter_find(&sub, "id") &&
                 BSON_ITER_HOLDS_NUMBER(&sub)) {
         cursor_id = bson_iter_as_int64(&sub);
      }
   }
   if (is_state_change_code(code) && !up->single) {
      aspen_logf(ASPEN_LOG_INFO, COMPONENT, conn->ctx,
                 "%s answered '%s' with code %d: choosing the primary again",
                 conn->srv->name, req->name, code);
      server_suspect(up, conn->srv);
   }
   if (up->single) {
      return;
   }
   if (cursor_id > 0) {
      cursor_put(up, cursor_id, conn->srv);
   }
   if (req->is_kill || (req->n_cursor_ids == 1 && (cursor_id == 0 ||
                                                   (!ok && code == 43)))) {
      for (int i = 0; i < req->n_cursor_ids; i++) {
         cursor_forget(up, req->cursor_ids[i]);
      }
   }
}

static void handle_hello(up_conn_t *conn, const bson_t *body);
static void handle_sasl(up_conn_t *conn, const bson_t *body);

static void
handle_reply(up_conn_t *conn, const bson_t *body)
{
   up_request_t *req = conn->req;
   conn->req = NULL;
   conn->deadline_ms = 0;
   inspect_reply(conn, req, body);
   /* The connection serves the next waiting command before this reply's
    * session runs (and perhaps forwards its next one): first come, first
    * served. */
   conn_ready(conn);
   if (req->cb) {
      req->cb(req->arg, body);
   }
   req_free(req);
}

static void
conn_process(up_conn_t *conn)
{
   while (conn->state != UC_CLOSED) {
      aspen_frame_t f;
      aspen_error_t err;
      aspen_parse_result_t r =
         aspen_frame_parse(aspen_buf_data(&conn->rbuf),
                           aspen_buf_len(&conn->rbuf), REPLY_MAX, &f, &err);
      if (r == ASPEN_PARSE_NEED_MORE) {
         return;
      }
      if (r == ASPEN_PARSE_ERROR) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable, "bad reply: %s",
                   err.message);
         return;
      }
      bson_t body;
      const char *why = NULL;
      if (f.response_to != conn->awaiting || conn->awaiting == 0) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable,
                   "a reply to request %d came while waiting for %d",
                   f.response_to, conn->awaiting);
         return;
      }
      if (!reply_body(&f, &body, &why)) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s", why);
         return;
      }
      conn->awaiting = 0;
      switch (conn->state) {
      case UC_HELLO:
         handle_hello(conn, &body);
         break;
      case UC_SASL_START:
      case UC_SASL_CONTINUE:
      case UC_SASL_FINAL:
         handle_sasl(conn, &body);
         break;
      case UC_BUSY:
         handle_reply(conn, &body);
         break;
      default:
         conn_fail(conn, ASPEN_ERR_HostUnreachable,
                   "unexpected reply while %s", uc_state_names[conn->state]);
         return;
      }
      /* The reply was a view into rbuf, which nothing refills during the
       * callbacks (reads only come from the loop). */
      if (conn->state != UC_CLOSED) {
         aspen_buf_consume(&conn->rbuf, (size_t) f.message_length);
      }
   }
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
   up_conn_t *conn = h->data;
   (void) suggested;
   aspen_buf_t *target = conn->tls ? &conn->netbuf : &conn->rbuf;
   conn->read_into_net = conn->tls != NULL;
   size_t want = READ_CHUNK;
   /* A large reply: read what its header announces in big steps. */
   if (!conn->tls && aspen_buf_len(&conn->rbuf) >= 4) {
      size_t announced = get_le32(aspen_buf_data(&conn->rbuf));
      size_t have = aspen_buf_len(&conn->rbuf);
      if (announced > have + READ_CHUNK && announced <= REPLY_MAX) {
         want = announced - have;
         if (want > 4u * 1024 * 1024) {
            want = 4u * 1024 * 1024;
         }
      }
   }
   buf->base = (char *) aspen_buf_reserve(target, want);
   buf->len = want;
}

static void
on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
   up_conn_t *conn = stream->data;
   (void) buf;
   if (nread == 0 || conn->state == UC_CLOSED) {
      return;
   }
   if (nread < 0) {
      if (conn->state == UC_IDLE) {
         /* The server closed an idle connection (a restart, an idle
          * timeout): forget it quietly; the next command opens another. */
         aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, conn->ctx,
                    "idle backend connection to %s closed: %s",
                    conn->srv->name, uv_strerror((int) nread));
         conn_close(conn);
         return;
      }
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s",
                nread == UV_EOF ? "the server closed the connection"
                                : uv_strerror((int) nread));
      return;
   }
   if (conn->read_into_net) {
      aspen_buf_commit(&conn->netbuf, (size_t) nread);
   } else {
      aspen_buf_commit(&conn->rbuf, (size_t) nread);
   }
   if (conn->tls) {
      aspen_buf_t cipher_out;
      aspen_error_t err;
      bool peer_closed = false;
      aspen_buf_init(&cipher_out);
      bool ok = aspen_tls_conn_feed(conn->tls, aspen_buf_data(&conn->netbuf),
                                    aspen_buf_len(&conn->netbuf), &conn->rbuf,
                                    &cipher_out, &peer_closed, &err);
      aspen_buf_clear(&conn->netbuf);
      size_t len;
      uint8_t *data = aspen_buf_steal(&cipher_out, &len);
      aspen_buf_cleanup(&cipher_out);
      if (data && !conn_write_raw(conn, data, len)) {
         return;
      }
      if (!ok) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s", err.message);
         return;
      }
      if (peer_closed) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable,
                   "the server closed the TLS connection");
         return;
      }
   }
   if (conn->state == UC_IDLE && aspen_buf_len(&conn->rbuf) > 0) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable,
                "the server sent bytes nobody asked for");
      return;
   }
   conn_process(conn);
}

/* ---- handshake and login ------------------------------------------------------ */

static void
send_hello(up_conn_t *conn)
{
   aspen_upstream_t *up = conn->up;
   bson_t doc = BSON_INITIALIZER, client, sub;
   BSON_APPEND_INT32(&doc, "isMaster", 1);
   BSON_APPEND_BOOL(&doc, "helloOk", true);
   BSON_APPEND_DOCUMENT_BEGIN(&doc, "client", &client);
   if (up->appname[0]) {
      BSON_APPEND_DOCUMENT_BEGIN(&client, "application", &sub);
      BSON_APPEND_UTF8(&sub, "name", up->appname);
      bson_append_document_end(&client, &sub);
   }
   BSON_APPEND_DOCUMENT_BEGIN(&client, "driver", &sub);
   BSON_APPEND_UTF8(&sub, "name", "aspen relay");
   BSON_APPEND_UTF8(&sub, "version", ASPEN_VERSION);
   bson_append_document_end(&client, &sub);
   BSON_APPEND_DOCUMENT_BEGIN(&client, "os", &sub);
   BSON_APPEND_UTF8(&sub, "type", "Linux");
   bson_append_document_end(&client, &sub);
   bson_append_document_end(&doc, &client);
   if (up->user && !up->mech_fixed) {
      char who[512];
      snprintf(who, sizeof who, "%s.%s", up->auth_source, up->user);
      BSON_APPEND_UTF8(&doc, "saslSupportedMechs", who);
   }
   BSON_APPEND_UTF8(&doc, "$db", "admin");
   set_state(conn, UC_HELLO);
   conn_send_doc(conn, &doc);
   bson_destroy(&doc);
}

static void
conn_established(up_conn_t *conn)
{
   up_server_t *srv = conn->srv;
   if (conn->counted_opening) {
      conn->counted_opening = false;
      srv->n_opening--;
   }
   conn->deadline_ms = 0;
   conn->up->stats.opened++;
   aspen_scram_client_destroy(conn->scram);
   conn->scram = NULL;
   memset(&conn->keys, 0, sizeof conn->keys);
   if (srv->down_logged) {
      srv->down_logged = false;
      aspen_logf(ASPEN_LOG_INFO, COMPONENT, conn->ctx,
                 "the backing MongoDB deployment at %s is reachable again",
                 srv->name);
   }
   conn_ready(conn);
}

static void sasl_continue(up_conn_t *conn);

static void
sasl_start(up_conn_t *conn)
{
   aspen_upstream_t *up = conn->up;
   char first[ASPEN_SCRAM_MSG_MAX];
   aspen_error_t err;
   conn->scram = aspen_scram_client_new(conn->mech);
   size_t n = aspen_scram_client_first(conn->scram, up->user, first, &err);
   if (n == 0) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "cannot log in: %s",
                err.message);
      return;
   }
   bson_t doc = BSON_INITIALIZER, opts;
   BSON_APPEND_INT32(&doc, "saslStart", 1);
   BSON_APPEND_UTF8(&doc, "mechanism", aspen_scram_mech_name(conn->mech));
   bson_append_binary(&doc, "payload", -1, BSON_SUBTYPE_BINARY,
                      (const uint8_t *) first, (uint32_t) n);
   BSON_APPEND_INT32(&doc, "autoAuthorize", 1);
   BSON_APPEND_DOCUMENT_BEGIN(&doc, "options", &opts);
   BSON_APPEND_BOOL(&opts, "skipEmptyExchange", true);
   bson_append_document_end(&doc, &opts);
   BSON_APPEND_UTF8(&doc, "$db", up->auth_source);
   set_state(conn, UC_SASL_START);
   conn_send_doc(conn, &doc);
   bson_destroy(&doc);
}

static void
handle_hello(up_conn_t *conn, const bson_t *body)
{
   aspen_upstream_t *up = conn->up;
   bool ok;
   int32_t code = reply_code(body, &ok);
   bson_iter_t it, arr;
   if (!ok) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable,
                "the handshake failed: %s (code %d)", reply_errmsg(body),
                code);
      return;
   }
   int64_t max_wire = 0;
   if (bson_iter_init_find(&it, body, "maxWireVersion") &&
       BSON_ITER_HOLDS_NUMBER(&it)) {
      max_wire = bson_iter_as_int64(&it);
   }
   if (max_wire < 6) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable,
                "the server's maxWireVersion is %lld: aspen needs OP_MSG "
                "(MongoDB 3.6 or later)",
                (long long) max_wire);
      return;
   }
   if (bson_iter_init_find(&it, body, "msg") && BSON_ITER_HOLDS_UTF8(&it) &&
       strcmp(bson_iter_utf8(&it, NULL), "isdbgrid") == 0) {
      up->backend_is_mongos = true;
   }
   if (!up->user) {
      conn_established(conn);
      return;
   }
   conn->mech = up->mech;
   if (!up->mech_fixed) {
      /* SCRAM-SHA-256 when the server has it for this user, else SHA-1. */
      conn->mech = ASPEN_SCRAM_SHA_1;
      if (bson_iter_init_find(&it, body, "saslSupportedMechs") &&
          BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &arr)) {
         while (bson_iter_next(&arr)) {
            if (BSON_ITER_HOLDS_UTF8(&arr) &&
                strcmp(bson_iter_utf8(&arr, NULL), "SCRAM-SHA-256") == 0) {
               conn->mech = ASPEN_SCRAM_SHA_256;
            }
         }
      }
   }
   sasl_start(conn);
}

/* Libuv's thread pool: PBKDF2 for a salt the cache does not hold. */
static void
derive_work(uv_work_t *w)
{
   up_conn_t *conn = w->data;
   conn->work_ok = aspen_scram_keys_derive(
      conn->mech, conn->up->user, conn->up->password, conn->salt,
      conn->salt_len, conn->iterations, &conn->keys, &conn->work_err);
}

static void
derive_done(uv_work_t *w, int status)
{
   up_conn_t *conn = w->data;
   aspen_upstream_t *up = conn->up;
   if (conn->state == UC_CLOSED || status != 0) {
      conn_release(conn);
      return;
   }
   if (!conn->work_ok) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "cannot log in: %s",
                conn->work_err.message);
      conn_release(conn);
      return;
   }
   up->keys_cached = true;
   up->keys_mech = conn->mech;
   memcpy(up->keys_salt, conn->salt, conn->salt_len);
   up->keys_salt_len = conn->salt_len;
   up->keys_iterations = conn->iterations;
   up->keys = conn->keys;
   sasl_continue(conn);
   conn_release(conn);
}

static void
sasl_continue(up_conn_t *conn)
{
   char final[ASPEN_SCRAM_MSG_MAX];
   size_t n = aspen_scram_client_final(conn->scram, &conn->keys, final);
   bson_t doc = BSON_INITIALIZER;
   BSON_APPEND_INT32(&doc, "saslContinue", 1);
   BSON_APPEND_INT32(&doc, "conversationId", conn->conversation_id);
   bson_append_binary(&doc, "payload", -1, BSON_SUBTYPE_BINARY,
                      (const uint8_t *) final, (uint32_t) n);
   BSON_APPEND_UTF8(&doc, "$db", conn->up->auth_source);
   set_state(conn, UC_SASL_CONTINUE);
   conn_send_doc(conn, &doc);
   bson_destroy(&doc);
}

static void
handle_sasl(up_conn_t *conn, const bson_t *body)
{
   aspen_upstream_t *up = conn->up;
   bool ok;
   int32_t code = reply_code(body, &ok);
   aspen_error_t err;
   if (!ok) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable,
                "cannot log in as '%s' (%s on %s): %s (code %d)", up->user,
                aspen_scram_mech_name(conn->mech), up->auth_source,
                reply_errmsg(body), code);
      return;
   }
   bson_iter_t it;
   const uint8_t *payload = NULL;
   uint32_t plen = 0;
   bool done = false;
   if (bson_iter_init(&it, body)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "payload") == 0 && BSON_ITER_HOLDS_BINARY(&it)) {
            bson_subtype_t st;
            bson_iter_binary(&it, &st, &plen, &payload);
         } else if (strcmp(k, "conversationId") == 0 &&
                    BSON_ITER_HOLDS_NUMBER(&it)) {
            conn->conversation_id = (int32_t) bson_iter_as_int64(&it);
         } else if (strcmp(k, "done") == 0) {
            done = bson_iter_as_bool(&it);
         }
      }
   }
   if (conn->state == UC_SASL_START) {
      if (!payload ||
          !aspen_scram_client_challenge(conn->scram, payload, plen,
                                        conn->salt, &conn->salt_len,
                                        &conn->iterations, &err)) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable,
                   "cannot log in as '%s': %s", up->user,
                   payload ? err.message : "saslStart reply has no payload");
         return;
      }
      if (up->keys_cached && up->keys_mech == conn->mech &&
          up->keys_iterations == conn->iterations &&
          up->keys_salt_len == conn->salt_len &&
          memcmp(up->keys_salt, conn->salt, conn->salt_len) == 0) {
         conn->keys = up->keys;
         sasl_continue(conn);
         return;
      }
      set_state(conn, UC_SASL_KEYS);
      conn->work.data = conn;
      conn->refs++;
      if (uv_queue_work(up->loop, &conn->work, derive_work, derive_done) !=
          0) {
         conn->refs--;
         conn_fail(conn, ASPEN_ERR_HostUnreachable,
                   "cannot log in: no worker thread for PBKDF2");
      }
      return;
   }
   if (conn->state == UC_SASL_CONTINUE) {
      if (!payload ||
          !aspen_scram_client_verify(conn->scram, payload, plen, &err)) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable,
                   "cannot log in as '%s': %s", up->user,
                   payload ? err.message : "saslContinue reply has no payload");
         return;
      }
   }
   if (done) {
      conn_established(conn);
      return;
   }
   /* A server that ignores skipEmptyExchange wants one empty step more. */
   if (conn->state == UC_SASL_FINAL) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable,
                "cannot log in as '%s': the conversation does not end",
                up->user);
      return;
   }
   bson_t doc = BSON_INITIALIZER;
   BSON_APPEND_INT32(&doc, "saslContinue", 1);
   BSON_APPEND_INT32(&doc, "conversationId", conn->conversation_id);
   bson_append_binary(&doc, "payload", -1, BSON_SUBTYPE_BINARY,
                      (const uint8_t *) "", 0);
   BSON_APPEND_UTF8(&doc, "$db", up->auth_source);
   set_state(conn, UC_SASL_FINAL);
   conn_send_doc(conn, &doc);
   bson_destroy(&doc);
}

/* ---- opening ---------------------------------------------------------------------- */

static void
on_connect(uv_connect_t *creq, int status)
{
   up_conn_t *conn = creq->data;
   if (status == UV_ECANCELED || conn->state == UC_CLOSED) {
      return;
   }
   if (status < 0) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "connect: %s",
                uv_strerror(status));
      return;
   }
   uv_tcp_nodelay(&conn->tcp, 1);
   uv_tcp_keepalive(&conn->tcp, 1, 120);
   int rc = uv_read_start((uv_stream_t *) &conn->tcp, on_alloc, on_read);
   if (rc < 0) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "read: %s", uv_strerror(rc));
      return;
   }
   if (conn->up->tls_ctx) {
      aspen_buf_t hello;
      aspen_error_t err;
      conn->tls = aspen_tls_conn_new(conn->up->tls_ctx, false, conn->srv->host);
      if (!conn->tls) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable,
                   "cannot start TLS to this host name");
         return;
      }
      aspen_buf_init(&hello);
      bool ok = aspen_tls_conn_start(conn->tls, &hello, &err);
      size_t len;
      uint8_t *data = aspen_buf_steal(&hello, &len);
      aspen_buf_cleanup(&hello);
      if (!ok) {
         free(data);
         conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s", err.message);
         return;
      }
      if (data && !conn_write_raw(conn, data, len)) {
         return; /* the ClientHello */
      }
   }
   /* Through TLS this is queued until the handshake is done. */
   send_hello(conn);
}

static void
start_connect(up_conn_t *conn, const struct sockaddr *sa)
{
   int rc = uv_tcp_init(conn->up->loop, &conn->tcp);
   if (rc < 0) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "socket: %s",
                uv_strerror(rc));
      return;
   }
   conn->tcp.data = conn;
   conn->tcp_open = true;
   conn->refs++;
   set_state(conn, UC_CONNECTING);
   conn->creq.data = conn;
   rc = uv_tcp_connect(&conn->creq, &conn->tcp, sa, on_connect);
   if (rc < 0) {
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "connect: %s",
                uv_strerror(rc));
   }
}

static void
on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
   up_conn_t *conn = gai->data;
   if (conn->state != UC_CLOSED) {
      if (status < 0 || !res) {
         conn_fail(conn, ASPEN_ERR_HostUnreachable, "cannot resolve %s: %s",
                   conn->srv->host, uv_strerror(status));
      } else {
         start_connect(conn, res->ai_addr);
      }
   }
   uv_freeaddrinfo(res);
   conn_release(conn);
}

static void
conn_open(up_server_t *srv, aspen_upstream_t *up)
{
   up_conn_t *conn = aspen_xcalloc(1, sizeof *conn);
   conn->up = up;
   conn->srv = srv;
   snprintf(conn->ctx, sizeof conn->ctx, "upstream%llu",
            (unsigned long long) ++up->next_conn_id);
   aspen_buf_init(&conn->netbuf);
   aspen_buf_init(&conn->rbuf);
   conn->state = UC_RESOLVING;
   conn->counted_opening = true;
   conn->deadline_ms =
      up->connect_timeout_ms ? now_ms(up) + up->connect_timeout_ms : 0;
   conn->next = srv->conns;
   if (srv->conns) {
      srv->conns->prev = conn;
   }
   srv->conns = conn;
   srv->n_conns++;
   srv->n_opening++;
   up->handles++;
   up->stats.open_now++;

   struct sockaddr_storage ss;
   if (uv_ip4_addr(srv->host, srv->port, (struct sockaddr_in *) &ss) == 0 ||
       uv_ip6_addr(srv->host, srv->port, (struct sockaddr_in6 *) &ss) == 0) {
      start_connect(conn, (const struct sockaddr *) &ss);
      return;
   }
   char port[8];
   snprintf(port, sizeof port, "%u", (unsigned) srv->port);
   struct addrinfo hints;
   memset(&hints, 0, sizeof hints);
   hints.ai_family = AF_UNSPEC;
   hints.ai_socktype = SOCK_STREAM;
   conn->gai.data = conn;
   conn->refs++;
   int rc = uv_getaddrinfo(up->loop, &conn->gai, on_resolved, srv->host, port,
                           &hints);
   if (rc < 0) {
      conn->refs--;
      conn_fail(conn, ASPEN_ERR_HostUnreachable, "cannot resolve %s: %s",
                srv->host, uv_strerror(rc));
   }
}

/* ---- dispatch ---------------------------------------------------------------------- */

/* A connection just became free: it serves the next command waiting for
 * its server, or goes idle. */
static void
conn_ready(up_conn_t *conn)
{
   up_server_t *srv = conn->srv;
   up_request_t *req = queue_pop(&srv->queue);
   if (req) {
      conn_send(conn, req);
      return;
   }
   set_state(conn, UC_IDLE);
   conn->idle_since_ms = now_ms(conn->up);
   conn->next_idle = srv->idle;
   srv->idle = conn;
}

static void
server_submit(up_server_t *srv, up_request_t *req)
{
   up_conn_t *conn = srv->idle;
   if (conn) {
      srv->idle = conn->next_idle;
      conn->next_idle = NULL;
      conn_send(conn, req);
      return;
   }
   queue_push(&srv->queue, req);
}

static void
server_grow(aspen_upstream_t *up, up_server_t *srv)
{
   /* Open connections only for commands no connection will take soon. */
   while (srv->queue.n > (size_t) srv->n_opening &&
          srv->n_conns < up->max_pool) {
      conn_open(srv, up);
   }
}

static void
dispatch(aspen_upstream_t *up, up_request_t *req)
{
   up_server_t *srv = req->pinned ? req->pinned : select_server(up);
   if (!srv) {
      if (req->deadline_ms == 0) {
         req->deadline_ms = now_ms(up) + up->selection_timeout_ms;
      }
      queue_push(&up->waiting, req);
      return;
   }
   server_submit(srv, req);
   if (srv->queue.n > 0) {
      server_grow(up, srv);
   }
}

/* Re-dispatches the commands waiting for a server (after a topology change
 * or when a skipped server may be tried again); fails those past their
 * serverSelectionTimeoutMS. */
static void
retry_waiting(aspen_upstream_t *up)
{
   req_queue_t q = up->waiting;
   uint64_t now = now_ms(up);
   memset(&up->waiting, 0, sizeof up->waiting);
   up_request_t *req;
   while ((req = queue_pop(&q))) {
      if (now >= req->deadline_ms) {
         char msg[ASPEN_ERROR_MSG_MAX];
         snprintf(msg, sizeof msg,
                  "aspen could not reach the backing MongoDB deployment: no "
                  "%s available within serverSelectionTimeoutMS (%llu ms; "
                  "topology %s)",
                  up->topo.type == ASPEN_TOPO_SHARDED ? "mongos" : "primary",
                  (unsigned long long) up->selection_timeout_ms,
                  up->have_topo ? aspen_topo_type_name(up->topo.type)
                                : "not discovered yet");
         req_fail(up, req, ASPEN_ERR_HostUnreachable, msg);
      } else {
         dispatch(up, req);
      }
   }
}

static void
on_topology(void *arg, aspen_topo_t *snap)
{
   aspen_upstream_t *up = arg;
   int before = up->have_topo ? aspen_topo_select(&up->topo, NULL) : -1;
   char old_primary[ASPEN_TOPO_HOST_MAX + 8] = "";
   if (before >= 0) {
      snprintf(old_primary, sizeof old_primary, "%s:%u",
               up->topo.servers[before].host,
               (unsigned) up->topo.servers[before].port);
   }
   aspen_topo_cleanup(&up->topo);
   up->topo = *snap;
   up->have_topo = true;
   int after = aspen_topo_select(&up->topo, NULL);
   char new_primary[ASPEN_TOPO_HOST_MAX + 8] = "";
   if (after >= 0) {
      snprintf(new_primary, sizeof new_primary, "%s:%u",
               up->topo.servers[after].host,
               (unsigned) up->topo.servers[after].port);
      /* A new view from the monitor: the server it names is fine again. */
      server_get(up, up->topo.servers[after].host,
                 up->topo.servers[after].port)
         ->suspect_until_ms = 0;
   }
   if (strcmp(old_primary, new_primary) != 0) {
      aspen_logf(ASPEN_LOG_INFO, COMPONENT, "topology",
                 "backend topology %s: forwarding to %s",
                 aspen_topo_type_name(up->topo.type),
                 new_primary[0] ? new_primary : "(none yet)");
   }
   if (up->topo.type == ASPEN_TOPO_SHARDED) {
      up->backend_is_mongos = true;
   }
   retry_waiting(up);
}

static void
on_sweep(uv_timer_t *t)
{
   aspen_upstream_t *up = t->data;
   uint64_t now = now_ms(up);
   for (up_server_t *s = up->servers; s; s = s->next) {
      up_conn_t *next;
      for (up_conn_t *c = s->conns; c; c = next) {
         next = c->next;
         if (c->deadline_ms && now >= c->deadline_ms) {
            if (c->state == UC_BUSY) {
               conn_fail(c, ASPEN_ERR_NetworkTimeout,
                         "no reply within socketTimeoutMS (%llu ms)",
                         (unsigned long long) up->socket_timeout_ms);
            } else {
               conn_fail(c, ASPEN_ERR_HostUnreachable,
                         "no connection within connectTimeoutMS (%llu ms)",
                         (unsigned long long) up->connect_timeout_ms);
            }
         } else if (c->state == UC_IDLE && up->max_idle_ms &&
                    now - c->idle_since_ms >= up->max_idle_ms) {
            conn_close(c);
         }
      }
   }
   if (up->waiting.n > 0) {
      retry_waiting(up);
   }
   if (up->n_cursors > 0 && now - up->last_cursor_sweep_ms > 60000) {
      up->last_cursor_sweep_ms = now;
      cursor_sweep(up, now);
   }
}

/* ---- public ----------------------------------------------------------------------------- */

void
aspen_upstream_encode(aspen_buf_t *out, int32_t request_id,
                      const aspen_op_msg_t *msg, const char *const *strip,
                      const bson_t *lsid, const bson_t *cluster_time)
{
   size_t start = aspen_buf_len(out);
   uint8_t hdr[ASPEN_WIRE_HEADER_LEN + 5] = {0};
   aspen_buf_append(out, hdr, sizeof hdr); /* header, flags 0, kind 0 */
   const uint8_t *raw = bson_get_data(&msg->body);
   size_t body_start = aspen_buf_len(out);
   aspen_buf_append(out, raw, 4); /* the length, patched below */
   bson_iter_t it;
   if (bson_iter_init(&it, &msg->body)) {
      size_t run_start = 4, run_end = 4; /* a run of kept elements */
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         bool drop = false, swap = false;
         if (k[0] == '$' && strip) {
            for (const char *const *s = strip; *s; s++) {
               if (strcmp(k, *s) == 0) {
                  drop = true;
                  break;
               }
            }
         } else if (lsid && strcmp(k, "lsid") == 0) {
            swap = true;
         }
         if (drop || swap) {
            aspen_buf_append(out, raw + run_start, run_end - run_start);
            run_start = it.next_off;
         }
         if (swap) {
            static const uint8_t head[] = {BSON_TYPE_DOCUMENT, 'l', 's', 'i',
                                           'd', 0};
            aspen_buf_append(out, head, sizeof head);
            aspen_buf_append(out, bson_get_data(lsid), lsid->len);
         }
         run_end = it.next_off;
      }
      aspen_buf_append(out, raw + run_start, run_end - run_start);
   }
   if (cluster_time) {
      static const uint8_t head[] = {BSON_TYPE_DOCUMENT, '$', 'c', 'l', 'u',
                                     's', 't', 'e', 'r', 'T', 'i', 'm', 'e',
                                     0};
      aspen_buf_append(out, head, sizeof head);
      aspen_buf_append(out, bson_get_data(cluster_time), cluster_time->len);
   }
   uint8_t zero = 0;
   aspen_buf_append(out, &zero, 1);
   uint8_t *base = (uint8_t *) aspen_buf_data(out);
   put_le32(base + body_start,
            (uint32_t) (aspen_buf_len(out) - body_start));
   for (size_t i = 0; i < msg->n_seqs; i++) {
      const aspen_doc_seq_t *seq = &msg->seqs[i];
      size_t idlen = strlen(seq->identifier) + 1;
      uint8_t head[5];
      head[0] = 1;
      put_le32(head + 1, (uint32_t) (4 + idlen + seq->len));
      aspen_buf_append(out, head, 5);
      aspen_buf_append(out, seq->identifier, idlen);
      aspen_buf_append(out, seq->docs, seq->len);
   }
   base = (uint8_t *) aspen_buf_data(out) + start;
   put_le32(base, (uint32_t) (aspen_buf_len(out) - start));
   put_le32(base + 4, (uint32_t) request_id);
   put_le32(base + 8, 0);
   put_le32(base + 12, ASPEN_OP_MSG);
}

unsigned
aspen_upstream_txn_kind(const bson_t *cmd, const char *name)
{
   bson_iter_t it;
   bool txn_number = false, in_txn = false;
   if (bson_iter_init(&it, cmd)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "txnNumber") == 0) {
            txn_number = BSON_ITER_HOLDS_NUMBER(&it);
         } else if (strcmp(k, "autocommit") == 0) {
            in_txn = BSON_ITER_HOLDS_BOOL(&it) && !bson_iter_bool(&it);
         }
      }
   }
   if (!txn_number) {
      return ASPEN_TXN_NONE;
   }
   if (in_txn) {
      if (strcmp(name, "commitTransaction") == 0) {
         return ASPEN_TXN_COMMIT;
      }
      if (strcmp(name, "abortTransaction") == 0) {
         return ASPEN_TXN_ABORT;
      }
      return ASPEN_TXN_STATEMENT;
   }
   static const char *const writes[] = {"insert", "update", "delete",
                                        "findAndModify", "findandmodify",
                                        "bulkWrite", NULL};
   for (const char *const *w = writes; *w; w++) {
      if (strcmp(name, *w) == 0) {
         return ASPEN_TXN_RETRYABLE_WRITE;
      }
   }
   return ASPEN_TXN_NONE;
}

bool
aspen_upstream_error_labels(const bson_t *reply, unsigned kind, bson_t *out)
{
   bson_iter_t it;
   bool ok = true;
   int32_t code = 0;
   if (kind == ASPEN_TXN_NONE || !bson_iter_init(&it, reply)) {
      return false;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "errorLabels") == 0) {
         return false; /* the server's labels stand */
      } else if (strcmp(k, "ok") == 0) {
         ok = bson_iter_as_double(&it) == 1.0;
      } else if (strcmp(k, "code") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
         code = (int32_t) bson_iter_as_int64(&it);
      }
   }
   if (ok || (code != ASPEN_ERR_HostUnreachable &&
              code != ASPEN_ERR_NetworkTimeout)) {
      return false;
   }
   bson_t arr;
   bson_copy_to(reply, out);
   BSON_APPEND_ARRAY_BEGIN(out, "errorLabels", &arr);
   switch (kind) {
   case ASPEN_TXN_STATEMENT:
      BSON_APPEND_UTF8(&arr, "0", "TransientTransactionError");
      break;
   case ASPEN_TXN_COMMIT:
      BSON_APPEND_UTF8(&arr, "0", "RetryableWriteError");
      BSON_APPEND_UTF8(&arr, "1", "UnknownTransactionCommitResult");
      break;
   default: /* a retryable write, abortTransaction */
      BSON_APPEND_UTF8(&arr, "0", "RetryableWriteError");
      break;
   }
   bson_append_array_end(out, &arr);
   return true;
}

void
aspen_upstream_backend_lsid(const bson_t *key, bson_t *out)
{
   if (!bson_has_field(key, "uid")) {
      bson_copy_to(key, out);
      return;
   }
   uint8_t digest[ASPEN_SCRAM_MAX_HASH];
   aspen_scram_hash(ASPEN_SCRAM_SHA_256, bson_get_data(key), key->len, digest);
   digest[6] = (uint8_t) ((digest[6] & 0x0f) | 0x40); /* version 4 */
   digest[8] = (uint8_t) ((digest[8] & 0x3f) | 0x80); /* RFC 4122 variant */
   bson_init(out);
   bson_append_binary(out, "id", 2, BSON_SUBTYPE_UUID, digest, 16);
}

void
aspen_upstream_forward(aspen_upstream_t *up, const aspen_op_msg_t *msg,
                       const char *name, const bson_t *lsid_key,
                       aspen_upstream_cb cb, void *arg)
{
   static const char *const strip_all[] = {"$clusterTime", "$readPreference",
                                           NULL};
   static const char *const strip_mongos[] = {"$clusterTime", NULL};
   up_request_t *req = aspen_xcalloc(1, sizeof *req);
   aspen_buf_t buf;
   req->cb = cb;
   req->arg = arg;
   bson_init(&req->error);
   snprintf(req->name, sizeof req->name, "%s", name);
   aspen_buf_init(&buf);
   bson_t lsid;
   bool swap = lsid_key && bson_has_field(lsid_key, "uid");
   if (swap) {
      aspen_upstream_backend_lsid(lsid_key, &lsid);
   }
   aspen_upstream_encode(&buf, 0, msg,
                         up->backend_is_mongos ? strip_mongos : strip_all,
                         swap ? &lsid : NULL,
                         up->has_cluster_time ? &up->cluster_time : NULL);
   if (swap) {
      bson_destroy(&lsid);
   }
   req->frame = aspen_buf_steal(&buf, &req->len);
   aspen_buf_cleanup(&buf);
   if (up->destroying) {
      req_fail(up, req, ASPEN_ERR_HostUnreachable, "aspen is shutting down");
      return;
   }
   if (!up->single) {
      bson_iter_t it, ids;
      if (strcmp(name, "getMore") == 0 && bson_iter_init(&it, &msg->body) &&
          bson_iter_next(&it) && BSON_ITER_HOLDS_NUMBER(&it)) {
         req->cursor_ids[0] = bson_iter_as_int64(&it);
         req->n_cursor_ids = 1;
      } else if (strcmp(name, "killCursors") == 0 &&
                 bson_iter_init_find(&it, &msg->body, "cursors") &&
                 BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &ids)) {
         req->is_kill = true;
         while (bson_iter_next(&ids) && req->n_cursor_ids < KILL_IDS_MAX) {
            if (BSON_ITER_HOLDS_NUMBER(&ids)) {
               req->cursor_ids[req->n_cursor_ids++] = bson_iter_as_int64(&ids);
            }
         }
      }
      if (req->n_cursor_ids > 0) {
         req->pinned = cursor_get(up, req->cursor_ids[0]);
      }
   }
   dispatch(up, req);
}

static bool
tls_option_set(const mongoc_uri_t *uri, const char *opt)
{
   const bson_t *opts = mongoc_uri_get_options(uri);
   bson_iter_t it;
   return opts && bson_iter_init(&it, opts) &&
          bson_iter_find_case(&it, opt);
}

bool
aspen_upstream_supports(const mongoc_uri_t *uri, char *why, size_t why_size)
{
   const char *mech = mongoc_uri_get_auth_mechanism(uri);
   if (mech && strcmp(mech, "SCRAM-SHA-1") != 0 &&
       strcmp(mech, "SCRAM-SHA-256") != 0) {
      snprintf(why, why_size, "authMechanism %s", mech);
      return false;
   }
   if (mongoc_uri_get_option_as_bool(uri, MONGOC_URI_LOADBALANCED, false)) {
      snprintf(why, why_size, "loadBalanced=true");
      return false;
   }
   static const char *const unsupported[] = {
      MONGOC_URI_TLSCERTIFICATEKEYFILEPASSWORD, "tlsCRLFile",
      MONGOC_URI_TLSDISABLEOCSPENDPOINTCHECK,
      MONGOC_URI_TLSDISABLECERTIFICATEREVOCATIONCHECK, NULL};
   for (const char *const *o = unsupported; *o; o++) {
      if (tls_option_set(uri, *o)) {
         snprintf(why, why_size, "the URI option %s", *o);
         return false;
      }
   }
   if (mongoc_uri_get_username(uri) && !mongoc_uri_get_password(uri)) {
      snprintf(why, why_size, "a user name without a password");
      return false;
   }
   /* aspen's SASLprep covers printable ASCII (scram.h); mongoc's covers
    * more, so a password beyond it goes through the lanes. */
   const char *pw = mongoc_uri_get_password(uri);
   for (const unsigned char *p = (const unsigned char *) pw; p && *p; p++) {
      if (*p < 0x20 || *p >= 0x7f) {
         snprintf(why, why_size,
                  "a password with characters other than printable ASCII");
         return false;
      }
   }
   return true;
}

aspen_upstream_t *
aspen_upstream_new(uv_loop_t *loop, const mongoc_uri_t *uri,
                   aspen_error_t *err)
{
   aspen_upstream_t *up = aspen_xcalloc(1, sizeof *up);
   up->loop = loop;
   up->uri = mongoc_uri_copy(uri);
   up->max_pool =
      mongoc_uri_get_option_as_int32(uri, MONGOC_URI_MAXPOOLSIZE,
                                     DEFAULT_MAX_POOL);
   if (up->max_pool <= 0) {
      up->max_pool = DEFAULT_MAX_POOL;
   }
   up->connect_timeout_ms = (uint64_t) mongoc_uri_get_option_as_int32(
      uri, MONGOC_URI_CONNECTTIMEOUTMS, DEFAULT_CONNECT_TIMEOUT_MS);
   up->socket_timeout_ms = (uint64_t) mongoc_uri_get_option_as_int32(
      uri, MONGOC_URI_SOCKETTIMEOUTMS, DEFAULT_SOCKET_TIMEOUT_MS);
   up->selection_timeout_ms = (uint64_t) mongoc_uri_get_option_as_int32(
      uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, DEFAULT_SERVER_SELECTION_MS);
   up->max_idle_ms = (uint64_t) mongoc_uri_get_option_as_int32(
      uri, MONGOC_URI_MAXIDLETIMEMS, 0);
   snprintf(up->appname, sizeof up->appname, "%s",
            mongoc_uri_get_appname(uri) ? mongoc_uri_get_appname(uri)
                                        : "aspen");
   const char *user = mongoc_uri_get_username(uri);
   if (user) {
      up->user = aspen_xstrdup(user);
      up->password = aspen_xstrdup(mongoc_uri_get_password(uri));
      up->auth_source = aspen_xstrdup(mongoc_uri_get_auth_source(uri));
      const char *mech = mongoc_uri_get_auth_mechanism(uri);
      if (mech) {
         up->mech_fixed = aspen_scram_mech_parse(mech, &up->mech);
      }
   }
   if (mongoc_uri_get_tls(uri)) {
      aspen_tls_client_opts_t opts = {
         .ca_file = mongoc_uri_get_option_as_utf8(uri, MONGOC_URI_TLSCAFILE,
                                                  NULL),
         .cert_key_file = mongoc_uri_get_option_as_utf8(
            uri, MONGOC_URI_TLSCERTIFICATEKEYFILE, NULL),
         .allow_invalid_certificates =
            mongoc_uri_get_option_as_bool(
               uri, MONGOC_URI_TLSALLOWINVALIDCERTIFICATES, false) ||
            mongoc_uri_get_option_as_bool(uri, MONGOC_URI_TLSINSECURE, false),
         .allow_invalid_hostnames =
            mongoc_uri_get_option_as_bool(
               uri, MONGOC_URI_TLSALLOWINVALIDHOSTNAMES, false) ||
            mongoc_uri_get_option_as_bool(uri, MONGOC_URI_TLSINSECURE, false),
      };
      up->tls_ctx = aspen_tls_ctx_new_client_opts(&opts, err);
      if (!up->tls_ctx) {
         up->destroying = true;
         maybe_free_up(up);
         return NULL;
      }
   }
   const mongoc_host_list_t *hosts = mongoc_uri_get_hosts(uri);
   bool direct =
      mongoc_uri_get_option_as_bool(uri, MONGOC_URI_DIRECTCONNECTION, false);
   up->single = hosts && !hosts->next && !mongoc_uri_get_srv_hostname(uri) &&
                (direct || !mongoc_uri_get_replica_set(uri)) &&
                !(mongoc_uri_has_option(uri, MONGOC_URI_DIRECTCONNECTION) &&
                  !direct);
   if (up->single) {
      server_get(up, hosts->host, hosts->port);
   } else {
      up->watch = aspen_topo_watch_new(loop, uri, on_topology, up, err);
      if (!up->watch) {
         up->destroying = true;
         maybe_free_up(up);
         return NULL;
      }
   }
   uv_timer_init(loop, &up->sweep);
   uv_timer_init(loop, &up->defer);
   up->sweep.data = up->defer.data = up;
   up->handles += 2;
   uv_timer_start(&up->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
   uv_unref((uv_handle_t *) &up->sweep);
   return up;
}

static void
on_timer_closed(uv_handle_t *h)
{
   aspen_upstream_t *up = h->data;
   up->handles--;
   maybe_free_up(up);
}

void
aspen_upstream_destroy(aspen_upstream_t *up)
{
   if (!up) {
      return;
   }
   up->destroying = true;
   aspen_topo_watch_destroy(up->watch);
   up->watch = NULL;
   fail_queue(up, &up->waiting, ASPEN_ERR_HostUnreachable,
              "aspen is shutting down");
   for (up_server_t *s = up->servers; s; s = s->next) {
      fail_queue(up, &s->queue, ASPEN_ERR_HostUnreachable,
                 "aspen is shutting down");
      while (s->conns) {
         up_conn_t *c = s->conns;
         if (c->req) {
            req_fail(up, c->req, ASPEN_ERR_HostUnreachable,
                     "aspen is shutting down");
            c->req = NULL;
         }
         conn_close(c);
      }
   }
   /* Every callback owed runs now: sessions are closing and release their
    * references here. */
   run_deferred(up);
   uv_close((uv_handle_t *) &up->sweep, on_timer_closed);
   uv_close((uv_handle_t *) &up->defer, on_timer_closed);
}

void
aspen_upstream_stats(const aspen_upstream_t *up, aspen_upstream_stats_t *st)
{
   *st = up->stats;
   st->queued_now = up->waiting.n;
   for (const up_server_t *s = up->servers; s; s = s->next) {
      st->queued_now += s->queue.n;
   }
}
