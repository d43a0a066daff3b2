/* LMDB reader slots (the reader table of lock.mdb) under many threads. A
 * read transaction holds its slot only while it runs (per-thread reuse of
 * read transactions, which kept a slot for a thread's life, was tried and
 * reverted: this test caught it failing reads). Driven through the module:
 *  - short-lived threads: many more threads than the reader table has slots
 *    (MAX_READERS, 1022) each make one call that reads (C_GetTokenInfo) and
 *    exit; every call must work, and afterwards the reader table must hold
 *    no more entries of this process than before (a thread's exit gives its
 *    slot back: an application that makes short-lived threads would
 *    otherwise run out of readers, with MDB_NOTLS no reader is freed for a
 *    live process);
 *  - more live threads than the reader table has slots, each reading once
 *    and staying alive with its transaction parked: every read must work
 *    (a full table gives back the parked ones);
 *  - C_Finalize while other threads hold parked transactions, then
 *    C_Initialize and the same threads read again and exit;
 *  - a fork child: it reads with reader slots of its own pid and leaves
 *    the parent's parked transaction alone (aborting it there would free
 *    the parent's reader slot, mr_pid 0, under the parent's feet), and the
 *    parent still reads after it.
 * The reader table is counted by a forked process that opens the keystore
 * with LMDB itself (mdb_reader_list); the calling process keeps its fcntl
 * lock on lock.mdb, so that open never resets the table.
 * Exits 1 with the first violation. THREADS (default 1500) sets the number
 * of short-lived threads. */
#include "common.h"

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#define BATCH 4
#define PARKED 8

static atomic_int failed;
static char ksdir[96];

static void fail(const char *what, CK_RV rv)
{
    if (!atomic_exchange(&failed, 1))
        fprintf(stderr, "reader_slots: %s (rv 0x%lx)\n", what, (unsigned long)rv);
}

/* One call that begins a read transaction every time (the token record). */
static CK_RV one_read(void)
{
    CK_TOKEN_INFO ti;
    return f->C_GetTokenInfo(slot, &ti);
}

struct count_ctx {
    pid_t pid;
    int n;
};

static int count_line(const char *msg, void *arg)
{
    struct count_ctx *c = arg;
    int pid;
    if (sscanf(msg, "%d", &pid) == 1 && pid == (int)c->pid)
        c->n++;
    return 0;
}

/* Entries of the reader table held by pid, or -1. */
static int readers_of(pid_t pid)
{
    int st, fd[2], n = -1;
    if (pipe(fd) != 0)
        return -1;
    pid_t c = fork();
    if (c == 0) {
        MDB_env *env;
        struct count_ctx cc = {pid, 0};
        close(fd[0]);
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 8) || mdb_env_open(env, ksdir, MDB_RDONLY, 0600))
            _exit(1);
        if (mdb_reader_list(env, count_line, &cc) < 0)
            _exit(1);
        mdb_env_close(env);
        _exit(write(fd[1], &cc.n, sizeof(cc.n)) == sizeof(cc.n) ? 0 : 1);
    }
    close(fd[1]);
    if (c > 0 && read(fd[0], &n, sizeof(n)) != sizeof(n))
        n = -1;
    close(fd[0]);
    if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st))
        return -1;
    return n;
}

static void *short_lived(void *arg)
{
    (void)arg;
    CK_RV rv = one_read();
    if (rv != CKR_OK)
        fail("C_GetTokenInfo in a short-lived thread", rv);
    return NULL;
}

static void phase_short_lived(int threads)
{
    int before, after;
    CHECK(one_read()); /* this thread's own slot, before counting */
    before = readers_of(getpid());
    for (int i = 0; i < threads && !atomic_load(&failed); i += BATCH) {
        pthread_t th[BATCH];
        int n = 0;
        for (; n < BATCH && i + n < threads; n++)
            if (pthread_create(&th[n], NULL, short_lived, NULL) != 0) {
                fail("pthread_create", 0);
                break;
            }
        for (int j = 0; j < n; j++)
            pthread_join(th[j], NULL);
    }
    CHECK(one_read());
    after = readers_of(getpid());
    printf("%d short-lived threads: readers of this process %d before, %d after\n", threads, before, after);
    if (before < 0 || after < 0)
        fail("cannot count the reader table", 0);
    else if (after > before + 1)
        fail("reader slots of exited threads were not given back", 0);
}

/* ---- C_Finalize with transactions parked in other threads ---- */

static pthread_barrier_t bar;

