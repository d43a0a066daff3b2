/* p11mk keystore: the LMDB backend (ks_backend.h), the only file that
 * includes <lmdb.h>.
 *
 * One environment per keystore directory per process (ks_store.c's
 * registry shares it), opened MDB_NOTLS so that a thread may hold several
 * read transactions and a transaction may end on another thread; four
 * named databases, "meta", "tokens", "objects" and "index" (MDB_DUPSORT |
 * MDB_DUPFIXED), one per ks_table.
 *
 * Every transaction holds the read side of `resize`; growing the map (which
 * LMDB allows only with no transaction active in the process) takes the
 * write side. lmdb_commit_seq, read by every operation of every thread,
 * takes no lock: it reads the meta pages through a mapping of its own, of
 * those two pages alone, which no resize replaces (a lock there, even one
 * per thread, cost two locked instructions per operation; one shared lock
 * word would bounce between the threads' cores). Several processes share the files; LMDB's lock file
 * serializes writers and MDB_MAP_RESIZED tells us another process grew it.
 * A write that finds the map full (MDB_MAP_FULL, MDB_TXN_FULL) reports
 * KS_BE_RETRY: ks_write aborts, grows the map (make_room) and runs the
 * transaction again.
 *
 * The writer gate. LMDB's writer lock is a robust mutex in lock.mdb: it
 * survives its owner's death, not a waiter's. A waiter woken to take it and
 * killed before it did (kill -9 of an application in C_Login, of an admin
 * command) takes the wake-up with it: the mutex is free, the other waiters
 * sleep on until some later writer has to wait too (a chaos run saw a
 * C_Login stuck for minutes, holding its token's PIN-attempt lock). So a
 * p11mk process never waits on LMDB's writer lock: it first takes the gate,
 * an OFD write lock on one byte of data.mdb far past its pages (the kernel
 * drops a killed waiter and hands the lock on, at whatever instruction the
 * holder died), and then finds LMDB's lock free or held by a writer that is
 * not p11mk's. The threads of one process queue on a semaphore before it
 * (an OFD lock is its description's, which they share); the description
 * is closed in a fork child (ks_forkfd_keep: a child living on would hold
 * the gate of a parent killed mid-write). Order: gate, then `resize`.
 *
 * Readers are not gated, though LMDB's reader table has such a mutex (held
 * for a slot's search, a few hundred instructions): a gate costs two system
 * calls per read (1.1 us here), and keeping ended read transactions to
 * spare the search keeps their slots while the process idles (tried: 260
 * idle processes filled the table's 1,022 slots and new readers failed). */
#include "ks_internal.h"
#include "ks_fault.h"
#include "ks_lmdb_pages.h"

#include <lmdb.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define MAP_INIT_DEFAULT (32ull << 20)
#define MAP_STEP_MAX (1ull << 30)
#define MAX_READERS 1022

#define GATE_AT ((off_t)1 << 59) /* the writer gate's byte of data.mdb (PIN attempts: 1 << 60 and up) */

/* The data file's mappings at offset 0 that another environment made: a
 * fork child inherits its parent's map of the same file, and p11mk-admin's
 * peek opens a second environment on a keystore the process has open. */
#define MAPS_OTHER 8
typedef struct {
    uintptr_t at[MAPS_OTHER];
    unsigned n;
    bool overflow; /* more than MAPS_OTHER: the map cannot be told apart */
} maps_other;

struct ks_benv {
    MDB_env *env;
    unsigned psize;          /* LMDB's page size, for lm_in_file */
    uintptr_t map_lo;        /* where the map begins (0: unknown), under the resize lock */
    maps_other others;       /* the data file's mappings other environments made (map_base) */
    atomic_bool fault_told;  /* a fault in the map was logged (ks_fault.h) */
    bool copy;               /* KS_OPEN_COPY: a copy being made ready (its caller names the file given) */
    char copy_told[224];     /* a copy's damage, set once with fault_told (lmdb_copy_damage) */
    uint64_t page_memo[256]; /* pages checked in the write transaction (ks_lmdb_pages.h), under LMDB's writer lock */
    _Atomic(MDB_txn *) writer; /* the write transaction under way (its pages may be outside the map), or NULL */
    int gate;                /* the writer gate's descriptor's slot (ks_forkfd_get), -1: none (read-only) */
    bool gate_ready;         /* gate and gate_sem set up */
    sem_t gate_sem;          /* the process's threads queue here before the gate */
    MDB_dbi dbi[KS_TAB_N];
    pthread_rwlock_t resize;
    const volatile uint8_t *metas; /* the two meta pages, mapped apart from LMDB's map (lmdb_commit_seq), or NULL */
    char *path;
};

/* The map may be replaced: no transaction. */
static void resize_lock(ks_benv *e) { pthread_rwlock_wrlock(&e->resize); }

static void resize_unlock(ks_benv *e) { pthread_rwlock_unlock(&e->resize); }

/* A ks_btxn is the MDB_txn, a ks_bcur the MDB_cursor; the environment's
 * user context is its ks_benv. */
static inline MDB_txn *T(ks_btxn *t) { return (MDB_txn *)t; }
static inline MDB_cursor *C(ks_bcur *c) { return (MDB_cursor *)c; }
static inline ks_benv *E(MDB_txn *t) { return mdb_env_get_userctx(mdb_txn_env(t)); }
static inline MDB_dbi D(MDB_txn *t, ks_table tab) { return E(t)->dbi[tab]; }
static inline MDB_val V(const void *p, size_t n) { return (MDB_val){n, (void *)p}; }
static inline ks_bval B(MDB_val v) { return (ks_bval){v.mv_data, v.mv_size}; }

/* ---- damage -------------------------------------------------------------- */

/* Every LMDB call that reads the map (or the lock file's) runs in a fault
 * frame (ks_fault.h): a damaged data.mdb makes it return LM_FAULT, reported
 * as KS_ECORRUPT, instead of killing the process. */
#define LM_FAULT (-39999)
#define LM_DAMAGED (-39998) /* a page a write would copy is not sound (ks_lmdb_pages.h) */
#define LM_UNSEEN (-39997) /* damage only a whole-file check sees (lp_view.unseen) */
#define LM_MOVED (-39996)  /* a snapshot's meta page already rewritten by a later commit: take another */
#define LM(e, rc, expr) KS_FAULT_GUARD(rc, lm_fault(e), expr)

/* e NULL: a restore's look at the keystore it replaces (lmdb_peek_counters),
 * which goes on without what it could not read. */
static int lm_fault(ks_benv *e)
{
    if (!e)
        ks_log(KS_LOG_INFO, "the keystore being replaced is damaged (LMDB %s while reading it): the epochs and "
                            "generations the copy continues from are its key file's", ks_fault_what());
    else if (e->copy && !atomic_exchange(&e->fault_told, true))
        snprintf(e->copy_told, sizeof(e->copy_told), "LMDB %s while reading it", ks_fault_what());
    else if (!atomic_exchange(&e->fault_told, true))
        ks_log(KS_LOG_ERROR, "keystore %s is damaged: LMDB %s while reading its file; nothing was changed; check it "
                             "with 'p11mk-admin verify' and restore it from a backup ('p11mk-admin restore')",
               e->path, ks_fault_what());
    return LM_FAULT;
}

/* Calls fn for each mapping of (dev, ino) at offset 0 in /proc/self/maps;
 * false when /proc cannot be read. */
static bool each_map(dev_t dev, ino_t ino, void (*fn)(uintptr_t lo, void *arg), void *arg)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return false;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi, off, i;
        unsigned maj, mnr;
        if (sscanf(line, "%lx-%lx %*s %lx %x:%x %lu", &lo, &hi, &off, &maj, &mnr, &i) == 6 && off == 0 &&
            i == (unsigned long)ino && makedev(maj, mnr) == dev)
            fn((uintptr_t)lo, arg);
    }
    fclose(f);
    return true;
}

static void note_other(uintptr_t lo, void *arg)
{
    maps_other *mo = arg;
    if (mo->n < MAPS_OTHER)
        mo->at[mo->n++] = lo;
    else
        mo->overflow = true;
}

/* Before an environment on dir is opened: the data file's mappings there are. */
static void maps_before_open(const char *dir, maps_other *mo)
{
    char data[4200];
    struct stat sb;
    memset(mo, 0, sizeof(*mo));
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    if (stat(data, &sb) == 0)
        (void)each_map(sb.st_dev, sb.st_ino, note_other, mo);
}

