/* p11mk token layer: object templates and attribute policy.
 *
 * One table says, per attribute type, which objects may carry it and what
 * callers may do with it; the functions below apply PKCS#11 v2.40 section 4
 * rules with SoftHSMv2-like defaults. */
#include "token/tok_policy.h"
#include "token/tok_aead.h"
#include "token/tok_mech.h"

#include <stdlib.h>
#include <string.h>

/* Which objects an attribute belongs to. */
enum {
    O_DATA = 1u << 0,
    O_CERT = 1u << 1,
    O_PUB = 1u << 2,
    O_PRIV = 1u << 3,
    O_SECRET = 1u << 4,
    O_KEYS = O_PUB | O_PRIV | O_SECRET,
    O_ALL = O_DATA | O_CERT | O_KEYS,
};
/* Key types an attribute is limited to (0: any). */
enum { K_ANY = 0, K_RSA = 1, K_EC = 2, K_SECRET_VAL = 3 };

/* What callers may do with it. */
enum {
    A_TOKEN_ONLY = 1u << 0,  /* set only by the token (READ_ONLY if given) */
    A_MATERIAL = 1u << 1,    /* key material: never given to C_GenerateKey* */
    A_GEN_INPUT = 1u << 2,   /* a generation input despite being material (see material_input) */
    A_MODIFY = 1u << 3,      /* C_SetAttributeValue may change it */
    A_NOT_CREATE = 1u << 4,  /* computed by the token, not given to C_CreateObject */
};

typedef struct {
    CK_ATTRIBUTE_TYPE type;
    unsigned objs;
    unsigned ktype;
    unsigned flags;
} attr_rule;

static const attr_rule rules[] = {
    /* common storage attributes */
    {CKA_CLASS, O_ALL, K_ANY, 0},
    {CKA_TOKEN, O_ALL, K_ANY, 0},
    {CKA_PRIVATE, O_ALL, K_ANY, 0},
    {CKA_MODIFIABLE, O_ALL, K_ANY, 0},
    {CKA_COPYABLE, O_ALL, K_ANY, A_MODIFY},
    {CKA_DESTROYABLE, O_ALL, K_ANY, A_MODIFY},
    {CKA_LABEL, O_ALL, K_ANY, A_MODIFY},
    /* data */
    {CKA_APPLICATION, O_DATA, K_ANY, A_MODIFY},
    {CKA_OBJECT_ID, O_DATA | O_CERT, K_ANY, A_MODIFY},
    {CKA_VALUE, O_DATA | O_CERT, K_ANY, A_MODIFY},
    /* certificates */
    {CKA_CERTIFICATE_TYPE, O_CERT, K_ANY, 0},
    {CKA_TRUSTED, O_CERT | O_PUB | O_SECRET, K_ANY, 0},
    {CKA_CERTIFICATE_CATEGORY, O_CERT, K_ANY, 0},
    {CKA_CHECK_VALUE, O_CERT | O_SECRET, K_ANY, 0},
    {CKA_START_DATE, O_CERT | O_KEYS, K_ANY, A_MODIFY},
    {CKA_END_DATE, O_CERT | O_KEYS, K_ANY, A_MODIFY},
    {CKA_PUBLIC_KEY_INFO, O_CERT | O_PUB | O_PRIV, K_ANY, 0},
    {CKA_SUBJECT, O_CERT | O_PUB | O_PRIV, K_ANY, A_MODIFY},
    {CKA_ID, O_CERT | O_KEYS, K_ANY, A_MODIFY},
    {CKA_ISSUER, O_CERT, K_ANY, A_MODIFY},
    {CKA_SERIAL_NUMBER, O_CERT, K_ANY, A_MODIFY},
    {CKA_URL, O_CERT, K_ANY, 0},
    {CKA_HASH_OF_SUBJECT_PUBLIC_KEY, O_CERT, K_ANY, 0},
    {CKA_HASH_OF_ISSUER_PUBLIC_KEY, O_CERT, K_ANY, 0},
    {CKA_JAVA_MIDP_SECURITY_DOMAIN, O_CERT, K_ANY, 0},
    {CKA_NAME_HASH_ALGORITHM, O_CERT, K_ANY, 0},
    /* keys */
    {CKA_KEY_TYPE, O_KEYS, K_ANY, 0},
    {CKA_DERIVE, O_KEYS, K_ANY, A_MODIFY},
    {CKA_LOCAL, O_KEYS, K_ANY, A_TOKEN_ONLY},
    {CKA_KEY_GEN_MECHANISM, O_KEYS, K_ANY, A_TOKEN_ONLY},
    {CKA_ALLOWED_MECHANISMS, O_KEYS, K_ANY, 0},
    {CKA_ENCRYPT, O_PUB | O_SECRET, K_ANY, A_MODIFY},
    {CKA_VERIFY, O_PUB | O_SECRET, K_ANY, A_MODIFY},
    {CKA_VERIFY_RECOVER, O_PUB, K_ANY, A_MODIFY},
    {CKA_WRAP, O_PUB | O_SECRET, K_ANY, A_MODIFY},
    {CKA_DECRYPT, O_PRIV | O_SECRET, K_ANY, A_MODIFY},
    {CKA_SIGN, O_PRIV | O_SECRET, K_ANY, A_MODIFY},
    {CKA_SIGN_RECOVER, O_PRIV, K_ANY, A_MODIFY},
    {CKA_UNWRAP, O_PRIV | O_SECRET, K_ANY, A_MODIFY},
    {CKA_SENSITIVE, O_PRIV | O_SECRET, K_ANY, A_MODIFY},
    {CKA_EXTRACTABLE, O_PRIV | O_SECRET, K_ANY, A_MODIFY},
    {CKA_ALWAYS_SENSITIVE, O_PRIV | O_SECRET, K_ANY, A_TOKEN_ONLY},
    {CKA_NEVER_EXTRACTABLE, O_PRIV | O_SECRET, K_ANY, A_TOKEN_ONLY},
    {CKA_WRAP_WITH_TRUSTED, O_PRIV | O_SECRET, K_ANY, A_MODIFY},
    {CKA_ALWAYS_AUTHENTICATE, O_PRIV, K_ANY, 0},
    {CKA_WRAP_TEMPLATE, O_PUB | O_SECRET, K_ANY, 0},
    {CKA_UNWRAP_TEMPLATE, O_PRIV | O_SECRET, K_ANY, 0},
    {CKA_DERIVE_TEMPLATE, O_PRIV | O_SECRET, K_ANY, 0},
    /* key material */
    {CKA_MODULUS, O_PUB | O_PRIV, K_RSA, A_MATERIAL},
    {CKA_MODULUS_BITS, O_PUB, K_RSA, A_MATERIAL | A_GEN_INPUT | A_NOT_CREATE},
    {CKA_PUBLIC_EXPONENT, O_PUB | O_PRIV, K_RSA, A_MATERIAL | A_GEN_INPUT},
    {CKA_PRIVATE_EXPONENT, O_PRIV, K_RSA, A_MATERIAL},
    {CKA_PRIME_1, O_PRIV, K_RSA, A_MATERIAL},
    {CKA_PRIME_2, O_PRIV, K_RSA, A_MATERIAL},
    {CKA_EXPONENT_1, O_PRIV, K_RSA, A_MATERIAL},
    {CKA_EXPONENT_2, O_PRIV, K_RSA, A_MATERIAL},
    {CKA_COEFFICIENT, O_PRIV, K_RSA, A_MATERIAL},
    {CKA_EC_PARAMS, O_PUB | O_PRIV, K_EC, A_MATERIAL | A_GEN_INPUT},
    {CKA_EC_POINT, O_PUB | O_PRIV, K_EC, A_MATERIAL},
    {CKA_VALUE_LEN, O_SECRET, K_SECRET_VAL, A_MATERIAL | A_GEN_INPUT},
};

