/*
 * principal.c - what an authenticated user may do (see auth.h): a
 * principal is a copy of the privileges its roles grant (roles.c), and
 * every command is checked against it before it runs or is forwarded
 * (aspen_principal_may_run). A command needs its actions on every
 * namespace it touches (a $merge target, a $lookup's `from`, both sides of
 * a rename, ...), the way mongod derives them: the command-privilege
 * table below says what each command needs, and the pipeline checks walk
 * every stage, nested ones included. An Atlas connection's role
 * (dbRoleToExecute) is a principal too, checked the same way for the
 * engine (users.c hands the engine that hook).
 *
 * Principals are copies, so the checks read nothing shared and may run on
 * any thread.
 */
#include "principal_int.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAME ASPEN_ROLES_MAX_NAME
#define BIT(a) ASPEN_ACTION_BIT(a)

/* ---- principals ------------------------------------------------------------- */

struct aspen_principal {
   char user[MAX_NAME];
   char db[MAX_NAME];
   uint8_t uid[ASPEN_USER_DIGEST_LEN]; /* SHA-256 of "user@db" */
   aspen_role_ref_t roles[ASPEN_ROLES_MAX_PER_USER];
   size_t n_roles;
   aspen_privs_t privs;
};

aspen_principal_t *
aspen__principal_new(const char *user, const char *db)
{
   aspen_principal_t *p = aspen_xcalloc(1, sizeof *p);
   snprintf(p->user, sizeof p->user, "%s", user);
   if (db) {
      snprintf(p->db, sizeof p->db, "%s", db);
      char key[2 * MAX_NAME + 2];
      int n = snprintf(key, sizeof key, "%s@%s", p->user, p->db);
      SHA256((const uint8_t *) key, (size_t) n, p->uid);
   }
   return p;
}

void
aspen__principal_set_roles(aspen_principal_t *p, const aspen_role_ref_t *refs,
                           size_t n)
{
   ASPEN_ASSERT(n <= ASPEN_ROLES_MAX_PER_USER);
   memcpy(p->roles, refs, n * sizeof *refs);
   p->n_roles = n;
}

bool
aspen__principal_grant(aspen_principal_t *p, const aspen_roles_t *roles,
                       const char *name, const char *role_db)
{
   return aspen__roles_grant(roles, name, role_db, &p->privs);
}

void
aspen_principal_destroy(aspen_principal_t *p)
{
   if (p) {
      free(p->privs.v);
      free(p);
   }
}

const char *
aspen_principal_user(const aspen_principal_t *p)
{
   return p->user;
}

const char *
aspen_principal_db(const aspen_principal_t *p)
{
   return p->db;
}

const uint8_t *
aspen_principal_uid(const aspen_principal_t *p)
{
   return p->uid;
}

static const char *
index_key(uint32_t i, char *buf, size_t size)
{
   const char *key;
   bson_uint32_to_string(i, &key, buf, size);
   return key;
}

void
aspen_principal_append_roles(const aspen_principal_t *p, bson_t *arr)
{
   for (size_t i = 0; i < p->n_roles; i++) {
      char buf[16];
      bson_t doc;
      BSON_APPEND_DOCUMENT_BEGIN(arr, index_key((uint32_t) i, buf, sizeof buf),
                                 &doc);
      BSON_APPEND_UTF8(&doc, "role", p->roles[i].role);
      BSON_APPEND_UTF8(&doc, "db", p->roles[i].db);
      bson_append_document_end(arr, &doc);
   }
}