static void *parked(void *arg)
{
    (void)arg;
    CK_RV rv = one_read();
    if (rv != CKR_OK)
        fail("C_GetTokenInfo before C_Finalize", rv);
    pthread_barrier_wait(&bar); /* parked: the transaction reset, the thread alive */
    pthread_barrier_wait(&bar); /* C_Finalize, C_Initialize done */
    for (int i = 0; i < 20; i++)
        if ((rv = one_read()) != CKR_OK) {
            fail("C_GetTokenInfo after C_Finalize + C_Initialize", rv);
            break;
        }
    return NULL;
}

static void phase_close_parked(void)
{
    pthread_t th[PARKED];
    int before = readers_of(getpid()), mid, after;
    pthread_barrier_init(&bar, NULL, PARKED + 1);
    for (int i = 0; i < PARKED; i++)
        if (pthread_create(&th[i], NULL, parked, NULL) != 0) {
            fail("pthread_create", 0);
            exit(1);
        }
    pthread_barrier_wait(&bar);
    mid = readers_of(getpid());
    CHECK(f->C_Finalize(NULL));
    CHECK(f->C_Initialize(NULL));
    pthread_barrier_wait(&bar);
    for (int i = 0; i < PARKED; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h));
    CHECK(one_read());
    after = readers_of(getpid());
    printf("C_Finalize with %d threads alive after a read: readers %d before, %d then, %d after\n", PARKED, before, mid,
           after);
    if (after < 0)
        fail("cannot count the reader table", 0);
    else if (after > before + 1)
        fail("reader slots of threads that read across C_Finalize were not given back", 0);
}

/* ---- more live threads than the reader table has slots ---- */

#define MANY 1100 /* > MAX_READERS (1022) */
static pthread_mutex_t many_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t many_cv = PTHREAD_COND_INITIALIZER;
static int many_read, many_go;

static void *many_one(void *arg)
{
    (void)arg;
    CK_RV rv = one_read();
    if (rv != CKR_OK)
        fail("C_GetTokenInfo with more live threads than reader slots", rv);
    pthread_mutex_lock(&many_mu); /* everyone stays alive, parked, until all have read */
    many_read++;
    pthread_cond_broadcast(&many_cv);
    while (!many_go)
        pthread_cond_wait(&many_cv, &many_mu);
    pthread_mutex_unlock(&many_mu);
    return NULL;
}

static void phase_many_live(void)
{
    static pthread_t th[MANY];
    pthread_attr_t at;
    int n = 0;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 256 << 10);
    for (; n < MANY; n++)
        if (pthread_create(&th[n], &at, many_one, NULL) != 0)
            break;
    pthread_mutex_lock(&many_mu);
    while (many_read < n)
        pthread_cond_wait(&many_cv, &many_mu);
    int parked_n = readers_of(getpid());
    many_go = 1;
    pthread_cond_broadcast(&many_cv);
    pthread_mutex_unlock(&many_mu);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_attr_destroy(&at);
    CHECK(one_read());
    if (n < MANY) /* not the module's failure: too few threads here to fill the table */
        printf("SKIP: only %d live threads could be made, not %d\n", n, MANY);
    else
        printf("%d live threads read, all alive until each had read (readers then: %d)\n",
               n, parked_n);
}

/* ---- fork ---- */

static int fork_child(void)
{
    CK_RV rv = f->C_Initialize(NULL);
    if (rv != CKR_OK)
        return 2;
    for (int i = 0; i < 5; i++)
        if (one_read() != CKR_OK)
            return 3;
    f->C_Finalize(NULL);
    return 0;
}

static void phase_fork(void)
{
    int st, before, after;
    CHECK(one_read()); /* the parent's transaction, parked in this thread */
    before = readers_of(getpid());
    pid_t c = fork();
    if (c == 0)
        _exit(fork_child());
    if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st)) {
        fprintf(stderr, "fork child: status 0x%x\n", st);
        fail("the fork child could not read with transactions of its own", 0);
        return;
    }
    /* The child left the parent's parked transaction alone: aborting it
     * there would free the parent's reader slot (mr_pid 0) under it. */
    after = readers_of(getpid());
    printf("fork: readers of the parent %d before, %d after the child\n", before, after);
    if (after != before)
        fail("the fork child touched the parent's reader slots", 0);
    CHECK(one_read());
}

int main(void)
{
    const char *e = getenv("THREADS");
    int threads = e ? atoi(e) : 1500;

    setup();
    snprintf(ksdir, sizeof(ksdir), "%s/ks", tmpd);
    phase_short_lived(threads);
    if (!atomic_load(&failed))
        phase_close_parked();
    if (!atomic_load(&failed))
        phase_many_live();
    if (!atomic_load(&failed))
        phase_fork();
    teardown();
    return atomic_load(&failed) != 0;
}
