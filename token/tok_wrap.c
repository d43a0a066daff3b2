/* p11mk token layer: key wrapping, unwrapping and derivation.
 *
 * What is wrapped: the value of a secret key, or a private key as a DER
 * PKCS#8 PrivateKeyInfo. Wrapping mechanisms: AES key wrap (RFC 3394, the
 * input zero-padded to whole semiblocks), AES key wrap with padding
 * (RFC 5649), AES and triple DES ECB and CBC (secret keys, zero-padded to
 * whole blocks) and CBC with PKCS#7 padding, RSA OAEP and RSA PKCS#1 v1.5
 * (secret keys only). Derivation: ECDH with the null KDF or the ANSI X9.63
 * KDF, HKDF, SHA*_KEY_DERIVATION. */
#include "tok_crypto.h"
#include "token/tok_policy.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/encoder.h>
#include <openssl/kdf.h>
#include <openssl/rsa.h>

/* ---- the key material ------------------------------------------------------ */

/* The bytes to wrap: a secret key's value, or a private key's PKCS#8. */
static CK_RV wrap_input(const tok_attrs *target, uint8_t **out, size_t *len)
{
    CK_ULONG cls;
    tok_key *k = NULL;
    CK_RV rv;

    if (!tok_attrs_get_ulong(target, CKA_CLASS, &cls))
        return CKR_KEY_NOT_WRAPPABLE;
    if (cls == CKO_SECRET_KEY) {
        const tok_attr *v = tok_attrs_find(target, CKA_VALUE);
        if (!v || !v->len || !(*out = OPENSSL_memdup(v->val, v->len)))
            return CKR_KEY_NOT_WRAPPABLE;
        *len = v->len;
        return CKR_OK;
    }
    if (cls != CKO_PRIVATE_KEY)
        return CKR_KEY_NOT_WRAPPABLE;
    if ((rv = tok_key_from_attrs(target, &k)) != CKR_OK)
        return rv == CKR_KEY_TYPE_INCONSISTENT ? CKR_KEY_NOT_WRAPPABLE : rv;
    OSSL_ENCODER_CTX *e = OSSL_ENCODER_CTX_new_for_pkey(k->pkey, EVP_PKEY_KEYPAIR, "DER", "PrivateKeyInfo", NULL);
    unsigned char *der = NULL;
    size_t dl = 0;
    rv = e && OSSL_ENCODER_to_data(e, &der, &dl) == 1 ? CKR_OK : CKR_KEY_NOT_WRAPPABLE;
    OSSL_ENCODER_CTX_free(e);
    tok_key_unref(k);
    if (rv == CKR_OK) {
        *out = der;
        *len = dl;
    }
    return rv;
}

static const tok_curve *curve_of(EVP_PKEY *pkey)
{
    char name[64];
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof(name), NULL))
        return NULL;
    return tok_curve_from_name(name);
}

/* The length of the DER encoding at data (one SEQUENCE, definite length),
 * or 0 when it is not one or runs past len. */
static size_t der_seq_len(const uint8_t *data, size_t len)
{
    size_t hdr = 2, body;

    if (len < 2 || data[0] != 0x30)
        return 0;
    if (data[1] < 0x80) {
        body = data[1];
    } else {
        size_t nb = data[1] & 0x7f;
        if (nb == 0 || nb > 4 || len < 2 + nb)
            return 0;
        body = 0;
        for (size_t i = 0; i < nb; i++)
            body = body << 8 | data[2 + i];
        hdr += nb;
    }
    return body <= len - hdr ? hdr + body : 0;
}

/* Put unwrapped bytes into the new object built from the template.
 * padded: false for a mechanism that pads with zero bytes to whole blocks
 * (ECB, CBC, AES key wrap), whose output is whole blocks: a secret key is
 * then the first CKA_VALUE_LEN bytes when the template gives it, or as many
 * as its key type fixes (DES); a private key's encoding is followed by zero
 * bytes, which are ignored (PKCS#11 says so). min_keep: for AES key wrap,
 * the fewest bytes of n the template may keep (n - 7: no more than its
 * padding goes). */
