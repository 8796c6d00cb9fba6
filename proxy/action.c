/*
 * action.c - the privilege actions (auth.h, ASPEN_ACTIONS): their names,
 * as roles and messages spell them, and their kinds (what resource each
 * applies to). The vocabulary the roles (roles.c) grant and the checks
 * (principal.c) ask for.
 */
#include "auth.h"

#include <string.h>

static const struct {
   const char *name;
   char kind;
} actions[] = {
#define ASPEN_ACTION_ROW(n, k) {#n, #k[0]},
   ASPEN_ACTIONS(ASPEN_ACTION_ROW)
#undef ASPEN_ACTION_ROW
};

const char *
aspen_action_name(aspen_action_t a)
{
   return a < ASPEN_N_ACTIONS ? actions[a].name : "?";
}

bool
aspen_action_parse(const char *name, aspen_action_t *a)
{
   if (strcmp(name, "listConnections") == 0) { /* ASP's older name */
      *a = ASPEN_ACTION_listStreamConnections;
      return true;
   }
   for (int i = 0; i < ASPEN_N_ACTIONS; i++) {
      if (strcmp(actions[i].name, name) == 0) {
         *a = (aspen_action_t) i;
         return true;
      }
   }
   return false;
}

char
aspen__action_kind(aspen_action_t a)
{
   return a < ASPEN_N_ACTIONS ? actions[a].kind : '?';
}
