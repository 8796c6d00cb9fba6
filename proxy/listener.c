/*
 * listener.c - the TCP listener: binds the configured address and port,
 * accepts connections into sessions, and logs mongod's "Waiting for
 * connections" line once it is listening (tests and tools wait for it).
 * With net.idleTimeoutSecs it also runs the timer that closes idle sessions.
 */
#include "proxy_int.h"

#include <string.h>

static void
on_connection(uv_stream_t *server, int status)
{
   aspen_server_t *srv = server->data;
   if (status < 0) {
      aspen_logf(ASPEN_LOG_WARNING, "NETWORK", "listener", "accept failed: %s",
                 uv_strerror(status));
      return;
   }
   if (srv->shutting_down) {
      return;
   }
   aspen__session_accept(srv, server);
}

/* How often idle sessions are looked for: a connection is closed between
 * idleTimeoutSecs and idleTimeoutSecs + this after its last activity. */
#define IDLE_SWEEP_MS 500

static void
on_idle_timer(uv_timer_t *t)
{
   aspen_server_t *srv = t->data;
   aspen__session_close_idle(srv, uv_now(srv->loop));
}

bool
aspen_listener_start(aspen_server_t *srv, aspen_error_t *err)
{
   struct sockaddr_storage addr;
   int rc;
   const char *bind = srv->cfg->bind;
   if (strchr(bind, ':')) {
      rc = uv_ip6_addr(bind, srv->cfg->port, (struct sockaddr_in6 *) &addr);
   } else {
      rc = uv_ip4_addr(bind, srv->cfg->port, (struct sockaddr_in *) &addr);
   }
   if (rc != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "invalid bind address '%s': %s",
                      bind, uv_strerror(rc));
      return false;
   }
   uv_tcp_init(srv->loop, &srv->listener);
   srv->listener.data = srv;
   srv->listening = true;
   rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *) &addr, 0);
   if (rc == 0) {
      rc = uv_listen((uv_stream_t *) &srv->listener, 511, on_connection);
   }
   if (rc != 0) {
      aspen_error_set(err, ASPEN_ERR_HostUnreachable,
                      "cannot listen on %s:%d: %s", bind, srv->cfg->port,
                      uv_strerror(rc));
      return false;
   }
   struct sockaddr_storage got;
   int len = sizeof got;
   int port = srv->cfg->port;
   if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *) &got, &len) ==
       0) {
      port = ntohs(got.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *) &got)->sin6_port
                      : ((struct sockaddr_in *) &got)->sin_port);
   }
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "address", bind);
   BSON_APPEND_INT32(&attr, "port", port);
   BSON_APPEND_UTF8(&attr, "ssl", srv->cfg->tls_mode == ASPEN_TLS_DISABLED
                                     ? "off"
                                     : "on");
   BSON_APPEND_UTF8(&attr, "tlsMode", aspen_tls_mode_name(srv->cfg->tls_mode));
   if (srv->cfg->idle_timeout_secs > 0) {
      uv_timer_init(srv->loop, &srv->idle_timer);
      srv->idle_timer.data = srv;
      uv_timer_start(&srv->idle_timer, on_idle_timer, IDLE_SWEEP_MS,
                     IDLE_SWEEP_MS);
      srv->idle_timer_on = true;
   }
   aspen_log(ASPEN_LOG_INFO, "NETWORK", 23016, "listener",
             "Waiting for connections", &attr);
   bson_destroy(&attr);
   return true;
}

void
aspen_listener_stop(aspen_server_t *srv)
{
   if (srv->listening) {
      srv->listening = false;
      uv_close((uv_handle_t *) &srv->listener, NULL);
   }
   if (srv->idle_timer_on) {
      srv->idle_timer_on = false;
      uv_close((uv_handle_t *) &srv->idle_timer, NULL);
   }
}
