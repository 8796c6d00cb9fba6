/*
 * audit.c - the audit log (security.auditLog.path, --audit-log): one JSON
 * line per authentication event (login success or failure, logout,
 * connection end), per refused command (authorization failure) and per
 * stream-processor management command (create, process, start, stop, drop,
 * modify, sample), shaped after OCSF classes as ASP's audit log is:
 *
 *   {"time": <epoch ms>, "time_dt": "2026-11-27T04:50:00.123Z",
 *    "class": "Authentication", "class_uid": 3002,
 *    "activity": "Logon", "activity_id": 1,
 *    "actor": {"user": "alice", "db": "admin"},
 *    "src_endpoint": {"ip": "127.0.0.1", "port": 50123},
 *    "api": {"operation": "saslContinue"},
 *    "status": "Success", "status_id": 1, "status_detail": ...,
 *    "unmapped": {"connectionId": 7, "mechanism": "SCRAM-SHA-256", ...}}
 *
 * Never a password, proof or key: callers pass only names and outcomes.
 * Lines are written by the log's JSON writer (aspen_json_append_doc), so a
 * name that is not valid UTF-8 is written with U+FFFD in place of its bad
 * bytes rather than losing the event.
 *
 * The loop thread formats a line and appends it to a pending buffer under a
 * mutex; a writer thread of its own takes the whole buffer and write(2)s it
 * (no fsync: the file is for people and log shippers, not crash recovery),
 * so a slow disk never stalls the event loop. If the writer falls more than
 * MAX_PENDING bytes behind, new lines are dropped and counted, and the count
 * is written as its own line once the writer catches up.
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define COMPONENT "ACCESS"
#define MAX_PENDING (64u * 1024u * 1024u)

struct aspen_audit {
   char *path;
   int fd;
   uv_thread_t thread;
   uv_mutex_t mu;
   uv_cond_t cond;
   aspen_buf_t pending; /* lines not yet handed to the writer; under mu */
   uint64_t dropped;    /* lines dropped since the last report; under mu */
   bool stop;           /* under mu */
};

/* Writes all of `data` (the writer thread). A write error is logged once
 * per run of errors; the lines are lost, aspen goes on. */
static void
write_all(aspen_audit_t *audit, const uint8_t *data, size_t len, bool *failing)
{
   size_t off = 0;
   while (off < len) {
      ssize_t n = write(audit->fd, data + off, len - off);
      if (n < 0 && errno == EINTR) {
         continue;
      }
      if (n <= 0) {
         if (!*failing) {
            aspen_logf(ASPEN_LOG_ERROR, COMPONENT, "audit",
                       "cannot write the audit log %s: %s", audit->path,
                       strerror(errno));
         }
         *failing = true;
         return;
      }
      off += (size_t) n;
   }
   *failing = false;
}

static void
writer_main(void *arg)
{
   aspen_audit_t *audit = arg;
   aspen_buf_t batch;
   bool failing = false;
   aspen_buf_init(&batch);
   uv_mutex_lock(&audit->mu);
   for (;;) {
      while (!audit->stop && aspen_buf_len(&audit->pending) == 0) {
         uv_cond_wait(&audit->cond, &audit->mu);
      }
      if (aspen_buf_len(&audit->pending) == 0) {
         break; /* stopping, and everything is written */
      }
      /* Swap buffers so the loop thread never waits for the disk. */
      aspen_buf_t tmp = batch;
      batch = audit->pending;
      audit->pending = tmp;
      uint64_t dropped = audit->dropped;
      audit->dropped = 0;
      uv_mutex_unlock(&audit->mu);
      write_all(audit, aspen_buf_data(&batch), aspen_buf_len(&batch),
                &failing);
      aspen_buf_clear(&batch);
      if (dropped) {
         char line[160];
         int n = snprintf(line, sizeof line,
                          "{ \"class\" : \"Audit\", \"status\" : "
                          "\"Failure\", \"unmapped\" : { \"droppedLines\" : "
                          "%llu } }\n",
                          (unsigned long long) dropped);
         write_all(audit, (const uint8_t *) line, (size_t) n, &failing);
      }
      uv_mutex_lock(&audit->mu);
   }
   uv_mutex_unlock(&audit->mu);
   aspen_buf_cleanup(&batch);
}

/*
 * Opens (appending, creating with mode 0600) the audit file at `path` and
 * starts its writer thread. Returns NULL with err set when the file cannot
 * be opened. Main thread, before the loop runs.
 */
