/* p11mk keystore: the metadata table's records, named by a short key and an
 * optional binary suffix (at most 32 bytes together). Used by the store
 * (ks_store.c) and the anchor that vouches for it (ks_anchor.c). */
#include "ks_internal.h"

#include <string.h>

/* ---- meta records ---------------------------------------------------------- */

static int meta_key(uint8_t kb[32], const char *key, const void *suffix, size_t slen, size_t *kl)
{
    size_t n = strlen(key);
    if (n + slen > 32)
        return KS_EINVAL;
    memcpy(kb, key, n);
    if (slen)
        memcpy(kb + n, suffix, slen);
    *kl = n + slen;
    return KS_OK;
}

int ks_meta_get(ks_btxn *t, ks_store *st, const char *key, const void *suffix, size_t slen, ks_bval *v)
{
    uint8_t kb[32];
    size_t kl;
    if (meta_key(kb, key, suffix, slen, &kl) != KS_OK)
        return KS_EINVAL;
    return st->ops->get(t, KS_TAB_META, kb, kl, v);
}

int ks_meta_put(ks_txn *x, const char *key, const void *suffix, size_t slen, const void *val, size_t vlen)
{
    uint8_t kb[32];
    size_t kl;
    if (meta_key(kb, key, suffix, slen, &kl) != KS_OK)
        return KS_EINVAL;
    return ks_wput(x, KS_TAB_META, kb, kl, val, vlen);
}

int ks_meta_del(ks_txn *x, const char *key, const void *suffix, size_t slen)
{
    uint8_t kb[32];
    size_t kl;
    if (meta_key(kb, key, suffix, slen, &kl) != KS_OK)
        return KS_EINVAL;
    int rc = ks_wdel(x, KS_TAB_META, kb, kl);
    return rc == KS_ENOTFOUND ? KS_OK : rc;
}

int ks_read_error(ks_err *err, const char *path, const char *what, int rc)
{
    /* Said plainly: a read that failed is no evidence of damage, and
     * restoring a backup over a keystore that is fine would lose data. */
    ks_err_set(err, "keystore %s: cannot read %s (%s); nothing was changed: %s", path, what, ks_strerror(rc),
               ks_read_advice(rc));
    return rc;
}
