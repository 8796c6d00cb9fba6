/*
 * http_easy.h - one libcurl transfer that does not hold a processor's
 * thread past a stop: what the connectors that ask an HTTP peer one
 * question at a time use (the Schema Registry client, Kinesis calls, the
 * object stores' start probe) in place of curl_easy_perform, whose wait
 * nothing but the transfer's own timeouts can end. The transfer runs on a
 * multi handle, waited on in short slices; between slices the caller's
 * stop test is asked, and a stop abandons the transfer at once. The
 * transfer's timeouts (CURLOPT_TIMEOUT_MS, ...) bound it as before.
 * Internal to connectors/.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_HTTP_EASY_H
#define ASPEN_ENGINE_CONNECTORS_HTTP_EASY_H

#include <curl/curl.h>
#include <stdbool.h>

/* The longest wait between two looks at the stop test (ms). */
#define ASPEN_HTTP_EASY_SLICE_MS 100

/* Performs the transfer `easy` is set up for, as curl_easy_perform would,
 * through `multi` (the caller's, so that its connections are kept for the
 * next transfer; NULL: a multi handle of its own for this transfer). Asks
 * `stop(arg)` (NULL: never stops) before each wait: when it says true, the
 * transfer is abandoned and the result is CURLE_ABORTED_BY_CALLBACK. The
 * easy handle is the caller's, out of `multi` again on return. Returns the
 * transfer's result. The calling thread's, any. */
CURLcode aspen__http_easy_perform(CURLM *multi, CURL *easy,
                                  bool (*stop)(void *), void *arg);

/* A stop test for aspen__http_easy_perform on a processor's thread: true
 * once the processor is asked to stop (aspen_expr_stop_requested). */
bool aspen__http_easy_stop_requested(void *unused);

#endif /* ASPEN_ENGINE_CONNECTORS_HTTP_EASY_H */
