/* Triple DES, and single DES and MD5 (legacy_mechanisms), through the built
 * module (dlopen, PKCS#11 entry points), each test on a fresh keystore with
 * its own configuration:
 *
 *   - known answers: NIST's TDES examples for the SP 800-38A modes (TDES_ECB,
 *     TDES_CBC: three and two keys) and SP 800-38B's TDES CMAC examples (three
 *     and two keys, messages of 0, 16, 20 and 32 bytes), single- and
 *     multi-part; CBC_PAD byte for byte against plain OpenSSL around the block
 *     size; parity bits ignored on import (the CMAC example key has one wrong);
 *   - key generation (CKM_DES2_KEY_GEN, CKM_DES3_KEY_GEN): lengths, odd parity,
 *     no CKA_VALUE_LEN; C_GetMechanismInfo; C_CreateObject rules; DES keys
 *     derived with HKDF (RFC 5869) and PBKDF2 (RFC 6070): the type's length,
 *     parity set;
 *   - error cases: size query, short buffer, CKR_DATA_LEN_RANGE and
 *     CKR_ENCRYPTED_DATA_LEN_RANGE, bad padding, bad IV, wrong key types,
 *     operation state;
 *   - wrap and unwrap with DES3 ECB/CBC/CBC_PAD (blobs checked against plain
 *     OpenSSL), DES keys wrapped under AES and truncated to their length; in
 *     wrap_policy = strict, DES3 ECB/CBC/CBC_PAD lose CKF_UNWRAP as the AES
 *     ones do;
 *   - legacy_mechanisms: single DES and MD5 neither listed nor usable by
 *     default, nor when OpenSSL's legacy provider cannot be loaded (the module
 *     still initializes, and logs why); with it, RFC 1321 MD5, RFC 2104
 *     HMAC-MD5 and FIPS 81 DES ECB/CBC known answers. */
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
#include <unistd.h>

#include <openssl/evp.h>

#include <p11-kit/pkcs11.h>

#include "tests/unit/test_hex.h"
#include "tests/unit/test_module.h"
#include "tests/unit/test_params.h"

#define unhex test_unhex
#define assert_bytes test_assert_bytes

/* NIST's examples: one plaintext, K1 K2 K3 (two keys: K1 K2), the CBC IV. */
static const char PT[] = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51";
static const char K3[] = "0123456789abcdef23456789abcdef01456789abcdef0123";
static const char K2[] = "0123456789abcdef23456789abcdef01";
static const char IV[] = "f69f2445df4f9b17";

/* ---- fixture (test_module.h): the module started on a fresh keystore per test */

static int start_strict(void **state)
{
    (void)state;
    return start("wrap_policy = strict\n");
}

static int start_legacy(void **state)
{
    (void)state;
    return start("legacy_mechanisms = yes\n");
}

/* legacy_mechanisms = yes where OpenSSL finds no legacy provider. */
static int start_legacy_missing(void **state)
{
    char dir[96];
    (void)state;
    snprintf(dir, sizeof(dir), "%s/no-ossl-modules", tmp);
    setenv("OPENSSL_MODULES", dir, 1);
    int rc = start("legacy_mechanisms = yes\n");
    unsetenv("OPENSSL_MODULES");
    return rc;
}

/* ---- helpers ------------------------------------------------------------- */

static size_t value_of(CK_OBJECT_HANDLE o, uint8_t *buf, size_t cap)
{
    CK_ATTRIBUTE a = {CKA_VALUE, buf, cap};
    CK(f->C_GetAttributeValue(h, o, &a, 1));
    return a.ulValueLen;
}

/* One-shot encryption or decryption, with a size query first. */
static size_t crypt1(bool enc, CK_MECHANISM *m, CK_OBJECT_HANDLE k, const uint8_t *in, size_t inlen, uint8_t *out,
                     size_t cap)
{
    CK_ULONG n = 0;
    CK((enc ? f->C_EncryptInit : f->C_DecryptInit)(h, m, k));
    CK((enc ? f->C_Encrypt : f->C_Decrypt)(h, (CK_BYTE_PTR)in, inlen, NULL, &n));
    assert_true(n <= cap);
    n = cap;
    CK((enc ? f->C_Encrypt : f->C_Decrypt)(h, (CK_BYTE_PTR)in, inlen, out, &n));
    return n;
}

/* Multi-part, the input in pieces of 5, 11, then 16 bytes. */
static size_t crypt_parts(bool enc, CK_MECHANISM *m, CK_OBJECT_HANDLE k, const uint8_t *in, size_t inlen, uint8_t *out,
                          size_t cap)
{
    static const size_t piece[] = {5, 11, 16};
    size_t done = 0, got = 0;
    CK((enc ? f->C_EncryptInit : f->C_DecryptInit)(h, m, k));
    for (int i = 0; done < inlen; i = i < 2 ? i + 1 : 2) {
        size_t take = inlen - done < piece[i] ? inlen - done : piece[i];
        CK_ULONG n = cap - got;
        CK((enc ? f->C_EncryptUpdate : f->C_DecryptUpdate)(h, (CK_BYTE_PTR)in + done, take, out + got, &n));
        got += n;
        done += take;
    }
    CK_ULONG n = cap - got;
    CK((enc ? f->C_EncryptFinal : f->C_DecryptFinal)(h, out + got, &n));
    return got + n;
}

static size_t sign1(CK_MECHANISM *m, CK_OBJECT_HANDLE k, const uint8_t *in, size_t inlen, uint8_t *sig)
{
    CK_ULONG n = 0;
    CK(f->C_SignInit(h, m, k));
    CK(f->C_Sign(h, (CK_BYTE_PTR)in, inlen, NULL, &n));
    CK(f->C_Sign(h, (CK_BYTE_PTR)in, inlen, sig, &n));
    return n;
}

/* Plain OpenSSL (the application's default library context). */
static size_t ossl_crypt(const char *cipher, bool pad, const uint8_t *key, const uint8_t *iv, const uint8_t *in,
                         size_t inlen, uint8_t *out)
{
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, cipher, NULL);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int a = 0, b = 0;
    assert_non_null(c);
    assert_true(EVP_EncryptInit_ex2(x, c, key, iv, NULL) && EVP_CIPHER_CTX_set_padding(x, pad) &&
                EVP_EncryptUpdate(x, out, &a, in, (int)inlen) && EVP_EncryptFinal_ex(x, out + a, &b));
    EVP_CIPHER_CTX_free(x);
    EVP_CIPHER_free(c);
    return (size_t)(a + b);
}

