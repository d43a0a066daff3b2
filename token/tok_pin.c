/* p11mk token layer: PIN hashing with scrypt (EVP_KDF "SCRYPT"). */
#include "token/tok_pin.h"
#include "keystore/ks.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#define PIN_VERSION 1
#define PIN_LOG2N 14 /* N = 16384, r = 8: 16 MiB and about 50 ms per attempt */
#define PIN_R 8
#define PIN_P 1
#define SALT_LEN 16
#define HASH_LEN 32

static int scrypt(const uint8_t *pin, size_t len, const uint8_t *salt, unsigned log2n, unsigned r, unsigned p,
                  uint8_t out[HASH_LEN])
{
    EVP_KDF *kdf = EVP_KDF_fetch(ks_libctx(), "SCRYPT", NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    uint64_t n = (uint64_t)1 << log2n;
    uint32_t rr = r, pp = p;
    int ok = 0;

    EVP_KDF_free(kdf);
    if (!ctx)
        return -1;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)(pin ? pin : (const uint8_t *)""), len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, SALT_LEN),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &rr),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &pp),
        OSSL_PARAM_construct_end(),
    };
    ok = EVP_KDF_derive(ctx, out, HASH_LEN, params) == 1;
    EVP_KDF_CTX_free(ctx);
    return ok ? 0 : -1;
}

int tok_pin_hash(const uint8_t *pin, size_t len, uint8_t rec[TOK_PIN_REC_LEN])
{
    uint8_t tmp[TOK_PIN_REC_LEN];

    if ((!pin && len) || !rec)
        return -1;
    tmp[0] = PIN_VERSION;
    tmp[1] = PIN_LOG2N;
    tmp[2] = PIN_R;
    tmp[3] = PIN_P;
    if (RAND_bytes_ex(ks_libctx(), tmp + 4, SALT_LEN, 0) != 1 || scrypt(pin, len, tmp + 4, PIN_LOG2N, PIN_R, PIN_P, tmp + 4 + SALT_LEN)) {
        OPENSSL_cleanse(tmp, sizeof(tmp));
        return -1;
    }
    memcpy(rec, tmp, sizeof(tmp));
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return 0;
}

bool tok_pin_verify(const uint8_t *pin, size_t len, const uint8_t rec[TOK_PIN_REC_LEN])
{
    uint8_t h[HASH_LEN];
    bool ok;

    if ((!pin && len) || !rec || rec[0] != PIN_VERSION || rec[1] < 10 || rec[1] > 20 || rec[2] < 1 || rec[2] > 16 ||
        rec[3] < 1 || rec[3] > 4)
        return false;
    if (scrypt(pin, len, rec + 4, rec[1], rec[2], rec[3], h) != 0)
        return false;
    ok = CRYPTO_memcmp(h, rec + 4 + SALT_LEN, HASH_LEN) == 0;
    OPENSSL_cleanse(h, sizeof(h));
    return ok;
}
