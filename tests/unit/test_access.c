/* The token layer's access rules (token/include/token/tok_access.h), called
 * directly on attribute sets built here: who sees an object, who may write
 * it, which key may wrap which (CKA_WRAP, CKA_EXTRACTABLE,
 * CKA_WRAP_WITH_TRUSTED and CKA_TRUSTED, CKA_WRAP_TEMPLATE), and the objects
 * unwrap and derive make from the caller's template and the key's
 * CKA_UNWRAP_TEMPLATE / CKA_DERIVE_TEMPLATE; each under the default
 * wrap_policy and, where it differs, under strict. Every return code the
 * header lists is reached (but CKR_HOST_MEMORY). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>

#include "token/tok_access.h"

/* An attribute set of (type, CK_BBOOL or CK_ULONG) pairs: a CKA_* that
 * tok_attr_is_bool says is a boolean gets one byte, any other a CK_ULONG. */
typedef struct {
    CK_ATTRIBUTE_TYPE type;
    CK_ULONG val;
} av;
#define ATTRS(out, ...) attrs_of(out, (const av[]){__VA_ARGS__}, sizeof((const av[]){__VA_ARGS__}) / sizeof(av))

static void attrs_of(tok_attrs *out, const av *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (tok_attr_is_bool(v[i].type))
            assert_int_equal(tok_attrs_set_bool(out, v[i].type, v[i].val != 0), 0);
        else
            assert_int_equal(tok_attrs_set_ulong(out, v[i].type, v[i].val), 0);
    }
}

/* Store `inner` packed as obj's template attribute t (CKA_WRAP_TEMPLATE, ...). */
static void set_template(tok_attrs *obj, CK_ATTRIBUTE_TYPE t, const tok_attrs *inner)
{
    uint8_t *buf;
    size_t len;
    assert_int_equal(tok_attrs_serialize(inner, &buf, &len), 0);
    assert_int_equal(tok_attrs_set(obj, t, buf, len), 0);
    free(buf);
}

static int strict_off(void **state)
{
    (void)state;
    tok_policy_set_wrap_strict(false);
    return 0;
}

static const tok_access user_rw = {.slot = 1, .rw = true, .who = CKU_USER};
static const tok_access user_ro = {.slot = 1, .rw = false, .who = CKU_USER};
static const tok_access so_rw = {.slot = 1, .rw = true, .who = CKU_SO};
static const tok_access nobody_rw = {.slot = 1, .rw = true, .who = TOK_NOBODY};
static const tok_access nobody_ro = {.slot = 1, .rw = false, .who = TOK_NOBODY};

/* ---- seeing and writing ------------------------------------------------- */

static void test_sees(void **state)
{
    (void)state;
    tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT, unsaid = TOK_ATTRS_INIT;
    ATTRS(&pub, {CKA_CLASS, CKO_DATA}, {CKA_TOKEN, 1}, {CKA_PRIVATE, 0});
    ATTRS(&priv, {CKA_CLASS, CKO_DATA}, {CKA_TOKEN, 1}, {CKA_PRIVATE, 1});
    ATTRS(&unsaid, {CKA_CLASS, CKO_DATA}); /* no CKA_PRIVATE: public */

    assert_true(tok_access_sees(&user_rw, &pub));
    assert_true(tok_access_sees(&so_rw, &pub));
    assert_true(tok_access_sees(&nobody_ro, &pub));
    assert_true(tok_access_sees(&nobody_ro, &unsaid));
    /* A private object exists for the user alone: not for the SO, not for nobody. */
    assert_true(tok_access_sees(&user_rw, &priv));
    assert_true(tok_access_sees(&user_ro, &priv));
    assert_false(tok_access_sees(&so_rw, &priv));
    assert_false(tok_access_sees(&nobody_rw, &priv));
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);
    tok_attrs_free(&unsaid);
}

