/*
 * test_upstream.c - the forwarding relay (proxy/upstream.c,
 * proxy/upstream_topo.c) without a real server:
 *   - aspen_upstream_encode: what is stripped, what goes through byte for
 *     byte (lsid, document sequences), the flag bits;
 *   - aspen_topo_select: the primary / mongos choice on made-up topologies
 *     (stale primaries, skipped servers, no primary, load-balanced);
 *   - the relay against a scripted backend peer on the same libuv loop
 *     (an OP_MSG server: isMaster, SCRAM through aspen's own server side,
 *     then per test: echo, NotWritablePrimary, close, silence, stall), for
 *     the handshake, the login, the reply relay, the pool cap and queue, a
 *     server that is down, a connection cut mid-command, a reply that never
 *     comes and one that answers the wrong request.
 * Every loop-based test closes its handles and checks uv_loop_close == 0.
 */
#include "upstream.h"
#include "scram.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---- aspen_upstream_encode -------------------------------------------------- */

static void
test_encode_strips_and_keeps(void **state)
{
   (void) state;
   bson_t body = BSON_INITIALIZER, lsid, ct, docs_doc;
   BSON_APPEND_UTF8(&body, "insert", "c");
   BSON_APPEND_DOCUMENT_BEGIN(&body, "lsid", &lsid);
   BSON_APPEND_INT32(&lsid, "id", 7);
   bson_append_document_end(&body, &lsid);
   BSON_APPEND_DOCUMENT_BEGIN(&body, "$clusterTime", &ct);
   BSON_APPEND_INT32(&ct, "x", 1);
   bson_append_document_end(&body, &ct);
   BSON_APPEND_BOOL(&body, "ordered", true);
   BSON_APPEND_UTF8(&body, "$readPreference", "nearest");
   BSON_APPEND_UTF8(&body, "$db", "d");
   bson_init(&docs_doc);
   BSON_APPEND_INT32(&docs_doc, "_id", 1);

   aspen_op_msg_t msg = {0};
   msg.flags = ASPEN_OP_MSG_EXHAUST_ALLOWED | ASPEN_OP_MSG_MORE_TO_COME;
   (void) bson_init_static(&msg.body, bson_get_data(&body), body.len);
   msg.n_seqs = 1;
   msg.seqs[0].identifier = "documents";
   msg.seqs[0].docs = bson_get_data(&docs_doc);
   msg.seqs[0].len = docs_doc.len;
   msg.seqs[0].count = 1;

   static const char *const strip[] = {"$clusterTime", "$readPreference", NULL};
   aspen_buf_t out;
   aspen_buf_init(&out);
   aspen_upstream_encode(&out, 42, &msg, strip, NULL, NULL);

   aspen_frame_t f;
   aspen_error_t err;
   assert_int_equal(aspen_frame_parse(aspen_buf_data(&out), aspen_buf_len(&out),
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, &f, &err),
                    ASPEN_PARSE_OK);
   assert_int_equal((size_t) f.message_length, aspen_buf_len(&out));
   assert_int_equal(f.request_id, 42);
   assert_int_equal(f.response_to, 0);
   assert_int_equal(f.op_code, ASPEN_OP_MSG);
   aspen_op_msg_t back;
   assert_true(aspen_op_msg_parse(&f, &back, &err));
   assert_int_equal(back.flags, 0); /* no exhaust, no moreToCome */
   assert_false(bson_has_field(&back.body, "$clusterTime"));
   assert_false(bson_has_field(&back.body, "$readPreference"));
   bson_iter_t it;
   assert_true(bson_iter_init(&it, &back.body));
   const char *want[] = {"insert", "lsid", "ordered", "$db"};
   for (size_t i = 0; i < 4; i++) {
      assert_true(bson_iter_next(&it));
      assert_string_equal(bson_iter_key(&it), want[i]);
   }
   assert_false(bson_iter_next(&it));
   assert_true(bson_iter_init_find(&it, &back.body, "lsid"));
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(&it, &len, &data);
   assert_int_equal(len, lsid.len);
   assert_int_equal(back.n_seqs, 1);
   assert_string_equal(back.seqs[0].identifier, "documents");
   assert_int_equal(back.seqs[0].len, docs_doc.len);
   assert_memory_equal(back.seqs[0].docs, bson_get_data(&docs_doc),
                       docs_doc.len);

   /* With nothing to strip the body goes through byte for byte. */
   aspen_buf_clear(&out);
   aspen_upstream_encode(&out, 1, &msg, NULL, NULL, NULL);
   assert_int_equal(aspen_frame_parse(aspen_buf_data(&out), aspen_buf_len(&out),
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, &f, &err),
                    ASPEN_PARSE_OK);
   assert_true(aspen_op_msg_parse(&f, &back, &err));
   assert_int_equal(back.body.len, body.len);
   assert_memory_equal(bson_get_data(&back.body), bson_get_data(&body),
                       body.len);
   aspen_buf_cleanup(&out);
   bson_destroy(&body);
   bson_destroy(&docs_doc);
}

/* With access control on the backend gets a per-user lsid: same client
 * lsid and user, same backend lsid; another user, another one; without a
 * user digest the key goes as it is. The swap keeps the other fields. */
