/* p11mk keystore: the PostgreSQL backend (ks_backend.h), the only file that
 * includes <libpq-fe.h>.
 *
 * libpq is loaded with dlopen the first time a keystore with
 * `backend = postgresql` is opened: an application that loads the module on
 * an LMDB keystore (ssh, a browser) never maps libpq or what it pulls in.
 *
 * The schema (one keystore per database; version SCHEMA_VERSION):
 *   p11mk_schema(version)        one row
 *   p11mk_seq(seq)               one row: the commit sequence, +1 per write
 *   p11mk_rec(t, k, v)           KS_TAB_META / TOKENS / OBJECTS, key (t, k)
 *   p11mk_idx(k, v)              KS_TAB_INDEX, key (k, v): a set of values per k
 * bytea compares as memcmp, shorter first on a common prefix: the order
 * ks_backend.h asks for.
 *
 * Transactions, and why they give what LMDB gives:
 *  - a reader is REPEATABLE READ, READ ONLY: one snapshot, never blocked;
 *    its first statement reads p11mk_seq, the snapshot's number;
 *  - a writer is READ COMMITTED and first updates the p11mk_seq row: the row
 *    lock makes writers take turns across processes and hosts (as LMDB's
 *    writer lock does), and every later statement of the writer sees every
 *    write committed before it got the lock. Its commit notifies channel
 *    `p11mk` with the new number.
 *  - commit_seq (on the hot path: no round trip) is the number a listener
 *    thread keeps from those notifications, on a connection of its own. While
 *    that connection is down, or before it has read the number, it answers 0
 *    ("not known"): the caller then reads through a transaction, so a lost
 *    notification costs speed, never freshness. A notification arrives after
 *    the commit is visible to new readers, so the number is never ahead of
 *    what a read transaction begun after it sees; it may lag behind a commit
 *    by the notification's delivery time (another host's change is seen by a
 *    cached key within that delay).
 *
 * Connections: a pool of idle connections per store; a transaction takes
 * one and gives it back at its end, or closes it when it broke. A broken
 * connection found at BEGIN is replaced once (the server restarted): the
 * operation goes on. A connection lost inside a transaction fails that
 * operation with KS_EIO (CKR_DEVICE_ERROR above), never with wrong data.
 *
 * After fork, the child never touches its parent's connections (libpq would
 * tell the server to end the parent's session): ks_store.c abandons the
 * parent's stores in the child and opens new ones. */
#include "ks_internal.h"

#include <libpq-fe.h>

#include <openssl/crypto.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCHEMA_VERSION 1
#define POOL_MAX 16
#define CHANNEL "p11mk"
#define CREATE_LOCK "7011160100" /* pg_advisory_xact_lock key of keystore creation */
#define OID_INT2 21
#define OID_BYTEA 17

/* ---- libpq, loaded on first use ------------------------------------------- */

static struct {
    PGconn *(*connectStartParams)(const char *const *, const char *const *, int);
    PQconninfoOption *(*conninfoParse)(const char *, char **);
    void (*conninfoFree)(PQconninfoOption *);
    PostgresPollingStatusType (*connectPoll)(PGconn *);
    ConnStatusType (*status)(const PGconn *);
    char *(*errorMessage)(const PGconn *);
    void (*finish)(PGconn *);
    PGresult *(*exec)(PGconn *, const char *);
    int (*sendQuery)(PGconn *, const char *);
    PGresult *(*getResult)(PGconn *);
    int (*isBusy)(PGconn *);
    PQnoticeProcessor (*setNoticeProcessor)(PGconn *, PQnoticeProcessor, void *);
    PGresult *(*execParams)(PGconn *, const char *, int, const Oid *, const char *const *, const int *,
                            const int *, int);
    ExecStatusType (*resultStatus)(const PGresult *);
    char *(*resultErrorField)(const PGresult *, int);
    char *(*resultErrorMessage)(const PGresult *);
    void (*clear)(PGresult *);
    int (*ntuples)(const PGresult *);
    char *(*getvalue)(const PGresult *, int, int);
    int (*getlength)(const PGresult *, int, int);
    char *(*cmdTuples)(PGresult *);
    char *(*cmdStatus)(PGresult *);
    int (*socket)(const PGconn *);
    int (*consumeInput)(PGconn *);
    PGnotify *(*notifies)(PGconn *);
    void (*freemem)(void *);
    char *(*db)(const PGconn *);
} pq;
static pthread_once_t pq_once = PTHREAD_ONCE_INIT;
static char pq_error[256];

static void pq_load(void)
{
    void *h = dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(pq_error, sizeof(pq_error), "%s", dlerror());
        return;
    }
#define SYM(f, name)                                                                                               \
    if (!(*(void **)&pq.f = dlsym(h, name))) {                                                                     \
        snprintf(pq_error, sizeof(pq_error), "libpq.so.5 lacks %s", name);                                         \
        return;                                                                                                    \
    }
    SYM(status, "PQstatus")
    SYM(errorMessage, "PQerrorMessage")
    SYM(finish, "PQfinish")
    SYM(exec, "PQexec")
    SYM(sendQuery, "PQsendQuery")
    SYM(getResult, "PQgetResult")
    SYM(isBusy, "PQisBusy")
    SYM(setNoticeProcessor, "PQsetNoticeProcessor")
    SYM(execParams, "PQexecParams")
    SYM(resultStatus, "PQresultStatus")
    SYM(resultErrorField, "PQresultErrorField")
    SYM(resultErrorMessage, "PQresultErrorMessage")
    SYM(clear, "PQclear")
    SYM(ntuples, "PQntuples")
    SYM(getvalue, "PQgetvalue")
    SYM(getlength, "PQgetlength")
    SYM(cmdTuples, "PQcmdTuples")
    SYM(cmdStatus, "PQcmdStatus")
    SYM(socket, "PQsocket")
    SYM(consumeInput, "PQconsumeInput")
    SYM(notifies, "PQnotifies")
    SYM(freemem, "PQfreemem")
    SYM(db, "PQdb")
    SYM(connectPoll, "PQconnectPoll")
    SYM(conninfoParse, "PQconninfoParse")
    SYM(conninfoFree, "PQconninfoFree")
    SYM(connectStartParams, "PQconnectStartParams") /* last: its presence says all are there */
#undef SYM
}

static bool pq_ready(ks_err *err)
{
    pthread_once(&pq_once, pq_load);
    if (pq.connectStartParams)
        return true;
    ks_err_set(err, "backend = postgresql needs libpq (Debian package libpq5), which could not be loaded: %s",
               pq_error);
    return false;
}

/* ---- the store --------------------------------------------------------------- */

struct ks_benv {
    char *path;     /* the keystore directory (messages) */
    char *conninfo; /* never logged: it may hold a password */
    pid_t pid;
    pthread_mutex_t pool_lock;
    PGconn *idle[POOL_MAX];
    int nidle;
    atomic_bool tables;   /* the schema exists */
    _Atomic uint64_t alive_ms; /* when the listener last heard from the server (monotonic ms) */
    _Atomic uint64_t high;     /* the highest commit number seen (never reset) */
    _Atomic uint32_t inc;      /* times the commit number was seen going back (numbers of before never match) */
    _Atomic uint64_t *local;   /* this host's commit counter (DIR/commits, shared memory), NULL if none */
    bool local_rw;             /* ... and this process may bump it */
    _Atomic uint64_t seq; /* the last commit sequence known from notifications; 0: not known */
    _Atomic uint32_t listen_lost; /* times the listener's connection was lost (resume) */
    pthread_t listener;
    bool listening;
    pid_t listener_pid;   /* the process whose thread it is (a fork child's list holds its parent's) */
    bool exit_joined;     /* joined by listeners_at_exit (listeners_mx) */
    int stop[2]; /* the listener's stop pipe */
    pthread_mutex_t work; /* held by the listener except while it waits in poll() (listener_poll) */
    bool fork_holds;      /* the fork handler took `work` (listeners_mx) */
    struct ks_benv *next_listener; /* listeners (listeners_mx) */
};

struct ks_btxn {
    ks_benv *e;
    PGconn *c;
    bool write, broken;
    uint32_t inc;   /* the environment's count of number reversals when this began */
    uint64_t local; /* this host's commit counter when this began (read before BEGIN) */
    bool creating; /* a new keystore's first transaction: create_tables makes the schema */
    uint64_t seq;   /* the snapshot (reader) or the sequence this write commits as */
    int resumes;    /* lost connections a reader went on from (resume) */
    bool committing; /* COMMIT was sent: a loss from here leaves the outcome unknown */
    uint32_t listen_lost; /* e->listen_lost when this began */
    bool lost;       /* the connection was lost before COMMIT was sent (pg_lost) */
    PGresult **res; /* results whose values were handed out: cleared at the end */
    size_t nres, cap;
};

struct ks_bcur {
    ks_btxn *t;
    ks_table tab;
    PGresult *batch;
    int row, n;
    bool last_batch;      /* the batch was not full: nothing after it */
    bool positioned;
    ks_bval key, val;     /* the entry the cursor is on (values in t->res) */
};

static int pg_state_err(const char *state)
{
    if (!state)
        return KS_EIO;
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0)
        return KS_BE_RETRY; /* serialization failure, deadlock: run it again */
    if (strcmp(state, "53100") == 0)
        return KS_ENOSPC;
    if (strcmp(state, "42501") == 0)
        return KS_EPERM;
    if (strcmp(state, "25006") == 0)
        return KS_EROFS; /* read-only transaction (a standby) */
    if (strcmp(state, "23505") == 0 || strcmp(state, "42P07") == 0)
        return KS_EEXIST; /* a unique key taken; a table made by another creator */
    return KS_EIO;
}

/* The result of a statement: KS_OK, or the failure (logged; the connection
 * marked broken when it is gone). The result is kept on success. */
static int check(ks_btxn *t, PGresult *r, const char *what)
{
    ExecStatusType s = r ? pq.resultStatus(r) : PGRES_FATAL_ERROR;
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK)
        return KS_OK;
    const char *state = r ? pq.resultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    int rc = pg_state_err(state);
    if (pq.status(t->c) != CONNECTION_OK) {
        t->broken = true;
        t->lost = !t->committing;
        rc = KS_EIO;
    }
    if (rc != KS_BE_RETRY && rc != KS_EEXIST) {
        /* A lost connection is said where it is known what came of it (a
         * write run again, an operation's error): here as a warning. */
        const char *msg = r ? pq.resultErrorMessage(r) : pq.errorMessage(t->c);
        ks_log(t->broken ? KS_LOG_WARN : KS_LOG_ERROR, "keystore %s: PostgreSQL: %s failed: %.*s", t->e->path, what,
               (int)strcspn(msg ? msg : "", "\n"), msg ? msg : "");
    }
    if (r)
        pq.clear(r);
    return rc;
}

