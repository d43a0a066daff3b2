/* AEAD through the built module (dlopen, the PKCS#11 3.0 interface), on
 * one keystore with a logged-in user session, keys as session objects:
 *
 *   - known answers: RFC 8439 section 2.8.2 (ChaCha20-Poly1305), NIST SP
 *     800-38C examples 1 to 4 and RFC 3610 packet vector 1 (AES-CCM),
 *     single- and multi-part, both ways; empty payloads (answers computed
 *     with pyca/cryptography, the same with OpenSSL's EVP); CCM against
 *     plain OpenSSL for every key size and lengths around the block size;
 *   - ChaCha20 keys: CKM_CHACHA20_KEY_GEN, import, their one length;
 *   - error cases: size query, short buffer (the operation stays), bad
 *     parameters, wrong key types, CCM's ulDataLen, a bad tag or AAD;
 *   - the message-based functions (C_MessageEncryptInit ...) with AES-GCM
 *     (McGrew-Viega test case 4), AES-CCM and ChaCha20-Poly1305: the same
 *     known answers, in one call and in parts, the same bytes as C_Encrypt,
 *     IVs the token generates (counter, XOR counter, random, its own
 *     choice), the operation's states and what ends what; message-based
 *     MACs (RFC 4231 HMAC-SHA256, RFC 4493 AES-CMAC). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include <p11-kit/pkcs11.h>

#include "pkcs11/p11_v3.h"
#include "tests/unit/ks_test_util.h"
#include "tests/unit/test_hex.h"
#include "tests/unit/test_params.h"
#include "tests/unit/test_session.h"

#define CK(call) assert_int_equal((call), CKR_OK)
#define RV(want, call) assert_int_equal((call), (want))
#define unhex test_unhex
#define assert_bytes test_assert_bytes

static void *dl;
static CK_FUNCTION_LIST_3_0 *f;
static char tmp[64];
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE h;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static const char SO[] = "so-secret", PIN[] = "user-pin";

/* RFC 8439 2.8.2 */
static const char RFC8439_PT[] = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
                                 "future, sunscreen would be it.";
static const char RFC8439_NONCE[] = "070000004041424344454647";
static const char RFC8439_AAD[] = "50515253c0c1c2c3c4c5c6c7";
static const char RFC8439_CT[] = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
                                 "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
                                 "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
                                 "3ff4def08e4b7a9de576d26586cec64b6116";
static const char RFC8439_TAG[] = "1ae10b594f09e26a7e902ecbd0600691";

/* SP 800-38C appendix C (one key, AAD and payload the leading bytes of a
 * counting sequence) and RFC 3610 packet vector 1. */
typedef struct {
    const char *name, *key, *nonce;
    size_t aadlen; /* bytes of 00 01 02 ... (RFC 3610: 00..07) */
    const char *pt, *ct, *tag;
} ccm_vector;

static const ccm_vector CCM[] = {
    {"SP 800-38C example 1", "404142434445464748494a4b4c4d4e4f", "10111213141516", 8, "20212223", "7162015b",
     "4dac255d"},
    {"SP 800-38C example 2", "404142434445464748494a4b4c4d4e4f", "1011121314151617", 16,
     "202122232425262728292a2b2c2d2e2f", "d2a1f0e051ea5f62081a7792073d593d", "1fc64fbfaccd"},
    {"SP 800-38C example 3", "404142434445464748494a4b4c4d4e4f", "101112131415161718191a1b", 20,
     "202122232425262728292a2b2c2d2e2f3031323334353637", "e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5",
     "484392fbc1b09951"},
    {"SP 800-38C example 4 (64 KiB AAD)", "404142434445464748494a4b4c4d4e4f", "101112131415161718191a1b1c", 65536,
     "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
     "69915dad1e84c6376a68c2967e4dab615ae0fd1faec44cc484828529463ccf72", "b4ac6bec93e8598e7f0dadbcea5b"},
    {"RFC 3610 packet vector 1", "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000003020100a0a1a2a3a4a5", 8,
     "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e", "588c979a61c663d2f066d0c2c0f989806d5f6b61dac384",
     "17e8d12cfdf926e0"},
    /* empty payloads: pyca/cryptography's AESCCM, and OpenSSL's EVP alike */
    {"empty payload", "404142434445464748494a4b4c4d4e4f", "10111213141516", 8, "", "", "0c174d5bf435f2d5"},
    {"empty payload and AAD", "404142434445464748494a4b4c4d4e4f", "101112131415161718191a1b1c", 0, "", "",
     "32d6f8243a26d0bd98d01b0f448e7773"},
};
#define N_CCM (sizeof(CCM) / sizeof(CCM[0]))

static uint8_t counting[65536]; /* 00 01 02 ... ff 00 01 ... */

/* ---- fixture: one keystore, a token, a logged-in read/write session ------- */

