/*
 * cmd_sp.c - the stream-processor commands mongosh's sp.* helpers send
 * (createStreamProcessor ... listStreamConnections). The proxy only routes
 * them: the engine does the work on the bridge thread, and the reply comes
 * back to this session asynchronously.
 */
#include "proxy_int.h"

static void
sp_done(void *arg, const bson_t *reply)
{
   aspen_session_t *sess = arg;
   aspen_session_reply(sess, reply);
   aspen_session_unref(sess);
}

aspen_handled_t
aspen_cmd_sp(aspen_request_t *req, bson_t *reply)
{
   if (!req->srv->bridge) {
      aspen_reply_error(reply, ASPEN_ERR_InternalError,
                        "the stream engine is not running");
      return ASPEN_HANDLED_REPLY;
   }
   aspen_session_ref(req->sess);
   aspen_bridge_submit(req->srv->bridge, req->name, req->cmd,
                       aspen_session_id(req->sess), sp_done, req->sess);
   return ASPEN_HANDLED_ASYNC;
}
