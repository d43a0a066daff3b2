/* rot_client: a PKCS#11 application for the rotation tests.
 *
 *   rot_client MODULE LABEL PIN fill N        create N token data objects
 *   rot_client MODULE LABEL PIN run STOPFILE  sign/verify and create objects
 *                                             continuously until STOPFILE exists
 *   rot_client MODULE LABEL PIN relabel N     relabel every object it made, N passes
 *   rot_client MODULE LABEL PIN destroy -     destroy every object it made, 2 ms apart
 *   rot_client MODULE LABEL PIN check N       at least N objects, all readable
 *                                             (ROT_CLIENT_WAIT_FOR=FILE: once logged
 *                                             in, create FILE.ready and wait until
 *                                             FILE exists)
 *   rot_client MODULE LABEL PIN follow FIFO   one round of work per line "go"
 *                                             read from FIFO, until "quit" or EOF
 *   rot_client MODULE LABEL PIN once TAG      create one object labeled TAG, then
 *                                             exit 3 if the keystore file it wrote
 *                                             to has no name any more (a restore
 *                                             swapped it under this process)
 *   rot_client MODULE LABEL PIN hold DIR      use the token keys labeled aes-known
 *                                             (AES-CBC-PAD) and ec-known (ECDSA),
 *                                             session keys made from DIR/sess.bin
 *                                             (AES) and DIR/hmac.bin (HMAC, and
 *                                             its value digested), then
 *                                             create DIR/hold.ready and wait, keys
 *                                             cached and sessions open, until
 *                                             DIR/hold.stop exists (core dump tests)
 *
 * It keeps one session and one login for its whole life, as a long-running
 * server would, and prints one line of results (follow: one line per round,
 * then one of results). Exit status 0 only if no operation failed. */
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "client_util.h"

static CK_FUNCTION_LIST *f;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, CK_RV rv)
{
    fprintf(stderr, "rot_client: %s failed: 0x%lx\n", what, (unsigned long)rv);
    exit(2);
}

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slot = client_find_slot(f, "rot_client", label);
    if (!slot)
        exit(2);
    return slot;
}

static CK_RV make_object(CK_SESSION_HANDLE s, unsigned long i)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    char label[48], value[64];
    CK_OBJECT_HANDLE h;
    int l = snprintf(label, sizeof(label), "rot-%ld-%lu", (long)getpid(), i);
    memset(value, 'v', sizeof(value));
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, label, (CK_ULONG)l},
                        {CKA_APPLICATION, "rot_client", 10}, {CKA_VALUE, value, sizeof(value)}};
    return f->C_CreateObject(s, t, 5, &h);
}

/* follow: a long-lived application. Keys and a first data object are made
 * once; each "go" runs one round with the same session and login: ECDSA P-256
 * sign + verify, AES-256-GCM encrypt + decrypt, find the private key and
 * earlier objects by label (exactly once each), create a data object and read
 * it back. One line per round: "round N ok" or "round N FAIL <what> 0x<rv>"
 * (the first failure of the round, rv 0x0 when the calls worked but the
 * result was wrong; any other failures of the round go to stderr). */
struct follower {
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE pub, priv, aes;
    char prefix[32]; /* "follow-PID", the start of every label */
    unsigned long round;
    const char *what; /* first failure of this round */
    CK_RV rv;
};

static void fl_label(const struct follower *fl, char *buf, size_t n, const char *name, unsigned long i)
{
    if (name)
        snprintf(buf, n, "%s-%s", fl->prefix, name);
    else
        snprintf(buf, n, "%s-obj-%lu", fl->prefix, i);
}

static void fl_value(CK_BYTE v[64], unsigned long i)
{
    memset(v, 'v', 64);
    snprintf((char *)v + 1, 40, "round-%lu", i);
}

/* Record a failed step; returns false so that callers can write `return fl_fail(...)`. */
static bool fl_fail(struct follower *fl, const char *what, CK_RV rv)
{
    if (!fl->what) {
        fl->what = what;
        fl->rv = rv;
    } else {
        fprintf(stderr, "rot_client: round %lu: also %s failed: 0x%lx\n", fl->round, what, (unsigned long)rv);
    }
    return false;
}

static CK_RV fl_create(struct follower *fl, unsigned long i, CK_OBJECT_HANDLE *h)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    char label[64];
    CK_BYTE value[64];
    fl_label(fl, label, sizeof(label), NULL, i);
    fl_value(value, i);
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, label, strlen(label)},
                        {CKA_APPLICATION, "rot_client", 10}, {CKA_VALUE, value, sizeof(value)}};
    return f->C_CreateObject(fl->s, t, 5, h);
}