void
aspen_principal_append_privileges(const aspen_principal_t *p, bson_t *arr)
{
   uint32_t k = 0;
   for (size_t i = 0; i < p->privs.n; i++) {
      const aspen_priv_t *pv = &p->privs.v[i];
      char buf[16];
      const char *key;
      bson_t doc, res, acts;
      key = index_key(k++, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(arr, key, &doc);
      BSON_APPEND_DOCUMENT_BEGIN(&doc, "resource", &res);
      if (pv->kind == ASPEN_RES_ANY) {
         BSON_APPEND_BOOL(&res, "anyResource", true);
      } else if (pv->kind == ASPEN_RES_CLUSTER) {
         BSON_APPEND_BOOL(&res, "cluster", true);
      } else {
         BSON_APPEND_UTF8(&res, "db", pv->db);
         BSON_APPEND_UTF8(&res, "collection", pv->coll);
      }
      bson_append_document_end(&doc, &res);
      BSON_APPEND_ARRAY_BEGIN(&doc, "actions", &acts);
      uint32_t n = 0;
      for (int a = 0; a < ASPEN_N_ACTIONS; a++) {
         if (pv->mask & (UINT64_C(1) << a)) {
            key = index_key(n++, buf, sizeof buf);
            BSON_APPEND_UTF8(&acts, key,
                             aspen_action_name((aspen_action_t) a));
         }
      }
      bson_append_array_end(&doc, &acts);
      bson_append_document_end(arr, &doc);
   }
}

/* ---- privilege checks ---------------------------------------------------- */

/* A resource a command touches: a namespace (db.coll; coll "" for the
 * database itself; db "" for every database, as a deployment-wide change
 * stream reads), the cluster, or every resource (what aspen asks for a
 * command it has no mapping for). Stream-processing actions are on the
 * workspace whatever the resource. */
typedef struct {
   aspen_res_kind_t kind;
   const char *db;
   const char *coll;
} res_t;

/* Whether privilege `pv`'s resource pattern covers `r` (mongod's rules). */
static bool
priv_matches(const aspen_priv_t *pv, const res_t *r)
{
   switch (pv->kind) {
   case ASPEN_RES_ANY:
      return true;
   case ASPEN_RES_CLUSTER:
      return r->kind == ASPEN_RES_CLUSTER;
   case ASPEN_RES_NS:
      break;
   }
   if (r->kind != ASPEN_RES_NS) {
      return false;
   }
   if (!r->db[0]) {
      return !pv->db[0] && !pv->coll[0];
   }
   if (pv->db[0] && strcmp(pv->db, r->db) != 0) {
      return false;
   }
   if (!r->coll[0]) {
      return !pv->coll[0];
   }
   return !pv->coll[0] || strcmp(pv->coll, r->coll) == 0;
}

static bool
allows(const aspen_principal_t *p, aspen_action_t a, const res_t *r)
{
   if (!p) {
      return false;
   }
   uint64_t bit = UINT64_C(1) << a;
   for (size_t i = 0; i < p->privs.n; i++) {
      const aspen_priv_t *pv = &p->privs.v[i];
      if (aspen__action_kind(a) == 'S') {
         /* The workspace: any privilege naming the action, or anyAction
          * on every resource. */
         if ((pv->mask & bit) ||
             ((pv->mask & BIT(anyAction)) && pv->kind == ASPEN_RES_ANY)) {
            return true;
         }
      } else if ((pv->mask & (bit | BIT(anyAction))) && priv_matches(pv, r)) {
         return true;
      }
   }
   return false;
}

/* mongod's names for resources in messages. */
static void
describe_resource(const res_t *r, aspen_action_t a, char *out, size_t size)
{
   if (aspen__action_kind(a) == 'S') {
      snprintf(out, size, "<stream processing workspace>");
   } else if (r->kind == ASPEN_RES_ANY) {
      snprintf(out, size, "<all resources>");
   } else if (r->kind == ASPEN_RES_CLUSTER) {
      snprintf(out, size, "<system resource>");
   } else if (!r->db[0]) {
      snprintf(out, size, "<all normal resources>");
   } else if (!r->coll[0]) {
      snprintf(out, size, "<database %s>", r->db);
   } else {
      snprintf(out, size, "<%s.%s>", r->db, r->coll);
   }
}

/* One check in progress: whose privileges, and the first one missing:
 * mongod's wording for the log, and "<action> on <namespace>" for the
 * engine's messages. */
typedef struct {
   const aspen_principal_t *p;
   char missing[ASPEN_ERROR_MSG_MAX]; /* "missing privilege for ..." */
   char missing_short[ASPEN_ERROR_MSG_MAX]; /* "find on b.c" */
} authz_t;

static bool
need(authz_t *az, aspen_action_t a, aspen_res_kind_t kind, const char *db,
     const char *coll)
{
   res_t r = {kind, db ? db : "", coll ? coll : ""};
   if (allows(az->p, a, &r)) {
      return true;
   }
   char res[2 * MAX_NAME + 32];
   describe_resource(&r, a, res, sizeof res);
   snprintf(az->missing, sizeof az->missing,
            "missing privilege for action %s on resource %s",
            aspen_action_name(a), res);
   if (kind == ASPEN_RES_NS && r.db[0]) {
      snprintf(az->missing_short, sizeof az->missing_short, "%s on %s%s%s%s",
               aspen_action_name(a), r.coll[0] ? "" : "database ", r.db,
               r.coll[0] ? "." : "", r.coll);
   } else {
      snprintf(az->missing_short, sizeof az->missing_short, "%s on %s",
               aspen_action_name(a),
               kind == ASPEN_RES_NS        ? "every database"
               : kind == ASPEN_RES_CLUSTER ? "the cluster"
                                           : "every resource");
   }
   return false;
}

/* Needs action `a` on db.coll (coll NULL or "": the database). */
#define NEED_NS(az, a, db, coll)                                               \
   need((az), ASPEN_ACTION_##a, ASPEN_RES_NS, (db), (coll))

/* What aspen asks for when it cannot tell which namespaces a command
 * touches: everything (atlasAdmin). Refusing is the safe side. */
static bool
need_everything(authz_t *az)
{
   return need(az, ASPEN_ACTION_anyAction, ASPEN_RES_ANY, NULL, NULL);
}

static bool
bool_field(const bson_t *doc, const char *key)
{
   bson_iter_t it;
   return bson_iter_init_find(&it, doc, key) && bson_iter_as_bool(&it);
}

/* A target namespace as pipeline stages name it: a collection name (in
 * `dflt_db`), or {<db_key>: db, <coll_key>: coll} (db defaulting to
 * `dflt_db`). *db and *coll point into the command. False when it is
 * neither. */
static bool
target_ns(const bson_iter_t *it, const char *db_key, const char *coll_key,
          const char *dflt_db, const char **db, const char **coll)
{
   bson_t doc;
   *db = dflt_db;
   *coll = NULL;
   if (BSON_ITER_HOLDS_UTF8(it)) {
      *coll = bson_iter_utf8(it, NULL);
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(it) || !aspen_bson_view(it, &doc)) {
      return false;
   }
   bson_iter_t f;
   if (bson_iter_init_find(&f, &doc, db_key)) {
      if (!BSON_ITER_HOLDS_UTF8(&f)) {
         return false;
      }
      *db = bson_iter_utf8(&f, NULL);
   }
   *coll = aspen_bson_utf8(&doc, coll_key);
   return *coll != NULL;
}

/* Needs what writing to db.coll the way $out, $merge and mapReduce write
 * requires: `acts` (a mask of ACTION bits), plus bypassDocumentValidation
 * when the command asks to bypass it. */
static bool
need_write(authz_t *az, uint64_t acts, bool bypass, const char *db,
           const char *coll)
{
   if (bypass) {
      acts |= BIT(bypassDocumentValidation);
   }
   for (int a = 0; a < ASPEN_N_ACTIONS; a++) {
      if ((acts & (UINT64_C(1) << a)) &&
          !need(az, (aspen_action_t) a, ASPEN_RES_NS, db, coll)) {
         return false;
      }
   }
   return true;
}

/* mongod's limit on nested sub-pipelines ($lookup, $unionWith, $facet). */
#define MAX_PIPELINE_DEPTH 20

static bool check_stages(authz_t *az, const bson_iter_t *pipeline,
                         const char *db, bool bypass, int depth);

/* The privileges stage `name` (argument `arg`) needs beyond reading its
 * input, in a pipeline whose namespaces default to database `db`. */
static bool
check_stage(authz_t *az, const char *name, const bson_iter_t *arg,
            const char *db, bool bypass, int depth)
{
   const char *tdb, *tcoll;
   bson_t spec;
   bson_iter_t it;
   if (strcmp(name, "$out") == 0) {
      /* "coll" or {db, coll, timeseries?}: the collection is replaced. */
      if (!target_ns(arg, "db", "coll", db, &tdb, &tcoll)) {
         return need_everything(az);
      }
      return need_write(az, BIT(insert) | BIT(remove), bypass, tdb, tcoll);
   }
   if (strcmp(name, "$merge") == 0) {
      /* mongod's table: insert when unmatched documents are inserted (the
       * default), update unless matched ones fail the stage. */
      if (!aspen_bson_view(arg, &spec) ||
          !bson_iter_init_find(&it, &spec, "into") ||
          !target_ns(&it, "db", "coll", db, &tdb, &tcoll)) {
         return need_everything(az);
      }
      const char *wm = aspen_bson_utf8(&spec, "whenMatched");
      const char *wnm = aspen_bson_utf8(&spec, "whenNotMatched");
      uint64_t acts = 0;
      if (!wnm || strcmp(wnm, "insert") == 0) {
         acts |= BIT(insert);
      }
      if (!wm || strcmp(wm, "fail") != 0) {
         acts |= BIT(update);
      }
      return need_write(az, acts, bypass, tdb, tcoll);
   }
   if (strcmp(name, "$lookup") == 0 || strcmp(name, "$graphLookup") == 0) {
      /* {from: "coll" | {db, coll}, pipeline?} (no from: the pipeline
       * starts with $documents). The sub-pipeline runs in from's
       * database. */
      const char *fdb = db, *fcoll = NULL;
      if (!BSON_ITER_HOLDS_DOCUMENT(arg) || !aspen_bson_view(arg, &spec)) {
         return need_everything(az);
      }
      if (bson_iter_init_find(&it, &spec, "from") &&
          !target_ns(&it, "db", "coll", db, &fdb, &fcoll)) {
         return need_everything(az);
      }
      if (fcoll && !NEED_NS(az, find, fdb, fcoll)) {
         return false;
      }
      return !bson_iter_init_find(&it, &spec, "pipeline") ||
             check_stages(az, &it, fdb, bypass, depth + 1);
   }
   if (strcmp(name, "$unionWith") == 0) {
      /* "coll" or {coll?, pipeline?} (and Atlas Data Federation's db). */
      if (BSON_ITER_HOLDS_UTF8(arg)) {
         return NEED_NS(az, find, db, bson_iter_utf8(arg, NULL));
      }
      if (!BSON_ITER_HOLDS_DOCUMENT(arg) || !aspen_bson_view(arg, &spec)) {
         return need_everything(az);
      }
      const char *udb = db, *ucoll = NULL;
      if (bson_iter_init_find(&it, &spec, "db")) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            return need_everything(az);
         }
         udb = bson_iter_utf8(&it, NULL);
      }
      if (bson_iter_init_find(&it, &spec, "coll")) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            return need_everything(az);
         }
         ucoll = bson_iter_utf8(&it, NULL);
         if (!NEED_NS(az, find, udb, ucoll)) {
            return false;
         }
      }
      return !bson_iter_init_find(&it, &spec, "pipeline") ||
             check_stages(az, &it, udb, bypass, depth + 1);
   }
   if (strcmp(name, "$facet") == 0) {
      if (!aspen_bson_view(arg, &spec) || !BSON_ITER_HOLDS_DOCUMENT(arg) ||
          !bson_iter_init(&it, &spec)) {
         return need_everything(az);
      }
      while (bson_iter_next(&it)) {
         if (!check_stages(az, &it, db, bypass, depth + 1)) {
            return false;
         }
      }
      return true;
   }
   /* aspen runs every command as one backend user, so the "own" operations
    * and sessions these list are everyone's: they need the privilege to
    * see all of them. */
   if (strcmp(name, "$currentOp") == 0) {
      return need(az, ASPEN_ACTION_inprog, ASPEN_RES_CLUSTER, NULL, NULL);
   }
   if (strcmp(name, "$listSessions") == 0 ||
       strcmp(name, "$listLocalSessions") == 0) {
      return need(az, ASPEN_ACTION_listSessions, ASPEN_RES_CLUSTER, NULL, NULL);
   }
   return true; /* the other stages only transform their input */
}

