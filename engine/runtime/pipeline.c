/*
 * pipeline.c - parsing and validating a processor's pipeline with ASP's
 * rules, and pushing documents down the parsed stage chain.
 *
 * The rules (../shared/spec/asp-semantics.md §1): a non-empty array of
 * one-key stage documents; $source first and only there; a window stage at
 * most once; window-only stages ($group, $sort, $limit, $count) only inside
 * a window and main-only stages never inside one; $merge/$emit only last, and
 * required last unless the processor is ephemeral (sp.process); anything
 * else is an unsupported stage. Every error is code 420
 * StreamProcessorInvalidOptions with ASP's reason, and aspen adds where in
 * the pipeline it is ("(at pipeline[2].$merge.into)").
 *
 * Stages, sources and sinks come from the catalog in the parse context
 * (runtime/catalog.h): a stage by its name, a $source through the row of
 * the connection it names (its options through that source's hooks), the
 * sink through the $merge or $emit stage's parser. Nothing here names one.
 */
#include "base/not_yet.h"
#include "base/tier.h"
#include "runtime/catalog.h"
#include "runtime/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void main_terminal(void *arg, const aspen_sdoc_t *doc);

static uint64_t
clock_ns(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_MONOTONIC, &ts);
   return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* ---- $source ------------------------------------------------------------ */

static bool
parse_ts_field_name(aspen_source_spec_t *src, const bson_iter_t *it,
                    aspen_parse_ctx_t *pc, const char *key, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it)) {
      aspen_parse_error(err, pc, key, "'%s' must be a string", key);
      return false;
   }
   const char *s = bson_iter_utf8(it, NULL);
   if (!*s) {
      aspen_parse_error(err, pc, key, "'%s' cannot be empty", key);
      return false;
   }
   if (strchr(s, '.')) {
      aspen_parse_error(err, pc, key, "'tsFieldOverride' cannot be a dotted "
                                      "path");
      return false;
   }
   if (strlen(s) >= sizeof src->ts_field) {
      aspen_parse_error(err, pc, key, "'%s' is too long", key);
      return false;
   }
   snprintf(src->ts_field, sizeof src->ts_field, "%s", s);
   return true;
}

static bool
parse_source(aspen_pipeline_t *pl, const bson_iter_t *arg,
             aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   aspen_source_spec_t *src = &pl->source;
   snprintf(src->ts_field, sizeof src->ts_field, "_ts");
   bson_init(&src->spec);
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_parse_error(err, pc, "$source", "$source must be an object");
      return false;
   }
   if (!aspen_parse_no_duplicates(arg, pc, "$source", err)) {
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(arg, &len, &data);
   bson_t spec;
   (void) bson_init_static(&spec, data, len);
   bson_destroy(&src->spec);
   bson_copy_to(&spec, &src->spec);

   bson_iter_t it;
   const char *conn_name = NULL;
   bool has_documents = false;
   bson_iter_init(&it, &src->spec);
   /* First pass: what kind of source is this? */
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "connectionName") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            aspen_parse_error(err, pc, "$source.connectionName",
                              "connectionName must be a string");
            return false;
         }
         conn_name = bson_iter_utf8(&it, NULL);
      } else if (strcmp(k, "documents") == 0) {
         has_documents = true;
      }
   }
   if (conn_name && has_documents) {
      aspen_parse_error(err, pc, "$source",
                        "$source cannot have both 'connectionName' and "
                        "'documents'");
      return false;
   }
   if (!conn_name && !has_documents) {
      aspen_parse_error(err, pc, "$source",
                        "$source must specify a 'connectionName' or "
                        "'documents'");
      return false;
   }
   if (conn_name) {
      src->conn = aspen_conns_find(pc->conns, conn_name);
      if (!src->conn) {
         aspen_parse_error(err, pc, "$source.connectionName",
                           "Unknown connection name %s", conn_name);
         return false;
      }
      src->ops = src->conn->kind->source;
      if (!src->ops) {
         aspen_parse_error(err, pc, "$source.connectionName",
                           "Connection %s of type %s cannot be a $source",
                           conn_name, src->conn->kind->type_name);
         return false;
      }
   } else {
      src->ops = pc->catalog->documents;
   }

   /* Second pass: options, strictly per source kind (its parse hooks). */
   bson_iter_init(&it, &src->spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      char opt[96];
      snprintf(opt, sizeof opt, "$source.%s", k);
      if (strcmp(k, "connectionName") == 0) {
         continue;
      }
      if (strcmp(k, "timeField") == 0) {
         if (!aspen_expr_parse(&it, NULL, &src->time_field, err)) {
            aspen_parse_wrap_error(err, pc);
            return false;
         }
         continue;
      }
      if (strcmp(k, "tsFieldName") == 0 || strcmp(k, "tsFieldOverride") == 0) {
         if (!parse_ts_field_name(src, &it, pc, opt, err)) {
            return false;
         }
         continue;
      }
      if (src->ops->parse_option) {
         bool handled = false;
         if (!src->ops->parse_option(src, &it, pc, &handled, err)) {
            return false;
         }
         if (handled) {
            continue;
         }
      }
      /* Options aspen knows belong to sources it does not run yet are still
       * refused by name, so a typo is never silently accepted. */
      if (aspen_not_yet_parse_error("$source", k, pc, opt, err)) {
         return false;
      }
      aspen_parse_unknown_field(err, pc, opt, "$source", k);
      return false;
   }
   return !src->ops->parse_done || src->ops->parse_done(src, pc, err);
}