static int group_setup(void **state)
{
    (void)state;
    const char *mod = getenv("P11MK_MODULE");
    CK_RV (*gi)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
    CK_VERSION v30 = {3, 0};
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    CK_FUNCTION_LIST *f240; /* the same functions: the setup in test_session.h takes this list */
    CK_INTERFACE *ip;

    for (size_t i = 0; i < sizeof(counting); i++)
        counting[i] = (uint8_t)i;
    snprintf(tmp, sizeof(tmp), "/tmp/p11mk-aead-XXXXXX");
    if (!mkdtemp(tmp) || !(dl = dlopen(mod ? mod : "pkcs11/p11mk-pkcs11.so", RTLD_NOW | RTLD_LOCAL)))
        return -1;
    gi = (CK_RV(*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(dl, "C_GetInterface");
    gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(dl, "C_GetFunctionList");
    if (!gi || !gfl || gi((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &ip, 0) != CKR_OK || gfl(&f240) != CKR_OK)
        return -1;
    f = ip->pFunctionList;
    if (test_conf(tmp, "ks", "") != 0)
        return -1;
    return test_user_session(f240, "aead", SO, PIN, &slot, &h);
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = f->C_Finalize(NULL) == CKR_OK ? 0 : -1;
    rm_rf(tmp);
    return rc;
}

/* ---- helpers ----------------------------------------------------------------- */

/* A session secret key that encrypts and decrypts, unless the extra
 * attributes say otherwise. */
static CK_OBJECT_HANDLE key_of(CK_KEY_TYPE kt, const uint8_t *val, size_t len, CK_ATTRIBUTE *extra, CK_ULONG nextra)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[12] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                          {CKA_VALUE, (void *)val, len},  {CKA_TOKEN, &no, 1},
                          {CKA_ENCRYPT, &yes, 1},         {CKA_DECRYPT, &yes, 1}};
    CK_ULONG n = 6;
    CK_OBJECT_HANDLE k;
    for (CK_ULONG i = 0; i < nextra; i++) { /* an extra attribute replaces one of the same type */
        CK_ULONG j = 0;
        while (j < n && t[j].type != extra[i].type)
            j++;
        t[j] = extra[i];
        n += j == n;
    }
    CK(f->C_CreateObject(h, t, n, &k));
    return k;
}

/* RFC 8439's key: 80 81 .. 9f. */
static CK_OBJECT_HANDLE rfc8439_key(void)
{
    uint8_t k[32];
    for (int i = 0; i < 32; i++)
        k[i] = (uint8_t)(0x80 + i);
    return key_of(TEST_CKK_CHACHA20, k, 32, NULL, 0);
}

/* C_Encrypt or C_Decrypt after its init: a size query (the exact length),
 * a buffer one byte short (CKR_BUFFER_TOO_SMALL, the length, the operation
 * kept), then the call. */
static size_t crypt1(bool enc, CK_MECHANISM *m, CK_OBJECT_HANDLE k, const uint8_t *in, size_t inlen, uint8_t *out)
{
    CK_ULONG n = 0, want;
    CK((enc ? f->C_EncryptInit : f->C_DecryptInit)(h, m, k));
    CK((enc ? f->C_Encrypt : f->C_Decrypt)(h, (CK_BYTE_PTR)in, inlen, NULL, &n));
    want = n;
    if (want) {
        n = want - 1;
        RV(CKR_BUFFER_TOO_SMALL, (enc ? f->C_Encrypt : f->C_Decrypt)(h, (CK_BYTE_PTR)in, inlen, out, &n));
        assert_int_equal(n, want);
    }
    n = want + 16;
    CK((enc ? f->C_Encrypt : f->C_Decrypt)(h, (CK_BYTE_PTR)in, inlen, out, &n));
    assert_int_equal(n, want);
    return n;
}

/* Multi-part, in pieces of 5, 11 and 16 bytes; every call asked for its
 * size first. */
static size_t crypt_parts(bool enc, CK_MECHANISM *m, CK_OBJECT_HANDLE k, const uint8_t *in, size_t inlen, uint8_t *out)
{
    static const size_t piece[] = {5, 11, 16};
    size_t done = 0, got = 0;
    CK_ULONG n;
    CK((enc ? f->C_EncryptInit : f->C_DecryptInit)(h, m, k));
    for (int i = 0; done < inlen; i = i < 2 ? i + 1 : 2) {
        size_t take = inlen - done < piece[i] ? inlen - done : piece[i];
        CK((enc ? f->C_EncryptUpdate : f->C_DecryptUpdate)(h, (CK_BYTE_PTR)in + done, take, NULL, &n));
        CK_ULONG want = n;
        n += 3;
        CK((enc ? f->C_EncryptUpdate : f->C_DecryptUpdate)(h, (CK_BYTE_PTR)in + done, take, out + got, &n));
        assert_int_equal(n, want);
        got += n;
        done += take;
    }
    CK((enc ? f->C_EncryptFinal : f->C_DecryptFinal)(h, NULL, &n));
    CK_ULONG want = n;
    if (want) {
        n = want - 1;
        RV(CKR_BUFFER_TOO_SMALL, (enc ? f->C_EncryptFinal : f->C_DecryptFinal)(h, out + got, &n));
    }
    n = want;
    CK((enc ? f->C_EncryptFinal : f->C_DecryptFinal)(h, out + got, &n));
    assert_int_equal(n, want);
    return got + n;
}

/* Both ways, single- and multi-part: in -> ct||tag -> in. */
static void both_ways(CK_MECHANISM *m, CK_OBJECT_HANDLE k, const uint8_t *pt, size_t ptlen, const uint8_t *sealed,
                      size_t slen, const char *what)
{
    uint8_t *out = malloc(slen + 64);
    assert_non_null(out);
    assert_bytes(out, crypt1(true, m, k, pt, ptlen, out), sealed, slen, what);
    assert_bytes(out, crypt_parts(true, m, k, pt, ptlen, out), sealed, slen, what);
    assert_bytes(out, crypt1(false, m, k, sealed, slen, out), pt, ptlen, what);
    assert_bytes(out, crypt_parts(false, m, k, sealed, slen, out), pt, ptlen, what);
    free(out);
}

/* ct || tag of a known answer. */
static size_t sealed_of(const char *ct, const char *tag, uint8_t *out, size_t cap)
{
    size_t n = unhex(ct, out, cap);
    return n + unhex(tag, out + n, cap - n);
}

/* ---- known answers ---------------------------------------------------------- */

static void test_chacha20_poly1305_rfc8439(void **state)
{
    (void)state;
    uint8_t nonce[12], aad[12], sealed[160];
    size_t ptlen = strlen(RFC8439_PT), slen = sealed_of(RFC8439_CT, RFC8439_TAG, sealed, sizeof(sealed));
    unhex(RFC8439_NONCE, nonce, sizeof(nonce));
    unhex(RFC8439_AAD, aad, sizeof(aad));
    test_chacha_params p = {nonce, 12, aad, 12};
    CK_MECHANISM m = {TEST_CKM_CHACHA20_POLY1305, &p, sizeof(p)};
    CK_OBJECT_HANDLE k = rfc8439_key();

    assert_int_equal(slen, ptlen + 16);
    both_ways(&m, k, (const uint8_t *)RFC8439_PT, ptlen, sealed, slen, "RFC 8439 2.8.2");

    /* An empty message: the tag alone (pyca/cryptography). */
    uint8_t tag[16];
    unhex("e622e5647a38d967a7ecbcb46c7f675c", tag, sizeof(tag));
    both_ways(&m, k, counting, 0, tag, 16, "RFC 8439 key, nonce and AAD, empty message");

    /* One bit off anywhere (ciphertext, tag, AAD, nonce): refused, no plaintext. */
    uint8_t out[160];
    for (int what = 0; what < 4; what++) {
        uint8_t bad[160];
        CK_ULONG n = sizeof(out);
        memcpy(bad, sealed, slen);
        if (what == 0)
            bad[3] ^= 1;
        else if (what == 1)
            bad[slen - 1] ^= 0x80;
        else if (what == 2)
            aad[0] ^= 1;
        else
            nonce[11] ^= 1;
        memset(out, 0x55, sizeof(out));
        CK(f->C_DecryptInit(h, &m, k));
        RV(CKR_ENCRYPTED_DATA_INVALID, f->C_Decrypt(h, bad, slen, out, &n));
        for (size_t i = 0; i < ptlen; i++)
            assert_true(out[i] == 0 || out[i] == 0x55);
        RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Decrypt(h, bad, slen, out, &n)); /* it ended the operation */
        unhex(RFC8439_AAD, aad, sizeof(aad));
        unhex(RFC8439_NONCE, nonce, sizeof(nonce));
    }
}

static void test_ccm_vectors(void **state)
{
    (void)state;
    uint8_t key[16], nonce[13], pt[32], sealed[48];
    for (size_t i = 0; i < N_CCM; i++) {
        const ccm_vector *v = &CCM[i];
        size_t kl = unhex(v->key, key, sizeof(key)), nl = unhex(v->nonce, nonce, sizeof(nonce));
        size_t pl = unhex(v->pt, pt, sizeof(pt)), sl = sealed_of(v->ct, v->tag, sealed, sizeof(sealed));
        test_ccm_params p = {pl, nonce, nl, v->aadlen ? counting : NULL, v->aadlen, sl - pl};
        CK_MECHANISM m = {CKM_AES_CCM, &p, sizeof(p)};
        both_ways(&m, key_of(CKK_AES, key, kl, NULL, 0), pt, pl, sealed, sl, v->name);
    }
}

/* Byte for byte what plain OpenSSL (the application's library context)
 * gives, for AES-128/192/256, nonces of 7 and 13 bytes, MACs of 4 and 16,
 * payloads around the block size. */
static size_t ossl_ccm(const uint8_t *key, size_t kl, const uint8_t *nonce, size_t nl, const uint8_t *aad, size_t al,
                       const uint8_t *pt, size_t pl, size_t ml, uint8_t *out)
{
    static const char *names[] = {"AES-128-CCM", "AES-192-CCM", "AES-256-CCM"};
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, names[(kl - 16) / 8], NULL);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    uint8_t none[1];
    int n = 0;
    assert_true(c && x && EVP_EncryptInit_ex2(x, c, NULL, NULL, NULL) &&
                EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_IVLEN, (int)nl, NULL) &&
                EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, (int)ml, NULL) &&
                EVP_EncryptInit_ex2(x, NULL, key, nonce, NULL) && EVP_EncryptUpdate(x, NULL, &n, NULL, (int)pl) &&
                (!al || EVP_EncryptUpdate(x, NULL, &n, aad, (int)al)) &&
                EVP_EncryptUpdate(x, pl ? out : none, &n, pl ? pt : none, (int)pl) &&
                EVP_EncryptFinal_ex(x, none, &n) && EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, (int)ml, out + pl));
    EVP_CIPHER_CTX_free(x);
    EVP_CIPHER_free(c);
    return pl + ml;
}

static void test_ccm_against_openssl(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 15, 16, 17, 33, 64};
    uint8_t key[32], want[96];
    for (size_t kl = 16; kl <= 32; kl += 8) {
        for (size_t i = 0; i < kl; i++)
            key[i] = (uint8_t)(0xa0 + 3 * i);
        CK_OBJECT_HANDLE k = key_of(CKK_AES, key, kl, NULL, 0);
        for (size_t nl = 7; nl <= 13; nl += 6)
            for (size_t ml = 4; ml <= 16; ml += 12)
                for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
                    test_ccm_params p = {lens[i], counting + 100, nl, counting + 7, 19, ml};
                    CK_MECHANISM m = {CKM_AES_CCM, &p, sizeof(p)};
                    size_t wl = ossl_ccm(key, kl, counting + 100, nl, counting + 7, 19, counting, lens[i], ml, want);
                    both_ways(&m, k, counting, lens[i], want, wl, "CCM against OpenSSL");
                }
    }
}

