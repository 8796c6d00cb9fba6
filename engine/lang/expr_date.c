/*
 * expr_date.c - date expression operators and the calendar/timezone support
 * they share: the date-part operators ($year ... $isoDayOfWeek),
 * $dateToString, $dateFromString, $dateFromParts, $dateToParts, $dateTrunc,
 * $dateAdd, $dateSubtract and $dateDiff.
 *
 * Dates are milliseconds since the Unix epoch (UTC), proleptic Gregorian,
 * computed with integer civil-date arithmetic (no libc time functions, so no
 * TZ environment and no locks). Timezones are "UTC"/"GMT", fixed offsets
 * ("+02:00", "-0530", "+03") and Olson names read once from the system's
 * zoneinfo files (TZif v2, with the POSIX rule in the footer for instants
 * after the last transition). Parsed zones are cached for the life of the
 * process; the cache is guarded by a mutex, lookups happen at most once per
 * evaluation (constant timezones are resolved at compile time).
 */
#include "lang/expr_args.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#define MS_PER_DAY 86400000LL
#define MS_PER_HOUR 3600000LL
#define MS_PER_MIN 60000LL

static int64_t
floordiv(int64_t a, int64_t b)
{
   int64_t q = a / b;
   if ((a % b != 0) && ((a < 0) != (b < 0))) {
      q--;
   }
   return q;
}

/* b > 0; never overflows, unlike a - floordiv(a, b) * b. */
static int64_t
floormod(int64_t a, int64_t b)
{
   int64_t r = a % b;
   return r < 0 ? r + b : r;
}

/* Saturating arithmetic: dates at the ends of the int64 range must not
 * overflow (signed overflow is undefined) when an offset is applied. */
static int64_t
sat_add(int64_t a, int64_t b)
{
   int64_t r;
   if (__builtin_add_overflow(a, b, &r)) {
      return b > 0 ? INT64_MAX : INT64_MIN;
   }
   return r;
}

static int64_t
sat_sub(int64_t a, int64_t b)
{
   int64_t r;
   if (__builtin_sub_overflow(a, b, &r)) {
      return b < 0 ? INT64_MAX : INT64_MIN;
   }
   return r;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (any month/day
 * overflow must be normalized by the caller). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
   y -= m <= 2;
   int64_t era = floordiv(y, 400);
   int64_t yoe = y - era * 400;
   int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
   int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
   return era * 146097 + doe - 719468;
}

static void
civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
   z += 719468;
   int64_t era = floordiv(z, 146097);
   int64_t doe = z - era * 146097;
   int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
   int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
   int64_t mp = (5 * doy + 2) / 153;
   *d = (int) (doy - (153 * mp + 2) / 5 + 1);
   *m = (int) (mp < 10 ? mp + 3 : mp - 9);
   *y = yoe + era * 400 + (*m <= 2);
}

static bool
is_leap(int64_t y)
{
   return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
month_days(int64_t y, int m)
{
   static const int md[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
   return m == 2 && is_leap(y) ? 29 : md[m - 1];
}

/* 0 = Sunday. */
static int
weekday_of_days(int64_t days)
{
   return (int) floormod(days + 4, 7);
}

typedef struct {
   int64_t year;
   int month, day, hour, minute, second, ms;
   int yday; /* 1-based */
   int wday; /* 0 = Sunday */
   int64_t days;
} parts_t;

static void
split(int64_t local_ms, parts_t *p)
{
   int64_t days = floordiv(local_ms, MS_PER_DAY);
   int64_t rem = floormod(local_ms, MS_PER_DAY);
   civil_from_days(days, &p->year, &p->month, &p->day);
   p->days = days;
   p->hour = (int) (rem / MS_PER_HOUR);
   p->minute = (int) (rem / MS_PER_MIN % 60);
   p->second = (int) (rem / 1000 % 60);
   p->ms = (int) (rem % 1000);
   p->yday = (int) (days - days_from_civil(p->year, 1, 1)) + 1;
   p->wday = weekday_of_days(days);
}

static int
iso_weeks_in_year(int64_t y)
{
   int64_t p = floormod(y + floordiv(y, 4) - floordiv(y, 100) + floordiv(y, 400),
                        7);
   int64_t q = floormod((y - 1) + floordiv(y - 1, 4) - floordiv(y - 1, 100) +
                           floordiv(y - 1, 400),
                        7);
   return p == 4 || q == 3 ? 53 : 52;
}

static void
iso_week(const parts_t *p, int64_t *iso_year, int *week, int *iso_wday)
{
   int wd = (p->wday + 6) % 7 + 1; /* Monday = 1 */
   int w = (p->yday - wd + 10) / 7;
   int64_t y = p->year;
   if (w < 1) {
      y--;
      w = iso_weeks_in_year(y);
   } else if (w > iso_weeks_in_year(y)) {
      y++;
      w = 1;
   }
   *iso_year = y;
   *week = w;
   *iso_wday = wd;
}

/* Days since the epoch of Monday of ISO week 1 of `y`. */
static int64_t
iso_year_start(int64_t y)
{
   int64_t jan4 = days_from_civil(y, 1, 4);
   return jan4 - (weekday_of_days(jan4) + 6) % 7;
}

bool
aspen__coerce_date(const aspen_value_t *val, int64_t *ms)
{
   switch (aspen__vt(val)) {
   case BSON_TYPE_DATE_TIME:
      *ms = val->v.value.v_datetime;
      return true;
   case BSON_TYPE_TIMESTAMP:
      *ms = (int64_t) val->v.value.v_timestamp.timestamp * 1000;
      return true;
   case BSON_TYPE_OID:
      *ms = (int64_t) bson_oid_get_time_t(&val->v.value.v_oid) * 1000;
      return true;
   default:
      *ms = 0;
      return false;
   }
}

/* ------------------------------------------------------------------------ */
/* Timezones                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct {
   char kind; /* 'M', 'J' or 'n' */
   int m, w, d;
   int32_t time; /* seconds after local midnight */
} tz_rule_t;

struct aspen__tz {
   char name[64];
   bool utc;
   bool fixed;
   int64_t fixed_ms;
   /* TZif data (seconds). */
   uint32_t n_trans;
   int64_t *trans;
   uint8_t *idx;
   uint32_t n_types;
   int32_t *type_off;
   /* POSIX footer rule. */
   bool has_rule;
   bool rule_dst;
   int32_t std_off, dst_off; /* seconds east of UTC */
   tz_rule_t start, end;
   struct aspen__tz *next;
};

static aspen__tz_t tz_utc = {.name = "UTC", .utc = true, .fixed = true};
static pthread_mutex_t tz_lock = PTHREAD_MUTEX_INITIALIZER;
static aspen__tz_t *tz_cache;

const aspen__tz_t *
aspen__tz_utc(void)
{
   return &tz_utc;
}

bool
aspen__tz_is_utc(const aspen__tz_t *tz)
{
   return tz->utc || (tz->fixed && tz->fixed_ms == 0);
}

static int64_t
rule_day(const tz_rule_t *r, int64_t y)
{
   if (r->kind == 'J') {
      /* 1..365, February 29 never counted. */
      int64_t d = days_from_civil(y, 1, 1) + r->d - 1;
      if (is_leap(y) && r->d >= 60) {
         d++;
      }
      return d;
   }
   if (r->kind == 'n') {
      return days_from_civil(y, 1, 1) + r->d;
   }
   int64_t first = days_from_civil(y, r->m, 1);
   int wd = weekday_of_days(first);
   int day = 1 + (r->d - wd + 7) % 7 + (r->w - 1) * 7;
   while (day > month_days(y, r->m)) {
      day -= 7;
   }
   return first + day - 1;
}

static int64_t
rule_offset(const aspen__tz_t *tz, int64_t s)
{
   if (!tz->rule_dst) {
      return tz->std_off;
   }
   int64_t y;
   int m, d;
   civil_from_days(floordiv(s + tz->std_off, 86400), &y, &m, &d);
   int64_t start =
      rule_day(&tz->start, y) * 86400 + tz->start.time - tz->std_off;
   int64_t end = rule_day(&tz->end, y) * 86400 + tz->end.time - tz->dst_off;
   bool dst = start < end ? (s >= start && s < end) : !(s >= end && s < start);
   return dst ? tz->dst_off : tz->std_off;
}

int64_t
aspen__tz_offset(const aspen__tz_t *tz, int64_t ms)
{
   if (tz->fixed) {
      return tz->fixed_ms;
   }
   int64_t s = floordiv(ms, 1000);
   if (tz->n_trans == 0 || s < tz->trans[0]) {
      if (tz->n_trans == 0 && tz->has_rule) {
         return rule_offset(tz, s) * 1000;
      }
      return tz->n_types ? (int64_t) tz->type_off[0] * 1000 : 0;
   }
   if (s >= tz->trans[tz->n_trans - 1] && tz->has_rule) {
      return rule_offset(tz, s) * 1000;
   }
   uint32_t lo = 0, hi = tz->n_trans;
   while (hi - lo > 1) {
      uint32_t mid = (lo + hi) / 2;
      if (tz->trans[mid] <= s) {
         lo = mid;
      } else {
         hi = mid;
      }
   }
   uint8_t t = tz->idx[lo];
   return t < tz->n_types ? (int64_t) tz->type_off[t] * 1000 : 0;
}

/* UTC instant -> local wall time. */
static int64_t
to_local(const aspen__tz_t *tz, int64_t ms)
{
   return sat_add(ms, aspen__tz_offset(tz, ms));
}

/* Local wall time -> UTC instant. */
static int64_t
local_to_utc(const aspen__tz_t *tz, int64_t local)
{
   if (tz->fixed) {
      return sat_sub(local, tz->fixed_ms);
   }
   int64_t off1 = aspen__tz_offset(tz, local);
   int64_t utc = sat_sub(local, off1);
   int64_t off2 = aspen__tz_offset(tz, utc);
   if (off2 != off1) {
      int64_t utc2 = sat_sub(local, off2);
      if (aspen__tz_offset(tz, utc2) == off2) {
         utc = utc2;
      }
   }
   return utc;
}

static bool
parse_offset(const char *s, size_t len, int64_t *ms)
{
   if (len < 3 || (s[0] != '+' && s[0] != '-')) {
      return false;
   }
   int sign = s[0] == '-' ? -1 : 1;
   int digits[4];
   size_t nd = 0;
   for (size_t i = 1; i < len; i++) {
      if (s[i] == ':' && i == 3) {
         continue;
      }
      if (s[i] < '0' || s[i] > '9' || nd == 4) {
         return false;
      }
      digits[nd++] = s[i] - '0';
   }
   if (nd != 2 && nd != 4) {
      return false;
   }
   if (len == 4 && s[3] == ':') {
      return false;
   }
   int h = digits[0] * 10 + digits[1];
   int m = nd == 4 ? digits[2] * 10 + digits[3] : 0;
   if (m > 59) {
      return false;
   }
   *ms = sign * ((int64_t) h * MS_PER_HOUR + (int64_t) m * MS_PER_MIN);
   return true;
}

/* --- TZif ------------------------------------------------------------- */

static uint32_t
be32(const uint8_t *p)
{
   return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 |
          (uint32_t) p[2] << 8 | p[3];
}

static int64_t
be64(const uint8_t *p)
{
   return (int64_t) ((uint64_t) be32(p) << 32 | be32(p + 4));
}

static const char *
posix_name(const char *p)
{
   if (*p == '<') {
      while (*p && *p != '>') {
         p++;
      }
      return *p ? p + 1 : NULL;
   }
   const char *s = p;
   while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')) {
      p++;
   }
   return p - s >= 3 ? p : NULL;
}

