/*
 * test_tls.c - unit tests for tls/: a client and a server aspen_tls_conn_t
 * pumping ciphertext to each other in memory, with no sockets.
 *
 * Certificates come from certs/gen-dev-certs.sh, run into a temporary folder
 * (the script's path is in ASPEN_CERTS_SCRIPT, set by ctest), or from an
 * existing folder named by ASPEN_CERTS_DIR. A second, unrelated CA is made
 * in-process for the verification-failure cases. The tests include
 * tls_int.h to reach what production code does not need: a client
 * certificate on a client context, close_notify, and the SSL_CTX itself.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw */
#endif

#include "tls_int.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static char work_dir[PATH_MAX];
static char ca_pem[PATH_MAX];
static char server_pem[PATH_MAX];
static char server_key[PATH_MAX];
static char client_pem[PATH_MAX];
static char client_key[PATH_MAX];
static char wrong_ca_pem[PATH_MAX];
static FILE *log_file;

/* ------------------------------------------------------------------------ */
/* Fixtures                                                                  */
/* ------------------------------------------------------------------------ */

/* Runs `bash script dir` and returns true if it exits with status 0. */
static bool
run_script(const char *script, const char *dir)
{
   int status = 0;
   pid_t pid = fork();

   if (pid < 0) {
      return false;
   }
   if (pid == 0) {
      execlp("bash", "bash", script, dir, (char *) NULL);
      _exit(127);
   }
   if (waitpid(pid, &status, 0) != pid) {
      return false;
   }
   return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* Writes a self-signed CA that signed none of the generated certificates. */
static bool
write_wrong_ca(const char *path)
{
   EVP_PKEY *pkey = EVP_EC_gen("P-256");
   X509 *x = X509_new();
   X509_EXTENSION *ext = NULL;
   X509_NAME *name;
   FILE *f = NULL;
   bool ok = false;

   if (!pkey || !x) {
      goto done;
   }
   name = X509_get_subject_name(x);
   ext = X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints,
                             "critical,CA:TRUE");
   if (!ext || !X509_set_version(x, X509_VERSION_3) ||
       !ASN1_INTEGER_set(X509_get_serialNumber(x), 1) ||
       !X509_gmtime_adj(X509_getm_notBefore(x), 0) ||
       !X509_gmtime_adj(X509_getm_notAfter(x), 30L * 86400) ||
       !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   (const unsigned char *) "aspen wrong CA",
                                   -1, -1, 0) ||
       !X509_set_issuer_name(x, name) || !X509_set_pubkey(x, pkey) ||
       !X509_add_ext(x, ext, -1) || !X509_sign(x, pkey, EVP_sha256())) {
      goto done;
   }
   f = fopen(path, "w");
   ok = f && PEM_write_X509(f, x) == 1;
done:
   if (f) {
      ok = fclose(f) == 0 && ok;
   }
   X509_EXTENSION_free(ext);
   X509_free(x);
   EVP_PKEY_free(pkey);
   return ok;
}

/* Writes "dir/file" to out (PATH_MAX bytes); aborts if it does not fit. */
static void
join(char *out, const char *dir, const char *file)
{
   int n = snprintf(out, PATH_MAX, "%s/%s", dir, file);

   if (n < 0 || n >= PATH_MAX) {
      fprintf(stderr, "test_tls: path too long: %s/%s\n", dir, file);
      abort();
   }
}

