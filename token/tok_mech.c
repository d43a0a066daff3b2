/* p11mk token layer: the mechanism table, key generation and import checks
 * on OpenSSL 3 EVP. */
#include "tok_crypto.h"
#include "token/tok_policy.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#define EC_FLAGS (CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS)

#define SIGN (CKF_SIGN | CKF_VERIFY)
#define CRYPT (CKF_ENCRYPT | CKF_DECRYPT)
/* the message-based functions, messages in parts too (tok_aead.c, and
 * tok_msgmac.c for the MACs) */
#define MSG (CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MULTI_MESSAGE)
#define MAC (SIGN | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY | CKF_MULTI_MESSAGE)
#define RECOVER (CKF_SIGN_RECOVER | CKF_VERIFY_RECOVER) /* raw RSA and PKCS#1 v1.5 only */

static const tok_mech_desc mechs[] = {
    /* AES: key sizes in bytes */
    {CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE, M_NONE, NULL, 0, false, TOK_FAM_AES, false},
    /* ECB, CBC, CBC_PAD also wrap: a secret key's value, a private key's
     * PKCS#8 (CBC_PAD, or whole blocks) */
    {CKM_AES_ECB, 16, 32, CRYPT | CKF_WRAP | CKF_UNWRAP, M_ECB, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_CBC, 16, 32, CRYPT | CKF_WRAP | CKF_UNWRAP, M_CBC, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_CBC_PAD, 16, 32, CRYPT | CKF_WRAP | CKF_UNWRAP, M_CBC_PAD, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_CTR, 16, 32, CRYPT, M_AES_CTR, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_GCM, 16, 32, CRYPT | MSG, M_AES_GCM, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_CCM, 16, 32, CRYPT | MSG, M_AES_CCM, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_CMAC, 16, 32, MAC, M_CMAC, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_CMAC_GENERAL, 16, 32, MAC, M_CMAC, NULL, 0, true, TOK_FAM_AES, false},
    {CKM_AES_KEY_WRAP, 16, 32, CKF_WRAP | CKF_UNWRAP, M_AES_WRAP, NULL, 0, false, TOK_FAM_AES, false},
    /* RFC 5649: PKCS#11 3.0's CKM_AES_KEY_WRAP_KWP, and _PAD as SoftHSMv2 and
     * the clients written for it use it. */
    {CKM_AES_KEY_WRAP_PAD, 16, 32, CKF_WRAP | CKF_UNWRAP, M_AES_WRAP_PAD, NULL, 0, false, TOK_FAM_AES, false},
    {CKM_AES_KEY_WRAP_KWP, 16, 32, CKF_WRAP | CKF_UNWRAP, M_AES_WRAP_PAD, NULL, 0, false, TOK_FAM_AES, false},
    /* Triple DES, two keys (16 bytes, K1 K2 K1) and three (24): key sizes in
     * bytes. ECB, CBC and CBC_PAD wrap and unwrap as the AES ones do. */
    {CKM_DES2_KEY_GEN, 16, 16, CKF_GENERATE, M_NONE, NULL, 0, false, TOK_FAM_DES3, false},
    {CKM_DES3_KEY_GEN, 24, 24, CKF_GENERATE, M_NONE, NULL, 0, false, TOK_FAM_DES3, false},
    {CKM_DES3_ECB, 16, 24, CRYPT | CKF_WRAP | CKF_UNWRAP, M_ECB, NULL, 0, false, TOK_FAM_DES3, false},
    {CKM_DES3_CBC, 16, 24, CRYPT | CKF_WRAP | CKF_UNWRAP, M_CBC, NULL, 0, false, TOK_FAM_DES3, false},
    {CKM_DES3_CBC_PAD, 16, 24, CRYPT | CKF_WRAP | CKF_UNWRAP, M_CBC_PAD, NULL, 0, false, TOK_FAM_DES3, false},
    {CKM_DES3_CMAC, 16, 24, MAC, M_CMAC, NULL, 0, false, TOK_FAM_DES3, false},
    {CKM_DES3_CMAC_GENERAL, 16, 24, MAC, M_CMAC, NULL, 0, true, TOK_FAM_DES3, false},
    /* Single DES (legacy_mechanisms = yes): 8-byte keys. No wrapping: a
     * 56-bit key would be the weak link of every key wrapped under it. */
    {CKM_DES_KEY_GEN, 8, 8, CKF_GENERATE, M_NONE, NULL, 0, false, TOK_FAM_DES, true},
    {CKM_DES_ECB, 8, 8, CRYPT, M_ECB, NULL, 0, false, TOK_FAM_DES, true},
    {CKM_DES_CBC, 8, 8, CRYPT, M_CBC, NULL, 0, false, TOK_FAM_DES, true},
    {CKM_DES_CBC_PAD, 8, 8, CRYPT, M_CBC_PAD, NULL, 0, false, TOK_FAM_DES, true},
    /* ChaCha20 (RFC 8439): 32-byte keys, key sizes in bytes */
    {CKM_CHACHA20_KEY_GEN, 32, 32, CKF_GENERATE, M_NONE, NULL, 0, false, TOK_FAM_CHACHA20, false},
    {CKM_CHACHA20_POLY1305, 32, 32, CRYPT | MSG, M_CHACHA_POLY, NULL, 0, false, TOK_FAM_CHACHA20, false},
    /* EC: key sizes in bits */
    {CKM_EC_KEY_PAIR_GEN, 256, 521, CKF_GENERATE_KEY_PAIR | EC_FLAGS, M_NONE, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_ECDSA, 256, 521, SIGN | EC_FLAGS, M_ECDSA, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_ECDSA_SHA1, 256, 521, SIGN | EC_FLAGS, M_ECDSA_HASH, "SHA1", 0, false, TOK_FAM_NONE, false},
    {CKM_ECDSA_SHA224, 256, 521, SIGN | EC_FLAGS, M_ECDSA_HASH, "SHA224", 0, false, TOK_FAM_NONE, false},
    {CKM_ECDSA_SHA256, 256, 521, SIGN | EC_FLAGS, M_ECDSA_HASH, "SHA256", 0, false, TOK_FAM_NONE, false},
    {CKM_ECDSA_SHA384, 256, 521, SIGN | EC_FLAGS, M_ECDSA_HASH, "SHA384", 0, false, TOK_FAM_NONE, false},
    {CKM_ECDSA_SHA512, 256, 521, SIGN | EC_FLAGS, M_ECDSA_HASH, "SHA512", 0, false, TOK_FAM_NONE, false},
    {CKM_ECDH1_DERIVE, 255, 521, CKF_DERIVE | EC_FLAGS, M_ECDH, NULL, 0, false, TOK_FAM_NONE, false},
    /* EdDSA: key sizes in bits */
    {CKM_EC_EDWARDS_KEY_PAIR_GEN, 255, 448, CKF_GENERATE_KEY_PAIR, M_NONE, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_EDDSA, 255, 448, SIGN, M_EDDSA, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_EC_MONTGOMERY_KEY_PAIR_GEN, 255, 448, CKF_GENERATE_KEY_PAIR, M_NONE, NULL, 0, false, TOK_FAM_NONE, false},
    /* RSA: key sizes in bits (generation from rsa_min_bits, default 2048, to 8192; use 1024-8192) */
    {CKM_RSA_PKCS_KEY_PAIR_GEN, 2048, 8192, CKF_GENERATE_KEY_PAIR, M_NONE, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_RSA_PKCS, 1024, 8192, CRYPT | SIGN | RECOVER | CKF_WRAP | CKF_UNWRAP, M_RSA_PKCS, NULL, 0, false, TOK_FAM_NONE,
     false},
    {CKM_RSA_X_509, 1024, 8192, CRYPT | SIGN | RECOVER, M_RSA_X509, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_SHA1_RSA_PKCS, 1024, 8192, SIGN, M_RSA_PKCS_HASH, "SHA1", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA224_RSA_PKCS, 1024, 8192, SIGN, M_RSA_PKCS_HASH, "SHA224", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA256_RSA_PKCS, 1024, 8192, SIGN, M_RSA_PKCS_HASH, "SHA256", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA384_RSA_PKCS, 1024, 8192, SIGN, M_RSA_PKCS_HASH, "SHA384", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA512_RSA_PKCS, 1024, 8192, SIGN, M_RSA_PKCS_HASH, "SHA512", 0, false, TOK_FAM_NONE, false},
    {CKM_RSA_PKCS_PSS, 1024, 8192, SIGN, M_RSA_PSS, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_SHA1_RSA_PKCS_PSS, 1024, 8192, SIGN, M_RSA_PSS_HASH, "SHA1", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA224_RSA_PKCS_PSS, 1024, 8192, SIGN, M_RSA_PSS_HASH, "SHA224", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA256_RSA_PKCS_PSS, 1024, 8192, SIGN, M_RSA_PSS_HASH, "SHA256", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA384_RSA_PKCS_PSS, 1024, 8192, SIGN, M_RSA_PSS_HASH, "SHA384", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA512_RSA_PKCS_PSS, 1024, 8192, SIGN, M_RSA_PSS_HASH, "SHA512", 0, false, TOK_FAM_NONE, false},
    {CKM_RSA_PKCS_OAEP, 1024, 8192, CRYPT | CKF_WRAP | CKF_UNWRAP, M_RSA_OAEP, NULL, 0, false, TOK_FAM_NONE, false},
    /* Digests */
    {CKM_SHA_1, 0, 0, CKF_DIGEST, M_DIGEST, "SHA1", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA224, 0, 0, CKF_DIGEST, M_DIGEST, "SHA224", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA256, 0, 0, CKF_DIGEST, M_DIGEST, "SHA256", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA384, 0, 0, CKF_DIGEST, M_DIGEST, "SHA384", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA512, 0, 0, CKF_DIGEST, M_DIGEST, "SHA512", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA3_224, 0, 0, CKF_DIGEST, M_DIGEST, "SHA3-224", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA3_256, 0, 0, CKF_DIGEST, M_DIGEST, "SHA3-256", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA3_384, 0, 0, CKF_DIGEST, M_DIGEST, "SHA3-384", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA3_512, 0, 0, CKF_DIGEST, M_DIGEST, "SHA3-512", 0, false, TOK_FAM_NONE, false},
    {CKM_MD5, 0, 0, CKF_DIGEST, M_DIGEST, "MD5", 0, false, TOK_FAM_NONE, true},
    /* Generic secrets and HMAC: key sizes in bits */
    {CKM_GENERIC_SECRET_KEY_GEN, 8, 4096, CKF_GENERATE, M_NONE, NULL, 0, false, TOK_FAM_NONE, false},
    {CKM_PKCS5_PBKD2, 8, 4096, CKF_GENERATE, M_NONE, NULL, 0, false, TOK_FAM_NONE, false},
    {TOK_CKM_HKDF_DERIVE, 8, 4096, CKF_DERIVE, M_HKDF, NULL, 0, false, TOK_FAM_NONE, false},
    /* The digest of a secret key's value is the derived key (base key sizes in bits) */
    {CKM_SHA1_KEY_DERIVATION, 8, 4096, CKF_DERIVE, M_KEY_HASH, "SHA1", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA224_KEY_DERIVATION, 8, 4096, CKF_DERIVE, M_KEY_HASH, "SHA224", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA256_KEY_DERIVATION, 8, 4096, CKF_DERIVE, M_KEY_HASH, "SHA256", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA384_KEY_DERIVATION, 8, 4096, CKF_DERIVE, M_KEY_HASH, "SHA384", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA512_KEY_DERIVATION, 8, 4096, CKF_DERIVE, M_KEY_HASH, "SHA512", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA_1_HMAC, 8, 4096, MAC, M_HMAC, "SHA1", CKK_SHA_1_HMAC, false, TOK_FAM_NONE, false},
    {CKM_SHA_1_HMAC_GENERAL, 8, 4096, MAC, M_HMAC, "SHA1", CKK_SHA_1_HMAC, true, TOK_FAM_NONE, false},
    {CKM_SHA224_HMAC_GENERAL, 8, 4096, MAC, M_HMAC, "SHA224", CKK_SHA224_HMAC, true, TOK_FAM_NONE, false},
    {CKM_SHA256_HMAC_GENERAL, 8, 4096, MAC, M_HMAC, "SHA256", CKK_SHA256_HMAC, true, TOK_FAM_NONE, false},
    {CKM_SHA384_HMAC_GENERAL, 8, 4096, MAC, M_HMAC, "SHA384", CKK_SHA384_HMAC, true, TOK_FAM_NONE, false},
    {CKM_SHA512_HMAC_GENERAL, 8, 4096, MAC, M_HMAC, "SHA512", CKK_SHA512_HMAC, true, TOK_FAM_NONE, false},
    {CKM_SHA224_HMAC, 8, 4096, MAC, M_HMAC, "SHA224", CKK_SHA224_HMAC, false, TOK_FAM_NONE, false},
    {CKM_SHA256_HMAC, 8, 4096, MAC, M_HMAC, "SHA256", CKK_SHA256_HMAC, false, TOK_FAM_NONE, false},
    {CKM_SHA384_HMAC, 8, 4096, MAC, M_HMAC, "SHA384", CKK_SHA384_HMAC, false, TOK_FAM_NONE, false},
    {CKM_SHA512_HMAC, 8, 4096, MAC, M_HMAC, "SHA512", CKK_SHA512_HMAC, false, TOK_FAM_NONE, false},
    {CKM_SHA3_224_HMAC, 8, 4096, MAC, M_HMAC, "SHA3-224", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA3_256_HMAC, 8, 4096, MAC, M_HMAC, "SHA3-256", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA3_384_HMAC, 8, 4096, MAC, M_HMAC, "SHA3-384", 0, false, TOK_FAM_NONE, false},
    {CKM_SHA3_512_HMAC, 8, 4096, MAC, M_HMAC, "SHA3-512", 0, false, TOK_FAM_NONE, false},
    {CKM_MD5_HMAC, 8, 4096, MAC, M_HMAC, "MD5", CKK_MD5_HMAC, false, TOK_FAM_NONE, true},
};
#define N_MECHS (sizeof(mechs) / sizeof(mechs[0]))

