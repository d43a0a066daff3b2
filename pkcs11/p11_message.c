/* p11mk pkcs11 layer: the PKCS#11 3.0 message-based functions. A session
 * holds one message-based operation of each kind from C_Message*Init to
 * C_Message*Final: encryption and decryption (tok_msg: AES-GCM, AES-CCM,
 * ChaCha20-Poly1305; every rule in token/tok_aead.c), signing and
 * verification (tok_msgmac: the MACs; token/tok_msgmac.c). */
#include "p11_internal.h"

static bool msg_active(const p11_session *s, int kind)
{
    return kind < P11_MSG_SIGN ? s->msg[kind] != NULL : s->mac[kind - P11_MSG_SIGN] != NULL;
}

static CK_RV msg_init(CK_SESSION_HANDLE hSession, int kind, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    tok_key *key = NULL;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    /* PKCS#11 3.0: a NULL mechanism ends the active operation of this kind,
     * and a message in parts with it. With none active there is nothing to
     * end and the call asks nothing the specification describes (its NULL
     * form is "to terminate an active operation"): CKR_ARGUMENTS_BAD, in
     * every C_Message*Init's list, as the classic *Init answer (p11_crypto.c;
     * SoftHSMv2 and p11-kit's reference module answer the same there,
     * Kryoptic CKR_OK in both families). */
    if (!pMechanism && msg_active(s, kind))
        p11_msg_end(s, kind);
    else if (!pMechanism)
        rv = CKR_ARGUMENTS_BAD;
    else if (msg_active(s, kind))
        rv = CKR_OPERATION_ACTIVE;
    else if ((rv = p11_object_key(s, hKey, &key)) == CKR_OK && kind < P11_MSG_SIGN)
        rv = tok_msg_init(kind == P11_MSG_DECRYPT, pMechanism, key, &s->msg[kind]);
    else if (rv == CKR_OK)
        rv = tok_msgmac_init(kind == P11_MSG_VERIFY, pMechanism, key, &s->mac[kind - P11_MSG_SIGN]);
    tok_key_unref(key);
    p11_session_put(s);
    return rv;
}

/* The session, with a message-based operation of this kind. */
static CK_RV msg_get(CK_SESSION_HANDLE hSession, int kind, p11_session **s)
{
    CK_RV rv = p11_session_get(hSession, s);

    if (rv == CKR_OK && !msg_active(*s, kind)) {
        p11_session_put(*s);
        rv = CKR_OPERATION_NOT_INITIALIZED;
    }
    return rv;
}

static CK_RV msg_whole(CK_SESSION_HANDLE hSession, int kind, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR aad, CK_ULONG aadlen, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
                       CK_ULONG_PTR outlen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!aad && aadlen) || (!in && inlen) || !outlen)
        rv = CKR_ARGUMENTS_BAD;
    else
        rv = tok_msg_crypt(s->msg[kind], pParameter, ulParameterLen, aad, aadlen, in, inlen, out, outlen);
    p11_session_put(s);
    return rv;
}

static CK_RV msg_begin(CK_SESSION_HANDLE hSession, int kind, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR aad, CK_ULONG aadlen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    rv = !aad && aadlen ? CKR_ARGUMENTS_BAD : tok_msg_begin(s->msg[kind], pParameter, ulParameterLen, aad, aadlen);
    p11_session_put(s);
    return rv;
}

/* The arguments are the token layer's to check: a bad one ends the message. */
static CK_RV msg_next(CK_SESSION_HANDLE hSession, int kind, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                      CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen, CK_FLAGS flags)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    rv = tok_msg_next(s->msg[kind], pParameter, ulParameterLen, in, inlen, out, outlen, flags);
    p11_session_put(s);
    return rv;
}

static CK_RV msg_final(CK_SESSION_HANDLE hSession, int kind)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    p11_msg_end(s, kind); /* a message still in parts ends with it */
    p11_session_put(s);
    return CKR_OK;
}

/* ---- encryption ------------------------------------------------------------ */

CK_RV C_MessageEncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return msg_init(hSession, P11_MSG_ENCRYPT, pMechanism, hKey);
}

CK_RV C_EncryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext,
                       CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext, CK_ULONG_PTR pulCiphertextLen)
{
    return msg_whole(hSession, P11_MSG_ENCRYPT, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen,
                     pPlaintext, ulPlaintextLen, pCiphertext, pulCiphertextLen);
}

CK_RV C_EncryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                            CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen)
{
    return msg_begin(hSession, P11_MSG_ENCRYPT, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen);
}

