/* p11mk keystore: the anchor, the one sealed metadata record that vouches
 * for everything else that decides behaviour.
 *
 * The record (meta "state", sealed under the CURRENT epoch's key) holds the
 * rotation state and, since format 2: the format version, the generation
 * counter, the next object and token ids, and per token whether it exists,
 * its incarnation, and how many object records and index entries it has with
 * an XOR of a hash of each (so a deleted, added or moved record changes them).
 *
 * Rules:
 *  - Counters live only here; nothing is read from an unauthenticated copy.
 *    The generation is also kept plain ("gen"), because every transaction of
 *    every process reads it; a new generation's keys are built only after the
 *    plain value is compared with the sealed one (a mismatch is reported).
 *  - A write transaction loads the anchor once, changes its working copy
 *    and seals it once, just before commit (ks_meta_flush). So the anchor and
 *    the records it vouches for always commit together.
 *  - A missing or unauthentic anchor is damage: reported, never replaced by
 *    defaults. Readers share a parsed copy keyed by the record's GCM tag: one
 *    lookup and a 16-byte compare when nothing changed.
 *  - A format 1 keystore (no counters in the record) is upgraded by its first
 *    write transaction, which counts what is there; until then it is read as
 *    before. */
#include "ks_internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define STATE_OID 1
#define V1_LEN_A 24
#define V1_LEN_B 40
#define V2_HDR 84
#define TOK_LEN 80
#define MAX_TOKENS (1u << 20)
enum { POS_END = 3 };

/* ---- hashes of set members ------------------------------------------------ */

/* SHA-256, fetched once: the set hashes are computed for every record a
 * rotation reseals, and fetching the algorithm each time cost more than
 * hashing. */
static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static void fetch_sha256(void) { sha256 = EVP_MD_fetch(ks_libctx(), "SHA256", NULL); }

static void hash16(const char *label, const uint8_t *a, size_t alen, uint64_t oid, uint8_t out[16])
{
    uint8_t buf[80], md[32], be[8];
    size_t l = strlen(label);
    unsigned n = 0;
    memcpy(buf, label, l);
    memcpy(buf + l, a, alen);
    ks_be64(be, oid);
    memcpy(buf + l + alen, be, 8);
    pthread_once(&sha256_once, fetch_sha256);
    if (!sha256 || !EVP_Digest(buf, l + alen + 8, md, &n, sha256, NULL))
        memset(md, 0, sizeof(md));
    memcpy(out, md, 16);
}

void ks_obj_hash(uint32_t tid, uint64_t oid, const uint8_t tag[KS_TAG_LEN], uint8_t out[16])
{
    uint8_t t[4 + KS_TAG_LEN];
    ks_be32(t, tid);
    memcpy(t + 4, tag, KS_TAG_LEN);
    hash16("p11mk object v2", t, sizeof(t), oid, out);
}

void ks_idx_hash(const uint8_t key[IDX_KEY_LEN], uint64_t oid, uint8_t out[16])
{
    hash16("p11mk index v1", key, IDX_KEY_LEN, oid, out);
}

void ks_hash_xor(uint8_t acc[16], const uint8_t h[16])
{
    for (int i = 0; i < 16; i++)
        acc[i] ^= h[i];
}

/* ---- the record ----------------------------------------------------------------- */

void ks_meta_free(ks_meta *m)
{
    if (!m)
        return;
    free(m->tok);
    memset(m, 0, sizeof(*m));
}

