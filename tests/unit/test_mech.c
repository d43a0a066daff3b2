/* Unit tests for the token layer's mechanisms: the mechanism table, key
 * generation and import, operations with known answers, the size-query
 * protocol and tampered inputs. Results are cross-checked with plain
 * OpenSSL where it can (SubjectPublicKeyInfo, signatures). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "token/tok_crypto.h"
#include "token/tok_mech.h"
#include "token/tok_policy.h"

#define RV(want, call) assert_int_equal((call), (want))

static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const CK_BYTE p384_name[] = {0x13, 0x09, 's', 'e', 'c', 'p', '3', '8', '4', 'r', '1'};

/* A key object as the pkcs11 layer would hold it, with all usage flags on. */
static void usage_all(tok_attrs *a)
{
    const CK_ATTRIBUTE_TYPE u[] = {CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY};
    for (size_t i = 0; i < 4; i++)
        tok_attrs_set_bool(a, u[i], true);
}

static tok_key *secret_key(CK_KEY_TYPE kt, const void *val, size_t len, tok_attrs *attrs)
{
    tok_key *k = NULL;
    tok_attrs_set_ulong(attrs, CKA_CLASS, CKO_SECRET_KEY);
    tok_attrs_set_ulong(attrs, CKA_KEY_TYPE, kt);
    tok_attrs_set(attrs, CKA_VALUE, val, len);
    usage_all(attrs);
    RV(CKR_OK, tok_key_from_attrs(attrs, &k));
    return k;
}

static void keypair(CK_MECHANISM_TYPE m, const CK_ATTRIBUTE *pt, CK_ULONG n, tok_attrs *pub, tok_attrs *priv,
                    tok_key **kpub, tok_key **kpriv)
{
    CK_MECHANISM mech = {m, NULL, 0};
    CK_KEY_TYPE kt;
    RV(CKR_OK, tok_mech_keypairgen_type(m, &kt));
    RV(CKR_OK, tok_policy_build(TOK_BUILD_GENERATE, CKO_PUBLIC_KEY, kt, m, pt, n, pub));
    RV(CKR_OK, tok_policy_build(TOK_BUILD_GENERATE, CKO_PRIVATE_KEY, kt, m, NULL, 0, priv));
    RV(CKR_OK, tok_mech_generate_keypair(&mech, pub, priv));
    RV(CKR_OK, tok_key_from_attrs(pub, kpub));
    RV(CKR_OK, tok_key_from_attrs(priv, kpriv));
}

static void test_mech_table(void **state)
{
    (void)state;
    CK_MECHANISM_TYPE list[128];
    CK_MECHANISM_INFO info;
    CK_ULONG n = tok_mech_list(NULL, 0);
    assert_true(n >= 40 && n <= 128);
    assert_int_equal(tok_mech_list(list, 128), n);
    for (CK_ULONG i = 0; i < n; i++) {
        RV(CKR_OK, tok_mech_info(list[i], &info));
        assert_true(info.ulMinKeySize <= info.ulMaxKeySize);
        assert_int_equal(info.flags & CKF_HW, 0);
    }
    RV(CKR_MECHANISM_INVALID, tok_mech_info(CKM_RC4, &info));
    RV(CKR_OK, tok_mech_info(CKM_AES_GCM, &info));
    assert_int_equal(info.flags, CKF_ENCRYPT | CKF_DECRYPT | 0x02 | 0x04 | 0x20 /* CKF_MESSAGE_*, CKF_MULTI_MESSAGE */);
    /* Every mechanism that claims an operation initializes it. */
    CK_KEY_TYPE kt;
    RV(CKR_MECHANISM_INVALID, tok_mech_keygen_type(CKM_SHA256, &kt));
    RV(CKR_MECHANISM_INVALID, tok_mech_keypairgen_type(CKM_AES_KEY_GEN, &kt));
}

static void test_digest_and_hmac_kat(void **state)
{
    (void)state;
    static const CK_BYTE abc[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                  0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                  0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    /* RFC 4231 test case 1 */
    static const CK_BYTE tc1[] = {0xb0, 0x34, 0x4c, 0x61, 0xd8, 0xdb, 0x38, 0x53, 0x5c, 0xa8, 0xaf,
                                  0xce, 0xaf, 0x0b, 0xf1, 0x2b, 0x88, 0x1d, 0xc2, 0x00, 0xc9, 0x83,
                                  0x3d, 0xa7, 0x26, 0xe9, 0x37, 0x6c, 0x2e, 0x32, 0xcf, 0xf7};
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0}, hmac = {CKM_SHA256_HMAC, NULL, 0};
    tok_op *op;
    CK_BYTE out[64];
    CK_ULONG len;

    RV(CKR_OK, tok_op_init(TOK_OP_DIGEST, &sha, NULL, NULL, &op));
    assert_int_equal(tok_op_get_kind(op), TOK_OP_DIGEST);
    len = sizeof(out);
    RV(CKR_OK, tok_op_oneshot(op, (const uint8_t *)"abc", 3, out, &len));
    assert_int_equal(len, 32);
    assert_memory_equal(out, abc, 32);
    tok_op_free(op);

    uint8_t key[20];
    memset(key, 0x0b, sizeof(key));
    tok_attrs a = TOK_ATTRS_INIT;
    tok_key *k = secret_key(CKK_GENERIC_SECRET, key, sizeof(key), &a);
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &hmac, k, &a, &op));
    RV(CKR_OK, tok_op_update(op, (const uint8_t *)"Hi ", 3, NULL, NULL));
    RV(CKR_OK, tok_op_update(op, (const uint8_t *)"There", 5, NULL, NULL));
    len = 0;
    RV(CKR_OK, tok_op_final(op, NULL, &len));
    assert_int_equal(len, 32);
    len = 31;
    RV(CKR_BUFFER_TOO_SMALL, tok_op_final(op, out, &len));
    assert_int_equal(len, 32);
    len = sizeof(out);
    RV(CKR_OK, tok_op_final(op, out, &len));
    assert_memory_equal(out, tc1, 32);
    tok_op_free(op);

    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &hmac, k, &a, &op));
    RV(CKR_OK, tok_op_verify(op, (const uint8_t *)"Hi There", 8, tc1, 32));
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &hmac, k, &a, &op));
    RV(CKR_SIGNATURE_LEN_RANGE, tok_op_verify(op, (const uint8_t *)"Hi There", 8, tc1, 31));
    tok_op_free(op);
    CK_BYTE bad[32];
    memcpy(bad, tc1, 32);
    bad[31] ^= 1;
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &hmac, k, &a, &op));
    RV(CKR_SIGNATURE_INVALID, tok_op_verify(op, (const uint8_t *)"Hi There", 8, bad, 32));
    tok_op_free(op);
    /* Usage flag off. */
    tok_attrs_set_bool(&a, CKA_SIGN, false);
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, tok_op_init(TOK_OP_SIGN, &hmac, k, &a, &op));
    /* Allowed mechanisms list excludes HMAC. */
    tok_attrs_set_bool(&a, CKA_SIGN, true);
    CK_MECHANISM_TYPE only = CKM_SHA256_RSA_PKCS;
    tok_attrs_set(&a, CKA_ALLOWED_MECHANISMS, &only, sizeof(only));
    RV(CKR_MECHANISM_INVALID, tok_op_init(TOK_OP_SIGN, &hmac, k, &a, &op));
    /* Wrong kind for the mechanism. */
    RV(CKR_MECHANISM_INVALID, tok_op_init(TOK_OP_ENCRYPT, &hmac, k, &a, &op));
    tok_key_unref(k);
    tok_attrs_free(&a);
}

