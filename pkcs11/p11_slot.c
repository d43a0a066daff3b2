/* p11mk pkcs11 layer: slots, tokens, mechanisms, PIN management. */
#include "p11_internal.h"

#include <stdlib.h>

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
    CK_SLOT_ID *ids = NULL;
    CK_ULONG n = 0;
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pulCount != NULL, CKR_ARGUMENTS_BAD);
    /* Every slot holds a token (the free slot an uninitialized one), so
     * tokenPresent does not filter. */
    rv = tok_slot_list(p11_tok(), &ids, &n);
    /* C_GetSlotList's list (PKCS#11 3.0, 5.5) has no CKR_DEVICE_ERROR: the
     * storage's failure (logged) is CKR_FUNCTION_FAILED here. */
    if (rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_MEMORY || rv == CKR_DEVICE_REMOVED)
        return CKR_FUNCTION_FAILED;
    if (rv != CKR_OK)
        return rv;
    if (pSlotList) {
        if (*pulCount < n)
            rv = CKR_BUFFER_TOO_SMALL;
        else
            memcpy(pSlotList, ids, n * sizeof(*ids));
    }
    *pulCount = n;
    free(ids);
    return rv;
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pInfo != NULL, CKR_ARGUMENTS_BAD);
    return tok_slot_info(p11_tok(), slotID, pInfo);
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pInfo != NULL, CKR_ARGUMENTS_BAD);
    rv = tok_token_info(p11_tok(), slotID, pInfo);
    if (rv == CKR_OK) {
        pInfo->ulSessionCount = p11_session_count(slotID, false);
        pInfo->ulRwSessionCount = p11_session_count(slotID, true);
    }
    return rv;
}

CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount)
{
    CK_ULONG n;
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pulCount != NULL, CKR_ARGUMENTS_BAD);
    rv = p11_slot_known(slotID);
    if (rv != CKR_OK)
        return rv;
    n = tok_mech_list(NULL, 0);
    if (pMechanismList) {
        if (*pulCount < n)
            rv = CKR_BUFFER_TOO_SMALL;
        else
            tok_mech_list(pMechanismList, n);
    }
    *pulCount = n;
    return rv;
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pInfo != NULL, CKR_ARGUMENTS_BAD);
    rv = p11_slot_known(slotID);
    if (rv != CKR_OK)
        return rv;
    return tok_mech_info(type, pInfo);
}

CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pLabel != NULL, CKR_ARGUMENTS_BAD);
    return_val_if_fail(pPin != NULL || ulPinLen == 0, CKR_ARGUMENTS_BAD);
    rv = p11_slot_known(slotID);
    if (rv != CKR_OK)
        return rv;
    if (p11_session_count(slotID, false) != 0)
        return CKR_SESSION_EXISTS;
    /* Session objects of a re-initialized token go with it. */
    tok_sobjs_drop_slot(p11_tok(), slotID);
    return tok_token_init(p11_tok(), slotID, pPin, ulPinLen, pLabel);
}

CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pPin && ulPinLen)
        rv = CKR_ARGUMENTS_BAD;
    else if (p11_session_state(s) != CKS_RW_SO_FUNCTIONS)
        rv = CKR_USER_NOT_LOGGED_IN;
    else
        rv = tok_pin_init(p11_tok(), s->slot, pPin, ulPinLen);
    p11_session_put(s);
    return rv;
}

CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin,
               CK_ULONG ulNewLen)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!pOldPin && ulOldLen) || (!pNewPin && ulNewLen))
        rv = CKR_ARGUMENTS_BAD;
    else if (!(s->flags & CKF_RW_SESSION))
        rv = CKR_SESSION_READ_ONLY;
    else
        rv = tok_pin_set(p11_tok(), s->slot, p11_login_state(s->slot) == CKU_SO ? CKU_SO : CKU_USER, pOldPin,
                         ulOldLen, pNewPin, ulNewLen);
    p11_session_put(s);
    return rv;
}
