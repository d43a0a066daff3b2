/* p11mk token layer: AEAD on OpenSSL 3 EVP.
 *
 *   - AES-CCM (CK_CCM_PARAMS) and ChaCha20-Poly1305 (RFC 8439,
 *     CK_SALSA20_CHACHA20_POLY1305_PARAMS) for C_Encrypt/C_Decrypt and the
 *     multi-part calls, the tag after the data as for AES-GCM (tok_op.c
 *     hands these two mechanisms to this file);
 *   - the PKCS#11 3.0 message-based functions for AES-GCM, AES-CCM and
 *     ChaCha20-Poly1305, the tag in the per-message parameters.
 *
 * One engine does the work for both (aead_*): start (key, IV, associated
 * data; CCM also needs the payload length and the tag length before the
 * data), update (GCM and ChaCha20-Poly1305 take the data in pieces), last
 * (the rest of the data and the tag). OpenSSL's CCM takes the payload in a
 * single call, so CCM input is held until the last part; so is every
 * decryption's, so that no plaintext leaves the token before its tag has
 * been checked. Output lengths are known before any work: a size query or
 * a short buffer never consumes input, generates an IV or moves a counter. */
#include "tok_crypto.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* PKCS#11 3.0 parameters (not in p11-kit 0.24's header). ulNonceLen counts
 * bytes, as the name says (NSS and Kryoptic read it so too). */
typedef struct {
    CK_ULONG ulDataLen;
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_BYTE_PTR pAAD;
    CK_ULONG ulAADLen;
    CK_ULONG ulMACLen;
} ccm_params;

typedef struct {
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_BYTE_PTR pAAD;
    CK_ULONG ulAADLen;
} chacha_params;

typedef struct {
    CK_BYTE_PTR pIv;
    CK_ULONG ulIvLen;
    CK_ULONG ulIvFixedBits;
    CK_ULONG ivGenerator;
    CK_BYTE_PTR pTag;
    CK_ULONG ulTagBits;
} gcm_msg_params;

typedef struct {
    CK_ULONG ulDataLen;
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_ULONG ulNonceFixedBits;
    CK_ULONG nonceGenerator;
    CK_BYTE_PTR pMAC;
    CK_ULONG ulMACLen;
} ccm_msg_params;

typedef struct {
    CK_BYTE_PTR pNonce;
    CK_ULONG ulNonceLen;
    CK_BYTE_PTR pTag;
} chacha_msg_params;

/* One message's parameters, whatever the mechanism's structure. */
typedef struct {
    uint8_t *iv; /* IV or nonce: the caller's (a generated one is written there) */
    size_t ivlen;
    size_t fixed_bits; /* leading bits of iv kept when the token generates the rest */
    CK_ULONG gen;      /* CKG_* */
    uint8_t *tag;      /* where the tag goes or comes from when it is not in the data */
    size_t taglen;
    const uint8_t *aad;
    size_t aadlen;
    size_t datalen; /* CCM: the payload's length, fixed in advance */
} aead_params;

/* ---- parameters ----------------------------------------------------------- */

/* The rules of each mechanism: CCM nonces of 7..13 bytes, MACs of 4..16
 * even bytes, a payload that fits L = 15 - nonce length bytes; RFC 8439's
 * 12-byte nonce (OpenSSL has no 8-byte original ChaCha20-Poly1305) and
 * 16-byte tag; GCM IVs of 1..128 bytes (OpenSSL's most; PKCS#11 allows
 * more), tags of 4..16 bytes. */
static CK_RV check_params(tok_mclass mc, const aead_params *p)
{
    if (!p->iv || (!p->aad && p->aadlen) || p->aadlen > INT_MAX || p->fixed_bits > p->ivlen * 8)
        return CKR_MECHANISM_PARAM_INVALID;
    switch (mc) {
    case M_AES_CCM: {
        size_t l = 15 - p->ivlen;
        if (p->ivlen < 7 || p->ivlen > 13 || p->taglen < 4 || p->taglen > 16 || p->taglen % 2 || p->datalen > INT_MAX ||
            (l < 8 && (uint64_t)p->datalen >> (8 * l)))
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    }
    case M_CHACHA_POLY: return p->ivlen == 12 && p->taglen == 16 ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
    default:
        return p->ivlen >= 1 && p->ivlen <= TOK_GCM_IV_MAX && p->taglen >= 4 && p->taglen <= 16
                   ? CKR_OK
                   : CKR_MECHANISM_PARAM_INVALID;
    }
}

