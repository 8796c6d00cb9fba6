/*
 * cursor_owners.c - who opened each forwarded cursor.
 *
 * Every forwarded command runs on the backend as aspen's one backend user,
 * so the backend cannot tell aspen's users apart: any of them could
 * continue (getMore) or kill (killCursors) a cursor another one opened,
 * given its id. mongod ties each cursor to the user that opened it (and to
 * the client session, lsid, it was opened in); this file does the same for
 * the cursors aspen forwards. When a forwarded reply carries a cursor
 * (cursor.id != 0, cursor.ns) the cursor is remembered with its owner:
 * mongod's user digest (SHA-256 of "user@db") and the lsid's id. A getMore
 * is then refused, with mongod's codes and messages, unless it comes from
 * the same user in the same session (no lsid on either side: the same
 * user) on the same namespace; a killCursors naming another user's cursor
 * is refused whole, as mongod's authorization check does.
 *
 * A cursor is forgotten when a reply says it ended (a getMore returning
 * id 0 or CursorNotFound, killCursors' cursorsKilled / cursorsNotFound).
 * As on mongod, cursors outlive the connection and a logout: the owner may
 * go on from another connection. The table is a hash on the cursor id,
 * bounded (CURSORS_MAX); when it is full the cursor used least recently is
 * forgotten, and a getMore of a cursor aspen does not know answers
 * CursorNotFound rather than reaching the backend, so nobody can use a
 * cursor aspen cannot vouch for.
 *
 * Only with access control on: without it every client is the same user.
 * Loop thread only.
 */
#include "auth.h"

#include <inttypes.h>
#include <string.h>

#define COMPONENT "ACCESS"
#define CURSORS_MAX 65536
#define CURSOR_BUCKETS 8192 /* a power of two */

typedef struct cursor_rec {
   int64_t id;
   uint8_t uid[ASPEN_USER_DIGEST_LEN];
   bool has_lsid;
   uint8_t lsid[16];
   char *ns;                         /* "db.coll" from the reply, or NULL */
   struct cursor_rec *next;          /* in its bucket */
   struct cursor_rec *older, *newer; /* use order */
} cursor_rec_t;

static cursor_rec_t *buckets[CURSOR_BUCKETS];
static cursor_rec_t *oldest, *newest;
static size_t n_cursors;

static size_t
bucket_of(int64_t id)
{
   uint64_t h = (uint64_t) id * UINT64_C(0x9E3779B97F4A7C15);
   return (size_t) (h >> 51) & (CURSOR_BUCKETS - 1);
}

static void
lru_unlink(cursor_rec_t *c)
{
   *(c->older ? &c->older->newer : &oldest) = c->newer;
   *(c->newer ? &c->newer->older : &newest) = c->older;
   c->older = c->newer = NULL;
}

static void
lru_push(cursor_rec_t *c)
{
   c->older = newest;
   c->newer = NULL;
   *(newest ? &newest->newer : &oldest) = c;
   newest = c;
}

static cursor_rec_t *
find(int64_t id)
{
   for (cursor_rec_t *c = buckets[bucket_of(id)]; c; c = c->next) {
      if (c->id == id) {
         return c;
      }
   }
   return NULL;
}

static void
forget(int64_t id)
{
   cursor_rec_t **pp = &buckets[bucket_of(id)];
   while (*pp && (*pp)->id != id) {
      pp = &(*pp)->next;
   }
   cursor_rec_t *c = *pp;
   if (!c) {
      return;
   }
   *pp = c->next;
   lru_unlink(c);
   free(c->ns);
   free(c);
   n_cursors--;
}

static void
remember(int64_t id, const aspen_cursor_owner_t *o, const char *ns)
{
   cursor_rec_t *c = find(id);
   if (c && id == o->get_more_id) {
      /* A getMore's reply: the same cursor, used again. */
      lru_unlink(c);
      lru_push(c);
      return;
   }
   if (c) {
      /* A new cursor with the id of one that ended unseen (timed out on
       * the server): the new one is what the id means now. */
      forget(id);
   }
   if (n_cursors >= CURSORS_MAX) {
      aspen_logf(ASPEN_LOG_INFO, COMPONENT, "cursors",
                 "%d forwarded cursors open: forgetting the least recently "
                 "used one (%" PRId64 "); its getMores now fail",
                 CURSORS_MAX, oldest->id);
      forget(oldest->id);
   }
   c = aspen_xcalloc(1, sizeof *c);
   c->id = id;
   memcpy(c->uid, o->uid, sizeof c->uid);
   c->has_lsid = o->has_lsid;
   memcpy(c->lsid, o->lsid, sizeof c->lsid);
   c->ns = ns ? aspen_xstrdup(ns) : NULL;
   size_t b = bucket_of(id);
   c->next = buckets[b];
   buckets[b] = c;
   lru_push(c);
   n_cursors++;
}

