/* p11mk keystore: the storage backends built in, by name (p11mk.conf's
 * backend =), and what every backend shares: the backup copy, always an
 * LMDB data file, so that a backup moves between backends. */
#include "ks_internal.h"

#include <dirent.h>
#include <stdatomic.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const ks_backend_ops *const backends[] = {&ks_lmdb_backend, &ks_pg_backend};
/* One more, registered by a program linked with the keystore (the unit
 * tests' failing backend); never set by the module. */
static const ks_backend_ops *_Atomic extra_backend;

const ks_backend_ops *ks_backend_find(const char *name)
{
    for (size_t i = 0; name && i < sizeof(backends) / sizeof(backends[0]); i++)
        if (strcmp(name, backends[i]->name) == 0)
            return backends[i];
    const ks_backend_ops *x = atomic_load(&extra_backend);
    return name && x && strcmp(name, x->name) == 0 ? x : NULL;
}

int ks_backend_register(const ks_backend_ops *ops)
{
    if (!ops || !ops->name)
        return KS_EINVAL;
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (strcmp(ops->name, backends[i]->name) == 0)
            return KS_EEXIST; /* a built-in one is never replaced */
    atomic_store(&extra_backend, ops);
    return KS_OK;
}

const char *ks_backend_names(void)
{
    return "lmdb, postgresql"; /* the names in backends[], comma-separated */
}

/* Every entry of one table from src's snapshot into dst's write transaction. */
static int copy_table(const ks_backend_ops *so, ks_btxn *src, const ks_backend_ops *d, ks_btxn *dst, ks_table tab)
{
    ks_bcur *c;
    ks_bval k, v;
    int rc = so->cur_open(src, tab, &c);
    if (rc != KS_OK)
        return rc;
    for (rc = so->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); rc == KS_OK; rc = so->cur_next(c, false, &k, &v)) {
        int w = tab == KS_TAB_INDEX ? d->dup_add(dst, tab, k.p, k.n, v.p, v.n) : d->put(dst, tab, k.p, k.n, v.p, v.n);
        if (w != KS_OK) {
            so->cur_close(c);
            return w;
        }
    }
    so->cur_close(c);
    return rc == KS_ENOTFOUND ? KS_OK : rc;
}

static void remove_scratch(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb", "users.lock"};
    char p[4200];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

int ks_backend_copy_to_lmdb(const ks_backend_ops *o, ks_benv *e, int fd, int *sys_err, char *why, size_t n)
{
    const ks_backend_ops *d = &ks_lmdb_backend;
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    ks_err err = {0};
    int rc;

    *sys_err = 0;
    if (o == d)
        return d->copy(e, fd, sys_err, why, n);
    snprintf(dir, sizeof(dir), "%s/p11mk-copy-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        *sys_err = errno;
        snprintf(why, n, "cannot make a scratch directory in %s: %s", tmp && *tmp ? tmp : "/tmp", strerror(errno));
        return KS_EIO;
    }
    ks_benv *de = NULL;
    bool rdonly = false, tables = false;
    if ((rc = d->open(dir, NULL, KS_OPEN_CREATE, &rdonly, &tables, &de, &err)) != KS_OK) {
        snprintf(why, n, "%s", err.msg[0] ? err.msg : ks_strerror(rc));
        remove_scratch(dir);
        return rc;
    }
    rc = ks_backend_transfer(o, e, d, de, tables, false);
    if (rc == KS_OK)
        rc = d->copy(de, fd, sys_err, why, n);
    else
        snprintf(why, n, "reading the keystore to copy it: %s", ks_strerror(rc));
    d->close(de);
    remove_scratch(dir);
    return rc;
}

int ks_backend_transfer(const ks_backend_ops *so, ks_benv *se, const ks_backend_ops *d, ks_benv *de, bool dst_tables,
                        bool replace)
{
    int rc = KS_EIO;
    for (int attempt = 0; attempt < 32; attempt++) {
        ks_btxn *src = NULL, *dst = NULL;
        if ((rc = so->read_begin(se, &src)) == KS_OK && (rc = d->write_begin(de, &dst)) == KS_OK &&
            (rc = dst_tables ? KS_OK : d->create_tables(dst)) == KS_OK) {
            for (int tab = 0; replace && tab < KS_TAB_N && rc == KS_OK; tab++)
                rc = d->del_prefix(dst, (ks_table)tab, NULL, 0);
            for (int tab = 0; tab < KS_TAB_N && rc == KS_OK; tab++)
                rc = copy_table(so, src, d, dst, (ks_table)tab);
        }
        if (src)
            so->read_end(src);
        if (dst)
            rc = rc == KS_OK ? d->commit(dst) : (d->abort(dst), rc);
        if (rc != KS_BE_RETRY)
            break;
        d->make_room(de); /* a full map, a serialization failure: grow or wait, start again */
    }
    return rc == KS_BE_RETRY ? KS_EIO : rc;
}

size_t ks_succeeds_decode(const void *val, size_t len, uint8_t out[KS_SUCCEEDS_MAX][16])
{
    size_t n = len % 16 ? 0 : len / 16;
    if (n > KS_SUCCEEDS_MAX)
        n = KS_SUCCEEDS_MAX;
    if (n)
        memcpy(out, val, n * 16);
    return n;
}

int ks_backend_peek_counters(const ks_backend_ops *o, ks_benv *e, uint32_t *epoch, uint64_t *gen, ks_peek_ids *ids)
{
    ks_btxn *t;
    ks_bval v;
    *epoch = 0;
    *gen = 0;
    if (ids)
        memset(ids, 0, sizeof(*ids));
    int rc = o->read_begin(e, &t);
    if (rc != KS_OK)
        return rc;
    /* Missing: 0, as documented; not read: the failure (a 0 taken for the
     * live generation would let a restored copy look older than it). */
    if ((rc = o->get(t, KS_TAB_META, "epoch", 5, &v)) == KS_OK && v.n == 4)
        *epoch = ks_get_be32(v.p);
    if ((rc == KS_OK || rc == KS_ENOTFOUND) && (rc = o->get(t, KS_TAB_META, "gen", 3, &v)) == KS_OK && v.n == 8)
        *gen = ks_get_be64(v.p);
    uint8_t kk[7] = {'k', 'c', 'v'};
    ks_be32(kk + 3, *epoch);
    if (ids && *epoch && (rc == KS_OK || rc == KS_ENOTFOUND) && (rc = o->get(t, KS_TAB_META, kk, 7, &v)) == KS_OK &&
        v.n == 8) {
        memcpy(ids->kcv, v.p, 8);
        ids->have_kcv = true;
    }
    if (ids && (rc == KS_OK || rc == KS_ENOTFOUND) && (rc = o->get(t, KS_TAB_META, "ksid", 4, &v)) == KS_OK &&
        v.n == 16) {
        memcpy(ids->ksid, v.p, 16);
        ids->have_ksid = true;
    }
    if (ids && (rc == KS_OK || rc == KS_ENOTFOUND) && (rc = o->get(t, KS_TAB_META, "succeeds", 8, &v)) == KS_OK)
        ids->n_succeeds = ks_succeeds_decode(v.p, v.n, ids->succeeds);
    o->read_end(t);
    return rc == KS_ENOTFOUND ? KS_OK : rc;
}
