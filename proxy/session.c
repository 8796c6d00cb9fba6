/*
 * session.c - one client connection: a state machine on the loop thread that
 * reads bytes (through TLS when the client speaks it), cuts them into wire
 * frames, decodes each request, hands it to the router, and writes replies
 * back in request order.
 *
 * Requests are handled one at a time, as drivers send them: while one waits
 * for the backend the session stops reading, and it also stops while more
 * than the output high-water mark is queued for the socket, resuming once
 * that drains: a client that pipelines requests without reading replies
 * holds at most about the high-water mark of output (plus one reply). With
 * net.idleTimeoutSecs, a connection that completes no request and takes no
 * reply bytes for that long is closed (listener.c's timer sweeps; this also
 * ends a frame trickled a byte at a time and a stalled TLS handshake).
 * A malformed frame gets an error reply when one can be framed
 * and then closes only this connection. Frames are limited to
 * net.maxMessageSizeBytes, and to ASPEN_PREAUTH_MAX_MESSAGE (auth.h) while
 * authentication is on and no user is logged in on the connection. A session is freed in its close
 * callback and only once no backend job still refers to it.
 *
 * A detached session (aspen__session_new_detached) is the same state
 * machine without a socket: bytes come in through aspen__session_feed and
 * replies go to a callback, so tests and the command fuzz target
 * (tests/fuzz/fuzz_command.c) run requests through the real decode,
 * router, auth and engine paths.
 */
#include "auth.h"

#include <stdlib.h>
#include <string.h>

#define COMPONENT "NETWORK"
#define READ_CHUNK 65536
#define READ_PAUSE_BYTES (1024 * 1024)

typedef enum {
   SESS_READING,  /* parsing input as it comes */
   SESS_WAITING,  /* a request is with the backend */
   SESS_CLOSING,  /* uv_close called or pending */
} sess_state_t;

static const char *const state_names[] = {"reading", "waiting", "closing"};

struct aspen_session {
   aspen_server_t *srv;
   uv_tcp_t tcp;
   uint64_t id;
   char peer[64];
   char ctx[32];
   int refs;
   sess_state_t state;

   bool tls_decided;
   aspen_tls_conn_t *tls;
   aspen_buf_t netbuf; /* ciphertext read from the socket (TLS only) */
   aspen_buf_t rbuf;   /* plaintext input, parsed in place */
   bool read_into_net; /* which buffer the last alloc_cb handed out */
   bool reading;

   size_t out_pending;      /* bytes handed to uv_write, not yet written */
   size_t in_frame_len;     /* the frame being handled, still in rbuf */
   bool close_after_write;  /* close once out_pending reaches 0 */
   bool hwm_logged;         /* the high-water pause was logged once */
   uint64_t last_active_ms; /* uv_now of the last request or write done */

   int32_t inflight_request_id;
   bool inflight_more_to_come;
   bool inflight_legacy; /* arrived as OP_QUERY: the reply is an OP_REPLY */
   int32_t next_request_id;

   aspen_auth_state_t *auth; /* cmd_auth.c's; NULL until first used */

   /* A detached session (aspen__session_new_detached) has no socket: its
    * output goes here instead, and its input comes from
    * aspen__session_feed. NULL for client connections. */
   aspen_session_out_fn out_fn;
   void *out_arg;

   aspen_session_t *prev, *next;
};

typedef struct {
   uv_write_t req;
   aspen_session_t *sess;
   uint8_t *data;
   size_t len;
} write_req_t;

static void process_input(aspen_session_t *sess);
static void update_reading(aspen_session_t *sess);

uint64_t
aspen_session_id(const aspen_session_t *sess)
{
   return sess->id;
}

const char *
aspen_session_peer(const aspen_session_t *sess)
{
   return sess->peer;
}

bool
aspen_session_is_tls(const aspen_session_t *sess)
{
   return sess->tls != NULL;
}

