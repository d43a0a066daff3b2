/* The session table, looked up without the global lock (p11_session.c):
 * places are recycled, a handle carries its place's generation. Threads open,
 * use and close sessions as fast as they can while others call with handles
 * just closed.
 * Expected, and checked:
 *  - a handle that was closed never works again, even after its place was
 *    reused (the owner asks right after its close; others keep asking);
 *  - a call on a live session sees that session (its slot and flags), and
 *    an operation started on it finishes on it;
 *  - a second close of a handle is CKR_SESSION_HANDLE_INVALID;
 *  - nothing else: no other return code, no crash (ASan/TSan builds too).
 * Exits 1 with the first violation. */
#include "common.h"
#include <pthread.h>
#include <stdatomic.h>

#define THREADS 4
#define ROUNDS 4000
#define RING 64

static _Atomic CK_SESSION_HANDLE closed_ring[RING]; /* recently closed handles */
static atomic_uint ring_pos;
static atomic_int failed;

static void fail(const char *what, CK_SESSION_HANDLE s, CK_RV rv)
{
    if (!atomic_exchange(&failed, 1))
        fprintf(stderr, "session_table: %s (handle 0x%lx, rv 0x%lx)\n", what, (unsigned long)s, (unsigned long)rv);
}

static void remember_closed(CK_SESSION_HANDLE s)
{
    atomic_store(&closed_ring[atomic_fetch_add(&ring_pos, 1) % RING], s);
}

static void digest_on(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = {CKM_SHA256, NULL, 0};
    CK_BYTE out[32];
    CK_ULONG len = sizeof(out);
    CK_RV rv = f->C_DigestInit(s, &m);
    if (rv != CKR_OK) {
        fail("C_DigestInit on a live session of ours", s, rv);
        return;
    }
    rv = f->C_Digest(s, (CK_BYTE_PTR) "abc", 3, out, &len);
    if (rv != CKR_OK || len != 32 || out[0] != 0xba || out[31] != 0xad)
        fail("C_Digest on a live session of ours", s, rv);
}

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int r = 0; r < ROUNDS && !atomic_load(&failed); r++) {
        CK_SESSION_HANDLE s;
        CK_SESSION_INFO info;
        bool rw = r & 1;
        CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0), NULL, NULL, &s);
        if (rv != CKR_OK) {
            fail("C_OpenSession", 0, rv);
            break;
        }
        rv = f->C_GetSessionInfo(s, &info);
        if (rv != CKR_OK || info.slotID != slot || !(info.flags & CKF_SERIAL_SESSION) ||
            !!(info.flags & CKF_RW_SESSION) != rw)
            fail("C_GetSessionInfo on a fresh session shows another one", s, rv);
        digest_on(s);
        /* A handle someone closed lately: never valid again. */
        CK_SESSION_HANDLE old = atomic_load(&closed_ring[rand_r(&seed) % RING]);
        if (old && (rv = f->C_GetSessionInfo(old, &info)) != CKR_SESSION_HANDLE_INVALID)
            fail("a closed handle works again", old, rv);
        rv = f->C_CloseSession(s);
        if (rv != CKR_OK)
            fail("C_CloseSession", s, rv);
        remember_closed(s);
        if ((rv = f->C_GetSessionInfo(s, &info)) != CKR_SESSION_HANDLE_INVALID)
            fail("our own handle works after its close", s, rv);
        if ((rv = f->C_CloseSession(s)) != CKR_SESSION_HANDLE_INVALID)
            fail("a second close of one handle", s, rv);
    }
    return NULL;
}

/* Read-only sessions opened and closed in between: places change hands
 * between read-write and read-only sessions. */
static void *closer(void *arg)
{
    (void)arg;
    for (int r = 0; r < ROUNDS / 4 && !atomic_load(&failed); r++) {
        CK_SESSION_HANDLE s;
        CK_SESSION_INFO info;
        CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
        if (rv != CKR_OK) {
            fail("C_OpenSession (closer)", 0, rv);
            break;
        }
        if ((rv = f->C_GetSessionInfo(s, &info)) != CKR_OK || info.slotID != slot || (info.flags & CKF_RW_SESSION))
            fail("C_GetSessionInfo (closer)", s, rv);
        if ((rv = f->C_CloseSession(s)) != CKR_OK)
            fail("C_CloseSession (closer)", s, rv);
        remember_closed(s);
    }
    return NULL;
}

int main(void)
{
    pthread_t th[THREADS + 1];
    setup();
    for (uintptr_t i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, worker, (void *)(i + 1));
    pthread_create(&th[THREADS], NULL, closer, NULL);
    for (int i = 0; i <= THREADS; i++)
        pthread_join(th[i], NULL);
    /* The login session of setup() is still there and still itself. */
    CK_SESSION_INFO info;
    CK_RV rv = f->C_GetSessionInfo(h, &info);
    if (rv != CKR_OK || info.state != CKS_RW_USER_FUNCTIONS)
        fail("the first session changed under the churn", h, rv);
    teardown();
    if (atomic_load(&failed))
        return 1;
    printf("session_table: %d threads x %d open/use/close rounds, closed handles never valid again\n", THREADS,
           ROUNDS);
    return 0;
}
