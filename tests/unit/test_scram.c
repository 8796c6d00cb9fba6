/*
 * test_scram.c - proxy/scram.c: the RFC 5802 (SCRAM-SHA-1) and RFC 7677
 * (SCRAM-SHA-256) test vectors through the server conversation, MongoDB's
 * SCRAM-SHA-1 password digest, full client/server conversations in memory
 * with credentials made as --add-user makes them, and refusals: wrong
 * password, wrong nonce, a replayed proof, malformed and oversized messages,
 * unknown users.
 *
 * scram.c is included so the test can fix the server nonce for the RFC
 * vectors (the only place that touches the conversation's insides).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "../../proxy/scram.c"

/* ---- helpers ------------------------------------------------------------ */

static void
b64(const char *text, uint8_t *out, size_t *len)
{
   assert_true(aspen_scram_b64_decode(text, strlen(text), out, 64, len));
}

static bool
server_start(aspen_scram_t *sc, const char *msg)
{
   aspen_error_t err;
   return aspen_scram_server_start(sc, (const uint8_t *) msg, strlen(msg),
                                   &err);
}

static bool
server_finish(aspen_scram_t *sc, const char *msg, char *out)
{
   aspen_error_t err;
   size_t n;
   bool ok = aspen_scram_server_finish(sc, (const uint8_t *) msg, strlen(msg),
                                       out, &n, &err);
   if (ok) {
      assert_int_equal(n, strlen(out));
   } else {
      assert_int_equal(err.code, ASPEN_ERR_AuthenticationFailed);
   }
   return ok;
}

/* Runs an RFC example: credentials from the raw password, the server nonce
 * forced to the RFC's, then the RFC's client-final must give its v=. */
static void
rfc_example(aspen_scram_mech_t mech, const char *salt_b64, const char *first,
            const char *snonce, const char *server_first, const char *final,
            const char *server_final)
{
   aspen_scram_cred_t cred;
   aspen_error_t err;
   uint8_t salt[64];
   size_t salt_len;
   char out[ASPEN_SCRAM_MSG_MAX];
   b64(salt_b64, salt, &salt_len);
   assert_true(aspen_scram_cred_derive(mech, "pencil", salt, salt_len, 4096,
                                       &cred, &err));
   aspen_scram_t *sc = aspen_scram_new(mech);
   assert_true(server_start(sc, first));
   assert_string_equal(aspen_scram_user(sc), "user");
   /* Replace the random server nonce with the RFC's. */
   const char *cnonce = strstr(first, "r=") + 2;
   snprintf(sc->nonce, sizeof sc->nonce, "%s%s", cnonce, snonce);
   size_t n = aspen_scram_server_challenge(sc, &cred, out);
   assert_int_equal(n, strlen(server_first));
   assert_string_equal(out, server_first);
   assert_true(server_finish(sc, final, out));
   assert_string_equal(out, server_final);
   assert_true(aspen_scram_is_done(sc));
   aspen_scram_destroy(sc);
}

/* ---- RFC vectors ---------------------------------------------------------- */

