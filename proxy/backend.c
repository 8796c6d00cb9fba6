/*
 * backend.c - forwarding commands to the backing MongoDB deployment.
 *
 * Two ways, chosen once at start from the backend URI (aspen_backend_new):
 *
 * The relay (upstream.h, the default): aspen's own non-blocking
 * connections on the loop thread carry the client's OP_MSG and bring the
 * reply bytes back, with no thread hop per command. It serves every URI
 * whose login it implements (none, SCRAM-SHA-1, SCRAM-SHA-256) and its TLS
 * options.
 *
 * The lanes (this file), for the rest (MONGODB-X509, MONGODB-AWS, OIDC,
 * PLAIN and GSSAPI logins to the backend, load-balanced mode) or when the
 * config asks for them (backend.forwarding "lanes"): mongoc is blocking,
 * so it never runs on the loop thread. A fixed set of
 * lanes (worker threads) each own one client popped from a mongoc client
 * pool, which shares one topology and its background monitoring. The loop
 * queues a job on a lane and returns; the lane runs the command and puts the
 * finished job on a done list, and a uv_async_t brings it back to the loop,
 * where the callback sends the reply.
 *
 * Client sessions. Drivers tag commands with a logical session id (lsid), and
 * a real mongod ties cursors and transactions to it: a getMore must carry the
 * lsid its find ran under. mongoc adds a session id of its own to every
 * command, so aspen cannot pass the client's lsid through. Instead each
 * client lsid is mapped to one mongoc explicit session, created on first use
 * and ended by the client's endSessions (or after 30 idle minutes), and every
 * command with that lsid runs on the same lane (the lsid's hash picks it), so
 * the same backend session id reaches the server each time. Commands without
 * an lsid use mongoc's implicit sessions. A client's txnNumber (retryable
 * writes, transactions) is moved by a base of its mapping's own, since
 * mongoc may hand a later mapping a backend lsid an earlier client used.
 */
#include "hash.h"
#include "upstream.h"

#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define COMPONENT "BACKEND"
#define SESSION_BUCKETS 256
#define SESSION_IDLE_MS (30u * 60u * 1000u)
#define DEFAULT_SERVER_SELECTION_MS 5000

typedef enum { JOB_COMMAND, JOB_END_SESSION } job_kind_t;

struct aspen_backend_job {
   aspen_backend_job_t *next;
   job_kind_t kind;
   char *db;
   bson_t cmd;  /* the command to send (stripped) */
   bson_t lsid; /* the client's lsid, empty if none */
   bool has_lsid;
   aspen_backend_cb cb;
   void *arg;
   bson_t reply;
};

typedef struct mapped_session {
   struct mapped_session *next;
   uint8_t *key; /* the client's lsid document bytes */
   size_t key_len;
   mongoc_client_session_t *cs;
   uint64_t last_used_ms;
   /* Added to the client's txnNumber (see txn_base_next). */
   int64_t txn_base;
} mapped_session_t;

typedef struct {
   aspen_backend_t *be;
   int index;
   pthread_t thread;
   pthread_mutex_t mu;
   pthread_cond_t cv;
   aspen_backend_job_t *head, *tail;
   bool stop;
   mongoc_client_t *client;
   mapped_session_t *buckets[SESSION_BUCKETS];
   uint64_t last_reap_ms;
   uint64_t no_sessions_until_ms; /* the backend refused sessions lately */
   char ctx[16];
} lane_t;

