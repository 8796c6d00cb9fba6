/*
 * scram.c - SCRAM-SHA-1 / SCRAM-SHA-256 credentials and the server side of
 * one conversation (see scram.h). All cryptography is OpenSSL's: PBKDF2
 * (PKCS5_PBKDF2_HMAC), HMAC, SHA-1/SHA-256/MD5 (EVP), RAND_bytes and base64
 * (EVP_EncodeBlock/EVP_DecodeBlock). This file only parses and formats the
 * RFC 5802 messages and compares proofs in constant time.
 *
 * Message checks are strict and every failure is the same to the caller
 * (cmd_auth.c answers "Authentication failed."); the error text here is for
 * aspen's log and never contains a proof, key or password.
 */
#include "scram.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NONCE 256
#define MAX_USER 256
#define SERVER_NONCE_BYTES 24

typedef enum {
   SC_NEW,        /* waiting for client-first */
   SC_STARTED,    /* client-first parsed, no challenge sent yet */
   SC_CHALLENGED, /* server-first sent, waiting for client-final */
   SC_DONE,       /* proof verified */
   SC_FAILED,     /* any error: nothing more is accepted */
} sc_state_t;

struct aspen_scram {
   aspen_scram_mech_t mech;
   sc_state_t state;
   char user[MAX_USER + 1];
   char gs2[MAX_USER + 16];           /* "n,," or "n,a=<authzid>," */
   char bare[ASPEN_SCRAM_MSG_MAX + 1]; /* client-first-message-bare */
   char nonce[2 * MAX_NONCE + 1];     /* client nonce + server nonce */
   char server_first[ASPEN_SCRAM_MSG_MAX + 1];
   aspen_scram_cred_t cred;
};

/* ---- mechanisms and primitives ------------------------------------------ */

const char *
aspen_scram_mech_name(aspen_scram_mech_t mech)
{
   return mech == ASPEN_SCRAM_SHA_1 ? "SCRAM-SHA-1" : "SCRAM-SHA-256";
}

bool
aspen_scram_mech_parse(const char *name, aspen_scram_mech_t *mech)
{
   if (strcmp(name, "SCRAM-SHA-1") == 0) {
      *mech = ASPEN_SCRAM_SHA_1;
      return true;
   }
   if (strcmp(name, "SCRAM-SHA-256") == 0) {
      *mech = ASPEN_SCRAM_SHA_256;
      return true;
   }
   *mech = ASPEN_SCRAM_SHA_256;
   return false;
}

size_t
aspen_scram_hash_len(aspen_scram_mech_t mech)
{
   return mech == ASPEN_SCRAM_SHA_1 ? 20 : 32;
}

static const EVP_MD *
md_of(aspen_scram_mech_t mech)
{
   return mech == ASPEN_SCRAM_SHA_1 ? EVP_sha1() : EVP_sha256();
}

void
aspen_scram_hash(aspen_scram_mech_t mech, const void *data, size_t len,
                 uint8_t *out)
{
   unsigned int n = 0;
   ASPEN_ASSERT(EVP_Digest(data, len, out, &n, md_of(mech), NULL) == 1);
}

void
aspen_scram_hmac(aspen_scram_mech_t mech, const void *key, size_t klen,
                 const void *data, size_t len, uint8_t *out)
{
   unsigned int n = 0;
   ASPEN_ASSERT(HMAC(md_of(mech), key, (int) klen, data, len, out, &n) !=
                NULL);
}

size_t
aspen_scram_b64_encode(const uint8_t *data, size_t len, char *out,
                       size_t size)
{
   size_t need = 4 * ((len + 2) / 3);
   if (need + 1 > size || len > (size_t) INT32_MAX) {
      return 0;
   }
   int n = EVP_EncodeBlock((unsigned char *) out, data, (int) len);
   return n < 0 ? 0 : (size_t) n;
}

