/* C_CloseAllSessions against a session opened meanwhile (a known bug: the
 * test fails until it is fixed). C_CloseAllSessions (p11_session.c) closes
 * the slot's sessions one by one until a look under the global lock finds
 * none, then drops every session object of the slot
 * (tok_sobjs_drop_slot), without the lock: a session another thread opens
 * between that look and the drop is not closed, yet loses the session
 * objects it made, while it is open (what races/sobj_lastclose found for
 * C_CloseSession's slot-wide drop, which went; each close already drops its
 * session's objects).
 *
 * Forced (interleave.h): C_CloseAllSessions stops right after its last
 * look (the 4th unlock of the global lock: its first look, the close of the
 * slot's one session (two), the last look); the main thread opens a session
 * and makes a session object; C_CloseAllSessions goes on. Expected: the
 * session is open and its object there. Exits 1 on a violation, 2 when the
 * stop could not be set up. */
#include "common.h"
#include "interleave.h"

#include <signal.h>

static CK_RV closeall_rv;

static void *closeall(void *arg)
{
    (void)arg;
    il_arm_nth(IL_AFTER_UNLOCK, il_global, 4);
    closeall_rv = f->C_CloseAllSessions(slot);
    il_arm(IL_NONE, NULL);
    return NULL;
}

int main(void)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1}, {CKA_LABEL, "mine", 4}};
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE o;
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;
    CK_ULONG size;
    pthread_t th;
    int bad = 0;

    il_init();
    hung_message = "closeall_sobj: hung";
    signal(SIGALRM, on_hang_alarm);
    alarm(20);
    setup_args(NULL, &il_args); /* h: the slot's one session */
    if (!il_global) {
        fprintf(stderr, "closeall_sobj: the module did not use the application's mutexes\n");
        return 2;
    }
    pthread_create(&th, NULL, closeall, NULL);
    if (!il_wait_stopped(5000)) {
        fprintf(stderr, "closeall_sobj: C_CloseAllSessions did not stop: cannot test\n");
        return 2;
    }
    CHECK(f->C_GetTokenInfo(slot, &ti));
    if (ti.ulSessionCount != 0) {
        fprintf(stderr, "closeall_sobj: C_CloseAllSessions stopped with %lu session(s) open: cannot test\n",
                (unsigned long)ti.ulSessionCount);
        return 2;
    }
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    CHECK(f->C_CreateObject(s, a, 3, &o));
    il_release();
    pthread_join(th, NULL);
    CHECK(closeall_rv);
    if (f->C_GetSessionInfo(s, &si) != CKR_OK) {
        fprintf(stderr, "closeall_sobj: the session opened after C_CloseAllSessions' last look was closed\n");
        return 2;
    }
    CK_RV rv = f->C_GetObjectSize(s, o, &size);
    if (rv != CKR_OK) {
        fprintf(stderr,
                "closeall_sobj: a session object of a session opened during C_CloseAllSessions is gone (0x%lx) "
                "while the session is open\n",
                (unsigned long)rv);
        bad = 1;
    }
    printf("closeall_sobj: %s\n", bad ? "VIOLATION" : "held");
    teardown();
    return bad;
}
