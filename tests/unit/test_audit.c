/*
 * test_audit.c - proxy/audit.c: each event type becomes one JSON line with
 * the OCSF-shaped fields (time, class, activity, actor, src_endpoint, api,
 * status, unmapped), lines written from several threads stay whole, the
 * file is created with mode 0600 and appended to, and a path that cannot be
 * opened is refused at start.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_path[256];

static int
setup(void **state)
{
   (void) state;
   snprintf(tmp_path, sizeof tmp_path, "/tmp/aspen-test-audit-%d.log",
            (int) getpid());
   unlink(tmp_path);
   return 0;
}

static int
teardown(void **state)
{
   (void) state;
   unlink(tmp_path);
   return 0;
}

/* Reads the file's lines into docs (at most max); returns the count. */
static int
read_lines(bson_t *docs, int max)
{
   FILE *f = fopen(tmp_path, "r");
   assert_non_null(f);
   char line[8192];
   int n = 0;
   while (fgets(line, sizeof line, f)) {
      size_t len = strlen(line);
      assert_true(len > 0 && line[len - 1] == '\n');
      assert_true(n < max);
      bson_error_t err;
      assert_true(bson_init_from_json(&docs[n], line, (ssize_t) len - 1, &err));
      n++;
   }
   fclose(f);
   return n;
}

static const char *
str(const bson_t *doc, const char *dotted)
{
   bson_iter_t it, f;
   if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, dotted, &f) &&
       BSON_ITER_HOLDS_UTF8(&f)) {
      return bson_iter_utf8(&f, NULL);
   }
   return NULL;
}

static int64_t
num(const bson_t *doc, const char *dotted)
{
   bson_iter_t it, f;
   if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, dotted, &f) &&
       BSON_ITER_HOLDS_NUMBER(&f)) {
      return bson_iter_as_int64(&f);
   }
   return -1;
}

static void
test_event_types(void **state)
{
   (void) state;
   aspen_error_t err;
   aspen_audit_t *audit = aspen_audit_new(tmp_path, &err);
   assert_non_null(audit);
   bson_t extra = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&extra, "mechanism", "SCRAM-SHA-256");
   aspen_audit_event_t logon_fail = {
      .class_name = "Authentication", .class_uid = 3002,
      .activity = "Logon", .activity_id = 1,
      .user = "alice", .db = "admin", .peer = "127.0.0.1:50123",
      .operation = "saslContinue", .success = false,
      .status_detail = "Authentication failed.", .unmapped = &extra,
   };
   aspen_audit_event_t logon_ok = logon_fail;
   logon_ok.success = true;
   logon_ok.status_detail = NULL;
   aspen_audit_event_t logoff = {
      .class_name = "Authentication", .class_uid = 3002,
      .activity = "Logoff", .activity_id = 2,
      .peer = "::1:4000", .operation = "endConnection", .success = true,
   };
   aspen_audit_event_t create = {
      .class_name = "API Activity", .class_uid = 6003,
      .activity = "Create", .activity_id = 1,
      .user = "alice", .db = "admin", .peer = "127.0.0.1:50123",
      .operation = "createStreamProcessor", .success = true,
   };
   aspen_audit_write(audit, &logon_fail);
   aspen_audit_write(audit, &logon_ok);
   aspen_audit_write(audit, &logoff);
   aspen_audit_write(audit, &create);
   aspen_audit_write(NULL, &create); /* no audit log: a no-op */
   bson_destroy(&extra);
   aspen_audit_destroy(audit);
   aspen_audit_destroy(NULL);

   struct stat st;
   assert_int_equal(stat(tmp_path, &st), 0);
   assert_int_equal(st.st_mode & 0777, 0600);

   bson_t docs[8];
   int n = read_lines(docs, 8);
   assert_int_equal(n, 4);
   assert_true(num(&docs[0], "time") > 1600000000000LL);
   assert_non_null(str(&docs[0], "time_dt"));
   assert_string_equal(str(&docs[0], "class"), "Authentication");
   assert_int_equal(num(&docs[0], "class_uid"), 3002);
   assert_string_equal(str(&docs[0], "activity"), "Logon");
   assert_string_equal(str(&docs[0], "actor.user"), "alice");
   assert_string_equal(str(&docs[0], "actor.db"), "admin");
   assert_string_equal(str(&docs[0], "src_endpoint.ip"), "127.0.0.1");
   assert_int_equal(num(&docs[0], "src_endpoint.port"), 50123);
   assert_string_equal(str(&docs[0], "api.operation"), "saslContinue");
   assert_string_equal(str(&docs[0], "status"), "Failure");
   assert_int_equal(num(&docs[0], "status_id"), 2);
   assert_string_equal(str(&docs[0], "status_detail"), "Authentication failed.");
   assert_string_equal(str(&docs[0], "unmapped.mechanism"), "SCRAM-SHA-256");
   assert_string_equal(str(&docs[1], "status"), "Success");
   assert_null(str(&docs[1], "status_detail"));
   /* No user: an empty actor; an IPv6 address keeps its colons. */
   assert_string_equal(str(&docs[2], "activity"), "Logoff");
   assert_null(str(&docs[2], "actor.user"));
   assert_string_equal(str(&docs[2], "src_endpoint.ip"), "::1");
   assert_int_equal(num(&docs[2], "src_endpoint.port"), 4000);
   assert_string_equal(str(&docs[3], "class"), "API Activity");
   assert_int_equal(num(&docs[3], "class_uid"), 6003);
   assert_string_equal(str(&docs[3], "api.operation"), "createStreamProcessor");
   for (int i = 0; i < n; i++) {
      bson_destroy(&docs[i]);
   }

   /* A second run appends. */
   audit = aspen_audit_new(tmp_path, &err);
   assert_non_null(audit);
   aspen_audit_write(audit, &create);
   aspen_audit_destroy(audit);
   n = read_lines(docs, 8);
   assert_int_equal(n, 5);
   for (int i = 0; i < n; i++) {
      bson_destroy(&docs[i]);
   }
}

