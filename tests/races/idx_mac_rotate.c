/* The index MAC contexts kept for reuse (keystore: idx_spare, lock-free, up
 * to 4), under load: worker threads find private objects by CKA_ID and by
 * CKA_LABEL (every find computes index MACs), create objects (index adds),
 * read them back and destroy them (index deletes), more threads than there
 * are spare places, while `p11mk-admin rotate` (another process) rotates the
 * master key ROTATIONS times (the index key is resealed under each new
 * epoch; this process follows each change) and while the main thread forks
 * children that C_Initialize again and find the same objects. Then
 * C_Finalize, C_Initialize (a store opened afresh, no spare) and every
 * object found once more. A find that returns nothing, two handles or
 * another object's value, or a child that fails, is a violation (exit 1).
 * Meant for the ThreadSanitizer and ASan builds too.
 * THREADS (default 6), ROTATIONS (default 3). Needs P11MK_ADMIN. */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

enum { NOBJ = 40 };
static _Atomic int stop, bad;
static _Atomic long finds;

static void fail(const char *what, int i, CK_RV rv)
{
    fprintf(stderr, "violation: %s (object %d, rv 0x%lx)\n", what, i, rv);
    atomic_store(&bad, 1);
}

static void names(int i, char id[32], char lbl[32], char val[32])
{
    snprintf(id, 32, "id-%05d", i);
    snprintf(lbl, 32, "label-%05d", i);
    snprintf(val, 32, "value-of-%05d", i);
}

static CK_OBJECT_HANDLE make_obj(CK_SESSION_HANDLE s, int i)
{
    char id[32], lbl[32], val[32];
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_OBJECT_HANDLE o = 0;
    names(i, id, lbl, val);
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)},  {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, &yes, 1},            {CKA_PRIVATE, &yes, 1},
                        {CKA_SENSITIVE, &no, 1},         {CKA_EXTRACTABLE, &yes, 1},
                        {CKA_ID, id, strlen(id)},
                        {CKA_LABEL, lbl, strlen(lbl)},   {CKA_VALUE, val, strlen(val)}};
    CK_RV rv = f->C_CreateObject(s, a, 9, &o);
    if (rv != CKR_OK)
        fail("C_CreateObject", i, rv);
    return o;
}

/* Exactly one object for the template, holding object i's value. */
static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE s, CK_ATTRIBUTE_TYPE t, int i)
{
    char id[32], lbl[32], val[32], got[64];
    CK_OBJECT_HANDLE hs[4];
    CK_ULONG n = 0;
    CK_RV rv;
    names(i, id, lbl, val);
    CK_ATTRIBUTE ft = {t, t == CKA_ID ? id : lbl, strlen(t == CKA_ID ? id : lbl)};
    if ((rv = f->C_FindObjectsInit(s, &ft, 1)) != CKR_OK || (rv = f->C_FindObjects(s, hs, 4, &n)) != CKR_OK) {
        fail("find", i, rv);
        f->C_FindObjectsFinal(s);
        return 0;
    }
    f->C_FindObjectsFinal(s);
    atomic_fetch_add(&finds, 1);
    if (n != 1) {
        fprintf(stderr, "%s of object %d: %lu handles\n", t == CKA_ID ? "CKA_ID" : "CKA_LABEL", i, n);
        fail("find count", i, CKR_OK);
        return 0;
    }
    CK_ATTRIBUTE g = {CKA_VALUE, got, sizeof(got)};
    if ((rv = f->C_GetAttributeValue(s, hs[0], &g, 1)) != CKR_OK || g.ulValueLen != strlen(val) ||
        memcmp(got, val, g.ulValueLen) != 0)
        fail("value of the found object", i, rv);
    return hs[0];
}

