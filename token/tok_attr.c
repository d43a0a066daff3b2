/* p11mk token layer: attribute lists and their serialized form.
 *
 * Values of the attribute types that can hold key material (CKA_VALUE and
 * the RSA private parts) are kept in memory for secrets (ks_secmem: out of
 * core dumps, locked against swap where allowed), whatever the object's
 * class: a list does not always know its class when a value is set, and a
 * certificate's CKA_VALUE in that memory costs little. */
#include "token/tok_attr.h"
#include "keystore/ks.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#define BLOB_VERSION 1

static bool may_hold_key(CK_ATTRIBUTE_TYPE t)
{
    switch (t) {
    case CKA_VALUE:
    case CKA_PRIVATE_EXPONENT:
    case CKA_PRIME_1:
    case CKA_PRIME_2:
    case CKA_EXPONENT_1:
    case CKA_EXPONENT_2:
    case CKA_COEFFICIENT:
        return true;
    default:
        return false;
    }
}

static void value_free(CK_ATTRIBUTE_TYPE t, uint8_t *val, CK_ULONG len)
{
    if (!val)
        return;
    if (may_hold_key(t)) {
        ks_secmem_free(val); /* cleanses */
        return;
    }
    OPENSSL_cleanse(val, len);
    free(val);
}

static void attr_clear(tok_attr *a)
{
    value_free(a->type, a->val, a->len);
    a->val = NULL;
    a->len = 0;
}

void tok_attrs_free(tok_attrs *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        attr_clear(&a->v[i]);
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

const tok_attr *tok_attrs_find(const tok_attrs *a, CK_ATTRIBUTE_TYPE t)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].type == t)
            return &a->v[i];
    return NULL;
}

static int set_owned(tok_attrs *a, CK_ATTRIBUTE_TYPE t, uint8_t *val, CK_ULONG len)
{
    tok_attr *slot = (tok_attr *)tok_attrs_find(a, t);

    if (!slot) {
        if (a->n == a->cap) {
            size_t cap = a->cap ? a->cap * 2 : 16;
            tok_attr *v = realloc(a->v, cap * sizeof(*v));

            if (!v)
                return -1;
            a->v = v;
            a->cap = cap;
        }
        slot = &a->v[a->n++];
        slot->val = NULL;
        slot->len = 0;
    }
    attr_clear(slot);
    slot->type = t;
    slot->val = val;
    slot->len = len;
    return 0;
}

int tok_attrs_set(tok_attrs *a, CK_ATTRIBUTE_TYPE t, const void *val, CK_ULONG len)
{
    uint8_t *copy = NULL;

    if (len) {
        if (!val || !(copy = may_hold_key(t) ? ks_secmem_alloc(len) : malloc(len)))
            return -1;
        memcpy(copy, val, len);
    }
    if (set_owned(a, t, copy, len) != 0) {
        value_free(t, copy, len);
        return -1;
    }
    return 0;
}

int tok_attrs_set_bool(tok_attrs *a, CK_ATTRIBUTE_TYPE t, bool v)
{
    CK_BBOOL b = v ? CK_TRUE : CK_FALSE;

    return tok_attrs_set(a, t, &b, sizeof(b));
}

int tok_attrs_set_ulong(tok_attrs *a, CK_ATTRIBUTE_TYPE t, CK_ULONG v)
{
    return tok_attrs_set(a, t, &v, sizeof(v));
}

void tok_attrs_remove(tok_attrs *a, CK_ATTRIBUTE_TYPE t)
{
    for (size_t i = 0; i < a->n; i++) {
        if (a->v[i].type == t) {
            attr_clear(&a->v[i]);
            a->v[i] = a->v[--a->n];
            return;
        }
    }
}

int tok_attrs_copy(tok_attrs *dst, const tok_attrs *src)
{
    tok_attrs out = TOK_ATTRS_INIT;

    for (size_t i = 0; i < src->n; i++) {
        if (tok_attrs_set(&out, src->v[i].type, src->v[i].val, src->v[i].len) != 0) {
            tok_attrs_free(&out);
            return -1;
        }
    }
    *dst = out;
    return 0;
}

int tok_attrs_take(tok_attrs *dst, tok_attrs *src)
{
    if (dst->cap - dst->n < src->n) {
        size_t cap = dst->n + src->n;
        tok_attr *v = realloc(dst->v, cap * sizeof(*v));

        if (!v)
            return -1;
        dst->v = v;
        dst->cap = cap;
    }
    if (src->n)
        memcpy(dst->v + dst->n, src->v, src->n * sizeof(*src->v));
    dst->n += src->n;
    free(src->v);
    *src = (tok_attrs)TOK_ATTRS_INIT;
    return 0;
}