/* ---- stages ------------------------------------------------------------- */

/* The name of the stage after the one `stage_it` is on in its array (the
 * first key of the next element), NULL if there is none or it is not a
 * document with a key: what a stage's parser sees as pc->next_stage. */
static const char *
next_stage_name(const bson_iter_t *stage_it)
{
   bson_iter_t next = *stage_it, sub;
   if (!bson_iter_next(&next) || !BSON_ITER_HOLDS_DOCUMENT(&next) ||
       !bson_iter_recurse(&next, &sub) || !bson_iter_next(&sub)) {
      return NULL;
   }
   return bson_iter_key(&sub);
}

static bool
parse_one_stage(aspen_pipeline_t *pl, const bson_iter_t *stage_it,
                aspen_parse_ctx_t *pc, aspen_stage_t *st, bool *is_sink,
                aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(stage_it)) {
      aspen_parse_error(err, pc, NULL,
                        "A pipeline stage specification object must contain "
                        "exactly one field.");
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t stage;
   bson_iter_document(stage_it, &len, &data);
   (void) bson_init_static(&stage, data, len);
   if (bson_count_keys(&stage) != 1) {
      aspen_parse_error(err, pc, NULL,
                        "A pipeline stage specification object must contain "
                        "exactly one field.");
      return false;
   }
   bson_iter_t it;
   bson_iter_init(&it, &stage);
   bson_iter_next(&it);
   const char *name = bson_iter_key(&it);
   const aspen_stage_def_t *def = aspen_catalog_stage(pc->catalog, name);
   aspen_error_t ny;
   if (!def && aspen_not_yet_error("stage", name, name, 0, &ny)) {
      aspen_parse_error(err, pc, NULL, "%s", ny.message);
      return false;
   }
   if (!def) {
      aspen_parse_error(err, pc, NULL, "Unsupported stage: %s", name);
      return false;
   }
   const aspen_stage_ops_t *ops = def->ops;
   unsigned place = def->place;
   if (pc->in_window && !(place & ASPEN_PLACE_WINDOW)) {
      aspen_parse_error(err, pc, NULL,
                        "%s stage is not permitted in the inner pipeline of a "
                        "window stage",
                        name);
      return false;
   }
   if (!pc->in_window && !(place & (ASPEN_PLACE_MAIN | ASPEN_PLACE_SINK))) {
      aspen_parse_error(err, pc, NULL,
                        "%s stage is only permitted in the inner pipeline of a "
                        "window stage",
                        name);
      return false;
   }
   if ((place & ASPEN_SPEC_OPTIONS) &&
       !aspen_parse_no_duplicates(&it, pc, name, err)) {
      return false;
   }
   *is_sink = (place & ASPEN_PLACE_SINK) != 0;
   st->ops = ops;
   st->pl = pl;
   st->index = pc->index;
   st->state = NULL;
   char base[128];
   snprintf(base, sizeof base, "%s", pc->path);
   snprintf(pc->path, sizeof pc->path, "%s.%s", base, name);
   pc->next_stage = next_stage_name(stage_it);
   bool ok = ops->parse(st, &it, pc, err);
   pc->next_stage = NULL;
   snprintf(pc->path, sizeof pc->path, "%s", base);
   if (!ok) {
      aspen_parse_wrap_error(err, pc);
   }
   return ok;
}

