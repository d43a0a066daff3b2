/* Fuzz target: the PKCS#11 module through its C ABI, as an application
 * drives it.
 *
 * The module (P11MK_MODULE) is loaded with dlopen into a temporary keystore;
 * initialisation makes a token, logs the user in and creates the base keys
 * of fuzz_common.h. Each input is a small program (see the FZ_OP_* byte code
 * in fuzz_common.h and the decoders below) run in a fresh R/W session:
 * object creation, generation, attribute get/set, copy, find, the crypto
 * operations with their size-query protocol, wrap/unwrap, derive.
 *
 * Every template forced to CKA_TOKEN=FALSE: nothing a program makes reaches
 * the disk, and closing the session drops it. Base objects are only read.
 *
 * Checked: no crash, UB or leak (ASan/UBSan/LSan), every CK_RV is one the
 * specification defines, the session is still usable at the end, base
 * objects are intact, and an untampered sign->verify round trip verifies.
 *
 * Rules the decoders keep so that a report is always the module's fault:
 * every pValue / pParameter / inner pointer points to at least as many
 * readable (and, for outputs, writable) bytes as its length says, or is NULL;
 * output buffers are allocated to exactly their stated length so that
 * ASan sees any write past it. */
#include <dlfcn.h>
#include <stdarg.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "fuzz_common.h"

/* PKCS#11 3.0 values and structures p11-kit 0.24's header lacks. */
#ifndef CKM_EC_EDWARDS_KEY_PAIR_GEN
#define CKM_EC_EDWARDS_KEY_PAIR_GEN 0x1055UL
#endif
#ifndef CKM_EC_MONTGOMERY_KEY_PAIR_GEN
#define CKM_EC_MONTGOMERY_KEY_PAIR_GEN 0x1056UL
#endif
#ifndef CKM_EDDSA
#define CKM_EDDSA 0x1057UL
#endif
#ifndef CKK_EC_EDWARDS
#define CKK_EC_EDWARDS 0x40UL
#endif
#define FZ_CKK_EC_MONTGOMERY 0x41UL
#define FZ_CKM_HKDF_DERIVE 0x402AUL
#define FZ_CKM_SHA3_256 0x2B0UL
#define FZ_CKM_SHA3_256_HMAC 0x2B1UL
#define FZ_CKM_SHA3_384_HMAC 0x2C1UL
#define FZ_CKM_SHA3_512_HMAC 0x2D1UL

typedef struct {
    CK_BBOOL phFlag;
    CK_ULONG ulContextDataLen;
    CK_BYTE_PTR pContextData;
} fz_eddsa_params;

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
} fz_hkdf_params;

typedef struct { /* CK_PKCS5_PBKD2_PARAMS2 (v3.0); v2.40's has a CK_ULONG_PTR last */
    CK_ULONG saltSource;
    CK_VOID_PTR pSaltSourceData;
    CK_ULONG ulSaltSourceDataLen;
    CK_ULONG iterations;
    CK_ULONG prf;
    CK_VOID_PTR pPrfData;
    CK_ULONG ulPrfDataLen;
    CK_UTF8CHAR_PTR pPassword;
    CK_ULONG ulPasswordLen;
} fz_pbkd2_params;

/* ---- return codes ------------------------------------------------------------ */

/* Every CKR_* value PKCS#11 v3.0 defines (numeric: the p11-kit header lacks some). */
static const CK_RV valid_rv[] = {
    0x000, 0x001, 0x002, 0x003, 0x005, 0x006, 0x007, 0x008, 0x009, 0x00A, 0x010, 0x011, 0x012, 0x013, 0x01B,
    0x020, 0x021, 0x030, 0x031, 0x032, 0x040, 0x041, 0x042, 0x050, 0x051, 0x054, 0x060, 0x062, 0x063, 0x064,
    0x065, 0x066, 0x067, 0x068, 0x069, 0x06A, 0x070, 0x071, 0x082, 0x090, 0x091, 0x0A0, 0x0A1, 0x0A2, 0x0A3,
    0x0A4, 0x0B0, 0x0B1, 0x0B3, 0x0B4, 0x0B5, 0x0B6, 0x0B7, 0x0B8, 0x0C0, 0x0C1, 0x0D0, 0x0D1, 0x0E0, 0x0E1,
    0x0E2, 0x0F0, 0x0F1, 0x0F2, 0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x110, 0x112, 0x113, 0x114, 0x115,
    0x120, 0x121, 0x130, 0x140, 0x150, 0x160, 0x170, 0x180, 0x190, 0x191, 0x1A0, 0x1A1, 0x1B0, 0x1B1, 0x1B5,
    0x1B6, 0x1B7, 0x1B8, 0x1B9, 0x200, 0x201, 0x202,
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fuzz_pkcs11: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}

static int trace = -1; /* P11MK_FUZZ_TRACE=1: every call and its result on stderr */

