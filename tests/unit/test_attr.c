/* Unit tests for the token layer's attribute codec, PIN hashing and the
 * object policy (templates, defaults, get/set/copy rules). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "token/tok_access.h"
#include "token/tok_attr.h"
#include "token/tok_envelope.h"
#include "token/tok_pin.h"
#include "token/tok_policy.h"

#define RV(want, call) assert_int_equal((call), (want))

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

/* ---- codec --------------------------------------------------------------- */

static void test_codec_roundtrip(void **state)
{
    (void)state;
    tok_attrs a = TOK_ATTRS_INIT, b = TOK_ATTRS_INIT;
    uint8_t *buf;
    size_t len;

    assert_int_equal(tok_attrs_set_ulong(&a, CKA_CLASS, CKO_DATA), 0);
    assert_int_equal(tok_attrs_set_bool(&a, CKA_TOKEN, true), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_LABEL, "label", 5), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_VALUE, NULL, 0), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_LABEL, "relabel", 7), 0); /* replace, not append */
    assert_int_equal(a.n, 4);

    assert_int_equal(tok_attrs_serialize(&a, &buf, &len), 0);
    assert_int_equal(tok_attrs_parse(buf, len, &b), 0);
    assert_int_equal(b.n, 4);
    CK_ULONG cls = 0;
    assert_true(tok_attrs_get_ulong(&b, CKA_CLASS, &cls));
    assert_int_equal(cls, CKO_DATA);
    assert_true(tok_attrs_get_bool(&b, CKA_TOKEN, false));
    const tok_attr *l = tok_attrs_find(&b, CKA_LABEL);
    assert_non_null(l);
    assert_int_equal(l->len, 7);
    assert_memory_equal(l->val, "relabel", 7);
    assert_int_equal(tok_attrs_find(&b, CKA_VALUE)->len, 0);

    /* Every truncation and a bad version are rejected, never misread. */
    for (size_t cut = 0; cut < len; cut++) {
        tok_attrs c = TOK_ATTRS_INIT;
        assert_int_equal(tok_attrs_parse(buf, cut, &c), -1);
        tok_attrs_free(&c);
    }
    buf[0] ^= 0x7f;
    tok_attrs c = TOK_ATTRS_INIT;
    assert_int_equal(tok_attrs_parse(buf, len, &c), -1);
    free(buf);

    /* Match. */
    CK_ULONG want = CKO_DATA;
    CK_ATTRIBUTE m1[] = {{CKA_CLASS, &want, sizeof(want)}, {CKA_LABEL, "relabel", 7}};
    CK_ATTRIBUTE m2[] = {{CKA_LABEL, "relabe", 6}};
    CK_ATTRIBUTE m3[] = {{CKA_ID, "", 0}};
    assert_true(tok_attrs_match(&b, m1, 2));
    assert_true(tok_attrs_match(&b, NULL, 0));
    assert_false(tok_attrs_match(&b, m2, 1));
    assert_false(tok_attrs_match(&b, m3, 1)); /* absent attribute never matches */

    tok_attrs_remove(&b, CKA_LABEL);
    assert_null(tok_attrs_find(&b, CKA_LABEL));
    tok_attrs_free(&a);
    tok_attrs_free(&b);
}

/* ---- PINs ---------------------------------------------------------------- */

