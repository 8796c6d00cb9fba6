/*
 * hash.h - FNV-1a (64-bit): the one non-cryptographic hash of aspen's hash
 * tables (window groups, the $cachedLookup cache, the backend's client
 * sessions and lanes). Fast on the short keys those have; not for anything
 * a peer could use to attack the table's spread beyond what chaining
 * bounds. Header only; pure, any thread.
 */
#ifndef ASPEN_WIRE_HASH_H
#define ASPEN_WIRE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define ASPEN_HASH_FNV1A_OFFSET 14695981039346656037ull
#define ASPEN_HASH_FNV1A_PRIME 1099511628211ull

/* The 64-bit FNV-1a hash of the `len` bytes at `data`. */
static inline uint64_t
aspen_hash_fnv1a(const void *data, size_t len)
{
   const uint8_t *p = data;
   uint64_t h = ASPEN_HASH_FNV1A_OFFSET;
   for (size_t i = 0; i < len; i++) {
      h = (h ^ p[i]) * ASPEN_HASH_FNV1A_PRIME;
   }
   return h;
}

#endif /* ASPEN_WIRE_HASH_H */