/* Find objects of this class and label: exactly one, whose handle goes to *h. */
static bool fl_find_one(struct follower *fl, const char *what, CK_OBJECT_CLASS cls, const char *label,
                        CK_OBJECT_HANDLE *h)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE got[8];
    CK_ULONG n = 0, total = 0;
    CK_RV rv = f->C_FindObjectsInit(fl->s, t, 2);
    if (rv != CKR_OK)
        return fl_fail(fl, what, rv);
    do {
        if ((rv = f->C_FindObjects(fl->s, got, 8, &n)) != CKR_OK)
            break;
        if (total == 0 && n)
            *h = got[0];
        total += n;
    } while (n == 8);
    CK_RV rv2 = f->C_FindObjectsFinal(fl->s);
    if (rv != CKR_OK || rv2 != CKR_OK)
        return fl_fail(fl, what, rv != CKR_OK ? rv : rv2);
    if (total != 1) {
        fprintf(stderr, "rot_client: round %lu: %s: %lu objects labeled %s\n", fl->round, what, (unsigned long)total,
                label);
        return fl_fail(fl, what, CKR_OK);
    }
    return true;
}

/* The data object of round i: its label and value are those it was made with. */
static bool fl_read_obj(struct follower *fl, const char *what, CK_OBJECT_HANDLE h, unsigned long i)
{
    char label[64], got_label[64];
    CK_BYTE want[64], got[64];
    CK_ATTRIBUTE a[] = {{CKA_LABEL, got_label, sizeof(got_label)}, {CKA_VALUE, got, sizeof(got)}};
    CK_RV rv = f->C_GetAttributeValue(fl->s, h, a, 2);
    if (rv != CKR_OK)
        return fl_fail(fl, what, rv);
    fl_label(fl, label, sizeof(label), NULL, i);
    fl_value(want, i);
    if (a[0].ulValueLen != strlen(label) || memcmp(got_label, label, strlen(label)) != 0 ||
        a[1].ulValueLen != sizeof(want) || memcmp(got, want, sizeof(want)) != 0) {
        fprintf(stderr, "rot_client: round %lu: %s: object %s reads back different\n", fl->round, what, label);
        return fl_fail(fl, what, CKR_OK);
    }
    return true;
}

static void fl_setup(struct follower *fl)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM ecgen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, aesgen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG len = 32;
    char ec[64], aes[64];
    CK_OBJECT_HANDLE h;
    CK_RV rv;
    snprintf(fl->prefix, sizeof(fl->prefix), "follow-%ld", (long)getpid());
    fl_label(fl, ec, sizeof(ec), "ec", 0);
    fl_label(fl, aes, sizeof(aes), "aes", 0);
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1},
                         {CKA_VERIFY, &yes, 1}, {CKA_LABEL, ec, strlen(ec)}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_LABEL, ec, strlen(ec)}};
    CK_ATTRIBUTE at[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_ENCRYPT, &yes, 1},
                         {CKA_DECRYPT, &yes, 1}, {CKA_LABEL, aes, strlen(aes)}};
    if ((rv = f->C_GenerateKeyPair(fl->s, &ecgen, pt, 4, kt, 3, &fl->pub, &fl->priv)) != CKR_OK)
        die("C_GenerateKeyPair", rv);
    if ((rv = f->C_GenerateKey(fl->s, &aesgen, at, 5, &fl->aes)) != CKR_OK)
        die("C_GenerateKey", rv);
    if ((rv = fl_create(fl, 0, &h)) != CKR_OK) /* round 0's object, for round 1 to find */
        die("C_CreateObject", rv);
}