static void test_write(void **state)
{
    (void)state;
    tok_attrs tok_pub = TOK_ATTRS_INIT, tok_priv = TOK_ATTRS_INIT, ses_pub = TOK_ATTRS_INIT, ses_priv = TOK_ATTRS_INIT;
    ATTRS(&tok_pub, {CKA_TOKEN, 1}, {CKA_PRIVATE, 0});
    ATTRS(&tok_priv, {CKA_TOKEN, 1}, {CKA_PRIVATE, 1});
    ATTRS(&ses_pub, {CKA_TOKEN, 0}, {CKA_PRIVATE, 0});
    ATTRS(&ses_priv, {CKA_TOKEN, 0}, {CKA_PRIVATE, 1});

    assert_int_equal(tok_access_write(&user_rw, &tok_pub), CKR_OK);
    assert_int_equal(tok_access_write(&user_rw, &tok_priv), CKR_OK);
    assert_int_equal(tok_access_write(&so_rw, &tok_pub), CKR_OK);
    assert_int_equal(tok_access_write(&nobody_rw, &tok_pub), CKR_OK);
    /* A read-only session writes session objects only. */
    assert_int_equal(tok_access_write(&user_ro, &tok_pub), CKR_SESSION_READ_ONLY);
    assert_int_equal(tok_access_write(&user_ro, &ses_pub), CKR_OK);
    assert_int_equal(tok_access_write(&user_ro, &ses_priv), CKR_OK);
    assert_int_equal(tok_access_write(&nobody_ro, &ses_pub), CKR_OK);
    /* Private objects want the user, token and session objects alike. */
    assert_int_equal(tok_access_write(&so_rw, &tok_priv), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(tok_access_write(&nobody_rw, &tok_priv), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(tok_access_write(&so_rw, &ses_priv), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(tok_access_write(&nobody_ro, &ses_priv), CKR_USER_NOT_LOGGED_IN);
    /* Both wrong: the session's mode is checked first. */
    assert_int_equal(tok_access_write(&nobody_ro, &tok_priv), CKR_SESSION_READ_ONLY);
    tok_attrs_free(&tok_pub);
    tok_attrs_free(&tok_priv);
    tok_attrs_free(&ses_pub);
    tok_attrs_free(&ses_priv);
}

/* ---- wrapping ------------------------------------------------------------ */

static void test_wrap_permitted(void **state)
{
    (void)state;
    tok_attrs w = TOK_ATTRS_INIT, nowrap = TOK_ATTRS_INIT, target = TOK_ATTRS_INIT, stuck = TOK_ATTRS_INIT;
    ATTRS(&w, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_KEY_TYPE, CKK_AES}, {CKA_WRAP, 1});
    ATTRS(&nowrap, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_KEY_TYPE, CKK_AES}, {CKA_WRAP, 0}, {CKA_ENCRYPT, 1});
    ATTRS(&target, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_KEY_TYPE, CKK_AES}, {CKA_EXTRACTABLE, 1});
    ATTRS(&stuck, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_KEY_TYPE, CKK_AES}, {CKA_EXTRACTABLE, 0});

    assert_int_equal(tok_wrap_permitted(&w, NULL), CKR_OK);
    assert_int_equal(tok_wrap_permitted(&w, &target), CKR_OK);
    assert_int_equal(tok_wrap_permitted(&nowrap, NULL), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(tok_wrap_permitted(&nowrap, &target), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(tok_wrap_permitted(&target, &target), CKR_KEY_FUNCTION_NOT_PERMITTED); /* no CKA_WRAP */
    assert_int_equal(tok_wrap_permitted(&w, &stuck), CKR_KEY_UNEXTRACTABLE);
    tok_attrs_remove(&stuck, CKA_EXTRACTABLE); /* absent: not extractable */
    assert_int_equal(tok_wrap_permitted(&w, &stuck), CKR_KEY_UNEXTRACTABLE);
    tok_attrs_free(&w);
    tok_attrs_free(&nowrap);
    tok_attrs_free(&target);
    tok_attrs_free(&stuck);
}

static void test_wrap_with_trusted(void **state)
{
    (void)state;
    tok_attrs w = TOK_ATTRS_INIT, trusted = TOK_ATTRS_INIT, target = TOK_ATTRS_INIT;
    ATTRS(&w, {CKA_WRAP, 1}, {CKA_TRUSTED, 0});
    ATTRS(&trusted, {CKA_WRAP, 1}, {CKA_TRUSTED, 1});
    ATTRS(&target, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_EXTRACTABLE, 1}, {CKA_WRAP_WITH_TRUSTED, 1});

    assert_int_equal(tok_wrap_permitted(&w, &target), CKR_KEY_NOT_WRAPPABLE);
    assert_int_equal(tok_wrap_permitted(&trusted, &target), CKR_OK);
    tok_attrs_remove(&w, CKA_TRUSTED); /* absent: not trusted */
    assert_int_equal(tok_wrap_permitted(&w, &target), CKR_KEY_NOT_WRAPPABLE);
    assert_int_equal(tok_attrs_set_bool(&target, CKA_WRAP_WITH_TRUSTED, false), 0);
    assert_int_equal(tok_wrap_permitted(&w, &target), CKR_OK);
    /* Unextractable comes first. */
    ATTRS(&target, {CKA_WRAP_WITH_TRUSTED, 1}, {CKA_EXTRACTABLE, 0});
    assert_int_equal(tok_wrap_permitted(&w, &target), CKR_KEY_UNEXTRACTABLE);
    tok_attrs_free(&w);
    tok_attrs_free(&trusted);
    tok_attrs_free(&target);
}

