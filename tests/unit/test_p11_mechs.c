/* Unit tests of the pkcs11 layer (test_p11.h): every listed mechanism
 * through the same size-query, short-buffer, inverse and corruption checks;
 * Montgomery ECDH, HKDF and PBKDF2. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/unit/test_p11.h"

#include <sys/mman.h>

/* Every mechanism the token lists, driven through the module the same way:
 * size query, short buffer (the operation stays), the real call, the
 * inverse operation, a corrupted signature or ciphertext, a wrong key type. */
typedef struct {
    CK_OBJECT_HANDLE aes, des3, chacha, hmac, rsa_pub, rsa_priv, ec_pub, ec_priv, ed_pub, ed_priv;
} key_set;

static CK_MECHANISM_TYPE pss_hash(CK_MECHANISM_TYPE m)
{
    switch (m) {
    case CKM_SHA1_RSA_PKCS_PSS: return CKM_SHA_1;
    case CKM_SHA224_RSA_PKCS_PSS: return CKM_SHA224;
    case CKM_SHA384_RSA_PKCS_PSS: return CKM_SHA384;
    case CKM_SHA512_RSA_PKCS_PSS: return CKM_SHA512;
    default: return CKM_SHA256;
    }
}

static void sign_keys(const key_set *k, CK_MECHANISM_TYPE m, CK_OBJECT_HANDLE *sk, CK_OBJECT_HANDLE *vk,
                      CK_OBJECT_HANDLE *wrong)
{
    if (m == CKM_AES_CMAC || m == CKM_AES_CMAC_GENERAL) {
        *sk = *vk = k->aes;
        *wrong = k->ec_priv;
    } else if (m == CKM_DES3_CMAC || m == CKM_DES3_CMAC_GENERAL) {
        *sk = *vk = k->des3;
        *wrong = k->aes;
    } else if (m == CKM_EDDSA) {
        *sk = k->ed_priv, *vk = k->ed_pub, *wrong = k->ec_priv;
    } else if (m >= CKM_ECDSA && m <= CKM_ECDSA_SHA512) {
        *sk = k->ec_priv, *vk = k->ec_pub, *wrong = k->rsa_priv;
    } else if (m == CKM_SHA_1_HMAC || m == CKM_SHA224_HMAC || m == CKM_SHA256_HMAC || m == CKM_SHA384_HMAC ||
               m == CKM_SHA512_HMAC || (m >= 0x2B1 && m <= 0x2D1) || m == CKM_SHA_1_HMAC_GENERAL ||
               m == CKM_SHA224_HMAC_GENERAL || m == CKM_SHA256_HMAC_GENERAL || m == CKM_SHA384_HMAC_GENERAL ||
               m == CKM_SHA512_HMAC_GENERAL) {
        *sk = *vk = k->hmac;
        *wrong = k->aes;
    } else {
        *sk = k->rsa_priv, *vk = k->rsa_pub, *wrong = k->ec_priv;
    }
}

