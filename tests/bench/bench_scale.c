/* bench_scale: how p11mk behaves as a token grows.
 *
 * Usage: bench_scale [--threads T] [--finds K] [--reuse] MODULE N
 * Uses the configuration in $P11MK_CONF (point it at a scratch keystore).
 * Any PKCS#11 module works: for SoftHSMv2, point SOFTHSM2_CONF at a
 * configuration whose directories.tokendir is a scratch directory
 * (tests/bench/compare-softhsm runs both side by side).
 *
 * Creates a token "bench" holding N AES keys, each with its own
 * C_CreateObject (one transaction each in p11mk), on T threads with a
 * session each (default 1), then C_Finalize and runs itself again with
 * --reuse, so that what follows is measured in a fresh process:
 * C_Initialize time on the full keystore, the first find by CKA_LABEL and by
 * CKA_ID, then K/10 finds of each kind as warm-up and K finds by CKA_ID
 * and K by CKA_LABEL (default K 20,000) of random existing objects (each
 * C_FindObjectsInit + C_FindObjects + C_FindObjectsFinal), each group with
 * its median, p99 and max; the process's VmRSS and VmHWM after
 * C_Initialize and after the finds; and ECDSA sign latency.
 * --reuse skips the creation and measures a token "bench" made earlier
 * (by a run with the same N; every find checks it finds exactly one object).
 * Nothing bypasses the module: every object is made by C_CreateObject. */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define BENCH_NAME "bench_scale"
#include "bench_util.h"

static CK_FUNCTION_LIST *f;

/* The slot whose token has this label, or the first slot with an
 * uninitialized token when label is NULL. Any PKCS#11 module: p11mk and
 * SoftHSMv2 both keep a free slot, and SoftHSMv2 renumbers it on init. */
static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[256];
    CK_ULONG n = 256;

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
    fprintf(stderr, "bench_scale: no slot with %s%s\n", label ? "token " : "a free token", label ? label : "");
    exit(1);
}

static CK_SESSION_HANDLE open_user_session(CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE s;
    CK_RV rv;

    check(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), "C_OpenSession");
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)"1234", 4);
    if (rv != CKR_USER_ALREADY_LOGGED_IN)
        check(rv, "C_Login");
    return s;
}

static void setup_token(void)
{
    CK_SLOT_ID slot = find_slot(NULL);
    CK_UTF8CHAR label[32];
    CK_SESSION_HANDLE s;

    memset(label, ' ', sizeof(label));
    memcpy(label, "bench", 5);
    check(f->C_InitToken(slot, (CK_UTF8CHAR *)"12345678", 8, label), "C_InitToken");
    check(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), "C_OpenSession");
    check(f->C_Login(s, CKU_SO, (CK_UTF8CHAR *)"12345678", 8), "C_Login SO");
    check(f->C_InitPIN(s, (CK_UTF8CHAR *)"1234", 4), "C_InitPIN");
    check(f->C_CloseSession(s), "C_CloseSession");
}

/* ---- creation: N objects, one C_CreateObject each, on T threads ---------- */

typedef struct {
    CK_SESSION_HANDLE s;
    unsigned long first, step, n; /* this thread makes objects first, first+step, ... below n */
} creator;

static atomic_ulong created;

static void create_one(CK_SESSION_HANDLE s, unsigned long i)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL tru = CK_TRUE;
    char label[32], id[16], value[32];

    memset(value, 'v', sizeof(value));
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &tru, sizeof(tru)},
        {CKA_LABEL, label, (CK_ULONG)snprintf(label, sizeof(label), "obj-%lu", i)},
        {CKA_ID, id, (CK_ULONG)snprintf(id, sizeof(id), "%08lx", i)},
        {CKA_VALUE, value, sizeof(value)},
    };
    CK_OBJECT_HANDLE h;

    check(f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h), "C_CreateObject");
}

static void *create_range(void *arg)
{
    creator *c = arg;
    for (unsigned long i = c->first; i < c->n; i += c->step) {
        create_one(c->s, i);
        atomic_fetch_add_explicit(&created, 1, memory_order_relaxed);
    }
    return NULL;
}

