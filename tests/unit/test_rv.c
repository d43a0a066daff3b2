/* Return values and operation state against the PKCS#11 3.0 base
 * specification (section 5: each function's list of return values, and the
 * rules of 5.2 and 5.8 to 5.13 on what ends an operation), through the built
 * module on a fresh keystore per test (test_module.h). One test per rule.
 *
 * What was checked, entry point by entry point (code read against the
 * function's list; "ok" = every code the path can give is in the list):
 *
 *   function                       finding                                   test
 *   C_Encrypt/Decrypt/Digest/Sign/ NULL mechanism: ended the active          test_init_null_mechanism_ends
 *   Verify/SignRecover/            operation? No: CKR_ARGUMENTS_BAD. Fixed:
 *   VerifyRecoverInit              ends it (3.0); with none active
 *                                  CKR_ARGUMENTS_BAD as before
 *   C_Message*Init                 NULL mechanism ends the operation: ok;    test_message_init_null_mechanism
 *                                  with none active CKR_OK (the classic
 *                                  *Init: CKR_ARGUMENTS_BAD). Fixed: CKR_
 *                                  ARGUMENTS_BAD in both families (the NULL
 *                                  form is "to terminate an active
 *                                  operation"; SoftHSMv2 and p11-kit's mock
 *                                  answer so, Kryoptic CKR_OK)
 *   *Init, C_DigestKey             a data object as key: CKR_KEY_TYPE_        test_init_key_not_a_key
 *                                  INCONSISTENT (not in C_DigestKey's
 *                                  list). Fixed: CKR_KEY_HANDLE_INVALID
 *                                  (the specification: "a valid handle for
 *                                  an object which is not a key")
 *   C_EncryptMessage, C_Decrypt-   a whole message or a Begin while a
 *   Message, C_SignMessage,        message is in parts: CKR_OPERATION_ACTIVE,
 *   C_VerifyMessage, C_*Message-   listed for every message-based function
 *   Begin                          (3.0, 5.10 to 5.15): ok (test_aead)
 *   C_*MessageNext                 before Begin: CKR_OPERATION_NOT_INITIAL-
 *                                  IZED: ok; any error but CKR_BUFFER_TOO_
 *                                  SMALL, and the last part's result, end
 *                                  the message; a size query does not: ok
 *   C_*Message, C_*MessageBegin/   a failure ends at most the message, never
 *   Next                           the operation, which only C_Message*Final
 *                                  (or a NULL mechanism) ends: ok
 *   C_Message*Final                with a message in parts: ends both, CKR_
 *                                  OK: ok
 *   *Init                          handle 0 or unknown: CKR_KEY_HANDLE_       test_init_key_handle_invalid
 *                                  INVALID: ok
 *   C_WrapKey                      a data object as wrapping key: CKR_KEY_    test_wrap_with_not_a_key
 *                                  TYPE_INCONSISTENT (not in the list).
 *                                  Fixed: CKR_WRAPPING_KEY_HANDLE_INVALID;
 *                                  as the key to wrap: CKR_KEY_UNEXTRACTABLE,
 *                                  fixed: CKR_KEY_HANDLE_INVALID
 *   C_UnwrapKey                    data object: CKR_KEY_TYPE_INCONSISTENT     test_unwrap_with_not_a_key
 *                                  (not in the list). Fixed: CKR_UNWRAPPING_
 *                                  KEY_HANDLE_INVALID
 *   C_DeriveKey                    data object as base: now CKR_KEY_HANDLE_   test_derive_from_not_a_key
 *                                  INVALID
 *   C_EncryptInit (CBC, CBC_PAD,   a bad IV or parameter block: CKR_          test_bad_iv
 *   CTR, GCM), C_WrapKey (CBC_PAD) MECHANISM_PARAM_INVALID: ok
 *   C_Logout                       nobody logged in: CKR_USER_NOT_LOGGED_IN:  test_logout_not_logged_in
 *                                  ok
 *   C_Encrypt, C_Sign, C_Decrypt,  every error but CKR_BUFFER_TOO_SMALL and   test_oneshot_errors_end
 *   C_Digest, C_Verify,            a size query ends the operation: ok
 *   C_SignRecover, C_VerifyRecover
 *   C_*Update, C_*Final,           an error ends it, CKR_BUFFER_TOO_SMALL     test_update_final_errors_end
 *   C_DigestKey                    and a size query do not: ok
 *   C_EncryptUpdate, C_SignUpdate, a part for a single-part mechanism or     test_update_single_part_mechanism
 *   C_VerifyUpdate/Final,          after a single-part call's result
 *   dual updates                   (or its result kept after CKR_BUFFER_TOO_
 *                                  SMALL): CKR_FUNCTION_NOT_SUPPORTED / CKR_
 *                                  OPERATION_ACTIVE. Fixed: CKR_OPERATION_
 *                                  NOT_INITIALIZED; since 2026-12-01 CKR_
 *                                  OPERATION_ACTIVE (listed since 3.1)
 *   C_Encrypt/Decrypt/Digest/Sign/ after an update: CKR_OPERATION_ACTIVE,     test_single_part_after_parts
 *   Verify                         listed since PKCS#11 3.1 (was CKR_
 *                                  OPERATION_NOT_INITIALIZED a while)
 *   *Init, C_GenerateKey*, C_Wrap/ OpenSSL's secure heap full: CKR_GENERAL_    test_secure_heap_full
 *   Unwrap/DeriveKey, C_CreateObj. ERROR / CKR_FUNCTION_FAILED. Fixed:
 *                                  CKR_DEVICE_MEMORY (the token's memory
 *                                  for secrets is full; every function that
 *                                  uses a token lists it)
 *   C_FindObjects*, C_Get/Set-     read: ok (CKR_ARGUMENTS_BAD, CKR_OBJECT_
 *   AttributeValue, C_Copy/        HANDLE_INVALID, CKR_OPERATION_ACTIVE/NOT_
 *   DestroyObject, C_GetObjectSize INITIALIZED, CKR_HOST_MEMORY as listed)
 *   C_Login/C_LoginUser            read: ok (CKR_OPERATION_NOT_INITIALIZED
 *                                  for a context-specific login without an
 *                                  operation is listed)
 *   C_Get/SetOperationState,       read: ok
 *   C_SessionCancel, C_Get-
 *   FunctionStatus, C_CancelFunc.
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

#include <openssl/crypto.h>

#include <p11-kit/pkcs11.h>

#include "pkcs11/p11_v3.h"
#include "tests/unit/test_module.h"

#define AES128 "000102030405060708090a0b0c0d0e0f"

/* ---- helpers ------------------------------------------------------------- */

