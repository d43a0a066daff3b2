/* Session lookup against close and reopen, in the interleavings that matter,
 * each forced (interleave.h: the application's mutexes stop a call at a lock
 * while the test goes on in other threads). A call holds only its session's
 * busy lock (p11_session.c); C_CloseSession marks the session closed, waits
 * for the busy lock, clears the session and frees its place; C_OpenSession
 * reuses the place without the busy lock.
 *
 *  stale_reopen   a call with handle A passed the lock-free look and waits
 *                 for A's busy lock; meanwhile A is closed and its place
 *                 opened again as B. The call must fail
 *                 (CKR_SESSION_HANDLE_INVALID) and leave B alone (no
 *                 operation started on B).
 *  stale_closed   the same, without the reopen until the call failed: A's
 *                 place still holds A's handle, only `closed` says no.
 *  stale_held     a call with the closed handle A holds the place's busy lock
 *                 (its checks not made yet) while B opens in the place: the
 *                 open does not wait for it; the call fails; B is clean.
 *  inflight_obj   a call on A (C_CreateObject of a session object) holds A's
 *                 busy lock and waits for the global lock, A's checks passed;
 *                 C_CloseSession(A) (then C_CloseAllSessions) must not return
 *                 before the call, and the call's object must not outlive A.
 *  inflight_op    the same with C_EncryptInit: the operation must not reach
 *                 the session opened next in A's place.
 *  close_checks   a call on A holds A's busy lock before its checks while A
 *                 is closed: no hang, the close ends after the call.
 * Each case stops after 10 s at most (a hang is a failure: alarm).
 * Exits 1 on a violation, 2 when a stop could not be set up. */
#include "common.h"
#include "interleave.h"

#include <signal.h>

static int bad;
#define FAIL(...) do { fprintf(stderr, "session_interleave: " __VA_ARGS__); bad = 1; } while (0)

enum { CALL_DIGEST_INIT, CALL_SESSION_INFO, CALL_CREATE_SOBJ, CALL_ENCRYPT_INIT, CALL_CLOSE, CALL_CLOSE_ALL };

typedef struct {
    int call;
    CK_SESSION_HANDLE s;
    int at;
    il_mx *m;
    CK_RV rv;
    atomic_int done;
    pthread_t th;
} job;

static CK_OBJECT_HANDLE aes; /* a session key of h, usable from any session */
static const char INFLIGHT[] = "inflight";

static void *run_job(void *arg)
{
    job *j = arg;
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0}, ecb = {CKM_AES_ECB, NULL, 0};
    CK_SESSION_INFO si;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1},
                        {CKA_LABEL, (void *)INFLIGHT, sizeof(INFLIGHT) - 1}};
    CK_OBJECT_HANDLE o;

    if (j->at != IL_NONE)
        il_arm(j->at, j->m);
    switch (j->call) {
    case CALL_DIGEST_INIT: j->rv = f->C_DigestInit(j->s, &dg); break;
    case CALL_SESSION_INFO: j->rv = f->C_GetSessionInfo(j->s, &si); break;
    case CALL_CREATE_SOBJ: j->rv = f->C_CreateObject(j->s, a, 3, &o); break;
    case CALL_ENCRYPT_INIT: j->rv = f->C_EncryptInit(j->s, &ecb, aes); break;
    case CALL_CLOSE: j->rv = f->C_CloseSession(j->s); break;
    case CALL_CLOSE_ALL: j->rv = f->C_CloseAllSessions(slot); break;
    }
    il_arm(IL_NONE, NULL);
    j->done = 1;
    return NULL;
}

static void start(job *j, int call, CK_SESSION_HANDLE s, int at, il_mx *m)
{
    j->call = call;
    j->s = s;
    j->at = at;
    j->m = m;
    j->rv = (CK_RV)-1;
    j->done = 0;
    pthread_create(&j->th, NULL, run_job, j);
}

static void finish(job *j) { pthread_join(j->th, NULL); }

/* The job stopped where it was armed to; exit 2 when it did not. */
static void stopped(job *j, const char *where)
{
    if (!il_wait_stopped(5000)) {
        fprintf(stderr, "session_interleave: the call did not stop %s (rv 0x%lx): cannot test\n", where,
                (unsigned long)j->rv);
        exit(2);
    }
}