static int parse(const uint8_t *pt, size_t len, uint32_t epoch, ks_meta *m, bool want_tokens)
{
    ks_rotstate *rs = &m->rs;
    if (len < V1_LEN_A || (pt[0] != 1 && pt[0] != 2) || pt[1] > KS_ROT_PENDING || ks_get_be32(pt + 2) != epoch ||
        pt[10] > POS_END || pt[11] > sizeof(rs->cursor) || ((pt[1] == KS_ROT_IDLE) != (ks_get_be32(pt + 6) == 0)))
        return KS_ECORRUPT;
    if (pt[0] == 1 && len != V1_LEN_A && len != V1_LEN_B)
        return KS_ECORRUPT;
    rs->state = pt[1];
    rs->cur = ks_get_be32(pt + 2);
    rs->nxt = ks_get_be32(pt + 6);
    rs->cursor_db = pt[10];
    rs->cursor_len = pt[11];
    memcpy(rs->cursor, pt + 12, sizeof(rs->cursor));
    if (len >= V1_LEN_B) {
        rs->auto_interval = ks_get_be64(pt + 24);
        rs->last_rotation = ks_get_be64(pt + 32);
    }
    if (pt[0] == 1) {
        rs->legacy = true;
        return KS_OK;
    }
    if (len < V2_HDR)
        return KS_ECORRUPT;
    rs->format = ks_get_be32(pt + 40);
    rs->gen = ks_get_be64(pt + 44);
    rs->next_oid = ks_get_be64(pt + 52);
    rs->toknext = ks_get_be32(pt + 60);
    memcpy(rs->cur_kcv, pt + 68, KS_KCV_LEN);
    memcpy(rs->nxt_kcv, pt + 76, KS_KCV_LEN);
    uint32_t n = ks_get_be32(pt + 64);
    if (n > MAX_TOKENS || len != V2_HDR + (size_t)n * TOK_LEN)
        return KS_ECORRUPT;
    if (!want_tokens)
        return KS_OK;
    if (n && !(m->tok = calloc(n, sizeof(*m->tok))))
        return KS_ENOMEM;
    m->cap = n;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = pt + V2_HDR + (size_t)i * TOK_LEN;
        ks_tokstat *t = &m->tok[i];
        t->tid = ks_get_be32(p);
        uint32_t flags = ks_get_be32(p + 4);
        if (flags > 1 || t->tid == 0 || (i && t->tid <= m->tok[i - 1].tid))
            return KS_ECORRUPT; /* sorted, no duplicates */
        t->exists = flags & 1;
        t->inc = ks_get_be64(p + 8);
        t->n_obj = ks_get_be64(p + 16);
        t->n_idx = ks_get_be64(p + 24);
        memcpy(t->obj_hash, p + 32, 16);
        memcpy(t->idx_hash, p + 48, 16);
        memcpy(t->tag, p + 64, KS_TAG_LEN);
    }
    m->ntok = n;
    return KS_OK;
}

/* Unseal the state record of this snapshot: CURRENT's epoch, under its key. */
static int open_state(ks_btxn *t, ks_store *st, uint32_t epoch, const uint8_t key[32], ks_bval *v, uint8_t **pt,
                      size_t *len)
{
    uint32_t hepoch;
    int rc = ks_meta_get(t, st, "state", NULL, 0, v);
    if (rc == KS_ENOTFOUND)
        return KS_ECORRUPT; /* every keystore has one: missing is damage, never "idle by default" */
    if (rc != KS_OK)
        return rc;
    if (ks_rec_header(v->p, v->n, NULL, &hepoch) != KS_OK || hepoch != epoch)
        return KS_ECORRUPT;
    return ks_rec_open(key, st->ksid, KS_KIND_META, 0, STATE_OID, v->p, v->n, pt, len);
}

int ks_state_load(ks_btxn *t, ks_store *st, uint32_t epoch, const uint8_t curkey[32], ks_rotstate *rs)
{
    ks_meta m;
    ks_bval v;
    uint8_t *pt = NULL;
    size_t len = 0;
    memset(&m, 0, sizeof(m));
    int rc = open_state(t, st, epoch, curkey, &v, &pt, &len);
    if (rc == KS_OK)
        rc = parse(pt, len, epoch, &m, false);
    ks_buf_free(pt, len);
    if (rc == KS_OK)
        *rs = m.rs;
    return rc;
}

