/* Unit tests of the pkcs11 layer (test_p11.h): key management: wrap, unwrap
 * and derive, their templates, and CKA_ALWAYS_AUTHENTICATE. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/unit/test_p11.h"

static CK_OBJECT_HANDLE aes_key(CK_SESSION_HANDLE h, bool extractable, bool trusted_only)
{
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_OBJECT_HANDLE k;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE_LEN, &len, sizeof(len)},         {CKA_EXTRACTABLE, extractable ? &yes : &no, 1},
        {CKA_WRAP_WITH_TRUSTED, trusted_only ? &yes : &no, 1}, {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},
    };
    CK(f->C_GenerateKey(h, &m, t, 5, &k));
    return k;
}

static void test_wrap_unwrap_derive(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("wrap");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE kek = aes_key(h, false, false), target = aes_key(h, true, false), locked = aes_key(h, false, false);
    CK_OBJECT_HANDLE unwrapped, pub, priv;
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY, pcls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE aes = CKK_AES, ec = CKK_EC;
    CK_BYTE blob[512];
    CK_ULONG len = 0;
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0}, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};

    /* AES key wrap of an AES key, size query first. */
    CK(f->C_WrapKey(h, &kw, kek, target, NULL, &len));
    assert_int_equal(len, 40);
    len = 10;
    RV(CKR_BUFFER_TOO_SMALL, f->C_WrapKey(h, &kw, kek, target, blob, &len));
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &kw, kek, target, blob, &len));
    assert_int_equal(len, 40);
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK(f->C_UnwrapKey(h, &kw, kek, blob, len, ut, 4, &unwrapped));
    same_aes(h, target, unwrapped);
    CK_BBOOL local = CK_TRUE;
    CK_ATTRIBUTE lt[] = {{CKA_LOCAL, &local, 1}};
    CK(f->C_GetAttributeValue(h, unwrapped, lt, 1));
    assert_false(local);

    /* Refusals. */
    RV(CKR_KEY_UNEXTRACTABLE, f->C_WrapKey(h, &kw, kek, locked, blob, &len));
    CK_OBJECT_HANDLE trusted_only = aes_key(h, true, true);
    len = sizeof(blob);
    RV(CKR_KEY_NOT_WRAPPABLE, f->C_WrapKey(h, &kw, kek, trusted_only, blob, &len));
    RV(CKR_WRAPPING_KEY_HANDLE_INVALID, f->C_WrapKey(h, &kw, 0x7777, target, blob, &len));
    RV(CKR_KEY_HANDLE_INVALID, f->C_WrapKey(h, &kw, kek, 0x7777, blob, &len));
    RV(CKR_ARGUMENTS_BAD, f->C_WrapKey(h, &kw, kek, target, blob, NULL));
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    RV(CKR_MECHANISM_INVALID, f->C_WrapKey(h, &sha, kek, target, blob, &len));
    CK_ATTRIBUTE nowrap[] = {{CKA_WRAP, &no, 1}};
    CK(f->C_SetAttributeValue(h, locked, nowrap, 1));
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_WrapKey(h, &kw, locked, target, blob, &len));
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &kw, kek, target, blob, &len));
    blob[5] ^= 1;
    RV(CKR_WRAPPED_KEY_INVALID, f->C_UnwrapKey(h, &kw, kek, blob, len, ut, 4, &unwrapped));
    RV(CKR_WRAPPED_KEY_LEN_RANGE, f->C_UnwrapKey(h, &kw, kek, blob, 13, ut, 4, &unwrapped));
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_UnwrapKey(h, &kw, kek, blob, len, ut + 1, 3, &unwrapped));
    RV(CKR_UNWRAPPING_KEY_HANDLE_INVALID, f->C_UnwrapKey(h, &kw, 0x7777, blob, len, ut, 4, &unwrapped));

    /* An EC private key, extractable, through AES key wrap with padding. */
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_SIGN, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_DERIVE, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 3, &pub, &priv));
    CK_ATTRIBUTE upt[] = {{CKA_CLASS, &pcls, sizeof(pcls)}, {CKA_KEY_TYPE, &ec, sizeof(ec)}, {CKA_SIGN, &yes, 1}};
    CK_OBJECT_HANDLE priv2;
    CK_MECHANISM ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE sig[64];
    CK_ULONG sl;
    /* Through AES key wrap too: its PKCS#8 zero-padded to whole semiblocks,
     * the zeros after the encoding ignored on unwrap (PKCS#11 3.1;
     * races/wrap_modes: anything else there is refused). */
    CK_MECHANISM *pm[] = {&kw, &kwp};
    for (int i = 0; i < 2; i++) {
        len = sizeof(blob);
        CK(f->C_WrapKey(h, pm[i], kek, priv, blob, &len));
        CK(f->C_UnwrapKey(h, pm[i], kek, blob, len, upt, 3, &priv2));
        sl = sizeof(sig);
        CK(f->C_SignInit(h, &ecdsa, priv2));
        CK(f->C_Sign(h, (CK_BYTE_PTR) "unwrapped", 9, sig, &sl));
        CK(f->C_VerifyInit(h, &ecdsa, pub));
        CK(f->C_Verify(h, (CK_BYTE_PTR) "unwrapped", 9, sig, sl));
    }
    CK_ATTRIBUTE wrongkt[] = {{CKA_CLASS, &pcls, sizeof(pcls)}, {CKA_KEY_TYPE, &(CK_KEY_TYPE){CKK_RSA}, sizeof(CK_KEY_TYPE)}};
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_UnwrapKey(h, &kwp, kek, blob, len, wrongkt, 2, &priv2));

    /* RSA OAEP wrap of an AES key. */
    CK_OBJECT_HANDLE rpub, rpriv;
    CK_MECHANISM rgen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE rpt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_WRAP, &yes, 1}};
    CK_ATTRIBUTE rkt[] = {{CKA_UNWRAP, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &rgen, rpt, 2, rkt, 1, &rpub, &rpriv));
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &oaep, rpub, target, blob, &len));
    assert_int_equal(len, 256);
    CK(f->C_UnwrapKey(h, &oaep, rpriv, blob, len, ut, 4, &unwrapped));
    same_aes(h, target, unwrapped);
    /* OAEP parameters are checked before anything, size queries included (found by fuzz_pkcs11). */
    CK_MECHANISM oaep_short = {CKM_RSA_PKCS_OAEP, &op, 0};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_WrapKey(h, &oaep_short, rpub, target, NULL, &len));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_UnwrapKey(h, &oaep_short, rpriv, blob, 256, ut, 4, &unwrapped));
    /* SHA-3 in OAEP's parameters (PKCS#11 3.0's CKG_MGF1_SHA3_*): wraps and unwraps. */
    CK_RSA_PKCS_OAEP_PARAMS sha3 = {0x2B0UL /* CKM_SHA3_256 */, 0x7UL /* CKG_MGF1_SHA3_256 */, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep_sha3 = {CKM_RSA_PKCS_OAEP, &sha3, sizeof(sha3)};
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &oaep_sha3, rpub, target, blob, &len));
    CK(f->C_UnwrapKey(h, &oaep_sha3, rpriv, blob, len, ut, 4, &unwrapped));
    same_aes(h, target, unwrapped);
    RV(CKR_WRAPPED_KEY_INVALID, f->C_UnwrapKey(h, &oaep, rpriv, blob, len, ut, 4, &unwrapped));
    CK_RSA_PKCS_OAEP_PARAMS badmgf = {CKM_SHA256, 0xAUL /* no such MGF */, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep_badmgf = {CKM_RSA_PKCS_OAEP, &badmgf, sizeof(badmgf)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_WrapKey(h, &oaep_badmgf, rpub, target, NULL, &len));
    /* A label: unwrapping needs the same one. */
    CK_RSA_PKCS_OAEP_PARAMS lab = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, (CK_BYTE_PTR) "label", 5};
    CK_MECHANISM oaep_lab = {CKM_RSA_PKCS_OAEP, &lab, sizeof(lab)};
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &oaep_lab, rpub, target, blob, &len));
    RV(CKR_WRAPPED_KEY_INVALID, f->C_UnwrapKey(h, &oaep, rpriv, blob, len, ut, 4, &unwrapped));
    CK(f->C_UnwrapKey(h, &oaep_lab, rpriv, blob, len, ut, 4, &unwrapped));
    same_aes(h, target, unwrapped);
    RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, f->C_WrapKey(h, &oaep, kek, target, blob, &len));
    len = sizeof(blob);
    RV(CKR_KEY_NOT_WRAPPABLE, f->C_WrapKey(h, &oaep, rpub, priv, blob, &len));

    /* ECDH: both sides derive the same key. */
    CK_OBJECT_HANDLE pub2, privb;
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 3, &pub2, &privb));
    CK_BYTE pa[80], pb[80];
    CK_ATTRIBUTE ga[] = {{CKA_EC_POINT, pa, sizeof(pa)}}, gb[] = {{CKA_EC_POINT, pb, sizeof(pb)}};
    CK(f->C_GetAttributeValue(h, pub, ga, 1));
    CK(f->C_GetAttributeValue(h, pub2, gb, 1));
    CK_ULONG vlen = 32;
    CK_ATTRIBUTE dt[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK_ULONG kdfs[] = {CKD_NULL, CKD_SHA256_KDF};
    for (int i = 0; i < 2; i++) {
        CK_ECDH1_DERIVE_PARAMS da = {kdfs[i], 0, NULL, gb[0].ulValueLen, pb};
        CK_ECDH1_DERIVE_PARAMS db = {kdfs[i], 0, NULL, ga[0].ulValueLen, pa};
        CK_MECHANISM ma = {CKM_ECDH1_DERIVE, &da, sizeof(da)}, mb = {CKM_ECDH1_DERIVE, &db, sizeof(db)};
        CK_OBJECT_HANDLE ka, kb;
        CK(f->C_DeriveKey(h, &ma, priv, dt, 4, &ka));
        CK(f->C_DeriveKey(h, &mb, privb, dt, 4, &kb));
        same_aes(h, ka, kb);
    }
    CK_ECDH1_DERIVE_PARAMS bad = {CKD_NULL, 0, NULL, 0, NULL};
    CK_MECHANISM mbad = {CKM_ECDH1_DERIVE, &bad, sizeof(bad)};
    CK_OBJECT_HANDLE kx;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &mbad, priv, dt, 4, &kx));
    CK_ECDH1_DERIVE_PARAMS offcurve = {CKD_NULL, 0, NULL, 65, pb + 2};
    CK_BYTE junk[65];
    memset(junk, 0x11, sizeof(junk));
    junk[0] = 0x04;
    offcurve.pPublicData = junk;
    CK_MECHANISM moff = {CKM_ECDH1_DERIVE, &offcurve, sizeof(offcurve)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &moff, priv, dt, 4, &kx));
    CK_ECDH1_DERIVE_PARAMS ok1 = {CKD_NULL, 0, NULL, gb[0].ulValueLen, pb};
    CK_MECHANISM mok = {CKM_ECDH1_DERIVE, &ok1, sizeof(ok1)};
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_DeriveKey(h, &mok, priv2, dt, 4, &kx)); /* no CKA_DERIVE */
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_DeriveKey(h, &mok, target, dt, 4, &kx)); /* AES: no CKA_DERIVE */
    CK(f->C_CloseAllSessions(s));
}

