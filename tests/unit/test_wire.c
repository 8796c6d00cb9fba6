/*
 * test_wire.c - cmocka unit tests for wire/, aspen's foundation library: the
 * byte buffer, errors, logging, CRC-32C, framing, OP_MSG / OP_QUERY decoding,
 * the reply encoders, the clocks, the hash, little-endian bytes, the
 * atomic file write, the BSON writer and the plain-JSON fast path (against
 * libbson, on hand-picked inputs and on every document of tests/cases).
 *
 * The parser tests follow picohttpparser's test.c: a small independent
 * encoder in this file builds valid messages, and each one is fed to the
 * parsers whole, as every strict prefix, as every header-rewritten
 * truncation and with every one-byte corruption. Every parser input ends
 * exactly at a PROT_NONE guard page and is mapped read-only, so reading one
 * byte past the end (or writing into the frame) faults instead of passing
 * silently. A parser that fails must fail cleanly: a known error code, a
 * message, and its output struct zeroed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../fuzz/bson_iter_check.h"
#include "bsonw.h"
#include "bytes.h"
#include "ejson.h"
#include "file.h"
#include "hash.h"
#include "wire.h"

/* ======================================================================== */
/* Helpers: temporary BSON from relaxed JSON                                 */
/* ======================================================================== */

/* Documents made by tmp_bson live until the end of the current test (freed by
 * tmp_teardown), as in mongoc's test suite. */
static bson_t **tmp_docs;
static size_t tmp_n, tmp_cap;

/* Builds a document from relaxed JSON where single quotes stand for double
 * quotes, so expectations read naturally in C strings. */
static bson_t *
tmp_bson(const char *json)
{
   char *dq = aspen_xstrdup(json);
   for (char *p = dq; *p; p++) {
      if (*p == '\'') {
         *p = '"';
      }
   }
   bson_error_t berr;
   bson_t *doc = bson_new_from_json((const uint8_t *) dq, -1, &berr);
   if (!doc) {
      fail_msg("bad test JSON %s: %s", json, berr.message);
   }
   free(dq);
   if (tmp_n == tmp_cap) {
      tmp_cap = tmp_cap ? tmp_cap * 2 : 16;
      tmp_docs = aspen_xrealloc(tmp_docs, tmp_cap * sizeof *tmp_docs);
   }
   tmp_docs[tmp_n++] = doc;
   return doc;
}

static int
tmp_teardown(void **state)
{
   (void) state;
   for (size_t i = 0; i < tmp_n; i++) {
      bson_destroy(tmp_docs[i]);
   }
   free(tmp_docs);
   tmp_docs = NULL;
   tmp_n = tmp_cap = 0;
   return 0;
}

static void
assert_bson_equal(const bson_t *actual, const bson_t *expected)
{
   if (!bson_equal(actual, expected)) {
      char *a = bson_as_relaxed_extended_json(actual, NULL);
      char *e = bson_as_relaxed_extended_json(expected, NULL);
      print_error("expected %s\n     got %s\n", e ? e : "(invalid)",
                  a ? a : "(invalid)");
      bson_free(a);
      bson_free(e);
      fail();
   }
}

/* ======================================================================== */
/* Helpers: guard pages                                                      */
/* ======================================================================== */

/* A read-only copy of some bytes that ends exactly where a PROT_NONE page
 * begins. */
typedef struct {
   uint8_t *map;
   size_t map_len;
   const uint8_t *data;
   size_t len;
} guard_t;

static size_t
page_size(void)
{
   return (size_t) sysconf(_SC_PAGESIZE);
}

static void
guard_place(guard_t *g, const uint8_t *src, size_t len)
{
   size_t page = page_size();
   size_t usable = (len + page - 1) / page * page;
   if (usable == 0) {
      usable = page;
   }
   g->map_len = usable + page;
   g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
   assert_true(g->map != MAP_FAILED);
   uint8_t *data = g->map + usable - len;
   assert_true(len == 0 || src != NULL);
   if (len && src) {
      memcpy(data, src, len);
   }
   assert_int_equal(mprotect(g->map, usable, PROT_READ), 0);
   assert_int_equal(mprotect(g->map + usable, page, PROT_NONE), 0);
   g->data = data;
   g->len = len;
}

static void
guard_release(guard_t *g)
{
   if (g->map) {
      assert_int_equal(munmap(g->map, g->map_len), 0);
   }
   memset(g, 0, sizeof *g);
}

/* ======================================================================== */
/* Helpers: an independent little encoder                                    */
/* ======================================================================== */

typedef struct {
   uint8_t *p;
   size_t len, cap;
} bytes_t;

static void
bytes_put(bytes_t *b, const void *src, size_t n)
{
   if (b->len + n > b->cap) {
      size_t cap = b->cap ? b->cap : 64;
      while (cap < b->len + n) {
         cap *= 2;
      }
      b->p = aspen_xrealloc(b->p, cap);
      b->cap = cap;
   }
   if (n) {
      memcpy(b->p + b->len, src, n);
   }
   b->len += n;
}

static void
bytes_put_u8(bytes_t *b, uint8_t v)
{
   bytes_put(b, &v, 1);
}

static void
le32(uint8_t *p, uint32_t v)
{
   p[0] = (uint8_t) v;
   p[1] = (uint8_t) (v >> 8);
   p[2] = (uint8_t) (v >> 16);
   p[3] = (uint8_t) (v >> 24);
}

static uint32_t
rd32(const uint8_t *p)
{
   return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) |
          ((uint32_t) p[3] << 24);
}

static void
bytes_put_u32(bytes_t *b, uint32_t v)
{
   uint8_t le[4];
   le32(le, v);
   bytes_put(b, le, 4);
}

static void
bytes_put_cstr(bytes_t *b, const char *s)
{
   bytes_put(b, s, strlen(s) + 1);
}

static void
bytes_put_doc(bytes_t *b, const bson_t *doc)
{
   bytes_put(b, bson_get_data(doc), doc->len);
}

static void
bytes_free(bytes_t *b)
{
   free(b->p);
   memset(b, 0, sizeof *b);
}

/* Bit-at-a-time CRC-32C, independent of aspen_crc32c's table. */
static uint32_t
ref_crc32c(const uint8_t *p, size_t n)
{
   uint32_t crc = 0xFFFFFFFFu;
   for (size_t i = 0; i < n; i++) {
      crc ^= p[i];
      for (int k = 0; k < 8; k++) {
         crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
      }
   }
   return ~crc;
}

/* Starts a message at the end of `b`; returns its offset for msg_end. */
static size_t
msg_begin(bytes_t *b, int32_t request_id, int32_t response_to, int32_t op)
{
   size_t start = b->len;
   bytes_put_u32(b, 0); /* messageLength, patched by msg_end */
   bytes_put_u32(b, (uint32_t) request_id);
   bytes_put_u32(b, (uint32_t) response_to);
   bytes_put_u32(b, (uint32_t) op);
   return start;
}

/* Patches messageLength and, if asked, appends the CRC-32C of everything
 * from the header to here. */
static void
msg_end(bytes_t *b, size_t start, bool checksum)
{
   size_t total = b->len - start + (checksum ? 4 : 0);
   le32(b->p + start, (uint32_t) total);
   if (checksum) {
      bytes_put_u32(b, ref_crc32c(b->p + start, b->len - start));
   }
}

/* ---- OP_MSG specs ---- */

#define MAX_SECTIONS 4
#define MAX_SEQ_DOCS 4

/* One section: kind 0 (json = the body), kind 1 (id + docs), or any other
 * kind byte followed by the json document, for "unknown kind" tests. */
typedef struct {
   int kind;
   const char *json;
   const char *id;
   const char *docs[MAX_SEQ_DOCS]; /* NULL-terminated */
} section_spec_t;

#define BODY(j) {.kind = 0, .json = (j)}
#define SEQ(i, ...) {.kind = 1, .id = (i), .docs = {__VA_ARGS__}}
#define RAW_KIND(k, j) {.kind = (k), .json = (j)}

typedef struct {
   const char *name;
   uint32_t flags;
   section_spec_t sections[MAX_SECTIONS]; /* ends at kind 0 with no json */
} msg_spec_t;

static bool
section_is_end(const section_spec_t *s)
{
   return s->kind == 0 && s->json == NULL;
}

/* Where a truncated copy would still be a genuinely valid message: the
 * message length and the number of sequences the parser should then see. */
#define MAX_CUTS 8
typedef struct {
   size_t n;
   size_t at[MAX_CUTS];
   size_t n_seqs[MAX_CUTS];
} cuts_t;

static void
encode_op_msg(bytes_t *b, const msg_spec_t *spec, int32_t request_id,
              int32_t response_to, cuts_t *cuts)
{
   size_t start = msg_begin(b, request_id, response_to, ASPEN_OP_MSG);
   bool checksum = (spec->flags & ASPEN_OP_MSG_CHECKSUM_PRESENT) != 0;
   bool have_body = false;
   size_t n_seqs = 0;
   if (cuts) {
      cuts->n = 0;
   }
   bytes_put_u32(b, spec->flags);
   for (const section_spec_t *s = spec->sections;
        s < spec->sections + MAX_SECTIONS && !section_is_end(s); s++) {
      bytes_put_u8(b, (uint8_t) s->kind);
      if (s->kind == 1) {
         size_t size_at = b->len;
         bytes_put_u32(b, 0);
         bytes_put_cstr(b, s->id);
         for (size_t i = 0; i < MAX_SEQ_DOCS && s->docs[i]; i++) {
            bytes_put_doc(b, tmp_bson(s->docs[i]));
         }
         le32(b->p + size_at, (uint32_t) (b->len - size_at));
         n_seqs++;
      } else {
         bytes_put_doc(b, tmp_bson(s->json));
         have_body = have_body || s->kind == 0;
      }
      if (cuts && have_body && !checksum) {
         assert_true(cuts->n < MAX_CUTS);
         cuts->at[cuts->n] = b->len - start;
         cuts->n_seqs[cuts->n] = n_seqs;
         cuts->n++;
      }
   }
   msg_end(b, start, checksum);
}

/* ---- OP_QUERY specs ---- */

typedef struct {
   const char *name;
   int32_t flags;
   const char *collection;
   int32_t skip;
   int32_t n_return;
   const char *query;
   const char *fields; /* NULL: no returnFieldsSelector */
} query_spec_t;

static void
encode_op_query(bytes_t *b, const query_spec_t *spec, int32_t request_id,
                cuts_t *cuts)
{
   size_t start = msg_begin(b, request_id, 0, ASPEN_OP_QUERY);
   bytes_put_u32(b, (uint32_t) spec->flags);
   bytes_put_cstr(b, spec->collection);
   bytes_put_u32(b, (uint32_t) spec->skip);
   bytes_put_u32(b, (uint32_t) spec->n_return);
   bytes_put_doc(b, tmp_bson(spec->query));
   if (cuts) {
      cuts->n = 0;
   }
   if (spec->fields) {
      if (cuts) {
         /* Without its selector the query is still a valid OP_QUERY. */
         cuts->at[0] = b->len - start;
         cuts->n_seqs[0] = 0;
         cuts->n = 1;
      }
      bytes_put_doc(b, tmp_bson(spec->fields));
   }
   msg_end(b, start, false);
}

/* ======================================================================== */
/* The valid messages every generic test runs over                          */
/* ======================================================================== */

static const msg_spec_t valid_msgs[] = {
   {"body only", 0, {BODY("{'ping': 1, '$db': 'admin'}")}},
   {"one sequence",
    0,
    {BODY("{'insert': 'coll', 'ordered': true, '$db': 'test'}"),
     SEQ("documents", "{'_id': 1, 'a': 'x'}", "{'_id': 2, 'b': [1, 2.5]}")}},
   {"two sequences",
    0,
    {BODY("{'bulkWrite': 1, '$db': 'admin'}"),
     SEQ("ops", "{'insert': 0, 'document': {'a': 1}}",
         "{'insert': 0, 'document': {'b': {'c': 'd'}}}",
         "{'delete': 0, 'filter': {}}"),
     SEQ("nsInfo", "{'ns': 'db.c'}")}},
   {"sequence before body",
    0,
    {SEQ("documents", "{'x': 1}"),
     BODY("{'insert': 'c', '$db': 'test', 'lsid': {'id': 'abc'}}")}},
   {"empty sequence",
    0,
    {BODY("{'insert': 'c', '$db': 'test'}"), SEQ("documents", NULL)}},
   {"checksum, body only",
    ASPEN_OP_MSG_CHECKSUM_PRESENT,
    {BODY("{'find': 'c', 'filter': {'a': {'$gt': 1}}, '$db': 'test'}")}},
   {"checksum with a sequence",
    ASPEN_OP_MSG_CHECKSUM_PRESENT,
    {BODY("{'insert': 'c', '$db': 'test'}"),
     SEQ("documents", "{'s': 'hello'}", "{'n': null}")}},
   {"moreToCome and exhaustAllowed",
    ASPEN_OP_MSG_MORE_TO_COME | ASPEN_OP_MSG_EXHAUST_ALLOWED,
    {BODY("{'getMore': {'$numberLong': '42'}, 'collection': 'c', "
          "'$db': 'test'}")}},
};

static const query_spec_t valid_queries[] = {
   {"hello on admin.$cmd", 0, "admin.$cmd", 0, -1,
    "{'hello': 1, 'helloOk': true, 'client': {'driver': {'name': 'nodejs', "
    "'version': '6.0'}, 'os': {'type': 'Linux'}}}",
    NULL},
   {"hello with returnFieldsSelector", 4 /* secondaryOk */, "admin.$cmd", 0,
    1, "{'hello': 1, 'helloOk': true}",
    "{'isWritablePrimary': 1, 'maxWireVersion': 1}"},
};

typedef enum { VEC_OP_MSG, VEC_OP_QUERY } vec_kind_t;

typedef struct {
   const char *name;
   vec_kind_t kind;
   const msg_spec_t *msg;
   const query_spec_t *query;
   int32_t request_id;
   int32_t response_to;
   bytes_t bytes;
   cuts_t cuts;
} vec_t;

#define N_VALID_MSGS (sizeof valid_msgs / sizeof valid_msgs[0])
#define N_VALID_QUERIES (sizeof valid_queries / sizeof valid_queries[0])
#define N_VECS (N_VALID_MSGS + N_VALID_QUERIES)

static vec_t vecs[N_VECS];

/* Vectors are rebuilt for each test that uses them, so the documents they
 * reference come from that test's tmp_bson pool. */
static void
build_vecs(void)
{
   size_t n = 0;
   for (size_t i = 0; i < N_VALID_MSGS; i++, n++) {
      vec_t *v = &vecs[n];
      memset(v, 0, sizeof *v);
      v->name = valid_msgs[i].name;
      v->kind = VEC_OP_MSG;
      v->msg = &valid_msgs[i];
      v->request_id = (int32_t) (1000 + n);
      v->response_to = (int32_t) n * 7;
      encode_op_msg(&v->bytes, v->msg, v->request_id, v->response_to,
                    &v->cuts);
   }
   for (size_t i = 0; i < N_VALID_QUERIES; i++, n++) {
      vec_t *v = &vecs[n];
      memset(v, 0, sizeof *v);
      v->name = valid_queries[i].name;
      v->kind = VEC_OP_QUERY;
      v->query = &valid_queries[i];
      v->request_id = (int32_t) (1000 + n);
      encode_op_query(&v->bytes, v->query, v->request_id, &v->cuts);
   }
}

static int
vecs_setup(void **state)
{
   (void) state;
   build_vecs();
   return 0;
}

static int
vecs_teardown(void **state)
{
   for (size_t i = 0; i < N_VECS; i++) {
      bytes_free(&vecs[i].bytes);
   }
   return tmp_teardown(state);
}

/* ======================================================================== */
/* Helpers: decoding and checking results                                    */
/* ======================================================================== */

static bool
is_zero(const void *p, size_t n)
{
   const uint8_t *b = p;
   for (size_t i = 0; i < n; i++) {
      if (b[i]) {
         return false;
      }
   }
   return true;
}

/* A failed parse must say why with one of the decoders' codes and leave its
 * output zeroed. */
static void
assert_clean_failure(const aspen_error_t *err, const void *out, size_t size)
{
   assert_true(err->code == ASPEN_ERR_ProtocolError ||
               err->code == ASPEN_ERR_InvalidBSON ||
               err->code == ASPEN_ERR_BSONObjectTooLarge);
   assert_true(err->message[0] != '\0');
   assert_true(memchr(err->message, 0, sizeof err->message) != NULL);
   assert_true(is_zero(out, size));
}

static bool
within(const void *p, size_t n, const aspen_frame_t *frame)
{
   const uint8_t *b = p;
   return b >= frame->body && n <= frame->body_len &&
          b + n <= frame->body + frame->body_len;
}

/* Iterates every element at every depth; the document must be well formed
 * throughout (checked with bson_iter, independently of bson_validate). */
static void
walk_iter(bson_iter_t *it, int depth)
{
   assert_true(depth < 200);
   while (bson_iter_next(it)) {
      if (BSON_ITER_HOLDS_DOCUMENT(it) || BSON_ITER_HOLDS_ARRAY(it)) {
         bson_iter_t child;
         assert_true(bson_iter_recurse(it, &child));
         walk_iter(&child, depth + 1);
      }
   }
   assert_int_equal(it->err_off, 0);
}

/* Touches every byte of a document the way a consumer would. */
static void
walk_doc(const bson_t *doc)
{
   bson_iter_t it;
   assert_true(bson_iter_init(&it, doc));
   walk_iter(&it, 0);
   char *json = bson_as_canonical_extended_json(doc, NULL);
   bson_free(json);
   bson_t *copy = bson_copy(doc);
   assert_non_null(copy);
   assert_true(bson_equal(copy, doc));
   bson_destroy(copy);
}

/* Uses a successfully parsed OP_MSG as the router would: every view is
 * inside the frame, every document readable, the command buildable. */
static void
exercise_op_msg(const aspen_op_msg_t *msg, const aspen_frame_t *frame)
{
   assert_true(within(bson_get_data(&msg->body), msg->body.len, frame));
   walk_doc(&msg->body);
   assert_true(msg->n_seqs <= ASPEN_OP_MSG_MAX_SEQUENCES);
   for (size_t i = 0; i < msg->n_seqs; i++) {
      const aspen_doc_seq_t *seq = &msg->seqs[i];
      assert_true(within(seq->identifier, strlen(seq->identifier) + 1, frame));
      assert_true(seq->len == 0 || within(seq->docs, seq->len, frame));
      size_t off = 0;
      uint32_t count = 0;
      while (off < seq->len) {
         bson_t doc;
         uint32_t dlen = rd32(seq->docs + off);
         assert_true(dlen <= seq->len - off);
         assert_true(bson_init_static(&doc, seq->docs + off, dlen));
         walk_doc(&doc);
         off += dlen;
         count++;
      }
      assert_int_equal(off, seq->len);
      assert_int_equal(count, seq->count);
   }
   bson_t cmd;
   bool owned = false;
   aspen_error_t err;
   aspen_error_clear(&err);
   if (aspen_op_msg_command(msg, &cmd, &owned, &err)) {
      walk_doc(&cmd);
   } else {
      /* A failed command leaves an empty document behind. */
      assert_true(err.code != 0 && err.message[0] != '\0');
      assert_true(bson_empty(&cmd));
   }
   if (owned) {
      bson_destroy(&cmd);
   }
}

