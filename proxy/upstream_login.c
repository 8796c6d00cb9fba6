/*
 * upstream_login.c - a relay connection's handshake and login (see
 * upstream_int.h): isMaster (OP_MSG, with saslSupportedMechs when there are
 * credentials), then, with credentials, SCRAM: saslStart, saslContinue
 * (and the empty last step of a server that ignores skipEmptyExchange).
 * PBKDF2 runs on libuv's thread pool, and its keys are reused while the
 * server sends the same salt. Every step is a callback; nothing blocks the
 * loop.
 */
#include "upstream_int.h"

#include <string.h>

#define COMPONENT ASPEN_UPSTREAM_COMPONENT

static int32_t
reply_code(const bson_t *body, bool *ok)
{
   bson_iter_t it;
   int32_t code = 0;
   *ok = false;
   if (bson_iter_init(&it, body)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "ok") == 0) {
            *ok = bson_iter_as_double(&it) == 1.0;
         } else if (strcmp(k, "code") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
            code = (int32_t) bson_iter_as_int64(&it);
         }
      }
   }
   return code;
}

static const char *
reply_errmsg(const bson_t *body)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, body, "errmsg") && BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return "no errmsg";
}

void
aspen__upstream_login_start(up_conn_t *conn)
{
   aspen_upstream_t *up = conn->up;
   bson_t doc = BSON_INITIALIZER, client, sub;
   BSON_APPEND_INT32(&doc, "isMaster", 1);
   BSON_APPEND_BOOL(&doc, "helloOk", true);
   BSON_APPEND_DOCUMENT_BEGIN(&doc, "client", &client);
   if (up->appname[0]) {
      BSON_APPEND_DOCUMENT_BEGIN(&client, "application", &sub);
      BSON_APPEND_UTF8(&sub, "name", up->appname);
      bson_append_document_end(&client, &sub);
   }
   BSON_APPEND_DOCUMENT_BEGIN(&client, "driver", &sub);
   BSON_APPEND_UTF8(&sub, "name", "aspen relay");
   BSON_APPEND_UTF8(&sub, "version", ASPEN_VERSION);
   bson_append_document_end(&client, &sub);
   BSON_APPEND_DOCUMENT_BEGIN(&client, "os", &sub);
   BSON_APPEND_UTF8(&sub, "type", "Linux");
   bson_append_document_end(&client, &sub);
   bson_append_document_end(&doc, &client);
   if (up->user && !up->mech_fixed) {
      char who[512];
      snprintf(who, sizeof who, "%s.%s", up->auth_source, up->user);
      BSON_APPEND_UTF8(&doc, "saslSupportedMechs", who);
   }
   BSON_APPEND_UTF8(&doc, "$db", "admin");
   aspen__upstream_conn_set_state(conn, UC_HELLO);
   aspen__upstream_conn_send_doc(conn, &doc);
   bson_destroy(&doc);
}

/* The handshake (and login) is done: the connection counts as opened. */
static void
conn_established(up_conn_t *conn)
{
   up_server_t *srv = conn->srv;
   if (conn->counted_opening) {
      conn->counted_opening = false;
      srv->n_opening--;
   }
   conn->deadline_ms = 0;
   conn->up->stats.opened++;
   aspen_scram_client_destroy(conn->scram);
   conn->scram = NULL;
   memset(&conn->keys, 0, sizeof conn->keys);
   if (srv->down_logged) {
      srv->down_logged = false;
      aspen_logf(ASPEN_LOG_INFO, COMPONENT, conn->ctx,
                 "the backing MongoDB deployment at %s is reachable again",
                 srv->name);
   }
}

static void sasl_continue(up_conn_t *conn);

