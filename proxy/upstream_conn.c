/*
 * upstream_conn.c - one connection of the relay to a backend server (see
 * upstream_int.h): resolve (uv_getaddrinfo, unless the host is an address)
 * -> connect -> [TLS client handshake over memory BIOs] -> what the login
 * and the relay send and read, one frame at a time -> closed. Replies are
 * matched by responseTo; a connection whose reply is late, mismatched or
 * cut is closed, never reused. What happens to it goes to the relay as an
 * event (connected, reply, failed, freed); nothing here knows commands or
 * queues.
 */
#include "upstream_int.h"
#include "bytes.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define COMPONENT ASPEN_UPSTREAM_COMPONENT
#define READ_CHUNK 65536
#define REPLY_MAX ((size_t) ASPEN_WIRE_MAX_MESSAGE_LEN + 65536)

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
   up->events->freed(up);
}

void
aspen__upstream_conn_release(up_conn_t *conn)
{
   ASPEN_ASSERT(conn->refs > 0);
   if (--conn->refs == 0 && conn->state == UC_CLOSED) {
      conn_free(conn);
   }
}

static void
on_tcp_closed(uv_handle_t *h)
{
   aspen__upstream_conn_release(h->data);
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

static const char *const uc_state_names[] = {
   "resolving", "connecting", "hello", "saslStart", "deriving keys",
   "saslContinue", "saslFinal", "idle", "busy", "closed",
};

const char *
aspen__upstream_conn_state_name(uc_state_t st)
{
   return uc_state_names[st];
}

void
aspen__upstream_conn_set_state(up_conn_t *conn, uc_state_t st)
{
   if (aspen_log_enabled(ASPEN_LOG_DEBUG)) {
      aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, conn->ctx,
                 "backend connection to %s: %s -> %s", conn->srv->name,
                 uc_state_names[conn->state], uc_state_names[st]);
   }
   conn->state = st;
}

void
aspen__upstream_conn_close(up_conn_t *conn)
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
   aspen__upstream_conn_set_state(conn, UC_CLOSED);
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
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "write failed: %s", uv_strerror(status));
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
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "write failed: %s", uv_strerror(n));
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
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "write failed: %s", uv_strerror(rc));
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
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s",
                                   err.message);
         return false;
      }
      if (!data) {
         return true; /* queued until the TLS handshake is done */
      }
   }
   return conn_write_raw(conn, data, len);
}

bool
aspen__upstream_conn_send_doc(up_conn_t *conn, const bson_t *doc)
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

void
aspen__upstream_conn_send(up_conn_t *conn, up_request_t *req)
{
   aspen_upstream_t *up = conn->up;
   aspen__upstream_conn_set_state(conn, UC_BUSY);
   conn->req = req;
   conn->awaiting = ++up->next_request_id;
   conn->deadline_ms =
      up->socket_timeout_ms ? aspen__upstream_now_ms(
         up) + up->socket_timeout_ms : 0;
   aspen_bytes_put_le32(req->frame + 4, (uint32_t) conn->awaiting);
   uint8_t *data = req->frame;
   size_t len = req->len;
   req->frame = NULL;
   up->stats.forwarded++;
   conn_write(conn, data, len);
}

/* ---- failures -------------------------------------------------------------- */

void
aspen__upstream_conn_fail(up_conn_t *conn, int32_t code, const char *fmt, ...)
{
   if (conn->state == UC_CLOSED) {
      return;
   }
   char reason[ASPEN_ERROR_MSG_MAX / 2];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(reason, sizeof reason, fmt, ap);
   va_end(ap);
   conn->up->events->failed(conn, code, reason);
   aspen__upstream_conn_close(conn);
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
   uint32_t flags = aspen_bytes_get_le32(f->body);
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
   uint32_t doc_len = aspen_bytes_get_le32(f->body + 5);
   if (doc_len < 5 || doc_len > avail ||
       !bson_init_static(body, f->body + 5, doc_len)) {
      *why = "reply body has a bad length";
      return false;
   }
   return true;
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
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                   "bad reply: %s", err.message);
         return;
      }
      bson_t body;
      const char *why = NULL;
      if (f.response_to != conn->awaiting || conn->awaiting == 0) {
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
            "a reply to request %d came while waiting for %d", f.response_to,
            conn->awaiting);
         return;
      }
      if (!reply_body(&f, &body, &why)) {
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s", why);
         return;
      }
      conn->awaiting = 0;
      conn->up->events->reply(conn, &body);
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
      size_t announced = aspen_bytes_get_le32(aspen_buf_data(&conn->rbuf));
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
         aspen__upstream_conn_close(conn);
         return;
      }
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s",
                                nread == UV_EOF ?
                                "the server closed the connection"
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
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s",
                                   err.message);
         return;
      }
      if (peer_closed) {
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                   "the server closed the TLS connection");
         return;
      }
   }
   if (conn->state == UC_IDLE && aspen_buf_len(&conn->rbuf) > 0) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "the server sent bytes nobody asked for");
      return;
   }
   conn_process(conn);
}

/* ---- opening ------------------------------------------------------------------- */

static void
on_connect(uv_connect_t *creq, int status)
{
   up_conn_t *conn = creq->data;
   if (status == UV_ECANCELED || conn->state == UC_CLOSED) {
      return;
   }
   if (status < 0) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "connect: %s",
                                uv_strerror(status));
      return;
   }
   uv_tcp_nodelay(&conn->tcp, 1);
   uv_tcp_keepalive(&conn->tcp, 1, 120);
   int rc = uv_read_start((uv_stream_t *) &conn->tcp, on_alloc, on_read);
   if (rc < 0) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "read: %s",
                                uv_strerror(rc));
      return;
   }
   if (conn->up->tls_ctx) {
      aspen_buf_t hello;
      aspen_error_t err;
      conn->tls = aspen_tls_conn_new(conn->up->tls_ctx, false, conn->srv->host);
      if (!conn->tls) {
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
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
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "%s",
                                   err.message);
         return;
      }
      if (data && !conn_write_raw(conn, data, len)) {
         return; /* the ClientHello */
      }
   }
   /* Through TLS the handshake is queued until TLS's is done. */
   conn->up->events->connected(conn);
}

static void
start_connect(up_conn_t *conn, const struct sockaddr *sa)
{
   int rc = uv_tcp_init(conn->up->loop, &conn->tcp);
   if (rc < 0) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "socket: %s",
                                uv_strerror(rc));
      return;
   }
   conn->tcp.data = conn;
   conn->tcp_open = true;
   conn->refs++;
   aspen__upstream_conn_set_state(conn, UC_CONNECTING);
   conn->creq.data = conn;
   rc = uv_tcp_connect(&conn->creq, &conn->tcp, sa, on_connect);
   if (rc < 0) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable, "connect: %s",
                                uv_strerror(rc));
   }
}

static void
on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
   up_conn_t *conn = gai->data;
   if (conn->state != UC_CLOSED) {
      if (status < 0 || !res) {
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                   "cannot resolve %s: %s", conn->srv->host,
                                   uv_strerror(status));
      } else {
         start_connect(conn, res->ai_addr);
      }
   }
   uv_freeaddrinfo(res);
   aspen__upstream_conn_release(conn);
}

void
aspen__upstream_conn_open(up_server_t *srv, aspen_upstream_t *up)
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
      up->connect_timeout_ms ? aspen__upstream_now_ms(
         up) + up->connect_timeout_ms : 0;
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
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "cannot resolve %s: %s", srv->host,
                                uv_strerror(rc));
   }
}