static void
exercise_op_query(const aspen_op_query_t *q, const aspen_frame_t *frame)
{
   assert_true(within(q->collection, strlen(q->collection) + 1, frame));
   assert_true(within(bson_get_data(&q->query), q->query.len, frame));
   walk_doc(&q->query);
   if (q->has_fields) {
      assert_true(within(bson_get_data(&q->fields), q->fields.len, frame));
      walk_doc(&q->fields);
   } else {
      assert_true(is_zero(&q->fields, sizeof q->fields));
   }
}

/* Runs the OP_MSG decoder on a frame; checks a failure is clean and a
 * success is usable. */
static bool
decode_op_msg(const aspen_frame_t *frame, aspen_op_msg_t *msg,
              aspen_error_t *err)
{
   aspen_error_clear(err);
   bool ok = aspen_op_msg_parse(frame, msg, err);
   if (ok) {
      exercise_op_msg(msg, frame);
   } else {
      assert_clean_failure(err, msg, sizeof *msg);
   }
   return ok;
}

static bool
decode_op_query(const aspen_frame_t *frame, aspen_op_query_t *q,
                aspen_error_t *err)
{
   aspen_error_clear(err);
   bool ok = aspen_op_query_parse(frame, q, err);
   if (ok) {
      exercise_op_query(q, frame);
   } else {
      assert_clean_failure(err, q, sizeof *q);
   }
   return ok;
}

/* Frames `len` bytes with each input ending at a guard page, and when a whole
 * frame is there decodes exactly its bytes (again at a guard page) with the
 * decoder for `kind`; the other decoder runs too, for robustness only.
 * Returns the framing result; *decoded says whether `kind`'s decoder
 * accepted. */
static aspen_parse_result_t
probe(const uint8_t *p, size_t len, vec_kind_t kind, bool *decoded)
{
   guard_t g, gf;
   aspen_frame_t frame;
   aspen_error_t err;
   *decoded = false;

   guard_place(&g, p, len);
   aspen_error_clear(&err);
   aspen_parse_result_t r = aspen_frame_parse(
      g.data, g.len, ASPEN_WIRE_MAX_MESSAGE_LEN, &frame, &err);
   guard_release(&g);
   if (r != ASPEN_PARSE_OK) {
      return r;
   }
   guard_place(&gf, p, (size_t) frame.message_length);
   assert_int_equal(aspen_frame_parse(gf.data, gf.len,
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, &frame, &err),
                    ASPEN_PARSE_OK);
   aspen_op_msg_t msg;
   aspen_op_query_t q;
   bool msg_ok = decode_op_msg(&frame, &msg, &err);
   bool query_ok = decode_op_query(&frame, &q, &err);
   *decoded = kind == VEC_OP_MSG ? msg_ok : query_ok;
   guard_release(&gf);
   return r;
}

/* Places a whole message at a guard page and frames it; the caller releases
 * `g`. */
static void
frame_whole(guard_t *g, const uint8_t *p, size_t len, aspen_frame_t *frame)
{
   aspen_error_t err;
   guard_place(g, p, len);
   assert_int_equal(aspen_frame_parse(g->data, g->len,
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, frame, &err),
                    ASPEN_PARSE_OK);
   assert_int_equal(frame->message_length, len);
}

/* Parses an OP_MSG built from a spec; the caller releases `g` after using
 * `msg`. */
static bool
parse_spec(const msg_spec_t *spec, guard_t *g, aspen_frame_t *frame,
           aspen_op_msg_t *msg, aspen_error_t *err)
{
   bytes_t b = {0};
   encode_op_msg(&b, spec, 1, 0, NULL);
   frame_whole(g, b.p, b.len, frame);
   bytes_free(&b);
   return decode_op_msg(frame, msg, err);
}

/* Checks a decoded OP_MSG against its spec, using only its first
 * `n_seqs_expected` sequences (fewer for a truncated copy). */
static void
check_op_msg(const aspen_op_msg_t *msg, const msg_spec_t *spec,
             size_t n_seqs_expected)
{
   const section_spec_t *body = NULL;
   const section_spec_t *seqs[MAX_SECTIONS];
   size_t n_seqs = 0;
   for (const section_spec_t *s = spec->sections;
        s < spec->sections + MAX_SECTIONS && !section_is_end(s); s++) {
      if (s->kind == 0 && !body) {
         body = s;
      } else if (s->kind == 1) {
         seqs[n_seqs++] = s;
      }
   }
   assert_non_null(body);
   assert_int_equal(msg->flags, spec->flags);
   assert_int_equal(msg->has_checksum,
                    (spec->flags & ASPEN_OP_MSG_CHECKSUM_PRESENT) != 0);
   assert_bson_equal(&msg->body, tmp_bson(body->json));
   assert_int_equal(msg->n_seqs, n_seqs_expected);

   /* The command: body fields, then one array per sequence, in order. */
   bson_t *expected = bson_copy(&msg->body);
   for (size_t i = 0; i < n_seqs_expected; i++) {
      const aspen_doc_seq_t *seq = &msg->seqs[i];
      assert_string_equal(seq->identifier, seqs[i]->id);
      bson_t arr;
      uint32_t n = 0;
      size_t off = 0;
      bson_append_array_begin(expected, seqs[i]->id, -1, &arr);
      for (; n < MAX_SEQ_DOCS && seqs[i]->docs[n]; n++) {
         const bson_t *want = tmp_bson(seqs[i]->docs[n]);
         bson_t got;
         assert_true(off < seq->len);
         assert_true(bson_init_static(&got, seq->docs + off,
                                      rd32(seq->docs + off)));
         assert_bson_equal(&got, want);
         off += got.len;
         char key[16];
         snprintf(key, sizeof key, "%u", (unsigned) n);
         bson_append_document(&arr, key, -1, want);
      }
      bson_append_array_end(expected, &arr);
      assert_int_equal(seq->count, n);
      assert_int_equal(seq->len, off);
   }
   bson_t cmd;
   bool owned;
   aspen_error_t err;
   assert_true(aspen_op_msg_command(msg, &cmd, &owned, &err));
   assert_int_equal(owned, n_seqs_expected > 0);
   assert_bson_equal(&cmd, expected);
   if (owned) {
      bson_destroy(&cmd);
   }
   bson_destroy(expected);
}

static void
check_op_query(const aspen_op_query_t *q, const query_spec_t *spec,
               bool expect_fields)
{
   assert_int_equal(q->flags, spec->flags);
   assert_string_equal(q->collection, spec->collection);
   assert_int_equal(q->number_to_skip, spec->skip);
   assert_int_equal(q->number_to_return, spec->n_return);
   assert_bson_equal(&q->query, tmp_bson(spec->query));
   assert_int_equal(q->has_fields, expect_fields);
   if (expect_fields) {
      assert_bson_equal(&q->fields, tmp_bson(spec->fields));
   }
}

/* Decodes a frame holding vector `v`, or a valid truncation of it with
 * `n_seqs_expected` sequences, and checks every field. */
static void
check_vec_decoded(const vec_t *v, const aspen_frame_t *frame,
                  size_t n_seqs_expected)
{
   aspen_error_t err;
   bool whole = frame->message_length == (int32_t) v->bytes.len;
   if (v->kind == VEC_OP_MSG) {
      aspen_op_msg_t msg;
      if (!decode_op_msg(frame, &msg, &err)) {
         fail_msg("%s: %s", v->name, err.message);
      }
      check_op_msg(&msg, v->msg, n_seqs_expected);
      if (msg.has_checksum) {
         assert_int_equal(msg.checksum, rd32(v->bytes.p + v->bytes.len - 4));
      }
   } else {
      aspen_op_query_t q;
      if (!decode_op_query(frame, &q, &err)) {
         fail_msg("%s: %s", v->name, err.message);
      }
      check_op_query(&q, v->query, whole && v->query->fields != NULL);
   }
}

static size_t
count_seqs(const msg_spec_t *spec)
{
   size_t n = 0;
   for (const section_spec_t *s = spec->sections;
        s < spec->sections + MAX_SECTIONS && !section_is_end(s); s++) {
      n += s->kind == 1;
   }
   return n;
}

/* Runs `fn` in a child process and checks that it aborts (ASPEN_ASSERT). */
static void
expect_abort(void (*fn)(void))
{
   fflush(NULL);
   pid_t pid = fork();
   assert_true(pid >= 0);
   if (pid == 0) {
      /* Keep the expected assertion message out of the test log. */
      if (!freopen("/dev/null", "w", stderr)) {
         _exit(2);
      }
      fn();
      _exit(0);
   }
   int status;
   assert_int_equal(waitpid(pid, &status, 0), pid);
   assert_true(WIFSIGNALED(status));
   assert_int_equal(WTERMSIG(status), SIGABRT);
}

/* ======================================================================== */
/* aspen_buf_t                                                               */
/* ======================================================================== */

static void
fill_pattern(uint8_t *p, size_t n, size_t seed)
{
   for (size_t i = 0; i < n; i++) {
      p[i] = (uint8_t) ((seed + i) * 31u + 7u);
   }
}

static void
assert_pattern(const uint8_t *p, size_t n, size_t seed)
{
   for (size_t i = 0; i < n; i++) {
      if (p[i] != (uint8_t) ((seed + i) * 31u + 7u)) {
         fail_msg("pattern mismatch at byte %zu", i);
      }
   }
}

static void
test_buf_reserve_commit_consume(void **state)
{
   (void) state;
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   assert_int_equal(aspen_buf_len(&buf), 0);
   assert_null(buf.base);
   /* A fresh buffer can be framed as it is (no NULL + 0 arithmetic, which
    * clang's UBSan reports). */
   aspen_frame_t frame;
   aspen_error_t err;
   assert_null(aspen_buf_data(&buf));
   assert_int_equal(aspen_frame_parse(aspen_buf_data(&buf), aspen_buf_len(&buf),
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, &frame, &err),
                    ASPEN_PARSE_NEED_MORE);
   assert_non_null(aspen_buf_reserve(&buf, 0));
   aspen_buf_cleanup(&buf);

   uint8_t *w = aspen_buf_reserve(&buf, 10);
   assert_non_null(w);
   assert_true(buf.cap >= 10);
   assert_int_equal(aspen_buf_len(&buf), 0); /* reserve alone adds nothing */
   fill_pattern(w, 10, 0);
   aspen_buf_commit(&buf, 4); /* a short read: commit less than reserved */
   assert_int_equal(aspen_buf_len(&buf), 4);
   w = aspen_buf_reserve(&buf, 6);
   assert_ptr_equal(w, buf.base + 4);
   aspen_buf_commit(&buf, 6);
   assert_int_equal(aspen_buf_len(&buf), 10);
   assert_pattern(aspen_buf_data(&buf), 10, 0);

   aspen_buf_consume(&buf, 3);
   assert_int_equal(aspen_buf_len(&buf), 7);
   assert_pattern(aspen_buf_data(&buf), 7, 3);
   aspen_buf_consume(&buf, 0);
   assert_int_equal(aspen_buf_len(&buf), 7);
   /* Consuming everything rewinds to the start of the storage. */
   aspen_buf_consume(&buf, 7);
   assert_int_equal(aspen_buf_len(&buf), 0);
   assert_int_equal(buf.head, 0);
   assert_int_equal(buf.tail, 0);

   aspen_buf_append(&buf, "abc", 3);
   aspen_buf_clear(&buf);
   assert_int_equal(aspen_buf_len(&buf), 0);
   assert_non_null(buf.base); /* clear keeps the storage */
   aspen_buf_cleanup(&buf);
   assert_null(buf.base);
   assert_int_equal(buf.cap, 0);
   aspen_buf_cleanup(&buf); /* twice is harmless */
}

static void
test_buf_append(void **state)
{
   (void) state;
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   aspen_buf_append(&buf, NULL, 0); /* no-op, no allocation */
   assert_null(buf.base);
   uint8_t chunk[1000];
   for (size_t i = 0; i < 50; i++) {
      fill_pattern(chunk, sizeof chunk, i * sizeof chunk);
      aspen_buf_append(&buf, chunk, sizeof chunk);
   }
   assert_int_equal(aspen_buf_len(&buf), 50000);
   assert_pattern(aspen_buf_data(&buf), 50000, 0);
   aspen_buf_cleanup(&buf);
}

static void
test_buf_lazy_compaction(void **state)
{
   (void) state;
   aspen_buf_t buf;
   uint8_t data[4000];
   aspen_buf_init(&buf);
   fill_pattern(data, sizeof data, 0);
   aspen_buf_append(&buf, data, sizeof data);
   size_t cap = buf.cap;
   uint8_t *base = buf.base;
   assert_true(cap - buf.tail < 200); /* the next reserve cannot fit at the tail */

   /* Consuming only moves the head. */
   aspen_buf_consume(&buf, 3000);
   assert_int_equal(buf.head, 3000);
   assert_ptr_equal(aspen_buf_data(&buf), base + 3000);

   /* The dead prefix makes room: bytes move down, no reallocation. */
   uint8_t *w = aspen_buf_reserve(&buf, 200);
   assert_ptr_equal(buf.base, base);
   assert_int_equal(buf.cap, cap);
   assert_int_equal(buf.head, 0);
   assert_int_equal(aspen_buf_len(&buf), 1000);
   assert_ptr_equal(w, base + 1000);
   assert_pattern(aspen_buf_data(&buf), 1000, 3000);

   /* A reserve that still fits at the tail does not move anything. */
   aspen_buf_consume(&buf, 10);
   w = aspen_buf_reserve(&buf, 16);
   assert_int_equal(buf.head, 10);
   assert_ptr_equal(w, base + 1000);

   /* Growing with a consumed prefix keeps only the live bytes. */
   aspen_buf_consume(&buf, 500);
   w = aspen_buf_reserve(&buf, 3 * cap);
   assert_int_equal(buf.head, 0);
   assert_int_equal(aspen_buf_len(&buf), 490);
   assert_true(buf.cap - buf.tail >= 3 * cap);
   assert_ptr_equal(w, buf.base + 490);
   assert_pattern(aspen_buf_data(&buf), 490, 3510);
   aspen_buf_cleanup(&buf);
}

static void
test_buf_large_growth(void **state)
{
   (void) state;
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   const size_t big = 20u * 1024 * 1024 + 3;
   uint8_t *w = aspen_buf_reserve(&buf, big);
   assert_true(buf.cap >= big);
   fill_pattern(w, big, 11);
   aspen_buf_commit(&buf, big);
   /* Append past the capacity to force a doubling with live data. */
   size_t extra = buf.cap - buf.tail + 1;
   uint8_t *more = aspen_xmalloc(extra);
   fill_pattern(more, extra, 11 + big);
   aspen_buf_append(&buf, more, extra);
   free(more);
   assert_int_equal(aspen_buf_len(&buf), big + extra);
   assert_pattern(aspen_buf_data(&buf), big + extra, 11);
   aspen_buf_cleanup(&buf);
}

static void
test_buf_steal(void **state)
{
   (void) state;
   aspen_buf_t buf;
   size_t len = 99;
   aspen_buf_init(&buf);
   assert_null(aspen_buf_steal(&buf, &len));
   assert_int_equal(len, 0);

   /* Nothing consumed: the storage itself is handed over. */
   aspen_buf_append(&buf, "hello world", 11);
   uint8_t *base = buf.base;
   uint8_t *got = aspen_buf_steal(&buf, &len);
   assert_ptr_equal(got, base);
   assert_int_equal(len, 11);
   assert_memory_equal(got, "hello world", 11);
   assert_null(buf.base);
   assert_int_equal(aspen_buf_len(&buf), 0);
   free(got);

   /* A consumed prefix: the live bytes are copied out. */
   aspen_buf_append(&buf, "hello world", 11);
   aspen_buf_consume(&buf, 6);
   got = aspen_buf_steal(&buf, &len);
   assert_int_equal(len, 5);
   assert_memory_equal(got, "world", 5);
   assert_int_equal(aspen_buf_len(&buf), 0);
   free(got);

   /* Everything consumed: NULL, and the buffer is still usable. */
   aspen_buf_append(&buf, "x", 1);
   aspen_buf_consume(&buf, 1);
   len = 99;
   assert_null(aspen_buf_steal(&buf, &len));
   assert_int_equal(len, 0);
   aspen_buf_append(&buf, "again", 5);
   assert_memory_equal(aspen_buf_data(&buf), "again", 5);
   aspen_buf_cleanup(&buf);
}

static void
commit_past_cap(void)
{
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   (void) aspen_buf_reserve(&buf, 1);
   aspen_buf_commit(&buf, buf.cap + 1);
}

static void
consume_past_len(void)
{
   aspen_buf_t buf;
   aspen_buf_init(&buf);
   aspen_buf_append(&buf, "ab", 2);
   aspen_buf_consume(&buf, 3);
}

static void
test_buf_asserts(void **state)
{
   (void) state;
   expect_abort(commit_past_cap);
   expect_abort(consume_past_len);
}

/* ======================================================================== */
/* Errors                                                                    */
/* ======================================================================== */

static void
test_uri_redact(void **state)
{
   (void) state;
   static const struct {
      const char *in, *want;
   } cases[] = {
      /* userinfo */
      {"mongodb://u:p%40ss@h:1/db?x=1", "mongodb://<redacted>@h:1/db?x=1"},
      {"mongodb://u:pw@h1,h2/", "mongodb://<redacted>@h1,h2/"},
      {"mongodb+srv://u:p@ss@c.example.net/", /* a stray '@': all hidden */
       "mongodb+srv://<redacted>@c.example.net/"},
      /* An '@' after the host part is not a credential separator. */
      {"mongodb://h/db?appName=a@b", "mongodb://h/db?appName=a@b"},
      {"not a uri u:p@h", "not a uri u:p@h"},
      /* secret query options, whatever their case, '&' or ';' */
      {"mongodb://h/?tls=true&tlsCertificateKeyFilePassword=kp&appName=x",
       "mongodb://h/?tls=true&tlsCertificateKeyFilePassword=<redacted>"
       "&appName=x"},
      {"mongodb://h/?sslclientcertificatekeypassword=kp;w=1",
       "mongodb://h/?sslclientcertificatekeypassword=<redacted>;w=1"},
      {"mongodb://h/?proxyHost=p&proxyUsername=pu&proxyPassword=pp",
       "mongodb://h/?proxyHost=p&proxyUsername=pu&proxyPassword=<redacted>"},
      {"mongodb://u:p@h?password=x", "mongodb://<redacted>@h?password=<redacted>"},
      /* authMechanismProperties: plain settings kept, the rest hidden,
       * percent-encoded or not */
      {"mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties="
       "AWS_SESSION_TOKEN:FQoGZXIvYXdzE",
       "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties="
       "AWS_SESSION_TOKEN:<redacted>"},
      {"mongodb://h/?authMechanismProperties=SERVICE_NAME%3Amongodb%2C"
       "AWS_SESSION_TOKEN%3Atok%2CCANONICALIZE_HOST_NAME%3Atrue",
       "mongodb://h/?authMechanismProperties=SERVICE_NAME:mongodb,"
       "AWS_SESSION_TOKEN:<redacted>,CANONICALIZE_HOST_NAME:true"},
      {"mongodb://h/?authMechanismProperties=NEW_THING:s3cr3t",
       "mongodb://h/?authMechanismProperties=NEW_THING:<redacted>"},
      /* flags-like strings that hold a URI (getCmdLineOpts' argv) */
      {"--backend=mongodb://u:p@h/?tlsCertificateKeyFilePassword=kp",
       "--backend=mongodb://<redacted>@h/?tlsCertificateKeyFilePassword="
       "<redacted>"},
   };
   char out[256];
   for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      aspen_uri_redact(cases[i].in, out, sizeof out);
      assert_string_equal(out, cases[i].want);
   }
   /* Truncation cuts the end, never uncovers a secret. */
   char small[24];
   aspen_uri_redact("mongodb://user:hunter2@host/", small, sizeof small);
   assert_string_equal(small, "mongodb://<redacted>@ho");
}

