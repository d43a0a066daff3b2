/* p11mk pkcs11 layer: cryptographic functions. Each keeps the PKCS#11
 * operation life cycle (init / one-shot or update+final, termination
 * rules, size queries); the work is done by token/tok_op. */
#include "p11_internal.h"
#include <stdlib.h>

/* recover: C_SignRecoverInit / C_VerifyRecoverInit, which take the signing
 * or verifying slot of the session. */
static CK_RV op_begin(CK_SESSION_HANDLE hSession, tok_op_kind kind, bool recover, CK_MECHANISM_PTR pMechanism,
                      CK_OBJECT_HANDLE hKey)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    /* PKCS#11 3.0 (C_EncryptInit and the other *Init): a NULL mechanism
     * terminates the active operation of this kind, the plain or the
     * recovering one as this init is. With none active the call asks
     * nothing the specification describes: CKR_ARGUMENTS_BAD, as before
     * 3.0 (and as SoftHSMv2 and p11-kit's reference module answer; the
     * C_Message*Init functions answer the same, p11_message.c). */
    if (!pMechanism) {
        if (s->op[kind] && tok_op_is_recover(s->op[kind]) == recover)
            p11_op_end(s, kind);
        else
            rv = CKR_ARGUMENTS_BAD;
        p11_session_put(s);
        return rv;
    }
    if (s->op[kind]) {
        rv = CKR_OPERATION_ACTIVE;
    } else {
        /* A digest uses no key: who is logged in (a read of the commit
         * sequence and the slot's login) is not asked. */
        tok_access ac = kind == TOK_OP_DIGEST
                            ? (tok_access){.slot = s->slot, .rw = (s->flags & CKF_RW_SESSION) != 0, .who = P11_NOBODY,
                                           .owner = s->h}
                            : p11_access(s);
        rv = tok_op_start(p11_tok(), &ac, kind, recover, pMechanism, hKey, &s->spare[kind], &s->op[kind]);
    }
    /* A key that wants its PIN for every use (sign or decrypt): the
     * operation waits for C_Login(CKU_CONTEXT_SPECIFIC). */
    if (rv == CKR_OK && (kind == TOK_OP_SIGN || kind == TOK_OP_DECRYPT))
        s->op_reauth[kind] = tok_op_always_authenticate(s->op[kind]);
    p11_session_put(s);
    return rv;
}

static CK_RV op_init(CK_SESSION_HANDLE hSession, tok_op_kind kind, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_begin(hSession, kind, false, pMechanism, hKey);
}

/* The session's active operation of this kind, started by the plain or the
 * recovering init as recover says. An operation still waiting for its
 * context-specific login ends here (as SoftHSMv2). */
static CK_RV op_active(p11_session *s, tok_op_kind kind, bool recover)
{
    if (!s->op[kind] || tok_op_is_recover(s->op[kind]) != recover)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (s->op_reauth[kind]) {
        p11_op_end(s, kind);
        return CKR_USER_NOT_LOGGED_IN;
    }
    return CKR_OK;
}

/* Take the session and its active operation of this kind. */
static CK_RV op_take(CK_SESSION_HANDLE hSession, tok_op_kind kind, bool recover, p11_session **out)
{
    CK_RV rv = p11_session_get(hSession, out);

    if (rv == CKR_OK && (rv = op_active(*out, kind, recover)) != CKR_OK)
        p11_session_put(*out);
    return rv;
}

static CK_RV op_get(CK_SESSION_HANDLE hSession, tok_op_kind kind, p11_session **out)
{
    return op_take(hSession, kind, false, out);
}

/* A single-part call (C_Encrypt, C_Decrypt, C_Digest, C_Sign, C_Verify)
 * after a part was given, or a part or a final (C_*Update, C_*Final,
 * C_DigestKey, the dual updates) after a single-part call that left the
 * operation active (a size query, a buffer too small): an operation of the
 * other style is active, CKR_OPERATION_ACTIVE, as the functions' lists have
 * it since PKCS#11 3.1 (and SoftHSMv2 and google/pkcs11test's
 * EncryptModePolicing and DigestFinalIntersperse expect). Like their every
 * error but CKR_BUFFER_TOO_SMALL, it ends the operation. Before, a final
 * after a size query worked on an operation that never saw that query's
 * input: C_DigestFinal gave the digest of nothing.
 *
 * PKCS#11 5.2: a call that produces output terminates the operation unless
 * it returned CKR_BUFFER_TOO_SMALL or only determined the output length. */
