/*
 * replay.c - a plain main for aspen's fuzz targets: runs every file named on
 * the command line, or found (non-recursively, sorted by name) in a directory
 * named there, through LLVMFuzzerTestOneInput once. Built with the normal
 * compiler and linked with one fuzz_<target>.c, it is how the committed
 * corpora become ctests (tests/fuzz/CMakeLists.txt): under the ASan+UBSan
 * build a regression in any parser shows up on every test run, without
 * clang or libFuzzer. Each input is copied into a heap block of exactly its
 * size so that an over-read hits ASan's redzone, as it would under libFuzzer.
 *
 * Exit status: 0 when every input ran (a crash aborts the process), 1 when a
 * path cannot be read or a directory holds no inputs.
 */
#include "fuzz_common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool
run_file(const char *path)
{
   FILE *f = fopen(path, "rb");
   if (!f) {
      fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
      return false;
   }
   size_t cap = 4096, len = 0;
   uint8_t *all = malloc(cap);
   size_t n;
   while (all && (n = fread(all + len, 1, cap - len, f)) > 0) {
      len += n;
      if (len == cap) {
         cap *= 2;
         uint8_t *grown = realloc(all, cap);
         if (!grown) {
            free(all);
         }
         all = grown;
      }
   }
   fclose(f);
   if (!all) {
      fprintf(stderr, "replay: out of memory reading %s\n", path);
      return false;
   }
   /* Exactly `len` bytes, so reading one past the end is caught. */
   uint8_t *exact = malloc(len ? len : 1);
   if (!exact) {
      free(all);
      return false;
   }
   memcpy(exact, all, len);
   free(all);
   (void) LLVMFuzzerTestOneInput(exact, len);
   free(exact);
   return true;
}

static int
cmp_names(const void *a, const void *b)
{
   return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Runs every regular file in `dir`; returns how many ran, or -1 on error. */
static int
run_dir(const char *dir)
{
   DIR *d = opendir(dir);
   if (!d) {
      fprintf(stderr, "replay: cannot open %s: %s\n", dir, strerror(errno));
      return -1;
   }
   char **names = NULL;
   size_t n = 0, cap = 0;
   struct dirent *de;
   while ((de = readdir(d)) != NULL) {
      if (de->d_name[0] == '.') {
         continue;
      }
      if (n == cap) {
         cap = cap ? cap * 2 : 64;
         char **grown = realloc(names, cap * sizeof *names);
         if (!grown) {
            break;
         }
         names = grown;
      }
      names[n++] = strdup(de->d_name);
   }
   closedir(d);
   if (n) {
      qsort(names, n, sizeof *names, cmp_names);
   }
   int ran = 0;
   for (size_t i = 0; i < n; i++) {
      char path[4096];
      struct stat st;
      snprintf(path, sizeof path, "%s/%s", dir, names[i]);
      if (names[i] && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
         if (!run_file(path)) {
            ran = -1;
         } else if (ran >= 0) {
            ran++;
         }
      }
      free(names[i]);
   }
   free(names);
   return ran;
}

int
main(int argc, char **argv)
{
   int total = 0;
   if (argc < 2) {
      fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
      return 1;
   }
   for (int i = 1; i < argc; i++) {
      struct stat st;
      if (stat(argv[i], &st) != 0) {
         fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
         return 1;
      }
      if (S_ISDIR(st.st_mode)) {
         int ran = run_dir(argv[i]);
         if (ran <= 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i],
                    ran == 0 ? "no inputs" : "unreadable inputs");
            return 1;
         }
         total += ran;
      } else if (run_file(argv[i])) {
         total++;
      } else {
         return 1;
      }
   }
   printf("replay: %d inputs ran\n", total);
   return 0;
}