bool
aspen_pipeline_parse_stages(aspen_pipeline_t *pl, const bson_t *arr,
                            aspen_parse_ctx_t *pc, aspen_stage_t **out,
                            int *n_out, aspen_error_t *err)
{
   int n = (int) bson_count_keys(arr);
   aspen_stage_t *stages = aspen_xcalloc((size_t) (n ? n : 1), sizeof *stages);
   int count = 0;
   bson_iter_t it;
   char parent[128];
   snprintf(parent, sizeof parent, "%s", pc->path);
   bson_iter_init(&it, arr);
   while (bson_iter_next(&it)) {
      bool is_sink = false;
      pc->index = count;
      snprintf(pc->path, sizeof pc->path, "%s.pipeline[%d]", parent, count);
      if (!parse_one_stage(pl, &it, pc, &stages[count], &is_sink, err)) {
         snprintf(pc->path, sizeof pc->path, "%s", parent);
         for (int i = 0; i < count; i++) {
            if (stages[i].ops->destroy) {
               stages[i].ops->destroy(&stages[i]);
            }
         }
         free(stages);
         return false;
      }
      count++;
   }
   snprintf(pc->path, sizeof pc->path, "%s", parent);
   *out = stages;
   *n_out = count;
   return true;
}

aspen_pipeline_t *
aspen_pipeline_parse(const bson_t *pipeline, const aspen_catalog_t *catalog,
                     const aspen_conns_t *conns, bool ephemeral, bool has_dlq,
                     aspen_error_t *err)
{
   aspen_pipeline_t *pl = aspen_xcalloc(1, sizeof *pl);
   atomic_store(&pl->watermark_ms, INT64_MIN);
   atomic_store(&pl->open_min_ms, INT64_MIN);
   atomic_store(&pl->open_max_ms, INT64_MIN);
   pthread_mutex_init(&pl->pub_mu, NULL);
   bson_copy_to(pipeline, &pl->def);
   bson_init(&pl->sink_spec);
   bson_init(&pl->source.spec);
   aspen_parse_ctx_t pc = {.catalog = catalog,
                           .conns = conns,
                           .ephemeral = ephemeral,
                           .has_dlq = has_dlq};

   int n = (int) bson_count_keys(&pl->def);
   if (n == 0) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      ASPEN_PARSE_PREFIX
                      "Pipeline must have at least one stage");
      goto fail;
   }
   pl->stages = aspen_xcalloc((size_t) n, sizeof *pl->stages);

   bson_iter_t it;
   int idx = 0;
   bool seen_sink = false;
   bson_iter_init(&it, &pl->def);
   while (bson_iter_next(&it)) {
      pc.index = idx;
      snprintf(pc.path, sizeof pc.path, "pipeline[%d]", idx);
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_parse_error(err, &pc, NULL,
                           "A pipeline stage specification object must "
                           "contain exactly one field.");
         goto fail;
      }
      uint32_t len;
      const uint8_t *data;
      bson_t stage;
      bson_iter_document(&it, &len, &data);
      (void) bson_init_static(&stage, data, len);
      if (bson_count_keys(&stage) != 1) {
         aspen_parse_error(err, &pc, NULL,
                           "A pipeline stage specification object must "
                           "contain exactly one field.");
         goto fail;
      }
      bson_iter_t si;
      bson_iter_init(&si, &stage);
      bson_iter_next(&si);
      const char *name = bson_iter_key(&si);
      if (idx == 0) {
         if (strcmp(name, "$source") != 0) {
            aspen_parse_error(err, &pc, NULL,
                              "First stage must be $source, found: %s", name);
            goto fail;
         }
         snprintf(pc.path, sizeof pc.path, "pipeline[0]");
         if (!parse_source(pl, &si, &pc, err)) {
            goto fail;
         }
         idx++;
         continue;
      }
      if (seen_sink) {
         aspen_parse_error(err, &pc, NULL,
                           "No stages are allowed after a $merge or $emit "
                           "stage.");
         goto fail;
      }
      bool is_sink = false;
      aspen_stage_t *st = &pl->stages[pl->n_stages];
      if (!parse_one_stage(pl, &it, &pc, st, &is_sink, err)) {
         goto fail;
      }
      st->index = pl->n_stages; /* position in the chain, after $source */
      if (is_sink) {
         seen_sink = true;
         /* The sink lives outside the stage chain. */
         bson_destroy(&pl->sink_spec);
         if (BSON_ITER_HOLDS_DOCUMENT(&si)) {
            bson_iter_document(&si, &len, &data);
            bson_t sink;
            (void) bson_init_static(&sink, data, len);
            bson_copy_to(&sink, &pl->sink_spec);
         } else {
            bson_init(&pl->sink_spec);
         }
         if (st->ops->destroy) {
            st->ops->destroy(st);
         }
         memset(st, 0, sizeof *st);
      } else {
         if (strstr(name, "Window")) {
            if (pl->has_window) {
               aspen_parse_error(err, &pc, NULL,
                                 "Only one window stage is allowed in a "
                                 "pipeline.");
               pl->n_stages++;
               goto fail;
            }
            pl->has_window = true;
         }
         pl->n_stages++;
      }
      idx++;
   }
   pl->main.stages = pl->stages;
   pl->main.n = pl->n_stages;
   pl->main.terminal = main_terminal;
   pl->main.arg = pl;
   pl->main.counted = pl;
   for (int i = 0; i < pl->n_stages; i++) {
      pl->stages[i].chain = &pl->main;
      pl->stages[i].index = i;
      if (pl->stages[i].ops->tick) {
         pl->window = &pl->stages[i];
      }
   }
   const aspen_stage_def_t *last =
      pl->n_stages > 0
         ? aspen_catalog_stage(catalog, pl->stages[pl->n_stages - 1].ops->name)
         : NULL;
   if (!seen_sink && !ephemeral &&
       !(last && (last->place & ASPEN_PLACE_TERMINAL))) {
      snprintf(pc.path, sizeof pc.path, "pipeline[%d]", idx - 1);
      aspen_parse_error(err, &pc, NULL,
                        "The last stage in the pipeline must be $merge or "
                        "$emit.");
      goto fail;
   }
   pl->pub = aspen_xcalloc((size_t) pl->n_stages + 2, sizeof *pl->pub);
   return pl;