static CK_RV op_done(p11_session *s, tok_op_kind kind, CK_RV rv, bool size_query)
{
    if (!(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && size_query)))
        p11_op_end(s, kind);
    p11_session_put(s);
    return rv;
}

static CK_RV op_oneshot(CK_SESSION_HANDLE hSession, tok_op_kind kind, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
                        CK_ULONG_PTR outlen)
{
    p11_session *s;
    CK_RV rv = op_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!in && inlen) || !outlen)
        rv = CKR_ARGUMENTS_BAD;
    else if (s->op_multi[kind])
        rv = CKR_OPERATION_ACTIVE; /* a single-part call after a part (above op_done) */
    else
        rv = tok_op_oneshot(s->op[kind], in, inlen, out, outlen);
    s->op_single[kind] = true; /* kept only if the operation stays active */
    return op_done(s, kind, rv, out == NULL);
}

static CK_RV op_update(CK_SESSION_HANDLE hSession, tok_op_kind kind, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
                       CK_ULONG_PTR outlen, bool has_output)
{
    p11_session *s;
    CK_RV rv = op_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!in && inlen) || (has_output && !outlen)) {
        rv = CKR_ARGUMENTS_BAD;
    } else if (s->op_single[kind]) {
        rv = CKR_OPERATION_ACTIVE; /* a part after a single-part call (above op_done) */
    } else {
        s->op_multi[kind] = true;
        rv = tok_op_update(s->op[kind], in, inlen, has_output ? out : NULL, has_output ? outlen : NULL);
    }
    if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)
        p11_op_end(s, kind);
    p11_session_put(s);
    return rv;
}

static CK_RV op_final(CK_SESSION_HANDLE hSession, tok_op_kind kind, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
    p11_session *s;
    CK_RV rv = op_get(hSession, kind, &s);

    if (rv != CKR_OK)
        return rv;
    rv = !outlen               ? CKR_ARGUMENTS_BAD
         : s->op_single[kind] ? CKR_OPERATION_ACTIVE /* as op_update */
                              : tok_op_final(s->op[kind], out, outlen);
    return op_done(s, kind, rv, out == NULL);
}

/* ---- encrypt / decrypt ------------------------------------------------------ */

CK_RV C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init(hSession, TOK_OP_ENCRYPT, pMechanism, hKey);
}

CK_RV C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData,
                CK_ULONG_PTR pulEncryptedDataLen)
{
    return op_oneshot(hSession, TOK_OP_ENCRYPT, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen);
}

CK_RV C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
                      CK_ULONG_PTR pulEncryptedPartLen)
{
    return op_update(hSession, TOK_OP_ENCRYPT, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen, true);
}

CK_RV C_EncryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart, CK_ULONG_PTR pulLastEncryptedPartLen)
{
    return op_final(hSession, TOK_OP_ENCRYPT, pLastEncryptedPart, pulLastEncryptedPartLen);
}

CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init(hSession, TOK_OP_DECRYPT, pMechanism, hKey);
}

CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData,
                CK_ULONG_PTR pulDataLen)
{
    return op_oneshot(hSession, TOK_OP_DECRYPT, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen);
}

CK_RV C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
                      CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
    return op_update(hSession, TOK_OP_DECRYPT, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen, true);
}

CK_RV C_DecryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen)
{
    return op_final(hSession, TOK_OP_DECRYPT, pLastPart, pulLastPartLen);
}

/* ---- digest ------------------------------------------------------------------ */

CK_RV C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism)
{
    return op_init(hSession, TOK_OP_DIGEST, pMechanism, CK_INVALID_HANDLE);
}

