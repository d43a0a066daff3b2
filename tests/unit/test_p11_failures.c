/* Unit tests of the pkcs11 layer (test_p11.h): keystore-level failures and
 * more than one user: a record edited on disk, a wrong master key and bad
 * configuration at C_Initialize, fork, threads, a token re-initialized by
 * another process, every entry point with a bad session handle, the module
 * used directly and through p11-kit. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "keystore/ks.h"
#include "keystore/ks_tamper.h"
#include "tests/unit/test_p11.h"
#include "token/tok_attr.h"

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
    if (test_pg_backend()) { /* ks_tamper edits LMDB's data.mdb */
        printf("SKIP: test_tampered_record: the record is damaged in LMDB's data.mdb (ks_tamper), not on the "
               "postgresql backend\n");
        return;
    }
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

/* ---- find: private objects, damage, exact matches ------------------------- */

static CK_OBJECT_HANDLE make_with_id(CK_SESSION_HANDLE h, const char *label, const char *id, bool priv)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &yes, 1},
        {CKA_PRIVATE, priv ? &yes : &no, 1},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, (void *)id, strlen(id)},
        {CKA_VALUE, (void *)"0123456789abcdef", 16},
    };
    CK(f->C_CreateObject(h, t, 7, &o));
    return o;
}

typedef struct {
    uint32_t slot;
    uint64_t oid;
    const char *id;
    bool rewrite; /* false: only an index entry for id pointing at oid */
} reid_arg;

/* What someone holding the keystore and the master key but no PIN can do:
 * rewrite an object's record with another (clear) CKA_ID and index it under
 * that one; or add an index entry pointing a CKA_ID at an object that does
 * not hold it (what a collision of the index MAC would give). */
static int reid_fn(ks_txn *t, void *arg)
{
    const reid_arg *r = arg;
    tok_attrs a = TOK_ATTRS_INIT;
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = KS_OK;

    if (r->rewrite) {
        if ((rc = ks_obj_get(t, r->slot, r->oid, &blob, &len)) != KS_OK)
            return rc;
        assert_int_equal(tok_attrs_parse(blob, len, &a), 0);
        ks_buf_free(blob, len);
        assert_int_equal(tok_attrs_set(&a, CKA_ID, r->id, strlen(r->id)), 0);
        assert_int_equal(tok_attrs_serialize(&a, &blob, &len), 0);
        tok_attrs_free(&a);
        rc = ks_obj_put(t, r->slot, r->oid, blob, len);
        ks_buf_free(blob, len);
    }
    return rc == KS_OK ? ks_idx_add(t, r->slot, CKA_ID, r->id, strlen(r->id), r->oid) : rc;
}

/* The keystore as the group's configuration names it (LMDB in the
 * directory, or its PostgreSQL database). */
static void master_key_write(const reid_arg *r)
{
    ks_config cfg;
    ks_mkey mk;
    ks_store *st;
    ks_err err = KS_ERR_INIT;

    assert_int_equal(ks_config_load_file(&cfg, conf, &err), KS_OK);
    ks_mkey_default(&mk);
    assert_int_equal(ks_open_cfg(&cfg, &mk, 0, &st, &err), KS_OK);
    assert_int_equal(ks_write(st, reid_fn, (void *)r), KS_OK);
    ks_close(st);
    ks_config_free(&cfg);
}

/* C_FindObjects by CKA_ID / CKA_LABEL: a private object is not found by a
 * session that is not logged in (no different from an absent value); the
 * final comparison is exact whatever the index offers; a private object
 * whose clear attributes were changed without the token key is not
 * returned, by its old value nor by its new one, and is reported. */
