/*
 * args.c - what every sp command checks of its fields (commands.h): the
 * command's strings are UTF-8, it has no field it does not know (those
 * drivers add aside), its processor name, options ({dlq, tier,
 * virtualClock, exactlyOnce}) and the usual typed fields; and the error
 * reply with ASP's labels.
 */
#include "base/not_yet.h"
#include "commands/commands.h"
#include "connectors/conn_atlas.h"

#include <string.h>

/* Commands nested deeper than this are refused (the wire layer's own
 * limit is lower; this only bounds the UTF-8 walk). */
#define MAX_CMD_DEPTH 200

void
aspen__cmd_reply_err(bson_t *reply, const aspen_error_t *err)
{
   aspen_error_append_reply(reply, err);
   if (err->code == ASPEN_ERR_StreamProcessorInvalidOptions ||
       err->code == ASPEN_ERR_StreamProcessorAtlasConnectionError) {
      bson_t labels;
      BSON_APPEND_ARRAY_BEGIN(reply, "errorLabels", &labels);
      BSON_APPEND_UTF8(&labels, "0", "StreamProcessorUserError");
      bson_append_array_end(reply, &labels);
   }
}

/* Fields any driver may add to a command; never options. */
static bool
is_generic_field(const char *k)
{
   static const char *const generic[] = {
      "$db", "lsid", "$clusterTime", "$readPreference", "apiVersion",
      "apiStrict", "apiDeprecationErrors", "comment", "maxTimeMS",
      "txnNumber", "autocommit", "$audit", "writeConcern", "readConcern",
      NULL};
   for (int i = 0; generic[i]; i++) {
      if (strcmp(generic[i], k) == 0) {
         return true;
      }
   }
   return false;
}

bool
aspen__cmd_check_fields(const bson_t *cmd, const char *name,
                        const char *const *allowed, bson_t *reply)
{
   bson_iter_t it;
   bson_iter_init(&it, cmd);
   bson_iter_next(&it);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (is_generic_field(k)) {
         continue;
      }
      bool ok = false;
      for (int i = 0; allowed && allowed[i]; i++) {
         if (strcmp(allowed[i], k) == 0) {
            ok = true;
         }
      }
      aspen_error_t ny;
      char subject[128];
      snprintf(subject, sizeof subject, "%s.%s", name, k);
      if (!ok && aspen_not_yet_error(name, k, subject, 0, &ny)) {
         aspen_reply_error(reply, ny.code, "%s", ny.message);
         return false;
      }
      if (!ok) {
         aspen_reply_error(reply, ASPEN_ERR_Location40415,
                           "BSON field '%s.%s' is an unknown field.", name, k);
         return false;
      }
   }
   return true;
}

const char *
aspen__cmd_name_arg(const bson_t *cmd, const char *cmdname, bson_t *reply)
{
   bson_iter_t it;
   bson_iter_init(&it, cmd);
   bson_iter_next(&it);
   if (!BSON_ITER_HOLDS_UTF8(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s' is the wrong type '%s', expected "
                        "type 'string'",
                        cmdname,
                        BSON_ITER_HOLDS_NULL(&it) ? "null" : "non-string");
      return NULL;
   }
   uint32_t len;
   const char *name = bson_iter_utf8(&it, &len);
   if (len == 0) {
      aspen_reply_error(reply, ASPEN_ERR_BadValue,
                        "stream processor name must not be empty");
      return NULL;
   }
   if (strlen(name) != len) {
      /* Names are compared as C strings: "a\0b" must not reach "a". */
      aspen_reply_error(reply, ASPEN_ERR_BadValue,
                        "stream processor name must not contain a NUL "
                        "character");
      return NULL;
   }
   return name;
}

bool
aspen__cmd_check_new_name(const char *name, const char *field, bson_t *reply)
{
   aspen_error_t err;
   if (aspen_registry_check_name(name, field, &err)) {
      return true;
   }
   aspen_error_append_reply(reply, &err);
   return false;
}

