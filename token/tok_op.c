/* p11mk token layer: cryptographic operations on OpenSSL 3 EVP.
 *
 * Every operation follows the PKCS#11 size-query protocol. Where the exact
 * output length is only known after the work is done (decryption), the
 * output is computed once into a pending buffer and handed out when the
 * caller's buffer is large enough, so a retry after CKR_BUFFER_TOO_SMALL
 * gives the same result without redoing (or re-randomizing) anything. */
#include "token/tok_crypto.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>

typedef enum { M_CBC, M_GCM, M_RSA_RAW, M_RSA_SHA256, M_ECDSA_RAW, M_ECDSA_SHA256, M_HMAC, M_DIGEST } mclass;

struct tok_op {
    tok_op_kind kind;
    mclass mc;
    tok_key *key;
    EVP_CIPHER_CTX *cctx;
    EVP_MD_CTX *mdctx;
    EVP_MAC_CTX *mac;
    uint8_t *buf; /* buffered input (GCM decryption) */
    size_t blen, bcap;
    size_t held;  /* CBC: input bytes inside the cipher context, not yet output */
    size_t taglen;
    uint8_t *pend; /* output computed but not yet handed out */
    size_t pendlen;
    bool has_pend;
    /* input of the current one-shot call, for the producers */
    const uint8_t *in;
    size_t inlen;
};

tok_op_kind tok_op_get_kind(const tok_op *op) { return op->kind; }

void tok_op_free(tok_op *op)
{
    if (!op)
        return;
    EVP_CIPHER_CTX_free(op->cctx);
    EVP_MD_CTX_free(op->mdctx);
    EVP_MAC_CTX_free(op->mac);
    if (op->buf)
        OPENSSL_clear_free(op->buf, op->bcap);
    if (op->pend)
        OPENSSL_clear_free(op->pend, op->pendlen);
    tok_key_unref(op->key);
    OPENSSL_cleanse(op, sizeof(*op));
    free(op);
}

/* ---- init ---------------------------------------------------------------- */

static bool mech_class(CK_MECHANISM_TYPE m, mclass *mc)
{
    switch (m) {
    case CKM_AES_CBC_PAD: *mc = M_CBC; return true;
    case CKM_AES_GCM: *mc = M_GCM; return true;
    case CKM_RSA_PKCS: *mc = M_RSA_RAW; return true;
    case CKM_SHA256_RSA_PKCS: *mc = M_RSA_SHA256; return true;
    case CKM_ECDSA: *mc = M_ECDSA_RAW; return true;
    case CKM_ECDSA_SHA256: *mc = M_ECDSA_SHA256; return true;
    case CKM_SHA256_HMAC: *mc = M_HMAC; return true;
    case CKM_SHA256: *mc = M_DIGEST; return true;
    default: return false;
    }
}

static CK_FLAGS kind_flag(tok_op_kind k)
{
    switch (k) {
    case TOK_OP_ENCRYPT: return CKF_ENCRYPT;
    case TOK_OP_DECRYPT: return CKF_DECRYPT;
    case TOK_OP_SIGN: return CKF_SIGN;
    case TOK_OP_VERIFY: return CKF_VERIFY;
    default: return CKF_DIGEST;
    }
}

static CK_ATTRIBUTE_TYPE kind_usage(tok_op_kind k)
{
    switch (k) {
    case TOK_OP_ENCRYPT: return CKA_ENCRYPT;
    case TOK_OP_DECRYPT: return CKA_DECRYPT;
    case TOK_OP_SIGN: return CKA_SIGN;
    default: return CKA_VERIFY;
    }
}

/* Key class and type this mechanism needs for this operation. */
static CK_RV check_key(mclass mc, tok_op_kind kind, const tok_key *k)
{
    bool want_priv = kind == TOK_OP_DECRYPT || kind == TOK_OP_SIGN;
    switch (mc) {
    case M_CBC:
    case M_GCM:
        return k->cls == CKO_SECRET_KEY && k->ktype == CKK_AES ? CKR_OK : CKR_KEY_TYPE_INCONSISTENT;
    case M_HMAC:
        return k->cls == CKO_SECRET_KEY && (k->ktype == CKK_GENERIC_SECRET || k->ktype == CKK_SHA256_HMAC)
                   ? CKR_OK
                   : CKR_KEY_TYPE_INCONSISTENT;
    case M_RSA_RAW:
    case M_RSA_SHA256:
        if (k->ktype != CKK_RSA || k->cls != (want_priv ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY))
            return CKR_KEY_TYPE_INCONSISTENT;
        return k->size_bytes >= 128 && k->size_bytes <= 1024 ? CKR_OK : CKR_KEY_SIZE_RANGE;
    case M_ECDSA_RAW:
    case M_ECDSA_SHA256:
        return k->ktype == CKK_EC && k->cls == (want_priv ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY)
                   ? CKR_OK
                   : CKR_KEY_TYPE_INCONSISTENT;
    default: return CKR_KEY_TYPE_INCONSISTENT;
    }
}

