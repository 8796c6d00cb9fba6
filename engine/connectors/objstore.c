/*
 * objstore.c - the core of $emit to an object store (objstore.h): S3 and
 * Azure Blob Storage write documents into files the same way.
 *
 * Files. Each output document is serialised (config.outputFormat:
 * relaxedJson, the default, canonicalJson or basicJson) and appended to
 * the open file of its path (`path`: a literal or an expression evaluated
 * per document; documents of different paths go to different files),
 * separated by config.delimiter ("\n" by default). A file is cut -- closed,
 * compressed (config.compression: gzip or snappy) and queued for upload as
 * object "<path>/<run>-<n>.json[.gz|.snappy]" -- when it holds
 * config.writeOptions.count documents or .bytes bytes, when its first
 * document is .interval ({size, unit}) old, and whenever a checkpoint may
 * follow (so a checkpoint never records as done a document that is only in
 * memory). config.dateFormat ISO8601 writes Dates as strings and
 * config.compressionLevel is gzip's level (1-9, default 6).
 *
 * Uploads. An object is written whole, with one PUT: the store shows it
 * complete or not at all, so a crash never leaves a truncated object. The
 * uploads run on libcurl's multi interface, driven from write and flush on
 * the processor's thread without waiting per document. At most
 * MAX_INFLIGHT_BYTES of cut files may wait for their upload; beyond that
 * write waits (back-pressure). A flush after which a checkpoint may follow
 * waits for every upload, so the checkpoint is taken only once everything
 * before it is in the store (at-least-once: a crash replays what came after
 * the last checkpoint, which may write those documents again in new
 * objects).
 *
 * Faults. A store that cannot be reached, answers 5xx, throttles (503
 * SlowDown, 429) or times out is retried with a growing pause (up to
 * RETRY_MAX_MS), indefinitely while the processor runs, while the documents
 * back up behind the in-flight limit. A refused request (401/403:
 * credentials; 404: no such bucket or container; other 4xx) fails the
 * processor with the store's code and message. At a stop, uploads that
 * still fail after STOP_GRACE_MS fail the processor (its last checkpoint
 * stays, so nothing is lost).
 */
#include "connectors/objstore.h"
#include "connectors/connectors.h"
#include "connectors/http_easy.h"
#include "connectors/kafka_int.h"
#include "connectors/sink_int.h"

#include <openssl/evp.h>
#include <snappy-c.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <zlib.h>

#define MAX_PATHS 1000
#define MAX_INFLIGHT_BYTES (64 * 1024 * 1024)
#define MAX_ACTIVE 4
#define RETRY_FIRST_MS 100
#define RETRY_MAX_MS 5000
#define STOP_GRACE_MS 30000
#define REQUEST_TIMEOUT_MS 60000
#define DEFAULT_BYTES (16 * 1024 * 1024)
#define DEFAULT_INTERVAL_MS 60000
#define MAX_INTERVAL_MS (7LL * 24 * 3600 * 1000) /* ASP: at most 7 days */
#define DEFAULT_GZIP_LEVEL 6
#define RESP_MAX 2048
/* A file larger than this goes up in parts of this size (S3's smallest
 * part is 5 MiB). */
#define PART_SIZE (8 * 1024 * 1024)

typedef enum { COMP_NONE, COMP_GZIP, COMP_SNAPPY } comp_t;

/* A file being filled: the documents of one path since its last cut. */
typedef struct {
   char *path;
   char *data;
   size_t len, cap;
   int64_t count;
   int64_t first_ms; /* monotonic time of its first document */
} file_t;

/* An object to upload, and its request while one is in flight. A large
 * one goes up in n_parts parts: MP_BEGIN (where the store has it), each
 * MP_PART, then MP_COMMIT; `step` is the request to make next. */
typedef struct upload {
   struct upload *next;
   char *key;
   char *body;
   size_t len;
   aspen_objreq_kind_t step;
   int part, n_parts;
   char *upload_id;
   char **etags;  /* per part, from its answer */
   char *commit;  /* MP_COMMIT's body */
   char etag[256]; /* the ETag header of the answer being read */
   int attempts;
   int64_t not_before_ms; /* monotonic: the next attempt's time */
   CURL *h;               /* while in flight */
   struct curl_slist *hdrs;
   char resp[RESP_MAX];
   size_t resp_len;
} upload_t;