static int
group_setup(void **state)
{
   const char *tmp = getenv("TMPDIR");
   const char *dir = getenv("ASPEN_CERTS_DIR");
   const char *script = getenv("ASPEN_CERTS_SCRIPT");
   char certs[PATH_MAX];
   char log_path[PATH_MAX];

   (void) state;
   snprintf(work_dir, sizeof work_dir, "%s/aspen-test-tls-XXXXXX",
            tmp && *tmp ? tmp : "/tmp");
   if (!mkdtemp(work_dir)) {
      perror("mkdtemp");
      return -1;
   }
   if (dir && *dir) {
      snprintf(certs, sizeof certs, "%s", dir);
   } else if (script && *script) {
      join(certs, work_dir, "certs");
      if (!run_script(script, certs)) {
         fprintf(stderr, "test_tls: %s %s failed\n", script, certs);
         return -1;
      }
   } else {
      fprintf(stderr, "test_tls: set ASPEN_CERTS_SCRIPT (path of "
                      "certs/gen-dev-certs.sh) or ASPEN_CERTS_DIR\n");
      return -1;
   }
   join(ca_pem, certs, "ca.pem");
   join(server_pem, certs, "server.pem");
   join(server_key, certs, "server-key.pem");
   join(client_pem, certs, "client.pem");
   join(client_key, certs, "client-key.pem");
   join(wrong_ca_pem, work_dir, "wrong-ca.pem");
   if (!write_wrong_ca(wrong_ca_pem)) {
      fprintf(stderr, "test_tls: cannot write %s\n", wrong_ca_pem);
      return -1;
   }
   /* Debug level runs every log statement (state changes) under the
    * sanitizers without cluttering the test output. */
   join(log_path, work_dir, "log.json");
   log_file = fopen(log_path, "w");
   if (log_file) {
      aspen_log_set_stream(log_file);
      aspen_log_set_level(ASPEN_LOG_DEBUG);
   }
   return 0;
}

static int
remove_entry(const char *path, const struct stat *sb, int type,
             struct FTW *ftw)
{
   (void) sb;
   (void) type;
   (void) ftw;
   return remove(path);
}

