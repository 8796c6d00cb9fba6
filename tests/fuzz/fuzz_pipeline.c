/*
 * fuzz_pipeline.c - stream processor pipelines from arbitrary bytes: the
 * input (Extended JSON or BSON, see fuzz_common.h) is parsed as a pipeline
 * array by aspen_pipeline_parse, against a registry with an atlas and a
 * kafka connection so $merge/$emit/$source options are reached. A pipeline
 * that parses runs a few fixed documents (and its $documents literals)
 * through its stages, then lets time pass so windows close. The same input,
 * and each document element of it, is also compiled as a $match filter
 * (aspen_matcher_new) and matched against the fixed documents.
 *
 * Stages that talk to a server when a document arrives ($lookup,
 * $cachedLookup) are parsed but not run: a fuzz iteration must not block.
 */
#include "builtins.h"
#include "connectors/connections.h"
#include "connectors/source_documents.h"
#include "lang/match.h"
#include "runtime/pipeline.h"
#include "stages/window.h"
#include "fuzz_common.h"

#include <stdlib.h>

/* Pipelines whose inputs would join more windows than this in all are
 * parsed, not run (see run_pipeline). */
#define MAX_WINDOW_JOINS 200000

static aspen_conns_t g_conns;
static bson_t g_docs[4];
static bson_t g_meta;
static bool g_ready;

static void
init_once(void)
{
   if (g_ready) {
      return;
   }
   g_ready = true;
   aspen_log_set_level(ASPEN_LOG_ERROR);
   bson_t list;
   aspen_error_t err;
   fuzz_fixed_doc(
      &list,
      "[{\"name\": \"atlas\", \"type\": \"atlas\", \"uri\": "
      "\"mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1\"},"
      " {\"name\": \"kafka\", \"type\": \"kafka\", \"bootstrapServers\": "
      "\"127.0.0.1:1\"}]");
   ASPEN_ASSERT(aspen_conns_load(&g_conns, aspen_builtins_catalog(), &list,
                                 NULL, NULL, &err));
   bson_destroy(&list);
   static const char *const docs[] = {
      "{\"_id\": 1, \"a\": 5, \"b\": \"x\", \"c\": [1, 2, {\"d\": null}],"
      " \"t\": {\"$date\": \"2024-01-01T00:00:00Z\"}, \"n\": {\"m\": 1.5}}",
      "{\"_id\": 2, \"a\": [3, 7], \"b\": {\"$numberDecimal\": \"2.5\"},"
      " \"t\": {\"$date\": \"2024-01-01T00:00:05Z\"}, \"s\": \"hello world\"}",
      "{\"_id\": {\"$oid\": \"65a1b2c3d4e5f60718293a4b\"}, \"a\": null,"
      " \"t\": {\"$date\": \"2024-01-01T00:01:00Z\"}, \"arr\": [],"
      " \"bin\": {\"$binary\": {\"base64\": \"AAEC\", \"subType\": \"00\"}}}",
      "{}",
   };
   for (size_t i = 0; i < 4; i++) {
      fuzz_fixed_doc(&g_docs[i], docs[i]);
   }
   fuzz_fixed_doc(&g_meta, "{\"source\": {\"type\": \"generated\", \"ts\": "
                           "{\"$date\": \"2024-01-01T00:00:00Z\"}}}");
}

/* True when a key anywhere in `doc` names a stage that does I/O on push. */
static bool
has_io_stage(const bson_t *doc, int depth)
{
   bson_iter_t it;
   if (depth > 100 || !bson_iter_init(&it, doc)) {
      return depth > 100;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "$lookup") == 0 || strcmp(k, "$cachedLookup") == 0) {
         return true;
      }
      bson_t sub;
      if (aspen_bson_view(&it, &sub) && has_io_stage(&sub, depth + 1)) {
         return true;
      }
   }
   return false;
}

typedef struct {
   size_t out, dlq;
} counts_t;

static void
on_output(void *arg, const aspen_sdoc_t *out)
{
   counts_t *c = arg;
   ASPEN_ASSERT(out->doc != NULL);
   c->out += out->doc->len > 0;
}

