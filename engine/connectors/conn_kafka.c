/*
 * conn_kafka.c - the Kafka connection kind: its config entry ({name, type:
 * "kafka", bootstrapServers, security, config} or, for a broker aspen
 * hosts itself, "local": true), read into the librdkafka properties its
 * clients get (kafka.c builds their configuration from them) and what
 * listings show: everything but the secrets (no password, and secret
 * config properties as <redacted>; wire/redact.c decides what is one).
 */
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* What a Kafka connection holds (aspen_conn_t.opts of its kind). */
typedef struct {
   /* librdkafka properties (name -> string) from bootstrapServers,
    * security and config; holds secrets, so never listed or logged. */
   bson_t *conf;
   bson_t *listed; /* its fields of the listing */
   /* With "local": true, the broker aspen hosts for it (kafka.c), owned
    * by the connection. NULL otherwise. */
   aspen_kafka_local_t *local;
} aspen_conn_kafka_t;

static bool
one_of(const char *v, const char *const *allowed)
{
   for (; *allowed; allowed++) {
      if (strcmp(v, *allowed) == 0) {
         return true;
      }
   }
   return false;
}

/* Reads a kafka connection's bootstrapServers, security {protocol,
 * mechanism, username, password, caFile} and config {librdkafka property:
 * string | number | bool} into kc->conf (what the client gets) and
 * kc->listed (what listings show: everything but the secrets). With `local`
 * it starts the broker aspen hosts for the connection (named `name`)
 * instead, and its address is the bootstrapServers. */
static bool
kafka_settings(aspen_conn_kafka_t *kc, const char *name, const bson_t *c,
               bool local, const char *where, aspen_error_t *err)
{
   static const char *const protocols[] = {"PLAINTEXT", "SSL",
                                           "SASL_PLAINTEXT", "SASL_SSL",
                                           NULL};
   static const char *const mechanisms[] = {"PLAIN", "SCRAM-SHA-256",
                                            "SCRAM-SHA-512", NULL};
   bson_iter_t it;
   const char *bootstrap;
   if (local) {
      /* The mock broker speaks PLAINTEXT only, so security has no use. */
      if (bson_has_field(c, "bootstrapServers") ||
          bson_has_field(c, "security")) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.local': a local broker has no "
                         "bootstrapServers or security (it is PLAINTEXT on "
                         "127.0.0.1, at an address aspen picks)",
                         where);
         return false;
      }
      kc->local = aspen__kafka_local_new(name, err);
      if (!kc->local) {
         return false;
      }
      bootstrap = aspen__kafka_local_bootstrap(kc->local);
   } else if (!bson_iter_init_find(&it, c, "bootstrapServers") ||
              !*bson_iter_utf8(&it, NULL)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.bootstrapServers' is required for a "
                      "kafka connection (or \"local\": true for a broker "
                      "aspen hosts)",
                      where);
      return false;
   } else {
      bootstrap = bson_iter_utf8(&it, NULL);
   }
   BSON_APPEND_UTF8(kc->conf, "bootstrap.servers", bootstrap);
   BSON_APPEND_UTF8(kc->listed, "bootstrapServers", bootstrap);
   if (local) {
      BSON_APPEND_BOOL(kc->listed, "local", true);
   }

   if (bson_iter_init_find(&it, c, "security")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.security' must be an object", where);
         return false;
      }
      const char *protocol = NULL, *mechanism = NULL, *user = NULL,
                 *password = NULL, *ca = NULL;
      bson_iter_t si;
      bson_iter_recurse(&it, &si);
      while (bson_iter_next(&si)) {
         const char *k = bson_iter_key(&si);
         const char **slot = strcmp(k, "protocol") == 0    ? &protocol
                             : strcmp(k, "mechanism") == 0 ? &mechanism
                             : strcmp(k, "username") == 0  ? &user
                             : strcmp(k, "password") == 0  ? &password
                             : strcmp(k, "caFile") == 0    ? &ca
                                                           : NULL;
         if (!slot) {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.security.%s'", where, k);
            return false;
         }
         if (!BSON_ITER_HOLDS_UTF8(&si)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s.security.%s' must be a string",
                            where, k);
            return false;
         }
         *slot = bson_iter_utf8(&si, NULL);
      }
      if (protocol && !one_of(protocol, protocols)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security.protocol' must be "
                         "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, not "
                         "'%s'",
                         where, protocol);
         return false;
      }
      if (mechanism && !one_of(mechanism, mechanisms)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security.mechanism' must be PLAIN, "
                         "SCRAM-SHA-256 or SCRAM-SHA-512, not '%s'",
                         where, mechanism);
         return false;
      }
      bool sasl = protocol && strncmp(protocol, "SASL_", 5) == 0;
      if (sasl && (!mechanism || !user || !password)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security': protocol %s needs "
                         "mechanism, username and password",
                         where, protocol);
         return false;
      }
      if (!sasl && (mechanism || user || password)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security': mechanism, username and "
                         "password need protocol SASL_PLAINTEXT or SASL_SSL",
                         where);
         return false;
      }
      bson_t listed;
      BSON_APPEND_DOCUMENT_BEGIN(kc->listed, "security", &listed);
      if (protocol) {
         BSON_APPEND_UTF8(kc->conf, "security.protocol", protocol);
         BSON_APPEND_UTF8(&listed, "protocol", protocol);
      }
      if (mechanism) {
         BSON_APPEND_UTF8(kc->conf, "sasl.mechanism", mechanism);
         BSON_APPEND_UTF8(&listed, "mechanism", mechanism);
      }
      if (user) {
         BSON_APPEND_UTF8(kc->conf, "sasl.username", user);
         BSON_APPEND_UTF8(&listed, "username", user);
      }
      if (password) {
         BSON_APPEND_UTF8(kc->conf, "sasl.password", password);
      }
      if (ca) {
         BSON_APPEND_UTF8(kc->conf, "ssl.ca.location", ca);
         BSON_APPEND_UTF8(&listed, "caFile", ca);
      }
      bson_append_document_end(kc->listed, &listed);
   }

   if (bson_iter_init_find(&it, c, "config")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.config' must be an object", where);
         return false;
      }
      bson_t listed;
      bson_iter_t ci;
      BSON_APPEND_DOCUMENT_BEGIN(kc->listed, "config", &listed);
      bson_iter_recurse(&it, &ci);
      while (bson_iter_next(&ci)) {
         const char *k = bson_iter_key(&ci);
         char num[64];
         const char *v = NULL;
         if (BSON_ITER_HOLDS_UTF8(&ci)) {
            v = bson_iter_utf8(&ci, NULL);
         } else if (BSON_ITER_HOLDS_BOOL(&ci)) {
            v = bson_iter_bool(&ci) ? "true" : "false";
         } else if (BSON_ITER_HOLDS_INT32(&ci) || BSON_ITER_HOLDS_INT64(&ci)) {
            snprintf(num, sizeof num, "%" PRId64, bson_iter_as_int64(&ci));
            v = num;
         } else if (BSON_ITER_HOLDS_DOUBLE(&ci)) {
            snprintf(num, sizeof num, "%.17g", bson_iter_double(&ci));
            v = num;
         }
         if (!v) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s.config.%s' must be a string, a "
                            "number or a boolean",
                            where, k);
            bson_append_document_end(kc->listed, &listed);
            return false;
         }
         bson_iter_t dup;
         if (bson_iter_init_find(&dup, kc->conf, k)) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "config key '%s.config.%s' is already set by "
                            "bootstrapServers or security",
                            where, k);
            bson_append_document_end(kc->listed, &listed);
            return false;
         }
         BSON_APPEND_UTF8(kc->conf, k, v);
         /* A secret property is given to the client, and listed only as
          * set. */
         if (aspen_secret_name(k)) {
            BSON_APPEND_UTF8(&listed, k, ASPEN_REDACTED);
         } else {
            bson_append_iter(&listed, k, -1, &ci);
         }
      }
      bson_append_document_end(kc->listed, &listed);
   }
   return true;
}

