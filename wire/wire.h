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
#include <stdio.h>

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
/* Clocks (clock.c)                                                          */
/* ------------------------------------------------------------------------ */

/* Wall-clock time in milliseconds since the Unix epoch (CLOCK_REALTIME):
 * for what users see (dates, listings, stats, event times). */
int64_t aspen_clock_now_ms(void);
/* Monotonic time in milliseconds (CLOCK_MONOTONIC), from an arbitrary
 * start: for intervals and timeouts, which a step of the wall clock must
 * not stretch or cut short. */
int64_t aspen_clock_mono_ms(void);

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
/* Appends what is left of `f` (read to EOF, closed by the caller), stopping
 * after at most `max` bytes. Returns false if the file was longer than that
 * or a read failed. */
bool aspen_buf_read_file(aspen_buf_t *buf, FILE *f, size_t max);
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
   X(45, Overflow)                                                             \
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
   X(139, JSInterpreterFailure)                                                \
   X(141, SSLHandshakeFailed)                                                  \
   X(146, ExceededMemoryLimit)                                                 \
   X(168, InvalidPipelineOperator)                                             \
   X(202, NetworkInterfaceExceededTimeLimit)                                   \
   X(241, ConversionFailure)                                                   \
   X(262, ExceededTimeLimit)                                                   \
   X(334, TooManyLogicalSessions)                                              \
   X(352, UnsupportedOpQueryCommand)                                           \
   X(354, LoadBalancerSupportMismatch)                                         \
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
   X(443, StreamProcessorS3ConnectionError)                                    \
   X(444, StreamProcessorS3Error)                                              \
   X(448, StreamProcessorInvalidNamespace)                                     \
   X(460, StreamProcessorKinesisConnectionError)                               \
   X(461, StreamProcessorKinesisError)                                         \
   X(10334, BSONObjectTooLarge)                                                \
   X(11601, Interrupted)                                                       \
   /* Location codes raised by aggregation expressions (engine/expr*.c);     */\
   /* mongod reports their codeName as "Location<code>".                     */\
   X(10065, Location10065)                                                     \
   X(15948, Location15948)                                                     \
   X(15983, Location15983)                                                     \
   X(15998, Location15998)                                                     \
   X(16006, Location16006)                                                     \
   X(16007, Location16007)                                                     \
   X(16020, Location16020)                                                     \
   X(16034, Location16034)                                                     \
   X(16035, Location16035)                                                     \
   X(16406, Location16406)                                                     \
   X(16410, Location16410)                                                     \
   X(16412, Location16412)                                                     \
   X(16419, Location16419)                                                     \
   X(16610, Location16610)                                                     \
   X(16611, Location16611)                                                     \
   X(16612, Location16612)                                                     \
   X(16702, Location16702)                                                     \
   X(16866, Location16866)                                                     \
   X(16867, Location16867)                                                     \
   X(16868, Location16868)                                                     \
   X(16869, Location16869)                                                     \
   X(16870, Location16870)                                                     \
   X(16871, Location16871)                                                     \
   X(16872, Location16872)                                                     \
   X(16874, Location16874)                                                     \
   X(16875, Location16875)                                                     \
   X(16876, Location16876)                                                     \
   X(16877, Location16877)                                                     \
   X(16878, Location16878)                                                     \
   X(16879, Location16879)                                                     \
   X(16880, Location16880)                                                     \
   X(16882, Location16882)                                                     \
   X(16883, Location16883)                                                     \
   X(17040, Location17040)                                                     \
   X(17041, Location17041)                                                     \
   X(17042, Location17042)                                                     \
   X(17043, Location17043)                                                     \
   X(17044, Location17044)                                                     \
   X(17045, Location17045)                                                     \
   X(17046, Location17046)                                                     \
   X(17047, Location17047)                                                     \
   X(17048, Location17048)                                                     \
   X(17049, Location17049)                                                     \
   X(17080, Location17080)                                                     \
   X(17081, Location17081)                                                     \
   X(17082, Location17082)                                                     \
   X(17083, Location17083)                                                     \
   X(17124, Location17124)                                                     \
   X(17276, Location17276)                                                     \
   X(17307, Location17307)                                                     \
   X(17308, Location17308)                                                     \
   X(18533, Location18533)                                                     \
   X(18534, Location18534)                                                     \
   X(18535, Location18535)                                                     \
   X(18536, Location18536)                                                     \
   X(18537, Location18537)                                                     \
   X(18628, Location18628)                                                     \
   X(18629, Location18629)                                                     \
   X(28646, Location28646)                                                     \
   X(28647, Location28647)                                                     \
   X(28648, Location28648)                                                     \
   X(28650, Location28650)                                                     \
   X(28651, Location28651)                                                     \
   X(28656, Location28656)                                                     \
   X(28657, Location28657)                                                     \
   X(28664, Location28664)                                                     \
   X(28667, Location28667)                                                     \
   X(28680, Location28680)                                                     \
   X(28689, Location28689)                                                     \
   X(28690, Location28690)                                                     \
   X(28691, Location28691)                                                     \
   X(28714, Location28714)                                                     \
   X(28724, Location28724)                                                     \
   X(28725, Location28725)                                                     \
   X(28726, Location28726)                                                     \
   X(28727, Location28727)                                                     \
   X(28728, Location28728)                                                     \
   X(28729, Location28729)                                                     \
   X(28756, Location28756)                                                     \
   X(28757, Location28757)                                                     \
   X(28758, Location28758)                                                     \
   X(28759, Location28759)                                                     \
   X(28761, Location28761)                                                     \
   X(28762, Location28762)                                                     \
   X(28763, Location28763)                                                     \
   X(28764, Location28764)                                                     \
   X(28765, Location28765)                                                     \
   X(28766, Location28766)                                                     \
   X(31022, Location31022)                                                     \
   X(31023, Location31023)                                                     \
   X(31024, Location31024)                                                     \
   X(31034, Location31034)                                                     \
   X(31095, Location31095)                                                     \
   X(31393, Location31393)                                                     \
   X(34435, Location34435)                                                     \
   X(34443, Location34443)                                                     \
   X(34444, Location34444)                                                     \
   X(34445, Location34445)                                                     \
   X(34446, Location34446)                                                     \
   X(34447, Location34447)                                                     \
   X(34448, Location34448)                                                     \
   X(34449, Location34449)                                                     \
   X(34450, Location34450)                                                     \
   X(34451, Location34451)                                                     \
   X(34452, Location34452)                                                     \
   X(34453, Location34453)                                                     \
   X(34454, Location34454)                                                     \
   X(34455, Location34455)                                                     \
   X(34456, Location34456)                                                     \
   X(34458, Location34458)                                                     \
   X(34460, Location34460)                                                     \
   X(34461, Location34461)                                                     \
   X(34462, Location34462)                                                     \
   X(34463, Location34463)                                                     \
   X(34464, Location34464)                                                     \
   X(34465, Location34465)                                                     \
   X(34466, Location34466)                                                     \
   X(34467, Location34467)                                                     \
   X(34468, Location34468)                                                     \
   X(34471, Location34471)                                                     \
   X(34473, Location34473)                                                     \
   X(40060, Location40060)                                                     \
   X(40061, Location40061)                                                     \
   X(40062, Location40062)                                                     \
   X(40063, Location40063)                                                     \
   X(40064, Location40064)                                                     \
   X(40065, Location40065)                                                     \
   X(40066, Location40066)                                                     \
   X(40067, Location40067)                                                     \
   X(40068, Location40068)                                                     \
   X(40075, Location40075)                                                     \
   X(40076, Location40076)                                                     \
   X(40077, Location40077)                                                     \
   X(40078, Location40078)                                                     \
   X(40079, Location40079)                                                     \
   X(40080, Location40080)                                                     \
   X(40081, Location40081)                                                     \
   X(40085, Location40085)                                                     \
   X(40086, Location40086)                                                     \
   X(40087, Location40087)                                                     \
   X(40090, Location40090)                                                     \
   X(40091, Location40091)                                                     \
   X(40092, Location40092)                                                     \
   X(40093, Location40093)                                                     \
   X(40094, Location40094)                                                     \
   X(40095, Location40095)                                                     \
   X(40096, Location40096)                                                     \
   X(40097, Location40097)                                                     \
   X(40176, Location40176)                                                     \
   X(40352, Location40352)                                                     \
   X(40386, Location40386)                                                     \
   X(40390, Location40390)                                                     \
   X(40391, Location40391)                                                     \
   X(40392, Location40392)                                                     \
   X(40393, Location40393)                                                     \
   X(40394, Location40394)                                                     \
   X(40395, Location40395)                                                     \
   X(40396, Location40396)                                                     \
   X(40397, Location40397)                                                     \
   X(40398, Location40398)                                                     \
   X(40400, Location40400)                                                     \
   X(40485, Location40485)                                                     \
   X(40489, Location40489)                                                     \
   X(40515, Location40515)                                                     \
   X(40516, Location40516)                                                     \
   X(40517, Location40517)                                                     \
   X(40518, Location40518)                                                     \
   X(40519, Location40519)                                                     \
   X(40520, Location40520)                                                     \
   X(40521, Location40521)                                                     \
   X(40522, Location40522)                                                     \
   X(40523, Location40523)                                                     \
   X(40524, Location40524)                                                     \
   X(40525, Location40525)                                                     \
   X(40535, Location40535)                                                     \
   X(40536, Location40536)                                                     \
   X(40539, Location40539)                                                     \
   X(40540, Location40540)                                                     \
   X(40541, Location40541)                                                     \
   X(40542, Location40542)                                                     \
   X(40684, Location40684)                                                     \
   X(50694, Location50694)                                                     \
   X(50695, Location50695)                                                     \
   X(50696, Location50696)                                                     \
   X(50697, Location50697)                                                     \
   X(50698, Location50698)                                                     \
   X(50699, Location50699)                                                     \
   X(50700, Location50700)                                                     \
   X(50723, Location50723)                                                     \
   X(50752, Location50752)                                                     \
   X(50989, Location50989)                                                     \
   X(51044, Location51044)                                                     \
   X(51080, Location51080)                                                     \
   X(51081, Location51081)                                                     \
   X(51082, Location51082)                                                     \
   X(51083, Location51083)                                                     \
   X(51103, Location51103)                                                     \
   X(51104, Location51104)                                                     \
   X(51105, Location51105)                                                     \
   X(51106, Location51106)                                                     \
   X(51107, Location51107)                                                     \
   X(51108, Location51108)                                                     \
   X(51109, Location51109)                                                     \
   X(51110, Location51110)                                                     \
   X(51111, Location51111)                                                     \
   X(51156, Location51156)                                                     \
   X(51276, Location51276)                                                     \
   X(51744, Location51744)                                                     \
   X(51745, Location51745)                                                     \
   X(51746, Location51746)                                                     \
   X(51747, Location51747)                                                     \
   X(51748, Location51748)                                                     \
   X(51749, Location51749)                                                     \
   X(51750, Location51750)                                                     \
   X(51751, Location51751)                                                     \
   X(327391, Location327391)                                                   \
   X(327392, Location327392)                                                   \
   X(1257300, Location1257300)                                                 \
   X(2942500, Location2942500)                                                 \
   X(2942501, Location2942501)                                                 \
   X(2942502, Location2942502)                                                 \
   X(2942503, Location2942503)                                                 \
   X(2942504, Location2942504)                                                 \
   X(2942505, Location2942505)                                                 \
   X(2942506, Location2942506)                                                 \
   X(2942507, Location2942507)                                                 \
   X(3041701, Location3041701)                                                 \
   X(3041702, Location3041702)                                                 \
   X(3041703, Location3041703)                                                 \
   X(4161100, Location4161100)                                                 \
   X(4161101, Location4161101)                                                 \
   X(4161102, Location4161102)                                                 \
   X(4161103, Location4161103)                                                 \
   X(4161105, Location4161105)                                                 \
   X(4161106, Location4161106)                                                 \
   X(4161107, Location4161107)                                                 \
   X(4161108, Location4161108)                                                 \
   X(4161109, Location4161109)                                                 \
   X(4940400, Location4940400)                                                 \
   X(4940401, Location4940401)                                                 \
   X(5166301, Location5166301)                                                 \
   X(5166302, Location5166302)                                                 \
   X(5166303, Location5166303)                                                 \
   X(5166304, Location5166304)                                                 \
   X(5166305, Location5166305)                                                 \
   X(5166307, Location5166307)                                                 \
   X(5166400, Location5166400)                                                 \
   X(5166401, Location5166401)                                                 \
   X(5166402, Location5166402)                                                 \
   X(5166403, Location5166403)                                                 \
   X(5166404, Location5166404)                                                 \
   X(5166405, Location5166405)                                                 \
   X(5439007, Location5439007)                                                 \
   X(5439008, Location5439008)                                                 \
   X(5439009, Location5439009)                                                 \
   X(5439010, Location5439010)                                                 \
   X(5439012, Location5439012)                                                 \
   X(5439013, Location5439013)                                                 \
   X(5439014, Location5439014)                                                 \
   X(5439015, Location5439015)                                                 \
   X(5439016, Location5439016)                                                 \
   X(5439017, Location5439017)                                                 \
   X(5439018, Location5439018)                                                 \
   X(5654600, Location5654600)                                                 \
   X(5654601, Location5654601)                                                 \
   X(5654602, Location5654602)                                                 \
   X(5687301, Location5687301)                                                 \
   X(5687302, Location5687302)                                                 \
   X(5733415, Location5733415)                                                 \
   X(5787900, Location5787900)                                                 \
   X(5787901, Location5787901)                                                 \
   X(5787902, Location5787902)                                                 \
   X(5787906, Location5787906)                                                 \
   X(5787907, Location5787907)                                                 \
   X(5787908, Location5787908)                                                 \
   X(5788200, Location5788200)                                                 \
   X(5976500, Location5976500)                                                 \
   X(6045000, Location6045000)                                                 \
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

