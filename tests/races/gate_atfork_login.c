/* Hostile test of the fork gate: a call inside the gate that registers a
 * pthread_atfork handler deadlocks with a concurrent fork().
 *
 * glibc's fork() takes its atfork lock, then runs the prepare handlers
 * (the module's fork_prepare waits there for every call in the gate), and
 * releases it only after the parent handlers. pthread_atfork() takes that
 * same lock. The module calls pthread_atfork lazily from inside a gated
 * call: ks_attempt_lock -> pthread_once(attempt_once, attempt_setup) ->
 * pthread_atfork(NULL, NULL, attempt_fork_child), reached by the process's
 * first PIN check (C_Login, C_InitPIN/C_SetPIN, C_InitToken of an
 * initialized token). If another thread forks while that first C_Login is
 * inside the gate and before the registration, fork_prepare waits for the
 * C_Login, and the C_Login waits in pthread_atfork for the fork: both hang
 * for ever.
 *
 * Here: C_Login(SO) is stopped right after its session's busy lock (the
 * application's mutexes, interleave.h), inside the gate; another thread
 * forks (fork_prepare starts waiting); 300 ms later the C_Login goes on.
 * With CONTROL=1 in the environment, a first C_Login/C_Logout is done before
 * (the registration is then behind us) and the same interleaving must pass.
 * Exits 1 if the process hangs (alarm, 20 s). */
#include "common.h"
#include "interleave.h"

#include <signal.h>
#include <sys/wait.h>

static CK_RV login_rv = 0xffff;
static pid_t child_pid;
static atomic_int fork_returned;

static void *caller(void *arg)
{
    (void)arg;
    il_arm(IL_AFTER_LOCK, busy_of(h));
    login_rv = f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO));
    il_at = IL_NONE;
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    pid_t c = fork();
    if (c == 0)
        _exit(0);
    child_pid = c;
    fork_returned = 1;
    return NULL;
}

int main(void)
{
    bool control = getenv("CONTROL") && atoi(getenv("CONTROL"));
    pthread_t tc, tf;
    int st;

    il_init();
    hung_message = "gate_atfork_login: hung (fork_prepare waits for the C_Login, the C_Login waits in "
                   "pthread_atfork for the fork)";
    signal(SIGALRM, on_hang_alarm);
    alarm(60);
    /* No login before the one stopped below: the first PIN check of the
     * process. */
    setup_open(NULL, &il_args);
    if (control) {
        CHECK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
        CHECK(f->C_Logout(h));
    }

    alarm(20);
    pthread_create(&tc, NULL, caller, NULL);
    if (!il_wait_stopped(5000)) {
        fprintf(stderr, "C_Login did not reach its session's busy lock\n");
        return 2;
    }
    pthread_create(&tf, NULL, forker, NULL);
    usleep(300000); /* fork_prepare now waits for the C_Login */
    if (fork_returned) {
        fprintf(stderr, "fork() returned while C_Login was inside the gate\n");
        return 1;
    }
    il_release();
    pthread_join(tc, NULL);
    pthread_join(tf, NULL);
    alarm(0);
    if (waitpid(child_pid, &st, 0) != child_pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "child failed\n");
        return 1;
    }
    if (login_rv != CKR_OK) {
        fprintf(stderr, "C_Login -> 0x%lx\n", (unsigned long)login_rv);
        return 1;
    }
    printf("gate_atfork_login: no hang (%s)\n", control ? "control: registration done before" : "first PIN check");
    teardown();
    return 0;
}
