/*
 * expr.c - the aggregation-expression compiler and the evaluator core.
 *
 * aspen_expr_parse turns a BSON expression into a tree of aspen_expr_t
 * nodes: constants (borrowed from the pipeline), field paths split once into
 * components, variables resolved to slots, object/array literals, and
 * operator nodes whose evaluation function comes from an operator table:
 * each operator file ends with the table of its operators, this one's
 * included, and find_op looks a name up in all of them. Operators whose
 * arguments are all constant are folded at compile time. This file also
 * holds the operators that are about variables, control flow, comparison,
 * objects and ASP's own ($meta, $currentDate, $createUUID); the
 * arithmetic, string, array, conversion and date operators live in
 * expr_num.c, expr_string.c, expr_array.c, expr_convert.c and expr_date.c,
 * and $function (JavaScript) in expr_function.c.
 * What an operator's arguments must be is declared beside it as a table
 * (expr_args.h); the named-argument parser here reads tables too.
 *
 * Compiled expressions are immutable: any number of threads may evaluate one
 * at the same time, each with its own context.
 */
#include "bsonw.h"
#include "lang/expr_args.h"

#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

static bool
vfail(aspen_error_t *err, int32_t code, const char *fmt, va_list ap)
   __attribute__((format(printf, 3, 0)));

static bool
vfail(aspen_error_t *err, int32_t code, const char *fmt, va_list ap)
{
   if (err) {
      err->code = code;
      vsnprintf(err->message, sizeof err->message, fmt, ap);
   }
   return false;
}

bool
aspen__fail(aspen__eval_t *st, int32_t code, const char *fmt, ...)
{
   va_list ap;
   va_start(ap, fmt);
   vfail(st->err, code, fmt, ap);
   va_end(ap);
   return false;
}

bool
aspen__pfail(aspen__parse_t *ps, int32_t code, const char *fmt, ...)
{
   va_list ap;
   va_start(ap, fmt);
   vfail(ps->err, code, fmt, ap);
   va_end(ap);
   return false;
}

static const char *
iter_type_name(const bson_iter_t *it)
{
   aspen_value_t v = aspen_value_borrow(it);
   return aspen_value_type_name(&v);
}

/* ------------------------------------------------------------------------ */
/* Nodes                                                                     */
/* ------------------------------------------------------------------------ */

aspen_expr_t *
aspen__node_new(void)
{
   aspen_expr_t *e = aspen_xcalloc(1, sizeof *e);
   e->var = ASPEN__VAR_ROOT;
   return e;
}

void
aspen__node_args(aspen_expr_t *e, uint32_t n)
{
   e->n_args = n;
   e->args = n ? aspen_xcalloc(n, sizeof *e->args) : NULL;
}

static void
free_strv(char **v, uint32_t n)
{
   if (!v) {
      return;
   }
   for (uint32_t i = 0; i < n; i++) {
      free(v[i]);
   }
   free(v);
}

void
aspen_expr_destroy(aspen_expr_t *e)
{
   if (!e) {
      return;
   }
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_expr_destroy(e->args[i]);
   }
   free(e->args);
   aspen_value_destroy(&e->cval);
   free_strv(e->parts, e->n_parts);
   free_strv(e->keys, e->n_args);
   free(e->binds);
   if (e->aux && e->aux_free) {
      e->aux_free(e->aux);
   }
   free_strv(e->ext_names, e->n_ext);
   free(e);
}

/* ------------------------------------------------------------------------ */
/* Scopes                                                                    */
/* ------------------------------------------------------------------------ */

int32_t
aspen__scope_push(aspen__parse_t *ps, const char *name)
{
   if (ps->n_names == ps->cap_names) {
      ps->cap_names = ps->cap_names ? ps->cap_names * 2 : 8;
      ps->names =
         aspen_xrealloc(ps->names, ps->cap_names * sizeof *ps->names);
      ps->slots =
         aspen_xrealloc(ps->slots, ps->cap_names * sizeof *ps->slots);
   }
   int32_t slot = (int32_t) ps->n_slots++;
   ps->names[ps->n_names] = name;
   ps->slots[ps->n_names] = slot;
   ps->n_names++;
   return slot;
}

void
aspen__scope_pop(aspen__parse_t *ps, uint32_t mark)
{
   ps->n_names = mark;
}

static bool
scope_find(const aspen__parse_t *ps, const char *name, size_t len,
           int32_t *slot)
{
   for (uint32_t i = ps->n_names; i > 0; i--) {
      const char *n = ps->names[i - 1];
      if (strlen(n) == len && memcmp(n, name, len) == 0) {
         *slot = ps->slots[i - 1];
         return true;
      }
   }
   return false;
}

static bool
var_char_ok(unsigned char c)
{
   return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || (c & 0x80);
}

/* Checks a variable name used in "$$name": MongoDB's validateNameForUserRead
 * (uppercase first letters are allowed so system variables parse). */
