/* Unit tests of the pkcs11 layer: the built module loaded with dlopen, as an
 * application would, in a temporary keystore. Covers the C ABI contract:
 * NULL pointers, short buffers, invalid handles, session states, login and
 * PIN lock-out, object and attribute semantics, find, the crypto operation
 * life cycle and size queries, tampered records, wrong master keys, fork
 * and threads. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include "keystore/ks_tamper.h"
#include "pkcs11/p11_v3.h"
#include "tests/unit/test_params.h"
#include "tests/unit/test_dlopen.h"

#define UL(x) ((CK_ULONG)(x))

static char conf[128], keystore[128], logfile[128];

#include "tests/unit/test_slots.h"

/* ---- helpers ------------------------------------------------------------- */

static inline void write_conf(const char *path, const char *extra)
{
    FILE *c = fopen(path, "w");
    assert_non_null(c);
    fprintf(c, "keystore = %s\nlog = %s\nlog_level = info\n%s", keystore, logfile, extra ? extra : "");
    fclose(c);
}

static inline bool log_contains(const char *needle)
{
    char buf[1 << 16];
    FILE *l = fopen(logfile, "r");
    size_t n;
    if (!l)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, l);
    fclose(l);
    buf[n] = 0;
    return strstr(buf, needle) != NULL;
}

static inline CK_SLOT_ID make_token(const char *label)
{
    CK_SLOT_ID s = slot_of(label);
    CK_SESSION_HANDLE h;
    CK_UTF8CHAR l[32];
    if (s != (CK_SLOT_ID)-1)
        return s;
    s = slot_of(NULL);
    assert_int_not_equal(s, (CK_SLOT_ID)-1);
    pad32(l, label);
    CK(f->C_InitToken(s, (CK_UTF8CHAR_PTR)SO, strlen(SO), l));
    s = slot_of(label);
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
    CK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
    CK(f->C_InitPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK(f->C_Logout(h));
    CK(f->C_CloseSession(h));
    return s;
}

static inline CK_SESSION_HANDLE user_session(CK_SLOT_ID s, bool rw)
{
    CK_SESSION_HANDLE h;
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0), NULL, NULL, &h));
    CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN));
    assert_true(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
    return h;
}

static inline CK_OBJECT_HANDLE make_data(CK_SESSION_HANDLE h, const char *label, bool token, bool priv)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_TOKEN, token ? &yes : &no, 1},
        {CKA_PRIVATE, priv ? &yes : &no, 1},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_VALUE, (void *)"value bytes", 11},
    };
    CK(f->C_CreateObject(h, t, 5, &o));
    return o;
}

static inline CK_OBJECT_HANDLE make_aes(CK_SESSION_HANDLE h, const char *label, bool token)
{
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_OBJECT_HANDLE k;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE_LEN, &len, sizeof(len)},
        {CKA_TOKEN, token ? &yes : &no, 1},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},
    };
    CK(f->C_GenerateKey(h, &m, t, 5, &k));
    return k;
}

static inline void make_ec(CK_SESSION_HANDLE h, const char *label, bool token, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pt[] = {
        {CKA_EC_PARAMS, (void *)p256, sizeof(p256)},
        {CKA_TOKEN, token ? &yes : &no, 1},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_VERIFY, &yes, 1},
    };
    CK_ATTRIBUTE kt[] = {
        {CKA_TOKEN, token ? &yes : &no, 1},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_SIGN, &yes, 1},
        {CKA_SENSITIVE, &yes, 1},
    };
    CK(f->C_GenerateKeyPair(h, &m, pt, 4, kt, 4, pub, priv));
}

/* ---- fixtures ------------------------------------------------------------ */

/* The group's keystore, configured before the module is loaded. */
static inline int p11_group_setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/p11mk-p11-XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", tmp);
    snprintf(keystore, sizeof(keystore), "%s/ks", tmp);
    snprintf(logfile, sizeof(logfile), "%s/p11mk.log", tmp);
    write_conf(conf, NULL);
    setenv("P11MK_CONF", conf, 1);
    return load_module();
}

static inline int p11_group_teardown(void **state)
{
    (void)state;
    f->C_Finalize(NULL);
    rm_rf(tmp);
    return 0;
}

static inline int setup(void **state)
{
    (void)state;
    CK_RV rv = f->C_Initialize(NULL);
    return rv == CKR_OK ? 0 : -1;
}

static inline int teardown(void **state)
{
    (void)state;
    f->C_Finalize(NULL);
    return 0;
}

/* ---- library ------------------------------------------------------------- */

static void test_exports_only_three(void **state)
{
    (void)state;
    assert_non_null(dlsym(dl, "C_GetFunctionList"));
    assert_non_null(dlsym(dl, "C_GetInterfaceList"));
    assert_non_null(dlsym(dl, "C_GetInterface"));
    const char *hidden[] = {"C_Initialize", "C_Sign", "ks_open", "tok_ctx_open", "p11_lock", "tok_op_init"};
    for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
        assert_null(dlsym(dl, hidden[i]));
}

static void test_not_initialized(void **state)
{
    (void)state;
    CK_INFO info;
    CK_ULONG n;
    CK_SESSION_HANDLE h;
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_GetInfo(&info));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_GetSlotList(CK_FALSE, NULL, &n));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_OpenSession(1, CKF_SERIAL_SESSION, NULL, NULL, &h));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_CloseSession(1));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_Login(1, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 8));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_FindObjectsInit(1, NULL, 0));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_GenerateRandom(1, (CK_BYTE_PTR)&n, sizeof(n)));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_Finalize(NULL));

    /* Bad initialize arguments. */
    CK_C_INITIALIZE_ARGS a;
    memset(&a, 0, sizeof(a));
    a.pReserved = &a;
    RV(CKR_ARGUMENTS_BAD, f->C_Initialize(&a));
    memset(&a, 0, sizeof(a));
    a.CreateMutex = (CK_CREATEMUTEX)(void (*)(void))abort; /* only some callbacks given */
    RV(CKR_ARGUMENTS_BAD, f->C_Initialize(&a));
    memset(&a, 0, sizeof(a));
    a.flags = CKF_OS_LOCKING_OK;
    CK(f->C_Initialize(&a));
    RV(CKR_CRYPTOKI_ALREADY_INITIALIZED, f->C_Initialize(NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_Finalize(&a));
    CK(f->C_Finalize(NULL));
}

static void test_interfaces(void **state)
{
    (void)state;
    CK_RV (*gil)(CK_INTERFACE_PTR, CK_ULONG_PTR) = (CK_RV(*)(CK_INTERFACE_PTR, CK_ULONG_PTR))dlsym(dl, "C_GetInterfaceList");
    CK_RV (*gi)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) =
        (CK_RV(*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(dl, "C_GetInterface");
    CK_INTERFACE list[4], *ip;
    CK_ULONG n = 0;

    RV(CKR_ARGUMENTS_BAD, gil(list, NULL));
    CK(gil(NULL, &n));
    assert_int_equal(n, 2);
    n = 1;
    RV(CKR_BUFFER_TOO_SMALL, gil(list, &n));
    assert_int_equal(n, 2);
    n = 4;
    CK(gil(list, &n));
    assert_string_equal((char *)list[0].pInterfaceName, "PKCS 11");

    CK(gi((CK_UTF8CHAR_PTR) "PKCS 11", NULL, &ip, 0));
    CK_VERSION *v = ip->pFunctionList;
    assert_int_equal(v->major, 3);
    assert_int_equal(v->minor, 0);
    CK_VERSION want = {2, 40};
    CK(gi((CK_UTF8CHAR_PTR) "PKCS 11", &want, &ip, 0));
    v = ip->pFunctionList;
    assert_int_equal(v->major, 2);
    assert_int_equal(v->minor, 40);
    RV(CKR_ARGUMENTS_BAD, gi((CK_UTF8CHAR_PTR) "Vendor X", NULL, &ip, 0));
    /* Only what is implemented is advertised: a fork child does not keep the
     * parent's sessions, so no interface says it is fork-safe. */
    for (CK_ULONG k = 0; k < 2; k++)
        assert_int_equal(list[k].flags & CKF_INTERFACE_FORK_SAFE, 0);
    RV(CKR_ARGUMENTS_BAD, gi(NULL, NULL, &ip, CKF_INTERFACE_FORK_SAFE));
    RV(CKR_ARGUMENTS_BAD, gi(NULL, NULL, NULL, 0));

    /* The 3.0 list works (test_aead drives its message functions). */
    CK_FUNCTION_LIST_3_0 *f3;
    CK(gi(NULL, NULL, &ip, 0));
    f3 = ip->pFunctionList;
    CK(f3->C_Initialize(NULL));
    CK_SLOT_ID s = make_token("v3");
    CK_SESSION_HANDLE h;
    CK(f3->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &h));
    CK(f3->C_MessageSignInit(h, NULL, 0));
    CK(f3->C_MessageEncryptInit(h, NULL, 0)); /* 3.0: ends the operation (none here) */
    CK(f3->C_LoginUser(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN), NULL, 0));
    CK(f3->C_SessionCancel(h, CKF_FIND_OBJECTS));
    CK(f3->C_Finalize(NULL));
}

static void test_info(void **state)
{
    (void)state;
    CK_INFO info;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    CK_SLOT_ID slots[8];
    CK_ULONG n;

    RV(CKR_ARGUMENTS_BAD, f->C_GetInfo(NULL));
    CK(f->C_GetInfo(&info));
    assert_int_equal(info.cryptokiVersion.major, 2);
    assert_int_equal(info.cryptokiVersion.minor, 40);
    assert_memory_equal(info.manufacturerID, "p11mk", 5);
    assert_int_equal(info.flags, 0);

    CK_SLOT_ID s = make_token("info");
    RV(CKR_ARGUMENTS_BAD, f->C_GetSlotList(CK_FALSE, slots, NULL));
    CK(f->C_GetSlotList(CK_FALSE, NULL, &n));
    assert_true(n >= 2);
    CK_ULONG all = n;
    n = 1;
    RV(CKR_BUFFER_TOO_SMALL, f->C_GetSlotList(CK_FALSE, slots, &n));
    assert_int_equal(n, all);
    CK(f->C_GetSlotList(CK_FALSE, slots, &n));

    RV(CKR_SLOT_ID_INVALID, f->C_GetSlotInfo(9999, &si));
    RV(CKR_ARGUMENTS_BAD, f->C_GetSlotInfo(s, NULL));
    CK(f->C_GetSlotInfo(s, &si));
    assert_true(si.flags & CKF_TOKEN_PRESENT);
    assert_false(si.flags & CKF_HW_SLOT);

    RV(CKR_SLOT_ID_INVALID, f->C_GetTokenInfo(9999, &ti));
    RV(CKR_ARGUMENTS_BAD, f->C_GetTokenInfo(s, NULL));
    CK(f->C_GetTokenInfo(s, &ti));
    CK_FLAGS want = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
    assert_int_equal(ti.flags & want, want);
    assert_memory_equal(ti.manufacturerID, "p11mk", 5);
    assert_int_not_equal(ti.serialNumber[0], ' ');
    assert_int_not_equal(ti.model[0], ' ');
    assert_int_equal(ti.ulMinPinLen, 4);
    assert_int_equal(ti.ulMaxPinLen, 255);
    assert_int_equal(ti.ulMaxSessionCount, CK_EFFECTIVELY_INFINITE);

    /* The free slot's token is not initialized. */
    CK(f->C_GetTokenInfo(slot_of(NULL), &ti));
    assert_false(ti.flags & CKF_TOKEN_INITIALIZED);

    /* Mechanisms. */
    CK_MECHANISM_TYPE mechs[128];
    CK_MECHANISM_INFO mi;
    RV(CKR_ARGUMENTS_BAD, f->C_GetMechanismList(s, mechs, NULL));
    CK(f->C_GetMechanismList(s, NULL, &n));
    assert_true(n >= 12);
    CK_ULONG nm = n;
    n = 2;
    RV(CKR_BUFFER_TOO_SMALL, f->C_GetMechanismList(s, mechs, &n));
    assert_int_equal(n, nm);
    CK(f->C_GetMechanismList(s, mechs, &n));
    for (CK_ULONG i = 0; i < n; i++) {
        CK(f->C_GetMechanismInfo(s, mechs[i], &mi));
        assert_true(mi.ulMinKeySize <= mi.ulMaxKeySize);
        assert_int_not_equal(mi.flags, 0);
    }
    RV(CKR_MECHANISM_INVALID, f->C_GetMechanismInfo(s, CKM_VENDOR_DEFINED + 77, &mi));
    RV(CKR_ARGUMENTS_BAD, f->C_GetMechanismInfo(s, CKM_SHA256, NULL));
    RV(CKR_SLOT_ID_INVALID, f->C_GetMechanismInfo(9999, CKM_SHA256, &mi));
    CK(f->C_GetMechanismInfo(s, CKM_EC_KEY_PAIR_GEN, &mi));
    assert_int_equal(mi.ulMinKeySize, 256);
    assert_int_equal(mi.ulMaxKeySize, 521);
    assert_true(mi.flags & CKF_GENERATE_KEY_PAIR);
    CK(f->C_GetMechanismInfo(s, CKM_RSA_PKCS_KEY_PAIR_GEN, &mi));
    assert_int_equal(mi.ulMinKeySize, 2048);
    assert_int_equal(mi.ulMaxKeySize, 8192);
}