typedef struct {
   const aspen_objstore_backend_t *be;
   const aspen_conn_t *conn;
   char *bucket;
   char *region;
   aspen_expr_t *path;
   char *delimiter;
   aspen_kafka_json_opts_t json; /* config.outputFormat, .dateFormat */
   comp_t comp;
   int gzip_level; /* config.compressionLevel, 1..9 */
   int64_t max_count;   /* 0: no limit */
   int64_t max_bytes;
   int64_t interval_ms;
   /* Run time. */
   aspen_runtime_t *rt;
   char run[40]; /* unique prefix of this run's object names */
   uint64_t n_objects;
   file_t *files;
   int n_files;
   CURLM *multi;
   upload_t *queue; /* waiting or in flight, in cut order */
   int active;
   size_t queued_bytes;
   int64_t down_since_ms; /* monotonic: first failed attempt of an outage */
   char fatal[ASPEN_ERROR_MSG_MAX];
   int32_t fatal_code;
} objstore_t;

/* ---- options ---------------------------------------------------------------- */

static void
objstore_free_opts(objstore_t *s)
{
   free(s->bucket);
   free(s->region);
   aspen_expr_destroy(s->path);
   free(s->delimiter);
   s->bucket = s->region = s->delimiter = NULL;
   s->path = NULL;
}

static bool
positive_int(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
             const char *opt, int64_t *out, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_INT32(it) && !BSON_ITER_HOLDS_INT64(it) &&
       !BSON_ITER_HOLDS_DOUBLE(it)) {
      aspen_parse_error(err, pc, opt,
                        "BSON field '$emit.%s' is the wrong type, expected "
                        "a number",
                        opt);
      return false;
   }
   double d = bson_iter_as_double(it);
   if (!(d >= 1) || d > 9.0e15 || d != (double) (int64_t) d) {
      aspen_parse_error(err, pc, opt,
                        "BSON field '$emit.%s' must be a positive integer",
                        opt);
      return false;
   }
   *out = (int64_t) d;
   return true;
}

/* The index in `allowed` of the enumerated option `it`. */
static bool
enum_index(const bson_iter_t *it, const char *const *allowed,
           const aspen_parse_ctx_t *pc, const char *opt, int *out,
           aspen_error_t *err)
{
   const char *v = NULL;
   if (!aspen__sink_enum_value(it, allowed, pc, opt, &v, err)) {
      return false;
   }
   for (*out = 0; allowed[*out] != v; (*out)++) {
   }
   return true;
}

static bool
parse_write_options(objstore_t *s, const bson_iter_t *it,
                    const aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "config.writeOptions",
                        "BSON field '$emit.config.writeOptions' is the wrong "
                        "type, expected type 'object'");
      return false;
   }
   bson_iter_t wi;
   bson_iter_recurse(it, &wi);
   while (bson_iter_next(&wi)) {
      const char *k = bson_iter_key(&wi);
      char opt[96];
      snprintf(opt, sizeof opt, "config.writeOptions.%s", k);
      if (strcmp(k, "interval") == 0) {
         /* ASP's {size, unit}: not 0, at most 7 days. */
         char field[112];
         snprintf(field, sizeof field, "$emit.%s", opt);
         if (!aspen__parse_duration(&wi, pc, opt, field, &s->interval_ms,
                                    err)) {
            return false;
         }
         if (s->interval_ms <= 0 || s->interval_ms > MAX_INTERVAL_MS) {
            aspen_parse_error(err, pc, opt,
                              "BSON field '$emit.%s' must be more than 0 "
                              "and at most 7 days",
                              opt);
            return false;
         }
         continue;
      }
      int64_t *slot = strcmp(k, "count") == 0   ? &s->max_count
                      : strcmp(k, "bytes") == 0 ? &s->max_bytes
                                                : NULL;
      if (!slot) {
         aspen_parse_unknown_field(err, pc, opt, "$emit", opt);
         return false;
      }
      if (!positive_int(&wi, pc, opt, slot, err)) {
         return false;
      }
   }
   return true;
}

/* An object store's option of $emit.config (aspen__emit_config_opt_fn). */
static bool
config_opt(void *sink, const bson_iter_t *ci, const char *k, const char *opt,
           const aspen_parse_ctx_t *pc, bool *known, aspen_error_t *err)
{
   static const char *const comps[] = {"none", "gzip", "snappy", NULL};
   objstore_t *s = sink;
   if (strcmp(k, "compression") == 0) {
      int v;
      if (!enum_index(ci, comps, pc, opt, &v, err)) {
         return false;
      }
      s->comp = (comp_t) v;
   } else if (strcmp(k, "compressionLevel") == 0) {
      /* gzip's level; with snappy it has no effect (ASP). */
      int64_t level;
      if (!positive_int(ci, pc, opt, &level, err)) {
         return false;
      }
      if (level > 9) {
         aspen_parse_error(err, pc, opt,
                           "BSON field '$emit.%s' must be between 1 and "
                           "9",
                           opt);
         return false;
      }
      s->gzip_level = (int) level;
   } else if (strcmp(k, "delimiter") == 0) {
      if (!BSON_ITER_HOLDS_UTF8(ci)) {
         aspen_parse_error(err, pc, opt,
                           "BSON field '$emit.%s' is the wrong type, "
                           "expected type 'string'",
                           opt);
         return false;
      }
      free(s->delimiter);
      s->delimiter = aspen_xstrdup(bson_iter_utf8(ci, NULL));
   } else if (strcmp(k, "writeOptions") == 0) {
      return parse_write_options(s, ci, pc, err);
   } else {
      *known = false;
   }
   return true;
}