/* CKA_VALUE is a data/cert attribute above; for keys it is material. */
static const attr_rule key_value_rule = {CKA_VALUE, O_PRIV | O_SECRET, K_ANY, A_MATERIAL};

static unsigned class_bit(CK_OBJECT_CLASS cls)
{
    switch (cls) {
    case CKO_DATA: return O_DATA;
    case CKO_CERTIFICATE: return O_CERT;
    case CKO_PUBLIC_KEY: return O_PUB;
    case CKO_PRIVATE_KEY: return O_PRIV;
    case CKO_SECRET_KEY: return O_SECRET;
    default: return 0;
    }
}

static unsigned ktype_kind(CK_KEY_TYPE kt)
{
    switch (kt) {
    case CKK_RSA: return K_RSA;
    case CKK_EC:
    case CKK_EC_EDWARDS:
    case 0x41UL /* CKK_EC_MONTGOMERY */: return K_EC;
    case CKK_AES:
    case CKK_CHACHA20:
    case CKK_GENERIC_SECRET:
    case CKK_SHA256_HMAC: return K_SECRET_VAL;
    default: return K_ANY;
    }
}

static bool ktype_supported(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt)
{
    /* Single DES keys only with legacy_mechanisms = yes. Without, CKK_DES is
     * a key type this token does not have, so a template that names it
     * holds an invalid value (CKR_ATTRIBUTE_VALUE_INVALID), as any other
     * unknown type: CKR_TEMPLATE_INCONSISTENT is for attributes that
     * contradict each other, and nothing else in the template does. */
    if (cls == CKO_SECRET_KEY && kt == CKK_DES)
        return tok_mech_legacy();
    if (cls == CKO_SECRET_KEY)
        return kt == CKK_AES || kt == CKK_CHACHA20 || kt == CKK_GENERIC_SECRET || kt == CKK_SHA256_HMAC ||
               tok_ktype_fixed_len(kt);
    return kt == CKK_RSA || kt == CKK_EC || kt == CKK_EC_EDWARDS || kt == 0x41UL /* CKK_EC_MONTGOMERY */;
}

