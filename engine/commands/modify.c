/*
 * modify.c - modifyStreamProcessor: a stopped processor gets a new
 * pipeline, options or name. ASP's rules decide whether the new pipeline
 * can resume from the old one's checkpoint
 * (../shared/spec/asp-semantics.md §8.1); the new definition replaces the
 * old only once it is saved.
 */
#include "commands/commands.h"

#include <string.h>

/* Finds the window stage of pipeline `pl`: its name ("$tumblingWindow")
 * and a view of its argument. NULL when there is none. */
static const char *
window_of(const bson_t *pl, bson_t *spec)
{
   bson_iter_t it, st;
   bson_iter_init(&it, pl);
   while (bson_iter_next(&it)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &st) ||
          !bson_iter_next(&st)) {
         continue;
      }
      const char *k = bson_iter_key(&st);
      if ((strcmp(k, "$tumblingWindow") == 0 ||
           strcmp(k, "$hoppingWindow") == 0 ||
           strcmp(k, "$sessionWindow") == 0) &&
          BSON_ITER_HOLDS_DOCUMENT(&st)) {
         uint32_t len;
         const uint8_t *data;
         bson_iter_document(&st, &len, &data);
         if (bson_init_static(spec, data, len)) {
            return k;
         }
      }
   }
   return NULL;
}

/* True when field `key` has the same value (or is missing) in both. */
static bool
same_field(const bson_t *a, const bson_t *b, const char *key)
{
   bson_iter_t ia, ib;
   bool ha = bson_iter_init_find(&ia, a, key);
   bool hb = bson_iter_init_find(&ib, b, key);
   if (!ha || !hb) {
      return ha == hb;
   }
   const bson_value_t *va = bson_iter_value(&ia);
   const bson_value_t *vb = bson_iter_value(&ib);
   bson_t da = BSON_INITIALIZER, db = BSON_INITIALIZER;
   bson_append_value(&da, "", 0, va);
   bson_append_value(&db, "", 0, vb);
   bool same = bson_equal(&da, &db);
   bson_destroy(&da);
   bson_destroy(&db);
   return same;
}

/* True when a window's inner pipeline has a $group or a $sort. */
static bool
has_blocking_stage(const bson_t *spec)
{
   bson_iter_t it, arr, st;
   if (!bson_iter_init_find(&it, spec, "pipeline") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &arr)) {
      return false;
   }
   while (bson_iter_next(&arr)) {
      if (BSON_ITER_HOLDS_DOCUMENT(&arr) && bson_iter_recurse(&arr, &st) &&
          bson_iter_next(&st) &&
          (strcmp(bson_iter_key(&st), "$group") == 0 ||
           strcmp(bson_iter_key(&st), "$sort") == 0)) {
         return true;
      }
   }
   return false;
}

/* ASP's rules for modifying a processor's pipeline while keeping its
 * checkpoint (../shared/spec/asp-semantics.md §8.1): the new pipeline must
 * replay the old one's source positions into the same kind of windows.
 * Returns the reason (the tail of ASP's message) when `new_pl` needs
 * resumeFromCheckpoint: false, NULL when it does not. */
static const char *
modify_needs_fresh_start(const bson_t *old_pl, const bson_t *new_pl)
{
   if (bson_equal(old_pl, new_pl)) {
      return NULL;
   }
   bson_iter_t oi, ni;
   if (!bson_iter_init_find(&oi, old_pl, "0") ||
       !bson_iter_init_find(&ni, new_pl, "0") || !same_field(old_pl, new_pl, "0")) {
      return "modify a stream processor's $source stage";
   }
   bson_t ow, nw;
   const char *okind = window_of(old_pl, &ow);
   const char *nkind = window_of(new_pl, &nw);
   if (!okind) {
      return NULL;
   }
   if (!nkind) {
      return "remove a window from a stream processor";
   }
   if (strcmp(okind, nkind) != 0) {
      return "change a stream processor's window type";
   }
   if (strcmp(okind, "$sessionWindow") == 0) {
      return "modify a processor with a window that is not a tumbling or "
             "hopping window";
   }
   if (!same_field(&ow, &nw, "interval")) {
      return "change a window stage's interval";
   }
   if (!same_field(&ow, &nw, "allowedLateness")) {
      return "change a window stage's allowedLateness";
   }
   if (!same_field(&ow, &nw, "hopSize")) {
      return "change a window stage's hopSize";
   }
   if (!has_blocking_stage(&ow) || !has_blocking_stage(&nw)) {
      return "modify a processor that has a window without a blocking stage";
   }
   return NULL;
}

