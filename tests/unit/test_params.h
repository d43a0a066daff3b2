/* Shared by the unit tests that drive the module: PKCS#11 3.0 mechanism
 * parameters that p11-kit 0.24's header lacks (HKDF, PBKDF2, the AEAD
 * ones, written here from the specification, not taken from the module's
 * headers), and the inputs of RFC 5869's HKDF test case 1 and RFC 6070's
 * PBKDF2 test 2. */
#ifndef P11MK_TEST_PARAMS_H
#define P11MK_TEST_PARAMS_H

#include <stdint.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#define TEST_CKM_HKDF_DERIVE 0x402AUL
#define TEST_CKF_HKDF_SALT_DATA 0x2UL

typedef struct { /* CK_HKDF_PARAMS */
    CK_BBOOL bExtract, bExpand;
    CK_MECHANISM_TYPE prf;
    CK_ULONG saltType;
    CK_BYTE_PTR pSalt;
    CK_ULONG saltLen;
    CK_OBJECT_HANDLE hSaltKey;
    CK_BYTE_PTR pInfo;
    CK_ULONG infoLen;
} test_hkdf_params;

typedef struct { /* CK_PKCS5_PBKD2_PARAMS2 (v2.40's has a pointer for passwordLen) */
    CK_ULONG saltSource;
    CK_VOID_PTR pSalt;
    CK_ULONG saltLen, iterations, prf;
    CK_VOID_PTR pPrfData;
    CK_ULONG prfDataLen;
    CK_UTF8CHAR_PTR pPassword;
    CK_ULONG passwordLen;
} test_pbkd2_params;

#define TEST_CKK_CHACHA20 0x33UL
#define TEST_CKM_CHACHA20_KEY_GEN 0x1225UL
#define TEST_CKM_CHACHA20_POLY1305 0x4021UL
#define TEST_CKF_MESSAGE_ENCRYPT 0x02UL
#define TEST_CKF_MESSAGE_DECRYPT 0x04UL
#define TEST_CKF_MESSAGE_SIGN 0x08UL
#define TEST_CKF_MESSAGE_VERIFY 0x10UL
#define TEST_CKF_MULTI_MESSAGE 0x20UL
#define TEST_CKF_END_OF_MESSAGE 0x01UL
#define TEST_CKR_AEAD_DECRYPT_FAILED 0x42UL
/* what a MAC mechanism adds to CKF_SIGN | CKF_VERIFY: messages, in parts too */
#define TEST_MESSAGE_MAC (TEST_CKF_MESSAGE_SIGN | TEST_CKF_MESSAGE_VERIFY | TEST_CKF_MULTI_MESSAGE)
#define TEST_CKG_NO_GENERATE 0UL
#define TEST_CKG_GENERATE 1UL
#define TEST_CKG_GENERATE_COUNTER 2UL
#define TEST_CKG_GENERATE_RANDOM 3UL
#define TEST_CKG_GENERATE_COUNTER_XOR 4UL

typedef struct { /* CK_CCM_PARAMS */
    CK_ULONG ulDataLen;
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_BYTE_PTR pAAD;
    CK_ULONG ulAADLen;
    CK_ULONG ulMACLen;
} test_ccm_params;

typedef struct { /* CK_SALSA20_CHACHA20_POLY1305_PARAMS */
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_BYTE_PTR pAAD;
    CK_ULONG ulAADLen;
} test_chacha_params;

typedef struct { /* CK_GCM_MESSAGE_PARAMS */
    CK_BYTE_PTR pIv;
    CK_ULONG ulIvLen;
    CK_ULONG ulIvFixedBits;
    CK_ULONG ivGenerator;
    CK_BYTE_PTR pTag;
    CK_ULONG ulTagBits;
} test_gcm_msg_params;

typedef struct { /* CK_CCM_MESSAGE_PARAMS */
    CK_ULONG ulDataLen;
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_ULONG ulNonceFixedBits;
    CK_ULONG nonceGenerator;
    CK_BYTE_PTR pMAC;
    CK_ULONG ulMACLen;
} test_ccm_msg_params;

typedef struct { /* CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS */
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_BYTE_PTR pTag;
} test_chacha_msg_params;

/* RFC 5869 A.1: IKM, salt and info (HKDF with SHA-256, extract and expand). */
static inline test_hkdf_params test_rfc5869_case1(CK_BYTE ikm[22], CK_BYTE salt[13], CK_BYTE info[10])
{
    memset(ikm, 0x0b, 22);
    for (int i = 0; i < 13; i++)
        salt[i] = (CK_BYTE)i;
    for (int i = 0; i < 10; i++)
        info[i] = (CK_BYTE)(0xf0 + i);
    return (test_hkdf_params){CK_TRUE, CK_TRUE, CKM_SHA256, TEST_CKF_HKDF_SALT_DATA, salt, 13, 0, info, 10};
}

/* RFC 6070 test 2: "password", "salt", 2 iterations of HMAC-SHA1. */
static inline test_pbkd2_params test_rfc6070_case2(void)
{
    return (test_pbkd2_params){1 /* CKZ_SALT_SPECIFIED */,
                               (CK_VOID_PTR) "salt",
                               4,
                               2,
                               1 /* HMAC-SHA1 */,
                               NULL,
                               0,
                               (CK_UTF8CHAR_PTR) "password",
                               8};
}

#endif
