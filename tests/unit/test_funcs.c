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
 *   - the dual-function updates (C_DigestEncryptUpdate, C_DecryptDigestUpdate,
 *     C_SignEncryptUpdate, C_DecryptVerifyUpdate): the same ciphertext, digest
 *     and MAC as the operations one at a time (and as OpenSSL's SHA-256), the
 *     part a decryption holds back fed by the application, size queries and
 *     short buffers that change neither operation, a missing operation
 *     (neither is ended), and errors that end both; CKF_DUAL_CRYPTO_OPERATIONS.
 *   - CKM_SHA*_KEY_DERIVATION: the key type and length rules (generic secret
 *     by default, the digest's length, a key type's own length, DES parity,
 *     AES lengths, more than the digest has), the base key (a secret key with
 *     CKA_DERIVE; its CKA_DERIVE_TEMPLATE), parameters, handles. (Known
 *     answers against OpenSSL: test_vectors.)
 *   - C_GetOperationState / C_SetOperationState: digests, HMAC (also
 *     _GENERAL) and CMAC saved in one session and finished in another with
 *     the same result as OpenSSL's; a digest and a MAC in one state; the
 *     size-query protocol; the 16 KiB bound; what cannot be saved (ciphers,
 *     public-key operations, C_DigestKey, a final call under way, two MAC
 *     keys); a state edited in any byte, cut short, of another slot, or of
 *     before C_Finalize; CKR_KEY_NEEDED, CKR_KEY_NOT_NEEDED and
 *     CKR_KEY_CHANGED (another key, a key whose CKA_SIGN went, a destroyed
 *     one); the session's other operations ended by a restore, kept by a
 *     failed one.
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

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <p11-kit/pkcs11.h>

#include "pkcs11/p11_v3.h"
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

    /* C_SessionCancel (PKCS#11 3.0): CKF_SIGN_RECOVER and CKF_VERIFY_RECOVER
     * end these, CKF_SIGN and CKF_VERIFY the plain ones. */
    CK_INTERFACE_PTR ip;
    typedef CK_RV (*get_interface)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
    get_interface gi = (get_interface)dlsym(dl, "C_GetInterface");
    CK(gi(NULL, NULL, &ip, 0));
    CK_FUNCTION_LIST_3_0 *f3 = ip->pFunctionList;
    CK(f->C_SignRecoverInit(h, &pkcs, priv));
    CK(f->C_VerifyInit(h, &pkcs, pub));
    CK(f3->C_SessionCancel(h, CKF_SIGN | CKF_VERIFY_RECOVER));
    RV(CKR_OPERATION_ACTIVE, f->C_SignInit(h, &pkcs, priv));
    RV(CKR_OPERATION_ACTIVE, f->C_VerifyRecoverInit(h, &pkcs, pub));
    CK(f3->C_SessionCancel(h, CKF_SIGN_RECOVER | CKF_VERIFY));
    CK(f->C_SignInit(h, &pkcs, priv));
    CK(f->C_VerifyRecoverInit(h, &pkcs, pub));
}

/* ---- dual-function updates ------------------------------------------------------- */

static const char AES_KEY[] = "2b7e151628aed2a6abf7158809cf4f3c";

/* One-shot output of an operation started with init(mech, key). */
static CK_ULONG one_shot(CK_C_EncryptInit init, CK_C_Encrypt fn, CK_MECHANISM *m, CK_OBJECT_HANDLE k, CK_BYTE_PTR in,
                         CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG cap)
{
    CK_ULONG n = cap;
    CK(init(h, m, k));
    CK(fn(h, in, inlen, out, &n));
    return n;
}