static bool
check_var_read(aspen__parse_t *ps, const char *name, size_t len)
{
   if (len == 0) {
      return aspen__pfail(ps, 16869, "empty variable names are not allowed");
   }
   unsigned char c0 = (unsigned char) name[0];
   if (!((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z') ||
         (c0 & 0x80))) {
      return aspen__pfail(ps, 16870,
                          "'%.*s' starts with an invalid character for a user "
                          "variable name",
                          (int) len, name);
   }
   for (size_t i = 1; i < len; i++) {
      if (!var_char_ok((unsigned char) name[i])) {
         return aspen__pfail(
            ps, 16871,
            "'%.*s' contains an invalid character for a variable name: '%c'",
            (int) len, name, name[i]);
      }
   }
   return true;
}

bool
aspen__check_var_name(aspen__parse_t *ps, const char *name)
{
   size_t len = strlen(name);
   if (len == 0) {
      return aspen__pfail(ps, 16866, "empty variable names are not allowed");
   }
   unsigned char c0 = (unsigned char) name[0];
   if (!((c0 >= 'a' && c0 <= 'z') || (c0 & 0x80)) &&
       strcmp(name, "CURRENT") != 0) {
      return aspen__pfail(ps, 16867,
                          "'%s' starts with an invalid character for a user "
                          "variable name",
                          name);
   }
   for (size_t i = 1; i < len; i++) {
      if (!var_char_ok((unsigned char) name[i])) {
         return aspen__pfail(
            ps, 16868,
            "'%s' contains an invalid character for a variable name: '%c'",
            name, name[i]);
      }
   }
   return true;
}

/* ------------------------------------------------------------------------ */
/* Evaluation of leaves: constants, field paths, variables                  */
/* ------------------------------------------------------------------------ */

static bool
eval_const(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   (void) st;
   *out = aspen__value_view(&e->cval);
   return true;
}

static aspen_value_t path_array(const uint8_t *data, uint32_t len,
                                char *const *parts, uint32_t n_parts);

/* Finds `key` in a BSON document by scanning the raw elements (field paths
 * are the hottest code in the engine; bson_iter_find does more work per
 * element than a lookup needs). The result is a borrowed view. */
static bool
raw_find(const uint8_t *data, uint32_t len, const char *key, size_t klen,
         aspen_value_t *out)
{
   uint32_t off;
   return aspen_fields_raw_find(data, len, key, klen, &off) == 1 &&
          aspen__raw_value(data, len, off, klen, out);
}

/* The rest of a path, `v` being the value of its first part. */
static aspen_value_t
path_descend(aspen_value_t v, char *const *parts, uint32_t n_parts)
{
   if (n_parts == 1) {
      return v;
   }
   if (v.v.value_type == BSON_TYPE_DOCUMENT) {
      return aspen__path_get(v.v.value.v_doc.data, v.v.value.v_doc.data_len,
                             parts + 1, n_parts - 1);
   }
   if (v.v.value_type == BSON_TYPE_ARRAY) {
      return path_array(v.v.value.v_doc.data, v.v.value.v_doc.data_len,
                        parts + 1, n_parts - 1);
   }
   return ASPEN_VALUE_MISSING;
}

aspen_value_t
aspen__path_get(const uint8_t *data, uint32_t len, char *const *parts,
                uint32_t n_parts)
{
   aspen_value_t v;
   if (!raw_find(data, len, parts[0], strlen(parts[0]), &v)) {
      return ASPEN_VALUE_MISSING;
   }
   return path_descend(v, parts, n_parts);
}

/* A path from the top of `doc`: through the context's field table when it
 * describes `doc` (the same value as aspen__path_get, without the scan). */
static aspen_value_t
doc_path_get(const aspen__eval_t *st, const bson_t *doc, const aspen_expr_t *e)
{
   char *const *parts = e->parts;
   uint32_t n_parts = e->n_parts;
   const aspen_fields_t *t = st->ctx->fields;
   if (!aspen_fields_covers(t, doc)) {
      return aspen__path_get(bson_get_data(doc), doc->len, parts, n_parts);
   }
   int i = aspen_fields_find(t, parts[0], e->part0_len);
   aspen_value_t v;
   if (i < 0 ||
       !aspen__raw_value(t->data, t->len, t->f[i].off, t->f[i].klen, &v)) {
      return ASPEN_VALUE_MISSING;
   }
   return path_descend(v, parts, n_parts);
}

/* "a.b" over an array of documents: the values found, in order; elements
 * that are not documents, and documents without the field, are skipped. */
static aspen_value_t
path_array(const uint8_t *data, uint32_t len, char *const *parts,
           uint32_t n_parts)
{
   bson_t arr = BSON_INITIALIZER;
   bson_iter_t it;
   uint32_t i = 0;
   if (bson_iter_init_from_data(&it, data, len)) {
      while (bson_iter_next(&it)) {
         if (bson_iter_type(&it) != BSON_TYPE_DOCUMENT) {
            continue;
         }
         uint32_t sublen;
         const uint8_t *sub;
         bson_iter_document(&it, &sublen, &sub);
         aspen_value_t v = aspen__path_get(sub, sublen, parts, n_parts);
         if (!aspen_value_is_missing(&v)) {
            aspen__array_append(&arr, i++, &v);
         }
         aspen_value_destroy(&v);
      }
   }
   return aspen__array_finish(&arr);
}

/* Applies the rest of a path to a value ($$var.a.b). */
static aspen_value_t
path_on_value(const aspen_value_t *val, char *const *parts, uint32_t n_parts)
{
   if (aspen__is_doc(val)) {
      return aspen__path_get(val->v.value.v_doc.data,
                             val->v.value.v_doc.data_len, parts, n_parts);
   }
   if (aspen__is_array(val)) {
      return path_array(val->v.value.v_doc.data, val->v.value.v_doc.data_len,
                        parts, n_parts);
   }
   return ASPEN_VALUE_MISSING;
}

static bool
eval_root_path(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   const bson_t *root = st->ctx->root;
   if (!root) {
      *out = ASPEN_VALUE_MISSING;
      return true;
   }
   if (!aspen__slot_get(e, st, out)) {
      *out = doc_path_get(st, root, e);
   }
   return true;
}

/* $$CURRENT (and plain "$field" paths): the document being looked at,
 * which is $$ROOT except where a stage descends into it ($redact). */
static const bson_t *
current_doc(const aspen__eval_t *st)
{
   return st->ctx->current ? st->ctx->current : st->ctx->root;
}

static bool
eval_current_path(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   const bson_t *cur = current_doc(st);
   if (!cur) {
      *out = ASPEN_VALUE_MISSING;
      return true;
   }
   if (!aspen__slot_get(e, st, out)) {
      *out = doc_path_get(st, cur, e);
   }
   return true;
}

bool
aspen__node_is_doc_path(const aspen_expr_t *e, bool *current)
{
   *current = e->eval == eval_current_path;
   return e->n_parts > 0 &&
          (e->eval == eval_current_path || e->eval == eval_root_path);
}

static bool
eval_current(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   (void) e;
   const bson_t *cur = current_doc(st);
   *out = cur ? aspen__value_doc_view(cur, false) : ASPEN_VALUE_MISSING;
   return true;
}

static bool
eval_root(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   (void) e;
   const bson_t *root = st->ctx->root;
   *out = root ? aspen__value_doc_view(root, false) : ASPEN_VALUE_MISSING;
   return true;
}

static bool
eval_var(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   if (st->ext_unbound && (uint32_t) e->var < st->n_ext &&
       st->ext_unbound[e->var]) {
      *out = ASPEN_VALUE_MISSING;
      return aspen__fail(st, 17276, "Use of undefined variable: %s",
                         (const char *) e->aux);
   }
   const aspen_value_t *slot = &st->slots[e->var];
   if (e->n_parts == 0) {
      *out = aspen__value_view(slot);
   } else {
      *out = path_on_value(slot, e->parts, e->n_parts);
   }
   return true;
}

static char **
split_path(const char *path, size_t len, uint32_t *n)
{
   uint32_t count = 1;
   for (size_t i = 0; i < len; i++) {
      if (path[i] == '.') {
         count++;
      }
   }
   char **parts = aspen_xcalloc(count, sizeof *parts);
   size_t start = 0;
   uint32_t k = 0;
   for (size_t i = 0; i <= len; i++) {
      if (i == len || path[i] == '.') {
         size_t plen = i - start;
         parts[k] = aspen_xmalloc(plen + 1);
         memcpy(parts[k], path + start, plen);
         parts[k][plen] = '\0';
         k++;
         start = i + 1;
      }
   }
   *n = count;
   return parts;
}

/* FieldPath validation as MongoDB's FieldPath constructor. */
static bool
check_field_path(aspen__parse_t *ps, const char *path, size_t len)
{
   if (len == 0) {
      return aspen__pfail(ps, 40352,
                          "FieldPath cannot be constructed with empty string");
   }
   if (memchr(path, '\0', len)) {
      return aspen__pfail(ps, 16419,
                          "field path must not contain embedded null "
                          "characters");
   }
   size_t start = 0;
   for (size_t i = 0; i <= len; i++) {
      if (i == len || path[i] == '.') {
         if (i == start) {
            return aspen__pfail(
               ps, 15998, "FieldPath field names may not be empty strings.");
         }
         if (path[start] == '$') {
            return aspen__pfail(
               ps, 16410,
               "FieldPath field names may not start with '$'. Consider using "
               "$getField or $setField.");
         }
         start = i + 1;
      }
   }
   return true;
}

static bool
set_const(aspen_expr_t *e, aspen_value_t val)
{
   e->eval = eval_const;
   e->write = NULL;
   e->flags |= ASPEN__NODE_CONST;
   e->cval = val;
   return true;
}

static bool
parse_field_path(aspen__parse_t *ps, const char *s, size_t len,
                 aspen_expr_t *e)
{
   if (len < 2) {
      return aspen__pfail(ps, 16872, "'$' by itself is not a valid FieldPath");
   }
   if (s[1] != '$') {
      const char *path = s + 1;
      size_t plen = len - 1;
      if (!check_field_path(ps, path, plen)) {
         return false;
      }
      e->parts = split_path(path, plen, &e->n_parts);
      e->part0_len = (uint32_t) strlen(e->parts[0]);
      int32_t slot;
      if (ps->current_rebound && scope_find(ps, "CURRENT", 7, &slot)) {
         e->var = slot;
         e->eval = eval_var;
         e->aux = aspen_xstrdup("CURRENT");
         e->aux_free = free;
      } else {
         /* "$a.b" is $$CURRENT.a.b. */
         e->var = ASPEN__VAR_ROOT;
         e->eval = eval_current_path;
      }
      return true;
   }
   /* "$$name[.path]" */
   const char *name = s + 2;
   const char *dot = memchr(name, '.', len - 2);
   size_t nlen = dot ? (size_t) (dot - name) : len - 2;
   if (!check_var_read(ps, name, nlen)) {
      return false;
   }
   if (dot) {
      const char *path = dot + 1;
      size_t plen = len - 2 - nlen - 1;
      if (!check_field_path(ps, path, plen)) {
         return false;
      }
      e->parts = split_path(path, plen, &e->n_parts);
      e->part0_len = (uint32_t) strlen(e->parts[0]);
   }
   int32_t slot;
   if (scope_find(ps, name, nlen, &slot)) {
      e->var = slot;
      e->eval = eval_var;
      e->aux = aspen_xmalloc(nlen + 1);
      memcpy(e->aux, name, nlen);
      ((char *) e->aux)[nlen] = '\0';
      e->aux_free = free;
      return true;
   }
#define IS_NAME(lit) (nlen == sizeof(lit) - 1 && memcmp(name, lit, nlen) == 0)
   if (IS_NAME("ROOT")) {
      e->var = ASPEN__VAR_ROOT;
      e->eval = e->n_parts ? eval_root_path : eval_root;
      return true;
   }
   if (IS_NAME("CURRENT")) {
      e->var = ASPEN__VAR_ROOT;
      e->eval = e->n_parts ? eval_current_path : eval_current;
      return true;
   }
   if (IS_NAME("REMOVE")) {
      free_strv(e->parts, e->n_parts);
      e->parts = NULL;
      e->n_parts = 0;
      return set_const(e, ASPEN_VALUE_MISSING);
   }
   if (IS_NAME("NOW") || IS_NAME("CLUSTER_TIME") || IS_NAME("USER_ROLES") ||
       IS_NAME("SEARCH_META")) {
      return aspen__pfail(ps, ASPEN_ERR_BadValue,
                          "Atlas Stream Processing does not support the $$%.*s "
                          "variable",
                          (int) nlen, name);
   }
   const char *redact = IS_NAME("DESCEND") ? "descend"
                        : IS_NAME("PRUNE") ? "prune"
                        : IS_NAME("KEEP")  ? "keep"
                                           : NULL;
#undef IS_NAME
   if (redact && e->n_parts == 0) {
      aspen_value_t v = aspen__value_str_view(redact, (uint32_t) strlen(redact));
      return set_const(e, v);
   }
   return aspen__pfail(ps, 17276, "Use of undefined variable: %.*s",
                       (int) nlen, name);
}

/* ------------------------------------------------------------------------ */
/* Object and array literals                                                 */
/* ------------------------------------------------------------------------ */

static bool
eval_object(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   bson_t doc = BSON_INITIALIZER;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!aspen__eval_node(e->args[i], st, &v)) {
         bson_destroy(&doc);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
      aspen_value_append(&doc, e->keys[i], -1, &v);
      aspen_value_destroy(&v);
      if (!aspen__eval_size_ok(st, doc.len, false)) {
         bson_destroy(&doc);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
   }
   *out = aspen_value_take_doc(&doc, false);
   return true;
}

void
aspen__array_append(bson_t *arr, uint32_t i, const aspen_value_t *val)
{
   char buf[16];
   const char *key;
   size_t klen = bson_uint32_to_string(i, &key, buf, sizeof buf);
   if (aspen_value_is_missing(val)) {
      bson_append_null(arr, key, (int) klen);
   } else {
      bson_append_value(arr, key, (int) klen, &val->v);
   }
}

aspen_value_t
aspen__array_finish(bson_t *arr)
{
   return aspen_value_take_doc(arr, true);
}

uint32_t
aspen__array_len(const aspen_value_t *arr)
{
   bson_iter_t it;
   uint32_t n = 0;
   if (aspen__array_iter(arr, &it)) {
      while (bson_iter_next(&it)) {
         n++;
      }
   }
   return n;
}

aspen_value_t *
aspen__array_items(const aspen_value_t *arr, uint32_t *n)
{
   uint32_t cap = 8, k = 0;
   aspen_value_t *items = aspen_xmalloc(cap * sizeof *items);
   bson_iter_t it;
   if (aspen__array_iter(arr, &it)) {
      while (bson_iter_next(&it)) {
         if (k == cap) {
            cap *= 2;
            items = aspen_xrealloc(items, cap * sizeof *items);
         }
         items[k++] = aspen_value_borrow(&it);
      }
   }
   *n = k;
   return items;
}

static bool
eval_array(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   bson_t arr = BSON_INITIALIZER;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!aspen__eval_node(e->args[i], st, &v)) {
         bson_destroy(&arr);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
      aspen__array_append(&arr, i, &v); /* missing becomes null */
      aspen_value_destroy(&v);
      if (!aspen__eval_size_ok(st, arr.len, false)) {
         bson_destroy(&arr);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
   }
   *out = aspen__array_finish(&arr);
   return true;
}

static bool all_args_const(const aspen_expr_t *e);
static void try_fold(aspen_expr_t *e);

static bool
parse_array_literal(aspen__parse_t *ps, const bson_iter_t *it,
                    aspen_expr_t *e)
{
   bson_iter_t child;
   aspen__node_args(e, aspen__value_child_count(it));
   e->eval = eval_array;
   bson_iter_recurse(it, &child);
   for (uint32_t i = 0; bson_iter_next(&child); i++) {
      if (!aspen__parse_operand(ps, &child, &e->args[i])) {
         return false;
      }
   }
   if (all_args_const(e)) {
      /* Constant array: keep the pipeline's bytes unless an element had to
       * be rewritten (a $literal or folded operator inside). */
      try_fold(e);
   }
   return true;
}

static bool
parse_object_literal(aspen__parse_t *ps, const bson_iter_t *it,
                     aspen_expr_t *e)
{
   bson_iter_t child;
   uint32_t n = aspen__value_child_count(it);
   aspen__node_args(e, n);
   e->keys = aspen_xcalloc(n ? n : 1, sizeof *e->keys);
   e->eval = eval_object;
   bson_iter_recurse(it, &child);
   for (uint32_t i = 0; bson_iter_next(&child); i++) {
      const char *key = bson_iter_key(&child);
      uint32_t klen = bson_iter_key_len(&child);
      if (klen == 0) {
         return aspen__pfail(ps, 15998,
                             "FieldPath field names may not be empty strings.");
      }
      if (key[0] == '$') {
         return aspen__pfail(
            ps, 16410,
            "FieldPath field names may not start with '$'. Consider using "
            "$getField or $setField.");
      }
      if (memchr(key, '.', klen)) {
         return aspen__pfail(ps, 16412,
                             "FieldPath field names may not contain '.'. "
                             "Consider using $getField or $setField.");
      }
      for (uint32_t j = 0; j < i; j++) {
         if (strcmp(e->keys[j], key) == 0) {
            return aspen__pfail(ps, 16406,
                                "duplicate field name specified in object "
                                "literal: %s",
                                key);
         }
      }
      e->keys[i] = aspen_xstrdup(key);
      if (!aspen__parse_operand(ps, &child, &e->args[i])) {
         return false;
      }
   }
   if (all_args_const(e)) {
      try_fold(e);
   }
   return true;
}

/* ------------------------------------------------------------------------ */
/* Operators: lookup, generic argument parsers, folding                      */
/* ------------------------------------------------------------------------ */

static const aspen__op_t *find_op(const char *name);

static bool
all_args_const(const aspen_expr_t *e)
{
   for (uint32_t i = 0; i < e->n_args; i++) {
      if (e->args[i] && !(e->args[i]->flags & ASPEN__NODE_CONST)) {
         return false;
      }
   }
   return true;
}

/* Replaces an operator node whose arguments are all constant with its value.
 * An evaluation error leaves the node as is, so the error surfaces per
 * document at run time (aspen sends such documents to the DLQ). */
static void
try_fold(aspen_expr_t *e)
{
   aspen_expr_ctx_t ctx = {.root = NULL, .meta = NULL, .now_ms = 0};
   aspen_error_t err;
   aspen__eval_t st = {.ctx = &ctx, .slots = NULL, .err = &err};
   aspen_value_t v;
   if (!aspen__eval_node(e, &st, &v)) {
      return;
   }
   aspen__value_own(&v);
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_expr_destroy(e->args[i]);
   }
   free(e->args);
   e->args = NULL;
   free_strv(e->keys, e->n_args);
   e->keys = NULL;
   e->n_args = 0;
   if (e->aux && e->aux_free) {
      e->aux_free(e->aux);
   }
   e->aux = NULL;
   e->aux_free = NULL;
   e->op = NULL;
   set_const(e, v);
}

