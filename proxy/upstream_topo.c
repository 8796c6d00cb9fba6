/*
 * upstream_topo.c - which server of a multi-host backing deployment a
 * forwarded command goes to (see upstream.h).
 *
 * Discovery stays with mongoc: a client pool on the backend URI runs its
 * monitor threads (server discovery and monitoring, the streaming hello of
 * 4.4+ servers included), and its topology-changed events are copied into
 * plain snapshots (aspen_topo_t) under a mutex and handed to the loop
 * through a uv_async_t. The pool's clients never carry a forwarded command;
 * one is used by a helper thread only to ping a server the relay saw fail,
 * so that mongoc marks a dead server Unknown at once (an application error
 * is the fastest SDAM signal there is) and rescans.
 *
 * The choice itself (aspen_topo_select) is a pure function of a snapshot,
 * so the unit tests drive it with made-up topologies.
 */
#include "upstream.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define COMPONENT "BACKEND"

static const struct {
   const char *name;
   aspen_srv_type_t type;
} srv_types[] = {
   {"Unknown", ASPEN_SRV_UNKNOWN},
   {"Standalone", ASPEN_SRV_STANDALONE},
   {"Mongos", ASPEN_SRV_MONGOS},
   {"PossiblePrimary", ASPEN_SRV_POSSIBLE_PRIMARY},
   {"RSPrimary", ASPEN_SRV_RS_PRIMARY},
   {"RSSecondary", ASPEN_SRV_RS_SECONDARY},
   {"RSArbiter", ASPEN_SRV_RS_ARBITER},
   {"RSOther", ASPEN_SRV_RS_OTHER},
   {"RSGhost", ASPEN_SRV_RS_GHOST},
   {"LoadBalancer", ASPEN_SRV_LOAD_BALANCER},
};

static const char *const topo_names[] = {
   [ASPEN_TOPO_UNKNOWN] = "Unknown",
   [ASPEN_TOPO_SINGLE] = "Single",
   [ASPEN_TOPO_RS_NO_PRIMARY] = "ReplicaSetNoPrimary",
   [ASPEN_TOPO_RS_WITH_PRIMARY] = "ReplicaSetWithPrimary",
   [ASPEN_TOPO_SHARDED] = "Sharded",
   [ASPEN_TOPO_LOAD_BALANCED] = "LoadBalanced",
};

aspen_srv_type_t
aspen_topo_srv_type_parse(const char *name)
{
   for (size_t i = 0; name && i < sizeof srv_types / sizeof srv_types[0];
        i++) {
      if (strcmp(name, srv_types[i].name) == 0) {
         return srv_types[i].type;
      }
   }
   return ASPEN_SRV_UNKNOWN;
}

aspen_topo_type_t
aspen_topo_type_parse(const char *name)
{
   for (size_t i = 0; name && i < sizeof topo_names / sizeof topo_names[0];
        i++) {
      if (strcmp(name, topo_names[i]) == 0) {
         return (aspen_topo_type_t) i;
      }
   }
   return ASPEN_TOPO_UNKNOWN;
}

const char *
aspen_topo_type_name(aspen_topo_type_t type)
{
   if ((unsigned) type >= sizeof topo_names / sizeof topo_names[0]) {
      return "Unknown";
   }
   return topo_names[type];
}

void
aspen_topo_cleanup(aspen_topo_t *t)
{
   if (t) {
      free(t->servers);
      t->servers = NULL;
      t->n = 0;
   }
}

/* True when primary `a` is newer than `b` by (electionId, setVersion), the
 * order the SDAM rules (since 6.0 servers) use to tell a stale primary from
 * the current one. A primary without an electionId is older than one with. */
static bool
primary_newer(const aspen_topo_server_t *a, const aspen_topo_server_t *b)
{
   if (a->has_election_id != b->has_election_id) {
      return a->has_election_id;
   }
   if (a->has_election_id) {
      int c = bson_oid_compare(&a->election_id, &b->election_id);
      if (c != 0) {
         return c > 0;
      }
   }
   return a->set_version > b->set_version;
}

