/*
 * window_int.h - inside stages/ only: the window stages' state (window.c
 * runs it, window_parse.c fills it from the stage's argument) and what
 * they share with the blocking stages of their inner pipelines
 * (window_block.c: $group, $sort, $limit and $count, parsed as stages and
 * run by the window over each open window's documents). Processor
 * thread.
 */
#ifndef ASPEN_ENGINE_STAGES_WINDOW_INT_H
#define ASPEN_ENGINE_STAGES_WINDOW_INT_H

#include "bsonw.h"
#include "lang/accum.h"
#include "runtime/pipeline.h"

typedef enum { B_GROUP, B_SORT, B_LIMIT, B_COUNT } aspen_block_kind_t;

/* The most distinct top-level names a $group's fast input path reads. */
#define ASPEN_GROUP_TOP_MAX 16

typedef struct {
   char *name;
   aspen_accum_t *acc;
   const char *path;  /* its argument if a plain "$field.path" (a view */
   uint32_t path_len; /* into the spec), else NULL */
   int same_as;       /* an earlier field with the same path, or -1 */
   bool grows;        /* its state's size can change (stateSize) */
} aspen_group_field_t;

typedef struct {
   bson_t spec;          /* owned copy: expressions keep views into it */
   aspen_expr_t *id;
   aspen_group_field_t *fields;
   size_t n_fields;
   /* The field paths _id and the accumulators read, found in one pass
    * over each document (lang/expr.h), or NULL when they read none. */
   aspen_expr_paths_t *paths;
   /* When _id and every accumulator that has an argument read a plain
    * top-level field ("$name"), the distinct names (views into spec,
    * without the '$'), which name _id reads and which each field's
    * accumulator reads (-1: none, $count): each document's values are
    * then found by one scan of its top level, without evaluating. */
   bool top_only;
   uint32_t n_top;
   const char *top_name[ASPEN_GROUP_TOP_MAX];
   uint32_t top_len[ASPEN_GROUP_TOP_MAX];
   int id_top;
   int *field_top;
   /* A group's block: each accumulator state's offset in it, and where
    * the key bytes start (after the states). */
   size_t *state_off;
   size_t states_end;
} aspen_group_spec_t;

typedef struct {
   char **paths;
   int *dirs;
   size_t n;
} aspen_sort_spec_t;

typedef struct {
   aspen_block_kind_t kind;
   aspen_group_spec_t group;
   aspen_sort_spec_t sort;
   int64_t limit;
   char *count_field;
} aspen_block_spec_t;

typedef struct {
   bson_t **docs;
   size_t n, cap;
} aspen_doclist_t;

/* One group of a $group: one block of its map's arena holding this, the
 * state pointers, the accumulator states (each 16-byte aligned) and the
 * key and _id bytes. */
typedef struct {
   uint64_t hash;
   const uint8_t *key; /* the normalized _id's element {"": ...}, its */
   uint32_t key_len;   /* bytes as aspen__window_block_append_normalized */
   uint32_t id_len;    /* writes them (the table compares these) */
   const uint8_t *id;  /* {"": _id as first seen}, a whole document */
   aspen_accum_state_t **states;
} aspen_group_t;

/* A block of a group map's arena. */
typedef struct aspen_group_chunk {
   struct aspen_group_chunk *next;
   size_t size;
   _Alignas(16) uint8_t data[];
} aspen_group_chunk_t;

/* Groups in insertion order, indexed by an open-addressing table whose
 * entries hold the group's position + 1 in their low 32 bits (0 = empty)
 * and the high 32 bits of its hash in the others, so that a probe looks
 * at a group only when those match. Groups live in an arena freed as a
 * whole (aspen__window_block_groups_clear). */
typedef struct {
   aspen_group_t **items;
   size_t n, cap;
   uint64_t *index;
   size_t index_size; /* a power of two */
   aspen_bsonw_t scratch; /* the key being looked up (general path) */
   aspen_group_chunk_t *chunks; /* newest first */
   size_t chunk_used;
} aspen_group_map_t;

/* ---- the window stage (window.c, window_parse.c) ---------------------------- */

/* A window stage's state (aspen_window_t), its open windows
 * (aspen_win_t) and their first blocking stage's state. */
typedef struct {
   aspen_group_map_t groups; /* B_GROUP */
   aspen_doclist_t docs;     /* B_SORT, B_LIMIT, and no blocking stage */
   int64_t count;            /* B_COUNT */
} aspen_block_state_t;

typedef struct {
   int64_t start, end;
   bson_t part_key;     /* session windows: {"": partition value} */
   int64_t last_ts;     /* session windows: latest event time */
   uint64_t first_seq;  /* pl->cur_seq of its first input (checkpoints) */
   uint64_t first_ns;   /* pl->origin_ns of its first input (latency) */
   aspen_block_state_t block;
   size_t bytes;        /* estimate for stateSize */
   /* The metadata its documents see (window.c's win_meta), and what it
    * was built from. */
   bson_t meta;
   bool has_meta;
   int64_t meta_start, meta_end;
   bool meta_typed; /* built after the source type was known */
} aspen_win_t;

typedef enum { W_TUMBLING, W_HOPPING, W_SESSION } aspen_win_kind_t;