/* A session data object. */
static CK_OBJECT_HANDLE data_object(void)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1}, {CKA_VALUE, "payload", 7}};
    CK_OBJECT_HANDLE o;
    CK(f->C_CreateObject(h, t, 3, &o));
    return o;
}

/* A token data object (a token object's handle takes another path). */
static CK_OBJECT_HANDLE token_data_object(void)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_VALUE, "payload", 7}};
    CK_OBJECT_HANDLE o;
    CK(f->C_CreateObject(h, t, 3, &o));
    return o;
}

static void ec_pair(CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_DERIVE, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &gen, pt, 3, kt, 3, pub, priv));
}

static void rsa_pair(CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &no, 1}};
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 1, pub, priv));
}

/* ---- *Init with a NULL mechanism (3.0) ------------------------------------ */

static void test_init_null_mechanism_ends(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT), mac = secret(CKK_GENERIC_SECRET, AES128, U_SIGN), pub,
                     priv;
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0}, hmac = {CKM_SHA256_HMAC, NULL, 0}, sha = {CKM_SHA256, NULL, 0},
                 pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_BYTE in[16] = {1}, out[512];
    CK_ULONG n = sizeof(out);
    rsa_pair(&pub, &priv);

    /* Each ends its active operation: the next call finds none, and an init may follow. */
    CK(f->C_EncryptInit(h, &ecb, aes));
    CK(f->C_EncryptInit(h, NULL, CK_INVALID_HANDLE));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, 16, out, &n));
    CK(f->C_EncryptInit(h, &ecb, aes));

    CK(f->C_DecryptInit(h, &ecb, aes));
    n = sizeof(out);
    CK(f->C_DecryptUpdate(h, in, 16, out, &n)); /* in parts, too */
    CK(f->C_DecryptInit(h, NULL, aes));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptFinal(h, out, &n));
    CK(f->C_DecryptInit(h, &ecb, aes));

    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestInit(h, NULL));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, in, 16));
    CK(f->C_DigestInit(h, &sha));

    CK(f->C_SignInit(h, &hmac, mac));
    CK(f->C_SignInit(h, NULL, mac));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignUpdate(h, in, 16));
    CK(f->C_SignInit(h, &hmac, mac));

    CK(f->C_VerifyInit(h, &hmac, mac));
    CK(f->C_VerifyInit(h, NULL, mac));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyUpdate(h, in, 16));
    CK(f->C_VerifyInit(h, &hmac, mac));

    /* The recovering inits end the recovering operations, not the others
     * that share their slot, and the plain inits the plain ones. */
    CK(f->C_SignInit(h, NULL, mac));
    CK(f->C_VerifyInit(h, NULL, mac));
    CK(f->C_SignRecoverInit(h, &pkcs, priv));
    RV(CKR_ARGUMENTS_BAD, f->C_SignInit(h, NULL, priv)); /* no plain signing active */
    CK(f->C_SignRecoverInit(h, NULL, priv));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, in, 16, out, &n));
    CK(f->C_VerifyRecoverInit(h, &pkcs, pub));
    RV(CKR_ARGUMENTS_BAD, f->C_VerifyInit(h, NULL, pub));
    CK(f->C_VerifyRecoverInit(h, NULL, pub));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyRecover(h, out, 256, in, &n));
    CK(f->C_SignInit(h, &hmac, mac));
    RV(CKR_ARGUMENTS_BAD, f->C_SignRecoverInit(h, NULL, priv));
    n = sizeof(out);
    CK(f->C_SignFinal(h, out, &n)); /* the plain signing went on */

    /* With none active there is nothing to end: a bad argument, as before 3.0. */
    CK(f->C_EncryptInit(h, NULL, aes)); /* the one started above */
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptInit(h, NULL, aes));
    CK(f->C_DigestInit(h, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_DigestInit(h, NULL));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_EncryptInit(h + 1000, NULL, aes));
}

