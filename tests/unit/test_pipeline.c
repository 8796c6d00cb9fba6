/*
 * test_pipeline.c - the data-driven stage and pipeline cases in
 * tests/cases/pipeline/ (*.json), run straight through the engine's pipeline
 * (engine/runtime/pipeline.c and the stages), without threads, sinks or the
 * wire.
 *
 * The same files drive tests/e2e/js/pipeline_cases.js, which sends each case
 * to a running aspen with the real mongosh commands (libbson `bson_corpus`
 * style: one corpus, two runners). tests/cases/README.md describes the case
 * format. For each case this runner:
 *   1. builds the pipeline: the case's "pipeline" as given, or
 *      [{$source: {documents: input}}] + "stages" (+ a $merge into the
 *      testAtlas connection when "persistent" is true; testKafka is a
 *      Kafka, testKinesis a Kinesis and testS3 an S3 connection for
 *      option checks);
 *   2. parses it with aspen_pipeline_parse (ephemeral unless persistent);
 *      an "error" case must fail here with that code and message;
 *   3. pushes each document of the parsed $source, with a `_ts` Date (the
 *      timeField's value, or the ingestion time) appended and stream
 *      metadata {source: {type: "generated", ts}}, as the processor's ingest
 *      does (engine/runtime/rt.c);
 *   4. compares what reaches the output and DLQ hooks with "output" and
 *      "dlq", after dropping `_ts` and `_stream_meta` from actual documents.
 * Window cases: "source" adds options (timeField, ...) to the $source; an
 * expected output's "_window" is checked against the actual
 * `_stream_meta.window`; a DLQ entry's "missedWindowStartTimes" against the
 * stage's extra DLQ fields; "virtualClock" runs the input on the virtual
 * clock as README.md describes it ("now" is the latest event time seen, and
 * once the input is over time jumps far ahead through aspen_pipeline_tick,
 * as engine/runtime/rt.c's aspen_rt_wait does); "partitioned" (with
 * "unitOnly") makes each input a {doc, partition} wrapper whose partition
 * goes into `_stream_meta.source.partition` and is the partition key the
 * window keeps a watermark for, as a one-topic Kafka source sets them.
 * Documents are compared as canonical Extended JSON, so field order and BSON
 * types both count.
 *
 * One cmocka test per case file; every case of a file runs, and each failing
 * case prints the file, the case name and what differed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builtins.h"
#include "connectors/connectors.h"
#include "connectors/source_documents.h"
#include "runtime/pipeline.h"
#include "stages/match.h"
#include "stages/shape.h"
#include "stages/window.h"

#ifndef ASPEN_CASES_DIR
#error "ASPEN_CASES_DIR must name the tests/cases directory"
#endif

#define CASES_SUBDIR ASPEN_CASES_DIR "/pipeline"
/* The fixed "now" of every run: 2024-01-01T00:00:00Z. */
#define TEST_NOW_MS INT64_C(1704067200000)

static aspen_conns_t g_conns;

/* ======================================================================== */
/* Small helpers                                                             */
/* ======================================================================== */

/* A growing text buffer for failure reports. */
typedef struct {
   char *s;
   size_t len, cap;
} sbuf_t;

static void sbuf_printf(sbuf_t *b, const char *fmt, ...)
   __attribute__((format(printf, 2, 3)));

static void
sbuf_printf(sbuf_t *b, const char *fmt, ...)
{
   va_list ap;
   for (;;) {
      size_t room = b->cap - b->len;
      va_start(ap, fmt);
      int n = vsnprintf(b->s ? b->s + b->len : NULL, room, fmt, ap);
      va_end(ap);
      if (n < 0) {
         return;
      }
      if ((size_t) n < room) {
         b->len += (size_t) n;
         return;
      }
      b->cap = (b->cap + (size_t) n + 1) * 2;
      b->s = aspen_xrealloc(b->s, b->cap);
   }
}

static char *
read_file(const char *path, size_t *len)
{
   FILE *f = fopen(path, "rb");
   if (!f) {
      return NULL;
   }
   size_t cap = 4096, n = 0;
   char *buf = aspen_xmalloc(cap);
   size_t got;
   while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
      n += got;
      if (cap - n - 1 == 0) {
         cap *= 2;
         buf = aspen_xrealloc(buf, cap);
      }
   }
   fclose(f);
   buf[n] = '\0';
   *len = n;
   return buf;
}

/* Canonical Extended JSON of a document: what comparisons use. */
static char *
cjson(const bson_t *doc)
{
   return bson_as_canonical_extended_json(doc, NULL);
}

/* Copies `in` without the fields the runners ignore (`_ts`, `_stream_meta`);
 * one that libbson cannot walk (a malformed value a stage passed on as its
 * bytes) as it is. */
static bson_t *
strip_copy(const bson_t *in)
{
   bson_t *out = bson_new();
   bson_iter_t it;
   bool ok = bson_iter_init(&it, in);
   while (ok && bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "_ts") != 0 && strcmp(k, "_stream_meta") != 0) {
         ok = bson_append_iter(out, NULL, 0, &it);
      }
   }
   if (!ok || it.err_off != 0) {
      bson_destroy(out);
      return bson_copy(in);
   }
   return out;
}

/* ======================================================================== */
/* The case-file lint: things libbson and mongosh's EJSON.parse would read   */
/* differently, so the two runners would not test the same BSON.             */
/* ======================================================================== */

/* Integral numbers written with a '.' or an exponent ("2.0", "1e3") are
 * doubles to libbson but Int32 to EJSON.parse; all-digit keys ("0", "12")
 * are reordered by JavaScript objects. Returns false and reports the line. */
static bool
lint_case_text(const char *text, const char *file, sbuf_t *report)
{
   int line = 1;
   bool ok = true;
   for (const char *p = text; *p; p++) {
      if (*p == '\n') {
         line++;
         continue;
      }
      if (*p == '"') {
         const char *start = p + 1;
         p++;
         while (*p && *p != '"') {
            if (*p == '\\' && p[1]) {
               p++;
            }
            p++;
         }
         if (!*p) {
            break;
         }
         size_t klen = (size_t) (p - start);
         const char *q = p + 1;
         while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n') {
            q++;
         }
         if (*q == ':' && klen > 0 && strspn(start, "0123456789") >= klen) {
            sbuf_printf(report,
                        "%s:%d: key \"%.*s\" is all digits (JavaScript "
                        "reorders such keys)\n",
                        file, line, (int) klen, start);
            ok = false;
         }
         continue;
      }
      if ((*p == '-' || (*p >= '0' && *p <= '9')) &&
          (p == text || strchr(" \t\r\n:,[", p[-1]))) {
         size_t n = strspn(p, "-+0123456789.eE");
         if (memchr(p, '.', n) || memchr(p, 'e', n) || memchr(p, 'E', n)) {
            char num[64];
            snprintf(num, sizeof num, "%.*s", (int) n, p);
            double d = strtod(num, NULL);
            if (isfinite(d) && d == floor(d)) {
               sbuf_printf(report,
                           "%s:%d: %s is an integral double: write "
                           "{\"$numberDouble\": \"%s\"} so both runners "
                           "read a double\n",
                           file, line, num, num);
               ok = false;
            }
         }
         p += n - 1;
      }
   }
   return ok;
}

/* ======================================================================== */
/* What the pipeline produced                                                */
/* ======================================================================== */

typedef struct {
   char *operator_name;
   char *reason;
   bson_t *doc;   /* stripped copy, or NULL */
   bson_t *extra; /* the stage's extra DLQ fields (pl->dlq_extra), or NULL */
} dlq_entry_t;

typedef struct {
   bson_t **out;
   bson_t **out_window; /* each output's _stream_meta.window, or NULL */
   size_t n_out, cap_out;
   dlq_entry_t *dlq;
   size_t n_dlq, cap_dlq;
   const aspen_pipeline_t *pl;
   size_t n_out_tables; /* outputs that came with their field table */
} collector_t;

static void
on_output(void *arg, const aspen_sdoc_t *d)
{
   collector_t *c = arg;
   if (c->n_out == c->cap_out) {
      c->cap_out = c->cap_out ? c->cap_out * 2 : 8;
      c->out = aspen_xrealloc(c->out, c->cap_out * sizeof *c->out);
      c->out_window = aspen_xrealloc(c->out_window,
                                     c->cap_out * sizeof *c->out_window);
   }
   bson_t *window = NULL;
   bson_iter_t it;
   bson_t sub;
   if (d->meta && bson_iter_init_find(&it, d->meta, "window") &&
       BSON_ITER_HOLDS_DOCUMENT(&it) && aspen_bson_view(&it, &sub)) {
      window = bson_copy(&sub);
   }
   c->out_window[c->n_out] = window;
   c->out[c->n_out++] = strip_copy(d->doc);
   c->n_out_tables += aspen_fields_covers(d->fields, d->doc);
}

static void
on_dlq(void *arg, const aspen_sdoc_t *in, const char *operator_name,
       const char *reason)
{
   collector_t *c = arg;
   if (c->n_dlq == c->cap_dlq) {
      c->cap_dlq = c->cap_dlq ? c->cap_dlq * 2 : 8;
      c->dlq = aspen_xrealloc(c->dlq, c->cap_dlq * sizeof *c->dlq);
   }
   dlq_entry_t *e = &c->dlq[c->n_dlq++];
   e->operator_name = aspen_xstrdup(operator_name ? operator_name : "");
   e->reason = aspen_xstrdup(reason ? reason : "");
   e->doc = in->doc ? strip_copy(in->doc) : NULL;
   e->extra = c->pl && c->pl->dlq_extra ? bson_copy(c->pl->dlq_extra) : NULL;
}

/* An empty collector `c` takes `pl`'s output and DLQ. */
static void
collector_attach(collector_t *c, aspen_pipeline_t *pl)
{
   memset(c, 0, sizeof *c);
   pl->output = on_output;
   pl->dlq = on_dlq;
   pl->hook_arg = c;
   c->pl = pl;
}

static void
collector_cleanup(collector_t *c)
{
   for (size_t i = 0; i < c->n_out; i++) {
      bson_destroy(c->out[i]);
      if (c->out_window[i]) {
         bson_destroy(c->out_window[i]);
      }
   }
   for (size_t i = 0; i < c->n_dlq; i++) {
      free(c->dlq[i].operator_name);
      free(c->dlq[i].reason);
      if (c->dlq[i].doc) {
         bson_destroy(c->dlq[i].doc);
      }
      if (c->dlq[i].extra) {
         bson_destroy(c->dlq[i].extra);
      }
   }
   free(c->out);
   free(c->out_window);
   free(c->dlq);
   memset(c, 0, sizeof *c);
}

/* ======================================================================== */
/* One case                                                                  */
/* ======================================================================== */

/* The fields a case may have; anything else is a typo in the case file. */
static const char *const case_keys[] = {
   "name",   "comment",    "stages",       "pipeline",    "input",
   "output", "dlq",        "error",        "code",        "persistent",
   "source", "virtualClock", "unitOnly",   "partitioned", "js",
   NULL};
static const char *const dlq_keys[] = {"operatorName", "reason", "doc",
                                       "exactReason",
                                       "missedWindowStartTimes", NULL};

static bool
key_allowed(const char *k, const char *const *keys)
{
   for (size_t i = 0; keys[i]; i++) {
      if (strcmp(keys[i], k) == 0) {
         return true;
      }
   }
   return false;
}

/* Checks `text` against an expectation that is one substring or an array of
 * substrings (all must appear). With `exact`, a single string must equal. */
static bool
text_matches(const char *text, const bson_iter_t *want, bool exact,
             sbuf_t *why, const char *what)
{
   if (BSON_ITER_HOLDS_UTF8(want)) {
      const char *s = bson_iter_utf8(want, NULL);
      bool ok = exact ? strcmp(text, s) == 0 : strstr(text, s) != NULL;
      if (!ok) {
         sbuf_printf(why, "    %s %s \"%s\"\n      got: \"%s\"\n", what,
                     exact ? "should be" : "should contain", s, text);
      }
      return ok;
   }
   bson_t arr;
   if (!BSON_ITER_HOLDS_ARRAY(want) || !aspen_bson_view(want, &arr)) {
      sbuf_printf(why, "    bad expectation for %s: a string or an array "
                       "of strings\n",
                  what);
      return false;
   }
   bool ok = true;
   bson_iter_t it;
   bson_iter_init(&it, &arr);
   while (bson_iter_next(&it)) {
      if (!BSON_ITER_HOLDS_UTF8(&it)) {
         sbuf_printf(why, "    bad expectation for %s: not a string\n", what);
         return false;
      }
      const char *s = bson_iter_utf8(&it, NULL);
      if (!strstr(text, s)) {
         sbuf_printf(why, "    %s should contain \"%s\"\n      got: \"%s\"\n",
                     what, s, text);
         ok = false;
      }
   }
   return ok;
}

static void
append_doc_list(sbuf_t *why, const char *label, bson_t **docs,
                bson_t **windows, size_t n)
{
   sbuf_printf(why, "    %s (%zu):\n", label, n);
   for (size_t i = 0; i < n; i++) {
      char *j = cjson(docs[i]);
      char *wj = windows && windows[i] ? cjson(windows[i]) : NULL;
      sbuf_printf(why, "      %s%s%s\n", j, wj ? "  window: " : "",
                  wj ? wj : "");
      bson_free(j);
      bson_free(wj);
   }
}

/* Compares the collected outputs with the case's "output" array. */
static bool
check_outputs(const collector_t *c, const bson_t *want, sbuf_t *why)
{
   size_t n_want = bson_count_keys(want);
   bool ok = n_want == c->n_out;
   bson_iter_t it;
   size_t i = 0;
   bson_iter_init(&it, want);
   while (ok && bson_iter_next(&it)) {
      bson_t w;
      if (!aspen_bson_view(&it, &w)) {
         sbuf_printf(why, "    output[%zu] in the case is not a document\n",
                     i);
         return false;
      }
      /* "_window": the expected _stream_meta.window of that output. */
      bson_t plain = BSON_INITIALIZER;
      bson_iter_t wi;
      bson_copy_to_excluding_noinit(&w, &plain, "_window", NULL);
      char *wj = cjson(&plain), *gj = cjson(c->out[i]);
      ok = strcmp(wj, gj) == 0;
      bson_free(wj);
      bson_free(gj);
      bson_destroy(&plain);
      bson_t ww;
      if (ok && bson_iter_init_find(&wi, &w, "_window")) {
         if (!aspen_bson_view(&wi, &ww) || !BSON_ITER_HOLDS_DOCUMENT(&wi)) {
            sbuf_printf(why, "    output[%zu]._window in the case is not a "
                             "document\n",
                        i);
            return false;
         }
         char *ej = cjson(&ww);
         char *aj = c->out_window[i] ? cjson(c->out_window[i]) : NULL;
         if (!aj || strcmp(ej, aj) != 0) {
            sbuf_printf(why,
                        "    output[%zu]: _stream_meta.window differs\n"
                        "      expected: %s\n      actual:   %s\n",
                        i, ej, aj ? aj : "(none)");
            ok = false;
         }
         bson_free(ej);
         bson_free(aj);
         if (!ok) {
            return false;
         }
      }
      i++;
   }
   if (!ok) {
      bson_t **wl = aspen_xcalloc(n_want ? n_want : 1, sizeof *wl);
      size_t k = 0;
      bson_t tmp[64];
      bson_iter_init(&it, want);
      while (bson_iter_next(&it) && k < 64) {
         if (aspen_bson_view(&it, &tmp[k])) {
            wl[k] = &tmp[k];
            k++;
         }
      }
      sbuf_printf(why, "    outputs differ\n");
      append_doc_list(why, "expected", wl, NULL, k);
      append_doc_list(why, "actual", c->out, c->out_window, c->n_out);
      free(wl);
   }
   return ok;
}

/* Compares the collected DLQ entries with the case's "dlq" array (absent:
 * none expected). */
