/* pg_forkstorm: hostile fork tests of the PostgreSQL listener's fork handler
 * (ks_pg.c listeners_prepare, fd25acd).
 *
 *   pg_forkstorm MODULE LABEL PIN MODE SECONDS
 *
 * MODE:
 *   finalize  a thread loops C_Initialize / work / C_Finalize (each opens the
 *             PG keystore, starts and joins a listener) while the main thread
 *             forks; children _exit at once, every 8th runs a full
 *             C_Initialize / create / find / destroy / C_Finalize.
 *   double    initialized once; two threads fork at once in loops while a
 *             third works; every 4th child works fully.
 *   nested    parent creates an object, child (working fully) destroys it and
 *             forks a grandchild that works fully; the parent must then see
 *             the object gone (handle and find), and keep working.
 *   plain     initialized once; the main thread forks in a loop (children work
 *             every 4th) while a thread works: for reconnection storms and
 *             restarts driven from outside.
 * Every fork() is timed; prints "forks N max_ms M children_failed F" and
 * exits 1 when a fork took more than FORK_MAX_MS (env, default 3000), a child
 * failed or hung (alarm 60 s), or the parent saw wrong data. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "client_util.h"

static CK_FUNCTION_LIST *f;
static const char *label, *pin;
static atomic_int forks, child_fail, parent_fail, slow;
static atomic_long max_ms;
static atomic_bool stop;
static long fork_max_ms = 3000;
static CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* One session's worth of work on an initialized module: create, find, read,
 * destroy a data object. 0 on success. */
static int work_once(const char *who, int n)
{
    CK_SLOT_ID slot = client_find_slot(f, who, label);
    if (!slot)
        return 1;
    CK_SESSION_HANDLE s;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        fprintf(stderr, "%s: C_OpenSession 0x%lx\n", who, rv);
        return 1;
    }
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        fprintf(stderr, "%s: C_Login 0x%lx\n", who, rv);
        f->C_CloseSession(s);
        return 1;
    }
    char lab[64];
    snprintf(lab, sizeof(lab), "fs-%s-%d-%d", who, (int)getpid(), n);
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_LABEL, lab, strlen(lab)}, {CKA_VALUE, lab, strlen(lab)}};
    CK_OBJECT_HANDLE o, found[4];
    CK_ULONG nf = 0;
    int bad = 0;
    if ((rv = f->C_CreateObject(s, t, 4, &o)) != CKR_OK) {
        fprintf(stderr, "%s: C_CreateObject 0x%lx\n", who, rv);
        bad = 1;
    } else {
        CK_RV r1 = f->C_FindObjectsInit(s, t + 2, 1), r2 = r1 == CKR_OK ? f->C_FindObjects(s, found, 4, &nf) : r1;
        CK_RV r3 = r1 == CKR_OK ? f->C_FindObjectsFinal(s) : r1;
        if (r1 != CKR_OK || r2 != CKR_OK || r3 != CKR_OK)
            fprintf(stderr, "%s: find: 0x%lx 0x%lx 0x%lx\n", who, r1, r2, r3), bad = 1;
        else if (nf != 1) {
            fprintf(stderr, "%s: WRONG: find: %lu found of an object just created\n", who, nf);
            bad = 1;
        }
        if ((rv = f->C_DestroyObject(s, o)) != CKR_OK) {
            fprintf(stderr, "%s: C_DestroyObject 0x%lx\n", who, rv);
            bad = 1;
        }
    }
    f->C_CloseSession(s);
    return bad;
}

/* A child's full life: C_Initialize, work, C_Finalize. */
static int child_full(const char *who)
{
    alarm(60);
    if (getenv("FS_CHILD_NOTHREADS")) /* ThreadSanitizer: a child's new thread may reuse a parent thread's id ("dup thread") */
        ia.flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    CK_RV rv = f->C_Initialize(&ia);
    if (rv != CKR_OK) {
        fprintf(stderr, "%s: child C_Initialize 0x%lx\n", who, rv);
        return 2;
    }
    int r = work_once(who, 0);
    rv = f->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "%s: child C_Finalize 0x%lx\n", who, rv);
        r = 3;
    }
    return r;
}

static void reap(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "pg_forkstorm: child %d failed (status 0x%x)\n", (int)pid, st);
        atomic_fetch_add(&child_fail, 1);
    }
}