/* The low bit of each byte set so that the byte has an odd number of ones. */
static void set_odd_parity(uint8_t *k, size_t len)
{
    for (size_t i = 0; i < len; i++)
        k[i] = (uint8_t)((k[i] & 0xfe) | !(__builtin_popcount(k[i] & 0xfe) & 1));
}

static bool odd_parity(const uint8_t *k, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!(__builtin_popcount(k[i]) & 1))
            return false;
    return true;
}

/* ---- known answers --------------------------------------------------------- */

static void test_tdes_ecb_cbc_vectors(void **state)
{
    (void)state;
    static const struct {
        CK_MECHANISM_TYPE mech;
        const char *key, *ct, *name;
    } v[] = {
        {CKM_DES3_ECB, K3, "714772f339841d34267fcc4bd2949cc3ee11c22a576a303876183f99c0b6de87", "TDES_ECB 3 keys"},
        {CKM_DES3_ECB, K2, "06ede3d82884090aff322c19f0518486730576972a666e58b6c88cf107340d3d", "TDES_ECB 2 keys"},
        {CKM_DES3_CBC, K3, "2079c3d53aa763e193b79e2569ab5262516570481f25b50f73c0bda85c8e0da7", "TDES_CBC 3 keys"},
        {CKM_DES3_CBC, K2, "7401ce1eab6d003caff84bf47b36cc2154f0238f9ffecd8f6acf118392b45581", "TDES_CBC 2 keys"},
    };
    uint8_t pt[32], ct[32], iv[8], out[64];

    unhex(PT, pt, sizeof(pt));
    unhex(IV, iv, sizeof(iv));
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        CK_KEY_TYPE kt = strlen(v[i].key) == 48 ? CKK_DES3 : CKK_DES2;
        CK_OBJECT_HANDLE k = secret(kt, v[i].key, U_CRYPT);
        CK_MECHANISM m = {v[i].mech, v[i].mech == CKM_DES3_CBC ? iv : NULL, v[i].mech == CKM_DES3_CBC ? 8 : 0};
        size_t cl = unhex(v[i].ct, ct, sizeof(ct));
        assert_bytes(out, crypt1(true, &m, k, pt, 32, out, sizeof(out)), ct, cl, v[i].name);
        assert_bytes(out, crypt_parts(true, &m, k, pt, 32, out, sizeof(out)), ct, cl, v[i].name);
        assert_bytes(out, crypt1(false, &m, k, ct, cl, out, sizeof(out)), pt, 32, v[i].name);
        assert_bytes(out, crypt_parts(false, &m, k, ct, cl, out, sizeof(out)), pt, 32, v[i].name);
    }

    /* Parity bits are ignored: the two-key ECB vector with every parity bit flipped. */
    uint8_t k2[16], ct2[32];
    CK_OBJECT_HANDLE flipped;
    unhex(K2, k2, sizeof(k2));
    for (int i = 0; i < 16; i++)
        k2[i] ^= 1;
    CK(create_secret(CKK_DES2, k2, 16, U_CRYPT, NULL, 0, &flipped));
    CK_MECHANISM ecb = {CKM_DES3_ECB, NULL, 0};
    unhex(v[1].ct, ct2, sizeof(ct2));
    assert_bytes(out, crypt1(true, &ecb, flipped, pt, 32, out, sizeof(out)), ct2, 32, "parity bits flipped");
}

/* CBC_PAD: byte for byte what OpenSSL's DES-EDE3-CBC / DES-EDE-CBC with
 * PKCS#7 padding gives, for lengths around the block size. */
static void test_tdes_cbc_pad_against_openssl(void **state)
{
    (void)state;
    uint8_t iv[8], key[24], data[40], want[48], out[64];
    CK_MECHANISM m = {CKM_DES3_CBC_PAD, iv, 8};
    static const size_t lens[] = {0, 1, 7, 8, 9, 15, 16, 17, 33};

    unhex(IV, iv, sizeof(iv));
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 1);
    for (int two = 0; two < 2; two++) {
        size_t kl = unhex(two ? K2 : K3, key, sizeof(key));
        CK_OBJECT_HANDLE k = secret(two ? CKK_DES2 : CKK_DES3, two ? K2 : K3, U_CRYPT);
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
            size_t wl = ossl_crypt(two ? "DES-EDE-CBC" : "DES-EDE3-CBC", true, key, iv, data, lens[i], want);
            assert_int_equal(wl, (lens[i] / 8 + 1) * 8);
            assert_bytes(out, crypt1(true, &m, k, data, lens[i], out, sizeof(out)), want, wl, "CBC_PAD");
            assert_bytes(out, crypt_parts(true, &m, k, data, lens[i], out, sizeof(out)), want, wl, "CBC_PAD parts");
            assert_bytes(out, crypt1(false, &m, k, want, wl, out, sizeof(out)), data, lens[i], "CBC_PAD back");
            assert_bytes(out, crypt_parts(false, &m, k, want, wl, out, sizeof(out)), data, lens[i],
                         "CBC_PAD back in parts");
        }
        (void)kl;
    }
}