static void test_wrap_template(void **state)
{
    (void)state;
    tok_attrs w = TOK_ATTRS_INIT, only = TOK_ATTRS_INIT, aes = TOK_ATTRS_INIT, gen = TOK_ATTRS_INIT,
              untyped = TOK_ATTRS_INIT;
    ATTRS(&only, {CKA_KEY_TYPE, CKK_AES}, {CKA_SENSITIVE, 1});
    ATTRS(&w, {CKA_WRAP, 1});
    set_template(&w, CKA_WRAP_TEMPLATE, &only);
    ATTRS(&aes, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_KEY_TYPE, CKK_AES}, {CKA_EXTRACTABLE, 1}, {CKA_SENSITIVE, 1});
    ATTRS(&gen, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_KEY_TYPE, CKK_GENERIC_SECRET}, {CKA_EXTRACTABLE, 1},
          {CKA_SENSITIVE, 1});
    ATTRS(&untyped, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_EXTRACTABLE, 1}, {CKA_SENSITIVE, 1});

    assert_int_equal(tok_wrap_permitted(&w, NULL), CKR_OK);
    assert_int_equal(tok_wrap_permitted(&w, &aes), CKR_OK);
    assert_int_equal(tok_wrap_permitted(&w, &gen), CKR_KEY_NOT_WRAPPABLE);     /* another value */
    assert_int_equal(tok_wrap_permitted(&w, &untyped), CKR_KEY_NOT_WRAPPABLE); /* the attribute missing */
    assert_int_equal(tok_attrs_set_bool(&aes, CKA_SENSITIVE, false), 0);
    assert_int_equal(tok_wrap_permitted(&w, &aes), CKR_KEY_NOT_WRAPPABLE); /* every attribute counts */
    /* An empty template allows anything. */
    tok_attrs none = TOK_ATTRS_INIT;
    set_template(&w, CKA_WRAP_TEMPLATE, &none);
    assert_int_equal(tok_wrap_permitted(&w, &gen), CKR_OK);
    /* A template of one attribute. */
    tok_attrs one = TOK_ATTRS_INIT;
    ATTRS(&one, {CKA_KEY_TYPE, CKK_AES});
    set_template(&w, CKA_WRAP_TEMPLATE, &one);
    assert_int_equal(tok_wrap_permitted(&w, &gen), CKR_KEY_NOT_WRAPPABLE);
    assert_int_equal(tok_wrap_permitted(&w, &aes), CKR_OK);
    tok_attrs_free(&one);
    tok_attrs_free(&w);
    tok_attrs_free(&only);
    tok_attrs_free(&aes);
    tok_attrs_free(&gen);
    tok_attrs_free(&untyped);
}

/* wrap_policy = strict: only a key generated on the token at random that
 * never left it wraps or unwraps. */