CK_ULONG tok_ktype_fixed_len(CK_KEY_TYPE kt)
{
    switch (kt) {
    case CKK_DES: return 8;
    case CKK_DES2: return 16;
    case CKK_DES3: return 24;
    default: return 0;
    }
}

/* legacy_mechanisms = yes, and OpenSSL's legacy provider loaded. */
static bool legacy_on;

bool tok_mech_set_legacy(bool want)
{
    bool on = want && ks_libctx_load_legacy() && tok_cipher_fetch_legacy();
    __atomic_store_n(&legacy_on, on, __ATOMIC_RELEASE);
    return on;
}

bool tok_mech_legacy(void) { return __atomic_load_n(&legacy_on, __ATOMIC_ACQUIRE); }

/* Is a mechanism of the table offered now? ChaCha20 only when the
 * module's library context has it (an OpenSSL built without it, or a
 * FIPS-only provider, has not). */
static bool offered(const tok_mech_desc *d)
{
    static const tok_mech_desc chacha = {.mc = M_CHACHA_POLY, .fam = TOK_FAM_CHACHA20};

    if (d->fam == TOK_FAM_CHACHA20)
        return tok_mech_cipher(&chacha, 32) != NULL;
    return !d->legacy || tok_mech_legacy();
}

/* Every operation's init looks its mechanism up: an open-addressed index
 * of the table (positions + 1, 0 empty), made once, instead of a walk of it. */
