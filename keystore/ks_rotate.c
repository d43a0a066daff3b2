/* p11mk keystore: master-key rotation.
 *
 * The state machine (IDLE -> STAGED -> REWRAP -> READY -> IDLE, or back
 * through ABORTING) lives in the metadata as a record sealed under the
 * CURRENT key, next to a plain generation counter that every process checks
 * at the start of each transaction. Each step is a series of short write
 * transactions, each of which moves records and the resume cursor together,
 * so an interrupted step is finished by running it again; processes keep
 * reading and writing throughout (new records go under NEW as soon as a key
 * is staged). These functions take no lock and touch no key file: the
 * lifecycle protocol (ks_lifecycle.c) calls them under its lock and orders
 * them with the key file writes. */
#include "ks_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

enum { POS_META = 0, POS_TOKENS = 1, POS_OBJECTS = 2, POS_END = 3 };

const char *ks_rot_state_name(int state)
{
    switch (state) {
    case KS_ROT_IDLE: return "idle";
    case KS_ROT_STAGED: return "staged";
    case KS_ROT_REWRAP: return "rewrapping";
    case KS_ROT_READY: return "ready to commit";
    case KS_ROT_ABORTING: return "aborting";
    case KS_ROT_PENDING: return "pending"; /* staged; not every host holds it yet */
    default: return "unknown";
    }
}

const char *ks_rot_busy_advice(int state)
{
    if (state == KS_ROT_ABORTING)
        return "an abort of it is under way: finish it with 'p11mk-admin abort'";
    return "finish it with 'p11mk-admin rewrap' and 'p11mk-admin commit' (or 'p11mk-admin auto-update run'), or undo "
           "it with 'p11mk-admin abort'";
}

/* ---- stage ----------------------------------------------------------------- */

typedef struct {
    const ks_mkey *key;
    ks_err *err;
    uint32_t at_least;
    uint32_t epoch;
} stage_arg;

static int stage_fn(ks_txn *x, void *arg)
{
    stage_arg *a = arg;
    ks_meta *m;
    uint8_t kcv[KS_KCV_LEN], be[4];
    int rc = ks_txn_meta(x, &m);

    if (rc != KS_OK)
        return rc;
    ks_rotstate rs = m->rs;
    if (rs.state != KS_ROT_IDLE) {
        ks_err_set(a->err, "a new master key is already staged (epoch %u, %s): finish with 'p11mk-admin rewrap' "
                           "and 'p11mk-admin commit', or withdraw it with 'p11mk-admin abort'", rs.nxt,
                   ks_rot_state_name(rs.state));
        return KS_ESTATE;
    }
    ks_mkey_kcv(a->key, kcv);
    /* The same key again only to renumber (a restored copy continues the
     * epochs of the keystore it replaces). */
    if (CRYPTO_memcmp(kcv, x->ring->cur_kcv, KS_KCV_LEN) == 0 && a->at_least <= rs.cur) {
        ks_err_set(a->err, "the new master key is the current one; nothing to stage");
        return KS_EINVAL;
    }
    if (rs.cur == UINT32_MAX) {
        ks_err_set(a->err, "the keystore has used every epoch number; export it and restore the copy");
        return KS_ESTATE;
    }
    rs.nxt = rs.cur + 1 > a->at_least ? rs.cur + 1 : a->at_least;
    /* Shared by several hosts: new records stay under CURRENT until every
     * host holds NEW (ks_rot_activate). */
    rs.state = ks_fleet_shared(x->st) ? KS_ROT_PENDING : KS_ROT_STAGED;
    rs.cursor_db = POS_META;
    rs.cursor_len = 0;
    ks_be32(be, rs.nxt);
    if ((rc = ks_meta_put(x, "kcv", be, 4, kcv, KS_KCV_LEN)) != KS_OK)
        return rc;
    memcpy(rs.nxt_kcv, kcv, KS_KCV_LEN);
    a->epoch = rs.nxt;
    m->rs = rs;
    ks_meta_touch(x, true);
    return KS_OK;
}

int ks_rot_stage(ks_store *st, const ks_mkey *newkey, uint32_t at_least, ks_err *err)
{
    stage_arg a = {newkey, err, at_least, 0};
    int rc;

    if (!st || !newkey)
        return KS_EINVAL;
    /* This process may be the only holder of the key (a private copy being
     * resealed): hand it to the store so the new generation finds it. */
    pthread_mutex_lock(&st->ring_lock);
    rc = ks_store_add_key(st, newkey);
    pthread_mutex_unlock(&st->ring_lock);
    if (rc == KS_OK)
        rc = ks_write(st, stage_fn, &a);
    if (rc == KS_OK && !st->copy) /* a copy's resealing is its restore's, which says what it did */
        ks_log(KS_LOG_INFO, "keystore %s: new master key staged as epoch %u", ks_path(st), a.epoch);
    return rc;
}

