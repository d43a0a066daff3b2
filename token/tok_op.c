/* p11mk token layer: cryptographic operations on OpenSSL 3 EVP.
 *
 * Every operation follows the PKCS#11 size-query protocol. Where the exact
 * output length is only known after the work is done (decryption), the
 * output is computed once into a pending buffer and handed out when the
 * caller's buffer is large enough, so a retry after CKR_BUFFER_TOO_SMALL
 * gives the same result without redoing (or re-randomizing) anything.
 *
 * What a mechanism is (its class, digest, key sizes) comes from the table in
 * tok_mech.c; this file implements each class once. */
#include "tok_crypto.h"
#include "tok_internal.h"
#include "token/tok_policy.h"

#include <stdlib.h>
#include <limits.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>

struct tok_op {
    tok_op_kind kind;
    const tok_mech_desc *d;
    tok_key *key;
    EVP_CIPHER_CTX *cctx;
    const tok_gcm_fns *gcm; /* AES-GCM with a 12-byte IV: the provider's functions and context (tok_direct.c), */
    void *gctx;         /* not cctx; freed (cleansed) when the operation ends */
    EVP_MD_CTX *mdctx;
    const tok_dgst_fns *dgst; /* a digest through the provider's functions and context (tok_direct.c), */
    void *dctx;               /* not mdctx; kept by the spare unless a key's value went in (scrub) */
    bool took_key;            /* C_DigestKey */
    EVP_MAC_CTX *mac;
    uint8_t *buf; /* buffered input (GCM decryption) */
    size_t blen, bcap;
    size_t held;  /* block modes: input bytes inside the cipher context, not yet output */
    size_t bs;    /* block modes: the cipher's block size */
    size_t taglen;
    /* RSA parameters */
    const char *pss_md, *mgf_md;
    EVP_MD *pss_mdobj; /* raw PSS: the digest the input was made with */
    int saltlen;
    size_t maclen; /* _GENERAL MACs: the requested length */
    uint64_t ctr_room; /* AES-CTR: bytes left before the counter (ulCounterBits of cb) would wrap */
    uint8_t *label;
    size_t labellen;
    uint8_t *pend; /* output computed but not yet handed out */
    size_t pendlen;
    bool has_pend;
    tok_aead_op *aead; /* AES-CCM, ChaCha20-Poly1305: all of it in tok_aead.c */
    /* input of the current one-shot call, for the producers */
    const uint8_t *in;
    size_t inlen;
    bool recover; /* C_SignRecoverInit / C_VerifyRecoverInit: only tok_op_recover serves it */
    /* What C_GetOperationState saves (tok_opstate.c): OpenSSL cannot export a
     * running digest or MAC, so a digest, HMAC or CMAC keeps its input so far
     * (at most TOK_OPSTATE_MAX_DATA bytes; beyond, or once a key's value was
     * digested, it is not saveable) and the handle of its key. */
    uint64_t key_handle;
    uint8_t *fed;
    size_t fedlen, fedcap;
    bool unsaveable;
    /* Kept when the operation ends as its session's spare (tok_op_end), for
     * the next operation of its kind (tok_op_start): where the key was found
     * current, and the logout count then. */
    tok_key_at key_at;
    uint64_t login_seq;
};

tok_op_kind tok_op_get_kind(const tok_op *op) { return op->kind; }

/* What an operation holds besides its OpenSSL contexts and its key: the
 * buffers (cleansed), the PSS digest, an AEAD operation. */
static void op_release_data(tok_op *op)
{
    if (op->buf)
        OPENSSL_clear_free(op->buf, op->bcap);
    if (op->pend)
        OPENSSL_clear_free(op->pend, op->pendlen);
    if (op->fed)
        OPENSSL_clear_free(op->fed, op->fedlen);
    if (op->label) /* (each call skipped when there is nothing: twice per operation) */
        OPENSSL_free(op->label);
    if (op->pss_mdobj)
        EVP_MD_free(op->pss_mdobj);
    if (op->aead)
        tok_aead_op_free(op->aead);
    op->buf = op->pend = op->fed = op->label = NULL;
    op->pss_mdobj = NULL;
    op->aead = NULL;
}

static void gcm_release(tok_op *op)
{
    if (op->gctx) {
        tok_gcm_free(op->gcm, op->gctx);
        op->gctx = NULL;
    }
}

static void dgst_release(tok_op *op)
{
    if (op->dctx) {
        tok_dgst_free(op->dgst, op->dctx);
        op->dctx = NULL;
    }
}

void tok_op_free(tok_op *op)
{
    if (!op)
        return;
    gcm_release(op);
    dgst_release(op);
    EVP_CIPHER_CTX_free(op->cctx);
    EVP_MD_CTX_free(op->mdctx);
    EVP_MAC_CTX_free(op->mac);
    op_release_data(op);
    tok_key_unref(op->key);
    OPENSSL_cleanse(op, sizeof(*op));
    free(op);
}

static bool is_block_mode(tok_mclass mc) { return mc == M_CBC_PAD || mc == M_CBC || mc == M_ECB; }
static bool is_cipher(tok_mclass mc) { return is_block_mode(mc) || mc == M_AES_CTR || mc == M_AES_GCM; }
static bool is_rsa(tok_mclass mc) { return mc >= M_RSA_PKCS && mc <= M_RSA_OAEP; }
static bool single_part(tok_mclass mc)
{
    return mc == M_RSA_PKCS || mc == M_RSA_X509 || mc == M_RSA_PSS || mc == M_RSA_OAEP || mc == M_ECDSA;
}

/* Pure EdDSA hashes the message twice (RFC 8032), so OpenSSL signs it in one
 * call: C_SignUpdate / C_VerifyUpdate (PKCS#11 makes CKM_EDDSA multi-part)
 * gather the parts in op->buf, up to this many bytes (beyond,
 * CKR_DATA_LEN_RANGE), and the final call signs or verifies them at once. */
#define EDDSA_PARTS_MAX ((size_t)1 << 30)

/* ---- init ---------------------------------------------------------------- */

static CK_FLAGS kind_flag(tok_op_kind k, bool recover)
{
    switch (k) {
    case TOK_OP_ENCRYPT: return CKF_ENCRYPT;
    case TOK_OP_DECRYPT: return CKF_DECRYPT;
    case TOK_OP_SIGN: return recover ? CKF_SIGN_RECOVER : CKF_SIGN;
    case TOK_OP_VERIFY: return recover ? CKF_VERIFY_RECOVER : CKF_VERIFY;
    default: return CKF_DIGEST;
    }
}

/* The usage attribute an operation needs (tok_key_use's bit for it). */
static unsigned kind_usage(tok_op_kind k, bool recover)
{
    switch (k) {
    case TOK_OP_ENCRYPT: return TOK_USE_ENCRYPT;
    case TOK_OP_DECRYPT: return TOK_USE_DECRYPT;
    case TOK_OP_SIGN: return recover ? TOK_USE_SIGN_RECOVER : TOK_USE_SIGN;
    default: return recover ? TOK_USE_VERIFY_RECOVER : TOK_USE_VERIFY;
    }
}