struct aspen_backend {
   uv_loop_t *loop;
   mongoc_uri_t *uri;
   aspen_upstream_t *up; /* the relay; NULL when the lanes forward */
   /* What the backend says about itself (aspen_backend_probe). */
   aspen_backend_facts_t facts;
   uint64_t facts_at_ms; /* when the last probe ended */
   bool probing;
   bool destroying;
   aspen_backend_facts_cb facts_cb;
   void *facts_arg;
   mongoc_client_pool_t *pool;
   int n_lanes;
   lane_t *lanes;
   uv_async_t async;
   /* mongoc pools server sessions: a mapping made after another one ended
    * may get the same backend lsid, on which the server has seen that
    * client's txnNumbers. Each mapping adds its own base, larger than any
    * before it, so the numbers a backend lsid sees only grow. */
   _Atomic int64_t txn_base_next;
   pthread_mutex_t done_mu;
   aspen_backend_job_t *done_head, *done_tail;
};

static void
job_free(aspen_backend_job_t *job)
{
   free(job->db);
   bson_destroy(&job->cmd);
   bson_destroy(&job->lsid);
   bson_destroy(&job->reply);
   free(job);
}

/* ---- lane side ---------------------------------------------------------- */

static mapped_session_t **
session_slot(lane_t *lane, const bson_t *lsid, bool *found)
{
   uint64_t h = aspen_hash_fnv1a(bson_get_data(lsid), lsid->len);
   mapped_session_t **pp = &lane->buckets[h % SESSION_BUCKETS];
   while (*pp) {
      if ((*pp)->key_len == lsid->len &&
          memcmp((*pp)->key, bson_get_data(lsid), lsid->len) == 0) {
         *found = true;
         return pp;
      }
      pp = &(*pp)->next;
   }
   *found = false;
   return pp;
}

static void
session_drop(mapped_session_t **pp)
{
   mapped_session_t *ms = *pp;
   *pp = ms->next;
   mongoc_client_session_destroy(ms->cs);
   free(ms->key);
   free(ms);
}

static mapped_session_t *
session_get(lane_t *lane, const bson_t *lsid)
{
   bool found;
   mapped_session_t **pp = session_slot(lane, lsid, &found);
   if (found) {
      (*pp)->last_used_ms = aspen_clock_now_ms();
      return *pp;
   }
   uint64_t now = aspen_clock_now_ms();
   if (now < lane->no_sessions_until_ms) {
      return NULL;
   }
   mongoc_session_opt_t *opts = mongoc_session_opts_new();
   /* The client does its own causal consistency; aspen adds nothing. */
   mongoc_session_opts_set_causal_consistency(opts, false);
   bson_error_t berr;
   mongoc_client_session_t *cs =
      mongoc_client_start_session(lane->client, opts, &berr);
   mongoc_session_opts_destroy(opts);
   if (!cs) {
      /* The backend does not support sessions: run without one, and do
       * not ask again for a minute (it may be replaced by one that does). */
      aspen_logf(ASPEN_LOG_DEBUG, COMPONENT, lane->ctx,
                 "no backend session: %s", berr.message);
      lane->no_sessions_until_ms = now + 60000;
      return NULL;
   }
   mapped_session_t *ms = aspen_xcalloc(1, sizeof *ms);
   ms->key = aspen_xmalloc(lsid->len);
   memcpy(ms->key, bson_get_data(lsid), lsid->len);
   ms->key_len = lsid->len;
   ms->cs = cs;
   ms->last_used_ms = aspen_clock_now_ms();
   ms->txn_base = atomic_fetch_add(&lane->be->txn_base_next, (int64_t) 1 << 32);
   *pp = ms;
   return ms;
}

/* The command with its txnNumber moved by the mapping's base (`out` is
 * initialised); false when it has none. */
static bool
shift_txn_number(const bson_t *cmd, int64_t base, bson_t *out)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, cmd, "txnNumber") ||
       !BSON_ITER_HOLDS_NUMBER(&it)) {
      return false;
   }
   int64_t n = bson_iter_as_int64(&it);
   bson_init(out);
   bson_iter_init(&it, cmd);
   while (bson_iter_next(&it)) {
      if (strcmp(bson_iter_key(&it), "txnNumber") == 0) {
         BSON_APPEND_INT64(out, "txnNumber", base + n);
      } else {
         bson_append_iter(out, NULL, 0, &it);
      }
   }
   return true;
}

