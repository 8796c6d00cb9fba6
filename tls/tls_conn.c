/*
 * tls_conn.c - one TLS connection as an SSL object between two memory BIOs.
 *
 * The connection never touches a socket. The proxy hands it the ciphertext
 * it read (aspen_tls_conn_feed) and gets back decrypted plaintext plus any
 * ciphertext OpenSSL wants sent; plaintext to send goes through
 * aspen_tls_conn_write. After every SSL call the write BIO is drained into the
 * caller's buffer, and reads loop until OpenSSL wants more input, because
 * OpenSSL can hold decrypted bytes that no socket event will ever announce.
 *
 * States: handshake -> open -> closed (close_notify sent), or -> failed from
 * any state on a fatal TLS error. Every transition is logged at debug level.
 */
#include "tls_int.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Plaintext is encrypted and decrypted at most one TLS record at a time. */
#define TLS_RECORD_MAX 16384

typedef enum {
   CONN_HANDSHAKE = 0,
   CONN_OPEN,
   CONN_CLOSED, /* we sent close_notify: no more writes */
   CONN_FAILED, /* fatal error: every call fails */
} conn_state_t;

static const char *const conn_state_names[] = {
   [CONN_HANDSHAKE] = "handshake",
   [CONN_OPEN] = "open",
   [CONN_CLOSED] = "closed",
   [CONN_FAILED] = "failed",
};

struct aspen_tls_conn {
   aspen_tls_ctx_t *ctx; /* borrowed */
   SSL *ssl;             /* owns rbio and wbio */
   BIO *rbio;            /* ciphertext from the peer, read by SSL */
   BIO *wbio;            /* ciphertext for the peer, written by SSL */
   bool is_server;
   bool handshake_done;
   bool peer_closed;    /* close_notify received */
   conn_state_t state;
   aspen_buf_t pending; /* plaintext written before the handshake finished */
   char *peer_subject;  /* computed on first request */
};

/* The single place the state changes, so every transition is logged. */
static void
conn_set_state(aspen_tls_conn_t *conn, conn_state_t state)
{
   if (conn->state == state) {
      return;
   }
   if (state == CONN_OPEN) {
      aspen_logf(ASPEN_LOG_DEBUG, "NETWORK", "tls",
                 "TLS %s connection %s -> %s (%s, %s)",
                 conn->is_server ? "server" : "client",
                 conn_state_names[conn->state], conn_state_names[state],
                 SSL_get_version(conn->ssl),
                 SSL_get_cipher_name(conn->ssl));
   } else {
      aspen_logf(ASPEN_LOG_DEBUG, "NETWORK", "tls", "TLS %s connection %s -> %s",
                 conn->is_server ? "server" : "client",
                 conn_state_names[conn->state], conn_state_names[state]);
   }
   conn->state = state;
}

/* Moves every byte OpenSSL has written to the write BIO into cipher_out. */
static void
conn_drain(aspen_tls_conn_t *conn, aspen_buf_t *cipher_out)
{
   size_t pending;

   while ((pending = BIO_ctrl_pending(conn->wbio)) > 0) {
      int want = pending > INT_MAX ? INT_MAX : (int) pending;
      uint8_t *dst = aspen_buf_reserve(cipher_out, (size_t) want);
      int got = BIO_read(conn->wbio, dst, want);

      if (got <= 0) {
         break; /* a memory BIO with bytes pending cannot fail to read */
      }
      aspen_buf_commit(cipher_out, (size_t) got);
   }
}

/* Marks the connection failed and fills err from OpenSSL's error queue,
 * adding the certificate verification result when that is what failed.
 * Always returns false so callers can `return conn_fail(...)`. */
static bool
conn_fail(aspen_tls_conn_t *conn, int32_t code, const char *what,
          aspen_error_t *err)
{
   char msg[ASPEN_ERROR_MSG_MAX];
   aspen_error_t local;
   long verify = SSL_get_verify_result(conn->ssl);

   if (verify != X509_V_OK) {
      snprintf(msg, sizeof msg, "%s (certificate verify: %s)", what,
               X509_verify_cert_error_string(verify));
   } else {
      snprintf(msg, sizeof msg, "%s", what);
   }
   aspen__tls_error_from_queue(&local, code, msg);
   conn_set_state(conn, CONN_FAILED);
   aspen_logf(ASPEN_LOG_DEBUG, "NETWORK", "tls", "TLS %s connection: %s",
              conn->is_server ? "server" : "client", local.message);
   if (err) {
      *err = local;
   }
   return false;
}

/* The error for a call on a connection that cannot carry data any more. */
static bool
conn_unusable(const aspen_tls_conn_t *conn, aspen_error_t *err)
{
   aspen_error_set(err, ASPEN_ERR_ProtocolError, "TLS connection is %s",
                   conn_state_names[conn->state]);
   return false;
}