static void test_tdes_cmac_vectors(void **state)
{
    (void)state;
    /* SP 800-38B's TDES examples. The three-key example's first key is
     * 0123456789AACDEF: 0xAA has even parity (a DES key byte should be odd),
     * which DES ignores, and so does the token. */
    static const struct {
        const char *key;
        const char *tag[4];
    } v[] = {
        {"0123456789aacdef23456789abcdef01456789abcdef0123",
         {"7db0d37df936c550", "30239cf1f52e6609", "6c9f3ee4923f6be2", "99429bd0bf7904e5"}},
        {K2, {"79ce52a7f786a960", "cc18a0b79af2413b", "c06d377ecd101969", "9cd33580f9b64dfb"}},
    };
    static const size_t mlen[4] = {0, 16, 20, 32};
    uint8_t msg[32], tag[8], sig[16];
    CK_MECHANISM cmac = {CKM_DES3_CMAC, NULL, 0};
    CK_ULONG four = 4, nine = 9, zero = 0;
    CK_MECHANISM general = {CKM_DES3_CMAC_GENERAL, &four, sizeof(four)};

    unhex(PT, msg, sizeof(msg));
    for (int i = 0; i < 2; i++) {
        CK_OBJECT_HANDLE k = secret(i ? CKK_DES2 : CKK_DES3, v[i].key, U_SIGN);
        for (int j = 0; j < 4; j++) {
            unhex(v[i].tag[j], tag, sizeof(tag));
            assert_bytes(sig, sign1(&cmac, k, msg, mlen[j], sig), tag, 8, "TDES CMAC");
            CK(f->C_VerifyInit(h, &cmac, k));
            CK(f->C_Verify(h, msg, mlen[j], tag, 8));
            /* multi-part, 7 bytes at a time */
            CK_ULONG n = sizeof(sig);
            CK(f->C_SignInit(h, &cmac, k));
            for (size_t off = 0; off < mlen[j]; off += 7)
                CK(f->C_SignUpdate(h, msg + off, mlen[j] - off < 7 ? mlen[j] - off : 7));
            CK(f->C_SignFinal(h, sig, &n));
            assert_bytes(sig, n, tag, 8, "TDES CMAC in parts");
            /* _GENERAL: the leading bytes */
            assert_bytes(sig, sign1(&general, k, msg, mlen[j], sig), tag, 4, "TDES CMAC_GENERAL");
            CK(f->C_VerifyInit(h, &general, k));
            CK(f->C_Verify(h, msg, mlen[j], tag, 4));
            tag[7] ^= 1;
            CK(f->C_VerifyInit(h, &cmac, k));
            RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, msg, mlen[j], tag, 8));
        }
        CK(f->C_VerifyInit(h, &cmac, k));
        RV(CKR_SIGNATURE_LEN_RANGE, f->C_Verify(h, msg, 16, tag, 7));
        CK_MECHANISM bad = {CKM_DES3_CMAC_GENERAL, &nine, sizeof(nine)};
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_SignInit(h, &bad, k));
        bad.pParameter = &zero;
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_SignInit(h, &bad, k));
        CK_MECHANISM withparam = {CKM_DES3_CMAC, &four, sizeof(four)};
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_SignInit(h, &withparam, k));
    }
}

/* ---- keys ---------------------------------------------------------------- */

static CK_RV gen(CK_MECHANISM_TYPE mt, CK_ATTRIBUTE *extra, CK_ULONG nextra, CK_OBJECT_HANDLE *o)
{
    CK_MECHANISM m = {mt, NULL, 0};
    CK_ATTRIBUTE t[12] = {{CKA_TOKEN, &no, 1},    {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1},
                          {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1},  {CKA_SIGN, &yes, 1}};
    CK_ULONG n = 6;
    for (CK_ULONG i = 0; i < nextra; i++)
        t[n++] = extra[i];
    return f->C_GenerateKey(h, &m, t, n, o);
}

static void test_tdes_keygen(void **state)
{
    (void)state;
    static const struct {
        CK_MECHANISM_TYPE mech;
        CK_KEY_TYPE kt;
        size_t len;
    } v[] = {{CKM_DES2_KEY_GEN, CKK_DES2, 16}, {CKM_DES3_KEY_GEN, CKK_DES3, 24}};
    uint8_t val[32], data[24] = "three blocks of data...", ct[24], back[24];

    for (size_t i = 0; i < 2; i++) {
        CK_MECHANISM_INFO mi;
        CK(f->C_GetMechanismInfo(slot, v[i].mech, &mi));
        assert_int_equal(mi.ulMinKeySize, v[i].len);
        assert_int_equal(mi.ulMaxKeySize, v[i].len);
        assert_int_equal(mi.flags, CKF_GENERATE);
        for (int round = 0; round < 8; round++) {
            CK_OBJECT_HANDLE k;
            CK_KEY_TYPE kt = 0;
            CK_MECHANISM_TYPE genm = 0;
            CK_BBOOL local = CK_FALSE;
            CK(gen(v[i].mech, NULL, 0, &k));
            assert_int_equal(value_of(k, val, sizeof(val)), v[i].len);
            assert_true(odd_parity(val, v[i].len));
            CK_ATTRIBUTE a[] = {
                {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_KEY_GEN_MECHANISM, &genm, sizeof(genm)}, {CKA_LOCAL, &local, 1}};
            CK(f->C_GetAttributeValue(h, k, a, 3));
            assert_int_equal(kt, v[i].kt);
            assert_int_equal(genm, v[i].mech);
            assert_true(local);
            /* DES keys have no CKA_VALUE_LEN: their type fixes the length. */
            CK_ULONG vl;
            CK_ATTRIBUTE l = {CKA_VALUE_LEN, &vl, sizeof(vl)};
            RV(CKR_ATTRIBUTE_TYPE_INVALID, f->C_GetAttributeValue(h, k, &l, 1));
            CK_MECHANISM ecb = {CKM_DES3_ECB, NULL, 0};
            assert_int_equal(crypt1(true, &ecb, k, data, 24, ct, sizeof(ct)), 24);
            assert_int_equal(crypt1(false, &ecb, k, ct, 24, back, sizeof(back)), 24);
            assert_memory_equal(back, data, 24);
        }
        /* A CKA_VALUE_LEN that says the type's length is taken (pkcs11-tool
         * gives one to every generation); another one conflicts. */
        CK_OBJECT_HANDLE k;
        CK_ULONG right = v[i].len, wrong = v[i].len == 16 ? 24 : 16;
        CK_ATTRIBUTE rl = {CKA_VALUE_LEN, &right, sizeof(right)}, wl = {CKA_VALUE_LEN, &wrong, sizeof(wrong)};
        CK(gen(v[i].mech, &rl, 1, &k));
        assert_int_equal(value_of(k, val, sizeof(val)), v[i].len);
        RV(CKR_TEMPLATE_INCONSISTENT, gen(v[i].mech, &wl, 1, &k));
        CK_KEY_TYPE aes = CKK_AES;
        CK_ATTRIBUTE ka = {CKA_KEY_TYPE, &aes, sizeof(aes)};
        RV(CKR_TEMPLATE_INCONSISTENT, gen(v[i].mech, &ka, 1, &k));
        CK_MECHANISM withparam = {v[i].mech, data, 8};
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_GenerateKey(h, &withparam, NULL, 0, &k));
    }
    /* The operation mechanisms: key sizes in bytes, what they do. */
    static const struct {
        CK_MECHANISM_TYPE m;
        CK_FLAGS flags;
    } ops[] = {
        {CKM_DES3_ECB, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP},
        {CKM_DES3_CBC, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP},
        {CKM_DES3_CBC_PAD, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP},
        {CKM_DES3_CMAC, CKF_SIGN | CKF_VERIFY | TEST_MESSAGE_MAC},
        {CKM_DES3_CMAC_GENERAL, CKF_SIGN | CKF_VERIFY | TEST_MESSAGE_MAC},
    };
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        CK_MECHANISM_INFO mi;
        CK(f->C_GetMechanismInfo(slot, ops[i].m, &mi));
        assert_int_equal(mi.ulMinKeySize, 16);
        assert_int_equal(mi.ulMaxKeySize, 24);
        assert_int_equal(mi.flags, ops[i].flags);
    }
}

