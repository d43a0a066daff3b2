/* PIN attempts on a token are serialized across processes (ks_attempt_lock:
 * a byte-range lock of the keystore's), and none may be starved: a process
 * that logs in and out in a loop (each attempt holds the lock for one scrypt
 * and takes it again microseconds after it let go) must not keep another
 * process's C_Login waiting until it stops. It did while a waiter polled
 * the lock every 16 ms: it almost never found it free.
 *
 * A child process logs in and out as fast as it can until told to stop (or
 * 30 s pass), counting its logins in shared memory; once it has logged in a
 * few times, this process logs in and out 5 times, then tells it to stop.
 * While one of these logins waits, the child may finish the attempt it
 * has under way and perhaps one more, not 5 (a login waited for 28 of
 * them, 1.4 s); and the child must still loop when told to stop (it did
 * not stop on its own, the logins here waiting for it). Exits 1 on a
 * violation. */
#include "common.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static _Atomic long *done; /* the looping process's logins (shared) */

/* The looping process: 0 when stopped by the parent, 3 when it ran out of time. */
static int looper(int ready_fd, int stop_fd)
{
    CK_SESSION_HANDLE s;
    double end = now() + 30;
    long n = 0;

    if (f->C_Initialize(NULL) != CKR_OK || f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return 2;
    for (;;) {
        char c;
        if (read(stop_fd, &c, 1) == 1)
            return 0;
        if (now() > end)
            return 3;
        if (f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) != CKR_OK)
            return 2;
        (*done)++;
        if (f->C_Logout(s) != CKR_OK)
            return 2;
        if (++n == 3 && write(ready_fd, "r", 1) != 1)
            return 2;
    }
}

int main(void)
{
    int ready[2], stopp[2], st, bad = 0;
    char c;
    pid_t pid;

    done = mmap(NULL, sizeof(*done), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (done == MAP_FAILED)
        return 2;
    setup();
    CHECK(f->C_Logout(h));
    if (pipe(ready) || pipe(stopp))
        return 2;
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        close(ready[0]);
        close(stopp[1]);
        fcntl(stopp[0], F_SETFL, O_NONBLOCK);
        _exit(looper(ready[1], stopp[0]));
    }
    close(ready[1]);
    close(stopp[0]);
    if (read(ready[0], &c, 1) != 1) {
        fprintf(stderr, "pin_attempt_fair: the looping process failed\n");
        return 2;
    }
    for (int i = 0; i < 5; i++) {
        long before = *done;
        double t0 = now();
        CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN));
        double took = now() - t0;
        long meanwhile = *done - before;
        printf("login %d while another process logs in and out in a loop: 0x%lx after %.3f s, %ld of its logins "
               "meanwhile\n",
               i, (unsigned long)rv, took, meanwhile);
        if (rv != CKR_OK || meanwhile >= 5) {
            bad++;
            break;
        }
        CHECK(f->C_Logout(h));
    }
    if (write(stopp[1], "s", 1) != 1)
        return 2;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "pin_attempt_fair: the looping process %s %d (3: it stopped on its own after 30 s, so the "
                        "logins here waited for it)\n",
                WIFEXITED(st) ? "exited" : "died of signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        bad++;
    }
    teardown();
    return bad != 0;
}
