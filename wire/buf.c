/*
 * buf.c - allocation helpers and the growable byte queue (aspen_buf_t) that
 * every receive and send path uses. Receive buffers are parsed in place, so
 * consuming only advances `head`; the bytes are moved down lazily when more
 * room is reserved and the dead prefix is worth reclaiming.
 */
#include "wire.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
aspen_assert_fail(const char *what, const char *file, int line)
{
   fprintf(stderr, "aspen: assertion failed: %s (%s:%d)\n", what, file, line);
   abort();
}

static void
oom(size_t size)
{
   fprintf(stderr, "aspen: out of memory allocating %zu bytes\n", size);
   abort();
}

/*
 * libbson declares bson_t with 128-byte alignment, and aspen embeds bson_t
 * in many heap structures (processors, pipelines, jobs, connections). malloc
 * only promises 16, which is undefined behaviour that UBSan reports. Every
 * block big enough to hold a bson_t (128 bytes) is therefore allocated
 * 128-byte aligned; smaller ones cannot contain one and use plain malloc.
 */
#define BSON_ALIGN 128

static void *
alloc_aligned(size_t size)
{
   void *p = NULL;
   size_t rounded = (size + BSON_ALIGN - 1) & ~(size_t) (BSON_ALIGN - 1);
   if (posix_memalign(&p, BSON_ALIGN, rounded) != 0) {
      oom(size);
   }
   return p;
}

void *
aspen_xmalloc(size_t size)
{
   if (size >= BSON_ALIGN) {
      return alloc_aligned(size);
   }
   void *p = malloc(size ? size : 1);
   if (!p) {
      oom(size);
   }
   return p;
}

void *
aspen_xcalloc(size_t n, size_t size)
{
   if (size && n > SIZE_MAX / size) {
      oom(SIZE_MAX);
   }
   size_t total = n * size;
   if (total >= BSON_ALIGN) {
      void *p = alloc_aligned(total);
      memset(p, 0, total);
      return p;
   }
   void *p = calloc(n ? n : 1, size ? size : 1);
   if (!p) {
      oom(total);
   }
   return p;
}

void *
aspen_xrealloc(void *ptr, size_t size)
{
   if (size >= BSON_ALIGN) {
      void *p = alloc_aligned(size);
      if (ptr) {
         size_t old = malloc_usable_size(ptr);
         memcpy(p, ptr, old < size ? old : size);
         free(ptr);
      }
      return p;
   }
   void *p = realloc(ptr, size ? size : 1);
   if (!p) {
      oom(size);
   }
   return p;
}

char *
aspen_xstrdup(const char *s)
{
   size_t n = strlen(s) + 1;
   char *p = aspen_xmalloc(n);
   memcpy(p, s, n);
   return p;
}

void
aspen_buf_init(aspen_buf_t *buf)
{
   memset(buf, 0, sizeof *buf);
}

void
aspen_buf_cleanup(aspen_buf_t *buf)
{
   free(buf->base);
   memset(buf, 0, sizeof *buf);
}

uint8_t *
aspen_buf_reserve(aspen_buf_t *buf, size_t n)
{
   if (buf->base && buf->cap - buf->tail >= n) {
      return buf->base + buf->tail;
   }
   size_t live = buf->tail - buf->head;
   /* Reclaim the consumed prefix first if that alone makes room. */
   if (buf->head > 0 && buf->cap - live >= n) {
      memmove(buf->base, buf->base + buf->head, live);
      buf->head = 0;
      buf->tail = live;
      return buf->base + buf->tail;
   }
   size_t want = live + n;
   size_t cap = buf->cap ? buf->cap : 4096;
   while (cap < want) {
      ASPEN_ASSERT(cap <= SIZE_MAX / 2);
      cap *= 2;
   }
   uint8_t *base = aspen_xmalloc(cap);
   if (live) {
      memcpy(base, buf->base + buf->head, live);
   }
   free(buf->base);
   buf->base = base;
   buf->head = 0;
   buf->tail = live;
   buf->cap = cap;
   return buf->base + buf->tail;
}

void
aspen_buf_commit(aspen_buf_t *buf, size_t n)
{
   ASPEN_ASSERT(n <= buf->cap - buf->tail);
   buf->tail += n;
}

void
aspen_buf_append(aspen_buf_t *buf, const void *data, size_t n)
{
   if (n == 0) {
      return;
   }
   memcpy(aspen_buf_reserve(buf, n), data, n);
   buf->tail += n;
}

void
aspen_buf_consume(aspen_buf_t *buf, size_t n)
{
   ASPEN_ASSERT(n <= buf->tail - buf->head);
   buf->head += n;
   if (buf->head == buf->tail) {
      buf->head = buf->tail = 0;
   }
}

void
aspen_buf_clear(aspen_buf_t *buf)
{
   buf->head = buf->tail = 0;
}

uint8_t *
aspen_buf_steal(aspen_buf_t *buf, size_t *len)
{
   size_t live = buf->tail - buf->head;
   *len = live;
   if (live == 0) {
      buf->head = buf->tail = 0;
      return NULL;
   }
   uint8_t *out;
   if (buf->head == 0) {
      out = buf->base;
      memset(buf, 0, sizeof *buf);
   } else {
      out = aspen_xmalloc(live);
      memcpy(out, buf->base + buf->head, live);
      buf->head = buf->tail = 0;
   }
   return out;
}

bool
aspen_buf_read_file(aspen_buf_t *buf, FILE *f, size_t max)
{
   size_t start = aspen_buf_len(buf);
   for (;;) {
      size_t room = 65536;
      uint8_t *p = aspen_buf_reserve(buf, room);
      size_t n = fread(p, 1, room, f);
      aspen_buf_commit(buf, n);
      if (aspen_buf_len(buf) - start > max) {
         return false;
      }
      if (n < room) {
         return !ferror(f);
      }
   }
}
