/*
 * avro.c - Avro schemas and the Avro <-> BSON mapping for the Kafka
 * $source and $emit with a schemaRegistry (schema_registry.h). The binary
 * codec is Apache Avro C's (generic values); Avro C 1.11 ignores logical
 * types, so the schema's JSON is also read here (with libbson) into a small
 * tree, walked alongside the Avro value, that says which int, long, bytes,
 * fixed or string carries a date, a timestamp, a decimal or a uuid.
 */
#include "connectors/schema_registry.h"

#include <avro.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
   LT_NONE,
   LT_DECIMAL,
   LT_DATE,
   LT_TS_MILLIS,
   LT_TS_MICROS,
   LT_UUID,
} ltype_t;

/* One node of the schema tree. Named types are defined once; a reference
 * points at the definition (recursive records make this a graph). */
typedef struct snode {
   avro_type_t type;
   ltype_t lt;
   int precision, scale;
   int64_t fixed_size;
   char *fullname; /* named types */
   int n;          /* record fields, union branches; 1 for array/map */
   struct snode **kids;
   char **field_names; /* records */
   char **symbols;     /* enums (n_symbols) */
   int n_symbols;
   struct snode *next_alloc; /* every node, for freeing */
} snode_t;

struct aspen_avro_schema {
   avro_schema_t schema;
   avro_value_iface_t *iface;
   avro_value_t value; /* reused for every datum */
   avro_reader_t reader;
   snode_t *root;
   snode_t *nodes; /* allocation list */
};

/* ---- the schema tree ------------------------------------------------------ */

typedef struct {
   aspen_avro_schema_t *s;
   aspen_error_t *err;
} build_t;

static snode_t *
node_new(build_t *b, avro_type_t type)
{
   snode_t *n = aspen_xcalloc(1, sizeof *n);
   n->type = type;
   n->next_alloc = b->s->nodes;
   b->s->nodes = n;
   return n;
}

static bool
primitive(const char *name, avro_type_t *t)
{
   static const struct {
      const char *name;
      avro_type_t type;
   } prims[] = {{"null", AVRO_NULL},     {"boolean", AVRO_BOOLEAN},
                {"int", AVRO_INT32},     {"long", AVRO_INT64},
                {"float", AVRO_FLOAT},   {"double", AVRO_DOUBLE},
                {"bytes", AVRO_BYTES},   {"string", AVRO_STRING}};
   for (size_t i = 0; i < sizeof prims / sizeof prims[0]; i++) {
      if (strcmp(prims[i].name, name) == 0) {
         *t = prims[i].type;
         return true;
      }
   }
   return false;
}

static snode_t *
find_named(build_t *b, const char *name, const char *ns)
{
   char full[512];
   if (!strchr(name, '.') && ns && *ns) {
      snprintf(full, sizeof full, "%s.%s", ns, name);
   } else {
      snprintf(full, sizeof full, "%s", name);
   }
   for (snode_t *n = b->s->nodes; n; n = n->next_alloc) {
      if (n->fullname && (strcmp(n->fullname, full) == 0 ||
                          strcmp(n->fullname, name) == 0)) {
         return n;
      }
   }
   return NULL;
}

static const char *
doc_str(const bson_t *d, const char *key)
{
   bson_iter_t it;
   return bson_iter_init_find(&it, d, key) && BSON_ITER_HOLDS_UTF8(&it)
             ? bson_iter_utf8(&it, NULL)
             : NULL;
}

static int64_t
doc_int(const bson_t *d, const char *key, int64_t dflt)
{
   bson_iter_t it;
   return bson_iter_init_find(&it, d, key) && BSON_ITER_HOLDS_NUMBER(&it)
             ? bson_iter_as_int64(&it)
             : dflt;
}

static snode_t *build(build_t *b, const bson_iter_t *it, const char *ns);

static char *
full_name(const bson_t *d, const char *ns)
{
   const char *name = doc_str(d, "name");
   const char *space = doc_str(d, "namespace");
   char buf[512];
   if (!name) {
      return NULL;
   }
   if (strchr(name, '.')) {
      snprintf(buf, sizeof buf, "%s", name);
   } else if (space && *space) {
      snprintf(buf, sizeof buf, "%s.%s", space, name);
   } else if (ns && *ns) {
      snprintf(buf, sizeof buf, "%s.%s", ns, name);
   } else {
      snprintf(buf, sizeof buf, "%s", name);
   }
   return aspen_xstrdup(buf);
}

