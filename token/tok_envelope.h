/* p11mk token layer: the envelope of a private object.
 *
 * A private object (CKA_PRIVATE = TRUE) of a token whose PINs wrap a token
 * key keeps its values inside one attribute, TOKA_ENVELOPE: AES-256-GCM under
 * the token key, bound to (token, object id). That is in addition to the
 * master-key seal of the whole record, so whoever holds the keystore and the
 * master key but no PIN sees what the object is (class, key type, label, id,
 * boolean policy attributes, sizes, dates) and not its values.
 *
 *   envelope = 1 | nonce(12) | AES-256-GCM(serialized attributes) | tag(16)
 *   aad      = "p11mk private object v1" | token (LE32) | object id (LE64)
 *              | SHA-256(the clear attributes sorted by type, serialized)
 * so neither the values nor what the object says it is and may do
 * (CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_PRIVATE, ...) change without the
 * token key. */
#ifndef P11MK_TOK_ENVELOPE_H
#define P11MK_TOK_ENVELOPE_H

#include "token/tok_attr.h"
#include "tok_pin.h"

#define TOKA_ENVELOPE (CKA_VENDOR_DEFINED + 0x7201UL)

/* AES-256-GCM with a 12-byte nonce and a 16-byte tag, as envelopes and saved
 * operation states (tok_opstate.c) use it: enc 1 seals in -> out and gives
 * the tag, 0 opens in -> out against it. 0, or -1 (a failure, or the tag
 * does not match). */
TOK_API int tok_gcm(int enc, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
                    const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16]);
/* Stays outside the envelope: says what the object is, not what it holds. */
TOK_API bool tok_env_clear_attr(CK_ATTRIBUTE_TYPE t);
TOK_API bool tok_env_present(const tok_attrs *a);
/* out = the clear attributes of plain + the envelope. 0, or -1 (ENOMEM / crypto failure). */
TOK_API int tok_env_seal(const uint8_t tk[TOK_TK_LEN], uint32_t token, uint64_t oid, const tok_attrs *plain,
                         tok_attrs *out);
/* out = stored with its envelope opened (out may be stored: opened in
 * place, no copy). 0; -1 ENOMEM; -2 the envelope fails authentication or is
 * malformed (out unchanged on failure). */
TOK_API int tok_env_open(const uint8_t tk[TOK_TK_LEN], uint32_t token, uint64_t oid, const tok_attrs *stored,
                         tok_attrs *out);
/* out = stored without its envelope (what can be shown without the PIN). */
TOK_API int tok_env_strip(const tok_attrs *stored, tok_attrs *out);

#endif