/* C_EncryptInit's parameter of CKM_AES_CCM and CKM_CHACHA20_POLY1305. */
static CK_RV single_params(tok_mclass mc, const CK_MECHANISM *m, aead_params *p)
{
    memset(p, 0, sizeof(*p));
    if (mc == M_AES_CCM) {
        const ccm_params *c = m->pParameter;
        if (!c || m->ulParameterLen != sizeof(*c))
            return CKR_MECHANISM_PARAM_INVALID;
        *p = (aead_params){.iv = c->pNonce,
                           .ivlen = c->ulNonceLen,
                           .taglen = c->ulMACLen,
                           .aad = c->pAAD,
                           .aadlen = c->ulAADLen,
                           .datalen = c->ulDataLen};
    } else {
        const chacha_params *c = m->pParameter;
        if (!c || m->ulParameterLen != sizeof(*c))
            return CKR_MECHANISM_PARAM_INVALID;
        *p =
            (aead_params){.iv = c->pNonce, .ivlen = c->ulNonceLen, .taglen = 16, .aad = c->pAAD, .aadlen = c->ulAADLen};
    }
    return check_params(mc, p);
}

/* The size of a message's parameter. */
static size_t msg_size(tok_mclass mc)
{
    return mc == M_AES_GCM   ? sizeof(gcm_msg_params)
           : mc == M_AES_CCM ? sizeof(ccm_msg_params)
                             : sizeof(chacha_msg_params);
}

/* A message's parameter (C_EncryptMessage, ..Begin, ..Next). */
static CK_RV msg_params(tok_mclass mc, void *param, CK_ULONG plen, const uint8_t *aad, CK_ULONG aadlen, aead_params *p)
{
    memset(p, 0, sizeof(*p));
    if (!param)
        return CKR_MECHANISM_PARAM_INVALID;
    if (mc == M_AES_GCM) {
        const gcm_msg_params *g = param;
        if (plen != sizeof(*g) || g->ulTagBits % 8)
            return CKR_MECHANISM_PARAM_INVALID;
        *p = (aead_params){.iv = g->pIv,
                           .ivlen = g->ulIvLen,
                           .fixed_bits = g->ulIvFixedBits,
                           .gen = g->ivGenerator,
                           .tag = g->pTag,
                           .taglen = g->ulTagBits / 8};
    } else if (mc == M_AES_CCM) {
        const ccm_msg_params *c = param;
        if (plen != sizeof(*c))
            return CKR_MECHANISM_PARAM_INVALID;
        *p = (aead_params){.iv = c->pNonce,
                           .ivlen = c->ulNonceLen,
                           .fixed_bits = c->ulNonceFixedBits,
                           .gen = c->nonceGenerator,
                           .tag = c->pMAC,
                           .taglen = c->ulMACLen,
                           .datalen = c->ulDataLen};
    } else {
        const chacha_msg_params *c = param; /* no IV generators for ChaCha20 */
        if (plen != sizeof(*c))
            return CKR_MECHANISM_PARAM_INVALID;
        *p = (aead_params){.iv = c->pNonce, .ivlen = c->ulNonceLen, .tag = c->pTag, .taglen = 16};
    }
    p->aad = aad;
    p->aadlen = aadlen;
    return p->tag ? check_params(mc, p) : CKR_MECHANISM_PARAM_INVALID;
}

/* ---- the engine ------------------------------------------------------------ */

typedef struct {
    EVP_CIPHER_CTX *c;
    const EVP_CIPHER *cipher;
    tok_key *key;
    tok_mclass mc;
    bool enc;
    CK_RV bad_tag; /* what a tag that does not match is */
} aead;

