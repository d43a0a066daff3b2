/* Calls on a session while other threads close it (C_CloseSession), at
 * random (C_CloseAllSessions: session_recycle; its slot-wide drop of
 * session objects is closeall_sobj's known bug): the stress counterpart of
 * session_interleave, for the sanitizer builds too. Workers open a session,
 * publish it and work on it (digest, encrypt with a token key, find,
 * C_CreateObject of a session object labelled with the session's handle,
 * C_GetAttributeValue of it) until it is closed under them; killers
 * close published sessions; a checker looks for the objects of sessions
 * whose C_CloseSession has returned.
 * Expected, and checked:
 *  - a call on a session answers CKR_OK or CKR_SESSION_HANDLE_INVALID
 *    (CKR_SESSION_CLOSED), and once it said the handle is invalid, it never
 *    works again;
 *  - a session just opened has no operation running (a close that missed a
 *    call in flight would leave it one of the place's last session);
 *  - once C_CloseSession(S) returned, no session object of S exists;
 *  - at the end, with every session closed one by one, no session object is
 *    left.
 * SECS (default 6). Exits 1 on a violation. */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>

enum { WORKERS = 3, KILLERS = 2, LIVE = 16, RING = 64 };
static atomic_int stop, failed;
static _Atomic CK_SESSION_HANDLE live[LIVE]; /* published sessions, for the killers */
static _Atomic CK_SESSION_HANDLE gone[RING];  /* sessions whose C_CloseSession returned */
static atomic_uint gone_n;
static atomic_long calls, opened, closes, checked;
static CK_OBJECT_HANDLE aes;

#define FAIL(...) do { if (!atomic_exchange(&failed, 1)) fprintf(stderr, "session_close_race: " __VA_ARGS__); } while (0)

static bool live_rv(CK_RV rv) { return rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED; }

/* One call's answer: true while the session works. */
static bool judge(CK_SESSION_HANDLE s, const char *what, CK_RV rv, bool *dead)
{
    calls++;
    if (!live_rv(rv))
        FAIL("%s on session 0x%lx: 0x%lx\n", what, (unsigned long)s, (unsigned long)rv);
    else if (rv == CKR_OK && *dead)
        FAIL("%s on session 0x%lx works after the handle was invalid\n", what, (unsigned long)s);
    else if (rv != CKR_OK)
        *dead = true;
    return rv == CKR_OK;
}

static void fresh(CK_SESSION_HANDLE s)
{
    CK_BYTE in[16] = {0}, out[32];
    CK_ULONG l = sizeof(out), n = 0;
    CK_OBJECT_HANDLE o;
    CK_RV r1 = f->C_DigestUpdate(s, in, 16), r2 = f->C_EncryptUpdate(s, in, 16, out, &l),
          r3 = f->C_FindObjects(s, &o, 1, &n);
    /* A killer may have closed it already: invalid then. */
    if ((r1 != CKR_OPERATION_NOT_INITIALIZED && r1 != CKR_SESSION_HANDLE_INVALID) ||
        (r2 != CKR_OPERATION_NOT_INITIALIZED && r2 != CKR_SESSION_HANDLE_INVALID) ||
        (r3 != CKR_OPERATION_NOT_INITIALIZED && r3 != CKR_SESSION_HANDLE_INVALID))
        FAIL("new session 0x%lx has operations it never started (digest 0x%lx, encrypt 0x%lx, find 0x%lx)\n",
             (unsigned long)s, (unsigned long)r1, (unsigned long)r2, (unsigned long)r3);
}

static void *worker(void *arg)
{
    long id = (long)arg;
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0}, ecb = {CKM_AES_ECB, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BYTE buf[64] = {1}, out[64];

    while (!stop && !failed) {
        CK_SESSION_HANDLE s;
        bool dead = false;
        CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
        if (rv != CKR_OK) {
            FAIL("C_OpenSession 0x%lx\n", (unsigned long)rv);
            break;
        }
        opened++;
        fresh(s);
        live[(unsigned)(id * 5 + opened) % LIVE] = s;
        char lbl[24];
        snprintf(lbl, sizeof(lbl), "s%016lx", (unsigned long)s);
        CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1}, {CKA_LABEL, lbl, 17}};
        for (int k = 0; !dead && !stop && k < 200; k++) {
            CK_ULONG l = sizeof(out), n = 0;
            CK_OBJECT_HANDLE o, found[4];
            char lbl_out[17];
            CK_ATTRIBUTE g[] = {{CKA_LABEL, lbl_out, sizeof(lbl_out)}};
            switch (k % 4) {
            case 0:
                if (judge(s, "C_DigestInit", f->C_DigestInit(s, &dg), &dead) &&
                    judge(s, "C_DigestUpdate", f->C_DigestUpdate(s, buf, sizeof(buf)), &dead))
                    judge(s, "C_DigestFinal", f->C_DigestFinal(s, out, &l), &dead);
                break;
            case 1:
                if (judge(s, "C_EncryptInit", f->C_EncryptInit(s, &ecb, aes), &dead))
                    judge(s, "C_Encrypt", f->C_Encrypt(s, buf, sizeof(buf), out, &l), &dead);
                break;
            case 2:
                if (judge(s, "C_FindObjectsInit", f->C_FindObjectsInit(s, a + 2, 1), &dead) &&
                    judge(s, "C_FindObjects", f->C_FindObjects(s, found, 4, &n), &dead))
                    judge(s, "C_FindObjectsFinal", f->C_FindObjectsFinal(s), &dead);
                break;
            case 3:
                if (judge(s, "C_CreateObject", f->C_CreateObject(s, a, 3, &o), &dead)) {
                    rv = f->C_GetAttributeValue(s, o, g, 1);
                    /* the close may have taken the object: it answers for the session then */
                    if (rv == CKR_OBJECT_HANDLE_INVALID)
                        rv = f->C_GetSessionInfo(s, &(CK_SESSION_INFO){0}) == CKR_OK ? rv : CKR_SESSION_HANDLE_INVALID;
                    if (judge(s, "C_GetAttributeValue", rv, &dead) && memcmp(lbl_out, lbl, 17))
                        FAIL("session 0x%lx reads another session's object\n", (unsigned long)s);
                }
                break;
            }
        }
        if (!dead) { /* nobody closed it: ours to close */
            rv = f->C_CloseSession(s);
            if (rv == CKR_OK)
                gone[atomic_fetch_add(&gone_n, 1) % RING] = s;
        }
    }
    return NULL;
}