const char *
aspen_session_peer_subject(aspen_session_t *sess)
{
   return sess->tls ? aspen_tls_conn_peer_subject(sess->tls) : NULL;
}

void
aspen_session_ref(aspen_session_t *sess)
{
   sess->refs++;
}

aspen_auth_state_t *
aspen_session_auth(const aspen_session_t *sess)
{
   return sess->auth;
}

void
aspen_session_set_auth(aspen_session_t *sess, aspen_auth_state_t *st)
{
   if (sess->auth != st) {
      aspen_auth_state_destroy(sess->auth);
      sess->auth = st;
   }
}

static void
session_free(aspen_session_t *sess)
{
   aspen_tls_conn_destroy(sess->tls);
   aspen_auth_state_destroy(sess->auth);
   aspen_buf_cleanup(&sess->netbuf);
   aspen_buf_cleanup(&sess->rbuf);
   free(sess);
}

void
aspen_session_unref(aspen_session_t *sess)
{
   ASPEN_ASSERT(sess->refs > 0);
   if (--sess->refs == 0) {
      session_free(sess);
   }
}

static void
set_state(aspen_session_t *sess, sess_state_t st)
{
   if (sess->state == st) {
      return;
   }
   if (aspen_log_enabled(ASPEN_LOG_DEBUG)) {
      aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, sess->ctx,
                 "session state %s -> %s", state_names[sess->state],
                 state_names[st]);
   }
   sess->state = st;
}

/* ---- closing ------------------------------------------------------------ */

static void
on_close(uv_handle_t *h)
{
   aspen_session_t *sess = h->data;
   aspen_server_t *srv = sess->srv;
   if (sess->prev) {
      sess->prev->next = sess->next;
   } else {
      srv->sessions = sess->next;
   }
   if (sess->next) {
      sess->next->prev = sess->prev;
   }
   srv->n_sessions--;
   if (srv->bridge) {
      aspen_bridge_connection_closed(srv->bridge, sess->id);
   }
   aspen_auth_session_closed(srv, sess);
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "remote", sess->peer);
   BSON_APPEND_INT64(&attr, "connectionId", (int64_t) sess->id);
   BSON_APPEND_INT32(&attr, "connectionCount", srv->n_sessions);
   aspen_log(ASPEN_LOG_INFO, COMPONENT, 22944, sess->ctx, "Connection ended",
             &attr);
   bson_destroy(&attr);
   aspen_session_unref(sess);
}

void
aspen_session_close(aspen_session_t *sess, const char *why)
{
   if (sess->state == SESS_CLOSING) {
      return;
   }
   if (why && aspen_log_enabled(ASPEN_LOG_DEBUG)) {
      aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, sess->ctx, "closing: %s", why);
   }
   set_state(sess, SESS_CLOSING);
   if (sess->reading) {
      uv_read_stop((uv_stream_t *) &sess->tcp);
      sess->reading = false;
   }
   uv_close((uv_handle_t *) &sess->tcp, on_close);
}

void
aspen__session_close_idle(aspen_server_t *srv, uint64_t now_ms)
{
   uint64_t limit = (uint64_t) srv->cfg->idle_timeout_secs * 1000u;
   /* Closing only marks the session; on_close unlinks it later, so the
    * list stays intact while this walks it. */
   for (aspen_session_t *s = srv->sessions; s; s = s->next) {
      if (s->state != SESS_READING || now_ms - s->last_active_ms < limit) {
         continue;
      }
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, s->ctx,
                 "closing idle connection from %s: no request or reply "
                 "for %d s (net.idleTimeoutSecs)",
                 s->peer, srv->cfg->idle_timeout_secs);
      aspen_session_close(s, "idle timeout");
   }
}

void
aspen_session_close_all(aspen_server_t *srv)
{
   for (aspen_session_t *s = srv->sessions; s; s = s->next) {
      aspen_session_close(s, "server shutting down");
   }
}

/* ---- output ------------------------------------------------------------- */