/* Encrypts `len` bytes, one record per SSL_write, draining after each. */
static bool
conn_write_records(aspen_tls_conn_t *conn, const uint8_t *data, size_t len,
                   aspen_buf_t *cipher_out, aspen_error_t *err)
{
   while (len > 0) {
      size_t chunk = len < TLS_RECORD_MAX ? len : TLS_RECORD_MAX;
      size_t written = 0;
      int r;

      ERR_clear_error();
      r = SSL_write_ex(conn->ssl, data, chunk, &written);
      conn_drain(conn, cipher_out);
      if (r != 1) {
         /* A memory BIO never blocks and renegotiation is off, so
          * WANT_READ/WANT_WRITE cannot happen here: any failure is fatal. */
         return conn_fail(conn, ASPEN_ERR_ProtocolError, "TLS write failed",
                          err);
      }
      data += written;
      len -= written;
   }
   return true;
}

/* Advances the handshake with whatever input the read BIO holds. On
 * completion, flushes the plaintext queued before it. True while the
 * handshake is progressing or done; false (failed) on a fatal error. */
static bool
conn_handshake(aspen_tls_conn_t *conn, aspen_buf_t *cipher_out,
               aspen_error_t *err)
{
   int r;
   int e;

   ERR_clear_error();
   r = SSL_do_handshake(conn->ssl);
   conn_drain(conn, cipher_out);
   if (r != 1) {
      e = SSL_get_error(conn->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
         return true;
      }
      return conn_fail(conn, ASPEN_ERR_SSLHandshakeFailed,
                       "TLS handshake failed", err);
   }
   conn->handshake_done = true;
   conn_set_state(conn, CONN_OPEN);
   if (aspen_buf_len(&conn->pending) > 0) {
      bool ok = conn_write_records(conn, aspen_buf_data(&conn->pending),
                                   aspen_buf_len(&conn->pending), cipher_out,
                                   err);
      aspen_buf_cleanup(&conn->pending);
      aspen_buf_init(&conn->pending);
      return ok;
   }
   return true;
}

/* Sends our close_notify unless it was already sent. */
static void
conn_send_close_notify(aspen_tls_conn_t *conn, aspen_buf_t *cipher_out)
{
   if (conn->state != CONN_OPEN) {
      return;
   }
   ERR_clear_error();
   (void) SSL_shutdown(conn->ssl); /* 0: sent, peer's not seen; 1: both */
   conn_drain(conn, cipher_out);
   ERR_clear_error();
   conn_set_state(conn, CONN_CLOSED);
}

/* Sets the name the client sends as SNI and, when the context verifies,
 * the name or IP address the server certificate must match. IP literals are
 * checked against IP SANs and are not sent as SNI (RFC 6066 forbids it). */