/* The module's PKCS#11 3.0 function list (the message-based functions). */
static CK_FUNCTION_LIST_3_0 *f30(void)
{
    CK_RV (*gi)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) =
        (CK_RV(*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(dl, "C_GetInterface");
    CK_VERSION v30 = {3, 0};
    CK_INTERFACE *ip;
    assert_non_null(gi);
    CK(gi((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &ip, 0));
    return ip->pFunctionList;
}

/* C_Message*Init with a NULL mechanism: ends the active message-based
 * operation of its kind; with none active, CKR_ARGUMENTS_BAD, as the classic
 * *Init (it answered CKR_OK). */
static void test_message_init_null_mechanism(void **state)
{
    (void)state;
    CK_FUNCTION_LIST_3_0 *m = f30();
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT), mac = secret(CKK_GENERIC_SECRET, AES128, U_SIGN);
    CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0}, hmac = {CKM_SHA256_HMAC, NULL, 0}, ecb = {CKM_AES_ECB, NULL, 0};

    /* Active: each ends its operation, and an init may follow. */
    CK(m->C_MessageEncryptInit(h, &gcm, aes));
    CK(m->C_MessageEncryptInit(h, NULL, aes));
    RV(CKR_OPERATION_NOT_INITIALIZED, m->C_MessageEncryptFinal(h));
    CK(m->C_MessageDecryptInit(h, &gcm, aes));
    CK(m->C_MessageDecryptInit(h, NULL, aes));
    RV(CKR_OPERATION_NOT_INITIALIZED, m->C_MessageDecryptFinal(h));
    CK(m->C_MessageSignInit(h, &hmac, mac));
    CK(m->C_SignMessageBegin(h, NULL, 0)); /* a message in parts ends with it */
    CK(m->C_MessageSignInit(h, NULL, mac));
    RV(CKR_OPERATION_NOT_INITIALIZED, m->C_SignMessageNext(h, NULL, 0, (CK_BYTE_PTR) "ab", 2, NULL, NULL));
    RV(CKR_OPERATION_NOT_INITIALIZED, m->C_MessageSignFinal(h));
    CK(m->C_MessageVerifyInit(h, &hmac, mac));
    CK(m->C_MessageVerifyInit(h, NULL, mac));
    RV(CKR_OPERATION_NOT_INITIALIZED, m->C_MessageVerifyFinal(h));

    /* None active: nothing to end, a bad argument, as C_EncryptInit says. */
    RV(CKR_ARGUMENTS_BAD, m->C_MessageEncryptInit(h, NULL, aes));
    RV(CKR_ARGUMENTS_BAD, m->C_MessageDecryptInit(h, NULL, aes));
    RV(CKR_ARGUMENTS_BAD, m->C_MessageSignInit(h, NULL, mac));
    RV(CKR_ARGUMENTS_BAD, m->C_MessageVerifyInit(h, NULL, CK_INVALID_HANDLE));
    RV(CKR_ARGUMENTS_BAD, m->C_EncryptInit(h, NULL, aes));
    /* Another kind's operation is not this kind's: the classic encryption
     * and the message-based decryption stay. */
    CK(m->C_EncryptInit(h, &ecb, aes));
    CK(m->C_MessageDecryptInit(h, &gcm, aes));
    RV(CKR_ARGUMENTS_BAD, m->C_MessageEncryptInit(h, NULL, aes));
    RV(CKR_OPERATION_ACTIVE, m->C_EncryptInit(h, &ecb, aes));
    CK(m->C_MessageDecryptFinal(h));
    RV(CKR_SESSION_HANDLE_INVALID, m->C_MessageEncryptInit(h + 1000, NULL, aes));
}

/* ---- key handles ---------------------------------------------------------- */

static void test_init_key_handle_invalid(void **state)
{
    (void)state;
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0}, hmac = {CKM_SHA256_HMAC, NULL, 0};
    RV(CKR_KEY_HANDLE_INVALID, f->C_EncryptInit(h, &ecb, CK_INVALID_HANDLE));
    RV(CKR_KEY_HANDLE_INVALID, f->C_DecryptInit(h, &ecb, 0x7fff1234));
    RV(CKR_KEY_HANDLE_INVALID, f->C_SignInit(h, &hmac, 0x80001234)); /* a session object handle */
    RV(CKR_KEY_HANDLE_INVALID, f->C_VerifyInit(h, &hmac, 0x1234));
}