static void test_pin_hash(void **state)
{
    (void)state;
    tok_pin_key k1, k2, kc;
    uint8_t tk[TOK_TK_LEN], out[TOK_TK_LEN], r1[TOK_PIN_REC_LEN], r2[TOK_PIN_REC_LEN];
    memset(tk, 0x5c, sizeof(tk));
    assert_int_equal(tok_pin_new((const uint8_t *)"1234", 4, &k1), 0);
    assert_int_equal(tok_pin_new((const uint8_t *)"1234", 4, &k2), 0);
    assert_int_equal(tok_pin_seal(&k1, tk, 7, 1, r1), 0);
    assert_int_equal(tok_pin_seal(&k2, tk, 7, 1, r2), 0);
    assert_memory_not_equal(r1, r2, TOK_PIN_REC_LEN); /* salted */
    assert_null(memmem(r1, sizeof(r1), "1234", 4));
    assert_null(memmem(r1, sizeof(r1), tk, 8)); /* the token key is wrapped, not stored */
    assert_int_equal(tok_pin_check((const uint8_t *)"1234", 4, r1, sizeof(r1), &kc), TOK_PIN_OK);
    assert_int_equal(tok_pin_unwrap(&kc, r1, sizeof(r1), 7, 1, out), 0);
    assert_memory_equal(out, tk, sizeof(tk));
    /* Bound to the token and the role. */
    assert_int_equal(tok_pin_unwrap(&kc, r1, sizeof(r1), 8, 1, out), -1);
    assert_int_equal(tok_pin_unwrap(&kc, r1, sizeof(r1), 7, 0, out), -1);
    assert_int_equal(tok_pin_check((const uint8_t *)"1235", 4, r1, sizeof(r1), &kc), TOK_PIN_WRONG);
    assert_int_equal(tok_pin_check((const uint8_t *)"123", 3, r1, sizeof(r1), &kc), TOK_PIN_WRONG);
    assert_int_equal(tok_pin_check(NULL, 4, r1, sizeof(r1), &kc), TOK_PIN_WRONG);
    /* A version 1 record (a verifier only) is the first half of the same
     * scrypt: it checks with the same salt and keeps no key. */
    uint8_t v1[TOK_PIN_REC_V1_LEN];
    memcpy(v1, r1, sizeof(v1));
    v1[0] = 1;
    assert_int_equal(tok_pin_check((const uint8_t *)"1234", 4, v1, sizeof(v1), &kc), TOK_PIN_OK);
    assert_memory_equal(kc.kek, k1.kek, sizeof(kc.kek));
    assert_int_equal(tok_pin_unwrap(&kc, v1, sizeof(v1), 7, 1, out), 1);
    /* Malformed records: unknown version, absurd cost parameters, wrong length; altered wrapped key. */
    uint8_t bad[TOK_PIN_REC_LEN];
    memcpy(bad, r1, sizeof(bad));
    bad[0] = 9;
    assert_int_equal(tok_pin_check((const uint8_t *)"1234", 4, bad, sizeof(bad), &kc), TOK_PIN_BAD);
    memcpy(bad, r1, sizeof(bad));
    bad[1] = 40; /* N = 2^40 would exhaust memory: refused, not attempted */
    assert_int_equal(tok_pin_check((const uint8_t *)"1234", 4, bad, sizeof(bad), &kc), TOK_PIN_BAD);
    assert_int_equal(tok_pin_check((const uint8_t *)"1234", 4, r1, sizeof(r1) - 1, &kc), TOK_PIN_BAD);
    memcpy(bad, r1, sizeof(bad));
    bad[TOK_PIN_REC_LEN - 1] ^= 1;
    assert_int_equal(tok_pin_check((const uint8_t *)"1234", 4, bad, sizeof(bad), &kc), TOK_PIN_OK);
    assert_int_equal(tok_pin_unwrap(&kc, bad, sizeof(bad), 7, 1, out), -1);
    memcpy(bad, r1, sizeof(bad));
    bad[4 + 16] ^= 1; /* the verifier */
    assert_int_equal(tok_pin_check((const uint8_t *)"1234", 4, bad, sizeof(bad), &kc), TOK_PIN_WRONG);
    assert_int_equal(tok_pin_new(NULL, 4, &k1), -1);
    tok_pin_key_clear(&k1);
    tok_pin_key_clear(&k2);
    tok_pin_key_clear(&kc);
}

/* The envelope of a private object: values in, identity out, bound to (token, object). */
static void test_envelope(void **state)
{
    (void)state;
    uint8_t tk[TOK_TK_LEN], tk2[TOK_TK_LEN];
    memset(tk, 1, sizeof(tk));
    memset(tk2, 2, sizeof(tk2));
    tok_attrs a = TOK_ATTRS_INIT, s = TOK_ATTRS_INIT, o = TOK_ATTRS_INIT;
    static const uint8_t secret[] = "very secret key material";
    assert_int_equal(tok_attrs_set_ulong(&a, CKA_CLASS, CKO_SECRET_KEY), 0);
    assert_int_equal(tok_attrs_set_bool(&a, CKA_PRIVATE, true), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_LABEL, "k", 1), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_VALUE, secret, sizeof(secret)), 0);
    assert_int_equal(tok_env_seal(tk, 3, 42, &a, &s), 0);
    assert_true(tok_env_present(&s));
    assert_null(tok_attrs_find(&s, CKA_VALUE));
    assert_non_null(tok_attrs_find(&s, CKA_LABEL));
    const tok_attr *e = tok_attrs_find(&s, TOKA_ENVELOPE);
    assert_null(memmem(e->val, e->len, secret, 8));
    assert_int_equal(tok_env_open(tk, 3, 42, &s, &o), 0);
    assert_int_equal(tok_attrs_find(&o, CKA_VALUE)->len, sizeof(secret));
    assert_memory_equal(tok_attrs_find(&o, CKA_VALUE)->val, secret, sizeof(secret));
    assert_null(tok_attrs_find(&o, TOKA_ENVELOPE));
    assert_int_equal(tok_env_open(tk2, 3, 42, &s, &o), -2); /* another token's key */
    assert_int_equal(tok_env_open(tk, 3, 43, &s, &o), -2);  /* moved to another object */
    assert_int_equal(tok_env_open(tk, 4, 42, &s, &o), -2);  /* or token */
    tok_attr *ev = (tok_attr *)tok_attrs_find(&s, TOKA_ENVELOPE);
    ev->val[ev->len / 2] ^= 1;
    assert_int_equal(tok_env_open(tk, 3, 42, &s, &o), -2);
    assert_int_equal(tok_env_strip(&s, &o), 0);
    assert_null(tok_attrs_find(&o, TOKA_ENVELOPE));
    assert_non_null(tok_attrs_find(&o, CKA_LABEL));
    tok_attrs_free(&a);
    tok_attrs_free(&s);
    tok_attrs_free(&o);
}

