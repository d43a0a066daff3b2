/* Hostile test of the gated wrappers' return codes: before C_Initialize,
 * after C_Finalize, and in a fork child before its C_Initialize, every
 * function (through both the 2.40 list and the 3.0 list of C_GetInterface)
 * returns CKR_CRYPTOKI_NOT_INITIALIZED (no hang, no crash); while
 * initialized, NULL output pointers give CKR_ARGUMENTS_BAD. Then the gate
 * must still be balanced: a fork returns (alarm 20 s). Exits 1 on a
 * violation. */
#include "common.h"
#include "../../pkcs11/p11_v3.h"

#include <signal.h>
#include <sys/wait.h>

static int bad;
static CK_FUNCTION_LIST_3_0 *f3;

#define EXPECT(call, want)                                                                                             \
    do {                                                                                                               \
        CK_RV r_ = (call);                                                                                             \
        if (r_ != (want)) {                                                                                            \
            fprintf(stderr, "%s [%s]: %s -> 0x%lx, want 0x%lx\n", phase, lname, #call, (unsigned long)r_,               \
                    (unsigned long)(want));                                                                            \
            bad++;                                                                                                     \
        }                                                                                                              \
    } while (0)

static void not_init(const char *phase)
{
    CK_INFO info;
    CK_SLOT_ID s = 0;
    CK_ULONG n = 0;
    CK_SESSION_HANDLE hs;
    CK_TOKEN_INFO ti;
    CK_SESSION_INFO si;
    CK_MECHANISM m = {CKM_AES_ECB, NULL, 0};
    CK_BYTE buf[32];
    CK_ULONG len = sizeof(buf);
    CK_FUNCTION_LIST *lists[2] = {f, (CK_FUNCTION_LIST *)f3};
    for (int k = 0; k < 2; k++) {
        CK_FUNCTION_LIST *l = lists[k];
        const char *lname = k ? "3.0" : "2.40";
        EXPECT(l->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_GetTokenInfo(0, &ti), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &hs), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_CloseSession(1), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_CloseAllSessions(0), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_GetSessionInfo(1, &si), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_Login(1, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_Logout(1), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_InitToken(0, (CK_UTF8CHAR_PTR)SO, strlen(SO), (CK_UTF8CHAR_PTR) "                                "),
               CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_EncryptInit(1, &m, 1), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_GenerateRandom(1, buf, sizeof(buf)), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_DigestFinal(1, buf, &len), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(l->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
    }
    {
        const char *lname = "3.0 only";
        EXPECT(f3->C_SessionCancel(1, 0), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(f3->C_LoginUser(1, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN), (CK_UTF8CHAR_PTR) "u", 1),
               CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(f3->C_MessageEncryptInit(1, &m, 1), CKR_CRYPTOKI_NOT_INITIALIZED);
        EXPECT(f3->C_MessageSignFinal(1), CKR_CRYPTOKI_NOT_INITIALIZED);
    }
}

static void null_args(const char *phase)
{
    CK_FUNCTION_LIST *lists[2] = {f, (CK_FUNCTION_LIST *)f3};
    for (int k = 0; k < 2; k++) {
        CK_FUNCTION_LIST *l = lists[k];
        const char *lname = k ? "3.0" : "2.40";
        EXPECT(l->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_GetSlotList(CK_FALSE, NULL, NULL), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_GetTokenInfo(slot, NULL), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_GetSlotInfo(slot, NULL), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_GetSessionInfo(h, NULL), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_Finalize((void *)1), CKR_ARGUMENTS_BAD);
        EXPECT(l->C_GetMechanismList(slot, NULL, NULL), CKR_ARGUMENTS_BAD);
    }
}

int main(void)
{
    const char *mod = getenv("P11MK_MODULE");
    CK_RV (*gi)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    CK_INTERFACE *iface;
    int st;

    hung_message = "gate_rv_edges: hung";
    signal(SIGALRM, on_hang_alarm);
    alarm(60);
    void *dl = dlopen(mod ? mod : "../build-test/pkcs11/p11mk-pkcs11.so", RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return 2;
    gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(dl, "C_GetFunctionList");
    gi = (CK_RV(*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(dl, "C_GetInterface");
    CHECK(gfl(&f));
    CHECK(gi(NULL, NULL, &iface, 0));
    f3 = iface->pFunctionList;
    if (f3->version.major != 3) {
        fprintf(stderr, "default interface is not 3.0\n");
        return 1;
    }
    not_init("before C_Initialize");
    setup(); /* common.h: C_Initialize, token, session h logged in (through f) */
    null_args("initialized");
    pid_t c = fork();
    if (c == 0) {
        alarm(20);
        not_init("fork child");
        _exit(bad ? 1 : 0);
    }
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "fork child: failed\n");
        bad++;
    }
    CHECK(f->C_Finalize(NULL));
    not_init("after C_Finalize");
    alarm(20);
    c = fork(); /* the gate is balanced: the fork returns */
    if (c == 0)
        _exit(0);
    waitpid(c, &st, 0);
    alarm(0);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpd);
    if (system(cmd)) {
    }
    printf("gate_rv_edges: %d violations\n", bad);
    return bad != 0;
}
