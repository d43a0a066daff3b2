/* Session objects: a private session object created while another thread
 * calls C_Logout can outlive the logout (the creator's access was computed
 * before the logout, the object added after the logout dropped the private
 * ones). Logging in again shows it. Expected (PKCS#11: private session
 * objects are destroyed at logout): after C_Logout returns and the creators
 * stop, no private session object exists. */
#include "common.h"
#include <pthread.h>

#define NT 4
static _Atomic int stop; /* atomic: the threads read it while main sets it */
static CK_SESSION_HANDLE sess[NT];

static void *creator(void *arg)
{
    CK_SESSION_HANDLE s = *(CK_SESSION_HANDLE *)arg;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_PRIVATE, &yes, 1}, {CKA_TOKEN, &no, 1},
                        {CKA_LABEL, "race", 4}};
    while (!stop) {
        CK_OBJECT_HANDLE o;
        f->C_CreateObject(s, a, 4, &o);
    }
    return NULL;
}

int main(void)
{
    setup();
    /* LOGOUT_ROUNDS (default 200; the sanitizer lane runs fewer) */
    int leaks = 0, rounds = getenv("LOGOUT_ROUNDS") ? atoi(getenv("LOGOUT_ROUNDS")) : 200;
    for (int i = 0; i < NT; i++)
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &sess[i]));
    for (int r = 0; r < rounds; r++) {
        pthread_t th[NT];
        stop = 0;
        for (int i = 0; i < NT; i++)
            pthread_create(&th[i], NULL, creator, &sess[i]);
        usleep(2000);
        CHECK(f->C_Logout(h));
        stop = 1;
        for (int i = 0; i < NT; i++)
            pthread_join(th[i], NULL);
        CHECK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
        CK_OBJECT_HANDLE found[64];
        CK_ULONG nf = 0;
        CK_ATTRIBUTE q[] = {{CKA_PRIVATE, &yes, 1}, {CKA_TOKEN, &no, 1}};
        CHECK(f->C_FindObjectsInit(h, q, 2));
        CHECK(f->C_FindObjects(h, found, 64, &nf));
        CHECK(f->C_FindObjectsFinal(h));
        if (nf) {
            leaks++;
            printf("round %d: %lu private session object(s) survived C_Logout\n", r, nf);
            for (CK_ULONG k = 0; k < nf; k++)
                f->C_DestroyObject(h, found[k]);
        }
    }
    printf("%d of %d rounds left private session objects after logout\n", leaks, rounds);
    teardown();
    return leaks ? 1 : 0;
}
