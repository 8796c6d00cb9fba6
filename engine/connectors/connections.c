/*
 * connections.c - the connection registry: what $source, $merge, $emit,
 * $lookup and the DLQ name with connectionName. It comes from aspen's
 * config file ("connections": [{name, type, ...}]) plus the built-in
 * connections (sample_stream_solar). Each entry is parsed by the kind its
 * type names in the connector table (connectors.def, handed in the
 * catalog): this file checks only what every entry has (name, type) and
 * that each other key is one of its kind's; the kind parses the rest and
 * says what listings show, never a secret.
 */
#include "base/not_yet.h"
#include "connectors/connections.h"

#include <stdlib.h>
#include <string.h>

/* A connection's type when its entry names none (as in ASP). */
#define DEFAULT_TYPE "atlas"

/* The registry is one array, allocated once for `cap` connections and never
 * moved: a bson_t that has grown onto the heap points into itself, so
 * moving one (as realloc would) leaves it dangling. bson_t also wants
 * 128-byte alignment. */
static void
reserve(aspen_conns_t *conns, size_t cap)
{
   size_t size = cap * sizeof *conns->items;
   size = (size + 127) / 128 * 128;
   conns->items = aligned_alloc(128, size);
   if (!conns->items) {
      abort();
   }
   memset(conns->items, 0, size);
}

/* Adds connection `name` of kind `kind` with its parsed `opts` (taken)
 * and lists it. */
static void
add(aspen_conns_t *conns, const char *name, const aspen_connector_t *kind,
    void *opts)
{
   aspen_conn_t *c = &conns->items[conns->n++];
   memset(c, 0, sizeof *c);
   c->name = aspen_xstrdup(name);
   c->kind = kind;
   c->opts = opts;
   bson_init(&c->doc);
   BSON_APPEND_UTF8(&c->doc, "name", name);
   BSON_APPEND_UTF8(&c->doc, "type",
                    kind->conn->listed_type ? kind->conn->listed_type
                                            : kind->type_name);
   if (kind->conn->list) {
      kind->conn->list(opts, &c->doc);
   }
}

static bool
has_key(const aspen_connector_t *kind, const char *k)
{
   for (const char *const *key = kind->conn->keys; key && *key; key++) {
      if (strcmp(*key, k) == 0) {
         return true;
      }
   }
   return false;
}

/* `types[0..n)` quoted and joined for a message: "'a', 'b' or 'c'". */
static void
join_types(const char *const *types, size_t n, bool quote, char *names,
           size_t size)
{
   const char *q = quote ? "'" : "";
   size_t len = 0;
   names[0] = '\0';
   for (size_t i = 0; i < n && len < size; i++) {
      const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
      int w = snprintf(names + len, size - len, "%s%s%s%s", sep, q, types[i],
                       q);
      len += w > 0 ? (size_t) w : 0;
   }
}

/* Whether some kind has config key `k`; `names` (if not NULL) gets every
 * such kind for a message ("aws-lambda or s3"). */
static bool
owners_of(const aspen_catalog_t *cat, const char *k, char *names, size_t size)
{
   const char *types[16];
   size_t n = 0;
   for (size_t i = 0; i < cat->n_connectors; i++) {
      if (has_key(&cat->connectors[i], k) &&
          n < sizeof types / sizeof types[0]) {
         types[n++] = cat->connectors[i].type_name;
      }
   }
   if (names) {
      join_types(types, n, false, names, size);
   }
   return n > 0;
}

/* The configurable kind of type `type`, or NULL; `names` gets the
 * configurable types for a message ("'atlas' or 'kafka'"). */
static const aspen_connector_t *
kind_of(const aspen_catalog_t *cat, const char *type, char *names,
        size_t size)
{
   const aspen_connector_t *found = NULL;
   const char *types[16];
   size_t n = 0;
   for (size_t i = 0; i < cat->n_connectors; i++) {
      const aspen_connector_t *kind = &cat->connectors[i];
      if (!kind->conn->parse) {
         continue; /* built in only */
      }
      if (strcmp(kind->type_name, type) == 0) {
         found = kind;
      }
      if (n < sizeof types / sizeof types[0]) {
         types[n++] = kind->type_name;
      }
   }
   join_types(types, n, true, names, size);
   return found;
}

