/* p11mk keystore: the storage backend interface.
 *
 * Everything the keystore needs from storage, and nothing of LMDB: the rest
 * of keystore/ (sealing, the anchor, rotation, verification, backups) calls
 * only these operations; ks_lmdb.c implements them on LMDB, and is the only
 * file that includes <lmdb.h>. A backend on a shared database (PostgreSQL,
 * issue 16) implements the same table.
 *
 * The model: four named tables of byte-string keys and values, ordered by
 * key (memcmp order, shorter first on a common prefix):
 *   KS_TAB_META     small named records (format, ksid, epoch, gen, kcv+epoch, idxkey, state)
 *   KS_TAB_TOKENS   token(BE32)            -> sealed token record
 *   KS_TAB_OBJECTS  token(BE32) oid(BE64)  -> sealed object record
 *   KS_TAB_INDEX    token(BE32) mac(16)    -> oid(BE64): several values per key (a set of
 *                   fixed-size values, ordered), reached only through the ks_bdup_* operations
 *                   and cursors
 * and transactions over them: any number of concurrent readers, each on a
 * consistent snapshot, never blocked by a writer; one writer at a time
 * whose changes appear atomically at commit (LMDB gives this as is;
 * PostgreSQL: REPEATABLE READ for readers, SERIALIZABLE, or a lock row
 * taken first, for writers).
 *
 * Values returned (ks_bval) are borrowed: they stay valid until the end of
 * the transaction or the next write in it, whichever comes first (LMDB:
 * pointers into the map; a backend that copies can keep them in a
 * per-transaction arena and free it at the end). They may be unaligned.
 *
 * Errors are KS_* codes: KS_ENOTFOUND for a missing key or the end of a
 * scan, KS_EEXIST for a set member already there, and KS_BE_RETRY from a
 * write or a commit when the transaction must be aborted and run again
 * after ops->make_room (LMDB: the map is full and is grown; a database:
 * a serialization failure). Nothing else is retried. */
#ifndef P11MK_KS_BACKEND_H
#define P11MK_KS_BACKEND_H

#include "keystore/ks.h"

typedef struct ks_benv ks_benv; /* one open keystore storage, shared by the threads of a process */
typedef struct ks_btxn ks_btxn; /* a transaction, used by one thread at a time */
typedef struct ks_bcur ks_bcur; /* a cursor on one table, inside one transaction */

typedef enum { KS_TAB_META = 0, KS_TAB_TOKENS, KS_TAB_OBJECTS, KS_TAB_INDEX, KS_TAB_N } ks_table;

typedef struct {
    const uint8_t *p;
    size_t n;
} ks_bval;

/* A host's row (host_list). */
typedef struct {
    const char *name;
    ks_bval v;
    uint64_t seen; /* unix time of its last put, by the database's clock */
} ks_host_row;

/* Internal: abort, ops->make_room, run the transaction again (never returned by a public ks_* function). */
#define KS_BE_RETRY (-100)

/* Where a cursor starts. */
enum {
    KS_BSEEK_FIRST = 0, /* the first entry */
    KS_BSEEK_LAST,      /* the last entry */
    KS_BSEEK_GE,        /* the first key >= the key given (a prefix scan starts here) */
    KS_BSEEK_KEY,       /* exactly the key given (its first value, in the index) */
};

/* The ids a storage holds in plain metadata (peek_counters). */
typedef struct {
    bool have_ksid;
    uint8_t ksid[16];
    bool have_kcv;
    uint8_t kcv[8];           /* the key check value of its current epoch */
    size_t n_succeeds;        /* the keystores it was restored in the place of, newest first */
    uint8_t succeeds[KS_SUCCEEDS_MAX][16];
} ks_peek_ids;