static void
test_backend_lsid(void **state)
{
   (void) state;
   uint8_t id[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
   uint8_t alice[32] = {0xa1}, bob[32] = {0xb0};
   bson_t plain = BSON_INITIALIZER, ka = BSON_INITIALIZER, kb = BSON_INITIALIZER;
   bson_append_binary(&plain, "id", 2, BSON_SUBTYPE_UUID, id, 16);
   bson_copy_to_excluding_noinit(&plain, &ka, "", NULL);
   bson_append_binary(&ka, "uid", 3, BSON_SUBTYPE_BINARY, alice, 32);
   bson_copy_to_excluding_noinit(&plain, &kb, "", NULL);
   bson_append_binary(&kb, "uid", 3, BSON_SUBTYPE_BINARY, bob, 32);
   bson_t l0, la, la2, lb;
   aspen_upstream_backend_lsid(&plain, &l0);
   aspen_upstream_backend_lsid(&ka, &la);
   aspen_upstream_backend_lsid(&ka, &la2);
   aspen_upstream_backend_lsid(&kb, &lb);
   assert_true(bson_equal(&l0, &plain));
   assert_true(bson_equal(&la, &la2));
   assert_false(bson_equal(&la, &lb));
   assert_false(bson_equal(&la, &plain));
   assert_false(bson_has_field(&la, "uid"));
   bson_iter_t it;
   bson_subtype_t st;
   uint32_t len;
   const uint8_t *bin;
   assert_true(bson_iter_init_find(&it, &la, "id"));
   bson_iter_binary(&it, &st, &len, &bin);
   assert_int_equal(st, BSON_SUBTYPE_UUID);
   assert_int_equal(len, 16);
   assert_int_equal(bin[6] >> 4, 4);

   /* In the message: lsid replaced in place, every other field kept. */
   bson_t body = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&body, "find", "c");
   BSON_APPEND_DOCUMENT(&body, "lsid", &plain);
   BSON_APPEND_INT32(&body, "batchSize", 2);
   BSON_APPEND_UTF8(&body, "$db", "d");
   aspen_op_msg_t msg = {0};
   (void) bson_init_static(&msg.body, bson_get_data(&body), body.len);
   aspen_buf_t out;
   aspen_buf_init(&out);
   aspen_upstream_encode(&out, 7, &msg, NULL, &la, NULL);
   aspen_frame_t f;
   aspen_op_msg_t back;
   aspen_error_t err;
   assert_int_equal(aspen_frame_parse(aspen_buf_data(&out), aspen_buf_len(&out),
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, &f, &err),
                    ASPEN_PARSE_OK);
   assert_true(aspen_op_msg_parse(&f, &back, &err));
   bson_t sent;
   assert_true(bson_iter_init_find(&it, &back.body, "lsid"));
   assert_true(aspen_bson_view(&it, &sent));
   assert_true(bson_equal(&sent, &la));
   assert_true(bson_iter_init(&it, &back.body));
   const char *want[] = {"find", "lsid", "batchSize", "$db"};
   for (size_t i = 0; i < 4; i++) {
      assert_true(bson_iter_next(&it));
      assert_string_equal(bson_iter_key(&it), want[i]);
   }
   aspen_buf_cleanup(&out);
   bson_destroy(&body);
   bson_destroy(&l0);
   bson_destroy(&la);
   bson_destroy(&la2);
   bson_destroy(&lb);
   bson_destroy(&plain);
   bson_destroy(&ka);
   bson_destroy(&kb);
}

/* ---- aspen_topo_select ------------------------------------------------------- */

static aspen_topo_server_t
srv(const char *host, aspen_srv_type_t type, int64_t rtt)
{
   aspen_topo_server_t s;
   memset(&s, 0, sizeof s);
   snprintf(s.host, sizeof s.host, "%s", host);
   s.port = 27017;
   s.type = type;
   s.rtt_ms = rtt;
   s.set_version = -1;
   return s;
}

static void
test_topo_select(void **state)
{
   (void) state;
   aspen_topo_server_t s[3];
   aspen_topo_t t = {ASPEN_TOPO_RS_WITH_PRIMARY, 3, s};
   s[0] = srv("a", ASPEN_SRV_RS_SECONDARY, 1);
   s[1] = srv("b", ASPEN_SRV_RS_PRIMARY, 5);
   s[2] = srv("c", ASPEN_SRV_RS_SECONDARY, 1);
   assert_int_equal(aspen_topo_select(&t, NULL), 1);
   bool skip[3] = {false, true, false};
   assert_int_equal(aspen_topo_select(&t, skip), -1); /* wait, not a secondary */

   /* A stale primary next to the new one: the larger electionId wins,
    * whatever the setVersion; equal electionIds: the larger setVersion. */
   s[0] = srv("a", ASPEN_SRV_RS_PRIMARY, 1);
   s[0].has_election_id = true;
   bson_oid_init_from_string(&s[0].election_id, "7fffffff0000000000000001");
   s[0].set_version = 9;
   s[1].has_election_id = true;
   bson_oid_init_from_string(&s[1].election_id, "7fffffff0000000000000002");
   s[1].set_version = 3;
   assert_int_equal(aspen_topo_select(&t, NULL), 1);
   bson_oid_init_from_string(&s[0].election_id, "7fffffff0000000000000002");
   assert_int_equal(aspen_topo_select(&t, NULL), 0);
   /* One without electionId (an old server) loses to one with. */
   s[0].has_election_id = false;
   assert_int_equal(aspen_topo_select(&t, NULL), 1);

   t.type = ASPEN_TOPO_RS_NO_PRIMARY;
   s[0] = srv("a", ASPEN_SRV_RS_SECONDARY, 1);
   s[1] = srv("b", ASPEN_SRV_UNKNOWN, -1);
   s[2] = srv("c", ASPEN_SRV_RS_ARBITER, 1);
   assert_int_equal(aspen_topo_select(&t, NULL), -1);

   t.type = ASPEN_TOPO_SHARDED;
   s[0] = srv("a", ASPEN_SRV_MONGOS, 9);
   s[1] = srv("b", ASPEN_SRV_MONGOS, 2);
   s[2] = srv("c", ASPEN_SRV_UNKNOWN, -1);
   assert_int_equal(aspen_topo_select(&t, NULL), 1);
   skip[1] = true;
   assert_int_equal(aspen_topo_select(&t, skip), 0);

   t.type = ASPEN_TOPO_SINGLE;
   t.n = 1;
   s[0] = srv("a", ASPEN_SRV_RS_SECONDARY, 1); /* direct: whatever it is */
   assert_int_equal(aspen_topo_select(&t, NULL), 0);
   s[0].type = ASPEN_SRV_UNKNOWN;
   assert_int_equal(aspen_topo_select(&t, NULL), -1);

   t.type = ASPEN_TOPO_LOAD_BALANCED;
   s[0].type = ASPEN_SRV_LOAD_BALANCER;
   assert_int_equal(aspen_topo_select(&t, NULL), -1);
   t.type = ASPEN_TOPO_UNKNOWN;
   assert_int_equal(aspen_topo_select(&t, NULL), -1);

   assert_int_equal(aspen_topo_type_parse("ReplicaSetWithPrimary"),
                    ASPEN_TOPO_RS_WITH_PRIMARY);
   assert_int_equal(aspen_topo_srv_type_parse("RSPrimary"),
                    ASPEN_SRV_RS_PRIMARY);
   assert_int_equal(aspen_topo_srv_type_parse("nonsense"), ASPEN_SRV_UNKNOWN);
}

