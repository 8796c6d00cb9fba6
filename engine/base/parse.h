/*
 * parse.h - what every parser of a processor's definition shares (the
 * pipeline, its stages, sources, sinks and connections): where in the
 * pipeline it stands, and errors in ASP's wording that say so.
 *
 * Every such error is code 420 StreamProcessorInvalidOptions, its message
 * prefixed "StreamProcessorInvalidOptions: " and followed by the position
 * ("(at pipeline[1].$merge.into)"). Pure: no I/O, any thread.
 */
#ifndef ASPEN_ENGINE_BASE_PARSE_H
#define ASPEN_ENGINE_BASE_PARSE_H

#include "wire.h"

/* The prefix of every pipeline error message. */
#define ASPEN_PARSE_PREFIX "StreamProcessorInvalidOptions: "

/* The engine's connection registry and the catalog of the stage and
 * connector kinds (runtime/catalog.h), opaque here. */
typedef struct aspen_conns aspen_conns_t;
typedef struct aspen_catalog aspen_catalog_t;

/* What a stage parser may need to know about where it stands. */
typedef struct {
   const aspen_catalog_t *catalog; /* the stages and connectors there are */
   const aspen_conns_t *conns;
   bool in_window;  /* inside a window's inner pipeline */
   bool ephemeral;  /* sp.process: no sink required */
   bool has_dlq;    /* the processor has a DLQ configured */
   int index;       /* stage index in its pipeline */
   /* While a stage parses: the name of the stage after it in the same
    * array ("$project"), NULL for none or a malformed one. A view into
    * the definition, valid during the parse call only. */
   const char *next_stage;
   char path[128];  /* "pipeline[2]" or "pipeline[2].$tumblingWindow.pipeline[0]" */
} aspen_parse_ctx_t;

/* Sets err to a pipeline error: code 420, the prefix, the reason formatted
 * from `fmt`, and the position pc->path, followed by ".<option>" when
 * `option` is neither NULL nor empty. */
void aspen_parse_error(aspen_error_t *err, const aspen_parse_ctx_t *pc,
                       const char *option, const char *fmt, ...)
   __attribute__((format(printf, 4, 5)));

/* Sets err to IDL's "BSON field '<path>.<field>' is an unknown field." as
 * a pipeline error at pc's position followed by ".<option>" (as
 * aspen_parse_error). `path` NULL: `field` is the whole name. */
void aspen_parse_unknown_field(aspen_error_t *err, const aspen_parse_ctx_t *pc,
                               const char *option, const char *path,
                               const char *field);

/* The same with IDL's "BSON field '<path>.<field>' is missing but a
 * required field". */
void aspen_parse_missing_field(aspen_error_t *err, const aspen_parse_ctx_t *pc,
                               const char *option, const char *path,
                               const char *field);

/* When the document `doc` (an iterator on a document field) has a key twice,
 * sets IDL's "BSON field '<path>.<key>' is a duplicate field" and returns
 * false. True for anything else (not a document included). */
bool aspen_parse_no_duplicates(const bson_iter_t *doc,
                               const aspen_parse_ctx_t *pc, const char *path,
                               aspen_error_t *err);

/* Re-raises an error from an expression or matcher parser (any code) as a
 * pipeline error at pc's position, keeping its text; one that already is a
 * pipeline error is left alone. */
void aspen_parse_wrap_error(aspen_error_t *err, const aspen_parse_ctx_t *pc);

#endif /* ASPEN_ENGINE_BASE_PARSE_H */
