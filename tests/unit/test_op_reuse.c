/* A session's next operation starts from its last one of the same kind
 * (token/tok_op.c, "the session's spare operation"): the key found again
 * without the key cache while nothing was committed, a digest's context,
 * the operation's memory. These tests check that reuse never changes an
 * answer:
 *
 * - test_reuse_matches_openssl: long random sequences of operations on one
 *   session (AES-GCM with IVs of 8, 12 and 16 bytes, AAD or none, 96- or
 *   128-bit tags, decryption of good and damaged ciphertext; AES-CBC-PAD,
 *   AES-CBC, AES-ECB, AES-CTR both ways; AES-CMAC; HMAC-SHA256/384 and
 *   their _GENERAL forms with two keys (one longer than a hash block); SHA-1/256/384; single- and multi-part, size
 *   queries, operations abandoned half way) on two keys of known value,
 *   each output compared with OpenSSL's for the same input;
 * - test_reuse_sees_key_changes: after a key was used, its destruction, a
 *   change of its usage attribute, and its destruction by another process
 *   are each seen by the next init on the same session;
 * - test_reuse_logout: a private key used on a session is refused after a
 *   logout made on another session, exactly as on a session that never
 *   used it, and serves again after a new login. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "tests/unit/test_p11.h"

static const CK_BYTE key_a[32] = {0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae,
                                  0xf0, 0x85, 0x7d, 0x77, 0x81, 0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61,
                                  0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4};
static const CK_BYTE key_b[16] = {0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6,
                                  0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c};
static const CK_BYTE key_h[40] = "an HMAC key of forty bytes, for testing";
/* A second HMAC key, longer than SHA-256's and SHA-384's blocks (hashed
 * first): a session's HMAC context is kept between operations and re-keyed
 * (tok_op.c, scrub), so each HMAC must use its own key, not the last one. */
static const CK_BYTE key_h2[] = "a second HMAC key, longer than a hash block: one hundred and forty bytes of it, "
                                   "which HMAC hashes before it pads it, as RFC 2104 says it must.";
static CK_OBJECT_HANDLE kh2;

static CK_OBJECT_HANDLE import_secret(CK_SESSION_HANDLE h, CK_KEY_TYPE kt, const CK_BYTE *v, CK_ULONG len,
                                      bool token, bool priv)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},   {CKA_VALUE, (void *)v, len},
        {CKA_TOKEN, token ? &yes : &no, 1}, {CKA_PRIVATE, priv ? &yes : &no, 1}, {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},           {CKA_SIGN, &yes, 1},               {CKA_VERIFY, &yes, 1},
    };
    CK(f->C_CreateObject(h, t, sizeof(t) / sizeof(t[0]), &o));
    return o;
}

/* ---- OpenSSL's answers ---------------------------------------------------- */

static const char *aes_name(size_t keylen, const char *mode, char *buf, size_t cap)
{
    snprintf(buf, cap, "AES-%zu-%s", keylen * 8, mode);
    return buf;
}

/* mode "GCM": out = ciphertext || tag. */
static size_t ossl_cipher(const char *mode, const CK_BYTE *key, size_t keylen, bool enc, bool pad, const CK_BYTE *iv,
                          size_t ivlen, const CK_BYTE *aad, size_t aadlen, size_t taglen, const CK_BYTE *in,
                          size_t inlen, CK_BYTE *out)
{
    char name[32];
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, aes_name(keylen, mode, name, sizeof(name)), NULL);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    bool gcm = strcmp(mode, "GCM") == 0;
    int n = 0, m = 0;
    assert_non_null(c);
    assert_true(EVP_CipherInit_ex2(x, c, NULL, NULL, enc, NULL));
    if (gcm)
        assert_true(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IVLEN, (int)ivlen, NULL));
    assert_true(EVP_CipherInit_ex2(x, NULL, key, iv, enc, NULL));
    EVP_CIPHER_CTX_set_padding(x, pad);
    if (aadlen)
        assert_true(EVP_CipherUpdate(x, NULL, &n, aad, (int)aadlen));
    if (gcm && !enc) {
        inlen -= taglen;
        assert_true(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, (int)taglen, (void *)(in + inlen)));
    }
    assert_true(EVP_CipherUpdate(x, out, &n, in, (int)inlen));
    assert_true(EVP_CipherFinal_ex(x, out + n, &m));
    n += m;
    if (gcm && enc) {
        assert_true(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, (int)taglen, out + n));
        n += (int)taglen;
    }
    EVP_CIPHER_CTX_free(x);
    EVP_CIPHER_free(c);
    return (size_t)n;
}

