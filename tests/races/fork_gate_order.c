/* The fork gate's order (p11_state.c): a call counts itself in its thread's
 * record, then looks whether a fork shut the gate; a fork shuts it, then
 * reads the records. Either the call sees the gate shut or the fork sees
 * the call, but only if each side's store comes before its load (the
 * fork's membarrier, or a sequentially consistent store). A miss is a
 * window of a few instructions, which threads calling at random seldom hit,
 * so this test aims at it.
 *
 * The calling thread meets the main thread right before it calls
 * C_CloseSession (whose wrapper passes the gate first thing, p11_entry.c);
 * the main thread forks at once, while the caller waits a while before it
 * calls (or the other way round): a while that the test moves, fork after
 * fork, to where the close passes the gate first half of the time, give or
 * take 100 ns: the instant the fork shuts the gate, hit thousands of times.
 * The application's mutexes (interleave.h) follow the close by its locks:
 * from its first (C_CloseSession's global lock, held 2 us longer there) to
 * the session's busy lock let go it is inside the gate. A pthread_atfork prepare handler
 * of the test, registered before the module's and so run after it (the gate
 * shut, no call inside), finds the close inside, or any session busy lock
 * held, during 3 us: a call at work past a shut gate; so does the child.
 * SECS (default 6). Exits 1 on a violation. */
#include "common.h"
#include "interleave.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

static atomic_int stop, ready, go;
static atomic_int entered; /* the close of this round took its first lock: it passed the gate */
static atomic_int in_gate; /* the close is between its first and last lock: inside the gate */
static atomic_int passed_first, breaches;
static atomic_long delay_ns; /* the closer's wait after the meeting (the fork's when < 0), moved to where the fork shuts the gate */
static double iters_per_ns = 1;
static __thread int phase;
static __thread unsigned seed = 12345;

static unsigned rnd(void)
{
    seed = seed * 1103515245u + 12345u;
    return seed >> 8;
}

static void spin(long n)
{
    for (volatile long i = 0; i < n; i++) {}
}

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void calibrate(void)
{
    long t0 = now_ns();
    spin(10000000);
    iters_per_ns = 10000000.0 / (double)(now_ns() - t0);
}

/* The closer's phases: 2, it called C_CloseSession; 3, the close's first
 * lock (the global lock: past the gate) until the session's busy lock is
 * let go (the close goes on inside the gate a little longer). */
static CK_RV meet_unlock(void *p)
{
    CK_RV rv = il_unlock(p);
    if (p != il_global && phase == 3) {
        in_gate = 0;
        phase = 0;
    }
    return rv;
}

static CK_RV slow_lock(void *p)
{
    if (p == il_global && phase == 2) {
        in_gate = 1;
        entered = 1;
        phase = 3;
        spin((long)(2000 * iters_per_ns)); /* a fork must wait for it */
    }
    return il_lock(p);
}

static void *closer(void *arg)
{
    (void)arg;
    while (!stop) {
        CK_SESSION_HANDLE s;
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
        long d = delay_ns + (long)(rnd() % 201) - 100;
        ready = 1; /* the meeting */
        while (!go && !stop) {
        }
        go = 0;
        if (d > 0)
            spin((long)(d * iters_per_ns));
        phase = 2;
        CHECK(f->C_CloseSession(s));
        if (phase == 3)
            in_gate = 0;
        phase = 0;
    }
    return NULL;
}

/* After the module's prepare handler: the gate is shut and no call is in
 * it. The close either finished before (it passed first: the fork waited
 * for it) or waits at the gate until the fork is over. */
static void shut_prepare(void)
{
    passed_first = entered;
    if (in_gate || il_busy_held)
        breaches++;
    il_gate_shut = 1;
    long t0 = now_ns();
    while (now_ns() - t0 < 3000) /* a close that passed the gate as it shut is at work now */
        if (in_gate) {
            breaches++;
            break;
        }
}
static void shut_end(void) { il_gate_shut = 0; }

int main(void)
{
    int secs = getenv("SECS") ? atoi(getenv("SECS")) : 6;
    long forks = 0, bad = 0, first = 0;
    pthread_t th;
    time_t end;
    CK_C_INITIALIZE_ARGS args = il_args;

    args.LockMutex = slow_lock;
    args.UnlockMutex = meet_unlock;
    calibrate();
    il_init();
    hung_message = "fork_gate_order: hung";
    signal(SIGALRM, on_hang_alarm);
    pthread_atfork(shut_prepare, shut_end, shut_end); /* before the module's (its first C_Initialize) */
    setup_args(NULL, &args);
    pthread_create(&th, NULL, closer, NULL);
    alarm(secs + 20);
    end = time(NULL) + secs;
    while (time(NULL) < end) {
        int st;
        while (!ready) {
        }
        ready = 0;
        entered = 0;
        long d = delay_ns + (long)(rnd() % 201) - 100;
        go = 1;
        if (d < 0)
            spin((long)(-d * iters_per_ns));
        pid_t c = fork();
        if (c == 0)
            _exit(il_busy_held || in_gate ? 10 : 0);
        forks++;
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st))
            bad++;
        /* Aim at the instant the gate shuts: later when the close passed first. */
        first += passed_first;
        delay_ns += passed_first ? 7 : -7;
    }
    stop = 1;
    pthread_join(th, NULL);
    alarm(0);
    printf("fork_gate_order: %ld forks met a close at the gate (it passed first %ld times; aimed %ld ns after the "
           "fork): %d closes at work in a shut gate, %ld children forked while a close was at work\n",
           forks, first, (long)delay_ns, (int)breaches, bad);
    teardown();
    return bad || breaches;
}