/* ---- URI support ---------------------------------------------------------------- */

static void
test_supports(void **state)
{
   (void) state;
   const char *yes[] = {
      "mongodb://h:1/",
      "mongodb://u:p@h:1/?authMechanism=SCRAM-SHA-256",
      "mongodb://u:p@h:1/?authMechanism=SCRAM-SHA-1&authSource=x",
      "mongodb://h:1,h:2/?replicaSet=rs&tls=true&tlsAllowInvalidHostnames=true",
   };
   const char *no[] = {
      "mongodb://h:1/?authMechanism=MONGODB-X509&tls=true",
      "mongodb://u:p@h:1/?authMechanism=PLAIN",
      "mongodb://h:1/?loadBalanced=true",
      "mongodb://h:1/?tls=true&tlsCertificateKeyFilePassword=x",
      "mongodb://u:p%C3%A4ss@h:1/", /* beyond aspen's SASLprep */
   };
   char why[128];
   for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
      mongoc_uri_t *uri = mongoc_uri_new(yes[i]);
      assert_non_null(uri);
      assert_true(aspen_upstream_supports(uri, why, sizeof why));
      mongoc_uri_destroy(uri);
   }
   for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
      mongoc_uri_t *uri = mongoc_uri_new(no[i]);
      assert_non_null(uri);
      assert_false(aspen_upstream_supports(uri, why, sizeof why));
      assert_true(why[0] != '\0');
      mongoc_uri_destroy(uri);
   }
}

/* ---- a scripted backend peer ---------------------------------------------------- */

typedef enum {
   FAKE_ECHO,        /* {ok: 1, cmd: <name>, seen: <the body>} */
   FAKE_NOT_PRIMARY, /* {ok: 0, code: 10107} */
   FAKE_CLOSE,       /* close the connection */
   FAKE_SILENT,      /* never answer */
   FAKE_WRONG_ID,    /* answer with the wrong responseTo */
   FAKE_HOLD,        /* hold replies until `release` of them are held */
} fake_mode_t;

typedef struct fake fake_t;

typedef struct {
   uv_tcp_t tcp;
   fake_t *fake;
   aspen_buf_t in;
   aspen_scram_t *sc;
   int32_t held_request; /* FAKE_HOLD: the request whose reply waits */
   bson_t held_cmd;
   bool holding;
} fake_conn_t;

struct fake {
   uv_loop_t *loop;
   uv_tcp_t listener;
   int port;
   fake_mode_t mode;
   bool auth; /* users: "app" / "secret" for SCRAM-SHA-256 and SHA-1 */
   aspen_scram_cred_t cred[ASPEN_SCRAM_N_MECHS];
   int conns_open, conns_max, conns_total;
   int hellos, sasl_starts, commands;
   int release; /* FAKE_HOLD */
   uint32_t cluster_time; /* echo replies carry $clusterTime Timestamp(this, 1) when not 0 */
   fake_conn_t *held[16];
   int n_held;
   bson_t last_cmd; /* the last forwarded command as received */
   uint32_t last_flags;
   fake_conn_t *live[64]; /* open connections, for fake_stop */
};

static void
fake_send(fake_conn_t *fc, int32_t response_to, const bson_t *doc)
{
   aspen_buf_t out;
   size_t len;
   aspen_buf_init(&out);
   aspen_reply_op_msg(&out, 1000 + response_to, response_to, doc);
   uint8_t *data = aspen_buf_steal(&out, &len);
   uv_buf_t b = uv_buf_init((char *) data, (unsigned) len);
   int n = uv_try_write((uv_stream_t *) &fc->tcp, &b, 1);
   assert_int_equal(n, (int) len);
   free(data);
   aspen_buf_cleanup(&out);
}

static void
fake_conn_closed(uv_handle_t *h)
{
   fake_conn_t *fc = h->data;
   for (int i = 0; i < 64; i++) {
      if (fc->fake->live[i] == fc) {
         fc->fake->live[i] = NULL;
      }
   }
   fc->fake->conns_open--;
   aspen_buf_cleanup(&fc->in);
   aspen_scram_destroy(fc->sc);
   bson_destroy(&fc->held_cmd);
   free(fc);
}

static void
fake_reply_echo(fake_conn_t *fc, int32_t id, const bson_t *cmd,
                const char *name)
{
   bson_t r = BSON_INITIALIZER;
   BSON_APPEND_DOUBLE(&r, "ok", 1.0);
   BSON_APPEND_UTF8(&r, "cmd", name);
   BSON_APPEND_DOCUMENT(&r, "seen", cmd);
   if (fc->fake->cluster_time) {
      bson_t ct;
      BSON_APPEND_DOCUMENT_BEGIN(&r, "$clusterTime", &ct);
      BSON_APPEND_TIMESTAMP(&ct, "clusterTime", fc->fake->cluster_time, 1);
      BSON_APPEND_INT32(&ct, "signature", (int32_t) fc->fake->cluster_time);
      bson_append_document_end(&r, &ct);
   }
   fake_send(fc, id, &r);
   bson_destroy(&r);
}

static void
fake_sasl(fake_conn_t *fc, int32_t id, const bson_t *cmd, bool start)
{
   fake_t *fake = fc->fake;
   bson_iter_t it;
   const uint8_t *payload = NULL;
   uint32_t plen = 0;
   aspen_error_t err;
   bson_t r = BSON_INITIALIZER;
   if (bson_iter_init_find(&it, cmd, "payload") && BSON_ITER_HOLDS_BINARY(&it)) {
      bson_subtype_t st;
      bson_iter_binary(&it, &st, &plen, &payload);
   }
   if (start) {
      fake->sasl_starts++;
      const char *mech = "";
      if (bson_iter_init_find(&it, cmd, "mechanism")) {
         mech = bson_iter_utf8(&it, NULL);
      }
      aspen_scram_mech_t m;
      assert_true(aspen_scram_mech_parse(mech, &m));
      fc->sc = aspen_scram_new(m);
      char out[ASPEN_SCRAM_MSG_MAX];
      if (!aspen_scram_server_start(fc->sc, payload, plen, &err)) {
         aspen_reply_error(&r, 18, "Authentication failed.");
      } else {
         bool known = strcmp(aspen_scram_user(fc->sc), "app") == 0;
         size_t n = aspen_scram_server_challenge(
            fc->sc, known ? &fake->cred[m] : NULL, out);
         BSON_APPEND_INT32(&r, "conversationId", 1);
         BSON_APPEND_BOOL(&r, "done", false);
         bson_append_binary(&r, "payload", -1, BSON_SUBTYPE_BINARY,
                            (const uint8_t *) out, (uint32_t) n);
         BSON_APPEND_DOUBLE(&r, "ok", 1.0);
      }
   } else {
      char out[ASPEN_SCRAM_MSG_MAX];
      size_t n = 0;
      if (!fc->sc || !aspen_scram_server_finish(fc->sc, payload, plen, out, &n,
                                                &err)) {
         aspen_reply_error(&r, 18, "Authentication failed.");
      } else {
         BSON_APPEND_INT32(&r, "conversationId", 1);
         BSON_APPEND_BOOL(&r, "done", true);
         bson_append_binary(&r, "payload", -1, BSON_SUBTYPE_BINARY,
                            (const uint8_t *) out, (uint32_t) n);
         BSON_APPEND_DOUBLE(&r, "ok", 1.0);
      }
   }
   fake_send(fc, id, &r);
   bson_destroy(&r);
}