static void
sessions_reap(lane_t *lane, bool all)
{
   uint64_t now = aspen_clock_now_ms();
   if (!all && now - lane->last_reap_ms < 60000) {
      return;
   }
   lane->last_reap_ms = now;
   for (int b = 0; b < SESSION_BUCKETS; b++) {
      mapped_session_t **pp = &lane->buckets[b];
      while (*pp) {
         if (all || now - (*pp)->last_used_ms > SESSION_IDLE_MS) {
            session_drop(pp);
         } else {
            pp = &(*pp)->next;
         }
      }
   }
}

static void
run_command(lane_t *lane, aspen_backend_job_t *job)
{
   bson_t opts = BSON_INITIALIZER;
   bson_error_t berr;
   mongoc_client_session_t *cs = NULL;
   mapped_session_t *ms = NULL;
   if (job->has_lsid && (ms = session_get(lane, &job->lsid))) {
      cs = ms->cs;
   }
   if (cs && !mongoc_client_session_append(cs, &opts, &berr)) {
      cs = NULL;
   }
   bson_t shifted;
   bool is_shifted = cs && shift_txn_number(&job->cmd, ms->txn_base, &shifted);
   bson_t reply;
   bool ok = mongoc_client_command_with_opts(lane->client, job->db,
                                             is_shifted ? &shifted : &job->cmd,
                                             NULL, &opts, &reply, &berr);
   if (is_shifted) {
      bson_destroy(&shifted);
   }
   bson_destroy(&opts);
   bson_destroy(&job->reply);
   if (!ok && !bson_has_field(&reply, "ok")) {
      /* No server reply: the backend could not be reached or the connection
       * broke. Say so with a code drivers do not treat as a topology change. */
      bson_destroy(&reply);
      bson_init(&job->reply);
      aspen_reply_error(&job->reply, ASPEN_ERR_HostUnreachable,
                        "aspen could not reach the backing MongoDB "
                        "deployment: %s",
                        berr.message);
      bson_iter_t it;
      const char *name = "?";
      if (bson_iter_init(&it, &job->cmd) && bson_iter_next(&it)) {
         name = bson_iter_key(&it);
      }
      aspen_logf(ASPEN_LOG_WARNING, COMPONENT, lane->ctx,
                 "forwarding %s.%s failed: %s", job->db, name, berr.message);
      return;
   }
   /* The server's own reply, error or not, goes back verbatim. */
   bson_steal(&job->reply, &reply);
}

static void
end_session(lane_t *lane, aspen_backend_job_t *job)
{
   bool found;
   mapped_session_t **pp = session_slot(lane, &job->lsid, &found);
   if (found) {
      session_drop(pp);
   }
}

static void
finish(aspen_backend_t *be, aspen_backend_job_t *job)
{
   pthread_mutex_lock(&be->done_mu);
   if (be->done_tail) {
      be->done_tail->next = job;
   } else {
      be->done_head = job;
   }
   be->done_tail = job;
   pthread_mutex_unlock(&be->done_mu);
   uv_async_send(&be->async);
}

static void *
lane_main(void *arg)
{
   lane_t *lane = arg;
   lane->client = mongoc_client_pool_pop(lane->be->pool);
   for (;;) {
      pthread_mutex_lock(&lane->mu);
      while (!lane->head && !lane->stop) {
         pthread_cond_wait(&lane->cv, &lane->mu);
      }
      if (lane->stop) {
         pthread_mutex_unlock(&lane->mu);
         break;
      }
      aspen_backend_job_t *job = lane->head;
      lane->head = job->next;
      if (!lane->head) {
         lane->tail = NULL;
      }
      job->next = NULL;
      pthread_mutex_unlock(&lane->mu);

      if (job->kind == JOB_COMMAND) {
         run_command(lane, job);
         finish(lane->be, job);
      } else {
         end_session(lane, job);
         job_free(job);
      }
      sessions_reap(lane, false);
   }
   sessions_reap(lane, true);
   mongoc_client_pool_push(lane->be->pool, lane->client);
   lane->client = NULL;
   return NULL;
}