static int
group_teardown(void **state)
{
   (void) state;
   aspen_log_set_level(ASPEN_LOG_INFO);
   aspen_log_set_stream(stderr);
   if (log_file) {
      fclose(log_file);
   }
   if (work_dir[0]) {
      nftw(work_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
   }
   return 0;
}

/* One side of a connection and what it has produced. */
typedef struct {
   aspen_tls_conn_t *conn;
   aspen_buf_t out;   /* ciphertext not yet delivered to the other side */
   aspen_buf_t plain; /* plaintext received */
   bool closed;       /* close_notify received */
   bool failed;
   aspen_error_t err;
} end_t;

static aspen_tls_ctx_t *
server_ctx(const char *ca)
{
   aspen_error_t err = {0};
   aspen_tls_ctx_t *ctx =
      aspen_tls_ctx_new_server(server_pem, server_key, ca, &err);

   if (!ctx) {
      fail_msg("server ctx: %s", err.message);
   }
   return ctx;
}

static aspen_tls_ctx_t *
client_ctx(const char *ca, bool with_cert)
{
   aspen_error_t err = {0};
   aspen_tls_ctx_t *ctx = aspen_tls_ctx_new_client(ca, &err);

   if (!ctx) {
      fail_msg("client ctx: %s", err.message);
   }
   if (with_cert && !aspen__tls_ctx_use_cert(ctx, client_pem, client_key,
                                             &err)) {
      fail_msg("client cert: %s", err.message);
   }
   return ctx;
}

/* Creates both ends and starts the client's handshake. */
static void
ends_open(end_t *client, end_t *server, aspen_tls_ctx_t *cctx,
          aspen_tls_ctx_t *sctx, const char *sni_host)
{
   memset(client, 0, sizeof *client);
   memset(server, 0, sizeof *server);
   aspen_buf_init(&client->out);
   aspen_buf_init(&client->plain);
   aspen_buf_init(&server->out);
   aspen_buf_init(&server->plain);
   client->conn = aspen_tls_conn_new(cctx, false, sni_host);
   server->conn = aspen_tls_conn_new(sctx, true, NULL);
   assert_non_null(client->conn);
   assert_non_null(server->conn);
   assert_false(aspen_tls_conn_is_handshake_done(client->conn));
   assert_true(aspen_tls_conn_start(client->conn, &client->out, &client->err));
   assert_true(aspen_buf_len(&client->out) > 0);
}

static void
ends_close(end_t *client, end_t *server)
{
   end_t *ends[2] = {client, server};

   for (int i = 0; i < 2; i++) {
      aspen_tls_conn_destroy(ends[i]->conn);
      aspen_buf_cleanup(&ends[i]->out);
      aspen_buf_cleanup(&ends[i]->plain);
   }
}

/* Feeds `from`'s pending ciphertext to `to`, at most `chunk` bytes per feed.
 * Returns true if any byte moved. */
static bool
deliver(end_t *from, end_t *to, size_t chunk)
{
   bool moved = false;

   while (aspen_buf_len(&from->out) > 0 && !to->failed) {
      size_t n = aspen_buf_len(&from->out);
      bool closed = true; /* must be overwritten */

      n = n < chunk ? n : chunk;
      if (!aspen_tls_conn_feed(to->conn, aspen_buf_data(&from->out), n,
                               &to->plain, &to->out, &closed, &to->err)) {
         to->failed = true;
         assert_true(to->err.code != 0);
         assert_true(to->err.message[0] != '\0');
      }
      to->closed = to->closed || closed;
      aspen_buf_consume(&from->out, n);
      moved = true;
   }
   return moved;
}

/* Moves ciphertext both ways until neither side has anything to send. */
static void
pump(end_t *a, end_t *b, size_t chunk)
{
   for (int round = 0; round < 10000; round++) {
      bool moved = deliver(a, b, chunk);

      moved = deliver(b, a, chunk) || moved;
      if (!moved) {
         return;
      }
   }
   fail_msg("the connections never went quiet");
}

static void
write_bytes(end_t *end, const void *data, size_t len)
{
   if (!aspen_tls_conn_write(end->conn, data, len, &end->out, &end->err)) {
      fail_msg("write: %s", end->err.message);
   }
}

static void
write_str(end_t *end, const char *s)
{
   write_bytes(end, s, strlen(s));
}

/* Asserts that `end` received exactly `s`, and forgets it. */
static void
expect_plain(end_t *end, const char *s)
{
   size_t len = strlen(s);

   assert_int_equal(aspen_buf_len(&end->plain), len);
   assert_memory_equal(aspen_buf_data(&end->plain), s, len);
   aspen_buf_clear(&end->plain);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void
test_mode_parse(void **state)
{
   aspen_tls_mode_t mode = ASPEN_TLS_REQUIRED;

   (void) state;
   assert_true(aspen_tls_mode_parse("disabled", &mode));
   assert_int_equal(mode, ASPEN_TLS_DISABLED);
   assert_true(aspen_tls_mode_parse("allowed", &mode));
   assert_int_equal(mode, ASPEN_TLS_ALLOWED);
   assert_true(aspen_tls_mode_parse("required", &mode));
   assert_int_equal(mode, ASPEN_TLS_REQUIRED);

   const char *bad[] = {"", "Required", "requireTLS", "required ", "on"};
   for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      mode = ASPEN_TLS_REQUIRED;
      assert_false(aspen_tls_mode_parse(bad[i], &mode));
      assert_int_equal(mode, ASPEN_TLS_DISABLED);
   }
   assert_false(aspen_tls_mode_parse(NULL, &mode));

   for (int m = ASPEN_TLS_DISABLED; m <= ASPEN_TLS_REQUIRED; m++) {
      assert_true(aspen_tls_mode_parse(
         aspen_tls_mode_name((aspen_tls_mode_t) m), &mode));
      assert_int_equal(mode, m);
   }
   assert_string_equal(aspen_tls_mode_name((aspen_tls_mode_t) 7), "unknown");
}

static void
test_looks_like_tls(void **state)
{
   static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
   static const uint8_t tls13[] = {0x16, 0x03, 0x03};
   /* An OP_MSG header: messageLength 63, little-endian. */
   static const uint8_t op_msg[] = {0x3f, 0x00, 0x00, 0x00, 0x01, 0x00};
   static const uint8_t sslv2[] = {0x80, 0x2e, 0x01, 0x03, 0x01};
   static const uint8_t app_data[] = {0x17, 0x03, 0x03, 0x00, 0x10};
   static const uint8_t not_v3[] = {0x16, 0x02};
   bool need_more = false;

   (void) state;
   assert_false(aspen_tls_looks_like_tls(NULL, 0, &need_more));
   assert_true(need_more);
   assert_false(aspen_tls_looks_like_tls(hello, 1, &need_more));
   assert_true(need_more);
   assert_true(aspen_tls_looks_like_tls(hello, 2, &need_more));
   assert_false(need_more);
   assert_true(aspen_tls_looks_like_tls(hello, sizeof hello, &need_more));
   assert_true(aspen_tls_looks_like_tls(tls13, sizeof tls13, NULL));

   need_more = true;
   assert_false(aspen_tls_looks_like_tls(op_msg, sizeof op_msg, &need_more));
   assert_false(need_more);
   assert_false(aspen_tls_looks_like_tls(sslv2, sizeof sslv2, &need_more));
   assert_false(aspen_tls_looks_like_tls(app_data, sizeof app_data, NULL));
   assert_false(aspen_tls_looks_like_tls(not_v3, sizeof not_v3, NULL));

   /* A real ClientHello. */
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, false);
   aspen_tls_conn_t *conn = aspen_tls_conn_new(cctx, false, "localhost");
   aspen_buf_t out;
   aspen_error_t err = {0};

   aspen_buf_init(&out);
   assert_true(aspen_tls_conn_start(conn, &out, &err));
   assert_true(aspen_tls_looks_like_tls(aspen_buf_data(&out),
                                        aspen_buf_len(&out), &need_more));
   assert_false(need_more);
   aspen_buf_cleanup(&out);
   aspen_tls_conn_destroy(conn);
   aspen_tls_ctx_destroy(cctx);
}

