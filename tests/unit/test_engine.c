/*
 * test_engine.c - the engine's command layer and saved state (engine/
 * engine.c and the registry, engine/runtime/registry.c, included here to
 * reach their static helpers), driven through aspen_engine_command as the
 * proxy drives it:
 *  - strings that are not UTF-8 are refused at the command boundary, and
 *    no reply (an error cut mid-character included) carries invalid UTF-8;
 *  - a save that cannot be encoded or written never replaces a good file,
 *    and the command that asked for it fails with its state rolled back;
 *  - a wrong-shaped processors.json (or processor file) stops the engine
 *    with a message naming it, and the file is left as it was;
 *  - ids from the state files are aspen's own (no "../../tmp/x"), names
 *    follow aspen's rules, an embedded NUL never reaches a lookup;
 *  - an older aspen's processors.json migrates to one file per processor;
 *  - 2000 creates each write about one processor's bytes (not the whole
 *    state), and streams.maxProcessors refuses the one past the limit.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw */
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../engine/engine.c"
#include "../../engine/runtime/registry.c"

#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>

#define PIPE                                                                   \
   "[{\"$source\": {\"documents\": [{\"a\": 1}]}}, {\"$match\": {\"a\": 1}}, " \
   "{\"$merge\": {\"into\": {\"connectionName\": \"atlas\", \"db\": \"d\", "   \
   "\"coll\": \"c\"}}}]"

static char g_dir[256];

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
   (void) st;
   (void) flag;
   (void) ftw;
   return remove(path);
}

static void
rm_rf(const char *dir)
{
   (void) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh state directory (on /dev/shm when there is one: creates fsync). */
static int
setup(void **state)
{
   (void) state;
   const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
   snprintf(g_dir, sizeof g_dir, "%s/aspen-test-engine-XXXXXX", base);
   assert_non_null(mkdtemp(g_dir));
   return 0;
}

static int
teardown(void **state)
{
   (void) state;
   rm_rf(g_dir);
   return 0;
}

static aspen_engine_t *
open_engine(size_t max_processors, aspen_error_t *err)
{
   bson_error_t berr;
   bson_t *conns = bson_new_from_json(
      (const uint8_t *) "{\"0\": {\"name\": \"atlas\", \"type\": \"atlas\", "
                        "\"uri\": \"mongodb://127.0.0.1:9/\"}}",
      -1, &berr);
   assert_non_null(conns);
   aspen_engine_opts_t opts = {.state_dir = g_dir,
                               .connections = conns,
                               .max_processors = max_processors};
   aspen_engine_t *eng = aspen_engine_new(&opts, err);
   bson_destroy(conns);
   return eng;
}

static aspen_engine_t *
must_open(void)
{
   aspen_error_t err;
   aspen_engine_t *eng = open_engine(0, &err);
   if (!eng) {
      fail_msg("engine did not open: %s", err.message);
   }
   return eng;
}

/* Runs `cmd` (its first key names the command); *reply is initialised. */
static void
run(aspen_engine_t *eng, const bson_t *cmd, bson_t *reply)
{
   bson_iter_t it;
   assert_true(bson_iter_init(&it, cmd) && bson_iter_next(&it));
   bson_init(reply);
   assert_true(aspen_engine_command(eng, bson_iter_key(&it), cmd, 1, NULL,
                                    reply));
   /* Whatever happened, the reply is valid BSON with valid UTF-8. */
   assert_true(bson_validate(reply, BSON_VALIDATE_UTF8, NULL));
}

static void
run_json(aspen_engine_t *eng, const char *json, bson_t *reply)
{
   bson_error_t berr;
   bson_t cmd;
   if (!bson_init_from_json(&cmd, json, -1, &berr)) {
      fail_msg("bad test JSON %s: %s", json, berr.message);
   }
   run(eng, &cmd, reply);
   bson_destroy(&cmd);
}

static int32_t
code_of(const bson_t *reply)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, reply, "ok") && bson_iter_as_double(&it) == 1) {
      return 0;
   }
   assert_true(bson_iter_init_find(&it, reply, "code"));
   return bson_iter_int32(&it);
}

static void
expect_json(aspen_engine_t *eng, const char *json, int32_t code)
{
   bson_t reply;
   run_json(eng, json, &reply);
   if (code_of(&reply) != code) {
      char *r = bson_as_relaxed_extended_json(&reply, NULL);
      fail_msg("%s: expected code %d, got %s", json, code, r);
   }
   bson_destroy(&reply);
}