/* ---- ChaCha20 keys ------------------------------------------------------------- */

static CK_RV chacha_gen(CK_ATTRIBUTE *extra, CK_ULONG nextra, CK_OBJECT_HANDLE *k)
{
    CK_MECHANISM g = {TEST_CKM_CHACHA20_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[8] = {{CKA_TOKEN, &no, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK_ULONG n = 3;
    for (CK_ULONG i = 0; i < nextra; i++)
        t[n++] = extra[i];
    return f->C_GenerateKey(h, &g, t, n, k);
}

static void test_chacha20_keys(void **state)
{
    (void)state;
    CK_MECHANISM_INFO mi;
    CK_OBJECT_HANDLE k, k2;
    CK_KEY_TYPE kt = 0;
    CK_ULONG vl = 0, l32 = 32, l16 = 16;
    CK_MECHANISM_TYPE genm = 0;

    CK(f->C_GetMechanismInfo(slot, TEST_CKM_CHACHA20_KEY_GEN, &mi));
    assert_int_equal(mi.ulMinKeySize, 32);
    assert_int_equal(mi.ulMaxKeySize, 32);
    assert_int_equal(mi.flags, CKF_GENERATE);

    /* No CKA_VALUE_LEN needed: ChaCha20 has one key length. */
    CK(chacha_gen(NULL, 0, &k));
    CK_ATTRIBUTE a[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE_LEN, &vl, sizeof(vl)},
                        {CKA_KEY_GEN_MECHANISM, &genm, sizeof(genm)}};
    CK(f->C_GetAttributeValue(h, k, a, 3));
    assert_int_equal(kt, TEST_CKK_CHACHA20);
    assert_int_equal(vl, 32);
    assert_int_equal(genm, TEST_CKM_CHACHA20_KEY_GEN);
    CK_ATTRIBUTE want32 = {CKA_VALUE_LEN, &l32, sizeof(l32)}, want16 = {CKA_VALUE_LEN, &l16, sizeof(l16)};
    CK(chacha_gen(&want32, 1, &k2));
    RV(CKR_ATTRIBUTE_VALUE_INVALID, chacha_gen(&want16, 1, &k2));
    CK_KEY_TYPE aes = CKK_AES;
    CK_ATTRIBUTE wrong_type = {CKA_KEY_TYPE, &aes, sizeof(aes)};
    RV(CKR_TEMPLATE_INCONSISTENT, chacha_gen(&wrong_type, 1, &k2));

    /* Two generated keys differ, and each works with ChaCha20-Poly1305. */
    uint8_t nonce[12] = {1}, ct1[48], ct2[48], back[32];
    test_chacha_params p = {nonce, 12, NULL, 0};
    CK_MECHANISM m = {TEST_CKM_CHACHA20_POLY1305, &p, sizeof(p)};
    assert_int_equal(crypt1(true, &m, k, counting, 32, ct1), 48);
    assert_int_equal(crypt1(true, &m, k2, counting, 32, ct2), 48);
    assert_memory_not_equal(ct1, ct2, 48);
    assert_int_equal(crypt1(false, &m, k, ct1, 48, back), 32);
    assert_memory_equal(back, counting, 32);

    /* Import: 32 bytes and only 32; CKA_VALUE_LEN set from the value. */
    uint8_t v[33] = {7};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE ck = TEST_CKK_CHACHA20;
    for (size_t len = 16; len <= 33; len++) {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &ck, sizeof(ck)}, {CKA_VALUE, v, len}, {CKA_TOKEN, &no, 1}};
        if (len == 32) {
            CK(f->C_CreateObject(h, t, 4, &k2));
            vl = 0;
            CK(f->C_GetAttributeValue(h, k2, &a[1], 1));
            assert_int_equal(vl, 32);
        } else {
            RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_CreateObject(h, t, 4, &k2));
        }
    }
}

/* ---- error cases ------------------------------------------------------------------ */

static void test_aead_errors(void **state)
{
    (void)state;
    uint8_t key[16] = {1}, ckey[32] = {2}, nonce[16] = {3}, aad[4] = {4}, out[128];
    CK_OBJECT_HANDLE aes = key_of(CKK_AES, key, 16, NULL, 0), chacha = key_of(TEST_CKK_CHACHA20, ckey, 32, NULL, 0);
    CK_ULONG n;

    /* CCM parameters: nonce 7..13, MAC 4..16 and even, the payload within
     * 2^(8L) for L = 15 - nonce length, pointers where lengths say. */
    static const struct {
        CK_ULONG datalen, noncelen, maclen;
        bool nullnonce, nullaad;
    } bad[] = {
        {16, 6, 8, false, false},     {16, 14, 8, false, false},      {16, 13, 3, false, false},
        {16, 13, 5, false, false},    {16, 13, 18, false, false},     {16, 13, 2, false, false},
        {65536, 13, 8, false, false}, {1 << 24, 12, 8, false, false}, {16, 12, 8, true, false},
        {16, 12, 8, false, true},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        test_ccm_params p = {
            bad[i].datalen, bad[i].nullnonce ? NULL : nonce, bad[i].noncelen, bad[i].nullaad ? NULL : aad, 4,
            bad[i].maclen};
        CK_MECHANISM m = {CKM_AES_CCM, &p, sizeof(p)};
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &m, aes));
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &m, aes));
    }
    test_ccm_params cp = {65535, nonce, 13, aad, 4, 8}; /* the largest 13-byte nonces allow */
    CK_MECHANISM ccm = {CKM_AES_CCM, &cp, sizeof(cp)};
    CK(f->C_EncryptInit(h, &ccm, aes));
    CK(f->C_SessionCancel(h, CKF_ENCRYPT));
    ccm.ulParameterLen = sizeof(cp) - 1;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &ccm, aes));
    ccm.pParameter = NULL;
    ccm.ulParameterLen = 0;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &ccm, aes));

    /* ChaCha20-Poly1305: a 12-byte nonce only (OpenSSL has no 64-bit
     * original variant), present. */
    for (CK_ULONG nl = 0; nl <= 16; nl++) {
        test_chacha_params p = {nonce, nl, aad, 4};
        CK_MECHANISM m = {TEST_CKM_CHACHA20_POLY1305, &p, sizeof(p)};
        RV(nl == 12 ? CKR_OK : CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &m, chacha));
        CK(f->C_SessionCancel(h, CKF_ENCRYPT));
    }
    test_chacha_params xp = {NULL, 12, aad, 4};
    CK_MECHANISM chm = {TEST_CKM_CHACHA20_POLY1305, &xp, sizeof(xp)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &chm, chacha));
    xp = (test_chacha_params){nonce, 12, NULL, 4};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &chm, chacha));
    xp = (test_chacha_params){nonce, 12, aad, 4};

    /* Wrong key types, and keys not allowed to. */
    cp = (test_ccm_params){16, nonce, 12, aad, 4, 16};
    ccm = (CK_MECHANISM){CKM_AES_CCM, &cp, sizeof(cp)};
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &ccm, chacha));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &chm, aes));
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_DecryptInit(h, &chm, key_of(gen, ckey, 32, NULL, 0)));
    CK_ATTRIBUTE noenc = {CKA_ENCRYPT, &no, 1};
    CK_OBJECT_HANDLE decrypt_only = key_of(TEST_CKK_CHACHA20, ckey, 32, &noenc, 1);
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_EncryptInit(h, &chm, decrypt_only));
    CK(f->C_DecryptInit(h, &chm, decrypt_only));
    CK(f->C_SessionCancel(h, CKF_DECRYPT));
    CK_MECHANISM_TYPE only_gcm = CKM_AES_GCM;
    CK_ATTRIBUTE allowed = {CKA_ALLOWED_MECHANISMS, &only_gcm, sizeof(only_gcm)};
    RV(CKR_MECHANISM_INVALID, f->C_EncryptInit(h, &ccm, key_of(CKK_AES, key, 16, &allowed, 1)));

    /* CCM: exactly ulDataLen bytes. Too few or too many ends the operation. */
    CK(f->C_EncryptInit(h, &ccm, aes));
    n = sizeof(out);
    RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, counting, 15, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, counting, 16, out, &n));
    CK(f->C_EncryptInit(h, &ccm, aes));
    RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, counting, 17, NULL, &n));
    CK(f->C_EncryptInit(h, &ccm, aes));
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, counting, 10, out, &n));
    assert_int_equal(n, 0); /* CCM: everything comes at the end */
    n = sizeof(out);
    RV(CKR_DATA_LEN_RANGE, f->C_EncryptUpdate(h, counting, 7, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptFinal(h, out, &n));
    CK(f->C_EncryptInit(h, &ccm, aes));
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, counting, 15, out, &n));
    RV(CKR_DATA_LEN_RANGE, f->C_EncryptFinal(h, out, &n));
    /* Decryption wants ulDataLen + MAC bytes. */
    uint8_t sealed[32];
    assert_int_equal(crypt1(true, &ccm, aes, counting, 16, sealed), 32);
    CK(f->C_DecryptInit(h, &ccm, aes));
    n = sizeof(out);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, sealed, 31, out, &n));
    CK(f->C_DecryptInit(h, &ccm, aes));
    n = sizeof(out);
    CK(f->C_DecryptUpdate(h, sealed, 32, out, &n));
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_DecryptUpdate(h, sealed, 1, out, &n));
    CK(f->C_DecryptInit(h, &ccm, aes));
    n = sizeof(out);
    CK(f->C_DecryptUpdate(h, sealed, 20, out, &n));
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_DecryptFinal(h, out, &n));
    /* A short buffer keeps the operation, and the answer is the same after. */
    uint8_t again[32];
    CK(f->C_EncryptInit(h, &ccm, aes));
    n = 31;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, counting, 16, again, &n));
    assert_int_equal(n, 32);
    CK(f->C_Encrypt(h, counting, 16, again, &n));
    assert_memory_equal(again, sealed, 32);
    CK(f->C_DecryptInit(h, &ccm, aes));
    n = 0;
    CK(f->C_DecryptUpdate(h, sealed, 32, NULL, &n)); /* a size query holds nothing */
    assert_int_equal(n, 0);
    n = sizeof(out);
    CK(f->C_DecryptUpdate(h, sealed, 32, out, &n));
    n = 15;
    RV(CKR_BUFFER_TOO_SMALL, f->C_DecryptFinal(h, out, &n));
    assert_int_equal(n, 16);
    CK(f->C_DecryptFinal(h, out, &n));
    assert_memory_equal(out, counting, 16);
    /* Decryption shorter than the tag. */
    CK(f->C_DecryptInit(h, &chm, chacha));
    n = sizeof(out);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, sealed, 15, out, &n));
    CK(f->C_DecryptInit(h, &chm, chacha));
    n = sizeof(out);
    CK(f->C_DecryptUpdate(h, sealed, 15, out, &n));
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_DecryptFinal(h, out, &n));
    /* Single-part after an update: not allowed. */
    CK(f->C_EncryptInit(h, &chm, chacha));
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, counting, 5, out, &n));
    assert_int_equal(n, 5); /* ChaCha20-Poly1305 encryption passes parts through */
    RV(CKR_OPERATION_ACTIVE, f->C_Encrypt(h, counting, 5, out, &n));
    CK(f->C_SessionCancel(h, CKF_ENCRYPT | CKF_DECRYPT));
}