/* ---- policy: build ------------------------------------------------------- */

static void test_build_defaults(void **state)
{
    (void)state;
    tok_attrs o = TOK_ATTRS_INIT;
    CK_OBJECT_CLASS data = CKO_DATA, sec = CKO_SECRET_KEY, priv = CKO_PRIVATE_KEY;
    CK_KEY_TYPE aes = CKK_AES, ec = CKK_EC;
    CK_ULONG v;

    CK_ATTRIBUTE d[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_LABEL, "x", 1}};
    RV(CKR_OK, tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, d, 2, &o));
    assert_false(tok_obj_is_token(&o));
    assert_false(tok_obj_is_private(&o));
    assert_true(tok_attrs_get_bool(&o, CKA_MODIFIABLE, false));
    assert_true(tok_attrs_get_bool(&o, CKA_DESTROYABLE, false));
    assert_non_null(tok_attrs_find(&o, CKA_APPLICATION));
    assert_int_equal(tok_obj_class(&o), CKO_DATA);

    /* A generated secret key: defaults, local, mechanism recorded. */
    CK_ULONG len = 32;
    CK_ATTRIBUTE s[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &yes, 1}};
    RV(CKR_OK, tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, s, 2, &o));
    assert_true(tok_obj_is_token(&o));
    assert_true(tok_obj_is_private(&o));
    assert_true(tok_attrs_get_bool(&o, CKA_SENSITIVE, false));
    assert_false(tok_attrs_get_bool(&o, CKA_EXTRACTABLE, true));
    assert_true(tok_attrs_get_bool(&o, CKA_LOCAL, false));
    assert_true(tok_attrs_get_ulong(&o, CKA_KEY_GEN_MECHANISM, &v));
    assert_int_equal(v, CKM_AES_KEY_GEN);
    assert_true(tok_attrs_get_ulong(&o, CKA_KEY_TYPE, &v));
    assert_int_equal(v, CKK_AES);
    RV(CKR_OK, tok_policy_finish(TOK_BUILD_GENERATE, &o));
    assert_true(tok_attrs_get_bool(&o, CKA_ALWAYS_SENSITIVE, false));
    assert_true(tok_attrs_get_bool(&o, CKA_NEVER_EXTRACTABLE, false));

    /* An imported private key is neither local nor "always sensitive". */
    CK_ATTRIBUTE p[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_KEY_TYPE, &ec, sizeof(ec)}, {CKA_VALUE, "k", 1},
                        {CKA_EC_PARAMS, "p", 1}};
    RV(CKR_OK, tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, p, 4, &o));
    RV(CKR_OK, tok_policy_finish(TOK_BUILD_CREATE, &o));
    assert_false(tok_attrs_get_bool(&o, CKA_LOCAL, true));
    assert_false(tok_attrs_get_bool(&o, CKA_ALWAYS_SENSITIVE, true));
    assert_true(tok_attrs_get_ulong(&o, CKA_KEY_GEN_MECHANISM, &v));
    assert_int_equal(v, CK_UNAVAILABLE_INFORMATION);

    /* The class implied by a mechanism and a disagreeing template. */
    CK_ATTRIBUTE wrong[] = {{CKA_CLASS, &data, sizeof(data)}};
    RV(CKR_TEMPLATE_INCONSISTENT, tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN,
                                                   wrong, 1, &o));
    CK_ATTRIBUTE wrongkt[] = {{CKA_KEY_TYPE, &ec, sizeof(ec)}};
    RV(CKR_TEMPLATE_INCONSISTENT, tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN,
                                                   wrongkt, 1, &o));
    (void)sec;
    (void)aes;
    tok_attrs_free(&o);
}

