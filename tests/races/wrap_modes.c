/* AES ECB / CBC / CBC_PAD / KEY_WRAP / KWP as wrap mechanisms: parameters,
 * lengths, size queries, short buffers, CKA_VALUE_LEN, bad blobs.
 * WRAP_POLICY=default. Prints each check; build with ASan to catch leaks. */
#include "common.h"
#include <openssl/evp.h>
#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x210BUL
#endif

static int fails;
#define EXPECT(cond, ...) do { int ok_ = (cond); printf(ok_ ? "ok   " : "FAIL "); printf(__VA_ARGS__); printf("\n"); if (!ok_) fails++; } while (0)
static const uint8_t kek[16] = "KEK-KEK-KEK-KEK!";

static CK_OBJECT_HANDLE secret(CK_KEY_TYPE kt, const void *v, CK_ULONG len)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, (void *)v, len},
                        {CKA_EXTRACTABLE, &yes, 1}, {CKA_SENSITIVE, &no, 1}, {CKA_TOKEN, &no, 1}};
    CK_RV rv = f->C_CreateObject(h, a, 6, &o);
    if (rv) { printf("create len %lu: 0x%lx\n", len, rv); return 0; }
    return o;
}

static CK_RV unwrap(CK_MECHANISM *m, CK_OBJECT_HANDLE w, const uint8_t *b, CK_ULONG bl, CK_KEY_TYPE kt, CK_ULONG vlen,
                    CK_OBJECT_HANDLE *o)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1},
                        {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_VALUE_LEN, &vlen, sizeof(vlen)}};
    return f->C_UnwrapKey(h, m, w, (CK_BYTE_PTR)b, bl, t, vlen ? 6 : 5, o);
}

static CK_ULONG value_of(CK_OBJECT_HANDLE o, uint8_t *v)
{
    CK_ATTRIBUTE a = {CKA_VALUE, v, 128};
    return f->C_GetAttributeValue(h, o, &a, 1) == CKR_OK ? a.ulValueLen : (CK_ULONG)-1;
}