/* Checks every stage of the pipeline array `arr`, whose namespaces
 * default to database `db`. */
static bool
check_stage_list(authz_t *az, const bson_t *arr, const char *db, bool bypass,
                 int depth)
{
   bson_iter_t st, k;
   if (depth > MAX_PIPELINE_DEPTH || !bson_iter_init(&st, arr)) {
      return need_everything(az);
   }
   while (bson_iter_next(&st)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&st) || !bson_iter_recurse(&st, &k) ||
          !bson_iter_next(&k)) {
         continue; /* the server refuses it before running anything */
      }
      if (!check_stage(az, bson_iter_key(&k), &k, db, bypass, depth)) {
         return false;
      }
   }
   return true;
}

/* The same for a pipeline field (`pipeline`: an iterator on it), which
 * must be an array. */
static bool
check_stages(authz_t *az, const bson_iter_t *pipeline, const char *db,
             bool bypass, int depth)
{
   bson_t arr;
   if (!BSON_ITER_HOLDS_ARRAY(pipeline) || !aspen_bson_view(pipeline, &arr)) {
      return need_everything(az);
   }
   return check_stage_list(az, &arr, db, bypass, depth);
}

/* The first stage's name of a pipeline (iterator on the array), or "". */
static const char *
first_stage(const bson_iter_t *pipeline, bson_iter_t *arg)
{
   bson_iter_t st;
   if (BSON_ITER_HOLDS_ARRAY(pipeline) && bson_iter_recurse(pipeline, &st) &&
       bson_iter_next(&st) && BSON_ITER_HOLDS_DOCUMENT(&st) &&
       bson_iter_recurse(&st, arg) && bson_iter_next(arg)) {
      return bson_iter_key(arg);
   }
   return "";
}

