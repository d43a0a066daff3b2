/* p11mk keystore: the master-key registers (the key file).
 *
 *   # p11mk master-key registers: secret, keep mode 0600
 *   p11mk-registers 2
 *   # keystore <32 hex>                            (the keystore it serves)
 *   # made-for <32 hex>                            (a new file's place, until its first stage)
 *   current <64 hex>
 *   new <64 hex>                                   (while a key is staged)
 *   old <64 hex> epoch=<n> retired=<unix>[ aborted] (retired keys, newest first)
 *   check <16 hex>                                 (SHA-256 of the lines above)
 *
 * Version 1 files (old lines without fields) and bare 32-byte key files are
 * read too. The keystore line is a comment to p11mk before 2026-12 (running
 * applications may still have that module loaded when the admin rewrites
 * the file), which reads the rest as before; like every line it is under
 * the check. The history has no size limit: keys leave it only when an admin
 * clears it. Crash rule: the file is only ever replaced whole (temporary file
 * under a fixed name, fsync, rename, fsync of the directory), by a writer
 * holding the keystore's lifecycle lock, so a reader sees the old or the new
 * registers and a killed writer leaves at most FILE.tmp behind, which the
 * next writer removes. */
#include "ks_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define REG_MAGIC_V1 "p11mk-registers 1"
#define REG_MAGIC "p11mk-registers 2"
#define REG_FILE_MAX (64u << 20)

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

