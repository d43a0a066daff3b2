/* Private objects at rest need the PIN: with the keystore and the master key
 * but no PIN, a program using the keystore layer directly unseals every
 * record and finds no private value (known values stored first); with the
 * PIN everything reads as before. Envelopes are bound to their object, a
 * private object outside an envelope is damage, logout forgets the key, and
 * a keystore made before PIN binding (tests/fixtures/pin-v1) is upgraded at
 * the first login of each role. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "keystore/ks.h"
#include "tests/unit/ks_test_util.h"
#include "token/tok_envelope.h"
#include "token/tok_internal.h"
#include "token/tok_policy.h"

#define SO_PIN "so-pin-123"
#define USER_PIN "user-pin-1"

static char dir[64];
/* The caller as a logged-in user of token 1 would be (whether this process
 * holds the token key is the token layer's business). */
static const tok_access USER = {.slot = 1, .rw = true, .who = CKU_USER};

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/p11mk-pinb-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(dir);
    return 0;
}

static void write_conf(const char *extra)
{
    char conf[128];
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "keystore = %s/ks\nlog = %s/log\n%s", dir, dir, extra ? extra : "");
    fclose(f);
    setenv("P11MK_CONF", conf, 1);
}

static CK_RV login(tok_ctx *ctx, CK_USER_TYPE who, const char *pin)
{
    return tok_login_check(ctx, 1, who, (const uint8_t *)pin, strlen(pin));
}

static uint64_t store(tok_ctx *ctx, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, bool priv, const char *label,
                      const uint8_t *val, size_t vlen, CK_RV want)
{
    CK_BBOOL yes = CK_TRUE, pv = priv ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1},     {CKA_PRIVATE, &pv, 1},
                        {CKA_LABEL, (void *)label, strlen(label)}, {CKA_VALUE, (void *)val, vlen}, {CKA_KEY_TYPE, &kt, sizeof(kt)}};
    tok_attrs obj = TOK_ATTRS_INIT;
    uint64_t oid = 0;
    assert_int_equal(tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, t,
                                      cls == CKO_DATA ? 5 : 6, &obj),
                     CKR_OK);
    assert_int_equal(tok_obj_store(ctx, &USER, &obj, &oid), want);
    tok_attrs_free(&obj);
    return oid;
}

/* Unseal every record of the keystore (token records and objects) with the
 * master key alone, and count the records holding needle. */
typedef struct {
    ks_txn *txn;
    uint32_t tid;
    const uint8_t *needle;
    size_t nlen;
    int hits;
} scan;

static int scan_obj(uint64_t oid, void *arg)
{
    scan *s = arg;
    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(ks_obj_get(s->txn, s->tid, oid, &blob, &len), KS_OK);
    if (memmem(blob, len, s->needle, s->nlen))
        s->hits++;
    ks_buf_free(blob, len);
    return KS_OK;
}

static int count_in_records(tok_ctx *ctx, const void *needle, size_t nlen)
{
    scan s = {NULL, 0, needle, nlen, 0};
    uint32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(ks_read_begin(tok_ctx_store(ctx), &s.txn), KS_OK);
    assert_int_equal(ks_token_list(s.txn, &ids, &n), KS_OK);
    for (size_t i = 0; i < n; i++) {
        uint8_t *blob = NULL;
        size_t len = 0;
        assert_int_equal(ks_token_get(s.txn, ids[i], &blob, &len), KS_OK);
        if (memmem(blob, len, needle, nlen))
            s.hits++;
        ks_buf_free(blob, len);
        s.tid = ids[i];
        assert_int_equal(ks_obj_foreach(s.txn, ids[i], scan_obj, &s), KS_OK);
    }
    free(ids);
    ks_read_end(s.txn);
    return s.hits;
}

static const uint8_t aes_val[32] = "AES-VALUE-0123456789abcdefghijkl";
static const uint8_t priv_data[] = "PRIVATE-DATA-that-needs-the-PIN";
static const uint8_t pub_data[] = "PUBLIC-DATA-readable-by-anyone";

static void value_is(tok_ctx *ctx, uint64_t oid, const void *val, size_t len)
{
    tok_attrs a = TOK_ATTRS_INIT;
    assert_int_equal(tok_obj_read(ctx, &USER, oid, &a), CKR_OK);
    const tok_attr *v = tok_attrs_find(&a, CKA_VALUE);
    assert_non_null(v);
    assert_int_equal(v->len, len);
    assert_memory_equal(v->val, val, len);
    tok_attrs_free(&a);
}

