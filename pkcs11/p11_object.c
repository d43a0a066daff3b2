/* p11mk pkcs11 layer: object handles, session objects, object functions,
 * search. Token objects live in the token layer; session objects here. */
#include "pkcs11/p11_internal.h"

#include <openssl/crypto.h>
#include <stdlib.h>

typedef struct {
    CK_OBJECT_HANDLE h;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE owner;
    tok_attrs attrs;
    tok_key *key; /* parsed on first use */
} p11_sobj;

/* Protected by the global lock. */
static struct {
    p11_sobj **v;
    size_t n, cap;
    CK_OBJECT_HANDLE next;
} so;

static void sobj_free(p11_sobj *o)
{
    tok_attrs_free(&o->attrs);
    tok_key_unref(o->key);
    free(o);
}

void p11_sobjs_free_all(void)
{
    for (size_t i = 0; i < so.n; i++)
        sobj_free(so.v[i]);
    free(so.v);
    memset(&so, 0, sizeof(so));
}

static void drop_where(bool by_session, CK_ULONG id)
{
    p11_lock();
    for (size_t i = 0; i < so.n;) {
        p11_sobj *o = so.v[i];

        if (by_session ? o->owner == id : o->slot == id) {
            so.v[i] = so.v[--so.n];
            sobj_free(o);
        } else {
            i++;
        }
    }
    p11_unlock();
}

void p11_sobjs_drop_session(CK_SESSION_HANDLE h) { drop_where(true, h); }
void p11_sobjs_drop_slot(CK_SLOT_ID slot) { drop_where(false, slot); }

static p11_sobj *sobj_locked(CK_SLOT_ID slot, CK_OBJECT_HANDLE h)
{
    for (size_t i = 0; i < so.n; i++)
        if (so.v[i]->h == h && so.v[i]->slot == slot)
            return so.v[i];
    return NULL;
}

CK_RV p11_object_attrs(p11_session *s, CK_OBJECT_HANDLE h, tok_attrs *out)
{
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;
    tok_access ac = p11_access(s);

    if (h == CK_INVALID_HANDLE)
        return CKR_OBJECT_HANDLE_INVALID;
    if (!(h & P11_SOBJ_BIT))
        return tok_obj_read(p11_tok(), &ac, h, out);
    p11_sobj *o;

    p11_lock();
    o = sobj_locked(s->slot, h);
    if (o)
        rv = tok_attrs_copy(out, &o->attrs) == 0 ? CKR_OK : CKR_HOST_MEMORY;
    p11_unlock();
    if (rv == CKR_OK && !tok_access_sees(&ac, out)) {
        tok_attrs_free(out);
        rv = CKR_OBJECT_HANDLE_INVALID;
    }
    return rv;
}

static CK_RV sobj_key(p11_session *s, CK_OBJECT_HANDLE h, tok_key **key, tok_attrs *attrs)
{
    tok_key *k = NULL;
    p11_sobj *o;
    CK_RV rv = p11_object_attrs(s, h, attrs);

    if (rv != CKR_OK)
        return rv;
    p11_lock();
    o = sobj_locked(s->slot, h);
    if (o && o->key)
        k = tok_key_ref(o->key);
    p11_unlock();
    if (!k) {
        rv = tok_key_from_attrs(attrs, &k);
        if (rv != CKR_OK) {
            tok_attrs_free(attrs);
            return rv;
        }
        p11_lock();
        o = sobj_locked(s->slot, h);
        if (o && !o->key)
            o->key = tok_key_ref(k);
        p11_unlock();
    }
    *key = k;
    return CKR_OK;
}

CK_RV p11_object_key(p11_session *s, CK_OBJECT_HANDLE h, tok_key **key, tok_attrs *attrs)
{
    CK_RV rv;

    if (h == CK_INVALID_HANDLE)
        return CKR_KEY_HANDLE_INVALID;
    if (h & P11_SOBJ_BIT) {
        rv = sobj_key(s, h, key, attrs);
    } else {
        tok_access ac = p11_access(s);
        rv = tok_obj_key(p11_tok(), &ac, h, key, attrs);
    }
    return rv == CKR_OBJECT_HANDLE_INVALID ? CKR_KEY_HANDLE_INVALID : rv;
}

CK_RV p11_write_allowed(p11_session *s, const tok_attrs *obj)
{
    tok_access ac = p11_access(s);
    return tok_access_write(&ac, obj);
}

