/* p11mk token layer internals shared by tok_key.c, tok_mech.c and tok_op.c:
 * the parsed key and the supported curves. Not used outside token/. */
#ifndef P11MK_TOK_CRYPTO_H
#define P11MK_TOK_CRYPTO_H

#include <stdatomic.h>

#include <openssl/evp.h>

#include "keystore/ks.h"
#include "token/tok_aead.h"
#include "token/tok_mech.h"

enum { TOK_CURVE_WEIERSTRASS = 0, TOK_CURVE_EDWARDS = 1, TOK_CURVE_MONTGOMERY = 2 };

/* PKCS#11 3.0 Montgomery keys (not in p11-kit 0.24's header). */
#ifndef CKK_EC_MONTGOMERY
#define CKK_EC_MONTGOMERY 0x41UL
#endif
#ifndef CKM_EC_MONTGOMERY_KEY_PAIR_GEN
#define CKM_EC_MONTGOMERY_KEY_PAIR_GEN 0x1056UL
#endif

/* EdDSA parameters (PKCS#11 3.0; p11-kit 0.24's header lacks them). */
typedef struct {
    CK_BBOOL phFlag;
    CK_ULONG ulContextDataLen;
    CK_BYTE_PTR pContextData;
} tok_eddsa_params;

typedef struct {
    const char *name;        /* OpenSSL group name (Weierstrass) or algorithm name (Edwards) */
    const uint8_t *oid;      /* DER OBJECT IDENTIFIER (tag and length included) */
    size_t oid_len;
    const char *alias;       /* name inside a DER PrintableString form of CKA_EC_PARAMS */
    size_t field_bytes;      /* field size; for Edwards curves the raw key size */
    int kind;                /* TOK_CURVE_* */
    const char *keytype;     /* key type OID for OpenSSL (Edwards) */
} tok_curve;

/* PKCS#11 v3.0 values that p11-kit 0.24's header lacks. */
#ifndef CKM_SHA3_256
#define CKM_SHA3_256 0x2B0UL
#define CKM_SHA3_256_HMAC 0x2B1UL
#define CKM_SHA3_224 0x2B5UL
#define CKM_SHA3_384 0x2C0UL
#define CKM_SHA3_384_HMAC 0x2C1UL
#define CKM_SHA3_512 0x2D0UL
#define CKM_SHA3_512_HMAC 0x2D1UL
#endif
#ifndef CKM_SHA3_224_HMAC
#define CKM_SHA3_224_HMAC 0x2B6UL
#endif
#ifndef CKG_MGF1_SHA3_224
#define CKG_MGF1_SHA3_224 0x6UL
#define CKG_MGF1_SHA3_256 0x7UL
#define CKG_MGF1_SHA3_384 0x8UL
#define CKG_MGF1_SHA3_512 0x9UL
#endif

/* How an operation mechanism works. ECB, CBC, CBC_PAD and CMAC are block
 * cipher modes of the mechanism's cipher family (tok_fam). */
typedef enum {
    M_NONE = 0, /* generation only */
    M_CBC_PAD, M_CBC, M_ECB, M_AES_CTR, M_AES_GCM, M_CMAC,
    M_RSA_PKCS, M_RSA_X509, M_RSA_PKCS_HASH, M_RSA_PSS, M_RSA_PSS_HASH, M_RSA_OAEP,
    M_ECDSA, M_ECDSA_HASH, M_HMAC, M_DIGEST,
    M_AES_WRAP, M_AES_WRAP_PAD, M_ECDH, /* wrap/unwrap and derive only */
    M_EDDSA, M_HKDF,
    M_AES_CCM, M_CHACHA_POLY, /* AEAD with a tag of their own (tok_aead.c) */
    M_KEY_HASH, /* derive only: the digest of the base key's value (CKM_SHA*_KEY_DERIVATION) */
} tok_mclass;

/* PBKDF2 parameters. v2.40's CK_PKCS5_PBKD2_PARAMS has ulPasswordLen as a
 * CK_ULONG_PTR, v3.0's CK_PKCS5_PBKD2_PARAMS2 as a CK_ULONG; both have the
 * same layout and size, so the field is read as a length when it is a
 * plausible one and followed as a pointer otherwise. */