static bool
check_dlq(const collector_t *c, const bson_t *want, sbuf_t *why)
{
   size_t n_want = want ? bson_count_keys(want) : 0;
   bool ok = true;
   if (n_want != c->n_dlq) {
      sbuf_printf(why, "    expected %zu DLQ entries, got %zu\n", n_want,
                  c->n_dlq);
      for (size_t i = 0; i < c->n_dlq; i++) {
         char *j = c->dlq[i].doc ? cjson(c->dlq[i].doc) : NULL;
         sbuf_printf(why, "      %s: %s\n        doc: %s\n",
                     c->dlq[i].operator_name, c->dlq[i].reason,
                     j ? j : "(none)");
         bson_free(j);
      }
      return false;
   }
   if (!want) {
      return true;
   }
   bson_iter_t it;
   size_t i = 0;
   bson_iter_init(&it, want);
   while (bson_iter_next(&it)) {
      const dlq_entry_t *e = &c->dlq[i];
      bson_t w;
      bson_iter_t f;
      char what[64];
      if (!aspen_bson_view(&it, &w)) {
         sbuf_printf(why, "    dlq[%zu] in the case is not a document\n", i);
         return false;
      }
      bson_iter_init(&f, &w);
      while (bson_iter_next(&f)) {
         if (!key_allowed(bson_iter_key(&f), dlq_keys)) {
            sbuf_printf(why, "    dlq[%zu]: unknown key \"%s\"\n", i,
                        bson_iter_key(&f));
            ok = false;
         }
      }
      if (bson_iter_init_find(&f, &w, "operatorName") &&
          BSON_ITER_HOLDS_UTF8(&f) &&
          strcmp(bson_iter_utf8(&f, NULL), e->operator_name) != 0) {
         sbuf_printf(why, "    dlq[%zu].operatorName: expected %s, got %s\n",
                     i, bson_iter_utf8(&f, NULL), e->operator_name);
         ok = false;
      }
      bool exact = bson_iter_init_find(&f, &w, "exactReason") &&
                   BSON_ITER_HOLDS_BOOL(&f) && bson_iter_bool(&f);
      if (bson_iter_init_find(&f, &w, "reason")) {
         snprintf(what, sizeof what, "dlq[%zu].reason", i);
         ok = text_matches(e->reason, &f, exact, why, what) && ok;
      }
      if (bson_iter_init_find(&f, &w, "doc")) {
         bson_t wd;
         char *wj = aspen_bson_view(&f, &wd) ? cjson(&wd) : NULL;
         char *gj = e->doc ? cjson(e->doc) : NULL;
         if (!wj || !gj || strcmp(wj, gj) != 0) {
            sbuf_printf(why,
                        "    dlq[%zu].doc differs\n      expected: %s\n"
                        "      actual:   %s\n",
                        i, wj ? wj : "(bad)", gj ? gj : "(none)");
            ok = false;
         }
         bson_free(wj);
         bson_free(gj);
      }
      if (bson_iter_init_find(&f, &w, "missedWindowStartTimes")) {
         bson_t wa, ga;
         bson_iter_t gi;
         char *wj = aspen_bson_view(&f, &wa) ? cjson(&wa) : NULL;
         char *gj = e->extra &&
                          bson_iter_init_find(&gi, e->extra,
                                              "missedWindowStartTimes") &&
                          aspen_bson_view(&gi, &ga)
                       ? cjson(&ga)
                       : NULL;
         if (!wj || !gj || strcmp(wj, gj) != 0) {
            sbuf_printf(why,
                        "    dlq[%zu].missedWindowStartTimes differs\n"
                        "      expected: %s\n      actual:   %s\n",
                        i, wj ? wj : "(bad)", gj ? gj : "(none)");
            ok = false;
         }
         bson_free(wj);
         bson_free(gj);
      }
      i++;
   }
   return ok;
}

/* Builds the full pipeline of a case into `out` (initialised here). */
static bool
build_pipeline(const bson_t *c, bool persistent, bool partitioned,
               bson_t *out, sbuf_t *why)
{
   bson_iter_t it;
   bson_t sub;
   bson_init(out);
   if (bson_iter_init_find(&it, c, "pipeline")) {
      if (partitioned || bson_has_field(c, "source")) {
         sbuf_printf(why, "    \"partitioned\" and \"source\" go with "
                          "\"stages\", not \"pipeline\"\n");
         return false;
      }
      if (!BSON_ITER_HOLDS_ARRAY(&it) || !aspen_bson_view(&it, &sub)) {
         sbuf_printf(why, "    \"pipeline\" must be an array\n");
         return false;
      }
      bson_concat(out, &sub);
      return true;
   }
   uint32_t idx = 0;
   char buf[16];
   const char *key;
   bson_t stage, src, docs;

   bson_uint32_to_string(idx++, &key, buf, sizeof buf);
   bson_append_document_begin(out, key, -1, &stage);
   bson_append_document_begin(&stage, "$source", -1, &src);
   bson_append_array_begin(&src, "documents", -1, &docs);
   if (bson_iter_init_find(&it, c, "input")) {
      if (!BSON_ITER_HOLDS_ARRAY(&it) || !aspen_bson_view(&it, &sub)) {
         sbuf_printf(why, "    \"input\" must be an array\n");
         bson_append_array_end(&src, &docs);
         bson_append_document_end(&stage, &src);
         bson_append_document_end(out, &stage);
         return false;
      }
      if (partitioned) {
         /* {doc, partition} wrappers: the $source gets the documents. */
         bson_iter_t wi, di;
         uint32_t n = 0;
         bson_iter_init(&wi, &sub);
         while (bson_iter_next(&wi)) {
            bson_t wrap;
            char nbuf[16];
            const char *nkey;
            if (!aspen_bson_view(&wi, &wrap) ||
                !bson_iter_init_find(&di, &wrap, "doc") ||
                !BSON_ITER_HOLDS_DOCUMENT(&di)) {
               sbuf_printf(why, "    \"partitioned\": each input must be "
                                "{\"doc\": {...}, \"partition\": n}\n");
               bson_append_array_end(&src, &docs);
               bson_append_document_end(&stage, &src);
               bson_append_document_end(out, &stage);
               return false;
            }
            bson_uint32_to_string(n++, &nkey, nbuf, sizeof nbuf);
            bson_append_iter(&docs, nkey, -1, &di);
         }
      } else {
         bson_concat(&docs, &sub);
      }
   }
   bson_append_array_end(&src, &docs);
   /* "source": more $source options (timeField, tsFieldName, ...). */
   if (bson_iter_init_find(&it, c, "source")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !aspen_bson_view(&it, &sub)) {
         sbuf_printf(why, "    \"source\" must be an object\n");
         bson_append_document_end(&stage, &src);
         bson_append_document_end(out, &stage);
         return false;
      }
      bson_concat(&src, &sub);
   }
   bson_append_document_end(&stage, &src);
   bson_append_document_end(out, &stage);

   if (!bson_iter_init_find(&it, c, "stages") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !aspen_bson_view(&it, &sub)) {
      sbuf_printf(why, "    a case needs \"stages\" (array) or "
                       "\"pipeline\"\n");
      return false;
   }
   bson_iter_t si;
   bson_iter_init(&si, &sub);
   while (bson_iter_next(&si)) {
      bson_uint32_to_string(idx++, &key, buf, sizeof buf);
      bson_append_iter(out, key, -1, &si);
   }
   if (persistent) {
      bson_t merge, into;
      bson_uint32_to_string(idx++, &key, buf, sizeof buf);
      bson_append_document_begin(out, key, -1, &stage);
      bson_append_document_begin(&stage, "$merge", -1, &merge);
      bson_append_document_begin(&merge, "into", -1, &into);
      BSON_APPEND_UTF8(&into, "connectionName", "testAtlas");
      BSON_APPEND_UTF8(&into, "db", "t");
      BSON_APPEND_UTF8(&into, "coll", "t");
      bson_append_document_end(&merge, &into);
      bson_append_document_end(&stage, &merge);
      bson_append_document_end(out, &stage);
   }
   return true;
}

/* The event time of a source document, as the processor's ingest computes
 * it: the timeField's value, which must be a Date, or else the ingestion
 * time. A timeField that fails or is not a Date sends the document to the
 * DLQ as the source operator (same names and reasons as
 * engine/runtime/rt.c) and returns false. */
static bool
event_time(aspen_pipeline_t *pl, const bson_t *raw, const bson_t *meta,
           int64_t now, int64_t *ts)
{
   *ts = now;
   if (!pl->source.time_field) {
      return true;
   }
   aspen_expr_ctx_t ctx = {.root = raw, .meta = meta, .now_ms = now};
   aspen_sdoc_t as_is = {.doc = raw, .meta = meta, .ts_ms = now};
   aspen_value_t v;
   aspen_error_t err;
   char reason[ASPEN_ERROR_MSG_MAX + 128];
   if (!aspen_expr_eval(pl->source.time_field, &ctx, &v, &err)) {
      snprintf(reason, sizeof reason,
               "Failed to extract timestamp from document: %s", err.message);
      pl->dlq(pl->hook_arg, &as_is, "DocumentsDataSourceOperator", reason);
      return false;
   }
   if (v.v.value_type != BSON_TYPE_DATE_TIME) {
      char *json = aspen_value_to_json(&v);
      snprintf(reason, sizeof reason,
               "Failed to extract timestamp from document, extracted "
               "timestampVal: %s",
               json ? json : "missing");
      bson_free(json);
      aspen_value_destroy(&v);
      pl->dlq(pl->hook_arg, &as_is, "DocumentsDataSourceOperator", reason);
      return false;
   }
   *ts = v.v.value.v_datetime;
   aspen_value_destroy(&v);
   return true;
}

/* The stream metadata of a source document: {source: {type: "generated"}},
 * plus the partition when there is one (partition < 0: none). */
static void
source_meta(bson_t *meta, int64_t partition)
{
   bson_t src;
   bson_init(meta);
   BSON_APPEND_DOCUMENT_BEGIN(meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "generated");
   /* rt.c adds the ingestion time to every source's metadata. */
   BSON_APPEND_DATE_TIME(&src, "ts", aspen_clock_now_ms());
   if (partition >= 0) {
      BSON_APPEND_INT32(&src, "partition", (int32_t) partition);
   }
   bson_append_document_end(meta, &src);
}

/* Feeds the parsed $source's documents through the pipeline as the
 * processor's ingest does: the event time (see event_time) appended at the
 * end as `_ts` (or the tsFieldName), stream metadata {source: {type:
 * "generated"}} (plus the wrapper's partition when `partitions` is given:
 * the case's "input" of {doc, partition} wrappers).
 *
 * On the virtual clock (`virtual_clock`), "now" is the latest event time
 * seen, this document's included (0 before any), and once the input is over
 * time jumps to INT64_MAX / 4 through aspen_pipeline_tick, as
 * engine/runtime/rt.c's aspen_rt_wait does when the source has
 * nothing more.
 * Otherwise "now" is TEST_NOW_MS plus 1 ms per document. */
static bool
feed(aspen_pipeline_t *pl, const bson_t *partitions, bool virtual_clock,
     sbuf_t *why)
{
   if (pl->source.ops != &aspen_source_documents_ops) {
      sbuf_printf(why, "    only a documents $source can be run here\n");
      return false;
   }
   const bson_t *docs = aspen__source_documents_array(&pl->source);
   if (!docs) {
      sbuf_printf(why, "    this runner does not evaluate a documents "
                       "expression\n");
      return false;
   }
   bson_iter_t it, pit;
   bson_iter_init(&it, docs);
   if (partitions) {
      bson_iter_init(&pit, partitions);
   }
   int64_t now = TEST_NOW_MS;
   int64_t max_ts = INT64_MIN;
   while (bson_iter_next(&it)) {
      bson_t raw, doc = BSON_INITIALIZER, meta;
      int64_t partition = -1;
      if (partitions) {
         bson_t wrap;
         bson_iter_t pi;
         if (!bson_iter_next(&pit) || !aspen_bson_view(&pit, &wrap) ||
             !bson_iter_init_find(&pi, &wrap, "partition") ||
             !BSON_ITER_HOLDS_NUMBER(&pi)) {
            sbuf_printf(why, "    \"partitioned\": an input has no numeric "
                             "\"partition\"\n");
            bson_destroy(&doc);
            return false;
         }
         partition = bson_iter_as_int64(&pi);
      }
      source_meta(&meta, partition);
      /* The partition's key, as a Kafka source's aspen_rt_mark sets it
       * (one topic: the partition number). */
      pl->cur_part = partition >= 0 ? partition : 0;
      if (!aspen_bson_view(&it, &raw) || !BSON_ITER_HOLDS_DOCUMENT(&it)) {
         sbuf_printf(why, "    a source document is not an object\n");
         bson_destroy(&doc);
         bson_destroy(&meta);
         return false;
      }
      int64_t ts;
      if (virtual_clock) {
         now = max_ts == INT64_MIN ? 0 : max_ts;
      }
      pl->now_ms = now;
      if (event_time(pl, &raw, &meta, now, &ts)) {
         if (ts > max_ts) {
            max_ts = ts;
         }
         if (virtual_clock) {
            pl->now_ms = max_ts;
         }
         bson_copy_to_excluding_noinit(&raw, &doc, pl->source.ts_field, NULL);
         BSON_APPEND_DATE_TIME(&doc, pl->source.ts_field, ts);
         aspen_sdoc_t sdoc = {.doc = &doc, .meta = &meta, .ts_ms = ts};
         aspen_pipeline_push(pl, &sdoc);
      }
      bson_destroy(&doc);
      bson_destroy(&meta);
      if (!virtual_clock) {
         now++;
      }
   }
   aspen_pipeline_flush(pl); /* as the processor does before its sinks flush */
   if (virtual_clock) {
      int64_t far = INT64_MAX / 4;
      pl->now_ms = far;
      aspen_pipeline_tick(pl, far, far);
   }
   return true;
}

/* Runs one case; on failure appends the reasons to `why`. */
static bool
run_case(const bson_t *c, sbuf_t *why)
{
   bson_iter_t it;
   bool ok = true;

   bson_iter_init(&it, c);
   while (bson_iter_next(&it)) {
      if (!key_allowed(bson_iter_key(&it), case_keys)) {
         sbuf_printf(why, "    unknown key \"%s\" in the case\n",
                     bson_iter_key(&it));
         ok = false;
      }
   }
   if (!ok) {
      return false;
   }
   bool persistent = bson_iter_init_find(&it, c, "persistent") &&
                     BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
   bool partitioned = bson_iter_init_find(&it, c, "partitioned") &&
                      BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
   bool unit_only = bson_iter_init_find(&it, c, "unitOnly") &&
                    BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
   bool virtual_clock = bson_iter_init_find(&it, c, "virtualClock") &&
                        BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
   /* A $function case, when aspen is built without JavaScript: nothing to
    * run (the e2e runner always has it). */
   if (bson_iter_init_find(&it, c, "js") && BSON_ITER_HOLDS_BOOL(&it) &&
       bson_iter_bool(&it) && !aspen_expr_function_available()) {
      return true;
   }
   if (partitioned && !unit_only) {
      sbuf_printf(why, "    \"partitioned\" needs \"unitOnly\": true (the "
                       "e2e runner has no partitions)\n");
      return false;
   }
   bool want_error = bson_iter_init_find(&it, c, "error");
   bool has_output = bson_has_field(c, "output");
   if (want_error == has_output) {
      sbuf_printf(why, "    a case needs exactly one of \"output\" and "
                       "\"error\"\n");
      return false;
   }

   bson_t pipeline;
   if (!build_pipeline(c, persistent, partitioned, &pipeline, why)) {
      bson_destroy(&pipeline);
      return false;
   }
   aspen_error_t err;
   memset(&err, 0, sizeof err);
   aspen_pipeline_t *pl =
      aspen_pipeline_parse(&pipeline, aspen_builtins_catalog(), &g_conns,
                           !persistent, false, &err);
   bson_destroy(&pipeline);

   if (want_error) {
      int32_t code = 420;
      bson_iter_t ci;
      if (bson_iter_init_find(&ci, c, "code") && BSON_ITER_HOLDS_NUMBER(&ci)) {
         code = (int32_t) bson_iter_as_int64(&ci);
      }
      if (pl) {
         sbuf_printf(why, "    the pipeline parsed, but an error was "
                          "expected\n");
         aspen_pipeline_destroy(pl);
         return false;
      }
      if (err.code != code) {
         sbuf_printf(why, "    error code %d, expected %d (%s)\n",
                     (int) err.code, (int) code, err.message);
         ok = false;
      }
      bson_iter_init_find(&it, c, "error");
      return text_matches(err.message, &it, false, why, "errmsg") && ok;
   }

   if (!pl) {
      sbuf_printf(why, "    the pipeline did not parse: code %d: %s\n",
                  (int) err.code, err.message);
      return false;
   }
   collector_t col;
   collector_attach(&col, pl);
   pl->virtual_clock = virtual_clock;
   bson_t wrappers;
   const bson_t *partitions = NULL;
   if (partitioned && bson_iter_init_find(&it, c, "input") &&
       aspen_bson_view(&it, &wrappers)) {
      partitions = &wrappers;
   }
   if (!feed(pl, partitions, virtual_clock, why)) {
      aspen_pipeline_destroy(pl);
      collector_cleanup(&col);
      return false;
   }
   aspen_pipeline_destroy(pl);

   bson_t want_out, want_dlq;
   bson_iter_init_find(&it, c, "output");
   if (!BSON_ITER_HOLDS_ARRAY(&it) || !aspen_bson_view(&it, &want_out)) {
      sbuf_printf(why, "    \"output\" must be an array\n");
      collector_cleanup(&col);
      return false;
   }
   ok = check_outputs(&col, &want_out, why);
   const bson_t *dlq = NULL;
   if (bson_iter_init_find(&it, c, "dlq")) {
      if (!BSON_ITER_HOLDS_ARRAY(&it) || !aspen_bson_view(&it, &want_dlq)) {
         sbuf_printf(why, "    \"dlq\" must be an array\n");
         collector_cleanup(&col);
         return false;
      }
      dlq = &want_dlq;
   }
   ok = check_dlq(&col, dlq, why) && ok;
   collector_cleanup(&col);
   return ok;
}