static CK_RV aead_setup(aead *e, const tok_mech_desc *d, bool enc, tok_key *key, CK_RV bad_tag)
{
    e->mc = d->mc;
    e->enc = enc;
    e->bad_tag = bad_tag;
    e->cipher = tok_mech_cipher(d, key->secret_len);
    if (!e->cipher)
        return CKR_KEY_SIZE_RANGE;
    e->c = EVP_CIPHER_CTX_new();
    if (!e->c)
        return CKR_HOST_MEMORY;
    e->key = tok_key_ref(key);
    return CKR_OK;
}

static void aead_cleanup(aead *e)
{
    EVP_CIPHER_CTX_free(e->c);
    tok_key_unref(e->key);
}

/* Key, IV and associated data; CCM: the tag's and the payload's lengths. */
static CK_RV aead_start(aead *e, const aead_params *p)
{
    bool ccm = e->mc == M_AES_CCM;
    int n;

    EVP_CIPHER_CTX_reset(e->c);
    /* The cipher's own IV length (12 for GCM and ChaCha20-Poly1305): key and
     * IV in one call, as most callers use it. */
    if (!ccm && (size_t)EVP_CIPHER_get_iv_length(e->cipher) == p->ivlen)
        return EVP_CipherInit_ex2(e->c, e->cipher, e->key->secret, p->iv, e->enc, NULL) &&
                       (!p->aadlen || EVP_CipherUpdate(e->c, NULL, &n, p->aad, (int)p->aadlen))
                   ? CKR_OK
                   : CKR_FUNCTION_FAILED;
    return EVP_CipherInit_ex2(e->c, e->cipher, NULL, NULL, e->enc, NULL) &&
                   EVP_CIPHER_CTX_ctrl(e->c, EVP_CTRL_AEAD_SET_IVLEN, (int)p->ivlen, NULL) &&
                   (!ccm || EVP_CIPHER_CTX_ctrl(e->c, EVP_CTRL_AEAD_SET_TAG, (int)p->taglen, NULL)) &&
                   EVP_CipherInit_ex2(e->c, NULL, e->key->secret, p->iv, e->enc, NULL) &&
                   (!ccm || EVP_CipherUpdate(e->c, NULL, &n, NULL, (int)p->datalen)) &&
                   (!p->aadlen || EVP_CipherUpdate(e->c, NULL, &n, p->aad, (int)p->aadlen))
               ? CKR_OK
               : CKR_FUNCTION_FAILED;
}

/* A piece of the data (GCM, ChaCha20-Poly1305): as many bytes out as in. */
static CK_RV aead_update(aead *e, const uint8_t *in, size_t inlen, uint8_t *out)
{
    int n = 0;
    if (inlen > INT_MAX)
        return e->enc ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
    return !inlen || (EVP_CipherUpdate(e->c, out, &n, in, (int)inlen) && (size_t)n == inlen) ? CKR_OK
                                                                                             : CKR_FUNCTION_FAILED;
}

/* The rest of the data, then the tag: written to tag (encryption) or
 * checked against it (decryption: e->bad_tag, the output cleansed). */
static CK_RV aead_last(aead *e, const uint8_t *in, size_t inlen, uint8_t *out, uint8_t *tag, size_t taglen)
{
    uint8_t none[1];
    int n = 0, f = 0;
    CK_RV fail = e->enc ? CKR_FUNCTION_FAILED : e->bad_tag;

    if (inlen > INT_MAX)
        return e->enc ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
    if (!e->enc && !EVP_CIPHER_CTX_ctrl(e->c, EVP_CTRL_AEAD_SET_TAG, (int)taglen, tag))
        return CKR_FUNCTION_FAILED;
    /* CCM computes its tag in the payload's one call, even an empty one
     * (which needs buffers all the same). */
    if (((inlen || e->mc == M_AES_CCM) &&
         !EVP_CipherUpdate(e->c, inlen ? out : none, &n, inlen ? in : none, (int)inlen)) ||
        !EVP_CipherFinal_ex(e->c, inlen ? out + n : none, &f)) {
        if (inlen)
            OPENSSL_cleanse(out, inlen);
        return fail;
    }
    if ((size_t)(n + f) != inlen || (e->enc && !EVP_CIPHER_CTX_ctrl(e->c, EVP_CTRL_AEAD_GET_TAG, (int)taglen, tag)))
        return CKR_FUNCTION_FAILED;
    return CKR_OK;
}

