/*
 * not_yet.c - lookups in the "not yet" list (not_yet.def).
 */
#include "base/not_yet.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const struct {
   const char *scope, *name, *what;
} rows[] = {
#define ASPEN_NOT_YET(scope, name, what) {scope, name, what},
#include "base/not_yet.def"
#undef ASPEN_NOT_YET
};

bool
aspen_not_yet_find(const char *scope, const char *name, const char **what)
{
   bool nocase = strcmp(scope, "connectionType") == 0;
   for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
      if (strcmp(rows[i].scope, scope) == 0 &&
          (nocase ? strcasecmp(rows[i].name, name)
                  : strcmp(rows[i].name, name)) == 0) {
         *what = rows[i].what;
         return true;
      }
   }
   *what = NULL;
   return false;
}

bool
aspen_not_yet_error(const char *scope, const char *name, const char *subject,
                    int code, aspen_error_t *err)
{
   const char *what;
   if (!aspen_not_yet_find(scope, name, &what)) {
      return false;
   }
   aspen_error_set(err, code ? code : ASPEN_ERR_StreamProcessorInvalidOptions,
                   "%s is supported by Atlas Stream Processing but not yet "
                   "by this version of aspen%s%s%s",
                   subject, what ? " (" : "", what ? what : "", what ? ")" : "");
   return true;
}

bool
aspen_not_yet_parse_error(const char *scope, const char *key,
                          const aspen_parse_ctx_t *pc, const char *option,
                          aspen_error_t *err)
{
   char subject[128];
   aspen_error_t ny;
   snprintf(subject, sizeof subject, "%s.%s", scope, key);
   if (!aspen_not_yet_error(scope, key, subject, 0, &ny)) {
      return false;
   }
   aspen_parse_error(err, pc, option, "%s", ny.message);
   return true;
}
