/*
 * metrics.c - aspen's opt-in Prometheus endpoint (beyond ASP): with
 * metrics.port (--metrics-port) set, a tiny HTTP/1.1 responder on the
 * event loop answers GET /metrics in Prometheus' text format: the proxy's
 * connection and command counters, then the engine's per-processor
 * figures (aspen_engine_metrics), which the bridge thread renders, as the
 * engine is only ever called from there. Nothing blocks the loop: the
 * request is read and the reply written with libuv, each connection
 * answers one request and closes.
 *
 * A connection is freed once its handle is closed and no engine request
 * of its is pending (two references), so a reply that comes back after
 * the client went (or during shutdown, when the bridge drains) finds it.
 */
#include "proxy_int.h"

#include <stdlib.h>
#include <string.h>

/* The most a request's head may take; a longer one gets 431. */
#define REQ_MAX 8192

typedef struct mconn {
   uv_tcp_t tcp;
   aspen_server_t *srv;
   struct mconn *next, *prev; /* the open ones (srv->metrics_conns) */
   int refs;         /* the handle's, and a pending engine request's */
   bool closing;
   char req[REQ_MAX];
   size_t len;
   uv_write_t wr;
   char *resp;
} mconn_t;

static void
mconn_unref(mconn_t *c)
{
   if (--c->refs == 0) {
      free(c->resp);
      free(c);
   }
}

static void
on_mconn_closed(uv_handle_t *h)
{
   mconn_unref(h->data);
}

static void
mconn_close(mconn_t *c)
{
   if (c->closing) {
      return;
   }
   c->closing = true;
   if (c->prev) {
      c->prev->next = c->next;
   } else {
      c->srv->metrics_conns = c->next;
   }
   if (c->next) {
      c->next->prev = c->prev;
   }
   uv_close((uv_handle_t *) &c->tcp, on_mconn_closed);
}

static void
on_written(uv_write_t *wr, int status)
{
   (void) status;
   mconn_close(wr->data);
}

/* Sends the response (status line, headers, `body`) and closes. */
static void
respond(mconn_t *c, const char *status, const char *extra_headers,
        const char *body)
{
   if (c->closing) {
      return;
   }
   size_t blen = strlen(body);
   bson_string_t *r = bson_string_new(NULL);
   bson_string_append_printf(r,
                             "HTTP/1.1 %s\r\n"
                             "Content-Type: text/plain; version=0.0.4; "
                             "charset=utf-8\r\n"
                             "Content-Length: %zu\r\n"
                             "Connection: close\r\n%s\r\n",
                             status, blen, extra_headers ? extra_headers : "");
   bson_string_append(r, body);
   size_t len = r->len;
   c->resp = bson_string_free(r, false);
   uv_buf_t buf = uv_buf_init(c->resp, (unsigned) len);
   c->wr.data = c;
   uv_read_stop((uv_stream_t *) &c->tcp);
   if (uv_write(&c->wr, (uv_stream_t *) &c->tcp, &buf, 1, on_written) != 0) {
      mconn_close(c);
   }
}

/* ---- the proxy's counters ---------------------------------------------------- */

/* Commands counted by name, at most this many names (then "other"), so a
 * client inventing names cannot grow the table without bound. */
#define CMD_SLOTS 512
#define CMD_NAMES_MAX 256

typedef struct {
   char name[48];
   bool local;
   uint64_t n; /* 0: a free slot */
} cmd_slot_t;

struct aspen_cmd_counts {
   cmd_slot_t slot[CMD_SLOTS];
   size_t used;
   uint64_t other;
};

void
aspen_metrics_count_command(aspen_server_t *srv, const char *name,
                            bool local)
{
   aspen_cmd_counts_t *t = srv->cmd_counts;
   if (!t) {
      return; /* the endpoint is off */
   }
   uint32_t h = 2166136261u;
   for (const char *p = name; *p; p++) {
      h = (h ^ (uint8_t) *p) * 16777619u;
   }
   h ^= local;
   for (uint32_t i = 0; i < CMD_SLOTS; i++) {
      cmd_slot_t *s = &t->slot[(h + i) % CMD_SLOTS];
      if (s->n == 0) {
         if (t->used >= CMD_NAMES_MAX || strlen(name) >= sizeof s->name) {
            break;
         }
         snprintf(s->name, sizeof s->name, "%s", name);
         s->local = local;
         t->used++;
      }
      if (s->local == local && strcmp(s->name, name) == 0) {
         s->n++;
         return;
      }
   }
   t->other++;
}

