/*
 * tls_ctx.c - OpenSSL contexts for aspen's TLS termination, the
 * "disabled"/"allowed"/"required" mode names, and the converter from
 * OpenSSL's error queue to aspen_error_t.
 *
 * A context holds what every connection on a listener shares: the server
 * certificate and key, the CA that client certificates are checked against,
 * and the protocol floor (TLS 1.2). Contexts are built once at startup from
 * PEM files (certs/gen-dev-certs.sh writes development ones); tls_conn.c makes
 * one SSL per connection from them. Nothing here does I/O beyond reading
 * those files.
 */
#include "tls_int.h"

#include <openssl/err.h>
#include <openssl/x509.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Any value works; OpenSSL refuses to resume sessions on a server that
 * verifies clients unless a session id context is set. */
static const unsigned char session_id_context[] = "aspen";

static const char *const mode_names[] = {
   [ASPEN_TLS_DISABLED] = "disabled",
   [ASPEN_TLS_ALLOWED] = "allowed",
   [ASPEN_TLS_REQUIRED] = "required",
};

/*
 * Parses a TLS mode name, exactly "disabled", "allowed" or "required" (the
 * spelling of aspen's config file). Returns true and sets *mode on a match;
 * returns false and sets *mode to ASPEN_TLS_DISABLED for NULL or any other
 * string. Any thread.
 */
bool
aspen_tls_mode_parse(const char *s, aspen_tls_mode_t *mode)
{
   *mode = ASPEN_TLS_DISABLED;
   if (!s) {
      return false;
   }
   for (size_t i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++) {
      if (strcmp(s, mode_names[i]) == 0) {
         *mode = (aspen_tls_mode_t) i;
         return true;
      }
   }
   return false;
}

/*
 * Returns the config-file name of `mode`, or "unknown" for a value outside
 * the enum. Never NULL; the string is static. Any thread.
 */
const char *
aspen_tls_mode_name(aspen_tls_mode_t mode)
{
   if ((unsigned) mode >= sizeof mode_names / sizeof mode_names[0]) {
      return "unknown";
   }
   return mode_names[mode];
}

/*
 * Converts the calling thread's OpenSSL error queue into `err` (see
 * tls_int.h). Every queued error is consumed, even those that do not fit in
 * the message, so they cannot be blamed on a later call. Any thread.
 */
void
aspen__tls_error_from_queue(aspen_error_t *err, int32_t code,
                            const char *what)
{
   char reason[256];
   unsigned long e;
   bool first = true;
   size_t used;
   int n;

   if (!err) {
      ERR_clear_error();
      return;
   }
   aspen_error_set(err, code, "%s", what);
   used = strlen(err->message);
   while ((e = ERR_get_error()) != 0) {
      if (used + 1 >= sizeof err->message) {
         continue; /* full: keep draining */
      }
      ERR_error_string_n(e, reason, sizeof reason);
      n = snprintf(err->message + used, sizeof err->message - used, "%s%s",
                   first ? ": " : "; ", reason);
      first = false;
      if (n > 0) {
         used += (size_t) n;
         if (used >= sizeof err->message) {
            used = sizeof err->message - 1;
         }
      }
   }
}

/* Refuses to prompt on the terminal for the passphrase of an encrypted key:
 * loading such a key fails with an error instead of blocking startup. */
static int
no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
   (void) buf;
   (void) size;
   (void) rwflag;
   (void) userdata;
   return 0;
}

