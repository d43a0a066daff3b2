/* bench_rewrap: how fast a master-key rotation reseals a keystore, and what
 * it costs a signer that keeps working meanwhile.
 *
 * Usage: bench_rewrap MODULE N [SIGNER_SECONDS]
 *   with P11MK_CONF naming a scratch keystore whose master_key is a key file.
 *
 * 1. Through the module: a token with one EC P-256, one RSA-2048 and one
 *    AES-256 key (real objects).
 * 2. N more objects in that token, copies of those three in turn (the same
 *    sealed sizes as real keys), written through the keystore API in large
 *    transactions so that a million objects take seconds, not hours.
 * 3. Optionally a signer process (the module, ECDSA P-256) that measures
 *    C_SignInit+C_Sign latency for SIGNER_SECONDS while idle, then during the
 *    rotation.
 * 4. stage + rewrap + commit, timed; prints records/s and the latencies. */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "keystore/ks.h"

#define BENCH_NAME "bench_rewrap"
#include "bench_util.h"

static CK_FUNCTION_LIST *f;



static void load_module(const char *path)
{
    CK_RV (*get)(CK_FUNCTION_LIST **);
    void *mod = dlopen(path, RTLD_NOW);
    if (!mod || !(get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod, "C_GetFunctionList"))) {
        fprintf(stderr, "bench_rewrap: cannot load %s: %s\n", path, dlerror());
        exit(1);
    }
    check(get(&f), "C_GetFunctionList");
}

static CK_SESSION_HANDLE login(CK_SLOT_ID *slot_out)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_SESSION_HANDLE s;
    check(f->C_GetSlotList(CK_TRUE, slots, &n), "C_GetSlotList");
    check(f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), "C_OpenSession");
    CK_RV rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)"1234", 4);
    if (rv != CKR_USER_ALREADY_LOGGED_IN)
        check(rv, "C_Login");
    *slot_out = slots[0];
    return s;
}

/* Token with the three real keys; returns their object ids (= handles). */
static void setup_token(CK_OBJECT_HANDLE ids[3], CK_OBJECT_HANDLE *signer)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_UTF8CHAR label[32];
    CK_SESSION_HANDLE s;
    CK_BBOOL yes = CK_TRUE;
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_ULONG bits = 2048, len = 32;
    CK_OBJECT_HANDLE pub;
    CK_MECHANISM ec = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, rsa = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0},
                 aes = {CKM_AES_KEY_GEN, NULL, 0};

    check(f->C_Initialize(NULL), "C_Initialize");
    check(f->C_GetSlotList(CK_TRUE, slots, &n), "C_GetSlotList");
    memset(label, ' ', sizeof(label));
    memcpy(label, "bench", 5);
    check(f->C_InitToken(slots[0], (CK_UTF8CHAR *)"12345678", 8, label), "C_InitToken");
    check(f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), "C_OpenSession");
    check(f->C_Login(s, CKU_SO, (CK_UTF8CHAR *)"12345678", 8), "C_Login SO");
    check(f->C_InitPIN(s, (CK_UTF8CHAR *)"1234", 4), "C_InitPIN");
    check(f->C_Logout(s), "C_Logout");
    check(f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)"1234", 4), "C_Login");
    CK_ATTRIBUTE ept[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1}};
    CK_ATTRIBUTE tok[] = {{CKA_TOKEN, &yes, 1}};
    check(f->C_GenerateKeyPair(s, &ec, ept, 2, tok, 1, &pub, &ids[0]), "EC keygen");
    *signer = ids[0];
    CK_ATTRIBUTE rpt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_TOKEN, &yes, 1}};
    check(f->C_GenerateKeyPair(s, &rsa, rpt, 2, tok, 1, &pub, &ids[1]), "RSA keygen");
    CK_ATTRIBUTE at[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &yes, 1}};
    check(f->C_GenerateKey(s, &aes, at, 2, &ids[2]), "AES keygen");
    check(f->C_Finalize(NULL), "C_Finalize");
}