static void
test_ctx_errors(void **state)
{
   char missing[PATH_MAX];
   aspen_error_t err = {0};

   (void) state;
   join(missing, work_dir, "missing.pem");

   assert_null(aspen_tls_ctx_new_server(missing, server_key, NULL, &err));
   assert_int_equal(err.code, ASPEN_ERR_InvalidOptions);
   assert_non_null(strstr(err.message, "missing.pem"));
   assert_non_null(strstr(err.message, "error:")); /* OpenSSL's reason */

   memset(&err, 0, sizeof err);
   assert_null(aspen_tls_ctx_new_server(server_pem, missing, NULL, &err));
   assert_int_equal(err.code, ASPEN_ERR_InvalidOptions);

   /* The client's key does not belong to the server's certificate. */
   memset(&err, 0, sizeof err);
   assert_null(aspen_tls_ctx_new_server(server_pem, client_key, NULL, &err));
   assert_int_equal(err.code, ASPEN_ERR_InvalidOptions);
   assert_non_null(strstr(err.message, "private key"));

   /* A key file is not a certificate. */
   memset(&err, 0, sizeof err);
   assert_null(aspen_tls_ctx_new_server(server_key, server_key, NULL, &err));
   assert_int_equal(err.code, ASPEN_ERR_InvalidOptions);

   memset(&err, 0, sizeof err);
   assert_null(aspen_tls_ctx_new_server(server_pem, server_key, missing, &err));
   assert_int_equal(err.code, ASPEN_ERR_InvalidOptions);

   memset(&err, 0, sizeof err);
   assert_null(aspen_tls_ctx_new_client(missing, &err));
   assert_int_equal(err.code, ASPEN_ERR_InvalidOptions);
   assert_non_null(strstr(err.message, "CA file"));

   aspen_tls_ctx_destroy(NULL);
   aspen_tls_conn_destroy(NULL);

   /* TLS 1.2 is the floor on both roles. */
   aspen_tls_ctx_t *sctx = server_ctx(NULL);
   aspen_tls_ctx_t *cctx = client_ctx(NULL, false);
   assert_int_equal(SSL_CTX_get_min_proto_version(sctx->ssl_ctx),
                    TLS1_2_VERSION);
   assert_int_equal(SSL_CTX_get_min_proto_version(cctx->ssl_ctx),
                    TLS1_2_VERSION);
   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(sctx);
}