#define MECH_INDEX 512u
_Static_assert(N_MECHS < MECH_INDEX / 2 && N_MECHS < 255, "the mechanism index is too small");
static uint8_t mech_index[MECH_INDEX];
static pthread_once_t mech_index_once = PTHREAD_ONCE_INIT;

static unsigned mech_hash(CK_MECHANISM_TYPE m) { return (unsigned)((m * 0x9E3779B97F4A7C15ull) >> 55); }

static void mech_index_build(void)
{
    for (size_t i = 0; i < N_MECHS; i++) {
        unsigned h = mech_hash(mechs[i].type);
        while (mech_index[h])
            h = (h + 1) % MECH_INDEX;
        mech_index[h] = (uint8_t)(i + 1);
    }
}

const tok_mech_desc *tok_mech_find(CK_MECHANISM_TYPE m)
{
    pthread_once(&mech_index_once, mech_index_build);
    for (unsigned h = mech_hash(m); mech_index[h]; h = (h + 1) % MECH_INDEX) {
        const tok_mech_desc *d = &mechs[mech_index[h] - 1];
        if (d->type == m)
            return offered(d) ? d : NULL;
    }
    return NULL;
}

bool tok_mech_allowed(const tok_attrs *a, CK_MECHANISM_TYPE m)
{
    return tok_mech_allowed_in(tok_attrs_find(a, CKA_ALLOWED_MECHANISMS), m);
}

