/* p11mk keystore internals shared by ks_*.c; not part of the layer's API.
 *
 * The keystore owns storage (LMDB), the sealed record format, master keys
 * and their registers, epochs, the master-key lifecycle protocol and its
 * locks, PIN-attempt locks and memory for secrets. Its one public header is
 * keystore/include/keystore/ks.h, free of storage types; this header is
 * reachable only from this folder and the tests. Storage goes through the
 * backend interface (ks_backend.h); LMDB is reached only from ks_lmdb.c.
 * May call: LMDB, OpenSSL, the C library; nothing above it. */
#ifndef P11MK_KS_INTERNAL_H
#define P11MK_KS_INTERNAL_H

#include "keystore/ks.h"
#include "ks_backend.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include <openssl/evp.h>

#define KS_FORMAT_VERSION KS_FORMAT /* 2: the anchor holds the counters and per-token sets */
#define KS_KSID_LEN 16
#define KS_NONCE_LEN 12
#define KS_TAG_LEN 16
#define KS_REC_HDR_LEN 8 /* 'P' 'K' version kind epoch(BE32) */
#define KS_REC_OVERHEAD (KS_REC_HDR_LEN + KS_NONCE_LEN + KS_TAG_LEN)
#define KS_REC_VERSION 1

/* Record kinds (bound into the AAD, so a record of one kind never opens as another). */
enum { KS_KIND_TOKEN = 'T', KS_KIND_OBJECT = 'O', KS_KIND_META = 'M' };


/* The persistent rotation state and counters: the anchor (ks_anchor.c),
 * sealed in meta "state" under CURRENT. */
typedef struct {
    int state;            /* KS_ROT_* */
    uint32_t cur, nxt;    /* epochs; nxt 0 when nothing is staged */
    uint8_t cursor_db;    /* rewrap position: 0 meta, 1 tokens, 2 objects, 3 end */
    uint8_t cursor_len;
    uint8_t cursor[12];   /* last key done in cursor_db */
    uint64_t auto_interval; /* automatic rotation every this many seconds (0: off) */
    uint64_t last_rotation; /* unix time of the last commit (0: never) */
    bool legacy;          /* a format 1 record: the fields below are not in it */
    uint32_t format;
    uint64_t gen;         /* the generation, authenticated (the plain "gen" is compared with it) */
    uint64_t next_oid;    /* the id the next object gets */
    uint32_t toknext;     /* the id the next token gets (ids are never reused) */
    uint8_t cur_kcv[KS_KCV_LEN], nxt_kcv[KS_KCV_LEN]; /* the keys of epochs cur and nxt: the plain
                                                         "kcv" records are only compared with these */
} ks_rotstate;

/* What the anchor knows of one token (also of a deleted one: its incarnation). */
typedef struct {
    uint32_t tid;
    bool exists;
    uint64_t inc;              /* advances when the token is wiped or deleted */
    uint64_t n_obj, n_idx;     /* object records and index entries */
    uint8_t obj_hash[16];      /* XOR of ks_obj_hash over its objects */
    uint8_t idx_hash[16];      /* XOR of ks_idx_hash over its index entries */
    uint8_t tag[KS_TAG_LEN];   /* GCM tag of its current token record: an older copy put back is refused */
} ks_tokstat;

/* A transaction's working copy of the anchor (loaded on first use). */
typedef struct {
    bool loaded, dirty, bump, upgraded;
    ks_rotstate rs;
    ks_tokstat *tok; /* sorted by tid */
    size_t ntok, cap;
} ks_meta;

/* Keys and state for one generation of the metadata. Transactions hold a
 * reference; a new generation replaces it and the old one is cleansed when
 * its last transaction ends. It lives in memory excluded from core dumps.
 * The master keys are kept so that the next generation finds them without
 * reading the key file (a commit turns NEW into CURRENT). */
typedef struct ks_keyring {
    atomic_int refs;
    uint64_t gen;
    ks_rotstate rs;
    uint32_t write_epoch;
    bool have_cur, have_nxt;
    uint8_t cur_key[32], nxt_key[32];   /* record keys of epochs rs.cur and rs.nxt */
    uint8_t cur_mk[KS_MK_LEN], nxt_mk[KS_MK_LEN];
    uint8_t cur_kcv[KS_KCV_LEN], nxt_kcv[KS_KCV_LEN];
} ks_keyring;

