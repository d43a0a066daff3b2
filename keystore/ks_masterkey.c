/* p11mk keystore: master key sources (built-in default, key file) and key
 * check values. */
#include "ks_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* The built-in key is public knowledge (it is SHA-256 of this string); it
 * exists so that a token works out of the box, and every report says so. */
static const char default_key_seed[] = "p11mk built-in default master key, not secret, v1";

void ks_mkey_clear(ks_mkey *mk)
{
    if (mk)
        OPENSSL_cleanse(mk, sizeof(*mk));
}

void ks_mkey_default(ks_mkey *mk)
{
    size_t len = 0;
    memset(mk, 0, sizeof(*mk));
    if (!EVP_Q_digest(ks_libctx(), "SHA256", NULL, default_key_seed, sizeof(default_key_seed) - 1, mk->key, &len) ||
        len != KS_MK_LEN)
        abort(); /* SHA-256 unavailable: OpenSSL is unusable, nothing can be sealed */
    mk->is_default = true;
    snprintf(mk->source, sizeof(mk->source), "default");
}

void ks_key_kcv(const uint8_t key[KS_MK_LEN], uint8_t kcv[KS_KCV_LEN])
{
    static const char info[] = "p11mk key check value v1";
    if (ks_hkdf(key, KS_MK_LEN, NULL, 0, info, sizeof(info) - 1, kcv, KS_KCV_LEN) != 0)
        memset(kcv, 0, KS_KCV_LEN);
}

void ks_mkey_kcv(const ks_mkey *mk, uint8_t kcv[KS_KCV_LEN]) { ks_key_kcv(mk->key, kcv); }

void ks_hex(const uint8_t *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void ks_kcv_hex(const uint8_t kcv[KS_KCV_LEN], char out[2 * KS_KCV_LEN + 1]) { ks_hex(kcv, KS_KCV_LEN, out); }

/* ---- passphrases ------------------------------------------------------- */

static int scrypt_key(const char *pass, size_t len, const char *salt, size_t saltlen, uint8_t out[KS_MK_LEN]);

int ks_mkey_from_passphrase(const char *pass, size_t len, ks_mkey *mk)
{
    static const char salt[] = "p11mk master key passphrase v1";
    if (!pass || !mk)
        return KS_EINVAL;
    memset(mk, 0, sizeof(*mk));
    int rc = scrypt_key(pass, len, salt, sizeof(salt) - 1, mk->key);
    snprintf(mk->source, sizeof(mk->source), "passphrase");
    return rc;
}

int ks_mkey_from_parts(const char *const *parts, size_t n, ks_mkey *mk)
{
    uint8_t k[KS_MK_LEN];
    char salt[64];
    if (!parts || !mk || n < 2 || n > KS_PARTS_MAX)
        return KS_EINVAL;
    memset(mk, 0, sizeof(*mk));
    for (size_t i = 0; i < n; i++) {
        int sl = snprintf(salt, sizeof(salt), "p11mk master key part v1/%zu", i + 1);
        if (!parts[i] || scrypt_key(parts[i], strlen(parts[i]), salt, (size_t)sl, k) != KS_OK) {
            ks_mkey_clear(mk);
            OPENSSL_cleanse(k, sizeof(k));
            return KS_EIO;
        }
        for (size_t j = 0; j < KS_MK_LEN; j++)
            mk->key[j] ^= k[j];
    }
    OPENSSL_cleanse(k, sizeof(k));
    snprintf(mk->source, sizeof(mk->source), "%zu key parts", n);
    return KS_OK;
}

static int scrypt_key(const char *pass, size_t len, const char *salt, size_t saltlen, uint8_t out[KS_MK_LEN])
{
    EVP_KDF *kdf = EVP_KDF_fetch(ks_libctx(), "SCRYPT", NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    uint64_t n = 1u << 15;
    uint32_t rr = 8, pp = 1;
    int ok;

    EVP_KDF_free(kdf);
    if (!ctx)
        return KS_EIO;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)pass, len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &rr),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &pp),
        OSSL_PARAM_construct_end(),
    };
    ok = EVP_KDF_derive(ctx, out, KS_MK_LEN, params) == 1;
    EVP_KDF_CTX_free(ctx);
    return ok ? KS_OK : KS_EIO;
}

int ks_mkey_generate(ks_mkey *mk)
{
    /* 32 bytes of the DRBG, as a key file gets (below): nobody ever sees or
     * types a generated key, so a passphrase's stretching (scrypt, 32 MiB and
     * about 0.1 s) would guard nothing and only slow every rotation. */
    if (!mk)
        return KS_EINVAL;
    memset(mk, 0, sizeof(*mk));
    if (RAND_bytes_ex(ks_libctx(), mk->key, KS_MK_LEN, 0) != 1) {
        ks_mkey_clear(mk);
        return KS_EIO;
    }
    snprintf(mk->source, sizeof(mk->source), "generated");
    return KS_OK;
}

static int mkey_generate_file_impl(const char *path, ks_mkey *mk, ks_err *err)
{
    uint8_t key[KS_MK_LEN];
    int fd, rc = KS_OK;

    if (RAND_bytes_ex(ks_libctx(), key, sizeof(key), 0) != 1) {
        ks_err_set(err, "the random generator failed; no key file was written");
        return KS_EIO;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        ks_err_set(err, "cannot create master key file %s: %s%s", path, strerror(errno),
                   errno == EEXIST ? " (refusing to overwrite an existing key)" : "");
        OPENSSL_cleanse(key, sizeof(key));
        return errno == EEXIST ? KS_EEXIST : KS_EIO;
    }
    if (fchmod(fd, 0600) != 0 || write(fd, key, sizeof(key)) != (ssize_t)sizeof(key) || fsync(fd) != 0) {
        ks_err_set(err, "cannot write master key file %s: %s", path, strerror(errno));
        rc = KS_EIO;
    }
    if (close(fd) != 0 && rc == KS_OK) {
        ks_err_set(err, "cannot write master key file %s: %s", path, strerror(errno));
        rc = KS_EIO;
    }
    if (rc != KS_OK) {
        unlink(path);
    } else if (mk) {
        memset(mk, 0, sizeof(*mk));
        memcpy(mk->key, key, KS_MK_LEN);
        snprintf(mk->source, sizeof(mk->source), "%s", path);
    }
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

int ks_mkey_generate_file(const char *path, ks_mkey *mk, ks_err *err)
{
    return ks_err_in(err, KS_AREA_KEY, mkey_generate_file_impl(path, mk, err));
}