static size_t ossl_mac(bool cmac, const char *md, const CK_BYTE *key, size_t keylen, const CK_BYTE *in, size_t inlen,
                       CK_BYTE *out)
{
    char name[32];
    EVP_MAC *mac = EVP_MAC_fetch(NULL, cmac ? "CMAC" : "HMAC", NULL);
    EVP_MAC_CTX *x = EVP_MAC_CTX_new(mac);
    OSSL_PARAM p[] = {
        cmac ? OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, (char *)aes_name(keylen, "CBC", name, 32), 0)
             : OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)md, 0),
        OSSL_PARAM_construct_end(),
    };
    size_t n = 0;
    assert_true(EVP_MAC_init(x, key, keylen, p) && EVP_MAC_update(x, in, inlen) && EVP_MAC_final(x, out, &n, 64));
    EVP_MAC_CTX_free(x);
    EVP_MAC_free(mac);
    return n;
}

/* ---- the module, one operation at a time ----------------------------------- */

typedef CK_RV (*init_fn)(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
typedef CK_RV (*one_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*upd_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*fin_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);

static unsigned long rnd_state = 88172645463325252UL;
static unsigned rnd(unsigned n) { return xorshift_below(&rnd_state, n); }

/* Encrypt or decrypt: single-part (with a size query first, sometimes),
 * or in parts of random sizes. Returns the call's code; *outlen the length. */
static CK_RV p11_crypt(CK_SESSION_HANDLE h, bool enc, CK_MECHANISM *m, CK_OBJECT_HANDLE k, const CK_BYTE *in,
                       CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    init_fn init = enc ? f->C_EncryptInit : f->C_DecryptInit;
    one_fn one = enc ? f->C_Encrypt : f->C_Decrypt;
    upd_fn upd = enc ? f->C_EncryptUpdate : f->C_DecryptUpdate;
    fin_fn fin = enc ? f->C_EncryptFinal : f->C_DecryptFinal;
    CK_RV rv;

    CK(init(h, m, k));
    if (rnd(2)) {
        CK_ULONG q = 0;
        if (rnd(2))
            CK(one(h, (CK_BYTE_PTR)in, inlen, NULL, &q)); /* a size query keeps the operation */
        *outlen = 4096;
        return one(h, (CK_BYTE_PTR)in, inlen, out, outlen);
    }
    CK_ULONG done = 0, got;
    for (CK_ULONG pos = 0; pos < inlen;) {
        CK_ULONG part = 1 + rnd((unsigned)(inlen - pos));
        got = 4096 - done;
        if ((rv = upd(h, (CK_BYTE_PTR)in + pos, part, out + done, &got)) != CKR_OK)
            return rv;
        done += got;
        pos += part;
    }
    got = 4096 - done;
    rv = fin(h, out + done, &got);
    *outlen = done + got;
    return rv;
}

static CK_RV p11_sign(CK_SESSION_HANDLE h, CK_MECHANISM *m, CK_OBJECT_HANDLE k, const CK_BYTE *in, CK_ULONG inlen,
                      CK_BYTE *out, CK_ULONG *outlen)
{
    CK(f->C_SignInit(h, m, k));
    *outlen = 64;
    if (rnd(2))
        return f->C_Sign(h, (CK_BYTE_PTR)in, inlen, out, outlen);
    for (CK_ULONG pos = 0; pos < inlen;) {
        CK_ULONG part = 1 + rnd((unsigned)(inlen - pos));
        CK(f->C_SignUpdate(h, (CK_BYTE_PTR)in + pos, part));
        pos += part;
    }
    return f->C_SignFinal(h, out, outlen);
}

static CK_RV p11_digest(CK_SESSION_HANDLE h, CK_MECHANISM *m, const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                        CK_ULONG *outlen)
{
    CK(f->C_DigestInit(h, m));
    *outlen = 64;
    if (rnd(2))
        return f->C_Digest(h, (CK_BYTE_PTR)in, inlen, out, outlen);
    for (CK_ULONG pos = 0; pos < inlen;) {
        CK_ULONG part = 1 + rnd((unsigned)(inlen - pos));
        CK(f->C_DigestUpdate(h, (CK_BYTE_PTR)in + pos, part));
        pos += part;
    }
    return f->C_DigestFinal(h, out, outlen);
}

/* Start an operation of each kind and leave it half done, then end it as an
 * application may (a NULL mechanism): what it fed must not reach the next. */
static void abandon(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE aes, CK_OBJECT_HANDLE hk)
{
    CK_BYTE iv[16] = {9}, junk[64] = {1, 2, 3}, out[128];
    CK_ULONG n = sizeof(out);
    CK_GCM_PARAMS gp = {iv, 12, 96, junk, 7, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)}, cbc = {CKM_AES_CBC, iv, 16};
    CK_MECHANISM hm = {CKM_SHA256_HMAC, NULL, 0}, sha = {CKM_SHA256, NULL, 0};

    switch (rnd(4)) {
    case 0:
        CK(f->C_EncryptInit(h, rnd(2) ? &gcm : &cbc, aes));
        CK(f->C_EncryptUpdate(h, junk, 37, out, &n));
        CK(f->C_EncryptInit(h, NULL, aes));
        break;
    case 1:
        CK(f->C_DecryptInit(h, &cbc, aes));
        CK(f->C_DecryptUpdate(h, junk, 40, out, &n));
        CK(f->C_DecryptInit(h, NULL, aes));
        break;
    case 2:
        CK(f->C_SignInit(h, &hm, hk));
        CK(f->C_SignUpdate(h, junk, 33));
        CK(f->C_SignInit(h, NULL, hk));
        break;
    default:
        CK(f->C_DigestInit(h, &sha));
        CK(f->C_DigestUpdate(h, junk, 21));
        CK(f->C_DigestInit(h, NULL));
        break;
    }
}

