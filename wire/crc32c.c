/*
 * crc32c.c - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum OP_MSG uses when its checksumPresent flag is set. A byte-wise table
 * is plenty: drivers rarely send checksums and aspen never sends them.
 */
#include "wire.h"

#include <pthread.h>

static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void
build_table(void)
{
   for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) {
         c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      }
      table[i] = c;
   }
}

uint32_t
aspen_crc32c(uint32_t crc, const uint8_t *data, size_t len)
{
   pthread_once(&table_once, build_table);
   crc = ~crc;
   for (size_t i = 0; i < len; i++) {
      crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
   }
   return ~crc;
}