int ks_state_write(ks_txn *x, const ks_meta *m, const uint8_t key[32])
{
    size_t len = V2_HDR + m->ntok * TOK_LEN;
    uint8_t *pt = calloc(1, len), *rec = NULL;
    size_t reclen = 0;
    const ks_rotstate *rs = &m->rs;
    int rc;

    if (!pt)
        return KS_ENOMEM;
    pt[0] = 2;
    pt[1] = (uint8_t)rs->state;
    ks_be32(pt + 2, rs->cur);
    ks_be32(pt + 6, rs->nxt);
    pt[10] = rs->cursor_db;
    pt[11] = rs->cursor_len;
    memcpy(pt + 12, rs->cursor, sizeof(rs->cursor));
    ks_be64(pt + 24, rs->auto_interval);
    ks_be64(pt + 32, rs->last_rotation);
    ks_be32(pt + 40, rs->format);
    ks_be64(pt + 44, rs->gen);
    ks_be64(pt + 52, rs->next_oid);
    ks_be32(pt + 60, rs->toknext);
    ks_be32(pt + 64, (uint32_t)m->ntok);
    memcpy(pt + 68, rs->cur_kcv, KS_KCV_LEN);
    memcpy(pt + 76, rs->nxt_kcv, KS_KCV_LEN);
    for (size_t i = 0; i < m->ntok; i++) {
        uint8_t *p = pt + V2_HDR + i * TOK_LEN;
        const ks_tokstat *t = &m->tok[i];
        ks_be32(p, t->tid);
        ks_be32(p + 4, t->exists ? 1 : 0);
        ks_be64(p + 8, t->inc);
        ks_be64(p + 16, t->n_obj);
        ks_be64(p + 24, t->n_idx);
        memcpy(p + 32, t->obj_hash, 16);
        memcpy(p + 48, t->idx_hash, 16);
        memcpy(p + 64, t->tag, KS_TAG_LEN);
    }
    rc = ks_rec_seal(key, x->st->ksid, KS_KIND_META, rs->cur, 0, STATE_OID, pt, len, &rec, &reclen);
    free(pt);
    if (rc != KS_OK)
        return rc;
    rc = ks_meta_put(x, "state", NULL, 0, rec, reclen);
    /* Readers will meet this record next: parse it for them now. */
    if (rc == KS_OK) {
        ks_store *st = x->st;
        pthread_mutex_lock(&st->meta_lock);
        ks_meta_free(&st->meta_cache);
        st->meta_cache = *m;
        st->meta_cache.tok = m->ntok ? malloc(m->ntok * sizeof(*m->tok)) : NULL;
        if (m->ntok && !st->meta_cache.tok) {
            memset(&st->meta_cache, 0, sizeof(st->meta_cache));
            st->meta_cached = false;
        } else {
            if (m->ntok)
                memcpy(st->meta_cache.tok, m->tok, m->ntok * sizeof(*m->tok));
            st->meta_cache.cap = m->ntok;
            st->meta_cache.dirty = st->meta_cache.bump = st->meta_cache.upgraded = false;
            memcpy(st->meta_tag, rec + reclen - KS_TAG_LEN, KS_TAG_LEN);
            st->meta_cached = true;
        }
        pthread_mutex_unlock(&st->meta_lock);
    }
    free(rec);
    return rc;
}

/* ---- a format 1 keystore ------------------------------------------------------------ */

/* Counters from the plain records a format 1 keystore kept, and (when
 * counting) the object and index sets as they are now: the upgrade trusts
 * the keystore once, as format 1 always did. */