typedef struct ks_backend_ops {
    const char *name; /* as in p11mk.conf's backend = */

    /* ---- the store ---- */
    /* Checks on the keystore location before anything is created or opened
     * (LMDB: data.mdb and lock.mdb must be regular files, not links). */
    int (*check_location)(const char *path, ks_err *err);
    /* Open the storage of the keystore directory path; target is where it
     * lives when that is elsewhere (PostgreSQL: the libpq connection string;
     * LMDB: NULL, the directory). flags: KS_OPEN_*. *rdonly is true on input
     * when read-only was asked for, and set when the storage can only be
     * read by this user. Then *tables says whether the tables exist (else
     * the storage is empty: KS_OPEN_CREATE may create them with
     * create_tables in a write transaction); storage with some tables but
     * not all is KS_ECORRUPT (err says so). */
    int (*open)(const char *path, const char *target, unsigned flags, bool *rdonly, bool *tables, ks_benv **out, ks_err *err);
    /* Release everything (no transaction of it may be active). Not after
     * fork in the child: a child abandons its parent's stores. */
    void (*close)(ks_benv *e);
    /* Create the tables (inside a write transaction of a storage opened empty). */
    int (*create_tables)(ks_btxn *t);
    /* The storage's size in bytes, as ks_info.map_size reports it (0 when not known). */
    uint64_t (*size)(ks_benv *e);
    /* The id of the last committed write, by any process, without a
     * transaction (ks_commit_seq): it changes with every commit. It may be
     * AHEAD of the snapshot a read transaction begun just after gets (LMDB
     * writes a commit's meta page, which this reads, before it publishes the
     * commit to new readers): what a check vouches for is its transaction's
     * snapshot(), in the same numbering. 0: not known. On the hot path: no
     * round trip (a database keeps it from notifications). */
    uint64_t (*commit_seq)(ks_benv *e);

    /* ---- transactions ---- */
    /* A read transaction: cheap, on the hot path of every operation. */
    int (*read_begin)(ks_benv *e, ks_btxn **t);
    void (*read_end)(ks_btxn *t);
    /* The read transaction's snapshot, in commit_seq's numbering: the
     * commit_seq reading at which what it sees is current (ks_txn_seq). Two
     * read transactions with the same non-zero id see the same data, so what
     * was read in one holds in the other. 0: not known. Cheap: on the hot
     * path, and it lets it skip reading the generation again (ks_store.c
     * ring_attach) (LMDB: the transaction id). */
    uint64_t (*snapshot)(ks_btxn *t);
    /* A write transaction: one at a time across processes (or hosts). */
    int (*write_begin)(ks_benv *e, ks_btxn **t);
    int (*commit)(ks_btxn *t); /* the transaction ends, whatever the result; KS_BE_RETRY, KS_ENOSPC, ... */
    void (*abort)(ks_btxn *t);
    /* After KS_BE_RETRY, with no transaction of this process active on e. */
    int (*make_room)(ks_benv *e);
    /* Whether a write transaction that failed (before commit or abort is
     * called) failed only because its connection was lost before COMMIT was
     * sent: nothing of it was committed, and ks_write runs it again. NULL:
     * never (LMDB has no connection to lose). */
    bool (*lost)(ks_btxn *t);

    /* ---- records (tables other than KS_TAB_INDEX) ----
     * A put's or dup_add's key and value must not be bytes a get or cursor of
     * the same write transaction returned (LMDB may move them while it
     * writes); cur_replace copies its key. */
    int (*get)(ks_btxn *t, ks_table tab, const void *k, size_t kl, ks_bval *v); /* KS_ENOTFOUND */
    int (*put)(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl); /* insert or replace */
    int (*del)(ks_btxn *t, ks_table tab, const void *k, size_t kl);                          /* KS_ENOTFOUND */
    /* Delete every entry whose key starts with prefix (every value of each index key). */
    int (*del_prefix)(ks_btxn *t, ks_table tab, const void *prefix, size_t pl);
    /* Entries in the table (the index: values). */
    int (*count)(ks_btxn *t, ks_table tab, uint64_t *n);

    /* ---- the index: a set of values per key ---- */
    int (*dup_add)(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl); /* KS_EEXIST */
    int (*dup_del)(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl); /* KS_ENOTFOUND */
    int (*dup_has)(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl); /* KS_ENOTFOUND */

    /* ---- ordered scans ---- */
    int (*cur_open)(ks_btxn *t, ks_table tab, ks_bcur **c);
    /* Position (KS_BSEEK_*; k is used by GE and KEY) and return the entry there; KS_ENOTFOUND when none. */
    int (*cur_seek)(ks_bcur *c, int how, const void *k, size_t kl, ks_bval *key, ks_bval *val);
    /* The next entry in key order (the index: the next value of the same key, then the next key); with
     * same_key, only another value of the current key. KS_ENOTFOUND at the end. */
    int (*cur_next)(ks_bcur *c, bool same_key, ks_bval *key, ks_bval *val);
    /* Replace the value of the entry the cursor is on (key: that entry's key, which may be the very bytes
     * cur_seek/cur_next returned; not the index). */
    int (*cur_replace)(ks_bcur *c, const void *k, size_t kl, const void *v, size_t vl);
    void (*cur_close)(ks_bcur *c);

    /* ---- the lifecycle lock across hosts (ks_lifecycle.c) ---- */
    /* Try the storage-wide lock of master-key lifecycle steps, taken after
     * the keystore directory's rotation.lock when several hosts share the
     * storage (NULL for a storage that one host owns: LMDB). who describes
     * the taker for others who wait. KS_OK: held; KS_EBUSY: another holds
     * it, described in holder; another code: the failure. Either way *h is
     * set (NULL on entry the first time; pass it back to try again) and must
     * be given to unlock_global, which releases the lock if held. A holder
     * that dies releases it (the database ends its session). */
    int (*lock_global)(ks_benv *e, const char *who, void **h, char *holder, size_t n);
    void (*unlock_global)(void *h);
    /* The storage-wide lock of PIN attempts on one token (NULL for a storage
     * one host owns: the file lock is enough), taken after the host's file
     * lock. KS_OK: held in *h until unlock_attempts; KS_EBUSY: held by
     * another for wait_ms; KS_EIO. A holder that dies releases it. */
    int (*lock_attempts)(ks_benv *e, uint32_t token_id, unsigned wait_ms, void **h);
    void (*unlock_attempts)(ks_benv *e, uint32_t token_id, void *h);

    /* ---- the hosts that share the storage (ks_fleet.c; NULL: one host) ---- */
    /* Rows outside the keystore's tables and transactions (no commit
     * sequence): name -> (installation, value), with the time of the last
     * put. A row of that name put by another installation (another host
     * configured with the same name) is not replaced: KS_EEXIST. */
    int (*host_put)(ks_benv *e, const char *name, const uint8_t install[16], const void *v, size_t vl);
    /* Every row, by name; *out is one allocation (free(*out)); names and values point into it. */
    int (*host_list)(ks_benv *e, ks_host_row **out, size_t *n);
    int (*host_del)(ks_benv *e, const char *name); /* KS_ENOTFOUND */

    /* ---- copies (ks_backup.c) ---- */
    /* A consistent, compacted copy of the whole storage written to fd, as of
     * one read snapshot, while readers and writers go on. On failure: the
     * errno-style reason in *sys_err (0 if none) and a phrase in why. */
    int (*copy)(ks_benv *e, int fd, int *sys_err, char *why, size_t n);
    /* Is the file open on fd a complete copy that open() may map? (KS_EBADFILE, err says why)
     * NULL: this backend is not restored into (ks_backup.c says so). */
    int (*check_copy)(int fd, const char *name, ks_err *err);
    /* Is every page of the storage's file one its engine could have
     * written (LMDB: ks_lmdb_pages.h, each table whole, in a read snapshot)?
     * KS_ECORRUPT with where and what in why; NULL: nothing to check. */
    int (*check_pages)(ks_benv *e, char *why, size_t n);
    /* A copy's (KS_OPEN_COPY) damage as first found while reading or
     * writing it (where and what, for the restore's or export's message,
     * which names the file: not logged), or NULL; NULL op: none kept. */
    const char *(*copy_damage)(ks_benv *e);
    /* The read transactions open now (ks_readers: the oldest's snapshot, in
     * commit_seq's numbering, and its process); NULL op: no such table. */
    int (*readers)(ks_benv *e, unsigned *active, uint64_t *oldest_seq, long *oldest_pid);
    /* The plain epoch and generation of the storage at path, read without
     * opening it as a store (it may be damaged, or under another key), and
     * its ids when ids is not NULL. */
    int (*peek_counters)(const char *path, uint32_t *epoch, uint64_t *gen, ks_peek_ids *ids);
} ks_backend_ops;