bool
aspen_scram_b64_decode(const char *text, size_t len, uint8_t *out,
                       size_t size, size_t *out_len)
{
   *out_len = 0;
   if (len % 4 != 0 || len / 4 * 3 > size + 2 || len > 4096) {
      return false;
   }
   if (len == 0) {
      return true;
   }
   size_t pad = 0;
   if (text[len - 1] == '=') {
      pad++;
      if (text[len - 2] == '=') {
         pad++;
      }
   }
   /* EVP_DecodeBlock writes whole 3-byte groups, padding included. */
   uint8_t tmp[3 * 4096 / 4];
   int n = EVP_DecodeBlock(tmp, (const unsigned char *) text, (int) len);
   if (n < 0 || (size_t) n < pad || (size_t) n - pad > size) {
      return false;
   }
   /* EVP_DecodeBlock tolerates '=' in the middle; canonical text does not. */
   for (size_t i = 0; i + pad < len; i++) {
      if (text[i] == '=') {
         return false;
      }
   }
   *out_len = (size_t) n - pad;
   memcpy(out, tmp, *out_len);
   return true;
}

bool
aspen_scram_saslprep(const char *in, char *out, size_t size,
                     aspen_error_t *err)
{
   size_t n = strlen(in);
   if (n + 1 > size) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "password is too long");
      return false;
   }
   for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char) in[i];
      if (c >= 0x80) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "password has a non-ASCII character at byte %zu: "
                         "aspen's SASLprep supports printable ASCII only",
                         i);
         return false;
      }
      if (c < 0x20 || c == 0x7f) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "password has a control character at byte %zu "
                         "(prohibited by SASLprep)",
                         i);
         return false;
      }
   }
   memcpy(out, in, n + 1);
   return true;
}

bool
aspen_scram_prepare_password(aspen_scram_mech_t mech, const char *user,
                             const char *password, char *out, size_t size,
                             aspen_error_t *err)
{
   if (mech == ASPEN_SCRAM_SHA_256) {
      return aspen_scram_saslprep(password, out, size, err);
   }
   /* SCRAM-SHA-1 salts MongoDB's legacy digest, not the password itself. */
   if (size < 33) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "digest buffer too small");
      return false;
   }
   EVP_MD_CTX *ctx = EVP_MD_CTX_new();
   uint8_t md[16];
   unsigned int n = 0;
   ASPEN_ASSERT(ctx != NULL);
   bool ok = EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, user, strlen(user)) == 1 &&
             EVP_DigestUpdate(ctx, ":mongo:", 7) == 1 &&
             EVP_DigestUpdate(ctx, password, strlen(password)) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &n) == 1 && n == 16;
   EVP_MD_CTX_free(ctx);
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "MD5 is not available from OpenSSL");
      return false;
   }
   for (int i = 0; i < 16; i++) {
      snprintf(out + 2 * i, 3, "%02x", md[i]);
   }
   return true;
}

/* SaltedPassword = PBKDF2(prepared, salt, i); ClientKey and ServerKey are
 * its HMACs of "Client Key" and "Server Key" (RFC 5802 section 3). Shared by
 * the stored credentials (server side) and the client side. */
static bool
salted_keys(aspen_scram_mech_t mech, const char *prepared, const uint8_t *salt,
            size_t salt_len, int iterations, uint8_t *client_key,
            uint8_t *server_key, aspen_error_t *err)
{
   size_t hl = aspen_scram_hash_len(mech);
   uint8_t salted[ASPEN_SCRAM_MAX_HASH];
   if (PKCS5_PBKDF2_HMAC(prepared, (int) strlen(prepared), salt,
                         (int) salt_len, iterations, md_of(mech), (int) hl,
                         salted) != 1) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "PBKDF2 failed");
      return false;
   }
   aspen_scram_hmac(mech, salted, hl, "Client Key", 10, client_key);
   aspen_scram_hmac(mech, salted, hl, "Server Key", 10, server_key);
   OPENSSL_cleanse(salted, sizeof salted);
   return true;
}