/* Keys the token derives take their type's length and odd parity: the
 * leading bytes of RFC 5869's test case 1 (HKDF) and RFC 6070's test 2
 * (PBKDF2), each byte's low bit set to make its bit count odd. */
static void test_tdes_derived(void **state)
{
    (void)state;
    uint8_t ikm[22], salt[13], info[10], want[24], val[32];
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET, d3 = CKK_DES3, d2 = CKK_DES2;
    CK_OBJECT_HANDLE base, k;

    test_hkdf_params hp = test_rfc5869_case1(ikm, salt, info);
    CK_ATTRIBUTE bt[] = {{CKA_CLASS, &sec, sizeof(sec)},
                         {CKA_KEY_TYPE, &gen, sizeof(gen)},
                         {CKA_TOKEN, &no, 1},
                         {CKA_VALUE, ikm, sizeof(ikm)},
                         {CKA_DERIVE, &yes, 1}};
    CK(f->C_CreateObject(h, bt, 5, &base));
    CK_MECHANISM hkdf = {TEST_CKM_HKDF_DERIVE, &hp, sizeof(hp)};
    CK_ATTRIBUTE dt[] = {{CKA_CLASS, &sec, sizeof(sec)},
                         {CKA_KEY_TYPE, &d3, sizeof(d3)},
                         {CKA_TOKEN, &no, 1},
                         {CKA_SENSITIVE, &no, 1},
                         {CKA_EXTRACTABLE, &yes, 1}};
    CK(f->C_DeriveKey(h, &hkdf, base, dt, 5, &k));
    unhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c", want, sizeof(want));
    set_odd_parity(want, 24);
    assert_bytes(val, value_of(k, val, sizeof(val)), want, 24, "HKDF to a DES3 key");
    CK_ULONG l = 24;
    CK_ATTRIBUTE dtl[] = {
        {CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &d3, sizeof(d3)}, {CKA_VALUE_LEN, &l, sizeof(l)}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, f->C_DeriveKey(h, &hkdf, base, dtl, 3, &k));

    test_pbkd2_params pp = test_rfc6070_case2();
    CK_MECHANISM pbkdf2 = {CKM_PKCS5_PBKD2, &pp, sizeof(pp)};
    CK_ATTRIBUTE pt[] = {
        {CKA_KEY_TYPE, &d2, sizeof(d2)}, {CKA_TOKEN, &no, 1}, {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK(f->C_GenerateKey(h, &pbkdf2, pt, 4, &k));
    unhex("ea6c014dc72d6f8ccd1ed92ace1d41f0", want, sizeof(want));
    set_odd_parity(want, 16);
    assert_bytes(val, value_of(k, val, sizeof(val)), want, 16, "PBKDF2 to a DES2 key");
}

static void test_tdes_import(void **state)
{
    (void)state;
    uint8_t v[32];
    CK_OBJECT_HANDLE o;
    CK_ULONG vl = 24;
    CK_ATTRIBUTE withlen = {CKA_VALUE_LEN, &vl, sizeof(vl)};

    memset(v, 0x5d, sizeof(v));
    CK(create_secret(CKK_DES2, v, 16, U_CRYPT, NULL, 0, &o));
    CK(create_secret(CKK_DES3, v, 24, U_CRYPT, NULL, 0, &o));
    /* The value is kept as given, parity bits and all. */
    uint8_t back[32];
    assert_int_equal(value_of(o, back, sizeof(back)), 24);
    assert_memory_equal(back, v, 24);
    static const size_t bad3[] = {8, 16, 23, 25, 32}, bad2[] = {8, 15, 17, 24};
    for (size_t i = 0; i < sizeof(bad3) / sizeof(bad3[0]); i++)
        RV(CKR_ATTRIBUTE_VALUE_INVALID, create_secret(CKK_DES3, v, bad3[i], U_CRYPT, NULL, 0, &o));
    for (size_t i = 0; i < sizeof(bad2) / sizeof(bad2[0]); i++)
        RV(CKR_ATTRIBUTE_VALUE_INVALID, create_secret(CKK_DES2, v, bad2[i], U_CRYPT, NULL, 0, &o));
    /* PKCS#11 gives DES keys no CKA_VALUE_LEN: a template with one is wrong. */
    RV(CKR_ATTRIBUTE_TYPE_INVALID, create_secret(CKK_DES3, v, 24, U_CRYPT, &withlen, 1, &o));
    /* No value. */
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_DES3;
    CK_ATTRIBUTE novalue[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1}};
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_CreateObject(h, novalue, 3, &o));
    /* An empty value is a value, and a wrong one (google/pkcs11test's
     * CreateSecretKeyAttributes gave one: CKR_TEMPLATE_INCOMPLETE before). */
    CK_ATTRIBUTE empty[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1},
                            {CKA_VALUE, v, 0}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_CreateObject(h, empty, 4, &o));
    /* Single DES is off by default (legacy_mechanisms = no): its key type is
     * not one this token takes. */
    RV(CKR_ATTRIBUTE_VALUE_INVALID, create_secret(CKK_DES, v, 8, U_CRYPT, NULL, 0, &o));
    /* The token computes no CKA_CHECK_VALUE, for DES keys as for AES ones. */
    CK_OBJECT_HANDLE aes;
    CK(create_secret(CKK_AES, v, 16, U_CRYPT, NULL, 0, &aes));
    CK(create_secret(CKK_DES3, v, 24, U_CRYPT, NULL, 0, &o));
    uint8_t kcv[3];
    CK_ATTRIBUTE c = {CKA_CHECK_VALUE, kcv, sizeof(kcv)};
    CK_RV aes_rv = f->C_GetAttributeValue(h, aes, &c, 1);
    c.ulValueLen = sizeof(kcv);
    RV(aes_rv, f->C_GetAttributeValue(h, o, &c, 1));
}

/* ---- error cases -------------------------------------------------------------- */