/* ---- sessions and login -------------------------------------------------- */

static void test_sessions(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("sess");
    CK_SESSION_HANDLE ro, rw;
    CK_SESSION_INFO si;

    RV(CKR_ARGUMENTS_BAD, f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, NULL));
    RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED, f->C_OpenSession(s, 0, NULL, NULL, &ro));
    RV(CKR_SLOT_ID_INVALID, f->C_OpenSession(9999, CKF_SERIAL_SESSION, NULL, NULL, &ro));
    RV(CKR_TOKEN_NOT_RECOGNIZED, f->C_OpenSession(slot_of(NULL), CKF_SERIAL_SESSION, NULL, NULL, &ro));
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &ro));
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw));
    assert_int_not_equal(ro, rw);

    RV(CKR_ARGUMENTS_BAD, f->C_GetSessionInfo(ro, NULL));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_GetSessionInfo(0, &si));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_GetSessionInfo(rw + 1000, &si));
    CK(f->C_GetSessionInfo(ro, &si));
    assert_int_equal(si.state, CKS_RO_PUBLIC_SESSION);
    assert_int_equal(si.slotID, s);
    CK(f->C_GetSessionInfo(rw, &si));
    assert_int_equal(si.state, CKS_RW_PUBLIC_SESSION);
    assert_true(si.flags & CKF_RW_SESSION);

    /* Login errors. */
    RV(CKR_USER_TYPE_INVALID, f->C_Login(ro, 77, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    RV(CKR_ARGUMENTS_BAD, f->C_Login(ro, CKU_USER, NULL, 4));
    RV(CKR_PIN_INCORRECT, f->C_Login(ro, CKU_USER, (CK_UTF8CHAR_PTR) "wrong-pin", 9));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Logout(ro));
    /* SO login with a R/O session open is refused. */
    RV(CKR_SESSION_READ_ONLY_EXISTS, f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));

    CK(f->C_Login(ro, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    RV(CKR_USER_ALREADY_LOGGED_IN, f->C_Login(rw, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN, f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
    CK(f->C_GetSessionInfo(ro, &si));
    assert_int_equal(si.state, CKS_RO_USER_FUNCTIONS);
    CK(f->C_GetSessionInfo(rw, &si));
    assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
    CK(f->C_Logout(rw));
    CK(f->C_GetSessionInfo(ro, &si));
    assert_int_equal(si.state, CKS_RO_PUBLIC_SESSION);

    CK(f->C_CloseSession(ro));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_CloseSession(ro));
    CK(f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
    CK(f->C_GetSessionInfo(rw, &si));
    assert_int_equal(si.state, CKS_RW_SO_FUNCTIONS);
    /* With the SO logged in, no R/O session may be opened. */
    RV(CKR_SESSION_READ_WRITE_SO_EXISTS, f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &ro));
    RV(CKR_SLOT_ID_INVALID, f->C_CloseAllSessions(9999));
    CK(f->C_CloseAllSessions(s));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_GetSessionInfo(rw, &si));
    /* Closing the last session logs out. */
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &ro));
    CK(f->C_GetSessionInfo(ro, &si));
    assert_int_equal(si.state, CKS_RO_PUBLIC_SESSION);

    /* Token-level functions and session state. */
    RV(CKR_SESSION_EXISTS, f->C_InitToken(s, (CK_UTF8CHAR_PTR)SO, strlen(SO), (CK_UTF8CHAR_PTR) "x"));
    RV(CKR_SESSION_READ_ONLY, f->C_SetPIN(ro, (CK_UTF8CHAR_PTR)PIN, strlen(PIN), (CK_UTF8CHAR_PTR) "new-pin", 7));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_InitPIN(ro, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK_BYTE rnd[16];
    RV(CKR_ARGUMENTS_BAD, f->C_GenerateRandom(ro, NULL, 16));
    CK(f->C_GenerateRandom(ro, rnd, sizeof(rnd)));
    CK(f->C_SeedRandom(ro, rnd, sizeof(rnd)));
    RV(CKR_FUNCTION_NOT_PARALLEL, f->C_GetFunctionStatus(ro));
    RV(CKR_FUNCTION_NOT_PARALLEL, f->C_CancelFunction(ro));
    CK_ULONG len;
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_GetOperationState(ro, NULL, &len)); /* no operation to save */
    CK(f->C_CloseAllSessions(s));
}

static void test_pins(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("pins");
    CK_SESSION_HANDLE h;
    CK_TOKEN_INFO ti;

    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
    /* PIN length limits. */
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    RV(CKR_PIN_LEN_RANGE, f->C_SetPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN), (CK_UTF8CHAR_PTR) "123", 3));
    RV(CKR_PIN_INCORRECT, f->C_SetPIN(h, (CK_UTF8CHAR_PTR) "not-it", 6, (CK_UTF8CHAR_PTR) "new-pin-1", 9));
    CK(f->C_SetPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN), (CK_UTF8CHAR_PTR) "new-pin-1", 9));
    CK(f->C_Logout(h));
    RV(CKR_PIN_INCORRECT, f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "new-pin-1", 9));
    CK(f->C_Logout(h));

    /* Lock-out: counters persist and are reported. */
    for (int i = 1; i <= 10; i++) {
        CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "bad-pin", 7);
        CK(f->C_GetTokenInfo(s, &ti));
        if (i < 10) {
            RV(CKR_PIN_INCORRECT, rv);
            assert_true(ti.flags & CKF_USER_PIN_COUNT_LOW);
            assert_int_equal(!!(ti.flags & CKF_USER_PIN_FINAL_TRY), i == 9);
            assert_false(ti.flags & CKF_USER_PIN_LOCKED);
        } else {
            assert_true(rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED);
            assert_true(ti.flags & CKF_USER_PIN_LOCKED);
        }
    }
    RV(CKR_PIN_LOCKED, f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "new-pin-1", 9));
    /* The lock survives a restart of the module. */
    CK(f->C_Finalize(NULL));
    CK(f->C_Initialize(NULL));
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
    RV(CKR_PIN_LOCKED, f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "new-pin-1", 9));
    /* The SO resets it. */
    CK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
    CK(f->C_InitPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK(f->C_Logout(h));
    CK(f->C_GetTokenInfo(s, &ti));
    assert_false(ti.flags & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY));
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    /* A correct login resets the counter. */
    CK(f->C_Logout(h));
    RV(CKR_PIN_INCORRECT, f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "bad-pin", 7));
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK(f->C_GetTokenInfo(s, &ti));
    assert_false(ti.flags & CKF_USER_PIN_COUNT_LOW);
    CK(f->C_CloseAllSessions(s));
}

/* ---- objects and attributes ---------------------------------------------- */

static void test_objects(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("objs");
    CK_SESSION_HANDLE ro, rw = user_session(s, true);
    CK_OBJECT_HANDLE d, p, k;
    CK_OBJECT_CLASS cls = CKO_DATA;

    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &ro));
    /* Creation errors. */
    CK_ATTRIBUTE noclass[] = {{CKA_LABEL, "x", 1}};
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_CreateObject(rw, noclass, 1, &d));
    CK_ATTRIBUTE unknown[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_VENDOR_DEFINED + 5, "x", 1}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, f->C_CreateObject(rw, unknown, 2, &d));
    CK_ATTRIBUTE badbool[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 4}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_CreateObject(rw, badbool, 2, &d));
    RV(CKR_ARGUMENTS_BAD, f->C_CreateObject(rw, NULL, 1, &d));
    RV(CKR_ARGUMENTS_BAD, f->C_CreateObject(rw, noclass, 1, NULL));
    CK_ATTRIBUTE tokobj[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}};
    RV(CKR_SESSION_READ_ONLY, f->C_CreateObject(ro, tokobj, 2, &d));

    d = make_data(rw, "pub-data", true, false);
    p = make_data(rw, "priv-data", true, true);
    k = make_aes(rw, "secret", true);

    /* Get attribute: every rule of C_GetAttributeValue. */
    char label[64];
    CK_BYTE value[64];
    CK_ATTRIBUTE t[3] = {{CKA_LABEL, NULL, 0}, {CKA_VALUE, NULL, 0}, {CKA_CLASS, NULL, 0}};
    CK(f->C_GetAttributeValue(rw, d, t, 3));
    assert_int_equal(t[0].ulValueLen, 8);
    assert_int_equal(t[1].ulValueLen, 11);
    assert_int_equal(t[2].ulValueLen, sizeof(CK_OBJECT_CLASS));
    t[0].pValue = label;
    t[0].ulValueLen = 3; /* too short */
    t[1].pValue = value;
    t[1].ulValueLen = sizeof(value);
    t[2].pValue = &cls;
    RV(CKR_BUFFER_TOO_SMALL, f->C_GetAttributeValue(rw, d, t, 3));
    assert_int_equal(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t[1].ulValueLen, 11); /* the others are still filled */
    assert_memory_equal(value, "value bytes", 11);
    CK_ATTRIBUTE t2[] = {{CKA_MODULUS, NULL, 0}, {CKA_LABEL, label, sizeof(label)}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, f->C_GetAttributeValue(rw, d, t2, 2));
    assert_int_equal(t2[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t2[1].ulValueLen, 8);
    assert_memory_equal(label, "pub-data", 8);
    /* Sensitive secret value. */
    CK_ATTRIBUTE t3[] = {{CKA_VALUE, value, sizeof(value)}, {CKA_VALUE_LEN, NULL, 0}};
    RV(CKR_ATTRIBUTE_SENSITIVE, f->C_GetAttributeValue(rw, k, t3, 2));
    assert_int_equal(t3[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t3[1].ulValueLen, sizeof(CK_ULONG));
    CK_BBOOL b;
    CK_ATTRIBUTE t4[] = {{CKA_LOCAL, &b, 1}};
    CK(f->C_GetAttributeValue(rw, k, t4, 1));
    assert_true(b);
    RV(CKR_ARGUMENTS_BAD, f->C_GetAttributeValue(rw, d, NULL, 1));
    RV(CKR_OBJECT_HANDLE_INVALID, f->C_GetAttributeValue(rw, 0, t, 1));
    RV(CKR_OBJECT_HANDLE_INVALID, f->C_GetAttributeValue(rw, 0x7fffff, t, 1));

    /* Object size. */
    CK_ULONG size;
    RV(CKR_ARGUMENTS_BAD, f->C_GetObjectSize(rw, d, NULL));
    CK(f->C_GetObjectSize(rw, d, &size));
    assert_true(size > 19);

    /* Set attribute rules. */
    CK_ATTRIBUTE empty[] = {{CKA_LABEL, NULL, 0}}; /* an empty value (found by fuzz_attrs) */
    CK(f->C_SetAttributeValue(rw, d, empty, 1));
    CK_OBJECT_HANDLE dcopy;
    CK(f->C_CopyObject(rw, d, empty, 1, &dcopy));
    CK(f->C_DestroyObject(rw, dcopy));
    CK_ATTRIBUTE nl[] = {{CKA_LABEL, "renamed", 7}};
    CK(f->C_SetAttributeValue(rw, d, nl, 1));
    RV(CKR_SESSION_READ_ONLY, f->C_SetAttributeValue(ro, d, nl, 1));
    CK_OBJECT_CLASS other = CKO_SECRET_KEY;
    CK_ATTRIBUTE ncls[] = {{CKA_CLASS, &other, sizeof(other)}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(rw, d, ncls, 1));
    CK_ATTRIBUTE sens_off[] = {{CKA_SENSITIVE, &no, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(rw, k, sens_off, 1));
    CK_ATTRIBUTE ext_off[] = {{CKA_EXTRACTABLE, &no, 1}};
    CK(f->C_SetAttributeValue(rw, k, ext_off, 1));
    CK_ATTRIBUTE ext_on[] = {{CKA_EXTRACTABLE, &yes, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(rw, k, ext_on, 1));
    CK_ATTRIBUTE local[] = {{CKA_LOCAL, &no, 1}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(rw, k, local, 1));
    CK_ATTRIBUTE lt[] = {{CKA_LABEL, label, sizeof(label)}};
    CK(f->C_GetAttributeValue(ro, d, lt, 1));
    assert_int_equal(lt[0].ulValueLen, 7);
    assert_memory_equal(label, "renamed", 7);
    /* CKA_ALWAYS_SENSITIVE / NEVER_EXTRACTABLE of a generated key. */
    CK_BBOOL as, ne;
    CK_ATTRIBUTE flags[] = {{CKA_ALWAYS_SENSITIVE, &as, 1}, {CKA_NEVER_EXTRACTABLE, &ne, 1}};
    CK(f->C_GetAttributeValue(rw, k, flags, 2));
    assert_true(as);

    /* Copy. */
    CK_OBJECT_HANDLE c;
    CK_ATTRIBUTE cl[] = {{CKA_LABEL, "copy", 4}, {CKA_TOKEN, &no, 1}};
    CK(f->C_CopyObject(rw, d, cl, 2, &c));
    CK_ATTRIBUTE cv[] = {{CKA_VALUE, value, sizeof(value)}, {CKA_TOKEN, &b, 1}};
    CK(f->C_GetAttributeValue(rw, c, cv, 2));
    assert_int_equal(cv[0].ulValueLen, 11);
    assert_false(b);
    CK_ATTRIBUTE ccls[] = {{CKA_CLASS, &other, sizeof(other)}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_CopyObject(rw, d, ccls, 1, &c));
    RV(CKR_ARGUMENTS_BAD, f->C_CopyObject(rw, d, cl, 2, NULL));

    /* Private objects: invisible after logout. */
    CK(f->C_Logout(rw));
    RV(CKR_OBJECT_HANDLE_INVALID, f->C_GetAttributeValue(ro, p, lt, 1));
    RV(CKR_OBJECT_HANDLE_INVALID, f->C_DestroyObject(rw, p));
    lt[0].ulValueLen = sizeof(label);
    CK(f->C_GetAttributeValue(ro, d, lt, 1));
    CK_ATTRIBUTE privobj[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_PRIVATE, &yes, 1}};
    cls = CKO_DATA;
    RV(CKR_USER_NOT_LOGGED_IN, f->C_CreateObject(rw, privobj, 2, &c));
    CK(f->C_Login(rw, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));

    /* Destroy. */
    RV(CKR_SESSION_READ_ONLY, f->C_DestroyObject(ro, d));
    CK(f->C_DestroyObject(rw, d));
    RV(CKR_OBJECT_HANDLE_INVALID, f->C_DestroyObject(rw, d));
    RV(CKR_OBJECT_HANDLE_INVALID, f->C_GetAttributeValue(rw, d, lt, 1));
    CK_ATTRIBUTE nodestroy[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_DESTROYABLE, &no, 1}};
    CK(f->C_CreateObject(rw, nodestroy, 2, &c));
    RV(CKR_ACTION_PROHIBITED, f->C_DestroyObject(rw, c));

    /* Session objects vanish with their session. */
    CK_SESSION_HANDLE tmp_s = user_session(s, false);
    CK_OBJECT_HANDLE so = make_data(tmp_s, "session-obj", false, false);
    lt[0].ulValueLen = sizeof(label);
    CK(f->C_GetAttributeValue(rw, so, lt, 1)); /* visible from other sessions */
    CK(f->C_CloseSession(tmp_s));
    lt[0].ulValueLen = sizeof(label);
    RV(CKR_OBJECT_HANDLE_INVALID, f->C_GetAttributeValue(rw, so, lt, 1));
    CK(f->C_CloseAllSessions(s));
}

static inline CK_ULONG count_found(CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_OBJECT_HANDLE objs[8];
    CK_ULONG got, total = 0;
    CK(f->C_FindObjectsInit(h, t, n));
    do {
        CK(f->C_FindObjects(h, objs, 8, &got));
        total += got;
    } while (got == 8);
    CK(f->C_FindObjectsFinal(h));
    return total;
}

static void test_find(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("find");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_CLASS data = CKO_DATA, seckey = CKO_SECRET_KEY;
    CK_OBJECT_HANDLE objs[4];
    CK_ULONG n;

    for (int i = 0; i < 20; i++) {
        char l[16];
        snprintf(l, sizeof(l), "item-%d", i % 5);
        make_data(h, l, true, i % 2);
    }
    make_data(h, "item-0", false, false);
    make_aes(h, "item-0", true);

    CK_ATTRIBUTE byl[] = {{CKA_LABEL, "item-0", 6}};
    assert_int_equal(count_found(h, byl, 1), 6);
    CK_ATTRIBUTE bylc[] = {{CKA_LABEL, "item-0", 6}, {CKA_CLASS, &data, sizeof(data)}};
    assert_int_equal(count_found(h, bylc, 2), 5);
    CK_ATTRIBUTE bytok[] = {{CKA_LABEL, "item-0", 6}, {CKA_TOKEN, &no, 1}};
    assert_int_equal(count_found(h, bytok, 2), 1);
    CK_ATTRIBUTE bysk[] = {{CKA_CLASS, &seckey, sizeof(seckey)}};
    assert_int_equal(count_found(h, bysk, 1), 1);
    CK_ATTRIBUTE none[] = {{CKA_LABEL, "absent", 6}};
    assert_int_equal(count_found(h, none, 1), 0);
    assert_int_equal(count_found(h, NULL, 0), 22);

    /* Private ones are not found without login. */
    CK(f->C_Logout(h));
    assert_int_equal(count_found(h, byl, 1), 3); /* 2 public token + 1 session */
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));

    /* Life cycle errors. */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_FindObjects(h, objs, 4, &n));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_FindObjectsFinal(h));
    RV(CKR_ARGUMENTS_BAD, f->C_FindObjectsInit(h, NULL, 1));
    CK(f->C_FindObjectsInit(h, byl, 1));
    RV(CKR_OPERATION_ACTIVE, f->C_FindObjectsInit(h, byl, 1));
    RV(CKR_ARGUMENTS_BAD, f->C_FindObjects(h, NULL, 4, &n));
    RV(CKR_ARGUMENTS_BAD, f->C_FindObjects(h, objs, 4, NULL));
    CK(f->C_FindObjects(h, objs, 4, &n));
    assert_int_equal(n, 4);
    CK(f->C_FindObjectsFinal(h));
    RV(CKR_SESSION_HANDLE_INVALID, f->C_FindObjectsInit(h + 999, byl, 1));
    CK(f->C_CloseAllSessions(s));
}