/* Handshake, data both ways, and plaintext written before the handshake
 * finished on both sides; `max_version` 0 lets OpenSSL pick (TLS 1.3). */
static void
roundtrip(int max_version)
{
   aspen_tls_ctx_t *sctx = server_ctx(ca_pem);
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, false);
   end_t client;
   end_t server;

   if (max_version) {
      assert_true(SSL_CTX_set_max_proto_version(cctx->ssl_ctx, max_version));
   }
   ends_open(&client, &server, cctx, sctx, "localhost");
   write_str(&client, "early from client");
   assert_int_equal(aspen_buf_len(&client.plain), 0);

   /* Only the ClientHello has reached the server: the server is mid
    * handshake, so its write is queued too. */
   assert_true(deliver(&client, &server, SIZE_MAX));
   assert_false(aspen_tls_conn_is_handshake_done(server.conn));
   write_str(&server, "early from server");
   assert_null(aspen_tls_conn_peer_subject(server.conn));

   pump(&client, &server, SIZE_MAX);
   assert_false(client.failed);
   assert_false(server.failed);
   assert_true(aspen_tls_conn_is_handshake_done(client.conn));
   assert_true(aspen_tls_conn_is_handshake_done(server.conn));
   expect_plain(&server, "early from client");
   expect_plain(&client, "early from server");

   write_str(&client, "ping");
   write_str(&client, "");
   write_str(&client, "ping2");
   pump(&client, &server, SIZE_MAX);
   expect_plain(&server, "pingping2");
   write_str(&server, "pong");
   pump(&client, &server, SIZE_MAX);
   expect_plain(&client, "pong");

   /* The client verified the server; the client sent no certificate. */
   assert_string_equal(aspen_tls_conn_peer_subject(client.conn),
                       "CN=localhost,O=aspen");
   assert_null(aspen_tls_conn_peer_subject(server.conn));
   assert_false(client.closed);
   assert_false(server.closed);

   ends_close(&client, &server);
   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(sctx);
}

static void
test_roundtrip_tls13(void **state)
{
   (void) state;
   roundtrip(0);
}

static void
test_roundtrip_tls12(void **state)
{
   (void) state;
   roundtrip(TLS1_2_VERSION);
}

/* Every record arrives one byte per feed; the name is an IP SAN. */
static void
test_byte_at_a_time(void **state)
{
   aspen_tls_ctx_t *sctx = server_ctx(NULL);
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, false);
   end_t client;
   end_t server;

   (void) state;
   ends_open(&client, &server, cctx, sctx, "127.0.0.1");
   write_str(&client, "hello over one-byte reads");
   pump(&client, &server, 1);
   assert_false(client.failed);
   assert_false(server.failed);
   expect_plain(&server, "hello over one-byte reads");
   write_str(&server, "and back");
   pump(&client, &server, 1);
   expect_plain(&client, "and back");
   ends_close(&client, &server);

   ends_open(&client, &server, cctx, sctx, "::1");
   pump(&client, &server, 3);
   assert_true(aspen_tls_conn_is_handshake_done(server.conn));
   assert_false(client.failed);
   ends_close(&client, &server);

   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(sctx);
}

