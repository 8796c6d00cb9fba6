/*
 * config.c - aspen's settings: defaults, an Extended JSON config file read
 * with libbson, and command-line flags that override it. Every key is a row
 * in one table, so the file parser, the flag parser and getCmdLineOpts agree
 * on names and types. Unknown keys and wrong types are refused with the key's
 * dotted path, at start, before anything listens.
 *
 * Config file shape (every key optional):
 *   { "net": { "bindIp": "127.0.0.1", "port": 27017, "maxConnections": 1000,
 *              "maxMessageSizeBytes": 48000000,
 *              "outputHighWaterMarkBytes": 16777216,
 *              "idleTimeoutSecs": 0, "loadBalanced": false },
 *     "tls": { "mode": "disabled", "certificateFile": "...", "keyFile": "...",
 *              "CAFile": "..." },
 *     "backend": { "uri": "mongodb://...", "forwarding": "relay",
 *                  "lanes": 4 },
 *     "stateDir": "./aspen-state",
 *     "connections": [ { "name": "myConn", "type": "atlas",
 *                        "uri": "mongodb://..." } ],
 *     "log": { "level": "info" },
 *     "metrics": { "port": 9216 },
 *     "security": { "authorization": "auto", "usersFile": "...",
 *                   "roles": [ { "role": "...", "actions": [...] } ],
 *                   "auditLog": { "path": "..." } } }
 * (security.roles is checked by roles.c.)
 */
#include "proxy_int.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_STRING, T_INT, T_SIZE, T_TLS_MODE, T_LOG_LEVEL, T_BOOL } key_type_t;

typedef struct {
   const char *path; /* dotted path in the config file */
   const char *flag; /* command-line flag, or NULL */
   key_type_t type;
   size_t offset;    /* into aspen_config_t */
   long long min, max;
   const char *help;
} key_t_;

#define OFF(f) offsetof(aspen_config_t, f)

static const key_t_ keys[] = {
   {"net.bindIp", "--bind", T_STRING, OFF(bind), 0, 0,
    "address to listen on (default 127.0.0.1)"},
   {"net.port", "--port", T_INT, OFF(port), 0, 65535,
    "port to listen on (default 27017; 0 picks a free one)"},
   {"net.maxConnections", "--max-connections", T_INT, OFF(max_connections), 1,
    1000000, "most client connections open at once (default 1000)"},
   {"net.maxMessageSizeBytes", NULL, T_SIZE, OFF(max_message_size), 1024,
    ASPEN_WIRE_MAX_MESSAGE_LEN, "largest wire message accepted (48000000)"},
   {"net.outputHighWaterMarkBytes", NULL, T_SIZE, OFF(output_high_water),
    1024, 1LL << 31,
    "stop reading a connection while this much output is queued (16 MiB)"},
   {"net.idleTimeoutSecs", "--idle-timeout-secs", T_INT,
    OFF(idle_timeout_secs), 0, 7 * 24 * 3600,
    "close a connection that completes no request and takes no reply for "
    "this long (default 0: never, as mongod)"},
   {"net.loadBalanced", "--load-balanced", T_BOOL, OFF(load_balanced), 0, 0,
    "true: answer drivers connecting with loadBalanced=true as a mongos "
    "behind a load balancer does (serviceId; default false)"},
   {"metrics.port", "--metrics-port", T_INT, OFF(metrics_port), -1, 65535,
    "serve Prometheus metrics at http://<net.bindIp>:PORT/metrics (default "
    "-1: off; 0 picks a free port)"},
   {"tls.mode", "--tls-mode", T_TLS_MODE, OFF(tls_mode), 0, 0,
    "disabled | allowed | required (default disabled)"},
   {"tls.certificateFile", "--tls-cert", T_STRING, OFF(tls_cert), 0, 0,
    "server certificate chain (PEM)"},
   {"tls.keyFile", "--tls-key", T_STRING, OFF(tls_key), 0, 0,
    "server private key (PEM)"},
   {"tls.CAFile", "--tls-ca", T_STRING, OFF(tls_ca), 0, 0,
    "CA for client certificates (PEM)"},
   {"backend.uri", "--backend", T_STRING, OFF(backend_uri), 0, 0,
    "MongoDB URI of the backing deployment for forwarded commands"},
   {"backend.forwarding", "--backend-forwarding", T_STRING,
    OFF(backend_forwarding), 0, 0,
    "relay (default: aspen's own connections, on the event loop, when the "
    "URI allows) | lanes (mongoc on worker threads)"},
   {"backend.lanes", "--backend-lanes", T_INT, OFF(backend_lanes), 1, 64,
    "worker threads forwarding to the backend in lanes mode (default 4)"},
   {"stateDir", "--state-dir", T_STRING, OFF(state_dir), 0, 0,
    "directory for aspen's state (default ./aspen-state)"},
   {"streams.checkpointIntervalMs", "--checkpoint-interval-ms", T_INT,
    OFF(checkpoint_interval_ms), 10, 24 * 3600 * 1000,
    "how often running processors take a checkpoint (default 5000)"},
   {"streams.memoryLimitBytes", "--memory-limit-bytes", T_SIZE,
    OFF(memory_limit_bytes), 0, 1LL << 45,
    "state a processor may hold before it fails with 418 Worker out of "
    "memory (default 0: ASP's, 80% of its tier's RAM)"},
   {"streams.functionTimeLimitMillis", NULL, T_SIZE,
    OFF(function_time_limit_ms), 1, 3600 * 1000,
    "time one $function call may take before its document fails (default "
    "60000)"},
   {"streams.functionMemoryLimitBytes", NULL, T_SIZE,
    OFF(function_memory_limit_bytes), 1 << 20, 1LL << 34,
    "memory each $function's JavaScript heap may hold (default 64 MB)"},
   {"streams.maxProcessors", NULL, T_SIZE, OFF(max_processors), 1,
    1000000,
    "most stream processors at once, sp.process ones included (default "
    "10000)"},
   {"log.level", "--log-level", T_LOG_LEVEL, OFF(log_level), 0, 0,
    "error | warning | info | debug (default info)"},
   {"security.authorization", "--auth", T_STRING, OFF(auth_mode), 0, 0,
    "auto (on once a user exists) | enabled | disabled (default auto)"},
   {"security.usersFile", "--users-file", T_STRING, OFF(users_file), 0, 0,
    "users and their SCRAM keys (default <stateDir>/users.json)"},
   {"security.auditLog.path", "--audit-log", T_STRING, OFF(audit_log_path), 0,
    0, "audit log file, JSON lines (default: no audit log)"},
};