/* ======================================================================== */
/* One test per case file                                                    */
/* ======================================================================== */

/* Parses the pipeline given as relaxed Extended JSON (an array written as a
 * document with keys "0", "1", ...) as an ephemeral one; it must parse. */
static aspen_pipeline_t *
parse_json_pipeline(const char *json)
{
   bson_error_t berr;
   bson_t *pipeline = bson_new_from_json((const uint8_t *) json, -1, &berr);
   assert_non_null(pipeline);
   aspen_error_t err;
   aspen_pipeline_t *pl =
      aspen_pipeline_parse(pipeline, aspen_builtins_catalog(), &g_conns,
                           true, false, &err);
   bson_destroy(pipeline);
   assert_non_null(pl);
   return pl;
}

/* parse_json_pipeline of [{$source: {documents: []}}] and `stages`, the
 * rest of the document's keys ("\"1\": {...}, \"2\": {...}"). */
static aspen_pipeline_t *
parse_after_source(const char *stages)
{
   char json[1024];
   snprintf(json, sizeof json,
            "{\"0\": {\"$source\": {\"documents\": []}}, %s}", stages);
   return parse_json_pipeline(json);
}

/* aspen__window_fanout: how many windows one event joins. */
static void
window_fanout(void **state)
{
   (void) state;
   static const struct {
      const char *window;
      int64_t fanout;
   } cases[] = {
      {"{\"$tumblingWindow\": {\"interval\": {\"size\": 10, \"unit\": "
       "\"second\"}, \"pipeline\": []}}", 1},
      {"{\"$hoppingWindow\": {\"interval\": {\"size\": 10, \"unit\": "
       "\"second\"}, \"hopSize\": {\"size\": 2, \"unit\": \"second\"}, "
       "\"pipeline\": []}}", 5},
      {"{\"$hoppingWindow\": {\"interval\": {\"size\": 10, \"unit\": "
       "\"second\"}, \"hopSize\": {\"size\": 3, \"unit\": \"second\"}, "
       "\"pipeline\": []}}", 4},
      {"{\"$hoppingWindow\": {\"interval\": {\"size\": 1, \"unit\": "
       "\"minute\"}, \"hopSize\": {\"size\": 2, \"unit\": \"minute\"}, "
       "\"pipeline\": []}}", 1},
      {"{\"$hoppingWindow\": {\"interval\": {\"size\": 86, \"unit\": "
       "\"minute\"}, \"hopSize\": {\"size\": 1, \"unit\": \"second\"}, "
       "\"pipeline\": []}}", 5160},
   };
   for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      char stage[512];
      snprintf(stage, sizeof stage, "\"1\": %s", cases[i].window);
      aspen_pipeline_t *pl = parse_after_source(stage);
      assert_non_null(pl->window);
      assert_int_equal(aspen__window_fanout(pl->window), cases[i].fanout);
      aspen_pipeline_destroy(pl);
   }
}

/* aspen__tier_state_limit: 80 % of each tier's RAM, decimal gigabytes. */
static void
tier_state_limit(void **state)
{
   (void) state;
   static const struct {
      const char *tier;
      uint64_t limit;
      const char *what;
   } cases[] = {
      {"SP2", 400000000u, "80% of SP2's 0.5 GB"},
      {"SP5", 800000000u, "80% of SP5's 1 GB"},
      {"SP10", 1600000000u, "80% of SP10's 2 GB"},
      {"SP30", 6400000000u, "80% of SP30's 8 GB"},
      {"SP50", 25600000000u, "80% of SP50's 32 GB"},
      {"SP1", 0, ""},
      {"sp10", 0, ""},
   };
   for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      char what[64] = "";
      assert_int_equal(aspen__tier_state_limit(cases[i].tier, what,
                                               sizeof what),
                       cases[i].limit);
      assert_string_equal(what, cases[i].what);
   }
   char what[64] = "";
   assert_int_equal(aspen__tier_state_limit(NULL, what, sizeof what), 0);
}

/* Pushes `n` documents of about 1 KB (event times 1 ms apart from
 * `first_ms`) into `pl`, stopping at the first fatal error (as the
 * processor does). Returns how many went in. */
static int
push_big_docs(aspen_pipeline_t *pl, int n, int64_t first_ms)
{
   char pad[1000];
   memset(pad, 'x', sizeof pad - 1);
   pad[sizeof pad - 1] = '\0';
   bson_t meta;
   source_meta(&meta, -1);
   int i;
   for (i = 0; i < n && !pl->fatal_code; i++) {
      bson_t doc = BSON_INITIALIZER;
      BSON_APPEND_INT32(&doc, "i", i);
      BSON_APPEND_UTF8(&doc, "pad", pad);
      aspen_sdoc_t d = {.doc = &doc, .meta = &meta, .ts_ms = first_ms + i};
      pl->now_ms = first_ms + i;
      aspen_pipeline_push(pl, &d);
      bson_destroy(&doc);
   }
   bson_destroy(&meta);
   return i;
}

/* An hour-long window keeping every document it is given. */
#define HOUR_WINDOW_PUSH_ALL                                                   \
   "{\"0\": {\"$source\": {\"documents\": []}}, \"1\": "                    \
   "{\"$tumblingWindow\": {\"interval\": {\"size\": 1, \"unit\": "          \
   "\"hour\"}, \"pipeline\": [{\"$group\": {\"_id\": null, "               \
   "\"all\": {\"$push\": \"$$ROOT\"}}}]}}}"

/* A window's state counts against pl->state_limit: reaching it notes 418
 * "Worker out of memory" with the numbers; aspen__window_drop_state lets the
 * state go. With no limit the same input is fine. */
static void
window_state_limit(void **state)
{
   (void) state;
   const char *json = HOUR_WINDOW_PUSH_ALL;
   for (int limited = 0; limited < 2; limited++) {
      aspen_pipeline_t *pl = parse_json_pipeline(json);
      collector_t col;
      collector_attach(&col, pl);
      if (limited) {
         pl->state_limit = 50000;
         snprintf(pl->state_limit_what, sizeof pl->state_limit_what,
                  "test limit");
      }
      int pushed = push_big_docs(pl, 200, TEST_NOW_MS);
      uint64_t size = atomic_load(&pl->state_size);
      if (limited) {
         /* ~1 KB a document: over 50,000 bytes within about 50 of them. */
         assert_true(pushed > 10 && pushed < 100);
         assert_true(size >= 50000);
         assert_int_equal(pl->fatal_code, 418);
         char want[160];
         snprintf(want, sizeof want,
                  "Worker out of memory: the processor's state (stateSize "
                  "%llu bytes) reached its limit of 50000 bytes (test "
                  "limit)",
                  (unsigned long long) size);
         assert_string_equal(pl->fatal, want);
         aspen__window_drop_state(pl->window);
         assert_int_equal(atomic_load(&pl->state_size), 0);
      } else {
         assert_int_equal(pushed, 200);
         assert_true(size > 200000);
         assert_int_equal(pl->fatal_code, 0);
         assert_string_equal(pl->fatal, "");
      }
      /* Nothing was emitted: the hour-long window never closed. */
      assert_int_equal(col.n_out, 0);
      assert_int_equal(col.n_dlq, 0);
      aspen_pipeline_destroy(pl);
      collector_cleanup(&col);
   }
}

/* With autoscaling (tier_max_rank above tier_rank), reaching the state
 * limit moves the processor up a tier and raises the limit to that
 * tier's, instead of failing it; past its maxTier it fails as ever. */
static void
window_state_autoscales(void **state)
{
   (void) state;
   const char *json = HOUR_WINDOW_PUSH_ALL;
   aspen_pipeline_t *pl = parse_json_pipeline(json);
   collector_t col;
   collector_attach(&col, pl);
   pl->state_limit = 50000;
   pl->tier_rank = 0; /* SP2 */
   pl->tier_max_rank = 1; /* up to SP5 */
   int pushed = push_big_docs(pl, 200, TEST_NOW_MS);
   assert_int_equal(pushed, 200);
   assert_int_equal(pl->fatal_code, 0);
   assert_int_equal(pl->tier_rank, 1);
   assert_int_equal(atomic_load(&pl->effective_tier), 1);
   char what[64];
   assert_int_equal(pl->state_limit,
                    aspen__tier_state_limit("SP5", what, sizeof what));
   assert_string_equal(pl->state_limit_what, "80% of SP5's 1 GB");
   /* At its maxTier it fails as without autoscaling. */
   pl->state_limit = atomic_load(&pl->state_size) + 2000;
   push_big_docs(pl, 100, TEST_NOW_MS + 1000);
   assert_int_equal(pl->fatal_code, 418);
   assert_int_equal(pl->tier_rank, 1);
   aspen__window_drop_state(pl->window);
   aspen_pipeline_destroy(pl);
   collector_cleanup(&col);
}

/* Each main-chain stage counts what came in, went out and went to the
 * DLQ (plain integers), and aspen__pipeline_publish makes them what
 * aspen_pipeline_snapshot reads, with the source's and sink's. */
static void
operator_counts(void **state)
{
   (void) state;
   const char *json =
      "{\"0\": {\"$source\": {\"documents\": []}}, "
      "\"1\": {\"$match\": {\"a\": {\"$gte\": 0}}}, "
      "\"2\": {\"$addFields\": {\"b\": {\"$divide\": [1, \"$a\"]}}}}";
   aspen_pipeline_t *pl = parse_json_pipeline(json);
   collector_t col;
   collector_attach(&col, pl);
   bson_t meta;
   source_meta(&meta, -1);
   /* a = 0 .. 3 pass the $match, "x" does not; $divide fails on 0. */
   for (int i = 0; i < 5; i++) {
      bson_t doc = BSON_INITIALIZER;
      if (i < 4) {
         BSON_APPEND_INT32(&doc, "a", i);
      } else {
         BSON_APPEND_UTF8(&doc, "a", "x");
      }
      aspen_sdoc_t d = {.doc = &doc, .meta = &meta, .ts_ms = TEST_NOW_MS};
      aspen_pipeline_push(pl, &d);
      bson_destroy(&doc);
   }
   bson_destroy(&meta);
   assert_int_equal(aspen_pipeline_op_count(pl), 3); /* no sink */
   aspen_op_counts_t ops[4];
   memset(ops, 0xff, sizeof ops);
   aspen_pipeline_snapshot(pl, ops, NULL, NULL, NULL);
   assert_int_equal(ops[1].in_count, 0); /* nothing published yet */
   aspen__pipeline_publish(pl);
   aspen_pipeline_snapshot(pl, ops, NULL, NULL, NULL);
   assert_int_equal(ops[1].in_count, 5);
   assert_int_equal(ops[1].out_count, 4);
   assert_int_equal(ops[1].dlq_count, 0);
   /* $addFields: 4 in, 3 out, 1 to the DLQ. */
   assert_int_equal(ops[2].in_count, 4);
   assert_int_equal(ops[2].out_count, 3);
   assert_int_equal(ops[2].dlq_count, 1);
   assert_true(ops[2].dlq_size > 0);
   assert_int_equal(ops[1].out_size, ops[2].in_size);
   assert_int_equal(col.n_out, 3);
   aspen_pipeline_destroy(pl);
   collector_cleanup(&col);
}

/* The hops between stages (pipeline.c: aspen_stage_emit hands a stage's
 * output straight to the next stage's push, counting both stages'
 * figures): over $match -> $addFields -> $project -> $match, every stage's
 * documents and bytes in, out and to the DLQ are the expected ones, and so
 * are the outputs (byte for byte) and the DLQ entries: a document the
 * first $match drops, one $addFields fails on ($divide by zero: the input
 * goes to the DLQ), one $addFields makes past 16 MB (that output goes to
 * the DLQ, as $addFields', and no further), one the last $match drops.
 * The same with every input timed (pl->timing): the same figures, and the
 * stages' time taken (counted ASPEN_PIPELINE_TIMING_EVERY times over);
 * untimed, none. */
static const char *const chain_stages =
   "\"1\": {\"$match\": {\"k\": {\"$gte\": 0}}}, "
   "\"2\": {\"$addFields\": {\"r\": {\"$divide\": [10, \"$k\"]}, "
   "\"c\": \"$a\"}}, "
   "\"3\": {\"$project\": {\"_id\": 0, \"k\": 1, \"r\": 1, \"c\": 1}}, "
   "\"4\": {\"$match\": {\"r\": {\"$lt\": 5}}}";

/* {k, a} (a: the string `a`, or a string of `n` 'a's when a is NULL),
 * then, when `r` is given, {r (a double), c (a copy of a)}; without `with_a`
 * a is left out ($project's output). */
static bson_t *
chain_doc(int32_t k, const char *a, size_t n, bool with_a, const double *r)
{
   char *big = NULL;
   if (!a) {
      big = aspen_xmalloc(n + 1);
      memset(big, 'a', n);
      big[n] = 0;
      a = big;
   }
   bson_t *doc = bson_new();
   BSON_APPEND_INT32(doc, "k", k);
   if (with_a) {
      BSON_APPEND_UTF8(doc, "a", a);
   }
   if (r) {
      BSON_APPEND_DOUBLE(doc, "r", *r);
      BSON_APPEND_UTF8(doc, "c", a);
   }
   free(big);
   return doc;
}

typedef struct {
   collector_t col;
   aspen_op_counts_t ops[6];
} chain_run_t;

static void
chain_run(bool timed, bson_t *const *in, size_t n_in, chain_run_t *r)
{
   aspen_pipeline_t *pl = parse_after_source(chain_stages);
   collector_attach(&r->col, pl);
   bson_t meta;
   source_meta(&meta, -1);
   for (size_t i = 0; i < n_in; i++) {
      aspen_sdoc_t d = {.doc = in[i], .meta = &meta, .ts_ms = TEST_NOW_MS};
      pl->timing = timed;
      aspen_pipeline_push(pl, &d);
   }
   bson_destroy(&meta);
   aspen__pipeline_publish(pl);
   assert_int_equal(aspen_pipeline_op_count(pl), 5); /* source, 4, no sink */
   aspen_pipeline_snapshot(pl, r->ops, NULL, NULL, NULL);
   aspen_pipeline_destroy(pl);
}

static void
assert_same_doc(const bson_t *got, const bson_t *want)
{
   assert_int_equal(got->len, want->len);
   assert_memory_equal(bson_get_data(got), bson_get_data(want), got->len);
}