#define IDX_MAC_LEN 16
#define IDX_KEY_LEN (4 + IDX_MAC_LEN)
#define KS_IDX_SPARE 4 /* index MAC contexts kept for reuse (ks_store.idx_spare) */

struct ks_store {
    ks_store *next;
    int refs;
    dev_t dev;
    ino_t ino;
    char *path;
    const ks_backend_ops *ops;
    ks_benv *be;
    bool rdonly;
    bool copy; /* KS_OPEN_COPY: not the keystore its key file serves */
    uint32_t format;
    uint8_t ksid[KS_KSID_LEN];
    EVP_MAC_CTX *idx_mac; /* HMAC-SHA256 keyed with the index key; duplicated per use */
    /* Duplicates of idx_mac given back after use, taken again (and re-keyed
     * from their own saved state) instead of duplicating anew: lock-free,
     * an empty place means duplicate, a full set means free. */
    _Atomic(EVP_MAC_CTX *) idx_spare[KS_IDX_SPARE];
    /* Keys: the snapshot for the current generation; the keys handed to this
     * process (by ks_open, or staged in it) that no key file can give back;
     * and the key file, read afresh whenever a generation needs a key the
     * first two do not hold. Nothing here grows with the number of
     * rotations. All under ring_lock. */
    pthread_mutex_t ring_lock;
    ks_keyring *ring;
    uint64_t ring_snap; /* a read snapshot (ops->snapshot) known to hold ring's generation; 0: none */
    ks_mkey *extra;   /* secure memory */
    size_t nextra, cap_extra;
    char keysrc[4096]; /* key file to read the registers from ("" for none) */
    char conf[4096];   /* the configuration file that may name a key file later (ks_mkey.config; "" for none) */
    unsigned keymode;
    _Atomic uint32_t epoch_hint;
    uint64_t failed_gen; /* generation + 1 whose keys could not be built (logged once) */
    int users_fd;        /* shared flock on DIR/users.lock while open: restore needs it exclusive */
    /* The last anchor seen, parsed, keyed by its record's GCM tag. */
    pthread_mutex_t meta_lock;
    bool meta_cached;
    uint8_t meta_tag[KS_TAG_LEN];
    ks_meta meta_cache;
    uint64_t reported_gen; /* generation + 1 whose anchor mismatch was logged */
};

struct ks_txn {
    ks_store *st;
    ks_btxn *bt;
    bool write;
    bool retry; /* the backend asked for the transaction to run again (KS_BE_RETRY: LMDB's map is full) */
    ks_keyring *ring; /* the keys valid for this transaction's snapshot */
    ks_meta m;        /* the anchor, once used (sealed again before commit if changed) */
};

/* ks_open on a given backend, whose storage is the directory itself (no
 * target): a storage wrapped for tests (a backend that fails on purpose).
 * Internal: never exported from the module. */
KS_API int ks_open_backend(const char *dir, const ks_backend_ops *ops, const ks_mkey *mk, unsigned flags,
                           ks_store **out, ks_err *err);

/* Make one more backend known by its name (p11mk.conf's backend =), beside
 * those built in, which it may not replace (KS_EEXIST); a later call
 * replaces the earlier one (ks_backend.c). For programs linked with the
 * keystore (the tests' failing backend); not exported from the module. */
KS_API int ks_backend_register(const ks_backend_ops *ops);

/* ---- storage, through the backend (ks_store.c) ---- */
/* err gets "keystore PATH: cannot read WHAT (reason); nothing was changed:
 * try again, and check the storage"; returns rc. */
KS_API int ks_read_error(ks_err *err, const char *path, const char *what, int rc);
/* A meta record: key, then suffix bytes (at most 32 in all). */
KS_API int ks_meta_get(ks_btxn *t, ks_store *st, const char *key, const void *suffix, size_t slen, ks_bval *v);
KS_API int ks_meta_put(ks_txn *x, const char *key, const void *suffix, size_t slen, const void *val, size_t vlen);
KS_API int ks_meta_del(ks_txn *x, const char *key, const void *suffix, size_t slen);
/* Writes: KS_EINVAL in a read transaction; KS_BE_RETRY becomes x->retry
 * (ks_write aborts, ops->make_room, runs the transaction again) and KS_EIO. */
