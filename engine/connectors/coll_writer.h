/*
 * coll_writer.h - writers a processor's thread uses to put documents into
 * MongoDB collections ($merge, $emit to a time-series collection and the
 * dead-letter queue), implemented in coll_writer.c. Blocking; processor
 * thread only.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_COLL_WRITER_H
#define ASPEN_ENGINE_CONNECTORS_COLL_WRITER_H

#include "connectors/connections.h"
#include "runtime/sink.h"

typedef struct aspen_coll_writer aspen_coll_writer_t;

/* Called for each document the server (or the writer) refused. */
typedef void (*aspen_coll_writer_fail_fn)(void *arg, const bson_t *doc,
                                          const char *reason);

/* A writer for a $merge spec; connects and pings first, so an unreachable
 * server fails here (code 421 StreamProcessorAtlasConnectionError). */
aspen_coll_writer_t *aspen_coll_writer_new_merge(const aspen_conns_t *conns,
                                                 const bson_t *spec,
                                                 aspen_error_t *err);
/* The operator name of a time-series $emit in DLQ entries and stats, and
 * the largest document it writes (ASP: 4 MB; larger ones go to the DLQ). */
#define ASPEN_EMIT_TS_OPERATOR "TimeseriesEmitOperator"
#define ASPEN_EMIT_TS_MAX_DOC_BYTES ((size_t) 4 * 1024 * 1024)

/* A writer for a time-series $emit spec ({connectionName, db, coll,
 * timeseries}, validated by the stage parser): inserts only, into targets
 * that are literal or evaluated per document; each target is created with
 * the spec's `timeseries` options before its first write (a literal one
 * here, so a server that refuses it fails the start), an existing
 * time-series collection being fine. NULL with err set (421 for a server
 * that cannot be reached or refuses the collection). */
aspen_coll_writer_t *aspen_coll_writer_new_timeseries(
   const aspen_conns_t *conns, const bson_t *spec, aspen_error_t *err);
/* A writer that only inserts (the DLQ). */
aspen_coll_writer_t *aspen_coll_writer_new_insert(const aspen_conn_t *conn,
                                                  const char *db,
                                                  const char *coll,
                                                  aspen_error_t *err);
void aspen_coll_writer_destroy(aspen_coll_writer_t *w);
const char *aspen_coll_writer_ns(const aspen_coll_writer_t *w);
/* Queues a copy of `doc`; flushes when the batch is full. False when a
 * flush could not reach the server (err set; the batch is kept). */
bool aspen_coll_writer_add(aspen_coll_writer_t *w, const bson_t *doc,
                           aspen_coll_writer_fail_fn on_fail, void *arg,
                           aspen_error_t *err);
bool aspen_coll_writer_flush(aspen_coll_writer_t *w,
                             aspen_coll_writer_fail_fn on_fail, void *arg,
                             aspen_error_t *err);

/* The dead-letter queue's writer as processors use it (runtime/sink.h):
 * an insert-only writer to an Atlas connection's collection. */
extern const aspen_dlq_ops_t aspen_coll_writer_dlq_ops;

#endif /* ASPEN_ENGINE_CONNECTORS_COLL_WRITER_H */