/* An aggregation on db.coll (coll NULL: `aggregate: 1`): reading its
 * input, as its first stage decides, then every stage's own needs. */
static bool
check_pipeline(authz_t *az, const char *db, const char *coll,
               const bson_iter_t *pipeline, bool bypass)
{
   bson_iter_t arg;
   const char *first = first_stage(pipeline, &arg);
   if (strcmp(first, "$changeStream") == 0) {
      /* A collection, a database (aggregate: 1), or the whole deployment
       * (allChangesForCluster on admin): changeStream + find on it. */
      bson_t opts;
      bool cluster = aspen_bson_view(&arg, &opts) &&
                     BSON_ITER_HOLDS_DOCUMENT(&arg) &&
                     bool_field(&opts, "allChangesForCluster");
      const char *wdb = cluster ? NULL : db;
      const char *wcoll = cluster ? NULL : coll;
      if (!NEED_NS(az, changeStream, wdb, wcoll) ||
          !NEED_NS(az, find, wdb, wcoll)) {
         return false;
      }
   } else if (strcmp(first, "$collStats") == 0) {
      if (!NEED_NS(az, collStats, db, coll)) {
         return false;
      }
   } else if (strcmp(first, "$indexStats") == 0) {
      if (!NEED_NS(az, indexStats, db, coll)) {
         return false;
      }
   } else if (strcmp(first, "$documents") != 0 &&
              strcmp(first, "$currentOp") != 0 &&
              strcmp(first, "$listSessions") != 0 &&
              strcmp(first, "$listLocalSessions") != 0) {
      /* Stages that read no collection aside, the input is read. */
      if (!NEED_NS(az, find, db, coll)) {
         return false;
      }
   }
   return check_stages(az, pipeline, db, bypass, 0);
}