/* Input held until the last part. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} held;

static CK_RV held_add(held *h, const uint8_t *in, size_t inlen)
{
    if (inlen > INT_MAX - h->len)
        return CKR_DATA_LEN_RANGE;
    if (h->len + inlen > h->cap) {
        size_t cap = h->cap ? h->cap : 256;
        while (cap < h->len + inlen)
            cap *= 2;
        uint8_t *np = OPENSSL_clear_realloc(h->p, h->cap, cap); /* the old copy cleansed */
        if (!np)
            return CKR_HOST_MEMORY;
        h->p = np;
        h->cap = cap;
    }
    if (inlen)
        memcpy(h->p + h->len, in, inlen);
    h->len += inlen;
    return CKR_OK;
}

static void held_clear(held *h)
{
    OPENSSL_clear_free(h->p, h->cap);
    memset(h, 0, sizeof(*h));
}

/* Free an operation (obj, size bytes) holding an engine and input. */
static void aead_drop(aead *e, held *h, void *obj, size_t size)
{
    aead_cleanup(e);
    held_clear(h);
    OPENSSL_cleanse(obj, size);
    free(obj);
}

/* The size-query protocol for an output of `need` bytes: CKR_OK to go on
 * (out big enough), or the answer for the caller in *rv. */
static bool sized(uint8_t *out, CK_ULONG *outlen, size_t need, CK_RV *rv)
{
    if (out && *outlen >= need)
        return true;
    *rv = out ? CKR_BUFFER_TOO_SMALL : CKR_OK;
    *outlen = need;
    return false;
}

/* ---- single-part and multi-part CCM and ChaCha20-Poly1305 ------------------ */

struct tok_aead_op {
    aead e;
    size_t taglen;
    size_t datalen; /* CCM: the payload length of the parameters */
    held in;        /* what the last part needs: CCM's payload, decryption's ciphertext and tag */
};

bool tok_aead_single(tok_mclass mc) { return mc == M_AES_CCM || mc == M_CHACHA_POLY; }

void tok_aead_op_free(tok_aead_op *a)
{
    if (a)
        aead_drop(&a->e, &a->in, a, sizeof(*a));
}

CK_RV tok_aead_op_init(const tok_mech_desc *d, bool enc, const CK_MECHANISM *m, tok_key *key, tok_aead_op **out)
{
    aead_params p;
    CK_RV rv = single_params(d->mc, m, &p);
    tok_aead_op *a;

    if (rv != CKR_OK)
        return rv;
    if (!(a = calloc(1, sizeof(*a))))
        return CKR_HOST_MEMORY;
    a->taglen = p.taglen;
    a->datalen = p.datalen;
    rv = aead_setup(&a->e, d, enc, key, CKR_ENCRYPTED_DATA_INVALID);
    if (rv == CKR_OK)
        rv = aead_start(&a->e, &p);
    if (rv != CKR_OK) {
        tok_aead_op_free(a);
        return rv;
    }
    *out = a;
    return CKR_OK;
}

/* Are inlen bytes of input, all of it, the right amount? */
static CK_RV whole_input(const tok_aead_op *a, size_t inlen)
{
    bool ccm = a->e.mc == M_AES_CCM;
    if (a->e.enc)
        return ccm && inlen != a->datalen ? CKR_DATA_LEN_RANGE : CKR_OK;
    return inlen < a->taglen || (ccm && inlen != a->datalen + a->taglen) ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_OK;
}

/* The whole input: encryption appends the tag, decryption checks the one
 * at the end of in. */
static CK_RV op_last(tok_aead_op *a, const uint8_t *in, size_t inlen, uint8_t *out, CK_ULONG *outlen)
{
    size_t body = a->e.enc ? inlen : inlen - a->taglen;
    CK_RV rv = whole_input(a, inlen);

    if (rv != CKR_OK || !sized(out, outlen, a->e.enc ? inlen + a->taglen : body, &rv))
        return rv;
    if (a->e.enc)
        rv = aead_last(&a->e, in, inlen, out, out + inlen, a->taglen);
    else
        rv = aead_last(&a->e, in, body, out, (uint8_t *)in + body, a->taglen);
    if (rv == CKR_OK)
        *outlen = a->e.enc ? inlen + a->taglen : body;
    return rv;
}