static void test_keygen_secret(void **state)
{
    (void)state;
    CK_MECHANISM aes = {CKM_AES_KEY_GEN, NULL, 0}, gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    tok_attrs a = TOK_ATTRS_INIT, b = TOK_ATTRS_INIT;
    RV(CKR_TEMPLATE_INCOMPLETE, tok_mech_generate_key(&aes, &a));
    tok_attrs_set_ulong(&a, CKA_VALUE_LEN, 20);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_mech_generate_key(&aes, &a));
    tok_attrs_set_ulong(&a, CKA_VALUE_LEN, 32);
    RV(CKR_OK, tok_mech_generate_key(&aes, &a));
    tok_attrs_set_ulong(&b, CKA_VALUE_LEN, 32);
    RV(CKR_OK, tok_mech_generate_key(&aes, &b));
    assert_int_equal(tok_attrs_find(&a, CKA_VALUE)->len, 32);
    assert_memory_not_equal(tok_attrs_find(&a, CKA_VALUE)->val, tok_attrs_find(&b, CKA_VALUE)->val, 32);
    tok_attrs_set_ulong(&b, CKA_VALUE_LEN, 0);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_mech_generate_key(&gen, &b));
    tok_attrs_set_ulong(&b, CKA_VALUE_LEN, 64);
    RV(CKR_OK, tok_mech_generate_key(&gen, &b));
    CK_BYTE param[4];
    CK_MECHANISM withp = {CKM_AES_KEY_GEN, param, sizeof(param)};
    RV(CKR_MECHANISM_PARAM_INVALID, tok_mech_generate_key(&withp, &a));
    tok_attrs_free(&a);
    tok_attrs_free(&b);
}

/* Parse CKA_PUBLIC_KEY_INFO with OpenSSL and verify a signature with it;
 * pss_salt >= 0: RSA-PSS with that salt length, MGF1 with md. */
static void openssl_verify_pss(const tok_attrs *pub, const char *md, int pss_salt, const uint8_t *msg, size_t len,
                               const uint8_t *sig, size_t siglen)
{
    const tok_attr *spki = tok_attrs_find(pub, CKA_PUBLIC_KEY_INFO);
    assert_non_null(spki);
    const unsigned char *p = spki->val;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)spki->len);
    assert_non_null(pk);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    assert_int_equal(EVP_DigestVerifyInit_ex(c, &pc, md, NULL, NULL, pk, NULL), 1);
    if (pss_salt >= 0) {
        assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, pss_salt), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md_name(pc, md, NULL), 1);
    }
    assert_int_equal(EVP_DigestVerify(c, sig, siglen, msg, len), 1);
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(pk);
}

static void openssl_verify(const tok_attrs *pub, const char *md, const uint8_t *msg, size_t len, const uint8_t *sig,
                           size_t siglen)
{
    openssl_verify_pss(pub, md, -1, msg, len, sig, siglen);
}

static void test_ec(void **state)
{
    (void)state;
    tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT;
    tok_key *kpub, *kpriv;
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}};
    keypair(CKM_EC_KEY_PAIR_GEN, pt, 1, &pub, &priv, &kpub, &kpriv);
    assert_int_equal(tok_attrs_find(&pub, CKA_EC_POINT)->len, 67); /* DER OCTET STRING of 65 bytes */
    assert_int_equal(tok_attrs_find(&priv, CKA_VALUE)->len, 32);
    usage_all(&pub);
    usage_all(&priv);

    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    tok_op *op;
    CK_BYTE sig[96], der[80];
    CK_ULONG len = sizeof(sig);
    const uint8_t msg[] = "message";
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &m, kpriv, &priv, &op));
    RV(CKR_OK, tok_op_update(op, msg, 3, NULL, NULL));
    RV(CKR_OK, tok_op_update(op, msg + 3, sizeof(msg) - 3, NULL, NULL));
    RV(CKR_OK, tok_op_final(op, sig, &len));
    assert_int_equal(len, 64);
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &m, kpub, &pub, &op));
    RV(CKR_OK, tok_op_verify(op, msg, sizeof(msg), sig, len));
    tok_op_free(op);
    /* The raw r||s converted to DER verifies with plain OpenSSL. */
    size_t dl = 0;
    der[dl++] = 0x30;
    der[dl++] = 0; /* patched below */
    for (int i = 0; i < 2; i++) {
        const uint8_t *x = sig + 32 * i;
        size_t skip = 0;
        while (skip < 31 && x[skip] == 0)
            skip++;
        bool pad = x[skip] & 0x80;
        der[dl++] = 0x02;
        der[dl++] = (uint8_t)(32 - skip + pad);
        if (pad)
            der[dl++] = 0;
        memcpy(der + dl, x + skip, 32 - skip);
        dl += 32 - skip;
    }
    der[1] = (uint8_t)(dl - 2);
    openssl_verify(&pub, "SHA256", msg, sizeof(msg), der, dl);

    /* Raw ECDSA on a digest; P-384 by curve name. */
    CK_MECHANISM raw = {CKM_ECDSA, NULL, 0};
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &raw, kpriv, &priv, &op));
    RV(CKR_OPERATION_ACTIVE, tok_op_update(op, msg, 3, NULL, NULL));
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &raw, kpriv, &priv, &op));
    len = sizeof(sig);
    RV(CKR_DATA_LEN_RANGE, tok_op_oneshot(op, msg, 0, sig, &len));
    tok_op_free(op);

    tok_attrs pub2 = TOK_ATTRS_INIT, priv2 = TOK_ATTRS_INIT;
    tok_key *kpub2, *kpriv2;
    CK_ATTRIBUTE pt2[] = {{CKA_EC_PARAMS, (void *)p384_name, sizeof(p384_name)}};
    keypair(CKM_EC_KEY_PAIR_GEN, pt2, 1, &pub2, &priv2, &kpub2, &kpriv2);
    usage_all(&priv2);
    usage_all(&pub2);
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &m, kpriv2, &priv2, &op));
    len = 0;
    RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), NULL, &len));
    assert_int_equal(len, 96);
    len = sizeof(sig);
    RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), sig, &len));
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &m, kpub2, &pub2, &op));
    RV(CKR_OK, tok_op_verify(op, msg, sizeof(msg), sig, 96));
    tok_op_free(op);
    /* Cross-key: a P-384 signature does not verify under the P-256 key. */
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &m, kpub, &pub, &op));
    RV(CKR_SIGNATURE_LEN_RANGE, tok_op_verify(op, msg, sizeof(msg), sig, 96));
    tok_op_free(op);
    /* Key class rules. */
    RV(CKR_KEY_TYPE_INCONSISTENT, tok_op_init(TOK_OP_SIGN, &m, kpub, &pub, &op));
    RV(CKR_KEY_TYPE_INCONSISTENT, tok_op_init(TOK_OP_VERIFY, &m, kpriv, &priv, &op));

    /* Unsupported curve; missing params. */
    CK_BYTE k1[] = {0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x07}; /* brainpoolP256r1 */
    tok_attrs x = TOK_ATTRS_INIT, y = TOK_ATTRS_INIT;
    CK_MECHANISM g = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    tok_attrs_set(&x, CKA_EC_PARAMS, k1, sizeof(k1));
    RV(CKR_CURVE_NOT_SUPPORTED, tok_mech_generate_keypair(&g, &x, &y));
    tok_attrs_free(&x);
    RV(CKR_TEMPLATE_INCOMPLETE, tok_mech_generate_keypair(&g, &x, &y));

    /* Import: an EC private key without its point gets the point computed. */
    tok_attrs imp = TOK_ATTRS_INIT;
    tok_attrs_set_ulong(&imp, CKA_CLASS, CKO_PRIVATE_KEY);
    tok_attrs_set_ulong(&imp, CKA_KEY_TYPE, CKK_EC);
    tok_attrs_set(&imp, CKA_EC_PARAMS, p256, sizeof(p256));
    const tok_attr *d = tok_attrs_find(&priv, CKA_VALUE);
    tok_attrs_set(&imp, CKA_VALUE, d->val, d->len);
    RV(CKR_OK, tok_mech_complete_import(&imp));
    const tok_attr *p1 = tok_attrs_find(&imp, CKA_EC_POINT), *p2 = tok_attrs_find(&pub, CKA_EC_POINT);
    assert_non_null(p1);
    assert_int_equal(p1->len, p2->len);
    assert_memory_equal(p1->val, p2->val, p1->len);
    tok_attrs_free(&imp);
    tok_attrs_set_ulong(&imp, CKA_CLASS, CKO_PUBLIC_KEY);
    tok_attrs_set_ulong(&imp, CKA_KEY_TYPE, CKK_EC);
    tok_attrs_set(&imp, CKA_EC_PARAMS, p256, sizeof(p256));
    RV(CKR_TEMPLATE_INCOMPLETE, tok_mech_complete_import(&imp));
    tok_attrs_set(&imp, CKA_EC_POINT, "\x04\x01\x02", 3);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_mech_complete_import(&imp));

    tok_attrs_free(&imp);
    tok_key_unref(kpub);
    tok_key_unref(kpriv);
    tok_key_unref(kpub2);
    tok_key_unref(kpriv2);
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);
    tok_attrs_free(&pub2);
    tok_attrs_free(&priv2);
}

