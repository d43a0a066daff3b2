/* C_Finalize and C_Initialize while other threads are in calls.
 *
 * PKCS#11 leaves C_Finalize during other threads' calls undefined; the
 * module makes it safe (p11_gate_drain): C_Finalize waits for the calls in
 * flight to return, and a call that starts once it has begun returns
 * CKR_CRYPTOKI_NOT_INITIALIZED. Before, the calls in flight used sessions
 * and the token context it freed (5 crashes in 5 runs).
 *
 * Workers loop: open a session, find the token's AES key by label, encrypt
 * with it (AES-GCM), read the token's info, close the session. Two
 * finalizers loop: C_Finalize, a moment, C_Initialize (two at once: one of
 * each pair gets CKR_CRYPTOKI_NOT_INITIALIZED or
 * CKR_CRYPTOKI_ALREADY_INITIALIZED). Expected: no crash (the sanitizer
 * builds see a use after free), no hang (SIGALRM), every return code one
 * the call may give for a library that is or is not initialized, and at
 * least some work done in each phase. Then C_CloseAllSessions of 2,000
 * sessions against C_Finalize, 10 times (close_all_against_finalize).
 * SECS (default 3). Exits 1 on a failure. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

enum { NWORK = 3, NFIN = 2 };
static atomic_int stop;
static atomic_long encrypted, refused, finalized, initialized;
static CK_C_INITIALIZE_ARGS os_locking = {.flags = CKF_OS_LOCKING_OK};
static const char LABEL[] = "in-flight";

static void fail(const char *what, CK_RV rv)
{
    fprintf(stderr, "finalize_in_flight: %s -> 0x%lx\n", what, (unsigned long)rv);
    exit(1);
}

/* A call's result while another thread may have finalized the library (or
 * closed this session with it): fine, or the end of this round. After a new
 * C_Initialize, handles start again: an old session or key handle may name
 * another worker's session (its operation active or not begun) or nothing. */
static bool go_on(const char *what, CK_RV rv)
{
    if (rv == CKR_OK)
        return true;
    if (rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
        rv == CKR_OPERATION_NOT_INITIALIZED || rv == CKR_OPERATION_ACTIVE || rv == CKR_KEY_HANDLE_INVALID) {
        atomic_fetch_add(&refused, 1);
        return false;
    }
    fail(what, rv);
    return false;
}

static void *worker(void *arg)
{
    (void)arg;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE want[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)LABEL, sizeof(LABEL) - 1}};
    uint8_t iv[12] = {1}, in[256] = {2}, out[256 + 16];
    CK_GCM_PARAMS gp = {.pIv = iv, .ulIvLen = sizeof(iv), .ulIvBits = 96, .ulTagBits = 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};

    while (!stop) {
        CK_SESSION_HANDLE s;
        CK_OBJECT_HANDLE k;
        CK_ULONG n = 0, outlen = sizeof(out);
        CK_TOKEN_INFO ti;

        if (!go_on("C_OpenSession", f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s)))
            continue;
        if (go_on("C_FindObjectsInit", f->C_FindObjectsInit(s, want, 2)) &&
            go_on("C_FindObjects", f->C_FindObjects(s, &k, 1, &n)) &&
            go_on("C_FindObjectsFinal", f->C_FindObjectsFinal(s))) {
            if (n > 1)
                fail("the key's find (objects found, not a code)", n);
            if (n == 1 && go_on("C_EncryptInit", f->C_EncryptInit(s, &gcm, k)) &&
                go_on("C_Encrypt", f->C_Encrypt(s, in, sizeof(in), out, &outlen)))
                atomic_fetch_add(&encrypted, 1);
        }
        (void)go_on("C_GetTokenInfo", f->C_GetTokenInfo(slot, &ti));
        (void)go_on("C_CloseSession", f->C_CloseSession(s));
    }
    return NULL;
}

static void pause_us(long us)
{
    struct timespec t = {0, us * 1000};
    nanosleep(&t, NULL);
}

static void *finalizer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (!stop) {
        pause_us(rand_r(&seed) % 3000);
        CK_RV rv = f->C_Finalize(NULL);
        if (rv == CKR_OK)
            atomic_fetch_add(&finalized, 1);
        else if (rv != CKR_CRYPTOKI_NOT_INITIALIZED)
            fail("C_Finalize", rv);
        pause_us(rand_r(&seed) % 1000);
        rv = f->C_Initialize(&os_locking);
        if (rv == CKR_OK)
            atomic_fetch_add(&initialized, 1);
        else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
            fail("C_Initialize", rv);
    }
    return NULL;
}

/* C_CloseAllSessions closes one session at a time, each through
 * C_CloseSession: once C_Finalize has begun, each of those is
 * CKR_CRYPTOKI_NOT_INITIALIZED, and the loop found the same session again
 * for good, inside the gate that C_Finalize waits to empty (a hang; a
 * hostile review, 2026-12-02). */
static void *close_all(void *arg)
{
    (void)arg;
    CK_RV rv = f->C_CloseAllSessions(slot);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_NOT_INITIALIZED)
        fail("C_CloseAllSessions", rv);
    return NULL;
}

static void close_all_against_finalize(int rounds)
{
    hung_message = "finalize_in_flight: hung (C_Finalize against C_CloseAllSessions)";
    for (int r = 0; r < rounds; r++) {
        CK_SESSION_HANDLE s;
        pthread_t t;
        for (int i = 0; i < 2000; i++)
            CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
        pthread_create(&t, NULL, close_all, NULL);
        pause_us(500 + r * 100);
        alarm(30);
        CHECK(f->C_Finalize(NULL));
        pthread_join(t, NULL);
        alarm(0);
        CHECK(f->C_Initialize(&os_locking));
    }
}

int main(void)
{
    const char *e = getenv("SECS");
    int secs = e ? atoi(e) : 3;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 32;
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &no, 1},
                        {CKA_ENCRYPT, &yes, 1}, {CKA_LABEL, (void *)LABEL, sizeof(LABEL) - 1}};
    CK_OBJECT_HANDLE k;
    pthread_t w[NWORK], fz[NFIN];

    setup_args(NULL, &os_locking);
    CHECK(f->C_GenerateKey(h, &gen, a, 7, &k)); /* public: no login needed after a new C_Initialize */
    hung_message = "finalize_in_flight: hung (C_Finalize waiting for a call that does not return?)";
    signal(SIGALRM, on_hang_alarm);
    alarm((unsigned)secs + 60);
    for (int i = 0; i < NWORK; i++)
        pthread_create(&w[i], NULL, worker, NULL);
    for (int i = 0; i < NFIN; i++)
        pthread_create(&fz[i], NULL, finalizer, (void *)(uintptr_t)(i + 1));
    sleep((unsigned)secs);
    stop = 1;
    for (int i = 0; i < NFIN; i++)
        pthread_join(fz[i], NULL);
    for (int i = 0; i < NWORK; i++)
        pthread_join(w[i], NULL);
    alarm(0);
    printf("finalize_in_flight: %ld encryptions, %ld calls refused, %ld C_Finalize, %ld C_Initialize\n",
           (long)encrypted, (long)refused, (long)finalized, (long)initialized);
    if (encrypted == 0 || finalized == 0 || refused == 0) {
        fprintf(stderr, "finalize_in_flight: the threads did not meet (nothing encrypted, finalized or refused)\n");
        return 1;
    }
    CK_RV rv = f->C_Initialize(&os_locking); /* for teardown's C_Finalize */
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        fail("the last C_Initialize", rv);
    close_all_against_finalize(10);
    teardown();
    return 0;
}
