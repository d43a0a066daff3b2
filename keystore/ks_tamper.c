/* p11mk keystore, for tests only: raw access to the stored records
 * (keystore/include/keystore/ks_tamper.h), over LMDB. Not part of the
 * keystore library: its own static library, linked by the tests alone. It
 * needs nothing of the keystore but its error codes, so that a test that
 * loads the module with dlopen links no second keystore. */
#include "keystore/ks_tamper.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

struct ks_tamper {
    MDB_env *env;
    MDB_txn *txn;
    bool rdonly;
};

/* The failures the header promises; anything else is KS_EIO. */
static int tamper_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return KS_OK;
    case MDB_NOTFOUND: return KS_ENOTFOUND;
    case ENOMEM: return KS_ENOMEM;
    case ENOSPC:
    case EDQUOT:
    case MDB_MAP_FULL:
    case MDB_TXN_FULL: return KS_ENOSPC;
    case EACCES:
    case EPERM:
    case EROFS: return KS_EPERM;
    case MDB_BAD_VALSIZE: return KS_EINVAL;
    default: return KS_EIO;
    }
}

static void be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

void ks_tamper_token_key(uint8_t key[KS_TAMPER_TOKEN_KEY_LEN], uint32_t token) { be32(key, token); }

void ks_tamper_object_key(uint8_t key[KS_TAMPER_OBJECT_KEY_LEN], uint32_t token, uint64_t oid)
{
    be32(key, token);
    be32(key + 4, (uint32_t)(oid >> 32));
    be32(key + 8, (uint32_t)oid);
}

/* The table's handle in this transaction: KS_OK, KS_ENOTFOUND (it does not
 * exist), KS_EINVAL (not one of the four). The index is the one table with
 * several values per key; its flags must be the keystore's. */
static int table(ks_tamper *t, const char *name, MDB_dbi *dbi, bool *dup)
{
    bool idx = name && strcmp(name, KS_TAMPER_INDEX) == 0;
    if (!t || !name ||
        (!idx && strcmp(name, KS_TAMPER_META) != 0 && strcmp(name, KS_TAMPER_TOKENS) != 0 &&
         strcmp(name, KS_TAMPER_OBJECTS) != 0))
        return KS_EINVAL;
    if (dup)
        *dup = idx;
    int rc = mdb_dbi_open(t->txn, name, idx ? MDB_DUPSORT | MDB_DUPFIXED : 0, dbi);
    return rc == MDB_SUCCESS ? KS_OK : rc == MDB_NOTFOUND ? KS_ENOTFOUND : KS_EIO;
}

int ks_tamper_open(const char *dir, unsigned flags, ks_tamper **out)
{
    char data[4200];
    if (!dir || !out || (flags & ~(unsigned)KS_TAMPER_RDONLY))
        return KS_EINVAL;
    *out = NULL;
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    if (access(data, F_OK) != 0)
        return errno == ENOENT || errno == ENOTDIR ? KS_ENOTFOUND : errno == EACCES ? KS_EPERM : KS_EIO;
    ks_tamper *t = calloc(1, sizeof(*t));
    if (!t)
        return KS_ENOMEM;
    t->rdonly = flags & KS_TAMPER_RDONLY;
    unsigned envflags = MDB_NOTLS | (t->rdonly ? MDB_RDONLY : 0);
    int rc = mdb_env_create(&t->env);
    if (rc == MDB_SUCCESS) {
        mdb_env_set_maxdbs(t->env, 8);
        mdb_env_set_mapsize(t->env, 0); /* the size the keystore has grown to */
        rc = mdb_env_open(t->env, dir, envflags, 0600);
    }
    if (rc == MDB_SUCCESS)
        rc = mdb_txn_begin(t->env, NULL, t->rdonly ? MDB_RDONLY : 0, &t->txn);
    if (rc != MDB_SUCCESS) {
        if (t->env)
            mdb_env_close(t->env);
        free(t);
        rc = tamper_err(rc);
        return rc == KS_ENOTFOUND || rc == KS_ENOSPC || rc == KS_EINVAL ? KS_EIO : rc;
    }
    *out = t;
    return KS_OK;
}

int ks_tamper_get(ks_tamper *t, const char *name, const void *key, size_t klen, uint8_t **val, size_t *vlen)
{
    MDB_dbi dbi;
    int rc = table(t, name, &dbi, NULL);
    if (rc != KS_OK)
        return rc;
    if (!key || !klen || !val || !vlen)
        return KS_EINVAL;
    MDB_val k = {klen, (void *)key}, v;
    rc = mdb_get(t->txn, dbi, &k, &v);
    if (rc != MDB_SUCCESS)
        return rc == MDB_NOTFOUND || rc == MDB_BAD_VALSIZE ? KS_ENOTFOUND : KS_EIO;
    if (!(*val = malloc(v.mv_size ? v.mv_size : 1)))
        return KS_ENOMEM;
    memcpy(*val, v.mv_data, v.mv_size);
    *vlen = v.mv_size;
    return KS_OK;
}

/* A write's result: the promised codes, else KS_EIO. */
static int write_err(int rc)
{
    rc = tamper_err(rc);
    return rc == KS_OK || rc == KS_ENOTFOUND || rc == KS_EINVAL || rc == KS_ENOSPC || rc == KS_ENOMEM ? rc : KS_EIO;
}

int ks_tamper_put(ks_tamper *t, const char *name, const void *key, size_t klen, const void *val, size_t vlen)
{
    MDB_dbi dbi;
    int rc = table(t, name, &dbi, NULL);
    if (rc != KS_OK)
        return rc;
    if (!key || !klen || (!val && vlen))
        return KS_EINVAL;
    if (t->rdonly)
        return KS_EROFS;
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    return write_err(mdb_put(t->txn, dbi, &k, &v, 0));
}