/* CKA_WRAP_TEMPLATE limits what a wrapping key wraps; CKA_UNWRAP_TEMPLATE
 * joins every template given to C_UnwrapKey with that key. */
static void test_wrap_templates(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("templates");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_ULONG len32 = 32, len16 = 16;
    CK_KEY_TYPE aes = CKK_AES;
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
    CK_ATTRIBUTE wtmpl[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &len32, sizeof(len32)}};
    CK_ATTRIBUTE utmpl[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CK_ATTRIBUTE kt[] = {
        {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1},
        {CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}, {CKA_UNWRAP_TEMPLATE, utmpl, sizeof(utmpl)},
    };
    CK_OBJECT_HANDLE kek, t32, t16, un;
    CK(f->C_GenerateKey(h, &gen, kt, 5, &kek));
    t32 = aes_key(h, true, false);
    CK_ATTRIBUTE st[] = {{CKA_VALUE_LEN, &len16, sizeof(len16)}, {CKA_EXTRACTABLE, &yes, 1}};
    CK(f->C_GenerateKey(h, &gen, st, 2, &t16));

    /* Reading the templates back: the count, then the types and lengths, then the values. */
    CK_ATTRIBUTE q[] = {{CKA_WRAP_TEMPLATE, NULL, 0}};
    CK(f->C_GetAttributeValue(h, kek, q, 1));
    assert_int_equal(q[0].ulValueLen, 2 * sizeof(CK_ATTRIBUTE));
    CK_ATTRIBUTE back[2] = {{0, NULL, 0}, {0, NULL, 0}};
    q[0].pValue = back;
    CK(f->C_GetAttributeValue(h, kek, q, 1));
    CK_KEY_TYPE kt_back = 0;
    CK_ULONG len_back = 0;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(back[i].ulValueLen, sizeof(CK_ULONG));
        back[i].pValue = back[i].type == CKA_KEY_TYPE ? (void *)&kt_back : (void *)&len_back;
    }
    CK(f->C_GetAttributeValue(h, kek, q, 1));
    assert_int_equal(kt_back, CKK_AES);
    assert_int_equal(len_back, 32);
    q[0].ulValueLen = sizeof(CK_ATTRIBUTE); /* room for one of two */
    RV(CKR_BUFFER_TOO_SMALL, f->C_GetAttributeValue(h, kek, q, 1));
    CK_ATTRIBUTE ro[] = {{CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(h, kek, ro, 1));

    /* Wrapping: the 32-byte AES key matches, the 16-byte one does not. */
    CK_BYTE blob[64];
    CK_ULONG bl = sizeof(blob);
    RV(CKR_KEY_NOT_WRAPPABLE, f->C_WrapKey(h, &kw, kek, t16, blob, &bl));
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &kw, kek, t32, blob, &bl));

    /* Unwrapping: the key gets the unwrap template's attributes... */
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK(f->C_UnwrapKey(h, &kw, kek, blob, bl, ut, 4, &un));
    same_aes(h, t32, un);
    CK_BBOOL sens = CK_FALSE, extr = CK_TRUE;
    CK_ATTRIBUTE g[] = {{CKA_SENSITIVE, &sens, 1}, {CKA_EXTRACTABLE, &extr, 1}};
    CK(f->C_GetAttributeValue(h, un, g, 2));
    assert_true(sens);
    assert_false(extr);
    /* ...the same value given again is fine, a conflicting one is refused. */
    CK_ATTRIBUTE agree[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_SENSITIVE, &yes, 1}};
    CK(f->C_UnwrapKey(h, &kw, kek, blob, bl, agree, 3, &un));
    CK_ATTRIBUTE clash[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_EXTRACTABLE, &yes, 1}};
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_UnwrapKey(h, &kw, kek, blob, bl, clash, 3, &un));
    CK_ATTRIBUTE nullval[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_SENSITIVE, NULL, 1}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_UnwrapKey(h, &kw, kek, blob, bl, nullval, 3, &un)); /* found by fuzz_pkcs11 */

    /* Bad templates at creation: not an array, nested templates, a bad boolean; and on the wrong class. */
    CK_ATTRIBUTE odd[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl) - 1}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKey(h, &gen, odd, 2, &un));
    CK_ATTRIBUTE nest[] = {{CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}};
    CK_ATTRIBUTE nested[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_WRAP_TEMPLATE, nest, sizeof(nest)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKey(h, &gen, nested, 2, &un));
    CK_ULONG wide = 1;
    CK_ATTRIBUTE badbool[] = {{CKA_SENSITIVE, &wide, sizeof(wide)}};
    CK_ATTRIBUTE bb[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_UNWRAP_TEMPLATE, badbool, sizeof(badbool)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKey(h, &gen, bb, 2, &un));
    CK_OBJECT_CLASS dcls = CKO_DATA;
    CK_ATTRIBUTE dt[] = {{CKA_CLASS, &dcls, sizeof(dcls)}, {CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, f->C_CreateObject(h, dt, 2, &un));
    CK(f->C_CloseAllSessions(s));
}

