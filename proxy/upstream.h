/*
 * upstream.h - the relay to the backing deployment, inside proxy/: a pool of
 * non-blocking backend connections driven by the loop thread (upstream.c)
 * and the choice of the server each command goes to (upstream_topo.c).
 *
 * A forwarded command is sent as the client's own OP_MSG with a few
 * top-level fields taken out (upstream.c says which and why), on a pooled
 * connection that aspen opened, secured (TLS through tls/, in client mode)
 * and authenticated (SCRAM, scram.h) itself; the server's reply body goes
 * back to the session without being re-encoded. No thread is involved per
 * command. backend.c decides, from the backend URI, whether this relay or
 * the mongoc lanes serve a deployment (aspen_upstream_supports).
 *
 * Topology: a URI with one host (and no replicaSet, or directConnection=true)
 * is served directly, as a driver's direct connection. Anything else (a
 * replica set, several mongos, mongodb+srv) is watched by a mongoc client
 * pool's monitor threads; their topology events reach the loop through a
 * uv_async_t and the loop picks the primary (or a mongos) from the latest
 * snapshot (aspen_topo_select, a pure function, unit-tested).
 *
 * Threading: everything here runs on the loop thread, except the mongoc
 * monitor callbacks in upstream_topo.c, which only publish snapshots.
 */
#ifndef ASPEN_UPSTREAM_H
#define ASPEN_UPSTREAM_H

#include "proxy_int.h"

#include <mongoc/mongoc.h>

typedef struct aspen_upstream aspen_upstream_t;

/* ---- topology snapshots and server selection (upstream_topo.c) ---------- */

typedef enum {
   ASPEN_TOPO_UNKNOWN = 0,
   ASPEN_TOPO_SINGLE,
   ASPEN_TOPO_RS_NO_PRIMARY,
   ASPEN_TOPO_RS_WITH_PRIMARY,
   ASPEN_TOPO_SHARDED,
   ASPEN_TOPO_LOAD_BALANCED,
} aspen_topo_type_t;

typedef enum {
   ASPEN_SRV_UNKNOWN = 0,
   ASPEN_SRV_STANDALONE,
   ASPEN_SRV_MONGOS,
   ASPEN_SRV_POSSIBLE_PRIMARY,
   ASPEN_SRV_RS_PRIMARY,
   ASPEN_SRV_RS_SECONDARY,
   ASPEN_SRV_RS_ARBITER,
   ASPEN_SRV_RS_OTHER,
   ASPEN_SRV_RS_GHOST,
   ASPEN_SRV_LOAD_BALANCER,
} aspen_srv_type_t;

#define ASPEN_TOPO_HOST_MAX 256

/* One server as a monitor last saw it. */
typedef struct {
   char host[ASPEN_TOPO_HOST_MAX]; /* name or address, no brackets */
   uint16_t port;
   aspen_srv_type_t type;
   int64_t rtt_ms;       /* -1 when unknown */
   int64_t set_version;  /* -1 when absent */
   bool has_election_id;
   bson_oid_t election_id;
} aspen_topo_server_t;

/* A whole topology: what a monitor reported at one moment. */
typedef struct {
   aspen_topo_type_t type;
   size_t n;
   aspen_topo_server_t *servers; /* n entries, owned */
} aspen_topo_t;

/* Maps mongoc's type names ("RSPrimary", "ReplicaSetWithPrimary", ...). */
aspen_srv_type_t aspen_topo_srv_type_parse(const char *name);
aspen_topo_type_t aspen_topo_type_parse(const char *name);
const char *aspen_topo_type_name(aspen_topo_type_t type);

/* The server a command that needs the primary goes to: the one server of a
 * single topology (whatever it is, as a direct connection), the primary of a
 * replica set (if a stale monitor still shows two, the one with the larger
 * electionId, then setVersion, as in the SDAM rules), or the mongos with the
 * smallest round-trip time of a sharded cluster. `skip[i]` (NULL: none)
 * excludes server i, e.g. a primary that just answered NotWritablePrimary.
 * Returns the index into t->servers, or -1 when no server qualifies (no
 * primary yet, every one skipped, or a load-balanced topology, which the
 * relay does not serve). Any thread; pure. */
int aspen_topo_select(const aspen_topo_t *t, const bool *skip);

void aspen_topo_cleanup(aspen_topo_t *t);

/* Watches a multi-host deployment with a mongoc client pool (its monitor
 * threads). Every topology change is copied into a snapshot and handed to
 * `on_change` on the loop thread (the callee takes the snapshot). */
typedef struct aspen_topo_watch aspen_topo_watch_t;
typedef void (*aspen_topo_change_cb)(void *arg, aspen_topo_t *snapshot);
aspen_topo_watch_t *aspen_topo_watch_new(uv_loop_t *loop,
                                         const mongoc_uri_t *uri,
                                         aspen_topo_change_cb on_change,
                                         void *arg, aspen_error_t *err);
/* Asks mongoc to look at `host:port` again now (after an error from it):
 * a background thread runs a ping on that server through the pool, so a
 * server that is gone is marked Unknown at once and mongoc rescans. */
void aspen_topo_watch_refresh(aspen_topo_watch_t *w, const char *host,
                              uint16_t port);
/* Stops the monitor (joins mongoc's threads) and closes the async handle;
 * no callback runs after this returns. Loop thread. */
