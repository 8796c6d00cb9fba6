/*
 * topology.c - the topology aspen presents to drivers in hello/isMaster,
 * and why.
 *
 * Drivers decide from hello what they may do: the retryable-writes and
 * transactions specs switch both off for a standalone, so a proxy that
 * answers like a standalone gets no txnNumber and no startTransaction even
 * when the deployment behind it has them. aspen therefore answers the way
 * the router of that deployment would:
 *
 *   - backing deployment a replica set or a mongos with sessions (its
 *     isMaster has setName or msg "isdbgrid", and
 *     logicalSessionTimeoutMinutes): a mongos-style hello, msg "isdbgrid",
 *     a topologyVersion, the backend's logicalSessionTimeoutMinutes and its
 *     maxWireVersion (at most aspen's own). Drivers then see one mongos,
 *     send retryable writes and transactions, and aspen forwards them with
 *     their lsid to the primary (upstream.c), where the server keeps them;
 *   - a standalone, an unreachable backend or none: the standalone-style
 *     hello aspen always gave (no topologyVersion, aspen's wire version);
 *   - a hello with loadBalanced: true when net.loadBalanced is on: the
 *     mongos-style answer plus serviceId, as a mongos behind a load
 *     balancer answers (the load-balancers spec); without the option it is
 *     refused with mongos's LoadBalancerSupportMismatch (354).
 *
 * The facts come from an isMaster aspen sends the backend (backend.c:
 * aspen_backend_probe) at start and again when a hello finds them older
 * than FACTS_REFRESH_MS. A hello that comes before the first probe ended
 * waits for it (at most FACTS_WAIT_MS), so a driver's first view is already
 * right. When the facts change (a backend replaced by a standalone, a new
 * session timeout) topologyVersion.counter goes up and waiting hellos are
 * answered at once.
 *
 * An awaitable hello (topologyVersion + maxAwaitTimeMS, the SDAM streaming
 * protocol) whose topologyVersion is the current one is answered after
 * maxAwaitTimeMS or at the next change, as mongod and mongos do; with the
 * exhaustAllowed flag its replies are a stream (moreToCome on each, the next
 * one maxAwaitTimeMS later) for as long as the client keeps the connection.
 *
 * Loop thread only.
 */
#include "auth.h"

#include <stdlib.h>
#include <string.h>

#define COMPONENT "NETWORK"
#define FACTS_WAIT_MS 3000
#define FACTS_REFRESH_MS 10000
#define MAX_AWAIT_MS (60 * 60 * 1000) /* a longer maxAwaitTimeMS is capped */

typedef struct hello_wait {
   struct hello_wait *next;
   aspen_session_t *sess; /* referenced */
   bson_t cmd;            /* the hello, copied */
   char *db;
   bool legacy;
   bool exhaust;   /* streamed: every reply carries moreToCome */
   bool for_facts; /* waits for the backend's first facts */
   uint64_t deadline_ms;
   uint64_t max_await_ms;
} hello_wait_t;

struct aspen_topology {
   aspen_server_t *srv;
   bson_oid_t process_id; /* topologyVersion.processId: this aspen's run */
   bson_oid_t service_id; /* serviceId in load-balanced mode */
   int64_t counter;       /* topologyVersion.counter */
   aspen_backend_facts_t seen;
   hello_wait_t *waits;
   uv_timer_t timer;
};

static aspen_topology_t *
topology_get(aspen_server_t *srv)
{
   if (!srv->topology && srv->loop) {
      aspen_topology_t *top = aspen_xcalloc(1, sizeof *top);
      top->srv = srv;
      bson_oid_init(&top->process_id, NULL);
      bson_oid_init(&top->service_id, NULL);
      uv_timer_init(srv->loop, &top->timer);
      top->timer.data = top;
      if (srv->backend) {
         aspen_backend_facts(srv->backend, &top->seen);
      }
      srv->topology = top;
   }
   return srv->topology;
}

