/* Shared by the unit tests that read known answers: hex text to bytes. */
#ifndef P11MK_TEST_HEX_H
#define P11MK_TEST_HEX_H

#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

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

#endif