static void test_rsa(void **state)
{
    (void)state;
    tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT;
    tok_key *kpub, *kpriv;
    CK_ULONG bits = 2048;
    CK_BYTE e3[] = {3};
    CK_ATTRIBUTE pt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_PUBLIC_EXPONENT, e3, 1}};
    keypair(CKM_RSA_PKCS_KEY_PAIR_GEN, pt, 2, &pub, &priv, &kpub, &kpriv);
    usage_all(&pub);
    usage_all(&priv);
    assert_int_equal(tok_attrs_find(&pub, CKA_MODULUS)->len, 256);
    assert_int_equal(tok_attrs_find(&pub, CKA_PUBLIC_EXPONENT)->len, 1);
    assert_non_null(tok_attrs_find(&priv, CKA_PRIME_1));

    CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
    tok_op *op;
    CK_BYTE sig[512];
    CK_ULONG len = 100;
    const uint8_t msg[] = "rsa message";
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &m, kpriv, &priv, &op));
    RV(CKR_BUFFER_TOO_SMALL, tok_op_oneshot(op, msg, sizeof(msg), sig, &len));
    assert_int_equal(len, 256);
    RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), sig, &len));
    tok_op_free(op);
    openssl_verify(&pub, "SHA256", msg, sizeof(msg), sig, len);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &m, kpub, &pub, &op));
    sig[0] ^= 1;
    RV(CKR_SIGNATURE_INVALID, tok_op_verify(op, msg, sizeof(msg), sig, len));
    tok_op_free(op);

    /* Raw PKCS#1 v1.5 encryption round trip, tampered ciphertext. */
    CK_MECHANISM r = {CKM_RSA_PKCS, NULL, 0};
    CK_BYTE ct[256], pt2[256];
    CK_ULONG ctlen = sizeof(ct), ptlen = sizeof(pt2);
    RV(CKR_OK, tok_op_init(TOK_OP_ENCRYPT, &r, kpub, &pub, &op));
    RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), ct, &ctlen));
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &r, kpriv, &priv, &op));
    ptlen = 4; /* too small for the message: the result waits for a bigger buffer */
    RV(CKR_BUFFER_TOO_SMALL, tok_op_oneshot(op, ct, ctlen, pt2, &ptlen));
    assert_int_equal(ptlen, sizeof(msg));
    RV(CKR_OK, tok_op_oneshot(op, ct, ctlen, pt2, &ptlen));
    assert_memory_equal(pt2, msg, sizeof(msg));
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &r, kpriv, &priv, &op));
    ptlen = sizeof(pt2);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, tok_op_oneshot(op, ct, ctlen - 1, pt2, &ptlen));
    tok_op_free(op);

    /* Sizes and exponents out of range. */
    CK_MECHANISM g = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    tok_attrs x = TOK_ATTRS_INIT, y = TOK_ATTRS_INIT;
    tok_attrs_set_ulong(&x, CKA_MODULUS_BITS, 1024);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_mech_generate_keypair(&g, &x, &y));
    tok_attrs_set_ulong(&x, CKA_MODULUS_BITS, 2048);
    tok_attrs_set(&x, CKA_PUBLIC_EXPONENT, "\x02", 1);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_mech_generate_keypair(&g, &x, &y));

    /* Import of a public key computes the modulus bits and SPKI. */
    tok_attrs imp = TOK_ATTRS_INIT;
    tok_attrs_set_ulong(&imp, CKA_CLASS, CKO_PUBLIC_KEY);
    tok_attrs_set_ulong(&imp, CKA_KEY_TYPE, CKK_RSA);
    const tok_attr *mod = tok_attrs_find(&pub, CKA_MODULUS);
    tok_attrs_set(&imp, CKA_MODULUS, mod->val, mod->len);
    RV(CKR_TEMPLATE_INCOMPLETE, tok_mech_complete_import(&imp));
    tok_attrs_set(&imp, CKA_PUBLIC_EXPONENT, e3, 1);
    RV(CKR_OK, tok_mech_complete_import(&imp));
    CK_ULONG mb = 0;
    assert_true(tok_attrs_get_ulong(&imp, CKA_MODULUS_BITS, &mb));
    assert_int_equal(mb, 2048);
    assert_non_null(tok_attrs_find(&imp, CKA_PUBLIC_KEY_INFO));

    tok_attrs_free(&imp);
    tok_attrs_free(&x);
    tok_attrs_free(&y);
    tok_key_unref(kpub);
    tok_key_unref(kpriv);
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);
}