/* ---- loop side ---------------------------------------------------------- */

static void
on_async(uv_async_t *h)
{
   aspen_backend_t *be = h->data;
   pthread_mutex_lock(&be->done_mu);
   aspen_backend_job_t *job = be->done_head;
   be->done_head = be->done_tail = NULL;
   pthread_mutex_unlock(&be->done_mu);
   while (job) {
      aspen_backend_job_t *next = job->next;
      job->cb(job->arg, &job->reply);
      job_free(job);
      job = next;
   }
}

static void
mongoc_log_to_aspen(mongoc_log_level_t level, const char *domain,
                    const char *message, void *user_data)
{
   (void) user_data;
   aspen_log_level_t lvl;
   switch (level) {
   case MONGOC_LOG_LEVEL_ERROR:
   case MONGOC_LOG_LEVEL_CRITICAL:
      lvl = ASPEN_LOG_ERROR;
      break;
   case MONGOC_LOG_LEVEL_WARNING:
      lvl = ASPEN_LOG_WARNING;
      break;
   case MONGOC_LOG_LEVEL_MESSAGE:
   case MONGOC_LOG_LEVEL_INFO:
      lvl = ASPEN_LOG_INFO;
      break;
   default:
      return; /* debug and trace are mongoc's own business */
   }
   aspen_logf(lvl, COMPONENT, domain, "%s", message);
}

aspen_backend_t *
aspen_backend_new(uv_loop_t *loop, const char *uri_str, const char *forwarding,
                  int lanes, aspen_error_t *err)
{
   bson_error_t berr;
   bool want_relay = !forwarding || strcmp(forwarding, "relay") == 0;
   if (!want_relay && strcmp(forwarding, "lanes") != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "backend.forwarding must be \"relay\" or \"lanes\", "
                      "not \"%s\"",
                      forwarding);
      return NULL;
   }
   mongoc_log_set_handler(mongoc_log_to_aspen, NULL);
   mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_str, &berr);
   if (!uri) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "invalid backend URI: %s",
                      berr.message);
      return NULL;
   }
   if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
      /* mongoc waits 30 s by default; a local tool should say sooner that
       * its backend is down. */
      mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                     DEFAULT_SERVER_SELECTION_MS);
   }
   if (!mongoc_uri_get_appname(uri)) {
      mongoc_uri_set_appname(uri, "aspen");
   }
   aspen_backend_t *be = aspen_xcalloc(1, sizeof *be);
   be->loop = loop;
   be->uri = uri;
   const mongoc_host_list_t *hosts = mongoc_uri_get_hosts(uri);
   char why[256] = "backend.forwarding is \"lanes\"";
   if (want_relay && aspen_upstream_supports(uri, why, sizeof why)) {
      be->up = aspen_upstream_new(loop, uri, err);
      if (!be->up) {
         mongoc_uri_destroy(uri);
         free(be);
         return NULL;
      }
      bson_t attr = BSON_INITIALIZER;
      BSON_APPEND_UTF8(&attr, "host",
                       hosts ? hosts->host_and_port : "(srv)");
      BSON_APPEND_UTF8(&attr, "forwarding", "relay");
      aspen_log(ASPEN_LOG_INFO, COMPONENT, 0, "main",
                "Forwarding to the backing deployment", &attr);
      bson_destroy(&attr);
      return be;
   }
   if (want_relay) {
      aspen_logf(ASPEN_LOG_INFO, COMPONENT, "main",
                 "the backend URI has %s, which aspen's relay does not "
                 "implement: forwarding through mongoc lanes instead",
                 why);
   }
   be->pool = mongoc_client_pool_new(uri);
   if (!be->pool) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot create a client pool for the backend URI");
      mongoc_uri_destroy(uri);
      free(be);
      return NULL;
   }
   mongoc_client_pool_set_error_api(be->pool, MONGOC_ERROR_API_VERSION_2);
   pthread_mutex_init(&be->done_mu, NULL);
   uv_async_init(loop, &be->async, on_async);
   be->async.data = be;
   be->n_lanes = lanes > 0 ? lanes : 1;
   be->lanes = aspen_xcalloc((size_t) be->n_lanes, sizeof *be->lanes);
   for (int i = 0; i < be->n_lanes; i++) {
      lane_t *lane = &be->lanes[i];
      lane->be = be;
      lane->index = i;
      snprintf(lane->ctx, sizeof lane->ctx, "lane%d", i);
      pthread_mutex_init(&lane->mu, NULL);
      pthread_cond_init(&lane->cv, NULL);
      pthread_create(&lane->thread, NULL, lane_main, lane);
   }
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "host",
                    hosts ? hosts->host_and_port : "(srv)");
   BSON_APPEND_UTF8(&attr, "forwarding", "lanes");
   BSON_APPEND_INT32(&attr, "lanes", be->n_lanes);
   aspen_log(ASPEN_LOG_INFO, COMPONENT, 0, "main",
             "Forwarding to the backing deployment", &attr);
   bson_destroy(&attr);
   return be;
}

