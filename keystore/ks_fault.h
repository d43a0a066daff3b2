/* p11mk keystore: surviving a damaged memory-mapped file.
 *
 * LMDB trusts its data file: it follows page numbers and node offsets read
 * from the map without checking them, so a damaged or truncated data.mdb
 * (a flipped bit on disk, a hostile writer, a file cut short while mapped)
 * makes it read outside the map (SIGSEGV), past the file's end (SIGBUS) or
 * fail one of its assertions (abort). In a PKCS#11 module that would kill
 * the application; in p11mk-admin it would kill `verify`, whose job is to
 * report damage.
 *
 * So every call into LMDB from ks_lmdb.c runs inside a fault frame: a
 * handler for SIGSEGV and SIGBUS, and LMDB's assertion callback, return to
 * the frame of the thread that faulted, which reports KS_ECORRUPT (damage,
 * logged once per keystore, nothing acted on). Only a fault the kernel
 * raised (si_code > 0) is taken: a SIGSEGV or SIGBUS another program or
 * thread sent goes where it would have gone without p11mk.
 *
 * A fault outside any frame (the application's own, or the module's code)
 * goes to the disposition found when the handler was installed, as the
 * kernel would have delivered it: that handler is called with its own mask
 * (sa_mask, and the signal itself unless it asked for SA_NODEFER) and its
 * SA_RESETHAND honoured; the default action or SIG_IGN is put back in place
 * and the signal delivered again (a fault by running the instruction again,
 * a sent signal by sending it again), so the process ends as it would have.
 *
 * Rules for a frame (KS_FAULT_GUARD, in ks_lmdb.c):
 *   - it holds only LMDB calls and plain reads of what they return: no lock
 *     taken, no memory allocated or freed inside it by p11mk (a return by
 *     the frame abandons whatever ran inside it);
 *   - after a fault the LMDB transaction is only aborted (which walks no
 *     page); what LMDB allocated in the abandoned call is leaked; LMDB's
 *     own locks must not be held where a frame can be left (ks_lmdb.c reads
 *     the meta pages in a frame of their own before it begins a
 *     transaction, whose start takes the writer's lock or a reader slot
 *     and then reads them);
 *   - frames nest (the innermost catches).
 * The handler is installed when the first keystore is opened, on top of
 * what is there (chained to it); at later opens again only where the
 * default action is back (a handler the application installed after ours
 * is its choice and stays); it is removed when the library is unloaded if
 * it is still the one in place. The handler finds the thread's frames with
 * pthread_getspecific (no initial-exec TLS: a dlopen'd module must not use
 * up the static TLS other libraries need; no allocation in the handler).
 * Faults in a frame are what damaged storage causes; a bug elsewhere in the
 * process is never caught (it is outside every frame). */
#ifndef P11MK_KS_FAULT_H
#define P11MK_KS_FAULT_H

#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>

typedef struct ks_fault_frame {
    sigjmp_buf jb;
    struct ks_fault_frame *prev;
    volatile int sig;   /* set by the handler: SIGSEGV, SIGBUS; SIGABRT for an LMDB assertion */
    char what[160];     /* LMDB's message for an assertion */
} ks_fault_frame;

/* Installs the SIGSEGV/SIGBUS handler (the rules above); at every open. */
void ks_fault_arm(void);

/* The calling thread's frames: a slot in its own thread-local storage
 * (the ordinary model, fast on every LMDB call), whose address the thread
 * gives the handler once through a pthread key (pthread_getspecific reads
 * it there without allocating). The key exists once ks_fault_arm ran, which
 * every opening of an environment does before its first frame; before that
 * a frame is pushed where the handler does not look (and catches nothing). */
typedef struct {
    ks_fault_frame *top; /* the innermost frame */
    bool registered;     /* the key holds this slot's address */
} ks_fault_slot;
extern __thread ks_fault_slot ks_fault_mine;
void ks_fault_register(ks_fault_slot *s);
static inline ks_fault_slot *ks_fault_slot_get(void)
{
    ks_fault_slot *s = &ks_fault_mine;
    if (__builtin_expect(!s->registered, 0))
        ks_fault_register(s);
    return s;
}

/* After a fault: keeps what the frame saw for ks_fault_what (this thread). */
void ks_fault_note(const ks_fault_frame *f);
/* What the last fault caught on this thread was, for messages. */
const char *ks_fault_what(void);

/* LMDB's assertion callback (mdb_env_set_assert): inside a frame, leaves
 * through it; outside, returns and LMDB aborts as it would have. */
void ks_fault_assert(const char *msg);

/* rc = expr, evaluated inside a frame; rc = fault_rc when a fault left it.
 * (The frame is pushed before sigsetjmp, which is the whole controlling
 * expression of its if, as C requires; both ways out pop it.) */
#define KS_FAULT_GUARD(rc, fault_rc, expr)                                                                          \
    do {                                                                                                            \
        ks_fault_frame ks_f_;                                                                                       \
        volatile int ks_r_; /* in memory across sigsetjmp: what the caller reads is set after it */               \
        ks_fault_slot *const ks_s_ = ks_fault_slot_get();                                                           \
        ks_f_.prev = ks_s_->top;                                                                                    \
        ks_f_.sig = 0;                                                                                              \
        ks_s_->top = &ks_f_;                                                                                        \
        if (sigsetjmp(ks_f_.jb, 0) == 0) {                                                                          \
            ks_r_ = (expr);                                                                                         \
        } else {                                                                                                    \
            ks_s_->top = ks_f_.prev;                                                                                \
            ks_fault_note(&ks_f_);                                                                                  \
            ks_r_ = (fault_rc);                                                                                     \
        }                                                                                                           \
        ks_s_->top = ks_f_.prev;                                                                                    \
        (rc) = ks_r_;                                                                                               \
    } while (0)

#endif