static ltype_t
logical(const char *lt, avro_type_t t)
{
   if (!lt) {
      return LT_NONE;
   }
   if (strcmp(lt, "decimal") == 0 && (t == AVRO_BYTES || t == AVRO_FIXED)) {
      return LT_DECIMAL;
   }
   if (strcmp(lt, "date") == 0 && t == AVRO_INT32) {
      return LT_DATE;
   }
   if ((strcmp(lt, "timestamp-millis") == 0 ||
        strcmp(lt, "local-timestamp-millis") == 0) &&
       t == AVRO_INT64) {
      return LT_TS_MILLIS;
   }
   if ((strcmp(lt, "timestamp-micros") == 0 ||
        strcmp(lt, "local-timestamp-micros") == 0) &&
       t == AVRO_INT64) {
      return LT_TS_MICROS;
   }
   if (strcmp(lt, "uuid") == 0 && t == AVRO_STRING) {
      return LT_UUID;
   }
   /* time-millis/micros stay the int/long they are, as do logical types
    * on a type they do not apply to (Avro's rule: ignore them). */
   return LT_NONE;
}

static snode_t *
build_doc(build_t *b, const bson_t *d, const char *ns)
{
   bson_iter_t ti;
   if (!bson_iter_init_find(&ti, d, "type")) {
      aspen_error_set(b->err, ASPEN_ERR_BadValue,
                      "Avro schema: an object without a type");
      return NULL;
   }
   if (!BSON_ITER_HOLDS_UTF8(&ti)) {
      return build(b, &ti, ns); /* {"type": {...}} or {"type": [...]} */
   }
   const char *type = bson_iter_utf8(&ti, NULL);
   avro_type_t pt;
   if (primitive(type, &pt)) {
      snode_t *n = node_new(b, pt);
      n->lt = logical(doc_str(d, "logicalType"), pt);
      n->precision = (int) doc_int(d, "precision", 0);
      n->scale = (int) doc_int(d, "scale", 0);
      return n;
   }
   if (strcmp(type, "record") == 0 || strcmp(type, "error") == 0) {
      snode_t *n = node_new(b, AVRO_RECORD);
      n->fullname = full_name(d, ns);
      char nsbuf[512] = "";
      if (n->fullname && strrchr(n->fullname, '.')) {
         snprintf(nsbuf, sizeof nsbuf, "%.*s",
                  (int) (strrchr(n->fullname, '.') - n->fullname),
                  n->fullname);
      }
      bson_iter_t fi, f;
      if (!bson_iter_init_find(&fi, d, "fields") ||
          !BSON_ITER_HOLDS_ARRAY(&fi)) {
         aspen_error_set(b->err, ASPEN_ERR_BadValue,
                         "Avro schema: record without fields");
         return NULL;
      }
      int cap = 0;
      bson_iter_recurse(&fi, &f);
      while (bson_iter_next(&f)) {
         bson_t fd;
         bson_iter_t ft;
         if (!BSON_ITER_HOLDS_DOCUMENT(&f) || !aspen_bson_view(&f, &fd) ||
             !doc_str(&fd, "name") || !bson_iter_init_find(&ft, &fd, "type")) {
            aspen_error_set(b->err, ASPEN_ERR_BadValue,
                            "Avro schema: a record field needs a name and a "
                            "type");
            return NULL;
         }
         if (n->n == cap) {
            cap = cap ? cap * 2 : 8;
            n->kids = aspen_xrealloc(n->kids, cap * sizeof *n->kids);
            n->field_names =
               aspen_xrealloc(n->field_names, cap * sizeof *n->field_names);
         }
         n->field_names[n->n] = aspen_xstrdup(doc_str(&fd, "name"));
         n->kids[n->n] = NULL;
         n->n++;
         snode_t *k = build(b, &ft, nsbuf);
         if (!k) {
            return NULL;
         }
         n->kids[n->n - 1] = k;
      }
      return n;
   }
   if (strcmp(type, "enum") == 0) {
      snode_t *n = node_new(b, AVRO_ENUM);
      n->fullname = full_name(d, ns);
      bson_iter_t si, s;
      if (bson_iter_init_find(&si, d, "symbols") &&
          BSON_ITER_HOLDS_ARRAY(&si)) {
         bson_iter_recurse(&si, &s);
         while (bson_iter_next(&s)) {
            if (BSON_ITER_HOLDS_UTF8(&s)) {
               n->symbols = aspen_xrealloc(
                  n->symbols, (n->n_symbols + 1) * sizeof *n->symbols);
               n->symbols[n->n_symbols++] =
                  aspen_xstrdup(bson_iter_utf8(&s, NULL));
            }
         }
      }
      return n;
   }
   if (strcmp(type, "fixed") == 0) {
      snode_t *n = node_new(b, AVRO_FIXED);
      n->fullname = full_name(d, ns);
      n->fixed_size = doc_int(d, "size", 0);
      n->lt = logical(doc_str(d, "logicalType"), AVRO_FIXED);
      n->precision = (int) doc_int(d, "precision", 0);
      n->scale = (int) doc_int(d, "scale", 0);
      return n;
   }
   if (strcmp(type, "array") == 0 || strcmp(type, "map") == 0) {
      bool array = type[0] == 'a';
      snode_t *n = node_new(b, array ? AVRO_ARRAY : AVRO_MAP);
      bson_iter_t ii;
      if (!bson_iter_init_find(&ii, d, array ? "items" : "values")) {
         aspen_error_set(b->err, ASPEN_ERR_BadValue,
                         "Avro schema: %s without %s", type,
                         array ? "items" : "values");
         return NULL;
      }
      n->kids = aspen_xcalloc(1, sizeof *n->kids);
      n->n = 1;
      n->kids[0] = build(b, &ii, ns);
      return n->kids[0] ? n : NULL;
   }
   snode_t *ref = find_named(b, type, ns);
   if (!ref) {
      aspen_error_set(b->err, ASPEN_ERR_BadValue,
                      "Avro schema: unknown type '%s'", type);
   }
   return ref;
}

