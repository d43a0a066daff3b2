/* Shared by the unit tests that read known answers: hex text to bytes, and
 * byte strings compared with both printed in hex when they differ. */
#ifndef P11MK_TEST_HEX_H
#define P11MK_TEST_HEX_H

#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hex (white space ignored) to at most cap bytes; the count. Asserts on a
 * stray character or overflow (include after cmocka.h). */
static inline size_t test_unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (; *s; s++) {
        if (isspace((unsigned char)*s))
            continue;
        assert_true(isxdigit((unsigned char)s[0]) && isxdigit((unsigned char)s[1]));
        char b[3] = {s[0], s[1], 0};
        assert_true(n < cap);
        out[n++] = (uint8_t)strtoul(b, NULL, 16);
        s++;
    }
    return n;
}

static inline void test_assert_bytes(const uint8_t *got, size_t glen, const uint8_t *want, size_t wlen,
                                     const char *what)
{
    if (glen != wlen || memcmp(got, want, wlen) != 0) {
        fprintf(stderr, "%s:\n  got  (%zu) ", what, glen);
        for (size_t i = 0; i < glen; i++)
            fprintf(stderr, "%02x", got[i]);
        fprintf(stderr, "\n  want (%zu) ", wlen);
        for (size_t i = 0; i < wlen; i++)
            fprintf(stderr, "%02x", want[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(glen, wlen);
    assert_memory_equal(got, want, wlen);
}

#endif
