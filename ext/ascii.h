/* ascii.h - case-insensitive comparison of protocol text (field names,
 * tokens such as "chunked" or "close") with a lower-case literal. ASCII
 * only and exact: 'A'..'Z' are folded, every other byte is compared as
 * it is (the C library's tolower() depends on the locale). Plain C, no
 * state: any thread. */
#ifndef YMO_ASCII_H
#define YMO_ASCII_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define YMO_ASCII_ONES 0x0101010101010101ULL

/* The eight bytes of w with 'A'..'Z' made lower case and every other
 * byte as it is. No byte carries into the next: each has its top bit set
 * aside before at most 0x3f is added to it. */
static inline uint64_t
ymo_ascii_lower8(uint64_t w)
{
    uint64_t low7 = w & (0x7f * YMO_ASCII_ONES);
    uint64_t ge_a = low7 + (0x80 - 'A') * YMO_ASCII_ONES;  /* >= 'A' */
    uint64_t gt_z = low7 + (0x80 - 'Z' - 1) * YMO_ASCII_ONES; /* > 'Z' */
    uint64_t upper = ge_a & ~gt_z & ~w & (0x80 * YMO_ASCII_ONES);
    return w | (upper >> 2);
}

/* Whether a[0..n) is lower[0..n) but for the case of its letters; lower
 * holds no upper-case letter. Eight bytes at a time, the last eight (or
 * four) read where they end, overlapping the ones before: never a byte
 * outside either. */
static inline int
ymo_ascii_ieq(const char *a, const char *lower, size_t n)
{
    if (n >= 8) {
        uint64_t x, y;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, lower + i, 8);
            if (ymo_ascii_lower8(x) != y) {
                return 0;
            }
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, lower + n - 8, 8);
        return ymo_ascii_lower8(x) == y;
    }
    if (n >= 4) {
        uint32_t x0, x1, y0, y1;
        memcpy(&x0, a, 4);
        memcpy(&x1, a + n - 4, 4);
        memcpy(&y0, lower, 4);
        memcpy(&y1, lower + n - 4, 4);
        return ymo_ascii_lower8(x0) == y0 && ymo_ascii_lower8(x1) == y1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i];
        if ((x >= 'A' && x <= 'Z' ? x + 32 : x) != (unsigned char)lower[i]) {
            return 0;
        }
    }
    return 1;
}

/* The top bit of each of w's bytes that lies in lo..hi (both below
 * 0x80), the other bits clear: lower8's two compares without a carry. */
static inline uint64_t
ymo_ascii_in8(uint64_t w, unsigned lo, unsigned hi)
{
    uint64_t low7 = w & (0x7f * YMO_ASCII_ONES);
    uint64_t ge_lo = low7 + (0x80 - lo) * YMO_ASCII_ONES;
    uint64_t gt_hi = low7 + (0x80 - hi - 1) * YMO_ASCII_ONES;
    return ge_lo & ~gt_hi & ~w & (0x80 * YMO_ASCII_ONES);
}

/* Top bits of w's printable ASCII bytes (' '..'~'): what a field value
 * holds but for tabs and obs-text. */
static inline uint64_t
ymo_ascii_printable8(uint64_t w)
{
    return ymo_ascii_in8(w, 0x20, 0x7e);
}

/* Top bits of w's letters, digits and '-': what a field name holds but
 * for the rarer token characters. */
static inline uint64_t
ymo_ascii_name8(uint64_t w)
{
    uint64_t low7 = w & (0x7f * YMO_ASCII_ONES);
    return ymo_ascii_in8(w, '0', '9') |
           (ymo_ascii_in8(low7 | (0x20 * YMO_ASCII_ONES), 'a', 'z') &
            ~w) |
           ymo_ascii_in8(w, '-', '-');
}

/* Whether every byte of a[0..n) has its top bit in in8(), eight at a
 * time as ymo_ascii_ieq reads them (never a byte outside a[0..n)). 0
 * also for n < 4: a "no" only sends the caller to its exact check. */
static inline int
ymo_ascii_all(const char *a, size_t n, uint64_t (*in8)(uint64_t))
{
    const uint64_t all = 0x80 * YMO_ASCII_ONES;
    uint64_t x;
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            if (in8(x) != all) {
                return 0;
            }
        }
        memcpy(&x, a + n - 8, 8);
        return in8(x) == all;
    }
    if (n >= 4) {
        uint32_t x0, x1;
        memcpy(&x0, a, 4);
        memcpy(&x1, a + n - 4, 4);
        return in8(x0 | (uint64_t)x1 << 32) == all;
    }
    return 0;
}

/* a[0..n) against a lower-case string literal, lengths included (the
 * "" makes anything but a literal a compile error). */
#define YMO_ASCII_IS(a, n, lit)                                            \
    ((size_t)(n) == sizeof("" lit) - 1 &&                                  \
     ymo_ascii_ieq((a), "" lit, sizeof("" lit) - 1))

#endif