fail:
   aspen_pipeline_destroy(pl);
   return NULL;
}

void
aspen_pipeline_destroy(aspen_pipeline_t *pl)
{
   if (!pl) {
      return;
   }
   for (int i = 0; i < pl->n_stages; i++) {
      if (pl->stages[i].ops && pl->stages[i].ops->destroy) {
         pl->stages[i].ops->destroy(&pl->stages[i]);
      }
   }
   free(pl->stages);
   aspen_expr_destroy(pl->source.time_field);
   if (pl->source.ops && pl->source.ops->spec_destroy) {
      pl->source.ops->spec_destroy(pl->source.opts);
   }
   bson_destroy(&pl->source.spec);
   bson_destroy(&pl->sink_spec);
   bson_destroy(&pl->def);
   free(pl->pub);
   pthread_mutex_destroy(&pl->pub_mu);
   free(pl);
}

/* ---- running ------------------------------------------------------------ */

/* A hop from one stage to the next (aspen_stage_emit) is on every
 * document's path, once per stage: what it decides per pipeline is decided
 * when the pipeline is parsed (aspen_chain_t.counted: the main chain counts
 * its stages' figures and ends at the pipeline's output), the sampled
 * timing and the too-large document leave it for their own functions, and
 * the emitting stage's output goes straight into the next stage's push,
 * one call per hop. */

/* A stage made `doc` (len bytes) past mongod's limit: it goes no further
 * (each stage adding up to 16 MB would otherwise grow it without bound),
 * and counts as `st`'s DLQ, not as its output. */
