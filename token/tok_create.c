/* p11mk token layer: how objects are made, and how keys are wrapped.
 *
 * Every function that makes an object (C_CreateObject, C_CopyObject,
 * C_GenerateKey, C_GenerateKeyPair, C_UnwrapKey, C_DeriveKey) follows one
 * recipe, make():
 *
 *   1. the new objects' attributes, built from the caller's template by the
 *      attribute policy (tok_policy.c) or the unwrap/derive rules
 *      (tok_access.c);
 *   2. the write rule for each (tok_access_write), before the material is
 *      made: a refusal costs no key generation (an import's value is checked
 *      first: it costs nothing);
 *   3. the material (a key generated, unwrapped, derived; an import checked);
 *   4. the attributes the token sets at the end (tok_policy_finish);
 *   5. stored, token or session object (tok_obj_store); the first of a pair
 *      is taken back if the second cannot be stored.
 *
 * Keys named by handle (the unwrapping, base and wrapping keys) are loaded
 * here, once, and a bad handle gets the code the function's specification
 * lists (CKR_UNWRAPPING_KEY_HANDLE_INVALID, ...). */
#include "tok_internal.h"
#include "token/tok_access.h"
#include "token/tok_policy.h"

#include <stdlib.h>

/* Step 3: make the material of objs[0..n) (n is 1, or 2 for a key pair). */
typedef CK_RV (*material_fn)(tok_attrs *objs, const void *arg);

static CK_RV make(tok_ctx *ctx, const tok_access *ac, tok_build_mode mode, tok_attrs *objs, size_t n,
                  material_fn material, const void *arg, uint64_t *handles)
{
    CK_RV rv = CKR_OK;

    for (size_t i = 0; rv == CKR_OK && i < n; i++)
        rv = tok_access_write(ac, &objs[i]);
    if (rv == CKR_OK && material)
        rv = material(objs, arg);
    for (size_t i = 0; rv == CKR_OK && i < n; i++)
        rv = tok_policy_finish(mode, &objs[i]);
    for (size_t i = 0; rv == CKR_OK && i < n; i++) {
        rv = tok_obj_store(ctx, ac, &objs[i], &handles[i]);
        if (rv != CKR_OK)
            while (i-- > 0) /* do not leave half a pair behind */
                (void)tok_obj_unmake(ctx, ac, handles[i]);
    }
    return rv;
}

/* A key named by handle, for use by this function: a missing or invisible
 * one is bad_handle. */
static CK_RV load_key(tok_ctx *ctx, const tok_access *ac, uint64_t h, CK_RV bad_handle, tok_key **key)
{
    CK_RV rv = h ? tok_obj_key(ctx, ac, h, key) : CKR_OBJECT_HANDLE_INVALID;

    return rv == CKR_OBJECT_HANDLE_INVALID ? bad_handle : rv;
}

/* ---- C_CreateObject, C_CopyObject ------------------------------------------ */

static CK_RV complete_import(tok_attrs *objs, const void *arg)
{
    (void)arg;
    return tok_attrs_find(&objs[0], CKA_KEY_TYPE) ? tok_mech_complete_import(&objs[0]) : CKR_OK;
}

CK_RV tok_obj_create(tok_ctx *ctx, const tok_access *ac, const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t *h)
{
    AUTO_ATTRS obj = TOK_ATTRS_INIT;
    CK_RV rv = tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE,
                                CK_UNAVAILABLE_INFORMATION, tmpl, n, &obj);

    /* An import's value is checked before the write rule (no material is
     * made here, so nothing is wasted): a bad template says so whatever the
     * session, as C_CreateObject always has. */
    if (rv == CKR_OK)
        rv = complete_import(&obj, NULL);
    return rv == CKR_OK ? make(ctx, ac, TOK_BUILD_CREATE, &obj, 1, NULL, NULL, h) : rv;
}

CK_RV tok_obj_copy(tok_ctx *ctx, const tok_access *ac, uint64_t src, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                   uint64_t *h)
{
    AUTO_ATTRS from = TOK_ATTRS_INIT;
    AUTO_ATTRS obj = TOK_ATTRS_INIT;
    CK_RV rv = src ? tok_obj_read(ctx, ac, src, &from) : CKR_OBJECT_HANDLE_INVALID;

    if (rv == CKR_OK)
        rv = tok_policy_copy(&from, tmpl, n, &obj);
    /* A copy keeps its source's material and the attributes the token set
     * when it was made: no material step, no finish. */
    return rv == CKR_OK ? tok_obj_store(ctx, ac, &obj, h) : rv;
}

/* ---- C_GenerateKey, C_GenerateKeyPair -------------------------------------- */

static CK_RV generate_key(tok_attrs *objs, const void *mech) { return tok_mech_generate_key(mech, &objs[0]); }

static CK_RV generate_pair(tok_attrs *objs, const void *mech)
{
    return tok_mech_generate_keypair(mech, &objs[0], &objs[1]);
}

CK_RV tok_key_generate(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, const CK_ATTRIBUTE *tmpl,
                       CK_ULONG n, uint64_t *h)
{
    AUTO_ATTRS key = TOK_ATTRS_INIT;
    CK_KEY_TYPE ktype = 0;
    CK_RV rv = tok_mech_keygen_type(mech->mechanism, &ktype);

    if (rv == CKR_OK)
        rv = tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, ktype, mech->mechanism, tmpl, n, &key);
    return rv == CKR_OK ? make(ctx, ac, TOK_BUILD_GENERATE, &key, 1, generate_key, mech, h) : rv;
}