static void one_step(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE ka, CK_OBJECT_HANDLE kb, CK_OBJECT_HANDLE kh)
{
    CK_BYTE in[300], iv[16], aad[20], out[4096], back[4096], want[4096];
    CK_ULONG inlen = rnd(sizeof(in)), n, m;
    bool use_a = rnd(2);
    CK_OBJECT_HANDLE k = use_a ? ka : kb;
    const CK_BYTE *kv = use_a ? key_a : key_b;
    size_t kl = use_a ? sizeof(key_a) : sizeof(key_b);
    size_t w;

    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (CK_BYTE)rnd(256);
    for (size_t i = 0; i < sizeof(iv); i++)
        iv[i] = (CK_BYTE)rnd(256);
    for (size_t i = 0; i < sizeof(aad); i++)
        aad[i] = (CK_BYTE)rnd(256);
    switch (rnd(9)) {
    case 0:
    case 1: { /* AES-GCM, encrypt then decrypt good and damaged */
        static const CK_ULONG ivlens[] = {8, 12, 12, 16};
        CK_ULONG ivlen = ivlens[rnd(4)], aadlen = rnd(2) ? rnd(sizeof(aad)) : 0, tag = rnd(2) ? 128 : 96;
        CK_GCM_PARAMS gp = {iv, ivlen, ivlen * 8, aadlen ? aad : NULL, aadlen, tag};
        CK_MECHANISM mech = {CKM_AES_GCM, &gp, sizeof(gp)};
        CK(p11_crypt(h, true, &mech, k, in, inlen, out, &n));
        w = ossl_cipher("GCM", kv, kl, true, false, iv, ivlen, aad, aadlen, tag / 8, in, inlen, want);
        assert_int_equal(n, w);
        assert_memory_equal(out, want, w);
        CK(p11_crypt(h, false, &mech, k, out, n, back, &m));
        assert_int_equal(m, inlen);
        assert_memory_equal(back, in, inlen);
        out[rnd((unsigned)n)] ^= 0x10;
        RV(CKR_ENCRYPTED_DATA_INVALID, p11_crypt(h, false, &mech, k, out, n, back, &m));
        break;
    }
    case 2: { /* AES-CBC-PAD / CBC / ECB / CTR, both ways */
        static const CK_MECHANISM_TYPE types[] = {CKM_AES_CBC_PAD, CKM_AES_CBC, CKM_AES_ECB, CKM_AES_CTR};
        static const char *modes[] = {"CBC", "CBC", "ECB", "CTR"};
        unsigned t = rnd(4);
        CK_AES_CTR_PARAMS cp;
        CK_MECHANISM mech = {types[t], iv, 16};
        if (t == 1 || t == 2)
            inlen -= inlen % 16;
        if (t == 2)
            mech.pParameter = NULL, mech.ulParameterLen = 0;
        if (t == 3) {
            cp.ulCounterBits = 128;
            memcpy(cp.cb, iv, 16);
            mech.pParameter = &cp, mech.ulParameterLen = sizeof(cp);
        }
        CK(p11_crypt(h, true, &mech, k, in, inlen, out, &n));
        w = ossl_cipher(modes[t], kv, kl, true, t == 0, iv, 16, NULL, 0, 0, in, inlen, want);
        assert_int_equal(n, w);
        assert_memory_equal(out, want, w);
        CK(p11_crypt(h, false, &mech, k, out, n, back, &m));
        assert_int_equal(m, inlen);
        assert_memory_equal(back, in, inlen);
        break;
    }
    case 3:
    case 4: { /* HMAC, full and _GENERAL; sign and verify */
        bool big = rnd(2), general = rnd(3) == 0;
        CK_ULONG full = big ? 48 : 32, glen = 1 + rnd((unsigned)full);
        CK_MECHANISM mech = {big ? (general ? CKM_SHA384_HMAC_GENERAL : CKM_SHA384_HMAC)
                                 : (general ? CKM_SHA256_HMAC_GENERAL : CKM_SHA256_HMAC),
                             general ? &glen : NULL, general ? sizeof(glen) : 0};
        bool second = rnd(2);
        if (second)
            kh = kh2;
        CK(p11_sign(h, &mech, kh, in, inlen, out, &n));
        w = ossl_mac(false, big ? "SHA384" : "SHA256", second ? key_h2 : key_h, second ? sizeof(key_h2) : sizeof(key_h),
                     in, inlen, want);
        assert_int_equal(n, general ? glen : w);
        assert_memory_equal(out, want, n);
        CK(f->C_VerifyInit(h, &mech, kh));
        CK(f->C_Verify(h, in, inlen, out, n));
        out[0] ^= 1;
        CK(f->C_VerifyInit(h, &mech, kh));
        RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, inlen, out, n));
        break;
    }
    case 5: { /* AES-CMAC */
        CK_MECHANISM mech = {CKM_AES_CMAC, NULL, 0};
        CK(p11_sign(h, &mech, k, in, inlen, out, &n));
        w = ossl_mac(true, NULL, kv, kl, in, inlen, want);
        assert_int_equal(n, w);
        assert_memory_equal(out, want, w);
        break;
    }
    case 6:
    case 7: { /* digests */
        static const CK_MECHANISM_TYPE types[] = {CKM_SHA_1, CKM_SHA256, CKM_SHA384, CKM_SHA512, 0x2B0UL /* CKM_SHA3_256 */};
        static const char *names[] = {"SHA1", "SHA256", "SHA384", "SHA512", "SHA3-256"};
        unsigned t = rnd(5);
        CK_MECHANISM mech = {types[t], NULL, 0};
        unsigned int dlen = 0;
        EVP_MD *md = EVP_MD_fetch(NULL, names[t], NULL);
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        assert_true(c && EVP_DigestInit_ex2(c, md, NULL) && EVP_DigestUpdate(c, in, inlen));
        if (rnd(3)) {
            CK(p11_digest(h, &mech, in, inlen, out, &n));
        } else { /* in parts, the HMAC key's value last (C_DigestKey) */
            CK(f->C_DigestInit(h, &mech));
            CK(f->C_DigestUpdate(h, in, inlen / 2));
            CK(f->C_DigestUpdate(h, in + inlen / 2, inlen - inlen / 2));
            CK(f->C_DigestKey(h, kh));
            n = sizeof(out);
            CK(f->C_DigestFinal(h, out, &n));
            assert_true(EVP_DigestUpdate(c, key_h, sizeof(key_h)));
        }
        assert_true(EVP_DigestFinal_ex(c, want, &dlen));
        EVP_MD_CTX_free(c);
        EVP_MD_free(md);
        assert_int_equal(n, dlen);
        assert_memory_equal(out, want, dlen);
        break;
    }
    default:
        abandon(h, k, kh);
        break;
    }
}