static void *killer(void *arg)
{
    unsigned x = (unsigned)(long)arg * 7919u + 1;
    while (!stop && !failed) {
        x = x * 1103515245u + 12345u;
        CK_SESSION_HANDLE s = live[(x >> 8) % LIVE];
        if (!s)
            continue;
        CK_RV rv = f->C_CloseSession(s);
        if (rv == CKR_OK) {
            closes++;
            gone[atomic_fetch_add(&gone_n, 1) % RING] = s;
        } else if (rv != CKR_SESSION_HANDLE_INVALID) {
            FAIL("C_CloseSession 0x%lx\n", (unsigned long)rv);
        }
        usleep(50);
    }
    return NULL;
}

/* The objects of a session whose C_CloseSession returned, seen from a
 * session of the checker's own. */
static CK_ULONG objects_of(CK_SESSION_HANDLE mine, CK_SESSION_HANDLE s)
{
    char lbl[24];
    snprintf(lbl, sizeof(lbl), "s%016lx", (unsigned long)s);
    CK_ATTRIBUTE q[] = {{CKA_LABEL, lbl, 17}};
    CK_OBJECT_HANDLE v[4];
    CK_ULONG n = 0;
    CHECK(f->C_FindObjectsInit(mine, q, 1));
    CHECK(f->C_FindObjects(mine, v, 4, &n));
    CHECK(f->C_FindObjectsFinal(mine));
    return n;
}

static void *checker(void *arg)
{
    CK_SESSION_HANDLE mine;
    (void)arg;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &mine));
    while (!stop && !failed) {
        unsigned n = gone_n;
        if (!n)
            continue;
        CK_SESSION_HANDLE s = gone[(n - 1) % RING];
        CK_ULONG k = objects_of(mine, s);
        checked++;
        if (k)
            FAIL("%lu session object(s) of session 0x%lx outlived its C_CloseSession\n", (unsigned long)k,
                 (unsigned long)s);
    }
    CHECK(f->C_CloseSession(mine));
    return NULL;
}

int main(void)
{
    int secs = getenv("SECS") ? atoi(getenv("SECS")) : 6;
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BYTE val[16] = {9};
    CK_ATTRIBUTE ka[] = {{CKA_CLASS, &sk, sizeof(sk)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, val, 16},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &no, 1}};
    pthread_t th[WORKERS + KILLERS + 1];
    CK_SESSION_HANDLE s;

    setup();
    CHECK(f->C_Logout(h)); /* public session objects only: the checker finds them without a login */
    CHECK(f->C_CreateObject(h, ka, 6, &aes)); /* a token key: it stays when C_CloseAllSessions closes h */
    for (long i = 0; i < WORKERS; i++)
        pthread_create(&th[i], NULL, worker, (void *)i);
    for (long i = 0; i < KILLERS; i++)
        pthread_create(&th[WORKERS + i], NULL, killer, (void *)i);
    pthread_create(&th[WORKERS + KILLERS], NULL, checker, NULL);
    for (int t = 0; t < secs * 10 && !failed; t++)
        usleep(100000);
    stop = 1;
    for (int i = 0; i < WORKERS + KILLERS + 1; i++)
        pthread_join(th[i], NULL);
    /* Every session closed one by one (not C_CloseAllSessions, whose
     * slot-wide drop would hide a leftover): the workers closed theirs. */
    CHECK(f->C_CloseSession(h));
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
    CK_TOKEN_INFO ti;
    CHECK(f->C_GetTokenInfo(slot, &ti));
    if (ti.ulSessionCount != 1) {
        FAIL("%lu sessions open at the end, 1 expected\n", (unsigned long)ti.ulSessionCount);
    } else { /* only ours: every other session object must be gone */
        CK_ATTRIBUTE q[] = {{CKA_TOKEN, &no, 1}};
        CK_OBJECT_HANDLE v[8];
        CK_ULONG n = 0;
        CHECK(f->C_FindObjectsInit(s, q, 1));
        CHECK(f->C_FindObjects(s, v, 8, &n));
        CHECK(f->C_FindObjectsFinal(s));
        if (n)
            FAIL("%lu session object(s) left with every session closed\n", (unsigned long)n);
    }
    printf("session_close_race: %ld sessions, %ld calls, %ld closes by other threads, %ld closed sessions "
           "checked: %s\n",
           (long)opened, (long)calls, (long)closes, (long)checked, failed ? "VIOLATION" : "all held");
    teardown();
    return failed ? 1 : 0;
}