static void
fake_release_held(fake_t *fake)
{
   for (int i = 0; i < fake->n_held; i++) {
      fake_conn_t *fc = fake->held[i];
      fake_reply_echo(fc, fc->held_request, &fc->held_cmd, "held");
      fc->holding = false;
   }
   fake->n_held = 0;
}

/* Handles one request; false when the connection was closed. */
static bool
fake_handle(fake_conn_t *fc, const aspen_frame_t *f)
{
   fake_t *fake = fc->fake;
   aspen_op_msg_t msg;
   aspen_error_t err;
   assert_true(aspen_op_msg_parse(f, &msg, &err));
   bson_t cmd;
   bool owned;
   assert_true(aspen_op_msg_command(&msg, &cmd, &owned, &err));
   bson_iter_t it;
   assert_true(bson_iter_init(&it, &cmd) && bson_iter_next(&it));
   const char *name = bson_iter_key(&it);
   bool open = true;
   if (strcmp(name, "isMaster") == 0) {
      fake->hellos++;
      bson_t r = BSON_INITIALIZER, mechs;
      BSON_APPEND_BOOL(&r, "ismaster", true);
      BSON_APPEND_INT32(&r, "maxWireVersion", 17);
      if (fake->auth && bson_has_field(&cmd, "saslSupportedMechs")) {
         BSON_APPEND_ARRAY_BEGIN(&r, "saslSupportedMechs", &mechs);
         BSON_APPEND_UTF8(&mechs, "0", "SCRAM-SHA-1");
         BSON_APPEND_UTF8(&mechs, "1", "SCRAM-SHA-256");
         bson_append_array_end(&r, &mechs);
      }
      BSON_APPEND_DOUBLE(&r, "ok", 1.0);
      fake_send(fc, f->request_id, &r);
      bson_destroy(&r);
   } else if (strcmp(name, "saslStart") == 0) {
      fake_sasl(fc, f->request_id, &cmd, true);
   } else if (strcmp(name, "saslContinue") == 0) {
      fake_sasl(fc, f->request_id, &cmd, false);
   } else {
      fake->commands++;
      bson_destroy(&fake->last_cmd);
      bson_copy_to(&cmd, &fake->last_cmd);
      fake->last_flags = msg.flags;
      if (fake->auth && (!fc->sc || !aspen_scram_is_done(fc->sc))) {
         bson_t r = BSON_INITIALIZER;
         aspen_reply_error(&r, 13, "command %s requires authentication",
                           name);
         fake_send(fc, f->request_id, &r);
         bson_destroy(&r);
      } else {
         switch (fake->mode) {
         case FAKE_ECHO:
            fake_reply_echo(fc, f->request_id, &cmd, name);
            break;
         case FAKE_NOT_PRIMARY: {
            bson_t r = BSON_INITIALIZER;
            aspen_reply_error(&r, 10107, "not primary");
            fake_send(fc, f->request_id, &r);
            bson_destroy(&r);
            break;
         }
         case FAKE_CLOSE:
            uv_close((uv_handle_t *) &fc->tcp, fake_conn_closed);
            open = false;
            break;
         case FAKE_SILENT:
            break;
         case FAKE_WRONG_ID:
            fake_reply_echo(fc, f->request_id + 7, &cmd, name);
            break;
         case FAKE_HOLD:
            fc->holding = true;
            fc->held_request = f->request_id;
            bson_destroy(&fc->held_cmd);
            bson_copy_to(&cmd, &fc->held_cmd);
            fake->held[fake->n_held++] = fc;
            if (fake->n_held >= fake->release) {
               fake_release_held(fake);
            }
            break;
         }
      }
   }
   if (owned) {
      bson_destroy(&cmd);
   }
   return open;
}

static void
fake_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
   fake_conn_t *fc = h->data;
   (void) suggested;
   buf->base = (char *) aspen_buf_reserve(&fc->in, 65536);
   buf->len = 65536;
}

static void
fake_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
   fake_conn_t *fc = s->data;
   (void) buf;
   if (nread < 0) {
      if (!uv_is_closing((uv_handle_t *) s)) {
         uv_close((uv_handle_t *) s, fake_conn_closed);
      }
      return;
   }
   aspen_buf_commit(&fc->in, (size_t) nread);
   for (;;) {
      aspen_frame_t f;
      aspen_error_t err;
      if (aspen_frame_parse(aspen_buf_data(&fc->in), aspen_buf_len(&fc->in),
                            ASPEN_WIRE_MAX_MESSAGE_LEN, &f,
                            &err) != ASPEN_PARSE_OK) {
         return;
      }
      if (!fake_handle(fc, &f)) {
         return;
      }
      aspen_buf_consume(&fc->in, (size_t) f.message_length);
   }
}

static void
fake_accept(uv_stream_t *l, int status)
{
   fake_t *fake = l->data;
   assert_int_equal(status, 0);
   fake_conn_t *fc = calloc(1, sizeof *fc);
   fc->fake = fake;
   aspen_buf_init(&fc->in);
   bson_init(&fc->held_cmd);
   uv_tcp_init(fake->loop, &fc->tcp);
   fc->tcp.data = fc;
   assert_int_equal(uv_accept(l, (uv_stream_t *) &fc->tcp), 0);
   for (int i = 0; i < 64; i++) {
      if (!fake->live[i]) {
         fake->live[i] = fc;
         break;
      }
   }
   fake->conns_open++;
   fake->conns_total++;
   if (fake->conns_open > fake->conns_max) {
      fake->conns_max = fake->conns_open;
   }
   uv_read_start((uv_stream_t *) &fc->tcp, fake_alloc, fake_read);
}

