/* Recycled session places under attack: workers open (RO or RW), check the
 * session's flags, digest their own data across calls and close; an
 * attacker throws closed handles at C_GetSessionInfo, C_DigestInit and
 * C_CloseSession (none may work: a stale handle accepted, or closing some
 * other live session); then C_CloseAllSessions runs in a loop meanwhile
 * (workers accept CKR_SESSION_HANDLE_INVALID then, never a wrong digest or
 * wrong flags). At the end 300 sessions open at once must have 300 distinct
 * places (a place pushed twice on the free list gives two sessions one place).
 * Exits 1 on a violation. */
#include "common.h"

#include <pthread.h>
#include <openssl/sha.h>

enum { W = 3, RING = 256 };
static _Atomic int stop, bad, closeall;
static _Atomic CK_SESSION_HANDLE ring[RING];
static _Atomic unsigned ring_n;
static _Atomic long rounds, killed;

#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); bad = 1; } while (0)

static void *worker(void *arg)
{
    long id = (long)arg;
    CK_FLAGS fl = CKF_SERIAL_SESSION | (id & 1 ? 0 : CKF_RW_SESSION);
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0};
    unsigned char data[64], want[32], got[32];
    memset(data, (int)id, sizeof(data));
    SHA256(data, sizeof(data), want);
    while (!stop && !bad) {
        CK_SESSION_HANDLE s;
        CK_SESSION_INFO si;
        CK_ULONG l = 32;
        CK_RV rv;
        CHECK(f->C_OpenSession(slot, fl, NULL, NULL, &s));
        rv = f->C_GetSessionInfo(s, &si);
        if (rv == CKR_OK && (si.slotID != slot || si.flags != fl))
            FAIL("worker %ld: session 0x%lx has flags 0x%lx, opened with 0x%lx\n", id, s, si.flags, fl);
        if (rv == CKR_OK) rv = f->C_DigestInit(s, &dg);
        for (int k = 0; rv == CKR_OK && k < 4; k++)
            rv = f->C_DigestUpdate(s, data + 16 * k, 16);
        if (rv == CKR_OK) rv = f->C_DigestFinal(s, got, &l);
        if (rv == CKR_OK && (l != 32 || memcmp(got, want, 32)))
            FAIL("worker %ld: session 0x%lx digest of someone else's data\n", id, s);
        if (rv != CKR_OK && !(closeall && (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)))
            FAIL("worker %ld: 0x%lx on its own session\n", id, rv);
        if (rv != CKR_OK)
            killed++;
        rv = f->C_CloseSession(s);
        if (rv != CKR_OK && !(closeall && rv == CKR_SESSION_HANDLE_INVALID))
            FAIL("worker %ld: close 0x%lx\n", id, rv);
        ring[ring_n++ % RING] = s;
        rounds++;
    }
    return NULL;
}

static void *attacker(void *arg)
{
    CK_MECHANISM dg = {CKM_SHA256, NULL, 0};
    unsigned x = 1;
    (void)arg;
    while (!stop && !bad) {
        unsigned n = ring_n;
        if (!n) continue;
        x = x * 1103515245 + 12345;
        CK_SESSION_HANDLE s = ring[(x >> 8) % (n < RING ? n : RING)];
        CK_SESSION_INFO si;
        if (!s) continue;
        switch ((x >> 20) % 3) {
        case 0: if (f->C_GetSessionInfo(s, &si) == CKR_OK) FAIL("closed handle 0x%lx: GetSessionInfo works\n", s); break;
        case 1:
            if (f->C_DigestInit(s, &dg) == CKR_OK) FAIL("closed handle 0x%lx: DigestInit works\n", s);
            break;
        case 2: if (f->C_CloseSession(s) == CKR_OK) FAIL("closed handle 0x%lx: CloseSession closed something\n", s); break;
        }
    }
    return NULL;
}

static void *closer(void *arg)
{
    (void)arg;
    while (!stop && !bad) {
        CHECK(f->C_CloseAllSessions(slot));
        usleep(200);
    }
    return NULL;
}

static void run(int secs, bool with_closeall)
{
    pthread_t th[W + 2];
    closeall = with_closeall;
    stop = 0;
    for (long i = 0; i < W; i++)
        pthread_create(&th[i], NULL, worker, (void *)i);
    pthread_create(&th[W], NULL, attacker, NULL);
    if (with_closeall)
        pthread_create(&th[W + 1], NULL, closer, NULL);
    for (int t = 0; t < secs * 10 && !bad; t++)
        usleep(100000);
    stop = 1;
    for (int i = 0; i < W + 1 + with_closeall; i++)
        pthread_join(th[i], NULL);
}

int main(void)
{
    int secs = getenv("SECS") ? atoi(getenv("SECS")) : 5;
    enum { M = 300 };
    static CK_SESSION_HANDLE open[M];
    static unsigned char used[1u << 20];

    setup();
    run(secs, false);
    printf("phase 1: %ld rounds\n", (long)rounds);
    run(secs, true);
    printf("phase 2 (with C_CloseAllSessions): %ld rounds, %ld cut short\n", (long)rounds, (long)killed);
    f->C_CloseAllSessions(slot);
    for (int i = 0; i < M && !bad; i++) {
        CK_SESSION_INFO si;
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | (i & 1 ? CKF_RW_SESSION : 0), NULL, NULL, &open[i]));
        unsigned place = (unsigned)(open[i] & 0xfffff);
        if (used[place]++)
            FAIL("two open sessions in place %u (handle 0x%lx)\n", place, open[i]);
        CHECK(f->C_GetSessionInfo(open[i], &si));
    }
    for (int i = 0; i < M && !bad; i++) {
        CK_SESSION_INFO si;
        CHECK(f->C_GetSessionInfo(open[i], &si));
        if (si.flags != (CKF_SERIAL_SESSION | (i & 1 ? CKF_RW_SESSION : 0)))
            FAIL("session %d: flags 0x%lx\n", i, si.flags);
        CHECK(f->C_CloseSession(open[i]));
    }
    printf("%s\n", bad ? "VIOLATION" : "all held");
    teardown();
    return bad ? 1 : 0;
}