aspen_proc_t *
aspen__cmd_find(aspen_cmd_ctx_t *ctx, const char *name, bson_t *reply)
{
   aspen_proc_t *p = aspen_registry_find(ctx->reg, name);
   if (!p) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorDoesNotExist,
                        "stream processor '%s' does not exist", name);
   }
   return p;
}

bool
aspen__cmd_room_for_one(aspen_cmd_ctx_t *ctx, bson_t *reply)
{
   if (!aspen_registry_is_full(ctx->reg)) {
      return true;
   }
   aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                     "cannot create another stream processor: the workspace "
                     "has %zu, aspen's limit (streams.maxProcessors); drop "
                     "one first",
                     aspen_registry_count(ctx->reg));
   return false;
}

aspen_proc_t *
aspen__cmd_proc_arg(aspen_cmd_ctx_t *ctx, const bson_t *cmd,
                    const char *cmdname, const char *const *allowed,
                    bson_t *reply)
{
   const char *name = aspen__cmd_name_arg(cmd, cmdname, reply);
   if (!name || !aspen__cmd_check_fields(cmd, cmdname, allowed, reply)) {
      return NULL;
   }
   return aspen__cmd_find(ctx, name, reply);
}

/* Validates createStreamProcessor/modify options; dlq connections must be
 * atlas connections. */
static bool
check_dlq(aspen_cmd_ctx_t *ctx, const bson_iter_t *it, bson_t *reply)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: options.dlq must be an "
                        "object {connectionName, db, coll}");
      return false;
   }
   bson_iter_t di;
   bson_iter_recurse(it, &di);
   const char *cn = NULL;
   int have = 0, n = 0;
   while (bson_iter_next(&di)) {
      const char *k = bson_iter_key(&di);
      n++;
      if (strcmp(k, "connectionName") != 0 && strcmp(k, "db") != 0 &&
          strcmp(k, "coll") != 0) {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                           "StreamProcessorInvalidOptions: BSON field "
                           "'options.dlq.%s' is an unknown field.",
                           k);
         return false;
      }
      if (!BSON_ITER_HOLDS_UTF8(&di) || !*bson_iter_utf8(&di, NULL)) {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                           "StreamProcessorInvalidOptions: options.dlq.%s "
                           "must be a non-empty string",
                           k);
         return false;
      }
      if (strcmp(k, "connectionName") == 0) {
         cn = bson_iter_utf8(&di, NULL);
      }
      have++;
   }
   if (n == 0) {
      return true; /* {} removes the DLQ (modify) */
   }
   if (have != 3 || !cn) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: options.dlq needs "
                        "connectionName, db and coll");
      return false;
   }
   const aspen_conn_t *conn = aspen_conns_find(ctx->conns, cn);
   if (!conn) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: Unknown connection "
                        "name %s (at options.dlq.connectionName)",
                        cn);
      return false;
   }
   if (!aspen__conn_atlas(conn)) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: the DLQ must use an "
                        "atlas connection, '%s' is %s",
                        cn, conn->kind->type_name);
      return false;
   }
   return true;
}

bool
aspen__cmd_check_tier(const bson_iter_t *it, const char *where,
                      bson_t *reply)
{
   const char *t = BSON_ITER_HOLDS_UTF8(it) ? bson_iter_utf8(it, NULL) : NULL;
   if (aspen_tier_find(t)) {
      return true;
   }
   char names[64] = "";
   size_t used = 0;
   int n = aspen_tier_count();
   for (int i = 0; i < n; i++) {
      used += (size_t) snprintf(names + used, sizeof names - used, "%s%s",
                                i == 0 ? "" : i == n - 1 ? " or " : ", ",
                                aspen_tier_at(i)->name);
   }
   aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                     "StreamProcessorInvalidOptions: invalid tier '%s' for %s "
                     "(expected %s)",
                     t ? t : "(not a string)", where, names);
   return false;
}

