/* p11mk keystore: the LMDB primitives every keystore file uses: error
 * codes, writes that restart the transaction when the map is full, and the
 * metadata database's accessors. */
#include "ks_internal.h"

#include <errno.h>
#include <string.h>

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