static void
chain_figures(void **state)
{
   (void) state;
   const size_t big = 9u * 1024 * 1024; /* twice over: past 16 MB */
   double r1 = 10, r4 = 2.5, r2 = 5, r8 = 1.25;
   bson_t *in[] = {
      chain_doc(1, "x", 0, true, NULL),  chain_doc(4, "yy", 0, true, NULL),
      chain_doc(-1, "z", 0, true, NULL), chain_doc(0, "w", 0, true, NULL),
      chain_doc(2, NULL, big, true, NULL), chain_doc(8, "v", 0, true, NULL),
   };
   size_t n_in = sizeof in / sizeof in[0];
   /* What $addFields makes of inputs 0, 1, 4 (too large) and 5, and what
    * $project makes of them. */
   bson_t *added[] = {
      chain_doc(1, "x", 0, true, &r1), chain_doc(4, "yy", 0, true, &r4),
      chain_doc(2, NULL, big, true, &r2), chain_doc(8, "v", 0, true, &r8),
   };
   bson_t *projected[] = {
      chain_doc(1, "x", 0, false, &r1), chain_doc(4, "yy", 0, false, &r4),
      chain_doc(8, "v", 0, false, &r8),
   };
   assert_true(added[2]->len > ASPEN_MAX_OBJECT_LEN);
   uint64_t in_size = 0;
   for (size_t i = 0; i < n_in; i++) {
      in_size += in[i]->len;
   }
   for (int timed = 0; timed < 2; timed++) {
      chain_run_t r;
      chain_run(timed, in, n_in, &r);
      const aspen_op_counts_t *m1 = &r.ops[1], *af = &r.ops[2],
                              *pj = &r.ops[3], *m2 = &r.ops[4];
      /* $match: all in, the one with k < 0 dropped. */
      assert_int_equal(m1->in_count, n_in);
      assert_int_equal(m1->in_size, in_size);
      assert_int_equal(m1->out_count, 5);
      assert_int_equal(m1->out_size, in_size - in[2]->len);
      assert_int_equal(m1->dlq_count, 0);
      /* $addFields: 5 in, 3 out, k = 0 and the too large one to the DLQ. */
      assert_int_equal(af->in_count, 5);
      assert_int_equal(af->in_size, in_size - in[2]->len);
      assert_int_equal(af->out_count, 3);
      assert_int_equal(af->out_size,
                       added[0]->len + added[1]->len + added[3]->len);
      assert_int_equal(af->dlq_count, 2);
      assert_int_equal(af->dlq_size, in[3]->len + added[2]->len);
      /* $project: 3 in and out. */
      assert_int_equal(pj->in_count, 3);
      assert_int_equal(pj->in_size, af->out_size);
      assert_int_equal(pj->out_count, 3);
      assert_int_equal(pj->out_size, projected[0]->len + projected[1]->len +
                                        projected[2]->len);
      assert_int_equal(pj->dlq_count, 0);
      /* $match: r = 10 dropped. */
      assert_int_equal(m2->in_count, 3);
      assert_int_equal(m2->in_size, pj->out_size);
      assert_int_equal(m2->out_count, 2);
      assert_int_equal(m2->out_size, projected[1]->len + projected[2]->len);
      assert_int_equal(m2->dlq_count, 0);
      /* The outputs and the DLQ entries, byte for byte. */
      assert_int_equal(r.col.n_out, 2);
      assert_same_doc(r.col.out[0], projected[1]);
      assert_same_doc(r.col.out[1], projected[2]);
      assert_int_equal(r.col.n_dlq, 2);
      assert_string_equal(r.col.dlq[0].operator_name, "AddFieldsOperator");
      assert_string_equal(r.col.dlq[0].reason,
                          "Failed to process input document in "
                          "AddFieldsOperator with error: can't $divide by "
                          "zero");
      assert_same_doc(r.col.dlq[0].doc, in[3]);
      char want[256];
      snprintf(want, sizeof want,
               "Failed to process input document in AddFieldsOperator "
               "with error: BSONObj size: %u (0x%X) is invalid. Size must "
               "be between 0 and %u(16MB)",
               (unsigned) added[2]->len, (unsigned) added[2]->len,
               (unsigned) ASPEN_MAX_OBJECT_LEN);
      assert_string_equal(r.col.dlq[1].operator_name, "AddFieldsOperator");
      assert_string_equal(r.col.dlq[1].reason, want);
      assert_same_doc(r.col.dlq[1].doc, added[2]);
      /* Time: taken for timed inputs only, each sample counted
       * ASPEN_PIPELINE_TIMING_EVERY times (copying 9 MB twice takes some). */
      uint64_t ns = 0;
      for (int i = 1; i <= 4; i++) {
         assert_int_equal(r.ops[i].exec_ns % ASPEN_PIPELINE_TIMING_EVERY, 0);
         ns += r.ops[i].exec_ns;
      }
      if (timed) {
         assert_true(ns > 0);
      } else {
         assert_int_equal(ns, 0);
      }
      collector_cleanup(&r.col);
   }
   for (size_t i = 0; i < n_in; i++) {
      bson_destroy(in[i]);
   }
   for (size_t i = 0; i < 4; i++) {
      bson_destroy(added[i]);
   }
   for (size_t i = 0; i < 3; i++) {
      bson_destroy(projected[i]);
   }
}

/* The stateless stages' field tables (lang/fields.h: a shaping stage hands
 * its output's table on; expressions resolve paths through it; a flat
 * $addFields/$set over new fields appends to the input's span) give the
 * same outputs, DLQ entries and operator figures as the per-stage path
 * (tables off), byte for byte, over pipelines that take the fast path and
 * ones that must not (collisions, dotted and nested fields, $$ROOT,
 * duplicate keys, arrays, more fields than a table holds, failures). */
static const char *const fields_pipelines[] = {
   "[{\"$match\": {\"obs.watts\": {\"$gte\": 50}, \"event_type\": 0}},"
   " {\"$project\": {\"device_id\": 1, \"group_id\": 1, \"obs\": 1,"
   "   \"ts\": \"$timestamp\"}},"
   " {\"$addFields\": {\"kw\": {\"$divide\": [\"$obs.watts\", 1000]},"
   "   \"hot\": {\"$gt\": [\"$obs.temp\", 20]},"
   "   \"label\": {\"$concat\": [\"$device_id\", \"-\", {\"$toString\":"
   " \"$group_id\"}]}}}]",
   "[{\"$project\": {\"a\": 1, \"b\": 1}},"
   " {\"$addFields\": {\"a\": {\"$add\": [\"$a\", 1]}, \"n\": \"$b\"}}]",
   "[{\"$addFields\": {\"x\": \"$a\"}}, {\"$set\": {\"y\": \"$x\"}},"
   " {\"$set\": {\"z\": [\"$y\", \"$k\", \"$arr.v\"]}}]",
   "[{\"$project\": {\"x\": \"$o.p\", \"y\": 1, \"_id\": 0}},"
   " {\"$addFields\": {\"z\": {\"$concat\": [\"$y\", \"!\"]}, \"w\": \"$x\"}}]",
   "[{\"$unset\": \"a\"}, {\"$addFields\": {\"n\": \"$b\", \"m\": \"$a\"}}]",
   "[{\"$project\": {\"_id\": 0, \"a\": 1}}, {\"$addFields\": {\"a\": 5}}]",
   "[{\"$addFields\": {\"o.p\": 1}}, {\"$addFields\": {\"q\": \"$o\"}},"
   " {\"$addFields\": {\"r\": {\"s\": \"$q.p\"}}}]",
   "[{\"$project\": {\"a\": 1, \"o\": 1}},"
   " {\"$addFields\": {\"r\": \"$$ROOT\", \"c\": \"$$CURRENT.a\","
   "   \"d\": \"$$ROOT.o.p\"}}]",
   "[{\"$replaceWith\": \"$$ROOT\"}, {\"$addFields\": {\"x\": \"$a\"}}]",
   "[{\"$addFields\": {\"d\": {\"$divide\": [1, \"$a\"]}}},"
   " {\"$addFields\": {\"e\": \"$d\"}}]",
   "[{\"$project\": {\"a\": 0}}, {\"$set\": {\"k2\": \"$b.c\"}}]",
   "[{\"$match\": {\"a\": {\"$gt\": 0}}}, {\"$project\": {\"a\": 1, \"b\": 1}},"
   " {\"$match\": {\"b\": {\"$exists\": true}}},"
   " {\"$addFields\": {\"s\": {\"$add\": [\"$a\", 1]}}}]",
   "[{\"$unwind\": \"$arr\"}, {\"$addFields\": {\"y\": \"$arr.v\"}}]",
   "[{\"$addFields\": {\"dup\": \"$k\"}}, {\"$addFields\": {\"dup2\": \"$k\"}}]",
   "[{\"$set\": {\"f39\": 1, \"g\": \"$f38\"}}, {\"$set\": {\"h\": \"$g\"}}]",
   "[{\"$project\": {\"arr\": {\"v\": 1}, \"a\": 1}},"
   " {\"$addFields\": {\"t\": \"$arr.v\", \"u\": {\"$size\": \"$arr\"}}}]",
   "[{\"$addFields\": {}}, {\"$addFields\": {\"e\": {}}}]",
   "[{\"$match\": {\"arr\": {\"$elemMatch\": {\"v\": {\"$gte\": 1}}},"
   "   \"$expr\": {\"$gt\": [\"$a\", 0]}}},"
   " {\"$project\": {\"arr\": 1, \"a\": 1}}, {\"$set\": {\"q\": \"$a\"}}]",
   "[{\"$match\": {\"$or\": [{\"o.p\": \"q\"}, {\"k\": 2},"
   "   {\"arr.v\": 9}, {\"missing\": {\"$exists\": false}}]}},"
   " {\"$match\": {\"$nor\": [{\"a\": {\"$type\": \"string\"}}]}},"
   " {\"$addFields\": {\"m\": {\"$multiply\": [\"$a\", 2]}}}]",
   "[{\"$match\": {\"o.p\": {\"$ne\": null}}}, {\"$project\": {\"o\": 1,"
   " \"a\": 1}}]",
   "[{\"$match\": {\"a\": {\"$gte\": 0, \"$lt\": 5}, \"b.c\": \"x\"}},"
   " {\"$addFields\": {\"n\": \"$b.c\"}}]",
   "[{\"$match\": {\"arr.v\": {\"$gt\": 0}}}, {\"$set\": {\"t\": \"$arr.v\"}}]",
   "[{\"$match\": {\"o.p\": null, \"k\": {\"$lte\": 2}}}]",
   "[{\"$match\": {\"obs.watts\": {\"$lt\": 400}, \"y\": {\"$gt\": 1}}}]",
};

static const char *const fields_docs[] = {
   "{\"device_id\": \"device_1\", \"group_id\": 3, \"timestamp\": \"t\","
   " \"max_watts\": 450, \"event_type\": 0, \"obs\": {\"watts\": 300,"
   " \"temp\": 22}}",
   "{\"_id\": 7, \"a\": 2, \"b\": {\"c\": \"x\"}, \"o\": {\"p\": \"q\"},"
   " \"y\": \"why\", \"arr\": [{\"v\": 1}, 2, {\"v\": [3]}], \"k\": 1}",
   "{\"a\": 0, \"b\": null}",
   "{\"a\": \"s\", \"arr\": [], \"o\": [{\"p\": 1}, {\"p\": 2}]}",
   "{}",
   "{\"y\": 5, \"o\": 3}",
   "{\"k\": 1, \"k\": 2, \"a\": 1}",
   "{\"x\": 1, \"z\": 2, \"a\": -1, \"arr\": {\"v\": 9}}",
};

typedef struct {
   collector_t col;
   aspen_op_counts_t ops[16];
   size_t n_ops;
} fields_run_t;

/* Runs `pipeline_json` over `docs` with a fast path on or off (`set`). */
static void
fields_run(const char *pipeline_json, void (*set)(bool), bool on,
           bson_t *const *docs, size_t n_docs, fields_run_t *r)
{
   char *json = NULL;
   size_t cap = strlen(pipeline_json) + 64;
   json = aspen_xmalloc(cap);
   snprintf(json, cap, "{\"p\": %s}", pipeline_json);
   bson_error_t berr;
   bson_t *wrap = bson_new_from_json((const uint8_t *) json, -1, &berr);
   free(json);
   assert_non_null(wrap);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, wrap, "p"));
   bson_t stages;
   assert_true(aspen_bson_view(&it, &stages));
   /* [$source documents] + the stages. */
   bson_t def = BSON_INITIALIZER, src;
   bson_t first;
   BSON_APPEND_DOCUMENT_BEGIN(&def, "0", &first);
   BSON_APPEND_DOCUMENT_BEGIN(&first, "$source", &src);
   bson_t empty;
   BSON_APPEND_ARRAY_BEGIN(&src, "documents", &empty);
   bson_append_array_end(&src, &empty);
   bson_append_document_end(&first, &src);
   bson_append_document_end(&def, &first);
   bson_iter_t si;
   bson_iter_init(&si, &stages);
   int idx = 1;
   while (bson_iter_next(&si)) {
      char key[16];
      snprintf(key, sizeof key, "%d", idx++);
      bson_append_value(&def, key, -1, bson_iter_value(&si));
   }
   aspen_error_t err;
   aspen_pipeline_t *pl = aspen_pipeline_parse(
      &def, aspen_builtins_catalog(), &g_conns, true, false, &err);
   if (!pl) {
      fail_msg("%s: %s", pipeline_json, err.message);
   }
   collector_attach(&r->col, pl);
   set(on);
   bson_t meta;
   source_meta(&meta, -1);
   for (size_t i = 0; i < n_docs; i++) {
      aspen_sdoc_t d = {.doc = docs[i], .meta = &meta, .ts_ms = TEST_NOW_MS};
      pl->now_ms = TEST_NOW_MS;
      aspen_pipeline_push(pl, &d);
   }
   set(true);
   bson_destroy(&meta);
   aspen__pipeline_publish(pl);
   r->n_ops = aspen_pipeline_op_count(pl);
   assert_true(r->n_ops <= 16);
   aspen_pipeline_snapshot(pl, r->ops, NULL, NULL, NULL);
   aspen_pipeline_destroy(pl);
   bson_destroy(&def);
   bson_destroy(wrap);
}

/* Runs each pipeline of `pipelines` over `docs` with the fast path that
 * `set` switches on and off, as it is and after a $match that lets every
 * document through (it finds the input's table, so the first stage gets
 * one), and fails unless the outputs (byte for byte), the DLQ entries and
 * the operator figures are the same. Returns how many outputs there were. */
static size_t
runs_same_results(const char *const *pipelines, size_t n_pl,
                  void (*set)(bool), bson_t *const *docs, size_t n_docs)
{
   size_t outputs = 0;
   for (size_t p = 0; p < 2 * n_pl; p++) {
      char pipeline[2048];
      const char *text = pipelines[p % n_pl];
      if (p < n_pl) {
         snprintf(pipeline, sizeof pipeline, "%s", text);
      } else {
         snprintf(pipeline, sizeof pipeline, "[{\"$match\": {}}, %s", text + 1);
      }
      fields_run_t on, off;
      fields_run(pipeline, set, true, docs, n_docs, &on);
      fields_run(pipeline, set, false, docs, n_docs, &off);
      if (on.col.n_out != off.col.n_out || on.col.n_dlq != off.col.n_dlq) {
         fail_msg("%s: %zu/%zu outputs, %zu/%zu DLQ with/without the fast "
                  "path",
                  pipeline, on.col.n_out, off.col.n_out,
                  on.col.n_dlq, off.col.n_dlq);
      }
      for (size_t i = 0; i < on.col.n_out; i++) {
         const bson_t *a = on.col.out[i], *b = off.col.out[i];
         if (a->len != b->len ||
             memcmp(bson_get_data(a), bson_get_data(b), a->len) != 0) {
            char *ja = cjson(a), *jb = cjson(b);
            fail_msg("%s: output %zu differs: %s vs %s", pipeline, i, ja,
                     jb);
         }
      }
      outputs += on.col.n_out;
      for (size_t i = 0; i < on.col.n_dlq; i++) {
         const dlq_entry_t *a = &on.col.dlq[i], *b = &off.col.dlq[i];
         assert_string_equal(a->operator_name, b->operator_name);
         assert_string_equal(a->reason, b->reason);
         assert_true(a->doc && b->doc && bson_equal(a->doc, b->doc));
      }
      assert_int_equal(on.n_ops, off.n_ops);
      for (size_t i = 0; i < on.n_ops; i++) {
         assert_int_equal(on.ops[i].in_count, off.ops[i].in_count);
         assert_int_equal(on.ops[i].in_size, off.ops[i].in_size);
         assert_int_equal(on.ops[i].out_count, off.ops[i].out_count);
         assert_int_equal(on.ops[i].out_size, off.ops[i].out_size);
         assert_int_equal(on.ops[i].dlq_count, off.ops[i].dlq_count);
         assert_int_equal(on.ops[i].dlq_size, off.ops[i].dlq_size);
      }
      collector_cleanup(&on.col);
      collector_cleanup(&off.col);
   }
   return outputs;
}

/* The documents of `json` (n of them), then one with more fields than a
 * table holds: *n becomes the count. */
static bson_t **
docs_from_json(const char *const *json, size_t *n)
{
   bson_t **docs = aspen_xcalloc(*n + 1, sizeof *docs);
   bson_error_t berr;
   for (size_t i = 0; i < *n; i++) {
      docs[i] = bson_new_from_json((const uint8_t *) json[i], -1, &berr);
      assert_non_null(docs[i]);
   }
   bson_t *doc = bson_new();
   for (int f = 0; f < ASPEN_FIELDS_MAX + 8; f++) {
      char key[16];
      snprintf(key, sizeof key, "f%d", f);
      BSON_APPEND_INT32(doc, key, f);
   }
   BSON_APPEND_INT32(doc, "a", 4);
   docs[(*n)++] = doc;
   return docs;
}

static void
docs_free(bson_t **docs, size_t n)
{
   for (size_t i = 0; i < n; i++) {
      bson_destroy(docs[i]);
   }
   free(docs);
}

static void
field_tables_same_results(void **state)
{
   (void) state;
   size_t n = sizeof fields_docs / sizeof fields_docs[0];
   bson_t **docs = docs_from_json(fields_docs, &n);
   size_t outputs = runs_same_results(
      fields_pipelines, sizeof fields_pipelines / sizeof fields_pipelines[0],
      aspen_fields_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 50);
}

/* Path slots (expr.h, aspen_expr_paths_t) against the general lookup:
 * nested paths sharing a prefix, three levels, $$ROOT and $$CURRENT paths,
 * paths read inside $map and $let (and under a rebound $$CURRENT), arrays
 * on a path, missing and scalar prefixes, duplicate keys, documents with
 * and without a field table, and malformed ones. */
