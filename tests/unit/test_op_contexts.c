/* The OpenSSL contexts a session's spare operation keeps (tok_op.c:
 * recycle, scrub): HMAC contexts kept re-keyed under zeros, cipher contexts
 * kept reset, and the cipher table of tok_cipher.c. Written as a hostile
 * test of that change: every output compared with OpenSSL over random
 * mixtures (HMAC digests, _GENERAL lengths, keys of 1 to 512 bytes, CMAC
 * and HMAC on one spare, saved operation states, threads, a fork; AES
 * modes and key sizes, DES3, CCM, ChaCha20-Poly1305, failed inits, wrong key
 * types), and a scan of the process's dumpable memory (/proc/self/mem, the
 * regions not marked excluded from core dumps) that finds an HMAC key and
 * its inner and outer states while HMACs run, and must find none after. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#undef OPENSSL_NO_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/hmac.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "tests/unit/test_p11.h"
#include <sys/mman.h>

#define CKM_SHA3_256_HMAC 0x2B1UL
#define CKM_SHA3_512_HMAC 0x2D1UL

static unsigned long rs = 0x9e3779b97f4a7c15UL;
static unsigned rnd(unsigned n) { return xorshift_below(&rs, n); }
static void fill(CK_BYTE *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (CK_BYTE)rnd(256);
}

static CK_OBJECT_HANDLE secret(CK_SESSION_HANDLE h, CK_KEY_TYPE kt, const CK_BYTE *v, CK_ULONG len)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, (void *)v, len},
        {CKA_TOKEN, &no, 1},            {CKA_PRIVATE, &no, 1},           {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},         {CKA_SIGN, &yes, 1},             {CKA_VERIFY, &yes, 1},
    };
    CK(f->C_CreateObject(h, t, sizeof(t) / sizeof(t[0]), &o));
    return o;
}

static size_t ossl_hmac(const char *md, const CK_BYTE *key, size_t kl, const CK_BYTE *in, size_t inlen, CK_BYTE *out)
{
    unsigned n = 0;
    assert_non_null(HMAC(EVP_get_digestbyname(md), key, (int)kl, in, inlen, out, &n));
    return n;
}

/* ---- HMAC mixtures ------------------------------------------------------- */

#define NK 10
static const size_t klens[NK] = {1, 20, 32, 64, 65, 128, 129, 136, 200, 512};
static CK_BYTE kv[NK][512];
static CK_OBJECT_HANDLE kh[NK];

static const struct {
    CK_MECHANISM_TYPE m, g;
    const char *md;
    size_t len;
} hm[] = {
    {CKM_SHA_1_HMAC, CKM_SHA_1_HMAC_GENERAL, "SHA1", 20},     {CKM_SHA224_HMAC, CKM_SHA224_HMAC_GENERAL, "SHA224", 28},
    {CKM_SHA256_HMAC, CKM_SHA256_HMAC_GENERAL, "SHA256", 32}, {CKM_SHA384_HMAC, CKM_SHA384_HMAC_GENERAL, "SHA384", 48},
    {CKM_SHA512_HMAC, CKM_SHA512_HMAC_GENERAL, "SHA512", 64}, {CKM_SHA3_256_HMAC, 0, "SHA3-256", 32},
    {CKM_SHA3_512_HMAC, 0, "SHA3-512", 64},
};
#define NH (sizeof(hm) / sizeof(hm[0]))

/* One random HMAC step; returns 0 on success, a line number on failure (no
 * cmocka asserts: also run on threads). */