/* ---- message-based encryption and decryption --------------------------------- */

/* McGrew-Viega test case 4 (NIST's GCM examples), checked with
 * pyca/cryptography. */
static const char GCM_KEY[] = "feffe9928665731c6d6a8f9467308308", GCM_IV[] = "cafebabefacedbaddecaf888",
                  GCM_AAD[] = "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                  GCM_PT[] = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                             "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
                  GCM_CT[] = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
                             "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
                  GCM_TAG[] = "5bc94fbc3221a5db94fae95ae7121a47";

/* A message's parameters for any of the three mechanisms. */
typedef struct {
    union {
        test_gcm_msg_params g;
        test_ccm_msg_params c;
        test_chacha_msg_params x;
    } u;
    CK_ULONG len;
} msg_param;

static msg_param mparam(CK_MECHANISM_TYPE m, uint8_t *iv, size_t ivlen, uint8_t *tag, size_t taglen, size_t datalen,
                        CK_ULONG gen, CK_ULONG fixed_bits)
{
    msg_param p;
    memset(&p, 0, sizeof(p));
    if (m == CKM_AES_GCM) {
        p.u.g = (test_gcm_msg_params){iv, ivlen, fixed_bits, gen, tag, taglen * 8};
        p.len = sizeof(p.u.g);
    } else if (m == CKM_AES_CCM) {
        p.u.c = (test_ccm_msg_params){datalen, iv, ivlen, fixed_bits, gen, tag, taglen};
        p.len = sizeof(p.u.c);
    } else {
        p.u.x = (test_chacha_msg_params){iv, ivlen, tag};
        p.len = sizeof(p.u.x);
    }
    return p;
}

typedef CK_RV (*msg_fn)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
                        CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*next_fn)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR,
                         CK_FLAGS);

/* C_EncryptMessage / C_DecryptMessage: a size query (as long as the
 * input), a buffer one byte short, then the call. */
static void msg1(bool dec, msg_param *p, const uint8_t *aad, size_t al, const uint8_t *in, size_t inlen, uint8_t *out)
{
    msg_fn fn = dec ? f->C_DecryptMessage : f->C_EncryptMessage;
    CK_ULONG n = 0;
    CK(fn(h, &p->u, p->len, (CK_BYTE_PTR)aad, al, (CK_BYTE_PTR)in, inlen, NULL, &n));
    assert_int_equal(n, inlen);
    if (inlen) {
        n = inlen - 1;
        RV(CKR_BUFFER_TOO_SMALL, fn(h, &p->u, p->len, (CK_BYTE_PTR)aad, al, (CK_BYTE_PTR)in, inlen, out, &n));
        assert_int_equal(n, inlen);
    }
    n = inlen + 8;
    CK(fn(h, &p->u, p->len, (CK_BYTE_PTR)aad, al, (CK_BYTE_PTR)in, inlen, out, &n));
    assert_int_equal(n, inlen);
}

/* C_*MessageBegin, then C_*MessageNext in parts of 7 and 13 bytes, the
 * last with CKF_END_OF_MESSAGE; each asked for its size first. GCM and
 * ChaCha20-Poly1305 encryption give each part's bytes at once; CCM and
 * every decryption give everything with the last part. */
static size_t msg_parts(bool dec, CK_MECHANISM_TYPE m, msg_param *p, const uint8_t *aad, size_t al, const uint8_t *in,
                        size_t inlen, uint8_t *out)
{
    next_fn next = dec ? f->C_DecryptMessageNext : f->C_EncryptMessageNext;
    bool at_once = !dec && m != CKM_AES_CCM;
    size_t done = 0, got = 0;
    CK((dec ? f->C_DecryptMessageBegin : f->C_EncryptMessageBegin)(h, &p->u, p->len, (CK_BYTE_PTR)aad, al));
    for (int i = 0;; i++) {
        size_t take = inlen - done < (i % 2 ? 13u : 7u) ? inlen - done : (i % 2 ? 13u : 7u);
        CK_FLAGS fl = done + take == inlen ? TEST_CKF_END_OF_MESSAGE : 0;
        CK_ULONG n = 0, want = at_once ? take : fl ? inlen : 0;
        CK(next(h, &p->u, p->len, (CK_BYTE_PTR)in + done, take, NULL, &n, fl));
        assert_int_equal(n, want);
        if (want) {
            n = want - 1;
            RV(CKR_BUFFER_TOO_SMALL, next(h, &p->u, p->len, (CK_BYTE_PTR)in + done, take, out + got, &n, fl));
            assert_int_equal(n, want);
        }
        n = want + 5;
        CK(next(h, &p->u, p->len, (CK_BYTE_PTR)in + done, take, out + got, &n, fl));
        assert_int_equal(n, want);
        got += n;
        done += take;
        if (fl)
            return got;
    }
}

/* A known answer both ways, in one call and in parts; then a bad tag,
 * which ends that message but not the operation. */
