/* p11mk keystore: what verify checks against the anchor (the anchor itself
 * is in ks_anchor.c). */
#include "ks_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- verification ------------------------------------------------------------------------ */

typedef struct {
    uint32_t tid;
    uint64_t n_obj, n_idx;
    uint8_t obj_hash[16], idx_hash[16];
    bool has_record;
} seen_tok;

static seen_tok *seen_get(seen_tok **v, size_t *n, size_t *cap, uint32_t tid)
{
    for (size_t i = *n; i-- > 0;) /* records come in key order: the last one is usually it */
        if ((*v)[i].tid == tid)
            return &(*v)[i];
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 16;
        seen_tok *nv = realloc(*v, c * sizeof(*nv));
        if (!nv)
            return NULL;
        *v = nv;
        *cap = c;
    }
    memset(&(*v)[*n], 0, sizeof(**v));
    (*v)[*n].tid = tid;
    return &(*v)[(*n)++];
}

int ks_verify_anchor(ks_store *st, ks_verify_cb cb, void *arg, uint64_t *failed)
{
    ks_txn *x;
    ks_meta *m;
    const ks_backend_ops *o = st->ops;
    ks_bcur *c;
    ks_bval k, v;
    seen_tok *seen = NULL;
    size_t nseen = 0, cap = 0;
    uint64_t max_oid = 0;
    uint32_t max_tid = 0;
    char what[256];
    int rc = ks_read_begin(st, &x), mrc;

#define REPORT(kind, tok, oid, ...)                                                                                \
    do {                                                                                                           \
        snprintf(what, sizeof(what), __VA_ARGS__);                                                                 \
        (*failed)++;                                                                                               \
        if (cb)                                                                                                    \
            cb(kind, tok, oid, KS_ECORRUPT, what, arg);                                                            \
    } while (0)

    if (rc != KS_OK)
        return rc;
    if (ks_read_failed(rc = ks_txn_meta(x, &m))) {
        ks_read_end(x);
        return rc; /* not read: no verdict on it */
    }
    if (rc != KS_OK) {
        REPORT('M', 0, 0, "the state record (rotation state and counters) is missing or failed authentication");
        ks_read_end(x);
        return KS_OK;
    }
    if (m->rs.legacy) { /* format 1: nothing authenticated to compare with until the first write upgrades it */
        ks_read_end(x);
        return KS_OK;
    }
    rc = ks_meta_get(x->bt, st, "gen", NULL, 0, &v);
    if (ks_read_failed(rc))
        goto fail;
    if (rc == KS_ECORRUPT) /* a plain record: only the storage says so */
        REPORT('M', 0, 0, "the generation counter cannot be read: the storage file is damaged");
    else if (rc != KS_OK || v.n != 8 || ks_get_be64(v.p) != m->rs.gen)
        REPORT('M', 0, 0, "the generation counter is missing or differs from the authenticated one (%llu): "
               "processes may not notice key changes", (unsigned long long)m->rs.gen);
    if (m->rs.format != st->format)
        REPORT('M', 0, 0, "the format record says %u, the authenticated state %u", st->format, m->rs.format);
    for (int which = 0; which < 2; which++) {
        uint32_t e = which ? m->rs.nxt : m->rs.cur;
        const uint8_t *want = which ? m->rs.nxt_kcv : m->rs.cur_kcv;
        uint8_t be[4];
        if (!e)
            continue;
        ks_be32(be, e);
        rc = ks_meta_get(x->bt, st, "kcv", be, 4, &v);
        if (ks_read_failed(rc))
            goto fail;
        if (rc == KS_ECORRUPT)
            REPORT('M', 0, 0, "the check value recorded for epoch %u (%s) cannot be read: the storage file is "
                   "damaged", e, which ? "staged" : "current");
        else if (rc != KS_OK || v.n != KS_KCV_LEN || memcmp(v.p, want, KS_KCV_LEN) != 0)
            REPORT('M', 0, 0, "the check value recorded for epoch %u (%s) is missing or differs from the "
                   "authenticated one: the metadata was edited", e, which ? "staged" : "current");
    }

    if ((rc = o->cur_open(x->bt, KS_TAB_TOKENS, &c)) != KS_OK)
        goto fail;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != 4) {
            REPORT('T', 0, 0, "a token record is stored under a malformed key (%zu bytes)", k.n);
            continue;
        }
        uint32_t tid = ks_get_be32(k.p);
        seen_tok *s = seen_get(&seen, &nseen, &cap, tid);
        if (!s)
            goto nomem;
        s->has_record = true;
        ks_tokstat *ts = ks_meta_tok(m, tid, false);
        if (ts && ts->exists && (v.n <= KS_TAG_LEN ||
                                 memcmp(v.p + v.n - KS_TAG_LEN, ts->tag, KS_TAG_LEN)))
            REPORT('T', tid, 0, "the token record is not the one the metadata vouches for (an older copy was put "
                   "back: its PINs and their failure counts would be old ones)");
        if (tid > max_tid)
            max_tid = tid;
    }
    o->cur_close(c);
    if (mrc != KS_ENOTFOUND) /* a scan cut short would report what it did not reach as missing */
        goto scan_failed;
    if ((rc = o->cur_open(x->bt, KS_TAB_OBJECTS, &c)) != KS_OK)
        goto fail;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != 12) {
            REPORT('O', 0, 0, "an object record is stored under a malformed key (%zu bytes)", k.n);
            continue;
        }
        uint32_t tid = ks_get_be32(k.p);
        uint64_t oid = ks_get_be64(k.p + 4);
        seen_tok *s = seen_get(&seen, &nseen, &cap, tid);
        uint8_t h[16];
        if (!s)
            goto nomem;
        if (v.n <= KS_TAG_LEN) {
            REPORT('O', tid, oid, "the object record is too short to be one");
            continue;
        }
        ks_obj_hash(tid, oid, v.p + v.n - KS_TAG_LEN, h);
        ks_hash_xor(s->obj_hash, h);
        s->n_obj++;
        if (oid > max_oid)
            max_oid = oid;
    }
    o->cur_close(c);
    if (mrc != KS_ENOTFOUND)
        goto scan_failed;
    if ((rc = o->cur_open(x->bt, KS_TAB_INDEX, &c)) != KS_OK)
        goto fail;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != IDX_KEY_LEN || v.n != 8) {
            REPORT('I', 0, 0, "an index entry is malformed");
            continue;
        }
        seen_tok *s = seen_get(&seen, &nseen, &cap, ks_get_be32(k.p));
        uint8_t h[16];
        if (!s)
            goto nomem;
        ks_idx_hash(k.p, ks_get_be64(v.p), h);
        ks_hash_xor(s->idx_hash, h);
        s->n_idx++;
    }
    o->cur_close(c);
    if (mrc != KS_ENOTFOUND)
        goto scan_failed;

    /* What is there against what the anchor vouches for. */
    for (size_t i = 0; i < nseen; i++) {
        seen_tok *s = &seen[i];
        ks_tokstat *t = ks_meta_tok(m, s->tid, false);
        if (!t || !t->exists) {
            if (s->has_record)
                REPORT('T', s->tid, 0, "the token record is not listed by the authenticated metadata (added, or "
                       "put back from an older copy)");
            else if (s->n_obj || s->n_idx)
                REPORT('N', s->tid, 0, "%llu object record(s) and %llu index entries belong to no token",
                       (unsigned long long)s->n_obj, (unsigned long long)s->n_idx);
            continue;
        }
        if (!s->has_record)
            REPORT('T', s->tid, 0, "the token record is missing (deleted)");
        if (t->n_obj != s->n_obj || memcmp(t->obj_hash, s->obj_hash, 16))
            REPORT('T', s->tid, 0, "the object records are not the set the metadata vouches for: %llu found, %llu "
                   "expected%s", (unsigned long long)s->n_obj, (unsigned long long)t->n_obj,
                   t->n_obj == s->n_obj ? " (the same number: other ids, or older copies put back)" :
                   s->n_obj < t->n_obj ? " (records were deleted)" : " (records were added)");
        if (t->n_idx != s->n_idx || memcmp(t->idx_hash, s->idx_hash, 16))
            REPORT('T', s->tid, 0, "the index entries are not the set the metadata vouches for: %llu found, %llu "
                   "expected%s", (unsigned long long)s->n_idx, (unsigned long long)t->n_idx,
                   t->n_idx == s->n_idx ? " (the same number: entries changed, or older copies put back)" :
                   s->n_idx < t->n_idx ? " (entries were deleted)" : " (entries were added)");
    }
    for (size_t i = 0; i < m->ntok; i++) {
        const ks_tokstat *t = &m->tok[i];
        bool found = false;
        for (size_t j = 0; j < nseen && !found; j++)
            found = seen[j].tid == t->tid;
        if (t->exists && !found)
            REPORT('T', t->tid, 0, "the token and all its records are missing (%llu objects expected)",
                   (unsigned long long)t->n_obj);
    }
    if (max_oid && m->rs.next_oid <= max_oid)
        REPORT('M', 0, 0, "the object id counter (%llu) is not past the highest id in use (%llu): new objects "
               "would collide", (unsigned long long)m->rs.next_oid, (unsigned long long)max_oid);
    if (max_tid && m->rs.toknext <= max_tid)
        REPORT('M', 0, 0, "the token id counter (%u) is not past the highest token id (%u)", m->rs.toknext, max_tid);
#undef REPORT
    free(seen);
    ks_read_end(x);
    return KS_OK;
scan_failed:
    rc = mrc == KS_OK ? KS_EIO : mrc;
fail:
    free(seen);
    ks_read_end(x);
    return rc;
nomem:
    o->cur_close(c);
    free(seen);
    ks_read_end(x);
    return KS_ENOMEM;
}