/* The codeName for a server code. A code of 10000 or more that is not
 * in the table above is an assertion location, which mongod names
 * "Location<code>" (the text lives in a thread-local buffer, valid until the
 * next call on the same thread); "UnknownError" for a smaller code aspen does
 * not know. Never NULL. */
const char *aspen_error_code_name(int32_t code);
void aspen_error_set(aspen_error_t *err, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));
void aspen_error_clear(aspen_error_t *err);
/* Converters from the dependencies' error shapes. */
void aspen_error_from_bson_error(aspen_error_t *err,
                                 const bson_error_t *berr);
/* Appends {ok: 0.0, errmsg, code, codeName} to `doc`. The message goes
 * through aspen_utf8_scrub first, so a reply never carries invalid UTF-8
 * (a message cut at ASPEN_ERROR_MSG_MAX may end inside a character). */
void aspen_error_append_reply(bson_t *doc, const aspen_error_t *err);
/* Makes the NUL-terminated `s` valid UTF-8 in place: each byte that does not
 * start a well-formed sequence (overlong forms, surrogates and code points
 * past U+10FFFF included) becomes '?'. Returns true when it changed
 * anything. Any thread. */
bool aspen_utf8_scrub(char *s);
/* The length (1 to 4) of the well-formed UTF-8 character at the start of
 * the `len` bytes at `s`, or 0 when they do not start with one (a stray
 * continuation byte, an overlong form, a surrogate, a code point above
 * U+10FFFF, a truncated sequence) or `len` is 0. */
