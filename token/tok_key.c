/* p11mk token layer: keys. Object attributes are parsed once into a tok_key
 * (an EVP_PKEY for RSA and EC, the raw bytes for secret keys), which is
 * immutable, reference counted and cached by the token context. */
#include "tok_crypto.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/param_build.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

static const uint8_t oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
static const uint8_t oid_p521[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
static const uint8_t oid_k256[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
static const uint8_t oid_ed448[] = {0x06, 0x03, 0x2b, 0x65, 0x71};
static const uint8_t oid_x25519[] = {0x06, 0x03, 0x2b, 0x65, 0x6e};
static const uint8_t oid_x448[] = {0x06, 0x03, 0x2b, 0x65, 0x6f};

static const tok_curve curves[] = {
    {"prime256v1", oid_p256, sizeof(oid_p256), "prime256v1", 32, TOK_CURVE_WEIERSTRASS, NULL},
    {"secp384r1", oid_p384, sizeof(oid_p384), "secp384r1", 48, TOK_CURVE_WEIERSTRASS, NULL},
    {"secp521r1", oid_p521, sizeof(oid_p521), "secp521r1", 66, TOK_CURVE_WEIERSTRASS, NULL},
    {"secp256k1", oid_k256, sizeof(oid_k256), "secp256k1", 32, TOK_CURVE_WEIERSTRASS, NULL},
    {"ED25519", oid_ed25519, sizeof(oid_ed25519), "edwards25519", 32, TOK_CURVE_EDWARDS, "1.3.101.112"},
    {"ED448", oid_ed448, sizeof(oid_ed448), "edwards448", 57, TOK_CURVE_EDWARDS, "1.3.101.113"},
    {"X25519", oid_x25519, sizeof(oid_x25519), "curve25519", 32, TOK_CURVE_MONTGOMERY, "1.3.101.110"},
    {"X448", oid_x448, sizeof(oid_x448), "curve448", 56, TOK_CURVE_MONTGOMERY, "1.3.101.111"},
};

const tok_curve *tok_curve_from_params(const uint8_t *p, size_t len)
{
    if (!p)
        return NULL;
    for (size_t i = 0; i < sizeof(curves) / sizeof(curves[0]); i++) {
        const tok_curve *c = &curves[i];
        size_t al = strlen(c->alias);
        if (len == c->oid_len && memcmp(p, c->oid, len) == 0)
            return c;
        /* PrintableString "prime256v1" etc. (PKCS#11 allows the curve name) */
        if (len == al + 2 && p[0] == 0x13 && p[1] == al && memcmp(p + 2, c->alias, al) == 0)
            return c;
    }
    return NULL;
}

const tok_curve *tok_curve_from_name(const char *name)
{
    for (size_t i = 0; name && i < sizeof(curves) / sizeof(curves[0]); i++)
        if (strcmp(curves[i].name, name) == 0)
            return &curves[i];
    return NULL;
}

const uint8_t *tok_ec_point_raw(const uint8_t *p, size_t len, const tok_curve *c, size_t *rawlen)
{
    bool ed = c->kind != TOK_CURVE_WEIERSTRASS; /* Edwards and Montgomery: raw public keys */
    size_t want = ed ? c->field_bytes : 2 * c->field_bytes + 1;
    if (!p)
        return NULL;
    if (ed && len == want) { /* raw public key */
        *rawlen = len;
        return p;
    }
    if (!ed && len == want && p[0] == 0x04) { /* raw uncompressed point */
        *rawlen = len;
        return p;
    }
    /* DER OCTET STRING: 04 len [04 X Y]; lengths here are < 256 */
    if (len >= 2 && p[0] == 0x04) {
        size_t hdr = 2, l = p[1];
        if (p[1] == 0x81 && len >= 3) {
            l = p[2];
            hdr = 3;
        } else if (p[1] & 0x80) {
            return NULL;
        }
        if (hdr + l == len && l == want && (ed || p[hdr] == 0x04)) {
            *rawlen = l;
            return p + hdr;
        }
    }
    return NULL;
}

static int der_octet_string(const uint8_t *raw, size_t rawlen, uint8_t *out, size_t *outlen)
{
    size_t hdr = rawlen < 128 ? 2 : 3;
    if (rawlen > 255)
        return -1;
    out[0] = 0x04;
    if (hdr == 2) {
        out[1] = (uint8_t)rawlen;
    } else {
        out[1] = 0x81;
        out[2] = (uint8_t)rawlen;
    }
    memcpy(out + hdr, raw, rawlen);
    *outlen = hdr + rawlen;
    return 0;
}

int tok_pkey_spki(EVP_PKEY *pkey, uint8_t **out, size_t *len)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pkey, &der);
    if (n <= 0)
        return -1;
    *out = der;
    *len = (size_t)n;
    return 0;
}