/* CKA_ALWAYS_AUTHENTICATE: every sign or decrypt with the key needs
 * C_Login(CKU_CONTEXT_SPECIFIC) between its init and its first use. */
static void test_always_authenticate(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("always-auth");
    CK_SESSION_HANDLE h = user_session(s, true);
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_ALWAYS_AUTHENTICATE, &yes, 1}};
    CK_OBJECT_HANDLE pub, priv, plain_pub, plain_priv;
    CK_BYTE sig[64];
    CK_ULONG sl = sizeof(sig);
    const CK_UTF8CHAR_PTR pin = (CK_UTF8CHAR_PTR)PIN;

    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 3, &pub, &priv));
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 2, &plain_pub, &plain_priv));
    CK_BBOOL aa = CK_FALSE;
    CK_ATTRIBUTE q[] = {{CKA_ALWAYS_AUTHENTICATE, &aa, 1}};
    CK(f->C_GetAttributeValue(h, priv, q, 1));
    assert_true(aa);

    /* No operation waiting: nothing to authenticate. */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_SignInit(h, &ecdsa, plain_priv));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));

    /* Using the key without the context-specific login ends the operation. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));

    /* A wrong PIN leaves it waiting; the right one lets one signature through. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_PIN_INCORRECT, f->C_Login(h, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR) "wrong-pin", 9));
    RV(CKR_ARGUMENTS_BAD, f->C_Login(h, CKU_CONTEXT_SPECIFIC, NULL, 4));
    CK(f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    sl = 0;
    CK(f->C_Sign(h, (CK_BYTE_PTR) "m", 1, NULL, &sl)); /* the size query keeps the operation */
    CK(f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_Verify(h, (CK_BYTE_PTR) "m", 1, sig, sl));
    CK_TOKEN_INFO ti;
    CK(f->C_GetTokenInfo(s, &ti));
    assert_false(ti.flags & CKF_USER_PIN_COUNT_LOW); /* the right PIN reset the counter */

    /* The next use asks again; multi-part works the same. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_SignUpdate(h, (CK_BYTE_PTR) "m", 1));
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_SignUpdate(h, (CK_BYTE_PTR) "m", 1));
    sl = sizeof(sig);
    CK(f->C_SignFinal(h, sig, &sl));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_Verify(h, (CK_BYTE_PTR) "m", 1, sig, sl));

    /* Decrypt with an RSA key that always authenticates. */
    CK_OBJECT_HANDLE rpub, rpriv;
    CK_MECHANISM rgen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0}, pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE rpt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_ENCRYPT, &yes, 1}};
    CK_ATTRIBUTE rkt[] = {{CKA_DECRYPT, &yes, 1}, {CKA_ALWAYS_AUTHENTICATE, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &rgen, rpt, 2, rkt, 2, &rpub, &rpriv));
    CK_BYTE ct[256], out[256];
    CK_ULONG cl = sizeof(ct), ol = sizeof(out);
    CK(f->C_EncryptInit(h, &pkcs, rpub));
    CK(f->C_Encrypt(h, (CK_BYTE_PTR) "secret", 6, ct, &cl));
    CK(f->C_DecryptInit(h, &pkcs, rpriv));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Decrypt(h, ct, cl, out, &ol));
    CK(f->C_DecryptInit(h, &pkcs, rpriv));
    CK(f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    ol = sizeof(out);
    CK(f->C_Decrypt(h, ct, cl, out, &ol));
    assert_int_equal(ol, 6);
    assert_memory_equal(out, "secret", 6);

    /* Logged out: the context-specific login is refused. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_Logout(h));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_CloseAllSessions(s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_wrap_unwrap_derive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrap_templates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_always_authenticate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