static bool mech_allowed(const tok_attrs *a, CK_MECHANISM_TYPE m)
{
    const tok_attr *am = tok_attrs_find(a, CKA_ALLOWED_MECHANISMS);
    if (!am || !am->len)
        return true;
    for (size_t i = 0; i + sizeof(CK_MECHANISM_TYPE) <= am->len; i += sizeof(CK_MECHANISM_TYPE)) {
        CK_MECHANISM_TYPE t;
        memcpy(&t, am->val + i, sizeof(t));
        if (t == m)
            return true;
    }
    return false;
}

static const char *aes_name(size_t keylen, bool gcm)
{
    switch (keylen) {
    case 16: return gcm ? "AES-128-GCM" : "AES-128-CBC";
    case 24: return gcm ? "AES-192-GCM" : "AES-192-CBC";
    case 32: return gcm ? "AES-256-GCM" : "AES-256-CBC";
    default: return NULL;
    }
}

static CK_RV init_cipher(tok_op *op, const CK_MECHANISM *m)
{
    const char *name = aes_name(op->key->secret_len, op->mc == M_GCM);
    bool enc = op->kind == TOK_OP_ENCRYPT;
    EVP_CIPHER *c;
    int ok;

    if (!name)
        return CKR_KEY_SIZE_RANGE;
    if (op->mc == M_CBC) {
        if (!m->pParameter || m->ulParameterLen != 16)
            return CKR_MECHANISM_PARAM_INVALID;
    } else {
        const CK_GCM_PARAMS *g = m->pParameter;
        if (!g || m->ulParameterLen != sizeof(*g) || !g->pIv || g->ulIvLen < 1 || g->ulIvLen > 256 ||
            (!g->pAAD && g->ulAADLen) || g->ulTagBits % 8 || g->ulTagBits < 32 || g->ulTagBits > 128 ||
            g->ulAADLen > INT32_MAX)
            return CKR_MECHANISM_PARAM_INVALID;
        op->taglen = g->ulTagBits / 8;
    }
    c = EVP_CIPHER_fetch(NULL, name, NULL);
    op->cctx = EVP_CIPHER_CTX_new();
    if (!c || !op->cctx) {
        EVP_CIPHER_free(c);
        return CKR_HOST_MEMORY;
    }
    if (op->mc == M_CBC) {
        ok = EVP_CipherInit_ex2(op->cctx, c, op->key->secret, m->pParameter, enc, NULL);
    } else {
        const CK_GCM_PARAMS *g = m->pParameter;
        int n;
        ok = EVP_CipherInit_ex2(op->cctx, c, NULL, NULL, enc, NULL) &&
             EVP_CIPHER_CTX_ctrl(op->cctx, EVP_CTRL_GCM_SET_IVLEN, (int)g->ulIvLen, NULL) &&
             EVP_CipherInit_ex2(op->cctx, NULL, op->key->secret, g->pIv, enc, NULL) &&
             (!g->ulAADLen || EVP_CipherUpdate(op->cctx, NULL, &n, g->pAAD, (int)g->ulAADLen));
    }
    EVP_CIPHER_free(c);
    return ok ? CKR_OK : CKR_FUNCTION_FAILED;
}

static CK_RV init_md(tok_op *op)
{
    int ok;
    op->mdctx = EVP_MD_CTX_new();
    if (!op->mdctx)
        return CKR_HOST_MEMORY;
    switch (op->kind) {
    case TOK_OP_DIGEST: ok = EVP_DigestInit_ex2(op->mdctx, EVP_sha256(), NULL); break;
    case TOK_OP_SIGN: ok = EVP_DigestSignInit_ex(op->mdctx, NULL, "SHA256", NULL, NULL, op->key->pkey, NULL); break;
    default: ok = EVP_DigestVerifyInit_ex(op->mdctx, NULL, "SHA256", NULL, NULL, op->key->pkey, NULL); break;
    }
    return ok == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
}