static void test_tdes_errors(void **state)
{
    (void)state;
    uint8_t iv[16] = {1, 2, 3, 4, 5, 6, 7, 8}, data[40], out[64];
    CK_OBJECT_HANDLE k = secret(CKK_DES3, K3, U_CRYPT | U_SIGN), aes = secret(CKK_AES, K2, U_CRYPT | U_SIGN),
                     gen24 = secret(CKK_GENERIC_SECRET, K3, U_CRYPT | U_SIGN);
    CK_MECHANISM ecb = {CKM_DES3_ECB, NULL, 0}, cbc = {CKM_DES3_CBC, iv, 8}, pad = {CKM_DES3_CBC_PAD, iv, 8},
                 cmac = {CKM_DES3_CMAC, NULL, 0};
    CK_ULONG n;

    memset(data, 0x42, sizeof(data));
    /* Bad IVs: a block is 8 bytes. */
    CK_MECHANISM_TYPE ivm[] = {CKM_DES3_CBC, CKM_DES3_CBC_PAD};
    for (int i = 0; i < 2; i++) {
        CK_MECHANISM m16 = {ivm[i], iv, 16}, m7 = {ivm[i], iv, 7}, mnull = {ivm[i], NULL, 8}, mnone = {ivm[i], NULL, 0};
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &m16, k));
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &m7, k));
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &mnull, k));
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_DecryptInit(h, &mnone, k));
    }
    CK_MECHANISM ecbiv = {CKM_DES3_ECB, iv, 8};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &ecbiv, k));

    /* Wrong key types, both ways. */
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &ecb, aes));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_DecryptInit(h, &cbc, gen24));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &cmac, aes));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_VerifyInit(h, &cmac, gen24));
    CK_MECHANISM aes_ecb = {CKM_AES_ECB, NULL, 0}, aes_cmac = {CKM_AES_CMAC, NULL, 0};
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &aes_ecb, k));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &aes_cmac, k));

    /* Size query and short buffer leave the operation active. */
    CK(f->C_EncryptInit(h, &pad, k));
    sized(f->C_Encrypt, data, 20, out, 24, 24);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, data, 20, out, &n)); /* the operation is over */
    CK(f->C_DecryptInit(h, &pad, k));
    sized(f->C_Decrypt, out, 24, out + 24, 24, 20); /* the query: an upper bound */
    /* multi-part: an update's size query */
    CK(f->C_EncryptInit(h, &cbc, k));
    sized(f->C_EncryptUpdate, data, 13, out, 8, 8);
    n = sizeof(out);
    CK(f->C_EncryptUpdate(h, data, 3, out, &n)); /* 5 + 3: one more block */
    assert_int_equal(n, 8);
    n = 0;
    CK(f->C_EncryptFinal(h, NULL, &n));
    assert_int_equal(n, 0);
    CK(f->C_EncryptFinal(h, out, &n));

    /* ECB and CBC take whole blocks. */
    CK_MECHANISM *blocks[] = {&ecb, &cbc};
    for (int i = 0; i < 2; i++) {
        CK(f->C_EncryptInit(h, blocks[i], k));
        n = sizeof(out);
        RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, data, 20, out, &n));
        RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, data, 16, out, &n)); /* that error ended it */
        CK(f->C_DecryptInit(h, blocks[i], k));
        n = sizeof(out);
        RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, data, 20, out, &n));
        CK(f->C_EncryptInit(h, blocks[i], k));
        n = sizeof(out);
        CK(f->C_EncryptUpdate(h, data, 12, out, &n));
        assert_int_equal(n, 8);
        n = sizeof(out);
        RV(CKR_DATA_LEN_RANGE, f->C_EncryptFinal(h, out, &n));
        CK(f->C_DecryptInit(h, blocks[i], k));
        n = sizeof(out);
        CK(f->C_DecryptUpdate(h, data, 12, out, &n));
        n = sizeof(out);
        RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_DecryptFinal(h, out, &n));
    }
    /* CBC_PAD: ciphertext of whole blocks, padding that checks. */
    CK(f->C_DecryptInit(h, &pad, k));
    n = sizeof(out);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, data, 12, out, &n));
    CK(f->C_DecryptInit(h, &pad, k));
    n = sizeof(out);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, data, 0, out, &n));
    uint8_t key[24], padbad[16], plain[16];
    unhex(K3, key, sizeof(key));
    memset(plain, 0x11, sizeof(plain)); /* last byte 0x11: no valid padding */
    ossl_crypt("DES-EDE3-CBC", false, key, iv, plain, 16, padbad);
    CK(f->C_DecryptInit(h, &pad, k));
    n = sizeof(out);
    RV(CKR_ENCRYPTED_DATA_INVALID, f->C_Decrypt(h, padbad, 16, out, &n));

    /* Operation state. */
    CK(f->C_EncryptInit(h, &ecb, k));
    RV(CKR_OPERATION_ACTIVE, f->C_EncryptInit(h, &ecb, k));
    n = sizeof(out);
    CK(f->C_Encrypt(h, data, 8, out, &n));
    n = sizeof(out);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptUpdate(h, data, 8, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_EncryptFinal(h, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptUpdate(h, data, 8, out, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignFinal(h, out, &n));
    /* A key without CKA_ENCRYPT. */
    CK_OBJECT_HANDLE signonly = secret(CKK_DES3, K3, U_SIGN);
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_EncryptInit(h, &ecb, signonly));
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_SignInit(h, &cmac, secret(CKK_DES3, K3, U_CRYPT)));
}

/* ---- wrap and unwrap ------------------------------------------------------------ */

static CK_RV unwrap(CK_MECHANISM *m, CK_OBJECT_HANDLE w, const uint8_t *blob, size_t bl, CK_KEY_TYPE kt, CK_ULONG vlen,
                    CK_OBJECT_HANDLE *o)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1},
        {CKA_SENSITIVE, &no, 1},        {CKA_EXTRACTABLE, &yes, 1},      {CKA_VALUE_LEN, &vlen, sizeof(vlen)}};
    return f->C_UnwrapKey(h, m, w, (CK_BYTE_PTR)blob, bl, t, vlen ? 6 : 5, o);
}

