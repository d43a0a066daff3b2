/* bench_ops: the per-operation cost of a PKCS#11 module next to raw OpenSSL
 * doing the same work in the same process, at the same parallelism.
 *
 * Usage: bench_ops [--procs N] MODULE [SECONDS]
 *   (SECONDS per round, default 1; BENCH_OPS_ROUNDS rounds of each side,
 *   default 3, the module's and OpenSSL's in turn; the best of each)
 * With $P11MK_CONF unset, a scratch keystore is made under /tmp and removed.
 *
 * --procs N runs each case in N processes at once on the one keystore
 * instead of 1 and 2 threads in this one: the token and its keys are made
 * here, then C_Finalize, then N children are forked, each with its own
 * C_Initialize, session and C_Login, finding the keys by class and key type.
 * The children start each round together (a process-shared barrier); the
 * module's and OpenSSL's operations per second are the sums over the
 * children of each one's rate in that round; the sides take turns, round
 * by round, as with threads (BENCH_OPS_ROUNDS, at most PROC_ROUNDS), and
 * the best of each is shown. The table has a "procs" column where the other
 * has "threads".
 *
 * Each case is one complete operation as an application makes it: for the
 * module C_xxxInit + C_xxx on one session per thread (keys made by the
 * token); for OpenSSL a new context per operation with the algorithm fetched
 * once and a key of the same type and size. Printed: operations per second
 * of each, their ratio (module / OpenSSL), and the module's time per
 * operation. Nothing is asserted: this is a measurement, run by hand and for
 * the README's figures. A module with the PKCS#11 3.0 interface also gets
 * AES-GCM through C_EncryptMessage, one C_MessageEncryptInit per session for
 * the whole run (each operation: one message).
 *
 * For instruction profiles (valgrind --tool=callgrind, whose counts do not
 * depend on machine load): BENCH_OPS_PROFILE="NAME:N" runs N operations of
 * each side of the first case whose name contains NAME, untimed, and exits;
 * BENCH_OPS_SIDE=module or =openssl runs only that side (for perf stat).
 *
 * BENCH_OPS_ONLY="NAME" (without --procs) runs only the cases whose name
 * contains NAME (one figure, e.g. "ECDSA P-256 sign", on several
 * configurations in turn); unset, all of them. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <p11-kit/pkcs11.h>

#define BENCH_NAME "bench_ops"
#include "bench_util.h"
#include "pkcs11/p11_v3.h"

static CK_FUNCTION_LIST *f;
static CK_FUNCTION_LIST_3_0 *f3; /* NULL: the module has no 3.0 interface */
static CK_SLOT_ID slot;
static double dur = 1.0;
static int rounds = 3;



static void ossl_check(int ok, const char *what)
{
    if (ok <= 0) {
        fprintf(stderr, "bench_ops: OpenSSL %s failed\n", what);
        exit(1);
    }
}

/* ---- the module's keys ----------------------------------------------------- */

static const CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_OBJECT_HANDLE ec_priv, ec_pub, ed_priv, rsa_priv, aes_key, hmac_key;

static void make_keys(CK_SESSION_HANDLE s)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const CK_BYTE ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
    CK_ULONG bits = 2048, len32 = 32;
    CK_OBJECT_HANDLE pub;
    CK_MECHANISM ecg = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, edg = {CKM_EC_EDWARDS_KEY_PAIR_GEN, NULL, 0},
                 rsag = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0}, aesg = {CKM_AES_KEY_GEN, NULL, 0},
                 hg = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE ecpub[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_VERIFY, (void *)&yes, 1},
                            {CKA_TOKEN, (void *)&yes, 1}};
    CK_ATTRIBUTE edpub[] = {{CKA_EC_PARAMS, (void *)ed25519, sizeof(ed25519)}, {CKA_TOKEN, (void *)&yes, 1}};
    CK_ATTRIBUTE rsapub[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_TOKEN, (void *)&yes, 1}};
    CK_ATTRIBUTE priv[] = {{CKA_SIGN, (void *)&yes, 1}, {CKA_TOKEN, (void *)&yes, 1}};
    CK_ATTRIBUTE aes[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_ENCRYPT, (void *)&yes, 1},
                          {CKA_TOKEN, (void *)&yes, 1}};
    CK_ATTRIBUTE hm[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_SIGN, (void *)&yes, 1},
                         {CKA_TOKEN, (void *)&yes, 1}};
    check(f->C_GenerateKeyPair(s, &ecg, ecpub, 3, priv, 2, &ec_pub, &ec_priv), "EC key pair");
    check(f->C_GenerateKeyPair(s, &edg, edpub, 2, priv, 2, &pub, &ed_priv), "Ed25519 key pair");
    check(f->C_GenerateKeyPair(s, &rsag, rsapub, 2, priv, 2, &pub, &rsa_priv), "RSA key pair");
    check(f->C_GenerateKey(s, &aesg, aes, 3, &aes_key), "AES key");
    check(f->C_GenerateKey(s, &hg, hm, 3, &hmac_key), "HMAC key");
    (void)no;
}

