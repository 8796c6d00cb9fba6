/*
 * aws.c - the AWS part of a connection's config entry and SigV4 signing of
 * libcurl requests (aws.h).
 *
 * An entry: {name, type, aws: {roleArn}, region, endpoint, credentials:
 * {accessKeyId, secretAccessKey, sessionToken}}. ASP connects to AWS by
 * assuming the IAM role aws.roleArn; locally there is no role to assume,
 * so aspen signs with the given keys (an emulator accepts any), and
 * `endpoint` points the requests at the emulator.
 */
#include "connectors/aws.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool
in_list(const char *k, const char *const *list)
{
   for (; list && *list; list++) {
      if (strcmp(k, *list) == 0) {
         return true;
      }
   }
   return false;
}

bool
aspen__aws_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry,
                 const char *const *extra, aspen_aws_t *aws,
                 bson_t *listed_aws, aspen_error_t *err)
{
   memset(aws, 0, sizeof *aws);
   bson_iter_t it, sub;
   char key[96];
   if (bson_iter_init_find(&it, entry, "aws")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.aws' must be an object", cfg->where);
         return false;
      }
      bson_iter_recurse(&it, &sub);
      while (bson_iter_next(&sub)) {
         const char *k = bson_iter_key(&sub);
         snprintf(key, sizeof key, "aws.%s", k);
         if (strcmp(k, "roleArn") == 0) {
            if (!aspen__conn_parse_string(&sub, cfg->where, key, &aws->role_arn, err)) {
               return false;
            }
         } else if (in_list(k, extra)) {
            if (listed_aws) {
               bson_append_iter(listed_aws, k, -1, &sub);
            }
         } else {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.aws.%s'", cfg->where, k);
            return false;
         }
      }
   }
   if (bson_iter_init_find(&it, entry, "region") &&
       !aspen__conn_parse_string(&it, cfg->where, "region", &aws->region, err)) {
      return false;
   }
   if (bson_iter_init_find(&it, entry, "endpoint") &&
       !aspen__conn_parse_url(&it, cfg->where, "endpoint", &aws->endpoint,
                              err)) {
      return false;
   }
   if (bson_iter_init_find(&it, entry, "credentials")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.credentials' must be an object",
                         cfg->where);
         return false;
      }
      bson_iter_recurse(&it, &sub);
      while (bson_iter_next(&sub)) {
         const char *k = bson_iter_key(&sub);
         char **slot = strcmp(k, "accessKeyId") == 0       ? &aws->access_key
                       : strcmp(k, "secretAccessKey") == 0 ? &aws->secret_key
                       : strcmp(k, "sessionToken") == 0
                          ? &aws->session_token
                          : NULL;
         snprintf(key, sizeof key, "credentials.%s", k);
         if (!slot) {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.credentials.%s'",
                            cfg->where, k);
            return false;
         }
         if (!aspen__conn_parse_string(&sub, cfg->where, key, slot, err)) {
            return false;
         }
      }
      if (!aws->access_key || !aws->secret_key) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.credentials' needs accessKeyId and "
                         "secretAccessKey",
                         cfg->where);
         return false;
      }
   } else {
      const char *id = getenv("AWS_ACCESS_KEY_ID");
      const char *secret = getenv("AWS_SECRET_ACCESS_KEY");
      const char *token = getenv("AWS_SESSION_TOKEN");
      if (id && *id && secret && *secret) {
         aws->access_key = aspen_xstrdup(id);
         aws->secret_key = aspen_xstrdup(secret);
         if (token && *token) {
            aws->session_token = aspen_xstrdup(token);
         }
      }
   }
   return true;
}

void
aspen__aws_cleanup(aspen_aws_t *aws)
{
   free(aws->role_arn);
   free(aws->region);
   free(aws->endpoint);
   free(aws->access_key);
   free(aws->secret_key);
   free(aws->session_token);
   memset(aws, 0, sizeof *aws);
}

void
aspen__aws_list(const aspen_aws_t *aws, const bson_t *listed_aws, bson_t *doc)
{
   if (aws->role_arn || (listed_aws && !bson_empty(listed_aws))) {
      bson_t sub;
      BSON_APPEND_DOCUMENT_BEGIN(doc, "aws", &sub);
      if (aws->role_arn) {
         BSON_APPEND_UTF8(&sub, "roleArn", aws->role_arn);
      }
      if (listed_aws) {
         bson_concat(&sub, listed_aws);
      }
      bson_append_document_end(doc, &sub);
   }
   if (aws->region) {
      BSON_APPEND_UTF8(doc, "region", aws->region);
   }
   if (aws->endpoint) {
      BSON_APPEND_UTF8(doc, "endpoint", aws->endpoint);
   }
   if (aws->access_key) {
      /* The key id is no secret (AWS shows it in consoles and logs). */
      bson_t sub;
      BSON_APPEND_DOCUMENT_BEGIN(doc, "credentials", &sub);
      BSON_APPEND_UTF8(&sub, "accessKeyId", aws->access_key);
      bson_append_document_end(doc, &sub);
   }
}

void
aspen__aws_base_url(const aspen_aws_t *aws, const char *service,
                    const char *region, char *out, size_t size)
{
   if (aws->endpoint) {
      snprintf(out, size, "%s", aws->endpoint);
   } else {
      snprintf(out, size, "https://%s.%s.amazonaws.com", service, region);
   }
}

void
aspen__aws_sha256_hex(const void *data, size_t len, char out[65])
{
   unsigned char md[32];
   unsigned int n = 0;
   EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
   for (unsigned int i = 0; i < 32; i++) {
      snprintf(out + 2 * i, 3, "%02x", md[i]);
   }
   out[64] = '\0';
}

bool
aspen__aws_sign(CURL *h, struct curl_slist **hdrs, const aspen_aws_t *aws,
                const char *service, const char *region,
                const char *payload_sha256, aspen_error_t *err)
{
   if (!aws->access_key || !aws->secret_key) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "no AWS credentials: give the connection "
                      "credentials {accessKeyId, secretAccessKey} or set "
                      "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
      return false;
   }
   char provider[160], line[4200];
   snprintf(provider, sizeof provider, "aws:amz:%s:%s", region, service);
   curl_easy_setopt(h, CURLOPT_AWS_SIGV4, provider);
   curl_easy_setopt(h, CURLOPT_USERNAME, aws->access_key);
   curl_easy_setopt(h, CURLOPT_PASSWORD, aws->secret_key);
   if (payload_sha256) {
      snprintf(line, sizeof line, "x-amz-content-sha256: %s", payload_sha256);
      *hdrs = curl_slist_append(*hdrs, line);
   }
   if (aws->session_token) {
      snprintf(line, sizeof line, "x-amz-security-token: %s",
               aws->session_token);
      *hdrs = curl_slist_append(*hdrs, line);
   }
   return true;
}
