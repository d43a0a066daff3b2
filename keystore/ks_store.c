/* p11mk keystore: the store (one per keystore per process), transactions,
 * tokens, objects and keyed attribute indexes, on a storage backend
 * (ks_backend.h; LMDB: ks_lmdb.c).
 *
 * Layout (the backend's tables):
 *   meta     "format" BE32, "ksid" 16 bytes, "epoch" BE32,
 *            "kcv" BE32(epoch) -> 8 bytes, "idxkey" sealed, "next_oid" BE64
 *   tokens   token(BE32)            -> sealed token record
 *   objects  token(BE32) oid(BE64)  -> sealed object record
 *   index    token(BE32) mac(16)    -> oid(BE64) (DUPSORT|DUPFIXED) */
#include "ks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* ---- registry: one environment per keystore per process ----------------- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static ks_store *registry;
static pid_t registry_pid;

static void ring_unref(ks_keyring *r);

static void store_free(ks_store *st)
{
    if (!st)
        return;
    if (st->be)
        st->ops->close(st->be);
    if (st->users_fd >= 0)
        close(st->users_fd);
    EVP_MAC_CTX_free(st->idx_mac);
    for (int i = 0; i < KS_IDX_SPARE; i++)
        EVP_MAC_CTX_free(atomic_exchange(&st->idx_spare[i], NULL));
    ring_unref(st->ring);
    ks_secmem_free(st->extra);
    ks_meta_free(&st->meta_cache);
    pthread_mutex_destroy(&st->meta_lock);
    pthread_mutex_destroy(&st->ring_lock);
    free(st->path);
    OPENSSL_cleanse(st, sizeof(*st));
    free(st);
}

/* Create the metadata of a new keystore (inside a write txn). */
static int init_meta(ks_store *st, ks_btxn *t, const ks_mkey *mk)
{
    uint8_t ksid[KS_KSID_LEN], be[8], kcv[KS_KCV_LEN], idxkey[32], reckey[32];
    uint8_t *rec = NULL;
    size_t reclen = 0;
    ks_txn x = {.st = st, .bt = t, .write = true};
    ks_meta m = {.rs = {.state = KS_ROT_IDLE, .cur = 1, .format = KS_FORMAT_VERSION, .gen = 1, .next_oid = 1,
                        .toknext = 1}};
    int rc;
    ks_bval v;

    rc = ks_meta_get(t, st, "format", NULL, 0, &v);
    if (rc == KS_OK)
        return KS_OK; /* another process created it first */
    if (rc != KS_ENOTFOUND)
        return rc; /* not known to be absent: nothing is written */
    if (RAND_bytes_ex(ks_libctx(), ksid, sizeof(ksid), 0) != 1 || RAND_bytes_ex(ks_libctx(), idxkey, sizeof(idxkey), 0) != 1)
        return KS_EIO;
    memcpy(st->ksid, ksid, sizeof(ksid));
    ks_mkey_kcv(mk, kcv);
    memcpy(m.rs.cur_kcv, kcv, KS_KCV_LEN);
    rc = ks_rec_key(mk, ksid, 1, reckey);
    if (rc == KS_OK)
        rc = ks_rec_seal(reckey, ksid, KS_KIND_META, 1, 0, 0, idxkey, sizeof(idxkey), &rec, &reclen);
    OPENSSL_cleanse(idxkey, sizeof(idxkey));
    if (rc != KS_OK)
        goto out;
    ks_be32(be, KS_FORMAT_VERSION);
    if (!(rc = ks_meta_put(&x, "format", NULL, 0, be, 4)) && !(rc = ks_meta_put(&x, "ksid", NULL, 0, ksid, 16))) {
        ks_be32(be, 1);
        if (!(rc = ks_meta_put(&x, "epoch", NULL, 0, be, 4)) && !(rc = ks_meta_put(&x, "kcv", be, 4, kcv, 8)) &&
            !(rc = ks_meta_put(&x, "idxkey", NULL, 0, rec, reclen))) {
            ks_be64(be, 1);
            if (!(rc = ks_meta_put(&x, "gen", NULL, 0, be, 8)))
                rc = ks_state_write(&x, &m, reckey);
        }
    }
    if (x.retry)
        rc = KS_BE_RETRY;
out:
    OPENSSL_cleanse(reckey, sizeof(reckey));
    ks_buf_free(rec, reclen);
    return rc;
}

/* ---- keys ---------------------------------------------------------------- */

static void ring_unref(ks_keyring *r)
{
    if (r && atomic_fetch_sub(&r->refs, 1) == 1)
        ks_secmem_free(r);
}

int ks_store_add_key(ks_store *st, const ks_mkey *mk)
{
    for (size_t i = 0; i < st->nextra; i++)
        if (CRYPTO_memcmp(st->extra[i].key, mk->key, KS_MK_LEN) == 0)
            return KS_OK;
    if (st->nextra == st->cap_extra) {
        size_t cap = st->cap_extra ? 2 * st->cap_extra : 4;
        ks_mkey *n = ks_secmem_alloc(cap * sizeof(*n));
        if (!n)
            return KS_ENOMEM;
        if (st->nextra)
            memcpy(n, st->extra, st->nextra * sizeof(*n));
        ks_secmem_free(st->extra);
        st->extra = n;
        st->cap_extra = cap;
    }
    st->extra[st->nextra++] = *mk;
    return KS_OK;
}

/* Keys handed to this process that the new generation does not use are
 * dropped once a key file can give them back: a process that lives through
 * any number of rotations holds two master keys, not one per rotation. */
static void extra_prune(ks_store *st, const ks_keyring *r)
{
    if (!st->keysrc[0])
        return;
    for (size_t i = 0; i < st->nextra;) {
        uint8_t k[KS_KCV_LEN];
        ks_mkey_kcv(&st->extra[i], k);
        bool used = (r->have_cur && CRYPTO_memcmp(k, r->cur_kcv, KS_KCV_LEN) == 0) ||
                    (r->have_nxt && CRYPTO_memcmp(k, r->nxt_kcv, KS_KCV_LEN) == 0);
        if (used) {
            i++;
            continue;
        }
        st->extra[i] = st->extra[st->nextra - 1];
        ks_mkey_clear(&st->extra[--st->nextra]);
    }
}

void ks_store_set_keysrc(ks_store *st, const char *path, unsigned mode)
{
    pthread_mutex_lock(&st->ring_lock);
    snprintf(st->keysrc, sizeof(st->keysrc), "%s", path ? path : "");
    st->keymode = mode ? mode : 0600;
    pthread_mutex_unlock(&st->ring_lock);
}

/* The configuration may have gained a key file since this process started
 * (the first rotation of a keystore on the default key creates one). Only
 * the file the opener named (ks_mkey.config) is read, never the lookup
 * order again: what this process was configured with stays its input. */
static void keysrc_from_config(ks_store *st)
{
    ks_config cfg;
    ks_err e = KS_ERR_INIT;
    char a[PATH_MAX], b[PATH_MAX];
    if (!st->conf[0] || access(st->conf, F_OK) != 0 || ks_config_load_file(&cfg, st->conf, &e) != KS_OK)
        return;
    if (cfg.keystore && cfg.master_key && strcmp(cfg.master_key, "default") != 0 && realpath(cfg.keystore, a) &&
        realpath(st->path, b) && strcmp(a, b) == 0 && strcmp(cfg.master_key, st->keysrc) != 0) {
        snprintf(st->keysrc, sizeof(st->keysrc), "%s", cfg.master_key);
        st->keymode = cfg.key_file_mode ? cfg.key_file_mode : 0600;
        ks_log(KS_LOG_INFO, "keystore %s: master keys are now read from %s", st->path, st->keysrc);
    }
    ks_config_free(&cfg);
}

bool ks_find_key(ks_store *st, const uint8_t kcv[KS_KCV_LEN], uint8_t out[KS_MK_LEN])
{
    const ks_keyring *r = st->ring;
    uint8_t k[KS_KCV_LEN];

    if (r && r->have_cur && CRYPTO_memcmp(r->cur_kcv, kcv, KS_KCV_LEN) == 0) {
        memcpy(out, r->cur_mk, KS_MK_LEN);
        return true;
    }
    if (r && r->have_nxt && CRYPTO_memcmp(r->nxt_kcv, kcv, KS_KCV_LEN) == 0) {
        memcpy(out, r->nxt_mk, KS_MK_LEN);
        return true;
    }
    for (size_t i = 0; i < st->nextra; i++) {
        ks_mkey_kcv(&st->extra[i], k);
        if (CRYPTO_memcmp(k, kcv, KS_KCV_LEN) == 0) {
            memcpy(out, st->extra[i].key, KS_MK_LEN);
            return true;
        }
    }
    keysrc_from_config(st);
    if (!st->keysrc[0])
        return false;
    ks_registers regs;
    ks_err e = KS_ERR_INIT;
    int rc = ks_reg_load(st->keysrc, st->keymode, &regs, &e);
    if (rc != KS_OK) {
        ks_log(KS_LOG_ERROR, "keystore %s: cannot read the master keys: %s", st->path, e.msg);
        return false;
    }
    bool found = ks_reg_find(&regs, kcv, out) != KS_REG_NONE;
    ks_reg_clear(&regs);
    return found;
}

/* The key this process was configured with, for messages: "source (kcv)". */
static void configured_key(ks_store *st, char *src, size_t srclen, char kcvhex[2 * KS_KCV_LEN + 1])
{
    uint8_t k[KS_KCV_LEN];
    ks_registers regs;
    ks_err e = KS_ERR_INIT;
    snprintf(src, srclen, "none");
    snprintf(kcvhex, 2 * KS_KCV_LEN + 1, "none");
    if (st->keysrc[0] && ks_reg_load(st->keysrc, st->keymode, &regs, &e) == KS_OK) {
        snprintf(src, srclen, "%s", st->keysrc);
        ks_mkey_kcv(&regs.current, k);
        ks_kcv_hex(k, kcvhex);
        ks_reg_clear(&regs);
    } else if (st->nextra) {
        snprintf(src, srclen, "%s", st->extra[0].source);
        ks_mkey_kcv(&st->extra[0], k);
        ks_kcv_hex(k, kcvhex);
    }
}

static int epoch_key(ks_store *st, ks_btxn *t, uint32_t epoch, uint8_t kcv[KS_KCV_LEN], uint8_t mk_out[KS_MK_LEN],
                     uint8_t key[32], bool *have)
{
    uint8_t be[4];
    ks_bval v;
    ks_mkey mk;
    ks_be32(be, epoch);
    int grc = ks_meta_get(t, st, "kcv", be, 4, &v);
    if (ks_read_failed(grc))
        return grc; /* not read: no evidence of damage */
    if (grc != KS_OK || v.n != KS_KCV_LEN)
        return KS_ECORRUPT;
    memcpy(kcv, v.p, KS_KCV_LEN);
    memset(&mk, 0, sizeof(mk));
    *have = ks_find_key(st, kcv, mk.key);
    int rc = *have ? ks_rec_key(&mk, st->ksid, epoch, key) : KS_OK;
    if (*have)
        memcpy(mk_out, mk.key, KS_MK_LEN);
    ks_mkey_clear(&mk);
    return rc;
}