bool
aspen_scram_cred_derive(aspen_scram_mech_t mech, const char *prepared,
                        const uint8_t *salt, size_t salt_len, int iterations,
                        aspen_scram_cred_t *cred, aspen_error_t *err)
{
   memset(cred, 0, sizeof *cred);
   if (salt_len == 0 || salt_len > ASPEN_SCRAM_MAX_SALT ||
       iterations < ASPEN_SCRAM_MIN_ITERATIONS) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "SCRAM needs a salt of 1 to %d bytes and at least %d "
                      "iterations",
                      ASPEN_SCRAM_MAX_SALT, ASPEN_SCRAM_MIN_ITERATIONS);
      return false;
   }
   size_t hl = aspen_scram_hash_len(mech);
   uint8_t client_key[ASPEN_SCRAM_MAX_HASH];
   if (!salted_keys(mech, prepared, salt, salt_len, iterations, client_key,
                    cred->server_key, err)) {
      return false;
   }
   aspen_scram_hash(mech, client_key, hl, cred->stored_key);
   OPENSSL_cleanse(client_key, sizeof client_key);
   memcpy(cred->salt, salt, salt_len);
   cred->salt_len = salt_len;
   cred->iterations = iterations;
   return true;
}

bool
aspen_scram_cred_make(aspen_scram_mech_t mech, const char *user,
                      const char *password, int iterations,
                      aspen_scram_cred_t *cred, aspen_error_t *err)
{
   char prepared[1024];
   uint8_t salt[ASPEN_SCRAM_MAX_HASH];
   size_t salt_len = aspen_scram_hash_len(mech) - 4; /* as mongod */
   memset(cred, 0, sizeof *cred);
   if (iterations == 0) {
      iterations = mech == ASPEN_SCRAM_SHA_1 ? ASPEN_SCRAM_SHA_1_ITERATIONS
                                             : ASPEN_SCRAM_SHA_256_ITERATIONS;
   }
   if (!aspen_scram_prepare_password(mech, user, password, prepared,
                                     sizeof prepared, err)) {
      return false;
   }
   if (RAND_bytes(salt, (int) salt_len) != 1) {
      OPENSSL_cleanse(prepared, sizeof prepared);
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "RAND_bytes failed: no randomness for the salt");
      return false;
   }
   bool ok = aspen_scram_cred_derive(mech, prepared, salt, salt_len,
                                     iterations, cred, err);
   OPENSSL_cleanse(prepared, sizeof prepared);
   return ok;
}

/* ---- the conversation ----------------------------------------------------- */

aspen_scram_t *
aspen_scram_new(aspen_scram_mech_t mech)
{
   aspen_scram_t *sc = aspen_xcalloc(1, sizeof *sc);
   sc->mech = mech;
   sc->state = SC_NEW;
   return sc;
}

void
aspen_scram_destroy(aspen_scram_t *sc)
{
   if (sc) {
      OPENSSL_cleanse(sc, sizeof *sc);
      free(sc);
   }
}

aspen_scram_mech_t
aspen_scram_mech(const aspen_scram_t *sc)
{
   return sc->mech;
}

const char *
aspen_scram_user(const aspen_scram_t *sc)
{
   return sc->user;
}

bool
aspen_scram_is_done(const aspen_scram_t *sc)
{
   return sc->state == SC_DONE;
}

static bool
conv_fail(aspen_scram_t *sc, aspen_error_t *err, const char *what)
{
   sc->state = SC_FAILED;
   aspen_error_set(err, ASPEN_ERR_AuthenticationFailed, "%s", what);
   return false;
}

/* A SASL message as text: no NUL byte, bounded length. */
static bool
as_text(const uint8_t *msg, size_t len, char *out)
{
   if (len > ASPEN_SCRAM_MSG_MAX || memchr(msg, '\0', len)) {
      return false;
   }
   memcpy(out, msg, len);
   out[len] = '\0';
   return true;
}

/* Decodes a saslname ("=2C" -> ',', "=3D" -> '='); false on any other '='
 * escape, a ',' or an over-long name. */
