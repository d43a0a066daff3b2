/* C_WaitForSlotEvent takes its event lock (ev.lock, p11_event.c) outside
 * the fork gate. A fork child whose parent was initialized re-makes that
 * lock in C_Initialize (forget_parent -> p11_events_forget); a child whose
 * parent was NOT initialized at the fork did not, and its C_Initialize
 * waited for ever in p11_events_start on the lock a parent thread held at
 * the fork. Now any fork child re-makes it (p11_state_fork_child).
 *
 * The interleaving (made deterministic by interposing pthread_mutex_lock,
 * the executable exports it; only the waiter thread's calls stop):
 *   waiter: C_WaitForSlotEvent(CKF_DONT_BLOCK): p11_initialized() passes,
 *           stops before pthread_mutex_lock(&ev.lock)
 *   main:   C_Finalize (complete)
 *   waiter: locks ev.lock (sees no watch, will return NOT_INITIALIZED),
 *           stops while holding it
 *   main:   fork(); the child calls C_Initialize (alarm 10 s)
 * Exits 1 if the child hangs (or fails), 0 otherwise. */
#include "common.h"

#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/wait.h>

static __thread int hook; /* 1: stop before the next lock, 2: after it */
static sem_t stopped, go;
static int (*real_lock)(pthread_mutex_t *);

__attribute__((visibility("default"))) int pthread_mutex_lock(pthread_mutex_t *m)
{
    if (hook == 1) {
        hook = 2;
        sem_post(&stopped);
        while (sem_wait(&go) != 0) {}
    }
    int rc = real_lock(m);
    if (hook == 2) {
        hook = 0;
        sem_post(&stopped);
        while (sem_wait(&go) != 0) {}
    }
    return rc;
}

static CK_RV wait_rv = 0xffff;
static void *waiter(void *arg)
{
    CK_SLOT_ID s;
    (void)arg;
    hook = 1;
    wait_rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL);
    hook = 0;
    return NULL;
}

int main(void)
{
    pthread_t tw;
    int st;
    pid_t c;

    real_lock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_lock");
    sem_init(&stopped, 0, 0);
    sem_init(&go, 0, 0);
    setup();
    alarm(60);
    pthread_create(&tw, NULL, waiter, NULL);
    while (sem_wait(&stopped) != 0) {} /* before ev.lock, initialized seen */
    CHECK(f->C_Finalize(NULL));
    sem_post(&go);
    while (sem_wait(&stopped) != 0) {} /* ev.lock held by the waiter */
    c = fork();
    if (c == 0) {
        hung_message = "event_lock_fork: the child's C_Initialize hung (ev.lock inherited held)";
        signal(SIGALRM, on_hang_alarm);
        alarm(10);
        CK_RV rv = f->C_Initialize(NULL);
        if (rv != CKR_OK) {
            fprintf(stderr, "child: C_Initialize -> 0x%lx\n", (unsigned long)rv);
            _exit(3);
        }
        f->C_Finalize(NULL);
        _exit(0);
    }
    sem_post(&go);
    pthread_join(tw, NULL);
    alarm(0);
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "event_lock_fork: child %s %d (waiter returned 0x%lx)\n",
                WIFSIGNALED(st) ? "killed by signal" : "exited", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
                (unsigned long)wait_rv);
        teardown();
        return 1;
    }
    printf("event_lock_fork: child initialized fine (waiter returned 0x%lx)\n", (unsigned long)wait_rv);
    teardown();
    return 0;
}