static void
fake_start(fake_t *fake, uv_loop_t *loop, fake_mode_t mode, bool auth)
{
   memset(fake, 0, sizeof *fake);
   fake->loop = loop;
   fake->mode = mode;
   fake->auth = auth;
   bson_init(&fake->last_cmd);
   aspen_error_t err;
   for (int m = 0; m < ASPEN_SCRAM_N_MECHS; m++) {
      assert_true(aspen_scram_cred_make((aspen_scram_mech_t) m, "app",
                                        "secret", 4096, &fake->cred[m], &err));
   }
   struct sockaddr_in sa;
   uv_ip4_addr("127.0.0.1", 0, &sa);
   uv_tcp_init(loop, &fake->listener);
   fake->listener.data = fake;
   assert_int_equal(uv_tcp_bind(&fake->listener, (struct sockaddr *) &sa, 0),
                    0);
   assert_int_equal(
      uv_listen((uv_stream_t *) &fake->listener, 16, fake_accept), 0);
   struct sockaddr_storage ss;
   int len = sizeof ss;
   uv_tcp_getsockname(&fake->listener, (struct sockaddr *) &ss, &len);
   fake->port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
}

static void
fake_stop(fake_t *fake)
{
   uv_close((uv_handle_t *) &fake->listener, NULL);
   for (int i = 0; i < 64; i++) {
      fake_conn_t *fc = fake->live[i];
      if (fc && !uv_is_closing((uv_handle_t *) &fc->tcp)) {
         uv_close((uv_handle_t *) &fc->tcp, fake_conn_closed);
      }
   }
}

/* ---- driving the relay -------------------------------------------------------------- */

typedef struct {
   int done;
   bson_t reply;
} result_t;

static void
on_reply(void *arg, const bson_t *reply)
{
   result_t *r = arg;
   bson_destroy(&r->reply);
   bson_copy_to(reply, &r->reply);
   r->done++;
}

typedef struct {
   uv_loop_t loop;
   fake_t fake;
   aspen_upstream_t *up;
   const bson_t *lsid_key; /* what the router passes; NULL: none */
} rig_t;

static void
rig_start(rig_t *rig, fake_mode_t mode, bool auth, const char *uri_fmt)
{
   aspen_error_t err;
   char uri_str[256];
   uv_loop_init(&rig->loop);
   rig->lsid_key = NULL;
   fake_start(&rig->fake, &rig->loop, mode, auth);
   /* uri_fmt holds one "%d", the fake server's port. */
   const char *pct = strstr(uri_fmt, "%d");
   assert_non_null(pct);
   snprintf(uri_str, sizeof uri_str, "%.*s%d%s", (int) (pct - uri_fmt),
            uri_fmt, rig->fake.port, pct + 2);
   mongoc_uri_t *uri = mongoc_uri_new(uri_str);
   assert_non_null(uri);
   rig->up = aspen_upstream_new(&rig->loop, uri, &err);
   assert_non_null(rig->up);
   mongoc_uri_destroy(uri);
}

/* Forwards {name: 1, lsid, $clusterTime, $db: "d"} with `flags`. */
static void
forward(rig_t *rig, const char *name, uint32_t flags, result_t *r)
{
   bson_t body = BSON_INITIALIZER, sub;
   BSON_APPEND_INT32(&body, name, 1);
   BSON_APPEND_DOCUMENT_BEGIN(&body, "lsid", &sub);
   BSON_APPEND_INT32(&sub, "id", 99);
   bson_append_document_end(&body, &sub);
   BSON_APPEND_DOCUMENT_BEGIN(&body, "$clusterTime", &sub);
   BSON_APPEND_INT32(&sub, "clusterTime", 1);
   bson_append_document_end(&body, &sub);
   BSON_APPEND_UTF8(&body, "$db", "d");
   aspen_op_msg_t msg = {0};
   msg.flags = flags;
   (void) bson_init_static(&msg.body, bson_get_data(&body), body.len);
   bson_init(&r->reply);
   r->done = 0;
   aspen_upstream_forward(rig->up, &msg, name, rig->lsid_key, on_reply, r);
   assert_int_equal(r->done, 0); /* never from inside forward */
   bson_destroy(&body);
}

/* Runs the loop until `*done` reaches `n` (bounded by iterations; every
 * wait in these tests ends on I/O or the relay's own timers). */
static void
run_until(rig_t *rig, const int *done, int n)
{
   for (int i = 0; i < 200000 && *done < n; i++) {
      uv_run(&rig->loop, UV_RUN_ONCE);
   }
   assert_true(*done >= n);
}

static void
rig_stop(rig_t *rig)
{
   aspen_upstream_destroy(rig->up);
   fake_stop(&rig->fake);
   uv_run(&rig->loop, UV_RUN_DEFAULT);
   bson_destroy(&rig->fake.last_cmd);
   assert_int_equal(uv_loop_close(&rig->loop), 0);
}

static int32_t
reply_int(const bson_t *b, const char *key)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, b, key) || !BSON_ITER_HOLDS_NUMBER(&it)) {
      return -1;
   }
   return (int32_t) bson_iter_as_int64(&it);
}

static const char *
reply_str(const bson_t *b, const char *key)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, b, key) || !BSON_ITER_HOLDS_UTF8(&it)) {
      return "";
   }
   return bson_iter_utf8(&it, NULL);
}

