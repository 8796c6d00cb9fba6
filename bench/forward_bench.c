/*
 * forward_bench.c - a benchmark (not a test) of aspen's forwarding path.
 *
 * For three targets, the backing server directly, the same server through a
 * plain TCP relay (socat: the cost of one more hop and nothing else) and
 * through aspen, it measures two workloads, each with 1 client thread and
 * with 4:
 *
 *   insert_one  insert of a small document (into a fresh collection)
 *   find_one    find by _id of an existing small document (limit 1,
 *               singleBatch, so no getMore or killCursors follows)
 *
 * and prints ops/s, p50 and p99 latency (microseconds) per target, the
 * ratios to direct, and for aspen the two figures of issue 19 against the
 * relay: its throughput over the relay's, and its added p50 (over direct)
 * over the relay's added p50. Given --aspen-pid, it also prints aspen's RSS
 * before and after and its CPU time and context switches per measured op
 * (all from /proc). Nothing here passes or fails on a timing; the exit
 * status is non-zero only if the setup or an operation failed. Without
 * --relay the relay rows and columns are left out.
 *
 * Each thread has its own client popped from a mongoc client pool (one pool
 * per target). Before each measurement every thread runs some warm-up
 * operations on its own client, then all threads start together; the clock
 * runs from that start until the last thread finishes. Measurements
 * alternate direct / relay / aspen, after a global warm-up of all (the
 * backing server is a JVM and needs JIT warm-up).
 *
 * usage: forward_bench --direct URI --aspen URI [--relay URI] [--ops N (20000)]
 *                      [--warmup N (10000)] [--threads T (4)] [--aspen-pid PID]
 *
 * Build: gcc -O2 forward_bench.c $(pkg-config --cflags --libs libmongoc-1.0)
 *        -lpthread   (bench/forward.sh does it).
 */
#include <mongoc/mongoc.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DB_NAME "aspen_bench"
#define FIND_COLL "find_docs"
#define FIND_DOCS 1000

typedef enum { W_INSERT, W_FIND } workload_t;
static const char *const workload_names[] = {"insert_one", "find_one"};

typedef struct {
   const char *name;
   mongoc_client_pool_t *pool;
} target_t;

typedef struct {
   target_t *target;
   workload_t wl;
   const char *coll_name;
   int warm_ops;
   int ops;
   uint64_t *lat_ns; /* ops entries */
   unsigned seed;
   int errors;
   char first_error[sizeof ((bson_error_t *) 0)->message];
   pthread_barrier_t *start;
   pthread_barrier_t *ready;
} worker_t;

typedef struct {
   double ops_per_s;
   double p50_us, p99_us;
   int errors;
   double cpu_us_per_op; /* aspen's CPU time (all threads), -1 if unknown */
   double csw_per_op;    /* aspen's context switches (all threads), -1 too */
} result_t;

/* CPU time (user + system, all threads) and context switches (voluntary and
 * not, summed over its threads) of a process, from /proc. */
typedef struct {
   bool ok;
   double cpu_s;
   long csw;
} proc_sample_t;

static proc_sample_t
proc_sample(long pid)
{
   proc_sample_t ps = {false, 0, 0};
   if (pid <= 0) {
      return ps;
   }
   char path[96], buf[1024];
   snprintf(path, sizeof path, "/proc/%ld/stat", pid);
   FILE *f = fopen(path, "r");
   if (!f) {
      return ps;
   }
   size_t n = fread(buf, 1, sizeof buf - 1, f);
   fclose(f);
   buf[n] = '\0';
   /* Fields after "(comm)": state is field 3, utime 14, stime 15. */
   char *p = strrchr(buf, ')');
   if (!p) {
      return ps;
   }
   unsigned long long ut = 0, st = 0;
   if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
              &ut, &st) != 2) {
      return ps;
   }
   ps.cpu_s = (double) (ut + st) / (double) sysconf(_SC_CLK_TCK);
   snprintf(path, sizeof path, "/proc/%ld/task", pid);
   DIR *d = opendir(path);
   if (!d) {
      return ps;
   }
   struct dirent *de;
   while ((de = readdir(d))) {
      if (de->d_name[0] == '.') {
         continue;
      }
      snprintf(path, sizeof path, "/proc/%ld/task/%.20s/status", pid, de->d_name);
      FILE *tf = fopen(path, "r");
      if (!tf) {
         continue;
      }
      while (fgets(buf, sizeof buf, tf)) {
         long v;
         if (sscanf(buf, "voluntary_ctxt_switches: %ld", &v) == 1 ||
             sscanf(buf, "nonvoluntary_ctxt_switches: %ld", &v) == 1) {
            ps.csw += v;
         }
      }
      fclose(tf);
   }
   closedir(d);
   ps.ok = true;
   return ps;
}

