/* ext/ascii.h's eight-at-a-time checks of field names and values
 * (ymo_ascii_all with ymo_ascii_name8 or ymo_ascii_printable8), against
 * byte-by-byte definitions: every byte value at every position of every
 * length up to 40, in a block of exactly that length (so that AddressSanitizer,
 * which the test runs under, sees any read outside it), and random
 * strings. A "yes" must be right; a "no" only costs the caller its exact
 * check, but must not come for the usual text (letters, digits and '-'
 * in names, printable ASCII in values) of 4 bytes or more. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"

static int failed, checked;

static int
is_name_byte(unsigned char c)           /* RFC 9110 tchar */
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

static int
is_usual_name_byte(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || c == '-';
}

static int
is_value_byte(unsigned char c)          /* not a control but for tab */
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int
is_usual_value_byte(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e;
}

static void
check(const unsigned char *src, size_t n)
{
    char *a = malloc(n ? n : 1);
    memcpy(a, src, n);
    int names = 1, usual_names = 1, values = 1, usual_values = 1;
    for (size_t i = 0; i < n; i++) {
        names &= is_name_byte(src[i]);
        usual_names &= is_usual_name_byte(src[i]);
        values &= is_value_byte(src[i]);
        usual_values &= is_usual_value_byte(src[i]);
    }
    int got_name = ymo_ascii_all(a, n, ymo_ascii_name8);
    int got_value = ymo_ascii_all(a, n, ymo_ascii_printable8);
    checked++;
    if ((got_name && !names) || (got_value && !values) ||
        (n >= 4 && usual_names && !got_name) ||
        (n >= 4 && usual_values && !got_value) ||
        (got_name && !usual_names) || (got_value && !usual_values)) {
        if (failed++ < 20) {
            printf("FAIL n=%zu name %d/%d value %d/%d:", n, got_name,
                   usual_names, got_value, usual_values);
            for (size_t i = 0; i < n; i++) {
                printf(" %02x", src[i]);
            }
            printf("\n");
        }
    }
    free(a);
}

int
main(void)
{
    unsigned char buf[64];
    const unsigned char fills[] = {'a', 'Z', '0', '-', ' ', '~'};
    for (size_t f = 0; f < sizeof(fills); f++) {
        for (size_t n = 0; n <= 40; n++) {
            memset(buf, fills[f], n);
            check(buf, n);
            for (size_t at = 0; at < n; at++) {
                for (int c = 0; c < 256; c++) {
                    memset(buf, fills[f], n);
                    buf[at] = (unsigned char)c;
                    check(buf, n);
                }
            }
        }
    }
    /* Random text from a small alphabet around the edges of both sets. */
    const unsigned char alphabet[] = {
        '0', '9', 'a', 'z', 'A', 'Z', '-', '@', '[', '`', '{', '/', ':',
        ' ', '~', 0x7f, 0x80, 0xff, '\t', 0x1f, 0x00, '_', '.', 0xc0,
        0xe0, 0xda, 0xfa,
    };
    srand(1);
    for (int k = 0; k < 200000; k++) {
        size_t n = (size_t)(rand() % 33);
        int usual = rand() % 2;
        for (size_t i = 0; i < n; i++) {
            buf[i] = usual ? "abcXYZ09-"[rand() % 9]
                           : alphabet[rand() % sizeof(alphabet)];
        }
        check(buf, n);
    }
    printf("%d checked, %d failed\n", checked, failed);
    return failed != 0;
}
