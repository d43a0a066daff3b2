/* tok_attrs_parse when memory runs out (malloc wrapped: -Wl,--wrap=malloc,
 * failing the Nth allocation of a parse, for every N): the answer is
 * TOK_ATTRS_NOMEM, never -1 ("malformed", which the token layer reports as
 * a damaged record), and nothing leaks; a malformed record still answers
 * -1. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "token/tok_attr.h"

void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);

static long fail_at; /* the allocation that fails, counted from 1 while armed; 0: none */
static long seen;

void *__wrap_malloc(size_t n)
{
    if (fail_at && ++seen == fail_at)
        return NULL;
    return __real_malloc(n);
}

static void test_parse_nomem(void **state)
{
    (void)state;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    tok_attrs a = TOK_ATTRS_INIT, back = TOK_ATTRS_INIT;
    uint8_t *blob = NULL;
    size_t len = 0;

    assert_int_equal(tok_attrs_set(&a, CKA_CLASS, &cls, sizeof(cls)), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_TOKEN, &yes, 1), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_LABEL, "a label", 7), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_APPLICATION, "an application", 14), 0);
    assert_int_equal(tok_attrs_serialize(&a, &blob, &len), 0);

    long n;
    for (n = 1;; n++) {
        seen = 0;
        fail_at = n;
        int rc = tok_attrs_parse(blob, len, &back);
        fail_at = 0;
        if (seen < n) { /* no allocation failed: the parse is whole */
            assert_int_equal(rc, 0);
            assert_int_equal(back.n, a.n);
            break;
        }
        if (rc != TOK_ATTRS_NOMEM)
            fail_msg("allocation %ld failing: tok_attrs_parse answered %d, not TOK_ATTRS_NOMEM", n, rc);
        assert_int_equal(back.n, 0);
    }
    assert_true(n > 4); /* the array and each copied value */
    tok_attrs_free(&back);
    uint8_t *longer = malloc(len + 1); /* a trailing byte: malformed */
    assert_non_null(longer);
    memcpy(longer, blob, len);
    longer[len] = 0;
    assert_int_equal(tok_attrs_parse(longer, len + 1, &back), -1);
    free(longer);
    free(blob);
    tok_attrs_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_parse_nomem)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