static void msg_known(CK_MECHANISM_TYPE mt, CK_OBJECT_HANDLE k, uint8_t *iv, size_t ivlen, const uint8_t *aad,
                      size_t al, const uint8_t *pt, const uint8_t *ct, size_t len, const uint8_t *tag, size_t taglen,
                      const char *what)
{
    CK_MECHANISM m = {mt, NULL, 0};
    uint8_t out[128], t[16];
    msg_param p = mparam(mt, iv, ivlen, t, taglen, len, TEST_CKG_NO_GENERATE, 0);

    CK(f->C_MessageEncryptInit(h, &m, k));
    CK(f->C_MessageDecryptInit(h, &m, k));
    for (int parts = 0; parts < 2; parts++) {
        memset(t, 0, sizeof(t));
        if (parts)
            assert_int_equal(msg_parts(false, mt, &p, aad, al, pt, len, out), len);
        else
            msg1(false, &p, aad, al, pt, len, out);
        assert_bytes(out, len, ct, len, what);
        assert_bytes(t, taglen, tag, taglen, what);
        memset(out, 0, sizeof(out));
        if (parts)
            assert_int_equal(msg_parts(true, mt, &p, aad, al, ct, len, out), len);
        else
            msg1(true, &p, aad, al, ct, len, out);
        assert_bytes(out, len, pt, len, what);
    }
    t[0] ^= 1;
    CK_ULONG n = sizeof(out);
    memset(out, 0x55, sizeof(out));
    RV(TEST_CKR_AEAD_DECRYPT_FAILED,
       f->C_DecryptMessage(h, &p.u, p.len, (CK_BYTE_PTR)aad, al, (CK_BYTE_PTR)ct, len, out, &n));
    for (size_t i = 0; i < len; i++)
        assert_true(out[i] == 0 || out[i] == 0x55);
    t[0] ^= 1;
    n = sizeof(out);
    CK(f->C_DecryptMessage(h, &p.u, p.len, (CK_BYTE_PTR)aad, al, (CK_BYTE_PTR)ct, len, out, &n));
    CK(f->C_MessageEncryptFinal(h));
    CK(f->C_MessageDecryptFinal(h));
}

static void test_msg_known_answers(void **state)
{
    (void)state;
    uint8_t key[32], iv[16], aad[24], pt[128], ct[128], tag[16];

    /* GCM: the full tag, and the leading 96 bits of it. */
    size_t kl = unhex(GCM_KEY, key, sizeof(key)), al = unhex(GCM_AAD, aad, sizeof(aad));
    size_t len = unhex(GCM_PT, pt, sizeof(pt));
    unhex(GCM_CT, ct, sizeof(ct));
    unhex(GCM_TAG, tag, sizeof(tag));
    CK_OBJECT_HANDLE k = key_of(CKK_AES, key, kl, NULL, 0);
    for (size_t tl = 16; tl >= 12; tl -= 4) {
        unhex(GCM_IV, iv, sizeof(iv));
        msg_known(CKM_AES_GCM, k, iv, 12, aad, al, pt, ct, len, tag, tl, "GCM test case 4, message-based");
    }

    for (size_t i = 0; i < N_CCM; i++) {
        const ccm_vector *v = &CCM[i];
        kl = unhex(v->key, key, sizeof(key));
        size_t nl = unhex(v->nonce, iv, sizeof(iv)), tl = unhex(v->tag, tag, sizeof(tag));
        len = unhex(v->pt, pt, sizeof(pt));
        unhex(v->ct, ct, sizeof(ct));
        msg_known(CKM_AES_CCM, key_of(CKK_AES, key, kl, NULL, 0), iv, nl, counting, v->aadlen, pt, ct, len, tag, tl,
                  v->name);
    }

    unhex(RFC8439_NONCE, iv, sizeof(iv));
    al = unhex(RFC8439_AAD, aad, sizeof(aad));
    len = unhex(RFC8439_CT, ct, sizeof(ct));
    unhex(RFC8439_TAG, tag, sizeof(tag));
    msg_known(TEST_CKM_CHACHA20_POLY1305, rfc8439_key(), iv, 12, aad, al, (const uint8_t *)RFC8439_PT, ct, len, tag, 16,
              "RFC 8439 2.8.2, message-based");
}

/* The same bytes as C_Encrypt gives (ciphertext || tag), for each
 * mechanism and lengths around the block size. */
static void test_msg_matches_single_part(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 16, 33, 100};
    static const CK_MECHANISM_TYPE mechs[] = {CKM_AES_GCM, CKM_AES_CCM, TEST_CKM_CHACHA20_POLY1305};
    uint8_t key[32], iv[13], single[128], out[128], tag[16];

    for (size_t i = 0; i < 32; i++)
        key[i] = (uint8_t)(i * 11 + 5);
    for (size_t i = 0; i < sizeof(iv); i++)
        iv[i] = (uint8_t)(0xc0 + i);
    for (size_t mi = 0; mi < 3; mi++) {
        CK_MECHANISM_TYPE mt = mechs[mi];
        bool chacha = mt == TEST_CKM_CHACHA20_POLY1305;
        size_t ivlen = mt == CKM_AES_CCM ? 13 : 12, tl = mt == CKM_AES_CCM ? 10 : 16;
        CK_OBJECT_HANDLE k = key_of(chacha ? TEST_CKK_CHACHA20 : CKK_AES, key, chacha ? 32 : 24, NULL, 0);
        CK_MECHANISM mm = {mt, NULL, 0};
        CK(f->C_MessageEncryptInit(h, &mm, k));
        for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
            size_t len = lens[li];
            CK_GCM_PARAMS gp = {iv, 12, 96, counting + 3, 21, tl * 8};
            test_ccm_params cp = {len, iv, 13, counting + 3, 21, tl};
            test_chacha_params xp = {iv, 12, counting + 3, 21};
            CK_MECHANISM sm = {mt, &gp, sizeof(gp)};
            if (mt == CKM_AES_CCM)
                sm.pParameter = &cp, sm.ulParameterLen = sizeof(cp);
            else if (chacha)
                sm.pParameter = &xp, sm.ulParameterLen = sizeof(xp);
            assert_int_equal(crypt1(true, &sm, k, counting + 50, len, single), len + tl);
            msg_param p = mparam(mt, iv, ivlen, tag, tl, len, TEST_CKG_NO_GENERATE, 0);
            msg1(false, &p, counting + 3, 21, counting + 50, len, out);
            assert_bytes(out, len, single, len, "message ciphertext");
            assert_bytes(tag, tl, single + len, tl, "message tag");
            assert_int_equal(msg_parts(false, mt, &p, counting + 3, 21, counting + 50, len, out), len);
            assert_bytes(out, len, single, len, "message ciphertext in parts");
            assert_bytes(tag, tl, single + len, tl, "message tag in parts");
        }
        CK(f->C_MessageEncryptFinal(h));
    }
}

/* One C_EncryptMessage with GCM, 12-byte IV, the given generator and fixed
 * bits, decrypted again with the IV it gave back. */
static CK_RV gcm_generated(CK_OBJECT_HANDLE k, uint8_t iv[12], CK_ULONG gen, CK_ULONG fixed)
{
    uint8_t out[32], back[32], tag[16];
    msg_param p = mparam(CKM_AES_GCM, iv, 12, tag, 16, 0, gen, fixed);
    CK_ULONG n = sizeof(out);
    CK_RV rv = f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 32, out, &n);
    if (rv != CKR_OK)
        return rv;
    /* Decryption takes the IV as it is, whatever the generator says. */
    uint8_t seen[12];
    memcpy(seen, iv, 12);
    n = sizeof(back);
    CK(f->C_DecryptMessage(h, &p.u, p.len, NULL, 0, out, 32, back, &n));
    assert_memory_equal(back, counting, 32);
    assert_memory_equal(iv, seen, 12);
    return CKR_OK;
}