/* One round; true if every step worked. */
static bool fl_round(struct follower *fl)
{
    CK_MECHANISM ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE msg[48], sig[64], iv[12], ct[128], pt[128];
    CK_ULONG siglen = sizeof(sig), ctlen = sizeof(ct), ptlen = sizeof(pt);
    CK_RV rv;
    char label[64];
    CK_OBJECT_HANDLE h;

    fl->what = NULL;
    fl->rv = CKR_OK;
    memset(msg, 0, sizeof(msg));
    snprintf((char *)msg, sizeof(msg), "%s round %lu", fl->prefix, fl->round);

    /* (a) ECDSA P-256 sign + verify with the key pair made at start. */
    if ((rv = f->C_SignInit(fl->s, &ecdsa, fl->priv)) != CKR_OK ||
        (rv = f->C_Sign(fl->s, msg, sizeof(msg), sig, &siglen)) != CKR_OK)
        fl_fail(fl, "sign", rv);
    else if ((rv = f->C_VerifyInit(fl->s, &ecdsa, fl->pub)) != CKR_OK ||
             (rv = f->C_Verify(fl->s, msg, sizeof(msg), sig, siglen)) != CKR_OK)
        fl_fail(fl, "verify", rv);

    /* (b) AES-256-GCM encrypt and decrypt: the round trip gives the message back. */
    memset(iv, 0, sizeof(iv));
    memcpy(iv, &fl->round, sizeof(fl->round) < sizeof(iv) ? sizeof(fl->round) : sizeof(iv));
    CK_GCM_PARAMS gcm = {iv, sizeof(iv), 96, (CK_BYTE_PTR)fl->prefix, strlen(fl->prefix), 128};
    CK_MECHANISM mgcm = {CKM_AES_GCM, &gcm, sizeof(gcm)};
    if ((rv = f->C_EncryptInit(fl->s, &mgcm, fl->aes)) != CKR_OK ||
        (rv = f->C_Encrypt(fl->s, msg, sizeof(msg), ct, &ctlen)) != CKR_OK)
        fl_fail(fl, "encrypt", rv);
    else if ((rv = f->C_DecryptInit(fl->s, &mgcm, fl->aes)) != CKR_OK ||
             (rv = f->C_Decrypt(fl->s, ct, ctlen, pt, &ptlen)) != CKR_OK)
        fl_fail(fl, "decrypt", rv);
    else if (ctlen != sizeof(msg) + 16 || ptlen != sizeof(msg) || memcmp(pt, msg, sizeof(msg)) != 0)
        fl_fail(fl, "aes-gcm-roundtrip", CKR_OK);

    /* (c) Find by label: the private key (the handle we hold) and the objects
     * of the previous round and of round 0, each exactly once and intact. */
    fl_label(fl, label, sizeof(label), "ec", 0);
    if (fl_find_one(fl, "find-private-key", CKO_PRIVATE_KEY, label, &h) && h != fl->priv) {
        fprintf(stderr, "rot_client: round %lu: the private key has handle %lu, not %lu\n", fl->round,
                (unsigned long)h, (unsigned long)fl->priv);
        fl_fail(fl, "find-private-key-handle", CKR_OK);
    }
    fl_label(fl, label, sizeof(label), NULL, fl->round - 1);
    if (fl_find_one(fl, "find-previous-object", CKO_DATA, label, &h))
        fl_read_obj(fl, "read-previous-object", h, fl->round - 1);
    if (fl->round > 1) {
        fl_label(fl, label, sizeof(label), NULL, 0);
        if (fl_find_one(fl, "find-first-object", CKO_DATA, label, &h))
            fl_read_obj(fl, "read-first-object", h, 0);
    }

    /* (d) A new token data object, read back. */
    if ((rv = fl_create(fl, fl->round, &h)) != CKR_OK)
        fl_fail(fl, "create-object", rv);
    else
        fl_read_obj(fl, "read-new-object", h, fl->round);

    if (fl->what)
        printf("round %lu FAIL %s 0x%lx\n", fl->round, fl->what, (unsigned long)fl->rv);
    else
        printf("round %lu ok\n", fl->round);
    fflush(stdout);
    return fl->what == NULL;
}

/* Returns the number of failed rounds. */
static unsigned long follow(CK_SESSION_HANDLE s, const char *path)
{
    struct follower fl;
    unsigned long failures = 0;
    char line[64];
    memset(&fl, 0, sizeof(fl));
    fl.s = s;
    fl_setup(&fl);
    FILE *in = fopen(path, "r");
    if (!in) {
        perror(path);
        exit(2);
    }
    while (fgets(line, sizeof(line), in)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strcmp(line, "quit") == 0)
            break;
        if (strcmp(line, "go") != 0) {
            if (line[0])
                fprintf(stderr, "rot_client: follow: unknown command '%s' ignored\n", line);
            continue;
        }
        fl.round++;
        if (!fl_round(&fl))
            failures++;
    }
    fclose(in);
    printf("follow: rounds %lu failures %lu\n", fl.round, failures);
    fflush(stdout);
    return failures;
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    CK_RV rv = f->C_FindObjectsInit(s, t, 2);
    if (rv == CKR_OK)
        rv = f->C_FindObjects(s, &h, 1, &n);
    f->C_FindObjectsFinal(s);
    if (rv != CKR_OK || n != 1) {
        fprintf(stderr, "rot_client: no key labeled %s\n", label);
        exit(2);
    }
    return h;
}

