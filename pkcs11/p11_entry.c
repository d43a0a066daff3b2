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

/* The way in. Every function that works on the module's state runs inside
 * the fork gate (p11_state.c), entered here and nowhere else, so that no
 * call can be at work when fork() copies the process: a function that did
 * its work outside it (C_OpenSession read the token's record, unsealed it
 * and allocated) let a fork child inherit a lock held in the allocator or
 * OpenSSL, and hang (races/fork_recycle under AddressSanitizer, whose
 * allocator takes no lock at fork; races/gate_every_call). The lists below
 * hold these wrappers, G(C_xxx), in the functions' places. */
#define P11_GATED(name, params, args)                                                                                  \
    static CK_RV gated_##name params                                                                                   \
    {                                                                                                                  \
        p11_gate g = p11_gate_enter();                                                                                 \
        CK_RV rv = name args;                                                                                          \
        p11_gate_leave(g);                                                                                             \
        return rv;                                                                                                     \
    }
#include "p11_calls.h"
#undef P11_GATED
#define G(name) gated_##name

#define V240_FUNCTIONS                                                                                                 \
    C_Initialize, C_Finalize, G(C_GetInfo), C_GetFunctionList, G(C_GetSlotList), G(C_GetSlotInfo), G(C_GetTokenInfo),  \
        G(C_GetMechanismList), G(C_GetMechanismInfo), G(C_InitToken), G(C_InitPIN), G(C_SetPIN), G(C_OpenSession),     \
        G(C_CloseSession), G(C_CloseAllSessions), G(C_GetSessionInfo), G(C_GetOperationState), G(C_SetOperationState), \
        G(C_Login), G(C_Logout), G(C_CreateObject), G(C_CopyObject), G(C_DestroyObject), G(C_GetObjectSize),           \
        G(C_GetAttributeValue), G(C_SetAttributeValue), G(C_FindObjectsInit), G(C_FindObjects), G(C_FindObjectsFinal), \
        G(C_EncryptInit), G(C_Encrypt), G(C_EncryptUpdate), G(C_EncryptFinal), G(C_DecryptInit), G(C_Decrypt),         \
        G(C_DecryptUpdate), G(C_DecryptFinal), G(C_DigestInit), G(C_Digest), G(C_DigestUpdate), G(C_DigestKey),        \
        G(C_DigestFinal), G(C_SignInit), G(C_Sign), G(C_SignUpdate), G(C_SignFinal), G(C_SignRecoverInit),             \
        G(C_SignRecover), G(C_VerifyInit), G(C_Verify), G(C_VerifyUpdate), G(C_VerifyFinal), G(C_VerifyRecoverInit),   \
        G(C_VerifyRecover), G(C_DigestEncryptUpdate), G(C_DecryptDigestUpdate), G(C_SignEncryptUpdate),                \
        G(C_DecryptVerifyUpdate), G(C_GenerateKey), G(C_GenerateKeyPair), G(C_WrapKey), G(C_UnwrapKey),                \
        G(C_DeriveKey), G(C_SeedRandom), G(C_GenerateRandom), G(C_GetFunctionStatus), G(C_CancelFunction),             \
        C_WaitForSlotEvent

static CK_FUNCTION_LIST list_v240 = {{2, 40}, V240_FUNCTIONS};

static CK_FUNCTION_LIST_3_0 list_v30 = {
    {3, 0},
    V240_FUNCTIONS,
    C_GetInterfaceList,
    C_GetInterface,
    G(C_LoginUser),
    G(C_SessionCancel),
    G(C_MessageEncryptInit),
    G(C_EncryptMessage),
    G(C_EncryptMessageBegin),
    G(C_EncryptMessageNext),
    G(C_MessageEncryptFinal),
    G(C_MessageDecryptInit),
    G(C_DecryptMessage),
    G(C_DecryptMessageBegin),
    G(C_DecryptMessageNext),
    G(C_MessageDecryptFinal),
    G(C_MessageSignInit),
    G(C_SignMessage),
    G(C_SignMessageBegin),
    G(C_SignMessageNext),
    G(C_MessageSignFinal),
    G(C_MessageVerifyInit),
    G(C_VerifyMessage),
    G(C_VerifyMessageBegin),
    G(C_VerifyMessageNext),
    G(C_MessageVerifyFinal),
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