static const char *const slots_pipelines[] = {
   "[{\"$addFields\": {\"w\": \"$obs.watts\", \"t\": \"$obs.temp\","
   "   \"x\": \"$obs\", \"m\": \"$nope.a\", \"s\": \"$a.b\", \"d\": \"$k\"}}]",
   "[{\"$project\": {\"v\": \"$a.b.c\", \"u\": \"$a.b\", \"w\": \"$a.x.c\","
   "   \"_id\": 0, \"k\": 1}}]",
   "[{\"$addFields\": {\"r\": \"$$ROOT.a.b\", \"c\": \"$$CURRENT.a.b\","
   "   \"p\": {\"$add\": [\"$a.b.c\", 1]}, \"q\": \"$$ROOT.a.b.c\"}}]",
   "[{\"$addFields\": {\"m\": {\"$map\": {\"input\": \"$arr\", \"as\": \"e\","
   "   \"in\": [\"$$e.v\", \"$obs.watts\", \"$a.b.c\"]}},"
   "   \"l\": {\"$let\": {\"vars\": {\"x\": \"$a.b\"},"
   "     \"in\": {\"$ifNull\": [\"$$x.c\", \"$k\"]}}},"
   "   \"cur\": {\"$let\": {\"vars\": {\"CURRENT\": \"$a\"}, \"in\": \"$b.c\"}},"
   "   \"f\": {\"$filter\": {\"input\": \"$arr\","
   "     \"cond\": {\"$eq\": [\"$$this.v\", \"$k\"]}}}}}]",
   "[{\"$redact\": {\"$cond\": [{\"$eq\": [\"$k\", 1]}, \"$$DESCEND\","
   "   \"$$KEEP\"]}}, {\"$addFields\": {\"q\": \"$a.b.c\", \"o\": \"$obs.temp\"}}]",
   "[{\"$addFields\": {\"v\": \"$arr.v\", \"n\": \"$arr.v.w\", \"o\": \"$o.p\","
   "   \"ab\": \"$a.b\", \"abc\": \"$a.b.c\"}}]",
   "[{\"$project\": {\"x\": {\"y\": \"$obs.watts\", \"z\": \"$a.b\"},"
   "   \"obs\": {\"temp\": 1}, \"arr\": {\"v\": 1, \"u\": \"$k\"}}}]",
   "[{\"$set\": {\"a\": \"$obs.watts\", \"b\": \"$obs.watts\","
   "   \"c\": {\"$cond\": [\"$k\", \"$obs.temp\", \"$obs\"]}}},"
   " {\"$set\": {\"d\": \"$a\", \"e\": \"$b.c\"}}]",
   "[{\"$project\": {\"device_id\": 1, \"group_id\": 1, \"obs\": 1,"
   "   \"ts\": \"$timestamp\"}},"
   " {\"$addFields\": {\"kw\": {\"$divide\": [\"$obs.watts\", 1000]},"
   "   \"hot\": {\"$gt\": [\"$obs.temp\", 20]},"
   "   \"label\": {\"$concat\": [\"$device_id\", \"-\", {\"$toString\":"
   " \"$group_id\"}]}}}]",
   /* Through the $match's field table (the slots' fast path): groups
    * under a top-level slot and under a nested one ("a.b"). */
   "[{\"$match\": {}}, {\"$addFields\": {\"v\": [\"$obs.watts\","
   "   \"$obs.temp\", \"$a.b.c\", \"$a.x.c\", \"$nope.a\", \"$a.b\", \"$k\","
   "   \"$arr.v\", \"$o.p\", \"$obs\"], \"y\": [{\"$type\": \"$a.b.c\"},"
   "   {\"$type\": \"$obs.watts\"}, {\"$type\": \"$nope.a\"}]}}]",
};

static const char *const slots_docs[] = {
   "{\"device_id\": \"device_1\", \"group_id\": 3, \"timestamp\": \"t\","
   " \"max_watts\": 450, \"event_type\": 0, \"obs\": {\"watts\": 300,"
   " \"temp\": 22}}",
   "{\"a\": [{\"b\": 1}, {\"b\": 2}, 3, {\"c\": 4}], \"k\": 1}",
   "{\"a\": {\"b\": {\"c\": 5}, \"x\": [{\"c\": 1}, {\"c\": 2}]}, \"k\": 1,"
   " \"obs\": {\"temp\": 1.5, \"watts\": {\"$numberLong\": \"7\"}}}",
   "{\"a\": 5, \"obs\": \"scalar\", \"arr\": 3}",
   "{}",
   "{\"obs\": {\"watts\": 1, \"watts\": 2}, \"obs\": {\"temp\": 3},"
   " \"k\": 1, \"k\": 2, \"a\": {\"b\": 1}, \"a\": {\"b\": 2}}",
   "{\"a\": {\"b\": [{\"c\": 1}, {\"c\": [2]}, 7]},"
   " \"arr\": [{\"v\": 1}, {\"v\": {\"w\": 2}}, 3, {\"v\": [{\"w\": 4}]}]}",
   "{\"a\": {\"b\": null}, \"o\": [{\"p\": 1}, 2], \"k\": 0,"
   " \"obs\": {\"watts\": null}}",
   "{\"_id\": 1, \"a\": {\"b\": {\"c\": \"deep\"}, \"b\": 4},"
   " \"arr\": [], \"obs\": {}, \"device_id\": \"d\", \"group_id\": 2.5}",
   /* Layouts alternating (A, B, A, A, B, A), the same keys carrying other
    * types and arrays: the slots' memo per layout (expr_paths.c) and the
    * shaping stages' output layout ids must not carry one document's field
    * positions over to another's. */
   "{\"device_id\": \"a1\", \"group_id\": 1, \"timestamp\": \"t1\", \"k\": 1,"
   " \"obs\": {\"watts\": 10, \"temp\": 30}, \"a\": {\"b\": {\"c\": 1},"
   " \"x\": [{\"c\": 1}]}, \"arr\": [{\"v\": 1}], \"o\": {\"p\": 1}}",
   "{\"obs\": {\"temp\": 2, \"watts\": 3}, \"a\": {\"b\": 2}, \"k\": 2, \"d\": 0,"
   " \"device_id\": \"b1\", \"group_id\": 7, \"timestamp\": \"t2\"}",
   "{\"device_id\": 5, \"group_id\": \"g\", \"timestamp\": [1, 2], \"k\": [1, 2],"
   " \"obs\": [{\"watts\": 1}, {\"watts\": 2}], \"a\": [{\"b\": {\"c\": 2}},"
   " {\"b\": 3}], \"arr\": {\"v\": 2}, \"o\": 4}",
   "{\"device_id\": \"a3\", \"group_id\": 2.5, \"timestamp\": null, \"k\": 0,"
   " \"obs\": \"s\", \"a\": {\"b\": [{\"c\": 3}]}, \"arr\": [], \"o\": {\"p\": [1]}}",
   "{\"obs\": 1, \"a\": {\"b\": {\"c\": 9}}, \"k\": [3], \"d\": [1],"
   " \"device_id\": {\"x\": 1}, \"group_id\": null, \"timestamp\": 1}",
   "{\"device_id\": \"a4\", \"group_id\": 4, \"timestamp\": \"t4\", \"k\": 4,"
   " \"obs\": {\"temp\": 40, \"watts\": 400}, \"a\": {\"x\": 1, \"b\": {\"c\": 4}},"
   " \"arr\": [{\"v\": [4]}], \"o\": {\"p\": 4}}",
   /* Sub-documents after one another that start with the same heads or
    * not (the sibling scan's memo, expr_paths.c nest_replay): the same
    * keys with other types, a key differing in its last byte, an element
    * more, names absent (the walk to the end) and back. */
   "{\"obs\": {\"watts\": 1, \"temp\": 2}, \"k\": 1}",
   "{\"obs\": {\"watts\": 1, \"temp\": 2}, \"k\": 1}",
   "{\"obs\": {\"watts\": \"str\", \"temp\": [3]}, \"k\": 2}",
   "{\"obs\": {\"watts\": 1.5, \"temp\": {\"v\": 1}}, \"k\": 2}",
   "{\"obs\": {\"wattz\": 1, \"temp\": 2}, \"k\": 3}",
   "{\"obs\": {\"watts\": 1, \"temp\": 2, \"x\": 3}, \"k\": 4}",
   "{\"obs\": {\"watts\": 1}, \"k\": 5}",
   "{\"obs\": {\"watts\": 6}, \"k\": 6}",
   "{\"obs\": {\"watts\": 1, \"temp\": 7}, \"k\": 7}",
   "{\"obs\": {\"watts\": 2, \"temp\": 8, \"watts\": 9}, \"k\": 8}",
   "{\"obs\": {\"temp\": 8, \"watts\": 2, \"temp\": 9}, \"k\": 8}",
   "{\"obs\": {\"s\": \"str\", \"watts\": 2, \"temp\": 9}, \"k\": 9,"
   " \"a\": {\"b\": {\"c\": 1}}}",   /* One layout after another with "obs" a fixed walk (the groups after
    * its group resolved by the fast path or resumed from there), "a"'s
    * group and the one under "a.b" changing. */
   "{\"obs\": {\"watts\": 1, \"temp\": 2}, \"a\": {\"b\": {\"c\": 1},"
   " \"x\": {\"c\": 2}}, \"k\": 1}",
   "{\"obs\": {\"watts\": 3, \"temp\": 4}, \"a\": {\"b\": {\"c\": 5},"
   " \"x\": {\"c\": [6]}}, \"k\": 2}",
   "{\"obs\": {\"watts\": 5, \"temp\": 6}, \"a\": {\"b\": [{\"c\": 7}],"
   " \"x\": 1}, \"k\": 3}",
   "{\"obs\": {\"watts\": 7, \"temp\": 8}, \"a\": {\"b\": {\"c\": 9},"
   " \"x\": {\"c\": 10}}, \"k\": 4}",
   "{\"obs\": {\"watts\": 9, \"temp\": 10}, \"a\": {\"b\": 1, \"x\": 2},"
   " \"k\": 5}",
   "{\"obs\": {\"watts\": 11, \"temp\": 12}, \"a\": {\"b\": 3, \"x\": 4},"
   " \"k\": 6}",
   "{\"obs\": {\"watts\": 13, \"temp\": 14}, \"a\": {\"b\": {\"c\": 15},"
   " \"x\": {\"c\": 16}}, \"k\": 7}",
   "{\"obs\": {\"watts\": 17, \"temp\": 18}, \"a\": {\"b\": {\"c\": 19},"
   " \"x\": {\"c\": 20}}, \"k\": 8}",
   "{\"obs\": {\"watts\": 21, \"temp\": 22}, \"a\": {\"b\": {\"c\": 23},"
   " \"x\": {\"c\": 24}}, \"k\": 9}",
};

/* `doc` with the `n` bytes at the first occurrence of `key` (a key's
 * bytes with its NUL) plus `skip` replaced by `b`. */
static bson_t *
poke_bytes(const bson_t *doc, const char *key, size_t skip, const uint8_t *b,
           size_t n)
{
   uint8_t *buf = aspen_xmalloc(doc->len);
   memcpy(buf, bson_get_data(doc), doc->len);
   size_t klen = strlen(key) + 1;
   for (size_t i = 0; i + klen + skip + n <= doc->len; i++) {
      if (memcmp(buf + i, key, klen) == 0) {
         memcpy(buf + i + klen + skip, b, n);
         break;
      }
   }
   bson_t *out = bson_new_from_data(buf, doc->len);
   free(buf);
   assert_non_null(out);
   return out;
}

/* `doc` with the 4 bytes there replaced by `le` (little endian). */
static bson_t *
corrupt_at(const bson_t *doc, const char *key, size_t skip, uint32_t le)
{
   uint8_t b[4] = {(uint8_t) le, (uint8_t) (le >> 8), (uint8_t) (le >> 16),
                   (uint8_t) (le >> 24)};
   return poke_bytes(doc, key, skip, b, 4);
}

static void
path_slots_same_results(void **state)
{
   (void) state;
   size_t n_json = sizeof slots_docs / sizeof slots_docs[0];
   size_t n = n_json;
   bson_t **docs = docs_from_json(slots_docs, &n);
   /* Malformed: a sub-document longer than its parent, a string whose
    * length runs past the end, a sub-document's length of 0. */
   bson_error_t berr;
   bson_t *good = bson_new_from_json(
      (const uint8_t *) "{\"x\": 1, \"obs\": {\"watts\": 5, \"temp\": 3,"
                        " \"s\": \"str\"}, \"k\": 2, \"a\": {\"b\": 1}}",
      -1, &berr);
   assert_non_null(good);
   /* And after a good one each (a sibling scan's memo, the good one's
    * heads, meeting the malformed element): a string before the names, one
    * of them a string, its length past the end or 0. */
   bson_t *good2 = bson_new_from_json(
      (const uint8_t *) "{\"x\": 1, \"obs\": {\"sv\": \"str\", \"watts\": \"w\","
                        " \"temp\": 9}, \"k\": 2}",
      -1, &berr);
   assert_non_null(good2);
   bson_t *bad[] = {corrupt_at(good, "obs", 0, 200),
                    corrupt_at(good, "s", 0, 90),
                    corrupt_at(good, "a", 0, 0),
                    corrupt_at(good, "watts", 0, 0xffffffffu),
                    bson_copy(good2),
                    corrupt_at(good2, "sv", 0, 90),
                    bson_copy(good2),
                    corrupt_at(good2, "watts", 0, 90),
                    bson_copy(good2),
                    corrupt_at(good2, "watts", 0, 0),
                    bson_copy(good2)};
   size_t n_bad = sizeof bad / sizeof bad[0];
   docs = aspen_xrealloc(docs, (n + n_bad) * sizeof *docs);
   for (size_t i = 0; i < n_bad; i++) {
      docs[n++] = bad[i];
   }
   bson_destroy(good);
   bson_destroy(good2);
   size_t outputs = runs_same_results(
      slots_pipelines, sizeof slots_pipelines / sizeof slots_pipelines[0],
      aspen_expr_paths_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 100);
}

/* $addFields/$set/$project computed fields written straight into the
 * output (aspen_expr_eval_write's specialised writes) give what their
 * evaluation then write gives - the same outputs byte for byte, DLQ
 * entries and figures - over the path-slot documents (malformed ones
 * included), under short keys and keys past 16 bytes, in place of an
 * input field and after them. */
static const char *const write_pipelines[] = {
   "[{\"$addFields\": {\"kw\": {\"$divide\": [\"$obs.watts\", 1000]},"
   "   \"hot\": {\"$gt\": [\"$obs.temp\", 20]},"
   "   \"c\": {\"$cmp\": [\"$obs.temp\", \"$k\"]},"
   "   \"label\": {\"$concat\": [\"$device_id\", \"-\", {\"$toString\":"
   " \"$group_id\"}]}, \"n\": 5, \"t\": {\"$toString\": \"$k\"}}}]",
   "[{\"$set\": {\"a_key_longer_than_sixteen_bytes\": {\"$divide\": [\"$k\","
   "   \"$obs.watts\"]}, \"another_key_longer_than_sixteen\": {\"$concat\":"
   "   [\"$timestamp\", {\"$toString\": \"$obs.watts\"}, \"$device_id\"]},"
   "   \"yet_another_long_key_for_a_bool\": {\"$lte\": [\"$k\", 1]},"
   "   \"k\": {\"$concat\": [\"$device_id\", \"$device_id\"]}}}]",
   "[{\"$project\": {\"k\": 1, \"q\": {\"$divide\": [\"$obs.temp\", \"$k\"]},"
   "   \"s\": {\"$concat\": [\"$a.b\", \"x\"]}, \"e\": {\"$eq\": [\"$a\","
   "   \"$k\"]}}}]",
};

static void
write_same_results(void **state)
{
   (void) state;
   size_t n = sizeof slots_docs / sizeof slots_docs[0];
   bson_t **docs = docs_from_json(slots_docs, &n);
   size_t outputs = runs_same_results(
      write_pipelines, sizeof write_pipelines / sizeof write_pipelines[0],
      aspen_expr_write_set_enabled, docs, n);
   outputs += runs_same_results(
      slots_pipelines, sizeof slots_pipelines / sizeof slots_pipelines[0],
      aspen_expr_write_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 100);
}

/* A shaping stage's layout cache (stage_shape.c: the last input's keys and
 * what was done with each, replayed for an input with the same keys) gives
 * what the per-stage path gives, over inputs whose layout changes from one
 * to the next: each comes twice in a row (the second replays the first's
 * layout), then the same keys in another order, a key added, one removed,
 * a key of the same length with other bytes (short and past eight bytes),
 * duplicate keys, other types under the same keys, arrays on the $match's
 * paths, missing fields, and malformed documents. */