size_t aspen_utf8_char_len(const uint8_t *s, size_t len);

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

/* Appends `doc` to `out` as one line of compact JSON, as log lines' attr
 * are written: JSON literals for strings, numbers, booleans, null,
 * documents and arrays, relaxed Extended JSON for other types, and each
 * byte of a string or key that is not well-formed UTF-8 as \ufffd. Never
 * fails, so whatever a client put in a name reaches the log. */
void aspen_json_append_doc(bson_string_t *out, const bson_t *doc);

/* ---- secrets (redact.c) --------------------------------------------------- */

/* What a secret's value is replaced by wherever aspen shows settings. */
#define ASPEN_REDACTED "<redacted>"

/* True when a MongoDB URI option or a librdkafka property called `name`
 * (case-insensitive) holds a secret: the clients' own lists of sensitive
 * settings (tlsCertificateKeyFilePassword, proxyPassword, sasl.password,
 * sasl.oauthbearer.config, ssl.key.pem, ...) and any name holding
 * "password", "passphrase", "secret", "token", "credential", "private" or
 * "jaas". */
bool aspen_secret_name(const char *name);

/* Writes `uri` fit for logs and listings into `out` (at most size - 1
 * bytes, always NUL-terminated): the userinfo ("user:password@") becomes
 * "<redacted>@", the value of each secret query option (aspen_secret_name)
 * becomes "<redacted>", and in authMechanismProperties every property but
 * the plain settings (SERVICE_NAME, ENVIRONMENT, ...) has its value
 * replaced, e.g. AWS_SESSION_TOKEN:<redacted>. A string without "://" is
 * copied as it is. Any thread. */