static void
test_large_payload(void **state)
{
   const size_t len = 1024 * 1024 + 7;
   uint8_t *payload = aspen_xmalloc(len);
   aspen_tls_ctx_t *sctx = server_ctx(NULL);
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, false);
   end_t client;
   end_t server;

   (void) state;
   for (size_t i = 0; i < len; i++) {
      payload[i] = (uint8_t) (i * 31 + (i >> 11));
   }
   ends_open(&client, &server, cctx, sctx, "localhost");
   write_bytes(&client, payload, len); /* queued: handshake not done */
   pump(&client, &server, 7000);       /* records split across feeds */
   assert_false(server.failed);
   assert_int_equal(aspen_buf_len(&server.plain), len);
   assert_int_equal(memcmp(aspen_buf_data(&server.plain), payload, len), 0);

   write_bytes(&server, payload, len);
   assert_true(aspen_buf_len(&server.out) > len); /* written at once */
   pump(&client, &server, SIZE_MAX); /* every record in one feed */
   assert_false(client.failed);
   assert_int_equal(aspen_buf_len(&client.plain), len);
   assert_int_equal(memcmp(aspen_buf_data(&client.plain), payload, len), 0);

   ends_close(&client, &server);
   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(sctx);
   free(payload);
}

/* Feeds `data` to a fresh server and expects a clean failure. */
static void
expect_garbage_rejected(aspen_tls_ctx_t *sctx, const void *data, size_t len)
{
   aspen_tls_conn_t *conn = aspen_tls_conn_new(sctx, true, NULL);
   aspen_buf_t plain;
   aspen_buf_t out;
   aspen_error_t err = {0};
   bool closed = true;

   aspen_buf_init(&plain);
   aspen_buf_init(&out);
   assert_false(
      aspen_tls_conn_feed(conn, data, len, &plain, &out, &closed, &err));
   assert_int_equal(err.code, ASPEN_ERR_SSLHandshakeFailed);
   assert_non_null(strstr(err.message, "TLS handshake failed"));
   assert_false(closed);
   assert_int_equal(aspen_buf_len(&plain), 0);
   assert_false(aspen_tls_conn_is_handshake_done(conn));

   /* Every later call fails the same way, without touching OpenSSL. */
   memset(&err, 0, sizeof err);
   assert_false(
      aspen_tls_conn_feed(conn, data, len, &plain, &out, NULL, &err));
   assert_int_equal(err.code, ASPEN_ERR_ProtocolError);
   assert_false(aspen_tls_conn_write(conn, (const uint8_t *) "x", 1, &out,
                                     &err));
   assert_null(aspen_tls_conn_peer_subject(conn));

   aspen_buf_cleanup(&plain);
   aspen_buf_cleanup(&out);
   aspen_tls_conn_destroy(conn);
}

static void
test_garbage(void **state)
{
   static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
   /* A MongoDB OP_MSG header sent in plaintext to a TLS-only port. */
   static const uint8_t op_msg[] = {0x3f, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                                    0,    0, 0xdd, 0x07, 0, 0, 0, 0, 0, 0};
   /* A handshake record header whose body is not a ClientHello. */
   static const uint8_t fake_hello[] = {0x16, 0x03, 0x01, 0x00, 0x06, 0xff,
                                        0xee, 0xdd, 0xcc, 0xbb, 0xaa};
   /* A record longer than TLS allows. */
   static const uint8_t huge[] = {0x16, 0x03, 0x03, 0xff, 0xff, 0x01};
   aspen_tls_ctx_t *sctx = server_ctx(ca_pem);
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, false);
   uint8_t noise[4096];
   end_t client;
   end_t server;

   (void) state;
   expect_garbage_rejected(sctx, http, sizeof http - 1);
   expect_garbage_rejected(sctx, op_msg, sizeof op_msg);
   expect_garbage_rejected(sctx, fake_hello, sizeof fake_hello);
   expect_garbage_rejected(sctx, huge, sizeof huge);
   for (size_t i = 0; i < sizeof noise; i++) {
      noise[i] = (uint8_t) ((i * 2654435761u) >> 13);
   }
   expect_garbage_rejected(sctx, noise, sizeof noise);

   /* After the handshake, a forged application-data record fails the MAC
    * check: ProtocolError, and the alert is left to send. */
   ends_open(&client, &server, cctx, sctx, "localhost");
   pump(&client, &server, SIZE_MAX);
   assert_true(aspen_tls_conn_is_handshake_done(server.conn));
   static const uint8_t forged[] = {0x17, 0x03, 0x03, 0x00, 0x20,
                                    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                    13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                    23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
   assert_false(aspen_tls_conn_feed(server.conn, forged, sizeof forged,
                                    &server.plain, &server.out, NULL,
                                    &server.err));
   assert_int_equal(server.err.code, ASPEN_ERR_ProtocolError);
   assert_true(aspen_buf_len(&server.out) > 0); /* bad_record_mac alert */
   server.failed = true;
   pump(&client, &server, SIZE_MAX);
   assert_true(client.failed); /* the client got the fatal alert */
   assert_int_equal(client.err.code, ASPEN_ERR_ProtocolError);
   assert_true(aspen_tls_conn_is_handshake_done(server.conn));
   ends_close(&client, &server);

   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(sctx);
}