bool tok_mech_allowed_in(const tok_attr *am, CK_MECHANISM_TYPE m)
{
    if (!am || !am->len)
        return true;
    for (size_t i = 0; i + sizeof(CK_MECHANISM_TYPE) <= am->len; i += sizeof(CK_MECHANISM_TYPE)) {
        CK_MECHANISM_TYPE t;
        memcpy(&t, am->val + i, sizeof(t));
        if (t == m)
            return true;
    }
    return false;
}

const char *tok_md_of_mech(CK_MECHANISM_TYPE m)
{
    const tok_mech_desc *d = tok_mech_find(m);
    /* Digests as parameters (PSS, OAEP, HKDF): never MD5. */
    return d && d->mc == M_DIGEST && !d->legacy ? d->md : NULL;
}

const char *tok_md_of_mgf(CK_RSA_PKCS_MGF_TYPE g)
{
    switch (g) {
    case CKG_MGF1_SHA1: return "SHA1";
    case CKG_MGF1_SHA224: return "SHA224";
    case CKG_MGF1_SHA256: return "SHA256";
    case CKG_MGF1_SHA384: return "SHA384";
    case CKG_MGF1_SHA512: return "SHA512";
    case CKG_MGF1_SHA3_224: return "SHA3-224";
    case CKG_MGF1_SHA3_256: return "SHA3-256";
    case CKG_MGF1_SHA3_384: return "SHA3-384";
    case CKG_MGF1_SHA3_512: return "SHA3-512";
    default: return NULL;
    }
}

CK_ULONG tok_mech_list(CK_MECHANISM_TYPE *list, CK_ULONG cap)
{
    CK_ULONG n = 0;
    for (size_t i = 0; i < N_MECHS; i++) {
        if (!offered(&mechs[i]))
            continue;
        if (list && n < cap)
            list[n] = mechs[i].type;
        n++;
    }
    return n;
}

/* The smallest RSA key generation makes (configuration: rsa_min_bits). */
static unsigned rsa_min_bits = 2048;

void tok_mech_set_rsa_min_bits(unsigned bits)
{
    if (bits >= 1024 && bits <= 8192)
        __atomic_store_n(&rsa_min_bits, bits, __ATOMIC_RELAXED);
}

static CK_ULONG rsa_gen_min(void) { return __atomic_load_n(&rsa_min_bits, __ATOMIC_RELAXED); }
unsigned tok_mech_rsa_min_bits(void) { return (unsigned)rsa_gen_min(); }