/* Names a client sent may be anything: a failed login as "root\xc3\x28"
 * and a refused create of a processor whose name is not UTF-8 are still
 * written (bad bytes as U+FFFD), as valid UTF-8 lines. */
static void
test_invalid_utf8_kept(void **state)
{
   (void) state;
   aspen_error_t err;
   aspen_audit_t *audit = aspen_audit_new(tmp_path, &err);
   assert_non_null(audit);
   bson_t extra = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&extra, "mechanism", "SCRAM-SHA-256");
   BSON_APPEND_UTF8(&extra, "reason", "no such user root\xc3\x28");
   aspen_audit_event_t logon = {
      .class_name = "Authentication", .class_uid = 3002,
      .activity = "Logon", .activity_id = 1,
      .user = "root\xc3\x28", .db = "admin", .peer = "127.0.0.1:50123",
      .operation = "saslStart", .success = false,
      .status_detail = "Authentication failed.", .unmapped = &extra,
   };
   aspen_audit_write(audit, &logon);
   bson_t extra2 = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&extra2, "processor", "p\xff");
   BSON_APPEND_INT32(&extra2, "code", 13);
   aspen_audit_event_t refused = {
      .class_name = "API Activity", .class_uid = 6003,
      .activity = "Create", .activity_id = 1,
      .user = "bob", .db = "admin", .peer = "127.0.0.1:50124",
      .operation = "createStreamProcessor", .success = false,
      .status_detail = "not authorized on p\xff", .unmapped = &extra2,
   };
   aspen_audit_write(audit, &refused);
   bson_destroy(&extra);
   bson_destroy(&extra2);
   aspen_audit_destroy(audit);

   FILE *f = fopen(tmp_path, "r");
   assert_non_null(f);
   char text[8192];
   size_t n = fread(text, 1, sizeof text - 1, f);
   fclose(f);
   text[n] = '\0';
   assert_true(bson_utf8_validate(text, n, false));
   bson_t docs[4];
   assert_int_equal(read_lines(docs, 4), 2);
   assert_string_equal(str(&docs[0], "actor.user"), "root\xef\xbf\xbd(");
   assert_string_equal(str(&docs[0], "unmapped.reason"),
                       "no such user root\xef\xbf\xbd(");
   assert_string_equal(str(&docs[0], "status"), "Failure");
   assert_string_equal(str(&docs[1], "unmapped.processor"), "p\xef\xbf\xbd");
   assert_int_equal(num(&docs[1], "unmapped.code"), 13);
   assert_string_equal(str(&docs[1], "status_detail"),
                       "not authorized on p\xef\xbf\xbd");
   bson_destroy(&docs[0]);
   bson_destroy(&docs[1]);
}

#define N_THREADS 4
#define PER_THREAD 500

static void
writer(void *arg)
{
   aspen_audit_t *audit = arg;
   aspen_audit_event_t ev = {
      .class_name = "API Activity", .class_uid = 6003,
      .activity = "Update", .activity_id = 3,
      .user = "bob", .db = "admin", .peer = "10.0.0.1:1",
      .operation = "startStreamProcessor", .success = true,
   };
   for (int i = 0; i < PER_THREAD; i++) {
      aspen_audit_write(audit, &ev);
   }
}

static void
test_threads_whole_lines(void **state)
{
   (void) state;
   aspen_error_t err;
   aspen_audit_t *audit = aspen_audit_new(tmp_path, &err);
   assert_non_null(audit);
   uv_thread_t t[N_THREADS];
   for (int i = 0; i < N_THREADS; i++) {
      assert_int_equal(uv_thread_create(&t[i], writer, audit), 0);
   }
   for (int i = 0; i < N_THREADS; i++) {
      uv_thread_join(&t[i]);
   }
   aspen_audit_destroy(audit);
   static bson_t docs[N_THREADS * PER_THREAD + 1];
   int n = read_lines(docs, N_THREADS * PER_THREAD + 1);
   assert_int_equal(n, N_THREADS * PER_THREAD);
   for (int i = 0; i < n; i++) {
      assert_string_equal(str(&docs[i], "actor.user"), "bob");
      bson_destroy(&docs[i]);
   }
}

static void
test_bad_path(void **state)
{
   (void) state;
   aspen_error_t err;
   assert_null(aspen_audit_new("/nonexistent-dir/aspen/audit.log", &err));
   assert_int_equal(err.code, ASPEN_ERR_BadValue);
   assert_non_null(strstr(err.message, "security.auditLog.path"));
}

int
main(void)
{
   aspen_log_set_level(ASPEN_LOG_ERROR);
   const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_event_types, setup, teardown),
      cmocka_unit_test_setup_teardown(test_threads_whole_lines, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_bad_path, setup, teardown),
      cmocka_unit_test_setup_teardown(test_invalid_utf8_kept, setup,
                                      teardown),
   };
   return cmocka_run_group_tests_name("audit", tests, NULL, NULL);
}
