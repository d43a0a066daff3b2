/* Unit tests of the pkcs11 layer (test_p11.h): sessions and login: session
 * states and handles, PINs and the lock-out. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/unit/test_p11.h"

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
    /* Not in C_CloseAllSessions' list: the free slot is a slot, with no session. */
    CK(f->C_CloseAllSessions(slot_of(NULL)));
    RV(CKR_SLOT_ID_INVALID, f->C_CloseAllSessions(9999));
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pins, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