static void test_init_key_not_a_key(void **state)
{
    (void)state;
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0}, hmac = {CKM_SHA256_HMAC, NULL, 0}, sha = {CKM_SHA256, NULL, 0},
                 pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_OBJECT_HANDLE objs[2] = {data_object(), token_data_object()};
    for (int i = 0; i < 2; i++) {
        CK_OBJECT_HANDLE d = objs[i];
        RV(CKR_KEY_HANDLE_INVALID, f->C_EncryptInit(h, &ecb, d));
        RV(CKR_KEY_HANDLE_INVALID, f->C_DecryptInit(h, &ecb, d));
        RV(CKR_KEY_HANDLE_INVALID, f->C_SignInit(h, &hmac, d));
        RV(CKR_KEY_HANDLE_INVALID, f->C_VerifyInit(h, &hmac, d));
        RV(CKR_KEY_HANDLE_INVALID, f->C_SignRecoverInit(h, &pkcs, d));
        RV(CKR_KEY_HANDLE_INVALID, f->C_VerifyRecoverInit(h, &pkcs, d));
        CK(f->C_DigestInit(h, &sha));
        RV(CKR_KEY_HANDLE_INVALID, f->C_DigestKey(h, d)); /* its list has no CKR_KEY_TYPE_INCONSISTENT */
    }
}

static void test_wrap_with_not_a_key(void **state)
{
    (void)state;
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_HANDLE kek = secret(CKK_AES, AES128, U_WRAP), target = secret(CKK_AES, AES128, U_CRYPT);
    CK_OBJECT_HANDLE objs[2] = {data_object(), token_data_object()};
    CK_BYTE out[64];
    CK_ULONG n = sizeof(out);
    for (int i = 0; i < 2; i++) {
        n = sizeof(out);
        RV(CKR_WRAPPING_KEY_HANDLE_INVALID, f->C_WrapKey(h, &kw, objs[i], target, out, &n));
        n = sizeof(out);
        RV(CKR_KEY_HANDLE_INVALID, f->C_WrapKey(h, &kw, kek, objs[i], out, &n));
    }
    n = sizeof(out);
    CK(f->C_WrapKey(h, &kw, kek, target, out, &n));
}

static void test_unwrap_with_not_a_key(void **state)
{
    (void)state;
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_HANDLE kek = secret(CKK_AES, AES128, U_WRAP), target = secret(CKK_AES, AES128, U_CRYPT), o;
    CK_OBJECT_HANDLE objs[2] = {data_object(), token_data_object()};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1}};
    CK_BYTE wrapped[64];
    CK_ULONG n = sizeof(wrapped);
    CK(f->C_WrapKey(h, &kw, kek, target, wrapped, &n));
    for (int i = 0; i < 2; i++)
        RV(CKR_UNWRAPPING_KEY_HANDLE_INVALID, f->C_UnwrapKey(h, &kw, objs[i], wrapped, n, t, 3, &o));
    CK(f->C_UnwrapKey(h, &kw, kek, wrapped, n, t, 3, &o));
}

static void test_derive_from_not_a_key(void **state)
{
    (void)state;
    CK_MECHANISM sha = {CKM_SHA256_KEY_DERIVATION, NULL, 0};
    CK_OBJECT_HANDLE objs[2] = {data_object(), token_data_object()}, o;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1}};
    for (int i = 0; i < 2; i++)
        RV(CKR_KEY_HANDLE_INVALID, f->C_DeriveKey(h, &sha, objs[i], t, 3, &o));
}

/* ---- mechanism parameters --------------------------------------------------- */

static void test_bad_iv(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT | U_WRAP), target = secret(CKK_AES, AES128, U_CRYPT);
    CK_BYTE iv[17] = {0}, out[64];
    CK_ULONG n = sizeof(out);
    CK_MECHANISM bad[] = {
        {CKM_AES_CBC, iv, 8},    {CKM_AES_CBC, iv, 17},     {CKM_AES_CBC, NULL, 0},
        {CKM_AES_CBC, NULL, 16}, {CKM_AES_CBC_PAD, iv, 15}, {CKM_AES_ECB, iv, 16}, /* ECB takes no IV */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &bad[i], aes));
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &bad[i], aes));
    }
    CK_AES_CTR_PARAMS ctr = {0, {0}};
    CK_MECHANISM mctr = {CKM_AES_CTR, &ctr, sizeof(ctr)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &mctr, aes)); /* no counter bits */
    CK_GCM_PARAMS gcm = {iv, 0, 0, NULL, 0, 128};
    CK_MECHANISM mgcm = {CKM_AES_GCM, &gcm, sizeof(gcm)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &mgcm, aes)); /* an IV of no bytes */
    /* Longer than OpenSSL's 128 bytes: a parameter the token does not take,
     * not CKR_FUNCTION_FAILED (a hostile review, 2026-12-02). */
    CK_BYTE longiv[256] = {0};
    CK_GCM_PARAMS gcm128 = {longiv, 128, 1024, NULL, 0, 128}, gcm129 = {longiv, 129, 1032, NULL, 0, 128};
    CK_MECHANISM m128 = {CKM_AES_GCM, &gcm128, sizeof(gcm128)}, m129 = {CKM_AES_GCM, &gcm129, sizeof(gcm129)};
    CK(f->C_EncryptInit(h, &m128, aes));
    CK(f->C_EncryptFinal(h, NULL, &n)); /* a size query */
    n = sizeof(out);
    CK(f->C_EncryptFinal(h, out, &n));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &m129, aes));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &m129, aes));
    n = sizeof(out);
    CK_MECHANISM wrap = {CKM_AES_CBC_PAD, iv, 8};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_WrapKey(h, &wrap, aes, target, out, &n));
    /* A refused init starts nothing. */
    CK_MECHANISM good = {CKM_AES_CBC, iv, 16};
    CK(f->C_EncryptInit(h, &good, aes));
}