/* The lsid's id when it is the 16-byte UUID drivers send. */
static bool
lsid_id(const bson_t *cmd, uint8_t out[16])
{
   bson_iter_t it, id;
   if (!bson_iter_init_find(&it, cmd, "lsid") ||
       !BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &id) ||
       !bson_iter_find(&id, "id") || !BSON_ITER_HOLDS_BINARY(&id)) {
      return false;
   }
   bson_subtype_t sub;
   uint32_t len;
   const uint8_t *data;
   bson_iter_binary(&id, &sub, &len, &data);
   if (len != 16) {
      return false;
   }
   memcpy(out, data, 16);
   return true;
}

/* A cursor id: getMore's value, or an element of killCursors' list. */
static bool
cursor_id_of(const bson_iter_t *it, int64_t *id)
{
   if (BSON_ITER_HOLDS_INT64(it) || BSON_ITER_HOLDS_INT32(it)) {
      *id = bson_iter_as_int64(it);
      return true;
   }
   return false;
}

void
aspen_cursor_owner_init(aspen_cursor_owner_t *o, const aspen_principal_t *p,
                        const char *name, const bson_t *cmd)
{
   memset(o, 0, sizeof *o);
   if (!p) {
      return;
   }
   o->track = true;
   memcpy(o->uid, aspen_principal_uid(p), sizeof o->uid);
   o->has_lsid = lsid_id(cmd, o->lsid);
   bson_iter_t it;
   if (strcmp(name, "getMore") == 0 && bson_iter_init(&it, cmd) &&
       bson_iter_next(&it)) {
      (void) cursor_id_of(&it, &o->get_more_id);
   }
}

/* mongod's rendering of a session in messages: "<uuid> - <user digest,
 * base64> -  - ", or "none". */
static void
session_text(bool has_lsid, const uint8_t lsid[16], const uint8_t *uid,
             char *out, size_t size)
{
   if (!has_lsid) {
      snprintf(out, size, "none");
      return;
   }
   char b64[64];
   aspen_scram_b64_encode(uid, ASPEN_USER_DIGEST_LEN, b64, sizeof b64);
   snprintf(out, size,
            "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
            "%02x%02x%02x%02x%02x%02x - %s -  - ",
            lsid[0], lsid[1], lsid[2], lsid[3], lsid[4], lsid[5], lsid[6],
            lsid[7], lsid[8], lsid[9], lsid[10], lsid[11], lsid[12],
            lsid[13], lsid[14], lsid[15], b64);
}

/* getMore: the cursor must be known, opened in the same session (which,
 * as on mongod, includes the user) or, with no session on either side, by
 * the same user, on the namespace the getMore names. */
static bool
check_get_more(const aspen_cursor_owner_t *o, const bson_t *cmd,
               const char *db, aspen_error_t *err)
{
   if (!o->get_more_id) {
      return true; /* not a cursor id: the backend refuses it */
   }
   const cursor_rec_t *c = find(o->get_more_id);
   if (!c) {
      aspen_error_set(err, ASPEN_ERR_CursorNotFound,
                      "cursor id %" PRId64 " not found", o->get_more_id);
      return false;
   }
   bool same_user = memcmp(c->uid, o->uid, sizeof c->uid) == 0;
   if (c->has_lsid || o->has_lsid) {
      if (!c->has_lsid || !o->has_lsid || !same_user ||
          memcmp(c->lsid, o->lsid, sizeof c->lsid) != 0) {
         char was[160], now[160];
         session_text(c->has_lsid, c->lsid, c->uid, was, sizeof was);
         session_text(o->has_lsid, o->lsid, o->uid, now, sizeof now);
         aspen_error_set(err, ASPEN_ERR_Unauthorized,
                         "Cursor session id (%s) is not the same as the "
                         "operation context's session id (%s)",
                         was, now);
         return false;
      }
   } else if (!same_user) {
      aspen_error_set(err, ASPEN_ERR_Unauthorized,
                      "cursor id %" PRId64
                      " was not created by the authenticated user",
                      o->get_more_id);
      return false;
   }
   bson_iter_t it;
   const char *coll = bson_iter_init_find(&it, cmd, "collection") &&
                            BSON_ITER_HOLDS_UTF8(&it)
                         ? bson_iter_utf8(&it, NULL)
                         : "";
   size_t dlen = strlen(db);
   if (c->ns && (strncmp(c->ns, db, dlen) != 0 || c->ns[dlen] != '.' ||
                 strcmp(c->ns + dlen + 1, coll) != 0)) {
      aspen_error_set(err, ASPEN_ERR_Unauthorized,
                      "Requested getMore on namespace '%s.%s', but cursor "
                      "belongs to a different namespace %s",
                      db, coll, c->ns);
      return false;
   }
   return true;
}