static int keep(ks_btxn *t, PGresult *r)
{
    if (t->nres == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        PGresult **n = realloc(t->res, cap * sizeof(*n));
        if (!n) {
            pq.clear(r);
            return KS_ENOMEM;
        }
        t->res = n;
        t->cap = cap;
    }
    t->res[t->nres++] = r;
    return KS_OK;
}

static uint64_t be64_text(const char *s)
{
    return s ? strtoull(s, NULL, 10) : 0;
}

/* ---- connections ------------------------------------------------------------- */

static void notice_to_log(void *arg, const char *msg)
{
    ks_benv *e = arg;
    ks_log(KS_LOG_INFO, "keystore %s: PostgreSQL: %.*s", e->path, (int)strcspn(msg, "\n"), msg);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The commit number went back (the database was restored from an older
 * copy, or p11mk_seq was edited): numbers are reused from here on, so every
 * number handed out before must never match again. */
static void seq_went_back(ks_benv *e, uint64_t was, uint64_t now)
{
    atomic_fetch_add(&e->inc, 1);
    atomic_store(&e->high, now);
    ks_log(KS_LOG_ERROR, "keystore %s: the database's commit counter went back from %llu to %llu: it was restored "
           "from an older copy or edited. Cached keys and logins are not trusted; what the database holds now is "
           "read again. Check it with 'p11mk-admin verify'", e->path, (unsigned long long)was,
           (unsigned long long)now);
}

/* A commit number in the numbering commit_seq and snapshot share: the
 * database's number, with the count of times it went back mixed into the
 * top byte. */
static uint64_t numbered(uint32_t inc, uint64_t seq, uint64_t local)
{
    if (!seq)
        return 0;
    return ((seq << 24) | (local & 0xffffff)) ^ ((uint64_t)(inc & 0xff) << 56);
}

/* This host's commit counter: bumped by every writer of this host just
 * before and just after its COMMIT, read by commit_seq and at every
 * snapshot's start. So a commit by another process of this host changes
 * commit_seq at once, as LMDB's shared meta page does; another host's is
 * seen when its notification arrives. (Bumped twice: a snapshot taken
 * between the two, before the commit is visible, is numbered with the
 * first bump, which commit_seq no longer shows after the second.) */
static uint64_t local_now(ks_benv *e) { return e->local ? atomic_load_explicit(e->local, memory_order_acquire) : 0; }

static void local_bump(ks_benv *e)
{
    if (e->local && e->local_rw)
        atomic_fetch_add_explicit(e->local, 1, memory_order_acq_rel);
}

static void local_map(ks_benv *e)
{
    char p[4200];
    struct stat sb;
    snprintf(p, sizeof(p), "%s/commits", e->path);
    int fd = open(p, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0600);
    bool rw = fd >= 0;
    if (fd < 0)
        fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (sb.st_size < 64 && (!rw || ftruncate(fd, 64) != 0))) {
        close(fd);
        return;
    }
    void *m = mmap(NULL, 64, rw ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return;
    e->local = m;
    e->local_rw = rw;
}

/* A number from the database: the highest seen moves up. Only up: a number
 * below it is no evidence by itself that the counter went back, because
 * another thread may have read a later commit meanwhile (a reader that
 * began after ours, a notification still queued behind it). */
static void seq_seen(ks_benv *e, uint64_t v)
{
    uint64_t h = atomic_load(&e->high);
    while (v > h && !atomic_compare_exchange_weak(&e->high, &h, v))
        ;
}

/* A fresh read of the number, v, against the highest seen before that read
 * began (before): below it, the counter went back. Then the highest seen. */
static void seq_read(ks_benv *e, uint64_t before, uint64_t v)
{
    if (v < before)
        seq_went_back(e, before, v);
    else
        seq_seen(e, v);
}

/* A connection made step by step (PQconnectStartParams, PQconnectPoll), so
 * that its notice processor is ours before it reads anything from the
 * server: a notice that arrives while it starts must not reach libpq's
 * default processor, which prints on the application's stderr
 * (test_pg_connect_noisy).
 *
 * Driven that way, libpq leaves connect_timeout to the application and
 * cannot be told to give up on one host for the next. So the connection
 * string's hosts are tried here, one attempt each, as libpq tries them: in
 * order, each with connect_timeout (default 10 s; 0 or less: no limit; at
 * least 2 s), the first that answers kept (test_pg_connect_hung). Hosts
 * that come from the environment or a service file, not from the string,
 * are left to libpq in one attempt. */
#define CONNECT_TIMEOUT_S 10

/* Limits the server keeps for each of our connections, so that a client
 * that stops (frozen, paused, killed with its host, cut off by the network)
 * does not hold what it holds for the server's default of forever or two
 * hours: a writer holds p11mk_seq's row lock, which every other writer of
 * the fleet waits for, and an admin's connection holds the rotation lock.
 * - idle_in_transaction_session_timeout: a transaction whose client sent
 *   nothing for 30 s is ended by the server (rolled back, the connection
 *   closed; a write not yet committed runs again, ks_write). Our
 *   transactions wait on the client only for its own work between
 *   statements (sealing a batch: milliseconds).
 * - TCP keepalives (ignored on a Unix socket): a peer that no longer
 *   answers is found dead after 15 + 3 x 5 s.
 * Each is set only where the session's setting (the server's, or the
 * connection string's options) is off or longer, never to undo a shorter
 * one. pg_settings gives each in its base unit (ms, s, a count). */
#define SESSION_LIMITS_SQL                                                                                             \
    "SELECT set_config(s.name, w.v::text, false) FROM pg_settings s JOIN (VALUES "                                     \
    "('idle_in_transaction_session_timeout', 30000), ('tcp_keepalives_idle', 15), "                                    \
    "('tcp_keepalives_interval', 5), ('tcp_keepalives_count', 3)) AS w(name, v) USING (name) "                         \
    "WHERE s.setting::bigint NOT BETWEEN 1 AND w.v"

/* ---- the listener and fork() -------------------------------------------------
 * A fork child inherits every lock as it was at the fork, held by threads
 * that are not in the child. The pkcs11 layer's fork gate keeps the
 * application's calls out of a fork, but the listener works outside any
 * call: in libpq (allocations; OpenSSL over TLS, whose random generator a
 * new connection uses), and in the log. So it holds its environment's
 * `work` lock whenever it is not waiting in poll(), and the fork handler
 * takes every listener's lock: a fork waits until each listener waits.
 * The handler is registered before the gate's (ks_process_setup, which the
 * pkcs11 layer calls before it registers its own), so it runs after the
 * gate's: no application call is in the module by then, and none of them
 * (C_Finalize joining a listener, say) waits for a listener the fork
 * holds. A listener's work between two waits is short, but a connection
 * attempt's name look-up (libpq's getaddrinfo) can take the resolver's
 * time-outs, and a log that blocks as long: a fork waits for each listener
 * FORK_WAIT_MS at most, then goes on without it (the child may then inherit
 * what that listener holds, as before). listeners_mx is taken with signals
 * blocked, so that a signal handler that forks cannot find its own thread
 * holding it. */
#define FORK_WAIT_MS 1000
static pthread_mutex_t listeners_mx = PTHREAD_MUTEX_INITIALIZER;
static ks_benv *listeners; /* every environment with a listener (listeners_mx) */

static int listener_poll(ks_benv *e, struct pollfd *p, nfds_t n, int ms)
{
    pthread_mutex_unlock(&e->work);
    int r = poll(p, n, ms), err = errno;
    pthread_mutex_lock(&e->work);
    errno = err;
    return r;
}

static void listeners_prepare(void)
{
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += FORK_WAIT_MS / 1000;
    until.tv_nsec += (FORK_WAIT_MS % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L)
        until.tv_sec++, until.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&listeners_mx);
    for (ks_benv *e = listeners; e; e = e->next_listener)
        e->fork_holds = pthread_mutex_timedlock(&e->work, &until) == 0;
}
static void listeners_parent(void)
{
    for (ks_benv *e = listeners; e; e = e->next_listener)
        if (e->fork_holds) {
            e->fork_holds = false;
            pthread_mutex_unlock(&e->work);
        }
    pthread_mutex_unlock(&listeners_mx);
}
/* No listener runs in the child; the environments stay the parent's (a
 * fork child opens its own). The locks, this thread's since the prepare
 * handler, are let go (which keeps ThreadSanitizer's view right), then made
 * afresh (a listener may have been waiting for one). */
static void listeners_child(void)
{
    for (ks_benv *e = listeners; e; e = e->next_listener) {
        if (e->fork_holds)
            pthread_mutex_unlock(&e->work);
        e->fork_holds = false;
        memset(&e->work, 0, sizeof(e->work));
        pthread_mutex_init(&e->work, NULL);
    }
    pthread_mutex_unlock(&listeners_mx);
    memset(&listeners_mx, 0, sizeof(listeners_mx));
    pthread_mutex_init(&listeners_mx, NULL);
}

static pthread_once_t listeners_once = PTHREAD_ONCE_INIT;
static void listeners_register(void) { (void)pthread_atfork(listeners_prepare, listeners_parent, listeners_child); }
void ks_pg_process_setup(void) { pthread_once(&listeners_once, listeners_register); }

/* Wait for the connection to be made; false when it failed, ms ran out
 * (*timed_out) or stop_fd (>= 0: the listener's stop pipe) became readable
 * (*stopped). ms < 0: no limit. */
static bool connect_wait(ks_benv *e, PGconn *c, int ms, bool *timed_out, int stop_fd, bool *stopped)
{
    uint64_t end = ms < 0 ? UINT64_MAX : now_ms() + (uint64_t)ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING; /* libpq: as if the last poll had said so */

    *timed_out = false;
    for (;;) {
        if (st == PGRES_POLLING_OK)
            return true;
        if (st == PGRES_POLLING_FAILED)
            return false;
        uint64_t now = now_ms();
        struct pollfd p[2] = {{pq.socket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0},
                              {stop_fd, POLLIN, 0}};
        if (p[0].fd < 0)
            return false;
        if (now >= end) {
            *timed_out = true;
            return false;
        }
        uint64_t left = end - now;
        int ms_left = left > INT32_MAX ? INT32_MAX : (int)left;
        int r = stop_fd >= 0 ? listener_poll(e, p, 2, ms_left) : poll(p, 1, ms_left);
        if (r < 0 && errno != EINTR)
            return false;
        if (r > 0 && stop_fd >= 0 && p[1].revents) {
            *stopped = true;
            return false;
        }
        if (r > 0)
            st = pq.connectPoll(c);
    }
}