CK_RV tok_aead_op_oneshot(tok_aead_op *a, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    return op_last(a, in, inlen, out, outlen);
}

/* ChaCha20-Poly1305 encryption passes the parts through; CCM and every
 * decryption hold them for the final call (0 bytes out now). */
CK_RV tok_aead_op_update(tok_aead_op *a, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    CK_RV rv = CKR_OK;

    if (!outlen)
        return CKR_ARGUMENTS_BAD;
    if (a->e.enc && a->e.mc == M_CHACHA_POLY) {
        if (!sized(out, outlen, inlen, &rv))
            return rv;
        rv = aead_update(&a->e, in, inlen, out);
        if (rv == CKR_OK)
            *outlen = inlen;
        return rv;
    }
    if (inlen > INT_MAX || (a->e.mc == M_AES_CCM && a->in.len + inlen > a->datalen + (a->e.enc ? 0 : a->taglen)))
        return a->e.enc ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE; /* CCM: more than ulDataLen */
    if (!out) {
        *outlen = 0;
        return CKR_OK;
    }
    rv = held_add(&a->in, in, inlen);
    if (rv == CKR_OK)
        *outlen = 0;
    return rv;
}

CK_RV tok_aead_op_final(tok_aead_op *a, uint8_t *out, CK_ULONG *outlen)
{
    CK_RV rv = CKR_OK;

    if (a->e.enc && a->e.mc == M_CHACHA_POLY) {
        if (!sized(out, outlen, a->taglen, &rv))
            return rv;
        rv = aead_last(&a->e, NULL, 0, out, out, a->taglen);
        if (rv == CKR_OK)
            *outlen = a->taglen;
        return rv;
    }
    return op_last(a, a->in.p, a->in.len, out, outlen);
}

/* ---- message-based encryption and decryption ------------------------------- */

struct tok_msg {
    aead e;
    bool busy;       /* a message in parts has begun */
    aead_params cur; /* its parameters (the tag's length, CCM's payload length) */
    held in;         /* its parts so far (CCM, decryption) */
    uint64_t count;  /* IVs generated so far (CKG_GENERATE, _COUNTER, _COUNTER_XOR) */
    uint64_t start;  /* CKG_GENERATE: where its counter starts (random) */
};

CK_RV tok_msg_init(bool decrypt, const CK_MECHANISM *mech, tok_key *key, tok_msg **out)
{
    const tok_mech_desc *d;
    const tok_attrs *ka;
    tok_msg *m;
    CK_RV rv;

    if (!mech || !out)
        return CKR_ARGUMENTS_BAD;
    d = tok_mech_find(mech->mechanism);
    if (!d || !(d->flags & (decrypt ? CKF_MESSAGE_DECRYPT : CKF_MESSAGE_ENCRYPT)))
        return CKR_MECHANISM_INVALID;
    if (!key)
        return CKR_KEY_HANDLE_INVALID;
    ka = tok_key_attrs(key);
    if (key->cls != CKO_SECRET_KEY || !tok_fam_key(d->fam, key->ktype))
        return CKR_KEY_TYPE_INCONSISTENT;
    if (!tok_attrs_get_bool(ka, decrypt ? CKA_DECRYPT : CKA_ENCRYPT, false))
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (!tok_mech_allowed(ka, mech->mechanism))
        return CKR_MECHANISM_INVALID;
    if ((mech->pParameter || mech->ulParameterLen) && (!mech->pParameter || mech->ulParameterLen != msg_size(d->mc)))
        return CKR_MECHANISM_PARAM_INVALID; /* none, or a message's (unused: each message brings its own) */
    if (!(m = calloc(1, sizeof(*m))))
        return CKR_HOST_MEMORY;
    rv = aead_setup(&m->e, d, !decrypt, key, CKR_AEAD_DECRYPT_FAILED);
    if (rv == CKR_OK)
        rv = tok_random((uint8_t *)&m->start, sizeof(m->start));
    if (rv != CKR_OK) {
        tok_msg_free(m);
        return rv;
    }
    *out = m;
    return CKR_OK;
}