/* Does master key mk open the sealed rotation state of epoch `epoch`? The
 * AEAD proves it the epoch's key: KS_OK with *rs, the record key and the
 * check value filled; KS_ENOTFOUND when it does not open it, or opens a
 * state that names another key; a read failure as such. */
static int try_sealed(ks_store *st, ks_btxn *t, uint32_t epoch, const uint8_t mk[KS_MK_LEN], ks_rotstate *rs,
                      uint8_t key[32], uint8_t kcv[KS_KCV_LEN])
{
    ks_mkey m;
    int rc;

    memset(&m, 0, sizeof(m));
    memcpy(m.key, mk, KS_MK_LEN);
    ks_mkey_kcv(&m, kcv);
    rc = ks_rec_key(&m, st->ksid, epoch, key);
    ks_mkey_clear(&m);
    if (rc == KS_OK)
        rc = ks_state_load(t, st, epoch, key, rs);
    if (rc == KS_OK && !rs->legacy && CRYPTO_memcmp(rs->cur_kcv, kcv, KS_KCV_LEN) != 0)
        rc = KS_ENOTFOUND;
    if (rc != KS_OK && !ks_read_failed(rc)) {
        OPENSSL_cleanse(key, 32);
        rc = KS_ENOTFOUND;
    }
    return rc;
}

/* The plain check value of the current epoch is missing, malformed, names
 * no key this process has, or names one that does not open the sealed
 * state: each key this process has (the key file's registers, the keys it
 * was opened with) is tried on the sealed state itself. One that opens it is
 * the epoch's key: the plain record was edited or damaged, which is logged
 * (with what to do) and not acted on; the keys come from the sealed state,
 * as the staged epoch's do. KS_OK with r's current key and state filled,
 * KS_ENOTFOUND (no key opens it: the key is wrong, or the state damaged), or
 * a read failure. plain_read: r->cur_kcv holds the plain record's value. */
