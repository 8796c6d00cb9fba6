/*
 * kafka.c - helpers the Kafka $source and $emit share (kafka_int.h): client
 * configuration from a registry connection, Extended JSON for message
 * values, ASP's key formats, and parsing the Kafka $source's options (its
 * parse hooks; ../shared/spec/asp-semantics.md §2.2, §5.1).
 */
#include "connectors/kafka_int.h"
#include "connectors/schema_registry.h"
#include "ejson.h"

#include <librdkafka/rdkafka_mock.h>

#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ASPEN_LOG_DOMAIN "kafka"

/* The server's name for a BSON type ("string", "object", ...). */
static const char *
type_name(bson_type_t t)
{
   aspen_value_t v = ASPEN_VALUE_MISSING;
   v.v.value_type = t;
   return aspen_value_type_name(&v);
}

/* ---- key formats ---------------------------------------------------------- */

static const char *const key_format_names[] = {
   [ASPEN_KAFKA_KEY_BINDATA] = "binData", [ASPEN_KAFKA_KEY_STRING] = "string",
   [ASPEN_KAFKA_KEY_JSON] = "json",       [ASPEN_KAFKA_KEY_INT] = "int",
   [ASPEN_KAFKA_KEY_LONG] = "long",       [ASPEN_KAFKA_KEY_DOUBLE] = "double",
};

bool
aspen__kafka_key_format_parse(const char *name, aspen_kafka_key_format_t *out)
{
   for (size_t i = 0; i < sizeof key_format_names / sizeof *key_format_names;
        i++) {
      if (strcmp(name, key_format_names[i]) == 0) {
         *out = (aspen_kafka_key_format_t) i;
         return true;
      }
   }
   *out = ASPEN_KAFKA_KEY_BINDATA;
   return false;
}

const char *
aspen__kafka_key_format_name(aspen_kafka_key_format_t f)
{
   return (size_t) f < sizeof key_format_names / sizeof *key_format_names
             ? key_format_names[f]
             : "?";
}

static uint64_t
be_read(const uint8_t *p, size_t n)
{
   uint64_t v = 0;
   for (size_t i = 0; i < n; i++) {
      v = (v << 8) | p[i];
   }
   return v;
}

static void
be_write(uint8_t *p, uint64_t v, size_t n)
{
   for (size_t i = n; i-- > 0;) {
      p[i] = (uint8_t) (v & 0xff);
      v >>= 8;
   }
}

/* Parses any JSON value (not only an object) by wrapping it in {"v": ...}. */
static bool
json_value_parse(const char *data, size_t len, bson_t *wrapper,
                 aspen_error_t *err)
{
   static const char pre[] = "{\"v\":";
   size_t n = sizeof pre - 1 + len + 1;
   char *buf = aspen_xmalloc(n);
   memcpy(buf, pre, sizeof pre - 1);
   memcpy(buf + sizeof pre - 1, data, len);
   buf[n - 1] = '}';
   bson_error_t berr;
   bool ok = bson_init_from_json(wrapper, buf, (ssize_t) n, &berr);
   free(buf);
   if (!ok) {
      bson_init(wrapper);
      aspen_error_set(err, ASPEN_ERR_BadValue, "%s", berr.message);
   }
   return ok;
}

bool
aspen__kafka_key_decode(aspen_kafka_key_format_t f, const void *data,
                        size_t len, bson_t *out, const char *field,
                        aspen_error_t *err)
{
   const uint8_t *p = data;
   switch (f) {
   case ASPEN_KAFKA_KEY_BINDATA:
      return bson_append_binary(out, field, -1, BSON_SUBTYPE_BINARY, p,
                                (uint32_t) len);
   case ASPEN_KAFKA_KEY_STRING:
      if (!bson_utf8_validate((const char *) p, len, false)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "the key is not valid UTF-8");
         return false;
      }
      return bson_append_utf8(out, field, -1, (const char *) p, (int) len);
   case ASPEN_KAFKA_KEY_JSON: {
      bson_t wrapper;
      bson_iter_t it;
      if (!json_value_parse((const char *) p, len, &wrapper, err)) {
         bson_destroy(&wrapper);
         return false;
      }
      bool ok = bson_iter_init_find(&it, &wrapper, "v") &&
                bson_append_iter(out, field, -1, &it);
      bson_destroy(&wrapper);
      if (!ok) {
         aspen_error_set(err, ASPEN_ERR_BadValue, "the key is empty");
      }
      return ok;
   }
   case ASPEN_KAFKA_KEY_INT:
      if (len != 4) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "an int key must be 4 bytes, not %zu", len);
         return false;
      }
      return bson_append_int32(out, field, -1, (int32_t) be_read(p, 4));
   case ASPEN_KAFKA_KEY_LONG:
      if (len != 8) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "a long key must be 8 bytes, not %zu", len);
         return false;
      }
      return bson_append_int64(out, field, -1, (int64_t) be_read(p, 8));
   case ASPEN_KAFKA_KEY_DOUBLE: {
      if (len != 8) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "a double key must be 8 bytes, not %zu", len);
         return false;
      }
      uint64_t bits = be_read(p, 8);
      double d;
      memcpy(&d, &bits, sizeof d);
      return bson_append_double(out, field, -1, d);
   }
   }
   aspen_error_set(err, ASPEN_ERR_BadValue, "unknown key format");
   return false;
}