/* Key class and type this mechanism needs for this operation. */
static CK_RV check_key(const tok_mech_desc *d, tok_op_kind kind, const tok_key *k)
{
    bool want_priv = kind == TOK_OP_DECRYPT || kind == TOK_OP_SIGN;
    if (d->fam)
        return k->cls == CKO_SECRET_KEY && tok_fam_key(d->fam, k->ktype) ? CKR_OK : CKR_KEY_TYPE_INCONSISTENT;
    if (d->mc == M_HMAC)
        return k->cls == CKO_SECRET_KEY && (k->ktype == CKK_GENERIC_SECRET || (d->hmac_key && k->ktype == d->hmac_key))
                   ? CKR_OK
                   : CKR_KEY_TYPE_INCONSISTENT;
    if (is_rsa(d->mc)) {
        if (k->ktype != CKK_RSA || k->cls != (want_priv ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY))
            return CKR_KEY_TYPE_INCONSISTENT;
        /* Keys below rsa_min_bits (2048 unless configured lower, never below
         * 1024) only verify old signatures; up to 8192 bits. */
        if (k->size_bytes < 128 || k->size_bytes > 1024 ||
            (k->size_bytes * 8 < tok_mech_rsa_min_bits() && kind != TOK_OP_VERIFY))
            return CKR_KEY_SIZE_RANGE;
        return CKR_OK;
    }
    if (d->mc == M_EDDSA)
        return k->ktype == CKK_EC_EDWARDS && k->cls == (want_priv ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY)
                   ? CKR_OK
                   : CKR_KEY_TYPE_INCONSISTENT;
    if (d->mc == M_ECDSA || d->mc == M_ECDSA_HASH)
        return k->ktype == CKK_EC && k->cls == (want_priv ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY)
                   ? CKR_OK
                   : CKR_KEY_TYPE_INCONSISTENT;
    return CKR_KEY_TYPE_INCONSISTENT;
}

/* AES-CTR increments only the low `bits` bits of the counter block cb
 * (PKCS#11's ulCounterBits); OpenSSL increments all 128. The two agree
 * until the counter field would wrap, so an operation may process no more
 * than the blocks left before that (beyond, CKR_DATA_LEN_RANGE: reusing the
 * keystream of another nonce is never an answer). 128 bits: they agree always. */
static uint64_t ctr_room(const uint8_t cb[16], CK_ULONG bits)
{
    unsigned __int128 v = 0, blocks;

    if (bits >= 128)
        return UINT64_MAX;
    for (int i = 0; i < 16; i++)
        v = v << 8 | cb[i];
    v &= ((unsigned __int128)1 << bits) - 1;
    blocks = ((unsigned __int128)1 << bits) - v;
    return blocks > UINT64_MAX / 16 ? UINT64_MAX : (uint64_t)blocks * 16;
}

static CK_RV init_cipher(tok_op *op, const CK_MECHANISM *m)
{
    tok_mclass mc = op->d->mc;
    const EVP_CIPHER *c = tok_mech_cipher(op->d, op->key->secret_len);
    bool enc = op->kind == TOK_OP_ENCRYPT;
    const uint8_t *iv = NULL;
    int ok;

    if (!c)
        return CKR_KEY_SIZE_RANGE;
    op->bs = tok_fam_block(op->d->fam);
    switch (mc) {
    case M_CBC:
    case M_CBC_PAD: /* the IV: one block */
        if (!m->pParameter || m->ulParameterLen != op->bs)
            return CKR_MECHANISM_PARAM_INVALID;
        iv = m->pParameter;
        break;
    case M_ECB:
        if (m->pParameter || m->ulParameterLen)
            return CKR_MECHANISM_PARAM_INVALID;
        break;
    case M_AES_CTR: {
        const CK_AES_CTR_PARAMS *p = m->pParameter;
        if (!p || m->ulParameterLen != sizeof(*p) || p->ulCounterBits == 0 || p->ulCounterBits > 128)
            return CKR_MECHANISM_PARAM_INVALID;
        iv = p->cb;
        op->ctr_room = ctr_room(p->cb, p->ulCounterBits);
        break;
    }
    default: {
        const CK_GCM_PARAMS *g = m->pParameter;
        if (!g || m->ulParameterLen != sizeof(*g) || !g->pIv || g->ulIvLen < 1 || g->ulIvLen > TOK_GCM_IV_MAX ||
            (!g->pAAD && g->ulAADLen) || g->ulTagBits % 8 || g->ulTagBits < 32 || g->ulTagBits > 128 ||
            g->ulAADLen > INT32_MAX)
            return CKR_MECHANISM_PARAM_INVALID;
        op->taglen = g->ulTagBits / 8;
        if (g->ulIvLen == 12 && (op->gcm = tok_mech_gcm(op->key->secret_len)) != NULL) {
            op->gctx = tok_gcm_new(op->gcm, enc, op->key->secret, op->key->secret_len, g->pIv, 12, g->pAAD,
                                   g->ulAADLen);
            return op->gctx ? CKR_OK : CKR_FUNCTION_FAILED;
        }
        break;
    }
    }
    if (!op->cctx) /* else a spare's, reset (recycle) */
        op->cctx = EVP_CIPHER_CTX_new();
    if (!op->cctx)
        return CKR_HOST_MEMORY;
    if (mc != M_AES_GCM) {
        ok = EVP_CipherInit_ex2(op->cctx, c, op->key->secret, iv, enc, NULL) &&
             EVP_CIPHER_CTX_set_padding(op->cctx, mc == M_CBC_PAD);
    } else {
        const CK_GCM_PARAMS *g = m->pParameter;
        int n;
        /* A 12-byte IV is GCM's own length: key and IV in one call. */
        ok = (g->ulIvLen == 12 ? EVP_CipherInit_ex2(op->cctx, c, op->key->secret, g->pIv, enc, NULL)
                               : EVP_CipherInit_ex2(op->cctx, c, NULL, NULL, enc, NULL) &&
                                     EVP_CIPHER_CTX_ctrl(op->cctx, EVP_CTRL_GCM_SET_IVLEN, (int)g->ulIvLen, NULL) &&
                                     EVP_CipherInit_ex2(op->cctx, NULL, op->key->secret, g->pIv, enc, NULL)) &&
             (!g->ulAADLen || EVP_CipherUpdate(op->cctx, NULL, &n, g->pAAD, (int)g->ulAADLen));
    }
    return ok ? CKR_OK : CKR_FUNCTION_FAILED;
}

/* PSS and OAEP parameters. */
static CK_RV init_rsa_params(tok_op *op, const CK_MECHANISM *m)
{
    tok_mclass mc = op->d->mc;
    if (mc == M_RSA_PSS || mc == M_RSA_PSS_HASH) {
        const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
        if (!p || m->ulParameterLen != sizeof(*p))
            return CKR_MECHANISM_PARAM_INVALID;
        op->pss_md = tok_md_of_mech(p->hashAlg);
        op->mgf_md = tok_md_of_mgf(p->mgf);
        if (!op->pss_md || !op->mgf_md || (mc == M_RSA_PSS_HASH && strcmp(op->pss_md, op->d->md) != 0))
            return CKR_MECHANISM_PARAM_INVALID;
        EVP_MD *md = EVP_MD_fetch(ks_libctx(), op->pss_md, NULL);
        int hlen = md ? EVP_MD_get_size(md) : 0;
        EVP_MD_free(md);
        if (hlen <= 0 || p->sLen > op->key->size_bytes || (long)p->sLen > (long)op->key->size_bytes - hlen - 2)
            return CKR_MECHANISM_PARAM_INVALID;
        op->saltlen = (int)p->sLen;
        if (mc == M_RSA_PSS && !(op->pss_mdobj = EVP_MD_fetch(ks_libctx(), op->pss_md, NULL)))
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    }
    if (mc == M_RSA_OAEP) {
        tok_oaep o;
        CK_RV rv = tok_oaep_params(m, &o);
        if (rv != CKR_OK)
            return rv;
        op->pss_md = o.md;
        op->mgf_md = o.mgf;
        if (o.labellen) {
            op->label = OPENSSL_memdup(o.label, o.labellen);
            if (!op->label)
                return CKR_HOST_MEMORY;
            op->labellen = o.labellen;
        }
        return CKR_OK;
    }
    return m->pParameter || m->ulParameterLen ? CKR_MECHANISM_PARAM_INVALID : CKR_OK;
}