static void
kafka_destroy(void *opts)
{
   aspen_conn_kafka_t *k = opts;
   if (!k) {
      return;
   }
   bson_destroy(k->conf);
   bson_destroy(k->listed);
   aspen__kafka_local_destroy(k->local);
   free(k);
}

static bool
kafka_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
            aspen_error_t *err)
{
   *opts = NULL;
   bson_iter_t it;
   bool local = false;
   if (bson_iter_init_find(&it, entry, "local")) {
      if (!BSON_ITER_HOLDS_BOOL(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.local' must be a boolean",
                         cfg->where);
         return false;
      }
      local = bson_iter_bool(&it);
   }
   if (bson_iter_init_find(&it, entry, "bootstrapServers") &&
       !BSON_ITER_HOLDS_UTF8(&it)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "config key '%s.bootstrapServers' must be a string",
                      cfg->where);
      return false;
   }
   aspen_conn_kafka_t *k = aspen_xcalloc(1, sizeof *k);
   k->conf = bson_new();
   k->listed = bson_new();
   if (!kafka_settings(k, cfg->name, entry, local, cfg->where, err)) {
      kafka_destroy(k);
      return false;
   }
   *opts = k;
   return true;
}

static void
kafka_list(const void *opts, bson_t *doc)
{
   const aspen_conn_kafka_t *k = opts;
   bson_concat(doc, k->listed);
}

static const char *const kafka_keys[] = {"bootstrapServers", "security",
                                         "config", "local", NULL};

const aspen_conn_ops_t aspen_conn_kafka_ops = {
   .keys = kafka_keys,
   .parse = kafka_parse,
   .list = kafka_list,
   .destroy = kafka_destroy,
};

/* The Kafka side of `conn`, or NULL. */
static const aspen_conn_kafka_t *
kafka_of(const aspen_conn_t *conn)
{
   return conn->kind->conn == &aspen_conn_kafka_ops ? conn->opts : NULL;
}

const bson_t *
aspen__conn_kafka_conf(const aspen_conn_t *conn)
{
   const aspen_conn_kafka_t *k = kafka_of(conn);
   return k ? k->conf : NULL;
}

rd_kafka_conf_t *
aspen__conn_kafka_client_conf(const aspen_conn_t *conn,
                              aspen_kafka_client_hdr_t *hdr,
                              aspen_error_t *err)
{
   const aspen_conn_kafka_t *k = kafka_of(conn);
   if (!k) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "connection '%s' is not a Kafka connection",
                      conn->name);
      return NULL;
   }
   return aspen__kafka_conf_new(conn->name, k->conf, hdr, err);
}

aspen_kafka_local_t *
aspen__conn_kafka_local(const aspen_conn_t *conn)
{
   const aspen_conn_kafka_t *k = kafka_of(conn);
   return k ? k->local : NULL;
}
