/* p11mk keystore: the hosts that share one keystore's storage (a fleet).
 *
 * Each host keeps its own key file (its registers), as on one machine. In
 * the storage, each host has a row naming the master keys its key file
 * holds (CURRENT, and NEW while one is staged), written whenever p11mk opens
 * the keystore there and after each lifecycle step; the storage's clock
 * stamps it (last contact).
 *
 * A claim is a proof, not a word: for each key, HMAC-SHA256 keyed with the
 * key itself over ("p11mk host key v1", keystore id, host name). Only a
 * holder of the key can make it, and this host checks it with its own copy.
 * So whoever can write the database can delete rows or replay a host's own
 * old rows (at worst refusing a rewrap or commit that was safe, or letting
 * one pass for a host that has since lost a key it really held), but cannot
 * make a host appear to hold a key it never held.
 *
 * The rules that use the rows (ks_lifecycle.c): rewrap and commit refuse
 * while any host of the fleet has not proven NEW; status lists them. */
#include "ks_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define ROW_VERSION 1
#define PROOF_LEN 32
#define ENTRY_LEN (KS_KCV_LEN + PROOF_LEN)

static const char proof_label[] = "p11mk host key v1";

static int proof(const ks_mkey *k, const uint8_t ksid[KS_KSID_LEN], const char *name, uint8_t out[PROOF_LEN])
{
    size_t nl = strlen(name);
    size_t ml = sizeof(proof_label) + KS_KSID_LEN + nl;
    uint8_t *m = malloc(ml);
    unsigned int ol = 0;
    if (!m)
        return KS_ENOMEM;
    memcpy(m, proof_label, sizeof(proof_label)); /* with its NUL: the label ends where it should */
    memcpy(m + sizeof(proof_label), ksid, KS_KSID_LEN);
    memcpy(m + sizeof(proof_label) + KS_KSID_LEN, name, nl);
    bool ok = HMAC(EVP_sha256(), k->key, KS_MK_LEN, m, ml, out, &ol) != NULL && ol == PROOF_LEN;
    free(m);
    return ok ? KS_OK : KS_EIO;
}

bool ks_fleet_shared(ks_store *st) { return st && st->ops->host_put; }

/* This installation's id: DIR/host.id (32 hex digits, made once, 0600). Two
 * machines configured with the same host_name have different ids, so one
 * cannot take the other's row (and its claims) by its name. */
static int install_id(ks_store *st, uint8_t id[16])
{
    char p[4200], hex[33];
    snprintf(p, sizeof(p), "%s/host.id", st->path);
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd >= 0) {
            struct stat sb;
            ssize_t n = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) ? read(fd, hex, 32) : -1;
            close(fd);
            hex[n > 0 ? n : 0] = '\0';
            for (int i = 0; n == 32 && i < 16; i++) {
                unsigned b;
                if (sscanf(hex + 2 * i, "%2x", &b) != 1) {
                    n = -1;
                    break;
                }
                id[i] = (uint8_t)b;
            }
            if (n == 32)
                return KS_OK;
            ks_log(KS_LOG_ERROR, "%s is not a host id (32 hex digits); remove it to make a new one", p);
            return KS_ECORRUPT;
        }
        if (errno != ENOENT)
            return KS_EIO;
        uint8_t r[16];
        if (RAND_bytes(r, sizeof(r)) != 1)
            return KS_EIO;
        for (int i = 0; i < 16; i++)
            snprintf(hex + 2 * i, 3, "%02x", r[i]);
        hex[32] = '\n';
        /* Written in full under a name of its own, then linked into place:
         * created at its name with O_EXCL and written after, it could be read
         * empty by another process starting at the same time (or left empty
         * by a kill between the two), which then reported it damaged and told
         * the administrator to remove it (a new id, so a second row for this
         * host). link() fails with EEXIST when another process won. */
        char tmp[4200];
        snprintf(tmp, sizeof(tmp), "%s/.host.id.XXXXXX", st->path);
        fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 */
        if (fd < 0)
            return KS_EIO;
        bool ok = write(fd, hex, 33) == 33 && fsync(fd) == 0;
        close(fd);
        int le = ok && link(tmp, p) != 0 ? errno : 0;
        unlink(tmp);
        if (!ok || (le != 0 && le != EEXIST))
            return KS_EIO;
        if (le == 0) {
            int dfd = open(st->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                (void)fsync(dfd); /* the name survives a crash: else a new id, and a second row */
                close(dfd);
            }
        }
        /* made here or by another process meanwhile: read it */
    }
    return KS_EIO;
}

