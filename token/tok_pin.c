/* p11mk token layer: PIN records (scrypt) and the token key they wrap. */
#include "tok_pin.h"
#include "keystore/ks.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#define PIN_LOG2N 14 /* N = 16384, r = 8: 16 MiB and about 50 ms per attempt */
#define PIN_R 8
#define PIN_P 1
#define SALT_LEN 16
#define NONCE_LEN 12
#define TAG_LEN 16
#define OFF_WRAP 52 /* v2: nonce, wrapped key, tag follow the v1 fields */

static int scrypt(const uint8_t *pin, size_t len, const uint8_t *salt, unsigned log2n, unsigned r, unsigned p,
                  uint8_t *out, size_t outlen)
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
    ok = EVP_KDF_derive(ctx, out, outlen, params) == 1;
    EVP_KDF_CTX_free(ctx);
    return ok ? 0 : -1;
}

void tok_pin_key_clear(tok_pin_key *k) { OPENSSL_cleanse(k, sizeof(*k)); }

static int derive(const uint8_t *pin, size_t len, tok_pin_key *k)
{
    uint8_t out[64];
    int rc = scrypt(pin, len, k->salt, k->params[1], k->params[2], k->params[3], out, sizeof(out));

    memcpy(k->verifier, out, 32);
    memcpy(k->kek, out + 32, 32);
    OPENSSL_cleanse(out, sizeof(out));
    return rc;
}

int tok_pin_new(const uint8_t *pin, size_t len, tok_pin_key *k)
{
    if ((!pin && len) || !k)
        return -1;
    memset(k, 0, sizeof(*k));
    k->params[0] = 2;
    k->params[1] = PIN_LOG2N;
    k->params[2] = PIN_R;
    k->params[3] = PIN_P;
    if (RAND_bytes_ex(ks_libctx(), k->salt, SALT_LEN, 0) != 1 || derive(pin, len, k) != 0) {
        tok_pin_key_clear(k);
        return -1;
    }
    return 0;
}

static bool rec_ok(const uint8_t *rec, size_t rec_len)
{
    if (!rec || !((rec_len == TOK_PIN_REC_V1_LEN && rec[0] == 1) || (rec_len == TOK_PIN_REC_LEN && rec[0] == 2)))
        return false;
    return rec[1] >= 10 && rec[1] <= 20 && rec[2] >= 1 && rec[2] <= 16 && rec[3] >= 1 && rec[3] <= 4;
}

int tok_pin_check(const uint8_t *pin, size_t len, const uint8_t *rec, size_t rec_len, tok_pin_key *k)
{
    bool same;

    if (!rec_ok(rec, rec_len) || !k)
        return TOK_PIN_BAD;
    if (!pin && len)
        return TOK_PIN_WRONG;
    memcpy(k->params, rec, 4);
    memcpy(k->salt, rec + 4, SALT_LEN);
    if (derive(pin, len, k) != 0) {
        tok_pin_key_clear(k);
        return TOK_PIN_BAD;
    }
    same = CRYPTO_memcmp(k->verifier, rec + 4 + SALT_LEN, 32) == 0;
    if (!same)
        tok_pin_key_clear(k);
    return same ? TOK_PIN_OK : TOK_PIN_WRONG;
}

static void wrap_aad(uint32_t token, unsigned role, uint8_t aad[24])
{
    memcpy(aad, "p11mk token key v1", 18);
    for (int i = 0; i < 4; i++)
        aad[18 + i] = (uint8_t)(token >> (8 * i));
    aad[22] = (uint8_t)role;
    aad[23] = 0;
}

/* AES-256-GCM of one 32-byte key: enc 1 wraps in -> out, 0 unwraps. */
static int gcm(int enc, const uint8_t key[32], const uint8_t nonce[NONCE_LEN], const uint8_t aad[24],
               const uint8_t in[TOK_TK_LEN], uint8_t out[TOK_TK_LEN], uint8_t tag[TAG_LEN])
{
    EVP_CIPHER *c = EVP_CIPHER_fetch(ks_libctx(), "AES-256-GCM", NULL);
    EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
    int n = 0, ok = c && cx && EVP_CipherInit_ex2(cx, c, key, nonce, enc, NULL) == 1 &&
                    EVP_CipherUpdate(cx, NULL, &n, aad, 24) == 1 &&
                    EVP_CipherUpdate(cx, out, &n, in, TOK_TK_LEN) == 1 && n == TOK_TK_LEN;

    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1;
    if (ok)
        ok = EVP_CipherFinal_ex(cx, out + n, &n) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(cx);
    EVP_CIPHER_free(c);
    if (!ok)
        OPENSSL_cleanse(out, TOK_TK_LEN);
    return ok ? 0 : -1;
}

int tok_pin_seal(const tok_pin_key *k, const uint8_t tk[TOK_TK_LEN], uint32_t token, unsigned role,
                 uint8_t rec[TOK_PIN_REC_LEN])
{
    uint8_t aad[24];

    if (!k || !tk || !rec)
        return -1;
    rec[0] = 2;
    memcpy(rec + 1, k->params + 1, 3);
    memcpy(rec + 4, k->salt, SALT_LEN);
    memcpy(rec + 4 + SALT_LEN, k->verifier, 32);
    wrap_aad(token, role, aad);
    if (RAND_bytes_ex(ks_libctx(), rec + OFF_WRAP, NONCE_LEN, 0) != 1 ||
        gcm(1, k->kek, rec + OFF_WRAP, aad, tk, rec + OFF_WRAP + NONCE_LEN,
            rec + OFF_WRAP + NONCE_LEN + TOK_TK_LEN) != 0) {
        OPENSSL_cleanse(rec, TOK_PIN_REC_LEN);
        return -1;
    }
    return 0;
}

int tok_pin_unwrap(const tok_pin_key *k, const uint8_t *rec, size_t rec_len, uint32_t token, unsigned role,
                   uint8_t tk[TOK_TK_LEN])
{
    uint8_t aad[24], tag[TAG_LEN];

    if (!rec_ok(rec, rec_len) || !k || !tk)
        return -1;
    if (rec[0] == 1)
        return 1;
    wrap_aad(token, role, aad);
    memcpy(tag, rec + OFF_WRAP + NONCE_LEN + TOK_TK_LEN, TAG_LEN);
    return gcm(0, k->kek, rec + OFF_WRAP, aad, rec + OFF_WRAP + NONCE_LEN, tk, tag);
}

int tok_tk_kcv(const uint8_t tk[TOK_TK_LEN], uint8_t kcv[TOK_TK_KCV_LEN])
{
    static const char label[] = "p11mk token key check value";
    EVP_MD *md = EVP_MD_fetch(ks_libctx(), "SHA2-256", NULL);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    uint8_t h[32];
    unsigned hl = 0;
    int ok = md && c && EVP_DigestInit_ex2(c, md, NULL) == 1 && EVP_DigestUpdate(c, label, sizeof(label) - 1) == 1 &&
             EVP_DigestUpdate(c, tk, TOK_TK_LEN) == 1 && EVP_DigestFinal_ex(c, h, &hl) == 1;

    EVP_MD_CTX_free(c);
    EVP_MD_free(md);
    if (ok)
        memcpy(kcv, h, TOK_TK_KCV_LEN);
    return ok ? 0 : -1;
}