/* ---- what each command needs -------------------------------------------- */

/* The collection a command's first value names, or NULL (aggregate: 1,
 * a UUID, ...: then the database is the resource). */
static const char *
cmd_collection(const bson_t *cmd)
{
   bson_iter_t it;
   if (bson_iter_init(&it, cmd) && bson_iter_next(&it) &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return NULL;
}

/* Splits "db.coll" at its first dot into the two buffers; false when there
 * is no dot or a side is empty or too long. */
static bool
split_ns(const char *ns, char *db, char *coll)
{
   const char *dot = ns ? strchr(ns, '.') : NULL;
   if (!dot || dot == ns || !dot[1] || (size_t) (dot - ns) >= MAX_NAME ||
       strlen(dot + 1) >= MAX_NAME) {
      return false;
   }
   snprintf(db, MAX_NAME, "%.*s", (int) (dot - ns), ns);
   snprintf(coll, MAX_NAME, "%s", dot + 1);
   return true;
}

static bool
check_aggregate(authz_t *az, const bson_t *cmd, const char *db,
                const char *coll)
{
   bson_iter_t it;
   if (!bson_iter_init_find(&it, cmd, "pipeline")) {
      return NEED_NS(az, find, db, coll); /* the server refuses it */
   }
   return check_pipeline(az, db, coll, &it,
                         bool_field(cmd, "bypassDocumentValidation"));
}

/* insert, update, findAndModify: bypassDocumentValidation needs its own
 * action. */
static bool
check_bypass(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   return !bool_field(cmd, "bypassDocumentValidation") ||
          NEED_NS(az, bypassDocumentValidation, db, coll);
}

/* update: an upsert may insert. */
static bool
check_update(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   bson_iter_t it, u;
   if (bson_iter_init_find(&it, cmd, "updates") &&
       BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &u)) {
      while (bson_iter_next(&u)) {
         bson_t one;
         if (aspen_bson_view(&u, &one) && BSON_ITER_HOLDS_DOCUMENT(&u) &&
             bool_field(&one, "upsert")) {
            if (!NEED_NS(az, insert, db, coll)) {
               return false;
            }
            break;
         }
      }
   }
   return check_bypass(az, cmd, db, coll);
}