int
aspen_topo_select(const aspen_topo_t *t, const bool *skip)
{
   int best = -1;
   for (size_t i = 0; i < t->n; i++) {
      const aspen_topo_server_t *s = &t->servers[i];
      if (skip && skip[i]) {
         continue;
      }
      switch (t->type) {
      case ASPEN_TOPO_SINGLE:
         /* A direct connection talks to its one server whatever it is. */
         if (s->type != ASPEN_SRV_UNKNOWN) {
            return (int) i;
         }
         break;
      case ASPEN_TOPO_RS_WITH_PRIMARY:
      case ASPEN_TOPO_RS_NO_PRIMARY:
         if (s->type == ASPEN_SRV_RS_PRIMARY &&
             (best < 0 || primary_newer(s, &t->servers[best]))) {
            best = (int) i;
         }
         break;
      case ASPEN_TOPO_SHARDED:
         if (s->type == ASPEN_SRV_MONGOS &&
             (best < 0 || (s->rtt_ms >= 0 &&
                           (t->servers[best].rtt_ms < 0 ||
                            s->rtt_ms < t->servers[best].rtt_ms)))) {
            best = (int) i;
         }
         break;
      case ASPEN_TOPO_UNKNOWN:
      case ASPEN_TOPO_LOAD_BALANCED:
      default:
         return -1;
      }
   }
   return best;
}

/* ---- the mongoc monitor -------------------------------------------------- */

struct aspen_topo_watch {
   uv_loop_t *loop;
   mongoc_client_pool_t *pool;
   aspen_topo_change_cb on_change;
   void *arg;
   uv_async_t async;
   pthread_mutex_t mu;
   aspen_topo_t pending; /* the latest snapshot not yet taken by the loop */
   bool has_pending;
   /* The refresh thread: pings servers the relay saw fail. */
   pthread_t thread;
   pthread_cond_t cv;
   bool stop;
   char refresh_host[ASPEN_TOPO_HOST_MAX + 8]; /* "host:port", "" = none */
};

/* Copies a mongoc topology description into a snapshot. */
static void
snapshot_of(const mongoc_topology_description_t *td, aspen_topo_t *out)
{
   size_t n = 0;
   mongoc_server_description_t **sds =
      mongoc_topology_description_get_servers(td, &n);
   out->type = aspen_topo_type_parse(mongoc_topology_description_type(td));
   out->n = n;
   out->servers = n ? aspen_xcalloc(n, sizeof *out->servers) : NULL;
   for (size_t i = 0; i < n; i++) {
      aspen_topo_server_t *s = &out->servers[i];
      const mongoc_host_list_t *h = mongoc_server_description_host(sds[i]);
      snprintf(s->host, sizeof s->host, "%s", h->host);
      s->port = h->port;
      s->type =
         aspen_topo_srv_type_parse(mongoc_server_description_type(sds[i]));
      s->rtt_ms = mongoc_server_description_round_trip_time(sds[i]);
      s->set_version = -1;
      const bson_t *hello = mongoc_server_description_hello_response(sds[i]);
      bson_iter_t it;
      if (hello && bson_iter_init_find(&it, hello, "setVersion") &&
          BSON_ITER_HOLDS_NUMBER(&it)) {
         s->set_version = bson_iter_as_int64(&it);
      }
      if (hello && bson_iter_init_find(&it, hello, "electionId") &&
          BSON_ITER_HOLDS_OID(&it)) {
         s->has_election_id = true;
         bson_oid_copy(bson_iter_oid(&it), &s->election_id);
      }
   }
   mongoc_server_descriptions_destroy_all(sds, n);
}

/* mongoc's monitor thread: keep the newest snapshot, wake the loop. */
static void
on_topology_changed(const mongoc_apm_topology_changed_t *ev)
{
   aspen_topo_watch_t *w = mongoc_apm_topology_changed_get_context(ev);
   aspen_topo_t snap = {0};
   snapshot_of(mongoc_apm_topology_changed_get_new_description(ev), &snap);
   pthread_mutex_lock(&w->mu);
   aspen_topo_cleanup(&w->pending);
   w->pending = snap;
   w->has_pending = true;
   pthread_mutex_unlock(&w->mu);
   uv_async_send(&w->async);
}

static void
on_async(uv_async_t *h)
{
   aspen_topo_watch_t *w = h->data;
   aspen_topo_t snap = {0};
   bool have;
   pthread_mutex_lock(&w->mu);
   have = w->has_pending;
   if (have) {
      snap = w->pending;
      memset(&w->pending, 0, sizeof w->pending);
      w->has_pending = false;
   }
   pthread_mutex_unlock(&w->mu);
   if (have) {
      w->on_change(w->arg, &snap);
   }
}

