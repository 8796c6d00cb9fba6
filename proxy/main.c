/*
 * main.c - aspen's entry point: reads the configuration (file, then flags),
 * sets up TLS and the backend forwarder, listens, and runs the libuv loop
 * until SIGINT or SIGTERM, then closes every handle and exits 0.
 *
 * `aspen --add-user NAME --password PW --roles R1,R2 [--state-dir DIR]
 * [--config FILE]` instead writes the user to the users file and exits;
 * `aspen --add-user SUBJECT --external --roles R1` adds a MONGODB-X509 user
 * (its name is the client certificate's RFC 2253 subject).
 */
#include "auth.h"

#include <mongoc/mongoc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
   aspen_server_t *srv;
   uv_signal_t sigint, sigterm;
} app_t;

static void
shutdown_server(app_t *app, const char *why)
{
   aspen_server_t *srv = app->srv;
   if (srv->shutting_down) {
      return;
   }
   srv->shutting_down = true;
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "reason", why);
   aspen_log(ASPEN_LOG_INFO, "CONTROL", 23377, "main", "Shutting down", &attr);
   bson_destroy(&attr);
   aspen_listener_stop(srv);
   aspen_metrics_stop(srv);
   aspen_session_close_all(srv);
   aspen_topology_shutdown(srv);
   aspen_bridge_destroy(srv->bridge);
   srv->bridge = NULL;
   aspen_engine_destroy(srv->engine);
   srv->engine = NULL;
   aspen_backend_destroy(srv->backend);
   srv->backend = NULL;
   uv_close((uv_handle_t *) &app->sigint, NULL);
   uv_close((uv_handle_t *) &app->sigterm, NULL);
}

static void
on_signal(uv_signal_t *h, int signum)
{
   shutdown_server(h->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* Finds --config FILE / --config=FILE before the other flags are applied, so
 * that flags override the file. */
static const char *
find_config_arg(int argc, char **argv)
{
   for (int i = 1; i < argc; i++) {
      if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
         return argv[i + 1];
      }
      if (strncmp(argv[i], "--config=", 9) == 0) {
         return argv[i] + 9;
      }
   }
   return NULL;
}

/* The flags main handles itself, taken out of argv before the config parser
 * sees it: --add-user/--password/--roles/--external (user administration)
 * and --no-auth
 * (security.authorization "disabled"). */
typedef struct {
   const char *add_user;
   const char *password;
   const char *roles;
   bool external; /* --external: a $external (MONGODB-X509) user */
   bool no_auth;
   int argc;
   char **argv; /* the other arguments */
} own_flags_t;

static bool
take_own_flags(int argc, char **argv, own_flags_t *own, aspen_error_t *err)
{
   memset(own, 0, sizeof *own);
   own->argv = aspen_xcalloc((size_t) argc + 1, sizeof *own->argv);
   own->argv[own->argc++] = argv[0];
   for (int i = 1; i < argc; i++) {
      const char **slot = NULL;
      if (strcmp(argv[i], "--add-user") == 0) {
         slot = &own->add_user;
      } else if (strcmp(argv[i], "--password") == 0) {
         slot = &own->password;
      } else if (strcmp(argv[i], "--roles") == 0) {
         slot = &own->roles;
      } else if (strcmp(argv[i], "--no-auth") == 0) {
         own->no_auth = true;
         continue;
      } else if (strcmp(argv[i], "--external") == 0) {
         own->external = true;
         continue;
      } else {
         own->argv[own->argc++] = argv[i];
         continue;
      }
      if (i + 1 >= argc) {
         aspen_error_set(err, ASPEN_ERR_BadValue, "%s needs a value", argv[i]);
         return false;
      }
      *slot = argv[++i];
   }
   if ((own->password || own->roles || own->external) && !own->add_user) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "--password, --external and --roles go with "
                      "--add-user NAME");
      return false;
   }
   if (own->external && own->password) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "--external users log in with a client certificate "
                      "(MONGODB-X509) and have no --password");
      return false;
   }
   if (own->add_user && !own->external && (!own->password || !own->roles)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "--add-user NAME needs --password PW (or - to read it "
                      "from stdin) and --roles R1[,R2...]");
      return false;
   }
   if (own->add_user && own->external && !own->roles) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "--add-user SUBJECT --external needs --roles "
                      "R1[,R2...]");
      return false;
   }
   return true;
}