#define N_KEYS (sizeof keys / sizeof keys[0])

void
aspen_config_init(aspen_config_t *cfg)
{
   memset(cfg, 0, sizeof *cfg);
   cfg->bind = aspen_xstrdup("127.0.0.1");
   cfg->port = 27017;
   cfg->metrics_port = -1;
   cfg->backend_lanes = 4;
   cfg->tls_mode = ASPEN_TLS_DISABLED;
   cfg->max_connections = 1000;
   cfg->max_message_size = ASPEN_WIRE_MAX_MESSAGE_LEN;
   cfg->output_high_water = 16u * 1024u * 1024u;
   cfg->log_level = ASPEN_LOG_INFO;
   bson_init(&cfg->parsed);
   bson_init(&cfg->connections);
   bson_init(&cfg->roles);
}

void
aspen_config_cleanup(aspen_config_t *cfg)
{
   for (size_t i = 0; i < N_KEYS; i++) {
      if (keys[i].type == T_STRING) {
         char **p = (char **) ((char *) cfg + keys[i].offset);
         free(*p);
         *p = NULL;
      }
   }
   bson_destroy(&cfg->parsed);
   bson_destroy(&cfg->connections);
   bson_destroy(&cfg->roles);
}

static bool
parse_log_level(const char *s, aspen_log_level_t *out)
{
   static const char *const names[] = {"error", "warning", "info", "debug"};
   for (int i = 0; i < 4; i++) {
      if (strcmp(s, names[i]) == 0) {
         *out = (aspen_log_level_t) i;
         return true;
      }
   }
   return false;
}

/* Stores a string value for key `k`, converting by type. `where` names the
 * key for messages ("net.port" or "--port"). */