static bool
decode_saslname(const char *s, size_t len, char *out, size_t size)
{
   size_t o = 0;
   for (size_t i = 0; i < len; i++) {
      char c = s[i];
      if (c == ',') {
         return false;
      }
      if (c == '=') {
         if (i + 2 >= len) {
            return false;
         }
         if (s[i + 1] == '2' && s[i + 2] == 'C') {
            c = ',';
         } else if (s[i + 1] == '3' && s[i + 2] == 'D') {
            c = '=';
         } else {
            return false;
         }
         i += 2;
      }
      if (o + 1 >= size) {
         return false;
      }
      out[o++] = c;
   }
   out[o] = '\0';
   return o > 0;
}

/* A nonce is printable ASCII without ','. */
static bool
valid_nonce(const char *s, size_t len)
{
   if (len == 0 || len > MAX_NONCE) {
      return false;
   }
   for (size_t i = 0; i < len; i++) {
      if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',') {
         return false;
      }
   }
   return true;
}

bool
aspen_scram_server_start(aspen_scram_t *sc, const uint8_t *msg, size_t len,
                         aspen_error_t *err)
{
   char text[ASPEN_SCRAM_MSG_MAX + 1];
   if (sc->state != SC_NEW) {
      return conv_fail(sc, err, "SCRAM client-first message sent twice");
   }
   if (!as_text(msg, len, text)) {
      return conv_fail(sc, err, "SCRAM client-first message is too long or binary");
   }
   /* gs2-header: cbind-flag "," [authzid] "," */
   const char *p = text;
   if (p[0] == 'p') {
      return conv_fail(sc, err, "SCRAM channel binding is not supported");
   }
   if ((p[0] != 'n' && p[0] != 'y') || p[1] != ',') {
      return conv_fail(sc, err, "SCRAM client-first message has a bad gs2 header");
   }
   p += 2;
   const char *authzid = NULL;
   size_t authzid_len = 0;
   if (p[0] == 'a' && p[1] == '=') {
      authzid = p + 2;
      const char *comma = strchr(authzid, ',');
      if (!comma) {
         return conv_fail(sc, err, "SCRAM client-first message is truncated");
      }
      authzid_len = (size_t) (comma - authzid);
      p = comma;
   }
   if (p[0] != ',') {
      return conv_fail(sc, err, "SCRAM client-first message has a bad gs2 header");
   }
   p++;
   size_t gs2_len = (size_t) (p - text);
   if (gs2_len >= sizeof sc->gs2) {
      return conv_fail(sc, err, "SCRAM authzid is too long");
   }
   memcpy(sc->gs2, text, gs2_len);
   sc->gs2[gs2_len] = '\0';
   snprintf(sc->bare, sizeof sc->bare, "%s", p);

   /* client-first-message-bare: "n=" saslname ",r=" nonce ["," ext]* */
   if (strncmp(p, "m=", 2) == 0) {
      return conv_fail(sc, err, "SCRAM mandatory extensions are not supported");
   }
   if (strncmp(p, "n=", 2) != 0) {
      return conv_fail(sc, err, "SCRAM client-first message has no user name");
   }
   const char *name = p + 2;
   const char *comma = strchr(name, ',');
   if (!comma || !decode_saslname(name, (size_t) (comma - name), sc->user,
                                  sizeof sc->user)) {
      return conv_fail(sc, err, "SCRAM client-first message has a bad user name");
   }
   if (authzid) {
      char az[MAX_USER + 1];
      if (!decode_saslname(authzid, authzid_len, az, sizeof az) ||
          strcmp(az, sc->user) != 0) {
         return conv_fail(sc, err, "SCRAM authzid differs from the user name");
      }
   }
   p = comma + 1;
   if (strncmp(p, "r=", 2) != 0) {
      return conv_fail(sc, err, "SCRAM client-first message has no nonce");
   }
   const char *cnonce = p + 2;
   const char *end = strchr(cnonce, ',');
   size_t cn_len = end ? (size_t) (end - cnonce) : strlen(cnonce);
   if (!valid_nonce(cnonce, cn_len)) {
      return conv_fail(sc, err, "SCRAM client nonce is malformed");
   }
   /* Extensions after the nonce are allowed and ignored (RFC 5802 §5.1). */
   uint8_t raw[SERVER_NONCE_BYTES];
   char snonce[64];
   if (RAND_bytes(raw, sizeof raw) != 1 ||
       aspen_scram_b64_encode(raw, sizeof raw, snonce, sizeof snonce) == 0) {
      return conv_fail(sc, err, "RAND_bytes failed: no randomness for the nonce");
   }
   snprintf(sc->nonce, sizeof sc->nonce, "%.*s%s", (int) cn_len, cnonce,
            snonce);
   sc->state = SC_STARTED;
   return true;
}

