/* tok_attrs_parse when memory runs out (malloc wrapped: -Wl,--wrap=malloc,
 * failing the Nth allocation of a parse, for every N): the answer is
 * TOK_ATTRS_NOMEM, never -1 ("malformed", which the token layer reports as
 * a damaged record), and nothing leaks; a malformed record still answers
 * -1. A key's nested template (CKA_WRAP_TEMPLATE) read out of memory, to
 * check a wrap or for C_GetAttributeValue, answers CKR_HOST_MEMORY, not
 * CKR_GENERAL_ERROR. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "token/tok_attr.h"
#include "token/tok_policy.h"

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

static void test_nested_template_nomem(void **state)
{
    (void)state;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL yes = CK_TRUE;
    tok_attrs nested = TOK_ATTRS_INIT, obj = TOK_ATTRS_INIT, out = TOK_ATTRS_INIT;
    uint8_t *blob = NULL;
    size_t len = 0;

    assert_int_equal(tok_attrs_set(&nested, CKA_EXTRACTABLE, &yes, 1), 0);
    assert_int_equal(tok_attrs_set(&nested, CKA_LABEL, "wrapped", 7), 0);
    assert_int_equal(tok_attrs_serialize(&nested, &blob, &len), 0);
    assert_int_equal(tok_attrs_set(&obj, CKA_CLASS, &cls, sizeof(cls)), 0);
    assert_int_equal(tok_attrs_set(&obj, CKA_WRAP_TEMPLATE, blob, len), 0);

    for (int via_get = 0; via_get < 2; via_get++) {
        long n;
        for (n = 1;; n++) {
            CK_ATTRIBUTE inner[2] = {{CKA_EXTRACTABLE, NULL, 0}, {CKA_LABEL, NULL, 0}};
            CK_ATTRIBUTE t = {CKA_WRAP_TEMPLATE, via_get ? inner : NULL, via_get ? sizeof(inner) : 0};
            CK_RV rv;
            seen = 0;
            fail_at = n;
            rv = via_get ? tok_policy_get(&obj, &t, 1) : tok_template_get(&obj, CKA_WRAP_TEMPLATE, &out);
            fail_at = 0;
            if (seen < n) {
                assert_int_equal(rv, CKR_OK);
                if (via_get)
                    assert_int_equal(inner[1].ulValueLen, 7);
                else
                    assert_int_equal(out.n, 2);
                break;
            }
            if (rv != CKR_HOST_MEMORY)
                fail_msg("%s, allocation %ld failing: 0x%lx, not CKR_HOST_MEMORY",
                         via_get ? "tok_policy_get" : "tok_template_get", n, (unsigned long)rv);
        }
        assert_true(n > 2);
    }
    tok_attrs_free(&out);
    tok_attrs_free(&obj);
    tok_attrs_free(&nested);
    free(blob);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_parse_nomem), cmocka_unit_test(test_nested_template_nomem)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