/* findAndModify: find, then remove, or update (+ insert for an upsert). */
static bool
check_find_and_modify(authz_t *az, const bson_t *cmd, const char *db,
                      const char *coll)
{
   if (bool_field(cmd, "remove")) {
      return NEED_NS(az, remove, db, coll);
   }
   return NEED_NS(az, update, db, coll) &&
          (!bool_field(cmd, "upsert") || NEED_NS(az, insert, db, coll)) &&
          check_bypass(az, cmd, db, coll);
}

/* create: a view needs what its pipeline on `viewOn` needs. */
static bool
check_create(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   (void) coll;
   bson_iter_t it;
   if (!bson_iter_init_find(&it, cmd, "viewOn")) {
      return true;
   }
   if (!BSON_ITER_HOLDS_UTF8(&it)) {
      return need_everything(az);
   }
   const char *view_on = bson_iter_utf8(&it, NULL);
   if (!bson_iter_init_find(&it, cmd, "pipeline")) {
      return NEED_NS(az, find, db, view_on);
   }
   return check_pipeline(az, db, view_on, &it, false);
}

/* mapReduce: out "coll" (replace) or {replace | merge | reduce: coll,
 * db?} writes there; {inline: 1} writes nothing. */
static bool
check_map_reduce(authz_t *az, const bson_t *cmd, const char *db,
                 const char *coll)
{
   (void) coll;
   bson_iter_t it, o;
   bool bypass = bool_field(cmd, "bypassDocumentValidation");
   if (!bson_iter_init_find(&it, cmd, "out")) {
      return true; /* the server refuses it */
   }
   if (BSON_ITER_HOLDS_UTF8(&it)) {
      return need_write(az, BIT(insert) | BIT(remove), bypass, db,
                        bson_iter_utf8(&it, NULL));
   }
   bson_t out;
   if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !aspen_bson_view(&it, &out) ||
       !bson_iter_init(&o, &out)) {
      return need_everything(az);
   }
   if (bson_has_field(&out, "inline")) {
      return true;
   }
   const char *odb = aspen_bson_utf8(&out, "db");
   while (bson_iter_next(&o)) {
      const char *k = bson_iter_key(&o);
      bool replace = strcmp(k, "replace") == 0;
      if (replace || strcmp(k, "merge") == 0 || strcmp(k, "reduce") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&o)) {
            return need_everything(az);
         }
         return need_write(az,
                           BIT(insert) | (replace ? BIT(remove) : BIT(update)),
                           bypass, odb ? odb : db, bson_iter_utf8(&o, NULL));
      }
   }
   return need_everything(az);
}

/* renameCollection (run on admin) {renameCollection: "a.x", to: "b.y",
 * dropTarget?}: within one database renameCollectionSameDB on it may do,
 * when the user can read the source or cannot read the target (so a
 * rename never makes readable what was not); otherwise find and
 * dropCollection on the source, insert and createIndex on the target
 * (and dropCollection there with dropTarget). mongod's rule. */
static bool
check_rename(authz_t *az, const bson_t *cmd, const char *db,
             const char *coll)
{
   (void) db;
   (void) coll;
   char sdb[MAX_NAME], scoll[MAX_NAME], tdb[MAX_NAME], tcoll[MAX_NAME];
   if (!split_ns(cmd_collection(cmd), sdb, scoll) ||
       !split_ns(aspen_bson_utf8(cmd, "to"), tdb, tcoll)) {
      return need_everything(az);
   }
   bson_iter_t it;
   bool drop_target = bson_iter_init_find(&it, cmd, "dropTarget") &&
                      (!BSON_ITER_HOLDS_BOOL(&it) || bson_iter_bool(&it));
   if (strcmp(sdb, tdb) == 0) {
      res_t dbres = {ASPEN_RES_NS, sdb, ""}, src = {ASPEN_RES_NS, sdb, scoll},
            dst = {ASPEN_RES_NS, tdb, tcoll};
      if (allows(az->p, ASPEN_ACTION_renameCollectionSameDB, &dbres) &&
          (!drop_target ||
           allows(az->p, ASPEN_ACTION_dropCollection, &dst)) &&
          (allows(az->p, ASPEN_ACTION_find, &src) ||
           !allows(az->p, ASPEN_ACTION_find, &dst))) {
         return true;
      }
   }
   return NEED_NS(az, find, sdb, scoll) &&
          NEED_NS(az, dropCollection, sdb, scoll) &&
          NEED_NS(az, insert, tdb, tcoll) &&
          NEED_NS(az, createIndex, tdb, tcoll) &&
          (!drop_target || NEED_NS(az, dropCollection, tdb, tcoll));
}