static void create_objects(CK_SLOT_ID slot, unsigned long n, int nthreads)
{
    pthread_t t[64];
    creator c[64];
    unsigned long next = n / 10;
    double t0 = now();

    for (int i = 0; i < nthreads; i++) {
        c[i] = (creator){open_user_session(slot), (unsigned long)i, (unsigned long)nthreads, n};
        if (pthread_create(&t[i], NULL, create_range, &c[i]) != 0) {
            fprintf(stderr, "bench_scale: pthread_create failed\n");
            exit(1);
        }
    }
    /* Progress on stderr every tenth, for the long runs (a million objects). */
    while (n >= 100000 && atomic_load(&created) < n) {
        unsigned long done = atomic_load(&created);
        if (done >= next) {
            fprintf(stderr, "bench_scale: %lu of %lu objects, %.0f s, %.0f objects/s\n", done, n, now() - t0,
                    (double)done / (now() - t0));
            next = (done / (n / 10) + 1) * (n / 10);
        }
        usleep(200000);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    double dt = now() - t0;
    for (int i = 0; i < nthreads; i++)
        check(f->C_CloseSession(c[i].s), "C_CloseSession");
    printf("create:        %lu objects in %.2f s (%.0f objects/s, one C_CreateObject each, %d thread%s)\n", n, dt,
           (double)n / dt, nthreads, nthreads == 1 ? "" : "s");
}

/* ---- finds ---------------------------------------------------------------- */

static double find_one(CK_SESSION_HANDLE s, CK_ATTRIBUTE_TYPE type, const char *val)
{
    CK_ATTRIBUTE t = {type, (void *)val, (CK_ULONG)strlen(val)};
    CK_OBJECT_HANDLE h[4];
    CK_ULONG found = 0;
    double t0 = now();

    check(f->C_FindObjectsInit(s, &t, 1), "C_FindObjectsInit");
    check(f->C_FindObjects(s, h, 4, &found), "C_FindObjects");
    check(f->C_FindObjectsFinal(s), "C_FindObjectsFinal");
    double dt = now() - t0;
    if (found != 1) {
        fprintf(stderr, "bench_scale: find %s found %lu objects, expected 1\n", val, (unsigned long)found);
        exit(1);
    }
    return dt;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static unsigned long pick(unsigned long n) /* xorshift64*, a fixed sequence from run to run */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (unsigned long)((rng_state * 0x2545f4914f6cdd1dULL) >> 11) % n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* k finds by type of random objects among n; prints median, p99 and max. */
static void find_many(CK_SESSION_HANDLE s, CK_ATTRIBUTE_TYPE type, unsigned long n, unsigned long k, const char *what)
{
    double *lat = malloc(k * sizeof(*lat)), t0 = now();
    char key[32];

    if (!lat) {
        fprintf(stderr, "bench_scale: out of memory\n");
        exit(1);
    }
    for (unsigned long i = 0; i < k; i++) {
        unsigned long o = pick(n);
        if (type == CKA_ID)
            snprintf(key, sizeof(key), "%08lx", o);
        else
            snprintf(key, sizeof(key), "obj-%lu", o);
        lat[i] = find_one(s, type, key);
    }
    double total = now() - t0;
    qsort(lat, k, sizeof(*lat), cmp_double);
    printf("%-14s %lu finds of random objects: median %.1f us, p99 %.1f us, max %.1f us (%.0f finds/s)\n", what, k,
           lat[k / 2] * 1e6, lat[(k * 99 + 99) / 100 - 1] * 1e6, lat[k - 1] * 1e6, (double)k / total);
    free(lat);
}

/* ---- memory ----------------------------------------------------------------- */

/* The process's resident memory: VmRSS and its peak VmHWM, and VmRSS split
 * into RssAnon (the process's own), RssFile and RssShmem (pages of mapped
 * files, such as a keystore's memory map, on a disk or on tmpfs: shared with
 * every process mapping them, and in the page cache anyway). */
static void print_rss(const char *when)
{
    static const char *const names[] = {"VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "RssShmem:"};
    FILE *st = fopen("/proc/self/status", "r");
    char line[256];
    long kib[5] = {-1, -1, -1, -1, -1};

    while (st && fgets(line, sizeof(line), st))
        for (int i = 0; i < 5; i++)
            if (strncmp(line, names[i], strlen(names[i])) == 0)
                kib[i] = atol(line + strlen(names[i]));
    if (st)
        fclose(st);
    printf("memory:        VmRSS %.1f MiB (RssAnon %.1f, RssFile %.1f, RssShmem %.1f), VmHWM %.1f MiB %s\n",
           kib[0] / 1024.0, kib[2] / 1024.0, kib[3] / 1024.0, kib[4] / 1024.0, kib[1] / 1024.0, when);
}

/* ---- signing ---------------------------------------------------------------- */

static void sign_latency(CK_SESSION_HANDLE s)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, sig = {CKM_ECDSA, NULL, 0}; /* on a SHA-256 digest: every token has it */
    CK_ATTRIBUTE pub[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}};
    CK_OBJECT_HANDLE hpub, hpriv;
    CK_BYTE out[128], msg[32] = {0};
    CK_ULONG len;
    const int rounds = 2000;
    double t0;

    check(f->C_GenerateKeyPair(s, &gen, pub, 1, NULL, 0, &hpub, &hpriv), "C_GenerateKeyPair");
    t0 = now();
    for (int i = 0; i < rounds; i++) {
        len = sizeof(out);
        check(f->C_SignInit(s, &sig, hpriv), "C_SignInit");
        check(f->C_Sign(s, msg, sizeof(msg), out, &len), "C_Sign");
    }
    printf("sign:          ECDSA P-256 SignInit+Sign (32-byte digest) %.1f us each (%d rounds)\n", (now() - t0) / rounds * 1e6,
           rounds);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_scale [--threads T] [--finds K] [--reuse] MODULE N\n"
                    "   (with P11MK_CONF or SOFTHSM2_CONF naming a scratch store)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    CK_RV (*get)(CK_FUNCTION_LIST **);
    CK_C_INITIALIZE_ARGS args = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    CK_SESSION_HANDLE s;
    unsigned long n, finds = 20000;
    int threads = 1, a = 1;
    bool reuse = false;
    void *mod;
    double t0;
    char key[32];

    setvbuf(stdout, NULL, _IOLBF, 0); /* each line as it comes, also into a pipe */
    for (; a < argc && strncmp(argv[a], "--", 2) == 0; a++) {
        if (strcmp(argv[a], "--reuse") == 0)
            reuse = true;
        else if (strcmp(argv[a], "--threads") == 0 && a + 1 < argc)
            threads = atoi(argv[++a]);
        else if (strcmp(argv[a], "--finds") == 0 && a + 1 < argc)
            finds = strtoul(argv[++a], NULL, 10);
        else
            usage();
    }
    if (argc - a != 2 || (n = strtoul(argv[a + 1], NULL, 10)) == 0 || threads < 1 || threads > 64 || finds < 10)
        usage();
    mod = dlopen(argv[a], RTLD_NOW);
    if (!mod || !(get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod, "C_GetFunctionList"))) {
        fprintf(stderr, "bench_scale: cannot load %s: %s\n", argv[a], dlerror());
        return 1;
    }
    check(get(&f), "C_GetFunctionList");
    if (!reuse) {
        /* With threads, tell the module that it is called from several
         * threads at once (without arguments a module may assume not). */
        check(f->C_Initialize(threads > 1 ? &args : NULL), "C_Initialize");
        setup_token();
        create_objects(find_slot("bench"), n, threads);
        check(f->C_Finalize(NULL), "C_Finalize");
        fflush(stdout);
        /* The rest in a fresh process: its memory is that of a process that
         * opens the full keystore, not of the one that filled it. */
        char **av = calloc((size_t)argc + 2, sizeof(*av));
        if (!av)
            return 1;
        av[0] = argv[0];
        av[1] = "--reuse";
        for (int i = 1; i < argc; i++)
            av[i + 1] = argv[i];
        execv("/proc/self/exe", av);
        fprintf(stderr, "bench_scale: cannot run itself again: %s\n", strerror(errno));
        return 1;
    }

    print_rss("before C_Initialize");
    t0 = now();
    check(f->C_Initialize(NULL), "C_Initialize");
    printf("initialize:    %.2f ms with %lu objects in the keystore\n", (now() - t0) * 1e3, n);
    print_rss("after C_Initialize");
    s = open_user_session(find_slot("bench"));
    print_rss("after C_OpenSession + C_Login (the peak includes the PIN's key derivation)");
    snprintf(key, sizeof(key), "obj-%lu", n / 2);
    printf("find by label: %.1f us (the first find)\n", find_one(s, CKA_LABEL, key) * 1e6);
    snprintf(key, sizeof(key), "%08lx", n - 1);
    printf("find by id:    %.1f us (the first find)\n", find_one(s, CKA_ID, key) * 1e6);
    find_many(s, CKA_ID, n, finds / 10, "warm-up id:");
    find_many(s, CKA_LABEL, n, finds / 10, "warm-up label:");
    find_many(s, CKA_ID, n, finds, "find by id:");
    find_many(s, CKA_LABEL, n, finds, "find by label:");
    print_rss("after the finds");
    sign_latency(s);
    check(f->C_Finalize(NULL), "C_Finalize");
    return 0;
}