static int list_count(const char *list)
{
    int count = 1;
    for (const char *q = list ? list : ""; *q; q++)
        count += *q == ',';
    return list ? count : 0;
}

/* Item i of a comma-separated list (libpq's host, hostaddr and port), or
 * its only item whatever i is; "" past its end. */
static void list_item(const char *list, int i, char *out, size_t n)
{
    if (list_count(list) == 1)
        i = 0;
    for (; i > 0 && (list = strchr(list, ',')); i--)
        list++;
    if (!list) {
        *out = '\0';
        return;
    }
    snprintf(out, n, "%.*s", (int)strcspn(list, ","), list);
}

/* One attempt with the parsed options, host i of the lists. */
static PGconn *connect_one(ks_benv *e, const PQconninfoOption *opts, int i, int timeout_s, char *why, size_t n,
                           int stop_fd, bool *stopped)
{
    const char *kw[64], *val[64];
    char item[3][256];
    size_t k = 0;
    bool app = false, to = false, timed_out = false;

    for (const PQconninfoOption *o = opts; o->keyword && k + 3 < sizeof(kw) / sizeof(*kw); o++) {
        int which = strcmp(o->keyword, "host") == 0 ? 0 : strcmp(o->keyword, "hostaddr") == 0 ? 1
                    : strcmp(o->keyword, "port") == 0 ? 2 : -1;
        if (!o->val)
            continue;
        app |= strcmp(o->keyword, "application_name") == 0;
        to |= strcmp(o->keyword, "connect_timeout") == 0;
        kw[k] = o->keyword;
        if (which >= 0) {
            list_item(o->val, i, item[which], sizeof(item[which]));
            val[k++] = item[which];
        } else {
            val[k++] = o->val;
        }
    }
    if (!app)
        kw[k] = "application_name", val[k++] = "p11mk";
    if (!to)
        kw[k] = "connect_timeout", val[k++] = "10";
    kw[k] = val[k] = NULL;
    PGconn *c = pq.connectStartParams(kw, val, 0);
    if (c && pq.status(c) != CONNECTION_BAD) {
        pq.setNoticeProcessor(c, notice_to_log, e); /* never on the application's stderr */
        if (connect_wait(e, c, timeout_s <= 0 ? -1 : (timeout_s < 2 ? 2 : timeout_s) * 1000, &timed_out, stop_fd,
                         stopped) &&
            pq.status(c) == CONNECTION_OK)
            return c;
    }
    const char *msg = c ? pq.errorMessage(c) : "out of memory";
    int len = (int)strcspn(msg, "\n");
    if (timed_out)
        snprintf(why, n, "%.*s%stimeout expired after %d s", len, msg, len ? "" : "no answer: ",
                 timeout_s < 2 ? 2 : timeout_s);
    else
        snprintf(why, n, "%.*s", len, len ? msg : "the connection failed");
    if (c)
        pq.finish(c);
    return NULL;
}

#define PING_IDLE_MS 1000 /* after this long without a word from the server, the listener asks */
#define PING_WAIT_MS 2000 /* an answer not back within this: the connection is taken for dead */
#define FRESH_MS 3500     /* commit_seq trusts its number this long after the server last spoke */

/* One statement, its answer awaited at most PING_WAIT_MS and never past
 * stop_fd becoming readable (the listener's stop pipe: a blocking PQexec
 * there held C_Finalize, which joins the listener, for as long as a server
 * that accepted the connection stayed silent). The result, or NULL when it
 * failed, did not answer in time (logged) or stop_fd said stop (*stopped). */