static CK_RV unwrap_output(uint8_t *data, size_t len, bool padded, size_t min_keep, tok_attrs *obj)
{
    CK_ULONG cls, kt, want;
    if (!tok_attrs_get_ulong(obj, CKA_CLASS, &cls) || !tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt))
        return CKR_TEMPLATE_INCOMPLETE;
    if (cls == CKO_SECRET_KEY) {
        CK_ULONG fixed = tok_ktype_fixed_len(kt);
        bool given = tok_attrs_get_ulong(obj, CKA_VALUE_LEN, &want);
        if (!given)
            want = fixed;
        if (!padded && want && want < len) {
            if (want < min_keep)
                return CKR_TEMPLATE_INCONSISTENT;
            len = want;
        }
        if (len == 0)
            return CKR_WRAPPED_KEY_INVALID; /* a key of no bytes */
        if (!tok_secret_len_ok(kt, len))
            return CKR_WRAPPED_KEY_INVALID;
        if (given && want != len)
            return CKR_TEMPLATE_INCONSISTENT;
        return tok_secret_set(obj, data, len, false);
    }
    if (cls != CKO_PRIVATE_KEY)
        return CKR_TEMPLATE_INCONSISTENT;
    if (!padded) {
        size_t enc = der_seq_len(data, len);
        for (size_t i = enc; enc && i < len; i++)
            if (data[i])
                enc = 0;
        if (!enc)
            return CKR_WRAPPED_KEY_INVALID;
        len = enc;
    }
    EVP_PKEY *pkey = NULL;
    OSSL_DECODER_CTX *d = OSSL_DECODER_CTX_new_for_pkey(&pkey, "DER", "PrivateKeyInfo", NULL, EVP_PKEY_KEYPAIR,
                                                         ks_libctx(), NULL);
    const unsigned char *p = data;
    size_t l = len;
    CK_RV rv = d && OSSL_DECODER_from_data(d, &p, &l) == 1 && pkey ? CKR_OK : CKR_WRAPPED_KEY_INVALID;
    OSSL_DECODER_CTX_free(d);
    if (rv == CKR_OK) {
        bool rsa = EVP_PKEY_is_a(pkey, "RSA"), ec = EVP_PKEY_is_a(pkey, "EC");
        const tok_curve *c = ec ? curve_of(pkey) : NULL;
        if ((kt == CKK_RSA && !rsa) || (kt == CKK_EC && !ec) || (kt != CKK_RSA && kt != CKK_EC))
            rv = CKR_TEMPLATE_INCONSISTENT;
        else if (ec && !c)
            rv = CKR_CURVE_NOT_SUPPORTED;
        else
            rv = tok_pkey_export(pkey, c, NULL, obj);
    }
    EVP_PKEY_free(pkey);
    return rv;
}

/* ---- the wrapping mechanisms ----------------------------------------------- */

static bool block_mode(tok_mclass mc) { return mc == M_ECB || mc == M_CBC || mc == M_CBC_PAD; }

static CK_RV check_wrapper(const tok_mech_desc *d, const tok_key *k, bool wrap)
{
    if (d->fam) /* AES key wrap, and the block modes of each cipher family */
        return k->cls == CKO_SECRET_KEY && tok_fam_key(d->fam, k->ktype) ? CKR_OK
                                                                          : (wrap ? CKR_WRAPPING_KEY_TYPE_INCONSISTENT
                                                                                  : CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT);
    if (d->mc == M_RSA_OAEP || d->mc == M_RSA_PKCS)
        return k->ktype == CKK_RSA && k->cls == (wrap ? CKO_PUBLIC_KEY : CKO_PRIVATE_KEY)
                   ? CKR_OK
                   : (wrap ? CKR_WRAPPING_KEY_TYPE_INCONSISTENT : CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT);
    return CKR_MECHANISM_INVALID;
}

/* One wrap or unwrap with the secret key k: AES key wrap (RFC 3394, 5649),
 * or ECB, CBC or CBC with PKCS#7 padding of the mechanism's cipher family
 * (iv: NULL but for CBC). */