bool tok_attrs_get_bool(const tok_attrs *a, CK_ATTRIBUTE_TYPE t, bool dflt)
{
    const tok_attr *x = tok_attrs_find(a, t);

    if (!x || x->len != sizeof(CK_BBOOL))
        return dflt;
    return *(const CK_BBOOL *)x->val != CK_FALSE;
}

bool tok_obj_is_token(const tok_attrs *obj) { return tok_attrs_get_bool(obj, CKA_TOKEN, false); }
bool tok_obj_is_private(const tok_attrs *obj) { return tok_attrs_get_bool(obj, CKA_PRIVATE, false); }

bool tok_attrs_get_ulong(const tok_attrs *a, CK_ATTRIBUTE_TYPE t, CK_ULONG *out)
{
    const tok_attr *x = tok_attrs_find(a, t);

    if (!x || x->len != sizeof(CK_ULONG))
        return false;
    memcpy(out, x->val, sizeof(CK_ULONG));
    return true;
}

/* ---- attribute kinds ------------------------------------------------------ */

/* Switches, not lists: asked for every attribute of every object read. */
bool tok_attr_is_bool(CK_ATTRIBUTE_TYPE t)
{
    switch (t) {
    case CKA_TOKEN:
    case CKA_PRIVATE:
    case CKA_MODIFIABLE:
    case CKA_COPYABLE:
    case CKA_DESTROYABLE:
    case CKA_SENSITIVE:
    case CKA_EXTRACTABLE:
    case CKA_ENCRYPT:
    case CKA_DECRYPT:
    case CKA_SIGN:
    case CKA_SIGN_RECOVER:
    case CKA_VERIFY:
    case CKA_VERIFY_RECOVER:
    case CKA_WRAP:
    case CKA_UNWRAP:
    case CKA_DERIVE:
    case CKA_LOCAL:
    case CKA_ALWAYS_SENSITIVE:
    case CKA_NEVER_EXTRACTABLE:
    case CKA_TRUSTED:
    case CKA_WRAP_WITH_TRUSTED:
    case CKA_ALWAYS_AUTHENTICATE:
    case CKA_RESET_ON_INIT:
    case CKA_HAS_RESET:
    case CKA_COLOR:
    case CKA_OTP_USER_FRIENDLY_MODE:
        return true;
    default:
        return false;
    }
}

bool tok_attr_is_ulong(CK_ATTRIBUTE_TYPE t)
{
    switch (t) {
    case CKA_CLASS:
    case CKA_KEY_TYPE:
    case CKA_CERTIFICATE_TYPE:
    case CKA_CERTIFICATE_CATEGORY:
    case CKA_JAVA_MIDP_SECURITY_DOMAIN:
    case CKA_VALUE_LEN:
    case CKA_MODULUS_BITS:
    case CKA_VALUE_BITS:
    case CKA_PRIME_BITS:
    case CKA_SUB_PRIME_BITS:
    case CKA_KEY_GEN_MECHANISM:
    case CKA_NAME_HASH_ALGORITHM:
    case CKA_MECHANISM_TYPE:
    case CKA_HW_FEATURE_TYPE:
    case CKA_PIXEL_X:
    case CKA_PIXEL_Y:
    case CKA_RESOLUTION:
    case CKA_CHAR_ROWS:
    case CKA_CHAR_COLUMNS:
    case CKA_BITS_PER_PIXEL:
    case CKA_OTP_FORMAT:
    case CKA_OTP_LENGTH:
    case CKA_OTP_TIME_INTERVAL:
    case CKA_OTP_CHALLENGE_REQUIREMENT:
    case CKA_OTP_TIME_REQUIREMENT:
    case CKA_OTP_COUNTER_REQUIREMENT:
    case CKA_OTP_PIN_REQUIREMENT:
        return true;
    default:
        return false;
    }
}

static bool in_list(const CK_ATTRIBUTE_TYPE *list, size_t n, CK_ATTRIBUTE_TYPE t)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == t)
            return true;
    return false;
}

bool tok_attr_is_secret(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE t)
{
    static const CK_ATTRIBUTE_TYPE private_parts[] = {
        CKA_VALUE, CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT,
    };

    if (cls == CKO_SECRET_KEY)
        return t == CKA_VALUE;
    if (cls == CKO_PRIVATE_KEY)
        return in_list(private_parts, sizeof(private_parts) / sizeof(*private_parts), t);
    return false;
}

void tok_attrs_drop_secrets(tok_attrs *a)
{
    CK_ULONG cls;

    if (!tok_attrs_get_ulong(a, CKA_CLASS, &cls))
        return;
    for (size_t i = 0; i < a->n;) {
        if (tok_attr_is_secret(cls, a->v[i].type)) {
            attr_clear(&a->v[i]);
            a->v[i] = a->v[--a->n];
        } else {
            i++;
        }
    }
}

