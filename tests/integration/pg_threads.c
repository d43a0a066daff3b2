/* pg_threads: many threads (and optionally a fork child) creating and reading
 * token objects at once, for the hostile tests of the postgresql backend
 * (test_pg_concurrency.sh). Run on two "hosts" at once.
 *
 *   pg_threads MODULE LABEL PIN TAG NTHREADS NOPS [fork|nothreads|nofinalize]
 *
 * Each thread opens its own session and creates NOPS token data objects,
 * CKA_LABEL "TAG-t<i>-<j>", CKA_VALUE the same text, reading each back by its
 * handle right after creating it. Every failure's return value is counted;
 * CKR_DEVICE_ERROR (0x30) is allowed only with PG_THREADS_ALLOW_EIO=1 (too
 * many connections). Then every object made is found again by label, exactly
 * once, with its value. Prints "made N failed F wrong W" and exits 1 on
 * any wrong data (W > 0) or a failure not allowed.
 *   fork:      fork after C_Initialize and the threads' first objects; the
 *              child calls C_Initialize again and runs the same work with tag
 *              TAG-child while the parent goes on.
 *   nothreads: C_Initialize with CKF_LIBRARY_CANT_CREATE_OS_THREADS.
 *   nofinalize: returns from main without C_Finalize (the listener still
 *              running, perhaps reconnecting, while exit() runs the
 *              libraries' cleanups). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "client_util.h"

static CK_FUNCTION_LIST *f;
static CK_SLOT_ID slot;
static const char *pin, *tag;
static int nops;
static atomic_int made, failed, wrong, eio;
static bool allow_eio;
static int nthreads_g;
static unsigned char *made_map; /* [thread * nops + j]: its C_CreateObject said CKR_OK */

static void count_fail(const char *what, CK_RV rv)
{
    if (rv == CKR_DEVICE_ERROR)
        atomic_fetch_add(&eio, 1);
    if (rv != CKR_DEVICE_ERROR || !allow_eio)
        fprintf(stderr, "pg_threads %s: %s: 0x%lx\n", tag, what, (unsigned long)rv);
    atomic_fetch_add(&failed, 1);
}

static void *work(void *arg)
{
    long i = (long)arg;
    CK_SESSION_HANDLE s;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        count_fail("C_OpenSession", rv);
        return NULL;
    }
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        count_fail("C_Login", rv);
        f->C_CloseSession(s);
        return NULL;
    }
    for (int j = 0; j < nops; j++) {
        char label[96];
        snprintf(label, sizeof(label), "%s-t%ld-%d", tag, i, j);
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_BBOOL yes = CK_TRUE;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_TOKEN, &yes, sizeof(yes)},
                            {CKA_PRIVATE, &yes, sizeof(yes)},
                            {CKA_LABEL, label, strlen(label)},
                            {CKA_VALUE, label, strlen(label)}};
        CK_OBJECT_HANDLE h;
        rv = f->C_CreateObject(s, t, 5, &h);
        if (rv != CKR_OK) {
            fprintf(stderr, "pg_threads %s: %s: C_CreateObject 0x%lx\n", tag, label, (unsigned long)rv);
            count_fail("C_CreateObject", rv);
            continue;
        }
        atomic_fetch_add(&made, 1);
        if (i < nthreads_g)
            made_map[i * nops + j] = 1;
        char v[96];
        CK_ATTRIBUTE a = {CKA_VALUE, v, sizeof(v)};
        rv = f->C_GetAttributeValue(s, h, &a, 1);
        if (rv != CKR_OK) {
            count_fail("C_GetAttributeValue", rv);
        } else if (a.ulValueLen != strlen(label) || memcmp(v, label, a.ulValueLen) != 0) {
            fprintf(stderr, "pg_threads %s: WRONG: handle %lu made as %s reads %.*s\n", tag, (unsigned long)h, label,
                    (int)a.ulValueLen, v);
            atomic_fetch_add(&wrong, 1);
        }
    }
    f->C_CloseSession(s);
    return NULL;
}

