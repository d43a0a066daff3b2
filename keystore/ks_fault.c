/* p11mk keystore: fault frames around LMDB (the rules are in ks_fault.h). */
#include "ks_fault.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static pthread_key_t ks_fault_key;
static atomic_bool ks_fault_key_ok; /* read by threads that never ran pthread_once, and by the handler */
static pthread_once_t top_once = PTHREAD_ONCE_INIT;

static struct sigaction old_segv, old_bus;
static pthread_mutex_t arm_lock = PTHREAD_MUTEX_INITIALIZER;
static bool ever_armed;
static volatile sig_atomic_t installed;

/* What the last fault caught on a thread was (written outside the handler). */
static __thread int last_sig;
static __thread char last_what[160];

__thread ks_fault_slot ks_fault_mine;

static void top_init(void)
{
    if (pthread_key_create(&ks_fault_key, NULL) == 0)
        atomic_store_explicit(&ks_fault_key_ok, true, memory_order_release);
}

void ks_fault_register(ks_fault_slot *s)
{
    if (atomic_load_explicit(&ks_fault_key_ok, memory_order_acquire) && pthread_setspecific(ks_fault_key, s) == 0)
        s->registered = true;
}

static bool is_ours(const struct sigaction *sa);

/* Delivers sig as the disposition found before ours would have. */
static void chain(int sig, siginfo_t *si, void *uc)
{
    struct sigaction *old = sig == SIGBUS ? &old_bus : &old_segv;
    struct sigaction was = *old;
    /* SIG_DFL and SIG_IGN are no functions, SA_SIGINFO or not. */
    bool fn = was.sa_handler != SIG_DFL && was.sa_handler != SIG_IGN &&
              ((was.sa_flags & SA_SIGINFO) ? was.sa_sigaction != NULL : true);
    if (!fn || is_ours(&was)) {
        /* The default action or SIG_IGN, back in place: a fault comes back
         * when the instruction runs again; a sent signal is sent again. */
        struct sigaction dfl = was;
        if (is_ours(&was)) {
            memset(&dfl, 0, sizeof(dfl));
            dfl.sa_handler = SIG_DFL;
        }
        sigaction(sig, &dfl, NULL);
        if (si->si_code <= 0)
            raise(sig);
        return;
    }
    if (was.sa_flags & SA_RESETHAND) { /* once, then the default action */
        memset(old, 0, sizeof(*old));
        old->sa_handler = SIG_DFL;
    }
    /* Its mask while it runs, as the kernel would have set it. */
    sigset_t mask, saved;
    mask = was.sa_mask;
    if (!(was.sa_flags & SA_NODEFER))
        sigaddset(&mask, sig);
    pthread_sigmask(SIG_BLOCK, &mask, &saved);
    if (was.sa_flags & SA_SIGINFO)
        was.sa_sigaction(sig, si, uc);
    else
        was.sa_handler(sig);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    /* A fault the kernel raised (not a signal sent), in a frame. The key
     * exists once a frame was pushed; pthread_getspecific allocates nothing. */
    bool key = atomic_load_explicit(&ks_fault_key_ok, memory_order_acquire);
    ks_fault_slot *s = key && si && si->si_code > 0 ? pthread_getspecific(ks_fault_key) : NULL;
    ks_fault_frame *f = s ? s->top : NULL;
    if (f) {
        f->sig = sig;
        siglongjmp(f->jb, 1);
    }
    chain(sig, si, uc);
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
     * system call per frame); chain() blocks what the handler it calls
     * asked for. ONSTACK: a thread with an alternate stack. */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    *old = cur;
    if (sigaction(sig, &sa, NULL) == 0)
        installed = 1;
}

void ks_fault_arm(void)
{
    pthread_once(&top_once, top_init);
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
    ks_fault_frame *f = ks_fault_slot_get()->top;
    if (!f)
        return; /* LMDB aborts, as it would have */
    f->sig = SIGABRT;
    snprintf(f->what, sizeof(f->what), "%s", msg ? msg : "");
    siglongjmp(f->jb, 1);
}

void ks_fault_note(const ks_fault_frame *f)
{
    last_sig = f->sig;
    if (f->sig == SIGABRT)
        snprintf(last_what, sizeof(last_what), "%s", f->what[0] ? f->what : "an LMDB assertion failed");
}

const char *ks_fault_what(void)
{
    if (last_sig == SIGABRT)
        return last_what;
    return last_sig == SIGBUS ? "read past the end of the file (SIGBUS)" : "read outside the file (SIGSEGV)";
}