static const char *const layout_pipelines[] = {
   "[{\"$match\": {}}, {\"$project\": {\"a\": 1, \"c\": 1, \"k\": 1}}]",
   "[{\"$match\": {}}, {\"$project\": {\"a\": 1, \"k\": 1, \"t\": \"$b\"}}]",
   "[{\"$match\": {}}, {\"$project\": {\"_id\": 0, \"a\": 1,"
   " \"longfieldname1\": 1}}]",
   "[{\"$match\": {}}, {\"$project\": {\"b\": 0, \"_id\": 0}}]",
   "[{\"$match\": {}}, {\"$addFields\": {\"a\": {\"$add\": [\"$a\", 1]},"
   " \"n\": \"$k\"}}]",
   "[{\"$match\": {}}, {\"$set\": {\"c\": 5, \"k\": \"$a\"}},"
   " {\"$project\": {\"k\": 1, \"c\": 1, \"a\": 1}}]",
   "[{\"$match\": {}}, {\"$unset\": [\"b\", \"longfieldname2\"]}]",
   "[{\"$match\": {}}, {\"$addFields\": {\"a\": {\"$divide\": [1, \"$a\"]}}}]",
   "[{\"$match\": {\"c.p\": {\"$gte\": 1}, \"a\": {\"$lt\": 9}}},"
   " {\"$project\": {\"a\": 1, \"c\": 1, \"s\": {\"$add\": [\"$a\", 1]}}},"
   " {\"$addFields\": {\"p\": \"$c.p\"}}]",
   "[{\"$match\": {\"a\": {\"$exists\": true}}},"
   " {\"$project\": {\"a\": 1, \"b\": 1}}, {\"$match\": {}},"
   " {\"$project\": {\"b\": 1, \"x\": \"$a\"}}]",
   /* A flat $addFields whose fields are new to some inputs only (its
    * all-new check per layout), then one over the first's output. */
   "[{\"$match\": {}}, {\"$addFields\": {\"n\": \"$k\","
   " \"m\": {\"$add\": [\"$a\", 1]}}},"
   " {\"$addFields\": {\"p\": \"$n\", \"q\": \"$c.p\"}}]",
   /* Outputs of one input layout with other keys (a computed field
    * missing or not: the output's layout id), read by the next stages
    * (their slots, layout caches, a matcher's memo). */
   "[{\"$match\": {}}, {\"$project\": {\"t\": \"$c.p\", \"u\": \"$c.q\","
   " \"a\": 1}}, {\"$project\": {\"t\": 1, \"a\": 1, \"z\": \"$u\"}},"
   " {\"$addFields\": {\"y\": \"$z\", \"w\": \"$t\", \"v\": \"$a\"}}]",
   "[{\"$match\": {}}, {\"$project\": {\"t\": \"$c.p\", \"u\": \"$c.q\","
   " \"k\": 1}}, {\"$match\": {\"u\": {\"$ne\": 2}, \"k\": {\"$ne\": 9}}},"
   " {\"$project\": {\"t\": 1, \"z\": \"$u\", \"k\": 1}}]",
};

static const char *const layout_docs[] = {
   "{\"a\": 1, \"b\": \"x\", \"c\": {\"p\": 1}, \"k\": 1}",
   "{\"a\": 2, \"b\": \"yy\", \"c\": {\"p\": 2}, \"k\": 2}",
   "{\"b\": \"x\", \"a\": 3, \"k\": 3, \"c\": {\"p\": 3}}",
   "{\"b\": \"z\", \"a\": 4, \"k\": 4, \"c\": {\"p\": 4}}",
   "{\"a\": 1, \"b\": \"x\", \"c\": {\"p\": 1}, \"k\": 1, \"z\": 0}",
   "{\"a\": 1, \"b\": \"x\", \"c\": {\"p\": 1}}",
   "{\"a\": 1, \"b\": \"x\", \"d\": {\"p\": 1}, \"k\": 1}",
   "{\"a\": 1, \"b\": \"x\", \"c\": {\"p\": 1}, \"j\": 1}",
   "{\"a\": 5, \"longfieldname1\": 1, \"b\": 2}",
   "{\"a\": 6, \"longfieldname1\": 2, \"b\": 3}",
   "{\"a\": 7, \"longfieldname2\": 1, \"b\": 4}",
   "{\"a\": 1, \"a\": 2, \"b\": \"x\", \"k\": 1, \"k\": 5}",
   "{\"a\": 3, \"a\": 4, \"b\": \"x\", \"k\": 1, \"k\": 6}",
   "{\"a\": \"s\", \"b\": 1, \"c\": [1, {\"p\": 5}], \"k\": [1, 2]}",
   "{\"a\": [0, 2], \"b\": [], \"c\": [{\"p\": 0}, {\"p\": 7}], \"k\": {}}",
   "{\"a\": 0, \"b\": null, \"c\": {\"q\": 1}, \"k\": null}",
   "{\"_id\": 1, \"a\": 1, \"b\": \"x\", \"c\": {\"p\": 1}, \"k\": 1}",
   "{\"a\": 1, \"_id\": 2, \"b\": \"x\", \"c\": {\"p\": 1}, \"k\": 1}",
   "{\"c\": {\"p\": 9}}",
   "{}",
   "{}",
   /* Layouts alternating (A, B, A, A, B, A; A is the first document's),
    * a B with one of $addFields' new fields, A's keys with other types,
    * arrays, and sub-documents where a computed path is missing. */
   "{\"a\": 1, \"b\": \"x\", \"c\": {\"p\": 1}, \"k\": 1}",
   "{\"a\": 2, \"n\": \"x\", \"c\": {\"q\": 2}, \"k\": 2}",
   "{\"a\": [1, 2], \"b\": {\"p\": 1}, \"c\": {\"q\": 3}, \"k\": \"s\"}",
   "{\"a\": 3, \"b\": \"x\", \"c\": {\"p\": 3}, \"k\": 3}",
   "{\"a\": \"s\", \"n\": [1], \"c\": 5, \"k\": null}",
   "{\"a\": 4, \"b\": null, \"c\": [{\"p\": 1}], \"k\": [4]}",
};

static void
layout_cache_same_results(void **state)
{
   (void) state;
   size_t n_json = sizeof layout_docs / sizeof layout_docs[0];
   /* Each document twice in a row. */
   const char *json[2 * sizeof layout_docs / sizeof layout_docs[0]];
   for (size_t i = 0; i < n_json; i++) {
      json[2 * i] = json[2 * i + 1] = layout_docs[i];
   }
   size_t n = 2 * n_json;
   bson_t **docs = docs_from_json(json, &n);
   /* Then the first document and malformed copies of it: a string's length
    * one too long, a sub-document's past the end, the document cut short
    * (its length and last byte made consistent), a key's NUL missing; then
    * the first one again. */
   bson_t *good = docs[0];
   uint32_t len = good->len;
   uint8_t bad[4][64];
   assert_true(len <= sizeof bad[0]);
   for (int i = 0; i < 4; i++) {
      memcpy(bad[i], bson_get_data(good), len);
   }
   /* {a: int32, b: "x", ...}: "b"'s string length is at 4 + 7 + 3. */
   bad[0][4 + 7 + 3]++;
   /* "c"'s sub-document length, after "b"'s 2-byte string. */
   bad[1][4 + 7 + 3 + 4 + 2 + 3] = 0x7f;
   uint32_t cut = len - 6;
   bad[2][0] = (uint8_t) cut;
   bad[2][cut - 1] = 0;
   bad[3][4 + 1] = 'a';
   bad[3][4 + 2] = 'a'; /* "a"'s key runs into its value */
   docs = aspen_xrealloc(docs, (n + 6) * sizeof *docs);
   docs[n++] = bson_copy(good);
   for (int i = 0; i < 4; i++) {
      /* NULL: libbson refuses the frame, no document at all */
      bson_t *b = bson_new_from_data(bad[i], i == 2 ? cut : len);
      if (b) {
         docs[n++] = b;
      }
   }
   docs[n++] = bson_copy(good);
   size_t outputs = runs_same_results(
      layout_pipelines, sizeof layout_pipelines / sizeof layout_pipelines[0],
      aspen_fields_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 200);
}

/* Computed fields that are plain field paths, written by copying the
 * value's bytes (stage_shape.c, copy_path), against their evaluation: a
 * value of every BSON type at the top, one and two levels down, missing
 * ones, scalars and arrays on the way (MongoDB's traversal), duplicate
 * keys, fields replaced in place, nested computed fields, and malformed
 * values (a bool byte of 2, a string or sub-document without its final
 * NUL, lengths past the end). */
static const char *const copy_pipelines[] = {
   "[{\"$project\": {\"_id\": 0, \"v\": \"$v\", \"n\": \"$o.v\","
   "   \"d\": \"$o.d.v\", \"m\": \"$nope\", \"a\": \"$arr.v\","
   "   \"s\": \"$o.v.x\", \"t\": \"$t\"}}]",
   "[{\"$addFields\": {\"v2\": \"$v\", \"o2\": \"$o.v\", \"v\": \"$o.d.v\","
   "   \"a\": \"$arr.v\", \"arr\": \"$o\", \"m\": \"$o.nope\"}}]",
   "[{\"$set\": {\"x\": {\"y\": \"$v\", \"z\": \"$o.d\"}, \"o.w\": \"$t\"}}]",
   "[{\"$project\": {\"t\": 1, \"o.w\": \"$v\", \"o.v\": 1, \"k\": \"$o\"}}]",
   "[{\"$project\": {\"t\": 1, \"v\": 1, \"o\": 1, \"arr\": 1,"
   "   \"ts\": \"$v\"}}, {\"$addFields\": {\"p\": \"$o.v\", \"q\": \"$ts\","
   "   \"r\": {\"$concat\": [\"$t\", \"-\"]}}}]",
   "[{\"$unset\": \"t\"}, {\"$addFields\": {\"u\": \"$o.d.v\"}},"
   " {\"$project\": {\"w\": \"$u\", \"v\": \"$v\"}}]",
};

/* Appends a value of the type numbered `i` (0 .. 21) under `key`. */
static void
append_typed(bson_t *d, const char *key, int i)
{
   static const uint8_t bin[3] = {1, 2, 3};
   bson_oid_t oid;
   bson_decimal128_t dec = {.high = 0x3040000000000000ull, .low = 7};
   bson_t sub;
   bson_oid_init_from_string(&oid, "0123456789abcdef01234567");
   switch (i) {
   case 0: BSON_APPEND_DOUBLE(d, key, -2.5); break;
   case 1: BSON_APPEND_UTF8(d, key, "str"); break;
   case 2:
      BSON_APPEND_DOCUMENT_BEGIN(d, key, &sub);
      BSON_APPEND_INT32(&sub, "x", 1);
      bson_append_document_end(d, &sub);
      break;
   case 3:
      BSON_APPEND_ARRAY_BEGIN(d, key, &sub);
      BSON_APPEND_INT32(&sub, "0", 1);
      bson_append_array_end(d, &sub);
      break;
   case 4: BSON_APPEND_BINARY(d, key, BSON_SUBTYPE_BINARY, bin, 3); break;
   case 5: BSON_APPEND_UNDEFINED(d, key); break;
   case 6: BSON_APPEND_OID(d, key, &oid); break;
   case 7: BSON_APPEND_BOOL(d, key, true); break;
   case 8: BSON_APPEND_DATE_TIME(d, key, 1795000000000); break;
   case 9: BSON_APPEND_NULL(d, key); break;
   case 10: BSON_APPEND_REGEX(d, key, "^a", "mi"); break;
   case 11: BSON_APPEND_DBPOINTER(d, key, "c.d", &oid); break;
   case 12: BSON_APPEND_CODE(d, key, "f()"); break;
   case 13: BSON_APPEND_SYMBOL(d, key, "sym"); break;
   case 14:
      bson_init(&sub);
      BSON_APPEND_INT32(&sub, "s", 1);
      BSON_APPEND_CODE_WITH_SCOPE(d, key, "g()", &sub);
      bson_destroy(&sub);
      break;
   case 15: BSON_APPEND_INT32(d, key, -7); break;
   case 16: BSON_APPEND_TIMESTAMP(d, key, 5, 6); break;
   case 17: BSON_APPEND_INT64(d, key, 1ll << 40); break;
   case 18: BSON_APPEND_DECIMAL128(d, key, &dec); break;
   case 19: BSON_APPEND_MINKEY(d, key); break;
   case 20: BSON_APPEND_MAXKEY(d, key); break;
   default: BSON_APPEND_BOOL(d, key, false); break;
   }
}

enum { COPY_TYPES = 22 };

/* {t: "s", v: X, o: {v: X, d: {v: X}}, arr: [{v: X}, {v: X}]} with X of
 * type `i`, the keys in another order when `shuffle`. */
static bson_t *
typed_doc(int i, bool shuffle)
{
   bson_t *d = bson_new(), o, dd, arr, e;
   if (!shuffle) {
      BSON_APPEND_UTF8(d, "t", "s");
      append_typed(d, "v", i);
   }
   BSON_APPEND_DOCUMENT_BEGIN(d, "o", &o);
   append_typed(&o, "v", i);
   BSON_APPEND_DOCUMENT_BEGIN(&o, "d", &dd);
   append_typed(&dd, "v", i);
   bson_append_document_end(&o, &dd);
   bson_append_document_end(d, &o);
   BSON_APPEND_ARRAY_BEGIN(d, "arr", &arr);
   for (int k = 0; k < 2; k++) {
      BSON_APPEND_DOCUMENT_BEGIN(&arr, k ? "1" : "0", &e);
      append_typed(&e, "v", i);
      bson_append_document_end(&arr, &e);
   }
   bson_append_array_end(d, &arr);
   if (shuffle) {
      append_typed(d, "v", i);
      BSON_APPEND_UTF8(d, "t", "s");
   }
   return d;
}

/* `doc` with the byte there set to `b`. */
static bson_t *
poke_at(const bson_t *doc, const char *key, size_t skip, uint8_t b)
{
   return poke_bytes(doc, key, skip, &b, 1);
}

/* The documents of `json` (docs_from_json: *n of them, then *n is the
 * count), then for each type typed_doc `copies` times and once more with
 * its keys shuffled when `shuffle_every` divides the type's number; room
 * for `extra` more. */
static bson_t **
typed_docs(const char *const *json, size_t *n, int copies, int shuffle_every,
           size_t extra)
{
   bson_t **docs = docs_from_json(json, n);
   size_t cap = *n + (size_t) (copies + 1) * COPY_TYPES + extra;
   docs = aspen_xrealloc(docs, cap * sizeof *docs);
   for (int i = 0; i < COPY_TYPES; i++) {
      for (int c = 0; c < copies; c++) {
         docs[(*n)++] = typed_doc(i, false);
      }
      docs[(*n)++] = typed_doc(i, i % shuffle_every == 0);
   }
   return docs;
}

static void
path_copy_same_results(void **state)
{
   (void) state;
   static const char *const json[] = {
      "{\"t\": \"s\", \"v\": 1, \"o\": 5, \"arr\": 3}",
      "{\"t\": \"s\", \"o\": [{\"v\": 1, \"d\": {\"v\": 2}}, {\"v\": 3}],"
      " \"arr\": [{\"v\": [1]}, 2, {\"w\": 3}]}",
      "{\"t\": \"s\", \"o\": {\"d\": [{\"v\": 1}, {\"v\": 2}], \"v\": null}}",
      "{\"v\": 1, \"v\": 2, \"o\": {\"v\": \"a\", \"v\": \"b\"}, \"o\": 4}",
      "{\"o\": {\"d\": 7}}",
      "{}",
   };
   size_t n = sizeof json / sizeof json[0];
   bson_t **docs = typed_docs(json, &n, 1, 3, 8);
   /* Malformed values: "v"'s bool byte 2 (at the top and in "o"), a
    * string's final NUL, a sub-document's final NUL, a string's length
    * past the end. */
   bson_t *b = typed_doc(7, false), *str = typed_doc(1, false);
   bson_t *sub = typed_doc(2, false);
   docs[n++] = poke_at(b, "v", 0, 2);
   docs[n++] = poke_at(b, "d", 4 + 1 + 2, 2);
   docs[n++] = poke_at(str, "v", 4 + 3, 'x');
   docs[n++] = poke_at(sub, "v", 4 + 1 + 2 + 4, 1);
   docs[n++] = poke_at(str, "v", 0, 90);
   docs[n++] = bson_copy(str);
   bson_destroy(b);
   bson_destroy(str);
   bson_destroy(sub);
   size_t outputs = runs_same_results(
      copy_pipelines, sizeof copy_pipelines / sizeof copy_pipelines[0],
      aspen_shape_path_copy_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 300);
}

/* A shaping stage's plans per input layout (stage_shape.c: kept runs
 * copied as one span each, their field table entries moved, a renamed
 * top-level path copied from the element found once for the layout, the
 * last few layouts kept) against walking every input's table: renamed
 * paths of every BSON type (the same layout id with values of other types
 * and sizes), two fields from one source, a name too long for the
 * prepared head, paths one and two levels down, missing ones, _id
 * included and excluded, dotted inclusions (left to the walk), fields
 * replaced in place, an exclusion, and stages reading the plan's field
 * table; over six layouts in turn (more than a stage keeps), keys
 * shuffled, and malformed values (a bool byte of 2, a string without its
 * NUL, a length past the end, a sub-document's NUL gone). */