/* cloneCollectionAsCapped {cloneCollectionAsCapped: src, toCollection}:
 * find on the source, insert, createIndex and convertToCapped on the
 * copy. */
static bool
check_clone_capped(authz_t *az, const bson_t *cmd, const char *db,
                   const char *coll)
{
   (void) coll;
   const char *to = aspen_bson_utf8(cmd, "toCollection");
   if (!to) {
      return need_everything(az);
   }
   return NEED_NS(az, insert, db, to) && NEED_NS(az, createIndex, db, to) &&
          NEED_NS(az, convertToCapped, db, to);
}

/* getMore: find on the namespace of the cursor, named by `collection`
 * (aspen checks separately that the cursor is the user's, cmd_auth.c). */
static bool
check_get_more(authz_t *az, const bson_t *cmd, const char *db,
               const char *coll)
{
   (void) coll;
   return NEED_NS(az, find, db, aspen_bson_utf8(cmd, "collection"));
}

/* Scope of a command's resource: S the stream-processing workspace, C the
 * collection named by the command's value (or the database, when the value
 * is not a string), D the database, X the cluster, N nothing beyond an
 * authenticated session (and `extra`). `extra` checks what the command
 * touches besides (other namespaces, hidden writes). */
typedef bool (*extra_fn)(authz_t *az, const bson_t *cmd, const char *db,
                         const char *coll);

typedef struct {
   const char *name;
   char scope;
   aspen_action_t a[2];
   int n;
   extra_fn extra;
} need_t;

#define A(x) ASPEN_ACTION_##x
static const need_t needs[] = {
   /* ASP's stream commands (spec §9.1) are the engine's: sp_need. */
   /* Forwarded CRUD and catalog commands. */
   {"find", 'C', {A(find)}, 1, NULL},
   {"count", 'C', {A(find)}, 1, NULL},
   {"distinct", 'C', {A(find)}, 1, NULL},
   {"aggregate", 'C', {0}, 0, check_aggregate},
   {"getMore", 'N', {0}, 0, check_get_more},
   /* A user kills its own cursors with no privilege (cmd_auth.c refuses
    * another user's), as on mongod. */
   {"killCursors", 'N', {0}, 0, NULL},
   {"insert", 'C', {A(insert)}, 1, check_bypass},
   {"update", 'C', {A(update)}, 1, check_update},
   {"delete", 'C', {A(remove)}, 1, NULL},
   {"findAndModify", 'C', {A(find)}, 1, check_find_and_modify},
   {"findandmodify", 'C', {A(find)}, 1, check_find_and_modify},
   {"mapReduce", 'C', {A(find)}, 1, check_map_reduce},
   {"mapreduce", 'C', {A(find)}, 1, check_map_reduce},
   {"create", 'C', {A(createCollection)}, 1, check_create},
   {"drop", 'C', {A(dropCollection)}, 1, NULL},
   {"createIndexes", 'C', {A(createIndex)}, 1, NULL},
   {"dropIndexes", 'C', {A(dropIndex)}, 1, NULL},
   {"deleteIndexes", 'C', {A(dropIndex)}, 1, NULL},
   {"listIndexes", 'C', {A(listIndexes)}, 1, NULL},
   {"collStats", 'C', {A(collStats)}, 1, NULL},
   {"convertToCapped", 'C', {A(convertToCapped)}, 1, NULL},
   {"cloneCollectionAsCapped", 'C', {A(find)}, 1, check_clone_capped},
   {"renameCollection", 'N', {0}, 0, check_rename},
   {"dbStats", 'D', {A(dbStats)}, 1, NULL},
   {"listCollections", 'D', {A(listCollections)}, 1, NULL},
   {"dropDatabase", 'D', {A(dropDatabase)}, 1, NULL},
   {"listDatabases", 'X', {A(listDatabases)}, 1, NULL},
   /* aspen's own diagnostics, cluster-monitor privileges as on mongod. */
   {"getCmdLineOpts", 'X', {A(getCmdLineOpts)}, 1, NULL},
   {"getLog", 'X', {A(getLog)}, 1, NULL},
   {"getParameter", 'X', {A(getParameter)}, 1, NULL},
   {"hostInfo", 'X', {A(hostInfo)}, 1, NULL},
   {"serverStatus", 'X', {A(serverStatus)}, 1, NULL},
   /* Commands mongod runs for any authenticated user. */
   {"commitTransaction", 'N', {0}, 0, NULL},
   {"abortTransaction", 'N', {0}, 0, NULL},
   {"startSession", 'N', {0}, 0, NULL},
   {"getLastError", 'N', {0}, 0, NULL},
   {"resetError", 'N', {0}, 0, NULL},
   {"listCommands", 'N', {0}, 0, NULL},
};