static PGresult *exec_stoppable(ks_benv *e, PGconn *c, const char *sql, int stop_fd, bool *stopped)
{
    PGresult *res = NULL, *r;
    uint64_t until = now_ms() + PING_WAIT_MS;

    if (!pq.sendQuery(c, sql))
        return NULL;
    for (;;) {
        while (!pq.isBusy(c)) {
            if (!(r = pq.getResult(c)))
                return res; /* the whole answer is in */
            if (res)
                pq.clear(res);
            res = r;
        }
        int64_t wait = (int64_t)until - (int64_t)now_ms();
        if (wait <= 0) {
            ks_log(KS_LOG_WARN, "keystore %s: the PostgreSQL notification connection did not answer '%.40s' in %d "
                                "ms; connecting again", e->path, sql, PING_WAIT_MS);
            break;
        }
        struct pollfd p[2] = {{.fd = pq.socket(c), .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
        int n = listener_poll(e, p, 2, (int)wait);
        if (n < 0 && errno == EINTR)
            continue;
        if (n > 0 && p[1].revents) {
            *stopped = true;
            break;
        }
        if (n < 0 || (n > 0 && !pq.consumeInput(c)))
            break;
    }
    if (res)
        pq.clear(res);
    return NULL;
}

/* A new connection, set up for the keystore. stop_fd >= 0 (the listener's
 * stop pipe): every wait, the connection's and its set-up statements',
 * ends when it becomes readable (*stopped), and the statements wait at most
 * PING_WAIT_MS; -1: an application's thread, which waits as libpq does. */
static PGconn *connect_stoppable(ks_benv *e, char *why, size_t n, int stop_fd, bool *stopped)
{
    char *perr = NULL;
    PQconninfoOption *opts = pq.conninfoParse(e->conninfo, &perr);
    const char *hosts = NULL, *addrs = NULL;
    int timeout_s = CONNECT_TIMEOUT_S, attempts;
    PGconn *c = NULL;

    if (!opts) {
        const char *msg = perr ? perr : "out of memory";
        snprintf(why, n, "%.*s", (int)strcspn(msg, "\n"), msg);
        if (perr)
            pq.freemem(perr);
        return NULL;
    }
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            hosts = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            addrs = o->val;
        else if (strcmp(o->keyword, "connect_timeout") == 0)
            timeout_s = atoi(o->val);
    }
    attempts = list_count(hosts) > list_count(addrs) ? list_count(hosts) : list_count(addrs);
    if (n)
        *why = '\0';
    for (int i = 0; !c && !*stopped && i < (attempts ? attempts : 1); i++) {
        char one[256];
        if ((c = connect_one(e, opts, i, timeout_s, one, sizeof(one), stop_fd, stopped)))
            break;
        /* Each host's reason, as libpq gives them, as much as fits. */
        size_t used = strlen(why), sep = used ? 2 : 0, len = strlen(one);
        if (used + sep + 1 >= n)
            continue;
        if (len > n - used - sep - 1)
            len = n - used - sep - 1;
        memcpy(why + used, "; ", sep);
        memcpy(why + used + sep, one, len);
        why[used + sep + len] = '\0';
    }
    pq.conninfoFree(opts);
    if (c) {
        static const char iso[] = "SET default_transaction_isolation = 'read committed'";
        PGresult *r = stop_fd >= 0 ? exec_stoppable(e, c, iso, stop_fd, stopped) : pq.exec(c, iso);
        if (r)
            pq.clear(r);
        r = *stopped ? NULL : stop_fd >= 0 ? exec_stoppable(e, c, SESSION_LIMITS_SQL, stop_fd, stopped)
                                           : pq.exec(c, SESSION_LIMITS_SQL);
        if (!*stopped && (!r || pq.resultStatus(r) != PGRES_TUPLES_OK))
            ks_log(KS_LOG_WARN, "keystore %s: the connection's time limits were not set (%.*s); a client that stops "
                                "in a transaction may hold the keystore's writers until the server notices",
                   e->path, (int)strcspn(pq.errorMessage(c), "\n"), pq.errorMessage(c));
        if (r)
            pq.clear(r);
        if (*stopped) {
            pq.finish(c);
            c = NULL;
        }
    }
    return c;
}

static PGconn *connect_new(ks_benv *e, char *why, size_t n)
{
    bool stopped = false;
    return connect_stoppable(e, why, n, -1, &stopped);
}

/* The answer to a read transaction's ROLLBACK, sent without waiting when
 * it ended (pg_read_end): read before the connection is used again. */
static bool drain(PGconn *c)
{
    bool ok = true;
    PGresult *r;
    while ((r = pq.getResult(c))) {
        if (pq.resultStatus(r) != PGRES_COMMAND_OK)
            ok = false;
        pq.clear(r);
    }
    /* A backend ended while its connection sat idle here (terminated, the
     * server restarted) has said so and closed: the socket reads, and
     * reading it shows the loss now rather than at the BEGIN, where each
     * dead connection of the pool would cost a try. A live idle connection
     * has nothing to read. */
    struct pollfd p = {.fd = pq.socket(c), .events = POLLIN};
    for (int i = 0; i < 8 && ok && pq.status(c) == CONNECTION_OK && poll(&p, 1, 0) == 1; i++)
        if (!pq.consumeInput(c))
            break;
    return ok && pq.status(c) == CONNECTION_OK;
}

static PGconn *conn_take(ks_benv *e)
{
    PGconn *c = NULL;
    for (;;) {
        pthread_mutex_lock(&e->pool_lock);
        c = e->nidle > 0 ? e->idle[--e->nidle] : NULL;
        pthread_mutex_unlock(&e->pool_lock);
        if (!c || drain(c))
            break;
        pq.finish(c); /* it broke while idle: the next one, or a new one */
    }
    if (c)
        return c;
    char why[256];
    if (!(c = connect_new(e, why, sizeof(why))))
        ks_log(KS_LOG_ERROR, "keystore %s: cannot connect to its PostgreSQL database: %s", e->path, why);
    return c;
}

static void conn_give(ks_benv *e, PGconn *c, bool broken)
{
    if (!c)
        return;
    if (!broken && pq.status(c) == CONNECTION_OK) {
        pthread_mutex_lock(&e->pool_lock);
        if (e->nidle < POOL_MAX) {
            e->idle[e->nidle++] = c;
            c = NULL;
        }
        pthread_mutex_unlock(&e->pool_lock);
    }
    if (c)
        pq.finish(c);
}

static void listen_start(ks_benv *e);

/* ---- the listener ------------------------------------------------------------ */

static void seq_raise(ks_benv *e, uint64_t v)
{
    uint64_t cur = atomic_load(&e->seq);
    while (cur != 0 && v > cur && !atomic_compare_exchange_weak(&e->seq, &cur, v))
        ;
}

/* LISTEN, then read the number (a commit between the two is notified and
 * read again: never missed), then wait for notifications, asking the server
 * when it has been silent for PING_IDLE_MS. A connection that does not answer
 * within PING_WAIT_MS (a hung server, a half-open connection a firewall
 * dropped) is given up like a broken one: the number becomes unknown and
 * the listener connects again. commit_seq itself also stops trusting the
 * number FRESH_MS after the server last spoke, should this thread stall. */
static void *listen_loop(ks_benv *e)
{
    unsigned backoff_ms = 50;
    bool reconnect = false; /* a number was read on an earlier connection */
    for (;;) {
        char why[256];
        bool stopped = false;
        PGconn *c = connect_stoppable(e, why, sizeof(why), e->stop[0], &stopped);
        PGresult *r = NULL;
        uint64_t heard = 0; /* the last number this connection read or was notified of */
        if (stopped)
            return NULL;
        if (c) {
            r = exec_stoppable(e, c, "LISTEN " CHANNEL, e->stop[0], &stopped);
            bool ok = r && pq.resultStatus(r) == PGRES_COMMAND_OK;
            if (r)
                pq.clear(r);
            uint64_t before = atomic_load(&e->high);
            r = ok ? exec_stoppable(e, c, "SELECT seq FROM p11mk_seq", e->stop[0], &stopped) : NULL;
            if (stopped) {
                pq.finish(c);
                return NULL;
            }
            if (r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1) {
                uint64_t v = be64_text(pq.getvalue(r, 0, 0));
                seq_read(e, before, v);
                /* Connected again after a loss: what happened meanwhile was
                 * not heard. The counter may have gone back and, by the time
                 * of this read, come past the highest number seen (a restore
                 * from a copy a few commits older, other hosts writing): no
                 * lower number would ever show it, and numbers of before
                 * would match again. They never match after a reconnection. */
                if (reconnect)
                    atomic_fetch_add(&e->inc, 1);
                reconnect = true;
                heard = v;
                atomic_store(&e->alive_ms, now_ms());
                atomic_store(&e->seq, v);
                backoff_ms = 50;
            } else {
                pq.finish(c);
                c = NULL;
            }
            if (r)
                pq.clear(r);
        }
        bool pinging = false, recheck = false;
        uint64_t last = now_ms(), ping_at = 0, ping_high = 0;
        while (c) {
            uint64_t t = now_ms();
            int64_t wait = pinging ? (int64_t)(ping_at + PING_WAIT_MS) - (int64_t)t
                                   : (int64_t)(last + PING_IDLE_MS) - (int64_t)t;
            struct pollfd p[2] = {{.fd = pq.socket(c), .events = POLLIN}, {.fd = e->stop[0], .events = POLLIN}};
            int n = listener_poll(e, p, 2, wait > 0 ? (int)wait : 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (p[1].revents) {
                pq.finish(c);
                return NULL;
            }
            if (n < 0)
                break;
            if (p[0].revents) {
                if (!pq.consumeInput(c) || pq.status(c) != CONNECTION_OK)
                    break;
                last = now_ms();
                atomic_store(&e->alive_ms, last);
                PGnotify *no;
                while ((no = pq.notifies(c))) {
                    uint64_t v = be64_text(no->extra);
                    pq.freemem(no);
                    /* Notifications come in commit order, which is the
                     * number's order (writers take turns on its row). One
                     * below what this connection last heard is a commit made
                     * before its last read, or the counter going back: the
                     * number is read again at once (the ping) to tell.
                     * Compared with e->high instead, a notification still
                     * queued behind a commit another thread had already read
                     * looked like a reversal (logged as a restored database,
                     * every cached key dropped). */
                    if (v < heard) {
                        recheck = true;
                        continue;
                    }
                    heard = v;
                    seq_seen(e, v);
                    seq_raise(e, v);
                }
                if (pinging) {
                    /* PQgetResult blocks unless PQisBusy says it would not:
                     * the ping's result may be here before the end of its
                     * answer (ReadyForQuery), which a hung server never sends. */
                    bool ok = true, done = false;
                    while (!pq.isBusy(c)) {
                        if (!(r = pq.getResult(c))) {
                            done = true;
                            break;
                        }
                        if (pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1) {
                            /* A fresh read: below what was seen before it
                             * was sent, the counter went back. (It does not
                             * move `heard`: the notifications of the commits
                             * it shows may still be on their way, and would
                             * each ask for another read.) */
                            uint64_t v = be64_text(pq.getvalue(r, 0, 0));
                            if (v < ping_high) {
                                seq_went_back(e, ping_high, v);
                                heard = v;
                                atomic_store(&e->seq, v); /* start again from it */
                            } else {
                                seq_seen(e, v);
                                seq_raise(e, v);
                            }
                        } else {
                            ok = false;
                        }
                        pq.clear(r);
                    }
                    if (!ok)
                        break;
                    if (done)
                        pinging = false;
                }
            }
            t = now_ms();
            if (pinging && t >= ping_at + PING_WAIT_MS) {
                ks_log(KS_LOG_WARN, "keystore %s: the PostgreSQL notification connection did not answer in %d ms; "
                                    "connecting again", e->path, PING_WAIT_MS);
                break;
            }
            if (!pinging && (recheck || t >= last + PING_IDLE_MS)) {
                ping_high = atomic_load(&e->high);
                if (!pq.sendQuery(c, "SELECT seq FROM p11mk_seq"))
                    break;
                recheck = false;
                pinging = true;
                ping_at = t;
            }
        }
        if (c) {
            ks_log(KS_LOG_WARN, "keystore %s: lost the PostgreSQL notification connection; reading through "
                                "transactions until it is back", e->path);
            pq.finish(c);
        }
        atomic_store(&e->seq, 0);
        atomic_fetch_add(&e->listen_lost, 1);
        struct pollfd s = {.fd = e->stop[0], .events = POLLIN};
        if (listener_poll(e, &s, 1, (int)backoff_ms) > 0)
            return NULL;
        if (backoff_ms < 2000)
            backoff_ms *= 2;
    }
}

static void *listen_main(void *arg)
{
    ks_benv *e = arg;

    pthread_mutex_lock(&e->work);
    listen_loop(e);
    pthread_mutex_unlock(&e->work);
    return NULL;
}

/* ---- transactions ------------------------------------------------------------ */

#define READ_BEGIN_SQL "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT seq FROM p11mk_seq"
#define RESUMES_MAX 3 /* a reader's lost connections taken up again before it gives up */

static int txn_begin(ks_benv *e, bool write, ks_btxn **out)
{
    ks_btxn *t = calloc(1, sizeof(*t));
    if (!t)
        return KS_ENOMEM;
    t->e = e;
    t->write = write;
    /* A new keystore's writer cannot take the p11mk_seq row yet: creators
     * take turns on an advisory lock, and create_tables looks again under it. */
    t->creating = write && !atomic_load(&e->tables);
    const char *sql = t->creating ? "BEGIN; SELECT pg_advisory_xact_lock(" CREATE_LOCK "), 0"
                      : write     ? "BEGIN; UPDATE p11mk_seq SET seq = seq + 1 RETURNING seq"
                                  : READ_BEGIN_SQL;
    /* A connection idle in the pool may have died with a server restart,
     * or a new one been cut before its first statement: an attempt that
     * fails that way did nothing, and another connection gets a try. */
    for (int attempt = 0; attempt <= RESUMES_MAX; attempt++) {
        if (!(t->c = conn_take(e)))
            break;
        /* Whatever was seen before this snapshot began, it sees too: a
         * lower number means the counter went back. The count of reversals
         * is taken before the snapshot too: a snapshot of the old numbers
         * that was in flight when a reversal was found must never carry the
         * new count (its number would match once the restored copy's counter
         * reaches it again). */
        uint32_t inc = atomic_load(&e->inc);
        uint64_t before = atomic_load(&e->high);
        t->local = local_now(e);
        t->listen_lost = atomic_load(&e->listen_lost);
        PGresult *r = pq.exec(t->c, sql);
        if (r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1) {
            t->seq = be64_text(pq.getvalue(r, 0, 0));
            pq.clear(r);
            /* A writer's number is one above the last committed: above
             * everything seen. It counts as seen once it is committed. */
            t->inc = inc;
            if (!t->creating && t->seq && (write ? t->seq <= before : t->seq < before)) {
                seq_went_back(e, before, t->seq);
                t->inc = atomic_load(&e->inc); /* this snapshot is of the new numbers */
            } else if (!t->creating && !write) {
                seq_seen(e, t->seq);
            }
            *out = t;
            return KS_OK;
        }
        bool gone = pq.status(t->c) != CONNECTION_OK;
        if (!gone) {
            int rc = check(t, r, write ? "beginning a write" : "beginning a read");
            PGresult *a = pq.exec(t->c, "ROLLBACK");
            if (a)
                pq.clear(a);
            conn_give(e, t->c, t->broken);
            free(t);
            return rc == KS_OK ? KS_ECORRUPT : rc; /* a row missing from p11mk_seq */
        }
        if (r)
            pq.clear(r);
        conn_give(e, t->c, true);
        t->c = NULL;
    }
    free(t);
    return KS_EIO;
}

static void txn_free(ks_btxn *t)
{
    for (size_t i = 0; i < t->nres; i++)
        pq.clear(t->res[i]);
    free(t->res);
    free(t);
}

static int pg_read_begin(ks_benv *e, ks_btxn **t) { return txn_begin(e, false, t); }
static int pg_write_begin(ks_benv *e, ks_btxn **t) { return txn_begin(e, true, t); }
static uint64_t pg_snapshot(ks_btxn *t) { return t->write ? 0 : numbered(t->inc, t->seq, t->local); }

static void pg_abort(ks_btxn *t)
{
    if (!t)
        return;
    if (!t->broken) {
        PGresult *r = pq.exec(t->c, "ROLLBACK");
        if (!r || pq.resultStatus(r) != PGRES_COMMAND_OK)
            t->broken = true;
        if (r)
            pq.clear(r);
    }
    conn_give(t->e, t->c, t->broken);
    txn_free(t);
}

/* A reader's end needs no answer: the ROLLBACK is sent and the connection
 * goes back to the pool at once (its answer is read when it is next taken):
 * one round trip less per read. */
static void pg_read_end(ks_btxn *t)
{
    if (!t)
        return;
    if (t->broken || !pq.sendQuery(t->c, "ROLLBACK")) {
        t->broken = true;
        pg_abort(t);
        return;
    }
    conn_give(t->e, t->c, false);
    txn_free(t);
}

/* A statement whose result is only its status. */
static int exec_ok(ks_btxn *t, const char *sql, const char *what)
{
    PGresult *r = pq.exec(t->c, sql);
    int rc = check(t, r, what);
    if (rc == KS_OK)
        pq.clear(r);
    return rc;
}

static int pg_commit(ks_btxn *t)
{
    char sql[96];
    int rc = KS_OK;
    if (t->broken) {
        bool again = t->write && t->lost; /* nothing was committed: run it again */
        pg_abort(t);
        return again ? KS_BE_RETRY : KS_EIO;
    }
    if (t->write) {
        snprintf(sql, sizeof(sql), "SELECT pg_notify('" CHANNEL "', '%" PRIu64 "')", t->seq);
        rc = exec_ok(t, sql, "notifying a commit");
    }
    if (rc == KS_OK) {
        /* COMMIT of a transaction that had failed answers ROLLBACK: not committed. */
        if (t->write)
            local_bump(t->e);
        t->committing = true;
        PGresult *r = pq.exec(t->c, "COMMIT");
        if (t->write)
            local_bump(t->e); /* whatever the answer: it may have committed */
        rc = check(t, r, "committing");
        if (rc == KS_OK) {
            const char *tag = pq.cmdStatus(r);
            if (!tag || strcmp(tag, "COMMIT") != 0)
                rc = KS_EIO;
            pq.clear(r);
        }
        if (rc != KS_OK) {
            /* Whether a COMMIT whose answer was lost took effect is not
             * known: the connection is not reused, the caller reports an
             * error, and a later read shows what is there. */
            conn_give(t->e, t->c, true);
            txn_free(t);
            return rc;
        }
    }
    if (rc != KS_OK) {
        bool again = t->lost; /* lost at the notification, before COMMIT: run it again */
        pg_abort(t);
        return again ? KS_BE_RETRY : rc;
    }
    if (t->write) {
        if (t->creating) {
            atomic_store(&t->e->tables, true);
            listen_start(t->e);
        }
        seq_seen(t->e, t->seq);
        seq_raise(t->e, t->seq);
    }
    conn_give(t->e, t->c, false);
    txn_free(t);
    return KS_OK;
}

static bool pg_lost(ks_btxn *t) { return t && t->write && t->lost; }

static int pg_make_room(ks_benv *e)
{
    (void)e; /* a serialization failure needs nothing but another try */
    return KS_OK;
}

/* ---- statements ---------------------------------------------------------------- */

typedef struct {
    const char *p[4];
    int l[4];
    int f[4];
    Oid o[4];
    int n;
    uint8_t tab[2]; /* the table number, int2 big-endian */
} params;

static void p_tab(params *ps, ks_table tab)
{
    ps->tab[0] = 0;
    ps->tab[1] = (uint8_t)tab;
    ps->p[ps->n] = (const char *)ps->tab;
    ps->l[ps->n] = 2;
    ps->f[ps->n] = 1;
    ps->o[ps->n++] = OID_INT2;
}

static void p_bytes(params *ps, const void *v, size_t n)
{
    ps->p[ps->n] = v ? (const char *)v : "";
    ps->l[ps->n] = (int)n;
    ps->f[ps->n] = 1;
    ps->o[ps->n++] = OID_BYTEA;
}

/* Whether the listener's connection has stood since t began (a reconnection
 * counts in e->inc, a loss in e->listen_lost). The same commit number on
 * another connection proves the same records only on the same database: a
 * failover to an asynchronous replica, or a restored copy, can hold other
 * records under that number once new writes raise it again. Those cut every
 * connection, the listener's too: a reader cut with it fails rather than go
 * on. Without a listener (CKF_LIBRARY_CANT_CREATE_OS_THREADS) nothing
 * watches, and no reader goes on. */
static bool heard_throughout(ks_btxn *t)
{
    ks_benv *e = t->e;
    return e->listening && atomic_load(&e->seq) != 0 && atomic_load(&e->listen_lost) == t->listen_lost;
}

/* A reader whose connection was lost (its backend terminated, the server
 * restarted, a proxy cut it) goes on over another connection when the
 * records there are the ones its snapshot saw: every writer raises p11mk_seq
 * in the transaction that writes (records, index), so a new snapshot that
 * reads the same number, with no reversal of the numbers seen meanwhile and
 * the listener's connection standing since t began (heard_throughout),
 * holds the same records. Anything else, and writers always (their work is
 * gone with the connection: ks_write runs them again, ops->lost), fail with
 * KS_EIO. Values already handed out live in PGresults, which outlive their
 * connection. */
static bool resume(ks_btxn *t)
{
    ks_benv *e = t->e;
    if (t->write || t->creating || t->broken || pq.status(t->c) == CONNECTION_OK)
        return false;
    while (t->resumes < RESUMES_MAX) {
        t->resumes++;
        conn_give(e, t->c, true);
        if (!(t->c = conn_take(e)))
            break;
        PGresult *r = pq.exec(t->c, READ_BEGIN_SQL);
        bool began = r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1;
        uint64_t seq = began ? be64_text(pq.getvalue(r, 0, 0)) : 0;
        if (r)
            pq.clear(r);
        if (!began && pq.status(t->c) != CONNECTION_OK)
            continue; /* this one was cut too */
        if (began && seq == t->seq && atomic_load(&e->inc) == t->inc && heard_throughout(t)) {
            ks_log(KS_LOG_DEBUG, "keystore %s: lost the PostgreSQL connection in a read; went on over another "
                                 "one (the records unchanged, commit %llu)", e->path, (unsigned long long)seq);
            return true;
        }
        if (began)
            ks_log(KS_LOG_INFO, "keystore %s: lost the PostgreSQL connection in a read, and cannot tell that the "
                                "records are those it began on (commit %llu, now %llu%s): the read fails", e->path,
                   (unsigned long long)t->seq, (unsigned long long)seq,
                   seq == t->seq ? ", but the numbering was restarted meanwhile: the notification connection "
                                   "was lost too"
                                 : "");
        break;
    }
    t->broken = true; /* t->c is on another snapshot, cut, or none: nothing more is read on it */
    return false;
}

static bool result_ok(PGresult *r)
{
    ExecStatusType s = r ? pq.resultStatus(r) : PGRES_FATAL_ERROR;
    return s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK;
}

static PGresult *run(ks_btxn *t, const char *sql, const params *ps)
{
    PGresult *r = pq.execParams(t->c, sql, ps->n, ps->o, ps->p, ps->l, ps->f, 1);
    while (!result_ok(r) && resume(t)) {
        if (r)
            pq.clear(r);
        r = pq.execParams(t->c, sql, ps->n, ps->o, ps->p, ps->l, ps->f, 1);
    }
    return r;
}

/* A statement that changes rows: KS_OK, or KS_ENOTFOUND when it changed none and `none` says so. */
static int change(ks_btxn *t, const char *sql, const params *ps, int none, const char *what)
{
    if (t->broken)
        return KS_EIO;
    PGresult *r = run(t, sql, ps);
    int rc = check(t, r, what);
    if (rc != KS_OK)
        return rc;
    const char *n = pq.cmdTuples(r);
    rc = (n && strcmp(n, "0") == 0) ? none : KS_OK;
    pq.clear(r);
    return rc;
}

static int pg_get(ks_btxn *t, ks_table tab, const void *k, size_t kl, ks_bval *v)
{
    params ps = {0};
    if (t->broken)
        return KS_EIO;
    p_tab(&ps, tab);
    p_bytes(&ps, k, kl);
    PGresult *r = run(t, "SELECT v FROM p11mk_rec WHERE t = $1 AND k = $2", &ps);
    int rc = check(t, r, "reading a record");
    if (rc != KS_OK)
        return rc;
    if (pq.ntuples(r) != 1) {
        pq.clear(r);
        return KS_ENOTFOUND;
    }
    if ((rc = keep(t, r)) != KS_OK)
        return rc;
    *v = (ks_bval){(const uint8_t *)pq.getvalue(r, 0, 0), (size_t)pq.getlength(r, 0, 0)};
    return KS_OK;
}

static int pg_put(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    params ps = {0};
    p_tab(&ps, tab);
    p_bytes(&ps, k, kl);
    p_bytes(&ps, v, vl);
    return change(t, "INSERT INTO p11mk_rec (t, k, v) VALUES ($1, $2, $3) ON CONFLICT (t, k) DO UPDATE SET v = "
                     "EXCLUDED.v", &ps, KS_OK, "writing a record");
}

static int pg_del(ks_btxn *t, ks_table tab, const void *k, size_t kl)
{
    params ps = {0};
    p_tab(&ps, tab);
    p_bytes(&ps, k, kl);
    return change(t, "DELETE FROM p11mk_rec WHERE t = $1 AND k = $2", &ps, KS_ENOTFOUND, "deleting a record");
}

/* The smallest key above every key that starts with prefix: prefix with its
 * last byte below 0xff raised by one, the bytes after it dropped; none when
 * the prefix is all 0xff (then no upper bound). */
static size_t prefix_end(const uint8_t *p, size_t n, uint8_t *out)
{
    while (n > 0 && p[n - 1] == 0xff)
        n--;
    if (n == 0)
        return 0;
    memcpy(out, p, n);
    out[n - 1]++;
    return n;
}

static int pg_del_prefix(ks_btxn *t, ks_table tab, const void *prefix, size_t pl)
{
    params ps = {0};
    uint8_t end[64];
    if (pl > sizeof(end))
        return KS_EINVAL;
    size_t el = prefix_end(prefix, pl, end);
    bool idx = tab == KS_TAB_INDEX;
    if (!idx)
        p_tab(&ps, tab);
    p_bytes(&ps, prefix, pl);
    if (el)
        p_bytes(&ps, end, el);
    static const char *const sql[2][2] = {
        {"DELETE FROM p11mk_rec WHERE t = $1 AND k >= $2", "DELETE FROM p11mk_rec WHERE t = $1 AND k >= $2 AND k < $3"},
        {"DELETE FROM p11mk_idx WHERE k >= $1", "DELETE FROM p11mk_idx WHERE k >= $1 AND k < $2"}};
    return change(t, sql[idx][el != 0], &ps, KS_OK, "deleting records");
}

static int pg_count(ks_btxn *t, ks_table tab, uint64_t *n)
{
    params ps = {0};
    *n = 0;
    if (t->broken)
        return KS_EIO;
    PGresult *r;
    if (tab == KS_TAB_INDEX) {
        r = run(t, "SELECT count(*) FROM p11mk_idx", &ps);
    } else {
        p_tab(&ps, tab);
        r = run(t, "SELECT count(*) FROM p11mk_rec WHERE t = $1", &ps);
    }
    int rc = check(t, r, "counting records");
    if (rc != KS_OK)
        return rc;
    if (pq.ntuples(r) == 1 && pq.getlength(r, 0, 0) == 8)
        *n = ks_get_be64(pq.getvalue(r, 0, 0));
    pq.clear(r);
    return KS_OK;
}

/* ---- the index ---------------------------------------------------------------- */

static int pg_dup_add(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    params ps = {0};
    (void)tab;
    p_bytes(&ps, k, kl);
    p_bytes(&ps, v, vl);
    return change(t, "INSERT INTO p11mk_idx (k, v) VALUES ($1, $2) ON CONFLICT DO NOTHING", &ps, KS_EEXIST,
                  "adding an index entry");
}

static int pg_dup_del(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    params ps = {0};
    (void)tab;
    p_bytes(&ps, k, kl);
    p_bytes(&ps, v, vl);
    return change(t, "DELETE FROM p11mk_idx WHERE k = $1 AND v = $2", &ps, KS_ENOTFOUND, "deleting an index entry");
}

static int pg_dup_has(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    params ps = {0};
    (void)tab;
    if (t->broken)
        return KS_EIO;
    p_bytes(&ps, k, kl);
    p_bytes(&ps, v, vl);
    PGresult *r = run(t, "SELECT 1 FROM p11mk_idx WHERE k = $1 AND v = $2", &ps);
    int rc = check(t, r, "reading the index");
    if (rc != KS_OK)
        return rc;
    rc = pq.ntuples(r) == 1 ? KS_OK : KS_ENOTFOUND;
    pq.clear(r);
    return rc;
}

/* ---- cursors -------------------------------------------------------------------
 * A cursor reads its table in batches, in key order (the index: key, then
 * value); each batch starts after the entry the cursor is on. Batches stay
 * with the transaction: the values handed out stay valid until its end. */

enum { Q_FIRST, Q_LAST, Q_GE, Q_KEY, Q_AFTER, Q_AFTER_SAME };

static const char *const rec_sql[] = {
    [Q_FIRST] = "SELECT k, v FROM p11mk_rec WHERE t = $1 ORDER BY k",
    [Q_LAST] = "SELECT k, v FROM p11mk_rec WHERE t = $1 ORDER BY k DESC LIMIT 1",
    [Q_GE] = "SELECT k, v FROM p11mk_rec WHERE t = $1 AND k >= $2 ORDER BY k",
    [Q_KEY] = "SELECT k, v FROM p11mk_rec WHERE t = $1 AND k = $2",
    [Q_AFTER] = "SELECT k, v FROM p11mk_rec WHERE t = $1 AND k > $2 ORDER BY k",
};
static const char *const idx_sql[] = {
    [Q_FIRST] = "SELECT k, v FROM p11mk_idx ORDER BY k, v",
    [Q_LAST] = "SELECT k, v FROM p11mk_idx ORDER BY k DESC, v DESC LIMIT 1",
    [Q_GE] = "SELECT k, v FROM p11mk_idx WHERE k >= $1 ORDER BY k, v",
    [Q_KEY] = "SELECT k, v FROM p11mk_idx WHERE k = $1 ORDER BY v",
    [Q_AFTER] = "SELECT k, v FROM p11mk_idx WHERE (k, v) > ($1, $2) ORDER BY k, v",
    [Q_AFTER_SAME] = "SELECT k, v FROM p11mk_idx WHERE k = $1 AND v > $2 ORDER BY v",
};

static int cur_fetch(ks_bcur *c, int q, const void *k, size_t kl, const void *v, size_t vl)
{
    ks_btxn *t = c->t;
    bool idx = c->tab == KS_TAB_INDEX;
    params ps = {0};
    char sql[160];
    /* Small first (a lookup wants one or two), larger as a scan goes on. */
    int limit = c->batch ? 256 : 16;

    if (t->broken)
        return KS_EIO;
    if (!idx)
        p_tab(&ps, c->tab);
    if (q != Q_FIRST && q != Q_LAST)
        p_bytes(&ps, k, kl);
    if (idx && (q == Q_AFTER || q == Q_AFTER_SAME))
        p_bytes(&ps, v, vl);
    bool bounded = q == Q_LAST || (!idx && q == Q_KEY);
    snprintf(sql, sizeof(sql), "%s", idx ? idx_sql[q] : rec_sql[q]);
    if (!bounded)
        snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), " LIMIT %d", limit);
    PGresult *r = run(t, sql, &ps);
    int rc = check(t, r, "reading records in order");
    if (rc != KS_OK)
        return rc;
    if ((rc = keep(t, r)) != KS_OK)
        return rc;
    c->batch = r;
    c->row = 0;
    c->n = pq.ntuples(r);
    c->last_batch = bounded || c->n < limit;
    return KS_OK;
}