/* ---- crypto --------------------------------------------------------------- */

static void test_crypto_lifecycle(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("crypto");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_aes(h, "aes", false), pub, priv;
    CK_BYTE iv[16] = {1, 2, 3}, in[100], out[256], back[256];
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    CK_ULONG len;

    memset(in, 0x42, sizeof(in));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, sizeof(in), out, &len));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptInit(h, NULL, k));
    RV(CKR_KEY_HANDLE_INVALID, f->C_EncryptInit(h, &cbc, 0x12345));
    CK_MECHANISM bogus = {CKM_VENDOR_DEFINED + 1, NULL, 0};
    RV(CKR_MECHANISM_INVALID, f->C_EncryptInit(h, &bogus, k));
    CK_MECHANISM badiv = {CKM_AES_CBC_PAD, iv, 8};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &badiv, k));

    /* Size query, short buffer, then success: the operation stays active. */
    CK(f->C_EncryptInit(h, &cbc, k));
    RV(CKR_OPERATION_ACTIVE, f->C_EncryptInit(h, &cbc, k));
    CK(f->C_Encrypt(h, in, sizeof(in), NULL, &len));
    assert_int_equal(len, 112);
    len = 10;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 112);
    len = sizeof(out);
    CK(f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 112);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Encrypt(h, in, sizeof(in), out, &len));
    CK_ULONG ctlen = len;

    /* Multi-part decrypt of the same. */
    CK(f->C_DecryptInit(h, &cbc, k));
    CK_ULONG part = sizeof(back), total = 0;
    CK(f->C_DecryptUpdate(h, out, 50, back, &part));
    total += part;
    part = sizeof(back) - total;
    CK(f->C_DecryptUpdate(h, out + 50, ctlen - 50, back + total, &part));
    total += part;
    part = sizeof(back) - total;
    CK(f->C_DecryptFinal(h, back + total, &part));
    total += part;
    assert_int_equal(total, sizeof(in));
    assert_memory_equal(back, in, sizeof(in));
    /* A damaged last block: bad padding (or, rarely, valid padding by chance). */
    CK(f->C_DecryptInit(h, &cbc, k));
    out[ctlen - 1] ^= 0xff;
    len = sizeof(back);
    CK_RV rv = f->C_Decrypt(h, out, ctlen, back, &len);
    assert_true(rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_OK); /* padding may by chance be valid */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DecryptFinal(h, back, &len));
    CK(f->C_DecryptInit(h, &cbc, k));
    len = sizeof(back);
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE, f->C_Decrypt(h, out, 17, back, &len));

    /* Usage flags: an AES key without CKA_SIGN cannot sign. */
    CK_MECHANISM hmac = {CKM_SHA256_HMAC, NULL, 0};
    CK_MECHANISM ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &ecdsa, k));

    /* ECDSA: single and multi-part, verify, corrupted signature. */
    make_ec(h, "ec", false, &pub, &priv);
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_Sign(h, in, sizeof(in), NULL, &len));
    assert_int_equal(len, 64);
    len = 63;
    RV(CKR_BUFFER_TOO_SMALL, f->C_Sign(h, in, sizeof(in), out, &len));
    len = sizeof(out);
    CK(f->C_Sign(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 64);
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_Verify(h, in, sizeof(in), out, len));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_VerifyUpdate(h, in, 30));
    CK(f->C_VerifyUpdate(h, in + 30, sizeof(in) - 30));
    CK(f->C_VerifyFinal(h, out, len));
    out[5] ^= 1;
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, sizeof(in), out, len));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    RV(CKR_SIGNATURE_LEN_RANGE, f->C_Verify(h, in, sizeof(in), out, 10));
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &ecdsa, pub)); /* public key cannot sign */
    RV(CKR_KEY_TYPE_INCONSISTENT, f->C_SignInit(h, &hmac, priv));
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_SignUpdate(h, in, 10));
    RV(CKR_OPERATION_ACTIVE, f->C_Sign(h, in, sizeof(in), out, &len)); /* single-part after update */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignFinal(h, out, &len));

    /* Digest known answer. */
    static const CK_BYTE abc256[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                     0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                     0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestUpdate(h, in, 1));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestUpdate(h, (CK_BYTE_PTR) "a", 1));
    CK(f->C_DigestUpdate(h, (CK_BYTE_PTR) "bc", 2));
    len = 16;
    RV(CKR_BUFFER_TOO_SMALL, f->C_DigestFinal(h, out, &len));
    assert_int_equal(len, 32);
    CK(f->C_DigestFinal(h, out, &len));
    assert_memory_equal(out, abc256, 32);
    CK(f->C_DigestInit(h, &sha));
    len = sizeof(out);
    CK(f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, out, &len));
    assert_memory_equal(out, abc256, 32);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestKey(h, k));
    CK(f->C_DigestInit(h, &sha));
    CK(f->C_DigestKey(h, k)); /* a secret key's value, digested without leaving the token */
    len = sizeof(out);
    CK(f->C_DigestFinal(h, out, &len));
    assert_int_equal(len, 32);
    CK(f->C_DigestInit(h, &sha));
    RV(CKR_KEY_INDIGESTIBLE, f->C_DigestKey(h, priv)); /* only secret keys */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_DigestFinal(h, out, &len));

    /* Operations are per session: another session has none active. */
    CK_SESSION_HANDLE h2 = user_session(s, false);
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_SignFinal(h2, out, &len));
    /* Keys generated in RO sessions must be session objects. */
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG klen = 16;
    CK_ATTRIBUTE tt[] = {{CKA_VALUE_LEN, &klen, sizeof(klen)}, {CKA_TOKEN, &yes, 1}};
    CK_OBJECT_HANDLE k2;
    RV(CKR_SESSION_READ_ONLY, f->C_GenerateKey(h2, &gen, tt, 2, &k2));
    klen = 15;
    RV(CKR_KEY_SIZE_RANGE, f->C_GenerateKey(h, &gen, tt, 2, &k2));
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_GenerateKey(h, &gen, tt + 1, 1, &k2));
    RV(CKR_ARGUMENTS_BAD, f->C_GenerateKey(h, &gen, tt, 2, NULL));
    RV(CKR_MECHANISM_INVALID, f->C_GenerateKey(h, &sha, tt, 2, &k2));
    RV(CKR_MECHANISM_INVALID, f->C_WrapKey(h, &sha, k, k, NULL, &len)); /* a digest does not wrap */
    CK(f->C_CloseAllSessions(s));
}

