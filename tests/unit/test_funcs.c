/* PKCS#11 functions beyond the single-purpose operations, through the built
 * module (dlopen, a fresh keystore per test, test_module.h):
 *
 *   - C_SignRecover / C_VerifyRecover with CKM_RSA_PKCS and CKM_RSA_X_509:
 *     round trips, the size-query protocol, data and signature lengths,
 *     corrupted signatures, raw blocks not below the modulus, key usage
 *     (CKA_SIGN_RECOVER, CKA_VERIFY_RECOVER), key types, mechanisms that do
 *     not recover, bad handles and parameters, and the sign and verify slots
 *     they share with C_SignInit / C_VerifyInit; CKF_SIGN_RECOVER and
 *     CKF_VERIFY_RECOVER on these two mechanisms only. (Known answers against
 *     OpenSSL: test_vectors.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "tests/unit/test_module.h"

/* ---- helpers ------------------------------------------------------------- */

/* An RSA-2048 session key pair; extra attributes for the private key. */
static void rsa_pair(CK_ATTRIBUTE *pub_extra, CK_ULONG npub, CK_ATTRIBUTE *priv_extra, CK_ULONG npriv,
                     CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE pt[8] = {{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    CK_ATTRIBUTE kt[8] = {{CKA_TOKEN, &no, 1}};
    assert_true(npub <= 6 && npriv <= 7);
    for (CK_ULONG i = 0; i < npub; i++)
        pt[2 + i] = pub_extra[i];
    for (CK_ULONG i = 0; i < npriv; i++)
        kt[1 + i] = priv_extra[i];
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2 + npub, kt, 1 + npriv, pub, priv));
}

/* The size-query protocol of a call producing output: NULL gives `query`,
 * a buffer of want - 1 bytes CKR_BUFFER_TOO_SMALL and want, and the
 * operation stays for the call that hands out the want bytes. */
typedef CK_RV (*out_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
static CK_ULONG sized(out_fn fn, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG query, CK_ULONG want)
{
    CK_ULONG n = 0;
    CK(fn(h, in, inlen, NULL, &n));
    assert_int_equal(n, query);
    n = want - 1;
    RV(CKR_BUFFER_TOO_SMALL, fn(h, in, inlen, out, &n));
    assert_int_equal(n, want);
    CK(fn(h, in, inlen, out, &n));
    assert_int_equal(n, want);
    return n;
}

/* ---- sign and verify with recovery ----------------------------------------- */

static void test_recover_round_trips(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE pub, priv;
    CK_BYTE msg[300], sig[512], back[512];
    rsa_pair(NULL, 0, NULL, 0, &pub, &priv);
    for (CK_ULONG i = 0; i < sizeof(msg); i++)
        msg[i] = (CK_BYTE)(i * 7 + 1);

    /* PKCS#1 v1.5: up to k - 11 bytes come back as they were signed. */
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_ULONG lens[] = {0, 1, 100, 245};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        CK(f->C_SignRecoverInit(h, &pkcs, priv));
        sized(f->C_SignRecover, msg, lens[i], sig, 256, 256);
        CK(f->C_VerifyRecoverInit(h, &pkcs, pub));
        CK_ULONG n = 0;
        CK(f->C_VerifyRecover(h, sig, 256, NULL, &n));
        assert_int_equal(n, 245); /* a bound: k - 11 */
        if (lens[i]) {
            n = lens[i] - 1;
            RV(CKR_BUFFER_TOO_SMALL, f->C_VerifyRecover(h, sig, 256, back, &n));
            assert_int_equal(n, lens[i]);
        }
        n = sizeof(back);
        CK(f->C_VerifyRecover(h, sig, 256, back, &n));
        assert_int_equal(n, lens[i]);
        assert_memory_equal(back, msg, lens[i]);
        /* The signature C_SignRecover made is the one C_Sign makes. */
        CK_BYTE sig2[256];
        CK_ULONG l2 = sizeof(sig2);
        CK(f->C_SignInit(h, &pkcs, priv));
        CK(f->C_Sign(h, msg, lens[i], sig2, &l2));
        assert_memory_equal(sig, sig2, 256);
        CK(f->C_VerifyInit(h, &pkcs, pub));
        CK(f->C_Verify(h, msg, lens[i], sig, 256));
    }

    /* Raw RSA: the block comes back whole, short data left-padded with zeros. */
    CK_MECHANISM raw = {CKM_RSA_X_509, NULL, 0};
    CK(f->C_SignRecoverInit(h, &raw, priv));
    sized(f->C_SignRecover, msg, 20, sig, 256, 256);
    CK(f->C_VerifyRecoverInit(h, &raw, pub));
    CK_ULONG n = sized(f->C_VerifyRecover, sig, 256, back, 256, 256);
    for (CK_ULONG i = 0; i < 236; i++)
        assert_int_equal(back[i], 0);
    assert_memory_equal(back + 236, msg, 20);
    msg[0] = 0; /* a full block below the modulus */
    CK(f->C_SignRecoverInit(h, &raw, priv));
    n = sizeof(sig);
    CK(f->C_SignRecover(h, msg, 256, sig, &n));
    CK(f->C_VerifyRecoverInit(h, &raw, pub));
    n = sizeof(back);
    CK(f->C_VerifyRecover(h, sig, 256, back, &n));
    assert_int_equal(n, 256);
    assert_memory_equal(back, msg, 256);
    CK(f->C_VerifyInit(h, &raw, pub));
    CK(f->C_Verify(h, msg, 256, sig, 256));
}