static void
on_write(uv_write_t *req, int status)
{
   write_req_t *w = (write_req_t *) req;
   aspen_session_t *sess = w->sess;
   sess->out_pending -= w->len;
   free(w->data);
   free(w);
   if (status < 0 && status != UV_ECANCELED) {
      aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, sess->ctx, "write failed: %s",
                 uv_strerror(status));
      aspen_session_close(sess, "write failed");
   } else if (sess->close_after_write && sess->out_pending == 0) {
      aspen_session_close(sess, "error reply sent");
   } else {
      sess->last_active_ms = uv_now(sess->srv->loop);
      /* Requests left in rbuf while output was above the high-water mark
       * go on now that it drains (process_input re-arms reading). */
      process_input(sess);
   }
   aspen_session_unref(sess);
}

/* Writes `len` bytes of wire data, taking ownership of the malloc'd block. */
static void
write_owned(aspen_session_t *sess, uint8_t *data, size_t len)
{
   if (sess->state == SESS_CLOSING || len == 0) {
      free(data);
      return;
   }
   if (sess->out_fn) {
      sess->out_fn(sess->out_arg, data, len);
      free(data);
      sess->last_active_ms = uv_now(sess->srv->loop);
      return;
   }
   uv_buf_t b = uv_buf_init((char *) data, (unsigned) len);
   if (sess->out_pending == 0 &&
       aspen_buf_len(&sess->rbuf) <= sess->in_frame_len) {
      /* Nothing queued and no further request waiting: try the socket
       * now. A reply that fits needs no write request, no callback and no
       * extra loop iteration. A client pipelining requests goes through
       * uv_write, whose bytes count against the output high-water mark
       * until their callbacks run, so it is paused after about that much
       * output whatever the socket buffers hold. */
      int n = uv_try_write((uv_stream_t *) &sess->tcp, &b, 1);
      if (n == (int) len) {
         free(data);
         sess->last_active_ms = uv_now(sess->srv->loop);
         return;
      }
      if (n > 0) {
         /* The rest goes from where the socket stopped; on_write frees
          * the whole block and counts what was queued. */
         b = uv_buf_init((char *) data + n, (unsigned) (len - (size_t) n));
         len -= (size_t) n;
      } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
         free(data);
         aspen_session_close(sess, "write failed");
         return;
      }
   }
   write_req_t *w = aspen_xmalloc(sizeof *w);
   w->sess = sess;
   w->data = data;
   w->len = len;
   int rc = uv_write(&w->req, (uv_stream_t *) &sess->tcp, &b, 1, on_write);
   if (rc < 0) {
      free(data);
      free(w);
      aspen_session_close(sess, "write failed");
      return;
   }
   aspen_session_ref(sess);
   sess->out_pending += len;
}

/* Sends wire bytes in `plain` (consumed), through TLS when active. */
static void
send_buf(aspen_session_t *sess, aspen_buf_t *plain)
{
   size_t len;
   if (sess->tls) {
      aspen_buf_t cipher;
      aspen_error_t err;
      aspen_buf_init(&cipher);
      bool ok = aspen_tls_conn_write(sess->tls, aspen_buf_data(plain),
                                     aspen_buf_len(plain), &cipher, &err);
      aspen_buf_clear(plain);
      uint8_t *data = aspen_buf_steal(&cipher, &len);
      write_owned(sess, data, len);
      aspen_buf_cleanup(&cipher);
      if (!ok) {
         aspen_logf(ASPEN_LOG_WARNING, COMPONENT, sess->ctx,
                    "TLS write failed: %s", err.message);
         sess->close_after_write = true;
         if (sess->out_pending == 0) {
            aspen_session_close(sess, "TLS write failed");
         }
      }
      return;
   }
   uint8_t *data = aspen_buf_steal(plain, &len);
   write_owned(sess, data, len);
}

static void
send_op_msg(aspen_session_t *sess, int32_t response_to, const bson_t *doc)
{
   aspen_buf_t out;
   aspen_buf_init(&out);
   aspen_reply_op_msg(&out, ++sess->next_request_id, response_to, doc);
   send_buf(sess, &out);
   aspen_buf_cleanup(&out);
}