static void
test_relay_roundtrip(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   rig_start(&rig, FAKE_ECHO, false, "mongodb://127.0.0.1:%d/");
   forward(&rig, "count", ASPEN_OP_MSG_EXHAUST_ALLOWED, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "ok"), 1);
   assert_string_equal(reply_str(&r.reply, "cmd"), "count");
   /* The backend saw the handshake first, then the command with the
    * client's lsid, without $clusterTime, with no flag bits. */
   assert_int_equal(rig.fake.hellos, 1);
   assert_int_equal(rig.fake.commands, 1);
   assert_true(bson_has_field(&rig.fake.last_cmd, "lsid"));
   assert_false(bson_has_field(&rig.fake.last_cmd, "$clusterTime"));
   assert_int_equal(rig.fake.last_flags, 0);
   /* A second command reuses the pooled connection. */
   bson_destroy(&r.reply);
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_string_equal(reply_str(&r.reply, "cmd"), "find");
   assert_int_equal(rig.fake.conns_total, 1);
   assert_int_equal(rig.fake.hellos, 1);
   bson_destroy(&r.reply);
   /* With a user's session key the backend sees the derived lsid. */
   uint8_t id[16] = {9}, uid[32] = {7};
   bson_t key = BSON_INITIALIZER, want;
   bson_append_binary(&key, "id", 2, BSON_SUBTYPE_UUID, id, 16);
   bson_append_binary(&key, "uid", 3, BSON_SUBTYPE_BINARY, uid, 32);
   aspen_upstream_backend_lsid(&key, &want);
   rig.lsid_key = &key;
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   bson_iter_t it;
   bson_t seen;
   assert_true(bson_iter_init_find(&it, &rig.fake.last_cmd, "lsid"));
   assert_true(aspen_bson_view(&it, &seen));
   assert_true(bson_equal(&seen, &want));
   rig.lsid_key = NULL;
   bson_destroy(&key);
   bson_destroy(&want);
   /* Fire and forget (endSessions): sent, its reply dropped. */
   bson_t body = BSON_INITIALIZER;
   BSON_APPEND_INT32(&body, "endSessions", 1);
   BSON_APPEND_UTF8(&body, "$db", "admin");
   aspen_op_msg_t msg = {0};
   (void) bson_init_static(&msg.body, bson_get_data(&body), body.len);
   aspen_upstream_forward(rig.up, &msg, "endSessions", NULL, NULL, NULL);
   bson_destroy(&body);
   for (int i = 0; i < 100000 && rig.fake.commands < 4; i++) {
      uv_run(&rig.loop, UV_RUN_ONCE);
   }
   assert_int_equal(rig.fake.commands, 4);
   assert_string_equal(reply_str(&rig.fake.last_cmd, "$db"), "admin");
   rig_stop(&rig);
}

/* The client's $clusterTime never reaches the backend; the latest one the
 * backend sent goes in its place (mongos's gossip), never an older one. */
static void
test_relay_gossips_cluster_time(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   bson_iter_t it, sub;
   uint32_t t, i;
   rig_start(&rig, FAKE_ECHO, false, "mongodb://127.0.0.1:%d/");
   rig.fake.cluster_time = 100;
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   assert_false(bson_has_field(&rig.fake.last_cmd, "$clusterTime"));
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   assert_true(bson_iter_init_find(&it, &rig.fake.last_cmd, "$clusterTime"));
   assert_true(bson_iter_recurse(&it, &sub) && bson_iter_find(&sub, "clusterTime"));
   bson_iter_timestamp(&sub, &t, &i);
   assert_int_equal(t, 100);
   assert_int_equal(i, 1);
   assert_string_equal(reply_str(&rig.fake.last_cmd, "$db"), "d");
   /* An older time in a reply does not replace it; a newer one does. */
   rig.fake.cluster_time = 50;
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   assert_true(bson_iter_init_find(&it, &rig.fake.last_cmd, "$clusterTime"));
   assert_true(bson_iter_recurse(&it, &sub) && bson_iter_find(&sub, "clusterTime"));
   bson_iter_timestamp(&sub, &t, &i);
   assert_int_equal(t, 100);
   rig.fake.cluster_time = 200;
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   assert_true(bson_iter_init_find(&it, &rig.fake.last_cmd, "$clusterTime"));
   assert_true(bson_iter_recurse(&it, &sub) && bson_iter_find(&sub, "signature"));
   assert_int_equal(bson_iter_as_int64(&sub), 200); /* the whole document */
   rig_stop(&rig);
}

/* Which commands the retryable-writes and transactions specs cover, and
 * the labels aspen's own errors get (as a mongos gives them). */
static void
test_txn_kind_and_labels(void **state)
{
   (void) state;
   bson_t *cmd = BCON_NEW("insert", "c", "txnNumber", BCON_INT64(3));
   assert_int_equal(aspen_upstream_txn_kind(cmd, "insert"),
                    ASPEN_TXN_RETRYABLE_WRITE);
   assert_int_equal(aspen_upstream_txn_kind(cmd, "find"), ASPEN_TXN_NONE);
   bson_destroy(cmd);
   cmd = BCON_NEW("find", "c", "txnNumber", BCON_INT64(3), "autocommit",
                  BCON_BOOL(false), "startTransaction", BCON_BOOL(true));
   assert_int_equal(aspen_upstream_txn_kind(cmd, "find"), ASPEN_TXN_STATEMENT);
   assert_int_equal(aspen_upstream_txn_kind(cmd, "commitTransaction"),
                    ASPEN_TXN_COMMIT);
   assert_int_equal(aspen_upstream_txn_kind(cmd, "abortTransaction"),
                    ASPEN_TXN_ABORT);
   bson_destroy(cmd);
   cmd = BCON_NEW("insert", "c");
   assert_int_equal(aspen_upstream_txn_kind(cmd, "insert"), ASPEN_TXN_NONE);
   bson_destroy(cmd);

   static const struct {
      unsigned kind;
      const char *labels[2];
   } cases[] = {
      {ASPEN_TXN_STATEMENT, {"TransientTransactionError", NULL}},
      {ASPEN_TXN_COMMIT, {"RetryableWriteError", "UnknownTransactionCommitResult"}},
      {ASPEN_TXN_ABORT, {"RetryableWriteError", NULL}},
      {ASPEN_TXN_RETRYABLE_WRITE, {"RetryableWriteError", NULL}},
   };
   for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      for (int code = 6; code <= 89; code += 83) { /* HostUnreachable, NetworkTimeout */
         bson_t err = BSON_INITIALIZER, out;
         aspen_reply_error(&err, code, "lost");
         assert_true(aspen_upstream_error_labels(&err, cases[c].kind, &out));
         assert_int_equal(reply_int(&out, "code"), code);
         bson_iter_t it, arr;
         assert_true(bson_iter_init_find(&it, &out, "errorLabels") &&
                     bson_iter_recurse(&it, &arr));
         for (int l = 0; l < 2 && cases[c].labels[l]; l++) {
            assert_true(bson_iter_next(&arr));
            assert_string_equal(bson_iter_utf8(&arr, NULL), cases[c].labels[l]);
         }
         assert_false(bson_iter_next(&arr));
         bson_destroy(&out);
         bson_destroy(&err);
      }
   }
   /* Not for commands outside the specs, the server's own labels, other
    * codes or a success. */
   bson_t err = BSON_INITIALIZER, out, arr;
   aspen_reply_error(&err, 6, "lost");
   assert_false(aspen_upstream_error_labels(&err, ASPEN_TXN_NONE, &out));
   bson_reinit(&err);
   aspen_reply_error(&err, 11000, "duplicate key");
   assert_false(aspen_upstream_error_labels(&err, ASPEN_TXN_RETRYABLE_WRITE, &out));
   bson_reinit(&err);
   aspen_reply_error(&err, 6, "a mongos's own");
   BSON_APPEND_ARRAY_BEGIN(&err, "errorLabels", &arr);
   bson_append_array_end(&err, &arr);
   assert_false(aspen_upstream_error_labels(&err, ASPEN_TXN_STATEMENT, &out));
   bson_reinit(&err);
   BSON_APPEND_DOUBLE(&err, "ok", 1.0);
   assert_false(aspen_upstream_error_labels(&err, ASPEN_TXN_COMMIT, &out));
   bson_destroy(&err);
}