static bool
nonempty_string(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                const char *k, char **out, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it) || !*bson_iter_utf8(it, NULL)) {
      aspen_parse_error(err, pc, k,
                        "BSON field '$emit.%s' must be a non-empty string", k);
      return false;
   }
   free(*out);
   *out = aspen_xstrdup(bson_iter_utf8(it, NULL));
   return true;
}

/* Validates an $emit argument for backend `be` and compiles it into `s`
 * (the path expression borrows from `spec`). */
static bool
compile(objstore_t *s, const aspen_objstore_backend_t *be, const bson_t *spec,
        const aspen_conns_t *conns, const aspen_parse_ctx_t *pc,
        aspen_error_t *err)
{
   memset(s, 0, sizeof *s);
   s->be = be;
   s->max_bytes = DEFAULT_BYTES;
   s->interval_ms = DEFAULT_INTERVAL_MS;
   s->gzip_level = DEFAULT_GZIP_LEVEL;
   const char *conn_name = NULL;
   bson_iter_t it;
   bson_iter_init(&it, spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "connectionName") == 0) {
         if (!aspen__emit_conn_name(&it, pc, &conn_name, err)) {
            return false;
         }
      } else if (strcmp(k, be->bucket_opt) == 0) {
         if (!nonempty_string(&it, pc, k, &s->bucket, err)) {
            return false;
         }
      } else if (be->has_region && strcmp(k, "region") == 0) {
         if (!nonempty_string(&it, pc, k, &s->region, err)) {
            return false;
         }
      } else if (strcmp(k, "path") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&it) && !BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_parse_error(err, pc, "path",
                              "BSON field '$emit.path' must be a string or "
                              "an expression");
            return false;
         }
         aspen_expr_destroy(s->path);
         s->path = NULL;
         if (!aspen_expr_parse(&it, NULL, &s->path, err)) {
            char msg[ASPEN_ERROR_MSG_MAX];
            snprintf(msg, sizeof msg, "%s", err->message);
            aspen_parse_error(err, pc, "path", "%s", msg);
            return false;
         }
      } else if (strcmp(k, "config") == 0) {
         if (!aspen__emit_config_parse(&it, pc, true, &s->json, config_opt,
                                       s, err)) {
            return false;
         }
      } else {
         aspen_parse_unknown_field(err, pc, k, "$emit", k);
         return false;
      }
   }
   s->conn = aspen__emit_conn_find(conns, conn_name, be->kind, pc, err);
   if (!s->conn) {
      return false;
   }
   if (!s->bucket) {
      aspen_parse_missing_field(err, pc, be->bucket_opt, "$emit",
                                be->bucket_opt);
      return false;
   }
   if (!s->delimiter) {
      s->delimiter = aspen_xstrdup("\n");
   }
   return true;
}

bool
aspen__objstore_parse(const aspen_objstore_backend_t *be, const bson_t *spec,
                      aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   objstore_t s;
   bool ok = compile(&s, be, spec, pc->conns, pc, err);
   objstore_free_opts(&s);
   return ok;
}

/* ---- serialising ------------------------------------------------------------ */

/* basicJson is kafka.c's, as for $emit to Kinesis: ASP's simplified
 * values (Dates as milliseconds, ObjectIds and Decimal128s as strings,
 * binary data as base64, ...). */
static char *
serialise(const objstore_t *s, const bson_t *doc, size_t *len)
{
   return aspen__kafka_json_encode(doc, &s->json, len);
}

/* ---- compression ------------------------------------------------------------ */

/* Compresses `len` bytes at `in` per `comp` (gzip at `gzip_level`) into a new buffer (*out,
 * *out_len); false (err set) on failure. */