/* The entry at the batch's current row. */
static int cur_here(ks_bcur *c, ks_bval *key, ks_bval *val)
{
    if (c->row >= c->n) {
        c->positioned = false;
        return KS_ENOTFOUND;
    }
    c->key = (ks_bval){(const uint8_t *)pq.getvalue(c->batch, c->row, 0), (size_t)pq.getlength(c->batch, c->row, 0)};
    c->val = (ks_bval){(const uint8_t *)pq.getvalue(c->batch, c->row, 1), (size_t)pq.getlength(c->batch, c->row, 1)};
    c->positioned = true;
    *key = c->key;
    *val = c->val;
    return KS_OK;
}

static int pg_cur_open(ks_btxn *t, ks_table tab, ks_bcur **out)
{
    ks_bcur *c = calloc(1, sizeof(*c));
    if (!c)
        return KS_ENOMEM;
    c->t = t;
    c->tab = tab;
    *out = c;
    return KS_OK;
}

static int pg_cur_seek(ks_bcur *c, int how, const void *k, size_t kl, ks_bval *key, ks_bval *val)
{
    static const int q[] = {[KS_BSEEK_FIRST] = Q_FIRST, [KS_BSEEK_LAST] = Q_LAST, [KS_BSEEK_GE] = Q_GE,
                            [KS_BSEEK_KEY] = Q_KEY};
    c->batch = NULL;
    int rc = cur_fetch(c, q[how], k, kl, NULL, 0);
    if (rc != KS_OK)
        return rc;
    return cur_here(c, key, val);
}