static void test_dual_digest_encrypt(void **state)
{
    (void)state;
    CK_BYTE data[100], iv[16] = {7}, ct[160], pt[160], md[32], want_md[32], want_ct[160];
    CK_ULONG n, total = 0, got = 0;
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0}, cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    CK_OBJECT_HANDLE k = secret(CKK_AES, AES_KEY, U_CRYPT);
    unsigned ml = 0;
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (CK_BYTE)(3 * i);
    assert_int_equal(EVP_Digest(data, sizeof(data), want_md, &ml, EVP_sha256(), NULL), 1);
    CK_ULONG wl = one_shot(f->C_EncryptInit, f->C_Encrypt, &cbc, k, data, sizeof(data), want_ct, sizeof(want_ct));
    assert_int_equal(wl, 112);

    CK_TOKEN_INFO ti;
    CK(f->C_GetTokenInfo(slot, &ti));
    assert_true(ti.flags & CKF_DUAL_CRYPTO_OPERATIONS);

    /* Encrypting: 37 bytes in, two blocks out; then 63, four blocks. A size
     * query and a short buffer digest nothing (the digest comes out right). */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_EncryptInit(h, &cbc, k));
    total = sized(f->C_DigestEncryptUpdate, data, 37, ct, 32, 32);
    n = sizeof(ct) - total;
    CK(f->C_DigestEncryptUpdate(h, data + 37, 63, ct + total, &n));
    assert_int_equal(n, 64);
    total += n;
    n = sizeof(ct) - total;
    CK(f->C_EncryptFinal(h, ct + total, &n));
    total += n;
    assert_int_equal(total, wl);
    assert_memory_equal(ct, want_ct, wl);
    n = sizeof(md);
    CK(f->C_DigestFinal(h, md, &n));
    assert_int_equal(n, 32);
    assert_memory_equal(md, want_md, 32);

    /* Decrypting: what comes out is digested; CBC_PAD holds the last block
     * back until C_DecryptFinal, and that part the application digests. */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DecryptInit(h, &cbc, k));
    got = sized(f->C_DecryptDigestUpdate, ct, 40, pt, 32, 32);
    n = sizeof(pt) - got;
    CK(f->C_DecryptDigestUpdate(h, ct + 40, total - 40, pt + got, &n));
    assert_int_equal(n, 64); /* 112 - 32 - the held-back block */
    got += n;
    CK_ULONG last = sizeof(pt) - got;
    CK(f->C_DecryptFinal(h, pt + got, &last));
    assert_int_equal(last, 4);
    CK(f->C_DigestUpdate(h, pt + got, last));
    got += last;
    assert_int_equal(got, sizeof(data));
    assert_memory_equal(pt, data, sizeof(data));
    n = sizeof(md);
    CK(f->C_DigestFinal(h, md, &n));
    assert_memory_equal(md, want_md, 32);

    /* GCM gives its plaintext out at C_DecryptFinal only (the tag is checked
     * first); a size query of an update takes no ciphertext in. */
    CK_GCM_PARAMS gp = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    total = one_shot(f->C_EncryptInit, f->C_Encrypt, &gcm, k, data, sizeof(data), ct, sizeof(ct));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DecryptInit(h, &gcm, k));
    n = 99;
    CK(f->C_DecryptDigestUpdate(h, ct, total, NULL, &n));
    assert_int_equal(n, 0);
    n = 0;
    CK(f->C_DecryptUpdate(h, ct, 0, NULL, &n)); /* the same query of the decryption alone */
    CK(f->C_DecryptDigestUpdate(h, ct, total, pt, &n));
    assert_int_equal(n, 0);
    n = sizeof(pt);
    CK(f->C_DecryptFinal(h, pt, &n));
    assert_int_equal(n, sizeof(data));
    assert_memory_equal(pt, data, sizeof(data));
    CK(f->C_DigestUpdate(h, pt, n));
    n = sizeof(md);
    CK(f->C_DigestFinal(h, md, &n));
    assert_memory_equal(md, want_md, 32);
}

