/* p11mk keystore: the sealed record format.
 *
 *   'P' 'K' version(1) kind(1) epoch(BE32) | nonce(12) | ciphertext | tag(16)
 *
 * AES-256-GCM under the record key of `epoch`. The AAD binds the record to
 * where it belongs: "p11mk/rec/v1" | keystore id | header | token(BE32) |
 * object id(BE64). Moving a record to another key, token, keystore or kind,
 * changing its epoch, or editing one byte makes it fail to open. */
#include "ks_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

static const char aad_label[] = "p11mk/rec/v1";
#define AAD_LEN (sizeof(aad_label) - 1 + KS_KSID_LEN + KS_REC_HDR_LEN + 4 + 8)

static EVP_CIPHER *gcm;
static EVP_KDF *hkdf;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_algs(void)
{
    gcm = EVP_CIPHER_fetch(ks_libctx(), "AES-256-GCM", NULL);
    hkdf = EVP_KDF_fetch(ks_libctx(), "HKDF", NULL);
}

int ks_hkdf(const uint8_t *key, size_t keylen, const uint8_t *salt, size_t saltlen, const void *info,
            size_t infolen, uint8_t *out, size_t outlen)
{
    OSSL_PARAM params[5], *p = params;
    EVP_KDF_CTX *kctx;
    int ok;

    pthread_once(&fetch_once, fetch_algs);
    if (!hkdf || !(kctx = EVP_KDF_CTX_new(hkdf)))
        return -1;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, keylen);
    if (salt && saltlen)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
    *p = OSSL_PARAM_construct_end();
    ok = EVP_KDF_derive(kctx, out, outlen, params);
    EVP_KDF_CTX_free(kctx);
    return ok == 1 ? 0 : -1;
}

int ks_rec_key(const ks_mkey *mk, const uint8_t ksid[KS_KSID_LEN], uint32_t epoch, uint8_t key[32])
{
    static const char label[] = "p11mk record key v1";
    uint8_t info[sizeof(label) - 1 + 4];
    memcpy(info, label, sizeof(label) - 1);
    ks_be32(info + sizeof(label) - 1, epoch);
    return ks_hkdf(mk->key, KS_MK_LEN, ksid, KS_KSID_LEN, info, sizeof(info), key, 32) == 0 ? KS_OK : KS_EIO;
}

static void build_aad(uint8_t aad[AAD_LEN], const uint8_t ksid[KS_KSID_LEN], const uint8_t hdr[KS_REC_HDR_LEN],
                      uint32_t token, uint64_t oid)
{
    uint8_t *p = aad;
    memcpy(p, aad_label, sizeof(aad_label) - 1);
    p += sizeof(aad_label) - 1;
    memcpy(p, ksid, KS_KSID_LEN);
    p += KS_KSID_LEN;
    memcpy(p, hdr, KS_REC_HDR_LEN);
    p += KS_REC_HDR_LEN;
    ks_be32(p, token);
    ks_be64(p + 4, oid);
}

static int gcm_run(int enc, const uint8_t key[32], const uint8_t *nonce, const uint8_t *aad, const uint8_t *in,
                   size_t len, uint8_t *out, uint8_t *tag)
{
    EVP_CIPHER_CTX *c;
    int ok = 0, n;

    pthread_once(&fetch_once, fetch_algs);
    if (!gcm || len > INT32_MAX || !(c = EVP_CIPHER_CTX_new()))
        return KS_EIO;
    if (!EVP_CipherInit_ex2(c, gcm, key, nonce, enc, NULL))
        goto out;
    if (!EVP_CipherUpdate(c, NULL, &n, aad, (int)AAD_LEN))
        goto out;
    if (len && !EVP_CipherUpdate(c, out, &n, in, (int)len))
        goto out;
    if (!enc && !EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, KS_TAG_LEN, tag))
        goto out;
    if (!EVP_CipherFinal_ex(c, out + len, &n))
        goto out;
    if (enc && !EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, KS_TAG_LEN, tag))
        goto out;
    ok = 1;
out:
    EVP_CIPHER_CTX_free(c);
    return ok ? KS_OK : (enc ? KS_EIO : KS_ECORRUPT);
}

int ks_rec_seal(const uint8_t key[32], const uint8_t ksid[KS_KSID_LEN], uint8_t kind, uint32_t epoch,
                uint32_t token, uint64_t oid, const uint8_t *pt, size_t len, uint8_t **out, size_t *outlen)
{
    uint8_t aad[AAD_LEN];
    uint8_t *rec;
    int rc;

    if (len > SIZE_MAX - KS_REC_OVERHEAD)
        return KS_EINVAL;
    rec = malloc(len + KS_REC_OVERHEAD);
    if (!rec)
        return KS_ENOMEM;
    rec[0] = 'P';
    rec[1] = 'K';
    rec[2] = KS_REC_VERSION;
    rec[3] = kind;
    ks_be32(rec + 4, epoch);
    if (RAND_bytes_ex(ks_libctx(), rec + KS_REC_HDR_LEN, KS_NONCE_LEN, 0) != 1) {
        free(rec);
        return KS_EIO;
    }
    build_aad(aad, ksid, rec, token, oid);
    rc = gcm_run(1, key, rec + KS_REC_HDR_LEN, aad, pt, len, rec + KS_REC_HDR_LEN + KS_NONCE_LEN,
                 rec + KS_REC_HDR_LEN + KS_NONCE_LEN + len);
    if (rc != KS_OK) {
        free(rec);
        return rc;
    }
    *out = rec;
    *outlen = len + KS_REC_OVERHEAD;
    return KS_OK;
}

int ks_rec_header(const uint8_t *rec, size_t len, uint8_t *kind, uint32_t *epoch)
{
    if (!rec || len < KS_REC_OVERHEAD || rec[0] != 'P' || rec[1] != 'K')
        return KS_ECORRUPT;
    if (rec[2] != KS_REC_VERSION)
        return KS_EVERSION;
    if (kind)
        *kind = rec[3];
    if (epoch)
        *epoch = ks_get_be32(rec + 4);
    return KS_OK;
}

int ks_rec_open(const uint8_t key[32], const uint8_t ksid[KS_KSID_LEN], uint8_t kind, uint32_t token, uint64_t oid,
                const uint8_t *rec, size_t len, uint8_t **out, size_t *outlen)
{
    uint8_t aad[AAD_LEN], tag[KS_TAG_LEN], k;
    uint8_t *pt;
    size_t ptlen;
    int rc = ks_rec_header(rec, len, &k, NULL);

    if (rc != KS_OK)
        return rc;
    if (k != kind)
        return KS_ECORRUPT;
    ptlen = len - KS_REC_OVERHEAD;
    pt = malloc(ptlen ? ptlen : 1);
    if (!pt)
        return KS_ENOMEM;
    memcpy(tag, rec + len - KS_TAG_LEN, KS_TAG_LEN);
    build_aad(aad, ksid, rec, token, oid);
    rc = gcm_run(0, key, rec + KS_REC_HDR_LEN, aad, rec + KS_REC_HDR_LEN + KS_NONCE_LEN, ptlen, pt, tag);
    if (rc != KS_OK) {
        OPENSSL_cleanse(pt, ptlen);
        free(pt);
        return rc;
    }
    *out = pt;
    *outlen = ptlen;
    return KS_OK;
}

void ks_buf_free(uint8_t *buf, size_t len)
{
    if (!buf)
        return;
    OPENSSL_cleanse(buf, len);
    free(buf);
}