static bool
compress_file(comp_t comp, int gzip_level, const char *in, size_t len,
              char **out, size_t *out_len, aspen_error_t *err)
{
   if (comp == COMP_SNAPPY) {
      size_t cap = snappy_max_compressed_length(len);
      *out = aspen_xmalloc(cap ? cap : 1);
      *out_len = cap;
      if (snappy_compress(in, len, *out, out_len) != SNAPPY_OK) {
         free(*out);
         *out = NULL;
         aspen_error_set(err, ASPEN_ERR_InternalError,
                         "snappy compression failed");
         return false;
      }
      return true;
   }
   z_stream zs;
   memset(&zs, 0, sizeof zs);
   /* windowBits 15 + 16: a gzip stream (header and trailer), as gzip(1). */
   if (deflateInit2(&zs, gzip_level, Z_DEFLATED, 15 + 16, 8,
                    Z_DEFAULT_STRATEGY) != Z_OK) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "gzip init failed");
      return false;
   }
   size_t cap = deflateBound(&zs, (uLong) len) + 32;
   *out = aspen_xmalloc(cap);
   zs.next_in = (Bytef *) in;
   zs.avail_in = (uInt) len;
   zs.next_out = (Bytef *) *out;
   zs.avail_out = (uInt) cap;
   int rc = deflate(&zs, Z_FINISH);
   *out_len = cap - zs.avail_out;
   deflateEnd(&zs);
   if (rc != Z_STREAM_END) {
      free(*out);
      *out = NULL;
      aspen_error_set(err, ASPEN_ERR_InternalError, "gzip compression failed");
      return false;
   }
   return true;
}

/* ---- uploads ---------------------------------------------------------------- */

static size_t
on_body(char *ptr, size_t size, size_t n, void *arg)
{
   upload_t *u = arg;
   size_t len = size * n;
   size_t room = sizeof u->resp - 1 - u->resp_len;
   size_t take = len < room ? len : room;
   memcpy(u->resp + u->resp_len, ptr, take);
   u->resp_len += take;
   u->resp[u->resp_len] = '\0';
   return len;
}

static size_t
on_header(char *ptr, size_t size, size_t n, void *arg)
{
   upload_t *u = arg;
   size_t len = size * n;
   if (len > 5 && strncasecmp(ptr, "etag:", 5) == 0) {
      const char *v = ptr + 5;
      size_t vlen = len - 5;
      while (vlen > 0 && (*v == ' ' || *v == '\t')) {
         v++;
         vlen--;
      }
      while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n')) {
         vlen--;
      }
      vlen = vlen < sizeof u->etag - 1 ? vlen : sizeof u->etag - 1;
      memcpy(u->etag, v, vlen);
      u->etag[vlen] = '\0';
   }
   return len;
}

static void
upload_free(upload_t *u)
{
   for (int i = 0; u->etags && i < u->n_parts; i++) {
      free(u->etags[i]);
   }
   free(u->etags);
   free(u->upload_id);
   free(u->commit);
   free(u->key);
   free(u->body);
   free(u);
}

static void
set_fatal(objstore_t *s, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));

static void
set_fatal(objstore_t *s, int32_t code, const char *fmt, ...)
{
   if (s->fatal[0]) {
      return;
   }
   char detail[ASPEN_ERROR_MSG_MAX];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(detail, sizeof detail, fmt, ap);
   va_end(ap);
   snprintf(s->fatal, sizeof s->fatal, "%s $emit to %s '%s' (connection "
            "'%s') failed: %s",
            s->be->label, s->be->bucket_opt, s->bucket, s->conn->name, detail);
   s->fatal_code = code;
}

void
aspen__objstore_xml_field(const char *xml, const char *tag, char *out,
                          size_t size)
{
   char open[48], close[48];
   snprintf(open, sizeof open, "<%s>", tag);
   snprintf(close, sizeof close, "</%s>", tag);
   out[0] = '\0';
   const char *a = strstr(xml, open);
   const char *b = a ? strstr(a, close) : NULL;
   if (a && b) {
      a += strlen(open);
      size_t n = (size_t) (b - a);
      n = n < size - 1 ? n : size - 1;
      memcpy(out, a, n);
      out[n] = '\0';
   }
}

/* What a store's refusal says: its status, code and message. */
static void
refusal(long status, const char *body, char *out, size_t size)
{
   char code[128], msg[512];
   aspen__objstore_xml_field(body, "Code", code, sizeof code);
   aspen__objstore_xml_field(body, "Message", msg, sizeof msg);
   const char *why = status == 401 || status == 403 ? "authentication failed "
                                                      "(check the "
                                                      "connection's "
                                                      "credentials): "
                     : status == 404 ? "not found: "
                                     : "";
   snprintf(out, size, "%sHTTP %ld%s%s%s%s", why, status, code[0] ? " " : "",
            code, msg[0] ? ": " : "", msg);
}

