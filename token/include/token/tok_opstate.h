/* p11mk token layer: C_GetOperationState and C_SetOperationState.
 *
 * OpenSSL 3 cannot export a running digest or MAC context, so a saved state
 * is what the operations were given, replayed on restore: for each active
 * digest, HMAC or CMAC operation its mechanism (and _GENERAL length), its
 * key's handle, whether a part was given (single-part calls are then
 * refused) and its input so far, at most TOK_OPSTATE_MAX_DATA (16 KiB) per
 * operation. Keeping it costs a copy of the input of C_DigestUpdate and
 * C_SignUpdate/C_VerifyUpdate, up to the bound (measured: 2 us more on a
 * 16 KiB HMAC or digest in 1 KiB parts, +12-16%; +4% on 64 KiB, under 2% on
 * 1 MiB; single-part C_Digest and C_Sign copy nothing). Anything else
 * cannot be saved (CKR_STATE_UNSAVEABLE): ciphers, public-key operations,
 * recovery, a digest that took a key's value (C_DigestKey), more input than
 * the bound, an operation in its final call.
 *
 * The state is sealed with AES-256-GCM under a random key of this context
 * (made at C_Initialize, kept out of core dumps), bound to the session's
 * slot: an edited byte, a state of another slot, of another process or of
 * before C_Finalize is CKR_SAVED_STATE_INVALID. The application holds the
 * input it gave in a sealed form only; a key's value is never in it. */
#ifndef P11MK_TOK_OPSTATE_H
#define P11MK_TOK_OPSTATE_H

#include "token/tok_token.h"

/* The session's operations, indexed by kind up to TOK_OP_DIGEST (NULL: none
 * active), and whether each was given a part. */
#define TOK_OPSTATE_KINDS (TOK_OP_DIGEST + 1)

/* C_GetOperationState: the sealed state of every active operation, under
 * the size-query protocol (the length is exact). CKR_OPERATION_NOT_INITIALIZED
 * when none is active, CKR_STATE_UNSAVEABLE when one cannot be saved or the
 * keyed ones use different keys (C_SetOperationState takes one). */
TOK_API CK_RV tok_opstate_save(tok_ctx *ctx, CK_SLOT_ID slot, tok_op *const ops[TOK_OPSTATE_KINDS],
                               const bool multi[TOK_OPSTATE_KINDS], uint8_t *out, CK_ULONG *outlen);

/* C_SetOperationState: the operations of a saved state, made anew for the
 * caller ac (its slot, its view of the key) into ops/multi (all NULL and
 * false first; the caller ends the session's operations and installs them).
 * CKR_SAVED_STATE_INVALID (not a state of this context and slot), CKR_KEY_NEEDED
 * (a MAC's key, auth_key, was not given), CKR_KEY_NOT_NEEDED (a key given for
 * nothing: enc_key always, auth_key for a state without a MAC), CKR_KEY_CHANGED
 * (not the key the state was saved with, or that key may no longer do it). */
TOK_API CK_RV tok_opstate_restore(tok_ctx *ctx, const tok_access *ac, const uint8_t *in, CK_ULONG len,
                                  CK_OBJECT_HANDLE enc_key, CK_OBJECT_HANDLE auth_key, tok_op *ops[TOK_OPSTATE_KINDS],
                                  bool multi[TOK_OPSTATE_KINDS]);

#endif