/* ---- OpenSSL's keys and algorithms, made and fetched once -------------------- */

static EVP_PKEY *o_ec, *o_ed, *o_rsa;
static EVP_MD *o_sha256;
static EVP_CIPHER *o_gcm;
static EVP_MAC *o_hmac;
static uint8_t o_aes[32], o_hkey[32];
static uint8_t ec_sig[80]; /* a signature to verify, per side */
static size_t ec_siglen;
static CK_BYTE p11_ec_sig[64];
static CK_ULONG p11_ec_siglen;

static uint8_t msg64[64], msg1k[1024];

static void ossl_setup(void)
{
    ossl_check((o_ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) != NULL, "EC keygen");
    ossl_check((o_ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")) != NULL, "Ed25519 keygen");
    ossl_check((o_rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)) != NULL, "RSA keygen");
    ossl_check((o_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) != NULL, "fetch SHA256");
    ossl_check((o_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL)) != NULL, "fetch AES-256-GCM");
    ossl_check((o_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL)) != NULL, "fetch HMAC");
    RAND_bytes(o_aes, sizeof(o_aes));
    RAND_bytes(o_hkey, sizeof(o_hkey));
    RAND_bytes(msg64, sizeof(msg64));
    RAND_bytes(msg1k, sizeof(msg1k));
}

/* ---- one operation of each case, each side ------------------------------------ */

typedef struct {
    CK_SESSION_HANDLE s; /* the module's side: this thread's session */
} worker;

static void p11_sign(worker *w, CK_MECHANISM_TYPE m, CK_OBJECT_HANDLE k, size_t msglen)
{
    CK_MECHANISM mech = {m, NULL, 0};
    CK_BYTE sig[512];
    CK_ULONG len = sizeof(sig);
    check(f->C_SignInit(w->s, &mech, k), "C_SignInit");
    check(f->C_Sign(w->s, msg64, (CK_ULONG)msglen, sig, &len), "C_Sign");
}

static void o_digest_sign(EVP_PKEY *k, const EVP_MD *md, size_t msglen)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    uint8_t sig[512];
    size_t len = sizeof(sig);
    ossl_check(EVP_DigestSignInit_ex(c, NULL, md ? EVP_MD_get0_name(md) : NULL, NULL, NULL, k, NULL), "sign init");
    ossl_check(EVP_DigestSign(c, sig, &len, msg64, msglen), "sign");
    EVP_MD_CTX_free(c);
}

static void p_ecdsa(worker *w) { p11_sign(w, CKM_ECDSA_SHA256, ec_priv, 64); }
static void o_ecdsa(worker *w) { (void)w, o_digest_sign(o_ec, o_sha256, 64); }
static void p_ed25519(worker *w) { p11_sign(w, CKM_EDDSA, ed_priv, 64); }
static void o_ed25519(worker *w) { (void)w, o_digest_sign(o_ed, NULL, 64); }
static void p_rsa(worker *w) { p11_sign(w, CKM_SHA256_RSA_PKCS, rsa_priv, 64); }
static void o_rsa_sign(worker *w) { (void)w, o_digest_sign(o_rsa, o_sha256, 64); }
static void p_hmac(worker *w) { p11_sign(w, CKM_SHA256_HMAC, hmac_key, 64); }

