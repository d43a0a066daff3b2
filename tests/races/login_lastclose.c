/* C_Login against the close of the slot's last session (a known bug: the
 * test fails until it is fixed). login() (p11_session.c) finds the session,
 * lets it go (p11_session_put), checks the PIN, then records the login
 * under the global lock without looking whether the session, or any session
 * of the slot, is still open. A C_CloseSession of the slot's last session in
 * between logs out nobody (no login yet); the login recorded afterwards
 * outlives every session: the next session opened on the slot, by any
 * thread, starts logged in as the user without a PIN (and with the user's
 * token key installed). PKCS#11: when the last session of a slot closes,
 * the user is logged out.
 *
 * The interleaving is forced (interleave.h): the login stops at the global
 * lock, after its session lookup, while the test closes the session; then
 * the same with C_CloseAllSessions. Expected: a session opened after both
 * calls returned is public (CKS_RW_PUBLIC_SESSION), whatever C_Login
 * returned.
 *
 * C_Logout the same way: it finds its session, lets it go, then logs the
 * slot out. Its session closed meanwhile (the slot's last: logged out) and
 * a new session logged in, the C_Logout of the closed handle logs out the
 * new session's user. Expected: the new session stays logged in.
 * Exits 1 on a violation, 2 when the stop could not be set up. */
#include "common.h"
#include "interleave.h"

#include <signal.h>

static int bad;

typedef struct {
    CK_SESSION_HANDLE s;
    CK_RV rv;
} login_job;

static void *do_login(void *arg)
{
    login_job *j = arg;
    il_arm(IL_BEFORE_LOCK, il_global);
    j->rv = f->C_Login(j->s, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN));
    il_arm(IL_NONE, NULL);
    return NULL;
}

static void one(bool closeall)
{
    const char *how = closeall ? "C_CloseAllSessions" : "C_CloseSession";
    CK_SESSION_HANDLE a, b;
    CK_SESSION_INFO si;
    login_job j;
    pthread_t th;

    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &a));
    CHECK(f->C_GetSessionInfo(a, &si));
    if (si.state != CKS_RW_PUBLIC_SESSION) {
        fprintf(stderr, "login_lastclose: the slot's only session is not public to begin with\n");
        exit(2);
    }
    j.s = a;
    pthread_create(&th, NULL, do_login, &j);
    if (!il_wait_stopped(5000)) {
        fprintf(stderr, "login_lastclose: C_Login did not stop at the global lock: cannot test\n");
        exit(2);
    }
    CHECK(closeall ? f->C_CloseAllSessions(slot) : f->C_CloseSession(a)); /* the slot's last session */
    il_release();
    pthread_join(th, NULL);
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &b));
    CHECK(f->C_GetSessionInfo(b, &si));
    if (si.state != CKS_RW_PUBLIC_SESSION) {
        fprintf(stderr,
                "login_lastclose: C_Login on the slot's last session racing %s (login gave 0x%lx): a session "
                "opened afterwards is in state %lu, logged in without a PIN\n",
                how, (unsigned long)j.rv, (unsigned long)si.state);
        bad = 1;
    }
    CHECK(f->C_CloseAllSessions(slot)); /* logs out, for the next case */
}

static void *do_logout(void *arg)
{
    login_job *j = arg;
    il_arm(IL_BEFORE_LOCK, il_global);
    j->rv = f->C_Logout(j->s);
    il_arm(IL_NONE, NULL);
    return NULL;
}

static void stale_logout(void)
{
    CK_SESSION_HANDLE a, b;
    CK_SESSION_INFO si;
    login_job j;
    pthread_t th;

    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &a));
    CHECK(f->C_Login(a, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    j.s = a;
    pthread_create(&th, NULL, do_logout, &j);
    if (!il_wait_stopped(5000)) {
        fprintf(stderr, "login_lastclose: C_Logout did not stop at the global lock: cannot test\n");
        exit(2);
    }
    CHECK(f->C_CloseSession(a)); /* the slot's last session: logged out */
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &b));
    CHECK(f->C_Login(b, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    il_release();
    pthread_join(th, NULL);
    CHECK(f->C_GetSessionInfo(b, &si));
    if (si.state != CKS_RW_USER_FUNCTIONS) {
        fprintf(stderr,
                "login_lastclose: C_Logout of a session closed meanwhile (it gave 0x%lx) logged out the user of "
                "a session opened and logged in after the close (state %lu)\n",
                (unsigned long)j.rv, (unsigned long)si.state);
        bad = 1;
    }
    CHECK(f->C_CloseAllSessions(slot));
}

int main(void)
{
    il_init();
    hung_message = "login_lastclose: hung";
    signal(SIGALRM, on_hang_alarm);
    alarm(20);
    setup_args(NULL, &il_args);
    if (!il_global) {
        fprintf(stderr, "login_lastclose: the module did not use the application's mutexes\n");
        return 2;
    }
    CHECK(f->C_CloseSession(h)); /* no session: nobody logged in */
    one(false);
    one(true);
    stale_logout();
    printf("login_lastclose: %s\n", bad ? "VIOLATION" : "all held");
    teardown();
    return bad;
}
