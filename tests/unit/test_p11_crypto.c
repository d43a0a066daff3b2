/* Unit tests of the pkcs11 layer (test_p11.h): the crypto operation life
 * cycle and size queries, GCM and RSA. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/unit/test_p11.h"

/* ---- crypto --------------------------------------------------------------- */

static void test_crypto_lifecycle(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("crypto");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_aes(h, "aes", false), pub, priv;
    CK_BYTE iv[16] = {1, 2, 3}, in[100], out[256], back[256];
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    CK_ULONG len;

    memset(in, 0x42, sizeof(in));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, sizeof(in), out, &len));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptInit(h, NULL, k));
    RV(CKR_KEY_HANDLE_INVALID, f->C_EncryptInit(h, &cbc, 0x12345));
    CK_MECHANISM bogus = {CKM_VENDOR_DEFINED + 1, NULL, 0};
    RV(CKR_MECHANISM_INVALID, f->C_EncryptInit(h, &bogus, k));
    CK_MECHANISM badiv = {CKM_AES_CBC_PAD, iv, 8};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &badiv, k));

    /* Size query, short buffer, then success: the operation stays active. */
    CK(f->C_EncryptInit(h, &cbc, k));
    RV(CKR_OPERATION_ACTIVE, f->C_EncryptInit(h, &cbc, k));
    CK(f->C_Encrypt(h, in, sizeof(in), NULL, &len));
    assert_int_equal(len, 112);
    len = 10;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 112);
    len = sizeof(out);
    CK(f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 112);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, sizeof(in), out, &len));
    CK_ULONG ctlen = len;

    /* Multi-part decrypt of the same. */
    CK(f->C_DecryptInit(h, &cbc, k));
    CK_ULONG part = sizeof(back), total = 0;
    CK(f->C_DecryptUpdate(h, out, 50, back, &part));
    total += part;
    part = sizeof(back) - total;
    CK(f->C_DecryptUpdate(h, out + 50, ctlen - 50, back + total, &part));
    total += part;
    part = sizeof(back) - total;
    CK(f->C_DecryptFinal(h, back + total, &part));
    total += part;
    assert_int_equal(total, sizeof(in));
    assert_memory_equal(back, in, sizeof(in));
    /* A damaged last block: bad padding (or, rarely, valid padding by chance). */
    CK(f->C_DecryptInit(h, &cbc, k));
    out[ctlen - 1] ^= 0xff;
    len = sizeof(back);
    CK_RV rv = f->C_Decrypt(h, out, ctlen, back, &len);
    assert_true(rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_OK); /* padding may by chance be valid */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptFinal(h, back, &len));
    CK(f->C_DecryptInit(h, &cbc, k));
    len = sizeof(back);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, out, 17, back, &len));

    /* Usage flags: an AES key without CKA_SIGN cannot sign. */
    CK_MECHANISM hmac = {CKM_SHA256_HMAC, NULL, 0};
    CK_MECHANISM ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &ecdsa, k));

    /* ECDSA: single and multi-part, verify, corrupted signature. */
    make_ec(h, "ec", false, &pub, &priv);
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_Sign(h, in, sizeof(in), NULL, &len));
    assert_int_equal(len, 64);
    len = 63;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Sign(h, in, sizeof(in), out, &len));
    len = sizeof(out);
    CK(f->C_Sign(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 64);
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_Verify(h, in, sizeof(in), out, len));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_VerifyUpdate(h, in, 30));
    CK(f->C_VerifyUpdate(h, in + 30, sizeof(in) - 30));
    CK(f->C_VerifyFinal(h, out, len));
    out[5] ^= 1;
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, sizeof(in), out, len));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    RV(CKR_SIGNATURE_LEN_RANGE, f->C_Verify(h, in, sizeof(in), out, 10));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &ecdsa, pub)); /* public key cannot sign */
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &hmac, priv));
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_SignUpdate(h, in, 10));
    RV(CKR_OPERATION_ACTIVE, f->C_Sign(h, in, sizeof(in), out, &len)); /* single-part after update */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignFinal(h, out, &len));

    /* Digest known answer. */
    static const CK_BYTE abc256[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                     0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                     0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, in, 1));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestUpdate(h, (CK_BYTE_PTR) "a", 1));
    CK(f->C_DigestUpdate(h, (CK_BYTE_PTR) "bc", 2));
    len = 16;
    RV(CKR_BUFFER_TOO_SMALL, f->C_DigestFinal(h, out, &len));
    assert_int_equal(len, 32);
    CK(f->C_DigestFinal(h, out, &len));
    assert_memory_equal(out, abc256, 32);
    CK(f->C_DigestInit(h, &sha));
    len = sizeof(out);
    CK(f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, out, &len));
    assert_memory_equal(out, abc256, 32);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestKey(h, k));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestKey(h, k)); /* a secret key's value, digested without leaving the token */
    len = sizeof(out);
    CK(f->C_DigestFinal(h, out, &len));
    assert_int_equal(len, 32);
    CK(f->C_DigestInit(h, &sha));
    RV(CKR_KEY_INDIGESTIBLE, f->C_DigestKey(h, priv)); /* only secret keys */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestFinal(h, out, &len));
    /* Parts after a single-part call that left the operation active (a size
     * query, a short buffer): CKR_OPERATION_ACTIVE, the operation ended. C_DigestFinal
     * gave the digest of nothing (google/pkcs11test DigestFinalIntersperse). */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, NULL, &len));
    RV(CKR_OPERATION_ACTIVE, f->C_DigestFinal(h, out, &len));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, out, &len)); /* ended */
    CK(f->C_DigestInit(h, &sha));
    len = 4;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, out, &len));
    RV(CKR_OPERATION_ACTIVE, f->C_DigestUpdate(h, in, 1));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, NULL, &len));
    RV(CKR_OPERATION_ACTIVE, f->C_DigestKey(h, k));
    /* Nor can such an operation be saved and restored to go on in parts
     * (the saved state would not hold the size query's input). */
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, NULL, &len));
    CK_ULONG stlen = 0;
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h, NULL, &stlen));
    CK(f->C_DigestInit(h, NULL)); /* ends it */
    CK(f->C_DigestInit(h, &sha)); /* the size query, then the digest: as ever */
    CK(f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, NULL, &len));
    CK(f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, out, &len));
    assert_memory_equal(out, abc256, 32);
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_Sign(h, in, sizeof(in), NULL, &len));
    RV(CKR_OPERATION_ACTIVE, f->C_SignUpdate(h, in, 10));

    /* Operations are per session: another session has none active. */
    CK_SESSION_HANDLE h2 = user_session(s, false);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignFinal(h2, out, &len));
    /* Keys generated in RO sessions must be session objects. */
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG klen = 16;
    CK_ATTRIBUTE tt[] = {{CKA_VALUE_LEN, &klen, sizeof(klen)}, {CKA_TOKEN, &yes, 1}};
    CK_OBJECT_HANDLE k2;
    RV(CKR_SESSION_READ_ONLY, f->C_GenerateKey(h2, &gen, tt, 2, &k2));
    klen = 15;
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKey(h, &gen, tt, 2, &k2));
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_GenerateKey(h, &gen, tt + 1, 1, &k2));
    RV(CKR_ARGUMENTS_BAD, f->C_GenerateKey(h, &gen, tt, 2, NULL));
    RV(CKR_MECHANISM_INVALID, f->C_GenerateKey(h, &sha, tt, 2, &k2));
    RV(CKR_MECHANISM_INVALID, f->C_WrapKey(h, &sha, k, k, NULL, &len)); /* a digest does not wrap */
    CK(f->C_CloseAllSessions(s));
}

