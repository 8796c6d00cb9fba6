/*
 * fields.c - a document's top-level field table (fields.h).
 */
#include "lang/fields.h"

#include <string.h>

bool aspen__fields_on = true;

void
aspen_fields_set_enabled(bool on)
{
   aspen__fields_on = on;
}
