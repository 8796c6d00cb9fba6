/*
 * bsonw.h - a BSON document writer for hot paths: one growable buffer,
 * reused from document to document, that elements of other documents are
 * copied into as bytes (an iterator's element span, key and value as they
 * are), with sub-documents opened and closed in place and computed values
 * encoded directly. It writes exactly the bytes libbson's appenders would
 * (bson_append_iter, bson_append_value, bson_append_document_begin/_end),
 * without their per-call checks and va_list copies. The result is read
 * through a static bson_t over the buffer, valid until the next reset.
 *
 * A writer grows without bound while it is written; a document past
 * INT32_MAX bytes, which libbson could not hold either, makes finish fail.
 * Thread-safety: one writer per thread.
 */
#ifndef ASPEN_WIRE_BSONW_H
#define ASPEN_WIRE_BSONW_H

#include "bytes.h"

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
   uint8_t *data;
   size_t len;
   size_t cap;
   bool borrowed; /* data is the caller's (until grown); zeroed: the heap */
} aspen_bsonw_t;

/* An empty writer (no buffer until the first reset). */
void aspen_bsonw_init(aspen_bsonw_t *w);
/* A writer that starts in the caller's `buf` (e.g. on the stack) and moves
 * to the heap only if it outgrows it. */
void aspen_bsonw_init_static(aspen_bsonw_t *w, uint8_t *buf, size_t cap);
void aspen_bsonw_cleanup(aspen_bsonw_t *w);
/* Makes room for `n` more bytes (inside bsonw.c: it grows the buffer). */
void aspen__bsonw_grow(aspen_bsonw_t *w, size_t n);
/* Appends `val` under `key` (MISSING, type 0, appends nothing): inline
 * below for the scalars and short strings, else this (every type). */
void aspen__bsonw_value_any(aspen_bsonw_t *w, const char *key, size_t key_len,
                       const bson_value_t *val);
/* Copies `doc`'s top-level elements but those whose key is key[0 ..
 * key_len) into `w`, element bytes as they are (as
 * bson_copy_to_excluding_noinit would, stopping where libbson's iterator
 * stops on malformed bytes). When no element has that key, the elements
 * go in one copy, after a walk over the keys that neither decodes values
 * nor calls memchr. */
void aspen_bsonw_copy_without(aspen_bsonw_t *w, const bson_t *doc,
                              const char *key, size_t key_len);
/* aspen_bsonw_finish's rare cases (inside bsonw.c): a document past what
 * BSON can hold (false, `out` empty) or one never reset. */
bool aspen__bsonw_finish_slow(aspen_bsonw_t *w, bson_t *out);

static inline uint8_t *
aspen_bsonw_reserve(aspen_bsonw_t *w, size_t n)
{
   if (w->cap - w->len < n) {
      aspen__bsonw_grow(w, n);
   }
   return w->data + w->len;
}

/* Starts a new root document, keeping the buffer. */
static inline void
aspen_bsonw_reset(aspen_bsonw_t *w)
{
   w->len = 0;
   aspen_bsonw_reserve(w, 4);
   w->len = 4;
}

/*
 * A document's bytes and a read-only view of bytes, without a libbson call
 * each (hot paths do both once per document and stage). libbson 1.x keeps
 * a bson_t in one of two layouts, told apart by its flags' INLINE bit:
 * inline (the bytes in the bson_t itself, after flags and len: the public
 * struct's `padding`, as BSON_INITIALIZER has it) or allocated (a pointer
 * to the buffer pointer and an offset in it; what bson_init_static makes,
 * with itself as the buffer's owner). The allocated layout is libbson's
 * private bson_impl_alloc_t, mirrored here; test_wire's bson_abi_* tests
 * check both against bson_get_data and bson_init_static for every kind of
 * bson_t. Any other libbson (or a BSON_MEMCHECK one) takes the library
 * calls.
 */
#if BSON_MAJOR_VERSION == 1 && !defined(BSON_MEMCHECK)
#define ASPEN_BSONW_ABI 1
#else
#define ASPEN_BSONW_ABI 0
#endif

typedef struct {
   uint32_t flags;
   uint32_t len;
   bson_t *parent;
   uint32_t depth;
   uint8_t **buf;
   size_t *buflen;
   size_t offset;
   uint8_t *alloc;
   size_t alloclen;
   bson_realloc_func realloc;
   void *realloc_func_ctx;
} aspen__bson_alloc_t;
_Static_assert(sizeof(aspen__bson_alloc_t) <= sizeof(bson_t),
               "libbson's allocated layout fits in a bson_t");