static void test_wrap_strict(void **state)
{
    (void)state;
    tok_attrs w = TOK_ATTRS_INIT, target = TOK_ATTRS_INIT;
    ATTRS(&w, {CKA_WRAP, 1}, {CKA_UNWRAP, 1}, {CKA_KEY_GEN_MECHANISM, CKM_AES_KEY_GEN}, {CKA_LOCAL, 1},
          {CKA_NEVER_EXTRACTABLE, 1});
    ATTRS(&target, {CKA_CLASS, CKO_SECRET_KEY}, {CKA_EXTRACTABLE, 1});
    tok_policy_set_wrap_strict(true);
    assert_int_equal(tok_wrap_permitted(&w, &target), CKR_OK);
    assert_int_equal(tok_wrap_permitted(&w, NULL), CKR_OK);
    const av spoil[] = {{CKA_LOCAL, 0},
                        {CKA_NEVER_EXTRACTABLE, 0},
                        {CKA_KEY_GEN_MECHANISM, CKM_PKCS5_PBKD2},
                        {CKA_KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION}};
    for (size_t i = 0; i < sizeof(spoil) / sizeof(spoil[0]); i++) {
        tok_attrs k = TOK_ATTRS_INIT;
        assert_int_equal(tok_attrs_copy(&k, &w), 0);
        attrs_of(&k, &spoil[i], 1);
        assert_int_equal(tok_wrap_permitted(&k, &target), CKR_KEY_FUNCTION_NOT_PERMITTED);
        assert_int_equal(tok_wrap_permitted(&k, NULL), CKR_KEY_FUNCTION_NOT_PERMITTED);
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &(CK_OBJECT_CLASS){CKO_SECRET_KEY}, sizeof(CK_OBJECT_CLASS)},
                            {CKA_KEY_TYPE, &(CK_KEY_TYPE){CKK_AES}, sizeof(CK_KEY_TYPE)}};
        tok_attrs obj = TOK_ATTRS_INIT;
        assert_int_equal(tok_unwrap_template(&k, t, 2, &obj), CKR_KEY_FUNCTION_NOT_PERMITTED);
        tok_attrs_free(&obj);
        tok_attrs_free(&k);
        /* ... and the same key passes under the default policy. */
        tok_policy_set_wrap_strict(false);
        assert_int_equal(tok_attrs_copy(&k, &w), 0);
        attrs_of(&k, &spoil[i], 1);
        assert_int_equal(tok_wrap_permitted(&k, &target), CKR_OK);
        tok_attrs_free(&k);
        tok_policy_set_wrap_strict(true);
    }
    /* Absent is not made on the token, not never extracted. */
    const CK_ATTRIBUTE_TYPE needed[] = {CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_KEY_GEN_MECHANISM};
    for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
        tok_attrs k = TOK_ATTRS_INIT;
        assert_int_equal(tok_attrs_copy(&k, &w), 0);
        tok_attrs_remove(&k, needed[i]);
        assert_int_equal(tok_wrap_permitted(&k, &target), CKR_KEY_FUNCTION_NOT_PERMITTED);
        tok_attrs_free(&k);
    }
    tok_attrs_free(&w);
    tok_attrs_free(&target);
}

/* ---- unwrap and derive templates ------------------------------------------ */

static CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY, data_class = CKO_DATA;
static CK_KEY_TYPE aes_type = CKK_AES, gen_type = CKK_GENERIC_SECRET;
static CK_BBOOL t_true = CK_TRUE, t_false = CK_FALSE;

