/* Known answers for the values that tie stored data to the code that reads
 * it: if one of them changes, keystores, key files, passphrases and PIN
 * records made by an earlier p11mk stop opening. Each value is pinned as
 * bytes AND recomputed here with plain OpenSSL (EVP_KDF SCRYPT / HKDF,
 * SHA-256, AES-256-GCM) from the construction the headers document, so the
 * pinned bytes are shown to follow that construction and not just whatever
 * the code happened to compute:
 *
 *   - master key from a passphrase: scrypt(N=2^15, r=8, p=1), salt
 *     "p11mk master key passphrase v1"; from n parts: XOR of scrypt(part i,
 *     "p11mk master key part v1/i");
 *   - the built-in default key (SHA-256 of its seed) and key check values
 *     (HKDF-SHA256, no salt, info "p11mk key check value v1", 8 bytes);
 *   - the record key of an epoch (HKDF-SHA256, salt = keystore id, info
 *     "p11mk record key v1" | BE32 epoch) and the sealed record format with
 *     its AAD; the anchor's set hashes;
 *   - PIN records v1 and v2 (scrypt 64 bytes: verifier | kek; the token key
 *     wrapped under kek), the token key's check value, the serialized
 *     attribute form and the private-object envelope;
 *   - a keystore written by an earlier p11mk (tests/fixtures/pin-v1) still
 *     opens, verifies, and its records decrypt independently. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "keystore/ks.h"
#include "keystore/ks_internal.h"
#include "keystore/ks_tamper.h"
#include "tests/unit/ks_test_util.h"
#include "token/tok_envelope.h"
#include "token/tok_internal.h"
#include "token/tok_pin.h"
#include "tests/unit/test_hex.h"

/* ---- helpers ------------------------------------------------------------- */

/* Hex (spaces ignored) to bytes; the length is asserted to be `want`. */
static void unhex(const char *s, uint8_t *out, size_t want) { assert_int_equal(test_unhex(s, out, want), want); }

static void assert_hex(const uint8_t *got, size_t len, const char *want_hex)
{
    uint8_t want[512];
    assert_true(len <= sizeof(want));
    unhex(want_hex, want, len);
    if (memcmp(got, want, len) != 0) {
        fprintf(stderr, "got:  ");
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, "%02x", got[i]);
        fprintf(stderr, "\nwant: %s\n", want_hex);
    }
    assert_memory_equal(got, want, len);
}

static void fill(uint8_t *p, size_t n, uint8_t first)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(first + i);
}

static void be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static void le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The independent computations: plain OpenSSL in its default library
 * context, nothing from p11mk. */
static void ossl_scrypt(const void *pass, size_t plen, const void *salt, size_t slen, uint64_t n, uint32_t r,
                        uint32_t p, uint8_t *out, size_t outlen)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL);
    EVP_KDF_CTX *c = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)pass, plen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, slen),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p),
        OSSL_PARAM_construct_end(),
    };
    assert_non_null(c);
    assert_int_equal(EVP_KDF_derive(c, out, outlen, params), 1);
    EVP_KDF_CTX_free(c);
    EVP_KDF_free(kdf);
}

static void ossl_hkdf(const uint8_t *key, size_t klen, const uint8_t *salt, size_t slen, const void *info,
                      size_t ilen, uint8_t *out, size_t outlen)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *c = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[5], *q = params;
    *q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, klen);
    if (slen)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, slen);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, ilen);
    *q = OSSL_PARAM_construct_end();
    assert_non_null(c);
    assert_int_equal(EVP_KDF_derive(c, out, outlen, params), 1);
    EVP_KDF_CTX_free(c);
    EVP_KDF_free(kdf);
}

static void ossl_sha256(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned n = 0;
    assert_non_null(c);
    assert_int_equal(EVP_DigestInit_ex2(c, EVP_sha256(), NULL), 1);
    assert_int_equal(EVP_DigestUpdate(c, a, alen), 1);
    if (blen)
        assert_int_equal(EVP_DigestUpdate(c, b, blen), 1);
    assert_int_equal(EVP_DigestFinal_ex(c, out, &n), 1);
    assert_int_equal(n, 32);
    EVP_MD_CTX_free(c);
}

/* AES-256-GCM, 12-byte nonce, 16-byte tag: out = ciphertext | tag on seal;
 * open returns 1 when the tag verifies (out = plaintext). */
static int ossl_gcm(int enc, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
                    const uint8_t *in, size_t len, uint8_t *out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, ok;
    uint8_t tag[16];
    assert_non_null(c);
    ok = EVP_CipherInit_ex2(c, EVP_aes_256_gcm(), key, nonce, enc, NULL) == 1 &&
         EVP_CipherUpdate(c, NULL, &n, aad, (int)aadlen) == 1 &&
         (len == 0 || EVP_CipherUpdate(c, out, &n, in, (int)len) == 1);
    if (ok && !enc) {
        memcpy(tag, in + len, 16);
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
    }
    ok = ok && EVP_CipherFinal_ex(c, out + len, &n) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out + len) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok;
}

/* ---- scrypt itself ------------------------------------------------------- */

/* The independent scrypt above is the standard one: RFC 7914 section 12,
 * third vector ("pleaseletmein", "SodiumChloride", N=16384, r=8, p=1). */
static void test_scrypt_rfc7914(void **state)
{
    (void)state;
    uint8_t out[64];
    ossl_scrypt("pleaseletmein", 13, "SodiumChloride", 14, 16384, 8, 1, out, sizeof(out));
    assert_hex(out, 64,
               "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
               "d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887");
}