static void
sasl_start(up_conn_t *conn)
{
   aspen_upstream_t *up = conn->up;
   char first[ASPEN_SCRAM_MSG_MAX];
   aspen_error_t err;
   conn->scram = aspen_scram_client_new(conn->mech);
   size_t n = aspen_scram_client_first(conn->scram, up->user, first, &err);
   if (n == 0) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "cannot log in: %s", err.message);
      return;
   }
   bson_t doc = BSON_INITIALIZER, opts;
   BSON_APPEND_INT32(&doc, "saslStart", 1);
   BSON_APPEND_UTF8(&doc, "mechanism", aspen_scram_mech_name(conn->mech));
   bson_append_binary(&doc, "payload", -1, BSON_SUBTYPE_BINARY,
                      (const uint8_t *) first, (uint32_t) n);
   BSON_APPEND_INT32(&doc, "autoAuthorize", 1);
   BSON_APPEND_DOCUMENT_BEGIN(&doc, "options", &opts);
   BSON_APPEND_BOOL(&opts, "skipEmptyExchange", true);
   bson_append_document_end(&doc, &opts);
   BSON_APPEND_UTF8(&doc, "$db", up->auth_source);
   aspen__upstream_conn_set_state(conn, UC_SASL_START);
   aspen__upstream_conn_send_doc(conn, &doc);
   bson_destroy(&doc);
}

/* True when the connection is ready (no credentials to log in with). */
static bool
handle_hello(up_conn_t *conn, const bson_t *body)
{
   aspen_upstream_t *up = conn->up;
   bool ok;
   int32_t code = reply_code(body, &ok);
   bson_iter_t it, arr;
   if (!ok) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "the handshake failed: %s (code %d)",
                                reply_errmsg(body), code);
      return false;
   }
   int64_t max_wire = 0;
   if (bson_iter_init_find(&it, body, "maxWireVersion") &&
       BSON_ITER_HOLDS_NUMBER(&it)) {
      max_wire = bson_iter_as_int64(&it);
   }
   if (max_wire < 6) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
         "the server's maxWireVersion is %lld: aspen needs OP_MSG "
         "(MongoDB 3.6 or later)", (long long) max_wire);
      return false;
   }
   if (bson_iter_init_find(&it, body, "msg") && BSON_ITER_HOLDS_UTF8(&it) &&
       strcmp(bson_iter_utf8(&it, NULL), "isdbgrid") == 0) {
      up->backend_is_mongos = true;
   }
   if (!up->user) {
      conn_established(conn);
      return true;
   }
   conn->mech = up->mech;
   if (!up->mech_fixed) {
      /* SCRAM-SHA-256 when the server has it for this user, else SHA-1. */
      conn->mech = ASPEN_SCRAM_SHA_1;
      if (bson_iter_init_find(&it, body, "saslSupportedMechs") &&
          BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &arr)) {
         while (bson_iter_next(&arr)) {
            if (BSON_ITER_HOLDS_UTF8(&arr) &&
                strcmp(bson_iter_utf8(&arr, NULL), "SCRAM-SHA-256") == 0) {
               conn->mech = ASPEN_SCRAM_SHA_256;
            }
         }
      }
   }
   sasl_start(conn);
   return false;
}

/* Libuv's thread pool: PBKDF2 for a salt the cache does not hold. */
static void
derive_work(uv_work_t *w)
{
   up_conn_t *conn = w->data;
   conn->work_ok = aspen_scram_keys_derive(
      conn->mech, conn->up->user, conn->up->password, conn->salt,
      conn->salt_len, conn->iterations, &conn->keys, &conn->work_err);
}

static void
derive_done(uv_work_t *w, int status)
{
   up_conn_t *conn = w->data;
   aspen_upstream_t *up = conn->up;
   if (conn->state == UC_CLOSED || status != 0) {
      aspen__upstream_conn_release(conn);
      return;
   }
   if (!conn->work_ok) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                "cannot log in: %s", conn->work_err.message);
      aspen__upstream_conn_release(conn);
      return;
   }
   up->keys_cached = true;
   up->keys_mech = conn->mech;
   memcpy(up->keys_salt, conn->salt, conn->salt_len);
   up->keys_salt_len = conn->salt_len;
   up->keys_iterations = conn->iterations;
   up->keys = conn->keys;
   sasl_continue(conn);
   aspen__upstream_conn_release(conn);
}