static void test_dual_sign_encrypt(void **state)
{
    (void)state;
    CK_BYTE data[64], ct[64], pt[64], mac[32], want_mac[32], want_ct[64];
    CK_AES_CTR_PARAMS cp = {128, {0xf0, 0xf1, 0xf2}};
    CK_MECHANISM ctr = {CKM_AES_CTR, &cp, sizeof(cp)}, hmac = {CKM_SHA256_HMAC, NULL, 0};
    CK_OBJECT_HANDLE k = secret(CKK_AES, AES_KEY, U_CRYPT);
    static const char mk[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    CK_OBJECT_HANDLE mkey = secret(CKK_GENERIC_SECRET, mk, U_SIGN);
    uint8_t mkv[32];
    unsigned ml = sizeof(want_mac);
    memset(data, 0xa5, sizeof(data));
    test_unhex(mk, mkv, sizeof(mkv));
    assert_non_null(HMAC(EVP_sha256(), mkv, sizeof(mkv), data, sizeof(data), want_mac, &ml));
    one_shot(f->C_EncryptInit, f->C_Encrypt, &ctr, k, data, sizeof(data), want_ct, sizeof(want_ct));

    CK(f->C_SignInit(h, &hmac, mkey));
    CK(f->C_EncryptInit(h, &ctr, k));
    CK_ULONG n = sized(f->C_SignEncryptUpdate, data, 10, ct, 10, 10);
    CK_ULONG rest = sizeof(ct) - n;
    CK(f->C_SignEncryptUpdate(h, data + 10, sizeof(data) - 10, ct + n, &rest));
    assert_int_equal(n + rest, sizeof(data));
    CK_ULONG fin = 0;
    CK(f->C_EncryptFinal(h, NULL, &fin));
    CK(f->C_EncryptFinal(h, ct, &fin));
    assert_int_equal(fin, 0);
    assert_memory_equal(ct, want_ct, sizeof(ct));
    CK_ULONG l = sizeof(mac);
    CK(f->C_SignFinal(h, mac, &l));
    assert_memory_equal(mac, want_mac, 32);

    /* Decrypt and verify; a flipped ciphertext bit: the MAC does not verify. */
    for (int tamper = 0; tamper < 2; tamper++) {
        ct[5] ^= (CK_BYTE)tamper;
        CK(f->C_VerifyInit(h, &hmac, mkey));
        CK(f->C_DecryptInit(h, &ctr, k));
        n = sized(f->C_DecryptVerifyUpdate, ct, 33, pt, 33, 33);
        rest = sizeof(pt) - n;
        CK(f->C_DecryptVerifyUpdate(h, ct + 33, sizeof(ct) - 33, pt + n, &rest));
        fin = 0;
        CK(f->C_DecryptFinal(h, pt, &fin));
        RV(tamper ? CKR_SIGNATURE_INVALID : CKR_OK, f->C_VerifyFinal(h, want_mac, 32));
        if (!tamper)
            assert_memory_equal(pt, data, sizeof(data));
    }
}

/* Which operations a dual update needs, and what its errors end. */
static void test_dual_states(void **state)
{
    (void)state;
    CK_BYTE data[32] = {1}, out[64], iv[16] = {0};
    CK_ULONG n = sizeof(out);
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0}, cbc = {CKM_AES_CBC, iv, sizeof(iv)};
    CK_OBJECT_HANDLE k = secret(CKK_AES, AES_KEY, U_CRYPT);

    /* Neither, or one of the two: CKR_OPERATION_NOT_INITIALIZED, and the one
     * there stays. */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestEncryptUpdate(h, data, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptVerifyUpdate(h, data, 16, out, &n));
    CK(f->C_EncryptInit(h, &cbc, k));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestEncryptUpdate(h, data, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignEncryptUpdate(h, data, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptDigestUpdate(h, data, 16, out, &n));
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, data, 16, out, &n));
    n = sizeof(out);
    CK(f->C_EncryptFinal(h, out, &n));
    CK(f->C_DigestInit(h, &sha));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestEncryptUpdate(h, data, 16, out, &n));
    CK(f->C_DigestUpdate(h, data, 16));
    /* A dual update makes both multi-part: no single-part call after it. */
    CK(f->C_EncryptInit(h, &cbc, k));
    n = sizeof(out);
    CK(f->C_DigestEncryptUpdate(h, data, 16, out, &n));
    n = sizeof(out);
    RV(CKR_OPERATION_ACTIVE, f->C_Encrypt(h, data, 16, out, &n)); /* and C_Encrypt ends it (PKCS#11 5.2) */
    RV(CKR_OPERATION_ACTIVE, f->C_Digest(h, data, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, data, 16));
    /* An error ends both: a NULL length pointer. */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_EncryptInit(h, &cbc, k));
    RV(CKR_ARGUMENTS_BAD, f->C_DigestEncryptUpdate(h, data, 16, out, NULL));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptUpdate(h, data, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, data, 16));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_DigestEncryptUpdate(0xdead, data, 16, out, &n));

    /* A single-part mechanism on either side: refused, both ended, and for
     * the encryption nothing was encrypted. */
    CK_OBJECT_HANDLE pub, priv;
    rsa_pair(NULL, 0, NULL, 0, &pub, &priv);
    CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_EncryptInit(h, &rsa, pub));
    n = sizeof(out);
    RV(CKR_OPERATION_ACTIVE, f->C_DigestEncryptUpdate(h, data, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, data, 16));
    CK(f->C_SignInit(h, &rsa, priv));
    CK(f->C_EncryptInit(h, &cbc, k));
    n = sizeof(out);
    RV(CKR_OPERATION_ACTIVE, f->C_SignEncryptUpdate(h, data, 16, out, &n));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptUpdate(h, data, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignUpdate(h, data, 16));
    /* A decryption whose data is not whole blocks ends at its final, as alone. */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DecryptInit(h, &cbc, k));
    n = sizeof(out);
    CK(f->C_DecryptDigestUpdate(h, data, 20, out, &n));
    assert_int_equal(n, 16);
    n = sizeof(out);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_DecryptFinal(h, out, &n));
    CK(f->C_DigestFinal(h, out, &n));
}