bool
aspen__cmd_modify(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                  void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   /* mongosh spreads modify's options into the command, so the options
    * (ASP's dlq and tier, aspen's virtualClock and exactlyOnce) come at
    * the top level as well as under `options`. */
   static const char *const allowed[] = {
      "pipeline", "resumeFromCheckpoint", "dlq", "name", "tier",
      "autoscaling", "virtualClock", "exactlyOnce", "options", NULL};
   aspen_proc_t *p =
      aspen__cmd_proc_arg(ctx, cmd, "modifyStreamProcessor", allowed, reply);
   if (!p) {
      return true;
   }
   const char *name = aspen_proc_name(p);
   const bson_t *old_pipeline = aspen_proc_pipeline(p);
   const bson_t *old_options = aspen_proc_options(p);
   aspen__cmd_reap(ctx, p);
   if (aspen_proc_is_running(p)) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' must be stopped before it is "
                        "modified",
                        name);
      return true;
   }
   bson_iter_t it;
   bson_t pipeline;
   bool new_pipeline = false;
   if (bson_iter_init_find(&it, cmd, "pipeline")) {
      if (!aspen__cmd_get_array(cmd, "pipeline", &pipeline, true,
                                "modifyStreamProcessor", reply)) {
         return true;
      }
      new_pipeline = true;
   }
   bool resume;
   if (!aspen__cmd_resume_arg(cmd, "modifyStreamProcessor", &resume, reply)) {
      return true;
   }
   const char *why = new_pipeline && resume
                        ? modify_needs_fresh_start(old_pipeline, &pipeline)
                        : NULL;
   if (why) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "resumeFromCheckpoint must be false to %s", why);
      return true;
   }
   /* New options: the old ones, with dlq/tier/autoscaling replaced when
    * given. */
   bson_t opts = BSON_INITIALIZER;
   bson_copy_to_excluding_noinit(old_options, &opts, "dlq", "tier",
                                 "autoscaling", NULL);
   bson_t given = BSON_INITIALIZER;
   bool has_opts_doc;
   bson_t options_doc;
   if (!aspen__cmd_get_options_doc(cmd, "modifyStreamProcessor", &options_doc,
                                   &has_opts_doc, reply)) {
      bson_destroy(&opts);
      bson_destroy(&given);
      return true;
   }
   bson_concat(&given, &options_doc);
   if (bson_iter_init_find(&it, cmd, "dlq")) {
      bson_append_iter(&given, NULL, 0, &it);
   }
   static const char *const top_level[] = {"tier", "autoscaling",
                                           "virtualClock", "exactlyOnce"};
   for (size_t i = 0; i < sizeof top_level / sizeof *top_level; i++) {
      if (bson_iter_init_find(&it, cmd, top_level[i])) {
         bson_append_iter(&given, NULL, 0, &it);
      }
   }
   bson_t accepted = BSON_INITIALIZER;
   if (!aspen__cmd_check_options(ctx, &given, &accepted, reply)) {
      bson_destroy(&opts);
      bson_destroy(&given);
      bson_destroy(&accepted);
      return true;
   }
   /* dlq given but empty ({}) removes it; not given keeps the old one. */
   bson_iter_t oi;
   if (!bson_has_field(&given, "dlq") &&
       bson_iter_init_find(&oi, old_options, "dlq")) {
      bson_append_iter(&opts, NULL, 0, &oi);
   }
   static const char *const kept_unless_given[] = {"tier", "autoscaling"};
   for (size_t i = 0; i < 2; i++) {
      const char *k = kept_unless_given[i];
      if (!bson_has_field(&given, k) &&
          bson_iter_init_find(&oi, old_options, k)) {
         bson_append_iter(&opts, NULL, 0, &oi);
      }
   }
   /* Given aspen options (virtualClock, exactlyOnce) replace the old. */
   bson_t kept = BSON_INITIALIZER;
   bson_iter_init(&oi, &opts);
   while (bson_iter_next(&oi)) {
      if (!bson_has_field(&accepted, bson_iter_key(&oi))) {
         bson_append_iter(&kept, NULL, 0, &oi);
      }
   }
   bson_concat(&kept, &accepted);
   bson_destroy(&opts);
   bson_steal(&opts, &kept);
   bson_destroy(&given);
   bson_destroy(&accepted);

   const char *new_name = NULL;
   if (bson_iter_init_find(&it, cmd, "name")) {
      if (!BSON_ITER_HOLDS_UTF8(&it) || !*bson_iter_utf8(&it, NULL)) {
         aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                           "BSON field 'modifyStreamProcessor.name' must be a "
                           "non-empty string");
         bson_destroy(&opts);
         return true;
      }
      uint32_t nlen;
      new_name = bson_iter_utf8(&it, &nlen);
      if (strlen(new_name) != nlen) {
         aspen_reply_error(reply, ASPEN_ERR_BadValue,
                           "stream processor name must not contain a NUL "
                           "character");
         bson_destroy(&opts);
         return true;
      }
      if (strcmp(new_name, name) != 0 &&
          !aspen__cmd_check_new_name(new_name, "modifyStreamProcessor.name",
                                     reply)) {
         bson_destroy(&opts);
         return true;
      }
      if (strcmp(new_name, name) != 0 &&
          aspen_registry_find(ctx->reg, new_name)) {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorAlreadyExists,
                           "stream processor '%s' already exists", new_name);
         bson_destroy(&opts);
         return true;
      }
   }
   if (!aspen__cmd_pipeline_check(ctx, new_pipeline ? &pipeline : old_pipeline,
                                  &opts, reply)) {
      bson_destroy(&opts);
      return true;
   }
   /* The new definition replaces the old one only once it is saved. */
   aspen_error_t err;
   if (!aspen_registry_redefine(ctx->reg, p, new_name,
                                new_pipeline ? &pipeline : NULL, &opts,
                                &err)) {
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   if (!resume) {
      /* Only the summary stats survive; the next start reads afresh. */
      aspen_registry_drop_checkpoints(ctx->reg, p);
   }
   aspen_reply_ok(reply);
   return true;
}