static bool
conn_set_peer_name(aspen_tls_conn_t *conn, const char *host)
{
   unsigned char addr[16];
   bool is_ip = inet_pton(AF_INET, host, addr) == 1 ||
                inet_pton(AF_INET6, host, addr) == 1;
   X509_VERIFY_PARAM *param = SSL_get0_param(conn->ssl);

   if (!is_ip && SSL_set_tlsext_host_name(conn->ssl, host) != 1) {
      return false;
   }
   if (!conn->ctx->verify_peer || conn->ctx->skip_hostname) {
      return true;
   }
   if (is_ip) {
      return X509_VERIFY_PARAM_set1_ip_asc(param, host) == 1;
   }
   X509_VERIFY_PARAM_set_hostflags(param,
                                   X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
   return X509_VERIFY_PARAM_set1_host(param, host, 0) == 1;
}

/*
 * Creates a connection in the server or client role; `is_server` must match
 * the role the context was made for. `sni_host` (client only, may be NULL)
 * is sent as SNI unless it is an IP literal, and the server certificate must
 * match it when the context verifies. The connection borrows `ctx`, which
 * must outlive it. Returns NULL only if OpenSSL cannot allocate or rejects
 * sni_host (e.g. longer than 255 bytes). The caller owns the result. Any
 * thread; the connection is then used by one thread at a time.
 */
aspen_tls_conn_t *
aspen_tls_conn_new(aspen_tls_ctx_t *ctx, bool is_server, const char *sni_host)
{
   aspen_tls_conn_t *conn;
   SSL *ssl;
   BIO *rbio;
   BIO *wbio;

   ASPEN_ASSERT(ctx->is_server == is_server);
   ERR_clear_error();
   ssl = SSL_new(ctx->ssl_ctx);
   rbio = BIO_new(BIO_s_mem());
   wbio = BIO_new(BIO_s_mem());
   if (!ssl || !rbio || !wbio) {
      SSL_free(ssl);
      BIO_free(rbio);
      BIO_free(wbio);
      ERR_clear_error();
      aspen_logf(ASPEN_LOG_ERROR, "NETWORK", "tls",
                 "cannot allocate a TLS connection");
      return NULL;
   }
   /* An empty read BIO means "wait for more", not end of stream: the
    * caller reports a closed socket itself. */
   BIO_set_mem_eof_return(rbio, -1);
   BIO_set_mem_eof_return(wbio, -1);
   SSL_set_bio(ssl, rbio, wbio); /* ssl owns both BIOs from here */

   conn = aspen_xcalloc(1, sizeof *conn);
   conn->ctx = ctx;
   conn->ssl = ssl;
   conn->rbio = rbio;
   conn->wbio = wbio;
   conn->is_server = is_server;
   conn->state = CONN_HANDSHAKE;
   aspen_buf_init(&conn->pending);

   if (is_server) {
      SSL_set_accept_state(ssl);
   } else {
      SSL_set_connect_state(ssl);
      if (sni_host && !conn_set_peer_name(conn, sni_host)) {
         ERR_clear_error();
         aspen_logf(ASPEN_LOG_ERROR, "NETWORK", "tls",
                    "TLS client cannot use peer name '%.64s'", sni_host);
         aspen_tls_conn_destroy(conn);
         return NULL;
      }
   }
   return conn;
}

/*
 * Frees a connection, its SSL and any queued plaintext; NULL is a no-op.
 * It sends nothing: a caller wanting a clean close flushes cipher_out first.
 * The thread using the connection.
 */
void
aspen_tls_conn_destroy(aspen_tls_conn_t *conn)
{
   if (!conn) {
      return;
   }
   SSL_free(conn->ssl);
   aspen_buf_cleanup(&conn->pending);
   free(conn->peer_subject);
   free(conn);
}

/*
 * Starts the handshake: for a client, appends the ClientHello to
 * cipher_out; for a server, does nothing useful but is harmless. Returns
 * false with err (SSLHandshakeFailed) set if OpenSSL cannot build the hello,
 * or (ProtocolError) if the connection already failed. The thread using the
 * connection.
 */
bool
aspen_tls_conn_start(aspen_tls_conn_t *conn, aspen_buf_t *cipher_out,
                     aspen_error_t *err)
{
   if (conn->state == CONN_FAILED) {
      return conn_unusable(conn, err);
   }
   if (conn->handshake_done) {
      return true;
   }
   return conn_handshake(conn, cipher_out, err);
}

/*
 * Feeds ciphertext from the peer; see tls.h for the outputs. `data` is
 * borrowed and may be NULL when len is 0 (which just drives the handshake).
 * Every byte is taken (the read BIO grows as needed), so flow control is the
 * caller's: stop reading the socket while plain_out is large. Returns false
 * with err set on a fatal error: SSLHandshakeFailed during the handshake
 * (with the certificate verification result when that failed), ProtocolError
 * after it or when the connection had already failed; cipher_out then holds
 * any alert to send. On a close_notify from the peer, our own close_notify is
 * appended to cipher_out, *peer_closed is set and later input is ignored.
 * *peer_closed is always written when not NULL. The thread using the
 * connection.
 */
bool
aspen_tls_conn_feed(aspen_tls_conn_t *conn, const uint8_t *data, size_t len,
                    aspen_buf_t *plain_out, aspen_buf_t *cipher_out,
                    bool *peer_closed, aspen_error_t *err)
{
   if (peer_closed) {
      *peer_closed = conn->peer_closed;
   }
   if (conn->state == CONN_FAILED) {
      return conn_unusable(conn, err);
   }
   if (conn->peer_closed) {
      return true; /* nothing may follow close_notify; drop it */
   }
   while (len > 0) {
      int chunk = len > INT_MAX ? INT_MAX : (int) len;
      int w = BIO_write(conn->rbio, data, chunk);

      if (w <= 0) {
         return conn_fail(conn, ASPEN_ERR_InternalError,
                          "cannot buffer TLS input", err);
      }
      data += w;
      len -= (size_t) w;
   }

   if (!conn->handshake_done) {
      if (!conn_handshake(conn, cipher_out, err)) {
         return false;
      }
      if (!conn->handshake_done) {
         return true; /* wants more input */
      }
   }

   /* Application data may have arrived with the handshake's last flight, and
    * one feed may hold many records: read until OpenSSL wants more. */
   for (;;) {
      uint8_t *dst = aspen_buf_reserve(plain_out, TLS_RECORD_MAX);
      size_t got = 0;
      int r;
      int e;

      ERR_clear_error();
      r = SSL_read_ex(conn->ssl, dst, TLS_RECORD_MAX, &got);
      conn_drain(conn, cipher_out); /* e.g. a KeyUpdate reply */
      if (r == 1) {
         aspen_buf_commit(plain_out, got);
         continue;
      }
      e = SSL_get_error(conn->ssl, r);
      switch (e) {
      case SSL_ERROR_WANT_READ:
      case SSL_ERROR_WANT_WRITE:
         return true;
      case SSL_ERROR_ZERO_RETURN:
         aspen_logf(ASPEN_LOG_DEBUG, "NETWORK", "tls",
                    "TLS %s connection received close_notify",
                    conn->is_server ? "server" : "client");
         conn->peer_closed = true;
         if (peer_closed) {
            *peer_closed = true;
         }
         conn_send_close_notify(conn, cipher_out);
         return true;
      default:
         return conn_fail(conn, ASPEN_ERR_ProtocolError, "TLS read failed",
                          err);
      }
   }
}

/*
 * Encrypts plaintext and appends the records to cipher_out; `data` is
 * borrowed (copied if queued). Before the handshake completes the bytes are
 * queued and the feed that completes it appends them. Returns false with err
 * (ProtocolError) set if the connection failed or was closed, or OpenSSL
 * fails. The thread using the connection.
 */
bool
aspen_tls_conn_write(aspen_tls_conn_t *conn, const uint8_t *data, size_t len,
                     aspen_buf_t *cipher_out, aspen_error_t *err)
{
   if (conn->state == CONN_FAILED || conn->state == CONN_CLOSED) {
      return conn_unusable(conn, err);
   }
   if (len == 0) {
      return true;
   }
   if (!conn->handshake_done) {
      aspen_buf_append(&conn->pending, data, len);
      return true;
   }
   return conn_write_records(conn, data, len, cipher_out, err);
}

/*
 * Sends close_notify (see tls_int.h). A connection still in its handshake
 * or already closed sends nothing and returns true. The thread using the
 * connection.
 */
bool
aspen__tls_conn_shutdown(aspen_tls_conn_t *conn, aspen_buf_t *cipher_out,
                         aspen_error_t *err)
{
   if (conn->state == CONN_FAILED) {
      return conn_unusable(conn, err);
   }
   conn_send_close_notify(conn, cipher_out);
   return true;
}

/*
 * True once the handshake has completed (it stays true after a close or a
 * later failure). Any thread that may use the connection.
 */
bool
aspen_tls_conn_is_handshake_done(const aspen_tls_conn_t *conn)
{
   return conn->handshake_done;
}

/*
 * The peer certificate's subject in RFC 2253 form, e.g.
 * "CN=aspen-client,OU=clients,O=aspen", computed once and owned by the
 * connection (valid until destroy). NULL before the handshake completes,
 * after a failure, when the context does not verify peers, when the peer
 * sent no certificate, or when it did not verify. The thread using the
 * connection.
 */
const char *
aspen_tls_conn_peer_subject(aspen_tls_conn_t *conn)
{
   X509 *cert;
   BIO *bio;
   char *text = NULL;
   long n;

   if (conn->peer_subject) {
      return conn->peer_subject;
   }
   if (!conn->handshake_done || conn->state == CONN_FAILED ||
       !conn->ctx->verify_peer) {
      return NULL;
   }
   cert = SSL_get0_peer_certificate(conn->ssl);
   if (!cert || SSL_get_verify_result(conn->ssl) != X509_V_OK) {
      return NULL;
   }
   bio = BIO_new(BIO_s_mem());
   if (!bio) {
      ERR_clear_error();
      return NULL;
   }
   if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0,
                          XN_FLAG_RFC2253) >= 0 &&
       (n = BIO_get_mem_data(bio, &text)) >= 0) {
      conn->peer_subject = aspen_xmalloc((size_t) n + 1);
      memcpy(conn->peer_subject, text, (size_t) n);
      conn->peer_subject[n] = '\0';
   }
   BIO_free(bio);
   ERR_clear_error();
   return conn->peer_subject;
}

/*
 * True when `data` starts like a TLS handshake record: content type 0x16 and
 * major version 3 (SSL 3.0 to TLS 1.3 all use it in the record header). A
 * MongoDB message starts with its little-endian length, whose first two
 * bytes would have to be 0x16 0x03 to collide. With fewer than 2 bytes it
 * returns false and sets *need_more (may be NULL), which is otherwise set to
 * false. Any thread.
 */
bool
aspen_tls_looks_like_tls(const uint8_t *data, size_t len, bool *need_more)
{
   if (need_more) {
      *need_more = len < 2;
   }
   if (len < 2) {
      return false;
   }
   return data[0] == 0x16 && data[1] == 0x03;
}
