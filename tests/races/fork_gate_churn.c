/* The fork gate (p11_state.c) while threads come and go: each thread counts
 * its calls in a record of its own, taken at its first call and given back
 * at its end for a later thread; a fork closes the gate and waits until
 * every record says no call is inside (ordered by membarrier, or by a
 * sequentially consistent store).
 *
 * Two long-lived threads generate random bytes and sign; a spawner starts
 * batches of 72 short-lived threads at once (more than 64 alive, records
 * reused batch after batch: each thread waits for the whole batch after
 * its first call), each opening a session, digesting, making and
 * destroying a session object, closing and ending; meanwhile the main thread
 * forks, and every second stops everything for a C_Finalize/C_Initialize
 * cycle; two more threads digest a few bytes in a loop (a pass through the
 * gate every microsecond or so). The application's mutexes (interleave.h)
 * count the session busy locks held, which only a call inside the gate
 * holds. A pthread_atfork prepare handler of the test, which runs after the
 * module's, finds none held or taken while it runs (20 us); each child
 * checks:
 *  - the count it inherited is 0 (no call was at work at the fork);
 *  - C_Initialize, a session, random bytes, a digest and C_Finalize all
 *    work within 10 s (a child that inherited a lock held in the module, or
 *    in OpenSSL under it, hangs: SIGALRM);
 *  - every 8th child also runs two threads of its own that digest, and
 *    forks a grandchild meanwhile, which must do the same (the child's
 *    gate: the parent's records given out again, membarrier registered
 *    again), and no call may be at work in the child's shut gate either;
 * and the parent must not hang either (30 s). SECS (default 8) sets the run.
 * Exits 1 on a violation. */
#include "common.h"
#include "interleave.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

enum { BATCH = 72 };
#ifdef __SANITIZE_THREAD__
static const bool deep_children = false; /* ThreadSanitizer: no threads after a multi-threaded fork */
#else
static const bool deep_children = true;
#endif

static atomic_int stop;
static atomic_long calls_done, threads_done;
static CK_OBJECT_HANDLE ecpriv;
static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

static void *long_lived(void *arg)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    static CK_BYTE rnd[2][16384];
    CK_BYTE d[32] = {1}, sig[80];
    long id = (long)arg;

    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
    while (!stop) {
        CK_ULONG l = sizeof(sig);
        CHECK(f->C_GenerateRandom(s, rnd[id], sizeof(rnd[id])));
        CHECK(f->C_SignInit(s, &m, ecpriv));
        CHECK(f->C_Sign(s, d, 32, sig, &l));
        calls_done += 3;
    }
    CHECK(f->C_CloseSession(s));
    return NULL;
}

/* Many short calls: many passes through the gate, each close to a fork's. */
static void *quick(void *arg)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0};
    CK_BYTE out[32];
    (void)arg;

    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
    while (!stop) {
        CK_ULONG l = sizeof(out);
        CHECK(f->C_DigestInit(s, &dg));
        CHECK(f->C_Digest(s, (CK_BYTE_PTR) "abc", 3, out, &l));
        calls_done += 2;
    }
    CHECK(f->C_CloseSession(s));
    return NULL;
}

static void *short_lived(void *arg)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0};
    CK_BYTE out[32];
    CK_ULONG l = sizeof(out);
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1}};
    CK_OBJECT_HANDLE o;

    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    CHECK(f->C_DigestInit(s, &dg)); /* the thread has its gate record */
    pthread_barrier_wait(arg);      /* the batch all at once: more than 64 records taken */
    CHECK(f->C_Digest(s, (CK_BYTE_PTR) "abc", 3, out, &l));
    CHECK(f->C_CreateObject(s, a, 2, &o));
    CHECK(f->C_DestroyObject(s, o));
    CHECK(f->C_CloseSession(s));
    calls_done += 6;
    threads_done++;
    return NULL;
}

static void *spawner(void *arg)
{
    pthread_attr_t at;
    (void)arg;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 256 * 1024);
    while (!stop) {
        pthread_t th[BATCH];
        pthread_barrier_t b;
        pthread_barrier_init(&b, NULL, BATCH);
        for (int i = 0; i < BATCH; i++)
            if (pthread_create(&th[i], &at, short_lived, &b) != 0) {
                fprintf(stderr, "fork_gate_churn: pthread_create\n");
                exit(2);
            }
        for (int i = 0; i < BATCH; i++)
            pthread_join(th[i], NULL);
        pthread_barrier_destroy(&b);
    }
    pthread_attr_destroy(&at);
    return NULL;
}

enum { NWORKERS = 5 };
static pthread_t workers[NWORKERS];

static void start_workers(void)
{
    stop = 0;
    pthread_create(&workers[0], NULL, long_lived, (void *)0L);
    pthread_create(&workers[1], NULL, long_lived, (void *)1L);
    pthread_create(&workers[2], NULL, spawner, NULL);
    pthread_create(&workers[3], NULL, quick, NULL);
    pthread_create(&workers[4], NULL, quick, NULL);
}

static void stop_workers(void)
{
    stop = 1;
    for (int i = 0; i < NWORKERS; i++)
        pthread_join(workers[i], NULL);
}

/* Registered before the module's handlers: this prepare handler runs after
 * the module's (the gate shut, no call inside), the parent and child ones
 * before the module's (the gate not open yet). A busy lock held or taken
 * meanwhile is a call inside the gate. */
