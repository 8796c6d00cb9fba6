/*
 * cmd_auth.c - aspen's own authentication: saslStart / saslContinue (SCRAM
 * per scram.c, with skipEmptyExchange), authenticate with MONGODB-X509 (the
 * verified TLS client certificate's subject as a $external user),
 * speculative authentication and saslSupportedMechs in hello, logout,
 * connectionStatus, and the check the router runs before every command
 * (authenticated? privileged?). It also feeds the audit log (audit.c):
 * logins, logouts, connection ends, refusals, stream-processor management.
 *
 * Authentication never reaches the backend: forwarded commands run with
 * aspen's own backend credentials, after this file has checked the user's
 * privileges (see aspen_principal_may_run in principal.c).
 *
 * With access control on, each backend session is keyed by the client's
 * lsid and the user (aspen_auth_session_key), as mongod's session ids are,
 * and forwarded cursors are tracked to their opener (cursor_owners.c).
 *
 * Every refusal of a login is the same to the client ({ok:0, code:18,
 * "Authentication failed."}) whatever went wrong, and is logged once with
 * the client address and the reason (never a password, proof or key).
 * Failed logins are rate-limited per (client address, user). Loop thread
 * only.
 */
#include "auth.h"

#include <string.h>

#define COMPONENT "ACCESS"
/* Failed logins allowed per (client address, user) in one window before
 * further attempts at that user from that address are refused without
 * being tried. */
#define FAIL_LIMIT 10
#define FAIL_WINDOW_MS 60000
#define FAIL_SLOTS 1024

struct aspen_auth_state {
   aspen_principal_t *principal; /* NULL: not authenticated */
   aspen_scram_t *conv;          /* the SASL conversation in progress */
   int32_t conv_id;
   int32_t next_conv_id;
   bool conv_skip_empty;     /* options.skipEmptyExchange */
   bool conv_awaiting_empty; /* server-final sent with done:false */
   bool conv_speculative;
   char conv_db[64];
};

void
aspen_auth_state_destroy(aspen_auth_state_t *st)
{
   if (st) {
      aspen_principal_destroy(st->principal);
      aspen_scram_destroy(st->conv);
      free(st);
   }
}

size_t
aspen_auth_max_message(aspen_server_t *srv, aspen_session_t *sess)
{
   size_t max = srv->cfg->max_message_size;
   const aspen_auth_state_t *st = aspen_session_auth(sess);
   if (srv->users && aspen_users_auth_required(srv->users) &&
       !(st && st->principal) && max > ASPEN_PREAUTH_MAX_MESSAGE) {
      max = ASPEN_PREAUTH_MAX_MESSAGE;
   }
   return max;
}

static aspen_auth_state_t *
state_of(aspen_session_t *sess)
{
   aspen_auth_state_t *st = aspen_session_auth(sess);
   if (!st) {
      st = aspen_xcalloc(1, sizeof *st);
      aspen_session_set_auth(sess, st);
   }
   return st;
}

static void
end_conversation(aspen_auth_state_t *st)
{
   aspen_scram_destroy(st->conv);
   st->conv = NULL;
   st->conv_id = 0;
   st->conv_awaiting_empty = false;
}

/* ---- per-(address, user) rate limit ------------------------------------------ */

/* Failures are counted per client address and user (with its
 * authentication database): guessing one user's password is throttled, a
 * success clears only that user's count, and one user's failures never
 * lock out another user on the same address (a shared NAT, a CI box).
 * Attempts that name no user (an unsupported mechanism, a malformed
 * payload) count under the empty user. The table is fixed; when it is full
 * the slot with the fewest failures (the oldest among those) is reused, so
 * an attacker failing with many made-up names evicts its own one-failure
 * slots before a throttled user's. A user name longer than the slot keeps
 * its prefix: such users share a count, which errs on the strict side. */
typedef struct {
   char host[64];
   char user[256]; /* "<db>.<user>" */
   uint64_t window_start;
   int failures;
} fail_slot_t;

static fail_slot_t fail_slots[FAIL_SLOTS];

/* The address part of "host:port". */
static void
peer_host(aspen_session_t *sess, char *out, size_t size)
{
   const char *peer = aspen_session_peer(sess);
   const char *colon = strrchr(peer, ':');
   size_t n = colon ? (size_t) (colon - peer) : strlen(peer);
   snprintf(out, size, "%.*s", (int) n, peer);
}

/* How worth keeping a slot is: -1 when free or its window has run out,
 * else its failure count. */
static int
slot_rank(const fail_slot_t *s, uint64_t now)
{
   return !s->host[0] || now - s->window_start > FAIL_WINDOW_MS
             ? -1
             : s->failures;
}

/* The slot of (this session's address, db.user), its window restarted if
 * it has run out; NULL when there is none and `create` is false. */