CK_RV tok_oaep_params(const CK_MECHANISM *m, tok_oaep *out)
{
    const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;

    memset(out, 0, sizeof(*out));
    if (!p || m->ulParameterLen != sizeof(*p))
        return CKR_MECHANISM_PARAM_INVALID;
    out->md = tok_md_of_mech(p->hashAlg);
    out->mgf = tok_md_of_mgf(p->mgf);
    if (!out->md || !out->mgf || (p->source && p->source != CKZ_DATA_SPECIFIED) ||
        (!p->pSourceData && p->ulSourceDataLen) || (p->ulSourceDataLen && p->source != CKZ_DATA_SPECIFIED) ||
        p->ulSourceDataLen > INT_MAX)
        return CKR_MECHANISM_PARAM_INVALID;
    out->label = p->pSourceData;
    out->labellen = p->ulSourceDataLen;
    return CKR_OK;
}

/* Padding and digests of an RSA EVP_PKEY_CTX, as the mechanism wants. */
static int rsa_setup(tok_op *op, EVP_PKEY_CTX *ctx)
{
    switch (op->d->mc) {
    case M_RSA_PKCS:
    case M_RSA_PKCS_HASH: return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1;
    case M_RSA_X509: return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) == 1;
    case M_RSA_PSS:
    case M_RSA_PSS_HASH:
        return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) == 1 &&
               (op->d->mc == M_RSA_PSS_HASH ||
                EVP_PKEY_CTX_set_signature_md(ctx, (const EVP_MD *)op->pss_mdobj) == 1) &&
               EVP_PKEY_CTX_set_rsa_mgf1_md_name(ctx, op->mgf_md, NULL) == 1 &&
               EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, op->saltlen) == 1;
    case M_RSA_OAEP: {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
            EVP_PKEY_CTX_set_rsa_oaep_md_name(ctx, op->pss_md, NULL) != 1 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md_name(ctx, op->mgf_md, NULL) != 1)
            return 0;
        if (op->labellen) {
            uint8_t *l = OPENSSL_memdup(op->label, op->labellen); /* the context takes ownership */
            if (!l || EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, l, (int)op->labellen) != 1) {
                OPENSSL_free(l);
                return 0;
            }
        }
        return 1;
    }
    default: return 1;
    }
}

static CK_RV init_md(tok_op *op)
{
    EVP_PKEY_CTX *pctx = NULL;
    int ok;
    const tok_dgst_fns *direct = op->kind == TOK_OP_DIGEST ? tok_md_direct(op->d->md) : NULL;
    if (direct) {
        EVP_MD_CTX_free(op->mdctx); /* a spare's, of a digest EVP served */
        op->mdctx = NULL;
        if (op->dctx && op->dgst != direct) /* a spare's, of another digest */
            dgst_release(op);
        op->dgst = direct;
        if (!op->dctx && !(op->dctx = tok_dgst_new(direct)))
            return CKR_HOST_MEMORY;
        return tok_dgst_init(direct, op->dctx) ? CKR_OK : CKR_FUNCTION_FAILED;
    }
    if (!op->mdctx && !(op->mdctx = EVP_MD_CTX_new())) /* a digest's spare has one (recycle) */
        return CKR_HOST_MEMORY;
    if (op->kind == TOK_OP_DIGEST) {
        const EVP_MD *md = tok_md(op->d->md);
        /* A spare's context of this digest was initialized when its digest
         * ended (scrub): ready as it is. */
        ok = md && (EVP_MD_CTX_get0_md(op->mdctx) == md || EVP_DigestInit_ex2(op->mdctx, md, NULL));
        return ok ? CKR_OK : CKR_MECHANISM_INVALID;
    }
    if (op->kind == TOK_OP_SIGN)
        ok = EVP_DigestSignInit_ex(op->mdctx, &pctx, op->d->md, ks_libctx(), NULL, op->key->pkey, NULL) == 1;
    else
        ok = EVP_DigestVerifyInit_ex(op->mdctx, &pctx, op->d->md, ks_libctx(), NULL, op->key->pkey, NULL) == 1;
    if (ok && is_rsa(op->d->mc))
        ok = rsa_setup(op, pctx);
    return ok ? CKR_OK : CKR_FUNCTION_FAILED;
}

static CK_RV init_mac(tok_op *op)
{
    if (op->mac) /* a spare's HMAC context of this digest (recycle): only the key is new */
        return EVP_MAC_init(op->mac, op->key->secret, op->key->secret_len, NULL) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    bool cmac = op->d->mc == M_CMAC;
    EVP_MAC *mac = tok_mac(cmac);
    const EVP_CIPHER *c = cmac ? tok_mech_cipher(op->d, op->key->secret_len) : NULL;
    /* CMAC takes its cipher by name (EVP_MAC has no parameter for a fetched one). */
    OSSL_PARAM params[] = {
        cmac ? OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, c ? (char *)EVP_CIPHER_get0_name(c) : "", 0)
             : OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)op->d->md, 0),
        OSSL_PARAM_construct_end(),
    };
    op->mac = mac ? EVP_MAC_CTX_new(mac) : NULL;
    if (!op->mac)
        return CKR_HOST_MEMORY;
    if (cmac && !c)
        return CKR_KEY_SIZE_RANGE;
    return EVP_MAC_init(op->mac, op->key->secret, op->key->secret_len, params) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
}

/* The checks of an operation's start that need no context. */
static CK_RV start_checks(tok_op_kind kind, bool recover, const CK_MECHANISM *mech, tok_key *key,
                          const tok_attrs *key_attrs, const tok_mech_desc **dp)
{
    const tok_mech_desc *d;
    CK_RV rv;

    if (!mech || (recover && kind != TOK_OP_SIGN && kind != TOK_OP_VERIFY))
        return CKR_ARGUMENTS_BAD;
    d = tok_mech_find(mech->mechanism);
    if (!d || d->mc == M_NONE || !(d->flags & kind_flag(kind, recover)))
        return CKR_MECHANISM_INVALID;
    if (kind != TOK_OP_DIGEST) {
        if (!key || !key_attrs)
            return CKR_KEY_HANDLE_INVALID;
        if ((rv = check_key(d, kind, key)) != CKR_OK)
            return rv;
        /* The key's own reading of its attributes, or one of those given */
        tok_key_use given, *use = &key->use;
        if (key_attrs != &key->attrs)
            given = tok_key_use_of(key_attrs), use = &given;
        if (!(use->may & kind_usage(kind, recover)))
            return CKR_KEY_FUNCTION_NOT_PERMITTED;
        if (!tok_mech_allowed_in(use->allowed, mech->mechanism))
            return CKR_MECHANISM_INVALID;
    }
    *dp = d;
    return CKR_OK;
}

/* A spare made ready for an operation of kind with mechanism d on key (NULL
 * for a digest): a digest's context kept for a digest, an HMAC context for
 * an HMAC of the same digest (re-keyed under zeros when its operation ended:
 * scrub), a cipher's EVP_CIPHER_CTX (reset, holding nothing) for a cipher,
 * nothing else of the old operation left. The op holds a reference
 * on key after (the spare's own when it is the same key: no reference count
 * touched). */