static int hmac_step(CK_SESSION_HANDLE h)
{
    unsigned ki = rnd(NK), mi = rnd(NH), what = rnd(9);
    bool general = hm[mi].g && rnd(2);
    CK_ULONG glen = 1 + rnd((unsigned)hm[mi].len);
    CK_MECHANISM m = {general ? hm[mi].g : hm[mi].m, general ? &glen : NULL, general ? sizeof(glen) : 0};
    CK_BYTE in[300], want[64], out[64], junk[100];
    CK_ULONG inlen = rnd(300), n, outl = general ? glen : hm[mi].len;
    fill(in, inlen);
    fill(junk, sizeof(junk));
    ossl_hmac(hm[mi].md, kv[ki], klens[ki], in, inlen, want);
#define T(c)                                                                                                            \
    do {                                                                                                               \
        CK_RV r_ = (c);                                                                                                \
        if (r_ != CKR_OK) {                                                                                            \
            fprintf(stderr, "line %d: rv 0x%lx what %u key %zu md %s gen %d\n", __LINE__, r_, what, klens[ki],       \
                    hm[mi].md, general);                                                                               \
            return __LINE__;                                                                                           \
        }                                                                                                              \
    } while (0)
#define E(want, c)                                                                                                      \
    do {                                                                                                               \
        CK_RV r_ = (c);                                                                                                \
        if (r_ != (want)) {                                                                                            \
            fprintf(stderr, "line %d: rv 0x%lx (want 0x%lx) what %u key %zu md %s gen %d\n", __LINE__, r_,         \
                    (CK_ULONG)(want), what, klens[ki], hm[mi].md, general);                                            \
            return __LINE__;                                                                                           \
        }                                                                                                              \
    } while (0)
#define SAME()                                                                                                          \
    do {                                                                                                               \
        if (n != outl || memcmp(out, want, n)) {                                                                       \
            fprintf(stderr, "line %d: MAC differs, what %u key %zu md %s gen %d\n", __LINE__, what, klens[ki],        \
                    hm[mi].md, general);                                                                               \
            return __LINE__;                                                                                           \
        }                                                                                                              \
    } while (0)
    switch (what) {
    case 0: /* one-shot */
        T(f->C_SignInit(h, &m, kh[ki]));
        n = sizeof(out);
        T(f->C_Sign(h, in, inlen, out, &n));
        SAME();
        break;
    case 1: /* parts */
        T(f->C_SignInit(h, &m, kh[ki]));
        for (CK_ULONG o = 0; o < inlen;) {
            CK_ULONG p = 1 + rnd(inlen - o);
            T(f->C_SignUpdate(h, in + o, p));
            o += p;
        }
        n = sizeof(out);
        T(f->C_SignFinal(h, out, &n));
        SAME();
        break;
    case 2: /* size query, too small, then done */
        T(f->C_SignInit(h, &m, kh[ki]));
        n = 0;
        T(f->C_Sign(h, in, inlen, NULL, &n));
        if (n != outl)
            return __LINE__;
        n = outl - 1;
        if (outl > 1)
            E(CKR_BUFFER_TOO_SMALL, f->C_Sign(h, in, inlen, out, &n));
        n = sizeof(out);
        T(f->C_Sign(h, in, inlen, out, &n));
        SAME();
        break;
    case 3: /* abandoned half way, with junk: the next must not see it */
        T(f->C_SignInit(h, &m, kh[ki]));
        T(f->C_SignUpdate(h, junk, 1 + rnd(99)));
        E(CKR_OPERATION_ACTIVE, f->C_SignInit(h, &m, kh[rnd(NK)]));
        T(f->C_SignInit(h, NULL, 0));
        T(f->C_SignInit(h, &m, kh[ki]));
        T(f->C_SignUpdate(h, in, inlen));
        n = sizeof(out);
        T(f->C_SignFinal(h, out, &n));
        SAME();
        break;
    case 4: /* verify good, one-shot */
        T(f->C_VerifyInit(h, &m, kh[ki]));
        T(f->C_Verify(h, in, inlen, want, outl));
        break;
    case 5: /* verify good, parts */
        T(f->C_VerifyInit(h, &m, kh[ki]));
        T(f->C_VerifyUpdate(h, in, inlen / 2));
        T(f->C_VerifyUpdate(h, in + inlen / 2, inlen - inlen / 2));
        T(f->C_VerifyFinal(h, want, outl));
        break;
    case 6: /* verify bad MAC, then good with another key on the same spare */
        want[rnd((unsigned)outl)] ^= (CK_BYTE)(1 + rnd(255));
        T(f->C_VerifyInit(h, &m, kh[ki]));
        E(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, inlen, want, outl));
        break;
    case 7: /* verify abandoned with junk, then verify */
        T(f->C_VerifyInit(h, &m, kh[ki]));
        T(f->C_VerifyUpdate(h, junk, 50));
        T(f->C_VerifyInit(h, NULL, 0));
        T(f->C_VerifyInit(h, &m, kh[ki]));
        T(f->C_Verify(h, in, inlen, want, outl));
        break;
    default: { /* a wrong length verify ends the op; then sign */
        T(f->C_VerifyInit(h, &m, kh[ki]));
        CK_RV r = f->C_Verify(h, in, inlen, want, outl + 1);
        if (r != CKR_SIGNATURE_LEN_RANGE && r != CKR_SIGNATURE_INVALID)
            return __LINE__;
        (void)f->C_VerifyInit(h, NULL, 0); /* if still active */
        T(f->C_SignInit(h, &m, kh[ki]));
        n = sizeof(out);
        T(f->C_Sign(h, in, inlen, out, &n));
        SAME();
        break;
    }
    }
    return 0;
}

static CK_SLOT_ID slot;

static void make_hmac_keys(CK_SESSION_HANDLE h)
{
    for (int i = 0; i < NK; i++) {
        fill(kv[i], klens[i]);
        kh[i] = secret(h, CKK_GENERIC_SECRET, kv[i], klens[i]);
    }
}