static void test_gcm_and_rsa(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("crypto2");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_aes(h, "gcm", true), pub, priv;
    CK_BYTE iv[12] = {9}, aad[5] = "hdr!", in[33], out[128], back[128];
    CK_GCM_PARAMS gp = {iv, sizeof(iv), 96, aad, sizeof(aad), 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ULONG len, blen;

    memset(in, 7, sizeof(in));
    CK(f->C_EncryptInit(h, &gcm, k));
    len = sizeof(out);
    CK(f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, sizeof(in) + 16);
    CK(f->C_DecryptInit(h, &gcm, k));
    blen = sizeof(back);
    CK(f->C_Decrypt(h, out, len, back, &blen));
    assert_int_equal(blen, sizeof(in));
    assert_memory_equal(back, in, sizeof(in));
    out[len - 1] ^= 1; /* tag */
    CK(f->C_DecryptInit(h, &gcm, k));
    blen = sizeof(back);
    RV(CKR_ENCRYPTED_DATA_INVALID, f->C_Decrypt(h, out, len, back, &blen));
    CK_GCM_PARAMS bad = gp;
    bad.ulTagBits = 13;
    CK_MECHANISM gcmbad = {CKM_AES_GCM, &bad, sizeof(bad)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &gcmbad, k));
    CK_MECHANISM gcmnull = {CKM_AES_GCM, NULL, 0};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_EncryptInit(h, &gcmnull, k));

    /* RSA 2048 key pair, PKCS#1 sign and encrypt. */
    CK_MECHANISM rgen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE pt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_ENCRYPT, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_DECRYPT, &yes, 1}, {CKA_SIGN, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &rgen, pt, 3, kt, 2, &pub, &priv));
    CK_BYTE mod[512];
    CK_ATTRIBUTE mt[] = {{CKA_MODULUS, mod, sizeof(mod)}};
    CK(f->C_GetAttributeValue(h, pub, mt, 1));
    assert_int_equal(mt[0].ulValueLen, 256);
    CK(f->C_GetAttributeValue(h, priv, mt, 1)); /* public parts of private keys are readable */
    CK_ATTRIBUTE pe[] = {{CKA_PRIVATE_EXPONENT, mod, sizeof(mod)}};
    RV(CKR_ATTRIBUTE_SENSITIVE, f->C_GetAttributeValue(h, priv, pe, 1));
    CK_MECHANISM rs = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_BYTE sig[512];
    CK_ULONG slen = sizeof(sig);
    CK(f->C_SignInit(h, &rs, priv));
    CK(f->C_Sign(h, in, sizeof(in), sig, &slen));
    assert_int_equal(slen, 256);
    CK(f->C_VerifyInit(h, &rs, pub));
    CK(f->C_Verify(h, in, sizeof(in), sig, slen));
    CK_MECHANISM rp = {CKM_RSA_PKCS, NULL, 0};
    /* PKCS#1 v1.5 over empty data: signs, and verifies (found by fuzz_pkcs11). */
    slen = sizeof(sig);
    CK(f->C_SignInit(h, &rp, priv));
    CK(f->C_Sign(h, in, 0, sig, &slen));
    CK(f->C_VerifyInit(h, &rp, pub));
    CK(f->C_Verify(h, in, 0, sig, slen));
    CK(f->C_VerifyInit(h, &rp, pub));
    RV(CKR_SIGNATURE_INVALID, f->C_Verify(h, in, 1, sig, slen));
    CK(f->C_EncryptInit(h, &rp, pub));
    len = sizeof(out);
    RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, in, sizeof(in), out, &len));
    assert_int_equal(len, 256);
    CK_BYTE big[256];
    CK(f->C_Encrypt(h, in, sizeof(in), big, &len));
    CK(f->C_DecryptInit(h, &rp, priv));
    blen = sizeof(back);
    CK(f->C_Decrypt(h, big, len, back, &blen));
    assert_int_equal(blen, sizeof(in));
    assert_memory_equal(back, in, sizeof(in));
    CK(f->C_EncryptInit(h, &rp, pub));
    len = sizeof(big);
    RV(CKR_DATA_LEN_RANGE, f->C_Encrypt(h, big, 250, big, &len));
    bits = 1024;
    RV(CKR_KEY_SIZE_RANGE, f->C_GenerateKeyPair(h, &rgen, pt, 3, kt, 2, &pub, &priv));
    CK(f->C_CloseAllSessions(s));
}

/* ---- keystore-level failures --------------------------------------------- */

/* Find an object's keystore key (token BE32 | oid BE64) and flip a byte of its record. */
static void tamper_record(CK_SLOT_ID slot, CK_OBJECT_HANDLE oid)
{
    ks_tamper *raw;
    assert_int_equal(ks_tamper_open(keystore, 0, &raw), KS_OK);
    assert_int_equal(ks_tamper_flip_object(raw, (uint32_t)slot, (uint64_t)oid, -20, 0x10), KS_OK);
    assert_int_equal(ks_tamper_commit(raw), KS_OK);
}

static void test_tampered_record(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("tamper");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE a = make_data(h, "victim", true, false), b = make_data(h, "bystander", true, false);
    CK_OBJECT_HANDLE kpub, kpriv;
    make_ec(h, "victim-key", true, &kpub, &kpriv);
    CK(f->C_Finalize(NULL)); /* LMDB must not be opened twice in one process */
    tamper_record(s, a);
    tamper_record(s, kpriv);
    CK(f->C_Initialize(NULL));
    h = user_session(s, true);
    char label[32];
    CK_ATTRIBUTE t[] = {{CKA_LABEL, label, sizeof(label)}};
    RV(CKR_DEVICE_ERROR, f->C_GetAttributeValue(h, a, t, 1));
    char needle[64];
    snprintf(needle, sizeof(needle), "object %lu", (unsigned long)a);
    assert_true(log_contains(needle));
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    CK_RV rv = f->C_SignInit(h, &m, kpriv);
    assert_true(rv == CKR_DEVICE_ERROR || rv == CKR_KEY_HANDLE_INVALID);
    assert_int_equal(rv, CKR_DEVICE_ERROR);
    /* Other objects still work, and new ones can be made. */
    CK(f->C_GetAttributeValue(h, b, t, 1));
    make_data(h, "after", true, false);
    /* A find skips nothing silently: the damaged object is not returned as a match. */
    CK_ATTRIBUTE byl[] = {{CKA_LABEL, "bystander", 9}};
    assert_int_equal(count_found(h, byl, 1), 1);
    CK(f->C_CloseAllSessions(s));
}

static void test_wrong_key_and_bad_config(void **state)
{
    (void)state;
    char keyfile[160], conf2[160], line[256];
    CK_INFO info;
    CK(f->C_Initialize(NULL));
    make_token("kcv"); /* the keystore exists under the default key */
    CK(f->C_Finalize(NULL));

    snprintf(keyfile, sizeof(keyfile), "%s/other.key", tmp);
    int fd = open(keyfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "0123456789abcdef0123456789abcdef", 32), 32);
    close(fd);
    snprintf(conf2, sizeof(conf2), "%s/wrong.conf", tmp);
    snprintf(line, sizeof(line), "master_key = %s\n", keyfile);
    write_conf(conf2, line);
    setenv("P11MK_CONF", conf2, 1);
    RV(CKR_GENERAL_ERROR, f->C_Initialize(NULL));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_GetInfo(&info));
    assert_true(log_contains("check value"));
    assert_true(log_contains(keyfile));

    /* Loose key file permissions. */
    chmod(keyfile, 0644);
    RV(CKR_GENERAL_ERROR, f->C_Initialize(NULL));
    assert_true(log_contains("chmod 600"));

    /* Unknown configuration key. */
    write_conf(conf2, "colour = blue\n");
    RV(CKR_GENERAL_ERROR, f->C_Initialize(NULL));

    /* A keystore directory that cannot be created. */
    FILE *c = fopen(conf2, "w");
    fprintf(c, "keystore = /proc/p11mk-cannot-exist\nlog = %s\n", logfile);
    fclose(c);
    RV(CKR_GENERAL_ERROR, f->C_Initialize(NULL));

    setenv("P11MK_CONF", conf, 1);
    CK(f->C_Initialize(NULL));
    assert_int_not_equal(slot_of("kcv"), (CK_SLOT_ID)-1);
    CK(f->C_Finalize(NULL));
}

/* Wait for a forked child; it must have exited 0. */
static void child_succeeded(pid_t pid)
{
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_fork(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("fork");
    CK_SESSION_HANDLE h = user_session(s, true);
    make_data(h, "before-fork", true, false);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        CK_INFO info;
        CK_SESSION_HANDLE ch;
        int ok = f->C_GetInfo(&info) == CKR_CRYPTOKI_NOT_INITIALIZED;
        ok = ok && f->C_Initialize(NULL) == CKR_OK;
        ok = ok && f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &ch) == CKR_OK;
        ok = ok && f->C_Login(ch, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) == CKR_OK;
        CK_ATTRIBUTE t[] = {{CKA_LABEL, "before-fork", 11}};
        CK_OBJECT_HANDLE o;
        CK_ULONG n = 0;
        ok = ok && f->C_FindObjectsInit(ch, t, 1) == CKR_OK && f->C_FindObjects(ch, &o, 1, &n) == CKR_OK && n == 1;
        f->C_FindObjectsFinal(ch);
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_ATTRIBUTE d[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, "from-child", 10}};
        ok = ok && f->C_CreateObject(ch, d, 3, &o) == CKR_OK;
        ok = ok && f->C_Finalize(NULL) == CKR_OK;
        _exit(ok ? 0 : 1);
    }
    child_succeeded(pid);
    /* The parent is unaffected and sees the child's object. */
    CK_ATTRIBUTE t[] = {{CKA_LABEL, "from-child", 10}};
    assert_int_equal(count_found(h, t, 1), 1);
    CK(f->C_CloseAllSessions(s));
}

typedef struct {
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE priv, pub;
    int failures;
    int id;
} thr_arg;

static void *thr_main(void *p)
{
    thr_arg *a = p;
    CK_SESSION_HANDLE h;
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE sig[64];
    CK_ULONG len;
    if (f->C_OpenSession(a->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h) != CKR_OK) {
        a->failures++;
        return NULL;
    }
    for (int i = 0; i < 40; i++) {
        len = sizeof(sig);
        if (f->C_SignInit(h, &m, a->priv) != CKR_OK || f->C_Sign(h, (CK_BYTE_PTR) "msg", 3, sig, &len) != CKR_OK)
            a->failures++;
        if (f->C_VerifyInit(h, &m, a->pub) != CKR_OK || f->C_Verify(h, (CK_BYTE_PTR) "msg", 3, sig, len) != CKR_OK)
            a->failures++;
        if (i % 10 == 0) {
            char l[32];
            snprintf(l, sizeof(l), "thread-%d-%d", a->id, i);
            CK_OBJECT_CLASS cls = CKO_DATA;
            CK_OBJECT_HANDLE o;
            CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, l, strlen(l)}};
            if (f->C_CreateObject(h, t, 3, &o) != CKR_OK)
                a->failures++;
        }
    }
    f->C_CloseSession(h);
    return NULL;
}

/* Another process re-initializes the token: a login made here before ends
 * (the token's contents are someone else's now), as on a hardware token. */
static void test_reinit_elsewhere_ends_login(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("incarnation");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_SESSION_INFO si;
    make_data(h, "old-secret", true, true);
    CK(f->C_GetSessionInfo(h, &si));
    assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        CK_SESSION_HANDLE ch;
        CK_UTF8CHAR l[32];
        pad32(l, "incarnation");
        int ok = f->C_Initialize(NULL) == CKR_OK;
        ok = ok && f->C_InitToken(s, (CK_UTF8CHAR_PTR)SO, strlen(SO), l) == CKR_OK;
        ok = ok && f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &ch) == CKR_OK;
        ok = ok && f->C_Login(ch, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)) == CKR_OK;
        ok = ok && f->C_InitPIN(ch, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) == CKR_OK;
        ok = ok && f->C_Logout(ch) == CKR_OK && f->C_Login(ch, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) == CKR_OK;
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_OBJECT_HANDLE o;
        CK_ATTRIBUTE d[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1},
                            {CKA_LABEL, "new-secret", 10}};
        ok = ok && f->C_CreateObject(ch, d, 4, &o) == CKR_OK;
        ok = ok && f->C_Finalize(NULL) == CKR_OK;
        _exit(ok ? 0 : 1);
    }
    child_succeeded(pid);

    /* This process's login is gone: the new private object stays hidden. */
    CK(f->C_GetSessionInfo(h, &si));
    assert_int_equal(si.state, CKS_RW_PUBLIC_SESSION);
    CK_ATTRIBUTE t[] = {{CKA_LABEL, "new-secret", 10}};
    assert_int_equal(count_found(h, t, 1), 0);
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE d[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
    RV(CKR_USER_NOT_LOGGED_IN, f->C_CreateObject(h, d, 3, &o));
    /* With the new token's PIN it works again; the old contents are gone. */
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    assert_int_equal(count_found(h, t, 1), 1);
    CK_ATTRIBUTE old[] = {{CKA_LABEL, "old-secret", 10}};
    assert_int_equal(count_found(h, old, 1), 0);
    CK(f->C_CloseAllSessions(s));
}