#define TOK_CKZ_SALT_SPECIFIED 0x1UL
typedef struct {
    CK_ULONG saltSource;
    CK_VOID_PTR pSaltSourceData;
    CK_ULONG ulSaltSourceDataLen;
    CK_ULONG iterations;
    CK_ULONG prf;
    CK_VOID_PTR pPrfData;
    CK_ULONG ulPrfDataLen;
    CK_UTF8CHAR_PTR pPassword;
    CK_ULONG ulPasswordLen; /* or a CK_ULONG_PTR (v2.40) */
} tok_pbkd2_params;

/* HKDF (PKCS#11 3.0; not in p11-kit 0.24's header). */
#define TOK_CKM_HKDF_DERIVE 0x402AUL
#define TOK_CKF_HKDF_SALT_NULL 0x1UL
#define TOK_CKF_HKDF_SALT_DATA 0x2UL
#define TOK_CKF_HKDF_SALT_KEY 0x4UL
typedef struct {
    CK_BBOOL bExtract;
    CK_BBOOL bExpand;
    CK_MECHANISM_TYPE prfHashMechanism;
    CK_ULONG ulSaltType;
    CK_BYTE_PTR pSalt;
    CK_ULONG ulSaltLen;
    CK_OBJECT_HANDLE hSaltKey;
    CK_BYTE_PTR pInfo;
    CK_ULONG ulInfoLen;
} tok_hkdf_params;

/* The block cipher family of a mechanism. */
typedef enum {
    TOK_FAM_NONE = 0,
    TOK_FAM_AES,  /* CKK_AES, 16-byte blocks */
    TOK_FAM_DES3, /* CKK_DES2 (K1 K2 K1) and CKK_DES3, 8-byte blocks */
    TOK_FAM_DES,  /* CKK_DES (legacy_mechanisms = yes), 8-byte blocks */
    /* CKK_CHACHA20 (32 bytes): a stream cipher, no blocks */
    TOK_FAM_CHACHA20,
} tok_fam;

typedef struct {
    CK_MECHANISM_TYPE type;
    CK_ULONG min, max;      /* key sizes as C_GetMechanismInfo reports them */
    CK_FLAGS flags;
    tok_mclass mc;
    const char *md;         /* digest of hash-based mechanisms (OpenSSL name) */
    CK_KEY_TYPE hmac_key;   /* HMAC: the specific key type also accepted (besides generic secret) */
    bool general;           /* _GENERAL variant: CK_MAC_GENERAL_PARAMS gives the output length */
    tok_fam fam;            /* block cipher mechanisms: the cipher family (its key types, block size) */
    bool legacy;            /* offered only with legacy_mechanisms = yes (single DES, MD5) */
} tok_mech_desc;

TOK_API const tok_mech_desc *tok_mech_find(CK_MECHANISM_TYPE m);

/* An OpenSSL failure (rv CKR_FUNCTION_FAILED or CKR_GENERAL_ERROR) while
 * OpenSSL's secure heap (secure_heap) is more than half used: the memory the
 * token keeps private keys in ran out (a key parsed, a signature's secret
 * nonce), CKR_DEVICE_MEMORY, which every function that uses a token lists,
 * rather than a generic failure. Stored keys are authenticated, so a key
 * that does not parse then is one there was no room for. */
static inline CK_RV tok_secmem_rv(CK_RV rv)
{
    return (rv == CKR_FUNCTION_FAILED || rv == CKR_GENERAL_ERROR) && ks_secure_heap_pressed() ? CKR_DEVICE_MEMORY
                                                                                               : rv;
}

/* C_GetOperationState: what a saveable operation (a digest, HMAC or CMAC,
 * not past TOK_OPSTATE_MAX_DATA bytes of input, no key digested, not in its
 * final call) is: its mechanism, the MAC length of a _GENERAL one (0: none),
 * its key's handle (0: a digest) and its input so far (valid while op is).
 * CKR_STATE_UNSAVEABLE for any other. */
