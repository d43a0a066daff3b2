/* p11mk pkcs11 layer: the module's state, one small unit every other file
 * of the layer reads: initialized (in this process), the token context, the
 * global lock. C_Initialize and C_Finalize (p11_general.c) publish and clear
 * it under their own mutex. */
#include "p11_internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

static struct {
    bool initialized; /* read and written atomically: see p11_initialized */
    bool forked;      /* this process is a fork child of the one that initialized */
    tok_ctx *tok;
    p11_mutex *lock;
} g;

/* The fork gate. A fork child inherits every lock as it was at the fork,
 * held by threads that do not exist in the child: OpenSSL's (the DRBG of
 * the module's library context, its method store), ours, LMDB's per-process
 * state. Calls into the module hold the gate shared while they work; the
 * fork handler takes it exclusively, so a fork waits for the calls in flight
 * to finish and none starts until it is done: the child inherits no lock
 * held inside the module (a child forked while a parent thread was inside
 * OpenSSL's random generator otherwise hung there, races/fork_threads).
 * A fork is preferred: once it waits, no call enters, so a stream of calls
 * cannot hold it back; a call never takes the gate twice (it would wait
 * behind the fork it holds back).
 *
 * Every call passes the gate, so it keeps no shared counter: a call counts
 * itself in its thread's shard (its own cache line), then looks at `closed`;
 * a fork sets `closed`, then waits for every shard to drop to 0. Both orders
 * are sequentially consistent, so either the call sees `closed` (and steps
 * back to wait) or the fork sees the call. */
#define GATE_SHARDS 64

static struct {
    _Alignas(64) unsigned readers;
} shards[GATE_SHARDS];
static bool closed; /* a fork is under way */
static pthread_mutex_t gate_mx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static unsigned shard_next;
static __thread unsigned my_shard; /* 1 + index; 0: not chosen yet */

static unsigned shard(void)
{
    if (!my_shard)
        my_shard = 1 + __atomic_fetch_add(&shard_next, 1, __ATOMIC_RELAXED) % GATE_SHARDS;
    return my_shard - 1;
}

void p11_gate_enter(void)
{
    unsigned i = shard();

    for (;;) {
        __atomic_fetch_add(&shards[i].readers, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&closed, __ATOMIC_SEQ_CST))
            return;
        __atomic_fetch_sub(&shards[i].readers, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_lock(&gate_mx);
        while (__atomic_load_n(&closed, __ATOMIC_SEQ_CST))
            pthread_cond_wait(&gate_cv, &gate_mx);
        pthread_mutex_unlock(&gate_mx);
    }
}

void p11_gate_leave(void) { __atomic_fetch_sub(&shards[shard()].readers, 1, __ATOMIC_RELEASE); }

/* A fork child must call C_Initialize before using the module (PKCS#11
 * 2.40; the interfaces advertise no fork-safety). The child learns it is one
 * from this handler, with no system call on each function call (the module is
 * linked -z nodelete, so the handlers stay valid). */
static void fork_prepare(void)
{
    pthread_mutex_lock(&gate_mx); /* held until the fork is over: one fork at a time */
    __atomic_store_n(&closed, true, __ATOMIC_SEQ_CST);
    for (unsigned i = 0; i < GATE_SHARDS; i++)
        while (__atomic_load_n(&shards[i].readers, __ATOMIC_SEQ_CST) != 0)
            sched_yield(); /* calls in flight finish; none starts */
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
     * handler waited for them). The condition's copy may still count parent
     * threads waiting on it, which do not exist here: it is made afresh, and
     * the mutex released (which keeps ThreadSanitizer's view of it right)
     * and made afresh too. */
    __atomic_store_n(&closed, false, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&gate_mx);
    memset(&gate_cv, 0, sizeof(gate_cv));
    pthread_cond_init(&gate_cv, NULL);
    memset(&gate_mx, 0, sizeof(gate_mx));
    pthread_mutex_init(&gate_mx, NULL);
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { (void)pthread_atfork(fork_prepare, fork_parent, fork_child); }

void p11_gate_setup(void) { pthread_once(&atfork_once, register_atfork); }
static bool forked(void) { return __atomic_load_n(&g.forked, __ATOMIC_RELAXED); }

/* Any thread may ask while another runs C_Initialize (pkcs11-tool's thread
 * tests do): the flag is published with release after every other field is
 * set, and read with acquire. */
static void set_initialized(bool v) { __atomic_store_n(&g.initialized, v, __ATOMIC_RELEASE); }
static bool get_initialized(void) { return __atomic_load_n(&g.initialized, __ATOMIC_ACQUIRE); }
bool p11_initialized(void) { return get_initialized() && !forked(); }
tok_ctx *p11_tok(void) { return g.tok; }
void p11_lock(void) { p11_mutex_lock(g.lock); }
void p11_unlock(void) { p11_mutex_unlock(g.lock); }

bool p11_state_published(void) { return get_initialized(); }
bool p11_state_forked(void) { return get_initialized() && forked(); }

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