CK_RV C_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
               CK_ULONG_PTR pulDigestLen)
{
    return op_oneshot(hSession, TOK_OP_DIGEST, pData, ulDataLen, pDigest, pulDigestLen);
}

CK_RV C_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    return op_update(hSession, TOK_OP_DIGEST, pPart, ulPartLen, NULL, NULL, false);
}

CK_RV C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
    p11_session *s;
    CK_RV rv = op_get(hSession, TOK_OP_DIGEST, &s);

    if (rv != CKR_OK)
        return rv;
    tok_key *key = NULL;
    rv = s->op_single[TOK_OP_DIGEST] ? CKR_OPERATION_ACTIVE : p11_object_key(s, hKey, &key);
    if (rv == CKR_OK) {
        s->op_multi[TOK_OP_DIGEST] = true;
        rv = tok_op_digest_key(s->op[TOK_OP_DIGEST], key);
    }
    tok_key_unref(key);
    if (rv != CKR_OK)
        p11_op_end(s, TOK_OP_DIGEST);
    p11_session_put(s);
    return rv;
}

CK_RV C_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
    return op_final(hSession, TOK_OP_DIGEST, pDigest, pulDigestLen);
}

/* ---- sign / verify ------------------------------------------------------------ */

CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init(hSession, TOK_OP_SIGN, pMechanism, hKey);
}

CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
             CK_ULONG_PTR pulSignatureLen)
{
    return op_oneshot(hSession, TOK_OP_SIGN, pData, ulDataLen, pSignature, pulSignatureLen);
}

CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    return op_update(hSession, TOK_OP_SIGN, pPart, ulPartLen, NULL, NULL, false);
}

CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    return op_final(hSession, TOK_OP_SIGN, pSignature, pulSignatureLen);
}

CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init(hSession, TOK_OP_VERIFY, pMechanism, hKey);
}

CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
               CK_ULONG ulSignatureLen)
{
    p11_session *s;
    CK_RV rv = op_get(hSession, TOK_OP_VERIFY, &s);

    if (rv != CKR_OK)
        return rv;
    if ((!pData && ulDataLen) || (!pSignature && ulSignatureLen))
        rv = CKR_ARGUMENTS_BAD;
    else if (s->op_multi[TOK_OP_VERIFY])
        rv = CKR_OPERATION_ACTIVE; /* as op_oneshot */
    else
        rv = tok_op_verify(s->op[TOK_OP_VERIFY], pData, ulDataLen, pSignature, ulSignatureLen);
    return op_done(s, TOK_OP_VERIFY, rv, false);
}

CK_RV C_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    return op_update(hSession, TOK_OP_VERIFY, pPart, ulPartLen, NULL, NULL, false);
}

CK_RV C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    p11_session *s;
    CK_RV rv = op_get(hSession, TOK_OP_VERIFY, &s);

    if (rv != CKR_OK)
        return rv;
    rv = (!pSignature && ulSignatureLen) ? CKR_ARGUMENTS_BAD
                                          : tok_op_verify_final(s->op[TOK_OP_VERIFY], pSignature, ulSignatureLen);
    return op_done(s, TOK_OP_VERIFY, rv, false);
}

/* ---- sign and verify with message recovery ------------------------------------- */

static CK_RV op_recover(CK_SESSION_HANDLE hSession, tok_op_kind kind, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
                        CK_ULONG_PTR outlen)
{
    p11_session *s;
    CK_RV rv = op_take(hSession, kind, true, &s);

    if (rv != CKR_OK)
        return rv;
    rv = (!in && inlen) || !outlen ? CKR_ARGUMENTS_BAD : tok_op_recover(s->op[kind], in, inlen, out, outlen);
    return op_done(s, kind, rv, out == NULL);
}

CK_RV C_SignRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_begin(hSession, TOK_OP_SIGN, true, pMechanism, hKey);
}

CK_RV C_SignRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                    CK_ULONG_PTR pulSignatureLen)
{
    return op_recover(hSession, TOK_OP_SIGN, pData, ulDataLen, pSignature, pulSignatureLen);
}

CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_begin(hSession, TOK_OP_VERIFY, true, pMechanism, hKey);
}

CK_RV C_VerifyRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData,
                      CK_ULONG_PTR pulDataLen)
{
    return op_recover(hSession, TOK_OP_VERIFY, pSignature, ulSignatureLen, pData, pulDataLen);
}

/* ---- dual-function updates: two active operations, one part -------------------- */

static CK_RV dual_update(CK_SESSION_HANDLE hSession, tok_op_kind crypt, tok_op_kind other, CK_BYTE_PTR in,
                         CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if ((rv = op_active(s, crypt, false)) == CKR_OK && (rv = op_active(s, other, false)) == CKR_OK) {
        s->op_multi[crypt] = s->op_multi[other] = true;
        rv = s->op_single[crypt] || s->op_single[other]
                 ? CKR_OPERATION_ACTIVE /* as op_update */
                 : tok_op_dual_update(s->op[crypt], s->op[other], in, inlen, out, outlen);
        if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) { /* one call of both: an error ends both */
            p11_op_end(s, crypt);
            p11_op_end(s, other);
        }
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                            CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
    return dual_update(hSession, TOK_OP_ENCRYPT, TOK_OP_DIGEST, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}

CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
                            CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
    return dual_update(hSession, TOK_OP_DECRYPT, TOK_OP_DIGEST, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}

CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
                          CK_ULONG_PTR pulEncryptedPartLen)
{
    return dual_update(hSession, TOK_OP_ENCRYPT, TOK_OP_SIGN, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}

CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
                            CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
    return dual_update(hSession, TOK_OP_DECRYPT, TOK_OP_VERIFY, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}

/* ---- key management ------------------------------------------------------------ */

CK_RV C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
                    CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)
{
    p11_session *s;
    uint64_t h = 0;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pMechanism || !phKey || (!pTemplate && ulCount)) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        if ((rv = tok_key_generate(p11_tok(), &ac, pMechanism, pTemplate, ulCount, &h)) == CKR_OK)
            *phKey = (CK_OBJECT_HANDLE)h;
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate,
                        CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
                        CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey,
                        CK_OBJECT_HANDLE_PTR phPrivateKey)
{
    p11_session *s;
    uint64_t hpub = 0, hpriv = 0;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pMechanism || !phPublicKey || !phPrivateKey || (!pPublicKeyTemplate && ulPublicKeyAttributeCount) ||
        (!pPrivateKeyTemplate && ulPrivateKeyAttributeCount)) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        rv = tok_keypair_generate(p11_tok(), &ac, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount,
                                  pPrivateKeyTemplate, ulPrivateKeyAttributeCount, &hpub, &hpriv);
        if (rv == CKR_OK) {
            *phPublicKey = (CK_OBJECT_HANDLE)hpub;
            *phPrivateKey = (CK_OBJECT_HANDLE)hpriv;
        }
    }
    p11_session_put(s);
    return rv;
}

/* ---- wrapping and derivation -------------------------------------------------- */

CK_RV C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey,
                CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pMechanism || !pulWrappedKeyLen) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        rv = tok_key_wrap(p11_tok(), &ac, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen);
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
                  CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
                  CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
    p11_session *s;
    uint64_t h = 0;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pMechanism || !phKey || (!pWrappedKey && ulWrappedKeyLen) || (!pTemplate && ulAttributeCount)) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        rv = tok_key_unwrap(p11_tok(), &ac, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate,
                            ulAttributeCount, &h);
        if (rv == CKR_OK)
            *phKey = (CK_OBJECT_HANDLE)h;
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey,
                  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
    p11_session *s;
    uint64_t h = 0;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pMechanism || !phKey || (!pTemplate && ulAttributeCount)) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        if ((rv = tok_key_derive(p11_tok(), &ac, pMechanism, hBaseKey, pTemplate, ulAttributeCount, &h)) == CKR_OK)
            *phKey = (CK_OBJECT_HANDLE)h;
    }
    p11_session_put(s);
    return rv;
}