/* ---- key derivation by digest ------------------------------------------------------ */

static CK_ULONG ulong_attr(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t)
{
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {t, &v, sizeof(v)};
    CK(f->C_GetAttributeValue(h, o, &a, 1));
    return v;
}

static size_t value_of(CK_OBJECT_HANDLE o, uint8_t *buf, size_t cap)
{
    CK_ATTRIBUTE a = {CKA_VALUE, buf, cap};
    CK(f->C_GetAttributeValue(h, o, &a, 1));
    return a.ulValueLen;
}

static void test_key_derivation_rules(void **state)
{
    (void)state;
    CK_MECHANISM sha1 = {CKM_SHA1_KEY_DERIVATION, NULL, 0}, sha256 = {CKM_SHA256_KEY_DERIVATION, NULL, 0};
    CK_OBJECT_HANDLE base = secret(CKK_AES, AES_KEY, U_DERIVE), k;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY, pub_cls = CKO_PUBLIC_KEY;
    CK_KEY_TYPE aes = CKK_AES, des3 = CKK_DES3, des2 = CKK_DES2, gen = CKK_GENERIC_SECRET;
    CK_ULONG l10 = 10, l16 = 16, l21 = 21, l32 = 32, l33 = 33;
    uint8_t v[64];
    CK_MECHANISM_INFO mi;

    CK(f->C_GetMechanismInfo(slot, CKM_SHA256_KEY_DERIVATION, &mi));
    assert_int_equal(mi.flags, CKF_DERIVE);
    /* No key type, no length: a generic secret of the digest's length. */
    CK_ATTRIBUTE none[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    CK(f->C_DeriveKey(h, &sha1, base, none, 1, &k));
    assert_int_equal(ulong_attr(k, CKA_KEY_TYPE), CKK_GENERIC_SECRET);
    assert_int_equal(ulong_attr(k, CKA_VALUE_LEN), 20);
    CK(f->C_DeriveKey(h, &sha256, base, NULL, 0, &k));
    assert_int_equal(ulong_attr(k, CKA_VALUE_LEN), 32);
    /* A length alone: a generic secret that long, at most the digest. */
    CK_ATTRIBUTE len10[] = {{CKA_VALUE_LEN, &l10, sizeof(l10)}};
    CK(f->C_DeriveKey(h, &sha1, base, len10, 1, &k));
    assert_int_equal(ulong_attr(k, CKA_KEY_TYPE), CKK_GENERIC_SECRET);
    assert_int_equal(ulong_attr(k, CKA_VALUE_LEN), 10);
    CK_ATTRIBUTE len21[] = {{CKA_VALUE_LEN, &l21, sizeof(l21)}}, len33[] = {{CKA_VALUE_LEN, &l33, sizeof(l33)}};
    RV(CKR_KEY_SIZE_RANGE, f->C_DeriveKey(h, &sha1, base, len21, 1, &k));
    RV(CKR_KEY_SIZE_RANGE, f->C_DeriveKey(h, &sha256, base, len33, 1, &k));
    CK_ATTRIBUTE genlen[] = {{CKA_KEY_TYPE, &gen, sizeof(gen)}, {CKA_VALUE_LEN, &l16, sizeof(l16)}};
    CK(f->C_DeriveKey(h, &sha256, base, genlen, 2, &k));
    /* A key type of no length of its own needs one; AES lengths only. */
    CK_ATTRIBUTE aes_only[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}};
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_DeriveKey(h, &sha256, base, aes_only, 1, &k));
    CK_ATTRIBUTE aes10[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &l10, sizeof(l10)}};
    RV(CKR_KEY_SIZE_RANGE, f->C_DeriveKey(h, &sha256, base, aes10, 2, &k));
    CK_ATTRIBUTE aes32[] = {
        {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &l32, sizeof(l32)}, {CKA_ENCRYPT, &yes, 1}};
    RV(CKR_KEY_SIZE_RANGE, f->C_DeriveKey(h, &sha1, base, aes32, 3, &k)); /* 20 bytes are not 32 */
    CK(f->C_DeriveKey(h, &sha256, base, aes32, 3, &k));
    assert_int_equal(ulong_attr(k, CKA_VALUE_LEN), 32);
    /* DES keys take their type's length, with odd parity. */
    CK_ATTRIBUTE d3[] = {{CKA_KEY_TYPE, &des3, sizeof(des3)}, {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_ATTRIBUTE d2[] = {{CKA_KEY_TYPE, &des2, sizeof(des2)}, {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    RV(CKR_KEY_SIZE_RANGE, f->C_DeriveKey(h, &sha1, base, d3, 3, &k));
    CK(f->C_DeriveKey(h, &sha1, base, d2, 3, &k));
    assert_int_equal(value_of(k, v, sizeof(v)), 16);
    CK(f->C_DeriveKey(h, &sha256, base, d3, 3, &k));
    assert_int_equal(value_of(k, v, sizeof(v)), 24);
    for (int i = 0; i < 24; i++)
        assert_true(__builtin_popcount(v[i]) & 1);
    /* Only secret keys are derived. */
    CK_ATTRIBUTE pubt[] = {{CKA_CLASS, &pub_cls, sizeof(pub_cls)}};
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_DeriveKey(h, &sha1, base, pubt, 1, &k));

    /* The base key: CKA_DERIVE, a secret key, a handle; no parameters. */
    CK_OBJECT_HANDLE no_derive = secret(CKK_AES, AES_KEY, U_CRYPT);
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_DeriveKey(h, &sha1, no_derive, NULL, 0, &k));
    RV(CKR_KEY_HANDLE_INVALID, f->C_DeriveKey(h, &sha1, 0x7fff0001UL, NULL, 0, &k));
    CK_OBJECT_HANDLE pub, priv;
    CK_ATTRIBUTE dk[] = {{CKA_DERIVE, &yes, 1}};
    rsa_pair(NULL, 0, dk, 1, &pub, &priv);
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_DeriveKey(h, &sha1, priv, NULL, 0, &k));
    CK_BYTE junk[4] = {0};
    CK_MECHANISM with_param = {CKM_SHA256_KEY_DERIVATION, junk, sizeof(junk)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &with_param, base, NULL, 0, &k));

    /* The base key's CKA_DERIVE_TEMPLATE joins the template, key type included. */
    CK_ATTRIBUTE inner[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}};
    CK_ATTRIBUTE dt = {CKA_DERIVE_TEMPLATE, inner, sizeof(inner)};
    CK_OBJECT_HANDLE tbase;
    uint8_t bv[16];
    test_unhex(AES_KEY, bv, sizeof(bv));
    CK(create_secret(CKK_AES, bv, sizeof(bv), U_DERIVE, &dt, 1, &tbase));
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_DeriveKey(h, &sha256, tbase, NULL, 0, &k));
    CK_ATTRIBUTE l16t[] = {{CKA_VALUE_LEN, &l16, sizeof(l16)}};
    CK(f->C_DeriveKey(h, &sha256, tbase, l16t, 1, &k));
    assert_int_equal(ulong_attr(k, CKA_KEY_TYPE), CKK_AES);
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_DeriveKey(h, &sha256, tbase, genlen, 2, &k));
}