/* Lengths near CK_ULONG's limit: a size query refuses them rather than
 * giving a bound that wrapped (CBC_PAD's next block, GCM's tag). */
static void test_size_query_huge_input(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT);
    CK_BYTE iv[16] = {0}, b = 0;
    CK_GCM_PARAMS gcm = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM mechs[] = {{CKM_AES_CBC_PAD, iv, 16}, {CKM_AES_GCM, &gcm, sizeof(gcm)}};
    const CK_ULONG lens[] = {~(CK_ULONG)0, ~(CK_ULONG)0 - 15, (CK_ULONG)INT32_MAX + 1};
    for (size_t i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
        for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
            CK_ULONG n = 0;
            CK(f->C_EncryptInit(h, &mechs[i], aes));
            RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, &b, lens[j], NULL, &n));
            RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptFinal(h, NULL, &n)); /* the error ended it */
        }
}

/* Raw CKM_ECDSA takes a digest of up to 1024 bits and truncates it to the
 * order's length (PKCS#11 3.0, ECDSA without hashing): what is signed is
 * the leftmost bits. */
static void test_ecdsa_raw_long_input(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE pub, priv;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE in[129], sig[64];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (CK_BYTE)(i * 7 + 1);
    ec_pair(&pub, &priv);
    const CK_ULONG lens[] = {65, 100, 128};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        CK_ULONG n = sizeof(sig);
        CK(f->C_SignInit(h, &m, priv));
        CK(f->C_Sign(h, in, lens[i], sig, &n));
        assert_int_equal(n, 64);
        CK(f->C_VerifyInit(h, &m, pub));
        CK(f->C_Verify(h, in, 32, sig, n)); /* the same first 256 bits */
        CK(f->C_VerifyInit(h, &m, pub));
        CK(f->C_Verify(h, in, lens[i], sig, n));
        in[0] ^= 1;
        CK(f->C_VerifyInit(h, &m, pub));
        RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, lens[i], sig, n));
        in[0] ^= 1;
    }
    CK_ULONG n = sizeof(sig);
    CK(f->C_SignInit(h, &m, priv));
    RV(CKR_DATA_LEN_RANGE, f->C_Sign(h, in, 129, sig, &n)); /* over 1024 bits */
}

/* ECDH with CKA_VALUE_LEN 0 in the template: an invalid value, not "the
 * shared secret's length" (which leaving it out means). */
static void test_ecdh_value_len_zero(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE pub, priv, k;
    CK_BYTE point[100];
    CK_ATTRIBUTE pa[] = {{CKA_EC_POINT, point, sizeof(point)}};
    ec_pair(&pub, &priv);
    CK(f->C_GetAttributeValue(h, pub, pa, 1));
    CK_ECDH1_DERIVE_PARAMS dp = {CKD_NULL, 0, NULL, pa[0].ulValueLen, point};
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &dp, sizeof(dp)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG zero = 0, len = 16;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1},
                        {CKA_VALUE_LEN, &zero, sizeof(zero)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_DeriveKey(h, &m, priv, t, 4, &k));
    t[3].pValue = &len;
    CK(f->C_DeriveKey(h, &m, priv, t, 4, &k));
    CK(f->C_DeriveKey(h, &m, priv, t, 3, &k)); /* no length: the shared secret's */
}

/* CKA_MODULUS_BITS is what the key gets, or the generation is refused: an
 * odd size made a modulus a bit shorter than asked (2049 -> 2048). */
static void test_rsa_modulus_bits_exact(void **state)
{
    (void)state;
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits, got = 0;
    CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &no, 1}};
    CK_ATTRIBUTE q[] = {{CKA_MODULUS_BITS, &got, sizeof(got)}};
    CK_OBJECT_HANDLE pub = 0, priv = 0;
    bits = 2049;
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 1, &pub, &priv));
    bits = 2050;
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 1, &pub, &priv));
    CK(f->C_GetAttributeValue(h, pub, q, 1));
    assert_int_equal(got, 2050);
}