/* n bytes of hex at s, followed by a space or the end of the line. */
static int parse_hex(const char *s, const char *end, uint8_t *out, size_t n)
{
    if ((size_t)(end - s) < 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_val(s[2 * i]), lo = hi < 0 ? -1 : hex_val(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return s + 2 * n == end || s[2 * n] == ' ' ? 0 : -1;
}

/* The identity lines, "# NAME <2n hex>" (a comment to p11mk before 2026-12):
 * 1 when the line at p..le is NAME's and was read into out; 0 when it is not
 * (another length is an ordinary comment); -1 when it is NAME's a second time
 * or its value is not hex (the file is refused). */
static int id_line(const char *p, const char *le, const char *name, uint8_t *out, size_t n, bool *seen)
{
    size_t nl = strlen(name);
    if ((size_t)(le - p) != 3 + nl + 2 * n || memcmp(p, "# ", 2) != 0 || memcmp(p + 2, name, nl) != 0 ||
        p[2 + nl] != ' ')
        return 0;
    if (*seen || parse_hex(p + 3 + nl, le, out, n) != 0)
        return -1;
    *seen = true;
    return 1;
}

static void put_id_line(char *buf, size_t cap, size_t *len, const char *name, const uint8_t *id, size_t n)
{
    char hex[2 * 32 + 1];
    if (n > 32)
        abort(); /* the identities are 16 bytes (ks.h) */
    ks_hex(id, n, hex);
    *len += (size_t)snprintf(buf + *len, cap - *len, "# %s %s\n", name, hex);
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

void ks_reg_clear(ks_registers *r)
{
    if (!r)
        return;
    ks_secmem_free(r->old);
    OPENSSL_cleanse(r, sizeof(*r));
}

static int reserve(ks_registers *r, size_t want)
{
    if (want <= r->cap_old)
        return KS_OK;
    size_t cap = r->cap_old ? r->cap_old : 16;
    while (cap < want)
        cap *= 2;
    ks_histkey *n = ks_secmem_alloc(cap * sizeof(*n));
    if (!n)
        return KS_ENOMEM;
    if (r->n_old)
        memcpy(n, r->old, r->n_old * sizeof(*n));
    ks_secmem_free(r->old);
    r->old = n;
    r->cap_old = cap;
    return KS_OK;
}

int ks_reg_insert_old(ks_registers *r, size_t at, const uint8_t key[KS_MK_LEN], uint32_t epoch, uint64_t retired,
                      bool aborted)
{
    if (!r || at > r->n_old)
        return KS_EINVAL;
    int rc = reserve(r, r->n_old + 1);
    if (rc != KS_OK)
        return rc;
    memmove(&r->old[at + 1], &r->old[at], (r->n_old - at) * sizeof(r->old[0]));
    ks_histkey *h = &r->old[at];
    memset(h, 0, sizeof(*h));
    memcpy(h->key, key, KS_MK_LEN);
    ks_key_kcv(key, h->kcv);
    h->epoch = epoch;
    h->retired = retired;
    h->aborted = aborted;
    r->n_old++;
    return KS_OK;
}

void ks_reg_remove_old(ks_registers *r, size_t i)
{
    if (!r || i >= r->n_old)
        return;
    OPENSSL_cleanse(&r->old[i], sizeof(r->old[i]));
    memmove(&r->old[i], &r->old[i + 1], (r->n_old - i - 1) * sizeof(r->old[0]));
    r->n_old--;
    OPENSSL_cleanse(&r->old[r->n_old], sizeof(r->old[0]));
}

int ks_reg_find(const ks_registers *r, const uint8_t kcv[KS_KCV_LEN], uint8_t out[KS_MK_LEN])
{
    uint8_t k[KS_KCV_LEN];
    ks_mkey_kcv(&r->current, k);
    if (CRYPTO_memcmp(k, kcv, KS_KCV_LEN) == 0) {
        if (out)
            memcpy(out, r->current.key, KS_MK_LEN);
        return KS_REG_CURRENT;
    }
    if (r->has_new) {
        ks_mkey_kcv(&r->staged, k);
        if (CRYPTO_memcmp(k, kcv, KS_KCV_LEN) == 0) {
            if (out)
                memcpy(out, r->staged.key, KS_MK_LEN);
            return KS_REG_NEW;
        }
    }
    for (size_t i = 0; i < r->n_old; i++)
        if (CRYPTO_memcmp(r->old[i].kcv, kcv, KS_KCV_LEN) == 0) {
            if (out)
                memcpy(out, r->old[i].key, KS_MK_LEN);
            return KS_REG_OLD + (int)i;
        }
    return KS_REG_NONE;
}

/* Optional fields of an "old" line. */
static int parse_fields(const char *s, const char *end, ks_histkey *h)
{
    while (s < end) {
        if (*s++ != ' ')
            return -1;
        const char *tok = s;
        while (s < end && *s != ' ')
            s++;
        size_t n = (size_t)(s - tok);
        char num[24];
        if (n == 7 && memcmp(tok, "aborted", 7) == 0) {
            h->aborted = true;
            continue;
        }
        const char *eq = memchr(tok, '=', n);
        size_t vl = eq ? n - (size_t)(eq + 1 - tok) : 0;
        if (!eq || vl == 0 || vl >= sizeof(num))
            return -1;
        memcpy(num, eq + 1, vl);
        num[vl] = '\0';
        char *e;
        errno = 0;
        unsigned long long v = strtoull(num, &e, 10);
        if (errno || *e || num[0] == '-' || num[0] == '+')
            return -1;
        if ((size_t)(eq - tok) == 5 && memcmp(tok, "epoch", 5) == 0 && v <= UINT32_MAX)
            h->epoch = (uint32_t)v;
        else if ((size_t)(eq - tok) == 7 && memcmp(tok, "retired", 7) == 0)
            h->retired = v;
        else
            return -1;
    }
    return 0;
}

static int reg_parse(const char *path, unsigned mode, const char *text, size_t len, ks_registers *r, ks_err *err)
{
    uint8_t key[KS_MK_LEN], sum[32], want[8];
    size_t sumlen = 0, body = 0;
    bool have_current = false, have_check = false, v2 = false;
    int lineno = 0;
    const char *p = text, *end = text + len;

    if (len == KS_MK_LEN) { /* the first format: 32 raw bytes, CURRENT only */
        reg_key(&r->current, (const uint8_t *)text, path, mode);
        return KS_OK;
    }
    if (len < sizeof(REG_MAGIC) || memchr(text, '\0', len))
        goto bad;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p)), *le = nl ? nl : end;
        lineno++;
        if (have_check)
            goto bad; /* nothing may follow the checksum */
        int tag = id_line(p, le, "keystore", r->owner, sizeof(r->owner), &r->has_owner);
        if (tag == 0)
            tag = id_line(p, le, "made-for", r->made_for, sizeof(r->made_for), &r->has_made_for);
        if (tag < 0)
            goto bad;
        if (tag > 0) {
            /* an identity line, read once */
        } else if (le == p || *p == '#') {
            /* blank line or comment */
        } else if ((size_t)(le - p) == strlen(REG_MAGIC) && lineno <= 2 &&
                   (memcmp(p, REG_MAGIC, (size_t)(le - p)) == 0 || memcmp(p, REG_MAGIC_V1, (size_t)(le - p)) == 0)) {
            v2 = p[strlen(REG_MAGIC) - 1] == '2';
        } else if (le - p > 6 && memcmp(p, "check ", 6) == 0) {
            body = (size_t)(p - text);
            if (parse_hex(p + 6, le, want, sizeof(want)) != 0 || le != p + 6 + 2 * sizeof(want))
                goto bad;
            have_check = true;
        } else {
            const char *sp = memchr(p, ' ', (size_t)(le - p));
            if (!sp || parse_hex(sp + 1, le, key, KS_MK_LEN) != 0)
                goto bad;
            const char *rest = sp + 1 + 2 * KS_MK_LEN;
            size_t rl = (size_t)(sp - p);
            if (rl == 7 && memcmp(p, "current", 7) == 0 && !have_current && rest == le) {
                reg_key(&r->current, key, path, mode);
                have_current = true;
            } else if (rl == 3 && memcmp(p, "new", 3) == 0 && !r->has_new && rest == le) {
                reg_key(&r->staged, key, path, mode);
                r->has_new = true;
            } else if (rl == 3 && memcmp(p, "old", 3) == 0 && (v2 || rest == le)) {
                ks_histkey h = {0};
                if (parse_fields(rest, le, &h) != 0 ||
                    ks_reg_insert_old(r, r->n_old, key, h.epoch, h.retired, h.aborted) != KS_OK)
                    goto bad;
            } else {
                goto bad;
            }
        }
        p = nl ? nl + 1 : end;
    }
    OPENSSL_cleanse(key, sizeof(key));
    if (!have_current || !have_check)
        goto bad;
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

static int reg_load_impl(const char *path, unsigned allowed_mode, ks_registers *r, ks_err *err)
{
    struct stat sb;
    char *buf = NULL;
    size_t got = 0;
    int fd, rc;

    memset(r, 0, sizeof(*r));
    if (!allowed_mode)
        allowed_mode = 0600;
    /* Non-blocking: a FIFO planted where the key file belongs must not hang us. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP)
            ks_err_set(err, "master key file %s is a symbolic link; name the file itself in the configuration",
                       path);
        else
            ks_err_set(err, "cannot open master key file %s: %s (set master_key in the configuration, or create "
                            "one with: p11mk-admin init --generate-key %s)", path, strerror(e), path);
        return e == EACCES ? KS_EPERM : e == ENOENT ? KS_ENOTFOUND : KS_EINVAL;
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
    if (sb.st_size > (off_t)REG_FILE_MAX) {
        ks_err_set(err, "master key file %s is too large (%lld bytes) to be p11mk registers", path,
                   (long long)sb.st_size);
        close(fd);
        return KS_EINVAL;
    }
    size_t cap = (size_t)sb.st_size + 1;
    if (!(buf = ks_secmem_alloc(cap))) {
        close(fd);
        return KS_ENOMEM;
    }
    for (;;) { /* the file is replaced, never rewritten in place: st_size holds */
        ssize_t n = read(fd, buf + got, cap - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (got += (size_t)n) >= cap)
            break;
    }
    close(fd);
    if (got != (size_t)sb.st_size) {
        ks_secmem_free(buf);
        ks_err_set(err, "master key file %s cannot be read (%s)", path, got > (size_t)sb.st_size ? "it grew while "
                   "being read" : "short read");
        return KS_EINVAL;
    }
    if (got != KS_MK_LEN && got < sizeof(REG_MAGIC)) {
        ks_secmem_free(buf);
        ks_err_set(err, "master key file %s must hold exactly %d bytes or p11mk registers, it holds %zu bytes; "
                        "it is truncated or not a p11mk key file", path, KS_MK_LEN, got);
        return KS_EINVAL;
    }
    rc = reg_parse(path, allowed_mode, buf, got, r, err);
    ks_secmem_free(buf);
    return rc;
}