static void test_reuse_matches_openssl(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("reuse");
    CK_SESSION_HANDLE h = user_session(s, true), h2;
    CK_OBJECT_HANDLE ka = import_secret(h, CKK_AES, key_a, sizeof(key_a), true, true);
    CK_OBJECT_HANDLE kb = import_secret(h, CKK_AES, key_b, sizeof(key_b), false, false);
    CK_OBJECT_HANDLE kh = import_secret(h, CKK_GENERIC_SECRET, key_h, sizeof(key_h), true, false);
    kh2 = import_secret(h, CKK_GENERIC_SECRET, key_h2, sizeof(key_h2), false, true);

    for (int i = 0; i < 1500; i++)
        one_step(h, ka, kb, kh);
    /* Two sessions in turn: each its own spares. */
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &h2));
    for (int i = 0; i < 600; i++)
        one_step(rnd(2) ? h : h2, ka, kb, kh);
    CK(f->C_CloseSession(h2));
    CK(f->C_CloseSession(h));
}

/* Encrypt 16 bytes with AES-ECB; the code of the init or of the call. */
static CK_RV ecb(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k, CK_BYTE out[16])
{
    CK_MECHANISM m = {CKM_AES_ECB, NULL, 0};
    CK_BYTE in[16] = "sixteen bytes!!";
    CK_ULONG n = 16;
    CK_RV rv = f->C_EncryptInit(h, &m, k);
    return rv != CKR_OK ? rv : f->C_Encrypt(h, in, 16, out, &n);
}