static CK_RV cipher_wrap(const tok_mech_desc *d, const tok_key *k, const uint8_t *iv, bool enc, const uint8_t *in,
                         size_t inlen, uint8_t *out, size_t *outlen)
{
    int n1 = 0, n2 = 0;
    const EVP_CIPHER *c = tok_mech_cipher(d, k->secret_len);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int ok = c && ctx && inlen <= INT32_MAX && EVP_CipherInit_ex2(ctx, c, k->secret, iv, enc, NULL) &&
             (!block_mode(d->mc) || EVP_CIPHER_CTX_set_padding(ctx, d->mc == M_CBC_PAD)) &&
             EVP_CipherUpdate(ctx, out, &n1, in, (int)inlen) > 0 && EVP_CipherFinal_ex(ctx, out + n1, &n2) > 0;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok)
        return enc ? CKR_FUNCTION_FAILED : CKR_WRAPPED_KEY_INVALID;
    *outlen = (size_t)(n1 + n2);
    return CKR_OK;
}

/* oaep: the checked OAEP parameters, or NULL for PKCS#1 v1.5. */
static CK_RV rsa_wrap(const tok_oaep *oaep, const tok_key *k, bool enc, const uint8_t *in, size_t inlen, uint8_t *out,
                      size_t *outlen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(ks_libctx(), k->pkey, NULL);
    int ok = ctx && (enc ? EVP_PKEY_encrypt_init(ctx) : EVP_PKEY_decrypt_init(ctx)) == 1;
    if (ok && oaep) {
        ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_oaep_md_name(ctx, oaep->md, NULL) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md_name(ctx, oaep->mgf, NULL) == 1;
        if (ok && oaep->labellen) {
            uint8_t *l = OPENSSL_memdup(oaep->label, oaep->labellen); /* the context takes ownership */
            ok = l && EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, l, (int)oaep->labellen) == 1;
            if (!ok)
                OPENSSL_free(l);
        }
    } else if (ok) {
        ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1;
    }
    size_t n = k->size_bytes;
    if (ok)
        ok = (enc ? EVP_PKEY_encrypt(ctx, out, &n, in, inlen) : EVP_PKEY_decrypt(ctx, out, &n, in, inlen)) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        return enc ? CKR_KEY_SIZE_RANGE : CKR_WRAPPED_KEY_INVALID;
    *outlen = n;
    return CKR_OK;
}

/* Mechanism parameters, checked before anything else (size queries
 * included): none for RSA PKCS#1 v1.5, CK_RSA_PKCS_OAEP_PARAMS for OAEP
 * (filled into *oaep), the IV for CBC; for AES key wrap an optional initial
 * value, 8 bytes (RFC 3394) or 4 (RFC 5649), the standard one when absent. */
static CK_RV wrap_params(const tok_mech_desc *d, const CK_MECHANISM *mech, tok_oaep *oaep)
{
    if (d->mc == M_RSA_OAEP)
        return tok_oaep_params(mech, oaep);
    if (d->mc == M_AES_WRAP || d->mc == M_AES_WRAP_PAD)
        return (!mech->pParameter && !mech->ulParameterLen) ||
                       (mech->pParameter && mech->ulParameterLen == (d->mc == M_AES_WRAP ? 8u : 4u))
                   ? CKR_OK
                   : CKR_MECHANISM_PARAM_INVALID;
    if (d->mc == M_CBC || d->mc == M_CBC_PAD) /* the IV: one block */
        return mech->pParameter && mech->ulParameterLen == tok_fam_block(d->fam) ? CKR_OK
                                                                                 : CKR_MECHANISM_PARAM_INVALID;
    return mech->pParameter || mech->ulParameterLen ? CKR_MECHANISM_PARAM_INVALID : CKR_OK;
}

/* One wrap or unwrap with the checked mechanism. */
static CK_RV do_wrap(const tok_mech_desc *d, const CK_MECHANISM *mech, const tok_oaep *oaep, const tok_key *k,
                     bool enc, const uint8_t *in, size_t inlen, uint8_t *out, size_t *outlen)
{
    if (d->fam) /* the IV of CBC, the initial value of AES key wrap, or none */
        return cipher_wrap(d, k, d->mc == M_ECB ? NULL : mech->pParameter, enc, in, inlen, out, outlen);
    return rsa_wrap(d->mc == M_RSA_OAEP ? oaep : NULL, k, enc, in, inlen, out, outlen);
}