static const char *const plan_pipelines[] = {
   "[{\"$project\": {\"_id\": 0, \"t\": 1, \"r\": \"$v\", \"s\": \"$t\","
   "   \"q\": \"$o.v\", \"w\": \"$arr\", \"m\": \"$nope\"}}]",
   "[{\"$project\": {\"t\": 1, \"v\": 1, \"o\": 1, \"ts\": \"$v\"}}]",
   "[{\"$project\": {\"_id\": 1, \"v\": 1, \"x\": \"$o\", \"y\": \"$v\","
   "   \"z\": \"$v\", \"averyverylongname\": \"$t\"}}]",
   "[{\"$project\": {\"o.v\": 1, \"t\": 1, \"y\": \"$v\"}}]",
   "[{\"$addFields\": {\"v\": \"$t\", \"t\": \"$v\", \"n\": \"$o.d.v\","
   "   \"c\": {\"$concat\": [\"$t\", \"-\"]}}}]",
   "[{\"$project\": {\"v\": 0, \"_id\": 0}}, {\"$unset\": \"t\"}]",
   "[{\"$project\": {\"t\": 1, \"v\": 1, \"o\": 1, \"ts\": \"$v\"}},"
   " {\"$addFields\": {\"p\": \"$ts\", \"q\": \"$o.v\","
   "   \"k\": {\"$type\": \"$ts\"}}},"
   " {\"$project\": {\"p\": 1, \"ts\": 1, \"k\": 1, \"z\": \"$t\"}}]",
   "[{\"$project\": {\"_id\": 0, \"v\": 1, \"t\": 1}},"
   " {\"$match\": {\"t\": {\"$ne\": \"nope\"}}},"
   " {\"$project\": {\"u\": \"$v\", \"t\": 1}}]",
};

static void
plan_same_results(void **state)
{
   (void) state;
   /* Six layouts (A is typed_doc's), each after the others in turn, with
    * values of other sizes under A's keys. */
   static const char *const json[] = {
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"v\": 2}, \"arr\": [1]}",
      "{\"_id\": 7, \"t\": \"s\", \"v\": \"a\", \"o\": {\"v\": 2}}",
      "{\"v\": 1.5, \"t\": \"s\"}",
      "{\"t\": \"x\", \"o\": {\"v\": \"in\", \"d\": {\"v\": 3}}, \"v\": 9}",
      "{\"arr\": 1, \"t\": \"s\", \"v\": null, \"o\": 4, \"e\": 5}",
      "{\"v\": {\"a\": 1}, \"z\": 1, \"t\": \"q\", \"_id\": 2}",
      "{\"t\": \"a longer string than the last one\", \"v\": \"and here"
      " too, longer than sixty four bytes, so copied by memcpy.....\","
      " \"o\": {\"v\": 2, \"d\": {\"v\": \"deep\"}}, \"arr\": [1, 2, 3]}",
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"v\": 2}, \"arr\": [1]}",
      "{\"_id\": 8, \"t\": \"ss\", \"v\": \"abc\", \"o\": {\"v\": 3}}",
      "{\"v\": 2.5, \"t\": \"sss\"}",
      "{\"t\": \"x\", \"o\": {\"v\": \"in\", \"d\": {\"v\": 3}}, \"v\": 9}",
      "{\"arr\": 1, \"t\": \"s\", \"v\": null, \"o\": 4, \"e\": 5}",
      "{\"v\": {\"a\": 1, \"b\": 2}, \"z\": 1, \"t\": \"q\", \"_id\": 2}",
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"v\": 2}, \"arr\": [1]}",
   };
   size_t n = sizeof json / sizeof json[0];
   bson_t **docs = typed_docs(json, &n, 2, 2, 12);
   bson_t *b = typed_doc(7, false), *str = typed_doc(1, false);
   bson_t *sub = typed_doc(2, false);
   docs[n++] = poke_at(b, "v", 0, 2);
   docs[n++] = bson_copy(b);
   docs[n++] = poke_at(str, "v", 4 + 3, 'x');
   docs[n++] = poke_at(str, "t", 4 + 1, 'x');
   docs[n++] = poke_at(str, "v", 0, 90);
   docs[n++] = poke_at(str, "t", 0, 0);
   docs[n++] = bson_copy(str);
   docs[n++] = poke_at(sub, "v", 4 + 1 + 2 + 4, 1);
   docs[n++] = poke_at(sub, "o", 0, 0xff);
   docs[n++] = bson_copy(sub);
   bson_destroy(b);
   bson_destroy(str);
   bson_destroy(sub);
   size_t outputs = runs_same_results(
      plan_pipelines, sizeof plan_pipelines / sizeof plan_pipelines[0],
      aspen_shape_plan_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 800);
   /* A renamed path from a key of 300 bytes (its element's head longer
    * than a byte can count), a string then an int under it. */
   char key[301], pl[512];
   memset(key, 'k', 300);
   key[300] = '\0';
   snprintf(pl, sizeof pl, "[{\"$project\": {\"r\": \"$%s\", \"t\": 1}}]",
            key);
   const char *const long_pl[] = {pl};
   bson_t *long_docs[4];
   for (int i = 0; i < 4; i++) {
      long_docs[i] = bson_new();
      BSON_APPEND_UTF8(long_docs[i], "t", "s");
      if (i < 2) {
         BSON_APPEND_UTF8(long_docs[i], key, i ? "second" : "first");
      } else {
         BSON_APPEND_INT32(long_docs[i], key, i);
      }
   }
   assert_int_equal(runs_same_results(long_pl, 1,
                                      aspen_shape_plan_set_enabled,
                                      long_docs, 4),
                    8);
   for (int i = 0; i < 4; i++) {
      bson_destroy(long_docs[i]);
   }
}

/* append_new (an $addFields/$set whose computed fields are all new: the
 * input copied as one span, the computed fields appended, their table
 * entries stored straight) against apply_doc's walk: computed fields
 * missing on some documents and present on others under one layout (a
 * plain path, $$REMOVE by type), layouts alternating, a value of every
 * type, corrupt values, and inputs with 29 to 32 top-level fields (the
 * output's table filling up, then overflowing). */
static const char *const append_new_pipelines[] = {
   "[{\"$addFields\": {\"n1\": \"$v\", \"n2\": \"$o.v\","
   "   \"n3\": {\"$cond\": [{\"$eq\": [{\"$type\": \"$v\"}, \"int\"]},"
   "   \"$$REMOVE\", \"$t\"]}, \"n4\": \"$o.d.v\"}},"
   " {\"$project\": {\"n4\": 1, \"n3\": 1, \"n2\": 1, \"n1\": 1,"
   "   \"t\": 1, \"f30\": 1}}]",
   "[{\"$addFields\": {\"n1\": \"$v\", \"n2\": \"$o.v\","
   "   \"n3\": {\"$cond\": [{\"$eq\": [{\"$type\": \"$v\"}, \"int\"]},"
   "   \"$$REMOVE\", \"$t\"]}, \"n4\": \"$o.d.v\"}},"
   " {\"$addFields\": {\"q\": [\"$n2\", \"$n4\", \"$n3\"]}}]",
   "[{\"$set\": {\"k\": {\"$type\": \"$v\"}, \"m\": \"$nope\","
   "   \"c\": {\"$concat\": [\"$t\", \"-\"]}}},"
   " {\"$addFields\": {\"q\": [\"$c\", \"$k\", \"$m\", \"$f28\"]}}]",
   "[{\"$project\": {\"t\": 1, \"v\": 1, \"o\": 1}}, {\"$addFields\":"
   "   {\"kw\": {\"$divide\": [\"$v\", 1000]}, \"hot\": {\"$gt\": [\"$v\","
   "   20]}, \"r\": \"$o.v\"}}]",
   "[{\"$addFields\": {\"x\": \"$v\"}}, {\"$addFields\": {\"y\": \"$x\","
   "   \"z\": {\"$cond\": [{\"$eq\": [\"$t\", \"s\"]}, \"$$REMOVE\", 1]}}}]",
};

static void
append_new_same_results(void **state)
{
   (void) state;
   static const char *const json[] = {
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"v\": 2}}",
      "{\"t\": \"s\", \"o\": {\"d\": {\"v\": 3}}}",
      /* one layout, as many fields written but others (n1 n2, n1 n4) */
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"v\": 2}}",
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"d\": {\"v\": 3}}}",
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"v\": 2}}",
      "{\"t\": \"q\", \"v\": 1, \"o\": {\"v\": 2}}",
      "{\"t\": \"s\", \"v\": \"a\", \"o\": {\"v\": 2}}",
      "{\"v\": 1.5, \"t\": \"s\"}",
      "{\"t\": \"s\", \"v\": 1, \"o\": {\"v\": 2}}",
      "{\"t\": \"x\", \"v\": null, \"o\": 4}",
      "{}",
      "{\"t\": \"s\", \"v\": 7, \"o\": {}}",
   };
   size_t n = sizeof json / sizeof json[0];
   bson_t **docs = typed_docs(json, &n, 2, 2, 12);
   bson_t *b = typed_doc(7, false), *str = typed_doc(1, false);
   docs[n++] = poke_at(b, "v", 0, 2);
   docs[n++] = poke_at(str, "v", 4 + 3, 'x');
   docs[n++] = poke_at(str, "t", 0, 90);
   bson_destroy(b);
   bson_destroy(str);
   for (int total = 29; total <= 32; total++) {
      bson_t *d = bson_new();
      BSON_APPEND_UTF8(d, "t", "s");
      BSON_APPEND_INT32(d, "v", total);
      for (int k = 2; k < total; k++) {
         char key[8];
         snprintf(key, sizeof key, "f%d", k);
         BSON_APPEND_INT32(d, key, k);
      }
      docs[n++] = d;
   }
   size_t outputs = runs_same_results(
      append_new_pipelines,
      sizeof append_new_pipelines / sizeof append_new_pipelines[0],
      aspen_shape_append_new_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 300);
}

/* Path slots read in place (expr_paths.c: the type-specialised reads, a
 * sub-document's kept walk replayed with its heads compared as words, a
 * fixed walk read at known offsets) against the general lookup: a value of
 * every BSON type in each slot (at the top and one level down), each
 * twice in a row and between bench-shaped documents; keys of 2, 6, 7, 14
 * and 15 bytes (heads of one word, exactly one, two, exactly two, past
 * the kept heads) and keys differing from them in their last byte or one
 * byte longer; a kept walk whose sub-document grows or shrinks (a wider
 * type, a string of another length, an element more or less, the names
 * absent or swapped); and corrupt sizes inside "obs" after a good walk
 * (its length short by 1 to 6 bytes or past its parent, a value cut, a
 * key's NUL gone). */
static const char *const walk_pipelines[] = {
   /* Paths inside expressions (a plain path is copied, not slotted):
    * each value in an array, and its type (missing or not). */
   "[{\"$addFields\": {\"v\": [\"$obs.watts\", \"$obs.temp\","
   "   \"$device_id\", \"$group_id\", \"$obs\"],"
   "   \"y\": [{\"$type\": \"$obs.watts\"}, {\"$type\": \"$obs.temp\"},"
   "   {\"$type\": \"$device_id\"}, {\"$type\": \"$group_id\"}]}}]",
   "[{\"$project\": {\"device_id\": 1, \"group_id\": 1, \"obs\": 1,"
   "   \"o\": 1}}, {\"$addFields\": {\"v\": [\"$obs.watts\","
   "   \"$obs.temp\", \"$device_id\", \"$group_id\"],"
   "   \"y\": [{\"$type\": \"$obs.watts\"}, {\"$type\": \"$obs.temp\"},"
   "   {\"$type\": \"$device_id\"}, {\"$type\": \"$group_id\"}]}}]",
   "[{\"$addFields\": {\"o\": [\"$o.abcdef\", \"$o.abcdefg\","
   "   \"$o.abcdefghijklmn\", \"$o.ab\", {\"$type\": \"$o.abcdefg\"},"
   "   {\"$type\": \"$o.ab\"}, {\"$type\": \"$o.abcdef\"},"
   "   {\"$type\": \"$o.abcdefghijklmn\"}]}}]",
   "[{\"$addFields\": {\"o\": [\"$o.abcdefghijklmno\", \"$o.abcdefg\"]}}]",
   "[{\"$addFields\": {\"t\": [\"$obs.temp\", {\"$type\": \"$obs.temp\"}],"
   "   \"n\": {\"$type\": \"$obs.nope\"}}}]",
   "[{\"$addFields\": {\"kw\": {\"$divide\": [\"$obs.watts\", 1000]},"
   "   \"hot\": {\"$gt\": [\"$obs.temp\", 20]},"
   "   \"label\": {\"$concat\": [\"$device_id\", \"-\", {\"$toString\":"
   " \"$group_id\"}]}}}]",
   /* Through the input's field table (a $match's, a $project's): the
    * top-level slots remembered per layout id (those absent kept MISSING
    * while the memo stands), a layout id repeating with other bytes. */
   "[{\"$match\": {}}, {\"$addFields\": {\"v\": [\"$x\", \"$device_id\","
   "   \"$obs.watts\", \"$obs.temp\", \"$obs.x\", \"$obs.n\", \"$o.ab\","
   "   {\"$type\": \"$x\"}, {\"$type\": \"$obs.n\"}]}}]",
   "[{\"$project\": {\"device_id\": 1, \"group_id\": 1, \"obs\": 1,"
   "   \"x\": 1}}, {\"$addFields\": {\"v\": [\"$x\", \"$device_id\","
   "   \"$group_id\", \"$obs.watts\", \"$obs.temp\", \"$obs.x\","
   "   \"$obs.n\", {\"$type\": \"$x\"}, {\"$type\": \"$obs.temp\"}]}}]",
};

/* {device_id: A, group_id: A, obs: {watts: A, temp: A}, k: 1}, A of the
 * type numbered `i` (append_typed), or the bench's types for -1. */
static bson_t *
walk_doc(int i)
{
   bson_t *d = bson_new(), obs;
   if (i < 0) {
      BSON_APPEND_UTF8(d, "device_id", "device_1");
      BSON_APPEND_INT32(d, "group_id", 3);
   } else {
      append_typed(d, "device_id", i);
      append_typed(d, "group_id", i);
   }
   BSON_APPEND_DOCUMENT_BEGIN(d, "obs", &obs);
   if (i < 0) {
      BSON_APPEND_INT32(&obs, "watts", 300);
      BSON_APPEND_INT32(&obs, "temp", 22);
   } else {
      append_typed(&obs, "watts", i);
      append_typed(&obs, "temp", i);
   }
   bson_append_document_end(d, &obs);
   BSON_APPEND_INT32(d, "k", 1);
   return d;
}

/* `doc` with the type byte of the element named `key` (the first
 * occurrence of its bytes and NUL) set to `type`. */
static bson_t *
retype_at(const bson_t *doc, const char *key, uint8_t type)
{
   uint8_t *buf = aspen_xmalloc(doc->len);
   memcpy(buf, bson_get_data(doc), doc->len);
   size_t klen = strlen(key) + 1;
   for (size_t i = 1; i + klen <= doc->len; i++) {
      if (memcmp(buf + i, key, klen) == 0) {
         buf[i - 1] = type;
         break;
      }
   }
   bson_t *out = bson_new_from_data(buf, doc->len);
   free(buf);
   assert_non_null(out);
   return out;
}

