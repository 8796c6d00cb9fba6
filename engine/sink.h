/*
 * sink.h - writers a processor's thread uses to put documents into MongoDB
 * collections ($merge and the dead-letter queue). Blocking; processor thread
 * only.
 */
#ifndef ASPEN_ENGINE_SINK_H
#define ASPEN_ENGINE_SINK_H

#include "engine_int.h"

typedef struct aspen_coll_writer aspen_coll_writer_t;

/* Called for each document the server (or the writer) refused. */
typedef void (*aspen_coll_writer_fail_fn)(void *arg, const bson_t *doc,
                                          const char *reason);

/* A writer for a $merge spec; connects and pings first, so an unreachable
 * server fails here (code 421 StreamProcessorAtlasConnectionError). */
aspen_coll_writer_t *aspen_coll_writer_new_merge(const aspen_conns_t *conns,
                                                 const bson_t *spec,
                                                 aspen_error_t *err);
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

#endif