static bool
value_as_int64(const bson_value_t *v, int64_t *out)
{
   double d;
   switch (v->value_type) {
   case BSON_TYPE_INT32:
      *out = v->value.v_int32;
      return true;
   case BSON_TYPE_INT64:
      *out = v->value.v_int64;
      return true;
   case BSON_TYPE_DOUBLE:
      d = v->value.v_double;
      if (!isfinite(d) || d != floor(d) || d < -9223372036854775808.0 ||
          d >= 9223372036854775808.0) {
         return false;
      }
      *out = (int64_t) d;
      return true;
   default:
      return false;
   }
}

/* JSON text of one value (relaxed Extended JSON). */
static char *
value_json(const bson_value_t *v, size_t *len)
{
   bson_t wrap = BSON_INITIALIZER;
   bson_append_value(&wrap, "v", 1, v);
   size_t n = 0;
   char *json = bson_as_relaxed_extended_json(&wrap, &n);
   bson_destroy(&wrap);
   /* { "v" : <value> } -> <value> */
   const char *start = json ? strchr(json, ':') : NULL;
   if (!start || n < 2 || json[n - 1] != '}') {
      bson_free(json);
      *len = 0;
      return bson_strdup("");
   }
   start++;
   while (*start == ' ') {
      start++;
   }
   const char *end = json + n - 1; /* the closing brace */
   while (end > start && end[-1] == ' ') {
      end--;
   }
   char *out = bson_strndup(start, (size_t) (end - start));
   *len = (size_t) (end - start);
   bson_free(json);
   return out;
}

bool
aspen__kafka_key_encode(aspen_kafka_key_format_t f, const bson_value_t *v,
                        uint8_t **out, size_t *out_len, aspen_error_t *err)
{
   *out = NULL;
   *out_len = 0;
   int64_t i;
   switch (f) {
   case ASPEN_KAFKA_KEY_BINDATA:
      if (v->value_type == BSON_TYPE_BINARY) {
         *out_len = v->value.v_binary.data_len;
         *out = bson_malloc(*out_len ? *out_len : 1);
         memcpy(*out, v->value.v_binary.data, *out_len);
         return true;
      }
      if (v->value_type == BSON_TYPE_UTF8) {
         *out_len = v->value.v_utf8.len;
         *out = (uint8_t *) bson_strndup(v->value.v_utf8.str, *out_len);
         return true;
      }
      break;
   case ASPEN_KAFKA_KEY_STRING:
      if (v->value_type == BSON_TYPE_UTF8) {
         *out_len = v->value.v_utf8.len;
         *out = (uint8_t *) bson_strndup(v->value.v_utf8.str, *out_len);
         return true;
      }
      break;
   case ASPEN_KAFKA_KEY_JSON:
      if (v->value_type != BSON_TYPE_EOD) {
         *out = (uint8_t *) value_json(v, out_len);
         return true;
      }
      break;
   case ASPEN_KAFKA_KEY_INT:
      if (value_as_int64(v, &i) && i >= INT32_MIN && i <= INT32_MAX) {
         *out = bson_malloc(4);
         *out_len = 4;
         be_write(*out, (uint64_t) (int64_t) (int32_t) i, 4);
         return true;
      }
      break;
   case ASPEN_KAFKA_KEY_LONG:
      if (value_as_int64(v, &i)) {
         *out = bson_malloc(8);
         *out_len = 8;
         be_write(*out, (uint64_t) i, 8);
         return true;
      }
      break;
   case ASPEN_KAFKA_KEY_DOUBLE:
      if (v->value_type == BSON_TYPE_DOUBLE ||
          v->value_type == BSON_TYPE_INT32 ||
          v->value_type == BSON_TYPE_INT64) {
         double d = v->value_type == BSON_TYPE_DOUBLE ? v->value.v_double
                    : v->value_type == BSON_TYPE_INT32
                       ? (double) v->value.v_int32
                       : (double) v->value.v_int64;
         uint64_t bits;
         memcpy(&bits, &d, sizeof bits);
         *out = bson_malloc(8);
         *out_len = 8;
         be_write(*out, bits, 8);
         return true;
      }
      break;
   }
   aspen_error_set(err, ASPEN_ERR_BadValue,
                   "Failed to serialize the key of type %s with keyFormat %s",
                   v->value_type == BSON_TYPE_EOD
                      ? "missing"
                      : type_name(v->value_type),
                   aspen__kafka_key_format_name(f));
   return false;
}

/* ---- values ---------------------------------------------------------------- */

/* Where the JSON object in a message value starts: after the Schema
 * Registry framing (magic byte 0 and a 4-byte schema id) and leading
 * whitespace, at its '{'; false, `doc` empty and `err` set, if the value
 * is empty or not an object. */
static bool
json_start(const void *data, size_t len, const char **text, size_t *n,
           bson_t *doc, aspen_error_t *err)
{
   const char *p = data;
   if (len > 5 && p[0] == '\0') {
      p += 5;
      len -= 5;
   }
   size_t i = 0;
   while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' ||
                      p[i] == '\n')) {
      i++;
   }
   if (i == len) {
      bson_init(doc);
      aspen_error_set(err, ASPEN_ERR_BadValue, "the message value is empty");
      return false;
   }
   if (p[i] != '{') {
      bson_init(doc);
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the message value is not a JSON object");
      return false;
   }
   *text = p + i;
   *n = len - i;
   return true;
}

/* libbson's reader, for what the fast path declines. */
static bool
json_decode_libbson(const char *text, size_t n, bson_t *doc,
                    aspen_error_t *err)
{
   bson_error_t berr;
   if (!bson_init_from_json(doc, text, (ssize_t) n, &berr)) {
      bson_init(doc);
      aspen_error_set(err, ASPEN_ERR_BadValue, "%s", berr.message);
      return false;
   }
   return true;
}