typedef struct {
   aspen_win_kind_t kind;
   int64_t size_ms, hop_ms, offset_ms, gap_ms;
   int64_t lateness_ms, idle_timeout_ms;
   bool processing_time;
   aspen_expr_t *partition_by;
   bson_t spec;              /* owned copy of the stage argument */

   aspen_stage_t *inner;     /* parsed inner stages */
   int n_inner;
   int first_block;          /* index of the first blocking stage or n */
   aspen_chain_t prefix;     /* inner[0 .. first_block) */
   aspen_chain_t *segments;  /* one per blocking stage: the stateless run
                              * after it */

   /* Run time. */
   aspen_win_t **wins;       /* open windows, sorted by (start, key) */
   size_t n_wins, cap_wins;
   int64_t watermark;        /* INT64_MIN until the first event */
   struct {
      int64_t id, wm, last_seen_ms;
   } *parts;                 /* per source partition key (pl->cur_part) */
   size_t n_parts;
   char source_type[32];
   aspen_win_t *feeding;     /* target of the prefix chain's terminal */
   aspen_win_t *last_fed;    /* tumbling: the window the last input went
                              * to, while it is open */
   aspen_stage_t *self;
   size_t state_bytes;
   bool collecting;          /* batch runs: terminal collects */
   aspen_doclist_t *collect;
} aspen_window_t;

/* Parses a window stage's argument into a new aspen_window_t (st->state):
 * its options and its inner stages (window.c then chains those). False
 * with err set (ASP's message); st->state then holds what was built, for
 * the caller to free (aspen__window_destroy). */
bool aspen__window_parse_args(aspen_stage_t *st, const bson_iter_t *arg,
                              aspen_parse_ctx_t *pc, aspen_error_t *err);
/* Frees the window stage's state, whole or partly built (its ops'
 * destroy). */
void aspen__window_destroy(aspen_stage_t *st);

/* ---- the blocking stages (window_block.c) ------------------------------------ */

extern const aspen_stage_ops_t aspen_stage_group_ops;
extern const aspen_stage_ops_t aspen_stage_sort_ops;
extern const aspen_stage_ops_t aspen_stage_limit_ops;
extern const aspen_stage_ops_t aspen_stage_count_ops;

/* True when `st` is one of the blocking stages (its state is then an
 * aspen_block_spec_t). */
bool aspen__window_block_is(const aspen_stage_t *st);

/* A list of owned document copies. */
void aspen__window_block_list_add(aspen_doclist_t *l, const bson_t *doc);
void aspen__window_block_list_clear(aspen_doclist_t *l);

/* Appends the value `it` is on as field `key` of `out`, with numbers made
 * canonical, so that 1, 1.0 and NumberLong(1) fall in the same group (or
 * partition), as in MongoDB. */
void aspen__window_block_append_normalized(bson_t *out, const char *key,
                                           const bson_iter_t *it);

/* The normalized key element of a group's _id `id` ({"": id} less the
 * document's frame, numbers canonical: the bytes
 * aspen__window_block_append_normalized writes), with its length: common
 * scalars written straight into `buf`, anything else through the general
 * path (aspen_value_append, then append_normalized) into `kw`. */
#define ASPEN_GROUP_KEY_BUF 64
const uint8_t *aspen__window_block_group_key(aspen_bsonw_t *kw,
                                             uint8_t buf[ASPEN_GROUP_KEY_BUF],
                                             const aspen_value_t *id,
                                             uint32_t *len);
/* Test switches (processor thread; tests only): every key through the
 * general path (true), and a mask applied to every key's hash (0 makes
 * them all collide). */
extern bool aspen__window_group_key_general;
/* Test switch: every input through expression evaluation (the path
 * table), never the top-level scan. */
extern bool aspen__window_group_inputs_general;
extern uint64_t aspen__window_group_hash_mask;

/* $group's state for one window: the group for the _id value `idv` (when
 * it does not exist yet: NULL if `added_bytes` is NULL, else a new one,
 * its bytes added there); adding a document, its expressions evaluated at
 * `now_ms` (false with err set when one fails: the document goes to the
 * DLQ); the results, one document per group in insertion order; freeing
 * every group. */
aspen_group_t *aspen__window_block_group_get(aspen_group_map_t *m,
                                             const aspen_block_spec_t *b,
                                             const aspen_value_t *idv,
                                             size_t *added_bytes);
bool aspen__window_block_group_add(aspen_group_map_t *m,
                                   const aspen_block_spec_t *b,
                                   const aspen_sdoc_t *in, int64_t now_ms,
                                   size_t *added_bytes, aspen_error_t *err);
void aspen__window_block_group_results(const aspen_group_map_t *m,
                                       const aspen_block_spec_t *b,
                                       aspen_doclist_t *out);
void aspen__window_block_groups_clear(aspen_group_map_t *m,
                                      const aspen_block_spec_t *b);

/* Sorts `l` by $sort's spec `s`, stably, as MongoDB orders values. */
void aspen__window_block_sort(const aspen_sort_spec_t *s, aspen_doclist_t *l);

#endif /* ASPEN_ENGINE_STAGES_WINDOW_INT_H */