static size_t read_small(const char *dir, const char *name, CK_BYTE *buf, size_t cap)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    /* read(2), not stdio: a FILE's buffer would leave a copy in freed heap */
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, cap) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        fprintf(stderr, "rot_client: cannot read %s\n", path);
        exit(2);
    }
    return (size_t)n;
}

/* A session secret key of a known value. */
static CK_OBJECT_HANDLE session_key(CK_SESSION_HANDLE s, CK_KEY_TYPE kt, const CK_BYTE *val, size_t len)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, &no, 1},           {CKA_SENSITIVE, &yes, 1},
                        {CKA_ENCRYPT, &yes, 1},        {CKA_SIGN, &yes, 1},
                        {CKA_VALUE, (void *)val, (CK_ULONG)len}};
    CK_OBJECT_HANDLE h;
    CK_RV rv = f->C_CreateObject(s, t, 7, &h);
    if (rv != CKR_OK)
        die("C_CreateObject (session key)", rv);
    return h;
}

static void use_key(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE k, bool sign)
{
    CK_BYTE in[48] = "data to protect, padded out to a few blocks....", out[512];
    CK_ULONG len = sizeof(out);
    CK_RV rv = sign ? f->C_SignInit(s, m, k) : f->C_EncryptInit(s, m, k);
    if (rv == CKR_OK)
        rv = sign ? f->C_Sign(s, in, sizeof(in), out, &len) : f->C_Encrypt(s, in, sizeof(in), out, &len);
    if (rv != CKR_OK)
        die(sign ? "sign" : "encrypt", rv);
}