static void o_hmac64(worker *w)
{
    (void)w;
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(o_hmac);
    OSSL_PARAM p[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0), OSSL_PARAM_construct_end()};
    uint8_t out[32];
    size_t len;
    ossl_check(EVP_MAC_init(c, o_hkey, sizeof(o_hkey), p) && EVP_MAC_update(c, msg64, 64) &&
                   EVP_MAC_final(c, out, &len, sizeof(out)),
               "HMAC");
    EVP_MAC_CTX_free(c);
}

static void p_ecdsa_verify(worker *w)
{
    CK_MECHANISM mech = {CKM_ECDSA_SHA256, NULL, 0};
    check(f->C_VerifyInit(w->s, &mech, ec_pub), "C_VerifyInit");
    check(f->C_Verify(w->s, msg64, 64, p11_ec_sig, p11_ec_siglen), "C_Verify");
}

static void o_ecdsa_verify(worker *w)
{
    (void)w;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    ossl_check(EVP_DigestVerifyInit_ex(c, NULL, "SHA256", NULL, NULL, o_ec, NULL), "verify init");
    ossl_check(EVP_DigestVerify(c, ec_sig, ec_siglen, msg64, 64), "verify");
    EVP_MD_CTX_free(c);
}

static void p_gcm(worker *w)
{
    CK_BYTE iv[12] = {1, 2, 3}, out[1024 + 16];
    CK_GCM_PARAMS gp = {iv, sizeof(iv), 96, NULL, 0, 128};
    CK_MECHANISM mech = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ULONG len = sizeof(out);
    check(f->C_EncryptInit(w->s, &mech, aes_key), "C_EncryptInit");
    check(f->C_Encrypt(w->s, msg1k, sizeof(msg1k), out, &len), "C_Encrypt");
}

static void p_gcm_msg(worker *w)
{
    CK_BYTE iv[12] = {1, 2, 3}, tag[16], out[1024];
    struct { /* CK_GCM_MESSAGE_PARAMS: the IV as given, the tag apart */
        CK_BYTE_PTR iv;
        CK_ULONG ivlen, fixed_bits, generator;
        CK_BYTE_PTR tag;
        CK_ULONG tag_bits;
    } gp = {iv, sizeof(iv), 0, 0 /* CKG_NO_GENERATE */, tag, 128};
    CK_ULONG len = sizeof(out);
    check(f3->C_EncryptMessage(w->s, &gp, sizeof(gp), NULL, 0, msg1k, sizeof(msg1k), out, &len), "C_EncryptMessage");
}

static void o_gcm1k(worker *w)
{
    (void)w;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t iv[12] = {1, 2, 3}, out[1024 + 16];
    int l1 = 0, l2 = 0;
    ossl_check(EVP_EncryptInit_ex2(c, o_gcm, o_aes, iv, NULL) && EVP_EncryptUpdate(c, out, &l1, msg1k, 1024) &&
                   EVP_EncryptFinal_ex(c, out + l1, &l2) &&
                   EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, out + 1024),
               "AES-GCM");
    EVP_CIPHER_CTX_free(c);
}

static void p_sha256(worker *w)
{
    CK_MECHANISM mech = {CKM_SHA256, NULL, 0};
    CK_BYTE out[32];
    CK_ULONG len = sizeof(out);
    check(f->C_DigestInit(w->s, &mech), "C_DigestInit");
    check(f->C_Digest(w->s, msg1k, sizeof(msg1k), out, &len), "C_Digest");
}

static void o_sha256_1k(worker *w)
{
    (void)w;
    uint8_t out[32];
    ossl_check(EVP_Digest(msg1k, sizeof(msg1k), out, NULL, o_sha256, NULL), "SHA-256");
}

/* ---- timing ------------------------------------------------------------------- */

typedef void (*op_fn)(worker *w);

typedef struct {
    op_fn fn;
    worker w;
    double deadline;
    unsigned long ops;
    pthread_barrier_t *start;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    pthread_barrier_wait(j->start);
    while (now() < j->deadline)
        for (int i = 0; i < 16; i++, j->ops++)
            j->fn(&j->w);
    return NULL;
}