int ks_tamper_del(ks_tamper *t, const char *name, const void *key, size_t klen)
{
    MDB_dbi dbi;
    int rc = table(t, name, &dbi, NULL);
    if (rc != KS_OK)
        return rc;
    if (!key || !klen)
        return KS_EINVAL;
    if (t->rdonly)
        return KS_EROFS;
    MDB_val k = {klen, (void *)key};
    rc = mdb_del(t->txn, dbi, &k, NULL);
    return rc == MDB_BAD_VALSIZE ? KS_ENOTFOUND : write_err(rc);
}

int ks_tamper_drop(ks_tamper *t, const char *name)
{
    MDB_dbi dbi;
    int rc = table(t, name, &dbi, NULL);
    if (rc != KS_OK)
        return rc;
    if (t->rdonly)
        return KS_EROFS;
    return write_err(mdb_drop(t->txn, dbi, 1));
}

int ks_tamper_count(ks_tamper *t, const char *name, uint64_t *n)
{
    MDB_dbi dbi;
    MDB_stat ms;
    int rc = table(t, name, &dbi, NULL);
    if (rc != KS_OK)
        return rc;
    if (!n)
        return KS_EINVAL;
    if (mdb_stat(t->txn, dbi, &ms) != MDB_SUCCESS)
        return KS_EIO;
    *n = ms.ms_entries;
    return KS_OK;
}

/* The records a walk was asked to delete, copied. */
typedef struct {
    MDB_val *kv; /* pairs: key, value */
    size_t n, cap;
} doomed;

static void doomed_free(doomed *d)
{
    for (size_t i = 0; i < 2 * d->n; i++)
        free(d->kv[i].mv_data);
    free(d->kv);
}

static int doomed_add(doomed *d, const MDB_val *k, const MDB_val *v)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 16;
        MDB_val *kv = realloc(d->kv, 2 * cap * sizeof(*kv));
        if (!kv)
            return KS_ENOMEM;
        d->kv = kv;
        d->cap = cap;
    }
    const MDB_val *src[2] = {k, v};
    for (int i = 0; i < 2; i++) {
        MDB_val *dst = &d->kv[2 * d->n + i];
        dst->mv_size = src[i]->mv_size;
        if (!(dst->mv_data = malloc(dst->mv_size ? dst->mv_size : 1))) {
            if (i == 1)
                free(d->kv[2 * d->n].mv_data);
            return KS_ENOMEM;
        }
        memcpy(dst->mv_data, src[i]->mv_data, dst->mv_size);
    }
    d->n++;
    return KS_OK;
}

int ks_tamper_foreach(ks_tamper *t, const char *name, ks_tamper_cb cb, void *arg)
{
    MDB_dbi dbi;
    MDB_cursor *c;
    MDB_val k, v;
    doomed d = {0};
    int rc = table(t, name, &dbi, NULL);
    if (rc != KS_OK)
        return rc;
    if (!cb)
        return KS_EINVAL;
    if (mdb_cursor_open(t->txn, dbi, &c) != MDB_SUCCESS)
        return KS_EIO;
    int mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    for (; mrc == MDB_SUCCESS; mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        int what = cb(k.mv_data, k.mv_size, v.mv_data, v.mv_size, arg);
        if (what == KS_TAMPER_NEXT)
            continue;
        if (what == KS_TAMPER_STOP)
            break;
        if (what != KS_TAMPER_DELETE)
            rc = KS_EINVAL;
        else if (t->rdonly)
            rc = KS_EROFS;
        else
            rc = doomed_add(&d, &k, &v);
        if (rc != KS_OK)
            break;
    }
    mdb_cursor_close(c);
    if (rc == KS_OK && mrc != MDB_SUCCESS && mrc != MDB_NOTFOUND)
        rc = KS_EIO;
    for (size_t i = 0; rc == KS_OK && i < d.n; i++)
        rc = write_err(mdb_del(t->txn, dbi, &d.kv[2 * i], &d.kv[2 * i + 1]));
    doomed_free(&d);
    return rc == KS_ENOTFOUND ? KS_EIO : rc;
}

int ks_tamper_flip_object(ks_tamper *t, uint32_t token, uint64_t oid, long at, uint8_t mask)
{
    uint8_t key[KS_TAMPER_OBJECT_KEY_LEN], *val;
    size_t len;
    if (!t || !mask)
        return KS_EINVAL;
    ks_tamper_object_key(key, token, oid);
    int rc = ks_tamper_get(t, KS_TAMPER_OBJECTS, key, sizeof(key), &val, &len);
    if (rc != KS_OK)
        return rc;
    if (at >= 0 ? (size_t)at >= len : (size_t) - (at + 1) >= len)
        rc = KS_EINVAL;
    else if (t->rdonly)
        rc = KS_EROFS;
    if (rc == KS_OK) {
        val[at >= 0 ? (size_t)at : len - (size_t) - (at + 1) - 1] ^= mask;
        rc = ks_tamper_put(t, KS_TAMPER_OBJECTS, key, sizeof(key), val, len);
    }
    free(val);
    return rc;
}

int ks_tamper_commit(ks_tamper *t)
{
    if (!t)
        return KS_EINVAL;
    int rc = KS_OK;
    if (t->rdonly) {
        mdb_txn_abort(t->txn);
    } else {
        rc = tamper_err(mdb_txn_commit(t->txn));
        if (rc != KS_OK && rc != KS_ENOSPC)
            rc = KS_EIO;
    }
    mdb_env_close(t->env);
    free(t);
    return rc;
}

void ks_tamper_abort(ks_tamper *t)
{
    if (!t)
        return;
    mdb_txn_abort(t->txn);
    mdb_env_close(t->env);
    free(t);
}