static bool
start_request(objstore_t *s, upload_t *u)
{
   aspen_error_t err;
   u->h = curl_easy_init();
   u->hdrs = NULL;
   u->resp_len = 0;
   u->resp[0] = '\0';
   if (!u->h) {
      set_fatal(s, ASPEN_ERR_InternalError, "curl_easy_init failed");
      return false;
   }
   curl_easy_setopt(u->h, CURLOPT_NOSIGNAL, 1L);
   curl_easy_setopt(u->h, CURLOPT_TIMEOUT_MS, (long) REQUEST_TIMEOUT_MS);
   curl_easy_setopt(u->h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
   curl_easy_setopt(u->h, CURLOPT_WRITEFUNCTION, on_body);
   curl_easy_setopt(u->h, CURLOPT_WRITEDATA, u);
   curl_easy_setopt(u->h, CURLOPT_PRIVATE, u);
   curl_easy_setopt(u->h, CURLOPT_HEADERFUNCTION, on_header);
   curl_easy_setopt(u->h, CURLOPT_HEADERDATA, u);
   u->etag[0] = '\0';
   aspen_objreq_t req = {.kind = u->step, .key = u->key,
                         .upload_id = u->upload_id, .part = u->part};
   if (u->step == ASPEN_OBJ_PUT) {
      req.body = u->body;
      req.len = u->len;
   } else if (u->step == ASPEN_OBJ_MP_PART) {
      size_t off = (size_t) (u->part - 1) * PART_SIZE;
      req.body = u->body + off;
      req.len = u->len - off < PART_SIZE ? u->len - off : PART_SIZE;
   } else if (u->step == ASPEN_OBJ_MP_COMMIT) {
      req.body = u->commit;
      req.len = strlen(u->commit);
   }
   if (!s->be->request(s->conn, s->region, s->bucket, &req, u->h, &u->hdrs,
                       &err)) {
      set_fatal(s, err.code, "%s", err.message);
      curl_easy_cleanup(u->h);
      curl_slist_free_all(u->hdrs);
      u->h = NULL;
      u->hdrs = NULL;
      return false;
   }
   curl_easy_setopt(u->h, CURLOPT_HTTPHEADER, u->hdrs);
   curl_multi_add_handle(s->multi, u->h);
   s->active++;
   return true;
}

static void
end_request(objstore_t *s, upload_t *u)
{
   curl_multi_remove_handle(s->multi, u->h);
   curl_easy_cleanup(u->h);
   curl_slist_free_all(u->hdrs);
   u->h = NULL;
   u->hdrs = NULL;
   s->active--;
}

static void
unlink_upload(objstore_t *s, upload_t *u)
{
   for (upload_t **p = &s->queue; *p; p = &(*p)->next) {
      if (*p == u) {
         *p = u->next;
         break;
      }
   }
   s->queued_bytes -= u->len;
   upload_free(u);
}

/* After a successful request: the upload's next one, or done. */
static void
next_step(objstore_t *s, upload_t *u)
{
   u->attempts = 0;
   u->not_before_ms = 0;
   switch (u->step) {
   case ASPEN_OBJ_MP_BEGIN:
      u->upload_id = s->be->upload_id(u->resp);
      if (!u->upload_id) {
         set_fatal(s, s->be->code,
                   "the store's answer to starting a multipart upload of "
                   "'%s' has no upload id",
                   u->key);
         return;
      }
      u->step = ASPEN_OBJ_MP_PART;
      u->part = 1;
      return;
   case ASPEN_OBJ_MP_PART:
      u->etags[u->part - 1] = aspen_xstrdup(u->etag);
      if (++u->part <= u->n_parts) {
         return;
      }
      u->commit = s->be->commit_body(u->n_parts, u->etags);
      u->step = ASPEN_OBJ_MP_COMMIT;
      return;
   default:
      unlink_upload(s, u); /* the object is there, whole */
      return;
   }
}

/* A finished request: done, retried later, or fatal. */
static void
finished(objstore_t *s, upload_t *u, CURLcode rc)
{
   long status = 0;
   curl_easy_getinfo(u->h, CURLINFO_RESPONSE_CODE, &status);
   char curl_msg[256];
   snprintf(curl_msg, sizeof curl_msg, "%s", curl_easy_strerror(rc));
   end_request(s, u);
   int64_t now = aspen_clock_mono_ms();
   /* S3 may answer a CompleteMultipartUpload with 200 and an error in the
    * body; it asks for the request again. */
   bool body_error = u->step == ASPEN_OBJ_MP_COMMIT && strstr(u->resp, "<Error>");
   if (rc == CURLE_OK && status >= 200 && status < 300 && !body_error) {
      if (s->down_since_ms) {
         aspen_logf(ASPEN_LOG_INFO, "STREAMS",
                    aspen_rt_processor_name(s->rt),
                    "%s $emit: the store answers again; uploads resume",
                    s->be->label);
         s->down_since_ms = 0;
      }
      next_step(s, u);
      return;
   }
   bool transient = rc != CURLE_OK || status >= 500 || status == 429 ||
                    status == 408 || body_error;
   if (!transient) {
      char why[ASPEN_ERROR_MSG_MAX];
      refusal(status, u->resp, why, sizeof why);
      set_fatal(s, s->be->code, "%s", why);
      return;
   }
   u->attempts++;
   int64_t pause = RETRY_FIRST_MS;
   for (int i = 1; i < u->attempts && pause < RETRY_MAX_MS; i++) {
      pause *= 2;
   }
   u->not_before_ms = now + (pause < RETRY_MAX_MS ? pause : RETRY_MAX_MS);
   if (!s->down_since_ms) {
      s->down_since_ms = now;
      char why[512];
      if (rc != CURLE_OK) {
         snprintf(why, sizeof why, "%s", curl_msg);
      } else {
         refusal(status, u->resp, why, sizeof why);
      }
      aspen_logf(ASPEN_LOG_WARNING, "STREAMS",
                 aspen_rt_processor_name(s->rt),
                 "%s $emit to %s '%s': upload of '%s' failed (%s); "
                 "retrying with back-off",
                 s->be->label, s->be->bucket_opt, s->bucket, u->key, why);
   }
}

/* Drives the uploads: starts those due, serves libcurl, and waits up to
 * `wait_ms` for something to happen. */
static void
pump(objstore_t *s, int wait_ms)
{
   int64_t now = aspen_clock_mono_ms();
   int64_t next_retry = -1;
   for (upload_t *u = s->queue; u && s->active < MAX_ACTIVE && !s->fatal[0];
        u = u->next) {
      if (u->h) {
         continue;
      }
      if (u->not_before_ms > now) {
         if (next_retry < 0 || u->not_before_ms < next_retry) {
            next_retry = u->not_before_ms;
         }
         continue;
      }
      if (!start_request(s, u)) {
         return;
      }
   }
   int running = 0;
   curl_multi_perform(s->multi, &running);
   CURLMsg *m;
   int left;
   while ((m = curl_multi_info_read(s->multi, &left))) {
      if (m->msg != CURLMSG_DONE) {
         continue;
      }
      upload_t *u = NULL;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &u);
      finished(s, u, m->data.result);
   }
   if (wait_ms > 0 && !s->fatal[0]) {
      if (s->active > 0) {
         curl_multi_poll(s->multi, NULL, 0, wait_ms, NULL);
      } else if (next_retry > 0 || s->queue) {
         int64_t ms = next_retry > 0 ? next_retry - now : wait_ms;
         ms = ms < 1 ? 1 : ms > wait_ms ? wait_ms : ms;
         struct timespec ts = {.tv_sec = ms / 1000,
                               .tv_nsec = (ms % 1000) * 1000000};
         nanosleep(&ts, NULL);
      }
   }
}