static CK_RV init_hmac(tok_op *op)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    op->mac = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac);
    if (!op->mac)
        return CKR_HOST_MEMORY;
    return EVP_MAC_init(op->mac, op->key->secret, op->key->secret_len, params) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
}

CK_RV tok_op_init(tok_op_kind kind, const CK_MECHANISM *mech, tok_key *key, const tok_attrs *key_attrs, tok_op **out)
{
    CK_MECHANISM_INFO info;
    tok_op *op;
    mclass mc;
    CK_RV rv;

    if (!mech || !out)
        return CKR_ARGUMENTS_BAD;
    if (!mech_class(mech->mechanism, &mc) || tok_mech_info(mech->mechanism, &info) != CKR_OK ||
        !(info.flags & kind_flag(kind)))
        return CKR_MECHANISM_INVALID;
    if (kind != TOK_OP_DIGEST) {
        if (!key || !key_attrs)
            return CKR_KEY_HANDLE_INVALID;
        if ((rv = check_key(mc, kind, key)) != CKR_OK)
            return rv;
        if (!tok_attrs_get_bool(key_attrs, kind_usage(kind), false))
            return CKR_KEY_FUNCTION_NOT_PERMITTED;
        if (!mech_allowed(key_attrs, mech->mechanism))
            return CKR_MECHANISM_INVALID;
    }
    if (mc != M_CBC && mc != M_GCM && (mech->pParameter || mech->ulParameterLen))
        return CKR_MECHANISM_PARAM_INVALID;
    op = calloc(1, sizeof(*op));
    if (!op)
        return CKR_HOST_MEMORY;
    op->kind = kind;
    op->mc = mc;
    op->key = kind == TOK_OP_DIGEST ? NULL : tok_key_ref(key);
    switch (mc) {
    case M_CBC:
    case M_GCM: rv = init_cipher(op, mech); break;
    case M_RSA_SHA256:
    case M_ECDSA_SHA256:
    case M_DIGEST: rv = init_md(op); break;
    case M_HMAC: rv = init_hmac(op); break;
    default: rv = CKR_OK; break;
    }
    if (rv != CKR_OK) {
        tok_op_free(op);
        return rv;
    }
    *out = op;
    return CKR_OK;
}

/* ---- helpers -------------------------------------------------------------- */

static size_t sig_len(const tok_op *op)
{
    switch (op->mc) {
    case M_HMAC:
    case M_DIGEST: return 32;
    case M_ECDSA_RAW:
    case M_ECDSA_SHA256: return 2 * op->key->size_bytes;
    default: return op->key->size_bytes;
    }
}

/* DER ECDSA-Sig-Value -> r||s padded to the field size. */
static CK_RV ecdsa_der_to_raw(const uint8_t *der, size_t derlen, size_t fb, uint8_t *out)
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
    const BIGNUM *r, *s;
    CK_RV rv = CKR_FUNCTION_FAILED;
    if (!sig)
        return rv;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_bn2binpad(r, out, (int)fb) == (int)fb && BN_bn2binpad(s, out + fb, (int)fb) == (int)fb)
        rv = CKR_OK;
    ECDSA_SIG_free(sig);
    return rv;
}

/* r||s -> DER (malloc'd). */
static int ecdsa_raw_to_der(const uint8_t *raw, size_t fb, uint8_t **der, size_t *derlen)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, (int)fb, NULL), *s = BN_bin2bn(raw + fb, (int)fb, NULL);
    unsigned char *p = NULL;
    int n = -1;
    if (sig && r && s && ECDSA_SIG_set0(sig, r, s) == 1) {
        r = s = NULL;
        n = i2d_ECDSA_SIG(sig, &p);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    if (n <= 0)
        return -1;
    *der = p;
    *derlen = (size_t)n;
    return 0;
}

static EVP_PKEY_CTX *pkey_ctx(tok_op *op)
{
    return EVP_PKEY_CTX_new_from_pkey(NULL, op->key->pkey, NULL);
}

/* ---- producers: compute the output of a one-shot or final call ------------ */

