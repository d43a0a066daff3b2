/* A fork made inside a module call, on the calling thread: here from the
 * application's LockMutex callback (a signal handler could do the same).
 * The fork gate's prepare handler waited for every call in the module to
 * leave, this thread's own too, which never would: the fork hung for ever,
 * with the gate shut for every other thread. Now the forking thread's own
 * calls are not waited for. The child leaves at once (_exit from the
 * callback); the parent's call must go on and succeed, and a fork
 * afterwards, from outside any call, must work too (the counts are right).
 * Exits 1 on a violation. */
#include "common.h"
#include "interleave.h"

#include <signal.h>
#include <sys/wait.h>

static __thread int fork_at_lock; /* fork at the next lock of the global lock */
static _Atomic int forks_done;

static CK_RV forking_lock(void *p)
{
    if (fork_at_lock && p == il_global) {
        fork_at_lock = 0;
        pid_t c = fork();
        if (c == 0)
            _exit(0);
        if (c > 0 && waitpid(c, NULL, 0) == c)
            forks_done++;
    }
    return il_lock(p);
}

/* A thread whose very first call forks inside: that call counted in the
 * gate's shared counter (spill) until it took its thread's record. */
static void *first_call(void *arg)
{
    CK_SESSION_HANDLE s;
    (void)arg;
    fork_at_lock = 1;
    if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK || f->C_CloseSession(s) != CKR_OK)
        return (void *)1;
    return NULL;
}

int main(void)
{
    CK_C_INITIALIZE_ARGS args = il_args;
    CK_SESSION_HANDLE s;
    CK_TOKEN_INFO ti;
    int bad = 0, st;
    pid_t c;

    args.LockMutex = forking_lock;
    il_init();
    hung_message = "fork_in_callback: a fork inside a call hung";
    signal(SIGALRM, on_hang_alarm);
    setup_args(NULL, &args);
    alarm(30);
    /* Twice: the first call of a thread may count outside its record. */
    for (int i = 0; i < 2; i++) {
        fork_at_lock = 1;
        CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
        if (rv != CKR_OK || f->C_CloseSession(s) != CKR_OK) {
            fprintf(stderr, "fork_in_callback: C_OpenSession 0x%lx\n", (unsigned long)rv);
            bad++;
        }
    }
    fork_at_lock = 1;
    if (f->C_GetTokenInfo(slot, &ti) != CKR_OK)
        bad++;
    pthread_t th;
    void *ret = NULL;
    pthread_create(&th, NULL, first_call, NULL);
    pthread_join(th, &ret);
    if (ret)
        bad++;
    c = fork(); /* from outside any call: the counts must be back at 0 */
    if (c == 0) {
        alarm(20);
        _exit(f->C_Initialize(NULL) == CKR_OK && f->C_Finalize(NULL) == CKR_OK ? 0 : 3);
    }
    if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bad++;
    alarm(0);
    printf("fork_in_callback: %d forks made inside calls, %s\n", forks_done, bad ? "VIOLATION" : "all returned");
    if (forks_done != 4)
        bad++;
    teardown();
    return bad != 0;
}