bool
aspen__kafka_json_decode(const void *data, size_t len, aspen_bsonw_t *w,
                         bson_t *doc, aspen_error_t *err)
{
   const char *text;
   size_t n;
   if (!json_start(data, len, &text, &n, doc, err)) {
      return false;
   }
   /* Plain JSON first (wire/ejson.c: libbson's result, without its
    * reader's per-message setup); what it declines, libbson reads. */
   if (aspen_ejson_read(text, n, w, doc)) {
      return true;
   }
   return json_decode_libbson(text, n, doc, err);
}

static void
iso_date(int64_t ms, char *buf, size_t size)
{
   time_t secs = (time_t) (ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
   int millis = (int) (ms - (int64_t) secs * 1000);
   struct tm tm;
   gmtime_r(&secs, &tm);
   size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
   snprintf(buf + n, size - n, ".%03dZ", millis);
}

bool
aspen__kafka_message_has_headers(const rd_kafka_message_t *m)
{
   /* rd_kafka_message_headers parses a consumed record's headers on each
    * call that finds none (a shadow buffer allocated, read and freed, ~1,000
    * instructions per message). Reading the record's header count from
    * the byte after the value would skip that, but it relies on how
    * librdkafka lays out a fetched record (not an API, and past the end of
    * the buffer for the old message formats): not done. */
   rd_kafka_headers_t *hdrs = NULL;
   return rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
          rd_kafka_header_cnt(hdrs) > 0;
}

void
aspen__kafka_append_raw(bson_t *doc, const char *field, const void *data, size_t len)
{
   if (data && bson_utf8_validate(data, len, false)) {
      bson_append_utf8(doc, field, -1, data, (int) len);
   } else {
      bson_append_binary(doc, field, -1, BSON_SUBTYPE_BINARY, data,
                         (uint32_t) len);
   }
}

/* basicJson (simplify): appends the plain form of the scalar at `it` as
 * `k` and returns true, or false when Extended JSON shows it plainly. */
static bool
basic_value(const bson_iter_t *it, const char *k, bson_t *out)
{
   char buf[64];
   uint32_t len;
   const uint8_t *data;
   switch (bson_iter_type(it)) {
   case BSON_TYPE_BINARY: {
      bson_subtype_t st;
      bson_iter_binary(it, &st, &len, &data);
      if (st == BSON_SUBTYPE_UUID && len == 16) {
         int n = 0;
         for (int i = 0; i < 16; i++) {
            n += snprintf(buf + n, sizeof buf - (size_t) n, "%s%02x",
                          i == 4 || i == 6 || i == 8 || i == 10 ? "-" : "",
                          data[i]);
         }
         bson_append_utf8(out, k, -1, buf, n);
         return true;
      }
      char *b64 = aspen_xmalloc(4 * ((size_t) len + 2) / 3 + 1);
      EVP_EncodeBlock((unsigned char *) b64, data, (int) len);
      bson_append_utf8(out, k, -1, b64, -1);
      free(b64);
      return true;
   }
   case BSON_TYPE_OID:
      bson_oid_to_string(bson_iter_oid(it), buf);
      bson_append_utf8(out, k, -1, buf, -1);
      return true;
   case BSON_TYPE_DECIMAL128: {
      bson_decimal128_t dec;
      char str[BSON_DECIMAL128_STRING];
      bson_iter_decimal128(it, &dec);
      bson_decimal128_to_string(&dec, str);
      bson_append_utf8(out, k, -1, str, -1);
      return true;
   }
   case BSON_TYPE_TIMESTAMP: {
      uint32_t t, i;
      bson_iter_timestamp(it, &t, &i);
      bson_append_int64(out, k, -1, (int64_t) t * 1000);
      return true;
   }
   case BSON_TYPE_DOUBLE: {
      double d = bson_iter_double(it);
      if (isfinite(d)) {
         return false;
      }
      bson_append_utf8(out, k, -1,
                       isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity",
                       -1);
      return true;
   }
   case BSON_TYPE_REGEX: {
      const char *options;
      const char *pattern = bson_iter_regex(it, &options);
      bson_t re;
      bson_append_document_begin(out, k, -1, &re);
      BSON_APPEND_UTF8(&re, "pattern", pattern);
      BSON_APPEND_UTF8(&re, "options", options ? options : "");
      bson_append_document_end(out, &re);
      return true;
   }
   default:
      return false;
   }
}

/* Copies `in` to `out` simplified per `opts`: with iso_dates every Date
 * becomes an ISO-8601 string; with basic (ASP's basicJson) the values
 * Extended JSON would wrap become plain ones: binary data its base64 (a
 * UUID its 8-4-4-4-12 hex form), a Date its milliseconds since the epoch, a
 * Timestamp its seconds in milliseconds, a Decimal128 and an ObjectId their
 * strings, a non-finite double "Infinity", "-Infinity" or "NaN", a regular
 * expression {pattern, options}. */
static void
simplify(const bson_t *in, bson_t *out, const aspen_kafka_json_opts_t *opts)
{
   bson_iter_t it;
   bson_iter_init(&it, in);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      uint32_t len;
      const uint8_t *data;
      bson_t sub, child;
      char buf[64];
      switch (bson_iter_type(&it)) {
      case BSON_TYPE_DATE_TIME:
         if (opts->iso_dates) {
            iso_date(bson_iter_date_time(&it), buf, sizeof buf);
            bson_append_utf8(out, k, -1, buf, -1);
         } else if (opts->basic) {
            bson_append_int64(out, k, -1, bson_iter_date_time(&it));
         } else {
            bson_append_iter(out, k, -1, &it);
         }
         break;
      case BSON_TYPE_DOCUMENT:
         bson_iter_document(&it, &len, &data);
         (void) bson_init_static(&sub, data, len);
         bson_append_document_begin(out, k, -1, &child);
         simplify(&sub, &child, opts);
         bson_append_document_end(out, &child);
         break;
      case BSON_TYPE_ARRAY:
         bson_iter_array(&it, &len, &data);
         (void) bson_init_static(&sub, data, len);
         bson_append_array_begin(out, k, -1, &child);
         simplify(&sub, &child, opts);
         bson_append_array_end(out, &child);
         break;
      default:
         if (!opts->basic || !basic_value(&it, k, out)) {
            bson_append_iter(out, k, -1, &it);
         }
         break;
      }
   }
}