/* Operations per second of fn on nthreads threads, one round. */
static double rate(op_fn fn, int nthreads, CK_SESSION_HANDLE *sessions)
{
    double best = 0;
    {
        pthread_t t[8];
        job jobs[8];
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
        for (int i = 0; i < nthreads; i++) {
            jobs[i] = (job){fn, {sessions[i]}, 0, 0, &start};
        }
        double t0 = now() + 0.02;
        for (int i = 0; i < nthreads; i++) {
            jobs[i].deadline = t0 + dur;
            pthread_create(&t[i], NULL, run_job, &jobs[i]);
        }
        while (now() < t0)
            ;
        pthread_barrier_wait(&start);
        double begin = now();
        unsigned long ops = 0;
        for (int i = 0; i < nthreads; i++) {
            pthread_join(t[i], NULL);
            ops += jobs[i].ops;
        }
        double r = (double)ops / (now() - begin);
        if (r > best)
            best = r;
        pthread_barrier_destroy(&start);
    }
    return best;
}

/* ---- N processes on one keystore ------------------------------------------- */

#define MAX_PROCS 64
#define MAX_CASES 16
#define PROC_ROUNDS 8

typedef struct {
    pthread_barrier_t start;              /* the children, before each round */
    double r[MAX_CASES][2][PROC_ROUNDS][MAX_PROCS]; /* ops/s: case, side (module, OpenSSL), round, child */
    atomic_int finished[MAX_CASES];       /* children done with a case */
} shared_area;

/* The one token object of this class and key type (the parent made one of
 * each); handles are per process, so each child looks its keys up. */
static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;

    check(f->C_FindObjectsInit(s, t, 2), "C_FindObjectsInit");
    check(f->C_FindObjects(s, h, 2, &n), "C_FindObjects");
    check(f->C_FindObjectsFinal(s), "C_FindObjectsFinal");
    if (n != 1) {
        fprintf(stderr, "bench_ops: %lu keys of class 0x%lx, type 0x%lx, expected 1\n", (unsigned long)n,
                (unsigned long)cls, (unsigned long)kt);
        exit(1);
    }
    return h[0];
}

/* The slot of the token with this serial number (slot ids need not be the
 * same in another process). */
static CK_SLOT_ID slot_by_serial(const CK_UTF8CHAR serial[16])
{
    CK_SLOT_ID sl[64];
    CK_ULONG n = 64;
    check(f->C_GetSlotList(CK_TRUE, sl, &n), "C_GetSlotList");
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(sl[i], &ti) == CKR_OK && memcmp(ti.serialNumber, serial, 16) == 0)
            return sl[i];
    }
    fprintf(stderr, "bench_ops: the child finds no token with the parent's serial number\n");
    exit(1);
}

typedef struct {
    const char *name;
    op_fn p11, ossl;
} bench_case;

/* One child: its own C_Initialize, session and login, then each case for
 * `rounds` rounds, the module's side and OpenSSL's in turn (a machine
 * whose speed moves favours neither), each started with the other
 * children. */
static void child(shared_area *sh, int me, const bench_case *cases, size_t ncases, const CK_UTF8CHAR serial[16],
                  CK_FUNCTION_LIST_3_0 *f3_parent)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};

    /* A parent that dies leaves no child waiting on the barrier for ever. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1)
        _exit(1);
    check(f->C_Initialize(NULL), "C_Initialize (child)");
    check(f->C_OpenSession(slot_by_serial(serial), CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s),
          "C_OpenSession (child)");
    check(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "user-pin", 8), "C_Login (child)");
    ec_priv = find_key(s, CKO_PRIVATE_KEY, CKK_EC);
    ec_pub = find_key(s, CKO_PUBLIC_KEY, CKK_EC);
    ed_priv = find_key(s, CKO_PRIVATE_KEY, CKK_EC_EDWARDS);
    rsa_priv = find_key(s, CKO_PRIVATE_KEY, CKK_RSA);
    aes_key = find_key(s, CKO_SECRET_KEY, CKK_AES);
    hmac_key = find_key(s, CKO_SECRET_KEY, CKK_GENERIC_SECRET);
    f3 = f3_parent;
    if (f3)
        check(f3->C_MessageEncryptInit(s, &gcm, aes_key), "C_MessageEncryptInit (child)");
    worker w = {s};
    for (size_t i = 0; i < ncases; i++) {
        for (int round = 0; round < rounds; round++) {
            for (int side = 0; side < 2; side++) {
                op_fn fn = side ? cases[i].ossl : cases[i].p11;
                if (!side && fn == p_gcm_msg && !f3)
                    continue; /* the parent knows: all children skip it */
                unsigned long ops = 0;
                pthread_barrier_wait(&sh->start);
                double t0 = now(), end = t0 + dur;
                while (now() < end)
                    for (int k = 0; k < 16; k++, ops++)
                        fn(&w);
                sh->r[i][side][round][me] = (double)ops / (now() - t0);
            }
        }
        atomic_fetch_add(&sh->finished[i], 1);
    }
    check(f->C_Finalize(NULL), "C_Finalize (child)");
    _exit(0);
}

