/* AES-CTR and ulCounterBits: exact boundary, one past, multi-part, size
 * queries, decrypt side, 128-bit counter; output compared with OpenSSL. */
#include "common.h"
#include <openssl/evp.h>

static int fails;
#define EXPECT(cond, ...) do { int ok_ = (cond); printf(ok_ ? "ok   " : "FAIL "); printf(__VA_ARGS__); printf("\n"); if (!ok_) fails++; } while (0)
static const uint8_t key[16] = "0123456789abcdef";

static void ref_ctr(const uint8_t cb[16], const uint8_t *in, int n, uint8_t *out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l;
    EVP_EncryptInit_ex2(c, EVP_aes_128_ctr(), key, cb, NULL);
    EVP_EncryptUpdate(c, out, &l, in, n);
    EVP_CIPHER_CTX_free(c);
}

int main(void)
{
    setup();
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_OBJECT_HANDLE k;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, (void *)key, 16},
                        {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_TOKEN, &no, 1}};
    CHECK(f->C_CreateObject(h, a, 6, &k));
    CK_AES_CTR_PARAMS p = {8, {0}};
    memset(p.cb, 0xAA, 16);
    p.cb[15] = 0xFE; /* two blocks left in an 8-bit counter */
    CK_MECHANISM m = {CKM_AES_CTR, &p, sizeof(p)};
    uint8_t in[64], out[64], ref[64];
    CK_ULONG ol;
    CK_RV rv;
    memset(in, 0x5c, sizeof(in));
    ref_ctr(p.cb, in, 32, ref);

    CHECK(f->C_EncryptInit(h, &m, k));
    ol = 0;
    rv = f->C_Encrypt(h, in, 32, NULL, &ol);
    EXPECT(rv == CKR_OK && ol == 32, "size query at the exact boundary: 0x%lx %lu", rv, ol);
    ol = 64;
    rv = f->C_Encrypt(h, in, 32, out, &ol);
    EXPECT(rv == CKR_OK && ol == 32 && !memcmp(out, ref, 32), "exactly 32 bytes: 0x%lx", rv);

    CHECK(f->C_EncryptInit(h, &m, k));
    ol = 64;
    rv = f->C_Encrypt(h, in, 33, out, &ol);
    EXPECT(rv == CKR_DATA_LEN_RANGE, "33 bytes refused: 0x%lx", rv);
    rv = f->C_Encrypt(h, in, 1, out, &ol);
    EXPECT(rv == CKR_OPERATION_NOT_INITIALIZED, "the refusal ended the operation: 0x%lx", rv);

    CHECK(f->C_EncryptInit(h, &m, k));
    ol = 0;
    rv = f->C_Encrypt(h, in, 33, NULL, &ol);
    EXPECT(rv == CKR_DATA_LEN_RANGE, "size query for 33 refused: 0x%lx", rv);

    /* multi-part: 5 + 11 + 16 fits, then 1 more does not */
    CHECK(f->C_EncryptInit(h, &m, k));
    CK_ULONG tot = 0, step[] = {5, 11, 0, 16};
    for (int i = 0; i < 4; i++) {
        ol = 0;
        rv = f->C_EncryptUpdate(h, in + tot, step[i], NULL, &ol);
        if (rv != CKR_OK || ol != step[i]) { EXPECT(0, "update size query %d: 0x%lx %lu", i, rv, ol); }
        ol = 2; /* too small unless step <= 2 */
        rv = f->C_EncryptUpdate(h, in + tot, step[i], out + tot, &ol);
        if (step[i] > 2) {
            EXPECT(rv == CKR_BUFFER_TOO_SMALL && ol == step[i], "short buffer on update %d: 0x%lx %lu", i, rv, ol);
            ol = 64;
            rv = f->C_EncryptUpdate(h, in + tot, step[i], out + tot, &ol);
        }
        EXPECT(rv == CKR_OK && ol == step[i], "update %d of %lu: 0x%lx", i, step[i], rv);
        tot += ol;
    }
    EXPECT(!memcmp(out, ref, 32), "multi-part output matches OpenSSL");
    ol = 64;
    rv = f->C_EncryptUpdate(h, in, 1, out, &ol);
    EXPECT(rv == CKR_DATA_LEN_RANGE, "one more byte refused: 0x%lx", rv);

    /* decrypt */
    CHECK(f->C_DecryptInit(h, &m, k));
    ol = 64;
    rv = f->C_Decrypt(h, ref, 32, out, &ol);
    EXPECT(rv == CKR_OK && !memcmp(out, in, 32), "decrypt 32: 0x%lx", rv);
    CHECK(f->C_DecryptInit(h, &m, k));
    ol = 64;
    rv = f->C_Decrypt(h, ref, 33, out, &ol);
    EXPECT(rv == CKR_ENCRYPTED_DATA_LEN_RANGE, "decrypt 33 refused: 0x%lx", rv);
    CHECK(f->C_DecryptInit(h, &m, k));
    ol = 64;
    rv = f->C_DecryptUpdate(h, ref, 31, out, &ol);
    EXPECT(rv == CKR_OK, "decrypt update 31: 0x%lx", rv);
    ol = 64;
    rv = f->C_DecryptUpdate(h, ref, 2, out, &ol);
    EXPECT(rv == CKR_ENCRYPTED_DATA_LEN_RANGE, "decrypt update past: 0x%lx", rv);

    /* 128-bit counter at all-ones: wraps mod 2^128 (whole block is the counter) */
    CK_AES_CTR_PARAMS p2 = {128, {0}};
    memset(p2.cb, 0xff, 16);
    CK_MECHANISM m2 = {CKM_AES_CTR, &p2, sizeof(p2)};
    CHECK(f->C_EncryptInit(h, &m2, k));
    ol = 64;
    rv = f->C_Encrypt(h, in, 48, out, &ol);
    ref_ctr(p2.cb, in, 48, ref);
    EXPECT(rv == CKR_OK && !memcmp(out, ref, 48), "128-bit counter: 0x%lx", rv);

    /* 64-bit counter, low 64 bits all ones: one block left */
    CK_AES_CTR_PARAMS p3 = {64, {0}};
    memset(p3.cb + 8, 0xff, 8);
    CK_MECHANISM m3 = {CKM_AES_CTR, &p3, sizeof(p3)};
    CHECK(f->C_EncryptInit(h, &m3, k));
    ol = 64;
    rv = f->C_Encrypt(h, in, 17, out, &ol);
    EXPECT(rv == CKR_DATA_LEN_RANGE, "64-bit counter at max, 17 bytes refused: 0x%lx", rv);
    /* 1-bit counter, odd: one block */
    CK_AES_CTR_PARAMS p4 = {1, {0}};
    p4.cb[15] = 1;
    CK_MECHANISM m4 = {CKM_AES_CTR, &p4, sizeof(p4)};
    CHECK(f->C_EncryptInit(h, &m4, k));
    ol = 64;
    rv = f->C_Encrypt(h, in, 16, out, &ol);
    EXPECT(rv == CKR_OK, "1-bit counter, 16 ok: 0x%lx", rv);
    CHECK(f->C_EncryptInit(h, &m4, k));
    rv = f->C_Encrypt(h, in, 17, out, &ol);
    EXPECT(rv == CKR_DATA_LEN_RANGE, "1-bit counter, 17 refused: 0x%lx", rv);
    /* bad counter bits */
    p4.ulCounterBits = 129;
    EXPECT(f->C_EncryptInit(h, &m4, k) == CKR_MECHANISM_PARAM_INVALID, "129 bits refused");
    p4.ulCounterBits = 0;
    EXPECT(f->C_EncryptInit(h, &m4, k) == CKR_MECHANISM_PARAM_INVALID, "0 bits refused");
    teardown();
    printf("%d failure(s)\n", fails);
    return fails ? 1 : 0;
}