static void
proxy_figures(const aspen_server_t *srv, bson_string_t *out)
{
   bson_string_append_printf(
      out,
      "# HELP aspen_connections_current client connections open\n"
      "# TYPE aspen_connections_current gauge\n"
      "aspen_connections_current %d\n"
      "# HELP aspen_connections_total client connections accepted\n"
      "# TYPE aspen_connections_total counter\n"
      "aspen_connections_total %llu\n"
      "# HELP aspen_uptime_seconds seconds since aspen started\n"
      "# TYPE aspen_uptime_seconds gauge\n"
      "aspen_uptime_seconds %.3f\n"
      "# HELP aspen_commands_total commands run, by name and by who "
      "answered them (local: aspen, forward: the backend)\n"
      "# TYPE aspen_commands_total counter\n",
      srv->n_sessions, (unsigned long long) srv->next_conn_id,
      (double) (aspen_clock_now_ms() - (int64_t) srv->start_time_ms) / 1000.0);
   const aspen_cmd_counts_t *t = srv->cmd_counts;
   for (size_t i = 0; i < CMD_SLOTS; i++) {
      if (t->slot[i].n == 0) {
         continue;
      }
      bson_string_append(out, "aspen_commands_total{command=\"");
      aspen_prom_label_value(out, t->slot[i].name);
      bson_string_append_printf(out, "\",handler=\"%s\"} %llu\n",
                                t->slot[i].local ? "local" : "forward",
                                (unsigned long long) t->slot[i].n);
   }
   if (t->other) {
      bson_string_append_printf(
         out, "aspen_commands_total{command=\"(other)\",handler=\"any\"} %llu\n",
         (unsigned long long) t->other);
   }
}

/* The engine's part is there (bridge thread): the reply goes out. */
static void
on_engine_figures(void *arg, const bson_t *reply)
{
   mconn_t *c = arg;
   if (!c->closing) {
      bson_iter_t it;
      bson_string_t *body = bson_string_new(NULL);
      proxy_figures(c->srv, body);
      if (bson_iter_init_find(&it, reply, "text") &&
          BSON_ITER_HOLDS_UTF8(&it)) {
         bson_string_append(body, bson_iter_utf8(&it, NULL));
      }
      respond(c, "200 OK", NULL, body->str);
      bson_string_free(body, true);
   }
   mconn_unref(c);
}

/* ---- requests ------------------------------------------------------------------ */

static void
handle_request(mconn_t *c)
{
   /* "GET /metrics HTTP/1.1": the method, the path (a query ignored). */
   char *sp1 = memchr(c->req, ' ', c->len);
   char *sp2 = sp1 ? memchr(sp1 + 1, ' ', c->len - (size_t) (sp1 + 1 - c->req))
                   : NULL;
   if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
      respond(c, "400 Bad Request", NULL, "bad request\n");
      return;
   }
   size_t mlen = (size_t) (sp1 - c->req);
   size_t plen = (size_t) (sp2 - sp1 - 1);
   const char *path = sp1 + 1;
   const char *q = memchr(path, '?', plen);
   if (q) {
      plen = (size_t) (q - path);
   }
   if (plen != 8 || memcmp(path, "/metrics", 8) != 0) {
      respond(c, "404 Not Found", NULL, "only /metrics is served here\n");
      return;
   }
   if (mlen != 3 || memcmp(c->req, "GET", 3) != 0) {
      respond(c, "405 Method Not Allowed", "Allow: GET\r\n",
              "only GET is allowed\n");
      return;
   }
   uv_read_stop((uv_stream_t *) &c->tcp);
   if (!c->srv->bridge) {
      respond(c, "503 Service Unavailable", NULL, "aspen is shutting down\n");
      return;
   }
   c->refs++; /* until on_engine_figures */
   aspen_bridge_metrics(c->srv->bridge, on_engine_figures, c);
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
   (void) suggested;
   mconn_t *c = h->data;
   *buf = uv_buf_init(c->req + c->len, (unsigned) (REQ_MAX - c->len));
}