static void shut_prepare(void)
{
    struct timespec t0, t;
    if (il_busy_held)
        atomic_fetch_add(&il_breaches, 1);
    il_gate_shut = 1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do /* 20 us: a call that passed the gate as it shut takes its busy lock */
        clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + t.tv_nsec - t0.tv_nsec < 20000);
    if (il_busy_held)
        atomic_fetch_add(&il_breaches, 1);
}
static void shut_end(void) { il_gate_shut = 0; }

/* A fork child's or grandchild's work with the module (0: all worked). */
static int use_module(CK_C_INITIALIZE_ARGS *args)
{
    CK_INFO info;
    CK_SESSION_HANDLE s;
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0};
    CK_BYTE rnd[64], out[32];
    CK_ULONG l = sizeof(out);

    if (f->C_GetInfo(&info) != CKR_CRYPTOKI_NOT_INITIALIZED)
        return 3;
    if (f->C_Initialize(args) != CKR_OK || f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return 4;
    if (f->C_GenerateRandom(s, rnd, sizeof(rnd)) != CKR_OK)
        return 5;
    if (f->C_DigestInit(s, &dg) != CKR_OK || f->C_Digest(s, (CK_BYTE_PTR) "abc", 3, out, &l) != CKR_OK)
        return 6;
    return 0;
}

static atomic_int child_stop;

static void *child_thread(void *arg)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0};
    CK_BYTE out[32];
    (void)arg;

    if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        _exit(7);
    while (!child_stop) {
        CK_ULONG l = sizeof(out);
        if (f->C_DigestInit(s, &dg) != CKR_OK || f->C_Digest(s, (CK_BYTE_PTR) "abc", 3, out, &l) != CKR_OK)
            _exit(8);
    }
    return NULL;
}

/* held: the busy locks held at the fork. deep: the child also runs threads
 * of its own (records of the parent's threads given out again) and forks
 * a grandchild meanwhile. */
static int child(int held, bool deep)
{
    int rc, st;
    pthread_t th[2];

    if (held)
        return 10;
    /* The child's own mutexes, counted afresh (the parent's are not its). */
    il_global = NULL;
    il_made = 0;
    for (int i = 0; i < 4097; i++)
        il_by_id[i] = NULL;
    il_breaches = 0;
    signal(SIGALRM, SIG_DFL); /* a hang ends the child: SIGALRM */
    alarm(10);
    if ((rc = use_module(&il_args)) != 0)
        return rc;
    if (deep) {
        for (int i = 0; i < 2; i++)
            pthread_create(&th[i], NULL, child_thread, NULL);
        usleep(1000);
        pid_t g = fork();
        if (g == 0) {
            signal(SIGALRM, SIG_DFL);
            alarm(10);
            _exit(il_breaches ? 12 : use_module(NULL));
        }
        if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st))
            return WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM ? 13 : 11;
        child_stop = 1;
        for (int i = 0; i < 2; i++)
            pthread_join(th[i], NULL);
        if (il_breaches)
            return 12;
    }
    f->C_Finalize(NULL);
    return 0;
}

static void make_key(void)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub;
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &no, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &no, 1}};
    CHECK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 3, &pub, &ecpriv));
}

int main(void)
{
    int secs = getenv("SECS") ? atoi(getenv("SECS")) : 8;
    int forks = 0, bad = 0, held = 0, hung = 0, cycles = 0;
    time_t end, next_cycle;

#ifdef __SANITIZE_ADDRESS__
    /* AddressSanitizer's allocator (GCC's libasan) takes no lock at fork:
     * a child waits for ever for an allocator lock that one of the many
     * threads of the parent held at the fork (seen in C_Finalize's free). */
    printf("fork_gate_churn: skipped under AddressSanitizer\n");
    return 77;
#endif
    il_init();
    hung_message = "fork_gate_churn: the parent hung";
    signal(SIGALRM, on_hang_alarm);
    pthread_atfork(shut_prepare, shut_end, shut_end); /* before the module's (its first C_Initialize) */
    setup_args(NULL, &il_args);
    make_key();
    start_workers();
    end = time(NULL) + secs;
    next_cycle = time(NULL) + 1;
    alarm(30);
    while (time(NULL) < end) {
        int st;
        pid_t c = fork();
        if (c == 0)
            _exit(child(atomic_load(&il_busy_held), deep_children && forks % 8 == 0));
        forks++;
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st)) {
            bad++;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 10)
                held++;
            else if ((WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) || (WIFEXITED(st) && WEXITSTATUS(st) == 13))
                hung++;
            else if (bad <= 5)
                fprintf(stderr, "fork %d: the child %s %d\n", forks, WIFSIGNALED(st) ? "died of signal" : "exited",
                        WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        }
        if (time(NULL) >= next_cycle) { /* records stay, module state goes */
            stop_workers();
            CHECK(f->C_Finalize(NULL));
            CHECK(f->C_Initialize(&il_args));
            CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
            make_key();
            start_workers();
            cycles++;
            next_cycle = time(NULL) + 1;
        }
    }
    stop_workers();
    alarm(0);
    printf("fork_gate_churn: %d forks, %ld short-lived threads, %ld calls, %d finalize cycles: %d children failed "
           "(%d forked while a call held its session, %d hung); %d calls at work in a shut gate\n",
           forks, (long)threads_done, (long)calls_done, cycles, bad, held, hung, (int)il_breaches);
    teardown();
    return bad != 0 || il_breaches != 0;
}