static void
send_op_reply(aspen_session_t *sess, int32_t response_to, const bson_t *doc)
{
   aspen_buf_t out;
   aspen_buf_init(&out);
   aspen_reply_op_reply(&out, ++sess->next_request_id, response_to, 0, doc);
   send_buf(sess, &out);
   aspen_buf_cleanup(&out);
}

/* Replies with an error and closes the connection once it is written. */
static void
fail_connection(aspen_session_t *sess, int32_t response_to,
                const aspen_error_t *err)
{
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "remote", sess->peer);
   BSON_APPEND_UTF8(&attr, "error", err->message);
   aspen_log(ASPEN_LOG_WARNING, COMPONENT, 22988, sess->ctx,
             "Error receiving request from client; ending connection", &attr);
   bson_destroy(&attr);
   if (response_to != 0) {
      bson_t doc = BSON_INITIALIZER;
      aspen_error_append_reply(&doc, err);
      send_op_msg(sess, response_to, &doc);
      bson_destroy(&doc);
   }
   sess->close_after_write = true;
   if (sess->out_pending == 0) {
      aspen_session_close(sess, err->message);
   }
}

void
aspen_session_reply(aspen_session_t *sess, const bson_t *reply)
{
   if (sess->state != SESS_WAITING) {
      return;
   }
   if (sess->inflight_legacy) {
      send_op_reply(sess, sess->inflight_request_id, reply);
   } else if (!sess->inflight_more_to_come) {
      send_op_msg(sess, sess->inflight_request_id, reply);
   }
   set_state(sess, SESS_READING);
   process_input(sess);
}

bool
aspen_session_reply_more(aspen_session_t *sess, const bson_t *reply)
{
   if (sess->state != SESS_WAITING || sess->inflight_more_to_come ||
       sess->inflight_legacy) {
      return false;
   }
   aspen_buf_t out;
   aspen_buf_init(&out);
   int32_t id = ++sess->next_request_id;
   aspen_reply_op_msg(&out, id, sess->inflight_request_id, reply);
   /* flagBits, after the 16-byte header: moreToCome. */
   uint8_t *flags = (uint8_t *) aspen_buf_data(&out) + ASPEN_WIRE_HEADER_LEN;
   flags[0] |= (uint8_t) ASPEN_OP_MSG_MORE_TO_COME;
   send_buf(sess, &out);
   aspen_buf_cleanup(&out);
   /* The next reply of the stream answers this one. */
   sess->inflight_request_id = id;
   return true;
}

/* ---- input -------------------------------------------------------------- */

/* Runs one decoded command; returns true when the session may go on reading
 * the next request right away. */
static bool
run_command(aspen_session_t *sess, int32_t request_id, const bson_t *cmd,
            const char *db, bool legacy, bool more_to_come,
            const aspen_op_msg_t *msg)
{
   bson_iter_t it;
   bson_t reply = BSON_INITIALIZER;
   aspen_request_t req = {
      .sess = sess,
      .srv = sess->srv,
      .db = db,
      .cmd = cmd,
      .legacy = legacy,
      .more_to_come = more_to_come,
      .msg = msg,
   };
   if (!bson_iter_init(&it, cmd) || !bson_iter_next(&it)) {
      aspen_reply_error(&reply, ASPEN_ERR_FailedToParse,
                        "Command document is empty: no command name");
   } else if (!db) {
      aspen_reply_error(&reply, ASPEN_ERR_FailedToParse,
                        "OP_MSG requests require a $db argument");
   } else {
      req.name = bson_iter_key(&it);
      sess->inflight_request_id = request_id;
      sess->inflight_more_to_come = more_to_come;
      sess->inflight_legacy = legacy;
      if (aspen_router_dispatch(&req, &reply) == ASPEN_HANDLED_ASYNC) {
         bson_destroy(&reply);
         if (sess->state != SESS_CLOSING) {
            set_state(sess, SESS_WAITING);
         }
         return false;
      }
   }
   if (legacy) {
      send_op_reply(sess, request_id, &reply);
   } else if (!more_to_come) {
      send_op_msg(sess, request_id, &reply);
   }
   bson_destroy(&reply);
   return true;
}