static int activate_fn(ks_txn *x, void *arg)
{
    bool *changed = arg;
    ks_meta *m;
    int rc = ks_txn_meta(x, &m);
    if (rc != KS_OK)
        return rc;
    *changed = false;
    if (m->rs.state != KS_ROT_PENDING)
        return KS_OK;
    m->rs.state = KS_ROT_STAGED;
    *changed = true;
    ks_meta_touch(x, true); /* a new generation: writers move to NEW */
    return KS_OK;
}

int ks_rot_activate(ks_store *st, bool *changed)
{
    bool c = false;
    int rc = st ? ks_write(st, activate_fn, &c) : KS_EINVAL;
    if (rc == KS_OK && c)
        ks_log(KS_LOG_INFO, "keystore %s: every host holds the staged master key: new records are sealed under it",
               ks_path(st));
    if (changed)
        *changed = c;
    return rc;
}

/* ---- the reseal pass (rewrap and abort) ------------------------------ */

typedef struct {
    bool to_new;      /* rewrap: CURRENT -> NEW; abort: NEW -> CURRENT */
    size_t batch;
    uint64_t done;    /* resealed in this transaction */
    uint64_t visited;
    bool finished;
    ks_err *err;
} pass_arg;

static int reseal_value(ks_txn *x, const ks_bval *v, uint8_t kind, uint32_t token, uint64_t oid, uint32_t from_epoch,
                        const uint8_t *from, uint32_t to_epoch, const uint8_t *to, uint8_t **out, size_t *outlen)
{
    uint8_t *pt = NULL;
    size_t len = 0;
    int rc = ks_rec_open(from, x->st->ksid, kind, token, oid, v->p, v->n, &pt, &len);
    (void)from_epoch;
    if (rc != KS_OK)
        return rc;
    rc = ks_rec_seal(to, x->st->ksid, kind, to_epoch, token, oid, pt, len, out, outlen);
    ks_buf_free(pt, len);
    return rc;
}

/* A record was resealed: the anchor follows its new tag. */
static int anchor_resealed(ks_txn *x, uint8_t kind, uint32_t token, uint64_t oid, const uint8_t old[KS_TAG_LEN],
                           const uint8_t *tag)
{
    ks_meta *m;
    ks_tokstat *t;
    uint8_t h[16];
    int rc = ks_txn_meta(x, &m);
    if (rc != KS_OK)
        return rc;
    if (!(t = ks_meta_tok(m, token, false)) || !t->exists)
        return KS_OK; /* not vouched for: verify names it */
    if (kind == KS_KIND_TOKEN) {
        memcpy(t->tag, tag, KS_TAG_LEN);
    } else {
        ks_obj_hash(token, oid, old, h);
        ks_hash_xor(t->obj_hash, h);
        ks_obj_hash(token, oid, tag, h);
        ks_hash_xor(t->obj_hash, h);
    }
    ks_meta_touch(x, false);
    return KS_OK;
}