/* The rule for an attribute on an object of this class and key type, or NULL. */
static const attr_rule *rule_for(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, CK_ATTRIBUTE_TYPE t)
{
    unsigned cb = class_bit(cls), kk = ktype_kind(kt);

    if (t == CKA_VALUE && (cb & (O_PRIV | O_SECRET))) {
        /* EC private keys and secret keys hold CKA_VALUE; RSA private keys do not. */
        return (cb == O_SECRET || kk == K_EC) ? &key_value_rule : NULL;
    }
    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        const attr_rule *r = &rules[i];
        if (r->type != t)
            continue;
        if (!(r->objs & cb))
            return NULL;
        if (r->ktype != K_ANY && r->ktype != kk)
            return NULL;
        return r;
    }
    return NULL;
}

static const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_ATTRIBUTE_TYPE t);

bool tok_attr_is_template(CK_ATTRIBUTE_TYPE t)
{
    return t == CKA_WRAP_TEMPLATE || t == CKA_UNWRAP_TEMPLATE || t == CKA_DERIVE_TEMPLATE;
}

static CK_RV check_value_len(const CK_ATTRIBUTE *a);

/* A caller's CK_ATTRIBUTE array (its length checked by check_value_len)
 * -> the packed form. Its entries get the same checks; no nesting. */
static CK_RV template_pack(const CK_ATTRIBUTE *a, uint8_t **out, size_t *len)
{
    const CK_ATTRIBUTE *arr = a->pValue;
    CK_ULONG n = a->ulValueLen / sizeof(CK_ATTRIBUTE);
    tok_attrs t = TOK_ATTRS_INIT;
    CK_RV rv = CKR_OK;

    for (CK_ULONG i = 0; i < n && rv == CKR_OK; i++) {
        if (tok_attr_is_template(arr[i].type))
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
        else if ((rv = check_value_len(&arr[i])) != CKR_OK)
            break;
        else if (tok_attrs_set(&t, arr[i].type, arr[i].pValue, arr[i].ulValueLen) != 0)
            rv = CKR_HOST_MEMORY;
    }
    if (rv == CKR_OK && tok_attrs_serialize(&t, out, len) != 0)
        rv = CKR_HOST_MEMORY;
    tok_attrs_free(&t);
    return rv;
}

CK_RV tok_template_get(const tok_attrs *obj, CK_ATTRIBUTE_TYPE t, tok_attrs *out)
{
    const tok_attr *a = tok_attrs_find(obj, t);
    tok_attrs_free(out);
    if (!a || !a->len)
        return CKR_OK;
    int rc = tok_attrs_parse(a->val, a->len, out);
    return rc == 0 ? CKR_OK : rc == TOK_ATTRS_NOMEM ? CKR_HOST_MEMORY : CKR_GENERAL_ERROR;
}

bool tok_template_matches(const tok_attrs *obj, const tok_attrs *t)
{
    for (size_t i = 0; i < t->n; i++) {
        const tok_attr *a = tok_attrs_find(obj, t->v[i].type);
        if (!a || a->len != t->v[i].len || (a->len && memcmp(a->val, t->v[i].val, a->len) != 0))
            return false;
    }
    return true;
}

CK_RV tok_template_merge(const CK_ATTRIBUTE *tmpl, CK_ULONG n, const tok_attrs *extra, CK_ATTRIBUTE **out,
                         CK_ULONG *nout)
{
    CK_ATTRIBUTE *m = calloc(n + extra->n + 1, sizeof(*m));
    CK_ULONG k = 0;
    if (!m)
        return CKR_HOST_MEMORY;
    for (CK_ULONG i = 0; i < n; i++)
        m[k++] = tmpl[i];
    for (size_t i = 0; i < extra->n; i++) {
        const tok_attr *e = &extra->v[i];
        const CK_ATTRIBUTE *given = tmpl_find(tmpl, n, e->type);
        if (given) {
            CK_RV rv = CKR_OK;
            if (!given->pValue && given->ulValueLen)
                rv = CKR_ATTRIBUTE_VALUE_INVALID;
            else if (given->ulValueLen != e->len || (e->len && memcmp(given->pValue, e->val, e->len) != 0))
                rv = CKR_TEMPLATE_INCONSISTENT;
            if (rv != CKR_OK) {
                free(m);
                return rv;
            }
            continue;
        }
        m[k].type = e->type;
        m[k].pValue = e->val;
        m[k].ulValueLen = e->len;
        k++;
    }
    *out = m;
    *nout = k;
    return CKR_OK;
}

static CK_RV check_value_len(const CK_ATTRIBUTE *a)
{
    if (tok_attr_is_template(a->type))
        return a->ulValueLen % sizeof(CK_ATTRIBUTE) || (!a->pValue && a->ulValueLen) ? CKR_ATTRIBUTE_VALUE_INVALID
                                                                                     : CKR_OK;
    if (!a->pValue && a->ulValueLen)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (tok_attr_is_bool(a->type) && (a->ulValueLen != sizeof(CK_BBOOL) || !a->pValue))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (tok_attr_is_ulong(a->type) && (a->ulValueLen != sizeof(CK_ULONG) || !a->pValue))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    return CKR_OK;
}