void aspen_topo_watch_destroy(aspen_topo_watch_t *w);

/* ---- the relay (upstream.c) ---------------------------------------------- */

/* True when the relay can serve `uri`: SCRAM-SHA-1/SCRAM-SHA-256 or no
 * credentials, TLS options it implements, not load-balanced mode. Otherwise
 * false with the reason in `why` (the lanes then forward, through mongoc). */
bool aspen_upstream_supports(const mongoc_uri_t *uri, char *why,
                             size_t why_size);

/* Creates the relay for `uri` (which must pass aspen_upstream_supports; it
 * is copied). Connections open on demand. Returns NULL with err set when a
 * TLS file cannot be loaded or the monitor cannot start. Loop thread. */
aspen_upstream_t *aspen_upstream_new(uv_loop_t *loop, const mongoc_uri_t *uri,
                                     aspen_error_t *err);
/* Fails every command still waiting (its callback gets a HostUnreachable
 * error: "aspen is shutting down") and closes every connection; the
 * structure is freed once the last handle is closed. Loop thread. */
void aspen_upstream_destroy(aspen_upstream_t *up);

/* Called once per forwarded command, on the loop thread and never from
 * inside aspen_upstream_forward: `reply` is the server's reply body (a view
 * into aspen's receive buffer, valid for the call only) or an aspen error. */
typedef void (*aspen_upstream_cb)(void *arg, const bson_t *reply);

/* Sends the client's OP_MSG (`msg`: body and document sequences, views;
 * copied before this returns) to the server the command belongs on: the
 * server a cursor came from for getMore/killCursors, else the selected
 * primary. `lsid_key` (NULL: none) is the router's key of the client's
 * backend session: when it carries a user digest ("uid", access control
 * on) the backend gets aspen_upstream_backend_lsid of it as the lsid, so
 * two users sending the same lsid never share a backend session. `cb` runs
 * exactly once (with a shutdown error if the relay is destroyed first);
 * `cb` NULL sends the command and ignores its reply. */
void aspen_upstream_forward(aspen_upstream_t *up, const aspen_op_msg_t *msg,
                            const char *name, const bson_t *lsid_key,
                            aspen_upstream_cb cb, void *arg);

/* The lsid the backend gets for a session key: the key itself when it has
 * no "uid", else {id: UUID} where the UUID (version 4 bits set) is the
 * first 16 bytes of SHA-256 over the key's bytes: the same client lsid and
 * user always give the same backend session, different users different
 * ones. `out` is initialised by the callee. Pure. */
void aspen_upstream_backend_lsid(const bson_t *key, bson_t *out);

/* Appends to `out` the OP_MSG aspen sends for a client's `msg`: request id
 * `request_id`, no flag bits (moreToCome and exhaustAllowed are the client
 * connection's business: aspen always waits for one reply; a checksum would
 * no longer match), the body without the top-level fields in `strip`
 * (NULL-terminated), with a top-level "lsid" replaced by `lsid` when it
 * is not NULL and `cluster_time` (NULL: none) appended as "$clusterTime",
 * and the document sequences byte for byte. Pure; for the unit tests too. */
void aspen_upstream_encode(aspen_buf_t *out, int32_t request_id,
                           const aspen_op_msg_t *msg,
                           const char *const *strip, const bson_t *lsid,
                           const bson_t *cluster_time);

/* What a forwarded command is to the retryable-writes and transactions
 * specs, from its fields: a statement of a transaction (txnNumber and
 * autocommit: false), its commitTransaction or abortTransaction, a
 * retryable write (txnNumber on insert/update/delete/findAndModify/
 * bulkWrite), or none of them. Pure. */
enum {
   ASPEN_TXN_NONE = 0,
   ASPEN_TXN_STATEMENT,
   ASPEN_TXN_COMMIT,
   ASPEN_TXN_ABORT,
   ASPEN_TXN_RETRYABLE_WRITE,
};
unsigned aspen_upstream_txn_kind(const bson_t *cmd, const char *name);
/* When `reply` is aspen's own error for a command of `kind` that did not
 * get the server's answer (HostUnreachable, NetworkTimeout: the connection
 * was lost or never made) and carries no errorLabels, makes `out` (the
 * callee initialises it) the reply with the labels a mongos gives such an
 * error: TransientTransactionError for a statement of a transaction,
 * RetryableWriteError and UnknownTransactionCommitResult for
 * commitTransaction, RetryableWriteError for a retryable write and
 * abortTransaction, so the driver retries or restarts the transaction as
 * the specs say. False (out untouched) otherwise: the server's own replies
 * and labels go back unchanged. Pure. */
bool aspen_upstream_error_labels(const bson_t *reply, unsigned kind,
                                 bson_t *out);

/* Counters for tests and serverStatus-like output. */
typedef struct {
   uint64_t forwarded;   /* commands sent */
   uint64_t failed;      /* commands answered with an aspen error */
   uint64_t opened;      /* connections that completed their handshake */
   uint64_t open_now;    /* connections open (any state) */
   uint64_t queued_now;  /* commands waiting for a connection or a server */
} aspen_upstream_stats_t;
void aspen_upstream_stats(const aspen_upstream_t *up,
                          aspen_upstream_stats_t *st);

#endif /* ASPEN_UPSTREAM_H */
