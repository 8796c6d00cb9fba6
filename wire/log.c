/*
 * log.c - structured logging in mongod's JSON line format:
 *   {"t":{"$date":"..."},"s":"I","c":"NETWORK","id":23016,"ctx":"listener",
 *    "msg":"Waiting for connections","attr":{"port":27017}}
 * One line per event, written whole under a mutex so lines from the loop and
 * worker threads never interleave. Attribute values are written compactly;
 * exotic BSON types fall back to libbson's relaxed Extended JSON.
 */
#include "wire.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static aspen_log_level_t log_level = ASPEN_LOG_INFO;
static FILE *log_stream;

/* The most recent lines, for getLog. */
#define RING_SIZE 1024
static char *ring[RING_SIZE];
static uint64_t ring_total;

void
aspen_log_set_level(aspen_log_level_t level)
{
   log_level = level;
}

void
aspen_log_set_stream(FILE *stream)
{
   log_stream = stream;
}

bool
aspen_log_enabled(aspen_log_level_t level)
{
   return level <= log_level;
}

/* Writes `s` as a JSON string. Control characters are escaped; so is each
 * byte that does not start a well-formed UTF-8 character (a user name or a
 * processor name a client sent may hold anything), as U+FFFD, so every
 * line is valid UTF-8 JSON whatever the input and no event is lost to an
 * encoding error. */
static void
put_json_string(bson_string_t *out, const char *s, size_t len)
{
   bson_string_append_c(out, '"');
   for (size_t i = 0; i < len; i++) {
      unsigned char c = (unsigned char) s[i];
      if (c >= 0x80) {
         size_t n = aspen_utf8_char_len((const uint8_t *) s + i, len - i);
         if (n == 0) {
            bson_string_append(out, "\\ufffd");
         } else {
            char ch[5] = {0};
            memcpy(ch, s + i, n);
            bson_string_append(out, ch);
            i += n - 1;
         }
         continue;
      }
      switch (c) {
      case '"':
         bson_string_append(out, "\\\"");
         break;
      case '\\':
         bson_string_append(out, "\\\\");
         break;
      case '\n':
         bson_string_append(out, "\\n");
         break;
      case '\r':
         bson_string_append(out, "\\r");
         break;
      case '\t':
         bson_string_append(out, "\\t");
         break;
      default:
         if (c < 0x20) {
            bson_string_append_printf(out, "\\u%04x", c);
         } else {
            bson_string_append_c(out, (char) c);
         }
      }
   }
   bson_string_append_c(out, '"');
}

static void put_json_doc(bson_string_t *out, const bson_t *doc, bool array);

static void
put_json_value(bson_string_t *out, const bson_iter_t *it)
{
   switch (bson_iter_type(it)) {
   case BSON_TYPE_UTF8: {
      uint32_t len;
      const char *s = bson_iter_utf8(it, &len);
      put_json_string(out, s, len);
      break;
   }
   case BSON_TYPE_INT32:
      bson_string_append_printf(out, "%d", bson_iter_int32(it));
      break;
   case BSON_TYPE_INT64:
      bson_string_append_printf(out, "%lld", (long long) bson_iter_int64(it));
      break;
   case BSON_TYPE_DOUBLE: {
      double d = bson_iter_double(it);
      /* JSON has no inf/nan literals: use relaxed EJSON's spelling. */
      if (isfinite(d)) {
         bson_string_append_printf(out, "%.17g", d);
      } else {
         bson_string_append_printf(out, "{\"$numberDouble\":\"%s\"}",
                                   isnan(d) ? "NaN"
                                   : d > 0  ? "Infinity"
                                            : "-Infinity");
      }
      break;
   }
   case BSON_TYPE_BOOL:
      bson_string_append(out, bson_iter_bool(it) ? "true" : "false");
      break;
   case BSON_TYPE_NULL:
      bson_string_append(out, "null");
      break;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY: {
      uint32_t len;
      const uint8_t *data;
      bson_t sub;
      bool is_array = bson_iter_type(it) == BSON_TYPE_ARRAY;
      if (is_array) {
         bson_iter_array(it, &len, &data);
      } else {
         bson_iter_document(it, &len, &data);
      }
      if (bson_init_static(&sub, data, len)) {
         put_json_doc(out, &sub, is_array);
      } else {
         bson_string_append(out, "null");
      }
      break;
   }
   default: {
      /* Wrap the single value so libbson renders it as relaxed EJSON, then
       * strip the wrapper "{ "v" : " ... " }". */
      bson_t tmp = BSON_INITIALIZER;
      bson_append_value(&tmp, "v", 1, bson_iter_value((bson_iter_t *) it));
      size_t jlen;
      char *json = bson_as_relaxed_extended_json(&tmp, &jlen);
      const char *start = json ? strstr(json, ": ") : NULL;
      /* Strip exactly the wrapper's closing " }": the value itself may end
       * in several braces ({ "$binary" : { ... } }). */
      if (start && jlen >= 2 && json[jlen - 2] == ' ' &&
          json[jlen - 1] == '}' && start + 2 <= json + jlen - 2) {
         start += 2;
         size_t n = (size_t) (json + jlen - 2 - start);
         bson_string_append_printf(out, "%.*s", (int) n, start);
      } else {
         bson_string_append(out, "null");
      }
      bson_free(json);
      bson_destroy(&tmp);
   }
   }
}

