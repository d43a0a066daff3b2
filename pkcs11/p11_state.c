/* p11mk pkcs11 layer: the module's state, one small unit every other file
 * of the layer reads: initialized (in this process), the token context, the
 * global lock. C_Initialize and C_Finalize (p11_general.c) publish and clear
 * it under their own mutex. */
#include "p11_internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct {
    bool initialized; /* read and written atomically: see p11_initialized */
    bool forked;      /* this process is a fork child, not initialized since */
    tok_ctx *tok;
    p11_mutex *lock;
} g;

/* The fork gate. A fork child inherits every lock as it was at the fork,
 * held by threads that do not exist in the child: OpenSSL's (the DRBG of
 * the module's library context, its method store), ours, LMDB's per-process
 * state. Calls into the module hold the gate shared while they work (each
 * function of the lists, entered by its wrapper in p11_entry.c); the
 * fork handler takes it exclusively, so a fork waits for the calls in flight
 * to finish and none starts until it is done: the child inherits no lock
 * held inside the module (a child forked while a parent thread was inside
 * OpenSSL's random generator otherwise hung there, races/fork_threads).
 * A fork is preferred: once it waits, no call enters, so a stream of calls
 * cannot hold it back; a call never takes the gate twice (it would wait
 * behind the fork it holds back).
 *
 * Every call passes the gate twice, so the calls pay nothing the fork can
 * pay instead. Each thread counts its calls in a record of its own (its own
 * cache line, written by it alone), then looks at `closed`; a fork sets
 * `closed`, then waits for every record to drop to 0. Either the call sees
 * `closed` (and steps back to wait) or the fork sees the call, provided the
 * call's store is ordered before its load: where the kernel offers
 * membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), the fork makes every thread
 * of the process run a full barrier between its store of `closed` and its
 * reading of the records, so a call orders them with a compiler barrier
 * alone (`asym`); elsewhere, and under ThreadSanitizer (which does not see
 * that barrier), the call's store is sequentially consistent (a locked
 * instruction). A thread's record goes back to the pool when it ends (its
 * key's destructor). A call without a record counts in `spill`, a counter
 * such calls share: a thread's first call until it has taken a record
 * inside the gate (then it counts there), and those of a thread that got
 * none (out of memory, no key, a fork under way as it asked). */
typedef struct gate_rec {
    _Alignas(64) unsigned inside; /* its thread's calls in the module */
    bool taken;                    /* by a live thread (gate_mx) */
    struct gate_rec *next;         /* every record made; none is freed (-z nodelete) */
} gate_rec;

static gate_rec *recs;      /* pushed under gate_mx (release), read by the fork handler under it and by
                               C_Finalize's drain without it (acquire) */
static unsigned spill;      /* calls of threads without a record */
static bool closed;         /* a fork is under way */
static bool asym;           /* membarrier registered: calls skip the locked instruction */
static bool have_key;       /* rec_key made: records can go back at thread exit */
static pthread_key_t rec_key;
static pthread_mutex_t gate_mx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;

static bool membarrier_register(void)
{
#if defined(__SANITIZE_THREAD__)
    return false;
#else
    long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);

    return cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
           syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#endif
}

/* The calling thread's record, NULL if it has none yet. A thread-specific
 * value, not a thread-local variable: the first read of a thread-local of a
 * loaded module allocates the thread's block of them, and that must not
 * happen before the gate is passed (a fork child would inherit the
 * allocator's lock held); pthread_getspecific never allocates. */
static gate_rec *rec_mine(void)
{
    return __atomic_load_n(&have_key, __ATOMIC_ACQUIRE) ? pthread_getspecific(rec_key) : NULL;
}

/* A record for the thread, taken inside the gate by a call counted in
 * spill (the allocation is one a fork waits for): a free one of an ended
 * thread, or a new one. The call moves from spill to it, under gate_mx,
 * which a fork holds from before it looks at the counts until it is over:
 * no fork sees the call in neither. NULL (the call stays in spill) when a
 * fork holds gate_mx (never waited for, inside the gate) or out of memory.
 * Returns what the call is counted in. */