static void
enqueue(aspen_backend_t *be, int lane_idx, aspen_backend_job_t *job)
{
   lane_t *lane = &be->lanes[lane_idx];
   pthread_mutex_lock(&lane->mu);
   if (lane->tail) {
      lane->tail->next = job;
   } else {
      lane->head = job;
   }
   lane->tail = job;
   pthread_cond_signal(&lane->cv);
   pthread_mutex_unlock(&lane->mu);
}

static int
lane_for_lsid(aspen_backend_t *be, const bson_t *lsid)
{
   return (int) (aspen_hash_fnv1a(bson_get_data(lsid), lsid->len) %
                 (uint64_t) be->n_lanes);
}

static void
lanes_submit(aspen_backend_t *be, const char *db, const bson_t *cmd,
             const bson_t *lsid, uint64_t conn_key, aspen_backend_cb cb,
             void *arg)
{
   aspen_backend_job_t *job = aspen_xcalloc(1, sizeof *job);
   job->kind = JOB_COMMAND;
   job->db = aspen_xstrdup(db);
   bson_init(&job->cmd);
   bson_init(&job->reply);
   /* Fields that belong to the client's connection to aspen, not to the
    * backend: mongoc supplies its own. */
   bson_copy_to_excluding_noinit(cmd, &job->cmd, "$db", "lsid", "$clusterTime",
                                 "$readPreference", NULL);
   if (lsid) {
      bson_copy_to(lsid, &job->lsid);
      job->has_lsid = true;
   } else {
      bson_init(&job->lsid);
   }
   job->cb = cb;
   job->arg = arg;
   int idx = lsid ? lane_for_lsid(be, lsid)
                  : (int) (conn_key % (uint64_t) be->n_lanes);
   enqueue(be, idx, job);
}

bool
aspen_backend_is_relay(const aspen_backend_t *be)
{
   return be->up != NULL;
}

void
aspen_backend_forward(aspen_backend_t *be, const aspen_request_t *req,
                      const bson_t *lsid_key, aspen_backend_cb cb, void *arg)
{
   if (be->up) {
      aspen_op_msg_t one = {0};
      const aspen_op_msg_t *msg = req->msg;
      if (!msg) {
         /* Not an OP_MSG (only the handshake comes as OP_QUERY, and it is
          * aspen's): send the command as the body. */
         (void) bson_init_static(&one.body, bson_get_data(req->cmd),
                                 req->cmd->len);
         msg = &one;
      }
      aspen_upstream_forward(be->up, msg, req->name, lsid_key, cb, arg);
      return;
   }
   lanes_submit(be, req->db, req->cmd, lsid_key, aspen_session_id(req->sess),
                cb, arg);
}