CK_RV tok_wrap(const CK_MECHANISM *mech, tok_key *wrapper, const tok_attrs *target, uint8_t *out, CK_ULONG *outlen)
{
    const tok_mech_desc *d;
    uint8_t *in = NULL, *buf = NULL;
    size_t inlen = 0, bound, n = 0, bs;
    CK_RV rv;

    if (!mech || !wrapper || !target || !outlen)
        return CKR_ARGUMENTS_BAD;
    d = tok_mech_find(mech->mechanism);
    if (!d || !(d->flags & CKF_WRAP))
        return CKR_MECHANISM_INVALID;
    if ((rv = check_wrapper(d, wrapper, true)) != CKR_OK)
        return rv;
    tok_oaep oaep;
    if ((rv = wrap_params(d, mech, &oaep)) != CKR_OK)
        return rv;
    if ((rv = wrap_input(target, &in, &inlen)) != CKR_OK)
        return rv;
    bs = d->mc == M_AES_WRAP ? 8 : tok_fam_block(d->fam);
    if ((d->mc == M_ECB || d->mc == M_CBC) && tok_obj_class(target) != CKO_SECRET_KEY) {
        rv = CKR_KEY_NOT_WRAPPABLE; /* secret keys only: a private key takes the _CBC_PAD mechanism */
        goto out;
    }
    if ((d->mc == M_ECB || d->mc == M_CBC || d->mc == M_AES_WRAP) && (inlen % bs || (d->mc == M_AES_WRAP && inlen < 16))) {
        /* PKCS#11: a secret key's value, or for AES key wrap a private key's
         * encoding too, is padded with zero bytes to whole blocks (8-byte
         * semiblocks, at least two of them, for RFC 3394); CKA_VALUE_LEN
         * takes them back out on unwrap, a private key's encoding ends
         * without them. */
        uint8_t *padded;
        size_t plen = (inlen + bs - 1) / bs * bs;
        if (d->mc == M_AES_WRAP && plen < 16)
            plen = 16;
        if (!(padded = OPENSSL_zalloc(plen))) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        memcpy(padded, in, inlen);
        OPENSSL_clear_free(in, inlen);
        in = padded;
        inlen = plen;
    }
    if ((d->mc == M_RSA_OAEP || d->mc == M_RSA_PKCS) && tok_obj_class(target) != CKO_SECRET_KEY) {
        rv = CKR_KEY_NOT_WRAPPABLE; /* a private key does not fit in one RSA block */
        goto out;
    }
    bound = d->mc == M_AES_WRAP       ? inlen + 8
            : d->mc == M_AES_WRAP_PAD ? (inlen + 7) / 8 * 8 + 8
            : d->mc == M_CBC_PAD      ? inlen / bs * bs + bs
            : block_mode(d->mc)       ? inlen
                                      : wrapper->size_bytes;
    if (!out) {
        *outlen = bound;
        rv = CKR_OK;
        goto out;
    }
    if (*outlen < bound) {
        *outlen = bound;
        rv = CKR_BUFFER_TOO_SMALL;
        goto out;
    }
    if (!(buf = OPENSSL_malloc(bound + 16))) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    rv = do_wrap(d, mech, &oaep, wrapper, true, in, inlen, buf, &n);
    if (rv == CKR_OK) {
        memcpy(out, buf, n);
        *outlen = n;
    }
out:
    if (in)
        OPENSSL_clear_free(in, inlen);
    OPENSSL_free(buf);
    return rv;
}