typedef CK_RV (*produce_fn)(tok_op *op, uint8_t *out, size_t *outlen);

static CK_RV cipher_update(tok_op *op, const uint8_t *in, size_t inlen, uint8_t *out, size_t *outlen)
{
    int n = 0;
    if (inlen > INT32_MAX)
        return CKR_DATA_LEN_RANGE;
    if (inlen && !EVP_CipherUpdate(op->cctx, out, &n, in, (int)inlen))
        return CKR_FUNCTION_FAILED;
    *outlen = (size_t)n;
    return CKR_OK;
}

static CK_RV cipher_final(tok_op *op, uint8_t *out, size_t *outlen)
{
    int n = 0;
    if (op->mc == M_GCM && op->kind == TOK_OP_DECRYPT) {
        /* op->buf holds ciphertext || tag */
        size_t ctlen = op->blen - op->taglen;
        size_t got;
        if (!EVP_CIPHER_CTX_ctrl(op->cctx, EVP_CTRL_GCM_SET_TAG, (int)op->taglen, op->buf + ctlen))
            return CKR_FUNCTION_FAILED;
        if (cipher_update(op, op->buf, ctlen, out, &got) != CKR_OK)
            return CKR_FUNCTION_FAILED;
        if (!EVP_DecryptFinal_ex(op->cctx, out + got, &n)) {
            OPENSSL_cleanse(out, got);
            return CKR_ENCRYPTED_DATA_INVALID;
        }
        *outlen = got + (size_t)n;
        return CKR_OK;
    }
    if (!EVP_CipherFinal_ex(op->cctx, out, &n))
        return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_INVALID : CKR_FUNCTION_FAILED;
    *outlen = (size_t)n;
    if (op->mc == M_GCM) { /* encrypt: append the tag */
        if (!EVP_CIPHER_CTX_ctrl(op->cctx, EVP_CTRL_GCM_GET_TAG, (int)op->taglen, out + n))
            return CKR_FUNCTION_FAILED;
        *outlen += op->taglen;
    }
    return CKR_OK;
}

static CK_RV produce_cipher_oneshot(tok_op *op, uint8_t *out, size_t *outlen)
{
    size_t a = 0, b = 0;
    CK_RV rv;
    if (op->mc == M_GCM && op->kind == TOK_OP_DECRYPT) {
        op->buf = (uint8_t *)op->in; /* borrowed for cipher_final */
        op->blen = op->inlen;
        rv = cipher_final(op, out, outlen);
        op->buf = NULL;
        op->blen = 0;
        return rv;
    }
    rv = cipher_update(op, op->in, op->inlen, out, &a);
    if (rv == CKR_OK)
        rv = cipher_final(op, out + a, &b);
    *outlen = a + b;
    return rv;
}

static CK_RV produce_rsa_raw(tok_op *op, uint8_t *out, size_t *outlen)
{
    EVP_PKEY_CTX *ctx = pkey_ctx(op);
    size_t n = op->key->size_bytes;
    int ok = 0;
    CK_RV fail = CKR_FUNCTION_FAILED;

    if (!ctx)
        return CKR_HOST_MEMORY;
    switch (op->kind) {
    case TOK_OP_ENCRYPT:
        ok = EVP_PKEY_encrypt_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_encrypt(ctx, out, &n, op->in, op->inlen) == 1;
        break;
    case TOK_OP_DECRYPT:
        fail = CKR_ENCRYPTED_DATA_INVALID;
        ok = EVP_PKEY_decrypt_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_decrypt(ctx, out, &n, op->in, op->inlen) == 1;
        break;
    default:
        ok = EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_sign(ctx, out, &n, op->in, op->inlen) == 1;
        break;
    }
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        return fail;
    *outlen = n;
    return CKR_OK;
}