int tok_pkey_bn_attr(EVP_PKEY *pkey, const char *param, tok_attrs *a, CK_ATTRIBUTE_TYPE t, size_t pad)
{
    BIGNUM *bn = NULL;
    uint8_t *buf;
    int n, rc = -1;

    if (!EVP_PKEY_get_bn_param(pkey, param, &bn))
        return -1;
    n = pad ? (int)pad : BN_num_bytes(bn);
    buf = OPENSSL_malloc(n ? (size_t)n : 1);
    if (buf && BN_bn2binpad(bn, buf, n) == n)
        rc = tok_attrs_set(a, t, buf, (CK_ULONG)n);
    if (buf)
        OPENSSL_clear_free(buf, (size_t)n);
    BN_clear_free(bn);
    return rc;
}

CK_RV tok_pkey_export(EVP_PKEY *pkey, const tok_curve *curve, tok_attrs *pub, tok_attrs *priv)
{
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    int rc = 0;

    if (tok_pkey_spki(pkey, &spki, &spki_len) != 0)
        return CKR_FUNCTION_FAILED;
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        BIGNUM *n = NULL;
        CK_ULONG bits = 0;
        if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n))
            bits = (CK_ULONG)BN_num_bits(n);
        BN_free(n);
        tok_attrs *sets[2] = {pub, priv};
        for (int i = 0; i < 2 && rc == 0; i++) {
            if (!sets[i])
                continue;
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_N, sets[i], CKA_MODULUS, 0);
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_E, sets[i], CKA_PUBLIC_EXPONENT, 0);
            rc |= tok_attrs_set(sets[i], CKA_PUBLIC_KEY_INFO, spki, spki_len);
        }
        if (pub && rc == 0)
            rc |= tok_attrs_set_ulong(pub, CKA_MODULUS_BITS, bits);
        if (priv && rc == 0) {
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_D, priv, CKA_PRIVATE_EXPONENT, 0);
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1, priv, CKA_PRIME_1, 0);
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_FACTOR2, priv, CKA_PRIME_2, 0);
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT1, priv, CKA_EXPONENT_1, 0);
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT2, priv, CKA_EXPONENT_2, 0);
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, priv, CKA_COEFFICIENT, 0);
        }
    } else if (curve && curve->kind != TOK_CURVE_WEIERSTRASS) {
        uint8_t raw[64], der[80];
        size_t rl = 0, dlen = 0;
        if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, raw, sizeof(raw), &rl) ||
            der_octet_string(raw, rl, der, &dlen) != 0) {
            OPENSSL_free(spki);
            return CKR_FUNCTION_FAILED;
        }
        tok_attrs *sets[2] = {pub, priv};
        for (int i = 0; i < 2 && rc == 0; i++) {
            if (!sets[i])
                continue;
            rc |= tok_attrs_set(sets[i], CKA_EC_PARAMS, curve->oid, curve->oid_len);
            rc |= tok_attrs_set(sets[i], CKA_EC_POINT, der, dlen);
            rc |= tok_attrs_set(sets[i], CKA_PUBLIC_KEY_INFO, spki, spki_len);
        }
        if (priv && rc == 0) {
            uint8_t sk[64];
            size_t sl = 0;
            if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY, sk, sizeof(sk), &sl))
                rc |= tok_attrs_set(priv, CKA_VALUE, sk, sl);
            else
                rc = -1;
            OPENSSL_cleanse(sk, sizeof(sk));
        }
    } else {
        uint8_t point[256], der[260];
        size_t plen = 0, dlen = 0;
        if (!curve || !EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point), &plen) ||
            der_octet_string(point, plen, der, &dlen) != 0) {
            OPENSSL_free(spki);
            return CKR_FUNCTION_FAILED;
        }
        tok_attrs *sets[2] = {pub, priv};
        for (int i = 0; i < 2 && rc == 0; i++) {
            if (!sets[i])
                continue;
            rc |= tok_attrs_set(sets[i], CKA_EC_PARAMS, curve->oid, curve->oid_len);
            rc |= tok_attrs_set(sets[i], CKA_EC_POINT, der, dlen);
            rc |= tok_attrs_set(sets[i], CKA_PUBLIC_KEY_INFO, spki, spki_len);
        }
        if (priv && rc == 0)
            rc |= tok_pkey_bn_attr(pkey, OSSL_PKEY_PARAM_PRIV_KEY, priv, CKA_VALUE, curve->field_bytes);
    }
    OPENSSL_free(spki);
    return rc == 0 ? CKR_OK : CKR_HOST_MEMORY;
}