/* ---- saved operation states -------------------------------------------------------- */

static CK_SESSION_HANDLE other_session(void)
{
    CK_SESSION_HANDLE o;
    CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &o));
    return o;
}

/* End the session's digest, signing and verifying operations, whatever they
 * say about it (a PKCS#11 2.40 session has no C_SessionCancel). */
static void end_macs(CK_SESSION_HANDLE s)
{
    CK_BYTE b[64];
    CK_ULONG n = sizeof(b);
    (void)f->C_SignFinal(s, b, &n);
    n = sizeof(b);
    (void)f->C_DigestFinal(s, b, &n);
    (void)f->C_VerifyFinal(s, b, 0);
}

/* The session's state; the size-query protocol on the way. */
static CK_ULONG get_state(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG cap)
{
    CK_ULONG n = 0;
    CK(f->C_GetOperationState(s, NULL, &n));
    assert_true(n > 0 && n <= cap);
    CK_ULONG want = n;
    n = want - 1;
    RV(CKR_BUFFER_TOO_SMALL, f->C_GetOperationState(s, out, &n));
    assert_int_equal(n, want);
    n = cap;
    CK(f->C_GetOperationState(s, out, &n));
    assert_int_equal(n, want);
    return n;
}

static void test_opstate_digest(void **state)
{
    (void)state;
    static CK_BYTE data[20000], st[16600];
    CK_BYTE md[32], want[32];
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_ULONG n, sl;
    unsigned ml = 0;
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (CK_BYTE)(i % 251);
    assert_int_equal(EVP_Digest(data, 300, want, &ml, EVP_sha256(), NULL), 1);
    CK_SESSION_HANDLE h2 = other_session();

    /* Saved after 100 bytes, finished in both sessions the same. */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestUpdate(h, data, 60));
    CK(f->C_DigestUpdate(h, data + 60, 40));
    sl = get_state(h, st, sizeof(st));
    CK(f->C_DigestUpdate(h, data + 100, 200));
    n = sizeof(md);
    CK(f->C_DigestFinal(h, md, &n));
    assert_memory_equal(md, want, 32);
    CK(f->C_SetOperationState(h2, st, sl, 0, 0));
    CK(f->C_DigestUpdate(h2, data + 100, 200));
    n = sizeof(md);
    CK(f->C_DigestFinal(h2, md, &n));
    assert_memory_equal(md, want, 32);
    /* Restored again, into the first session: a state is not used up. It had
     * parts: single-part C_Digest is refused (and ends it, as always). */
    CK(f->C_SetOperationState(h, st, sl, 0, 0));
    n = sizeof(md);
    RV(CKR_OPERATION_ACTIVE, f->C_Digest(h, data, 10, md, &n));
    /* Saved right after the init: C_Digest may follow. */
    CK(f->C_DigestInit(h, &sha));
    sl = get_state(h, st, sizeof(st));
    CK(f->C_DigestFinal(h, md, &n));
    CK(f->C_SetOperationState(h2, st, sl, 0, 0));
    n = sizeof(md);
    CK(f->C_Digest(h2, data, 300, md, &n));
    assert_memory_equal(md, want, 32);

    /* Keys for a digest: not needed. */
    CK_OBJECT_HANDLE k = secret(CKK_GENERIC_SECRET, AES_KEY, U_SIGN);
    RV(CKR_KEY_NOT_NEEDED, f->C_SetOperationState(h2, st, sl, 0, k));
    RV(CKR_KEY_NOT_NEEDED, f->C_SetOperationState(h2, st, sl, k, 0));

    /* Up to 16 KiB of input; one byte more and the digest cannot be saved,
     * but goes on. */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestUpdate(h, data, 16384));
    sl = get_state(h, st, sizeof(st));
    CK(f->C_DigestUpdate(h, data + 16384, 1));
    n = sizeof(st);
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h, st, &n));
    CK(f->C_DigestUpdate(h, data + 16385, sizeof(data) - 16385));
    CK_BYTE big[32];
    n = sizeof(big);
    CK(f->C_DigestFinal(h, big, &n));
    assert_int_equal(EVP_Digest(data, sizeof(data), want, &ml, EVP_sha256(), NULL), 1);
    assert_memory_equal(big, want, 32);
    CK(f->C_SetOperationState(h2, st, sl, 0, 0));
    CK(f->C_DigestUpdate(h2, data + 16384, sizeof(data) - 16384));
    n = sizeof(big);
    CK(f->C_DigestFinal(h2, big, &n));
    assert_memory_equal(big, want, 32);

    /* Not saveable: a digested key, a final call under way, a cipher. */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestKey(h, k));
    n = sizeof(st);
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h, st, &n));
    CK(f->C_DigestInit(h2, &sha)); /* h's digest is still there: the failure ended nothing */
    RV(CKR_OPERATION_ACTIVE, f->C_DigestInit(h, &sha));
    n = 1;
    RV(CKR_BUFFER_TOO_SMALL, f->C_DigestFinal(h, md, &n));
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h, st, &n));
    CK(f->C_DigestFinal(h, md, &n));
    CK_BYTE iv[16] = {0};
    CK_MECHANISM cbc = {CKM_AES_CBC, iv, sizeof(iv)};
    CK_OBJECT_HANDLE ak = secret(CKK_AES, AES_KEY, U_CRYPT);
    CK(f->C_EncryptInit(h, &cbc, ak));
    n = sizeof(st);
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h, st, &n));
    RV(CKR_ARGUMENTS_BAD, f->C_GetOperationState(h, st, NULL));
    /* A restore ends the session's other operations; no operation: nothing to save. */
    sl = get_state(h2, st, sizeof(st));
    CK(f->C_SetOperationState(h, st, sl, 0, 0));
    n = sizeof(st);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptUpdate(h, data, 16, st, &n));
    CK(f->C_DigestFinal(h, md, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_GetOperationState(h, st, &n));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_GetOperationState(0xdead, st, &n));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_SetOperationState(0xdead, st, sl, 0, 0));
    RV(CKR_ARGUMENTS_BAD, f->C_SetOperationState(h, NULL, sl, 0, 0));
    CK(f->C_CloseSession(h2));
}