enum {
   ASPEN__BSON_FLAG_INLINE = 1u << 0,
   ASPEN__BSON_FLAG_STATIC = 1u << 1,
   ASPEN__BSON_FLAG_RDONLY = 1u << 2,
};

/* bson_get_data(doc), inline. Fields are read through memcpy (one load
 * each): the bson_t is not an aspen__bson_alloc_t to the compiler. */
static inline const uint8_t *
aspen_bsonw_data(const bson_t *doc)
{
#if ASPEN_BSONW_ABI
   if (doc->flags & ASPEN__BSON_FLAG_INLINE) {
      return (const uint8_t *) doc + offsetof(bson_t, padding);
   }
   const char *raw = (const char *) doc;
   uint8_t **buf;
   size_t offset;
   memcpy(&buf, raw + offsetof(aspen__bson_alloc_t, buf), sizeof buf);
   memcpy(&offset, raw + offsetof(aspen__bson_alloc_t, offset),
          sizeof offset);
   return *buf + offset;
#else
   return bson_get_data(doc);
#endif
}

/* bson_init_static(out, data, len) for bytes known to be a document's
 * frame: len >= 5 and <= INT32_MAX, data's first four bytes len (little
 * endian), data[len - 1] == 0 (libbson checks these; the caller wrote
 * them). The same bson_t, field for field. */
static inline void
aspen__bsonw_view_trusted(bson_t *out, const uint8_t *data, size_t len)
{
#if ASPEN_BSONW_ABI
   /* Each field stored alone, as libbson does (the padding after depth
    * left as it was). */
   char *raw = (char *) out;
   uint32_t flags = ASPEN__BSON_FLAG_STATIC | ASPEN__BSON_FLAG_RDONLY;
   uint32_t len32 = (uint32_t) len, depth = 0;
   void *null = NULL;
   size_t zero = 0;
   uint8_t **buf = (uint8_t **) (raw + offsetof(aspen__bson_alloc_t, alloc));
   size_t *buflen =
      (size_t *) (raw + offsetof(aspen__bson_alloc_t, alloclen));
   const uint8_t *alloc = data;
#define ASPEN__BSONW_PUT(field, v) \
   memcpy(raw + offsetof(aspen__bson_alloc_t, field), &(v), sizeof(v))
   ASPEN__BSONW_PUT(flags, flags);
   ASPEN__BSONW_PUT(len, len32);
   ASPEN__BSONW_PUT(parent, null);
   ASPEN__BSONW_PUT(depth, depth);
   ASPEN__BSONW_PUT(buf, buf);
   ASPEN__BSONW_PUT(buflen, buflen);
   ASPEN__BSONW_PUT(offset, zero);
   ASPEN__BSONW_PUT(alloc, alloc);
   ASPEN__BSONW_PUT(alloclen, len);
   ASPEN__BSONW_PUT(realloc, null);
   ASPEN__BSONW_PUT(realloc_func_ctx, null);
#undef ASPEN__BSONW_PUT
#else
   (void) bson_init_static(out, data, len);
#endif
}

/* Closes the root document and points `out` at it (a static bson_t, as
 * bson_init_static makes): false, `out` empty, if it grew past what BSON
 * can hold. */
static inline bool
aspen_bsonw_finish(aspen_bsonw_t *w, bson_t *out)
{
   if (w->len < 4 || w->len >= (size_t) INT32_MAX) {
      return aspen__bsonw_finish_slow(w, out);
   }
   *aspen_bsonw_reserve(w, 1) = 0;
   w->len++;
   aspen_bytes_put_le32(w->data, (uint32_t) w->len);
   aspen__bsonw_view_trusted(out, w->data, w->len);
   return true;
}

/* The length of the NUL-terminated key at `k`, looked for in its first
 * `room` bytes; `room` when it has no NUL there. Eight bytes at a time
 * (keys are short: usually one step): the first zero byte of a word is
 * its lowest byte whose (x - 0x01..) & ~x sets the top bit. */