static __attribute__((noinline, cold)) void
too_large(aspen_stage_t *st, const aspen_sdoc_t *doc, uint32_t len)
{
   aspen_error_t err;
   aspen_error_set(&err, ASPEN_ERR_BSONObjectTooLarge,
                   "BSONObj size: %u (0x%X) is invalid. Size must be "
                   "between 0 and %u(16MB)",
                   (unsigned) len, (unsigned) len,
                   (unsigned) ASPEN_MAX_OBJECT_LEN);
   aspen_stage_dead_letter(st, doc, &err);
}

/* Stage `st`'s push of a sampled input (pl->timing): its own time is its
 * time less that of the stages (and the sink) it handed documents to. */
static __attribute__((noinline)) bool
push_timed(aspen_pipeline_t *pl, aspen_stage_t *st, const aspen_sdoc_t *doc,
           aspen_error_t *err)
{
   uint64_t outer = pl->child_ns;
   pl->child_ns = 0;
   uint64_t t0 = clock_ns();
   bool ok = st->ops->push(st, doc, err);
   uint64_t incl = clock_ns() - t0;
   uint64_t own = incl > pl->child_ns ? incl - pl->child_ns : 0;
   st->counts.exec_ns += own * ASPEN_PIPELINE_TIMING_EVERY;
   pl->child_ns = outer + incl;
   return ok;
}

/* Hands `doc` (len bytes) to stage `idx` of `chain`, which is `st`
 * (chain->stages + idx), or to its terminal when idx == chain->n (st
 * unused); `pl` is chain->counted. */
static inline __attribute__((always_inline)) void
enter(aspen_chain_t *chain, aspen_pipeline_t *pl, int idx, aspen_stage_t *st,
      const aspen_sdoc_t *doc, uint32_t len)
{
   if (idx >= chain->n) {
      if (pl) {
         pl->output(pl->hook_arg, doc); /* main_terminal's call */
      } else {
         chain->terminal(chain->arg, doc);
      }
      return;
   }
   aspen_error_t err;
   bool ok;
   if (pl) {
      st->counts.in_count++;
      st->counts.in_size += len;
      if (pl->timing) {
         ok = push_timed(pl, st, doc, &err);
         goto pushed;
      }
   }
   ok = st->ops->push(st, doc, &err);
pushed:
   if (!ok) {
      aspen_stage_dead_letter(st, doc, &err);
   }
}

/* The size a document counts for in the figures (0 for none). */
static inline uint32_t
doc_len(const aspen_sdoc_t *doc)
{
   return doc->doc ? doc->doc->len : 0;
}

void
aspen_chain_push(aspen_chain_t *chain, int idx, const aspen_sdoc_t *doc)
{
   uint32_t len = doc_len(doc);
   aspen_pipeline_t *pl = chain->counted;
   if (idx > 0) {
      aspen_stage_t *from = &chain->stages[idx - 1];
      if (len > ASPEN_MAX_OBJECT_LEN) {
         too_large(from, doc, len);
         return;
      }
      if (pl) {
         from->counts.out_count++;
         from->counts.out_size += len;
      }
   }
   enter(chain, pl, idx, idx < chain->n ? chain->stages + idx : NULL, doc,
         len);
}

void
aspen_stage_emit(aspen_stage_t *st, const aspen_sdoc_t *out)
{
   /* aspen_chain_push(st->chain, st->index + 1, out), the stage known: a
    * chain's stages are one array, st at st->index, the next one after it
    * (aspen_pipeline_parse, window.c, stage_https.c lay them out so). */
   aspen_chain_t *chain = st->chain;
   uint32_t len = doc_len(out);
   if (len > ASPEN_MAX_OBJECT_LEN) {
      too_large(st, out, len);
      return;
   }
   aspen_pipeline_t *pl = chain->counted;
   if (pl) {
      st->counts.out_count++;
      st->counts.out_size += len;
   }
   enter(chain, pl, st->index + 1, st + 1, out, len);
}

void
aspen_stage_dead_letter(aspen_stage_t *st, const aspen_sdoc_t *in,
                        const aspen_error_t *err)
{
   aspen_pipeline_t *pl = st->pl;
   /* A window's inner stage counts in its window. */
   aspen_stage_t *counted = st->chain == &pl->main ? st : pl->window;
   if (counted) {
      counted->counts.dlq_count++;
      counted->counts.dlq_size += in->doc ? in->doc->len : 0;
   }
   char reason[ASPEN_ERROR_MSG_MAX + 128];
   snprintf(reason, sizeof reason,
            "Failed to process input document in %s with error: %s",
            st->ops->operator_name, err->message);
   pl->dlq(pl->hook_arg, in, st->ops->operator_name, reason);
}