static void *worker(void *arg)
{
    int w = (int)(intptr_t)arg, k = 0;
    unsigned seed = 1234u + (unsigned)w;
    CK_SESSION_HANDLE s;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    while (!atomic_load(&stop) && !atomic_load(&bad)) {
        int i = rand_r(&seed) % NOBJ;
        find_one(s, CKA_ID, i);
        find_one(s, CKA_LABEL, i);
        if ((k++ & 3) == 0) { /* an object of its own: index adds and deletes */
            int j = 100000 + w * 10000 + k;
            CK_OBJECT_HANDLE o = make_obj(s, j);
            if (o && find_one(s, k & 4 ? CKA_ID : CKA_LABEL, j) != o)
                fail("own object not found as itself", j, CKR_OK);
            CK_RV rv = o ? f->C_DestroyObject(s, o) : CKR_OK;
            if (rv != CKR_OK)
                fail("C_DestroyObject", j, rv);
        }
    }
    f->C_CloseSession(s);
    return NULL;
}

static int child(void)
{
    CK_SESSION_HANDLE s;
    if (f->C_Initialize(NULL) != CKR_OK || f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK ||
        f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) != CKR_OK)
        return 3;
    for (int i = 0; i < NOBJ; i++)
        if (!find_one(s, i & 1 ? CKA_ID : CKA_LABEL, i))
            return 4;
    f->C_Finalize(NULL);
    return atomic_load(&bad) ? 5 : 0;
}

int main(void)
{
    const char *admin = getenv("P11MK_ADMIN");
    int nthr = getenv("THREADS") ? atoi(getenv("THREADS")) : 6;
    int rot = getenv("ROTATIONS") ? atoi(getenv("ROTATIONS")) : 3;
    pthread_t th[64];
    char cmd[512];

    if (!admin) {
        fprintf(stderr, "P11MK_ADMIN is not set\n");
        return 77;
    }
    if (nthr < 1 || nthr > 64)
        nthr = 6;
    setup();
    for (int i = 0; i < NOBJ; i++)
        if (!make_obj(h, i))
            return 2;
    for (int i = 0; i < nthr; i++)
        pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
    snprintf(cmd, sizeof(cmd), "'%s' rotate --quiet >%s/rotate.out 2>&1", admin, tmpd);
    for (int r = 0; r < rot && !atomic_load(&bad); r++) {
        int rc = system(cmd);
        if (rc != 0) {
            fprintf(stderr, "rotation %d: exit %d\n", r + 1, rc);
            snprintf(cmd, sizeof(cmd), "cat %s/rotate.out >&2", tmpd);
            if (system(cmd)) {}
            atomic_store(&bad, 1);
            break;
        }
        pid_t pid = fork();
        if (pid == 0)
            _exit(child());
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "fork child after rotation %d: status 0x%x\n", r + 1, st);
            atomic_store(&bad, 1);
        }
        usleep(200000);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < nthr; i++)
        pthread_join(th[i], NULL);

    /* Closed and opened again: no spare context survives into the new store. */
    CHECK(f->C_Finalize(NULL));
    CHECK(f->C_Initialize(NULL));
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
    CHECK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    for (int i = 0; i < NOBJ; i++) {
        find_one(h, CKA_ID, i);
        find_one(h, CKA_LABEL, i);
    }
    /* Not logged in: no private object is found. */
    CHECK(f->C_Logout(h));
    for (int i = 0; i < NOBJ; i++) {
        char id[32], lbl[32], val[32];
        CK_OBJECT_HANDLE hs[2];
        CK_ULONG n = 0;
        names(i, id, lbl, val);
        CK_ATTRIBUTE ft = {CKA_ID, id, strlen(id)};
        CHECK(f->C_FindObjectsInit(h, &ft, 1));
        CHECK(f->C_FindObjects(h, hs, 2, &n));
        CHECK(f->C_FindObjectsFinal(h));
        if (n != 0)
            fail("a private object found without login", i, CKR_OK);
    }
    printf("%ld finds, %d threads, %d rotations: %s\n", atomic_load(&finds), nthr, rot,
           atomic_load(&bad) ? "VIOLATION" : "ok");
    int b = atomic_load(&bad);
    teardown();
    return b ? 1 : 0;
}
