/* Unit tests of the pkcs11 layer (test_p11.h): the library: the three
 * exported functions, calls before C_Initialize, the interfaces, and
 * library, slot, token and mechanism information. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/unit/test_p11.h"

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
    RV(CKR_ARGUMENTS_BAD, f3->C_MessageSignInit(h, NULL, 0)); /* 3.0: ends the operation; none here */
    RV(CKR_ARGUMENTS_BAD, f3->C_MessageEncryptInit(h, NULL, 0));
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exports_only_three),
        cmocka_unit_test(test_not_initialized),
        cmocka_unit_test(test_interfaces),
        cmocka_unit_test_setup_teardown(test_info, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