static bool
cmd_true(const bson_t *cmd, const char *key)
{
   bson_iter_t it;
   return bson_iter_init_find(&it, cmd, key) && bson_iter_as_bool(&it);
}

/* The reply to a hello, from the facts at hand. `routed`: mongos-style. */
static void
build_reply(aspen_request_t *req, const aspen_topology_t *top,
            const aspen_backend_facts_t *f, bool routed, bool lb,
            bson_t *reply)
{
   bool legacy_name = strcmp(req->name, "hello") != 0;
   bson_iter_t it;
   if (bson_iter_init_find(&it, req->cmd, "helloOk") || !legacy_name) {
      BSON_APPEND_BOOL(reply, "helloOk", true);
   }
   BSON_APPEND_BOOL(reply, legacy_name ? "ismaster" : "isWritablePrimary",
                    true);
   if (routed) {
      bson_t tv;
      BSON_APPEND_UTF8(reply, "msg", "isdbgrid");
      BSON_APPEND_DOCUMENT_BEGIN(reply, "topologyVersion", &tv);
      BSON_APPEND_OID(&tv, "processId", &top->process_id);
      BSON_APPEND_INT64(&tv, "counter", top->counter);
      bson_append_document_end(reply, &tv);
   }
   BSON_APPEND_INT32(reply, "maxBsonObjectSize", ASPEN_WIRE_MAX_BSON_LEN);
   BSON_APPEND_INT32(reply, "maxMessageSizeBytes",
                     (int32_t) req->srv->cfg->max_message_size);
   BSON_APPEND_INT32(reply, "maxWriteBatchSize", 100000);
   BSON_APPEND_DATE_TIME(reply, "localTime", aspen_clock_now_ms());
   BSON_APPEND_INT32(reply, "logicalSessionTimeoutMinutes",
                     routed && f->session_timeout_minutes >= 0
                        ? f->session_timeout_minutes
                        : 30);
   BSON_APPEND_INT64(reply, "connectionId",
                     (int64_t) aspen_session_id(req->sess));
   BSON_APPEND_INT32(reply, "minWireVersion", ASPEN_MIN_WIRE_VERSION);
   /* Routed, the wire version is what the commands are forwarded to. */
   BSON_APPEND_INT32(reply, "maxWireVersion",
                     routed && f->known &&
                           f->max_wire_version < ASPEN_MAX_WIRE_VERSION
                        ? f->max_wire_version
                        : ASPEN_MAX_WIRE_VERSION);
   BSON_APPEND_BOOL(reply, "readOnly", false);
   if (lb) {
      BSON_APPEND_OID(reply, "serviceId", &top->service_id);
   }
   aspen_auth_hello(req, reply); /* saslSupportedMechs, speculative auth */
   aspen_reply_ok(reply);
}

/* The facts at hand (none without a backend). */
static void
current_facts(aspen_server_t *srv, aspen_backend_facts_t *f)
{
   memset(f, 0, sizeof *f);
   f->session_timeout_minutes = -1;
   if (srv->backend) {
      aspen_backend_facts(srv->backend, f);
   }
}

static void on_timer(uv_timer_t *t);

static void
arm_timer(aspen_topology_t *top)
{
   if (!top->waits) {
      uv_timer_stop(&top->timer);
      return;
   }
   uint64_t first = top->waits->deadline_ms;
   for (hello_wait_t *w = top->waits->next; w; w = w->next) {
      if (w->deadline_ms < first) {
         first = w->deadline_ms;
      }
   }
   uint64_t now = uv_now(top->srv->loop);
   uv_timer_start(&top->timer, on_timer, first > now ? first - now : 0, 0);
}

static void
wait_add(aspen_topology_t *top, hello_wait_t *w)
{
   w->next = top->waits;
   top->waits = w;
   arm_timer(top);
}

static void
wait_free(hello_wait_t *w)
{
   aspen_session_unref(w->sess);
   bson_destroy(&w->cmd);
   free(w->db);
   free(w);
}

