/* p11mk token layer: access rules (see tok_access.h). */
#include "token/tok_access.h"
#include "tok_crypto.h"

#include <stdlib.h>

bool tok_access_sees(const tok_access *ac, const tok_attrs *obj)
{
    return tok_access_sees_private(ac, tok_obj_is_private(obj));
}

bool tok_access_sees_private(const tok_access *ac, bool private_obj) { return !private_obj || ac->who == CKU_USER; }

CK_RV tok_access_write(const tok_access *ac, const tok_attrs *obj)
{
    if (tok_obj_is_token(obj) && !ac->rw)
        return CKR_SESSION_READ_ONLY;
    if (tok_obj_is_private(obj) && ac->who != CKU_USER)
        return CKR_USER_NOT_LOGGED_IN;
    return CKR_OK;
}

/* wrap_policy = strict: a key wraps or unwraps only if it was made on the
 * token and never left it (CKA_LOCAL, CKA_NEVER_EXTRACTABLE): no one knows
 * its value, so nothing wrapped under it can be opened outside (the
 * known-key and encrypt-then-unwrap attacks need such a key). */
static bool strict_wrapper(const tok_attrs *key)
{
    /* Made by a random generation: a key derived from a password
     * (CKM_PKCS5_PBKD2) is "local" too, but whoever knows the password knows it. */
    static const CK_MECHANISM_TYPE random_gen[] = {CKM_AES_KEY_GEN, CKM_DES2_KEY_GEN, CKM_DES3_KEY_GEN,
                                                   CKM_GENERIC_SECRET_KEY_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN,
                                                   CKM_EC_KEY_PAIR_GEN};
    CK_ULONG gen = CK_UNAVAILABLE_INFORMATION;
    bool random = false;

    if (!tok_policy_wrap_strict())
        return true;
    tok_attrs_get_ulong(key, CKA_KEY_GEN_MECHANISM, &gen);
    for (size_t i = 0; i < sizeof(random_gen) / sizeof(random_gen[0]); i++)
        random |= gen == random_gen[i];
    return random && tok_attrs_get_bool(key, CKA_LOCAL, false) && tok_attrs_get_bool(key, CKA_NEVER_EXTRACTABLE, false);
}

static inline void attrs_cleanup(tok_attrs *a) { tok_attrs_free(a); }
#define AUTO_ATTRS __attribute__((cleanup(attrs_cleanup))) tok_attrs

CK_RV tok_wrap_permitted(const tok_attrs *wrapping, const tok_attrs *target)
{
    AUTO_ATTRS wt = TOK_ATTRS_INIT;
    CK_RV rv;

    if (!tok_attrs_get_bool(wrapping, CKA_WRAP, false) || !strict_wrapper(wrapping))
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (!target)
        return CKR_OK;
    if (!tok_attrs_get_bool(target, CKA_EXTRACTABLE, false))
        return CKR_KEY_UNEXTRACTABLE;
    if (tok_attrs_get_bool(target, CKA_WRAP_WITH_TRUSTED, false) && !tok_attrs_get_bool(wrapping, CKA_TRUSTED, false))
        return CKR_KEY_NOT_WRAPPABLE;
    /* The wrapping key's CKA_WRAP_TEMPLATE: what it may wrap. */
    rv = tok_template_get(wrapping, CKA_WRAP_TEMPLATE, &wt);
    if (rv == CKR_OK && !tok_template_matches(target, &wt))
        rv = CKR_KEY_NOT_WRAPPABLE;
    return rv;
}

/* The caller's template joined with the key's template attribute tt; a key
 * type neither names is ktype (TOK_KTYPE_FROM_TEMPLATE: one must). */
static CK_RV build_under(const tok_attrs *key, CK_ATTRIBUTE_TYPE tt, tok_build_mode mode, CK_OBJECT_CLASS cls,
                         CK_KEY_TYPE ktype, CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                         tok_attrs *obj)
{
    AUTO_ATTRS kt = TOK_ATTRS_INIT;
    CK_ATTRIBUTE *merged = NULL;
    CK_ULONG nm = 0;
    CK_RV rv = tok_template_get(key, tt, &kt);

    if (rv == CKR_OK)
        rv = tok_template_merge(tmpl, n, &kt, &merged, &nm);
    for (CK_ULONG i = 0; rv == CKR_OK && i < nm; i++)
        if (merged[i].type == CKA_KEY_TYPE)
            ktype = TOK_KTYPE_FROM_TEMPLATE;
    if (rv == CKR_OK)
        rv = tok_policy_build(mode, cls, ktype, mech, merged, nm, obj);
    free(merged);
    return rv;
}

CK_RV tok_unwrap_template(const tok_attrs *unwrapping, const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *obj)
{
    CK_RV rv;

    if (!tok_attrs_get_bool(unwrapping, CKA_UNWRAP, false) || !strict_wrapper(unwrapping))
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    rv = build_under(unwrapping, CKA_UNWRAP_TEMPLATE, TOK_BUILD_UNWRAP, TOK_CLASS_FROM_TEMPLATE,
                     TOK_KTYPE_FROM_TEMPLATE, CK_UNAVAILABLE_INFORMATION, tmpl, n, obj);
    /* strict: what comes in wrapped stays secret (the re-import as a
     * non-sensitive key attack). */
    if (rv == CKR_OK && tok_policy_wrap_strict() && !tok_attrs_get_bool(obj, CKA_SENSITIVE, true))
        rv = CKR_TEMPLATE_INCONSISTENT;
    return rv;
}

CK_RV tok_derive_template(const tok_attrs *base, CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                          tok_attrs *obj)
{
    if (!tok_attrs_get_bool(base, CKA_DERIVE, false))
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    /* CKM_SHA*_KEY_DERIVATION: a template without a key type makes a generic secret. */
    const tok_mech_desc *d = tok_mech_find(mech);
    CK_KEY_TYPE kt = d && d->mc == M_KEY_HASH ? CKK_GENERIC_SECRET : TOK_KTYPE_FROM_TEMPLATE;
    return build_under(base, CKA_DERIVE_TEMPLATE, TOK_BUILD_DERIVE, CKO_SECRET_KEY, kt, mech, tmpl, n, obj);
}