static int legacy_fill(ks_txn *x, ks_meta *m, bool count)
{
    ks_store *st = x->st;
    const ks_backend_ops *o = st->ops;
    ks_bcur *c;
    ks_bval k, v;
    int mrc;

    /* What an upgrade writes comes from these reads: a read that failed is
     * the result (a counter read as 0 or a scan cut short would be sealed
     * into the anchor as the truth). */
    if ((mrc = ks_meta_get(x->bt, st, "next_oid", NULL, 0, &v)) == KS_OK && v.n == 8)
        m->rs.next_oid = ks_get_be64(v.p);
    else if (ks_read_failed(mrc))
        return mrc;
    if ((mrc = ks_meta_get(x->bt, st, "toknext", NULL, 0, &v)) == KS_OK && v.n == 4)
        m->rs.toknext = ks_get_be32(v.p);
    else if (ks_read_failed(mrc))
        return mrc;
    if ((mrc = o->cur_open(x->bt, KS_TAB_TOKENS, &c)) != KS_OK)
        return mrc;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != 4)
            continue;
        ks_tokstat *t = ks_meta_tok(m, ks_get_be32(k.p), true);
        if (!t) {
            o->cur_close(c);
            return KS_ENOMEM;
        }
        t->exists = true;
        if (v.n > KS_TAG_LEN)
            memcpy(t->tag, v.p + v.n - KS_TAG_LEN, KS_TAG_LEN);
        if (m->rs.toknext <= t->tid)
            m->rs.toknext = t->tid + 1;
    }
    o->cur_close(c);
    if (mrc != KS_ENOTFOUND)
        return mrc;
    /* Incarnations of tokens that exist or were deleted. */
    if ((mrc = o->cur_open(x->bt, KS_TAB_META, &c)) != KS_OK)
        return mrc;
    for (mrc = o->cur_seek(c, KS_BSEEK_GE, "tokinc", 6, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != 10 || memcmp(k.p, "tokinc", 6) != 0)
            break;
        ks_tokstat *t = v.n == 8 ? ks_meta_tok(m, ks_get_be32(k.p + 6), true) : NULL;
        if (t)
            t->inc = ks_get_be64(v.p);
    }
    o->cur_close(c);
    if (mrc != KS_OK && mrc != KS_ENOTFOUND) /* KS_OK: stopped past the tokinc records */
        return mrc;
    if (!count)
        return KS_OK;
    if ((mrc = o->cur_open(x->bt, KS_TAB_OBJECTS, &c)) != KS_OK)
        return mrc;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != 12)
            continue;
        uint32_t tid = ks_get_be32(k.p);
        uint64_t oid = ks_get_be64(k.p + 4);
        ks_tokstat *t = ks_meta_tok(m, tid, false);
        uint8_t h[16];
        if (!t || v.n <= KS_TAG_LEN)
            continue; /* an object of no token: left for verify to name */
        ks_obj_hash(tid, oid, v.p + v.n - KS_TAG_LEN, h);
        ks_hash_xor(t->obj_hash, h);
        t->n_obj++;
        if (m->rs.next_oid <= oid)
            m->rs.next_oid = oid + 1;
    }
    o->cur_close(c);
    if (mrc != KS_ENOTFOUND)
        return mrc;
    if ((mrc = o->cur_open(x->bt, KS_TAB_INDEX, &c)) != KS_OK)
        return mrc;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != IDX_KEY_LEN || v.n != 8)
            continue;
        ks_tokstat *t = ks_meta_tok(m, ks_get_be32(k.p), false);
        uint8_t h[16];
        if (!t)
            continue;
        ks_idx_hash(k.p, ks_get_be64(v.p), h);
        ks_hash_xor(t->idx_hash, h);
        t->n_idx++;
    }
    o->cur_close(c);
    if (mrc != KS_ENOTFOUND)
        return mrc;
    if (!m->rs.next_oid)
        m->rs.next_oid = 1;
    if (!m->rs.toknext)
        m->rs.toknext = 1;
    return KS_OK;
}

/* ---- a transaction's working copy ---------------------------------------------------- */

ks_tokstat *ks_meta_tok(ks_meta *m, uint32_t tid, bool add)
{
    size_t lo = 0, hi = m->ntok;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->tok[mid].tid < tid)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < m->ntok && m->tok[lo].tid == tid)
        return &m->tok[lo];
    if (!add)
        return NULL;
    if (m->ntok == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 8;
        ks_tokstat *n = realloc(m->tok, cap * sizeof(*n));
        if (!n)
            return NULL;
        m->tok = n;
        m->cap = cap;
    }
    memmove(&m->tok[lo + 1], &m->tok[lo], (m->ntok - lo) * sizeof(*m->tok));
    memset(&m->tok[lo], 0, sizeof(*m->tok));
    m->tok[lo].tid = tid;
    m->ntok++;
    return &m->tok[lo];
}