bool
aspen__parse_nary(aspen__parse_t *ps, const aspen__op_t *op,
                  const bson_iter_t *arg, aspen_expr_t *e)
{
   bool is_array = bson_iter_type(arg) == BSON_TYPE_ARRAY;
   uint32_t n = is_array ? aspen__value_child_count(arg) : 1;
   bson_iter_t child;
   if (op->min_args >= 0 && op->max_args >= 0 &&
       op->min_args == op->max_args && (int) n != op->min_args) {
      return aspen__pfail(ps, 16020,
                          "Expression %s takes exactly %d arguments. %u were "
                          "passed in.",
                          op->name, op->min_args, n);
   }
   if ((op->min_args >= 0 && (int) n < op->min_args) ||
       (op->max_args >= 0 && (int) n > op->max_args)) {
      if (op->max_args < 0) {
         return aspen__pfail(ps, 16020,
                             "Expression %s takes at least %d arguments. %u "
                             "were passed in.",
                             op->name, op->min_args, n);
      }
      return aspen__pfail(ps, 28667,
                          "Expression %s takes at least %d arguments, and at "
                          "most %d, but %u were passed in.",
                          op->name, op->min_args, op->max_args, n);
   }
   aspen__node_args(e, n);
   if (!is_array) {
      return aspen__parse_operand(ps, arg, &e->args[0]);
   }
   bson_iter_recurse(arg, &child);
   for (uint32_t i = 0; bson_iter_next(&child); i++) {
      if (!aspen__parse_operand(ps, &child, &e->args[i])) {
         return false;
      }
   }
   return true;
}

bool
aspen__parse_object_arg(aspen__parse_t *ps, const aspen__op_t *op,
                        const bson_iter_t *arg, int32_t code,
                        const char *tmpl)
{
   if (bson_iter_type(arg) == BSON_TYPE_DOCUMENT) {
      return true;
   }
   aspen_value_t v = aspen_value_borrow(arg);
   aspen__msg_t m = {.op = op->name, .val = &v};
   return aspen__msg_fail(ps->err, code, tmpl, &m);
}

/* The named-argument parsers' shared steps (aspen__named_spec_t). */
static bool
named_object(aspen__parse_t *ps, const aspen__op_t *op, const bson_iter_t *arg,
             const aspen__named_spec_t *spec, uint32_t *n)
{
   *n = 0;
   while (spec->args[*n].name) {
      (*n)++;
   }
   return aspen__parse_object_arg(ps, op, arg, spec->not_object_code,
                                  spec->not_object_msg);
}

static bool
named_index(aspen__parse_t *ps, const aspen__op_t *op,
            const aspen__named_spec_t *spec, uint32_t n, const char *key,
            uint32_t *i)
{
   for (*i = 0; *i < n; (*i)++) {
      if (strcmp(spec->args[*i].name, key) == 0) {
         return true;
      }
   }
   aspen__msg_t m = {.op = op->name, .key = key};
   return aspen__msg_fail(ps->err, spec->unknown_code, spec->unknown_msg, &m);
}

/* The first required name (in row order) that is not in `present`. */
static bool
named_required(aspen__parse_t *ps, const aspen__op_t *op,
               const aspen__named_spec_t *spec, uint32_t n, uint32_t present)
{
   for (uint32_t i = 0; i < n; i++) {
      if (!((present >> i) & 1u) && spec->args[i].missing_code) {
         aspen__msg_t m = {.op = op->name};
         return aspen__msg_fail(ps->err, spec->args[i].missing_code,
                                spec->args[i].missing_msg, &m);
      }
   }
   return true;
}

/* Reads an object of named arguments: each is compiled into e->args as it
 * comes (e not NULL) or its place kept in its[] (its not NULL); *found
 * gets bit i for each name present. */
static bool
named_read(aspen__parse_t *ps, const aspen__op_t *op, const bson_iter_t *arg,
           const aspen__named_spec_t *spec, aspen_expr_t *e,
           aspen__named_it_t *its, uint32_t *found)
{
   uint32_t n;
   *found = 0;
   if (!named_object(ps, op, arg, spec, &n)) {
      return false;
   }
   if (e) {
      aspen__node_args(e, n);
   }
   bson_iter_t child;
   bson_iter_recurse(arg, &child);
   while (bson_iter_next(&child)) {
      uint32_t i;
      if (!named_index(ps, op, spec, n, bson_iter_key(&child), &i)) {
         return false;
      }
      *found |= 1u << i;
      if (its) {
         its[i].it = child;
         continue;
      }
      aspen_expr_destroy(e->args[i]);
      e->args[i] = NULL;
      if (!aspen__parse_operand(ps, &child, &e->args[i])) {
         return false;
      }
   }
   return named_required(ps, op, spec, n, *found);
}

bool
aspen__parse_named(aspen__parse_t *ps, const aspen__op_t *op,
                   const bson_iter_t *arg, aspen_expr_t *e,
                   const aspen__named_spec_t *spec)
{
   uint32_t found;
   return named_read(ps, op, arg, spec, e, NULL, &found);
}

bool
aspen__named_find(aspen__parse_t *ps, const aspen__op_t *op,
                  const bson_iter_t *arg, const aspen__named_spec_t *spec,
                  aspen__named_it_t *its, uint32_t *found)
{
   return named_read(ps, op, arg, spec, NULL, its, found);
}

static bool
parse_operator(aspen__parse_t *ps, const bson_iter_t *it, aspen_expr_t *e)
{
   bson_iter_t child;
   if (aspen__value_child_count(it) != 1) {
      bson_t obj;
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(it, &len, &data);
      char *json = NULL;
      if (bson_init_static(&obj, data, len)) {
         json = bson_as_relaxed_extended_json(&obj, NULL);
      }
      aspen__pfail(ps, 15983,
                   "An object representing an expression must have exactly "
                   "one field: %s",
                   json ? json : "{}");
      bson_free(json);
      return false;
   }
   bson_iter_recurse(it, &child);
   bson_iter_next(&child);
   const char *name = bson_iter_key(&child);
   const aspen__op_t *op = find_op(name);
   if (!op) {
      return aspen__pfail(ps, ASPEN_ERR_InvalidPipelineOperator,
                          "Unrecognized expression '%s'", name);
   }
   e->op = op;
   e->eval = op->eval;
   if (!op->parse(ps, op, &child, e)) {
      return false;
   }
   if ((op->flags & ASPEN__OP_PURE) && !(e->flags & ASPEN__NODE_CONST) &&
       all_args_const(e)) {
      try_fold(e);
   }
   return true;
}

bool
aspen__parse_operand(aspen__parse_t *ps, const bson_iter_t *it,
                     aspen_expr_t **out)
{
   *out = NULL;
   if (ps->depth >= ASPEN__MAX_DEPTH) {
      return aspen__pfail(ps, ASPEN_ERR_FailedToParse,
                          "expression nesting exceeds the maximum depth (%d)",
                          ASPEN__MAX_DEPTH);
   }
   aspen_expr_t *e = aspen__node_new();
   *out = e;
   ps->depth++;
   bool ok;
   switch (bson_iter_type(it)) {
   case BSON_TYPE_UTF8: {
      uint32_t len;
      const char *s = bson_iter_utf8(it, &len);
      if (len > 0 && s[0] == '$') {
         ok = parse_field_path(ps, s, len, e);
      } else {
         ok = set_const(e, aspen_value_borrow(it));
      }
      break;
   }
   case BSON_TYPE_DOCUMENT: {
      bson_iter_t child;
      bson_iter_recurse(it, &child);
      if (!bson_iter_next(&child)) {
         ok = parse_object_literal(ps, it, e);
      } else if (bson_iter_key(&child)[0] == '$') {
         ok = parse_operator(ps, it, e);
      } else {
         ok = parse_object_literal(ps, it, e);
      }
      break;
   }
   case BSON_TYPE_ARRAY:
      ok = parse_array_literal(ps, it, e);
      break;
   default:
      ok = set_const(e, aspen_value_borrow(it));
      break;
   }
   ps->depth--;
   return ok;
}

