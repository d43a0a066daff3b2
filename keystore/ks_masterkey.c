/* p11mk keystore: master key sources (built-in default, key file) and key
 * check values. */
#include "keystore/ks_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
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
    if (!EVP_Q_digest(NULL, "SHA256", NULL, default_key_seed, sizeof(default_key_seed) - 1, mk->key, &len) ||
        len != KS_MK_LEN)
        abort(); /* SHA-256 unavailable: OpenSSL is unusable, nothing can be sealed */
    mk->is_default = true;
    snprintf(mk->source, sizeof(mk->source), "default");
}

void ks_mkey_kcv(const ks_mkey *mk, uint8_t kcv[KS_KCV_LEN])
{
    static const char info[] = "p11mk key check value v1";
    if (ks_hkdf(mk->key, KS_MK_LEN, NULL, 0, info, sizeof(info) - 1, kcv, KS_KCV_LEN) != 0)
        memset(kcv, 0, KS_KCV_LEN);
}

void ks_kcv_hex(const uint8_t kcv[KS_KCV_LEN], char out[2 * KS_KCV_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < KS_KCV_LEN; i++) {
        out[2 * i] = hex[kcv[i] >> 4];
        out[2 * i + 1] = hex[kcv[i] & 15];
    }
    out[2 * KS_KCV_LEN] = '\0';
}

static int load_key_file(const char *path, unsigned allowed_mode, ks_mkey *mk, ks_err *err)
{
    struct stat sb;
    uint8_t buf[KS_MK_LEN + 1];
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    if (fd < 0) {
        ks_err_set(err, "cannot open master key file %s: %s (set master_key in the configuration, or create "
                        "one with: p11mk-admin init --generate-key %s)", path, strerror(errno), path);
        return errno == EACCES ? KS_EPERM : KS_ENOTFOUND;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ks_err_set(err, "master key file %s is not a regular file", path);
        close(fd);
        return KS_EINVAL;
    }
    if ((sb.st_mode & 0777) & ~(allowed_mode & 0777)) {
        ks_err_set(err, "master key file %s has mode %04o, which lets others read it; run: chmod 600 %s",
                   path, (unsigned)(sb.st_mode & 0777), path);
        close(fd);
        return KS_EPERM;
    }
    n = read(fd, buf, sizeof(buf));
    close(fd);
    if (n != KS_MK_LEN) {
        OPENSSL_cleanse(buf, sizeof(buf));
        ks_err_set(err, "master key file %s must hold exactly %d bytes, it holds %s%zd; it is truncated or "
                        "not a p11mk key file", path, KS_MK_LEN, n > KS_MK_LEN ? "more than " : "",
                   n < 0 ? (ssize_t)0 : (n > KS_MK_LEN ? (ssize_t)KS_MK_LEN : n));
        return KS_EINVAL;
    }
    memset(mk, 0, sizeof(*mk));
    memcpy(mk->key, buf, KS_MK_LEN);
    OPENSSL_cleanse(buf, sizeof(buf));
    snprintf(mk->source, sizeof(mk->source), "%s", path);
    return KS_OK;
}

int ks_mkey_load(const ks_config *cfg, ks_mkey *mk, ks_err *err)
{
    if (!cfg || !mk)
        return KS_EINVAL;
    if (!cfg->master_key || strcmp(cfg->master_key, "default") == 0) {
        ks_mkey_default(mk);
        return KS_OK;
    }
    return load_key_file(cfg->master_key, cfg->key_file_mode ? cfg->key_file_mode : 0600, mk, err);
}

int ks_mkey_generate_file(const char *path, ks_mkey *mk, ks_err *err)
{
    uint8_t key[KS_MK_LEN];
    int fd, rc = KS_OK;

    if (RAND_bytes(key, sizeof(key)) != 1) {
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