int main(void)
{
    setup();
    CK_OBJECT_HANDLE w = secret(CKK_AES, kek, 16), k16 = secret(CKK_AES, "sixteen-byte-key", 16),
                     g24 = secret(CKK_GENERIC_SECRET, "twenty-four-byte-secret!", 24),
                     g5 = secret(CKK_GENERIC_SECRET, "five!", 5), o;
    uint8_t iv[16] = "iv-iv-iv-iv-iv-", blob[256], v[128];
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0}, cbc = {CKM_AES_CBC, iv, 16}, pad = {CKM_AES_CBC_PAD, iv, 16},
                 kw = {CKM_AES_KEY_WRAP, NULL, 0}, kwp = {CKM_AES_KEY_WRAP_KWP, NULL, 0},
                 cbc_noiv = {CKM_AES_CBC, NULL, 0}, cbc_short = {CKM_AES_CBC, iv, 8}, ecb_p = {CKM_AES_ECB, iv, 16};
    CK_ULONG bl;
    CK_RV rv;

    bl = 0; rv = f->C_WrapKey(h, &cbc_noiv, w, k16, NULL, &bl);
    EXPECT(rv == CKR_MECHANISM_PARAM_INVALID, "CBC without IV (size query): 0x%lx", rv);
    bl = 0; rv = f->C_WrapKey(h, &cbc_short, w, k16, NULL, &bl);
    EXPECT(rv == CKR_MECHANISM_PARAM_INVALID, "CBC with 8-byte IV: 0x%lx", rv);
    bl = 0; rv = f->C_WrapKey(h, &ecb_p, w, k16, NULL, &bl);
    EXPECT(rv == CKR_MECHANISM_PARAM_INVALID, "ECB with a parameter: 0x%lx", rv);

    CK_MECHANISM *ms[] = {&ecb, &cbc, &pad, &kw, &kwp};
    const char *mn[] = {"ECB", "CBC", "CBC_PAD", "KEY_WRAP", "KWP"};
    CK_ULONG want16[] = {16, 16, 32, 24, 24};
    for (int i = 0; i < 5; i++) {
        bl = 0;
        rv = f->C_WrapKey(h, ms[i], w, k16, NULL, &bl);
        EXPECT(rv == CKR_OK && bl == want16[i], "%s size query: 0x%lx %lu", mn[i], rv, bl);
        CK_ULONG need = bl;
        bl = need - 1;
        rv = f->C_WrapKey(h, ms[i], w, k16, blob, &bl);
        EXPECT(rv == CKR_BUFFER_TOO_SMALL && bl == need, "%s short buffer: 0x%lx %lu", mn[i], rv, bl);
        bl = sizeof(blob);
        rv = f->C_WrapKey(h, ms[i], w, k16, blob, &bl);
        EXPECT(rv == CKR_OK && bl == want16[i], "%s wrap: 0x%lx %lu", mn[i], rv, bl);
        rv = unwrap(ms[i], w, blob, bl, CKK_AES, 0, &o);
        EXPECT(rv == CKR_OK && value_of(o, v) == 16 && !memcmp(v, "sixteen-byte-key", 16), "%s round trip: 0x%lx", mn[i], rv);
        /* a flipped byte */
        blob[bl - 1] ^= 1;
        rv = unwrap(ms[i], w, blob, bl, CKK_AES, 0, &o);
        printf("     %s unwrap of a damaged blob: 0x%lx\n", mn[i], rv);
        /* truncated / empty blob */
        rv = unwrap(ms[i], w, blob, bl - 1, CKK_AES, 0, &o);
        EXPECT(rv == CKR_WRAPPED_KEY_LEN_RANGE, "%s blob one short: 0x%lx", mn[i], rv);
        rv = unwrap(ms[i], w, blob, 0, CKK_AES, 0, &o);
        EXPECT(rv == CKR_WRAPPED_KEY_LEN_RANGE, "%s empty blob: 0x%lx", mn[i], rv);
        rv = unwrap(ms[i], w, NULL, 16, CKK_AES, 0, &o);
        EXPECT(rv == CKR_ARGUMENTS_BAD, "%s NULL blob with a length: 0x%lx", mn[i], rv);
    }
    /* 24-byte and 5-byte generic secrets */
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &ecb, w, g24, blob, &bl);
    printf("     ECB wrap of a 24-byte key: 0x%lx (PKCS#11 2.40 §2.10.5: zero-padded to a block multiple)\n", rv);
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &pad, w, g5, blob, &bl);
    EXPECT(rv == CKR_OK && bl == 16, "CBC_PAD of 5 bytes: 0x%lx %lu", rv, bl);
    rv = unwrap(&pad, w, blob, bl, CKK_GENERIC_SECRET, 0, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 5, "CBC_PAD 5 back: 0x%lx", rv);
    rv = unwrap(&pad, w, blob, bl, CKK_GENERIC_SECRET, 4, &o);
    EXPECT(rv == CKR_TEMPLATE_INCONSISTENT, "CBC_PAD with CKA_VALUE_LEN 4 != 5: 0x%lx", rv);
    /* ECB of 32 bytes, VALUE_LEN bigger than the data */
    CK_OBJECT_HANDLE k32 = secret(CKK_AES, "thirty-two-byte-key-abcdefghijkl", 32);
    bl = sizeof(blob);
    CHECK(f->C_WrapKey(h, &ecb, w, k32, blob, &bl));
    rv = unwrap(&ecb, w, blob, bl, CKK_AES, 48, &o);
    EXPECT(rv == CKR_TEMPLATE_INCONSISTENT, "ECB with CKA_VALUE_LEN 48 > 32: 0x%lx", rv);
    rv = unwrap(&ecb, w, blob, bl, CKK_AES, 24, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 24, "ECB with CKA_VALUE_LEN 24: 0x%lx", rv);
    rv = unwrap(&ecb, w, blob, bl, CKK_AES, 20, &o);
    EXPECT(rv != CKR_OK, "ECB with CKA_VALUE_LEN 20 as AES refused: 0x%lx", rv);
    /* CBC_PAD decrypting to nothing (a whole padding block): an empty key? */
    uint8_t pb[16];
    memset(pb, 16, 16);
    {
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        int n;
        uint8_t x[16];
        for (int i = 0; i < 16; i++) x[i] = pb[i] ^ iv[i];
        EVP_EncryptInit_ex2(c, EVP_aes_128_ecb(), kek, NULL, NULL);
        EVP_CIPHER_CTX_set_padding(c, 0);
        EVP_EncryptUpdate(c, blob, &n, x, 16);
        EVP_CIPHER_CTX_free(c);
    }
    rv = unwrap(&pad, w, blob, 16, CKK_GENERIC_SECRET, 0, &o);
    CK_ULONG el = rv == CKR_OK ? value_of(o, v) : 99;
    EXPECT(rv != CKR_OK, "CBC_PAD unwrap to an empty value refused: 0x%lx (value length %lu)", rv, el);
    /* KWP of the empty key? KW of 8 bytes? */
    CK_OBJECT_HANDLE g8 = secret(CKK_GENERIC_SECRET, "8-bytes!", 8);
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &kw, w, g8, blob, &bl);
    EXPECT(rv == CKR_KEY_SIZE_RANGE, "KEY_WRAP of 8 bytes refused: 0x%lx", rv);
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &kwp, w, g8, blob, &bl);
    EXPECT(rv == CKR_OK && bl == 16, "KWP of 8 bytes: 0x%lx %lu", rv, bl);
    rv = unwrap(&kwp, w, blob, bl, CKK_GENERIC_SECRET, 0, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 8 && !memcmp(v, "8-bytes!", 8), "KWP 8 back: 0x%lx", rv);
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &kwp, w, g5, blob, &bl);
    EXPECT(rv == CKR_OK && bl == 16, "KWP of 5 bytes: 0x%lx %lu", rv, bl);
    rv = unwrap(&kwp, w, blob, bl, CKK_GENERIC_SECRET, 0, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 5, "KWP 5 back: 0x%lx", rv);
    /* wrong wrapping key types */
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &ecb, g24, k16, blob, &bl);
    EXPECT(rv == CKR_WRAPPING_KEY_TYPE_INCONSISTENT || rv == CKR_KEY_FUNCTION_NOT_PERMITTED, "ECB under a generic secret: 0x%lx", rv);
    teardown();
    printf("%d failure(s)\n", fails);
    return fails ? 1 : 0;
}