static int pg_cur_next(ks_bcur *c, bool same_key, ks_bval *key, ks_bval *val)
{
    if (!c->positioned)
        return KS_ENOTFOUND;
    ks_bval at = c->key, atv = c->val;
    c->row++;
    if (c->row >= c->n) {
        if (c->last_batch) {
            c->positioned = false;
            return KS_ENOTFOUND;
        }
        bool idx = c->tab == KS_TAB_INDEX;
        int rc = cur_fetch(c, idx && same_key ? Q_AFTER_SAME : Q_AFTER, at.p, at.n, atv.p, atv.n);
        if (rc != KS_OK)
            return rc;
    }
    ks_bval k, v;
    int rc = cur_here(c, &k, &v);
    if (rc != KS_OK)
        return rc;
    if (same_key && (k.n != at.n || memcmp(k.p, at.p, at.n) != 0)) {
        c->row--; /* stay on the last value of the key */
        c->key = at;
        c->val = atv;
        return KS_ENOTFOUND;
    }
    *key = k;
    *val = v;
    return KS_OK;
}

static int pg_cur_replace(ks_bcur *c, const void *k, size_t kl, const void *v, size_t vl)
{
    if (!c->positioned || c->tab == KS_TAB_INDEX)
        return KS_EINVAL;
    return pg_put(c->t, c->tab, k, kl, v, vl);
}

static void pg_cur_close(ks_bcur *c) { free(c); }

/* ---- opening --------------------------------------------------------------------- */

/* A keystore directory of an LMDB keystore is not silently paired with a
 * database: the configuration would hide the data from its users. */
static int pg_check_location(const char *dir, ks_err *err)
{
    char p[4200];
    struct stat sb;
    snprintf(p, sizeof(p), "%s/data.mdb", dir);
    if (lstat(p, &sb) == 0) {
        ks_err_set(err, "keystore directory %s holds an LMDB keystore (data.mdb), but the configuration says "
                        "backend = postgresql; move its objects with p11mk-admin backup and restore, or set "
                        "backend = lmdb", dir);
        return KS_ECONFIG;
    }
    return KS_OK;
}

static void pg_close(ks_benv *e)
{
    if (!e)
        return;
    if (e->listening) {
        ssize_t w = write(e->stop[1], "x", 1);
        (void)w;
        if (!e->exit_joined) /* a C_Finalize from an exit handler after listeners_at_exit */
            pthread_join(e->listener, NULL);
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old); /* no forking handler while listeners_mx is held */
        pthread_mutex_lock(&listeners_mx);
        for (ks_benv **p = &listeners; *p; p = &(*p)->next_listener)
            if (*p == e) {
                *p = e->next_listener;
                break;
            }
        pthread_mutex_unlock(&listeners_mx);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (e->stop[0] >= 0)
        close(e->stop[0]);
    if (e->stop[1] >= 0)
        close(e->stop[1]);
    for (int i = 0; i < e->nidle; i++)
        pq.finish(e->idle[i]);
    pthread_mutex_destroy(&e->pool_lock);
    pthread_mutex_destroy(&e->work);
    if (e->local)
        munmap((void *)e->local, 64);
    if (e->conninfo)
        OPENSSL_cleanse(e->conninfo, strlen(e->conninfo));
    free(e->conninfo);
    free(e->path);
    free(e);
}

/* Which of the tables exist, and the schema's version. */
/* Which of p11mk's tables the database holds and the schema's version
 * (in one snapshot). KS_OK with *have set, or KS_EIO with the reason in
 * err; a connection lost on the way (its backend terminated just after it
 * was made) is given up for another, as txn_begin does. */