/* Waits until the queued bytes are at most `limit` (0: every upload done).
 * At a stop, gives up after STOP_GRACE_MS. False (err set) on a fatal
 * error. */
static bool
drain(objstore_t *s, size_t limit, aspen_error_t *err)
{
   int64_t deadline = 0;
   while (!s->fatal[0] && (limit ? s->queued_bytes > limit : s->queue != NULL)) {
      if (aspen_rt_stopping(s->rt)) {
         int64_t now = aspen_clock_mono_ms();
         if (!deadline) {
            deadline = now + STOP_GRACE_MS;
         } else if (now > deadline) {
            set_fatal(s, s->be->conn_code,
                      "the store could not be reached to upload %zu bytes "
                      "before the stop (they are written again from the "
                      "last checkpoint at the next start)",
                      s->queued_bytes);
            break;
         }
      }
      pump(s, 100);
   }
   if (s->fatal[0]) {
      aspen_error_set(err, s->fatal_code, "%s", s->fatal);
      return false;
   }
   return true;
}

/* ---- files ------------------------------------------------------------------ */

static const char *
extension(const objstore_t *s)
{
   return s->comp == COMP_GZIP     ? ".json.gz"
          : s->comp == COMP_SNAPPY ? ".json.snappy"
                                   : ".json";
}