/* The secret behind the made-up salts of unknown users: one per process,
 * so the same unknown name gets the same salt on every try, as a real user
 * would. */
static uint8_t fake_secret[32];
static pthread_once_t fake_once = PTHREAD_ONCE_INIT;

static void
init_fake_secret(void)
{
   ASPEN_ASSERT(RAND_bytes(fake_secret, sizeof fake_secret) == 1);
}

static void
fake_cred(aspen_scram_t *sc)
{
   uint8_t mac[ASPEN_SCRAM_MAX_HASH];
   char input[MAX_USER + 32];
   pthread_once(&fake_once, init_fake_secret);
   int n = snprintf(input, sizeof input, "%s\n%s",
                    aspen_scram_mech_name(sc->mech), sc->user);
   aspen_scram_hmac(ASPEN_SCRAM_SHA_256, fake_secret, sizeof fake_secret,
                    input, (size_t) n, mac);
   memset(&sc->cred, 0, sizeof sc->cred);
   sc->cred.salt_len = aspen_scram_hash_len(sc->mech) - 4;
   memcpy(sc->cred.salt, mac, sc->cred.salt_len);
   sc->cred.iterations = sc->mech == ASPEN_SCRAM_SHA_1
                            ? ASPEN_SCRAM_SHA_1_ITERATIONS
                            : ASPEN_SCRAM_SHA_256_ITERATIONS;
   /* Random keys: no proof can hash to this StoredKey. */
   ASPEN_ASSERT(RAND_bytes(sc->cred.stored_key, sizeof sc->cred.stored_key) ==
                1);
   ASPEN_ASSERT(RAND_bytes(sc->cred.server_key, sizeof sc->cred.server_key) ==
                1);
}

size_t
aspen_scram_server_challenge(aspen_scram_t *sc, const aspen_scram_cred_t *cred,
                             char *out)
{
   ASPEN_ASSERT(sc->state == SC_STARTED);
   if (cred) {
      sc->cred = *cred;
   } else {
      fake_cred(sc);
   }
   char salt[4 * ASPEN_SCRAM_MAX_SALT / 3 + 8];
   aspen_scram_b64_encode(sc->cred.salt, sc->cred.salt_len, salt, sizeof salt);
   int n = snprintf(sc->server_first, sizeof sc->server_first,
                    "r=%s,s=%s,i=%d", sc->nonce, salt, sc->cred.iterations);
   ASPEN_ASSERT(n > 0 && (size_t) n < sizeof sc->server_first);
   memcpy(out, sc->server_first, (size_t) n + 1);
   sc->state = SC_CHALLENGED;
   return (size_t) n;
}