static void test_build_errors(void **state)
{
    (void)state;
    tok_attrs o = TOK_ATTRS_INIT;
    CK_OBJECT_CLASS data = CKO_DATA, sec = CKO_SECRET_KEY, cert = CKO_CERTIFICATE, bogus = 0x4242;
    CK_KEY_TYPE rc4 = CKK_RC4; /* a key type the token does not have */
    CK_ULONG len = 16, x509 = CKC_X_509;
#define CREATE(t, n) tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, t, n, &o)

    CK_ATTRIBUTE noclass[] = {{CKA_LABEL, "x", 1}};
    RV(CKR_TEMPLATE_INCOMPLETE, CREATE(noclass, 1));
    CK_ATTRIBUTE badclass[] = {{CKA_CLASS, &bogus, sizeof(bogus)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, CREATE(badclass, 1));
    CK_ATTRIBUTE shortclass[] = {{CKA_CLASS, &data, 2}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, CREATE(shortclass, 1));
    CK_ATTRIBUTE unknown[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_MODULUS, "m", 1}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, CREATE(unknown, 2));
    CK_ATTRIBUTE vendor[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_VENDOR_DEFINED | 1, "m", 1}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, CREATE(vendor, 2));
    CK_ATTRIBUTE badbool[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 2}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, CREATE(badbool, 2));
    CK_ATTRIBUTE nullval[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_LABEL, NULL, 3}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, CREATE(nullval, 2));
    CK_ATTRIBUTE dup[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1}, {CKA_TOKEN, &no, 1}};
    RV(CKR_TEMPLATE_INCONSISTENT, CREATE(dup, 3));
    CK_ATTRIBUTE nokt[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_VALUE, "0123456789abcdef", 16}};
    RV(CKR_TEMPLATE_INCOMPLETE, CREATE(nokt, 2));
    CK_ATTRIBUTE badkt[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &rc4, sizeof(rc4)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, CREATE(badkt, 2));
    CK_ATTRIBUTE local[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_LABEL, "x", 1}};
    RV(CKR_OK, CREATE(local, 2));
    CK_KEY_TYPE aes = CKK_AES;
    CK_ATTRIBUTE setlocal[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_LOCAL, &yes, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, CREATE(setlocal, 3));
    CK_ATTRIBUTE certnosubj[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
                                 {CKA_VALUE, "der", 3}};
    RV(CKR_TEMPLATE_INCOMPLETE, CREATE(certnosubj, 3));
    RV(CKR_ARGUMENTS_BAD, CREATE(NULL, 1));

    /* Generation never takes key material from the caller. */
    CK_ATTRIBUTE genval[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_VALUE, "0123456789abcdef", 16}};
    RV(CKR_ATTRIBUTE_READ_ONLY,
       tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, genval, 2, &o));
    /* ... and the token-only attributes are refused. */
    CK_ATTRIBUTE genas[] = {{CKA_ALWAYS_SENSITIVE, &yes, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY,
       tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, genas, 1, &o));
#undef CREATE
    tok_attrs_free(&o);
}

/* Defaults of the certificate, public and private key classes, and the
 * generation inputs each class accepts. */