/* Parks the request: its reply comes from on_timer. */
static aspen_handled_t
park(aspen_topology_t *top, aspen_request_t *req, bool for_facts,
     bool exhaust, uint64_t delay_ms, uint64_t max_await_ms)
{
   hello_wait_t *w = aspen_xcalloc(1, sizeof *w);
   w->sess = req->sess;
   aspen_session_ref(req->sess);
   bson_copy_to(req->cmd, &w->cmd);
   w->db = aspen_xstrdup(req->db);
   w->legacy = req->legacy;
   w->for_facts = for_facts;
   w->exhaust = exhaust;
   w->max_await_ms = max_await_ms;
   w->deadline_ms = uv_now(top->srv->loop) + delay_ms;
   wait_add(top, w);
   return ASPEN_HANDLED_ASYNC;
}

/* An awaitable hello: true with its maxAwaitTimeMS, and whether its
 * topologyVersion is the current one. */
static bool
awaitable(const aspen_topology_t *top, const bson_t *cmd, uint64_t *max_await,
          bool *current)
{
   bson_iter_t it, tv;
   if (!bson_iter_init_find(&it, cmd, "maxAwaitTimeMS") ||
       !BSON_ITER_HOLDS_NUMBER(&it)) {
      return false;
   }
   int64_t ms = bson_iter_as_int64(&it);
   *max_await = ms < 0 ? 0 : ms > MAX_AWAIT_MS ? MAX_AWAIT_MS : (uint64_t) ms;
   if (!bson_iter_init_find(&it, cmd, "topologyVersion") ||
       !BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &tv)) {
      return false;
   }
   bool pid = false, counter = false;
   while (bson_iter_next(&tv)) {
      if (strcmp(bson_iter_key(&tv), "processId") == 0 &&
          BSON_ITER_HOLDS_OID(&tv)) {
         pid = bson_oid_equal(bson_iter_oid(&tv), &top->process_id);
      } else if (strcmp(bson_iter_key(&tv), "counter") == 0 &&
                 BSON_ITER_HOLDS_NUMBER(&tv)) {
         counter = bson_iter_as_int64(&tv) == top->counter;
      }
   }
   *current = pid && counter;
   return true;
}

/* Answers a parked hello now; returns it when it goes on waiting (the next
 * reply of an exhaust stream), else frees it. */
static hello_wait_t *
answer(aspen_topology_t *top, hello_wait_t *w)
{
   aspen_server_t *srv = top->srv;
   aspen_backend_facts_t f;
   current_facts(srv, &f);
   bson_iter_t it;
   aspen_request_t req = {
      .sess = w->sess,
      .srv = srv,
      .db = w->db,
      .cmd = &w->cmd,
      .legacy = w->legacy,
   };
   if (!bson_iter_init(&it, &w->cmd) || !bson_iter_next(&it)) {
      wait_free(w);
      return NULL;
   }
   req.name = bson_iter_key(&it);
   bool lb = cmd_true(&w->cmd, "loadBalanced");
   bool routed = lb || f.transactions;
   bson_t reply = BSON_INITIALIZER;
   build_reply(&req, top, &f, routed, lb, &reply);
   bool more = false;
   if (w->exhaust && routed) {
      more = aspen_session_reply_more(w->sess, &reply);
   } else {
      aspen_session_reply(w->sess, &reply);
   }
   bson_destroy(&reply);
   if (!more) {
      wait_free(w);
      return NULL;
   }
   /* What the client saw is current now: the next reply after
    * maxAwaitTimeMS, or at the next change. */
   w->for_facts = false;
   w->deadline_ms = uv_now(srv->loop) + w->max_await_ms;
   return w;
}

