/*
 * bytes.h - little-endian integers in byte arrays, as the wire protocol's
 * headers and lengths (proxy/upstream_*.c) and the checkpoint file's header
 * (engine/runtime/checkpoint.c) store them, and integers in decimal text
 * without printf (ejson.c, $toString). wire/'s own decoders read through
 * the bounds-checked cursor of wire_int.h instead. Header only; pure, any
 * thread.
 */
#ifndef ASPEN_WIRE_BYTES_H
#define ASPEN_WIRE_BYTES_H

#include <stddef.h>
#include <stdint.h>

/* Stores `v` at p[0..3], least significant byte first. */
static inline void
aspen_bytes_put_le32(uint8_t *p, uint32_t v)
{
   p[0] = (uint8_t) v;
   p[1] = (uint8_t) (v >> 8);
   p[2] = (uint8_t) (v >> 16);
   p[3] = (uint8_t) (v >> 24);
}

/* The value stored at p[0..3], least significant byte first. */
static inline uint32_t
aspen_bytes_get_le32(const uint8_t *p)
{
   return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
          (uint32_t) p[3] << 24;
}

/* The value stored at p[0..7], least significant byte first. */
static inline uint64_t
aspen_bytes_get_le64(const uint8_t *p)
{
   return (uint64_t) aspen_bytes_get_le32(p) |
          (uint64_t) aspen_bytes_get_le32(p + 4) << 32;
}

/* Writes `v` in decimal (what "%" PRId64 prints) at buf, which holds at
 * least 21 bytes, NUL-terminated; returns the length. */
static inline size_t
aspen_bytes_dec_int64(int64_t v, char *buf)
{
   char tmp[20];
   size_t n = 0, len = 0;
   /* The magnitude as unsigned, so INT64_MIN has one too. */
   uint64_t u = v < 0 ? (uint64_t) 0 - (uint64_t) v : (uint64_t) v;
   do {
      tmp[n++] = (char) ('0' + u % 10);
      u /= 10;
   } while (u);
   if (v < 0) {
      buf[len++] = '-';
   }
   while (n) {
      buf[len++] = tmp[--n];
   }
   buf[len] = '\0';
   return len;
}

#endif /* ASPEN_WIRE_BYTES_H */
