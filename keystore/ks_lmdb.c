/* p11mk keystore: the LMDB primitives every keystore file uses: error
 * codes, writes that restart the transaction when the map is full, and the
 * metadata database's accessors. */
#include "ks_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

int ks_lmdb_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return KS_OK;
    case MDB_NOTFOUND: return KS_ENOTFOUND;
    case ENOMEM: return KS_ENOMEM;
    case ENOSPC:
    case EDQUOT: return KS_ENOSPC;
    case EACCES:
    case EPERM: return KS_EPERM;
    case EROFS: return KS_EROFS;
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID: return KS_EVERSION;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND: return KS_ECORRUPT;
    default: return KS_EIO;
    }
}

/* ---- meta helpers -------------------------------------------------------- */

static int meta_key(uint8_t kb[32], const char *key, const void *suffix, size_t slen, MDB_val *k)
{
    size_t kl = strlen(key);
    if (kl + slen > 32)
        return KS_EINVAL;
    memcpy(kb, key, kl);
    if (slen)
        memcpy(kb + kl, suffix, slen);
    k->mv_size = kl + slen;
    k->mv_data = kb;
    return KS_OK;
}

int ks_meta_get(MDB_txn *t, ks_store *st, const char *key, const void *suffix, size_t slen, MDB_val *v)
{
    uint8_t kb[32];
    MDB_val k;
    if (meta_key(kb, key, suffix, slen, &k) != KS_OK)
        return KS_EINVAL;
    return ks_lmdb_err(mdb_get(t, st->db_meta, &k, v));
}

int ks_meta_put(ks_txn *x, const char *key, const void *suffix, size_t slen, const void *val, size_t vlen)
{
    uint8_t kb[32];
    MDB_val k, v = {vlen, (void *)val};
    if (meta_key(kb, key, suffix, slen, &k) != KS_OK)
        return KS_EINVAL;
    return ks_wput(x, x->st->db_meta, &k, &v, 0);
}

int ks_meta_del(ks_txn *x, const char *key, const void *suffix, size_t slen)
{
    uint8_t kb[32];
    MDB_val k;
    if (meta_key(kb, key, suffix, slen, &k) != KS_OK)
        return KS_EINVAL;
    int rc = ks_wdel(x, x->st->db_meta, &k, NULL);
    return rc == KS_ENOTFOUND ? KS_OK : rc;
}

/* Mutations go through here so that MDB_MAP_FULL restarts the transaction. */
int ks_wput(ks_txn *x, MDB_dbi db, MDB_val *k, MDB_val *v, unsigned flags)
{
    if (!x->write)
        return KS_EINVAL;
    int rc = mdb_put(x->txn, db, k, v, flags);
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) {
        x->map_full = true;
        return KS_EIO;
    }
    if (rc == MDB_KEYEXIST)
        return KS_EEXIST;
    return ks_lmdb_err(rc);
}

int ks_wdel(ks_txn *x, MDB_dbi db, MDB_val *k, MDB_val *v)
{
    if (!x->write)
        return KS_EINVAL;
    int rc = mdb_del(x->txn, db, k, v);
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) {
        x->map_full = true;
        return KS_EIO;
    }
    return ks_lmdb_err(rc);
}

int ks_cursor_replace(ks_txn *x, MDB_cursor *c, MDB_val *k, MDB_val *v)
{
    int rc = mdb_cursor_put(c, k, v, MDB_CURRENT);
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) {
        x->map_full = true;
        return KS_EIO;
    }
    return ks_lmdb_err(rc);
}

int ks_cursor_del(ks_txn *x, MDB_cursor *c, unsigned flags)
{
    int rc = mdb_cursor_del(c, flags);
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) {
        x->map_full = true;
        return KS_EIO;
    }
    return ks_lmdb_err(rc);
}

/* ---- moved from ks_store.c ---- */
/*
 * Every transaction holds the read side of `resize`; growing the map (which
 * LMDB allows only with no transaction active in the process) takes the
 * write side. Several processes share the files; LMDB's lock file
 * serializes writers and MDB_MAP_RESIZED tells us another process grew it. */

/* ---- map size ------------------------------------------------------------ */

static uint64_t map_init_size(void)
{
    const char *e = getenv("P11MK_MAPSIZE_INIT");
    if (e && *e) {
        char *end;
        unsigned long long v = strtoull(e, &end, 10);
        if (!*end && v >= (1ull << 16))
            return v;
    }
    return MAP_INIT_DEFAULT;
}