static inline int ks_wres(ks_txn *x, int rc)
{
    if (rc == KS_BE_RETRY) {
        x->retry = true;
        return KS_EIO;
    }
    return rc;
}
static inline int ks_wput(ks_txn *x, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    return x->write ? ks_wres(x, x->st->ops->put(x->bt, tab, k, kl, v, vl)) : KS_EINVAL;
}
static inline int ks_wdel(ks_txn *x, ks_table tab, const void *k, size_t kl)
{
    return x->write ? ks_wres(x, x->st->ops->del(x->bt, tab, k, kl)) : KS_EINVAL;
}
static inline int ks_cursor_replace(ks_txn *x, ks_bcur *c, const void *k, size_t kl, const void *v, size_t vl)
{
    return x->write ? ks_wres(x, x->st->ops->cur_replace(c, k, kl, v, vl)) : KS_EINVAL;
}
/* The record key of an epoch in this generation, or NULL. */
static inline const uint8_t *ks_ring_key(const ks_keyring *r, uint32_t epoch)
{
    if (r->have_cur && epoch == r->rs.cur)
        return r->cur_key;
    if (r->have_nxt && r->rs.nxt && epoch == r->rs.nxt)
        return r->nxt_key;
    return NULL;
}
/* ---- the anchor (ks_anchor.c) ---- */
/* The rotation part and counters of the state record (KS_ECORRUPT if missing or unauthentic). */
KS_API int ks_state_load(ks_btxn *t, ks_store *st, uint32_t epoch, const uint8_t curkey[32], ks_rotstate *rs);
/* Seal m under key (epoch m->rs.cur) and put it; no generation change. */
KS_API int ks_state_write(ks_txn *x, const ks_meta *m, const uint8_t key[32]);
/* The transaction's working copy; a format 1 anchor is upgraded by a writer. */
KS_API int ks_txn_meta(ks_txn *x, ks_meta **m);
/* The token's entry (added, zeroed, when add); NULL if absent or out of memory. */
KS_API ks_tokstat *ks_meta_tok(ks_meta *m, uint32_t tid, bool add);
/* The copy changed: seal it before commit (bump: and advance the generation). */
KS_API void ks_meta_touch(ks_txn *x, bool bump);
KS_API int ks_meta_flush(ks_txn *x);
KS_API void ks_meta_free(ks_meta *m);
/* The set member of an object record: its place and its record's GCM tag,
 * so that a record replaced by another copy changes the set. */
KS_API void ks_obj_hash(uint32_t tid, uint64_t oid, const uint8_t tag[KS_TAG_LEN], uint8_t out[16]);
KS_API void ks_idx_hash(const uint8_t key[IDX_KEY_LEN], uint64_t oid, uint8_t out[16]);
KS_API void ks_hash_xor(uint8_t acc[16], const uint8_t h[16]);
/* verify's part: counters and sets against the anchor. */
KS_API int ks_verify_anchor(ks_store *st, ks_verify_cb cb, void *arg, uint64_t *failed);
/* At open: counts against the databases' sizes; a difference is logged.
 * A count that cannot be read is returned (err says so), never logged as a
 * difference. */
KS_API int ks_anchor_check_counts(ks_store *st, ks_err *err);
/* Is the keystore older than its key file (data.mdb put back from an older
 * copy)? why gets a sentence. */
KS_API bool ks_check_rollback(ks_store *st, char *why, size_t n);
/* Every page of the store's file is one its engine could have written
 * (KS_OK), or KS_ECORRUPT with why; KS_OK where the backend has no pages. */
KS_API int ks_check_pages(ks_store *st, char *why, size_t n);
KS_API int ks_begin_write(ks_store *st, ks_txn *x);
KS_API int ks_end_write(ks_txn *x, int rc); /* commit if rc == KS_OK, else abort; returns the result */
/* Find the master key with this KCV: this generation's keys, the keys
 * handed to this process, then the key file. Call with ring_lock held. */