/* Walk one database from the cursor, resealing records under `from`. */
static int pass_db(ks_txn *x, pass_arg *a, ks_rotstate *rs, ks_table tab, uint8_t kind, uint32_t from_epoch,
                   const uint8_t *from, uint32_t to_epoch, const uint8_t *to)
{
    const ks_backend_ops *o = x->st->ops;
    ks_bcur *c;
    ks_bval k, v;
    int mrc, rc = KS_OK;

    if ((rc = o->cur_open(x->bt, tab, &c)) != KS_OK)
        return rc;
    if (rs->cursor_len) {
        mrc = o->cur_seek(c, KS_BSEEK_GE, rs->cursor, rs->cursor_len, &k, &v);
        if (mrc == KS_OK && k.n == rs->cursor_len && memcmp(k.p, rs->cursor, k.n) == 0)
            mrc = o->cur_next(c, false, &k, &v);
    } else {
        mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v);
    }
    for (; mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        uint32_t epoch, token;
        uint64_t oid = 0;
        if ((kind == KS_KIND_TOKEN && k.n != 4) || (kind == KS_KIND_OBJECT && k.n != 12)) {
            rc = KS_ECORRUPT;
            break;
        }
        /* The key copied before anything is written: LMDB may move the
         * leaf's bytes under k when it replaces the value (f742be9). */
        uint8_t key[12];
        size_t kn = k.n;
        memcpy(key, k.p, kn);
        token = ks_get_be32(key);
        if (kind == KS_KIND_OBJECT)
            oid = ks_get_be64(key + 4);
        if (ks_rec_header(v.p, v.n, NULL, &epoch) != KS_OK) {
            rc = KS_ECORRUPT;
            break;
        }
        if (epoch == from_epoch) {
            uint8_t *rec = NULL, oldtag[KS_TAG_LEN];
            size_t reclen = 0;
            memcpy(oldtag, (const uint8_t *)v.p + v.n - KS_TAG_LEN, KS_TAG_LEN);
            rc = reseal_value(x, &v, kind, token, oid, from_epoch, from, to_epoch, to, &rec, &reclen);
            if (rc == KS_OK) {
                rc = ks_cursor_replace(x, c, key, kn, rec, reclen);
                if (rc == KS_OK)
                    rc = anchor_resealed(x, kind, token, oid, oldtag, rec + reclen - KS_TAG_LEN);
                free(rec);
            }
            if (rc != KS_OK) {
                /* a copy being made ready (restore, export): its caller names the file */
                const char *then = x->st->copy ? "" : "; check it with 'p11mk-admin verify'";
                if (kind == KS_KIND_OBJECT)
                    ks_err_set(a->err, "token %u object %llu cannot be resealed (%s)%s", token,
                               (unsigned long long)oid, ks_strerror(rc), then);
                else
                    ks_err_set(a->err, "token %u cannot be resealed (%s)%s", token, ks_strerror(rc), then);
                break;
            }
            a->done++;
        }
        a->visited++;
        memcpy(rs->cursor, key, kn);
        rs->cursor_len = (uint8_t)kn;
        if (a->visited >= a->batch)
            break;
    }
    o->cur_close(c);
    if (rc != KS_OK)
        return rc;
    if (mrc == KS_ENOTFOUND) { /* this database is done */
        rs->cursor_db++;
        rs->cursor_len = 0;
    } else if (mrc != KS_OK) {
        return mrc; /* the cursor stays where the last record done left it */
    }
    return KS_OK;
}

static int count_epoch(ks_txn *x, ks_table tab, uint32_t epoch, uint64_t *n);

/* Records (and the index key) sealed under `epoch`. */
static int count_new(ks_txn *x, uint32_t epoch, uint64_t *n)
{
    ks_bval v;
    uint32_t e;
    int rc;
    if ((rc = count_epoch(x, KS_TAB_TOKENS, epoch, n)) != KS_OK || (rc = count_epoch(x, KS_TAB_OBJECTS, epoch, n)) != KS_OK)
        return rc;
    if ((rc = ks_meta_get(x->bt, x->st, "idxkey", NULL, 0, &v)) == KS_OK &&
        ks_rec_header(v.p, v.n, NULL, &e) == KS_OK && e == epoch)
        (*n)++;
    return ks_read_failed(rc) ? rc : KS_OK; /* not read: not "nothing under epoch" */
}