/* Another process grew the map: adopt its size. */
static void adopt_resize(ks_store *st)
{
    pthread_rwlock_wrlock(&st->resize);
    mdb_env_set_mapsize(st->env, 0);
    pthread_rwlock_unlock(&st->resize);
}

int grow_map(ks_store *st)
{
    MDB_envinfo info;
    int rc;
    pthread_rwlock_wrlock(&st->resize);
    mdb_env_info(st->env, &info);
    uint64_t cur = info.me_mapsize;
    uint64_t step = cur < MAP_STEP_MAX ? cur : MAP_STEP_MAX;
    rc = mdb_env_set_mapsize(st->env, (size_t)(cur + step));
    pthread_rwlock_unlock(&st->resize);
    if (rc != MDB_SUCCESS) {
        ks_log(KS_LOG_ERROR, "keystore %s: cannot grow the map to %llu bytes: %s", st->path,
               (unsigned long long)(cur + step), mdb_strerror(rc));
        return KS_EIO;
    }
    ks_log(KS_LOG_DEBUG, "keystore %s: map grown to %llu bytes", st->path, (unsigned long long)(cur + step));
    return KS_OK;
}

/* Begin an LMDB transaction with the resize lock held (read side). */
int txn_begin(ks_store *st, unsigned flags, MDB_txn **out)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        pthread_rwlock_rdlock(&st->resize);
        int rc = mdb_txn_begin(st->env, NULL, flags, out);
        if (rc == MDB_SUCCESS)
            return KS_OK;
        pthread_rwlock_unlock(&st->resize);
        if (rc == MDB_MAP_RESIZED) {
            adopt_resize(st);
            continue;
        }
        if (rc == MDB_READERS_FULL) {
            int dead = 0;
            mdb_reader_check(st->env, &dead);
            if (dead > 0)
                continue;
        }
        ks_log(KS_LOG_ERROR, "keystore %s: cannot begin a transaction: %s", st->path, mdb_strerror(rc));
        return ks_lmdb_err(rc);
    }
    return KS_EIO;
}

/* ---- opening ------------------------------------------------------------- */

int open_dbs(ks_store *st, MDB_txn *t, unsigned flags)
{
    int rc;
    if ((rc = mdb_dbi_open(t, "meta", flags, &st->db_meta)) ||
        (rc = mdb_dbi_open(t, "tokens", flags, &st->db_tok)) ||
        (rc = mdb_dbi_open(t, "objects", flags, &st->db_obj)) ||
        (rc = mdb_dbi_open(t, "index", flags | MDB_DUPSORT | MDB_DUPFIXED, &st->db_idx)))
        return rc;
    return MDB_SUCCESS;
}

int env_open(ks_store *st, unsigned flags, ks_err *err)
{
    int rc;
    unsigned mflags = MDB_NOTLS;

    for (int pass = 0; pass < 2; pass++) {
        if ((rc = mdb_env_create(&st->env)) != MDB_SUCCESS)
            break;
        mdb_env_set_maxdbs(st->env, 8);
        mdb_env_set_maxreaders(st->env, MAX_READERS);
        mdb_env_set_mapsize(st->env, (size_t)map_init_size());
        rc = mdb_env_open(st->env, st->path, mflags | (st->rdonly ? MDB_RDONLY : 0), 0600);
        if (rc == MDB_SUCCESS)
            break;
        mdb_env_close(st->env);
        st->env = NULL;
        /* A directory we may read but not write: serve it read-only. */
        if (pass == 0 && !st->rdonly && (rc == EACCES || rc == EROFS) && !(flags & KS_OPEN_CREATE)) {
            st->rdonly = true;
            continue;
        }
        if (pass == 0 && !st->rdonly && (rc == EACCES || rc == EROFS) && (flags & KS_OPEN_CREATE) &&
            access(st->path, W_OK) != 0) {
            char data[4096];
            snprintf(data, sizeof(data), "%s/data.mdb", st->path);
            if (access(data, R_OK) == 0) {
                st->rdonly = true;
                continue;
            }
        }
        break;
    }
    if (rc != MDB_SUCCESS) {
        ks_err_set(err, "cannot open keystore %s: %s; check that the directory exists and that this user may "
                        "read and write it", st->path, mdb_strerror(rc));
        return ks_lmdb_err(rc);
    }
    if (st->rdonly)
        ks_log(KS_LOG_WARN, "keystore %s is not writable by this user: serving it read-only", st->path);
    int dead = 0;
    mdb_reader_check(st->env, &dead);
    if (dead)
        ks_log(KS_LOG_INFO, "keystore %s: cleared %d stale reader slot(s)", st->path, dead);
    return KS_OK;
}