#define TOK_OPSTATE_MAX_DATA (16u * 1024u)
typedef struct {
    tok_op_kind kind;
    CK_MECHANISM_TYPE mech;
    CK_ULONG maclen;
    uint64_t key_handle;
    const uint8_t *fed;
    size_t fedlen;
} tok_op_saved;
TOK_API CK_RV tok_op_save(const tok_op *op, tok_op_saved *out);

/* Block ciphers (tok_cipher.c), fetched once per process (single DES once
 * the legacy provider is loaded: tok_cipher_fetch_legacy). The cipher of a
 * block cipher mechanism for a key of keylen bytes: NULL when the family has
 * no such key size. */
TOK_API const EVP_CIPHER *tok_mech_cipher(const tok_mech_desc *d, size_t keylen);
/* The longest GCM IV taken (OpenSSL's limit; PKCS#11 allows up to 2^32 - 1
 * bytes: longer ones are CKR_MECHANISM_PARAM_INVALID). */
#define TOK_GCM_IV_MAX 128
/* AES-GCM through the provider's own functions (tok_direct.c): NULL when the
 * key length's cipher is not the default provider's (then EVP serves). */
typedef struct tok_gcm_fns tok_gcm_fns;
TOK_API const tok_gcm_fns *tok_mech_gcm(size_t keylen);
/* For tok_cipher.c, once per cipher. */
TOK_API tok_gcm_fns *tok_gcm_resolve(const EVP_CIPHER *c);
/* The provider's context of one operation, keyed, its IV (12 bytes: the
 * others go through EVP) and AAD given: NULL on failure (nothing to free).
 * The calls below return false on failure; tok_gcm_free cleanses and frees
 * (NULL: nothing). update is a stream: outlen = inlen. final gives no bytes
 * (a decryption's tag is set first: tok_gcm_tag(..., false, ...)); then
 * an encryption's tag is got (true). */
TOK_API void *tok_gcm_new(const tok_gcm_fns *g, bool enc, const uint8_t *key, size_t keylen, const uint8_t *iv,
                          size_t ivlen, const uint8_t *aad, size_t aadlen);
TOK_API bool tok_gcm_update(const tok_gcm_fns *g, void *ctx, uint8_t *out, size_t *outlen, const uint8_t *in,
                            size_t inlen);
TOK_API bool tok_gcm_final(const tok_gcm_fns *g, void *ctx, uint8_t *out, size_t *outlen);
TOK_API bool tok_gcm_tag(const tok_gcm_fns *g, void *ctx, bool get, uint8_t *tag, size_t taglen);
TOK_API void tok_gcm_free(const tok_gcm_fns *g, void *ctx);
/* The block size of a family (16 for AES, 8 for DES). */
TOK_API size_t tok_fam_block(tok_fam fam);
/* Is kt a key type of the family? */
TOK_API bool tok_fam_key(tok_fam fam, CK_KEY_TYPE kt);
/* Fetch the single DES ciphers (after ks_libctx_load_legacy): true when
 * every one is there. */
TOK_API bool tok_cipher_fetch_legacy(void);
/* The MAC algorithms, fetched once: CMAC (cmac) or HMAC. */
TOK_API EVP_MAC *tok_mac(bool cmac);
/* A digest of the mechanism table by name ("SHA256", "SHA3-384", ...),
 * fetched once: not to be freed. NULL for a name the table does not use. */
TOK_API const EVP_MD *tok_md(const char *name);
/* Its output size in bytes; 0 when tok_md has no such digest. */
TOK_API size_t tok_md_size(const char *name);
/* The digest of name through the provider's own functions (tok_direct.c):
 * NULL when it is not the default provider's (then EVP serves). */
typedef struct tok_dgst_fns tok_dgst_fns;
TOK_API const tok_dgst_fns *tok_md_direct(const char *name);
/* For tok_cipher.c, once per digest. */
TOK_API tok_dgst_fns *tok_dgst_resolve(const EVP_MD *md);
/* A provider's context for digests of f: NULL when out of memory. Each
 * digest starts with tok_dgst_init (a context is used again: init starts
 * it afresh). tok_dgst_final gives the whole digest (its size: out has
 * EVP_MAX_MD_SIZE bytes or the digest's size). tok_dgst_free cleanses and
 * frees (NULL: nothing). The others return false on failure. */