static void test_aes(void **state)
{
    (void)state;
    tok_attrs a = TOK_ATTRS_INIT;
    tok_key *k = secret_key(CKK_AES, "0123456789abcdef0123456789abcdef", 32, &a);
    CK_BYTE iv[16] = {0}, in[40], ct[128], back[128];
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    tok_op *op;
    CK_ULONG len, n, total;

    memset(in, 'p', sizeof(in));
    /* Multi-part encryption with size queries at each step. */
    RV(CKR_OK, tok_op_init(TOK_OP_ENCRYPT, &cbc, k, &a, &op));
    n = 0;
    RV(CKR_OK, tok_op_update(op, in, 10, NULL, &n));
    assert_int_equal(n, 0);
    n = sizeof(ct);
    RV(CKR_OK, tok_op_update(op, in, 10, ct, &n));
    assert_int_equal(n, 0);
    n = 0;
    RV(CKR_OK, tok_op_update(op, in + 10, 30, NULL, &n));
    assert_int_equal(n, 32);
    n = 16;
    RV(CKR_BUFFER_TOO_SMALL, tok_op_update(op, in + 10, 30, ct, &n));
    n = sizeof(ct);
    RV(CKR_OK, tok_op_update(op, in + 10, 30, ct, &n));
    assert_int_equal(n, 32);
    total = n;
    len = sizeof(ct) - total;
    RV(CKR_OK, tok_op_final(op, ct + total, &len));
    assert_int_equal(len, 16);
    total += len;
    tok_op_free(op);

    RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &cbc, k, &a, &op));
    len = sizeof(back);
    RV(CKR_OK, tok_op_oneshot(op, ct, total, back, &len));
    assert_int_equal(len, sizeof(in));
    assert_memory_equal(back, in, sizeof(in));
    tok_op_free(op);

    /* GCM: AAD, tag lengths, tampering (ciphertext, tag, AAD). */
    CK_BYTE gciv[12] = {1};
    CK_BYTE aad[] = "associated";
    CK_GCM_PARAMS gp = {gciv, sizeof(gciv), 96, aad, sizeof(aad), 96};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    RV(CKR_OK, tok_op_init(TOK_OP_ENCRYPT, &gcm, k, &a, &op));
    n = sizeof(ct);
    RV(CKR_OK, tok_op_update(op, in, 25, ct, &n));
    assert_int_equal(n, 25);
    len = sizeof(ct) - n;
    RV(CKR_OK, tok_op_update(op, in + 25, 15, ct + n, &len));
    total = n + len;
    len = sizeof(ct) - total;
    RV(CKR_OK, tok_op_final(op, ct + total, &len));
    assert_int_equal(len, 12);
    total += len;
    tok_op_free(op);
    for (int variant = 0; variant < 4; variant++) {
        CK_BYTE c2[128];
        memcpy(c2, ct, total);
        CK_GCM_PARAMS g2 = gp;
        CK_BYTE aad2[sizeof(aad)];
        memcpy(aad2, aad, sizeof(aad));
        if (variant == 1)
            c2[3] ^= 1;
        if (variant == 2)
            c2[total - 1] ^= 1;
        if (variant == 3) {
            aad2[0] ^= 1;
            g2.pAAD = aad2;
        }
        CK_MECHANISM m2 = {CKM_AES_GCM, &g2, sizeof(g2)};
        RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &m2, k, &a, &op));
        n = sizeof(back);
        RV(CKR_OK, tok_op_update(op, c2, 20, back, &n));
        assert_int_equal(n, 0);
        n = sizeof(back);
        RV(CKR_OK, tok_op_update(op, c2 + 20, total - 20, back, &n));
        len = sizeof(back);
        RV(variant == 0 ? CKR_OK : CKR_ENCRYPTED_DATA_INVALID, tok_op_final(op, back, &len));
        if (variant == 0) {
            assert_int_equal(len, sizeof(in));
            assert_memory_equal(back, in, sizeof(in));
        }
        tok_op_free(op);
    }
    CK_GCM_PARAMS bad = gp;
    bad.ulIvLen = 0;
    CK_MECHANISM mb = {CKM_AES_GCM, &bad, sizeof(bad)};
    RV(CKR_MECHANISM_PARAM_INVALID, tok_op_init(TOK_OP_ENCRYPT, &mb, k, &a, &op));
    bad = gp;
    bad.pAAD = NULL;
    RV(CKR_MECHANISM_PARAM_INVALID, tok_op_init(TOK_OP_ENCRYPT, &mb, k, &a, &op));
    CK_MECHANISM shortp = {CKM_AES_GCM, &gp, sizeof(gp) - 1};
    RV(CKR_MECHANISM_PARAM_INVALID, tok_op_init(TOK_OP_ENCRYPT, &shortp, k, &a, &op));
    /* AES key cannot sign; digest is not a cipher. */
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    RV(CKR_KEY_TYPE_INCONSISTENT, tok_op_init(TOK_OP_SIGN, &ecdsa, k, &a, &op));
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    RV(CKR_MECHANISM_INVALID, tok_op_init(TOK_OP_ENCRYPT, &sha, k, &a, &op));

    /* Import checks. */
    tok_attrs imp = TOK_ATTRS_INIT;
    tok_attrs_set_ulong(&imp, CKA_CLASS, CKO_SECRET_KEY);
    tok_attrs_set_ulong(&imp, CKA_KEY_TYPE, CKK_AES);
    RV(CKR_TEMPLATE_INCOMPLETE, tok_mech_complete_import(&imp));
    tok_attrs_set(&imp, CKA_VALUE, "short", 5);
    RV(CKR_ATTRIBUTE_VALUE_INVALID, tok_mech_complete_import(&imp));
    tok_attrs_set(&imp, CKA_VALUE, "0123456789abcdef", 16);
    RV(CKR_OK, tok_mech_complete_import(&imp));
    CK_ULONG vl = 0;
    assert_true(tok_attrs_get_ulong(&imp, CKA_VALUE_LEN, &vl));
    assert_int_equal(vl, 16);

    /* Random. */
    CK_BYTE r1[32] = {0}, r2[32] = {0};
    RV(CKR_OK, tok_random(r1, sizeof(r1)));
    RV(CKR_OK, tok_random(r2, sizeof(r2)));
    assert_memory_not_equal(r1, r2, sizeof(r1));
    RV(CKR_ARGUMENTS_BAD, tok_random(NULL, 4));

    tok_attrs_free(&imp);
    tok_key_unref(k);
    tok_attrs_free(&a);
}

/* ---- the wider mechanism set ----------------------------------------------- */