static int pass_fn(ks_txn *x, void *arg)
{
    pass_arg *a = arg;
    ks_keyring *r = x->ring;
    ks_meta *m;
    int rc = ks_txn_meta(x, &m);

    a->done = a->visited = 0;
    a->finished = false;
    if (rc != KS_OK)
        return rc;
    ks_rotstate rs = m->rs;
    if (a->to_new) {
        if (rs.state == KS_ROT_READY) {
            a->finished = true;
            return KS_OK;
        }
        if (rs.state != KS_ROT_STAGED && rs.state != KS_ROT_REWRAP) {
            ks_err_set(a->err, rs.state == KS_ROT_IDLE      ? "no new master key is staged; stage one first with "
                                                              "'p11mk-admin stage'"
                               : rs.state == KS_ROT_PENDING ? "the staged master key is not yet on every host"
                                                            : "the rotation is being aborted; run 'p11mk-admin "
                                                              "abort' to finish that first");
            return KS_ESTATE;
        }
    } else if (rs.state != KS_ROT_ABORTING) {
        ks_err_set(a->err, "no abort is under way");
        return KS_ESTATE;
    }
    if (!r->have_nxt) {
        /* Without NEW nothing under it can be resealed; an abort with nothing
         * under NEW can still finish. */
        uint64_t under_new = 0;
        if (!a->to_new && (rc = count_new(x, rs.nxt, &under_new)) != KS_OK)
            return rc;
        if (a->to_new || under_new) {
            ks_err_set(a->err, "the staged master key (epoch %u) is not in the key file%s; restore the key file that "
                               "holds it", rs.nxt, a->to_new ? "" : " and records are sealed under it");
            return KS_ENOKEY;
        }
        rs.cursor_db = POS_END;
    }
    uint32_t from_e = a->to_new ? rs.cur : rs.nxt, to_e = a->to_new ? rs.nxt : rs.cur;
    const uint8_t *from = a->to_new ? r->cur_key : r->nxt_key, *to = a->to_new ? r->nxt_key : r->cur_key;

    while (rs.cursor_db < POS_END && a->visited < a->batch) {
        if (rs.cursor_db == POS_META) {
            ks_bval v;
            uint32_t e;
            /* Not read is not "not under the old key": the pass stops where it is. */
            if (ks_read_failed(rc = ks_meta_get(x->bt, x->st, "idxkey", NULL, 0, &v)))
                return rc;
            if (rc == KS_OK && ks_rec_header(v.p, v.n, NULL, &e) == KS_OK && e == from_e) {
                uint8_t *rec = NULL;
                size_t reclen = 0;
                rc = reseal_value(x, &v, KS_KIND_META, 0, 0, from_e, from, to_e, to, &rec, &reclen);
                if (rc == KS_OK)
                    rc = ks_meta_put(x, "idxkey", NULL, 0, rec, reclen);
                free(rec);
                if (rc != KS_OK)
                    return rc;
                a->done++;
            }
            rc = KS_OK;
            rs.cursor_db = POS_TOKENS;
            rs.cursor_len = 0;
        } else if (rs.cursor_db == POS_TOKENS) {
            rc = pass_db(x, a, &rs, KS_TAB_TOKENS, KS_KIND_TOKEN, from_e, from, to_e, to);
        } else {
            rc = pass_db(x, a, &rs, KS_TAB_OBJECTS, KS_KIND_OBJECT, from_e, from, to_e, to);
        }
        if (rc != KS_OK)
            return rc;
    }
    if (rs.cursor_db >= POS_END) {
        a->finished = true;
        if (a->to_new) {
            rs.state = KS_ROT_READY;
        } else {
            /* Nothing is left under NEW: withdraw it. */
            uint8_t be[4];
            ks_be32(be, rs.nxt);
            if ((rc = ks_meta_del(x, "kcv", be, 4)) != KS_OK)
                return rc;
            rs.state = KS_ROT_IDLE;
            rs.nxt = 0;
            memset(rs.nxt_kcv, 0, KS_KCV_LEN);
            rs.cursor_db = POS_META;
            rs.cursor_len = 0;
            m->rs = rs;
            ks_meta_touch(x, true);
            return KS_OK;
        }
    } else if (a->to_new) {
        rs.state = KS_ROT_REWRAP;
    }
    m->rs = rs;
    ks_meta_touch(x, false);
    return KS_OK;
}

static int run_pass(ks_store *st, bool to_new, size_t batch, ks_rot_cb cb, void *arg, uint64_t *done,
                    bool *stopped, ks_err *err)
{
    pass_arg a = {.to_new = to_new, .batch = batch ? batch : 2000, .err = err};
    ks_rot_progress p = {0, 0};
    uint32_t ep[4];
    uint64_t cnt[4];
    size_t nf = 0;
    int rc;

    if (stopped)
        *stopped = false;
    /* An estimate of the work, for progress reports. */
    if (cb && ks_rot_count(st, ep, cnt, 4, &nf) == KS_OK) {
        ks_info info;
        if (ks_get_info(st, &info) == KS_OK)
            for (size_t i = 0; i < nf; i++)
                if (ep[i] == (to_new ? info.epoch : info.new_epoch))
                    p.remaining = cnt[i];
    }
    for (;;) {
        rc = ks_write(st, pass_fn, &a);
        if (rc != KS_OK)
            break;
        p.done += a.done;
        p.remaining = p.remaining > a.done ? p.remaining - a.done : 0;
        if (a.finished) {
            p.remaining = 0;
            if (cb)
                cb(&p, arg);
            break;
        }
        if (cb && cb(&p, arg) != 0) {
            if (stopped)
                *stopped = true; /* stopped by the caller: resumable */
            break;
        }
    }
    if (done)
        *done = p.done;
    return rc;
}

int ks_rot_rewrap(ks_store *st, size_t batch, ks_rot_cb cb, void *arg, uint64_t *done, bool *stopped, ks_err *err)
{
    if (!st)
        return KS_EINVAL;
    return run_pass(st, true, batch, cb, arg, done, stopped, err);
}

/* ---- abort ----------------------------------------------------------------- */