static int cur_from_sealed(ks_store *st, ks_btxn *t, ks_keyring *r, bool plain_read)
{
    ks_registers regs;
    ks_err e = KS_ERR_INIT;
    const uint8_t *cand[64];
    size_t n = 0;
    bool have_regs = false;
    int rc = KS_ENOTFOUND;
    uint8_t key[32], kcv[KS_KCV_LEN];
    uint32_t epoch = r->rs.cur;
    ks_rotstate rs; /* into r->rs only once a key opened it */

    memset(&regs, 0, sizeof(regs));
    for (size_t i = 0; i < st->nextra && n < 64; i++)
        cand[n++] = st->extra[i].key;
    keysrc_from_config(st);
    if (st->keysrc[0] && ks_reg_load(st->keysrc, st->keymode, &regs, &e) == KS_OK)
        have_regs = true;
    size_t nreg = have_regs ? 1 + (regs.has_new ? 1 : 0) + regs.n_old : 0;
    for (size_t i = 0; i < nreg && rc == KS_ENOTFOUND; i++) {
        const uint8_t *mk = i == 0 ? regs.current.key
                            : regs.has_new && i == 1 ? regs.staged.key
                                                     : regs.old[i - 1 - (regs.has_new ? 1 : 0)].key;
        rc = try_sealed(st, t, epoch, mk, &rs, key, kcv);
        if (rc == KS_OK)
            memcpy(r->cur_mk, mk, KS_MK_LEN);
    }
    for (size_t i = 0; i < n && rc == KS_ENOTFOUND; i++) {
        rc = try_sealed(st, t, epoch, cand[i], &rs, key, kcv);
        if (rc == KS_OK)
            memcpy(r->cur_mk, cand[i], KS_MK_LEN);
    }
    if (have_regs)
        ks_reg_clear(&regs);
    if (rc == KS_OK) {
        char plain[2 * KS_KCV_LEN + 1], sealed[2 * KS_KCV_LEN + 1];
        r->rs = rs;
        ks_kcv_hex(r->cur_kcv, plain);
        ks_kcv_hex(kcv, sealed);
        ks_log(KS_LOG_ERROR, "keystore %s: the plain check value of the current epoch %u (%s) is not the "
               "authenticated one (%s): the metadata was edited or damaged; the current key is taken from the "
               "authenticated state. Check the keystore with 'p11mk-admin verify' and restore it from a backup "
               "if more is damaged", st->path, epoch, plain_read ? plain : "missing or malformed", sealed);
        memcpy(r->cur_kcv, kcv, KS_KCV_LEN);
        memcpy(r->cur_key, key, sizeof(key));
        r->have_cur = true;
    }
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

/* Build the keys for the metadata of this transaction's snapshot. */
static int ring_build(ks_store *st, ks_btxn *t, uint64_t gen, ks_keyring **out, ks_err *err)
{
    ks_keyring *r = ks_secmem_alloc(sizeof(*r));
    ks_bval v;
    int rc;

    if (!r)
        return KS_ENOMEM;
    atomic_init(&r->refs, 1);
    r->gen = gen;
    /* A copy of another keystore restored in this one's place (an online
     * restore of another keystore's backup or export, PostgreSQL): its
     * records are bound to its own id, which this process read when it
     * opened the keystore and its index key with it; it cannot follow. Said
     * as what it is, not as damage. */
    rc = ks_meta_get(t, st, "ksid", NULL, 0, &v);
    if (rc == KS_OK && v.n == KS_KSID_LEN && CRYPTO_memcmp(v.p, st->ksid, KS_KSID_LEN) != 0) {
        ks_err_set(err, "was replaced by a copy of another keystore (a restore of another keystore's backup or "
                        "export) while this process had it open; this process cannot use the copy: restart it (or "
                        "have it call C_Finalize and C_Initialize); nothing was changed");
        rc = KS_EWRONGKEY; /* what this process holds does not open the copy; logged once per generation */
        goto fail;
    }
    rc = ks_meta_get(t, st, "epoch", NULL, 0, &v);
    if (ks_read_failed(rc)) {
        ks_read_error(err, st->path, "its epoch record", rc);
        goto fail;
    }
    if (rc != KS_OK || v.n != 4) {
        rc = KS_ECORRUPT;
        goto fail;
    }
    r->rs.cur = ks_get_be32(v.p);
    rc = epoch_key(st, t, r->rs.cur, r->cur_kcv, r->cur_mk, r->cur_key, &r->have_cur);
    if (ks_read_failed(rc))
        ks_read_error(err, st->path, "the check value of its current epoch", rc);
    bool plain_read = rc == KS_OK, sealed_tried = false;
    if (rc == KS_ECORRUPT || (rc == KS_OK && !r->have_cur)) {
        int prc = cur_from_sealed(st, t, r, plain_read);
        sealed_tried = true;
        if (prc == KS_OK)
            goto state_loaded;
        if (ks_read_failed(prc)) {
            rc = prc;
            ks_read_error(err, st->path, "its rotation state record", rc);
        }
    }
    if (rc != KS_OK)
        goto fail;
    if (!r->have_cur) {
        char want[2 * KS_KCV_LEN + 1], have[2 * KS_KCV_LEN + 1], src[4096];
        ks_kcv_hex(r->cur_kcv, want);
        configured_key(st, src, sizeof(src), have);
        if (st->copy) /* its restore names the file; the copy's history is not this host's to change */
            ks_err_set(err, "it is sealed under a master key with check value %s (epoch %u), which %s (check value "
                            "%s) does not hold, current or retired. Either (1) configure here the master key with "
                            "check value %s, (2) on a host that has it, restore the copy there, change its key to "
                            "this host's ('p11mk-admin set-master-key') and back it up again, or (3) there, export it "
                            "('p11mk-admin export --to-default') and restore that file here",
                       want, r->rs.cur, src, have, want);
        else
            ks_err_set(err, "keystore %s is sealed under a master key with check value %s (epoch %u), but the "
                        "configured master key (%s) has check value %s. Either (1) configure here the master key "
                        "with check value %s, (2) on the host that has that key, change it to this host's key, "
                        "or (3) there, move the keystore through the default key and open that copy here.",
                       st->path, want, r->rs.cur, src, have, want);
        rc = KS_EWRONGKEY;
        goto fail;
    }
    rc = ks_state_load(t, st, r->rs.cur, r->cur_key, &r->rs);
    if (rc != KS_OK && !ks_read_failed(rc) && !sealed_tried) {
        /* The plain check value named a key this process has, but not the
         * one that sealed the state (it was pointed at another). */
        int prc = cur_from_sealed(st, t, r, true);
        if (prc == KS_OK || ks_read_failed(prc))
            rc = prc;
    }
    if (ks_read_failed(rc)) {
        ks_read_error(err, st->path, "its rotation state record", rc);
        goto fail;
    }
    if (rc != KS_OK) {
        ks_err_set(err, "keystore %s: its rotation state record is missing or failed authentication (the "
                        "metadata was edited or damaged); nothing was changed: restore the keystore from a backup",
                   st->path);
        goto fail;
    }
state_loaded:
    if (!r->rs.legacy && (r->rs.gen != gen || r->rs.format != st->format) && st->reported_gen != gen + 1) {
        /* Reported, not acted on: the keys come from the sealed state anyway;
         * the next rotation step writes both copies again. */
        st->reported_gen = gen + 1;
        ks_log(KS_LOG_ERROR, "keystore %s: the plain %s (%llu) does not match the authenticated one (%llu): "
               "the metadata was edited or damaged; other processes may not notice key changes until the next "
               "rotation step. Check it with 'p11mk-admin verify'", st->path,
               r->rs.gen != gen ? "generation counter" : "format version",
               (unsigned long long)(r->rs.gen != gen ? gen : st->format),
               (unsigned long long)(r->rs.gen != gen ? r->rs.gen : r->rs.format));
    }
    if (!r->rs.legacy && CRYPTO_memcmp(r->rs.cur_kcv, r->cur_kcv, KS_KCV_LEN) != 0) {
        ks_err_set(err, "keystore %s: the check value of the current epoch does not match the authenticated "
                        "state (the metadata was edited); nothing was changed: restore it from a backup", st->path);
        rc = KS_ECORRUPT;
        goto fail;
    }
    if (r->rs.nxt) {
        /* The staged key is the one the sealed state names, whatever the
         * plain record says (it could be pointed at a retired or the default
         * key). */
        rc = epoch_key(st, t, r->rs.nxt, r->nxt_kcv, r->nxt_mk, r->nxt_key, &r->have_nxt);
        if (ks_read_failed(rc))
            ks_read_error(err, st->path, "the check value of its staged epoch", rc);
        if (rc != KS_OK)
            goto fail;
        if (!r->rs.legacy && CRYPTO_memcmp(r->rs.nxt_kcv, r->nxt_kcv, KS_KCV_LEN) != 0) {
            char a[2 * KS_KCV_LEN + 1], b[2 * KS_KCV_LEN + 1];
            ks_kcv_hex(r->nxt_kcv, a);
            ks_kcv_hex(r->rs.nxt_kcv, b);
            ks_log(KS_LOG_ERROR, "keystore %s: the plain check value of the staged epoch %u (%s) is not the "
                   "authenticated one (%s): the metadata was edited; the staged key is taken from the "
                   "authenticated state", st->path, r->rs.nxt, a, b);
            memcpy(r->nxt_kcv, r->rs.nxt_kcv, KS_KCV_LEN);
            ks_mkey k;
            memset(&k, 0, sizeof(k));
            r->have_nxt = ks_find_key(st, r->nxt_kcv, k.key);
            OPENSSL_cleanse(r->nxt_key, sizeof(r->nxt_key));
            OPENSSL_cleanse(r->nxt_mk, sizeof(r->nxt_mk));
            if (r->have_nxt) {
                memcpy(r->nxt_mk, k.key, KS_MK_LEN);
                if ((rc = ks_rec_key(&k, st->ksid, r->rs.nxt, r->nxt_key)) != KS_OK) {
                    ks_mkey_clear(&k);
                    goto fail;
                }
            }
            ks_mkey_clear(&k);
        }
        if (!r->have_nxt && !st->copy) { /* a copy's restore says it, of the file it came from */
            char hex[2 * KS_KCV_LEN + 1];
            ks_kcv_hex(r->nxt_kcv, hex);
            ks_log(r->rs.state == KS_ROT_PENDING ? KS_LOG_INFO : KS_LOG_ERROR, "keystore %s: the staged master key of epoch %u (check value %s) is not in %s; "
                   "records under it cannot be used here until the key file holds it (an abort with "
                   "'p11mk-admin abort' needs it too, once records were resealed under it)", st->path, r->rs.nxt, hex,
                   st->keysrc[0] ? st->keysrc : "the configuration (built-in default key)");
        }
    }
    bool to_new = r->rs.state == KS_ROT_STAGED || r->rs.state == KS_ROT_REWRAP || r->rs.state == KS_ROT_READY;
    r->write_epoch = to_new && r->rs.nxt ? r->rs.nxt : r->rs.cur;
    *out = r;
    return KS_OK;
fail:
    ring_unref(r);
    return rc;
}

/* Give the transaction the keys of its snapshot: cheap (one meta lookup)
 * unless the generation changed since the last look, and no lookup at all
 * in a read snapshot already seen (ring_snap: nothing was written since). A
 * write transaction always reads the generation. */
static int ring_attach(ks_store *st, ks_txn *x)
{
    ks_bval v;
    uint64_t gen = 0, snap = x->write ? 0 : st->ops->snapshot(x->bt);
    int rc = KS_OK;

    pthread_mutex_lock(&st->ring_lock);
    if (snap && st->ring && st->ring_snap == snap) {
        x->ring = st->ring;
        atomic_fetch_add(&x->ring->refs, 1);
        pthread_mutex_unlock(&st->ring_lock);
        return KS_OK;
    }
    rc = ks_meta_get(x->bt, st, "gen", NULL, 0, &v);
    if (ks_read_failed(rc)) {
        /* Not "generation 0": that would build keys for a generation that
         * is not there and report the plain counter as edited. */
        pthread_mutex_unlock(&st->ring_lock);
        ks_log(KS_LOG_ERROR, "keystore %s: cannot read its generation counter (%s); the operation was not done: %s",
               st->path, ks_strerror(rc), ks_read_advice(rc));
        return rc;
    }
    if (rc == KS_OK && v.n == 8)
        gen = ks_get_be64(v.p);
    rc = KS_OK;
    if (st->ring && st->ring->gen == gen) {
        x->ring = st->ring;
        atomic_fetch_add(&x->ring->refs, 1);
        if (snap)
            st->ring_snap = snap;
    } else {
        ks_keyring *r = NULL;
        ks_err e = KS_ERR_INIT;
        rc = ring_build(st, x->bt, gen, &r, &e);
        if (ks_read_failed(rc)) {
            /* Not this generation's fault: said each time, and a later
             * failure of the generation itself is still reported. */
            if (!e.msg[0])
                ks_read_error(&e, st->path, "its metadata", rc);
            ks_log(KS_LOG_ERROR, "%s", e.msg);
        } else if (rc != KS_OK) {
            if (st->failed_gen != gen + 1) /* once per generation, not once per operation */
                ks_log(KS_LOG_ERROR, "keystore %s: %s", st->path, e.msg[0] ? e.msg : ks_strerror(rc));
            st->failed_gen = gen + 1;
        } else if (!st->ring || gen > st->ring->gen) {
            if (st->ring && st->ring->rs.cur != r->rs.cur && !st->copy)
                ks_log(KS_LOG_INFO, "keystore %s: master key epoch %u is now current", st->path, r->rs.cur);
            ring_unref(st->ring);
            st->ring = r;
            st->ring_snap = snap;
            extra_prune(st, r);
            atomic_store(&st->epoch_hint, r->rs.cur);
            x->ring = r;
            atomic_fetch_add(&r->refs, 1);
        } else {
            x->ring = r; /* an older snapshot: private keys for it */
        }
    }
    pthread_mutex_unlock(&st->ring_lock);
    return rc;
}

void ks_ring_invalidate(ks_store *st)
{
    pthread_mutex_lock(&st->ring_lock);
    ring_unref(st->ring);
    st->ring = NULL;
    st->ring_snap = 0;
    pthread_mutex_unlock(&st->ring_lock);
}

/* Read and check the metadata; derive the keys. */
static int load_meta(ks_store *st, ks_btxn *t, const ks_mkey *mk, ks_err *err)
{
    ks_bval v;
    uint8_t *idxkey = NULL;
    size_t idxlen = 0;
    uint32_t rec_epoch;
    uint64_t gen = 0;
    ks_keyring *r = NULL;
    const uint8_t *key;
    int rc;

    rc = ks_meta_get(t, st, "format", NULL, 0, &v);
    if (ks_read_failed(rc))
        return ks_read_error(err, st->path, "its format record", rc);
    if (rc != KS_OK || v.n != 4) {
        ks_err_set(err, "%s holds no p11mk keystore; create one with: p11mk-admin init", st->path);
        return KS_ENOTFOUND;
    }
    st->format = ks_get_be32(v.p);
    if (st->format != KS_FORMAT_VERSION && st->format != 1) {
        ks_err_set(err, "keystore %s has format version %u; this p11mk (%s) reads version %u: use the p11mk "
                        "release that wrote it", st->path, st->format, P11MK_VERSION, KS_FORMAT_VERSION);
        return KS_EVERSION;
    }
    rc = ks_meta_get(t, st, "ksid", NULL, 0, &v);
    if (ks_read_failed(rc))
        return ks_read_error(err, st->path, "its id record", rc);
    if (rc != KS_OK || v.n != KS_KSID_LEN)
        goto corrupt;
    memcpy(st->ksid, v.p, KS_KSID_LEN);

    /* Candidate keys: the registers of the key file, and the key given. */
    if (mk->file_mode) {
        snprintf(st->keysrc, sizeof(st->keysrc), "%s", mk->source);
        st->keymode = mk->file_mode;
    }
    if (mk->config[0] && !st->conf[0])
        snprintf(st->conf, sizeof(st->conf), "%s", mk->config);
    pthread_mutex_lock(&st->ring_lock);
    rc = ks_store_add_key(st, mk);
    pthread_mutex_unlock(&st->ring_lock);
    if (rc != KS_OK)
        return rc;
    rc = ks_meta_get(t, st, "gen", NULL, 0, &v);
    if (ks_read_failed(rc))
        return ks_read_error(err, st->path, "its generation counter", rc); /* not generation 0 */
    if (rc == KS_OK && v.n == 8)
        gen = ks_get_be64(v.p);
    pthread_mutex_lock(&st->ring_lock);
    rc = ring_build(st, t, gen, &r, err);
    if (rc == KS_OK) {
        ring_unref(st->ring); /* a second load_meta (creation, then open) */
        st->ring = r;
        st->ring_snap = 0;
        extra_prune(st, r);
        atomic_store(&st->epoch_hint, r->rs.cur);
    }
    pthread_mutex_unlock(&st->ring_lock);
    if (rc != KS_OK && err && !err->msg[0]) {
        if (rc == KS_ECORRUPT)
            ks_err_set(err, "keystore %s: its metadata is damaged; restore it from a backup", st->path);
        else if (ks_read_failed(rc))
            ks_read_error(err, st->path, "its metadata", rc);
    }
    if (rc != KS_OK)
        return rc;

    rc = ks_meta_get(t, st, "idxkey", NULL, 0, &v);
    if (ks_read_failed(rc))
        return ks_read_error(err, st->path, "its index key record", rc);
    if (rc != KS_OK || ks_rec_header(v.p, v.n, NULL, &rec_epoch) != KS_OK)
        goto corrupt;
    if (!(key = ks_ring_key(r, rec_epoch)) && st->copy) {
        /* A copy made while a rotation was under way, whose staged key this
         * host's key file no longer (or never) held. */
        char hex[2 * KS_KCV_LEN + 1] = "unknown";
        if (rec_epoch == r->rs.nxt)
            ks_kcv_hex(r->nxt_kcv, hex);
        ks_err_set(err, "it was copied while a rotation was under way, and what is sealed under that rotation's staged "
                        "master key (epoch %u, check value %s) cannot be opened without it; %s does not hold it (a "
                        "retired key 'p11mk-admin clear-history' destroyed, or one never copied to this host)",
                   rec_epoch, hex, st->keysrc[0] ? st->keysrc : "the key this process was given (no key file)");
        return KS_ENOKEY;
    }
    if (!key) {
        /* Not damage: a rotation resealed it under its staged key, which this
         * process was not given (ring_build said which key is missing). */
        ks_err_set(err, "keystore %s: its index key is sealed under master key epoch %u, whose key %s does not "
                        "hold (a rotation to it is under way): put the staged key back in the key file (as the "
                        "rotation's stage step did on the host that ran it; a copy of the key file made since the "
                        "stage holds it). Nothing can open what is sealed under it until then, an abort neither",
                   st->path, rec_epoch, st->keysrc[0] ? st->keysrc : "the key this process was given (no key file)");
        return KS_ENOKEY;
    }
    if (ks_rec_open(key, st->ksid, KS_KIND_META, 0, 0, v.p, v.n, &idxkey, &idxlen) != KS_OK || idxlen != 32) {
        ks_buf_free(idxkey, idxlen);
        goto corrupt;
    }
    EVP_MAC *hmac = EVP_MAC_fetch(ks_libctx(), "HMAC", NULL);
    EVP_MAC_CTX_free(st->idx_mac); /* a second load_meta (creation, then open; a read run again) */
    st->idx_mac = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
    EVP_MAC_free(hmac);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    rc = st->idx_mac && EVP_MAC_init(st->idx_mac, idxkey, idxlen, params) ? KS_OK : KS_EIO;
    ks_buf_free(idxkey, idxlen);
    return rc;
corrupt:
    ks_err_set(err, "keystore %s: its metadata failed authentication or is damaged; restore it from a backup",
               st->path);
    return KS_ECORRUPT;
}

static int store_setup(ks_store *st, const char *target, const ks_mkey *mk, unsigned flags, ks_err *err)
{
    const ks_backend_ops *o = st->ops;
    ks_btxn *t;
    bool tables = false;
    int rc = o->open(st->path, target, flags, &st->rdonly, &tables, &st->be, err);
    if (rc != KS_OK)
        return rc;

    /* Common case: an existing keystore, opened in a read transaction. A
     * keystore is created only where the storage is empty: anything else
     * that lacks a piece (a table, the format record) is damage, reported,
     * never written over. */
    if (tables) {
        for (int attempt = 0; attempt < KS_READ_TRIES; attempt++) {
            if (err)
                err->msg[0] = '\0'; /* this attempt's reason, not the last one's */
            if ((rc = o->read_begin(st->be, &t)) != KS_OK) {
                ks_read_error(err, st->path, "it (a read transaction could not begin)", rc);
                if (rc == KS_EIO)
                    continue; /* as a read that failed in it: again from a new transaction */
                return rc;
            }
            rc = load_meta(st, t, mk, err);
            o->read_end(t);
            if (rc != KS_EIO)
                break;
        }
        if (rc == KS_ENOTFOUND) {
            ks_err_set(err, "keystore %s is damaged: its databases exist but its format record is missing; "
                            "nothing was changed (nothing is created over existing data): restore it from a "
                            "backup", st->path);
            return KS_ECORRUPT;
        }
        return rc;
    }
    if (!(flags & KS_OPEN_CREATE) || st->rdonly) {
        ks_err_set(err, "%s holds no p11mk keystore; create one with: p11mk-admin init", st->path);
        return KS_ENOTFOUND;
    }

    /* New keystore: never on a key file that serves another (it names it):
     * that keystore's clear-history would destroy the key this one is sealed
     * under. A file naming none (a raw key, or written before 2026-12) is
     * bound by the first master-key step. */
    if (!mk->is_default && mk->source[0]) {
        ks_registers regs;
        ks_err e = KS_ERR_INIT;
        if (ks_reg_load(mk->source, mk->file_mode, &regs, &e) == KS_OK && regs.has_owner) {
            ks_reg_clear(&regs);
            ks_err_set(err, "the key file %s already serves a keystore (it names it); a new keystore in %s would "
                            "lose its master key when that one clears its history, so none was created: give it "
                            "a key file of its own (p11mk-admin init --generate-key NEWFILE)", mk->source, st->path);
            return ks_err_in(err, KS_AREA_KEY, KS_EPERM);
        }
        ks_reg_clear(&regs);
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        if ((rc = o->write_begin(st->be, &t)) != KS_OK)
            return rc;
        rc = o->create_tables(t);
        if (rc == KS_OK)
            rc = init_meta(st, t, mk);
        if (rc == KS_OK)
            rc = o->commit(t);
        else
            o->abort(t);
        if (rc != KS_BE_RETRY)
            break;
        o->make_room(st->be);
        rc = KS_EIO;
    }
    /* KS_EEXIST: a storage several hosts share was given its tables by
     * another creator meanwhile (which wrote them in one transaction, with
     * the format record): opened as it is, as any existing keystore. */
    if (rc != KS_OK && rc != KS_EEXIST) {
        ks_err_set(err, "cannot create keystore %s: %s", st->path, ks_strerror(rc));
        return rc;
    }
    if (rc == KS_OK)
        ks_log(KS_LOG_INFO, "created keystore %s", st->path);
    if ((rc = o->read_begin(st->be, &t)) != KS_OK)
        return ks_read_error(err, st->path, "it (a read transaction could not begin)", rc);
    rc = load_meta(st, t, mk, err);
    o->read_end(t);
    return rc;
}

static int open_with(const char *dir, const ks_backend_ops *ops, const char *target, const ks_mkey *mk,
                     unsigned flags, ks_store **out, ks_err *err);

/* Root opening another user's keystore (status, list and verify as root, or
 * a root application): the lock files an open makes (users.lock here,
 * lock.mdb by LMDB, when the owner's last restore or a first use had none)
 * go to the directory's owner, whose applications must open them for
 * writing: made root's and 0600, they locked the owner out (C_Initialize
 * failed; a hostile tester). Given away only when it is surely such a file:
 * a regular file with one link, root's, empty for users.lock, starting
 * with LMDB's lock file magic for lock.mdb (not a file of root's the owner
 * could have moved there). */
static void give_lock_files(const char *dir, const struct stat *dsb)
{
    static const char *const names[] = {"users.lock", "lock.mdb"};
    if (geteuid() != 0 || dsb->st_uid == 0)
        return;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        struct stat fsb;
        uint32_t magic = 0;
        int fd = openat(dfd, names[i], O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
            continue;
        if (fstat(fd, &fsb) == 0 && S_ISREG(fsb.st_mode) && fsb.st_nlink == 1 && fsb.st_uid == 0 &&
            (i == 0 ? fsb.st_size == 0 : pread(fd, &magic, sizeof(magic), 0) == sizeof(magic) && magic == 0xBEEFC0DEu))
            (void)fchown(fd, dsb->st_uid, dsb->st_gid);
        close(fd);
    }
    close(dfd);
}

int ks_open(const char *dir, const ks_mkey *mk, unsigned flags, ks_store **out, ks_err *err)
{
    return open_with(dir, KS_BACKEND_DEFAULT, NULL, mk, flags, out, err);
}

int ks_open_backend(const char *dir, const ks_backend_ops *ops, const ks_mkey *mk, unsigned flags, ks_store **out,
                    ks_err *err)
{
    if (!ops)
        return KS_EINVAL;
    return open_with(dir, ops, NULL, mk, flags, out, err);
}

int ks_open_cfg(const ks_config *cfg, const ks_mkey *mk, unsigned flags, ks_store **out, ks_err *err)
{
    const ks_backend_ops *ops = cfg && cfg->backend ? ks_backend_find(cfg->backend) : KS_BACKEND_DEFAULT;
    if (!cfg || !ops)
        return KS_EINVAL;
    int rc = open_with(cfg->keystore, ops, cfg->postgresql, mk, flags, out, err);
    if (rc == KS_OK)
        (void)ks_fleet_announce_cfg(*out, cfg); /* this host's keys, for the fleet's rotation checks */
    return rc;
}

static int open_with(const char *dir, const ks_backend_ops *ops, const char *target, const ks_mkey *mk,
                     unsigned flags, ks_store **out, ks_err *err)
{
    struct stat sb;
    ks_store *st;
    int rc;

    if (err)
        err->area = KS_AREA_KEYSTORE; /* a failure here is the keystore's (ks_err) */
    if (!dir || !*dir || !mk || !out)
        return KS_EINVAL;
    *out = NULL;
    if (stat(dir, &sb) != 0) {
        /* A storage elsewhere (a database): the directory holds only this
         * host's lock files, made on first use. */
        if (errno == ENOENT && ((flags & KS_OPEN_CREATE) || ops != &ks_lmdb_backend)) {
            if (ks_mkdir_p(dir, true) != 0 || stat(dir, &sb) != 0) {
                ks_err_set(err, "cannot create keystore directory %s: %s", dir, strerror(errno));
                return errno == EACCES ? KS_EPERM : KS_EIO;
            }
        } else {
            ks_err_set(err, "no keystore at %s (%s); create one with: p11mk-admin init", dir, strerror(errno));
            return errno == EACCES ? KS_EPERM : KS_ENOTFOUND;
        }
    }
    if (!S_ISDIR(sb.st_mode)) {
        ks_err_set(err, "keystore path %s is not a directory", dir);
        return KS_EINVAL;
    }
    /* Whoever may write the directory may plant files the storage would follow. */
    if ((sb.st_mode & S_IWOTH) && !(sb.st_mode & S_ISVTX)) {
        ks_err_set(err, "keystore directory %s is writable by every user; run: chmod o-w %s", dir, dir);
        return KS_EPERM;
    }
    if ((rc = ops->check_location(dir, err)) != KS_OK)
        return rc;

    pthread_mutex_lock(&reg_lock);
    if (registry_pid != getpid()) {
        /* After fork: the parent's environments must not be used nor closed
         * here (LMDB forbids both); abandon them and open fresh ones. */
        registry = NULL;
        registry_pid = getpid();
    }
    for (st = registry; st; st = st->next) {
        if (st->dev == sb.st_dev && st->ino == sb.st_ino) {
            if (st->ops != ops) {
                pthread_mutex_unlock(&reg_lock);
                ks_err_set(err, "keystore %s is already open in this process with backend %s, not %s", dir,
                           st->ops->name, ops->name);
                return KS_EINVAL;
            }
            uint8_t kcv[KS_KCV_LEN], key[KS_MK_LEN];
            ks_mkey_kcv(mk, kcv);
            pthread_mutex_lock(&st->ring_lock);
            bool known = ks_find_key(st, kcv, key);
            pthread_mutex_unlock(&st->ring_lock);
            OPENSSL_cleanse(key, sizeof(key));
            if (!known) {
                pthread_mutex_unlock(&reg_lock);
                ks_err_set(err, "keystore %s is already open in this process under another master key", dir);
                return KS_EWRONGKEY;
            }
            st->refs++;
            pthread_mutex_unlock(&reg_lock);
            *out = st;
            return KS_OK;
        }
    }
    st = calloc(1, sizeof(*st));
    if (st)
        st->users_fd = -1;
    if (!st || !(st->path = strdup(dir)) || pthread_mutex_init(&st->ring_lock, NULL) != 0 || pthread_mutex_init(&st->meta_lock, NULL) != 0) {
        if (st)
            free(st->path);
        free(st);
        pthread_mutex_unlock(&reg_lock);
        return KS_ENOMEM;
    }
    st->refs = 1;
    st->ops = ops;
    st->dev = sb.st_dev;
    st->ino = sb.st_ino;
    st->rdonly = (flags & KS_OPEN_RDONLY) != 0;
    st->copy = (flags & KS_OPEN_COPY) != 0;
    /* Tell 'restore' that this process uses the keystore, before opening
     * it: restore swaps data.mdb only while it holds this lock exclusively,
     * so the file opened below is the one that stays in place while we use
     * it (a reader of a read-only directory cannot create the lock file;
     * it cannot be restored either, by the same permissions). */
    char lp[4096];
    snprintf(lp, sizeof(lp), "%s/users.lock", dir);
    st->users_fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0600);
    if (st->users_fd < 0 && errno != ELOOP)
        st->users_fd = open(lp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    struct stat lsb;
    if ((st->users_fd < 0 && errno == ELOOP) ||
        (st->users_fd >= 0 && (fstat(st->users_fd, &lsb) != 0 || !S_ISREG(lsb.st_mode)))) {
        ks_err_set(err, "%s is not a regular file (a link or something else was put there); remove it, then try "
                        "again", lp);
        store_free(st);
        pthread_mutex_unlock(&reg_lock);
        return KS_EINVAL;
    }
    if (st->users_fd >= 0) {
        int lrc;
        while ((lrc = flock(st->users_fd, LOCK_SH)) != 0 && errno == EINTR)
            ;
        if (lrc != 0) {
            close(st->users_fd);
            st->users_fd = -1;
        }
    }
    rc = store_setup(st, target, mk, flags, err);
    if (rc != KS_OK) {
        store_free(st);
        pthread_mutex_unlock(&reg_lock);
        return rc;
    }
    give_lock_files(dir, &sb);
    /* At open, a store whose counts cannot be read is not served: the
     * failure is the storage's, said as such (never as a count mismatch). */
    if ((rc = ks_anchor_check_counts(st, err)) != KS_OK) {
        store_free(st);
        pthread_mutex_unlock(&reg_lock);
        return rc;
    }
    char why[512];
    if (ks_check_rollback(st, why, sizeof(why)))
        ks_log(KS_LOG_ERROR, "keystore %s: %s", st->path, why);
    st->next = registry;
    registry = st;
    pthread_mutex_unlock(&reg_lock);
    *out = st;
    return KS_OK;
}

void ks_close(ks_store *st)
{
    if (!st)
        return;
    pthread_mutex_lock(&reg_lock);
    if (registry_pid != getpid()) {
        /* A handle inherited over fork: abandon it. */
        pthread_mutex_unlock(&reg_lock);
        return;
    }
    if (--st->refs > 0) {
        pthread_mutex_unlock(&reg_lock);
        return;
    }
    for (ks_store **pp = &registry; *pp; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    store_free(st);
}

const char *ks_path(ks_store *st) { return st ? st->path : NULL; }

uint32_t ks_epoch(ks_store *st) { return st ? atomic_load(&st->epoch_hint) : 0; }

uint64_t ks_commit_seq(ks_store *st) { return st ? st->ops->commit_seq(st->be) : 0; }

int ks_readers(ks_store *st, ks_readers_info *out)
{
    uint64_t oldest = 0, now;
    memset(out, 0, sizeof(*out));
    if (!st || !st->ops->readers)
        return KS_EINVAL;
    int rc = st->ops->readers(st->be, &out->active, &oldest, &out->oldest_pid);
    if (rc != KS_OK)
        return rc;
    now = ks_commit_seq(st);
    out->oldest_behind = out->active && now > oldest ? now - oldest : 0;
    return KS_OK;
}

bool ks_readonly(ks_store *st) { return !st || st->rdonly; }

static int get_info(ks_store *st, ks_info *info);

bool ks_info_succeeds(const ks_info *info, const uint8_t id[16])
{
    for (size_t i = 0; i < info->n_succeeds; i++)
        if (CRYPTO_memcmp(info->succeeds[i], id, KS_KSID_LEN) == 0)
            return true;
    return false;
}

int ks_get_info(ks_store *st, ks_info *info)
{
    int rc = KS_EIO;
    for (int attempt = 0; attempt < KS_READ_TRIES && rc == KS_EIO; attempt++)
        rc = get_info(st, info);
    return rc;
}

static int get_info(ks_store *st, ks_info *info)
{
    ks_txn *x;
    int rc;

    if (!st || !info)
        return KS_EINVAL;
    memset(info, 0, sizeof(*info));
    info->format_version = st->format;
    memcpy(info->keystore_id, st->ksid, KS_KSID_LEN);
    rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    ks_rotstate rs = x->ring->rs;
    ks_meta *m;
    /* The state record itself: progress within a generation is not in the ring. */
    if ((rc = ks_txn_meta(x, &m)) == KS_OK) {
        rs = m->rs;
    } else if (ks_read_failed(rc)) {
        ks_read_end(x);
        return rc; /* not read: no half-filled report */
    }
    info->epoch = rs.cur;
    info->new_epoch = rs.nxt;
    info->rot_state = rs.state;
    info->generation = x->ring->gen;
    info->auto_interval = rs.auto_interval;
    info->last_rotation = rs.last_rotation;
    memcpy(info->kcv, x->ring->cur_kcv, KS_KCV_LEN);
    if (rs.nxt && !rs.legacy) {
        memcpy(info->new_kcv, rs.nxt_kcv, KS_KCV_LEN);
    } else if (rs.nxt) {
        uint8_t be[4];
        ks_bval v;
        ks_be32(be, rs.nxt);
        rc = ks_meta_get(x->bt, st, "kcv", be, 4, &v);
        if (rc == KS_OK && v.n == KS_KCV_LEN)
            memcpy(info->new_kcv, v.p, KS_KCV_LEN);
        else if (ks_read_failed(rc))
            goto out;
    }
    {
        ks_bval v;
        rc = ks_meta_get(x->bt, st, "succeeds", NULL, 0, &v);
        if (rc == KS_OK)
            info->n_succeeds = ks_succeeds_decode(v.p, v.n, info->succeeds);
        else if (ks_read_failed(rc))
            goto out;
    }
    info->map_size = st->ops->size(st->be);
    /* A count that cannot be read is the result, not a count of 0. */
    if ((rc = st->ops->count(x->bt, KS_TAB_TOKENS, &info->n_tokens)) == KS_OK)
        rc = st->ops->count(x->bt, KS_TAB_OBJECTS, &info->n_objects);
out:
    ks_read_end(x);
    return rc == KS_OK || rc == KS_ENOTFOUND ? KS_OK : rc;
}

/* ---- transactions -------------------------------------------------------- */

int ks_read_begin(ks_store *st, ks_txn **out)
{
    ks_txn *x;
    int rc;
    if (!st || !out)
        return KS_EINVAL;
    x = calloc(1, sizeof(*x));
    if (!x)
        return KS_ENOMEM;
    rc = st->ops->read_begin(st->be, &x->bt);
    if (rc != KS_OK) {
        free(x);
        return rc;
    }
    x->st = st;
    rc = ring_attach(st, x);
    if (rc != KS_OK) {
        st->ops->read_end(x->bt);
        free(x);
        return rc;
    }
    *out = x;
    return KS_OK;
}

uint64_t ks_txn_seq(ks_txn *x) { return x && x->bt ? x->st->ops->snapshot(x->bt) : 0; }

void ks_read_end(ks_txn *x)
{
    if (!x)
        return;
    ks_meta_free(&x->m);
    x->st->ops->read_end(x->bt);
    ring_unref(x->ring);
    free(x);
}

#define KS_LOST_RETRIES 3 /* writes run again after a lost connection (ops->lost) */

int ks_write(ks_store *st, ks_write_fn fn, void *arg)
{
    int rc = KS_EIO;
    if (!st || !fn)
        return KS_EINVAL;
    if (st->rdonly)
        return KS_EROFS;
    int lost = 0;
    for (int attempt = 0; attempt < 40; attempt++) {
        ks_txn x = {.st = st, .write = true};
        rc = st->ops->write_begin(st->be, &x.bt);
        if (rc != KS_OK)
            return rc;
        rc = ring_attach(st, &x);
        if (rc == KS_OK)
            rc = fn(&x, arg);
        if (rc == KS_OK && !x.retry)
            rc = ks_meta_flush(&x); /* the anchor commits with what it vouches for */
        if (rc == KS_OK && !x.retry) {
            int crc = st->ops->commit(x.bt);
            if (crc == KS_BE_RETRY)
                x.retry = true;
            else
                rc = crc;
        } else {
            /* Its connection lost before COMMIT was sent (a backend
             * terminated, a server restarted): nothing of it was committed,
             * and it runs again on another, a few times. */
            if (rc != KS_OK && !x.retry && st->ops->lost && st->ops->lost(x.bt) && lost++ < KS_LOST_RETRIES) {
                ks_log(KS_LOG_INFO, "keystore %s: lost the connection to the storage in a write (nothing of it "
                       "was committed); writing again", st->path);
                x.retry = true;
            }
            st->ops->abort(x.bt);
        }
        ring_unref(x.ring);
        ks_meta_free(&x.m);
        if (rc == KS_ENOSPC)
            ks_log(KS_LOG_ERROR, "keystore %s: the file system is full; the write was not done (nothing stored was "
                   "lost): free space on the file system that holds the keystore", st->path);
        if (!x.retry)
            return rc;
        if ((rc = st->ops->make_room(st->be)) != KS_OK)
            return rc;
    }
    return rc;
}

/* ---- sealed values ------------------------------------------------------- */

static int seal_put(ks_txn *x, ks_table tab, const uint8_t *k, size_t kl, uint8_t kind, uint32_t token, uint64_t oid,
                    const uint8_t *blob, size_t len, uint8_t tag[KS_TAG_LEN])
{
    ks_store *st = x->st;
    uint8_t *rec;
    size_t reclen;
    int rc;

    if (!blob && len)
        return KS_EINVAL;
    const uint8_t *key = ks_ring_key(x->ring, x->ring->write_epoch);
    if (!key)
        return KS_ENOKEY;
    rc = ks_rec_seal(key, st->ksid, kind, x->ring->write_epoch, token, oid, blob, len, &rec, &reclen);
    if (rc != KS_OK)
        return rc;
    rc = ks_wput(x, tab, k, kl, rec, reclen);
    memcpy(tag, rec + reclen - KS_TAG_LEN, KS_TAG_LEN);
    free(rec); /* ciphertext: no need to cleanse */
    return rc;
}

static int get_open(ks_txn *x, ks_table tab, const uint8_t *k, size_t kl, uint8_t kind, uint32_t token, uint64_t oid, uint8_t **blob,
                    size_t *len)
{
    ks_store *st = x->st;
    ks_bval v;
    uint32_t epoch;
    int rc;

    if (!blob || !len)
        return KS_EINVAL;
    rc = st->ops->get(x->bt, tab, k, kl, &v);
    if (rc != KS_OK)
        return rc;
    rc = ks_rec_header(v.p, v.n, NULL, &epoch);
    if (rc != KS_OK)
        return rc;
    const uint8_t *key = ks_ring_key(x->ring, epoch);
    if (!key)
        return KS_ENOKEY;
    return ks_rec_open(key, st->ksid, kind, token, oid, v.p, v.n, blob, len);
}

/* ---- tokens -------------------------------------------------------------- */

/* The anchor of a write transaction, for a change. */
static int meta_for_write(ks_txn *x, ks_meta **m)
{
    int rc = ks_txn_meta(x, m);
    if (rc == KS_OK && (*m)->rs.legacy)
        rc = KS_EROFS; /* a format 1 keystore read by a reader cannot be changed by it */
    return rc;
}

int ks_token_new_id(ks_txn *x, uint32_t *token_id)
{
    const ks_backend_ops *o = x ? x->st->ops : NULL;
    ks_bcur *c;
    ks_bval k, v;
    ks_meta *m;
    int rc;

    if (!x || !token_id)
        return KS_EINVAL;
    if ((rc = ks_txn_meta(x, &m)) != KS_OK)
        return rc;
    if ((rc = o->cur_open(x->bt, KS_TAB_TOKENS, &c)) != KS_OK)
        return rc;
    rc = o->cur_seek(c, KS_BSEEK_LAST, NULL, 0, &k, &v);
    o->cur_close(c);
    if (rc == KS_ENOTFOUND) {
        *token_id = 1;
    } else if (rc != KS_OK || k.n != 4) {
        return rc ? rc : KS_ECORRUPT;
    } else {
        *token_id = ks_get_be32(k.p) + 1;
        if (!*token_id)
            return KS_EIO;
    }
    /* Past every id ever given, deleted ones included. */
    if (m->rs.toknext > *token_id)
        *token_id = m->rs.toknext;
    return KS_OK;
}

int ks_token_put(ks_txn *x, uint32_t token_id, const uint8_t *blob, size_t len)
{
    uint8_t kb[4];
    ks_meta *m;
    ks_tokstat *t;
    int rc;

    if (!x || !token_id)
        return KS_EINVAL;
    if ((rc = meta_for_write(x, &m)) != KS_OK)
        return rc;
    ks_be32(kb, token_id);
    ks_bval v;
    rc = x->st->ops->get(x->bt, KS_TAB_TOKENS, kb, 4, &v);
    if (rc != KS_OK && rc != KS_ENOTFOUND)
        return rc; /* not known to be absent: nothing is written, nothing is reported */
    bool exists = rc == KS_OK;
    if (!(t = ks_meta_tok(m, token_id, true)))
        return KS_ENOMEM;
    if (!exists) {
        /* A new token, or a wiped one put back: the anchor lists it, empty. */
        if (t->exists || t->n_obj || t->n_idx) {
            ks_log(KS_LOG_ERROR, "keystore %s: token %u is listed by the metadata but its record is missing; "
                   "nothing was written. Check the keystore with 'p11mk-admin verify'", x->st->path, token_id);
            return KS_ECORRUPT;
        }
        t->exists = true;
        if (token_id < UINT32_MAX && m->rs.toknext <= token_id)
            m->rs.toknext = token_id + 1;
    }
    /* The anchor names this very record: an older copy put back is refused. */
    rc = seal_put(x, KS_TAB_TOKENS, kb, 4, KS_KIND_TOKEN, token_id, 0, blob, len, t->tag);
    ks_meta_touch(x, false);
    return rc;
}

int ks_token_exists(ks_txn *x, uint32_t token_id)
{
    uint8_t kb[4];
    ks_bval v;
    if (!x || !token_id)
        return KS_EINVAL;
    ks_be32(kb, token_id);
    return x->st->ops->get(x->bt, KS_TAB_TOKENS, kb, 4, &v);
}

int ks_token_get(ks_txn *x, uint32_t token_id, uint8_t **blob, size_t *len)
{
    uint8_t kb[4];
    ks_meta *m;
    ks_bval v;
    int rc;
    if (!x || !token_id)
        return KS_EINVAL;
    ks_be32(kb, token_id);
    if ((rc = ks_txn_meta(x, &m)) != KS_OK)
        return rc;
    if (!m->rs.legacy && (rc = x->st->ops->get(x->bt, KS_TAB_TOKENS, kb, 4, &v)) != KS_OK && rc != KS_ENOTFOUND)
        return rc;
    if (!m->rs.legacy && rc == KS_OK) {
        /* The token record holds the PINs and their failure counts: it must be
         * the very record the anchor vouches for, not an older copy. */
        ks_tokstat *t = ks_meta_tok(m, token_id, false);
        if (!t || !t->exists || v.n <= KS_TAG_LEN ||
            CRYPTO_memcmp((const uint8_t *)v.p + v.n - KS_TAG_LEN, t->tag, KS_TAG_LEN)) {
            ks_log(KS_LOG_ERROR, "keystore %s: the record of token %u is not the one the metadata vouches for (an "
                   "older copy was put back?); it is not used. Check the keystore with 'p11mk-admin verify'",
                   x->st->path, token_id);
            return KS_ECORRUPT;
        }
    }
    return get_open(x, KS_TAB_TOKENS, kb, 4, KS_KIND_TOKEN, token_id, 0, blob, len);
}

/* Delete every entry of a table under the token's 4-byte prefix. */
static int del_prefix(ks_txn *x, ks_table tab, uint32_t token_id)
{
    uint8_t kb[4];
    ks_be32(kb, token_id);
    return x->write ? ks_wres(x, x->st->ops->del_prefix(x->bt, tab, kb, 4)) : KS_EINVAL;
}

int ks_token_del(ks_txn *x, uint32_t token_id)
{
    uint8_t kb[4];
    ks_meta *m;
    ks_tokstat *t;
    int rc;
    if (!x || !token_id)
        return KS_EINVAL;
    if ((rc = meta_for_write(x, &m)) != KS_OK)
        return rc;
    if ((rc = del_prefix(x, KS_TAB_OBJECTS, token_id)) != KS_OK || (rc = del_prefix(x, KS_TAB_INDEX, token_id)) != KS_OK)
        return rc;
    ks_be32(kb, token_id);
    rc = ks_wdel(x, KS_TAB_TOKENS, kb, 4);
    if (rc != KS_OK && rc != KS_ENOTFOUND)
        return rc;
    /* The entry stays (deleted) for its incarnation: a login made before
     * must not reach what a re-initialization puts there. */
    if (!(t = ks_meta_tok(m, token_id, true)))
        return KS_ENOMEM;
    t->exists = false;
    t->inc++;
    t->n_obj = t->n_idx = 0;
    memset(t->obj_hash, 0, sizeof(t->obj_hash));
    memset(t->idx_hash, 0, sizeof(t->idx_hash));
    ks_meta_touch(x, false);
    return KS_OK;
}

int ks_token_incarnation(ks_txn *x, uint32_t token_id, uint64_t *inc)
{
    ks_meta *m;
    int rc;
    if (!x || !token_id || !inc)
        return KS_EINVAL;
    *inc = 0;
    if ((rc = ks_txn_meta(x, &m)) != KS_OK)
        return rc;
    ks_tokstat *t = ks_meta_tok(m, token_id, false);
    *inc = t ? t->inc : 0;
    return KS_OK;
}

int ks_token_list(ks_txn *x, uint32_t **ids, size_t *n)
{
    const ks_backend_ops *o = x ? x->st->ops : NULL;
    ks_bcur *c;
    ks_bval k, v;
    uint64_t entries;
    uint32_t *out;
    size_t cnt = 0;
    int rc;

    if (!x || !ids || !n)
        return KS_EINVAL;
    *ids = NULL;
    *n = 0;
    if ((rc = o->count(x->bt, KS_TAB_TOKENS, &entries)) != KS_OK)
        return rc;
    out = calloc(entries ? entries : 1, sizeof(*out));
    if (!out)
        return KS_ENOMEM;
    if ((rc = o->cur_open(x->bt, KS_TAB_TOKENS, &c)) != KS_OK) {
        free(out);
        return rc;
    }
    for (rc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); rc == KS_OK && cnt < entries;
         rc = o->cur_next(c, false, &k, &v))
        if (k.n == 4)
            out[cnt++] = ks_get_be32(k.p);
    o->cur_close(c);
    if (rc != KS_OK && rc != KS_ENOTFOUND) {
        free(out); /* a list cut short by a failed read is not the list */
        return rc;
    }
    *ids = out;
    *n = cnt;
    return KS_OK;
}

/* ---- objects ------------------------------------------------------------- */

static void obj_key(uint8_t kb[12], uint32_t token_id, uint64_t oid)
{
    ks_be32(kb, token_id);
    ks_be64(kb + 4, oid);
}

int ks_obj_new_id(ks_txn *x, uint64_t *oid)
{
    ks_meta *m;
    int rc;
    if (!x || !oid || !x->write)
        return KS_EINVAL;
    if ((rc = meta_for_write(x, &m)) != KS_OK)
        return rc;
    *oid = m->rs.next_oid;
    if (*oid == 0 || *oid >= (1ull << 62))
        return KS_ECORRUPT;
    m->rs.next_oid++;
    ks_meta_touch(x, false);
    return KS_OK;
}

/* Count a record (an object, or an index entry) in or out of its token's
 * set in the anchor; h is the member's hash. */
static int account(ks_txn *x, uint32_t token_id, bool index, const uint8_t h[16], int delta)
{
    ks_meta *m;
    ks_tokstat *t;
    int rc = meta_for_write(x, &m);
    if (rc != KS_OK)
        return rc;
    uint64_t *n = NULL;
    if ((t = ks_meta_tok(m, token_id, false)) != NULL)
        n = index ? &t->n_idx : &t->n_obj;
    if (!t || !t->exists || (delta < 0 && *n == 0)) {
        ks_log(KS_LOG_ERROR, "keystore %s: %s of token %u does not match the metadata (which lists %s); nothing "
               "was written. Check the keystore with 'p11mk-admin verify'", x->st->path,
               index ? "an index entry" : "an object record", token_id,
               t && t->exists ? "none to remove" : "no such token");
        return KS_ECORRUPT;
    }
    ks_hash_xor(index ? t->idx_hash : t->obj_hash, h);
    *n = delta > 0 ? *n + 1 : *n - 1;
    ks_meta_touch(x, false);
    return KS_OK;
}

static int obj_account(ks_txn *x, uint32_t token_id, uint64_t oid, const uint8_t tag[KS_TAG_LEN], int delta)
{
    uint8_t h[16];
    ks_obj_hash(token_id, oid, tag, h);
    return account(x, token_id, false, h, delta);
}

/* The tag of the stored record (for the anchor's set). */
static int stored_tag(ks_txn *x, ks_table tab, const uint8_t *k, size_t kl, uint8_t tag[KS_TAG_LEN])
{
    ks_bval v;
    int rc = x->st->ops->get(x->bt, tab, k, kl, &v);
    if (rc != KS_OK)
        return rc;
    if (v.n <= KS_TAG_LEN)
        return KS_ECORRUPT;
    memcpy(tag, (const uint8_t *)v.p + v.n - KS_TAG_LEN, KS_TAG_LEN);
    return KS_OK;
}

int ks_obj_create(ks_txn *x, uint32_t token_id, uint64_t oid, const uint8_t *blob, size_t len)
{
    uint8_t kb[12], tag[KS_TAG_LEN];
    ks_bval v;
    if (!x || !token_id || !oid)
        return KS_EINVAL;
    obj_key(kb, token_id, oid);
    int grc = x->st->ops->get(x->bt, KS_TAB_OBJECTS, kb, 12, &v);
    if (grc != KS_OK && grc != KS_ENOTFOUND)
        return grc; /* not known to be free: nothing is written */
    if (grc == KS_OK) {
        /* The id counter went back (replayed or damaged metadata): never overwrite. */
        ks_log(KS_LOG_ERROR, "keystore %s: object id %llu is already in use in token %u: the keystore's id counter "
               "went back (its metadata was replayed or damaged); nothing was overwritten. Check the keystore "
               "with 'p11mk-admin verify'", x->st->path, (unsigned long long)oid, token_id);
        return KS_ECORRUPT;
    }
    int rc = seal_put(x, KS_TAB_OBJECTS, kb, 12, KS_KIND_OBJECT, token_id, oid, blob, len, tag);
    return rc == KS_OK ? obj_account(x, token_id, oid, tag, +1) : rc;
}

int ks_obj_put(ks_txn *x, uint32_t token_id, uint64_t oid, const uint8_t *blob, size_t len)
{
    uint8_t kb[12], old[KS_TAG_LEN], tag[KS_TAG_LEN];
    if (!x || !token_id || !oid)
        return KS_EINVAL;
    obj_key(kb, token_id, oid);
    int rc = stored_tag(x, KS_TAB_OBJECTS, kb, 12, old); /* an update: it must exist */
    if (rc == KS_OK)
        rc = seal_put(x, KS_TAB_OBJECTS, kb, 12, KS_KIND_OBJECT, token_id, oid, blob, len, tag);
    if (rc == KS_OK)
        rc = obj_account(x, token_id, oid, old, -1);
    return rc == KS_OK ? obj_account(x, token_id, oid, tag, +1) : rc;
}

int ks_obj_get(ks_txn *x, uint32_t token_id, uint64_t oid, uint8_t **blob, size_t *len)
{
    uint8_t kb[12];
    if (!x || !token_id || !oid)
        return KS_EINVAL;
    obj_key(kb, token_id, oid);
    return get_open(x, KS_TAB_OBJECTS, kb, 12, KS_KIND_OBJECT, token_id, oid, blob, len);
}

int ks_obj_stamp(ks_txn *x, uint32_t token_id, uint64_t oid, ks_stamp *stamp)
{
    uint8_t kb[12];
    ks_bval v;
    int rc;
    if (!x || !token_id || !oid || !stamp)
        return KS_EINVAL;
    obj_key(kb, token_id, oid);
    rc = x->st->ops->get(x->bt, KS_TAB_OBJECTS, kb, 12, &v);
    if (rc != KS_OK)
        return rc;
    rc = ks_rec_header(v.p, v.n, NULL, &stamp->epoch);
    if (rc != KS_OK)
        return rc;
    memcpy(stamp->tag, (const uint8_t *)v.p + v.n - KS_TAG_LEN, KS_TAG_LEN);
    return KS_OK;
}

int ks_obj_del(ks_txn *x, uint32_t token_id, uint64_t oid)
{
    uint8_t kb[12];
    if (!x || !token_id || !oid)
        return KS_EINVAL;
    obj_key(kb, token_id, oid);
    uint8_t tag[KS_TAG_LEN];
    int rc = stored_tag(x, KS_TAB_OBJECTS, kb, 12, tag);
    if (rc == KS_OK)
        rc = ks_wdel(x, KS_TAB_OBJECTS, kb, 12);
    return rc == KS_OK ? obj_account(x, token_id, oid, tag, -1) : rc;
}

int ks_obj_foreach(ks_txn *x, uint32_t token_id, ks_oid_cb cb, void *arg)
{
    const ks_backend_ops *o = x ? x->st->ops : NULL;
    ks_bcur *c;
    ks_bval k, v;
    uint8_t kb[12];
    int rc, ret = KS_OK;

    if (!x || !token_id || !cb)
        return KS_EINVAL;
    if ((rc = o->cur_open(x->bt, KS_TAB_OBJECTS, &c)) != KS_OK)
        return rc;
    obj_key(kb, token_id, 0);
    for (rc = o->cur_seek(c, KS_BSEEK_GE, kb, 12, &k, &v); rc == KS_OK; rc = o->cur_next(c, false, &k, &v)) {
        if (k.n != 12 || ks_get_be32(k.p) != token_id)
            break;
        if ((ret = cb(ks_get_be64(k.p + 4), arg)) != 0)
            break;
    }
    o->cur_close(c);
    if (ret)
        return ret;
    return rc == KS_OK || rc == KS_ENOTFOUND ? KS_OK : rc;
}

static int count_cb(uint64_t oid, void *arg)
{
    (void)oid;
    (*(uint64_t *)arg)++;
    return 0;
}

int ks_token_count_objects(ks_txn *x, uint32_t token_id, uint64_t *n)
{
    ks_meta *m;
    if (!n)
        return KS_EINVAL;
    *n = 0;
    int rc = ks_txn_meta(x, &m);
    if (ks_read_failed(rc))
        return rc; /* counting the records instead would read from the same failing storage */
    if (rc == KS_OK && !m->rs.legacy) {
        ks_tokstat *t = ks_meta_tok(m, token_id, false);
        *n = t && t->exists ? t->n_obj : 0;
        return KS_OK;
    }
    return ks_obj_foreach(x, token_id, count_cb, n);
}

/* ---- indexes ------------------------------------------------------------- */

/* A context keyed with the index key: a spare one re-initialized from the
 * key state it keeps (no allocation), else a new duplicate. */
static EVP_MAC_CTX *idx_mac_take(ks_store *st)
{
    for (int i = 0; i < KS_IDX_SPARE; i++) {
        EVP_MAC_CTX *c = atomic_exchange(&st->idx_spare[i], NULL);

        if (!c)
            continue;
        if (EVP_MAC_init(c, NULL, 0, NULL) == 1)
            return c;
        EVP_MAC_CTX_free(c);
    }
    return EVP_MAC_CTX_dup(st->idx_mac);
}

static void idx_mac_give(ks_store *st, EVP_MAC_CTX *c)
{
    for (int i = 0; i < KS_IDX_SPARE; i++) {
        EVP_MAC_CTX *none = NULL;

        if (atomic_compare_exchange_strong(&st->idx_spare[i], &none, c))
            return;
    }
    EVP_MAC_CTX_free(c);
}

static int idx_key(ks_store *st, uint8_t kb[IDX_KEY_LEN], uint32_t token_id, uint32_t attr, const void *val,
                   size_t len)
{
    uint8_t mac[32], be[4];
    size_t maclen = 0;
    EVP_MAC_CTX *c = idx_mac_take(st);
    int ok;

    if (!c)
        return KS_ENOMEM;
    ks_be32(be, attr);
    ok = EVP_MAC_update(c, be, 4) && (!len || EVP_MAC_update(c, val, len)) &&
         EVP_MAC_final(c, mac, &maclen, sizeof(mac));
    if (ok)
        idx_mac_give(st, c);
    else
        EVP_MAC_CTX_free(c);
    if (!ok || maclen < IDX_MAC_LEN)
        return KS_EIO;
    ks_be32(kb, token_id);
    memcpy(kb + 4, mac, IDX_MAC_LEN);
    return KS_OK;
}

/* Key (token | MAC) and value (oid) of one index entry. */
static int idx_entry(ks_txn *x, uint32_t token_id, uint32_t attr, const void *val, size_t len, uint64_t oid,
                     uint8_t kb[IDX_KEY_LEN], uint8_t vb[8])
{
    if (!x || !token_id || (!val && len))
        return KS_EINVAL;
    ks_be64(vb, oid);
    return idx_key(x->st, kb, token_id, attr, val, len);
}

static int idx_account(ks_txn *x, uint32_t token_id, const uint8_t kb[IDX_KEY_LEN], uint64_t oid, int delta)
{
    uint8_t h[16];
    ks_idx_hash(kb, oid, h);
    return account(x, token_id, true, h, delta);
}

int ks_idx_add(ks_txn *x, uint32_t token_id, uint32_t attr, const void *val, size_t len, uint64_t oid)
{
    uint8_t kb[IDX_KEY_LEN], vb[8];
    int rc = idx_entry(x, token_id, attr, val, len, oid, kb, vb);
    if (rc == KS_OK)
        rc = x->write ? ks_wres(x, x->st->ops->dup_add(x->bt, KS_TAB_INDEX, kb, IDX_KEY_LEN, vb, 8)) : KS_EINVAL;
    if (rc == KS_EEXIST)
        return KS_OK; /* already there: nothing changed */
    return rc == KS_OK ? idx_account(x, token_id, kb, oid, +1) : rc;
}

int ks_idx_del(ks_txn *x, uint32_t token_id, uint32_t attr, const void *val, size_t len, uint64_t oid)
{
    uint8_t kb[IDX_KEY_LEN], vb[8];
    int rc = idx_entry(x, token_id, attr, val, len, oid, kb, vb);
    if (rc == KS_OK)
        rc = x->write ? ks_wres(x, x->st->ops->dup_del(x->bt, KS_TAB_INDEX, kb, IDX_KEY_LEN, vb, 8)) : KS_EINVAL;
    if (rc == KS_ENOTFOUND)
        return KS_OK;
    return rc == KS_OK ? idx_account(x, token_id, kb, oid, -1) : rc;
}

int ks_idx_contains(ks_txn *x, uint32_t token_id, uint32_t attr, const void *val, size_t len, uint64_t oid)
{
    uint8_t kb[IDX_KEY_LEN], vb[8];
    int rc = idx_entry(x, token_id, attr, val, len, oid, kb, vb);
    if (rc != KS_OK)
        return rc;
    return x->st->ops->dup_has(x->bt, KS_TAB_INDEX, kb, IDX_KEY_LEN, vb, 8);
}

int ks_idx_lookup(ks_txn *x, uint32_t token_id, uint32_t attr, const void *val, size_t len, ks_oid_cb cb,
                  void *arg)
{
    const ks_backend_ops *o = x ? x->st->ops : NULL;
    uint8_t kb[IDX_KEY_LEN];
    ks_bcur *c;
    ks_bval k, v;
    int rc, ret = 0;

    if (!x || !token_id || !cb || (!val && len))
        return KS_EINVAL;
    if ((rc = idx_key(x->st, kb, token_id, attr, val, len)) != KS_OK)
        return rc;
    if ((rc = o->cur_open(x->bt, KS_TAB_INDEX, &c)) != KS_OK)
        return rc;
    for (rc = o->cur_seek(c, KS_BSEEK_KEY, kb, IDX_KEY_LEN, &k, &v); rc == KS_OK; rc = o->cur_next(c, true, &k, &v)) {
        if (v.n != 8)
            continue;
        if ((ret = cb(ks_get_be64(v.p), arg)) != 0)
            break;
    }
    o->cur_close(c);
    if (ret)
        return ret;
    return rc == KS_OK || rc == KS_ENOTFOUND ? KS_OK : rc;
}

int ks_peek_counters(const char *dir, uint32_t *epoch, uint64_t *gen, ks_peek_ids *ids)
{
    return KS_BACKEND_DEFAULT->peek_counters(dir, epoch, gen, ids);
}

/* At open: the counts the anchor vouches for against what the databases hold
 * (O(tokens)); a difference is reported, the keystore is still served. */
static int check_counts(ks_store *st, ks_err *err);

int ks_anchor_check_counts(ks_store *st, ks_err *err)
{
    int rc = KS_EIO;
    for (int attempt = 0; attempt < KS_READ_TRIES && rc == KS_EIO; attempt++) {
        if (err)
            err->msg[0] = '\0';
        rc = check_counts(st, err);
    }
    return rc;
}

static int check_counts(ks_store *st, ks_err *err)
{
    ks_txn *x;
    ks_meta *m;
    uint64_t objs = 0, idx = 0, toks = 0;
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return ks_read_failed(rc) ? ks_read_error(err, st->path, "it", rc) : KS_OK;
    if ((rc = ks_txn_meta(x, &m)) != KS_OK || m->rs.legacy) {
        ks_read_end(x);
        /* Damage of the anchor is reported where it is used; a read that failed is this open's failure. */
        return ks_read_failed(rc) ? ks_read_error(err, st->path, "its state record", rc) : KS_OK;
    }
    for (size_t i = 0; i < m->ntok; i++)
        if (m->tok[i].exists) {
            toks++;
            objs += m->tok[i].n_obj;
            idx += m->tok[i].n_idx;
        }
    uint64_t have[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++) {
        /* A count not read is not a count of 0: no mismatch is reported from it. */
        if ((rc = st->ops->count(x->bt, (ks_table[]){KS_TAB_TOKENS, KS_TAB_OBJECTS, KS_TAB_INDEX}[i], &have[i])) !=
            KS_OK) {
            ks_read_end(x);
            return ks_read_error(err, st->path, "the number of its records", rc);
        }
    }
    if (have[0] != toks || have[1] != objs || have[2] != idx)
        ks_log(KS_LOG_ERROR, "keystore %s: its records do not match its authenticated metadata (tokens %llu of "
               "%llu, objects %llu of %llu, index entries %llu of %llu): records were deleted, added or put back; "
               "objects that are there still open as before. Check it with 'p11mk-admin verify'", st->path,
               (unsigned long long)have[0], (unsigned long long)toks, (unsigned long long)have[1],
               (unsigned long long)objs, (unsigned long long)have[2], (unsigned long long)idx);
    ks_read_end(x);
    return KS_OK;
}

bool ks_check_rollback(ks_store *st, char *why, size_t n)
{
    ks_registers regs;
    ks_err e = KS_ERR_INIT;
    char src[sizeof(st->keysrc)];
    unsigned mode;
    uint32_t epoch = ks_epoch(st), max;

    if (st->copy)
        return false; /* a copy being made ready: the key file serves the keystore it will replace */
    pthread_mutex_lock(&st->ring_lock);
    snprintf(src, sizeof(src), "%s", st->keysrc);
    mode = st->keymode;
    pthread_mutex_unlock(&st->ring_lock);
    if (!src[0] || ks_reg_load(src, mode, &regs, &e) != KS_OK)
        return false;
    max = ks_reg_max_epoch(&regs);
    bool other = regs.has_owner && CRYPTO_memcmp(regs.owner, st->ksid, KS_KSID_LEN) != 0;
    if (other) {
        /* A copy restored in the place of the keystore the file names: the
         * file follows it at the next step (ks_lifecycle.c own_regs). */
        ks_info info;
        other = ks_get_info(st, &info) != KS_OK || !ks_info_succeeds(&info, regs.owner) ||
                !ks_reg_holds_current(&regs, info.kcv);
    }
    ks_reg_clear(&regs);
    if (other) {
        /* Reported, never acted on: the steps refuse such a file (ks_lifecycle.c own_regs). */
        snprintf(why, n, "its key file %s serves another keystore (it names that one's id): when that keystore "
                 "rotates and clears its history, the keys this one is sealed under are destroyed. Give this "
                 "keystore its own key file: on a host with that key, 'p11mk-admin export --to-default', then "
                 "restore the export into a keystore configured with a key file of its own", src);
        return true;
    }
    if (max <= epoch)
        return false;
    snprintf(why, n, "the keystore is at epoch %u but its key file %s retired keys up to epoch %u: an older copy of "
             "the keystore was put in place (a rollback); objects created since are missing. Put the newer keystore "
             "back, or restore the copy with 'p11mk-admin restore FILE'", epoch, src, max);
    return true;
}

/* ---- PIN attempts ---------------------------------------------------- */

#define ATTEMPT_LOCK_BASE ((off_t)1 << 60) /* far past any data.mdb: a byte per token */
/* The turnstile before it, a byte per token too: an attempt takes the
 * turnstile, then the token's lock, then lets the turnstile go. A waiter
 * for the lock holds the turnstile, so the holder of the lock, done and
 * back for another attempt, waits at the turnstile while the waiter takes
 * the lock at its next try. Without it a process logging in in a loop
 * kept others' attempts waiting for seconds: it took the lock again
 * microseconds after it let go, and they tried it every 16 ms
 * (races/pin_attempt_fair). */
#define ATTEMPT_TURNSTILE_BASE (ATTEMPT_LOCK_BASE + ((off_t)1 << 32))

/* Descriptors holding OFD locks (PIN attempts; LMDB's writer gate,
 * ks_lmdb.c). An OFD lock belongs to the open file description, which
 * fork() shares with the child: a child forked while an attempt runs (a
 * prefork server, Python's multiprocessing) would hold the token's lock for
 * its whole life, and one forked during a write would hold the writer gate
 * after its parent died. The child closes its copies at once (atomics only:
 * no lock is safe to take in a fork child). */
#define FORK_FDS 128
static int fork_fds[FORK_FDS];
static pthread_once_t attempt_once = PTHREAD_ONCE_INIT;

static void fork_fds_child(void)
{
    for (int i = 0; i < FORK_FDS; i++) {
        int fd = __atomic_exchange_n(&fork_fds[i], -1, __ATOMIC_ACQ_REL);
        if (fd >= 0)
            close(fd);
    }
}

static void attempt_setup(void)
{
    for (int i = 0; i < FORK_FDS; i++)
        __atomic_store_n(&fork_fds[i], -1, __ATOMIC_RELEASE);
    pthread_atfork(NULL, NULL, fork_fds_child);
}

int ks_forkfd_keep(int fd)
{
    pthread_once(&attempt_once, attempt_setup);
    for (int i = 0; i < FORK_FDS; i++) {
        int none = -1;
        if (__atomic_compare_exchange_n(&fork_fds[i], &none, fd, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return i;
    }
    return -1;
}

int ks_forkfd_get(int slot) { return slot < 0 ? -1 : __atomic_load_n(&fork_fds[slot], __ATOMIC_ACQUIRE); }

void ks_forkfd_close(int slot)
{
    if (slot < 0)
        return;
    int fd = __atomic_exchange_n(&fork_fds[slot], -1, __ATOMIC_ACQ_REL);
    if (fd >= 0)
        close(fd);
}

/* Forget fd (an attempt's, kept by ks_forkfd_keep), not closing it. */
static void attempt_forget(int fd)
{
    for (int i = 0; i < FORK_FDS; i++) {
        int want = fd;
        if (__atomic_compare_exchange_n(&fork_fds[i], &want, -1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return;
    }
}

static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static void process_setup(void)
{
    pthread_once(&attempt_once, attempt_setup);
    ks_pg_process_setup();
}
void ks_process_setup(void) { pthread_once(&process_once, process_setup); }

/* Take the byte lock fl on f, trying again every 1, 2, 4, 8, then 16 ms
 * while *waited (ms, counted across calls) is under wait_ms. */
static int attempt_take(int f, struct flock *fl, unsigned wait_ms, unsigned *waited)
{
    unsigned step = 1;

    while (fcntl(f, F_OFD_SETLK, fl) != 0) {
        if (errno != EAGAIN && errno != EACCES && errno != EINTR)
            return KS_EIO;
        if (*waited >= wait_ms)
            return KS_EBUSY;
        usleep(step * 1000u);
        *waited += step;
        step = step < 16 ? step * 2 : 16;
    }
    return KS_OK;
}

int ks_attempt_lock(ks_store *st, uint32_t token_id, unsigned wait_ms, ks_attempt *a)
{
    char p[4096];
    struct stat sb;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = ATTEMPT_LOCK_BASE + token_id, .l_len = 1};
    struct flock turn = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = ATTEMPT_TURNSTILE_BASE + token_id, .l_len = 1};
    unsigned waited = 0;
    int f, rc;

    *a = (ks_attempt)KS_ATTEMPT_INIT;
    if (!st || ks_readonly(st))
        return KS_EROFS;
    pthread_once(&attempt_once, attempt_setup);
    /* LMDB: byte ranges of data.mdb, which every user of the keystore may
     * write. Another backend: DIR/attempts.lock, this host's processes, then
     * the storage's lock of the fleet (lock_attempts). */
    bool lmdb = st->ops == &ks_lmdb_backend;
    if (snprintf(p, sizeof(p), "%s/%s", st->path, lmdb ? "data.mdb" : "attempts.lock") >= (int)sizeof(p))
        return KS_EINVAL;
    /* Each attempt opens its own description: OFD locks then exclude the
     * threads of one process as they exclude processes. */
    f = open(p, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | (lmdb ? 0 : O_CREAT), 0600);
    if (f < 0)
        return errno == EACCES || errno == EROFS ? KS_EROFS : KS_EIO;
    if (fstat(f, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(f);
        return KS_EIO;
    }
    (void)ks_forkfd_keep(f); /* before any lock: a fork child closes its copy (full table: no fork safety) */
    a->fd = f;
    a->st = st;
    a->token_id = token_id;
    rc = attempt_take(f, &turn, wait_ms, &waited);
    if (rc == KS_OK) {
        rc = attempt_take(f, &fl, wait_ms, &waited);
        turn.l_type = F_UNLCK;
        if (fcntl(f, F_OFD_SETLK, &turn) != 0 && rc == KS_OK)
            rc = KS_EIO;
    }
    if (rc == KS_OK && st->ops->lock_attempts)
        rc = st->ops->lock_attempts(st->be, token_id, wait_ms > waited ? wait_ms - waited : 0, &a->fleet);
    if (rc != KS_OK)
        ks_attempt_unlock(a);
    return rc;
}

void ks_attempt_unlock(ks_attempt *a)
{
    if (a->fleet)
        a->st->ops->unlock_attempts(a->st->be, a->token_id, a->fleet);
    a->fleet = NULL;
    if (a->fd < 0)
        return;
    attempt_forget(a->fd);
    close(a->fd); /* the last descriptor of the description releases its lock */
    a->fd = -1;
}
