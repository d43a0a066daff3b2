/* pthread_cancel of a thread that is inside a module call. A call reaches
 * cancellation points (LMDB's write and fdatasync when an object is made,
 * a PIN attempt's wait, OpenSSL's getrandom), and a thread cancelled at one
 * of them unwound out of the module holding what the call held: its count
 * in the fork gate (every later fork waited for it for ever), its session's
 * busy lock (C_CloseSession waited for ever), C_WaitForSlotEvent's lock and
 * waiter count (C_Finalize waited for ever). Now a call defers cancellation
 * to its return (p11_gate_enter/leave), and a blocked C_WaitForSlotEvent
 * stays cancellable, leaving its state as it found it.
 *
 * 1. A thread blocked in C_WaitForSlotEvent is cancelled: the join must end,
 *    and C_WaitForSlotEvent(CKF_DONT_BLOCK) must answer CKR_NO_EVENT.
 * 2. Rounds: a thread makes and destroys token objects on its own session,
 *    the main thread cancels it after a few milliseconds, joins it, and
 *    closes its session. The thread's cleanup handler records whether the
 *    cancellation acted inside a call (it must not).
 * 3. A fork: the child's C_Initialize and C_Finalize; then C_Finalize.
 * 4. Rounds: four waiters, half of them of the asynchronous cancel type,
 *    cancelled while another thread runs C_Finalize; then C_Initialize.
 *    (An asynchronous cancellation once acted inside the waiters'
 *    pthread_cond_timedwait, which is not async-cancel-safe, and left
 *    ev.lock held: C_Finalize waited for ever. C_WaitForSlotEvent now
 *    waits with the deferred type whatever the caller's.)
 * Exits 1 on a hang (alarm) or a cancellation inside a call. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

static volatile int in_call;     /* the worker is inside a module call */
static volatile int acted_in;    /* its cancellation acted inside one */
static volatile int acted_out;   /* ... outside (as it must) */

static void on_cancel(void *arg)
{
    (void)arg;
    if (in_call)
        acted_in = 1;
    else
        acted_out = 1;
}

static void *maker(void *arg)
{
    CK_SESSION_HANDLE s = *(CK_SESSION_HANDLE *)arg;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BYTE value[64] = {1};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_VALUE, value, sizeof(value)}};

    pthread_cleanup_push(on_cancel, NULL);
    for (;;) {
        CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
        in_call = 1;
        CK_RV rv = f->C_CreateObject(s, t, 3, &o);
        in_call = 0;
        if (rv == CKR_OK) {
            in_call = 1;
            f->C_DestroyObject(s, o);
            in_call = 0;
        }
        pthread_testcancel();
    }
    pthread_cleanup_pop(0);
    return NULL;
}

static void *waiter(void *arg)
{
    CK_SLOT_ID s;
    (void)arg;
    CK_RV rv = f->C_WaitForSlotEvent(0, &s, NULL); /* no event comes: blocks until cancelled */
    fprintf(stderr, "cancel_in_call: C_WaitForSlotEvent returned 0x%lx, expected to block\n", (unsigned long)rv);
    exit(1);
}

/* Part 4's waiter: waits again after each return (CKR_CRYPTOKI_NOT_INITIALIZED
 * once C_Finalize ran) until cancelled. */
static void *rewaiter(void *arg)
{
    CK_SLOT_ID s;
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* Not under the sanitizers: they cannot follow a thread's unwinding from
     * an asynchronous cancellation (AddressSanitizer then finds the dead
     * thread's stack still poisoned as it tears the thread down). */
    if ((long)arg & 1)
        pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, NULL);
#else
    (void)arg;
#endif
    for (;;) {
        f->C_WaitForSlotEvent(0, &s, NULL);
        pthread_testcancel();
    }
    return NULL;
}

static void *finalizer(void *arg)
{
    (void)arg;
    f->C_Finalize(NULL);
    return NULL;
}

