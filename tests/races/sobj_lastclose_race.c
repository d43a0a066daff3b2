/* Session objects: closing what was the token's last session drops every
 * session object of the slot after the global lock is released
 * (C_CloseSession: unlink, then p11_session_count() == 0, then
 * tok_sobjs_drop_slot). A session opened by another thread in that window
 * loses the object it has just created, while it is still open.
 * Expected: a session object lives as long as its session. */
#include "common.h"
#include <pthread.h>

static volatile int stop;
static long lost, made;

static void *keeper(void *arg)
{
    (void)arg;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1}};
    while (!stop) {
        CK_SESSION_HANDLE s;
        CK_OBJECT_HANDLE o;
        CK_ULONG sz;
        if (f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK)
            continue;
        if (f->C_CreateObject(s, a, 2, &o) == CKR_OK) {
            made++;
            for (int i = 0; i < 50; i++)
                if (f->C_GetObjectSize(s, o, &sz) != CKR_OK) { lost++; break; }
        }
        f->C_CloseSession(s);
    }
    return NULL;
}

static void *churn(void *arg)
{
    (void)arg;
    while (!stop) {
        CK_SESSION_HANDLE s;
        if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK)
            f->C_CloseSession(s);
    }
    return NULL;
}

int main(void)
{
    setup();
    CHECK(f->C_CloseAllSessions(slot));
    pthread_t a, b, c;
    pthread_create(&a, NULL, keeper, NULL);
    pthread_create(&b, NULL, churn, NULL);
    pthread_create(&c, NULL, churn, NULL);
    sleep(5);
    stop = 1;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    pthread_join(c, NULL);
    printf("%ld of %ld session objects vanished while their session was open\n", lost, made);
    teardown();
    return lost ? 1 : 0;
}
