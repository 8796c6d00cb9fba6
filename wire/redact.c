/*
 * redact.c - keeping secrets out of what aspen shows: the one place that
 * knows which connection settings are secrets, used by getCmdLineOpts (the
 * backend URI, the command line) and by the connection listings
 * (sp.listConnections: Atlas connection URIs, Kafka client properties).
 *
 * What counts as a secret comes from the clients' own lists:
 *   - MongoDB URIs (the connection string spec, libmongoc, mongod/mongosh):
 *     the userinfo ("user:password@"), tlsCertificateKeyFilePassword and its
 *     older names sslClientCertificateKeyPassword / sslPEMKeyPassword,
 *     proxyPassword, and in authMechanismProperties every property but the
 *     ones known to be plain settings (AWS_SESSION_TOKEN is a credential);
 *   - librdkafka's properties flagged sensitive (_RK_SENSITIVE):
 *     sasl.username, sasl.password, sasl.oauthbearer.config,
 *     ssl.key.location, ssl.key.password, ssl.key.pem, ssl_key, ssl.ca.pem,
 *     ssl.keystore.password, plus sasl.oauthbearer.client.secret and the
 *     private-key settings of newer releases.
 * Beyond those lists any name holding "password", "passphrase", "secret",
 * "token", "credential", "private" or "jaas" is treated as a secret: showing
 * too little is harmless, showing a secret is not.
 */
#include "wire.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool
contains_nocase(const char *s, size_t len, const char *needle)
{
   size_t n = strlen(needle);
   for (size_t i = 0; i + n <= len; i++) {
      if (strncasecmp(s + i, needle, n) == 0) {
         return true;
      }
   }
   return false;
}

/* aspen_secret_name on the `len` bytes at `name`. */
static bool
secret_name(const char *name, size_t len)
{
   static const char *const exact[] = {
      "sasl.username", "sasl.oauthbearer.config", "ssl.key.location",
      "ssl.key.pem",   "ssl_key",                 "ssl.ca.pem"};
   static const char *const parts[] = {"password", "passphrase", "secret",
                                       "token",    "credential", "private",
                                       "jaas"};
   for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
      if (strlen(exact[i]) == len && strncasecmp(name, exact[i], len) == 0) {
         return true;
      }
   }
   for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
      if (contains_nocase(name, len, parts[i])) {
         return true;
      }
   }
   return false;
}

bool
aspen_secret_name(const char *name)
{
   return secret_name(name, strlen(name));
}

static int
hex_value(char c)
{
   return c >= '0' && c <= '9'   ? c - '0'
          : c >= 'a' && c <= 'f' ? c - 'a' + 10
          : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                 : -1;
}

/* Percent-decodes `len` bytes (a malformed escape stays as it is). */
static void
put_decoded(bson_string_t *out, const char *s, size_t len)
{
   for (size_t i = 0; i < len; i++) {
      int hi, lo;
      if (s[i] == '%' && i + 2 < len && (hi = hex_value(s[i + 1])) >= 0 &&
          (lo = hex_value(s[i + 2])) >= 0) {
         bson_string_append_c(out, (char) (hi * 16 + lo));
         i += 2;
      } else {
         bson_string_append_c(out, s[i]);
      }
   }
}

/* Percent-encodes `len` bytes, keeping only RFC 3986's unreserved ones. */
static void
put_encoded(bson_string_t *out, const char *s, size_t len)
{
   for (size_t i = 0; i < len; i++) {
      unsigned char c = (unsigned char) s[i];
      if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
          c == '~') {
         bson_string_append_c(out, (char) c);
      } else {
         bson_string_append_printf(out, "%%%02X", c);
      }
   }
}

/* authMechanismProperties ("K1:V1,K2:V2", maybe percent-encoded): the
 * properties known to be plain settings keep their values, every other
 * value (AWS_SESSION_TOKEN, anything unknown) is replaced. */
