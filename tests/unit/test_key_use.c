/* The usage rules read once per key (tok_key_use), a helper's hostile test:
 * usage attributes taken away, CKA_ALLOWED_MECHANISMS, private keys after
 * logout (C_GenerateKey, C_GenerateKeyPair, C_CopyObject, C_DeriveKey,
 * C_UnwrapKey), message-based functions, operation state restored after
 * the key's usage was taken away. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/unit/test_p11.h"

static CK_FUNCTION_LIST_3_0 *f3;

static void get_f3(void)
{
    CK_INTERFACE_PTR ip;
    typedef CK_RV (*get_interface)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
    get_interface gi = (get_interface)dlsym(dl, "C_GetInterface");
    CK(gi(NULL, NULL, &ip, 0));
    f3 = ip->pFunctionList;
}

static CK_OBJECT_HANDLE hmac_key(CK_SESSION_HANDLE h, bool token, bool priv, const CK_MECHANISM_TYPE *allowed,
                                 CK_ULONG nallowed)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE, (void *)"0123456789abcdef0123456789abcdef", 32},
        {CKA_TOKEN, token ? &yes : &no, 1}, {CKA_PRIVATE, priv ? &yes : &no, 1},
        {CKA_SIGN, &yes, 1},                {CKA_VERIFY, &yes, 1},
        {CKA_DERIVE, &yes, 1},
        {CKA_ALLOWED_MECHANISMS, (void *)allowed, nallowed * sizeof(CK_MECHANISM_TYPE)},
    };
    CK(f->C_CreateObject(h, t, allowed ? 9 : 8, &o));
    return o;
}

static CK_RV hmac(CK_SESSION_HANDLE h, CK_MECHANISM_TYPE mt, CK_OBJECT_HANDLE k)
{
    CK_MECHANISM m = {mt, NULL, 0};
    CK_BYTE out[64];
    CK_ULONG n = sizeof(out);
    CK_RV rv = f->C_SignInit(h, &m, k);
    return rv != CKR_OK ? rv : f->C_Sign(h, (CK_BYTE_PTR) "data", 4, out, &n);
}

static CK_RV ecsign(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k)
{
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE out[64];
    CK_ULONG n = sizeof(out);
    CK_RV rv = f->C_SignInit(h, &m, k);
    return rv != CKR_OK ? rv : f->C_Sign(h, (CK_BYTE_PTR) "data", 4, out, &n);
}

/* CKA_SIGN taken away, token and session keys, used many times before. */
static void test_sign_taken_away(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("hk-sign");
    CK_SESSION_HANDLE h = user_session(s, true), h2;
    CK_ATTRIBUTE off = {CKA_SIGN, &no, 1}, on = {CKA_SIGN, &yes, 1};
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h2));

    for (int token = 0; token < 2; token++) {
        CK_OBJECT_HANDLE pub, priv;
        make_ec(h, token ? "t" : "s", token, &pub, &priv);
        for (int i = 0; i < 3; i++) {
            CK(ecsign(h, priv));
            CK(ecsign(h2, priv));
        }
        CK(f->C_SetAttributeValue(h2, priv, &off, 1));
        RV(CKR_KEY_FUNCTION_NOT_PERMITTED, ecsign(h, priv));
        RV(CKR_KEY_FUNCTION_NOT_PERMITTED, ecsign(h2, priv));
        CK(f->C_SetAttributeValue(h, priv, &on, 1));
        CK(ecsign(h, priv));
        CK(ecsign(h2, priv));
        CK(f->C_SetAttributeValue(h, priv, &off, 1));
        RV(CKR_KEY_FUNCTION_NOT_PERMITTED, ecsign(h2, priv));

        CK_OBJECT_HANDLE k = hmac_key(h, token, true, NULL, 0);
        CK(hmac(h, CKM_SHA256_HMAC, k));
        CK(hmac(h, CKM_SHA256_HMAC, k));
        CK(f->C_SetAttributeValue(h, k, &off, 1));
        RV(CKR_KEY_FUNCTION_NOT_PERMITTED, hmac(h, CKM_SHA256_HMAC, k));
        /* message-based */
        CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
        RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f3->C_MessageSignInit(h, &m, k));
        /* CKA_PRIVATE cannot change */
        CK_ATTRIBUTE pub_attr = {CKA_PRIVATE, &no, 1};
        RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(h, k, &pub_attr, 1));
        RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(h, priv, &pub_attr, 1));
    }
    CK(f->C_CloseAllSessions(s));
}

/* CKA_ALLOWED_MECHANISMS: only the listed mechanisms, on every path. */
static void test_allowed_mechanisms(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("hk-allowed");
    CK_SESSION_HANDLE h = user_session(s, true);
    static const CK_MECHANISM_TYPE only256[] = {CKM_SHA256_HMAC};

    for (int token = 0; token < 2; token++) {
        CK_OBJECT_HANDLE k = hmac_key(h, token, true, only256, 1);
        CK(hmac(h, CKM_SHA256_HMAC, k));
        RV(CKR_MECHANISM_INVALID, hmac(h, CKM_SHA384_HMAC, k));
        CK(hmac(h, CKM_SHA256_HMAC, k));
        RV(CKR_MECHANISM_INVALID, hmac(h, CKM_SHA384_HMAC, k));
        CK_MECHANISM m384 = {CKM_SHA384_HMAC, NULL, 0};
        RV(CKR_MECHANISM_INVALID, f3->C_MessageSignInit(h, &m384, k));
        RV(CKR_MECHANISM_INVALID, f->C_VerifyInit(h, &m384, k));
        /* A copy keeps the list; it cannot be changed */
        CK_OBJECT_HANDLE c;
        CK_ATTRIBUTE ct = {CKA_LABEL, (void *)"copy", 4};
        CK(f->C_CopyObject(h, k, &ct, 1, &c));
        CK(hmac(h, CKM_SHA256_HMAC, c));
        RV(CKR_MECHANISM_INVALID, hmac(h, CKM_SHA384_HMAC, c));
        CK_ATTRIBUTE widen = {CKA_ALLOWED_MECHANISMS, NULL, 0};
        assert_int_not_equal(f->C_SetAttributeValue(h, k, &widen, 1), CKR_OK);
        assert_int_not_equal(f->C_CopyObject(h, k, &widen, 1, &c), CKR_OK);
        RV(CKR_MECHANISM_INVALID, hmac(h, CKM_SHA384_HMAC, k));
    }
    CK(f->C_CloseAllSessions(s));
}