bool
aspen__cmd_check_autoscaling(const bson_iter_t *it, const char *where,
                             bson_t *reply)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: %s must be an object",
                        where);
      return false;
   }
   bson_iter_t f;
   bson_iter_recurse(it, &f);
   bool has_enabled = false;
   int lo = -1, hi = -1;
   while (bson_iter_next(&f)) {
      const char *k = bson_iter_key(&f);
      char sub[96];
      snprintf(sub, sizeof sub, "%s.%s", where, k);
      if (strcmp(k, "enabled") == 0) {
         if (!BSON_ITER_HOLDS_BOOL(&f)) {
            aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                              "StreamProcessorInvalidOptions: %s must be a "
                              "boolean",
                              sub);
            return false;
         }
         has_enabled = true;
      } else if (strcmp(k, "minTier") == 0 || strcmp(k, "maxTier") == 0) {
         if (!aspen__cmd_check_tier(&f, sub, reply)) {
            return false;
         }
         int r = aspen_tier_rank(bson_iter_utf8(&f, NULL));
         *(k[1] == 'i' ? &lo : &hi) = r;
      } else {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                           "StreamProcessorInvalidOptions: BSON field '%s' is "
                           "an unknown field.",
                           sub);
         return false;
      }
   }
   if (!has_enabled) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: BSON field "
                        "'%s.enabled' is missing but a required field",
                        where);
      return false;
   }
   if (lo >= 0 && hi >= 0 && lo > hi) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                        "StreamProcessorInvalidOptions: %s.minTier (%s) must "
                        "not be above %s.maxTier (%s)",
                        where, aspen_tier_at(lo)->name, where,
                        aspen_tier_at(hi)->name);
      return false;
   }
   return true;
}

bool
aspen__cmd_check_parallelism(const bson_t *pipeline, const bson_t *options,
                             bson_t *reply)
{
   int64_t total = 1 + aspen__cmd_added_parallelism(pipeline);
   aspen_tier_plan_t plan;
   aspen_tier_plan(options, &plan);
   const aspen_tier_t *t = aspen_tier_at(plan.rank);
   if (total <= t->max_parallelism) {
      return true;
   }
   const aspen_tier_t *need = aspen_tier_for_parallelism(total);
   char advice[96];
   if (need) {
      snprintf(advice, sizeof advice, "use tier %s or higher", need->name);
   } else {
      snprintf(advice, sizeof advice, "no tier allows more than %lld",
               (long long) aspen_tier_at(aspen_tier_count() - 1)
                  ->max_parallelism);
   }
   aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                     "StreamProcessorInvalidOptions: the pipeline's "
                     "cumulative parallelism of %lld exceeds the maximum of "
                     "%lld for tier %s: %s",
                     (long long) total, (long long) t->max_parallelism,
                     t->name, advice);
   return false;
}

bool
aspen__cmd_check_options(aspen_cmd_ctx_t *ctx, const bson_t *options,
                         bson_t *out, bson_t *reply)
{
   bson_iter_t it;
   bson_iter_init(&it, options);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "dlq") == 0) {
         if (!check_dlq(ctx, &it, reply)) {
            return false;
         }
         bson_iter_t sub;
         bson_iter_recurse(&it, &sub);
         if (bson_iter_next(&sub)) {
            bson_append_iter(out, NULL, 0, &it);
         }
      } else if (strcmp(k, "tier") == 0) {
         if (!aspen__cmd_check_tier(&it, "options.tier", reply)) {
            return false;
         }
         bson_append_iter(out, NULL, 0, &it);
      } else if (strcmp(k, "autoscaling") == 0) {
         if (!aspen__cmd_check_autoscaling(&it, "options.autoscaling",
                                           reply)) {
            return false;
         }
         bson_append_iter(out, NULL, 0, &it);
      } else if (strcmp(k, "virtualClock") == 0 ||
                 strcmp(k, "exactlyOnce") == 0) {
         /* aspen's own (README): virtualClock, windows on a clock driven
          * by the input; exactlyOnce, Kafka transactions for Kafka ->
          * $emit (checked against the pipeline by pipeline_options_ok). */
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                              "StreamProcessorInvalidOptions: options.%s must "
                              "be a boolean",
                              k);
            return false;
         }
         bson_append_iter(out, NULL, 0, &it);
      } else {
         aspen_reply_error(reply, ASPEN_ERR_StreamProcessorInvalidOptions,
                           "StreamProcessorInvalidOptions: BSON field "
                           "'options.%s' is an unknown field.",
                           k);
         return false;
      }
   }
   return true;
}