typedef struct {
    const maps_other *other;
    uintptr_t found;
} map_find;

static void take_own(uintptr_t lo, void *arg)
{
    map_find *mf = arg;
    for (unsigned i = 0; i < mf->other->n; i++)
        if (mf->other->at[i] == lo)
            return;
    if (!mf->found)
        mf->found = lo;
}

/* Where LMDB mapped the data file of env: its inode's mapping at offset 0
 * in /proc/self/maps that no other environment made (LMDB does not say;
 * MDB_envinfo's address is the one recorded for MDB_FIXEDMAP). Taking the
 * first mapping of the inode took, in a fork child, the parent's: values
 * of the child's own map then looked outside the file. 0 when it cannot be
 * told. */
static uintptr_t map_base(MDB_env *env, const maps_other *other)
{
    int fd;
    struct stat sb;
    map_find mf = {other, 0};
    if (other->overflow || mdb_env_get_fd(env, &fd) != MDB_SUCCESS || fstat(fd, &sb) != 0 ||
        !each_map(sb.st_dev, sb.st_ino, take_own, &mf))
        return 0;
    return mf.found;
}

/* A value LMDB returned lies inside the file (its size and place come from
 * the page, which may be damaged): the caller reads it after the frame. A
 * pointer outside the map is a page of the write transaction's own memory
 * (writing); in a read transaction it is a damaged page's offset leading
 * past the map (into whatever memory follows it). */
static bool lm_in_file(MDB_env *env, uintptr_t lo, unsigned psize, MDB_val v, bool writing)
{
    MDB_envinfo ei;
    if (!lo)
        return true; /* the map's place unknown: not checked */
    if (mdb_env_info(env, &ei) != MDB_SUCCESS)
        return false;
    uintptr_t p = (uintptr_t)v.mv_data;
    if (p < lo || p - lo >= ei.me_mapsize)
        return writing;
    uint64_t end = ((uint64_t)ei.me_last_pgno + 1) * (psize ? psize : 4096);
    return p - lo <= end && v.mv_size <= end - (p - lo);
}

static void lm_assert(MDB_env *env, const char *msg)
{
    (void)env;
    ks_fault_assert(msg);
}

/* Reads a byte of every page of v: one past the file's end faults here. */
static void touch(MDB_val v, unsigned psize)
{
    const volatile unsigned char *p = v.mv_data;
    size_t step = psize ? psize : 4096;
    if (!p || !v.mv_size)
        return;
    for (size_t off = 0; off < v.mv_size; off += step)
        (void)p[off];
    (void)p[v.mv_size - 1];
}

/* mdb_get or mdb_cursor_get whose key and value are checked to lie inside
 * the file (writing: t is a write transaction, whose own pages are not). */
static int get_checked(MDB_txn *t, MDB_cursor *c, MDB_dbi dbi, MDB_val *k, MDB_val *v, MDB_cursor_op op,
                       uintptr_t lo, unsigned psize, bool writing)
{
    const void *given = k->mv_data; /* MDB_SET leaves the caller's key in place */
    int rc = c ? mdb_cursor_get(c, k, v, op) : mdb_get(t, dbi, k, v);
    if (rc == MDB_SUCCESS && (!lm_in_file(mdb_txn_env(t), lo, psize, *v, writing) ||
                              (c && k->mv_data != given && !lm_in_file(mdb_txn_env(t), lo, psize, *k, writing))))
        return MDB_CORRUPTED;
    if (rc == MDB_SUCCESS) { /* its pages read here, in the frame: a file cut short faults now, not in the caller */
        touch(*v, psize);
        if (c)
            touch(*k, psize);
    }
    return rc;
}

static int lmdb_err(int rc)
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
    case ETIMEDOUT: return KS_EBUSY; /* the writer gate, waited for as long as a master-key step may */
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID: return KS_EVERSION;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case LM_FAULT:
    case LM_DAMAGED:
    case LM_UNSEEN: return KS_ECORRUPT;
    default: return KS_EIO;
    }
}

/* A write's result: a full map restarts the transaction. */
static int wr_err(int rc)
{
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL)
        return KS_BE_RETRY;
    if (rc == MDB_KEYEXIST)
        return KS_EEXIST;
    return lmdb_err(rc);
}

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

/* The map's size (0: adopt another process's growth), under the resize lock. */
static int set_mapsize(ks_benv *e, size_t size)
{
    int rc = MDB_SUCCESS;
    MDB_envinfo ei;
    resize_lock(e);
    if (size) /* a growth: never below what another thread grew it to meanwhile */
        LM(e, rc, mdb_env_info(e->env, &ei));
    if (rc == MDB_SUCCESS && !(size && ei.me_mapsize >= size))
        LM(e, rc, mdb_env_set_mapsize(e->env, size));
    e->map_lo = map_base(e->env, &e->others); /* the map may have moved */
    resize_unlock(e);
    return rc;
}

/* Another process grew the map: adopt its size. */
static void adopt_resize(ks_benv *e)
{
    (void)set_mapsize(e, 0); /* a failure shows at the next transaction */
}

static int lmdb_make_room(ks_benv *e)
{
    MDB_envinfo info;
    int rc;
    resize_lock(e);
    LM(e, rc, mdb_env_info(e->env, &info));
    resize_unlock(e);
    uint64_t cur = rc == MDB_SUCCESS ? info.me_mapsize : 0;
    uint64_t step = cur < MAP_STEP_MAX ? cur : MAP_STEP_MAX;
    if (rc == MDB_SUCCESS)
        rc = set_mapsize(e, (size_t)(cur + step));
    if (rc != MDB_SUCCESS) {
        ks_log(KS_LOG_ERROR, "keystore %s: cannot grow the map to %llu bytes: %s", e->path,
               (unsigned long long)(cur + step), rc == LM_FAULT ? "the file is damaged" : mdb_strerror(rc));
        return KS_EIO;
    }
    ks_log(KS_LOG_DEBUG, "keystore %s: map grown to %llu bytes", e->path, (unsigned long long)(cur + step));
    return KS_OK;
}

/* The newer of the two meta pages' transaction ids, as LMDB picks it
 * (mdb_env_pick_meta); 0 if they kept changing while read (LMDB writes a
 * meta page with a pwrite, which a map reader can see half done: two
 * readings must agree). */
static int metas_txnid(const volatile uint8_t *m, unsigned psize, uint64_t *out)
{
    const volatile uint64_t *a = (const volatile uint64_t *)(m + LP_META_TXNID);
    const volatile uint64_t *b = (const volatile uint64_t *)(m + psize + LP_META_TXNID);
    *out = 0;
    for (int tries = 0; tries < 100; tries++) {
        uint64_t a1 = *a, b1 = *b, a2 = *a, b2 = *b;
        if (a1 == a2 && b1 == b2) {
            *out = a1 > b1 ? a1 : b1;
            break;
        }
    }
    return MDB_SUCCESS;
}

/* LMDB's last committed transaction id, from the newer of the two meta pages:
 * every commit (ours or another process's) writes it last, after the data
 * it commits. Read through the meta pages' own mapping (fixed: no lock), in
 * a fault frame (a file cut short under it faults); without that mapping,
 * from LMDB's map under the resize lock, which adopt_resize may replace. */
static uint64_t lmdb_commit_seq(ks_benv *e)
{
    uint64_t id = 0;
    int rc;
    if (__builtin_expect(e->metas != NULL, 1)) {
        LM(e, rc, metas_txnid(e->metas, e->psize, &id));
        return rc == MDB_SUCCESS ? id : 0;
    }
    MDB_envinfo info;
    pthread_rwlock_rdlock(&e->resize);
    LM(e, rc, mdb_env_info(e->env, &info));
    pthread_rwlock_unlock(&e->resize);
    return rc == MDB_SUCCESS ? (uint64_t)info.me_last_txnid : 0;
}

static uint64_t lmdb_size(ks_benv *e)
{
    MDB_envinfo ei;
    int rc;
    LM(e, rc, mdb_env_info(e->env, &ei));
    return rc == MDB_SUCCESS ? ei.me_mapsize : 0;
}

/* ---- transactions -------------------------------------------------------- */