static fail_slot_t *
fail_slot(aspen_session_t *sess, const char *db, const char *user,
          bool create)
{
   char host[sizeof fail_slots[0].host];
   char key[sizeof fail_slots[0].user];
   uint64_t now = aspen_clock_now_ms();
   fail_slot_t *victim = NULL;
   peer_host(sess, host, sizeof host);
   snprintf(key, sizeof key, "%s.%s", db ? db : "", user ? user : "");
   for (int i = 0; i < FAIL_SLOTS; i++) {
      fail_slot_t *s = &fail_slots[i];
      if (s->host[0] && strcmp(s->host, host) == 0 &&
          strcmp(s->user, key) == 0) {
         if (now - s->window_start > FAIL_WINDOW_MS) {
            s->window_start = now;
            s->failures = 0;
         }
         return s;
      }
      /* Free or expired slots first, then the fewest failures, oldest. */
      if (!victim || slot_rank(s, now) < slot_rank(victim, now) ||
          (slot_rank(s, now) == slot_rank(victim, now) &&
           s->window_start < victim->window_start)) {
         victim = s;
      }
   }
   if (!create) {
      return NULL;
   }
   snprintf(victim->host, sizeof victim->host, "%s", host);
   snprintf(victim->user, sizeof victim->user, "%s", key);
   victim->window_start = now;
   victim->failures = 0;
   return victim;
}

static bool
rate_limited(aspen_session_t *sess, const char *db, const char *user)
{
   fail_slot_t *s = fail_slot(sess, db, user, false);
   return s && s->failures >= FAIL_LIMIT;
}

#define THROTTLED                                                              \
   "too many failed logins for this user from this address; try again in "     \
   "a minute"

/* ---- replies and logs ---------------------------------------------------------- */

static void
reply_auth_failed(bson_t *reply)
{
   bson_reinit(reply);
   aspen_reply_error(reply, ASPEN_ERR_AuthenticationFailed,
                     "Authentication failed.");
}

/* Starts an audit event's `unmapped` document with the connection id. */
static void
audit_extra_init(aspen_session_t *sess, bson_t *extra)
{
   bson_init(extra);
   BSON_APPEND_INT64(extra, "connectionId", (int64_t) aspen_session_id(sess));
}

/* Writes `ev` for this session: the client address, `extra` (destroyed
 * here) as `unmapped`, and, unless ev->user is set, the session's user as
 * the actor. */
static void
audit_session(aspen_server_t *srv, aspen_session_t *sess,
              aspen_audit_event_t *ev, bson_t *extra)
{
   aspen_auth_state_t *st = aspen_session_auth(sess);
   const aspen_principal_t *p = st ? st->principal : NULL;
   if (!ev->user && p) {
      ev->user = aspen_principal_user(p);
      ev->db = aspen_principal_db(p);
   }
   ev->peer = aspen_session_peer(sess);
   ev->unmapped = extra;
   aspen_audit_write(srv->audit, ev);
   bson_destroy(extra);
}

/* Logs a login's outcome once, with mongod's message and id ("Successfully
 * authenticated" 5286306, "Authentication failed" 5286307). `why` is NULL
 * on success. A failure counts against (client address, db.user); a
 * success clears that count only. */
static void
log_login(aspen_request_t *req, const char *mech, const char *user,
          const char *db, bool speculative, const char *why)
{
   aspen_session_t *sess = req->sess;
   fail_slot_t *s = fail_slot(sess, db, user, why != NULL);
   if (s) {
      s->failures = why ? s->failures + 1 : 0;
   }
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "mechanism", mech ? mech : "");
   BSON_APPEND_BOOL(&attr, "speculative", speculative);
   BSON_APPEND_UTF8(&attr, "principalName", user ? user : "");
   BSON_APPEND_UTF8(&attr, "authenticationDatabase", db ? db : "");
   BSON_APPEND_UTF8(&attr, "remote", aspen_session_peer(sess));
   if (why) {
      BSON_APPEND_UTF8(&attr, "error", why);
   }
   char ctx[32];
   snprintf(ctx, sizeof ctx, "conn%llu",
            (unsigned long long) aspen_session_id(sess));
   aspen_log(why ? ASPEN_LOG_WARNING : ASPEN_LOG_INFO, COMPONENT,
             why ? 5286307 : 5286306, ctx,
             why ? "Authentication failed" : "Successfully authenticated",
             &attr);
   bson_destroy(&attr);
   if (req->srv->audit) {
      bson_t extra;
      audit_extra_init(sess, &extra);
      BSON_APPEND_UTF8(&extra, "mechanism", mech ? mech : "");
      BSON_APPEND_BOOL(&extra, "speculative", speculative);
      if (why) {
         BSON_APPEND_UTF8(&extra, "reason", why);
      }
      /* The name the client claimed (it may not exist) is the actor. */
      aspen_audit_event_t ev = {
         .class_name = "Authentication",
         .class_uid = 3002,
         .activity = "Logon",
         .activity_id = 1,
         .user = user ? user : "",
         .db = db,
         .operation = req->name,
         .success = why == NULL,
         .status_detail = why ? "Authentication failed." : NULL,
      };
      audit_session(req->srv, sess, &ev, &extra);
   }
}