static void test_reuse_sees_key_changes(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("reuse-changes");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_BYTE a[16], b[16];
    CK_OBJECT_HANDLE k = import_secret(h, CKK_AES, key_a, sizeof(key_a), true, false);

    /* Destroyed on this session. */
    CK(ecb(h, k, a));
    CK(ecb(h, k, b));
    assert_memory_equal(a, b, 16);
    CK(f->C_DestroyObject(h, k));
    RV(CKR_KEY_HANDLE_INVALID, ecb(h, k, a));

    /* Its usage taken away. */
    k = import_secret(h, CKK_AES, key_a, sizeof(key_a), true, false);
    CK(ecb(h, k, a));
    CK_ATTRIBUTE off = {CKA_ENCRYPT, &no, 1};
    CK(f->C_SetAttributeValue(h, k, &off, 1));
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, ecb(h, k, a));

    /* A session key destroyed, then another made. */
    CK_OBJECT_HANDLE sk = import_secret(h, CKK_AES, key_b, sizeof(key_b), false, false);
    CK(ecb(h, sk, a));
    CK(f->C_DestroyObject(h, sk));
    RV(CKR_KEY_HANDLE_INVALID, ecb(h, sk, a));
    CK_OBJECT_HANDLE sk2 = import_secret(h, CKK_AES, key_a, sizeof(key_a), false, false);
    CK(ecb(h, sk2, b));
    CK_OBJECT_HANDLE k2 = import_secret(h, CKK_AES, key_a, sizeof(key_a), true, false);
    CK(ecb(h, k2, a));
    assert_memory_equal(a, b, 16); /* the same key value */

    /* Destroyed by another process: the next init here sees it. */
    CK(ecb(h, k2, a));
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        CK_SESSION_HANDLE c;
        int ok = f->C_Initialize(NULL) == CKR_OK && f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                                                                       NULL, &c) == CKR_OK &&
                 f->C_DestroyObject(c, k2) == CKR_OK;
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    RV(CKR_KEY_HANDLE_INVALID, ecb(h, k2, a));
    CK(f->C_CloseSession(h));
}

static void test_reuse_logout(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("reuse-logout");
    CK_SESSION_HANDLE h = user_session(s, true), other, fresh;
    CK_OBJECT_HANDLE k = import_secret(h, CKK_AES, key_a, sizeof(key_a), true, true);
    CK_BYTE a[16], b[16];

    CK(ecb(h, k, a));
    CK(ecb(h, k, a));
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &other));
    CK(f->C_Logout(other));
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &fresh));
    CK_RV want = ecb(fresh, k, b);
    assert_int_not_equal(want, CKR_OK);
    RV(want, ecb(h, k, b));
    CK(f->C_Login(other, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK(ecb(h, k, b));
    assert_memory_equal(a, b, 16);
    CK(f->C_CloseSession(fresh));
    CK(f->C_CloseSession(other));
    CK(f->C_CloseSession(h));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reuse_matches_openssl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reuse_sees_key_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reuse_logout, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