static inline size_t
aspen_bsonw_raw_key_len(const uint8_t *k, size_t room)
{
   size_t kl = 0;
   for (; room - kl >= 8; kl += 8) {
      uint64_t x = aspen_bytes_get_le64(k + kl);
      uint64_t z = (x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull;
      if (z) {
         return kl + ((size_t) __builtin_ctzll(z) >> 3);
      }
   }
   while (kl < room && k[kl]) {
      kl++;
   }
   return kl;
}

/* The size of a BSON element's value of type `type` that starts at `v`,
 * `avail` bytes before its document ends; -1 when it runs past them or is
 * malformed (a raw scan's step from one element to the next). */
static inline int64_t
aspen_bsonw_value_size(uint8_t type, const uint8_t *v, size_t avail)
{
   int32_t l;
   switch (type) {
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DATE_TIME:
   case BSON_TYPE_TIMESTAMP:
   case BSON_TYPE_INT64:
      return avail >= 8 ? 8 : -1;
   case BSON_TYPE_INT32:
      return avail >= 4 ? 4 : -1;
   case BSON_TYPE_DECIMAL128:
      return avail >= 16 ? 16 : -1;
   case BSON_TYPE_BOOL:
      return avail >= 1 ? 1 : -1;
   case BSON_TYPE_OID:
      return avail >= 12 ? 12 : -1;
   case BSON_TYPE_NULL:
   case BSON_TYPE_UNDEFINED:
   case BSON_TYPE_MINKEY:
   case BSON_TYPE_MAXKEY:
      return 0;
   case BSON_TYPE_UTF8:
   case BSON_TYPE_CODE:
   case BSON_TYPE_SYMBOL:
      if (avail < 4) {
         return -1;
      }
      l = (int32_t) aspen_bytes_get_le32(v);
      /* libbson's walk also wants the value's last byte a NUL. */
      return l >= 1 && (size_t) l + 4 <= avail && v[3 + l] == 0
                ? 4 + (int64_t) l
                : -1;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
   case BSON_TYPE_CODEWSCOPE:
      if (avail < 4) {
         return -1;
      }
      l = (int32_t) aspen_bytes_get_le32(v);
      return l >= 5 && (size_t) l <= avail ? l : -1;
   case BSON_TYPE_BINARY:
      if (avail < 5) {
         return -1;
      }
      l = (int32_t) aspen_bytes_get_le32(v);
      return l >= 0 && (size_t) l + 5 <= avail ? 5 + (int64_t) l : -1;
   case BSON_TYPE_DBPOINTER:
      if (avail < 4) {
         return -1;
      }
      l = (int32_t) aspen_bytes_get_le32(v);
      return l >= 1 && (size_t) l + 16 <= avail ? 16 + (int64_t) l : -1;
   case BSON_TYPE_REGEX: {
      const uint8_t *a = memchr(v, 0, avail);
      if (!a) {
         return -1;
      }
      size_t rest = avail - (size_t) (a + 1 - v);
      const uint8_t *b = memchr(a + 1, 0, rest);
      return b ? (int64_t) (b + 1 - v) : -1;
   }
   default:
      return -1;
   }
}

/* Copies the element the iterator is on (type, key, value) as it is. */
static inline void
aspen_bsonw_element(aspen_bsonw_t *w, const bson_iter_t *it)
{
   size_t n = it->next_off - it->off;
   memcpy(aspen_bsonw_reserve(w, n), it->raw + it->off, n);
   w->len += n;
}

/* Copies the `n` bytes at `s` to `d`: a field name is a few bytes long,
 * so one of up to 16 bytes is copied in place with two (overlapping)
 * fixed-size moves rather than through a memcpy call. */
static inline void
aspen_bsonw_copy_short(uint8_t *d, const void *s, size_t n)
{
   const uint8_t *src = s;
   if (n >= 8 && n <= 16) {
      memcpy(d, src, 8);
      memcpy(d + n - 8, src + n - 8, 8);
   } else if (n >= 4 && n < 8) {
      memcpy(d, src, 4);
      memcpy(d + n - 4, src + n - 4, 4);
   } else if (n >= 2 && n < 4) {
      memcpy(d, src, 2);
      memcpy(d + n - 2, src + n - 2, 2);
   } else if (n == 1) {
      d[0] = src[0];
   } else if (n > 16) {
      memcpy(d, src, n);
   }
}

/* Writes an element's type byte and key; the value comes next. */
static inline void
aspen_bsonw_key(aspen_bsonw_t *w, bson_type_t type, const char *key,
                size_t key_len)
{
   uint8_t *p = aspen_bsonw_reserve(w, key_len + 2);
   p[0] = (uint8_t) type;
   aspen_bsonw_copy_short(p + 1, key, key_len);
   p[1 + key_len] = 0;
   w->len += key_len + 2;
}

/* Writes an element's type byte and key and makes room for its `vlen`
 * bytes of value (counted in w->len): returns where the value goes, for
 * the caller to fill. One reservation for the whole element. */
static inline uint8_t *
aspen_bsonw_elem(aspen_bsonw_t *w, bson_type_t type, const char *key,
                 size_t key_len, size_t vlen)
{
   uint8_t *p = aspen_bsonw_reserve(w, key_len + 2 + vlen);
   p[0] = (uint8_t) type;
   aspen_bsonw_copy_short(p + 1, key, key_len);
   p[1 + key_len] = 0;
   w->len += key_len + 2 + vlen;
   return p + 2 + key_len;
}

/* The scalars computed values mostly are, written as aspen_bsonw_value
 * writes them (the same bytes as libbson's appenders), any key length. */
static inline void
aspen_bsonw_double(aspen_bsonw_t *w, const char *key, size_t key_len,
                   double d)
{
   uint64_t bits;
   memcpy(&bits, &d, 8);
   aspen_bytes_put_le64(aspen_bsonw_elem(w, BSON_TYPE_DOUBLE, key, key_len, 8),
                        bits);
}

static inline void
aspen_bsonw_bool(aspen_bsonw_t *w, const char *key, size_t key_len, bool b)
{
   *aspen_bsonw_elem(w, BSON_TYPE_BOOL, key, key_len, 1) = b ? 1 : 0;
}

static inline void
aspen_bsonw_int32(aspen_bsonw_t *w, const char *key, size_t key_len,
                  int32_t i)
{
   aspen_bytes_put_le32(aspen_bsonw_elem(w, BSON_TYPE_INT32, key, key_len, 4),
                        (uint32_t) i);
}

/* Opens a string element of `len` bytes (at most INT32_MAX - 1) under
 * `key`: its length and closing NUL are written, and the caller copies
 * the `len` bytes to the place returned (before anything else is written
 * to `w`). */
static inline uint8_t *
aspen_bsonw_utf8_room(aspen_bsonw_t *w, const char *key, size_t key_len,
                      size_t len)
{
   uint8_t *q = aspen_bsonw_elem(w, BSON_TYPE_UTF8, key, key_len, 5 + len);
   aspen_bytes_put_le32(q, (uint32_t) len + 1);
   q[4 + len] = 0;
   return q + 4;
}

/* Opens a sub-document (BSON_TYPE_DOCUMENT or _ARRAY) under `key`; returns
 * where it starts, for aspen_bsonw_end. */
static inline size_t
aspen_bsonw_begin(aspen_bsonw_t *w, bson_type_t type, const char *key,
                  size_t key_len)
{
   aspen_bsonw_key(w, type, key, key_len);
   size_t start = w->len;
   aspen_bsonw_reserve(w, 4);
   w->len += 4;
   return start;
}

/* Closes the sub-document that aspen_bsonw_begin opened at `start`. */
static inline void
aspen_bsonw_end(aspen_bsonw_t *w, size_t start)
{
   *aspen_bsonw_reserve(w, 1) = 0;
   w->len++;
   aspen_bytes_put_le32(w->data + start, (uint32_t) (w->len - start));
}

/* Where the value of the element the iterator is on starts: libbson's
 * iterator records it (d1), except for the types without a value (null,
 * undefined, MinKey, MaxKey), where d1 is -1 and the value is the empty
 * span before the next element. */
static inline uint32_t
aspen_bsonw_value_off(const bson_iter_t *it)
{
   return it->d1 == UINT32_MAX ? it->next_off : it->d1;
}

/* The length of the key of the element the iterator is on, without
 * strlen (the key ends with the NUL just before the value). */
static inline size_t
aspen_bsonw_key_len(const bson_iter_t *it)
{
   return aspen_bsonw_value_off(it) - it->key - 1;
}

/* bson_iter_next for hot paths: the same iterator state afterwards (the
 * same offsets, the same checks), found with memchr and without libbson's
 * per-type bookkeeping for the common types; the others, the end and
 * anything malformed go to bson_iter_next itself, from the unchanged
 * state, so every outcome is libbson's. */
static inline bool
aspen_bsonw_iter_next(bson_iter_t *it)
{
   const uint8_t *data = it->raw;
   uint32_t len = it->len;
   uint32_t off = it->next_off;
   if (!data || off + 1 >= len) {
      return bson_iter_next(it);
   }
   const uint8_t *z = (const uint8_t *) memchr(data + off + 1, 0,
                                               len - off - 1);
   if (!z) {
      return bson_iter_next(it);
   }
   uint32_t o = (uint32_t) (z - data) + 1; /* the value */
   uint32_t d2 = 0, next, l;
   switch ((bson_type_t) data[off]) {
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DATE_TIME:
   case BSON_TYPE_INT64:
   case BSON_TYPE_TIMESTAMP:
      next = o + 8;
      break;
   case BSON_TYPE_INT32:
      next = o + 4;
      break;
   case BSON_TYPE_OID:
      next = o + 12;
      break;
   case BSON_TYPE_DECIMAL128:
      next = o + 16;
      break;
   case BSON_TYPE_BOOL:
      if (o >= len || data[o] > 1) {
         return bson_iter_next(it);
      }
      next = o + 1;
      break;
   case BSON_TYPE_UTF8:
      if (o + 4 >= len) {
         return bson_iter_next(it);
      }
      l = aspen_bytes_get_le32(data + o);
      if (l > len - (o + 4)) {
         return bson_iter_next(it);
      }
      next = o + 4 + l;
      if (l == 0 || next >= len || data[o + 4 + l - 1] != 0) {
         return bson_iter_next(it);
      }
      d2 = o + 4;
      break;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      if (o >= len - 4) {
         return bson_iter_next(it);
      }
      l = aspen_bytes_get_le32(data + o);
      if (l > len || l > len - o) {
         return bson_iter_next(it);
      }
      next = o + l;
      break;
   default:
      /* Including null, undefined, MinKey and MaxKey, whose d1 libbson
       * versions set differently (the value's offset, or -1). */
      return bson_iter_next(it);
   }
   if (next >= len) {
      return bson_iter_next(it);
   }
   it->off = off;
   it->type = off;
   it->key = off + 1;
   it->d1 = o;
   it->d2 = d2;
   it->d3 = 0;
   it->d4 = 0;
   it->next_off = next;
   it->err_off = 0;
   return true;
}

/* Appends `val` under `key` (MISSING, type 0, appends nothing). The values
 * computed fields mostly are - bool, int, double, date, a string of up to
 * 32 bytes - under a key of up to 16 bytes are stored in place with one
 * reservation; the rest go through aspen__bsonw_value_any. The bytes are
 * the same either way (test_bsonw compares them). */
static inline void
aspen_bsonw_value(aspen_bsonw_t *w, const char *key, size_t key_len,
                  const bson_value_t *v)
{
   size_t vlen;
   switch (v->value_type) {
   case BSON_TYPE_BOOL:
      vlen = 1;
      break;
   case BSON_TYPE_INT32:
      vlen = 4;
      break;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_INT64:
   case BSON_TYPE_DATE_TIME:
      vlen = 8;
      break;
   case BSON_TYPE_UTF8:
      vlen = 5 + (size_t) v->value.v_utf8.len;
      break;
   default:
      vlen = 64;
      break;
   }
   if (key_len > 16 || vlen > 37) {
      aspen__bsonw_value_any(w, key, key_len, v);
      return;
   }
   uint8_t *p = aspen_bsonw_reserve(w, key_len + 2 + vlen);
   p[0] = (uint8_t) v->value_type;
   aspen_bsonw_copy_short(p + 1, key, key_len);
   p[1 + key_len] = 0;
   uint8_t *q = p + 2 + key_len;
   switch (v->value_type) {
   case BSON_TYPE_BOOL:
      q[0] = v->value.v_bool ? 1 : 0;
      break;
   case BSON_TYPE_INT32:
      aspen_bytes_put_le32(q, (uint32_t) v->value.v_int32);
      break;
   case BSON_TYPE_UTF8: {
      uint32_t sl = v->value.v_utf8.len; /* at most 32 (vlen above) */
      const char *str = v->value.v_utf8.str;
      aspen_bytes_put_le32(q, sl + 1);
      if (sl > 16) { /* two overlapping 16-byte moves */
         memcpy(q + 4, str, 16);
         memcpy(q + 4 + sl - 16, str + sl - 16, 16);
      } else {
         aspen_bsonw_copy_short(q + 4, str, sl);
      }
      q[4 + sl] = 0;
      break;
   }
   default: { /* the 8-byte ones: the bits of the union's first word */
      uint64_t bits;
      memcpy(&bits, &v->value, 8);
      aspen_bytes_put_le64(q, bits);
      break;
   }
   }
   w->len += key_len + 2 + vlen;
}

#endif /* ASPEN_WIRE_BSONW_H */