static gate_rec *rec_take(void)
{
    gate_rec *r;

    if (!__atomic_load_n(&have_key, __ATOMIC_ACQUIRE) || pthread_mutex_trylock(&gate_mx) != 0)
        return NULL;
    for (r = recs; r && r->taken; r = r->next)
        ;
    if (!r && (r = aligned_alloc(64, sizeof(*r))) != NULL) {
        memset(r, 0, sizeof(*r));
        r->next = recs;
        __atomic_store_n(&recs, r, __ATOMIC_RELEASE);
    }
    if (r && pthread_setspecific(rec_key, r) != 0)
        r = NULL; /* out of memory */
    if (r) {
        r->taken = true;
        __atomic_store_n(&r->inside, 1, __ATOMIC_RELAXED); /* the record of no running call: it was 0 */
        __atomic_fetch_sub(&spill, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&gate_mx);
    return r;
}

/* The thread ends (its calls have returned): its record goes back. A later
 * call from another key's destructor takes one again. */
static void rec_release(void *p)
{
    gate_rec *r = p;

    pthread_mutex_lock(&gate_mx);
    r->taken = false;
    pthread_mutex_unlock(&gate_mx);
}

static void count_in(gate_rec *r)
{
    if (!r)
        __atomic_fetch_add(&spill, 1, __ATOMIC_SEQ_CST);
    else if (__atomic_load_n(&asym, __ATOMIC_RELAXED)) {
        __atomic_store_n(&r->inside, __atomic_load_n(&r->inside, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
        __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the fork's membarrier makes it a full barrier */
    } else
        __atomic_store_n(&r->inside, __atomic_load_n(&r->inside, __ATOMIC_RELAXED) + 1, __ATOMIC_SEQ_CST);
}

static void count_out(gate_rec *r)
{
    if (!r)
        __atomic_fetch_sub(&spill, 1, __ATOMIC_RELEASE);
    else
        __atomic_store_n(&r->inside, __atomic_load_n(&r->inside, __ATOMIC_RELAXED) - 1, __ATOMIC_RELEASE);
}

p11_gate p11_gate_enter(void)
{
    p11_gate gate;
    gate_rec *r;

    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &gate.cancel); /* first: the wait below is a cancellation point */
    r = rec_mine();
    for (;;) {
        count_in(r);
        if (!__atomic_load_n(&closed, __ATOMIC_SEQ_CST))
            break;
        count_out(r);
        pthread_mutex_lock(&gate_mx);
        while (__atomic_load_n(&closed, __ATOMIC_SEQ_CST))
            pthread_cond_wait(&gate_cv, &gate_mx);
        pthread_mutex_unlock(&gate_mx);
    }
    gate.rec = r ? r : rec_take();
    return gate;
}

bool p11_gate_try_enter(p11_gate *out)
{
    int cancel;
    gate_rec *r;

    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    r = rec_mine();
    count_in(r);
    if (__atomic_load_n(&closed, __ATOMIC_SEQ_CST)) {
        count_out(r);
        pthread_setcancelstate(cancel, NULL);
        return false;
    }
    out->rec = r ? r : rec_take();
    out->cancel = cancel;
    return true;
}

/* gate: what p11_gate_enter returned. The thread's cancelability comes back
 * last, once the call holds nothing. */
void p11_gate_leave(p11_gate gate)
{
    count_out(gate.rec);
    pthread_setcancelstate(gate.cancel, NULL);
}

/* C_Finalize's wait for the calls in flight (PKCS#11 leaves C_Finalize
 * during other threads' calls undefined; such calls used the sessions and
 * the context it frees). The caller, inside the gate (self), has cleared
 * `initialized` (p11_state_unpublish) and holds init_lock; every call tests
 * `initialized` after it has counted itself in the gate, so, as with the
 * fork's `closed`, either a call sees it cleared (and returns
 * CKR_CRYPTOKI_NOT_INITIALIZED without touching the state) or this sees the
 * call, and waits for it to return. gate_mx is not taken: a fork that holds
 * it waits for this call, and new calls wait behind the fork, not this.
 * C_WaitForSlotEvent waits outside the gate (only its looks are inside);
 * C_Initialize and C_Finalize never wait for init_lock inside it. (A fork
 * made inside a call, from the application's mutex callback, while another
 * thread's C_Finalize drains would wait for that C_Finalize, and it for the
 * forking call: not supported.) spill first: a call moving from spill to
 * a new record pushes the record before it leaves spill, so the walk after
 * it sees the record. */
static void wait_until(const unsigned *count, unsigned v)
{
    for (unsigned spins = 0; __atomic_load_n(count, __ATOMIC_SEQ_CST) != v; spins++) { /* after the store */
        if (spins < 100) {
            sched_yield();
        } else { /* a call that waits (a PIN attempt's turn, a database): 1 ms steps */
            struct timespec t = {0, 1000000};
            nanosleep(&t, NULL);
        }
    }
}

void p11_gate_drain(p11_gate self)
{
    gate_rec *me = self.rec;

    if (__atomic_load_n(&asym, __ATOMIC_RELAXED))
        (void)syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0); /* calls order count, then test */
    wait_until(&spill, me ? 0 : 1);
    for (gate_rec *r = __atomic_load_n(&recs, __ATOMIC_ACQUIRE); r; r = r->next)
        if (r != me)
            wait_until(&r->inside, 0);
}

/* A fork child must call C_Initialize before using the module (PKCS#11
 * 2.40; the interfaces advertise no fork-safety). The child learns it is one
 * from this handler, with no system call on each function call (the module is
 * linked -z nodelete, so the handlers stay valid). */
static gate_rec *forking_rec; /* the forking thread's record (gate_mx) */

/* A fork made inside a call, on the calling thread (from the application's
 * mutex callback, or a signal handler), cannot wait for that call: the
 * forking thread's own count is left as it is (the child inherits what that
 * call holds, as the application asked), every other thread's must drop to
 * 0. (A call that stayed in spill, its thread having got no record, is not
 * told apart.) */
static void fork_prepare(void)
{
    gate_rec *me;
    unsigned mine;

    pthread_mutex_lock(&gate_mx); /* held until the fork is over: one fork at a time */
    me = forking_rec = rec_mine();
    mine = me ? __atomic_load_n(&me->inside, __ATOMIC_RELAXED) : 0;
    __atomic_store_n(&closed, true, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&asym, __ATOMIC_RELAXED))
        (void)syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0); /* registered: cannot fail */
    for (gate_rec *r = recs; r; r = r->next)
        while (__atomic_load_n(&r->inside, __ATOMIC_ACQUIRE) != (r == me ? mine : 0))
            sched_yield(); /* calls in flight finish; none starts */
    while (__atomic_load_n(&spill, __ATOMIC_ACQUIRE) != 0)
        sched_yield();
}
static void fork_parent(void)
{
    __atomic_store_n(&closed, false, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mx);
}
static void fork_child(void)
{
    __atomic_store_n(&g.forked, true, __ATOMIC_RELAXED);
    /* This thread alone exists here, and no call is in flight (the prepare
     * handler waited for them). The records of the parent's other threads
     * are free; whether the membarrier registration came along is asked
     * again (no other thread can be in the gate while the mode changes).
     * The condition's copy may still count parent threads waiting on it,
     * which do not exist here: it is made afresh, and the mutex released
     * (which keeps ThreadSanitizer's view of it right) and made afresh too. */
    for (gate_rec *r = recs; r; r = r->next)
        r->taken = r == forking_rec;
    __atomic_store_n(&asym, membarrier_register(), __ATOMIC_RELAXED);
    __atomic_store_n(&closed, false, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&gate_mx);
    memset(&gate_cv, 0, sizeof(gate_cv));
    pthread_cond_init(&gate_cv, NULL);
    memset(&gate_mx, 0, sizeof(gate_mx));
    pthread_mutex_init(&gate_mx, NULL);
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void)
{
    /* The layers' own fork handlers first (tok_token.h), outside any gate:
     * prepare handlers run in the reverse order, so theirs (the keystore's
     * listeners, ks_pg.c) run once the gate is shut and every call out. */
    tok_process_setup();
    __atomic_store_n(&asym, membarrier_register(), __ATOMIC_RELAXED);
    __atomic_store_n(&have_key, pthread_key_create(&rec_key, rec_release) == 0, __ATOMIC_RELEASE);
    (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* Not cancellable: a cancellation inside register_atfork would make
 * pthread_once run it again, registering the layers' fork handlers twice. */
void p11_gate_setup(void)
{
    int cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    pthread_once(&atfork_once, register_atfork);
    pthread_setcancelstate(cancel, NULL);
}
static bool forked(void) { return __atomic_load_n(&g.forked, __ATOMIC_RELAXED); }

/* Any thread may ask while another runs C_Initialize (pkcs11-tool's thread
 * tests do): the flag is published with release after every other field is
 * set, and read with acquire (sequentially consistent: a call's reading
 * comes after its count in the gate, for C_Finalize's drain; a plain load
 * on x86 all the same). */
static void set_initialized(bool v) { __atomic_store_n(&g.initialized, v, __ATOMIC_RELEASE); }
static bool get_initialized(void) { return __atomic_load_n(&g.initialized, __ATOMIC_SEQ_CST); }
bool p11_initialized(void) { return get_initialized() && !forked(); }
tok_ctx *p11_tok(void) { return g.tok; }
void p11_lock(void) { p11_mutex_lock(g.lock); }
void p11_unlock(void) { p11_mutex_unlock(g.lock); }

bool p11_state_published(void) { return get_initialized(); }
bool p11_state_forked(void) { return get_initialized() && forked(); }
bool p11_state_fork_child(void) { return forked(); }

void p11_state_publish(tok_ctx *tok, p11_mutex *lock)
{
    p11_gate_setup();
    g.tok = tok;
    g.lock = lock;
    __atomic_store_n(&g.forked, false, __ATOMIC_RELAXED);
    set_initialized(true);
}

/* What a fork child inherits and must not free: a parent thread may have held
 * it at the fork (a mutex locked, a structure half changed). It stays
 * referenced from here, so that it is not taken for a leak either. */
static void **abandoned;
static size_t nabandoned, capabandoned;

void p11_state_abandon(void *p)
{
    if (!p)
        return;
    if (nabandoned == capabandoned) {
        size_t cap = capabandoned ? capabandoned * 2 : 16;
        void **v = realloc(abandoned, cap * sizeof(*v));
        if (!v)
            return; /* then it is a leak in a fork child; nothing worse */
        abandoned = v;
        capabandoned = cap;
    }
    abandoned[nabandoned++] = p;
}

void p11_state_unpublish(void) { __atomic_store_n(&g.initialized, false, __ATOMIC_SEQ_CST); }

void p11_state_clear(tok_ctx **tok, p11_mutex **lock)
{
    set_initialized(false);
    if (tok)
        *tok = g.tok;
    if (lock)
        *lock = g.lock;
    g.tok = NULL;
    g.lock = NULL;
}