void
aspen_pipeline_flush(aspen_pipeline_t *pl)
{
   for (int i = 0; i < pl->main.n; i++) {
      aspen_stage_t *st = &pl->main.stages[i];
      if (st->ops->flush) {
         st->ops->flush(st);
      }
   }
}

uint64_t
aspen_pipeline_replay_seq(const aspen_pipeline_t *pl)
{
   uint64_t min = UINT64_MAX;
   for (int i = 0; i < pl->main.n; i++) {
      const aspen_stage_t *st = &pl->main.stages[i];
      if (st->ops->replay_seq) {
         uint64_t seq = st->ops->replay_seq(st);
         min = seq < min ? seq : min;
      }
   }
   return min;
}

void
aspen_pipeline_checkpoint_save(const aspen_pipeline_t *pl, bson_t *body)
{
   for (int i = 0; i < pl->main.n; i++) {
      const aspen_stage_t *st = &pl->main.stages[i];
      if (st->ops->checkpoint_save) {
         st->ops->checkpoint_save(st, body);
      }
   }
}

void
aspen_pipeline_checkpoint_restore(aspen_pipeline_t *pl, const bson_t *body,
                                  const aspen_replay_t *replay)
{
   for (int i = 0; i < pl->main.n; i++) {
      aspen_stage_t *st = &pl->main.stages[i];
      if (st->ops->checkpoint_restore) {
         st->ops->checkpoint_restore(st, body, replay);
      }
   }
}

void
aspen_pipeline_partition_assigned(aspen_pipeline_t *pl, int64_t part)
{
   for (int i = 0; i < pl->main.n; i++) {
      aspen_stage_t *st = &pl->main.stages[i];
      if (st->ops->partition_assigned) {
         st->ops->partition_assigned(st, part);
      }
   }
}

void
aspen_pipeline_drop_state(aspen_pipeline_t *pl)
{
   for (int i = 0; i < pl->main.n; i++) {
      aspen_stage_t *st = &pl->main.stages[i];
      if (st->ops->drop_state) {
         st->ops->drop_state(st);
      }
   }
}

static void
main_terminal(void *arg, const aspen_sdoc_t *doc)
{
   aspen_pipeline_t *pl = arg;
   pl->output(pl->hook_arg, doc);
}

void
aspen_pipeline_push(aspen_pipeline_t *pl, const aspen_sdoc_t *doc)
{
   if (pl->observe) {
      pl->observe(pl->window, doc);
   }
   enter(&pl->main, pl, 0, pl->main.stages, doc, doc_len(doc));
}

void
aspen__pipeline_state_update(aspen_pipeline_t *pl)
{
   uint64_t total = (uint64_t) pl->window_bytes + pl->cache_bytes;
   atomic_store(&pl->state_size, total);
   if (pl->state_limit == 0 || total < pl->state_limit || pl->fatal_code) {
      return;
   }
   /* With autoscaling, a processor out of memory moves up a tier while
    * its maxTier allows, rather than fail (ASP's autoscaling page). */
   while (total >= pl->state_limit && pl->tier_rank < pl->tier_max_rank) {
      int from = pl->tier_rank++;
      const char *to = aspen_tier_at(pl->tier_rank)->name;
      pl->state_limit = aspen__tier_state_limit(to, pl->state_limit_what,
                                                sizeof pl->state_limit_what);
      atomic_store(&pl->effective_tier, pl->tier_rank);
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", "autoscaling",
                 "a processor's state of %llu bytes reached %s's limit: "
                 "scaled up to %s",
                 (unsigned long long) total, aspen_tier_at(from)->name, to);
   }
   if (total < pl->state_limit) {
      return;
   }
   pl->fatal_code = ASPEN_ERR_StreamProcessorWorkerOutOfMemory;
   snprintf(pl->fatal, sizeof pl->fatal,
            "Worker out of memory: the processor's state (stateSize %llu "
            "bytes) reached its limit of %llu bytes (%s)",
            (unsigned long long) total,
            (unsigned long long) pl->state_limit, pl->state_limit_what);
}