static void
create(aspen_engine_t *eng, const char *name)
{
   char json[512];
   snprintf(json, sizeof json,
            "{\"createStreamProcessor\": \"%s\", \"pipeline\": " PIPE "}",
            name);
   expect_json(eng, json, 0);
}

/* The names listStreamProcessors gives, joined with ','. */
static void
list_names(aspen_engine_t *eng, char *out, size_t cap)
{
   bson_t reply;
   run_json(eng, "{\"listStreamProcessors\": 1}", &reply);
   bson_iter_t it, arr, name;
   out[0] = '\0';
   assert_true(bson_iter_init_find(&it, &reply, "streamProcessors"));
   bson_iter_recurse(&it, &arr);
   while (bson_iter_next(&arr)) {
      bson_iter_t e;
      bson_iter_recurse(&arr, &e);
      assert_true(bson_iter_find_descendant(&e, "name", &name));
      size_t used = strlen(out);
      snprintf(out + used, cap - used, "%s%s", used ? "," : "",
               bson_iter_utf8(&name, NULL));
   }
   bson_destroy(&reply);
}

/* A whole file (free()), NULL when missing: the registry's own reader. */
static char *
slurp(const char *path, size_t *len)
{
   bool missing;
   aspen_error_t err;
   return read_state_file(path, len, &missing, &err);
}

static void
spit(const char *path, const char *text)
{
   FILE *f = fopen(path, "wb");
   assert_non_null(f);
   fputs(text, f);
   fclose(f);
}

/* The one processor file in processors/ (its path in `out`). */
static int
proc_files(char *out, size_t cap)
{
   char dir[512];
   snprintf(dir, sizeof dir, "%s/processors", g_dir);
   DIR *d = opendir(dir);
   if (!d) {
      return 0;
   }
   int n = 0;
   struct dirent *de;
   while ((de = readdir(d))) {
      if (de->d_name[0] != '.') {
         n++;
         snprintf(out, cap, "%s/%s", dir, de->d_name);
      }
   }
   closedir(d);
   return n;
}

/* ---- item 1: UTF-8 ---------------------------------------------------------- */

static void
test_invalid_utf8_refused(void **state)
{
   (void) state;
   aspen_engine_t *eng = must_open();
   create(eng, "good");

   /* A $match value and, separately, the name: "\xc3\x28" is not UTF-8. */
   bson_t pl = BSON_INITIALIZER, st, m, sink, into, src, docs;
   BSON_APPEND_DOCUMENT_BEGIN(&pl, "0", &st);
   BSON_APPEND_DOCUMENT_BEGIN(&st, "$source", &src);
   BSON_APPEND_ARRAY_BEGIN(&src, "documents", &docs);
   bson_append_array_end(&src, &docs);
   bson_append_document_end(&st, &src);
   bson_append_document_end(&pl, &st);
   BSON_APPEND_DOCUMENT_BEGIN(&pl, "1", &st);
   BSON_APPEND_DOCUMENT_BEGIN(&st, "$match", &m);
   bson_append_utf8(&m, "a", -1, "\xc3\x28", 2);
   bson_append_document_end(&st, &m);
   bson_append_document_end(&pl, &st);
   BSON_APPEND_DOCUMENT_BEGIN(&pl, "2", &st);
   BSON_APPEND_DOCUMENT_BEGIN(&st, "$merge", &sink);
   BSON_APPEND_DOCUMENT_BEGIN(&sink, "into", &into);
   BSON_APPEND_UTF8(&into, "connectionName", "atlas");
   BSON_APPEND_UTF8(&into, "db", "d");
   BSON_APPEND_UTF8(&into, "coll", "c");
   bson_append_document_end(&sink, &into);
   bson_append_document_end(&st, &sink);
   bson_append_document_end(&pl, &st);
   bson_t cmd = BSON_INITIALIZER, reply;
   BSON_APPEND_UTF8(&cmd, "createStreamProcessor", "bad");
   BSON_APPEND_ARRAY(&cmd, "pipeline", &pl);
   run(eng, &cmd, &reply);
   assert_int_equal(code_of(&reply), ASPEN_ERR_InvalidBSON);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, &reply, "errmsg"));
   assert_non_null(strstr(bson_iter_utf8(&it, NULL), "pipeline.1.$match.a"));
   bson_destroy(&reply);
   bson_destroy(&cmd);

   bson_init(&cmd);
   bson_append_utf8(&cmd, "createStreamProcessor", -1, "b\xc3\x28", 3);
   BSON_APPEND_ARRAY(&cmd, "pipeline", &pl);
   run(eng, &cmd, &reply);
   assert_int_equal(code_of(&reply), ASPEN_ERR_InvalidBSON);
   bson_destroy(&reply);
   bson_destroy(&cmd);
   bson_destroy(&pl);

   /* A rename to such a name. */
   bson_init(&cmd);
   BSON_APPEND_UTF8(&cmd, "modifyStreamProcessor", "good");
   bson_append_utf8(&cmd, "name", -1, "\xff", 1);
   run(eng, &cmd, &reply);
   assert_int_equal(code_of(&reply), ASPEN_ERR_InvalidBSON);
   bson_destroy(&reply);
   bson_destroy(&cmd);

   /* An error that quotes a long name is cut mid-character at its
    * buffer: the reply must still be valid UTF-8 (run checks). */
   char json[2048] = "{\"startStreamProcessor\": \"";
   for (int i = 0; i < 300; i++) {
      strcat(json, "\xc3\xa9");
   }
   strcat(json, "\"}");
   expect_json(eng, json, ASPEN_ERR_StreamProcessorDoesNotExist);

   char names[256];
   list_names(eng, names, sizeof names);
   assert_string_equal(names, "good");
   char path[600];
   assert_int_equal(proc_files(path, sizeof path), 1);
   aspen_engine_destroy(eng);

   /* What was saved loads again. */
   eng = must_open();
   list_names(eng, names, sizeof names);
   assert_string_equal(names, "good");
   aspen_engine_destroy(eng);
}