/* Append "role hex[ tail]\n"; -1 when it does not fit. */
static int append(char *buf, size_t cap, size_t *len, const char *role, const uint8_t *key, const char *tail)
{
    char hex[2 * KS_MK_LEN + 1];
    int n;
    ks_hex(key, KS_MK_LEN, hex);
    n = snprintf(buf + *len, cap - *len, "%s %s%s\n", role, hex, tail);
    OPENSSL_cleanse(hex, sizeof(hex));
    if (n < 0 || (size_t)n >= cap - *len)
        return -1;
    *len += (size_t)n;
    return 0;
}

static int reg_save_impl(const char *path, const ks_registers *r, bool create, ks_err *err)
{
    char tmp[4200], hex[17], tail[96];
    uint8_t sum[32];
    size_t len = 0, sumlen = 0, cap = 256 + (3 + r->n_old) * (2 * KS_MK_LEN + sizeof(tail));
    struct stat old;
    int fd, rc = KS_OK, e = 0;
    char *buf = ks_secmem_alloc(cap);

    if (!buf)
        return KS_ENOMEM;
    len = (size_t)snprintf(buf, cap, "# p11mk master-key registers: secret, keep mode 0600\n" REG_MAGIC "\n");
    if (r->has_owner)
        put_id_line(buf, cap, &len, "keystore", r->owner, sizeof(r->owner));
    if (r->has_made_for)
        put_id_line(buf, cap, &len, "made-for", r->made_for, sizeof(r->made_for));
    int bad = append(buf, cap, &len, "current", r->current.key, "");
    if (r->has_new)
        bad |= append(buf, cap, &len, "new", r->staged.key, "");
    for (size_t i = 0; i < r->n_old; i++) {
        snprintf(tail, sizeof(tail), " epoch=%" PRIu32 " retired=%" PRIu64 "%s", r->old[i].epoch, r->old[i].retired,
                 r->old[i].aborted ? " aborted" : "");
        bad |= append(buf, cap, &len, "old", r->old[i].key, tail);
    }
    if (bad || !EVP_Q_digest(ks_libctx(), "SHA256", NULL, buf, len, sum, &sumlen) || len + 32 > cap) {
        ks_secmem_free(buf);
        ks_err_set(err, "cannot encode the registers for %s", path);
        return KS_EIO;
    }
    ks_hex(sum, 8, hex);
    len += (size_t)snprintf(buf + len, cap - len, "check %s\n", hex);

    /* Keep the owner, group and mode of the file being replaced (a system
     * keystore's key file belongs to its service user, perhaps group-readable
     * as key_file_mode allows, perhaps read-only: it is replaced, never
     * written in place); never more than 0640, always readable by its
     * owner; a new file is 0600 and ours. */
    bool have_old = lstat(path, &old) == 0 && S_ISREG(old.st_mode);
    mode_t mode = have_old ? (old.st_mode & 0640) | 0400 : 0600;
    /* A new file is written under a name of this process's own and linked
     * into place, which fails if another writer's file got there first. */
    if (snprintf(tmp, sizeof(tmp), create ? "%s.new.%ld" : "%s.tmp", path, (long)getpid()) >= (int)sizeof(tmp)) {
        ks_secmem_free(buf);
        return KS_EINVAL;
    }
    (void)unlink(tmp); /* left by a writer that was killed */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        e = errno;
        ks_err_set(err, "cannot write master key file %s: %s; the previous file is unchanged%s", tmp, strerror(e),
                   e == EEXIST || e == ELOOP ? " (something that is not a file p11mk wrote is in the way: "
                                               "move it away, then run the command again)"
                                             : "");
        ks_secmem_free(buf);
        return e == ENOSPC || e == EDQUOT ? KS_ENOSPC : KS_EIO;
    }
    if (have_old && geteuid() == 0 && (old.st_uid != 0 || old.st_gid != 0))
        (void)fchown(fd, old.st_uid, old.st_gid);
    size_t off = 0;
    while (rc == KS_OK && off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = n < 0 ? errno : EIO;
            rc = KS_EIO;
        } else {
            off += (size_t)n;
        }
    }
    if (rc == KS_OK && (fchmod(fd, mode) != 0 || fsync(fd) != 0)) {
        e = errno;
        rc = KS_EIO;
    }
    if (close(fd) != 0 && rc == KS_OK) {
        e = errno;
        rc = KS_EIO;
    }
    ks_secmem_free(buf);
    if (rc == KS_OK && (create ? link(tmp, path) : rename(tmp, path)) != 0) {
        e = errno;
        rc = create && e == EEXIST ? KS_EEXIST : KS_EIO;
    }
    if (create || rc != KS_OK)
        unlink(tmp);
    if (rc == KS_EEXIST) {
        ks_err_set(err, "%s was made by another writer meanwhile; nothing was written", path);
        return rc;
    }
    if (rc != KS_OK) {
        ks_err_set(err, "cannot write master key file %s: %s; the previous file is unchanged", path, strerror(e));
        return e == ENOSPC || e == EDQUOT ? KS_ENOSPC : rc;
    }
    ks_fsync_parent(path);
    return KS_OK;
}

