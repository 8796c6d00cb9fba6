/*
 * conn_https.c - the https connection kind: {name, type: "https", url,
 * headers, auth, tlsCAFile}. ASP's HTTPS connection (https-connection in
 * ASP's docs) is a URL plus headers, where its docs say credentials such as
 * an API key or a bearer token belong (so they are not written in the
 * pipeline); other schemes (digest, OAuth) are not supported there either.
 * aspen adds `auth` ({bearerToken} or {username, password}: an
 * Authorization header), `tlsCAFile` (a local server's CA, e.g. the dev
 * CA of certs/) and `maxInFlight` (how many requests a $https stage keeps
 * in flight on it). Listings show the URL (credentials redacted), the header
 * names and the auth kind, never a value.
 */
#include "connectors/conn_https.h"
#include "connectors/connectors.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

static void
https_destroy(void *opts)
{
   aspen_conn_https_t *h = opts;
   if (!h) {
      return;
   }
   for (size_t i = 0; i < h->n_headers; i++) {
      free(h->headers[i]);
   }
   free(h->headers);
   free(h->url);
   free(h->ca_file);
   bson_destroy(&h->listed);
   free(h);
}

static void
add_header(aspen_conn_https_t *h, const char *name, const char *value)
{
   size_t n = strlen(name) + strlen(value) + 3;
   char *line = aspen_xmalloc(n);
   snprintf(line, n, "%s: %s", name, value);
   h->headers =
      aspen_xrealloc(h->headers, (h->n_headers + 1) * sizeof *h->headers);
   h->headers[h->n_headers++] = line;
}

/* A header name is an RFC 9110 token; a value has no CR, LF or NUL. */
static bool
header_ok(const char *name, const char *value)
{
   if (!*name) {
      return false;
   }
   for (const char *p = name; *p; p++) {
      if (!strchr("!#$%&'*+-.^_`|~", *p) &&
          !((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
            (*p >= 'A' && *p <= 'Z'))) {
         return false;
      }
   }
   return strpbrk(value, "\r\n") == NULL;
}

static bool
parse_auth(aspen_conn_https_t *h, const bson_iter_t *it, const char *where,
           aspen_error_t *err)
{
   const char *bearer = NULL, *user = NULL, *password = NULL;
   bson_iter_t ai;
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "config key '%s.auth' must be an object", where);
      return false;
   }
   bson_iter_recurse(it, &ai);
   while (bson_iter_next(&ai)) {
      const char *k = bson_iter_key(&ai);
      const char **slot = strcmp(k, "bearerToken") == 0 ? &bearer
                          : strcmp(k, "username") == 0  ? &user
                          : strcmp(k, "password") == 0  ? &password
                                                        : NULL;
      if (!slot) {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "unknown config key '%s.auth.%s'", where, k);
         return false;
      }
      if (!BSON_ITER_HOLDS_UTF8(&ai) || strpbrk(bson_iter_utf8(&ai, NULL),
                                                "\r\n")) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.auth.%s' must be a string on one "
                         "line",
                         where, k);
         return false;
      }
      *slot = bson_iter_utf8(&ai, NULL);
   }
   if (bearer && !user && !password) {
      size_t n = strlen(bearer) + 8;
      char *v = aspen_xmalloc(n);
      snprintf(v, n, "Bearer %s", bearer);
      add_header(h, "Authorization", v);
      free(v);
      BSON_APPEND_UTF8(&h->listed, "auth", "bearer");
      return true;
   }
   if (!bearer && user && password) {
      size_t n = strlen(user) + strlen(password) + 2;
      char *plain = aspen_xmalloc(n);
      snprintf(plain, n, "%s:%s", user, password);
      size_t enc_len = 4 * ((n - 1 + 2) / 3) + 1;
      char *v = aspen_xmalloc(enc_len + 6);
      memcpy(v, "Basic ", 6);
      EVP_EncodeBlock((unsigned char *) v + 6, (unsigned char *) plain,
                      (int) (n - 1));
      add_header(h, "Authorization", v);
      free(v);
      free(plain);
      BSON_APPEND_UTF8(&h->listed, "auth", "basic");
      return true;
   }
   aspen_error_set(err, ASPEN_ERR_BadValue,
                   "config key '%s.auth' must be {bearerToken} or "
                   "{username, password}",
                   where);
   return false;
}

