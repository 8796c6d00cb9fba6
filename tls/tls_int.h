/*
 * tls_int.h - internals shared by the files of tls/ (and by its unit test).
 *
 * Nothing outside tls/ includes this header: the proxy sees only tls.h and
 * opaque handles. It exposes the context layout to tls_conn.c, the OpenSSL
 * error-queue converter, and two helpers the tests need that production code
 * does not (a client certificate on a client context, and sending
 * close_notify).
 */
#ifndef ASPEN_TLS_INT_H
#define ASPEN_TLS_INT_H

#include "tls.h"

#include <openssl/ssl.h>

struct aspen_tls_ctx {
   SSL_CTX *ssl_ctx;
   bool is_server;
   bool verify_peer; /* a CA was given: peer certificates are checked */
   bool skip_hostname; /* client: the chain is checked, the name is not */
};

/* Fills `err` with `code` and "<what>: <reason>; <reason>..." built from
 * OpenSSL's error queue of the calling thread (ERR_error_string_n), and
 * empties that queue. With an empty queue the message is just `what`. */
void aspen__tls_error_from_queue(aspen_error_t *err, int32_t code,
                                 const char *what);

/* Loads a PEM certificate chain and its private key into `ctx` and checks
 * that they match. Used by the server context and, in tests, to give a
 * client a certificate. False with err (InvalidOptions) set on failure. */
bool aspen__tls_ctx_use_cert(aspen_tls_ctx_t *ctx, const char *cert_file,
                             const char *key_file, aspen_error_t *err);

/* Sends close_notify: appends the alert to cipher_out. Later writes fail.
 * False with err (ProtocolError) set if the connection already failed. */
bool aspen__tls_conn_shutdown(aspen_tls_conn_t *conn, aspen_buf_t *cipher_out,
                              aspen_error_t *err);

#endif /* ASPEN_TLS_INT_H */
