/*
 * users_int.h - the user store inside proxy/ (users.c): what `aspen
 * --add-user` (users_cli.c) shares with it. The store's API is in auth.h.
 */
#ifndef ASPEN_USERS_INT_H
#define ASPEN_USERS_INT_H

#include "roles.h"

/* The store as aspen_users_new makes it (the users file's path, the
 * authorization mode, the custom roles) but with no users: the users file
 * is not read. NULL with err set on a bad security.authorization or
 * security.roles. */
aspen_users_t *aspen__users_new_unloaded(const aspen_config_t *cfg,
                                         aspen_error_t *err);
/* The custom roles of the store (security.roles). */
const aspen_roles_t *aspen__users_roles(const aspen_users_t *users);
/* Reads the users file at `path` into `doc` (always initialised). A file
 * that does not exist is no error: *missing is set and `doc` is empty.
 * Refused (false, err set): a file that cannot be read, is empty or is not
 * (Extended) JSON, and one whose permissions give its group or others any
 * access. */
bool aspen__users_read_file(const char *path, bson_t *doc, bool *missing,
                            aspen_error_t *err);

#endif /* ASPEN_USERS_INT_H */
