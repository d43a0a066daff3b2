/* The application's mutexes (CK_C_INITIALIZE_ARGS without CKF_OS_LOCKING_OK),
 * through which a test stops a module call at a lock of its choice and lets
 * other threads run meanwhile: an interleaving that a stress test meets once
 * in a while, every time.
 *
 * The module makes two kinds of mutex (pkcs11/p11_lock.c): its global lock
 * (the first one C_Initialize makes) and each session place's busy lock
 * (made when C_OpenSession makes a new place, in the order of the places:
 * the mutex made k-th after the global lock is place k's). A call on a
 * session locks its place's busy lock first, and may lock the global lock
 * while it holds it (p11_access: who is logged in, when something was
 * committed since the last look). busy_of(handle) is its place's busy lock
 * (one C_Initialize: the numbering starts again after C_Finalize).
 *
 * A thread arms a stop (il_arm) for one mutex: before locking it, after
 * locking it, before or after unlocking it (il_arm_nth: the n-th time); the
 * stop happens once: the thread posts il_stopped and waits for il_go. il_watch(m): a thread that must
 * wait for m (it is held) raises il_waiting first. il_busy_held counts the
 * busy locks held (taken by a call inside the module's fork gate only: a
 * fork child that inherits it above 0 was forked while a call worked).
 * While il_gate_shut is set (by a test's own pthread_atfork prepare handler,
 * which runs after the module's: the gate is shut and every call has left),
 * each busy lock taken counts in il_breaches. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <time.h>

enum il_at { IL_NONE, IL_BEFORE_LOCK, IL_AFTER_LOCK, IL_BEFORE_UNLOCK, IL_AFTER_UNLOCK };

typedef struct il_mx {
    pthread_mutex_t m;
    int id;
} il_mx;

static il_mx *_Atomic il_global; /* the module's global lock */
static atomic_int il_made;
static __thread int il_at;
static __thread il_mx *il_at_mx;
static __thread int il_at_skip; /* matching events to let pass first */
static sem_t il_stopped, il_go;
static il_mx *_Atomic il_watched;
static atomic_int il_waiting;
static atomic_int il_busy_held;
static atomic_int il_gate_shut, il_breaches;
static il_mx *_Atomic il_by_id[4097]; /* [0] the global lock, [1 + k] place k's busy lock */

static CK_RV il_create(void **out)
{
    il_mx *a = calloc(1, sizeof(*a));
    if (!a)
        return CKR_HOST_MEMORY;
    pthread_mutex_init(&a->m, NULL);
    a->id = atomic_fetch_add(&il_made, 1);
    if (a->id == 0)
        il_global = a;
    if (a->id < 4097)
        il_by_id[a->id] = a;
    *out = a;
    return CKR_OK;
}

static CK_RV il_destroy(void *p)
{
    il_mx *a = p;
    if (a == il_global) { /* C_Finalize: the next C_Initialize numbers them again */
        il_global = NULL;
        il_made = 0;
        for (int i = 0; i < 4097; i++)
            il_by_id[i] = NULL;
    }
    pthread_mutex_destroy(&a->m);
    free(a);
    return CKR_OK;
}

static void il_stop_here(void)
{
    if (il_at_skip > 0) {
        il_at_skip--;
        return;
    }
    il_at = IL_NONE;
    sem_post(&il_stopped);
    while (sem_wait(&il_go) != 0 && errno == EINTR) {}
}

static CK_RV il_lock(void *p)
{
    il_mx *a = p;
    if (il_at == IL_BEFORE_LOCK && il_at_mx == a)
        il_stop_here();
    if (a == il_watched) {
        if (pthread_mutex_trylock(&a->m) != 0) {
            il_waiting = 1;
            pthread_mutex_lock(&a->m);
        }
    } else {
        pthread_mutex_lock(&a->m);
    }
    if (a != il_global) {
        atomic_fetch_add(&il_busy_held, 1);
        if (il_gate_shut)
            atomic_fetch_add(&il_breaches, 1);
    }
    if (il_at == IL_AFTER_LOCK && il_at_mx == a)
        il_stop_here();
    return CKR_OK;
}

static CK_RV il_unlock(void *p)
{
    il_mx *a = p;
    if (il_at == IL_BEFORE_UNLOCK && il_at_mx == a)
        il_stop_here();
    if (a != il_global)
        atomic_fetch_sub(&il_busy_held, 1);
    pthread_mutex_unlock(&a->m);
    if (il_at == IL_AFTER_UNLOCK && il_at_mx == a)
        il_stop_here();
    return CKR_OK;
}

static CK_C_INITIALIZE_ARGS il_args = {il_create, il_destroy, il_lock, il_unlock, 0, NULL};

static void il_init(void)
{
    sem_init(&il_stopped, 0, 0);
    sem_init(&il_go, 0, 0);
}

/* The calling thread stops once at mutex m (at: enum il_at). */
static void il_arm(int at, il_mx *m)
{
    il_at_mx = m;
    il_at_skip = 0;
    il_at = at;
}

/* The same, the n-th time (n >= 1). */
static void il_arm_nth(int at, il_mx *m, int n)
{
    il_arm(at, m);
    il_at_skip = n - 1;
}

/* Has the armed thread stopped (within ms)? */
static bool il_wait_stopped(int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L)
        t.tv_sec++, t.tv_nsec -= 1000000000L;
    while (sem_timedwait(&il_stopped, &t) != 0)
        if (errno != EINTR)
            return false;
    return true;
}

static void il_release(void) { sem_post(&il_go); }

static void il_watch(il_mx *m)
{
    il_waiting = 0;
    il_watched = m;
}

/* Is mutex m held (by anyone)? */
static bool il_held(il_mx *m)
{
    if (pthread_mutex_trylock(&m->m) != 0)
        return true;
    pthread_mutex_unlock(&m->m);
    return false;
}

static unsigned place_of_handle(CK_SESSION_HANDLE s) { return (unsigned)(s & 0xfffff) - 1; }

static il_mx *busy_of(CK_SESSION_HANDLE s)
{
    unsigned p = place_of_handle(s);
    return p < 4096 ? il_by_id[1 + p] : NULL;
}
