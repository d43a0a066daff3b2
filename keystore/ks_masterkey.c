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

/* ---- registers file -------------------------------------------------------
 *
 *   # p11mk master-key registers: secret, mode 0600
 *   p11mk-registers 1
 *   current <64 hex>
 *   new <64 hex>            (when a key is staged)
 *   old <64 hex>            (retired keys, newest first)
 *   check <16 hex>          (SHA-256 of the lines above: truncation shows)
 */
#define REG_MAGIC "p11mk-registers 1"

static int hex_val(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_hex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_val(s[2 * i]), lo = hi < 0 ? -1 : hex_val(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return s[2 * n] == '\0' ? 0 : -1;
}

static void to_hex(const uint8_t *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static void reg_key(ks_mkey *mk, const uint8_t *key, const char *path, unsigned mode)
{
    ks_mkey dflt;
    memset(mk, 0, sizeof(*mk));
    memcpy(mk->key, key, KS_MK_LEN);
    ks_mkey_default(&dflt);
    mk->is_default = CRYPTO_memcmp(dflt.key, key, KS_MK_LEN) == 0;
    ks_mkey_clear(&dflt);
    snprintf(mk->source, sizeof(mk->source), "%s", path);
    mk->file_mode = mode;
}

static int reg_parse(const char *path, unsigned mode, char *text, size_t len, ks_registers *r, ks_err *err)
{
    uint8_t key[KS_MK_LEN], sum[32], want[8];
    size_t sumlen = 0;
    bool have_current = false, have_check = false;
    char *line, *save = NULL;
    size_t body = 0;
    int lineno = 0;

    if (len == KS_MK_LEN) { /* the first format: 32 raw bytes, CURRENT only */
        reg_key(&r->current, (const uint8_t *)text, path, mode);
        return KS_OK;
    }
    if (len < sizeof(REG_MAGIC) || memchr(text, '\0', len))
        goto bad;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (have_check)
            goto bad;
        if (line[0] == '#')
            continue;
        if (lineno <= 2 && strcmp(line, REG_MAGIC) == 0)
            continue;
        if (strncmp(line, "check ", 6) == 0) {
            body = (size_t)(line - text);
            if (parse_hex(line + 6, want, sizeof(want)) != 0)
                goto bad;
            have_check = true;
            continue;
        }
        const char *role = line, *sp = strchr(line, ' ');
        if (!sp || parse_hex(sp + 1, key, KS_MK_LEN) != 0)
            goto bad;
        if (strncmp(role, "current ", 8) == 0 && !have_current) {
            reg_key(&r->current, key, path, mode);
            have_current = true;
        } else if (strncmp(role, "new ", 4) == 0 && !r->has_new) {
            reg_key(&r->staged, key, path, mode);
            r->has_new = true;
        } else if (strncmp(role, "old ", 4) == 0 && r->n_old < KS_REG_MAX_OLD) {
            reg_key(&r->old[r->n_old++], key, path, mode);
        } else {
            goto bad;
        }
    }
    OPENSSL_cleanse(key, sizeof(key));
    if (!have_current || !have_check)
        goto bad;
    /* strtok_r wrote NULs over the newlines of the body: put them back to hash it. */
    for (size_t i = 0; i < body; i++)
        if (text[i] == '\0')
            text[i] = '\n';
    if (!EVP_Q_digest(ks_libctx(), "SHA256", NULL, text, body, sum, &sumlen) || CRYPTO_memcmp(sum, want, sizeof(want)))
        goto bad;
    return KS_OK;
bad:
    OPENSSL_cleanse(key, sizeof(key));
    ks_reg_clear(r);
    ks_err_set(err, "master key file %s is damaged or truncated (line %d); restore it from your backup of the "
                    "key file", path, lineno);
    return KS_EINVAL;
}

void ks_reg_clear(ks_registers *r)
{
    if (r)
        OPENSSL_cleanse(r, sizeof(*r));
}

int ks_reg_load(const char *path, unsigned allowed_mode, ks_registers *r, ks_err *err)
{
    struct stat sb;
    char buf[4096];
    ssize_t n;
    int fd, rc;

    memset(r, 0, sizeof(*r));
    if (!allowed_mode)
        allowed_mode = 0600;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
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
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0 || n == (ssize_t)sizeof(buf) - 1) {
        OPENSSL_cleanse(buf, sizeof(buf));
        ks_err_set(err, "master key file %s cannot be read or is too large", path);
        return KS_EINVAL;
    }
    buf[n] = '\0';
    if (n != KS_MK_LEN && n < (ssize_t)sizeof(REG_MAGIC)) {
        OPENSSL_cleanse(buf, sizeof(buf));
        ks_err_set(err, "master key file %s must hold exactly %d bytes or p11mk registers, it holds %zd bytes; "
                        "it is truncated or not a p11mk key file", path, KS_MK_LEN, n);
        return KS_EINVAL;
    }
    rc = reg_parse(path, allowed_mode, buf, (size_t)n, r, err);
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

static int append(char *buf, size_t cap, size_t *len, const char *role, const uint8_t *key)
{
    char hex[2 * KS_MK_LEN + 1];
    int n;
    to_hex(key, KS_MK_LEN, hex);
    n = snprintf(buf + *len, cap - *len, "%s %s\n", role, hex);
    OPENSSL_cleanse(hex, sizeof(hex));
    if (n < 0 || (size_t)n >= cap - *len)
        return -1;
    *len += (size_t)n;
    return 0;
}

int ks_reg_save(const char *path, const ks_registers *r, ks_err *err)
{
    char buf[4096], tmp[4096], hex[17];
    uint8_t sum[32];
    size_t len = 0, sumlen = 0;
    int fd, rc = KS_OK;

    len = (size_t)snprintf(buf, sizeof(buf), "# p11mk master-key registers: secret, keep mode 0600\n" REG_MAGIC "\n");
    int bad = append(buf, sizeof(buf), &len, "current", r->current.key);
    if (r->has_new)
        bad |= append(buf, sizeof(buf), &len, "new", r->staged.key);
    for (size_t i = 0; i < r->n_old && i < KS_REG_MAX_OLD; i++)
        bad |= append(buf, sizeof(buf), &len, "old", r->old[i].key);
    if (bad || !EVP_Q_digest(ks_libctx(), "SHA256", NULL, buf, len, sum, &sumlen)) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return KS_EIO;
    }
    to_hex(sum, 8, hex);
    len += (size_t)snprintf(buf + len, sizeof(buf) - len, "check %s\n", hex);

    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        ks_err_set(err, "cannot write master key file %s: %s", tmp, strerror(errno));
        OPENSSL_cleanse(buf, sizeof(buf));
        return KS_EIO;
    }
    if (fchmod(fd, 0600) != 0 || write(fd, buf, len) != (ssize_t)len || fsync(fd) != 0)
        rc = KS_EIO;
    if (close(fd) != 0)
        rc = KS_EIO;
    OPENSSL_cleanse(buf, sizeof(buf));
    if (rc == KS_OK && rename(tmp, path) != 0)
        rc = KS_EIO;
    if (rc != KS_OK) {
        ks_err_set(err, "cannot write master key file %s: %s; the previous file is unchanged", path,
                   strerror(errno));
        unlink(tmp);
        return rc;
    }
    /* Make the rename durable. */
    char *slash = strrchr(tmp, '/');
    if (slash) {
        *slash = '\0';
        int dfd = open(*tmp ? tmp : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return KS_OK;
}

int ks_mkey_load(const ks_config *cfg, ks_mkey *mk, ks_err *err)
{
    ks_registers r;
    int rc;

    if (!cfg || !mk)
        return KS_EINVAL;
    if (!cfg->master_key || strcmp(cfg->master_key, "default") == 0) {
        ks_mkey_default(mk);
        return KS_OK;
    }
    rc = ks_reg_load(cfg->master_key, cfg->key_file_mode ? cfg->key_file_mode : 0600, &r, err);
    if (rc == KS_OK)
        *mk = r.current;
    ks_reg_clear(&r);
    return rc;
}

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
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t rnd[32];
    char pass[33];
    int rc;

    if (RAND_bytes_ex(ks_libctx(), rnd, sizeof(rnd), 0) != 1)
        return KS_EIO;
    for (size_t i = 0; i < 32; i++)
        pass[i] = alphabet[rnd[i] & 63];
    pass[32] = '\0';
    rc = ks_mkey_from_passphrase(pass, 32, mk);
    OPENSSL_cleanse(rnd, sizeof(rnd));
    OPENSSL_cleanse(pass, sizeof(pass));
    if (rc == KS_OK)
        snprintf(mk->source, sizeof(mk->source), "generated");
    return rc;
}

int ks_mkey_generate_file(const char *path, ks_mkey *mk, ks_err *err)
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
