/* fork() against C_Finalize while threads poll C_WaitForSlotEvent (a known
 * bug: the test fails until it is fixed). C_Finalize holds the fork gate
 * shared (p11_general.c) while p11_events_stop waits for every waiter to
 * leave; a waiter between its count (ev.waiters++) and its look at the
 * slots enters the gate (look(), p11_event.c); a fork that shut the gate
 * meanwhile waits for C_Finalize to leave it. The fork waits for C_Finalize,
 * C_Finalize for the waiter, the waiter for the fork: all three hang for
 * good (the fork's handler spinning in sched_yield).
 *
 * Threads call C_WaitForSlotEvent(CKF_DONT_BLOCK) in a loop until it says
 * CKR_CRYPTOKI_NOT_INITIALIZED; the main thread lets them run a few
 * milliseconds, calls C_Finalize, joins them, calls C_Initialize again;
 * another thread forks all the time (its children end at once). Expected:
 * no hang (a cycle that takes 8 s is one). Within the first few cycles
 * before the fix. SECS (default 8). Exits 1 on a hang. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

enum { NW = 3 };
static atomic_int stop;
static atomic_long forks, cycles;

static void *waiter(void *arg)
{
    (void)arg;
    for (;;) {
        CK_SLOT_ID s;
        CK_RV rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL);
        if (rv == CKR_CRYPTOKI_NOT_INITIALIZED)
            return NULL;
        if (rv != CKR_NO_EVENT && rv != CKR_OK) {
            fprintf(stderr, "fork_finalize_wait: C_WaitForSlotEvent 0x%lx\n", (unsigned long)rv);
            exit(2);
        }
    }
}

static void *forker(void *arg)
{
    (void)arg;
    while (!stop) {
        pid_t c = fork();
        if (c == 0)
            _exit(0);
        waitpid(c, NULL, 0);
        forks++;
    }
    return NULL;
}

/* A hang: say so, with where each thread stands when gdb is at hand
 * (system() spawns without the fork handlers, which would wait for ever). */
static void on_alarm(int sig)
{
    char m[200];
    int n;
    (void)sig;
    n = snprintf(m, sizeof(m),
                 "fork_finalize_wait: hung in cycle %ld (%ld forks); the module's frames of each thread:\n",
                 (long)cycles + 1, (long)forks);
    if (write(2, m, (size_t)n)) {}
    snprintf(m, sizeof(m),
             "gdb -p %d -batch -ex 'thread apply all bt 12' 2>/dev/null | grep -E '^Thread|p11_|fork_prepare|C_' >&2",
             (int)getpid());
    if (system(m)) {}
    _exit(1);
}

int main(void)
{
    int secs = getenv("SECS") ? atoi(getenv("SECS")) : 8;
    pthread_t w[NW], k;
    time_t end;

    setup();
    signal(SIGALRM, on_alarm);
    pthread_create(&k, NULL, forker, NULL);
    end = time(NULL) + secs;
    while (time(NULL) < end) {
        alarm(8);
        for (int i = 0; i < NW; i++)
            pthread_create(&w[i], NULL, waiter, NULL);
        usleep(3000);
        CHECK(f->C_Finalize(NULL));
        for (int i = 0; i < NW; i++)
            pthread_join(w[i], NULL);
        CHECK(f->C_Initialize(NULL));
        cycles++;
    }
    alarm(0);
    stop = 1;
    pthread_join(k, NULL);
    printf("fork_finalize_wait: %ld C_Finalize cycles under polling waiters, %ld forks: no hang\n", (long)cycles,
           (long)forks);
    teardown();
    return 0;
}
