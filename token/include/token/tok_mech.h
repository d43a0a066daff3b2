/* p11mk token layer: mechanisms on OpenSSL 3 EVP.
 *
 * Key generation fills key material into attribute sets built by
 * tok_policy; operations run on a tok_key (an unsealed key parsed into
 * OpenSSL form once and cached by the token layer, keyed by record stamp
 * and epoch).
 *
 * Size-query protocol: every function with (out, outlen) follows PKCS#11:
 * out == NULL -> *outlen = needed (or an upper bound where the spec allows),
 * CKR_OK; *outlen too small -> *outlen = needed, CKR_BUFFER_TOO_SMALL. In
 * both cases the operation is unchanged and can be called again. The caller
 * (pkcs11 layer) ends the operation on any other return. */
#ifndef P11MK_TOK_MECH_H
#define P11MK_TOK_MECH_H

#include "token/tok_attr.h"

/* PKCS#11 3.0 names RFC 5649 CKM_AES_KEY_WRAP_KWP; p11-kit's header predates it. */
#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x0000210BUL
#endif

/* ---- mechanism table --------------------------------------------------- */
/* Fill list (NULL -> count only). Returns number of mechanisms. */
TOK_API CK_ULONG tok_mech_list(CK_MECHANISM_TYPE *list, CK_ULONG cap);
/* CKR_OK or CKR_MECHANISM_INVALID. Key sizes in bits for RSA/EC, bytes for
 * AES/generic secret (as the spec says). */
TOK_API CK_RV tok_mech_info(CK_MECHANISM_TYPE m, CK_MECHANISM_INFO *info);

/* ---- key generation ---------------------------------------------------- */
/* Which object class / key type a generation mechanism produces. */
/* The configuration's rsa_min_bits (1024..8192; others ignored): the smallest
 * RSA key CKM_RSA_PKCS_KEY_PAIR_GEN makes and C_GetMechanismInfo reports. */
TOK_API void tok_mech_set_rsa_min_bits(unsigned bits);
TOK_API unsigned tok_mech_rsa_min_bits(void);
/* The configuration's legacy_mechanisms: single DES (CKK_DES, CKM_DES_*) and
 * MD5 (CKM_MD5, CKM_MD5_HMAC) are listed and work only when it is yes and
 * OpenSSL's legacy provider loads into the module's library context. Returns
 * whether they are on; off, they are CKR_MECHANISM_INVALID everywhere. */
TOK_API bool tok_mech_set_legacy(bool want);
TOK_API bool tok_mech_legacy(void);
TOK_API CK_RV tok_mech_keygen_type(CK_MECHANISM_TYPE m, CK_KEY_TYPE *ktype);       /* secret keys */
TOK_API CK_RV tok_mech_keypairgen_type(CK_MECHANISM_TYPE m, CK_KEY_TYPE *ktype);   /* key pairs */

/* Secret key: reads CKA_VALUE_LEN from key (required for AES (16/24/32) and
 * generic secret (1..512 bytes); CKR_TEMPLATE_INCOMPLETE if absent,
 * CKR_ATTRIBUTE_VALUE_INVALID if bad) and adds CKA_VALUE.
 * DES keys take the length of their type, with odd parity. */
TOK_API CK_RV tok_mech_generate_key(const CK_MECHANISM *mech, tok_attrs *key);

/* Key pair: reads CKA_MODULUS_BITS (+ optional CKA_PUBLIC_EXPONENT) or
 * CKA_EC_PARAMS from pub; adds to pub: RSA CKA_MODULUS, CKA_PUBLIC_EXPONENT,
 * CKA_MODULUS_BITS; EC CKA_EC_POINT (DER OCTET STRING); both
 * CKA_PUBLIC_KEY_INFO (DER SubjectPublicKeyInfo). Adds to priv: RSA
 * CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1/2,
 * CKA_EXPONENT_1/2, CKA_COEFFICIENT; EC CKA_EC_PARAMS, CKA_VALUE, and
 * CKA_EC_POINT; both CKA_PUBLIC_KEY_INFO. */
TOK_API CK_RV tok_mech_generate_keypair(const CK_MECHANISM *mech, tok_attrs *pub, tok_attrs *priv);