static void digest_kat(CK_MECHANISM_TYPE m, const uint8_t *want, size_t wlen)
{
    CK_MECHANISM mech = {m, NULL, 0};
    tok_op *op;
    CK_BYTE out[64];
    CK_ULONG len = 0;
    RV(CKR_OK, tok_op_init(TOK_OP_DIGEST, &mech, NULL, NULL, &op));
    RV(CKR_OK, tok_op_update(op, (const uint8_t *)"a", 1, NULL, NULL));
    RV(CKR_OK, tok_op_update(op, (const uint8_t *)"bc", 2, NULL, NULL));
    RV(CKR_OK, tok_op_final(op, NULL, &len));
    assert_int_equal(len, wlen);
    len = sizeof(out);
    RV(CKR_OK, tok_op_final(op, out, &len));
    assert_int_equal(len, wlen);
    assert_memory_equal(out, want, wlen);
    tok_op_free(op);
}

static void test_digests_hmac_cmac(void **state)
{
    (void)state;
    static const uint8_t sha1[] = {0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e,
                                   0x25, 0x71, 0x78, 0x50, 0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d};
    static const uint8_t sha384[] = {0xcb, 0x00, 0x75, 0x3f, 0x45, 0xa3, 0x5e, 0x8b, 0xb5, 0xa0, 0x3d, 0x69,
                                     0x9a, 0xc6, 0x50, 0x07, 0x27, 0x2c, 0x32, 0xab, 0x0e, 0xde, 0xd1, 0x63,
                                     0x1a, 0x8b, 0x60, 0x5a, 0x43, 0xff, 0x5b, 0xed, 0x80, 0x86, 0x07, 0x2b,
                                     0xa1, 0xe7, 0xcc, 0x23, 0x58, 0xba, 0xec, 0xa1, 0x34, 0xc8, 0x25, 0xa7};
    static const uint8_t sha512[] = {0xdd, 0xaf, 0x35, 0xa1, 0x93, 0x61, 0x7a, 0xba, 0xcc, 0x41, 0x73, 0x49, 0xae,
                                     0x20, 0x41, 0x31, 0x12, 0xe6, 0xfa, 0x4e, 0x89, 0xa9, 0x7e, 0xa2, 0x0a, 0x9e,
                                     0xee, 0xe6, 0x4b, 0x55, 0xd3, 0x9a, 0x21, 0x92, 0x99, 0x2a, 0x27, 0x4f, 0xc1,
                                     0xa8, 0x36, 0xba, 0x3c, 0x23, 0xa3, 0xfe, 0xeb, 0xbd, 0x45, 0x4d, 0x44, 0x23,
                                     0x64, 0x3c, 0xe8, 0x0e, 0x2a, 0x9a, 0xc9, 0x4f, 0xa5, 0x4c, 0xa4, 0x9f};
    static const uint8_t sha3_256[] = {0x3a, 0x98, 0x5d, 0xa7, 0x4f, 0xe2, 0x25, 0xb2, 0x04, 0x5c, 0x17,
                                       0x2d, 0x6b, 0xd3, 0x90, 0xbd, 0x85, 0x5f, 0x08, 0x6e, 0x3e, 0x9d,
                                       0x52, 0x5b, 0x46, 0xbf, 0xe2, 0x45, 0x11, 0x43, 0x15, 0x32};
    digest_kat(CKM_SHA_1, sha1, sizeof(sha1));
    digest_kat(CKM_SHA384, sha384, sizeof(sha384));
    digest_kat(CKM_SHA512, sha512, sizeof(sha512));
    digest_kat(0x2B0 /* CKM_SHA3_256 */, sha3_256, sizeof(sha3_256));

    /* HMAC-SHA512, RFC 4231 test case 1; a key of type CKK_SHA512_HMAC works, CKK_SHA256_HMAC not. */
    static const uint8_t tc1[] = {0x87, 0xaa, 0x7c, 0xde, 0xa5, 0xef, 0x61, 0x9d, 0x4f, 0xf0, 0xb4, 0x24, 0x1a,
                                  0x1d, 0x6c, 0xb0, 0x23, 0x79, 0xf4, 0xe2, 0xce, 0x4e, 0xc2, 0x78, 0x7a, 0xd0,
                                  0xb3, 0x05, 0x45, 0xe1, 0x7c, 0xde, 0xda, 0xa8, 0x33, 0xb7, 0xd6, 0xb8, 0xa7,
                                  0x02, 0x03, 0x8b, 0x27, 0x4e, 0xae, 0xa3, 0xf4, 0xe4, 0xbe, 0x9d, 0x91, 0x4e,
                                  0xeb, 0x61, 0xf1, 0x70, 0x2e, 0x69, 0x6c, 0x20, 0x3a, 0x12, 0x68, 0x54};
    uint8_t key[20];
    memset(key, 0x0b, sizeof(key));
    tok_attrs a = TOK_ATTRS_INIT, b = TOK_ATTRS_INIT;
    tok_key *k = secret_key(CKK_SHA512_HMAC, key, sizeof(key), &a), *k2 = secret_key(CKK_SHA256_HMAC, key, 20, &b);
    CK_MECHANISM hm = {CKM_SHA512_HMAC, NULL, 0};
    tok_op *op;
    CK_BYTE out[64];
    CK_ULONG len = sizeof(out);
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &hm, k, &a, &op));
    RV(CKR_OK, tok_op_oneshot(op, (const uint8_t *)"Hi There", 8, out, &len));
    assert_int_equal(len, 64);
    assert_memory_equal(out, tc1, 64);
    tok_op_free(op);
    RV(CKR_KEY_TYPE_INCONSISTENT, tok_op_init(TOK_OP_SIGN, &hm, k2, &b, &op));
    tok_key_unref(k);
    tok_key_unref(k2);
    tok_attrs_free(&a);
    tok_attrs_free(&b);

    /* AES-CMAC, RFC 4493 example 2. */
    static const uint8_t k128[] = {0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6,
                                   0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c};
    static const uint8_t m16[] = {0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96,
                                  0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a};
    static const uint8_t cmac[] = {0x07, 0x0a, 0x16, 0xb4, 0x6b, 0x4d, 0x41, 0x44,
                                   0xf7, 0x9b, 0xdd, 0x9d, 0xd0, 0x4a, 0x28, 0x7c};
    k = secret_key(CKK_AES, k128, 16, &a);
    CK_MECHANISM cm = {CKM_AES_CMAC, NULL, 0};
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &cm, k, &a, &op));
    len = sizeof(out);
    RV(CKR_OK, tok_op_oneshot(op, m16, 16, out, &len));
    assert_int_equal(len, 16);
    assert_memory_equal(out, cmac, 16);
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &cm, k, &a, &op));
    RV(CKR_OK, tok_op_verify(op, m16, 16, cmac, 16));
    tok_op_free(op);

    /* AES-128 ECB, CBC, CTR: SP 800-38A F.1.1, F.2.1, F.5.1 (first block). */
    static const uint8_t ecb[] = {0x3a, 0xd7, 0x7b, 0xb4, 0x0d, 0x7a, 0x36, 0x60,
                                  0xa8, 0x9e, 0xca, 0xf3, 0x24, 0x66, 0xef, 0x97};
    static const uint8_t cbc[] = {0x76, 0x49, 0xab, 0xac, 0x81, 0x19, 0xb2, 0x46,
                                  0xce, 0xe9, 0x8e, 0x9b, 0x12, 0xe9, 0x19, 0x7d};
    static const uint8_t ctr[] = {0x87, 0x4d, 0x61, 0x91, 0xb6, 0x20, 0xe3, 0x26,
                                  0x1b, 0xef, 0x68, 0x64, 0x99, 0x0d, 0xb6, 0xce};
    CK_BYTE iv[16];
    for (int i = 0; i < 16; i++)
        iv[i] = (CK_BYTE)i;
    CK_AES_CTR_PARAMS cp = {128, {0}};
    for (int i = 0; i < 16; i++)
        cp.cb[i] = (CK_BYTE)(0xf0 + i);
    struct {
        CK_MECHANISM m;
        const uint8_t *want;
    } modes[] = {
        {{CKM_AES_ECB, NULL, 0}, ecb},
        {{CKM_AES_CBC, iv, 16}, cbc},
        {{CKM_AES_CTR, &cp, sizeof(cp)}, ctr},
    };
    for (size_t i = 0; i < 3; i++) {
        RV(CKR_OK, tok_op_init(TOK_OP_ENCRYPT, &modes[i].m, k, &a, &op));
        len = sizeof(out);
        RV(CKR_OK, tok_op_oneshot(op, m16, 16, out, &len));
        assert_int_equal(len, 16);
        assert_memory_equal(out, modes[i].want, 16);
        tok_op_free(op);
        RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &modes[i].m, k, &a, &op));
        CK_BYTE back[32];
        CK_ULONG bl = sizeof(back), part = sizeof(back);
        RV(CKR_OK, tok_op_update(op, out, 7, back, &part)); /* multi-part in uneven pieces */
        bl = part;
        part = sizeof(back) - bl;
        RV(CKR_OK, tok_op_update(op, out + 7, 9, back + bl, &part));
        bl += part;
        part = sizeof(back) - bl;
        RV(CKR_OK, tok_op_final(op, back + bl, &part));
        bl += part;
        assert_int_equal(bl, 16);
        assert_memory_equal(back, m16, 16);
        tok_op_free(op);
    }
    /* Block modes without padding need whole blocks; CTR needs a counter size. */
    CK_MECHANISM ecbm = {CKM_AES_ECB, NULL, 0};
    RV(CKR_OK, tok_op_init(TOK_OP_ENCRYPT, &ecbm, k, &a, &op));
    len = sizeof(out);
    RV(CKR_DATA_LEN_RANGE, tok_op_oneshot(op, m16, 15, out, &len));
    tok_op_free(op);
    cp.ulCounterBits = 0;
    CK_MECHANISM badctr = {CKM_AES_CTR, &cp, sizeof(cp)};
    RV(CKR_MECHANISM_PARAM_INVALID, tok_op_init(TOK_OP_ENCRYPT, &badctr, k, &a, &op));
    CK_MECHANISM ecbiv = {CKM_AES_ECB, iv, 16};
    RV(CKR_MECHANISM_PARAM_INVALID, tok_op_init(TOK_OP_ENCRYPT, &ecbiv, k, &a, &op));
    tok_key_unref(k);
    tok_attrs_free(&a);
}