void
aspen__kafka_json_encode_into(const bson_t *doc,
                              const aspen_kafka_json_opts_t *opts,
                              aspen_ejson_text_t *t)
{
   bson_t simple;
   const bson_t *src = doc;
   bool simplified = opts->iso_dates || opts->basic;
   if (simplified) {
      bson_init(&simple);
      simplify(doc, &simple, opts);
      src = &simple;
   }
   bool canonical = opts->canonical && !opts->basic;
   /* Plain JSON values first (wire/ejson.c: libbson's text exactly);
    * what it declines, libbson writes. */
   if (canonical || !aspen_ejson_write(src, t)) {
      size_t n = 0;
      char *json = canonical ? bson_as_canonical_extended_json(src, &n)
                             : bson_as_relaxed_extended_json(src, &n);
      if (!json) {
         json = bson_strdup("{}");
         n = 2;
      }
      free(t->data);
      t->data = json;
      t->len = n;
      t->cap = n + 1;
   }
   if (simplified) {
      bson_destroy(&simple);
   }
}

char *
aspen__kafka_json_encode(const bson_t *doc,
                         const aspen_kafka_json_opts_t *opts, size_t *len)
{
   aspen_ejson_text_t t = {0};
   aspen__kafka_json_encode_into(doc, opts, &t);
   *len = t.len;
   return t.data;
}

/* ---- client configuration --------------------------------------------------- */

bool
aspen__kafka_conf_set(rd_kafka_conf_t *conf, const char *name,
                      const char *value, aspen_error_t *err)
{
   char errstr[512];
   if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) !=
       RD_KAFKA_CONF_OK) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                      "invalid Kafka client setting '%s': %s", name, errstr);
      return false;
   }
   return true;
}

/* librdkafka's log lines go to aspen's log, at a matching level, with the
 * processor's name as context. Called from librdkafka's threads; aspen_log
 * is thread-safe. */
static void
log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
   const aspen_kafka_client_hdr_t *hdr = rd_kafka_opaque(rk);
   const char *ctx = hdr ? hdr->ctx : NULL;
   aspen_log_level_t lv = level <= 3   ? ASPEN_LOG_ERROR
                          : level <= 5 ? ASPEN_LOG_WARNING
                          : level == 6 ? ASPEN_LOG_INFO
                                       : ASPEN_LOG_DEBUG;
   aspen_logf(lv, ASPEN_LOG_DOMAIN, ctx ? ctx : rd_kafka_name(rk), "%s: %s",
              fac, buf);
}

rd_kafka_conf_t *
aspen__kafka_conf_new(const char *conn_name, const bson_t *props,
                      aspen_kafka_client_hdr_t *hdr, aspen_error_t *err)
{
   rd_kafka_conf_t *conf = rd_kafka_conf_new();
   if (!aspen__kafka_conf_set(conf, "client.id", "aspen", err)) {
      rd_kafka_conf_destroy(conf);
      return NULL;
   }
   bson_iter_t it;
   bson_iter_init(&it, props);
   while (bson_iter_next(&it)) {
      const char *v = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                : "";
      if (!aspen__kafka_conf_set(conf, bson_iter_key(&it), v, err)) {
         char msg[ASPEN_ERROR_MSG_MAX];
         snprintf(msg, sizeof msg, "connection '%s': %s", conn_name,
                  err->message);
         aspen_error_set(err, err->code, "%s", msg);
         rd_kafka_conf_destroy(conf);
         return NULL;
      }
   }
   rd_kafka_conf_set_log_cb(conf, log_cb);
   rd_kafka_conf_set_opaque(conf, hdr);
   return conf;
}

rd_kafka_resp_err_t
aspen__kafka_metadata(rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                      const struct rd_kafka_metadata **md, int timeout_ms,
                      const char *fatal, bool (*stopping)(void *arg),
                      void *arg)
{
   const int slice_ms = 500;
   rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
   *md = NULL;
   for (int waited = 0; waited < timeout_ms; waited += slice_ms) {
      if (stopping && stopping(arg)) {
         return RD_KAFKA_RESP_ERR__INTR; /* stopped or dropped meanwhile */
      }
      int t = timeout_ms - waited < slice_ms ? timeout_ms - waited : slice_ms;
      e = rd_kafka_metadata(rk, 0, rkt, md, t);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
         return e;
      }
      rd_kafka_poll(rk, 0); /* serves the error callback */
      if (fatal[0]) {
         return RD_KAFKA_RESP_ERR__FATAL;
      }
      if (e != RD_KAFKA_RESP_ERR__TIMED_OUT &&
          e != RD_KAFKA_RESP_ERR__TRANSPORT) {
         return e;
      }
      if (e == RD_KAFKA_RESP_ERR__TRANSPORT) {
         /* Every broker is down (refused, or just dropped us): wait out the
          * rest of the slice before asking again. */
         rd_kafka_poll(rk, t);
         if (fatal[0]) {
            return RD_KAFKA_RESP_ERR__FATAL;
         }
      }
   }
   return e;
}