static void test_tdes_wrap(void **state)
{
    (void)state;
    uint8_t iv[8], kek[24], aes256[32], blob[64], want[64], val[64];
    CK_MECHANISM ecb = {CKM_DES3_ECB, NULL, 0}, cbc = {CKM_DES3_CBC, iv, 8}, pad = {CKM_DES3_CBC_PAD, iv, 8};
    struct {
        CK_MECHANISM *m;
        const char *cipher;
        bool pad;
    } modes[] = {{&ecb, "DES-EDE3-ECB", false}, {&cbc, "DES-EDE3-CBC", false}, {&pad, "DES-EDE3-CBC", true}};
    CK_OBJECT_HANDLE w = secret(CKK_DES3, K3, U_WRAP), o;
    CK_ULONG bl;

    unhex(IV, iv, sizeof(iv));
    unhex(K3, kek, sizeof(kek));
    for (int i = 0; i < 32; i++)
        aes256[i] = (uint8_t)(0xa0 + i);
    CK_OBJECT_HANDLE target;
    CK(create_secret(CKK_AES, aes256, 32, 0, NULL, 0, &target));
    for (int i = 0; i < 3; i++) {
        size_t wl = ossl_crypt(modes[i].cipher, modes[i].pad, kek, modes[i].m == &ecb ? NULL : iv, aes256, 32, want);
        bl = 0;
        CK(f->C_WrapKey(h, modes[i].m, w, target, NULL, &bl));
        assert_int_equal(bl, wl);
        bl = wl - 1;
        RV(CKR_BUFFER_TOO_SMALL, f->C_WrapKey(h, modes[i].m, w, target, blob, &bl));
        assert_int_equal(bl, wl);
        bl = sizeof(blob);
        CK(f->C_WrapKey(h, modes[i].m, w, target, blob, &bl));
        assert_bytes(blob, bl, want, wl, modes[i].cipher);
        CK(unwrap(modes[i].m, w, blob, bl, CKK_AES, 0, &o));
        assert_bytes(val, value_of(o, val, sizeof(val)), aes256, 32, "AES-256 key unwrapped");
        RV(CKR_WRAPPED_KEY_LEN_RANGE, unwrap(modes[i].m, w, blob, 12, CKK_AES, 0, &o));
    }
    /* A two-key wrapping key and an AES-128 key. */
    CK_OBJECT_HANDLE w2 = secret(CKK_DES2, K2, U_WRAP), t128;
    CK(create_secret(CKK_AES, aes256, 16, 0, NULL, 0, &t128));
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &pad, w2, t128, blob, &bl));
    assert_int_equal(bl, 24);
    CK(unwrap(&pad, w2, blob, bl, CKK_AES, 0, &o));
    assert_bytes(val, value_of(o, val, sizeof(val)), aes256, 16, "AES-128 key under two-key DES3");
    /* Not a whole block: zero bytes to one (ECB, CBC), CKA_VALUE_LEN takes them out. */
    CK_OBJECT_HANDLE g5;
    CK(create_secret(CKK_GENERIC_SECRET, (const uint8_t *)"five!", 5, 0, NULL, 0, &g5));
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &cbc, w, g5, blob, &bl));
    assert_int_equal(bl, 8);
    CK(unwrap(&cbc, w, blob, bl, CKK_GENERIC_SECRET, 5, &o));
    assert_bytes(val, value_of(o, val, sizeof(val)), (const uint8_t *)"five!", 5, "5 bytes back");

    /* DES3 keys wrapped: under AES ECB a 24-byte key takes two blocks, and
     * unwrapping as CKK_DES3 keeps the 24 bytes its type has. */
    CK_OBJECT_HANDLE aeskek = secret(CKK_AES, K2, U_WRAP), d3 = secret(CKK_DES3, K3, 0);
    CK_MECHANISM aes_ecb = {CKM_AES_ECB, NULL, 0};
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &aes_ecb, aeskek, d3, blob, &bl));
    assert_int_equal(bl, 32);
    CK(unwrap(&aes_ecb, aeskek, blob, bl, CKK_DES3, 0, &o));
    assert_bytes(val, value_of(o, val, sizeof(val)), kek, 24, "DES3 key under AES-ECB");
    RV(CKR_ATTRIBUTE_TYPE_INVALID, unwrap(&aes_ecb, aeskek, blob, bl, CKK_DES3, 24, &o)); /* no CKA_VALUE_LEN */
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &pad, w, d3, blob, &bl));
    assert_int_equal(bl, 32);
    CK(unwrap(&pad, w, blob, bl, CKK_DES3, 0, &o));
    assert_bytes(val, value_of(o, val, sizeof(val)), kek, 24, "DES3 key under DES3-CBC-PAD");
    /* A padded blob of another length is not a DES key of that type. */
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &pad, w, t128, blob, &bl));
    RV(CKR_WRAPPED_KEY_INVALID, unwrap(&pad, w, blob, bl, CKK_DES3, 0, &o));
    CK(unwrap(&pad, w, blob, bl, CKK_DES2, 0, &o)); /* 16 bytes: a two-key one */
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &pad, w, target, blob, &bl));
    RV(CKR_WRAPPED_KEY_INVALID, unwrap(&pad, w, blob, bl, CKK_DES2, 0, &o));
    /* Parameters and key types. */
    CK_MECHANISM cbc16 = {CKM_DES3_CBC, iv, 16};
    bl = sizeof(blob);
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_WrapKey(h, &cbc16, w, target, blob, &bl));
    bl = sizeof(blob);
    RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, f->C_WrapKey(h, &ecb, aeskek, target, blob, &bl));
    RV(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, unwrap(&ecb, aeskek, blob, 32, CKK_AES, 0, &o));
}

/* wrap_policy = strict: DES3 ECB, CBC and CBC_PAD lose CKF_UNWRAP as the AES
 * ones do (a chosen ciphertext or a short length reads a key out); they
 * still wrap, under a key the token generated and never let out. */