static void recycle(tok_op *op, tok_op_kind kind, const tok_mech_desc *d, tok_key *key)
{
    bool digest = kind == TOK_OP_DIGEST && op->kind == TOK_OP_DIGEST;
    EVP_MD_CTX *mdctx = digest ? op->mdctx : NULL;
    void *dctx = digest ? op->dctx : NULL;
    const tok_dgst_fns *dgst = op->dgst;
    EVP_MAC_CTX *mac = op->mac && op->d && op->d->mc == M_HMAC && d->mc == M_HMAC && strcmp(op->d->md, d->md) == 0
                           ? op->mac
                           : NULL;
    EVP_CIPHER_CTX *cctx = kind == TOK_OP_ENCRYPT || kind == TOK_OP_DECRYPT ? op->cctx : NULL;
    tok_key *k = op->key;

    if (mdctx != op->mdctx)
        EVP_MD_CTX_free(op->mdctx);
    if (mac != op->mac)
        EVP_MAC_CTX_free(op->mac);
    if (cctx != op->cctx)
        EVP_CIPHER_CTX_free(op->cctx);
    gcm_release(op);
    if (dctx != op->dctx)
        dgst_release(op);
    op_release_data(op);
    if (k != key) {
        tok_key_unref(k);
        k = key ? tok_key_ref(key) : NULL;
    }
    memset(op, 0, sizeof(*op));
    op->mdctx = mdctx;
    op->dctx = dctx;
    op->dgst = dctx ? dgst : NULL;
    op->mac = mac;
    op->cctx = cctx;
    op->key = k;
}

/* reuse: a spare to start from (tok_op_start), consumed whatever happens. */
static CK_RV op_start(tok_op_kind kind, bool recover, const CK_MECHANISM *mech, tok_key *key,
                      const tok_attrs *key_attrs, tok_op *reuse, tok_op **out)
{
    const tok_mech_desc *d = NULL;
    tok_op *op;
    CK_RV rv = out ? start_checks(kind, recover, mech, key, key_attrs, &d) : CKR_ARGUMENTS_BAD;

    if (rv != CKR_OK) {
        tok_op_free(reuse);
        return rv;
    }
    if (reuse) {
        op = reuse;
        recycle(op, kind, d, kind == TOK_OP_DIGEST ? NULL : key);
    } else {
        op = calloc(1, sizeof(*op));
        if (!op)
            return CKR_HOST_MEMORY;
        op->key = kind == TOK_OP_DIGEST ? NULL : tok_key_ref(key);
    }
    op->kind = kind;
    op->d = d;
    op->recover = recover;
    if (tok_aead_single(d->mc))
        rv = tok_aead_op_init(d, kind == TOK_OP_ENCRYPT, mech, key, &op->aead);
    else if (is_cipher(d->mc))
        rv = init_cipher(op, mech);
    else if (is_rsa(d->mc))
        rv = init_rsa_params(op, mech);
    else if (d->general) {
        const CK_ULONG *l = mech->pParameter;
        size_t full = d->mc == M_CMAC ? tok_fam_block(d->fam) : 0;
        if (!full)
            full = tok_md_size(d->md);
        rv = l && mech->ulParameterLen == sizeof(*l) && *l >= 1 && *l <= full ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
        if (rv == CKR_OK)
            op->maclen = *l;
    } else if (d->mc == M_EDDSA) {
        /* Pure EdDSA only: no parameters, or ones that ask for nothing else. */
        const tok_eddsa_params *ep = mech->pParameter;
        rv = !mech->pParameter && !mech->ulParameterLen ? CKR_OK
             : ep && mech->ulParameterLen == sizeof(*ep) && !ep->phFlag && !ep->ulContextDataLen
                 ? CKR_OK
                 : CKR_MECHANISM_PARAM_INVALID;
    } else
        rv = mech->pParameter || mech->ulParameterLen ? CKR_MECHANISM_PARAM_INVALID : CKR_OK;
    if (rv == CKR_OK) {
        switch (d->mc) {
        case M_RSA_PKCS_HASH:
        case M_RSA_PSS_HASH:
        case M_ECDSA_HASH:
        case M_DIGEST: rv = init_md(op); break;
        case M_HMAC:
        case M_CMAC: rv = init_mac(op); break;
        default: break;
        }
    }
    if (rv != CKR_OK) {
        tok_op_free(op);
        return tok_secmem_rv(rv);
    }
    *out = op;
    return CKR_OK;
}

CK_RV tok_op_init(tok_op_kind kind, const CK_MECHANISM *mech, tok_key *key, const tok_attrs *key_attrs, tok_op **out)
{
    return op_start(kind, false, mech, key, key_attrs, NULL, out);
}

CK_RV tok_op_init_recover(tok_op_kind kind, const CK_MECHANISM *mech, tok_key *key, const tok_attrs *key_attrs,
                          tok_op **out)
{
    return op_start(kind, true, mech, key, key_attrs, NULL, out);
}

/* ---- the session's spare operation ---------------------------------------
 * Every init looked its key up in the key cache: a lock and the key's
 * reference count that every thread shares, on every operation. So an
 * operation that ends is kept by its session as the spare of its kind
 * (tok_op_end), and the session's next operation of that kind starts from
 * it (tok_op_start), keeping:
 * - its key, found without the key cache, when the same handle is asked for
 *   and nothing was committed since the key was found current
 *   (tok_key_at_current); who may see it is checked again. The spare holds
 *   a reference, so the address cannot come back as another key, and the
 *   key's secret bytes stay where the key cache keeps them (out of dumps);
 * - a digest's context, for the next digest (re-initialized when the digest
 *   ends, which clears what it held of the caller's data);
 * - its own memory.
 * - an HMAC's context, re-keyed under an all-zero key when the HMAC ends:
 *   OpenSSL's HMAC cleanses and frees its copy of the old key for a copy of
 *   the zeros, and its inner and outer states (each as good as the key for
 *   making MACs) become the zero key's. Making the context again costs an
 *   HMAC a third of its time; re-keying it under zeros, two blocks hashed.
 *   (test_secrets looks for the key and both states in a core dump.)
 * Cipher and CMAC contexts are not kept: they hold key material in ordinary
 * memory (an AES key schedule begins with the key itself), which the module
 * lets live only while an operation runs (README, threat model: key values
 * are kept out of core dumps), and re-keying AES-GCM under zeros costs more
 * than a new context. When an operation ends, its buffers are cleansed and
 * freed. A private key's spare goes at logout: the pkcs11 layer sweeps the
 * sessions it can take, and tok_op_start drops one from before a logout. */

/* What an ended operation may keep: no cipher or CMAC context (key
 * material; an EVP_CIPHER_CTX reset, which cleanses and frees the cipher's
 * own context, is an empty shell), an HMAC context under the zero key, a
 * digest's EVP context cleared; the provider's own digest context as it is
 * (made ready by the next digest's init: it holds what the application
 * digested, which the application holds itself), but freed, which cleanses
 * it, once a key's value went in (C_DigestKey); false: keep nothing of it. */
static bool scrub(tok_op *op)
{
    static const uint8_t zeros[32];

    if (op->mac && (op->d->mc != M_HMAC || EVP_MAC_init(op->mac, zeros, sizeof(zeros), NULL) != 1)) {
        EVP_MAC_CTX_free(op->mac);
        op->mac = NULL;
    }
    gcm_release(op); /* cleansed and freed */
    if (op->took_key)
        dgst_release(op); /* the same */
    if (op->cctx && EVP_CIPHER_CTX_reset(op->cctx) != 1) { /* the cipher's own context cleansed and freed */
        EVP_CIPHER_CTX_free(op->cctx);
        op->cctx = NULL;
    }
    if (op->mdctx) {
        if (op->kind != TOK_OP_DIGEST) { /* a signature's: made again each time */
            EVP_MD_CTX_free(op->mdctx);
            op->mdctx = NULL;
        } else if (EVP_DigestInit_ex2(op->mdctx, NULL, NULL) != 1) {
            return false;
        }
    }
    return true;
}