static void test_msg_iv_generation(void **state)
{
    (void)state;
    uint8_t key[16] = {9}, iv[12], first[12], prev[16][12];
    CK_OBJECT_HANDLE k = key_of(CKK_AES, key, 16, NULL, 0);
    CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
    static const uint8_t prefix[4] = {0xaa, 0xbb, 0xcc, 0xdd};

    CK(f->C_MessageEncryptInit(h, &gcm, k));
    CK(f->C_MessageDecryptInit(h, &gcm, k));

    /* A counter from 0 behind 32 fixed bits; a size query does not count. */
    uint8_t tag[16], out[32];
    memset(iv, 0xee, sizeof(iv));
    memcpy(iv, prefix, 4);
    msg_param q = mparam(CKM_AES_GCM, iv, 12, tag, 16, 0, TEST_CKG_GENERATE_COUNTER, 32);
    CK_ULONG n = 0;
    CK(f->C_EncryptMessage(h, &q.u, q.len, NULL, 0, counting, 32, NULL, &n));
    n = 31;
    RV(CKR_BUFFER_TOO_SMALL, f->C_EncryptMessage(h, &q.u, q.len, NULL, 0, counting, 32, out, &n));
    for (uint8_t c = 0; c < 3; c++) {
        CK(gcm_generated(k, iv, TEST_CKG_GENERATE_COUNTER, 32));
        uint8_t want[12] = {0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0, 0, 0, 0, c};
        assert_memory_equal(iv, want, 12);
    }
    /* Begin generates too, and counts on. */
    CK(f->C_EncryptMessageBegin(h, &q.u, q.len, NULL, 0));
    uint8_t want3[12] = {0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0, 0, 0, 0, 3};
    assert_memory_equal(iv, want3, 12);
    n = sizeof(out);
    CK(f->C_EncryptMessageNext(h, &q.u, q.len, counting, 5, out, &n, TEST_CKF_END_OF_MESSAGE));

    /* XOR: the caller's bits XOR the same count (4 now). */
    memset(iv, 0x0f, sizeof(iv));
    CK(gcm_generated(k, iv, TEST_CKG_GENERATE_COUNTER_XOR, 64));
    uint8_t wantx[12] = {0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0b};
    assert_memory_equal(iv, wantx, 12);

    /* The counter belongs to the operation: a new one starts at 0. A
     * counter of 4 bits (92 fixed) gives 16 IVs, then no more: the
     * operation stays, an IV the caller gives still works. */
    CK(f->C_MessageEncryptFinal(h));
    CK(f->C_MessageEncryptInit(h, &gcm, k));
    for (int c = 0; c < 16; c++) {
        memset(iv, 0xff, sizeof(iv));
        CK(gcm_generated(k, iv, TEST_CKG_GENERATE_COUNTER, 92));
        assert_memory_equal(iv, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11);
        assert_int_equal(iv[11], 0xf0 | c);
    }
    RV(CKR_DATA_LEN_RANGE, gcm_generated(k, iv, TEST_CKG_GENERATE_COUNTER, 92));
    RV(CKR_DATA_LEN_RANGE, gcm_generated(k, iv, TEST_CKG_GENERATE, 92));
    CK(gcm_generated(k, iv, TEST_CKG_NO_GENERATE, 0));
    /* No bits left to generate, or more fixed than there are. */
    RV(CKR_MECHANISM_PARAM_INVALID, gcm_generated(k, iv, TEST_CKG_GENERATE_COUNTER, 96));
    RV(CKR_MECHANISM_PARAM_INVALID, gcm_generated(k, iv, TEST_CKG_GENERATE_COUNTER, 97));
    RV(CKR_MECHANISM_PARAM_INVALID, gcm_generated(k, iv, 5 /* no such generator */, 0));

    /* Random: at least 64 bits of it, the fixed ones kept. */
    for (int i = 0; i < 2; i++) {
        memcpy(iv, prefix, 4);
        CK(gcm_generated(k, iv, TEST_CKG_GENERATE_RANDOM, 32));
        assert_memory_equal(iv, prefix, 4);
        if (i)
            assert_memory_not_equal(iv, first, 12);
        memcpy(first, iv, 12);
    }
    RV(CKR_MECHANISM_PARAM_INVALID, gcm_generated(k, iv, TEST_CKG_GENERATE_RANDOM, 33));

    /* The token's own choice: never the same IV twice in an operation,
     * even with 4 bits (a counter from a random start). */
    CK(f->C_MessageEncryptFinal(h));
    CK(f->C_MessageEncryptInit(h, &gcm, k));
    for (int c = 0; c < 16; c++) {
        memcpy(iv, prefix, 4);
        memset(iv + 4, 0, 8);
        CK(gcm_generated(k, iv, TEST_CKG_GENERATE, 92));
        assert_memory_equal(iv, prefix, 4);
        assert_int_equal(iv[11] & 0xf0, 0);
        for (int d = 0; d < c; d++)
            assert_memory_not_equal(iv, prev[d], 12);
        memcpy(prev[c], iv, 12);
    }
    RV(CKR_DATA_LEN_RANGE, gcm_generated(k, iv, TEST_CKG_GENERATE, 92));
    CK(gcm_generated(k, iv, TEST_CKG_GENERATE, 0)); /* 64 bits of counter: plenty */

    /* CCM nonces: 13 bytes, the last 5 counted. */
    CK_MECHANISM ccm = {CKM_AES_CCM, NULL, 0};
    uint8_t nonce[13], mac[8], back[32];
    CK(f->C_MessageEncryptFinal(h));
    CK(f->C_MessageDecryptFinal(h));
    CK(f->C_MessageEncryptInit(h, &ccm, k));
    CK(f->C_MessageDecryptInit(h, &ccm, k));
    for (uint8_t c = 0; c < 2; c++) {
        memset(nonce, 0x33, sizeof(nonce));
        msg_param p = mparam(CKM_AES_CCM, nonce, 13, mac, 8, 32, TEST_CKG_GENERATE_COUNTER, 64);
        msg1(false, &p, NULL, 0, counting, 32, out);
        uint8_t want[13] = {0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0, 0, 0, 0, c};
        assert_memory_equal(nonce, want, 13);
        msg1(true, &p, NULL, 0, out, 32, back);
        assert_memory_equal(back, counting, 32);
    }
    CK(f->C_MessageEncryptFinal(h));
    CK(f->C_MessageDecryptFinal(h));
}