static uint64_t
now_ns(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_MONOTONIC, &ts);
   return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static unsigned
xorshift(unsigned *s)
{
   unsigned x = *s;
   x ^= x << 13;
   x ^= x >> 17;
   x ^= x << 5;
   return *s = x;
}

static void
die(const char *fmt, ...)
{
   va_list ap;
   va_start(ap, fmt);
   fprintf(stderr, "forward_bench: ");
   vfprintf(stderr, fmt, ap);
   fprintf(stderr, "\n");
   va_end(ap);
   exit(2);
}

/* One operation; false (and *err) on failure. */
static bool
one_op(worker_t *w, mongoc_collection_t *coll, int i, bson_error_t *err)
{
   if (w->wl == W_INSERT) {
      bson_t doc = BSON_INITIALIZER;
      BSON_APPEND_INT32(&doc, "x", i);
      BSON_APPEND_UTF8(&doc, "s", "a small benchmark document");
      /* mongoc adds an ObjectId _id. */
      bool ok = mongoc_collection_insert_one(coll, &doc, NULL, NULL, err);
      bson_destroy(&doc);
      return ok;
   }
   int key = (int) (xorshift(&w->seed) % FIND_DOCS);
   bson_t filter = BSON_INITIALIZER;
   BSON_APPEND_INT32(&filter, "_id", key);
   bson_t opts = BSON_INITIALIZER;
   BSON_APPEND_INT64(&opts, "limit", 1);
   BSON_APPEND_BOOL(&opts, "singleBatch", true);
   mongoc_cursor_t *c =
      mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
   const bson_t *doc;
   bool found = mongoc_cursor_next(c, &doc);
   bool ok = true;
   if (mongoc_cursor_error(c, err)) {
      ok = false;
   } else if (!found) {
      bson_set_error(err, 0, 0, "find_one: _id %d not found", key);
      ok = false;
   }
   mongoc_cursor_destroy(c);
   bson_destroy(&filter);
   bson_destroy(&opts);
   return ok;
}

static void
note_error(worker_t *w, const bson_error_t *err)
{
   if (w->errors++ == 0) {
      snprintf(w->first_error, sizeof w->first_error, "%s", err->message);
   }
}

static void *
worker_main(void *arg)
{
   worker_t *w = arg;
   mongoc_client_t *client = mongoc_client_pool_pop(w->target->pool);
   mongoc_collection_t *coll =
      mongoc_client_get_collection(client, DB_NAME, w->coll_name);
   bson_error_t err;
   for (int i = 0; i < w->warm_ops; i++) {
      if (!one_op(w, coll, -1 - i, &err)) {
         note_error(w, &err);
      }
   }
   pthread_barrier_wait(w->ready);
   pthread_barrier_wait(w->start);
   for (int i = 0; i < w->ops; i++) {
      uint64_t t0 = now_ns();
      if (!one_op(w, coll, i, &err)) {
         note_error(w, &err);
      }
      w->lat_ns[i] = now_ns() - t0;
   }
   mongoc_collection_destroy(coll);
   mongoc_client_pool_push(w->target->pool, client);
   return NULL;
}

