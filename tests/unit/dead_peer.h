/*
 * dead_peer.h - for unit tests of connectors that must not wait on a peer
 * past a stop: a TCP peer on 127.0.0.1 that accepts connections and never
 * answers, and a thread that raises a stop flag once the first connection
 * is in (the client's request is then on its way). Header-only, included
 * by the tests that use it (cmocka's headers first).
 */
#ifndef ASPEN_TESTS_UNIT_DEAD_PEER_H
#define ASPEN_TESTS_UNIT_DEAD_PEER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
   int fd;            /* the listening socket */
   int conn;          /* the connection accepted, -1 before */
   atomic_bool *stop; /* set once it is accepted; NULL: none */
   pthread_t th;
} dead_peer_t;

/* Listens on a free port (the kernel completes connections whether or not
 * they are accepted); returns the port. */
static inline unsigned
dead_peer_open(dead_peer_t *d, atomic_bool *stop)
{
   struct sockaddr_in a = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
   socklen_t len = sizeof a;
   d->fd = socket(AF_INET, SOCK_STREAM, 0);
   d->conn = -1;
   d->stop = stop;
   assert_true(d->fd >= 0);
   assert_int_equal(bind(d->fd, (struct sockaddr *) &a, sizeof a), 0);
   assert_int_equal(listen(d->fd, 4), 0);
   assert_int_equal(getsockname(d->fd, (struct sockaddr *) &a, &len), 0);
   return ntohs(a.sin_port);
}

static inline void *
dead_peer_main(void *arg)
{
   dead_peer_t *d = arg;
   d->conn = accept(d->fd, NULL, NULL);
   if (d->stop) {
      atomic_store(d->stop, true);
   }
   return NULL;
}

/* Accepts the next connection on a thread of its own (closing the one
 * before), then raises d->stop, if set. */
static inline void
dead_peer_accept(dead_peer_t *d)
{
   if (d->conn >= 0) {
      close(d->conn);
      d->conn = -1;
   }
   assert_int_equal(pthread_create(&d->th, NULL, dead_peer_main, d), 0);
}

/* Waits for that thread; true when it accepted a connection. */
static inline bool
dead_peer_accepted(dead_peer_t *d)
{
   pthread_join(d->th, NULL);
   return d->conn >= 0;
}

static inline void
dead_peer_close(dead_peer_t *d)
{
   if (d->conn >= 0) {
      close(d->conn);
   }
   close(d->fd);
}

#endif /* ASPEN_TESTS_UNIT_DEAD_PEER_H */
