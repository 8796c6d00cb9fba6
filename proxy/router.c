/*
 * router.c - the command table (rows from commands.def, and the engine's
 * sp commands) and dispatch: a command aspen knows runs its local handler;
 * any other command is forwarded to the backing deployment. Before either
 * path, aspen_auth_check (cmd_auth.c) refuses commands the session is not
 * authenticated or authorized for; rows flagged NO_AUTH are always
 * allowed. A forwarded command's reply goes past cursor_owners.c, which
 * remembers whose each cursor is.
 */
#include "auth.h"
#include "upstream.h"

#include <stdlib.h>
#include <string.h>

static const aspen_command_t commands[] = {
#define ASPEN_COMMAND(n, fn, fl) {n, fn, fl},
#include "commands.def"
#undef ASPEN_COMMAND
};

/* Every sp command the engine answers (aspen_engine_command_find) runs
 * there, through cmd_sp.c. */
static const aspen_command_t sp_row = {"(an sp command)", aspen_cmd_sp,
                                       ASPEN_CMD_LOCAL};

const aspen_command_t *
aspen_router_find(const char *name)
{
   for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
      if (strcmp(commands[i].name, name) == 0) {
         return &commands[i];
      }
   }
   return aspen_engine_command_find(name) ? &sp_row : NULL;
}

/* A command on its way to the backend: its session, and who sent it (the
 * cursor its reply may open is theirs: cursor_owners.c). */
typedef struct {
   aspen_session_t *sess;
   aspen_cursor_owner_t owner;
   unsigned txn_kind; /* aspen_upstream_txn_kind */
} forward_t;

static void
forward_done(void *arg, const bson_t *reply)
{
   forward_t *f = arg;
   aspen_cursors_note_reply(&f->owner, reply);
   /* aspen's own error for a lost backend connection gets a mongos's
    * labels, so the driver retries the write or the transaction. */
   bson_t labeled;
   if (aspen_upstream_error_labels(reply, f->txn_kind, &labeled)) {
      aspen_session_reply(f->sess, &labeled);
      bson_destroy(&labeled);
   } else {
      aspen_session_reply(f->sess, reply);
   }
   aspen_session_unref(f->sess);
   free(f);
}

static aspen_handled_t
forward(aspen_request_t *req, bson_t *reply)
{
   if (!req->srv->backend) {
      aspen_reply_error(reply, ASPEN_ERR_CommandNotSupported,
                        "aspen cannot run '%s': no backing MongoDB deployment "
                        "is configured (set --backend URI or backend.uri in "
                        "the config file)",
                        req->name);
      return ASPEN_HANDLED_REPLY;
   }
   bson_iter_t it;
   bson_t lsid;
   const bson_t *lsid_ptr = NULL;
   if (bson_iter_init_find(&it, req->cmd, "lsid") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&it, &len, &data);
      if (bson_init_static(&lsid, data, len)) {
         lsid_ptr = &lsid;
      }
   }
   /* One user's lsid never reaches another's backend session. */
   bson_t keyed;
   bool is_keyed = lsid_ptr && aspen_auth_session_key(req, lsid_ptr, &keyed);
   forward_t *f = aspen_xcalloc(1, sizeof *f);
   f->sess = req->sess;
   f->txn_kind = aspen_upstream_txn_kind(req->cmd, req->name);
   aspen_auth_cursor_owner(req, &f->owner);
   aspen_session_ref(req->sess);
   aspen_backend_forward(req->srv->backend, req, is_keyed ? &keyed : lsid_ptr,
                         forward_done, f);
   if (is_keyed) {
      bson_destroy(&keyed);
   }
   return ASPEN_HANDLED_ASYNC;
}

aspen_handled_t
aspen_router_dispatch(aspen_request_t *req, bson_t *reply)
{
   const aspen_command_t *row = aspen_router_find(req->name);
   if (aspen_log_enabled(ASPEN_LOG_DEBUG)) {
      aspen_logf(ASPEN_LOG_DEBUG, "COMMAND", NULL, "conn%llu %s %s.%s",
                 (unsigned long long) aspen_session_id(req->sess),
                 row ? "local" : "forward", req->db, req->name);
   }
   aspen_metrics_count_command(req->srv, req->name,
                               row && (row->flags & ASPEN_CMD_LOCAL));
   if (!aspen_auth_check(req, row, reply)) {
      return ASPEN_HANDLED_REPLY;
   }
   if (row && (row->flags & ASPEN_CMD_LOCAL)) {
      return row->handler(req, reply);
   }
   return forward(req, reply);
}
