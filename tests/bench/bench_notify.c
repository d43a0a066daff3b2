/* bench_notify: how long after one process commits a change another process
 * working from its key cache notices it.
 *
 * Usage: bench_notify MODULE ROUNDS
 *   P11MK_CONF        the writer's configuration ("host a")
 *   BENCH_NOTIFY_CONF the reader's configuration ("host b"; default: the
 *                     writer's, i.e. two processes of one host)
 * Both must name the same keystore: one LMDB directory, or one PostgreSQL
 * database (each host with its own keystore directory, key file copy and
 * host_name).
 *
 * Through the writer's configuration: a token "notify" with an EC P-256 key
 * pair. Then a reader process (its own C_Initialize, session and login)
 * signs with the private key without pause (C_SignInit + C_Sign): after its
 * first signature the key is in the module's key cache, and a signature
 * reads nothing from storage until the keystore's commit sequence
 * (ks_commit_seq) moves. The writer, in this process, toggles the key's
 * CKA_SIGN with C_SetAttributeValue (one committed write) ROUNDS times, at
 * random moments 5-25 ms apart; the reader notes when C_SignInit's answer
 * changes (CKR_OK <-> CKR_KEY_FUNCTION_NOT_PERMITTED). Printed: the delay
 * from the writer's call returning (the commit done) to the reader's first
 * operation that saw it, and from the writer's call starting; median, p90,
 * p99, max, over the rounds, and how long the reader's operation that saw
 * the change took (it reads the key again). Both processes take
 * CLOCK_MONOTONIC, one clock for the machine. The reader's resolution is
 * one operation.
 *
 * On LMDB the commit sequence is read from the environment's meta page
 * (shared memory): the next operation sees it. On PostgreSQL it is the
 * number a listener thread keeps from NOTIFY on its own connection: the
 * delay is the notification's delivery, then one read transaction. A new
 * master-key epoch committed on another host reaches a host the same way
 * (the first read transaction after the sequence moved reads the keystore's
 * generation: ks_store.c ring_attach). Nothing is asserted. */
#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define BENCH_NAME "bench_notify"
#include "bench_util.h"

#define MAX_ROUNDS 10000

typedef struct {
    atomic_int ready;    /* the reader has signed once */
    atomic_int observed; /* changes the reader has seen */
    atomic_int stop;
    atomic_ulong ops, other_errors;
    double seen[MAX_ROUNDS];
    double op[MAX_ROUNDS]; /* how long the operation that saw it took */
} shared;

static CK_FUNCTION_LIST *f;
static const CK_BYTE key_id[] = {'n', 'o', 't', 'i', 'f', 'y'};

static void load(const char *path)
{
    CK_RV (*get)(CK_FUNCTION_LIST **);
    void *mod = dlopen(path, RTLD_NOW);
    if (!mod || !(get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod, "C_GetFunctionList"))) {
        fprintf(stderr, "bench_notify: cannot load %s: %s\n", path, dlerror());
        exit(1);
    }
    check(get(&f), "C_GetFunctionList");
}

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    check(f->C_GetSlotList(CK_TRUE, slots, &n), "C_GetSlotList");
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        if (!label ? !(ti.flags & CKF_TOKEN_INITIALIZED)
                   : (ti.flags & CKF_TOKEN_INITIALIZED) && memcmp(ti.label, label, strlen(label)) == 0 &&
                         ti.label[strlen(label)] == ' ')
            return slots[i];
    }
    fprintf(stderr, "bench_notify: no slot with %s\n", label ? label : "a free token");
    exit(1);
}

static CK_SESSION_HANDLE user_session(CK_OBJECT_HANDLE *key)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)key_id, sizeof(key_id)}};
    CK_ULONG n = 0;
    CK_RV rv;

    check(f->C_OpenSession(find_slot("notify"), CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), "C_OpenSession");
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)"1234", 4);
    if (rv != CKR_USER_ALREADY_LOGGED_IN)
        check(rv, "C_Login");
    check(f->C_FindObjectsInit(s, t, 2), "C_FindObjectsInit");
    check(f->C_FindObjects(s, key, 1, &n), "C_FindObjects");
    check(f->C_FindObjectsFinal(s), "C_FindObjectsFinal");
    if (n != 1) {
        fprintf(stderr, "bench_notify: the key was not found\n");
        exit(1);
    }
    return s;
}

static void setup(void)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE pub[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1}};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_ID, (void *)key_id, sizeof(key_id)}};
    CK_OBJECT_HANDLE hpub, hpriv;
    CK_UTF8CHAR label[32];
    CK_SESSION_HANDLE s;
    CK_SLOT_ID slot;

    check(f->C_Initialize(NULL), "C_Initialize");
    slot = find_slot(NULL);
    memset(label, ' ', sizeof(label));
    memcpy(label, "notify", 6);
    check(f->C_InitToken(slot, (CK_UTF8CHAR *)"12345678", 8, label), "C_InitToken");
    slot = find_slot("notify");
    check(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), "C_OpenSession");
    check(f->C_Login(s, CKU_SO, (CK_UTF8CHAR *)"12345678", 8), "C_Login SO");
    check(f->C_InitPIN(s, (CK_UTF8CHAR *)"1234", 4), "C_InitPIN");
    check(f->C_Logout(s), "C_Logout");
    check(f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)"1234", 4), "C_Login");
    check(f->C_GenerateKeyPair(s, &gen, pub, 2, priv, 3, &hpub, &hpriv), "C_GenerateKeyPair");
    check(f->C_Finalize(NULL), "C_Finalize");
}

