/* What the libFuzzer targets (fuzz_*.c here, built by run.sh) share: a
 * check that aborts with its file, line and condition (an abort is what
 * libFuzzer records as a crash), and an exact-size copy of an input. */
#ifndef YMO_FUZZ_CHECK_H
#define YMO_FUZZ_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                      \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                    \
            abort();                                                     \
        }                                                                \
    } while (0)

/* A private copy of exactly n bytes, so ASan catches reading past it. */
static inline char *
dup_exact(const uint8_t *d, size_t n)
{
    char *p = malloc(n ? n : 1);

    CHECK(p != NULL);
    if (n) {
        memcpy(p, d, n);
    }
    return p;
}

#endif
