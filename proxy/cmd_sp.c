/*
 * cmd_sp.c - the stream-processor commands mongosh's sp.* helpers send
 * (createStreamProcessor ... listStreamConnections). The proxy only routes
 * them: the engine does the work on the bridge thread, and the reply comes
 * back to this session asynchronously. Once the reply is back, cmd_auth.c
 * audits management commands with their outcome and notes who started each
 * sp.process processor.
 */
#include "auth.h"

#include <stdlib.h>

typedef struct {
   aspen_session_t *sess;
   aspen_server_t *srv;
   char op[64];      /* the command name */
   char *target;     /* the processor name, or NULL */
} sp_call_t;

static void
sp_done(void *arg, const bson_t *reply)
{
   sp_call_t *call = arg;
   aspen_auth_sp_done(call->srv, call->sess, call->op, call->target, reply);
   aspen_session_reply(call->sess, reply);
   aspen_session_unref(call->sess);
   free(call->target);
   free(call);
}

aspen_handled_t
aspen_cmd_sp(aspen_request_t *req, bson_t *reply)
{
   if (!req->srv->bridge) {
      aspen_reply_error(reply, ASPEN_ERR_InternalError,
                        "the stream engine is not running");
      return ASPEN_HANDLED_REPLY;
   }
   sp_call_t *call = aspen_xcalloc(1, sizeof *call);
   bson_iter_t it;
   call->sess = req->sess;
   call->srv = req->srv;
   snprintf(call->op, sizeof call->op, "%s", req->name);
   if (bson_iter_init(&it, req->cmd) && bson_iter_next(&it) &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      call->target = aspen_xstrdup(bson_iter_utf8(&it, NULL));
   }
   aspen_session_ref(req->sess);
   aspen_bridge_submit(req->srv->bridge, req->name, req->cmd,
                       aspen_session_id(req->sess), sp_done, call);
   return ASPEN_HANDLED_ASYNC;
}