static void test_threads(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("threads");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE pub, priv;
    make_ec(h, "shared", true, &pub, &priv);
    pthread_t th[8];
    thr_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (thr_arg){s, priv, pub, 0, i};
        assert_int_equal(pthread_create(&th[i], NULL, thr_main, &args[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    assert_int_equal(count_found(h, t, 1), 32);
    CK(f->C_CloseAllSessions(s));
}

/* Every function that takes a session: a bad handle is CKR_SESSION_HANDLE_INVALID;
 * NULL output pointers are CKR_ARGUMENTS_BAD; no call crashes. */
static void test_every_entry_point(void **state)
{
    (void)state;
    const CK_SESSION_HANDLE bad = 0xdead;
    CK_BYTE buf[64];
    CK_ULONG len = sizeof(buf), n;
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_ATTRIBUTE t[] = {{CKA_LABEL, buf, sizeof(buf)}};
    CK_OBJECT_HANDLE o, o2;
    CK_SESSION_INFO si;
    struct {
        const char *name;
        CK_RV rv;
    } r[] = {
        {"CloseSession", f->C_CloseSession(bad)},
        {"GetSessionInfo", f->C_GetSessionInfo(bad, &si)},
        {"GetOperationState", f->C_GetOperationState(bad, buf, &len)},
        {"SetOperationState", f->C_SetOperationState(bad, buf, len, 0, 0)},
        {"Login", f->C_Login(bad, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN))},
        {"Logout", f->C_Logout(bad)},
        {"InitPIN", f->C_InitPIN(bad, (CK_UTF8CHAR_PTR)PIN, strlen(PIN))},
        {"SetPIN", f->C_SetPIN(bad, (CK_UTF8CHAR_PTR)PIN, strlen(PIN), (CK_UTF8CHAR_PTR)PIN, strlen(PIN))},
        {"CreateObject", f->C_CreateObject(bad, t, 1, &o)},
        {"CopyObject", f->C_CopyObject(bad, 1, t, 1, &o)},
        {"DestroyObject", f->C_DestroyObject(bad, 1)},
        {"GetObjectSize", f->C_GetObjectSize(bad, 1, &n)},
        {"GetAttributeValue", f->C_GetAttributeValue(bad, 1, t, 1)},
        {"SetAttributeValue", f->C_SetAttributeValue(bad, 1, t, 1)},
        {"FindObjectsInit", f->C_FindObjectsInit(bad, t, 1)},
        {"FindObjects", f->C_FindObjects(bad, &o, 1, &n)},
        {"FindObjectsFinal", f->C_FindObjectsFinal(bad)},
        {"EncryptInit", f->C_EncryptInit(bad, &sha, 1)},
        {"Encrypt", f->C_Encrypt(bad, buf, 1, buf, &len)},
        {"EncryptUpdate", f->C_EncryptUpdate(bad, buf, 1, buf, &len)},
        {"EncryptFinal", f->C_EncryptFinal(bad, buf, &len)},
        {"DecryptInit", f->C_DecryptInit(bad, &sha, 1)},
        {"Decrypt", f->C_Decrypt(bad, buf, 1, buf, &len)},
        {"DecryptUpdate", f->C_DecryptUpdate(bad, buf, 1, buf, &len)},
        {"DecryptFinal", f->C_DecryptFinal(bad, buf, &len)},
        {"DigestInit", f->C_DigestInit(bad, &sha)},
        {"Digest", f->C_Digest(bad, buf, 1, buf, &len)},
        {"DigestUpdate", f->C_DigestUpdate(bad, buf, 1)},
        {"DigestKey", f->C_DigestKey(bad, 1)},
        {"DigestFinal", f->C_DigestFinal(bad, buf, &len)},
        {"SignInit", f->C_SignInit(bad, &sha, 1)},
        {"Sign", f->C_Sign(bad, buf, 1, buf, &len)},
        {"SignUpdate", f->C_SignUpdate(bad, buf, 1)},
        {"SignFinal", f->C_SignFinal(bad, buf, &len)},
        {"SignRecoverInit", f->C_SignRecoverInit(bad, &sha, 1)},
        {"SignRecover", f->C_SignRecover(bad, buf, 1, buf, &len)},
        {"VerifyInit", f->C_VerifyInit(bad, &sha, 1)},
        {"Verify", f->C_Verify(bad, buf, 1, buf, 1)},
        {"VerifyUpdate", f->C_VerifyUpdate(bad, buf, 1)},
        {"VerifyFinal", f->C_VerifyFinal(bad, buf, 1)},
        {"VerifyRecoverInit", f->C_VerifyRecoverInit(bad, &sha, 1)},
        {"VerifyRecover", f->C_VerifyRecover(bad, buf, 1, buf, &len)},
        {"DigestEncryptUpdate", f->C_DigestEncryptUpdate(bad, buf, 1, buf, &len)},
        {"DecryptDigestUpdate", f->C_DecryptDigestUpdate(bad, buf, 1, buf, &len)},
        {"SignEncryptUpdate", f->C_SignEncryptUpdate(bad, buf, 1, buf, &len)},
        {"DecryptVerifyUpdate", f->C_DecryptVerifyUpdate(bad, buf, 1, buf, &len)},
        {"GenerateKey", f->C_GenerateKey(bad, &sha, t, 1, &o)},
        {"GenerateKeyPair", f->C_GenerateKeyPair(bad, &sha, t, 1, t, 1, &o, &o2)},
        {"WrapKey", f->C_WrapKey(bad, &sha, 1, 2, buf, &len)},
        {"UnwrapKey", f->C_UnwrapKey(bad, &sha, 1, buf, 1, t, 1, &o)},
        {"DeriveKey", f->C_DeriveKey(bad, &sha, 1, t, 1, &o)},
        {"SeedRandom", f->C_SeedRandom(bad, buf, 1)},
        {"GenerateRandom", f->C_GenerateRandom(bad, buf, 1)},
        {"GetFunctionStatus", f->C_GetFunctionStatus(bad)},
        {"CancelFunction", f->C_CancelFunction(bad)},
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
        if (r[i].rv != CKR_SESSION_HANDLE_INVALID)
            fail_msg("C_%s with a bad session handle returned 0x%lx", r[i].name, (unsigned long)r[i].rv);
    }

    /* NULL output pointers on a valid session. */
    CK_SLOT_ID s = make_token("nulls");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_aes(h, "k", false), pub, priv;
    make_ec(h, "ec", false, &pub, &priv);
    CK_BYTE iv[16] = {0};
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, 16}, ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    RV(CKR_ARGUMENTS_BAD, f->C_GetSessionInfo(h, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_GetObjectSize(h, k, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_CopyObject(h, k, NULL, 0, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_SetAttributeValue(h, k, NULL, 1));
    RV(CKR_ARGUMENTS_BAD, f->C_GenerateKey(h, NULL, NULL, 0, &o));
    RV(CKR_ARGUMENTS_BAD, f->C_GenerateKeyPair(h, &gen, NULL, 0, NULL, 0, NULL, &o2));
    RV(CKR_ARGUMENTS_BAD, f->C_SignInit(h, NULL, priv));
    RV(CKR_ARGUMENTS_BAD, f->C_DigestInit(h, NULL));
    CK(f->C_EncryptInit(h, &cbc, k));
    RV(CKR_ARGUMENTS_BAD, f->C_Encrypt(h, buf, 16, buf, NULL));
    CK(f->C_EncryptInit(h, &cbc, k));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptUpdate(h, NULL, 16, buf, &len));
    CK(f->C_EncryptInit(h, &cbc, k));
    RV(CKR_ARGUMENTS_BAD, f->C_EncryptFinal(h, buf, NULL));
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_ARGUMENTS_BAD, f->C_SignUpdate(h, NULL, 3));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    RV(CKR_ARGUMENTS_BAD, f->C_Verify(h, buf, 3, NULL, 64));
    CK(f->C_DigestInit(h, &sha));
    RV(CKR_ARGUMENTS_BAD, f->C_Digest(h, buf, 3, buf, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_GetMechanismList(s, NULL, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_GetSlotList(CK_FALSE, NULL, NULL));
    CK_SLOT_ID ev;
    RV(CKR_ARGUMENTS_BAD, f->C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, &ev));
    RV(CKR_ARGUMENTS_BAD, f->C_InitToken(s, NULL, 4, NULL));
    CK(f->C_CloseAllSessions(s));
}

static void test_reinit_token_wipes(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("wipe");
    CK_SESSION_HANDLE h = user_session(s, true);
    make_data(h, "doomed", true, false);
    CK(f->C_CloseAllSessions(s));
    CK_UTF8CHAR l[32];
    pad32(l, "wipe");
    RV(CKR_PIN_INCORRECT, f->C_InitToken(s, (CK_UTF8CHAR_PTR) "wrong-so", 8, l));
    RV(CKR_ARGUMENTS_BAD, f->C_InitToken(s, (CK_UTF8CHAR_PTR)SO, strlen(SO), NULL));
    CK(f->C_InitToken(s, (CK_UTF8CHAR_PTR)SO, strlen(SO), l));
    CK_TOKEN_INFO ti;
    CK(f->C_GetTokenInfo(s, &ti));
    assert_false(ti.flags & CKF_USER_PIN_INITIALIZED);
    CK(f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
    CK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
    CK(f->C_InitPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    CK(f->C_Logout(h));
    CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    assert_int_equal(count_found(h, NULL, 0), 0);
    CK(f->C_CloseAllSessions(s));
}

/* An application that uses the module directly and, in the same process,
 * through p11-kit (as GnuTLS or p11-kit-proxy would load it): both see the
 * same tokens, and p11-kit finalizing its use does not pull the keystore
 * from under the direct user. */
static void test_direct_and_p11kit(void **state)
{
    (void)state;
    const char *mod = getenv("P11MK_MODULE");
    CK_SLOT_ID s = make_token("shared-proc");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE pub, priv;
    make_ec(h, "both", true, &pub, &priv);

    CK_FUNCTION_LIST *kit = p11_kit_module_load(mod ? mod : "pkcs11/p11mk-pkcs11.so", 0);
    assert_non_null(kit);
    CK(p11_kit_module_initialize(kit));
    CK_SLOT_ID slots[64]; /* every test of this file adds a token */
    CK_ULONG n = 64;
    CK(kit->C_GetSlotList(CK_TRUE, slots, &n));
    bool seen = false;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        CK(kit->C_GetTokenInfo(slots[i], &ti));
        seen = seen || memcmp(ti.label, "shared-proc ", 12) == 0;
    }
    assert_true(seen);
    /* Sign through p11-kit with the key made directly. */
    CK_SESSION_HANDLE kh;
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE sig[64];
    CK_ULONG len = sizeof(sig);
    CK(kit->C_OpenSession(s, CKF_SERIAL_SESSION, NULL, NULL, &kh));
    CK_RV rv = kit->C_Login(kh, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN));
    assert_true(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
    CK(kit->C_SignInit(kh, &m, priv));
    CK(kit->C_Sign(kh, (CK_BYTE_PTR) "both", 4, sig, &len));
    CK(kit->C_CloseSession(kh));
    CK(p11_kit_module_finalize(kit));
    p11_kit_module_release(kit);

    /* The direct user carries on. */
    CK(f->C_VerifyInit(h, &m, pub));
    CK(f->C_Verify(h, (CK_BYTE_PTR) "both", 4, sig, len));
    CK(f->C_CloseAllSessions(s));
}

static CK_OBJECT_HANDLE aes_key(CK_SESSION_HANDLE h, bool extractable, bool trusted_only)
{
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_OBJECT_HANDLE k;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE_LEN, &len, sizeof(len)},         {CKA_EXTRACTABLE, extractable ? &yes : &no, 1},
        {CKA_WRAP_WITH_TRUSTED, trusted_only ? &yes : &no, 1}, {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},
    };
    CK(f->C_GenerateKey(h, &m, t, 5, &k));
    return k;
}

/* Encrypt with one key, decrypt with the other: the same key material. */
static inline void same_aes(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE a, CK_OBJECT_HANDLE b)
{
    CK_BYTE iv[16] = {7}, ct[64], pt[64];
    CK_MECHANISM m = {CKM_AES_CBC_PAD, iv, 16};
    CK_ULONG cl = sizeof(ct), pl = sizeof(pt);
    CK(f->C_EncryptInit(h, &m, a));
    CK(f->C_Encrypt(h, (CK_BYTE_PTR) "same key material", 17, ct, &cl));
    CK(f->C_DecryptInit(h, &m, b));
    CK(f->C_Decrypt(h, ct, cl, pt, &pl));
    assert_int_equal(pl, 17);
    assert_memory_equal(pt, "same key material", 17);
}

static void test_wrap_unwrap_derive(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("wrap");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE kek = aes_key(h, false, false), target = aes_key(h, true, false), locked = aes_key(h, false, false);
    CK_OBJECT_HANDLE unwrapped, pub, priv;
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY, pcls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE aes = CKK_AES, ec = CKK_EC;
    CK_BYTE blob[512];
    CK_ULONG len = 0;
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0}, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};

    /* AES key wrap of an AES key, size query first. */
    CK(f->C_WrapKey(h, &kw, kek, target, NULL, &len));
    assert_int_equal(len, 40);
    len = 10;
    RV(CKR_BUFFER_TOO_SMALL, f->C_WrapKey(h, &kw, kek, target, blob, &len));
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &kw, kek, target, blob, &len));
    assert_int_equal(len, 40);
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK(f->C_UnwrapKey(h, &kw, kek, blob, len, ut, 4, &unwrapped));
    same_aes(h, target, unwrapped);
    CK_BBOOL local = CK_TRUE;
    CK_ATTRIBUTE lt[] = {{CKA_LOCAL, &local, 1}};
    CK(f->C_GetAttributeValue(h, unwrapped, lt, 1));
    assert_false(local);

    /* Refusals. */
    RV(CKR_KEY_UNEXTRACTABLE, f->C_WrapKey(h, &kw, kek, locked, blob, &len));
    CK_OBJECT_HANDLE trusted_only = aes_key(h, true, true);
    len = sizeof(blob);
    RV(CKR_KEY_NOT_WRAPPABLE, f->C_WrapKey(h, &kw, kek, trusted_only, blob, &len));
    RV(CKR_WRAPPING_KEY_HANDLE_INVALID, f->C_WrapKey(h, &kw, 0x7777, target, blob, &len));
    RV(CKR_KEY_HANDLE_INVALID, f->C_WrapKey(h, &kw, kek, 0x7777, blob, &len));
    RV(CKR_ARGUMENTS_BAD, f->C_WrapKey(h, &kw, kek, target, blob, NULL));
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    RV(CKR_MECHANISM_INVALID, f->C_WrapKey(h, &sha, kek, target, blob, &len));
    CK_ATTRIBUTE nowrap[] = {{CKA_WRAP, &no, 1}};
    CK(f->C_SetAttributeValue(h, locked, nowrap, 1));
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_WrapKey(h, &kw, locked, target, blob, &len));
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &kw, kek, target, blob, &len));
    blob[5] ^= 1;
    RV(CKR_WRAPPED_KEY_INVALID, f->C_UnwrapKey(h, &kw, kek, blob, len, ut, 4, &unwrapped));
    RV(CKR_WRAPPED_KEY_LEN_RANGE, f->C_UnwrapKey(h, &kw, kek, blob, 13, ut, 4, &unwrapped));
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_UnwrapKey(h, &kw, kek, blob, len, ut + 1, 3, &unwrapped));
    RV(CKR_UNWRAPPING_KEY_HANDLE_INVALID, f->C_UnwrapKey(h, &kw, 0x7777, blob, len, ut, 4, &unwrapped));

    /* An EC private key, extractable, through AES key wrap with padding. */
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_SIGN, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_DERIVE, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 3, &pub, &priv));
    len = sizeof(blob);
    RV(CKR_KEY_SIZE_RANGE, f->C_WrapKey(h, &kw, kek, priv, blob, &len)); /* PKCS#8 is not 8-byte aligned */
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &kwp, kek, priv, blob, &len));
    CK_ATTRIBUTE upt[] = {{CKA_CLASS, &pcls, sizeof(pcls)}, {CKA_KEY_TYPE, &ec, sizeof(ec)}, {CKA_SIGN, &yes, 1}};
    CK_OBJECT_HANDLE priv2;
    CK(f->C_UnwrapKey(h, &kwp, kek, blob, len, upt, 3, &priv2));
    CK_MECHANISM ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE sig[64];
    CK_ULONG sl = sizeof(sig);
    CK(f->C_SignInit(h, &ecdsa, priv2));
    CK(f->C_Sign(h, (CK_BYTE_PTR) "unwrapped", 9, sig, &sl));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_Verify(h, (CK_BYTE_PTR) "unwrapped", 9, sig, sl));
    CK_ATTRIBUTE wrongkt[] = {{CKA_CLASS, &pcls, sizeof(pcls)}, {CKA_KEY_TYPE, &(CK_KEY_TYPE){CKK_RSA}, sizeof(CK_KEY_TYPE)}};
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_UnwrapKey(h, &kwp, kek, blob, len, wrongkt, 2, &priv2));

    /* RSA OAEP wrap of an AES key. */
    CK_OBJECT_HANDLE rpub, rpriv;
    CK_MECHANISM rgen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE rpt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_WRAP, &yes, 1}};
    CK_ATTRIBUTE rkt[] = {{CKA_UNWRAP, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &rgen, rpt, 2, rkt, 1, &rpub, &rpriv));
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &oaep, rpub, target, blob, &len));
    assert_int_equal(len, 256);
    CK(f->C_UnwrapKey(h, &oaep, rpriv, blob, len, ut, 4, &unwrapped));
    same_aes(h, target, unwrapped);
    /* OAEP parameters are checked before anything, size queries included (found by fuzz_pkcs11). */
    CK_MECHANISM oaep_short = {CKM_RSA_PKCS_OAEP, &op, 0};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_WrapKey(h, &oaep_short, rpub, target, NULL, &len));
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_UnwrapKey(h, &oaep_short, rpriv, blob, 256, ut, 4, &unwrapped));
    CK_RSA_PKCS_OAEP_PARAMS sha3 = {0x2B0UL /* CKM_SHA3_256 */, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep_sha3 = {CKM_RSA_PKCS_OAEP, &sha3, sizeof(sha3)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_WrapKey(h, &oaep_sha3, rpub, target, NULL, &len));
    /* A label: unwrapping needs the same one. */
    CK_RSA_PKCS_OAEP_PARAMS lab = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, (CK_BYTE_PTR) "label", 5};
    CK_MECHANISM oaep_lab = {CKM_RSA_PKCS_OAEP, &lab, sizeof(lab)};
    len = sizeof(blob);
    CK(f->C_WrapKey(h, &oaep_lab, rpub, target, blob, &len));
    RV(CKR_WRAPPED_KEY_INVALID, f->C_UnwrapKey(h, &oaep, rpriv, blob, len, ut, 4, &unwrapped));
    CK(f->C_UnwrapKey(h, &oaep_lab, rpriv, blob, len, ut, 4, &unwrapped));
    same_aes(h, target, unwrapped);
    RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, f->C_WrapKey(h, &oaep, kek, target, blob, &len));
    len = sizeof(blob);
    RV(CKR_KEY_NOT_WRAPPABLE, f->C_WrapKey(h, &oaep, rpub, priv, blob, &len));

    /* ECDH: both sides derive the same key. */
    CK_OBJECT_HANDLE pub2, privb;
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 3, &pub2, &privb));
    CK_BYTE pa[80], pb[80];
    CK_ATTRIBUTE ga[] = {{CKA_EC_POINT, pa, sizeof(pa)}}, gb[] = {{CKA_EC_POINT, pb, sizeof(pb)}};
    CK(f->C_GetAttributeValue(h, pub, ga, 1));
    CK(f->C_GetAttributeValue(h, pub2, gb, 1));
    CK_ULONG vlen = 32;
    CK_ATTRIBUTE dt[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK_ULONG kdfs[] = {CKD_NULL, CKD_SHA256_KDF};
    for (int i = 0; i < 2; i++) {
        CK_ECDH1_DERIVE_PARAMS da = {kdfs[i], 0, NULL, gb[0].ulValueLen, pb};
        CK_ECDH1_DERIVE_PARAMS db = {kdfs[i], 0, NULL, ga[0].ulValueLen, pa};
        CK_MECHANISM ma = {CKM_ECDH1_DERIVE, &da, sizeof(da)}, mb = {CKM_ECDH1_DERIVE, &db, sizeof(db)};
        CK_OBJECT_HANDLE ka, kb;
        CK(f->C_DeriveKey(h, &ma, priv, dt, 4, &ka));
        CK(f->C_DeriveKey(h, &mb, privb, dt, 4, &kb));
        same_aes(h, ka, kb);
    }
    CK_ECDH1_DERIVE_PARAMS bad = {CKD_NULL, 0, NULL, 0, NULL};
    CK_MECHANISM mbad = {CKM_ECDH1_DERIVE, &bad, sizeof(bad)};
    CK_OBJECT_HANDLE kx;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &mbad, priv, dt, 4, &kx));
    CK_ECDH1_DERIVE_PARAMS offcurve = {CKD_NULL, 0, NULL, 65, pb + 2};
    CK_BYTE junk[65];
    memset(junk, 0x11, sizeof(junk));
    junk[0] = 0x04;
    offcurve.pPublicData = junk;
    CK_MECHANISM moff = {CKM_ECDH1_DERIVE, &offcurve, sizeof(offcurve)};
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &moff, priv, dt, 4, &kx));
    CK_ECDH1_DERIVE_PARAMS ok1 = {CKD_NULL, 0, NULL, gb[0].ulValueLen, pb};
    CK_MECHANISM mok = {CKM_ECDH1_DERIVE, &ok1, sizeof(ok1)};
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_DeriveKey(h, &mok, priv2, dt, 4, &kx)); /* no CKA_DERIVE */
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, f->C_DeriveKey(h, &mok, target, dt, 4, &kx)); /* AES: no CKA_DERIVE */
    CK(f->C_CloseAllSessions(s));
}

