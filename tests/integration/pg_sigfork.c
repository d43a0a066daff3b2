/* pg_sigfork: a fork from a signal handler on the thread that runs
 * C_Finalize (the fork gate lets a fork made inside a call on the calling
 * thread through, a55f4ef: "the application's mutex callback, a signal
 * handler"). If the signal lands while pg_close holds listeners_mx (the
 * list removal after joining the listener), listeners_prepare locks
 * listeners_mx again on the same thread: the process hangs for ever.
 * The window is a few instructions; test_pg_sigfork.sh puts the signal in
 * it with gdb (a breakpoint in pg_close after the lock).
 *   pg_sigfork MODULE LABEL
 * Prints "finalized" and exits 0 when C_Finalize returned. */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "client_util.h"

static void on_usr1(int sig)
{
    (void)sig;
    pid_t c = fork();
    if (c == 0)
        _exit(0);
    if (c > 0)
        waitpid(c, NULL, 0);
    static const char m[] = "signal handler: forked\n";
    ssize_t w = write(2, m, sizeof(m) - 1);
    (void)w;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    CK_FUNCTION_LIST *f;
    void *h = dlopen(argv[1], RTLD_NOW);
    CK_C_GetFunctionList gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
    if (!gfl || gfl(&f) != CKR_OK)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
    if (f->C_Initialize(&ia) != CKR_OK || !client_find_slot(f, "pg_sigfork", argv[2]))
        return 2;
    usleep(300 * 1000); /* the listener connected */
    CK_RV rv = f->C_Finalize(NULL);
    printf("finalized 0x%lx\n", (unsigned long)rv);
    return rv == CKR_OK ? 0 : 1;
}
