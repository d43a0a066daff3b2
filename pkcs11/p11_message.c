/* p11mk pkcs11 layer: the PKCS#11 3.0 message-based encryption and
 * decryption functions. A session holds one message-based operation of
 * each kind (tok_msg) from C_Message*Init to C_Message*Final; every rule
 * (parameters, IV generation, messages in parts, which failure ends what)
 * is in token/tok_aead.c. Signing and verifying messages are not offered
 * (no mechanism has CKF_MESSAGE_SIGN or CKF_MESSAGE_VERIFY: p11_entry.c). */
#include "p11_internal.h"

void p11_msg_end(p11_session *s, bool decrypt)
{
    tok_msg_free(s->msg[decrypt]);
    s->msg[decrypt] = NULL;
}

static CK_RV msg_init(CK_SESSION_HANDLE hSession, bool decrypt, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    tok_key *key = NULL;
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pMechanism) /* PKCS#11 3.0: ends the operation, and a message in parts with it */
        p11_msg_end(s, decrypt);
    else if (s->msg[decrypt])
        rv = CKR_OPERATION_ACTIVE;
    else if ((rv = p11_object_key(s, hKey, &key)) == CKR_OK)
        rv = tok_msg_init(decrypt, pMechanism, key, &s->msg[decrypt]);
    tok_key_unref(key);
    p11_session_put(s);
    return rv;
}

/* The session and its message-based operation of this kind. */
static CK_RV msg_get(CK_SESSION_HANDLE hSession, bool decrypt, p11_session **s)
{
    CK_RV rv = p11_session_get(hSession, s);

    if (rv == CKR_OK && !(*s)->msg[decrypt]) {
        p11_session_put(*s);
        rv = CKR_OPERATION_NOT_INITIALIZED;
    }
    return rv;
}

static CK_RV msg_whole(CK_SESSION_HANDLE hSession, bool decrypt, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR aad, CK_ULONG aadlen, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
                       CK_ULONG_PTR outlen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, decrypt, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!aad && aadlen) || (!in && inlen) || !outlen)
        rv = CKR_ARGUMENTS_BAD;
    else
        rv = tok_msg_crypt(s->msg[decrypt], pParameter, ulParameterLen, aad, aadlen, in, inlen, out, outlen);
    p11_session_put(s);
    return rv;
}

static CK_RV msg_begin(CK_SESSION_HANDLE hSession, bool decrypt, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR aad, CK_ULONG aadlen)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, decrypt, &s);

    if (rv != CKR_OK)
        return rv;
    rv = !aad && aadlen ? CKR_ARGUMENTS_BAD : tok_msg_begin(s->msg[decrypt], pParameter, ulParameterLen, aad, aadlen);
    p11_session_put(s);
    return rv;
}

/* The arguments are the token layer's to check: a bad one ends the message. */
static CK_RV msg_next(CK_SESSION_HANDLE hSession, bool decrypt, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                      CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen, CK_FLAGS flags)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, decrypt, &s);

    if (rv != CKR_OK)
        return rv;
    rv = tok_msg_next(s->msg[decrypt], pParameter, ulParameterLen, in, inlen, out, outlen, flags);
    p11_session_put(s);
    return rv;
}

static CK_RV msg_final(CK_SESSION_HANDLE hSession, bool decrypt)
{
    p11_session *s;
    CK_RV rv = msg_get(hSession, decrypt, &s);

    if (rv != CKR_OK)
        return rv;
    p11_msg_end(s, decrypt); /* a message still in parts ends with it */
    p11_session_put(s);
    return CKR_OK;
}

/* ---- encryption ------------------------------------------------------------ */

CK_RV C_MessageEncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return msg_init(hSession, false, pMechanism, hKey);
}

CK_RV C_EncryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext,
                       CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext, CK_ULONG_PTR pulCiphertextLen)
{
    return msg_whole(hSession, false, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen, pPlaintext,
                     ulPlaintextLen, pCiphertext, pulCiphertextLen);
}

CK_RV C_EncryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                            CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen)
{
    return msg_begin(hSession, false, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen);
}

CK_RV C_EncryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                           CK_BYTE_PTR pPlaintextPart, CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart,
                           CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags)
{
    return msg_next(hSession, false, pParameter, ulParameterLen, pPlaintextPart, ulPlaintextPartLen, pCiphertextPart,
                    pulCiphertextPartLen, flags);
}

CK_RV C_MessageEncryptFinal(CK_SESSION_HANDLE hSession) { return msg_final(hSession, false); }

/* ---- decryption ------------------------------------------------------------ */

CK_RV C_MessageDecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return msg_init(hSession, true, pMechanism, hKey);
}

CK_RV C_DecryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                       CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext,
                       CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext, CK_ULONG_PTR pulPlaintextLen)
{
    return msg_whole(hSession, true, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen, pCiphertext,
                     ulCiphertextLen, pPlaintext, pulPlaintextLen);
}

CK_RV C_DecryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                            CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen)
{
    return msg_begin(hSession, true, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen);
}

CK_RV C_DecryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                           CK_BYTE_PTR pCiphertextPart, CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart,
                           CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags)
{
    return msg_next(hSession, true, pParameter, ulParameterLen, pCiphertextPart, ulCiphertextPartLen, pPlaintextPart,
                    pulPlaintextPartLen, flags);
}

CK_RV C_MessageDecryptFinal(CK_SESSION_HANDLE hSession) { return msg_final(hSession, true); }