/* Closes file `f` and queues its upload; the file is empty after. */
static bool
cut(objstore_t *s, file_t *f, aspen_error_t *err)
{
   if (f->count == 0) {
      return true;
   }
   upload_t *u = aspen_xcalloc(1, sizeof *u);
   size_t plen = strlen(f->path);
   const char *sep = plen == 0 || f->path[plen - 1] == '/' ? "" : "/";
   char name[128];
   snprintf(name, sizeof name, "%s-%06llu%s", s->run,
            (unsigned long long) ++s->n_objects, extension(s));
   size_t klen = plen + strlen(sep) + strlen(name) + 1;
   u->key = aspen_xmalloc(klen);
   snprintf(u->key, klen, "%s%s%s", f->path, sep, name);
   if (s->comp == COMP_NONE) {
      u->body = f->data;
      u->len = f->len;
      f->data = NULL;
      f->cap = 0;
   } else if (!compress_file(s->comp, s->gzip_level, f->data, f->len,
                             &u->body, &u->len, err)) {
      upload_free(u);
      return false;
   }
   f->len = 0;
   f->count = 0;
   u->step = ASPEN_OBJ_PUT;
   if (u->len > PART_SIZE) {
      u->n_parts = (int) ((u->len + PART_SIZE - 1) / PART_SIZE);
      u->etags = aspen_xcalloc((size_t) u->n_parts, sizeof *u->etags);
      u->step = s->be->mp_begin ? ASPEN_OBJ_MP_BEGIN : ASPEN_OBJ_MP_PART;
      u->part = 1;
   }
   upload_t **tail = &s->queue;
   while (*tail) {
      tail = &(*tail)->next;
   }
   *tail = u;
   s->queued_bytes += u->len;
   return true;
}

static file_t *
file_for(objstore_t *s, const char *path, aspen_error_t *err)
{
   for (int i = 0; i < s->n_files; i++) {
      if (strcmp(s->files[i].path, path) == 0) {
         return &s->files[i];
      }
   }
   if (s->n_files >= MAX_PATHS) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorTooManyOutputTargets,
                      "Too many unique paths: %d", s->n_files + 1);
      return NULL;
   }
   s->files = aspen_xrealloc(s->files,
                             (size_t) (s->n_files + 1) * sizeof *s->files);
   file_t *f = &s->files[s->n_files++];
   memset(f, 0, sizeof *f);
   f->path = aspen_xstrdup(path);
   return f;
}

static void
append(file_t *f, const char *data, size_t len)
{
   if (f->len + len > f->cap) {
      size_t cap = f->cap ? f->cap : 4096;
      while (cap < f->len + len) {
         cap *= 2;
      }
      f->data = aspen_xrealloc(f->data, cap);
      f->cap = cap;
   }
   memcpy(f->data + f->len, data, len);
   f->len += len;
}

/* Cuts the files whose interval has passed (all of them with `all`). */
static bool
cut_due(objstore_t *s, bool all, aspen_error_t *err)
{
   int64_t now = aspen_clock_mono_ms();
   for (int i = 0; i < s->n_files; i++) {
      file_t *f = &s->files[i];
      if (f->count > 0 && (all || now - f->first_ms >= s->interval_ms) &&
          !cut(s, f, err)) {
         return false;
      }
   }
   return true;
}

void
aspen__objstore_encode(const char *s, bool keep_slash, char *out, size_t size)
{
   static const char hex[] = "0123456789ABCDEF";
   size_t n = strlen(out);
   for (; *s && n + 4 < size; s++) {
      unsigned char c = (unsigned char) *s;
      if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
          c == '~' || (c == '/' && keep_slash)) {
         out[n++] = (char) c;
      } else {
         out[n++] = '%';
         out[n++] = hex[c >> 4];
         out[n++] = hex[c & 15];
      }
   }
   out[n] = '\0';
}

/* ---- the sink --------------------------------------------------------------- */

bool
aspen__objstore_open(const aspen_objstore_backend_t *be, aspen_runtime_t *rt,
                     const bson_t *spec, void **state, aspen_error_t *err)
{
   *state = NULL;
   objstore_t *s = aspen_xcalloc(1, sizeof *s);
   aspen_parse_ctx_t pc = {0};
   pc.conns = aspen_rt_conns(rt);
   if (!compile(s, be, spec, pc.conns, &pc, err)) {
      objstore_free_opts(s);
      free(s);
      return false;
   }
   s->rt = rt;
   snprintf(s->run, sizeof s->run, "%lld-%08x",
            (long long) aspen_clock_now_ms(),
            (unsigned) (aspen_rt_random(rt) & 0xffffffffu));
   s->multi = curl_multi_init();
   /* Reach the store now: a wrong endpoint, wrong credentials or a
    * missing bucket fail the start. */
   upload_t probe = {0};
   CURL *h = curl_easy_init();
   struct curl_slist *hdrs = NULL;
   aspen_objreq_t req = {.kind = ASPEN_OBJ_PROBE};
   bool ok = h && be->request(s->conn, s->region, s->bucket, &req, h, &hdrs,
                              err);
   if (ok) {
      curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
      curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
      curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
      curl_easy_setopt(h, CURLOPT_WRITEDATA, &probe);
      /* On the sink's multi handle, waited on in slices: a stop while
       * the processor starts ends the wait at once. */
      CURLcode rc = aspen__http_easy_perform(
         s->multi, h, aspen__http_easy_stop_requested, NULL);
      long status = 0;
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
      if (rc != CURLE_OK) {
         set_fatal(s, be->conn_code, "cannot reach the store: %s",
                   curl_easy_strerror(rc));
      } else if (status < 200 || status >= 300) {
         char why[ASPEN_ERROR_MSG_MAX];
         refusal(status, probe.resp, why, sizeof why);
         set_fatal(s, status >= 500 ? be->conn_code : be->code, "%s", why);
      }
      if (s->fatal[0]) {
         aspen_error_set(err, s->fatal_code, "%s", s->fatal);
         ok = false;
      }
   }
   curl_slist_free_all(hdrs);
   if (h) {
      curl_easy_cleanup(h);
   }
   if (!ok) {
      aspen__objstore_close(s);
      return false;
   }
   *state = s;
   return true;
}

