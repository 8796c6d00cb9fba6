/*
 * window_parse.c - the window stages' arguments ($tumblingWindow,
 * $hoppingWindow, $sessionWindow: interval, hopSize, gap, offset,
 * allowedLateness, idleTimeout, boundary, partitionBy and the inner
 * pipeline), checked with ASP's messages into the stage's aspen_window_t
 * (window_int.h), and what follows from them (aspen__window_fanout).
 */
#include "stages/window.h"
#include "stages/window_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS_PER_SECOND 1000LL
#define MAX_LATENESS_MS (30LL * 60 * 1000)

/* ---- durations ------------------------------------------------------------ */

static bool
unit_ms(const char *unit, int64_t *ms)
{
   static const struct {
      const char *name;
      int64_t ms;
   } units[] = {{"ms", 1},
                {"second", 1000},
                {"minute", 60 * 1000},
                {"hour", 60 * 60 * 1000},
                {"day", 24 * 60 * 60 * 1000}};
   for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
      if (strcmp(units[i].name, unit) == 0) {
         *ms = units[i].ms;
         return true;
      }
   }
   return false;
}

/* Parses {size, unit} (or, when zero_ok, the integer 0) into ms. `what` is
 * the option's name for messages ("interval", "allowedLateness"). */
static bool
parse_duration(const bson_iter_t *it, const char *what, bool zero_ok,
               const char *nonzero_msg, int64_t *out, aspen_error_t *err)
{
   if (zero_ok && (BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it) ||
                   BSON_ITER_HOLDS_DOUBLE(it))) {
      if (bson_iter_as_int64(it) != 0) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions, "%s",
                         nonzero_msg);
         return false;
      }
      *out = 0;
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s must be an object {size, unit}", what);
      return false;
   }
   bson_iter_t di;
   bson_iter_recurse(it, &di);
   bool has_size = false;
   int64_t size = 0, ms = 0;
   const char *unit = NULL;
   while (bson_iter_next(&di)) {
      const char *k = bson_iter_key(&di);
      if (strcmp(k, "size") == 0) {
         /* The range check before the cast: converting 1e40 to int64_t
          * is undefined (found by tests/fuzz/fuzz_pipeline). */
         if (!BSON_ITER_HOLDS_INT32(&di) && !BSON_ITER_HOLDS_INT64(&di) &&
             !(BSON_ITER_HOLDS_DOUBLE(&di) &&
               bson_iter_double(&di) >= -9.2e18 &&
               bson_iter_double(&di) <= 9.2e18 &&
               bson_iter_double(&di) == (double) (int64_t) bson_iter_double(&di))) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                            "%s.size must be an integer", what);
            return false;
         }
         size = bson_iter_as_int64(&di);
         has_size = true;
      } else if (strcmp(k, "unit") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&di)) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                            "%s.unit must be a string", what);
            return false;
         }
         unit = bson_iter_utf8(&di, NULL);
      } else {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                         "BSON field '%s.%s' is an unknown field.", what, k);
         return false;
      }
   }
   if (!has_size || !unit) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s requires both size and unit", what);
      return false;
   }
   if (!unit_ms(unit, &ms)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "Enumeration value '%s' for field '%s.unit' is not a "
                      "valid value.",
                      unit, what);
      return false;
   }
   /* Durations are milliseconds in an int64_t: refuse what overflows it. */
   if (size > INT64_MAX / ms || size < INT64_MIN / ms) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s.size %lld %s is too large", what, (long long) size,
                      unit);
      return false;
   }
   *out = size * ms;
   return true;
}

static bool window_fail(aspen_error_t *err, const char *fmt, ...)
   __attribute__((format(printf, 2, 3)));

/* A refusal with ASP's code for invalid options; always false. */
static bool
window_fail(aspen_error_t *err, const char *fmt, ...)
{
   char msg[ASPEN_ERROR_MSG_MAX];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(msg, sizeof msg, fmt, ap);
   va_end(ap);
   aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions, "%s", msg);
   return false;
}