static void
test_failed_save_keeps_good_file(void **state)
{
   (void) state;
   aspen_engine_t *eng = must_open();
   create(eng, "keep");
   char path[600];
   assert_int_equal(proc_files(path, sizeof path), 1);
   size_t len0, len1;
   char *before = slurp(path, &len0);
   assert_non_null(before);

   /* A definition that does not encode (as one holding "\xc3\x28" did
    * before commands were checked): the save fails, the file stays. */
   aspen_proc_t *p = aspen_registry_find(eng->ctx.reg, "keep");
   assert_non_null(p);
   bson_t bad = BSON_INITIALIZER, stage;
   BSON_APPEND_DOCUMENT_BEGIN(&bad, "0", &stage);
   bson_append_utf8(&stage, "x", -1, "\xc3\x28", 2);
   bson_append_document_end(&bad, &stage);
   bson_t saved;
   bson_steal(&saved, &p->pipeline);
   bson_steal(&p->pipeline, &bad);
   aspen_error_t err;
   assert_false(aspen_registry_save(eng->ctx.reg, p, &err));
   assert_non_null(strstr(err.message, "does not encode"));
   bson_destroy(&p->pipeline);
   bson_steal(&p->pipeline, &saved);
   char *after = slurp(path, &len1);
   assert_int_equal(len0, len1);
   assert_memory_equal(before, after, len0);
   free(after);

   /* A write that fails (the temp file's name is taken by a directory):
    * modify is refused and nothing changes, in memory or on disk. */
   char tmp[700];
   snprintf(tmp, sizeof tmp, "%s.tmp", path);
   assert_int_equal(mkdir(tmp, 0700), 0);
   bson_t reply;
   run_json(eng, "{\"modifyStreamProcessor\": \"keep\", \"name\": \"renamed\"}",
            &reply);
   assert_int_equal(code_of(&reply), ASPEN_ERR_InternalError);
   bson_destroy(&reply);
   char names[256];
   list_names(eng, names, sizeof names);
   assert_string_equal(names, "keep");
   assert_int_equal(rmdir(tmp), 0);
   after = slurp(path, &len1);
   assert_int_equal(len0, len1);
   assert_memory_equal(before, after, len0);
   free(after);
   free(before);
   /* With the directory usable again, the rename and a drop work. */
   expect_json(eng, "{\"modifyStreamProcessor\": \"keep\", \"name\": \"renamed\"}",
               0);
   aspen_engine_destroy(eng);
   eng = must_open();
   list_names(eng, names, sizeof names);
   assert_string_equal(names, "renamed");
   expect_json(eng, "{\"dropStreamProcessor\": \"renamed\"}", 0);
   assert_int_equal(proc_files(path, sizeof path), 0);
   aspen_engine_destroy(eng);
}

/* ---- item 11 and 14: the state files ------------------------------------------ */