static void test_gcm_and_rsa(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("crypto2");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_aes(h, "gcm", true), pub, priv;
    CK_BYTE iv[12] = {9}, aad[5] = "hdr!", in[33], out[128], back[128];
    CK_GCM_PARAMS gp = {iv, sizeof(iv), 96, aad, sizeof(aad), 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ULONG len, blen;

    memset(in, 7, sizeof(in));
    CK(f->C_EncryptInit(h, &gcm, k));
    len = sizeof(out);
    CK(f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, sizeof(in) + 16);
    CK(f->C_DecryptInit(h, &gcm, k));
    blen = sizeof(back);
    CK(f->C_Decrypt(h, out, len, back, &blen));
    assert_int_equal(blen, sizeof(in));
    assert_memory_equal(back, in, sizeof(in));
    out[len - 1] ^= 1; /* tag */
    CK(f->C_DecryptInit(h, &gcm, k));
    blen = sizeof(back);
    RV(CKR_ENCRYPTED_DATA_INVALID, f->C_Decrypt(h, out, len, back, &blen));
    CK_GCM_PARAMS bad = gp;
    bad.ulTagBits = 13;
    CK_MECHANISM gcmbad = {CKM_AES_GCM, &bad, sizeof(bad)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &gcmbad, k));
    CK_MECHANISM gcmnull = {CKM_AES_GCM, NULL, 0};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &gcmnull, k));

    /* RSA 2048 key pair, PKCS#1 sign and encrypt. */
    CK_MECHANISM rgen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE pt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_ENCRYPT, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_DECRYPT, &yes, 1}, {CKA_SIGN, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &rgen, pt, 3, kt, 2, &pub, &priv));
    CK_BYTE mod[512];
    CK_ATTRIBUTE mt[] = {{CKA_MODULUS, mod, sizeof(mod)}};
    CK(f->C_GetAttributeValue(h, pub, mt, 1));
    assert_int_equal(mt[0].ulValueLen, 256);
    CK(f->C_GetAttributeValue(h, priv, mt, 1)); /* public parts of private keys are readable */
    CK_ATTRIBUTE pe[] = {{CKA_PRIVATE_EXPONENT, mod, sizeof(mod)}};
    RV(CKR_ATTRIBUTE_SENSITIVE, f->C_GetAttributeValue(h, priv, pe, 1));
    CK_MECHANISM rs = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_BYTE sig[512];
    CK_ULONG slen = sizeof(sig);
    CK(f->C_SignInit(h, &rs, priv));
    CK(f->C_Sign(h, in, sizeof(in), sig, &slen));
    assert_int_equal(slen, 256);
    CK(f->C_VerifyInit(h, &rs, pub));
    CK(f->C_Verify(h, in, sizeof(in), sig, slen));
    CK_MECHANISM rp = {CKM_RSA_PKCS, NULL, 0};
    /* PKCS#1 v1.5 over empty data: signs, and verifies (found by fuzz_pkcs11). */
    slen = sizeof(sig);
    CK(f->C_SignInit(h, &rp, priv));
    CK(f->C_Sign(h, in, 0, sig, &slen));
    CK(f->C_VerifyInit(h, &rp, pub));
    CK(f->C_Verify(h, in, 0, sig, slen));
    CK(f->C_VerifyInit(h, &rp, pub));
    RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, 1, sig, slen));
    CK(f->C_EncryptInit(h, &rp, pub));
    len = sizeof(out);
    RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 256);
    CK_BYTE big[256];
    CK(f->C_Encrypt(h, in, sizeof(in), big, &len));
    CK(f->C_DecryptInit(h, &rp, priv));
    blen = sizeof(back);
    CK(f->C_Decrypt(h, big, len, back, &blen));
    assert_int_equal(blen, sizeof(in));
    assert_memory_equal(back, in, sizeof(in));
    CK(f->C_EncryptInit(h, &rp, pub));
    len = sizeof(big);
    RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, big, 250, big, &len));
    bits = 1024;
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKeyPair(h, &rgen, pt, 3, kt, 2, &pub, &priv));
    CK(f->C_CloseAllSessions(s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_crypto_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gcm_and_rsa, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