static bool
set_from_string(aspen_config_t *cfg, const key_t_ *k, const char *value,
                const char *where, aspen_error_t *err)
{
   void *field = (char *) cfg + k->offset;
   switch (k->type) {
   case T_STRING:
      free(*(char **) field);
      *(char **) field = aspen_xstrdup(value);
      return true;
   case T_INT:
   case T_SIZE: {
      char *end;
      errno = 0;
      long long v = strtoll(value, &end, 10);
      if (errno || *value == '\0' || *end != '\0') {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "%s must be an integer, not '%s'", where, value);
         return false;
      }
      if (v < k->min || v > k->max) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "%s must be between %lld and %lld, not %lld", where,
                         k->min, k->max, v);
         return false;
      }
      if (k->type == T_INT) {
         *(int *) field = (int) v;
      } else {
         *(size_t *) field = (size_t) v;
      }
      return true;
   }
   case T_TLS_MODE:
      if (!aspen_tls_mode_parse(value, (aspen_tls_mode_t *) field)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "%s must be one of disabled, allowed, required, not "
                         "'%s'",
                         where, value);
         return false;
      }
      return true;
   case T_BOOL:
      if (strcmp(value, "true") != 0 && strcmp(value, "false") != 0) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "%s must be true or false, not '%s'", where, value);
         return false;
      }
      *(bool *) field = strcmp(value, "true") == 0;
      return true;
   case T_LOG_LEVEL:
      if (!parse_log_level(value, (aspen_log_level_t *) field)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "%s must be one of error, warning, info, debug, not "
                         "'%s'",
                         where, value);
         return false;
      }
      return true;
   }
   return false;
}

static const key_t_ *
find_key(const char *path)
{
   for (size_t i = 0; i < N_KEYS; i++) {
      if (strcmp(keys[i].path, path) == 0) {
         return &keys[i];
      }
   }
   return NULL;
}

/* True when `path` is a section (a prefix of some key followed by '.'). */
static bool
is_section(const char *path)
{
   size_t n = strlen(path);
   for (size_t i = 0; i < N_KEYS; i++) {
      if (strncmp(keys[i].path, path, n) == 0 && keys[i].path[n] == '.') {
         return true;
      }
   }
   return false;
}

/* True when `d` is a whole number a long long holds. The range check comes
 * first: converting 2e40 or NaN to long long is undefined (found by
 * tests/fuzz/fuzz_config under UBSan). */
static bool
double_is_integer(double d)
{
   return d >= -9.2e18 && d <= 9.2e18 && d == (double) (long long) d;
}

static bool
load_doc(aspen_config_t *cfg, const bson_t *doc, const char *prefix,
         aspen_error_t *err)
{
   bson_iter_t it;
   if (!bson_iter_init(&it, doc)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse, "invalid config document");
      return false;
   }
   while (bson_iter_next(&it)) {
      char path[256];
      snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "",
               bson_iter_key(&it));
      /* The connection registry (checked entry by entry by the engine)
       * and the custom roles (checked by roles.c) are kept as arrays. */
      bson_t *array_key = strcmp(path, "connections") == 0 ? &cfg->connections
                          : strcmp(path, "security.roles") == 0 ? &cfg->roles
                                                                 : NULL;
      if (array_key) {
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s' must be an array", path);
            return false;
         }
         uint32_t len;
         const uint8_t *data;
         bson_t arr;
         bson_iter_array(&it, &len, &data);
         (void) bson_init_static(&arr, data, len);
         bson_destroy(array_key);
         bson_copy_to(&arr, array_key);
         continue;
      }
      if (is_section(path)) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s' must be an object", path);
            return false;
         }
         uint32_t len;
         const uint8_t *data;
         bson_t sub;
         bson_iter_document(&it, &len, &data);
         if (!bson_init_static(&sub, data, len) ||
             !load_doc(cfg, &sub, path, err)) {
            return false;
         }
         continue;
      }
      const key_t_ *k = find_key(path);
      if (!k) {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "unknown config key '%s'", path);
         return false;
      }
      char buf[64];
      const char *value = NULL;
      if (k->type == T_BOOL) {
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s' must be a boolean", path);
            return false;
         }
         value = bson_iter_bool(&it) ? "true" : "false";
      } else if (k->type == T_INT || k->type == T_SIZE) {
         if (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it)) {
            snprintf(buf, sizeof buf, "%lld",
                     (long long) bson_iter_as_int64(&it));
            value = buf;
         } else if (BSON_ITER_HOLDS_DOUBLE(&it) &&
                    double_is_integer(bson_iter_double(&it))) {
            snprintf(buf, sizeof buf, "%lld",
                     (long long) bson_iter_double(&it));
            value = buf;
         }
         if (!value) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s' must be an integer", path);
            return false;
         }
      } else {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s' must be a string", path);
            return false;
         }
         value = bson_iter_utf8(&it, NULL);
      }
      char where[300];
      snprintf(where, sizeof where, "config key '%s'", path);
      if (!set_from_string(cfg, k, value, where, err)) {
         return false;
      }
   }
   return true;
}