static bool
handle_op_msg(aspen_session_t *sess, const aspen_frame_t *f)
{
   aspen_op_msg_t msg;
   aspen_error_t err;
   if (!aspen_op_msg_parse(f, &msg, &err)) {
      fail_connection(sess, f->request_id, &err);
      return false;
   }
   bson_t cmd;
   bool owned;
   if (!aspen_op_msg_command(&msg, &cmd, &owned, &err)) {
      if (owned) {
         bson_destroy(&cmd);
      }
      fail_connection(sess, f->request_id, &err);
      return false;
   }
   bson_iter_t it;
   const char *db = NULL;
   if (bson_iter_init_find(&it, &cmd, "$db") && BSON_ITER_HOLDS_UTF8(&it)) {
      db = bson_iter_utf8(&it, NULL);
   }
   bool go_on = run_command(sess, f->request_id, &cmd, db, false,
                            (msg.flags & ASPEN_OP_MSG_MORE_TO_COME) != 0,
                            &msg);
   if (owned) {
      bson_destroy(&cmd);
   }
   return go_on;
}

static bool
handle_op_query(aspen_session_t *sess, const aspen_frame_t *f)
{
   aspen_op_query_t q;
   aspen_error_t err;
   if (!aspen_op_query_parse(f, &q, &err)) {
      fail_connection(sess, f->request_id, &err);
      return false;
   }
   /* Only "<db>.$cmd" queries are commands; the database is the prefix. */
   const char *dot = strchr(q.collection, '.');
   char db[128];
   if (!dot || strcmp(dot, ".$cmd") != 0 ||
       (size_t) (dot - q.collection) >= sizeof db || dot == q.collection) {
      bson_t reply = BSON_INITIALIZER;
      aspen_reply_error(&reply, ASPEN_ERR_UnsupportedOpQueryCommand,
                        "Unsupported OP_QUERY on '%s': only commands on "
                        "<db>.$cmd are accepted",
                        q.collection);
      send_op_reply(sess, f->request_id, &reply);
      bson_destroy(&reply);
      return true;
   }
   memcpy(db, q.collection, (size_t) (dot - q.collection));
   db[dot - q.collection] = '\0';

   /* Old drivers wrap the command as {$query: {...}, $readPreference: ...}. */
   bson_t cmd;
   bson_iter_t it;
   if (bson_iter_init_find(&it, &q.query, "$query") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&it, &len, &data);
      (void) bson_init_static(&cmd, data, len);
   } else {
      (void) bson_init_static(&cmd, bson_get_data(&q.query), q.query.len);
   }
   const char *name = NULL;
   if (bson_iter_init(&it, &cmd) && bson_iter_next(&it)) {
      name = bson_iter_key(&it);
   }
   if (!name || (strcmp(name, "hello") != 0 && strcmp(name, "isMaster") != 0 &&
                 strcmp(name, "ismaster") != 0)) {
      bson_t reply = BSON_INITIALIZER;
      aspen_reply_error(&reply, ASPEN_ERR_UnsupportedOpQueryCommand,
                        "Unsupported OP_QUERY command: %s. The client driver "
                        "may require an upgrade.",
                        name ? name : "(none)");
      send_op_reply(sess, f->request_id, &reply);
      bson_destroy(&reply);
      return true;
   }
   return run_command(sess, f->request_id, &cmd, db, true, false, NULL);
}

