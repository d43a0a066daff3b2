/* p11mk token layer: PKCS#11 3.0 message-based signing and verification
 * with the MAC mechanisms (HMAC, CMAC and their _GENERAL variants, which
 * carry CKF_MESSAGE_SIGN and CKF_MESSAGE_VERIFY), tok_msgmac.c.
 *
 * One operation (C_MessageSignInit .. C_MessageSignFinal) MACs any number
 * of messages under one key, each in one call (C_SignMessage) or in parts
 * (C_SignMessageBegin, then C_SignMessageNext until the call that asks for
 * the MAC: a non-NULL pulSignatureLen; verification: a non-NULL
 * pSignature). Each message is a fresh C_SignInit-like operation
 * (tok_op.c), with the mechanism and key of the init. These mechanisms take
 * no per-message parameter: pParameter NULL and ulParameterLen 0. */
#ifndef P11MK_TOK_MSGMAC_H
#define P11MK_TOK_MSGMAC_H

#include "token/tok_aead.h"

typedef struct tok_msgmac tok_msgmac;

/* C_MessageSignInit / C_MessageVerifyInit: CKR_MECHANISM_INVALID unless
 * the mechanism offers CKF_MESSAGE_SIGN / CKF_MESSAGE_VERIFY; then the
 * checks of C_SignInit / C_VerifyInit (its parameter, the key's type,
 * usage and allowed mechanisms). */
TOK_API CK_RV tok_msgmac_init(bool verify, const CK_MECHANISM *mech, tok_key *key, tok_msgmac **out);
TOK_API void tok_msgmac_free(tok_msgmac *m);

/* C_SignMessage (size-query protocol) and C_VerifyMessage
 * (CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE): one whole message.
 * CKR_OPERATION_ACTIVE while a message in parts is under way. */
TOK_API CK_RV tok_msgmac_sign(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len,
                              uint8_t *sig, CK_ULONG *siglen);
TOK_API CK_RV tok_msgmac_verify(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len,
                                const uint8_t *sig, CK_ULONG siglen);
/* C_SignMessageBegin / C_VerifyMessageBegin. */
TOK_API CK_RV tok_msgmac_begin(tok_msgmac *m, const void *param, CK_ULONG plen);
/* C_SignMessageNext: siglen NULL for a part with more to follow; else the
 * last part, with the size-query protocol (a query or a short buffer takes
 * nothing in). C_VerifyMessageNext: sig NULL for a part with more to
 * follow; else the last part, checked against sig. CKR_OPERATION_NOT_INITIALIZED
 * when no message has begun; any failure but CKR_BUFFER_TOO_SMALL ends the
 * message, never the operation. */
TOK_API CK_RV tok_msgmac_sign_next(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len,
                                   uint8_t *sig, CK_ULONG *siglen);
TOK_API CK_RV tok_msgmac_verify_next(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len,
                                     const uint8_t *sig, CK_ULONG siglen);

#endif