static int abort_begin_fn(ks_txn *x, void *arg)
{
    ks_err *err = arg;
    ks_meta *m;
    int rc = ks_txn_meta(x, &m);
    if (rc != KS_OK)
        return rc;
    ks_rotstate rs = m->rs;
    if (rs.state == KS_ROT_IDLE) {
        ks_err_set(err, "no rotation is under way; nothing to abort");
        return KS_ESTATE;
    }
    if (rs.state == KS_ROT_ABORTING)
        return KS_OK; /* resume */
    rs.state = KS_ROT_ABORTING;
    rs.cursor_db = POS_META;
    rs.cursor_len = 0;
    m->rs = rs;
    ks_meta_touch(x, true);
    return KS_OK;
}

int ks_rot_abort(ks_store *st, size_t batch, ks_rot_cb cb, void *arg, uint64_t *done, ks_err *err)
{
    int rc;
    if (!st)
        return KS_EINVAL;
    rc = ks_write(st, abort_begin_fn, err);
    if (rc == KS_OK)
        rc = run_pass(st, false, batch, cb, arg, done, NULL, err);
    if (rc == KS_OK && !st->copy)
        ks_log(KS_LOG_INFO, "keystore %s: rotation aborted; every record is under the current key", ks_path(st));
    return rc;
}

/* ---- commit ---------------------------------------------------------------- */

typedef struct {
    ks_err *err;
    bool disable_auto;
    uint64_t now;
    uint32_t epoch;
} commit_arg;

static int count_epoch(ks_txn *x, ks_table tab, uint32_t epoch, uint64_t *n)
{
    const ks_backend_ops *o = x->st->ops;
    ks_bcur *c;
    ks_bval k, v;
    int mrc;
    if ((mrc = o->cur_open(x->bt, tab, &c)) != KS_OK)
        return mrc;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        uint32_t e;
        if (ks_rec_header(v.p, v.n, NULL, &e) == KS_OK && e == epoch)
            (*n)++;
    }
    o->cur_close(c);
    return mrc == KS_ENOTFOUND ? KS_OK : mrc;
}

static int commit_fn(ks_txn *x, void *arg)
{
    commit_arg *a = arg;
    ks_keyring *r = x->ring;
    ks_meta *m;
    uint64_t left = 0;
    uint8_t be[4];
    ks_bval v;
    uint32_t e;
    int rc = ks_txn_meta(x, &m);

    if (rc != KS_OK)
        return rc;
    ks_rotstate rs = m->rs;
    if (rs.state == KS_ROT_IDLE) {
        ks_err_set(a->err, "no new master key is staged; nothing to commit");
        return KS_ESTATE;
    }
    if (rs.state == KS_ROT_ABORTING) {
        ks_err_set(a->err, "the rotation is being aborted; finish with 'p11mk-admin abort'");
        return KS_ESTATE;
    }
    if (!r->have_nxt) {
        ks_err_set(a->err, "the staged master key (epoch %u) is not in the key file", rs.nxt);
        return KS_ENOKEY;
    }
    /* Never trust the state alone: count what is still under CURRENT. */
    if ((rc = count_epoch(x, KS_TAB_TOKENS, rs.cur, &left)) != KS_OK ||
        (rc = count_epoch(x, KS_TAB_OBJECTS, rs.cur, &left)) != KS_OK)
        return rc;
    if ((rc = ks_meta_get(x->bt, x->st, "idxkey", NULL, 0, &v)) == KS_OK &&
        ks_rec_header(v.p, v.n, NULL, &e) == KS_OK && e == rs.cur)
        left++;
    else if (ks_read_failed(rc))
        return rc; /* not read: the index key may still be under CURRENT */
    if (left || rs.state != KS_ROT_READY) {
        ks_err_set(a->err, "the rewrap is not finished: %llu record(s) are still under the current key (epoch "
                           "%u); run 'p11mk-admin rewrap' first", (unsigned long long)left, rs.cur);
        return KS_ESTATE;
    }
    uint32_t next = rs.nxt;
    ks_be32(be, next);
    if ((rc = ks_meta_put(x, "epoch", NULL, 0, be, 4)) != KS_OK)
        return rc;
    /* The plain check value of the new current epoch, from the authenticated one. */
    if (!rs.legacy && (rc = ks_meta_put(x, "kcv", be, 4, rs.nxt_kcv, KS_KCV_LEN)) != KS_OK)
        return rc;
    rs.state = KS_ROT_IDLE;
    rs.cur = next;
    rs.nxt = 0;
    memcpy(rs.cur_kcv, rs.nxt_kcv, KS_KCV_LEN);
    memset(rs.nxt_kcv, 0, KS_KCV_LEN);
    rs.cursor_db = POS_META;
    rs.cursor_len = 0;
    rs.last_rotation = a->now ? a->now : (uint64_t)time(NULL);
    if (a->disable_auto)
        rs.auto_interval = 0;
    a->epoch = next;
    m->rs = rs; /* sealed under the new CURRENT's key (the ring has it as NEW) */
    ks_meta_touch(x, true);
    return KS_OK;
}