static void
test_secret_names(void **state)
{
   (void) state;
   /* librdkafka's sensitive properties, and MongoDB's secret options. */
   static const char *const secret[] = {
      "sasl.password", "sasl.username", "sasl.oauthbearer.config",
      "sasl.oauthbearer.client.secret", "ssl.key.password", "ssl.key.pem",
      "ssl_key", "ssl.key.location", "ssl.ca.pem", "ssl.keystore.password",
      "sasl.oauthbearer.assertion.private.key.passphrase",
      "sasl.jaas.config", "tlsCertificateKeyFilePassword",
      "TLSCERTIFICATEKEYFILEPASSWORD", "sslClientCertificateKeyPassword",
      "sslPEMKeyPassword", "proxyPassword", "password"};
   static const char *const plain[] = {
      "bootstrap.servers", "security.protocol", "sasl.mechanism",
      "ssl.ca.location", "ssl.certificate.location", "socket.timeout.ms",
      "group.id", "tls", "tlsCAFile", "tlsCertificateKeyFile", "appName",
      "authSource", "proxyUsername"};
   for (size_t i = 0; i < sizeof secret / sizeof secret[0]; i++) {
      assert_true(aspen_secret_name(secret[i]));
   }
   for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
      assert_false(aspen_secret_name(plain[i]));
   }
}

static void
test_error_code_names(void **state)
{
   (void) state;
   assert_string_equal(aspen_error_code_name(0), "OK");
   assert_string_equal(aspen_error_code_name(2), "BadValue");
   assert_string_equal(aspen_error_code_name(9), "FailedToParse");
   assert_string_equal(aspen_error_code_name(59), "CommandNotFound");
   assert_string_equal(aspen_error_code_name(420),
                       "StreamProcessorInvalidOptions");
   assert_string_equal(aspen_error_code_name(ASPEN_ERR_BSONObjectTooLarge),
                       "BSONObjectTooLarge");
   assert_string_equal(aspen_error_code_name(3), "UnknownError");
   assert_string_equal(aspen_error_code_name(-1), "UnknownError");
   assert_string_equal(aspen_error_code_name(9999), "UnknownError");
   /* An assertion location mongod has no name for (e.g. $topN's 5787903). */
   assert_string_equal(aspen_error_code_name(5787903), "Location5787903");
   assert_string_equal(aspen_error_code_name(99999), "Location99999");
   assert_int_equal(ASPEN_ERR_CommandNotFound, 59);
}

static void
test_error_set_clear(void **state)
{
   (void) state;
   aspen_error_t err;
   aspen_error_set(&err, ASPEN_ERR_BadValue, "bad %s %d", "thing", 42);
   assert_int_equal(err.code, 2);
   assert_string_equal(err.message, "bad thing 42");

   /* A long message is cut, never overflowed. */
   char big[ASPEN_ERROR_MSG_MAX * 2];
   memset(big, 'x', sizeof big - 1);
   big[sizeof big - 1] = '\0';
   aspen_error_set(&err, ASPEN_ERR_InternalError, "%s", big);
   assert_int_equal(strlen(err.message), ASPEN_ERROR_MSG_MAX - 1);

   aspen_error_clear(&err);
   assert_int_equal(err.code, 0);
   assert_string_equal(err.message, "");
   aspen_error_set(NULL, 1, "ignored"); /* NULL is allowed */
   aspen_error_clear(NULL);
}

static void
test_error_from_bson_error(void **state)
{
   (void) state;
   aspen_error_t err;
   bson_error_t berr;
   bson_set_error(&berr, 11 /* MONGOC_ERROR_SERVER */, 13, "not allowed");
   aspen_error_from_bson_error(&err, &berr);
   assert_int_equal(err.code, 13);
   assert_string_equal(err.message, "not allowed");
   bson_set_error(&berr, 2 /* MONGOC_ERROR_STREAM */, 3, "connection reset");
   aspen_error_from_bson_error(&err, &berr);
   assert_int_equal(err.code, ASPEN_ERR_InternalError);
   assert_string_equal(err.message, "connection reset");
}

static void
test_error_append_reply(void **state)
{
   (void) state;
   aspen_error_t err;
   bson_t doc = BSON_INITIALIZER;
   aspen_error_set(&err, ASPEN_ERR_CommandNotFound, "no such command: x");
   aspen_error_append_reply(&doc, &err);
   /* The exact shape, types included: ok is a double 0.0. */
   bson_iter_t it;
   assert_true(bson_iter_init(&it, &doc));
   assert_true(bson_iter_next(&it));
   assert_string_equal(bson_iter_key(&it), "ok");
   assert_int_equal(bson_iter_type(&it), BSON_TYPE_DOUBLE);
   assert_true(bson_iter_double(&it) == 0.0);
   assert_true(bson_iter_next(&it));
   assert_string_equal(bson_iter_key(&it), "errmsg");
   assert_string_equal(bson_iter_utf8(&it, NULL), "no such command: x");
   assert_true(bson_iter_next(&it));
   assert_string_equal(bson_iter_key(&it), "code");
   assert_int_equal(bson_iter_type(&it), BSON_TYPE_INT32);
   assert_int_equal(bson_iter_int32(&it), 59);
   assert_true(bson_iter_next(&it));
   assert_string_equal(bson_iter_key(&it), "codeName");
   assert_string_equal(bson_iter_utf8(&it, NULL), "CommandNotFound");
   assert_false(bson_iter_next(&it));
   assert_bson_equal(&doc,
                     tmp_bson("{'ok': 0.0, 'errmsg': 'no such command: x', "
                              "'code': 59, 'codeName': 'CommandNotFound'}"));
   bson_destroy(&doc);
}

/* ======================================================================== */
/* Logging                                                                   */
/* ======================================================================== */

/* Captures what one call writes to the log stream; the caller frees it. */
static char *
capture_log(void (*fn)(void))
{
   FILE *f = tmpfile();
   assert_non_null(f);
   aspen_log_set_stream(f);
   fn();
   aspen_log_set_stream(NULL);
   long n = ftell(f);
   assert_true(n >= 0);
   char *out = aspen_xcalloc(1, (size_t) n + 1);
   rewind(f);
   assert_int_equal(fread(out, 1, (size_t) n, f), (size_t) n);
   fclose(f);
   return out;
}

static void
log_scalars(void)
{
   bson_t *attr = tmp_bson(
      "{'s': 'quote \\\" backslash \\\\ nl \\n tab \\t ctl \\u0001', "
      "'i': 7, 'l': {'$numberLong': '-9000000000'}, 'd': 1.5, 'b': true, "
      "'n': null, 'doc': {'a': [1, 'two', {'x': false}]}}");
   aspen_log(ASPEN_LOG_WARNING, "NETWORK", 22943, "conn7", "Connection \"ok\"",
             attr);
}

static void
log_exotic(void)
{
   bson_t *attr = tmp_bson(
      "{'date': {'$date': {'$numberLong': '1700000000000'}}, "
      "'oid': {'$oid': '0123456789abcdef01234567'}, "
      "'bin': {'$binary': {'base64': 'AQID', 'subType': '00'}}, "
      "'ts': {'$timestamp': {'t': 5, 'i': 6}}, "
      "'re': {'$regularExpression': {'pattern': 'a.b', 'options': 'i'}}, "
      "'dec': {'$numberDecimal': '1.25'}, "
      "'inf': {'$numberDouble': 'Infinity'}, "
      "'ninf': {'$numberDouble': '-Infinity'}, "
      "'nan': {'$numberDouble': 'NaN'}}");
   aspen_log(ASPEN_LOG_INFO, "-", 1, NULL, "exotic", attr);
}

static void
log_filtered(void)
{
   aspen_log_set_level(ASPEN_LOG_INFO);
   aspen_logf(ASPEN_LOG_DEBUG, "X", "ctx", "hidden %d", 1);
   aspen_log_set_level(ASPEN_LOG_ERROR);
   aspen_logf(ASPEN_LOG_WARNING, "X", "ctx", "hidden %d", 2);
   aspen_logf(ASPEN_LOG_ERROR, "X", "ctx", "shown %d", 3);
   aspen_log_set_level(ASPEN_LOG_INFO);
}

/* Parses one captured line as JSON (it must be exactly one line). The line
 * starts with mongod's {"t":{"$date":"2024-01-02T03:04:05.678+00:00"}; since
 * libbson cannot read that offset form back as a date, the timestamp's shape
 * is checked here and "$date" renamed so the rest parses as plain JSON. */
static bson_t *
parse_log_line(const char *line)
{
   static const char prefix[] = "{\"t\":{\"$date\":\"";
   static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddd+00:00\"}";
   size_t n = strlen(line);
   assert_true(n > sizeof prefix + sizeof shape);
   assert_int_equal(line[n - 1], '\n');
   assert_null(memchr(line, '\n', n - 1));
   assert_memory_equal(line, prefix, sizeof prefix - 1);
   const char *ts = line + sizeof prefix - 1;
   for (size_t i = 0; i < sizeof shape - 1; i++) {
      bool ok = shape[i] == 'd' ? (ts[i] >= '0' && ts[i] <= '9')
                                : ts[i] == shape[i];
      if (!ok) {
         fail_msg("bad timestamp at %zu: %s", i, line);
      }
   }
   char *copy = aspen_xstrdup(line);
   copy[7] = '_'; /* "$date" -> "_date" */
   bson_error_t berr;
   bson_t *doc = bson_new_from_json((const uint8_t *) copy, (ssize_t) n - 1,
                                    &berr);
   if (!doc) {
      fail_msg("log line is not JSON (%s): %s", berr.message, line);
   }
   free(copy);
   return doc;
}