/* Allocates a context of either role with the settings both share. */
static aspen_tls_ctx_t *
ctx_new(bool is_server, aspen_error_t *err)
{
   aspen_tls_ctx_t *ctx;
   SSL_CTX *ssl_ctx;

   ERR_clear_error();
   ssl_ctx = SSL_CTX_new(is_server ? TLS_server_method() : TLS_client_method());
   if (!ssl_ctx) {
      aspen__tls_error_from_queue(err, ASPEN_ERR_InternalError,
                                  "cannot create TLS context");
      return NULL;
   }
   if (!SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION)) {
      aspen__tls_error_from_queue(err, ASPEN_ERR_InternalError,
                                  "cannot set TLS 1.2 as minimum version");
      SSL_CTX_free(ssl_ctx);
      return NULL;
   }
   /* Client-initiated renegotiation only costs the server CPU, and without
    * it SSL_write never needs to read, which keeps tls_conn simple. */
   SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_RENEGOTIATION);
   /* Idle connections give their 2 x 16 KB record buffers back. */
   SSL_CTX_set_mode(ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
   SSL_CTX_set_default_passwd_cb(ssl_ctx, no_passphrase);

   ctx = aspen_xcalloc(1, sizeof *ctx);
   ctx->ssl_ctx = ssl_ctx;
   ctx->is_server = is_server;
   return ctx;
}

/*
 * Loads a certificate chain and key into `ctx` (see tls_int.h). The key must
 * not be encrypted. Startup thread only: it reads files.
 */
bool
aspen__tls_ctx_use_cert(aspen_tls_ctx_t *ctx, const char *cert_file,
                        const char *key_file, aspen_error_t *err)
{
   char what[ASPEN_ERROR_MSG_MAX];

   ERR_clear_error();
   if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_file) != 1) {
      snprintf(what, sizeof what, "cannot load TLS certificate '%s'",
               cert_file);
      aspen__tls_error_from_queue(err, ASPEN_ERR_InvalidOptions, what);
      return false;
   }
   if (SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_file, SSL_FILETYPE_PEM) !=
          1 ||
       SSL_CTX_check_private_key(ctx->ssl_ctx) != 1) {
      snprintf(what, sizeof what,
               "cannot use TLS private key '%s' with certificate '%s'",
               key_file, cert_file);
      aspen__tls_error_from_queue(err, ASPEN_ERR_InvalidOptions, what);
      return false;
   }
   return true;
}

/* Trusts the certificates in `ca_file` for verifying the peer. */
static bool
ctx_load_ca(aspen_tls_ctx_t *ctx, const char *ca_file, aspen_error_t *err)
{
   char what[ASPEN_ERROR_MSG_MAX];

   ERR_clear_error();
   if (SSL_CTX_load_verify_locations(ctx->ssl_ctx, ca_file, NULL) != 1) {
      snprintf(what, sizeof what, "cannot load TLS CA file '%s'", ca_file);
      aspen__tls_error_from_queue(err, ASPEN_ERR_InvalidOptions, what);
      return false;
   }
   ctx->verify_peer = true;
   return true;
}

/*
 * Creates a server context from PEM files: `cert_file` (leaf first, then
 * any intermediates), `key_file` (unencrypted) and optionally `ca_file`.
 * With a CA, clients are asked for a certificate (the CA's names are sent as
 * acceptable issuers) and one that is offered must verify, but a client
 * without one is accepted; without a CA, clients are never asked. Returns
 * the context, or NULL with err set (InvalidOptions and OpenSSL's reasons)
 * if a file cannot be read or the key does not match. The caller owns the
 * result (aspen_tls_ctx_destroy). Startup thread only: it reads files.
 */