/* Parses one config entry `c` (connections[i], named by `where`). */
static bool
load_one(aspen_conns_t *conns, const aspen_catalog_t *cat, const bson_t *c,
         const aspen_conn_cfg_t *base, const char *where, aspen_error_t *err)
{
   const char *name = NULL, *type = NULL;
   bson_iter_t ci;
   /* A type ASP has and aspen not yet: said so before its keys are
    * judged (they are no kind's here). */
   if (bson_iter_init_find(&ci, c, "type") && BSON_ITER_HOLDS_UTF8(&ci)) {
      char names[256], subject[160];
      const char *t = bson_iter_utf8(&ci, NULL);
      snprintf(subject, sizeof subject,
               "config key '%s.type': connection type '%s'", where, t);
      if (!kind_of(cat, t, names, sizeof names) &&
          aspen_not_yet_error("connectionType", t, subject,
                              ASPEN_ERR_BadValue, err)) {
         return false;
      }
   }
   bson_iter_init(&ci, c);
   while (bson_iter_next(&ci)) {
      const char *k = bson_iter_key(&ci);
      const char **slot = strcmp(k, "name") == 0   ? &name
                          : strcmp(k, "type") == 0 ? &type
                                                   : NULL;
      if (!slot) {
         if (!owners_of(cat, k, NULL, 0)) {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.%s'", where, k);
            return false;
         }
         continue; /* the kind's: checked below, read by its parser */
      }
      if (!BSON_ITER_HOLDS_UTF8(&ci)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.%s' must be a string", where, k);
         return false;
      }
      *slot = bson_iter_utf8(&ci, NULL);
   }
   if (!name || !*name) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.name' is required", where);
      return false;
   }
   if (aspen_conns_find(conns, name)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.name': connection '%s' is defined "
                      "twice",
                      where, name);
      return false;
   }
   char names[256];
   const aspen_connector_t *kind =
      kind_of(cat, type ? type : DEFAULT_TYPE, names, sizeof names);
   if (!kind) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.type' must be %s, not '%s'", where,
                      names, type);
      return false;
   }
   bson_iter_init(&ci, c);
   while (bson_iter_next(&ci)) {
      const char *k = bson_iter_key(&ci);
      if (strcmp(k, "name") != 0 && strcmp(k, "type") != 0 &&
          !has_key(kind, k)) {
         char owners[256];
         (void) owners_of(cat, k, owners, sizeof owners);
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.%s' is for %s connections only",
                         where, k, owners);
         return false;
      }
   }
   aspen_conn_cfg_t cfg = *base;
   cfg.name = name;
   cfg.where = where;
   void *opts = NULL;
   if (!kind->conn->parse(&cfg, c, &opts, err)) {
      return false;
   }
   add(conns, name, kind, opts);
   return true;
}

bool
aspen_conns_load(aspen_conns_t *conns, const aspen_catalog_t *catalog,
                 const bson_t *list, const char *backend_uri,
                 const aspen_engine_authz_t *authz, aspen_error_t *err)
{
   memset(conns, 0, sizeof *conns);
   size_t cap = list ? bson_count_keys(list) : 0;
   for (size_t i = 0; i < catalog->n_connectors; i++) {
      cap += catalog->connectors[i].conn->builtin != NULL;
   }
   reserve(conns, cap ? cap : 1);
   for (size_t i = 0; i < catalog->n_connectors; i++) {
      const aspen_connector_t *kind = &catalog->connectors[i];
      if (kind->conn->builtin) {
         add(conns, kind->conn->builtin, kind, NULL);
      }
   }
   if (!list) {
      return true;
   }
   const aspen_conn_cfg_t base = {.backend_uri = backend_uri, .authz = authz};
   bson_iter_t it;
   bson_iter_init(&it, list);
   int i = 0;
   while (bson_iter_next(&it)) {
      char where[64];
      snprintf(where, sizeof where, "connections[%d]", i++);
      bson_t c;
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !aspen_bson_view(&it, &c)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s' must be an object", where);
         return false;
      }
      if (!load_one(conns, catalog, &c, &base, where, err)) {
         return false;
      }
   }
   return true;
}

void
aspen_conns_cleanup(aspen_conns_t *conns)
{
   for (size_t i = 0; i < conns->n; i++) {
      aspen_conn_t *c = &conns->items[i];
      free(c->name);
      bson_destroy(&c->doc);
      /* Last: processors (its clients) are gone by now. */
      if (c->kind->conn->destroy) {
         c->kind->conn->destroy(c->opts);
      }
   }
   free(conns->items);
   memset(conns, 0, sizeof *conns);
}

bool
aspen__conn_parse_string(const bson_iter_t *it, const char *where,
                         const char *key, char **out, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it) || !*bson_iter_utf8(it, NULL)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "config key '%s.%s' must be a non-empty string", where,
                      key);
      return false;
   }
   free(*out);
   *out = aspen_xstrdup(bson_iter_utf8(it, NULL));
   return true;
}

bool
aspen__conn_parse_url(const bson_iter_t *it, const char *where,
                      const char *key, char **out, aspen_error_t *err)
{
   if (!aspen__conn_parse_string(it, where, key, out, err)) {
      return false;
   }
   if (strncmp(*out, "http://", 7) != 0 && strncmp(*out, "https://", 8) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.%s' must be an http:// or https:// URL, "
                      "not '%s'",
                      where, key, *out);
      return false;
   }
   size_t n = strlen(*out);
   while (n > 0 && (*out)[n - 1] == '/') {
      (*out)[--n] = '\0';
   }
   return true;
}
