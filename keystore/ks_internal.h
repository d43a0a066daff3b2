/* p11mk keystore internals shared by ks_*.c; not part of the layer's API. */
#ifndef P11MK_KS_INTERNAL_H
#define P11MK_KS_INTERNAL_H

#include "keystore/ks.h"

#include <lmdb.h>
#include <pthread.h>
#include <sys/types.h>

#define KS_FORMAT_VERSION 1u
#define KS_KSID_LEN 16
#define KS_NONCE_LEN 12
#define KS_TAG_LEN 16
#define KS_REC_HDR_LEN 8 /* 'P' 'K' version kind epoch(BE32) */
#define KS_REC_OVERHEAD (KS_REC_HDR_LEN + KS_NONCE_LEN + KS_TAG_LEN)
#define KS_REC_VERSION 1

/* Record kinds (bound into the AAD, so a record of one kind never opens as another). */
enum { KS_KIND_TOKEN = 'T', KS_KIND_OBJECT = 'O', KS_KIND_META = 'M' };

/* HKDF-SHA256. 0 on success. */
KS_API int ks_hkdf(const uint8_t *key, size_t keylen, const uint8_t *salt, size_t saltlen, const void *info,
                   size_t infolen, uint8_t *out, size_t outlen);
/* Record key of an epoch for a keystore: HKDF(mk, salt=ksid, "p11mk record key v1" | epoch). */
KS_API int ks_rec_key(const ks_mkey *mk, const uint8_t ksid[KS_KSID_LEN], uint32_t epoch, uint8_t key[32]);

/* Seal plaintext into a record (malloc'd *out, *outlen = len + KS_REC_OVERHEAD). */
KS_API int ks_rec_seal(const uint8_t key[32], const uint8_t ksid[KS_KSID_LEN], uint8_t kind, uint32_t epoch,
                       uint32_t token, uint64_t oid, const uint8_t *pt, size_t len, uint8_t **out,
                       size_t *outlen);
/* Parse a record's header without unsealing: kind and epoch. KS_ECORRUPT if malformed. */
KS_API int ks_rec_header(const uint8_t *rec, size_t len, uint8_t *kind, uint32_t *epoch);
/* Open a record sealed with seal() under the same binding. *out malloc'd. */
KS_API int ks_rec_open(const uint8_t key[32], const uint8_t ksid[KS_KSID_LEN], uint8_t kind, uint32_t token,
                       uint64_t oid, const uint8_t *rec, size_t len, uint8_t **out, size_t *outlen);

static inline void ks_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint32_t ks_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void ks_be64(uint8_t *p, uint64_t v)
{
    ks_be32(p, (uint32_t)(v >> 32));
    ks_be32(p + 4, (uint32_t)v);
}
static inline uint64_t ks_get_be64(const uint8_t *p)
{
    return (uint64_t)ks_get_be32(p) << 32 | ks_get_be32(p + 4);
}

#endif
