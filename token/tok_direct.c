/* p11mk token layer: AES-GCM and digests through the provider's own
 * functions.
 *
 * Why: OpenSSL 3.0's EVP layer asks the provider for the key and IV lengths
 * by name on every EVP_CipherInit with a key (two OSSL_PARAM look-ups, each
 * about 600 instructions of string compares), and adds an engine check, a
 * reference on the cipher and a wrapper per call: of an AES-256-GCM
 * encryption of 1 KiB through EVP (7,570 instructions, callgrind), 1,750
 * are that. A digest's EVP_DigestInit_ex2 is 550 instructions (an engine
 * look-up, the provider's context freed and made again) around an
 * initialization of 14. The provider's functions do the work itself: its
 * newctx, encrypt_init/decrypt_init with the key and IV (a digest's init),
 * update, final, and the tag by get/set_ctx_params, found once per process
 * through the public provider interface (OSSL_PROVIDER_query_operation), as
 * EVP finds them.
 *
 * Only for OpenSSL's built-in default provider (whose functions' behaviour
 * is the one EVP relies on here) and, for GCM, a 12-byte IV; anything else
 * goes through EVP (tok_op.c). The provider's context holds the key schedule
 * or the digest's state: it is made per operation and freed with freectx,
 * which cleanses it, as EVP_CIPHER_CTX_reset does (the threat model: key
 * material in ordinary memory only while an operation runs; a digest may
 * have taken a key's value, C_DigestKey). */
#include "tok_crypto.h"

#include <string.h>
#include <strings.h>

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/provider.h>

/* Is name one of the colon-separated names? */
static bool named(const char *names, const char *name)
{
    size_t l = strlen(name);
    for (const char *p = names; p && *p;) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == l && strncasecmp(p, name, l) == 0)
            return true;
        p = end ? end + 1 : NULL;
    }
    return false;
}

/* The default provider's implementation of name for operation_id: each of
 * its dispatch entries handed to take(entry, fns), and the provider's
 * context returned; NULL for another provider or no such algorithm. */
static void *default_impl(const OSSL_PROVIDER *prov, int operation_id, const char *name,
                          void (*take)(const OSSL_DISPATCH *, void *), void *fns)
{
    const OSSL_ALGORITHM *algs;
    const OSSL_DISPATCH *impl = NULL;
    int no_store = 0;

    if (!prov || !name || strcmp(OSSL_PROVIDER_get0_name(prov), "default") != 0 ||
        !(algs = OSSL_PROVIDER_query_operation(prov, operation_id, &no_store)))
        return NULL;
    for (const OSSL_ALGORITHM *a = algs; a->algorithm_names && !impl; a++)
        if (named(a->algorithm_names, name))
            impl = a->implementation;
    for (const OSSL_DISPATCH *d = impl; d && d->function_id; d++)
        take(d, fns);
    OSSL_PROVIDER_unquery_operation(prov, operation_id, algs);
    return impl ? OSSL_PROVIDER_get0_provider_ctx(prov) : NULL;
}

/* ---- AES-GCM ------------------------------------------------------------- */

struct tok_gcm_fns {
    void *provctx;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_params;
    OSSL_FUNC_cipher_set_ctx_params_fn *set_params;
    OSSL_FUNC_cipher_freectx_fn *freectx;
};

static void gcm_take(const OSSL_DISPATCH *d, void *fns)
{
    tok_gcm_fns *g = fns;
    switch (d->function_id) {
    case OSSL_FUNC_CIPHER_NEWCTX: g->newctx = OSSL_FUNC_cipher_newctx(d); break;
    case OSSL_FUNC_CIPHER_ENCRYPT_INIT: g->einit = OSSL_FUNC_cipher_encrypt_init(d); break;
    case OSSL_FUNC_CIPHER_DECRYPT_INIT: g->dinit = OSSL_FUNC_cipher_decrypt_init(d); break;
    case OSSL_FUNC_CIPHER_UPDATE: g->update = OSSL_FUNC_cipher_update(d); break;
    case OSSL_FUNC_CIPHER_FINAL: g->final = OSSL_FUNC_cipher_final(d); break;
    case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: g->get_params = OSSL_FUNC_cipher_get_ctx_params(d); break;
    case OSSL_FUNC_CIPHER_SET_CTX_PARAMS: g->set_params = OSSL_FUNC_cipher_set_ctx_params(d); break;
    case OSSL_FUNC_CIPHER_FREECTX: g->freectx = OSSL_FUNC_cipher_freectx(d); break;
    default: break;
    }
}

tok_gcm_fns *tok_gcm_resolve(const EVP_CIPHER *c)
{
    tok_gcm_fns g = {0};

    g.provctx = c ? default_impl(EVP_CIPHER_get0_provider(c), OSSL_OP_CIPHER, EVP_CIPHER_get0_name(c), gcm_take, &g)
                  : NULL;
    if (!g.newctx || !g.einit || !g.dinit || !g.update || !g.final || !g.get_params || !g.set_params ||
        !g.freectx || !g.provctx)
        return NULL;
    tok_gcm_fns *out = OPENSSL_malloc(sizeof(*out)); /* kept for the process, as the fetched cipher is */
    if (out)
        *out = g;
    return out;
}