static void test_unwrap_template(void **state)
{
    (void)state;
    tok_attrs k = TOK_ATTRS_INIT, kt = TOK_ATTRS_INIT, obj = TOK_ATTRS_INIT, plain = TOK_ATTRS_INIT;
    CK_ATTRIBUTE aes[] = {{CKA_CLASS, &secret_class, sizeof(secret_class)},
                          {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)}};
    CK_ATTRIBUTE gen[] = {{CKA_CLASS, &secret_class, sizeof(secret_class)},
                          {CKA_KEY_TYPE, &gen_type, sizeof(gen_type)}};
    CK_ATTRIBUTE unsealed[] = {{CKA_CLASS, &secret_class, sizeof(secret_class)},
                               {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
                               {CKA_SENSITIVE, &t_false, 1}};

    ATTRS(&plain, {CKA_UNWRAP, 0}, {CKA_DECRYPT, 1});
    assert_int_equal(tok_unwrap_template(&plain, aes, 2, &obj), CKR_KEY_FUNCTION_NOT_PERMITTED);
    tok_attrs_free(&obj);

    /* No CKA_UNWRAP_TEMPLATE: the caller's template alone. */
    ATTRS(&k, {CKA_UNWRAP, 1});
    assert_int_equal(tok_unwrap_template(&k, aes, 2, &obj), CKR_OK);
    CK_ULONG v;
    assert_true(tok_attrs_get_ulong(&obj, CKA_KEY_TYPE, &v) && v == CKK_AES);
    tok_attrs_free(&obj);

    /* The key's template adds what the caller's lacks ... */
    ATTRS(&kt, {CKA_KEY_TYPE, CKK_AES}, {CKA_SENSITIVE, 1}, {CKA_EXTRACTABLE, 0});
    set_template(&k, CKA_UNWRAP_TEMPLATE, &kt);
    CK_ATTRIBUTE cls_only[] = {{CKA_CLASS, &secret_class, sizeof(secret_class)}};
    assert_int_equal(tok_unwrap_template(&k, cls_only, 1, &obj), CKR_OK);
    assert_true(tok_attrs_get_ulong(&obj, CKA_KEY_TYPE, &v) && v == CKK_AES);
    assert_true(tok_attrs_get_bool(&obj, CKA_SENSITIVE, false));
    assert_false(tok_attrs_get_bool(&obj, CKA_EXTRACTABLE, true));
    tok_attrs_free(&obj);
    assert_int_equal(tok_unwrap_template(&k, aes, 2, &obj), CKR_OK); /* the same value twice is no conflict */
    tok_attrs_free(&obj);
    /* ... and a value of the caller's that differs is a conflict. */
    assert_int_equal(tok_unwrap_template(&k, gen, 2, &obj), CKR_TEMPLATE_INCONSISTENT);
    tok_attrs_free(&obj);
    assert_int_equal(tok_unwrap_template(&k, unsealed, 3, &obj), CKR_TEMPLATE_INCONSISTENT);
    tok_attrs_free(&obj);
    /* The policy's own codes come through. */
    CK_ATTRIBUTE classless[] = {{CKA_KEY_TYPE, &aes_type, sizeof(aes_type)}};
    assert_int_equal(tok_unwrap_template(&k, classless, 1, &obj), CKR_TEMPLATE_INCOMPLETE);
    tok_attrs_free(&obj);

    /* strict: an unwrapped key is sensitive, whoever's template says otherwise. */
    tok_attrs sk = TOK_ATTRS_INIT;
    ATTRS(&sk, {CKA_UNWRAP, 1}, {CKA_KEY_GEN_MECHANISM, CKM_AES_KEY_GEN}, {CKA_LOCAL, 1}, {CKA_NEVER_EXTRACTABLE, 1});
    assert_int_equal(tok_unwrap_template(&sk, unsealed, 3, &obj), CKR_OK);
    tok_attrs_free(&obj);
    tok_policy_set_wrap_strict(true);
    assert_int_equal(tok_unwrap_template(&sk, unsealed, 3, &obj), CKR_TEMPLATE_INCONSISTENT);
    tok_attrs_free(&obj);
    assert_int_equal(tok_unwrap_template(&sk, aes, 2, &obj), CKR_OK);
    assert_true(tok_attrs_get_bool(&obj, CKA_SENSITIVE, false));
    tok_attrs_free(&obj);
    tok_attrs none = TOK_ATTRS_INIT;
    ATTRS(&none, {CKA_SENSITIVE, 0});
    set_template(&sk, CKA_UNWRAP_TEMPLATE, &none);
    assert_int_equal(tok_unwrap_template(&sk, aes, 2, &obj), CKR_TEMPLATE_INCONSISTENT);
    tok_attrs_free(&obj);
    tok_attrs_free(&none);
    tok_attrs_free(&sk);
    tok_attrs_free(&k);
    tok_attrs_free(&kt);
    tok_attrs_free(&plain);
}