/* ---- master keys --------------------------------------------------------- */

#define PASS_SALT "p11mk master key passphrase v1"
#define PASS_KAT "34d9cd366f3475d1c6111d5dc68353239b431d5a3f67b49952a94d4dd937d519"

static void test_passphrase_master_key(void **state)
{
    (void)state;
    static const char pass[] = "correct horse battery staple";
    ks_mkey mk;
    uint8_t ind[32];

    assert_int_equal(ks_mkey_from_passphrase(pass, strlen(pass), &mk), KS_OK);
    assert_false(mk.is_default);
    assert_hex(mk.key, 32, PASS_KAT);
    ossl_scrypt(pass, strlen(pass), PASS_SALT, strlen(PASS_SALT), 1u << 15, 8, 1, ind, 32);
    assert_hex(ind, 32, PASS_KAT);
    ks_mkey_clear(&mk);
}

static const char *const parts[] = {"first key part!", "second key part", "third key part."};

static void parts_independent(size_t n, uint8_t out[32])
{
    uint8_t k[32];
    char salt[64];
    memset(out, 0, 32);
    for (size_t i = 0; i < n; i++) {
        snprintf(salt, sizeof(salt), "p11mk master key part v1/%zu", i + 1);
        ossl_scrypt(parts[i], strlen(parts[i]), salt, strlen(salt), 1u << 15, 8, 1, k, 32);
        for (int j = 0; j < 32; j++)
            out[j] ^= k[j];
    }
}

static void test_parts_master_key(void **state)
{
    (void)state;
    static const char kat3[] = "12abdce3889da62beb024876f599cbf5479b8232f986786916a91e317c10c5d6";
    static const char kat2[] = "d909ca8b5aa19c128927b91e2de3926f98fe13145c769fb633c7cb3e52249c71";
    ks_mkey mk;
    uint8_t ind[32];

    assert_int_equal(ks_mkey_from_parts(parts, 3, &mk), KS_OK);
    assert_hex(mk.key, 32, kat3);
    parts_independent(3, ind);
    assert_hex(ind, 32, kat3);

    assert_int_equal(ks_mkey_from_parts(parts, 2, &mk), KS_OK);
    assert_hex(mk.key, 32, kat2);
    parts_independent(2, ind);
    assert_hex(ind, 32, kat2);
    ks_mkey_clear(&mk);
}

/* ---- the built-in key and check values ------------------------------------ */

#define KCV_INFO "p11mk key check value v1"

static void test_default_key_and_kcv(void **state)
{
    (void)state;
    static const char seed[] = "p11mk built-in default master key, not secret, v1";
    static const char key_kat[] = "b33894ff2da2f92bd9dd3dbd1e4337e174203a1b48d1b82531d95724bf199704";
    ks_mkey mk, loaded;
    ks_config cfg;
    ks_err err = KS_ERR_INIT;
    uint8_t kcv[KS_KCV_LEN], ind[32];
    char hex[2 * KS_KCV_LEN + 1];

    ks_mkey_default(&mk);
    assert_true(mk.is_default);
    assert_hex(mk.key, 32, key_kat);
    ossl_sha256(seed, strlen(seed), NULL, 0, ind);
    assert_hex(ind, 32, key_kat);

    /* Every keystore made without a key file carries this check value. */
    ks_mkey_kcv(&mk, kcv);
    ks_kcv_hex(kcv, hex);
    assert_string_equal(hex, "876fcc04a71f48d7");
    ossl_hkdf(ind, 32, NULL, 0, KCV_INFO, strlen(KCV_INFO), ind, KS_KCV_LEN);
    assert_hex(ind, KS_KCV_LEN, "876fcc04a71f48d7");

    /* The configuration's "default" is that key. */
    ks_config_defaults(&cfg);
    assert_string_equal(cfg.master_key, "default");
    assert_int_equal(ks_mkey_load(&cfg, &loaded, &err), KS_OK);
    assert_true(loaded.is_default);
    assert_memory_equal(loaded.key, mk.key, 32);
    ks_config_free(&cfg);
}

static void test_kcv_fixed_key(void **state)
{
    (void)state;
    uint8_t key[32], kcv[KS_KCV_LEN], kcv2[KS_KCV_LEN], ind[KS_KCV_LEN];
    ks_mkey mk;
    char hex[2 * KS_KCV_LEN + 1];

    fill(key, 32, 0);
    ks_key_kcv(key, kcv);
    assert_hex(kcv, KS_KCV_LEN, "54ea024cfc9d4d5a");
    memset(&mk, 0, sizeof(mk));
    memcpy(mk.key, key, 32);
    ks_mkey_kcv(&mk, kcv2);
    assert_memory_equal(kcv, kcv2, KS_KCV_LEN);
    ks_kcv_hex(kcv, hex);
    assert_string_equal(hex, "54ea024cfc9d4d5a");
    ossl_hkdf(key, 32, NULL, 0, KCV_INFO, strlen(KCV_INFO), ind, KS_KCV_LEN);
    assert_memory_equal(ind, kcv, KS_KCV_LEN);
}

/* ---- record keys and the record format ------------------------------------- */