/* Check key material attributes of an imported object (C_CreateObject) and
 * complete derivable ones (CKA_VALUE_LEN for secrets, CKA_MODULUS_BITS for RSA
 * public keys, CKA_PUBLIC_KEY_INFO, EC point for EC private keys).
 * CKR_TEMPLATE_INCOMPLETE / CKR_ATTRIBUTE_VALUE_INVALID / CKR_OK. */
TOK_API CK_RV tok_mech_complete_import(tok_attrs *obj);

/* The length of CKA_VALUE of key types whose length the type fixes (DES 8,
 * DES2 16, DES3 24 bytes; they have no CKA_VALUE_LEN), 0 for other key types. */
TOK_API CK_ULONG tok_ktype_fixed_len(CK_KEY_TYPE kt);

/* ---- keys -------------------------------------------------------------- */
typedef struct tok_key tok_key; /* immutable after creation; refcounted, thread-safe refs */
/* Parse an object's attributes into a key usable by operations.
 * CKR_KEY_TYPE_INCONSISTENT if the object is not a key, CKR_GENERAL_ERROR if
 * the material is malformed. */
TOK_API CK_RV tok_key_from_attrs(const tok_attrs *obj, tok_key **out);
/* The object's attributes as of when the key was built, without its key
 * material: what the usage and policy checks read (valid while k is held). */
TOK_API const tok_attrs *tok_key_attrs(const tok_key *k);
/* The key's CKA_PRIVATE, read when it was built (tok_obj_is_private). */
TOK_API bool tok_key_private(const tok_key *k);
TOK_API tok_key *tok_key_ref(tok_key *k);
TOK_API void tok_key_unref(tok_key *k); /* frees + cleanses at 0 */

/* ---- operations -------------------------------------------------------- */
typedef enum {
    TOK_OP_ENCRYPT = 1,
    TOK_OP_DECRYPT,
    TOK_OP_SIGN,
    TOK_OP_VERIFY,
    TOK_OP_DIGEST,
} tok_op_kind;

typedef struct tok_op tok_op;

/* Start an operation. key is NULL for DIGEST. Checks: mechanism known and
 * allowed for kind (CKR_MECHANISM_INVALID), parameters
 * (CKR_MECHANISM_PARAM_INVALID), key type and size for the mechanism
 * (CKR_KEY_TYPE_INCONSISTENT, CKR_KEY_SIZE_RANGE), key usage attribute
 * (CKA_ENCRYPT/DECRYPT/SIGN/VERIFY -> CKR_KEY_FUNCTION_NOT_PERMITTED).
 * `key_attrs` are the key object's attributes (for usage flags); the op
 * takes its own reference on key. */
TOK_API CK_RV tok_op_init(tok_op_kind kind, const CK_MECHANISM *mech, tok_key *key,
                          const tok_attrs *key_attrs, tok_op **out);
TOK_API void tok_op_free(tok_op *op);
TOK_API tok_op_kind tok_op_get_kind(const tok_op *op);
/* The handle of the operation's key, to which C_GetOperationState binds a
 * saved state (tok_opstate.h). */
TOK_API void tok_op_set_key_handle(tok_op *op, uint64_t h);

/* C_SignRecoverInit (TOK_OP_SIGN) and C_VerifyRecoverInit (TOK_OP_VERIFY):
 * the checks of tok_op_init with the mechanism's CKF_SIGN_RECOVER /
 * CKF_VERIFY_RECOVER and the key's CKA_SIGN_RECOVER / CKA_VERIFY_RECOVER
 * (CKR_KEY_FUNCTION_NOT_PERMITTED). The operation is served by
 * tok_op_recover only; the others answer CKR_OPERATION_NOT_INITIALIZED. */
TOK_API CK_RV tok_op_init_recover(tok_op_kind kind, const CK_MECHANISM *mech, tok_key *key, const tok_attrs *key_attrs,
                                  tok_op **out);