static bool tmpl_bool_val(const CK_ATTRIBUTE *a);
static CK_ULONG tmpl_ulong_val(const CK_ATTRIBUTE *a);

/* Value checks beyond the length of fixed-size types. */
static CK_RV check_value(const CK_ATTRIBUTE *t)
{
    switch (t->type) {
    case CKA_START_DATE:
    case CKA_END_DATE:
        return (t->ulValueLen == 0 || t->ulValueLen == sizeof(CK_DATE)) ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case CKA_CERTIFICATE_TYPE:
        return tmpl_ulong_val(t) == CKC_X_509 ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case CKA_CERTIFICATE_CATEGORY:
    case CKA_JAVA_MIDP_SECURITY_DOMAIN:
        return tmpl_ulong_val(t) <= 3 ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case CKA_ALLOWED_MECHANISMS:
        return t->ulValueLen % sizeof(CK_MECHANISM_TYPE) ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_OK;
    default:
        return CKR_OK;
    }
}

static bool tmpl_bool_val(const CK_ATTRIBUTE *a) { return *(const CK_BBOOL *)a->pValue != CK_FALSE; }
static CK_ULONG tmpl_ulong_val(const CK_ATTRIBUTE *a)
{
    CK_ULONG v; /* the caller's buffer need not be aligned */

    memcpy(&v, a->pValue, sizeof(v));
    return v;
}

static const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_ATTRIBUTE_TYPE t)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (tmpl[i].type == t)
            return &tmpl[i];
    return NULL;
}

CK_RV tok_tmpl_bool(const CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_ATTRIBUTE_TYPE t, bool dflt, bool *out)
{
    const CK_ATTRIBUTE *a;

    if (!out || (!tmpl && n))
        return CKR_ARGUMENTS_BAD;
    a = tmpl_find(tmpl, n, t);
    if (!a) {
        *out = dflt;
        return CKR_OK;
    }
    if (!a->pValue || a->ulValueLen != sizeof(CK_BBOOL))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    *out = tmpl_bool_val(a);
    return CKR_OK;
}

CK_OBJECT_CLASS tok_obj_class(const tok_attrs *obj)
{
    CK_ULONG v;
    return tok_attrs_get_ulong(obj, CKA_CLASS, &v) ? v : (CK_OBJECT_CLASS)-1;
}

/* ---- defaults ------------------------------------------------------------ */

typedef struct {
    CK_ATTRIBUTE_TYPE type;
    unsigned objs;
    int kind; /* 0 bool false, 1 bool true, 2 empty bytes, 3 ulong 0 */
} dflt_rule;

static const dflt_rule defaults[] = {
    {CKA_TOKEN, O_ALL, 0},
    {CKA_PRIVATE, O_DATA | O_CERT | O_PUB, 0},
    {CKA_PRIVATE, O_PRIV | O_SECRET, 1},
    {CKA_MODIFIABLE, O_ALL, 1},
    {CKA_COPYABLE, O_ALL, 1},
    {CKA_DESTROYABLE, O_ALL, 1},
    {CKA_LABEL, O_ALL, 2},
    {CKA_APPLICATION, O_DATA, 2},
    {CKA_OBJECT_ID, O_DATA, 2},
    {CKA_VALUE, O_DATA, 2},
    {CKA_TRUSTED, O_CERT | O_PUB | O_SECRET, 0},
    {CKA_CERTIFICATE_CATEGORY, O_CERT, 3},
    {CKA_ID, O_CERT | O_KEYS, 2},
    {CKA_ISSUER, O_CERT, 2},
    {CKA_URL, O_CERT, 2},
    {CKA_HASH_OF_SUBJECT_PUBLIC_KEY, O_CERT, 2},
    {CKA_HASH_OF_ISSUER_PUBLIC_KEY, O_CERT, 2},
    {CKA_JAVA_MIDP_SECURITY_DOMAIN, O_CERT, 3},
    {CKA_CHECK_VALUE, O_CERT, 2},
    {CKA_PUBLIC_KEY_INFO, O_CERT, 2},
    {CKA_SERIAL_NUMBER, O_CERT, 2},
    {CKA_START_DATE, O_CERT | O_KEYS, 2},
    {CKA_END_DATE, O_CERT | O_KEYS, 2},
    {CKA_DERIVE, O_KEYS, 0},
    {CKA_SUBJECT, O_PUB | O_PRIV, 2},
    {CKA_ENCRYPT, O_PUB | O_SECRET, 1},
    {CKA_VERIFY, O_PUB | O_SECRET, 1},
    {CKA_VERIFY_RECOVER, O_PUB, 1},
    {CKA_WRAP, O_PUB | O_SECRET, 1},
    {CKA_DECRYPT, O_PRIV | O_SECRET, 1},
    {CKA_SIGN, O_PRIV | O_SECRET, 1},
    {CKA_SIGN_RECOVER, O_PRIV, 1},
    {CKA_UNWRAP, O_PRIV | O_SECRET, 1},
    {CKA_SENSITIVE, O_PRIV | O_SECRET, 1},
    {CKA_EXTRACTABLE, O_PRIV | O_SECRET, 0},
    {CKA_WRAP_WITH_TRUSTED, O_PRIV | O_SECRET, 0},
    {CKA_ALWAYS_AUTHENTICATE, O_PRIV, 0},
};