bool
aspen_scram_server_finish(aspen_scram_t *sc, const uint8_t *msg, size_t len,
                          char *out, size_t *out_len, aspen_error_t *err)
{
   char text[ASPEN_SCRAM_MSG_MAX + 1];
   *out_len = 0;
   out[0] = '\0';
   if (sc->state != SC_CHALLENGED) {
      return conv_fail(sc, err, "SCRAM client-final message out of order");
   }
   if (!as_text(msg, len, text)) {
      return conv_fail(sc, err, "SCRAM client-final message is too long or binary");
   }
   /* "c=" b64(gs2 header) ",r=" nonce ["," ext]* ",p=" b64(proof) */
   if (strncmp(text, "c=", 2) != 0) {
      return conv_fail(sc, err, "SCRAM client-final message has no channel binding");
   }
   const char *cb = text + 2;
   const char *comma = strchr(cb, ',');
   if (!comma) {
      return conv_fail(sc, err, "SCRAM client-final message is truncated");
   }
   uint8_t cbind[sizeof sc->gs2];
   size_t cbind_len;
   if (!aspen_scram_b64_decode(cb, (size_t) (comma - cb), cbind,
                               sizeof cbind, &cbind_len) ||
       cbind_len != strlen(sc->gs2) ||
       memcmp(cbind, sc->gs2, cbind_len) != 0) {
      return conv_fail(sc, err, "SCRAM channel binding does not match");
   }
   const char *r = comma + 1;
   if (strncmp(r, "r=", 2) != 0) {
      return conv_fail(sc, err, "SCRAM client-final message has no nonce");
   }
   const char *nonce = r + 2;
   comma = strchr(nonce, ',');
   size_t nonce_len = strlen(sc->nonce);
   if (!comma || (size_t) (comma - nonce) != nonce_len ||
       memcmp(nonce, sc->nonce, nonce_len) != 0) {
      return conv_fail(sc, err, "SCRAM nonce does not match");
   }
   const char *proof_attr = strstr(text, ",p=");
   const char *last = proof_attr;
   while (last) { /* the proof is the last attribute */
      proof_attr = last;
      last = strstr(last + 1, ",p=");
   }
   if (!proof_attr || proof_attr < comma) {
      return conv_fail(sc, err, "SCRAM client-final message has no proof");
   }
   size_t hl = aspen_scram_hash_len(sc->mech);
   uint8_t proof[ASPEN_SCRAM_MAX_HASH + 3];
   size_t proof_len;
   const char *pb = proof_attr + 3;
   if (!aspen_scram_b64_decode(pb, strlen(pb), proof, sizeof proof,
                               &proof_len) ||
       proof_len != hl) {
      return conv_fail(sc, err, "SCRAM proof is malformed");
   }

   /* AuthMessage = client-first-bare "," server-first ","
    *               client-final-without-proof */
   char auth[3 * ASPEN_SCRAM_MSG_MAX + 8];
   int an = snprintf(auth, sizeof auth, "%s,%s,%.*s", sc->bare,
                     sc->server_first, (int) (proof_attr - text), text);
   ASPEN_ASSERT(an > 0 && (size_t) an < sizeof auth);

   uint8_t sig[ASPEN_SCRAM_MAX_HASH], client_key[ASPEN_SCRAM_MAX_HASH];
   uint8_t stored[ASPEN_SCRAM_MAX_HASH];
   aspen_scram_hmac(sc->mech, sc->cred.stored_key, hl, auth, (size_t) an, sig);
   for (size_t i = 0; i < hl; i++) {
      client_key[i] = proof[i] ^ sig[i];
   }
   aspen_scram_hash(sc->mech, client_key, hl, stored);
   bool match = CRYPTO_memcmp(stored, sc->cred.stored_key, hl) == 0;
   OPENSSL_cleanse(client_key, sizeof client_key);
   if (!match) {
      return conv_fail(sc, err, "SCRAM proof does not match the stored key");
   }
   uint8_t server_sig[ASPEN_SCRAM_MAX_HASH];
   char b64[64];
   aspen_scram_hmac(sc->mech, sc->cred.server_key, hl, auth, (size_t) an,
                    server_sig);
   aspen_scram_b64_encode(server_sig, hl, b64, sizeof b64);
   int n = snprintf(out, ASPEN_SCRAM_MSG_MAX, "v=%s", b64);
   *out_len = (size_t) n;
   sc->state = SC_DONE;
   return true;
}

/* ---- the client side ------------------------------------------------------ */

struct aspen_scram_client {
   aspen_scram_mech_t mech;
   int state; /* 0 new, 1 first sent, 2 challenged, 3 final sent, 4 done */
   char bare[ASPEN_SCRAM_MSG_MAX + 1]; /* client-first-message-bare */
   char cnonce[64];
   char nonce[2 * MAX_NONCE + 1]; /* the combined nonce of server-first */
   char server_first[ASPEN_SCRAM_MSG_MAX + 1];
   char auth[3 * ASPEN_SCRAM_MSG_MAX + 8]; /* AuthMessage */
   uint8_t server_key[ASPEN_SCRAM_MAX_HASH];
};