static void
test_rfc5802_sha1(void **state)
{
   (void) state;
   rfc_example(ASPEN_SCRAM_SHA_1, "QSXCR+Q6sek8bf92",
               "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
               "3rfcNHYJY1ZVvWVs7j",
               "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
               "s=QSXCR+Q6sek8bf92,i=4096",
               "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
               "p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
               "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

static void
test_rfc7677_sha256(void **state)
{
   (void) state;
   rfc_example(ASPEN_SCRAM_SHA_256, "W22ZaJ0SNY7soEsUEjb6gQ==",
               "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
               "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
               "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
               "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
               "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
               "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
               "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

/* MongoDB salts hex(MD5("<user>:mongo:<password>")) for SCRAM-SHA-1. */
static void
test_mongodb_sha1_digest(void **state)
{
   (void) state;
   char out[64];
   aspen_error_t err;
   assert_true(aspen_scram_prepare_password(ASPEN_SCRAM_SHA_1, "user",
                                            "pencil", out, sizeof out, &err));
   /* md5("user:mongo:pencil") */
   assert_string_equal(out, "1c33006ec1ffd90f9cadcbcc0e118200");
   assert_true(aspen_scram_prepare_password(ASPEN_SCRAM_SHA_256, "user",
                                            "pencil", out, sizeof out, &err));
   assert_string_equal(out, "pencil");
}

static void
test_saslprep_subset(void **state)
{
   (void) state;
   char out[64];
   aspen_error_t err;
   assert_true(aspen_scram_saslprep("p@ss w0rd!~", out, sizeof out, &err));
   assert_string_equal(out, "p@ss w0rd!~");
   assert_false(aspen_scram_saslprep("tab\there", out, sizeof out, &err));
   assert_non_null(strstr(err.message, "control character"));
   assert_false(aspen_scram_saslprep("caf\xc3\xa9", out, sizeof out, &err));
   assert_non_null(strstr(err.message, "non-ASCII"));
}

static void
test_base64(void **state)
{
   (void) state;
   uint8_t out[64];
   size_t n;
   char text[64];
   assert_true(aspen_scram_b64_decode("biws", 4, out, sizeof out, &n));
   assert_int_equal(n, 3);
   assert_memory_equal(out, "n,,", 3);
   assert_int_equal(aspen_scram_b64_encode((const uint8_t *) "n,,", 3, text,
                                           sizeof text),
                    4);
   assert_string_equal(text, "biws");
   assert_true(aspen_scram_b64_decode("YQ==", 4, out, sizeof out, &n));
   assert_int_equal(n, 1);
   assert_false(aspen_scram_b64_decode("YQ=", 3, out, sizeof out, &n));
   assert_false(aspen_scram_b64_decode("Y=Q=", 4, out, sizeof out, &n));
   assert_false(aspen_scram_b64_decode("!!!!", 4, out, sizeof out, &n));
   assert_false(aspen_scram_b64_decode("AAAAAAAA", 8, out, 2, &n));
}

/* ---- a client, as the drivers do it --------------------------------------- */

typedef struct {
   aspen_scram_mech_t mech;
   char user[64];
   char password[64];
   char first[256];      /* client-first */
   char final[512];      /* client-final */
   uint8_t server_sig[ASPEN_SCRAM_MAX_HASH];
} client_t;

static void
client_first(client_t *c, aspen_scram_mech_t mech, const char *user,
             const char *password, const char *nonce)
{
   memset(c, 0, sizeof *c);
   c->mech = mech;
   snprintf(c->user, sizeof c->user, "%s", user);
   snprintf(c->password, sizeof c->password, "%s", password);
   snprintf(c->first, sizeof c->first, "n,,n=%s,r=%s", user, nonce);
}

/* Computes client-final from server-first; `nonce_override` replaces the
 * combined nonce when not NULL. */
static void
client_final(client_t *c, const char *server_first, const char *nonce_override)
{
   char sf[512];
   snprintf(sf, sizeof sf, "%s", server_first);
   char *r = strstr(sf, "r=") + 2;
   char *s = strstr(sf, ",s=");
   *s = '\0';
   s += 3;
   char *i = strstr(s, ",i=");
   *i = '\0';
   int iters = atoi(i + 3);
   uint8_t salt[64];
   size_t salt_len;
   b64(s, salt, &salt_len);
   char prepared[128];
   aspen_error_t err;
   assert_true(aspen_scram_prepare_password(c->mech, c->user, c->password,
                                            prepared, sizeof prepared, &err));
   size_t hl = aspen_scram_hash_len(c->mech);
   uint8_t salted[32], ck[32], sk[32], stored[32], csig[32], proof[32];
   assert_int_equal(PKCS5_PBKDF2_HMAC(prepared, (int) strlen(prepared), salt,
                                      (int) salt_len, iters, md_of(c->mech),
                                      (int) hl, salted),
                    1);
   aspen_scram_hmac(c->mech, salted, hl, "Client Key", 10, ck);
   aspen_scram_hmac(c->mech, salted, hl, "Server Key", 10, sk);
   aspen_scram_hash(c->mech, ck, hl, stored);
   char without[512];
   snprintf(without, sizeof without, "c=biws,r=%s",
            nonce_override ? nonce_override : r);
   char auth[1536];
   int an = snprintf(auth, sizeof auth, "%s,%s,%s", c->first + 3,
                     server_first, without);
   aspen_scram_hmac(c->mech, stored, hl, auth, (size_t) an, csig);
   for (size_t k = 0; k < hl; k++) {
      proof[k] = ck[k] ^ csig[k];
   }
   aspen_scram_hmac(c->mech, sk, hl, auth, (size_t) an, c->server_sig);
   char pb[64];
   aspen_scram_b64_encode(proof, hl, pb, sizeof pb);
   snprintf(c->final, sizeof c->final, "%s,p=%s", without, pb);
}

static void
make_cred(aspen_scram_mech_t mech, const char *user, const char *pw,
          aspen_scram_cred_t *cred)
{
   aspen_error_t err;
   /* The minimum count keeps the test fast; --add-user uses mongod's. */
   assert_true(aspen_scram_cred_make(mech, user, pw, 4096, cred, &err));
}

static void
conversation(aspen_scram_mech_t mech)
{
   aspen_scram_cred_t cred;
   client_t c;
   char out[ASPEN_SCRAM_MSG_MAX];
   make_cred(mech, "alice", "s3cret", &cred);
   assert_int_equal(cred.salt_len, aspen_scram_hash_len(mech) - 4);

   /* Right password: in, and the server proves it knows the key. */
   client_first(&c, mech, "alice", "s3cret", "clientNONCEclientNONCE12");
   aspen_scram_t *sc = aspen_scram_new(mech);
   assert_true(server_start(sc, c.first));
   assert_string_equal(aspen_scram_user(sc), "alice");
   aspen_scram_server_challenge(sc, &cred, out);
   assert_non_null(strstr(out, "r=clientNONCEclientNONCE12"));
   assert_true(strlen(out) > strlen("r=clientNONCEclientNONCE12,s=,i=4096"));
   char sf[ASPEN_SCRAM_MSG_MAX];
   snprintf(sf, sizeof sf, "%s", out);
   client_final(&c, sf, NULL);
   assert_true(server_finish(sc, c.final, out));
   char expect[64];
   aspen_scram_b64_encode(c.server_sig, aspen_scram_hash_len(mech), expect,
                          sizeof expect);
   assert_string_equal(out + 2, expect);
   /* The same proof again on the finished conversation: refused. */
   assert_false(server_finish(sc, c.final, out));
   aspen_scram_destroy(sc);

   /* Replayed proof on a new conversation (new server nonce): refused. */
   sc = aspen_scram_new(mech);
   assert_true(server_start(sc, c.first));
   aspen_scram_server_challenge(sc, &cred, out);
   assert_string_not_equal(out, sf);
   assert_false(server_finish(sc, c.final, out));
   aspen_scram_destroy(sc);

   /* Wrong password. */
   client_first(&c, mech, "alice", "wrong", "abcdefghijklmnopqrstuvwx");
   sc = aspen_scram_new(mech);
   assert_true(server_start(sc, c.first));
   aspen_scram_server_challenge(sc, &cred, out);
   snprintf(sf, sizeof sf, "%s", out);
   client_final(&c, sf, NULL);
   assert_false(server_finish(sc, c.final, out));
   aspen_scram_destroy(sc);

   /* Wrong nonce (right password, proof computed over the wrong nonce). */
   client_first(&c, mech, "alice", "s3cret", "abcdefghijklmnopqrstuvwx");
   sc = aspen_scram_new(mech);
   assert_true(server_start(sc, c.first));
   aspen_scram_server_challenge(sc, &cred, out);
   snprintf(sf, sizeof sf, "%s", out);
   client_final(&c, sf, "abcdefghijklmnopqrstuvwxSERVERNONCE");
   assert_false(server_finish(sc, c.final, out));
   aspen_scram_destroy(sc);

   /* Unknown user: a challenge that looks real, stable salt, then refusal
    * even for a "correct" computation. */
   client_first(&c, mech, "mallory", "s3cret", "abcdefghijklmnopqrstuvwx");
   sc = aspen_scram_new(mech);
   assert_true(server_start(sc, c.first));
   aspen_scram_server_challenge(sc, NULL, out);
   snprintf(sf, sizeof sf, "%s", out);
   char i_expect[32];
   snprintf(i_expect, sizeof i_expect, ",i=%d",
            mech == ASPEN_SCRAM_SHA_1 ? 10000 : 15000);
   assert_non_null(strstr(sf, i_expect));
   client_final(&c, sf, NULL);
   assert_false(server_finish(sc, c.final, out));
   aspen_scram_destroy(sc);
   sc = aspen_scram_new(mech);
   assert_true(server_start(sc, c.first));
   aspen_scram_server_challenge(sc, NULL, out);
   assert_string_equal(strstr(out, ",s="), strstr(sf, ",s="));
   aspen_scram_destroy(sc);
}

static void
test_conversation_sha256(void **state)
{
   (void) state;
   conversation(ASPEN_SCRAM_SHA_256);
}

static void
test_conversation_sha1(void **state)
{
   (void) state;
   conversation(ASPEN_SCRAM_SHA_1);
}

static void
test_escaped_user_name(void **state)
{
   (void) state;
   aspen_scram_t *sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
   assert_true(server_start(sc, "n,,n=a=2Cb=3Dc,r=abcdef"));
   assert_string_equal(aspen_scram_user(sc), "a,b=c");
   aspen_scram_destroy(sc);
   sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
   assert_true(server_start(sc, "n,a=bob,n=bob,r=abcdef"));
   aspen_scram_destroy(sc);
}

static void
test_malformed_client_first(void **state)
{
   (void) state;
   static const char *const bad[] = {
      "",
      "n",
      "n,",
      "x,,n=user,r=abc",
      "p=tls-unique,,n=user,r=abc",
      "n,,",
      "n,,r=abc",
      "n,,n=user",
      "n,,n=user,",
      "n,,n=user,r=",
      "n,,n=,r=abc",
      "n,,n=us=4er,r=abc",
      "n,,n=user=2,r=abc",
      "n,,m=ext,n=user,r=abc",
      "n,a=eve,n=user,r=abc",
      "n,a=user",
      "n,,n=user,r=ab\001c", /* octal: \x01c would be one byte */
   };
   for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      aspen_scram_t *sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
      if (server_start(sc, bad[i])) {
         fail_msg("accepted malformed client-first '%s'", bad[i]);
      }
      aspen_scram_destroy(sc);
   }
   /* Binary and oversized payloads. */
   uint8_t big[ASPEN_SCRAM_MSG_MAX + 1];
   memset(big, 'a', sizeof big);
   memcpy(big, "n,,n=user,r=", 12);
   aspen_error_t err;
   aspen_scram_t *sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
   assert_false(aspen_scram_server_start(sc, big, sizeof big, &err));
   aspen_scram_destroy(sc);
   sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
   assert_false(aspen_scram_server_start(
      sc, (const uint8_t *) "n,,n=user\0,r=abc", 16, &err));
   aspen_scram_destroy(sc);
   /* Start twice. */
   sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
   assert_true(server_start(sc, "n,,n=user,r=abc"));
   assert_false(server_start(sc, "n,,n=user,r=abc"));
   aspen_scram_destroy(sc);
}

static void
test_malformed_client_final(void **state)
{
   (void) state;
   aspen_scram_cred_t cred;
   make_cred(ASPEN_SCRAM_SHA_256, "user", "pw", &cred);
   char out[ASPEN_SCRAM_MSG_MAX];
   char nonce[600];
   static const char *const bad[] = {
      "",
      "c=biws",
      "c=biws,r=%s",
      "c=eSws,r=%s,p=AAAA",           /* binding "y,," but header was "n,," */
      "c=biws,r=%sX,p=AAAA",
      "c=biws,r=x,p=AAAA",
      "c=biws,r=%s,p=",
      "c=biws,r=%s,p=!!!!",
      "c=biws,r=%s,p=AAAA",           /* proof too short */
      "r=%s,c=biws,p=AAAA",
      "c=bi,r=%s,p=AAAA",
   };
   for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      aspen_scram_t *sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
      assert_true(server_start(sc, "n,,n=user,r=abc"));
      aspen_scram_server_challenge(sc, &cred, out);
      char *r = strstr(out, "r=") + 2;
      *strstr(r, ",s=") = '\0';
      snprintf(nonce, sizeof nonce, "%s", r);
      /* "%s" in the pattern stands for the real combined nonce. */
      char msg[1024];
      const char *hole = strstr(bad[i], "%s");
      if (hole) {
         snprintf(msg, sizeof msg, "%.*s%s%s", (int) (hole - bad[i]), bad[i],
                  nonce, hole + 2);
      } else {
         snprintf(msg, sizeof msg, "%s", bad[i]);
      }
      if (server_finish(sc, msg, out)) {
         fail_msg("accepted malformed client-final '%s'", msg);
      }
      /* Failed conversations accept nothing more. */
      assert_false(server_finish(sc, msg, out));
      aspen_scram_destroy(sc);
   }
   /* A client-final before any challenge. */
   aspen_scram_t *sc = aspen_scram_new(ASPEN_SCRAM_SHA_256);
   assert_false(server_finish(sc, "c=biws,r=abc,p=AAAA", out));
   aspen_scram_destroy(sc);
}

static void
test_cred_limits(void **state)
{
   (void) state;
   aspen_scram_cred_t cred;
   aspen_error_t err;
   uint8_t salt[8] = {0};
   assert_false(aspen_scram_cred_derive(ASPEN_SCRAM_SHA_256, "pw", salt, 8,
                                        4095, &cred, &err));
   assert_false(aspen_scram_cred_derive(ASPEN_SCRAM_SHA_256, "pw", salt, 0,
                                        4096, &cred, &err));
   assert_true(aspen_scram_cred_make(ASPEN_SCRAM_SHA_256, "u", "pw", 0, &cred,
                                     &err));
   assert_int_equal(cred.iterations, 15000);
   assert_int_equal(cred.salt_len, 28);
   assert_true(aspen_scram_cred_make(ASPEN_SCRAM_SHA_1, "u", "pw", 0, &cred,
                                     &err));
   assert_int_equal(cred.iterations, 10000);
   assert_int_equal(cred.salt_len, 16);
   aspen_scram_mech_t m;
   assert_true(aspen_scram_mech_parse("SCRAM-SHA-1", &m));
   assert_int_equal(m, ASPEN_SCRAM_SHA_1);
   assert_false(aspen_scram_mech_parse("PLAIN", &m));
}


/* The client side against RFC 7677's SCRAM-SHA-256 example (user "user",
 * password "pencil"), with the client nonce fixed as in the RFC. */
static void
test_client_rfc7677(void **state)
{
   (void) state;
   aspen_scram_client_t *c = aspen_scram_client_new(ASPEN_SCRAM_SHA_256);
   aspen_error_t err;
   char out[ASPEN_SCRAM_MSG_MAX];
   assert_true(aspen_scram_client_first(c, "user", out, &err) > 0);
   /* Replace the random nonce with the RFC's. */
   snprintf(c->cnonce, sizeof c->cnonce, "rOprNGfwEbeRWgbNEkqO");
   snprintf(c->bare, sizeof c->bare, "n=user,r=rOprNGfwEbeRWgbNEkqO");
   const char *server_first =
      "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
      "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
   uint8_t salt[ASPEN_SCRAM_MAX_SALT];
   size_t salt_len;
   int iterations;
   assert_true(aspen_scram_client_challenge(
      c, (const uint8_t *) server_first, strlen(server_first), salt,
      &salt_len, &iterations, &err));
   assert_int_equal(iterations, 4096);
   aspen_scram_keys_t keys;
   assert_true(aspen_scram_keys_derive(ASPEN_SCRAM_SHA_256, "user", "pencil",
                                       salt, salt_len, iterations, &keys,
                                       &err));
   size_t n = aspen_scram_client_final(c, &keys, out);
   assert_string_equal(
      out, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
           "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
   assert_int_equal(n, strlen(out));
   const char *bad = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
   const char *good = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
   assert_false(aspen_scram_client_verify(c, (const uint8_t *) bad,
                                          strlen(bad), &err));
   assert_false(aspen_scram_client_is_done(c));
   aspen_scram_client_destroy(c);

   /* Again, with the right server signature. */
   c = aspen_scram_client_new(ASPEN_SCRAM_SHA_256);
   assert_true(aspen_scram_client_first(c, "user", out, &err) > 0);
   snprintf(c->cnonce, sizeof c->cnonce, "rOprNGfwEbeRWgbNEkqO");
   snprintf(c->bare, sizeof c->bare, "n=user,r=rOprNGfwEbeRWgbNEkqO");
   assert_true(aspen_scram_client_challenge(
      c, (const uint8_t *) server_first, strlen(server_first), salt,
      &salt_len, &iterations, &err));
   aspen_scram_client_final(c, &keys, out);
   assert_true(aspen_scram_client_verify(c, (const uint8_t *) good,
                                         strlen(good), &err));
   assert_true(aspen_scram_client_is_done(c));
   aspen_scram_client_destroy(c);
}

/* Server-first messages the client must refuse: a nonce that does not
 * extend ours, too few iterations, a bad salt, an error, out of order. */
static void
test_client_refuses(void **state)
{
   (void) state;
   const char *bad[] = {
      "r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
      "r=%s,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /* no server part */
      "r=%sXYZ,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=100",
      "r=%sXYZ,s=!!!,i=4096",
      "r=%sXYZ,i=4096",
      "m=ext,r=%sXYZ,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
      "e=other-error",
   };
   for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      aspen_scram_client_t *c = aspen_scram_client_new(ASPEN_SCRAM_SHA_1);
      aspen_error_t err;
      char out[ASPEN_SCRAM_MSG_MAX], msg[512];
      assert_true(aspen_scram_client_first(c, "a,b=c", out, &err) > 0);
      assert_non_null(strstr(out, "n=a=2Cb=3Dc,")); /* saslname escapes */
      const char *pct = strstr(bad[i], "%s");
      if (pct) {
         snprintf(msg, sizeof msg, "%.*s%s%s", (int) (pct - bad[i]), bad[i],
                  c->cnonce, pct + 2);
      } else {
         snprintf(msg, sizeof msg, "%s", bad[i]);
      }
      uint8_t salt[ASPEN_SCRAM_MAX_SALT];
      size_t salt_len;
      int iterations;
      assert_false(aspen_scram_client_challenge(c, (const uint8_t *) msg,
                                                strlen(msg), salt, &salt_len,
                                                &iterations, &err));
      assert_int_equal(err.code, ASPEN_ERR_AuthenticationFailed);
      /* Nothing goes on after a refusal. */
      assert_false(aspen_scram_client_verify(c, (const uint8_t *) "v=x", 3,
                                             &err));
      aspen_scram_client_destroy(c);
   }
   aspen_scram_client_t *c = aspen_scram_client_new(ASPEN_SCRAM_SHA_1);
   aspen_error_t err;
   char out[ASPEN_SCRAM_MSG_MAX];
   assert_int_equal(aspen_scram_client_first(c, "", out, &err), 0);
   aspen_scram_client_destroy(c);
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rfc5802_sha1),
      cmocka_unit_test(test_rfc7677_sha256),
      cmocka_unit_test(test_mongodb_sha1_digest),
      cmocka_unit_test(test_saslprep_subset),
      cmocka_unit_test(test_base64),
      cmocka_unit_test(test_conversation_sha256),
      cmocka_unit_test(test_conversation_sha1),
      cmocka_unit_test(test_escaped_user_name),
      cmocka_unit_test(test_malformed_client_first),
      cmocka_unit_test(test_malformed_client_final),
      cmocka_unit_test(test_cred_limits),
      cmocka_unit_test(test_client_rfc7677),
      cmocka_unit_test(test_client_refuses),
   };
   return cmocka_run_group_tests_name("scram", tests, NULL, NULL);
}