static void watch(const char *what, unsigned seconds)
{
    hung_message = what;
    alarm(seconds);
}

int main(void)
{
    pthread_t t;
    CK_SLOT_ID ev;
    int rounds_in = 0, rounds_out = 0, st;

    signal(SIGALRM, on_hang_alarm);
    setup();
    srand((unsigned)time(NULL));

    /* 1. (the token's initialization by setup is an event: taken first) */
    while (f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL) == CKR_OK)
        ;
    pthread_create(&t, NULL, waiter, NULL);
    usleep(300 * 1000);
    pthread_cancel(t);
    watch("cancel_in_call: joining the cancelled C_WaitForSlotEvent hung", 20);
    pthread_join(t, NULL);
    watch("cancel_in_call: C_WaitForSlotEvent after a cancelled waiter hung (its lock left held)", 20);
    CK_RV rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL);
    alarm(0);
    if (rv != CKR_NO_EVENT) {
        fprintf(stderr, "cancel_in_call: C_WaitForSlotEvent(CKF_DONT_BLOCK) after a cancelled waiter -> 0x%lx\n",
                (unsigned long)rv);
        return 1;
    }

    /* 2. */
    for (int i = 0; i < 30; i++) {
        CK_SESSION_HANDLE s;
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
        acted_in = acted_out = 0;
        pthread_create(&t, NULL, maker, &s);
        usleep((useconds_t)(2000 + rand() % 15000));
        pthread_cancel(t);
        watch("cancel_in_call: joining a cancelled worker hung", 30);
        pthread_join(t, NULL);
        watch("cancel_in_call: C_CloseSession of a cancelled worker's session hung (its lock left held)", 30);
        rv = f->C_CloseSession(s);
        alarm(0);
        if (rv != CKR_OK) {
            fprintf(stderr, "cancel_in_call: C_CloseSession -> 0x%lx\n", (unsigned long)rv);
            return 1;
        }
        rounds_in += acted_in;
        rounds_out += acted_out;
    }
    printf("cancellations: %d inside a call, %d between calls\n", rounds_in, rounds_out);
    fflush(stdout);

    /* 3. */
    watch("cancel_in_call: fork hung (a cancelled call still counted in the fork gate)", 30);
    pid_t c = fork();
    if (c == 0) {
        watch("cancel_in_call: the fork child's C_Initialize/C_Finalize hung", 20);
        if (f->C_Initialize(NULL) != CKR_OK || f->C_Finalize(NULL) != CKR_OK)
            _exit(3);
        _exit(0);
    }
    if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "cancel_in_call: the fork child failed (status 0x%x)\n", st);
        return 1;
    }
    watch("cancel_in_call: C_Finalize hung", 30);
    CHECK(f->C_Finalize(NULL));
    alarm(0);

    /* 4. */
    for (int i = 0; i < 1000; i++) {
        pthread_t w[4], fin;
        watch("cancel_in_call: C_Initialize after cancelled waiters hung", 30);
        CHECK(f->C_Initialize(NULL));
        while (f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL) == CKR_OK)
            ;
        for (long j = 0; j < 4; j++)
            pthread_create(&w[j], NULL, rewaiter, (void *)j);
        usleep((useconds_t)(rand() % 2000));
        pthread_cancel(w[0]);
        pthread_cancel(w[1]);
        pthread_create(&fin, NULL, finalizer, NULL);
        pthread_cancel(w[2]);
        pthread_cancel(w[3]);
        watch("cancel_in_call: C_Finalize among cancelled waiters hung (ev.lock left held)", 30);
        pthread_join(fin, NULL);
        for (int j = 0; j < 4; j++)
            pthread_join(w[j], NULL);
        alarm(0);
    }
    if (rounds_in) {
        fprintf(stderr, "cancel_in_call: %d cancellations acted inside a call\n", rounds_in);
        return 1;
    }
    return 0;
}