uint64_t
aspen__tier_state_limit(const char *tier, char *what, size_t what_len)
{
   /* The tiers' RAM in decimal megabytes, as ASP states it (0.5 GB ...
    * 32 GB); "80 %" of 8 GB is the 6.4 GB the docs give for SP30. */
   const aspen_tier_t *t = aspen_tier_find(tier);
   if (!t) {
      return 0;
   }
   snprintf(what, what_len, "80%% of %s's %s", t->name, t->ram);
   return t->ram_mb * 1000000u / 10u * 8u;
}

void
aspen_pipeline_tick(aspen_pipeline_t *pl, int64_t now_ms, int64_t idle_ms)
{
   if (pl->window && pl->window->ops->tick) {
      pl->window->ops->tick(pl->window, now_ms, idle_ms);
   }
}

uint64_t
aspen_pipeline_clock_ns(void)
{
   return clock_ns();
}

void
aspen__pipeline_publish(aspen_pipeline_t *pl)
{
   int64_t sec = aspen_clock_now_ms() / 1000;
   pthread_mutex_lock(&pl->pub_mu);
   pl->pub[0] = pl->src_counts;
   bool cache_given = false;
   for (int i = 0; i < pl->n_stages; i++) {
      aspen_stage_t *st = &pl->stages[i];
      /* The state is the window's or the caches' (all $cachedLookup
       * caches count in the first one's figures). */
      if (st == pl->window) {
         st->counts.state_size = pl->window_bytes;
      } else if (!cache_given && st->ops->name &&
                 strcmp(st->ops->name, "$cachedLookup") == 0) {
         st->counts.state_size = pl->cache_bytes;
         cache_given = true;
      }
      if (st->counts.state_size > st->counts.max_state) {
         st->counts.max_state = st->counts.state_size;
      }
      pl->pub[1 + i] = st->counts;
   }
   pl->pub[1 + pl->n_stages] = pl->sink_counts;
   if (pl->lat.count) {
      aspen_hist_merge(&pl->lat_total, &pl->lat);
      aspen_lat_slot_t *slot =
         &pl->lat_ring[sec % ASPEN_PIPELINE_LATENCY_SECS];
      if (slot->sec != sec) {
         memset(&slot->h, 0, sizeof slot->h);
         slot->sec = sec;
      }
      aspen_hist_merge(&slot->h, &pl->lat);
   }
   pthread_mutex_unlock(&pl->pub_mu);
   if (pl->lat.count) {
      memset(&pl->lat, 0, sizeof pl->lat);
   }
}

size_t
aspen_pipeline_op_count(const aspen_pipeline_t *pl)
{
   return (size_t) pl->n_stages + 1 + (pl->sink ? 1 : 0);
}

void
aspen_pipeline_snapshot(aspen_pipeline_t *pl, aspen_op_counts_t *ops,
                        aspen_hist_t *recent, int64_t *recent_start_ms,
                        aspen_hist_t *total)
{
   int64_t now_sec = aspen_clock_now_ms() / 1000;
   int64_t oldest = INT64_MAX;
   if (recent) {
      memset(recent, 0, sizeof *recent);
   }
   pthread_mutex_lock(&pl->pub_mu);
   if (ops) {
      memcpy(ops, pl->pub, sizeof *ops * (size_t) (pl->n_stages + 1));
      if (pl->sink) {
         ops[pl->n_stages + 1] = pl->pub[pl->n_stages + 1];
      }
   }
   for (int i = 0; recent && i < ASPEN_PIPELINE_LATENCY_SECS; i++) {
      int64_t s = pl->lat_ring[i].sec;
      if (pl->lat_ring[i].h.count &&
          s > now_sec - ASPEN_PIPELINE_LATENCY_SECS && s <= now_sec) {
         aspen_hist_merge(recent, &pl->lat_ring[i].h);
         oldest = s < oldest ? s : oldest;
      }
   }
   if (total) {
      *total = pl->lat_total;
   }
   pthread_mutex_unlock(&pl->pub_mu);
   if (recent_start_ms) {
      *recent_start_ms = oldest == INT64_MAX ? 0 : oldest * 1000;
   }
}