static void
on_dlq(void *arg, const aspen_sdoc_t *in, const char *op, const char *reason)
{
   counts_t *c = arg;
   ASPEN_ASSERT(in->doc != NULL && op != NULL && reason != NULL);
   c->dlq += strlen(reason) > 0;
}

static void
push_one(aspen_pipeline_t *pl, const bson_t *doc, int64_t ts)
{
   aspen_sdoc_t sd = {.doc = doc, .meta = &g_meta, .ts_ms = ts};
   pl->now_ms = ts;
   aspen_pipeline_push(pl, &sd);
}

static void
run_pipeline(const bson_t *input)
{
   aspen_error_t err;
   aspen_pipeline_t *pl =
      aspen_pipeline_parse(input, aspen_builtins_catalog(), &g_conns, true,
                           false, &err);
   if (!pl) {
      ASPEN_ASSERT(err.code != 0);
      return;
   }
   /* An event belongs to interval / hopSize hopping windows, each opened and
    * fed: the work is linear in that ratio by design (~2 us a window
    * without sanitizers), so an input asking for 160,000 windows an event
    * measures its configuration, not aspen (the quadratic lookup that once
    * made it slow is fixed; corpus: hopping-many-windows-per-event). */
   bson_iter_t it;
   int64_t n_inputs = 4;
   const bson_t *docs = aspen__source_documents_array(&pl->source);
   if (docs && bson_iter_init(&it, docs)) {
      while (n_inputs < 4 + 64 && bson_iter_next(&it)) {
         n_inputs++;
      }
   }
   bool too_wide = pl->window && aspen__window_fanout(pl->window) * n_inputs >
                                    MAX_WINDOW_JOINS;
   if (!has_io_stage(input, 0) && !too_wide) {
      counts_t c = {0, 0};
      pl->output = on_output;
      pl->dlq = on_dlq;
      pl->hook_arg = &c;
      int64_t t0 = 1704067200000; /* 2024-01-01 */
      for (int i = 0; i < 4; i++) {
         push_one(pl, &g_docs[i], t0 + i * 2500);
      }
      int64_t ts = t0 + 10000;
      if (docs && bson_iter_init(&it, docs)) {
         for (int n = 0; n < 64 && bson_iter_next(&it); n++) {
            bson_t d;
            if (BSON_ITER_HOLDS_DOCUMENT(&it) && aspen_bson_view(&it, &d)) {
               push_one(pl, &d, ts += 1000);
            }
         }
      }
      aspen_pipeline_tick(pl, ts + 3600 * 1000, 3600 * 1000);
      aspen_pipeline_tick(pl, ts + 48 * 3600 * 1000LL, 48 * 3600 * 1000LL);
   }
   aspen_pipeline_destroy(pl);
}

static void
run_filter(const bson_t *filter)
{
   aspen_matcher_t *m = NULL;
   aspen_error_t err;
   if (!aspen_matcher_new(filter, &m, &err)) {
      ASPEN_ASSERT(err.code != 0);
      return;
   }
   for (int i = 0; i < 4; i++) {
      bool matched;
      aspen_expr_ctx_t ctx = {.root = &g_docs[i], .meta = &g_meta,
                              .now_ms = 1704067200000};
      (void) aspen_matcher_match(m, &g_docs[i], i & 1 ? &ctx : NULL,
                                 &matched, &err);
   }
   aspen_matcher_destroy(m);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   if (size > FUZZ_MAX_INPUT) {
      return 0;
   }
   init_once();
   bson_t doc;
   if (fuzz_doc_from_bytes(data, size, &doc)) {
      run_pipeline(&doc);
      run_filter(&doc);
      bson_iter_t it;
      bson_iter_init(&it, &doc);
      while (bson_iter_next(&it)) {
         bson_t sub;
         if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !aspen_bson_view(&it, &sub)) {
            continue;
         }
         /* A {$match: {...}} stage: its filter, else the element. */
         bson_iter_t mi;
         if (bson_iter_init_find(&mi, &sub, "$match") &&
             BSON_ITER_HOLDS_DOCUMENT(&mi) && !aspen_bson_view(&mi, &sub)) {
            continue;
         }
         run_filter(&sub);
      }
   }
   bson_destroy(&doc);
   return 0;
}