int ks_rot_commit(ks_store *st, bool disable_auto, uint64_t now, ks_err *err)
{
    commit_arg a = {err, disable_auto, now, 0};
    int rc;
    if (!st)
        return KS_EINVAL;
    rc = ks_write(st, commit_fn, &a);
    if (rc == KS_OK && !st->copy)
        ks_log(KS_LOG_INFO, "keystore %s: master key epoch %u committed", ks_path(st), a.epoch);
    return rc;
}

/* Reseal a private copy under `to`: stage, rewrap, commit. */
int ks_rekey(ks_store *st, const ks_mkey *to, uint32_t at_least, ks_err *err)
{
    int rc = ks_rot_stage(st, to, at_least, err);
    if (rc == KS_OK)
        rc = ks_rot_rewrap(st, 20000, NULL, NULL, NULL, NULL, err);
    if (rc == KS_OK)
        rc = ks_rot_commit(st, false, 0, err);
    return rc;
}

int ks_epoch_of_kcv(ks_store *st, const uint8_t kcv[KS_KCV_LEN], uint32_t *epoch)
{
    const ks_backend_ops *o = st->ops;
    ks_txn *x;
    ks_bcur *c;
    ks_bval k, v;
    bool found = false;
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    if ((rc = o->cur_open(x->bt, KS_TAB_META, &c)) != KS_OK) {
        ks_read_end(x);
        return rc;
    }
    int mrc;
    for (mrc = o->cur_seek(c, KS_BSEEK_GE, "kcv", 3, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        if (k.n != 7 || memcmp(k.p, "kcv", 3) != 0)
            break;
        if (v.n == KS_KCV_LEN && CRYPTO_memcmp(v.p, kcv, KS_KCV_LEN) == 0) {
            *epoch = ks_get_be32(k.p + 3); /* ascending: the last match wins */
            found = true;
        }
    }
    o->cur_close(c);
    ks_read_end(x);
    if (mrc != KS_OK && mrc != KS_ENOTFOUND)
        return mrc; /* a later epoch with this key may be past the failed read */
    return found ? KS_OK : KS_ENOTFOUND;
}

static int gen_fn(ks_txn *x, void *arg)
{
    uint64_t want = *(const uint64_t *)arg;
    ks_meta *m;
    int rc = ks_txn_meta(x, &m);
    if (rc != KS_OK)
        return rc;
    if (m->rs.gen + 1 >= want)
        return KS_OK;
    m->rs.gen = want - 1; /* the bump below makes it `want`, plain and sealed alike */
    ks_meta_touch(x, true);
    return KS_OK;
}

int ks_gen_at_least(ks_store *st, uint64_t gen) { return ks_write(st, gen_fn, &gen); }

typedef struct {
    uint8_t ids[KS_SUCCEEDS_MAX][KS_KSID_LEN];
    size_t n;
    const ks_peek_ids *live;
    const uint8_t *self;
} succ_list;

static void succ_add(succ_list *l, const uint8_t *id)
{
    bool dup = CRYPTO_memcmp(id, l->self, KS_KSID_LEN) == 0;
    for (size_t j = 0; j < l->n && !dup; j++)
        dup = CRYPTO_memcmp(id, l->ids[j], KS_KSID_LEN) == 0;
    if (!dup && l->n < KS_SUCCEEDS_MAX)
        memcpy(l->ids[l->n++], id, KS_KSID_LEN);
}

/* The keystore replaced (unless it is this one: a backup of it), those it
 * had replaced, then those the copy had itself replaced; never this one's
 * own id, each once, the first KS_SUCCEEDS_MAX. */
static int succeeds_fn(ks_txn *x, void *arg)
{
    succ_list *l = arg;
    ks_bval v;
    l->n = 0;
    if (l->live->have_ksid)
        succ_add(l, l->live->ksid);
    for (size_t i = 0; i < l->live->n_succeeds; i++)
        succ_add(l, l->live->succeeds[i]);
    int rc = ks_meta_get(x->bt, x->st, "succeeds", NULL, 0, &v);
    if (rc == KS_OK && v.n % KS_KSID_LEN == 0)
        for (size_t i = 0; i < v.n / KS_KSID_LEN; i++)
            succ_add(l, (const uint8_t *)v.p + i * KS_KSID_LEN);
    else if (rc != KS_ENOTFOUND && rc != KS_OK)
        return rc;
    return l->n ? ks_meta_put(x, "succeeds", NULL, 0, l->ids, l->n * KS_KSID_LEN) : KS_OK;
}

int ks_set_succeeds(ks_store *st, const ks_peek_ids *live)
{
    succ_list l = {.n = 0, .live = live, .self = st->ksid};
    return ks_write(st, succeeds_fn, &l);
}

/* ---- counts and verification ---------------------------------------------- */

static void tally(uint32_t e, uint32_t *epochs, uint64_t *cnt, size_t n, size_t *found)
{
    for (size_t i = 0; i < *found; i++)
        if (epochs[i] == e) {
            cnt[i]++;
            return;
        }
    if (*found < n) {
        epochs[*found] = e;
        cnt[(*found)++] = 1;
    }
}

/* Call fn for every token and object record, in one read transaction; a
 * non-zero result of fn stops the walk and is returned. */
typedef int (*walk_fn)(ks_txn *x, bool object, const ks_bval *k, const ks_bval *v, void *arg);

static int walk_records(ks_store *st, walk_fn fn, void *arg)
{
    const ks_backend_ops *o = st->ops;
    ks_txn *x;
    static const ks_table tabs[2] = {KS_TAB_TOKENS, KS_TAB_OBJECTS};
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    for (int d = 0; d < 2 && rc == KS_OK; d++) {
        ks_bcur *c;
        ks_bval k, v;
        if ((rc = o->cur_open(x->bt, tabs[d], &c)) != KS_OK)
            break;
        int mrc;
        for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK && rc == KS_OK;
             mrc = o->cur_next(c, false, &k, &v))
            rc = fn(x, d == 1, &k, &v, arg);
        o->cur_close(c);
        /* A walk cut short by a failed read is no count and no verdict: the failure is the result. */
        if (rc == KS_OK && mrc != KS_OK && mrc != KS_ENOTFOUND)
            rc = mrc;
    }
    ks_read_end(x);
    return rc;
}