typedef struct {
    uint64_t from, to;
} move_arg;

/* Someone holding the master key (not the PIN) copies one object's record over another's. */
static int move_fn(ks_txn *t, void *arg)
{
    move_arg *m = arg;
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = ks_obj_get(t, 1, m->from, &blob, &len);
    if (rc == KS_OK)
        rc = ks_obj_put(t, 1, m->to, blob, len);
    ks_buf_free(blob, len);
    return rc;
}

static int plant_fn(ks_txn *t, void *arg)
{
    const uint64_t *oid = arg;
    tok_attrs a = TOK_ATTRS_INIT;
    uint8_t *blob = NULL;
    size_t len = 0;
    CK_OBJECT_CLASS cls = CKO_DATA;
    tok_attrs_set(&a, CKA_CLASS, &cls, sizeof(cls));
    tok_attrs_set_bool(&a, CKA_TOKEN, true);
    tok_attrs_set_bool(&a, CKA_PRIVATE, true);
    tok_attrs_set(&a, CKA_VALUE, "planted", 7);
    assert_int_equal(tok_attrs_serialize(&a, &blob, &len), 0);
    int rc = ks_obj_put(t, 1, *oid, blob, len);
    ks_buf_free(blob, len);
    tok_attrs_free(&a);
    return rc;
}

static void test_values_need_pin(void **state)
{
    (void)state;
    tok_ctx *ctx;
    CK_UTF8CHAR label[32];
    write_conf(NULL);
    memset(label, ' ', sizeof(label));
    memcpy(label, "pinb", 4);
    assert_int_equal(tok_ctx_open(TOK_CTX_CREATE, &ctx), CKR_OK);
    assert_int_equal(tok_token_init(ctx, 1, (const uint8_t *)SO_PIN, strlen(SO_PIN), label), CKR_OK);
    assert_int_equal(login(ctx, CKU_SO, SO_PIN), CKR_OK);
    assert_int_equal(tok_pin_init(ctx, 1, (const uint8_t *)USER_PIN, strlen(USER_PIN)), CKR_OK);
    tok_logout(ctx, 1);
    /* Not logged in: no private object can be made, whoever the caller says it is. */
    store(ctx, CKO_DATA, 0, true, "nope", priv_data, sizeof(priv_data), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(login(ctx, CKU_USER, "wrong-pin"), CKR_PIN_INCORRECT);
    store(ctx, CKO_DATA, 0, true, "nope", priv_data, sizeof(priv_data), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_OK);
    uint64_t k = store(ctx, CKO_SECRET_KEY, CKK_AES, true, "aes-private", aes_val, sizeof(aes_val), CKR_OK);
    uint64_t d = store(ctx, CKO_DATA, 0, true, "data-private", priv_data, sizeof(priv_data), CKR_OK);
    uint64_t p = store(ctx, CKO_DATA, 0, false, "data-public", pub_data, sizeof(pub_data), CKR_OK);
    value_is(ctx, k, aes_val, sizeof(aes_val));
    value_is(ctx, d, priv_data, sizeof(priv_data));
    tok_ctx_close(ctx);

    /* The keystore and the master key, no PIN. */
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    assert_int_equal(count_in_records(ctx, pub_data, sizeof(pub_data)), 1); /* the scan does see values */
    assert_int_equal(count_in_records(ctx, "aes-private", 11), 1);          /* and what private objects are */
    assert_int_equal(count_in_records(ctx, aes_val, sizeof(aes_val)), 0);
    assert_int_equal(count_in_records(ctx, aes_val, 8), 0);
    assert_int_equal(count_in_records(ctx, priv_data, sizeof(priv_data)), 0);
    assert_int_equal(count_in_records(ctx, USER_PIN, strlen(USER_PIN)), 0);
    assert_int_equal(count_in_records(ctx, SO_PIN, strlen(SO_PIN)), 0);
    tok_attrs a = TOK_ATTRS_INIT;
    bool sealed = false;
    assert_int_equal(tok_obj_read(ctx, &USER, k, &a), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(tok_obj_read_meta(ctx, 1, k, &a, &sealed, NULL), CKR_OK);
    assert_true(sealed);
    assert_non_null(tok_attrs_find(&a, CKA_LABEL));
    assert_null(tok_attrs_find(&a, CKA_VALUE));
    tok_attrs_free(&a);
    assert_int_equal(tok_obj_read_meta(ctx, 1, p, &a, &sealed, NULL), CKR_OK);
    assert_false(sealed);
    tok_attrs_free(&a);
    value_is(ctx, p, pub_data, sizeof(pub_data));

    /* With the PIN: as before. The SO's login holds the key too (C_InitPIN needs it). */
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_OK);
    value_is(ctx, k, aes_val, sizeof(aes_val));
    value_is(ctx, d, priv_data, sizeof(priv_data));
    tok_logout(ctx, 1);
    assert_int_equal(tok_obj_read(ctx, &USER, d, &a), CKR_OBJECT_HANDLE_INVALID);

    /* The SO resets a locked user PIN: the private objects stay usable. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(login(ctx, CKU_USER, "wrong-pin"), CKR_PIN_INCORRECT);
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_PIN_LOCKED);
    assert_int_equal(login(ctx, CKU_SO, SO_PIN), CKR_OK);
    assert_int_equal(tok_pin_init(ctx, 1, (const uint8_t *)"new-user-pin", 12), CKR_OK);
    tok_logout(ctx, 1);
    assert_int_equal(login(ctx, CKU_USER, "new-user-pin"), CKR_OK);
    value_is(ctx, k, aes_val, sizeof(aes_val));
    /* C_SetPIN rewraps: the old PIN no longer opens anything, the new one does. */
    assert_int_equal(tok_pin_set(ctx, 1, CKU_USER, (const uint8_t *)"new-user-pin", 12, (const uint8_t *)USER_PIN,
                                 strlen(USER_PIN)),
                     CKR_OK);
    tok_logout(ctx, 1);
    assert_int_equal(login(ctx, CKU_USER, "new-user-pin"), CKR_PIN_INCORRECT);
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_OK);
    value_is(ctx, d, priv_data, sizeof(priv_data));

    /* Damage written with the master key alone is reported, not served: an
     * envelope moved to another object, a private object outside an envelope. */
    move_arg m = {k, d};
    assert_int_equal(ks_write(tok_ctx_store(ctx), move_fn, &m), KS_OK);
    assert_int_equal(tok_obj_read(ctx, &USER, d, &a), CKR_DEVICE_ERROR);
    assert_int_equal(ks_write(tok_ctx_store(ctx), plant_fn, &p), KS_OK);
    assert_int_equal(tok_obj_read(ctx, &USER, p, &a), CKR_DEVICE_ERROR);
    value_is(ctx, k, aes_val, sizeof(aes_val)); /* the others are unaffected */
    tok_ctx_close(ctx);
}