/* A client being shut down off the caller's thread. */
typedef struct {
   pthread_mutex_t mu;
   pthread_cond_t cv;
   bool done, abandoned;
   rd_kafka_t *rk;
   bool consumer;
   void (*free_fn)(void *);
   void *arg;
} closer_t;

static void
closer_free(closer_t *c)
{
   c->free_fn(c->arg);
   pthread_cond_destroy(&c->cv);
   pthread_mutex_destroy(&c->mu);
   free(c);
}

/* How long a closing consumer waits for its group leave to be sent, and
 * the poll slice meanwhile: well inside the caller's close wait. */
#define LEAVE_WAIT_MS 2000
#define LEAVE_POLL_MS 50

/* Makes consumer `rk` leave its group before it closes, so the group does
 * not wait for it: a processor started again (or another member) is
 * assigned the partitions at once. rd_kafka_consumer_close alone sends no
 * LeaveGroup for a static member (group.instance.id; KIP-345 expects it
 * back), and the group then keeps it, and its partitions, for the whole
 * session timeout (45 s). Unsubscribing does send one, once the revoked
 * partitions are handed back through the rebalance callback: this serves
 * that callback until the member id is gone, which is when librdkafka has
 * sent the leave (the close then waits for its answer), at most
 * LEAVE_WAIT_MS. Messages still fetched are dropped unread: never
 * committed, they are read again by the next start. The closer's thread. */
static void
consumer_leave(rd_kafka_t *rk)
{
   if (rd_kafka_unsubscribe(rk) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return;
   }
   for (int waited = 0; waited < LEAVE_WAIT_MS; waited += LEAVE_POLL_MS) {
      char *id = rd_kafka_memberid(rk);
      bool member = id && *id;
      rd_kafka_mem_free(rk, id);
      if (!member) {
         return;
      }
      rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, LEAVE_POLL_MS);
      if (m) {
         rd_kafka_message_destroy(m);
      }
   }
}

static void *
closer_main(void *p)
{
   closer_t *c = p;
   if (c->consumer) {
      consumer_leave(c->rk);
      rd_kafka_consumer_close(c->rk);
   }
   rd_kafka_destroy(c->rk);
   pthread_mutex_lock(&c->mu);
   c->done = true;
   bool abandoned = c->abandoned;
   pthread_cond_signal(&c->cv);
   pthread_mutex_unlock(&c->mu);
   if (abandoned) {
      closer_free(c); /* nobody waits any more: the last owner frees */
   }
   return NULL;
}

void
aspen__kafka_client_destroy(rd_kafka_t *rk, bool consumer,
                            void (*free_fn)(void *), void *arg,
                            const char *ctx, int wait_ms)
{
   closer_t *c = aspen_xcalloc(1, sizeof *c);
   pthread_mutex_init(&c->mu, NULL);
   pthread_cond_init(&c->cv, NULL);
   c->rk = rk;
   c->consumer = consumer;
   c->free_fn = free_fn;
   c->arg = arg;
   pthread_t th;
   if (pthread_create(&th, NULL, closer_main, c) != 0) {
      closer_main(c); /* no thread to spare: shut down here */
      closer_free(c);
      return;
   }
   pthread_detach(th);
   struct timespec ts;
   clock_gettime(CLOCK_REALTIME, &ts);
   ts.tv_sec += wait_ms / 1000;
   ts.tv_nsec += (long) (wait_ms % 1000) * 1000000;
   if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
   }
   pthread_mutex_lock(&c->mu);
   while (!c->done &&
          pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0) {
   }
   bool done = c->done;
   c->abandoned = !done;
   pthread_mutex_unlock(&c->mu);
   if (done) {
      closer_free(c);
      return;
   }
   aspen_logf(ASPEN_LOG_ERROR, ASPEN_LOG_DOMAIN, ctx,
              "the Kafka %s did not shut down within %d ms (librdkafka "
              "can hang after a topic it used was deleted); it is "
              "abandoned and freed if it ever finishes",
              consumer ? "consumer" : "producer", wait_ms);
}

/* ---- the local broker --------------------------------------------------------- */

/* The mock cluster needs a client handle of its own: it lives in that
 * handle's threads, so the handle is created first and destroyed last. */
struct aspen_kafka_local {
   rd_kafka_t *rk;
   rd_kafka_mock_cluster_t *mc;
   char *name;
   char epoch[25]; /* an ObjectId's hex: this broker, not another's */
};