aspen_tls_ctx_t *
aspen_tls_ctx_new_server(const char *cert_file, const char *key_file,
                         const char *ca_file, aspen_error_t *err)
{
   aspen_tls_ctx_t *ctx = ctx_new(true, err);
   STACK_OF(X509_NAME) *names;
   char what[ASPEN_ERROR_MSG_MAX];

   if (!ctx) {
      return NULL;
   }
   if (!aspen__tls_ctx_use_cert(ctx, cert_file, key_file, err)) {
      goto fail;
   }
   SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
   if (SSL_CTX_set_session_id_context(ctx->ssl_ctx, session_id_context,
                                      sizeof session_id_context - 1) != 1) {
      aspen__tls_error_from_queue(err, ASPEN_ERR_InternalError,
                                  "cannot set TLS session id context");
      goto fail;
   }
   if (ca_file) {
      if (!ctx_load_ca(ctx, ca_file, err)) {
         goto fail;
      }
      names = SSL_load_client_CA_file(ca_file);
      if (!names) {
         snprintf(what, sizeof what, "no CA certificate in '%s'", ca_file);
         aspen__tls_error_from_queue(err, ASPEN_ERR_InvalidOptions, what);
         goto fail;
      }
      SSL_CTX_set_client_CA_list(ctx->ssl_ctx, names); /* takes names */
      /* No SSL_VERIFY_FAIL_IF_NO_PEER_CERT: like mongod with
       * allowConnectionsWithoutCertificates, a certificate is optional but
       * must be valid when given. */
      SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, NULL);
   } else {
      SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_NONE, NULL);
   }
   return ctx;

fail:
   aspen_tls_ctx_destroy(ctx);
   return NULL;
}

/*
 * Creates a client context. With `ca_file`, the server's chain must verify
 * against it (and its name against the connection's sni_host, see
 * aspen_tls_conn_new); with NULL nothing is verified. Returns NULL with err
 * (InvalidOptions) set if the CA file cannot be read. The caller owns the
 * result. Any thread (reads a file).
 */
aspen_tls_ctx_t *
aspen_tls_ctx_new_client(const char *ca_file, aspen_error_t *err)
{
   aspen_tls_ctx_t *ctx = ctx_new(false, err);

   if (!ctx) {
      return NULL;
   }
   if (ca_file) {
      if (!ctx_load_ca(ctx, ca_file, err)) {
         aspen_tls_ctx_destroy(ctx);
         return NULL;
      }
      SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, NULL);
   } else {
      SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_NONE, NULL);
   }
   return ctx;
}

/*
 * Creates a client context from a URI's TLS options (see tls.h): the peer is
 * verified against opts->ca_file, or the system's default trust store when
 * it is NULL, unless allow_invalid_certificates; the host name is checked
 * unless allow_invalid_hostnames (aspen_tls_conn_new's sni_host); a client
 * certificate is presented when cert_key_file is given. Returns NULL with err
 * (InvalidOptions) set if a file cannot be read or the key does not match.
 * The caller owns the result. Any thread (reads files).
 */
aspen_tls_ctx_t *
aspen_tls_ctx_new_client_opts(const aspen_tls_client_opts_t *opts,
                              aspen_error_t *err)
{
   aspen_tls_ctx_t *ctx = ctx_new(false, err);

   if (!ctx) {
      return NULL;
   }
   if (opts->cert_key_file &&
       !aspen__tls_ctx_use_cert(ctx, opts->cert_key_file, opts->cert_key_file,
                                err)) {
      aspen_tls_ctx_destroy(ctx);
      return NULL;
   }
   if (opts->allow_invalid_certificates) {
      SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_NONE, NULL);
      return ctx;
   }
   if (opts->ca_file) {
      if (!ctx_load_ca(ctx, opts->ca_file, err)) {
         aspen_tls_ctx_destroy(ctx);
         return NULL;
      }
   } else {
      ERR_clear_error();
      if (SSL_CTX_set_default_verify_paths(ctx->ssl_ctx) != 1) {
         aspen__tls_error_from_queue(err, ASPEN_ERR_InvalidOptions,
                                     "cannot load the system's trusted CA "
                                     "certificates");
         aspen_tls_ctx_destroy(ctx);
         return NULL;
      }
      ctx->verify_peer = true;
   }
   ctx->skip_hostname = opts->allow_invalid_hostnames;
   SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, NULL);
   return ctx;
}

/*
 * Frees a context; NULL is a no-op. Connections made from it must have been
 * destroyed first. Thread that owns the context.
 */
void
aspen_tls_ctx_destroy(aspen_tls_ctx_t *ctx)
{
   if (!ctx) {
      return;
   }
   SSL_CTX_free(ctx->ssl_ctx);
   free(ctx);
}