static size_t read_file(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* The first bytes of the fixture RSA key's private exponent. */
static size_t rsa_d(const char *fx, uint8_t *out, size_t cap)
{
    char p[1100];
    uint8_t der[4096];
    snprintf(p, sizeof(p), "%s/rsa.der", fx);
    size_t n = read_file(p, der, sizeof(der));
    const unsigned char *q = der;
    EVP_PKEY *pk = d2i_AutoPrivateKey(NULL, &q, (long)n);
    BIGNUM *d = NULL;
    assert_non_null(pk);
    assert_int_equal(EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_D, &d), 1);
    size_t len = (size_t)BN_num_bytes(d);
    assert_true(len <= cap);
    BN_bn2bin(d, out);
    BN_clear_free(d);
    EVP_PKEY_free(pk);
    return len;
}

static bool token_has(tok_ctx *ctx, CK_ATTRIBUTE_TYPE t)
{
    tok_attrs rec = TOK_ATTRS_INIT;
    assert_int_equal(tok_token_load(ctx, 1, &rec), CKR_OK);
    bool has = tok_attrs_find(&rec, t) != NULL;
    tok_attrs_free(&rec);
    return has;
}

static void test_upgrade(void **state)
{
    (void)state;
    const char *fx = getenv("P11MK_FIXTURES");
    char p[1024], q[1024], extra[1100];
    uint8_t aes[64], data[128], d[512];
    tok_ctx *ctx;
    if (!fx)
        skip();
    snprintf(p, sizeof(p), "%s/pin-v1/aes.bin", fx);
    size_t naes = read_file(p, aes, sizeof(aes));
    snprintf(p, sizeof(p), "%s/pin-v1/data.bin", fx);
    size_t ndata = read_file(p, data, sizeof(data));
    snprintf(p, sizeof(p), "%s/pin-v1", fx);
    size_t nd = rsa_d(p, d, sizeof(d));
    snprintf(q, sizeof(q), "%s/ks", dir);
    assert_int_equal(mkdir(q, 0700), 0);
    snprintf(p, sizeof(p), "%s/pin-v1/data.mdb", fx);
    snprintf(q, sizeof(q), "%s/ks/data.mdb", dir);
    copy_file(p, q, 0600);
    snprintf(p, sizeof(p), "%s/pin-v1/master.key", fx);
    snprintf(q, sizeof(q), "%s/master.key", dir);
    copy_file(p, q, 0600);
    snprintf(extra, sizeof(extra), "master_key = %s\n", q);
    write_conf(extra);

    /* Before: the values are in the records under the master key alone. */
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    assert_int_equal(count_in_records(ctx, aes, naes), 1);
    assert_int_equal(count_in_records(ctx, data, ndata), 1);
    assert_int_equal(count_in_records(ctx, d, 16), 1);
    /* The user's first login binds the token: every private object goes into
     * its envelope, the key stays escrowed for the SO. */
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_OK);
    assert_true(token_has(ctx, TOKR_TK_KCV));
    assert_true(token_has(ctx, TOKR_TK_ESCROW));
    assert_int_equal(count_in_records(ctx, aes, naes), 0);
    assert_int_equal(count_in_records(ctx, data, ndata), 0);
    assert_int_equal(count_in_records(ctx, d, 16), 0);
    assert_int_equal(count_in_records(ctx, "aes1", 4), 1);
    tok_ctx_close(ctx);
    (void)nd;

    /* The SO's first login wraps the key under the SO PIN; the escrow goes. */
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    assert_int_equal(login(ctx, CKU_SO, SO_PIN), CKR_OK);
    assert_false(token_has(ctx, TOKR_TK_ESCROW));
    tok_logout(ctx, 1);
    /* And the user reads every value as before. */
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_OK);
    uint64_t *oids = NULL;
    size_t n = 0;
    int seen = 0;
    assert_int_equal(tok_obj_candidates(ctx, 1, NULL, 0, &oids, &n), CKR_OK);
    for (size_t i = 0; i < n; i++) {
        tok_attrs a = TOK_ATTRS_INIT;
        assert_int_equal(tok_obj_read(ctx, &USER, oids[i], &a), CKR_OK);
        const tok_attr *v = tok_attrs_find(&a, CKA_VALUE), *e = tok_attrs_find(&a, CKA_PRIVATE_EXPONENT);
        if (v && v->len == naes && memcmp(v->val, aes, naes) == 0)
            seen |= 1;
        if (v && v->len == ndata && memcmp(v->val, data, ndata) == 0)
            seen |= 2;
        if (e && e->len == nd && memcmp(e->val, d, nd) == 0)
            seen |= 4;
        tok_attrs_free(&a);
    }
    free(oids);
    assert_int_equal(seen, 7);
    tok_ctx_close(ctx);
}