/* What an sp command needs (spec §9.1), from the engine's command table:
 * its privilege action, and sampleStreamProcessor too when it reads the
 * processor's output (sp.process). An action aspen does not know needs
 * everything (never nothing). NULL when `name` is no sp command. */
static const need_t *
sp_need(const char *name, need_t *out)
{
   const aspen_engine_command_t *c = aspen_engine_command_find(name);
   if (!c) {
      return NULL;
   }
   *out = (need_t){.name = c->name, .scope = 'S'};
   if (!aspen_action_parse(c->action, &out->a[0])) {
      out->a[0] = A(anyAction);
   }
   out->n = 1;
   if (c->flags & ASPEN_ENGINE_CMD_SAMPLES) {
      out->a[out->n++] = A(sampleStreamProcessor);
   }
   return out;
}
#undef A

bool
aspen_principal_may_run(const aspen_principal_t *p, const char *name,
                        const bson_t *cmd, const char *db, bool forwarded,
                        aspen_error_t *err, char *why, size_t why_len)
{
   bson_iter_t it;
   authz_t az = {.p = p};
   if (why && why_len) {
      why[0] = '\0';
   }
   if (strcmp(name, "explain") == 0 && bson_iter_init(&it, cmd) &&
       bson_iter_next(&it) && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      /* explain needs what the explained command needs. */
      bson_t inner;
      bson_iter_t k;
      if (aspen_bson_view(&it, &inner) && bson_iter_init(&k, &inner) &&
          bson_iter_next(&k) && strcmp(bson_iter_key(&k), "explain") != 0) {
         if (aspen_principal_may_run(p, bson_iter_key(&k), &inner, db,
                                     forwarded, err, why, why_len)) {
            return true;
         }
         if (err->code == ASPEN_ERR_Unauthorized) {
            /* The command sent was the explain. */
            aspen__auth_refuse_command(cmd, db, err);
         }
         return false;
      }
   }
   need_t sp;
   const need_t *need_row = sp_need(name, &sp);
   for (size_t i = 0; !need_row && i < sizeof needs / sizeof needs[0]; i++) {
      if (strcmp(needs[i].name, name) == 0) {
         need_row = &needs[i];
         break;
      }
   }
   bool ok = true;
   if (!need_row) {
      /* aspen's own informational commands need only a login; a forwarded
       * command aspen has no mapping for needs everything. */
      ok = !forwarded || need_everything(&az);
   } else {
      const char *coll = need_row->scope == 'C' ? cmd_collection(cmd) : NULL;
      for (int i = 0; ok && i < need_row->n; i++) {
         aspen_action_t a = need_row->a[i];
         switch (need_row->scope) {
         case 'X':
            ok = need(&az, a, ASPEN_RES_CLUSTER, NULL, NULL);
            break;
         case 'S':
            ok = need(&az, a, ASPEN_RES_ANY, NULL, NULL);
            break;
         default:
            ok = need(&az, a, ASPEN_RES_NS, db, coll);
            break;
         }
      }
      if (ok && need_row->extra) {
         ok = need_row->extra(&az, cmd, db, coll);
      }
   }
   if (ok) {
      return true;
   }
   if (why && why_len) {
      snprintf(why, why_len, "%s", az.missing);
   }
   if (need_row && need_row->scope == 'S') {
      /* ASP's message for its own commands. */
      aspen_error_set(err, ASPEN_ERR_Unauthorized, "not authorized: %s",
                      az.missing);
   } else {
      aspen__auth_refuse_command(cmd, db, err);
   }
   return false;
}

bool
aspen__principal_allows_ns(const aspen_principal_t *p, aspen_action_t a,
                           const char *db, const char *coll)
{
   res_t r = {ASPEN_RES_NS, db ? db : "", coll ? coll : ""};
   return allows(p, a, &r);
}

bool
aspen__principal_may_run_stages(const aspen_principal_t *p, const char *db,
                                const bson_t *pipeline, char *why,
                                size_t why_len)
{
   authz_t az = {.p = p};
   if (check_stage_list(&az, pipeline, db, false, 0)) {
      return true;
   }
   snprintf(why, why_len, "%s", az.missing_short);
   return false;
}