aspen_kafka_local_t *
aspen__kafka_local_new(const char *conn_name, aspen_error_t *err)
{
   char errstr[512];
   rd_kafka_conf_t *conf = rd_kafka_conf_new();
   aspen_kafka_local_t *kl = aspen_xcalloc(1, sizeof *kl);
   kl->name = aspen_xstrdup(conn_name);
   bson_oid_t oid; /* time, a per-process random and a counter */
   bson_oid_init(&oid, NULL);
   bson_oid_to_string(&oid, kl->epoch);
   if (rd_kafka_conf_set(conf, "client.id", "aspen-local-broker", errstr,
                         sizeof errstr) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      goto fail;
   }
   rd_kafka_conf_set_log_cb(conf, log_cb);
   /* The handle is never used to produce; it only hosts the broker. */
   kl->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
   if (!kl->rk) {
      rd_kafka_conf_destroy(conf); /* not taken on failure */
      goto fail;
   }
   /* The broker's thread must never take a signal: an interrupted poll()
    * ends librdkafka's mock cluster for good. Threads inherit the mask of
    * the thread that creates them, so every signal is blocked meanwhile. */
   sigset_t all, old;
   sigfillset(&all);
   pthread_sigmask(SIG_SETMASK, &all, &old);
   kl->mc = rd_kafka_mock_cluster_new(kl->rk, 1);
   pthread_sigmask(SIG_SETMASK, &old, NULL);
   if (!kl->mc) {
      snprintf(errstr, sizeof errstr, "the mock cluster did not start");
      goto fail;
   }
   /* librdkafka 2.0 binds the broker to 127.0.0.1 on a port the kernel
    * picks (no fixed-port API before 2.x later releases), so the address is
    * logged and listed by sp.listConnections. */
   aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, conn_name,
              "local Kafka broker (librdkafka mock cluster, in memory, "
              "test-grade) listening on %s",
              rd_kafka_mock_cluster_bootstraps(kl->mc));
   return kl;
fail:
   aspen_error_set(err, ASPEN_ERR_StreamProcessorKafkaConnectionError,
                   "connection '%s': cannot start the local Kafka broker: %s",
                   conn_name, errstr);
   aspen__kafka_local_destroy(kl);
   return NULL;
}

const char *
aspen__kafka_local_bootstrap(const aspen_kafka_local_t *kl)
{
   return rd_kafka_mock_cluster_bootstraps(kl->mc);
}

const char *
aspen__kafka_local_epoch(const aspen_kafka_local_t *kl)
{
   return kl->epoch;
}

void
aspen__kafka_local_destroy(aspen_kafka_local_t *kl)
{
   if (!kl) {
      return;
   }
   if (kl->mc) {
      rd_kafka_mock_cluster_destroy(kl->mc);
      aspen_logf(ASPEN_LOG_INFO, ASPEN_LOG_DOMAIN, kl->name,
                 "local Kafka broker stopped");
   }
   if (kl->rk) {
      rd_kafka_destroy(kl->rk);
   }
   free(kl->name);
   free(kl);
}

/* ---- $source stats ------------------------------------------------------------ */

/* A short list: one entry per running Kafka $source. */
typedef struct kstats {
   char *proc_id;
   bson_t *fields;
   struct kstats *next;
} kstats_t;

static pthread_mutex_t stats_mu = PTHREAD_MUTEX_INITIALIZER;
static kstats_t *stats_head;

static kstats_t **
stats_find(const char *proc_id)
{
   kstats_t **pp = &stats_head;
   while (*pp && strcmp((*pp)->proc_id, proc_id) != 0) {
      pp = &(*pp)->next;
   }
   return pp;
}

void
aspen__kafka_stats_publish(const char *proc_id, const bson_t *fields)
{
   bson_t *copy = bson_copy(fields);
   pthread_mutex_lock(&stats_mu);
   kstats_t **pp = stats_find(proc_id);
   if (!*pp) {
      *pp = aspen_xcalloc(1, sizeof **pp);
      (*pp)->proc_id = aspen_xstrdup(proc_id);
   }
   bson_t *old = (*pp)->fields;
   (*pp)->fields = copy;
   pthread_mutex_unlock(&stats_mu);
   bson_destroy(old);
}

void
aspen__kafka_stats_clear(const char *proc_id)
{
   pthread_mutex_lock(&stats_mu);
   kstats_t **pp = stats_find(proc_id);
   kstats_t *ks = *pp;
   if (ks) {
      *pp = ks->next;
   }
   pthread_mutex_unlock(&stats_mu);
   if (ks) {
      bson_destroy(ks->fields);
      free(ks->proc_id);
      free(ks);
   }
}

bool
aspen__kafka_stats_append(const char *proc_id, bson_t *out)
{
   pthread_mutex_lock(&stats_mu);
   kstats_t *ks = *stats_find(proc_id);
   bool found = ks != NULL;
   if (found) {
      bson_concat(out, ks->fields);
   }
   pthread_mutex_unlock(&stats_mu);
   return found;
}

/* ---- $source options ------------------------------------------------------------ */

void
aspen__kafka_source_opts_destroy(void *p)
{
   aspen_kafka_source_opts_t *opts = p;
   if (!opts) {
      return;
   }
   for (int i = 0; i < opts->n_topics; i++) {
      free(opts->topics[i]);
   }
   free(opts->topics);
   free(opts->group_id);
   free(opts);
}

static aspen_kafka_source_opts_t *
opts_of(aspen_source_spec_t *src)
{
   if (!src->opts) {
      aspen_kafka_source_opts_t *o = aspen_xcalloc(1, sizeof *o);
      o->enable_auto_commit = -1;
      src->opts = o;
   }
   return src->opts;
}