static void test_msg_states(void **state)
{
    (void)state;
    uint8_t key[16] = {4}, ckey[32] = {5}, iv[12] = {6}, tag[16], out[64];
    CK_OBJECT_HANDLE k = key_of(CKK_AES, key, 16, NULL, 0), chacha = key_of(TEST_CKK_CHACHA20, ckey, 32, NULL, 0);
    CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
    msg_param p = mparam(CKM_AES_GCM, iv, 12, tag, 16, 0, TEST_CKG_NO_GENERATE, 0);
    CK_ULONG n = sizeof(out);

    /* Nothing before the init. */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessageBegin(h, &p.u, p.len, NULL, 0));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_MessageEncryptFinal(h));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_MessageDecryptFinal(h));

    /* A message-based operation cannot be saved, and saving fails without ending it. */
    CK_ULONG slen = 0;
    CK(f->C_MessageEncryptInit(h, &gcm, k));
    RV(CKR_STATE_UNSAVEABLE, f->C_GetOperationState(h, NULL, &slen));
    n = sizeof(out);
    CK(f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));
    CK(f->C_MessageEncryptFinal(h));
    n = sizeof(out);

    /* What the init refuses. A parameter there is a message's (as in the
     * specification's example) or none. */
    CK_MECHANISM cbc = {CKM_AES_CBC, iv, 16}, ecb = {CKM_AES_ECB, NULL, 0};
    CK_MECHANISM withparam = {CKM_AES_GCM, &p.u, p.len - 1};
    CK_ATTRIBUTE noenc = {CKA_ENCRYPT, &no, 1};
    RV(CKR_MECHANISM_INVALID, f->C_MessageEncryptInit(h, &cbc, k));
    RV(CKR_MECHANISM_INVALID, f->C_MessageDecryptInit(h, &ecb, k));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_MessageEncryptInit(h, &withparam, k));
    withparam.pParameter = NULL;
    withparam.ulParameterLen = p.len;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_MessageEncryptInit(h, &withparam, k));
    withparam.pParameter = &p.u;
    CK(f->C_MessageEncryptInit(h, &withparam, k));
    /* A NULL mechanism ends the operation (PKCS#11 3.0), a message in parts
     * with it; with none active, it is a bad argument (test_rv). */
    CK(f->C_EncryptMessageBegin(h, &p.u, p.len, NULL, 0));
    CK(f->C_MessageEncryptInit(h, NULL, k));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_MessageEncryptFinal(h));
    RV(CKR_ARGUMENTS_BAD, f->C_MessageEncryptInit(h, NULL, k));
    RV(CKR_ARGUMENTS_BAD, f->C_MessageDecryptInit(h, NULL, k));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_MessageEncryptInit(h, &gcm, chacha));
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_MessageEncryptInit(h, &gcm, key_of(CKK_AES, key, 16, &noenc, 1)));
    RV(CKR_KEY_HANDLE_INVALID, f->C_MessageEncryptInit(h, &gcm, 0x7fff1234));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_MessageEncryptInit(h + 1000, &gcm, k));

    /* One message-based operation of each kind at a time, besides C_EncryptInit's. */
    CK(f->C_MessageEncryptInit(h, &gcm, k));
    RV(CKR_OPERATION_ACTIVE, f->C_MessageEncryptInit(h, &gcm, k));
    CK(f->C_MessageDecryptInit(h, &gcm, k));
    CK_GCM_PARAMS sp = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM single = {CKM_AES_GCM, &sp, sizeof(sp)};
    CK(f->C_EncryptInit(h, &single, k));
    CK(f->C_SessionCancel(h, CKF_ENCRYPT));

    /* Bad parameters fail the message, not the operation. */
    n = sizeof(out);
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptMessage(h, NULL, 0, NULL, 0, counting, 8, out, &n));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptMessage(h, &p.u, p.len - 1, NULL, 0, counting, 8, out, &n));
    msg_param bad = p;
    bad.u.g.pTag = NULL;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptMessage(h, &bad.u, bad.len, NULL, 0, counting, 8, out, &n));
    bad = p;
    bad.u.g.ulTagBits = 100;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptMessage(h, &bad.u, bad.len, NULL, 0, counting, 8, out, &n));
    bad = p;
    bad.u.g.ulIvLen = 0;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptMessage(h, &bad.u, bad.len, NULL, 0, counting, 8, out, &n));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptMessage(h, &p.u, p.len, NULL, 3, counting, 8, out, &n));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, NULL));
    CK(f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));

    /* Next before Begin; Begin twice; a whole message while one is in parts. */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    CK(f->C_EncryptMessageBegin(h, &p.u, p.len, counting, 4));
    RV(CKR_OPERATION_ACTIVE, f->C_EncryptMessageBegin(h, &p.u, p.len, NULL, 0));
    RV(CKR_OPERATION_ACTIVE, f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));
    /* A short buffer and a size query keep the message; unknown flags end it. */
    n = 7;
    RV(CKR_BUFFER_TOO_SMALL, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    assert_int_equal(n, 8);
    CK(f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, NULL, &n, TEST_CKF_END_OF_MESSAGE));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 2));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    /* So does a bad parameter, or another tag length than Begin's. */
    CK(f->C_EncryptMessageBegin(h, &p.u, p.len, NULL, 0));
    n = sizeof(out);
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptMessageNext(h, &p.u, p.len + 1, counting, 8, out, &n, 0));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    CK(f->C_EncryptMessageBegin(h, &p.u, p.len, NULL, 0));
    bad = p;
    bad.u.g.ulTagBits = 96;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptMessageNext(h, &bad.u, bad.len, counting, 8, out, &n, 0));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    /* C_MessageEncryptFinal ends a message in parts with the operation. */
    CK(f->C_EncryptMessageBegin(h, &p.u, p.len, NULL, 0));
    CK(f->C_MessageEncryptFinal(h));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessageNext(h, &p.u, p.len, counting, 8, out, &n, 0));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));

    /* Decryption in parts: nothing out before the tag; a bad one ends the
     * message, the operation goes on. */
    uint8_t ct[40], back[40];
    CK(f->C_MessageEncryptInit(h, &gcm, k));
    n = sizeof(ct);
    CK(f->C_EncryptMessage(h, &p.u, p.len, counting, 9, counting + 100, 40, ct, &n));
    CK(f->C_DecryptMessageBegin(h, &p.u, p.len, counting, 9));
    n = sizeof(back);
    CK(f->C_DecryptMessageNext(h, &p.u, p.len, ct, 30, back, &n, 0));
    assert_int_equal(n, 0);
    tag[5] ^= 1;
    n = sizeof(back);
    RV(TEST_CKR_AEAD_DECRYPT_FAILED,
       f->C_DecryptMessageNext(h, &p.u, p.len, ct + 30, 10, back, &n, TEST_CKF_END_OF_MESSAGE));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptMessageNext(h, &p.u, p.len, ct, 1, back, &n, 0));
    tag[5] ^= 1;
    n = sizeof(back);
    CK(f->C_DecryptMessage(h, &p.u, p.len, counting, 9, ct, 40, back, &n));
    assert_memory_equal(back, counting + 100, 40);

    /* C_SessionCancel ends each kind by its flag. */
    CK(f->C_SessionCancel(h, TEST_CKF_MESSAGE_DECRYPT));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptMessage(h, &p.u, p.len, counting, 9, ct, 40, back, &n));
    CK(f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));
    CK(f->C_SessionCancel(h, TEST_CKF_MESSAGE_ENCRYPT));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptMessage(h, &p.u, p.len, NULL, 0, counting, 8, out, &n));

    /* CCM: ulDataLen bytes, in one call or in all the parts. */
    CK_MECHANISM ccm = {CKM_AES_CCM, NULL, 0};
    uint8_t nonce[12] = {7}, mac[8];
    msg_param c = mparam(CKM_AES_CCM, nonce, 12, mac, 8, 20, TEST_CKG_NO_GENERATE, 0);
    CK(f->C_MessageEncryptInit(h, &ccm, k));
    CK(f->C_MessageDecryptInit(h, &ccm, k));
    n = sizeof(out);
    RV(CKR_DATA_LEN_RANGE, f->C_EncryptMessage(h, &c.u, c.len, NULL, 0, counting, 19, out, &n));
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_DecryptMessage(h, &c.u, c.len, NULL, 0, counting, 21, out, &n));
    CK(f->C_EncryptMessageBegin(h, &c.u, c.len, NULL, 0));
    CK(f->C_EncryptMessageNext(h, &c.u, c.len, counting, 15, out, &n, 0));
    assert_int_equal(n, 0);
    RV(CKR_DATA_LEN_RANGE, f->C_EncryptMessageNext(h, &c.u, c.len, counting, 6, out, &n, 0));
    CK(f->C_EncryptMessageBegin(h, &c.u, c.len, NULL, 0));
    n = sizeof(out);
    CK(f->C_EncryptMessageNext(h, &c.u, c.len, counting, 15, out, &n, 0));
    RV(CKR_DATA_LEN_RANGE, f->C_EncryptMessageNext(h, &c.u, c.len, counting, 4, out, &n, TEST_CKF_END_OF_MESSAGE));
    n = sizeof(out);
    CK(f->C_EncryptMessage(h, &c.u, c.len, NULL, 0, counting, 20, out, &n));
    msg_param other = mparam(CKM_AES_CCM, nonce, 12, mac, 8, 21, TEST_CKG_NO_GENERATE, 0);
    CK(f->C_DecryptMessageBegin(h, &c.u, c.len, NULL, 0));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptMessageNext(h, &other.u, other.len, out, 20, back, &n, 0));
    CK(f->C_MessageEncryptFinal(h));
    CK(f->C_MessageDecryptFinal(h));

    /* Exactly the AEAD mechanisms encrypt messages, exactly the MACs sign
     * them; both kinds in parts too. */
    CK_MECHANISM_TYPE list[128];
    CK_ULONG nm = 128;
    int aeads = 0, macs = 0;
    CK(f->C_GetMechanismList(slot, list, &nm));
    for (CK_ULONG i = 0; i < nm; i++) {
        CK_MECHANISM_INFO mi;
        CK_MECHANISM_TYPE t = list[i];
        CK(f->C_GetMechanismInfo(slot, t, &mi));
        bool aead = t == CKM_AES_GCM || t == CKM_AES_CCM || t == TEST_CKM_CHACHA20_POLY1305;
        bool is_mac = t == CKM_AES_CMAC || t == CKM_AES_CMAC_GENERAL || t == CKM_DES3_CMAC ||
                      t == CKM_DES3_CMAC_GENERAL || t == CKM_SHA_1_HMAC || t == CKM_SHA_1_HMAC_GENERAL ||
                      t == CKM_SHA224_HMAC || t == CKM_SHA224_HMAC_GENERAL || t == CKM_SHA256_HMAC ||
                      t == CKM_SHA256_HMAC_GENERAL || t == CKM_SHA384_HMAC || t == CKM_SHA384_HMAC_GENERAL ||
                      t == CKM_SHA512_HMAC || t == CKM_SHA512_HMAC_GENERAL || t == 0x2B6 || t == 0x2B1 ||
                      t == 0x2C1 || t == 0x2D1 /* CKM_SHA3_{224,256,384,512}_HMAC */;
        CK_FLAGS crypt = TEST_CKF_MESSAGE_ENCRYPT | TEST_CKF_MESSAGE_DECRYPT,
                 sign = TEST_CKF_MESSAGE_SIGN | TEST_CKF_MESSAGE_VERIFY;
        assert_int_equal(mi.flags & (crypt | sign | TEST_CKF_MULTI_MESSAGE),
                         (aead ? crypt : 0) | (is_mac ? sign : 0) | (aead || is_mac ? TEST_CKF_MULTI_MESSAGE : 0));
        aeads += aead;
        macs += is_mac;
    }
    assert_int_equal(aeads, 3);
    assert_int_equal(macs, 18);
}