int ks_fleet_announce(ks_store *st, const char *name, const ks_mkey *const *keys, size_t n)
{
    uint8_t row[2 + KS_FLEET_MAX_KEYS * ENTRY_LEN];
    if (!ks_fleet_shared(st) || st->rdonly)
        return KS_OK;
    if (!name || !*name || n > KS_FLEET_MAX_KEYS)
        return KS_EINVAL;
    row[0] = ROW_VERSION;
    row[1] = (uint8_t)n;
    for (size_t i = 0; i < n; i++) {
        uint8_t *e = row + 2 + i * ENTRY_LEN;
        ks_mkey_kcv(keys[i], e);
        int rc = proof(keys[i], st->ksid, name, e + KS_KCV_LEN);
        if (rc != KS_OK)
            return rc;
    }
    uint8_t id[16];
    int rc = install_id(st, id);
    if (rc == KS_OK)
        rc = st->ops->host_put(st->be, name, id, row, 2 + n * ENTRY_LEN);
    if (rc == KS_EEXIST) {
        /* Another machine has this name. Recorded under a name of its own
         * (name#id), so that rewrap and commit wait for this host too and
         * status shows both, never taking the other's row. */
        char alt[300];
        snprintf(alt, sizeof(alt), "%s#%02x%02x%02x%02x", name, id[0], id[1], id[2], id[3]);
        ks_log(KS_LOG_ERROR, "keystore %s: another machine already uses host_name %s in this keystore's fleet; this "
               "one is recorded as %s. Give each host its own host_name (p11mk.conf), then take the old name out "
               "with 'p11mk-admin host-remove %s'", st->path, name, alt, alt);
        rc = st->ops->host_put(st->be, alt, id, row, 2 + n * ENTRY_LEN);
    }
    if (rc != KS_OK)
        ks_log(KS_LOG_WARN, "keystore %s: cannot record which master keys host %s holds: %s", st->path, name,
               ks_strerror(rc));
    return rc;
}

/* Does the row prove the key? */
static bool row_proves(ks_store *st, const ks_host_row *h, const ks_mkey *k)
{
    uint8_t kcv[KS_KCV_LEN], want[PROOF_LEN];
    if (!k || h->v.n < 2 || h->v.p[0] != ROW_VERSION || h->v.n != 2 + (size_t)h->v.p[1] * ENTRY_LEN)
        return false;
    ks_mkey_kcv(k, kcv);
    if (proof(k, st->ksid, h->name, want) != KS_OK)
        return false;
    bool ok = false;
    for (size_t i = 0; i < h->v.p[1]; i++) {
        const uint8_t *e = h->v.p + 2 + i * ENTRY_LEN;
        if (CRYPTO_memcmp(e, kcv, KS_KCV_LEN) == 0 && CRYPTO_memcmp(e + KS_KCV_LEN, want, PROOF_LEN) == 0)
            ok = true;
    }
    OPENSSL_cleanse(want, sizeof(want));
    return ok;
}

int ks_fleet_list(ks_store *st, const ks_mkey *cur, const ks_mkey *nxt, ks_host **out, size_t *n)
{
    ks_host_row *rows = NULL;
    size_t nr = 0;
    *out = NULL;
    *n = 0;
    if (!ks_fleet_shared(st))
        return KS_OK;
    int rc = st->ops->host_list(st->be, &rows, &nr);
    if (rc != KS_OK)
        return rc;
    ks_host *h = calloc(nr ? nr : 1, sizeof(*h));
    if (!h) {
        free(rows);
        return KS_ENOMEM;
    }
    for (size_t i = 0; i < nr; i++) {
        snprintf(h[i].name, sizeof(h[i].name), "%s", rows[i].name);
        h[i].seen = rows[i].seen;
        const ks_bval *v = &rows[i].v;
        if (v->n >= 2 && v->p[0] == ROW_VERSION && v->n == 2 + (size_t)v->p[1] * ENTRY_LEN) {
            h[i].n_kcv = v->p[1] < KS_FLEET_MAX_KEYS ? v->p[1] : KS_FLEET_MAX_KEYS;
            for (size_t j = 0; j < h[i].n_kcv; j++)
                memcpy(h[i].kcv[j], v->p + 2 + j * ENTRY_LEN, KS_KCV_LEN);
        } else {
            h[i].malformed = true;
        }
        h[i].has_current = row_proves(st, &rows[i], cur);
        h[i].has_new = row_proves(st, &rows[i], nxt);
    }
    free(rows);
    *out = h;
    *n = nr;
    return KS_OK;
}

int ks_fleet_remove(ks_store *st, const char *name)
{
    if (!ks_fleet_shared(st))
        return KS_ENOTFOUND;
    return st->ops->host_del(st->be, name);
}

const char *ks_host_name(const ks_config *cfg, char *buf, size_t n)
{
    if (cfg && cfg->host_name)
        snprintf(buf, n, "%s", cfg->host_name);
    else if (gethostname(buf, n) != 0 || !buf[0])
        snprintf(buf, n, "localhost");
    buf[n - 1] = '\0';
    return buf;
}

int ks_fleet_announce_cfg(ks_store *st, const ks_config *cfg)
{
    char name[256];
    ks_registers r;
    ks_mkey d;
    int rc;
    if (!ks_fleet_shared(st) || st->rdonly)
        return KS_OK;
    ks_host_name(cfg, name, sizeof(name));
    if (!cfg->master_key || strcmp(cfg->master_key, "default") == 0) {
        const ks_mkey *k[1] = {&d};
        ks_mkey_default(&d);
        rc = ks_fleet_announce(st, name, k, 1);
        ks_mkey_clear(&d);
        return rc;
    }
    ks_err e = KS_ERR_INIT;
    memset(&r, 0, sizeof(r));
    if ((rc = ks_reg_load(cfg->master_key, cfg->key_file_mode ? cfg->key_file_mode : 0600, &r, &e)) != KS_OK)
        return rc;
    const ks_mkey *k[2] = {&r.current, &r.staged};
    rc = ks_fleet_announce(st, name, k, r.has_new ? 2 : 1);
    ks_reg_clear(&r);
    return rc;
}