bool
aspen__window_parse_args(aspen_stage_t *st, const bson_iter_t *arg,
                         aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   const char *name = st->ops->name;
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s must be an object", name);
      return false;
   }
   aspen_window_t *w = aspen_xcalloc(1, sizeof *w);
   st->state = w;
   w->self = st;
   w->watermark = INT64_MIN;
   w->kind = strcmp(name, "$hoppingWindow") == 0   ? W_HOPPING
             : strcmp(name, "$sessionWindow") == 0 ? W_SESSION
                                                    : W_TUMBLING;
   w->lateness_ms = 3 * MS_PER_SECOND; /* ASP's default */
   uint32_t len;
   const uint8_t *data;
   bson_t tmp;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&tmp, data, len);
   bson_copy_to(&tmp, &w->spec);

   bool has_interval = false, has_hop = false, has_gap = false;
   bool has_lateness = false, has_idle = false, has_pipeline = false;
   bson_iter_t it, pipeline_it;
   bson_iter_init(&it, &w->spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "interval") == 0 && w->kind != W_SESSION) {
         if (!parse_duration(&it, "interval", false, NULL, &w->size_ms, err)) {
            return false;
         }
         if (w->size_ms <= 0) {
            return window_fail(err,
                               "Window interval size must be greater than 0.");
         }
         has_interval = true;
      } else if (strcmp(k, "hopSize") == 0 && w->kind == W_HOPPING) {
         if (!parse_duration(&it, "hopSize", false, NULL, &w->hop_ms, err)) {
            return false;
         }
         if (w->hop_ms <= 0) {
            return window_fail(err,
                               "Window hopSize size must be greater than 0.");
         }
         has_hop = true;
      } else if (strcmp(k, "gap") == 0 && w->kind == W_SESSION) {
         if (!parse_duration(&it, "gap", false, NULL, &w->gap_ms, err)) {
            return false;
         }
         if (w->gap_ms <= 0) {
            return window_fail(err,
                               "Window gap size must be greater than 0.");
         }
         has_gap = true;
      } else if (strcmp(k, "partitionBy") == 0 && w->kind == W_SESSION) {
         if (!aspen_expr_parse(&it, NULL, &w->partition_by, err)) {
            return false;
         }
      } else if (strcmp(k, "offset") == 0 && w->kind != W_SESSION) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            return window_fail(err,
                               "offset must be an object {offsetFromUtc, "
                               "unit}");
         }
         bson_iter_t oi;
         int64_t amount = 0, ms = 0;
         const char *unit = NULL;
         bool has_amount = false;
         bson_iter_recurse(&it, &oi);
         while (bson_iter_next(&oi)) {
            const char *ok = bson_iter_key(&oi);
            if (strcmp(ok, "offsetFromUtc") == 0 && BSON_ITER_HOLDS_NUMBER(&oi)) {
               amount = bson_iter_as_int64(&oi);
               has_amount = true;
            } else if (strcmp(ok, "unit") == 0 && BSON_ITER_HOLDS_UTF8(&oi)) {
               unit = bson_iter_utf8(&oi, NULL);
            } else {
               return window_fail(err,
                                  "BSON field 'offset.%s' is an unknown "
                                  "field or has the wrong type.",
                                  ok);
            }
         }
         if (!has_amount || !unit || !unit_ms(unit, &ms) ||
             strcmp(unit, "day") == 0) {
            return window_fail(err,
                               "offset requires offsetFromUtc and a unit of "
                               "ms, second, minute or hour");
         }
         w->offset_ms = amount * ms;
      } else if (strcmp(k, "allowedLateness") == 0) {
         if (!parse_duration(&it, "allowedLateness", true,
                             "Must specify unit and size for non-zero allowed "
                             "lateness values",
                             &w->lateness_ms, err)) {
            return false;
         }
         if (w->lateness_ms > MAX_LATENESS_MS) {
            return window_fail(err, "Maximum allowedLateness is 30 minutes");
         }
         if (w->lateness_ms < 0) {
            return window_fail(err,
                               "allowedLateness must not be negative");
         }
         has_lateness = true;
      } else if (strcmp(k, "idleTimeout") == 0 && w->kind != W_SESSION) {
         if (!parse_duration(&it, "idleTimeout", true,
                             "Must specify unit and size for non-zero idle "
                             "timeout values",
                             &w->idle_timeout_ms, err)) {
            return false;
         }
         has_idle = true;
      } else if (strcmp(k, "boundary") == 0) {
         const char *b = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : "";
         if (strcmp(b, "processingTime") == 0) {
            w->processing_time = true;
         } else if (strcmp(b, "eventTime") != 0) {
            return window_fail(err,
                               "Enumeration value '%s' for field 'boundary' "
                               "is not a valid value.",
                               b);
         }
      } else if (strcmp(k, "pipeline") == 0) {
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            return window_fail(err, "%s.pipeline must be an array", name);
         }
         pipeline_it = it;
         has_pipeline = true;
      } else {
         return window_fail(err, "BSON field '%s.%s' is an unknown field.",
                            name, k);
      }
   }
   if (w->kind != W_SESSION && !has_interval) {
      return window_fail(err,
                         "BSON field '%s.interval' is missing but a required "
                         "field",
                         name);
   }
   if (w->kind == W_HOPPING && !has_hop) {
      return window_fail(err,
                         "BSON field '$hoppingWindow.hopSize' is missing but "
                         "a required field");
   }
   if (w->kind == W_SESSION && !w->partition_by) {
      return window_fail(err,
                         "BSON field '$sessionWindow.partitionBy' is missing "
                         "but a required field");
   }
   if (w->kind == W_SESSION && !has_gap) {
      return window_fail(err,
                         "BSON field '$sessionWindow.gap' is missing but a "
                         "required field");
   }
   if (!has_pipeline) {
      return window_fail(err,
                         "BSON field '%s.pipeline' is missing but a required "
                         "field",
                         name);
   }
   if (w->processing_time && (has_lateness || has_idle)) {
      return window_fail(err,
                         "idleTimeout and allowedLateness are not allowed "
                         "with boundary: processingTime");
   }
   if (w->processing_time) {
      w->lateness_ms = 0;
   }
   /* The inner pipeline. */
   bson_t inner;
   bson_iter_array(&pipeline_it, &len, &data);
   (void) bson_init_static(&inner, data, len);
   aspen_parse_ctx_t ipc = *pc;
   ipc.in_window = true;
   if (!aspen_pipeline_parse_stages(st->pl, &inner, &ipc, &w->inner,
                                    &w->n_inner, err)) {
      return false;
   }
   w->first_block = w->n_inner;
   for (int i = 0; i < w->n_inner; i++) {
      if (aspen__window_block_is(&w->inner[i]) &&
          w->first_block == w->n_inner) {
         w->first_block = i;
      }
   }
   if (w->kind == W_SESSION) {
      bool has_group_or_sort = false;
      for (int i = 0; i < w->n_inner; i++) {
         if (w->inner[i].ops == &aspen_stage_group_ops ||
             w->inner[i].ops == &aspen_stage_sort_ops) {
            has_group_or_sort = true;
         } else if (w->inner[i].ops == &aspen_stage_limit_ops &&
                    !has_group_or_sort) {
            return window_fail(err,
                               "The $sessionWindow.pipeline isn't supported, "
                               "$limit may not come before $group or $sort");
         }
      }
      if (!has_group_or_sort) {
         return window_fail(err,
                            "The $sessionWindow.pipeline isn't supported, it "
                            "must contain a $group or $sort stage");
      }
   }
   return true;
}

int64_t
aspen__window_fanout(const aspen_stage_t *st)
{
   const aspen_window_t *w = st->state;
   if (w->kind != W_HOPPING || w->hop_ms >= w->size_ms) {
      return 1;
   }
   return (w->size_ms + w->hop_ms - 1) / w->hop_ms;
}