aspen_scram_client_t *
aspen_scram_client_new(aspen_scram_mech_t mech)
{
   aspen_scram_client_t *c = aspen_xcalloc(1, sizeof *c);
   c->mech = mech;
   return c;
}

void
aspen_scram_client_destroy(aspen_scram_client_t *c)
{
   if (c) {
      OPENSSL_cleanse(c, sizeof *c);
      free(c);
   }
}

/* Encodes a user name as a saslname ("," -> "=2C", "=" -> "=3D"). */
static bool
encode_saslname(const char *user, char *out, size_t size)
{
   size_t o = 0;
   for (const char *p = user; *p; p++) {
      const char *rep = *p == ',' ? "=2C" : *p == '=' ? "=3D" : NULL;
      size_t n = rep ? 3 : 1;
      if (o + n + 1 > size) {
         return false;
      }
      if (rep) {
         memcpy(out + o, rep, 3);
      } else {
         out[o] = *p;
      }
      o += n;
   }
   out[o] = '\0';
   return o > 0;
}

size_t
aspen_scram_client_first(aspen_scram_client_t *c, const char *user, char *out,
                         aspen_error_t *err)
{
   char name[3 * MAX_USER + 1];
   uint8_t raw[24];
   ASPEN_ASSERT(c->state == 0);
   if (strlen(user) > MAX_USER ||
       !encode_saslname(user, name, sizeof name)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "SCRAM user name is empty or longer than %d bytes",
                      MAX_USER);
      return 0;
   }
   if (RAND_bytes(raw, sizeof raw) != 1 ||
       aspen_scram_b64_encode(raw, sizeof raw, c->cnonce, sizeof c->cnonce) ==
          0) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "RAND_bytes failed: no randomness for the nonce");
      return 0;
   }
   snprintf(c->bare, sizeof c->bare, "n=%s,r=%s", name, c->cnonce);
   int n = snprintf(out, ASPEN_SCRAM_MSG_MAX, "n,,%s", c->bare);
   c->state = 1;
   return (size_t) n;
}

bool
aspen_scram_client_challenge(aspen_scram_client_t *c, const uint8_t *msg,
                             size_t len, uint8_t *salt, size_t *salt_len,
                             int *iterations, aspen_error_t *err)
{
   *salt_len = 0;
   *iterations = 0;
   if (c->state != 1) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM server-first message out of order");
      return false;
   }
   c->state = 5; /* failed, unless everything below holds */
   if (!as_text(msg, len, c->server_first)) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM server-first message is too long or binary");
      return false;
   }
   /* "r=" nonce ",s=" salt ",i=" count ["," ext]* */
   const char *t = c->server_first;
   if (strncmp(t, "m=", 2) == 0) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM mandatory extensions are not supported");
      return false;
   }
   const char *s = strstr(t, ",s=");
   const char *i = strstr(t, ",i=");
   size_t cn = strlen(c->cnonce);
   if (strncmp(t, "r=", 2) != 0 || !s || !i || i < s) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM server-first message is malformed");
      return false;
   }
   size_t nonce_len = (size_t) (s - (t + 2));
   if (nonce_len <= cn || !valid_nonce(t + 2, nonce_len) ||
       memcmp(t + 2, c->cnonce, cn) != 0) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM server nonce does not extend the client's");
      return false;
   }
   memcpy(c->nonce, t + 2, nonce_len);
   c->nonce[nonce_len] = '\0';
   if (!aspen_scram_b64_decode(s + 3, (size_t) (i - (s + 3)), salt,
                               ASPEN_SCRAM_MAX_SALT, salt_len) ||
       *salt_len == 0) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM salt is malformed");
      return false;
   }
   char *end = NULL;
   long it = strtol(i + 3, &end, 10);
   if (end == i + 3 || (*end != '\0' && *end != ',') ||
       it < ASPEN_SCRAM_MIN_ITERATIONS || it > 10000000) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM iteration count is missing or below %d",
                      ASPEN_SCRAM_MIN_ITERATIONS);
      *salt_len = 0;
      return false;
   }
   *iterations = (int) it;
   c->state = 2;
   return true;
}