static void
path_slots_walks_same_results(void **state)
{
   (void) state;
   static const char *const json[] = {
      /* keys across word boundaries, then each differing (each after
       * the first, its walk kept) */
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"aB\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdeF\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefG\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmN\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"Abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmnO\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdefx\": 2, \"abcdefgh\": 3,"
      " \"abcdefghijklmno\": 4, \"abcdefghijklmnop\": 5}}",
      "{\"o\": {\"ab\": 1, \"abcdef\": 2, \"abcdefg\": 3,"
      " \"abcdefghijklmn\": 4, \"abcdefghijklmno\": 5}}",
      "{\"o\": {\"abcdefg\": true, \"ab\": null, \"abcdef\": 2.5}}",
      "{\"o\": {\"abcdefg\": true, \"ab\": null, \"abcdef\": 2.5}}",
      "{\"o\": {\"abcdefg\": false}}",
      "{\"o\": {\"abcdefg\": 1}}",
      /* a kept walk growing and shrinking */
      "{\"obs\": {\"watts\": 1, \"temp\": 2}, \"k\": 1}",
      "{\"obs\": {\"watts\": {\"$numberLong\": \"1\"}, \"temp\": 2}}",
      "{\"obs\": {\"watts\": {\"$numberLong\": \"3\"}, \"temp\": 4}}",
      "{\"obs\": {\"watts\": 1, \"temp\": {\"$numberLong\": \"2\"}}}",
      "{\"obs\": {\"watts\": 1, \"temp\": 2}, \"k\": 1}",
      "{\"obs\": {\"watts\": 1, \"s\": \"a\", \"temp\": 2}}",
      "{\"obs\": {\"watts\": 1, \"s\": \"a\", \"temp\": 3}}",
      "{\"obs\": {\"watts\": 1, \"s\": \"abcdef\", \"temp\": 4}}",
      "{\"obs\": {\"watts\": 1, \"s\": \"\", \"temp\": 5}}",
      "{\"obs\": {\"watts\": 1, \"s\": {\"x\": 1}, \"temp\": 5}}",
      "{\"obs\": {\"watts\": 1, \"temp\": 2, \"x\": 3}}",
      "{\"obs\": {\"watts\": 1}}",
      "{\"obs\": {\"watts\": 2}}",
      "{\"obs\": {\"watts\": 2, \"x\": 1}}",
      "{\"obs\": {}}",
      "{\"obs\": {}}",
      "{\"obs\": {\"temp\": 2, \"watts\": 1}}",
      "{\"obs\": {\"temp\": 2, \"watts\": 1}}",
      "{\"obs\": {\"watts\": true, \"temp\": null}}",
      "{\"obs\": {\"watts\": false, \"temp\": null}}",
      "{\"obs\": {\"watts\": 1.5,"
      " \"temp\": {\"$date\": \"2026-01-01T00:00:00Z\"}}}",
      "{\"obs\": {\"watts\": 2.5,"
      " \"temp\": {\"$date\": \"2026-01-02T00:00:00Z\"}}}",
      /* fixed walks mixing widths (their values read int32s first, then
       * 8 bytes, then bools and nulls), each twice (the second fixed) */
      "{\"obs\": {\"watts\": true, \"temp\": 1, \"x\": 2.5, \"n\": null}}",
      "{\"obs\": {\"watts\": false, \"temp\": 2, \"x\": 3.5, \"n\": null}}",
      "{\"obs\": {\"n\": null, \"x\": {\"$numberLong\": \"7\"},"
      " \"temp\": true, \"watts\": 3}}",
      "{\"obs\": {\"n\": null, \"x\": {\"$numberLong\": \"8\"},"
      " \"temp\": false, \"watts\": 4}}",
      "{\"obs\": {\"x\": 1, \"watts\": null, \"temp\": 2.5, \"n\": 5}}",
      "{\"obs\": {\"x\": 2, \"watts\": null, \"temp\": 3.5, \"n\": 6}}",
      /* one layout, values of other lengths and types (offsets shift) */
      "{\"device_id\": \"d\", \"group_id\": 1, \"obs\": {\"watts\": 1,"
      " \"temp\": 2}, \"x\": 1}",
      "{\"device_id\": \"device_123456789\", \"group_id\": 2,"
      " \"obs\": {\"watts\": 3, \"temp\": 4}, \"x\": \"xx\"}",
      "{\"device_id\": \"\", \"group_id\": 3, \"obs\": {\"watts\": 5,"
      " \"temp\": 6}, \"x\": [1]}",
      "{\"device_id\": \"d\", \"group_id\": 4.5, \"obs\": {\"watts\": 7,"
      " \"temp\": 8, \"x\": 9}, \"x\": {\"a\": 1}}",
      "{\"device_id\": [\"d\"], \"group_id\": 5, \"obs\": [{\"watts\": 9}],"
      " \"x\": null}",
      "{\"device_id\": \"d\", \"group_id\": 6, \"obs\": \"s\", \"x\": 1}",
      "{\"device_id\": \"d\", \"group_id\": 7, \"obs\": {\"watts\": 1,"
      " \"temp\": 2}, \"x\": 2}",
   };
   size_t n = sizeof json / sizeof json[0];
   bson_t **docs = docs_from_json(json, &n);
   size_t cap = n + 4 * COPY_TYPES + 64 + 8;
   docs = aspen_xrealloc(docs, cap * sizeof *docs);
   /* A layout without "x" (its slot MISSING, remembered so), then a
    * document of more fields than a table holds (no table: "x" found by
    * a scan), then the first layout again. */
   bson_t *no_x = walk_doc(-1), *many = walk_doc(-1);
   for (int i = 0; i < ASPEN_FIELDS_MAX; i++) {
      char key[16];
      snprintf(key, sizeof key, "f%d", i);
      BSON_APPEND_INT32(many, key, i);
   }
   BSON_APPEND_UTF8(many, "x", "from the scan");
   docs[n++] = bson_copy(no_x);
   docs[n++] = bson_copy(no_x);
   docs[n++] = bson_copy(many);
   docs[n++] = bson_copy(no_x);
   docs[n++] = bson_copy(no_x);
   docs[n++] = bson_copy(many);
   docs[n++] = bson_copy(no_x);
   bson_destroy(no_x);
   bson_destroy(many);
   for (int i = 0; i < COPY_TYPES; i++) {
      docs[n++] = walk_doc(i);
      docs[n++] = walk_doc(i);
      docs[n++] = walk_doc(-1);
      docs[n++] = walk_doc(-1);
   }
   /* Corrupt sizes inside "obs", each after a good document (its walk
    * kept): obs = {watts: 300, temp: 22} is 26 bytes. */
   bson_t *good = walk_doc(-1);
   for (uint32_t cut = 1; cut <= 6; cut++) {
      docs[n++] = bson_copy(good);
      docs[n++] = corrupt_at(good, "obs", 0, 26 - cut);
   }
   docs[n++] = bson_copy(good);
   docs[n++] = corrupt_at(good, "obs", 0, 26 + 6); /* past "k" */
   docs[n++] = bson_copy(good);
   docs[n++] = corrupt_at(good, "obs", 0, 200);
   docs[n++] = bson_copy(good);
   docs[n++] = poke_at(good, "temp", 0, 'x'); /* the key runs on */
   docs[n++] = bson_copy(good);
   docs[n++] = poke_at(good, "watts", 0, 0xff); /* a value changed */
   docs[n++] = bson_copy(good);
   /* Types changed to wider ones: a double reading "temp"'s head, a
    * double and a string (length 22) running past "obs"'s end, a double
    * past the document's (group_id, last). */
   docs[n++] = retype_at(good, "watts", BSON_TYPE_DOUBLE);
   docs[n++] = bson_copy(good);
   docs[n++] = retype_at(good, "temp", BSON_TYPE_DOUBLE);
   docs[n++] = bson_copy(good);
   docs[n++] = retype_at(good, "temp", BSON_TYPE_UTF8);
   docs[n++] = bson_copy(good);
   bson_t *top = bson_new();
   BSON_APPEND_UTF8(top, "device_id", "d");
   BSON_APPEND_INT32(top, "group_id", 5);
   docs[n++] = bson_copy(top);
   docs[n++] = retype_at(top, "group_id", BSON_TYPE_DOUBLE);
   docs[n++] = bson_copy(top);
   bson_destroy(top);
   /* Strings whose length runs 2 bytes past their element's end (within
    * what follows the length, not within the value's room). */
   bson_error_t berr;
   bson_t *strs = bson_new_from_json(
      (const uint8_t *) "{\"obs\": {\"watts\": 1, \"temp\": \"abc\"},"
                        " \"device_id\": \"xyz\"}",
      -1, &berr);
   assert_non_null(strs);
   docs[n++] = bson_copy(strs);
   docs[n++] = corrupt_at(strs, "temp", 0, 6);
   docs[n++] = bson_copy(strs);
   docs[n++] = corrupt_at(strs, "device_id", 0, 6);
   docs[n++] = bson_copy(strs);
   /* Strings whose last byte is not a NUL (libbson stops there). */
   docs[n++] = poke_at(strs, "temp", 7, 'z');
   docs[n++] = bson_copy(strs);
   docs[n++] = poke_at(strs, "device_id", 7, 'z');
   docs[n++] = bson_copy(strs);
   bson_destroy(strs);
   bson_destroy(good);
   assert_true(n <= cap);
   size_t outputs = runs_same_results(
      walk_pipelines, sizeof walk_pipelines / sizeof walk_pipelines[0],
      aspen_expr_paths_set_enabled, docs, n);
   docs_free(docs, n);
   assert_true(outputs > 500);
}

/* Whether a $match makes its input's field table is decided when the
 * pipeline is parsed, from the stage after it, before any document: yes
 * before a shaping stage ($project, $addFields, $set, $unset), no last, before
 * another $match, a sink or anything else. */
static void
match_table_decided_at_parse(void **state)
{
   (void) state;
   static const struct {
      const char *stages;
      bool makes[3]; /* per stage after $source, for the $match ones */
   } cases[] = {
      {"\"1\": {\"$match\": {\"a\": 1}}, \"2\": {\"$project\": {\"a\": 1}}",
       {true}},
      {"\"1\": {\"$match\": {\"a\": 1}}, \"2\": {\"$addFields\": {\"b\": 1}}",
       {true}},
      {"\"1\": {\"$match\": {}}, \"2\": {\"$set\": {\"b\": 1}}", {true}},
      {"\"1\": {\"$match\": {}}, \"2\": {\"$unset\": \"b\"}", {true}},
      {"\"1\": {\"$match\": {\"a\": 1}}", {false}},
      {"\"1\": {\"$match\": {}}, \"2\": {\"$match\": {}},"
       " \"3\": {\"$project\": {\"a\": 1}}",
       {false, true}},
      {"\"1\": {\"$match\": {}}, \"2\": {\"$replaceWith\": \"$a\"}",
       {false}},
      {"\"1\": {\"$match\": {}}, \"2\": {\"$emit\": {\"connectionName\":"
       " \"testKafka\", \"topic\": \"t\"}}",
       {false}},
   };
   for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      aspen_pipeline_t *pl = parse_after_source(cases[c].stages);
      for (int i = 0; i < pl->n_stages && i < 3; i++) {
         if (strcmp(pl->stages[i].ops->name, "$match") == 0) {
            if (aspen__match_makes_table(&pl->stages[i]) !=
                cases[c].makes[i]) {
               fail_msg("%s: stage %d %s a table", cases[c].stages, i,
                        cases[c].makes[i] ? "makes no" : "makes");
            }
         }
      }
      aspen_pipeline_destroy(pl);
   }
}

/* A $match makes its input's field table only when the stage after it
 * reads one (a shaping stage): a $match last hands its documents on
 * without one, one before $project with one (which the $project then
 * replaces with its output's), and both give the same documents. */
static void
match_table_only_when_read(void **state)
{
   (void) state;
   static const char *const stages[] = {
      "\"1\": {\"$match\": {\"a\": {\"$gte\": 1}}}",
      "\"1\": {\"$match\": {\"a\": {\"$gte\": 1}}}, "
      "\"2\": {\"$project\": {\"a\": 1, \"_id\": 0}}",
   };
   size_t tables[2], outs[2];
   for (int p = 0; p < 2; p++) {
      aspen_pipeline_t *pl = parse_after_source(stages[p]);
      collector_t col;
      collector_attach(&col, pl);
      bson_t meta;
      source_meta(&meta, -1);
      for (int i = 0; i < 4; i++) {
         bson_t doc = BSON_INITIALIZER;
         BSON_APPEND_INT32(&doc, "a", i);
         aspen_sdoc_t d = {.doc = &doc, .meta = &meta, .ts_ms = TEST_NOW_MS};
         aspen_pipeline_push(pl, &d);
         bson_destroy(&doc);
      }
      bson_destroy(&meta);
      tables[p] = col.n_out_tables;
      outs[p] = col.n_out;
      for (size_t i = 0; i < col.n_out; i++) {
         bson_iter_t it;
         assert_true(bson_iter_init_find(&it, col.out[i], "a"));
         assert_int_equal(bson_iter_int32(&it), (int) i + 1);
      }
      aspen_pipeline_destroy(pl);
      collector_cleanup(&col);
   }
   assert_int_equal(outs[0], 3);
   assert_int_equal(outs[1], 3);
   assert_int_equal(tables[0], 0);
   assert_int_equal(tables[1], 3);
}

static void
run_file(void **state)
{
   const char *path = *state;
   const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
   size_t len;
   char *text = read_file(path, &len);
   if (!text) {
      fail_msg("cannot read %s: %s", path, strerror(errno));
   }
   sbuf_t report = {0};
   if (!lint_case_text(text, base, &report)) {
      print_error("%s", report.s);
      free(report.s);
      free(text);
      fail_msg("%s: the case file does not pass the lint", base);
   }
   bson_error_t berr;
   bson_t *cases = bson_new_from_json((const uint8_t *) text, (ssize_t) len,
                                      &berr);
   free(text);
   if (!cases) {
      fail_msg("%s: not valid (relaxed Extended) JSON: %s", base,
               berr.message);
   }
   int n = 0, failed = 0;
   bson_iter_t it;
   bson_iter_init(&it, cases);
   while (bson_iter_next(&it)) {
      n++;
      bson_t c;
      sbuf_t why = {0};
      const char *name = "(unnamed)";
      bool ok;
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !aspen_bson_view(&it, &c)) {
         sbuf_printf(&why, "    case %d is not an object\n", n);
         ok = false;
      } else {
         bson_iter_t ni;
         if (bson_iter_init_find(&ni, &c, "name") &&
             BSON_ITER_HOLDS_UTF8(&ni)) {
            name = bson_iter_utf8(&ni, NULL);
         }
         ok = run_case(&c, &why);
      }
      if (!ok) {
         failed++;
         print_error("FAIL %s: case %d \"%s\"\n%s", base, n, name,
                     why.s ? why.s : "");
      }
      free(why.s);
   }
   bson_destroy(cases);
   print_message("%s: %d cases, %d passed, %d failed\n", base, n, n - failed,
                 failed);
   if (n == 0) {
      fail_msg("%s holds no cases", base);
   }
   if (failed) {
      fail_msg("%s: %d of %d cases failed", base, failed, n);
   }
}

static int
cmp_str(const void *a, const void *b)
{
   return strcmp(*(char *const *) a, *(char *const *) b);
}

int
main(void)
{
   aspen_error_t err;
   bson_error_t berr;
   bson_t *list = bson_new_from_json(
      (const uint8_t *) "[{\"name\": \"testAtlas\", \"type\": \"atlas\", "
                        "\"uri\": \"mongodb://127.0.0.1:1\"}, "
                        "{\"name\": \"testKafka\", \"type\": \"kafka\", "
                        "\"bootstrapServers\": \"127.0.0.1:1\"}, "
                        "{\"name\": \"testKinesis\", \"type\": \"kinesis\", "
                        "\"endpoint\": \"http://127.0.0.1:1\"}, "
                        "{\"name\": \"testS3\", \"type\": \"s3\", "
                        "\"endpoint\": \"http://127.0.0.1:1\"}]",
      -1, &berr);
   if (!list || !aspen_conns_load(&g_conns, aspen_builtins_catalog(), list,
                                  NULL, NULL, &err)) {
      fprintf(stderr, "test_pipeline: cannot set up connections: %s\n",
              list ? err.message : berr.message);
      return 1;
   }
   bson_destroy(list);

   /* ASPEN_PIPELINE_CASES names another folder of case files (to try a new
    * case file without rebuilding). */
   const char *cases_dir = getenv("ASPEN_PIPELINE_CASES");
   if (!cases_dir || !*cases_dir) {
      cases_dir = CASES_SUBDIR;
   }
   DIR *dir = opendir(cases_dir);
   if (!dir) {
      fprintf(stderr, "test_pipeline: cannot open %s: %s\n", cases_dir,
              strerror(errno));
      return 1;
   }
   char **paths = NULL;
   size_t n = 0;
   struct dirent *de;
   while ((de = readdir(dir))) {
      size_t l = strlen(de->d_name);
      if (l > 5 && strcmp(de->d_name + l - 5, ".json") == 0) {
         paths = aspen_xrealloc(paths, (n + 1) * sizeof *paths);
         size_t sz = strlen(cases_dir) + l + 2;
         paths[n] = aspen_xmalloc(sz);
         snprintf(paths[n], sz, "%s/%s", cases_dir, de->d_name);
         n++;
      }
   }
   closedir(dir);
   if (n == 0) {
      fprintf(stderr, "test_pipeline: no case files in %s\n", cases_dir);
      return 1;
   }
   qsort(paths, n, sizeof *paths, cmp_str);

   /* After the case files, the tests that drive the engine directly. */
   static const struct CMUnitTest direct[] = {
      cmocka_unit_test(window_fanout),
      cmocka_unit_test(tier_state_limit),
      cmocka_unit_test(window_state_limit),
      cmocka_unit_test(window_state_autoscales),
      cmocka_unit_test(operator_counts),
      cmocka_unit_test(chain_figures),
      cmocka_unit_test(field_tables_same_results),
      cmocka_unit_test(path_slots_same_results),
      cmocka_unit_test(write_same_results),
      cmocka_unit_test(path_slots_walks_same_results),
      cmocka_unit_test(match_table_only_when_read),
      cmocka_unit_test(layout_cache_same_results),
      cmocka_unit_test(path_copy_same_results),
      cmocka_unit_test(plan_same_results),
      cmocka_unit_test(append_new_same_results),
      cmocka_unit_test(match_table_decided_at_parse),
   };
   const size_t n_direct = sizeof direct / sizeof direct[0];
   struct CMUnitTest *tests = aspen_xcalloc(n + n_direct, sizeof *tests);
   for (size_t i = 0; i < n; i++) {
      tests[i].name = strrchr(paths[i], '/') + 1;
      tests[i].test_func = run_file;
      tests[i].initial_state = paths[i];
   }
   memcpy(tests + n, direct, sizeof direct);
   int rc = _cmocka_run_group_tests("pipeline cases", tests, n + n_direct,
                                    NULL, NULL);
   free(tests);
   for (size_t i = 0; i < n; i++) {
      free(paths[i]);
   }
   free(paths);
   aspen_conns_cleanup(&g_conns);
   return rc;
}