/* [+-]hh[:mm[:ss]] -> seconds. */
static const char *
posix_time(const char *p, int32_t *secs)
{
   int sign = 1;
   if (*p == '+' || *p == '-') {
      sign = *p == '-' ? -1 : 1;
      p++;
   }
   if (*p < '0' || *p > '9') {
      return NULL;
   }
   int32_t parts[3] = {0, 0, 0};
   for (int i = 0; i < 3; i++) {
      int32_t v = 0;
      if (*p < '0' || *p > '9') {
         return NULL;
      }
      while (*p >= '0' && *p <= '9') {
         v = v * 10 + (*p - '0');
         p++;
      }
      parts[i] = v;
      if (*p != ':') {
         break;
      }
      p++;
   }
   *secs = sign * (parts[0] * 3600 + parts[1] * 60 + parts[2]);
   return p;
}

static const char *
posix_rule(const char *p, tz_rule_t *r)
{
   r->time = 7200;
   if (*p == 'M') {
      r->kind = 'M';
      if (sscanf(p + 1, "%d.%d.%d", &r->m, &r->w, &r->d) != 3 || r->m < 1 ||
          r->m > 12 || r->w < 1 || r->w > 5 || r->d < 0 || r->d > 6) {
         return NULL;
      }
      p++;
      while ((*p >= '0' && *p <= '9') || *p == '.') {
         p++;
      }
   } else {
      r->kind = 'n';
      if (*p == 'J') {
         r->kind = 'J';
         p++;
      }
      if (*p < '0' || *p > '9') {
         return NULL;
      }
      r->d = 0;
      while (*p >= '0' && *p <= '9') {
         r->d = r->d * 10 + (*p - '0');
         p++;
      }
   }
   if (*p == '/') {
      p = posix_time(p + 1, &r->time);
   }
   return p;
}

static bool
parse_posix_tz(aspen__tz_t *tz, const char *s)
{
   const char *p = posix_name(s);
   int32_t off;
   if (!p || !(p = posix_time(p, &off))) {
      return false;
   }
   tz->std_off = -off;
   tz->has_rule = true;
   if (!*p) {
      tz->rule_dst = false;
      return true;
   }
   if (!(p = posix_name(p))) {
      return false;
   }
   tz->dst_off = tz->std_off + 3600;
   if (*p && *p != ',') {
      if (!(p = posix_time(p, &off))) {
         return false;
      }
      tz->dst_off = -off;
   }
   if (*p != ',') {
      return false;
   }
   if (!(p = posix_rule(p + 1, &tz->start)) || *p != ',' ||
       !(p = posix_rule(p + 1, &tz->end))) {
      return false;
   }
   tz->rule_dst = true;
   return true;
}

static bool
load_tzif(aspen__tz_t *tz, const char *name)
{
   char path[256];
   snprintf(path, sizeof path, "/usr/share/zoneinfo/%s", name);
   FILE *f = fopen(path, "rb");
   if (!f) {
      return false;
   }
   uint8_t *buf = NULL;
   size_t len = 0, cap = 0;
   for (;;) {
      if (len == cap) {
         cap = cap ? cap * 2 : 8192;
         if (cap > (1u << 22)) {
            break;
         }
         buf = aspen_xrealloc(buf, cap);
      }
      size_t n = fread(buf + len, 1, cap - len, f);
      if (n == 0) {
         break;
      }
      len += n;
   }
   fclose(f);
   bool ok = false;
   if (len < 44 || memcmp(buf, "TZif", 4) != 0 || buf[4] < '2') {
      goto done;
   }
   {
      const uint8_t *h = buf;
      size_t v1 = (size_t) be32(h + 32) * 5 + (size_t) be32(h + 36) * 6 +
                  be32(h + 40) + (size_t) be32(h + 28) * 8 + be32(h + 24) +
                  be32(h + 20);
      size_t off = 44 + v1;
      if (off + 44 > len || memcmp(buf + off, "TZif", 4) != 0) {
         goto done;
      }
      h = buf + off;
      uint32_t isut = be32(h + 20), isstd = be32(h + 24), leap = be32(h + 28);
      uint32_t timecnt = be32(h + 32), typecnt = be32(h + 36),
               charcnt = be32(h + 40);
      size_t need = (size_t) timecnt * 9 + (size_t) typecnt * 6 + charcnt +
                    (size_t) leap * 12 + isstd + isut;
      const uint8_t *p = h + 44;
      if ((size_t) (p - buf) + need > len || typecnt == 0 || typecnt > 256) {
         goto done;
      }
      tz->n_trans = timecnt;
      tz->trans = aspen_xcalloc(timecnt ? timecnt : 1, sizeof *tz->trans);
      tz->idx = aspen_xcalloc(timecnt ? timecnt : 1, 1);
      for (uint32_t i = 0; i < timecnt; i++) {
         tz->trans[i] = be64(p + 8 * (size_t) i);
      }
      p += (size_t) timecnt * 8;
      memcpy(tz->idx, p, timecnt);
      p += timecnt;
      tz->n_types = typecnt;
      tz->type_off = aspen_xcalloc(typecnt, sizeof *tz->type_off);
      for (uint32_t i = 0; i < typecnt; i++) {
         tz->type_off[i] = (int32_t) be32(p + 6 * (size_t) i);
      }
      p += (size_t) typecnt * 6 + charcnt + (size_t) leap * 12 + isstd + isut;
      /* Footer: "\n<POSIX TZ>\n". */
      if ((size_t) (p - buf) < len && *p == '\n') {
         const uint8_t *q = p + 1;
         const uint8_t *nl = memchr(q, '\n', len - (size_t) (q - buf));
         if (nl && nl > q && (size_t) (nl - q) < 128) {
            char rule[128];
            memcpy(rule, q, (size_t) (nl - q));
            rule[nl - q] = '\0';
            if (!parse_posix_tz(tz, rule)) {
               tz->has_rule = false;
            }
         }
      }
      ok = true;
   }
done:
   free(buf);
   return ok;
}

static bool
olson_name_ok(const char *s, size_t len)
{
   if (len == 0 || len >= 64 || s[0] == '/' || s[0] == '.') {
      return false;
   }
   for (size_t i = 0; i < len; i++) {
      char c = s[i];
      bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                (c >= '0' && c <= '9') || c == '/' || c == '_' || c == '-' ||
                c == '+';
      if (!ok || (c == '.' && i + 1 < len && s[i + 1] == '.')) {
         return false;
      }
   }
   return true;
}

const aspen__tz_t *
aspen__tz_parse(const char *name, size_t len, aspen_error_t *err)
{
   if ((len == 3 && memcmp(name, "UTC", 3) == 0) ||
       (len == 3 && memcmp(name, "GMT", 3) == 0) ||
       (len == 7 && memcmp(name, "Etc/UTC", 7) == 0) ||
       (len == 7 && memcmp(name, "Etc/GMT", 7) == 0)) {
      return &tz_utc;
   }
   int64_t off = 0;
   bool is_offset = parse_offset(name, len, &off);
   if (!is_offset && !olson_name_ok(name, len)) {
      aspen_error_set(err, 40485, "unrecognized time zone identifier: \"%.*s\"",
                      (int) (len > 100 ? 100 : len), name);
      return NULL;
   }
   pthread_mutex_lock(&tz_lock);
   for (aspen__tz_t *tz = tz_cache; tz; tz = tz->next) {
      if (strlen(tz->name) == len && memcmp(tz->name, name, len) == 0) {
         pthread_mutex_unlock(&tz_lock);
         return tz;
      }
   }
   aspen__tz_t *tz = aspen_xcalloc(1, sizeof *tz);
   memcpy(tz->name, name, len);
   tz->name[len] = '\0';
   if (is_offset) {
      tz->fixed = true;
      tz->fixed_ms = off;
   } else if (!load_tzif(tz, tz->name)) {
      pthread_mutex_unlock(&tz_lock);
      free(tz->trans);
      free(tz->idx);
      free(tz->type_off);
      free(tz);
      aspen_error_set(err, 40485, "unrecognized time zone identifier: \"%.*s\"",
                      (int) len, name);
      return NULL;
   }
   tz->next = tz_cache;
   tz_cache = tz;
   pthread_mutex_unlock(&tz_lock);
   return tz;
}

/* ------------------------------------------------------------------------ */
/* Formatting                                                                */
/* ------------------------------------------------------------------------ */

static const char *const month_abbr[] = {"Jan", "Feb", "Mar", "Apr",
                                         "May", "Jun", "Jul", "Aug",
                                         "Sep", "Oct", "Nov", "Dec"};