/* Runs the cases in nprocs children and prints the table as they finish.
 * Returns 0, or 1 when a child failed (the others are then stopped). */
static int run_procs(int nprocs, const bench_case *cases, size_t ncases, CK_UTF8CHAR serial[16])
{
    shared_area *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_barrierattr_t ba;
    pid_t pids[MAX_PROCS];
    int alive = nprocs, failed = 0;
    CK_FUNCTION_LIST_3_0 *f3_parent = f3;

    if (sh == MAP_FAILED || ncases > MAX_CASES) {
        fprintf(stderr, "bench_ops: no shared memory for the children\n");
        return 1;
    }
    memset(sh, 0, sizeof(*sh));
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&sh->start, &ba, (unsigned)nprocs);
    fflush(stdout);
    fflush(stderr);
    for (int p = 0; p < nprocs; p++) {
        pids[p] = fork();
        if (pids[p] < 0) {
            fprintf(stderr, "bench_ops: fork failed\n");
            for (int q = 0; q < p; q++)
                kill(pids[q], SIGKILL);
            return 1;
        }
        if (pids[p] == 0)
            child(sh, p, cases, ncases, serial, f3_parent);
    }
    for (size_t i = 0; i < ncases && !failed; i++) {
        while (atomic_load(&sh->finished[i]) < nprocs && !failed) {
            int st;
            pid_t pid = waitpid(-1, &st, WNOHANG);
            if (pid > 0) {
                alive--;
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                    failed = 1;
                for (int p = 0; p < nprocs; p++)
                    if (pids[p] == pid)
                        pids[p] = 0;
            } else
                usleep(10000);
        }
        if (failed)
            break;
        if (cases[i].p11 == p_gcm_msg && !f3_parent) {
            printf("%-40s %7d (no PKCS#11 3.0 message-based encryption)\n", cases[i].name, nprocs);
            continue;
        }
        double best[2] = {0, 0};
        for (int side = 0; side < 2; side++)
            for (int round = 0; round < rounds; round++) {
                double sum = 0;
                for (int p = 0; p < nprocs; p++)
                    sum += sh->r[i][side][round][p];
                if (sum > best[side])
                    best[side] = sum;
            }
        printf("%-40s %7d %12.0f %12.0f %7.2f %9.2f\n", cases[i].name, nprocs, best[0], best[1], best[0] / best[1],
               1e6 * nprocs / best[0]);
        fflush(stdout);
    }
    if (failed) {
        fprintf(stderr, "bench_ops: a child failed; stopping the others\n");
        for (int p = 0; p < nprocs; p++)
            if (pids[p] > 0)
                kill(pids[p], SIGKILL);
    }
    while (alive > 0) {
        int st;
        if (waitpid(-1, &st, 0) < 0)
            break;
        alive--;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed = 1;
    }
    pthread_barrier_destroy(&sh->start);
    munmap(sh, sizeof(*sh));
    return failed;
}