/* One signature: CKR_OK, or what C_SignInit said. */
static CK_RV try_sign(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE msg[32] = {1}, sig[64];
    CK_ULONG len = sizeof(sig);
    CK_RV rv = f->C_SignInit(s, &m, key);
    if (rv == CKR_OK)
        check(f->C_Sign(s, msg, sizeof(msg), sig, &len), "C_Sign");
    return rv;
}

static void reader(shared *sh, const char *conf)
{
    CK_OBJECT_HANDLE key;
    CK_SESSION_HANDLE s;

    if (conf)
        setenv("P11MK_CONF", conf, 1);
    check(f->C_Initialize(NULL), "C_Initialize (reader)");
    s = user_session(&key);
    bool allowed = try_sign(s, key) == CKR_OK;
    if (!allowed) {
        fprintf(stderr, "bench_notify: the reader cannot sign\n");
        _exit(1);
    }
    atomic_store(&sh->ready, 1);
    while (!atomic_load(&sh->stop)) {
        double t0 = now();
        CK_RV rv = try_sign(s, key);
        double t = now();
        atomic_fetch_add_explicit(&sh->ops, 1, memory_order_relaxed);
        if (rv != CKR_OK && rv != CKR_KEY_FUNCTION_NOT_PERMITTED) {
            atomic_fetch_add(&sh->other_errors, 1);
            continue;
        }
        if ((rv == CKR_OK) != allowed) {
            int k = atomic_load(&sh->observed);
            allowed = rv == CKR_OK;
            if (k < MAX_ROUNDS) {
                sh->seen[k] = t;
                sh->op[k] = t - t0;
            }
            atomic_store(&sh->observed, k + 1);
        }
    }
    f->C_Finalize(NULL);
    _exit(0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void summary(const char *what, double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    printf("%-36s median %8.1f us, p90 %8.1f us, p99 %8.1f us, max %8.1f us, min %8.1f us\n", what, v[n / 2] * 1e6,
           v[(n * 9) / 10] * 1e6, v[(n * 99 + 99) / 100 - 1] * 1e6, v[n - 1] * 1e6, v[0] * 1e6);
}

int main(int argc, char **argv)
{
    int rounds = argc == 3 ? atoi(argv[2]) : 0, got = 0, missed = 0;
    shared *sh;
    pid_t pid;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3 || rounds < 2 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "usage: bench_notify MODULE ROUNDS   (P11MK_CONF: writer; BENCH_NOTIFY_CONF: reader)\n");
        return 2;
    }
    load(argv[1]);
    setup();
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 1;
    memset(sh, 0, sizeof(*sh));
    fflush(stdout);
    if ((pid = fork()) < 0)
        return 1;
    if (pid == 0)
        reader(sh, getenv("BENCH_NOTIFY_CONF"));

    CK_OBJECT_HANDLE key;
    check(f->C_Initialize(NULL), "C_Initialize (writer)");
    CK_SESSION_HANDLE s = user_session(&key);
    for (double t0 = now(); !atomic_load(&sh->ready); usleep(1000))
        if (now() - t0 > 30) {
            fprintf(stderr, "bench_notify: the reader did not start\n");
            kill(pid, SIGKILL);
            return 1;
        }
    double *from_end = calloc((size_t)rounds, sizeof(double)), *from_start = calloc((size_t)rounds, sizeof(double));
    double *write_lat = calloc((size_t)rounds, sizeof(double)), *op = calloc((size_t)rounds, sizeof(double));
    unsigned seed = 12345;
    if (!from_end || !from_start || !write_lat || !op)
        return 1;
    for (int i = 0; i < rounds; i++) {
        CK_BBOOL v = (i % 2) ? CK_TRUE : CK_FALSE; /* round 0 forbids, round 1 allows again, ... */
        CK_ATTRIBUTE a = {CKA_SIGN, &v, 1};
        usleep(5000 + (unsigned)(rand_r(&seed) % 20000));
        double t0 = now();
        check(f->C_SetAttributeValue(s, key, &a, 1), "C_SetAttributeValue");
        double t1 = now();
        double deadline = t1 + 5.0;
        while (atomic_load(&sh->observed) < got + missed + 1 && now() < deadline)
            usleep(100); /* not a spin: the reader and the server need the CPUs */
        if (atomic_load(&sh->observed) < got + missed + 1) {
            /* Not seen in 5 s: count it, and let the reader catch up. */
            missed++;
            while (atomic_load(&sh->observed) < got + missed && now() < deadline + 30)
                usleep(1000);
            continue;
        }
        double seen = sh->seen[got + missed];
        from_end[got] = seen - t1;
        from_start[got] = seen - t0;
        write_lat[got] = t1 - t0;
        op[got] = sh->op[got + missed];
        got++;
    }
    atomic_store(&sh->stop, 1);
    int st = 0;
    waitpid(pid, &st, 0);
    printf("bench_notify: %s, %d changes, reader %s, %lu operations, %lu unexpected errors, %d not seen within 5 s\n",
           argv[1], rounds, getenv("BENCH_NOTIFY_CONF") ? "on BENCH_NOTIFY_CONF" : "on P11MK_CONF",
           (unsigned long)atomic_load(&sh->ops), (unsigned long)atomic_load(&sh->other_errors), missed);
    if (got > 0) {
        summary("writer's C_SetAttributeValue:", write_lat, got);
        summary("seen, from the write's return:", from_end, got);
        summary("seen, from the write's start:", from_start, got);
        summary("the reader's operation that saw it:", op, got);
    }
    check(f->C_Finalize(NULL), "C_Finalize");
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0 && missed == 0 && got > 0) ? 0 : 1;
}