static void test_mechanism_matrix(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("matrix");
    CK_SESSION_HANDLE h = user_session(s, true);
    key_set k;
    CK_MECHANISM_TYPE mechs[128];
    CK_ULONG nm = 128;
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const CK_BYTE ed[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
    CK_ULONG bits = 2048, len32 = 32;
    CK_MECHANISM g;

    k.aes = make_aes(h, "m-aes", false);
    CK_ATTRIBUTE su[] = {{CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE sa[] = {{CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_VALUE_LEN, &len32, sizeof(len32)}};
    CK_ATTRIBUTE_PTR aset = su;
    (void)aset;
    CK(f->C_SetAttributeValue(h, k.aes, su, 2));
    g = (CK_MECHANISM){CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK(f->C_GenerateKey(h, &g, sa, 3, &k.hmac));
    CK_ATTRIBUTE du[] = {{CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    g = (CK_MECHANISM){CKM_DES3_KEY_GEN, NULL, 0};
    CK(f->C_GenerateKey(h, &g, du, 4, &k.des3));
    g = (CK_MECHANISM){TEST_CKM_CHACHA20_KEY_GEN, NULL, 0};
    CK(f->C_GenerateKey(h, &g, du + 2, 2, &k.chacha));
    CK_ATTRIBUTE rp[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_VERIFY, &yes, 1}, {CKA_ENCRYPT, &yes, 1}};
    CK_ATTRIBUTE rk[] = {{CKA_SIGN, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    g = (CK_MECHANISM){CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK(f->C_GenerateKeyPair(h, &g, rp, 3, rk, 2, &k.rsa_pub, &k.rsa_priv));
    CK_ATTRIBUTE ep[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE ek[] = {{CKA_SIGN, &yes, 1}};
    g = (CK_MECHANISM){CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK(f->C_GenerateKeyPair(h, &g, ep, 2, ek, 1, &k.ec_pub, &k.ec_priv));
    CK_ATTRIBUTE dp[] = {{CKA_EC_PARAMS, (void *)ed, sizeof(ed)}, {CKA_VERIFY, &yes, 1}};
    g = (CK_MECHANISM){CKM_EC_EDWARDS_KEY_PAIR_GEN, NULL, 0};
    CK(f->C_GenerateKeyPair(h, &g, dp, 2, ek, 1, &k.ed_pub, &k.ed_priv));

    CK(f->C_GetMechanismList(s, mechs, &nm));
    int signed_n = 0, crypted_n = 0, digested_n = 0;
    for (CK_ULONG i = 0; i < nm; i++) {
        CK_MECHANISM_INFO mi;
        CK_MECHANISM_TYPE mt = mechs[i];
        CK(f->C_GetMechanismInfo(s, mt, &mi));
        CK_BYTE data[256], out[1024], back[1024];
        CK_ULONG dlen = 32, olen, blen;
        memset(data, 0x5a, sizeof(data));
        CK_RSA_PKCS_PSS_PARAMS pss = {pss_hash(mt), CKG_MGF1_SHA256, 20};
        CK_MECHANISM m = {mt, NULL, 0};
        CK_ULONG mac_len = mt == CKM_DES3_CMAC_GENERAL ? 6 : 10; /* below the MAC's full length */
        if (mt == CKM_AES_CMAC_GENERAL || mt == CKM_SHA_1_HMAC_GENERAL || mt == CKM_SHA224_HMAC_GENERAL ||
            mt == CKM_SHA256_HMAC_GENERAL || mt == CKM_SHA384_HMAC_GENERAL || mt == CKM_SHA512_HMAC_GENERAL ||
            mt == CKM_DES3_CMAC_GENERAL) {
            m.pParameter = &mac_len; /* CK_MAC_GENERAL_PARAMS: the MAC's length */
            m.ulParameterLen = sizeof(mac_len);
        }
        if (mt == CKM_RSA_PKCS_PSS || (mt >= CKM_SHA256_RSA_PKCS_PSS && mt <= CKM_SHA512_RSA_PKCS_PSS) ||
            mt == CKM_SHA1_RSA_PKCS_PSS || mt == CKM_SHA224_RSA_PKCS_PSS) {
            m.pParameter = &pss;
            m.ulParameterLen = sizeof(pss);
        }

        if (mi.flags & CKF_SIGN) {
            CK_OBJECT_HANDLE sk, vk, wrong;
            sign_keys(&k, mt, &sk, &vk, &wrong);
            if (mt == CKM_RSA_X_509)
                data[0] = 0; /* below the modulus */
            CK_RV irv = f->C_SignInit(h, &m, sk);
            if (irv != CKR_OK)
                fail_msg("C_SignInit with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)irv);
            olen = 0;
            CK(f->C_Sign(h, data, dlen, NULL, &olen));
            if (m.pParameter == &mac_len)
                assert_int_equal(olen, mac_len);
            CK_ULONG need = olen;
            olen = need - 1;
            RV(CKR_BUFFER_TOO_SMALL, f->C_Sign(h, data, dlen, out, &olen));
            olen = sizeof(out);
            CK_RV rv = f->C_Sign(h, data, dlen, out, &olen);
            if (rv != CKR_OK)
                fail_msg("C_Sign with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            CK(f->C_VerifyInit(h, &m, vk));
            rv = f->C_Verify(h, data, dlen, out, olen);
            if (rv != CKR_OK)
                fail_msg("C_Verify with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            out[olen / 2] ^= 0x40;
            CK(f->C_VerifyInit(h, &m, vk));
            rv = f->C_Verify(h, data, dlen, out, olen);
            if (rv != CKR_SIGNATURE_INVALID)
                fail_msg("corrupted signature, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            rv = f->C_SignInit(h, &m, wrong);
            if (rv != CKR_KEY_TYPE_INCONSISTENT)
                fail_msg("wrong key type, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            signed_n++;
        }
        if (mi.flags & CKF_ENCRYPT) {
            CK_BYTE iv[16] = {3};
            CK_AES_CTR_PARAMS ctr = {128, {9}};
            CK_GCM_PARAMS gcm = {iv, 12, 96, NULL, 0, 128};
            test_ccm_params ccm = {dlen, iv, 12, NULL, 0, 16};
            test_chacha_params chacha = {iv, 12, NULL, 0};
            CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
            CK_OBJECT_HANDLE ek2 = k.aes, dk = k.aes, wrong = k.rsa_pub;
            if (mt == CKM_AES_CBC || mt == CKM_AES_CBC_PAD)
                m.pParameter = iv, m.ulParameterLen = 16;
            else if (mt == CKM_DES3_CBC || mt == CKM_DES3_CBC_PAD)
                m.pParameter = iv, m.ulParameterLen = 8;
            else if (mt == CKM_AES_CTR)
                m.pParameter = &ctr, m.ulParameterLen = sizeof(ctr);
            else if (mt == CKM_AES_GCM)
                m.pParameter = &gcm, m.ulParameterLen = sizeof(gcm);
            else if (mt == CKM_AES_CCM)
                m.pParameter = &ccm, m.ulParameterLen = sizeof(ccm);
            else if (mt == TEST_CKM_CHACHA20_POLY1305)
                m.pParameter = &chacha, m.ulParameterLen = sizeof(chacha);
            else if (mt == CKM_RSA_PKCS_OAEP)
                m.pParameter = &oaep, m.ulParameterLen = sizeof(oaep);
            if (mt == CKM_DES3_ECB || mt == CKM_DES3_CBC || mt == CKM_DES3_CBC_PAD)
                ek2 = dk = k.des3, wrong = k.aes;
            if (mt == TEST_CKM_CHACHA20_POLY1305)
                ek2 = dk = k.chacha, wrong = k.aes;
            if (mt == CKM_RSA_PKCS || mt == CKM_RSA_X_509 || mt == CKM_RSA_PKCS_OAEP) {
                ek2 = k.rsa_pub, dk = k.rsa_priv, wrong = k.aes;
                if (mt == CKM_RSA_X_509) {
                    dlen = 256;
                    data[0] = 0;
                }
            }
            CK(f->C_EncryptInit(h, &m, ek2));
            olen = 0;
            CK(f->C_Encrypt(h, data, dlen, NULL, &olen));
            CK_ULONG need = olen;
            olen = need - 1;
            RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, data, dlen, out, &olen));
            olen = sizeof(out);
            CK(f->C_Encrypt(h, data, dlen, out, &olen));
            CK(f->C_DecryptInit(h, &m, dk));
            blen = sizeof(back);
            CK_RV rv = f->C_Decrypt(h, out, olen, back, &blen);
            if (rv != CKR_OK || blen != dlen || memcmp(back, data, dlen) != 0)
                fail_msg("round trip with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            if (mt == CKM_AES_GCM || mt == CKM_AES_CCM || mt == TEST_CKM_CHACHA20_POLY1305 || mt == CKM_RSA_PKCS_OAEP ||
                mt == CKM_RSA_PKCS) {
                out[olen - 1] ^= 1;
                CK(f->C_DecryptInit(h, &m, dk));
                blen = sizeof(back);
                rv = f->C_Decrypt(h, out, olen, back, &blen);
                if (rv != CKR_ENCRYPTED_DATA_INVALID)
                    fail_msg("tampered ciphertext, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            }
            rv = f->C_EncryptInit(h, &m, wrong);
            if (rv != CKR_KEY_TYPE_INCONSISTENT)
                fail_msg("wrong key type for encryption, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            crypted_n++;
        }
        if (mi.flags & CKF_DIGEST) {
            CK_BYTE d1[64], d2[64];
            CK_ULONG l1 = sizeof(d1), l2 = sizeof(d2);
            CK(f->C_DigestInit(h, &m));
            CK(f->C_Digest(h, data, 100, d1, &l1));
            CK(f->C_DigestInit(h, &m));
            CK(f->C_DigestUpdate(h, data, 37));
            CK(f->C_DigestUpdate(h, data + 37, 63));
            CK(f->C_DigestFinal(h, d2, &l2));
            assert_int_equal(l1, l2);
            assert_memory_equal(d1, d2, l1);
            digested_n++;
        }
    }
    assert_true(signed_n >= 25);
    assert_true(crypted_n >= 10);
    assert_true(digested_n >= 8);
    CK(f->C_CloseAllSessions(s));
}

/* X25519 and X448 (Montgomery) key pairs, and ECDH with them. */
static void test_montgomery_derive(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("x25519");
    CK_SESSION_HANDLE h = user_session(s, true);
    static const CK_BYTE x25519[] = {0x06, 0x03, 0x2b, 0x65, 0x6e};
    static const CK_BYTE x448_name[] = {0x13, 0x08, 'c', 'u', 'r', 'v', 'e', '4', '4', '8'};
    struct {
        const CK_BYTE *p;
        CK_ULONG l;
        CK_ULONG rawlen;
    } curves[] = {{x25519, sizeof(x25519), 32}, {x448_name, sizeof(x448_name), 56}};
    CK_MECHANISM gen = {0x1056 /* CKM_EC_MONTGOMERY_KEY_PAIR_GEN */, NULL, 0};
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG vlen = 32;
    CK_ATTRIBUTE dt[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    for (int c = 0; c < 2; c++) {
        CK_OBJECT_HANDLE pa, ka, pb, kb, da, db;
        CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)curves[c].p, curves[c].l}};
        CK_ATTRIBUTE kt[] = {{CKA_DERIVE, &yes, 1}};
        CK(f->C_GenerateKeyPair(h, &gen, pt, 1, kt, 1, &pa, &ka));
        CK(f->C_GenerateKeyPair(h, &gen, pt, 1, kt, 1, &pb, &kb));
        CK_BYTE qa[80], qb[80];
        CK_ATTRIBUTE ga[] = {{CKA_EC_POINT, qa, sizeof(qa)}}, gb[] = {{CKA_EC_POINT, qb, sizeof(qb)}};
        CK(f->C_GetAttributeValue(h, pa, ga, 1));
        CK(f->C_GetAttributeValue(h, pb, gb, 1));
        assert_int_equal(ga[0].ulValueLen, curves[c].rawlen + 2); /* DER OCTET STRING */
        /* One side gives the DER point, the other the raw one: both are accepted. */
        CK_ECDH1_DERIVE_PARAMS pa_ = {CKD_SHA256_KDF, 0, NULL, gb[0].ulValueLen, qb};
        CK_ECDH1_DERIVE_PARAMS pb_ = {CKD_SHA256_KDF, 0, NULL, curves[c].rawlen, qa + 2};
        CK_MECHANISM ma = {CKM_ECDH1_DERIVE, &pa_, sizeof(pa_)}, mb = {CKM_ECDH1_DERIVE, &pb_, sizeof(pb_)};
        CK(f->C_DeriveKey(h, &ma, ka, dt, 4, &da));
        CK(f->C_DeriveKey(h, &mb, kb, dt, 4, &db));
        same_aes(h, da, db);
        /* The Montgomery mechanism makes no Weierstrass or Edwards keys. */
        static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        CK_ATTRIBUTE bad[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}};
        CK_OBJECT_HANDLE x1, x2;
        RV(CKR_CURVE_NOT_SUPPORTED, f->C_GenerateKeyPair(h, &gen, bad, 1, kt, 1, &x1, &x2));
    }
    CK(f->C_CloseAllSessions(s));
}

/* HKDF (RFC 5869, test case 1) through C_DeriveKey. */
static void test_hkdf(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("hkdf");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_BYTE ikm[22], salt[13], info[10], okm[42];
    static const CK_BYTE want[] = {0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
                                   0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
                                   0xec, 0xc4, 0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65};
    test_hkdf_params p = test_rfc5869_case1(ikm, salt, info);
    CK_ATTRIBUTE bt[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &gen, sizeof(gen)},
                         {CKA_VALUE, ikm, sizeof(ikm)}, {CKA_DERIVE, &yes, 1}};
    CK_OBJECT_HANDLE base, out;
    CK(f->C_CreateObject(h, bt, 4, &base));
    CK_MECHANISM m = {TEST_CKM_HKDF_DERIVE, &p, sizeof(p)};
    CK_ULONG l = 42;
    CK_ATTRIBUTE dt[] = {{CKA_KEY_TYPE, &gen, sizeof(gen)}, {CKA_VALUE_LEN, &l, sizeof(l)},
                         {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK(f->C_DeriveKey(h, &m, base, dt, 4, &out));
    CK_ATTRIBUTE vt[] = {{CKA_VALUE, okm, sizeof(okm)}};
    CK(f->C_GetAttributeValue(h, out, vt, 1));
    assert_int_equal(vt[0].ulValueLen, 42);
    assert_memory_equal(okm, want, 42);
    /* A base key's CKA_DERIVE_TEMPLATE joins every derive template. */
    CK_ATTRIBUTE must[] = {{CKA_SENSITIVE, &yes, 1}};
    CK_ATTRIBUTE bt2[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &gen, sizeof(gen)}, {CKA_VALUE, ikm, sizeof(ikm)},
                          {CKA_DERIVE, &yes, 1}, {CKA_DERIVE_TEMPLATE, must, sizeof(must)}};
    CK_OBJECT_HANDLE base2;
    CK(f->C_CreateObject(h, bt2, 5, &base2));
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_DeriveKey(h, &m, base2, dt, 4, &out)); /* asks for SENSITIVE=FALSE */
    CK(f->C_DeriveKey(h, &m, base2, dt, 2, &out));
    CK_BBOOL sens = CK_FALSE;
    CK_ATTRIBUTE st[] = {{CKA_SENSITIVE, &sens, 1}};
    CK(f->C_GetAttributeValue(h, out, st, 1));
    assert_true(sens);
    RV(CKR_ATTRIBUTE_SENSITIVE, f->C_GetAttributeValue(h, out, vt, 1));
    p.prf = CKM_SHA256_RSA_PKCS; /* not a digest */
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &m, base, dt, 4, &out));
    p.prf = CKM_SHA256;
    p.bExtract = p.bExpand = CK_FALSE;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &m, base, dt, 4, &out));
    CK(f->C_CloseAllSessions(s));
}

/* PBKDF2 key generation (RFC 6070, test 2), with the length given either
 * way (v3.0 value, v2.40 pointer). */
static void test_pbkdf2(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("pbkdf2");
    CK_SESSION_HANDLE h = user_session(s, true);
    static const CK_BYTE want[] = {0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e,
                                   0xd9, 0x2a, 0xce, 0x1d, 0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57};
    CK_ULONG pwlen = 8;
    test_pbkd2_params p = test_rfc6070_case2();
    CK_MECHANISM m = {CKM_PKCS5_PBKD2, &p, sizeof(p)};
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_ULONG l = 20;
    CK_ATTRIBUTE t[] = {{CKA_KEY_TYPE, &gen, sizeof(gen)}, {CKA_VALUE_LEN, &l, sizeof(l)},
                        {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    for (int form = 0; form < 2; form++) {
        CK_OBJECT_HANDLE k;
        CK_BYTE v[20];
        p.passwordLen = form ? (CK_ULONG)(uintptr_t)&pwlen : 8;
        CK(f->C_GenerateKey(h, &m, t, 4, &k));
        CK_ATTRIBUTE vt[] = {{CKA_VALUE, v, sizeof(v)}};
        CK(f->C_GetAttributeValue(h, k, vt, 1));
        assert_memory_equal(v, want, 20);
    }
    CK_OBJECT_HANDLE k;
    /* v3.0 lengths past the 4096 bytes taken, which 2.40's pointer reading
     * once dereferenced (a crash): refused, whatever lies at that address. */
    static CK_BYTE longpw[70000];
    const CK_BYTE *pw = p.pPassword;
    p.pPassword = longpw;
    p.passwordLen = 4096;
    CK(f->C_GenerateKey(h, &m, t, 4, &k));
    const CK_ULONG too_long[] = {4097, 5000, 65535, 65537, 70000};
    for (size_t i = 0; i < sizeof(too_long) / sizeof(too_long[0]); i++) {
        p.passwordLen = too_long[i];
        RV(CKR_MECHANISM_PARAM_INVALID, f->C_GenerateKey(h, &m, t, 4, &k));
    }
    /* Nor one that is the address of a page that cannot be read (a guard
     * page): mapped, so only a read tells (a hostile review's SIGSEGV). */
    void *guard = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(guard != MAP_FAILED);
    p.passwordLen = (CK_ULONG)(uintptr_t)guard;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_GenerateKey(h, &m, t, 4, &k));
    munmap(guard, 4096);
    p.pPassword = (CK_BYTE *)pw;
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_GenerateKey(h, &m, t + 1, 3, &k)); /* the key type comes from the template */
    p.passwordLen = 8;
    p.iterations = 0;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_GenerateKey(h, &m, t, 4, &k));
    p.iterations = 2;
    p.prf = 2; /* GOST */
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_GenerateKey(h, &m, t, 4, &k));
    CK(f->C_CloseAllSessions(s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mechanism_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_montgomery_derive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hkdf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pbkdf2, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
