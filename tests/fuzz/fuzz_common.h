/* Shared by the fuzz targets and the seed generator (gen_seeds.c): the fixed
 * test key and bindings of fuzz_record, and the byte-code of the fuzz_pkcs11
 * programs. Keep both sides in sync: seeds are only valuable while they
 * decode to what the generator meant. */
#ifndef P11MK_FUZZ_COMMON_H
#define P11MK_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- fuzz_record ------------------------------------------------------------
 * Input byte 0, bit 0 clear: the rest is a raw record, opened under each of the
 * bindings below (with the record key of the epoch in its header, from the
 * fixed master key). A record that opens must be one the generator sealed:
 * plaintext byte i of binding b is fz_pattern(i, b).
 * Bit 0 set: "seal then tamper": see fuzz_record.c. */
static const uint8_t fz_master_key[32] = {
    0x70, 0x31, 0x31, 0x6d, 0x6b, 0x2d, 0x66, 0x75, 0x7a, 0x7a, 0x2d, 0x6b, 0x65, 0x79, 0x00, 0x01,
    0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11,
};
static const uint8_t fz_ksid[16] = {
    0xfa, 0x22, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
};
struct fz_binding {
    uint8_t kind;
    uint32_t token;
    uint64_t oid;
};
static const struct fz_binding fz_bindings[] = {
    {'O', 1, 42},
    {'T', 7, 0},
    {'M', 0, 0},
    {'O', 1, 0xffffffffffffull},
};
#define FZ_NBINDINGS (sizeof(fz_bindings) / sizeof(fz_bindings[0]))
/* Epochs the generator seals under (a record of another epoch never opens). */
#define FZ_EPOCH_MIN 1u
#define FZ_EPOCH_MAX 3u

static inline uint8_t fz_pattern(size_t i, unsigned b) { return (uint8_t)(i * 31u + 7u + b * 101u); }

/* ---- fuzz_pkcs11 programs -----------------------------------------------------
 * An input is a sequence of operations; each starts with an op byte (mod
 * FZ_OP_COUNT) followed by the choices that op reads. Every choice reads one
 * or more bytes; missing bytes read as 0, and choice 0 is always the "valid,
 * typical" one, so short seeds written by gen_seeds.c reach the success
 * paths and mutations branch off from there. */
enum {
    FZ_OP_CREATE = 0,   /* template */
    FZ_OP_GENKEY,       /* mech(keygen), template */
    FZ_OP_GENPAIR,      /* mech(pairgen), pub template, priv template */
    FZ_OP_GETATTR,      /* handle, out template (raw buffers) */
    FZ_OP_GETATTR3,     /* handle, types: NULL pass, exact buffers, nested buffers */
    FZ_OP_SETATTR,      /* created handle, template */
    FZ_OP_COPY,         /* handle, template */
    FZ_OP_FIND,         /* template, count, final? */
    FZ_OP_CRYPT,        /* kind, mech, handle, calls */
    FZ_OP_ROUNDTRIP,    /* kind(enc/sign), mech, handle, data, tamper */
    FZ_OP_WRAP,         /* mech, wrapping handle, target handle, out mode */
    FZ_OP_UNWRAP,       /* mech, handle, blob, template */
    FZ_OP_WRAPUNWRAP,   /* mech, wrapping handle, target handle, template, tamper */
    FZ_OP_DERIVE,       /* mech, handle, template */
    FZ_OP_DESTROY,      /* created handle */
    FZ_OP_MISC,         /* object size, random, mechanism info */
    FZ_OP_COUNT
};

/* Attribute value modes (the byte after the type; see decode_attr). The type
 * byte is an index into fuzz_pkcs11.c's list, or 0xff + a LE u32 type. */
enum {
    FZ_V_TYPED = 0,   /* per type: bool byte (0 TRUE, 1 FALSE), table choice, nested template... */
    FZ_V_MATERIAL = 3, /* + index among the base objects' material of that type */
    FZ_V_BYTES = 4,   /* + LE u16 length (mod 1025) + bytes */
    FZ_V_NULLLEN = 5, /* NULL pValue with a length */
    FZ_V_EMPTY = 6,   /* NULL, 0 */
    FZ_V_WRONGLEN = 7,
    FZ_V_BIG = 8,
    FZ_V_ULONG = 9,   /* + LE u64: a CK_ULONG */
};

/* Crypto kinds of FZ_OP_CRYPT. */
enum { FZ_K_ENCRYPT = 0, FZ_K_DECRYPT, FZ_K_SIGN, FZ_K_VERIFY, FZ_K_DIGEST, FZ_K_COUNT };

/* Base objects made by fuzz_pkcs11's initialisation, in this order (handle
 * choice n % count selects them; created objects follow). */
enum {
    FZ_H_AES256 = 0,   /* all usages, extractable */
    FZ_H_AES128_TMPL,  /* wrap/unwrap, with CKA_WRAP_TEMPLATE and CKA_UNWRAP_TEMPLATE */
    FZ_H_HMAC,         /* generic secret, 32 bytes: sign/verify/derive */
    FZ_H_EC_PUB,       /* P-256 */
    FZ_H_EC_PRIV,      /* derive allowed */
    FZ_H_ED_PUB,       /* Ed25519 */
    FZ_H_ED_PRIV,
    FZ_H_X_PRIV,       /* X25519, derive */
    FZ_H_RSA_PUB,      /* 2048 */
    FZ_H_RSA_PRIV,
    FZ_H_DATA,         /* a data object */
    FZ_H_TOKEN_AES,    /* a token object (reads only) */
    FZ_H_BASE_COUNT
};

#endif