bool
aspen__objstore_write(aspen_runtime_t *rt, void *state, const bson_t *doc,
                      aspen_error_t *err)
{
   objstore_t *s = state;
   if (s->fatal[0]) {
      aspen_error_set(err, s->fatal_code, "%s", s->fatal);
      return false;
   }
   const char *path = "";
   aspen_value_t pv = ASPEN_VALUE_MISSING;
   if (s->path) {
      bson_t meta;
      aspen_expr_ctx_t ctx = {.root = doc, .meta = NULL, .now_ms = 0};
      if (aspen__sink_stream_meta(doc, &meta)) {
         ctx.meta = &meta;
      }
      aspen_error_t xerr;
      char reason[ASPEN_ERROR_MSG_MAX + 64];
      if (!aspen_expr_eval(s->path, &ctx, &pv, &xerr)) {
         snprintf(reason, sizeof reason,
                  "Failed to evaluate the $emit path: %s", xerr.message);
         aspen_rt_sink_failed(rt, doc, reason);
         aspen_value_destroy(&pv);
         return true;
      }
      if (pv.v.value_type != BSON_TYPE_UTF8) {
         snprintf(reason, sizeof reason,
                  "The $emit path must evaluate to a string, not %s",
                  aspen_value_type_name(&pv));
         aspen_rt_sink_failed(rt, doc, reason);
         aspen_value_destroy(&pv);
         return true;
      }
      path = pv.v.value.v_utf8.str;
   }
   file_t *f = file_for(s, path, err);
   aspen_value_destroy(&pv);
   if (!f) {
      return false;
   }
   size_t len;
   char *json = serialise(s, doc, &len);
   size_t dlen = strlen(s->delimiter);
   if (f->count > 0 && s->max_bytes &&
       (int64_t) (f->len + dlen + len) > s->max_bytes) {
      /* This document would take the file over its size: cut first. */
      if (!cut(s, f, err)) {
         bson_free(json);
         return false;
      }
   }
   if (f->count == 0) {
      f->first_ms = aspen_clock_mono_ms();
   } else {
      append(f, s->delimiter, dlen);
   }
   append(f, json, len);
   bson_free(json);
   f->count++;
   if ((s->max_count && f->count >= s->max_count) ||
       (int64_t) f->len >= s->max_bytes) {
      if (!cut(s, f, err)) {
         return false;
      }
   }
   if (!cut_due(s, false, err)) {
      return false;
   }
   pump(s, 0);
   /* Back-pressure: wait while too much waits for the store. */
   return drain(s, MAX_INFLIGHT_BYTES, err);
}

bool
aspen__objstore_flush(aspen_runtime_t *rt, void *state, aspen_error_t *err)
{
   objstore_t *s = state;
   if (s->fatal[0]) {
      aspen_error_set(err, s->fatal_code, "%s", s->fatal);
      return false;
   }
   bool all = aspen_rt_checkpoint_due(rt);
   if (!cut_due(s, all, err)) {
      return false;
   }
   if (!all) {
      pump(s, 0);
      if (s->fatal[0]) {
         aspen_error_set(err, s->fatal_code, "%s", s->fatal);
         return false;
      }
      return true;
   }
   return drain(s, 0, err);
}

void
aspen__objstore_close(void *state)
{
   objstore_t *s = state;
   if (!s) {
      return;
   }
   /* What was not uploaded is dropped: the last checkpoint does not count
    * it as done, so it is written again after a restart. */
   while (s->queue) {
      upload_t *u = s->queue;
      if (u->h) {
         end_request(s, u);
      }
      unlink_upload(s, u);
   }
   if (s->multi) {
      curl_multi_cleanup(s->multi);
   }
   for (int i = 0; i < s->n_files; i++) {
      free(s->files[i].path);
      free(s->files[i].data);
   }
   free(s->files);
   objstore_free_opts(s);
   free(s);
}