static void
sasl_continue(up_conn_t *conn)
{
   char final[ASPEN_SCRAM_MSG_MAX];
   size_t n = aspen_scram_client_final(conn->scram, &conn->keys, final);
   bson_t doc = BSON_INITIALIZER;
   BSON_APPEND_INT32(&doc, "saslContinue", 1);
   BSON_APPEND_INT32(&doc, "conversationId", conn->conversation_id);
   bson_append_binary(&doc, "payload", -1, BSON_SUBTYPE_BINARY,
                      (const uint8_t *) final, (uint32_t) n);
   BSON_APPEND_UTF8(&doc, "$db", conn->up->auth_source);
   aspen__upstream_conn_set_state(conn, UC_SASL_CONTINUE);
   aspen__upstream_conn_send_doc(conn, &doc);
   bson_destroy(&doc);
}

/* True when the conversation is done and the connection ready. */
static bool
handle_sasl(up_conn_t *conn, const bson_t *body)
{
   aspen_upstream_t *up = conn->up;
   bool ok;
   int32_t code = reply_code(body, &ok);
   aspen_error_t err;
   if (!ok) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
         "cannot log in as '%s' (%s on %s): %s (code %d)", up->user,
         aspen_scram_mech_name(conn->mech), up->auth_source, reply_errmsg(body),
         code);
      return false;
   }
   bson_iter_t it;
   const uint8_t *payload = NULL;
   uint32_t plen = 0;
   bool done = false;
   if (bson_iter_init(&it, body)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "payload") == 0 && BSON_ITER_HOLDS_BINARY(&it)) {
            bson_subtype_t st;
            bson_iter_binary(&it, &st, &plen, &payload);
         } else if (strcmp(k, "conversationId") == 0 &&
                    BSON_ITER_HOLDS_NUMBER(&it)) {
            conn->conversation_id = (int32_t) bson_iter_as_int64(&it);
         } else if (strcmp(k, "done") == 0) {
            done = bson_iter_as_bool(&it);
         }
      }
   }
   if (conn->state == UC_SASL_START) {
      if (!payload ||
          !aspen_scram_client_challenge(conn->scram, payload, plen,
                                        conn->salt, &conn->salt_len,
                                        &conn->iterations, &err)) {
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                   "cannot log in as '%s': %s", up->user,
                                   payload ? err.message :
                                   "saslStart reply has no payload");
         return false;
      }
      if (up->keys_cached && up->keys_mech == conn->mech &&
          up->keys_iterations == conn->iterations &&
          up->keys_salt_len == conn->salt_len &&
          memcmp(up->keys_salt, conn->salt, conn->salt_len) == 0) {
         conn->keys = up->keys;
         sasl_continue(conn);
         return false;
      }
      aspen__upstream_conn_set_state(conn, UC_SASL_KEYS);
      conn->work.data = conn;
      conn->refs++;
      if (uv_queue_work(up->loop, &conn->work, derive_work, derive_done) !=
          0) {
         conn->refs--;
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
            "cannot log in: no worker thread for PBKDF2");
      }
      return false;
   }
   if (conn->state == UC_SASL_CONTINUE) {
      if (!payload ||
          !aspen_scram_client_verify(conn->scram, payload, plen, &err)) {
         aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
                                   "cannot log in as '%s': %s", up->user,
                                   payload ? err.message :
                                   "saslContinue reply has no payload");
         return false;
      }
   }
   if (done) {
      conn_established(conn);
      return true;
   }
   /* A server that ignores skipEmptyExchange wants one empty step more. */
   if (conn->state == UC_SASL_FINAL) {
      aspen__upstream_conn_fail(conn, ASPEN_ERR_HostUnreachable,
         "cannot log in as '%s': the conversation does not end", up->user);
      return false;
   }
   bson_t doc = BSON_INITIALIZER;
   BSON_APPEND_INT32(&doc, "saslContinue", 1);
   BSON_APPEND_INT32(&doc, "conversationId", conn->conversation_id);
   bson_append_binary(&doc, "payload", -1, BSON_SUBTYPE_BINARY,
                      (const uint8_t *) "", 0);
   BSON_APPEND_UTF8(&doc, "$db", up->auth_source);
   aspen__upstream_conn_set_state(conn, UC_SASL_FINAL);
   aspen__upstream_conn_send_doc(conn, &doc);
   bson_destroy(&doc);
   return false;
}

bool
aspen__upstream_login_on_reply(up_conn_t *conn, const bson_t *body)
{
   if (conn->state == UC_HELLO) {
      return handle_hello(conn, body);
   }
   return handle_sasl(conn, body);
}