/* The client does not trust the server's CA, or the name does not match. */
static void
test_verify_failures(void **state)
{
   aspen_tls_ctx_t *sctx = server_ctx(ca_pem);
   aspen_tls_ctx_t *wrong = client_ctx(wrong_ca_pem, false);
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, false);
   aspen_tls_ctx_t *trusting = client_ctx(NULL, false);
   end_t client;
   end_t server;

   (void) state;
   ends_open(&client, &server, wrong, sctx, "localhost");
   write_str(&client, "never sent");
   pump(&client, &server, SIZE_MAX);
   assert_true(client.failed);
   assert_int_equal(client.err.code, ASPEN_ERR_SSLHandshakeFailed);
   assert_non_null(strstr(client.err.message, "certificate verify failed"));
   assert_non_null(strstr(client.err.message, "(certificate verify: "));
   assert_true(server.failed); /* it received the client's alert */
   assert_int_equal(server.err.code, ASPEN_ERR_SSLHandshakeFailed);
   assert_int_equal(aspen_buf_len(&server.plain), 0);
   assert_false(aspen_tls_conn_is_handshake_done(client.conn));
   assert_null(aspen_tls_conn_peer_subject(client.conn));
   ends_close(&client, &server);

   ends_open(&client, &server, cctx, sctx, "example.com");
   pump(&client, &server, SIZE_MAX);
   assert_true(client.failed);
   assert_int_equal(client.err.code, ASPEN_ERR_SSLHandshakeFailed);
   assert_non_null(strstr(client.err.message, "hostname mismatch"));
   ends_close(&client, &server);

   ends_open(&client, &server, cctx, sctx, "10.1.2.3");
   pump(&client, &server, SIZE_MAX);
   assert_true(client.failed);
   assert_non_null(strstr(client.err.message, "IP address mismatch"));
   ends_close(&client, &server);

   /* Without a CA the client accepts anything, and reports no subject
    * because nothing was verified. */
   ends_open(&client, &server, trusting, sctx, "example.com");
   pump(&client, &server, SIZE_MAX);
   assert_false(client.failed);
   assert_true(aspen_tls_conn_is_handshake_done(client.conn));
   assert_null(aspen_tls_conn_peer_subject(client.conn));
   ends_close(&client, &server);

   aspen_tls_ctx_destroy(trusting);
   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(wrong);
   aspen_tls_ctx_destroy(sctx);
}

