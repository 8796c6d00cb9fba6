/*
 * users_cli.c - `aspen --add-user` (see aspen_users_cli_add in auth.h):
 * adds or replaces one user in the users file, with SCRAM-SHA-1 and
 * SCRAM-SHA-256 keys derived from the password (scram.c), or in "$external"
 * for a MONGODB-X509 user. The read-modify-write holds an exclusive flock
 * on "<users file>.lock", so concurrent runs all land, and the new file
 * replaces the old one atomically (wire/file.c). A running aspen notices
 * the change (aspen_users_refresh). Main thread, before the loop.
 */
#include "users_int.h"
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#define MAX_NAME ASPEN_ROLES_MAX_NAME

/* Creates the folder of `path` and its parents (mode 0700). */
static bool
mkdir_parents(const char *path, aspen_error_t *err)
{
   char dir[4096];
   snprintf(dir, sizeof dir, "%s", path);
   const char *d = dirname(dir);
   if (!aspen_file_mkdirs(d)) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot create %s: %s", d,
                      strerror(errno));
      return false;
   }
   return true;
}

static void
append_cred(bson_t *creds, aspen_scram_mech_t mech,
            const aspen_scram_cred_t *cred)
{
   char b64[128];
   size_t hl = aspen_scram_hash_len(mech);
   bson_t doc;
   BSON_APPEND_DOCUMENT_BEGIN(creds, aspen_scram_mech_name(mech), &doc);
   BSON_APPEND_INT32(&doc, "iterationCount", cred->iterations);
   aspen_scram_b64_encode(cred->salt, cred->salt_len, b64, sizeof b64);
   BSON_APPEND_UTF8(&doc, "salt", b64);
   aspen_scram_b64_encode(cred->stored_key, hl, b64, sizeof b64);
   BSON_APPEND_UTF8(&doc, "storedKey", b64);
   aspen_scram_b64_encode(cred->server_key, hl, b64, sizeof b64);
   BSON_APPEND_UTF8(&doc, "serverKey", b64);
   bson_append_document_end(creds, &doc);
}

/* Builds the user document for --add-user: in "admin" with SCRAM keys, or
 * (password NULL) in "$external" with no credentials at all, for a
 * MONGODB-X509 user whose name is its certificate subject. */
static bool
make_user_doc(const aspen_users_t *users, const char *name,
              const char *password, const char *roles, bson_t *doc,
              aspen_error_t *err)
{
   bson_t arr, creds;
   BSON_APPEND_UTF8(doc, "user", name);
   BSON_APPEND_UTF8(doc, "db", password ? "admin" : ASPEN_EXTERNAL_DB);
   BSON_APPEND_ARRAY_BEGIN(doc, "roles", &arr);
   char list[4096];
   snprintf(list, sizeof list, "%s", roles);
   uint32_t n = 0;
   const char *key;
   char *save = NULL;
   for (char *r = strtok_r(list, ",", &save); r; r = strtok_r(NULL, ",", &save)) {
      while (*r == ' ') {
         r++;
      }
      char *at = strchr(r, '@');
      const char *rdb = "admin";
      if (at) {
         *at = '\0';
         rdb = at + 1;
      }
      if (!*r) {
         continue;
      }
      if (!aspen__roles_exists(aspen__users_roles(users), r)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "unknown role '%s' (built-in: atlasAdmin, "
                         "readWriteAnyDatabase, readAnyDatabase, "
                         "streamProcessingOwner, readWrite@DB, read@DB; or a "
                         "security.roles name)",
                         r);
         bson_append_array_end(doc, &arr);
         return false;
      }
      char buf[16];
      bson_t ref;
      bson_uint32_to_string(n++, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, key, &ref);
      BSON_APPEND_UTF8(&ref, "role", r);
      BSON_APPEND_UTF8(&ref, "db", rdb);
      bson_append_document_end(&arr, &ref);
   }
   bson_append_array_end(doc, &arr);
   if (n == 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "--roles needs at least one role");
      return false;
   }
   if (!password) {
      return true; /* $external: the TLS layer proves who the user is */
   }
   BSON_APPEND_DOCUMENT_BEGIN(doc, "credentials", &creds);
   for (int m = 0; m < ASPEN_SCRAM_N_MECHS; m++) {
      aspen_scram_cred_t cred;
      if (!aspen_scram_cred_make((aspen_scram_mech_t) m, name, password, 0,
                                 &cred, err)) {
         bson_append_document_end(doc, &creds);
         return false;
      }
      append_cred(&creds, (aspen_scram_mech_t) m, &cred);
   }
   bson_append_document_end(doc, &creds);
   return true;
}

/* Opens "<path>.lock" (created 0600) and waits for an exclusive flock on
 * it: --add-user runs take it around their read-modify-write of the users
 * file. (aspen itself only reads the file, which is always replaced by a
 * rename, so it never needs the lock.) Returns the descriptor, or -1 with
 * err set. */
static int
lock_users_file(const char *path, aspen_error_t *err)
{
   char lock[4200];
   snprintf(lock, sizeof lock, "%s.lock", path);
   int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
   if (fd < 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "cannot open %s: %s", lock,
                      strerror(errno));
      return -1;
   }
   while (flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
         aspen_error_set(err, ASPEN_ERR_BadValue, "cannot lock %s: %s", lock,
                         strerror(errno));
         close(fd);
         return -1;
      }
   }
   return fd;
}

/* Releases lock_users_file's lock; -1 is a no-op. */
static void
unlock_users_file(int fd)
{
   if (fd >= 0) {
      close(fd); /* closing the descriptor releases the flock */
   }
}