bool
aspen_config_load_file(aspen_config_t *cfg, const char *path,
                       aspen_error_t *err)
{
   bson_error_t berr;
   bson_t doc;
   FILE *f = fopen(path, "rb");
   if (!f) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot open config file %s: %s",
                      path, strerror(errno));
      return false;
   }
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   bool read_ok = aspen_buf_read_file(&buf, f, 16u * 1024u * 1024u);
   fclose(f);
   if (!read_ok) {
      aspen_buf_cleanup(&buf);
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot read config file %s (larger than 16 MiB, or "
                      "a read error)",
                      path);
      return false;
   }
   bool ok = bson_init_from_json(&doc, (const char *) aspen_buf_data(&buf),
                                 (ssize_t) aspen_buf_len(&buf), &berr);
   aspen_buf_cleanup(&buf);
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "config file %s is not valid (Extended) JSON: %s", path,
                      berr.message);
      return false;
   }
   ok = load_doc(cfg, &doc, "", err);
   bson_destroy(&doc);
   if (!ok) {
      char msg[ASPEN_ERROR_MSG_MAX + 1024];
      snprintf(msg, sizeof msg, "%s: %s", path, err->message);
      aspen_error_set(err, err->code, "%s", msg);
   }
   return ok;
}

static void
print_usage(void)
{
   printf("usage: aspen [--config FILE] [flags]\n\n"
          "A local emulator of MongoDB Atlas Stream Processing: a MongoDB\n"
          "wire-protocol proxy that runs stream processors and forwards every\n"
          "other command to a backing MongoDB deployment.\n\n"
          "  --config FILE          Extended JSON config file (flags win)\n");
   for (size_t i = 0; i < N_KEYS; i++) {
      if (keys[i].flag) {
         printf("  %-22s %s [%s]\n", keys[i].flag, keys[i].help, keys[i].path);
      }
   }
   printf("  --help, --version\n");
}

bool
aspen_config_parse_args(aspen_config_t *cfg, int argc, char **argv,
                        bool *exit_now, aspen_error_t *err)
{
   *exit_now = false;
   cfg->argc = argc;
   cfg->argv = argv;
   for (int i = 1; i < argc; i++) {
      const char *arg = argv[i];
      if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
         print_usage();
         *exit_now = true;
         return true;
      }
      if (strcmp(arg, "--version") == 0) {
         printf("aspen %s (MongoDB wire version %d, server version %s)\n",
                ASPEN_VERSION, ASPEN_MAX_WIRE_VERSION, ASPEN_SERVER_VERSION);
         *exit_now = true;
         return true;
      }
      char name[64];
      const char *value = NULL;
      const char *eq = strchr(arg, '=');
      if (eq && (size_t) (eq - arg) < sizeof name) {
         memcpy(name, arg, (size_t) (eq - arg));
         name[eq - arg] = '\0';
         value = eq + 1;
      } else {
         snprintf(name, sizeof name, "%s", arg);
      }
      if (!value) {
         if (i + 1 >= argc) {
            aspen_error_set(err, ASPEN_ERR_BadValue, "%s needs a value", name);
            return false;
         }
         value = argv[++i];
      }
      if (strcmp(name, "--config") == 0) {
         continue; /* applied by main before the flags */
      }
      const key_t_ *k = NULL;
      for (size_t j = 0; j < N_KEYS; j++) {
         if (keys[j].flag && strcmp(keys[j].flag, name) == 0) {
            k = &keys[j];
         }
      }
      if (!k) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "unknown option '%s' (see aspen --help)", name);
         return false;
      }
      if (!set_from_string(cfg, k, value, name, err)) {
         return false;
      }
   }
   return true;
}

