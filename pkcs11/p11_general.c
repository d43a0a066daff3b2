/* p11mk pkcs11 layer: library initialization, finalization, info (the
 * module state they set up: p11_state.c). */
#include "p11_internal.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

/* C_Initialize/C_Finalize themselves are serialized by a process mutex. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* The gate, then init_lock: taken inside the gate (a fork waits for its
 * holder) but never waited for there, since a C_Finalize that holds it waits
 * for every other call in the gate to return (p11_gate_drain). A thread that
 * finds it held leaves the gate and tries again a moment later, holding
 * nothing while it waits. */
static p11_gate enter_init_locked(void)
{
    for (long ns = 100000;; ns = ns < 6400000 ? ns * 2 : ns) { /* 0.1 ms, doubling to 6.4 ms (a slow open) */
        p11_gate g = p11_gate_enter();
        if (pthread_mutex_trylock(&init_lock) == 0)
            return g;
        p11_gate_leave(g);
        struct timespec t = {0, ns};
        nanosleep(&t, NULL);
    }
}

/* In a fork child, the parent's state is abandoned: its sessions and login
 * state do not carry over (PKCS#11 2.40 section 6.7.7), and the keystore
 * layer opens a fresh environment. Memory that is ours is freed. */
static void forget_parent(void)
{
    tok_ctx *tok = NULL;
    p11_mutex *lock = NULL;

    p11_sessions_free(true);
    p11_events_forget();
    /* The context is abandoned with its session objects: the keystore layer
     * handles the child's reopen. */
    p11_state_clear(&tok, &lock);
    p11_state_abandon(tok);
    p11_state_abandon(lock);
}

/* C_Initialize's own list (PKCS#11 3.0, 5.4): the keystore's failures
 * (CKR_DEVICE_ERROR: storage unreadable, a database gone) are not in it, and
 * are CKR_GENERAL_ERROR here; the log says what failed. */
static CK_RV initialize_rv(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
    case CKR_ARGUMENTS_BAD:
    case CKR_CANT_LOCK:
    case CKR_CRYPTOKI_ALREADY_INITIALIZED:
    case CKR_FUNCTION_FAILED:
    case CKR_GENERAL_ERROR:
    case CKR_HOST_MEMORY:
    case CKR_NEED_TO_CREATE_THREADS:
        return rv;
    default:
        return CKR_GENERAL_ERROR;
    }
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    CK_RV rv;

    p11_mutex *lock = NULL;
    tok_ctx *tok = NULL;

    p11_gate_setup(); /* with the layers' fork handlers, outside the gate */
    p11_gate g = enter_init_locked();
    if (p11_state_forked())
        forget_parent();
    else if (p11_state_fork_child())
        /* The parent was not initialized at the fork, but one of its threads
         * may have held C_WaitForSlotEvent's lock, which is taken outside the
         * gate (a waiter that passed its check before a C_Finalize:
         * races/event_lock_fork). */
        p11_events_forget();
    if (p11_state_published()) {
        pthread_mutex_unlock(&init_lock);
        p11_gate_leave(g);
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    rv = p11_locking_setup(pInitArgs);
    if (rv == CKR_OK)
        rv = p11_mutex_new(&lock);
    if (rv == CKR_OK) {
        const CK_C_INITIALIZE_ARGS *ia = pInitArgs;
        bool no_threads = ia && (ia->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS);
        rv = tok_ctx_open(TOK_CTX_CREATE | (no_threads ? TOK_CTX_NO_THREADS : 0), &tok);
        if (rv == CKR_OK && (rv = p11_events_start(tok)) != CKR_OK)
            tok_ctx_close(tok);
        if (rv != CKR_OK)
            p11_mutex_free(lock);
    }
    if (rv == CKR_OK) {
        p11_sessions_init();
        p11_state_publish(tok, lock); /* last: other threads see a complete state */
    }
    pthread_mutex_unlock(&init_lock);
    p11_gate_leave(g);
    return initialize_rv(rv);
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    return_val_if_fail(pReserved == NULL, CKR_ARGUMENTS_BAD);
    p11_gate_setup();
    p11_gate g = enter_init_locked();
    if (!p11_initialized()) {
        pthread_mutex_unlock(&init_lock);
        p11_gate_leave(g);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    p11_mutex *lock = NULL;
    tok_ctx *tok = NULL;

    /* Other threads' calls (which PKCS#11 leaves undefined here): those
     * that start now return CKR_CRYPTOKI_NOT_INITIALIZED, those in flight
     * finish with the state as it is (tests/races/finalize_in_flight). */
    p11_state_unpublish();
    p11_gate_drain(g);
    p11_events_stop(); /* ends every C_WaitForSlotEvent, waits for them to leave */
    p11_sessions_free(false);
    p11_state_clear(&tok, &lock);
    tok_ctx_close(tok); /* with the session objects */
    p11_mutex_free(lock);
    pthread_mutex_unlock(&init_lock);
    p11_gate_leave(g);
    return CKR_OK;
}

static void pad(CK_UTF8CHAR *dst, size_t n, const char *src)
{
    size_t l = strlen(src);

    memset(dst, ' ', n);
    memcpy(dst, src, l < n ? l : n);
}

CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pInfo != NULL, CKR_ARGUMENTS_BAD);
    memset(pInfo, 0, sizeof(*pInfo));
    pInfo->cryptokiVersion.major = 2;
    pInfo->cryptokiVersion.minor = 40;
    pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "p11mk project");
    pad(pInfo->libraryDescription, sizeof(pInfo->libraryDescription), "p11mk master-key sealed token");
    pInfo->libraryVersion.major = 0;
    pInfo->libraryVersion.minor = 1;
    return CKR_OK;
}

CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen)
{
    p11_session *s;
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    rv = p11_session_get(hSession, &s);
    if (rv != CKR_OK)
        return rv;
    if (!pRandomData && ulRandomLen)
        rv = CKR_ARGUMENTS_BAD;
    else if (ulRandomLen)
        rv = tok_random(pRandomData, ulRandomLen);
    p11_session_put(s);
    return rv;
}

CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
    p11_session *s;
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    rv = p11_session_get(hSession, &s);
    if (rv != CKR_OK)
        return rv;
    /* The caller's bytes are mixed in as additional input; the DRBG keeps its
     * own entropy from the operating system. */
    rv = (!pSeed && ulSeedLen) ? CKR_ARGUMENTS_BAD : tok_seed(pSeed, ulSeedLen);
    p11_session_put(s);
    return rv;
}
