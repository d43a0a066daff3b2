/* fork() while other threads open sessions, start operations and close
 * them (C_CloseSession clears the place it recycles: inside the fork gate
 * since this test found a child clearing a half-cleared place again),
 * and while a thread waits at the gate: every child must C_Initialize (which
 * clears the parent's places), open a session and sign. A child that dies
 * (a double free in the inherited places, a hang) fails the test.
 * FORKS (default 500: the crash it found showed about once in 1,500 forks,
 * FORKS=1500 for a longer hunt; three threads busy all along make each fork
 * cost the machine about 0.1 s of CPU). Exits 1 on a violation. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static _Atomic int stop;
static CK_OBJECT_HANDLE ecpriv;
static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const char key_id[] = "fork-recycle";
enum { NATTR = 400 };
static char lbl[NATTR][48];
static CK_ATTRIBUTE big[NATTR];

static void *churn(void *arg)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0};
    (void)arg;
    while (!stop) {
        CK_SESSION_HANDLE s;
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
        /* something for session_clear to free: a find with a big template,
         * a sign and a digest operation left open */
        CHECK(f->C_FindObjectsInit(s, big, NATTR));
        CHECK(f->C_SignInit(s, &m, ecpriv));
        CHECK(f->C_DigestInit(s, &dg));
        CHECK(f->C_CloseSession(s));
    }
    return NULL;
}

static void *signer(void *arg)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE d[32] = {1}, sig[80];
    (void)arg;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
    while (!stop) {
        CK_ULONG l = sizeof(sig);
        CHECK(f->C_SignInit(s, &m, ecpriv));
        CHECK(f->C_Sign(s, d, 32, sig, &l));
    }
    f->C_CloseSession(s);
    return NULL;
}

static int child(void)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE ft[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_ID, (void *)key_id, sizeof(key_id) - 1}};
    CK_OBJECT_HANDLE k;
    CK_ULONG n = 0, len = 80;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE d[32] = {1}, sig[80];

    alarm(20);
    if (f->C_Initialize(NULL) != CKR_OK || f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return 4;
    if (f->C_FindObjectsInit(s, ft, 2) != CKR_OK || f->C_FindObjects(s, &k, 1, &n) != CKR_OK || n != 1)
        return 6;
    f->C_FindObjectsFinal(s);
    if (f->C_SignInit(s, &m, k) != CKR_OK || f->C_Sign(s, d, 32, sig, &len) != CKR_OK)
        return 7;
    f->C_Finalize(NULL);
    return 0;
}

int main(void)
{
    const char *e = getenv("FORKS");
    int forks = e ? atoi(e) : 500, bad = 0;
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub;
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_ID, (void *)key_id, sizeof(key_id) - 1},
                         {CKA_PRIVATE, &no, 1}};
    pthread_t th[3];

    for (int i = 0; i < NATTR; i++) {
        snprintf(lbl[i], sizeof(lbl[i]), "label-%d-padding-padding-padding", i);
        big[i] = (CK_ATTRIBUTE){CKA_LABEL, lbl[i], strlen(lbl[i])};
    }
    setup();
    CHECK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 4, &pub, &ecpriv));
    pthread_create(&th[0], NULL, churn, NULL);
    pthread_create(&th[1], NULL, churn, NULL);
    pthread_create(&th[2], NULL, signer, NULL);
    for (int i = 0; i < forks; i++) {
        int st;
        pid_t c = fork();
        if (c == 0)
            _exit(child());
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st)) {
            bad++;
            fprintf(stderr, "fork %d: the child %s %d\n", i, WIFSIGNALED(st) ? "died of signal" : "exited",
                    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        }
    }
    stop = 1;
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    printf("%d forks under open/operate/close churn: %d children failed\n", forks, bad);
    teardown();
    return bad != 0;
}