static int add_default(tok_attrs *out, const dflt_rule *d)
{
    if (tok_attrs_find(out, d->type))
        return 0;
    switch (d->kind) {
    case 0: return tok_attrs_set_bool(out, d->type, false);
    case 1: return tok_attrs_set_bool(out, d->type, true);
    case 2: return tok_attrs_set(out, d->type, NULL, 0);
    default: return tok_attrs_set_ulong(out, d->type, 0);
    }
}

/* ---- the strict wrap policy ------------------------------------------------ */

/* wrap_policy = strict (configuration, tok_settings.c): no key both wraps
 * (CKA_WRAP or CKA_UNWRAP) and encrypts (CKA_ENCRYPT or CKA_DECRYPT), which
 * is what the wrap-then-decrypt and encrypt-then-unwrap attacks need. The
 * role a template does not choose defaults to off when it chose the other. */

static bool wraps(const tok_attrs *o)
{
    return tok_attrs_get_bool(o, CKA_WRAP, false) || tok_attrs_get_bool(o, CKA_UNWRAP, false);
}

static bool crypts(const tok_attrs *o)
{
    return tok_attrs_get_bool(o, CKA_ENCRYPT, false) || tok_attrs_get_bool(o, CKA_DECRYPT, false);
}

/* C_SetAttributeValue and C_CopyObject under strict: a usage that was off
 * stays off (a key's role cannot change over time, or in a copy: a key that
 * wrapped the secret must not later, or as a twin, decrypt the blob). */
static bool strict_role_raised(const tok_attrs *before, const tok_attrs *after)
{
    static const CK_ATTRIBUTE_TYPE roles[] = {CKA_WRAP, CKA_UNWRAP, CKA_ENCRYPT, CKA_DECRYPT};

    if (!tok_policy_wrap_strict())
        return false;
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
        if (!tok_attrs_get_bool(before, roles[i], false) && tok_attrs_get_bool(after, roles[i], false))
            return true;
    return wraps(after) && crypts(after);
}

/* Before the defaults: the role the template did not choose is off. */
static int strict_defaults(tok_attrs *out)
{
    static const CK_ATTRIBUTE_TYPE wrap_role[] = {CKA_WRAP, CKA_UNWRAP}, crypt_role[] = {CKA_ENCRYPT, CKA_DECRYPT};
    const CK_ATTRIBUTE_TYPE *off = wraps(out) ? crypt_role : wrap_role;

    for (int i = 0; i < 2; i++)
        if (!tok_attrs_find(out, off[i]) && tok_attrs_set_bool(out, off[i], false) != 0)
            return -1;
    return 0;
}

/* ---- build --------------------------------------------------------------- */

static CK_RV build(tok_build_mode mode, CK_OBJECT_CLASS cls, CK_KEY_TYPE ktype, CK_MECHANISM_TYPE mech,
                   const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out);

/* Material a key generation / unwrap / derive may take from the caller. */
static bool material_input(tok_build_mode mode, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE t)
{
    if (cls == CKO_SECRET_KEY)
        return t == CKA_VALUE_LEN; /* the size of the key to make */
    if (mode == TOK_BUILD_GENERATE && cls == CKO_PUBLIC_KEY)
        return t == CKA_MODULUS_BITS || t == CKA_PUBLIC_EXPONENT || t == CKA_EC_PARAMS;
    return false;
}

CK_RV tok_policy_build(tok_build_mode mode, CK_OBJECT_CLASS cls, CK_KEY_TYPE ktype, CK_MECHANISM_TYPE mech,
                       const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out)
{
    CK_RV rv;

    if (!out || (!tmpl && n))
        return CKR_ARGUMENTS_BAD;
    tok_attrs_free(out);
    rv = build(mode, cls, ktype, mech, tmpl, n, out);
    if (rv != CKR_OK)
        tok_attrs_free(out);
    return rv;
}