static void
put_json_doc(bson_string_t *out, const bson_t *doc, bool array)
{
   bson_iter_t it;
   bool first = true;
   bson_string_append_c(out, array ? '[' : '{');
   if (bson_iter_init(&it, doc)) {
      while (bson_iter_next(&it)) {
         if (!first) {
            bson_string_append_c(out, ',');
         }
         first = false;
         if (!array) {
            put_json_string(out, bson_iter_key(&it), bson_iter_key_len(&it));
            bson_string_append_c(out, ':');
         }
         put_json_value(out, &it);
      }
   }
   bson_string_append_c(out, array ? ']' : '}');
}

void
aspen_json_append_doc(bson_string_t *out, const bson_t *doc)
{
   put_json_doc(out, doc, false);
}

static const char *
level_code(aspen_log_level_t level)
{
   switch (level) {
   case ASPEN_LOG_ERROR:
      return "E";
   case ASPEN_LOG_WARNING:
      return "W";
   case ASPEN_LOG_DEBUG:
      return "D1";
   case ASPEN_LOG_INFO:
   default:
      return "I";
   }
}

void
aspen_log(aspen_log_level_t level, const char *component, int32_t id,
          const char *ctx, const char *msg, const bson_t *attr)
{
   if (!aspen_log_enabled(level)) {
      return;
   }
   struct timeval tv;
   struct tm tm;
   char ts[64];
   gettimeofday(&tv, NULL);
   gmtime_r(&tv.tv_sec, &tm);
   size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
   snprintf(ts + n, sizeof ts - n, ".%03d+00:00", (int) (tv.tv_usec / 1000));

   bson_string_t *line = bson_string_new("{\"t\":{\"$date\":\"");
   bson_string_append(line, ts);
   bson_string_append_printf(line, "\"},\"s\":\"%s\",\"c\":", level_code(level));
   put_json_string(line, component, strlen(component));
   bson_string_append_printf(line, ",\"id\":%d,\"ctx\":", id);
   put_json_string(line, ctx ? ctx : "-", strlen(ctx ? ctx : "-"));
   bson_string_append(line, ",\"msg\":");
   put_json_string(line, msg, strlen(msg));
   if (attr && !bson_empty(attr)) {
      bson_string_append(line, ",\"attr\":");
      put_json_doc(line, attr, false);
   }
   bson_string_append(line, "}\n");

   pthread_mutex_lock(&log_mu);
   FILE *f = log_stream ? log_stream : stdout;
   fwrite(line->str, 1, line->len, f);
   fflush(f);
   char *copy = bson_strndup(line->str, line->len - 1);
   bson_free(ring[ring_total % RING_SIZE]);
   ring[ring_total % RING_SIZE] = copy;
   ring_total++;
   pthread_mutex_unlock(&log_mu);
   bson_string_free(line, true);
}

void
aspen_logf(aspen_log_level_t level, const char *component, const char *ctx,
           const char *fmt, ...)
{
   if (!aspen_log_enabled(level)) {
      return;
   }
   char msg[1024];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(msg, sizeof msg, fmt, ap);
   va_end(ap);
   aspen_log(level, component, 0, ctx, msg, NULL);
}

size_t
aspen_log_recent(char ***out, size_t max, uint64_t *total)
{
   pthread_mutex_lock(&log_mu);
   uint64_t have = ring_total < RING_SIZE ? ring_total : RING_SIZE;
   size_t n = have < max ? (size_t) have : max;
   char **lines = aspen_xcalloc(n ? n : 1, sizeof *lines);
   for (size_t i = 0; i < n; i++) {
      uint64_t idx = ring_total - n + i;
      lines[i] = aspen_xstrdup(ring[idx % RING_SIZE]);
   }
   *total = ring_total;
   pthread_mutex_unlock(&log_mu);
   *out = lines;
   return n;
}

void
aspen_log_recent_free(char **lines, size_t n)
{
   for (size_t i = 0; i < n; i++) {
      free(lines[i]);
   }
   free(lines);
}