/* Audits a logout (`op` "logout") or a connection's end ("endConnection")
 * with the user logged in then, if any. */
static void
audit_logoff(aspen_server_t *srv, aspen_session_t *sess, const char *op)
{
   if (!srv->audit) {
      return;
   }
   bson_t extra;
   audit_extra_init(sess, &extra);
   aspen_audit_event_t ev = {
      .class_name = "Authentication",
      .class_uid = 3002,
      .activity = "Logoff",
      .activity_id = 2,
      .operation = op,
      .success = true,
   };
   audit_session(srv, sess, &ev, &extra);
}

void
aspen_auth_session_closed(aspen_server_t *srv, aspen_session_t *sess)
{
   audit_logoff(srv, sess, "endConnection");
}

/* The OCSF API Activity of a stream-processor command (what it does to a
 * processor: the engine's command table says), or NULL when the command
 * is not a management event. */
static const char *
sp_activity(const char *op, int *id)
{
   static const struct {
      unsigned flag;
      const char *activity;
      int id;
   } rows[] = {
      {ASPEN_ENGINE_CMD_CREATES, "Create", 1},
      {ASPEN_ENGINE_CMD_UPDATES, "Update", 3},
      {ASPEN_ENGINE_CMD_DELETES, "Delete", 4},
      {ASPEN_ENGINE_CMD_READS, "Read", 2},
   };
   const aspen_engine_command_t *c = aspen_engine_command_find(op);
   for (size_t i = 0; c && i < sizeof rows / sizeof rows[0]; i++) {
      if (c->flags & rows[i].flag) {
         *id = rows[i].id;
         return rows[i].activity;
      }
   }
   return NULL;
}

/* Audits command `op` of this session: refused by the authorization check
 * (`refusal` set) or run with `reply`. */
static void
audit_api(aspen_server_t *srv, aspen_session_t *sess, const char *op,
          const char *target, const bson_t *reply,
          const aspen_error_t *refusal)
{
   int activity_id = 99;
   const char *activity = sp_activity(op, &activity_id);
   if (!srv->audit || (!activity && !refusal)) {
      return;
   }
   bson_iter_t it;
   bool ok = !refusal && reply && bson_iter_init_find(&it, reply, "ok") &&
             bson_iter_as_double(&it) == 1.0;
   bson_t extra;
   audit_extra_init(sess, &extra);
   if (!target && reply && bson_iter_init_find(&it, reply, "name") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      target = bson_iter_utf8(&it, NULL); /* sp.process's processor */
   }
   if (target) {
      BSON_APPEND_UTF8(&extra, "processor", target);
   }
   const char *detail = NULL;
   if (refusal) {
      BSON_APPEND_INT32(&extra, "code", refusal->code);
      detail = refusal->message;
   } else if (!ok && reply) {
      if (bson_iter_init_find(&it, reply, "code") &&
          BSON_ITER_HOLDS_NUMBER(&it)) {
         BSON_APPEND_INT32(&extra, "code", (int32_t) bson_iter_as_int64(&it));
      }
      if (bson_iter_init_find(&it, reply, "errmsg") &&
          BSON_ITER_HOLDS_UTF8(&it)) {
         detail = bson_iter_utf8(&it, NULL);
      }
   }
   aspen_audit_event_t ev = {
      .class_name = "API Activity",
      .class_uid = 6003,
      .activity = activity ? activity : "Other",
      .activity_id = activity_id,
      .operation = op,
      .success = ok,
      .status_detail = detail,
   };
   audit_session(srv, sess, &ev, &extra);
}

/* ---- who started which sp.process processor ------------------------------------ */

/* mongosh drops sp.process's ephemeral processor when its sample loop ends
 * or on Ctrl+C, possibly over another pooled connection. A user granted
 * processStreamProcessor + sampleStreamProcessor but not
 * dropStreamProcessor must be able to, so aspen remembers who started each
 * one (per server, by user, not connection) and lets that user drop it.
 * The oldest entry is forgotten when the table is full: such a processor
 * has long ended with its connection anyway. */
#define OWNED_MAX 128

typedef struct {
   char name[64];   /* "__process_<hex>"; "" = free */
   char owner[600]; /* "<db>.<user>" */
} owned_t;

static owned_t owned[OWNED_MAX];
static unsigned owned_next;

static void
owner_key(const aspen_principal_t *p, char *out, size_t size)
{
   snprintf(out, size, "%s.%s", aspen_principal_db(p),
            aspen_principal_user(p));
}