/* The backends built in. */
KS_API extern const ks_backend_ops ks_lmdb_backend;
KS_API extern const ks_backend_ops ks_pg_backend; /* ks_pg.c: libpq is loaded when it is first opened */
/* ks_pg.c: registers the listeners' fork handler, once (ks_process_setup calls it). */
KS_API void ks_pg_process_setup(void);
/* By name (p11mk.conf's backend =), NULL if not built in (ks_backend.c). */
KS_API const ks_backend_ops *ks_backend_find(const char *name);
/* The names of those built in, for messages: "lmdb, postgresql". */
KS_API const char *ks_backend_names(void);
/* A consistent copy of any backend's storage, as one read snapshot, written
 * to fd as an LMDB data file (the backup format of every backend): the
 * tables are copied into a new LMDB environment in a temporary directory,
 * which is then copied compacted to fd and removed. */
/* Copy every table of src's storage, as one read snapshot, into dst's in one
 * write transaction (run again after make_room when it must be); with
 * replace, dst's tables are emptied first in the same transaction (a
 * restore into a backend that is not a file). dst_tables: dst's tables
 * exist (else create_tables makes them first). */
KS_API int ks_backend_transfer(const ks_backend_ops *so, ks_benv *se, const ks_backend_ops *d, ks_benv *de,
                               bool dst_tables, bool replace);
/* The plain epoch and generation records of an open storage (0 when missing). */
KS_API int ks_backend_peek_counters(const ks_backend_ops *o, ks_benv *e, uint32_t *epoch, uint64_t *gen,
                                    ks_peek_ids *ids);
KS_API int ks_backend_copy_to_lmdb(const ks_backend_ops *o, ks_benv *e, int fd, int *sys_err, char *why, size_t n);
/* The one keystores are opened with. */
#define KS_BACKEND_DEFAULT (&ks_lmdb_backend)

#endif
