/*
 * conn_https.h - HTTPS connections (conn_https.c): a base URL, static
 * headers, optional credentials and a CA file, which the $https stage
 * (stage_https.c) sends its requests with.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_CONN_HTTPS_H
#define ASPEN_ENGINE_CONNECTORS_CONN_HTTPS_H

#include "connectors/connections.h"

/* What an https connection holds (aspen_conn_t.opts of its kind). */
typedef struct {
   char *url;          /* the base URL ("https://api.example.com/v1") */
   /* "Name: value" lines for the request (the config's headers, then
    * Authorization from auth): secrets, never listed or logged. */
   char **headers;
   size_t n_headers;
   char *ca_file;      /* tlsCAFile, or NULL: the system's CAs */
   /* maxInFlight (aspen's): requests a $https stage keeps in flight on
    * this connection, 1..1024, default 16. */
   int max_in_flight;
   bson_t listed;      /* what listings show */
} aspen_conn_https_t;

/* The https side of `conn`, or NULL when it is of another kind. Any
 * thread. */
const aspen_conn_https_t *aspen__conn_https(const aspen_conn_t *conn);

#endif /* ASPEN_ENGINE_CONNECTORS_CONN_HTTPS_H */