static void
on_timer(uv_timer_t *t)
{
   aspen_topology_t *top = t->data;
   uint64_t now = uv_now(top->srv->loop);
   hello_wait_t *due = NULL;
   for (hello_wait_t **pp = &top->waits; *pp;) {
      hello_wait_t *w = *pp;
      if (w->deadline_ms <= now) {
         *pp = w->next;
         w->next = due;
         due = w;
      } else {
         pp = &w->next;
      }
   }
   /* Answering may run the session's next request (another hello), which
    * parks again: the due ones are off the list by now. */
   while (due) {
      hello_wait_t *w = due;
      due = w->next;
      w->next = NULL;
      if ((w = answer(top, w))) {
         w->next = top->waits;
         top->waits = w;
      }
   }
   arm_timer(top);
}

aspen_handled_t
aspen_topology_hello(aspen_request_t *req, bson_t *reply)
{
   aspen_server_t *srv = req->srv;
   bool lb = cmd_true(req->cmd, "loadBalanced");
   if (lb && !srv->cfg->load_balanced) {
      aspen_reply_error(reply, ASPEN_ERR_LoadBalancerSupportMismatch,
                        "The driver is in load balancing mode "
                        "(loadBalanced=true), but aspen does not have load "
                        "balancing enabled (net.loadBalanced: true, "
                        "--load-balanced true)");
      return ASPEN_HANDLED_REPLY;
   }
   aspen_backend_facts_t f;
   current_facts(srv, &f);
   aspen_topology_t *top = topology_get(srv);
   if (srv->backend) {
      /* A heartbeat of aspen's own: drivers' monitors ask every 10 s. */
      aspen_backend_probe(srv->backend, FACTS_REFRESH_MS);
      if (!f.probed && !lb && top) {
         return park(top, req, true, false, FACTS_WAIT_MS, 0);
      }
   }
   bool routed = lb || f.transactions;
   uint64_t max_await = 0;
   bool current = false;
   if (routed && top && !req->legacy &&
       awaitable(top, req->cmd, &max_await, &current)) {
      bool exhaust =
         req->msg && (req->msg->flags & ASPEN_OP_MSG_EXHAUST_ALLOWED);
      if (current || exhaust) {
         /* A stream's first reply goes out at once when the client's view
          * is stale, with moreToCome like the rest. */
         return park(top, req, false, exhaust, current ? max_await : 0,
                     max_await);
      }
   }
   static const aspen_topology_t none;
   build_reply(req, top ? top : &none, &f, routed, lb, reply);
   return ASPEN_HANDLED_REPLY;
}

void
aspen_topology_on_facts(void *arg, const aspen_backend_facts_t *facts)
{
   aspen_server_t *srv = arg;
   aspen_topology_t *top = srv->topology;
   if (!top) {
      return;
   }
   bool changed = facts->known != top->seen.known ||
                  facts->transactions != top->seen.transactions ||
                  facts->session_timeout_minutes !=
                     top->seen.session_timeout_minutes ||
                  facts->max_wire_version != top->seen.max_wire_version;
   if (changed && top->seen.probed) {
      top->counter++;
      aspen_logf(ASPEN_LOG_INFO, COMPONENT, "topology",
                 "the backing deployment changed: aspen presents itself as "
                 "%s (topologyVersion counter %lld)",
                 facts->transactions ? "a mongos" : "a standalone",
                 (long long) top->counter);
   }
   top->seen = *facts;
   uint64_t now = uv_now(srv->loop);
   for (hello_wait_t *w = top->waits; w; w = w->next) {
      if (w->for_facts || changed) {
         w->deadline_ms = now;
      }
   }
   arm_timer(top);
}

static void
on_timer_closed(uv_handle_t *h)
{
   free(h->data);
}

void
aspen_topology_shutdown(aspen_server_t *srv)
{
   aspen_topology_t *top = srv->topology;
   if (!top) {
      return;
   }
   srv->topology = NULL;
   while (top->waits) {
      hello_wait_t *w = top->waits;
      top->waits = w->next;
      wait_free(w);
   }
   uv_close((uv_handle_t *) &top->timer, on_timer_closed);
}
