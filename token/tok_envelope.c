/* p11mk token layer: envelopes of private objects under the token key. */
#include "tok_envelope.h"
#include "keystore/ks.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define ENV_VERSION 1
#define NONCE_LEN 12
#define TAG_LEN 16
#define AAD_LEN (35 + 32)

/* Fetched once per process, not by name on every read of a private object. */
static EVP_CIPHER *env_cipher;
static EVP_MD *env_md;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void env_fetch(void)
{
    env_cipher = EVP_CIPHER_fetch(ks_libctx(), "AES-256-GCM", NULL);
    env_md = EVP_MD_fetch(ks_libctx(), "SHA2-256", NULL);
}

bool tok_env_clear_attr(CK_ATTRIBUTE_TYPE t)
{
    static const CK_ATTRIBUTE_TYPE clear[] = {
        CKA_CLASS,         CKA_KEY_TYPE,      CKA_CERTIFICATE_TYPE, CKA_LABEL,      CKA_ID,
        CKA_MODULUS_BITS,  CKA_VALUE_LEN,     CKA_KEY_GEN_MECHANISM, CKA_START_DATE, CKA_END_DATE,
        CKA_CERTIFICATE_CATEGORY, CKA_UNIQUE_ID,
    };

    if (t == TOKA_ENVELOPE)
        return false;
    if (tok_attr_is_bool(t))
        return true; /* CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_SIGN, ...: policy, not values */
    for (size_t i = 0; i < sizeof(clear) / sizeof(clear[0]); i++)
        if (clear[i] == t)
            return true;
    return false;
}

bool tok_env_present(const tok_attrs *a) { return tok_attrs_find(a, TOKA_ENVELOPE) != NULL; }

/* SHA-256 of the clear attributes (all but the envelope) sorted by type,
 * in their serialized form: what the object says it is and may do is bound
 * to its values, so none of it can be changed without the token key. Sorted
 * as references, not copies: every read of a private object computes it. */
static int clear_digest(const tok_attrs *a, uint8_t out[32])
{
    const tok_attr *stackv[64], **v = a->n <= 64 ? stackv : malloc(a->n * sizeof(*v));
    uint8_t *blob = NULL;
    size_t n = 0, len = 0;
    unsigned hl = 0;
    int ok = 0;

    if (!v)
        return -1;
    for (size_t i = 0; i < a->n; i++) {
        const tok_attr *x = &a->v[i];
        size_t j = n;

        if (x->type == TOKA_ENVELOPE)
            continue;
        for (; j > 0 && v[j - 1]->type > x->type; j--) /* insertion sort: a few dozen, types unique */
            v[j] = v[j - 1];
        v[j] = x;
        n++;
    }
    if (tok_attrs_serialize_refs(v, n, &blob, &len) != 0)
        goto out;
    pthread_once(&env_once, env_fetch);
    ok = env_md && EVP_Digest(blob, len, out, &hl, env_md, NULL) == 1 && hl == 32;
out:
    if (blob)
        ks_buf_free(blob, len);
    if (v != stackv)
        free(v);
    return ok ? 0 : -1;
}

/* "p11mk private object v1" | LE32 token | LE64 object id | clear_digest */
static int env_aad(uint32_t token, uint64_t oid, const tok_attrs *a, uint8_t aad[AAD_LEN])
{
    memcpy(aad, "p11mk private object v1", 23);
    for (int i = 0; i < 4; i++)
        aad[23 + i] = (uint8_t)(token >> (8 * i));
    for (int i = 0; i < 8; i++)
        aad[27 + i] = (uint8_t)(oid >> (8 * i));
    return clear_digest(a, aad + 35);
}

int tok_gcm(int enc, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
            const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
    EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0;
    pthread_once(&env_once, env_fetch);
    const EVP_CIPHER *c = env_cipher;
    int ok = c && cx && len <= INT32_MAX && aadlen <= INT32_MAX &&
             EVP_CipherInit_ex2(cx, c, key, nonce, enc, NULL) == 1 &&
             EVP_CipherUpdate(cx, NULL, &n, aad, (int)aadlen) == 1 &&
             (len == 0 || EVP_CipherUpdate(cx, out, &n, in, (int)len) == 1);

    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1;
    if (ok)
        ok = EVP_CipherFinal_ex(cx, out + (len ? n : 0), &fin) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(cx);
    return ok ? 0 : -1;
}