CK_RV tok_unwrap(const CK_MECHANISM *mech, tok_key *unwrapper, const uint8_t *in, CK_ULONG inlen, tok_attrs *obj)
{
    const tok_mech_desc *d;
    uint8_t *buf;
    size_t n = 0;
    CK_RV rv;

    if (!mech || !unwrapper || (!in && inlen) || !obj)
        return CKR_ARGUMENTS_BAD;
    d = tok_mech_find(mech->mechanism);
    CK_MECHANISM_INFO mi;
    if (!d || tok_mech_info(mech->mechanism, &mi) != CKR_OK || !(mi.flags & CKF_UNWRAP))
        return CKR_MECHANISM_INVALID; /* the policy may take unwrap away (tok_mech_info) */
    if ((rv = check_wrapper(d, unwrapper, false)) != CKR_OK)
        return rv;
    tok_oaep oaep;
    if ((rv = wrap_params(d, mech, &oaep)) != CKR_OK)
        return rv;
    if ((d->mc == M_AES_WRAP && (inlen % 8 || inlen < 24)) || (d->mc == M_AES_WRAP_PAD && (inlen % 8 || inlen < 16)) ||
        (block_mode(d->mc) && (inlen % tok_fam_block(d->fam) || inlen < tok_fam_block(d->fam))) ||
        ((d->mc == M_RSA_OAEP || d->mc == M_RSA_PKCS) && inlen != unwrapper->size_bytes) || inlen > (1u << 20))
        return CKR_WRAPPED_KEY_LEN_RANGE;
    if (!(buf = OPENSSL_malloc(inlen + 16)))
        return CKR_HOST_MEMORY;
    rv = do_wrap(d, mech, &oaep, unwrapper, false, in, inlen, buf, &n);
    if (rv == CKR_OK)
        rv = unwrap_output(buf, n, !(d->mc == M_ECB || d->mc == M_CBC || d->mc == M_AES_WRAP),
                           d->mc == M_AES_WRAP ? (n > 16 ? n - 7 : 1) : 1, obj);
    OPENSSL_clear_free(buf, inlen + 16);
    return rv;
}

/* ---- derivation ------------------------------------------------------------ */

/* HKDF (RFC 5869) from a secret key: extract, expand, or both. */
static CK_RV hkdf_derive(const CK_MECHANISM *mech, tok_key *base, tok_attrs *obj)
{
    const tok_hkdf_params *p = mech->pParameter;
    CK_ULONG want = 0, cls;
    const char *md;
    int mode;
    uint8_t out[512];

    if (base->cls != CKO_SECRET_KEY || !base->secret)
        return CKR_KEY_TYPE_INCONSISTENT;
    if (!p || mech->ulParameterLen != sizeof(*p) || (!p->bExtract && !p->bExpand) ||
        !(md = tok_md_of_mech(p->prfHashMechanism)) || (!p->pInfo && p->ulInfoLen) ||
        (p->bExtract && p->ulSaltType != TOK_CKF_HKDF_SALT_NULL && p->ulSaltType != TOK_CKF_HKDF_SALT_DATA) ||
        (p->ulSaltType == TOK_CKF_HKDF_SALT_DATA && (!p->pSalt || !p->ulSaltLen)))
        return CKR_MECHANISM_PARAM_INVALID;
    if (!tok_attrs_get_ulong(obj, CKA_CLASS, &cls) || cls != CKO_SECRET_KEY)
        return CKR_TEMPLATE_INCONSISTENT;
    EVP_MD *m = EVP_MD_fetch(ks_libctx(), md, NULL);
    size_t hlen = m ? (size_t)EVP_MD_get_size(m) : 0;
    EVP_MD_free(m);
    CK_ULONG kt = 0;
    tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt);
    if (!tok_attrs_get_ulong(obj, CKA_VALUE_LEN, &want))
        want = tok_ktype_fixed_len(kt); /* DES keys: the type gives the length */
    if (!p->bExpand) {
        if (want && want != hlen)
            return CKR_TEMPLATE_INCONSISTENT; /* extract only: the PRK, hash-sized */
        want = hlen;
    }
    if (!want)
        return CKR_TEMPLATE_INCOMPLETE;
    if (want > sizeof(out) || want > 255 * hlen)
        return CKR_KEY_SIZE_RANGE;
    mode = p->bExtract && p->bExpand ? EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND
           : p->bExtract            ? EVP_KDF_HKDF_MODE_EXTRACT_ONLY
                                    : EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    EVP_KDF *kdf = EVP_KDF_fetch(ks_libctx(), "HKDF", NULL);
    EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM kp[6], *q = kp;
    *q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0);
    *q++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, base->secret, base->secret_len);
    if (p->bExtract && p->ulSaltType == TOK_CKF_HKDF_SALT_DATA)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, p->pSalt, p->ulSaltLen);
    if (p->bExpand && p->ulInfoLen)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, p->pInfo, p->ulInfoLen);
    *q = OSSL_PARAM_construct_end();
    CK_RV rv = kc && EVP_KDF_derive(kc, out, want, kp) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
    if (rv == CKR_OK && !tok_secret_len_ok(kt, want))
        rv = CKR_KEY_SIZE_RANGE;
    if (rv == CKR_OK)
        rv = tok_secret_set(obj, out, want, true);
    OPENSSL_cleanse(out, sizeof(out));
    return rv;
}