/* CKA_WRAP_TEMPLATE limits what a wrapping key wraps; CKA_UNWRAP_TEMPLATE
 * joins every template given to C_UnwrapKey with that key. */
static void test_wrap_templates(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("templates");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_ULONG len32 = 32, len16 = 16;
    CK_KEY_TYPE aes = CKK_AES;
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
    CK_ATTRIBUTE wtmpl[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &len32, sizeof(len32)}};
    CK_ATTRIBUTE utmpl[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &no, 1}};
    CK_ATTRIBUTE kt[] = {
        {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1},
        {CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}, {CKA_UNWRAP_TEMPLATE, utmpl, sizeof(utmpl)},
    };
    CK_OBJECT_HANDLE kek, t32, t16, un;
    CK(f->C_GenerateKey(h, &gen, kt, 5, &kek));
    t32 = aes_key(h, true, false);
    CK_ATTRIBUTE st[] = {{CKA_VALUE_LEN, &len16, sizeof(len16)}, {CKA_EXTRACTABLE, &yes, 1}};
    CK(f->C_GenerateKey(h, &gen, st, 2, &t16));

    /* Reading the templates back: the count, then the types and lengths, then the values. */
    CK_ATTRIBUTE q[] = {{CKA_WRAP_TEMPLATE, NULL, 0}};
    CK(f->C_GetAttributeValue(h, kek, q, 1));
    assert_int_equal(q[0].ulValueLen, 2 * sizeof(CK_ATTRIBUTE));
    CK_ATTRIBUTE back[2] = {{0, NULL, 0}, {0, NULL, 0}};
    q[0].pValue = back;
    CK(f->C_GetAttributeValue(h, kek, q, 1));
    CK_KEY_TYPE kt_back = 0;
    CK_ULONG len_back = 0;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(back[i].ulValueLen, sizeof(CK_ULONG));
        back[i].pValue = back[i].type == CKA_KEY_TYPE ? (void *)&kt_back : (void *)&len_back;
    }
    CK(f->C_GetAttributeValue(h, kek, q, 1));
    assert_int_equal(kt_back, CKK_AES);
    assert_int_equal(len_back, 32);
    q[0].ulValueLen = sizeof(CK_ATTRIBUTE); /* room for one of two */
    RV(CKR_BUFFER_TOO_SMALL, f->C_GetAttributeValue(h, kek, q, 1));
    CK_ATTRIBUTE ro[] = {{CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(h, kek, ro, 1));

    /* Wrapping: the 32-byte AES key matches, the 16-byte one does not. */
    CK_BYTE blob[64];
    CK_ULONG bl = sizeof(blob);
    RV(CKR_KEY_NOT_WRAPPABLE, f->C_WrapKey(h, &kw, kek, t16, blob, &bl));
    bl = sizeof(blob);
    CK(f->C_WrapKey(h, &kw, kek, t32, blob, &bl));

    /* Unwrapping: the key gets the unwrap template's attributes... */
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    CK(f->C_UnwrapKey(h, &kw, kek, blob, bl, ut, 4, &un));
    same_aes(h, t32, un);
    CK_BBOOL sens = CK_FALSE, extr = CK_TRUE;
    CK_ATTRIBUTE g[] = {{CKA_SENSITIVE, &sens, 1}, {CKA_EXTRACTABLE, &extr, 1}};
    CK(f->C_GetAttributeValue(h, un, g, 2));
    assert_true(sens);
    assert_false(extr);
    /* ...the same value given again is fine, a conflicting one is refused. */
    CK_ATTRIBUTE agree[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_SENSITIVE, &yes, 1}};
    CK(f->C_UnwrapKey(h, &kw, kek, blob, bl, agree, 3, &un));
    CK_ATTRIBUTE clash[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_EXTRACTABLE, &yes, 1}};
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_UnwrapKey(h, &kw, kek, blob, bl, clash, 3, &un));
    CK_ATTRIBUTE nullval[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_SENSITIVE, NULL, 1}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_UnwrapKey(h, &kw, kek, blob, bl, nullval, 3, &un)); /* found by fuzz_pkcs11 */

    /* Bad templates at creation: not an array, nested templates, a bad boolean; and on the wrong class. */
    CK_ATTRIBUTE odd[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl) - 1}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKey(h, &gen, odd, 2, &un));
    CK_ATTRIBUTE nest[] = {{CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}};
    CK_ATTRIBUTE nested[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_WRAP_TEMPLATE, nest, sizeof(nest)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKey(h, &gen, nested, 2, &un));
    CK_ULONG wide = 1;
    CK_ATTRIBUTE badbool[] = {{CKA_SENSITIVE, &wide, sizeof(wide)}};
    CK_ATTRIBUTE bb[] = {{CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_UNWRAP_TEMPLATE, badbool, sizeof(badbool)}};
    RV(CKR_ATTRIBUTE_VALUE_INVALID, f->C_GenerateKey(h, &gen, bb, 2, &un));
    CK_OBJECT_CLASS dcls = CKO_DATA;
    CK_ATTRIBUTE dt[] = {{CKA_CLASS, &dcls, sizeof(dcls)}, {CKA_WRAP_TEMPLATE, wtmpl, sizeof(wtmpl)}};
    RV(CKR_ATTRIBUTE_TYPE_INVALID, f->C_CreateObject(h, dt, 2, &un));
    CK(f->C_CloseAllSessions(s));
}