void
aspen_backend_end_sessions(aspen_backend_t *be, const bson_t *ids)
{
   bson_iter_t it;
   if (be->up) {
      /* The backend ends them: as the lsids it was sent (each key made
       * the backend's, as aspen_upstream_forward does). */
      aspen_op_msg_t msg = {0};
      bson_t cmd = BSON_INITIALIZER, arr;
      BSON_APPEND_ARRAY_BEGIN(&cmd, "endSessions", &arr);
      if (bson_iter_init(&it, ids)) {
         while (bson_iter_next(&it)) {
            bson_t key, lsid;
            if (BSON_ITER_HOLDS_DOCUMENT(&it) && aspen_bson_view(&it, &key)) {
               aspen_upstream_backend_lsid(&key, &lsid);
               BSON_APPEND_DOCUMENT(&arr, bson_iter_key(&it), &lsid);
               bson_destroy(&lsid);
            }
         }
      }
      bson_append_array_end(&cmd, &arr);
      BSON_APPEND_UTF8(&cmd, "$db", "admin");
      (void) bson_init_static(&msg.body, bson_get_data(&cmd), cmd.len);
      aspen_upstream_forward(be->up, &msg, "endSessions", NULL, NULL, NULL);
      bson_destroy(&cmd);
      return;
   }
   if (!bson_iter_init(&it, ids)) {
      return;
   }
   while (bson_iter_next(&it)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         continue;
      }
      uint32_t len;
      const uint8_t *data;
      bson_t lsid;
      bson_iter_document(&it, &len, &data);
      if (!bson_init_static(&lsid, data, len)) {
         continue;
      }
      aspen_backend_job_t *job = aspen_xcalloc(1, sizeof *job);
      job->kind = JOB_END_SESSION;
      bson_init(&job->cmd);
      bson_init(&job->reply);
      bson_copy_to(&lsid, &job->lsid);
      job->has_lsid = true;
      enqueue(be, lane_for_lsid(be, &lsid), job);
   }
}

/* ---- what the backend is (topology.c presents aspen accordingly) ---- */

void
aspen_backend_facts(const aspen_backend_t *be, aspen_backend_facts_t *out)
{
   *out = be->facts;
}

void
aspen_backend_set_facts_hook(aspen_backend_t *be, aspen_backend_facts_cb cb,
                             void *arg)
{
   be->facts_cb = cb;
   be->facts_arg = arg;
}

/* Reads the facts aspen presents from an isMaster reply. A replica-set
 * member (setName) or a mongos (msg "isdbgrid") that has
 * logicalSessionTimeoutMinutes supports sessions, retryable writes and
 * transactions; a standalone supports none of them. */
static void
facts_parse(const bson_t *reply, aspen_backend_facts_t *f)
{
   bson_iter_t it;
   bool ok = false, rs_or_mongos = false;
   f->session_timeout_minutes = -1;
   f->max_wire_version = 0;
   if (bson_iter_init(&it, reply)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "ok") == 0) {
            ok = bson_iter_as_double(&it) == 1.0;
         } else if (strcmp(k, "setName") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
            rs_or_mongos = true;
         } else if (strcmp(k, "msg") == 0 && BSON_ITER_HOLDS_UTF8(&it) &&
                    strcmp(bson_iter_utf8(&it, NULL), "isdbgrid") == 0) {
            rs_or_mongos = true;
         } else if (strcmp(k, "logicalSessionTimeoutMinutes") == 0 &&
                    BSON_ITER_HOLDS_NUMBER(&it)) {
            int64_t v = bson_iter_as_int64(&it);
            f->session_timeout_minutes =
               v < 0 ? -1 : v > INT32_MAX ? INT32_MAX : (int32_t) v;
         } else if (strcmp(k, "maxWireVersion") == 0 &&
                    BSON_ITER_HOLDS_NUMBER(&it)) {
            int64_t v = bson_iter_as_int64(&it);
            f->max_wire_version =
               v < 0 ? 0 : v > INT32_MAX ? INT32_MAX : (int32_t) v;
         }
      }
   }
   f->known = ok;
   f->transactions = ok && rs_or_mongos && f->session_timeout_minutes >= 0;
}