void tok_msg_free(tok_msg *m)
{
    if (m)
        aead_drop(&m->e, &m->in, m, sizeof(*m));
}

bool tok_msg_busy(const tok_msg *m) { return m && m->busy; }

/* The IV the caller asked the token to make (encryption only; decryption
 * takes the IV it is given, whatever the generator says). Its first
 * fixed_bits stay as the caller gave them; the rest:
 *   CKG_GENERATE_COUNTER      the number of IVs this operation generated
 *                             before, big-endian (0 first);
 *   CKG_GENERATE_COUNTER_XOR  the caller's bits XOR that number;
 *   CKG_GENERATE              the same count from a random start, the bits
 *                             above its 64 random: no repeat within the
 *                             operation, none to fear across operations;
 *   CKG_GENERATE_RANDOM       random bits, at least 64 of them.
 * A counter never wraps: once the bits it has are used up (2^n IVs for n
 * bits, 2^64 at most), CKR_DATA_LEN_RANGE, as AES-CTR at its limit. */
static CK_RV make_iv(tok_msg *m, aead_params *p)
{
    size_t bits = p->ivlen * 8 - p->fixed_bits, cbits = bits < 64 ? bits : 64;
    uint64_t last = cbits == 64 ? UINT64_MAX : ((uint64_t)1 << cbits) - 1;
    uint8_t g[256];
    CK_RV rv = CKR_OK;

    if (p->gen == CKG_NO_GENERATE || !m->e.enc)
        return CKR_OK;
    if (!bits || p->gen > CKG_GENERATE_COUNTER_XOR || (p->gen == CKG_GENERATE_RANDOM && bits < 64))
        return CKR_MECHANISM_PARAM_INVALID;
    if (p->gen != CKG_GENERATE_RANDOM && m->count > last)
        return CKR_DATA_LEN_RANGE;
    if (p->gen == CKG_GENERATE || p->gen == CKG_GENERATE_RANDOM)
        rv = tok_random(g, p->ivlen);
    else if (p->gen == CKG_GENERATE_COUNTER_XOR)
        memcpy(g, p->iv, p->ivlen);
    else
        memset(g, 0, p->ivlen);
    if (rv != CKR_OK)
        return rv;
    if (p->gen != CKG_GENERATE_RANDOM) {
        uint64_t v = p->gen == CKG_GENERATE ? (m->start + m->count) & last : m->count;
        for (size_t k = p->ivlen; k > 0 && p->ivlen - k < 8; k--, v >>= 8)
            g[k - 1] = p->gen == CKG_GENERATE_COUNTER_XOR ? g[k - 1] ^ (uint8_t)v : (uint8_t)v;
        m->count++;
    }
    for (size_t k = 0; k < p->ivlen; k++) {
        size_t lo = k * 8;
        uint8_t keep = lo + 8 <= p->fixed_bits ? 0xff
                       : lo >= p->fixed_bits   ? 0
                                               : (uint8_t)(0xff << (8 - (p->fixed_bits - lo)));
        p->iv[k] = (uint8_t)((p->iv[k] & keep) | (g[k] & ~keep));
    }
    OPENSSL_cleanse(g, sizeof(g));
    return CKR_OK;
}

/* CCM: is this the payload length the parameters gave? */
static CK_RV ccm_len(const tok_msg *m, size_t datalen, size_t have)
{
    if (m->e.mc != M_AES_CCM || have == datalen)
        return CKR_OK;
    return m->e.enc ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
}

/* A new message's parameters (C_EncryptMessage, ..Begin). */
static CK_RV msg_new(tok_msg *m, void *param, CK_ULONG plen, const uint8_t *aad, CK_ULONG aadlen, aead_params *p)
{
    return m->busy ? CKR_OPERATION_ACTIVE : msg_params(m->e.mc, param, plen, aad, aadlen, p);
}

/* Its IV, then the engine started on it. */
static CK_RV msg_go(tok_msg *m, aead_params *p)
{
    CK_RV rv = make_iv(m, p);
    return rv == CKR_OK ? aead_start(&m->e, p) : rv;
}