bool tok_attrs_match(const tok_attrs *obj, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++) {
        const tok_attr *a = tok_attrs_find(obj, tmpl[i].type);

        if (!a || a->len != tmpl[i].ulValueLen)
            return false;
        if (a->len && (!tmpl[i].pValue || memcmp(a->val, tmpl[i].pValue, a->len) != 0))
            return false;
    }
    return true;
}

/* ---- serialization ----------------------------------------------------------
 * version(1) | count u32 | { type u64 | len u32 | value } * count, little
 * endian. CK_ULONG values are stored as u64 so blobs are portable. */

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;

    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static size_t stored_len(const tok_attr *a)
{
    return tok_attr_is_ulong(a->type) && a->len == sizeof(CK_ULONG) ? 8 : a->len;
}

/* One attribute's serialized form at p; returns the byte after it. */
static uint8_t *put_attr(uint8_t *p, const tok_attr *x)
{
    size_t l = stored_len(x);

    put_le(p, x->type, 8);
    put_le(p + 8, l, 4);
    p += 12;
    if (l == 8 && x->len == sizeof(CK_ULONG) && tok_attr_is_ulong(x->type)) {
        CK_ULONG v;

        memcpy(&v, x->val, sizeof(v));
        put_le(p, v, 8);
    } else if (l) {
        memcpy(p, x->val, l);
    }
    return p + l;
}

int tok_attrs_serialize(const tok_attrs *a, uint8_t **out, size_t *len)
{
    size_t total = 1 + 4;
    uint8_t *buf, *p;

    for (size_t i = 0; i < a->n; i++)
        total += 8 + 4 + stored_len(&a->v[i]);
    buf = malloc(total);
    if (!buf)
        return -1;
    p = buf;
    *p++ = BLOB_VERSION;
    put_le(p, a->n, 4);
    p += 4;
    for (size_t i = 0; i < a->n; i++)
        p = put_attr(p, &a->v[i]);
    *out = buf;
    *len = total;
    return 0;
}

int tok_attrs_serialize_refs(const tok_attr *const *v, size_t n, uint8_t **out, size_t *len)
{
    size_t total = 1 + 4;
    uint8_t *buf, *p;

    for (size_t i = 0; i < n; i++)
        total += 8 + 4 + stored_len(v[i]);
    buf = malloc(total);
    if (!buf)
        return -1;
    p = buf;
    *p++ = BLOB_VERSION;
    put_le(p, n, 4);
    p += 4;
    for (size_t i = 0; i < n; i++)
        p = put_attr(p, v[i]);
    *out = buf;
    *len = total;
    return 0;
}

int tok_attrs_parse(const uint8_t *buf, size_t len, tok_attrs *out)
{
    tok_attrs a = TOK_ATTRS_INIT;
    size_t pos = 5;
    uint64_t count;

    if (!buf || len < 5 || buf[0] != BLOB_VERSION)
        return -1;
    count = get_le(buf + 1, 4);
    if (count > (len - 5) / 12)
        return -1; /* each attribute takes at least 12 bytes */
    if (count && !(a.v = malloc((size_t)count * sizeof(*a.v))))
        return TOK_ATTRS_NOMEM;
    a.cap = (size_t)count;
    for (uint64_t i = 0; i < count; i++) {
        CK_ATTRIBUTE_TYPE type;
        uint8_t *copy = NULL;
        CK_ULONG vl;
        size_t l;

        if (len - pos < 12)
            goto bad;
        type = (CK_ATTRIBUTE_TYPE)get_le(buf + pos, 8);
        l = (size_t)get_le(buf + pos + 8, 4);
        pos += 12;
        if (len - pos < l || tok_attrs_find(&a, type))
            goto bad;
        if (tok_attr_is_ulong(type) && l == 8) {
            CK_ULONG v = (CK_ULONG)get_le(buf + pos, 8);

            vl = sizeof(v);
            if (!(copy = may_hold_key(type) ? ks_secmem_alloc(vl) : malloc(vl)))
                goto nomem;
            memcpy(copy, &v, vl);
        } else {
            vl = (CK_ULONG)l;
            if (l) {
                if (!(copy = may_hold_key(type) ? ks_secmem_alloc(l) : malloc(l)))
                    goto nomem;
                memcpy(copy, buf + pos, l);
            }
        }
        a.v[a.n++] = (tok_attr){type, vl, copy}; /* unique (checked above), within the capacity */
        pos += l;
    }
    if (pos != len)
        goto bad;
    *out = a;
    return 0;
nomem:
    tok_attrs_free(&a);
    return TOK_ATTRS_NOMEM;
bad:
    tok_attrs_free(&a);
    return -1;
}