/* ---- C_Logout --------------------------------------------------------------- */

static void test_logout_not_logged_in(void **state)
{
    (void)state;
    CK(f->C_Logout(h));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Logout(h));
    CK_SESSION_HANDLE h2;
    CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Logout(h2));
}

/* ---- what ends an operation --------------------------------------------------- */

static void test_oneshot_errors_end(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT), mac = secret(CKK_GENERIC_SECRET, AES128, U_SIGN), pub,
                     priv;
    CK_BYTE iv[16] = {0}, in[32] = {1}, out[512];
    CK_MECHANISM cbc = {CKM_AES_CBC, iv, 16}, hmac = {CKM_SHA256_HMAC, NULL, 0}, sha = {CKM_SHA256, NULL, 0},
                 pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_ULONG n;

    /* A size query and CKR_BUFFER_TOO_SMALL leave it; the call that gives the output ends it. */
    CK(f->C_EncryptInit(h, &cbc, aes));
    CK(f->C_Encrypt(h, in, 32, NULL, &n));
    n = 16;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, in, 32, out, &n));
    n = sizeof(out);
    CK(f->C_Encrypt(h, in, 32, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, 32, out, &n));

    /* Every other error ends it. */
    CK(f->C_EncryptInit(h, &cbc, aes));
    n = sizeof(out);
    RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, in, 15, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, 16, out, &n));
    CK(f->C_EncryptInit(h, &cbc, aes));
    RV(CKR_ARGUMENTS_BAD, f->C_Encrypt(h, in, 16, out, NULL));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, 16, out, &n));

    CK(f->C_DecryptInit(h, &cbc, aes));
    n = sizeof(out);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, in, 17, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Decrypt(h, in, 16, out, &n));

    CK(f->C_DigestInit(h, &sha));
    RV(CKR_ARGUMENTS_BAD, f->C_Digest(h, NULL, 5, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Digest(h, in, 5, out, &n));

    CK(f->C_SignInit(h, &hmac, mac));
    RV(CKR_ARGUMENTS_BAD, f->C_Sign(h, in, 5, out, NULL));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Sign(h, in, 5, out, &n));

    CK(f->C_SignInit(h, &hmac, mac));
    n = sizeof(out);
    CK(f->C_Sign(h, in, 5, out, &n));
    out[0] ^= 1;
    CK(f->C_VerifyInit(h, &hmac, mac));
    RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, 5, out, n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Verify(h, in, 5, out, n));
    CK(f->C_VerifyInit(h, &hmac, mac));
    RV(CKR_SIGNATURE_LEN_RANGE, f->C_Verify(h, in, 5, out, 3));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Verify(h, in, 5, out, n));

    rsa_pair(&pub, &priv);
    CK_BYTE big[300] = {0};
    CK(f->C_SignRecoverInit(h, &pkcs, priv));
    n = sizeof(out);
    RV(CKR_DATA_LEN_RANGE, f->C_SignRecover(h, big, sizeof(big), out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignRecover(h, in, 16, out, &n));
    CK(f->C_VerifyRecoverInit(h, &pkcs, pub));
    n = sizeof(out);
    RV(CKR_SIGNATURE_LEN_RANGE, f->C_VerifyRecover(h, big, 10, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyRecover(h, big, 256, out, &n));
}

static void test_update_final_errors_end(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT), mac = secret(CKK_GENERIC_SECRET, AES128, U_SIGN), pub,
                     priv;
    CK_BYTE iv[16] = {0}, in[32] = {1}, out[512];
    CK_MECHANISM cbc = {CKM_AES_CBC, iv, 16}, pad = {CKM_AES_CBC_PAD, iv, 16}, hmac = {CKM_SHA256_HMAC, NULL, 0},
                 sha = {CKM_SHA256, NULL, 0};
    CK_ULONG n;

    /* C_EncryptUpdate: a size query and a short buffer leave it, an error ends it. */
    CK(f->C_EncryptInit(h, &cbc, aes));
    CK(f->C_EncryptUpdate(h, in, 32, NULL, &n));
    assert_int_equal(n, 32);
    n = 16;
    RV(CKR_BUFFER_TOO_SMALL, f->C_EncryptUpdate(h, in, 32, out, &n));
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, in, 32, out, &n));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptUpdate(h, in, 16, out, NULL));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptFinal(h, out, &n));

    /* C_EncryptFinal: the same. */
    CK(f->C_EncryptInit(h, &pad, aes));
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, in, 5, out, &n));
    CK(f->C_EncryptFinal(h, NULL, &n));
    assert_int_equal(n, 16);
    n = 15;
    RV(CKR_BUFFER_TOO_SMALL, f->C_EncryptFinal(h, out, &n));
    n = sizeof(out);
    CK(f->C_EncryptFinal(h, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptFinal(h, out, &n));
    CK(f->C_EncryptInit(h, &cbc, aes));
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, in, 5, out, &n));
    RV(CKR_DATA_LEN_RANGE, f->C_EncryptFinal(h, out, &n)); /* 5 bytes: not a block */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptFinal(h, out, &n));

    /* C_DecryptFinal: bad padding ends it. */
    CK(f->C_DecryptInit(h, &pad, aes));
    n = sizeof(out);
    CK(f->C_DecryptUpdate(h, in, 15, out, &n));
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_DecryptFinal(h, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptFinal(h, out, &n));

    /* C_DigestUpdate, C_DigestKey, C_DigestFinal. */
    CK(f->C_DigestInit(h, &sha));
    RV(CKR_ARGUMENTS_BAD, f->C_DigestUpdate(h, NULL, 3));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, in, 3));
    CK(f->C_DigestInit(h, &sha));
    RV(CKR_KEY_HANDLE_INVALID, f->C_DigestKey(h, 0x7fff1234));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, in, 3));
    ec_pair(&pub, &priv);
    CK(f->C_DigestInit(h, &sha));
    RV(CKR_KEY_INDIGESTIBLE, f->C_DigestKey(h, pub));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, in, 3));
    CK(f->C_DigestInit(h, &sha));
    n = 31;
    RV(CKR_BUFFER_TOO_SMALL, f->C_DigestFinal(h, out, &n));
    RV(CKR_ARGUMENTS_BAD, f->C_DigestFinal(h, out, NULL));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestFinal(h, out, &n));

    /* C_SignFinal, C_VerifyFinal. */
    CK(f->C_SignInit(h, &hmac, mac));
    CK(f->C_SignUpdate(h, in, 3));
    n = 1;
    RV(CKR_BUFFER_TOO_SMALL, f->C_SignFinal(h, out, &n));
    n = sizeof(out);
    CK(f->C_SignFinal(h, out, &n));
    CK(f->C_VerifyInit(h, &hmac, mac));
    CK(f->C_VerifyUpdate(h, in, 4));
    RV(CKR_SIGNATURE_INVALID, f->C_VerifyFinal(h, out, n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyFinal(h, out, n));
}