static void test_tdes_wrap_strict(void **state)
{
    (void)state;
    CK_MECHANISM_TYPE block[] = {CKM_DES3_ECB, CKM_DES3_CBC, CKM_DES3_CBC_PAD,
                                 CKM_AES_ECB,  CKM_AES_CBC,  CKM_AES_CBC_PAD};
    for (size_t i = 0; i < sizeof(block) / sizeof(block[0]); i++) {
        CK_MECHANISM_INFO mi;
        CK(f->C_GetMechanismInfo(slot, block[i], &mi));
        assert_true(mi.flags & CKF_WRAP);
        assert_false(mi.flags & CKF_UNWRAP);
    }
    uint8_t iv[8] = {9}, blob[64];
    CK_MECHANISM pad = {CKM_DES3_CBC_PAD, iv, 8}, gen3 = {CKM_DES3_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE wt[] = {{CKA_TOKEN, &no, 1}, {CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CK_OBJECT_HANDLE w, o, target;
    CK(f->C_GenerateKey(h, &gen3, wt, 4, &w));
    uint8_t aes[16] = "AES key to wrap";
    CK(create_secret(CKK_AES, aes, 16, 0, NULL, 0, &target));
    CK_ULONG bl = sizeof(blob);
    CK(f->C_WrapKey(h, &pad, w, target, blob, &bl));
    assert_int_equal(bl, 24);
    RV(CKR_MECHANISM_INVALID, unwrap(&pad, w, blob, bl, CKK_AES, 0, &o));
    /* A DES3 key of known value does not wrap (the known-key attack). */
    CK_OBJECT_HANDLE known = secret(CKK_DES3, K3, U_WRAP);
    bl = sizeof(blob);
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_WrapKey(h, &pad, known, target, blob, &bl));
    /* One key, one role. */
    CK_ATTRIBUTE both[] = {{CKA_TOKEN, &no, 1}, {CKA_WRAP, &yes, 1}, {CKA_ENCRYPT, &yes, 1}};
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_GenerateKey(h, &gen3, both, 3, &o));
}

/* ---- legacy mechanisms ------------------------------------------------------ */

static const CK_MECHANISM_TYPE legacy[] = {CKM_DES_KEY_GEN, CKM_DES_ECB, CKM_DES_CBC,
                                           CKM_DES_CBC_PAD, CKM_MD5,     CKM_MD5_HMAC};
#define N_LEGACY (sizeof(legacy) / sizeof(legacy[0]))

static bool listed(CK_MECHANISM_TYPE m)
{
    CK_MECHANISM_TYPE l[160];
    CK_ULONG n = 160;
    CK(f->C_GetMechanismList(slot, l, &n));
    for (CK_ULONG i = 0; i < n; i++)
        if (l[i] == m)
            return true;
    return false;
}

/* Not listed, and not usable by any door. */
static void assert_legacy_off(void)
{
    CK_MECHANISM_INFO mi;
    CK_OBJECT_HANDLE k, d3 = secret(CKK_DES3, K3, U_CRYPT | U_SIGN | U_WRAP),
                        g = secret(CKK_GENERIC_SECRET, K2, U_SIGN);
    uint8_t v[8] = "8 bytes", iv[8] = {0}, blob[64];
    CK_ULONG bl = sizeof(blob);

    for (size_t i = 0; i < N_LEGACY; i++) {
        assert_false(listed(legacy[i]));
        RV(CKR_MECHANISM_INVALID, f->C_GetMechanismInfo(slot, legacy[i], &mi));
    }
    CK_MECHANISM md5 = {CKM_MD5, NULL, 0}, hmac = {CKM_MD5_HMAC, NULL, 0}, gen = {CKM_DES_KEY_GEN, NULL, 0},
                 ecb = {CKM_DES_ECB, NULL, 0}, cbc = {CKM_DES_CBC, iv, 8};
    RV(CKR_MECHANISM_INVALID, f->C_DigestInit(h, &md5));
    RV(CKR_MECHANISM_INVALID, f->C_SignInit(h, &hmac, g));
    RV(CKR_MECHANISM_INVALID, f->C_GenerateKey(h, &gen, NULL, 0, &k));
    RV(CKR_MECHANISM_INVALID, f->C_EncryptInit(h, &ecb, d3));
    RV(CKR_MECHANISM_INVALID, f->C_WrapKey(h, &cbc, d3, g, blob, &bl));
    RV(CKR_ATTRIBUTE_VALUE_INVALID, create_secret(CKK_DES, v, 8, U_CRYPT, NULL, 0, &k));
}

static void test_legacy_off_by_default(void **state)
{
    (void)state;
    assert_legacy_off();
}

static void test_legacy_provider_missing(void **state)
{
    (void)state;
    char path[96], line[512];
    bool said = false;

    assert_legacy_off();
    snprintf(path, sizeof(path), "%s/p11mk.log", tmp);
    FILE *lf = fopen(path, "r");
    assert_non_null(lf);
    while (fgets(line, sizeof(line), lf))
        said |= strstr(line, "legacy provider cannot be loaded") != NULL;
    fclose(lf);
    assert_true(said);
}

static void test_legacy_on(void **state)
{
    (void)state;
    CK_MECHANISM_INFO mi;
    uint8_t out[128], back[128], want[64];

    for (size_t i = 0; i < N_LEGACY; i++)
        assert_true(listed(legacy[i]));
    CK(f->C_GetMechanismInfo(slot, CKM_DES_KEY_GEN, &mi));
    assert_true(mi.ulMinKeySize == 8 && mi.ulMaxKeySize == 8 && mi.flags == CKF_GENERATE);
    CK_MECHANISM_TYPE des_ops[] = {CKM_DES_ECB, CKM_DES_CBC, CKM_DES_CBC_PAD};
    for (int i = 0; i < 3; i++) { /* 56-bit keys wrap nothing */
        CK(f->C_GetMechanismInfo(slot, des_ops[i], &mi));
        assert_true(mi.ulMinKeySize == 8 && mi.ulMaxKeySize == 8 && mi.flags == (CKF_ENCRYPT | CKF_DECRYPT));
    }
    CK(f->C_GetMechanismInfo(slot, CKM_MD5, &mi));
    assert_int_equal(mi.flags, CKF_DIGEST);
    CK(f->C_GetMechanismInfo(slot, CKM_MD5_HMAC, &mi));
    assert_int_equal(mi.flags, CKF_SIGN | CKF_VERIFY | TEST_MESSAGE_MAC);

    /* RFC 1321 A.5, one-shot and in pieces of 3 bytes. */
    static const struct {
        const char *msg, *md;
    } md5v[] = {
        {"", "d41d8cd98f00b204e9800998ecf8427e"},
        {"a", "0cc175b9c0f1b6a831c399e269772661"},
        {"abc", "900150983cd24fb0d6963f7d28e17f72"},
        {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
        {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"},
        {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
         "57edf4a22be3c955ac49da2e2107b67a"},
    };
    CK_MECHANISM md5 = {CKM_MD5, NULL, 0};
    for (size_t i = 0; i < sizeof(md5v) / sizeof(md5v[0]); i++) {
        size_t ml = strlen(md5v[i].msg);
        CK_ULONG n = sizeof(out);
        unhex(md5v[i].md, want, sizeof(want));
        CK(f->C_DigestInit(h, &md5));
        CK(f->C_Digest(h, (CK_BYTE_PTR)md5v[i].msg, ml, out, &n));
        assert_bytes(out, n, want, 16, "MD5");
        CK(f->C_DigestInit(h, &md5));
        for (size_t off = 0; off < ml; off += 3)
            CK(f->C_DigestUpdate(h, (CK_BYTE_PTR)md5v[i].msg + off, ml - off < 3 ? ml - off : 3));
        n = sizeof(out);
        CK(f->C_DigestFinal(h, out, &n));
        assert_bytes(out, n, want, 16, "MD5 in parts");
    }

    /* RFC 2104 (appendix and its test vectors). */
    static const struct {
        const char *key, *data, *mac;
    } hm[] = {
        {"0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265", "9294727a3638bb1c13f48ef8158bfc9d"},
        {"4a656665", "7768617420646f2079612077616e7420666f72206e6f7468696e673f", "750c783e6ab0b503eaa86e310a5db738"},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
         "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
         "56be34521d144c88dbb8c733f0e8b3f6"},
    };
    CK_MECHANISM hmac = {CKM_MD5_HMAC, NULL, 0};
    for (size_t i = 0; i < sizeof(hm) / sizeof(hm[0]); i++) {
        uint8_t data[64], mac[16];
        size_t dl_ = unhex(hm[i].data, data, sizeof(data));
        unhex(hm[i].mac, mac, sizeof(mac));
        CK_OBJECT_HANDLE k = secret(CKK_GENERIC_SECRET, hm[i].key, U_SIGN);
        assert_bytes(out, sign1(&hmac, k, data, dl_, out), mac, 16, "HMAC-MD5");
        CK(f->C_VerifyInit(h, &hmac, k));
        CK(f->C_Verify(h, data, dl_, mac, 16));
        mac[0] ^= 1;
        CK(f->C_VerifyInit(h, &hmac, k));
        RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, data, dl_, mac, 16));
    }

    /* FIPS 81, appendix B (ECB) and C (CBC): "Now is the time for all ". */
    uint8_t pt[24], ct[24], iv[8];
    unhex("4e6f77206973207468652074696d6520666f7220616c6c20", pt, sizeof(pt));
    unhex("1234567890abcdef", iv, sizeof(iv));
    CK_OBJECT_HANDLE dk = secret(CKK_DES, "0123456789abcdef", U_CRYPT);
    CK_MECHANISM ecb = {CKM_DES_ECB, NULL, 0}, cbc = {CKM_DES_CBC, iv, 8}, pad = {CKM_DES_CBC_PAD, iv, 8};
    unhex("3fa40e8a984d48156a271787ab8883f9893d51ec4b563b53", ct, sizeof(ct));
    assert_bytes(out, crypt1(true, &ecb, dk, pt, 24, out, sizeof(out)), ct, 24, "DES-ECB");
    assert_bytes(out, crypt_parts(false, &ecb, dk, ct, 24, out, sizeof(out)), pt, 24, "DES-ECB back");
    unhex("e5c7cdde872bf27c43e934008c389c0f683788499a7c05f6", ct, sizeof(ct));
    assert_bytes(out, crypt_parts(true, &cbc, dk, pt, 24, out, sizeof(out)), ct, 24, "DES-CBC");
    assert_bytes(out, crypt1(false, &cbc, dk, ct, 24, out, sizeof(out)), pt, 24, "DES-CBC back");
    /* Parity bits ignored: the key with each low bit flipped. */
    uint8_t fk[8];
    CK_OBJECT_HANDLE flipped;
    unhex("0123456789abcdef", fk, sizeof(fk));
    for (int i = 0; i < 8; i++)
        fk[i] ^= 1;
    CK(create_secret(CKK_DES, fk, 8, U_CRYPT, NULL, 0, &flipped));
    assert_bytes(out, crypt1(true, &cbc, flipped, pt, 24, out, sizeof(out)), ct, 24, "DES-CBC, parity flipped");
    /* CBC_PAD: whole blocks out, the data back. */
    for (size_t len = 0; len <= 17; len++) {
        size_t cl = crypt1(true, &pad, dk, pt, len, out, sizeof(out));
        assert_int_equal(cl, (len / 8 + 1) * 8);
        assert_bytes(back, crypt_parts(false, &pad, dk, out, cl, back, sizeof(back)), pt, len, "DES-CBC-PAD");
    }
    CK_ULONG n = sizeof(out);
    CK(f->C_EncryptInit(h, &ecb, dk));
    RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, pt, 12, out, &n));
    CK_MECHANISM cbc16 = {CKM_DES_CBC, iv, 16};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &cbc16, dk));

    /* Keys: generation with odd parity, import of 8 bytes only, each family its own key types. */
    CK_OBJECT_HANDLE gk, k;
    uint8_t val[16];
    CK(gen(CKM_DES_KEY_GEN, NULL, 0, &gk));
    assert_int_equal(value_of(gk, val, sizeof(val)), 8);
    assert_true(odd_parity(val, 8));
    assert_int_equal(crypt1(true, &ecb, gk, pt, 16, out, sizeof(out)), 16);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, create_secret(CKK_DES, pt, 7, U_CRYPT, NULL, 0, &k));
    RV(CKR_ATTRIBUTE_VALUE_INVALID, create_secret(CKK_DES, pt, 16, U_CRYPT, NULL, 0, &k));
    CK_ULONG eight = 8;
    CK_ATTRIBUTE withlen = {CKA_VALUE_LEN, &eight, sizeof(eight)};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, create_secret(CKK_DES, pt, 8, U_CRYPT, &withlen, 1, &k));
    CK_MECHANISM ecb3 = {CKM_DES3_ECB, NULL, 0};
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &ecb3, dk));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_EncryptInit(h, &ecb, secret(CKK_DES3, K3, U_CRYPT)));
    /* No wrapping with single DES, either way. */
    CK_OBJECT_HANDLE dw = secret(CKK_DES, "0123456789abcdef", U_WRAP);
    CK_ULONG bl = sizeof(out);
    RV(CKR_MECHANISM_INVALID, f->C_WrapKey(h, &pad, dw, gk, out, &bl));
    /* MD5 is no parameter of other mechanisms (OAEP, PSS, HKDF take SHA-1/2/3). */
    CK_OBJECT_HANDLE pub, priv;
    CK_ULONG bits = 2048;
    CK_MECHANISM rgen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE rp[] = {{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_ENCRYPT, &yes, 1}};
    CK_ATTRIBUTE rk[] = {{CKA_TOKEN, &no, 1}, {CKA_DECRYPT, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &rgen, rp, 3, rk, 2, &pub, &priv));
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_MD5, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &oaep, pub));

    /* legacy_mechanisms = no again: the provider stays loaded in the
     * process, the mechanisms go. */
    CK(f->C_Finalize(NULL));
    assert_int_equal(start(""), 0);
    assert_legacy_off();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tdes_ecb_cbc_vectors, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_cbc_pad_against_openssl, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_cmac_vectors, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_keygen, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_derived, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_import, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_errors, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_wrap, start_default, stop),
        cmocka_unit_test_setup_teardown(test_tdes_wrap_strict, start_strict, stop),
        cmocka_unit_test_setup_teardown(test_legacy_off_by_default, start_default, stop),
        /* before test_legacy_on: once loaded, the provider stays */
        cmocka_unit_test_setup_teardown(test_legacy_provider_missing, start_legacy_missing, stop),
        cmocka_unit_test_setup_teardown(test_legacy_on, start_legacy, stop),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
