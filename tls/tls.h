/*
 * tls.h - the public header of aspen's TLS termination (OpenSSL).
 *
 * tls/ depends on wire/ (buffers, errors, logging) and OpenSSL, and never does
 * I/O of its own: an aspen_tls_conn_t is an SSL object between two memory
 * BIOs. The proxy feeds it the ciphertext it read from a socket and gets back
 * plaintext to parse plus ciphertext to write to the socket; plaintext to send
 * goes in the other direction. This keeps TLS testable in memory and keeps
 * the event loop in charge of every socket.
 *
 * Threading: a context may be shared by many connections on one thread; a
 * connection is used by one thread at a time.
 */
#ifndef ASPEN_TLS_H
#define ASPEN_TLS_H

#include "wire.h"

typedef struct aspen_tls_ctx aspen_tls_ctx_t;
typedef struct aspen_tls_conn aspen_tls_conn_t;

typedef enum {
   ASPEN_TLS_DISABLED = 0, /* plaintext only */
   ASPEN_TLS_ALLOWED = 1,  /* TLS and plaintext on one port, by first bytes */
   ASPEN_TLS_REQUIRED = 2, /* TLS only */
} aspen_tls_mode_t;

/* Parses "disabled" | "allowed" | "required". False if unknown. */
bool aspen_tls_mode_parse(const char *s, aspen_tls_mode_t *mode);
const char *aspen_tls_mode_name(aspen_tls_mode_t mode);

/* A server context from PEM files: certificate chain, private key and, when
 * ca_file is not NULL, a CA used to verify client certificates if a client
 * offers one (clients without a certificate are still accepted). TLS 1.2 is
 * the minimum version. Returns NULL with err set (code 141
 * SSLHandshakeFailed is not used here; InvalidOptions with OpenSSL's reason)
 * when a file is missing or the key does not match the certificate. */
aspen_tls_ctx_t *aspen_tls_ctx_new_server(const char *cert_file,
                                          const char *key_file,
                                          const char *ca_file,
                                          aspen_error_t *err);
/* A client context that verifies the server against ca_file (NULL: no
 * verification). Used by tests and by nothing in production yet. */
aspen_tls_ctx_t *aspen_tls_ctx_new_client(const char *ca_file,
                                          aspen_error_t *err);
/* What a client context for a backend connection checks and presents
 * (the tls* options of a MongoDB URI). */
typedef struct {
   const char *ca_file;       /* tlsCAFile; NULL: the system's trust store */
   const char *cert_key_file; /* tlsCertificateKeyFile (certificate and key
                                 in one unencrypted PEM), or NULL */
   bool allow_invalid_certificates; /* tlsAllowInvalidCertificates: no check */
   bool allow_invalid_hostnames;    /* tlsAllowInvalidHostnames: the chain is
                                       checked, the name is not */
} aspen_tls_client_opts_t;

/* A client context for connecting to a server with `opts`. Returns NULL
 * with err (InvalidOptions and OpenSSL's reason) when a file cannot be
 * loaded. Startup thread (reads files). */
aspen_tls_ctx_t *aspen_tls_ctx_new_client_opts(
   const aspen_tls_client_opts_t *opts, aspen_error_t *err);
void aspen_tls_ctx_destroy(aspen_tls_ctx_t *ctx);

/* A connection in the server or client role. The context must outlive it.
 * For a client, `sni_host` (may be NULL) is sent as SNI and verified against
 * the certificate when the context verifies. */
aspen_tls_conn_t *aspen_tls_conn_new(aspen_tls_ctx_t *ctx, bool is_server,
                                     const char *sni_host);
void aspen_tls_conn_destroy(aspen_tls_conn_t *conn);

/* Starts the handshake on a client connection: appends the ClientHello to
 * cipher_out. Servers need not call it. */
bool aspen_tls_conn_start(aspen_tls_conn_t *conn, aspen_buf_t *cipher_out,
                          aspen_error_t *err);

/* Feeds `len` bytes of ciphertext received from the peer. Drives the
 * handshake, appends every decrypted byte to plain_out (looping SSL_read
 * until it wants more input) and appends every byte OpenSSL wants sent
 * (handshake records, alerts, plaintext queued by aspen_tls_conn_write
 * before the handshake finished) to cipher_out. Returns false with err set
 * (code 141 SSLHandshakeFailed, or 17 ProtocolError after the handshake) on
 * a fatal TLS error; whatever alert OpenSSL produced is still in cipher_out
 * so the caller may send it before closing. A clean close_notify from the
 * peer sets *peer_closed (may be NULL) and returns true. */
bool aspen_tls_conn_feed(aspen_tls_conn_t *conn, const uint8_t *data,
                         size_t len, aspen_buf_t *plain_out,
                         aspen_buf_t *cipher_out, bool *peer_closed,
                         aspen_error_t *err);

/* Encrypts `len` bytes of plaintext and appends the records to cipher_out.
 * Before the handshake completes the plaintext is queued inside the
 * connection and flushed by a later feed. Returns false on a fatal error. */
bool aspen_tls_conn_write(aspen_tls_conn_t *conn, const uint8_t *data,
                          size_t len, aspen_buf_t *cipher_out,
                          aspen_error_t *err);

bool aspen_tls_conn_is_handshake_done(const aspen_tls_conn_t *conn);

/* The peer certificate's subject as an RFC 2253 string (for MONGODB-X509),
 * or NULL if the peer sent none or it did not verify. Valid until destroy. */
const char *aspen_tls_conn_peer_subject(aspen_tls_conn_t *conn);

/* True when the first bytes a client sent look like a TLS record (a
 * handshake record, 0x16, with major version 3). Needs at least 2 bytes;
 * with fewer it returns false and *need_more is set. */
bool aspen_tls_looks_like_tls(const uint8_t *data, size_t len,
                              bool *need_more);

#endif /* ASPEN_TLS_H */