CK_RV tok_mech_info(CK_MECHANISM_TYPE m, CK_MECHANISM_INFO *info)
{
    const tok_mech_desc *d = tok_mech_find(m);
    if (!d)
        return CKR_MECHANISM_INVALID;
    if (info) {
        info->ulMinKeySize = m == CKM_RSA_PKCS_KEY_PAIR_GEN ? rsa_gen_min() : d->min;
        info->ulMaxKeySize = d->max;
        info->flags = d->flags;
        /* wrap_policy = strict unwraps only what carries its own integrity
         * check: AES key wrap (RFC 3394/5649) and RSA OAEP. ECB, CBC and
         * CBC_PAD let a chosen ciphertext or a short CKA_VALUE_LEN read a key
         * out piece by piece (padding oracle, truncation); PKCS#1 v1.5 is
         * Bleichenbacher's oracle. */
        if (tok_policy_wrap_strict() &&
            (d->mc == M_ECB || d->mc == M_CBC || d->mc == M_CBC_PAD || d->mc == M_RSA_PKCS))
            info->flags &= ~(CK_FLAGS)CKF_UNWRAP;
    }
    return CKR_OK;
}

CK_RV tok_mech_keygen_type(CK_MECHANISM_TYPE m, CK_KEY_TYPE *ktype)
{
    if (!tok_mech_find(m))
        return CKR_MECHANISM_INVALID; /* not offered */
    switch (m) {
    case CKM_AES_KEY_GEN: *ktype = CKK_AES; return CKR_OK;
    case CKM_DES2_KEY_GEN: *ktype = CKK_DES2; return CKR_OK;
    case CKM_DES3_KEY_GEN: *ktype = CKK_DES3; return CKR_OK;
    case CKM_DES_KEY_GEN: *ktype = CKK_DES; return CKR_OK;
    case CKM_CHACHA20_KEY_GEN: *ktype = CKK_CHACHA20; return CKR_OK;
    case CKM_GENERIC_SECRET_KEY_GEN: *ktype = CKK_GENERIC_SECRET; return CKR_OK;
    case CKM_PKCS5_PBKD2: *ktype = (CK_KEY_TYPE)-1 /* from the template */; return CKR_OK;
    default: return CKR_MECHANISM_INVALID;
    }
}

CK_RV tok_mech_keypairgen_type(CK_MECHANISM_TYPE m, CK_KEY_TYPE *ktype)
{
    switch (m) {
    case CKM_RSA_PKCS_KEY_PAIR_GEN: *ktype = CKK_RSA; return CKR_OK;
    case CKM_EC_KEY_PAIR_GEN: *ktype = CKK_EC; return CKR_OK;
    case CKM_EC_EDWARDS_KEY_PAIR_GEN: *ktype = CKK_EC_EDWARDS; return CKR_OK;
    case CKM_EC_MONTGOMERY_KEY_PAIR_GEN: *ktype = CKK_EC_MONTGOMERY; return CKR_OK;
    default: return CKR_MECHANISM_INVALID;
    }
}

CK_RV tok_random(uint8_t *out, CK_ULONG len)
{
    if (!out && len)
        return CKR_ARGUMENTS_BAD;
    while (len) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        if (RAND_bytes_ex(ks_libctx(), out, (size_t)chunk, 0) != 1)
            return CKR_FUNCTION_FAILED;
        out += chunk;
        len -= (CK_ULONG)chunk;
    }
    return CKR_OK;
}

CK_RV tok_seed(const uint8_t *seed, CK_ULONG len)
{
    EVP_RAND_CTX *drbg = RAND_get0_primary(ks_libctx());
    if (!seed && len)
        return CKR_ARGUMENTS_BAD;
    if (!drbg)
        return CKR_FUNCTION_FAILED;
    /* Additional input on top of the OS entropy: it can only add, never replace. */
    return EVP_RAND_reseed(drbg, 0, NULL, 0, seed, len) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
}

/* ---- secret keys --------------------------------------------------------- */

/* The password's length. PKCS#11 3.0's CK_PKCS5_PBKD2_PARAMS2 holds it
 * where 2.40's CK_PKCS5_PBKD2_PARAMS held a pointer to it, in a field of
 * the same size, and the caller does not say which it used. A value below
 * the lowest address Linux maps (64 KiB, vm.mmap_min_addr) is a length; a
 * larger one is a pointer only if it is aligned and the length can be read
 * there: the kernel reads it (a write into a pipe, EFAULT where nothing
 * readable is: a length taken for a pointer, even one naming a guard page,
 * would crash a plain read); anything else is a length too long. The
 * longest password taken: 4096 bytes. */