static void rec_key_independent(const uint8_t mk[32], const uint8_t ksid[16], uint32_t epoch, uint8_t out[32])
{
    uint8_t info[19 + 4];
    memcpy(info, "p11mk record key v1", 19);
    be32(info + 19, epoch);
    ossl_hkdf(mk, 32, ksid, 16, info, sizeof(info), out, 32);
}

static void test_record_key(void **state)
{
    (void)state;
    static const char kat1[] = "1846522ddb0f1fbf300a15a2dafb88b7e7de96038caebffe65c32193d1acfe33";
    static const char kat2[] = "c4a2638d581666e3c300398af2b43af50b0e5f078985bba2e5fb81ffeb85db34";
    ks_mkey mk;
    uint8_t ksid[16], rk[32], ind[32];

    memset(&mk, 0, sizeof(mk));
    fill(mk.key, 32, 0);
    fill(ksid, 16, 0xa0);
    assert_int_equal(ks_rec_key(&mk, ksid, 1, rk), KS_OK);
    assert_hex(rk, 32, kat1);
    rec_key_independent(mk.key, ksid, 1, ind);
    assert_hex(ind, 32, kat1);
    assert_int_equal(ks_rec_key(&mk, ksid, 0x01020304, rk), KS_OK);
    assert_hex(rk, 32, kat2);
    rec_key_independent(mk.key, ksid, 0x01020304, ind);
    assert_hex(ind, 32, kat2);
}

/* The AAD of a record: "p11mk/rec/v1" | keystore id | header | BE32 token | BE64 oid. */
static size_t rec_aad(uint8_t aad[64], const uint8_t ksid[16], const uint8_t hdr[8], uint32_t token, uint64_t oid)
{
    memcpy(aad, "p11mk/rec/v1", 12);
    memcpy(aad + 12, ksid, 16);
    memcpy(aad + 28, hdr, 8);
    be32(aad + 36, token);
    be64(aad + 40, oid);
    return 48;
}

/* 'P' 'K' 1 'O' | BE32 epoch 1 | nonce c0..cb | AES-256-GCM("p11mk known-answer
 * record v1") | tag, under the record key of test_record_key (epoch 1),
 * token 3, object 0x0102030405060708. */
#define REC_KAT                                                                                                        \
    "504b014f00000001c0c1c2c3c4c5c6c7c8c9cacb1d55e1627b75c47131d92fbf"                                                 \
    "05a5b24d28df1d2b4aca95e57a662bfcbb208525f7598486a50465bb3dcc4b6f"

static void test_record_format(void **state)
{
    (void)state;
    static const char msg[] = "p11mk known-answer record v1";
    const size_t mlen = sizeof(msg) - 1;
    const uint64_t oid = 0x0102030405060708ull;
    ks_mkey mk;
    uint8_t ksid[16], rk[32], rec[64], ind[64], aad[64], hdr[8] = {'P', 'K', 1, 'O', 0, 0, 0, 1};
    uint8_t *pt = NULL, kind = 0;
    size_t ptlen = 0;
    uint32_t epoch = 0;

    memset(&mk, 0, sizeof(mk));
    fill(mk.key, 32, 0);
    fill(ksid, 16, 0xa0);
    assert_int_equal(ks_rec_key(&mk, ksid, 1, rk), KS_OK);

    /* Built here from the documented layout... */
    assert_int_equal(mlen + KS_REC_OVERHEAD, sizeof(rec));
    memcpy(ind, hdr, 8);
    fill(ind + 8, 12, 0xc0);
    size_t al = rec_aad(aad, ksid, hdr, 3, oid);
    assert_true(ossl_gcm(1, rk, ind + 8, aad, al, (const uint8_t *)msg, mlen, ind + 20));
    assert_hex(ind, sizeof(rec), REC_KAT);

    /* ...the pinned record opens with the module. */
    unhex(REC_KAT, rec, sizeof(rec));
    assert_int_equal(ks_rec_header(rec, sizeof(rec), &kind, &epoch), KS_OK);
    assert_int_equal(kind, KS_KIND_OBJECT);
    assert_int_equal(epoch, 1);
    assert_int_equal(ks_rec_open(rk, ksid, KS_KIND_OBJECT, 3, oid, rec, sizeof(rec), &pt, &ptlen), KS_OK);
    assert_int_equal(ptlen, mlen);
    assert_memory_equal(pt, msg, mlen);
    ks_buf_free(pt, ptlen);

    /* And what the module seals now opens with the documented layout. */
    uint8_t *sealed = NULL, back[64];
    size_t slen = 0;
    assert_int_equal(ks_rec_seal(rk, ksid, KS_KIND_TOKEN, 9, 5, 0, (const uint8_t *)msg, mlen, &sealed, &slen),
                     KS_OK);
    assert_int_equal(slen, mlen + KS_REC_OVERHEAD);
    uint8_t thdr[8] = {'P', 'K', 1, 'T', 0, 0, 0, 9};
    assert_memory_equal(sealed, thdr, 8);
    al = rec_aad(aad, ksid, thdr, 5, 0);
    assert_true(ossl_gcm(0, rk, sealed + 8, aad, al, sealed + 20, mlen, back));
    assert_memory_equal(back, msg, mlen);
    free(sealed);
}