static CK_SESSION_HANDLE open_rw(void)
{
    CK_SESSION_HANDLE s;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    if (!busy_of(s)) {
        fprintf(stderr, "session_interleave: no busy lock known for place %u\n", place_of_handle(s));
        exit(2);
    }
    return s;
}

/* Open the session that takes A's place (the free list gives the place
 * freed last first). */
static CK_SESSION_HANDLE reopen_in(CK_SESSION_HANDLE a)
{
    CK_SESSION_HANDLE b;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &b));
    if (place_of_handle(b) != place_of_handle(a)) {
        fprintf(stderr, "session_interleave: 0x%lx not opened in the place of 0x%lx: cannot test\n",
                (unsigned long)b, (unsigned long)a);
        exit(2);
    }
    if (b == a)
        FAIL("the reopened place gave the closed handle 0x%lx again\n", (unsigned long)a);
    return b;
}

/* No operation of kind `what` runs on s. */
static void clean(CK_SESSION_HANDLE s, const char *what, const char *cs)
{
    CK_BYTE in[16] = {0}, out[64];
    CK_ULONG l = sizeof(out);
    CK_RV rv = !strcmp(what, "digest") ? f->C_DigestUpdate(s, in, 16) : f->C_EncryptUpdate(s, in, 16, out, &l);
    if (rv != CKR_OPERATION_NOT_INITIALIZED)
        FAIL("%s: the new session 0x%lx has a %s operation it never started (0x%lx)\n", cs, (unsigned long)s,
             what, (unsigned long)rv);
}

static void stale(const char *cs, bool reopen_first, int at)
{
    job j;
    CK_SESSION_HANDLE a = open_rw(), b = 0;
    il_mx *busy = busy_of(a);

    if (at == IL_AFTER_LOCK)
        CHECK(f->C_CloseSession(a)); /* then the stale call takes the busy lock */
    start(&j, CALL_DIGEST_INIT, a, at, busy);
    stopped(&j, "at the busy lock");
    if (at == IL_BEFORE_LOCK)
        CHECK(f->C_CloseSession(a));
    if (reopen_first)
        b = reopen_in(a); /* with the busy lock held (stale_held): it must not wait */
    il_release();
    finish(&j);
    if (j.rv != CKR_SESSION_HANDLE_INVALID)
        FAIL("%s: C_DigestInit with the closed handle 0x%lx gave 0x%lx\n", cs, (unsigned long)a,
             (unsigned long)j.rv);
    if (!b)
        b = reopen_in(a);
    clean(b, "digest", cs);
    CK_SESSION_INFO si;
    if (f->C_GetSessionInfo(a, &si) != CKR_SESSION_HANDLE_INVALID)
        FAIL("%s: the closed handle 0x%lx works after the reopen\n", cs, (unsigned long)a);
    CHECK(f->C_CloseSession(b));
}

/* A session key of h (h's session objects go when C_CloseAllSessions closes h). */
static void make_key(void)
{
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 16;
    CK_ATTRIBUTE ka[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_ENCRYPT, &yes, 1}, {CKA_TOKEN, &no, 1}};
    CHECK(f->C_GenerateKey(h, &gen, ka, 3, &aes));
}

static CK_ULONG count_inflight(CK_SESSION_HANDLE s)
{
    CK_OBJECT_HANDLE v[8];
    CK_ULONG n = 0;
    CK_ATTRIBUTE q[] = {{CKA_LABEL, (void *)INFLIGHT, sizeof(INFLIGHT) - 1}};
    CHECK(f->C_FindObjectsInit(s, q, 1));
    CHECK(f->C_FindObjects(s, v, 8, &n));
    CHECK(f->C_FindObjectsFinal(s));
    for (CK_ULONG i = 0; i < n; i++)
        f->C_DestroyObject(s, v[i]);
    return n;
}

/* Something committed: the next call's p11_access misses the lock-free
 * login table and takes the global lock, while it holds its session. */
static void commit_something(void)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, "commit", 6}};
    CK_OBJECT_HANDLE o;
    CHECK(f->C_CreateObject(h, a, 3, &o));
    CHECK(f->C_DestroyObject(h, o));
}