/* Message-based MACs: RFC 4231 test case 2 (HMAC-SHA256) and RFC 4493
 * example 2 (AES-CMAC), both checked with the openssl command; several
 * messages per operation, in one call and in parts; _GENERAL lengths; the
 * init's refusals and the states. */
static void test_msg_mac(void **state)
{
    (void)state;
    static const char msg[] = "what do ya want for nothing?";
    const size_t len = sizeof(msg) - 1;
    CK_ATTRIBUTE macuse[] = {{CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_OBJECT_HANDLE k = key_of(CKK_GENERIC_SECRET, (const uint8_t *)"Jefe", 4, macuse, 2);
    CK_MECHANISM hm = {CKM_SHA256_HMAC, NULL, 0};
    uint8_t want[32], sig[32], bad[32];
    CK_ULONG n, dummy = 0;

    unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", want, sizeof(want));
    CK(f->C_MessageSignInit(h, &hm, k));
    CK(f->C_MessageVerifyInit(h, &hm, k));
    for (int round = 0; round < 2; round++) {
        n = 0;
        CK(f->C_SignMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, NULL, &n));
        assert_int_equal(n, 32);
        n = 31;
        RV(CKR_BUFFER_TOO_SMALL, f->C_SignMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, sig, &n));
        assert_int_equal(n, 32);
        CK(f->C_SignMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, sig, &n));
        assert_bytes(sig, n, want, 32, "RFC 4231 test case 2, message-based");
        CK(f->C_VerifyMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, want, 32));
        memcpy(bad, want, 32);
        bad[31] ^= 1;
        RV(CKR_SIGNATURE_INVALID, f->C_VerifyMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, bad, 32));
        RV(CKR_SIGNATURE_LEN_RANGE, f->C_VerifyMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, want, 31));

        /* In parts: the last part is the one that asks for the MAC; a size
         * query or a short buffer there takes nothing in. */
        memset(sig, 0, sizeof(sig));
        CK(f->C_SignMessageBegin(h, NULL, 0));
        CK(f->C_SignMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg, 5, NULL, NULL));
        n = 0;
        CK(f->C_SignMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg + 5, len - 5, NULL, &n));
        assert_int_equal(n, 32);
        n = 31;
        RV(CKR_BUFFER_TOO_SMALL, f->C_SignMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg + 5, len - 5, sig, &n));
        n = 32;
        CK(f->C_SignMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg + 5, len - 5, sig, &n));
        assert_bytes(sig, n, want, 32, "RFC 4231 test case 2, in parts");
        RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg, 1, NULL, NULL));
        CK(f->C_VerifyMessageBegin(h, NULL, 0));
        CK(f->C_VerifyMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg, 9, NULL, 0));
        CK(f->C_VerifyMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg + 9, len - 9, want, 32));
    }
    /* No per-message parameter; one message at a time; a failure ends the
     * message, not the operation. */
    n = sizeof(sig);
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_SignMessage(h, &dummy, sizeof(dummy), (CK_BYTE_PTR)msg, len, sig, &n));
    CK(f->C_SignMessageBegin(h, NULL, 0));
    RV(CKR_OPERATION_ACTIVE, f->C_SignMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, sig, &n));
    RV(CKR_OPERATION_ACTIVE, f->C_SignMessageBegin(h, NULL, 0));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_SignMessageNext(h, &dummy, sizeof(dummy), (CK_BYTE_PTR)msg, 1, NULL, NULL));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg, 1, NULL, NULL));
    CK(f->C_VerifyMessageBegin(h, NULL, 0));
    RV(CKR_SIGNATURE_INVALID, f->C_VerifyMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg, len, bad, 32));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyMessageNext(h, NULL, 0, (CK_BYTE_PTR)msg, 1, NULL, 0));
    n = sizeof(sig);
    CK(f->C_SignMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, sig, &n));
    CK(f->C_MessageSignFinal(h));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, sig, &n));
    CK(f->C_SessionCancel(h, TEST_CKF_MESSAGE_VERIFY));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_VerifyMessage(h, NULL, 0, (CK_BYTE_PTR)msg, len, want, 32));

    /* AES-CMAC, and its _GENERAL form: the length the init gave (copied). */
    uint8_t key[16], m16[16], cmac[16];
    unhex("2b7e151628aed2a6abf7158809cf4f3c", key, sizeof(key));
    unhex("6bc1bee22e409f96e93d7e117393172a", m16, sizeof(m16));
    unhex("070a16b46b4d4144f79bdd9dd04a287c", cmac, sizeof(cmac));
    CK_OBJECT_HANDLE aes = key_of(CKK_AES, key, 16, macuse, 2);
    CK_MECHANISM cm = {CKM_AES_CMAC, NULL, 0};
    CK_ULONG eight = 8;
    CK_MECHANISM cg = {CKM_AES_CMAC_GENERAL, &eight, sizeof(eight)};
    CK(f->C_MessageSignInit(h, &cm, aes));
    n = sizeof(sig);
    CK(f->C_SignMessage(h, NULL, 0, m16, 16, sig, &n));
    assert_bytes(sig, n, cmac, 16, "RFC 4493 example 2, message-based");
    CK(f->C_MessageSignFinal(h));
    CK(f->C_MessageSignInit(h, &cg, aes));
    eight = 12;
    n = sizeof(sig);
    CK(f->C_SignMessage(h, NULL, 0, m16, 16, sig, &n));
    assert_bytes(sig, n, cmac, 8, "RFC 4493 example 2, 8 bytes");
    CK(f->C_MessageVerifyInit(h, &cg, aes));
    CK(f->C_VerifyMessage(h, NULL, 0, m16, 16, cmac, 12));

    /* What the init refuses, as C_SignInit does; a NULL mechanism ends it. */
    CK_MECHANISM rsa = {CKM_SHA256_RSA_PKCS, NULL, 0}, gcm = {CKM_AES_GCM, NULL, 0};
    CK_ULONG too_long = 33;
    CK_MECHANISM hg = {CKM_SHA256_HMAC_GENERAL, &too_long, sizeof(too_long)}, hp = {CKM_SHA256_HMAC, &eight, 8};
    CK_ATTRIBUTE nosign = {CKA_SIGN, &no, 1};
    RV(CKR_OPERATION_ACTIVE, f->C_MessageSignInit(h, &cm, aes));
    CK(f->C_MessageSignInit(h, NULL, aes));
    CK(f->C_MessageVerifyInit(h, NULL, aes));
    RV(CKR_MECHANISM_INVALID, f->C_MessageSignInit(h, &rsa, k));
    RV(CKR_MECHANISM_INVALID, f->C_MessageVerifyInit(h, &gcm, aes));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_MessageSignInit(h, &cm, k));
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_MessageSignInit(h, &hm, key_of(CKK_GENERIC_SECRET, key, 16, &nosign, 1)));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_MessageSignInit(h, &hg, k));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_MessageSignInit(h, &hp, k));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chacha20_poly1305_rfc8439),
        cmocka_unit_test(test_ccm_vectors),
        cmocka_unit_test(test_ccm_against_openssl),
        cmocka_unit_test(test_chacha20_keys),
        cmocka_unit_test(test_aead_errors),
        cmocka_unit_test(test_msg_known_answers),
        cmocka_unit_test(test_msg_matches_single_part),
        cmocka_unit_test(test_msg_iv_generation),
        cmocka_unit_test(test_msg_states),
        cmocka_unit_test(test_msg_mac),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