static CK_RV produce_sign(tok_op *op, uint8_t *out, size_t *outlen, bool oneshot)
{
    uint8_t der[160];
    size_t n = sizeof(der);
    int ok;

    switch (op->mc) {
    case M_HMAC:
        ok = (!oneshot || !op->inlen || EVP_MAC_update(op->mac, op->in, op->inlen)) &&
             EVP_MAC_final(op->mac, out, &n, 32);
        *outlen = n;
        return ok ? CKR_OK : CKR_FUNCTION_FAILED;
    case M_DIGEST: {
        unsigned int dl = 0;
        ok = (!oneshot || !op->inlen || EVP_DigestUpdate(op->mdctx, op->in, op->inlen)) &&
             EVP_DigestFinal_ex(op->mdctx, out, &dl);
        *outlen = dl;
        return ok ? CKR_OK : CKR_FUNCTION_FAILED;
    }
    case M_RSA_SHA256:
        n = op->key->size_bytes;
        ok = oneshot ? EVP_DigestSign(op->mdctx, out, &n, op->in, op->inlen) : EVP_DigestSignFinal(op->mdctx, out, &n);
        *outlen = n;
        return ok == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    case M_ECDSA_SHA256:
        ok = oneshot ? EVP_DigestSign(op->mdctx, der, &n, op->in, op->inlen) : EVP_DigestSignFinal(op->mdctx, der, &n);
        break;
    case M_ECDSA_RAW: {
        EVP_PKEY_CTX *ctx = pkey_ctx(op);
        ok = ctx && EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_sign(ctx, der, &n, op->in, op->inlen) == 1;
        EVP_PKEY_CTX_free(ctx);
        break;
    }
    default: return produce_rsa_raw(op, out, outlen);
    }
    if (ok != 1)
        return CKR_FUNCTION_FAILED;
    *outlen = 2 * op->key->size_bytes;
    return ecdsa_der_to_raw(der, n, op->key->size_bytes, out);
}

static CK_RV produce_oneshot(tok_op *op, uint8_t *out, size_t *outlen)
{
    if (op->mc == M_CBC || op->mc == M_GCM)
        return produce_cipher_oneshot(op, out, outlen);
    if (op->mc == M_RSA_RAW && op->kind != TOK_OP_SIGN)
        return produce_rsa_raw(op, out, outlen);
    return produce_sign(op, out, outlen, true);
}

static CK_RV produce_final(tok_op *op, uint8_t *out, size_t *outlen)
{
    if (op->mc == M_CBC || op->mc == M_GCM)
        return cipher_final(op, out, outlen);
    return produce_sign(op, out, outlen, false);
}

/* The size-query protocol around a producer; bound >= the real length. */
static CK_RV deliver(tok_op *op, produce_fn produce, size_t bound, uint8_t *out, CK_ULONG *outlen)
{
    CK_RV rv;

    if (!op->has_pend) {
        if (!out) {
            *outlen = bound;
            return CKR_OK;
        }
        if (*outlen >= bound) {
            size_t n = 0;
            rv = produce(op, out, &n);
            if (rv == CKR_OK)
                *outlen = n;
            return rv;
        }
        op->pend = OPENSSL_malloc(bound ? bound : 1);
        if (!op->pend)
            return CKR_HOST_MEMORY;
        op->pendlen = bound;
        size_t n = 0;
        rv = produce(op, op->pend, &n);
        if (rv != CKR_OK)
            return rv;
        op->has_pend = true;
        OPENSSL_cleanse(op->pend + n, bound - n);
        op->pendlen = n;
    }
    if (!out || *outlen < op->pendlen) {
        *outlen = op->pendlen;
        return out ? CKR_BUFFER_TOO_SMALL : CKR_OK;
    }
    memcpy(out, op->pend, op->pendlen);
    *outlen = op->pendlen;
    return CKR_OK;
}

/* ---- public operations ---------------------------------------------------- */

CK_RV tok_op_oneshot(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    size_t bound;

    if (!op || !outlen || (!in && inlen))
        return CKR_ARGUMENTS_BAD;
    if (op->kind == TOK_OP_VERIFY)
        return CKR_OPERATION_NOT_INITIALIZED;
    switch (op->mc) {
    case M_CBC:
        if (op->kind == TOK_OP_DECRYPT) {
            if (inlen == 0 || inlen % 16)
                return CKR_ENCRYPTED_DATA_LEN_RANGE;
            bound = inlen;
        } else {
            bound = (inlen / 16 + 1) * 16;
        }
        break;
    case M_GCM:
        if (op->kind == TOK_OP_DECRYPT) {
            if (inlen < op->taglen)
                return CKR_ENCRYPTED_DATA_LEN_RANGE;
            bound = inlen - op->taglen;
        } else {
            bound = inlen + op->taglen;
        }
        break;
    case M_RSA_RAW:
        if (op->kind == TOK_OP_DECRYPT && inlen != op->key->size_bytes)
            return CKR_ENCRYPTED_DATA_LEN_RANGE;
        if (op->kind != TOK_OP_DECRYPT && inlen > op->key->size_bytes - 11)
            return CKR_DATA_LEN_RANGE;
        bound = op->key->size_bytes;
        break;
    case M_ECDSA_RAW:
        if (inlen == 0 || inlen > 64)
            return CKR_DATA_LEN_RANGE;
        bound = sig_len(op);
        break;
    default: bound = sig_len(op); break;
    }
    op->in = in;
    op->inlen = inlen;
    CK_RV rv = deliver(op, produce_oneshot, bound, out, outlen);
    op->in = NULL;
    op->inlen = 0;
    return rv;
}