static int
fail_start(const aspen_error_t *err)
{
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "error", err->message);
   BSON_APPEND_UTF8(&attr, "codeName", aspen_error_code_name(err->code));
   aspen_log(ASPEN_LOG_ERROR, "CONTROL", 20574, "main",
             "Error during startup", &attr);
   bson_destroy(&attr);
   fprintf(stderr, "aspen: %s\n", err->message);
   return 2;
}

int
main(int argc, char **argv)
{
   aspen_config_t cfg;
   aspen_error_t err;
   bool exit_now = false;
   int rc = 0;

   signal(SIGPIPE, SIG_IGN);
   aspen_config_init(&cfg);
   own_flags_t own;
   if (!take_own_flags(argc, argv, &own, &err)) {
      rc = fail_start(&err);
      free(own.argv);
      aspen_config_cleanup(&cfg);
      return rc;
   }
   const char *config_file = find_config_arg(argc, argv);
   if (config_file && !aspen_config_load_file(&cfg, config_file, &err)) {
      rc = fail_start(&err);
      free(own.argv);
      aspen_config_cleanup(&cfg);
      return rc;
   }
   if (!aspen_config_parse_args(&cfg, own.argc, own.argv, &exit_now, &err)) {
      rc = fail_start(&err);
      free(own.argv);
      aspen_config_cleanup(&cfg);
      return rc;
   }
   free(own.argv);
   cfg.argc = argc; /* getCmdLineOpts shows the command line as given */
   cfg.argv = argv;
   if (exit_now) {
      aspen_config_cleanup(&cfg);
      return 0;
   }
   if (own.no_auth) {
      free(cfg.auth_mode);
      cfg.auth_mode = aspen_xstrdup("disabled");
   }
   aspen_config_finish(&cfg);
   if (own.add_user) {
      rc = aspen_users_cli_add(&cfg, own.add_user, own.password, own.roles);
      aspen_config_cleanup(&cfg);
      return rc;
   }
   aspen_log_set_level(cfg.log_level);

   aspen_server_t srv;
   memset(&srv, 0, sizeof srv);
   srv.cfg = &cfg;
   srv.start_time_ms = aspen_clock_now_ms();

   if (cfg.tls_mode != ASPEN_TLS_DISABLED) {
      if (!cfg.tls_cert || !cfg.tls_key) {
         aspen_error_set(&err, ASPEN_ERR_BadValue,
                         "tls.mode %s needs tls.certificateFile (--tls-cert) "
                         "and tls.keyFile (--tls-key)",
                         aspen_tls_mode_name(cfg.tls_mode));
         rc = fail_start(&err);
         aspen_config_cleanup(&cfg);
         return rc;
      }
      srv.tls_ctx = aspen_tls_ctx_new_server(cfg.tls_cert, cfg.tls_key,
                                             cfg.tls_ca, &err);
      if (!srv.tls_ctx) {
         rc = fail_start(&err);
         aspen_config_cleanup(&cfg);
         return rc;
      }
   }

   srv.users = aspen_users_new(&cfg, &err);
   if (!srv.users) {
      rc = fail_start(&err);
      aspen_tls_ctx_destroy(srv.tls_ctx);
      aspen_config_cleanup(&cfg);
      return rc;
   }
   if (!aspen_users_auth_required(srv.users) && own.no_auth) {
      aspen_logf(ASPEN_LOG_WARNING, "ACCESS", "main",
                 "** WARNING: --no-auth: access control is disabled; every "
                 "client can run every command. For local experiments "
                 "only. **");
   } else if (aspen_users_auth_required(srv.users)) {
      aspen_logf(ASPEN_LOG_INFO, "ACCESS", "main",
                 "access control is enabled: %zu users in %s",
                 aspen_users_count(srv.users), aspen_users_path(srv.users));
   } else {
      aspen_logf(ASPEN_LOG_WARNING, "ACCESS", "main",
                 "access control is off: no users in %s (add one with "
                 "aspen --add-user NAME --password PW --roles atlasAdmin)",
                 aspen_users_path(srv.users));
   }

   if (cfg.audit_log_path) {
      srv.audit = aspen_audit_new(cfg.audit_log_path, &err);
      if (!srv.audit) {
         rc = fail_start(&err);
         aspen_users_destroy(srv.users);
         aspen_tls_ctx_destroy(srv.tls_ctx);
         aspen_config_cleanup(&cfg);
         return rc;
      }
   }

   mongoc_init();
   uv_loop_t loop;
   uv_loop_init(&loop);
   srv.loop = &loop;

   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_INT64(&attr, "pid", (int64_t) uv_os_getpid());
   BSON_APPEND_INT32(&attr, "port", cfg.port);
   BSON_APPEND_UTF8(&attr, "version", ASPEN_VERSION);
   aspen_log(ASPEN_LOG_INFO, "CONTROL", 4615611, "main", "aspen starting",
             &attr);
   bson_destroy(&attr);

   if (cfg.backend_uri) {
      srv.backend = aspen_backend_new(&loop, cfg.backend_uri,
                                      cfg.backend_forwarding,
                                      cfg.backend_lanes, &err);
      if (!srv.backend) {
         rc = fail_start(&err);
         goto done;
      }
      /* What the backend is decides what aspen presents in hello
       * (topology.c): ask now, so the first client's view is right. */
      aspen_backend_set_facts_hook(srv.backend, aspen_topology_on_facts, &srv);
      aspen_backend_probe(srv.backend, 0);
   } else {
      aspen_logf(ASPEN_LOG_WARNING, "CONTROL", "main",
                 "no backend configured (--backend / backend.uri): commands "
                 "other than aspen's own will fail");
   }

   /* Atlas connections run as their dbRoleToExecute, checked with the
    * same rules as users' roles (principal.c). */
   aspen_engine_authz_t authz;
   aspen_users_engine_authz(srv.users, &authz);
   aspen_engine_opts_t eopts = {
      .state_dir = cfg.state_dir,
      .connections = &cfg.connections,
      .backend_uri = cfg.backend_uri,
      .checkpoint_interval_ms = cfg.checkpoint_interval_ms,
      .memory_limit_bytes = cfg.memory_limit_bytes,
      .max_processors = cfg.max_processors,
      .function_time_limit_ms = cfg.function_time_limit_ms,
      .function_memory_limit_bytes = cfg.function_memory_limit_bytes,
      .authz = &authz,
   };
   srv.engine = aspen_engine_new(&eopts, &err);
   if (!srv.engine) {
      rc = fail_start(&err);
      aspen_backend_destroy(srv.backend);
      srv.backend = NULL;
      goto done;
   }
   srv.bridge = aspen_bridge_new(&loop, srv.engine);

   if (!aspen_listener_start(&srv, &err) || !aspen_metrics_start(&srv, &err)) {
      rc = fail_start(&err);
      aspen_listener_stop(&srv);
      aspen_metrics_stop(&srv);
      aspen_bridge_destroy(srv.bridge);
      srv.bridge = NULL;
      aspen_engine_destroy(srv.engine);
      aspen_backend_destroy(srv.backend);
      srv.backend = NULL;
      goto done;
   }

   app_t app = {.srv = &srv};
   uv_signal_init(&loop, &app.sigint);
   uv_signal_init(&loop, &app.sigterm);
   app.sigint.data = app.sigterm.data = &app;
   uv_signal_start(&app.sigint, on_signal, SIGINT);
   uv_signal_start(&app.sigterm, on_signal, SIGTERM);

   uv_run(&loop, UV_RUN_DEFAULT);

done:
   uv_run(&loop, UV_RUN_DEFAULT); /* let close callbacks run */
   if (uv_loop_close(&loop) != 0) {
      aspen_logf(ASPEN_LOG_WARNING, "CONTROL", "main",
                 "event loop closed with handles still open");
   }
   aspen_audit_destroy(srv.audit); /* after the loop: no more events */
   aspen_metrics_cleanup(&srv);
   aspen_tls_ctx_destroy(srv.tls_ctx);
   aspen_users_destroy(srv.users);
   mongoc_cleanup();
   if (rc == 0) {
      aspen_log(ASPEN_LOG_INFO, "CONTROL", 20565, "main", "Now exiting", NULL);
   }
   aspen_config_cleanup(&cfg);
   return rc;
}
