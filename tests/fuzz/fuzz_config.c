/*
 * fuzz_config.c - aspen's config file: Extended JSON text through
 * bson_init_from_json and the key-table loader of proxy/config.c (included
 * here to reach its static load_doc without a temp file per input), then
 * aspen_config_finish (the getCmdLineOpts document) and the engine's
 * connection registry loader, aspen_conns_load, on the "connections" array.
 * Raw BSON (see fuzz_common.h) reaches the loaders too.
 */
#include "../../proxy/config.c"

#include "builtins.h"
#include "connectors/connections.h"
#include "fuzz_common.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   if (size > FUZZ_MAX_INPUT) {
      return 0;
   }
   aspen_log_set_level(ASPEN_LOG_ERROR);
   bson_t doc;
   if (!fuzz_doc_from_bytes(data, size, &doc)) {
      bson_destroy(&doc);
      return 0;
   }
   aspen_config_t cfg;
   aspen_error_t err;
   aspen_config_init(&cfg);
   if (load_doc(&cfg, &doc, "", &err)) {
      aspen_config_finish(&cfg);
      aspen_conns_t conns;
      if (aspen_conns_load(&conns, aspen_builtins_catalog(), &cfg.connections,
                           cfg.backend_uri, NULL, &err)) {
         for (size_t i = 0; i < conns.n; i++) {
            (void) aspen_conns_find(&conns, conns.items[i].name);
         }
      }
      aspen_conns_cleanup(&conns);
   } else {
      ASPEN_ASSERT(err.code != 0);
   }
   aspen_config_cleanup(&cfg);
   bson_destroy(&doc);
   return 0;
}