static void test_build_classes(void **state)
{
    (void)state;
    tok_attrs o = TOK_ATTRS_INIT;
    CK_OBJECT_CLASS cert = CKO_CERTIFICATE, pub = CKO_PUBLIC_KEY;
    CK_ULONG x509 = CKC_X_509, v, bits = 2048, cat = 7;
    CK_KEY_TYPE rsa = CKK_RSA;
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

    CK_ATTRIBUTE c[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
                        {CKA_SUBJECT, "subj", 4}, {CKA_VALUE, "der", 3}};
    RV(CKR_OK, tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, c, 4, &o));
    assert_false(tok_obj_is_private(&o));
    assert_false(tok_attrs_get_bool(&o, CKA_TRUSTED, true));
    assert_true(tok_attrs_get_ulong(&o, CKA_CERTIFICATE_CATEGORY, &v));
    assert_int_equal(v, 0);
    assert_non_null(tok_attrs_find(&o, CKA_ID));
    assert_non_null(tok_attrs_find(&o, CKA_ISSUER));
    assert_non_null(tok_attrs_find(&o, CKA_SERIAL_NUMBER));
    assert_null(tok_attrs_find(&o, CKA_KEY_TYPE));
    CK_ATTRIBUTE badcat[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
                             {CKA_SUBJECT, "subj", 4}, {CKA_VALUE, "der", 3},
                             {CKA_CERTIFICATE_CATEGORY, &cat, sizeof(cat)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID,
       tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, badcat, 5, &o));
    assert_int_equal(o.n, 0); /* nothing left behind on failure */
    CK_ATTRIBUTE baddate[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_START_DATE, "2024", 4}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID,
       tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, baddate, 2, &o));

    /* RSA public key generation: inputs accepted, usage defaults TRUE. */
    CK_ATTRIBUTE pt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_PUBLIC_EXPONENT, "\x01\x00\x01", 3},
                         {CKA_CLASS, &pub, sizeof(pub)}, {CKA_KEY_TYPE, &rsa, sizeof(rsa)}};
    RV(CKR_OK, tok_policy_build(TOK_BUILD_GENERATE, CKO_PUBLIC_KEY, CKK_RSA, CKM_RSA_PKCS_KEY_PAIR_GEN, pt, 4, &o));
    assert_false(tok_obj_is_private(&o));
    assert_true(tok_attrs_get_bool(&o, CKA_ENCRYPT, false));
    assert_true(tok_attrs_get_bool(&o, CKA_VERIFY, false));
    assert_true(tok_attrs_get_bool(&o, CKA_VERIFY_RECOVER, false));
    assert_true(tok_attrs_get_bool(&o, CKA_WRAP, false));
    assert_false(tok_attrs_get_bool(&o, CKA_DERIVE, true));
    assert_false(tok_attrs_get_bool(&o, CKA_TRUSTED, true));
    assert_true(tok_attrs_get_bool(&o, CKA_LOCAL, false));
    assert_null(tok_attrs_find(&o, CKA_SENSITIVE));
    assert_non_null(tok_attrs_find(&o, CKA_SUBJECT));
    assert_non_null(tok_attrs_find(&o, CKA_ALLOWED_MECHANISMS));
    RV(CKR_OK, tok_policy_finish(TOK_BUILD_GENERATE, &o));
    assert_null(tok_attrs_find(&o, CKA_ALWAYS_SENSITIVE)); /* public keys have none */
    /* ... but the modulus itself is the token's to make. */
    CK_ATTRIBUTE ptmod[] = {{CKA_MODULUS, "\xc3", 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY,
       tok_policy_build(TOK_BUILD_GENERATE, CKO_PUBLIC_KEY, CKK_RSA, CKM_RSA_PKCS_KEY_PAIR_GEN, ptmod, 1, &o));

    /* Private key defaults. */
    RV(CKR_OK, tok_policy_build(TOK_BUILD_GENERATE, CKO_PRIVATE_KEY, CKK_EC, CKM_EC_KEY_PAIR_GEN, NULL, 0, &o));
    assert_true(tok_obj_is_private(&o));
    assert_true(tok_attrs_get_bool(&o, CKA_SENSITIVE, false));
    assert_false(tok_attrs_get_bool(&o, CKA_EXTRACTABLE, true));
    assert_true(tok_attrs_get_bool(&o, CKA_SIGN, false));
    assert_true(tok_attrs_get_bool(&o, CKA_DECRYPT, false));
    assert_true(tok_attrs_get_bool(&o, CKA_UNWRAP, false));
    assert_true(tok_attrs_get_bool(&o, CKA_SIGN_RECOVER, false));
    assert_false(tok_attrs_get_bool(&o, CKA_WRAP_WITH_TRUSTED, true));
    assert_false(tok_attrs_get_bool(&o, CKA_ALWAYS_AUTHENTICATE, true));
    assert_null(tok_attrs_find(&o, CKA_ENCRYPT)); /* not a private key attribute */
    RV(CKR_OK, tok_policy_finish(TOK_BUILD_GENERATE, &o));
    assert_true(tok_attrs_get_bool(&o, CKA_ALWAYS_SENSITIVE, false));
    assert_true(tok_attrs_get_bool(&o, CKA_NEVER_EXTRACTABLE, false));
    /* Curve parameters belong in the public template of a generation. */
    CK_ATTRIBUTE kp[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}};
    RV(CKR_ATTRIBUTE_READ_ONLY,
       tok_policy_build(TOK_BUILD_GENERATE, CKO_PRIVATE_KEY, CKK_EC, CKM_EC_KEY_PAIR_GEN, kp, 1, &o));
    RV(CKR_OK, tok_policy_build(TOK_BUILD_GENERATE, CKO_PUBLIC_KEY, CKK_EC, CKM_EC_KEY_PAIR_GEN, kp, 1, &o));
    /* CKA_ENCRYPT is no private key attribute; CKA_VALUE no RSA one. */
    CK_ATTRIBUTE kenc[] = {{CKA_ENCRYPT, &yes, 1}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID,
       tok_policy_build(TOK_BUILD_GENERATE, CKO_PRIVATE_KEY, CKK_EC, CKM_EC_KEY_PAIR_GEN, kenc, 1, &o));
    CK_ATTRIBUTE rval[] = {{CKA_VALUE, "x", 1}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID,
       tok_policy_build(TOK_BUILD_GENERATE, CKO_PRIVATE_KEY, CKK_RSA, CKM_RSA_PKCS_KEY_PAIR_GEN, rval, 1, &o));
    /* The modulus size is computed on import, never given. */
    CK_ATTRIBUTE imp[] = {{CKA_CLASS, &pub, sizeof(pub)}, {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
                          {CKA_MODULUS, "\xc3", 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    assert_int_not_equal(
        tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, imp, 4, &o), CKR_OK);

    /* CK_ULONG values need not be aligned in the caller's buffer. */
    uint8_t raw[sizeof(CK_ULONG) + 1];
    CK_ULONG data = CKO_DATA;
    memcpy(raw + 1, &data, sizeof(data));
    CK_ATTRIBUTE un[] = {{CKA_CLASS, raw + 1, sizeof(CK_ULONG)}};
    RV(CKR_OK, tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, un, 1, &o));
    assert_int_equal(tok_obj_class(&o), CKO_DATA);
    tok_attrs_free(&o);
}