static CK_RV chk(const char *what, CK_RV rv)
{
    if (trace < 0)
        trace = getenv("P11MK_FUZZ_TRACE") != NULL;
    if (trace)
        fprintf(stderr, "  %s -> %#lx\n", what, rv);
    for (size_t i = 0; i < sizeof(valid_rv) / sizeof(valid_rv[0]); i++)
        if (valid_rv[i] == rv)
            return rv;
    die("%s returned %#lx, which is not a CKR_* value", what, rv);
}
#define CALL(fn, ...) chk(#fn, f->fn(__VA_ARGS__))
#define MUST(c)                                                                                                    \
    do {                                                                                                           \
        if (!(c))                                                                                                  \
            die("check failed: %s (line %d)", #c, __LINE__);                                      \
    } while (0)

/* ---- global state ------------------------------------------------------------ */

static CK_FUNCTION_LIST *f;
static void *dl;
static char tmpdir[256];
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE setup_sess;
static CK_OBJECT_HANDLE base[FZ_H_BASE_COUNT], x_pub;
static CK_MECHANISM_TYPE mechs[256];
static CK_ULONG nmechs;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static const char SO_PIN[] = "fuzz-so-pin", USER_PIN[] = "fuzz-user-pin";

static const uint8_t oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
static const uint8_t oid_p521[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
static const uint8_t oid_x25519[] = {0x06, 0x03, 0x2b, 0x65, 0x6e};
static const uint8_t str_ed25519[] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9'};

/* Key material read back from the base objects (for imports that succeed). */
typedef struct {
    CK_ATTRIBUTE_TYPE type;
    uint8_t *val;
    CK_ULONG len;
} material;
static material mat[32];
static size_t nmat;

static uint8_t big_zero[65537];

/* ---- per-input arena ------------------------------------------------------------ */

static void **arena;
static size_t narena, caparena;

static void *amalloc(size_t n)
{
    /* Exactly n bytes (ASan flags any access past them); malloc(0) is a valid,
     * empty, non-NULL buffer. */
    void *p = malloc(n);
    if (!p && n)
        abort();
    if (narena == caparena) {
        caparena = caparena ? caparena * 2 : 256;
        arena = realloc(arena, caparena * sizeof(*arena));
        if (!arena)
            abort();
    }
    arena[narena++] = p;
    return p;
}

static void arena_free(void)
{
    for (size_t i = 0; i < narena; i++)
        free(arena[i]);
    narena = 0;
}

/* ---- input reader ------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t n;
} rd;

static uint8_t u8(rd *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}
/* Little endian; each read sequenced (the operands of | are not). */
static uint16_t u16(rd *r)
{
    uint16_t lo = u8(r);
    return (uint16_t)(lo | u8(r) << 8);
}
static uint32_t u32(rd *r)
{
    uint32_t lo = u16(r);
    return lo | (uint32_t)u16(r) << 16;
}
static uint64_t u64(rd *r)
{
    uint64_t lo = u32(r);
    return lo | (uint64_t)u32(r) << 32;
}

/* n bytes from the input (zero-padded when it runs out), in a buffer of exactly n bytes. */
static uint8_t *take(rd *r, size_t n)
{
    uint8_t *b = amalloc(n);
    size_t k = n < r->n ? n : r->n;
    if (k)
        memcpy(b, r->p, k);
    if (n > k)
        memset(b + k, 0, n - k);
    r->p += k;
    r->n -= k;
    return b;
}

static CK_ULONG *ulong_buf(CK_ULONG v)
{
    CK_ULONG *p = amalloc(sizeof(*p));
    *p = v;
    return p;
}

/* ---- handles ------------------------------------------------------------ */

#define MAX_CREATED 48
static CK_OBJECT_HANDLE created[MAX_CREATED];
static size_t ncreated;

static void track(CK_RV rv, CK_OBJECT_HANDLE h)
{
    if (rv != CKR_OK)
        return;
    MUST(h != CK_INVALID_HANDLE);
    if (ncreated < MAX_CREATED)
        created[ncreated++] = h;
}

/* rv first: the handle is written by the call (argument order is unspecified). */
static void track_rv(CK_RV rv, const CK_OBJECT_HANDLE *h) { track(rv, *h); }

/* A handle that is (most likely) invalid; never one of the base objects, which
 * may only be read (token object handles are small numbers). */
static CK_OBJECT_HANDLE invalid_handle(rd *r)
{
    CK_OBJECT_HANDLE h;
    switch (u8(r) % 4) {
    case 0: h = CK_INVALID_HANDLE; break;
    case 1: h = (CK_OBJECT_HANDLE)-1; break;
    case 2: h = (CK_OBJECT_HANDLE)1 << 63 | u32(r); break;
    default: h = u32(r); break;
    }
    for (int i = 0; i < FZ_H_BASE_COUNT; i++)
        if (h == base[i] || h == x_pub)
            return CK_INVALID_HANDLE;
    return h;
}

/* Any object: base objects, then those this input made; >= 0xf8 an invalid handle. */
static CK_OBJECT_HANDLE pick_handle(rd *r)
{
    uint8_t s = u8(r);
    size_t n = FZ_H_BASE_COUNT + ncreated;
    if (s >= 0xf8)
        return invalid_handle(r);
    s %= (uint8_t)n;
    return s < FZ_H_BASE_COUNT ? base[s] : created[s - FZ_H_BASE_COUNT];
}

/* An object this input made (base objects are never modified or destroyed). */
static CK_OBJECT_HANDLE pick_created(rd *r)
{
    uint8_t s = u8(r);
    if (s >= 0xf8 || !ncreated)
        return invalid_handle(r);
    return created[s % ncreated];
}

/* Key pairs generated by this input: (public, private). */
static CK_OBJECT_HANDLE made_pairs[MAX_CREATED][2];
static size_t nmade_pairs;

static CK_OBJECT_HANDLE partner(CK_OBJECT_HANDLE h)
{
    for (size_t i = 0; i < nmade_pairs; i++) {
        if (h == made_pairs[i][0])
            return made_pairs[i][1];
        if (h == made_pairs[i][1])
            return made_pairs[i][0];
    }
    static const int pairs[][2] = {
        {FZ_H_RSA_PUB, FZ_H_RSA_PRIV},
        {FZ_H_EC_PUB, FZ_H_EC_PRIV},
        {FZ_H_ED_PUB, FZ_H_ED_PRIV},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (h == base[pairs[i][0]])
            return base[pairs[i][1]];
        if (h == base[pairs[i][1]])
            return base[pairs[i][0]];
    }
    return h;
}

/* ---- mechanisms ------------------------------------------------------------ */

static CK_MECHANISM_TYPE pick_mech_type(rd *r)
{
    uint8_t s = u8(r);
    if (s == 0xff)
        return u32(r);
    if (s == 0xfe)
        return CKM_VENDOR_DEFINED | u16(r);
    if (s == 0xfd)
        return u8(r);
    return mechs[s % nmechs];
}

static const CK_MECHANISM_TYPE hash_mechs[] = {CKM_SHA256, CKM_SHA_1, CKM_SHA224, CKM_SHA384,
                                               CKM_SHA512, FZ_CKM_SHA3_256, CKM_MD5};
static const CK_ULONG mgfs[] = {CKG_MGF1_SHA256, CKG_MGF1_SHA1, CKG_MGF1_SHA224, CKG_MGF1_SHA384, CKG_MGF1_SHA512, 0};

static CK_ULONG pick(rd *r, const CK_ULONG *tab, size_t n)
{
    uint8_t s = u8(r) % (n + 1);
    return s < n ? tab[s] : (CK_ULONG)u64(r);
}
#define PICK(r, ...) pick(r, (const CK_ULONG[]){__VA_ARGS__}, sizeof((const CK_ULONG[]){__VA_ARGS__}) / sizeof(CK_ULONG))

/* A buffer of a chosen length and its pointer: table choices, or NULL with a length. */
static void *pick_buf(rd *r, CK_ULONG *len, CK_ULONG dflt)
{
    switch (u8(r) % 5) {
    case 0: *len = dflt; break;
    case 1: *len = 0; break;
    case 2: *len = u8(r); break;
    case 3: *len = 1 + u8(r) % 16; return NULL; /* NULL with a length: the module must refuse it */
    default: *len = u16(r) % 1025; break;
    }
    return take(r, *len);
}

static uint8_t ec_pub_der[160], x_pub_raw[64];
static CK_ULONG ec_pub_der_len, x_pub_raw_len;

/* Sizes of parameter structures that hold pointers: raw blobs never have them. */
static bool pointer_struct_size(size_t n)
{
    return n == sizeof(CK_GCM_PARAMS) || n == sizeof(CK_RSA_PKCS_OAEP_PARAMS) || n == sizeof(CK_ECDH1_DERIVE_PARAMS) ||
           n == sizeof(fz_hkdf_params) || n == sizeof(fz_pbkd2_params) || n == sizeof(fz_eddsa_params);
}

static void structured_param(rd *r, CK_MECHANISM *m)
{
    switch (m->mechanism) {
    case CKM_AES_CBC:
    case CKM_AES_CBC_PAD: {
        static const CK_ULONG lens[] = {16, 0, 15, 17, 32};
        CK_ULONG l = lens[u8(r) % 5];
        m->pParameter = take(r, l);
        m->ulParameterLen = l;
        break;
    }
    case CKM_AES_CTR: {
        CK_AES_CTR_PARAMS *p = amalloc(sizeof(*p));
        p->ulCounterBits = PICK(r, 128, 32, 0, 129);
        memcpy(p->cb, take(r, 16), 16);
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    case CKM_AES_GCM: {
        CK_GCM_PARAMS *p = amalloc(sizeof(*p));
        static const CK_ULONG ivl[] = {12, 16, 1, 0, 256, 257};
        uint8_t s = u8(r) % 7;
        CK_ULONG iv = s < 6 ? ivl[s] : u8(r);
        bool ivnull = u8(r) % 4 == 3;
        p->pIv = take(r, iv);
        p->ulIvLen = iv;
        p->ulIvBits = iv * 8;
        if (ivnull)
            p->pIv = NULL;
        static const CK_ULONG aadl[] = {0, 16, 5};
        s = u8(r) % 4;
        CK_ULONG aad = s < 3 ? aadl[s] : u8(r);
        bool aadnull = u8(r) % 4 == 3;
        p->pAAD = take(r, aad);
        p->ulAADLen = aad;
        if (aadnull)
            p->pAAD = NULL;
        p->ulTagBits = PICK(r, 128, 96, 32, 0, 136, 127);
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    case CKM_RSA_PKCS_PSS:
    case CKM_SHA1_RSA_PKCS_PSS:
    case CKM_SHA224_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
    case CKM_SHA384_RSA_PKCS_PSS:
    case CKM_SHA512_RSA_PKCS_PSS: {
        CK_RSA_PKCS_PSS_PARAMS *p = amalloc(sizeof(*p));
        p->hashAlg = pick(r, hash_mechs, sizeof(hash_mechs) / sizeof(hash_mechs[0]));
        p->mgf = pick(r, mgfs, sizeof(mgfs) / sizeof(mgfs[0]));
        p->sLen = PICK(r, 32, 0, 20, 64, 222, 223, 256);
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    case CKM_RSA_PKCS_OAEP: {
        CK_RSA_PKCS_OAEP_PARAMS *p = amalloc(sizeof(*p));
        CK_ULONG l;
        p->hashAlg = pick(r, hash_mechs, sizeof(hash_mechs) / sizeof(hash_mechs[0]));
        p->mgf = pick(r, mgfs, sizeof(mgfs) / sizeof(mgfs[0]));
        p->source = PICK(r, CKZ_DATA_SPECIFIED, 0, 2);
        p->pSourceData = pick_buf(r, &l, 0);
        p->ulSourceDataLen = l;
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    case CKM_SHA_1_HMAC_GENERAL:
    case CKM_SHA224_HMAC_GENERAL:
    case CKM_SHA256_HMAC_GENERAL:
    case CKM_SHA384_HMAC_GENERAL:
    case CKM_SHA512_HMAC_GENERAL:
    case CKM_AES_CMAC_GENERAL:
        m->pParameter = ulong_buf(PICK(r, 16, 1, 0, 32, 65));
        m->ulParameterLen = sizeof(CK_ULONG);
        break;
    case CKM_EDDSA: {
        uint8_t s = u8(r) % 4;
        if (s == 0)
            break;
        fz_eddsa_params *p = amalloc(sizeof(*p));
        CK_ULONG l = s == 3 ? u8(r) : 0;
        p->phFlag = s == 2;
        p->pContextData = s == 3 ? take(r, l) : NULL;
        p->ulContextDataLen = l;
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    case CKM_ECDH1_DERIVE: {
        CK_ECDH1_DERIVE_PARAMS *p = amalloc(sizeof(*p));
        CK_ULONG l;
        p->kdf = PICK(r, CKD_NULL, CKD_SHA256_KDF, CKD_SHA1_KDF, CKD_SHA224_KDF, CKD_SHA384_KDF, CKD_SHA512_KDF, 0x99);
        p->pSharedData = pick_buf(r, &l, 0);
        p->ulSharedDataLen = l;
        switch (u8(r) % 7) {
        case 0: /* the base P-256 public key, DER OCTET STRING */
            p->pPublicData = amalloc(ec_pub_der_len);
            memcpy(p->pPublicData, ec_pub_der, ec_pub_der_len);
            p->ulPublicDataLen = ec_pub_der_len;
            break;
        case 1: /* the same, raw point */
            p->ulPublicDataLen = ec_pub_der_len > 2 ? ec_pub_der_len - 2 : 0;
            p->pPublicData = amalloc(p->ulPublicDataLen);
            memcpy(p->pPublicData, ec_pub_der + 2, p->ulPublicDataLen);
            break;
        case 2: /* an X25519 public key */
            p->ulPublicDataLen = x_pub_raw_len;
            p->pPublicData = amalloc(x_pub_raw_len);
            memcpy(p->pPublicData, x_pub_raw, x_pub_raw_len);
            break;
        case 3: { /* the P-256 key with one byte changed */
            uint8_t pos = u8(r), x = u8(r);
            p->pPublicData = amalloc(ec_pub_der_len);
            memcpy(p->pPublicData, ec_pub_der, ec_pub_der_len);
            if (ec_pub_der_len)
                p->pPublicData[pos % ec_pub_der_len] ^= x ? x : 1;
            p->ulPublicDataLen = ec_pub_der_len;
            break;
        }
        case 4:
            p->ulPublicDataLen = u8(r);
            p->pPublicData = take(r, p->ulPublicDataLen);
            break;
        case 5:
            p->pPublicData = NULL;
            p->ulPublicDataLen = 65;
            break;
        default:
            p->pPublicData = take(r, 0);
            p->ulPublicDataLen = 0;
            break;
        }
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    case FZ_CKM_HKDF_DERIVE: {
        fz_hkdf_params *p = amalloc(sizeof(*p));
        uint8_t fl = u8(r);
        CK_ULONG l;
        memset(p, 0, sizeof(*p));
        p->bExtract = !(fl & 1);
        p->bExpand = !(fl & 2);
        p->prfHashMechanism = pick(r, hash_mechs, sizeof(hash_mechs) / sizeof(hash_mechs[0]));
        p->ulSaltType = PICK(r, 2 /* DATA */, 1 /* NULL */, 4 /* KEY */, 0);
        p->pSalt = pick_buf(r, &l, 16);
        p->ulSaltLen = l;
        p->hSaltKey = u8(r) ? base[FZ_H_HMAC] : CK_INVALID_HANDLE;
        p->pInfo = pick_buf(r, &l, 8);
        p->ulInfoLen = l;
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    case CKM_PKCS5_PBKD2: {
        fz_pbkd2_params *p = amalloc(sizeof(*p));
        CK_ULONG l;
        p->saltSource = PICK(r, 1 /* CKZ_SALT_SPECIFIED */, 0, 2);
        p->pSaltSourceData = pick_buf(r, &l, 8);
        p->ulSaltSourceDataLen = l;
        /* Bounded: a count of millions is valid and would only be slow. */
        uint8_t s = u8(r) % 5;
        p->iterations = s == 0 ? 100 : s == 1 ? 1 : s == 2 ? 0 : s == 3 ? 10000001 : 1 + u16(r) % 2000;
        p->prf = PICK(r, 4, 1, 3, 5, 6, 2);
        if (u8(r) % 4 == 3) {
            p->pPrfData = take(r, 4);
            p->ulPrfDataLen = 4;
        } else {
            p->pPrfData = NULL;
            p->ulPrfDataLen = 0;
        }
        switch (u8(r) % 6) {
        case 0: l = 8; break;
        case 1: l = 0; break;
        case 2: l = u8(r); break;
        case 3: l = 4096; break;
        case 4: { /* v2.40 layout: ulPasswordLen is a CK_ULONG_PTR */
            CK_ULONG *lp = ulong_buf(u8(r) % 2 ? 5000 : 8);
            p->pPassword = take(r, *lp > 4096 ? 0 : *lp);
            p->ulPasswordLen = (CK_ULONG)(uintptr_t)lp;
            if (*lp > 4096)
                p->pPassword = NULL;
            goto pbkd2_done;
        }
        default: l = 8; p->pPassword = NULL; p->ulPasswordLen = l; goto pbkd2_done;
        }
        p->pPassword = take(r, l);
        p->ulPasswordLen = l;
    pbkd2_done:
        m->pParameter = p;
        m->ulParameterLen = sizeof(*p);
        break;
    }
    default:
        break; /* no parameter */
    }
}

static CK_MECHANISM *decode_mech(rd *r)
{
    CK_MECHANISM *m = amalloc(sizeof(*m));
    m->mechanism = pick_mech_type(r);
    m->pParameter = NULL;
    m->ulParameterLen = 0;
    switch (u8(r) % 5) {
    case 0:
    case 4: structured_param(r, m); break;
    case 1: break;
    case 2: {
        CK_ULONG l = u8(r) % 96;
        if (pointer_struct_size(l))
            l++;
        m->pParameter = take(r, l);
        m->ulParameterLen = l;
        break;
    }
    default: /* NULL with a length: the module must refuse it */
        m->ulParameterLen = 1 + u8(r);
        break;
    }
    return m;
}

/* ---- templates ------------------------------------------------------------ */

static const CK_ATTRIBUTE_TYPE types[] = {
    CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_APPLICATION, CKA_VALUE, CKA_OBJECT_ID,
    CKA_CERTIFICATE_TYPE, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_TRUSTED, CKA_CERTIFICATE_CATEGORY,
    CKA_JAVA_MIDP_SECURITY_DOMAIN, CKA_URL, CKA_CHECK_VALUE, CKA_SUBJECT, CKA_ID, CKA_KEY_TYPE, CKA_SENSITIVE,
    CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_SIGN_RECOVER, CKA_VERIFY, CKA_VERIFY_RECOVER,
    CKA_DERIVE, CKA_START_DATE, CKA_END_DATE, CKA_MODULUS, CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT,
    CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT,
    CKA_PUBLIC_KEY_INFO, CKA_VALUE_LEN, CKA_EXTRACTABLE, CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE,
    CKA_KEY_GEN_MECHANISM, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_EC_PARAMS, CKA_EC_POINT,
    CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED, CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE,
    CKA_ALLOWED_MECHANISMS, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_NAME_HASH_ALGORITHM, CKA_VALUE_BITS,
    CKA_HW_FEATURE_TYPE, CKA_MECHANISM_TYPE,
};
#define NTYPES (sizeof(types) / sizeof(types[0]))

static bool is_bool(CK_ATTRIBUTE_TYPE t)
{
    switch (t) {
    case CKA_TOKEN: case CKA_PRIVATE: case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_DESTROYABLE:
    case CKA_SENSITIVE: case CKA_EXTRACTABLE: case CKA_ENCRYPT: case CKA_DECRYPT: case CKA_SIGN:
    case CKA_SIGN_RECOVER: case CKA_VERIFY: case CKA_VERIFY_RECOVER: case CKA_WRAP: case CKA_UNWRAP:
    case CKA_DERIVE: case CKA_LOCAL: case CKA_ALWAYS_SENSITIVE: case CKA_NEVER_EXTRACTABLE: case CKA_TRUSTED:
    case CKA_WRAP_WITH_TRUSTED: case CKA_ALWAYS_AUTHENTICATE:
        return true;
    default: return false;
    }
}

static bool is_template(CK_ATTRIBUTE_TYPE t)
{
    return t == CKA_WRAP_TEMPLATE || t == CKA_UNWRAP_TEMPLATE || t == CKA_DERIVE_TEMPLATE;
}

static CK_ATTRIBUTE_TYPE pick_type(rd *r)
{
    uint8_t s = u8(r);
    if (s == 0xff)
        return u32(r);
    if (s == 0xfe)
        return (CK_ATTRIBUTE_TYPE)u64(r);
    if (s == 0xfd)
        return CKF_ARRAY_ATTRIBUTE | u16(r);
    return types[s % NTYPES];
}

static void set_val(CK_ATTRIBUTE *a, const void *src, CK_ULONG len)
{
    a->pValue = amalloc(len);
    if (len)
        memcpy(a->pValue, src, len);
    a->ulValueLen = len;
}

static void decode_attr(rd *r, CK_ATTRIBUTE *a, int depth);
static bool built_array; /* the last decode_attr value is a real CK_ATTRIBUTE array */

/* A nested template (CKA_WRAP_TEMPLATE ...): an array of CK_ATTRIBUTE whose
 * values are real buffers, with the right length or a malformed one. */
static void decode_nested(rd *r, CK_ATTRIBUTE *a)
{
    size_t m = u8(r) % 5;
    uint8_t lm = u8(r) % 8;
    size_t bytes = m * sizeof(CK_ATTRIBUTE) + (lm == 6);
    CK_ATTRIBUTE *arr = amalloc(bytes);

    memset(arr, 0, bytes);
    for (size_t i = 0; i < m; i++)
        decode_attr(r, &arr[i], 1);
    a->pValue = m || lm == 6 ? arr : NULL;
    a->ulValueLen = bytes;
    if (lm == 7 && m) /* NULL with a length */
        a->pValue = NULL;
    built_array = true;
}

static void typed_value(rd *r, CK_ATTRIBUTE *a, int depth)
{
    CK_ULONG v;

    if (is_bool(a->type)) {
        uint8_t b = u8(r);
        CK_BBOOL x = b == 0 ? CK_TRUE : b == 1 ? CK_FALSE : b;
        set_val(a, &x, 1);
        return;
    }
    switch (a->type) {
    case CKA_CLASS:
        v = PICK(r, CKO_SECRET_KEY, CKO_DATA, CKO_PUBLIC_KEY, CKO_PRIVATE_KEY, CKO_CERTIFICATE, CKO_HW_FEATURE);
        break;
    case CKA_KEY_TYPE:
        v = PICK(r, CKK_AES, CKK_GENERIC_SECRET, CKK_EC, CKK_RSA, CKK_EC_EDWARDS, FZ_CKK_EC_MONTGOMERY,
                 CKK_SHA256_HMAC, CKK_DES3);
        break;
    case CKA_VALUE_LEN: v = PICK(r, 32, 16, 24, 0, 1, 64, 512, 513); break;
    case CKA_MODULUS_BITS: v = PICK(r, 2048, 1024, 0, 4096); break;
    case CKA_CERTIFICATE_TYPE: v = PICK(r, CKC_X_509, CKC_WTLS); break;
    case CKA_CERTIFICATE_CATEGORY:
    case CKA_JAVA_MIDP_SECURITY_DOMAIN: v = PICK(r, 0, 1, 2, 3, 4); break;
    case CKA_KEY_GEN_MECHANISM:
    case CKA_MECHANISM_TYPE:
    case CKA_NAME_HASH_ALGORITHM: v = pick_mech_type(r); break;
    case CKA_VALUE_BITS:
    case CKA_HW_FEATURE_TYPE: v = u64(r); break;
    case CKA_EC_PARAMS: {
        static const struct {
            const uint8_t *p;
            size_t n;
        } curves[] = {
            {oid_p256, sizeof(oid_p256)},       {oid_p384, sizeof(oid_p384)},
            {oid_p521, sizeof(oid_p521)},       {oid_ed25519, sizeof(oid_ed25519)},
            {oid_x25519, sizeof(oid_x25519)},   {str_ed25519, sizeof(str_ed25519)},
        };
        uint8_t s = u8(r) % 7;
        if (s < 6) {
            set_val(a, curves[s].p, curves[s].n);
        } else {
            CK_ULONG l = u8(r);
            a->pValue = take(r, l);
            a->ulValueLen = l;
        }
        return;
    }
    case CKA_WRAP_TEMPLATE:
    case CKA_UNWRAP_TEMPLATE:
    case CKA_DERIVE_TEMPLATE:
        if (depth == 0) {
            decode_nested(r, a);
            return;
        }
        /* Inside a nested template: bytes (the module refuses nesting). */
        a->ulValueLen = u8(r) % 3 * sizeof(CK_ATTRIBUTE) + 1;
        a->pValue = take(r, a->ulValueLen);
        return;
    case CKA_ALLOWED_MECHANISMS: {
        size_t k = u8(r) % 4;
        CK_MECHANISM_TYPE *ms = amalloc(k * sizeof(*ms) + 1);
        for (size_t i = 0; i < k; i++)
            ms[i] = pick_mech_type(r);
        a->pValue = ms;
        a->ulValueLen = k * sizeof(*ms) + (u8(r) % 8 == 7); /* sometimes not a multiple */
        return;
    }
    case CKA_START_DATE:
    case CKA_END_DATE: {
        static const CK_ULONG l[] = {8, 0, 7};
        a->ulValueLen = l[u8(r) % 3];
        a->pValue = take(r, a->ulValueLen);
        return;
    }
    default: {
        static const CK_ULONG l[] = {16, 32, 0, 1, 8, 24, 64, 255};
        uint8_t s = u8(r) % 9;
        a->ulValueLen = s < 8 ? l[s] : u8(r);
        a->pValue = take(r, a->ulValueLen);
        return;
    }
    }
    set_val(a, &v, sizeof(v));
}

static void decode_attr(rd *r, CK_ATTRIBUTE *a, int depth)
{
    a->type = pick_type(r);
    built_array = false;
    switch (u8(r) % 10) {
    case 3: { /* key material of the base objects */
        size_t cnt = 0, want;
        uint8_t s = u8(r);
        for (size_t i = 0; i < nmat; i++)
            cnt += mat[i].type == a->type;
        if (!cnt) {
            typed_value(r, a, depth);
            break;
        }
        want = s % cnt;
        for (size_t i = 0; i < nmat; i++)
            if (mat[i].type == a->type && want-- == 0) {
                set_val(a, mat[i].val, mat[i].len);
                break;
            }
        break;
    }
    case 4:
        a->ulValueLen = u16(r) % 1025;
        a->pValue = take(r, a->ulValueLen);
        break;
    case 5: { /* NULL pValue with a length, up to absurd */
        static const CK_ULONG l[] = {1, 8, sizeof(CK_ATTRIBUTE), 0x7fffffff, (CK_ULONG)-1};
        a->pValue = NULL;
        a->ulValueLen = l[u8(r) % 5];
        break;
    }
    case 6:
        a->pValue = NULL;
        a->ulValueLen = 0;
        break;
    case 7: /* a wrong length for fixed-size types */
        a->ulValueLen = u8(r) % 17;
        a->pValue = take(r, a->ulValueLen);
        break;
    case 8: /* large, backed by a zero buffer (never a CK_ATTRIBUTE array of wild pointers) */
        a->ulValueLen = 1 + u16(r);
        if (is_template(a->type) && a->ulValueLen % sizeof(CK_ATTRIBUTE) == 0)
            a->ulValueLen++;
        a->pValue = big_zero;
        break;
    case 9: /* an explicit CK_ULONG, whatever the type */
        a->ulValueLen = sizeof(CK_ULONG);
        a->pValue = ulong_buf((CK_ULONG)u64(r));
        break;
    default: typed_value(r, a, depth); break;
    }
    /* Raw bytes of a multiple of sizeof(CK_ATTRIBUTE) under a template type would be
     * read as an array holding wild pointers: only decode_nested makes arrays;
     * other values are cut to a non-multiple (never longer than their buffer). */
    if (!built_array && is_template(a->type) && a->pValue && a->ulValueLen &&
        a->ulValueLen % sizeof(CK_ATTRIBUTE) == 0)
        a->ulValueLen--;
}

/* Creation templates never make token objects: CKA_TOKEN is forced FALSE. */
static CK_ATTRIBUTE *decode_tmpl(rd *r, CK_ULONG *n, bool force_session)
{
    size_t k = u8(r) % 13;
    CK_ATTRIBUTE *t = amalloc((k + 1) * sizeof(*t));
    bool has_token = false;

    for (size_t i = 0; i < k; i++) {
        decode_attr(r, &t[i], 0);
        if (force_session && t[i].type == CKA_TOKEN) {
            has_token = true;
            if (t[i].pValue && t[i].ulValueLen == 1)
                t[i].pValue = &no;
        }
    }
    if (force_session && !has_token) {
        t[k].type = CKA_TOKEN;
        t[k].pValue = &no;
        t[k].ulValueLen = 1;
        k++;
    }
    *n = (CK_ULONG)k;
    return t;
}

/* ---- data and outputs ------------------------------------------------------------ */

static uint8_t *decode_data(rd *r, CK_ULONG *len)
{
    static const CK_ULONG l[] = {16, 32, 0, 1, 15, 17, 64, 100, 255, 256, 1000};
    uint8_t s = u8(r) % 12;
    *len = s < 11 ? l[s] : u16(r) % 4097;
    return take(r, *len);
}

enum { OUT_EXACT = 0, OUT_QUERY, OUT_SHORT, OUT_BIG, OUT_NOLEN, OUT_MODES };

typedef struct {
    int mode;
    CK_ULONG shortlen;
} outspec;

static outspec decode_out(rd *r)
{
    outspec o;
    o.mode = u8(r) % OUT_MODES;
    o.shortlen = o.mode == OUT_SHORT ? u8(r) % 64 : 0;
    return o;
}

/* A call producing output, run under an outspec: returns the output (arena) and its length. */
typedef CK_RV (*out_fn)(void *ctx, CK_BYTE_PTR out, CK_ULONG_PTR len);

static CK_RV with_out(outspec o, out_fn fn, void *ctx, uint8_t **res, CK_ULONG *reslen)
{
    CK_ULONG len = 0xdeadbeef;
    uint8_t *out;
    CK_RV rv;

    *res = NULL;
    *reslen = 0;
    switch (o.mode) {
    case OUT_QUERY: return fn(ctx, NULL, &len);
    case OUT_NOLEN: return fn(ctx, NULL, NULL);
    case OUT_SHORT:
    case OUT_BIG:
        len = o.mode == OUT_SHORT ? o.shortlen : 8192;
        out = amalloc(len);
        rv = fn(ctx, out, &len);
        break;
    default:
        rv = fn(ctx, NULL, &len);
        if (rv != CKR_OK || len > (1u << 20))
            return rv;
        out = amalloc(len);
        rv = fn(ctx, out, &len);
        break;
    }
    if (rv == CKR_OK) {
        *res = out;
        *reslen = len;
    }
    return rv;
}

/* ---- crypto calls ------------------------------------------------------------ */

typedef struct {
    CK_SESSION_HANDLE h;
    int kind;
    int call; /* 0 one-shot, 1 update, 2 final */
    uint8_t *in;
    CK_ULONG inlen;
} cctx;

static CK_RV crypt_out(void *p, CK_BYTE_PTR out, CK_ULONG_PTR len)
{
    cctx *c = p;
    switch (c->kind * 3 + c->call) {
    case FZ_K_ENCRYPT * 3 + 0: return CALL(C_Encrypt, c->h, c->in, c->inlen, out, len);
    case FZ_K_ENCRYPT * 3 + 1: return CALL(C_EncryptUpdate, c->h, c->in, c->inlen, out, len);
    case FZ_K_ENCRYPT * 3 + 2: return CALL(C_EncryptFinal, c->h, out, len);
    case FZ_K_DECRYPT * 3 + 0: return CALL(C_Decrypt, c->h, c->in, c->inlen, out, len);
    case FZ_K_DECRYPT * 3 + 1: return CALL(C_DecryptUpdate, c->h, c->in, c->inlen, out, len);
    case FZ_K_DECRYPT * 3 + 2: return CALL(C_DecryptFinal, c->h, out, len);
    case FZ_K_SIGN * 3 + 0: return CALL(C_Sign, c->h, c->in, c->inlen, out, len);
    case FZ_K_SIGN * 3 + 2: return CALL(C_SignFinal, c->h, out, len);
    case FZ_K_DIGEST * 3 + 0: return CALL(C_Digest, c->h, c->in, c->inlen, out, len);
    case FZ_K_DIGEST * 3 + 2: return CALL(C_DigestFinal, c->h, out, len);
    default: abort();
    }
}

static CK_RV op_init(CK_SESSION_HANDLE h, int kind, CK_MECHANISM *m, CK_OBJECT_HANDLE k)
{
    switch (kind) {
    case FZ_K_ENCRYPT: return CALL(C_EncryptInit, h, m, k);
    case FZ_K_DECRYPT: return CALL(C_DecryptInit, h, m, k);
    case FZ_K_SIGN: return CALL(C_SignInit, h, m, k);
    case FZ_K_VERIFY: return CALL(C_VerifyInit, h, m, k);
    default: return CALL(C_DigestInit, h, m);
    }
}

/* One call of an operation; the result (if any) is returned in res. */
static CK_RV op_call(rd *r, CK_SESSION_HANDLE h, int kind, int call, uint8_t **res, CK_ULONG *reslen)
{
    cctx c = {h, kind, call, NULL, 0};
    *res = NULL;
    *reslen = 0;
    if (call != 2)
        c.in = decode_data(r, &c.inlen);
    if (kind == FZ_K_VERIFY) {
        CK_ULONG sl;
        uint8_t *sig;
        if (call == 1)
            return CALL(C_VerifyUpdate, h, c.in, c.inlen);
        sig = decode_data(r, &sl);
        return call == 0 ? CALL(C_Verify, h, c.in, c.inlen, sig, sl) : CALL(C_VerifyFinal, h, sig, sl);
    }
    if (call == 1 && kind == FZ_K_SIGN)
        return CALL(C_SignUpdate, h, c.in, c.inlen);
    if (call == 1 && kind == FZ_K_DIGEST) {
        if (u8(r) % 2)
            return CALL(C_DigestKey, h, pick_handle(r));
        return CALL(C_DigestUpdate, h, c.in, c.inlen);
    }
    return with_out(decode_out(r), crypt_out, &c, res, reslen);
}

/* ---- operations ------------------------------------------------------------ */

static void op_crypt(rd *r, CK_SESSION_HANDLE h)
{
    int kind = u8(r) % FZ_K_COUNT;
    CK_MECHANISM *m = decode_mech(r);
    CK_OBJECT_HANDLE k = kind == FZ_K_DIGEST ? 0 : pick_handle(r);
    int calls = u8(r) % 5;
    uint8_t *res;
    CK_ULONG reslen;

    op_init(h, kind, m, k);
    for (int i = 0; i < calls; i++)
        op_call(r, h, kind, u8(r) % 3, &res, &reslen);
}

static bool is_sym_cipher(CK_MECHANISM_TYPE m)
{
    return m == CKM_AES_CBC_PAD || m == CKM_AES_GCM || m == CKM_AES_CTR || m == CKM_RSA_PKCS ||
           m == CKM_RSA_PKCS_OAEP;
}

/* Encrypt then decrypt, or sign then verify, with the output of the first. */
static void op_roundtrip(rd *r, CK_SESSION_HANDLE h)
{
    bool sign = u8(r) & 1;
    CK_MECHANISM *m = decode_mech(r);
    CK_OBJECT_HANDLE k = pick_handle(r);
    CK_ULONG inlen, outlen = 0, back_len = 0;
    uint8_t *in = decode_data(r, &inlen), *out = NULL, *back = NULL;
    uint8_t tamper = u8(r);
    bool tampered = false;
    cctx c = {h, sign ? FZ_K_SIGN : FZ_K_ENCRYPT, 0, in, inlen};
    outspec exact = {OUT_EXACT, 0};
    CK_RV rv;

    if (op_init(h, c.kind, m, k) != CKR_OK)
        return;
    if (with_out(exact, crypt_out, &c, &out, &outlen) != CKR_OK)
        return;
    if (tamper % 4 == 3 && outlen) {
        out[tamper % outlen] ^= 0x5a;
        tampered = true;
    }
    if (sign) {
        if (op_init(h, FZ_K_VERIFY, m, partner(k)) != CKR_OK)
            return;
        rv = CALL(C_Verify, h, in, inlen, out, outlen);
        if (!tampered && rv != CKR_OK)
            die("C_Verify: an untampered signature does not verify (mechanism %#lx): %#lx", m->mechanism, rv);
        return;
    }
    if (op_init(h, FZ_K_DECRYPT, m, partner(k)) != CKR_OK)
        return;
    c.kind = FZ_K_DECRYPT;
    c.in = out;
    c.inlen = outlen;
    rv = with_out(exact, crypt_out, &c, &back, &back_len);
    if (!tampered && is_sym_cipher(m->mechanism)) {
        if (rv != CKR_OK)
            die("C_Decrypt: decrypting an untampered ciphertext failed (mechanism %#lx): %#lx", m->mechanism, rv);
        if (back_len != inlen || (inlen && memcmp(back, in, inlen) != 0))
            die("C_Decrypt: decryption does not give the plaintext back (mechanism %#lx)", m->mechanism);
    }
}

static void op_wrap(rd *r, CK_SESSION_HANDLE h, bool then_unwrap)
{
    CK_MECHANISM *m = decode_mech(r);
    CK_OBJECT_HANDLE wk = pick_handle(r), target = pick_handle(r);
    outspec o = then_unwrap ? (outspec){OUT_EXACT, 0} : decode_out(r);
    CK_ULONG n = 0, tn = 0, len;
    uint8_t *blob = NULL;
    CK_RV rv;

    if (o.mode == OUT_NOLEN) {
        CALL(C_WrapKey, h, m, wk, target, NULL, NULL);
        return;
    }
    len = o.mode == OUT_SHORT ? o.shortlen : o.mode == OUT_BIG ? 8192 : 0;
    if (o.mode == OUT_SHORT || o.mode == OUT_BIG) {
        blob = amalloc(len);
        CALL(C_WrapKey, h, m, wk, target, blob, &len);
        return;
    }
    rv = CALL(C_WrapKey, h, m, wk, target, NULL, &len);
    if (rv != CKR_OK || o.mode == OUT_QUERY || len > (1u << 20))
        return;
    n = len;
    blob = amalloc(n);
    rv = CALL(C_WrapKey, h, m, wk, target, blob, &len);
    if (rv != CKR_OK || !then_unwrap)
        return;
    CK_ATTRIBUTE *t = decode_tmpl(r, &tn, true);
    uint8_t tamper = u8(r);
    if (tamper % 4 == 3 && len)
        blob[tamper % len] ^= 0xa5;
    CK_OBJECT_HANDLE nk = CK_INVALID_HANDLE;
    rv = CALL(C_UnwrapKey, h, m, partner(wk), blob, len, t, tn, &nk);
    track(rv, nk);
}

static void op_unwrap(rd *r, CK_SESSION_HANDLE h)
{
    CK_MECHANISM *m = decode_mech(r);
    CK_OBJECT_HANDLE uk = pick_handle(r), nk = CK_INVALID_HANDLE;
    CK_ULONG blen, tn;
    uint8_t *blob = decode_data(r, &blen);
    CK_ATTRIBUTE *t = decode_tmpl(r, &tn, true);
    track_rv(CALL(C_UnwrapKey, h, m, uk, blob, blen, t, tn, &nk), &nk);
}

static void op_getattr(rd *r, CK_SESSION_HANDLE h)
{
    CK_OBJECT_HANDLE o = pick_handle(r);
    size_t k = u8(r) % 9;
    CK_ATTRIBUTE *t = amalloc((k ? k : 1) * sizeof(*t));

    for (size_t i = 0; i < k; i++) {
        t[i].type = pick_type(r);
        int mode = u8(r) % 6;
        /* A template type's buffer is read as CK_ATTRIBUTE entries: only real arrays. */
        if (is_template(t[i].type) && (mode == 1 || mode == 2))
            mode = 4;
        switch (mode) {
        case 0:
            t[i].pValue = NULL;
            t[i].ulValueLen = u32(r);
            break;
        case 1:
            t[i].ulValueLen = u8(r);
            t[i].pValue = amalloc(t[i].ulValueLen);
            break;
        case 2:
            t[i].ulValueLen = u16(r) % 2048;
            t[i].pValue = amalloc(t[i].ulValueLen);
            break;
        case 3:
            t[i].ulValueLen = 0;
            t[i].pValue = amalloc(0);
            break;
        default: { /* an output array for a nested template */
            size_t m = u8(r) % 5, bytes = m * sizeof(CK_ATTRIBUTE);
            if (u8(r) % 4 == 3 && bytes)
                bytes--; /* the last entry partial: the module may only use whole ones */
            CK_ATTRIBUTE *arr = amalloc(bytes);
            memset(arr, 0, bytes);
            for (size_t j = 0; j < bytes / sizeof(CK_ATTRIBUTE); j++) {
                arr[j].type = pick_type(r);
                if (u8(r) % 2) {
                    arr[j].ulValueLen = u8(r);
                    arr[j].pValue = amalloc(arr[j].ulValueLen);
                } else {
                    arr[j].ulValueLen = u32(r);
                }
            }
            t[i].pValue = arr;
            t[i].ulValueLen = bytes;
            break;
        }
        }
    }
    CALL(C_GetAttributeValue, h, o, k ? t : NULL, k);
}

/* NULL pass, then exact buffers, then nested buffers, as careful applications do. */
static void op_getattr3(rd *r, CK_SESSION_HANDLE h)
{
    CK_OBJECT_HANDLE o = pick_handle(r);
    size_t k = u8(r) % 9;
    CK_ATTRIBUTE *t = amalloc((k + 1) * sizeof(*t));
    uint8_t shortsel = u8(r);
    CK_RV rv;

    for (size_t i = 0; i < k; i++) {
        t[i].type = pick_type(r);
        t[i].pValue = NULL;
        t[i].ulValueLen = 0;
    }
    rv = CALL(C_GetAttributeValue, h, o, t, k);
    if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_SESSION_HANDLE_INVALID)
        return;
    for (size_t i = 0; i < k; i++) {
        CK_ULONG l = t[i].ulValueLen;
        if (l == CK_UNAVAILABLE_INFORMATION || l > (1u << 20)) {
            t[i].ulValueLen = 0;
            continue;
        }
        t[i].pValue = amalloc(l);
        memset(t[i].pValue, 0, l); /* nested arrays: NULL values first */
    }
    if (k && shortsel % 4 == 3) { /* one buffer one byte short */
        size_t i = shortsel % k;
        if (t[i].pValue && t[i].ulValueLen && !is_template(t[i].type))
            t[i].ulValueLen--;
    }
    CALL(C_GetAttributeValue, h, o, t, k);
    for (size_t i = 0; i < k; i++) {
        if (!t[i].pValue || !is_template(t[i].type) || t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            continue;
        CK_ATTRIBUTE *arr = t[i].pValue;
        for (size_t j = 0; j < t[i].ulValueLen / sizeof(CK_ATTRIBUTE); j++) {
            CK_ULONG l = arr[j].ulValueLen;
            if (l == CK_UNAVAILABLE_INFORMATION || l > (1u << 20))
                l = 0;
            arr[j].pValue = amalloc(l);
            arr[j].ulValueLen = l;
        }
    }
    CALL(C_GetAttributeValue, h, o, t, k);
}

static void op_find(rd *r, CK_SESSION_HANDLE h)
{
    CK_ULONG tn, max, got = 0;
    CK_ATTRIBUTE *t = decode_tmpl(r, &tn, false);
    CK_OBJECT_HANDLE *found;

    CALL(C_FindObjectsInit, h, tn ? t : NULL, tn);
    max = u8(r) % 9;
    found = amalloc(max * sizeof(*found));
    if (CALL(C_FindObjects, h, found, max, &got) == CKR_OK)
        MUST(got <= max);
    if (u8(r) % 4 != 3)
        CALL(C_FindObjectsFinal, h);
}

static void op_misc(rd *r, CK_SESSION_HANDLE h)
{
    switch (u8(r) % 6) {
    case 0: {
        CK_ULONG sz;
        CALL(C_GetObjectSize, h, pick_handle(r), &sz);
        break;
    }
    case 1: {
        CK_ULONG l = u16(r) % 1025;
        CALL(C_GenerateRandom, h, amalloc(l), l);
        break;
    }
    case 2: {
        CK_ULONG l;
        uint8_t *d = decode_data(r, &l);
        CALL(C_SeedRandom, h, d, l);
        break;
    }
    case 3: {
        CK_MECHANISM_INFO mi;
        CALL(C_GetMechanismInfo, slot, pick_mech_type(r), &mi);
        break;
    }
    case 4: {
        CK_SESSION_INFO si;
        CALL(C_GetSessionInfo, h, &si);
        break;
    }
    default:
        CALL(C_EncryptInit, h, NULL, pick_handle(r));
        CALL(C_DigestInit, h, NULL);
        break;
    }
}

static void run_program(rd *r, CK_SESSION_HANDLE h)
{
    for (int ops = 0; r->n && ops < 24; ops++) {
        CK_OBJECT_HANDLE nh = CK_INVALID_HANDLE, nh2 = CK_INVALID_HANDLE;
        CK_ULONG n1, n2;
        CK_ATTRIBUTE *t1, *t2;
        CK_MECHANISM *m;

        switch (u8(r) % FZ_OP_COUNT) {
        case FZ_OP_CREATE:
            t1 = decode_tmpl(r, &n1, true);
            track_rv(CALL(C_CreateObject, h, t1, n1, &nh), &nh);
            break;
        case FZ_OP_GENKEY:
            m = decode_mech(r);
            t1 = decode_tmpl(r, &n1, true);
            track_rv(CALL(C_GenerateKey, h, m, t1, n1, &nh), &nh);
            break;
        case FZ_OP_GENPAIR:
            m = decode_mech(r);
            /* RSA generation takes far too long for a fuzz input: EC instead. */
            if (m->mechanism == CKM_RSA_PKCS_KEY_PAIR_GEN)
                m->mechanism = CKM_EC_KEY_PAIR_GEN;
            t1 = decode_tmpl(r, &n1, true);
            t2 = decode_tmpl(r, &n2, true);
            if (CALL(C_GenerateKeyPair, h, m, t1, n1, t2, n2, &nh, &nh2) == CKR_OK) {
                track(CKR_OK, nh);
                track(CKR_OK, nh2);
                if (nmade_pairs < MAX_CREATED) {
                    made_pairs[nmade_pairs][0] = nh;
                    made_pairs[nmade_pairs][1] = nh2;
                    nmade_pairs++;
                }
            }
            break;
        case FZ_OP_GETATTR: op_getattr(r, h); break;
        case FZ_OP_GETATTR3: op_getattr3(r, h); break;
        case FZ_OP_SETATTR: {
            CK_OBJECT_HANDLE o = pick_created(r);
            t1 = decode_tmpl(r, &n1, true);
            CALL(C_SetAttributeValue, h, o, t1, n1);
            break;
        }
        case FZ_OP_COPY: {
            CK_OBJECT_HANDLE o = pick_handle(r);
            t1 = decode_tmpl(r, &n1, true);
            track_rv(CALL(C_CopyObject, h, o, t1, n1, &nh), &nh);
            break;
        }
        case FZ_OP_FIND: op_find(r, h); break;
        case FZ_OP_CRYPT: op_crypt(r, h); break;
        case FZ_OP_ROUNDTRIP: op_roundtrip(r, h); break;
        case FZ_OP_WRAP: op_wrap(r, h, false); break;
        case FZ_OP_UNWRAP: op_unwrap(r, h); break;
        case FZ_OP_WRAPUNWRAP: op_wrap(r, h, true); break;
        case FZ_OP_DERIVE: {
            m = decode_mech(r);
            CK_OBJECT_HANDLE b = pick_handle(r);
            t1 = decode_tmpl(r, &n1, true);
            track_rv(CALL(C_DeriveKey, h, m, b, t1, n1, &nh), &nh);
            break;
        }
        case FZ_OP_DESTROY: {
            CK_OBJECT_HANDLE o = pick_created(r);
            if (CALL(C_DestroyObject, h, o) == CKR_OK)
                for (size_t i = 0; i < ncreated; i++)
                    if (created[i] == o)
                        created[i] = created[--ncreated];
            break;
        }
        default: op_misc(r, h); break;
        }
    }
}

/* ---- set-up ------------------------------------------------------------ */

static void need(CK_RV rv, const char *what)
{
    if (rv != CKR_OK) {
        fprintf(stderr, "fuzz_pkcs11: set-up failed: %s: %#lx\n", what, rv);
        exit(2);
    }
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void teardown(void)
{
    if (f) {
        f->C_CloseAllSessions(slot);
        f->C_Finalize(NULL);
        f = NULL;
    }
    arena_free();
    free(arena);
    arena = NULL;
    for (size_t i = 0; i < nmat; i++)
        free(mat[i].val);
    nmat = 0;
    if (tmpdir[0] && !getenv("P11MK_FUZZ_KEEP"))
        nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    /* The module is built with -z nodelete: dlclose would not unload it anyway. */
    (void)dl;
}

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_UTF8CHAR want[32];

    need(f->C_GetSlotList(CK_TRUE, slots, &n), "C_GetSlotList");
    if (label) {
        memset(want, ' ', 32);
        memcpy(want, label, strlen(label));
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        need(f->C_GetTokenInfo(slots[i], &ti), "C_GetTokenInfo");
        bool init = ti.flags & CKF_TOKEN_INITIALIZED;
        if ((!label && !init) || (label && init && memcmp(ti.label, want, 32) == 0))
            return slots[i];
    }
    fprintf(stderr, "fuzz_pkcs11: set-up failed: no %s slot\n", label ? label : "free");
    exit(2);
}

static void add_material(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t)
{
    CK_ATTRIBUTE a = {t, NULL, 0};
    if (nmat == sizeof(mat) / sizeof(mat[0]) || f->C_GetAttributeValue(setup_sess, o, &a, 1) != CKR_OK)
        return;
    a.pValue = malloc(a.ulValueLen ? a.ulValueLen : 1);
    if (!a.pValue || f->C_GetAttributeValue(setup_sess, o, &a, 1) != CKR_OK) {
        free(a.pValue);
        return;
    }
    mat[nmat].type = t;
    mat[nmat].val = a.pValue;
    mat[nmat].len = a.ulValueLen;
    nmat++;
}

static void make_base(void)
{
    CK_SESSION_HANDLE s = setup_sess;
    CK_ULONG l32 = 32, l16 = 16, bits = 2048;
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY, data = CKO_DATA;
    CK_MECHANISM aes_gen = {CKM_AES_KEY_GEN, NULL, 0}, gen_gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_MECHANISM ec_gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, ed_gen = {CKM_EC_EDWARDS_KEY_PAIR_GEN, NULL, 0};
    CK_MECHANISM x_gen = {CKM_EC_MONTGOMERY_KEY_PAIR_GEN, NULL, 0}, rsa_gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE x_priv;

    CK_ATTRIBUTE aes[] = {
        {CKA_VALUE_LEN, &l32, sizeof(l32)}, {CKA_TOKEN, &no, 1},      {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},             {CKA_SIGN, &yes, 1},      {CKA_VERIFY, &yes, 1},
        {CKA_WRAP, &yes, 1},                {CKA_UNWRAP, &yes, 1},    {CKA_DERIVE, &yes, 1},
        {CKA_SENSITIVE, &no, 1},            {CKA_EXTRACTABLE, &yes, 1}, {CKA_LABEL, "aes256", 6},
    };
    need(f->C_GenerateKey(s, &aes_gen, aes, sizeof(aes) / sizeof(aes[0]), &base[FZ_H_AES256]), "AES-256");

    CK_ATTRIBUTE wt[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_ATTRIBUTE ut[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_LABEL, "unwrapped", 9}};
    CK_ATTRIBUTE aes2[] = {
        {CKA_VALUE_LEN, &l16, sizeof(l16)}, {CKA_TOKEN, &no, 1},         {CKA_WRAP, &yes, 1},
        {CKA_UNWRAP, &yes, 1},              {CKA_ENCRYPT, &yes, 1},      {CKA_DECRYPT, &yes, 1},
        {CKA_EXTRACTABLE, &yes, 1},         {CKA_WRAP_TEMPLATE, wt, sizeof(wt)},
        {CKA_UNWRAP_TEMPLATE, ut, sizeof(ut)},
    };
    need(f->C_GenerateKey(s, &aes_gen, aes2, sizeof(aes2) / sizeof(aes2[0]), &base[FZ_H_AES128_TMPL]), "AES-128");

    CK_ATTRIBUTE hm[] = {
        {CKA_VALUE_LEN, &l32, sizeof(l32)}, {CKA_TOKEN, &no, 1},       {CKA_SIGN, &yes, 1},
        {CKA_VERIFY, &yes, 1},              {CKA_DERIVE, &yes, 1},     {CKA_SENSITIVE, &no, 1},
        {CKA_EXTRACTABLE, &yes, 1},
    };
    need(f->C_GenerateKey(s, &gen_gen, hm, sizeof(hm) / sizeof(hm[0]), &base[FZ_H_HMAC]), "generic secret");

    CK_ATTRIBUTE ecpub[] = {
        {CKA_EC_PARAMS, (void *)oid_p256, sizeof(oid_p256)}, {CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1},
    };
    CK_ATTRIBUTE ecpriv[] = {
        {CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_DERIVE, &yes, 1}, {CKA_SENSITIVE, &no, 1},
        {CKA_EXTRACTABLE, &yes, 1},
    };
    need(f->C_GenerateKeyPair(s, &ec_gen, ecpub, 3, ecpriv, 5, &base[FZ_H_EC_PUB], &base[FZ_H_EC_PRIV]), "EC P-256");

    CK_ATTRIBUTE edpub[] = {
        {CKA_EC_PARAMS, (void *)oid_ed25519, sizeof(oid_ed25519)}, {CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1},
    };
    need(f->C_GenerateKeyPair(s, &ed_gen, edpub, 3, ecpriv, 5, &base[FZ_H_ED_PUB], &base[FZ_H_ED_PRIV]), "Ed25519");

    CK_ATTRIBUTE xpub[] = {
        {CKA_EC_PARAMS, (void *)oid_x25519, sizeof(oid_x25519)}, {CKA_TOKEN, &no, 1},
    };
    CK_ATTRIBUTE xpriv[] = {{CKA_TOKEN, &no, 1}, {CKA_DERIVE, &yes, 1}};
    need(f->C_GenerateKeyPair(s, &x_gen, xpub, 2, xpriv, 2, &x_pub, &x_priv), "X25519");
    base[FZ_H_X_PRIV] = x_priv;

    CK_ATTRIBUTE rsapub[] = {
        {CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_TOKEN, &no, 1}, {CKA_ENCRYPT, &yes, 1},
        {CKA_VERIFY, &yes, 1},                   {CKA_WRAP, &yes, 1},
    };
    CK_ATTRIBUTE rsapriv[] = {
        {CKA_TOKEN, &no, 1},      {CKA_DECRYPT, &yes, 1},   {CKA_SIGN, &yes, 1},
        {CKA_UNWRAP, &yes, 1},    {CKA_SENSITIVE, &no, 1},  {CKA_EXTRACTABLE, &yes, 1},
    };
    need(f->C_GenerateKeyPair(s, &rsa_gen, rsapub, 5, rsapriv, 6, &base[FZ_H_RSA_PUB], &base[FZ_H_RSA_PRIV]),
         "RSA-2048");

    CK_ATTRIBUTE d[] = {
        {CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &no, 1}, {CKA_LABEL, "data", 4}, {CKA_VALUE, "value", 5},
    };
    need(f->C_CreateObject(s, d, 4, &base[FZ_H_DATA]), "data object");

    /* One token object, made once per keystore (the fuzz programs only read it). */
    CK_ATTRIBUTE tok[] = {
        {CKA_VALUE_LEN, &l32, sizeof(l32)}, {CKA_TOKEN, &yes, 1},   {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},             {CKA_SIGN, &yes, 1},    {CKA_VERIFY, &yes, 1},
        {CKA_EXTRACTABLE, &yes, 1},         {CKA_LABEL, "token-aes", 9},
    };
    need(f->C_GenerateKey(s, &aes_gen, tok, sizeof(tok) / sizeof(tok[0]), &base[FZ_H_TOKEN_AES]), "token AES");

    /* Material for imports, and public keys for ECDH. */
    static const CK_ATTRIBUTE_TYPE rsa_parts[] = {CKA_MODULUS,  CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT,
                                                  CKA_PRIME_1,  CKA_PRIME_2,         CKA_EXPONENT_1,
                                                  CKA_EXPONENT_2, CKA_COEFFICIENT};
    for (size_t i = 0; i < sizeof(rsa_parts) / sizeof(rsa_parts[0]); i++)
        add_material(base[FZ_H_RSA_PRIV], rsa_parts[i]);
    add_material(base[FZ_H_EC_PRIV], CKA_VALUE);
    add_material(base[FZ_H_EC_PRIV], CKA_EC_PARAMS);
    add_material(base[FZ_H_EC_PUB], CKA_EC_POINT);
    add_material(base[FZ_H_ED_PRIV], CKA_VALUE);
    add_material(base[FZ_H_ED_PUB], CKA_EC_POINT);
    add_material(base[FZ_H_ED_PUB], CKA_EC_PARAMS);
    add_material(base[FZ_H_AES256], CKA_VALUE);
    add_material(base[FZ_H_HMAC], CKA_VALUE);

    CK_ATTRIBUTE pt = {CKA_EC_POINT, ec_pub_der, sizeof(ec_pub_der)};
    need(f->C_GetAttributeValue(s, base[FZ_H_EC_PUB], &pt, 1), "EC point");
    ec_pub_der_len = pt.ulValueLen;
    CK_ATTRIBUTE xp = {CKA_EC_POINT, x_pub_raw, sizeof(x_pub_raw)};
    need(f->C_GetAttributeValue(s, x_pub, &xp, 1), "X25519 point");
    x_pub_raw_len = xp.ulValueLen;
    /* Raw X25519 key: strip a DER OCTET STRING header if there is one. */
    if (x_pub_raw_len == 34 && x_pub_raw[0] == 0x04 && x_pub_raw[1] == 32) {
        memmove(x_pub_raw, x_pub_raw + 2, 32);
        x_pub_raw_len = 32;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *mod = getenv("P11MK_MODULE");
    const char *t = getenv("TMPDIR");
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    char conf[512];
    FILE *c;

    (void)argc;
    (void)argv;
    if (f)
        return 0;
    if (!mod || !*mod)
        mod = "pkcs11/p11mk-pkcs11.so";
    snprintf(tmpdir, sizeof(tmpdir), "%s/p11mk-fuzz-p11-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(2);
    }
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", tmpdir);
    c = fopen(conf, "w");
    if (!c) {
        perror(conf);
        exit(2);
    }
    fprintf(c, "keystore = %s/ks\nlog = %s/p11mk.log\nlog_level = error\n", tmpdir, tmpdir);
    fclose(c);
    setenv("P11MK_CONF", conf, 1);
    atexit(teardown);

    dl = dlopen(mod, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "fuzz_pkcs11: dlopen %s: %s (set P11MK_MODULE)\n", mod, dlerror());
        exit(2);
    }
    gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(dl, "C_GetFunctionList");
    if (!gfl)
        exit(2);
    need(gfl(&f), "C_GetFunctionList");
    need(f->C_Initialize(NULL), "C_Initialize");

    CK_UTF8CHAR label[32];
    memset(label, ' ', 32);
    memcpy(label, "fuzz", 4);
    slot = find_slot(NULL);
    need(f->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), label), "C_InitToken");
    slot = find_slot("fuzz");
    need(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &setup_sess), "C_OpenSession");
    need(f->C_Login(setup_sess, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN)), "C_Login SO");
    need(f->C_InitPIN(setup_sess, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), "C_InitPIN");
    need(f->C_Logout(setup_sess), "C_Logout");
    need(f->C_Login(setup_sess, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), "C_Login");

    nmechs = sizeof(mechs) / sizeof(mechs[0]);
    need(f->C_GetMechanismList(slot, mechs, &nmechs), "C_GetMechanismList");
    if (!nmechs)
        exit(2);
    make_base();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rd r = {data, size};
    CK_SESSION_HANDLE h;
    CK_SESSION_INFO si;

    if (!f)
        LLVMFuzzerInitialize(NULL, NULL);
    ncreated = 0;
    nmade_pairs = 0;
    need(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h), "C_OpenSession");
    run_program(&r, h);

    /* The session still works, and is still the user's R/W session. */
    if (CALL(C_GetSessionInfo, h, &si) != CKR_OK || si.state != CKS_RW_USER_FUNCTIONS)
        die("C_GetSessionInfo: the session is no longer usable after the program (state %lu)", si.state);
    /* Base objects are intact. */
    for (int i = 0; i < FZ_H_BASE_COUNT; i++) {
        CK_OBJECT_CLASS cls;
        CK_ATTRIBUTE a = {CKA_CLASS, &cls, sizeof(cls)};
        if (CALL(C_GetAttributeValue, h, base[i], &a, 1) != CKR_OK)
            die("C_GetAttributeValue: base object %d is gone", i);
    }
    for (size_t i = 0; i < ncreated; i++)
        CALL(C_DestroyObject, h, created[i]);
    if (CALL(C_CloseSession, h) != CKR_OK)
        die("C_CloseSession failed");
    ncreated = 0;
    arena_free();
    return 0;
}