static bool
https_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
            aspen_error_t *err)
{
   aspen_conn_https_t *h = aspen_xcalloc(1, sizeof *h);
   bson_init(&h->listed);
   bson_iter_t it;
   *opts = NULL;
   if (!bson_iter_init_find(&it, entry, "url") || !BSON_ITER_HOLDS_UTF8(&it) ||
       (strncmp(bson_iter_utf8(&it, NULL), "https://", 8) != 0 &&
        strncmp(bson_iter_utf8(&it, NULL), "http://", 7) != 0)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.url' is required for an https "
                      "connection: a string starting with https:// (or "
                      "http://)",
                      cfg->where);
      goto fail;
   }
   h->url = aspen_xstrdup(bson_iter_utf8(&it, NULL));
   char redacted[1024];
   aspen_uri_redact(h->url, redacted, sizeof redacted);
   BSON_APPEND_UTF8(&h->listed, "url", redacted);
   if (bson_iter_init_find(&it, entry, "headers")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.headers' must be an object",
                         cfg->where);
         goto fail;
      }
      bson_iter_t hi;
      bson_t names;
      int i = 0;
      BSON_APPEND_ARRAY_BEGIN(&h->listed, "headers", &names);
      bson_iter_recurse(&it, &hi);
      while (bson_iter_next(&hi)) {
         const char *k = bson_iter_key(&hi);
         if (!BSON_ITER_HOLDS_UTF8(&hi) ||
             !header_ok(k, bson_iter_utf8(&hi, NULL))) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "config key '%s.headers.%s' must be a valid "
                            "HTTP header: a token name and a string value "
                            "on one line",
                            cfg->where, k);
            bson_append_array_end(&h->listed, &names);
            goto fail;
         }
         char idx[16];
         const char *key;
         bson_uint32_to_string((uint32_t) i++, &key, idx, sizeof idx);
         bson_append_utf8(&names, key, -1, k, -1);
         add_header(h, k, bson_iter_utf8(&hi, NULL));
      }
      bson_append_array_end(&h->listed, &names);
   }
   if (bson_iter_init_find(&it, entry, "auth") &&
       !parse_auth(h, &it, cfg->where, err)) {
      goto fail;
   }
   if (bson_iter_init_find(&it, entry, "tlsCAFile")) {
      if (!BSON_ITER_HOLDS_UTF8(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.tlsCAFile' must be a string",
                         cfg->where);
         goto fail;
      }
      h->ca_file = aspen_xstrdup(bson_iter_utf8(&it, NULL));
      BSON_APPEND_UTF8(&h->listed, "tlsCAFile", h->ca_file);
   }
   h->max_in_flight = 16;
   if (bson_iter_init_find(&it, entry, "maxInFlight")) {
      if (!BSON_ITER_HOLDS_INT32(&it) || bson_iter_int32(&it) < 1 ||
          bson_iter_int32(&it) > 1024) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.maxInFlight' must be an integer "
                         "from 1 to 1024",
                         cfg->where);
         goto fail;
      }
      h->max_in_flight = bson_iter_int32(&it);
   }
   BSON_APPEND_INT32(&h->listed, "maxInFlight", h->max_in_flight);
   *opts = h;
   return true;

fail:
   https_destroy(h);
   return false;
}

static void
https_list(const void *opts, bson_t *doc)
{
   const aspen_conn_https_t *h = opts;
   if (h) {
      bson_concat(doc, &h->listed);
   }
}

static const char *const https_keys[] = {"url",       "headers",
                                         "auth",      "tlsCAFile",
                                         "maxInFlight", NULL};

const aspen_conn_ops_t aspen_conn_https_ops = {
   .keys = https_keys,
   .parse = https_parse,
   .list = https_list,
   .destroy = https_destroy,
};

const aspen_conn_https_t *
aspen__conn_https(const aspen_conn_t *conn)
{
   return conn->kind->conn == &aspen_conn_https_ops ? conn->opts : NULL;
}
