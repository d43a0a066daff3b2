/* p11mk pkcs11 layer: mutexes, either the OS's (pthreads) or the
 * application's (CK_C_INITIALIZE_ARGS callbacks). */
#include "p11_internal.h"

#include <pthread.h>
#include <stdlib.h>

static CK_C_INITIALIZE_ARGS app_locks; /* CreateMutex == NULL: use pthreads */

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
    pthread_mutex_t *m;

    if (app_locks.CreateMutex) {
        void *am = NULL;
        CK_RV rv = app_locks.CreateMutex(&am);

        if (rv == CKR_OK)
            *out = am;
        return rv;
    }
    m = malloc(sizeof(*m));
    if (!m)
        return CKR_HOST_MEMORY;
    pthread_mutex_init(m, NULL);
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
    pthread_mutex_destroy((pthread_mutex_t *)m);
    free(m);
}

void p11_mutex_lock(p11_mutex *m)
{
    if (app_locks.LockMutex)
        app_locks.LockMutex(m);
    else
        pthread_mutex_lock((pthread_mutex_t *)m);
}

void p11_mutex_unlock(p11_mutex *m)
{
    if (app_locks.UnlockMutex)
        app_locks.UnlockMutex(m);
    else
        pthread_mutex_unlock((pthread_mutex_t *)m);
}