aspen_audit_t *
aspen_audit_new(const char *path, aspen_error_t *err)
{
   int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
   if (fd < 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot open the audit log %s "
                      "(security.auditLog.path): %s",
                      path, strerror(errno));
      return NULL;
   }
   aspen_audit_t *audit = aspen_xcalloc(1, sizeof *audit);
   audit->path = aspen_xstrdup(path);
   audit->fd = fd;
   aspen_buf_init(&audit->pending);
   ASPEN_ASSERT(uv_mutex_init(&audit->mu) == 0);
   ASPEN_ASSERT(uv_cond_init(&audit->cond) == 0);
   ASPEN_ASSERT(uv_thread_create(&audit->thread, writer_main, audit) == 0);
   aspen_logf(ASPEN_LOG_INFO, COMPONENT, "audit", "audit log: %s", path);
   return audit;
}

/*
 * Writes every pending line, stops the writer thread and closes the file.
 * NULL is a no-op. Main thread, after the loop has stopped (so no event
 * comes in meanwhile).
 */
void
aspen_audit_destroy(aspen_audit_t *audit)
{
   if (!audit) {
      return;
   }
   uv_mutex_lock(&audit->mu);
   audit->stop = true;
   uv_cond_signal(&audit->cond);
   uv_mutex_unlock(&audit->mu);
   uv_thread_join(&audit->thread);
   uv_cond_destroy(&audit->cond);
   uv_mutex_destroy(&audit->mu);
   close(audit->fd);
   aspen_buf_cleanup(&audit->pending);
   free(audit->path);
   free(audit);
}

/* Splits "host:port" (the host may be an IPv6 address with colons). */
static void
append_endpoint(bson_t *doc, const char *peer)
{
   bson_t ep;
   const char *colon = peer ? strrchr(peer, ':') : NULL;
   BSON_APPEND_DOCUMENT_BEGIN(doc, "src_endpoint", &ep);
   if (colon) {
      bson_append_utf8(&ep, "ip", 2, peer, (int) (colon - peer));
      BSON_APPEND_INT32(&ep, "port", atoi(colon + 1));
   } else if (peer) {
      BSON_APPEND_UTF8(&ep, "ip", peer);
   }
   bson_append_document_end(doc, &ep);
}

/*
 * Queues one event as a JSON line (see the top of this file). Every string
 * in `ev` is borrowed; NULL fields are left out. Never blocks on I/O. Loop
 * thread (any thread, in fact: the queue is locked).
 */
void
aspen_audit_write(aspen_audit_t *audit, const aspen_audit_event_t *ev)
{
   if (!audit) {
      return;
   }
   bson_t doc = BSON_INITIALIZER, sub;
   struct timespec ts;
   struct tm tm;
   char when[40];
   clock_gettime(CLOCK_REALTIME, &ts);
   gmtime_r(&ts.tv_sec, &tm);
   snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
   BSON_APPEND_INT64(&doc, "time",
                     (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
   BSON_APPEND_UTF8(&doc, "time_dt", when);
   BSON_APPEND_UTF8(&doc, "class", ev->class_name);
   BSON_APPEND_INT32(&doc, "class_uid", ev->class_uid);
   BSON_APPEND_UTF8(&doc, "activity", ev->activity);
   BSON_APPEND_INT32(&doc, "activity_id", ev->activity_id);
   BSON_APPEND_DOCUMENT_BEGIN(&doc, "actor", &sub);
   if (ev->user) {
      BSON_APPEND_UTF8(&sub, "user", ev->user);
      BSON_APPEND_UTF8(&sub, "db", ev->db ? ev->db : "");
   }
   bson_append_document_end(&doc, &sub);
   append_endpoint(&doc, ev->peer);
   BSON_APPEND_DOCUMENT_BEGIN(&doc, "api", &sub);
   BSON_APPEND_UTF8(&sub, "operation", ev->operation ? ev->operation : "");
   bson_append_document_end(&doc, &sub);
   BSON_APPEND_UTF8(&doc, "status", ev->success ? "Success" : "Failure");
   BSON_APPEND_INT32(&doc, "status_id", ev->success ? 1 : 2);
   if (ev->status_detail) {
      BSON_APPEND_UTF8(&doc, "status_detail", ev->status_detail);
   }
   if (ev->unmapped) {
      BSON_APPEND_DOCUMENT(&doc, "unmapped", ev->unmapped);
   }
   /* The log's JSON writer, not libbson's: names come from clients and may
    * be invalid UTF-8 (a login as "root\xc3\x28"), which libbson refuses
    * to encode; this one writes such bytes as \ufffd, so no event is lost. */
   bson_string_t *line = bson_string_new(NULL);
   aspen_json_append_doc(line, &doc);
   bson_string_append_c(line, '\n');
   bson_destroy(&doc);
   uv_mutex_lock(&audit->mu);
   if (aspen_buf_len(&audit->pending) + line->len > MAX_PENDING) {
      audit->dropped++;
   } else {
      aspen_buf_append(&audit->pending, (const uint8_t *) line->str,
                       line->len);
      uv_cond_signal(&audit->cond);
   }
   uv_mutex_unlock(&audit->mu);
   bson_string_free(line, true);
}