static void test_hmac_mix(void **state)
{
    (void)state;
    slot = make_token("hostile");
    CK_SESSION_HANDLE h = user_session(slot, true), h2;
    make_hmac_keys(h);
    CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2));
    for (int i = 0; i < 6000; i++)
        assert_int_equal(hmac_step(rnd(3) ? h : h2), 0);
    /* A, B, A with the same digest: sign/verify alternating */
    for (int i = 0; i < 200; i++) {
        CK_BYTE out[64], want[64];
        CK_ULONG n = sizeof(out);
        int ki = i % 3 == 1 ? 4 : 1;
        CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
        CK(f->C_SignInit(h, &m, kh[ki]));
        CK(f->C_Sign(h, (CK_BYTE_PTR) "abc", 3, out, &n));
        ossl_hmac("SHA256", kv[ki], klens[ki], (CK_BYTE *)"abc", 3, want);
        assert_memory_equal(out, want, 32);
    }
    CK(f->C_CloseSession(h2));
    CK(f->C_CloseSession(h));
}

/* CMAC and HMAC alternating on the sign spare; CKK_SHA256_HMAC keys; key destroyed. */
static void test_hmac_cmac_alternate(void **state)
{
    (void)state;
    slot = make_token("hostile");
    CK_SESSION_HANDLE h = user_session(slot, true);
    make_hmac_keys(h);
    CK_BYTE aes[32];
    fill(aes, 32);
    CK_OBJECT_HANDLE ka = secret(h, CKK_AES, aes, 32);
    CK_OBJECT_HANDLE ks = secret(h, CKK_SHA256_HMAC, kv[3], klens[3]);
    for (int i = 0; i < 300; i++) {
        CK_BYTE in[64], out[64], want[64];
        CK_ULONG n = sizeof(out);
        fill(in, 64);
        switch (rnd(4)) {
        case 0: {
            CK_MECHANISM m = {CKM_AES_CMAC, NULL, 0};
            size_t wl = 0;
            CK(f->C_SignInit(h, &m, ka));
            CK(f->C_Sign(h, in, 64, out, &n));
            EVP_MAC *mac = EVP_MAC_fetch(NULL, "CMAC", NULL);
            EVP_MAC_CTX *x = EVP_MAC_CTX_new(mac);
            OSSL_PARAM p[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, "AES-256-CBC", 0),
                              OSSL_PARAM_construct_end()};
            assert_true(EVP_MAC_init(x, aes, 32, p) && EVP_MAC_update(x, in, 64) && EVP_MAC_final(x, want, &wl, 64));
            EVP_MAC_CTX_free(x);
            EVP_MAC_free(mac);
            assert_int_equal(n, 16);
            assert_memory_equal(out, want, 16);
            break;
        }
        case 1: {
            CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
            CK(f->C_SignInit(h, &m, ks));
            CK(f->C_Sign(h, in, 64, out, &n));
            ossl_hmac("SHA256", kv[3], klens[3], in, 64, want);
            assert_memory_equal(out, want, 32);
            break;
        }
        default:
            assert_int_equal(hmac_step(h), 0);
        }
    }
    /* Destroying the key used last: refused next. */
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE out[64];
    CK_ULONG n = sizeof(out);
    CK(f->C_SignInit(h, &m, kh[2]));
    CK(f->C_Sign(h, (CK_BYTE_PTR) "x", 1, out, &n));
    CK(f->C_DestroyObject(h, kh[2]));
    RV(CKR_KEY_HANDLE_INVALID, f->C_SignInit(h, &m, kh[2]));
    CK(f->C_SignInit(h, &m, kh[1]));
    n = sizeof(out);
    CK(f->C_Sign(h, (CK_BYTE_PTR) "x", 1, out, &n));
    CK_BYTE want[64];
    ossl_hmac("SHA256", kv[1], klens[1], (CK_BYTE *)"x", 1, want);
    assert_memory_equal(out, want, 32);
    /* logout / login between */
    CK(f->C_Logout(h));
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    kh[2] = secret(h, CKK_GENERIC_SECRET, kv[2], klens[2]); /* the destroyed one, again */
    for (int i = 0; i < 100; i++)
        assert_int_equal(hmac_step(h), 0);
    CK(f->C_CloseSession(h));
}