/* hold DIR: see the top of the file. */
static int hold(CK_SESSION_HANDLE s, const char *dir)
{
    CK_BYTE iv[16] = {0}, v[64];
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)}, ecdsa = {CKM_ECDSA_SHA256, NULL, 0},
                 hmac = {CKM_SHA256_HMAC, NULL, 0};
    char path[4096];

    use_key(s, &cbc, find_key(s, CKO_SECRET_KEY, "aes-known"), false);
    use_key(s, &ecdsa, find_key(s, CKO_PRIVATE_KEY, "ec-known"), true);
    size_t n = read_small(dir, "sess.bin", v, sizeof(v));
    use_key(s, &cbc, session_key(s, CKK_AES, v, n), false);
    n = read_small(dir, "hmac.bin", v, sizeof(v));
    CK_OBJECT_HANDLE hk = session_key(s, CKK_GENERIC_SECRET, v, n);
    use_key(s, &hmac, hk, true);
    /* The HMAC key's value digested too (C_DigestKey), by SHA-512, whose
     * context keeps the last block after its final: the session keeps its
     * digest context for the next digest, but not one a key went into. */
    CK_MECHANISM sha512 = {CKM_SHA512, NULL, 0};
    CK_BYTE md[64];
    CK_ULONG mdlen = sizeof(md);
    CK_RV rv = f->C_DigestInit(s, &sha512);
    if (rv == CKR_OK)
        rv = f->C_DigestKey(s, hk);
    if (rv == CKR_OK)
        rv = f->C_DigestFinal(s, md, &mdlen);
    if (rv != CKR_OK)
        die("C_DigestKey", rv);
    memset(v, 0, sizeof(v)); /* the test looks for the values: this copy is the test's, not the module's */
    snprintf(path, sizeof(path), "%s/hold.ready", dir);
    FILE *fp = fopen(path, "w");
    if (fp)
        fclose(fp);
    snprintf(path, sizeof(path), "%s/hold.stop", dir);
    for (int i = 0; access(path, F_OK) != 0 && i < 6000; i++)
        usleep(10000);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    CK_RV (*get)(CK_FUNCTION_LIST **);
    CK_SESSION_HANDLE s;
    CK_RV rv;

    if (argc != 6) {
        fprintf(stderr, "usage: rot_client MODULE LABEL PIN fill N | relabel N | destroy - | run STOPFILE | check N | follow FIFO | once TAG | hold DIR\n");
        return 2;
    }
    void *mod = dlopen(argv[1], RTLD_NOW);
    if (!mod || !(get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod, "C_GetFunctionList"))) {
        fprintf(stderr, "rot_client: cannot load %s\n", argv[1]);
        return 2;
    }
    get(&f);
    if ((rv = f->C_Initialize(NULL)) != CKR_OK)
        die("C_Initialize", rv);
    CK_SLOT_ID slot = find_slot(argv[2]);
    if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s)) != CKR_OK)
        die("C_OpenSession", rv);
    if ((rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3]))) != CKR_OK)
        die("C_Login", rv);
    /* ROT_CLIENT_WAIT_FOR=FILE: logged in, say so in FILE.ready, then wait
     * (at most 60 s) until FILE exists. */
    const char *wait_for = getenv("ROT_CLIENT_WAIT_FOR");
    if (wait_for) {
        char ready[4096];
        snprintf(ready, sizeof(ready), "%s.ready", wait_for);
        FILE *rf = fopen(ready, "w");
        if (rf)
            fclose(rf);
    }
    for (int i = 0; wait_for && access(wait_for, F_OK) != 0 && i < 6000; i++)
        usleep(10000);
    const char *mode = argv[4];

    if (strcmp(mode, "fill") == 0) {
        unsigned long n = strtoul(argv[5], NULL, 10);
        double t0 = now();
        for (unsigned long i = 0; i < n; i++)
            if ((rv = make_object(s, i)) != CKR_OK)
                die("C_CreateObject", rv);
        printf("fill: %lu objects in %.2f s\n", n, now() - t0);
    } else if (strcmp(mode, "relabel") == 0 || strcmp(mode, "destroy") == 0) {
        /* relabel N: every rot_client object relabeled, N passes; destroy: every one destroyed, 2 ms apart.
         * Run side by side on the same objects: a handle another process destroyed answers
         * CKR_OBJECT_HANDLE_INVALID, anything else fails the run. */
        bool relabel = mode[0] == 'r';
        unsigned long passes = relabel ? strtoul(argv[5], NULL, 10) : 1, bad = 0;
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_APPLICATION, "rot_client", 10}};
        static CK_OBJECT_HANDLE h[4096];
        CK_ULONG got = 0;
        if ((rv = f->C_FindObjectsInit(s, t, 2)) != CKR_OK || (rv = f->C_FindObjects(s, h, 4096, &got)) != CKR_OK)
            die("C_FindObjects", rv);
        f->C_FindObjectsFinal(s);
        for (unsigned long p = 0; p < passes; p++)
            for (CK_ULONG i = 0; i < got; i++) {
                char l[32];
                snprintf(l, sizeof(l), "relabel-%lu", p);
                CK_ATTRIBUTE a = {CKA_LABEL, l, strlen(l)};
                rv = relabel ? f->C_SetAttributeValue(s, h[i], &a, 1) : f->C_DestroyObject(s, h[i]);
                if (!relabel)
                    usleep(2000);
                if (rv != CKR_OK && rv != CKR_OBJECT_HANDLE_INVALID) {
                    fprintf(stderr, "rot_client: %s: 0x%lx\n", mode, (unsigned long)rv);
                    bad++;
                }
            }
        printf("%s: %lu objects, %lu failed\n", mode, (unsigned long)got, bad);
        if (bad)
            return 1;
    } else if (strcmp(mode, "check") == 0) {
        unsigned long want = strtoul(argv[5], NULL, 10), found = 0, bad = 0;
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_APPLICATION, "rot_client", 10}};
        CK_OBJECT_HANDLE h[256];
        CK_ULONG got;
        if ((rv = f->C_FindObjectsInit(s, t, 2)) != CKR_OK)
            die("C_FindObjectsInit", rv);
        do {
            if ((rv = f->C_FindObjects(s, h, 256, &got)) != CKR_OK)
                die("C_FindObjects", rv);
            for (CK_ULONG i = 0; i < got; i++) {
                char v[64];
                CK_ATTRIBUTE a = {CKA_VALUE, v, sizeof(v)};
                if (f->C_GetAttributeValue(s, h[i], &a, 1) != CKR_OK || a.ulValueLen != 64 || v[0] != 'v')
                    bad++;
            }
            found += got;
        } while (got == 256);
        f->C_FindObjectsFinal(s);
        printf("check: %lu objects, %lu unreadable\n", found, bad);
        if (found < want || bad)
            return 1;
    } else if (strcmp(mode, "once") == 0) {
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_BBOOL yes = CK_TRUE;
        CK_OBJECT_HANDLE h;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1},
                            {CKA_LABEL, argv[5], (CK_ULONG)strlen(argv[5])}, {CKA_APPLICATION, "once", 4}};
        if ((rv = f->C_CreateObject(s, t, 4, &h)) != CKR_OK)
            die("C_CreateObject", rv);
        /* The write was acknowledged: it must be in a file the keystore still names. */
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        int found = 0, unlinked = 0;
        while (d && (e = readdir(d)) != NULL) {
            char p[300], target[4096];
            struct stat sb;
            snprintf(p, sizeof(p), "/proc/self/fd/%s", e->d_name);
            ssize_t n = readlink(p, target, sizeof(target) - 1);
            if (n <= 0)
                continue;
            target[n] = '\0';
            if (!strstr(target, "/data.mdb"))
                continue;
            found++;
            if (stat(p, &sb) == 0 && sb.st_nlink == 0)
                unlinked++;
        }
        if (d)
            closedir(d);
        printf("once: %s created; %d keystore file(s) open, %d unlinked\n", argv[5], found, unlinked);
        if (unlinked)
            return 3;
    } else if (strcmp(mode, "run") == 0) {
        static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, m = {CKM_ECDSA_SHA256, NULL, 0};
        CK_BBOOL yes = CK_TRUE;
        CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1}};
        CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}};
        CK_OBJECT_HANDLE pub, priv;
        if ((rv = f->C_GenerateKeyPair(s, &gen, pt, 2, kt, 2, &pub, &priv)) != CKR_OK)
            die("C_GenerateKeyPair", rv);
        unsigned long ops = 0, fails = 0, created = 0;
        size_t cap = 1 << 20, nlat = 0;
        double *lat = malloc(cap * sizeof(*lat)), t0 = now();
        char stopdir[4096];
        snprintf(stopdir, sizeof(stopdir), "%s", argv[5]);
        char *slash = strrchr(stopdir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(stopdir, sizeof(stopdir), ".");
        /* Until the stop file appears, or its directory is gone (the test ended). */
        while (access(argv[5], F_OK) != 0 && access(stopdir, F_OK) == 0) {
            CK_BYTE sig[64], msg[32];
            CK_ULONG len = sizeof(sig);
            memcpy(msg, &ops, sizeof(ops));
            double a = now();
            rv = f->C_SignInit(s, &m, priv);
            if (rv == CKR_OK)
                rv = f->C_Sign(s, msg, sizeof(msg), sig, &len);
            double b = now();
            if (rv == CKR_OK && (rv = f->C_VerifyInit(s, &m, pub)) == CKR_OK)
                rv = f->C_Verify(s, msg, sizeof(msg), sig, len);
            if (rv != CKR_OK) {
                fails++;
                fprintf(stderr, "rot_client: sign/verify failed: 0x%lx\n", (unsigned long)rv);
            }
            if (lat && nlat < cap)
                lat[nlat++] = b - a;
            if (ops % 20 == 0) {
                if ((rv = make_object(s, created)) != CKR_OK) {
                    fails++;
                    fprintf(stderr, "rot_client: C_CreateObject failed: 0x%lx\n", (unsigned long)rv);
                } else {
                    created++;
                }
            }
            ops++;
        }
        double dt = now() - t0;
        double p50 = 0, p99 = 0;
        if (lat && nlat) {
            qsort(lat, nlat, sizeof(*lat), cmp_double);
            p50 = lat[nlat / 2];
            p99 = lat[(size_t)((double)nlat * 0.99)];
        }
        printf("run: pid %ld ops %lu failures %lu created %lu seconds %.2f sign_p50_us %.1f sign_p99_us %.1f\n",
               (long)getpid(), ops, fails, created, dt, p50 * 1e6, p99 * 1e6);
        free(lat);
        f->C_Logout(s);
        f->C_Finalize(NULL);
        return fails ? 1 : 0;
    } else if (strcmp(mode, "hold") == 0) {
        int rc = hold(s, argv[5]);
        f->C_Logout(s);
        f->C_Finalize(NULL);
        return rc;
    } else if (strcmp(mode, "follow") == 0) {
        unsigned long fails = follow(s, argv[5]);
        f->C_Logout(s);
        f->C_Finalize(NULL);
        return fails ? 1 : 0;
    } else {
        fprintf(stderr, "rot_client: unknown mode %s\n", mode);
        return 2;
    }
    f->C_Logout(s);
    f->C_Finalize(NULL);
    return 0;
}