static snode_t *
build(build_t *b, const bson_iter_t *it, const char *ns)
{
   if (BSON_ITER_HOLDS_UTF8(it)) {
      const char *name = bson_iter_utf8(it, NULL);
      avro_type_t pt;
      if (primitive(name, &pt)) {
         return node_new(b, pt);
      }
      snode_t *ref = find_named(b, name, ns);
      if (!ref) {
         aspen_error_set(b->err, ASPEN_ERR_BadValue,
                         "Avro schema: unknown type '%s'", name);
      }
      return ref;
   }
   if (BSON_ITER_HOLDS_ARRAY(it)) {
      snode_t *n = node_new(b, AVRO_UNION);
      bson_iter_t ui;
      bson_iter_recurse(it, &ui);
      while (bson_iter_next(&ui)) {
         n->kids = aspen_xrealloc(n->kids, (n->n + 1) * sizeof *n->kids);
         snode_t *k = build(b, &ui, ns);
         if (!k) {
            return NULL;
         }
         n->kids[n->n++] = k;
      }
      return n;
   }
   bson_t d;
   if (BSON_ITER_HOLDS_DOCUMENT(it) && aspen_bson_view(it, &d)) {
      return build_doc(b, &d, ns);
   }
   aspen_error_set(b->err, ASPEN_ERR_BadValue,
                   "Avro schema: a type must be a name, an object or a union");
   return NULL;
}

void
aspen__avro_schema_destroy(aspen_avro_schema_t *s)
{
   if (!s) {
      return;
   }
   if (s->iface) {
      avro_value_decref(&s->value);
      avro_value_iface_decref(s->iface);
   }
   if (s->reader) {
      avro_reader_free(s->reader);
   }
   if (s->schema) {
      avro_schema_decref(s->schema);
   }
   snode_t *n = s->nodes;
   while (n) {
      snode_t *next = n->next_alloc;
      if (n->field_names) {
         for (int i = 0; i < n->n; i++) {
            free(n->field_names[i]);
         }
      }
      for (int i = 0; i < n->n_symbols; i++) {
         free(n->symbols[i]);
      }
      free(n->field_names);
      free(n->symbols);
      free(n->kids);
      free(n->fullname);
      free(n);
      n = next;
   }
   free(s);
}

aspen_avro_schema_t *
aspen__avro_schema_new(const char *json, size_t len, aspen_error_t *err)
{
   aspen_avro_schema_t *s = aspen_xcalloc(1, sizeof *s);
   if (avro_schema_from_json_length(json, len, &s->schema) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "invalid Avro schema: %s",
                      avro_strerror());
      s->schema = NULL;
      aspen__avro_schema_destroy(s);
      return NULL;
   }
   /* The tree: the same JSON, through libbson. A bare primitive name
    * ("\"string\"") is no JSON document, so wrap everything in one. */
   char *wrapped = aspen_xmalloc(len + 16);
   int w = snprintf(wrapped, len + 16, "{\"t\":%.*s}", (int) len, json);
   bson_error_t berr;
   bson_t *d = bson_new_from_json((const uint8_t *) wrapped, w, &berr);
   free(wrapped);
   if (!d) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "invalid Avro schema: %s",
                      berr.message);
      aspen__avro_schema_destroy(s);
      return NULL;
   }
   build_t b = {.s = s, .err = err};
   bson_iter_t it;
   bson_iter_init_find(&it, d, "t");
   s->root = build(&b, &it, NULL);
   bson_destroy(d);
   if (!s->root) {
      aspen__avro_schema_destroy(s);
      return NULL;
   }
   s->iface = avro_generic_class_from_schema(s->schema);
   if (!s->iface || avro_generic_value_new(s->iface, &s->value) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "invalid Avro schema: %s",
                      avro_strerror());
      if (s->iface) {
         avro_value_iface_decref(s->iface);
         s->iface = NULL;
      }
      aspen__avro_schema_destroy(s);
      return NULL;
   }
   s->reader = avro_reader_memory("", 0);
   return s;
}