static CK_RV buf_append(tok_op *op, const uint8_t *in, size_t inlen)
{
    if (op->blen + inlen > op->bcap) {
        size_t cap = op->bcap ? op->bcap : 256;
        while (cap < op->blen + inlen)
            cap *= 2;
        uint8_t *nb = OPENSSL_malloc(cap);
        if (!nb)
            return CKR_HOST_MEMORY;
        if (op->buf) {
            memcpy(nb, op->buf, op->blen);
            OPENSSL_clear_free(op->buf, op->bcap);
        }
        op->buf = nb;
        op->bcap = cap;
    }
    if (inlen)
        memcpy(op->buf + op->blen, in, inlen);
    op->blen += inlen;
    return CKR_OK;
}

CK_RV tok_op_update(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    if (!op || (!in && inlen))
        return CKR_ARGUMENTS_BAD;
    if (op->has_pend)
        return CKR_OPERATION_ACTIVE;
    switch (op->mc) {
    case M_RSA_RAW:
    case M_ECDSA_RAW: return CKR_FUNCTION_NOT_SUPPORTED; /* single-part mechanisms */
    case M_HMAC: return EVP_MAC_update(op->mac, in, inlen) ? CKR_OK : CKR_FUNCTION_FAILED;
    case M_DIGEST: return EVP_DigestUpdate(op->mdctx, in, inlen) ? CKR_OK : CKR_FUNCTION_FAILED;
    case M_RSA_SHA256:
    case M_ECDSA_SHA256:
        if (op->kind == TOK_OP_SIGN)
            return EVP_DigestSignUpdate(op->mdctx, in, inlen) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
        return EVP_DigestVerifyUpdate(op->mdctx, in, inlen) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    default: break;
    }
    /* Ciphers: exact output length first. */
    if (!outlen)
        return CKR_ARGUMENTS_BAD;
    size_t need, total = op->held + inlen;
    if (op->mc == M_GCM) {
        if (op->kind == TOK_OP_DECRYPT) {
            *outlen = 0; /* the tag is at the end: everything comes out at final */
            return buf_append(op, in, inlen);
        }
        need = inlen;
    } else if (op->kind == TOK_OP_ENCRYPT) {
        need = total / 16 * 16;
    } else {
        need = total ? (total - 1) / 16 * 16 : 0; /* the last block is held back for the padding */
    }
    if (!out) {
        *outlen = need;
        return CKR_OK;
    }
    if (*outlen < need) {
        *outlen = need;
        return CKR_BUFFER_TOO_SMALL;
    }
    uint8_t *tmp = OPENSSL_malloc(inlen + 32);
    size_t got = 0;
    CK_RV rv;
    if (!tmp)
        return CKR_HOST_MEMORY;
    rv = cipher_update(op, in, inlen, tmp, &got);
    if (rv == CKR_OK && got != need)
        rv = CKR_FUNCTION_FAILED;
    if (rv == CKR_OK) {
        memcpy(out, tmp, got);
        *outlen = got;
        op->held = total - got;
    }
    OPENSSL_clear_free(tmp, inlen + 32);
    return rv;
}