#define PBKDF2_PASSWORD_MAX 4096
static bool password_len(CK_ULONG v, CK_ULONG *out)
{
    int p[2];
    bool read_it = false;

    if (v <= PBKDF2_PASSWORD_MAX) {
        *out = v;
        return true;
    }
    if (v < 65536 || v % _Alignof(CK_ULONG) || pipe2(p, O_CLOEXEC) != 0)
        return false;
    read_it = write(p[1], (const void *)(uintptr_t)v, sizeof(*out)) == (ssize_t)sizeof(*out) &&
              read(p[0], out, sizeof(*out)) == (ssize_t)sizeof(*out);
    close(p[0]);
    close(p[1]);
    return read_it && *out <= PBKDF2_PASSWORD_MAX;
}

/* PKCS #5 v2 PBKDF2 into buf (len bytes). */
static CK_RV pbkdf2(const CK_MECHANISM *mech, uint8_t *buf, CK_ULONG len)
{
    const tok_pbkd2_params *p = mech->pParameter;
    const char *md;
    CK_ULONG plen;

    if (!p || mech->ulParameterLen != sizeof(*p) || p->saltSource != TOK_CKZ_SALT_SPECIFIED ||
        (!p->pSaltSourceData && p->ulSaltSourceDataLen) || p->iterations < 1 || p->iterations > 10000000 ||
        p->pPrfData || p->ulPrfDataLen || !p->pPassword)
        return CKR_MECHANISM_PARAM_INVALID;
    switch (p->prf) {
    case 1: md = "SHA1"; break;   /* CKP_PKCS5_PBKD2_HMAC_SHA1 */
    case 3: md = "SHA224"; break; /* ..._SHA224 */
    case 4: md = "SHA256"; break;
    case 5: md = "SHA384"; break;
    case 6: md = "SHA512"; break;
    default: return CKR_MECHANISM_PARAM_INVALID;
    }
    if (!password_len(p->ulPasswordLen, &plen))
        return CKR_MECHANISM_PARAM_INVALID;
    EVP_KDF *kdf = EVP_KDF_fetch(ks_libctx(), "PBKDF2", NULL);
    EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    uint64_t iter = p->iterations;
    int pkcs5 = 1; /* the caller chose the salt and count: no SP 800-132 minimums imposed */
    OSSL_PARAM kp[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, p->pPassword, plen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, p->pSaltSourceData, p->ulSaltSourceDataLen),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_ITER, &iter),
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_PKCS5, &pkcs5),
        OSSL_PARAM_construct_end(),
    };
    CK_RV rv = kc && EVP_KDF_derive(kc, buf, len, kp) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
    return rv;
}

bool tok_secret_len_ok(CK_KEY_TYPE kt, size_t len)
{
    CK_ULONG fixed = tok_ktype_fixed_len(kt);

    if (kt == CKK_AES)
        return len == 16 || len == 24 || len == 32;
    if (kt == CKK_CHACHA20)
        return len == 32;
    return fixed ? len == fixed : len > 0;
}

CK_RV tok_secret_set(tok_attrs *obj, uint8_t *val, size_t len, bool made)
{
    CK_ULONG kt = CK_UNAVAILABLE_INFORMATION;
    bool fixed;

    tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt);
    fixed = tok_ktype_fixed_len(kt) != 0;
    if (fixed && made) /* the low bit of each byte makes its bit count odd (FIPS 46-3) */
        for (size_t i = 0; i < len; i++)
            val[i] = (uint8_t)((val[i] & 0xfe) | !(__builtin_popcount(val[i] & 0xfe) & 1));
    if (tok_attrs_set(obj, CKA_VALUE, val, len) != 0 || (!fixed && tok_attrs_set_ulong(obj, CKA_VALUE_LEN, len) != 0))
        return CKR_HOST_MEMORY;
    return CKR_OK;
}

CK_RV tok_mech_generate_key(const CK_MECHANISM *mech, tok_attrs *key)
{
    CK_ULONG len, kt = 0, fixed;
    uint8_t buf[512];
    CK_RV rv;

    if (!mech || !key)
        return CKR_ARGUMENTS_BAD;
    if (mech->mechanism != CKM_PKCS5_PBKD2 && (mech->pParameter || mech->ulParameterLen))
        return CKR_MECHANISM_PARAM_INVALID;
    tok_attrs_get_ulong(key, CKA_KEY_TYPE, &kt);
    fixed = tok_ktype_fixed_len(kt);
    if (fixed)
        len = fixed; /* DES keys: the type gives the length */
    else if (!tok_attrs_get_ulong(key, CKA_VALUE_LEN, &len)) {
        if (kt != CKK_CHACHA20)
            return CKR_TEMPLATE_INCOMPLETE;
        len = 32; /* ChaCha20 has one key length: the template need not say it */
    }
    /* A length the key type does not have is the template's CKA_VALUE_LEN
     * in error: CKR_ATTRIBUTE_VALUE_INVALID, as C_GenerateKey's list of
     * return values has it (CKR_KEY_SIZE_RANGE is not in it). */
    switch (mech->mechanism) {
    case CKM_PKCS5_PBKD2:
        if (!tok_secret_len_ok(kt, len) || len > sizeof(buf))
            return CKR_ATTRIBUTE_VALUE_INVALID;
        break;
    case CKM_DES_KEY_GEN:
    case CKM_DES2_KEY_GEN:
    case CKM_DES3_KEY_GEN: break; /* the mechanism gave the key type */
    case CKM_AES_KEY_GEN:
        if (len != 16 && len != 24 && len != 32)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        break;
    case CKM_CHACHA20_KEY_GEN:
    case CKM_GENERIC_SECRET_KEY_GEN:
        if (!tok_secret_len_ok(kt, len) || len > sizeof(buf))
            return CKR_ATTRIBUTE_VALUE_INVALID;
        break;
    default: return CKR_MECHANISM_INVALID;
    }
    rv = mech->mechanism == CKM_PKCS5_PBKD2 ? pbkdf2(mech, buf, len) : tok_random(buf, len);
    if (rv == CKR_OK)
        rv = tok_secret_set(key, buf, len, true);
    OPENSSL_cleanse(buf, sizeof(buf));
    return rv;
}

