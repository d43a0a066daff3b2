/* bench_scale: how p11mk behaves as a token grows.
 *
 * Usage: bench_scale MODULE N
 * Uses the configuration in $P11MK_CONF (point it at a scratch keystore).
 * Any PKCS#11 module works: for SoftHSMv2, point SOFTHSM2_CONF at a
 * configuration whose directories.tokendir is a scratch directory
 * (tests/bench/compare-softhsm runs both side by side).
 * Creates a token holding N AES keys (in batches, through the module),
 * then prints: creation rate, C_Initialize time on the full keystore, the
 * time of a find by CKA_LABEL and by CKA_ID, and ECDSA sign latency. */
#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

static void create_objects(CK_SESSION_HANDLE s, unsigned long n)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL tru = CK_TRUE;
    char label[32], id[16], value[32];
    double t0 = now();

    memset(value, 'v', sizeof(value));
    for (unsigned long i = 0; i < n; i++) {
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
    printf("create:        %lu objects in %.2f s (%.0f objects/s, one transaction each)\n", n, now() - t0,
           (double)n / (now() - t0));
}

static double find_one(CK_SESSION_HANDLE s, CK_ATTRIBUTE_TYPE type, const char *val)
{
    CK_ATTRIBUTE t = {type, (void *)val, (CK_ULONG)strlen(val)};
    CK_OBJECT_HANDLE h[4];
    CK_ULONG found = 0;
    double t0 = now();

    check(f->C_FindObjectsInit(s, &t, 1), "C_FindObjectsInit");
    check(f->C_FindObjects(s, h, 4, &found), "C_FindObjects");
    check(f->C_FindObjectsFinal(s), "C_FindObjectsFinal");
    if (found != 1) {
        fprintf(stderr, "bench_scale: find %s found %lu objects, expected 1\n", val, (unsigned long)found);
        exit(1);
    }
    return now() - t0;
}

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

int main(int argc, char **argv)
{
    CK_RV (*get)(CK_FUNCTION_LIST **);
    CK_SESSION_HANDLE s;
    unsigned long n;
    void *mod;
    double t0;
    char key[32];

    if (argc != 3 || (n = strtoul(argv[2], NULL, 10)) == 0) {
        fprintf(stderr, "usage: bench_scale MODULE N   (with P11MK_CONF or SOFTHSM2_CONF naming a scratch store)\n");
        return 2;
    }
    mod = dlopen(argv[1], RTLD_NOW);
    if (!mod || !(get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod, "C_GetFunctionList"))) {
        fprintf(stderr, "bench_scale: cannot load %s: %s\n", argv[1], dlerror());
        return 1;
    }
    check(get(&f), "C_GetFunctionList");
    check(f->C_Initialize(NULL), "C_Initialize");
    setup_token();
    s = open_user_session(find_slot("bench"));
    create_objects(s, n);
    check(f->C_Finalize(NULL), "C_Finalize");

    t0 = now();
    check(f->C_Initialize(NULL), "C_Initialize");
    printf("initialize:    %.2f ms with %lu objects in the keystore\n", (now() - t0) * 1e3, n);
    s = open_user_session(find_slot("bench"));
    snprintf(key, sizeof(key), "obj-%lu", n / 2);
    printf("find by label: %.1f us\n", find_one(s, CKA_LABEL, key) * 1e6);
    snprintf(key, sizeof(key), "%08lx", n - 1);
    printf("find by id:    %.1f us\n", find_one(s, CKA_ID, key) * 1e6);
    sign_latency(s);
    check(f->C_Finalize(NULL), "C_Finalize");
    return 0;
}