CK_RV tok_op_final(tok_op *op, uint8_t *out, CK_ULONG *outlen)
{
    size_t bound;

    if (!op || !outlen)
        return CKR_ARGUMENTS_BAD;
    switch (op->mc) {
    case M_RSA_RAW:
    case M_ECDSA_RAW: return CKR_FUNCTION_NOT_SUPPORTED;
    case M_CBC:
        if (op->kind == TOK_OP_DECRYPT && op->held != 16 && !op->has_pend)
            return CKR_ENCRYPTED_DATA_LEN_RANGE;
        bound = 16;
        break;
    case M_GCM:
        if (op->kind == TOK_OP_DECRYPT) {
            if (op->blen < op->taglen)
                return CKR_ENCRYPTED_DATA_LEN_RANGE;
            bound = op->blen - op->taglen;
        } else {
            bound = op->taglen;
        }
        break;
    default:
        if (op->kind == TOK_OP_VERIFY)
            return CKR_OPERATION_NOT_INITIALIZED;
        bound = sig_len(op);
        break;
    }
    return deliver(op, produce_final, bound, out, outlen);
}

static CK_RV verify_common(tok_op *op, const uint8_t *in, CK_ULONG inlen, const uint8_t *sig, CK_ULONG siglen,
                           bool oneshot)
{
    uint8_t *der = NULL;
    size_t derlen = 0;
    int ok = 0;

    if (!op || !sig || (oneshot && !in && inlen))
        return CKR_ARGUMENTS_BAD;
    if (op->kind != TOK_OP_VERIFY)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (siglen != sig_len(op))
        return CKR_SIGNATURE_LEN_RANGE;
    switch (op->mc) {
    case M_HMAC: {
        uint8_t mac[32];
        size_t n = 0;
        ok = (!oneshot || !inlen || EVP_MAC_update(op->mac, in, inlen)) && EVP_MAC_final(op->mac, mac, &n, 32) &&
             n == 32;
        if (!ok)
            return CKR_FUNCTION_FAILED;
        ok = CRYPTO_memcmp(mac, sig, 32) == 0;
        OPENSSL_cleanse(mac, sizeof(mac));
        return ok ? CKR_OK : CKR_SIGNATURE_INVALID;
    }
    case M_RSA_SHA256:
        ok = oneshot ? EVP_DigestVerify(op->mdctx, sig, siglen, in, inlen) : EVP_DigestVerifyFinal(op->mdctx, sig, siglen);
        return ok == 1 ? CKR_OK : CKR_SIGNATURE_INVALID;
    case M_ECDSA_SHA256:
        if (ecdsa_raw_to_der(sig, op->key->size_bytes, &der, &derlen) != 0)
            return CKR_SIGNATURE_INVALID;
        ok = oneshot ? EVP_DigestVerify(op->mdctx, der, derlen, in, inlen) : EVP_DigestVerifyFinal(op->mdctx, der, derlen);
        OPENSSL_free(der);
        return ok == 1 ? CKR_OK : CKR_SIGNATURE_INVALID;
    case M_ECDSA_RAW:
    case M_RSA_RAW: {
        if (!oneshot)
            return CKR_FUNCTION_NOT_SUPPORTED;
        if (op->mc == M_ECDSA_RAW && (inlen == 0 || inlen > 64))
            return CKR_DATA_LEN_RANGE;
        if (op->mc == M_RSA_RAW && inlen > op->key->size_bytes - 11)
            return CKR_DATA_LEN_RANGE;
        EVP_PKEY_CTX *ctx = pkey_ctx(op);
        if (!ctx)
            return CKR_HOST_MEMORY;
        if (op->mc == M_ECDSA_RAW) {
            if (ecdsa_raw_to_der(sig, op->key->size_bytes, &der, &derlen) == 0)
                ok = EVP_PKEY_verify_init(ctx) == 1 && EVP_PKEY_verify(ctx, der, derlen, in, inlen) == 1;
            OPENSSL_free(der);
        } else {
            ok = EVP_PKEY_verify_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
                 EVP_PKEY_verify(ctx, sig, siglen, in, inlen) == 1;
        }
        EVP_PKEY_CTX_free(ctx);
        return ok ? CKR_OK : CKR_SIGNATURE_INVALID;
    }
    default: return CKR_OPERATION_NOT_INITIALIZED;
    }
}

CK_RV tok_op_verify(tok_op *op, const uint8_t *in, CK_ULONG inlen, const uint8_t *sig, CK_ULONG siglen)
{
    return verify_common(op, in, inlen, sig, siglen, true);
}

CK_RV tok_op_verify_final(tok_op *op, const uint8_t *sig, CK_ULONG siglen)
{
    return verify_common(op, NULL, 0, sig, siglen, false);
}