const char *
aspen__avro_schema_fullname(const aspen_avro_schema_t *s)
{
   return s->root->fullname;
}

/* ---- decimals --------------------------------------------------------------- */

typedef __int128 i128;

/* Two's-complement big-endian bytes -> Decimal128 with `scale`. */
static bool
decimal_from_bytes(const uint8_t *p, size_t n, int scale, bson_decimal128_t *out,
                   aspen_error_t *err)
{
   if (n == 0 || n > 16) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "an Avro decimal of %zu bytes does not fit a "
                      "Decimal128",
                      n);
      return false;
   }
   i128 v = (p[0] & 0x80) ? -1 : 0;
   for (size_t i = 0; i < n; i++) {
      v = (i128) (((unsigned __int128) v << 8) | p[i]);
   }
   char digits[64], text[80];
   unsigned __int128 mag = v < 0 ? -(unsigned __int128) v : (unsigned __int128) v;
   int nd = 0;
   do {
      digits[nd++] = (char) ('0' + (int) (mag % 10));
      mag /= 10;
   } while (mag);
   int t = 0;
   if (v < 0) {
      text[t++] = '-';
   }
   while (nd) {
      text[t++] = digits[--nd];
   }
   snprintf(text + t, sizeof text - t, "E%d", -scale);
   if (!bson_decimal128_from_string(text, out)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "an Avro decimal does not fit a Decimal128");
      return false;
   }
   return true;
}

/* A decimal string ("-1.25E+3") -> the unscaled integer at `scale`. */
static bool
unscaled_from_string(const char *s, int scale, int precision, i128 *out,
                     aspen_error_t *err)
{
   bool neg = false;
   if (*s == '-' || *s == '+') {
      neg = *s == '-';
      s++;
   }
   char digits[80];
   int nd = 0, exp = 0;
   bool dot = false;
   for (; *s && *s != 'E' && *s != 'e'; s++) {
      if (*s == '.') {
         dot = true;
         continue;
      }
      if (*s < '0' || *s > '9' || nd >= (int) sizeof digits - 1) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "is not a finite decimal number");
         return false;
      }
      digits[nd++] = *s;
      if (dot) {
         exp--;
      }
   }
   if (*s) {
      exp += atoi(s + 1);
   }
   /* value = digits * 10^exp; unscaled = digits * 10^(exp + scale). */
   int shift = exp + scale;
   while (shift < 0) {
      if (nd == 0) {
         break;
      }
      if (digits[nd - 1] != '0') {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "has more decimal places than the schema's scale "
                         "%d",
                         scale);
         return false;
      }
      nd--;
      shift++;
   }
   i128 v = 0;
   int sig = 0;
   for (int i = 0; i < nd + (shift > 0 ? shift : 0); i++) {
      int dgt = i < nd ? digits[i] - '0' : 0;
      if (v > ((i128) 1 << 120)) {
         aspen_error_set(err, ASPEN_ERR_BadValue, "is too large");
         return false;
      }
      v = v * 10 + dgt;
      if (v) {
         sig++;
      }
   }
   if (precision > 0 && sig > precision) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "has more digits than the schema's precision %d",
                      precision);
      return false;
   }
   *out = neg ? -v : v;
   return true;
}

/* The unscaled integer as two's-complement big-endian: `size` bytes, or
 * the fewest that hold it when size is 0. Returns the length. */
static size_t
unscaled_to_bytes(i128 v, size_t size, uint8_t out[16])
{
   uint8_t full[16];
   for (int i = 15; i >= 0; i--) {
      full[i] = (uint8_t) (v & 0xff);
      v >>= 8;
   }
   size_t start = 0;
   if (size == 0) {
      while (start < 15 &&
             ((full[start] == 0x00 && !(full[start + 1] & 0x80)) ||
              (full[start] == 0xff && (full[start + 1] & 0x80)))) {
         start++;
      }
      size = 16 - start;
   } else {
      start = 16 - size;
   }
   memcpy(out, full + start, size);
   return size;
}

/* ---- Avro -> BSON ----------------------------------------------------------- */