/* The anchor's set members: SHA-256(label | fields | BE64 oid), 16 bytes. */
static void test_anchor_hashes(void **state)
{
    (void)state;
    uint8_t tag[16], key[20], h[16], buf[64], md[32];

    fill(tag, 16, 0x10);
    ks_obj_hash(3, 42, tag, h);
    assert_hex(h, 16, "05690ae6d2de766bf9c6626a0d59673a");
    memcpy(buf, "p11mk object v2", 15);
    be32(buf + 15, 3);
    memcpy(buf + 19, tag, 16);
    be64(buf + 35, 42);
    ossl_sha256(buf, 43, NULL, 0, md);
    assert_memory_equal(md, h, 16);

    fill(key, 20, 0);
    ks_idx_hash(key, 42, h);
    assert_hex(h, 16, "2bef5cca9db194e49501bdd9549448db");
    memcpy(buf, "p11mk index v1", 14);
    memcpy(buf + 14, key, 20);
    be64(buf + 34, 42);
    ossl_sha256(buf, 42, NULL, 0, md);
    assert_memory_equal(md, h, 16);
}

/* ---- PIN records ------------------------------------------------------------ */

/* scrypt("123456", salt 00..0f, N=2^14, r=8, p=1), 64 bytes: verifier | kek. */
#define PIN_VERIFIER "53e59f1f9f56c2317d99f7a1e76fd1d43677ccb19c2c125e054f9a81281e0aec"
#define PIN_KEK "36b2274bf5170f57d79416c1f2ea42d1d06d7a412d5de4b74682b351b053dea1"

static void test_pin_record_v1(void **state)
{
    (void)state;
    uint8_t salt[16], out[64], rec[TOK_PIN_REC_V1_LEN], tk[TOK_TK_LEN];
    tok_pin_key k;

    fill(salt, 16, 0);
    ossl_scrypt("123456", 6, salt, 16, 1u << 14, 8, 1, out, 64);
    assert_hex(out, 32, PIN_VERIFIER);
    assert_hex(out + 32, 32, PIN_KEK);

    /* 1 | log2N | r | p | salt | verifier */
    rec[0] = 1, rec[1] = 14, rec[2] = 8, rec[3] = 1;
    memcpy(rec + 4, salt, 16);
    memcpy(rec + 20, out, 32);
    assert_int_equal(tok_pin_check((const uint8_t *)"123456", 6, rec, sizeof(rec), &k), TOK_PIN_OK);
    assert_hex(k.verifier, 32, PIN_VERIFIER);
    assert_hex(k.kek, 32, PIN_KEK);
    assert_memory_equal(k.params, rec, 4);
    assert_memory_equal(k.salt, salt, 16);
    assert_int_equal(tok_pin_unwrap(&k, rec, sizeof(rec), 7, CKU_USER, tk), 1); /* v1 keeps no key */
    tok_pin_key_clear(&k);
    assert_int_equal(tok_pin_check((const uint8_t *)"123457", 6, rec, sizeof(rec), &k), TOK_PIN_WRONG);
}

/* v2: 2 | 14 | 8 | 1 | salt 00..0f | verifier | nonce 60..6b | token key
 * 40..5f wrapped under kek for token 7, role CKU_USER | tag. */
#define PIN_V2_KAT                                                                                                     \
    "020e0801000102030405060708090a0b0c0d0e0f53e59f1f9f56c2317d99f7a1"                                                 \
    "e76fd1d43677ccb19c2c125e054f9a81281e0aec606162636465666768696a6b"                                                 \
    "b4a73d6f74124dfd5625dc9fb66ecb46f399b67a72f6c11715f1574ce5dbfe49"                                                 \
    "981cdb0d38fb5653282785e0e5d27ceb"

/* "p11mk token key v1" | LE32 token | role | 0 */
static void tk_aad(uint8_t aad[24], uint32_t token, uint8_t role)
{
    memcpy(aad, "p11mk token key v1", 18);
    le(aad + 18, token, 4);
    aad[22] = role;
    aad[23] = 0;
}

static void test_pin_record_v2(void **state)
{
    (void)state;
    uint8_t rec[TOK_PIN_REC_LEN], ind[TOK_PIN_REC_LEN], tk[TOK_TK_LEN], want_tk[TOK_TK_LEN], kek[32], aad[24];
    tok_pin_key k;

    /* Independent construction of the pinned record. */
    fill(want_tk, 32, 0x40);
    unhex(PIN_KEK, kek, 32);
    ind[0] = 2, ind[1] = 14, ind[2] = 8, ind[3] = 1;
    fill(ind + 4, 16, 0);
    unhex(PIN_VERIFIER, ind + 20, 32);
    fill(ind + 52, 12, 0x60);
    tk_aad(aad, 7, CKU_USER);
    assert_true(ossl_gcm(1, kek, ind + 52, aad, 24, want_tk, 32, ind + 64));
    assert_hex(ind, sizeof(ind), PIN_V2_KAT);

    unhex(PIN_V2_KAT, rec, sizeof(rec));
    assert_int_equal(tok_pin_check((const uint8_t *)"123456", 6, rec, sizeof(rec), &k), TOK_PIN_OK);
    assert_hex(k.verifier, 32, PIN_VERIFIER);
    assert_hex(k.kek, 32, PIN_KEK);
    assert_int_equal(tok_pin_unwrap(&k, rec, sizeof(rec), 7, CKU_USER, tk), 0);
    assert_memory_equal(tk, want_tk, 32);
    /* Bound to the token and the role. */
    assert_int_equal(tok_pin_unwrap(&k, rec, sizeof(rec), 8, CKU_USER, tk), -1);
    assert_int_equal(tok_pin_unwrap(&k, rec, sizeof(rec), 7, CKU_SO, tk), -1);

    /* A record the module seals now opens with the documented layout. */
    uint8_t sealed[TOK_PIN_REC_LEN], back[32];
    assert_int_equal(tok_pin_seal(&k, want_tk, 0x01020304, CKU_SO, sealed), 0);
    assert_memory_equal(sealed, rec, 52); /* version, parameters, salt, verifier */
    tk_aad(aad, 0x01020304, CKU_SO);
    assert_true(ossl_gcm(0, kek, sealed + 52, aad, 24, sealed + 64, 32, back));
    assert_memory_equal(back, want_tk, 32);
    tok_pin_key_clear(&k);
    assert_int_equal(tok_pin_check((const uint8_t *)"12345", 5, rec, sizeof(rec), &k), TOK_PIN_WRONG);

    /* The token key's check value: SHA-256("p11mk token key check value" | tk), 16 bytes. */
    uint8_t kcv[TOK_TK_KCV_LEN], md[32];
    assert_int_equal(tok_tk_kcv(want_tk, kcv), 0);
    assert_hex(kcv, TOK_TK_KCV_LEN, "8d7d8f18f03557a9a56d7162aae0737f");
    ossl_sha256("p11mk token key check value", 27, want_tk, 32, md);
    assert_memory_equal(md, kcv, TOK_TK_KCV_LEN);
}