int tok_ec_complete_point(tok_attrs *obj)
{
    const tok_attr *p = tok_attrs_find(obj, CKA_EC_PARAMS), *v = tok_attrs_find(obj, CKA_VALUE);
    const tok_curve *c = p ? tok_curve_from_params(p->val, p->len) : NULL;
    EC_GROUP *g = NULL;
    EC_POINT *pt = NULL;
    BIGNUM *d = NULL;
    uint8_t raw[256], der[260];
    size_t rawlen = 0, derlen = 0;
    int rc = -1;

    if (!c || !v || !v->len)
        return -1;
    g = EC_GROUP_new_by_curve_name_ex(ks_libctx(), NULL, OBJ_sn2nid(c->name));
    pt = g ? EC_POINT_new(g) : NULL;
    d = BN_bin2bn(v->val, (int)v->len, NULL);
    if (pt && d && !BN_is_zero(d) && BN_cmp(d, EC_GROUP_get0_order(g)) < 0 &&
        EC_POINT_mul(g, pt, d, NULL, NULL, NULL) == 1 &&
        (rawlen = EC_POINT_point2oct(g, pt, POINT_CONVERSION_UNCOMPRESSED, raw, sizeof(raw), NULL)) > 0 &&
        der_octet_string(raw, rawlen, der, &derlen) == 0)
        rc = tok_attrs_set(obj, CKA_EC_POINT, der, derlen);
    BN_clear_free(d);
    EC_POINT_free(pt);
    EC_GROUP_free(g);
    return rc;
}

/* ---- building keys from attributes --------------------------------------- */

static int push_bn(OSSL_PARAM_BLD *bld, const char *name, const tok_attrs *a, CK_ATTRIBUTE_TYPE t, BIGNUM **keep,
                   bool required)
{
    const tok_attr *at = tok_attrs_find(a, t);
    if (!at || !at->len)
        return required ? -1 : 0;
    /* Private parts in secure big numbers: OSSL_PARAM_BLD then places them
     * in its secure block, which is cleansed when freed. (The EC key keeps
     * its private number in OpenSSL's secure heap, ks_secure_heap_init;
     * OpenSSL 3.0's RSA import copies into ordinary big numbers.) */
    if (tok_attr_is_secret(CKO_PRIVATE_KEY, t) && !(*keep = BN_secure_new()))
        return -1;
    BIGNUM *bn = BN_bin2bn(at->val, (int)at->len, *keep);
    if (!bn)
        return -1;
    *keep = bn;
    return OSSL_PARAM_BLD_push_BN(bld, name, *keep) ? 0 : -1;
}

static EVP_PKEY *pkey_from_params(const char *alg, int selection, OSSL_PARAM *params)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(ks_libctx(), alg, NULL);
    EVP_PKEY *pkey = NULL;
    if (ctx && EVP_PKEY_fromdata_init(ctx) == 1)
        EVP_PKEY_fromdata(ctx, &pkey, selection, params);
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