static int probe_read(ks_benv *e, char *db, size_t dbn, int *have, int *version, ks_err *err)
{
    static const char sql[] =
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT (to_regclass('p11mk_schema') IS NOT NULL)::int + "
        "(to_regclass('p11mk_seq') IS NOT NULL)::int + (to_regclass('p11mk_rec') IS NOT NULL)::int + "
        "(to_regclass('p11mk_idx') IS NOT NULL)::int + (to_regclass('p11mk_hosts') IS NOT NULL)::int";
    for (int attempt = 0; attempt <= RESUMES_MAX; attempt++) {
        char why[256];
        PGconn *c = conn_take(e);
        if (!c && !(c = connect_new(e, why, sizeof(why)))) {
            ks_err_set(err, "keystore %s: cannot connect to its PostgreSQL database: %s; check the postgresql = "
                            "connection string in the configuration, the credentials (~/.pgpass, a service file) "
                            "and that the server runs", e->path, why);
            return KS_EIO;
        }
        *have = *version = -1;
        PGresult *r = pq.exec(c, sql);
        if (r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1)
            *have = atoi(pq.getvalue(r, 0, 0));
        if (r)
            pq.clear(r);
        if (*have == 5) {
            r = pq.exec(c, "SELECT version FROM p11mk_schema");
            if (r && pq.resultStatus(r) == PGRES_TUPLES_OK)
                *version = pq.ntuples(r) == 1 ? atoi(pq.getvalue(r, 0, 0)) : -2; /* -2: not one row */
            if (r)
                pq.clear(r);
        }
        bool done = *have >= 0 && (*have != 5 || *version != -1);
        snprintf(db, dbn, "%s", pq.db(c) ? pq.db(c) : "?");
        if (done || pq.status(c) == CONNECTION_OK) {
            if (!done)
                ks_err_set(err, "keystore %s: cannot read its PostgreSQL database's tables: %.*s", e->path,
                           (int)strcspn(pq.errorMessage(c), "\n"), pq.errorMessage(c));
            r = pq.exec(c, "ROLLBACK");
            bool clean = r && pq.resultStatus(r) == PGRES_COMMAND_OK;
            if (r)
                pq.clear(r);
            conn_give(e, c, !clean);
            return done ? KS_OK : KS_EIO;
        }
        ks_err_set(err, "keystore %s: lost the connection to its PostgreSQL database while reading its tables: %.*s",
                   e->path, (int)strcspn(pq.errorMessage(c), "\n"), pq.errorMessage(c));
        conn_give(e, c, true);
    }
    return KS_EIO;
}

static int probe(ks_benv *e, bool *tables, ks_err *err)
{
    int have, v;
    char db[128];
    int rc = probe_read(e, db, sizeof(db), &have, &v, err);
    /* Five tables but not one version row: another process's creation may
     * have committed between this transaction's snapshot and its catalog
     * look-ups (to_regclass reads the catalog as of now, the SELECT as of
     * the snapshot: seen as "no version row" by one of 8 processes opening
     * a new database at once, test_pin_lockout initrace). The tables and
     * the row commit together, so a fresh snapshot sees the row; a table
     * that is still empty is damage. */
    for (int again = 0; again < 3 && rc == KS_OK && have == 5 && v < 0; again++) {
        struct timespec t = {0, 20000000};
        nanosleep(&t, NULL);
        rc = probe_read(e, db, sizeof(db), &have, &v, err);
    }
    if (rc != KS_OK)
        return rc;
    if (have == 0) {
        *tables = false;
        atomic_store(&e->tables, false);
    } else if (have < 5) {
        ks_err_set(err, "keystore %s: its PostgreSQL database %s holds only %d of p11mk's 5 tables (p11mk_schema, "
                        "p11mk_seq, p11mk_rec, p11mk_idx, p11mk_hosts); nothing was changed: restore the database "
                        "from a backup",
                   e->path, db, have);
        rc = KS_ECORRUPT;
    } else if (v != SCHEMA_VERSION) {
        if (v < 0)
            ks_err_set(err, "keystore %s: the p11mk_schema table of PostgreSQL database %s has no single version "
                            "row; nothing was changed: restore the database from a backup", e->path, db);
        else
            ks_err_set(err, "keystore %s: PostgreSQL database %s holds p11mk schema version %d; this p11mk reads "
                            "version %d only: use the p11mk that made it%s", e->path, db, v, SCHEMA_VERSION,
                       v > SCHEMA_VERSION ? " (or a newer one)" : "");
        rc = v < 0 ? KS_ECORRUPT : KS_EVERSION;
    } else {
        *tables = true;
        atomic_store(&e->tables, true);
    }
    return rc;
}

static int pg_open(const char *path, const char *target, unsigned flags, bool *rdonly, bool *tables, ks_benv **out,
                   ks_err *err)
{
    *out = NULL;
    if (!target || !*target) {
        ks_err_set(err, "backend = postgresql needs a connection string: add postgresql = <libpq connection "
                        "string> to the configuration");
        return KS_ECONFIG;
    }
    if (!pq_ready(err))
        return KS_EIO;
    ks_benv *e = calloc(1, sizeof(*e));
    if (!e)
        return KS_ENOMEM;
    e->stop[0] = e->stop[1] = -1;
    e->pid = getpid();
    if (pthread_mutex_init(&e->pool_lock, NULL) != 0) {
        free(e);
        return KS_ENOMEM;
    }
    if (pthread_mutex_init(&e->work, NULL) != 0) {
        pthread_mutex_destroy(&e->pool_lock);
        free(e);
        return KS_ENOMEM;
    }
    if (!(e->path = strdup(path)) || !(e->conninfo = strdup(target))) {
        pg_close(e);
        return KS_ENOMEM;
    }
    int rc = probe(e, tables, err);
    if (rc != KS_OK) {
        pg_close(e);
        return rc;
    }
    local_map(e);
    (void)rdonly; /* the database decides: a refused write reports KS_EPERM or KS_EROFS */
    /* The listener starts once the tables exist (it reads p11mk_seq); the
     * commit that creates them starts it for a new keystore. */
    if (*tables && !(flags & KS_OPEN_NO_THREADS))
        listen_start(e);
    *out = e;
    return KS_OK;
}

/* An application that exits without C_Finalize (many do) while a listener
 * connects: exit() runs OpenSSL's atexit cleanup, then the destructors of
 * libpq and what it loaded, under the listener's feet (seen: SIGSEGV at
 * exit in test_pg_terminate under ASan, a run that returned from main
 * without C_Finalize while the server cut connections). This process's
 * listeners are stopped and joined first: registered when the first one
 * starts, after OpenSSL and libpq were loaded, so that it runs before their
 * cleanups (atexit runs in reverse order; the module stays mapped, -z
 * nodelete). A fork child leaves its parent's alone (not its threads, and
 * their stop pipes are shared). Bounded: a listener still running after 2 s
 * is left; a thread holding the list (exit from inside an operation) leaves
 * them all. */
static void listeners_at_exit(void)
{
    if (pthread_mutex_trylock(&listeners_mx) != 0)
        return;
    pid_t me = getpid();
    for (ks_benv *e = listeners; e; e = e->next_listener)
        if (e->listening && e->listener_pid == me) {
            ssize_t w = write(e->stop[1], "x", 1);
            (void)w;
        }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2;
    for (ks_benv *e = listeners; e; e = e->next_listener)
        if (e->listening && e->listener_pid == me && !e->exit_joined)
            e->exit_joined = pthread_timedjoin_np(e->listener, NULL, &until) == 0;
    pthread_mutex_unlock(&listeners_mx);
}
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static void exit_register(void) { (void)atexit(listeners_at_exit); }

static void listen_start(ks_benv *e)
{
    if (e->listening || pipe2(e->stop, O_CLOEXEC) != 0)
        return;
    ks_pg_process_setup(); /* the fork handler (the module's ks_process_setup made it already) */
    /* Signals go to the application's threads, not to ours. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_once(&exit_once, exit_register);
    pthread_mutex_lock(&listeners_mx);
    e->listening = pthread_create(&e->listener, NULL, listen_main, e) == 0;
    if (e->listening) {
        e->listener_pid = getpid();
        e->next_listener = listeners;
        listeners = e;
    }
    pthread_mutex_unlock(&listeners_mx);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!e->listening)
        ks_log(KS_LOG_WARN, "keystore %s: no notification thread (%s): every operation reads its key's state "
                            "through the database", e->path, strerror(errno));
}

static const char schema_sql[] =
    "CREATE TABLE p11mk_schema (version integer NOT NULL);"
    "INSERT INTO p11mk_schema VALUES (1);"
    "CREATE TABLE p11mk_seq (one boolean PRIMARY KEY DEFAULT true CHECK (one), seq bigint NOT NULL);"
    "INSERT INTO p11mk_seq (seq) VALUES (1);"
    "CREATE TABLE p11mk_rec (t smallint NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (t, k));"
    "CREATE TABLE p11mk_idx (k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (k, v));"
    "CREATE TABLE p11mk_hosts (name text PRIMARY KEY, install bytea NOT NULL, info bytea NOT NULL, "
    "seen timestamptz NOT NULL);";

static int pg_create_tables(ks_btxn *t)
{
    if (!t->creating)
        return KS_EINVAL;
    /* Under the creation lock: another host may have made it meanwhile. A
     * scan of pg_class with this statement's snapshot sees what committed
     * while we waited (to_regclass goes through a cache that waiting on an
     * advisory lock does not refresh). */
    PGresult *r = pq.exec(t->c, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'p11mk_seq' AND "
                                "relnamespace = current_schema()::regnamespace)");
    int rc = check(t, r, "looking for the schema");
    if (rc != KS_OK)
        return rc;
    bool exists = pq.ntuples(r) == 1 && strcmp(pq.getvalue(r, 0, 0), "t") == 0;
    pq.clear(r);
    if (exists) {
        ks_log(KS_LOG_INFO, "keystore %s: another p11mk created the keystore in this PostgreSQL database at the "
                            "same time: opening that one", t->e->path);
        atomic_store(&t->e->tables, true);
        return KS_EEXIST;
    }
    _Static_assert(SCHEMA_VERSION == 1, "schema_sql writes version 1");
    if ((rc = exec_ok(t, schema_sql, "creating the schema")) != KS_OK) {
        if (rc == KS_EEXIST)
            atomic_store(&t->e->tables, true);
        return rc;
    }
    t->seq = 1;
    return KS_OK;
}

static uint64_t pg_size(ks_benv *e)
{
    PGconn *c = conn_take(e);
    uint64_t n = 0;
    if (!c)
        return 0;
    PGresult *r = pq.exec(c, "SELECT pg_total_relation_size('p11mk_rec') + pg_total_relation_size('p11mk_idx')");
    if (r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1)
        n = be64_text(pq.getvalue(r, 0, 0));
    if (r)
        pq.clear(r);
    conn_give(e, c, false);
    return n;
}

static uint64_t pg_commit_seq(ks_benv *e)
{
    uint64_t v = atomic_load_explicit(&e->seq, memory_order_acquire);
    if (!v || now_ms() > atomic_load_explicit(&e->alive_ms, memory_order_relaxed) + FRESH_MS)
        return 0; /* not known, or not heard from the server lately */
    return numbered(atomic_load_explicit(&e->inc, memory_order_acquire), v, local_now(e));
}

/* ---- the lifecycle lock ------------------------------------------------------------
 * A session advisory lock on a connection of its own: the server releases
 * it when the holder's connection ends, however the holder ended. */