static const char *const month_full[] = {
   "January", "February", "March",     "April",   "May",      "June",
   "July",    "August",   "September", "October", "November", "December"};

/* Checks that every specifier of a format is one of `allowed`. */
static bool
validate_format(const char *fmt, size_t len, const char *allowed,
                aspen_error_t *err)
{
   for (size_t i = 0; i < len; i++) {
      if (fmt[i] != '%') {
         continue;
      }
      if (i + 1 == len) {
         aspen_error_set(err, 18535, "Unmatched '%%' at end of format string");
         return false;
      }
      char c = fmt[++i];
      if (!strchr(allowed, c) || c == '\0') {
         aspen_error_set(err, 18536,
                         "Invalid format character '%%%c' in format string",
                         c);
         return false;
      }
   }
   return true;
}

/* The specifiers of a $dateToString format. */
static bool
validate_to_format(const char *fmt, size_t len, aspen_error_t *err)
{
   return validate_format(fmt, len, "bBdGHjLmMSuUVwYzZ%", err);
}

static bool
put(char *buf, size_t cap, size_t *n, const char *s, size_t len)
{
   if (*n + len + 1 > cap) {
      return false;
   }
   memcpy(buf + *n, s, len);
   *n += len;
   buf[*n] = '\0';
   return true;
}

bool
aspen__date_format(int64_t ms, const char *fmt, size_t fmt_len,
                   const aspen__tz_t *tz, char *buf, size_t cap, size_t *len,
                   aspen_error_t *err)
{
   int64_t off = aspen__tz_offset(tz, ms);
   parts_t p;
   split(sat_add(ms, off), &p);
   size_t n = 0;
   buf[0] = '\0';
   if (!validate_to_format(fmt, fmt_len, err)) {
      return false;
   }
   for (size_t i = 0; i < fmt_len; i++) {
      char tmp[32];
      int64_t iy;
      int iw, iwd;
      if (fmt[i] != '%') {
         if (!put(buf, cap, &n, fmt + i, 1)) {
            goto too_long;
         }
         continue;
      }
      char c = fmt[++i];
      tmp[0] = '\0';
      switch (c) {
      case 'Y':
      case 'G':
         iy = p.year;
         if (c == 'G') {
            iso_week(&p, &iy, &iw, &iwd);
         }
         if (iy < 0 || iy > 9999) {
            aspen_error_set(err, 18537,
                            "Could not convert date to string: date component "
                            "was outside the supported range of 0-9999: %" PRId64,
                            iy);
            return false;
         }
         snprintf(tmp, sizeof tmp, "%04d", (int) iy);
         break;
      case 'm':
         snprintf(tmp, sizeof tmp, "%02d", p.month);
         break;
      case 'd':
         snprintf(tmp, sizeof tmp, "%02d", p.day);
         break;
      case 'H':
         snprintf(tmp, sizeof tmp, "%02d", p.hour);
         break;
      case 'M':
         snprintf(tmp, sizeof tmp, "%02d", p.minute);
         break;
      case 'S':
         snprintf(tmp, sizeof tmp, "%02d", p.second);
         break;
      case 'L':
         snprintf(tmp, sizeof tmp, "%03d", p.ms);
         break;
      case 'j':
         snprintf(tmp, sizeof tmp, "%03d", p.yday);
         break;
      case 'w':
         snprintf(tmp, sizeof tmp, "%d", p.wday + 1);
         break;
      case 'u':
         iso_week(&p, &iy, &iw, &iwd);
         snprintf(tmp, sizeof tmp, "%d", iwd);
         break;
      case 'U':
         snprintf(tmp, sizeof tmp, "%02d", (p.yday - 1 + 7 - p.wday) / 7);
         break;
      case 'V':
         iso_week(&p, &iy, &iw, &iwd);
         snprintf(tmp, sizeof tmp, "%02d", iw);
         break;
      case 'b':
         snprintf(tmp, sizeof tmp, "%s", month_abbr[p.month - 1]);
         break;
      case 'B':
         snprintf(tmp, sizeof tmp, "%s", month_full[p.month - 1]);
         break;
      case 'z': {
         int64_t m = off / MS_PER_MIN;
         snprintf(tmp, sizeof tmp, "%c%02d%02d", m < 0 ? '-' : '+',
                  (int) ((m < 0 ? -m : m) / 60), (int) ((m < 0 ? -m : m) % 60));
         break;
      }
      case 'Z': {
         int64_t m = off / MS_PER_MIN;
         snprintf(tmp, sizeof tmp, "%c%d", m < 0 ? '-' : '+',
                  (int) (m < 0 ? -m : m));
         break;
      }
      default: /* '%' */
         snprintf(tmp, sizeof tmp, "%%");
         break;
      }
      if (!put(buf, cap, &n, tmp, strlen(tmp))) {
         goto too_long;
      }
   }
   *len = n;
   return true;
too_long:
   aspen_error_set(err, ASPEN_ERR_BadValue,
                   "$dateToString result exceeds %zu bytes", cap);
   return false;
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
   const char *s;
   size_t len, pos;
   bool have_tz;
   int64_t tz_off_ms;
   const aspen__tz_t *tz_named;
   const char *err;
} dparse_t;

static bool
digits(dparse_t *d, int min, int max, int64_t *out)
{
   int64_t v = 0;
   int n = 0;
   while (n < max && d->pos < d->len && d->s[d->pos] >= '0' &&
          d->s[d->pos] <= '9') {
      v = v * 10 + (d->s[d->pos] - '0');
      d->pos++;
      n++;
   }
   if (n < min) {
      return false;
   }
   *out = v;
   return true;
}

static bool
peek(const dparse_t *d, char c)
{
   return d->pos < d->len && d->s[d->pos] == c;
}

/* Timezone designator at the cursor: Z, +hh[:mm], UTC, GMT, Olson name. */
static bool
parse_tz_token(dparse_t *d, aspen_error_t *err)
{
   if (peek(d, 'Z')) {
      d->pos++;
      d->have_tz = true;
      d->tz_off_ms = 0;
      return true;
   }
   if (peek(d, '+') || peek(d, '-')) {
      size_t start = d->pos;
      size_t end = start + 1;
      while (end < d->len && ((d->s[end] >= '0' && d->s[end] <= '9') ||
                              d->s[end] == ':')) {
         end++;
      }
      int64_t off;
      if (!parse_offset(d->s + start, end - start, &off)) {
         d->err = "The timezone could not be found in the database";
         return false;
      }
      d->pos = end;
      d->have_tz = true;
      d->tz_off_ms = off;
      return true;
   }
   size_t start = d->pos, end = start;
   while (end < d->len && d->s[end] != ' ') {
      end++;
   }
   const aspen__tz_t *tz = aspen__tz_parse(d->s + start, end - start, err);
   if (!tz) {
      d->err = "The timezone could not be found in the database";
      return false;
   }
   d->pos = end;
   d->have_tz = true;
   d->tz_named = tz;
   return true;
}

static bool
date_fail(aspen_error_t *err, const char *s, size_t len, size_t pos,
          const char *what)
{
   aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                   "Error parsing date string '%.*s'; %zu: %s",
                   (int) (len > 200 ? 200 : len), s, pos, what);
   return false;
}

typedef struct {
   int64_t year, month, day, hour, minute, second, ms;
   int64_t yday;                    /* -1: unset */
   int64_t iso_year, iso_week, iso_wday; /* -1: unset */
} fields_t;

static bool
finish_date(const fields_t *f, dparse_t *d, const aspen__tz_t *tz,
            bool tz_given, int64_t *ms, aspen_error_t *err)
{
   int64_t days;
   if (f->iso_year >= 0 || f->iso_week >= 0 || f->iso_wday >= 0) {
      int64_t y = f->iso_year >= 0 ? f->iso_year : 1970;
      int64_t w = f->iso_week >= 0 ? f->iso_week : 1;
      int64_t wd = f->iso_wday >= 0 ? f->iso_wday : 1;
      if (w < 1 || w > 53 || wd < 1 || wd > 7) {
         return date_fail(err, d->s, d->len, d->pos,
                          "The parsed date was invalid");
      }
      days = iso_year_start(y) + (w - 1) * 7 + (wd - 1);
   } else if (f->yday >= 0) {
      if (f->yday < 1 || f->yday > (is_leap(f->year) ? 366 : 365)) {
         return date_fail(err, d->s, d->len, d->pos,
                          "The parsed date was invalid");
      }
      days = days_from_civil(f->year, 1, 1) + f->yday - 1;
   } else {
      if (f->month < 1 || f->month > 12 || f->day < 1 ||
          f->day > month_days(f->year, (int) f->month)) {
         return date_fail(err, d->s, d->len, d->pos,
                          "The parsed date was invalid");
      }
      days = days_from_civil(f->year, (int) f->month, (int) f->day);
   }
   if (f->hour > 24 || f->minute > 59 || f->second > 59 ||
       (f->hour == 24 && (f->minute || f->second || f->ms))) {
      return date_fail(err, d->s, d->len, d->pos,
                       "The parsed time was invalid");
   }
   int64_t local = days * MS_PER_DAY + f->hour * MS_PER_HOUR +
                   f->minute * MS_PER_MIN + f->second * 1000 + f->ms;
   if (d->have_tz && tz_given) {
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "you cannot pass in a date/time string with time zone "
                      "information ('%.*s') together with a timezone argument",
                      (int) (d->len > 200 ? 200 : d->len), d->s);
      return false;
   }
   if (d->have_tz) {
      *ms = d->tz_named ? local_to_utc(d->tz_named, local)
                        : local - d->tz_off_ms;
   } else {
      *ms = local_to_utc(tz, local);
   }
   return true;
}