CK_RV tok_keypair_generate(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech,
                           const CK_ATTRIBUTE *pub_tmpl, CK_ULONG npub, const CK_ATTRIBUTE *priv_tmpl,
                           CK_ULONG npriv, uint64_t *hpub, uint64_t *hpriv)
{
    tok_attrs pair[2] = {TOK_ATTRS_INIT, TOK_ATTRS_INIT};
    uint64_t hs[2] = {0, 0};
    CK_KEY_TYPE ktype = 0;
    CK_RV rv = tok_mech_keypairgen_type(mech->mechanism, &ktype);

    if (rv == CKR_OK)
        rv = tok_policy_build(TOK_BUILD_GENERATE, CKO_PUBLIC_KEY, ktype, mech->mechanism, pub_tmpl, npub, &pair[0]);
    if (rv == CKR_OK)
        rv = tok_policy_build(TOK_BUILD_GENERATE, CKO_PRIVATE_KEY, ktype, mech->mechanism, priv_tmpl, npriv,
                              &pair[1]);
    if (rv == CKR_OK)
        rv = make(ctx, ac, TOK_BUILD_GENERATE, pair, 2, generate_pair, mech, hs);
    if (rv == CKR_OK) {
        *hpub = hs[0];
        *hpriv = hs[1];
    }
    tok_attrs_free(&pair[0]);
    tok_attrs_free(&pair[1]);
    return rv;
}

/* ---- C_UnwrapKey, C_DeriveKey, C_WrapKey ----------------------------------- */

typedef struct {
    const CK_MECHANISM *mech;
    tok_key *key;
    const uint8_t *in;
    CK_ULONG inlen;
} keyed;

static CK_RV unwrap(tok_attrs *objs, const void *arg)
{
    const keyed *k = arg;
    return tok_unwrap(k->mech, k->key, k->in, k->inlen, &objs[0]);
}

static CK_RV derive(tok_attrs *objs, const void *arg)
{
    const keyed *k = arg;
    return tok_derive(k->mech, k->key, &objs[0]);
}

/* The mechanism is known and offers flag (CKF_WRAP, CKF_UNWRAP; 0: any). */
static CK_RV mech_offers(CK_MECHANISM_TYPE m, CK_FLAGS flag)
{
    CK_MECHANISM_INFO mi;
    if (tok_mech_info(m, &mi) != CKR_OK || (mi.flags & flag) != flag)
        return CKR_MECHANISM_INVALID;
    return CKR_OK;
}

CK_RV tok_key_unwrap(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, uint64_t unwrapping,
                     const uint8_t *wrapped, CK_ULONG len, const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t *h)
{
    AUTO_ATTRS obj = TOK_ATTRS_INIT;
    keyed k = {mech, NULL, wrapped, len};
    CK_RV rv = mech_offers(mech->mechanism, CKF_UNWRAP);

    if (rv == CKR_OK)
        rv = load_key(ctx, ac, unwrapping, CKR_UNWRAPPING_KEY_HANDLE_INVALID, &k.key);
    if (rv == CKR_OK)
        rv = tok_unwrap_template(tok_key_attrs(k.key), tmpl, n, &obj);
    if (rv == CKR_OK)
        rv = make(ctx, ac, TOK_BUILD_UNWRAP, &obj, 1, unwrap, &k, h);
    tok_key_unref(k.key);
    return rv;
}

CK_RV tok_key_derive(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, uint64_t base,
                     const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t *h)
{
    AUTO_ATTRS obj = TOK_ATTRS_INIT;
    keyed k = {mech, NULL, NULL, 0};
    CK_RV rv = mech_offers(mech->mechanism, 0);

    if (rv == CKR_OK)
        rv = load_key(ctx, ac, base, CKR_KEY_HANDLE_INVALID, &k.key);
    if (rv == CKR_OK)
        rv = tok_derive_template(tok_key_attrs(k.key), mech->mechanism, tmpl, n, &obj);
    if (rv == CKR_OK)
        rv = make(ctx, ac, TOK_BUILD_DERIVE, &obj, 1, derive, &k, h);
    tok_key_unref(k.key);
    return rv;
}

CK_RV tok_key_wrap(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, uint64_t wrapping, uint64_t target,
                   uint8_t *out, CK_ULONG *outlen)
{
    AUTO_ATTRS tattrs = TOK_ATTRS_INIT;
    tok_key *wk = NULL;
    CK_RV rv = mech_offers(mech->mechanism, CKF_WRAP);

    if (rv == CKR_OK)
        rv = load_key(ctx, ac, wrapping, CKR_WRAPPING_KEY_HANDLE_INVALID, &wk);
    if (rv == CKR_OK) /* the wrapping key first, before the target's handle is looked at */
        rv = tok_wrap_permitted(tok_key_attrs(wk), NULL);
    if (rv == CKR_OK && (rv = target ? tok_obj_read(ctx, ac, target, &tattrs) : CKR_OBJECT_HANDLE_INVALID) == CKR_OK &&
        !tok_attrs_is_key(&tattrs))
        rv = CKR_OBJECT_HANDLE_INVALID; /* a data object, a certificate: not a key handle */
    if (rv == CKR_OBJECT_HANDLE_INVALID)
        rv = CKR_KEY_HANDLE_INVALID;
    if (rv == CKR_OK)
        rv = tok_wrap_permitted(tok_key_attrs(wk), &tattrs);
    if (rv == CKR_OK)
        rv = tok_wrap(mech, wk, &tattrs, out, outlen);
    tok_key_unref(wk);
    return rv;
}