/* A state is the module's and this slot's only: every edited byte, a cut,
 * another slot, another C_Initialize. */
static void test_opstate_forged(void **state)
{
    (void)state;
    CK_BYTE data[64] = {9}, st[512], bad[512], iv[16] = {0};
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0}, cbc = {CKM_AES_CBC, iv, sizeof(iv)};
    CK_ULONG n, sl;
    CK_OBJECT_HANDLE ak = secret(CKK_AES, AES_KEY, U_CRYPT);
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestUpdate(h, data, sizeof(data)));
    sl = get_state(h, st, sizeof(st));
    CK(f->C_DigestFinal(h, data, &(CK_ULONG){32}));

    CK(f->C_EncryptInit(h, &cbc, ak));
    for (CK_ULONG i = 0; i < sl; i++) {
        memcpy(bad, st, sl);
        bad[i] ^= 0x01;
        CK_RV rv = f->C_SetOperationState(h, bad, sl, 0, 0);
        if (rv != CKR_SAVED_STATE_INVALID)
            fail_msg("a state with byte %lu edited: 0x%lx", (unsigned long)i, (unsigned long)rv);
    }
    RV(CKR_SAVED_STATE_INVALID, f->C_SetOperationState(h, st, sl - 1, 0, 0));
    RV(CKR_SAVED_STATE_INVALID, f->C_SetOperationState(h, st, 0, 0, 0));
    memcpy(bad, st, sl);
    bad[sl] = 0;
    RV(CKR_SAVED_STATE_INVALID, f->C_SetOperationState(h, bad, sl + 1, 0, 0));
    n = 16;
    CK(f->C_EncryptUpdate(h, data, 16, bad, &n)); /* the failures ended nothing */

    /* Another token's session: the state is bound to its slot. */
    CK_SLOT_ID slots[8];
    CK_ULONG ns = 8;
    CK_UTF8CHAR label[32];
    CK(f->C_GetSlotList(CK_FALSE, slots, &ns));
    memset(label, ' ', sizeof(label));
    CK(f->C_InitToken(slots[ns - 1], (CK_UTF8CHAR_PTR)SO, strlen(SO), label));
    CK_SESSION_HANDLE o;
    CK(f->C_OpenSession(slots[ns - 1], CKF_SERIAL_SESSION, NULL, NULL, &o));
    RV(CKR_SAVED_STATE_INVALID, f->C_SetOperationState(o, st, sl, 0, 0));
    CK(f->C_SetOperationState(h, st, sl, 0, 0));

    /* After C_Finalize the module seals under another key. */
    CK(f->C_Finalize(NULL));
    CK(f->C_Initialize(NULL));
    CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &o));
    RV(CKR_SAVED_STATE_INVALID, f->C_SetOperationState(o, st, sl, 0, 0));
}