CK_RV p11_object_add(p11_session *s, tok_attrs *obj, CK_OBJECT_HANDLE *h)
{
    tok_access ac = p11_access(s);
    CK_RV rv;
    p11_sobj *o;

    if (tok_obj_is_token(obj)) {
        uint64_t oid = 0;

        rv = tok_obj_store(p11_tok(), &ac, obj, &oid);
        if (rv == CKR_OK)
            *h = (CK_OBJECT_HANDLE)oid;
        return rv;
    }
    if ((rv = tok_access_write(&ac, obj)) != CKR_OK)
        return rv;
    o = calloc(1, sizeof(*o));
    if (!o)
        return CKR_HOST_MEMORY;
    o->attrs = *obj; /* take ownership */
    *obj = (tok_attrs)TOK_ATTRS_INIT;
    o->slot = s->slot;
    o->owner = s->h;
    p11_lock();
    if (so.n == so.cap) {
        size_t cap = so.cap ? so.cap * 2 : 32;
        p11_sobj **v = realloc(so.v, cap * sizeof(*v));

        if (!v) {
            p11_unlock();
            sobj_free(o);
            return CKR_HOST_MEMORY;
        }
        so.v = v;
        so.cap = cap;
    }
    o->h = P11_SOBJ_BIT | ++so.next;
    so.v[so.n++] = o;
    *h = o->h;
    p11_unlock();
    return CKR_OK;
}

/* ---- object functions ---------------------------------------------------- */

CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                     CK_OBJECT_HANDLE_PTR phObject)
{
    P11_AUTO_ATTRS obj = TOK_ATTRS_INIT;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!pTemplate && ulCount) || !phObject)
        rv = CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK)
        rv = tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE,
                              CK_UNAVAILABLE_INFORMATION, pTemplate, ulCount, &obj);
    if (rv == CKR_OK && tok_attrs_find(&obj, CKA_KEY_TYPE))
        rv = tok_mech_complete_import(&obj);
    if (rv == CKR_OK)
        rv = tok_policy_finish(TOK_BUILD_CREATE, &obj);
    if (rv == CKR_OK)
        rv = p11_object_add(s, &obj, phObject);
    p11_session_put(s);
    return rv;
}

CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                   CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
    P11_AUTO_ATTRS src = TOK_ATTRS_INIT;
    P11_AUTO_ATTRS obj = TOK_ATTRS_INIT;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!pTemplate && ulCount) || !phNewObject)
        rv = CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK)
        rv = p11_object_attrs(s, hObject, &src);
    if (rv == CKR_OK)
        rv = tok_policy_copy(&src, pTemplate, ulCount, &obj);
    if (rv == CKR_OK)
        rv = p11_object_add(s, &obj, phNewObject);
    p11_session_put(s);
    return rv;
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
    P11_AUTO_ATTRS obj = TOK_ATTRS_INIT;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    rv = p11_object_attrs(s, hObject, &obj);
    if (rv == CKR_OK)
        rv = p11_write_allowed(s, &obj);
    if (rv == CKR_OK && !tok_attrs_get_bool(&obj, CKA_DESTROYABLE, true))
        rv = CKR_ACTION_PROHIBITED;
    if (rv == CKR_OK) {
        if (hObject & P11_SOBJ_BIT) {
            p11_lock();
            for (size_t i = 0; i < so.n; i++) {
                if (so.v[i]->h == hObject) {
                    p11_sobj *o = so.v[i];

                    so.v[i] = so.v[--so.n];
                    sobj_free(o);
                    break;
                }
            }
            p11_unlock();
        } else {
            tok_access ac = p11_access(s);
            rv = tok_obj_destroy(p11_tok(), &ac, hObject);
        }
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
    P11_AUTO_ATTRS obj = TOK_ATTRS_INIT;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);
    uint8_t *blob = NULL;
    size_t len = 0;

    if (rv != CKR_OK)
        return rv;
    if (!pulSize)
        rv = CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK)
        rv = p11_object_attrs(s, hObject, &obj);
    if (rv == CKR_OK) {
        if (tok_attrs_serialize(&obj, &blob, &len) == 0) {
            *pulSize = len;
            OPENSSL_cleanse(blob, len);
            free(blob);
        } else {
            rv = CKR_HOST_MEMORY;
        }
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                          CK_ULONG ulCount)
{
    P11_AUTO_ATTRS obj = TOK_ATTRS_INIT;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pTemplate && ulCount)
        rv = CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK)
        rv = p11_object_attrs(s, hObject, &obj);
    if (rv == CKR_OK)
        rv = tok_policy_get(&obj, pTemplate, ulCount);
    p11_session_put(s);
    return rv;
}

CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                          CK_ULONG ulCount)
{
    P11_AUTO_ATTRS obj = TOK_ATTRS_INIT;
    P11_AUTO_ATTRS updated = TOK_ATTRS_INIT;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pTemplate && ulCount)
        rv = CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK)
        rv = p11_object_attrs(s, hObject, &obj);
    if (rv == CKR_OK)
        rv = p11_write_allowed(s, &obj);
    if (rv == CKR_OK)
        rv = tok_policy_set(&obj, pTemplate, ulCount, &updated);
    if (rv == CKR_OK) {
        if (hObject & P11_SOBJ_BIT) {
            p11_sobj *o;

            p11_lock();
            o = sobj_locked(s->slot, hObject);
            if (o) {
                tok_attrs_free(&o->attrs);
                o->attrs = updated;
                updated = (tok_attrs)TOK_ATTRS_INIT;
                tok_key_unref(o->key);
                o->key = NULL;
            } else {
                rv = CKR_OBJECT_HANDLE_INVALID;
            }
            p11_unlock();
        } else {
            tok_access ac = p11_access(s);
            rv = tok_obj_replace(p11_tok(), &ac, hObject, &obj, &updated);
        }
    }
    p11_session_put(s);
    return rv;
}