void tok_op_end(tok_op *op, tok_op **spare)
{
    if (!op)
        return;
    if (!spare || op->recover || op->aead || !scrub(op)) {
        tok_op_free(op);
        return;
    }
    op_release_data(op);
    tok_op_free(*spare);
    *spare = op;
}

CK_RV tok_op_start(tok_ctx *ctx, const tok_access *ac, tok_op_kind kind, bool recover, const CK_MECHANISM *mech,
                   uint64_t h, tok_op **spare, tok_op **out)
{
    tok_op *sp = *spare;
    tok_key *key = NULL, *found = NULL;
    tok_key_at at = {0, 0};
    CK_RV rv = CKR_OK;

    *spare = NULL;
    if (sp && sp->login_seq != ac->login_seq && tok_op_spare_private(sp)) {
        tok_op_free(sp); /* a logout since: a private key's spare goes */
        sp = NULL;
    }
    if (kind != TOK_OP_DIGEST) {
        if (h == CK_INVALID_HANDLE) {
            rv = CKR_KEY_HANDLE_INVALID;
        } else if (sp && sp->key && sp->key_handle == h && tok_key_at_current(ctx, &sp->key_at, ac->seq)) {
            key = sp->key; /* the spare's reference serves (op_start keeps it) */
            at = sp->key_at;
            if (!tok_access_sees_private(ac, key->use.private_obj))
                rv = CKR_KEY_HANDLE_INVALID;
        } else if ((rv = tok_obj_key_at(ctx, ac, h, &found, &at)) == CKR_OK) {
            key = found;
        } else if (rv == CKR_OBJECT_HANDLE_INVALID) {
            rv = CKR_KEY_HANDLE_INVALID;
        }
    }
    if (rv != CKR_OK) {
        *spare = sp; /* a wrong handle does not cost the session its spare */
        return rv;
    }
    rv = op_start(kind, recover, mech, key, key ? tok_key_attrs(key) : NULL, sp, out);
    tok_key_unref(found);
    if (rv == CKR_OK) {
        (*out)->key_handle = kind == TOK_OP_DIGEST ? 0 : h;
        (*out)->key_at = at;
        (*out)->login_seq = ac->login_seq;
    }
    return rv;
}

bool tok_op_always_authenticate(const tok_op *op)
{
    return op->key && op->key->use.always_auth;
}

bool tok_op_spare_private(const tok_op *op) { return op && op->key && op->key->use.private_obj; }

bool tok_op_is_recover(const tok_op *op) { return op->recover; }

/* ---- helpers -------------------------------------------------------------- */

static size_t sig_len(const tok_op *op)
{
    if (op->maclen)
        return op->maclen;
    switch (op->d->mc) {
    case M_HMAC:
    case M_DIGEST: return tok_md_size(op->d->md);
    case M_CMAC: return tok_fam_block(op->d->fam);
    case M_ECDSA:
    case M_ECDSA_HASH: return 2 * op->key->size_bytes;
    case M_EDDSA: return op->key->size_bytes == 32 ? 64 : 114;
    default: return op->key->size_bytes;
    }
}

static EVP_PKEY_CTX *pkey_ctx(tok_op *op) { return EVP_PKEY_CTX_new_from_pkey(ks_libctx(), op->key->pkey, NULL); }

/* CKM_RSA_X_509 works on modulus-sized blocks: short input is left-padded with zeros. */
static const uint8_t *x509_block(tok_op *op, const uint8_t *in, size_t inlen, uint8_t *blk)
{
    size_t k = op->key->size_bytes;
    if (inlen == k)
        return in;
    memset(blk, 0, k - inlen);
    memcpy(blk + k - inlen, in, inlen);
    return blk;
}

/* ---- producers: compute the output of a one-shot or final call ------------ */

typedef CK_RV (*produce_fn)(tok_op *op, uint8_t *out, size_t *outlen);

static CK_RV cipher_update(tok_op *op, const uint8_t *in, size_t inlen, uint8_t *out, size_t *outlen)
{
    int n = 0;
    if (inlen > INT32_MAX)
        return CKR_DATA_LEN_RANGE;
    if (op->d->mc == M_AES_CTR && inlen > op->ctr_room)
        return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
    if (op->gctx) {
        *outlen = 0;
        return !inlen || tok_gcm_update(op->gcm, op->gctx, out, outlen, in, inlen) ? CKR_OK : CKR_FUNCTION_FAILED;
    }
    if (inlen && !EVP_CipherUpdate(op->cctx, out, &n, in, (int)inlen))
        return CKR_FUNCTION_FAILED;
    if (op->d->mc == M_AES_CTR && op->ctr_room != UINT64_MAX)
        op->ctr_room -= inlen;
    *outlen = (size_t)n;
    return CKR_OK;
}