static bool
to_bson(const snode_t *n, avro_value_t *v, bson_t *out, const char *key,
        aspen_error_t *err)
{
   switch (avro_value_get_type(v)) {
   case AVRO_NULL:
      return BSON_APPEND_NULL(out, key);
   case AVRO_BOOLEAN: {
      int b = 0;
      avro_value_get_boolean(v, &b);
      return BSON_APPEND_BOOL(out, key, b != 0);
   }
   case AVRO_INT32: {
      int32_t i = 0;
      avro_value_get_int(v, &i);
      if (n->lt == LT_DATE) {
         return BSON_APPEND_DATE_TIME(out, key, (int64_t) i * 86400000);
      }
      return BSON_APPEND_INT32(out, key, i);
   }
   case AVRO_INT64: {
      int64_t l = 0;
      avro_value_get_long(v, &l);
      if (n->lt == LT_TS_MILLIS) {
         return BSON_APPEND_DATE_TIME(out, key, l);
      }
      if (n->lt == LT_TS_MICROS) {
         int64_t ms = l / 1000 - (l % 1000 < 0);
         return BSON_APPEND_DATE_TIME(out, key, ms);
      }
      return BSON_APPEND_INT64(out, key, l);
   }
   case AVRO_FLOAT: {
      float f = 0;
      avro_value_get_float(v, &f);
      return BSON_APPEND_DOUBLE(out, key, f);
   }
   case AVRO_DOUBLE: {
      double d = 0;
      avro_value_get_double(v, &d);
      return BSON_APPEND_DOUBLE(out, key, d);
   }
   case AVRO_STRING: {
      const char *s = NULL;
      size_t size = 0;
      avro_value_get_string(v, &s, &size);
      size_t len = size ? size - 1 : 0;
      if (!bson_utf8_validate(s, len, false)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "field '%s': an Avro string that is not UTF-8", key);
         return false;
      }
      return bson_append_utf8(out, key, -1, s ? s : "", (int) len);
   }
   case AVRO_BYTES:
   case AVRO_FIXED: {
      const void *p = NULL;
      size_t size = 0;
      if (avro_value_get_type(v) == AVRO_BYTES) {
         avro_value_get_bytes(v, &p, &size);
      } else {
         avro_value_get_fixed(v, &p, &size);
      }
      if (n->lt == LT_DECIMAL) {
         bson_decimal128_t dec;
         if (!decimal_from_bytes(p, size, n->scale, &dec, err)) {
            return false;
         }
         return BSON_APPEND_DECIMAL128(out, key, &dec);
      }
      return bson_append_binary(out, key, -1, BSON_SUBTYPE_BINARY, p,
                                (uint32_t) size);
   }
   case AVRO_ENUM: {
      int sym = 0;
      avro_value_get_enum(v, &sym);
      const char *name =
         avro_schema_enum_get(avro_value_get_schema(v), sym);
      return BSON_APPEND_UTF8(out, key, name ? name : "");
   }
   case AVRO_ARRAY:
   case AVRO_MAP:
   case AVRO_RECORD: {
      bool arr = avro_value_get_type(v) == AVRO_ARRAY;
      bool rec = avro_value_get_type(v) == AVRO_RECORD;
      size_t count = 0;
      avro_value_get_size(v, &count);
      bson_t child;
      if (arr) {
         bson_append_array_begin(out, key, -1, &child);
      } else {
         bson_append_document_begin(out, key, -1, &child);
      }
      for (size_t i = 0; i < count; i++) {
         avro_value_t c;
         const char *name = NULL;
         avro_value_get_by_index(v, i, &c, &name);
         char idx[16];
         const char *k = name;
         if (arr) {
            bson_uint32_to_string((uint32_t) i, &k, idx, sizeof idx);
         }
         const snode_t *kn = rec ? (i < (size_t) n->n ? n->kids[i] : NULL)
                                 : n->kids[0];
         if (!kn || !to_bson(kn, &c, &child, k, err)) {
            if (!kn) {
               aspen_error_set(err, ASPEN_ERR_BadValue,
                               "the Avro value does not match its schema");
            }
            return false;
         }
      }
      return arr ? bson_append_array_end(out, &child)
                 : bson_append_document_end(out, &child);
   }
   case AVRO_UNION: {
      int disc = 0;
      avro_value_t branch;
      avro_value_get_discriminant(v, &disc);
      avro_value_get_current_branch(v, &branch);
      if (disc < 0 || disc >= n->n) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "field '%s': union branch %d out of range", key,
                         disc);
         return false;
      }
      return to_bson(n->kids[disc], &branch, out, key, err);
   }
   default:
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "field '%s': an Avro type aspen does not map", key);
      return false;
   }
}

bool
aspen__avro_decode(aspen_avro_schema_t *s, const uint8_t *data, size_t len,
                   bson_t *out, aspen_error_t *err)
{
   bson_init(out);
   avro_value_reset(&s->value);
   avro_reader_memory_set_source(s->reader, (const char *) data,
                                 (int64_t) len);
   if (avro_value_read(s->reader, &s->value) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the bytes are not Avro of the writer's schema: %s",
                      avro_strerror());
      return false;
   }
   /* Avro C's memory reader tells no position (its is_eof is for files):
    * the value's encoded size says whether bytes are left over. */
   size_t used = 0;
   if (avro_value_sizeof(&s->value, &used) != 0 || used != len) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "the bytes are not Avro of the writer's schema: bytes "
                      "are left over after the value");
      return false;
   }
   if (s->root->type == AVRO_RECORD) {
      /* The record's fields are the document's. */
      bson_t tmp = BSON_INITIALIZER;
      bool ok = to_bson(s->root, &s->value, &tmp, "r", err);
      bson_iter_t it;
      bson_t inner;
      if (ok && bson_iter_init_find(&it, &tmp, "r") &&
          aspen_bson_view(&it, &inner)) {
         bson_concat(out, &inner);
      }
      bson_destroy(&tmp);
      return ok;
   }
   return to_bson(s->root, &s->value, out, "value", err);
}

