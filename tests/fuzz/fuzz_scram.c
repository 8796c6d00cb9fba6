/*
 * fuzz_scram.c - the server side of a SCRAM conversation fed what a client
 * sends in saslStart/saslContinue. The input is
 *   <flags byte> <client-first> '\n' <client-final>
 * flags bit 0 picks SCRAM-SHA-256 over SCRAM-SHA-1, bit 1 answers as for an
 * unknown user. Every "%N" in the client-final is replaced by the nonce the
 * server just sent (the fuzzer cannot guess it), so the channel-binding and
 * proof parsing behind the nonce check are reached too. The raw input also
 * goes through the base64 decoder and SASLprep.
 */
#include "fuzz_common.h"
#include "scram.h"

#include <stdlib.h>

static aspen_scram_cred_t g_cred[2];
static bool g_ready;

static void
init_once(void)
{
   if (g_ready) {
      return;
   }
   g_ready = true;
   aspen_log_set_level(ASPEN_LOG_ERROR);
   static const uint8_t salt[16] = "fuzzsaltfuzzsalt";
   aspen_error_t err;
   for (int m = 0; m < 2; m++) {
      ASPEN_ASSERT(aspen_scram_cred_derive((aspen_scram_mech_t) m, "pencil",
                                           salt, sizeof salt, 4096,
                                           &g_cred[m], &err));
   }
}

/* `final` with each "%N" replaced by `nonce`, into a malloc'd block. */
static char *
with_nonce(const uint8_t *final, size_t len, const char *nonce, size_t *out_len)
{
   size_t nlen = strlen(nonce);
   char *out = malloc(len * (nlen + 1) + 1);
   size_t o = 0;
   ASPEN_ASSERT(out != NULL);
   for (size_t i = 0; i < len; i++) {
      if (final[i] == '%' && i + 1 < len && final[i + 1] == 'N') {
         memcpy(out + o, nonce, nlen);
         o += nlen;
         i++;
      } else {
         out[o++] = (char) final[i];
      }
   }
   out[o] = '\0';
   *out_len = o;
   return out;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   if (size < 1 || size > 4096) {
      return 0;
   }
   init_once();
   aspen_error_t err;
   uint8_t flags = data[0];
   const uint8_t *msg = data + 1;
   size_t len = size - 1;

   /* The building blocks, on the raw bytes. */
   uint8_t b64[4096];
   size_t b64_len;
   (void) aspen_scram_b64_decode((const char *) msg, len, b64, sizeof b64,
                                 &b64_len);
   char *text = malloc(len + 1);
   char prepped[4096];
   memcpy(text, msg, len);
   text[len] = '\0';
   (void) aspen_scram_saslprep(text, prepped, sizeof prepped, &err);
   free(text);

   const uint8_t *nl = memchr(msg, '\n', len);
   size_t first_len = nl ? (size_t) (nl - msg) : len;
   aspen_scram_mech_t mech =
      (flags & 1) ? ASPEN_SCRAM_SHA_256 : ASPEN_SCRAM_SHA_1;
   aspen_scram_t *sc = aspen_scram_new(mech);
   if (aspen_scram_server_start(sc, msg, first_len, &err)) {
      ASPEN_ASSERT(aspen_scram_user(sc) != NULL);
      char challenge[ASPEN_SCRAM_MSG_MAX];
      size_t clen = aspen_scram_server_challenge(
         sc, (flags & 2) ? NULL : &g_cred[mech], challenge);
      ASPEN_ASSERT(clen > 0 && clen < ASPEN_SCRAM_MSG_MAX);
      challenge[clen] = '\0';
      /* The combined nonce: "r=<nonce>," starts the server-first. */
      char nonce[ASPEN_SCRAM_MSG_MAX] = "";
      if (strncmp(challenge, "r=", 2) == 0) {
         const char *comma = strchr(challenge, ',');
         size_t n = comma ? (size_t) (comma - challenge - 2) : 0;
         memcpy(nonce, challenge + 2, n);
         nonce[n] = '\0';
      }
      if (nl) {
         size_t flen;
         char *final = with_nonce(nl + 1, len - first_len - 1, nonce, &flen);
         char out[ASPEN_SCRAM_MSG_MAX];
         size_t out_len = 0;
         if (aspen_scram_server_finish(sc, (const uint8_t *) final, flen, out,
                                       &out_len, &err)) {
            ASPEN_ASSERT(aspen_scram_is_done(sc));
         }
         free(final);
      }
   }
   aspen_scram_destroy(sc);
   return 0;
}