CK_RV C_EncryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                           CK_BYTE_PTR pPlaintextPart, CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart,
                           CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags)
{
    return msg_next(hSession, P11_MSG_ENCRYPT, pParameter, ulParameterLen, pPlaintextPart, ulPlaintextPartLen,
                    pCiphertextPart, pulCiphertextPartLen, flags);
}

CK_RV C_MessageEncryptFinal(CK_SESSION_HANDLE hSession) { return msg_final(hSession, P11_MSG_ENCRYPT); }

/* ---- decryption ------------------------------------------------------------ */

CK_RV C_MessageDecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return msg_init(hSession, P11_MSG_DECRYPT, pMechanism, hKey);
}

CK_RV C_DecryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext,
                       CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext, CK_ULONG_PTR pulPlaintextLen)
{
    return msg_whole(hSession, P11_MSG_DECRYPT, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen,
                     pCiphertext, ulCiphertextLen, pPlaintext, pulPlaintextLen);
}

CK_RV C_DecryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                            CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen)
{
    return msg_begin(hSession, P11_MSG_DECRYPT, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen);
}

CK_RV C_DecryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                           CK_BYTE_PTR pCiphertextPart, CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart,
                           CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags)
{
    return msg_next(hSession, P11_MSG_DECRYPT, pParameter, ulParameterLen, pCiphertextPart, ulCiphertextPartLen,
                    pPlaintextPart, pulPlaintextPartLen, flags);
}

CK_RV C_MessageDecryptFinal(CK_SESSION_HANDLE hSession) { return msg_final(hSession, P11_MSG_DECRYPT); }

/* ---- signing and verifying (MACs) ----------------------------------------- */

CK_RV C_MessageSignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return msg_init(hSession, P11_MSG_SIGN, pMechanism, hKey);
}

CK_RV C_SignMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                    CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, P11_MSG_SIGN, &s);

    if (rv != CKR_OK)
        return rv;
    rv = tok_msgmac_sign(s->mac[0], pParameter, ulParameterLen, pData, ulDataLen, pSignature, pulSignatureLen);
    p11_session_put(s);
    return rv;
}

/* C_SignMessageBegin and C_VerifyMessageBegin. */
static CK_RV mac_begin(CK_SESSION_HANDLE hSession, int kind, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    rv = tok_msgmac_begin(s->mac[kind - P11_MSG_SIGN], pParameter, ulParameterLen);
    p11_session_put(s);
    return rv;
}

CK_RV C_SignMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen)
{
    return mac_begin(hSession, P11_MSG_SIGN, pParameter, ulParameterLen);
}

/* The last part is the one with a non-NULL pulSignatureLen. */
CK_RV C_SignMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                        CK_BYTE_PTR pDataPart, CK_ULONG ulDataPartLen, CK_BYTE_PTR pSignature,
                        CK_ULONG_PTR pulSignatureLen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, P11_MSG_SIGN, &s);

    if (rv != CKR_OK)
        return rv;
    rv = tok_msgmac_sign_next(s->mac[0], pParameter, ulParameterLen, pDataPart, ulDataPartLen, pSignature,
                              pulSignatureLen);
    p11_session_put(s);
    return rv;
}

CK_RV C_MessageSignFinal(CK_SESSION_HANDLE hSession) { return msg_final(hSession, P11_MSG_SIGN); }

CK_RV C_MessageVerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return msg_init(hSession, P11_MSG_VERIFY, pMechanism, hKey);
}

CK_RV C_VerifyMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                      CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, P11_MSG_VERIFY, &s);

    if (rv != CKR_OK)
        return rv;
    rv = tok_msgmac_verify(s->mac[1], pParameter, ulParameterLen, pData, ulDataLen, pSignature, ulSignatureLen);
    p11_session_put(s);
    return rv;
}

CK_RV C_VerifyMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen)
{
    return mac_begin(hSession, P11_MSG_VERIFY, pParameter, ulParameterLen);
}

/* The last part is the one with a non-NULL pSignature. */
CK_RV C_VerifyMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                          CK_BYTE_PTR pDataPart, CK_ULONG ulDataPartLen, CK_BYTE_PTR pSignature,
                          CK_ULONG ulSignatureLen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, P11_MSG_VERIFY, &s);

    if (rv != CKR_OK)
        return rv;
    rv = tok_msgmac_verify_next(s->mac[1], pParameter, ulParameterLen, pDataPart, ulDataPartLen, pSignature,
                                ulSignatureLen);
    p11_session_put(s);
    return rv;
}

CK_RV C_MessageVerifyFinal(CK_SESSION_HANDLE hSession) { return msg_final(hSession, P11_MSG_VERIFY); }