int ks_txn_meta(ks_txn *x, ks_meta **out)
{
    ks_store *st = x->st;
    ks_meta *m = &x->m;
    ks_bval v;
    uint8_t *pt = NULL;
    size_t len = 0;
    int rc;

    if (m->loaded) {
        *out = m;
        return KS_OK;
    }
    if ((rc = ks_meta_get(x->bt, st, "state", NULL, 0, &v)) != KS_OK)
        return rc == KS_ENOTFOUND ? KS_ECORRUPT : rc;
    if (v.n > KS_TAG_LEN) {
        const uint8_t *tag = (const uint8_t *)v.p + v.n - KS_TAG_LEN;
        pthread_mutex_lock(&st->meta_lock);
        if (st->meta_cached && CRYPTO_memcmp(st->meta_tag, tag, KS_TAG_LEN) == 0 &&
            st->meta_cache.rs.cur == x->ring->rs.cur) {
            *m = st->meta_cache;
            m->tok = m->ntok ? malloc(m->ntok * sizeof(*m->tok)) : NULL;
            if (m->ntok && !m->tok)
                rc = KS_ENOMEM;
            else if (m->ntok)
                memcpy(m->tok, st->meta_cache.tok, m->ntok * sizeof(*m->tok));
            m->cap = m->ntok;
            pthread_mutex_unlock(&st->meta_lock);
            if (rc != KS_OK) {
                memset(m, 0, sizeof(*m));
                return rc;
            }
            m->loaded = true;
            *out = m;
            return KS_OK;
        }
        pthread_mutex_unlock(&st->meta_lock);
    }
    memset(m, 0, sizeof(*m));
    rc = open_state(x->bt, st, x->ring->rs.cur, x->ring->cur_key, &v, &pt, &len);
    if (rc == KS_OK)
        rc = parse(pt, len, x->ring->rs.cur, m, true);
    ks_buf_free(pt, len);
    if (rc == KS_OK && m->rs.legacy) {
        /* Format 1: a writer upgrades it (counting what is there); a reader
         * takes the plain counters as format 1 did. */
        rc = legacy_fill(x, m, x->write);
        if (rc == KS_OK && x->write) {
            m->rs.legacy = false;
            m->rs.format = KS_FORMAT_VERSION;
            uint64_t gen = 0;
            if ((rc = ks_meta_get(x->bt, st, "gen", NULL, 0, &v)) == KS_OK && v.n == 8)
                gen = ks_get_be64(v.p);
            rc = ks_read_failed(rc) ? rc : KS_OK; /* not generation 0 sealed as the truth */
            m->rs.gen = gen;
            memcpy(m->rs.cur_kcv, x->ring->cur_kcv, KS_KCV_LEN);
            if (m->rs.nxt)
                memcpy(m->rs.nxt_kcv, x->ring->nxt_kcv, KS_KCV_LEN);
            m->dirty = m->upgraded = true;
        }
    }
    if (rc != KS_OK) {
        ks_meta_free(m);
        return rc;
    }
    m->loaded = true;
    *out = m;
    return KS_OK;
}

void ks_meta_touch(ks_txn *x, bool bump)
{
    x->m.dirty = true;
    x->m.bump |= bump;
}

int ks_meta_flush(ks_txn *x)
{
    ks_meta *m = &x->m;
    uint8_t be[8];
    int rc;

    if (!m->loaded || !m->dirty)
        return KS_OK;
    if (m->bump) {
        /* From the sealed value only: an edited plain copy does not flow in. */
        if (m->rs.gen < UINT64_MAX)
            m->rs.gen++;
        ks_be64(be, m->rs.gen);
        if ((rc = ks_meta_put(x, "gen", NULL, 0, be, 8)) != KS_OK)
            return rc;
    }
    const uint8_t *key = ks_ring_key(x->ring, m->rs.cur);
    if (!key)
        return KS_ENOKEY;
    if ((rc = ks_state_write(x, m, key)) != KS_OK)
        return rc;
    if (m->upgraded) {
        /* Format 2 from now on; the plain counters are gone (only the anchor counts). */
        ks_be32(be, KS_FORMAT_VERSION);
        if ((rc = ks_meta_put(x, "format", NULL, 0, be, 4)) != KS_OK || (rc = ks_meta_del(x, "next_oid", NULL, 0)) ||
            (rc = ks_meta_del(x, "toknext", NULL, 0)))
            return rc;
        for (size_t i = 0; i < m->ntok; i++) {
            ks_be32(be, m->tok[i].tid);
            if ((rc = ks_meta_del(x, "tokinc", be, 4)) != KS_OK)
                return rc;
        }
        x->st->format = KS_FORMAT_VERSION;
        ks_log(KS_LOG_INFO, "keystore %s: upgraded to format %u (authenticated counters)", x->st->path,
               KS_FORMAT_VERSION);
    }
    m->dirty = m->bump = m->upgraded = false;
    return KS_OK;
}