/* One timed fork; full: the child works fully. */
static void one_fork(bool full, const char *who)
{
    long t0 = now_ms();
    pid_t pid = fork();
    if (pid == 0)
        _exit(full ? child_full(who) : 0);
    long d = now_ms() - t0;
    if (pid < 0) {
        perror("fork");
        return;
    }
    atomic_fetch_add(&forks, 1);
    long m = atomic_load(&max_ms);
    while (d > m && !atomic_compare_exchange_weak(&max_ms, &m, d))
        ;
    if (d > fork_max_ms) {
        fprintf(stderr, "pg_forkstorm: fork() took %ld ms\n", d);
        atomic_fetch_add(&slow, 1);
    }
    reap(pid);
}

static void *init_loop(void *arg)
{
    (void)arg;
    for (int n = 0; !atomic_load(&stop); n++) {
        CK_RV rv = f->C_Initialize(&ia);
        if (rv != CKR_OK) {
            fprintf(stderr, "init_loop: C_Initialize 0x%lx\n", rv);
            atomic_fetch_add(&parent_fail, 1);
            continue;
        }
        if (work_once("initloop", n))
            atomic_fetch_add(&parent_fail, 1);
        if ((rv = f->C_Finalize(NULL)) != CKR_OK) {
            fprintf(stderr, "init_loop: C_Finalize 0x%lx\n", rv);
            atomic_fetch_add(&parent_fail, 1);
        }
    }
    return NULL;
}

static void *work_loop(void *arg)
{
    (void)arg;
    for (int n = 0; !atomic_load(&stop); n++)
        if (work_once("worker", n))
            atomic_fetch_add(&parent_fail, 1);
    return NULL;
}

static int dur;
static void *fork_loop(void *arg)
{
    const char *who = arg;
    long end = now_ms() + dur * 1000L;
    for (int n = 0; now_ms() < end; n++)
        one_fork(n % 4 == 3, who);
    return NULL;
}

