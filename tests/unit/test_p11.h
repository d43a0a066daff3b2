/* Shared by the parts of the pkcs11-layer unit tests (test_p11_*.c): the
 * built module loaded with dlopen, as an application would, on one
 * temporary keystore for each part (tokens found or made by label), its
 * configuration and log, and the helpers that make tokens, sessions and
 * objects. Include after cmocka.h. */
#ifndef P11MK_TEST_P11_H
#define P11MK_TEST_P11_H

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

#include "pkcs11/p11_v3.h"
#include "tests/unit/test_params.h"
#include "tests/unit/test_dlopen.h"
#include "tests/unit/test_pg.h"

#define UL(x) ((CK_ULONG)(x))

static char conf[128], keystore[128], logfile[128];

#include "tests/unit/test_slots.h"

/* ---- helpers ------------------------------------------------------------- */

/* The configuration at path for the keystore (on the postgresql backend,
 * in a database of its own, when P11MK_TEST_PG_DIR is set: test_pg.h). */
static inline void write_conf(const char *path, const char *extra)
{
    char pg[768];
    assert_int_equal(test_pg_backend_lines(keystore, pg, sizeof(pg)), 0);
    FILE *c = fopen(path, "w");
    assert_non_null(c);
    fprintf(c, "keystore = %s\nlog = %s\nlog_level = info\n%s%s", keystore, logfile, extra ? extra : "", pg);
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

/* ---- fixtures ------------------------------------------------------------ */

/* A random number below n from a xorshift state (tests' own sequences). */
static inline unsigned xorshift_below(unsigned long *s, unsigned n)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (unsigned)(*s % n);
}

/* The group's keystore, configured before the module is loaded, with extra
 * lines of configuration (or none). */
static inline int p11_group_setup_with(const char *extra)
{
    snprintf(tmp, sizeof(tmp), "/tmp/p11mk-p11-XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", tmp);
    snprintf(keystore, sizeof(keystore), "%s/ks", tmp);
    snprintf(logfile, sizeof(logfile), "%s/p11mk.log", tmp);
    write_conf(conf, extra);
    setenv("P11MK_CONF", conf, 1);
    return load_module();
}

static inline int p11_group_setup(void **state)
{
    (void)state;
    return p11_group_setup_with(NULL);
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

#endif