/* CKM_SHA*_KEY_DERIVATION: the leading bytes of the digest of the base key's
 * value. The length: CKA_VALUE_LEN, else the key type's own (DES), else, for
 * a generic secret, the digest's; a key type without a length of its own
 * (AES) needs CKA_VALUE_LEN; more bytes than the digest has cannot be made. */
static CK_RV hash_derive(const tok_mech_desc *d, const CK_MECHANISM *mech, tok_key *base, tok_attrs *obj)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    CK_ULONG kt = CK_UNAVAILABLE_INFORMATION, want;
    EVP_MD *m;
    CK_RV rv;

    if (mech->pParameter || mech->ulParameterLen)
        return CKR_MECHANISM_PARAM_INVALID;
    if (base->cls != CKO_SECRET_KEY || !base->secret)
        return CKR_KEY_TYPE_INCONSISTENT;
    m = EVP_MD_fetch(ks_libctx(), d->md, NULL);
    rv = m && EVP_Digest(base->secret, base->secret_len, md, &mdlen, m, NULL) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    EVP_MD_free(m);
    tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt);
    if (rv == CKR_OK && !tok_attrs_get_ulong(obj, CKA_VALUE_LEN, &want))
        want = tok_ktype_fixed_len(kt) ? tok_ktype_fixed_len(kt) : kt == CKK_GENERIC_SECRET ? mdlen : 0;
    if (rv == CKR_OK && !want)
        rv = CKR_TEMPLATE_INCOMPLETE;
    if (rv == CKR_OK && (want > mdlen || (kt == CKK_AES && want != 16 && want != 24 && want != 32)))
        rv = CKR_KEY_SIZE_RANGE;
    if (rv == CKR_OK)
        rv = tok_secret_set(obj, md, want, true);
    OPENSSL_cleanse(md, sizeof(md));
    return rv;
}