typedef struct {
    uint32_t *epochs;
    uint64_t *cnt;
    size_t n, *found;
} count_arg;

static int count_one(ks_txn *x, bool object, const ks_bval *k, const ks_bval *v, void *arg)
{
    count_arg *a = arg;
    uint32_t e;
    (void)x;
    (void)object;
    (void)k;
    if (ks_rec_header(v->p, v->n, NULL, &e) == KS_OK)
        tally(e, a->epochs, a->cnt, a->n, a->found);
    return KS_OK;
}

int ks_rot_count(ks_store *st, uint32_t *epochs, uint64_t *cnt, size_t n, size_t *found)
{
    count_arg a = {epochs, cnt, n, found};
    *found = 0;
    return walk_records(st, count_one, &a);
}

typedef struct {
    ks_verify_cb cb;
    void *arg;
    uint64_t checked, failed;
} verify_arg;

static int verify_one(ks_txn *x, bool object, const ks_bval *k, const ks_bval *v, void *arg)
{
    verify_arg *a = arg;
    uint32_t e, token = k->n >= 4 ? ks_get_be32(k->p) : 0;
    uint64_t oid = object && k->n == 12 ? ks_get_be64(k->p + 4) : 0;
    uint8_t *pt = NULL;
    size_t len = 0;
    const uint8_t *key = NULL;
    int err = ks_rec_header(v->p, v->n, NULL, &e);
    if (err == KS_OK && !(key = ks_ring_key(x->ring, e)))
        err = KS_ENOKEY;
    if (err == KS_OK)
        err = ks_rec_open(key, x->st->ksid, object ? KS_KIND_OBJECT : KS_KIND_TOKEN, token, oid, v->p,
                          v->n, &pt, &len);
    ks_buf_free(pt, len);
    if (err == KS_ENOMEM)
        return err; /* the record was not checked: no verdict on it */
    a->checked++;
    if (err != KS_OK) {
        a->failed++;
        if (a->cb)
            a->cb(object ? 'O' : 'T', token, oid, err, NULL, a->arg);
    } else if (object && (err = ks_token_exists(x, token)) != KS_OK) {
        if (err != KS_ENOTFOUND)
            return err; /* not read: the token may well be there */
        a->failed++; /* an object whose token is gone */
        if (a->cb)
            a->cb('N', token, oid, KS_ENOTFOUND, NULL, a->arg);
    }
    return KS_OK;
}

