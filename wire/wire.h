/*
 * wire.h - the public header of aspen's foundation library.
 *
 * wire/ depends only on libbson. It holds the primitives every other folder
 * shares (byte buffers, slices, MongoDB-style errors, structured logging) and
 * the MongoDB wire protocol codec: incremental framing, OP_MSG and legacy
 * OP_QUERY decoding, and OP_MSG / OP_REPLY encoding. Parsed messages are views
 * into the receive buffer: they stay valid until the buffer is consumed.
 *
 * Every function here may be called from any thread unless it says otherwise;
 * none keeps global mutable state except the logger's configuration.
 */
#ifndef ASPEN_WIRE_H
#define ASPEN_WIRE_H

#include <bson/bson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */
/* ------------------------------------------------------------------------ */

/* Allocation that aborts on out-of-memory (like bson_malloc): callers never
 * check for NULL. Sizes that come from a peer must be checked against a limit
 * before they reach these. */
void *aspen_xmalloc(size_t size);
void *aspen_xcalloc(size_t n, size_t size);
void *aspen_xrealloc(void *ptr, size_t size);
char *aspen_xstrdup(const char *s);

#define ASPEN_ASSERT(cond)                                                     \
   do {                                                                        \
      if (!(cond)) {                                                           \
         aspen_assert_fail(#cond, __FILE__, __LINE__);                         \
      }                                                                        \
   } while (0)

void aspen_assert_fail(const char *what, const char *file, int line)
   __attribute__((noreturn));

/* ------------------------------------------------------------------------ */
/* Slices and buffers                                                        */
/* ------------------------------------------------------------------------ */

/* A borrowed view of bytes; passed by value. */
typedef struct {
   const uint8_t *ptr;
   size_t len;
} aspen_slice_t;

/* A growable byte queue: bytes are appended at the tail (reserve + commit, or
 * append) and removed from the head (consume). Consuming only moves an offset;
 * the storage is compacted lazily when more room is reserved. */
typedef struct {
   uint8_t *base;
   size_t head; /* first unconsumed byte */
   size_t tail; /* one past the last committed byte */
   size_t cap;
} aspen_buf_t;

void aspen_buf_init(aspen_buf_t *buf);
void aspen_buf_cleanup(aspen_buf_t *buf);
/* Returns a pointer to at least `n` writable bytes at the tail. */
uint8_t *aspen_buf_reserve(aspen_buf_t *buf, size_t n);
/* Marks `n` bytes written after a reserve as part of the buffer. */
void aspen_buf_commit(aspen_buf_t *buf, size_t n);
void aspen_buf_append(aspen_buf_t *buf, const void *data, size_t n);
/* Drops `n` bytes from the head (n <= aspen_buf_len). Views into those bytes
 * become invalid. */
void aspen_buf_consume(aspen_buf_t *buf, size_t n);
void aspen_buf_clear(aspen_buf_t *buf);
/* Detaches the unconsumed bytes as a malloc'd block the caller owns; the
 * buffer is left empty and reusable. Returns NULL when empty. */
uint8_t *aspen_buf_steal(aspen_buf_t *buf, size_t *len);

static inline const uint8_t *
aspen_buf_data(const aspen_buf_t *buf)
{
   /* NULL + 0 is undefined in C (clang's UBSan reports it). */
   return buf->base ? buf->base + buf->head : NULL;
}

static inline size_t
aspen_buf_len(const aspen_buf_t *buf)
{
   return buf->tail - buf->head;
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* MongoDB server error codes that aspen sends, with their codeName. */
#define ASPEN_ERROR_CODES(X)                                                   \
   X(0, OK)                                                                    \
   X(1, InternalError)                                                         \
   X(2, BadValue)                                                              \
   X(4, NoSuchKey)                                                             \
   X(6, HostUnreachable)                                                       \
   X(8, UnknownError)                                                          \
   X(9, FailedToParse)                                                         \
   X(10, CannotMutateObject)                                                   \
   X(11, UserNotFound)                                                         \
   X(13, Unauthorized)                                                         \
   X(14, TypeMismatch)                                                         \
   X(16, InvalidLength)                                                        \
   X(17, ProtocolError)                                                        \
   X(18, AuthenticationFailed)                                                 \
   X(20, IllegalOperation)                                                     \
   X(22, InvalidBSON)                                                          \
   X(26, NamespaceNotFound)                                                    \
   X(40, ConflictingUpdateOperators)                                           \
   X(43, CursorNotFound)                                                       \
   X(50, MaxTimeMSExpired)                                                     \
   X(59, CommandNotFound)                                                      \
   X(72, InvalidOptions)                                                       \
   X(73, InvalidNamespace)                                                     \
   X(74, NodeNotFound)                                                         \
   X(89, NetworkTimeout)                                                       \
   X(96, OperationFailed)                                                      \
   X(115, CommandNotSupported)                                                 \
   X(125, CommandFailed)                                                       \
   X(133, FailedToSatisfyReadPreference)                                       \
   X(141, SSLHandshakeFailed)                                                  \
   X(168, InvalidPipelineOperator)                                             \
   X(202, NetworkInterfaceExceededTimeLimit)                                   \
   X(241, ConversionFailure)                                                   \
   X(334, TooManyLogicalSessions)                                              \
   X(352, UnsupportedOpQueryCommand)                                           \
   X(415, StreamProcessorDoesNotExist)                                         \
   X(416, StreamProcessorAlreadyExists)                                        \
   X(417, StreamProcessorWorkerShuttingDown)                                   \
   X(418, StreamProcessorWorkerOutOfMemory)                                    \
   X(419, StreamProcessorKafkaConnectionError)                                 \
   X(420, StreamProcessorInvalidOptions)                                       \
   X(421, StreamProcessorAtlasConnectionError)                                 \
   X(422, StreamProcessorAtlasUnauthorizedError)                               \
   X(423, StreamProcessorSourceDocTooLarge)                                    \
   X(424, StreamProcessorTooManyOutputTargets)                                 \
   X(425, StreamProcessorCannotResumeFromSource)                               \
   X(448, StreamProcessorInvalidNamespace)                                     \
   X(10334, BSONObjectTooLarge)                                                \
   X(40415, Location40415)

typedef enum {
#define ASPEN_ERROR_ENUM(code, name) ASPEN_ERR_##name = code,
   ASPEN_ERROR_CODES(ASPEN_ERROR_ENUM)
#undef ASPEN_ERROR_ENUM
} aspen_error_code_t;

#define ASPEN_ERROR_MSG_MAX 512

/* A MongoDB-style error; filling one never allocates. */
typedef struct {
   int32_t code;
   char message[ASPEN_ERROR_MSG_MAX];
} aspen_error_t;

/* The codeName for a server code, or "UnknownError" for a code aspen does
 * not know. Never NULL. */
const char *aspen_error_code_name(int32_t code);
void aspen_error_set(aspen_error_t *err, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));
void aspen_error_clear(aspen_error_t *err);
/* Converters from the dependencies' error shapes. */
void aspen_error_from_bson_error(aspen_error_t *err,
                                 const bson_error_t *berr);
/* Appends {ok: 0.0, errmsg, code, codeName} to `doc`. */
void aspen_error_append_reply(bson_t *doc, const aspen_error_t *err);

/* ------------------------------------------------------------------------ */
/* Logging: mongod's structured JSON line format, one line per event         */
/* ------------------------------------------------------------------------ */

typedef enum {
   ASPEN_LOG_ERROR = 0,
   ASPEN_LOG_WARNING = 1,
   ASPEN_LOG_INFO = 2,
   ASPEN_LOG_DEBUG = 3,
} aspen_log_level_t;

/* Sets the most verbose level written (default INFO) and the stream (default
 * stdout). Call before other threads start. */
void aspen_log_set_level(aspen_log_level_t level);
void aspen_log_set_stream(FILE *stream);
bool aspen_log_enabled(aspen_log_level_t level);

/* Writes {"t":{"$date":...},"s":"I","c":component,"id":id,"ctx":ctx,
 * "msg":msg,"attr":{...}} as one line. `attr` may be NULL. Thread-safe. */
void aspen_log(aspen_log_level_t level, const char *component, int32_t id,
               const char *ctx, const char *msg, const bson_t *attr);
/* Copies up to `max` of the most recent log lines (oldest first, without the
 * trailing newline) into `out` as strings; returns how many and sets *total
 * to the number of lines written since start. The caller frees each line and
 * the array with aspen_log_recent_free. Thread-safe. */
size_t aspen_log_recent(char ***out, size_t max, uint64_t *total);
void aspen_log_recent_free(char **lines, size_t n);

/* The same with a printf-formatted message and no attributes. */
void aspen_logf(aspen_log_level_t level, const char *component,
                const char *ctx, const char *fmt, ...)
   __attribute__((format(printf, 4, 5)));

/* ------------------------------------------------------------------------ */
/* Wire protocol                                                             */
/* ------------------------------------------------------------------------ */

enum {
   ASPEN_OP_REPLY = 1,
   ASPEN_OP_UPDATE = 2001,
   ASPEN_OP_INSERT = 2002,
   ASPEN_OP_QUERY = 2004,
   ASPEN_OP_GET_MORE = 2005,
   ASPEN_OP_DELETE = 2006,
   ASPEN_OP_KILL_CURSORS = 2007,
   ASPEN_OP_COMPRESSED = 2012,
   ASPEN_OP_MSG = 2013,
};

#define ASPEN_WIRE_HEADER_LEN 16
/* Largest message aspen accepts or sends (maxMessageSizeBytes). */
#define ASPEN_WIRE_MAX_MESSAGE_LEN 48000000
/* Largest user document (maxBsonObjectSize). */
#define ASPEN_WIRE_MAX_BSON_LEN (16 * 1024 * 1024)
/* Commands may exceed a user document by this much, as on mongod. */
#define ASPEN_WIRE_MAX_COMMAND_LEN (ASPEN_WIRE_MAX_BSON_LEN + 16 * 1024)

/* OP_MSG flag bits. */
#define ASPEN_OP_MSG_CHECKSUM_PRESENT 0x1u
#define ASPEN_OP_MSG_MORE_TO_COME 0x2u
#define ASPEN_OP_MSG_EXHAUST_ALLOWED 0x10000u

typedef enum {
   ASPEN_PARSE_OK = 0,
   ASPEN_PARSE_NEED_MORE = -2,
   ASPEN_PARSE_ERROR = -1,
} aspen_parse_result_t;

/* One complete frame: the header fields and a view of the bytes after the
 * 16-byte header. */
typedef struct {
   int32_t message_length;
   int32_t request_id;
   int32_t response_to;
   int32_t op_code;
   const uint8_t *body; /* message_length - 16 bytes */
   size_t body_len;
} aspen_frame_t;

/* Looks for one frame at the start of `data`.
 * - NEED_MORE: fewer than 16 bytes, or fewer than messageLength bytes; `out`
 *   has the header fields if 16 bytes were there (so a caller can see the
 *   announced length early), else zeros.
 * - ERROR: messageLength outside [16 + 1, max_len]; `err` says why. The
 *   connection cannot be resynchronised after this.
 * - OK: `out` describes the frame, which is out->message_length bytes long. */
aspen_parse_result_t aspen_frame_parse(const uint8_t *data, size_t len,
                                       size_t max_len, aspen_frame_t *out,
                                       aspen_error_t *err);

#define ASPEN_OP_MSG_MAX_SEQUENCES 8

/* A kind-1 section: a named run of BSON documents (views). */
typedef struct {
   const char *identifier; /* NUL-terminated, inside the frame */
   const uint8_t *docs;
   size_t len;
   uint32_t count;
} aspen_doc_seq_t;

/* A decoded OP_MSG. `body` is a static bson_t over the frame's bytes. */
typedef struct {
   uint32_t flags;
   bson_t body;
   size_t n_seqs;
   aspen_doc_seq_t seqs[ASPEN_OP_MSG_MAX_SEQUENCES];
   bool has_checksum;
   uint32_t checksum;
} aspen_op_msg_t;

/* Decodes the frame's body as OP_MSG: flag bits (unknown required bits are
 * errors), exactly one kind-0 section, any kind-1 sections, the CRC-32C
 * checksum verified when present. Every document is validated with
 * bson_validate before it is exposed. Returns false with `err` set (code
 * ProtocolError / InvalidBSON / BSONObjectTooLarge) on any malformation; `msg`
 * is left zeroed then. */
bool aspen_op_msg_parse(const aspen_frame_t *frame, aspen_op_msg_t *msg,
                        aspen_error_t *err);

/* Builds the command document: the body with each document sequence merged
 * in as an array field named by its identifier. `out` is initialised by the
 * callee. When there are no sequences it is a static view of the body (no
 * copy) and *owned is false; otherwise *owned is true and the caller must
 * bson_destroy it. Fails (err set) if a sequence name duplicates a body key
 * or another sequence's name, or if the result would exceed
 * ASPEN_WIRE_MAX_MESSAGE_LEN; `out` is then an empty document that needs no
 * bson_destroy (though calling it is harmless). */
bool aspen_op_msg_command(const aspen_op_msg_t *msg, bson_t *out, bool *owned,
                          aspen_error_t *err);

/* A decoded legacy OP_QUERY (only used for the first hello of a
 * connection). `query` is a static view; `collection` points into the frame. */
typedef struct {
   int32_t flags;
   const char *collection;
   int32_t number_to_skip;
   int32_t number_to_return;
   bson_t query;
   bool has_fields;
   bson_t fields;
} aspen_op_query_t;

bool aspen_op_query_parse(const aspen_frame_t *frame, aspen_op_query_t *q,
                          aspen_error_t *err);

/* Appends a complete OP_MSG reply (flags 0, one kind-0 section) to `out`. */
void aspen_reply_op_msg(aspen_buf_t *out, int32_t request_id,
                        int32_t response_to, const bson_t *doc);
/* Appends a complete OP_REPLY with one document to `out`. */
void aspen_reply_op_reply(aspen_buf_t *out, int32_t request_id,
                          int32_t response_to, int32_t response_flags,
                          const bson_t *doc);

/* CRC-32C (Castagnoli), as used by OP_MSG checksums. */
uint32_t aspen_crc32c(uint32_t crc, const uint8_t *data, size_t len);

#endif /* ASPEN_WIRE_H */
