/*
 * scram.h - SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) as MongoDB
 * uses them: credentials kept as keys (salt, iteration count, StoredKey,
 * ServerKey), and the server side of one SASL conversation.
 *
 * This module depends only on wire/ and OpenSSL (PBKDF2, HMAC, SHA, MD5,
 * RAND_bytes, base64), so the unit test builds it alone. cmd_auth.c drives a
 * conversation per session; users.c stores credentials made here.
 *
 * Nothing here logs, and nothing here keeps a password: a password exists
 * only while aspen_scram_cred_make runs (for --add-user).
 *
 * Thread safety: functions are reentrant; one aspen_scram_t belongs to one
 * thread at a time (in aspen, the loop thread).
 */
#ifndef ASPEN_SCRAM_H
#define ASPEN_SCRAM_H

#include "wire.h"

typedef enum {
   ASPEN_SCRAM_SHA_1 = 0,
   ASPEN_SCRAM_SHA_256 = 1,
} aspen_scram_mech_t;

#define ASPEN_SCRAM_N_MECHS 2
#define ASPEN_SCRAM_MAX_HASH 32 /* SHA-256 */
#define ASPEN_SCRAM_MAX_SALT 64
/* Largest SASL message aspen reads or writes; longer payloads are refused
 * before anything is decoded. */
#define ASPEN_SCRAM_MSG_MAX 1024
/* mongod's defaults (scramIterationCount, scramSHA256IterationCount). */
#define ASPEN_SCRAM_SHA_1_ITERATIONS 10000
#define ASPEN_SCRAM_SHA_256_ITERATIONS 15000
/* The fewest iterations drivers accept in a server-first message. */
#define ASPEN_SCRAM_MIN_ITERATIONS 4096

/* A stored SCRAM credential for one mechanism. */
typedef struct {
   int iterations;
   size_t salt_len;
   uint8_t salt[ASPEN_SCRAM_MAX_SALT];
   uint8_t stored_key[ASPEN_SCRAM_MAX_HASH];
   uint8_t server_key[ASPEN_SCRAM_MAX_HASH];
} aspen_scram_cred_t;

/* "SCRAM-SHA-1" / "SCRAM-SHA-256". */
const char *aspen_scram_mech_name(aspen_scram_mech_t mech);
/* Parses a mechanism name (exact, as drivers send it); false if unknown. */
bool aspen_scram_mech_parse(const char *name, aspen_scram_mech_t *mech);
/* Digest length in bytes: 20 or 32. */
size_t aspen_scram_hash_len(aspen_scram_mech_t mech);

/* ---- primitives (exposed for credential files and the unit tests) ------ */

/* H(data) and HMAC(key, data) with the mechanism's digest into `out`
 * (aspen_scram_hash_len bytes). */
void aspen_scram_hash(aspen_scram_mech_t mech, const void *data, size_t len,
                      uint8_t *out);
void aspen_scram_hmac(aspen_scram_mech_t mech, const void *key, size_t klen,
                      const void *data, size_t len, uint8_t *out);
/* Base64 (standard alphabet, padded). Encode returns the text length, or 0
 * when `size` is too small for it and the NUL. Decode accepts only padded,
 * well-formed input and fails when the result would exceed `size`. */
size_t aspen_scram_b64_encode(const uint8_t *data, size_t len, char *out,
                              size_t size);
bool aspen_scram_b64_decode(const char *text, size_t len, uint8_t *out,
                            size_t size, size_t *out_len);

/* SASLprep (RFC 4013) for the subset aspen supports: printable ASCII passes
 * unchanged; control characters (prohibited by RFC 4013) and any non-ASCII
 * byte are refused with a message saying so. Writes a NUL-terminated copy
 * into `out`. */
bool aspen_scram_saslprep(const char *in, char *out, size_t size,
                          aspen_error_t *err);

/* The password text SCRAM salts, as MongoDB defines it: for SCRAM-SHA-1 the
 * hex MD5 of "<user>:mongo:<password>", for SCRAM-SHA-256 the SASLprep'd
 * password. `out` receives a NUL-terminated string. */
bool aspen_scram_prepare_password(aspen_scram_mech_t mech, const char *user,
                                  const char *password, char *out,
                                  size_t size, aspen_error_t *err);

/* Derives StoredKey and ServerKey from an already prepared password (no
 * MongoDB digest step: RFC test vectors use this directly). */
bool aspen_scram_cred_derive(aspen_scram_mech_t mech, const char *prepared,
                             const uint8_t *salt, size_t salt_len,
                             int iterations, aspen_scram_cred_t *cred,
                             aspen_error_t *err);
/* Makes a new credential for user/password: random salt of mongod's length
 * (hash length - 4), `iterations` (0: mongod's default for the mechanism). */
bool aspen_scram_cred_make(aspen_scram_mech_t mech, const char *user,
                           const char *password, int iterations,
                           aspen_scram_cred_t *cred, aspen_error_t *err);