/* Saved and restored states of HMACs across sessions with spares. */
static void test_hmac_opstate(void **state)
{
    (void)state;
    slot = make_token("hostile");
    CK_SESSION_HANDLE h = user_session(slot, true), h2;
    make_hmac_keys(h);
    CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2));
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE st[4096], out[64], want[64], in[100];
    CK_ULONG sl, n;
    fill(in, 100);
    for (int i = 0; i < 50; i++) {
        int a = rnd(NK), b = rnd(NK);
        /* h2's spare: key b */
        CK(f->C_SignInit(h2, &m, kh[b]));
        n = sizeof(out);
        CK(f->C_Sign(h2, in, 10, out, &n));
        CK(f->C_SignInit(h, &m, kh[a]));
        CK(f->C_SignUpdate(h, in, 40));
        sl = sizeof(st);
        CK(f->C_GetOperationState(h, st, &sl));
        CK(f->C_SetOperationState(h2, st, sl, 0, kh[a]));
        CK(f->C_SignUpdate(h2, in + 40, 60));
        n = sizeof(out);
        CK(f->C_SignFinal(h2, out, &n));
        ossl_hmac("SHA256", kv[a], klens[a], in, 100, want);
        assert_memory_equal(out, want, 32);
        CK(f->C_SignUpdate(h, in + 40, 60));
        n = sizeof(out);
        CK(f->C_SignFinal(h, out, &n));
        assert_memory_equal(out, want, 32);
        /* After the restored op, h2's spare serves key b again */
        CK(f->C_SignInit(h2, &m, kh[b]));
        n = sizeof(out);
        CK(f->C_Sign(h2, in, 100, out, &n));
        ossl_hmac("SHA256", kv[b], klens[b], in, 100, want);
        assert_memory_equal(out, want, 32);
    }
    CK(f->C_CloseSession(h2));
    CK(f->C_CloseSession(h));
}

static volatile int thread_fail;
static void *thr(void *arg)
{
    (void)arg;
    CK_SESSION_HANDLE h;
    if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK) {
        thread_fail = 1;
        return NULL;
    }
    for (int i = 0; i < 1500 && !thread_fail; i++) {
        /* rnd is not thread safe, but any sequence will do: it is data only */
        int r = hmac_step(h);
        if (r)
            thread_fail = r;
    }
    f->C_CloseSession(h);
    return NULL;
}

static void test_hmac_threads(void **state)
{
    (void)state;
    slot = make_token("hostile");
    CK_SESSION_HANDLE h = user_session(slot, true);
    make_hmac_keys(h);
    pthread_t t[6];
    for (int i = 0; i < 6; i++)
        assert_int_equal(pthread_create(&t[i], NULL, thr, NULL), 0);
    for (int i = 0; i < 6; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(thread_fail, 0);
    /* fork: the child starts again */
    for (int i = 0; i < 20; i++)
        assert_int_equal(hmac_step(h), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        CK_SESSION_HANDLE c;
        int bad = f->C_Initialize(NULL) != CKR_OK ||
                  f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &c) != CKR_OK ||
                  f->C_Login(c, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) != CKR_OK;
        if (bad)
            fprintf(stderr, "child: init/open/login failed\n");
        if (!bad) {
            /* session keys are gone: make some */
            CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
            CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
            for (int k = 0; k < NK && !bad; k++) {
                CK_ATTRIBUTE t2[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                                     {CKA_VALUE, kv[k], klens[k]},   {CKA_SIGN, &yes, 1},
                                     {CKA_VERIFY, &yes, 1}};
                bad = f->C_CreateObject(c, t2, 5, &kh[k]) != CKR_OK;
            if (bad)
                fprintf(stderr, "child: create failed\n");
            }
            for (int i = 0; i < 500 && !bad; i++)
                bad = hmac_step(c) != 0;
        }
        _exit(bad);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(hmac_step(h), 0);
    CK(f->C_CloseSession(h));
}

/* ---- ciphers ---------------------------------------------------------------- */

static size_t ossl_crypt(const char *name, const CK_BYTE *key, const CK_BYTE *iv, size_t ivlen, bool enc, bool pad,
                         const CK_BYTE *in, size_t inlen, CK_BYTE *out, size_t taglen)
{
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, name, NULL);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    bool gcm = strstr(name, "GCM") != NULL;
    int n = 0, m = 0;
    assert_non_null(c);
    assert_true(EVP_CipherInit_ex2(x, c, NULL, NULL, enc, NULL));
    if (gcm)
        assert_true(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IVLEN, (int)ivlen, NULL));
    assert_true(EVP_CipherInit_ex2(x, NULL, key, iv, enc, NULL));
    EVP_CIPHER_CTX_set_padding(x, pad);
    assert_true(EVP_CipherUpdate(x, out, &n, in, (int)inlen));
    assert_true(EVP_CipherFinal_ex(x, out + n, &m));
    n += m;
    if (gcm)
        assert_true(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, (int)taglen, out + n));
    EVP_CIPHER_CTX_free(x);
    EVP_CIPHER_free(c);
    return (size_t)n + (gcm ? taglen : 0);
}