static int
cmp_u64(const void *a, const void *b)
{
   uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
   return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static double
percentile_us(const uint64_t *v, size_t n, double p)
{
   size_t rank = (size_t) (p * (double) n + 0.999999);
   if (rank < 1) {
      rank = 1;
   }
   if (rank > n) {
      rank = n;
   }
   return (double) v[rank - 1] / 1000.0;
}

static result_t
run(target_t *t, workload_t wl, const char *coll_name, int threads,
    int total_ops, int warm_per_thread, long probe_pid)
{
   worker_t *ws = calloc((size_t) threads, sizeof *ws);
   pthread_t *tids = calloc((size_t) threads, sizeof *tids);
   uint64_t *lat = calloc((size_t) total_ops, sizeof *lat);
   if (!ws || !tids || !lat) {
      die("out of memory");
   }
   pthread_barrier_t ready, start;
   pthread_barrier_init(&ready, NULL, (unsigned) threads + 1);
   pthread_barrier_init(&start, NULL, (unsigned) threads + 1);
   int off = 0;
   for (int i = 0; i < threads; i++) {
      worker_t *w = &ws[i];
      w->target = t;
      w->wl = wl;
      w->coll_name = coll_name;
      w->warm_ops = warm_per_thread;
      w->ops = total_ops / threads + (i < total_ops % threads ? 1 : 0);
      w->lat_ns = lat + off;
      off += w->ops;
      w->seed = 0x9e3779b9u * (unsigned) (i + 1) + (unsigned) wl;
      w->ready = &ready;
      w->start = &start;
      pthread_create(&tids[i], NULL, worker_main, w);
   }
   pthread_barrier_wait(&ready); /* all warmed up */
   proc_sample_t s0 = proc_sample(probe_pid);
   uint64_t t0 = now_ns();
   pthread_barrier_wait(&start);
   for (int i = 0; i < threads; i++) {
      pthread_join(tids[i], NULL);
   }
   uint64_t wall = now_ns() - t0;
   proc_sample_t s1 = proc_sample(probe_pid);
   pthread_barrier_destroy(&ready);
   pthread_barrier_destroy(&start);

   result_t r = {0};
   r.cpu_us_per_op = r.csw_per_op = -1;
   if (s0.ok && s1.ok) {
      r.cpu_us_per_op = (s1.cpu_s - s0.cpu_s) * 1e6 / total_ops;
      r.csw_per_op = (double) (s1.csw - s0.csw) / total_ops;
   }
   for (int i = 0; i < threads; i++) {
      if (ws[i].errors) {
         fprintf(stderr, "forward_bench: %s %s thread %d: %d errors, first: %s\n",
                 t->name, workload_names[wl], i, ws[i].errors,
                 ws[i].first_error);
         r.errors += ws[i].errors;
      }
   }
   qsort(lat, (size_t) total_ops, sizeof *lat, cmp_u64);
   r.ops_per_s = (double) total_ops / ((double) wall / 1e9);
   r.p50_us = percentile_us(lat, (size_t) total_ops, 0.50);
   r.p99_us = percentile_us(lat, (size_t) total_ops, 0.99);
   free(lat);
   free(tids);
   free(ws);
   return r;
}

static mongoc_client_pool_t *
make_pool(const char *uri_str, const char *what)
{
   bson_error_t err;
   mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_str, &err);
   if (!uri) {
      die("bad %s URI %s: %s", what, uri_str, err.message);
   }
   mongoc_uri_set_appname(uri, "aspen-forward-bench");
   mongoc_client_pool_t *pool = mongoc_client_pool_new(uri);
   mongoc_uri_destroy(uri);
   if (!pool) {
      die("cannot create a client pool for %s", uri_str);
   }
   mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2);
   /* Fail fast if the target is not there. */
   mongoc_client_t *c = mongoc_client_pool_pop(pool);
   bson_t *ping = BCON_NEW("ping", BCON_INT32(1));
   bson_t reply;
   bool ok = mongoc_client_command_simple(c, "admin", ping, NULL, &reply, &err);
   bson_destroy(ping);
   bson_destroy(&reply);
   mongoc_client_pool_push(pool, c);
   if (!ok) {
      die("ping %s (%s) failed: %s", what, uri_str, err.message);
   }
   return pool;
}

/* Fresh database: FIND_DOCS small documents with _id 0..FIND_DOCS-1. */
static void
prepare(mongoc_client_pool_t *direct)
{
   mongoc_client_t *c = mongoc_client_pool_pop(direct);
   mongoc_database_t *db = mongoc_client_get_database(c, DB_NAME);
   bson_error_t err;
   (void) mongoc_database_drop(db, &err);
   mongoc_database_destroy(db);
   mongoc_collection_t *coll = mongoc_client_get_collection(c, DB_NAME, FIND_COLL);
   bson_t **docs = calloc(FIND_DOCS, sizeof *docs);
   for (int i = 0; i < FIND_DOCS; i++) {
      docs[i] = BCON_NEW("_id", BCON_INT32(i), "x", BCON_INT32(i), "s",
                         BCON_UTF8("a small benchmark document"));
   }
   bool ok = mongoc_collection_insert_many(coll, (const bson_t **) docs,
                                           FIND_DOCS, NULL, NULL, &err);
   for (int i = 0; i < FIND_DOCS; i++) {
      bson_destroy(docs[i]);
   }
   free(docs);
   mongoc_collection_destroy(coll);
   mongoc_client_pool_push(direct, c);
   if (!ok) {
      die("cannot insert the find_one documents: %s", err.message);
   }
}

/* VmRSS of pid in kB, or -1. */
static long
rss_kb(long pid)
{
   if (pid <= 0) {
      return -1;
   }
   char path[64], line[256];
   snprintf(path, sizeof path, "/proc/%ld/status", pid);
   FILE *f = fopen(path, "r");
   if (!f) {
      return -1;
   }
   long kb = -1;
   while (fgets(line, sizeof line, f)) {
      if (strncmp(line, "VmRSS:", 6) == 0) {
         kb = strtol(line + 6, NULL, 10);
         break;
      }
   }
   fclose(f);
   return kb;
}