/* Every object this run made: found by label exactly once, with its value. */
static void check_all(int nthreads)
{
    CK_SESSION_HANDLE s;
    if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return;
    /* Device errors (a backend terminated under us) are retried here: this
     * is the check, not the load. */
    CK_RV lrv;
    for (int a = 0; a < 50; a++) {
        lrv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
        if (lrv != CKR_DEVICE_ERROR)
            break;
        usleep(100000);
    }
    if (lrv != CKR_OK && lrv != CKR_USER_ALREADY_LOGGED_IN) {
        count_fail("C_Login (check)", lrv);
        return;
    }
    int found = 0;
    for (long i = 0; i < nthreads; i++)
        for (int j = 0; j < nops; j++) {
            char label[96];
            snprintf(label, sizeof(label), "%s-t%ld-%d", tag, i, j);
            CK_ATTRIBUTE t[] = {{CKA_LABEL, label, strlen(label)}};
            CK_OBJECT_HANDLE h[4];
            CK_ULONG n = 0;
            CK_RV rv;
            for (int a = 0; a < 50; a++) {
                n = 0;
                rv = f->C_FindObjectsInit(s, t, 1);
                if (rv == CKR_OK) {
                    rv = f->C_FindObjects(s, h, 4, &n);
                    f->C_FindObjectsFinal(s);
                }
                if (rv != CKR_DEVICE_ERROR)
                    break;
                usleep(100000);
            }
            if (rv != CKR_OK) {
                count_fail("C_FindObjects (check)", rv);
                continue;
            }
            if (n == 0 && made_map[i * nops + j]) {
                /* Made (its C_CreateObject said CKR_OK) or not: look again,
                 * to tell a find that missed it from an object that is gone. */
                int again = -1;
                for (int a = 0; a < 10 && again < 0; a++) {
                    CK_ULONG n2 = 0;
                    usleep(300000);
                    if (f->C_FindObjectsInit(s, t, 1) == CKR_OK) {
                        if (f->C_FindObjects(s, h, 4, &n2) == CKR_OK && n2 > 0)
                            again = a;
                        f->C_FindObjectsFinal(s);
                    }
                }
                if (again >= 0) {
                    fprintf(stderr, "pg_threads %s: WRONG: C_FindObjects answered CKR_OK with no object for %s, "
                                    "found by the same search %d tries later\n", tag, label, again + 1);
                    atomic_fetch_add(&wrong, 1);
                } else {
                    fprintf(stderr, "pg_threads %s: WRONG: %s made (CKR_OK) but not found\n", tag, label);
                }
            }
            if (n > 1) {
                fprintf(stderr, "pg_threads %s: WRONG: %lu objects labeled %s\n", tag, (unsigned long)n, label);
                atomic_fetch_add(&wrong, 1);
            }
            if (n >= 1) {
                found++;
                char v[96];
                CK_ATTRIBUTE a = {CKA_VALUE, v, sizeof(v)};
                CK_RV grv = CKR_DEVICE_ERROR;
                for (int a2 = 0; a2 < 50 && grv == CKR_DEVICE_ERROR; a2++) {
                    a.ulValueLen = sizeof(v);
                    if ((grv = f->C_GetAttributeValue(s, h[0], &a, 1)) == CKR_DEVICE_ERROR)
                        usleep(100000);
                }
                if (grv != CKR_OK || a.ulValueLen != strlen(label) || memcmp(v, label, a.ulValueLen) != 0) {
                    fprintf(stderr, "pg_threads %s: WRONG: %s: rv 0x%lx value %.*s\n", tag, label,
                            (unsigned long)grv, grv == CKR_OK ? (int)a.ulValueLen : 0, v);
                    atomic_fetch_add(&wrong, 1);
                }
            }
        }
    if (found != atomic_load(&made)) {
        fprintf(stderr, "pg_threads %s: WRONG: %d objects made, %d found by label\n", tag, atomic_load(&made), found);
        atomic_fetch_add(&wrong, 1);
    }
    f->C_CloseSession(s);
}

static int run(int nthreads)
{
    pthread_t *th = calloc((size_t)nthreads, sizeof(*th));
    nthreads_g = nthreads;
    made_map = calloc((size_t)nthreads * (size_t)nops + 1, 1);
    int started = 0;
    for (long i = 0; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, work, (void *)i) == 0)
            started++;
        else
            th[i] = 0;
    for (int i = 0; i < nthreads; i++)
        if (th[i])
            pthread_join(th[i], NULL);
    free(th);
    check_all(nthreads);
    printf("%s: made %d failed %d (device errors %d) wrong %d\n", tag, atomic_load(&made), atomic_load(&failed),
           atomic_load(&eio), atomic_load(&wrong));
    fflush(stdout);
    if (atomic_load(&wrong))
        return 1;
    if (atomic_load(&failed) > (allow_eio ? atomic_load(&eio) : 0))
        return 1;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: pg_threads MODULE LABEL PIN TAG NTHREADS NOPS [fork|nothreads|nofinalize]\n");
        return 2;
    }
    const char *mode = argc > 7 ? argv[7] : "";
    pin = argv[3];
    tag = argv[4];
    int nthreads = atoi(argv[5]);
    nops = atoi(argv[6]);
    allow_eio = getenv("PG_THREADS_ALLOW_EIO") && strcmp(getenv("PG_THREADS_ALLOW_EIO"), "1") == 0;
    void *h = dlopen(argv[1], RTLD_NOW);
    CK_C_GetFunctionList gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
    if (!gfl || gfl(&f) != CKR_OK)
        return 2;
    CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
    if (strcmp(mode, "nothreads") == 0)
        ia.flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    CK_RV rv = f->C_Initialize(&ia);
    if (rv != CKR_OK) {
        fprintf(stderr, "pg_threads: C_Initialize 0x%lx\n", (unsigned long)rv);
        return 2;
    }
    if (!(slot = client_find_slot(f, "pg_threads", argv[2])))
        return 2;
    if (strcmp(mode, "fork") == 0) {
        /* Warm the parent's pool and listener first. */
        work((void *)(long)1000);
        atomic_store(&made, 0);
        pid_t pid = fork();
        if (pid == 0) {
            char ctag[64];
            snprintf(ctag, sizeof(ctag), "%s-child", tag);
            tag = ctag;
            if ((rv = f->C_Initialize(&ia)) != CKR_OK) {
                fprintf(stderr, "pg_threads child: C_Initialize 0x%lx\n", (unsigned long)rv);
                _exit(2);
            }
            if (!(slot = client_find_slot(f, "pg_threads", argv[2])))
                _exit(2);
            int r = run(nthreads);
            f->C_Finalize(NULL);
            _exit(r);
        }
        int r = run(nthreads), st = 0;
        waitpid(pid, &st, 0);
        f->C_Finalize(NULL);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "pg_threads: the fork child failed (status 0x%x)\n", st);
            return 1;
        }
        return r;
    }
    int r = run(nthreads);
    if (strcmp(mode, "nofinalize") == 0)
        return r; /* as many applications do: exit() with the module initialized, its listener running */
    rv = f->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "pg_threads: C_Finalize 0x%lx\n", (unsigned long)rv);
        return 1;
    }
    return r;
}