static void test_opstate_mac(void **state)
{
    (void)state;
    static const char mk[] = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";
    CK_BYTE data[200], st[1024], mac[64], want[64], md[32], want_md[32];
    CK_ULONG n, sl, general = 10;
    unsigned ml = 0;
    uint8_t kv[20];
    memset(data, 0xcd, sizeof(data));
    test_unhex(mk, kv, sizeof(kv));
    assert_non_null(HMAC(EVP_sha256(), kv, sizeof(kv), data, sizeof(data), want, &ml));
    assert_int_equal(EVP_Digest(data, sizeof(data), want_md, &ml, EVP_sha256(), NULL), 1);
    CK_OBJECT_HANDLE k = secret(CKK_GENERIC_SECRET, mk, U_SIGN), k2 = secret(CKK_GENERIC_SECRET, mk, U_SIGN);
    CK_MECHANISM hmac = {CKM_SHA256_HMAC, NULL, 0}, hgen = {CKM_SHA256_HMAC_GENERAL, &general, sizeof(general)};
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_SESSION_HANDLE h2 = other_session();

    /* A MAC and a digest under way in one state. */
    CK(f->C_SignInit(h, &hmac, k));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_SignUpdate(h, data, 77));
    CK(f->C_DigestUpdate(h, data, 50));
    sl = get_state(h, st, sizeof(st));
    RV(CKR_KEY_NEEDED, f->C_SetOperationState(h2, st, sl, 0, 0));
    RV(CKR_KEY_CHANGED, f->C_SetOperationState(h2, st, sl, 0, k2));
    RV(CKR_KEY_NOT_NEEDED, f->C_SetOperationState(h2, st, sl, k, k));
    CK(f->C_SetOperationState(h2, st, sl, 0, k));
    CK(f->C_SignUpdate(h2, data + 77, sizeof(data) - 77));
    CK(f->C_DigestUpdate(h2, data + 50, sizeof(data) - 50));
    n = sizeof(mac);
    CK(f->C_SignFinal(h2, mac, &n));
    assert_int_equal(n, 32);
    assert_memory_equal(mac, want, 32);
    n = sizeof(md);
    CK(f->C_DigestFinal(h2, md, &n));
    assert_memory_equal(md, want_md, 32);

    /* Verification, and a _GENERAL length kept. */
    end_macs(h);
    CK(f->C_VerifyInit(h, &hgen, k));
    CK(f->C_VerifyUpdate(h, data, 10));
    sl = get_state(h, st, sizeof(st));
    CK(f->C_SetOperationState(h2, st, sl, 0, k));
    CK(f->C_VerifyUpdate(h2, data + 10, sizeof(data) - 10));
    RV(CKR_SIGNATURE_LEN_RANGE, f->C_VerifyFinal(h2, want, 32));
    CK(f->C_SetOperationState(h2, st, sl, 0, k));
    CK(f->C_VerifyUpdate(h2, data + 10, sizeof(data) - 10));
    CK(f->C_VerifyFinal(h2, want, general));

    /* The key may no longer sign, or is gone: the state cannot come back with it. */
    end_macs(h);
    CK(f->C_SignInit(h, &hmac, k2));
    CK(f->C_SignUpdate(h, data, 10));
    sl = get_state(h, st, sizeof(st));
    CK_ATTRIBUTE nosign[] = {{CKA_SIGN, &no, 1}};
    CK(f->C_SetAttributeValue(h, k2, nosign, 1));
    RV(CKR_KEY_CHANGED, f->C_SetOperationState(h2, st, sl, 0, k2));
    CK(f->C_DestroyObject(h, k2));
    RV(CKR_KEY_CHANGED, f->C_SetOperationState(h2, st, sl, 0, k2));

    /* One authentication key per state: a MAC with each of two keys is not saveable. */
    CK_OBJECT_HANDLE k3 = secret(CKK_GENERIC_SECRET, mk, U_SIGN);
    end_macs(h);
    CK(f->C_SignInit(h, &hmac, k));
    CK(f->C_VerifyInit(h, &hmac, k3));
    n = sizeof(st);
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h, st, &n));
    end_macs(h);
    CK(f->C_VerifyInit(h, &hmac, k));
    get_state(h, st, sizeof(st)); /* the same key twice is fine */
    end_macs(h);

    /* CMAC, as HMAC. */
    CK_OBJECT_HANDLE ak = secret(CKK_AES, AES_KEY, U_SIGN);
    CK_MECHANISM cmac = {CKM_AES_CMAC, NULL, 0};
    CK_BYTE want_cmac[16];
    CK(f->C_SignInit(h, &cmac, ak));
    n = sizeof(want_cmac);
    CK(f->C_Sign(h, data, sizeof(data), want_cmac, &n));
    CK(f->C_SignInit(h, &cmac, ak));
    CK(f->C_SignUpdate(h, data, 33));
    sl = get_state(h, st, sizeof(st));
    CK(f->C_SetOperationState(h2, st, sl, 0, ak));
    CK(f->C_SignUpdate(h2, data + 33, sizeof(data) - 33));
    n = sizeof(mac);
    CK(f->C_SignFinal(h2, mac, &n));
    assert_int_equal(n, 16);
    assert_memory_equal(mac, want_cmac, 16);

    /* Public-key operations are not saveable. */
    CK_OBJECT_HANDLE pub, priv;
    rsa_pair(NULL, 0, NULL, 0, &pub, &priv);
    CK_MECHANISM rsa = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK(f->C_SignInit(h2, &rsa, priv));
    CK(f->C_SignUpdate(h2, data, 10));
    n = sizeof(st);
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h2, st, &n));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_recover_round_trips, start_default, stop),
        cmocka_unit_test_setup_teardown(test_recover_errors, start_default, stop),
        cmocka_unit_test_setup_teardown(test_recover_init_rules, start_default, stop),
        cmocka_unit_test_setup_teardown(test_dual_digest_encrypt, start_default, stop),
        cmocka_unit_test_setup_teardown(test_dual_sign_encrypt, start_default, stop),
        cmocka_unit_test_setup_teardown(test_dual_states, start_default, stop),
        cmocka_unit_test_setup_teardown(test_key_derivation_rules, start_default, stop),
        cmocka_unit_test_setup_teardown(test_opstate_digest, start_default, stop),
        cmocka_unit_test_setup_teardown(test_opstate_forged, start_default, stop),
        cmocka_unit_test_setup_teardown(test_opstate_mac, start_default, stop),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