/* CKA_ALWAYS_AUTHENTICATE: every sign or decrypt with the key needs
 * C_Login(CKU_CONTEXT_SPECIFIC) between its init and its first use. */
static void test_always_authenticate(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("always-auth");
    CK_SESSION_HANDLE h = user_session(s, true);
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, ecdsa = {CKM_ECDSA_SHA256, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_ALWAYS_AUTHENTICATE, &yes, 1}};
    CK_OBJECT_HANDLE pub, priv, plain_pub, plain_priv;
    CK_BYTE sig[64];
    CK_ULONG sl = sizeof(sig);
    const CK_UTF8CHAR_PTR pin = (CK_UTF8CHAR_PTR)PIN;

    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 3, &pub, &priv));
    CK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 2, &plain_pub, &plain_priv));
    CK_BBOOL aa = CK_FALSE;
    CK_ATTRIBUTE q[] = {{CKA_ALWAYS_AUTHENTICATE, &aa, 1}};
    CK(f->C_GetAttributeValue(h, priv, q, 1));
    assert_true(aa);

    /* No operation waiting: nothing to authenticate. */
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_SignInit(h, &ecdsa, plain_priv));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));

    /* Using the key without the context-specific login ends the operation. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));
    RV(CKR_OPERATION_NOT_INITIALIZED, f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));

    /* A wrong PIN leaves it waiting; the right one lets one signature through. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_PIN_INCORRECT, f->C_Login(h, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR) "wrong-pin", 9));
    RV(CKR_ARGUMENTS_BAD, f->C_Login(h, CKU_CONTEXT_SPECIFIC, NULL, 4));
    CK(f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    sl = 0;
    CK(f->C_Sign(h, (CK_BYTE_PTR) "m", 1, NULL, &sl)); /* the size query keeps the operation */
    CK(f->C_Sign(h, (CK_BYTE_PTR) "m", 1, sig, &sl));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_Verify(h, (CK_BYTE_PTR) "m", 1, sig, sl));
    CK_TOKEN_INFO ti;
    CK(f->C_GetTokenInfo(s, &ti));
    assert_false(ti.flags & CKF_USER_PIN_COUNT_LOW); /* the right PIN reset the counter */

    /* The next use asks again; multi-part works the same. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_SignUpdate(h, (CK_BYTE_PTR) "m", 1));
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_SignUpdate(h, (CK_BYTE_PTR) "m", 1));
    sl = sizeof(sig);
    CK(f->C_SignFinal(h, sig, &sl));
    CK(f->C_VerifyInit(h, &ecdsa, pub));
    CK(f->C_Verify(h, (CK_BYTE_PTR) "m", 1, sig, sl));

    /* Decrypt with an RSA key that always authenticates. */
    CK_OBJECT_HANDLE rpub, rpriv;
    CK_MECHANISM rgen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0}, pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE rpt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_ENCRYPT, &yes, 1}};
    CK_ATTRIBUTE rkt[] = {{CKA_DECRYPT, &yes, 1}, {CKA_ALWAYS_AUTHENTICATE, &yes, 1}};
    CK(f->C_GenerateKeyPair(h, &rgen, rpt, 2, rkt, 2, &rpub, &rpriv));
    CK_BYTE ct[256], out[256];
    CK_ULONG cl = sizeof(ct), ol = sizeof(out);
    CK(f->C_EncryptInit(h, &pkcs, rpub));
    CK(f->C_Encrypt(h, (CK_BYTE_PTR) "secret", 6, ct, &cl));
    CK(f->C_DecryptInit(h, &pkcs, rpriv));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Decrypt(h, ct, cl, out, &ol));
    CK(f->C_DecryptInit(h, &pkcs, rpriv));
    CK(f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    ol = sizeof(out);
    CK(f->C_Decrypt(h, ct, cl, out, &ol));
    assert_int_equal(ol, 6);
    assert_memory_equal(out, "secret", 6);

    /* Logged out: the context-specific login is refused. */
    CK(f->C_SignInit(h, &ecdsa, priv));
    CK(f->C_Logout(h));
    RV(CKR_USER_NOT_LOGGED_IN, f->C_Login(h, CKU_CONTEXT_SPECIFIC, pin, strlen(PIN)));
    CK(f->C_CloseAllSessions(s));
}

/* Every mechanism the token lists, driven through the module the same way:
 * size query, short buffer (the operation stays), the real call, the
 * inverse operation, a corrupted signature or ciphertext, a wrong key type. */
typedef struct {
    CK_OBJECT_HANDLE aes, des3, chacha, hmac, rsa_pub, rsa_priv, ec_pub, ec_priv, ed_pub, ed_priv;
} key_set;

static CK_MECHANISM_TYPE pss_hash(CK_MECHANISM_TYPE m)
{
    switch (m) {
    case CKM_SHA1_RSA_PKCS_PSS: return CKM_SHA_1;
    case CKM_SHA224_RSA_PKCS_PSS: return CKM_SHA224;
    case CKM_SHA384_RSA_PKCS_PSS: return CKM_SHA384;
    case CKM_SHA512_RSA_PKCS_PSS: return CKM_SHA512;
    default: return CKM_SHA256;
    }
}

static void sign_keys(const key_set *k, CK_MECHANISM_TYPE m, CK_OBJECT_HANDLE *sk, CK_OBJECT_HANDLE *vk,
                      CK_OBJECT_HANDLE *wrong)
{
    if (m == CKM_AES_CMAC || m == CKM_AES_CMAC_GENERAL) {
        *sk = *vk = k->aes;
        *wrong = k->ec_priv;
    } else if (m == CKM_DES3_CMAC || m == CKM_DES3_CMAC_GENERAL) {
        *sk = *vk = k->des3;
        *wrong = k->aes;
    } else if (m == CKM_EDDSA) {
        *sk = k->ed_priv, *vk = k->ed_pub, *wrong = k->ec_priv;
    } else if (m >= CKM_ECDSA && m <= CKM_ECDSA_SHA512) {
        *sk = k->ec_priv, *vk = k->ec_pub, *wrong = k->rsa_priv;
    } else if (m == CKM_SHA_1_HMAC || m == CKM_SHA224_HMAC || m == CKM_SHA256_HMAC || m == CKM_SHA384_HMAC ||
               m == CKM_SHA512_HMAC || (m >= 0x2B1 && m <= 0x2D1) || m == CKM_SHA_1_HMAC_GENERAL ||
               m == CKM_SHA224_HMAC_GENERAL || m == CKM_SHA256_HMAC_GENERAL || m == CKM_SHA384_HMAC_GENERAL ||
               m == CKM_SHA512_HMAC_GENERAL) {
        *sk = *vk = k->hmac;
        *wrong = k->aes;
    } else {
        *sk = k->rsa_priv, *vk = k->rsa_pub, *wrong = k->ec_priv;
    }
}