/* ---- key pairs ----------------------------------------------------------- */

static CK_RV gen_rsa(const tok_attrs *pub, EVP_PKEY **out)
{
    CK_ULONG bits;
    const tok_attr *e = tok_attrs_find(pub, CKA_PUBLIC_EXPONENT);
    BIGNUM *bn = NULL;
    EVP_PKEY_CTX *ctx;
    CK_RV rv = CKR_FUNCTION_FAILED;

    if (!tok_attrs_get_ulong(pub, CKA_MODULUS_BITS, &bits))
        return CKR_TEMPLATE_INCOMPLETE;
    /* C_GenerateKeyPair's list has no CKR_KEY_SIZE_RANGE. An odd size:
     * OpenSSL makes a modulus a bit shorter than asked (2049 -> 2048). */
    if (bits < rsa_gen_min() || bits > 8192 || bits % 2)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (e && e->len) {
        bn = BN_bin2bn(e->val, (int)e->len, NULL);
        if (!bn)
            return CKR_HOST_MEMORY;
        if (!BN_is_odd(bn) || BN_num_bits(bn) < 2 || BN_num_bits(bn) > 64) {
            BN_free(bn);
            return CKR_ATTRIBUTE_VALUE_INVALID;
        }
    }
    ctx = EVP_PKEY_CTX_new_from_name(ks_libctx(), TOK_KEYTYPE_RSA, NULL);
    if (ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, (int)bits) == 1 &&
        (!bn || EVP_PKEY_CTX_set1_rsa_keygen_pubexp(ctx, bn) == 1) && EVP_PKEY_generate(ctx, out) == 1)
        rv = CKR_OK;
    if (rv == CKR_OK && EVP_PKEY_get_bits(*out) != (int)bits) { /* never a key other than the one asked for */
        EVP_PKEY_free(*out);
        *out = NULL;
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
    }
    EVP_PKEY_CTX_free(ctx);
    BN_free(bn);
    return rv;
}

static CK_RV gen_ec(const tok_attrs *pub, const tok_curve **curve, EVP_PKEY **out)
{
    const tok_attr *p = tok_attrs_find(pub, CKA_EC_PARAMS);
    if (!p)
        return CKR_TEMPLATE_INCOMPLETE;
    *curve = tok_curve_from_params(p->val, p->len);
    if (!*curve)
        return CKR_CURVE_NOT_SUPPORTED;
    if ((*curve)->kind != TOK_CURVE_WEIERSTRASS) {
        EVP_PKEY_CTX *ec = EVP_PKEY_CTX_new_from_name(ks_libctx(), (*curve)->keytype, NULL);
        CK_RV erv = ec && EVP_PKEY_keygen_init(ec) == 1 && EVP_PKEY_generate(ec, out) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
        EVP_PKEY_CTX_free(ec);
        return erv;
    }
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(ks_libctx(), TOK_KEYTYPE_EC, NULL);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)(*curve)->name, 0),
                           OSSL_PARAM_construct_end()};
    CK_RV rv = ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_CTX_set_params(ctx, params) == 1 &&
                       EVP_PKEY_generate(ctx, out) == 1
                   ? CKR_OK
                   : CKR_FUNCTION_FAILED;
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