void
aspen_config_finish(aspen_config_t *cfg)
{
   if (!cfg->state_dir) {
      cfg->state_dir = aspen_xstrdup("./aspen-state");
   }
   bson_reinit(&cfg->parsed);
   bson_t net, tls, backend, log, security;
   BSON_APPEND_DOCUMENT_BEGIN(&cfg->parsed, "net", &net);
   BSON_APPEND_UTF8(&net, "bindIp", cfg->bind);
   BSON_APPEND_INT32(&net, "port", cfg->port);
   BSON_APPEND_INT32(&net, "maxConnections", cfg->max_connections);
   BSON_APPEND_INT64(&net, "maxMessageSizeBytes",
                     (int64_t) cfg->max_message_size);
   BSON_APPEND_INT64(&net, "outputHighWaterMarkBytes",
                     (int64_t) cfg->output_high_water);
   BSON_APPEND_INT32(&net, "idleTimeoutSecs", cfg->idle_timeout_secs);
   BSON_APPEND_BOOL(&net, "loadBalanced", cfg->load_balanced);
   bson_append_document_end(&cfg->parsed, &net);
   if (cfg->metrics_port >= 0) {
      bson_t metrics;
      BSON_APPEND_DOCUMENT_BEGIN(&cfg->parsed, "metrics", &metrics);
      BSON_APPEND_INT32(&metrics, "port", cfg->metrics_port);
      bson_append_document_end(&cfg->parsed, &metrics);
   }
   BSON_APPEND_DOCUMENT_BEGIN(&cfg->parsed, "tls", &tls);
   BSON_APPEND_UTF8(&tls, "mode", aspen_tls_mode_name(cfg->tls_mode));
   if (cfg->tls_cert) {
      BSON_APPEND_UTF8(&tls, "certificateFile", cfg->tls_cert);
   }
   if (cfg->tls_key) {
      BSON_APPEND_UTF8(&tls, "keyFile", cfg->tls_key);
   }
   if (cfg->tls_ca) {
      BSON_APPEND_UTF8(&tls, "CAFile", cfg->tls_ca);
   }
   bson_append_document_end(&cfg->parsed, &tls);
   BSON_APPEND_DOCUMENT_BEGIN(&cfg->parsed, "backend", &backend);
   if (cfg->backend_uri) {
      char red[1024];
      aspen_uri_redact(cfg->backend_uri, red, sizeof red);
      BSON_APPEND_UTF8(&backend, "uri", red);
   }
   BSON_APPEND_UTF8(&backend, "forwarding",
                    cfg->backend_forwarding ? cfg->backend_forwarding
                                            : "relay");
   BSON_APPEND_INT32(&backend, "lanes", cfg->backend_lanes);
   bson_append_document_end(&cfg->parsed, &backend);
   BSON_APPEND_UTF8(&cfg->parsed, "stateDir", cfg->state_dir);
   BSON_APPEND_DOCUMENT_BEGIN(&cfg->parsed, "log", &log);
   static const char *const names[] = {"error", "warning", "info", "debug"};
   BSON_APPEND_UTF8(&log, "level", names[cfg->log_level]);
   bson_append_document_end(&cfg->parsed, &log);
   BSON_APPEND_DOCUMENT_BEGIN(&cfg->parsed, "security", &security);
   BSON_APPEND_UTF8(&security, "authorization",
                    cfg->auth_mode ? cfg->auth_mode : "auto");
   if (cfg->users_file) {
      BSON_APPEND_UTF8(&security, "usersFile", cfg->users_file);
   }
   BSON_APPEND_ARRAY(&security, "roles", &cfg->roles);
   if (cfg->audit_log_path) {
      bson_t audit;
      BSON_APPEND_DOCUMENT_BEGIN(&security, "auditLog", &audit);
      BSON_APPEND_UTF8(&audit, "path", cfg->audit_log_path);
      bson_append_document_end(&security, &audit);
   }
   bson_append_document_end(&cfg->parsed, &security);
}

void
aspen_config_append_argv(const aspen_config_t *cfg, bson_t *arr)
{
   bool secret_next = false;
   for (int i = 0; i < cfg->argc; i++) {
      const char *arg = cfg->argv[i];
      char red[4096], buf[16];
      const char *key;
      const char *eq = strchr(arg, '=');
      bool flag = strncmp(arg, "--", 2) == 0;
      char name[64] = "";
      if (flag) {
         size_t n = eq ? (size_t) (eq - arg) : strlen(arg);
         snprintf(name, sizeof name, "%.*s", (int) n, arg);
      }
      if (secret_next && !flag) {
         snprintf(red, sizeof red, "%s", ASPEN_REDACTED);
      } else if (flag && eq && aspen_secret_name(name + 2)) {
         snprintf(red, sizeof red, "%s=%s", name, ASPEN_REDACTED);
      } else {
         aspen_uri_redact(arg, red, sizeof red);
      }
      secret_next = flag && !eq && aspen_secret_name(name + 2);
      bson_uint32_to_string((uint32_t) i, &key, buf, sizeof buf);
      BSON_APPEND_UTF8(arr, key, red);
   }
}