static void test_mechanism_matrix(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("matrix");
    CK_SESSION_HANDLE h = user_session(s, true);
    key_set k;
    CK_MECHANISM_TYPE mechs[128];
    CK_ULONG nm = 128;
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const CK_BYTE ed[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
    CK_ULONG bits = 2048, len32 = 32;
    CK_MECHANISM g;

    k.aes = make_aes(h, "m-aes", false);
    CK_ATTRIBUTE su[] = {{CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE sa[] = {{CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_VALUE_LEN, &len32, sizeof(len32)}};
    CK_ATTRIBUTE_PTR aset = su;
    (void)aset;
    CK(f->C_SetAttributeValue(h, k.aes, su, 2));
    g = (CK_MECHANISM){CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK(f->C_GenerateKey(h, &g, sa, 3, &k.hmac));
    CK_ATTRIBUTE du[] = {{CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    g = (CK_MECHANISM){CKM_DES3_KEY_GEN, NULL, 0};
    CK(f->C_GenerateKey(h, &g, du, 4, &k.des3));
    g = (CK_MECHANISM){TEST_CKM_CHACHA20_KEY_GEN, NULL, 0};
    CK(f->C_GenerateKey(h, &g, du + 2, 2, &k.chacha));
    CK_ATTRIBUTE rp[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_VERIFY, &yes, 1}, {CKA_ENCRYPT, &yes, 1}};
    CK_ATTRIBUTE rk[] = {{CKA_SIGN, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    g = (CK_MECHANISM){CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK(f->C_GenerateKeyPair(h, &g, rp, 3, rk, 2, &k.rsa_pub, &k.rsa_priv));
    CK_ATTRIBUTE ep[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE ek[] = {{CKA_SIGN, &yes, 1}};
    g = (CK_MECHANISM){CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK(f->C_GenerateKeyPair(h, &g, ep, 2, ek, 1, &k.ec_pub, &k.ec_priv));
    CK_ATTRIBUTE dp[] = {{CKA_EC_PARAMS, (void *)ed, sizeof(ed)}, {CKA_VERIFY, &yes, 1}};
    g = (CK_MECHANISM){CKM_EC_EDWARDS_KEY_PAIR_GEN, NULL, 0};
    CK(f->C_GenerateKeyPair(h, &g, dp, 2, ek, 1, &k.ed_pub, &k.ed_priv));

    CK(f->C_GetMechanismList(s, mechs, &nm));
    int signed_n = 0, crypted_n = 0, digested_n = 0;
    for (CK_ULONG i = 0; i < nm; i++) {
        CK_MECHANISM_INFO mi;
        CK_MECHANISM_TYPE mt = mechs[i];
        CK(f->C_GetMechanismInfo(s, mt, &mi));
        CK_BYTE data[256], out[1024], back[1024];
        CK_ULONG dlen = 32, olen, blen;
        memset(data, 0x5a, sizeof(data));
        CK_RSA_PKCS_PSS_PARAMS pss = {pss_hash(mt), CKG_MGF1_SHA256, 20};
        CK_MECHANISM m = {mt, NULL, 0};
        CK_ULONG mac_len = mt == CKM_DES3_CMAC_GENERAL ? 6 : 10; /* below the MAC's full length */
        if (mt == CKM_AES_CMAC_GENERAL || mt == CKM_SHA_1_HMAC_GENERAL || mt == CKM_SHA224_HMAC_GENERAL ||
            mt == CKM_SHA256_HMAC_GENERAL || mt == CKM_SHA384_HMAC_GENERAL || mt == CKM_SHA512_HMAC_GENERAL ||
            mt == CKM_DES3_CMAC_GENERAL) {
            m.pParameter = &mac_len; /* CK_MAC_GENERAL_PARAMS: the MAC's length */
            m.ulParameterLen = sizeof(mac_len);
        }
        if (mt == CKM_RSA_PKCS_PSS || (mt >= CKM_SHA256_RSA_PKCS_PSS && mt <= CKM_SHA512_RSA_PKCS_PSS) ||
            mt == CKM_SHA1_RSA_PKCS_PSS || mt == CKM_SHA224_RSA_PKCS_PSS) {
            m.pParameter = &pss;
            m.ulParameterLen = sizeof(pss);
        }

        if (mi.flags & CKF_SIGN) {
            CK_OBJECT_HANDLE sk, vk, wrong;
            sign_keys(&k, mt, &sk, &vk, &wrong);
            if (mt == CKM_RSA_X_509)
                data[0] = 0; /* below the modulus */
            CK_RV irv = f->C_SignInit(h, &m, sk);
            if (irv != CKR_OK)
                fail_msg("C_SignInit with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)irv);
            olen = 0;
            CK(f->C_Sign(h, data, dlen, NULL, &olen));
            if (m.pParameter == &mac_len)
                assert_int_equal(olen, mac_len);
            CK_ULONG need = olen;
            olen = need - 1;
            RV(CKR_BUFFER_TOO_SMALL, f->C_Sign(h, data, dlen, out, &olen));
            olen = sizeof(out);
            CK_RV rv = f->C_Sign(h, data, dlen, out, &olen);
            if (rv != CKR_OK)
                fail_msg("C_Sign with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            CK(f->C_VerifyInit(h, &m, vk));
            rv = f->C_Verify(h, data, dlen, out, olen);
            if (rv != CKR_OK)
                fail_msg("C_Verify with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            out[olen / 2] ^= 0x40;
            CK(f->C_VerifyInit(h, &m, vk));
            rv = f->C_Verify(h, data, dlen, out, olen);
            if (rv != CKR_SIGNATURE_INVALID)
                fail_msg("corrupted signature, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            rv = f->C_SignInit(h, &m, wrong);
            if (rv != CKR_KEY_TYPE_INCONSISTENT)
                fail_msg("wrong key type, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            signed_n++;
        }
        if (mi.flags & CKF_ENCRYPT) {
            CK_BYTE iv[16] = {3};
            CK_AES_CTR_PARAMS ctr = {128, {9}};
            CK_GCM_PARAMS gcm = {iv, 12, 96, NULL, 0, 128};
            test_ccm_params ccm = {dlen, iv, 12, NULL, 0, 16};
            test_chacha_params chacha = {iv, 12, NULL, 0};
            CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
            CK_OBJECT_HANDLE ek2 = k.aes, dk = k.aes, wrong = k.rsa_pub;
            if (mt == CKM_AES_CBC || mt == CKM_AES_CBC_PAD)
                m.pParameter = iv, m.ulParameterLen = 16;
            else if (mt == CKM_DES3_CBC || mt == CKM_DES3_CBC_PAD)
                m.pParameter = iv, m.ulParameterLen = 8;
            else if (mt == CKM_AES_CTR)
                m.pParameter = &ctr, m.ulParameterLen = sizeof(ctr);
            else if (mt == CKM_AES_GCM)
                m.pParameter = &gcm, m.ulParameterLen = sizeof(gcm);
            else if (mt == CKM_AES_CCM)
                m.pParameter = &ccm, m.ulParameterLen = sizeof(ccm);
            else if (mt == TEST_CKM_CHACHA20_POLY1305)
                m.pParameter = &chacha, m.ulParameterLen = sizeof(chacha);
            else if (mt == CKM_RSA_PKCS_OAEP)
                m.pParameter = &oaep, m.ulParameterLen = sizeof(oaep);
            if (mt == CKM_DES3_ECB || mt == CKM_DES3_CBC || mt == CKM_DES3_CBC_PAD)
                ek2 = dk = k.des3, wrong = k.aes;
            if (mt == TEST_CKM_CHACHA20_POLY1305)
                ek2 = dk = k.chacha, wrong = k.aes;
            if (mt == CKM_RSA_PKCS || mt == CKM_RSA_X_509 || mt == CKM_RSA_PKCS_OAEP) {
                ek2 = k.rsa_pub, dk = k.rsa_priv, wrong = k.aes;
                if (mt == CKM_RSA_X_509) {
                    dlen = 256;
                    data[0] = 0;
                }
            }
            CK(f->C_EncryptInit(h, &m, ek2));
            olen = 0;
            CK(f->C_Encrypt(h, data, dlen, NULL, &olen));
            CK_ULONG need = olen;
            olen = need - 1;
            RV(CKR_BUFFER_TOO_SMALL, f->C_Encrypt(h, data, dlen, out, &olen));
            olen = sizeof(out);
            CK(f->C_Encrypt(h, data, dlen, out, &olen));
            CK(f->C_DecryptInit(h, &m, dk));
            blen = sizeof(back);
            CK_RV rv = f->C_Decrypt(h, out, olen, back, &blen);
            if (rv != CKR_OK || blen != dlen || memcmp(back, data, dlen) != 0)
                fail_msg("round trip with mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            if (mt == CKM_AES_GCM || mt == CKM_AES_CCM || mt == TEST_CKM_CHACHA20_POLY1305 || mt == CKM_RSA_PKCS_OAEP ||
                mt == CKM_RSA_PKCS) {
                out[olen - 1] ^= 1;
                CK(f->C_DecryptInit(h, &m, dk));
                blen = sizeof(back);
                rv = f->C_Decrypt(h, out, olen, back, &blen);
                if (rv != CKR_ENCRYPTED_DATA_INVALID)
                    fail_msg("tampered ciphertext, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            }
            rv = f->C_EncryptInit(h, &m, wrong);
            if (rv != CKR_KEY_TYPE_INCONSISTENT)
                fail_msg("wrong key type for encryption, mechanism 0x%lx: 0x%lx", (unsigned long)mt, (unsigned long)rv);
            crypted_n++;
        }
        if (mi.flags & CKF_DIGEST) {
            CK_BYTE d1[64], d2[64];
            CK_ULONG l1 = sizeof(d1), l2 = sizeof(d2);
            CK(f->C_DigestInit(h, &m));
            CK(f->C_Digest(h, data, 100, d1, &l1));
            CK(f->C_DigestInit(h, &m));
            CK(f->C_DigestUpdate(h, data, 37));
            CK(f->C_DigestUpdate(h, data + 37, 63));
            CK(f->C_DigestFinal(h, d2, &l2));
            assert_int_equal(l1, l2);
            assert_memory_equal(d1, d2, l1);
            digested_n++;
        }
    }
    assert_true(signed_n >= 25);
    assert_true(crypted_n >= 10);
    assert_true(digested_n >= 8);
    CK(f->C_CloseAllSessions(s));
}

/* X25519 and X448 (Montgomery) key pairs, and ECDH with them. */
static void test_montgomery_derive(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("x25519");
    CK_SESSION_HANDLE h = user_session(s, true);
    static const CK_BYTE x25519[] = {0x06, 0x03, 0x2b, 0x65, 0x6e};
    static const CK_BYTE x448_name[] = {0x13, 0x08, 'c', 'u', 'r', 'v', 'e', '4', '4', '8'};
    struct {
        const CK_BYTE *p;
        CK_ULONG l;
        CK_ULONG rawlen;
    } curves[] = {{x25519, sizeof(x25519), 32}, {x448_name, sizeof(x448_name), 56}};
    CK_MECHANISM gen = {0x1056 /* CKM_EC_MONTGOMERY_KEY_PAIR_GEN */, NULL, 0};
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG vlen = 32;
    CK_ATTRIBUTE dt[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
                         {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
    for (int c = 0; c < 2; c++) {
        CK_OBJECT_HANDLE pa, ka, pb, kb, da, db;
        CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)curves[c].p, curves[c].l}};
        CK_ATTRIBUTE kt[] = {{CKA_DERIVE, &yes, 1}};
        CK(f->C_GenerateKeyPair(h, &gen, pt, 1, kt, 1, &pa, &ka));
        CK(f->C_GenerateKeyPair(h, &gen, pt, 1, kt, 1, &pb, &kb));
        CK_BYTE qa[80], qb[80];
        CK_ATTRIBUTE ga[] = {{CKA_EC_POINT, qa, sizeof(qa)}}, gb[] = {{CKA_EC_POINT, qb, sizeof(qb)}};
        CK(f->C_GetAttributeValue(h, pa, ga, 1));
        CK(f->C_GetAttributeValue(h, pb, gb, 1));
        assert_int_equal(ga[0].ulValueLen, curves[c].rawlen + 2); /* DER OCTET STRING */
        /* One side gives the DER point, the other the raw one: both are accepted. */
        CK_ECDH1_DERIVE_PARAMS pa_ = {CKD_SHA256_KDF, 0, NULL, gb[0].ulValueLen, qb};
        CK_ECDH1_DERIVE_PARAMS pb_ = {CKD_SHA256_KDF, 0, NULL, curves[c].rawlen, qa + 2};
        CK_MECHANISM ma = {CKM_ECDH1_DERIVE, &pa_, sizeof(pa_)}, mb = {CKM_ECDH1_DERIVE, &pb_, sizeof(pb_)};
        CK(f->C_DeriveKey(h, &ma, ka, dt, 4, &da));
        CK(f->C_DeriveKey(h, &mb, kb, dt, 4, &db));
        same_aes(h, da, db);
        /* The Montgomery mechanism makes no Weierstrass or Edwards keys. */
        static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        CK_ATTRIBUTE bad[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}};
        CK_OBJECT_HANDLE x1, x2;
        RV(CKR_CURVE_NOT_SUPPORTED, f->C_GenerateKeyPair(h, &gen, bad, 1, kt, 1, &x1, &x2));
    }
    CK(f->C_CloseAllSessions(s));
}

/* HKDF (RFC 5869, test case 1) through C_DeriveKey. */
static void test_hkdf(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("hkdf");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_BYTE ikm[22], salt[13], info[10], okm[42];
    static const CK_BYTE want[] = {0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
                                   0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
                                   0xec, 0xc4, 0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65};
    test_hkdf_params p = test_rfc5869_case1(ikm, salt, info);
    CK_ATTRIBUTE bt[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &gen, sizeof(gen)},
                         {CKA_VALUE, ikm, sizeof(ikm)}, {CKA_DERIVE, &yes, 1}};
    CK_OBJECT_HANDLE base, out;
    CK(f->C_CreateObject(h, bt, 4, &base));
    CK_MECHANISM m = {TEST_CKM_HKDF_DERIVE, &p, sizeof(p)};
    CK_ULONG l = 42;
    CK_ATTRIBUTE dt[] = {{CKA_KEY_TYPE, &gen, sizeof(gen)}, {CKA_VALUE_LEN, &l, sizeof(l)},
                         {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    CK(f->C_DeriveKey(h, &m, base, dt, 4, &out));
    CK_ATTRIBUTE vt[] = {{CKA_VALUE, okm, sizeof(okm)}};
    CK(f->C_GetAttributeValue(h, out, vt, 1));
    assert_int_equal(vt[0].ulValueLen, 42);
    assert_memory_equal(okm, want, 42);
    /* A base key's CKA_DERIVE_TEMPLATE joins every derive template. */
    CK_ATTRIBUTE must[] = {{CKA_SENSITIVE, &yes, 1}};
    CK_ATTRIBUTE bt2[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_KEY_TYPE, &gen, sizeof(gen)}, {CKA_VALUE, ikm, sizeof(ikm)},
                          {CKA_DERIVE, &yes, 1}, {CKA_DERIVE_TEMPLATE, must, sizeof(must)}};
    CK_OBJECT_HANDLE base2;
    CK(f->C_CreateObject(h, bt2, 5, &base2));
    RV(CKR_TEMPLATE_INCONSISTENT, f->C_DeriveKey(h, &m, base2, dt, 4, &out)); /* asks for SENSITIVE=FALSE */
    CK(f->C_DeriveKey(h, &m, base2, dt, 2, &out));
    CK_BBOOL sens = CK_FALSE;
    CK_ATTRIBUTE st[] = {{CKA_SENSITIVE, &sens, 1}};
    CK(f->C_GetAttributeValue(h, out, st, 1));
    assert_true(sens);
    RV(CKR_ATTRIBUTE_SENSITIVE, f->C_GetAttributeValue(h, out, vt, 1));
    p.prf = CKM_SHA256_RSA_PKCS; /* not a digest */
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &m, base, dt, 4, &out));
    p.prf = CKM_SHA256;
    p.bExtract = p.bExpand = CK_FALSE;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_DeriveKey(h, &m, base, dt, 4, &out));
    CK(f->C_CloseAllSessions(s));
}

/* PBKDF2 key generation (RFC 6070, test 2), with the length given either
 * way (v3.0 value, v2.40 pointer). */
static void test_pbkdf2(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("pbkdf2");
    CK_SESSION_HANDLE h = user_session(s, true);
    static const CK_BYTE want[] = {0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e,
                                   0xd9, 0x2a, 0xce, 0x1d, 0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57};
    CK_ULONG pwlen = 8;
    test_pbkd2_params p = test_rfc6070_case2();
    CK_MECHANISM m = {CKM_PKCS5_PBKD2, &p, sizeof(p)};
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_ULONG l = 20;
    CK_ATTRIBUTE t[] = {{CKA_KEY_TYPE, &gen, sizeof(gen)}, {CKA_VALUE_LEN, &l, sizeof(l)},
                        {CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}};
    for (int form = 0; form < 2; form++) {
        CK_OBJECT_HANDLE k;
        CK_BYTE v[20];
        p.passwordLen = form ? (CK_ULONG)(uintptr_t)&pwlen : 8;
        CK(f->C_GenerateKey(h, &m, t, 4, &k));
        CK_ATTRIBUTE vt[] = {{CKA_VALUE, v, sizeof(v)}};
        CK(f->C_GetAttributeValue(h, k, vt, 1));
        assert_memory_equal(v, want, 20);
    }
    CK_OBJECT_HANDLE k;
    RV(CKR_TEMPLATE_INCOMPLETE, f->C_GenerateKey(h, &m, t + 1, 3, &k)); /* the key type comes from the template */
    p.passwordLen = 8;
    p.iterations = 0;
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_GenerateKey(h, &m, t, 4, &k));
    p.iterations = 2;
    p.prf = 2; /* GOST */
    RV(CKR_MECHANISM_PARAM_INVALID, f->C_GenerateKey(h, &m, t, 4, &k));
    CK(f->C_CloseAllSessions(s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exports_only_three),
        cmocka_unit_test(test_not_initialized),
        cmocka_unit_test(test_interfaces),
        cmocka_unit_test_setup_teardown(test_info, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_objects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crypto_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gcm_and_rsa, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_record, setup, teardown),
        cmocka_unit_test(test_wrong_key_and_bad_config),
        cmocka_unit_test_setup_teardown(test_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reinit_elsewhere_ends_login, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reinit_token_wipes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_entry_point, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_and_p11kit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrap_unwrap_derive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrap_templates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_always_authenticate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mechanism_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_montgomery_derive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hkdf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pbkdf2, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