static void test_cipher_mix(void **state)
{
    (void)state;
    slot = make_token("hostile");
    CK_SESSION_HANDLE h = user_session(slot, true);
    CK_BYTE ak[3][32], d2[16], d3[24], gs[32], ck[32];
    CK_OBJECT_HANDLE ako[3], d2o, d3o, gso, cko;
    for (int i = 0; i < 3; i++) {
        fill(ak[i], 32);
        ako[i] = secret(h, CKK_AES, ak[i], 16 + 8 * i);
    }
    fill(d2, 16);
    fill(d3, 24);
    fill(gs, 32);
    fill(ck, 32);
    d2o = secret(h, CKK_DES2, d2, 16);
    d3o = secret(h, CKK_DES3, d3, 24);
    gso = secret(h, CKK_GENERIC_SECRET, gs, 32);
    cko = secret(h, TEST_CKK_CHACHA20, ck, 32);
    /* generic secret with AES mechanisms: refused */
    CK_BYTE iv[16] = {1, 2, 3};
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, 16};
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &cbc, gso));
    CK_MECHANISM d3cbc = {CKM_DES3_CBC, iv, 8};
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &d3cbc, ako[0]));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &cbc, d3o));
    /* a chacha key with AES: refused */
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &cbc, cko));

    for (int it = 0; it < 4000; it++) {
        CK_BYTE in[200], out[260], back[260], want[260];
        CK_ULONG inlen = rnd(200), n, bl;
        bool enc_first = true;
        fill(in, inlen);
        fill(iv, 16);
        unsigned what = rnd(9), ki = rnd(3);
        char name[40];
        CK_MECHANISM m;
        CK_GCM_PARAMS g;
        CK_AES_CTR_PARAMS ctr;
        size_t wl = 0;
        CK_OBJECT_HANDLE key = ako[ki];
        const CK_BYTE *kval = ak[ki];
        size_t klen = 16 + 8 * ki;
        (void)enc_first;
        /* sometimes a failing init first: bad IV length */
        if (rnd(4) == 0) {
            CK_MECHANISM bad = {CKM_AES_CBC, iv, 15};
            RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &bad, key));
            RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &bad, key));
        }
        switch (what) {
        case 0: /* ECB */
            inlen -= inlen % 16;
            m = (CK_MECHANISM){CKM_AES_ECB, NULL, 0};
            snprintf(name, sizeof(name), "AES-%zu-ECB", klen * 8);
            wl = ossl_crypt(name, kval, NULL, 0, true, false, in, inlen, want, 0);
            break;
        case 1:
            inlen -= inlen % 16;
            m = (CK_MECHANISM){CKM_AES_CBC, iv, 16};
            snprintf(name, sizeof(name), "AES-%zu-CBC", klen * 8);
            wl = ossl_crypt(name, kval, iv, 16, true, false, in, inlen, want, 0);
            break;
        case 2:
            m = (CK_MECHANISM){CKM_AES_CBC_PAD, iv, 16};
            snprintf(name, sizeof(name), "AES-%zu-CBC", klen * 8);
            wl = ossl_crypt(name, kval, iv, 16, true, true, in, inlen, want, 0);
            break;
        case 3:
            memcpy(ctr.cb, iv, 16);
            ctr.ulCounterBits = 128;
            m = (CK_MECHANISM){CKM_AES_CTR, &ctr, sizeof(ctr)};
            snprintf(name, sizeof(name), "AES-%zu-CTR", klen * 8);
            wl = ossl_crypt(name, kval, iv, 16, true, false, in, inlen, want, 0);
            break;
        case 4: {
            size_t ivl = rnd(2) ? 12 : 1 + rnd(16);
            g = (CK_GCM_PARAMS){iv, ivl, ivl * 8, NULL, 0, rnd(2) ? 128 : 96};
            m = (CK_MECHANISM){CKM_AES_GCM, &g, sizeof(g)};
            snprintf(name, sizeof(name), "AES-%zu-GCM", klen * 8);
            wl = ossl_crypt(name, kval, iv, ivl, true, false, in, inlen, want, g.ulTagBits / 8);
            break;
        }
        case 5: /* DES3 ECB/CBC with 2 or 3 key */
        case 6: {
            bool three = rnd(2), pad = what == 6;
            key = three ? d3o : d2o;
            if (!pad)
                inlen -= inlen % 8;
            bool ecb = !pad && rnd(2);
            m = (CK_MECHANISM){ecb ? CKM_DES3_ECB : pad ? CKM_DES3_CBC_PAD : CKM_DES3_CBC, ecb ? NULL : iv, ecb ? 0 : 8};
            snprintf(name, sizeof(name), "DES-EDE%s-%s", three ? "3" : "", ecb ? "ECB" : "CBC");
            wl = ossl_crypt(name, three ? d3 : d2, ecb ? NULL : iv, 8, true, pad, in, inlen, want, 0);
            break;
        }
        case 7: { /* CCM: just round-trip */
            static test_ccm_params cp;
            cp = (test_ccm_params){inlen, iv, 12, NULL, 0, 16};
            m = (CK_MECHANISM){CKM_AES_CCM, &cp, sizeof(cp)};
            wl = (size_t)-1;
            break;
        }
        default: { /* chacha20-poly1305 round trip */
            static test_chacha_params chp;
            chp = (test_chacha_params){iv, 12, NULL, 0};
            m = (CK_MECHANISM){TEST_CKM_CHACHA20_POLY1305, &chp, sizeof(chp)};
            key = cko;
            wl = (size_t)-1;
            break;
        }
        }
        CK(f->C_EncryptInit(h, &m, key));
        n = sizeof(out);
        if (rnd(2) || what >= 7) {
            CK(f->C_Encrypt(h, in, inlen, out, &n));
        } else {
            CK_ULONG a = sizeof(out), b;
            CK(f->C_EncryptUpdate(h, in, inlen / 2, out, &a));
            b = sizeof(out) - a;
            CK(f->C_EncryptUpdate(h, in + inlen / 2, inlen - inlen / 2, out + a, &b));
            n = sizeof(out) - a - b;
            CK(f->C_EncryptFinal(h, out + a + b, &n));
            n += a + b;
        }
        if (wl != (size_t)-1) {
            if (n != wl || memcmp(out, want, n)) {
                fprintf(stderr, "it %d what %u ki %u inlen %lu n %lu wl %zu\n", it, what, ki, inlen, n, wl);
                fail();
            }
        }
        CK(f->C_DecryptInit(h, &m, key));
        bl = sizeof(back);
        CK(f->C_Decrypt(h, out, n, back, &bl));
        assert_int_equal(bl, inlen);
        assert_memory_equal(back, in, inlen);
        if (rnd(3) == 0) { /* abandon an encrypt half way */
            CK(f->C_EncryptInit(h, &m, key));
            CK_ULONG a = sizeof(out);
            if (what < 7)
                (void)f->C_EncryptUpdate(h, in, inlen, out, &a);
            CK(f->C_EncryptInit(h, NULL, 0));
        }
    }
    CK(f->C_CloseSession(h));
}