KS_API bool ks_find_key(ks_store *st, const uint8_t kcv[KS_KCV_LEN], uint8_t out[KS_MK_LEN]);
/* Hand a key to the store (a key staged in this process). ring_lock held. */
KS_API int ks_store_add_key(ks_store *st, const ks_mkey *mk);
/* From now on the store reads its registers from this key file. */
KS_API void ks_store_set_keysrc(ks_store *st, const char *path, unsigned mode);
KS_API void ks_ring_invalidate(ks_store *st);

/* ---- files (ks_file.c) ---- */
/* fsync a directory (a rename or link in it becomes durable); of path's directory. */
KS_API void ks_fsync_dir(const char *dir);
KS_API void ks_fsync_parent(const char *path);
/* The directory part of path ("." when there is none). */
KS_API void ks_dirname(const char *path, char *dir, size_t n);

/* ---- the rotation state machine inside one keystore (ks_rotate.c) ----
 * These take no lifecycle lock and touch no key file: ks_lifecycle.c calls
 * them under its lock, in its order; private scratch copies (restore,
 * export) call them directly. */
KS_API int ks_rot_stage(ks_store *st, const ks_mkey *newkey, uint32_t at_least, ks_err *err);
/* PENDING -> STAGED (every host holds NEW); *changed says whether it moved. */
KS_API int ks_rot_activate(ks_store *st, bool *changed);
KS_API int ks_rot_rewrap(ks_store *st, size_t batch, ks_rot_cb cb, void *arg, uint64_t *done, bool *stopped,
                         ks_err *err);
/* now: the time recorded as the last rotation (0: the clock's) */
KS_API int ks_rot_commit(ks_store *st, bool disable_auto, uint64_t now, ks_err *err);
KS_API int ks_rot_abort(ks_store *st, size_t batch, ks_rot_cb cb, void *arg, uint64_t *done, ks_err *err);
KS_API int ks_rot_set_auto(ks_store *st, uint64_t interval);
/* The epoch whose key has this check value (the latest such epoch); KS_ENOTFOUND. */
KS_API int ks_epoch_of_kcv(ks_store *st, const uint8_t kcv[KS_KCV_LEN], uint32_t *epoch);
/* Raise the generation counter to at least `gen` (a restored copy must not
 * look older than the keystore it replaces to a process that saw both). */
KS_API int ks_gen_at_least(ks_store *st, uint64_t gen);
/* Reseal a private copy under `to` at an epoch of at least at_least. */
KS_API int ks_rekey(ks_store *st, const ks_mkey *to, uint32_t at_least, ks_err *err);
/* The epoch and generation of the keystore in dir, read without opening it
 * as a store (it may be damaged, or under a key this host lacks). */
KS_API int ks_peek_counters(const char *dir, uint32_t *epoch, uint64_t *gen, ks_peek_ids *ids);
/* Remove the scratch copies a killed restore or export left in dir (the
 * caller holds the lifecycle lock). */
KS_API void ks_remove_scratch(const char *dir);
/* Restore's work on a scratch directory and the swap (ks_backup.c); the
 * caller holds the lifecycle lock. */
/* ks_fleet.c: the hosts sharing the storage. */
KS_API bool ks_fleet_shared(ks_store *st); /* several hosts may share it (the backend keeps host rows) */
KS_API int ks_fleet_announce(ks_store *st, const char *name, const ks_mkey *const *keys, size_t n);
KS_API int ks_fleet_announce_cfg(ks_store *st, const ks_config *cfg); /* the key file cfg names, or the default key */
KS_API int ks_fleet_list(ks_store *st, const ks_mkey *cur, const ks_mkey *nxt, ks_host **out, size_t *n);
KS_API int ks_fleet_remove(ks_store *st, const char *name);

/* A copy made ready to replace, in its place, the keystore `live` (which
 * may itself have replaced others): meta "succeeds" (ks_info.succeeds) lists
 * them, newest first, at most 8, so that the key files naming them follow. */
KS_API int ks_set_succeeds(ks_store *st, const ks_peek_ids *live);
/* Called once the copy is ready and before it replaces anything: live has
 * the ids of the keystore in place (none: not there, or not readable),
 * copy_ksid is the copy's. Anything but KS_OK stops the restore, nothing
 * replaced (err says why). */
typedef int (*ks_restore_gate)(const ks_peek_ids *live, const uint8_t copy_ksid[16], void *arg, ks_err *err);
KS_API int ks_restore_locked(const char *dir, const char *file, const ks_registers *regs, const ks_mkey *current,
                             ks_restore_gate gate, void *arg, ks_mk_result *res, ks_err *err);