bool
aspen__cmd_get_array(const bson_t *cmd, const char *key, bson_t *out,
                     bool required, const char *cmdname, bson_t *reply)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, cmd, key)) {
      if (required) {
         aspen_reply_error(reply, ASPEN_ERR_FailedToParse,
                           "BSON field '%s.%s' is missing but a required field",
                           cmdname, key);
      }
      return false;
   }
   if (!BSON_ITER_HOLDS_ARRAY(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s.%s' is the wrong type, expected type "
                        "'array'",
                        cmdname, key);
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_array(&it, &len, &data);
   return bson_init_static(out, data, len);
}

bool
aspen__cmd_get_options_doc(const bson_t *cmd, const char *cmdname,
                           bson_t *out, bool *present, bson_t *reply)
{
   bson_iter_t it;
   *present = false;
   if (!bson_iter_init_find(&it, cmd, "options") || BSON_ITER_HOLDS_NULL(&it)) {
      bson_init(out);
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s.options' is the wrong type, expected "
                        "type 'object'",
                        cmdname);
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(&it, &len, &data);
   *present = true;
   return bson_init_static(out, data, len);
}

bool
aspen__cmd_resume_arg(const bson_t *cmd, const char *cmdname, bool *resume,
                      bson_t *reply)
{
   bson_iter_t it;
   *resume = true;
   if (!bson_iter_init_find(&it, cmd, "resumeFromCheckpoint")) {
      return true;
   }
   if (!BSON_ITER_HOLDS_BOOL(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s.resumeFromCheckpoint' is the wrong "
                        "type, expected type 'bool'",
                        cmdname);
      return false;
   }
   *resume = bson_iter_bool(&it);
   return true;
}

/* Appends ".<key>" (or the key alone at the top) to the dotted `path`,
 * cut to its buffer on a character boundary (the key is valid UTF-8). */
static void
path_push(char *path, size_t cap, const char *key)
{
   size_t used = strlen(path);
   snprintf(path + used, cap - used, "%s%s", used ? "." : "", key);
   aspen_utf8_scrub(path);
}

static bool
utf8_ok(const char *s, size_t len, bool allow_nul)
{
   return bson_utf8_validate(s, len, allow_nul);
}

typedef enum { BAD_STRING, BAD_KEY, BAD_DEPTH } bad_utf8_t;

/* Walks `doc` for a field name or string (string values, symbols, code,
 * regular expressions, DBPointer namespaces) that is not valid UTF-8.
 * False with `path` naming where and *why what when one is found, or when
 * the nesting passes MAX_CMD_DEPTH. */