/* ---- what the hostile review found ------------------------------------------ */

/* Make a token with SO and user PINs; log in as user. */
static tok_ctx *token_with_user(void)
{
    tok_ctx *ctx;
    CK_UTF8CHAR label[32];
    write_conf(NULL);
    memset(label, ' ', sizeof(label));
    memcpy(label, "pinb", 4);
    assert_int_equal(tok_ctx_open(TOK_CTX_CREATE, &ctx), CKR_OK);
    assert_int_equal(tok_token_init(ctx, 1, (const uint8_t *)SO_PIN, strlen(SO_PIN), label), CKR_OK);
    assert_int_equal(login(ctx, CKU_SO, SO_PIN), CKR_OK);
    assert_int_equal(tok_pin_init(ctx, 1, (const uint8_t *)USER_PIN, strlen(USER_PIN)), CKR_OK);
    tok_logout(ctx, 1);
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_OK);
    return ctx;
}

/* A cached private key asked for by the SO (who holds the token key but may
 * not see private objects): refused, and the key reference not left behind
 * for the caller to drop a second time (it was: a use-after-free). */
static void test_so_cannot_use_private_keys(void **state)
{
    (void)state;
    tok_ctx *ctx = token_with_user();
    const tok_access so = {.slot = 1, .rw = true, .who = CKU_SO};
    uint64_t k = store(ctx, CKO_SECRET_KEY, CKK_AES, true, "aes-private", aes_val, sizeof(aes_val), CKR_OK);
    tok_key *key = NULL;
    tok_attrs a = TOK_ATTRS_INIT;
    assert_int_equal(tok_obj_key(ctx, &USER, k, &key), CKR_OK); /* now in the key cache */
    assert_null(tok_attrs_find(tok_key_attrs(key), CKA_VALUE)); /* the key holds the value, its attributes do not */
    assert_non_null(tok_attrs_find(tok_key_attrs(key), CKA_LABEL));
    tok_key_unref(key);
    /* Asked while the key is cached (the cache is keyed by record, not by
     * caller); then, after logout, from the keystore. */
    for (int i = 0; i < 3; i++) {
        key = NULL;
        assert_int_equal(tok_obj_key(ctx, &so, k, &key), CKR_OBJECT_HANDLE_INVALID);
        assert_null(key);
        tok_key_unref(key);
    }
    tok_logout(ctx, 1);
    assert_int_equal(login(ctx, CKU_SO, SO_PIN), CKR_OK);
    for (int i = 0; i < 3; i++) {
        key = NULL;
        assert_int_equal(tok_obj_key(ctx, &so, k, &key), CKR_OBJECT_HANDLE_INVALID);
        assert_null(key);
        tok_key_unref(key);
    }
    assert_int_equal(tok_obj_read(ctx, &so, k, &a), CKR_OBJECT_HANDLE_INVALID);
    tok_ctx_close(ctx);
}

