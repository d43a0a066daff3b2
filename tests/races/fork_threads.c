/* fork() while other threads sign and make session keys (prefork servers,
 * Python multiprocessing): each child must find the module uninitialized,
 * then C_Initialize, find the token key (a public one: no login, so no
 * scrypt in every child) and sign; a grandchild does
 * the same, and the child still works after its own fork. A child that does
 * not finish within 20 s is a hang (it was, within the first hundred forks,
 * while OpenSSL's secure heap was on by default: its lock is not reset in a
 * fork child). FORKS (default 150) sets the number of forks. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static _Atomic int stop; /* atomic: the threads read it while main sets it */
static CK_OBJECT_HANDLE ecpriv;
static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const char key_id[] = "fork-key";

static void *busy_thread(void *arg)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE digest[32] = {1}, sig[128], val[32] = {7};
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &sk, sizeof(sk)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE, val, 32}};
    (void)arg;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    while (!stop) {
        CK_ULONG len = sizeof(sig);
        CK_OBJECT_HANDLE o;
        CHECK(f->C_SignInit(s, &m, ecpriv));
        CHECK(f->C_Sign(s, digest, 32, sig, &len));
        CHECK(f->C_CreateObject(s, a, 3, &o));
        CHECK(f->C_DestroyObject(s, o));
    }
    f->C_CloseSession(s);
    return NULL;
}

/* One child's work; its exit status says what failed (0: all worked). */
static int child(int depth)
{
    CK_INFO info;
    CK_SESSION_HANDLE s;
    CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE ft[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_ID, (void *)key_id, sizeof(key_id) - 1}};
    CK_OBJECT_HANDLE k;
    CK_ULONG n = 0, len;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE digest[32] = {1}, sig[128];

    alarm(20);
    if (f->C_GetInfo(&info) != CKR_CRYPTOKI_NOT_INITIALIZED)
        return 3;
    if (f->C_Initialize(NULL) != CKR_OK || f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return 4;
    if (f->C_FindObjectsInit(s, ft, 2) != CKR_OK || f->C_FindObjects(s, &k, 1, &n) != CKR_OK || n != 1)
        return 6;
    f->C_FindObjectsFinal(s);
    len = sizeof(sig);
    if (f->C_SignInit(s, &m, k) != CKR_OK || f->C_Sign(s, digest, 32, sig, &len) != CKR_OK)
        return 7;
    if (depth == 1) {
        int st;
        pid_t g = fork();
        if (g == 0)
            _exit(child(2));
        if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st))
            return 8;
        len = sizeof(sig);
        if (f->C_SignInit(s, &m, k) != CKR_OK || f->C_Sign(s, digest, 32, sig, &len) != CKR_OK)
            return 9;
    }
    f->C_Finalize(NULL);
    return 0;
}

int main(void)
{
    const char *e = getenv("FORKS");
    int forks = e ? atoi(e) : 150, bad = 0;
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub;
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1},
                         {CKA_ID, (void *)key_id, sizeof(key_id) - 1}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_ID, (void *)key_id, sizeof(key_id) - 1},
                         {CKA_PRIVATE, &no, 1}};
    pthread_t th[2];

    setup();
    CHECK(f->C_GenerateKeyPair(h, &gen, pt, 3, kt, 4, &pub, &ecpriv));
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, busy_thread, NULL);
    for (int i = 0; i < forks; i++) {
        int st;
        pid_t c = fork();
        if (c == 0)
            _exit(child(1));
        int w = 0;
        for (int t = 0; t < 300 && (w = waitpid(c, &st, WNOHANG)) == 0; t++)
            usleep(50000);
        if (w == 0) { /* 15 s: show where the child (and a grandchild) stands, for the report */
            char cmd[300];
            fprintf(stderr, "fork %d: child %d still running after 15 s; its threads:\n", i, (int)c);
            snprintf(cmd, sizeof(cmd),
                     "for p in %d $(pgrep -P %d); do echo \"== pid $p\"; gdb -p $p -batch -ex 'thread apply all bt' "
                     "2>/dev/null | grep -E '^#|^Thread'; done >&2",
                     (int)c, (int)c);
            if (system(cmd) != 0)
                fprintf(stderr, "(gdb could not show it)\n");
            w = waitpid(c, &st, 0);
        }
        if (w != c || !WIFEXITED(st) || WEXITSTATUS(st)) {
            bad++;
            fprintf(stderr, "fork %d: the child %s %d%s\n", i, WIFSIGNALED(st) ? "died of signal" : "exited",
                    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
                    WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM ? " (it hung)" : "");
        }
    }
    stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    printf("%d forks under two busy threads: %d children failed\n", forks, bad);
    teardown();
    return bad != 0;
}