/* ---- BSON -> Avro ----------------------------------------------------------- */

static const char *
bson_type_word(const bson_iter_t *it)
{
   if (!it) {
      return "missing";
   }
   switch (bson_iter_type(it)) {
   case BSON_TYPE_DOUBLE: return "double";
   case BSON_TYPE_UTF8: return "string";
   case BSON_TYPE_DOCUMENT: return "object";
   case BSON_TYPE_ARRAY: return "array";
   case BSON_TYPE_BINARY: return "binData";
   case BSON_TYPE_OID: return "objectId";
   case BSON_TYPE_BOOL: return "bool";
   case BSON_TYPE_DATE_TIME: return "date";
   case BSON_TYPE_NULL: return "null";
   case BSON_TYPE_INT32: return "int";
   case BSON_TYPE_INT64: return "long";
   case BSON_TYPE_DECIMAL128: return "decimal";
   case BSON_TYPE_TIMESTAMP: return "timestamp";
   default: return "an unsupported BSON type";
   }
}

static bool
is_number(const bson_iter_t *it)
{
   return it && (BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it) ||
                 BSON_ITER_HOLDS_DOUBLE(it) || BSON_ITER_HOLDS_DECIMAL128(it));
}

/* Whether BSON value `it` (NULL: missing) can be written as `n`: picks a
 * union's branch. */
static bool
fits(const snode_t *n, const bson_iter_t *it)
{
   bool missing = !it || BSON_ITER_HOLDS_NULL(it);
   switch (n->type) {
   case AVRO_NULL:
      return missing;
   case AVRO_BOOLEAN:
      return it && BSON_ITER_HOLDS_BOOL(it);
   case AVRO_INT32:
   case AVRO_INT64:
      if (n->lt == LT_DATE || n->lt == LT_TS_MILLIS || n->lt == LT_TS_MICROS) {
         return it && BSON_ITER_HOLDS_DATE_TIME(it);
      }
      return it && (BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it) ||
                    (BSON_ITER_HOLDS_DOUBLE(it) &&
                     bson_iter_double(it) == floor(bson_iter_double(it))));
   case AVRO_FLOAT:
   case AVRO_DOUBLE:
      return is_number(it);
   case AVRO_STRING:
      return it && (BSON_ITER_HOLDS_UTF8(it) ||
                    (n->lt == LT_UUID && BSON_ITER_HOLDS_BINARY(it)));
   case AVRO_BYTES:
   case AVRO_FIXED:
      if (n->lt == LT_DECIMAL) {
         return is_number(it);
      }
      return it && BSON_ITER_HOLDS_BINARY(it);
   case AVRO_ENUM:
      return it && BSON_ITER_HOLDS_UTF8(it);
   case AVRO_ARRAY:
      return it && BSON_ITER_HOLDS_ARRAY(it);
   case AVRO_MAP:
   case AVRO_RECORD:
      return it && BSON_ITER_HOLDS_DOCUMENT(it);
   case AVRO_UNION:
      for (int i = 0; i < n->n; i++) {
         if (fits(n->kids[i], it)) {
            return true;
         }
      }
      return false;
   default:
      return false;
   }
}

static bool
mismatch(const char *path, const snode_t *n, const bson_iter_t *it,
         const char *why, aspen_error_t *err)
{
   static const char *const names[] = {
      [AVRO_STRING] = "string", [AVRO_BYTES] = "bytes",
      [AVRO_INT32] = "int",     [AVRO_INT64] = "long",
      [AVRO_FLOAT] = "float",   [AVRO_DOUBLE] = "double",
      [AVRO_BOOLEAN] = "boolean", [AVRO_NULL] = "null",
      [AVRO_RECORD] = "record", [AVRO_ENUM] = "enum",
      [AVRO_FIXED] = "fixed",   [AVRO_MAP] = "map",
      [AVRO_ARRAY] = "array",   [AVRO_UNION] = "union"};
   const char *want = (size_t) n->type < sizeof names / sizeof names[0] &&
                            names[n->type]
                         ? names[n->type]
                         : "?";
   if (why) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "field '%s' %s", path, why);
   } else {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "field '%s': the schema wants %s%s%s, the document has "
                      "%s",
                      path, want, n->lt == LT_NONE ? "" : " (logical ",
                      n->lt == LT_NONE          ? ""
                      : n->lt == LT_DECIMAL     ? "decimal)"
                      : n->lt == LT_DATE        ? "date)"
                      : n->lt == LT_UUID        ? "uuid)"
                                                : "timestamp)",
                      bson_type_word(it));
   }
   return false;
}

