/* secure_heap = 64 (KiB): many EC private keys, token and session ones, each
 * used in turn, twice. Their private numbers live in OpenSSL's secure heap,
 * which the module set up at 64 KiB; more keys are used than fit, so the key
 * cache and the session objects must let go of parsed keys when the heap runs
 * half full. Expected: every signature is made and verifies (a full secure
 * heap makes OpenSSL's allocations fail, which would show as a failed
 * C_SignInit or C_Sign). */
#include "common.h"

#include <openssl/crypto.h>

#define NKEYS 1400

int main(void)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static CK_OBJECT_HANDLE pub[NKEYS], priv[NKEYS];
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, sm = {CKM_ECDSA_SHA256, NULL, 0};
    size_t peak = 0;
    int bad = 0;

    setup_extra("secure_heap = 64\n");
#ifdef __SANITIZE_ADDRESS__
    printf("SKIP: an AddressSanitizer build of the module sets up no secure heap (ks_secmem.c)\n");
    teardown();
    return 0;
#endif
    if (!CRYPTO_secure_malloc_initialized()) {
        fprintf(stderr, "the module did not set up OpenSSL's secure heap\n");
        return 1;
    }
    for (int i = 0; i < NKEYS; i++) {
        CK_BBOOL tok = i % 4 ? CK_FALSE : CK_TRUE; /* token keys (key cache) and session keys */
        CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &tok, 1}, {CKA_VERIFY, &yes, 1}};
        CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &tok, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
        CHECK(f->C_GenerateKeyPair(h, &gen, pt, 3, kt, 3, &pub[i], &priv[i]));
    }
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < NKEYS; i++) {
            CK_BYTE msg[32] = "the same message for every key", sig[64];
            CK_ULONG len = sizeof(sig);
            CK_RV rv = f->C_SignInit(h, &sm, priv[i]);
            if (rv == CKR_OK)
                rv = f->C_Sign(h, msg, sizeof(msg), sig, &len);
            if (rv == CKR_OK && (rv = f->C_VerifyInit(h, &sm, pub[i])) == CKR_OK)
                rv = f->C_Verify(h, msg, sizeof(msg), sig, len);
            if (rv != CKR_OK) {
                if (!bad)
                    fprintf(stderr, "round %d key %d: 0x%lx\n", round, i, (unsigned long)rv);
                bad = 1;
            }
            if (CRYPTO_secure_used() > peak)
                peak = CRYPTO_secure_used();
        }
    printf("%d EC P-256 keys (a quarter token, the rest session) signed twice each under a 64 KiB secure heap "
           "(peak use %zu bytes): %s\n",
           NKEYS, peak, bad ? "FAILURES" : "all signatures made and verified");
    teardown();
    return bad;
}