/* backend.c picks the relay or the lanes from the URI and the mode. */
static void
test_backend_mode(void **state)
{
   (void) state;
   uv_loop_t loop;
   aspen_error_t err;
   uv_loop_init(&loop);
   aspen_backend_t *be =
      aspen_backend_new(&loop, "mongodb://127.0.0.1:1/", "bogus", 1, &err);
   assert_null(be);
   assert_non_null(strstr(err.message, "backend.forwarding"));
   be = aspen_backend_new(&loop, "mongodb://127.0.0.1:1/", NULL, 1, &err);
   assert_non_null(be);
   assert_true(aspen_backend_is_relay(be));
   aspen_backend_destroy(be);
   be = aspen_backend_new(&loop, "mongodb://127.0.0.1:1/", "lanes", 1, &err);
   assert_non_null(be);
   assert_false(aspen_backend_is_relay(be));
   aspen_backend_destroy(be);
   /* A login the relay does not implement: the lanes forward. */
   be = aspen_backend_new(&loop,
                          "mongodb://u:p@127.0.0.1:1/?authMechanism=PLAIN",
                          "relay", 1, &err);
   assert_non_null(be);
   assert_false(aspen_backend_is_relay(be));
   aspen_backend_destroy(be);
   uv_run(&loop, UV_RUN_DEFAULT);
   assert_int_equal(uv_loop_close(&loop), 0);
}

static void
test_relay_scram(void **state)
{
   (void) state;
   const char *uris[] = {
      "mongodb://app:secret@127.0.0.1:%d/",                        /* -> 256 */
      "mongodb://app:secret@127.0.0.1:%d/?authMechanism=SCRAM-SHA-1",
   };
   for (size_t i = 0; i < 2; i++) {
      rig_t rig;
      result_t r[3];
      rig_start(&rig, FAKE_HOLD, true, uris[i]);
      rig.fake.release = 3; /* three connections, each logs in */
      for (int k = 0; k < 3; k++) {
         forward(&rig, "ping", 0, &r[k]);
      }
      int done = 0;
      for (int n = 0; n < 200000 && done < 3; n++) {
         uv_run(&rig.loop, UV_RUN_ONCE);
         done = r[0].done + r[1].done + r[2].done;
      }
      assert_int_equal(done, 3);
      for (int k = 0; k < 3; k++) {
         assert_int_equal(reply_int(&r[k].reply, "ok"), 1);
         bson_destroy(&r[k].reply);
      }
      assert_int_equal(rig.fake.sasl_starts, 3);
      assert_int_equal(rig.fake.conns_total, 3);
      rig_stop(&rig);
   }
}

static void
test_relay_scram_wrong_password(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   rig_start(&rig, FAKE_ECHO, true, "mongodb://app:nope@127.0.0.1:%d/");
   forward(&rig, "ping", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "ok"), 0);
   assert_int_equal(reply_int(&r.reply, "code"), ASPEN_ERR_HostUnreachable);
   assert_non_null(strstr(reply_str(&r.reply, "errmsg"), "cannot log in"));
   assert_int_equal(rig.fake.commands, 0); /* nothing ran unauthenticated */
   bson_destroy(&r.reply);
   rig_stop(&rig);
}

static void
test_relay_server_down(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   rig_start(&rig, FAKE_ECHO, false, "mongodb://127.0.0.1:%d/");
   /* Point a second relay at a port nobody listens on. */
   aspen_error_t err;
   uv_tcp_t probe;
   struct sockaddr_in sa;
   struct sockaddr_storage ss;
   int len = sizeof ss;
   uv_ip4_addr("127.0.0.1", 0, &sa);
   uv_tcp_init(&rig.loop, &probe);
   uv_tcp_bind(&probe, (struct sockaddr *) &sa, 0);
   uv_tcp_getsockname(&probe, (struct sockaddr *) &ss, &len);
   int dead = ntohs(((struct sockaddr_in *) &ss)->sin_port);
   uv_close((uv_handle_t *) &probe, NULL); /* bound, never listening */
   char uri_str[64];
   snprintf(uri_str, sizeof uri_str, "mongodb://127.0.0.1:%d/", dead);
   mongoc_uri_t *uri = mongoc_uri_new(uri_str);
   aspen_upstream_t *down = aspen_upstream_new(&rig.loop, uri, &err);
   mongoc_uri_destroy(uri);
   aspen_upstream_t *keep = rig.up;
   rig.up = down;
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "code"), ASPEN_ERR_HostUnreachable);
   assert_non_null(strstr(reply_str(&r.reply, "errmsg"),
                          "could not reach the backing MongoDB deployment"));
   bson_destroy(&r.reply);
   aspen_upstream_destroy(down);
   rig.up = keep;
   rig_stop(&rig);
}

