/* Session objects: a session object created by a call on session S that runs
 * while another thread closes S can outlive S (the create holds S, the close
 * unlinks S and drops S's objects, then the create adds its object owned by
 * the closed S). It stays visible to the application's other sessions until
 * the token's last session closes. Expected: a session's objects are
 * destroyed with it (none left once C_CloseSession returned and the creating
 * call came back). */
#include "common.h"
#include <pthread.h>

static CK_SESSION_HANDLE victim;
static volatile int go; /* (read and written with __atomic: the creator spins on it) */

static void *creator(void *arg)
{
    (void)arg;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1}, {CKA_LABEL, "orphan", 6}};
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE)) {}
    for (;;) {
        CK_OBJECT_HANDLE o;
        if (f->C_CreateObject(victim, a, 3, &o) == CKR_SESSION_HANDLE_INVALID)
            break;
    }
    return NULL;
}

int main(void)
{
    setup();
    int rounds = 300, orphans = 0;
    for (int r = 0; r < rounds; r++) {
        pthread_t th;
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &victim));
        __atomic_store_n(&go, 0, __ATOMIC_RELEASE);
        pthread_create(&th, NULL, creator, NULL);
        __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
        usleep(500);
        CHECK(f->C_CloseSession(victim));
        pthread_join(th, NULL);
        CK_OBJECT_HANDLE v[16];
        CK_ULONG n = 0;
        CK_ATTRIBUTE q[] = {{CKA_LABEL, "orphan", 6}};
        CHECK(f->C_FindObjectsInit(h, q, 1));
        CHECK(f->C_FindObjects(h, v, 16, &n));
        CHECK(f->C_FindObjectsFinal(h));
        if (n) {
            orphans++;
            for (CK_ULONG i = 0; i < n; i++)
                f->C_DestroyObject(h, v[i]);
        }
    }
    printf("%d of %d rounds left objects of the closed session\n", orphans, rounds);
    teardown();
    return orphans ? 1 : 0;
}