/* ---- memory: the key, its HMAC midstates, in dumpable memory ---------------- */

struct pat {
    const char *what;
    CK_BYTE v[64];
    size_t len;
};
static struct pat pats[16];
static int npats;

static void add_pat(const char *what, const void *v, size_t len)
{
    pats[npats].what = what;
    for (size_t i = 0; i < len; i++)
        pats[npats].v[i] = ((const CK_BYTE *)v)[i] ^ 0xa5; /* masked: the test holds no copy */
    pats[npats].len = len;
    npats++;
}

/* Count of each pattern in the memory a core dump would hold (no dd flag). */
static int scan(const char *when, bool print)
{
    FILE *sm = fopen("/proc/self/smaps", "r");
    int fd = open("/proc/self/mem", O_RDONLY);
    char line[512];
    unsigned long lo = 0, hi = 0;
    char perms[8] = "", path[256];
    int hits = 0;
    assert_non_null(sm);
    assert_true(fd >= 0);
    static unsigned long ranges[8192][2];
    static bool dump[8192];
    static char names[8192][96];
    int nr = 0, cur = -1;
    while (fgets(line, sizeof(line), sm)) {
        path[0] = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &lo, &hi, perms, path) >= 3 && strchr(line, '-') &&
            line[0] != 'V') {
            bool ok = perms[0] == 'r' && !strstr(line, "[vvar]") && !strstr(line, "[vsyscall]") && nr < 8192;
            cur = -1;
            if (ok) {
                cur = nr;
                ranges[nr][0] = lo;
                ranges[nr][1] = hi;
                dump[nr] = true;
                snprintf(names[nr], sizeof(names[nr]), "%.95s", line);
                nr++;
            }
        } else if (strncmp(line, "VmFlags:", 8) == 0 && cur >= 0) {
            if (strstr(line, " dd"))
                dump[cur] = false;
        }
    }
    fclose(sm);
    for (int r = 0; r < nr; r++) {
        if (!dump[r])
            continue;
        size_t len = ranges[r][1] - ranges[r][0];
        CK_BYTE *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buf == MAP_FAILED)
            continue;
        ssize_t got = pread(fd, buf, len, (off_t)ranges[r][0]);
        if (got > 0) {
            for (int p = 0; p < npats; p++) {
                CK_BYTE un[64];
                for (size_t i = 0; i < pats[p].len; i++)
                    un[i] = pats[p].v[i] ^ 0xa5;
                for (CK_BYTE *q = buf; (q = memmem(q, (size_t)got - (size_t)(q - buf), un, pats[p].len));
                     q++) {
                    if (print)
                        fprintf(stderr, "%s: %s at %lx in %s", when, pats[p].what,
                                ranges[r][0] + (unsigned long)(q - buf), names[r]);
                    hits++;
                }
                OPENSSL_cleanse(un, sizeof(un));
            }
        }
        OPENSSL_cleanse(buf, len);
        munmap(buf, len);
    }
    close(fd);
    return hits;
}