static void test_p521_and_rsa_pss_oaep(void **state)
{
    (void)state;
    static const CK_BYTE p521[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
    tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT;
    tok_key *kpub, *kpriv;
    tok_op *op;
    CK_BYTE sig[512], der[160];
    CK_ULONG len;
    const uint8_t msg[] = "the wider mechanism set";

    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p521, sizeof(p521)}};
    keypair(CKM_EC_KEY_PAIR_GEN, pt, 1, &pub, &priv, &kpub, &kpriv);
    assert_int_equal(tok_attrs_find(&pub, CKA_EC_POINT)->len, 136); /* 04 81 85 | 133-byte point */
    usage_all(&pub);
    usage_all(&priv);
    CK_MECHANISM m = {CKM_ECDSA_SHA512, NULL, 0};
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &m, kpriv, &priv, &op));
    len = sizeof(sig);
    RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), sig, &len));
    assert_int_equal(len, 132);
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &m, kpub, &pub, &op));
    RV(CKR_OK, tok_op_verify(op, msg, sizeof(msg), sig, len));
    tok_op_free(op);
    /* r||s -> DER for OpenSSL */
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(sig, 66, NULL), BN_bin2bn(sig + 66, 66, NULL));
    unsigned char *dp = der;
    int dl = i2d_ECDSA_SIG(es, &dp);
    ECDSA_SIG_free(es);
    openssl_verify(&pub, "SHA512", msg, sizeof(msg), der, (size_t)dl);
    tok_key_unref(kpub);
    tok_key_unref(kpriv);
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);

    /* RSA-PSS with SHA-256, checked by plain OpenSSL; raw PSS on a digest. */
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE rt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    keypair(CKM_RSA_PKCS_KEY_PAIR_GEN, rt, 1, &pub, &priv, &kpub, &kpriv);
    usage_all(&pub);
    usage_all(&priv);
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM pm = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &pm, kpriv, &priv, &op));
    RV(CKR_OK, tok_op_update(op, msg, 5, NULL, NULL));
    RV(CKR_OK, tok_op_update(op, msg + 5, sizeof(msg) - 5, NULL, NULL));
    len = sizeof(sig);
    RV(CKR_OK, tok_op_final(op, sig, &len));
    assert_int_equal(len, 256);
    tok_op_free(op);
    openssl_verify_pss(&pub, "SHA256", 32, msg, sizeof(msg), sig, len);
    CK_BYTE dg[32];
    size_t dgl = 0;
    assert_true(EVP_Q_digest(NULL, "SHA256", NULL, msg, sizeof(msg), dg, &dgl));
    CK_MECHANISM raw = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &raw, kpub, &pub, &op));
    RV(CKR_OK, tok_op_verify(op, dg, 32, sig, len)); /* raw PSS over the digest verifies the same signature */
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &raw, kpub, &pub, &op));
    RV(CKR_DATA_LEN_RANGE, tok_op_verify(op, dg, 31, sig, len));
    tok_op_free(op);
    CK_RSA_PKCS_PSS_PARAMS wrong = {CKM_SHA384, CKG_MGF1_SHA256, 32};
    CK_MECHANISM pmw = {CKM_SHA256_RSA_PKCS_PSS, &wrong, sizeof(wrong)};
    RV(CKR_MECHANISM_PARAM_INVALID, tok_op_init(TOK_OP_SIGN, &pmw, kpriv, &priv, &op));
    CK_RSA_PKCS_PSS_PARAMS bigsalt = {CKM_SHA256, CKG_MGF1_SHA256, 250};
    CK_MECHANISM pmb = {CKM_SHA256_RSA_PKCS_PSS, &bigsalt, sizeof(bigsalt)};
    RV(CKR_MECHANISM_PARAM_INVALID, tok_op_init(TOK_OP_SIGN, &pmb, kpriv, &priv, &op));

    /* SHA-3 in the parameters (raw PSS over a SHA3-256 digest, MGF1 with
     * SHA3-256; OAEP with SHA3-512): what plain OpenSSL makes and checks. */
    {
        CK_BYTE d3[32], s3[256], c3[256], b3[256];
        size_t d3l = 0;
        CK_ULONG s3l = sizeof(s3), c3l = sizeof(c3), b3l = sizeof(b3);
        assert_true(EVP_Q_digest(NULL, "SHA3-256", NULL, msg, sizeof(msg), d3, &d3l));
        CK_RSA_PKCS_PSS_PARAMS p3 = {CKM_SHA3_256, CKG_MGF1_SHA3_256, 32};
        CK_MECHANISM raw3 = {CKM_RSA_PKCS_PSS, &p3, sizeof(p3)};
        RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &raw3, kpriv, &priv, &op));
        RV(CKR_OK, tok_op_oneshot(op, d3, 32, s3, &s3l));
        tok_op_free(op);
        openssl_verify_pss(&pub, "SHA3-256", 32, msg, sizeof(msg), s3, s3l);
        const tok_attr *spki = tok_attrs_find(&pub, CKA_PUBLIC_KEY_INFO);
        const unsigned char *p = spki->val;
        EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)spki->len);
        EVP_PKEY_CTX *pc;
        CK_RSA_PKCS_OAEP_PARAMS o3 = {CKM_SHA3_512, CKG_MGF1_SHA3_512, CKZ_DATA_SPECIFIED, NULL, 0};
        CK_MECHANISM om3 = {CKM_RSA_PKCS_OAEP, &o3, sizeof(o3)};
        pc = EVP_PKEY_CTX_new(pk, NULL);
        size_t cl = sizeof(c3);
        assert_int_equal(EVP_PKEY_encrypt_init(pc), 1);
        EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_OAEP_PADDING);
        EVP_PKEY_CTX_set_rsa_oaep_md_name(pc, "SHA3-512", NULL);
        EVP_PKEY_CTX_set_rsa_mgf1_md_name(pc, "SHA3-512", NULL);
        assert_int_equal(EVP_PKEY_encrypt(pc, c3, &cl, msg, sizeof(msg)), 1);
        EVP_PKEY_CTX_free(pc);
        EVP_PKEY_free(pk);
        c3l = cl;
        RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &om3, kpriv, &priv, &op));
        RV(CKR_OK, tok_op_oneshot(op, c3, c3l, b3, &b3l));
        tok_op_free(op);
        assert_int_equal(b3l, sizeof(msg));
        assert_memory_equal(b3, msg, sizeof(msg));
    }

    /* OAEP with a label: round trip; a different label fails. */
    CK_BYTE lbl[] = "label", ct[256], back[256];
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, lbl, 5};
    CK_MECHANISM om = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    RV(CKR_OK, tok_op_init(TOK_OP_ENCRYPT, &om, kpub, &pub, &op));
    len = sizeof(ct);
    RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), ct, &len));
    assert_int_equal(len, 256);
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &om, kpriv, &priv, &op));
    CK_ULONG bl = sizeof(back);
    RV(CKR_OK, tok_op_oneshot(op, ct, len, back, &bl));
    assert_int_equal(bl, sizeof(msg));
    assert_memory_equal(back, msg, sizeof(msg));
    tok_op_free(op);
    oaep.pSourceData = (CK_BYTE_PTR) "other";
    RV(CKR_OK, tok_op_init(TOK_OP_DECRYPT, &om, kpriv, &priv, &op));
    bl = sizeof(back);
    RV(CKR_ENCRYPTED_DATA_INVALID, tok_op_oneshot(op, ct, len, back, &bl));
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_ENCRYPT, &om, kpub, &pub, &op));
    len = sizeof(ct);
    RV(CKR_DATA_LEN_RANGE, tok_op_oneshot(op, ct, 200, ct, &len)); /* > k - 2*hLen - 2 */
    tok_op_free(op);

    /* Raw RSA (X.509): sign, verify, and a tampered signature. */
    CK_MECHANISM xm = {CKM_RSA_X_509, NULL, 0};
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &xm, kpriv, &priv, &op));
    len = sizeof(sig);
    RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), sig, &len));
    tok_op_free(op);
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &xm, kpub, &pub, &op));
    RV(CKR_OK, tok_op_verify(op, msg, sizeof(msg), sig, len));
    tok_op_free(op);
    sig[10] ^= 1;
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &xm, kpub, &pub, &op));
    RV(CKR_SIGNATURE_INVALID, tok_op_verify(op, msg, sizeof(msg), sig, len));
    tok_op_free(op);

    tok_key_unref(kpub);
    tok_key_unref(kpriv);
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);
}

