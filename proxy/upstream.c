/*
 * upstream.c - forwarding on the loop thread: a pool of non-blocking
 * connections to the backing deployment (see upstream.h; the parts are
 * listed in upstream_int.h). This file is the relay itself: its servers,
 * their queues and pools, cursors, the choice of a server, and what the
 * connections (upstream_conn.c, upstream_login.c) tell it.
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
#include "upstream_int.h"

#include <stdlib.h>
#include <string.h>

#define COMPONENT ASPEN_UPSTREAM_COMPONENT
#define DEFAULT_MAX_POOL 100
#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_SOCKET_TIMEOUT_MS 300000 /* mongoc's default */
#define DEFAULT_SERVER_SELECTION_MS 5000
#define SUSPECT_MS 1000
#define SWEEP_MS 250
#define CURSOR_IDLE_MS (11u * 60u * 1000u) /* mongod's cursor timeout + 1 */

static void conn_ready(up_conn_t *conn);
static void on_defer(uv_timer_t *t);
static void dispatch(aspen_upstream_t *up, up_request_t *req);

/* ---- small helpers --------------------------------------------------------- */

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
   (*pp)->used_ms = aspen__upstream_now_ms(up);
}

static up_server_t *
cursor_get(aspen_upstream_t *up, int64_t id)
{
   cursor_ent_t *e = *cursor_slot(up, id);
   if (!e) {
      return NULL;
   }
   e->used_ms = aspen__upstream_now_ms(up);
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
   srv->suspect_until_ms = aspen__upstream_now_ms(up) + SUSPECT_MS;
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
   uint64_t now = aspen__upstream_now_ms(up);
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

/* ---- failures and replies ----------------------------------------------------- */

/* A connection is unusable (it is closed right after): its command (if
 * any) fails with `code` and the reason, as do the commands waiting for
 * this server when it never got ready (the server cannot be reached:
 * waiting would not help). */
static void
on_conn_failed(up_conn_t *conn, int32_t code, const char *reason)
{
   aspen_upstream_t *up = conn->up;
   up_server_t *srv = conn->srv;
   char msg[ASPEN_ERROR_MSG_MAX];
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

/* ---- what the connections tell -------------------------------------------------- */

static void
on_conn_connected(up_conn_t *conn)
{
   aspen__upstream_login_start(conn);
}

static void
on_conn_reply(up_conn_t *conn, const bson_t *body)
{
   switch (conn->state) {
   case UC_HELLO:
   case UC_SASL_START:
   case UC_SASL_CONTINUE:
   case UC_SASL_FINAL:
      if (aspen__upstream_login_on_reply(conn, body)) {
         conn_ready(conn);
      }
      break;
   case UC_BUSY:
      handle_reply(conn, body);
      break;
   default:
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "unexpected reply while %s",
                                aspen__upstream_conn_state_name(conn->state));
      break;
   }
}

static void
on_conn_freed(aspen_upstream_t *up)
{
   maybe_free_up(up);
}

static const up_events_t conn_events = {
   .connected = on_conn_connected,
   .reply = on_conn_reply,
   .failed = on_conn_failed,
   .freed = on_conn_freed,
};

/* ---- dispatch ---------------------------------------------------------------------- */

/* A connection just became free: it serves the next command waiting for
 * its server, or goes idle. */
static void
conn_ready(up_conn_t *conn)
{
   up_server_t *srv = conn->srv;
   up_request_t *req = queue_pop(&srv->queue);
   if (req) {
      aspen__upstream_conn_send(conn, req);
      return;
   }
   aspen__upstream_conn_set_state(conn, UC_IDLE);
   conn->idle_since_ms = aspen__upstream_now_ms(conn->up);
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
      aspen__upstream_conn_send(conn, req);
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
      aspen__upstream_conn_open(srv, up);
   }
}

static void
dispatch(aspen_upstream_t *up, up_request_t *req)
{
   up_server_t *srv = req->pinned ? req->pinned : select_server(up);
   if (!srv) {
      if (req->deadline_ms == 0) {
         req->deadline_ms =
            aspen__upstream_now_ms(up) + up->selection_timeout_ms;
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
   uint64_t now = aspen__upstream_now_ms(up);
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
   uint64_t now = aspen__upstream_now_ms(up);
   for (up_server_t *s = up->servers; s; s = s->next) {
      up_conn_t *next;
      for (up_conn_t *c = s->conns; c; c = next) {
         next = c->next;
         if (c->deadline_ms && now >= c->deadline_ms) {
            if (c->state == UC_BUSY) {
               aspen__upstream_conn_fail(c, ASPEN_ERR_NetworkTimeout,
                         "no reply within socketTimeoutMS (%llu ms)",
                         (unsigned long long) up->socket_timeout_ms);
            } else {
               aspen__upstream_conn_fail(c, ASPEN_ERR_HostUnreachable,
                         "no connection within connectTimeoutMS (%llu ms)",
                         (unsigned long long) up->connect_timeout_ms);
            }
         } else if (c->state == UC_IDLE && up->max_idle_ms &&
                    now - c->idle_since_ms >= up->max_idle_ms) {
            aspen__upstream_conn_close(c);
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
   up->events = &conn_events;
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
         aspen__upstream_conn_close(c);
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