static CK_RV cipher_final(tok_op *op, uint8_t *out, size_t *outlen)
{
    int n = 0;
    if (op->d->mc == M_AES_GCM && op->kind == TOK_OP_DECRYPT) {
        /* op->buf holds ciphertext || tag */
        size_t ctlen = op->blen - op->taglen;
        size_t got, last = 0;
        if (op->gctx ? !tok_gcm_tag(op->gcm, op->gctx, false, op->buf + ctlen, op->taglen)
                     : !EVP_CIPHER_CTX_ctrl(op->cctx, EVP_CTRL_GCM_SET_TAG, (int)op->taglen, op->buf + ctlen))
            return CKR_FUNCTION_FAILED;
        if (cipher_update(op, op->buf, ctlen, out, &got) != CKR_OK)
            return CKR_FUNCTION_FAILED;
        if (op->gctx ? !tok_gcm_final(op->gcm, op->gctx, out + got, &last)
                     : !EVP_DecryptFinal_ex(op->cctx, out + got, &n)) {
            OPENSSL_cleanse(out, got);
            return CKR_ENCRYPTED_DATA_INVALID;
        }
        *outlen = got + last + (size_t)n;
        return CKR_OK;
    }
    if (op->gctx) { /* encrypt: the tag after the last bytes */
        if (!tok_gcm_final(op->gcm, op->gctx, out, outlen) ||
            !tok_gcm_tag(op->gcm, op->gctx, true, out + *outlen, op->taglen))
            return CKR_FUNCTION_FAILED;
        *outlen += op->taglen;
        return CKR_OK;
    }
    if (!EVP_CipherFinal_ex(op->cctx, out, &n))
        return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_INVALID : CKR_FUNCTION_FAILED;
    *outlen = (size_t)n;
    if (op->d->mc == M_AES_GCM) { /* encrypt: append the tag */
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
    if (op->d->mc == M_AES_GCM && op->kind == TOK_OP_DECRYPT) {
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

/* Single-part RSA: PKCS#1 v1.5, raw, PSS on a hash, OAEP. */
static CK_RV produce_rsa(tok_op *op, uint8_t *out, size_t *outlen)
{
    EVP_PKEY_CTX *ctx = pkey_ctx(op);
    size_t n = op->key->size_bytes;
    uint8_t blk[1024];
    const uint8_t *in = op->in;
    size_t inlen = op->inlen;
    int ok = 0;
    CK_RV fail = CKR_FUNCTION_FAILED;

    if (!ctx)
        return CKR_HOST_MEMORY;
    if (op->d->mc == M_RSA_X509 && op->kind != TOK_OP_DECRYPT) {
        in = x509_block(op, in, inlen, blk);
        inlen = op->key->size_bytes;
        fail = CKR_DATA_INVALID; /* raw RSA refuses a block that is not below the modulus */
    }
    switch (op->kind) {
    case TOK_OP_ENCRYPT:
        ok = EVP_PKEY_encrypt_init(ctx) == 1 && rsa_setup(op, ctx) && EVP_PKEY_encrypt(ctx, out, &n, in, inlen) == 1;
        break;
    case TOK_OP_DECRYPT:
        fail = CKR_ENCRYPTED_DATA_INVALID;
        ok = EVP_PKEY_decrypt_init(ctx) == 1 && rsa_setup(op, ctx) && EVP_PKEY_decrypt(ctx, out, &n, in, inlen) == 1;
        break;
    default:
        ok = EVP_PKEY_sign_init(ctx) == 1 && rsa_setup(op, ctx) && EVP_PKEY_sign(ctx, out, &n, in, inlen) == 1;
        break;
    }
    EVP_PKEY_CTX_free(ctx);
    OPENSSL_cleanse(blk, sizeof(blk));
    if (!ok)
        return fail;
    *outlen = n;
    return CKR_OK;
}

static CK_RV produce_sign(tok_op *op, uint8_t *out, size_t *outlen, bool oneshot)
{
    uint8_t der[200];
    size_t n = sizeof(der);
    int ok;

    switch (op->d->mc) {
    case M_HMAC:
    case M_CMAC: {
        uint8_t full[64];
        ok = (!oneshot || !op->inlen || EVP_MAC_update(op->mac, op->in, op->inlen)) &&
             EVP_MAC_final(op->mac, full, &n, sizeof(full)) && n >= sig_len(op);
        if (ok) {
            n = sig_len(op); /* _GENERAL: the leading bytes */
            memcpy(out, full, n);
        }
        OPENSSL_cleanse(full, sizeof(full));
        *outlen = n;
        return ok ? CKR_OK : CKR_FUNCTION_FAILED;
    }
    case M_DIGEST: {
        unsigned int dl = 0;
        if (op->dctx)
            ok = (!oneshot || tok_dgst_update(op->dgst, op->dctx, op->in, op->inlen)) &&
                 tok_dgst_final(op->dgst, op->dctx, out, outlen);
        else if ((ok = (!oneshot || !op->inlen || EVP_DigestUpdate(op->mdctx, op->in, op->inlen)) &&
                       EVP_DigestFinal_ex(op->mdctx, out, &dl)))
            *outlen = dl;
        return ok ? CKR_OK : CKR_FUNCTION_FAILED;
    }
    case M_RSA_PKCS_HASH:
    case M_RSA_PSS_HASH:
        n = op->key->size_bytes;
        ok = oneshot ? EVP_DigestSign(op->mdctx, out, &n, op->in, op->inlen) : EVP_DigestSignFinal(op->mdctx, out, &n);
        *outlen = n;
        return ok == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    case M_ECDSA_HASH:
        ok = oneshot ? EVP_DigestSign(op->mdctx, der, &n, op->in, op->inlen) : EVP_DigestSignFinal(op->mdctx, der, &n);
        break;
    case M_ECDSA: {
        EVP_PKEY_CTX *ctx = pkey_ctx(op);
        ok = ctx && EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_sign(ctx, der, &n, op->in, op->inlen) == 1;
        EVP_PKEY_CTX_free(ctx);
        break;
    }
    case M_EDDSA: {
        EVP_MD_CTX *mc = EVP_MD_CTX_new();
        n = sig_len(op);
        ok = mc && EVP_DigestSignInit_ex(mc, NULL, NULL, ks_libctx(), NULL, op->key->pkey, NULL) == 1 &&
             EVP_DigestSign(mc, out, &n, oneshot ? op->in : op->buf, oneshot ? op->inlen : op->blen) == 1;
        EVP_MD_CTX_free(mc);
        *outlen = n;
        return ok ? CKR_OK : CKR_FUNCTION_FAILED;
    }
    default: return produce_rsa(op, out, outlen);
    }
    if (ok != 1)
        return CKR_FUNCTION_FAILED;
    *outlen = 2 * op->key->size_bytes;
    return tok_ecsig_to_raw(der, n, op->key->size_bytes, out) ? CKR_OK : CKR_FUNCTION_FAILED;
}

static CK_RV produce_oneshot(tok_op *op, uint8_t *out, size_t *outlen)
{
    if (is_cipher(op->d->mc))
        return produce_cipher_oneshot(op, out, outlen);
    if (is_rsa(op->d->mc) && op->kind != TOK_OP_SIGN)
        return produce_rsa(op, out, outlen);
    return produce_sign(op, out, outlen, true);
}

static CK_RV produce_final(tok_op *op, uint8_t *out, size_t *outlen)
{
    if (is_cipher(op->d->mc))
        return cipher_final(op, out, outlen);
    return produce_sign(op, out, outlen, false);
}

static CK_RV deliver_(tok_op *op, produce_fn produce, size_t bound, uint8_t *out, CK_ULONG *outlen);

/* The size-query protocol around a producer; bound >= the real length. */
static CK_RV deliver(tok_op *op, produce_fn produce, size_t bound, uint8_t *out, CK_ULONG *outlen)
{
    return tok_secmem_rv(deliver_(op, produce, bound, out, outlen));
}

static CK_RV deliver_(tok_op *op, produce_fn produce, size_t bound, uint8_t *out, CK_ULONG *outlen)
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

/* Input length rules of single-part RSA and raw ECDSA/PSS. */
static CK_RV check_single_input(tok_op *op, size_t inlen)
{
    if (!single_part(op->d->mc))
        return CKR_OK;
    size_t k = op->key->size_bytes;
    switch (op->d->mc) {
    case M_RSA_PKCS:
        if (op->kind == TOK_OP_DECRYPT)
            return inlen == k ? CKR_OK : CKR_ENCRYPTED_DATA_LEN_RANGE;
        return inlen <= k - 11 ? CKR_OK : CKR_DATA_LEN_RANGE;
    case M_RSA_X509:
        if (op->kind == TOK_OP_DECRYPT)
            return inlen == k ? CKR_OK : CKR_ENCRYPTED_DATA_LEN_RANGE;
        return inlen <= k ? CKR_OK : CKR_DATA_LEN_RANGE;
    case M_RSA_OAEP: {
        size_t h = tok_md_size(op->pss_md);
        if (op->kind == TOK_OP_DECRYPT)
            return inlen == k ? CKR_OK : CKR_ENCRYPTED_DATA_LEN_RANGE;
        return inlen + 2 * h + 2 <= k ? CKR_OK : CKR_DATA_LEN_RANGE;
    }
    case M_RSA_PSS: return inlen == tok_md_size(op->pss_md) ? CKR_OK : CKR_DATA_LEN_RANGE;
    /* A raw digest of up to 1024 bits (PKCS#11 3.0, 2.3.6), truncated to the order's length. */
    case M_ECDSA: return inlen > 0 && inlen <= 128 ? CKR_OK : CKR_DATA_LEN_RANGE;
    default: return CKR_OK;
    }
}

/* ---- public operations ---------------------------------------------------- */

CK_RV tok_op_oneshot(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    size_t bound;
    CK_RV rv;

    if (!op || !outlen || (!in && inlen))
        return CKR_ARGUMENTS_BAD;
    if (op->kind == TOK_OP_VERIFY || op->recover)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (op->aead)
        return tok_aead_op_oneshot(op->aead, in, inlen, out, outlen);
    /* OpenSSL takes an int: longer input is refused before a size query
     * could overflow the output's bound (an update refuses it too). */
    if (is_cipher(op->d->mc) && inlen > INT32_MAX)
        return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
    switch (op->d->mc) {
    case M_CBC_PAD:
        if (op->kind == TOK_OP_DECRYPT) {
            if (inlen == 0 || inlen % op->bs)
                return CKR_ENCRYPTED_DATA_LEN_RANGE;
            bound = inlen;
        } else {
            bound = (inlen / op->bs + 1) * op->bs;
        }
        break;
    case M_CBC:
    case M_ECB:
        if (inlen % op->bs)
            return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
        bound = inlen;
        break;
    case M_AES_CTR:
        if (inlen > op->ctr_room)
            return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
        bound = inlen;
        break;
    case M_AES_GCM:
        if (op->kind == TOK_OP_DECRYPT) {
            if (inlen < op->taglen)
                return CKR_ENCRYPTED_DATA_LEN_RANGE;
            bound = inlen - op->taglen;
        } else {
            bound = inlen + op->taglen;
        }
        break;
    default:
        if ((rv = check_single_input(op, inlen)) != CKR_OK)
            return rv;
        bound = sig_len(op);
        break;
    }
    op->in = in;
    op->inlen = inlen;
    rv = deliver(op, produce_oneshot, bound, out, outlen);
    op->in = NULL;
    op->inlen = 0;
    return rv;
}

/* Append to a growing buffer (cleansed when it moves). */
static CK_RV append(uint8_t **buf, size_t *len, size_t *cap, const uint8_t *in, size_t inlen)
{
    if (inlen > SIZE_MAX / 2 - *len)
        return CKR_HOST_MEMORY; /* a length no buffer can have */
    if (*len + inlen > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < *len + inlen)
            ncap *= 2;
        uint8_t *nb = OPENSSL_malloc(ncap);
        if (!nb)
            return CKR_HOST_MEMORY;
        if (*buf) {
            memcpy(nb, *buf, *len);
            OPENSSL_clear_free(*buf, *len); /* only the bytes used held anything */
        }
        *buf = nb;
        *cap = ncap;
    }
    if (inlen)
        memcpy(*buf + *len, in, inlen);
    *len += inlen;
    return CKR_OK;
}

static CK_RV buf_append(tok_op *op, const uint8_t *in, size_t inlen)
{
    return append(&op->buf, &op->blen, &op->bcap, in, inlen);
}

/* The operation can no longer be saved: what it kept goes. */
static void stop_keeping(tok_op *op)
{
    op->unsaveable = true;
    if (op->fed)
        OPENSSL_clear_free(op->fed, op->fedlen);
    op->fed = NULL;
    op->fedlen = op->fedcap = 0;
}

/* A digest or MAC keeps what it was fed, for C_GetOperationState; past the
 * bound (or out of memory) it is no longer saveable, and the update goes on. */
static CK_RV keep_fed(tok_op *op, const uint8_t *in, size_t inlen)
{
    if (!op->unsaveable &&
        (op->fedlen + inlen > TOK_OPSTATE_MAX_DATA || append(&op->fed, &op->fedlen, &op->fedcap, in, inlen) != CKR_OK))
        stop_keeping(op);
    return CKR_OK;
}

CK_RV tok_op_update(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    tok_mclass mc;
    if (!op || (!in && inlen))
        return CKR_ARGUMENTS_BAD;
    /* A part for an operation that cannot take parts: a recovering one (no
     * operation the *Update functions serve is active:
     * CKR_OPERATION_NOT_INITIALIZED); one whose single-part result waits
     * for a bigger buffer, or of a single-part mechanism (an operation that
     * takes no parts is active: CKR_OPERATION_ACTIVE, as the *Update
     * functions list it since PKCS#11 3.1, and as SoftHSMv2 answers). */
    if (op->recover)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (op->has_pend)
        return CKR_OPERATION_ACTIVE;
    if (op->aead)
        return tok_aead_op_update(op->aead, in, inlen, out, outlen);
    mc = op->d->mc;
    if (single_part(mc))
        return CKR_OPERATION_ACTIVE;
    switch (mc) {
    case M_HMAC:
    case M_CMAC: return EVP_MAC_update(op->mac, in, inlen) ? keep_fed(op, in, inlen) : CKR_FUNCTION_FAILED;
    case M_DIGEST:
        return (op->dctx ? tok_dgst_update(op->dgst, op->dctx, in, inlen) : EVP_DigestUpdate(op->mdctx, in, inlen))
                   ? keep_fed(op, in, inlen)
                   : CKR_FUNCTION_FAILED;
    case M_RSA_PKCS_HASH:
    case M_RSA_PSS_HASH:
    case M_ECDSA_HASH:
        if (op->kind == TOK_OP_SIGN)
            return EVP_DigestSignUpdate(op->mdctx, in, inlen) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
        return EVP_DigestVerifyUpdate(op->mdctx, in, inlen) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    case M_EDDSA: return inlen > EDDSA_PARTS_MAX - op->blen ? CKR_DATA_LEN_RANGE : buf_append(op, in, inlen);
    default: break;
    }
    /* Ciphers: exact output length first. */
    if (!outlen)
        return CKR_ARGUMENTS_BAD;
    size_t need, total = op->held + inlen;
    if (mc == M_AES_GCM && op->kind == TOK_OP_DECRYPT) {
        /* The tag is at the end: everything comes out at final. A size query takes nothing in. */
        *outlen = 0;
        return out ? buf_append(op, in, inlen) : CKR_OK;
    }
    if (mc == M_AES_CTR && inlen > op->ctr_room)
        return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
    if (mc == M_AES_GCM || mc == M_AES_CTR)
        need = inlen;
    else if (mc == M_CBC_PAD && op->kind == TOK_OP_DECRYPT)
        need = total ? (total - 1) / op->bs * op->bs : 0; /* the last block is held back for the padding */
    else
        need = total / op->bs * op->bs;
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
    if (op->recover)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (op->aead)
        return tok_aead_op_final(op->aead, out, outlen);
    switch (op->d->mc) {
    case M_CBC_PAD:
        if (op->kind == TOK_OP_DECRYPT && op->held != op->bs && !op->has_pend)
            return CKR_ENCRYPTED_DATA_LEN_RANGE;
        bound = op->bs;
        break;
    case M_CBC:
    case M_ECB:
        if (op->held)
            return op->kind == TOK_OP_DECRYPT ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
        bound = 0;
        break;
    case M_AES_CTR: bound = 0; break;
    case M_AES_GCM:
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
            return CKR_OPERATION_NOT_INITIALIZED; /* C_VerifyFinal is tok_op_verify_final */
        if (single_part(op->d->mc))
            return CKR_OPERATION_ACTIVE; /* as in tok_op_update */
        bound = sig_len(op);
        break;
    }
    return deliver(op, produce_final, bound, out, outlen);
}

CK_RV tok_op_digest_key(tok_op *op, const tok_key *key)
{
    if (!op || !key || op->kind != TOK_OP_DIGEST || op->has_pend)
        return CKR_ARGUMENTS_BAD;
    if (key->cls != CKO_SECRET_KEY || !key->secret)
        return CKR_KEY_INDIGESTIBLE;
    stop_keeping(op); /* a key's value never goes into a saved state */
    op->took_key = true;
    return (op->dctx ? tok_dgst_update(op->dgst, op->dctx, key->secret, key->secret_len)
                     : EVP_DigestUpdate(op->mdctx, key->secret, key->secret_len))
               ? CKR_OK
               : CKR_FUNCTION_FAILED;
}

static CK_RV verify_common(tok_op *op, const uint8_t *in, CK_ULONG inlen, const uint8_t *sig, CK_ULONG siglen,
                           bool oneshot)
{
    uint8_t der[TOK_ECSIG_DER_MAX];
    size_t derlen = 0;
    int ok = 0;
    CK_RV rv;

    if (!op || !sig || (oneshot && !in && inlen))
        return CKR_ARGUMENTS_BAD;
    if (op->kind != TOK_OP_VERIFY || op->recover)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (siglen != sig_len(op))
        return CKR_SIGNATURE_LEN_RANGE;
    if (!oneshot && single_part(op->d->mc))
        return CKR_OPERATION_ACTIVE; /* as in tok_op_update */
    if (oneshot && (rv = check_single_input(op, inlen)) != CKR_OK)
        return rv;
    switch (op->d->mc) {
    case M_HMAC:
    case M_CMAC: {
        uint8_t mac[64];
        size_t n = 0;
        ok = (!oneshot || !inlen || EVP_MAC_update(op->mac, in, inlen)) &&
             EVP_MAC_final(op->mac, mac, &n, sizeof(mac)) && n >= siglen;
        if (!ok)
            return CKR_FUNCTION_FAILED;
        ok = CRYPTO_memcmp(mac, sig, siglen) == 0;
        OPENSSL_cleanse(mac, sizeof(mac));
        return ok ? CKR_OK : CKR_SIGNATURE_INVALID;
    }
    case M_RSA_PKCS_HASH:
    case M_RSA_PSS_HASH:
        ok = oneshot ? EVP_DigestVerify(op->mdctx, sig, siglen, in, inlen) : EVP_DigestVerifyFinal(op->mdctx, sig, siglen);
        return ok == 1 ? CKR_OK : CKR_SIGNATURE_INVALID;
    case M_ECDSA_HASH:
        if (!(derlen = tok_ecsig_to_der(sig, op->key->size_bytes, der)))
            return CKR_SIGNATURE_INVALID;
        ok = oneshot ? EVP_DigestVerify(op->mdctx, der, derlen, in, inlen) : EVP_DigestVerifyFinal(op->mdctx, der, derlen);
        return ok == 1 ? CKR_OK : CKR_SIGNATURE_INVALID;
    case M_EDDSA: {
        EVP_MD_CTX *mc = EVP_MD_CTX_new();
        ok = mc && EVP_DigestVerifyInit_ex(mc, NULL, NULL, ks_libctx(), NULL, op->key->pkey, NULL) == 1 &&
             EVP_DigestVerify(mc, sig, siglen, oneshot ? in : op->buf, oneshot ? inlen : op->blen) == 1;
        EVP_MD_CTX_free(mc);
        return ok ? CKR_OK : CKR_SIGNATURE_INVALID;
    }
    case M_ECDSA:
    case M_RSA_PKCS:
    case M_RSA_PSS:
    case M_RSA_X509: {
        EVP_PKEY_CTX *ctx = pkey_ctx(op);
        uint8_t blk[1024];
        if (!ctx)
            return CKR_HOST_MEMORY;
        if (op->d->mc == M_ECDSA) {
            if ((derlen = tok_ecsig_to_der(sig, op->key->size_bytes, der)))
                ok = EVP_PKEY_verify_init(ctx) == 1 && EVP_PKEY_verify(ctx, der, derlen, in, inlen) == 1;
        } else if (op->d->mc == M_RSA_X509) {
            /* Recover the block and compare with the (left-padded) data. */
            size_t n = sizeof(blk);
            uint8_t want[1024];
            const uint8_t *w = x509_block(op, in, inlen, want);
            ok = EVP_PKEY_verify_recover_init(ctx) == 1 && rsa_setup(op, ctx) &&
                 EVP_PKEY_verify_recover(ctx, blk, &n, sig, siglen) == 1 && n == op->key->size_bytes &&
                 CRYPTO_memcmp(blk, w, n) == 0;
        } else if (op->d->mc == M_RSA_PKCS) {
            /* Recover and compare: EVP_PKEY_verify refuses empty data, which
             * C_Sign accepts (PKCS#1 v1.5 signs any data up to k - 11 bytes). */
            size_t n = sizeof(blk);
            ok = EVP_PKEY_verify_recover_init(ctx) == 1 && rsa_setup(op, ctx) &&
                 EVP_PKEY_verify_recover(ctx, blk, &n, sig, siglen) == 1 && n == inlen &&
                 (!n || CRYPTO_memcmp(blk, in, n) == 0);
        } else {
            ok = EVP_PKEY_verify_init(ctx) == 1 && rsa_setup(op, ctx) &&
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

/* ---- signatures with message recovery (CKM_RSA_PKCS, CKM_RSA_X_509) -------- */

/* C_VerifyRecover's producer: what the signature holds (PKCS#1 v1.5: the data
 * that was signed; raw RSA: the whole block, k bytes). */
static CK_RV produce_recovered(tok_op *op, uint8_t *out, size_t *outlen)
{
    EVP_PKEY_CTX *ctx = pkey_ctx(op);
    uint8_t blk[1024];
    size_t n = sizeof(blk);
    int ok;

    if (!ctx)
        return CKR_HOST_MEMORY;
    ok = EVP_PKEY_verify_recover_init(ctx) == 1 && rsa_setup(op, ctx) &&
         EVP_PKEY_verify_recover(ctx, blk, &n, op->in, op->inlen) == 1 &&
         (op->d->mc != M_RSA_X509 || n == op->key->size_bytes);
    EVP_PKEY_CTX_free(ctx);
    if (ok) {
        memcpy(out, blk, n);
        *outlen = n;
    }
    OPENSSL_cleanse(blk, sizeof(blk));
    return ok ? CKR_OK : CKR_SIGNATURE_INVALID;
}

CK_RV tok_op_recover(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    bool sign;
    size_t k;
    CK_RV rv;

    if (!op || !outlen || (!in && inlen))
        return CKR_ARGUMENTS_BAD;
    if (!op->recover)
        return CKR_OPERATION_NOT_INITIALIZED;
    sign = op->kind == TOK_OP_SIGN;
    k = op->key->size_bytes;
    /* Signing: the data's length rules of C_Sign; verifying: a k-byte signature. */
    rv = sign ? check_single_input(op, inlen) : inlen == k ? CKR_OK : CKR_SIGNATURE_LEN_RANGE;
    if (rv != CKR_OK)
        return rv;
    op->in = in;
    op->inlen = inlen;
    /* Recovered PKCS#1 v1.5 data is at most k - 11 bytes: the bound a size query gets. */
    rv = deliver(op, sign ? produce_rsa : produce_recovered, sign || op->d->mc == M_RSA_X509 ? k : k - 11, out, outlen);
    op->in = NULL;
    op->inlen = 0;
    return rv;
}

/* ---- what C_GetOperationState saves (tok_opstate.c) ----------------------- */

void tok_op_set_key_handle(tok_op *op, uint64_t h) { op->key_handle = h; }

CK_RV tok_op_save(const tok_op *op, tok_op_saved *out)
{
    tok_mclass mc = op->d->mc;

    if (op->recover || op->unsaveable || op->has_pend || (mc != M_DIGEST && mc != M_HMAC && mc != M_CMAC))
        return CKR_STATE_UNSAVEABLE;
    *out = (tok_op_saved){.kind = op->kind,
                          .mech = op->d->type,
                          .maclen = op->d->general ? op->maclen : 0,
                          .key_handle = op->kind == TOK_OP_DIGEST ? 0 : op->key_handle,
                          .fed = op->fed,
                          .fedlen = op->fedlen};
    return CKR_OK;
}
