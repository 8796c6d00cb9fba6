/*
 * prom.c - what both sides of aspen's Prometheus endpoint write (the
 * proxy's counters, proxy/metrics.c; the engine's figures,
 * engine/commands/metrics.c): label values escaped as the text format
 * wants.
 */
#include "wire.h"

void
aspen_prom_label_value(bson_string_t *out, const char *s)
{
   for (; *s; s++) {
      if (*s == '\\' || *s == '"') {
         bson_string_append_c(out, '\\');
         bson_string_append_c(out, *s);
      } else if (*s == '\n') {
         bson_string_append(out, "\\n");
      } else {
         bson_string_append_c(out, *s);
      }
   }
}