/* Every index entry must point at an object of its token. */
static int verify_index(ks_store *st, verify_arg *a)
{
    const ks_backend_ops *o = st->ops;
    ks_txn *x;
    ks_bcur *c;
    ks_bval k, v;
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    if ((rc = o->cur_open(x->bt, KS_TAB_INDEX, &c)) != KS_OK) {
        ks_read_end(x);
        return rc;
    }
    int mrc;
    for (mrc = o->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); mrc == KS_OK; mrc = o->cur_next(c, false, &k, &v)) {
        uint8_t ok[12];
        ks_bval ov;
        if (k.n < 4 || v.n != 8)
            continue;
        memcpy(ok, k.p, 4);
        memcpy(ok + 4, v.p, 8);
        if ((rc = o->get(x->bt, KS_TAB_OBJECTS, ok, 12, &ov)) == KS_ENOTFOUND) {
            a->failed++;
            if (a->cb)
                a->cb('I', ks_get_be32(k.p), ks_get_be64(v.p), KS_ENOTFOUND, NULL, a->arg);
        } else if (rc != KS_OK) {
            mrc = rc; /* not read: the object may well be there */
            break;
        }
    }
    o->cur_close(c);
    ks_read_end(x);
    return mrc == KS_ENOTFOUND ? KS_OK : mrc;
}

/* A rotation staged (writes are sealed under NEW) while the key file lacks
 * NEW (put back from a copy taken before the stage): every record opens,
 * but nothing can be written, so no login succeeds. Not while the fleet's
 * hosts are still taking the key (KS_ROT_PENDING: NEW is not used yet).
 * Sets *missing and why; a read that fails is returned (never "intact"). */
static int staged_key_missing(ks_store *st, bool *missing, char *why, size_t n)
{
    ks_txn *x;
    int rc;

    *missing = false;
    if (st->copy)
        return KS_OK;
    if ((rc = ks_read_begin(st, &x)) != KS_OK)
        return rc;
    const ks_keyring *r = x->ring;
    if (r && r->rs.nxt && !r->have_nxt &&
        (r->rs.state == KS_ROT_STAGED || r->rs.state == KS_ROT_REWRAP || r->rs.state == KS_ROT_READY)) {
        char hex[2 * KS_KCV_LEN + 1];
        ks_kcv_hex(r->nxt_kcv, hex);
        snprintf(why, n, "the staged master key of epoch %u (check value %s) is not in the key file %s: records "
                 "are written under it, so nothing can be written and no one can log in. Put back the key file "
                 "that holds it (or, if no record was resealed yet, withdraw it with 'p11mk-admin abort')",
                 r->rs.nxt, hex, st->keysrc[0] ? st->keysrc : "(the built-in default key)");
        *missing = true;
    }
    ks_read_end(x);
    return KS_OK;
}

int ks_check_pages(ks_store *st, char *why, size_t n)
{
    return st->ops->check_pages ? st->ops->check_pages(st->be, why, n) : KS_OK;
}

int ks_verify(ks_store *st, ks_verify_cb cb, void *arg, uint64_t *checked, uint64_t *failed)
{
    verify_arg a = {cb, arg, 0, 0};
    char why[512];
    /* The file's pages first: a page LMDB could not have written can make
     * the walks below fail before they report anything. */
    int rc = ks_check_pages(st, why, sizeof(why));
    if (rc == KS_ECORRUPT) {
        a.failed++;
        if (cb)
            cb('F', 0, 0, KS_ECORRUPT, why, arg);
    }
    if (rc == KS_OK || rc == KS_ECORRUPT)
        rc = walk_records(st, verify_one, &a);
    if (rc == KS_OK)
        rc = verify_index(st, &a);
    if (rc == KS_OK)
        rc = ks_verify_anchor(st, cb, arg, &a.failed);

    if (rc == KS_OK && ks_check_rollback(st, why, sizeof(why))) {
        a.failed++;
        if (cb)
            cb('M', 0, 0, KS_ECORRUPT, why, arg);
    }
    char kwhy[4608]; /* names the key file */
    bool missing = false;
    if (rc == KS_OK && (rc = staged_key_missing(st, &missing, kwhy, sizeof(kwhy))) == KS_OK && missing) {
        a.failed++;
        if (cb)
            cb('K', 0, 0, KS_ENOKEY, kwhy, arg);
    }
    *checked = a.checked;
    *failed = a.failed;
    return rc;
}

/* ---- automatic rotation settings ---------------------------------------- */

static int auto_fn(ks_txn *x, void *arg)
{
    ks_meta *m;
    int rc = ks_txn_meta(x, &m);
    if (rc != KS_OK)
        return rc;
    m->rs.auto_interval = *(uint64_t *)arg;
    if (m->rs.auto_interval && !m->rs.last_rotation)
        m->rs.last_rotation = (uint64_t)time(NULL); /* the first automatic rotation is one interval from now */
    ks_meta_touch(x, false);
    return KS_OK;
}

int ks_rot_set_auto(ks_store *st, uint64_t interval)
{
    if (!st)
        return KS_EINVAL;
    return ks_write(st, auto_fn, &interval);
}