static void
test_log_line_format(void **state)
{
   (void) state;
   char *line = capture_log(log_scalars);
   bson_t *doc = parse_log_line(line);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, doc, "t"));
   assert_true(bson_iter_init_find(&it, doc, "s"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "W");
   assert_true(bson_iter_init_find(&it, doc, "c"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "NETWORK");
   assert_true(bson_iter_init_find(&it, doc, "id"));
   assert_int_equal(bson_iter_as_int64(&it), 22943);
   assert_true(bson_iter_init_find(&it, doc, "ctx"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "conn7");
   assert_true(bson_iter_init_find(&it, doc, "msg"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "Connection \"ok\"");
   assert_true(bson_iter_init_find(&it, doc, "attr"));
   bson_t attr;
   uint32_t alen;
   const uint8_t *adata;
   bson_iter_document(&it, &alen, &adata);
   assert_true(bson_init_static(&attr, adata, alen));
   /* JSON numbers come back as the narrowest type; compare loosely. */
   assert_true(bson_iter_init_find(&it, &attr, "s"));
   assert_string_equal(bson_iter_utf8(&it, NULL),
                       "quote \" backslash \\ nl \n tab \t ctl \x01");
   assert_true(bson_iter_init_find(&it, &attr, "i"));
   assert_int_equal(bson_iter_as_int64(&it), 7);
   assert_true(bson_iter_init_find(&it, &attr, "l"));
   assert_true(bson_iter_as_int64(&it) == -9000000000LL);
   assert_true(bson_iter_init_find(&it, &attr, "d"));
   assert_true(bson_iter_double(&it) == 1.5);
   assert_true(bson_iter_init_find(&it, &attr, "b"));
   assert_true(bson_iter_bool(&it));
   assert_true(bson_iter_init_find(&it, &attr, "n"));
   assert_int_equal(bson_iter_type(&it), BSON_TYPE_NULL);
   bson_iter_t child;
   assert_true(bson_iter_init(&it, &attr));
   assert_true(bson_iter_find_descendant(&it, "doc.a.2.x", &child));
   assert_false(bson_iter_bool(&child));
   bson_destroy(doc);
   free(line);
}

static void
test_log_exotic_types(void **state)
{
   (void) state;
   /* Types without a JSON literal (and non-finite doubles) are written as
    * relaxed Extended JSON; the line must stay valid JSON and round-trip to
    * the same values. */
   char *line = capture_log(log_exotic);
   bson_t *doc = parse_log_line(line);
   bson_iter_t it;
   assert_true(bson_iter_init(&it, doc));
   assert_true(bson_iter_find_descendant(&it, "ctx", &it));
   assert_string_equal(bson_iter_utf8(&it, NULL), "-");
   assert_true(bson_iter_init(&it, doc));
   assert_true(bson_iter_find_descendant(&it, "attr", &it));
   bson_t attr;
   uint32_t alen;
   const uint8_t *adata;
   bson_iter_document(&it, &alen, &adata);
   assert_true(bson_init_static(&attr, adata, alen));
   /* bson_new_from_json reads the $-keys back into their BSON types. */
   assert_bson_equal(
      &attr,
      tmp_bson("{'date': {'$date': {'$numberLong': '1700000000000'}}, "
               "'oid': {'$oid': '0123456789abcdef01234567'}, "
               "'bin': {'$binary': {'base64': 'AQID', 'subType': '00'}}, "
               "'ts': {'$timestamp': {'t': 5, 'i': 6}}, "
               "'re': {'$regularExpression': {'pattern': 'a.b', "
               "'options': 'i'}}, "
               "'dec': {'$numberDecimal': '1.25'}, "
               "'inf': {'$numberDouble': 'Infinity'}, "
               "'ninf': {'$numberDouble': '-Infinity'}, "
               "'nan': {'$numberDouble': 'NaN'}}"));
   bson_destroy(doc);
   free(line);
}

static void
test_utf8_char_len(void **state)
{
   (void) state;
   static const struct {
      const char *bytes;
      size_t len, want;
   } cases[] = {
      {"a", 1, 1},
      {"\xc3\xa9", 2, 2},             /* U+00E9 */
      {"\xe2\x82\xac", 3, 3},         /* U+20AC */
      {"\xf0\x9f\x98\x80", 4, 4},     /* U+1F600 */
      {"\xf4\x8f\xbf\xbf", 4, 4},     /* U+10FFFF */
      {"\xee\x80\x80", 3, 3},         /* U+E000, after the surrogates */
      {"\xc3\x28", 2, 0},             /* second byte not a continuation */
      {"\x80", 1, 0},                 /* a stray continuation byte */
      {"\xc0\x80", 2, 0},             /* overlong NUL */
      {"\xc1\xbf", 2, 0},             /* overlong */
      {"\xe0\x80\x80", 3, 0},         /* overlong */
      {"\xed\xa0\x80", 3, 0},         /* U+D800, a surrogate */
      {"\xf0\x80\x80\x80", 4, 0},     /* overlong */
      {"\xf4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
      {"\xf5\x80\x80\x80", 4, 0},
      {"\xff", 1, 0},
      {"\xe2\x82", 2, 0},             /* truncated */
      {"", 0, 0},
   };
   for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      assert_int_equal(aspen_utf8_char_len((const uint8_t *) cases[i].bytes,
                                           cases[i].len),
                       cases[i].want);
   }
   /* aspen_utf8_scrub reads characters the same way: each bad byte
    * becomes '?', a character cut by the NUL too. */
   char bad[] = "caf\xc3\xa9 \xc3\x28 \xed\xa0\x80 \xf0\x9f\x98\x80 \xe2\x82";
   assert_true(aspen_utf8_scrub(bad));
   assert_string_equal(bad, "caf\xc3\xa9 ?( ??? \xf0\x9f\x98\x80 ??");
   char good[] = "\xe2\x82\xac ok";
   assert_false(aspen_utf8_scrub(good));
   assert_string_equal(good, "\xe2\x82\xac ok");
}

static void
log_bad_utf8(void)
{
   /* A failed login as "root\xc3\x28": message, key and value carry bytes
    * that are not UTF-8, next to good multi-byte characters. */
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "principalName", "root\xc3\x28");
   BSON_APPEND_UTF8(&attr, "k\xff", "caf\xc3\xa9 \xe2\x82\xac \xed\xa0\x80!");
   bson_t sub;
   BSON_APPEND_ARRAY_BEGIN(&attr, "list", &sub);
   BSON_APPEND_UTF8(&sub, "0", "\xf0\x9f\x98\x80\x80");
   bson_append_array_end(&attr, &sub);
   aspen_log(ASPEN_LOG_WARNING, "ACCESS", 5286307, "conn\xfe",
             "Authentication failed for \xc3", &attr);
   bson_destroy(&attr);
}

static void
test_log_invalid_utf8(void **state)
{
   (void) state;
   char *line = capture_log(log_bad_utf8);
   /* The whole line is valid UTF-8 JSON ... */
   assert_true(bson_utf8_validate(line, strlen(line), false));
   bson_t *doc = parse_log_line(line);
   bson_iter_t it;
   /* ... with U+FFFD for each bad byte and the good characters kept. */
   assert_true(bson_iter_init_find(&it, doc, "ctx"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "conn\xef\xbf\xbd");
   assert_true(bson_iter_init_find(&it, doc, "msg"));
   assert_string_equal(bson_iter_utf8(&it, NULL),
                       "Authentication failed for \xef\xbf\xbd");
   assert_true(bson_iter_init(&it, doc));
   assert_true(bson_iter_find_descendant(&it, "attr.principalName", &it));
   assert_string_equal(bson_iter_utf8(&it, NULL), "root\xef\xbf\xbd(");
   assert_true(bson_iter_init(&it, doc));
   assert_true(bson_iter_find_descendant(&it, "attr.k\xef\xbf\xbd", &it));
   assert_string_equal(bson_iter_utf8(&it, NULL),
                       "caf\xc3\xa9 \xe2\x82\xac "
                       "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!");
   assert_true(bson_iter_init(&it, doc));
   assert_true(bson_iter_find_descendant(&it, "attr.list.0", &it));
   assert_string_equal(bson_iter_utf8(&it, NULL),
                       "\xf0\x9f\x98\x80\xef\xbf\xbd");
   bson_destroy(doc);
   free(line);
}

static void
test_log_level_filter(void **state)
{
   (void) state;
   char *out = capture_log(log_filtered);
   bson_t *doc = parse_log_line(out);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, doc, "msg"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "shown 3");
   assert_true(bson_iter_init_find(&it, doc, "s"));
   assert_string_equal(bson_iter_utf8(&it, NULL), "E");
   assert_false(bson_iter_init_find(&it, doc, "attr"));
   assert_true(aspen_log_enabled(ASPEN_LOG_INFO));
   assert_false(aspen_log_enabled(ASPEN_LOG_DEBUG));
   bson_destroy(doc);
   free(out);
}

/* ======================================================================== */
/* CRC-32C                                                                   */
/* ======================================================================== */

static void
test_crc32c(void **state)
{
   (void) state;
   const uint8_t *check = (const uint8_t *) "123456789";
   assert_int_equal(aspen_crc32c(0, check, 9), 0xE3069283u);
   assert_int_equal(aspen_crc32c(0, check, 0), 0);
   /* RFC 3720 B.4: 32 bytes of zeros. */
   uint8_t zeros[32] = {0};
   assert_int_equal(aspen_crc32c(0, zeros, sizeof zeros), 0x8A9136AAu);
   /* Chaining: the CRC of a whole equals the CRC continued over its parts. */
   assert_int_equal(aspen_crc32c(aspen_crc32c(0, check, 4), check + 4, 5),
                    0xE3069283u);
   /* Agrees with the bitwise reference on every length up to 300. */
   uint8_t data[300];
   fill_pattern(data, sizeof data, 5);
   for (size_t n = 0; n <= sizeof data; n++) {
      assert_int_equal(aspen_crc32c(0, data, n), ref_crc32c(data, n));
   }
}

/* ======================================================================== */
/* Framing                                                                   */
/* ======================================================================== */

static void
test_frame_prefixes(void **state)
{
   (void) state;
   aspen_frame_t zero;
   memset(&zero, 0, sizeof zero);
   for (size_t i = 0; i < N_VECS; i++) {
      const vec_t *v = &vecs[i];
      for (size_t n = 0; n < v->bytes.len; n++) {
         guard_t g;
         aspen_frame_t frame;
         aspen_error_t err;
         guard_place(&g, v->bytes.p, n);
         assert_int_equal(aspen_frame_parse(g.data, n,
                                            ASPEN_WIRE_MAX_MESSAGE_LEN, &frame,
                                            &err),
                          ASPEN_PARSE_NEED_MORE);
         if (n < ASPEN_WIRE_HEADER_LEN) {
            assert_memory_equal(&frame, &zero, sizeof frame);
         } else {
            /* The announced length is visible as soon as the header is. */
            assert_int_equal(frame.message_length, v->bytes.len);
            assert_int_equal(frame.request_id, v->request_id);
            assert_int_equal(frame.response_to, v->response_to);
            assert_int_equal(frame.op_code, v->kind == VEC_OP_MSG
                                               ? ASPEN_OP_MSG
                                               : ASPEN_OP_QUERY);
            assert_null(frame.body);
            assert_int_equal(frame.body_len, 0);
         }
         guard_release(&g);
      }
   }
}

static void
test_frame_whole_messages(void **state)
{
   (void) state;
   for (size_t i = 0; i < N_VECS; i++) {
      const vec_t *v = &vecs[i];
      guard_t g;
      aspen_frame_t frame;
      frame_whole(&g, v->bytes.p, v->bytes.len, &frame);
      assert_int_equal(frame.request_id, v->request_id);
      assert_int_equal(frame.response_to, v->response_to);
      assert_int_equal(frame.op_code,
                       v->kind == VEC_OP_MSG ? ASPEN_OP_MSG : ASPEN_OP_QUERY);
      assert_ptr_equal(frame.body, g.data + ASPEN_WIRE_HEADER_LEN);
      assert_int_equal(frame.body_len, v->bytes.len - ASPEN_WIRE_HEADER_LEN);
      check_vec_decoded(v, &frame, v->kind == VEC_OP_MSG
                                      ? count_seqs(v->msg)
                                      : 0);
      guard_release(&g);
   }
}

/* Two messages arriving one byte at a time through an aspen_buf_t, framed
 * and consumed the way the session loop does it. */
static void
test_frame_stream(void **state)
{
   (void) state;
   aspen_buf_t in;
   aspen_buf_init(&in);
   bytes_t all = {0};
   for (size_t i = 0; i < N_VECS; i++) {
      bytes_put(&all, vecs[i].bytes.p, vecs[i].bytes.len);
   }
   size_t next = 0;
   for (size_t off = 0; off < all.len; off++) {
      aspen_buf_append(&in, all.p + off, 1);
      for (;;) {
         aspen_frame_t frame;
         aspen_error_t err;
         aspen_parse_result_t r =
            aspen_frame_parse(aspen_buf_data(&in), aspen_buf_len(&in),
                              ASPEN_WIRE_MAX_MESSAGE_LEN, &frame, &err);
         if (r == ASPEN_PARSE_NEED_MORE) {
            break;
         }
         assert_int_equal(r, ASPEN_PARSE_OK);
         assert_true(next < N_VECS);
         assert_int_equal(frame.request_id, vecs[next].request_id);
         assert_int_equal(frame.message_length, vecs[next].bytes.len);
         check_vec_decoded(&vecs[next], &frame,
                           vecs[next].kind == VEC_OP_MSG
                              ? count_seqs(vecs[next].msg)
                              : 0);
         aspen_buf_consume(&in, (size_t) frame.message_length);
         next++;
      }
   }
   assert_int_equal(next, N_VECS);
   assert_int_equal(aspen_buf_len(&in), 0);
   bytes_free(&all);
   aspen_buf_cleanup(&in);
}

/* A header announcing `length`, alone at a guard page. */
static aspen_parse_result_t
frame_header_only(int32_t length, size_t max_len, aspen_frame_t *frame,
                  aspen_error_t *err)
{
   uint8_t hdr[ASPEN_WIRE_HEADER_LEN];
   le32(hdr, (uint32_t) length);
   le32(hdr + 4, 1);
   le32(hdr + 8, 0);
   le32(hdr + 12, ASPEN_OP_MSG);
   guard_t g;
   guard_place(&g, hdr, sizeof hdr);
   aspen_error_clear(err);
   aspen_parse_result_t r =
      aspen_frame_parse(g.data, g.len, max_len, frame, err);
   guard_release(&g);
   return r;
}

static void
test_frame_length_limits(void **state)
{
   (void) state;
   const int32_t bad[] = {
      0, 1, 15, 16, -1, -17, INT32_MIN, ASPEN_WIRE_MAX_MESSAGE_LEN + 1,
      INT32_MAX};
   for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      aspen_frame_t frame;
      aspen_error_t err;
      /* Rejected from the header alone, before anything is buffered. */
      assert_int_equal(
         frame_header_only(bad[i], ASPEN_WIRE_MAX_MESSAGE_LEN, &frame, &err),
         ASPEN_PARSE_ERROR);
      assert_int_equal(err.code, ASPEN_ERR_ProtocolError);
      assert_non_null(strstr(err.message, "length"));
   }
   /* The bounds themselves are legal: they just need more bytes. */
   aspen_frame_t frame;
   aspen_error_t err;
   assert_int_equal(frame_header_only(17, ASPEN_WIRE_MAX_MESSAGE_LEN, &frame,
                                      &err),
                    ASPEN_PARSE_NEED_MORE);
   assert_int_equal(frame_header_only(ASPEN_WIRE_MAX_MESSAGE_LEN,
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, &frame, &err),
                    ASPEN_PARSE_NEED_MORE);
   assert_int_equal(frame.message_length, ASPEN_WIRE_MAX_MESSAGE_LEN);
   /* max_len is the caller's: a smaller limit applies exactly. */
   assert_int_equal(frame_header_only(1001, 1000, &frame, &err),
                    ASPEN_PARSE_ERROR);
   assert_int_equal(frame_header_only(1000, 1000, &frame, &err),
                    ASPEN_PARSE_NEED_MORE);

   /* A 17-byte frame (one body byte) is a frame; its body is not an OP_MSG. */
   uint8_t tiny[17] = {0};
   le32(tiny, 17);
   le32(tiny + 12, ASPEN_OP_MSG);
   guard_t g;
   frame_whole(&g, tiny, sizeof tiny, &frame);
   assert_int_equal(frame.body_len, 1);
   aspen_op_msg_t msg;
   assert_false(decode_op_msg(&frame, &msg, &err));
   aspen_op_query_t q;
   assert_false(decode_op_query(&frame, &q, &err));
   guard_release(&g);
}

/* Bytes after the frame belong to the next frame and are left alone. */
static void
test_frame_pipelined(void **state)
{
   (void) state;
   bytes_t two = {0};
   bytes_put(&two, vecs[0].bytes.p, vecs[0].bytes.len);
   bytes_put(&two, vecs[1].bytes.p, 5); /* start of the next message */
   guard_t g;
   aspen_frame_t frame;
   aspen_error_t err;
   guard_place(&g, two.p, two.len);
   assert_int_equal(aspen_frame_parse(g.data, g.len,
                                      ASPEN_WIRE_MAX_MESSAGE_LEN, &frame, &err),
                    ASPEN_PARSE_OK);
   assert_int_equal(frame.message_length, vecs[0].bytes.len);
   assert_int_equal(frame.body_len, vecs[0].bytes.len - ASPEN_WIRE_HEADER_LEN);
   check_vec_decoded(&vecs[0], &frame, 0);
   guard_release(&g);
   bytes_free(&two);
}

/* ======================================================================== */
/* Truncations and corruptions of every valid message                        */
/* ======================================================================== */

static void
test_truncations(void **state)
{
   (void) state;
   for (size_t i = 0; i < N_VECS; i++) {
      const vec_t *v = &vecs[i];
      uint8_t *copy = aspen_xmalloc(v->bytes.len);
      for (size_t n = ASPEN_WIRE_HEADER_LEN + 1; n < v->bytes.len; n++) {
         /* The first n bytes, with a header that claims exactly n. */
         memcpy(copy, v->bytes.p, n);
         le32(copy, (uint32_t) n);
         bool decoded;
         assert_int_equal(probe(copy, n, v->kind, &decoded), ASPEN_PARSE_OK);
         size_t c = 0;
         while (c < v->cuts.n && v->cuts.at[c] != n) {
            c++;
         }
         if (c == v->cuts.n) {
            if (decoded) {
               fail_msg("%s: truncation to %zu bytes parsed", v->name, n);
            }
            continue;
         }
         /* A cut at a section boundary is a genuinely valid message. */
         if (!decoded) {
            fail_msg("%s: valid cut at %zu bytes rejected", v->name, n);
         }
         guard_t g;
         aspen_frame_t frame;
         frame_whole(&g, copy, n, &frame);
         check_vec_decoded(v, &frame, v->cuts.n_seqs[c]);
         guard_release(&g);
      }
      free(copy);
   }
}

static void
test_corruptions(void **state)
{
   (void) state;
   static const uint8_t masks[] = {0x01, 0x80, 0xFF};
   for (size_t i = 0; i < N_VECS; i++) {
      const vec_t *v = &vecs[i];
      bool checksummed = v->kind == VEC_OP_MSG &&
                         (v->msg->flags & ASPEN_OP_MSG_CHECKSUM_PRESENT);
      uint8_t *copy = aspen_xmalloc(v->bytes.len);
      size_t accepted = 0;
      for (size_t pos = 0; pos < v->bytes.len; pos++) {
         for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(copy, v->bytes.p, v->bytes.len);
            copy[pos] ^= masks[m];
            bool decoded;
            (void) probe(copy, v->bytes.len, v->kind, &decoded);
            if (decoded && checksummed) {
               fail_msg("%s: corruption 0x%02x at byte %zu passed the "
                        "checksum",
                        v->name, masks[m], pos);
            }
            accepted += decoded;
         }
      }
      /* Some corruptions (inside values) are genuinely valid; most are not. */
      assert_true(accepted < v->bytes.len * sizeof masks);
      free(copy);
   }
}

/* ======================================================================== */
/* OP_MSG structure                                                          */
/* ======================================================================== */

/* Parses a spec and expects failure with `code` and a message containing
 * `needle`. */
static void
expect_msg_error(const msg_spec_t *spec, int32_t code, const char *needle)
{
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   aspen_error_t err;
   if (parse_spec(spec, &g, &frame, &msg, &err)) {
      fail_msg("%s: parsed, expected error %d", spec->name, code);
   }
   assert_int_equal(err.code, code);
   if (needle && !strstr(err.message, needle)) {
      fail_msg("%s: error '%s' lacks '%s'", spec->name, err.message, needle);
   }
   guard_release(&g);
}

static void
expect_msg_ok(const msg_spec_t *spec)
{
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   aspen_error_t err;
   if (!parse_spec(spec, &g, &frame, &msg, &err)) {
      fail_msg("%s: %s", spec->name, err.message);
   }
   check_op_msg(&msg, spec, count_seqs(spec));
   guard_release(&g);
}

static void
test_op_msg_flags(void **state)
{
   (void) state;
   /* Bits 0-15 are required: each unknown one fails. */
   for (uint32_t bit = 2; bit < 16; bit++) {
      msg_spec_t spec = {"required bit", 1u << bit, {BODY("{'ping': 1}")}};
      expect_msg_error(&spec, ASPEN_ERR_ProtocolError, "flag");
   }
   /* Bits 16-31 are optional: unknown ones are ignored but kept. */
   for (uint32_t bit = 16; bit < 32; bit++) {
      msg_spec_t spec = {"optional bit", 1u << bit, {BODY("{'ping': 1}")}};
      expect_msg_ok(&spec);
   }
   msg_spec_t mixed = {"all known and optional",
                       ASPEN_OP_MSG_CHECKSUM_PRESENT |
                          ASPEN_OP_MSG_MORE_TO_COME | 0xFFFF0000u,
                       {BODY("{'ping': 1}")}};
   expect_msg_ok(&mixed);
}

static void
test_op_msg_sections(void **state)
{
   (void) state;
   static const msg_spec_t bad[] = {
      {"kind 2", 0, {BODY("{'a': 1}"), RAW_KIND(2, "{'b': 1}")}},
      {"kind 2 first", 0, {RAW_KIND(2, "{'b': 1}"), BODY("{'a': 1}")}},
      {"kind 0xFF", 0, {BODY("{'a': 1}"), RAW_KIND(0xFF, "{}")}},
      {"two bodies", 0, {BODY("{'a': 1}"), BODY("{'b': 1}")}},
      {"two bodies around a sequence",
       0,
       {BODY("{'a': 1}"), SEQ("d", "{}"), BODY("{'b': 1}")}},
      {"no body", 0, {SEQ("documents", "{'x': 1}")}},
      {"no sections at all", 0, {{0}}},
      {"no body, checksummed", ASPEN_OP_MSG_CHECKSUM_PRESENT, {{0}}},
   };
   static const char *needles[] = {"kind", "kind", "kind", "kind-0",
                                   "kind-0", "kind-0", "kind-0", "kind-0"};
   for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      expect_msg_error(&bad[i], ASPEN_ERR_ProtocolError, needles[i]);
   }
   /* The maximum number of sequences passes; one more fails. */
   bytes_t b = {0};
   for (int n = 8; n <= 9; n++) {
      size_t start = msg_begin(&b, 1, 0, ASPEN_OP_MSG);
      bytes_put_u32(&b, 0);
      bytes_put_u8(&b, 0);
      bytes_put_doc(&b, tmp_bson("{'a': 1}"));
      for (int s = 0; s < n; s++) {
         char id[8];
         snprintf(id, sizeof id, "s%d", s);
         bytes_put_u8(&b, 1);
         bytes_put_u32(&b, (uint32_t) (4 + strlen(id) + 1 + 5));
         bytes_put_cstr(&b, id);
         bytes_put_doc(&b, tmp_bson("{}"));
      }
      msg_end(&b, start, false);
      guard_t g;
      aspen_frame_t frame;
      aspen_op_msg_t msg;
      aspen_error_t err;
      frame_whole(&g, b.p, b.len, &frame);
      bool ok = decode_op_msg(&frame, &msg, &err);
      assert_int_equal(ok, n <= ASPEN_OP_MSG_MAX_SEQUENCES);
      if (ok) {
         assert_int_equal(msg.n_seqs, n);
      } else {
         assert_non_null(strstr(err.message, "sequences"));
      }
      guard_release(&g);
      b.len = 0;
   }
   bytes_free(&b);
}

/* Builds an OP_MSG {a:1} body followed by one kind-1 section given as raw
 * bytes after the kind byte, and expects ProtocolError. */
static void
expect_bad_sequence(const uint8_t *raw, size_t n)
{
   bytes_t b = {0};
   size_t start = msg_begin(&b, 1, 0, ASPEN_OP_MSG);
   bytes_put_u32(&b, 0);
   bytes_put_u8(&b, 0);
   bytes_put_doc(&b, tmp_bson("{'a': 1}"));
   bytes_put_u8(&b, 1);
   bytes_put(&b, raw, n);
   msg_end(&b, start, false);
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   aspen_error_t err;
   frame_whole(&g, b.p, b.len, &frame);
   assert_false(decode_op_msg(&frame, &msg, &err));
   guard_release(&g);
   bytes_free(&b);
}

static void
test_op_msg_bad_sequences(void **state)
{
   (void) state;
   /* size < 5, size beyond the message, negative size */
   expect_bad_sequence((const uint8_t *) "\x04\x00\x00\x00", 4);
   expect_bad_sequence((const uint8_t *) "\x00\x00\x00\x00", 4);
   expect_bad_sequence((const uint8_t *) "\x07\x00\x00\x00x\x00", 6);
   expect_bad_sequence((const uint8_t *) "\xff\xff\xff\xff" "x\x00", 6);
   /* size field itself cut short */
   expect_bad_sequence((const uint8_t *) "\x06\x00", 2);
   /* empty identifier */
   expect_bad_sequence((const uint8_t *) "\x05\x00\x00\x00\x00", 5);
   /* identifier not terminated inside the section (the NUL after is not
    * part of it) */
   expect_bad_sequence((const uint8_t *) "\x06\x00\x00\x00xy", 6);
   /* a document that does not fill the rest of the section exactly */
   expect_bad_sequence((const uint8_t *) "\x0c\x00\x00\x00x\x00"
                                         "\x05\x00\x00\x00\x00\x00",
                       12);
   expect_bad_sequence((const uint8_t *) "\x0a\x00\x00\x00x\x00"
                                         "\x05\x00\x00\x00",
                       10);
   /* a sequence document that is not valid BSON */
   expect_bad_sequence((const uint8_t *) "\x0b\x00\x00\x00x\x00"
                                         "\x05\x00\x00\x00\x01",
                       11);
}

/* ======================================================================== */
/* Checksums                                                                 */
/* ======================================================================== */

