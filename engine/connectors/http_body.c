/*
 * http_body.c - a response body libcurl writes into (http_body.h).
 */
#include "connectors/http_body.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

size_t
aspen__http_body_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
   aspen_http_body_t *b = arg;
   size_t n = size * nmemb;
   if (b->len + n > b->max) {
      b->too_big = true;
      return 0; /* aborts the transfer */
   }
   if (b->len + n + 1 > b->cap) {
      size_t cap = b->cap ? b->cap : 4096;
      while (cap < b->len + n + 1) {
         cap *= 2;
      }
      b->data = aspen_xrealloc(b->data, cap);
      b->cap = cap;
   }
   memcpy(b->data + b->len, ptr, n);
   b->len += n;
   b->data[b->len] = '\0';
   return n;
}

void
aspen__http_body_free(aspen_http_body_t *b)
{
   free(b->data);
   b->data = NULL;
   b->len = b->cap = 0;
   b->too_big = false;
}
