/* AES ECB / CBC / CBC_PAD / KEY_WRAP / KWP as wrap mechanisms: parameters,
 * lengths, size queries, short buffers, CKA_VALUE_LEN, bad blobs.
 * WRAP_POLICY=default. Prints each check; build with ASan to catch leaks. */
#include "common.h"
#include <openssl/evp.h>
#include <openssl/ec.h>
#include <openssl/x509.h>
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

/* A wrap's size query with parameters the mechanism refuses. */
static void param_refused(CK_MECHANISM *m, CK_OBJECT_HANDLE w, CK_OBJECT_HANDLE k, const char *what)
{
    CK_ULONG bl = 0;
    CK_RV rv = f->C_WrapKey(h, m, w, k, NULL, &bl);
    EXPECT(rv == CKR_MECHANISM_PARAM_INVALID, "%s: 0x%lx", what, rv);
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

    param_refused(&cbc_noiv, w, k16, "CBC without IV (size query)");
    param_refused(&cbc_short, w, k16, "CBC with 8-byte IV");
    param_refused(&ecb_p, w, k16, "ECB with a parameter");

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
    /* KWP of the empty key? KW of 8 bytes? KEY_WRAP zero-pads (PKCS#11 3.1:
     * "can wrap a key of any length"), to two semiblocks at least (RFC 3394);
     * CKA_VALUE_LEN takes the padding back out, never more than 7 bytes of a
     * longer key. */
    CK_OBJECT_HANDLE g8 = secret(CKK_GENERIC_SECRET, "8-bytes!", 8);
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &kw, w, g8, blob, &bl);
    EXPECT(rv == CKR_OK && bl == 24, "KEY_WRAP of 8 bytes, padded to 16: 0x%lx %lu", rv, bl);
    rv = unwrap(&kw, w, blob, bl, CKK_GENERIC_SECRET, 8, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 8 && !memcmp(v, "8-bytes!", 8), "KEY_WRAP 8 back: 0x%lx", rv);
    rv = unwrap(&kw, w, blob, bl, CKK_GENERIC_SECRET, 0, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 16 && !memcmp(v, "8-bytes!\0\0\0\0\0\0\0\0", 16),
           "KEY_WRAP 8 back without CKA_VALUE_LEN: the padded 16: 0x%lx", rv);
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &kw, w, g24, blob, &bl);
    EXPECT(rv == CKR_OK && bl == 32, "KEY_WRAP of 24 bytes: 0x%lx %lu", rv, bl);
    rv = unwrap(&kw, w, blob, bl, CKK_GENERIC_SECRET, 16, &o);
    EXPECT(rv == CKR_TEMPLATE_INCONSISTENT, "KEY_WRAP of 24 unwrapped to 16 (more than 7 cut): 0x%lx", rv);
    rv = unwrap(&kw, w, blob, bl, CKK_GENERIC_SECRET, 17, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 17, "KEY_WRAP of 24 unwrapped to 17: 0x%lx", rv);
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &kw, w, g5, blob, &bl);
    EXPECT(rv == CKR_OK && bl == 24, "KEY_WRAP of 5 bytes: 0x%lx %lu", rv, bl);
    rv = unwrap(&kw, w, blob, bl, CKK_GENERIC_SECRET, 5, &o);
    EXPECT(rv == CKR_OK && value_of(o, v) == 5 && !memcmp(v, "five!", 5), "KEY_WRAP 5 back: 0x%lx", rv);
    /* The optional initial value: 8 bytes for KEY_WRAP, 4 for KWP; the same
     * blob comes back only under the same value. */
    uint8_t icv8[8] = {1, 2, 3, 4, 5, 6, 7, 8}, icv4[4] = {9, 8, 7, 6};
    CK_MECHANISM kw_iv = {CKM_AES_KEY_WRAP, icv8, 8}, kwp_iv = {CKM_AES_KEY_WRAP_KWP, icv4, 4},
                 kw_bad = {CKM_AES_KEY_WRAP, icv4, 4}, kwp_bad = {CKM_AES_KEY_WRAP_KWP, icv8, 8},
                 kw_null = {CKM_AES_KEY_WRAP, NULL, 8};
    param_refused(&kw_bad, w, k16, "KEY_WRAP with a 4-byte IV");
    param_refused(&kwp_bad, w, k16, "KWP with an 8-byte IV");
    param_refused(&kw_null, w, k16, "KEY_WRAP with a NULL IV of 8 bytes");
    CK_MECHANISM *ivm[] = {&kw_iv, &kwp_iv}, *plain[] = {&kw, &kwp};
    for (int i = 0; i < 2; i++) {
        uint8_t b2[64];
        CK_ULONG l2 = sizeof(b2);
        bl = sizeof(blob);
        rv = f->C_WrapKey(h, ivm[i], w, k16, blob, &bl);
        CK_RV rv2 = f->C_WrapKey(h, plain[i], w, k16, b2, &l2);
        EXPECT(rv == CKR_OK && rv2 == CKR_OK && bl == l2 && memcmp(blob, b2, bl) != 0, "%s with its IV: another blob: 0x%lx",
               mn[3 + i], rv);
        rv = unwrap(ivm[i], w, blob, bl, CKK_AES, 0, &o);
        EXPECT(rv == CKR_OK && value_of(o, v) == 16 && !memcmp(v, "sixteen-byte-key", 16), "%s IV round trip: 0x%lx",
               mn[3 + i], rv);
        rv = unwrap(plain[i], w, blob, bl, CKK_AES, 0, &o);
        EXPECT(rv == CKR_WRAPPED_KEY_INVALID, "%s blob under the default IV: 0x%lx", mn[3 + i], rv);
    }
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
    /* A private key through KEY_WRAP: its PKCS#8 encoding, then zeros to a
     * whole semiblock, which unwrap ignores; anything else after the
     * encoding is a damaged blob, never a key. */
    {
        EVP_PKEY *pk = EVP_EC_gen("P-256");
        uint8_t pkcs8[600];
        PKCS8_PRIV_KEY_INFO *p8 = pk ? EVP_PKEY2PKCS8(pk) : NULL;
        uint8_t *q = pkcs8;
        int pl = p8 ? i2d_PKCS8_PRIV_KEY_INFO(p8, &q) : -1;
        CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
        CK_KEY_TYPE ec = CKK_EC;
        CK_ATTRIBUTE pt[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_KEY_TYPE, &ec, sizeof(ec)}, {CKA_TOKEN, &no, 1}};
        for (int tail = 0; tail < 3 && pl > 0 && pl < 560; tail++) {
            /* tail 0: zeros; 1: a byte 1 after the encoding; 2: eight more zero bytes than a semiblock needs */
            uint8_t clear[600], wrapped[620];
            size_t n = (size_t)(pl + 7) / 8 * 8 + (tail == 2 ? 8 : 0);
            if (tail == 1 && n == (size_t)pl)
                n += 8;
            memset(clear, 0, sizeof(clear));
            memcpy(clear, pkcs8, (size_t)pl);
            if (tail == 1)
                clear[pl] = 1;
            EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
            int a = 0, b = 0;
            EVP_EncryptInit_ex2(c, EVP_aes_128_wrap(), kek, NULL, NULL);
            EVP_EncryptUpdate(c, wrapped, &a, clear, (int)n);
            EVP_EncryptFinal_ex(c, wrapped + a, &b);
            EVP_CIPHER_CTX_free(c);
            rv = f->C_UnwrapKey(h, &kw, w, wrapped, (CK_ULONG)(a + b), pt, 3, &o);
            if (tail == 1)
                EXPECT(rv == CKR_WRAPPED_KEY_INVALID, "KEY_WRAP of a PKCS#8 with a non-zero byte after it: 0x%lx", rv);
            else
                EXPECT(rv == CKR_OK, "KEY_WRAP of a PKCS#8 with %zu zero bytes after it: 0x%lx", n - (size_t)pl, rv);
        }
        EXPECT(pl > 0, "a PKCS#8 made by OpenSSL (%d bytes)", pl);
        PKCS8_PRIV_KEY_INFO_free(p8);
        EVP_PKEY_free(pk);
    }
    /* ECB and CBC wrap secret keys only (a private key: the _CBC_PAD mechanism). */
    {
        CK_OBJECT_HANDLE pub, priv;
        CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
        static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        CK_ATTRIBUTE pubt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &no, 1}};
        CK_ATTRIBUTE privt[] = {{CKA_EXTRACTABLE, &yes, 1}, {CKA_TOKEN, &no, 1}};
        CHECK(f->C_GenerateKeyPair(h, &gen, pubt, 2, privt, 2, &pub, &priv));
        bl = 0;
        rv = f->C_WrapKey(h, &ecb, w, priv, NULL, &bl);
        EXPECT(rv == CKR_KEY_NOT_WRAPPABLE, "ECB of a private key: 0x%lx", rv);
        bl = 0;
        rv = f->C_WrapKey(h, &cbc, w, priv, NULL, &bl);
        EXPECT(rv == CKR_KEY_NOT_WRAPPABLE, "CBC of a private key: 0x%lx", rv);
        bl = sizeof(blob);
        rv = f->C_WrapKey(h, &pad, w, priv, blob, &bl);
        EXPECT(rv == CKR_OK, "CBC_PAD of a private key: 0x%lx", rv);
    }
    /* wrong wrapping key types */
    bl = sizeof(blob);
    rv = f->C_WrapKey(h, &ecb, g24, k16, blob, &bl);
    EXPECT(rv == CKR_WRAPPING_KEY_TYPE_INCONSISTENT || rv == CKR_KEY_FUNCTION_NOT_PERMITTED, "ECB under a generic secret: 0x%lx", rv);
    teardown();
    printf("%d failure(s)\n", fails);
    return fails ? 1 : 0;
}