static bool
parse_topic(aspen_kafka_source_opts_t *o, const bson_iter_t *it,
            const aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (BSON_ITER_HOLDS_UTF8(it)) {
      const char *t = bson_iter_utf8(it, NULL);
      if (!*t) {
         aspen_parse_error(err, pc, "$source.topic",
                           "$source.topic cannot be empty");
         return false;
      }
      o->topics = aspen_xcalloc(1, sizeof *o->topics);
      o->topics[0] = aspen_xstrdup(t);
      o->n_topics = 1;
      return true;
   }
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_parse_error(err, pc, "$source.topic",
                        "BSON field '$source.topic' is the wrong type "
                        "'%s', expected types '[string, array]'",
                        type_name(bson_iter_type(it)));
      return false;
   }
   bson_iter_t ai;
   bson_iter_recurse(it, &ai);
   int n = 0;
   while (bson_iter_next(&ai)) {
      if (!BSON_ITER_HOLDS_UTF8(&ai) || !*bson_iter_utf8(&ai, NULL)) {
         aspen_parse_error(err, pc, "$source.topic",
                           "$source.topic must be a non-empty string or an "
                           "array of non-empty strings");
         return false;
      }
      n++;
   }
   if (n == 0) {
      aspen_parse_error(err, pc, "$source.topic",
                        "$source.topic must name at least one topic");
      return false;
   }
   o->topics = aspen_xcalloc((size_t) n, sizeof *o->topics);
   bson_iter_recurse(it, &ai);
   while (bson_iter_next(&ai)) {
      o->topics[o->n_topics++] = aspen_xstrdup(bson_iter_utf8(&ai, NULL));
   }
   return true;
}

bool
aspen__source_parse_idle_timeout(const bson_iter_t *it,
                                 const aspen_parse_ctx_t *pc,
                                 const char *name, int64_t *ms,
                                 aspen_error_t *err)
{
   char opt[64];
   snprintf(opt, sizeof opt, "$source.%s", name);
   return aspen__parse_duration(it, pc, opt, opt, ms, err);
}

bool
aspen__parse_duration(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                      const char *where, const char *field, int64_t *ms,
                      aspen_error_t *err)
{
   static const struct {
      const char *name;
      int64_t ms;
   } units[] = {{"ms", 1},           {"second", 1000}, {"minute", 60000},
                {"hour", 3600000},   {"day", 86400000}};
   const char *opt = field;
   /* The last part alone, in two of ASP's messages. */
   const char *name = strrchr(field, '.') ? strrchr(field, '.') + 1 : field;
   char size_opt[160], unit_opt[160];
   snprintf(size_opt, sizeof size_opt, "%s.size", where);
   snprintf(unit_opt, sizeof unit_opt, "%s.unit", where);
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, where,
                        "BSON field '%s' is the wrong type '%s', expected "
                        "type 'object'",
                        opt, type_name(bson_iter_type(it)));
      return false;
   }
   bson_iter_t fi;
   bson_iter_recurse(it, &fi);
   int64_t size = -1, unit_ms = 0;
   while (bson_iter_next(&fi)) {
      const char *k = bson_iter_key(&fi);
      if (strcmp(k, "size") == 0) {
         int64_t v;
         if (!value_as_int64(bson_iter_value(&fi), &v)) {
            aspen_parse_error(err, pc, size_opt,
                              "BSON field '%s.size' is the wrong type '%s', "
                              "expected types '[long, int, decimal, "
                              "double]'",
                              opt, type_name(bson_iter_type(&fi)));
            return false;
         }
         if (v < 0) {
            aspen_parse_error(err, pc, size_opt,
                              "%s.size must be a non-negative integer",
                              name);
            return false;
         }
         size = v;
      } else if (strcmp(k, "unit") == 0) {
         const char *u = BSON_ITER_HOLDS_UTF8(&fi)
                            ? bson_iter_utf8(&fi, NULL)
                            : "";
         for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
            if (strcmp(u, units[i].name) == 0) {
               unit_ms = units[i].ms;
            }
         }
         if (!unit_ms) {
            aspen_parse_error(err, pc, unit_opt,
                              "Enumeration value '%s' for field "
                              "'%s.unit' is not a valid value.",
                              BSON_ITER_HOLDS_UTF8(&fi) ? u
                                                        : "(not a string)",
                              opt);
            return false;
         }
      } else {
         aspen_parse_unknown_field(err, pc, where, opt, k);
         return false;
      }
   }
   if (size < 0) {
      aspen_parse_missing_field(err, pc, where, opt, "size");
      return false;
   }
   if (!unit_ms) {
      aspen_parse_missing_field(err, pc, where, opt, "unit");
      return false;
   }
   if (size > INT64_MAX / unit_ms) {
      aspen_parse_error(err, pc, where, "%s is too large", name);
      return false;
   }
   *ms = size * unit_ms;
   return true;
}

static bool
config_string(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
              const char *k, const char **out, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it)) {
      char opt[96];
      snprintf(opt, sizeof opt, "$source.config.%s", k);
      aspen_parse_error(err, pc, opt,
                        "BSON field '%s' is the wrong type '%s', expected "
                        "type 'string'",
                        opt, type_name(bson_iter_type(it)));
      return false;
   }
   *out = bson_iter_utf8(it, NULL);
   return true;
}

static bool
bad_enum(const aspen_parse_ctx_t *pc, const char *k, const char *v,
         aspen_error_t *err)
{
   char opt[96];
   snprintf(opt, sizeof opt, "$source.config.%s", k);
   aspen_parse_error(err, pc, opt,
                     "Enumeration value '%s' for field '%s' is not a valid "
                     "value.",
                     v, opt);
   return false;
}

