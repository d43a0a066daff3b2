/* rot_client: a PKCS#11 application for the rotation tests.
 *
 *   rot_client MODULE LABEL PIN fill N        create N token data objects
 *   rot_client MODULE LABEL PIN run STOPFILE  sign/verify and create objects
 *                                             continuously until STOPFILE exists
 *   rot_client MODULE LABEL PIN check N       at least N objects, all readable
 *
 * It keeps one session and one login for its whole life, as a long-running
 * server would, and prints one line of results. Exit status 0 only if no
 * operation failed. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

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
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_UTF8CHAR want[32];
    CK_RV rv = f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK)
        die("C_GetSlotList", rv);
    memset(want, ' ', sizeof(want));
    memcpy(want, label, strlen(label) < 32 ? strlen(label) : 32);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0)
            return slots[i];
    }
    fprintf(stderr, "rot_client: no token labeled %s\n", label);
    exit(2);
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
        fprintf(stderr, "usage: rot_client MODULE LABEL PIN fill N | run STOPFILE | check N\n");
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
    const char *mode = argv[4];

    if (strcmp(mode, "fill") == 0) {
        unsigned long n = strtoul(argv[5], NULL, 10);
        double t0 = now();
        for (unsigned long i = 0; i < n; i++)
            if ((rv = make_object(s, i)) != CKR_OK)
                die("C_CreateObject", rv);
        printf("fill: %lu objects in %.2f s\n", n, now() - t0);
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
        while (access(argv[5], F_OK) != 0) {
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
    } else {
        fprintf(stderr, "rot_client: unknown mode %s\n", mode);
        return 2;
    }
    f->C_Logout(s);
    f->C_Finalize(NULL);
    return 0;
}