/* Does the file hold every page its newest meta page names? Asked when the
 * keystore is opened: a file cut short is refused then, with what it lacks. */
static int file_whole(ks_benv *e)
{
    int fd, rc;
    struct stat sb;
    MDB_envinfo ei;
    if (mdb_env_get_fd(e->env, &fd) != MDB_SUCCESS || fd < 0 || fstat(fd, &sb) != 0)
        return MDB_SUCCESS; /* cannot tell: LMDB will say */
    uint64_t size = (uint64_t)sb.st_size, need = 2ull * e->psize;
    if (size >= need) {
        LM(e, rc, mdb_env_info(e->env, &ei));
        if (rc != MDB_SUCCESS)
            return rc;
        need = ((uint64_t)ei.me_last_pgno + 1) * e->psize;
    }
    if (size >= need)
        return MDB_SUCCESS;
    if (atomic_exchange(&e->fault_told, true))
        return LM_FAULT;
    if (e->copy)
        snprintf(e->copy_told, sizeof(e->copy_told), "it was cut short: %llu bytes where its own header names %llu",
                 (unsigned long long)size, (unsigned long long)need);
    else
        ks_log(KS_LOG_ERROR, "keystore %s is damaged: its data.mdb holds %llu bytes, its own header names %llu; it was "
                             "cut short; nothing was changed: restore it from a backup ('p11mk-admin restore')",
               e->path, (unsigned long long)size, (unsigned long long)need);
    return LM_FAULT;
}

/* Reads a byte of each meta page. The start of a transaction takes the
 * writer's lock or a reader slot and then reads the meta pages: a fault
 * there would leave the lock held or the slot taken (ks_fault.h), so a file
 * cut short since it was opened faults here first, in a frame of its own,
 * holding nothing. */
static int metas_there(ks_benv *e)
{
    const volatile unsigned char *m = (const volatile unsigned char *)e->map_lo;
    if (!m)
        return MDB_SUCCESS;
    (void)m[0];
    (void)m[e->psize + e->psize - 1];
    return MDB_SUCCESS;
}

static bool pages_view(MDB_txn *t, lp_view *pv);
static int pages_told(ks_benv *e, int rc, const lp_view *pv);
static int txn_abort(MDB_txn *t);

/* Is t the write transaction under way? (Set once its pages were checked,
 * cleared before it ends; a read transaction is never it.) */
static bool is_writer(ks_benv *e, MDB_txn *t) { return atomic_load_explicit(&e->writer, memory_order_relaxed) == t; }

/* Was t the write transaction under way? It is no longer. */
static bool writer_ends(ks_benv *e, MDB_txn *t)
{
    MDB_txn *w = t;
    return atomic_compare_exchange_strong(&e->writer, &w, NULL);
}

/* In a frame: the tables every commit rewrites, before a write begins. */
static int pages_of_system(MDB_txn *t, lp_view *pv)
{
    memset(E(t)->page_memo, 0, sizeof(E(t)->page_memo)); /* a new write transaction: nothing checked yet */
    if (!pages_view(t, pv))
        return pv->why ? LM_DAMAGED : MDB_SUCCESS;
    return lp_check_system(pv) ? MDB_SUCCESS : LM_DAMAGED;
}

/* A write transaction just begun: its system tables checked, or it ends. */
static int write_start(ks_benv *e, MDB_txn *t)
{
    lp_view pv;
    int rc, arc;
    LM(e, rc, pages_of_system(t, &pv));
    if (pages_told(e, rc, &pv) != MDB_SUCCESS) {
        LM(e, arc, txn_abort(t));
        (void)arc;
    } else {
        atomic_store(&e->writer, t);
    }
    return rc;
}

/* ---- the writer gate (top of this file) ---------------------------------- */

static void gate_setup(ks_benv *e, bool rdonly)
{
    char p[4096];
    e->gate = -1;
    if (sem_init(&e->gate_sem, 0, 1) != 0)
        return;
    e->gate_ready = true;
    if (rdonly)
        return;
    snprintf(p, sizeof(p), "%s/data.mdb", e->path);
    int fd = open(p, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (e->gate = ks_forkfd_keep(fd)) >= 0)
        return;
    if (fd >= 0)
        close(fd);
    ks_log(KS_LOG_WARN, "keystore %s: no writer gate (%s): a writer killed while others wait may leave them "
                        "waiting until the next write", e->path, fd < 0 ? strerror(errno) : "too many keystores open");
}

static int gate_lock(int fd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = GATE_AT, .l_len = 1};
    while (fcntl(fd, type == F_UNLCK ? F_OFD_SETLK : F_OFD_SETLKW, &fl) != 0)
        if (errno != EINTR)
            return errno;
    return 0;
}

/* Wait for the gate (MDB_SUCCESS), or an errno. */
static int gate_take(ks_benv *e)
{
    if (e->gate < 0)
        return MDB_SUCCESS;
    const ks_gate_bound *b = ks_gate_bound_here; /* a master-key step's thread: a bounded wait (ks_gatewait.c) */
    while (sem_wait(&e->gate_sem) != 0)
        if (errno != EINTR)
            return errno;
    int fd = ks_forkfd_get(e->gate), rc;
    if (fd < 0) {
        rc = EBADF;
    } else if (b) {
        rc = ks_gate_lock_bounded(fd, GATE_AT, b, e->path);
    } else {
        ks_gate_orphans_wait(0); /* a step's wait given up on, in this process: never in an application */
        rc = gate_lock(fd, F_WRLCK);
    }
    if (rc != 0) {
        if (rc != ETIMEDOUT) /* logged where it was given up on */
            ks_log(KS_LOG_ERROR, "keystore %s: cannot take the writer gate: %s", e->path, strerror(rc));
        sem_post(&e->gate_sem);
    }
    return rc;
}

static void gate_give(ks_benv *e)
{
    if (e->gate < 0)
        return;
    int fd = ks_forkfd_get(e->gate);
    if (fd >= 0 && gate_lock(fd, F_UNLCK) != 0) /* cannot fail on a lock held (locks_remove: no allocation) */
        ks_log(KS_LOG_ERROR, "keystore %s: cannot let the writer gate go: %s", e->path, strerror(errno));
    sem_post(&e->gate_sem);
}

static int txn_begin1(ks_benv *e, unsigned flags, MDB_txn **t)
{
    int rc;
    LM(e, rc, metas_there(e));
    if (rc == MDB_SUCCESS)
        LM(e, rc, mdb_txn_begin(e->env, NULL, flags, t));
    return rc == MDB_SUCCESS && !(flags & MDB_RDONLY) ? write_start(e, *t) : rc;
}

/* Begin an LMDB transaction with the resize lock held (read side). */
static int txn_begin(ks_benv *e, unsigned flags, ks_btxn **out)
{
    MDB_txn *t;
    bool write = !(flags & MDB_RDONLY);
    int grc = write ? gate_take(e) : MDB_SUCCESS;
    if (grc != MDB_SUCCESS)
        return lmdb_err(grc);
    for (int attempt = 0; attempt < 8; attempt++) {
        pthread_rwlock_rdlock(&e->resize);
        int rc = txn_begin1(e, flags, &t);
        if (rc == MDB_SUCCESS) {
            *out = (ks_btxn *)t;
            return KS_OK;
        }
        pthread_rwlock_unlock(&e->resize);
        if (rc == MDB_MAP_RESIZED) {
            adopt_resize(e);
            continue;
        }
        if (rc == MDB_READERS_FULL) {
            int dead = 0, crc;
            LM(e, crc, mdb_reader_check(e->env, &dead));
            if (crc == MDB_SUCCESS && dead > 0)
                continue;
        }
        if (rc != LM_FAULT && rc != LM_DAMAGED)
            ks_log(KS_LOG_ERROR, "keystore %s: cannot begin a transaction: %s", e->path, mdb_strerror(rc));
        if (write)
            gate_give(e);
        return lmdb_err(rc);
    }
    if (write)
        gate_give(e);
    return KS_EIO;
}

static int lmdb_read_begin(ks_benv *e, ks_btxn **t) { return txn_begin(e, MDB_RDONLY, t); }

static int lmdb_write_begin(ks_benv *e, ks_btxn **t) { return txn_begin(e, 0, t); }