static bool
parse_config(aspen_kafka_source_opts_t *o, const bson_iter_t *it,
             const aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "$source.config",
                        "BSON field '$source.config' is the wrong type '%s', "
                        "expected type 'object'",
                        type_name(bson_iter_type(it)));
      return false;
   }
   bson_iter_t ci;
   bson_iter_recurse(it, &ci);
   while (bson_iter_next(&ci)) {
      const char *k = bson_iter_key(&ci);
      const char *v = NULL;
      if (strcmp(k, "auto_offset_reset") == 0) {
         if (!config_string(&ci, pc, k, &v, err)) {
            return false;
         }
         if (strcmp(v, "earliest") == 0 || strcmp(v, "beginning") == 0 ||
             strcmp(v, "smallest") == 0) {
            o->earliest = true;
         } else if (strcmp(v, "latest") == 0 || strcmp(v, "end") == 0 ||
                    strcmp(v, "largest") == 0) {
            o->earliest = false;
         } else {
            return bad_enum(pc, k, v, err);
         }
      } else if (strcmp(k, "group_id") == 0) {
         if (!config_string(&ci, pc, k, &v, err)) {
            return false;
         }
         if (!*v) {
            aspen_parse_error(err, pc, "$source.config.group_id",
                              "$source.config.group_id cannot be empty");
            return false;
         }
         free(o->group_id);
         o->group_id = aspen_xstrdup(v);
      } else if (strcmp(k, "enable_auto_commit") == 0) {
         if (!BSON_ITER_HOLDS_BOOL(&ci)) {
            aspen_parse_error(err, pc, "$source.config.enable_auto_commit",
                              "BSON field '$source.config.enable_auto_commit' "
                              "is the wrong type '%s', expected type 'bool'",
                              type_name(bson_iter_type(&ci)));
            return false;
         }
         o->enable_auto_commit = bson_iter_bool(&ci) ? 1 : 0;
      } else if (strcmp(k, "keyFormat") == 0) {
         if (!config_string(&ci, pc, k, &v, err)) {
            return false;
         }
         if (!aspen__kafka_key_format_parse(v, &o->key_format)) {
            return bad_enum(pc, k, v, err);
         }
      } else if (strcmp(k, "keyFormatError") == 0) {
         if (!config_string(&ci, pc, k, &v, err)) {
            return false;
         }
         if (strcmp(v, "dlq") == 0) {
            o->key_error_pass_through = false;
         } else if (strcmp(v, "passThrough") == 0) {
            o->key_error_pass_through = true;
         } else {
            return bad_enum(pc, k, v, err);
         }
      } else {
         char opt[96];
         snprintf(opt, sizeof opt, "$source.config.%s", k);
         aspen_parse_unknown_field(err, pc, opt, "$source.config", k);
         return false;
      }
   }
   return true;
}

/* $source.schemaRegistry: {connectionName} (ASP documents no other
 * field). */
static bool
parse_schema_registry(aspen_kafka_source_opts_t *o, const bson_iter_t *it,
                      const aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "$source.schemaRegistry",
                        "BSON field '$source.schemaRegistry' is the wrong "
                        "type '%s', expected type 'object'",
                        type_name(bson_iter_type(it)));
      return false;
   }
   bson_iter_t ci;
   bool named = false;
   bson_iter_recurse(it, &ci);
   while (bson_iter_next(&ci)) {
      const char *k = bson_iter_key(&ci);
      if (strcmp(k, "connectionName") == 0) {
         if (!aspen__sr_conn_resolve(&ci, pc, "$source.schemaRegistry",
                                     &o->schema_registry, err)) {
            return false;
         }
         named = true;
      } else {
         char opt[96];
         snprintf(opt, sizeof opt, "$source.schemaRegistry.%s", k);
         aspen_parse_unknown_field(err, pc, opt, NULL, opt);
         return false;
      }
   }
   if (!named) {
      aspen_parse_missing_field(err, pc,
                                "$source.schemaRegistry.connectionName",
                                "$source.schemaRegistry", "connectionName");
      return false;
   }
   return true;
}

bool
aspen__kafka_source_parse_option(aspen_source_spec_t *src,
                                 const bson_iter_t *it, aspen_parse_ctx_t *pc,
                                 bool *handled, aspen_error_t *err)
{
   const char *k = bson_iter_key(it);
   aspen_kafka_source_opts_t *o = opts_of(src);
   *handled = true;
   if (strcmp(k, "topic") == 0) {
      if (o->n_topics) {
         aspen_parse_error(err, pc, "$source.topic",
                           "$source.topic is given twice");
         return false;
      }
      return parse_topic(o, it, pc, err);
   }
   if (strcmp(k, "partitionIdleTimeout") == 0) {
      return aspen__source_parse_idle_timeout(
         it, pc, "partitionIdleTimeout", &src->partition_idle_timeout_ms,
         err);
   }
   if (strcmp(k, "config") == 0) {
      return parse_config(o, it, pc, err);
   }
   if (strcmp(k, "schemaRegistry") == 0) {
      return parse_schema_registry(o, it, pc, err);
   }
   *handled = false;
   return true;
}

bool
aspen__kafka_source_parse_done(aspen_source_spec_t *src,
                               aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   aspen_kafka_source_opts_t *o = opts_of(src);
   if (o->n_topics == 0) {
      aspen_parse_missing_field(err, pc, "$source.topic", "$source", "topic");
      return false;
   }
   /* JSON decodes anywhere; Avro needs the source's Schema Registry
    * client and schema cache (one thread). */
   src->per_worker = o->schema_registry == NULL;
   return true;
}

rd_kafka_resp_err_t
aspen__kafka_delivery_error(rd_kafka_resp_err_t err)
{
   return err == RD_KAFKA_RESP_ERR__DESTROY
             ? RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION
             : err;
}