/* ---- the serialized attributes and the envelope ---------------------------- */

/* 1 | LE32 count | (LE64 type | LE32 length | value)...; CK_ULONGs as LE64. */
#define ATTRS_KAT                                                                                                      \
    "0103000000"                                                                                                       \
    "0000000000000000 08000000 0400000000000000"                                                                       \
    "0100000000000000 01000000 01"                                                                                     \
    "0300000000000000 03000000 6b6174"

static void test_attr_serialization(void **state)
{
    (void)state;
    tok_attrs a = TOK_ATTRS_INIT, b = TOK_ATTRS_INIT;
    uint8_t *blob = NULL, want[64];
    size_t len = 0;
    CK_ULONG cls = 0;

    assert_int_equal(tok_attrs_set_ulong(&a, CKA_CLASS, CKO_SECRET_KEY), 0);
    assert_int_equal(tok_attrs_set_bool(&a, CKA_TOKEN, true), 0);
    assert_int_equal(tok_attrs_set(&a, CKA_LABEL, "kat", 3), 0);
    assert_int_equal(tok_attrs_serialize(&a, &blob, &len), 0);
    assert_int_equal(len, 5 + 20 + 13 + 15);
    assert_hex(blob, len, ATTRS_KAT);
    unhex(ATTRS_KAT, want, len);
    assert_int_equal(tok_attrs_parse(want, len, &b), 0);
    assert_int_equal(b.n, 3);
    assert_true(tok_attrs_get_ulong(&b, CKA_CLASS, &cls));
    assert_int_equal(cls, CKO_SECRET_KEY);
    assert_true(tok_attrs_get_bool(&b, CKA_TOKEN, false));
    assert_int_equal(tok_attrs_find(&b, CKA_LABEL)->len, 3);
    assert_memory_equal(tok_attrs_find(&b, CKA_LABEL)->val, "kat", 3);
    free(blob);
    tok_attrs_free(&a);
    tok_attrs_free(&b);
}

/* 1 | nonce 70..7b | AES-256-GCM(serialized {CKA_VALUE "envelope secret
 * value"}) | tag, under token key 40..5f, token 7, object 0x1122334455667788,
 * clear attributes {CKA_CLASS = CKO_SECRET_KEY}. */
#define ENV_KAT                                                                                                        \
    "01707172737475767778797a7bd2e4bb189e49e40aab5fbb5dbf111b21c86d0f"                                                 \
    "e77569ad4a93ade5e04670b0d5e85ff45db0a05d8e6404c4fb32001c1b00346d"                                                 \
    "e23bac"

/* The clear attributes {CKA_CLASS = CKO_SECRET_KEY}, serialized. */
#define ENV_CLEAR_KAT "0101000000" "0000000000000000 08000000 0400000000000000"

/* "p11mk private object v1" | LE32 token | LE64 object id | SHA-256(clear attributes sorted by type, serialized) */
static void env_aad(uint8_t aad[67], uint32_t token, uint64_t oid)
{
    uint8_t clear[25];
    unsigned hl = 0;
    memcpy(aad, "p11mk private object v1", 23);
    le(aad + 23, token, 4);
    le(aad + 27, oid, 8);
    unhex(ENV_CLEAR_KAT, clear, sizeof(clear));
    assert_int_equal(EVP_Digest(clear, sizeof(clear), aad + 35, &hl, EVP_sha256(), NULL), 1);
}