int tok_env_seal(const uint8_t tk[TOK_TK_LEN], uint32_t token, uint64_t oid, const tok_attrs *plain, tok_attrs *out)
{
    tok_attrs inner = TOK_ATTRS_INIT, res = TOK_ATTRS_INIT;
    uint8_t *blob = NULL, *env = NULL, aad[AAD_LEN];
    size_t blen = 0, elen;
    int rc = -1;

    for (size_t i = 0; i < plain->n; i++) {
        const tok_attr *a = &plain->v[i];
        if (a->type == TOKA_ENVELOPE)
            continue;
        if (tok_attrs_set(tok_env_clear_attr(a->type) ? &res : &inner, a->type, a->val, a->len) != 0)
            goto out;
    }
    if (tok_attrs_serialize(&inner, &blob, &blen) != 0)
        goto out;
    elen = 1 + NONCE_LEN + blen + TAG_LEN;
    env = malloc(elen);
    if (!env)
        goto out;
    env[0] = ENV_VERSION;
    if (env_aad(token, oid, &res, aad) != 0)
        goto out;
    if (RAND_bytes_ex(ks_libctx(), env + 1, NONCE_LEN, 0) != 1 ||
        tok_gcm(1, tk, env + 1, aad, AAD_LEN, blob, blen, env + 1 + NONCE_LEN, env + 1 + NONCE_LEN + blen) != 0)
        goto out;
    if (tok_attrs_set(&res, TOKA_ENVELOPE, env, (CK_ULONG)elen) != 0)
        goto out;
    tok_attrs_free(out);
    *out = res;
    res = (tok_attrs)TOK_ATTRS_INIT;
    rc = 0;
out:
    if (blob)
        ks_buf_free(blob, blen);
    free(env);
    tok_attrs_free(&inner);
    tok_attrs_free(&res);
    return rc;
}

/* a with its envelope opened in place: the envelope's values appended, the
 * envelope removed. On failure a is unchanged. */
static int env_open_in(const uint8_t tk[TOK_TK_LEN], uint32_t token, uint64_t oid, tok_attrs *a)
{
    const tok_attr *e = tok_attrs_find(a, TOKA_ENVELOPE);
    tok_attrs inner = TOK_ATTRS_INIT;
    uint8_t aad[AAD_LEN], tag[TAG_LEN], *plain = NULL;
    size_t plen;
    int rc = -2;

    if (!e || e->len < 1 + NONCE_LEN + TAG_LEN || e->val[0] != ENV_VERSION)
        return -2;
    plen = e->len - 1 - NONCE_LEN - TAG_LEN;
    plain = malloc(plen ? plen : 1);
    if (!plain)
        return -1;
    if (env_aad(token, oid, a, aad) != 0) {
        rc = -1;
        goto out;
    }
    memcpy(tag, e->val + 1 + NONCE_LEN + plen, TAG_LEN);
    if (tok_gcm(0, tk, e->val + 1, aad, AAD_LEN, e->val + 1 + NONCE_LEN, plen, plain, tag) != 0)
        goto out;
    if ((rc = tok_attrs_parse(plain, plen, &inner)) != 0) {
        rc = rc == TOK_ATTRS_NOMEM ? -1 : -2; /* out of memory, or damaged */
        goto out;
    }
    rc = -2;
    for (size_t i = 0; i < inner.n; i++)
        if (tok_env_clear_attr(inner.v[i].type) || tok_attrs_find(a, inner.v[i].type))
            goto out; /* an envelope may only hold values, each once (and no envelope) */
    rc = -1;
    if (tok_attrs_take(a, &inner) != 0)
        goto out;
    tok_attrs_remove(a, TOKA_ENVELOPE);
    rc = 0;
out:
    ks_buf_free(plain, plen ? plen : 1);
    tok_attrs_free(&inner);
    return rc;
}

int tok_env_open(const uint8_t tk[TOK_TK_LEN], uint32_t token, uint64_t oid, const tok_attrs *stored, tok_attrs *out)
{
    tok_attrs res = TOK_ATTRS_INIT;
    int rc;

    if (stored == out)
        return env_open_in(tk, token, oid, out);
    if (tok_attrs_copy(&res, stored) != 0)
        return -1;
    rc = env_open_in(tk, token, oid, &res);
    if (rc == 0) {
        tok_attrs_free(out);
        *out = res;
    } else {
        tok_attrs_free(&res);
    }
    return rc;
}

int tok_env_strip(const tok_attrs *stored, tok_attrs *out)
{
    tok_attrs res = TOK_ATTRS_INIT;

    for (size_t i = 0; i < stored->n; i++)
        if (stored->v[i].type != TOKA_ENVELOPE &&
            tok_attrs_set(&res, stored->v[i].type, stored->v[i].val, stored->v[i].len) != 0) {
            tok_attrs_free(&res);
            return -1;
        }
    tok_attrs_free(out);
    *out = res;
    return 0;
}