static void
on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
   (void) buf;
   mconn_t *c = s->data;
   if (n < 0) {
      mconn_close(c);
      return;
   }
   c->len += (size_t) n;
   /* The head ends at an empty line; no request here has a body. */
   for (size_t i = 3; i < c->len; i++) {
      if (memcmp(c->req + i - 3, "\r\n\r\n", 4) == 0) {
         handle_request(c);
         return;
      }
   }
   if (c->len == REQ_MAX) {
      respond(c, "431 Request Header Fields Too Large", NULL,
              "request too large\n");
   }
}

static void
on_metrics_connection(uv_stream_t *listener, int status)
{
   aspen_server_t *srv = listener->data;
   if (status < 0 || srv->shutting_down) {
      return;
   }
   mconn_t *c = aspen_xcalloc(1, sizeof *c);
   c->srv = srv;
   c->refs = 1;
   c->next = srv->metrics_conns;
   if (c->next) {
      c->next->prev = c;
   }
   srv->metrics_conns = c;
   uv_tcp_init(srv->loop, &c->tcp);
   c->tcp.data = c;
   if (uv_accept(listener, (uv_stream_t *) &c->tcp) != 0 ||
       uv_read_start((uv_stream_t *) &c->tcp, on_alloc, on_read) != 0) {
      mconn_close(c);
   }
}

bool
aspen_metrics_start(aspen_server_t *srv, aspen_error_t *err)
{
   if (srv->cfg->metrics_port < 0) {
      return true; /* off (the default) */
   }
   struct sockaddr_storage addr;
   const char *bind = srv->cfg->bind;
   int port = srv->cfg->metrics_port;
   int rc = strchr(bind, ':')
               ? uv_ip6_addr(bind, port, (struct sockaddr_in6 *) &addr)
               : uv_ip4_addr(bind, port, (struct sockaddr_in *) &addr);
   if (rc == 0) {
      uv_tcp_init(srv->loop, &srv->metrics_listener);
      srv->metrics_listener.data = srv;
      srv->metrics_on = true;
      rc = uv_tcp_bind(&srv->metrics_listener, (const struct sockaddr *) &addr,
                       0);
   }
   if (rc == 0) {
      rc = uv_listen((uv_stream_t *) &srv->metrics_listener, 64,
                     on_metrics_connection);
   }
   if (rc != 0) {
      aspen_error_set(err, ASPEN_ERR_HostUnreachable,
                      "cannot serve metrics on %s:%d: %s", bind, port,
                      uv_strerror(rc));
      return false;
   }
   struct sockaddr_storage got;
   int len = sizeof got;
   if (uv_tcp_getsockname(&srv->metrics_listener, (struct sockaddr *) &got,
                          &len) == 0) {
      port = ntohs(got.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *) &got)->sin6_port
                      : ((struct sockaddr_in *) &got)->sin_port);
   }
   srv->cmd_counts = aspen_xcalloc(1, sizeof *srv->cmd_counts);
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "address", bind);
   BSON_APPEND_INT32(&attr, "port", port);
   BSON_APPEND_UTF8(&attr, "path", "/metrics");
   aspen_log(ASPEN_LOG_INFO, "NETWORK", 0, "metrics",
             "Serving Prometheus metrics", &attr);
   bson_destroy(&attr);
   return true;
}

void
aspen_metrics_stop(aspen_server_t *srv)
{
   if (srv->metrics_on) {
      srv->metrics_on = false;
      uv_close((uv_handle_t *) &srv->metrics_listener, NULL);
   }
   while (srv->metrics_conns) {
      mconn_close(srv->metrics_conns); /* unlinks it */
   }
}

void
aspen_metrics_cleanup(aspen_server_t *srv)
{
   free(srv->cmd_counts);
   srv->cmd_counts = NULL;
}