/* ------------------------------------------------------------------------ */
/* Core operators                                                            */
/* ------------------------------------------------------------------------ */

static bool
parse_literal(aspen__parse_t *ps, const aspen__op_t *op,
              const bson_iter_t *arg, aspen_expr_t *e)
{
   (void) ps;
   (void) op;
   return set_const(e, aspen_value_borrow(arg));
}

/* $let */
static const aspen__named_arg_t let_names[] = {
   {"vars", 16876, "Missing 'vars' parameter to $let"},
   {"in", 16877, "Missing 'in' parameter to $let"},
   {NULL, 0, NULL}};
static const aspen__named_spec_t let_spec = {
   let_names, 16874, "$let only supports an object as its argument", 16875,
   "Unrecognized parameter to $let: {key}"};

static bool
parse_let(aspen__parse_t *ps, const aspen__op_t *op, const bson_iter_t *arg,
          aspen_expr_t *e)
{
   aspen__named_it_t its[2];
   bson_iter_t child;
   uint32_t found;
   if (!aspen__named_find(ps, op, arg, &let_spec, its, &found)) {
      return false;
   }
   const bson_iter_t *vars_it = &its[0].it, *in_it = &its[1].it;
   if (bson_iter_type(vars_it) != BSON_TYPE_DOCUMENT) {
      return aspen__pfail(ps, 10065,
                          "invalid parameter: expected an object (vars)");
   }
   uint32_t n = aspen__value_child_count(vars_it);
   /* args[0..n-1]: the variables' expressions (outer scope); args[n]: in. */
   aspen__node_args(e, n + 1);
   e->n_binds = n;
   e->binds = aspen_xcalloc(n ? n : 1, sizeof *e->binds);
   bson_iter_recurse(vars_it, &child);
   for (uint32_t i = 0; bson_iter_next(&child); i++) {
      if (!aspen__parse_operand(ps, &child, &e->args[i])) {
         return false;
      }
   }
   uint32_t mark = aspen__scope_mark(ps);
   bool current_before = ps->current_rebound;
   bson_iter_recurse(vars_it, &child);
   for (uint32_t i = 0; bson_iter_next(&child); i++) {
      const char *name = bson_iter_key(&child);
      if (!aspen__check_var_name(ps, name)) {
         aspen__scope_pop(ps, mark);
         return false;
      }
      if (strcmp(name, "CURRENT") == 0) {
         ps->current_rebound = true;
      }
      e->binds[i] = aspen__scope_push(ps, name);
   }
   bool ok = aspen__parse_operand(ps, in_it, &e->args[n]);
   aspen__scope_pop(ps, mark);
   ps->current_rebound = current_before;
   return ok;
}

static void
release_slots(aspen__eval_t *st, const int32_t *binds, uint32_t n,
              aspen_value_t *result)
{
   bool any_owned = false;
   for (uint32_t i = 0; i < n; i++) {
      if (st->slots[binds[i]].owned) {
         any_owned = true;
      }
   }
   if (any_owned && result) {
      aspen__value_own(result);
   }
   for (uint32_t i = 0; i < n; i++) {
      aspen_value_destroy(&st->slots[binds[i]]);
   }
}