static void inflight(const char *cs, int call, int closer)
{
    job j, c;
    CK_SESSION_HANDLE a = open_rw();

    commit_something();
    start(&j, call, a, IL_BEFORE_LOCK, il_global);
    stopped(&j, "at the global lock inside the call");
    if (!il_held(busy_of(a))) {
        fprintf(stderr, "session_interleave: %s: the call stopped without its session's busy lock: cannot test\n", cs);
        exit(2);
    }
    il_watch(busy_of(a));
    start(&c, closer, a, IL_NONE, NULL);
    for (int t = 0; t < 2000 && !il_waiting && !c.done; t++)
        usleep(1000);
    usleep(20000); /* a close that does not wait ends meanwhile */
    if (c.done)
        FAIL("%s: %s returned (0x%lx) while a call on the session was in flight\n", cs,
             closer == CALL_CLOSE ? "C_CloseSession" : "C_CloseAllSessions", (unsigned long)c.rv);
    il_release();
    finish(&j);
    finish(&c);
    il_watch(NULL);
    if (c.rv != CKR_OK)
        FAIL("%s: the close gave 0x%lx\n", cs, (unsigned long)c.rv);
    if (j.rv != CKR_OK && j.rv != CKR_SESSION_HANDLE_INVALID && j.rv != CKR_SESSION_CLOSED)
        FAIL("%s: the call in flight gave 0x%lx\n", cs, (unsigned long)j.rv);
    if (closer == CALL_CLOSE_ALL) { /* h is gone too */
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
        CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
            CHECK(rv);
        make_key();
    }
    if (call == CALL_CREATE_SOBJ) {
        CK_ULONG n = count_inflight(h);
        if (n)
            FAIL("%s: %lu object(s) made by a call on the closed session outlived it\n", cs, (unsigned long)n);
    } else {
        CK_SESSION_HANDLE b = reopen_in(a);
        clean(b, "encrypt", cs);
        CHECK(f->C_CloseSession(b));
    }
}

static void close_checks(void)
{
    job j, c;
    CK_SESSION_HANDLE a = open_rw();

    start(&j, CALL_SESSION_INFO, a, IL_AFTER_LOCK, busy_of(a));
    stopped(&j, "after the busy lock");
    il_watch(busy_of(a));
    start(&c, CALL_CLOSE, a, IL_NONE, NULL);
    for (int t = 0; t < 2000 && !il_waiting && !c.done; t++)
        usleep(1000);
    if (c.done)
        FAIL("close_checks: C_CloseSession returned while a call held the session\n");
    il_release();
    finish(&j);
    finish(&c);
    il_watch(NULL);
    if (c.rv != CKR_OK || (j.rv != CKR_OK && j.rv != CKR_SESSION_HANDLE_INVALID))
        FAIL("close_checks: close 0x%lx, call 0x%lx\n", (unsigned long)c.rv, (unsigned long)j.rv);
}

int main(void)
{
    const int rounds = getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 20;

    il_init();
    hung_message = "session_interleave: hung (10 s in one case)";
    signal(SIGALRM, on_hang_alarm);
    setup_args(NULL, &il_args);
    if (!il_global) {
        fprintf(stderr, "session_interleave: the module did not use the application's mutexes\n");
        return 2;
    }
    make_key();
    for (int r = 0; r < rounds && !bad; r++) {
        alarm(10);
        stale("stale_reopen", true, IL_BEFORE_LOCK);
        stale("stale_closed", false, IL_BEFORE_LOCK);
        stale("stale_held", true, IL_AFTER_LOCK);
        inflight("inflight_obj", CALL_CREATE_SOBJ, CALL_CLOSE);
        inflight("inflight_obj_closeall", CALL_CREATE_SOBJ, CALL_CLOSE_ALL);
        inflight("inflight_op", CALL_ENCRYPT_INIT, CALL_CLOSE);
        close_checks();
    }
    alarm(0);
    printf("session_interleave: %d rounds of 7 cases: %s\n", rounds, bad ? "VIOLATION" : "all held");
    teardown();
    return bad ? 1 : 0;
}
