/*
 * wire_int.h - helpers shared inside wire/: a bounds-checked little-endian
 * read cursor (every read advances and fails on underflow, so parsers have one
 * error exit) and the document validation every decoder applies.
 */
#ifndef ASPEN_WIRE_INT_H
#define ASPEN_WIRE_INT_H

#include "wire.h"

#include <string.h>

typedef struct {
   const uint8_t *p;
   const uint8_t *end;
} aspen__cursor_t;

static inline bool
aspen__cursor_u32(aspen__cursor_t *c, uint32_t *v)
{
   if ((size_t) (c->end - c->p) < 4) {
      return false;
   }
   *v = (uint32_t) c->p[0] | ((uint32_t) c->p[1] << 8) |
        ((uint32_t) c->p[2] << 16) | ((uint32_t) c->p[3] << 24);
   c->p += 4;
   return true;
}

static inline bool
aspen__cursor_i32(aspen__cursor_t *c, int32_t *v)
{
   uint32_t u;
   if (!aspen__cursor_u32(c, &u)) {
      return false;
   }
   *v = (int32_t) u;
   return true;
}

static inline bool
aspen__cursor_u8(aspen__cursor_t *c, uint8_t *v)
{
   if (c->p >= c->end) {
      return false;
   }
   *v = *c->p++;
   return true;
}

/* A NUL-terminated string wholly inside the cursor. */
static inline bool
aspen__cursor_cstring(aspen__cursor_t *c, const char **s)
{
   const uint8_t *nul = memchr(c->p, 0, (size_t) (c->end - c->p));
   if (!nul) {
      return false;
   }
   *s = (const char *) c->p;
   c->p = nul + 1;
   return true;
}

/* Reads one BSON document at the cursor into a static bson_t, checking its
 * declared length against the bytes left and `max_len`, and validating it.
 * On failure err says which (InvalidBSON, BSONObjectTooLarge). */
bool aspen__cursor_bson(aspen__cursor_t *c, size_t max_len, bson_t *doc,
                        const char *what, aspen_error_t *err);

void aspen__write_i32(uint8_t *p, int32_t v);

#endif