static void test_envelope(void **state)
{
    (void)state;
    static const char secret[] = "envelope secret value";
    const uint64_t oid = 0x1122334455667788ull;
    uint8_t tk[32], inner[5 + 12 + 21], env[67], ind[67], aad[67];
    tok_attrs stored = TOK_ATTRS_INIT, opened = TOK_ATTRS_INIT, sealed = TOK_ATTRS_INIT;

    fill(tk, 32, 0x40);
    inner[0] = 1;
    le(inner + 1, 1, 4);
    le(inner + 5, CKA_VALUE, 8);
    le(inner + 13, 21, 4);
    memcpy(inner + 17, secret, 21);
    ind[0] = 1;
    fill(ind + 1, 12, 0x70);
    env_aad(aad, 7, oid);
    assert_true(ossl_gcm(1, tk, ind + 1, aad, sizeof(aad), inner, sizeof(inner), ind + 13));
    assert_hex(ind, sizeof(ind), ENV_KAT);

    unhex(ENV_KAT, env, sizeof(env));
    assert_int_equal(tok_attrs_set_ulong(&stored, CKA_CLASS, CKO_SECRET_KEY), 0);
    assert_int_equal(tok_attrs_set(&stored, TOKA_ENVELOPE, env, sizeof(env)), 0);
    assert_int_equal(tok_env_open(tk, 7, oid, &stored, &opened), 0);
    const tok_attr *v = tok_attrs_find(&opened, CKA_VALUE);
    assert_non_null(v);
    assert_int_equal(v->len, 21);
    assert_memory_equal(v->val, secret, 21);
    assert_int_equal(tok_env_open(tk, 7, oid + 1, &stored, &opened), -2);
    /* What the object says it is is bound too: another class, another AAD. */
    tok_attrs moved = TOK_ATTRS_INIT, out2 = TOK_ATTRS_INIT;
    assert_int_equal(tok_attrs_copy(&moved, &stored), 0);
    assert_int_equal(tok_attrs_set_ulong(&moved, CKA_CLASS, CKO_DATA), 0);
    assert_int_equal(tok_env_open(tk, 7, oid, &moved, &out2), -2);
    tok_attrs_free(&moved);
    tok_attrs_free(&out2);

    /* What the module seals now opens with the documented layout. */
    assert_int_equal(tok_env_seal(tk, 9, 10, &opened, &sealed), 0);
    const tok_attr *e = tok_attrs_find(&sealed, TOKA_ENVELOPE);
    assert_non_null(e);
    assert_int_equal(e->len, sizeof(env));
    assert_int_equal(e->val[0], 1);
    uint8_t back[sizeof(inner)];
    env_aad(aad, 9, 10);
    assert_true(ossl_gcm(0, tk, e->val + 1, aad, sizeof(aad), e->val + 13, sizeof(inner), back));
    assert_memory_equal(back, inner, sizeof(inner));
    assert_null(tok_attrs_find(&sealed, CKA_VALUE));
    tok_attrs_free(&stored);
    tok_attrs_free(&opened);
    tok_attrs_free(&sealed);
}

/* One {LE64 type | LE32 len | value} of the serialized form at p. */
static uint8_t *ser_attr(uint8_t *p, CK_ATTRIBUTE_TYPE t, const void *val, size_t len)
{
    le(p, t, 8);
    le(p + 8, len, 4);
    memcpy(p + 12, val, len);
    return p + 12 + len;
}

/* Several clear attributes, held in any order: the AAD digests them sorted
 * by type in the documented serialized form (CK_ULONG as LE64), whichever
 * order the list holds them in, opened in place or into another list. */
static void test_envelope_clear_order(void **state)
{
    (void)state;
    static const uint8_t value[16] = "0123456789abcdef", one = 1;
    const uint64_t oid = 77;
    uint8_t tk[32], clear[256], inner[5 + 12 + 16], env[1 + 12 + sizeof(inner) + 16], aad[67], le8[8], *p = clear;
    unsigned hl = 0;
    tok_attrs stored = TOK_ATTRS_INIT, opened = TOK_ATTRS_INIT;

    fill(tk, 32, 0x41);
    *p++ = 1;
    le(p, 6, 4);
    p += 4;
    le(le8, CKO_SECRET_KEY, 8);
    p = ser_attr(p, CKA_CLASS, le8, 8);
    p = ser_attr(p, CKA_TOKEN, &one, 1);
    p = ser_attr(p, CKA_PRIVATE, &one, 1);
    p = ser_attr(p, CKA_LABEL, "lbl", 3);
    p = ser_attr(p, CKA_ID, "\x01\x02", 2);
    le(le8, 16, 8);
    p = ser_attr(p, CKA_VALUE_LEN, le8, 8);
    memcpy(aad, "p11mk private object v1", 23);
    le(aad + 23, 5, 4);
    le(aad + 27, oid, 8);
    assert_int_equal(EVP_Digest(clear, (size_t)(p - clear), aad + 35, &hl, EVP_sha256(), NULL), 1);
    inner[0] = 1;
    le(inner + 1, 1, 4);
    ser_attr(inner + 5, CKA_VALUE, value, 16);
    env[0] = 1;
    fill(env + 1, 12, 0x33);
    assert_true(ossl_gcm(1, tk, env + 1, aad, sizeof(aad), inner, sizeof(inner), env + 13));

    assert_int_equal(tok_attrs_set(&stored, CKA_ID, "\x01\x02", 2), 0);
    assert_int_equal(tok_attrs_set_ulong(&stored, CKA_VALUE_LEN, 16), 0);
    assert_int_equal(tok_attrs_set(&stored, TOKA_ENVELOPE, env, sizeof(env)), 0);
    assert_int_equal(tok_attrs_set(&stored, CKA_LABEL, "lbl", 3), 0);
    assert_int_equal(tok_attrs_set_ulong(&stored, CKA_CLASS, CKO_SECRET_KEY), 0);
    assert_int_equal(tok_attrs_set_bool(&stored, CKA_PRIVATE, true), 0);
    assert_int_equal(tok_attrs_set_bool(&stored, CKA_TOKEN, true), 0);
    assert_int_equal(tok_env_open(tk, 5, oid, &stored, &opened), 0);
    assert_int_equal(opened.n, 7);
    assert_null(tok_attrs_find(&opened, TOKA_ENVELOPE));
    assert_memory_equal(tok_attrs_find(&opened, CKA_VALUE)->val, value, 16);
    assert_int_equal(stored.n, 7); /* into another list: stored is left as it was */
    assert_non_null(tok_attrs_find(&stored, TOKA_ENVELOPE));

    /* A clear attribute changed without the token key: refused, the list unchanged. */
    tok_attrs moved = TOK_ATTRS_INIT;
    assert_int_equal(tok_attrs_copy(&moved, &stored), 0);
    assert_int_equal(tok_attrs_set(&moved, CKA_ID, "\x01\x03", 2), 0);
    assert_int_equal(tok_env_open(tk, 5, oid, &moved, &moved), -2);
    assert_int_equal(moved.n, 7);
    assert_non_null(tok_attrs_find(&moved, TOKA_ENVELOPE));
    assert_null(tok_attrs_find(&moved, CKA_VALUE));
    tok_attrs_free(&moved);

    /* In place: the same result. */
    assert_int_equal(tok_env_open(tk, 5, oid, &stored, &stored), 0);
    assert_int_equal(stored.n, 7);
    assert_null(tok_attrs_find(&stored, TOKA_ENVELOPE));
    assert_memory_equal(tok_attrs_find(&stored, CKA_VALUE)->val, value, 16);
    assert_memory_equal(tok_attrs_find(&stored, CKA_ID)->val, "\x01\x02", 2);
    tok_attrs_free(&stored);
    tok_attrs_free(&opened);
}