/* ---- search ---------------------------------------------------------------- */

void p11_find_end(p11_find *f)
{
    for (CK_ULONG i = 0; i < f->n; i++)
        free(f->tmpl[i].pValue);
    free(f->tmpl);
    free(f->sobjs);
    free(f->cands);
    memset(f, 0, sizeof(*f));
}

static CK_RV tmpl_dup(const CK_ATTRIBUTE *src, CK_ULONG n, p11_find *f)
{
    f->tmpl = calloc(n ? n : 1, sizeof(*f->tmpl));
    if (!f->tmpl)
        return CKR_HOST_MEMORY;
    f->n = n;
    for (CK_ULONG i = 0; i < n; i++) {
        if (!src[i].pValue && src[i].ulValueLen)
            return CKR_ARGUMENTS_BAD;
        f->tmpl[i].type = src[i].type;
        f->tmpl[i].ulValueLen = src[i].ulValueLen;
        if (src[i].ulValueLen) {
            f->tmpl[i].pValue = malloc(src[i].ulValueLen);
            if (!f->tmpl[i].pValue)
                return CKR_HOST_MEMORY;
            memcpy(f->tmpl[i].pValue, src[i].pValue, src[i].ulValueLen);
        }
    }
    return CKR_OK;
}

static CK_RV find_sobjs(p11_session *s, p11_find *f)
{
    tok_access ac = p11_access(s);

    p11_lock();
    f->sobjs = calloc(so.n ? so.n : 1, sizeof(*f->sobjs));
    if (!f->sobjs) {
        p11_unlock();
        return CKR_HOST_MEMORY;
    }
    for (size_t i = 0; i < so.n; i++) {
        const p11_sobj *o = so.v[i];

        if (o->slot == s->slot && tok_access_sees(&ac, &o->attrs) &&
            tok_attrs_match(&o->attrs, f->tmpl, f->n))
            f->sobjs[f->nsobjs++] = o->h;
    }
    p11_unlock();
    return CKR_OK;
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);
    bool want_token = true, want_session = true, tokflag;

    if (rv != CKR_OK)
        return rv;
    if (s->find.active) {
        p11_session_put(s);
        return CKR_OPERATION_ACTIVE;
    }
    if (!pTemplate && ulCount)
        rv = CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK && tok_tmpl_bool(pTemplate, ulCount, CKA_TOKEN, false, &tokflag) == CKR_OK) {
        for (CK_ULONG i = 0; i < ulCount; i++)
            if (pTemplate[i].type == CKA_TOKEN) {
                want_token = tokflag;
                want_session = !tokflag;
            }
    }
    if (rv == CKR_OK)
        rv = tmpl_dup(pTemplate, ulCount, &s->find);
    if (rv == CKR_OK && want_session)
        rv = find_sobjs(s, &s->find);
    if (rv == CKR_OK && want_token)
        rv = tok_obj_candidates(p11_tok(), s->slot, s->find.tmpl, s->find.n, &s->find.cands, &s->find.ncands);
    if (rv == CKR_OK)
        s->find.active = true;
    else
        p11_find_end(&s->find);
    p11_session_put(s);
    return rv;
}

CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                    CK_ULONG_PTR pulObjectCount)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);
    p11_find *f;
    CK_ULONG n = 0;

    if (rv != CKR_OK)
        return rv;
    f = &s->find;
    if (!phObject || !pulObjectCount)
        rv = CKR_ARGUMENTS_BAD;
    else if (!f->active)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    while (rv == CKR_OK && n < ulMaxObjectCount && f->sobj_pos < f->nsobjs)
        phObject[n++] = f->sobjs[f->sobj_pos++];
    /* Token objects are unsealed and matched only as far as asked for. */
    while (rv == CKR_OK && n < ulMaxObjectCount && f->cand_pos < f->ncands) {
        P11_AUTO_ATTRS obj = TOK_ATTRS_INIT;
        uint64_t oid = f->cands[f->cand_pos++];
        CK_RV r = p11_object_attrs(s, (CK_OBJECT_HANDLE)oid, &obj);

        /* Objects deleted meanwhile or failing authentication (logged by
         * the token layer) are skipped: one bad record must not hide the rest. */
        if (r == CKR_OK && tok_attrs_match(&obj, f->tmpl, f->n))
            phObject[n++] = (CK_OBJECT_HANDLE)oid;
        else if (r == CKR_HOST_MEMORY)
            rv = r;
    }
    if (rv == CKR_OK)
        *pulObjectCount = n;
    p11_session_put(s);
    return rv;
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!s->find.active)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    p11_find_end(&s->find);
    p11_session_put(s);
    return rv;
}