static void test_derive_template(void **state)
{
    (void)state;
    tok_attrs base = TOK_ATTRS_INIT, bt = TOK_ATTRS_INIT, obj = TOK_ATTRS_INIT, plain = TOK_ATTRS_INIT;
    CK_ULONG len = 16, v;
    CK_ATTRIBUTE aes[] = {{CKA_KEY_TYPE, &aes_type, sizeof(aes_type)}, {CKA_VALUE_LEN, &len, sizeof(len)}};
    CK_ATTRIBUTE gen[] = {{CKA_KEY_TYPE, &gen_type, sizeof(gen_type)}, {CKA_VALUE_LEN, &len, sizeof(len)}};
    CK_ATTRIBUTE untyped[] = {{CKA_VALUE_LEN, &len, sizeof(len)}};
    CK_ATTRIBUTE data[] = {{CKA_CLASS, &data_class, sizeof(data_class)}, {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)}};

    ATTRS(&plain, {CKA_DERIVE, 0}, {CKA_SIGN, 1});
    assert_int_equal(tok_derive_template(&plain, CKM_SHA256_KEY_DERIVATION, aes, 2, &obj),
                     CKR_KEY_FUNCTION_NOT_PERMITTED);
    tok_attrs_free(&obj);

    ATTRS(&base, {CKA_DERIVE, 1});
    assert_int_equal(tok_derive_template(&base, CKM_ECDH1_DERIVE, aes, 2, &obj), CKR_OK);
    assert_true(tok_attrs_get_ulong(&obj, CKA_CLASS, &v) && v == CKO_SECRET_KEY);
    assert_true(tok_attrs_get_ulong(&obj, CKA_KEY_TYPE, &v) && v == CKK_AES);
    tok_attrs_free(&obj);
    /* Derived keys are secret keys. */
    assert_int_equal(tok_derive_template(&base, CKM_ECDH1_DERIVE, data, 2, &obj), CKR_TEMPLATE_INCONSISTENT);
    tok_attrs_free(&obj);
    /* A template naming no key type: a generic secret with SHA*_KEY_DERIVATION only. */
    assert_int_equal(tok_derive_template(&base, CKM_SHA256_KEY_DERIVATION, untyped, 1, &obj), CKR_OK);
    assert_true(tok_attrs_get_ulong(&obj, CKA_KEY_TYPE, &v) && v == CKK_GENERIC_SECRET);
    tok_attrs_free(&obj);
    assert_int_equal(tok_derive_template(&base, CKM_ECDH1_DERIVE, untyped, 1, &obj), CKR_TEMPLATE_INCOMPLETE);
    tok_attrs_free(&obj);

    /* CKA_DERIVE_TEMPLATE joins the caller's; its key type wins over the
     * generic default. */
    ATTRS(&bt, {CKA_KEY_TYPE, CKK_AES}, {CKA_EXTRACTABLE, 0});
    set_template(&base, CKA_DERIVE_TEMPLATE, &bt);
    assert_int_equal(tok_derive_template(&base, CKM_SHA256_KEY_DERIVATION, untyped, 1, &obj), CKR_OK);
    assert_true(tok_attrs_get_ulong(&obj, CKA_KEY_TYPE, &v) && v == CKK_AES);
    assert_false(tok_attrs_get_bool(&obj, CKA_EXTRACTABLE, true));
    tok_attrs_free(&obj);
    assert_int_equal(tok_derive_template(&base, CKM_ECDH1_DERIVE, aes, 2, &obj), CKR_OK);
    tok_attrs_free(&obj);
    assert_int_equal(tok_derive_template(&base, CKM_ECDH1_DERIVE, gen, 2, &obj), CKR_TEMPLATE_INCONSISTENT);
    tok_attrs_free(&obj);
    CK_ATTRIBUTE leaky[] = {
        {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)}, {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_EXTRACTABLE, &t_true, 1}};
    assert_int_equal(tok_derive_template(&base, CKM_SHA256_KEY_DERIVATION, leaky, 3, &obj), CKR_TEMPLATE_INCONSISTENT);
    tok_attrs_free(&obj);
    tok_attrs_free(&base);
    tok_attrs_free(&bt);
    tok_attrs_free(&plain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sees, strict_off),
        cmocka_unit_test_teardown(test_write, strict_off),
        cmocka_unit_test_teardown(test_wrap_permitted, strict_off),
        cmocka_unit_test_teardown(test_wrap_with_trusted, strict_off),
        cmocka_unit_test_teardown(test_wrap_template, strict_off),
        cmocka_unit_test_teardown(test_wrap_strict, strict_off),
        cmocka_unit_test_teardown(test_unwrap_template, strict_off),
        cmocka_unit_test_teardown(test_derive_template, strict_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