/* Private session objects go at logout (PKCS#11 C_Logout); public ones stay. */
static void test_logout_drops_private_session_objects(void **state)
{
    (void)state;
    tok_ctx *ctx = token_with_user();
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE priv[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_PRIVATE, &yes, 1}, {CKA_VALUE, "s", 1}};
    CK_ATTRIBUTE pub[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_PRIVATE, &no, 1}, {CKA_VALUE, "p", 1}};
    tok_attrs o = TOK_ATTRS_INIT;
    uint64_t hp = 0, hq = 0;
    /* The caller's access is decided under the current login. */
    tok_access now = USER;
    now.login_seq = tok_logout_seq(ctx);
    assert_int_equal(tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, priv, 3, &o), CKR_OK);
    assert_int_equal(tok_obj_store(ctx, &USER, &o, &hp), CKR_USER_NOT_LOGGED_IN); /* decided before a logout */
    assert_int_equal(tok_obj_store(ctx, &now, &o, &hp), CKR_OK);
    tok_attrs_free(&o);
    assert_int_equal(tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, pub, 3, &o), CKR_OK);
    assert_int_equal(tok_obj_store(ctx, &USER, &o, &hq), CKR_OK);
    tok_attrs_free(&o);
    assert_true(hp & TOK_SOBJ_BIT);
    tok_logout(ctx, 1);
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_OK);
    assert_int_equal(tok_obj_read(ctx, &USER, hp, &o), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(tok_obj_read(ctx, &USER, hq, &o), CKR_OK);
    tok_attrs_free(&o);
    tok_ctx_close(ctx);
}

/* A child forked while an attempt holds the token's lock does not keep it. */
static void test_fork_does_not_keep_attempt_lock(void **state)
{
    (void)state;
    tok_ctx *ctx = token_with_user();
    ks_attempt fd = KS_ATTEMPT_INIT, fd2 = KS_ATTEMPT_INIT;
    int p[2];
    assert_int_equal(ks_attempt_lock(tok_ctx_store(ctx), 1, 1000, &fd), KS_OK);
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char c;
        close(p[1]);
        while (read(p[0], &c, 1) < 0)
            ;
        _exit(0);
    }
    close(p[0]);
    ks_attempt_unlock(&fd);
    /* The child lives on; the lock must be free. */
    assert_int_equal(ks_attempt_lock(tok_ctx_store(ctx), 1, 300, &fd2), KS_OK);
    ks_attempt_unlock(&fd2);
    close(p[1]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    tok_ctx_close(ctx);
}

typedef struct {
    CK_ATTRIBUTE_TYPE t;
    bool to;
    uint64_t oid;
} flip_arg;