/* The same for a keystore whose storage several hosts share (not a file in
 * dir): the storage's content replaced in one write transaction, online. */
KS_API int ks_restore_shared_locked(const char *dir, const ks_backend_ops *ops, ks_benv *be, bool tables,
                                    const char *file, const ks_registers *regs, const ks_mkey *current,
                                    ks_restore_gate gate, void *arg, ks_mk_result *res, ks_err *err);

/* Descriptors a fork child closes at once (they hold OFD locks): keep
 * returns the slot, -1 when the table (128) is full; get returns the
 * descriptor, -1 in a fork child; close forgets and closes it. */
KS_API int ks_forkfd_keep(int fd);
KS_API int ks_forkfd_get(int slot);
KS_API void ks_forkfd_close(int slot);

/* HKDF-SHA256. 0 on success. */
KS_API int ks_hkdf(const uint8_t *key, size_t keylen, const uint8_t *salt, size_t saltlen, const void *info,
                   size_t infolen, uint8_t *out, size_t outlen);
/* Record key of an epoch for a keystore: HKDF(mk, salt=ksid, "p11mk record key v1" | epoch). */
KS_API int ks_rec_key(const ks_mkey *mk, const uint8_t ksid[KS_KSID_LEN], uint32_t epoch, uint8_t key[32]);

/* Seal plaintext into a record (malloc'd *out, *outlen = len + KS_REC_OVERHEAD). */
KS_API int ks_rec_seal(const uint8_t key[32], const uint8_t ksid[KS_KSID_LEN], uint8_t kind, uint32_t epoch,
                       uint32_t token, uint64_t oid, const uint8_t *pt, size_t len, uint8_t **out,
                       size_t *outlen);
/* Parse a record's header without unsealing: kind and epoch. KS_ECORRUPT if malformed. */
KS_API int ks_rec_header(const uint8_t *rec, size_t len, uint8_t *kind, uint32_t *epoch);
/* Open a record sealed with seal() under the same binding. *out malloc'd. */
KS_API int ks_rec_open(const uint8_t key[32], const uint8_t ksid[KS_KSID_LEN], uint8_t kind, uint32_t token,
                       uint64_t oid, const uint8_t *rec, size_t len, uint8_t **out, size_t *outlen);

static inline void ks_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint32_t ks_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void ks_be64(uint8_t *p, uint64_t v)
{
    ks_be32(p, (uint32_t)(v >> 32));
    ks_be32(p + 4, (uint32_t)v);
}
static inline uint64_t ks_get_be64(const uint8_t *p)
{
    return (uint64_t)ks_get_be32(p) << 32 | ks_get_be32(p + 4);
}

/* ---- the writer gate's bounded wait (ks_gatewait.c) ----
 * Set for its thread by a master-key step while it holds its locks
 * (ks_lifecycle.c); NULL: the gate is waited for without a bound, as
 * applications do. waiting is called once, after KS_GATE_TELL_MS, with
 * what the step waits for (the holder named when it can be seen). */
typedef struct {
    unsigned wait_ms; /* at least KS_GATE_WAIT_MIN_MS: a write takes milliseconds */
    void (*waiting)(const char *what, void *arg);
    void *arg;
} ks_gate_bound;
extern _Thread_local const ks_gate_bound *ks_gate_bound_here;
enum { KS_GATE_WAIT_MIN_MS = 2000, KS_GATE_TELL_MS = 1000 };
/* The OFD write lock on byte at of fd: 0, ETIMEDOUT when b's time ran out
 * (logged, naming the holder), or an errno. path: for the message. */
int ks_gate_lock_bounded(int fd, off_t at, const ks_gate_bound *b, const char *path);
/* A bounded wait given up on in this process still waits for the gate
 * (it lets it go as soon as it has it); no other wait may begin meanwhile:
 * this waits until none is left (true), at most max_ms (0: no bound). */
bool ks_gate_orphans_wait(unsigned max_ms);

/* A public function's result, with the area of its failure recorded. */
static inline int ks_err_in(ks_err *e, ks_area area, int rc)
{
    if (rc != KS_OK && e)
        e->area = area;
    return rc;
}

#endif
