/* p11mk pkcs11 layer: mutexes, either the OS's or the application's
 * (CK_C_INITIALIZE_ARGS callbacks).
 *
 * The OS's is a word and the kernel's futex, not a pthread mutex: every
 * operation takes and leaves its session's lock twice (init and the call
 * that ends it), and glibc's general mutex (its type, robust and priority
 * checks) cost about 65 instructions a pair where this costs a dozen; both
 * are one locked instruction to take and one to leave. The word: 0 free,
 * 1 held, 2 held and someone may wait (the classic three-state futex
 * mutex). Not robust: a thread never dies holding one (a fork child
 * abandons the ones a parent thread may hold, p11_state_abandon); no
 * system call is a cancellation point here (syscall(2) is not one). */
#include "p11_internal.h"

#include <linux/futex.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    uint32_t word;
} os_mutex;

static void os_wait(uint32_t *w) { (void)syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, 2u, NULL, NULL, 0); }
static void os_wake(uint32_t *w) { (void)syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0); }

static void os_lock(os_mutex *m)
{
    uint32_t c = 0;
    if (__builtin_expect(__atomic_compare_exchange_n(&m->word, &c, 1u, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED), 1))
        return;
    if (c != 2)
        c = __atomic_exchange_n(&m->word, 2u, __ATOMIC_ACQUIRE);
    while (c != 0) {
        os_wait(&m->word);
        c = __atomic_exchange_n(&m->word, 2u, __ATOMIC_ACQUIRE);
    }
}

static void os_unlock(os_mutex *m)
{
    if (__atomic_exchange_n(&m->word, 0u, __ATOMIC_RELEASE) == 2)
        os_wake(&m->word);
}

static CK_C_INITIALIZE_ARGS app_locks; /* CreateMutex == NULL: the OS's (os_mutex) */

CK_RV p11_locking_setup(const CK_C_INITIALIZE_ARGS *args)
{
    int given;

    memset(&app_locks, 0, sizeof(app_locks));
    if (!args)
        return CKR_OK;
    if (args->pReserved)
        return CKR_ARGUMENTS_BAD;
    given = !!args->CreateMutex + !!args->DestroyMutex + !!args->LockMutex + !!args->UnlockMutex;
    if (given != 0 && given != 4)
        return CKR_ARGUMENTS_BAD;
    /* With CKF_OS_LOCKING_OK we may use either; we prefer the OS's. */
    if (given == 4 && !(args->flags & CKF_OS_LOCKING_OK))
        app_locks = *args;
    return CKR_OK;
}

CK_RV p11_mutex_new(p11_mutex **out)
{
    os_mutex *m;

    if (app_locks.CreateMutex) {
        void *am = NULL;
        CK_RV rv = app_locks.CreateMutex(&am);

        if (rv == CKR_OK)
            *out = am;
        return rv;
    }
    m = calloc(1, sizeof(*m));
    if (!m)
        return CKR_HOST_MEMORY;
    *out = (p11_mutex *)m;
    return CKR_OK;
}

void p11_mutex_free(p11_mutex *m)
{
    if (!m)
        return;
    if (app_locks.DestroyMutex) {
        app_locks.DestroyMutex(m);
        return;
    }
    free(m);
}

void p11_mutex_lock(p11_mutex *m)
{
    if (app_locks.LockMutex)
        app_locks.LockMutex(m);
    else
        os_lock((os_mutex *)m);
}

void p11_mutex_unlock(p11_mutex *m)
{
    if (app_locks.UnlockMutex)
        app_locks.UnlockMutex(m);
    else
        os_unlock((os_mutex *)m);
}