/* A part for an operation that takes none: a single-part mechanism, or an
 * operation whose single-part result waits for a bigger buffer: an
 * operation that takes no parts is active, CKR_OPERATION_ACTIVE (the *Update
 * functions list it since PKCS#11 3.1; CKR_OPERATION_NOT_INITIALIZED before
 * 2026-12-01), and, as every error of an update, it ends the operation. */
static void test_update_single_part_mechanism(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT), pub, priv;
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0}, pkcs = {CKM_RSA_PKCS, NULL, 0}, ecb = {CKM_AES_ECB, NULL, 0};
    CK_BYTE in[32] = {1}, out[512];
    CK_ULONG n;

    ec_pair(&pub, &priv);
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_OPERATION_ACTIVE, f->C_SignUpdate(h, in, 32));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Sign(h, in, 32, out, &n)); /* ended */
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    RV(CKR_OPERATION_ACTIVE, f->C_VerifyUpdate(h, in, 32));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Verify(h, in, 32, out, 64));

    CK_OBJECT_HANDLE rpub, rpriv;
    rsa_pair(&rpub, &rpriv);
    CK(f->C_EncryptInit(h, &pkcs, rpub));
    n = sizeof(out);
    RV(CKR_OPERATION_ACTIVE, f->C_EncryptUpdate(h, in, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, 16, out, &n));

    /* After a single-part call that made its result and kept it for a
     * bigger buffer (CKR_BUFFER_TOO_SMALL). */
    CK(f->C_EncryptInit(h, &ecb, aes));
    n = 16;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, in, 32, out, &n));
    n = sizeof(out);
    RV(CKR_OPERATION_ACTIVE, f->C_EncryptUpdate(h, in, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, 32, out, &n));
}

/* A single-part call after a part: a multi-part operation is active
 * (CKR_OPERATION_ACTIVE, in the lists of C_Encrypt, C_Decrypt, C_Digest,
 * C_Sign and C_Verify since PKCS#11 3.1, and what SoftHSMv2 and
 * google/pkcs11test expect; CKR_OPERATION_NOT_INITIALIZED before
 * 2026-12-01), and the error ends it. */