static CK_RV build(tok_build_mode mode, CK_OBJECT_CLASS cls, CK_KEY_TYPE ktype, CK_MECHANISM_TYPE mech,
                   const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out)
{
    const CK_ATTRIBUTE *a;
    CK_RV rv;

    /* Class and key type: from the mechanism, or from the template. */
    a = tmpl_find(tmpl, n, CKA_CLASS);
    if (a && (rv = check_value_len(a)) != CKR_OK)
        return rv;
    if (cls == TOK_CLASS_FROM_TEMPLATE) {
        if (!a)
            return CKR_TEMPLATE_INCOMPLETE;
        cls = tmpl_ulong_val(a);
    } else if (a && tmpl_ulong_val(a) != cls) {
        return CKR_TEMPLATE_INCONSISTENT;
    }
    unsigned cb = class_bit(cls);
    if (!cb)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (cb & O_KEYS) {
        a = tmpl_find(tmpl, n, CKA_KEY_TYPE);
        if (a && (rv = check_value_len(a)) != CKR_OK)
            return rv;
        if (ktype == TOK_KTYPE_FROM_TEMPLATE) {
            if (!a)
                return CKR_TEMPLATE_INCOMPLETE;
            ktype = tmpl_ulong_val(a);
        } else if (a && tmpl_ulong_val(a) != ktype) {
            return CKR_TEMPLATE_INCONSISTENT;
        }
        if (!ktype_supported(cls, ktype))
            return CKR_ATTRIBUTE_VALUE_INVALID;
    }

    for (CK_ULONG i = 0; i < n; i++) {
        const CK_ATTRIBUTE *t = &tmpl[i];
        const attr_rule *r = rule_for(cls, ktype, t->type);

        if (!r && mode == TOK_BUILD_GENERATE && t->type == CKA_VALUE_LEN && tok_ktype_fixed_len(ktype)) {
            /* DES keys have no CKA_VALUE_LEN, but pkcs11-tool (OpenSC 0.23)
             * puts one in every secret key generation: one that says the
             * type's length is taken, and not kept. */
            if ((rv = check_value_len(t)) != CKR_OK)
                return rv;
            if (tmpl_ulong_val(t) != tok_ktype_fixed_len(ktype))
                return CKR_TEMPLATE_INCONSISTENT;
            continue;
        }
        if (!r)
            return CKR_ATTRIBUTE_TYPE_INVALID;
        if ((rv = check_value_len(t)) != CKR_OK)
            return rv;
        if (r->flags & A_TOKEN_ONLY)
            return CKR_ATTRIBUTE_READ_ONLY;
        if (mode != TOK_BUILD_CREATE && (r->flags & A_MATERIAL) && !material_input(mode, cls, t->type))
            return CKR_ATTRIBUTE_READ_ONLY;
        if (mode == TOK_BUILD_CREATE && (r->flags & A_NOT_CREATE))
            return CKR_TEMPLATE_INCONSISTENT;
        if (tok_attr_is_template(t->type)) {
            uint8_t *packed = NULL;
            size_t plen = 0;
            if (tok_attrs_find(out, t->type))
                return CKR_TEMPLATE_INCONSISTENT;
            if ((rv = template_pack(t, &packed, &plen)) != CKR_OK)
                return rv;
            int sr = tok_attrs_set(out, t->type, packed, (CK_ULONG)plen);
            free(packed);
            if (sr != 0)
                return CKR_HOST_MEMORY;
            continue;
        }
        /* The same attribute twice with different values. */
        const tok_attr *prev = tok_attrs_find(out, t->type);
        if (prev && (prev->len != t->ulValueLen || (t->ulValueLen && memcmp(prev->val, t->pValue, t->ulValueLen))))
            return CKR_TEMPLATE_INCONSISTENT;
        if ((rv = check_value(t)) != CKR_OK)
            return rv;
        if (t->type == CKA_TRUSTED && tmpl_bool_val(t))
            return CKR_ATTRIBUTE_READ_ONLY; /* only the SO may mark trust */
        if (tok_attrs_set(out, t->type, t->pValue, t->ulValueLen) != 0)
            return CKR_HOST_MEMORY;
    }

    if (tok_attrs_set_ulong(out, CKA_CLASS, cls) != 0)
        goto nomem;
    if ((cb & O_KEYS) && tok_attrs_set_ulong(out, CKA_KEY_TYPE, ktype) != 0)
        goto nomem;
    if (cb == O_CERT && (!tok_attrs_find(out, CKA_CERTIFICATE_TYPE) || !tok_attrs_find(out, CKA_SUBJECT) ||
                         !tok_attrs_find(out, CKA_VALUE)))
        return CKR_TEMPLATE_INCOMPLETE;
    if ((cb & O_KEYS) && tok_policy_wrap_strict() && strict_defaults(out) != 0)
        goto nomem;
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
        if ((defaults[i].objs & cb) && add_default(out, &defaults[i]) != 0)
            goto nomem;
    if ((cb & O_KEYS) && tok_policy_wrap_strict() && wraps(out) && crypts(out))
        return CKR_TEMPLATE_INCONSISTENT; /* strict: one key, one role */
    if (cb & O_KEYS) {
        bool local = mode == TOK_BUILD_GENERATE;
        if (tok_attrs_set_bool(out, CKA_LOCAL, local) != 0 ||
            tok_attrs_set_ulong(out, CKA_KEY_GEN_MECHANISM, local ? mech : CK_UNAVAILABLE_INFORMATION) != 0 ||
            (!tok_attrs_find(out, CKA_ALLOWED_MECHANISMS) && tok_attrs_set(out, CKA_ALLOWED_MECHANISMS, NULL, 0)))
            goto nomem;
    }
    return CKR_OK;
nomem:
    return CKR_HOST_MEMORY; /* the caller frees the partial set */
}

