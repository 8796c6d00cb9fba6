/*
 * conn_azure_blob.c - the Azure Blob Storage connection kind: its config
 * entry ({name, type: "azure-blob", azure: {storageAccountName,
 * servicePrincipalId}} as ASP's, plus aspen's `endpoint` (the blob service
 * URL of an emulator such as Azurite: "http://127.0.0.1:10000/
 * devstoreaccount1") and `accountKey`, the storage account's shared key
 * (base64), which signs the requests locally where ASP uses the service
 * principal) and what listings show of it: everything but the key. Its
 * one sink is $emit (sink_emit_azure_blob.c).
 */
#include "connectors/connectors.h"
#include "connectors/objstore.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
azure_destroy(void *opts)
{
   aspen_azure_blob_t *a = opts;
   if (!a) {
      return;
   }
   free(a->account);
   free(a->principal);
   free(a->endpoint);
   OPENSSL_cleanse(a->key, sizeof a->key);
   free(a);
}

/* Decodes the base64 account key into a->key. */
static bool
decode_key(aspen_azure_blob_t *a, const char *b64, const char *where,
           aspen_error_t *err)
{
   size_t n = strlen(b64);
   unsigned char buf[sizeof a->key + 4];
   if (n == 0 || n % 4 != 0 || n / 4 * 3 > sizeof buf) {
      goto bad;
   }
   int len = EVP_DecodeBlock(buf, (const unsigned char *) b64, (int) n);
   if (len < 0) {
      goto bad;
   }
   len -= (b64[n - 1] == '=') + (b64[n - 2] == '=');
   memcpy(a->key, buf, (size_t) len);
   a->key_len = (size_t) len;
   OPENSSL_cleanse(buf, sizeof buf);
   return true;
bad:
   aspen_error_set(err, ASPEN_ERR_BadValue,
                   "config key '%s.accountKey' must be the storage account's "
                   "key in base64",
                   where);
   return false;
}

static bool
azure_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
            aspen_error_t *err)
{
   *opts = NULL;
   aspen_azure_blob_t *a = aspen_xcalloc(1, sizeof *a);
   bson_iter_t it, sub;
   if (bson_iter_init_find(&it, entry, "azure")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.azure' must be an object",
                         cfg->where);
         goto fail;
      }
      bson_iter_recurse(&it, &sub);
      while (bson_iter_next(&sub)) {
         const char *k = bson_iter_key(&sub);
         char **slot = strcmp(k, "storageAccountName") == 0 ? &a->account
                       : strcmp(k, "servicePrincipalId") == 0
                          ? &a->principal
                          : NULL;
         char key[96];
         snprintf(key, sizeof key, "azure.%s", k);
         if (!slot) {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.azure.%s'", cfg->where,
                            k);
            goto fail;
         }
         if (!aspen__conn_parse_string(&sub, cfg->where, key, slot, err)) {
            goto fail;
         }
      }
   }
   if (!a->account) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.azure.storageAccountName' is required "
                      "for an azure-blob connection",
                      cfg->where);
      goto fail;
   }
   if (bson_iter_init_find(&it, entry, "endpoint")) {
      if (!aspen__conn_parse_url(&it, cfg->where, "endpoint", &a->endpoint,
                                 err)) {
         goto fail;
      }
   } else {
      char url[512];
      snprintf(url, sizeof url, "https://%s.blob.core.windows.net",
               a->account);
      a->endpoint = aspen_xstrdup(url);
   }
   if (bson_iter_init_find(&it, entry, "accountKey")) {
      if (!BSON_ITER_HOLDS_UTF8(&it) ||
          !decode_key(a, bson_iter_utf8(&it, NULL), cfg->where, err)) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s.accountKey' must be a string",
                            cfg->where);
         }
         goto fail;
      }
   }
   *opts = a;
   return true;
fail:
   azure_destroy(a);
   return false;
}

static void
azure_list(const void *opts, bson_t *doc)
{
   const aspen_azure_blob_t *a = opts;
   bson_t sub;
   BSON_APPEND_DOCUMENT_BEGIN(doc, "azure", &sub);
   BSON_APPEND_UTF8(&sub, "storageAccountName", a->account);
   if (a->principal) {
      BSON_APPEND_UTF8(&sub, "servicePrincipalId", a->principal);
   }
   bson_append_document_end(doc, &sub);
   BSON_APPEND_UTF8(doc, "endpoint", a->endpoint);
}

static const char *const azure_keys[] = {"azure", "endpoint", "accountKey",
                                         NULL};

const aspen_conn_ops_t aspen_conn_azure_blob_ops = {
   .keys = azure_keys,
   .parse = azure_parse,
   .list = azure_list,
   .destroy = azure_destroy,
};

const aspen_azure_blob_t *
aspen__conn_azure_blob(const aspen_conn_t *conn)
{
   return conn->kind->conn == &aspen_conn_azure_blob_ops ? conn->opts : NULL;
}