TOK_API void *tok_dgst_new(const tok_dgst_fns *f);
TOK_API bool tok_dgst_init(const tok_dgst_fns *f, void *ctx);
TOK_API bool tok_dgst_update(const tok_dgst_fns *f, void *ctx, const uint8_t *in, size_t inlen);
TOK_API bool tok_dgst_final(const tok_dgst_fns *f, void *ctx, uint8_t *out, size_t *outlen);
TOK_API void tok_dgst_free(const tok_dgst_fns *f, void *ctx);

/* Can a secret key of type kt be len bytes long? AES 16, 24 or 32,
 * ChaCha20 32, DES keys their type's length, the others any but 0. */
TOK_API bool tok_secret_len_ok(CK_KEY_TYPE kt, size_t len);
/* Give a secret key object (class and key type set) its value: CKA_VALUE,
 * and CKA_VALUE_LEN for the key types that have one (DES keys do not: the
 * type fixes their length). made: the token made the value (generation,
 * derivation), so DES keys get their parity bits set (odd parity); values
 * that come in (import, unwrap) are kept as they are, parity either way. */
TOK_API CK_RV tok_secret_set(tok_attrs *obj, uint8_t *val, size_t len, bool made);
/* OpenSSL digest name of a CKM_SHA* digest / CKG_MGF1_* generator; NULL if unknown. */
TOK_API const char *tok_md_of_mech(CK_MECHANISM_TYPE m);
TOK_API const char *tok_md_of_mgf(CK_RSA_PKCS_MGF_TYPE g);
/* CK_RSA_PKCS_OAEP_PARAMS of m, checked (length first, then a known hash and
 * MGF, no SHA-3, source data specified or absent) for encrypt, decrypt, wrap
 * and unwrap alike. The label points into the caller's parameter. */
typedef struct {
    const char *md, *mgf;
    const uint8_t *label;
    size_t labellen;
} tok_oaep;
TOK_API CK_RV tok_oaep_params(const CK_MECHANISM *m, tok_oaep *out);

/* Does the key's CKA_ALLOWED_MECHANISMS (absent or empty: any) let it be used with m? */
TOK_API bool tok_mech_allowed(const tok_attrs *a, CK_MECHANISM_TYPE m);
/* The same, given the CKA_ALLOWED_MECHANISMS attribute (NULL: absent). */
TOK_API bool tok_mech_allowed_in(const tok_attr *allowed, CK_MECHANISM_TYPE m);

/* AES-CCM and ChaCha20-Poly1305 for C_Encrypt/C_Decrypt and the multi-part
 * calls (tok_aead.c): tok_op.c hands an operation of these mechanisms over
 * whole, with the same contracts as tok_op_init, _oneshot, _update, _final
 * (size-query protocol; CCM: CKR_DATA_LEN_RANGE / _ENCRYPTED_DATA_LEN_RANGE
 * when the data is not ulDataLen bytes; a bad tag
 * CKR_ENCRYPTED_DATA_INVALID). The key's type, usage and allowed
 * mechanisms are checked by the caller. */
typedef struct tok_aead_op tok_aead_op;
TOK_API bool tok_aead_single(tok_mclass mc);
TOK_API CK_RV tok_aead_op_init(const tok_mech_desc *d, bool enc, const CK_MECHANISM *m, tok_key *key,
                               tok_aead_op **out);
TOK_API void tok_aead_op_free(tok_aead_op *a);
TOK_API CK_RV tok_aead_op_oneshot(tok_aead_op *a, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen);
TOK_API CK_RV tok_aead_op_update(tok_aead_op *a, const uint8_t *in, CK_ULONG inlen, uint8_t *out, CK_ULONG *outlen);
TOK_API CK_RV tok_aead_op_final(tok_aead_op *a, uint8_t *out, CK_ULONG *outlen);

/* Key types by OID: OpenSSL maps "RSA" and "EC" to legacy key type ids, and
 * an application's ENGINE registered for those ids (engine_pkcs11 in
 * `openssl req -engine pkcs11`, say) would then take over p11mk's own key
 * handling; the OIDs reach the providers of p11mk's library context directly. */
#define TOK_KEYTYPE_RSA "1.2.840.113549.1.1.1"
#define TOK_KEYTYPE_EC "1.2.840.10045.2.1"