static void test_find_private_damaged_exact(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("findpriv");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE pa = make_with_id(h, "priv-a", "id-a", true), pb = make_with_id(h, "priv-b", "id-b", true);
    CK_OBJECT_HANDLE pc = make_with_id(h, "pub-c", "id-c", false), got[4];
    CK_OBJECT_CLASS seckey = CKO_SECRET_KEY, cert = CKO_CERTIFICATE;
    CK_ULONG n;
    CK_ATTRIBUTE ida[] = {{CKA_ID, "id-a", 4}}, la[] = {{CKA_LABEL, "priv-a", 6}};
    CK_ATTRIBUTE idac[] = {{CKA_ID, "id-a", 4}, {CKA_CLASS, &seckey, sizeof(seckey)}};
    CK_ATTRIBUTE idb_lb[] = {{CKA_LABEL, "priv-b", 6}, {CKA_ID, "id-b", 4}, {CKA_CLASS, &seckey, sizeof(seckey)}};
    CK_ATTRIBUTE idb_la[] = {{CKA_ID, "id-b", 4}, {CKA_LABEL, "priv-a", 6}};
    CK_ATTRIBUTE idb_cert[] = {{CKA_ID, "id-b", 4}, {CKA_CLASS, &cert, sizeof(cert)}};
    CK_ATTRIBUTE idpre[] = {{CKA_ID, "id-", 3}}, idlong[] = {{CKA_ID, "id-b2", 5}};
    CK_ATTRIBUTE idb[] = {{CKA_ID, "id-b", 4}}, idc[] = {{CKA_ID, "id-c", 4}}, idx[] = {{CKA_ID, "id-x", 4}};
    CK_ATTRIBUTE none[] = {{CKA_ID, "id-none", 7}};

    /* Logged in: exact matches only, every attribute of the template. */
    assert_int_equal(count_found(h, ida, 1), 1);
    assert_int_equal(count_found(h, la, 1), 1);
    assert_int_equal(count_found(h, idac, 2), 1);
    assert_int_equal(count_found(h, idb_lb, 3), 1);
    assert_int_equal(count_found(h, idb_la, 2), 0);
    assert_int_equal(count_found(h, idb_cert, 2), 0);
    assert_int_equal(count_found(h, idpre, 1), 0);
    assert_int_equal(count_found(h, idlong, 1), 0);

    /* Not logged in: the private ones are not there, as if absent. */
    CK(f->C_Logout(h));
    assert_int_equal(count_found(h, ida, 1), 0);
    assert_int_equal(count_found(h, la, 1), 0);
    assert_int_equal(count_found(h, idac, 2), 0);
    assert_int_equal(count_found(h, idb_lb, 3), 0);
    assert_int_equal(count_found(h, none, 1), 0);
    assert_int_equal(count_found(h, idc, 1), 1);
    CK(f->C_FindObjectsInit(h, NULL, 0));
    CK(f->C_FindObjects(h, got, 4, &n));
    CK(f->C_FindObjectsFinal(h));
    for (CK_ULONG i = 0; i < n; i++)
        assert_true(got[i] != pa && got[i] != pb);

    /* With the master key alone: pa's record says id-x now (and the index
     * agrees); the index lists pb under id-c too. */
    CK(f->C_Finalize(NULL)); /* LMDB must not be opened twice in one process */
    master_key_write(&(reid_arg){(uint32_t)s, pa, "id-x", true});
    master_key_write(&(reid_arg){(uint32_t)s, pb, "id-c", false});
    CK(f->C_Initialize(NULL));
    h = user_session(s, true);
    assert_int_equal(count_found(h, idx, 1), 0);
    assert_int_equal(count_found(h, ida, 1), 0);
    char needle[96];
    snprintf(needle, sizeof(needle), "object %lu: its envelope fails authentication", (unsigned long)pa);
    assert_true(log_contains(needle));
    CK(f->C_FindObjectsInit(h, idc, 1));
    CK(f->C_FindObjects(h, got, 4, &n));
    CK(f->C_FindObjectsFinal(h));
    assert_int_equal(n, 1);
    assert_int_equal(got[0], pc);
    CK(f->C_FindObjectsInit(h, idb, 1));
    CK(f->C_FindObjects(h, got, 4, &n));
    CK(f->C_FindObjectsFinal(h));
    assert_int_equal(n, 1);
    assert_int_equal(got[0], pb);
    CK(f->C_Logout(h));
    assert_int_equal(count_found(h, idx, 1), 0);
    assert_int_equal(count_found(h, idc, 1), 1);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tampered_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_private_damaged_exact, setup, teardown),
        cmocka_unit_test(test_wrong_key_and_bad_config),
        cmocka_unit_test_setup_teardown(test_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reinit_elsewhere_ends_login, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reinit_token_wipes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_entry_point, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_and_p11kit, setup, teardown),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
