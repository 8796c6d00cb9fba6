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

/* Stores `v` at p[0..7], least significant byte first. */
static inline void
aspen_bytes_put_le64(uint8_t *p, uint64_t v)
{
   aspen_bytes_put_le32(p, (uint32_t) v);
   aspen_bytes_put_le32(p + 4, (uint32_t) (v >> 32));
}

/* Writes `v` in decimal (what "%" PRId64 prints) at buf, which holds at
 * least 21 bytes, NUL-terminated; returns the length. The digits are
 * counted first, then written from the end two at a time from a table of
 * "00" to "99" (half the divisions of one at a time). */
static inline size_t
aspen_bytes_dec_int64(int64_t v, char *buf)
{
   static const char pairs[201] =
      "0001020304050607080910111213141516171819202122232425262728293031323334"
      "3536373839404142434445464748495051525354555657585960616263646566676869"
      "707172737475767778798081828384858687888990919293949596979899";
   size_t len = 0;
   /* The magnitude as unsigned, so INT64_MIN has one too. */
   uint64_t u = v < 0 ? (uint64_t) 0 - (uint64_t) v : (uint64_t) v;
   if (v < 0) {
      buf[len++] = '-';
   }
   size_t n = 1;
   for (uint64_t x = u; x >= 10; x /= 10) {
      n++;
   }
   len += n;
   buf[len] = '\0';
   char *e = buf + len;
   while (u >= 100) {
      unsigned r = (unsigned) (u % 100);
      u /= 100;
      e -= 2;
      e[0] = pairs[2 * r];
      e[1] = pairs[2 * r + 1];
   }
   if (u >= 10) {
      e[-2] = pairs[2 * u];
      e[-1] = pairs[2 * u + 1];
   } else {
      e[-1] = (char) ('0' + u);
   }
   return len;
}

#endif /* ASPEN_WIRE_BYTES_H */
