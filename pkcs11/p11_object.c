/* p11mk pkcs11 layer: the object functions and search. Objects, token and
 * session ones alike, and every rule about them live in the token layer
 * (tok_obj_*, tok_access.h); this file checks arguments and passes the
 * session's access along. */
#include "p11_internal.h"

#include <openssl/crypto.h>
#include <stdlib.h>

CK_RV p11_object_attrs(p11_session *s, CK_OBJECT_HANDLE h, tok_attrs *out)
{
    tok_access ac = p11_access(s);

    if (h == CK_INVALID_HANDLE)
        return CKR_OBJECT_HANDLE_INVALID;
    return tok_obj_read(p11_tok(), &ac, h, out);
}

CK_RV p11_object_key(p11_session *s, CK_OBJECT_HANDLE h, tok_key **key)
{
    tok_access ac = p11_access(s);
    CK_RV rv;

    if (h == CK_INVALID_HANDLE)
        return CKR_KEY_HANDLE_INVALID;
    rv = tok_obj_key(p11_tok(), &ac, h, key);
    return rv == CKR_OBJECT_HANDLE_INVALID ? CKR_KEY_HANDLE_INVALID : rv;
}

/* ---- object functions ---------------------------------------------------- */

CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                     CK_OBJECT_HANDLE_PTR phObject)
{
    p11_session *s;
    uint64_t h = 0;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!pTemplate && ulCount) || !phObject) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        if ((rv = tok_obj_create(p11_tok(), &ac, pTemplate, ulCount, &h)) == CKR_OK)
            *phObject = (CK_OBJECT_HANDLE)h;
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                   CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
    p11_session *s;
    uint64_t h = 0;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!pTemplate && ulCount) || !phNewObject) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        if ((rv = tok_obj_copy(p11_tok(), &ac, hObject, pTemplate, ulCount, &h)) == CKR_OK)
            *phNewObject = (CK_OBJECT_HANDLE)h;
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    tok_access ac = p11_access(s);
    rv = hObject == CK_INVALID_HANDLE ? CKR_OBJECT_HANDLE_INVALID : tok_obj_destroy(p11_tok(), &ac, hObject);
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
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    tok_access ac = p11_access(s);
    if (!pTemplate && ulCount)
        rv = CKR_ARGUMENTS_BAD;
    else if (hObject == CK_INVALID_HANDLE)
        rv = CKR_OBJECT_HANDLE_INVALID;
    else
        rv = tok_obj_set(p11_tok(), &ac, hObject, pTemplate, ulCount);
    p11_session_put(s);
    return rv;
}

/* ---- search ---------------------------------------------------------------- */

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
    uint64_t *hs = NULL;
    size_t n = 0;
    CK_RV rv = tok_sobjs_find(p11_tok(), &ac, f->tmpl, f->n, &hs, &n);

    if (rv != CKR_OK)
        return rv;
    f->sobjs = calloc(n ? n : 1, sizeof(*f->sobjs));
    if (!f->sobjs) {
        free(hs);
        return CKR_HOST_MEMORY;
    }
    for (size_t i = 0; i < n; i++)
        f->sobjs[f->nsobjs++] = (CK_OBJECT_HANDLE)hs[i];
    free(hs);
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
    if (rv == CKR_OK) {
        tok_access ac = p11_access(s);
        while (n < ulMaxObjectCount && f->cand_pos < f->ncands) {
            uint64_t oid = f->cands[f->cand_pos];
            bool match = false;
            CK_RV r = tok_obj_match(p11_tok(), &ac, oid, f->tmpl, f->n, &match);
            if (r != CKR_OK) {
                /* Handles already found this call would be lost with an
                 * error: hand them out, and fail the next call if the
                 * storage is still down (the candidate is tried again). */
                if (n == 0)
                    rv = r;
                break;
            }
            f->cand_pos++;
            if (match)
                phObject[n++] = (CK_OBJECT_HANDLE)oid;
        }
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