/* A read transaction's id is the last committed write's, the number
 * lmdb_commit_seq reads once the commit is published: the same id, the same data. */
static uint64_t lmdb_snapshot(ks_btxn *t) { return mdb_txn_id(T(t)); }

/* mdb_txn_abort as a function, to run in a frame (it walks no page; the
 * reader slot it clears is in the lock file's map). */
static int txn_abort(MDB_txn *t)
{
    mdb_txn_abort(t);
    return MDB_SUCCESS;
}

static void lmdb_abort(ks_btxn *t)
{
    ks_benv *e = E(T(t));
    int rc;
    bool wrote = writer_ends(e, T(t));
    LM(e, rc, txn_abort(T(t)));
    (void)rc;
    pthread_rwlock_unlock(&e->resize);
    if (wrote)
        gate_give(e);
}

static void lmdb_read_end(ks_btxn *t) { lmdb_abort(t); }

/* Regular files write short only when space runs out. */
static bool fs_nearly_full(const char *dir)
{
    struct statvfs vs;
    return statvfs(dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < (1u << 20);
}

static int lmdb_commit(ks_btxn *t)
{
    ks_benv *e = E(T(t));
    int rc;
    bool wrote = writer_ends(e, T(t));
    LM(e, rc, mdb_txn_commit(T(t)));
    if (rc == LM_FAULT) { /* left in the middle: the writer's lock is released by the abort */
        int arc;
        LM(e, arc, txn_abort(T(t)));
        (void)arc;
    }
    pthread_rwlock_unlock(&e->resize);
    if (wrote)
        gate_give(e);
    if (rc == MDB_MAP_FULL)
        return KS_BE_RETRY;
    rc = lmdb_err(rc);
    if (rc == KS_EIO && fs_nearly_full(e->path))
        rc = KS_ENOSPC; /* LMDB reports a short write as EIO: the file system ran out */
    return rc;
}

/* ---- records ------------------------------------------------------------- */

static int lmdb_get(ks_btxn *t, ks_table tab, const void *k, size_t kl, ks_bval *v)
{
    MDB_val mk = V(k, kl), mv;
    ks_benv *e = E(T(t));
    int rc;
    LM(e, rc, get_checked(T(t), NULL, e->dbi[tab], &mk, &mv, MDB_SET, e->map_lo, e->psize, is_writer(e, T(t))));
    if (rc != MDB_SUCCESS)
        return lmdb_err(rc);
    *v = B(mv);
    return KS_OK;
}

/* ---- pages checked before a write (ks_lmdb_pages.h) ----------------------- */

static const char *const tab_name[KS_TAB_N] = {"meta", "tokens", "objects", "index"};

/* The committed pages write transaction t began from; false with pv->why
 * NULL when they cannot be read (the map's place unknown: not checked). */
static bool pages_view(MDB_txn *t, lp_view *pv)
{
    ks_benv *e = E(t);
    MDB_envinfo ei;
    memset(pv, 0, sizeof(*pv));
    if (!e->map_lo || mdb_env_info(e->env, &ei) != MDB_SUCCESS)
        return false;
    if (!lp_view_init(pv, (const void *)e->map_lo, ei.me_mapsize, e->psize, (uint64_t)mdb_txn_id(t), false))
        return false;
    pv->memo = e->page_memo;
    pv->memo_mask = sizeof(e->page_memo) / sizeof(e->page_memo[0]) - 1;
    return true;
}

/* In a frame: the pages a write of k (with d, for the index: that value, or
 * NULL for all of k's) in tab will have LMDB copy. */
static int pages_for_key(MDB_txn *t, ks_table tab, lp_view *pv, const MDB_val *k, const MDB_val *d, bool del)
{
    if (!pages_view(t, pv))
        return pv->why ? LM_DAMAGED : MDB_SUCCESS;
    return lp_check_key(pv, tab_name[tab], tab == KS_TAB_INDEX, k->mv_data, k->mv_size, d ? d->mv_data : NULL,
                        d ? d->mv_size : 0, del)
               ? MDB_SUCCESS
               : LM_DAMAGED;
}

/* After the frame: a damaged page is logged once, with where and what. */
static int pages_told(ks_benv *e, int rc, const lp_view *pv)
{
    if (rc == LM_DAMAGED && !atomic_exchange(&e->fault_told, true)) {
        if (e->copy) /* not the keystore: the restore or export that made the copy says it, and what to do */
            snprintf(e->copy_told, sizeof(e->copy_told), "its page %llu holds %s", (unsigned long long)pv->bad_pgno,
                     pv->why ? pv->why : "what LMDB never writes");
        else
            ks_log(KS_LOG_ERROR, "keystore %s is damaged: page %llu of data.mdb holds %s; nothing was written; check "
                                 "it with 'p11mk-admin verify' and restore it from a backup ('p11mk-admin restore')",
                   e->path, (unsigned long long)pv->bad_pgno, pv->why ? pv->why : "what LMDB never writes");
    }
    return rc;
}

/* Writes go through a cursor of the write transaction's own (mdb_cursor_open:
 * on the heap, in the transaction's list, freed by its abort), not mdb_put
 * and mdb_del, which put a cursor on their stack into that list while they
 * run: left there by a fault, the abort would free a stack address. (Page
 * splits and merges still do so for a moment: see the README.) */
static int put_via(MDB_txn *t, ks_table tab, lp_view *pv, MDB_val *k, MDB_val *v, unsigned flags)
{
    MDB_cursor *c;
    int rc = pages_for_key(t, tab, pv, k, tab == KS_TAB_INDEX ? v : NULL, false);
    if (rc != MDB_SUCCESS || (rc = mdb_cursor_open(t, D(t, tab), &c)) != MDB_SUCCESS)
        return rc;
    rc = mdb_cursor_put(c, k, v, flags);
    mdb_cursor_close(c);
    return rc;
}

/* Deletes key (every value of it in a table of duplicates), or with v the
 * pair k, v of a table of duplicates; MDB_NOTFOUND when absent. */
static int del_via(MDB_txn *t, ks_table tab, lp_view *pv, MDB_val *k, MDB_val *v)
{
    MDB_cursor *c;
    bool dups = tab == KS_TAB_INDEX;
    MDB_val dv = v ? *v : (MDB_val){0, NULL};
    int rc = pages_for_key(t, tab, pv, k, dups ? v : NULL, true);
    if (rc != MDB_SUCCESS || (rc = mdb_cursor_open(t, D(t, tab), &c)) != MDB_SUCCESS)
        return rc;
    rc = mdb_cursor_get(c, k, &dv, v && dups ? MDB_GET_BOTH : MDB_SET);
    if (rc == MDB_SUCCESS)
        rc = mdb_cursor_del(c, dups && !v ? MDB_NODUPDATA : 0);
    mdb_cursor_close(c);
    return rc;
}

static int lmdb_put(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    MDB_val mk = V(k, kl), mv = V(v, vl);
    lp_view pv;
    int rc;
    LM(E(T(t)), rc, put_via(T(t), tab, &pv, &mk, &mv, 0));
    return wr_err(pages_told(E(T(t)), rc, &pv));
}

static int lmdb_del(ks_btxn *t, ks_table tab, const void *k, size_t kl)
{
    MDB_val mk = V(k, kl);
    lp_view pv;
    int rc;
    LM(E(T(t)), rc, del_via(T(t), tab, &pv, &mk, NULL));
    return wr_err(pages_told(E(T(t)), rc, &pv));
}

/* Deletes the entries whose key begins with prefix; the cursor is the
 * write transaction's (closed with it, also when a fault leaves this). */
static int del_prefix(MDB_txn *t, ks_table tab, lp_view *pv, const void *prefix, size_t pl)
{
    MDB_cursor *c;
    bool dups = tab == KS_TAB_INDEX;
    int rc;
    if ((rc = mdb_cursor_open(t, D(t, tab), &c)) != MDB_SUCCESS)
        return rc;
    MDB_val k, v, p = V(prefix, pl);
    /* The search for the prefix is checked before it runs, not only the key
     * it finds: a damaged page on the prefix's path (a pointer array longer
     * than the page) sent the search into other bytes. A key of another
     * table found there has a sound path of its own: the delete then copied
     * the damaged page into LMDB's heap (one page's mp_lower edited, a
     * token's records deleted: glibc's "free(): invalid size"); a key
     * without the prefix ended the deletion, reported done with nothing
     * deleted. test_keystore test_damaged_walks_refuse_writes. */
    for (;;) {
        if ((rc = pages_for_key(t, tab, pv, &p, NULL, true)) != MDB_SUCCESS)
            break;
        k = p;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc != MDB_SUCCESS || k.mv_size < pl || memcmp(k.mv_data, prefix, pl) != 0)
            break;
        /* the key is in the map or this transaction's pages: read before the delete frees it */
        if ((rc = pages_for_key(t, tab, pv, &k, NULL, true)) != MDB_SUCCESS ||
            (rc = mdb_cursor_del(c, dups ? MDB_NODUPDATA : 0)) != MDB_SUCCESS)
            break;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? MDB_SUCCESS : rc;
}

/* Empties tab: LMDB reads and frees every page of it, all checked first. */
static int drop_all(MDB_txn *t, ks_table tab, lp_view *pv)
{
    if (!pages_view(t, pv)) {
        if (pv->why)
            return LM_DAMAGED;
    } else if (!lp_check_table(pv, tab_name[tab], tab == KS_TAB_INDEX)) {
        return LM_DAMAGED;
    }
    return mdb_drop(t, D(t, tab), 0);
}

static int lmdb_del_prefix(ks_btxn *t, ks_table tab, const void *prefix, size_t pl)
{
    lp_view pv;
    int rc;
    if (pl == 0) /* every entry */
        LM(E(T(t)), rc, drop_all(T(t), tab, &pv));
    else
        LM(E(T(t)), rc, del_prefix(T(t), tab, &pv, prefix, pl));
    return wr_err(pages_told(E(T(t)), rc, &pv));
}

static int lmdb_count(ks_btxn *t, ks_table tab, uint64_t *n)
{
    MDB_stat ms;
    int rc;
    LM(E(T(t)), rc, mdb_stat(T(t), D(T(t), tab), &ms));
    *n = rc == MDB_SUCCESS ? ms.ms_entries : 0;
    return lmdb_err(rc);
}

/* ---- the index ------------------------------------------------------------- */

static int lmdb_dup_add(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    MDB_val mk = V(k, kl), mv = V(v, vl);
    lp_view pv;
    int rc;
    LM(E(T(t)), rc, put_via(T(t), tab, &pv, &mk, &mv, MDB_NODUPDATA));
    return wr_err(pages_told(E(T(t)), rc, &pv));
}

static int lmdb_dup_del(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    MDB_val mk = V(k, kl), mv = V(v, vl);
    lp_view pv;
    int rc;
    LM(E(T(t)), rc, del_via(T(t), tab, &pv, &mk, &mv));
    return wr_err(pages_told(E(T(t)), rc, &pv));
}

/* Is the exact entry there: O(log n), however many share the key. */
static int dup_has(MDB_txn *t, MDB_dbi dbi, MDB_val *k, MDB_val *v)
{
    MDB_cursor *c;
    int rc;
    if ((rc = mdb_cursor_open(t, dbi, &c)) != MDB_SUCCESS)
        return rc;
    rc = mdb_cursor_get(c, k, v, MDB_GET_BOTH);
    mdb_cursor_close(c);
    return rc;
}

static int lmdb_dup_has(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    MDB_val mk = V(k, kl), mv = V(v, vl);
    int rc;
    LM(E(T(t)), rc, dup_has(T(t), D(T(t), tab), &mk, &mv));
    return lmdb_err(rc);
}

/* ---- cursors ------------------------------------------------------------- */

static int lmdb_cur_open(ks_btxn *t, ks_table tab, ks_bcur **c)
{
    MDB_cursor *mc;
    int rc;
    LM(E(T(t)), rc, mdb_cursor_open(T(t), D(T(t), tab), &mc));
    if (rc != MDB_SUCCESS)
        return lmdb_err(rc);
    *c = (ks_bcur *)mc;
    return KS_OK;
}

static int lmdb_cur_seek(ks_bcur *c, int how, const void *k, size_t kl, ks_bval *key, ks_bval *val)
{
    static const MDB_cursor_op ops[] = {[KS_BSEEK_FIRST] = MDB_FIRST, [KS_BSEEK_LAST] = MDB_LAST,
                                        [KS_BSEEK_GE] = MDB_SET_RANGE, [KS_BSEEK_KEY] = MDB_SET};
    MDB_val mk = V(k, kl), mv;
    MDB_txn *t = mdb_cursor_txn(C(c));
    ks_benv *e = E(t);
    int rc;
    LM(e, rc, get_checked(t, C(c), 0, &mk, &mv, ops[how], e->map_lo, e->psize, is_writer(e, t)));
    if (rc != MDB_SUCCESS)
        return lmdb_err(rc);
    *key = B(mk); /* MDB_SET leaves the key given */
    *val = B(mv);
    return KS_OK;
}

static int lmdb_cur_next(ks_bcur *c, bool same_key, ks_bval *key, ks_bval *val)
{
    MDB_val mk, mv;
    MDB_txn *t = mdb_cursor_txn(C(c));
    ks_benv *e = E(t);
    int rc;
    LM(e, rc,
       get_checked(t, C(c), 0, &mk, &mv, same_key ? MDB_NEXT_DUP : MDB_NEXT, e->map_lo, e->psize, is_writer(e, t)));
    if (rc != MDB_SUCCESS)
        return lmdb_err(rc);
    *key = B(mk);
    *val = B(mv);
    return KS_OK;
}

/* The table a cursor walks. */
static ks_table cursor_tab(MDB_cursor *c)
{
    ks_benv *e = E(mdb_cursor_txn(c));
    MDB_dbi dbi = mdb_cursor_dbi(c);
    for (int i = 0; i < KS_TAB_N; i++)
        if (e->dbi[i] == dbi)
            return (ks_table)i;
    return KS_TAB_N;
}

static int replace_at(MDB_cursor *c, lp_view *pv, MDB_val *k, MDB_val *v)
{
    ks_table tab = cursor_tab(c);
    int rc = tab == KS_TAB_N ? EINVAL
                             : pages_for_key(mdb_cursor_txn(c), tab, pv, k, tab == KS_TAB_INDEX ? v : NULL, false);
    return rc == MDB_SUCCESS ? mdb_cursor_put(c, k, v, MDB_CURRENT) : rc;
}

static int lmdb_cur_replace(ks_bcur *c, const void *k, size_t kl, const void *v, size_t vl)
{
    /* k is most often the key this cursor returned, in its leaf. LMDB
     * replaces a value that changes size or lies on overflow pages by
     * deleting the node and adding it again with the key it is given: in a
     * leaf already copied in this transaction, the delete moves the nodes
     * under k, and the record went in under a neighbour's bytes. */
    uint8_t kb[511]; /* LMDB's largest key */
    if (kl > sizeof(kb))
        return KS_EINVAL;
    memcpy(kb, k, kl);
    MDB_val mk = V(kb, kl), mv = V(v, vl);
    lp_view pv;
    int rc;
    LM(E(mdb_cursor_txn(C(c))), rc, replace_at(C(c), &pv, &mk, &mv));
    return wr_err(pages_told(E(mdb_cursor_txn(C(c))), rc, &pv));
}

static void lmdb_cur_close(ks_bcur *c) { mdb_cursor_close(C(c)); }

/* In a frame: every table of read snapshot t, whole; with bitmaps live and
 * freed of cap pages (zeroed) given, when the snapshot has no more pages,
 * also what the free-page lists name (lp_check_free_unused). */
static int pages_all(MDB_txn *t, lp_view *pv, uint64_t *live, uint64_t *freed, uint64_t cap)
{
    ks_benv *e = E(t);
    MDB_envinfo ei;
    memset(pv, 0, sizeof(*pv));
    if (!e->map_lo || mdb_env_info(e->env, &ei) != MDB_SUCCESS)
        return MDB_SUCCESS; /* the map's place unknown (logged at open) */
    /* the snapshot's meta page: the one a write beginning now would start from */
    if (!lp_view_init(pv, (const void *)e->map_lo, ei.me_mapsize, e->psize, (uint64_t)mdb_txn_id(t) + 1, true))
        return pv->moved ? LM_MOVED : LM_DAMAGED;
    if (live && freed && pv->npages <= cap) {
        pv->live = live;
        pv->freed = freed;
    }
    if (!lp_check_system(pv))
        return pv->unseen ? LM_UNSEEN : LM_DAMAGED;
    for (int i = 0; i < KS_TAB_N; i++)
        if (!lp_check_table(pv, tab_name[i], i == KS_TAB_INDEX))
            return pv->unseen ? LM_UNSEEN : LM_DAMAGED;
    return lp_check_free_unused(pv) ? MDB_SUCCESS : LM_UNSEEN;
}

static int pages_framed(ks_btxn *bt, lp_view *pv, uint64_t *live, uint64_t *freed, uint64_t cap)
{
    int rc;
    LM(E(T(bt)), rc, pages_all(T(bt), pv, live, freed, cap));
    return rc;
}

/* Every page of the file (verify; free_lists: also what the free-page lists
 * name, which a backup does not copy). */
static int check_pages(ks_benv *e, bool free_lists, char *why, size_t n)
{
    ks_btxn *bt;
    lp_view pv;
    uint64_t words = 0, *live = NULL, *freed = NULL;
    int rc = txn_begin(e, MDB_RDONLY, &bt);
    if (rc != KS_OK)
        return rc;
    if (free_lists && e->psize) { /* a bit per page of the file as it is now (the snapshot's are no more) */
        struct stat sb;
        int fd;
        if (mdb_env_get_fd(e->env, &fd) == MDB_SUCCESS && fstat(fd, &sb) == 0 && sb.st_size > 0)
            words = ((uint64_t)sb.st_size / e->psize + 64) / 64;
        live = words ? calloc(words, sizeof(uint64_t)) : NULL;
        freed = words ? calloc(words, sizeof(uint64_t)) : NULL;
    }
    rc = pages_framed(bt, &pv, live, freed, words * 64);
    lmdb_read_end(bt);
    /* A reader held up while commits ran: a new snapshot, its meta page
     * read at once (a few tries; then the keystore is said to be busy). */
    for (int tries = 0; rc == LM_MOVED && tries < 20; tries++) {
        if (live)
            memset(live, 0, words * sizeof(uint64_t));
        if (freed)
            memset(freed, 0, words * sizeof(uint64_t));
        int brc = txn_begin(e, MDB_RDONLY, &bt);
        if (brc != KS_OK) {
            free(live);
            free(freed);
            return brc;
        }
        rc = pages_framed(bt, &pv, live, freed, words * 64);
        lmdb_read_end(bt);
    }
    free(live);
    free(freed);
    if (e->copy && (rc == LM_DAMAGED || rc == LM_UNSEEN)) /* its caller names the file and what to do */
        snprintf(why, n, "its page %llu holds %s", (unsigned long long)pv.bad_pgno, pv.why);
    else if (e->copy && rc == LM_FAULT)
        snprintf(why, n, "LMDB %s while reading it", ks_fault_what());
    else if (rc == LM_DAMAGED)
        snprintf(why, n, "data.mdb is damaged: its page %llu holds %s, which LMDB never writes (writes are "
                 "refused); restore the keystore from a backup", (unsigned long long)pv.bad_pgno, pv.why);
    else if (rc == LM_UNSEEN)
        snprintf(why, n, "data.mdb is damaged: page %llu is %s; writes are not refused (a write cannot see it): "
                 "stop the applications and restore the keystore from a backup made before the damage",
                 (unsigned long long)pv.bad_pgno, pv.why);
    else if (rc == LM_FAULT)
        snprintf(why, n, "data.mdb is damaged: reading its pages, LMDB %s; restore the keystore from a backup",
                 ks_fault_what());
    else if (rc == LM_MOVED)
        snprintf(why, n, "the keystore changed faster than its pages could be read (each snapshot's meta page was "
                 "rewritten before it was read); run it again");
    return rc == LM_MOVED ? KS_EBUSY : lmdb_err(rc);
}

static int lmdb_check_pages(ks_benv *e, char *why, size_t n) { return check_pages(e, true, why, n); }

/* ---- opening ------------------------------------------------------------- */

static int lmdb_check_location(const char *dir, ks_err *err)
{
    static const char *const lmdb_files[] = {"data.mdb", "lock.mdb"};
    for (int i = 0; i < 2; i++) {
        char p[4200];
        struct stat fsb;
        snprintf(p, sizeof(p), "%s/%s", dir, lmdb_files[i]);
        if (lstat(p, &fsb) == 0 && !S_ISREG(fsb.st_mode)) {
            ks_err_set(err, "%s is not a regular file (a link or something else was put there); nothing was "
                            "opened: remove it (lock.mdb is recreated; data.mdb: restore it from a backup)", p);
            return KS_ECORRUPT;
        }
    }
    return KS_OK;
}

static int open_dbs(ks_benv *e, MDB_txn *t, unsigned flags)
{
    int rc;
    if ((rc = mdb_dbi_open(t, "meta", flags, &e->dbi[KS_TAB_META])) ||
        (rc = mdb_dbi_open(t, "tokens", flags, &e->dbi[KS_TAB_TOKENS])) ||
        (rc = mdb_dbi_open(t, "objects", flags, &e->dbi[KS_TAB_OBJECTS])) ||
        (rc = mdb_dbi_open(t, "index", flags | MDB_DUPSORT | MDB_DUPFIXED, &e->dbi[KS_TAB_INDEX])))
        return rc;
    return MDB_SUCCESS;
}

/* LMDB's reader table, as mdb_reader_list prints it: "pid thread txnid"
 * per slot in use, the txnid "-" for a slot whose thread is between
 * transactions. (In a fault frame: no allocation, no lock.) */
typedef struct {
    unsigned active;
    uint64_t oldest;
    long pid;
} readers_acc;

static int reader_line(const char *msg, void *ctx)
{
    readers_acc *a = ctx;
    long pid;
    unsigned long long thread, txn;
    char tx[32];
    if (sscanf(msg, "%ld %llx %31s", &pid, &thread, tx) == 3 && tx[0] != '-' && sscanf(tx, "%llu", &txn) == 1) {
        if (!a->active || txn < a->oldest) {
            a->oldest = txn;
            a->pid = pid;
        }
        a->active++;
    }
    return 0;
}

static int readers_walk(ks_benv *e, readers_acc *a)
{
    return mdb_reader_list(e->env, reader_line, a) < 0 ? EIO : MDB_SUCCESS;
}

static int lmdb_readers(ks_benv *e, unsigned *active, uint64_t *oldest_seq, long *oldest_pid)
{
    readers_acc a = {0, 0, 0};
    int rc;
    LM(e, rc, readers_walk(e, &a));
    if (rc != MDB_SUCCESS)
        return rc == LM_FAULT ? KS_ECORRUPT : KS_EIO;
    *active = a.active;
    *oldest_seq = a.oldest; /* a read transaction's id: the last commit it sees (lmdb_snapshot) */
    *oldest_pid = a.pid;
    return KS_OK;
}

static const char *lmdb_copy_damage(ks_benv *e)
{
    return e->copy && atomic_load(&e->fault_told) && e->copy_told[0] ? e->copy_told : NULL;
}

static int lmdb_create_tables(ks_btxn *t) { return wr_err(open_dbs(E(T(t)), T(t), MDB_CREATE)); }

static void lmdb_close(ks_benv *e)
{
    if (!e)
        return;
    if (e->env)
        mdb_env_close(e->env);
    if (e->gate_ready) {
        ks_forkfd_close(e->gate);
        sem_destroy(&e->gate_sem);
    }
    if (e->metas)
        munmap((void *)e->metas, 2 * (size_t)e->psize);
    pthread_rwlock_destroy(&e->resize);
    free(e->path);
    free(e);
}

/* The two meta pages mapped apart (read-only, shared: LMDB's writes reach
 * it through the page cache), for lmdb_commit_seq. Without it (mmap
 * refused), commit_seq reads LMDB's map under the resize lock. */
static void metas_map(ks_benv *e)
{
    int fd;
    if (mdb_env_get_fd(e->env, &fd) != MDB_SUCCESS || fd < 0 || !e->psize)
        return;
    void *m = mmap(NULL, 2 * (size_t)e->psize, PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED)
        e->metas = m;
}

static int env_open(ks_benv *e, unsigned flags, bool *rdonly, ks_err *err)
{
    int rc;
    unsigned mflags = MDB_NOTLS;

    ks_fault_arm();
    for (int pass = 0; pass < 2; pass++) {
        if ((rc = mdb_env_create(&e->env)) != MDB_SUCCESS)
            break;
        mdb_env_set_assert(e->env, lm_assert);
        mdb_env_set_maxdbs(e->env, 8);
        mdb_env_set_maxreaders(e->env, MAX_READERS);
        mdb_env_set_mapsize(e->env, (size_t)map_init_size());
        maps_before_open(e->path, &e->others);
        LM(e, rc, mdb_env_open(e->env, e->path, mflags | (*rdonly ? MDB_RDONLY : 0), 0600));
        if (rc == MDB_SUCCESS)
            break;
        mdb_env_close(e->env);
        e->env = NULL;
        /* A directory we may read but not write: serve it read-only. */
        if (pass == 0 && !*rdonly && (rc == EACCES || rc == EROFS) && !(flags & KS_OPEN_CREATE)) {
            *rdonly = true;
            continue;
        }
        if (pass == 0 && !*rdonly && (rc == EACCES || rc == EROFS) && (flags & KS_OPEN_CREATE) &&
            access(e->path, W_OK) != 0) {
            char data[4096];
            snprintf(data, sizeof(data), "%s/data.mdb", e->path);
            if (access(data, R_OK) == 0) {
                *rdonly = true;
                continue;
            }
        }
        break;
    }
    if (rc != MDB_SUCCESS) {
        if (e->copy) /* its caller names the file it came from */
            ks_err_set(err, "LMDB cannot open it: %s", rc == LM_FAULT ? ks_fault_what() : mdb_strerror(rc));
        else if (rc == LM_FAULT)
            ks_err_set(err, "keystore %s is damaged: LMDB %s while opening it; restore it from a backup", e->path,
                       ks_fault_what());
        else if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
            ks_err_set(err, "keystore %s is damaged: its data.mdb is not an LMDB file LMDB can open (%s); nothing was "
                            "changed: restore it from a backup ('p11mk-admin restore')", e->path, mdb_strerror(rc));
        else
            ks_err_set(err, "cannot open keystore %s: %s; check that the directory exists and that this user may "
                            "read and write it", e->path, mdb_strerror(rc));
        return lmdb_err(rc);
    }
    MDB_stat st;
    LM(e, rc, mdb_env_stat(e->env, &st));
    if (rc != MDB_SUCCESS) {
        if (e->copy)
            ks_err_set(err, "LMDB %s while reading it", rc == LM_FAULT ? ks_fault_what() : mdb_strerror(rc));
        else
            ks_err_set(err, "keystore %s is damaged: %s; restore it from a backup", e->path,
                       rc == LM_FAULT ? ks_fault_what() : mdb_strerror(rc));
        return KS_ECORRUPT;
    }
    e->psize = st.ms_psize;
    e->map_lo = map_base(e->env, &e->others);
    if (!e->map_lo)
        ks_log(KS_LOG_WARN, "keystore %s: its map is not in /proc/self/maps (is /proc mounted?): values LMDB returns "
                            "are not checked against the file, and a file cut short while open may stop LMDB's "
                            "writers (README: a damaged data.mdb)", e->path);
    atomic_store(&e->fault_told, true); /* a file cut short: said once, by err below */
    rc = file_whole(e);
    atomic_store(&e->fault_told, false);
    if (rc != MDB_SUCCESS) {
        if (e->copy)
            ks_err_set(err, "it is shorter than the pages its header names (cut short)");
        else
            ks_err_set(err, "keystore %s is damaged: its data.mdb is shorter than the pages its header names (cut "
                            "short); nothing was changed: restore it from a backup", e->path);
        return KS_ECORRUPT;
    }
    metas_map(e);
    if (*rdonly)
        ks_log(KS_LOG_WARN, "keystore %s is not writable by this user: serving it read-only", e->path);
    int dead = 0;
    LM(e, rc, mdb_reader_check(e->env, &dead));
    if (rc == MDB_SUCCESS && dead)
        ks_log(KS_LOG_INFO, "keystore %s: cleared %d stale reader slot(s)", e->path, dead);
    return KS_OK;
}

/* Do the databases exist? A keystore is created only where the environment
 * is empty: anything else that lacks a piece (a database, the format record)
 * is damage, reported, never written over. */
/* The tables of the environment, in a read transaction: 1 when they exist
 * (the dbi handles kept by a commit), 0 when the environment is empty,
 * MDB_NOTFOUND when one is missing from an environment that is not. */
static int find_tables(MDB_txn *t, ks_benv *e, bool *empty)
{
    MDB_stat ms;
    MDB_dbi main_db;
    *empty = mdb_dbi_open(t, NULL, 0, &main_db) == MDB_SUCCESS && mdb_stat(t, main_db, &ms) == MDB_SUCCESS &&
             ms.ms_entries == 0;
    int rc = open_dbs(e, t, 0);
    if (rc == MDB_SUCCESS)
        mdb_txn_commit(t); /* a read transaction: its end, which cannot fail */
    return rc;
}

/* Do the databases exist? A keystore is created only where the environment
 * is empty: anything else that lacks a piece (a database, the format record)
 * is damage, reported, never written over. */
static int probe_tables(ks_benv *e, bool *tables, ks_err *err)
{
    ks_btxn *bt;
    int rc = txn_begin(e, MDB_RDONLY, &bt);
    if (rc != KS_OK)
        return rc;
    bool empty = false;
    int mrc;
    LM(e, mrc, find_tables(T(bt), e, &empty));
    if (mrc == MDB_SUCCESS) {
        *tables = true; /* committed: keeps the dbi handles */
        pthread_rwlock_unlock(&e->resize);
        return KS_OK;
    }
    lmdb_abort(bt);
    if (mrc == LM_FAULT) {
        if (e->copy)
            ks_err_set(err, "LMDB %s while reading it", ks_fault_what());
        else
            ks_err_set(err, "keystore %s is damaged: LMDB %s while opening it; nothing was changed: restore it from a "
                            "backup", e->path, ks_fault_what());
        return KS_ECORRUPT;
    }
    if (mrc != MDB_NOTFOUND) {
        ks_err_set(err, "cannot open keystore %s: %s", e->path, mdb_strerror(mrc));
        return lmdb_err(mrc);
    }
    if (!empty) {
        if (e->copy)
            ks_err_set(err, "one of its databases (meta, tokens, objects, index) is missing");
        else
            ks_err_set(err, "keystore %s is damaged: one of its databases (meta, tokens, objects, index) is missing; "
                            "nothing was changed (nothing is created over existing data): restore it from a backup",
                       e->path);
        return KS_ECORRUPT;
    }
    *tables = false;
    return KS_OK;
}

static int lmdb_open(const char *path, const char *target, unsigned flags, bool *rdonly, bool *tables, ks_benv **out,
                     ks_err *err)
{
    (void)target; /* the environment is the directory */
    ks_benv *e = calloc(1, sizeof(*e));
    *out = NULL;
    if (!e)
        return KS_ENOMEM;
    if (pthread_rwlock_init(&e->resize, NULL) != 0) {
        free(e);
        return KS_ENOMEM;
    }
    if (!(e->path = strdup(path))) {
        lmdb_close(e);
        return KS_ENOMEM;
    }
    e->copy = flags & KS_OPEN_COPY;
    int rc = env_open(e, flags, rdonly, err);
    if (rc == KS_OK)
        gate_setup(e, *rdonly);
    if (rc == KS_OK) {
        mdb_env_set_userctx(e->env, e);
        rc = probe_tables(e, tables, err);
    }
    if (rc != KS_OK) {
        lmdb_close(e);
        return rc;
    }
    *out = e;
    return KS_OK;
}

/* ---- copies -------------------------------------------------------------- */

/* One copy of the file to fd (an LMDB code; *cut: the file was found cut short). */
static int copy_once(ks_benv *e, int fd, volatile bool *cut)
{
    /* No map resize may happen during the copy. */
    int rc;
    pthread_rwlock_rdlock(&e->resize);
    /* LMDB's copies take a reader slot, or its writer's lock (a copy as it
     * is), before they read the meta pages: those read first, in a frame of
     * their own, and the file's length checked (ks_fault.h). A fault in the
     * compacting walk itself leaves LMDB's writing thread waiting (the
     * admin, which alone copies, exits after it). */
    LM(e, rc, metas_there(e));
    if (rc == MDB_SUCCESS)
        *cut = (rc = file_whole(e)) != MDB_SUCCESS;
    if (rc == MDB_SUCCESS)
        LM(e, rc, mdb_env_copyfd2(e->env, fd, MDB_CP_COMPACT));
    if (rc == MDB_INCOMPATIBLE && lseek(fd, 0, SEEK_SET) == 0 && ftruncate(fd, 0) == 0) {
        /* The compacting walk found a page count it did not expect (a page
         * leak, seen under kill -9 of concurrent commands; every record
         * still opens): the file copied as it is, its free pages too (old,
         * sealed versions of records), which holds the same records. */
        ks_log(KS_LOG_WARN, "keystore %s: LMDB's compacting copy refused the file (%s); copying it as it is",
               e->path, mdb_strerror(rc));
        pthread_rwlock_unlock(&e->resize);
        if ((rc = gate_take(e)) == MDB_SUCCESS) { /* this copy takes LMDB's writer lock; the gate comes first */
            pthread_rwlock_rdlock(&e->resize);
            LM(e, rc, mdb_env_copyfd2(e->env, fd, 0));
            pthread_rwlock_unlock(&e->resize);
            gate_give(e);
        }
        return rc;
    }
    pthread_rwlock_unlock(&e->resize);
    return rc;
}

static int lmdb_copy(ks_benv *e, int fd, int *sys_err, char *why, size_t n)
{
    /* LMDB's compacting walk copies branch pages by their headers' bounds
     * into its buffer, as a write does: a damaged one ran past it. The
     * pages are read first (ks_lmdb_pages.h), and a damaged file is not
     * copied. */
    if (check_pages(e, false, why, n) == KS_ECORRUPT) {
        *sys_err = 0;
        return KS_ECORRUPT;
    }
    /* Another process may grow the map meanwhile (MDB_MAP_RESIZED): the
     * new size adopted, the copy made again. */
    int rc = MDB_MAP_RESIZED;
    volatile bool cut = false; /* set between frames */
    for (int attempt = 0; attempt < 8 && rc == MDB_MAP_RESIZED; attempt++) {
        if (attempt) {
            adopt_resize(e);
            if (lseek(fd, 0, SEEK_SET) != 0 || ftruncate(fd, 0) != 0) {
                rc = errno;
                break;
            }
        }
        rc = copy_once(e, fd, &cut);
    }
    if (rc == LM_FAULT) {
        if (cut)
            snprintf(why, n, "the keystore is damaged: its data.mdb was cut short");
        else
            snprintf(why, n, "the keystore is damaged (LMDB %s)", ks_fault_what());
        *sys_err = 0;
        return KS_ECORRUPT;
    }
    *sys_err = rc > 0 ? rc : 0;
    if (rc == MDB_SUCCESS)
        return KS_OK;
    snprintf(why, n, "%s", mdb_strerror(rc));
    return rc == ENOSPC || rc == EDQUOT ? KS_ENOSPC : KS_EIO;
}

/* Is this a complete LMDB data file? Both meta pages are read with pread;
 * the newer one names the last page, which must lie inside the file. A
 * truncated copy is refused here, before anything maps it (a mapped file
 * shorter than its pages raises SIGBUS). */
static int lmdb_check_copy(int fd, const char *name, ks_err *err)
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

/* The counters and ids of the environment at dir, read in *t (begun here). */
static int peek(MDB_env *env, const char *dir, MDB_txn **t, uint32_t *epoch, uint64_t *gen, ks_peek_ids *ids)
{
    MDB_dbi dbi;
    MDB_val k, v;
    unsigned psize = 0;
    uintptr_t lo = 0;
    MDB_stat st;
    maps_other others;
    maps_before_open(dir, &others);
    int rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0600);
    if (rc == MDB_SUCCESS && (rc = mdb_env_stat(env, &st)) == MDB_SUCCESS) {
        psize = st.ms_psize;
        lo = map_base(env, &others);
    }
    if (rc == MDB_SUCCESS)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, t);
    if (rc == MDB_SUCCESS)
        rc = mdb_dbi_open(*t, "meta", 0, &dbi);
    if (rc != MDB_SUCCESS)
        return rc;
    k.mv_size = 5;
    k.mv_data = (void *)"epoch";
    if (get_checked(*t, NULL, dbi, &k, &v, MDB_SET, lo, psize, false) == MDB_SUCCESS && v.mv_size == 4)
        *epoch = ks_get_be32(v.mv_data);
    k.mv_size = 3;
    k.mv_data = (void *)"gen";
    if (get_checked(*t, NULL, dbi, &k, &v, MDB_SET, lo, psize, false) == MDB_SUCCESS && v.mv_size == 8)
        *gen = ks_get_be64(v.mv_data);
    if (!ids)
        return MDB_SUCCESS;
    k.mv_size = 4;
    k.mv_data = (void *)"ksid";
    if (get_checked(*t, NULL, dbi, &k, &v, MDB_SET, lo, psize, false) == MDB_SUCCESS && v.mv_size == 16) {
        memcpy(ids->ksid, v.mv_data, 16);
        ids->have_ksid = true;
    }
    uint8_t kk[7] = {'k', 'c', 'v'};
    ks_be32(kk + 3, *epoch);
    k.mv_size = 7;
    k.mv_data = kk;
    if (*epoch && get_checked(*t, NULL, dbi, &k, &v, MDB_SET, lo, psize, false) == MDB_SUCCESS && v.mv_size == 8) {
        memcpy(ids->kcv, v.mv_data, 8);
        ids->have_kcv = true;
    }
    k.mv_size = 8;
    k.mv_data = (void *)"succeeds";
    if (get_checked(*t, NULL, dbi, &k, &v, MDB_SET, lo, psize, false) == MDB_SUCCESS)
        ids->n_succeeds = ks_succeeds_decode(v.mv_data, v.mv_size, ids->succeeds);
    return MDB_SUCCESS;
}