static void
test_op_msg_checksum(void **state)
{
   (void) state;
   msg_spec_t spec = {"checksummed",
                      ASPEN_OP_MSG_CHECKSUM_PRESENT,
                      {BODY("{'ping': 1, '$db': 'admin'}"),
                       SEQ("documents", "{'a': 1}")}};
   bytes_t b = {0};
   encode_op_msg(&b, &spec, 77, 0, NULL);
   uint32_t sent = rd32(b.p + b.len - 4);
   assert_int_equal(sent, ref_crc32c(b.p, b.len - 4));

   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   aspen_error_t err;
   frame_whole(&g, b.p, b.len, &frame);
   assert_true(decode_op_msg(&frame, &msg, &err));
   assert_true(msg.has_checksum);
   assert_int_equal(msg.checksum, sent);
   check_op_msg(&msg, &spec, 1);
   guard_release(&g);

   /* A wrong checksum fails and says so. */
   for (size_t k = 0; k < 4; k++) {
      b.p[b.len - 4 + k] ^= 0x10;
      frame_whole(&g, b.p, b.len, &frame);
      assert_false(decode_op_msg(&frame, &msg, &err));
      assert_int_equal(err.code, ASPEN_ERR_ProtocolError);
      assert_non_null(strstr(err.message, "checksum"));
      guard_release(&g);
      b.p[b.len - 4 + k] ^= 0x10;
   }

   /* The flag with too few bytes for a checksum. */
   uint8_t short_msg[16 + 6];
   memset(short_msg, 0, sizeof short_msg);
   le32(short_msg, sizeof short_msg);
   le32(short_msg + 12, ASPEN_OP_MSG);
   le32(short_msg + 16, ASPEN_OP_MSG_CHECKSUM_PRESENT);
   frame_whole(&g, short_msg, sizeof short_msg, &frame);
   assert_false(decode_op_msg(&frame, &msg, &err));
   assert_non_null(strstr(err.message, "checksum"));
   guard_release(&g);
   bytes_free(&b);
}

/* ======================================================================== */
/* Size limits                                                               */
/* ======================================================================== */

/* A real document {x: BinData(n bytes)} of exactly `total` bytes. */
static bson_t *
doc_of_size(size_t total)
{
   /* 4 length + 1 type + "x\0" + 4 binary length + 1 subtype + 1 EOD */
   const size_t overhead = 13;
   assert_true(total >= overhead);
   uint8_t *bin = aspen_xcalloc(1, total - overhead);
   bson_t *doc = bson_new();
   assert_true(
      bson_append_binary(doc, "x", 1, BSON_SUBTYPE_BINARY, bin,
                         (uint32_t) (total - overhead)));
   free(bin);
   assert_int_equal(doc->len, total);
   return doc;
}

/* Parses an OP_MSG whose body is `body`, optionally followed by a sequence
 * holding `seq_doc`. Returns the parse result, with `err` filled. */
static bool
parse_big(const bson_t *body, const bson_t *seq_doc, aspen_error_t *err)
{
   bytes_t b = {0};
   size_t start = msg_begin(&b, 1, 0, ASPEN_OP_MSG);
   bytes_put_u32(&b, 0);
   bytes_put_u8(&b, 0);
   bytes_put_doc(&b, body);
   if (seq_doc) {
      bytes_put_u8(&b, 1);
      bytes_put_u32(&b, 4 + 2 + seq_doc->len);
      bytes_put_cstr(&b, "d");
      bytes_put_doc(&b, seq_doc);
   }
   msg_end(&b, start, false);
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   frame_whole(&g, b.p, b.len, &frame);
   bytes_free(&b);
   bool ok = decode_op_msg(&frame, &msg, err);
   guard_release(&g);
   return ok;
}

static void
test_op_msg_size_limits(void **state)
{
   (void) state;
   aspen_error_t err;
   bson_t *small = tmp_bson("{'insert': 'c'}");

   /* A command body may be 16MB + 16KB, not one byte more. */
   bson_t *doc = doc_of_size(ASPEN_WIRE_MAX_COMMAND_LEN);
   assert_true(parse_big(doc, NULL, &err));
   bson_destroy(doc);
   doc = doc_of_size(ASPEN_WIRE_MAX_COMMAND_LEN + 1);
   assert_false(parse_big(doc, NULL, &err));
   assert_int_equal(err.code, ASPEN_ERR_BSONObjectTooLarge);
   bson_destroy(doc);

   /* A sequence document is a user document: 16MB. */
   doc = doc_of_size(ASPEN_WIRE_MAX_BSON_LEN);
   assert_true(parse_big(small, doc, &err));
   bson_destroy(doc);
   doc = doc_of_size(ASPEN_WIRE_MAX_BSON_LEN + 1);
   assert_false(parse_big(small, doc, &err));
   assert_int_equal(err.code, ASPEN_ERR_BSONObjectTooLarge);
   bson_destroy(doc);

   /* A header that merely claims a huge body inside a small message is
    * malformed rather than too large: the length does not fit. */
   uint8_t claim[16 + 4 + 1 + 5];
   memset(claim, 0, sizeof claim);
   le32(claim, sizeof claim);
   le32(claim + 12, ASPEN_OP_MSG);
   le32(claim + 21, ASPEN_WIRE_MAX_COMMAND_LEN + 1);
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   frame_whole(&g, claim, sizeof claim, &frame);
   assert_false(decode_op_msg(&frame, &msg, &err));
   assert_int_equal(err.code, ASPEN_ERR_InvalidBSON);
   guard_release(&g);
}

/* ======================================================================== */
/* Nested corrupt BSON                                                       */
/* ======================================================================== */

static size_t
find_bytes(const uint8_t *hay, size_t n, const void *needle, size_t m)
{
   for (size_t i = 0; i + m <= n; i++) {
      if (memcmp(hay + i, needle, m) == 0) {
         return i;
      }
   }
   fail_msg("pattern not found");
   return 0;
}

/* A corruption of the test body: the int32 length right after element
 * `marker` (type byte + key; its NUL is matched too) is shifted by `delta`
 * or, if `absolute`, replaced by `value`. */
typedef struct {
   const char *name;
   const char *marker;
   size_t marker_len;
   int32_t delta;   /* added to the length ... */
   bool absolute;   /* ... or replaces it */
   int32_t value;
} nested_case_t;

#define MARK(s) (s), (sizeof(s) - 1)

static void
test_op_msg_nested_corrupt(void **state)
{
   (void) state;
   static const char *json =
      "{'find': 'c', 'outer': {'s': 'xy', 'n': 1, "
      "'arr': [{'deep': {'k': 'v'}}, 2]}, 'tail': 1}";
   static const nested_case_t cases[] = {
      {"subdocument length +1", MARK("\x03outer"), 1, false, 0},
      {"subdocument length -1", MARK("\x03outer"), -1, false, 0},
      {"subdocument length +5", MARK("\x03outer"), 5, false, 0},
      {"subdocument length 0", MARK("\x03outer"), 0, true, 0},
      {"subdocument length 4", MARK("\x03outer"), 0, true, 4},
      {"subdocument length 5", MARK("\x03outer"), 0, true, 5},
      {"subdocument length huge", MARK("\x03outer"), 0, true,
       INT32_MAX},
      {"subdocument length negative", MARK("\x03outer"), 0, true, -1},
      {"string length +1", MARK("\x02s"), 1, false, 0},
      {"string length -1", MARK("\x02s"), -1, false, 0},
      {"string length 0", MARK("\x02s"), 0, true, 0},
      {"array length +1", MARK("\x04" "arr"), 1, false, 0},
      {"array length -1", MARK("\x04" "arr"), -1, false, 0},
      {"doc in array length -1", MARK("\x03" "0"), -1, false, 0},
      {"doc in array length +1", MARK("\x03" "0"), 1, false, 0},
      {"third level length -1", MARK("\x03" "deep"), -1, false, 0},
      {"third level length +2", MARK("\x03" "deep"), 2, false, 0},
      {"third level string length +3", MARK("\x02k"), 3, false, 0},
   };
   for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      const nested_case_t *nc = &cases[i];
      bytes_t b = {0};
      size_t start = msg_begin(&b, 1, 0, ASPEN_OP_MSG);
      bytes_put_u32(&b, 0);
      bytes_put_u8(&b, 0);
      size_t doc_at = b.len;
      bytes_put_doc(&b, tmp_bson(json));
      msg_end(&b, start, false);
      size_t at = doc_at + find_bytes(b.p + doc_at, b.len - doc_at,
                                      nc->marker, nc->marker_len + 1) +
                  nc->marker_len + 1;
      int32_t len = (int32_t) rd32(b.p + at);
      le32(b.p + at, (uint32_t) (nc->absolute ? nc->value : len + nc->delta));

      guard_t g;
      aspen_frame_t frame;
      aspen_op_msg_t msg;
      aspen_error_t err;
      frame_whole(&g, b.p, b.len, &frame);
      if (decode_op_msg(&frame, &msg, &err)) {
         fail_msg("%s: nested corrupt BSON was accepted", nc->name);
      }
      assert_int_equal(err.code, ASPEN_ERR_InvalidBSON);
      guard_release(&g);

      /* The same document inside a sequence is rejected too. */
      bytes_t s = {0};
      start = msg_begin(&s, 1, 0, ASPEN_OP_MSG);
      bytes_put_u32(&s, 0);
      bytes_put_u8(&s, 0);
      bytes_put_doc(&s, tmp_bson("{'insert': 'c'}"));
      bytes_put_u8(&s, 1);
      bytes_put_u32(&s, (uint32_t) (4 + 2 + rd32(b.p + doc_at)));
      bytes_put_cstr(&s, "d");
      bytes_put(&s, b.p + doc_at, rd32(b.p + doc_at));
      msg_end(&s, start, false);
      frame_whole(&g, s.p, s.len, &frame);
      if (decode_op_msg(&frame, &msg, &err)) {
         fail_msg("%s: nested corrupt BSON in a sequence was accepted",
                  nc->name);
      }
      guard_release(&g);
      bytes_free(&s);
      bytes_free(&b);
   }
}

/* ======================================================================== */
/* Document sequences folded into the command                                */
/* ======================================================================== */

static void
test_op_msg_command_view(void **state)
{
   (void) state;
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   aspen_error_t err;
   msg_spec_t spec = {"no sequences", 0, {BODY("{'ping': 1, 'x': [1]}")}};
   assert_true(parse_spec(&spec, &g, &frame, &msg, &err));
   bson_t cmd;
   bool owned = true;
   assert_true(aspen_op_msg_command(&msg, &cmd, &owned, &err));
   assert_false(owned);
   /* A view of the same bytes, not a copy. */
   assert_ptr_equal(bson_get_data(&cmd), bson_get_data(&msg.body));
   assert_int_equal(cmd.len, msg.body.len);
   assert_bson_equal(&cmd, tmp_bson("{'ping': 1, 'x': [1]}"));
   guard_release(&g);
}

/* Parses `spec`, builds its command and compares it with `want` (NULL:
 * expect failure whose message contains `needle`). */
static void
expect_command(const msg_spec_t *spec, const char *want, const char *needle)
{
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   aspen_error_t err;
   if (!parse_spec(spec, &g, &frame, &msg, &err)) {
      fail_msg("%s: %s", spec->name, err.message);
   }
   bson_t cmd;
   bool owned = false;
   aspen_error_clear(&err);
   bool ok = aspen_op_msg_command(&msg, &cmd, &owned, &err);
   if (want) {
      if (!ok) {
         fail_msg("%s: %s", spec->name, err.message);
      }
      assert_bson_equal(&cmd, tmp_bson(want));
   } else {
      if (ok) {
         fail_msg("%s: command built, expected failure", spec->name);
      }
      assert_int_equal(err.code, ASPEN_ERR_ProtocolError);
      assert_non_null(strstr(err.message, needle));
   }
   if (owned) {
      bson_destroy(&cmd);
   }
   guard_release(&g);
}

static void
test_op_msg_command_merge(void **state)
{
   (void) state;
   msg_spec_t one = {"one sequence",
                     0,
                     {BODY("{'insert': 'c', '$db': 'test'}"),
                      SEQ("documents", "{'_id': 1}", "{'_id': 2}",
                          "{'_id': 3, 'a': {'b': 1}}")}};
   expect_command(&one,
                  "{'insert': 'c', '$db': 'test', 'documents': [{'_id': 1}, "
                  "{'_id': 2}, {'_id': 3, 'a': {'b': 1}}]}",
                  NULL);
   msg_spec_t two = {"two sequences, one before the body",
                     0,
                     {SEQ("ops", "{'i': 0}", "{'i': 1}"),
                      BODY("{'bulkWrite': 1}"),
                      SEQ("nsInfo", "{'ns': 'a.b'}")}};
   expect_command(&two,
                  "{'bulkWrite': 1, 'ops': [{'i': 0}, {'i': 1}], "
                  "'nsInfo': [{'ns': 'a.b'}]}",
                  NULL);
   msg_spec_t empty = {"empty sequence",
                       0,
                       {BODY("{'insert': 'c'}"), SEQ("documents", NULL)}};
   expect_command(&empty, "{'insert': 'c', 'documents': []}", NULL);

   msg_spec_t dup_body = {"duplicates a body key",
                          0,
                          {BODY("{'insert': 'c', 'documents': []}"),
                           SEQ("documents", "{'_id': 1}")}};
   expect_command(&dup_body, NULL, "duplicates");
   msg_spec_t dup_seq = {"two sequences with one name",
                         0,
                         {BODY("{'insert': 'c'}"), SEQ("documents", "{'a': 1}"),
                          SEQ("documents", "{'b': 1}")}};
   expect_command(&dup_seq, NULL, "two document sequences");
   /* A literal dotted key is a duplicate too; a dotted identifier that
    * merely matches a nested path is not. */
   msg_spec_t dotted_dup = {"dotted name duplicates a body key",
                            0,
                            {BODY("{'insert': 'c', 'a.b': 1}"),
                             SEQ("a.b", "{'x': 1}")}};
   expect_command(&dotted_dup, NULL, "duplicates");
   msg_spec_t dotted_path = {"dotted name matching a nested path",
                             0,
                             {BODY("{'insert': 'c', 'a': {'b': 1}}"),
                              SEQ("a.b", "{'x': 1}")}};
   expect_command(&dotted_path,
                  "{'insert': 'c', 'a': {'b': 1}, 'a.b': [{'x': 1}]}", NULL);
}

/* Sequences of many tiny documents grow when folded into arrays (each gains
 * a type byte and an index key), so a legal message can make a command over
 * the message limit: that fails with BSONObjectTooLarge and leaves nothing
 * to free. */
static void
test_op_msg_command_too_large(void **state)
{
   (void) state;
   const size_t n_docs = 3600000; /* 18MB of {} become ~50MB of array */
   bytes_t b = {0};
   size_t start = msg_begin(&b, 1, 0, ASPEN_OP_MSG);
   bytes_put_u32(&b, 0);
   bytes_put_u8(&b, 0);
   bytes_put_doc(&b, tmp_bson("{'insert': 'c'}"));
   bytes_put_u8(&b, 1);
   bytes_put_u32(&b, (uint32_t) (4 + 2 + 5 * n_docs));
   bytes_put_cstr(&b, "d");
   static const uint8_t empty[5] = {5, 0, 0, 0, 0};
   for (size_t i = 0; i < n_docs; i++) {
      bytes_put(&b, empty, sizeof empty);
   }
   msg_end(&b, start, false);
   guard_t g;
   aspen_frame_t frame;
   aspen_op_msg_t msg;
   aspen_error_t err;
   frame_whole(&g, b.p, b.len, &frame);
   bytes_free(&b);
   assert_true(aspen_op_msg_parse(&frame, &msg, &err));
   assert_int_equal(msg.seqs[0].count, n_docs);
   bson_t cmd;
   bool owned = false;
   assert_false(aspen_op_msg_command(&msg, &cmd, &owned, &err));
   assert_int_equal(err.code, ASPEN_ERR_BSONObjectTooLarge);
   assert_true(bson_empty(&cmd));
   /* Deliberately no bson_destroy: LeakSanitizer checks nothing was left. */
   guard_release(&g);
}

/* ======================================================================== */
/* OP_QUERY                                                                  */
/* ======================================================================== */

static void
test_op_query_shapes(void **state)
{
   (void) state;
   guard_t g;
   aspen_frame_t frame;
   aspen_op_query_t q;
   aspen_error_t err;
   const query_spec_t *spec = &valid_queries[1];

   /* Trailing bytes after the selector are an error. */
   bytes_t b = {0};
   encode_op_query(&b, spec, 1, NULL);
   size_t start = 0;
   bytes_put_u8(&b, 0);
   msg_end(&b, start, false);
   frame_whole(&g, b.p, b.len, &frame);
   assert_false(decode_op_query(&frame, &q, &err));
   assert_non_null(strstr(err.message, "trailing"));
   guard_release(&g);
   bytes_free(&b);

   /* A header-only body, a name with no NUL, a missing query. */
   static const struct {
      const char *raw;
      size_t n;
   } bad[] = {
      {"", 0},
      {"\x00\x00\x00\x00", 4},
      {"\x00\x00\x00\x00" "admin.$cmd", 14},
      {"\x00\x00\x00\x00" "admin.$cmd\x00\x00\x00\x00\x00\xff\xff\xff\xff", 23},
      {"\x00\x00\x00\x00" "a\x00\x00\x00\x00\x00\x01\x00\x00\x00"
       "\x05\x00\x00\x00", 18},
   };
   for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      bytes_t r = {0};
      start = msg_begin(&r, 1, 0, ASPEN_OP_QUERY);
      bytes_put(&r, bad[i].raw, bad[i].n);
      if (r.len == ASPEN_WIRE_HEADER_LEN) {
         bytes_put_u8(&r, 0); /* frames need one body byte */
      }
      msg_end(&r, start, false);
      frame_whole(&g, r.p, r.len, &frame);
      assert_false(decode_op_query(&frame, &q, &err));
      guard_release(&g);
      bytes_free(&r);
   }

   /* A query over the command limit is too large. */
   bson_t *big = doc_of_size(ASPEN_WIRE_MAX_COMMAND_LEN + 1);
   start = msg_begin(&b, 1, 0, ASPEN_OP_QUERY);
   bytes_put_u32(&b, 0);
   bytes_put_cstr(&b, "admin.$cmd");
   bytes_put_u32(&b, 0);
   bytes_put_u32(&b, (uint32_t) -1);
   bytes_put_doc(&b, big);
   msg_end(&b, start, false);
   bson_destroy(big);
   frame_whole(&g, b.p, b.len, &frame);
   assert_false(decode_op_query(&frame, &q, &err));
   assert_int_equal(err.code, ASPEN_ERR_BSONObjectTooLarge);
   guard_release(&g);
   bytes_free(&b);
}

/* ======================================================================== */
/* Replies                                                                   */
/* ======================================================================== */