static bool from_bson(const snode_t *n, const bson_iter_t *it, avro_value_t *v,
                      const char *path, aspen_error_t *err);

static bool
child_path(char *buf, size_t size, const char *path, const char *key)
{
   snprintf(buf, size, "%s%s%s", path, *path ? "." : "", key);
   return true;
}

static bool
from_bson(const snode_t *n, const bson_iter_t *it, avro_value_t *v,
          const char *path, aspen_error_t *err)
{
   if (n->type != AVRO_UNION && !fits(n, it)) {
      return mismatch(path, n, it, NULL, err);
   }
   switch (n->type) {
   case AVRO_NULL:
      return avro_value_set_null(v) == 0;
   case AVRO_BOOLEAN:
      return avro_value_set_boolean(v, bson_iter_bool(it)) == 0;
   case AVRO_INT32: {
      int64_t x;
      if (n->lt == LT_DATE) {
         int64_t ms = bson_iter_date_time(it);
         x = ms / 86400000 - (ms % 86400000 < 0);
      } else {
         x = BSON_ITER_HOLDS_DOUBLE(it) ? (int64_t) bson_iter_double(it)
                                        : bson_iter_as_int64(it);
      }
      if (x < INT32_MIN || x > INT32_MAX) {
         return mismatch(path, n, it, "does not fit an Avro int", err);
      }
      return avro_value_set_int(v, (int32_t) x) == 0;
   }
   case AVRO_INT64: {
      int64_t x;
      if (n->lt == LT_TS_MILLIS) {
         x = bson_iter_date_time(it);
      } else if (n->lt == LT_TS_MICROS) {
         x = bson_iter_date_time(it) * 1000;
      } else if (BSON_ITER_HOLDS_DOUBLE(it)) {
         double d = bson_iter_double(it);
         if (d < -9.2e18 || d > 9.2e18) {
            return mismatch(path, n, it, "does not fit an Avro long", err);
         }
         x = (int64_t) d;
      } else {
         x = bson_iter_as_int64(it);
      }
      return avro_value_set_long(v, x) == 0;
   }
   case AVRO_FLOAT:
   case AVRO_DOUBLE: {
      double d;
      if (BSON_ITER_HOLDS_DECIMAL128(it)) {
         bson_decimal128_t dec;
         char s[BSON_DECIMAL128_STRING];
         bson_iter_decimal128(it, &dec);
         bson_decimal128_to_string(&dec, s);
         d = strtod(s, NULL);
      } else {
         d = BSON_ITER_HOLDS_DOUBLE(it) ? bson_iter_double(it)
                                        : (double) bson_iter_as_int64(it);
      }
      return (n->type == AVRO_FLOAT ? avro_value_set_float(v, (float) d)
                                    : avro_value_set_double(v, d)) == 0;
   }
   case AVRO_STRING: {
      if (BSON_ITER_HOLDS_BINARY(it)) { /* a UUID as BinData */
         bson_subtype_t st;
         uint32_t blen;
         const uint8_t *b;
         bson_iter_binary(it, &st, &blen, &b);
         if (blen != 16) {
            return mismatch(path, n, it, "is not a 16-byte UUID", err);
         }
         char u[37];
         snprintf(u, sizeof u,
                  "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                  "%02x%02x%02x%02x%02x%02x",
                  b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
                  b[10], b[11], b[12], b[13], b[14], b[15]);
         return avro_value_set_string_len(v, u, sizeof u) == 0;
      }
      uint32_t len;
      const char *s = bson_iter_utf8(it, &len);
      if (memchr(s, '\0', len)) {
         return mismatch(path, n, it, "holds a NUL character", err);
      }
      return avro_value_set_string_len(v, s, (size_t) len + 1) == 0;
   }
   case AVRO_BYTES:
   case AVRO_FIXED: {
      uint8_t dec[16];
      const uint8_t *p;
      uint32_t blen;
      if (n->lt == LT_DECIMAL) {
         char s[BSON_DECIMAL128_STRING];
         i128 u;
         aspen_error_t derr;
         if (BSON_ITER_HOLDS_DECIMAL128(it)) {
            bson_decimal128_t d;
            bson_iter_decimal128(it, &d);
            bson_decimal128_to_string(&d, s);
         } else if (BSON_ITER_HOLDS_DOUBLE(it)) {
            double d = bson_iter_double(it);
            if (!isfinite(d)) {
               return mismatch(path, n, it, "is not a finite number", err);
            }
            snprintf(s, sizeof s, "%.*f", n->scale > 0 ? n->scale : 0, d);
         } else {
            snprintf(s, sizeof s, "%" PRId64, bson_iter_as_int64(it));
         }
         if (!unscaled_from_string(s, n->scale, n->precision, &u, &derr)) {
            return mismatch(path, n, it, derr.message, err);
         }
         size_t want = n->type == AVRO_FIXED ? (size_t) n->fixed_size : 0;
         if (want > 16) {
            return mismatch(path, n, it, "is a decimal wider than 16 bytes",
                            err);
         }
         blen = (uint32_t) unscaled_to_bytes(u, want, dec);
         p = dec;
      } else {
         bson_subtype_t st;
         bson_iter_binary(it, &st, &blen, &p);
      }
      if (n->type == AVRO_FIXED) {
         if ((int64_t) blen != n->fixed_size) {
            return mismatch(path, n, it, "has the wrong size for its fixed",
                            err);
         }
         return avro_value_set_fixed(v, (void *) p, blen) == 0;
      }
      return avro_value_set_bytes(v, (void *) p, blen) == 0;
   }
   case AVRO_ENUM: {
      const char *s = bson_iter_utf8(it, NULL);
      for (int i = 0; i < n->n_symbols; i++) {
         if (strcmp(n->symbols[i], s) == 0) {
            return avro_value_set_enum(v, i) == 0;
         }
      }
      return mismatch(path, n, it, "is not a symbol of its enum", err);
   }
   case AVRO_ARRAY:
   case AVRO_MAP: {
      bson_iter_t ci;
      bson_iter_recurse(it, &ci);
      while (bson_iter_next(&ci)) {
         avro_value_t elem;
         char cp[512];
         child_path(cp, sizeof cp, path, bson_iter_key(&ci));
         int rc = n->type == AVRO_ARRAY
                     ? avro_value_append(v, &elem, NULL)
                     : avro_value_add(v, bson_iter_key(&ci), &elem, NULL,
                                      NULL);
         if (rc != 0 || !from_bson(n->kids[0], &ci, &elem, cp, err)) {
            return rc == 0 ? false
                           : mismatch(path, n, it, "cannot be written", err);
         }
      }
      return true;
   }
   case AVRO_RECORD: {
      bson_t d;
      aspen_bson_view(it, &d);
      for (int i = 0; i < n->n; i++) {
         avro_value_t field;
         char cp[512];
         bson_iter_t fi;
         bool has = bson_iter_init_find(&fi, &d, n->field_names[i]);
         child_path(cp, sizeof cp, path, n->field_names[i]);
         if (avro_value_get_by_index(v, i, &field, NULL) != 0 ||
             !from_bson(n->kids[i], has ? &fi : NULL, &field, cp, err)) {
            return false;
         }
      }
      return true;
   }
   case AVRO_UNION:
      for (int i = 0; i < n->n; i++) {
         if (fits(n->kids[i], it)) {
            avro_value_t branch;
            if (avro_value_set_branch(v, i, &branch) != 0) {
               return mismatch(path, n, it, "cannot be written", err);
            }
            return from_bson(n->kids[i], it, &branch, path, err);
         }
      }
      return mismatch(path, n, it, NULL, err);
   default:
      return mismatch(path, n, it, NULL, err);
   }
}