static EVP_PKEY *rsa_from_attrs(const tok_attrs *a, bool priv)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    BIGNUM *bn[8] = {0};
    EVP_PKEY *pkey = NULL;
    int rc;

    if (!bld)
        return NULL;
    rc = push_bn(bld, OSSL_PKEY_PARAM_RSA_N, a, CKA_MODULUS, &bn[0], true);
    rc |= push_bn(bld, OSSL_PKEY_PARAM_RSA_E, a, CKA_PUBLIC_EXPONENT, &bn[1], true);
    if (priv) {
        rc |= push_bn(bld, OSSL_PKEY_PARAM_RSA_D, a, CKA_PRIVATE_EXPONENT, &bn[2], true);
        /* CRT components are optional, but all or none. */
        if (tok_attrs_find(a, CKA_PRIME_1) && tok_attrs_find(a, CKA_PRIME_2) && tok_attrs_find(a, CKA_EXPONENT_1) &&
            tok_attrs_find(a, CKA_EXPONENT_2) && tok_attrs_find(a, CKA_COEFFICIENT)) {
            rc |= push_bn(bld, OSSL_PKEY_PARAM_RSA_FACTOR1, a, CKA_PRIME_1, &bn[3], true);
            rc |= push_bn(bld, OSSL_PKEY_PARAM_RSA_FACTOR2, a, CKA_PRIME_2, &bn[4], true);
            rc |= push_bn(bld, OSSL_PKEY_PARAM_RSA_EXPONENT1, a, CKA_EXPONENT_1, &bn[5], true);
            rc |= push_bn(bld, OSSL_PKEY_PARAM_RSA_EXPONENT2, a, CKA_EXPONENT_2, &bn[6], true);
            rc |= push_bn(bld, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, a, CKA_COEFFICIENT, &bn[7], true);
        }
    }
    if (rc == 0 && (params = OSSL_PARAM_BLD_to_param(bld)))
        pkey = pkey_from_params(TOK_KEYTYPE_RSA, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    for (int i = 0; i < 8; i++)
        BN_clear_free(bn[i]);
    return pkey;
}

static EVP_PKEY *ec_from_attrs(const tok_attrs *a, const tok_curve *c, bool priv)
{
    const tok_attr *pt = tok_attrs_find(a, CKA_EC_POINT);
    const uint8_t *raw = NULL;
    size_t rawlen = 0;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    BIGNUM *d = NULL;
    EVP_PKEY *pkey = NULL;
    int ok;

    if (!bld)
        return NULL;
    if (pt)
        raw = tok_ec_point_raw(pt->val, pt->len, c, &rawlen);
    ok = OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, c->name, 0);
    if (raw)
        ok = ok && OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, raw, rawlen);
    else if (!priv)
        ok = 0;
    if (priv)
        ok = ok && push_bn(bld, OSSL_PKEY_PARAM_PRIV_KEY, a, CKA_VALUE, &d, true) == 0;
    if (ok && (params = OSSL_PARAM_BLD_to_param(bld)))
        pkey = pkey_from_params(TOK_KEYTYPE_EC, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_clear_free(d);
    return pkey;
}

static EVP_PKEY *ed_from_attrs(const tok_attrs *a, const tok_curve *c, bool priv)
{
    if (priv) {
        const tok_attr *v = tok_attrs_find(a, CKA_VALUE);
        if (!v || v->len != c->field_bytes)
            return NULL;
        return EVP_PKEY_new_raw_private_key_ex(ks_libctx(), c->name, NULL, v->val, v->len);
    }
    const tok_attr *pt = tok_attrs_find(a, CKA_EC_POINT);
    size_t rl = 0;
    const uint8_t *raw = pt ? tok_ec_point_raw(pt->val, pt->len, c, &rl) : NULL;
    return raw ? EVP_PKEY_new_raw_public_key_ex(ks_libctx(), c->name, NULL, raw, rl) : NULL;
}