CK_RV tok_policy_finish(tok_build_mode mode, tok_attrs *obj)
{
    CK_OBJECT_CLASS cls = tok_obj_class(obj);
    bool local = mode == TOK_BUILD_GENERATE;

    if (cls != CKO_PRIVATE_KEY && cls != CKO_SECRET_KEY)
        return CKR_OK;
    if (tok_attrs_set_bool(obj, CKA_ALWAYS_SENSITIVE, local && tok_attrs_get_bool(obj, CKA_SENSITIVE, false)) != 0 ||
        tok_attrs_set_bool(obj, CKA_NEVER_EXTRACTABLE, local && !tok_attrs_get_bool(obj, CKA_EXTRACTABLE, true)) != 0)
        return CKR_HOST_MEMORY;
    return CKR_OK;
}

/* ---- get ----------------------------------------------------------------- */

static bool is_sensitive(const tok_attrs *obj, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE t)
{
    if (!tok_attr_is_secret(cls, t))
        return false;
    return tok_attrs_get_bool(obj, CKA_SENSITIVE, true) || !tok_attrs_get_bool(obj, CKA_EXTRACTABLE, false);
}

/* An array attribute: the caller's pValue is an array of CK_ATTRIBUTE
 * filled like a template of its own (types, lengths, values). */
static CK_RV get_template(const tok_attr *a, CK_ATTRIBUTE *t)
{
    tok_attrs nested = TOK_ATTRS_INIT;
    CK_RV rv = CKR_OK;
    int prc = a->len ? tok_attrs_parse(a->val, a->len, &nested) : 0;
    if (prc != 0) {
        t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return prc == TOK_ATTRS_NOMEM ? CKR_HOST_MEMORY : CKR_GENERAL_ERROR;
    }
    CK_ULONG need = (CK_ULONG)(nested.n * sizeof(CK_ATTRIBUTE));
    if (!t->pValue) {
        t->ulValueLen = need;
    } else if (t->ulValueLen < need) {
        t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        rv = CKR_BUFFER_TOO_SMALL;
    } else {
        CK_ATTRIBUTE *out = t->pValue;
        for (size_t i = 0; i < nested.n; i++) {
            const tok_attr *e = &nested.v[i];
            out[i].type = e->type;
            if (!out[i].pValue) {
                out[i].ulValueLen = e->len;
            } else if (out[i].ulValueLen >= e->len) {
                if (e->len)
                    memcpy(out[i].pValue, e->val, e->len);
                out[i].ulValueLen = e->len;
            } else {
                out[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
                rv = CKR_BUFFER_TOO_SMALL;
            }
        }
        t->ulValueLen = need;
    }
    tok_attrs_free(&nested);
    return rv;
}

CK_RV tok_policy_get(const tok_attrs *obj, CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    CK_OBJECT_CLASS cls;
    CK_RV rv = CKR_OK;

    if (!obj || (!tmpl && n))
        return CKR_ARGUMENTS_BAD;
    cls = tok_obj_class(obj);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_ATTRIBUTE *t = &tmpl[i];
        const tok_attr *a;

        if (is_sensitive(obj, cls, t->type)) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_ATTRIBUTE_SENSITIVE;
            continue;
        }
        a = tok_attrs_find(obj, t->type);
        if (!a) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL)
                rv = CKR_ATTRIBUTE_TYPE_INVALID;
            continue;
        }
        if (tok_attr_is_template(t->type)) {
            CK_RV r = get_template(a, t);
            if (r == CKR_HOST_MEMORY || (r != CKR_OK && rv == CKR_OK))
                rv = r;
            continue;
        }
        if (!t->pValue) {
            t->ulValueLen = a->len;
        } else if (t->ulValueLen >= a->len) {
            if (a->len)
                memcpy(t->pValue, a->val, a->len);
            t->ulValueLen = a->len;
        } else {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK)
                rv = CKR_BUFFER_TOO_SMALL;
        }
    }
    return rv;
}

/* ---- set / copy ---------------------------------------------------------- */