/* Lengths, corrupted signatures, blocks not below the modulus: each error
 * ends the operation; a size query or a short buffer does not. */
static void test_recover_errors(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE pub, priv;
    CK_BYTE msg[300], sig[512], back[512];
    CK_ULONG n;
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0}, raw = {CKM_RSA_X_509, NULL, 0};
    rsa_pair(NULL, 0, NULL, 0, &pub, &priv);
    memset(msg, 0x5a, sizeof(msg));

    CK(f->C_SignRecoverInit(h, &pkcs, priv));
    n = sizeof(sig);
    RV(CKR_DATA_LEN_RANGE, f->C_SignRecover(h, msg, 246, sig, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, msg, 10, sig, &n));
    CK(f->C_SignRecoverInit(h, &raw, priv));
    RV(CKR_DATA_LEN_RANGE, f->C_SignRecover(h, msg, 257, sig, &n));
    CK(f->C_SignRecoverInit(h, &raw, priv));
    memset(msg, 0xff, 256); /* above any 2048-bit modulus */
    RV(CKR_DATA_INVALID, f->C_SignRecover(h, msg, 256, sig, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, msg, 10, sig, &n));
    memset(msg, 0x5a, sizeof(msg));
    CK(f->C_SignRecoverInit(h, &pkcs, priv));
    RV(CKR_ARGUMENTS_BAD, f->C_SignRecover(h, NULL, 10, sig, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, msg, 10, sig, &n));

    CK(f->C_SignRecoverInit(h, &pkcs, priv));
    n = sizeof(sig);
    CK(f->C_SignRecover(h, msg, 32, sig, &n));
    for (int m = 0; m < 2; m++) {
        CK_MECHANISM *mech = m ? &raw : &pkcs;
        CK(f->C_VerifyRecoverInit(h, mech, pub));
        n = sizeof(back);
        RV(CKR_SIGNATURE_LEN_RANGE, f->C_VerifyRecover(h, sig, 255, back, &n));
        RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyRecover(h, sig, 256, back, &n));
        CK(f->C_VerifyRecoverInit(h, mech, pub));
        RV(CKR_SIGNATURE_LEN_RANGE, f->C_VerifyRecover(h, sig, 257, back, &n));
    }
    /* A corrupted PKCS#1 signature: the padding does not check out, also when
     * only a short buffer was given (the length is not known before). */
    sig[100] ^= 0x10;
    CK(f->C_VerifyRecoverInit(h, &pkcs, pub));
    n = 1;
    RV(CKR_SIGNATURE_INVALID, f->C_VerifyRecover(h, sig, 256, back, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyRecover(h, sig, 256, back, &n));
    CK(f->C_VerifyRecoverInit(h, &pkcs, pub));
    n = sizeof(back);
    RV(CKR_SIGNATURE_INVALID, f->C_VerifyRecover(h, sig, 256, back, &n));
    /* Raw RSA recovers any block below the modulus; a signature that is not
     * below it is no signature. */
    memset(sig, 0xff, 256);
    CK(f->C_VerifyRecoverInit(h, &raw, pub));
    n = sizeof(back);
    RV(CKR_SIGNATURE_INVALID, f->C_VerifyRecover(h, sig, 256, back, &n));
    CK(f->C_VerifyRecoverInit(h, &raw, pub));
    RV(CKR_ARGUMENTS_BAD, f->C_VerifyRecover(h, sig, 256, back, NULL));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyRecover(h, sig, 256, back, &n));
}