static void test_single_part_after_parts(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE aes = secret(CKK_AES, AES128, U_CRYPT), mac = secret(CKK_GENERIC_SECRET, AES128, U_SIGN);
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0}, hmac = {CKM_SHA256_HMAC, NULL, 0}, sha = {CKM_SHA256, NULL, 0};
    CK_BYTE in[32] = {1}, out[64];
    CK_ULONG n = sizeof(out);

    CK(f->C_EncryptInit(h, &ecb, aes));
    CK(f->C_EncryptUpdate(h, in, 16, out, &n));
    n = sizeof(out);
    RV(CKR_OPERATION_ACTIVE, f->C_Encrypt(h, in, 16, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptFinal(h, out, &n));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestUpdate(h, in, 3));
    RV(CKR_OPERATION_ACTIVE, f->C_Digest(h, in, 3, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestFinal(h, out, &n));
    CK(f->C_SignInit(h, &hmac, mac));
    CK(f->C_SignUpdate(h, in, 3));
    RV(CKR_OPERATION_ACTIVE, f->C_Sign(h, in, 3, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignFinal(h, out, &n));
    CK(f->C_VerifyInit(h, &hmac, mac));
    CK(f->C_VerifyUpdate(h, in, 3));
    RV(CKR_OPERATION_ACTIVE, f->C_Verify(h, in, 3, out, 32));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyFinal(h, out, 32));
}

/* ---- memory ------------------------------------------------------------------ */

/* OpenSSL's secure heap (secure_heap = 64 KiB) full of EC private keys held
 * by active operations, which nothing can evict: the init that finds no
 * room says the token's memory is exhausted (CKR_DEVICE_MEMORY, in every
 * *Init's list), not a generic failure; once operations end, it works again.
 * Last in the list: the secure heap stays for the rest of the process. */
#define HEAP_KEYS 3000
static void test_secure_heap_full(void **state)
{
    (void)state;
    static CK_OBJECT_HANDLE pub[HEAP_KEYS], priv[HEAP_KEYS];
    static CK_SESSION_HANDLE ss[HEAP_KEYS];
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    CK_RV rv = CKR_OK;
    int i, made = 0;

    if (!CRYPTO_secure_malloc_initialized()) {
        printf("SKIP: no secure heap (an AddressSanitizer build of the module sets up none)\n");
        return;
    }
    for (i = 0; i < HEAP_KEYS; i++)
        ec_pair(&pub[i], &priv[i]);
    CK(f->C_SignInit(h, &ecdsa, priv[0])); /* signs below, once the heap is full */
    for (i = 1; i < HEAP_KEYS && rv == CKR_OK; i++) {
        CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ss[i]));
        made++;
        rv = f->C_SignInit(ss[i], &ecdsa, priv[i]);
    }
    printf("secure heap: %d EC signing operations held, then 0x%lx (heap use %zu bytes)\n", made, (unsigned long)rv,
           CRYPTO_secure_used());
    assert_true(rv != CKR_OK); /* the heap did fill */
    RV(CKR_DEVICE_MEMORY, rv);
    /* The signature's secret nonce finds no room either (and the error ends
     * the operation, as any of C_Sign's but CKR_BUFFER_TOO_SMALL). */
    CK_BYTE msg[32] = {1}, sig[64];
    CK_ULONG n = sizeof(sig);
    rv = f->C_Sign(h, msg, 32, sig, &n);
    assert_true(rv == CKR_DEVICE_MEMORY || rv == CKR_OK); /* OK: it needed no more than it had */
    for (i = 1; i < made + 1; i++)
        CK(f->C_CloseSession(ss[i]));
    n = sizeof(sig);
    CK(f->C_SignInit(h, &ecdsa, priv[1]));
    CK(f->C_Sign(h, msg, 32, sig, &n));
}

static int start_secure_heap(void **state)
{
    (void)state;
    return start("secure_heap = 64\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_null_mechanism_ends, start_default, stop),
        cmocka_unit_test_setup_teardown(test_message_init_null_mechanism, start_default, stop),
        cmocka_unit_test_setup_teardown(test_init_key_handle_invalid, start_default, stop),
        cmocka_unit_test_setup_teardown(test_init_key_not_a_key, start_default, stop),
        cmocka_unit_test_setup_teardown(test_wrap_with_not_a_key, start_default, stop),
        cmocka_unit_test_setup_teardown(test_unwrap_with_not_a_key, start_default, stop),
        cmocka_unit_test_setup_teardown(test_derive_from_not_a_key, start_default, stop),
        cmocka_unit_test_setup_teardown(test_bad_iv, start_default, stop),
        cmocka_unit_test_setup_teardown(test_size_query_huge_input, start_default, stop),
        cmocka_unit_test_setup_teardown(test_ecdsa_raw_long_input, start_default, stop),
        cmocka_unit_test_setup_teardown(test_ecdh_value_len_zero, start_default, stop),
        cmocka_unit_test_setup_teardown(test_rsa_modulus_bits_exact, start_default, stop),
        cmocka_unit_test_setup_teardown(test_logout_not_logged_in, start_default, stop),
        cmocka_unit_test_setup_teardown(test_oneshot_errors_end, start_default, stop),
        cmocka_unit_test_setup_teardown(test_update_final_errors_end, start_default, stop),
        cmocka_unit_test_setup_teardown(test_update_single_part_mechanism, start_default, stop),
        cmocka_unit_test_setup_teardown(test_single_part_after_parts, start_default, stop),
        cmocka_unit_test_setup_teardown(test_secure_heap_full, start_secure_heap, stop),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
