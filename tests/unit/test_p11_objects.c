/* Unit tests of the pkcs11 layer (test_p11.h): objects and attributes, and
 * find. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/unit/test_p11.h"

#ifndef CKA_UNIQUE_ID /* PKCS#11 3.0 (p11-kit 0.24 lacks it) */
#define CKA_UNIQUE_ID 0x00000004UL
#endif

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
    /* A copy may change what C_SetAttributeValue could (google/pkcs11test's
     * CreateCopyDestroyObject): a data object's value and application... */
    CK_ATTRIBUTE cval[] = {{CKA_VALUE, "\xfa\xce\xfe\xed", 4}, {CKA_APPLICATION, "app", 3}};
    CK_OBJECT_HANDLE c2;
    CK(f->C_CopyObject(rw, d, cval, 2, &c2));
    cv[0].ulValueLen = sizeof(value);
    CK(f->C_GetAttributeValue(rw, c2, cv, 1));
    assert_int_equal(cv[0].ulValueLen, 4);
    assert_memory_equal(value, "\xfa\xce\xfe\xed", 4);
    /* ... a modifiable key's usage, never its value; nothing but the one-way
     * flags, the name and the place of an object that cannot be modified. */
    CK_ATTRIBUTE cenc[] = {{CKA_ENCRYPT, &no, 1}}, ckv[] = {{CKA_VALUE, value, 16}};
    CK_OBJECT_HANDLE c3;
    CK(f->C_CopyObject(rw, k, cenc, 1, &c3));
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_CopyObject(rw, k, ckv, 1, &c3));
    CK_ATTRIBUTE lock[] = {{CKA_MODIFIABLE, &no, 1}}, cenc2[] = {{CKA_ENCRYPT, &yes, 1}};
    CK_OBJECT_HANDLE locked, dlocked;
    CK(f->C_CopyObject(rw, c3, lock, 1, &locked));
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_CopyObject(rw, locked, cenc2, 1, &c3));
    CK(f->C_CopyObject(rw, locked, cl, 1, &c3));
    CK(f->C_CopyObject(rw, d, lock, 1, &dlocked));
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_CopyObject(rw, dlocked, cval, 1, &c3));

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

/* PKCS#11 3.0's CKA_UNIQUE_ID: made by the token for every new object (a
 * copy too), the same for the object's life (across a new C_Initialize),
 * never taken from a template, found like any attribute. */
static void unique_id_of(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, char out[33])
{
    CK_ATTRIBUTE a[] = {{CKA_UNIQUE_ID, out, 32}};
    CK(f->C_GetAttributeValue(h, o, a, 1));
    assert_int_equal(a[0].ulValueLen, 32);
    out[32] = 0;
}

static void test_unique_id(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("uniqueid");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE d = make_data(h, "u-data", true, false), k = make_aes(h, "u-key", true), pub, priv, c, o;
    char ud[33], uk[33], upub[33], upriv[33], uc[33], again[33];
    make_ec(h, "u-ec", true, &pub, &priv);
    unique_id_of(h, d, ud);
    unique_id_of(h, k, uk);
    unique_id_of(h, pub, upub);
    unique_id_of(h, priv, upriv);
    assert_string_not_equal(ud, uk);
    assert_string_not_equal(upub, upriv);
    assert_string_not_equal(uk, upriv);

    /* A copy is a new object; no template sets the id, not even to its value. */
    CK(f->C_CopyObject(h, d, NULL, 0, &c));
    unique_id_of(h, c, uc);
    assert_string_not_equal(uc, ud);
    CK_ATTRIBUTE same[] = {{CKA_UNIQUE_ID, ud, 32}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_SetAttributeValue(h, d, same, 1));
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_CopyObject(h, d, same, 1, &o));
    CK_OBJECT_CLASS data = CKO_DATA;
    CK_ATTRIBUTE given[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_UNIQUE_ID, "mine", 4}};
    RV(CKR_ATTRIBUTE_READ_ONLY, f->C_CreateObject(h, given, 2, &o));

    /* Found by it, the private key's too (logged in), and only it. */
    CK_ATTRIBUTE byd[] = {{CKA_UNIQUE_ID, ud, 32}}, bypriv[] = {{CKA_UNIQUE_ID, upriv, 32}};
    assert_int_equal(count_found(h, byd, 1), 1);
    assert_int_equal(count_found(h, bypriv, 1), 1);

    /* The same after a new C_Initialize. */
    CK(f->C_CloseAllSessions(s));
    CK(f->C_Finalize(NULL));
    CK(f->C_Initialize(NULL));
    h = user_session(s, true);
    CK(f->C_FindObjectsInit(h, byd, 1));
    CK_ULONG n = 0;
    CK(f->C_FindObjects(h, &o, 1, &n));
    CK(f->C_FindObjectsFinal(h));
    assert_int_equal(n, 1);
    unique_id_of(h, o, again);
    assert_string_equal(again, ud);
    CK(f->C_CloseAllSessions(s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_objects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unique_id, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