/* Pings the servers the loop asked about. A ping through the pool selects
 * that server by id; a network error on it is an application error that
 * makes mongoc mark it Unknown and rescan at once. */
static void *
refresh_main(void *arg)
{
   aspen_topo_watch_t *w = arg;
   mongoc_client_t *client = mongoc_client_pool_pop(w->pool);
   pthread_mutex_lock(&w->mu);
   for (;;) {
      while (!w->stop && w->refresh_host[0] == '\0') {
         pthread_cond_wait(&w->cv, &w->mu);
      }
      if (w->stop) {
         break;
      }
      char target[sizeof w->refresh_host];
      memcpy(target, w->refresh_host, sizeof target);
      w->refresh_host[0] = '\0';
      pthread_mutex_unlock(&w->mu);

      size_t n = 0;
      mongoc_server_description_t **sds =
         mongoc_client_get_server_descriptions(client, &n);
      uint32_t id = 0;
      for (size_t i = 0; i < n; i++) {
         if (strcmp(mongoc_server_description_host(sds[i])->host_and_port,
                    target) == 0) {
            id = mongoc_server_description_id(sds[i]);
         }
      }
      mongoc_server_descriptions_destroy_all(sds, n);
      if (id != 0) {
         bson_t ping = BSON_INITIALIZER, reply;
         bson_error_t berr;
         BSON_APPEND_INT32(&ping, "ping", 1);
         if (!mongoc_client_command_simple_with_server_id(
                client, "admin", &ping, NULL, id, &reply, &berr)) {
            aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, "topology",
                       "refresh ping to %s failed: %s", target, berr.message);
         }
         bson_destroy(&ping);
         bson_destroy(&reply);
      }
      pthread_mutex_lock(&w->mu);
   }
   pthread_mutex_unlock(&w->mu);
   mongoc_client_pool_push(w->pool, client);
   return NULL;
}

aspen_topo_watch_t *
aspen_topo_watch_new(uv_loop_t *loop, const mongoc_uri_t *uri,
                     aspen_topo_change_cb on_change, void *arg,
                     aspen_error_t *err)
{
   aspen_topo_watch_t *w = aspen_xcalloc(1, sizeof *w);
   w->loop = loop;
   w->on_change = on_change;
   w->arg = arg;
   w->pool = mongoc_client_pool_new(uri);
   if (!w->pool) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot create a mongoc client pool to monitor the "
                      "backend");
      free(w);
      return NULL;
   }
   mongoc_client_pool_set_error_api(w->pool, MONGOC_ERROR_API_VERSION_2);
   mongoc_apm_callbacks_t *cbs = mongoc_apm_callbacks_new();
   mongoc_apm_set_topology_changed_cb(cbs, on_topology_changed);
   mongoc_client_pool_set_apm_callbacks(w->pool, cbs, w);
   mongoc_apm_callbacks_destroy(cbs);
   pthread_mutex_init(&w->mu, NULL);
   pthread_cond_init(&w->cv, NULL);
   uv_async_init(loop, &w->async, on_async);
   w->async.data = w;
   /* Popping the first client starts the pool's monitor threads. */
   pthread_create(&w->thread, NULL, refresh_main, w);
   return w;
}

void
aspen_topo_watch_refresh(aspen_topo_watch_t *w, const char *host,
                         uint16_t port)
{
   pthread_mutex_lock(&w->mu);
   snprintf(w->refresh_host, sizeof w->refresh_host, "%s:%u", host,
            (unsigned) port);
   pthread_cond_signal(&w->cv);
   pthread_mutex_unlock(&w->mu);
}

static void
on_async_closed(uv_handle_t *h)
{
   free(h->data);
}

void
aspen_topo_watch_destroy(aspen_topo_watch_t *w)
{
   if (!w) {
      return;
   }
   pthread_mutex_lock(&w->mu);
   w->stop = true;
   pthread_cond_signal(&w->cv);
   pthread_mutex_unlock(&w->mu);
   pthread_join(w->thread, NULL);
   /* Joins the monitor threads: no topology callback runs after this. */
   mongoc_client_pool_destroy(w->pool);
   aspen_topo_cleanup(&w->pending);
   pthread_mutex_destroy(&w->mu);
   pthread_cond_destroy(&w->cv);
   uv_close((uv_handle_t *) &w->async, on_async_closed);
}