static bool
eval_let(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   uint32_t n = e->n_binds;
   for (uint32_t i = 0; i < n; i++) {
      aspen_value_t v;
      if (!aspen__eval_node(e->args[i], st, &v)) {
         release_slots(st, e->binds, i, NULL);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
      st->slots[e->binds[i]] = v;
   }
   bool ok = aspen__eval_node(e->args[n], st, out);
   release_slots(st, e->binds, n, ok ? out : NULL);
   return ok;
}

/* $cond: [if, then, else] or {if, then, else}. */
static const aspen__named_arg_t cond_names[] = {
   {"if", 17080, "Missing 'if' parameter to $cond"},
   {"then", 17081, "Missing 'then' parameter to $cond"},
   {"else", 17082, "Missing 'else' parameter to $cond"},
   {NULL, 0, NULL}};
static const aspen__named_spec_t cond_spec = {
   cond_names, 0, NULL, 17083, "Unrecognized parameter to $cond: {key}"};

static bool
parse_cond(aspen__parse_t *ps, const aspen__op_t *op, const bson_iter_t *arg,
           aspen_expr_t *e)
{
   if (bson_iter_type(arg) != BSON_TYPE_DOCUMENT) {
      return aspen__parse_nary(ps, op, arg, e);
   }
   return aspen__parse_named(ps, op, arg, e, &cond_spec);
}

static bool
eval_cond(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   aspen_value_t c;
   if (!aspen__eval_node(e->args[0], st, &c)) {
      *out = ASPEN_VALUE_MISSING;
      return false;
   }
   bool t = aspen_value_truthy(&c);
   aspen_value_destroy(&c);
   return aspen__eval_node(e->args[t ? 1 : 2], st, out);
}

/* $ifNull */
static bool
parse_if_null(aspen__parse_t *ps, const aspen__op_t *op,
              const bson_iter_t *arg, aspen_expr_t *e)
{
   if (!aspen__parse_nary(ps, op, arg, e)) {
      return false;
   }
   if (e->n_args < 2) {
      return aspen__pfail(ps, 1257300,
                          "$ifNull needs at least two arguments, had: %u",
                          e->n_args);
   }
   return true;
}

static bool
eval_if_null(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   for (uint32_t i = 0; i < e->n_args; i++) {
      if (!aspen__eval_node(e->args[i], st, out)) {
         return false;
      }
      if (!aspen__is_nullish(out) || i == e->n_args - 1) {
         return true;
      }
      aspen_value_destroy(out);
   }
   *out = ASPEN_VALUE_MISSING;
   return true;
}

/* $switch: args = case0, then0, case1, then1, ..., default (may be NULL). */
static bool
parse_switch(aspen__parse_t *ps, const aspen__op_t *op,
             const bson_iter_t *arg, aspen_expr_t *e)
{
   if (!aspen__parse_object_arg(ps, op, arg, 40060,
                                "$switch requires an object as an argument, "
                                "found: {type}")) {
      return false;
   }
   bson_iter_t child, branches;
   bool have_branches = false, have_default = false;
   bson_iter_t default_it;
   bson_iter_recurse(arg, &child);
   while (bson_iter_next(&child)) {
      const char *key = bson_iter_key(&child);
      if (strcmp(key, "branches") == 0) {
         if (bson_iter_type(&child) != BSON_TYPE_ARRAY) {
            return aspen__pfail(ps, 40061,
                                "$switch expected an array for 'branches', "
                                "found: %s",
                                iter_type_name(&child));
         }
         branches = child;
         have_branches = true;
      } else if (strcmp(key, "default") == 0) {
         default_it = child;
         have_default = true;
      } else {
         return aspen__pfail(ps, 40067, "$switch found an unknown argument: %s",
                             key);
      }
   }
   uint32_t nb = have_branches ? aspen__value_child_count(&branches) : 0;
   aspen__node_args(e, nb * 2 + 1);
   if (have_branches) {
      bson_iter_recurse(&branches, &child);
      for (uint32_t b = 0; bson_iter_next(&child); b++) {
         if (bson_iter_type(&child) != BSON_TYPE_DOCUMENT) {
            return aspen__pfail(ps, 40062,
                                "$switch expected each branch to be an object, "
                                "found: %s",
                                iter_type_name(&child));
         }
         bson_iter_t bi;
         bson_iter_recurse(&child, &bi);
         while (bson_iter_next(&bi)) {
            const char *key = bson_iter_key(&bi);
            uint32_t slot;
            if (strcmp(key, "case") == 0) {
               slot = b * 2;
            } else if (strcmp(key, "then") == 0) {
               slot = b * 2 + 1;
            } else {
               return aspen__pfail(ps, 40063,
                                   "$switch found an unknown argument to a "
                                   "branch: %s",
                                   key);
            }
            aspen_expr_destroy(e->args[slot]);
            e->args[slot] = NULL;
            if (!aspen__parse_operand(ps, &bi, &e->args[slot])) {
               return false;
            }
         }
         if (!e->args[b * 2]) {
            return aspen__pfail(ps, 40064,
                                "$switch requires each branch have a 'case' "
                                "expression");
         }
         if (!e->args[b * 2 + 1]) {
            return aspen__pfail(ps, 40065,
                                "$switch requires each branch have a 'then' "
                                "expression.");
         }
      }
   }
   if (nb == 0) {
      return aspen__pfail(ps, 40068, "$switch requires at least one branch.");
   }
   if (have_default &&
       !aspen__parse_operand(ps, &default_it, &e->args[nb * 2])) {
      return false;
   }
   return true;
}

static bool
eval_switch(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   uint32_t nb = (e->n_args - 1) / 2;
   for (uint32_t b = 0; b < nb; b++) {
      aspen_value_t c;
      if (!aspen__eval_node(e->args[b * 2], st, &c)) {
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
      bool t = aspen_value_truthy(&c);
      aspen_value_destroy(&c);
      if (t) {
         return aspen__eval_node(e->args[b * 2 + 1], st, out);
      }
   }
   if (!e->args[nb * 2]) {
      *out = ASPEN_VALUE_MISSING;
      return aspen__fail(st, 40066,
                         "$switch could not find a matching branch for an "
                         "input, and no default was specified.");
   }
   return aspen__eval_node(e->args[nb * 2], st, out);
}

/* $and / $or / $not */
static bool
eval_and_or(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   bool is_or = e->op->sub != 0;
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!aspen__eval_node(e->args[i], st, &v)) {
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
      bool t = aspen_value_truthy(&v);
      aspen_value_destroy(&v);
      if (t == is_or) {
         *out = aspen_value_bool(is_or);
         return true;
      }
   }
   *out = aspen_value_bool(!is_or);
   return true;
}

/* No checks beyond arity: the operator sees its arguments as they are. */
static const aspen__args_t any1_args = {.n = 1};
static const aspen__args_t any2_args = {.n = 2};

static ASPEN__DECL_COMPUTE(compute_not)
{
   (void) e;
   (void) st;
   *out = aspen_value_bool(!aspen_value_truthy(&v[0]));
   return true;
}

ASPEN__ARGS_EVAL(eval_not, any1_args, compute_not)

/* $cmp $eq $ne $gt $gte $lt $lte (sub: 0..6) */
enum { CMP_CMP, CMP_EQ, CMP_NE, CMP_GT, CMP_GTE, CMP_LT, CMP_LTE };

/* How a compares with b: < 0, 0, > 0. */
static inline int
cmp_two(const aspen_value_t *a, const aspen_value_t *b)
{
   if (a->v.value_type == BSON_TYPE_INT32 &&
       b->v.value_type == BSON_TYPE_INT32) {
      /* aspen__value_cmp's answer for two ints, without the call. */
      int32_t x = a->v.value.v_int32, y = b->v.value.v_int32;
      return x < y ? -1 : x > y ? 1 : 0;
   }
   return aspen__value_cmp(a, b, true);
}

/* The answer of $eq ... $lte (sub) for the comparison `c`. */
static inline bool
cmp_holds(int32_t sub, int c)
{
   switch (sub) {
   case CMP_EQ:
      return c == 0;
   case CMP_NE:
      return c != 0;
   case CMP_GT:
      return c > 0;
   case CMP_GTE:
      return c >= 0;
   case CMP_LT:
      return c < 0;
   default:
      return c <= 0;
   }
}

static ASPEN__DECL_COMPUTE(compute_cmp)
{
   (void) st;
   int c = cmp_two(&v[0], &v[1]);
   if (e->op->sub == CMP_CMP) {
      *out = aspen_value_int32(c < 0 ? -1 : c > 0 ? 1 : 0);
   } else {
      *out = aspen_value_bool(cmp_holds(e->op->sub, c));
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_cmp, any2_args, compute_cmp)

/* eval_cmp of two leaves ("$a" and a constant, two paths...): compute_cmp
 * on their views, which any2_args passes as they are. */
static ASPEN__DECL_EVAL(eval_cmp_leaves)
{
   aspen_value_t v[2];
   if (e->n_args == 2 && aspen__leaf_get(e->args[0], st, &v[0]) &&
       aspen__leaf_get(e->args[1], st, &v[1]) && aspen__steps_skip(st, 2)) {
      return compute_cmp(e, st, v, out);
   }
   return eval_cmp(e, st, out);
}

/* eval_cmp_leaves' fast case written straight into the output: an int32
 * ($cmp) or a bool. */
static ASPEN__DECL_WRITE(write_cmp_leaves)
{
   const aspen_value_t *a, *b;
   if (e->n_args == 2 && (a = aspen__leaf_at(e->args[0], st)) != NULL &&
       (b = aspen__leaf_at(e->args[1], st)) != NULL &&
       aspen__steps_skip(st, 2)) {
      int c = cmp_two(a, b);
      if (e->op->sub == CMP_CMP) {
         aspen_bsonw_int32(w, key, key_len, c < 0 ? -1 : c > 0 ? 1 : 0);
      } else {
         aspen_bsonw_bool(w, key, key_len, cmp_holds(e->op->sub, c));
      }
      return true;
   }
   return aspen__write_eval(e, st, w, key, key_len);
}

/* A specialised eval for nodes whose arguments are leaves (constants,
 * paths whose slot holds their value) computes the common cases without
 * evaluating the argument nodes one by one and hands anything else to the
 * operator's general eval, so results, errors and the limits' counts are
 * the same: the parser installs it (a folded constant drops it). */
bool aspen__expr_leaves_on = true;
bool aspen__expr_write_on = true;

void
aspen_expr_leaves_set_enabled(bool on)
{
   aspen__expr_leaves_on = on;
}

void
aspen_expr_write_set_enabled(bool on)
{
   aspen__expr_write_on = on;
}

bool
aspen__parse_nary_leaves(aspen__parse_t *ps, const aspen__op_t *op,
                         const bson_iter_t *arg, aspen_expr_t *e,
                         aspen__eval_fn leaves, aspen__write_fn write)
{
   if (!aspen__parse_nary(ps, op, arg, e)) {
      return false;
   }
   if (aspen__expr_leaves_on) {
      e->eval = leaves;
   }
   e->write = write;
   return true;
}

static ASPEN__DECL_PARSE(parse_cmp)
{
   return aspen__parse_nary_leaves(ps, op, arg, e, eval_cmp_leaves,
                                   write_cmp_leaves);
}

/* $meta: {$meta: "stream"} or a dotted path under it. */
static bool
parse_meta(aspen__parse_t *ps, const aspen__op_t *op, const bson_iter_t *arg,
           aspen_expr_t *e)
{
   (void) op;
   static const char *const legacy[] = {
      "textScore",      "randVal",          "searchScore",
      "searchHighlights", "geoNearDistance", "geoNearPoint",
      "recordId",       "indexKey",         "sortKey",
      "searchScoreDetails", "timeseriesBucketMinTime",
      "timeseriesBucketMaxTime", NULL};
   if (bson_iter_type(arg) != BSON_TYPE_UTF8) {
      return aspen__pfail(ps, 17307, "$meta only supports string arguments");
   }
   uint32_t len;
   const char *s = bson_iter_utf8(arg, &len);
   for (int i = 0; legacy[i]; i++) {
      if (strcmp(s, legacy[i]) == 0) {
         return aspen__pfail(ps, 17308,
                             "Unsupported argument to $meta: %s (Atlas Stream "
                             "Processing only supports \"stream\" and paths "
                             "under it, e.g. \"stream.source.topic\")",
                             s);
      }
   }
   if (strcmp(s, "stream") == 0) {
      e->n_parts = 0;
      return true;
   }
   if (len > 7 && strncmp(s, "stream.", 7) == 0) {
      if (!check_field_path(ps, s + 7, len - 7)) {
         return false;
      }
      e->parts = split_path(s + 7, len - 7, &e->n_parts);
      return true;
   }
   return aspen__pfail(ps, 17308, "Unsupported argument to $meta: %s", s);
}

static bool
eval_meta(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   const bson_t *meta = st->ctx->meta;
   if (!meta) {
      *out = ASPEN_VALUE_MISSING;
   } else if (e->n_parts == 0) {
      *out = aspen__value_doc_view(meta, false);
   } else {
      *out = aspen__path_get(bson_get_data(meta), meta->len, e->parts,
                             e->n_parts);
   }
   return true;
}

/* $currentDate and $createUUID take no arguments: {} (or an empty array). */
static bool
parse_no_args(aspen__parse_t *ps, const aspen__op_t *op,
              const bson_iter_t *arg, aspen_expr_t *e)
{
   (void) e;
   bson_type_t t = bson_iter_type(arg);
   if (t == BSON_TYPE_DOCUMENT || t == BSON_TYPE_ARRAY) {
      bson_iter_t child;
      bson_iter_recurse(arg, &child);
      if (!bson_iter_next(&child)) {
         return true;
      }
   }
   return aspen__pfail(ps, ASPEN_ERR_FailedToParse,
                       "%s does not accept arguments; use %s: {}", op->name,
                       op->name);
}

static bool
eval_current_date(const aspen_expr_t *e, aspen__eval_t *st,
                  aspen_value_t *out)
{
   (void) e;
   *out = aspen_value_date(st->ctx->now_ms);
   return true;
}

static bool
eval_create_uuid(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   (void) e;
   uint8_t bytes[16];
   if (RAND_bytes(bytes, sizeof bytes) != 1) {
      *out = ASPEN_VALUE_MISSING;
      return aspen__fail(st, ASPEN_ERR_InternalError,
                         "$createUUID could not get random bytes");
   }
   bytes[6] = (uint8_t) ((bytes[6] & 0x0f) | 0x40); /* version 4 */
   bytes[8] = (uint8_t) ((bytes[8] & 0x3f) | 0x80); /* RFC 4122 variant */
   *out = aspen__value_binary(BSON_SUBTYPE_UUID, bytes, sizeof bytes);
   return true;
}

/* $mergeObjects: later fields override earlier ones and keep the position
 * where the key first appeared. */
typedef struct {
   const char *key;
   aspen_value_t val;
} kv_t;

bool
aspen__merge_objects_input_ok(const aspen_value_t *v, aspen_error_t *err)
{
   if (aspen__is_nullish(v) || aspen__is_doc(v)) {
      return true;
   }
   if (err) {
      char *json = aspen_value_to_json(v);
      aspen_error_set(err, 40400,
                      "$mergeObjects requires object inputs, but input %s is "
                      "of type %s",
                      json, aspen_value_type_name(v));
      bson_free(json);
   }
   return false;
}

static bool
merge_one(aspen__eval_t *st, const aspen_value_t *v, kv_t **kvs, uint32_t *n,
          uint32_t *cap)
{
   if (!aspen__merge_objects_input_ok(v, st->err)) {
      return false;
   }
   if (aspen__is_nullish(v)) {
      return true;
   }
   bson_iter_t it;
   if (!aspen__array_iter(v, &it)) {
      return true;
   }
   while (bson_iter_next(&it)) {
      const char *key = bson_iter_key(&it);
      uint32_t i;
      for (i = 0; i < *n; i++) {
         if (strcmp((*kvs)[i].key, key) == 0) {
            break;
         }
      }
      if (i == *n) {
         if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *kvs = aspen_xrealloc(*kvs, *cap * sizeof **kvs);
         }
         (*n)++;
      }
      (*kvs)[i].key = key;
      (*kvs)[i].val = aspen_value_borrow(&it);
   }
   return true;
}

static bool
eval_merge_objects(const aspen_expr_t *e, aspen__eval_t *st,
                   aspen_value_t *out)
{
   uint32_t n_vals = e->n_args;
   aspen_value_t stackv[8];
   aspen_value_t *vals = n_vals <= 8 ? stackv
                                     : aspen_xmalloc(n_vals * sizeof *vals);
   kv_t *kvs = NULL;
   uint32_t n = 0, cap = 0;
   bool ok = true;
   uint32_t done = 0;
   for (; done < n_vals; done++) {
      if (!aspen__eval_node(e->args[done], st, &vals[done])) {
         ok = false;
         break;
      }
   }
   if (ok) {
      if (n_vals == 1 && aspen__is_array(&vals[0])) {
         uint32_t cnt;
         aspen_value_t *items = aspen__array_items(&vals[0], &cnt);
         for (uint32_t i = 0; ok && i < cnt; i++) {
            ok = merge_one(st, &items[i], &kvs, &n, &cap);
         }
         free(items);
      } else {
         for (uint32_t i = 0; ok && i < n_vals; i++) {
            ok = merge_one(st, &vals[i], &kvs, &n, &cap);
         }
      }
   }
   if (ok) {
      bson_t doc = BSON_INITIALIZER;
      for (uint32_t i = 0; i < n; i++) {
         aspen_value_append(&doc, kvs[i].key, -1, &kvs[i].val);
      }
      *out = aspen_value_take_doc(&doc, false);
   } else {
      *out = ASPEN_VALUE_MISSING;
   }
   for (uint32_t i = 0; i < done; i++) {
      aspen_value_destroy(&vals[i]);
   }
   if (vals != stackv) {
      free(vals);
   }
   free(kvs);
   return ok;
}

/* $getField: args[0] = field (constant string), args[1] = input. */
static bool
make_current(aspen__parse_t *ps, aspen_expr_t **out)
{
   aspen_expr_t *e = aspen__node_new();
   *out = e;
   return parse_field_path(ps, "$$CURRENT", 9, e);
}

static bool
check_const_field(aspen__parse_t *ps, const aspen__op_t *op,
                  const aspen_expr_t *field, int32_t path_code,
                  int32_t const_code, int32_t type_code)
{
   if (!(field->flags & ASPEN__NODE_CONST) &&
       (field->eval == eval_root_path || field->eval == eval_var ||
        field->eval == eval_root || field->eval == eval_current_path ||
        field->eval == eval_current)) {
      return aspen__pfail(ps, path_code,
                          "A field path reference which is not allowed in "
                          "this context. Did you mean {$literal: '...'}?");
   }
   if (!(field->flags & ASPEN__NODE_CONST)) {
      return aspen__pfail(ps, const_code,
                          "%s requires 'field' to evaluate to a constant, but "
                          "got a non-constant argument",
                          op->name);
   }
   if (!aspen__is_str(&field->cval)) {
      return aspen__pfail(ps, type_code,
                          "%s requires 'field' to evaluate to type String, "
                          "but got %s",
                          op->name, aspen_value_type_name(&field->cval));
   }
   return true;
}

static const aspen__named_arg_t get_field_names[] = {
   {"field", 3041702, "$getField requires 'field' to be specified"},
   {"input", 3041703, "$getField requires 'input' to be specified"},
   {NULL, 0, NULL}};
static const aspen__named_spec_t get_field_spec = {
   get_field_names, 0, NULL, 3041701,
   "$getField found an unknown argument: {key}"};

static bool
parse_get_field(aspen__parse_t *ps, const aspen__op_t *op,
                const bson_iter_t *arg, aspen_expr_t *e)
{
   bool named = false;
   if (bson_iter_type(arg) == BSON_TYPE_DOCUMENT) {
      bson_iter_t child;
      bson_iter_recurse(arg, &child);
      if (bson_iter_next(&child) && bson_iter_key(&child)[0] != '$') {
         named = true;
      }
   }
   if (named) {
      if (!aspen__parse_named(ps, op, arg, e, &get_field_spec)) {
         return false;
      }
   } else {
      aspen__node_args(e, 2);
      if (!aspen__parse_operand(ps, arg, &e->args[0]) ||
          !make_current(ps, &e->args[1])) {
         return false;
      }
   }
   return check_const_field(ps, op, e->args[0], 5654600, 5654601, 5654602);
}

static aspen_value_t
doc_get(const aspen_value_t *doc, const char *key)
{
   bson_iter_t it;
   if (aspen__array_iter(doc, &it) && bson_iter_find(&it, key)) {
      return aspen_value_borrow(&it);
   }
   return ASPEN_VALUE_MISSING;
}

/* args: field (a constant, read at parse time), input. */
static const aspen__args_t get_field_args = {
   .n = 2, .arg = {{.flags = ASPEN__ARG_LAZY}, {0}}};

static ASPEN__DECL_COMPUTE(compute_get_field)
{
   (void) st;
   const aspen_value_t *input = &v[1];
   if (aspen__vt(input) == BSON_TYPE_NULL ||
       aspen__vt(input) == BSON_TYPE_UNDEFINED) {
      *out = aspen_value_null();
   } else if (aspen__is_doc(input)) {
      *out = doc_get(input, e->args[0]->cval.v.value.v_utf8.str);
      if (input->owned) {
         aspen__value_own(out);
      }
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_get_field, get_field_args, compute_get_field)

/* $setField / $unsetField: args = field, input, value (NULL: remove). */
static const aspen__named_arg_t set_field_names[] = {
   {"field", 0, NULL}, {"input", 0, NULL}, {"value", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t set_field_spec = {
   set_field_names, 4161100, "{op} only supports an object as its argument",
   4161101, "{op} found an unknown argument: {key}"};
static const aspen__named_arg_t unset_field_names[] = {
   {"field", 0, NULL}, {"input", 0, NULL}, {NULL, 0, NULL}};
static const aspen__named_spec_t unset_field_spec = {
   unset_field_names, 4161100, "{op} only supports an object as its argument",
   4161101, "{op} found an unknown argument: {key}"};

static bool
parse_set_field(aspen__parse_t *ps, const aspen__op_t *op,
                const bson_iter_t *arg, aspen_expr_t *e)
{
   bool unset = op->sub != 0;
   if (!aspen__parse_named(ps, op, arg, e,
                           unset ? &unset_field_spec : &set_field_spec)) {
      return false;
   }
   /* mongod asks for field, value, then input. */
   if (!e->args[0]) {
      return aspen__pfail(ps, 4161102, "%s requires 'field' to be specified",
                          op->name);
   }
   if (!unset && !e->args[2]) {
      return aspen__pfail(ps, 4161103, "%s requires 'value' to be specified",
                          op->name);
   }
   if (!e->args[1]) {
      return aspen__pfail(ps, 4161109, "%s requires 'input' to be specified",
                          op->name);
   }
   return check_const_field(ps, op, e->args[0], 4161108, 4161106, 4161107);
}

static const aspen__args_t set_field_args = {
   .n = 3,
   .arg = {{.flags = ASPEN__ARG_LAZY},
           {.types = ASPEN__T_OBJECT, .flags = ASPEN__ARG_NULL, .code = 4161105,
            .msg = "{op} requires 'input' to evaluate to type Object"},
           {0}}};

static ASPEN__DECL_COMPUTE(compute_set_field)
{
   (void) st;
   const char *field = e->args[0]->cval.v.value.v_utf8.str;
   const aspen_value_t *value = e->n_args > 2 ? &v[2] : &ASPEN_VALUE_MISSING;
   bson_t doc = BSON_INITIALIZER;
   bson_iter_t it;
   bool replaced = false;
   if (aspen__array_iter(&v[1], &it)) {
      while (bson_iter_next(&it)) {
         if (strcmp(bson_iter_key(&it), field) == 0) {
            if (!replaced) {
               aspen_value_append(&doc, field, -1, value);
               replaced = true;
            }
            continue;
         }
         bson_append_iter(&doc, NULL, 0, &it);
      }
   }
   if (!replaced) {
      aspen_value_append(&doc, field, -1, value);
   }
   *out = aspen_value_take_doc(&doc, false);
   return true;
}

ASPEN__ARGS_EVAL(eval_set_field, set_field_args, compute_set_field)

/* ------------------------------------------------------------------------ */
/* Operators beyond expr.h's list that mongod has: $rand, $bsonSize,         */
/* $tsSecond, $tsIncrement.                                                  */
/* ------------------------------------------------------------------------ */

/* $rand: a double in [0, 1) from a per-thread xorshift generator seeded
 * from OpenSSL's RNG. */
static bool
eval_rand(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out)
{
   (void) e;
   (void) st;
   static __thread uint64_t state;
   if (state == 0) {
      if (RAND_bytes((unsigned char *) &state, sizeof state) != 1 ||
          state == 0) {
         state = 0x9e3779b97f4a7c15ULL ^ (uint64_t) (uintptr_t) &state;
      }
   }
   state ^= state << 13;
   state ^= state >> 7;
   state ^= state << 17;
   *out = aspen_value_double((double) (state >> 11) * (1.0 / 9007199254740992.0));
   return true;
}

static const aspen__args_t bson_size_args = {
   .n = 1,
   .arg = {{.types = ASPEN__T_OBJECT, .flags = ASPEN__ARG_NULL, .code = 31393,
            .msg = "$bsonSize requires a document input, found: {type}"}}};

static ASPEN__DECL_COMPUTE(compute_bson_size)
{
   (void) e;
   (void) st;
   *out = aspen_value_int32((int32_t) v[0].v.value.v_doc.data_len);
   return true;
}

ASPEN__ARGS_EVAL(eval_bson_size, bson_size_args, compute_bson_size)

/* $tsSecond (sub 0) / $tsIncrement (sub 1): parts of a Timestamp as longs. */
#define TS_ARGS(err_code)                                                      \
   {.n = 1,                                                                    \
    .arg = {{.types = ASPEN__T(BSON_TYPE_TIMESTAMP),                           \
             .flags = ASPEN__ARG_NULL,                                         \
             .code = (err_code),                                               \
             .msg = "Argument to {op} must be a timestamp, but is {type}"}}}
static const aspen__args_t ts_second_args = TS_ARGS(5687301);
static const aspen__args_t ts_increment_args = TS_ARGS(5687302);
#undef TS_ARGS

static ASPEN__DECL_COMPUTE(compute_ts_part)
{
   (void) st;
   *out = aspen_value_int64(e->op->sub ? v[0].v.value.v_timestamp.increment
                                       : v[0].v.value.v_timestamp.timestamp);
   return true;
}

ASPEN__ARGS_EVAL(eval_ts_second, ts_second_args, compute_ts_part)
ASPEN__ARGS_EVAL(eval_ts_increment, ts_increment_args, compute_ts_part)

/* ------------------------------------------------------------------------ */
/* The operator tables                                                       */
/* ------------------------------------------------------------------------ */

#define P ASPEN__OP_PURE
#define NARY aspen__parse_nary

/* name, parse, eval, min args, max args, variant, flags, arguments,
 * compute. Operators that bind variables ($let, $map, $filter, $reduce) and
 * the ones that read the context ($meta, $currentDate, $createUUID) are
 * never folded. */
static const aspen__op_t core_ops[] = {
   {"$and", NARY, eval_and_or, -1, -1, 0, P, NULL},
   {"$bsonSize", NARY, eval_bson_size, 1, 1, 0, P, &bson_size_args},
   {"$cmp", parse_cmp, eval_cmp, 2, 2, CMP_CMP, P, &any2_args},
   {"$cond", parse_cond, eval_cond, 3, 3, 0, P, NULL},
   {"$const", parse_literal, eval_const, 0, 0, 0, 0, NULL},
   {"$createUUID", parse_no_args, eval_create_uuid, 0, 0, 0, 0, NULL},
   {"$currentDate", parse_no_args, eval_current_date, 0, 0, 0, 0, NULL},
   {"$eq", parse_cmp, eval_cmp, 2, 2, CMP_EQ, P, &any2_args},
   {"$getField", parse_get_field, eval_get_field, 0, 0, 0, P, &get_field_args},
   {"$gt", parse_cmp, eval_cmp, 2, 2, CMP_GT, P, &any2_args},
   {"$gte", parse_cmp, eval_cmp, 2, 2, CMP_GTE, P, &any2_args},
   {"$ifNull", parse_if_null, eval_if_null, -1, -1, 0, P, NULL},
   {"$let", parse_let, eval_let, 0, 0, 0, 0, NULL},
   {"$literal", parse_literal, eval_const, 0, 0, 0, 0, NULL},
   {"$lt", parse_cmp, eval_cmp, 2, 2, CMP_LT, P, &any2_args},
   {"$lte", parse_cmp, eval_cmp, 2, 2, CMP_LTE, P, &any2_args},
   {"$mergeObjects", NARY, eval_merge_objects, -1, -1, 0, P, NULL},
   {"$meta", parse_meta, eval_meta, 0, 0, 0, 0, NULL},
   {"$ne", parse_cmp, eval_cmp, 2, 2, CMP_NE, P, &any2_args},
   {"$not", NARY, eval_not, 1, 1, 0, P, &any1_args},
   {"$or", NARY, eval_and_or, -1, -1, 1, P, NULL},
   {"$rand", parse_no_args, eval_rand, 0, 0, 0, 0, NULL},
   {"$setField", parse_set_field, eval_set_field, 0, 0, 0, P, &set_field_args},
   {"$switch", parse_switch, eval_switch, 0, 0, 0, P, NULL},
   {"$tsIncrement", NARY, eval_ts_increment, 1, 1, 1, P, &ts_increment_args},
   {"$tsSecond", NARY, eval_ts_second, 1, 1, 0, P, &ts_second_args},
   {"$unsetField", parse_set_field, eval_set_field, 0, 0, 1, P,
    &set_field_args},
};

#undef P
#undef NARY

const aspen__op_table_t aspen__expr_core_ops = {
   core_ops, sizeof core_ops / sizeof core_ops[0]};

static const aspen__op_table_t *const op_tables[] = {
   &aspen__expr_core_ops,   &aspen__expr_num_ops,  &aspen__expr_string_ops,
   &aspen__expr_array_ops,  &aspen__expr_convert_ops, &aspen__expr_date_ops,
   &aspen__expr_function_ops,
};

static const aspen__op_t *
find_op(const char *name)
{
   /* Each table is sorted by name (strcmp order): binary search. */
   for (size_t t = 0; t < sizeof op_tables / sizeof op_tables[0]; t++) {
      const aspen__op_t *ops = op_tables[t]->ops;
      size_t lo = 0, hi = op_tables[t]->n;
      while (lo < hi) {
         size_t mid = (lo + hi) / 2;
         int c = strcmp(name, ops[mid].name);
         if (c == 0) {
            return &ops[mid];
         }
         if (c < 0) {
            hi = mid;
         } else {
            lo = mid + 1;
         }
      }
   }
   return NULL;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */
/* ------------------------------------------------------------------------ */

static void
parse_state_init(aspen__parse_t *ps, aspen_error_t *err)
{
   memset(ps, 0, sizeof *ps);
   ps->err = err;
}

static void
parse_state_cleanup(aspen__parse_t *ps)
{
   free(ps->names);
   free(ps->slots);
}

static bool
declare_ext_vars(aspen__parse_t *ps, const char *const *vars,
                 char ***names_out, uint32_t *n_out)
{
   uint32_t n = 0;
   *names_out = NULL;
   *n_out = 0;
   if (!vars) {
      return true;
   }
   while (vars[n]) {
      n++;
   }
   char **names = aspen_xcalloc(n ? n : 1, sizeof *names);
   for (uint32_t i = 0; i < n; i++) {
      names[i] = aspen_xstrdup(vars[i]);
   }
   *names_out = names;
   *n_out = n;
   for (uint32_t i = 0; i < n; i++) {
      /* The caller's names may look like system variables (a stage can bind
       * e.g. DESCEND itself), so only the read rules apply. */
      if (!check_var_read(ps, names[i], strlen(names[i]))) {
         return false;
      }
      if (strcmp(names[i], "CURRENT") == 0) {
         ps->current_rebound = true;
      }
      aspen__scope_push(ps, names[i]);
   }
   return true;
}

static bool
finish_root(aspen__parse_t *ps, aspen_expr_t *e, char **ext_names,
            uint32_t n_ext)
{
   e->n_slots = ps->n_slots;
   e->ext_names = ext_names;
   e->n_ext = n_ext;
   return true;
}

bool
aspen_expr_parse(const bson_iter_t *it, const char *const *vars,
                 aspen_expr_t **out, aspen_error_t *err)
{
   aspen__parse_t ps;
   char **ext_names;
   uint32_t n_ext;
   aspen_expr_t *e = NULL;
   *out = NULL;
   parse_state_init(&ps, err);
   bool ok = declare_ext_vars(&ps, vars, &ext_names, &n_ext) &&
             aspen__parse_operand(&ps, it, &e);
   if (ok) {
      finish_root(&ps, e, ext_names, n_ext);
      *out = e;
   } else {
      aspen_expr_destroy(e);
      free_strv(ext_names, n_ext);
   }
   parse_state_cleanup(&ps);
   return ok;
}

/* parse_object: keys may be dotted paths ("a.b"); they build nested
 * objects, as $addFields / $project specifications do. */
typedef struct {
   const char *key; /* remaining dotted key */
   bson_iter_t it;
} field_spec_t;

static bool
build_object(aspen__parse_t *ps, field_spec_t *fs, uint32_t n,
             aspen_expr_t *e)
{
   /* Distinct first components, in order of first appearance. */
   char **keys = aspen_xcalloc(n ? n : 1, sizeof *keys);
   uint32_t nk = 0;
   for (uint32_t i = 0; i < n; i++) {
      const char *dot = strchr(fs[i].key, '.');
      size_t len = dot ? (size_t) (dot - fs[i].key) : strlen(fs[i].key);
      uint32_t k;
      for (k = 0; k < nk; k++) {
         if (strlen(keys[k]) == len && memcmp(keys[k], fs[i].key, len) == 0) {
            break;
         }
      }
      if (k == nk) {
         keys[nk] = aspen_xmalloc(len + 1);
         memcpy(keys[nk], fs[i].key, len);
         keys[nk][len] = '\0';
         nk++;
      }
   }
   aspen__node_args(e, nk);
   e->keys = keys;
   e->eval = eval_object;
   field_spec_t *sub = aspen_xcalloc(n ? n : 1, sizeof *sub);
   bool ok = true;
   for (uint32_t k = 0; ok && k < nk; k++) {
      size_t len = strlen(keys[k]);
      uint32_t ns = 0;
      bool whole = false;
      for (uint32_t i = 0; i < n; i++) {
         if (strncmp(fs[i].key, keys[k], len) != 0 ||
             (fs[i].key[len] != '\0' && fs[i].key[len] != '.')) {
            continue;
         }
         if (fs[i].key[len] == '\0') {
            if (whole || ns > 0) {
               ok = aspen__pfail(ps, 40176,
                                 "specification contains two conflicting "
                                 "paths. Cannot specify both '%s' and a path "
                                 "under it",
                                 keys[k]);
               break;
            }
            whole = true;
            ok = aspen__parse_operand(ps, &fs[i].it, &e->args[k]);
            if (!ok) {
               break;
            }
         } else {
            if (whole) {
               ok = aspen__pfail(ps, 40176,
                                 "specification contains two conflicting "
                                 "paths. Cannot specify both '%s' and a path "
                                 "under it",
                                 keys[k]);
               break;
            }
            sub[ns].key = fs[i].key + len + 1;
            sub[ns].it = fs[i].it;
            ns++;
         }
      }
      if (ok && !whole) {
         /* Copy: the recursive call reuses `sub`. */
         field_spec_t *copy = aspen_xmalloc(ns * sizeof *copy);
         memcpy(copy, sub, ns * sizeof *copy);
         e->args[k] = aspen__node_new();
         ok = build_object(ps, copy, ns, e->args[k]);
         free(copy);
      }
   }
   free(sub);
   return ok;
}

bool
aspen_expr_parse_object(const bson_t *obj, const char *const *vars,
                        aspen_expr_t **out, aspen_error_t *err)
{
   aspen__parse_t ps;
   char **ext_names;
   uint32_t n_ext;
   aspen_expr_t *e = NULL;
   field_spec_t *fs = NULL;
   *out = NULL;
   parse_state_init(&ps, err);
   bool ok = declare_ext_vars(&ps, vars, &ext_names, &n_ext);
   uint32_t n = bson_count_keys(obj);
   if (ok) {
      fs = aspen_xcalloc(n ? n : 1, sizeof *fs);
      bson_iter_t it;
      uint32_t i = 0;
      bson_iter_init(&it, obj);
      while (ok && bson_iter_next(&it)) {
         const char *key = bson_iter_key(&it);
         if (!check_field_path(&ps, key, bson_iter_key_len(&it))) {
            ok = false;
            break;
         }
         fs[i].key = key;
         fs[i].it = it;
         i++;
      }
   }
   if (ok) {
      e = aspen__node_new();
      ok = build_object(&ps, fs, n, e);
   }
   free(fs);
   if (ok) {
      finish_root(&ps, e, ext_names, n_ext);
      *out = e;
   } else {
      aspen_expr_destroy(e);
      free_strv(ext_names, n_ext);
   }
   parse_state_cleanup(&ps);
   return ok;
}

#define STACK_SLOTS 16

/* The state of an evaluation without variables, `steps` counted. */
static inline void
eval_state_plain(aspen__eval_t *st, const aspen_expr_ctx_t *ctx,
                 aspen_error_t *err, uint64_t steps)
{
   st->ctx = ctx;
   st->slots = NULL;
   st->ext_unbound = NULL;
   st->n_ext = 0;
   st->err = err;
   st->steps = steps;
   st->made = 0;
}

static bool
eval_root_expr(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
               const char *const *names, const aspen_value_t *values,
               size_t n_vars, aspen_value_t *out, aspen_error_t *err)
{
   static const aspen_expr_ctx_t empty_ctx;
   if (!ctx) {
      ctx = &empty_ctx;
   }
   if (e->n_slots == 0 && e->n_ext == 0) {
      /* No variable at all: nothing to bind (the path most expressions
       * take, once per field per document). */
      aspen__eval_t st;
      eval_state_plain(&st, ctx, err, 0);
      *out = ASPEN_VALUE_MISSING;
      if (__builtin_expect(aspen__eval_node(e, &st, out), 1)) {
         return true;
      }
      aspen_value_destroy(out);
      *out = ASPEN_VALUE_MISSING;
      return false;
   }
   aspen_value_t stack_slots[STACK_SLOTS];
   bool stack_unbound[STACK_SLOTS];
   aspen_value_t *slots = stack_slots;
   bool *unbound = stack_unbound;
   if (e->n_slots > STACK_SLOTS) {
      slots = aspen_xcalloc(e->n_slots, sizeof *slots);
   } else if (e->n_slots) {
      memset(stack_slots, 0, e->n_slots * sizeof *slots);
   }
   if (e->n_ext > STACK_SLOTS) {
      unbound = aspen_xmalloc(e->n_ext * sizeof *unbound);
   }
   bool any_unbound = false;
   for (uint32_t i = 0; i < e->n_ext; i++) {
      unbound[i] = true;
      for (size_t k = 0; k < n_vars; k++) {
         if (strcmp(names[k], e->ext_names[i]) == 0) {
            slots[i] = aspen__value_view(&values[k]);
            unbound[i] = false;
            break;
         }
      }
      any_unbound |= unbound[i];
   }
   aspen__eval_t st = {
      .ctx = ctx,
      .slots = slots,
      .ext_unbound = any_unbound ? unbound : NULL,
      .n_ext = e->n_ext,
      .err = err,
   };
   /* A node that fails may return without writing *out (expr_int.h: its
    * callers leave it MISSING), so start from MISSING: destroying what the
    * caller passed in uninitialised freed a wild pointer (found by
    * tests/fuzz/fuzz_expr under UBSan). */
   *out = ASPEN_VALUE_MISSING;
   bool ok = aspen__eval_node(e, &st, out);
   if (!ok) {
      aspen_value_destroy(out);
      *out = ASPEN_VALUE_MISSING;
   }
   if (slots != stack_slots) {
      free(slots);
   }
   if (unbound != stack_unbound) {
      free(unbound);
   }
   return ok;
}

/* ---- limits of one evaluation (expr_int.h) -------------------------------- */

static _Thread_local const atomic_bool *tl_interrupt;
static _Thread_local bool tl_interrupted;

void
aspen_expr_set_interrupt(const atomic_bool *flag)
{
   tl_interrupt = flag;
   tl_interrupted = false;
}

bool
aspen_expr_interrupted(void)
{
   return tl_interrupted;
}

void
aspen_expr_note_interrupted(void)
{
   tl_interrupted = true;
}

bool
aspen_expr_stop_requested(void)
{
   return tl_interrupt &&
          atomic_load_explicit(tl_interrupt, memory_order_relaxed);
}

bool
aspen__eval_check_slow(aspen__eval_t *st)
{
   if (tl_interrupt && atomic_load_explicit(tl_interrupt,
                                            memory_order_relaxed)) {
      tl_interrupted = true;
      return aspen__fail(st, ASPEN_ERR_Interrupted,
                         "operation was interrupted");
   }
   if (st->steps > ASPEN__EVAL_MAX_STEPS) {
      return aspen__fail(st, ASPEN_ERR_ExceededTimeLimit,
                         "expression evaluation exceeded aspen's limit of "
                         "%llu operator evaluations for one document",
                         (unsigned long long) ASPEN__EVAL_MAX_STEPS);
   }
   return true;
}

bool
aspen__eval_size_ok(aspen__eval_t *st, size_t len, bool is_string)
{
   if (is_string && len >= ASPEN__MAX_STRING_LEN) {
      return aspen__fail(st, 16493, "Tried to create string longer than "
                                    "16MB");
   }
   if (!is_string && len > ASPEN__MAX_OBJECT_LEN) {
      return aspen__fail(st, ASPEN_ERR_BSONObjectTooLarge,
                         "BSONObj size: %zu (0x%zX) is invalid. Size must "
                         "be between 0 and %u(16MB)",
                         len, len, (unsigned) ASPEN__MAX_OBJECT_LEN);
   }
   return true;
}

bool
aspen__eval_charge(aspen__eval_t *st, const aspen_value_t *val)
{
   size_t len = 0;
   bool is_string = false;
   switch (val->v.value_type) {
   case BSON_TYPE_UTF8:
      len = val->v.value.v_utf8.len;
      is_string = true;
      break;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      len = val->v.value.v_doc.data_len;
      break;
   case BSON_TYPE_BINARY:
      len = val->v.value.v_binary.data_len;
      break;
   default:
      return true; /* scalars: nothing worth counting */
   }
   if (!aspen__eval_size_ok(st, len, is_string)) {
      return false;
   }
   st->made += len;
   if (st->made > ASPEN__EVAL_MAX_MADE) {
      return aspen__fail(st, ASPEN_ERR_ExceededMemoryLimit,
                         "expression evaluation would use too much memory "
                         "(%llu bytes of values made) and cannot spill to "
                         "disk. Memory limit: %llu bytes",
                         (unsigned long long) st->made,
                         (unsigned long long) ASPEN__EVAL_MAX_MADE);
   }
   return true;
}

aspen_value_t
aspen__value_str_make(aspen__eval_t *st, const char *s, size_t len)
{
   aspen_expr_scratch_t *sc = st->ctx->scratch;
   if (sc && len < sc->cap - sc->used) {
      char *p = sc->buf + sc->used;
      memcpy(p, s, len);
      p[len] = '\0';
      sc->used += len + 1;
      aspen_value_t out = aspen__value_str_view(p, (uint32_t) len);
      out.owned = true;
      out.scratch = true;
      return out;
   }
   return aspen_value_utf8(s, len);
}

bool
aspen_expr_eval(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
                aspen_value_t *out, aspen_error_t *err)
{
   return eval_root_expr(e, ctx, NULL, NULL, 0, out, err);
}

bool
aspen__write_eval(const aspen_expr_t *e, aspen__eval_t *st, aspen_bsonw_t *w,
                  const char *key, size_t key_len)
{
   const aspen_value_t *at = aspen__leaf_at(e, st);
   if (at) {
      aspen_bsonw_value(w, key, key_len, &at->v);
      return true;
   }
   aspen_expr_scratch_t *sc = st->ctx->scratch;
   size_t used = sc ? sc->used : 0;
   aspen_value_t v = ASPEN_VALUE_MISSING;
   bool ok = e->eval(e, st, &v) && (!v.owned || aspen__eval_charge(st, &v));
   if (ok) {
      aspen_bsonw_value(w, key, key_len, &v.v);
   }
   aspen_value_destroy(&v);
   if (sc) {
      sc->used = used; /* every value made in it is written */
   }
   return ok;
}

/* aspen_expr_eval_write of an expression with variables (or without a
 * context): eval_root_expr, then the write. */
static __attribute__((noinline)) bool
write_root_expr(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
                aspen_bsonw_t *w, const char *key, size_t key_len,
                aspen_error_t *err)
{
   aspen_expr_scratch_t *sc = ctx ? ctx->scratch : NULL;
   size_t used = sc ? sc->used : 0;
   aspen_value_t v;
   bool ok = eval_root_expr(e, ctx, NULL, NULL, 0, &v, err);
   if (ok) {
      aspen_bsonw_value(w, key, key_len, &v.v);
      aspen_value_destroy(&v);
   }
   if (sc) {
      sc->used = used;
   }
   return ok;
}

bool
aspen_expr_eval_write(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
                      aspen_bsonw_t *w, const char *key, size_t key_len,
                      aspen_error_t *err)
{
   if (__builtin_expect(!ctx || e->n_slots != 0 || e->n_ext != 0, 0)) {
      return write_root_expr(e, ctx, w, key, key_len, err);
   }
   /* eval_root_expr's evaluation without variables, its root's step
    * counted as aspen__eval_node counts it (the first: no check). The
    * writes that use the scratch (aspen__write_eval) leave it as it
    * was. */
   aspen__eval_t st;
   eval_state_plain(&st, ctx, err, 1);
   aspen__write_fn write = aspen__expr_write_on ? e->write : NULL;
   if (!write) {
      write = aspen__write_eval; /* (a call either way: none inlined) */
   }
   return write(e, &st, w, key, key_len);
}

bool
aspen_expr_eval_with_vars(const aspen_expr_t *e, const aspen_expr_ctx_t *ctx,
                          const char *const *names,
                          const aspen_value_t *values, size_t n_vars,
                          aspen_value_t *out, aspen_error_t *err)
{
   return eval_root_expr(e, ctx, names, values, n_vars, out, err);
}

aspen_value_t
aspen_expr_get_path(const bson_t *doc, const char *path)
{
   size_t len = strlen(path);
   char buf[512];
   char *parts[64];
   uint32_t n = 0;
   if (len == 0 || len >= sizeof buf) {
      if (len == 0) {
         return ASPEN_VALUE_MISSING;
      }
      uint32_t np;
      char **heap_parts = split_path(path, len, &np);
      aspen_value_t v = aspen__path_get(bson_get_data(doc), doc->len,
                                        heap_parts, np);
      /* The parts are only names to look up; the result does not point
       * into them. */
      free_strv(heap_parts, np);
      return v;
   }
   memcpy(buf, path, len + 1);
   parts[n++] = buf;
   for (size_t i = 0; i < len; i++) {
      if (buf[i] == '.') {
         buf[i] = '\0';
         if (n == 64) {
            return ASPEN_VALUE_MISSING;
         }
         parts[n++] = buf + i + 1;
      }
   }
   return aspen__path_get(bson_get_data(doc), doc->len, parts, n);
}

bool
aspen_expr_is_constant(const aspen_expr_t *e, aspen_value_t *out)
{
   if (e->flags & ASPEN__NODE_CONST) {
      *out = aspen__value_view(&e->cval);
      return true;
   }
   *out = ASPEN_VALUE_MISSING;
   return false;
}