void *tok_gcm_new(const tok_gcm_fns *g, bool enc, const uint8_t *key, size_t keylen, const uint8_t *iv, size_t ivlen,
                  const uint8_t *aad, size_t aadlen)
{
    void *ctx = g->newctx(g->provctx);
    size_t n = 0;

    if (!ctx)
        return NULL;
    if ((enc ? g->einit : g->dinit)(ctx, key, keylen, iv, ivlen, NULL) != 1 ||
        (aadlen && g->update(ctx, NULL, &n, aadlen, aad, aadlen) != 1)) {
        g->freectx(ctx);
        return NULL;
    }
    return ctx;
}

bool tok_gcm_update(const tok_gcm_fns *g, void *ctx, uint8_t *out, size_t *outlen, const uint8_t *in, size_t inlen)
{
    *outlen = 0;
    return g->update(ctx, out, outlen, inlen, in, inlen) == 1; /* a stream: as much out as in */
}

bool tok_gcm_final(const tok_gcm_fns *g, void *ctx, uint8_t *out, size_t *outlen)
{
    *outlen = 0;
    return g->final(ctx, out, outlen, 0) == 1; /* GCM gives no bytes at the end (EVP asks the same) */
}

bool tok_gcm_tag(const tok_gcm_fns *g, void *ctx, bool get, uint8_t *tag, size_t taglen)
{
    OSSL_PARAM p[] = {OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, taglen), OSSL_PARAM_END};
    return (get ? g->get_params(ctx, p) : g->set_params(ctx, p)) == 1;
}

void tok_gcm_free(const tok_gcm_fns *g, void *ctx)
{
    if (ctx)
        g->freectx(ctx); /* cleanses the key schedule */
}

/* ---- digests ------------------------------------------------------------- */

struct tok_dgst_fns {
    void *provctx;
    OSSL_FUNC_digest_newctx_fn *newctx;
    OSSL_FUNC_digest_init_fn *init;
    OSSL_FUNC_digest_update_fn *update;
    OSSL_FUNC_digest_final_fn *final;
    OSSL_FUNC_digest_freectx_fn *freectx;
    size_t size;
};

static void dgst_take(const OSSL_DISPATCH *d, void *fns)
{
    tok_dgst_fns *f = fns;
    switch (d->function_id) {
    case OSSL_FUNC_DIGEST_NEWCTX: f->newctx = OSSL_FUNC_digest_newctx(d); break;
    case OSSL_FUNC_DIGEST_INIT: f->init = OSSL_FUNC_digest_init(d); break;
    case OSSL_FUNC_DIGEST_UPDATE: f->update = OSSL_FUNC_digest_update(d); break;
    case OSSL_FUNC_DIGEST_FINAL: f->final = OSSL_FUNC_digest_final(d); break;
    case OSSL_FUNC_DIGEST_FREECTX: f->freectx = OSSL_FUNC_digest_freectx(d); break;
    default: break;
    }
}

tok_dgst_fns *tok_dgst_resolve(const EVP_MD *md)
{
    tok_dgst_fns f = {0};
    int size = md ? EVP_MD_get_size(md) : 0;

    f.provctx = md ? default_impl(EVP_MD_get0_provider(md), OSSL_OP_DIGEST, EVP_MD_get0_name(md), dgst_take, &f)
                   : NULL;
    if (!f.newctx || !f.init || !f.update || !f.final || !f.freectx || !f.provctx || size <= 0 ||
        size > EVP_MAX_MD_SIZE)
        return NULL;
    f.size = (size_t)size;
    tok_dgst_fns *out = OPENSSL_malloc(sizeof(*out)); /* kept for the process, as the fetched digest is */
    if (out)
        *out = f;
    return out;
}

void *tok_dgst_new(const tok_dgst_fns *f) { return f->newctx(f->provctx); }

bool tok_dgst_init(const tok_dgst_fns *f, void *ctx) { return f->init(ctx, NULL) == 1; }

bool tok_dgst_update(const tok_dgst_fns *f, void *ctx, const uint8_t *in, size_t inlen)
{
    return !inlen || f->update(ctx, in, inlen) == 1; /* (EVP_DigestUpdate skips an empty one too) */
}

bool tok_dgst_final(const tok_dgst_fns *f, void *ctx, uint8_t *out, size_t *outlen)
{
    *outlen = 0;
    return f->final(ctx, out, outlen, f->size) == 1 && *outlen == f->size;
}

void tok_dgst_free(const tok_dgst_fns *f, void *ctx)
{
    if (ctx)
        f->freectx(ctx); /* cleanses the state */
}