/* ---- a keystore written by an earlier p11mk --------------------------------- */

static size_t read_all(const char *path, uint8_t *buf, size_t cap)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, cap, fp);
    assert_true(n < cap);
    fclose(fp);
    return n;
}

static void write_all(const char *path, const uint8_t *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

/* The token record as stored, decrypted with plain OpenSSL from the key
 * file's bytes and the documented derivation (read before the store opens
 * the keystore: raw access wants it closed in this process). */
static size_t fixture_token_independent(const char *dir, const uint8_t mkey[32], const uint8_t ksid[16],
                                        uint32_t tid, uint8_t *out, size_t cap, uint32_t *epoch_out)
{
    ks_tamper *raw;
    uint8_t kb[4], rk[32], aad[64], *rec;
    size_t len;
    be32(kb, tid);
    assert_int_equal(ks_tamper_open(dir, KS_TAMPER_RDONLY, &raw), KS_OK);
    assert_int_equal(ks_tamper_get(raw, KS_TAMPER_TOKENS, kb, 4, &rec, &len), KS_OK);
    size_t ptlen = len - 8 - 12 - 16;
    assert_true(len > 36 && ptlen <= cap);
    assert_memory_equal(rec, "PK\x01T", 4);
    uint32_t epoch = (uint32_t)rec[4] << 24 | (uint32_t)rec[5] << 16 | (uint32_t)rec[6] << 8 | rec[7];
    rec_key_independent(mkey, ksid, epoch, rk);
    size_t al = rec_aad(aad, ksid, rec, tid, 0);
    assert_true(ossl_gcm(0, rk, rec + 8, aad, al, rec + 20, ptlen, out));
    free(rec);
    ks_tamper_abort(raw);
    *epoch_out = epoch;
    return ptlen;
}

static int first_oid(uint64_t oid, void *arg)
{
    *(uint64_t *)arg = oid;
    return 1;
}

static void fixture_value(ks_txn *t, const char *label, const uint8_t *want, size_t wlen)
{
    uint64_t oid = 0;
    uint8_t *blob = NULL;
    size_t len = 0;
    tok_attrs a = TOK_ATTRS_INIT;
    /* The keyed label index (HMAC under the keystore's index key) still finds it. */
    assert_int_equal(ks_idx_lookup(t, 1, CKA_LABEL, label, strlen(label), first_oid, &oid), 1);
    assert_int_equal(ks_obj_get(t, 1, oid, &blob, &len), KS_OK);
    assert_int_equal(tok_attrs_parse(blob, len, &a), 0);
    const tok_attr *l = tok_attrs_find(&a, CKA_LABEL), *v = tok_attrs_find(&a, CKA_VALUE);
    assert_non_null(l);
    assert_int_equal(l->len, strlen(label));
    assert_memory_equal(l->val, label, l->len);
    assert_non_null(v);
    assert_int_equal(v->len, wlen);
    assert_memory_equal(v->val, want, wlen);
    tok_attrs_free(&a);
    ks_buf_free(blob, len);
}

static void fixture_pin(const tok_attrs *rec, CK_ATTRIBUTE_TYPE field, const char *pin)
{
    const tok_attr *r = tok_attrs_find(rec, field);
    tok_pin_key k;
    uint8_t out[64];
    assert_non_null(r);
    assert_int_equal(r->len, TOK_PIN_REC_V1_LEN);
    assert_int_equal(r->val[0], 1);
    assert_int_equal(tok_pin_check((const uint8_t *)pin, strlen(pin), r->val, r->len, &k), TOK_PIN_OK);
    ossl_scrypt(pin, strlen(pin), r->val + 4, 16, (uint64_t)1 << r->val[1], r->val[2], r->val[3], out, 64);
    assert_memory_equal(out, r->val + 20, 32);
    assert_memory_equal(k.verifier, out, 32);
    assert_memory_equal(k.kek, out + 32, 32);
    tok_pin_key_clear(&k);
    assert_int_equal(tok_pin_check((const uint8_t *)"not-the-pin", 11, r->val, r->len, &k), TOK_PIN_WRONG);
}

/* The check value of tests/fixtures/pin-v1/master.key (what
 * 'p11mk-admin status' showed for that keystore). */
#define FIXTURE_KCV "f2c7398be4a970a1"

static char dir[64]; /* the copy of the fixture keystore */

static int fixture_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/p11mk-kat-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int fixture_teardown(void **state)
{
    (void)state;
    rm_rf(dir);
    return 0;
}

static void test_fixture_pin_v1(void **state)
{
    (void)state;
    const char *fx = getenv("P11MK_FIXTURES");
    char p[1024];
    static uint8_t buf[1 << 16];
    uint8_t aes[64], data[128], tokrec[4096];
    size_t n;
    ks_mkey mk;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    ks_info info;
    uint32_t epoch = 0;

    if (!fx) {
        fprintf(stderr, "note: P11MK_FIXTURES is not set; the fixture keystore is not checked\n");
        skip();
    }
    snprintf(p, sizeof(p), "%s/pin-v1/data.mdb", fx);
    n = read_all(p, buf, sizeof(buf));
    snprintf(p, sizeof(p), "%s/data.mdb", dir);
    write_all(p, buf, n);
    snprintf(p, sizeof(p), "%s/pin-v1/aes.bin", fx);
    size_t naes = read_all(p, aes, sizeof(aes));
    snprintf(p, sizeof(p), "%s/pin-v1/data.bin", fx);
    size_t ndata = read_all(p, data, sizeof(data));
    memset(&mk, 0, sizeof(mk));
    snprintf(p, sizeof(p), "%s/pin-v1/master.key", fx);
    assert_int_equal(read_all(p, mk.key, KS_MK_LEN + 1), KS_MK_LEN); /* the first key file format: 32 raw bytes */
    snprintf(mk.source, sizeof(mk.source), "%s", p);

    /* The fixture's key and its identity, as recorded in the keystore. */
    uint8_t kcv[KS_KCV_LEN], ind[KS_KCV_LEN];
    ks_key_kcv(mk.key, kcv);
    ossl_hkdf(mk.key, 32, NULL, 0, KCV_INFO, strlen(KCV_INFO), ind, KS_KCV_LEN);
    assert_memory_equal(kcv, ind, KS_KCV_LEN);
    assert_hex(kcv, KS_KCV_LEN, FIXTURE_KCV);

    assert_int_equal(ks_open(dir, &mk, 0, &st, &err), KS_OK);
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.format_version, 2);
    assert_memory_equal(info.kcv, kcv, KS_KCV_LEN);
    assert_int_equal(info.n_tokens, 1);
    uint8_t ksid[16];
    memcpy(ksid, info.keystore_id, 16);
    uint64_t checked = 0, failed = 0;
    assert_int_equal(ks_verify(st, NULL, NULL, &checked, &failed), 0);
    assert_int_equal(failed, 0);
    assert_true(checked > 4);
    ks_close(st);

    /* The token record decrypts independently to what the store returns. */
    size_t tlen = fixture_token_independent(dir, mk.key, ksid, 1, tokrec, sizeof(tokrec), &epoch);
    assert_int_equal(epoch, info.epoch);
    assert_int_equal(ks_open(dir, &mk, 0, &st, &err), KS_OK);
    ks_txn *t = NULL;
    uint8_t *blob = NULL;
    size_t blen = 0;
    assert_int_equal(ks_read_begin(st, &t), KS_OK);
    assert_int_equal(ks_token_get(t, 1, &blob, &blen), KS_OK);
    assert_int_equal(blen, tlen);
    assert_memory_equal(blob, tokrec, tlen);

    /* Its PIN records (v1) still check, and follow the documented scrypt. */
    tok_attrs rec = TOK_ATTRS_INIT;
    assert_int_equal(tok_attrs_parse(blob, blen, &rec), 0);
    const tok_attr *label = tok_attrs_find(&rec, TOKR_LABEL);
    assert_non_null(label);
    assert_true(label->len >= 6 && memcmp(label->val, "legacy", 6) == 0);
    fixture_pin(&rec, TOKR_USER_PIN, "user-pin-1");
    fixture_pin(&rec, TOKR_SO_PIN, "so-pin-123");
    tok_attrs_free(&rec);
    ks_buf_free(blob, blen);

    /* Its objects open and hold the known values. */
    fixture_value(t, "aes1", aes, naes);
    fixture_value(t, "data1", data, ndata);
    ks_read_end(t);
    ks_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scrypt_rfc7914),
        cmocka_unit_test(test_passphrase_master_key),
        cmocka_unit_test(test_parts_master_key),
        cmocka_unit_test(test_default_key_and_kcv),
        cmocka_unit_test(test_kcv_fixed_key),
        cmocka_unit_test(test_record_key),
        cmocka_unit_test(test_record_format),
        cmocka_unit_test(test_anchor_hashes),
        cmocka_unit_test(test_pin_record_v1),
        cmocka_unit_test(test_pin_record_v2),
        cmocka_unit_test(test_attr_serialization),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_envelope_clear_order),
        cmocka_unit_test_setup_teardown(test_fixture_pin_v1, fixture_setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