static void
expect_refused(const char *file, const char *text, const char *needle)
{
   char path[600];
   snprintf(path, sizeof path, "%s/%s", g_dir, file);
   char *slash = strrchr(path, '/');
   *slash = '\0';
   (void) aspen_file_mkdirs(path);
   *slash = '/';
   spit(path, text);
   aspen_error_t err;
   aspen_engine_t *eng = open_engine(0, &err);
   if (eng) {
      aspen_engine_destroy(eng);
      fail_msg("the engine opened with %s = %s", file, text);
   }
   assert_int_equal(err.code, ASPEN_ERR_FailedToParse);
   if (!strstr(err.message, needle) || !strstr(err.message, file)) {
      fail_msg("%s: expected \"%s\" in: %s", text, needle, err.message);
   }
   /* Never rewritten. */
   size_t len;
   char *now = slurp(path, &len);
   assert_non_null(now);
   assert_string_equal(now, text);
   free(now);
   (void) unlink(path);
}

#define ID "6b163eb9c64897f23705d4b0"
#define ENTRY(extra)                                                           \
   "{\"name\": \"p\", \"id\": \"" ID "\", \"pipeline\": [], \"state\": "       \
   "\"CREATED\"" extra "}"

static void
test_wrong_shape_refuses_start(void **state)
{
   (void) state;
   const char *f = "processors.json";
   expect_refused(f, "{\"processors\": 5}", "'processors' must be an array");
   expect_refused(f, "{\"version\": 1}", "'processors' is missing");
   expect_refused(f, "{\"procesors\": []}", "unknown field 'procesors'");
   expect_refused(f, "{\"processors\": [5]}", "processors[0]: not an object");
   expect_refused(f, "{\"processors\": [" ENTRY(", \"pipelnie\": []") "]}",
                  "unknown field 'pipelnie'");
   expect_refused(f,
                  "{\"processors\": [{\"name\": 5, \"id\": \"" ID
                  "\", \"pipeline\": []}]}",
                  "'name' must be a string");
   expect_refused(f,
                  "{\"processors\": [{\"name\": \"p\", \"id\": \"" ID
                  "\", \"pipeline\": {}}]}",
                  "'pipeline' must be an array");
   expect_refused(f,
                  "{\"processors\": [{\"name\": \"p\", \"id\": \"" ID
                  "\", \"pipeline\": [], \"state\": \"RUNNING\"}]}",
                  "'state' must be");
   expect_refused(f, "{\"processors\": [{\"name\": \"p\", \"pipeline\": []}]}",
                  "'id' is missing");
   expect_refused(f, "{\"processors\": [" ENTRY("") ", " ENTRY("") "]}",
                  "a second processor");
   expect_refused(f, "{\"version\": 7, \"processors\": []}",
                  "'version' must be 1");
   /* Item 14: an id that would name another directory. */
   expect_refused(f,
                  "{\"processors\": [{\"name\": \"p\", \"id\": "
                  "\"../../tmp/x\", \"pipeline\": []}]}",
                  "'id' must be 24 lowercase hex digits");
   expect_refused(f, "{\"processors\": [", "is corrupt");
   /* The same checks for a per-processor file. */
   expect_refused("processors/" ID ".json", ENTRY(", \"extra\": 1"),
                  "unknown field 'extra'");
   expect_refused("processors/" ID ".json",
                  "{\"name\": \"p\", \"id\": \"0123456789abcdef01234567\", "
                  "\"pipeline\": []}",
                  "is not the one its name says");
}

static void
test_legacy_file_migrates(void **state)
{
   (void) state;
   char path[600];
   snprintf(path, sizeof path, "%s/processors.json", g_dir);
   spit(path,
        "{\"version\": 1, \"processors\": ["
        "{\"name\": \"first\", \"id\": \"6b163eb9c64897f23705d4b2\", "
        "\"pipeline\": " PIPE ", \"state\": \"CREATED\", "
        "\"created\": {\"$date\": 1000}},"
        "{\"name\": \"second\", \"id\": \"6b163eb9c64897f23705d4b1\", "
        "\"pipeline\": " PIPE ", \"options\": {}, \"state\": \"STOPPED\", "
        "\"errorMsg\": \"\", \"created\": {\"$date\": 2000}, "
        "\"lastModified\": {\"$date\": 2000}, "
        "\"lastStateChange\": {\"$date\": 2000}}]}");
   aspen_engine_t *eng = must_open();
   char names[256];
   list_names(eng, names, sizeof names);
   assert_string_equal(names, "first,second");
   aspen_engine_destroy(eng);
   assert_int_equal(access(path, F_OK), -1);
   char done[700];
   snprintf(done, sizeof done, "%s.migrated", path);
   assert_int_equal(access(done, F_OK), 0);
   char one[600];
   assert_int_equal(proc_files(one, sizeof one), 2);
   eng = must_open();
   list_names(eng, names, sizeof names);
   assert_string_equal(names, "first,second");
   bson_t reply;
   run_json(eng, "{\"getStreamProcessor\": \"second\"}", &reply);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, &reply, "state"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "STOPPED");
   bson_destroy(&reply);
   aspen_engine_destroy(eng);
}