static void
test_reply_op_msg(void **state)
{
   (void) state;
   aspen_buf_t out;
   aspen_buf_init(&out);
   aspen_buf_append(&out, "junk", 4); /* replies append after what is there */
   bson_t *doc1 = tmp_bson("{'ok': 1.0, 'isWritablePrimary': true, "
                           "'maxWireVersion': 21}");
   bson_t *doc2 = tmp_bson("{'ok': 0.0, 'errmsg': 'x', 'code': 2, "
                           "'codeName': 'BadValue'}");
   aspen_reply_op_msg(&out, 501, 77, doc1);
   aspen_reply_op_msg(&out, -3, INT32_MAX, doc2);

   const bson_t *docs[2] = {doc1, doc2};
   const int32_t ids[2][2] = {{501, 77}, {-3, INT32_MAX}};
   assert_memory_equal(aspen_buf_data(&out), "junk", 4);
   size_t off = 4;
   for (int i = 0; i < 2; i++) {
      const uint8_t *p = aspen_buf_data(&out) + off;
      size_t left = aspen_buf_len(&out) - off;
      size_t len = rd32(p);
      assert_true(len <= left);
      guard_t g;
      aspen_frame_t frame;
      aspen_op_msg_t msg;
      aspen_error_t err;
      frame_whole(&g, p, len, &frame);
      assert_int_equal(frame.message_length,
                       ASPEN_WIRE_HEADER_LEN + 4 + 1 + docs[i]->len);
      assert_int_equal(frame.request_id, ids[i][0]);
      assert_int_equal(frame.response_to, ids[i][1]);
      assert_int_equal(frame.op_code, ASPEN_OP_MSG);
      assert_true(decode_op_msg(&frame, &msg, &err));
      assert_int_equal(msg.flags, 0);
      assert_int_equal(msg.n_seqs, 0);
      assert_false(msg.has_checksum);
      assert_bson_equal(&msg.body, docs[i]);
      guard_release(&g);
      off += len;
   }
   assert_int_equal(off, aspen_buf_len(&out));
   aspen_buf_cleanup(&out);
}

static void
test_reply_op_reply(void **state)
{
   (void) state;
   aspen_buf_t out;
   aspen_buf_init(&out);
   bson_t *doc = tmp_bson("{'ismaster': true, 'ok': 1.0}");
   aspen_reply_op_reply(&out, 9, 1234, 8 /* AwaitCapable */, doc);

   guard_t g;
   aspen_frame_t frame;
   frame_whole(&g, aspen_buf_data(&out), aspen_buf_len(&out), &frame);
   assert_int_equal(frame.message_length, 16 + 20 + doc->len);
   assert_int_equal(frame.request_id, 9);
   assert_int_equal(frame.response_to, 1234);
   assert_int_equal(frame.op_code, ASPEN_OP_REPLY);
   const uint8_t *p = frame.body;
   assert_int_equal(rd32(p), 8);      /* responseFlags */
   assert_int_equal(rd32(p + 4), 0);  /* cursorID, low */
   assert_int_equal(rd32(p + 8), 0);  /* cursorID, high */
   assert_int_equal(rd32(p + 12), 0); /* startingFrom */
   assert_int_equal(rd32(p + 16), 1); /* numberReturned */
   bson_t got;
   assert_true(bson_init_static(&got, p + 20, frame.body_len - 20));
   assert_true(bson_validate(&got, BSON_VALIDATE_NONE, NULL));
   assert_bson_equal(&got, doc);
   guard_release(&g);
   aspen_buf_cleanup(&out);
}

/* The command reply bodies (reply.c): the error one formats its message
 * and has the same shape as aspen_error_append_reply's; the ok one is
 * {ok: 1.0}. */
static void
test_reply_bodies(void **state)
{
   (void) state;
   bson_t doc = BSON_INITIALIZER;
   aspen_reply_error(&doc, ASPEN_ERR_CommandNotFound, "no such command: %s",
                     "x");
   assert_bson_equal(&doc,
                     tmp_bson("{'ok': 0.0, 'errmsg': 'no such command: x', "
                              "'code': 59, 'codeName': 'CommandNotFound'}"));
   bson_reinit(&doc);
   aspen_reply_ok(&doc);
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, &doc, "ok"));
   assert_int_equal(bson_iter_type(&it), BSON_TYPE_DOUBLE);
   assert_true(bson_iter_double(&it) == 1.0);
   assert_int_equal(bson_count_keys(&doc), 1);
   bson_destroy(&doc);
}

/* The clocks (clock.c): the wall clock agrees with time() read around it,
 * and the monotonic clock never goes back. */
static void
test_clocks(void **state)
{
   (void) state;
   /* Bracketed by the same clock read directly: time() reads a coarse clock
    * that can lag CLOCK_REALTIME by a tick, across a second boundary too. */
   struct timespec b, e;
   clock_gettime(CLOCK_REALTIME, &b);
   int64_t now = aspen_clock_now_ms();
   clock_gettime(CLOCK_REALTIME, &e);
   assert_true(now >= (int64_t) b.tv_sec * 1000 + b.tv_nsec / 1000000);
   assert_true(now <= (int64_t) e.tv_sec * 1000 + e.tv_nsec / 1000000);
   int64_t prev = aspen_clock_mono_ms();
   for (int i = 0; i < 1000; i++) {
      int64_t mono = aspen_clock_mono_ms();
      assert_true(mono >= prev);
      prev = mono;
   }
}

/* FNV-1a (hash.h) against the published 64-bit test vectors. */
static void
test_hash_fnv1a(void **state)
{
   (void) state;
   assert_true(aspen_hash_fnv1a("", 0) == 0xcbf29ce484222325ull);
   assert_true(aspen_hash_fnv1a("a", 1) == 0xaf63dc4c8601ec8cull);
   assert_true(aspen_hash_fnv1a("foobar", 6) == 0x85944171f73967e8ull);
   /* Only the bytes given count. */
   assert_true(aspen_hash_fnv1a("foobarbaz", 6) ==
               aspen_hash_fnv1a("foobar", 6));
}


/* bytes.h: little-endian, whatever the host's order. */
static void
test_bytes_le32(void **state)
{
   (void) state;
   uint8_t b[4];
   aspen_bytes_put_le32(b, 0x11223344u);
   assert_int_equal(b[0], 0x44);
   assert_int_equal(b[3], 0x11);
   assert_int_equal(aspen_bytes_get_le32(b), 0x11223344u);
   aspen_bytes_put_le32(b, 0xffffffffu);
   assert_int_equal(aspen_bytes_get_le32(b), 0xffffffffu);
   /* 64 bits: the low word first, and the sign bit of a negative int64. */
   const uint8_t q[8] = {0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
   assert_true(aspen_bytes_get_le64(q) == 0x1122334455667788ull);
   const uint8_t neg[8] = {0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
   assert_true((int64_t) aspen_bytes_get_le64(neg) == -2);
}

/* bsonw.h's word-at-a-time key length: the first NUL's position (bytes
 * after it, high bits and 0x01 bytes included, change nothing), or `room`
 * when none is in the first `room` bytes; checked against a byte loop. */
static void
test_bsonw_raw_key_len(void **state)
{
   (void) state;
   uint8_t buf[40];
   uint32_t seed = 12345;
   size_t checked = 0;
   for (int round = 0; round < 4000; round++) {
      for (size_t i = 0; i < sizeof buf; i++) {
         seed = seed * 1103515245u + 12345u;
         uint8_t b = (uint8_t) (seed >> 16);
         /* Mostly bytes the trick could confuse: 0x01, 0x80, 0xff. */
         buf[i] = (b & 3) == 0 ? 0x01 : (b & 3) == 1 ? 0x80 : b | 1;
      }
      size_t nul = (size_t) (seed >> 8) % (sizeof buf + 1);
      if (nul < sizeof buf) {
         buf[nul] = 0;
      }
      for (size_t room = 0; room <= sizeof buf; room++) {
         size_t want = 0;
         while (want < room && buf[want]) {
            want++;
         }
         assert_int_equal(aspen_bsonw_raw_key_len(buf, room), want);
         checked++;
      }
   }
   assert_true(checked > 100000);
}

static char *
slurp_small(const char *path)
{
   FILE *f = fopen(path, "rb");
   if (!f) {
      return NULL;
   }
   char *text = calloc(1, 256);
   size_t n = fread(text, 1, 255, f);
   text[n] = '\0';
   fclose(f);
   return text;
}

/* file.c: the atomic replace creates the folder, writes the mode asked
 * for, names its temp file per process when asked, and on a failure
 * leaves the old file whole and no temp file behind. */
static void
test_file_write_atomic(void **state)
{
   (void) state;
   char dir[] = "/tmp/aspen-test-file-XXXXXX";
   assert_non_null(mkdtemp(dir));
   char path[256], tmp[300], sub[256];
   snprintf(sub, sizeof sub, "%s/a/b", dir);
   snprintf(path, sizeof path, "%s/f.json", sub);
   aspen_error_t err;
   assert_true(aspen_file_write_atomic(path, "one", 3, 0600, 0, &err));
   char *text = slurp_small(path);
   assert_string_equal(text, "one");
   free(text);
   struct stat st;
   assert_int_equal(stat(path, &st), 0);
   assert_int_equal(st.st_mode & 0777, 0600);
   assert_int_equal(stat(sub, &st), 0);
   assert_int_equal(st.st_mode & 0777, 0700);
   /* "<path>.tmp" taken by a folder: refused, old file kept. */
   snprintf(tmp, sizeof tmp, "%s.tmp", path);
   assert_int_equal(mkdir(tmp, 0700), 0);
   assert_false(aspen_file_write_atomic(path, "two", 3, 0600, 0, &err));
   assert_int_equal(err.code, ASPEN_ERR_InternalError);
   assert_non_null(strstr(err.message, "cannot write"));
   text = slurp_small(path);
   assert_string_equal(text, "one");
   free(text);
   /* Per process: "<path>.tmp.<pid>", so the folder is no obstacle. */
   assert_true(aspen_file_write_atomic(path, "three", 5, 0600,
                                       ASPEN_FILE_TMP_PER_PROCESS, &err));
   text = slurp_small(path);
   assert_string_equal(text, "three");
   free(text);
   char ptmp[320];
   snprintf(ptmp, sizeof ptmp, "%s.tmp.%d", path, (int) getpid());
   assert_int_equal(stat(ptmp, &st), -1);
   assert_int_equal(mkdir(ptmp, 0700), 0);
   assert_false(aspen_file_write_atomic(path, "four", 4, 0600,
                                        ASPEN_FILE_TMP_PER_PROCESS, &err));
   text = slurp_small(path);
   assert_string_equal(text, "three");
   free(text);
   assert_int_equal(rmdir(ptmp), 0);
   assert_int_equal(rmdir(tmp), 0);
   assert_int_equal(unlink(path), 0);
   assert_true(aspen_file_fsync_dir(sub));
   assert_false(aspen_file_fsync_dir(path));
   assert_int_equal(rmdir(sub), 0);
   snprintf(sub, sizeof sub, "%s/a", dir);
   assert_int_equal(rmdir(sub), 0);
   assert_int_equal(rmdir(dir), 0);
}


/* Integers in decimal without printf: what "%" PRId64 prints. */
static void
test_bytes_dec_int64(void **state)
{
   (void) state;
   const int64_t vals[] = {0, 1, -1, 9, 10, -10, 99, 100, 123456789,
                           INT32_MAX, INT32_MIN, (int64_t) INT32_MAX + 1,
                           INT64_MAX, INT64_MIN, INT64_MIN + 1,
                           -1000000000000LL};
   for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
      char want[32], got[32];
      snprintf(want, sizeof want, "%" PRId64, vals[i]);
      size_t n = aspen_bytes_dec_int64(vals[i], got);
      assert_string_equal(got, want);
      assert_int_equal(n, strlen(want));
   }
}

/* ======================================================================== */
/* The BSON writer                                                           */
/* ======================================================================== */

/* One element of every BSON type, nested documents and arrays, and keys of
 * several lengths: the writer must produce libbson's bytes exactly. */
static const char *const bsonw_doc_json =
   "{'d': 1.5, 's': 'x\\u0000y', 'o': {'a': 1, 'b': [1, 'two', null]}, "
   "'arr': [{'x': 1}, 2], 'bin': {'$binary': {'base64': 'AQID', "
   "'subType': '00'}}, 'old': {'$binary': {'base64': 'AQID', 'subType': "
   "'02'}}, 'u': {'$undefined': true}, 'id': {'$oid': "
   "'0123456789abcdef01234567'}, 't': true, 'f': false, 'dt': {'$date': "
   "{'$numberLong': '1795000000000'}}, 'n': null, 're': {'$regularExpression':"
   " {'pattern': 'a.b', 'options': 'mi'}}, 'dbp': {'$dbPointer': {'$ref': "
   "'c', '$id': {'$oid': '0123456789abcdef01234567'}}}, 'code': {'$code': "
   "'f()'}, 'sym': {'$symbol': 'sy'}, 'cws': {'$code': 'g()', '$scope': "
   "{'v': 1}}, 'i': {'$numberInt': '-7'}, 'ts': {'$timestamp': {'t': 5, "
   "'i': 6}}, 'l': {'$numberLong': '-9000000000'}, 'dec': "
   "{'$numberDecimal': '1.25'}, 'max': {'$maxKey': 1}, 'min': {'$minKey': "
   "1}, 'a long key of forty characters or so ...': 0}";

/* Finishes `wall`, which must hold `all`'s bytes; frees both and `w`. */
static void
bsonw_same_and_free(aspen_bsonw_t *wall, bson_t *all, aspen_bsonw_t *w)
{
   bson_t got;
   assert_true(aspen_bsonw_finish(wall, &got));
   assert_int_equal(got.len, all->len);
   assert_memory_equal(bson_get_data(&got), bson_get_data(all), got.len);
   bson_destroy(all);
   aspen_bsonw_cleanup(wall);
   aspen_bsonw_cleanup(w);
}

/* bsonw.h's mirror of libbson's bson_t layouts: aspen_bsonw_data is
 * bson_get_data for every kind of bson_t libbson makes (inline on the
 * stack and on the heap, grown past inline, sized, static, read from
 * bytes, copied, a child being appended to, the writer's), and the bson_t
 * aspen_bsonw_finish points at its bytes is field for field the one
 * bson_init_static makes there, which libbson then reads as its own. */
static void
check_data(const bson_t *doc)
{
   assert_ptr_equal(aspen_bsonw_data(doc), bson_get_data(doc));
}

static void
test_bson_abi_data(void **state)
{
   (void) state;
   bson_t stack = BSON_INITIALIZER;
   check_data(&stack);
   BSON_APPEND_INT32(&stack, "a", 1);
   check_data(&stack); /* inline */
   char big[300];
   memset(big, 'x', sizeof big - 1);
   big[sizeof big - 1] = 0;
   BSON_APPEND_UTF8(&stack, "b", big);
   check_data(&stack); /* grown: allocated */
   bson_t *heap = bson_new();
   BSON_APPEND_INT32(heap, "a", 1);
   check_data(heap); /* inline, on the heap */
   BSON_APPEND_UTF8(heap, "b", big);
   check_data(heap);
   bson_t *sized = bson_sized_new(4096);
   BSON_APPEND_INT32(sized, "a", 1);
   check_data(sized);
   bson_t child;
   BSON_APPEND_DOCUMENT_BEGIN(sized, "c", &child);
   BSON_APPEND_INT32(&child, "x", 1);
   check_data(&child); /* a child: the parent's buffer at an offset */
   bson_append_document_end(sized, &child);
   check_data(sized);
   bson_t *copy = bson_copy(&stack);
   check_data(copy);
   bson_t *from = bson_new_from_data(bson_get_data(&stack), stack.len);
   check_data(from);
   bson_t view;
   assert_true(bson_init_static(&view, bson_get_data(&stack), stack.len));
   check_data(&view);
   bson_t in_place;
   bson_copy_to(heap, &in_place);
   check_data(&in_place);
   bson_t json;
   bson_error_t berr;
   assert_true(bson_init_from_json(&json, "{\"a\": [1, 2, {\"b\": 3}]}", -1,
                                   &berr));
   check_data(&json);
   aspen_bsonw_t w;
   aspen_bsonw_init(&w);
   aspen_bsonw_reset(&w);
   bson_t out;
   assert_true(aspen_bsonw_finish(&w, &out));
   check_data(&out);
   assert_ptr_equal(aspen_bsonw_data(&out), w.data);
   aspen_bsonw_cleanup(&w);
   bson_destroy(&json);
   bson_destroy(&in_place);
   bson_destroy(from);
   bson_destroy(copy);
   bson_destroy(sized);
   bson_destroy(heap);
   bson_destroy(&stack);
}

static void
test_bson_abi_finish(void **state)
{
   (void) state;
   bson_error_t berr;
   bson_t *all = bson_new_from_json((const uint8_t *) "{\"a\": 1, \"s\": "
                                    "\"str\", \"o\": {\"p\": [1, 2]}}",
                                    -1, &berr);
   assert_non_null(all);
   for (int grow = 0; grow < 2; grow++) {
      uint8_t buf[256];
      aspen_bsonw_t w;
      /* the stack buffer, then (grown past it) the heap */
      aspen_bsonw_init_static(&w, buf, grow ? 16 : sizeof buf);
      aspen_bsonw_reset(&w);
      bson_iter_t it;
      assert_true(bson_iter_init(&it, all));
      while (bson_iter_next(&it)) {
         aspen_bsonw_element(&w, &it);
      }
      /* The same bson_t storage twice (its pointers into itself compare
       * equal), every byte set beforehand so none is left unwritten. */
      bson_t out;
      uint8_t want[sizeof out];
      memset(&out, 0xa5, sizeof out);
      assert_true(aspen_bsonw_finish(&w, &out));
      uint8_t got[sizeof out];
      memcpy(got, &out, sizeof out);
      memset(&out, 0xa5, sizeof out);
      assert_true(bson_init_static(&out, w.data, w.len));
      memcpy(want, &out, sizeof out);
      assert_memory_equal(got, want, sizeof out);
      /* libbson reads it as its own: bytes, iteration, copy, JSON. */
      memcpy(&out, got, sizeof out);
      assert_int_equal(out.len, all->len);
      assert_memory_equal(bson_get_data(&out), bson_get_data(all), out.len);
      assert_true(bson_equal(&out, all));
      assert_true(bson_validate(&out, BSON_VALIDATE_NONE, NULL));
      assert_int_equal(bson_count_keys(&out), 3);
      bson_t *copy = bson_copy(&out);
      assert_true(bson_equal(copy, all));
      bson_destroy(copy);
      char *a = bson_as_canonical_extended_json(&out, NULL);
      char *b = bson_as_canonical_extended_json(all, NULL);
      assert_string_equal(a, b);
      bson_free(a);
      bson_free(b);
      bson_destroy(&out); /* a static bson_t: frees nothing */
      aspen_bsonw_cleanup(&w);
   }
   /* A writer finished without a reset: libbson's answer (a 1-byte
    * document is none). */
   aspen_bsonw_t w;
   aspen_bsonw_init(&w);
   bson_t out;
   assert_false(aspen_bsonw_finish(&w, &out));
   aspen_bsonw_cleanup(&w);
   bson_destroy(all);
}

/* Keys of every length from 0 to 40 (aspen_bsonw_copy_short's cases and
 * past them), each on a fresh buffer and after others: libbson's bytes. */
static void
test_bsonw_key_lengths(void **state)
{
   (void) state;
   char key[41];
   for (size_t n = 0; n <= 40; n++) {
      key[n] = (char) ('a' + n % 26);
   }
   aspen_bsonw_t w;
   aspen_bsonw_init(&w);
   bson_t all = BSON_INITIALIZER;
   aspen_bsonw_t wall;
   aspen_bsonw_init(&wall);
   aspen_bsonw_reset(&wall);
   for (size_t n = 0; n <= 40; n++) {
      bson_value_t v = {.value_type = BSON_TYPE_INT32};
      v.value.v_int32 = (int32_t) n;
      bson_t want = BSON_INITIALIZER, got;
      assert_true(bson_append_value(&want, key, (int) n, &v));
      aspen_bsonw_reset(&w);
      aspen_bsonw_value(&w, key, n, &v);
      assert_true(aspen_bsonw_finish(&w, &got));
      assert_int_equal(got.len, want.len);
      assert_memory_equal(bson_get_data(&got), bson_get_data(&want), got.len);
      bson_destroy(&want);
      assert_true(bson_append_value(&all, key + 40 - n, (int) n, &v));
      aspen_bsonw_value(&wall, key + 40 - n, n, &v);
   }
   bsonw_same_and_free(&wall, &all, &w);
}

/* The values aspen_bsonw_value stores in place (bool, int32, int64,
 * double, date, strings of up to 32 bytes, keys of up to 16) and those
 * just past those bounds, under keys of 0 to 20 bytes, into a writer that
 * starts empty, one on a small stack buffer that must grow, and after
 * other values: libbson's bytes each time. */
static void
test_bsonw_scalars_in_place(void **state)
{
   (void) state;
   char key[21], str[41];
   for (size_t n = 0; n < sizeof key; n++) {
      key[n] = (char) ('k' + n % 7);
   }
   for (size_t n = 0; n < sizeof str; n++) {
      str[n] = (char) (n % 3 ? 'a' + n % 26 : 0xc3 + n % 2); /* any bytes */
   }
   bson_value_t vals[64];
   size_t nv = 0;
   vals[nv] = (bson_value_t){.value_type = BSON_TYPE_BOOL};
   vals[nv++].value.v_bool = true;
   vals[nv++] = (bson_value_t){.value_type = BSON_TYPE_BOOL};
   static const int32_t i32[] = {0, -1, INT32_MIN, INT32_MAX, 1000};
   for (size_t i = 0; i < 5; i++) {
      vals[nv] = (bson_value_t){.value_type = BSON_TYPE_INT32};
      vals[nv++].value.v_int32 = i32[i];
   }
   static const int64_t i64[] = {0, INT64_MIN, INT64_MAX, -5000000000LL};
   for (size_t i = 0; i < 4; i++) {
      vals[nv] = (bson_value_t){.value_type = BSON_TYPE_INT64};
      vals[nv++].value.v_int64 = i64[i];
      vals[nv] = (bson_value_t){.value_type = BSON_TYPE_DATE_TIME};
      vals[nv++].value.v_datetime = i64[i];
   }
   static const double dbl[] = {0.0, -0.0, NAN, -INFINITY, 0.05, 1e300};
   for (size_t i = 0; i < 6; i++) {
      vals[nv] = (bson_value_t){.value_type = BSON_TYPE_DOUBLE};
      vals[nv++].value.v_double = dbl[i];
   }
   static const uint32_t lens[] = {0, 1, 3, 4, 7, 8, 15, 16, 17, 24, 31, 32,
                                   33, 40};
   for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
      vals[nv] = (bson_value_t){.value_type = BSON_TYPE_UTF8};
      vals[nv].value.v_utf8.str = str;
      vals[nv++].value.v_utf8.len = lens[i];
   }
   vals[nv++] = (bson_value_t){.value_type = BSON_TYPE_NULL};
   bson_t all = BSON_INITIALIZER;
   aspen_bsonw_t wall, w;
   uint8_t stackbuf[24];
   aspen_bsonw_init_static(&wall, stackbuf, sizeof stackbuf);
   aspen_bsonw_reset(&wall);
   aspen_bsonw_init(&w);
   for (size_t kl = 0; kl < sizeof key; kl++) {
      for (size_t i = 0; i < nv; i++) {
         bson_t want = BSON_INITIALIZER, got;
         assert_true(bson_append_value(&want, key, (int) kl, &vals[i]));
         aspen_bsonw_cleanup(&w); /* from an empty writer each time */
         aspen_bsonw_reset(&w);
         aspen_bsonw_value(&w, key, kl, &vals[i]);
         assert_true(aspen_bsonw_finish(&w, &got));
         assert_int_equal(got.len, want.len);
         assert_memory_equal(bson_get_data(&got), bson_get_data(&want),
                             got.len);
         bson_destroy(&want);
         assert_true(bson_append_value(&all, key, (int) kl, &vals[i]));
         aspen_bsonw_value(&wall, key, kl, &vals[i]);
      }
   }
   bsonw_same_and_free(&wall, &all, &w);
}