CK_RV tok_msg_crypt(tok_msg *m, void *param, CK_ULONG plen, const uint8_t *aad, CK_ULONG aadlen, const uint8_t *in,
                    CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen)
{
    aead_params p;
    CK_RV rv;

    if (!m || !outlen || (!in && inlen))
        return CKR_ARGUMENTS_BAD;
    if ((rv = msg_new(m, param, plen, aad, aadlen, &p)) != CKR_OK || (rv = ccm_len(m, p.datalen, inlen)) != CKR_OK)
        return rv;
    if (inlen > INT_MAX)
        return m->e.enc ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
    if (!sized(out, outlen, inlen, &rv))
        return rv;
    if ((rv = msg_go(m, &p)) == CKR_OK)
        rv = aead_last(&m->e, in, inlen, out, p.tag, p.taglen);
    if (rv == CKR_OK)
        *outlen = inlen;
    return rv;
}

CK_RV tok_msg_begin(tok_msg *m, void *param, CK_ULONG plen, const uint8_t *aad, CK_ULONG aadlen)
{
    aead_params p;
    CK_RV rv;

    if (!m)
        return CKR_ARGUMENTS_BAD;
    if ((rv = msg_new(m, param, plen, aad, aadlen, &p)) != CKR_OK || (rv = msg_go(m, &p)) != CKR_OK)
        return rv;
    p.aad = NULL; /* the caller's: gone when this returns */
    p.aadlen = 0;
    m->cur = p;
    m->busy = true;
    return CKR_OK;
}

/* A part of the message in parts; the last (flags CKF_END_OF_MESSAGE)
 * writes or checks the tag of its param. */
static CK_RV msg_part(tok_msg *m, void *param, CK_ULONG plen, const uint8_t *in, CK_ULONG inlen, uint8_t *out,
                      CK_ULONG *outlen, bool last)
{
    bool pass = m->e.enc && m->e.mc != M_AES_CCM; /* GCM and ChaCha20-Poly1305 encryption: parts go through */
    aead_params p;
    CK_RV rv;

    if ((rv = msg_params(m->e.mc, param, plen, NULL, 0, &p)) != CKR_OK)
        return rv;
    if (p.taglen != m->cur.taglen || p.datalen != m->cur.datalen) /* not the message that began */
        return CKR_MECHANISM_PARAM_INVALID;
    if (inlen > INT_MAX || (m->e.mc == M_AES_CCM && m->in.len + inlen > m->cur.datalen))
        return m->e.enc ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
    if (last && (rv = ccm_len(m, m->cur.datalen, m->in.len + inlen)) != CKR_OK)
        return rv;
    if (!sized(out, outlen, pass ? inlen : last ? m->in.len + inlen : 0, &rv))
        return rv;
    if (pass)
        rv = last ? aead_last(&m->e, in, inlen, out, p.tag, p.taglen) : aead_update(&m->e, in, inlen, out);
    else if ((rv = held_add(&m->in, in, inlen)) == CKR_OK && last)
        rv = aead_last(&m->e, m->in.p, m->in.len, out, p.tag, p.taglen);
    if (rv == CKR_OK)
        *outlen = pass ? inlen : last ? m->in.len : 0;
    return rv;
}

CK_RV tok_msg_next(tok_msg *m, void *param, CK_ULONG plen, const uint8_t *in, CK_ULONG inlen, uint8_t *out,
                   CK_ULONG *outlen, CK_FLAGS flags)
{
    CK_RV rv;

    if (!m)
        return CKR_ARGUMENTS_BAD;
    if (!m->busy)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (!outlen || (!in && inlen) || (flags & ~CKF_END_OF_MESSAGE))
        rv = CKR_ARGUMENTS_BAD;
    else
        rv = msg_part(m, param, plen, in, inlen, out, outlen, flags & CKF_END_OF_MESSAGE);
    /* The message ends with its last part, and with any failure but a
     * short buffer; a size query leaves it as it was. */
    if ((rv == CKR_OK && out && (flags & CKF_END_OF_MESSAGE)) || (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)) {
        m->busy = false;
        held_clear(&m->in);
    }
    return rv;
}