bool ks_reg_holds_current(const ks_registers *r, const uint8_t kcv[KS_KCV_LEN])
{
    uint8_t k[KS_KCV_LEN];
    ks_mkey_kcv(&r->current, k);
    if (CRYPTO_memcmp(k, kcv, KS_KCV_LEN) == 0)
        return true;
    if (!r->has_new)
        return false;
    ks_mkey_kcv(&r->staged, k);
    return CRYPTO_memcmp(k, kcv, KS_KCV_LEN) == 0;
}

uint32_t ks_reg_max_epoch(const ks_registers *r)
{
    uint32_t max = 0;
    for (size_t i = 0; r && i < r->n_old; i++)
        if (!r->old[i].aborted && r->old[i].epoch > max)
            max = r->old[i].epoch;
    return max;
}

static int mkey_load_impl(const ks_config *cfg, ks_mkey *mk, ks_err *err)
{
    ks_registers r;
    int rc;

    char *home;

    if (!cfg || !mk)
        return KS_EINVAL;
    if (!cfg->master_key || strcmp(cfg->master_key, "default") == 0) {
        ks_mkey_default(mk);
    } else {
        rc = ks_reg_load(cfg->master_key, cfg->key_file_mode ? cfg->key_file_mode : 0600, &r, err);
        if (rc == KS_OK)
            *mk = r.current;
        ks_reg_clear(&r);
        if (rc != KS_OK)
            return rc;
    }
    if ((home = ks_config_home(cfg))) {
        snprintf(mk->config, sizeof(mk->config), "%s", home);
        free(home);
    }
    return KS_OK;
}

int ks_reg_load(const char *path, unsigned allowed_mode, ks_registers *r, ks_err *err)
{
    return ks_err_in(err, KS_AREA_KEY, reg_load_impl(path, allowed_mode, r, err));
}

int ks_reg_save(const char *path, const ks_registers *r, ks_err *err)
{
    return ks_err_in(err, KS_AREA_KEY, reg_save_impl(path, r, false, err));
}

int ks_reg_create(const char *path, const ks_registers *r, ks_err *err)
{
    return ks_err_in(err, KS_AREA_KEY, reg_save_impl(path, r, true, err));
}

int ks_mkey_load(const ks_config *cfg, ks_mkey *mk, ks_err *err)
{
    return ks_err_in(err, KS_AREA_KEY, mkey_load_impl(cfg, mk, err));
}