static void
test_client_cert(void **state)
{
   aspen_tls_ctx_t *sctx = server_ctx(ca_pem);
   aspen_tls_ctx_t *plain_sctx = server_ctx(NULL);
   aspen_tls_ctx_t *strict_sctx = server_ctx(wrong_ca_pem);
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, true);
   end_t client;
   end_t server;

   (void) state;
   ends_open(&client, &server, cctx, sctx, "localhost");
   write_str(&client, "x509");
   pump(&client, &server, SIZE_MAX);
   assert_false(server.failed);
   expect_plain(&server, "x509");
   const char *subject = aspen_tls_conn_peer_subject(server.conn);
   assert_non_null(subject);
   assert_string_equal(subject, "CN=aspen-client,OU=clients,O=aspen");
   assert_ptr_equal(aspen_tls_conn_peer_subject(server.conn), subject);
   ends_close(&client, &server);

   /* A server without a CA never asks for the certificate. */
   ends_open(&client, &server, cctx, plain_sctx, "localhost");
   pump(&client, &server, SIZE_MAX);
   assert_false(server.failed);
   assert_true(aspen_tls_conn_is_handshake_done(server.conn));
   assert_null(aspen_tls_conn_peer_subject(server.conn));
   ends_close(&client, &server);

   /* A certificate the server cannot verify is refused, not ignored. */
   ends_open(&client, &server, cctx, strict_sctx, "localhost");
   write_str(&client, "must not arrive");
   pump(&client, &server, SIZE_MAX);
   assert_true(server.failed);
   assert_int_equal(server.err.code, ASPEN_ERR_SSLHandshakeFailed);
   assert_non_null(strstr(server.err.message, "certificate verify"));
   assert_int_equal(aspen_buf_len(&server.plain), 0);
   assert_true(client.failed); /* it got the server's alert */
   ends_close(&client, &server);

   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(strict_sctx);
   aspen_tls_ctx_destroy(plain_sctx);
   aspen_tls_ctx_destroy(sctx);
}

static void
test_close_notify(void **state)
{
   aspen_tls_ctx_t *sctx = server_ctx(NULL);
   aspen_tls_ctx_t *cctx = client_ctx(ca_pem, false);
   aspen_error_t err = {0};
   end_t client;
   end_t server;
   bool closed = false;

   (void) state;
   ends_open(&client, &server, cctx, sctx, "localhost");
   pump(&client, &server, SIZE_MAX);
   write_str(&client, "last words");
   assert_true(aspen__tls_conn_shutdown(client.conn, &client.out, &err));
   assert_false(aspen_tls_conn_write(client.conn, (const uint8_t *) "x", 1,
                                     &client.out, &err));
   assert_int_equal(err.code, ASPEN_ERR_ProtocolError);

   /* The server reads the data, then the close_notify, and answers it. */
   assert_true(deliver(&client, &server, SIZE_MAX));
   assert_false(server.failed);
   assert_true(server.closed);
   expect_plain(&server, "last words");
   assert_true(aspen_buf_len(&server.out) > 0);
   assert_false(aspen_tls_conn_write(server.conn, (const uint8_t *) "x", 1,
                                     &server.out, &err));

   assert_true(deliver(&server, &client, SIZE_MAX));
   assert_false(client.failed);
   assert_true(client.closed);

   /* Input after close_notify is ignored; the flag is reported again. */
   assert_true(aspen_tls_conn_feed(server.conn, (const uint8_t *) "junk", 4,
                                   &server.plain, &server.out, &closed,
                                   &err));
   assert_true(closed);
   assert_int_equal(aspen_buf_len(&server.plain), 0);
   assert_true(aspen__tls_conn_shutdown(server.conn, &server.out, &err));
   ends_close(&client, &server);

   aspen_tls_ctx_destroy(cctx);
   aspen_tls_ctx_destroy(sctx);
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mode_parse),
      cmocka_unit_test(test_looks_like_tls),
      cmocka_unit_test(test_ctx_errors),
      cmocka_unit_test(test_roundtrip_tls13),
      cmocka_unit_test(test_roundtrip_tls12),
      cmocka_unit_test(test_byte_at_a_time),
      cmocka_unit_test(test_large_payload),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_verify_failures),
      cmocka_unit_test(test_client_cert),
      cmocka_unit_test(test_close_notify),
   };

   return cmocka_run_group_tests_name("tls", tests, group_setup,
                                      group_teardown);
}
