/* Every function that works on the module's state works inside the fork
 * gate (p11_entry.c's wrappers), so a fork waits for it. Functions that did
 * part of their work outside it let a fork child inherit whatever they held
 * at that instant: C_OpenSession read and unsealed the token's record and
 * allocated before the gate, and a child of races/fork_recycle hung in
 * AddressSanitizer's allocator (which takes no lock at fork) that a
 * C_OpenSession of the parent held.
 *
 * For each function that takes the module's global lock where it used to
 * work outside the gate (C_OpenSession, C_GetTokenInfo, C_InitToken,
 * C_Logout's end, C_CloseAllSessions), a thread calls it and stops right
 * after that lock (the application's mutexes, interleave.h); another
 * thread forks meanwhile. The fork must not return while the call is
 * stopped inside the module (it waits 300 ms), and must once the call
 * ends; the child must then C_Initialize, open a session, read the
 * token's info and C_Finalize (within 20 s). Exits 1 on a violation. */
#include "common.h"
#include "interleave.h"

#include <signal.h>
#include <sys/wait.h>

typedef CK_RV (*call_fn)(void);

static CK_RV call_open(void)
{
    CK_SESSION_HANDLE s;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    return rv == CKR_OK ? f->C_CloseSession(s) : rv;
}
static CK_RV call_token_info(void)
{
    CK_TOKEN_INFO ti;
    return f->C_GetTokenInfo(slot, &ti);
}
static CK_RV call_init_token(void)
{
    CK_UTF8CHAR label[32];
    CK_RV rv;
    memset(label, ' ', sizeof(label));
    rv = f->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO, strlen(SO), label);
    return rv == CKR_SESSION_EXISTS ? CKR_OK : rv; /* the session h is open: refused after the count */
}
static CK_RV call_logout(void)
{
    CK_RV rv = f->C_Logout(h);
    if (rv == CKR_OK)
        rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN));
    return rv;
}
static CK_RV call_close_all(void) { return f->C_CloseAllSessions(slot); } /* last: it closes h */

static const struct {
    const char *name;
    call_fn fn;
    int nth; /* which lock of the global lock to stop after */
} calls[] = {
    {"C_OpenSession", call_open, 1}, {"C_GetTokenInfo", call_token_info, 1},    {"C_InitToken", call_init_token, 1},
    {"C_Logout", call_logout, 1},    {"C_CloseAllSessions", call_close_all, 1},
};

static call_fn current;
static int current_nth;
static CK_RV current_rv;
static atomic_int forked;
static pid_t child_pid;

static void *caller(void *arg)
{
    (void)arg;
    il_arm_nth(IL_AFTER_LOCK, il_global, current_nth);
    current_rv = current();
    il_at = IL_NONE;
    return NULL;
}

static int child(void)
{
    CK_SESSION_HANDLE s;
    CK_TOKEN_INFO ti;

    signal(SIGALRM, SIG_DFL);
    alarm(20);
    if (f->C_Initialize(NULL) != CKR_OK)
        return 3;
    if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return 4;
    if (f->C_GetTokenInfo(slot, &ti) != CKR_OK)
        return 5;
    if (f->C_Finalize(NULL) != CKR_OK)
        return 6;
    return 0;
}

static void *forker(void *arg)
{
    (void)arg;
    pid_t c = fork();
    if (c == 0)
        _exit(child());
    child_pid = c;
    forked = 1;
    return NULL;
}

int main(void)
{
    int bad = 0;

    il_init();
    hung_message = "gate_every_call: hung";
    signal(SIGALRM, on_hang_alarm);
    setup_args(NULL, &il_args);
    alarm(120);
    for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
        pthread_t tc, tf;
        int st;
        bool early;

        current = calls[i].fn;
        current_nth = calls[i].nth;
        forked = 0;
        pthread_create(&tc, NULL, caller, NULL);
        if (!il_wait_stopped(5000)) {
            fprintf(stderr, "%s: the call did not reach the global lock\n", calls[i].name);
            return 2;
        }
        pthread_create(&tf, NULL, forker, NULL);
        usleep(300000);
        early = forked;
        il_release();
        pthread_join(tc, NULL);
        pthread_join(tf, NULL);
        if (waitpid(child_pid, &st, 0) != child_pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
            bad++;
            fprintf(stderr, "%s: the child forked meanwhile %s %d\n", calls[i].name,
                    WIFSIGNALED(st) ? "died of signal" : "exited", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        }
        if (early) {
            bad++;
            fprintf(stderr, "%s: fork() returned while the call was at work in the module (outside the fork gate)\n",
                    calls[i].name);
        }
        if (current_rv != CKR_OK) {
            bad++;
            fprintf(stderr, "%s: 0x%lx\n", calls[i].name, (unsigned long)current_rv);
        }
        printf("%s: the fork %s while the call was stopped inside\n", calls[i].name, early ? "returned" : "waited");
    }
    alarm(0);
    teardown();
    return bad != 0;
}