static void
probe_done(void *arg, const bson_t *reply)
{
   aspen_backend_t *be = arg;
   aspen_backend_facts_t f;
   memset(&f, 0, sizeof f);
   facts_parse(reply, &f);
   be->probing = false;
   be->facts_at_ms = uv_now(be->loop);
   if (f.known) {
      be->facts = f;
   } else if (!be->facts.known) {
      /* Not reachable (or its login refused): what a driver would make of
       * it, a standalone, until a hello at least FACTS max age later asks
       * again; not at every hello, which would turn each client's
       * handshake into a login attempt the backend may throttle. */
      be->facts.session_timeout_minutes = -1;
   }
   be->facts.probed = true;
   if (be->facts_cb && !be->destroying) {
      be->facts_cb(be->facts_arg, &be->facts);
   }
}

void
aspen_backend_probe(aspen_backend_t *be, uint64_t max_age_ms)
{
   if (be->probing || be->destroying ||
       (be->facts.probed && be->facts_at_ms != 0 &&
        uv_now(be->loop) - be->facts_at_ms < max_age_ms)) {
      return;
   }
   be->probing = true;
   bson_t cmd = BSON_INITIALIZER;
   BSON_APPEND_INT32(&cmd, "isMaster", 1);
   BSON_APPEND_UTF8(&cmd, "$db", "admin");
   if (be->up) {
      aspen_op_msg_t msg = {0};
      (void) bson_init_static(&msg.body, bson_get_data(&cmd), cmd.len);
      aspen_upstream_forward(be->up, &msg, "isMaster", NULL, probe_done, be);
   } else {
      lanes_submit(be, "admin", &cmd, NULL, 0, probe_done, be);
   }
   bson_destroy(&cmd);
}

static void
on_async_closed(uv_handle_t *h)
{
   free(h->data);
}

void
aspen_backend_destroy(aspen_backend_t *be)
{
   if (!be) {
      return;
   }
   be->destroying = true;
   if (be->up) {
      aspen_upstream_destroy(be->up);
      mongoc_uri_destroy(be->uri);
      free(be);
      return;
   }
   for (int i = 0; i < be->n_lanes; i++) {
      lane_t *lane = &be->lanes[i];
      pthread_mutex_lock(&lane->mu);
      lane->stop = true;
      pthread_cond_signal(&lane->cv);
      pthread_mutex_unlock(&lane->mu);
   }
   for (int i = 0; i < be->n_lanes; i++) {
      lane_t *lane = &be->lanes[i];
      pthread_join(lane->thread, NULL);
      /* Jobs that never ran still owe their caller an answer. */
      aspen_backend_job_t *job = lane->head;
      while (job) {
         aspen_backend_job_t *next = job->next;
         if (job->kind == JOB_COMMAND) {
            aspen_reply_error(&job->reply, ASPEN_ERR_HostUnreachable,
                              "aspen is shutting down");
            job->cb(job->arg, &job->reply);
         }
         job_free(job);
         job = next;
      }
      pthread_mutex_destroy(&lane->mu);
      pthread_cond_destroy(&lane->cv);
   }
   on_async(&be->async);
   free(be->lanes);
   mongoc_client_pool_destroy(be->pool);
   mongoc_uri_destroy(be->uri);
   pthread_mutex_destroy(&be->done_mu);
   uv_close((uv_handle_t *) &be->async, on_async_closed);
}
