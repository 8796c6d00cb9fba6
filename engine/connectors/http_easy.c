/*
 * http_easy.c - one libcurl transfer waited on in slices, so that a stop
 * ends the wait (http_easy.h).
 */
#include "connectors/http_easy.h"
#include "lang/expr.h"

CURLcode
aspen__http_easy_perform(CURLM *multi, CURL *easy, bool (*stop)(void *),
                         void *arg)
{
   CURLM *own = NULL;
   if (!multi && !(multi = own = curl_multi_init())) {
      return CURLE_OUT_OF_MEMORY;
   }
   if (curl_multi_add_handle(multi, easy) != CURLM_OK) {
      curl_multi_cleanup(own);
      return CURLE_FAILED_INIT;
   }
   CURLcode rc = CURLE_ABORTED_BY_CALLBACK;
   for (;;) {
      int running = 0, left = 0;
      bool done = false;
      CURLMsg *msg;
      if (curl_multi_perform(multi, &running) != CURLM_OK) {
         rc = CURLE_FAILED_INIT;
         break;
      }
      while ((msg = curl_multi_info_read(multi, &left))) {
         if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
            rc = msg->data.result;
            done = true;
         }
      }
      if (done || (stop && stop(arg))) {
         break;
      }
      curl_multi_poll(multi, NULL, 0, ASPEN_HTTP_EASY_SLICE_MS, NULL);
   }
   curl_multi_remove_handle(multi, easy);
   if (own) {
      curl_multi_cleanup(own);
   }
   return rc;
}

bool
aspen__http_easy_stop_requested(void *unused)
{
   (void) unused;
   return aspen_expr_stop_requested();
}