bool
aspen_scram_keys_derive(aspen_scram_mech_t mech, const char *user,
                        const char *password, const uint8_t *salt,
                        size_t salt_len, int iterations,
                        aspen_scram_keys_t *keys, aspen_error_t *err)
{
   char prepared[1024];
   memset(keys, 0, sizeof *keys);
   if (!aspen_scram_prepare_password(mech, user, password, prepared,
                                     sizeof prepared, err)) {
      return false;
   }
   bool ok = salted_keys(mech, prepared, salt, salt_len, iterations,
                         keys->client_key, keys->server_key, err);
   OPENSSL_cleanse(prepared, sizeof prepared);
   return ok;
}

size_t
aspen_scram_client_final(aspen_scram_client_t *c,
                         const aspen_scram_keys_t *keys, char *out)
{
   ASPEN_ASSERT(c->state == 2);
   size_t hl = aspen_scram_hash_len(c->mech);
   /* c=biws is base64("n,,"): no channel binding, no authzid. */
   char without_proof[2 * MAX_NONCE + 16];
   snprintf(without_proof, sizeof without_proof, "c=biws,r=%s", c->nonce);
   int an = snprintf(c->auth, sizeof c->auth, "%s,%s,%s", c->bare,
                     c->server_first, without_proof);
   ASPEN_ASSERT(an > 0 && (size_t) an < sizeof c->auth);
   uint8_t stored[ASPEN_SCRAM_MAX_HASH], sig[ASPEN_SCRAM_MAX_HASH];
   uint8_t proof[ASPEN_SCRAM_MAX_HASH];
   aspen_scram_hash(c->mech, keys->client_key, hl, stored);
   aspen_scram_hmac(c->mech, stored, hl, c->auth, (size_t) an, sig);
   for (size_t i = 0; i < hl; i++) {
      proof[i] = keys->client_key[i] ^ sig[i];
   }
   memcpy(c->server_key, keys->server_key, hl);
   char b64[64];
   aspen_scram_b64_encode(proof, hl, b64, sizeof b64);
   OPENSSL_cleanse(proof, sizeof proof);
   int n = snprintf(out, ASPEN_SCRAM_MSG_MAX, "%s,p=%s", without_proof, b64);
   c->state = 3;
   return (size_t) n;
}

bool
aspen_scram_client_verify(aspen_scram_client_t *c, const uint8_t *msg,
                          size_t len, aspen_error_t *err)
{
   char text[ASPEN_SCRAM_MSG_MAX + 1];
   if (c->state != 3) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM server-final message out of order");
      return false;
   }
   c->state = 5;
   if (!as_text(msg, len, text)) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "SCRAM server-final message is too long or binary");
      return false;
   }
   if (strncmp(text, "e=", 2) == 0) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "the server refused the SCRAM proof: %.100s", text + 2);
      return false;
   }
   size_t hl = aspen_scram_hash_len(c->mech);
   uint8_t want[ASPEN_SCRAM_MAX_HASH], got[ASPEN_SCRAM_MAX_HASH + 3];
   size_t got_len = 0;
   const char *v = text + 2;
   const char *end = strchr(v, ',');
   size_t vlen = end ? (size_t) (end - v) : strlen(v);
   aspen_scram_hmac(c->mech, c->server_key, hl, c->auth, strlen(c->auth),
                    want);
   if (strncmp(text, "v=", 2) != 0 ||
       !aspen_scram_b64_decode(v, vlen, got, sizeof got, &got_len) ||
       got_len != hl || CRYPTO_memcmp(want, got, hl) != 0) {
      aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                      "the server's SCRAM signature does not match: it does "
                      "not know this user's keys");
      return false;
   }
   c->state = 4;
   return true;
}

bool
aspen_scram_client_is_done(const aspen_scram_client_t *c)
{
   return c->state == 4;
}