static void hexbytes(const char *hex, uint8_t *out)
{
    for (size_t i = 0; hex[2 * i]; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void test_eddsa(void **state)
{
    (void)state;
    static const CK_BYTE ed25519_oid[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
    static const CK_BYTE ed448_name[] = {0x13, 0x0a, 'e', 'd', 'w', 'a', 'r', 'd', 's', '4', '4', '8'};
    CK_MECHANISM eddsa = {CKM_EDDSA, NULL, 0};
    const uint8_t msg[] = "EdDSA on the token";
    struct {
        const CK_BYTE *params;
        size_t len;
        size_t siglen;
    } curves[] = {{ed25519_oid, sizeof(ed25519_oid), 64}, {ed448_name, sizeof(ed448_name), 114}};

    for (size_t i = 0; i < 2; i++) {
        tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT;
        tok_key *kpub, *kpriv;
        tok_op *op;
        CK_BYTE sig[128];
        CK_ULONG len = 0;
        CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)curves[i].params, curves[i].len}};
        keypair(CKM_EC_EDWARDS_KEY_PAIR_GEN, pt, 1, &pub, &priv, &kpub, &kpriv);
        usage_all(&pub);
        usage_all(&priv);
        RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &eddsa, kpriv, &priv, &op));
        RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), NULL, &len));
        assert_int_equal(len, curves[i].siglen);
        RV(CKR_OK, tok_op_oneshot(op, msg, sizeof(msg), sig, &len));
        tok_op_free(op);
        RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &eddsa, kpub, &pub, &op));
        RV(CKR_OK, tok_op_verify(op, msg, sizeof(msg), sig, len));
        tok_op_free(op);
        openssl_verify(&pub, NULL, msg, sizeof(msg), sig, len);
        sig[3] ^= 1;
        RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &eddsa, kpub, &pub, &op));
        RV(CKR_SIGNATURE_INVALID, tok_op_verify(op, msg, sizeof(msg), sig, len));
        tok_op_free(op);
        /* Multi-part (PKCS#11: CKM_EDDSA signs and verifies in parts): the
         * parts gathered, then signed at once; EdDSA is deterministic, so
         * the same signature as the one-shot's. */
        uint8_t sig2[114];
        CK_ULONG len2 = sizeof(sig2);
        sig[3] ^= 1;
        RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &eddsa, kpriv, &priv, &op));
        RV(CKR_OK, tok_op_update(op, msg, 3, NULL, NULL));
        RV(CKR_OK, tok_op_update(op, NULL, 0, NULL, NULL));
        RV(CKR_OK, tok_op_update(op, msg + 3, sizeof(msg) - 3, NULL, NULL));
        RV(CKR_OK, tok_op_final(op, sig2, &len2));
        tok_op_free(op);
        assert_int_equal(len2, len);
        assert_memory_equal(sig2, sig, len);
        RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &eddsa, kpub, &pub, &op));
        RV(CKR_OK, tok_op_update(op, msg, 5, NULL, NULL));
        RV(CKR_OK, tok_op_update(op, msg + 5, sizeof(msg) - 5, NULL, NULL));
        RV(CKR_OK, tok_op_verify_final(op, sig2, len2));
        tok_op_free(op);
        RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &eddsa, kpub, &pub, &op));
        RV(CKR_OK, tok_op_update(op, msg, 5, NULL, NULL));
        RV(CKR_SIGNATURE_INVALID, tok_op_verify_final(op, sig2, len2)); /* a part missing */
        tok_op_free(op);
        RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &eddsa, kpriv, &priv, &op)); /* no part: the empty message */
        len2 = sizeof(sig2);
        RV(CKR_OK, tok_op_final(op, sig2, &len2));
        tok_op_free(op);
        openssl_verify(&pub, NULL, msg, 0, sig2, len2);
        CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
        RV(CKR_KEY_TYPE_INCONSISTENT, tok_op_init(TOK_OP_SIGN, &ecdsa, kpriv, &priv, &op));
        tok_key_unref(kpub);
        tok_key_unref(kpriv);
        tok_attrs_free(&pub);
        tok_attrs_free(&priv);
    }

    /* RFC 8032, 7.1, TEST 1: an imported Ed25519 key signs the empty message as specified. */
    uint8_t sk[32], pk[32], want[64];
    hexbytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", sk);
    hexbytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", pk);
    hexbytes("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b4"
             "6bd25bf5f0595bbe24655141438e7a100b", want);
    tok_attrs imp = TOK_ATTRS_INIT;
    tok_attrs_set_ulong(&imp, CKA_CLASS, CKO_PRIVATE_KEY);
    tok_attrs_set_ulong(&imp, CKA_KEY_TYPE, CKK_EC_EDWARDS);
    tok_attrs_set(&imp, CKA_EC_PARAMS, ed25519_oid, sizeof(ed25519_oid));
    tok_attrs_set(&imp, CKA_VALUE, sk, 32);
    RV(CKR_OK, tok_mech_complete_import(&imp));
    const tok_attr *pt = tok_attrs_find(&imp, CKA_EC_POINT);
    assert_non_null(pt);
    assert_int_equal(pt->len, 34);
    assert_memory_equal(pt->val + 2, pk, 32);
    usage_all(&imp);
    tok_key *k;
    tok_op *op;
    RV(CKR_OK, tok_key_from_attrs(&imp, &k));
    RV(CKR_OK, tok_op_init(TOK_OP_SIGN, &eddsa, k, &imp, &op));
    CK_BYTE sig[64];
    CK_ULONG len = sizeof(sig);
    RV(CKR_OK, tok_op_oneshot(op, NULL, 0, sig, &len));
    assert_int_equal(len, 64);
    assert_memory_equal(sig, want, 64);
    tok_op_free(op);
    tok_key_unref(k);
    tok_attrs_free(&imp);

    /* Edwards curves only with the Edwards mechanism, and back. */
    CK_MECHANISM g = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    tok_attrs x = TOK_ATTRS_INIT, y = TOK_ATTRS_INIT;
    tok_attrs_set(&x, CKA_EC_PARAMS, ed25519_oid, sizeof(ed25519_oid));
    RV(CKR_CURVE_NOT_SUPPORTED, tok_mech_generate_keypair(&g, &x, &y));
    tok_attrs_free(&x);
    tok_attrs_free(&y);
}