/* What an operation's start asks of a key's attributes (tok_op.c), read
 * once when the key is built (tok_key_use_of) instead of by a walk of the
 * attributes on every init. The rules stay where they are (tok_access.c,
 * tok_mech.c); these are their inputs. */
enum {
    TOK_USE_ENCRYPT = 1 << 0,
    TOK_USE_DECRYPT = 1 << 1,
    TOK_USE_SIGN = 1 << 2,
    TOK_USE_VERIFY = 1 << 3,
    TOK_USE_SIGN_RECOVER = 1 << 4,
    TOK_USE_VERIFY_RECOVER = 1 << 5,
};
typedef struct {
    unsigned may;            /* TOK_USE_*: the usage attributes that are true */
    bool private_obj;        /* CKA_PRIVATE */
    bool always_auth;        /* CKA_ALWAYS_AUTHENTICATE */
    const tok_attr *allowed; /* CKA_ALLOWED_MECHANISMS, inside the attributes it was read from; NULL: absent */
} tok_key_use;
/* Read from a, which must outlive the result (allowed points into it). */
TOK_API tok_key_use tok_key_use_of(const tok_attrs *a);

struct tok_key {
    atomic_int refs;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE ktype;
    EVP_PKEY *pkey;          /* RSA and EC keys */
    uint8_t *secret;         /* AES and generic secret keys */
    size_t secret_len;
    size_t size_bytes;       /* RSA modulus / EC field size in bytes */
    const tok_curve *curve;  /* EC */
    tok_attrs attrs;         /* the object's attributes when the key was built, key material dropped
                                (tok_attrs_drop_secrets): the usage and policy checks read them here */
    tok_key_use use;         /* read from attrs when the key was built; attrs never change after */
};

/* The curve named by a CKA_EC_PARAMS value (OID or PrintableString), or NULL. */
TOK_API const tok_curve *tok_curve_from_params(const uint8_t *p, size_t len);
/* The curve of an OpenSSL group name, or NULL. */
TOK_API const tok_curve *tok_curve_from_name(const char *name);
/* Strip a DER OCTET STRING around an EC point if there is one; NULL if malformed. */
TOK_API const uint8_t *tok_ec_point_raw(const uint8_t *p, size_t len, const tok_curve *c, size_t *rawlen);
/* DER SubjectPublicKeyInfo of pkey (malloc'd). */
TOK_API int tok_pkey_spki(EVP_PKEY *pkey, uint8_t **out, size_t *len);
/* Big-endian unsigned bytes of a BIGNUM parameter of pkey, set as attribute t. */
TOK_API int tok_pkey_bn_attr(EVP_PKEY *pkey, const char *param, tok_attrs *a, CK_ATTRIBUTE_TYPE t, size_t pad);
/* Compute CKA_EC_POINT of an EC private key object from CKA_EC_PARAMS and CKA_VALUE. */
TOK_API int tok_ec_complete_point(tok_attrs *obj);
/* Fill the public (and, with priv, the private) attributes of an RSA or EC key. */
TOK_API CK_RV tok_pkey_export(EVP_PKEY *pkey, const tok_curve *curve, tok_attrs *pub, tok_attrs *priv);

/* ECDSA signatures (tok_ecsig.c): r || s, each of fb bytes (the field size,
 * TOK_ECSIG_FIELD_MAX at most: P-521's), and the DER ECDSA-Sig-Value. */
#define TOK_ECSIG_FIELD_MAX 66
#define TOK_ECSIG_DER_MAX (3 + 2 * (3 + TOK_ECSIG_FIELD_MAX))
/* DER -> r || s (2 * fb bytes at out); false when der is not a strict DER
 * ECDSA-Sig-Value or a number is longer than fb bytes. */
TOK_API bool tok_ecsig_to_raw(const uint8_t *der, size_t derlen, size_t fb, uint8_t *out);
/* r || s -> DER at out; its length, 0 when fb is 0 or above the maximum. */
TOK_API size_t tok_ecsig_to_der(const uint8_t *raw, size_t fb, uint8_t out[TOK_ECSIG_DER_MAX]);

#endif