static void
test_bsonw_matches_libbson(void **state)
{
   (void) state;
   const bson_t *in = tmp_bson(bsonw_doc_json);
   aspen_bsonw_t w;
   aspen_bsonw_init(&w);
   /* Twice: the second document reuses the first one's buffer. */
   for (int round = 0; round < 2; round++) {
      bson_t by_iter = BSON_INITIALIZER, by_value = BSON_INITIALIZER;
      bson_t out;
      bson_iter_t it;
      /* Element copies. */
      aspen_bsonw_reset(&w);
      assert_true(bson_iter_init(&it, in));
      while (bson_iter_next(&it)) {
         assert_int_equal(aspen_bsonw_key_len(&it),
                          strlen(bson_iter_key(&it)));
         aspen_bsonw_element(&w, &it);
         bson_append_iter(&by_iter, NULL, 0, &it);
      }
      assert_true(aspen_bsonw_finish(&w, &out));
      assert_int_equal(out.len, by_iter.len);
      assert_memory_equal(bson_get_data(&out), bson_get_data(&by_iter),
                          out.len);
      /* Values, each under a new key, and inside a sub-document. */
      aspen_bsonw_reset(&w);
      size_t sub = aspen_bsonw_begin(&w, BSON_TYPE_ARRAY, "sub", 3);
      bson_t child;
      bson_append_array_begin(&by_value, "sub", 3, &child);
      assert_true(bson_iter_init(&it, in));
      uint32_t i = 0;
      while (bson_iter_next(&it)) {
         char buf[16];
         const char *key;
         size_t klen = bson_uint32_to_string(i++, &key, buf, sizeof buf);
         aspen_bsonw_value(&w, key, klen, bson_iter_value(&it));
         assert_true(bson_append_value(&child, key, (int) klen,
                                       bson_iter_value(&it)));
      }
      bson_append_array_end(&by_value, &child);
      aspen_bsonw_end(&w, sub);
      bson_value_t missing = {.value_type = BSON_TYPE_EOD};
      aspen_bsonw_value(&w, "gone", 4, &missing); /* appends nothing */
      assert_true(aspen_bsonw_finish(&w, &out));
      assert_int_equal(out.len, by_value.len);
      assert_memory_equal(bson_get_data(&out), bson_get_data(&by_value),
                          out.len);
      bson_destroy(&by_iter);
      bson_destroy(&by_value);
   }
   /* A document value that is not a well-formed frame is left out, as
    * bson_append_value leaves it. */
   uint8_t bad[5] = {6, 0, 0, 0, 0};
   bson_value_t v = {.value_type = BSON_TYPE_DOCUMENT};
   v.value.v_doc.data = bad;
   v.value.v_doc.data_len = sizeof bad;
   bson_t out;
   aspen_bsonw_reset(&w);
   aspen_bsonw_value(&w, "x", 1, &v);
   assert_true(aspen_bsonw_finish(&w, &out));
   assert_true(bson_empty(&out));
   aspen_bsonw_cleanup(&w);
}

/* ======================================================================== */
/* The plain-JSON fast path (ejson.c) against libbson                        */
/* ======================================================================== */

/* Reads `json` with both readers: the fast one must accept (`accept` 1)
 * or decline (0) as told (-1: either), and what it accepts must be
 * libbson's bytes. Returns whether it accepted. The fast one reads a heap
 * copy of exactly the text's bytes (no NUL after them), so that a read
 * past the end is one ASan sees. */
static bool
ejson_read_check(const char *json, int accept)
{
   aspen_bsonw_t w;
   bson_t fast, slow;
   bson_error_t berr;
   size_t len = strlen(json);
   char *copy = malloc(len ? len : 1);
   assert_non_null(copy);
   memcpy(copy, json, len);
   aspen_bsonw_init(&w);
   bool ok = aspen_ejson_read(copy, len, &w, &fast);
   free(copy);
   if (accept >= 0 && ok != (accept != 0)) {
      fail_msg("aspen_ejson_read %s %s", ok ? "accepted" : "declined", json);
   }
   if (ok) {
      assert_true(bson_init_from_json(&slow, json, -1, &berr));
      assert_int_equal(slow.len, fast.len);
      assert_memory_equal(bson_get_data(&slow), bson_get_data(&fast),
                          fast.len);
      bson_destroy(&slow);
   }
   aspen_bsonw_cleanup(&w);
   return ok;
}

/* Keys and string values of 0 to 20 bytes, with a byte the fast reader
 * leaves to libbson (an escape, a control character, UTF-8) at each
 * position or none, at the end of the text and with more after them:
 * read eight bytes at a time, the last few one at a time, and keys of up
 * to 16 bytes copied as 16 words when the text has them. Plain ones are
 * accepted with libbson's bytes, the others declined. */
static void
test_ejson_read_short_text(void **state)
{
   (void) state;
   static const char *odd[] = {"", "\\\"", "\\n", "\t", "\xc3\xa9"};
   for (size_t o = 0; o < sizeof odd / sizeof odd[0]; o++) {
      for (size_t len = 0; len <= 20; len++) {
         for (size_t at = 0; at <= len; at++) {
            if (!odd[o][0] && at > 0) {
               continue; /* no odd byte: once per length */
            }
            char text[40];
            size_t n = 0;
            for (size_t i = 0; i <= len; i++) {
               if (i == at) {
                  memcpy(text + n, odd[o], strlen(odd[o]));
                  n += strlen(odd[o]);
               }
               if (i < len) {
                  text[n++] = (char) ('a' + i % 26);
               }
            }
            text[n] = '\0';
            int want = odd[o][0] ? 0 : 1;
            char json[160];
            snprintf(json, sizeof json, "{\"%s\":1}", text);
            ejson_read_check(json, want);
            snprintf(json, sizeof json, "{\"%s\": \"%s\"}", text, text);
            ejson_read_check(json, want);
            snprintf(json, sizeof json, "{\"k\":\"%s\"}", text);
            ejson_read_check(json, want);
            snprintf(json, sizeof json,
                     "{\"%s\": [\"%s\", {\"%s\": 2.5}], \"zz\": "
                     "\"0123456789abcdefghij\"}",
                     text, text, text);
            ejson_read_check(json, want);
         }
      }
   }
}

/* Writes `doc` with both writers: the fast one must accept or decline as
 * told, and what it writes must be libbson's relaxed text. Returns whether
 * it accepted. */
static bool
ejson_write_check(const bson_t *doc, int accept)
{
   aspen_ejson_text_t t = {0};
   bool ok = aspen_ejson_write(doc, &t);
   if (accept >= 0 && ok != (accept != 0)) {
      char *j = bson_as_canonical_extended_json(doc, NULL);
      fail_msg("aspen_ejson_write %s %s", ok ? "accepted" : "declined", j);
   }
   if (ok) {
      size_t n = 0;
      char *want = bson_as_relaxed_extended_json(doc, &n);
      assert_non_null(want);
      assert_string_equal(t.data, want);
      assert_int_equal(t.len, n);
      bson_free(want);
   }
   aspen_ejson_text_cleanup(&t);
   return ok;
}

static void
test_ejson_read(void **state)
{
   (void) state;
   ejson_read_check("{}", 1);
   ejson_read_check(" \t\r\n{ } \n", 1);
   ejson_read_check("{\"_id\": 1, \"k\": 7, \"v\": 3.5, \"tag\": \"sensor-7\", "
                    "\"ok\": true, \"no\": false, \"n\": null}",
                    1);
   ejson_read_check("{\"a\":{\"b\":[1,-2,[],{}],\"c\":[[[]]]},\"\":0}", 1);
   /* int32 up to its bounds, int64 past them, as libbson chooses */
   ejson_read_check("{\"a\": 2147483647, \"b\": -2147483648, \"c\": 2147483648, "
                    "\"d\": -2147483649, \"e\": 999999999999999999, \"f\": -0}",
                    1);
   ejson_read_check("{\"a\": 0.1, \"b\": -0.0, \"c\": 12.50, \"d\": "
                    "123456789012345678.25, \"e\": 0.000001}",
                    1);
   ejson_read_check("{\"dup\": 1, \"dup\": \"x\", \"dots.in.key\": 2}", 1);
   /* Decimal fractions on both sides of the 15-digit fast path (digits /
    * 10^n) must be strtod's doubles, to the bit: the edges, then a sweep
    * of every digit count and fraction length with pseudo-random digits. */
   ejson_read_check("{\"a\": 0.30000000000000004, \"b\": 999999999999999.9, "
                    "\"c\": 99999999999999.9, \"d\": 0.000000000000001, "
                    "\"e\": 9007199254740993.0, \"f\": -1.5, \"g\": 0.0, "
                    "\"h\": 12345678.901234, \"i\": 1.7976931348623157}",
                    1);
   uint64_t seed = 0x9e3779b97f4a7c15ull;
   for (int total = 2; total <= 18; total++) {
      for (int nf = 1; nf < total; nf++) {
         for (int k = 0; k < 40; k++) {
            char json[96], num[40];
            int n = 0;
            if (k % 3 == 0) {
               num[n++] = '-';
            }
            for (int i = 0; i < total; i++) {
               seed ^= seed << 13;
               seed ^= seed >> 7;
               seed ^= seed << 17;
               if (i == total - nf) {
                  num[n++] = '.';
               }
               /* no leading zero before other integer digits */
               int lo = i == 0 && total - nf > 1 ? 1 : 0;
               num[n++] = (char) ('0' + lo + (int) (seed % (uint64_t) (10 - lo)));
            }
            num[n] = '\0';
            snprintf(json, sizeof json, "{\"v\": %s}", num);
            ejson_read_check(json, 1);
         }
      }
   }
   /* Strings around the reader's eight-byte steps, as values and keys:
    * plain ones are read; one with an escape, a raw control character
    * or a byte of UTF-8 at any place is declined; DEL is text. */
   static const char *const odd[] = {"", "\x7f", "\\n", "\\\"", "\x01",
                                     "\xc3\xa9", "\\u0041"};
   for (int len = 0; len <= 20; len++) {
      for (size_t o = 0; o < sizeof odd / sizeof *odd; o++) {
         for (int pos = 0; pos <= len; pos++) {
            char str[64], json[160];
            int n = 0;
            for (int i = 0; i < len; i++) {
               if (i == pos) {
                  n += snprintf(str + n, sizeof str - (size_t) n, "%s", odd[o]);
               }
               str[n++] = (char) ('a' + i);
            }
            if (pos == len) {
               n += snprintf(str + n, sizeof str - (size_t) n, "%s", odd[o]);
            }
            str[n] = '\0';
            int want = o < 2 ? 1 : 0;
            snprintf(json, sizeof json, "{\"v\": \"%s\", \"w\": 1}", str);
            ejson_read_check(json, want);
            snprintf(json, sizeof json, "{\"%s\": [\"%s\"]}", str, str);
            ejson_read_check(json, want);
            if (o == 0) {
               break; /* no odd piece: one place is enough */
            }
         }
      }
   }
   /* declined: libbson's own reader decides */
   const char *declined[] = {
      "{\"$oid\": \"0123456789abcdef01234567\"}",
      "{\"a\": {\"$date\": 0}}",
      "{\"s\": \"esc\\\"aped\"}",
      "{\"s\": \"caf\xc3\xa9\"}",
      "{\"a\": 1e5}",
      "{\"a\": 1.5E-3}",
      "{\"a\": 01}",
      "{\"a\": 1.}",
      "{\"a\": .5}",
      "{\"a\": 1234567890123456789}",
      "{\"a\": tru}",
      "{\"a\": truex}",
      "{\"a\": [1,]}",
      "{\"a\": 1,}",
      "{\"a\": 1} x",
      "[1]",
      "{\"a\" 1}",
      "{'a': 1}",
      "{\"a\": 1",
      "",
   };
   for (size_t i = 0; i < sizeof declined / sizeof declined[0]; i++) {
      ejson_read_check(declined[i], 0);
   }
   /* deeper than the fast path goes */
   char deep[600];
   size_t n = 0;
   for (int i = 0; i < 70; i++) {
      n += (size_t) snprintf(deep + n, sizeof deep - n, "{\"a\":");
   }
   n += (size_t) snprintf(deep + n, sizeof deep - n, "1");
   for (int i = 0; i < 70; i++) {
      deep[n++] = '}';
   }
   deep[n] = '\0';
   ejson_read_check(deep, 0);
}

static void
test_ejson_write(void **state)
{
   (void) state;
   ejson_write_check(tmp_bson("{}"), 1);
   ejson_write_check(tmp_bson("{'a': {}, 'b': [], 'c': [1, {'x': null}], "
                              "'d': true, 'e': false, 's': 'q\\'\\\\ /'}"),
                     1);
   ejson_write_check(tmp_bson("{'i': {'$numberInt': '-2147483648'}, 'l': "
                              "{'$numberLong': '-9223372036854775808'}, 'm': "
                              "{'$numberLong': '5000000000'}}"),
                     1);
   /* doubles: integral, halves, -0.0, and printf's others */
   ejson_write_check(
      tmp_bson("{'a': 2.0, 'b': -3.5, 'c': -0.5, 'd': 0.5, 'e': {'$numberDouble':"
               " '-0.0'}, 'f': 0.1, 'g': 1e300, 'h': 123456789012345678.5, "
               "'i': 0.0001, 'j': 0.00001, 'k': 999999999999999.0, 'l': "
               "1e15, 'm': 1e20, 'n': -1e-7, 'o': 4503599627370495.5}"),
      1);
   /* dates from 1970 to 9999, milliseconds as libbson pads them */
   ejson_write_check(
      tmp_bson("{'a': {'$date': {'$numberLong': '0'}}, 'b': {'$date': "
               "{'$numberLong': '5'}}, 'c': {'$date': {'$numberLong': "
               "'1795000000050'}}, 'd': {'$date': {'$numberLong': "
               "'951782400999'}}, 'e': {'$date': {'$numberLong': "
               "'253402300799999'}}, 'f': {'$date': {'$numberLong': "
               "'4107542400000'}}, 'g': [{'$date': {'$numberLong': "
               "'1709251199100'}}]}"),
      1);
   /* ObjectIds */
   ejson_write_check(tmp_bson("{'o': {'$oid': '0123456789abcdef01234567'}, "
                              "'p': [{'$oid': 'ffffffffffffffffffffffff'}]}"),
                     1);
   /* declined: the other types, dates outside 1970-9999, non-finite
    * doubles */
   const char *declined[] = {
      "{'d': {'$date': {'$numberLong': '-1'}}}",
      "{'d': {'$date': {'$numberLong': '253402300800000'}}}",
      "{'x': {'$numberDouble': 'NaN'}}",
      "{'x': {'$numberDouble': '-Infinity'}}",
      "{'x': {'$numberDecimal': '1.5'}}",
      "{'x': {'$binary': {'base64': 'AQID', 'subType': '00'}}}",
      "{'a': [1, {'b': {'$minKey': 1}}]}",
   };
   for (size_t i = 0; i < sizeof declined / sizeof declined[0]; i++) {
      ejson_write_check(tmp_bson(declined[i]), 0);
   }
}