static void
test_names(void **state)
{
   (void) state;
   aspen_engine_t *eng = must_open();
   static const char *const bad[] = {
      "a/b", "..", "a..b", "ctl\\u0001", "sp ace", "tab\\t",
      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
      "nul\\u0000zzz", NULL};
   for (int i = 0; bad[i]; i++) {
      char json[512];
      snprintf(json, sizeof json,
               "{\"createStreamProcessor\": \"%s\", \"pipeline\": " PIPE "}",
               bad[i]);
      expect_json(eng, json, ASPEN_ERR_BadValue);
   }
   create(eng, "my-proc.v2_X");
   create(eng, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
   create(eng, "nul");
   /* Compared as C strings "nul\0zzz" was "nul": now it names nothing. */
   expect_json(eng, "{\"dropStreamProcessor\": \"nul\\u0000zzz\"}",
               ASPEN_ERR_BadValue);
   expect_json(eng, "{\"modifyStreamProcessor\": \"nul\", \"name\": \"../x\"}",
               ASPEN_ERR_BadValue);
   char names[512];
   list_names(eng, names, sizeof names);
   assert_non_null(strstr(names, "nul"));
   assert_int_equal(aspen_registry_count(eng->ctx.reg), 3);
   aspen_engine_destroy(eng);
}

/* ---- item 15: saves proportional to the change; the count limit ------------- */

/* Bytes this process has passed to write(2) so far (/proc/self/io). */
static uint64_t
bytes_written(void)
{
   FILE *f = fopen("/proc/self/io", "r");
   if (!f) {
      return 0;
   }
   char line[128];
   unsigned long long v = 0;
   while (fgets(line, sizeof line, f)) {
      if (sscanf(line, "wchar: %llu", &v) == 1) {
         break;
      }
   }
   fclose(f);
   return v;
}

static void
test_many_creates(void **state)
{
   (void) state;
   enum { N = 2000 };
   aspen_error_t err;
   aspen_engine_t *eng = open_engine(N, &err);
   assert_non_null(eng);
   uint64_t before_last = 0;
   for (int i = 0; i < N; i++) {
      if (i == N - 100) {
         before_last = bytes_written();
      }
      char name[32];
      snprintf(name, sizeof name, "p%d", i);
      create(eng, name);
   }
   uint64_t per_create = (bytes_written() - before_last) / 100;
   /* One processor's file is ~600 bytes; rewriting all 2000 was ~1 MB. */
   if (access("/proc/self/io", R_OK) == 0 && per_create > 8192) {
      fail_msg("a create wrote %llu bytes with %d processors saved",
               (unsigned long long) per_create, N);
   }
   char path[600];
   assert_int_equal(proc_files(path, sizeof path), N);
   /* The limit (streams.maxProcessors): the next one is refused, with a
    * drop there is room again. */
   char json[512];
   snprintf(json, sizeof json,
            "{\"createStreamProcessor\": \"over\", \"pipeline\": " PIPE "}");
   expect_json(eng, json, ASPEN_ERR_IllegalOperation);
   expect_json(eng, "{\"processStreamProcessor\": [{\"$source\": "
                    "{\"documents\": []}}]}",
               ASPEN_ERR_IllegalOperation);
   expect_json(eng, "{\"dropStreamProcessor\": \"p7\"}", 0);
   create(eng, "over");
   aspen_engine_destroy(eng);
   /* All of them load again. */
   eng = open_engine(N, &err);
   assert_non_null(eng);
   assert_int_equal(aspen_registry_count(eng->ctx.reg), N);
   aspen_engine_destroy(eng);
}

int
main(void)
{
   aspen_log_set_level(ASPEN_LOG_ERROR);
   const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_invalid_utf8_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_failed_save_keeps_good_file, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_wrong_shape_refuses_start, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_legacy_file_migrates, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_names, setup, teardown),
      cmocka_unit_test_setup_teardown(test_many_creates, setup, teardown),
   };
   return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