static void
print_rss(long pid, const char *when)
{
   if (pid > 0) {
      long kb = rss_kb(pid);
      if (kb >= 0) {
         printf("aspen RSS %-26s %8ld kB (%.1f MiB)\n", when, kb, kb / 1024.0);
      } else {
         printf("aspen RSS %-26s unavailable (pid %ld: %s)\n", when, pid,
                strerror(errno));
      }
      fflush(stdout);
   }
}

static int
int_arg(const char *s, const char *name, int min)
{
   char *end;
   long v = strtol(s, &end, 10);
   if (*s == '\0' || *end != '\0' || v < min || v > 100000000) {
      die("bad %s: %s", name, s);
   }
   return (int) v;
}

int
main(int argc, char **argv)
{
   const char *direct_uri = NULL, *aspen_uri = NULL, *relay_uri = NULL;
   int ops = 20000, warmup = 10000, max_threads = 4;
   long aspen_pid = 0;
   for (int i = 1; i < argc; i++) {
      const char *a = argv[i];
      const char *v = i + 1 < argc ? argv[i + 1] : NULL;
      if (!v) {
         die("usage: forward_bench --direct URI --aspen URI [--relay URI] "
             "[--ops N] [--warmup N] [--threads T] [--aspen-pid PID]");
      }
      if (strcmp(a, "--direct") == 0) {
         direct_uri = v;
      } else if (strcmp(a, "--aspen") == 0) {
         aspen_uri = v;
      } else if (strcmp(a, "--relay") == 0) {
         relay_uri = v;
      } else if (strcmp(a, "--ops") == 0) {
         ops = int_arg(v, "--ops", 1);
      } else if (strcmp(a, "--warmup") == 0) {
         warmup = int_arg(v, "--warmup", 0);
      } else if (strcmp(a, "--threads") == 0) {
         max_threads = int_arg(v, "--threads", 1);
      } else if (strcmp(a, "--aspen-pid") == 0) {
         aspen_pid = int_arg(v, "--aspen-pid", 1);
      } else {
         die("unknown argument %s", a);
      }
      i++;
   }
   if (!direct_uri || !aspen_uri) {
      die("--direct and --aspen are required");
   }

   mongoc_init();
   /* direct, [relay,] aspen: aspen is always the last. */
   target_t targets[3];
   int n_t = 0;
   targets[n_t++] = (target_t){"direct", make_pool(direct_uri, "direct")};
   if (relay_uri) {
      targets[n_t++] = (target_t){"relay", make_pool(relay_uri, "relay")};
   }
   targets[n_t++] = (target_t){"aspen", make_pool(aspen_uri, "aspen")};
   const int ia = n_t - 1, ir = relay_uri ? 1 : -1;
   prepare(targets[0].pool);
   print_rss(aspen_pid, "before (idle, connected)");

   int thread_counts[2] = {1, max_threads};
   int n_tc = max_threads == 1 ? 1 : 2;

   /* Global warm-up: both workloads on both targets, with the most threads
    * (so every aspen lane and backend connection is in use at least once). */
   uint64_t tw = now_ns();
   int total_errors = 0;
   for (int w = 0; w < 2 && warmup > 0; w++) {
      for (int t = 0; t < n_t; t++) {
         result_t r = run(&targets[t], (workload_t) w, w == W_INSERT ? "warmup" : FIND_COLL,
                          max_threads, warmup, 0, 0);
         total_errors += r.errors;
      }
   }
   printf("warm-up: %d ops per workload and target, %d threads, %.1f s\n",
          warmup, max_threads, (double) (now_ns() - tw) / 1e9);
   print_rss(aspen_pid, "after warm-up");
   fflush(stdout);

   printf("\n%d measured ops per row (spread over the threads); latency per "
          "op in microseconds.\n"
          "ratio columns are target/direct: ops/s < 1 and p50 > 1 mean the "
          "target is slower.\n"
          "+p50: p50 added over direct. cpu/op: aspen's CPU time (all "
          "threads) per op in\n"
          "microseconds; csw/op: its context switches (all threads) per op. "
          "Both from /proc,\nover the measured ops only.\n\n",
          ops);
   printf("%-10s %7s %-7s %10s %9s %9s %8s %11s %9s %9s %6s %6s\n", "workload",
          "threads", "target", "ops/s", "p50 us", "p99 us", "+p50 us",
          "ops/s ratio", "p50 ratio", "cpu/op", "csw/op", "errors");
   printf("%-10s %7s %-7s %10s %9s %9s %8s %11s %9s %9s %6s %6s\n", "----------",
          "-------", "-------", "----------", "---------", "---------",
          "--------", "-----------", "---------", "---------", "------",
          "------");
   /* aspen against the relay, per row, for the summary. */
   char summary[4][160];
   int n_summary = 0;
   fflush(stdout);
   uint64_t tm = now_ns();
   for (int tc = 0; tc < n_tc; tc++) {
      int threads = thread_counts[tc];
      for (int w = 0; w < 2; w++) {
         result_t res[3];
         for (int t = 0; t < n_t; t++) {
            char coll[64];
            const char *cname = FIND_COLL;
            if (w == W_INSERT) {
               /* A fresh collection per row, so each starts equally empty. */
               snprintf(coll, sizeof coll, "ins_%s_%dt", targets[t].name, threads);
               cname = coll;
            }
            int per_thread = ops / threads;
            int warm = per_thread / 10 < 200 ? 200 : per_thread / 10;
            res[t] = run(&targets[t], (workload_t) w, cname, threads, ops, warm,
                         t == ia ? aspen_pid : 0);
            total_errors += res[t].errors;
            printf("%-10s %7d %-7s %10.0f %9.1f %9.1f", workload_names[w],
                   threads, targets[t].name, res[t].ops_per_s, res[t].p50_us,
                   res[t].p99_us);
            if (t > 0) {
               printf(" %8.1f %11.2f %9.2f", res[t].p50_us - res[0].p50_us,
                      res[t].ops_per_s / res[0].ops_per_s,
                      res[t].p50_us / res[0].p50_us);
            } else {
               printf(" %8s %11s %9s", "", "", "");
            }
            if (res[t].cpu_us_per_op >= 0) {
               printf(" %9.1f %6.1f", res[t].cpu_us_per_op, res[t].csw_per_op);
            } else {
               printf(" %9s %6s", "", "");
            }
            printf(" %6d\n", res[t].errors);
            fflush(stdout);
         }
         if (ir >= 0 && n_summary < 4) {
            double added_a = res[ia].p50_us - res[0].p50_us;
            double added_r = res[ir].p50_us - res[0].p50_us;
            double tput = res[ia].ops_per_s / res[ir].ops_per_s;
            /* A relay adding (almost) nothing makes the ratio meaningless:
             * say so instead of dividing by noise. */
            char lat[64];
            if (added_r >= 1.0) {
               snprintf(lat, sizeof lat, "%5.2f", added_a / added_r);
            } else {
               snprintf(lat, sizeof lat, "  n/a");
            }
            snprintf(summary[n_summary++], sizeof summary[0],
                     "%-10s %7d   %10.1f %10.1f   %s %s     %5.2f %s   %6.1f %6.1f",
                     workload_names[w], threads, added_r, added_a, lat,
                     added_r >= 1.0 && added_a / added_r <= 1.5 ? "ok " : "NO ",
                     tput, tput >= 0.9 ? "ok " : "NO ",
                     res[ia].cpu_us_per_op, res[ia].csw_per_op);
         }
      }
   }
   if (n_summary > 0) {
      printf("\naspen against the plain TCP relay (issue 19's targets: added "
             "p50 <= 1.5 x the relay's,\nthroughput >= 0.9 x the relay's; "
             "else <= 2 context switches per op):\n\n");
      printf("%-10s %7s   %10s %10s   %-9s   %-11s   %6s %6s\n", "workload",
             "threads", "relay +p50", "aspen +p50", "ratio", "ops/s ratio",
             "cpu/op", "csw/op");
      for (int i = 0; i < n_summary; i++) {
         printf("%s\n", summary[i]);
      }
   }
   printf("\nmeasured in %.1f s\n", (double) (now_ns() - tm) / 1e9);
   print_rss(aspen_pid, "after");

   /* Leave the backing server as we found it. */
   mongoc_client_t *c = mongoc_client_pool_pop(targets[0].pool);
   mongoc_database_t *db = mongoc_client_get_database(c, DB_NAME);
   bson_error_t err;
   (void) mongoc_database_drop(db, &err);
   mongoc_database_destroy(db);
   mongoc_client_pool_push(targets[0].pool, c);

   for (int t = 0; t < n_t; t++) {
      mongoc_client_pool_destroy(targets[t].pool);
   }
   mongoc_cleanup();
   if (total_errors) {
      fprintf(stderr, "forward_bench: %d operations failed\n", total_errors);
      return 1;
   }
   return 0;
}
