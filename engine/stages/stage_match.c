/*
 * stage_match.c - the $match stage: a query filter (lang/matcher.c) applied
 * to each document, which passes on unchanged (no copy) or is dropped.
 */
#include "lang/match.h"
#include "runtime/pipeline.h"
#include "stages/match.h"

#include <string.h>

typedef struct {
   bson_t filter; /* owned: the matcher keeps views into it */
   aspen_matcher_t *m;
   aspen_matcher_plan_t *plan; /* the matcher's per-layout plan (match_push) */
   aspen_fields_t tab; /* the input's field table (match_push) */
   aspen_fields_layout_t lay; /* the last input's keys (tab.layout) */
   /* Whether the stage after it reads a table (a shaping stage): decided
    * when the stage is parsed, from the name of the one after it. Without
    * one the matcher reads its paths by raw scans, and no table is made. */
   bool next_reads;
   bool has_expr; /* the filter has $expr: its context is made */
} match_t;

static void
match_destroy(aspen_stage_t *st)
{
   match_t *m = st->state;
   if (m) {
      aspen_matcher_plan_destroy(m->plan);
      aspen_matcher_destroy(m->m);
      bson_destroy(&m->filter);
      bson_free(m);
      st->state = NULL;
   }
}

/* True if a stage named `name` (may be NULL) reads its input's field table
 * (lang/fields.h): the shaping stages ($match makes its own when it needs
 * one). */
static bool
reads_table(const char *name)
{
   static const char *const readers[] = {"$project", "$addFields", "$set",
                                         "$unset"};
   for (size_t i = 0; name && i < sizeof readers / sizeof readers[0]; i++) {
      if (strcmp(name, readers[i]) == 0) {
         return true;
      }
   }
   return false;
}

static bool
match_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "the match filter must be an expression in an object");
      return false;
   }
   match_t *m = BSON_ALIGNED_ALLOC0(match_t); /* bson_t: 128-aligned */
   uint32_t len;
   const uint8_t *data;
   bson_t f;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&f, data, len);
   bson_copy_to(&f, &m->filter);
   st->state = m;
   m->next_reads = reads_table(pc->next_stage);
   if (!aspen_matcher_new(&m->filter, &m->m, err)) {
      match_destroy(st);
      return false;
   }
   m->plan = aspen_matcher_plan_new(m->m);
   m->has_expr = aspen_matcher_has_expr(m->m);
   return true;
}

static bool
match_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   match_t *m = st->state;
   bool matched = false;
   /* The input's field table, found once when the stage after reads it
    * too: the matcher's paths and that stage read fields through it. The
    * matcher is given a table only if it describes the document. */
   aspen_sdoc_t next = *in;
   const aspen_fields_t *tab = in->fields;
   if (!tab || !aspen_fields_covers(tab, in->doc)) { /* no call for none */
      tab = NULL;
      if (m->next_reads) {
         next.fields = tab = aspen_fields_scan_layout(&m->tab, in->doc, &m->lay)
                                ? &m->tab
                                : NULL;
      }
   }
   /* An expression context only for a filter with $expr. */
   aspen_expr_ctx_t ctx, *cp = NULL;
   if (m->has_expr) {
      aspen_stage_expr_ctx(st, in, &ctx);
      ctx.fields = tab;
      cp = &ctx;
   }
   if (!aspen_matcher_match_plan(m->m, m->plan, in->doc, tab, cp, &matched,
                                 err)) {
      return false;
   }
   if (matched) {
      aspen_stage_emit(st, &next); /* the same document: no copy */
   }
   return true;
}

/*
 * True if the $match stage `st` makes its input's field table for the stage
 * after it (decided when it was parsed). Any thread, after parsing.
 */
bool
aspen__match_makes_table(const aspen_stage_t *st)
{
   const match_t *m = st->state;
   return m && m->next_reads;
}

const aspen_stage_ops_t aspen_stage_match_ops = {
   .name = "$match",
   .operator_name = "MatchOperator",
   .per_document = true,
   .parse = match_parse,
   .push = match_push,
   .destroy = match_destroy,
};
