/*
 * cmd_hello.c - the commands aspen answers itself while a driver connects
 * and mongosh draws its prompt: hello/isMaster, buildInfo, ping,
 * getParameter, atlasVersion, getCmdLineOpts, getLog,
 * hostInfo, whatsmyuri, serverStatus, endSessions, refreshSessions and
 * listWorkspaceDefaults. Replies are shaped like mongod's (see
 * ../shared/spec/mongosh-sp-contract.md §3-4); hello itself is answered by
 * topology.c, standalone-style or mongos-style after the backing
 * deployment. No compression is offered.
 */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* What hello says, and when, is topology.c's business: the topology aspen
 * presents depends on the backing deployment. */
aspen_handled_t
aspen_cmd_hello(aspen_request_t *req, bson_t *reply)
{
   return aspen_topology_hello(req, reply);
}

aspen_handled_t
aspen_cmd_build_info(aspen_request_t *req, bson_t *reply)
{
   (void) req;
   bson_t arr, env, ssl, aspen;
   BSON_APPEND_UTF8(reply, "version", ASPEN_SERVER_VERSION);
   BSON_APPEND_UTF8(reply, "gitVersion", "aspen-" ASPEN_VERSION);
   BSON_APPEND_ARRAY_BEGIN(reply, "versionArray", &arr);
   BSON_APPEND_INT32(&arr, "0", 7);
   BSON_APPEND_INT32(&arr, "1", 0);
   BSON_APPEND_INT32(&arr, "2", 0);
   BSON_APPEND_INT32(&arr, "3", 0);
   bson_append_array_end(reply, &arr);
   BSON_APPEND_ARRAY_BEGIN(reply, "modules", &arr);
   bson_append_array_end(reply, &arr);
   BSON_APPEND_UTF8(reply, "allocator", "system");
   BSON_APPEND_UTF8(reply, "javascriptEngine", "none");
   BSON_APPEND_UTF8(reply, "sysInfo", "deprecated");
   BSON_APPEND_DOCUMENT_BEGIN(reply, "openssl", &ssl);
   BSON_APPEND_UTF8(&ssl, "running", OpenSSL_version(OPENSSL_VERSION));
   BSON_APPEND_UTF8(&ssl, "compiled", OPENSSL_VERSION_TEXT);
   bson_append_document_end(reply, &ssl);
   BSON_APPEND_DOCUMENT_BEGIN(reply, "buildEnvironment", &env);
   BSON_APPEND_UTF8(&env, "target_os", "linux");
#if defined(__x86_64__)
   BSON_APPEND_UTF8(&env, "target_arch", "x86_64");
#elif defined(__aarch64__)
   BSON_APPEND_UTF8(&env, "target_arch", "aarch64");
#else
   BSON_APPEND_UTF8(&env, "target_arch", "unknown");
#endif
   bson_append_document_end(reply, &env);
   BSON_APPEND_INT32(reply, "bits", (int32_t) (sizeof(void *) * 8));
   BSON_APPEND_BOOL(reply, "debug", false);
   BSON_APPEND_INT32(reply, "maxBsonObjectSize", ASPEN_WIRE_MAX_BSON_LEN);
   BSON_APPEND_ARRAY_BEGIN(reply, "storageEngines", &arr);
   bson_append_array_end(reply, &arr);
   BSON_APPEND_DOCUMENT_BEGIN(reply, "aspen", &aspen);
   BSON_APPEND_UTF8(&aspen, "version", ASPEN_VERSION);
   bson_append_document_end(reply, &aspen);
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_ping(aspen_request_t *req, bson_t *reply)
{
   (void) req;
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

/* getParameter: the parameters drivers and mongosh ask for. {getParameter:
 * "*"} lists them all; an unknown name is mongod's "no option found". */
aspen_handled_t
aspen_cmd_get_parameter(aspen_request_t *req, bson_t *reply)
{
   bson_iter_t it;
   bool all = false;
   if (bson_iter_init_find(&it, req->cmd, "getParameter") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      if (strcmp(bson_iter_utf8(&it, NULL), "*") == 0) {
         all = true;
      } else {
         aspen_reply_error(reply, ASPEN_ERR_InvalidOptions,
                           "no option found to get");
         return ASPEN_HANDLED_REPLY;
      }
   }
   bool found = false;
   bson_iter_init(&it, req->cmd);
   bson_iter_next(&it); /* the command name */
   bool want_fcv = all, want_api = all;
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (k[0] == '$' || strcmp(k, "lsid") == 0 ||
          strcmp(k, "comment") == 0) {
         continue;
      }
      if (strcmp(k, "featureCompatibilityVersion") == 0) {
         want_fcv = true;
      } else if (strcmp(k, "requireApiVersion") == 0) {
         want_api = true;
      } else {
         aspen_reply_error(reply, ASPEN_ERR_InvalidOptions,
                           "no option found to get");
         return ASPEN_HANDLED_REPLY;
      }
   }
   if (want_fcv) {
      bson_t fcv;
      BSON_APPEND_DOCUMENT_BEGIN(reply, "featureCompatibilityVersion", &fcv);
      BSON_APPEND_UTF8(&fcv, "version", "7.0");
      bson_append_document_end(reply, &fcv);
      found = true;
   }
   if (want_api) {
      BSON_APPEND_BOOL(reply, "requireApiVersion", false);
      found = true;
   }
   if (!found) {
      aspen_reply_error(reply, ASPEN_ERR_InvalidOptions,
                        "no option found to get");
      return ASPEN_HANDLED_REPLY;
   }
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

/* aspen is not an Atlas cluster; answering as mongod does keeps mongosh's
 * prompt plain. */
aspen_handled_t
aspen_cmd_atlas_version(aspen_request_t *req, bson_t *reply)
{
   aspen_reply_error(reply, ASPEN_ERR_CommandNotFound,
                     "no such command: '%s'", req->name);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_get_cmd_line_opts(aspen_request_t *req, bson_t *reply)
{
   aspen_config_t *cfg = req->srv->cfg;
   bson_t arr;
   BSON_APPEND_ARRAY_BEGIN(reply, "argv", &arr);
   aspen_config_append_argv(cfg, &arr);
   bson_append_array_end(reply, &arr);
   BSON_APPEND_DOCUMENT(reply, "parsed", &cfg->parsed);
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_get_log(aspen_request_t *req, bson_t *reply)
{
   bson_iter_t it;
   const char *which = NULL;
   if (bson_iter_init_find(&it, req->cmd, "getLog") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      which = bson_iter_utf8(&it, NULL);
   }
   if (!which) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "Argument to getLog must be of type String");
      return ASPEN_HANDLED_REPLY;
   }
   bson_t arr;
   if (strcmp(which, "*") == 0) {
      BSON_APPEND_ARRAY_BEGIN(reply, "names", &arr);
      BSON_APPEND_UTF8(&arr, "0", "global");
      BSON_APPEND_UTF8(&arr, "1", "startupWarnings");
      bson_append_array_end(reply, &arr);
   } else if (strcmp(which, "startupWarnings") == 0) {
      /* aspen has no startup warnings. */
      BSON_APPEND_INT32(reply, "totalLinesWritten", 0);
      BSON_APPEND_ARRAY_BEGIN(reply, "log", &arr);
      bson_append_array_end(reply, &arr);
   } else if (strcmp(which, "global") == 0) {
      char **lines;
      uint64_t total;
      size_t n = aspen_log_recent(&lines, 1024, &total);
      BSON_APPEND_INT64(reply, "totalLinesWritten", (int64_t) total);
      BSON_APPEND_ARRAY_BEGIN(reply, "log", &arr);
      for (size_t i = 0; i < n; i++) {
         char buf[16];
         const char *key;
         bson_uint32_to_string((uint32_t) i, &key, buf, sizeof buf);
         BSON_APPEND_UTF8(&arr, key, lines[i]);
      }
      bson_append_array_end(reply, &arr);
      aspen_log_recent_free(lines, n);
   } else {
      aspen_reply_error(reply, ASPEN_ERR_InvalidOptions,
                        "No log named '%s'", which);
      return ASPEN_HANDLED_REPLY;
   }
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_host_info(aspen_request_t *req, bson_t *reply)
{
   (void) req;
   bson_t sys, os, extra;
   struct utsname u;
   char host[256] = "localhost";
   memset(&u, 0, sizeof u);
   uname(&u);
   gethostname(host, sizeof host - 1);
   long pages = sysconf(_SC_PHYS_PAGES);
   long page_size = sysconf(_SC_PAGESIZE);
   long cores = sysconf(_SC_NPROCESSORS_ONLN);
   BSON_APPEND_DOCUMENT_BEGIN(reply, "system", &sys);
   BSON_APPEND_DATE_TIME(&sys, "currentTime", aspen_clock_now_ms());
   BSON_APPEND_UTF8(&sys, "hostname", host);
   BSON_APPEND_INT32(&sys, "cpuAddrSize", (int32_t) (sizeof(void *) * 8));
   BSON_APPEND_INT64(&sys, "memSizeMB",
                     (int64_t) pages * page_size / (1024 * 1024));
   BSON_APPEND_INT32(&sys, "numCores", (int32_t) cores);
   BSON_APPEND_UTF8(&sys, "cpuArch", u.machine);
   BSON_APPEND_BOOL(&sys, "numaEnabled", false);
   bson_append_document_end(reply, &sys);
   BSON_APPEND_DOCUMENT_BEGIN(reply, "os", &os);
   BSON_APPEND_UTF8(&os, "type", u.sysname);
   BSON_APPEND_UTF8(&os, "name", u.sysname);
   BSON_APPEND_UTF8(&os, "version", u.release);
   bson_append_document_end(reply, &os);
   BSON_APPEND_DOCUMENT_BEGIN(reply, "extra", &extra);
   BSON_APPEND_UTF8(&extra, "versionString", u.version);
   BSON_APPEND_INT64(&extra, "pageSize", (int64_t) page_size);
   bson_append_document_end(reply, &extra);
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_whatsmyuri(aspen_request_t *req, bson_t *reply)
{
   BSON_APPEND_UTF8(reply, "you", aspen_session_peer(req->sess));
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_server_status(aspen_request_t *req, bson_t *reply)
{
   aspen_server_t *srv = req->srv;
   char host[256] = "localhost";
   bson_t conns;
   uint64_t now = aspen_clock_now_ms();
   gethostname(host, sizeof host - 1);
   BSON_APPEND_UTF8(reply, "host", host);
   BSON_APPEND_UTF8(reply, "version", ASPEN_SERVER_VERSION);
   BSON_APPEND_UTF8(reply, "process", "aspen");
   BSON_APPEND_INT64(reply, "pid", (int64_t) getpid());
   BSON_APPEND_DOUBLE(reply, "uptime", (double) (now - srv->start_time_ms) / 1000.0);
   BSON_APPEND_INT64(reply, "uptimeMillis", (int64_t) (now - srv->start_time_ms));
   BSON_APPEND_DATE_TIME(reply, "localTime", (int64_t) now);
   BSON_APPEND_DOCUMENT_BEGIN(reply, "connections", &conns);
   BSON_APPEND_INT32(&conns, "current", srv->n_sessions);
   BSON_APPEND_INT32(&conns, "available",
                     srv->cfg->max_connections - srv->n_sessions);
   BSON_APPEND_INT64(&conns, "totalCreated", (int64_t) srv->next_conn_id);
   bson_append_document_end(reply, &conns);
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_end_sessions(aspen_request_t *req, bson_t *reply)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, req->cmd, "endSessions") ||
       !BSON_ITER_HOLDS_ARRAY(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "endSessions must be an array of session ids");
      return ASPEN_HANDLED_REPLY;
   }
   if (req->srv->backend) {
      uint32_t len;
      const uint8_t *data;
      bson_t ids, keyed;
      bson_iter_array(&it, &len, &data);
      if (bson_init_static(&ids, data, len)) {
         /* The caller's own sessions only (cmd_auth.c keys them). */
         bool is_keyed = aspen_auth_session_keys(req, &ids, &keyed);
         aspen_backend_end_sessions(req->srv->backend,
                                    is_keyed ? &keyed : &ids);
         if (is_keyed) {
            bson_destroy(&keyed);
         }
      }
   }
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

/* Backend sessions are kept alive by use; an explicit refresh has nothing
 * more to do, as on a server whose sessions never expire early. */
aspen_handled_t
aspen_cmd_refresh_sessions(aspen_request_t *req, bson_t *reply)
{
   (void) req;
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_list_workspace_defaults(aspen_request_t *req, bson_t *reply)
{
   (void) req;
   BSON_APPEND_UTF8(reply, "defaultTierSize", "SP10");
   BSON_APPEND_UTF8(reply, "maxTierSize", "SP50");
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}