static void sha256_mid(const CK_BYTE *key, size_t kl, CK_BYTE pad, uint32_t st[8])
{
    CK_BYTE blk[64] = {0};
    SHA256_CTX c;
    memcpy(blk, key, kl);
    for (int i = 0; i < 64; i++)
        blk[i] ^= pad;
    SHA256_Init(&c);
    SHA256_Update(&c, blk, 64);
    memcpy(st, c.h, 32);
    OPENSSL_cleanse(&c, sizeof(c));
    OPENSSL_cleanse(blk, sizeof(blk));
}

static void sha512_mid(const CK_BYTE *key, size_t kl, CK_BYTE pad, uint64_t st[8])
{
    CK_BYTE blk[128] = {0};
    SHA512_CTX c;
    memcpy(blk, key, kl);
    for (int i = 0; i < 128; i++)
        blk[i] ^= pad;
    SHA512_Init(&c);
    SHA512_Update(&c, blk, 128);
    memcpy(st, c.h, 64);
    OPENSSL_cleanse(&c, sizeof(c));
    OPENSSL_cleanse(blk, sizeof(blk));
}

static void add_state_pats(const char *what, const void *st, size_t wsize, size_t n)
{
    CK_BYTE le[64], be[64];
    memcpy(le, st, wsize * n);
    for (size_t w = 0; w < n; w++)
        for (size_t b = 0; b < wsize; b++)
            be[w * wsize + b] = le[w * wsize + wsize - 1 - b];
    /* the first 16 bytes are enough to find it */
    add_pat(what, le, 16);
    add_pat(what, be, 16);
    OPENSSL_cleanse(le, sizeof(le));
    OPENSSL_cleanse(be, sizeof(be));
}

static void test_hmac_memory(void **state)
{
    (void)state;
    slot = make_token("hostile-mem");
    CK_SESSION_HANDLE h = user_session(slot, true);
    CK_BYTE key[40];
    CK_OBJECT_HANDLE k;
    uint32_t s256[8];
    uint64_t s512[8];
    fill(key, sizeof(key));
    npats = 0;
    add_pat("key (first 16 bytes)", key, 16);
    add_pat("key (last 16 bytes)", key + 24, 16);
    sha256_mid(key, sizeof(key), 0x36, s256);
    add_state_pats("SHA-256 inner state", s256, 4, 8);
    sha256_mid(key, sizeof(key), 0x5c, s256);
    add_state_pats("SHA-256 outer state", s256, 4, 8);
    sha512_mid(key, sizeof(key), 0x36, s512);
    add_state_pats("SHA-512 inner state", s512, 8, 8);
    sha512_mid(key, sizeof(key), 0x5c, s512);
    add_state_pats("SHA-512 outer state", s512, 8, 8);
    OPENSSL_cleanse(s256, sizeof(s256));
    OPENSSL_cleanse(s512, sizeof(s512));
    {
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                            {CKA_VALUE, key, sizeof(key)},  {CKA_SIGN, &yes, 1},
                            {CKA_VERIFY, &yes, 1},          {CKA_TOKEN, &yes, 1},
                            {CKA_SENSITIVE, &yes, 1}};
        CK(f->C_CreateObject(h, t, 7, &k));
    }
    OPENSSL_cleanse(key, sizeof(key));
    int base = scan("after create", true);
    fprintf(stderr, "baseline hits: %d\n", base);
    CK_BYTE out[64], in[100] = {1};
    CK_ULONG n;
    CK_MECHANISM m256 = {CKM_SHA256_HMAC, NULL, 0}, m512 = {CKM_SHA512_HMAC, NULL, 0};
    const char *env = getenv("HOSTILE_MEM_MODE");
    int mode = env ? atoi(env) : 0;
    for (int i = 0; i < 3; i++) {
        CK(f->C_SignInit(h, &m256, k));
        if (mode == 1) {
            CK(f->C_SignUpdate(h, in, 100));
            CK(f->C_SignInit(h, NULL, 0)); /* abandoned */
        } else {
            n = sizeof(out);
            CK(f->C_Sign(h, in, 100, out, &n));
        }
        CK(f->C_VerifyInit(h, &m512, k));
        if (mode == 1) {
            CK(f->C_VerifyUpdate(h, in, 100));
            CK(f->C_VerifyInit(h, NULL, 0));
        } else {
            RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, 100, in, 64));
        }
    }
    /* the scanner sees the states while an HMAC runs */
    CK(f->C_SignInit(h, &m256, k));
    CK(f->C_VerifyInit(h, &m512, k));
    int during = scan("during", true);
    fprintf(stderr, "during hits: %d\n", during);
    assert_true(during >= 4);
    CK(f->C_SignInit(h, NULL, 0));
    CK(f->C_VerifyInit(h, NULL, 0));
    int after = scan("after HMACs ended", true);
    fprintf(stderr, "after hits: %d\n", after);
    assert_int_equal(after, base);
    CK(f->C_DestroyObject(h, k));
    CK(f->C_CloseSession(h));
}

