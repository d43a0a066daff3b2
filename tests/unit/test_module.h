/* Shared by the unit tests that start the built module (dlopen, PKCS#11
 * entry points) on a fresh keystore per test, each with its own
 * configuration lines: the module and the temporary directory for the
 * group (test_dlopen.h), a token, a logged-in read/write user session for
 * each test, and session secret keys of known value. The configuration and
 * the logged-in session are test_session.h's (also used alone by tests with
 * a fixture of their own). Include after cmocka.h. */
#ifndef P11MK_TEST_MODULE_H
#define P11MK_TEST_MODULE_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "tests/unit/test_hex.h"
#include "tests/unit/test_session.h" /* before test_dlopen.h's f (its parameters are named f) */
#include "tests/unit/test_dlopen.h"

static int starts; /* keystores made so far: each start() takes a new one */
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE h;

/* C_Initialize with these configuration lines on a new keystore; a token
 * and a logged-in read/write user session (h, on slot). */
static inline int start(const char *extra)
{
    char ks[16];

    snprintf(ks, sizeof(ks), "ks%d", starts++);
    if (test_conf(tmp, ks, extra) != 0)
        return -1;
    return test_user_session(f, "test", SO, PIN, &slot, &h);
}

static inline int start_default(void **state)
{
    (void)state;
    return start("");
}

static inline int stop(void **state)
{
    (void)state;
    return f->C_Finalize(NULL) == CKR_OK ? 0 : -1;
}

/* The size-query protocol of one call that gives output (C_Encrypt's shape):
 * NULL gives query (the length, or an upper bound where PKCS#11 allows
 * one), a buffer one byte short of want CKR_BUFFER_TOO_SMALL and want, and
 * the operation stays for the call that gives the want bytes (returned). */
static inline CK_ULONG sized(CK_C_Encrypt fn, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG query,
                             CK_ULONG want)
{
    CK_ULONG n = 0;
    CK(fn(h, in, inlen, NULL, &n));
    assert_int_equal(n, query);
    n = want - 1;
    RV(CKR_BUFFER_TOO_SMALL, fn(h, in, inlen, out, &n));
    assert_int_equal(n, want);
    CK(fn(h, in, inlen, out, &n));
    assert_int_equal(n, want);
    return n;
}

enum { U_CRYPT = 1, U_SIGN = 2, U_WRAP = 4, U_DERIVE = 8 };

/* C_CreateObject of a session secret key (not sensitive, extractable) with
 * the usages asked for; extra attributes appended (at most 3). */
static inline CK_RV create_secret(CK_KEY_TYPE kt, const uint8_t *val, size_t len, unsigned use, CK_ATTRIBUTE *extra,
                                  CK_ULONG nextra, CK_OBJECT_HANDLE *o)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL crypt = (use & U_CRYPT) != 0, sign = (use & U_SIGN) != 0, wrap = (use & U_WRAP) != 0,
             derive = (use & U_DERIVE) != 0;
    CK_ATTRIBUTE t[16] = {
        {CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE, (void *)val, len},  {CKA_TOKEN, &no, 1},
        {CKA_SENSITIVE, &no, 1},        {CKA_EXTRACTABLE, &yes, 1},
        {CKA_ENCRYPT, &crypt, 1},       {CKA_DECRYPT, &crypt, 1},
        {CKA_SIGN, &sign, 1},           {CKA_VERIFY, &sign, 1},
        {CKA_WRAP, &wrap, 1},           {CKA_UNWRAP, &wrap, 1},
        {CKA_DERIVE, &derive, 1},
    };
    CK_ULONG n = 13;
    assert_true(nextra <= 3);
    for (CK_ULONG i = 0; i < nextra; i++)
        t[n++] = extra[i];
    return f->C_CreateObject(h, t, n, o);
}

/* A session secret key of this hex value. */
static inline CK_OBJECT_HANDLE secret(CK_KEY_TYPE kt, const char *hex, unsigned use)
{
    uint8_t v[64];
    size_t l = test_unhex(hex, v, sizeof(v));
    CK_OBJECT_HANDLE o;
    CK(create_secret(kt, v, l, use, NULL, 0, &o));
    return o;
}

#endif
