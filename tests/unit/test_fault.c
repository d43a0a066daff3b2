/* The keystore's fault frames (keystore/ks_fault.h) catch only faults the
 * kernel raises inside a frame, and leave everything else as it would have
 * been without p11mk: a real fault or a sent SIGSEGV/SIGBUS outside a frame
 * ends the process by that signal, an application's handler installed
 * before is called with its own mask and its SA_RESETHAND honoured, a signal
 * sent into a frame is not taken for damage. Each case runs in a child with
 * the default dispositions first (as cmocka and the sanitizers put their own
 * handlers in place), which must end as the case says. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keystore/ks_fault.h"
#include "tests/unit/ks_test_util.h"

static volatile int *bad_page(void)
{
    void *p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : (volatile int *)p;
}

static int read_bad(volatile int *p) { return *p; }

static int raise_segv(void) { return raise(SIGSEGV); }

static int frame_catches(void *arg)
{
    (void)arg;
    ks_fault_arm();
    volatile int *p = bad_page();
    for (int i = 0; i < 3; i++) { /* again and again: nothing left blocked */
        int rc;
        KS_FAULT_GUARD(rc, -1, read_bad(p));
        if (rc != -1 || !strstr(ks_fault_what(), "SIGSEGV"))
            _exit(10 + i);
    }
    int rc;
    KS_FAULT_GUARD(rc, -1, 7); /* no fault: the value */
    _exit(rc == 7 ? 0 : 20);
}

static int fault_outside(void *arg)
{
    (void)arg;
    ks_fault_arm();
    read_bad(bad_page());
    return 60; /* survived: wrong */
}

static int sent_segv(void *arg)
{
    (void)arg;
    ks_fault_arm();
    raise(SIGSEGV);
    _exit(30); /* survived: wrong */
}

static int sent_bus(void *arg)
{
    (void)arg;
    ks_fault_arm();
    kill(getpid(), SIGBUS);
    _exit(31);
}

static int sent_into_frame(void *arg)
{
    (void)arg;
    ks_fault_arm();
    int rc;
    KS_FAULT_GUARD(rc, -1, raise_segv());
    _exit(rc == -1 ? 32 : 33); /* taken for damage, or survived: both wrong */
}

static volatile int hits;
static void resethand_handler(int sig)
{
    (void)sig;
    hits++;
    if (hits > 1)
        _exit(40); /* called twice: SA_RESETHAND not honoured */
}

static int resethand(void *arg)
{
    (void)arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = resethand_handler;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    ks_fault_arm(); /* on top of the application's handler, chained to it */
    read_bad(bad_page()); /* handler once, then the default action */
    _exit(41);
}

static void mask_handler(int sig, siginfo_t *si, void *uc)
{
    (void)si, (void)uc;
    sigset_t now;
    pthread_sigmask(SIG_BLOCK, NULL, &now);
    _exit(sigismember(&now, SIGUSR1) && sigismember(&now, sig) ? 0 : 50);
}

static int app_mask(void *arg)
{
    (void)arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = mask_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR1);
    sigaction(SIGSEGV, &sa, NULL);
    ks_fault_arm();
    read_bad(bad_page());
    _exit(51);
}

static void test_fault_frames(void **state)
{
    (void)state;
#if defined(__SANITIZE_THREAD__)
    skip(); /* TSan's own handling of these signals in forked children (see test_keystore) */
#endif
    assert_int_equal(in_child(frame_catches, NULL, 10), 0);
    assert_int_equal(in_child(fault_outside, NULL, 10), -SIGSEGV);
    assert_int_equal(in_child(sent_segv, NULL, 10), -SIGSEGV);
    assert_int_equal(in_child(sent_bus, NULL, 10), -SIGBUS);
    assert_int_equal(in_child(sent_into_frame, NULL, 10), -SIGSEGV);
    assert_int_equal(in_child(resethand, NULL, 10), -SIGSEGV);
    assert_int_equal(in_child(app_mask, NULL, 10), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