/* ---- the server side of one conversation -------------------------------- */

typedef struct aspen_scram aspen_scram_t;

aspen_scram_t *aspen_scram_new(aspen_scram_mech_t mech);
void aspen_scram_destroy(aspen_scram_t *sc); /* NULL is a no-op */
aspen_scram_mech_t aspen_scram_mech(const aspen_scram_t *sc);

/* Step 1: parses the client-first message (gs2 header, n=, r=) and picks
 * the server nonce. On success aspen_scram_user gives the (unescaped) user
 * name. Fails on any malformed message, channel binding, an authzid other
 * than the user, or a repeated call. */
bool aspen_scram_server_start(aspen_scram_t *sc, const uint8_t *msg,
                              size_t len, aspen_error_t *err);
const char *aspen_scram_user(const aspen_scram_t *sc);

/* Step 2: writes the server-first message for `cred` into `out` (size at
 * least ASPEN_SCRAM_MSG_MAX) and returns its length. `cred` is copied; NULL
 * stands for an unknown user: the reply then looks the same (a salt derived
 * from the name, the default iteration count) and the proof can never
 * match, so the conversation does not reveal whether a user exists. */
size_t aspen_scram_server_challenge(aspen_scram_t *sc,
                                    const aspen_scram_cred_t *cred,
                                    char *out);

/* Step 3: checks the client-final message (channel binding, nonce, proof)
 * and on success writes the server-final "v=..." into `out` (size at least
 * ASPEN_SCRAM_MSG_MAX), setting *out_len. Any failure ends the
 * conversation: a second client-final, even a correct one, is refused. */
bool aspen_scram_server_finish(aspen_scram_t *sc, const uint8_t *msg,
                               size_t len, char *out, size_t *out_len,
                               aspen_error_t *err);
/* True once step 3 succeeded. */
bool aspen_scram_is_done(const aspen_scram_t *sc);

/* ---- the client side of one conversation --------------------------------- */

/* aspen logging in to its backing deployment (upstream_login.c). The slow
 * step, PBKDF2, is a separate function so the caller can run it off the
 * loop thread and reuse its result for every connection with the same
 * salt. */
typedef struct aspen_scram_client aspen_scram_client_t;

/* ClientKey and ServerKey of a password for one salt and iteration count. */
typedef struct {
   uint8_t client_key[ASPEN_SCRAM_MAX_HASH];
   uint8_t server_key[ASPEN_SCRAM_MAX_HASH];
} aspen_scram_keys_t;

aspen_scram_client_t *aspen_scram_client_new(aspen_scram_mech_t mech);
void aspen_scram_client_destroy(aspen_scram_client_t *c); /* NULL: no-op */

/* Step 1: writes the client-first message ("n,,n=<user>,r=<nonce>") into
 * `out` (ASPEN_SCRAM_MSG_MAX bytes) and returns its length; 0 with err set
 * when the user name cannot be sent (empty, too long) or there is no
 * randomness. */
size_t aspen_scram_client_first(aspen_scram_client_t *c, const char *user,
                                char *out, aspen_error_t *err);
/* Step 2: parses the server-first message: the nonce must extend ours, the
 * salt be base64 of at most ASPEN_SCRAM_MAX_SALT bytes, the iteration count
 * at least ASPEN_SCRAM_MIN_ITERATIONS. Gives the salt (into `salt`, of
 * ASPEN_SCRAM_MAX_SALT bytes) and the count for aspen_scram_keys_derive. */
bool aspen_scram_client_challenge(aspen_scram_client_t *c, const uint8_t *msg,
                                  size_t len, uint8_t *salt, size_t *salt_len,
                                  int *iterations, aspen_error_t *err);
/* PBKDF2 and the two HMACs, from the password as given (MongoDB's digest
 * for SCRAM-SHA-1, SASLprep for SCRAM-SHA-256 are applied here). Slow by
 * design; any thread. */
bool aspen_scram_keys_derive(aspen_scram_mech_t mech, const char *user,
                             const char *password, const uint8_t *salt,
                             size_t salt_len, int iterations,
                             aspen_scram_keys_t *keys, aspen_error_t *err);
/* Step 3: writes the client-final message with its proof into `out`
 * (ASPEN_SCRAM_MSG_MAX bytes) and returns its length. */
size_t aspen_scram_client_final(aspen_scram_client_t *c,
                                const aspen_scram_keys_t *keys, char *out);
/* Step 4: checks the server-final message ("v=" the server signature);
 * false with err set for "e=..." or a signature that does not match (the
 * server does not hold this password's keys). */
bool aspen_scram_client_verify(aspen_scram_client_t *c, const uint8_t *msg,
                               size_t len, aspen_error_t *err);
bool aspen_scram_client_is_done(const aspen_scram_client_t *c);

#endif /* ASPEN_SCRAM_H */