/* Text as libbson's writer escapes it, in values and keys: strings made
 * of pieces (plain runs, quotes, backslashes, every kind of control
 * character, NUL inside values, DEL, well-formed UTF-8 of 2 to 4 bytes) are
 * written by the fast path with libbson's bytes; with a malformed UTF-8
 * piece (a stray continuation byte, an overlong form, a surrogate, past
 * U+10FFFF, a cut sequence) it may decline, and whatever it writes is
 * still libbson's. */
static void
test_ejson_write_strings(void **state)
{
   (void) state;
   static const struct {
      const char *s;
      bool good;
   } pieces[] = {
      {"a", true},          {"Zz09", true},        {" ", true},
      {"\"", true},         {"\\", true},          {"/", true},
      {"\x01", true},       {"\x1f", true},        {"\x7f", true},
      {"\b", true},         {"\f", true},          {"\n", true},
      {"\r", true},         {"\t", true},          {"\x0b", true},
      {"\xc3\xa9", true},   {"\xe2\x82\xac", true}, {"\xf0\x9f\x98\x80", true},
      {"\xef\xbf\xbf", true}, {"\xf4\x8f\xbf\xbf", true}, {"\xc2\x80", true},
      {"abcdefghijklmnopqrstuvwxyz012345", true},
      {"\xed\xa0\x80", false}, {"\xc0\xaf", false},  {"\x80", false},
      {"\xf4\x90\x80\x80", false}, {"\xe2\x82", false}, {"\xff", false},
      {"\xe0\x80\x80", false}, {"\xf8\x88\x80\x80\x80", false},
   };
   const size_t np = sizeof pieces / sizeof pieces[0];
   uint64_t seed = 0x2545f4914f6cdd1dull;
   size_t written = 0;
   for (int round = 0; round < 4000; round++) {
      char text[512];
      size_t len = 0;
      bool good = true, nul = false;
      int count = round % 13;
      for (int k = 0; k < count; k++) {
         seed ^= seed << 13;
         seed ^= seed >> 7;
         seed ^= seed << 17;
         size_t i = (size_t) (seed % (round < 2000 ? 22 : np));
         size_t n = strlen(pieces[i].s);
         memcpy(text + len, pieces[i].s, n);
         len += n;
         good = good && pieces[i].good;
         if (seed % 29 == 0) {
            text[len++] = '\0'; /* inside a value: \u0000 */
            nul = true;
         }
      }
      text[len] = '\0';
      bson_t doc = BSON_INITIALIZER;
      bson_append_utf8(&doc, "s", 1, text, (int) len);
      if (!nul) {
         bson_append_int32(&doc, text, (int) len, 1);
      }
      if (ejson_write_check(&doc, good ? 1 : -1)) {
         written++;
      }
      bson_destroy(&doc);
   }
   assert_true(written >= 2000);
}

/* Writes `doc` with ejson_write_check from a heap copy of exactly its
 * size, so that a read past its end is one ASan sees. */
static bool
ejson_write_check_exact(const bson_t *doc, int accept)
{
   uint8_t *copy = malloc(doc->len);
   assert_non_null(copy);
   memcpy(copy, bson_get_data(doc), doc->len);
   bson_t view;
   assert_true(bson_init_static(&view, copy, doc->len));
   bool ok = ejson_write_check(&view, accept);
   free(copy);
   return ok;
}

/* Keys and string values of 0 to 20 bytes, with one byte that is not
 * plain text (a quote, a backslash, a control character, DEL, UTF-8 of
 * two bytes, a stray continuation byte) at each position or none, as the
 * last element of their document (a few bytes left after them: the
 * writer reads them a byte at a time) and followed by more (16 bytes
 * readable: two words at once, the bytes past the text ignored): the
 * writer's text is libbson's wherever it accepts, and it accepts every
 * well-formed one. */
static void
test_ejson_write_short_text(void **state)
{
   (void) state;
   static const struct {
      const char *s;
      bool good;
   } odd[] = {{"", true},     {"\"", true},     {"\\", true},
              {"\x01", true}, {"\x7f", true},   {"\t", true},
              {"\xc3\xa9", true}, {"\x80", false}};
   for (size_t o = 0; o < sizeof odd / sizeof odd[0]; o++) {
      for (size_t len = 0; len <= 20; len++) {
         for (size_t at = 0; at <= len; at++) {
            if (at == len && at > 0 && !odd[o].s[0]) {
               continue; /* no odd byte: once per length */
            }
            char text[32];
            size_t n = 0;
            for (size_t i = 0; i < len; i++) {
               if (i == at) {
                  size_t k = strlen(odd[o].s);
                  memcpy(text + n, odd[o].s, k);
                  n += k;
               }
               text[n++] = (char) ('a' + i % 26);
            }
            if (at == len) {
               size_t k = strlen(odd[o].s);
               memcpy(text + n, odd[o].s, k);
               n += k;
            }
            text[n] = '\0';
            int want = odd[o].good ? 1 : -1;
            bson_t doc = BSON_INITIALIZER;
            bson_append_int32(&doc, text, (int) n, 1); /* key, last */
            ejson_write_check_exact(&doc, want);
            bson_reinit(&doc);
            bson_append_utf8(&doc, "s", 1, text, (int) n); /* value, last */
            ejson_write_check_exact(&doc, want);
            bson_reinit(&doc);
            bson_append_utf8(&doc, text, (int) n, text, (int) n);
            bson_append_utf8(&doc, "z", 1, "0123456789abcdefghij", 20);
            ejson_write_check_exact(&doc, want); /* both, followed */
            bson_reinit(&doc);
            bson_t sub;
            bson_append_document_begin(&doc, "d", 1, &sub);
            bson_append_utf8(&sub, text, (int) n, text, (int) n);
            bson_append_document_end(&doc, &sub);
            ejson_write_check_exact(&doc, want); /* a sub-document's last */
            bson_destroy(&doc);
         }
      }
   }
}

/* Integers at and around their limits and each power of ten, and doubles
 * of every magnitude (integral, halves, printf's others), against
 * libbson's text. */
static void
test_ejson_write_numbers(void **state)
{
   (void) state;
   bson_t doc = BSON_INITIALIZER;
   int64_t p10 = 1;
   for (int e = 0; e <= 18; e++, p10 = e <= 18 ? p10 * 10 : p10) {
      for (int64_t d = -1; d <= 1; d++) {
         bson_append_int64(&doc, "l", 1, p10 + d);
         bson_append_int64(&doc, "l", 1, -(p10 + d));
         if (p10 + d <= INT32_MAX) {
            bson_append_int32(&doc, "i", 1, (int32_t) (p10 + d));
            bson_append_int32(&doc, "i", 1, (int32_t) -(p10 + d));
         }
      }
   }
   bson_append_int64(&doc, "l", 1, INT64_MAX);
   bson_append_int64(&doc, "l", 1, INT64_MIN);
   bson_append_int64(&doc, "l", 1, INT64_MIN + 1);
   bson_append_int32(&doc, "i", 1, INT32_MAX);
   bson_append_int32(&doc, "i", 1, INT32_MIN);
   ejson_write_check(&doc, 1);
   bson_destroy(&doc);
   uint64_t seed = 0x9e3779b97f4a7c15ull;
   for (int round = 0; round < 3000; round++) {
      seed ^= seed << 13;
      seed ^= seed >> 7;
      seed ^= seed << 17;
      bson_t d = BSON_INITIALIZER;
      bson_append_int64(&d, "l", 1, (int64_t) seed);
      bson_append_int32(&d, "i", 1, (int32_t) seed);
      bson_append_int64(&d, "s", 1, (int64_t) (seed >> (seed % 64)));
      double x = ldexp((double) (seed >> 11), (int) (seed % 140) - 90);
      bson_append_double(&d, "x", 1, round % 2 ? x : -x);
      bson_append_double(&d, "h", 1, (double) (int64_t) (seed >> 20) / 2);
      bson_append_double(&d, "t", 1, (double) (int32_t) seed / 8);
      ejson_write_check(&d, 1);
      bson_destroy(&d);
   }
}

/* aspen_bsonw_iter_next against bson_iter_next over the same bytes. */
static void
iter_check(const uint8_t *data, size_t size, int depth)
{
   assert_true(bson_iter_check(data, size, depth));
}

/* Every BSON type, then every truncation (length header fixed up, as a
 * well-framed but cut document) and every one-byte corruption of it. */
static void
test_bsonw_iter_next(void **state)
{
   (void) state;
   const bson_t *doc = tmp_bson(bsonw_doc_json);
   const uint8_t *data = bson_get_data(doc);
   uint8_t *copy = aspen_xmalloc(doc->len);
   iter_check(data, doc->len, 0);
   for (uint32_t n = 5; n < doc->len; n++) {
      memcpy(copy, data, n);
      aspen_bytes_put_le32(copy, n);
      copy[n - 1] = 0;
      iter_check(copy, n, 0);
   }
   for (uint32_t i = 4; i + 1 < doc->len; i++) {
      static const uint8_t vals[] = {0, 1, 2, 0x7f, 0x80, 0xff};
      for (size_t v = 0; v < sizeof vals; v++) {
         memcpy(copy, data, doc->len);
         copy[i] = vals[v];
         iter_check(copy, doc->len, 0);
      }
   }
   free(copy);
}

/* aspen_bsonw_copy_without against the element-by-element copy it
 * replaces (libbson's iterator, each element's bytes but those under the
 * key) on `data`: the same bytes, also where the iterator stops early. */
static void
copy_without_check(const uint8_t *data, uint32_t len, const char *key)
{
   bson_t doc;
   if (!bson_init_static(&doc, data, len)) {
      return;
   }
   aspen_bsonw_t w, ref;
   bson_t got, want;
   aspen_bsonw_init(&w);
   aspen_bsonw_init(&ref);
   aspen_bsonw_reset(&w);
   aspen_bsonw_reset(&ref);
   aspen_bsonw_copy_without(&w, &doc, key, strlen(key));
   bson_iter_t it;
   if (bson_iter_init(&it, &doc)) {
      while (bson_iter_next(&it)) {
         if (strcmp(bson_iter_key(&it), key) != 0) {
            aspen_bsonw_element(&ref, &it);
         }
      }
   }
   assert_true(aspen_bsonw_finish(&w, &got));
   assert_true(aspen_bsonw_finish(&ref, &want));
   assert_int_equal(got.len, want.len);
   assert_memory_equal(bson_get_data(&got), bson_get_data(&want), got.len);
   aspen_bsonw_cleanup(&w);
   aspen_bsonw_cleanup(&ref);
}

/* Every type, with and without the key (first, last, twice, nested only),
 * then every truncation and one-byte corruption of the document. */
static void
test_bsonw_copy_without(void **state)
{
   (void) state;
   const bson_t *all = tmp_bson(bsonw_doc_json);
   static const char *const docs[] = {
      "{}",
      "{'_ts': 1}",
      "{'a': 1, '_ts': {'$date': {'$numberLong': '5'}}, 'b': 'x'}",
      "{'_ts': 1, 'a': [1, 2], '_ts': 'again'}",
      "{'a': {'_ts': 1}, 'b': [{'_ts': 2}], '_t': 3, '_tss': 4}",
      "{'s': 'text', 'd': 2.5, 'o': {'$oid': '0123456789abcdef01234567'}, "
      "'n': null, 't': true, 'l': {'$numberLong': '7'}}",
   };
   for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
      const bson_t *doc = tmp_bson(docs[i]);
      copy_without_check(bson_get_data(doc), doc->len, "_ts");
      copy_without_check(bson_get_data(doc), doc->len, "_stream_meta");
   }
   copy_without_check(bson_get_data(all), all->len, "_ts");
   copy_without_check(bson_get_data(all), all->len, "");
   /* Every truncation and one-byte corruption of the document of every
    * type (the element-wise path) and of the last one of common types
    * only (the one-copy path's walk). */
   const bson_t *common = tmp_bson(docs[sizeof docs / sizeof *docs - 1]);
   const bson_t *mangled[] = {all, common};
   uint8_t *copy = aspen_xmalloc(all->len + common->len);
   for (size_t m = 0; m < 2; m++) {
      const uint8_t *data = bson_get_data(mangled[m]);
      uint32_t len = mangled[m]->len;
      for (uint32_t n = 5; n < len; n++) {
         memcpy(copy, data, n);
         aspen_bytes_put_le32(copy, n);
         copy[n - 1] = 0;
         copy_without_check(copy, n, "_ts");
      }
      for (uint32_t i = 4; i + 1 < len; i++) {
         static const uint8_t vals[] = {0, 1, 2, 5, 0x7f, 0x80, 0xff};
         for (size_t v = 0; v < sizeof vals; v++) {
            memcpy(copy, data, len);
            copy[i] = vals[v];
            copy_without_check(copy, len, "_ts");
         }
      }
   }
   free(copy);
}

typedef struct {
   size_t docs, written, read;
} ejson_tally_t;

/* Every document and array inside `doc`, and `doc` itself, through both
 * writers, and libbson's relaxed text of each through both readers. */
static void
ejson_walk(const bson_t *doc, ejson_tally_t *tally)
{
   tally->docs++;
   iter_check(bson_get_data(doc), doc->len, 0);
   if (ejson_write_check(doc, -1)) {
      tally->written++;
   }
   char *text = bson_as_relaxed_extended_json(doc, NULL);
   if (text && ejson_read_check(text, -1)) {
      tally->read++;
   }
   bson_free(text);
   bson_iter_t it;
   bson_iter_init(&it, doc);
   while (bson_iter_next(&it)) {
      bson_t sub;
      if (aspen_bson_view(&it, &sub)) {
         ejson_walk(&sub, tally);
      }
   }
}

static void
test_ejson_case_corpus(void **state)
{
   (void) state;
   ejson_tally_t tally = {0};
   const char *sub[] = {"accum", "expr", "match", "pipeline"};
   for (size_t s = 0; s < sizeof sub / sizeof sub[0]; s++) {
      char dir[512];
      snprintf(dir, sizeof dir, "%s/%s", ASPEN_CASES_DIR, sub[s]);
      DIR *d = opendir(dir);
      assert_non_null(d);
      struct dirent *de;
      while ((de = readdir(d))) {
         size_t nl = strlen(de->d_name);
         if (nl < 6 || strcmp(de->d_name + nl - 5, ".json") != 0) {
            continue;
         }
         char path[800];
         snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
         FILE *f = fopen(path, "rb");
         assert_non_null(f);
         fseek(f, 0, SEEK_END);
         long size = ftell(f);
         fseek(f, 0, SEEK_SET);
         char *text = aspen_xmalloc((size_t) size + 16);
         memcpy(text, "{\"f\": ", 6);
         assert_int_equal(fread(text + 6, 1, (size_t) size, f), (size_t) size);
         fclose(f);
         text[6 + size] = '}';
         bson_error_t berr;
         bson_t doc;
         if (bson_init_from_json(&doc, text, 7 + size, &berr)) {
            ejson_walk(&doc, &tally);
            bson_destroy(&doc);
         }
         free(text);
      }
      closedir(d);
   }
   /* The fast paths took a good part of it (the rest holds Extended JSON
    * wrappers and the cases' own operators, '$' keys both). */
   print_message("ejson: %zu documents, %zu written and %zu read by the "
                 "fast path\n",
                 tally.docs, tally.written, tally.read);
   assert_true(tally.docs > 1000);
   assert_true(tally.written * 2 > tally.docs);
   assert_true(tally.read * 3 > tally.docs);
}

/* ======================================================================== */

#define T(fn) cmocka_unit_test_teardown(fn, tmp_teardown)
#define V(fn) cmocka_unit_test_setup_teardown(fn, vecs_setup, vecs_teardown)

int
main(void)
{
   const struct CMUnitTest tests[] = {
      T(test_buf_reserve_commit_consume),
      T(test_buf_append),
      T(test_buf_lazy_compaction),
      T(test_buf_large_growth),
      T(test_buf_steal),
      T(test_buf_asserts),
      T(test_uri_redact),
      T(test_secret_names),
      T(test_error_code_names),
      T(test_error_set_clear),
      T(test_error_from_bson_error),
      T(test_error_append_reply),
      T(test_log_line_format),
      T(test_log_exotic_types),
      T(test_utf8_char_len),
      T(test_log_invalid_utf8),
      T(test_log_level_filter),
      T(test_crc32c),
      V(test_frame_prefixes),
      V(test_frame_whole_messages),
      V(test_frame_stream),
      T(test_frame_length_limits),
      V(test_frame_pipelined),
      V(test_truncations),
      V(test_corruptions),
      T(test_op_msg_flags),
      T(test_op_msg_sections),
      T(test_op_msg_bad_sequences),
      T(test_op_msg_checksum),
      T(test_op_msg_size_limits),
      T(test_op_msg_nested_corrupt),
      T(test_op_msg_command_view),
      T(test_op_msg_command_merge),
      T(test_op_msg_command_too_large),
      T(test_op_query_shapes),
      T(test_reply_op_msg),
      T(test_reply_op_reply),
      T(test_reply_bodies),
      T(test_clocks),
      T(test_hash_fnv1a),
      T(test_bytes_le32),
      T(test_bsonw_raw_key_len),
      T(test_bson_abi_data),
      T(test_bson_abi_finish),
      T(test_file_write_atomic),
      T(test_bytes_dec_int64),
      T(test_bsonw_matches_libbson),
      T(test_bsonw_key_lengths),
      T(test_bsonw_scalars_in_place),
      T(test_bsonw_iter_next),
      T(test_bsonw_copy_without),
      T(test_ejson_read),
      T(test_ejson_write),
      T(test_ejson_write_strings),
      T(test_ejson_write_short_text),
      T(test_ejson_read_short_text),
      T(test_ejson_write_numbers),
      T(test_ejson_case_corpus),
   };
   return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