static owned_t *
owned_find(const char *name)
{
   for (int i = 0; i < OWNED_MAX; i++) {
      if (owned[i].name[0] && strcmp(owned[i].name, name) == 0) {
         return &owned[i];
      }
   }
   return NULL;
}

/* True when the session's user started ephemeral processor `name`. */
static bool
owns_ephemeral(const aspen_principal_t *p, const char *name)
{
   char key[sizeof owned[0].owner];
   const owned_t *o = name ? owned_find(name) : NULL;
   if (!p || !o) {
      return false;
   }
   owner_key(p, key, sizeof key);
   return strcmp(o->owner, key) == 0;
}

void
aspen_auth_sp_done(aspen_server_t *srv, aspen_session_t *sess,
                   const char *op, const char *target, const bson_t *reply)
{
   audit_api(srv, sess, op, target, reply, NULL);
   aspen_auth_state_t *st = aspen_session_auth(sess);
   bson_iter_t it;
   if (!bson_iter_init_find(&it, reply, "ok") ||
       bson_iter_as_double(&it) != 1.0) {
      return;
   }
   if (strcmp(op, "dropStreamProcessor") == 0 && target) {
      owned_t *o = owned_find(target);
      if (o) {
         o->name[0] = '\0';
      }
   } else if (strcmp(op, "processStreamProcessor") == 0 && st &&
              st->principal && bson_iter_init_find(&it, reply, "name") &&
              BSON_ITER_HOLDS_UTF8(&it)) {
      const char *name = bson_iter_utf8(&it, NULL);
      if (strncmp(name, ASPEN_EPHEMERAL_PREFIX,
                  strlen(ASPEN_EPHEMERAL_PREFIX)) != 0 ||
          strlen(name) >= sizeof owned[0].name) {
         return;
      }
      owned_t *o = &owned[owned_next++ % OWNED_MAX];
      snprintf(o->name, sizeof o->name, "%s", name);
      owner_key(st->principal, o->owner, sizeof o->owner);
   }
}

/* Reads a SASL payload: BinData (what drivers send) or a string. */
static bool
get_payload(const bson_t *doc, const uint8_t **data, uint32_t *len)
{
   bson_iter_t it;
   *data = NULL;
   *len = 0;
   if (!bson_iter_init_find(&it, doc, "payload")) {
      return false;
   }
   if (BSON_ITER_HOLDS_BINARY(&it)) {
      bson_subtype_t sub;
      bson_iter_binary(&it, &sub, len, data);
      return true;
   }
   if (BSON_ITER_HOLDS_UTF8(&it)) {
      *data = (const uint8_t *) bson_iter_utf8(&it, len);
      return true;
   }
   return false;
}

static void
append_payload(bson_t *out, const char *text, size_t len)
{
   bson_append_binary(out, "payload", 7, BSON_SUBTYPE_BINARY,
                      (const uint8_t *) text, (uint32_t) len);
}

/* ---- saslStart ------------------------------------------------------------------ */

/* Runs a saslStart (`args` is the command, or hello's speculativeAuthenticate
 * document; `db` the authentication database). On success appends
 * {conversationId, done, payload} to `out` and returns true. On failure
 * logs it and returns false with `err` set to the client's error. */
static bool
sasl_start(aspen_request_t *req, const bson_t *args, const char *db,
           bool speculative, bson_t *out, aspen_error_t *err)
{
   aspen_session_t *sess = req->sess;
   aspen_users_t *users = req->srv->users;
   bson_iter_t it, opt;
   const char *mech_name = NULL;
   aspen_scram_mech_t mech;
   aspen_error_t why;
   aspen_error_set(err, ASPEN_ERR_AuthenticationFailed,
                   "Authentication failed.");

   if (bson_iter_init_find(&it, args, "mechanism") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      mech_name = bson_iter_utf8(&it, NULL);
   }
   if (!mech_name || !aspen_scram_mech_parse(mech_name, &mech)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "Received authentication for mechanism %s which is "
                      "unknown or not enabled (aspen supports SCRAM-SHA-256 "
                      "and SCRAM-SHA-1)",
                      mech_name ? mech_name : "(none)");
      log_login(req, mech_name, NULL, db, speculative,
                  "unsupported mechanism");
      return false;
   }
   aspen_auth_state_t *st = state_of(sess);
   end_conversation(st);
   st->conv = aspen_scram_new(mech);
   const uint8_t *payload;
   uint32_t len;
   bool have = get_payload(args, &payload, &len);
   if (!have || !aspen_scram_server_start(st->conv, payload, len, &why)) {
      log_login(req, mech_name, NULL, db, speculative,
                  have ? why.message : "saslStart has no payload");
      end_conversation(st);
      return false;
   }
   /* The client-first message names the user: throttle that user only. */
   if (rate_limited(sess, db, aspen_scram_user(st->conv))) {
      log_login(req, mech_name, aspen_scram_user(st->conv), db, speculative,
                THROTTLED);
      end_conversation(st);
      return false;
   }
   aspen_users_refresh(users);

   /* Users are in "admin" (the authenticationDatabase rule); a user
    * looked up elsewhere does not exist, but the conversation goes on with
    * made-up credentials so the reply does not tell. */
   aspen_scram_cred_t cred;
   bool found = aspen_users_get_cred(users, db, aspen_scram_user(st->conv),
                                     mech, &cred);
   char msg[ASPEN_SCRAM_MSG_MAX];
   size_t n = aspen_scram_server_challenge(st->conv, found ? &cred : NULL, msg);
   memset(&cred, 0, sizeof cred);

   st->conv_id = ++st->next_conv_id;
   st->conv_speculative = speculative;
   st->conv_skip_empty = false;
   if (bson_iter_init_find(&it, args, "options") &&
       BSON_ITER_HOLDS_DOCUMENT(&it) && bson_iter_recurse(&it, &opt) &&
       bson_iter_find(&opt, "skipEmptyExchange")) {
      st->conv_skip_empty = bson_iter_as_bool(&opt);
   }
   snprintf(st->conv_db, sizeof st->conv_db, "%s", db);
   BSON_APPEND_INT32(out, "conversationId", st->conv_id);
   BSON_APPEND_BOOL(out, "done", false);
   append_payload(out, msg, n);
   return true;
}