/* Handles one complete frame; returns true to go on with the next. */
static bool
handle_frame(aspen_session_t *sess, const aspen_frame_t *f)
{
   aspen_error_t err;
   switch (f->op_code) {
   case ASPEN_OP_MSG:
      return handle_op_msg(sess, f);
   case ASPEN_OP_QUERY:
      return handle_op_query(sess, f);
   case ASPEN_OP_COMPRESSED: {
      /* aspen never advertises a compressor, so a client should not send
       * this; say so, and keep the connection (the frame boundary holds). */
      bson_t reply = BSON_INITIALIZER;
      aspen_reply_error(&reply, ASPEN_ERR_ProtocolError,
                        "OP_COMPRESSED is not supported: aspen does not "
                        "negotiate compression (do not set compressors)");
      send_op_msg(sess, f->request_id, &reply);
      bson_destroy(&reply);
      return true;
   }
   default:
      aspen_error_set(&err, ASPEN_ERR_ProtocolError,
                      "unsupported wire protocol opcode %d", f->op_code);
      fail_connection(sess, f->request_id, &err);
      return false;
   }
}

static void
process_input(aspen_session_t *sess)
{
   size_t high_water = sess->srv->cfg->output_high_water;
   while (sess->state == SESS_READING && !sess->close_after_write &&
          sess->out_pending < high_water) {
      aspen_frame_t f;
      aspen_error_t err;
      /* Per frame: a login earlier in a pipelined batch lifts the
       * pre-authentication limit for the frames after it. */
      size_t max = aspen_auth_max_message(sess->srv, sess);
      aspen_parse_result_t r = aspen_frame_parse(
         aspen_buf_data(&sess->rbuf), aspen_buf_len(&sess->rbuf), max, &f,
         &err);
      if (r == ASPEN_PARSE_NEED_MORE) {
         break;
      }
      if (r == ASPEN_PARSE_ERROR) {
         if (max < sess->srv->cfg->max_message_size &&
             f.message_length > (int32_t) max &&
             (size_t) f.message_length <= sess->srv->cfg->max_message_size) {
            aspen_error_set(&err, ASPEN_ERR_ProtocolError,
                            "message of %d bytes before authentication: "
                            "until a client logs in, aspen accepts messages "
                            "of at most %zu bytes",
                            f.message_length, max);
         }
         fail_connection(sess, f.request_id, &err);
         break;
      }
      sess->last_active_ms = uv_now(sess->srv->loop);
      sess->in_frame_len = (size_t) f.message_length;
      bool go_on = handle_frame(sess, &f);
      sess->in_frame_len = 0;
      /* Handlers copy whatever outlives the call (forwarded commands). */
      if (sess->state != SESS_CLOSING) {
         aspen_buf_consume(&sess->rbuf, (size_t) f.message_length);
      }
      if (!go_on) {
         break;
      }
   }
   update_reading(sess);
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
   aspen_session_t *sess = h->data;
   (void) suggested;
   aspen_buf_t *target = sess->tls ? &sess->netbuf : &sess->rbuf;
   sess->read_into_net = sess->tls != NULL;
   buf->base = (char *) aspen_buf_reserve(target, READ_CHUNK);
   buf->len = READ_CHUNK;
}

static bool
decide_tls(aspen_session_t *sess)
{
   bool need_more = false;
   bool is_tls = aspen_tls_looks_like_tls(aspen_buf_data(&sess->rbuf),
                                          aspen_buf_len(&sess->rbuf),
                                          &need_more);
   if (need_more) {
      return false;
   }
   aspen_tls_mode_t mode = sess->srv->cfg->tls_mode;
   sess->tls_decided = true;
   if (is_tls && mode == ASPEN_TLS_DISABLED) {
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, sess->ctx,
                 "client %s started a TLS handshake but TLS is disabled",
                 sess->peer);
      aspen_session_close(sess, "TLS not enabled");
      return false;
   }
   if (!is_tls && mode == ASPEN_TLS_REQUIRED) {
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, sess->ctx,
                 "client %s sent plaintext but TLS is required", sess->peer);
      aspen_session_close(sess, "TLS required");
      return false;
   }
   if (is_tls) {
      sess->tls = aspen_tls_conn_new(sess->srv->tls_ctx, true, NULL);
      /* What was read so far is ciphertext: move it to the TLS side. */
      aspen_buf_append(&sess->netbuf, aspen_buf_data(&sess->rbuf),
                       aspen_buf_len(&sess->rbuf));
      aspen_buf_clear(&sess->rbuf);
   }
   return true;
}

