/* p11mk pkcs11 layer: the exported entry points (function lists and the
 * PKCS#11 3.0 interfaces). Only the three functions below are exported. */
#include "p11_internal.h"

P11_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);
P11_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
P11_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);

/* 3.0 functions not declared by p11-kit 0.24's header. */
CK_RV C_LoginUser(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG);
CK_RV C_SessionCancel(CK_SESSION_HANDLE, CK_FLAGS);

#define V240_FUNCTIONS                                                                                            \
    C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,          \
        C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession,   \
        C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState, C_Login, C_Logout,          \
        C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue,  \
        C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate,           \
        C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,         \
        C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal,                 \
        C_SignRecoverInit, C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,                   \
        C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate,   \
        C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey,              \
        C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent

static CK_FUNCTION_LIST list_v240 = {{2, 40}, V240_FUNCTIONS};

static CK_FUNCTION_LIST_3_0 list_v30 = {
    {3, 0},
    V240_FUNCTIONS,
    C_GetInterfaceList,
    C_GetInterface,
    C_LoginUser,
    C_SessionCancel,
    C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext, C_MessageEncryptFinal,
    C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin, C_DecryptMessageNext, C_MessageDecryptFinal,
    C_MessageSignInit, C_SignMessage, C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal,
    C_MessageVerifyInit, C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
};

static CK_UTF8CHAR iface_name[] = "PKCS 11";
/* Not CKF_INTERFACE_FORK_SAFE: a fork child starts afresh with C_Initialize
 * (the classic behaviour); it does not carry on the parent's sessions and
 * login, which that flag would promise. */
static CK_INTERFACE interfaces[] = {
    {iface_name, &list_v30, 0},
    {iface_name, &list_v240, 0},
};
#define N_INTERFACES (sizeof(interfaces) / sizeof(interfaces[0]))

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    return_val_if_fail(ppFunctionList != NULL, CKR_ARGUMENTS_BAD);
    *ppFunctionList = &list_v240;
    return CKR_OK;
}

CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    return_val_if_fail(pulCount != NULL, CKR_ARGUMENTS_BAD);
    if (!pInterfacesList) {
        *pulCount = N_INTERFACES;
        return CKR_OK;
    }
    if (*pulCount < N_INTERFACES) {
        *pulCount = N_INTERFACES;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(pInterfacesList, interfaces, sizeof(interfaces));
    *pulCount = N_INTERFACES;
    return CKR_OK;
}

static CK_VERSION iface_version(const CK_INTERFACE *i) { return *(const CK_VERSION *)i->pFunctionList; }

CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion, CK_INTERFACE_PTR_PTR ppInterface,
                     CK_FLAGS flags)
{
    return_val_if_fail(ppInterface != NULL, CKR_ARGUMENTS_BAD);
    /* Interfaces are listed newest first: the first match is the default. */
    for (size_t k = 0; k < N_INTERFACES; k++) {
        CK_INTERFACE *i = &interfaces[k];
        CK_VERSION v = iface_version(i);

        if (pInterfaceName && strcmp((const char *)pInterfaceName, (const char *)i->pInterfaceName) != 0)
            continue;
        if (pVersion && (pVersion->major != v.major || pVersion->minor != v.minor))
            continue;
        if ((i->flags & flags) != flags)
            continue;
        *ppInterface = i;
        return CKR_OK;
    }
    return CKR_ARGUMENTS_BAD;
}