aspen_handled_t
aspen_cmd_sasl_start(aspen_request_t *req, bson_t *reply)
{
   aspen_error_t err;
   if (!sasl_start(req, req->cmd, req->db, false, reply, &err)) {
      bson_reinit(reply);
      aspen_error_append_reply(reply, &err);
      return ASPEN_HANDLED_REPLY;
   }
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

/* ---- saslContinue ---------------------------------------------------------------- */

aspen_handled_t
aspen_cmd_sasl_continue(aspen_request_t *req, bson_t *reply)
{
   aspen_session_t *sess = req->sess;
   aspen_auth_state_t *st = aspen_session_auth(sess);
   bson_iter_t it;
   int32_t id = -1;
   if (bson_iter_init_find(&it, req->cmd, "conversationId") &&
       BSON_ITER_HOLDS_NUMBER(&it)) {
      id = (int32_t) bson_iter_as_int64(&it);
   }
   if (!st || !st->conv || id != st->conv_id) {
      aspen_reply_error(reply, ASPEN_ERR_ProtocolError,
                        "No SASL session state found");
      return ASPEN_HANDLED_REPLY;
   }
   const char *mech = aspen_scram_mech_name(aspen_scram_mech(st->conv));
   const char *user = aspen_scram_user(st->conv);
   const uint8_t *payload;
   uint32_t len;
   bool have = get_payload(req->cmd, &payload, &len);

   if (st->conv_awaiting_empty) {
      /* The extra round without skipEmptyExchange: the client sends an
       * empty message after checking our signature. */
      if (!have || len != 0) {
         log_login(req, mech, user, st->conv_db, st->conv_speculative,
                     "expected an empty SASL message");
         end_conversation(st);
         reply_auth_failed(reply);
         return ASPEN_HANDLED_REPLY;
      }
      BSON_APPEND_INT32(reply, "conversationId", st->conv_id);
      BSON_APPEND_BOOL(reply, "done", true);
      append_payload(reply, "", 0);
      aspen_reply_ok(reply);
      end_conversation(st);
      return ASPEN_HANDLED_REPLY;
   }

   char out[ASPEN_SCRAM_MSG_MAX];
   size_t out_len;
   aspen_error_t err;
   if (!have || !aspen_scram_server_finish(st->conv, payload, len, out,
                                           &out_len, &err)) {
      log_login(req, mech, user, st->conv_db, st->conv_speculative,
                  have ? err.message : "saslContinue has no payload");
      end_conversation(st);
      reply_auth_failed(reply);
      return ASPEN_HANDLED_REPLY;
   }
   aspen_principal_t *p =
      aspen_users_principal_new(req->srv->users, st->conv_db, user);
   if (!p) { /* removed from the users file meanwhile */
      log_login(req, mech, user, st->conv_db, st->conv_speculative,
                  "user no longer exists");
      end_conversation(st);
      reply_auth_failed(reply);
      return ASPEN_HANDLED_REPLY;
   }
   aspen_principal_destroy(st->principal);
   st->principal = p;
   log_login(req, mech, user, st->conv_db, st->conv_speculative, NULL);

   BSON_APPEND_INT32(reply, "conversationId", st->conv_id);
   BSON_APPEND_BOOL(reply, "done", st->conv_skip_empty);
   append_payload(reply, out, out_len);
   aspen_reply_ok(reply);
   if (st->conv_skip_empty) {
      end_conversation(st);
   } else {
      st->conv_awaiting_empty = true;
   }
   return ASPEN_HANDLED_REPLY;
}

bool
aspen__auth_login(aspen_server_t *srv, aspen_session_t *sess, const char *db,
                  const char *name)
{
   aspen_principal_t *p = aspen_users_principal_new(srv->users, db, name);
   if (!p) {
      return false;
   }
   aspen_auth_state_t *st = state_of(sess);
   aspen_principal_destroy(st->principal);
   st->principal = p;
   return true;
}

/* ---- logout, authenticate, connectionStatus -------------------------------------- */

aspen_handled_t
aspen_cmd_logout(aspen_request_t *req, bson_t *reply)
{
   aspen_auth_state_t *st = aspen_session_auth(req->sess);
   if (st) {
      if (st->principal) {
         audit_logoff(req->srv, req->sess, "logout");
         aspen_logf(ASPEN_LOG_INFO, COMPONENT, NULL,
                    "conn%llu: user %s@%s logged out",
                    (unsigned long long) aspen_session_id(req->sess),
                    aspen_principal_user(st->principal),
                    aspen_principal_db(st->principal));
      }
      aspen_principal_destroy(st->principal);
      st->principal = NULL;
      end_conversation(st);
   }
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

/* ---- MONGODB-X509 ---------------------------------------------------------------- */

#define X509_MECH "MONGODB-X509"

/* Runs a MONGODB-X509 login: `args` is {authenticate: 1, mechanism,
 * user?} (the command, or hello's speculativeAuthenticate document), `db`
 * the authentication database. The user is the subject of the client
 * certificate TLS verified against tls.CAFile; it must be a "$external"
 * user of the users file, and `user`, when given, must name that subject.
 * On success sets the session's principal and appends mongod's {dbname,
 * user} to `out`; on failure logs why and returns false (the client only
 * ever sees "Authentication failed."). */
static bool
x509_auth(aspen_request_t *req, const bson_t *args, const char *db,
          bool speculative, bson_t *out)
{
   aspen_session_t *sess = req->sess;
   bson_iter_t it;
   const char *user = NULL;
   if (bson_iter_init_find(&it, args, "user") && BSON_ITER_HOLDS_UTF8(&it)) {
      user = bson_iter_utf8(&it, NULL);
   }
   const char *subject = aspen_session_peer_subject(sess);
   const char *name = user ? user : subject; /* whom the client claims */
   const char *why = NULL;
   if (rate_limited(sess, db, name)) {
      why = THROTTLED;
   } else if (strcmp(db, ASPEN_EXTERNAL_DB) != 0) {
      why = "MONGODB-X509 authentication must use the $external database";
   } else if (!subject) {
      why = "no verified client certificate on this connection (TLS with "
            "a certificate signed by tls.CAFile is needed)";
   } else if (user && strcmp(user, subject) != 0) {
      why = "the user name is not the client certificate's subject";
   }
   aspen_principal_t *p = NULL;
   if (!why) {
      aspen_users_refresh(req->srv->users);
      p = aspen_users_principal_new(req->srv->users, ASPEN_EXTERNAL_DB,
                                    subject);
      if (!p) {
         why = "no $external user has the client certificate's subject";
      }
   }
   if (why) {
      log_login(req, X509_MECH, name, db, speculative, why);
      return false;
   }
   aspen_auth_state_t *st = state_of(sess);
   end_conversation(st);
   aspen_principal_destroy(st->principal);
   st->principal = p;
   log_login(req, X509_MECH, subject, db, speculative, NULL);
   BSON_APPEND_UTF8(out, "dbname", ASPEN_EXTERNAL_DB);
   BSON_APPEND_UTF8(out, "user", subject);
   return true;
}

static bool
is_x509(const bson_t *args)
{
   bson_iter_t it;
   return bson_iter_init_find(&it, args, "mechanism") &&
          BSON_ITER_HOLDS_UTF8(&it) &&
          strcmp(bson_iter_utf8(&it, NULL), X509_MECH) == 0;
}

/* `authenticate` serves MONGODB-X509 (what drivers send for it, on
 * $external). MONGODB-CR (authenticate/getnonce) was removed from MongoDB;
 * passwords go through saslStart (SCRAM). */
aspen_handled_t
aspen_cmd_authenticate(aspen_request_t *req, bson_t *reply)
{
   bson_iter_t it;
   const char *mech = "MONGODB-CR";
   bool authenticate = strcmp(req->name, "authenticate") == 0;
   if (authenticate && is_x509(req->cmd)) {
      if (!x509_auth(req, req->cmd, req->db, false, reply)) {
         reply_auth_failed(reply);
         return ASPEN_HANDLED_REPLY;
      }
      aspen_reply_ok(reply);
      return ASPEN_HANDLED_REPLY;
   }
   if (authenticate && bson_iter_init_find(&it, req->cmd, "mechanism") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      mech = bson_iter_utf8(&it, NULL);
   }
   aspen_reply_error(reply, ASPEN_ERR_BadValue,
                     "Received authentication for mechanism %s which is "
                     "unknown or not enabled (aspen supports SCRAM-SHA-256 "
                     "and SCRAM-SHA-1 through saslStart, and MONGODB-X509 "
                     "through authenticate)",
                     mech);
   return ASPEN_HANDLED_REPLY;
}

aspen_handled_t
aspen_cmd_connection_status(aspen_request_t *req, bson_t *reply)
{
   bson_t info, arr, doc;
   bson_iter_t it;
   bool privs = bson_iter_init_find(&it, req->cmd, "showPrivileges") &&
                bson_iter_as_bool(&it);
   aspen_auth_state_t *st = aspen_session_auth(req->sess);
   const aspen_principal_t *p = st ? st->principal : NULL;
   BSON_APPEND_DOCUMENT_BEGIN(reply, "authInfo", &info);
   BSON_APPEND_ARRAY_BEGIN(&info, "authenticatedUsers", &arr);
   if (p) {
      BSON_APPEND_DOCUMENT_BEGIN(&arr, "0", &doc);
      BSON_APPEND_UTF8(&doc, "user", aspen_principal_user(p));
      BSON_APPEND_UTF8(&doc, "db", aspen_principal_db(p));
      bson_append_document_end(&arr, &doc);
   }
   bson_append_array_end(&info, &arr);
   BSON_APPEND_ARRAY_BEGIN(&info, "authenticatedUserRoles", &arr);
   if (p) {
      aspen_principal_append_roles(p, &arr);
   }
   bson_append_array_end(&info, &arr);
   if (privs) {
      BSON_APPEND_ARRAY_BEGIN(&info, "authenticatedUserPrivileges", &arr);
      if (p) {
         aspen_principal_append_privileges(p, &arr);
      }
      bson_append_array_end(&info, &arr);
   }
   bson_append_document_end(reply, &info);
   aspen_reply_ok(reply);
   return ASPEN_HANDLED_REPLY;
}

/* ---- hello ----------------------------------------------------------------------- */

void
aspen_auth_hello(aspen_request_t *req, bson_t *reply)
{
   bson_iter_t it;
   if (!req->srv->users) {
      return;
   }
   /* Every new connection says hello first: a user added by `aspen
    * --add-user` while aspen runs turns authentication on from here. */
   aspen_users_refresh(req->srv->users);
   /* Both mechanisms for every name, known or not: the list does not tell
    * whether a user exists (every user has both credentials). */
   if (bson_iter_init_find(&it, req->cmd, "saslSupportedMechs") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      bson_t arr;
      BSON_APPEND_ARRAY_BEGIN(reply, "saslSupportedMechs", &arr);
      BSON_APPEND_UTF8(&arr, "0", "SCRAM-SHA-1");
      BSON_APPEND_UTF8(&arr, "1", "SCRAM-SHA-256");
      bson_append_array_end(reply, &arr);
   }
   if (bson_iter_init_find(&it, req->cmd, "speculativeAuthenticate") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_t spec, out;
      bson_iter_t db_it;
      bson_iter_document(&it, &len, &data);
      if (!bson_init_static(&spec, data, len)) {
         return;
      }
      /* Drivers send MONGODB-X509 as {authenticate: 1, mechanism} with no
       * db: it is always $external. */
      bool x509 = is_x509(&spec);
      const char *db = x509 ? ASPEN_EXTERNAL_DB : "admin";
      if (bson_iter_init_find(&db_it, &spec, "db") &&
          BSON_ITER_HOLDS_UTF8(&db_it)) {
         db = bson_iter_utf8(&db_it, NULL);
      }
      /* A failed speculative start leaves the field out; the driver then
       * sees its saslStart (or authenticate) refused the ordinary way. */
      aspen_error_t err;
      bson_init(&out);
      if (x509 ? x509_auth(req, &spec, db, true, &out)
               : sasl_start(req, &spec, db, true, &out, &err)) {
         BSON_APPEND_DOCUMENT(reply, "speculativeAuthenticate", &out);
      }
      bson_destroy(&out);
   }
}

/* ---- the router's check ---------------------------------------------------------- */

/* The command's first value when it is a string (a processor or collection
 * name), for the audit log. */
static const char *
cmd_target(const bson_t *cmd)
{
   bson_iter_t it;
   if (bson_iter_init(&it, cmd) && bson_iter_next(&it) &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return NULL;
}

/* The session's user when access control is on, else NULL. */
static const aspen_principal_t *
checked_principal(aspen_request_t *req)
{
   aspen_users_t *users = req->srv->users;
   if (!users || !aspen_users_auth_required(users)) {
      return NULL;
   }
   aspen_auth_state_t *st = aspen_session_auth(req->sess);
   return st ? st->principal : NULL;
}

void
aspen_auth_cursor_owner(aspen_request_t *req, aspen_cursor_owner_t *o)
{
   aspen_cursor_owner_init(o, checked_principal(req), req->name, req->cmd);
}

/* mongod's session id is the client's lsid plus the user's digest (uid),
 * so two users sending the same lsid are in two sessions. */
static void
append_session_key(const aspen_principal_t *p, const bson_t *lsid,
                   bson_t *out)
{
   bson_concat(out, lsid);
   bson_append_binary(out, "uid", 3, BSON_SUBTYPE_BINARY,
                      aspen_principal_uid(p), ASPEN_USER_DIGEST_LEN);
}

bool
aspen_auth_session_key(aspen_request_t *req, const bson_t *lsid, bson_t *out)
{
   const aspen_principal_t *p = checked_principal(req);
   if (!p) {
      return false;
   }
   bson_init(out);
   append_session_key(p, lsid, out);
   return true;
}

bool
aspen_auth_session_keys(aspen_request_t *req, const bson_t *ids, bson_t *out)
{
   const aspen_principal_t *p = checked_principal(req);
   bson_iter_t it;
   if (!p || !bson_iter_init(&it, ids)) {
      return false;
   }
   bson_init(out);
   while (bson_iter_next(&it)) {
      bson_t id, key;
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !aspen_bson_view(&it, &id)) {
         continue;
      }
      BSON_APPEND_DOCUMENT_BEGIN(out, bson_iter_key(&it), &key);
      append_session_key(p, &id, &key);
      bson_append_document_end(out, &key);
   }
   return true;
}

/* Refuses the request: logs the authorization failure (`why`: what was
 * missing), audits it and puts `err` in the reply. */
static bool
refuse(aspen_request_t *req, const aspen_principal_t *p,
       const aspen_error_t *err, const char *why, bson_t *reply)
{
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "user", aspen_principal_user(p));
   BSON_APPEND_UTF8(&attr, "db", aspen_principal_db(p));
   BSON_APPEND_UTF8(&attr, "command", req->name);
   BSON_APPEND_UTF8(&attr, "remote", aspen_session_peer(req->sess));
   BSON_APPEND_UTF8(&attr, "error", why && *why ? why : err->message);
   char ctx[32];
   snprintf(ctx, sizeof ctx, "conn%llu",
            (unsigned long long) aspen_session_id(req->sess));
   aspen_log(ASPEN_LOG_WARNING, COMPONENT, 20436, ctx,
             "Checking authorization failed", &attr);
   bson_destroy(&attr);
   audit_api(req->srv, req->sess, req->name, cmd_target(req->cmd), NULL,
             err);
   aspen_error_append_reply(reply, err);
   return false;
}

bool
aspen_auth_check(aspen_request_t *req, const aspen_command_t *row,
                 bson_t *reply)
{
   aspen_users_t *users = req->srv->users;
   if (!users || (row && (row->flags & ASPEN_CMD_NO_AUTH)) ||
       !aspen_users_auth_required(users)) {
      return true;
   }
   aspen_auth_state_t *st = aspen_session_auth(req->sess);
   const aspen_principal_t *p = st ? st->principal : NULL;
   if (!p) {
      aspen_error_t err;
      aspen_error_set(&err, ASPEN_ERR_Unauthorized,
                      "command %s requires authentication", req->name);
      audit_api(req->srv, req->sess, req->name, cmd_target(req->cmd), NULL,
                &err);
      aspen_error_append_reply(reply, &err);
      return false;
   }
   aspen_error_t err;
   char why[ASPEN_ERROR_MSG_MAX];
   bool forwarded = !row || !(row->flags & ASPEN_CMD_LOCAL);
   if (!aspen_principal_may_run(p, req->name, req->cmd, req->db, forwarded,
                                &err, why, sizeof why)) {
      if (strcmp(req->name, "dropStreamProcessor") == 0 &&
          owns_ephemeral(p, cmd_target(req->cmd))) {
         return true; /* its own sp.process's processor */
      }
      return refuse(req, p, &err, why, reply);
   }
   /* A forwarded cursor is its opener's (cursor_owners.c). */
   aspen_cursor_owner_t owner;
   bool foreign;
   aspen_cursor_owner_init(&owner, p, req->name, req->cmd);
   if (!aspen_cursors_check(&owner, req->name, req->cmd, req->db, &foreign,
                            &err)) {
      if (foreign) {
         aspen__auth_refuse_command(req->cmd, req->db, &err);
         return refuse(req, p, &err,
                       "killCursors names a cursor another user opened",
                       reply);
      }
      if (err.code == ASPEN_ERR_Unauthorized) {
         return refuse(req, p, &err, NULL, reply);
      }
      aspen_error_append_reply(reply, &err); /* CursorNotFound */
      return false;
   }
   return true;
}