/* RSA-1024: old signatures still verify; nothing new is made with it. */
static void test_rsa1024_verify_only(void **state)
{
    (void)state;
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT;
    tok_key *kpub, *kpriv;
    tok_op *op;
    const uint8_t msg[] = "signed long ago";
    uint8_t sig[128];
    size_t sl = sizeof(sig);
    CK_ULONG l = sizeof(sig);
    assert_non_null(pk);
    tok_attrs_set_ulong(&pub, CKA_CLASS, CKO_PUBLIC_KEY);
    tok_attrs_set_ulong(&pub, CKA_KEY_TYPE, CKK_RSA);
    tok_attrs_set_ulong(&priv, CKA_CLASS, CKO_PRIVATE_KEY);
    tok_attrs_set_ulong(&priv, CKA_KEY_TYPE, CKK_RSA);
    RV(CKR_OK, tok_pkey_export(pk, NULL, &pub, &priv));
    usage_all(&pub);
    usage_all(&priv);
    RV(CKR_OK, tok_key_from_attrs(&pub, &kpub));
    RV(CKR_OK, tok_key_from_attrs(&priv, &kpriv));
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit_ex(c, NULL, "SHA256", NULL, NULL, pk, NULL), 1);
    assert_int_equal(EVP_DigestSign(c, sig, &sl, msg, sizeof(msg)), 1);
    EVP_MD_CTX_free(c);
    CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
    RV(CKR_OK, tok_op_init(TOK_OP_VERIFY, &m, kpub, &pub, &op));
    RV(CKR_OK, tok_op_verify(op, msg, sizeof(msg), sig, sl));
    tok_op_free(op);
    RV(CKR_KEY_SIZE_RANGE, tok_op_init(TOK_OP_SIGN, &m, kpriv, &priv, &op));
    CK_MECHANISM r = {CKM_RSA_PKCS, NULL, 0};
    RV(CKR_KEY_SIZE_RANGE, tok_op_init(TOK_OP_ENCRYPT, &r, kpub, &pub, &op));
    (void)l;
    tok_key_unref(kpub);
    tok_key_unref(kpriv);
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);
    EVP_PKEY_free(pk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mech_table), cmocka_unit_test(test_digest_and_hmac_kat),
        cmocka_unit_test(test_keygen_secret), cmocka_unit_test(test_ec),
        cmocka_unit_test(test_rsa), cmocka_unit_test(test_aes),
        cmocka_unit_test(test_digests_hmac_cmac), cmocka_unit_test(test_p521_and_rsa_pss_oaep),
        cmocka_unit_test(test_eddsa), cmocka_unit_test(test_rsa1024_verify_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