/* ISO-8601-like default: YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][ ][tz]. */
static bool
parse_default(dparse_t *d, fields_t *f, aspen_error_t *err)
{
   if (!digits(d, 4, 4, &f->year)) {
      return date_fail(err, d->s, d->len, d->pos,
                       "A four digit year could not be found");
   }
   char sep = peek(d, '/') ? '/' : '-';
   if (!peek(d, sep)) {
      return date_fail(err, d->s, d->len, d->pos, "Unexpected data found.");
   }
   d->pos++;
   if (!digits(d, 1, 2, &f->month)) {
      return date_fail(err, d->s, d->len, d->pos,
                       "A two digit month could not be found");
   }
   if (!peek(d, sep)) {
      return date_fail(err, d->s, d->len, d->pos, "Unexpected data found.");
   }
   d->pos++;
   if (!digits(d, 1, 2, &f->day)) {
      return date_fail(err, d->s, d->len, d->pos,
                       "A two digit day could not be found");
   }
   if (d->pos == d->len) {
      return true;
   }
   if (peek(d, 'T') || peek(d, 't') || peek(d, ' ')) {
      size_t save = d->pos;
      d->pos++;
      if (d->pos < d->len && d->s[d->pos] >= '0' && d->s[d->pos] <= '9') {
         if (!digits(d, 1, 2, &f->hour)) {
            return date_fail(err, d->s, d->len, d->pos,
                             "A two digit hour could not be found");
         }
         if (!peek(d, ':')) {
            return date_fail(err, d->s, d->len, d->pos,
                             "Unexpected data found.");
         }
         d->pos++;
         if (!digits(d, 2, 2, &f->minute)) {
            return date_fail(err, d->s, d->len, d->pos,
                             "A two digit minute could not be found");
         }
         if (peek(d, ':')) {
            d->pos++;
            if (!digits(d, 2, 2, &f->second)) {
               return date_fail(err, d->s, d->len, d->pos,
                                "A two digit second could not be found");
            }
            if (peek(d, '.') || peek(d, ',')) {
               d->pos++;
               int64_t frac = 0;
               int nd = 0;
               while (d->pos < d->len && d->s[d->pos] >= '0' &&
                      d->s[d->pos] <= '9') {
                  if (nd < 3) {
                     frac = frac * 10 + (d->s[d->pos] - '0');
                  }
                  nd++;
                  d->pos++;
               }
               if (nd == 0) {
                  return date_fail(err, d->s, d->len, d->pos,
                                   "Unexpected data found.");
               }
               while (nd < 3) {
                  frac *= 10;
                  nd++;
               }
               f->ms = frac;
            }
         }
      } else {
         d->pos = save;
      }
   }
   if (d->pos < d->len && d->s[d->pos] == ' ') {
      d->pos++;
   }
   if (d->pos < d->len) {
      if (!parse_tz_token(d, err)) {
         return date_fail(err, d->s, d->len, d->pos, d->err);
      }
   }
   if (d->pos != d->len) {
      return date_fail(err, d->s, d->len, d->pos, "Trailing data");
   }
   return true;
}

/* The specifiers $dateFromString can parse. */
static bool
validate_from_format(const char *fmt, size_t len, aspen_error_t *err)
{
   return validate_format(fmt, len, "dGHjLmMSuVYzZ%", err);
}

static bool
parse_with_format(dparse_t *d, fields_t *f, const char *fmt, size_t flen,
                  aspen_error_t *err)
{
   for (size_t i = 0; i < flen; i++) {
      if (fmt[i] != '%') {
         if (!peek(d, fmt[i])) {
            return date_fail(err, d->s, d->len, d->pos,
                             d->pos == d->len ? "Data missing"
                                              : "The separation symbol could "
                                                "not be found");
         }
         d->pos++;
         continue;
      }
      char c = fmt[++i];
      const char *what = NULL;
      switch (c) {
      case 'Y':
         if (!digits(d, 4, 4, &f->year)) {
            what = "A four digit year could not be found";
         }
         break;
      case 'G':
         if (!digits(d, 4, 4, &f->iso_year)) {
            what = "A four digit ISO year could not be found";
         }
         break;
      case 'm':
         if (!digits(d, 1, 2, &f->month)) {
            what = "A two digit month could not be found";
         }
         break;
      case 'd':
         if (!digits(d, 1, 2, &f->day)) {
            what = "A two digit day could not be found";
         }
         break;
      case 'H':
         if (!digits(d, 1, 2, &f->hour)) {
            what = "A two digit hour could not be found";
         }
         break;
      case 'M':
         if (!digits(d, 2, 2, &f->minute)) {
            what = "A two digit minute could not be found";
         }
         break;
      case 'S':
         if (!digits(d, 2, 2, &f->second)) {
            what = "A two digit second could not be found";
         }
         break;
      case 'L': {
         int64_t frac;
         size_t start = d->pos;
         if (!digits(d, 1, 9, &frac)) {
            what = "A three digit millisecond could not be found";
            break;
         }
         size_t nd = d->pos - start;
         while (nd > 3) {
            frac /= 10;
            nd--;
         }
         while (nd < 3) {
            frac *= 10;
            nd++;
         }
         f->ms = frac;
         break;
      }
      case 'j':
         if (!digits(d, 1, 3, &f->yday)) {
            what = "A three digit day-of-year could not be found";
         }
         break;
      case 'V':
         if (!digits(d, 1, 2, &f->iso_week)) {
            what = "A two digit ISO week could not be found";
         }
         break;
      case 'u':
         if (!digits(d, 1, 1, &f->iso_wday)) {
            what = "A single digit day of week could not be found";
         }
         break;
      case 'z':
         if (!parse_tz_token(d, err)) {
            what = d->err;
         }
         break;
      case 'Z': {
         int sign = 1;
         int64_t m;
         if (peek(d, '+') || peek(d, '-')) {
            sign = peek(d, '-') ? -1 : 1;
            d->pos++;
         } else {
            what = "Unexpected data found.";
            break;
         }
         if (!digits(d, 1, 4, &m)) {
            what = "Unexpected data found.";
            break;
         }
         d->have_tz = true;
         d->tz_off_ms = sign * m * MS_PER_MIN;
         break;
      }
      default: /* "%%" */
         if (!peek(d, '%')) {
            what = "Unexpected data found.";
         } else {
            d->pos++;
         }
         break;
      }
      if (what) {
         return date_fail(err, d->s, d->len, d->pos, what);
      }
   }
   if (d->pos != d->len) {
      return date_fail(err, d->s, d->len, d->pos, "Trailing data");
   }
   return true;
}

bool
aspen__date_parse(const char *s, size_t len, const char *fmt, size_t fmt_len,
                  const aspen__tz_t *tz, bool tz_given, int64_t *ms,
                  aspen_error_t *err)
{
   dparse_t d = {.s = s, .len = len};
   fields_t f = {.year = 1970, .month = 1, .day = 1, .yday = -1,
                 .iso_year = -1, .iso_week = -1, .iso_wday = -1};
   *ms = 0;
   if (fmt) {
      if (!validate_from_format(fmt, fmt_len, err) ||
          !parse_with_format(&d, &f, fmt, fmt_len, err)) {
         return false;
      }
   } else {
      if (len == 0) {
         return date_fail(err, s, len, 0, "Empty string");
      }
      if (!parse_default(&d, &f, err)) {
         return false;
      }
   }
   return finish_date(&f, &d, tz, tz_given, ms, err);
}

/* ------------------------------------------------------------------------ */
/* Shared operator plumbing                                                  */
/* ------------------------------------------------------------------------ */

/* A constant timezone argument is resolved at compile time into e->aux (the
 * zone lives in the process-wide cache, so nothing to free). */
static bool
pre_resolve_tz(aspen__parse_t *ps, aspen_expr_t *e, uint32_t tz_arg)
{
   aspen_expr_t *t = tz_arg < e->n_args ? e->args[tz_arg] : NULL;
   if (!t || !(t->flags & ASPEN__NODE_CONST) || aspen__is_nullish(&t->cval)) {
      return true;
   }
   if (!aspen__is_str(&t->cval)) {
      return aspen__pfail(ps, 40517,
                          "timezone must evaluate to a string, found %s",
                          aspen_value_type_name(&t->cval));
   }
   const aspen__tz_t *tz = aspen__tz_parse(
      t->cval.v.value.v_utf8.str, t->cval.v.value.v_utf8.len, ps->err);
   if (!tz) {
      return false;
   }
   e->aux = (void *) tz;
   e->aux_free = NULL;
   return true;
}

/* Resolves the timezone argument (as aspen__args_eval_arg returns): 1 with
 * *tz set, 0 when it is null (*out is null then), -1 on error. */
static int
eval_tz(const aspen_expr_t *e, uint32_t tz_arg, aspen__eval_t *st,
        const aspen__tz_t **tz, aspen_value_t *out)
{
   *tz = &tz_utc;
   if (tz_arg >= e->n_args || !e->args[tz_arg]) {
      return 1;
   }
   if (e->aux) {
      *tz = e->aux;
      return 1;
   }
   aspen_value_t v;
   if (!aspen__eval_node(e->args[tz_arg], st, &v)) {
      return -1;
   }
   int r = 1;
   if (aspen__is_nullish(&v)) {
      *out = aspen_value_null();
      r = 0;
   } else if (!aspen__is_str(&v)) {
      aspen__fail(st, 40517, "timezone must evaluate to a string, found %s",
                  aspen_value_type_name(&v));
      r = -1;
   } else {
      *tz = aspen__tz_parse(v.v.value.v_utf8.str, v.v.value.v_utf8.len,
                            st->err);
      if (!*tz) {
         r = -1;
      }
   }
   aspen_value_destroy(&v);
   return r;
}

static bool
date_arg(aspen__eval_t *st, const aspen_value_t *v, int64_t *ms)
{
   if (!aspen__coerce_date(v, ms)) {
      return aspen__fail(st, 16006, "can't convert from BSON type %s to Date",
                         aspen_value_type_name(v));
   }
   return true;
}

/* The date argument as calendar parts in tz: 1 with *p set, 0 when it is
 * null (*out is null then), -1 on error. */
static int
date_parts(aspen__eval_t *st, const aspen_value_t *v, const aspen__tz_t *tz,
           parts_t *p, aspen_value_t *out)
{
   int64_t ms;
   if (aspen__is_nullish(v)) {
      *out = aspen_value_null();
      return 0;
   }
   if (!date_arg(st, v, &ms)) {
      return -1;
   }
   split(to_local(tz, ms), p);
   return 1;
}