/* Which keys and mechanisms may recover, and the slots these operations share. */
static void test_recover_init_rules(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE pub, priv, pub_no, priv_no;
    CK_BYTE msg[32] = {1}, sig[256];
    CK_ULONG n;
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0}, raw = {CKM_RSA_X_509, NULL, 0};
    rsa_pair(NULL, 0, NULL, 0, &pub, &priv);
    CK_ATTRIBUTE vr[] = {{CKA_VERIFY_RECOVER, &no, 1}}, sr[] = {{CKA_SIGN_RECOVER, &no, 1}};
    rsa_pair(vr, 1, sr, 1, &pub_no, &priv_no);

    /* Only CKM_RSA_PKCS and CKM_RSA_X_509 say they recover, and they do. */
    CK_MECHANISM_TYPE mechs[256];
    CK_ULONG nm = 256;
    CK(f->C_GetMechanismList(slot, mechs, &nm));
    int recovering = 0;
    for (CK_ULONG i = 0; i < nm; i++) {
        CK_MECHANISM_INFO mi;
        CK(f->C_GetMechanismInfo(slot, mechs[i], &mi));
        CK_FLAGS rf = mi.flags & (CKF_SIGN_RECOVER | CKF_VERIFY_RECOVER);
        if (mechs[i] == CKM_RSA_PKCS || mechs[i] == CKM_RSA_X_509) {
            assert_int_equal(rf, CKF_SIGN_RECOVER | CKF_VERIFY_RECOVER);
            recovering++;
        } else if (rf) {
            fail_msg("mechanism 0x%lx says it recovers", (unsigned long)mechs[i]);
        }
    }
    assert_int_equal(recovering, 2);
    CK_MECHANISM sha = {CKM_SHA256_RSA_PKCS, NULL, 0}, pss = {CKM_RSA_PKCS_PSS, NULL, 0};
    RV(CKR_MECHANISM_INVALID, f->C_SignRecoverInit(h, &sha, priv));
    RV(CKR_MECHANISM_INVALID, f->C_VerifyRecoverInit(h, &pss, pub));
    CK_MECHANISM unknown = {0x80001234UL, NULL, 0};
    RV(CKR_MECHANISM_INVALID, f->C_SignRecoverInit(h, &unknown, priv));
    CK_BYTE junk[8] = {0};
    CK_MECHANISM with_param = {CKM_RSA_PKCS, junk, sizeof(junk)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_SignRecoverInit(h, &with_param, priv));
    RV(CKR_ARGUMENTS_BAD, f->C_SignRecoverInit(h, NULL, priv));

    /* Keys: usage attributes, class and type, handles. */
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_SignRecoverInit(h, &pkcs, priv_no));
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_VerifyRecoverInit(h, &raw, pub_no));
    CK(f->C_SignInit(h, &pkcs, priv_no)); /* CKA_SIGN is not CKA_SIGN_RECOVER */
    n = sizeof(sig);
    CK(f->C_Sign(h, msg, sizeof(msg), sig, &n));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignRecoverInit(h, &pkcs, pub));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_VerifyRecoverInit(h, &pkcs, priv));
    CK_OBJECT_HANDLE aes = secret(CKK_AES, "000102030405060708090a0b0c0d0e0f", U_SIGN);
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignRecoverInit(h, &pkcs, aes));
    RV(CKR_KEY_HANDLE_INVALID, f->C_SignRecoverInit(h, &pkcs, 0));
    RV(CKR_KEY_HANDLE_INVALID, f->C_VerifyRecoverInit(h, &pkcs, 0x7fff1234UL));

    /* Recovering and plain signing share the session's signing slot: one at
     * a time, and each init's functions only. */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, msg, 10, sig, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyRecover(h, sig, 256, msg, &n));
    CK(f->C_SignRecoverInit(h, &pkcs, priv));
    RV(CKR_OPERATION_ACTIVE, f->C_SignRecoverInit(h, &pkcs, priv));
    RV(CKR_OPERATION_ACTIVE, f->C_SignInit(h, &pkcs, priv));
    n = sizeof(sig);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Sign(h, msg, 10, sig, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignUpdate(h, msg, 10));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignFinal(h, sig, &n));
    CK(f->C_SignRecover(h, msg, 10, sig, &n)); /* still there */
    CK(f->C_SignInit(h, &pkcs, priv));
    RV(CKR_OPERATION_ACTIVE, f->C_SignRecoverInit(h, &pkcs, priv));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, msg, 10, sig, &n));
    CK(f->C_Sign(h, msg, 10, sig, &n));
    CK(f->C_VerifyRecoverInit(h, &pkcs, pub));
    RV(CKR_OPERATION_ACTIVE, f->C_VerifyInit(h, &pkcs, pub));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Verify(h, msg, 10, sig, 256));
    CK_BYTE back[256];
    n = sizeof(back);
    CK(f->C_VerifyRecover(h, sig, 256, back, &n));
    assert_int_equal(n, 10);

    /* A key that wants its PIN for every signature wants it here too. */
    CK_OBJECT_HANDLE apub, apriv;
    CK_ATTRIBUTE aa[] = {{CKA_PRIVATE, &yes, 1}, {CKA_ALWAYS_AUTHENTICATE, &yes, 1}};
    rsa_pair(NULL, 0, aa, 2, &apub, &apriv);
    CK(f->C_SignRecoverInit(h, &pkcs, apriv));
    n = sizeof(sig);
    RV(CKR_USER_NOT_LOGGED_IN, f->C_SignRecover(h, msg, 10, sig, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, msg, 10, sig, &n));
    CK(f->C_SignRecoverInit(h, &pkcs, apriv));
    CK(f->C_Login(h, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK(f->C_SignRecover(h, msg, 10, sig, &n));
    CK(f->C_VerifyRecoverInit(h, &pkcs, apub));
    n = sizeof(back);
    CK(f->C_VerifyRecover(h, sig, 256, back, &n));
    assert_int_equal(n, 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_recover_round_trips, start_default, stop),
        cmocka_unit_test_setup_teardown(test_recover_errors, start_default, stop),
        cmocka_unit_test_setup_teardown(test_recover_init_rules, start_default, stop),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