CK_RV tok_key_from_attrs(const tok_attrs *obj, tok_key **out)
{
    CK_ULONG cls, kt;
    tok_key *k;

    if (!obj || !out)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    if (!tok_attrs_get_ulong(obj, CKA_CLASS, &cls) || !tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt) ||
        (cls != CKO_SECRET_KEY && cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY))
        return CKR_KEY_TYPE_INCONSISTENT;
    k = calloc(1, sizeof(*k));
    if (!k)
        return CKR_HOST_MEMORY;
    atomic_init(&k->refs, 1);
    k->cls = cls;
    k->ktype = kt;
    if (cls == CKO_SECRET_KEY) {
        const tok_attr *v = tok_attrs_find(obj, CKA_VALUE);
        if (!v || !v->len)
            goto bad;
        if (!(k->secret = ks_secmem_alloc(v->len))) {
            tok_key_unref(k);
            return CKR_DEVICE_MEMORY; /* the memory kept for secrets is exhausted */
        }
        memcpy(k->secret, v->val, v->len);
        k->secret_len = k->size_bytes = v->len;
    } else if (kt == CKK_RSA) {
        k->pkey = rsa_from_attrs(obj, cls == CKO_PRIVATE_KEY);
        if (!k->pkey)
            goto bad;
        k->size_bytes = (size_t)EVP_PKEY_get_size(k->pkey);
    } else if (kt == CKK_EC || kt == CKK_EC_EDWARDS || kt == CKK_EC_MONTGOMERY) {
        const tok_attr *p = tok_attrs_find(obj, CKA_EC_PARAMS);
        k->curve = p ? tok_curve_from_params(p->val, p->len) : NULL;
        int want = kt == CKK_EC ? TOK_CURVE_WEIERSTRASS : kt == CKK_EC_EDWARDS ? TOK_CURVE_EDWARDS : TOK_CURVE_MONTGOMERY;
        if (!k->curve || k->curve->kind != want)
            goto bad;
        if (kt != CKK_EC)
            k->pkey = ed_from_attrs(obj, k->curve, cls == CKO_PRIVATE_KEY);
        else
            k->pkey = ec_from_attrs(obj, k->curve, cls == CKO_PRIVATE_KEY);
        if (!k->pkey)
            goto bad;
        k->size_bytes = k->curve->field_bytes;
    } else {
        tok_key_unref(k);
        return CKR_KEY_TYPE_INCONSISTENT;
    }
    if (tok_attrs_copy(&k->attrs, obj) != 0) {
        tok_key_unref(k);
        return CKR_HOST_MEMORY;
    }
    tok_attrs_drop_secrets(&k->attrs);
    k->use = tok_key_use_of(&k->attrs);
    *out = k;
    return CKR_OK;
bad:
    tok_key_unref(k);
    return tok_secmem_rv(CKR_GENERAL_ERROR);
}

const tok_attrs *tok_key_attrs(const tok_key *k) { return &k->attrs; }

bool tok_key_private(const tok_key *k) { return k->use.private_obj; }

tok_key_use tok_key_use_of(const tok_attrs *a)
{
    static const struct {
        CK_ATTRIBUTE_TYPE t;
        unsigned bit;
    } usage[] = {
        {CKA_ENCRYPT, TOK_USE_ENCRYPT}, {CKA_DECRYPT, TOK_USE_DECRYPT},
        {CKA_SIGN, TOK_USE_SIGN},       {CKA_VERIFY, TOK_USE_VERIFY},
        {CKA_SIGN_RECOVER, TOK_USE_SIGN_RECOVER}, {CKA_VERIFY_RECOVER, TOK_USE_VERIFY_RECOVER},
    };
    tok_key_use u = {0, tok_obj_is_private(a), tok_attrs_get_bool(a, CKA_ALWAYS_AUTHENTICATE, false),
                     tok_attrs_find(a, CKA_ALLOWED_MECHANISMS)};

    for (size_t i = 0; i < sizeof(usage) / sizeof(usage[0]); i++)
        if (tok_attrs_get_bool(a, usage[i].t, false))
            u.may |= usage[i].bit;
    return u;
}

tok_key *tok_key_ref(tok_key *k)
{
    if (k)
        atomic_fetch_add(&k->refs, 1);
    return k;
}

void tok_key_unref(tok_key *k)
{
    if (!k || atomic_fetch_sub(&k->refs, 1) != 1)
        return;
    EVP_PKEY_free(k->pkey);
    ks_secmem_free(k->secret);
    tok_attrs_free(&k->attrs);
    OPENSSL_cleanse(k, sizeof(*k));
    free(k);
}