CK_RV tok_derive(const CK_MECHANISM *mech, tok_key *base, tok_attrs *obj)
{
    const tok_mech_desc *d;
    const CK_ECDH1_DERIVE_PARAMS *p;
    const char *kdf_md = NULL;
    CK_ULONG want = 0, cls, kt;
    CK_RV rv = CKR_OK;

    if (!mech || !base || !obj)
        return CKR_ARGUMENTS_BAD;
    d = tok_mech_find(mech->mechanism);
    if (d && d->mc == M_HKDF)
        return hkdf_derive(mech, base, obj);
    if (d && d->mc == M_KEY_HASH)
        return hash_derive(d, mech, base, obj);
    if (!d || d->mc != M_ECDH)
        return CKR_MECHANISM_INVALID;
    if (base->cls != CKO_PRIVATE_KEY || (base->ktype != CKK_EC && base->ktype != CKK_EC_MONTGOMERY))
        return CKR_KEY_TYPE_INCONSISTENT;
    p = mech->pParameter;
    if (!p || mech->ulParameterLen != sizeof(*p) || !p->pPublicData || !p->ulPublicDataLen ||
        (!p->pSharedData && p->ulSharedDataLen))
        return CKR_MECHANISM_PARAM_INVALID;
    switch (p->kdf) {
    case CKD_NULL:
        if (p->ulSharedDataLen)
            return CKR_MECHANISM_PARAM_INVALID;
        break;
    case CKD_SHA1_KDF: kdf_md = "SHA1"; break;
    case CKD_SHA224_KDF: kdf_md = "SHA224"; break;
    case CKD_SHA256_KDF: kdf_md = "SHA256"; break;
    case CKD_SHA384_KDF: kdf_md = "SHA384"; break;
    case CKD_SHA512_KDF: kdf_md = "SHA512"; break;
    default: return CKR_MECHANISM_PARAM_INVALID;
    }
    if (!tok_attrs_get_ulong(obj, CKA_CLASS, &cls) || cls != CKO_SECRET_KEY ||
        !tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt))
        return CKR_TEMPLATE_INCONSISTENT;
    if (!tok_attrs_get_ulong(obj, CKA_VALUE_LEN, &want))
        want = tok_ktype_fixed_len(kt); /* DES keys: the type gives the length */
    else if (!want) /* given, as no length at all (0 below means the shared secret's) */
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if ((kt == CKK_AES || kt == CKK_CHACHA20) && !tok_secret_len_ok(kt, want))
        return want ? CKR_KEY_SIZE_RANGE : CKR_TEMPLATE_INCOMPLETE;

    /* The peer's public key, raw point or DER OCTET STRING. */
    size_t rawlen = 0;
    const uint8_t *raw = tok_ec_point_raw(p->pPublicData, p->ulPublicDataLen, base->curve, &rawlen);
    if (!raw)
        return CKR_MECHANISM_PARAM_INVALID;
    OSSL_PARAM pp[] = {OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)base->curve->name, 0),
                       OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)raw, rawlen),
                       OSSL_PARAM_construct_end()};
    EVP_PKEY *peer = NULL;
    if (base->curve->kind == TOK_CURVE_MONTGOMERY) {
        peer = EVP_PKEY_new_raw_public_key_ex(ks_libctx(), base->curve->name, NULL, raw, rawlen);
        if (!peer)
            rv = CKR_MECHANISM_PARAM_INVALID;
    } else {
        EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(ks_libctx(), TOK_KEYTYPE_EC, NULL);
        if (!pc || EVP_PKEY_fromdata_init(pc) != 1 || EVP_PKEY_fromdata(pc, &peer, EVP_PKEY_PUBLIC_KEY, pp) != 1)
            rv = CKR_MECHANISM_PARAM_INVALID;
        EVP_PKEY_CTX_free(pc);
    }
    if (rv != CKR_OK)
        return rv;

    uint8_t z[133], out[512];
    size_t zlen = sizeof(z);
    EVP_PKEY_CTX *dc = EVP_PKEY_CTX_new_from_pkey(ks_libctx(), base->pkey, NULL);
    if (!dc || EVP_PKEY_derive_init(dc) != 1 || EVP_PKEY_derive_set_peer(dc, peer) != 1 ||
        EVP_PKEY_derive(dc, z, &zlen) != 1)
        rv = CKR_MECHANISM_PARAM_INVALID; /* e.g. a point not on the curve */
    EVP_PKEY_CTX_free(dc);
    EVP_PKEY_free(peer);
    if (rv != CKR_OK)
        return rv;
    size_t outlen = want ? want : zlen;
    if (outlen > sizeof(out) || (!kdf_md && outlen > zlen)) {
        OPENSSL_cleanse(z, sizeof(z));
        return CKR_KEY_SIZE_RANGE;
    }
    if (kdf_md) {
        EVP_KDF *kdf = EVP_KDF_fetch(ks_libctx(), "X963KDF", NULL);
        EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
        OSSL_PARAM kp[] = {OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)kdf_md, 0),
                           OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z, zlen),
                           OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, p->pSharedData, p->ulSharedDataLen),
                           OSSL_PARAM_construct_end()};
        if (!kc || EVP_KDF_derive(kc, out, outlen, kp) != 1)
            rv = CKR_FUNCTION_FAILED;
        EVP_KDF_CTX_free(kc);
        EVP_KDF_free(kdf);
    } else {
        /* The null KDF: the leading bytes of the shared secret's x coordinate. */
        memcpy(out, z, outlen);
    }
    OPENSSL_cleanse(z, sizeof(z));
    if (rv == CKR_OK)
        rv = tok_secret_set(obj, out, outlen, true);
    OPENSSL_cleanse(out, sizeof(out));
    return rv;
}
