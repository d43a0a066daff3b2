/* rsa_min_bits = 1024 (accepted by the configuration, reported by
 * C_GetMechanismInfo): CKM_RSA_PKCS_KEY_PAIR_GEN then makes a 1024-bit key
 * pair, but the module refuses every use of a key under 2048 bits except
 * verification (tok_op.c check_key), so the key that was just generated
 * cannot sign, decrypt or unwrap. Expected: either the configuration's lower
 * bound matches what the module will use (2048), or such keys are usable
 * (that is what the administrator asked for). */
#include "common.h"

int main(void)
{
    setup_extra("rsa_min_bits = 1024\n");
    CK_MECHANISM_INFO mi;
    CHECK(f->C_GetMechanismInfo(slot, CKM_RSA_PKCS_KEY_PAIR_GEN, &mi));
    printf("C_GetMechanismInfo(RSA_PKCS_KEY_PAIR_GEN) min %lu max %lu\n", mi.ulMinKeySize, mi.ulMaxKeySize);
    CK_ULONG bits = 1024;
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pub[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1},
                          {CKA_ENCRYPT, &yes, 1}};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK_OBJECT_HANDLE pk, sk;
    CK_RV rv = f->C_GenerateKeyPair(h, &gen, pub, 4, priv, 3, &pk, &sk);
    printf("C_GenerateKeyPair 1024 bits: 0x%lx\n", rv);
    int bad = 0;
    if (rv == CKR_OK) {
        CK_MECHANISM sm = {CKM_SHA256_RSA_PKCS, NULL, 0}, em = {CKM_RSA_PKCS, NULL, 0};
        rv = f->C_SignInit(h, &sm, sk);
        printf("C_SignInit with it: 0x%lx%s\n", rv, rv == CKR_KEY_SIZE_RANGE ? " (CKR_KEY_SIZE_RANGE)" : "");
        bad |= rv != CKR_OK;
        rv = f->C_EncryptInit(h, &em, pk);
        printf("C_EncryptInit with it: 0x%lx\n", rv);
        bad |= rv != CKR_OK;
    }
    teardown();
    return bad;
}