/* killCursors: every cursor named must be the user's (another user's
 * refuses the whole command, *foreign set). One aspen does not know
 * answers CursorNotFound: it never reaches the backend. */
static bool
check_kill(const aspen_cursor_owner_t *o, const bson_t *cmd,
           bool *foreign, aspen_error_t *err)
{
   bson_iter_t it, ids;
   if (!bson_iter_init_find(&it, cmd, "cursors") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &ids)) {
      return true; /* the backend refuses it */
   }
   while (bson_iter_next(&ids)) {
      int64_t id;
      if (!cursor_id_of(&ids, &id)) {
         continue;
      }
      const cursor_rec_t *c = find(id);
      if (!c) {
         aspen_error_set(err, ASPEN_ERR_CursorNotFound,
                         "cursor id %" PRId64 " not found", id);
         return false;
      }
      if (memcmp(c->uid, o->uid, sizeof c->uid) != 0) {
         *foreign = true;
         return false;
      }
   }
   return true;
}

bool
aspen_cursors_check(const aspen_cursor_owner_t *o, const char *name,
                    const bson_t *cmd, const char *db, bool *foreign,
                    aspen_error_t *err)
{
   *foreign = false;
   if (!o->track) {
      return true;
   }
   if (strcmp(name, "getMore") == 0) {
      return check_get_more(o, cmd, db, err);
   }
   if (strcmp(name, "killCursors") == 0) {
      return check_kill(o, cmd, foreign, err);
   }
   return true;
}

/* Forgets every cursor id listed in reply field `key` (an array). */
static void
forget_listed(const bson_t *reply, const char *key)
{
   bson_iter_t it, ids;
   if (bson_iter_init_find(&it, reply, key) && BSON_ITER_HOLDS_ARRAY(&it) &&
       bson_iter_recurse(&it, &ids)) {
      while (bson_iter_next(&ids)) {
         int64_t id;
         if (cursor_id_of(&ids, &id)) {
            forget(id);
         }
      }
   }
}

void
aspen_cursors_note_reply(const aspen_cursor_owner_t *o, const bson_t *reply)
{
   bson_iter_t it, cur;
   if (!o->track) {
      return;
   }
   if (bson_iter_init_find(&it, reply, "ok") &&
       bson_iter_as_double(&it) != 1.0) {
      if (o->get_more_id && bson_iter_init_find(&it, reply, "code") &&
          bson_iter_as_int64(&it) == ASPEN_ERR_CursorNotFound) {
         forget(o->get_more_id);
      }
      return;
   }
   forget_listed(reply, "cursorsKilled");
   forget_listed(reply, "cursorsNotFound");
   if (!bson_iter_init_find(&it, reply, "cursor") ||
       !BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &cur)) {
      return;
   }
   int64_t id = 0;
   const char *ns = NULL;
   while (bson_iter_next(&cur)) {
      if (strcmp(bson_iter_key(&cur), "id") == 0) {
         (void) cursor_id_of(&cur, &id);
      } else if (strcmp(bson_iter_key(&cur), "ns") == 0 &&
                 BSON_ITER_HOLDS_UTF8(&cur)) {
         ns = bson_iter_utf8(&cur, NULL);
      }
   }
   if (id != 0) {
      remember(id, o, ns);
   } else if (o->get_more_id) {
      forget(o->get_more_id); /* exhausted */
   }
}

size_t
aspen__cursors_count(void)
{
   return n_cursors;
}