#define ROT_LOCK "7011160200"

static int pg_lock_global(ks_benv *e, const char *who, void **h, char *holder, size_t n)
{
    PGconn *c = *h;
    holder[0] = '\0';
    if (!c) {
        char why[256];
        if (!(c = connect_new(e, why, sizeof(why)))) {
            snprintf(holder, n, "cannot connect to the database: %s", why);
            return KS_EIO;
        }
        *h = c;
        const char *v[1] = {who};
        PGresult *r = pq.execParams(c, "SELECT set_config('application_name', left($1, 63), false)", 1, NULL, v,
                                    NULL, NULL, 0);
        if (r)
            pq.clear(r);
    }
    PGresult *r = pq.exec(c, "SELECT pg_try_advisory_lock(" ROT_LOCK ")");
    int rc = KS_EIO;
    if (r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1)
        rc = strcmp(pq.getvalue(r, 0, 0), "t") == 0 ? KS_OK : KS_EBUSY;
    else
        snprintf(holder, n, "cannot take the lock: %.*s", (int)strcspn(pq.errorMessage(c), "\n"), pq.errorMessage(c));
    if (r)
        pq.clear(r);
    if (rc == KS_EBUSY) {
        r = pq.exec(c, "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l JOIN "
                       "pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND "
                       "((l.classid::bigint << 32) | l.objid::bigint) = " ROT_LOCK " AND l.objsubid = 1");
        if (r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) >= 1)
            snprintf(holder, n, "%s, connected since %.19s", pq.getvalue(r, 0, 0), pq.getvalue(r, 0, 2));
        else
            snprintf(holder, n, "a p11mk on another host");
        if (r)
            pq.clear(r);
    }
    return rc;
}

static void pg_unlock_global(void *h)
{
    if (h)
        pq.finish(h); /* ends the session: the lock goes with it */
}

/* PIN attempts on one token, across the fleet: a session advisory lock
 * (two-key form, its own space: it never meets ROT_LOCK) held on a pooled
 * connection for the attempt, released by pg_advisory_unlock before the
 * connection goes back, or with the connection when it broke. The hosts'
 * file locks serialize each host's processes; this, the hosts: without it,
 * as many attempts as hosts were in flight at once, and each reserved a try
 * (so ten hosts logging in together locked a right PIN, and a right PIN
 * whose record another host's reservation changed was refused). */
#define ATTEMPT_LOCK_SPACE "701116021"

static void attempt_sql(char *sql, size_t n, const char *fn, uint32_t token_id)
{
    snprintf(sql, n, "SELECT %s(" ATTEMPT_LOCK_SPACE ", %" PRId32 ")", fn, (int32_t)token_id);
}

static int pg_lock_attempts(ks_benv *e, uint32_t token_id, unsigned wait_ms, void **h)
{
    char sql[96];
    unsigned waited = 0, step = 1;
    PGconn *c = conn_take(e);

    *h = NULL;
    if (!c)
        return KS_EIO;
    attempt_sql(sql, sizeof(sql), "pg_try_advisory_lock", token_id);
    for (;;) {
        PGresult *r = pq.exec(c, sql);
        int rc = KS_EIO;
        if (r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1)
            rc = strcmp(pq.getvalue(r, 0, 0), "t") == 0 ? KS_OK : KS_EBUSY;
        else
            ks_log(KS_LOG_ERROR, "keystore %s: cannot take the PIN attempt lock of token %" PRIu32 ": %.*s", e->path,
                   token_id, (int)strcspn(r ? pq.resultErrorMessage(r) : pq.errorMessage(c), "\n"),
                   r ? pq.resultErrorMessage(r) : pq.errorMessage(c));
        if (r)
            pq.clear(r);
        if (rc == KS_OK) {
            *h = c;
            return KS_OK;
        }
        if (rc != KS_EBUSY || waited >= wait_ms) {
            conn_give(e, c, rc != KS_EBUSY);
            return rc;
        }
        usleep(step * 1000u);
        waited += step;
        step = step < 16 ? step * 2 : 16;
    }
}

static void pg_unlock_attempts(ks_benv *e, uint32_t token_id, void *h)
{
    char sql[96];
    PGconn *c = h;

    attempt_sql(sql, sizeof(sql), "pg_advisory_unlock", token_id);
    PGresult *r = pq.exec(c, sql);
    bool ok = r && pq.resultStatus(r) == PGRES_TUPLES_OK && pq.ntuples(r) == 1 && strcmp(pq.getvalue(r, 0, 0), "t") == 0;
    if (r)
        pq.clear(r);
    conn_give(e, c, !ok); /* not released here: ending the session releases it */
}

/* ---- hosts --------------------------------------------------------------------------- */

/* A statement outside any transaction, on a pooled connection. */
static PGresult *pool_exec(ks_benv *e, const char *sql, int n, const char *const *v, const int *l, const int *f,
                           bool *ok)
{
    PGconn *c = conn_take(e);
    *ok = false;
    if (!c)
        return NULL;
    PGresult *r = pq.execParams(c, sql, n, NULL, v, l, f, 1);
    ExecStatusType st = r ? pq.resultStatus(r) : PGRES_FATAL_ERROR;
    *ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!*ok)
        ks_log(KS_LOG_ERROR, "keystore %s: PostgreSQL: %.*s", e->path,
               (int)strcspn(r ? pq.resultErrorMessage(r) : pq.errorMessage(c), "\n"),
               r ? pq.resultErrorMessage(r) : pq.errorMessage(c));
    conn_give(e, c, pq.status(c) != CONNECTION_OK);
    return r;
}

static int pg_host_put(ks_benv *e, const char *name, const uint8_t install[16], const void *v, size_t vl)
{
    const char *p[3] = {name, (const char *)install, v};
    int l[3] = {0, 16, (int)vl}, f[3] = {0, 1, 1};
    bool ok;
    PGresult *r = pool_exec(e, "INSERT INTO p11mk_hosts (name, install, info, seen) VALUES ($1, $2, $3, now()) "
                               "ON CONFLICT (name) DO UPDATE SET info = EXCLUDED.info, seen = EXCLUDED.seen "
                               "WHERE p11mk_hosts.install = EXCLUDED.install", 3, p, l, f, &ok);
    int rc = !ok ? KS_EIO : strcmp(pq.cmdTuples(r), "0") == 0 ? KS_EEXIST : KS_OK;
    if (r)
        pq.clear(r);
    return rc;
}

static int pg_host_del(ks_benv *e, const char *name)
{
    const char *p[1] = {name};
    bool ok;
    PGresult *r = pool_exec(e, "DELETE FROM p11mk_hosts WHERE name = $1", 1, p, NULL, NULL, &ok);
    int rc = !ok ? KS_EIO : strcmp(pq.cmdTuples(r), "0") == 0 ? KS_ENOTFOUND : KS_OK;
    if (r)
        pq.clear(r);
    return rc;
}

static int pg_host_list(ks_benv *e, ks_host_row **out, size_t *n)
{
    bool ok;
    *out = NULL;
    *n = 0;
    PGresult *r = pool_exec(e, "SELECT name, info, extract(epoch FROM seen)::bigint FROM p11mk_hosts ORDER BY name",
                            0, NULL, NULL, NULL, &ok);
    if (!ok) {
        if (r)
            pq.clear(r);
        return KS_EIO;
    }
    int rows = pq.ntuples(r);
    size_t bytes = (size_t)rows * sizeof(ks_host_row);
    for (int i = 0; i < rows; i++)
        bytes += (size_t)pq.getlength(r, i, 0) + 1 + (size_t)pq.getlength(r, i, 1);
    uint8_t *mem = calloc(1, bytes ? bytes : 1);
    if (!mem) {
        pq.clear(r);
        return KS_ENOMEM;
    }
    ks_host_row *h = (ks_host_row *)mem;
    uint8_t *p = mem + (size_t)rows * sizeof(ks_host_row);
    for (int i = 0; i < rows; i++) {
        size_t nl = (size_t)pq.getlength(r, i, 0), vl = (size_t)pq.getlength(r, i, 1);
        memcpy(p, pq.getvalue(r, i, 0), nl);
        p[nl] = 0;
        h[i].name = (const char *)p;
        p += nl + 1;
        memcpy(p, pq.getvalue(r, i, 1), vl);
        h[i].v = (ks_bval){p, vl};
        p += vl;
        h[i].seen = pq.getlength(r, i, 2) == 8 ? ks_get_be64(pq.getvalue(r, i, 2)) : 0;
    }
    pq.clear(r);
    *out = h;
    *n = (size_t)rows;
    return KS_OK;
}

/* ---- copies ------------------------------------------------------------------------
 * A backup is the same file as an LMDB keystore's (ks_backend_copy_to_lmdb):
 * one read snapshot of every table, written into a fresh LMDB environment. */

static int pg_copy(ks_benv *e, int fd, int *sys_err, char *why, size_t n)
{
    return ks_backend_copy_to_lmdb(&ks_pg_backend, e, fd, sys_err, why, n);
}

const ks_backend_ops ks_pg_backend = {
    .name = "postgresql",
    .check_location = pg_check_location,
    .open = pg_open,
    .close = pg_close,
    .create_tables = pg_create_tables,
    .size = pg_size,
    .commit_seq = pg_commit_seq,
    .read_begin = pg_read_begin,
    .read_end = pg_read_end,
    .snapshot = pg_snapshot,
    .write_begin = pg_write_begin,
    .commit = pg_commit,
    .abort = pg_abort,
    .make_room = pg_make_room,
    .lost = pg_lost,
    .get = pg_get,
    .put = pg_put,
    .del = pg_del,
    .del_prefix = pg_del_prefix,
    .count = pg_count,
    .dup_add = pg_dup_add,
    .dup_del = pg_dup_del,
    .dup_has = pg_dup_has,
    .cur_open = pg_cur_open,
    .cur_seek = pg_cur_seek,
    .cur_next = pg_cur_next,
    .cur_replace = pg_cur_replace,
    .cur_close = pg_cur_close,
    .lock_global = pg_lock_global,
    .unlock_global = pg_unlock_global,
    .lock_attempts = pg_lock_attempts,
    .unlock_attempts = pg_unlock_attempts,
    .host_put = pg_host_put,
    .host_list = pg_host_list,
    .host_del = pg_host_del,
    .copy = pg_copy,
    .check_copy = NULL,    /* restore brings an LMDB file: ks_lmdb_backend's */
    .peek_counters = NULL, /* restore into PostgreSQL is not built (ks_backup.c refuses it) */
};