static void
feed_tls(aspen_session_t *sess)
{
   aspen_buf_t cipher_out;
   aspen_error_t err;
   bool peer_closed = false;
   aspen_buf_init(&cipher_out);
   bool ok = aspen_tls_conn_feed(sess->tls, aspen_buf_data(&sess->netbuf),
                                 aspen_buf_len(&sess->netbuf), &sess->rbuf,
                                 &cipher_out, &peer_closed, &err);
   aspen_buf_clear(&sess->netbuf);
   size_t len;
   uint8_t *data = aspen_buf_steal(&cipher_out, &len);
   write_owned(sess, data, len);
   aspen_buf_cleanup(&cipher_out);
   if (!ok) {
      bson_t attr = BSON_INITIALIZER;
      BSON_APPEND_UTF8(&attr, "remote", sess->peer);
      BSON_APPEND_UTF8(&attr, "error", err.message);
      aspen_log(ASPEN_LOG_WARNING, COMPONENT, 22988, sess->ctx,
                "TLS error; ending connection", &attr);
      bson_destroy(&attr);
      sess->close_after_write = true;
      if (sess->out_pending == 0) {
         aspen_session_close(sess, "TLS error");
      }
   } else if (peer_closed) {
      aspen_session_close(sess, "TLS close_notify");
   }
}

static void
on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
   aspen_session_t *sess = stream->data;
   (void) buf;
   if (nread == 0) {
      return;
   }
   if (nread < 0) {
      aspen_session_close(sess, nread == UV_EOF ? "client closed"
                                                : uv_strerror((int) nread));
      return;
   }
   if (sess->read_into_net) {
      aspen_buf_commit(&sess->netbuf, (size_t) nread);
   } else {
      aspen_buf_commit(&sess->rbuf, (size_t) nread);
   }
   if (!sess->tls_decided) {
      if (!decide_tls(sess)) {
         return;
      }
   }
   if (sess->tls) {
      feed_tls(sess);
      if (sess->state == SESS_CLOSING) {
         return;
      }
   }
   process_input(sess);
}

/* Reads while the output queue is below the high-water mark. While a request
 * is with the backend the socket stays armed (re-arming it per request costs
 * two epoll_ctl calls); input simply waits in rbuf, up to one more frame's
 * worth, before reading pauses. */
static void
update_reading(aspen_session_t *sess)
{
   bool want = (sess->state == SESS_READING ||
                (sess->state == SESS_WAITING &&
                 aspen_buf_len(&sess->rbuf) < READ_PAUSE_BYTES)) &&
               !sess->close_after_write &&
               sess->out_pending < sess->srv->cfg->output_high_water;
   if (!want && !sess->hwm_logged && sess->state != SESS_CLOSING &&
       sess->out_pending >= sess->srv->cfg->output_high_water) {
      /* Once per connection: a client that does not read its replies. */
      sess->hwm_logged = true;
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, sess->ctx,
                 "pausing reads from %s: %zu bytes of replies not taken by "
                 "the client (limit net.outputHighWaterMarkBytes = %zu)",
                 sess->peer, sess->out_pending,
                 sess->srv->cfg->output_high_water);
   }
   if (sess->out_fn) {
      return; /* detached: no socket, input comes from aspen__session_feed */
   }
   if (want && !sess->reading) {
      if (uv_read_start((uv_stream_t *) &sess->tcp, on_alloc, on_read) == 0) {
         sess->reading = true;
      }
   } else if (!want && sess->reading) {
      uv_read_stop((uv_stream_t *) &sess->tcp);
      sess->reading = false;
   }
}