/* Flags that may only move one way. */
/* t passed check_value_len: the value is read only for the booleans below. */
static CK_RV one_way(const tok_attrs *obj, const CK_ATTRIBUTE *t, bool copy)
{
    bool now, want;
    switch (t->type) {
    case CKA_MODIFIABLE:
    case CKA_DESTROYABLE:
    case CKA_SENSITIVE:
    case CKA_WRAP_WITH_TRUSTED:
    case CKA_EXTRACTABLE:
    case CKA_COPYABLE: want = tmpl_bool_val(t); break;
    default: return CKR_OK;
    }
    switch (t->type) {
    case CKA_MODIFIABLE: /* a copy may be more restricted, never less */
    case CKA_DESTROYABLE:
        if (!copy)
            return CKR_OK;
        now = tok_attrs_get_bool(obj, t->type, true);
        return (!now && want) ? CKR_ATTRIBUTE_READ_ONLY : CKR_OK;
    case CKA_SENSITIVE: /* FALSE -> TRUE */
    case CKA_WRAP_WITH_TRUSTED:
        now = tok_attrs_get_bool(obj, t->type, false);
        return (now && !want) ? CKR_ATTRIBUTE_READ_ONLY : CKR_OK;
    case CKA_EXTRACTABLE: /* TRUE -> FALSE */
    case CKA_COPYABLE:
        now = tok_attrs_get_bool(obj, t->type, true);
        return (!now && want) ? CKR_ATTRIBUTE_READ_ONLY : CKR_OK;
    default: return CKR_OK;
    }
}

static CK_RV apply(const tok_attrs *obj, const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out, bool copy)
{
    CK_OBJECT_CLASS cls = tok_obj_class(obj);
    CK_ULONG kt = (CK_ULONG)-1;
    CK_RV rv;

    (void)tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt);
    for (CK_ULONG i = 0; i < n; i++) {
        const CK_ATTRIBUTE *t = &tmpl[i];
        const attr_rule *r = rule_for(cls, kt, t->type);
        bool allowed;

        if (!r)
            return CKR_ATTRIBUTE_TYPE_INVALID;
        if ((rv = check_value_len(t)) != CKR_OK)
            return rv;
        /* What C_SetAttributeValue may change. Key material and the value
         * of certificates never change. */
        allowed = (r->flags & A_MODIFY) && ((t->type != CKA_VALUE && t->type != CKA_OBJECT_ID) || cls == CKO_DATA);
        /* A copy may change what the original's owner could set on the
         * original (PKCS#11 3.0, C_CopyObject: "any attributes of the object
         * that can ordinarily be modified"), so of an object that cannot be
         * modified, only where it lives, its name and its one-way flags: a
         * copy never gets a role its locked original could not. */
        if (copy)
            allowed = (allowed && tok_attrs_get_bool(obj, CKA_MODIFIABLE, true)) || t->type == CKA_TOKEN ||
                      t->type == CKA_PRIVATE || t->type == CKA_MODIFIABLE || t->type == CKA_DESTROYABLE ||
                      t->type == CKA_LABEL || t->type == CKA_ID || t->type == CKA_SENSITIVE ||
                      t->type == CKA_EXTRACTABLE || t->type == CKA_COPYABLE;
        if (!allowed) {
            /* Setting an attribute to the value it already has is harmless. */
            const tok_attr *cur = tok_attrs_find(obj, t->type);
            if (cur && cur->len == t->ulValueLen && (!cur->len || memcmp(cur->val, t->pValue, cur->len) == 0) &&
                !tok_attr_is_secret(cls, t->type))
                continue;
            return CKR_ATTRIBUTE_READ_ONLY;
        }
        if ((rv = check_value(t)) != CKR_OK || (rv = one_way(obj, t, copy)) != CKR_OK)
            return rv;
        if (tok_attrs_set(out, t->type, t->pValue, t->ulValueLen) != 0)
            return CKR_HOST_MEMORY;
    }
    return CKR_OK;
}

CK_RV tok_policy_set(const tok_attrs *obj, const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out)
{
    CK_RV rv;

    if (!obj || !out || (!tmpl && n))
        return CKR_ARGUMENTS_BAD;
    if (!tok_attrs_get_bool(obj, CKA_MODIFIABLE, true))
        return CKR_ACTION_PROHIBITED;
    tok_attrs_free(out);
    if (tok_attrs_copy(out, obj) != 0)
        return CKR_HOST_MEMORY;
    rv = apply(obj, tmpl, n, out, false);
    if (rv == CKR_OK && strict_role_raised(obj, out))
        rv = CKR_ATTRIBUTE_VALUE_INVALID; /* strict: one key, one role, for good */
    if (rv != CKR_OK)
        tok_attrs_free(out);
    return rv;
}

CK_RV tok_policy_copy(const tok_attrs *obj, const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out)
{
    CK_RV rv;

    if (!obj || !out || (!tmpl && n))
        return CKR_ARGUMENTS_BAD;
    if (!tok_attrs_get_bool(obj, CKA_COPYABLE, true))
        return CKR_ACTION_PROHIBITED;
    tok_attrs_free(out);
    if (tok_attrs_copy(out, obj) != 0)
        return CKR_HOST_MEMORY;
    rv = apply(obj, tmpl, n, out, true);
    if (rv == CKR_OK && strict_role_raised(obj, out))
        rv = CKR_TEMPLATE_INCONSISTENT; /* strict: one key, one role, in every copy */
    if (rv != CKR_OK)
        tok_attrs_free(out);
    return rv;
}