/* Private keys of every origin are refused once the user logged out
 * (in another session), on sessions that used them before. */
static void test_private_after_logout(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("hk-logout");
    CK_SESSION_HANDLE h = user_session(s, true), other;
    CK_OBJECT_HANDLE keys[8];
    int nk = 0;

    CK_OBJECT_HANDLE pub, priv;
    make_ec(h, "gen", true, &pub, &priv);
    keys[nk++] = priv;
    CK_OBJECT_HANDLE hk = hmac_key(h, true, true, NULL, 0);
    keys[nk++] = hk;
    CK_OBJECT_HANDLE cp;
    CK_ATTRIBUTE ct = {CKA_LABEL, (void *)"copy", 4};
    CK(f->C_CopyObject(h, hk, &ct, 1, &cp));
    keys[nk++] = cp;
    /* Generated: the default CKA_PRIVATE of a secret key is true. */
    CK_MECHANISM gm = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_ATTRIBUTE gt[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}};
    CK_OBJECT_HANDLE g;
    CK(f->C_GenerateKey(h, &gm, gt, 3, &g));
    keys[nk++] = g;
    /* Derived */
    CK_BYTE data[32] = {1};
    CK_KEY_DERIVATION_STRING_DATA kd = {data, sizeof(data)};
    CK_MECHANISM dm = {CKM_XOR_BASE_AND_DATA, &kd, sizeof(kd)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE dt[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &yes, 1},
                         {CKA_SIGN, &yes, 1}};
    CK_OBJECT_HANDLE d;
    CK_RV drv = f->C_DeriveKey(h, &dm, hk, dt, 4, &d);
    if (drv == CKR_OK)
        keys[nk++] = d;
    else
        fprintf(stderr, "derive: %#lx (skipped)\n", (unsigned long)drv);

    for (int i = 0; i < nk; i++) {
        CK_RV rv = i == 0 ? ecsign(h, keys[i]) : hmac(h, CKM_SHA256_HMAC, keys[i]);
        CK(rv);
        rv = i == 0 ? ecsign(h, keys[i]) : hmac(h, CKM_SHA256_HMAC, keys[i]);
        CK(rv);
    }
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &other));
    CK(f->C_Logout(other));
    for (int i = 0; i < nk; i++) {
        CK_RV rv = i == 0 ? ecsign(h, keys[i]) : hmac(h, CKM_SHA256_HMAC, keys[i]);
        if (rv == CKR_OK)
            fprintf(stderr, "key %d usable after logout\n", i);
        assert_int_not_equal(rv, CKR_OK);
        CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
        if (i)
            assert_int_not_equal(f3->C_MessageSignInit(h, &m, keys[i]), CKR_OK);
    }
    CK(f->C_CloseAllSessions(s));
}

/* An HMAC's state saved, its key's CKA_SIGN taken away, the state restored:
 * the restored operation must not sign. */
static void test_opstate_after_usage_removed(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("hk-opstate");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE st[4096], out[64];
    CK_ULONG n = sizeof(st), ol = sizeof(out);

    for (int token = 0; token < 2; token++) {
        CK_OBJECT_HANDLE k = hmac_key(h, token, true, NULL, 0);
        CK(hmac(h, CKM_SHA256_HMAC, k));
        CK(f->C_SignInit(h, &m, k));
        CK(f->C_SignUpdate(h, (CK_BYTE_PTR) "part", 4));
        n = sizeof(st);
        CK(f->C_GetOperationState(h, st, &n));
        CK_ATTRIBUTE off = {CKA_SIGN, &no, 1};
        CK(f->C_SetAttributeValue(h, k, &off, 1));
        CK_RV rv = f->C_SetOperationState(h, st, n, 0, k);
        fprintf(stderr, "restore after CKA_SIGN off: %#lx\n", (unsigned long)rv);
        if (rv == CKR_OK) {
            ol = sizeof(out);
            rv = f->C_SignFinal(h, out, &ol);
            assert_int_not_equal(rv, CKR_OK);
        }
        CK_ATTRIBUTE on = {CKA_SIGN, &yes, 1};
        CK(f->C_SetAttributeValue(h, k, &on, 1));
        (void)f->C_SignInit(h, NULL, k);
    }
    CK(f->C_CloseAllSessions(s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sign_taken_away, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allowed_mechanisms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_private_after_logout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opstate_after_usage_removed, setup, teardown),
    };
    if (p11_group_setup(NULL) != 0)
        return 1;
    get_f3();
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    p11_group_teardown(NULL);
    return rc;
}