/* A new session whose handle is initialised but not yet connected. */
static aspen_session_t *
session_alloc(aspen_server_t *srv)
{
   aspen_session_t *sess = aspen_xcalloc(1, sizeof *sess);
   sess->srv = srv;
   sess->refs = 1; /* the handle's */
   uv_tcp_init(srv->loop, &sess->tcp);
   sess->tcp.data = sess;
   return sess;
}

/* Gives `sess` (named `peer`) its id, links it into the server and starts
 * reading, unless net.maxConnections sessions are open already. */
static void
session_open(aspen_server_t *srv, aspen_session_t *sess, const char *peer)
{
   sess->id = ++srv->next_conn_id;
   snprintf(sess->ctx, sizeof sess->ctx, "conn%llu",
            (unsigned long long) sess->id);
   snprintf(sess->peer, sizeof sess->peer, "%s", peer);
   aspen_buf_init(&sess->rbuf);
   aspen_buf_init(&sess->netbuf);
   sess->last_active_ms = uv_now(srv->loop);
   sess->tls_decided = srv->cfg->tls_mode == ASPEN_TLS_DISABLED;

   sess->next = srv->sessions;
   if (srv->sessions) {
      srv->sessions->prev = sess;
   }
   srv->sessions = sess;
   srv->n_sessions++;

   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "remote", sess->peer);
   BSON_APPEND_INT64(&attr, "connectionId", (int64_t) sess->id);
   BSON_APPEND_INT32(&attr, "connectionCount", srv->n_sessions);
   aspen_log(ASPEN_LOG_INFO, COMPONENT, 22943, "listener",
             "Connection accepted", &attr);
   bson_destroy(&attr);

   if (srv->n_sessions > srv->cfg->max_connections) {
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, sess->ctx,
                 "refusing connection from %s: %d connections open (limit "
                 "net.maxConnections = %d)",
                 sess->peer, srv->n_sessions - 1, srv->cfg->max_connections);
      aspen_session_close(sess, "too many connections");
      return;
   }
   set_state(sess, SESS_READING);
   update_reading(sess);
}

void
aspen__session_accept(aspen_server_t *srv, uv_stream_t *listener)
{
   aspen_session_t *sess = session_alloc(srv);
   if (uv_accept(listener, (uv_stream_t *) &sess->tcp) != 0) {
      uv_close((uv_handle_t *) &sess->tcp, (uv_close_cb) free);
      return;
   }
   struct sockaddr_storage ss;
   int sslen = sizeof ss;
   char host[INET6_ADDRSTRLEN] = "?";
   int port = 0;
   if (uv_tcp_getpeername(&sess->tcp, (struct sockaddr *) &ss, &sslen) == 0) {
      if (ss.ss_family == AF_INET6) {
         uv_ip6_name((struct sockaddr_in6 *) &ss, host, sizeof host);
         port = ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
      } else {
         uv_ip4_name((struct sockaddr_in *) &ss, host, sizeof host);
         port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
      }
   }
   char peer[sizeof sess->peer];
   snprintf(peer, sizeof peer, "%s:%d", host, port);
   uv_tcp_nodelay(&sess->tcp, 1);
   session_open(srv, sess, peer);
}

aspen_session_t *
aspen__session_new_detached(aspen_server_t *srv, const char *peer,
                            aspen_session_out_fn out_fn, void *out_arg)
{
   aspen_session_t *sess = session_alloc(srv);
   sess->out_fn = out_fn;
   sess->out_arg = out_arg;
   aspen_session_ref(sess); /* the caller's */
   session_open(srv, sess, peer);
   return sess;
}

void
aspen__session_feed(aspen_session_t *sess, const uint8_t *data, size_t len)
{
   if (sess->state == SESS_CLOSING) {
      return;
   }
   aspen_buf_append(&sess->rbuf, data, len);
   process_input(sess);
}

bool
aspen__session_waiting(const aspen_session_t *sess)
{
   return sess->state == SESS_WAITING;
}