static int lmdb_peek_counters(const char *dir, uint32_t *epoch, uint64_t *gen, ks_peek_ids *ids)
{
    MDB_env *env = NULL;
    MDB_txn *t = NULL;
    char data[4200];
    int rc, arc;

    *epoch = 0;
    *gen = 0;
    if (ids)
        memset(ids, 0, sizeof(*ids));
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    if (access(data, R_OK) != 0)
        return KS_ENOTFOUND;
    ks_fault_arm();
    if ((rc = mdb_env_create(&env)) != MDB_SUCCESS)
        return lmdb_err(rc);
    mdb_env_set_assert(env, lm_assert);
    mdb_env_set_maxdbs(env, 8);
    LM(NULL, rc, peek(env, dir, &t, epoch, gen, ids));
    if (t)
        LM(NULL, arc, txn_abort(t));
    (void)arc;
    mdb_env_close(env);
    return lmdb_err(rc);
}

const ks_backend_ops ks_lmdb_backend = {
    .name = "lmdb",
    .check_location = lmdb_check_location,
    .open = lmdb_open,
    .close = lmdb_close,
    .create_tables = lmdb_create_tables,
    .size = lmdb_size,
    .commit_seq = lmdb_commit_seq,
    .read_begin = lmdb_read_begin,
    .read_end = lmdb_read_end,
    .snapshot = lmdb_snapshot,
    .write_begin = lmdb_write_begin,
    .commit = lmdb_commit,
    .abort = lmdb_abort,
    .make_room = lmdb_make_room,
    .get = lmdb_get,
    .put = lmdb_put,
    .del = lmdb_del,
    .del_prefix = lmdb_del_prefix,
    .count = lmdb_count,
    .dup_add = lmdb_dup_add,
    .dup_del = lmdb_dup_del,
    .dup_has = lmdb_dup_has,
    .cur_open = lmdb_cur_open,
    .cur_seek = lmdb_cur_seek,
    .cur_next = lmdb_cur_next,
    .cur_replace = lmdb_cur_replace,
    .cur_close = lmdb_cur_close,
    .copy = lmdb_copy,
    .check_copy = lmdb_check_copy,
    .peek_counters = lmdb_peek_counters,
    .check_pages = lmdb_check_pages,
    .copy_damage = lmdb_copy_damage,
    .readers = lmdb_readers,
};