/* ------------------------------------------------------------------------ */
/* $year ... $isoDayOfWeek: args = date, timezone                            */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t date_part_names[] = {
   {"date", 40539, "missing 'date' argument to {op}"},
   {"timezone", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t date_part_spec = {
   date_part_names, 0, NULL, 40535, "unrecognized option to {op}: \"{key}\""};

/* {date, timezone}, [date] or date. */
static ASPEN__DECL_PARSE(parse_date_part)
{
   if (bson_iter_type(arg) == BSON_TYPE_DOCUMENT) {
      bson_iter_t child;
      bson_iter_recurse(arg, &child);
      if (bson_iter_next(&child) && bson_iter_key(&child)[0] != '$') {
         return aspen__parse_named(ps, op, arg, e, &date_part_spec) &&
                pre_resolve_tz(ps, e, 1);
      }
   }
   aspen__node_args(e, 2);
   if (bson_iter_type(arg) == BSON_TYPE_ARRAY) {
      bson_iter_t child;
      uint32_t n = aspen__value_child_count(arg);
      if (n != 1) {
         return aspen__pfail(ps, 40536,
                             "%s accepts exactly one argument if given an "
                             "array, but was given %u",
                             op->name, n);
      }
      bson_iter_recurse(arg, &child);
      bson_iter_next(&child);
      return aspen__parse_operand(ps, &child, &e->args[0]);
   }
   return aspen__parse_operand(ps, arg, &e->args[0]);
}

/* The date parts, the `sub` of their table rows. */
enum {
   DP_YEAR,
   DP_MONTH,
   DP_DAY_OF_MONTH,
   DP_HOUR,
   DP_MINUTE,
   DP_SECOND,
   DP_MILLISECOND,
   DP_DAY_OF_YEAR,
   DP_DAY_OF_WEEK,
   DP_WEEK,
   DP_ISO_WEEK_YEAR,
   DP_ISO_WEEK,
   DP_ISO_DAY_OF_WEEK,
};

/* args: date, timezone (resolved after the date is evaluated, before it is
 * checked). */
static const aspen__args_t date_tz_args = {
   .n = 2, .arg = {{0}, {.flags = ASPEN__ARG_LAZY}}};

static ASPEN__DECL_COMPUTE(compute_date_part)
{
   const aspen__tz_t *tz;
   parts_t p;
   int r = eval_tz(e, 1, st, &tz, out);
   if (r > 0) {
      r = date_parts(st, &v[0], tz, &p, out);
   }
   if (r <= 0) {
      return r == 0;
   }
   int64_t iy;
   int iw, iwd;
   int64_t res;
   switch (e->op->sub) {
   case DP_YEAR:
      res = p.year;
      break;
   case DP_MONTH:
      res = p.month;
      break;
   case DP_DAY_OF_MONTH:
      res = p.day;
      break;
   case DP_HOUR:
      res = p.hour;
      break;
   case DP_MINUTE:
      res = p.minute;
      break;
   case DP_SECOND:
      res = p.second;
      break;
   case DP_MILLISECOND:
      res = p.ms;
      break;
   case DP_DAY_OF_YEAR:
      res = p.yday;
      break;
   case DP_DAY_OF_WEEK:
      res = p.wday + 1;
      break;
   case DP_WEEK:
      res = (p.yday - 1 + 7 - p.wday) / 7;
      break;
   case DP_ISO_WEEK_YEAR:
      iso_week(&p, &iy, &iw, &iwd);
      res = iy;
      break;
   case DP_ISO_WEEK:
      iso_week(&p, &iy, &iw, &iwd);
      res = iw;
      break;
   default:
      iso_week(&p, &iy, &iw, &iwd);
      res = iwd;
      break;
   }
   *out = aspen__value_int_or_long(res);
   return true;
}

ASPEN__ARGS_EVAL(eval_date_part, date_tz_args, compute_date_part)

/* ------------------------------------------------------------------------ */
/* $dateToString: args = date, format, timezone, onNull                      */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t date_to_string_names[] = {
   {"date", 18628, "Missing 'date' parameter to $dateToString"},
   {"format", 0, NULL},
   {"timezone", 0, NULL},
   {"onNull", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t date_to_string_spec = {
   date_to_string_names, 18629, "{op} only supports an object as its argument",
   18534, "Unrecognized argument to {op}: {key}"};

static ASPEN__DECL_PARSE(parse_date_to_string)
{
   if (!aspen__parse_named(ps, op, arg, e, &date_to_string_spec)) {
      return false;
   }
   aspen_expr_t *f = e->args[1];
   if (f && (f->flags & ASPEN__NODE_CONST) && aspen__is_str(&f->cval) &&
       !validate_to_format(f->cval.v.value.v_utf8.str,
                           f->cval.v.value.v_utf8.len, ps->err)) {
      return false;
   }
   return pre_resolve_tz(ps, e, 2);
}

/* $dateToString and $dateFromString: args = the input, format (a string,
 * or null), timezone, onNull (and onError). */
#define DATE_STRING_FORMAT_ARG(err_code)                                       \
   {.types = ASPEN__T_STRING | ASPEN__T_NULLISH, .code = (err_code),           \
    .msg = "{op} requires that 'format' be a string, found: {type} with "      \
           "value {value}"}
static const aspen__args_t date_to_string_args = {
   .n = 4,
   .arg = {{0}, DATE_STRING_FORMAT_ARG(18533), {.flags = ASPEN__ARG_LAZY},
           {.flags = ASPEN__ARG_LAZY}}};
static const aspen__args_t date_from_string_args = {
   .n = 5,
   .arg = {{0}, DATE_STRING_FORMAT_ARG(40684), {.flags = ASPEN__ARG_LAZY},
           {.flags = ASPEN__ARG_LAZY}, {.flags = ASPEN__ARG_LAZY}}};
#undef DATE_STRING_FORMAT_ARG

/* What the two share after their arguments are checked: the format must
 * pass `validate`, then the timezone (*tz_r as eval_tz returns it); a null
 * input gives onNull or null. Returns -1 on error, 0 when the result is
 * decided (in *out), 1 to go on. */
static int
date_string_start(const aspen_expr_t *e, aspen__eval_t *st,
                  const aspen_value_t *v,
                  bool (*validate)(const char *, size_t, aspen_error_t *),
                  const aspen__tz_t **tz, int *tz_r, aspen_value_t *out)
{
   if (aspen__is_str(&v[1]) &&
       !validate(v[1].v.value.v_utf8.str, v[1].v.value.v_utf8.len, st->err)) {
      return -1;
   }
   aspen_value_t tz_null;
   *tz_r = eval_tz(e, 2, st, tz, &tz_null);
   if (*tz_r < 0) {
      return -1;
   }
   if (!aspen__is_nullish(&v[0])) {
      return 1;
   }
   if (e->args[3]) {
      return aspen__eval_node(e->args[3], st, out) ? 0 : -1;
   }
   *out = aspen_value_null();
   return 0;
}

static ASPEN__DECL_COMPUTE(compute_date_to_string)
{
   const aspen__tz_t *tz = &tz_utc;
   int r = 0;
   int p = date_string_start(e, st, v, validate_to_format, &tz, &r, out);
   if (p <= 0) {
      return p == 0;
   }
   if (r == 0 || (e->args[1] && aspen__is_nullish(&v[1]))) {
      *out = aspen_value_null();
      return true;
   }
   int64_t ms;
   if (!date_arg(st, &v[0], &ms)) {
      return false;
   }
   const char *f;
   size_t flen;
   if (e->args[1]) {
      f = v[1].v.value.v_utf8.str;
      flen = v[1].v.value.v_utf8.len;
   } else if (aspen__tz_is_utc(tz)) {
      f = ASPEN__ISO_FORMAT;
      flen = strlen(f);
   } else {
      f = ASPEN__ISO_FORMAT_LOCAL;
      flen = strlen(f);
   }
   /* Each specifier expands to at most 9 bytes. */
   size_t cap = flen * 9 + 1;
   char stackbuf[256];
   char *buf = cap <= sizeof stackbuf ? stackbuf : aspen_xmalloc(cap);
   size_t len;
   bool ok = aspen__date_format(ms, f, flen, tz, buf, cap, &len, st->err);
   if (ok) {
      *out = aspen_value_utf8(buf, len);
   }
   if (buf != stackbuf) {
      free(buf);
   }
   return ok;
}

ASPEN__ARGS_EVAL(eval_date_to_string, date_to_string_args,
                 compute_date_to_string)

/* ------------------------------------------------------------------------ */
/* $dateFromString: args = dateString, format, timezone, onNull, onError     */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t date_from_string_names[] = {
   {"dateString", 40542, "Missing 'dateString' parameter to $dateFromString"},
   {"format", 0, NULL},
   {"timezone", 0, NULL},
   {"onNull", 0, NULL},
   {"onError", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t date_from_string_spec = {
   date_from_string_names, 40540,
   "$dateFromString only supports an object as an argument, found: {type}",
   40541, "Unrecognized argument to {op}: {key}"};

static ASPEN__DECL_PARSE(parse_date_from_string)
{
   if (!aspen__parse_named(ps, op, arg, e, &date_from_string_spec)) {
      return false;
   }
   aspen_expr_t *f = e->args[1];
   if (f && (f->flags & ASPEN__NODE_CONST) && aspen__is_str(&f->cval) &&
       !validate_from_format(f->cval.v.value.v_utf8.str,
                             f->cval.v.value.v_utf8.len, ps->err)) {
      return false;
   }
   return pre_resolve_tz(ps, e, 2);
}

static ASPEN__DECL_COMPUTE(compute_date_from_string)
{
   const aspen__tz_t *tz = &tz_utc;
   int r = 0;
   int p = date_string_start(e, st, v, validate_from_format, &tz, &r, out);
   if (p <= 0) {
      return p == 0;
   }
   const aspen_value_t *ds = &v[0], *fmt = &v[1];
   aspen_error_t perr;
   bool parsed = false;
   int64_t ms = 0;
   if (!aspen__is_str(ds)) {
      char *json = aspen_value_to_json(ds);
      aspen_error_set(&perr, ASPEN_ERR_ConversionFailure,
                      "$dateFromString requires that 'dateString' be a "
                      "string, found: %s with value %s",
                      aspen_value_type_name(ds), json);
      bson_free(json);
   } else if (r == 0 || (e->args[1] && aspen__is_nullish(fmt))) {
      *out = aspen_value_null();
      return true;
   } else {
      parsed = aspen__date_parse(
         ds->v.value.v_utf8.str, ds->v.value.v_utf8.len,
         e->args[1] ? fmt->v.value.v_utf8.str : NULL,
         e->args[1] ? fmt->v.value.v_utf8.len : 0, tz, e->args[2] != NULL, &ms,
         &perr);
   }
   if (parsed) {
      *out = aspen_value_date(ms);
      return true;
   }
   if (perr.code == ASPEN_ERR_ConversionFailure && e->args[4]) {
      return aspen__eval_node(e->args[4], st, out);
   }
   if (st->err) {
      *st->err = perr;
   }
   return false;
}

ASPEN__ARGS_EVAL(eval_date_from_string, date_from_string_args,
                 compute_date_from_string)

/* ------------------------------------------------------------------------ */
/* $dateFromParts: args = year month day hour minute second millisecond     */
/* isoWeekYear isoWeek isoDayOfWeek timezone                                 */
/* ------------------------------------------------------------------------ */

enum {
   FP_YEAR,
   FP_MONTH,
   FP_DAY,
   FP_HOUR,
   FP_MINUTE,
   FP_SECOND,
   FP_MS,
   FP_ISO_YEAR,
   FP_ISO_WEEK,
   FP_ISO_DOW,
   FP_TZ,
   FP_N
};

static const aspen__named_arg_t fp_names[] = {
   {"year", 0, NULL},        {"month", 0, NULL},   {"day", 0, NULL},
   {"hour", 0, NULL},        {"minute", 0, NULL},  {"second", 0, NULL},
   {"millisecond", 0, NULL}, {"isoWeekYear", 0, NULL},
   {"isoWeek", 0, NULL},     {"isoDayOfWeek", 0, NULL},
   {"timezone", 0, NULL},    {NULL, 0, NULL}};
static const aspen__named_spec_t fp_spec = {
   fp_names, 40519, "{op} only supports an object as its argument", 40518,
   "Unrecognized argument to {op}: {key}"};

static ASPEN__DECL_PARSE(parse_date_from_parts)
{
   if (!aspen__parse_named(ps, op, arg, e, &fp_spec)) {
      return false;
   }
   if (!e->args[FP_YEAR] && !e->args[FP_ISO_YEAR]) {
      return aspen__pfail(ps, 40516,
                          "$dateFromParts requires either 'year' or "
                          "'isoWeekYear' to be present");
   }
   if (e->args[FP_YEAR] &&
       (e->args[FP_ISO_YEAR] || e->args[FP_ISO_WEEK] || e->args[FP_ISO_DOW])) {
      return aspen__pfail(ps, 40489,
                          "$dateFromParts does not allow mixing natural dates "
                          "with ISO dates");
   }
   if (e->args[FP_ISO_YEAR] &&
       (e->args[FP_YEAR] || e->args[FP_MONTH] || e->args[FP_DAY])) {
      return aspen__pfail(ps, 40525,
                          "$dateFromParts does not allow mixing ISO dates "
                          "with natural dates");
   }
   return pre_resolve_tz(ps, e, FP_TZ);
}

/* Every part is an integer (null: the result is null); some are bounded.
 * All are evaluated in eval_date_from_parts' order, by part_value. */
#define FP_ARG(name)                                                           \
   {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_LAZY | ASPEN__ARG_NULL |     \
                                       ASPEN__ARG_INT64,                       \
    .code = 40515,                                                             \
    .msg = "'" name "' must evaluate to an integer, found {type} with value "  \
           "{value}"}
#define FP_BOUNDED_ARG(name)                                                   \
   {.types = ASPEN__T_NUMBER, .flags = ASPEN__ARG_LAZY | ASPEN__ARG_NULL |     \
                                       ASPEN__ARG_INT64 | ASPEN__ARG_RANGE,    \
    .code = 40515,                                                             \
    .msg = "'" name "' must evaluate to an integer, found {type} with value "  \
           "{value}",                                                          \
    .range_code = 31034,                                                       \
    .range_msg = "'" name "' must evaluate to a value in the range [-32768, "  \
                 "32767]; value {int} is not in range",                        \
    .min = -32768,                                                             \
    .max = 32767}
static const aspen__args_t date_from_parts_args = {
   .n = FP_N,
   .arg = {FP_ARG("year"), FP_BOUNDED_ARG("month"), FP_BOUNDED_ARG("day"),
           FP_BOUNDED_ARG("hour"), FP_BOUNDED_ARG("minute"),
           FP_ARG("second"), FP_ARG("millisecond"), FP_ARG("isoWeekYear"),
           FP_BOUNDED_ARG("isoWeek"), FP_BOUNDED_ARG("isoDayOfWeek"),
           {.flags = ASPEN__ARG_LAZY}}};
#undef FP_ARG
#undef FP_BOUNDED_ARG

/* Part i into *n (def when absent); as aspen__args_eval_arg returns. */
static int
part_value(const aspen_expr_t *e, uint32_t i, aspen__eval_t *st, int64_t def,
           int64_t *n, aspen_value_t *out)
{
   aspen_value_t x;
   *n = def;
   int r = aspen__args_eval_arg(e, st, &date_from_parts_args, i, &x, out);
   if (r > 0 && !aspen_value_is_missing(&x)) {
      *n = aspen__arg_int(&x);
   }
   aspen_value_destroy(&x);
   return r;
}

static ASPEN__DECL_EVAL(eval_date_from_parts)
{
   int64_t v[FP_N];
   static const int64_t defs[] = {1970, 1, 1, 0, 0, 0, 0, 1970, 1, 1};
   *out = ASPEN_VALUE_MISSING;
   bool null_result = false;
   /* Time parts first (all of them), then the timezone, then the date parts
    * (mongod's order, which decides which error wins). */
   for (int i = FP_HOUR; i <= FP_MS; i++) {
      aspen_value_t null_part;
      int r = part_value(e, (uint32_t) i, st, defs[i], &v[i], &null_part);
      if (r < 0) {
         return false;
      }
      null_result |= r == 0;
   }
   if (null_result) {
      *out = aspen_value_null();
      return true;
   }
   const aspen__tz_t *tz;
   int r = eval_tz(e, FP_TZ, st, &tz, out);
   if (r <= 0) {
      return r == 0;
   }
   int64_t days;
   if (e->args[FP_YEAR]) {
      for (int i = FP_YEAR; i <= FP_DAY; i++) {
         int rr = part_value(e, (uint32_t) i, st, defs[i], &v[i], out);
         if (rr <= 0) {
            return rr == 0;
         }
      }
      if (v[FP_YEAR] < 1 || v[FP_YEAR] > 9999) {
         return aspen__fail(st, 40523,
                            "'year' must evaluate to an integer in the range "
                            "1 to 9999, found %" PRId64,
                            v[FP_YEAR]);
      }
      int64_t m0 = v[FP_MONTH] - 1;
      int64_t y = v[FP_YEAR] + floordiv(m0, 12);
      int m = (int) floormod(m0, 12) + 1;
      days = days_from_civil(y, m, 1) + v[FP_DAY] - 1;
   } else {
      for (int i = FP_ISO_YEAR; i <= FP_ISO_DOW; i++) {
         int rr = part_value(e, (uint32_t) i, st, defs[i], &v[i], out);
         if (rr <= 0) {
            return rr == 0;
         }
      }
      if (v[FP_ISO_YEAR] < 1 || v[FP_ISO_YEAR] > 9999) {
         return aspen__fail(st, 31095,
                            "'isoWeekYear' must evaluate to an integer in the "
                            "range 1 to 9999, found %" PRId64,
                            v[FP_ISO_YEAR]);
      }
      days = iso_year_start(v[FP_ISO_YEAR]) + (v[FP_ISO_WEEK] - 1) * 7 +
             (v[FP_ISO_DOW] - 1);
   }
   int64_t local = days * MS_PER_DAY + v[FP_HOUR] * MS_PER_HOUR +
                   v[FP_MINUTE] * MS_PER_MIN;
   int64_t extra;
   if (__builtin_mul_overflow(v[FP_SECOND], 1000, &extra) ||
       __builtin_add_overflow(local, extra, &local) ||
       __builtin_add_overflow(local, v[FP_MS], &local)) {
      return aspen__fail(st, ASPEN_ERR_BadValue,
                         "$dateFromParts: date overflow");
   }
   *out = aspen_value_date(local_to_utc(tz, local));
   return true;
}

/* ------------------------------------------------------------------------ */
/* $dateToParts: args = date, timezone, iso8601                              */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t date_to_parts_names[] = {
   {"date", 40522, "Missing 'date' parameter to $dateToParts"},
   {"timezone", 0, NULL},
   {"iso8601", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t date_to_parts_spec = {
   date_to_parts_names, 40524, "{op} only supports an object as its argument",
   40520, "Unrecognized argument to {op}: {key}"};

static ASPEN__DECL_PARSE(parse_date_to_parts)
{
   return aspen__parse_named(ps, op, arg, e, &date_to_parts_spec) &&
          pre_resolve_tz(ps, e, 1);
}

/* args: date, timezone and iso8601 (both after the date is evaluated). */
static const aspen__args_t date_to_parts_args = {
   .n = 3,
   .arg = {{0},
           {.flags = ASPEN__ARG_LAZY},
           {.types = ASPEN__T_BOOL, .flags = ASPEN__ARG_LAZY | ASPEN__ARG_NULL,
            .code = 40521, .msg = "iso8601 must evaluate to a bool, found "
                                  "{type}"}}};

static ASPEN__DECL_COMPUTE(compute_date_to_parts)
{
   const aspen__tz_t *tz;
   int r = eval_tz(e, 1, st, &tz, out);
   if (r <= 0) {
      return r == 0;
   }
   r = aspen__args_eval_arg(e, st, &date_to_parts_args, 2, &v[2], out);
   if (r <= 0) {
      return r == 0;
   }
   bool want_iso = aspen__vt(&v[2]) == BSON_TYPE_BOOL && v[2].v.value.v_bool;
   parts_t p;
   r = date_parts(st, &v[0], tz, &p, out);
   if (r <= 0) {
      return r == 0;
   }
   bson_t doc = BSON_INITIALIZER;
   if (want_iso) {
      int64_t iy;
      int iw, iwd;
      iso_week(&p, &iy, &iw, &iwd);
      BSON_APPEND_INT32(&doc, "isoWeekYear", (int32_t) iy);
      BSON_APPEND_INT32(&doc, "isoWeek", iw);
      BSON_APPEND_INT32(&doc, "isoDayOfWeek", iwd);
   } else {
      BSON_APPEND_INT32(&doc, "year", (int32_t) p.year);
      BSON_APPEND_INT32(&doc, "month", p.month);
      BSON_APPEND_INT32(&doc, "day", p.day);
   }
   BSON_APPEND_INT32(&doc, "hour", p.hour);
   BSON_APPEND_INT32(&doc, "minute", p.minute);
   BSON_APPEND_INT32(&doc, "second", p.second);
   BSON_APPEND_INT32(&doc, "millisecond", p.ms);
   *out = aspen_value_take_doc(&doc, false);
   return true;
}

ASPEN__ARGS_EVAL(eval_date_to_parts, date_to_parts_args, compute_date_to_parts)

/* ------------------------------------------------------------------------ */
/* Units and days of the week                                                */
/* ------------------------------------------------------------------------ */

enum {
   U_YEAR,
   U_QUARTER,
   U_MONTH,
   U_WEEK,
   U_DAY,
   U_HOUR,
   U_MINUTE,
   U_SECOND,
   U_MS
};

static int
unit_of(const aspen_value_t *v)
{
   static const char *const names[] = {"year", "quarter", "month",
                                       "week", "day",     "hour",
                                       "minute", "second", "millisecond"};
   if (!aspen__is_str(v)) {
      return -1;
   }
   for (int i = 0; i < 9; i++) {
      if (strcmp(names[i], v->v.value.v_utf8.str) == 0) {
         return i;
      }
   }
   return -2;
}

static bool
check_unit(aspen__eval_t *st, const char *opname, const aspen_value_t *v,
           int *unit)
{
   *unit = unit_of(v);
   if (*unit == -1) {
      return aspen__fail(st, 5439013,
                         "%s requires 'unit' to be a string, but got %s",
                         opname, aspen_value_type_name(v));
   }
   if (*unit == -2) {
      return aspen__fail(st, 5439014,
                         "%s parameter 'unit' value cannot be recognized as a "
                         "time unit: %s",
                         opname, v->v.value.v_utf8.str);
   }
   return true;
}

/* 0 = Sunday. */
static bool
check_dow(aspen__eval_t *st, const char *opname, const aspen_value_t *v,
          int *dow)
{
   static const char *const full[] = {"sunday",   "monday", "tuesday",
                                      "wednesday", "thursday", "friday",
                                      "saturday"};
   if (!aspen__is_str(v)) {
      return aspen__fail(st, 5439015,
                         "%s requires 'startOfWeek' to be a string, but got %s",
                         opname, aspen_value_type_name(v));
   }
   const char *s = v->v.value.v_utf8.str;
   size_t len = v->v.value.v_utf8.len;
   for (int i = 0; i < 7; i++) {
      if ((len == 3 || len == strlen(full[i])) &&
          strncasecmp(s, full[i], len) == 0) {
         *dow = i;
         return true;
      }
   }
   return aspen__fail(st, 5439016,
                      "%s parameter 'startOfWeek' value cannot be recognized "
                      "as a day of a week: %s",
                      opname, s);
}

/* ------------------------------------------------------------------------ */
/* $dateTrunc: args = date, unit, binSize, timezone, startOfWeek             */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t date_trunc_names[] = {
   {"date", 5439009, "Missing 'date' parameter to $dateTrunc"},
   {"unit", 5439010, "Missing 'unit' parameter to $dateTrunc"},
   {"binSize", 0, NULL},
   {"timezone", 0, NULL},
   {"startOfWeek", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t date_trunc_spec = {
   date_trunc_names, 5439007, "{op} only supports an object as its argument",
   5439008, "Unrecognized argument to {op}: {key}"};

static ASPEN__DECL_PARSE(parse_date_trunc)
{
   return aspen__parse_named(ps, op, arg, e, &date_trunc_spec) &&
          pre_resolve_tz(ps, e, 3);
}

/* Reference instant for bins: 2000-01-01 in local time (days since epoch). */
#define REF_DAYS 10957

static int64_t
trunc_local(int64_t local, int unit, int64_t bin, int sow)
{
   switch (unit) {
   case U_MS:
   case U_SECOND:
   case U_MINUTE:
   case U_HOUR:
   case U_DAY: {
      static const int64_t unit_ms[] = {0, 0, 0, 0, MS_PER_DAY, MS_PER_HOUR,
                                        MS_PER_MIN, 1000, 1};
      int64_t width;
      if (__builtin_mul_overflow(unit_ms[unit], bin, &width)) {
         width = INT64_MAX;
      }
      int64_t ref = REF_DAYS * MS_PER_DAY;
      int64_t x = sat_sub(local, ref);
      return sat_add(ref, sat_sub(x, floormod(x, width)));
   }
   case U_WEEK: {
      /* First `sow` day on or after 2000-01-01 (a Saturday). */
      int64_t ref = REF_DAYS + (sow - 6 + 7) % 7;
      int64_t days = floordiv(local, MS_PER_DAY);
      int64_t width;
      if (__builtin_mul_overflow(bin, 7, &width)) {
         width = INT64_MAX;
      }
      int64_t start = ref + ((days - ref) - floormod(days - ref, width));
      int64_t res;
      if (__builtin_mul_overflow(start, MS_PER_DAY, &res)) {
         return start < 0 ? INT64_MIN : INT64_MAX;
      }
      return res;
   }
   default: {
      parts_t p;
      split(local, &p);
      int64_t months = (p.year - 2000) * 12 + (p.month - 1);
      int64_t width;
      if (__builtin_mul_overflow(bin,
                                 (int64_t) (unit == U_YEAR      ? 12
                                            : unit == U_QUARTER ? 3
                                                                : 1),
                                 &width)) {
         width = INT64_MAX;
      }
      int64_t start = months - floormod(months, width);
      int64_t y = 2000 + floordiv(start, 12);
      int m = (int) floormod(start, 12) + 1;
      int64_t res;
      if (__builtin_mul_overflow(days_from_civil(y, m, 1), MS_PER_DAY, &res)) {
         return y < 2000 ? INT64_MIN : INT64_MAX;
      }
      return res;
   }
   }
}

/* $dateTrunc and $dateDiff: three arguments where null gives null, then
 * the timezone, then startOfWeek (null gives null too), evaluated when the
 * unit is a week. */
static const aspen__args_t date_unit_args = {
   .n = 5,
   .arg = {{.flags = ASPEN__ARG_NULL},
           {.flags = ASPEN__ARG_NULL},
           {.flags = ASPEN__ARG_NULL},
           {.flags = ASPEN__ARG_LAZY},
           {.flags = ASPEN__ARG_LAZY | ASPEN__ARG_NULL}}};

/* The start $dateTrunc and $dateDiff share once their first three arguments
 * are in: startOfWeek (when `unit` is a week), then the timezone. Returns
 * as aspen__args_eval_arg does. */
static int
unit_start(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *v,
           const aspen_value_t *unit, const aspen__tz_t **tz,
           aspen_value_t *out)
{
   if (unit_of(unit) == U_WEEK) {
      int r = aspen__args_eval_arg(e, st, &date_unit_args, 4, &v[4], out);
      if (r <= 0) {
         return r;
      }
   }
   return eval_tz(e, 3, st, tz, out);
}

static ASPEN__DECL_COMPUTE(compute_date_trunc)
{
   const aspen__tz_t *tz;
   int r = unit_start(e, st, v, &v[1], &tz, out);
   if (r <= 0) {
      return r == 0;
   }
   int64_t ms;
   if (!aspen__coerce_date(&v[0], &ms)) {
      return aspen__fail(st, 5439012,
                         "$dateTrunc requires 'date' to be a date, but got %s",
                         aspen_value_type_name(&v[0]));
   }
   int unit;
   if (!check_unit(st, "$dateTrunc", &v[1], &unit)) {
      return false;
   }
   int64_t bin = 1;
   if (e->args[2]) {
      if (!aspen__is_num(&v[2]) || !aspen__num_is_int64(&v[2], &bin)) {
         char *json = aspen_value_to_json(&v[2]);
         aspen__fail(st, 5439017,
                     "$dateTrunc requires 'binSize' to be a 64-bit integer, "
                     "but got value '%s' of type %s",
                     json, aspen_value_type_name(&v[2]));
         bson_free(json);
         return false;
      }
      if (bin <= 0) {
         return aspen__fail(st, 5439018,
                            "$dateTrunc requires 'binSize' to be greater than "
                            "0, but got value %" PRId64,
                            bin);
      }
   }
   int sow = 0;
   if (unit == U_WEEK && e->args[4] &&
       !check_dow(st, "$dateTrunc", &v[4], &sow)) {
      return false;
   }
   /* Bins are laid out in local wall time. */
   int64_t local = to_local(tz, ms);
   *out =
      aspen_value_date(local_to_utc(tz, trunc_local(local, unit, bin, sow)));
   return true;
}

ASPEN__ARGS_EVAL(eval_date_trunc, date_unit_args, compute_date_trunc)

/* ------------------------------------------------------------------------ */
/* $dateAdd / $dateSubtract: args = startDate, unit, amount, timezone        */
/* ------------------------------------------------------------------------ */

#define DATE_ADD_NEEDED                                                        \
   "{op} requires startDate, unit, and amount to be present"
static const aspen__named_arg_t date_add_names[] = {
   {"startDate", 5166402, DATE_ADD_NEEDED},
   {"unit", 5166402, DATE_ADD_NEEDED},
   {"amount", 5166402, DATE_ADD_NEEDED},
   {"timezone", 0, NULL},
   {NULL, 0, NULL}};
#undef DATE_ADD_NEEDED
static const aspen__named_spec_t date_add_spec = {
   date_add_names, 5166400, "{op} expects an object as its argument", 5166401,
   "Unrecognized argument to {op}: {key}. Expected arguments are startDate, "
   "unit, amount, and optionally timezone."};

static ASPEN__DECL_PARSE(parse_date_add)
{
   return aspen__parse_named(ps, op, arg, e, &date_add_spec) &&
          pre_resolve_tz(ps, e, 3);
}

static bool
add_months(int64_t local, int64_t months, int64_t *res)
{
   parts_t p;
   split(local, &p);
   int64_t total;
   if (__builtin_add_overflow((p.year * 12 + p.month - 1), months, &total)) {
      return false;
   }
   int64_t y = floordiv(total, 12);
   int m = (int) floormod(total, 12) + 1;
   if (y < -292275055 || y > 292278994) {
      return false;
   }
   int d = p.day;
   if (d > month_days(y, m)) {
      d = month_days(y, m);
   }
   int64_t tod = floormod(local, MS_PER_DAY);
   int64_t base;
   return !__builtin_mul_overflow(days_from_civil(y, m, d), MS_PER_DAY,
                                  &base) &&
          !__builtin_add_overflow(base, tod, res);
}

/* args: startDate, unit, amount (null gives null), timezone; their types
 * are checked after the timezone, as in mongod. */
static const aspen__args_t date_add_args = {
   .n = 4,
   .arg = {{.flags = ASPEN__ARG_NULL},
           {.flags = ASPEN__ARG_NULL},
           {.flags = ASPEN__ARG_NULL},
           {.flags = ASPEN__ARG_LAZY}}};

static ASPEN__DECL_COMPUTE(compute_date_add)
{
   const char *opname = e->op->name;
   const aspen__tz_t *tz;
   int r = eval_tz(e, 3, st, &tz, out);
   if (r <= 0) {
      return r == 0;
   }
   int64_t ms;
   if (!aspen__coerce_date(&v[0], &ms)) {
      return aspen__fail(st, 5166403,
                         "%s requires startDate to be convertible to a date",
                         opname);
   }
   if (!aspen__is_str(&v[1])) {
      return aspen__fail(st, 5166404,
                         "%s expects string defining the time unit", opname);
   }
   int unit;
   if (!check_unit(st, opname, &v[1], &unit)) {
      return false;
   }
   int64_t amount;
   if (!aspen__is_num(&v[2]) || !aspen__num_is_int64(&v[2], &amount)) {
      return aspen__fail(st, 5166405,
                         "%s expects integer amount of time units", opname);
   }
   if (e->op->sub == 1) {
      if (amount == INT64_MIN) {
         return aspen__fail(st, 6045000,
                            "invalid $dateSubtract 'amount' parameter value: "
                            "%" PRId64,
                            amount);
      }
      amount = -amount;
   }
   int64_t res;
   bool fits = true;
   switch (unit) {
   case U_YEAR:
   case U_QUARTER:
   case U_MONTH: {
      int64_t months;
      int64_t mult = unit == U_YEAR ? 12 : unit == U_QUARTER ? 3 : 1;
      int64_t local = to_local(tz, ms);
      fits = !__builtin_mul_overflow(amount, mult, &months) &&
             add_months(local, months, &res);
      if (fits) {
         res = local_to_utc(tz, res);
      }
      break;
   }
   case U_WEEK:
   case U_DAY: {
      int64_t delta;
      int64_t local = to_local(tz, ms);
      fits = !__builtin_mul_overflow(amount,
                                     (unit == U_WEEK ? 7 : 1) * MS_PER_DAY,
                                     &delta) &&
             !__builtin_add_overflow(local, delta, &res);
      if (fits) {
         res = local_to_utc(tz, res);
      }
      break;
   }
   default: {
      static const int64_t unit_ms[] = {0, 0, 0, 0, 0, MS_PER_HOUR, MS_PER_MIN,
                                        1000, 1};
      int64_t delta;
      fits = !__builtin_mul_overflow(amount, unit_ms[unit], &delta) &&
             !__builtin_add_overflow(ms, delta, &res);
      break;
   }
   }
   if (!fits) {
      return aspen__fail(st, 5976500, "%s overflowed", opname);
   }
   *out = aspen_value_date(res);
   return true;
}

ASPEN__ARGS_EVAL(eval_date_add, date_add_args, compute_date_add)

/* ------------------------------------------------------------------------ */
/* $dateDiff: args = startDate, endDate, unit, timezone, startOfWeek         */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t date_diff_names[] = {
   {"startDate", 5166303, "Missing 'startDate' parameter to $dateDiff"},
   {"endDate", 5166304, "Missing 'endDate' parameter to $dateDiff"},
   {"unit", 5166305, "Missing 'unit' parameter to $dateDiff"},
   {"timezone", 0, NULL},
   {"startOfWeek", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t date_diff_spec = {
   date_diff_names, 5166301, "{op} only supports an object as its argument",
   5166302, "Unrecognized argument to {op}: {key}"};

static ASPEN__DECL_PARSE(parse_date_diff)
{
   return aspen__parse_named(ps, op, arg, e, &date_diff_spec) &&
          pre_resolve_tz(ps, e, 3);
}

static ASPEN__DECL_COMPUTE(compute_date_diff)
{
   const aspen__tz_t *tz;
   int r = unit_start(e, st, v, &v[2], &tz, out);
   if (r <= 0) {
      return r == 0;
   }
   int64_t a, b;
   if (!aspen__coerce_date(&v[0], &a)) {
      return aspen__fail(st, 5166307,
                         "$dateDiff requires 'startDate' to be a date, but got "
                         "%s",
                         aspen_value_type_name(&v[0]));
   }
   if (!aspen__coerce_date(&v[1], &b)) {
      return aspen__fail(st, 5166307,
                         "$dateDiff requires 'endDate' to be a date, but got "
                         "%s",
                         aspen_value_type_name(&v[1]));
   }
   int unit;
   if (!check_unit(st, "$dateDiff", &v[2], &unit)) {
      return false;
   }
   int sow = 0;
   if (unit == U_WEEK && e->args[4] &&
       !check_dow(st, "$dateDiff", &v[4], &sow)) {
      return false;
   }
   int64_t la = to_local(tz, a), lb = to_local(tz, b);
   parts_t pa, pb;
   split(la, &pa);
   split(lb, &pb);
   int64_t res;
   switch (unit) {
   case U_YEAR:
      res = pb.year - pa.year;
      break;
   case U_QUARTER:
      res = (pb.year * 4 + (pb.month - 1) / 3) -
            (pa.year * 4 + (pa.month - 1) / 3);
      break;
   case U_MONTH:
      res = (pb.year * 12 + pb.month) - (pa.year * 12 + pa.month);
      break;
   case U_WEEK:
      res = floordiv(pb.days + 4 - sow, 7) - floordiv(pa.days + 4 - sow, 7);
      break;
   case U_DAY:
      res = pb.days - pa.days;
      break;
   case U_HOUR:
      res = floordiv(lb, MS_PER_HOUR) - floordiv(la, MS_PER_HOUR);
      break;
   case U_MINUTE:
      res = floordiv(lb, MS_PER_MIN) - floordiv(la, MS_PER_MIN);
      break;
   case U_SECOND:
      res = floordiv(lb, 1000) - floordiv(la, 1000);
      break;
   default:
      if (__builtin_sub_overflow(b, a, &res)) {
         return aspen__fail(st, 45, "$dateDiff: date overflow");
      }
      break;
   }
   *out = aspen_value_int64(res);
   return true;
}

ASPEN__ARGS_EVAL(eval_date_diff, date_unit_args, compute_date_diff)

/* ------------------------------------------------------------------------ */
/* The operator table (expr_int.h, aspen__op_t)                              */
/* ------------------------------------------------------------------------ */

#define P ASPEN__OP_PURE
#define DATEPART(name, part)                                                   \
   {name, parse_date_part, eval_date_part, 0, 0, part, P, &date_tz_args}

static const aspen__op_t ops[] = {
   {"$dateAdd", parse_date_add, eval_date_add, 0, 0, 0, P, &date_add_args},
   {"$dateDiff", parse_date_diff, eval_date_diff, 0, 0, 0, P, &date_unit_args},
   {"$dateFromParts", parse_date_from_parts, eval_date_from_parts, 0, 0, 0, P,
    &date_from_parts_args},
   {"$dateFromString", parse_date_from_string, eval_date_from_string, 0, 0, 0,
    P, &date_from_string_args},
   {"$dateSubtract", parse_date_add, eval_date_add, 0, 0, 1, P, &date_add_args},
   {"$dateToParts", parse_date_to_parts, eval_date_to_parts, 0, 0, 0, P,
    &date_to_parts_args},
   {"$dateToString", parse_date_to_string, eval_date_to_string, 0, 0, 0, P,
    &date_to_string_args},
   {"$dateTrunc", parse_date_trunc, eval_date_trunc, 0, 0, 0, P,
    &date_unit_args},
   DATEPART("$dayOfMonth", DP_DAY_OF_MONTH),
   DATEPART("$dayOfWeek", DP_DAY_OF_WEEK),
   DATEPART("$dayOfYear", DP_DAY_OF_YEAR),
   DATEPART("$hour", DP_HOUR),
   DATEPART("$isoDayOfWeek", DP_ISO_DAY_OF_WEEK),
   DATEPART("$isoWeek", DP_ISO_WEEK),
   DATEPART("$isoWeekYear", DP_ISO_WEEK_YEAR),
   DATEPART("$millisecond", DP_MILLISECOND),
   DATEPART("$minute", DP_MINUTE),
   DATEPART("$month", DP_MONTH),
   DATEPART("$second", DP_SECOND),
   DATEPART("$week", DP_WEEK),
   DATEPART("$year", DP_YEAR),
};

#undef P
#undef DATEPART

const aspen__op_table_t aspen__expr_date_ops = {
   ops, sizeof ops / sizeof ops[0]};