int main(int argc, char **argv)
{
    static const bench_case cases[] = {
        {"ECDSA P-256 sign (SHA-256, 64 B)", p_ecdsa, o_ecdsa},
        {"ECDSA P-256 verify", p_ecdsa_verify, o_ecdsa_verify},
        {"Ed25519 sign (64 B)", p_ed25519, o_ed25519},
        {"RSA-2048 sign (SHA-256, PKCS#1 v1.5)", p_rsa, o_rsa_sign},
        {"AES-256-GCM encrypt 1 KiB", p_gcm, o_gcm1k},
        {"AES-256-GCM 1 KiB, C_EncryptMessage", p_gcm_msg, o_gcm1k},
        {"HMAC-SHA256 64 B", p_hmac, o_hmac64},
        {"SHA-256 1 KiB", p_sha256, o_sha256_1k},
    };
    char tmpd[] = "/tmp/p11mk-bench-XXXXXX", conf[128], cmd[160];
    bool scratch = false;
    int nprocs = 0; /* 0: threads in this process, the default */

    if (argc >= 2 && strcmp(argv[1], "--procs") == 0) {
        nprocs = argc >= 3 ? atoi(argv[2]) : 0;
        if (nprocs < 1 || nprocs > MAX_PROCS) {
            fprintf(stderr, "bench_ops: --procs takes 1 to %d\n", MAX_PROCS);
            return 2;
        }
        argv += 2;
        argc -= 2;
    }
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: bench_ops [--procs N] MODULE [SECONDS]\n");
        return 2;
    }
    if (argc == 3 && (dur = atof(argv[2])) <= 0) {
        fprintf(stderr, "bench_ops: SECONDS must be a positive number\n");
        return 2;
    }
    if (!getenv("P11MK_CONF")) {
        if (!mkdtemp(tmpd))
            return 1;
        snprintf(conf, sizeof(conf), "%s/p11mk.conf", tmpd);
        FILE *c = fopen(conf, "w");
        if (!c)
            return 1;
        fprintf(c, "keystore = %s/ks\nlog = %s/log\n", tmpd, tmpd);
        fclose(c);
        setenv("P11MK_CONF", conf, 1);
        scratch = true;
    }
    void *mod = dlopen(argv[1], RTLD_NOW);
    CK_RV (*gfl)(CK_FUNCTION_LIST **) = mod ? (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod, "C_GetFunctionList") : NULL;
    if (!gfl) {
        fprintf(stderr, "bench_ops: cannot load %s\n", argv[1]);
        return 1;
    }
    check(gfl(&f), "C_GetFunctionList");
    check(f->C_Initialize(NULL), "C_Initialize");
    CK_SLOT_ID slots[64];
    CK_ULONG ns = 64;
    check(f->C_GetSlotList(CK_FALSE, slots, &ns), "C_GetSlotList");
    slot = slots[ns - 1];
    CK_UTF8CHAR label[32];
    memset(label, ' ', sizeof(label));
    memcpy(label, "bench", 5);
    check(f->C_InitToken(slot, (CK_UTF8CHAR_PTR) "so-pin-1", 8, label), "C_InitToken");
    CK_SESSION_HANDLE s[8];
    for (int i = 0; i < 8; i++)
        check(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s[i]), "C_OpenSession");
    check(f->C_Login(s[0], CKU_SO, (CK_UTF8CHAR_PTR) "so-pin-1", 8), "C_Login SO");
    check(f->C_InitPIN(s[0], (CK_UTF8CHAR_PTR) "user-pin", 8), "C_InitPIN");
    check(f->C_Logout(s[0]), "C_Logout");
    check(f->C_Login(s[0], CKU_USER, (CK_UTF8CHAR_PTR) "user-pin", 8), "C_Login");
    make_keys(s[0]);
    ossl_setup();
    CK_RV (*gi)
    (CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) =
        (CK_RV(*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(mod, "C_GetInterface");
    CK_VERSION v30 = {3, 0};
    CK_INTERFACE *ip;
    CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
    if (gi && gi((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &ip, 0) == CKR_OK) {
        f3 = ip->pFunctionList;
        for (int i = 0; i < 8 && f3; i++)
            if (f3->C_MessageEncryptInit(s[i], &gcm, aes_key) != CKR_OK)
                f3 = NULL;
    }
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    p11_ec_siglen = sizeof(p11_ec_sig);
    check(f->C_SignInit(s[0], &m, ec_priv), "C_SignInit");
    check(f->C_Sign(s[0], msg64, 64, p11_ec_sig, &p11_ec_siglen), "C_Sign");
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    ec_siglen = sizeof(ec_sig);
    ossl_check(EVP_DigestSignInit_ex(c, NULL, "SHA256", NULL, NULL, o_ec, NULL) &&
                   EVP_DigestSign(c, ec_sig, &ec_siglen, msg64, 64),
               "EC signature");
    EVP_MD_CTX_free(c);

    const char *prof = getenv("BENCH_OPS_PROFILE");
    if (prof) {
        char want[64];
        snprintf(want, sizeof(want), "%s", prof);
        char *colon = strrchr(want, ':');
        long n = colon ? atol(colon + 1) : 0;
        size_t i = 0;
        if (colon)
            *colon = '\0';
        for (; colon && i < sizeof(cases) / sizeof(*cases); i++)
            if (strstr(cases[i].name, want))
                break;
        if (!colon || n <= 0 || i == sizeof(cases) / sizeof(*cases) || (cases[i].p11 == p_gcm_msg && !f3)) {
            fprintf(stderr, "bench_ops: BENCH_OPS_PROFILE=NAME:N names no case that can run\n");
            return 2;
        }
        worker w = {s[0]};
        const char *side = getenv("BENCH_OPS_SIDE"); /* "module" or "openssl": one side only */
        for (long k = 0; k < n && (!side || strcmp(side, "openssl") != 0); k++)
            cases[i].p11(&w);
        for (long k = 0; k < n && (!side || strcmp(side, "module") != 0); k++)
            cases[i].ossl(&w);
        printf("bench_ops: %ld operations of \"%s\" on each side\n", n, cases[i].name);
        f->C_Finalize(NULL);
        return 0;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int failed = 0;
    if (getenv("BENCH_OPS_ROUNDS") && (rounds = atoi(getenv("BENCH_OPS_ROUNDS"))) < 1)
        rounds = 1;
    if (nprocs && rounds > PROC_ROUNDS)
        rounds = PROC_ROUNDS;
    printf("bench_ops: %s, %s, %.1f s per round, best of %d alternating rounds, %ld CPUs", argv[1],
           OpenSSL_version(OPENSSL_VERSION), dur, rounds, cpus);
    if (nprocs) {
        /* The children start from a finalized module, as separate
         * applications on one keystore do. */
        CK_TOKEN_INFO ti;
        check(f->C_GetTokenInfo(slot, &ti), "C_GetTokenInfo");
        check(f->C_Finalize(NULL), "C_Finalize");
        printf(", %d process%s with one thread each\n", nprocs, nprocs == 1 ? "" : "es");
        printf("%-40s %7s %12s %12s %7s %9s\n", "operation", "procs", "module/s", "OpenSSL/s", "ratio", "us/op");
        failed = run_procs(nprocs, cases, sizeof(cases) / sizeof(*cases), ti.serialNumber);
    } else
        printf("\n");
    if (!nprocs)
        printf("%-40s %7s %12s %12s %7s %9s\n", "operation", "threads", "module/s", "OpenSSL/s", "ratio", "us/op");
    const char *only = getenv("BENCH_OPS_ONLY");
    for (int t = 1; t <= 2 && !nprocs; t++)
        for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
            if (only && !strstr(cases[i].name, only))
                continue;
            if (cases[i].p11 == p_gcm_msg && !f3) {
                printf("%-40s %7d (no PKCS#11 3.0 message-based encryption)\n", cases[i].name, t);
                continue;
            }
            /* The two sides' rounds alternate, so that a machine whose speed
             * drifts (a shared one) moves both alike; the best of each. */
            double p = 0, o = 0;
            for (int r = 0; r < rounds; r++) {
                double rp = rate(cases[i].p11, t, s), ro = rate(cases[i].ossl, t, s);
                p = rp > p ? rp : p;
                o = ro > o ? ro : o;
            }
            printf("%-40s %7d %12.0f %12.0f %7.2f %9.2f\n", cases[i].name, t, p, o, p / o, 1e6 * t / p);
            fflush(stdout);
        }
    if (!nprocs)
        f->C_Finalize(NULL);
    EVP_PKEY_free(o_ec);
    EVP_PKEY_free(o_ed);
    EVP_PKEY_free(o_rsa);
    EVP_MD_free(o_sha256);
    EVP_CIPHER_free(o_gcm);
    EVP_MAC_free(o_hmac);
    if (scratch) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpd);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_ops: could not remove %s\n", tmpd);
    }
    return failed;
}