/* Regular files write short only when space runs out. */
bool fs_nearly_full(const char *dir)
{
    struct statvfs vs;
    return statvfs(dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < (1u << 20);
}

int ks_peek_counters(const char *dir, uint32_t *epoch, uint64_t *gen)
{
    MDB_env *env = NULL;
    MDB_txn *t = NULL;
    MDB_dbi dbi;
    MDB_val k, v;
    char data[4200];
    int rc;

    *epoch = 0;
    *gen = 0;
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    if (access(data, R_OK) != 0)
        return KS_ENOTFOUND;
    if ((rc = mdb_env_create(&env)) != MDB_SUCCESS)
        return ks_lmdb_err(rc);
    mdb_env_set_maxdbs(env, 8);
    rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0600);
    if (rc == MDB_SUCCESS)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &t);
    if (rc == MDB_SUCCESS)
        rc = mdb_dbi_open(t, "meta", 0, &dbi);
    if (rc == MDB_SUCCESS) {
        k.mv_size = 5;
        k.mv_data = (void *)"epoch";
        if (mdb_get(t, dbi, &k, &v) == MDB_SUCCESS && v.mv_size == 4)
            *epoch = ks_get_be32(v.mv_data);
        k.mv_size = 3;
        k.mv_data = (void *)"gen";
        if (mdb_get(t, dbi, &k, &v) == MDB_SUCCESS && v.mv_size == 8)
            *gen = ks_get_be64(v.mv_data);
    }
    if (t)
        mdb_txn_abort(t);
    mdb_env_close(env);
    return ks_lmdb_err(rc);
}

/* ---- moved from ks_backup.c ---- */

int copy_to_fd(ks_store *st, int fd)
{
    /* No map resize may happen during the copy. */
    pthread_rwlock_rdlock(&st->resize);
    int rc = mdb_env_copyfd2(st->env, fd, MDB_CP_COMPACT);
    pthread_rwlock_unlock(&st->resize);
    return rc;
}

/* Is this a complete LMDB data file? Both meta pages are read with pread;
 * the newer one names the last page, which must lie inside the file. A
 * truncated copy is refused here, before anything maps it (a mapped file
 * shorter than its pages raises SIGBUS). */
int check_lmdb_file(int fd, const char *name, ks_err *err)
{
    struct stat sb;
    uint8_t m0[160], m1[160];
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ks_err_set(err, "%s is not a regular file; nothing was restored", name);
        return KS_EBADFILE;
    }
    if (pread(fd, m0, sizeof(m0), 0) != (ssize_t)sizeof(m0))
        goto bad;
    uint32_t magic, psize;
    memcpy(&magic, m0 + 16, 4);
    memcpy(&psize, m0 + 40, 4);
    if (magic != 0xBEEFC0DEu || psize < 512 || psize > 65536 || (psize & (psize - 1)) ||
        pread(fd, m1, sizeof(m1), psize) != (ssize_t)sizeof(m1))
        goto bad;
    uint64_t last0, last1, txn0, txn1;
    memcpy(&magic, m1 + 16, 4);
    memcpy(&last0, m0 + 136, 8);
    memcpy(&txn0, m0 + 144, 8);
    memcpy(&last1, m1 + 136, 8);
    memcpy(&txn1, m1 + 144, 8);
    uint64_t last = magic == 0xBEEFC0DEu && txn1 > txn0 ? last1 : last0;
    if (last > (uint64_t)sb.st_size / psize || (last + 1) * (uint64_t)psize > (uint64_t)sb.st_size) {
        ks_err_set(err, "%s is truncated: it holds %lld bytes, its own header says at least %llu; it is not a "
                        "complete backup (nothing was restored)", name, (long long)sb.st_size,
                   (unsigned long long)((last + 1) * (uint64_t)psize));
        return KS_EBADFILE;
    }
    return KS_OK;
bad:
    ks_err_set(err, "%s is not a p11mk backup (no LMDB header); nothing was restored", name);
    return KS_EBADFILE;
}