TOK_API bool tok_op_is_recover(const tok_op *op);
/* C_SignRecover (in: the data, out: the signature) and C_VerifyRecover (in:
 * the signature, out: the data it holds), single-part, size-query protocol
 * (a query on C_VerifyRecover gets an upper bound). CKR_DATA_LEN_RANGE,
 * CKR_DATA_INVALID (raw RSA: not below the modulus), CKR_SIGNATURE_LEN_RANGE,
 * CKR_SIGNATURE_INVALID. */
TOK_API CK_RV tok_op_recover(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen);

/* Single-part: C_Encrypt, C_Decrypt, C_Sign, C_Digest. Must not have been
 * given update() calls (caller enforces CKR_OPERATION_ACTIVE). */
TOK_API CK_RV tok_op_oneshot(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen);
/* Multi-part update: for ENCRYPT/DECRYPT produces output (size-query
 * protocol applies); for SIGN/VERIFY/DIGEST out/outlen are NULL.
 * CKR_OPERATION_ACTIVE for a single-part mechanism or a single-part result
 * waiting for a bigger buffer (tok_op_final too), CKR_OPERATION_NOT_INITIALIZED
 * for a recovering operation. */
TOK_API CK_RV tok_op_update(tok_op *op, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen);
/* Final: C_EncryptFinal/C_DecryptFinal/C_SignFinal/C_DigestFinal. */
TOK_API CK_RV tok_op_final(tok_op *op, uint8_t *out, CK_ULONG *outlen);
/* Verify: single-part (C_Verify) and final (C_VerifyFinal).
 * CKR_SIGNATURE_INVALID / CKR_SIGNATURE_LEN_RANGE / CKR_OK. */
TOK_API CK_RV tok_op_verify(tok_op *op, const uint8_t *in, CK_ULONG inlen, const uint8_t *sig, CK_ULONG siglen);
TOK_API CK_RV tok_op_verify_final(tok_op *op, const uint8_t *sig, CK_ULONG siglen);

/* The dual-function updates: crypt an ENCRYPT operation and other a DIGEST
 * or SIGN one (C_DigestEncryptUpdate, C_SignEncryptUpdate: other takes the
 * plaintext in), or crypt a DECRYPT one and other a DIGEST or VERIFY one
 * (C_DecryptDigestUpdate, C_DecryptVerifyUpdate: other takes what the
 * decryption gives out). The size-query protocol of crypt's update; a query
 * or CKR_BUFFER_TOO_SMALL leaves both unchanged. The caller ends both on any
 * other error. */
TOK_API CK_RV tok_op_dual_update(tok_op *crypt, tok_op *other, const uint8_t *in, CK_ULONG inlen, uint8_t *out,
                                 CK_ULONG *outlen);

/* C_DigestKey: feed a secret key's value into a digest operation
 * (CKR_KEY_INDIGESTIBLE for other keys). */
TOK_API CK_RV tok_op_digest_key(tok_op *op, const tok_key *key);

/* ---- wrapping and derivation ------------------------------------------ */
/* C_WrapKey: the value of a secret key, or a private key as PKCS#8, under
 * `wrapper` (size-query protocol). The caller checked CKA_WRAP,
 * CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED. */
TOK_API CK_RV tok_wrap(const CK_MECHANISM *mech, tok_key *wrapper, const tok_attrs *target, uint8_t *out,
                       CK_ULONG *outlen);
/* C_UnwrapKey: add the unwrapped material to obj (built from the template
 * by tok_policy_build(TOK_BUILD_UNWRAP)). */
TOK_API CK_RV tok_unwrap(const CK_MECHANISM *mech, tok_key *unwrapper, const uint8_t *in, CK_ULONG inlen,
                         tok_attrs *obj);
/* C_DeriveKey (CKM_ECDH1_DERIVE, CKM_HKDF_DERIVE, CKM_SHA*_KEY_DERIVATION): add
 * CKA_VALUE to obj (a secret key). */
TOK_API CK_RV tok_derive(const CK_MECHANISM *mech, tok_key *base, tok_attrs *obj);

/* Random */
/* C_SeedRandom: mix caller data into the DRBG as additional input. */
TOK_API CK_RV tok_seed(const uint8_t *seed, CK_ULONG len);
TOK_API CK_RV tok_random(uint8_t *out, CK_ULONG len);

#endif