static int nested(void)
{
    if (f->C_Initialize(&ia) != CKR_OK)
        return 2;
    CK_SLOT_ID slot = client_find_slot(f, "nested", label);
    CK_SESSION_HANDLE s;
    if (!slot || f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK)
        return 2;
    CK_RV rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    if (rv != CKR_OK)
        return 2;
    char lab[64];
    snprintf(lab, sizeof(lab), "fs-nested-%d", (int)getpid());
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_LABEL, lab, strlen(lab)}, {CKA_VALUE, lab, strlen(lab)}};
    CK_OBJECT_HANDLE o;
    if ((rv = f->C_CreateObject(s, t, 4, &o)) != CKR_OK)
        return 2;
    char val[64];
    CK_ATTRIBUTE g = {CKA_VALUE, val, sizeof(val)};
    if (f->C_GetAttributeValue(s, o, &g, 1) != CKR_OK) /* cached in the parent */
        return 2;
    int bad = 0;
    for (int round = 0; round < 5; round++) {
        long t0 = now_ms();
        pid_t pid = fork();
        if (pid == 0) {
            alarm(60);
            if (getenv("FS_CHILD_NOTHREADS"))
                ia.flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
            if (f->C_Initialize(&ia) != CKR_OK)
                _exit(2);
            CK_SLOT_ID cs = client_find_slot(f, "nested child", label);
            CK_SESSION_HANDLE c;
            if (!cs || f->C_OpenSession(cs, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &c) != CKR_OK)
                _exit(2);
            rv = f->C_Login(c, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
            CK_OBJECT_HANDLE h[2];
            CK_ULONG n = 0;
            if (round == 0) { /* destroy the parent's object */
                if (f->C_FindObjectsInit(c, t + 2, 1) != CKR_OK || f->C_FindObjects(c, h, 2, &n) != CKR_OK ||
                    f->C_FindObjectsFinal(c) != CKR_OK || n != 1 || f->C_DestroyObject(c, h[0]) != CKR_OK) {
                    fprintf(stderr, "nested child: cannot destroy the parent's object (%lu found)\n", n);
                    _exit(4);
                }
            }
            int r = work_once("child", round);
            long g0 = now_ms();
            pid_t gp = fork(); /* a grandchild */
            if (now_ms() - g0 > fork_max_ms)
                fprintf(stderr, "nested child: fork() took %ld ms\n", now_ms() - g0), r = 5;
            if (gp == 0)
                _exit(child_full("grandchild"));
            int st;
            waitpid(gp, &st, 0);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "nested: grandchild failed 0x%x\n", st);
                r = 6;
            }
            f->C_CloseSession(c);
            if (f->C_Finalize(NULL) != CKR_OK)
                r = 7;
            _exit(r);
        }
        long d = now_ms() - t0;
        if (d > atomic_load(&max_ms))
            atomic_store(&max_ms, d);
        atomic_fetch_add(&forks, 1);
        reap(pid);
        if (round == 0) {
            /* destroyed by the child: the parent must see it, through its listener */
            CK_OBJECT_HANDLE h[2];
            CK_ULONG n = 9;
            usleep(300 * 1000);
            g.ulValueLen = sizeof(val);
            rv = f->C_GetAttributeValue(s, o, &g, 1);
            if (rv == CKR_OK) {
                fprintf(stderr, "nested: WRONG: the parent still reads the object the child destroyed\n");
                bad = 1;
            }
            if (f->C_FindObjectsInit(s, t + 2, 1) != CKR_OK || f->C_FindObjects(s, h, 2, &n) != CKR_OK ||
                f->C_FindObjectsFinal(s) != CKR_OK || n != 0) {
                fprintf(stderr, "nested: WRONG: the parent finds %lu of the destroyed object\n", n);
                bad = 1;
            }
        }
        if (work_once("parent", round))
            bad = 1;
    }
    f->C_CloseSession(s);
    if (f->C_Finalize(NULL) != CKR_OK)
        bad = 1;
    return bad;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: pg_forkstorm MODULE LABEL PIN finalize|double|nested|plain|idle SECONDS\n");
        return 2;
    }
    label = argv[2];
    pin = argv[3];
    const char *mode = argv[4];
    dur = atoi(argv[5]);
    if (getenv("FORK_MAX_MS"))
        fork_max_ms = atol(getenv("FORK_MAX_MS"));
    void *h = dlopen(argv[1], RTLD_NOW);
    CK_C_GetFunctionList gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
    if (!gfl || gfl(&f) != CKR_OK)
        return 2;
    int r = 0;
    pthread_t a, b, c;
    if (strcmp(mode, "finalize") == 0) {
        pthread_create(&a, NULL, init_loop, NULL);
        long end = now_ms() + dur * 1000L;
        for (int n = 0; now_ms() < end; n++)
            one_fork(n % 8 == 7, "fin");
        atomic_store(&stop, true);
        pthread_join(a, NULL);
    } else if (strcmp(mode, "double") == 0 || strcmp(mode, "plain") == 0) {
        CK_RV irv;
        for (int i = 0; (irv = f->C_Initialize(&ia)) != CKR_OK && i < 100; i++)
            usleep(100 * 1000); /* the server may be restarting */
        if (irv != CKR_OK)
            return 2;
        pthread_create(&a, NULL, work_loop, NULL);
        pthread_create(&b, NULL, fork_loop, "dbl1");
        if (strcmp(mode, "double") == 0)
            pthread_create(&c, NULL, fork_loop, "dbl2");
        pthread_join(b, NULL);
        if (strcmp(mode, "double") == 0)
            pthread_join(c, NULL);
        atomic_store(&stop, true);
        pthread_join(a, NULL);
        long t0 = now_ms();
        if (f->C_Finalize(NULL) != CKR_OK)
            r = 1;
        if (now_ms() - t0 > 5000)
            fprintf(stderr, "pg_forkstorm: C_Finalize took %ld ms\n", now_ms() - t0), r = 1;
    } else if (strcmp(mode, "idle") == 0) {
        /* no application call at all while the main thread forks: a fork
         * waits only for the listener */
        if (f->C_Initialize(&ia) != CKR_OK || work_once("idle", 0))
            return 2;
        long end = now_ms() + dur * 1000L;
        while (now_ms() < end) {
            one_fork(false, "idle");
            usleep(20 * 1000);
        }
        long t0 = now_ms();
        if (f->C_Finalize(NULL) != CKR_OK)
            r = 1;
        fprintf(stderr, "pg_forkstorm: C_Finalize took %ld ms\n", now_ms() - t0);
    } else if (strcmp(mode, "nested") == 0) {
        r = nested();
    } else
        return 2;
    printf("%s: forks %d max_ms %ld slow %d children_failed %d parent_failed %d\n", mode, atomic_load(&forks),
           atomic_load(&max_ms), atomic_load(&slow), atomic_load(&child_fail), atomic_load(&parent_fail));
    if (atomic_load(&slow) || atomic_load(&child_fail) || atomic_load(&parent_fail))
        r = 1;
    return r;
}