typedef struct {
    uint32_t tid;
    uint8_t *blob[3];
    size_t len[3];
    unsigned long todo;
    unsigned long done;
} fill_arg;

static int fill_fn(ks_txn *x, void *arg)
{
    fill_arg *a = arg;
    for (unsigned long i = 0; i < a->todo; i++) {
        uint64_t oid;
        int k = (int)((a->done + i) % 3), rc;
        if ((rc = ks_obj_new_id(x, &oid)) != KS_OK || (rc = ks_obj_create(x, a->tid, oid, a->blob[k], a->len[k])) != KS_OK)
            return rc;
    }
    return KS_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The signer: measures until SIGUSR1 (phase change) and SIGTERM (stop). */
static volatile sig_atomic_t phase, stop;
static void on_usr1(int s) { (void)s; phase = 1; }
static void on_term(int s) { (void)s; stop = 1; }

static void report(const char *name, double *lat, size_t n)
{
    if (!n) {
        printf("signer %-9s no samples\n", name);
        return;
    }
    qsort(lat, n, sizeof(*lat), cmp_double);
    printf("signer %-9s %zu signatures, p50 %.1f us, p99 %.1f us, max %.1f us\n", name, n, lat[n / 2] * 1e6,
           lat[(size_t)((double)n * 0.99)] * 1e6, lat[n - 1] * 1e6);
}

static void signer(CK_OBJECT_HANDLE key, int ready_fd)
{
    CK_SLOT_ID slot;
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    size_t cap = 4u << 20, n[2] = {0, 0};
    double *lat[2] = {malloc(cap * sizeof(double)), malloc(cap * sizeof(double))};
    unsigned long fails = 0;

    signal(SIGUSR1, on_usr1);
    signal(SIGTERM, on_term);
    check(f->C_Initialize(NULL), "C_Initialize (signer)");
    CK_SESSION_HANDLE s = login(&slot);
    if (write(ready_fd, "r", 1) != 1)
        exit(1);
    close(ready_fd);
    while (!stop) {
        CK_BYTE sig[64], msg[32] = {1};
        CK_ULONG len = sizeof(sig);
        int p = phase;
        double a = now();
        CK_RV rv = f->C_SignInit(s, &m, key);
        if (rv == CKR_OK)
            rv = f->C_Sign(s, msg, sizeof(msg), sig, &len);
        double b = now();
        if (rv != CKR_OK)
            fails++;
        else if (n[p] < cap)
            lat[p][n[p]++] = b - a;
    }
    report("idle", lat[0], n[0]);
    report("rotating", lat[1], n[1]);
    printf("signer failures: %lu\n", fails);
    fflush(stdout);
    f->C_Finalize(NULL);
    exit(fails ? 1 : 0);
}

int main(int argc, char **argv)
{
    unsigned long n;
    double signer_secs = argc > 3 ? atof(argv[3]) : 0;
    CK_OBJECT_HANDLE ids[3], sigkey;
    ks_config cfg;
    ks_mkey newkey;
    ks_mk *m = NULL;
    ks_store *st;
    ks_err err = KS_ERR_INIT;

    if (argc < 3 || (n = strtoul(argv[2], NULL, 10)) == 0) {
        fprintf(stderr, "usage: bench_rewrap MODULE N [SIGNER_SECONDS]  (P11MK_CONF: scratch keystore, key file)\n");
        return 2;
    }
    load_module(argv[1]);
    setup_token(ids, &sigkey);

    if (ks_config_load(&cfg, &err) != KS_OK || ks_mk_open(&cfg, &m, &err) != KS_OK ||
        strcmp(cfg.master_key, "default") == 0) {
        fprintf(stderr, "bench_rewrap: %s (the configuration must name a key file)\n", err.msg);
        return 1;
    }
    st = ks_mk_store(m);
    /* The three real objects' plaintext records, to replicate. */
    fill_arg fa = {.tid = 1};
    ks_txn *x;
    if (ks_read_begin(st, &x) != KS_OK)
        return 1;
    for (int i = 0; i < 3; i++)
        if (ks_obj_get(x, fa.tid, ids[i], &fa.blob[i], &fa.len[i]) != KS_OK) {
            fprintf(stderr, "bench_rewrap: cannot read object %lu\n", (unsigned long)ids[i]);
            return 1;
        }
    ks_read_end(x);
    double t0 = now();
    for (unsigned long done = 0; done < n;) {
        fa.todo = n - done < 20000 ? n - done : 20000;
        fa.done = done;
        if (ks_write(st, fill_fn, &fa) != KS_OK) {
            fprintf(stderr, "bench_rewrap: fill failed\n");
            return 1;
        }
        done += fa.todo;
    }
    ks_info info;
    ks_get_info(st, &info);
    printf("keystore: %llu objects (EC, RSA-2048 and AES records of %zu, %zu and %zu bytes), filled in %.1f s, "
           "map %llu MiB\n", (unsigned long long)info.n_objects, fa.len[0], fa.len[1], fa.len[2], now() - t0,
           (unsigned long long)(info.map_size >> 20));

    /* The per-operation cost of noticing a new epoch: every transaction of
     * the module begins with one lookup of the generation counter. 10^6
     * rounds, or as many as 3 s allow (a database backend makes a round
     * trip of each). */
    {
        int rounds = 0;
        double t1 = now();
        for (; rounds < 1000000 && (rounds % 1000 != 0 || now() - t1 < 3.0); rounds++) {
            ks_txn *rx;
            if (ks_read_begin(st, &rx) != KS_OK)
                return 1;
            ks_read_end(rx);
        }
        printf("read transaction with the epoch check: %.0f ns each (%d rounds)\n", (now() - t1) / rounds * 1e9,
               rounds);
    }
    pid_t spid = -1;
    fflush(stdout);
    if (signer_secs > 0) {
        int p[2];
        char c;
        if (pipe(p) != 0)
            return 1;
        spid = fork();
        if (spid == 0) {
            close(p[0]);
            ks_mk_close(m); /* the child must not use the parent's environment */
            signer(sigkey, p[1]);
        }
        close(p[1]);
        if (read(p[0], &c, 1) != 1)
            return 1;
        close(p[0]);
        usleep((useconds_t)(signer_secs * 1e6));
        kill(spid, SIGUSR1);
    }

    /* The rotation, step by step through the lifecycle protocol, as
     * p11mk-admin stage, rewrap and commit run it. */
    ks_mk_opts ko = {.batch = 10000, .command = "bench_rewrap"};
    ks_mk_result res;
    if (ks_mkey_generate(&newkey) != KS_OK)
        return 1;
    double a = now();
    if (ks_mk_stage(m, &newkey, &ko, &res, &err) != KS_OK) {
        fprintf(stderr, "bench_rewrap: stage: %s\n", err.msg);
        return 1;
    }
    double b = now();
    if (ks_mk_rewrap(m, &ko, &res, &err) != KS_OK) {
        fprintf(stderr, "bench_rewrap: rewrap: %s\n", err.msg);
        return 1;
    }
    double c = now();
    if (ks_mk_commit(m, &ko, &res, &err) != KS_OK) {
        fprintf(stderr, "bench_rewrap: commit: %s\n", err.msg);
        return 1;
    }
    double d = now();
    ks_get_info(st, &info);
    printf("rotation: stage %.3f s, rewrap %.2f s (%.0f records/s), commit %.2f s, total %.2f s; epoch now %u\n",
           b - a, c - b, (double)(info.n_objects + info.n_tokens) / (c - b), d - c, d - a, info.epoch);
    fflush(stdout);
    int status = 0;
    if (spid > 0) {
        kill(spid, SIGTERM);
        waitpid(spid, &status, 0);
    }
    for (int i = 0; i < 3; i++)
        ks_buf_free(fa.blob[i], fa.len[i]);
    ks_mkey_clear(&newkey);
    ks_mk_close(m);
    ks_config_free(&cfg);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