void aspen_uri_redact(const char *uri, char *out, size_t size);

/* Appends `s` to `out` as a Prometheus label value: backslash, double
 * quote and newline escaped (prom.c). Any thread. */
void aspen_prom_label_value(bson_string_t *out, const char *s);

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

/* Command reply bodies. aspen_reply_error appends {ok: 0.0, errmsg (from
 * `fmt`), code, codeName} to `reply`, as aspen_error_append_reply does for
 * an aspen_error_t; aspen_reply_ok appends {ok: 1.0}. */
void aspen_reply_error(bson_t *reply, int32_t code, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));
void aspen_reply_ok(bson_t *reply);

/* A borrowed view of the document or array `it` is on (a static bson_t,
 * valid while the bytes it points into are): true, or false (out
 * untouched) when it holds something else. */
bool aspen_bson_view(const bson_iter_t *it, bson_t *out);
/* The string value of field `key` of `doc` (borrowed), or NULL when there
 * is none or it is not a string. */
const char *aspen_bson_utf8(const bson_t *doc, const char *key);
/* The number in field `key` of `doc` as an int64 (bson_iter_as_int64), or
 * `dflt` when there is none or it is not a number. */
int64_t aspen_bson_int64(const bson_t *doc, const char *key, int64_t dflt);

/* CRC-32C (Castagnoli), as used by OP_MSG checksums. */
uint32_t aspen_crc32c(uint32_t crc, const uint8_t *data, size_t len);

#endif /* ASPEN_WIRE_H */