static bool
find_bad_utf8(const bson_t *doc, int depth, char *path, size_t cap,
              bad_utf8_t *why)
{
   bson_iter_t it;
   *why = BAD_DEPTH;
   if (depth > MAX_CMD_DEPTH || !bson_iter_init(&it, doc)) {
      return false;
   }
   size_t mark = strlen(path);
   while (bson_iter_next(&it)) {
      const char *key = bson_iter_key(&it);
      path[mark] = '\0';
      if (!utf8_ok(key, strlen(key), false)) {
         *why = BAD_KEY;
         return false;
      }
      path_push(path, cap, key);
      uint32_t len = 0;
      bool ok = true;
      switch (bson_iter_type(&it)) {
      case BSON_TYPE_UTF8: {
         const char *v = bson_iter_utf8(&it, &len);
         ok = utf8_ok(v, len, true);
         break;
      }
      case BSON_TYPE_SYMBOL: {
         const char *v = bson_iter_symbol(&it, &len);
         ok = utf8_ok(v, len, true);
         break;
      }
      case BSON_TYPE_CODE: {
         const char *v = bson_iter_code(&it, &len);
         ok = utf8_ok(v, len, true);
         break;
      }
      case BSON_TYPE_CODEWSCOPE: {
         uint32_t slen;
         const uint8_t *sdata;
         const char *v = bson_iter_codewscope(&it, &len, &slen, &sdata);
         bson_t scope;
         ok = utf8_ok(v, len, true);
         if (ok && bson_init_static(&scope, sdata, slen)) {
            if (!find_bad_utf8(&scope, depth + 1, path, cap, why)) {
               return false;
            }
         }
         break;
      }
      case BSON_TYPE_REGEX: {
         const char *opts;
         const char *v = bson_iter_regex(&it, &opts);
         ok = utf8_ok(v, strlen(v), false) && utf8_ok(opts, strlen(opts), false);
         break;
      }
      case BSON_TYPE_DBPOINTER: {
         const char *coll;
         const bson_oid_t *oid;
         bson_iter_dbpointer(&it, &len, &coll, &oid);
         ok = utf8_ok(coll, len, false);
         break;
      }
      case BSON_TYPE_DOCUMENT:
      case BSON_TYPE_ARRAY: {
         const uint8_t *data;
         bson_t sub;
         if (bson_iter_type(&it) == BSON_TYPE_DOCUMENT) {
            bson_iter_document(&it, &len, &data);
         } else {
            bson_iter_array(&it, &len, &data);
         }
         if (bson_init_static(&sub, data, len) &&
             !find_bad_utf8(&sub, depth + 1, path, cap, why)) {
            return false;
         }
         break;
      }
      default:
         break;
      }
      if (!ok) {
         *why = BAD_STRING;
         return false;
      }
   }
   path[mark] = '\0';
   return true;
}

bool
aspen__cmd_check_utf8(const char *name, const bson_t *cmd, bson_t *reply)
{
   char path[256] = "";
   bad_utf8_t why;
   if (!find_bad_utf8(cmd, 0, path, sizeof path, &why)) {
      if (why == BAD_KEY) {
         aspen_reply_error(reply, ASPEN_ERR_InvalidBSON,
                           "%s: a field name%s%s is not valid UTF-8", name,
                           *path ? " under " : "", path);
      } else if (why == BAD_STRING) {
         aspen_reply_error(reply, ASPEN_ERR_InvalidBSON,
                           "%s: BSON field '%s' holds a string that is not "
                           "valid UTF-8",
                           name, path);
      } else {
         aspen_reply_error(reply, ASPEN_ERR_InvalidBSON,
                           "%s: the command is nested more than %d levels deep",
                           name, MAX_CMD_DEPTH);
      }
      return false;
   }
   return true;
}

int64_t
aspen__cmd_added_parallelism(const bson_t *pipeline)
{
   bson_iter_t it, st, arg;
   int64_t added = 0;
   if (!bson_iter_init(&it, pipeline)) {
      return 0;
   }
   while (bson_iter_next(&it)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &st) ||
          !bson_iter_next(&st) || !BSON_ITER_HOLDS_DOCUMENT(&st) ||
          !bson_iter_recurse(&st, &arg) ||
          !bson_iter_find(&arg, "parallelism") ||
          !BSON_ITER_HOLDS_NUMBER(&arg)) {
         continue;
      }
      int64_t p = bson_iter_as_int64(&arg);
      if (p > 1) {
         added += p - 1;
      }
   }
   return added;
}
