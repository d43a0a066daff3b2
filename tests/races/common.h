/* Shared setup for the repros: a fresh keystore, a token, a logged-in user.
 * Build: gcc -g -o X X.c -ldl -lcrypto ; run: P11MK_MODULE=../build-test/pkcs11/p11mk-pkcs11.so ./X
 * WRAP_POLICY env (default "strict") chooses the policy. */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST *f;
static CK_SESSION_HANDLE h;
static CK_SLOT_ID slot;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static char tmpd[64];
static const char SO[] = "so-secret", PIN[] = "user-pin";

#define CHECK(call) do { CK_RV r_ = (call); if (r_ != CKR_OK) { fprintf(stderr, "%s:%d %s -> 0x%lx\n", __FILE__, __LINE__, #call, r_); exit(2); } } while (0)

/* A test that may hang installs on_hang_alarm for SIGALRM after setting
 * hung_message: the alarm then ends it with that message and status 1. */
static const char *hung_message = "hung";
static void on_hang_alarm(int sig)
{
    (void)sig;
    if (write(2, hung_message, strlen(hung_message)) || write(2, "\n", 1)) {}
    _exit(1);
}

static void setup_args(const char *extra, CK_C_INITIALIZE_ARGS *init_args);
static void setup_extra(const char *extra) { setup_args(extra, NULL); }

/* The keystore, the token and a read-write session h, with no login (no PIN
 * checked yet: the SO PIN is set by C_InitToken on a fresh token).
 * init_args: given to C_Initialize (the application's mutexes, say). */
static void setup_open(const char *extra, CK_C_INITIALIZE_ARGS *init_args)
{
    const char *mod = getenv("P11MK_MODULE");
    const char *pol = getenv("WRAP_POLICY");
    char conf[128];
    CK_SLOT_ID slots[16];
    CK_ULONG ns = 16;
    CK_UTF8CHAR label[32];
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);

    snprintf(tmpd, sizeof(tmpd), "/tmp/p11mk-repro-XXXXXX");
    if (!mkdtemp(tmpd)) exit(2);
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", tmpd);
    FILE *c = fopen(conf, "w");
    fprintf(c, "keystore = %s/ks\nlog = %s/p11mk.log\n", tmpd, tmpd);
    if (!pol || strcmp(pol, "none")) /* WRAP_POLICY=none: modules older than the key */
        fprintf(c, "wrap_policy = %s\n", pol ? pol : "strict");
    fprintf(c, "%s", extra ? extra : "");
    fclose(c);
    setenv("P11MK_CONF", conf, 1);
    void *dl = dlopen(mod ? mod : "../build-test/pkcs11/p11mk-pkcs11.so", RTLD_NOW | RTLD_LOCAL);
    if (!dl) { fprintf(stderr, "%s\n", dlerror()); exit(2); }
    gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(dl, "C_GetFunctionList");
    CHECK(gfl(&f));
    CHECK(f->C_Initialize(init_args));
    CHECK(f->C_GetSlotList(CK_FALSE, slots, &ns));
    slot = slots[ns - 1];
    memset(label, ' ', sizeof(label));
    memcpy(label, "repro", 5);
    CHECK(f->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO, strlen(SO), label));
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
}

/* setup_open, then the user's PIN set and the user logged in on h. */
static void setup_args(const char *extra, CK_C_INITIALIZE_ARGS *init_args)
{
    setup_open(extra, init_args);
    CHECK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
    CHECK(f->C_InitPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CHECK(f->C_Logout(h));
    CHECK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
}
static void setup(void) { setup_extra(NULL); }

static void teardown(void)
{
    char cmd[128];
    f->C_Finalize(NULL);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpd);
    if (system(cmd)) {}
}

/* The victim: an AES key the attacker must not learn (sensitive; extractable
 * so that it may be wrapped, as a user would make a key meant for backup). */
static const uint8_t target_val[32] = "TARGET-KEY-0123456789abcdefghij";
static CK_OBJECT_HANDLE make_target(size_t len)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_OBJECT_HANDLE t;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE, (void *)target_val, len}, {CKA_SENSITIVE, &yes, 1},
                        {CKA_EXTRACTABLE, &yes, 1}, {CKA_ENCRYPT, &yes, 1}};
    CHECK(f->C_CreateObject(h, a, 6, &t));
    return t;
}

/* A proper strict-mode wrapping key: generated on the token, never extractable. */
static CK_OBJECT_HANDLE make_wrapper(void)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 16;
    CK_OBJECT_HANDLE w;
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CHECK(f->C_GenerateKey(h, &gen, a, 6, &w));
    return w;
}
