/* p11mk token layer: the dual-function updates (C_DigestEncryptUpdate,
 * C_SignEncryptUpdate, C_DecryptDigestUpdate, C_DecryptVerifyUpdate): one
 * part through two active operations of the session.
 *
 * Encrypting, the plaintext goes in to the digest or signature and to the
 * cipher; decrypting, what the cipher gives out goes in to the digest or
 * verification. Only what an update gives out is digested or verified: with
 * CBC_PAD the last block, and with GCM all of the plaintext, come out at
 * C_DecryptFinal, and the application feeds that part itself (C_DigestUpdate,
 * C_VerifyUpdate), as PKCS#11 describes for C_DecryptDigestUpdate. */
#include "tok_crypto.h"

CK_RV tok_op_dual_update(tok_op *crypt, tok_op *other, const uint8_t *in, CK_ULONG inlen, uint8_t *out,
                         CK_ULONG *outlen)
{
    bool enc;
    CK_ULONG need = 0;
    CK_RV rv;

    if (!crypt || !other || !outlen || (!in && inlen))
        return CKR_ARGUMENTS_BAD;
    enc = tok_op_get_kind(crypt) == TOK_OP_ENCRYPT;
    /* The length first: a size query or a short buffer changes neither operation. */
    if ((rv = tok_op_update(crypt, in, inlen, NULL, &need)) != CKR_OK)
        return rv;
    if (!out || *outlen < need) {
        *outlen = need;
        return out ? CKR_BUFFER_TOO_SMALL : CKR_OK;
    }
    if (enc && (rv = tok_op_update(other, in, inlen, NULL, NULL)) != CKR_OK)
        return rv;
    if ((rv = tok_op_update(crypt, in, inlen, out, outlen)) != CKR_OK)
        return rv;
    return enc ? CKR_OK : tok_op_update(other, out, *outlen, NULL, NULL);
}
