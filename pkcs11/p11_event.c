/* p11mk pkcs11 layer: C_WaitForSlotEvent.
 *
 * What an event is the token layer's (tok_slot_watch: a token initialized,
 * re-initialized or deleted by any process); here are the waiting and its
 * end. The keystore has no notification to wait on, so a blocked caller
 * looks again every P11_EVENT_POLL_MS (one read transaction: the token list
 * and each token's incarnation). C_Finalize ends every wait, which then
 * returns CKR_CRYPTOKI_NOT_INITIALIZED, and frees the context only once no
 * waiter uses it. */
#include "p11_internal.h"

#include <pthread.h>
#include <time.h>

#define P11_EVENT_POLL_MS 100

static struct {
    pthread_mutex_t lock; /* all of the below */
    pthread_cond_t cond;  /* a poll's end, C_Finalize, a waiter leaving */
    tok_ctx *tok;         /* the context the watch reads, NULL when not initialized */
    tok_slot_watch *watch;
    int waiters;
    bool closing;
} ev = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t ev_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t look_lock = PTHREAD_MUTEX_INITIALIZER; /* one look at a time (look()) */

static void ev_cond_init(void)
{
    pthread_condattr_t a;

    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&ev.cond, &a);
    pthread_condattr_destroy(&a);
}

CK_RV p11_events_start(tok_ctx *tok)
{
    tok_slot_watch *w = NULL;
    CK_RV rv = tok_slot_watch_new(tok, &w); /* the slots as C_Initialize finds them */

    if (rv != CKR_OK)
        return rv;
    pthread_once(&ev_once, ev_cond_init);
    pthread_mutex_lock(&ev.lock);
    ev.tok = tok;
    ev.watch = w;
    ev.closing = false;
    pthread_mutex_unlock(&ev.lock);
    return CKR_OK;
}

void p11_events_stop(void)
{
    pthread_once(&ev_once, ev_cond_init);
    pthread_mutex_lock(&ev.lock);
    ev.closing = true;
    pthread_cond_broadcast(&ev.cond);
    while (ev.waiters)
        pthread_cond_wait(&ev.cond, &ev.lock);
    tok_slot_watch_free(ev.watch);
    ev.watch = NULL;
    ev.tok = NULL;
    pthread_mutex_unlock(&ev.lock);
}

void p11_events_forget(void)
{
    /* A fork child: the parent's waiters are not here, and a parent thread
     * may have held the lock at the fork. */
    pthread_mutex_init(&ev.lock, NULL);
    pthread_mutex_init(&look_lock, NULL);
    ev_cond_init();
    p11_state_abandon(ev.watch);
    ev.watch = NULL;
    ev.tok = NULL;
    ev.waiters = 0;
    ev.closing = false;
}

/* One look at the slots, called with ev.lock held and returning with it
 * held. It works inside the fork gate, which is taken before any lock of
 * ours (C_Initialize and C_Finalize hold the gate, then take ev.lock), so
 * ev.lock is let go meanwhile: the watch stays, since C_Finalize waits for
 * every waiter to leave, and look_lock keeps two waiters' looks apart.
 * While a fork is under way the look is skipped (no event seen), never
 * waited for: a C_Finalize inside the gate may be waiting for this waiter,
 * and the fork for C_Finalize (races/fork_finalize_wait). */
static CK_RV look(CK_SLOT_ID *slot)
{
    tok_ctx *tok = ev.tok;
    tok_slot_watch *watch = ev.watch;
    CK_RV rv;
    p11_gate g;

    if (!p11_gate_try_enter(&g))
        return CKR_NO_EVENT;
    pthread_mutex_unlock(&ev.lock);
    pthread_mutex_lock(&look_lock);
    rv = tok_slot_watch_next(tok, watch, slot);
    pthread_mutex_unlock(&look_lock);
    p11_gate_leave(g);
    pthread_mutex_lock(&ev.lock);
    return rv;
}

static void deadline_in(struct timespec *t, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_nsec += ms * 1000000L;
    t->tv_sec += t->tv_nsec / 1000000000L;
    t->tv_nsec %= 1000000000L;
}

/* A waiter cancelled in its wait (pthread_cancel; the wait is the one place
 * of C_WaitForSlotEvent where it can be): ev.lock is held again when this
 * runs. It leaves as a returning waiter does. */
static void waiter_cancelled(void *arg)
{
    (void)arg;
    if (--ev.waiters == 0 && ev.closing)
        pthread_cond_broadcast(&ev.cond);
    pthread_mutex_unlock(&ev.lock);
}

CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
    CK_RV rv;
    int cancel, type;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pSlot != NULL && pReserved == NULL, CKR_ARGUMENTS_BAD);
    /* Not cancellable but in its wait, where a blocked waiter may well be
     * cancelled (the caller's cancelability then, as it was, but always
     * deferred: pthread_cond_timedwait is not async-cancel-safe, and an
     * asynchronous cancellation acting inside it, outside its futex wait,
     * leaves ev.lock in a state the cleanup handler cannot know). */
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, &type);
    pthread_mutex_lock(&ev.lock);
    if (!ev.watch || ev.closing) {
        pthread_mutex_unlock(&ev.lock);
        pthread_setcanceltype(type, NULL);
        pthread_setcancelstate(cancel, NULL);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    ev.waiters++;
    for (;;) {
        if (ev.closing) {
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;
            break;
        }
        rv = look(pSlot);
        if (rv != CKR_NO_EVENT || (flags & CKF_DONT_BLOCK))
            break;
        struct timespec t;
        deadline_in(&t, P11_EVENT_POLL_MS);
        pthread_cleanup_push(waiter_cancelled, NULL);
        pthread_setcancelstate(cancel, NULL);
        pthread_cond_timedwait(&ev.cond, &ev.lock, &t);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        pthread_cleanup_pop(0);
    }
    if (--ev.waiters == 0 && ev.closing)
        pthread_cond_broadcast(&ev.cond); /* C_Finalize waits for the last one */
    pthread_mutex_unlock(&ev.lock);
    pthread_setcanceltype(type, NULL);
    pthread_setcancelstate(cancel, NULL);
    return rv;
}