/* Keys a fresh HMAC context and a spare's may treat differently. */
static void test_hmac_odd_keys(void **state)
{
    (void)state;
    slot = make_token("hostile");
    CK_SESSION_HANDLE h = user_session(slot, true), h2;
    CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2));
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BYTE z[1] = {0};
    CK_OBJECT_HANDLE e;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, z, 0},
                        {CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_RV rv = f->C_CreateObject(h, t, 5, &e);
    fprintf(stderr, "empty generic secret: rv 0x%lx\n", rv);
    if (rv == CKR_OK) {
        CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
        CK_BYTE out[64], want[64];
        CK_ULONG n = sizeof(out);
        CK_RV r1 = f->C_SignInit(h2, &m, e);
        if (r1 == CKR_OK)
            r1 = f->C_Sign(h2, (CK_BYTE_PTR) "abc", 3, out, &n);
        fprintf(stderr, "fresh: rv 0x%lx\n", r1);
        CK_OBJECT_HANDLE other = secret(h, CKK_GENERIC_SECRET, (CK_BYTE *)"0123456789abcdef", 16);
        CK(f->C_SignInit(h, &m, other));
        n = sizeof(out);
        CK(f->C_Sign(h, (CK_BYTE_PTR) "abc", 3, out, &n));
        CK_RV r2 = f->C_SignInit(h, &m, e);
        n = sizeof(out);
        if (r2 == CKR_OK)
            r2 = f->C_Sign(h, (CK_BYTE_PTR) "abc", 3, out, &n);
        fprintf(stderr, "spare: rv 0x%lx\n", r2);
        ossl_hmac("SHA256", z, 0, (CK_BYTE *)"abc", 3, want);
        if (r2 == CKR_OK)
            assert_memory_equal(out, want, 32);
        assert_int_equal(r1, r2);
    }
    CK(f->C_CloseSession(h2));
    CK(f->C_CloseSession(h));
}

/* With secure_heap set, OpenSSL's HMAC keeps its key copy in the secure
 * heap: a session's spare HMAC context, re-keyed under 32 zero bytes, keeps
 * 32 bytes of it for as long as the session lives, sign and verify each. */
static void test_secure_heap_spares(void **state)
{
    (void)state;
    slot = make_token("hostile-sh");
    CK_SESSION_HANDLE h = user_session(slot, true);
    CK_OBJECT_HANDLE pub, priv, hk;
    CK_BYTE v[32];
    fill(v, 32);
    make_ec(h, "ec", false, &pub, &priv);
    hk = secret(h, CKK_GENERIC_SECRET, v, 32);
    CK_MECHANISM ecm = {CKM_ECDSA, NULL, 0}, hm256 = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE dig[32] = {1}, sig[128], mac[32];
    CK_ULONG n;
    static CK_SESSION_HANDLE ss[4096];
    int nsess = getenv("HOSTILE_NSESS") ? atoi(getenv("HOSTILE_NSESS")) : 1100, i;
    CK_RV rv = CKR_OK;
    for (i = 0; i < nsess; i++) {
        CK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ss[i]));
        CK(f->C_SignInit(ss[i], &hm256, hk));
        n = sizeof(mac);
        CK(f->C_Sign(ss[i], dig, 32, mac, &n));
        CK(f->C_VerifyInit(ss[i], &hm256, hk));
        CK(f->C_Verify(ss[i], dig, 32, mac, 32));
    }
    /* The sessions are idle: nothing runs. An EC signature must still work. */
    rv = f->C_SignInit(h, &ecm, priv);
    if (rv == CKR_OK) {
        n = sizeof(sig);
        rv = f->C_Sign(h, dig, 32, sig, &n);
    }
    fprintf(stderr, "%d idle sessions that made an HMAC: ECDSA sign rv 0x%lx; secure heap: init %d used %zu\n", nsess, rv,
            CRYPTO_secure_malloc_initialized(), CRYPTO_secure_malloc_initialized() ? CRYPTO_secure_used() : 0);
    for (i = 0; i < nsess; i++)
        CK(f->C_CloseSession(ss[i]));
    CK(rv);
    CK(f->C_CloseSession(h));
}

static int sh_group_setup(void **state)
{
    (void)state;
    return p11_group_setup_with("secure_heap = 64\n");
}

int main(void)
{
    if (getenv("HOSTILE_SH")) {
        const struct CMUnitTest sh[] = {
            cmocka_unit_test_setup_teardown(test_secure_heap_spares, setup, teardown),
        };
        return cmocka_run_group_tests(sh, sh_group_setup, p11_group_teardown);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hmac_odd_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hmac_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hmac_mix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hmac_cmac_alternate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hmac_opstate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cipher_mix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hmac_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
