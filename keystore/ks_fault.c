/* p11mk keystore: fault frames around LMDB (the rules are in ks_fault.h). */
#include "ks_fault.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

__thread ks_fault_frame *ks_fault_top __attribute__((tls_model("initial-exec")));
static __thread int fault_sig __attribute__((tls_model("initial-exec")));
static __thread char fault_msg[160] __attribute__((tls_model("initial-exec")));

static struct sigaction old_segv, old_bus;
static pthread_mutex_t arm_lock = PTHREAD_MUTEX_INITIALIZER;
static bool ever_armed;
static volatile sig_atomic_t installed;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    ks_fault_frame *f = ks_fault_top;
    if (f) {
        fault_sig = sig;
        fault_msg[0] = '\0';
        siglongjmp(f->jb, 1);
    }
    /* Not ours: what was there before decides. */
    struct sigaction *old = sig == SIGBUS ? &old_bus : &old_segv;
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) {
            old->sa_sigaction(sig, si, uc);
            return;
        }
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
        return;
    }
    /* The default action: put it back; the faulting instruction runs again
     * and the kernel applies it (a core dump, as without p11mk). */
    sigaction(sig, old, NULL);
}

static bool is_ours(const struct sigaction *sa) { return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_fault; }

static void arm(int sig, struct sigaction *old)
{
    struct sigaction cur, sa;
    if (sigaction(sig, NULL, &cur) != 0 || is_ours(&cur))
        return;
    /* The first time on top of whatever is there (chained to it); later only
     * where the default action is back: a handler installed after ours (the
     * application's choice) is left alone, and ours never comes to chain to
     * a handler that chains to ours. */
    if (ever_armed && (cur.sa_flags & SA_SIGINFO || cur.sa_handler != SIG_DFL))
        return;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_fault;
    /* NODEFER: a frame left by siglongjmp without restoring the mask must
     * not leave the signal blocked (sigsetjmp(.., 0) saves no mask: no
     * system call per frame). ONSTACK: a thread with an alternate stack. */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    *old = cur;
    if (sigaction(sig, &sa, NULL) == 0)
        installed = 1;
}

void ks_fault_arm(void)
{
    pthread_mutex_lock(&arm_lock);
    arm(SIGSEGV, &old_segv);
    arm(SIGBUS, &old_bus);
    ever_armed = true;
    pthread_mutex_unlock(&arm_lock);
}

/* Unloading the library (a PKCS#11 module is dlclose'd after C_Finalize)
 * must not leave a handler pointing into unmapped code. */
__attribute__((destructor)) static void disarm(void)
{
    struct sigaction cur;
    if (!installed)
        return;
    if (sigaction(SIGSEGV, NULL, &cur) == 0 && is_ours(&cur))
        sigaction(SIGSEGV, &old_segv, NULL);
    if (sigaction(SIGBUS, NULL, &cur) == 0 && is_ours(&cur))
        sigaction(SIGBUS, &old_bus, NULL);
    installed = 0;
}

void ks_fault_assert(const char *msg)
{
    ks_fault_frame *f = ks_fault_top;
    if (!f)
        return; /* LMDB aborts, as it would have */
    fault_sig = SIGABRT;
    snprintf(fault_msg, sizeof(fault_msg), "%s", msg ? msg : "");
    siglongjmp(f->jb, 1);
}

int ks_fault_signal(void) { return fault_sig; }

const char *ks_fault_what(void)
{
    if (fault_sig == SIGABRT)
        return fault_msg[0] ? fault_msg : "an LMDB assertion failed";
    return fault_sig == SIGBUS ? "read past the end of the file (SIGBUS)" : "read outside the file (SIGSEGV)";
}