static void
test_relay_connection_cut(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   rig_start(&rig, FAKE_CLOSE, false, "mongodb://127.0.0.1:%d/");
   forward(&rig, "insert", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "code"), ASPEN_ERR_HostUnreachable);
   assert_non_null(strstr(reply_str(&r.reply, "errmsg"),
                          "lost its connection"));
   bson_destroy(&r.reply);
   /* The next command gets a new connection (and the same fate). */
   rig.fake.mode = FAKE_ECHO;
   forward(&rig, "insert", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "ok"), 1);
   assert_int_equal(rig.fake.conns_total, 2);
   bson_destroy(&r.reply);
   rig_stop(&rig);
}

static void
test_relay_timeout_and_wrong_reply(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   rig_start(&rig, FAKE_SILENT, false,
             "mongodb://127.0.0.1:%d/?socketTimeoutMS=300");
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "code"), ASPEN_ERR_NetworkTimeout);
   bson_destroy(&r.reply);
   /* A reply to another request id is never taken for this one. */
   rig.fake.mode = FAKE_WRONG_ID;
   forward(&rig, "find", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "code"), ASPEN_ERR_HostUnreachable);
   assert_int_not_equal(reply_int(&r.reply, "ok"), 1);
   bson_destroy(&r.reply);
   rig_stop(&rig);
}

static void
test_relay_pool_cap(void **state)
{
   (void) state;
   rig_t rig;
   result_t r[6];
   rig_start(&rig, FAKE_HOLD, false, "mongodb://127.0.0.1:%d/?maxPoolSize=2");
   rig.fake.release = 2; /* replies go out in pairs */
   for (int k = 0; k < 6; k++) {
      forward(&rig, "find", 0, &r[k]);
   }
   int done = 0;
   for (int n = 0; n < 200000 && done < 6; n++) {
      uv_run(&rig.loop, UV_RUN_ONCE);
      done = 0;
      for (int k = 0; k < 6; k++) {
         done += r[k].done;
      }
   }
   assert_int_equal(done, 6);
   for (int k = 0; k < 6; k++) {
      assert_int_equal(reply_int(&r[k].reply, "ok"), 1);
      bson_destroy(&r[k].reply);
   }
   assert_int_equal(rig.fake.conns_max, 2); /* queued, not more sockets */
   aspen_upstream_stats_t st;
   aspen_upstream_stats(rig.up, &st);
   assert_int_equal(st.forwarded, 6);
   assert_int_equal(st.queued_now, 0);
   rig_stop(&rig);
}

static void
test_relay_not_primary_passes_through(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   rig_start(&rig, FAKE_NOT_PRIMARY, false, "mongodb://127.0.0.1:%d/");
   forward(&rig, "insert", 0, &r);
   run_until(&rig, &r.done, 1);
   /* The server's own error goes to the client unchanged. */
   assert_int_equal(reply_int(&r.reply, "code"), 10107);
   assert_string_equal(reply_str(&r.reply, "errmsg"), "not primary");
   bson_destroy(&r.reply);
   rig_stop(&rig);
}

static void
test_relay_idle_connections_close(void **state)
{
   (void) state;
   rig_t rig;
   result_t r;
   rig_start(&rig, FAKE_ECHO, false,
             "mongodb://127.0.0.1:%d/?maxIdleTimeMS=200");
   forward(&rig, "ping", 0, &r);
   run_until(&rig, &r.done, 1);
   bson_destroy(&r.reply);
   assert_int_equal(rig.fake.conns_open, 1);
   /* The sweep closes the idle connection; the fake sees it go. */
   for (int i = 0; i < 100000 && rig.fake.conns_open > 0; i++) {
      uv_run(&rig.loop, UV_RUN_ONCE);
   }
   assert_int_equal(rig.fake.conns_open, 0);
   aspen_upstream_stats_t st;
   aspen_upstream_stats(rig.up, &st);
   assert_int_equal(st.open_now, 0);
   /* The next command opens a new one. */
   forward(&rig, "ping", 0, &r);
   run_until(&rig, &r.done, 1);
   assert_int_equal(reply_int(&r.reply, "ok"), 1);
   assert_int_equal(rig.fake.conns_total, 2);
   bson_destroy(&r.reply);
   rig_stop(&rig);
}

static void
test_relay_shutdown_answers_everyone(void **state)
{
   (void) state;
   rig_t rig;
   result_t r[2];
   rig_start(&rig, FAKE_SILENT, false, "mongodb://127.0.0.1:%d/?maxPoolSize=1");
   forward(&rig, "find", 0, &r[0]);
   forward(&rig, "find", 0, &r[1]); /* queued behind the first */
   for (int n = 0; n < 1000 && rig.fake.commands < 1; n++) {
      uv_run(&rig.loop, UV_RUN_ONCE);
   }
   assert_int_equal(rig.fake.commands, 1);
   aspen_upstream_destroy(rig.up);
   assert_int_equal(r[0].done, 1);
   assert_int_equal(r[1].done, 1);
   assert_int_equal(reply_int(&r[1].reply, "code"),
                    ASPEN_ERR_HostUnreachable);
   bson_destroy(&r[0].reply);
   bson_destroy(&r[1].reply);
   fake_stop(&rig.fake);
   uv_run(&rig.loop, UV_RUN_DEFAULT);
   bson_destroy(&rig.fake.last_cmd);
   assert_int_equal(uv_loop_close(&rig.loop), 0);
}

int
main(void)
{
   mongoc_init();
   aspen_log_set_level(ASPEN_LOG_ERROR);
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_encode_strips_and_keeps),
      cmocka_unit_test(test_backend_lsid),
      cmocka_unit_test(test_topo_select),
      cmocka_unit_test(test_supports),
      cmocka_unit_test(test_backend_mode),
      cmocka_unit_test(test_relay_roundtrip),
      cmocka_unit_test(test_relay_gossips_cluster_time),
      cmocka_unit_test(test_txn_kind_and_labels),
      cmocka_unit_test(test_relay_scram),
      cmocka_unit_test(test_relay_scram_wrong_password),
      cmocka_unit_test(test_relay_server_down),
      cmocka_unit_test(test_relay_connection_cut),
      cmocka_unit_test(test_relay_timeout_and_wrong_reply),
      cmocka_unit_test(test_relay_pool_cap),
      cmocka_unit_test(test_relay_not_primary_passes_through),
      cmocka_unit_test(test_relay_idle_connections_close),
      cmocka_unit_test(test_relay_shutdown_answers_everyone),
   };
   int rc = cmocka_run_group_tests_name("upstream", tests, NULL, NULL);
   mongoc_cleanup();
   return rc;
}
