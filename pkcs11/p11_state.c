/* p11mk pkcs11 layer: the module's state, one small unit every other file
 * of the layer reads: initialized (in this process), the token context, the
 * global lock. C_Initialize and C_Finalize (p11_general.c) publish and clear
 * it under their own mutex. */
#include "p11_internal.h"

#include <pthread.h>
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
 * Writers are preferred, so a stream of calls cannot hold a fork back; a
 * call never takes the gate twice (it would deadlock behind a waiting fork). */
static pthread_rwlock_t gate;

static void gate_init(void)
{
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&gate, &a);
    pthread_rwlockattr_destroy(&a);
}

void p11_gate_enter(void) { pthread_rwlock_rdlock(&gate); }
void p11_gate_leave(void) { pthread_rwlock_unlock(&gate); }

/* A fork child must call C_Initialize before using the module (PKCS#11
 * 2.40; the interfaces advertise no fork-safety). The child learns it is one
 * from this handler, with no system call on each function call (the module is
 * linked -z nodelete, so the handlers stay valid). */
static void fork_prepare(void) { pthread_rwlock_wrlock(&gate); }
static void fork_parent(void) { pthread_rwlock_unlock(&gate); }
static void fork_child(void)
{
    __atomic_store_n(&g.forked, true, __ATOMIC_RELAXED);
    /* Released (this thread holds it: the prepare handler took it), then
     * made afresh: the copy also says that parent threads were waiting for
     * it, and they do not exist here, so the unlock alone could leave it
     * blocking the next reader. The unlock keeps ThreadSanitizer's view of
     * the lock right; pthread_rwlock_destroy would refuse a copy in that
     * state, hence the memset. */
    pthread_rwlock_unlock(&gate);
    memset(&gate, 0, sizeof(gate));
    gate_init();
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void)
{
    gate_init();
    (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
}

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