static void
put_mech_properties(bson_string_t *out, const char *v, size_t len)
{
   static const char *const plain[] = {
      "SERVICE_NAME", "CANONICALIZE_HOST_NAME", "SERVICE_REALM",
      "SERVICE_HOST", "ENVIRONMENT",            "TOKEN_RESOURCE",
      "ALLOWED_HOSTS"};
   bson_string_t *dec = bson_string_new(NULL);
   put_decoded(dec, v, len);
   const char *p = dec->str, *end = dec->str + dec->len;
   bool first = true;
   while (p <= end) {
      const char *comma = memchr(p, ',', (size_t) (end - p));
      const char *stop = comma ? comma : end;
      const char *colon = memchr(p, ':', (size_t) (stop - p));
      size_t klen = colon ? (size_t) (colon - p) : (size_t) (stop - p);
      bool keep = false;
      for (size_t i = 0; colon && i < sizeof plain / sizeof plain[0]; i++) {
         keep = keep || (strlen(plain[i]) == klen &&
                         strncasecmp(p, plain[i], klen) == 0);
      }
      if (!first) {
         bson_string_append_c(out, ',');
      }
      first = false;
      put_encoded(out, p, klen);
      if (colon) {
         bson_string_append_c(out, ':');
         if (keep) {
            put_encoded(out, colon + 1, (size_t) (stop - colon - 1));
         } else {
            bson_string_append(out, ASPEN_REDACTED);
         }
      }
      if (!comma) {
         break;
      }
      p = comma + 1;
   }
   bson_string_free(dec, true);
}

/* The query string "k=v&k=v" (';' also separates, as older URIs had it). */
static void
put_query(bson_string_t *out, const char *q)
{
   while (*q) {
      size_t n = strcspn(q, "&;");
      const char *eq = memchr(q, '=', n);
      if (!eq) {
         bson_string_append_printf(out, "%.*s", (int) n, q);
      } else {
         size_t klen = (size_t) (eq - q), vlen = n - klen - 1;
         bson_string_t *key = bson_string_new(NULL);
         put_decoded(key, q, klen);
         bson_string_append_printf(out, "%.*s=", (int) klen, q);
         if (strcasecmp(key->str, "authMechanismProperties") == 0) {
            put_mech_properties(out, eq + 1, vlen);
         } else if (secret_name(key->str, key->len)) {
            bson_string_append(out, ASPEN_REDACTED);
         } else {
            bson_string_append_printf(out, "%.*s", (int) vlen, eq + 1);
         }
         bson_string_free(key, true);
      }
      q += n;
      if (*q) {
         bson_string_append_c(out, *q++);
      }
   }
}

void
aspen_uri_redact(const char *uri, char *out, size_t size)
{
   const char *scheme = strstr(uri, "://");
   if (!scheme || size == 0) {
      snprintf(out, size, "%s", uri);
      return;
   }
   const char *auth = scheme + 3;
   /* The authority runs to the first '/' (libmongoc's rule; a password
    * may hold '?'); its last '@' ends the userinfo, so a password with a
    * stray '@' is hidden whole. */
   size_t alen = strcspn(auth, "/");
   const char *at = NULL;
   for (const char *p = auth; p < auth + alen; p++) {
      if (*p == '@') {
         at = p;
      }
   }
   bson_string_t *s = bson_string_new(NULL);
   bson_string_append_printf(s, "%.*s", (int) (auth - uri), uri);
   const char *rest = auth;
   if (at) {
      bson_string_append(s, ASPEN_REDACTED "@");
      rest = at + 1;
   }
   const char *q = strchr(rest, '?');
   if (q) {
      bson_string_append_printf(s, "%.*s", (int) (q + 1 - rest), rest);
      put_query(s, q + 1);
   } else {
      bson_string_append(s, rest);
   }
   snprintf(out, size, "%s", s->str);
   bson_string_free(s, true);
}