static bool
add_user(const aspen_config_t *cfg, const char *name, const char *password,
         const char *roles, bool *replaced, char *path_out, size_t path_size,
         aspen_error_t *err)
{
   *replaced = false;
   size_t nlen = strlen(name);
   if (nlen == 0 || nlen >= MAX_NAME) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "user name must be 1 to %d bytes", MAX_NAME - 1);
      return false;
   }
   for (size_t i = 0; i < nlen; i++) {
      if ((unsigned char) name[i] < 0x20 || name[i] == 0x7f) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "user name has a control character");
         return false;
      }
   }
   if (!bson_utf8_validate(name, nlen, false)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "user name must be valid UTF-8");
      return false;
   }
   if (password && !*password) {
      aspen_error_set(err, ASPEN_ERR_BadValue, "password must not be empty");
      return false;
   }
   const char *db = password ? "admin" : ASPEN_EXTERNAL_DB;
   aspen_users_t *users = aspen__users_new_unloaded(cfg, err);
   if (!users) {
      return false;
   }
   const char *path = aspen_users_path(users);
   snprintf(path_out, path_size, "%s", path);
   bson_t user = BSON_INITIALIZER, old, out = BSON_INITIALIZER, arr;
   /* The keys are derived (slow on purpose) before taking the lock; from
    * reading the file to renaming the new one over it, other --add-user
    * runs wait, so none of their users is lost. */
   int lock_fd = -1;
   bool missing = false,
        ok = make_user_doc(users, name, password, roles, &user, err) &&
             mkdir_parents(path, err) &&
             (lock_fd = lock_users_file(path, err)) >= 0;
   if (ok) {
      ok = aspen__users_read_file(path, &old, &missing, err);
   } else {
      bson_init(&old);
   }
   if (!ok) {
      unlock_users_file(lock_fd);
      bson_destroy(&old);
      bson_destroy(&user);
      aspen_users_destroy(users);
      return false;
   }
   /* Keep every other user; replace this one (same name and database) in
    * place. A user without "db" is in admin. */
   BSON_APPEND_ARRAY_BEGIN(&out, "users", &arr);
   bson_iter_t it, u;
   uint32_t n = 0;
   char buf[16];
   const char *key;
   if (bson_iter_init_find(&it, &old, "users") && BSON_ITER_HOLDS_ARRAY(&it) &&
       bson_iter_recurse(&it, &u)) {
      while (bson_iter_next(&u)) {
         bson_iter_t f, g;
         bool same = false;
         if (BSON_ITER_HOLDS_DOCUMENT(&u) && bson_iter_recurse(&u, &f) &&
             bson_iter_recurse(&u, &g) && bson_iter_find(&f, "user") &&
             BSON_ITER_HOLDS_UTF8(&f)) {
            const char *udb = "admin";
            if (bson_iter_find(&g, "db") && BSON_ITER_HOLDS_UTF8(&g)) {
               udb = bson_iter_utf8(&g, NULL);
            }
            same = strcmp(bson_iter_utf8(&f, NULL), name) == 0 &&
                   strcmp(udb, db) == 0;
         }
         if (same) {
            *replaced = true;
            bson_uint32_to_string(n++, &key, buf, sizeof buf);
            BSON_APPEND_DOCUMENT(&arr, key, &user);
         } else {
            bson_uint32_to_string(n++, &key, buf, sizeof buf);
            bson_append_value(&arr, key, -1,
                              bson_iter_value(&u));
         }
      }
   }
   if (!*replaced) {
      bson_uint32_to_string(n++, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT(&arr, key, &user);
   }
   bson_append_array_end(&out, &arr);
   size_t len = 0;
   char *json = bson_as_relaxed_extended_json(&out, &len);
   if (!json) {
      /* A string in another user's entry is not UTF-8 (a hand-edited
       * file): never replace the file with a failed encoding. */
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "users file %s holds a string that is not valid "
                      "UTF-8; it was left unchanged",
                      path);
      ok = false;
   } else {
      /* The temp file is per process: the lock aside, two runs never
       * write into one. */
      char *text = aspen_xmalloc(len + 2);
      snprintf(text, len + 2, "%s\n", json);
      ok = aspen_file_write_atomic(path, text, len + 1, 0600,
                                   ASPEN_FILE_TMP_PER_PROCESS, err);
      free(text);
   }
   unlock_users_file(lock_fd);
   bson_free(json);
   bson_destroy(&out);
   bson_destroy(&old);
   bson_destroy(&user);
   aspen_users_destroy(users);
   return ok;
}

int
aspen_users_cli_add(const aspen_config_t *cfg, const char *name,
                    const char *password, const char *roles)
{
   const bool external = password == NULL;
   aspen_error_t err;
   bool replaced;
   char path[4096] = "";
   char line[1024];
   if (password && strcmp(password, "-") == 0) {
      /* Read the password from stdin, so it stays out of `ps`. */
      if (!fgets(line, sizeof line, stdin)) {
         fprintf(stderr, "aspen: --password -: nothing on stdin\n");
         return 2;
      }
      line[strcspn(line, "\r\n")] = '\0';
      password = line;
   }
   bool ok = add_user(cfg, name, password, roles, &replaced, path, sizeof path,
                      &err);
   OPENSSL_cleanse(line, sizeof line);
   if (!ok) {
      fprintf(stderr, "aspen: --add-user %s: %s\n", name, err.message);
      return 2;
   }
   printf("aspen: %s user \"%s\"%s (roles %s) in %s\n",
          replaced ? "updated" : "added", name,
          external ? " in $external (MONGODB-X509)" : "", roles, path);
   return 0;
}