/* With the master key alone: set a clear boolean of an object's record. */
static int flip_fn(ks_txn *t, void *arg)
{
    flip_arg *f = arg;
    tok_attrs a = TOK_ATTRS_INIT;
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = ks_obj_get(t, 1, f->oid, &blob, &len);
    if (rc != KS_OK)
        return rc;
    assert_int_equal(tok_attrs_parse(blob, len, &a), 0);
    ks_buf_free(blob, len);
    assert_true(tok_env_present(&a));
    assert_int_equal(tok_attrs_set_bool(&a, f->t, f->to), 0);
    assert_int_equal(tok_attrs_serialize(&a, &blob, &len), 0);
    rc = ks_obj_put(t, 1, f->oid, blob, len);
    ks_buf_free(blob, len);
    tok_attrs_free(&a);
    return rc;
}

/* What a private object says it is and may do is bound to its envelope:
 * making a sensitive key extractable, or the object public, with the
 * master key alone is damage, reported. */
static void test_policy_bound_to_envelope(void **state)
{
    (void)state;
    tok_ctx *ctx = token_with_user();
    uint64_t k = store(ctx, CKO_SECRET_KEY, CKK_AES, true, "aes-private", aes_val, sizeof(aes_val), CKR_OK);
    uint64_t d = store(ctx, CKO_DATA, 0, true, "data-private", priv_data, sizeof(priv_data), CKR_OK);
    tok_attrs a = TOK_ATTRS_INIT;
    flip_arg f1 = {CKA_SENSITIVE, false, k}, f2 = {CKA_PRIVATE, false, d};
    assert_int_equal(ks_write(tok_ctx_store(ctx), flip_fn, &f1), KS_OK);
    assert_int_equal(tok_obj_read(ctx, &USER, k, &a), CKR_DEVICE_ERROR);
    assert_int_equal(ks_write(tok_ctx_store(ctx), flip_fn, &f2), KS_OK);
    assert_int_equal(tok_obj_read(ctx, &USER, d, &a), CKR_DEVICE_ERROR);
    const tok_access nobody = {.slot = 1, .rw = true, .who = TOK_NOBODY};
    assert_int_equal(tok_obj_read(ctx, &nobody, d, &a), CKR_DEVICE_ERROR);
    tok_ctx_close(ctx);
}

/* With the master key alone: PIN records cut back to version 1 and the
 * token key's check value removed, so that the next login would make a new
 * key escrowed under the master key. Refused: objects are in envelopes. */
static int downgrade_fn(ks_txn *t, void *arg)
{
    (void)arg;
    tok_attrs rec = TOK_ATTRS_INIT;
    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(ks_token_get(t, 1, &blob, &len), KS_OK);
    assert_int_equal(tok_attrs_parse(blob, len, &rec), 0);
    ks_buf_free(blob, len);
    CK_ATTRIBUTE_TYPE pins[] = {TOKR_SO_PIN, TOKR_USER_PIN};
    for (int i = 0; i < 2; i++) {
        uint8_t v1[TOK_PIN_REC_V1_LEN];
        const tok_attr *r = tok_attrs_find(&rec, pins[i]);
        assert_non_null(r);
        memcpy(v1, r->val, sizeof(v1));
        v1[0] = 1;
        assert_int_equal(tok_attrs_set(&rec, pins[i], v1, sizeof(v1)), 0);
    }
    tok_attrs_remove(&rec, TOKR_TK_KCV);
    assert_int_equal(tok_attrs_serialize(&rec, &blob, &len), 0);
    int rc = ks_token_put(t, 1, blob, len);
    ks_buf_free(blob, len);
    tok_attrs_free(&rec);
    return rc;
}

static void test_downgrade_refused(void **state)
{
    (void)state;
    tok_ctx *ctx = token_with_user();
    store(ctx, CKO_DATA, 0, true, "data-private", priv_data, sizeof(priv_data), CKR_OK);
    tok_logout(ctx, 1);
    assert_int_equal(ks_write(tok_ctx_store(ctx), downgrade_fn, NULL), KS_OK);
    assert_int_equal(login(ctx, CKU_USER, USER_PIN), CKR_DEVICE_ERROR);
    tok_binding b;
    CK_USER_TYPE w;
    assert_int_equal(tok_token_binding(ctx, 1, &b, &w), CKR_OK);
    assert_int_equal(b, TOK_BIND_NONE); /* and status says so */
    tok_ctx_close(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_values_need_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade, setup, teardown),
        cmocka_unit_test_setup_teardown(test_so_cannot_use_private_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logout_drops_private_session_objects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_does_not_keep_attempt_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_bound_to_envelope, setup, teardown),
        cmocka_unit_test_setup_teardown(test_downgrade_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