/* ---- policy: get / set / copy -------------------------------------------- */

static void make_secret(tok_attrs *o, bool sensitive)
{
    CK_ULONG len = 16;
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_SENSITIVE, sensitive ? &yes : &no, 1},
                        {CKA_EXTRACTABLE, &yes, 1}, {CKA_LABEL, "key", 3}};
    RV(CKR_OK, tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, t, 4, o));
    assert_int_equal(tok_attrs_set(o, CKA_VALUE, "0123456789abcdef", 16), 0);
    RV(CKR_OK, tok_policy_finish(TOK_BUILD_GENERATE, o));
}

static void test_get(void **state)
{
    (void)state;
    tok_attrs o = TOK_ATTRS_INIT;
    uint8_t buf[64];
    make_secret(&o, true);

    CK_ATTRIBUTE t[] = {{CKA_VALUE, buf, sizeof(buf)}, {CKA_LABEL, NULL, 0}, {CKA_MODULUS, buf, sizeof(buf)}};
    CK_RV rv = tok_policy_get(&o, t, 3);
    assert_true(rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID);
    assert_int_equal(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t[1].ulValueLen, 3); /* the others are still processed */
    assert_int_equal(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);

    CK_ATTRIBUTE small[] = {{CKA_LABEL, buf, 2}, {CKA_VALUE_LEN, buf + 8, sizeof(CK_ULONG)}};
    RV(CKR_BUFFER_TOO_SMALL, tok_policy_get(&o, small, 2));
    assert_int_equal(small[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(small[1].ulValueLen, sizeof(CK_ULONG));

    /* Extractable and not sensitive: the value is readable. */
    tok_attrs_free(&o);
    make_secret(&o, false);
    CK_ATTRIBUTE v[] = {{CKA_VALUE, buf, sizeof(buf)}};
    RV(CKR_OK, tok_policy_get(&o, v, 1));
    assert_int_equal(v[0].ulValueLen, 16);
    assert_memory_equal(buf, "0123456789abcdef", 16);
    tok_attrs_free(&o);
}

static void test_set_and_copy(void **state)
{
    (void)state;
    tok_attrs o = TOK_ATTRS_INIT, n = TOK_ATTRS_INIT;
    CK_OBJECT_CLASS data = CKO_DATA;
    make_secret(&o, false);

    CK_ATTRIBUTE sens_on[] = {{CKA_SENSITIVE, &yes, 1}};
    RV(CKR_OK, tok_policy_set(&o, sens_on, 1, &n));
    assert_true(tok_attrs_get_bool(&n, CKA_SENSITIVE, false));
    CK_ATTRIBUTE sens_off[] = {{CKA_SENSITIVE, &no, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_set(&n, sens_off, 1, &o));
    tok_attrs_free(&o);
    make_secret(&o, false);
    CK_ATTRIBUTE ext_off[] = {{CKA_EXTRACTABLE, &no, 1}};
    RV(CKR_OK, tok_policy_set(&o, ext_off, 1, &n));
    CK_ATTRIBUTE ext_on[] = {{CKA_EXTRACTABLE, &yes, 1}};
    tok_attrs m = TOK_ATTRS_INIT;
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_set(&n, ext_on, 1, &m));
    CK_ATTRIBUTE cls[] = {{CKA_CLASS, &data, sizeof(data)}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_set(&o, cls, 1, &n));
    CK_ATTRIBUTE val[] = {{CKA_VALUE, "fedcba9876543210", 16}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_set(&o, val, 1, &n));
    CK_ATTRIBUTE unknown[] = {{CKA_MODULUS, "x", 1}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, tok_policy_set(&o, unknown, 1, &n));
    CK_ATTRIBUTE cpoff[] = {{CKA_COPYABLE, &no, 1}};
    RV(CKR_OK, tok_policy_set(&o, cpoff, 1, &n));
    CK_ATTRIBUTE cpon[] = {{CKA_COPYABLE, &yes, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_set(&n, cpon, 1, &m));
    CK_ATTRIBUTE tok[] = {{CKA_TOKEN, &yes, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_set(&o, tok, 1, &n));
    CK_ATTRIBUTE lcl[] = {{CKA_LOCAL, &no, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_set(&o, lcl, 1, &n));
    CK_ATTRIBUTE date[] = {{CKA_END_DATE, "20301231", 8}};
    RV(CKR_OK, tok_policy_set(&o, date, 1, &n));
    CK_ATTRIBUTE baddate[] = {{CKA_END_DATE, "2030", 4}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_policy_set(&o, baddate, 1, &n));
    CK_ATTRIBUTE lbl[] = {{CKA_LABEL, "renamed", 7}, {CKA_ID, "\x01", 1}, {CKA_ENCRYPT, &no, 1}};
    RV(CKR_OK, tok_policy_set(&o, lbl, 3, &n));
    assert_memory_equal(tok_attrs_find(&n, CKA_LABEL)->val, "renamed", 7);
    assert_false(tok_attrs_get_bool(&n, CKA_ENCRYPT, true));

    /* Not modifiable: nothing changes. */
    assert_int_equal(tok_attrs_set_bool(&o, CKA_MODIFIABLE, false), 0);
    RV(CKR_ACTION_PROHIBITED, tok_policy_set(&o, lbl, 1, &n));

    /* Copy: only some attributes may change; not copyable is refused. */
    CK_ATTRIBUTE cp[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, "copy", 4}};
    RV(CKR_OK, tok_policy_copy(&o, cp, 2, &n));
    assert_true(tok_obj_is_token(&n));
    CK_ATTRIBUTE cpbad[] = {{CKA_ENCRYPT, &no, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_copy(&o, cpbad, 1, &n));
    CK_ATTRIBUTE cpmod[] = {{CKA_MODIFIABLE, &yes, 1}}; /* o is not modifiable: a copy can't be either */
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_copy(&o, cpmod, 1, &n));
    CK_ATTRIBUTE cpdes[] = {{CKA_DESTROYABLE, &no, 1}};
    RV(CKR_OK, tok_policy_copy(&o, cpdes, 1, &n));
    assert_false(tok_attrs_get_bool(&n, CKA_DESTROYABLE, true));
    CK_ATTRIBUTE cpdes2[] = {{CKA_DESTROYABLE, &yes, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, tok_policy_copy(&n, cpdes2, 1, &m));
    CK_ATTRIBUTE cpsens[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    RV(CKR_OK, tok_policy_copy(&o, cpsens, 2, &n));
    assert_true(tok_attrs_get_bool(&n, CKA_SENSITIVE, false));
    assert_int_equal(tok_attrs_set_bool(&o, CKA_COPYABLE, false), 0);
    RV(CKR_ACTION_PROHIBITED, tok_policy_copy(&o, cp, 2, &n));

    /* tok_tmpl_bool */
    bool b;
    CK_ATTRIBUTE tb[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 4}};
    RV(CKR_OK, tok_tmpl_bool(tb, 2, CKA_TOKEN, false, &b));
    assert_true(b);
    RV(CKR_OK, tok_tmpl_bool(tb, 2, CKA_MODIFIABLE, false, &b));
    assert_false(b);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_tmpl_bool(tb, 2, CKA_PRIVATE, false, &b));

    tok_attrs_free(&o);
    tok_attrs_free(&n);
    tok_attrs_free(&m);
}

/* ---- access rules (tok_access.c) -------------------------------------------- */

static void set_template(tok_attrs *key, CK_ATTRIBUTE_TYPE tt, const tok_attrs *t)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(tok_attrs_serialize(t, &blob, &len), 0);
    assert_int_equal(tok_attrs_set(key, tt, blob, (CK_ULONG)len), 0);
    free(blob);
}

static void test_access(void **state)
{
    (void)state;
    tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT, sess = TOK_ATTRS_INIT;
    assert_int_equal(tok_attrs_set_bool(&pub, CKA_TOKEN, true), 0);
    assert_int_equal(tok_attrs_set_bool(&priv, CKA_TOKEN, true), 0);
    assert_int_equal(tok_attrs_set_bool(&priv, CKA_PRIVATE, true), 0);
    assert_int_equal(tok_attrs_set_bool(&sess, CKA_PRIVATE, false), 0);
    const tok_access user_rw = {.slot = 1, .rw = true, .who = CKU_USER},
                     user_ro = {.slot = 1, .rw = false, .who = CKU_USER}, so = {.slot = 1, .rw = true, .who = CKU_SO},
                     nobody = {.slot = 1, .rw = true, .who = TOK_NOBODY};
    assert_true(tok_access_sees(&nobody, &pub));
    assert_false(tok_access_sees(&nobody, &priv));
    assert_false(tok_access_sees(&so, &priv)); /* the SO never sees private objects */
    assert_true(tok_access_sees(&user_ro, &priv));
    assert_int_equal(tok_access_write(&user_rw, &priv), CKR_OK);
    assert_int_equal(tok_access_write(&user_ro, &pub), CKR_SESSION_READ_ONLY);
    assert_int_equal(tok_access_write(&user_ro, &sess), CKR_OK); /* session objects from read-only sessions */
    assert_int_equal(tok_access_write(&so, &priv), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(tok_access_write(&nobody, &priv), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(tok_access_write(&nobody, &pub), CKR_OK);
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);
    tok_attrs_free(&sess);
}

static void test_wrap_rules(void **state)
{
    (void)state;
    tok_attrs w = TOK_ATTRS_INIT, t = TOK_ATTRS_INIT, tmpl = TOK_ATTRS_INIT, obj = TOK_ATTRS_INIT;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    assert_int_equal(tok_attrs_set_ulong(&t, CKA_CLASS, CKO_SECRET_KEY), 0);
    assert_int_equal(tok_wrap_permitted(&w, NULL), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(tok_attrs_set_bool(&w, CKA_WRAP, true), 0);
    assert_int_equal(tok_wrap_permitted(&w, NULL), CKR_OK);
    assert_int_equal(tok_wrap_permitted(&w, &t), CKR_KEY_UNEXTRACTABLE);
    assert_int_equal(tok_attrs_set_bool(&t, CKA_EXTRACTABLE, true), 0);
    assert_int_equal(tok_wrap_permitted(&w, &t), CKR_OK);
    assert_int_equal(tok_attrs_set_bool(&t, CKA_WRAP_WITH_TRUSTED, true), 0);
    assert_int_equal(tok_wrap_permitted(&w, &t), CKR_KEY_NOT_WRAPPABLE);
    assert_int_equal(tok_attrs_set_bool(&w, CKA_TRUSTED, true), 0);
    assert_int_equal(tok_wrap_permitted(&w, &t), CKR_OK);
    /* CKA_WRAP_TEMPLATE: only keys matching it. */
    assert_int_equal(tok_attrs_set_ulong(&tmpl, CKA_CLASS, CKO_PRIVATE_KEY), 0);
    set_template(&w, CKA_WRAP_TEMPLATE, &tmpl);
    assert_int_equal(tok_wrap_permitted(&w, &t), CKR_KEY_NOT_WRAPPABLE);
    assert_int_equal(tok_attrs_set_ulong(&tmpl, CKA_CLASS, CKO_SECRET_KEY), 0);
    set_template(&w, CKA_WRAP_TEMPLATE, &tmpl);
    assert_int_equal(tok_wrap_permitted(&w, &t), CKR_OK);

    /* Unwrap and derive: the key's permission, then its template joined with the caller's. */
    CK_BBOOL off = CK_FALSE;
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_SENSITIVE, &off, 1}};
    tok_attrs u = TOK_ATTRS_INIT;
    assert_int_equal(tok_unwrap_template(&u, ut, 2, &obj), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(tok_derive_template(&u, CKM_ECDH1_DERIVE, ut, 2, &obj), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_int_equal(tok_attrs_set_bool(&u, CKA_UNWRAP, true), 0);
    assert_int_equal(tok_attrs_set_bool(&u, CKA_DERIVE, true), 0);
    assert_int_equal(tok_unwrap_template(&u, ut, 2, &obj), CKR_OK);
    tok_attrs_free(&tmpl);
    assert_int_equal(tok_attrs_set_bool(&tmpl, CKA_SENSITIVE, true), 0);
    set_template(&u, CKA_UNWRAP_TEMPLATE, &tmpl);
    set_template(&u, CKA_DERIVE_TEMPLATE, &tmpl);
    assert_int_equal(tok_unwrap_template(&u, ut, 3, &obj), CKR_TEMPLATE_INCONSISTENT);
    assert_int_equal(tok_derive_template(&u, CKM_ECDH1_DERIVE, ut, 3, &obj), CKR_TEMPLATE_INCONSISTENT);
    assert_int_equal(tok_unwrap_template(&u, ut, 2, &obj), CKR_OK);
    assert_true(tok_attrs_get_bool(&obj, CKA_SENSITIVE, false)); /* from the key's template */
    tok_attrs_free(&u);
    tok_attrs_free(&w);
    tok_attrs_free(&t);
    tok_attrs_free(&tmpl);
    tok_attrs_free(&obj);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_roundtrip), cmocka_unit_test(test_pin_hash), cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_access), cmocka_unit_test(test_wrap_rules),
        cmocka_unit_test(test_build_defaults),  cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_build_classes),
        cmocka_unit_test(test_get),             cmocka_unit_test(test_set_and_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