CK_RV tok_mech_generate_keypair(const CK_MECHANISM *mech, tok_attrs *pub, tok_attrs *priv)
{
    EVP_PKEY *pkey = NULL;
    const tok_curve *curve = NULL;
    CK_RV rv;

    if (!mech || !pub || !priv)
        return CKR_ARGUMENTS_BAD;
    if (mech->pParameter || mech->ulParameterLen)
        return CKR_MECHANISM_PARAM_INVALID;
    switch (mech->mechanism) {
    case CKM_RSA_PKCS_KEY_PAIR_GEN: rv = gen_rsa(pub, &pkey); break;
    case CKM_EC_KEY_PAIR_GEN:
    case CKM_EC_EDWARDS_KEY_PAIR_GEN:
    case CKM_EC_MONTGOMERY_KEY_PAIR_GEN: {
        int want = mech->mechanism == CKM_EC_KEY_PAIR_GEN         ? TOK_CURVE_WEIERSTRASS
                   : mech->mechanism == CKM_EC_EDWARDS_KEY_PAIR_GEN ? TOK_CURVE_EDWARDS
                                                                    : TOK_CURVE_MONTGOMERY;
        rv = gen_ec(pub, &curve, &pkey);
        if (rv == CKR_OK && curve->kind != want)
            rv = CKR_CURVE_NOT_SUPPORTED; /* each family of curves with its own mechanism */
        break;
    }
    default: return CKR_MECHANISM_INVALID;
    }
    if (rv == CKR_OK)
        rv = tok_pkey_export(pkey, curve, pub, priv);
    EVP_PKEY_free(pkey);
    return rv;
}

/* ---- import (C_CreateObject) ------------------------------------------- */

static CK_RV import_secret(tok_attrs *obj, CK_KEY_TYPE kt)
{
    const tok_attr *v = tok_attrs_find(obj, CKA_VALUE);
    CK_ULONG want, fixed = tok_ktype_fixed_len(kt);

    if (!v)
        return CKR_TEMPLATE_INCOMPLETE;
    if (!v->len || !tok_secret_len_ok(kt, v->len)) /* given, but empty or the wrong length */
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (fixed) /* DES: no CKA_VALUE_LEN (tok_policy refuses one); parity bits taken either way */
        return CKR_OK;
    if (tok_attrs_get_ulong(obj, CKA_VALUE_LEN, &want) && want != v->len)
        return CKR_TEMPLATE_INCONSISTENT;
    return tok_attrs_set_ulong(obj, CKA_VALUE_LEN, v->len) == 0 ? CKR_OK : CKR_HOST_MEMORY;
}

static CK_RV import_pkey(tok_attrs *obj, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt)
{
    tok_key *k = NULL;
    CK_RV rv;
    bool priv = cls == CKO_PRIVATE_KEY;

    if (kt == CKK_EC_EDWARDS || kt == CKK_EC_MONTGOMERY) {
        const tok_attr *p = tok_attrs_find(obj, CKA_EC_PARAMS);
        const tok_curve *c = p ? tok_curve_from_params(p->val, p->len) : NULL;
        if (!p || (priv ? !tok_attrs_find(obj, CKA_VALUE) : !tok_attrs_find(obj, CKA_EC_POINT)))
            return CKR_TEMPLATE_INCOMPLETE;
        if (!c || c->kind != (kt == CKK_EC_EDWARDS ? TOK_CURVE_EDWARDS : TOK_CURVE_MONTGOMERY))
            return CKR_CURVE_NOT_SUPPORTED;
    } else if (kt == CKK_RSA) {
        if (!tok_attrs_find(obj, CKA_MODULUS) || !tok_attrs_find(obj, CKA_PUBLIC_EXPONENT) ||
            (priv && !tok_attrs_find(obj, CKA_PRIVATE_EXPONENT)))
            return CKR_TEMPLATE_INCOMPLETE;
    } else {
        const tok_attr *p = tok_attrs_find(obj, CKA_EC_PARAMS);
        if (!p || (priv ? !tok_attrs_find(obj, CKA_VALUE) : !tok_attrs_find(obj, CKA_EC_POINT)))
            return CKR_TEMPLATE_INCOMPLETE;
        if (!tok_curve_from_params(p->val, p->len))
            return CKR_CURVE_NOT_SUPPORTED;
    }
    if (priv && kt == CKK_EC && !tok_attrs_find(obj, CKA_EC_POINT) && tok_ec_complete_point(obj) != 0)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    rv = tok_key_from_attrs(obj, &k);
    if (rv != CKR_OK)
        return rv == CKR_GENERAL_ERROR ? CKR_ATTRIBUTE_VALUE_INVALID : rv;
    rv = tok_pkey_export(k->pkey, k->curve, priv ? NULL : obj, priv ? obj : NULL);
    tok_key_unref(k);
    return rv;
}

CK_RV tok_mech_complete_import(tok_attrs *obj)
{
    CK_ULONG cls, kt;

    if (!obj)
        return CKR_ARGUMENTS_BAD;
    if (!tok_attrs_get_ulong(obj, CKA_CLASS, &cls))
        return CKR_TEMPLATE_INCOMPLETE;
    if (cls != CKO_SECRET_KEY && cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY)
        return CKR_OK;
    if (!tok_attrs_get_ulong(obj, CKA_KEY_TYPE, &kt))
        return CKR_TEMPLATE_INCOMPLETE;
    if (cls == CKO_SECRET_KEY)
        return import_secret(obj, kt);
    return import_pkey(obj, cls, kt);
}