bool
aspen__avro_encode(aspen_avro_schema_t *s, const bson_t *doc, size_t prefix,
                   uint8_t **out, size_t *len, aspen_error_t *err)
{
   *out = NULL;
   *len = 0;
   avro_value_reset(&s->value);
   bson_t wrap = BSON_INITIALIZER;
   bson_iter_t it;
   bool ok;
   if (s->root->type == AVRO_RECORD) {
      BSON_APPEND_DOCUMENT(&wrap, "r", doc);
      bson_iter_init_find(&it, &wrap, "r");
      ok = from_bson(s->root, &it, &s->value, "", err);
   } else {
      /* A schema that is no record writes the document's `value`. */
      bool has = bson_iter_init_find(&it, doc, "value");
      ok = from_bson(s->root, has ? &it : NULL, &s->value, "value", err);
   }
   bson_destroy(&wrap);
   if (!ok) {
      return false;
   }
   size_t size = 0;
   if (avro_value_sizeof(&s->value, &size) != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot size the Avro value: %s",
                      avro_strerror());
      return false;
   }
   uint8_t *buf = bson_malloc(prefix + size + 1);
   avro_writer_t w = avro_writer_memory((const char *) buf + prefix,
                                        (int64_t) size);
   int rc = avro_value_write(w, &s->value);
   avro_writer_free(w);
   if (rc != 0) {
      bson_free(buf);
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot write the Avro value: %s", avro_strerror());
      return false;
   }
   *out = buf;
   *len = prefix + size;
   return true;
}
