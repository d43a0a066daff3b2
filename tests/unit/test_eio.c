/* Unit tests: an input/output error of the storage is not damage.
 *
 * A backend that wraps LMDB and fails the Nth read-type call (get, count,
 * cursor seek and next, dup_has, and the beginning and commit of
 * transactions) with KS_EIO, and every one after it until the fault is
 * removed (a storage that broke at that point: the reads the keystore runs
 * again from a new transaction, KS_READ_TRIES, fail too), counting calls
 * across the whole operation.
 * Each scenario is run once without a fault to count its calls, then once
 * for every N, each time on a fresh copy of the same keystore. Every run
 * must end in KS_EIO (nothing else: not "not found", not "damaged"), log and
 * say nothing of damage, missing records or backups, and leave the keystore
 * exactly as it was: it still opens, verifies clean, and holds the same
 * entries byte for byte. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "keystore/ks.h"
#include "keystore/ks_backend.h"
#include "keystore/ks_internal.h"
#include "tests/unit/ks_test_util.h"
#include "token/tok_admin.h"
#include "token/tok_policy.h"
#include "token/tok_token.h"

#define TOK_MAX_PIN_TRIES_TEST 10UL /* token/tok_internal.h TOK_MAX_PIN_TRIES */

/* ---- the fault-injecting backend ------------------------------------------ */

static const ks_backend_ops *const lmdb = &ks_lmdb_backend;
static long fault_calls; /* read-type calls since armed */
static long fault_at;    /* the first call that fails (1-based), and all after it; 0: none */
static bool fault_armed, fault_fired;
static bool fault_once; /* only call fault_at fails: a connection lost once, taken up again */

/* One more read-type call: true when it fails. */
static bool fault_tick(void)
{
    if (!fault_armed)
        return false;
    if (++fault_calls >= fault_at && fault_at > 0 && (!fault_once || fault_calls == fault_at)) {
        fault_fired = true;
        return true;
    }
    return false;
}

static void fault_arm(long at)
{
    fault_calls = 0;
    fault_at = at;
    fault_fired = false;
    fault_armed = true;
}

static void fault_disarm(void) { fault_armed = false; }

static int f_read_begin(ks_benv *e, ks_btxn **t)
{
    return fault_tick() ? KS_EIO : lmdb->read_begin(e, t);
}

static int f_write_begin(ks_benv *e, ks_btxn **t)
{
    return fault_tick() ? KS_EIO : lmdb->write_begin(e, t);
}

static int f_commit(ks_btxn *t)
{
    if (fault_tick()) {
        lmdb->abort(t); /* commit ends the transaction whatever the result */
        return KS_EIO;
    }
    return lmdb->commit(t);
}

/* Damage, not a fault: every object record read comes back with its last
 * byte (the GCM tag) flipped (test_tok_damage_not_retried). */
static bool damage_objects;
static long damage_gets;
static uint8_t damage_buf[1 << 16];

static int f_get(ks_btxn *t, ks_table tab, const void *k, size_t kl, ks_bval *v)
{
    if (fault_tick())
        return KS_EIO;
    int rc = lmdb->get(t, tab, k, kl, v);
    if (rc == KS_OK && damage_objects && tab == KS_TAB_OBJECTS && v->n > 0 && v->n <= sizeof(damage_buf)) {
        damage_gets++;
        memcpy(damage_buf, v->p, v->n);
        damage_buf[v->n - 1] ^= 0x5a;
        v->p = damage_buf;
    }
    return rc;
}

static int f_count(ks_btxn *t, ks_table tab, uint64_t *n)
{
    if (fault_tick()) {
        *n = 0; /* what a careless caller would take for the count */
        return KS_EIO;
    }
    return lmdb->count(t, tab, n);
}

static int f_dup_has(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    return fault_tick() ? KS_EIO : lmdb->dup_has(t, tab, k, kl, v, vl);
}

static int f_cur_seek(ks_bcur *c, int how, const void *k, size_t kl, ks_bval *key, ks_bval *val)
{
    return fault_tick() ? KS_EIO : lmdb->cur_seek(c, how, k, kl, key, val);
}

static int f_cur_next(ks_bcur *c, bool same_key, ks_bval *key, ks_bval *val)
{
    return fault_tick() ? KS_EIO : lmdb->cur_next(c, same_key, key, val);
}

/* A write transaction that loses its connection once (before COMMIT): the
 * Nth write-type call fails, ops->lost says so, and ks_write runs the
 * transaction again. */
static long wl_calls, wl_at;
static bool wl_armed, wl_lost, wl_fired;

static bool wl_tick(void)
{
    if (!wl_armed)
        return false;
    if (++wl_calls == wl_at) {
        wl_lost = wl_fired = true;
        return true;
    }
    return false;
}

static int w_write_begin(ks_benv *e, ks_btxn **t)
{
    wl_lost = false;
    return f_write_begin(e, t);
}

static int w_put(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    return wl_tick() ? KS_EIO : lmdb->put(t, tab, k, kl, v, vl);
}

static int w_del(ks_btxn *t, ks_table tab, const void *k, size_t kl)
{
    return wl_tick() ? KS_EIO : lmdb->del(t, tab, k, kl);
}

static int w_dup_add(ks_btxn *t, ks_table tab, const void *k, size_t kl, const void *v, size_t vl)
{
    return wl_tick() ? KS_EIO : lmdb->dup_add(t, tab, k, kl, v, vl);
}

static bool w_lost(ks_btxn *t)
{
    (void)t;
    return wl_lost;
}

static ks_backend_ops faulty;

static void faulty_init(void)
{
    faulty = ks_lmdb_backend;
    faulty.name = "faulty";
    faulty.read_begin = f_read_begin;
    faulty.write_begin = f_write_begin;
    faulty.commit = f_commit;
    faulty.get = f_get;
    faulty.count = f_count;
    faulty.dup_has = f_dup_has;
    faulty.cur_seek = f_cur_seek;
    faulty.cur_next = f_cur_next;
    faulty.write_begin = w_write_begin;
    faulty.put = w_put;
    faulty.del = w_del;
    faulty.dup_add = w_dup_add;
    faulty.lost = w_lost;
}

/* ---- the keystore every run starts from ------------------------------------ */

static char base[256];    /* holds the pristine keystore and the log */
static char logpath[300];
static uint8_t *pristine; /* its data.mdb */
static size_t pristine_len;
static uint8_t pristine_fp[32]; /* digest of every entry of every table */
static uint32_t tid1, tid2;
static uint64_t oids[3];
static const char *const labels[3] = {"alpha", "beta", "gamma"};
static ks_mkey mk;
static uint8_t *tok_pristine, *rot_img[2]; /* the token layer's and the rotation's starting images */

/* A digest of every entry of every table, read past the fault. */
static void fingerprint(ks_store *st, uint8_t out[32])
{
    ks_btxn *t;
    ks_bcur *c;
    ks_bval k, v;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned n = 0;
    assert_non_null(md);
    assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
    assert_int_equal(lmdb->read_begin(st->be, &t), KS_OK);
    for (int tab = 0; tab < KS_TAB_N; tab++) {
        assert_int_equal(lmdb->cur_open(t, (ks_table)tab, &c), KS_OK);
        int rc;
        for (rc = lmdb->cur_seek(c, KS_BSEEK_FIRST, NULL, 0, &k, &v); rc == KS_OK; rc = lmdb->cur_next(c, false, &k, &v)) {
            uint64_t l[3] = {(uint64_t)tab, k.n, v.n};
            EVP_DigestUpdate(md, l, sizeof(l));
            EVP_DigestUpdate(md, k.p, k.n);
            EVP_DigestUpdate(md, v.p, v.n);
        }
        assert_int_equal(rc, KS_ENOTFOUND);
        lmdb->cur_close(c);
    }
    lmdb->read_end(t);
    assert_int_equal(EVP_DigestFinal_ex(md, out, &n), 1);
    EVP_MD_CTX_free(md);
}

static void read_file(const char *path, uint8_t **buf, size_t *len)
{
    struct stat sb;
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &sb), 0);
    *len = (size_t)sb.st_size;
    *buf = malloc(*len ? *len : 1);
    assert_non_null(*buf);
    assert_int_equal(read(fd, *buf, *len), (ssize_t)*len);
    close(fd);
}

/* A fresh copy of the pristine keystore, in a directory of its own. */
static void fresh_copy(char dir[300])
{
    char p[400];
    snprintf(dir, 300, "%s/run-XXXXXX", base);
    assert_non_null(mkdtemp(dir));
    assert_int_equal(chmod(dir, 0700), 0);
    snprintf(p, sizeof(p), "%s/data.mdb", dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, pristine, pristine_len), (ssize_t)pristine_len);
    close(fd);
}

static int token_fn(ks_txn *x, void *arg)
{
    (void)arg;
    int rc = ks_token_new_id(x, &tid2);
    return rc == KS_OK ? ks_token_put(x, tid2, (const uint8_t *)"second token", 12) : rc;
}

static int group_setup(void **state)
{
    (void)state;
    char dir[300], p[400];
    ks_err err = KS_ERR_INIT;
    ks_store *st;

    faulty_init();
    snprintf(base, sizeof(base), "/tmp/p11mk-eio-XXXXXX");
    assert_non_null(mkdtemp(base));
    snprintf(logpath, sizeof(logpath), "%s/log", base);
    ks_log_setup(logpath, KS_LOG_INFO, "test_eio");
    ks_mkey_default(&mk);
    snprintf(dir, sizeof(dir), "%s/pristine", base);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(ks_open(dir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    for (int i = 0; i < 3; i++) {
        put_arg a = {.tid = tid1, .data = labels[i]};
        assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
        tid1 = a.tid;
        oids[i] = a.oid;
    }
    assert_int_equal(ks_write(st, token_fn, NULL), KS_OK);
    fingerprint(st, pristine_fp);
    ks_close(st);
    snprintf(p, sizeof(p), "%s/data.mdb", dir);
    read_file(p, &pristine, &pristine_len);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    free(pristine);
    free(tok_pristine);
    free(rot_img[0]);
    free(rot_img[1]);
    rm_rf(base);
    return 0;
}

/* ---- checks ---------------------------------------------------------------- */

/* Words that say damage, absence or a restore: none belongs to an I/O error. */
static const char *const damage_words[] = {"damaged", "restore", "missing", "do not match", "does not match",
                                           "failed authentication", "altered", "vouches for", "holds no p11mk",
                                           "put back", "edited", "verify'", NULL};

static const char *damage_in(const char *s)
{
    for (int i = 0; damage_words[i]; i++)
        if (strstr(s, damage_words[i]))
            return damage_words[i];
    return NULL;
}

static void log_clear(void)
{
    int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
}

/* The log since log_clear, checked for damage reports. */
static void log_check(const char *scenario, long n)
{
    uint8_t *buf;
    size_t len;
    read_file(logpath, &buf, &len);
    char *s = realloc(buf, len + 1);
    assert_non_null(s);
    s[len] = 0;
    const char *w = damage_in(s);
    if (w)
        fail_msg("%s, call %ld failing: the log reports damage (\"%s\") for an I/O error:\n%s", scenario, n, w, s);
    free(s);
}

static void verify_cb(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg)
{
    (void)arg;
    print_error("verify: %c token %u object %llu: %s %s\n", kind, token, (unsigned long long)oid, ks_strerror(err),
                what ? what : "");
}

/* The keystore as it was: same entries, clean verify, objects open. */
static void check_unchanged(ks_store *st, const char *scenario, long n)
{
    uint8_t fp[32];
    uint64_t checked = 0, failed = 0;
    fingerprint(st, fp);
    if (memcmp(fp, pristine_fp, sizeof(fp)) != 0)
        fail_msg("%s, call %ld failing: the keystore was changed by a failed operation", scenario, n);
    assert_int_equal(ks_verify(st, verify_cb, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(read_obj(st, tid1, oids[i]), KS_OK);
}

/* ---- scenarios --------------------------------------------------------------- */

typedef int (*scenario_fn)(ks_store *st);

static int sc_read_obj(ks_store *st) { return read_obj(st, tid1, oids[1]); }

static int lookup_cb(uint64_t oid, void *arg)
{
    *(uint64_t *)arg = oid;
    return 0;
}

static int sc_find(ks_store *st)
{
    ks_txn *x;
    uint64_t found = 0;
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    rc = ks_idx_lookup(x, tid1, 3, "beta", 4, lookup_cb, &found);
    if (rc == KS_OK)
        rc = ks_idx_contains(x, tid1, 3, "gamma", 5, oids[2]);
    ks_read_end(x);
    if (rc == KS_OK)
        assert_int_equal(found, oids[1]);
    return rc;
}

static int sc_foreach(ks_store *st)
{
    ks_txn *x;
    uint64_t n = 0;
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    rc = ks_obj_foreach(x, tid1, lookup_cb, &n);
    if (rc == KS_OK)
        rc = ks_token_count_objects(x, tid1, &n);
    if (rc == KS_OK)
        assert_int_equal(n, 3);
    ks_read_end(x);
    return rc;
}

static int sc_token_get(ks_store *st)
{
    ks_txn *x;
    uint8_t *b = NULL;
    size_t l = 0;
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    rc = ks_token_get(x, tid1, &b, &l);
    ks_buf_free(b, l);
    if (rc == KS_OK)
        rc = ks_token_exists(x, tid2);
    ks_read_end(x);
    return rc;
}

static int sc_token_list(ks_store *st)
{
    ks_txn *x;
    uint32_t *ids = NULL, next = 0;
    size_t n = 0;
    int rc = ks_read_begin(st, &x);
    if (rc != KS_OK)
        return rc;
    rc = ks_token_list(x, &ids, &n);
    if (rc == KS_OK)
        rc = ks_token_new_id(x, &next);
    if (rc == KS_OK)
        assert_int_equal(n, 2);
    free(ids);
    ks_read_end(x);
    return rc;
}

static int sc_info(ks_store *st)
{
    ks_info info;
    int rc = ks_get_info(st, &info);
    if (rc == KS_OK) {
        assert_int_equal(info.n_tokens, 2);
        assert_int_equal(info.n_objects, 3);
    }
    return rc;
}

static int sc_verify(ks_store *st)
{
    uint64_t checked = 0, failed = 0;
    int rc = ks_verify(st, verify_cb, NULL, &checked, &failed);
    assert_int_equal(failed, 0); /* a read that failed is not a record that failed */
    return rc;
}

static int token_put_fn(ks_txn *x, void *arg)
{
    (void)arg;
    return ks_token_put(x, tid1, (const uint8_t *)"token v2", 8);
}

static int sc_token_put(ks_store *st) { return ks_write(st, token_put_fn, NULL); }

static int sc_token_new(ks_store *st)
{
    put_arg a = {0};
    return ks_write(st, put_fn, &a);
}

static int sc_obj_create(ks_store *st)
{
    put_arg a = {.tid = tid1, .data = "delta"};
    return ks_write(st, put_fn, &a);
}

static int sc_obj_update(ks_store *st)
{
    put_arg a = {.tid = tid1, .oid = oids[0], .data = "alpha2", .update = true};
    return ks_write(st, put_fn, &a);
}

static int del_fn(ks_txn *x, void *arg)
{
    (void)arg;
    int rc = ks_obj_del(x, tid1, oids[1]);
    return rc == KS_OK ? ks_idx_del(x, tid1, 3, "beta", 4, oids[1]) : rc;
}

static int sc_obj_delete(ks_store *st) { return ks_write(st, del_fn, NULL); }

static int token_del_fn(ks_txn *x, void *arg)
{
    (void)arg;
    return ks_token_del(x, tid2);
}

static int sc_token_del(ks_store *st) { return ks_write(st, token_del_fn, NULL); }

/* Run fn on a fresh copy opened through the faulty backend, with call n
 * failing (0: none); open: the open itself is part of the run. Returns the
 * number of calls made. */
static long run_once(const char *name, scenario_fn fn, bool open_too, bool writes, long n)
{
    char dir[300];
    ks_err err = KS_ERR_INIT;
    ks_store *st = NULL;
    int rc;

    fresh_copy(dir);
    log_clear();
    if (open_too) {
        fault_arm(n);
        rc = ks_open_backend(dir, &faulty, &mk, 0, &st, &err);
        fault_disarm();
        if (n == 0)
            assert_int_equal(rc, KS_OK);
    } else {
        assert_int_equal(ks_open_backend(dir, &faulty, &mk, 0, &st, &err), KS_OK);
        fault_arm(n);
        rc = fn(st);
        fault_disarm();
    }
    long calls = fault_calls;
    if (n == 0) {
        if (rc != KS_OK)
            fail_msg("%s without a fault: %s", name, ks_strerror(rc));
    } else {
        if (!fault_fired)
            fail_msg("%s: call %ld was never made (%ld calls): the scenario is not repeatable", name, n, calls);
        if (rc != KS_EIO)
            fail_msg("%s, call %ld failing: %s (%d), not the input/output error%s%s", name, n, ks_strerror(rc), rc,
                     err.msg[0] ? ": " : "", err.msg);
        const char *w = damage_in(err.msg);
        if (w)
            fail_msg("%s, call %ld failing: the error reports damage (\"%s\"): %s", name, n, w, err.msg);
    }
    log_check(name, n);
    if (!st) {
        /* The open failed: the keystore must open as before. */
        assert_int_equal(ks_open_backend(dir, &faulty, &mk, 0, &st, &err), KS_OK);
    }
    if (n != 0 || !writes)
        check_unchanged(st, name, n);
    log_check(name, n);
    ks_close(st);
    rm_rf(dir);
    return calls;
}

static void run_scenario(const char *name, scenario_fn fn, bool open_too, bool writes)
{
    long count = run_once(name, fn, open_too, writes, 0);
    assert_true(count > 0);
    for (long n = 1; n <= count; n++)
        run_once(name, fn, open_too, writes, n);
    print_message("%s: %ld fault points\n", name, count);
}

static void test_open(void **state)
{
    (void)state;
    run_scenario("open", NULL, true, false);
}

/* A single failed read in the open (the storage fails call N once, then
 * answers again: a connection lost and taken up): the open's reads run again
 * from a new transaction (KS_READ_TRIES), so the open succeeds, says nothing
 * of damage, and the store it gives is the keystore as it is: the same id,
 * counters and entries, a clean verify, every object readable, and no stale
 * state kept from the failed attempt (the ring, the index MAC: a lookup by
 * an indexed value finds its object). */
static void test_open_transient(void **state)
{
    (void)state;
    char dir[300];
    ks_err err = KS_ERR_INIT;
    ks_store *st = NULL;
    ks_info want, got;

    fresh_copy(dir);
    assert_int_equal(ks_open_backend(dir, &faulty, &mk, 0, &st, &err), KS_OK);
    assert_int_equal(ks_get_info(st, &want), KS_OK);
    ks_close(st);
    rm_rf(dir);

    fault_once = true;
    fault_arm(0);
    fault_at = 1000000; /* counting only */
    fresh_copy(dir);
    assert_int_equal(ks_open_backend(dir, &faulty, &mk, 0, &st, &err), KS_OK);
    long count = fault_calls;
    fault_disarm();
    ks_close(st);
    rm_rf(dir);
    assert_true(count > 0);

    long failed_opens = 0;
    for (long n = 1; n <= count; n++) {
        fresh_copy(dir);
        log_clear();
        memset(&err, 0, sizeof(err));
        st = NULL;
        fault_arm(n);
        int rc = ks_open_backend(dir, &faulty, &mk, 0, &st, &err);
        fault_disarm();
        if (rc != KS_OK) {
            failed_opens++;
            print_message("open, call %ld failing once: %s: %s\n", n, ks_strerror(rc), err.msg);
            if (rc != KS_EIO)
                fail_msg("open, call %ld failing once: %s, not the input/output error: %s", n, ks_strerror(rc),
                         err.msg);
            const char *w = damage_in(err.msg);
            if (w)
                fail_msg("open, call %ld failing once: the error reports damage (\"%s\"): %s", n, w, err.msg);
            assert_int_equal(ks_open_backend(dir, &faulty, &mk, 0, &st, &err), KS_OK);
        }
        log_check("open (failing once)", n);
        assert_int_equal(ks_get_info(st, &got), KS_OK);
        assert_memory_equal(got.keystore_id, want.keystore_id, sizeof(want.keystore_id));
        assert_int_equal(got.epoch, want.epoch);
        assert_int_equal(got.n_tokens, want.n_tokens);
        assert_int_equal(got.n_objects, want.n_objects);
        assert_int_equal(sc_find(st), KS_OK); /* the index MAC is this keystore's */
        check_unchanged(st, "open (failing once)", n);
        log_check("open (failing once)", n);
        ks_close(st);
        rm_rf(dir);
    }
    fault_once = false;
    print_message("open, failing once: %ld fault points, %ld opens failed\n", count, failed_opens);
    /* Each read the open makes is run again from a new transaction: a
     * single lost read never fails the open. */
    assert_int_equal(failed_opens, 0);
}

#define SCENARIO(fn, writes)                                                                                          \
    static void test_##fn(void **state)                                                                              \
    {                                                                                                                 \
        (void)state;                                                                                                  \
        run_scenario(#fn, sc_##fn, false, writes);                                                                    \
    }
SCENARIO(read_obj, false)
SCENARIO(find, false)
SCENARIO(foreach, false)
SCENARIO(token_get, false)
SCENARIO(token_list, false)
SCENARIO(info, false)
SCENARIO(verify, false)
SCENARIO(token_put, true)
SCENARIO(token_new, true)
SCENARIO(obj_create, true)
SCENARIO(obj_update, true)
SCENARIO(obj_delete, true)
SCENARIO(token_del, true)

/* ---- rotation steps ----------------------------------------------------------- */

/* The pristine keystore with a new master key staged (rot_staged), and the
 * same after the rewrap (rot_ready). */
static ks_mkey newkey;
static size_t rot_len[2];
static uint8_t rot_fp[2][32];

static void save_image(const char *dir, ks_store *st, int which)
{
    char p[400];
    fingerprint(st, rot_fp[which]);
    snprintf(p, sizeof(p), "%s/data.mdb", dir);
    read_file(p, &rot_img[which], &rot_len[which]);
}

/* The current key, read with a key file that also holds the staged one
 * (as the lifecycle keeps it): every open finds both. */
static ks_mkey rmk;

static int rot_setup(void **state)
{
    (void)state;
    char dir[300];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    uint64_t done = 0;
    bool stopped = false, changed = false;

    assert_int_equal(ks_mkey_generate(&newkey), KS_OK);
    ks_registers regs;
    memset(&regs, 0, sizeof(regs));
    regs.current = mk;
    regs.has_new = true;
    regs.staged = newkey;
    rmk = mk;
    snprintf(rmk.source, sizeof(rmk.source), "%s/rot.key", base);
    rmk.file_mode = 0600;
    assert_int_equal(ks_reg_save(rmk.source, &regs, &err), KS_OK);
    fresh_copy(dir);
    assert_int_equal(ks_open(dir, &rmk, 0, &st, &err), KS_OK);
    assert_int_equal(ks_rot_stage(st, &newkey, 0, &err), KS_OK);
    (void)ks_rot_activate(st, &changed);
    ks_close(st);
    /* Closed and opened again: the image is taken as it is on disk. */
    assert_int_equal(ks_open(dir, &rmk, 0, &st, &err), KS_OK);
    ks_info info;
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.rot_state, KS_ROT_STAGED);
    ks_close(st);
    assert_int_equal(ks_open(dir, &rmk, 0, &st, &err), KS_OK);
    save_image(dir, st, 0);
    assert_int_equal(ks_rot_rewrap(st, 100000, NULL, NULL, &done, &stopped, &err), KS_OK);
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.rot_state, KS_ROT_READY);
    ks_close(st);
    assert_int_equal(ks_open(dir, &rmk, 0, &st, &err), KS_OK);
    save_image(dir, st, 1);
    ks_close(st);
    rm_rf(dir);
    return 0;
}

typedef int (*rot_fn)(ks_store *st, ks_err *err);

static int rsc_rewrap(ks_store *st, ks_err *err)
{
    uint64_t done = 0;
    bool stopped = false;
    return ks_rot_rewrap(st, 100000, NULL, NULL, &done, &stopped, err); /* one batch: one transaction */
}

static int rsc_commit(ks_store *st, ks_err *err) { return ks_rot_commit(st, false, 0, err); }

static long rot_run_once(const char *name, rot_fn fn, int which, long n)
{
    char dir[300], p[400];
    ks_err err = KS_ERR_INIT;
    ks_store *st;

    snprintf(dir, sizeof(dir), "%s/rrun-XXXXXX", base);
    assert_non_null(mkdtemp(dir));
    snprintf(p, sizeof(p), "%s/data.mdb", dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, rot_img[which], rot_len[which]), (ssize_t)rot_len[which]);
    close(fd);
    log_clear();
    assert_int_equal(ks_open_backend(dir, &faulty, &rmk, 0, &st, &err), KS_OK);
    fault_arm(n);
    int rc = fn(st, &err);
    fault_disarm();
    long calls = fault_calls;
    if (n == 0 && rc != KS_OK)
        fail_msg("%s without a fault: %s: %s", name, ks_strerror(rc), err.msg);
    if (n != 0) {
        if (!fault_fired)
            fail_msg("%s: call %ld was never made (%ld calls)", name, n, calls);
        if (rc != KS_EIO)
            fail_msg("%s, call %ld failing: %s, not the input/output error: %s", name, n, ks_strerror(rc), err.msg);
        const char *w = damage_in(err.msg);
        if (w)
            fail_msg("%s, call %ld failing: the error reports damage (\"%s\"): %s", name, n, w, err.msg);
        uint8_t fp[32];
        uint64_t checked = 0, failed = 0;
        fingerprint(st, fp);
        if (memcmp(fp, rot_fp[which], sizeof(fp)) != 0)
            fail_msg("%s, call %ld failing: the keystore was changed by a failed step", name, n);
        assert_int_equal(ks_verify(st, verify_cb, NULL, &checked, &failed), KS_OK);
        assert_int_equal(failed, 0);
    }
    log_check(name, n);
    ks_close(st);
    rm_rf(dir);
    return calls;
}

static void rot_run_scenario(const char *name, rot_fn fn, int which)
{
    long count = rot_run_once(name, fn, which, 0);
    assert_true(count > 0);
    for (long n = 1; n <= count; n++)
        rot_run_once(name, fn, which, n);
    print_message("%s: %ld fault points\n", name, count);
}

static void test_rot_rewrap(void **state)
{
    (void)state;
    rot_run_scenario("rot_rewrap", rsc_rewrap, 0);
}

static void test_rot_commit(void **state)
{
    (void)state;
    rot_run_scenario("rot_commit", rsc_commit, 1);
}

/* ---- the token layer, on a keystore configured with the faulty backend ---- */

static char tok_base[300];
static size_t tok_pristine_len;
static uint8_t tok_pristine_fp[32];
static uint64_t tok_oids[2];

/* dir/p11mk.conf names dir/ks on the faulty backend and the shared log. */
static void tok_conf(const char *dir)
{
    char conf[400];
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "keystore = %s/ks\nbackend = faulty\nlog = %s\nlog_level = info\n", dir, logpath);
    fclose(f);
    assert_int_equal(setenv("P11MK_CONF", conf, 1), 0);
}

static const tok_access pub_rw = {.slot = 1, .rw = true, .who = CKU_USER};

static CK_RV store_public(tok_ctx *ctx, const char *label, uint64_t *oid)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_TOKEN, &yes, 1},
                        {CKA_PRIVATE, &no, 1},
                        {CKA_LABEL, (void *)label, strlen(label)}};
    tok_attrs obj = TOK_ATTRS_INIT;
    assert_int_equal(tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, t, 4, &obj),
                     CKR_OK);
    CK_RV rv = tok_obj_store(ctx, &pub_rw, &obj, oid);
    tok_attrs_free(&obj);
    return rv;
}

static int tok_group_setup(void **state)
{
    (void)state;
    tok_ctx *ctx;
    char p[400];
    CK_UTF8CHAR label[32];

    assert_int_equal(ks_backend_register(&faulty), KS_OK);
    snprintf(tok_base, sizeof(tok_base), "%s/tpristine", base);
    assert_int_equal(mkdir(tok_base, 0700), 0);
    tok_conf(tok_base);
    assert_int_equal(tok_ctx_open(TOK_CTX_CREATE, &ctx), CKR_OK);
    memset(label, ' ', sizeof(label));
    memcpy(label, "eio", 3);
    assert_int_equal(tok_token_init(ctx, 1, (const uint8_t *)"12345678", 8, label), CKR_OK);
    assert_int_equal(store_public(ctx, "one", &tok_oids[0]), CKR_OK);
    assert_int_equal(store_public(ctx, "two", &tok_oids[1]), CKR_OK);
    fingerprint(tok_ctx_store(ctx), tok_pristine_fp);
    tok_ctx_close(ctx);
    snprintf(p, sizeof(p), "%s/ks/data.mdb", tok_base);
    read_file(p, &tok_pristine, &tok_pristine_len);
    return 0;
}

static void tok_fresh_copy(char dir[300])
{
    char p[400];
    snprintf(dir, 300, "%s/trun-XXXXXX", base);
    assert_non_null(mkdtemp(dir));
    assert_int_equal(chmod(dir, 0700), 0);
    snprintf(p, sizeof(p), "%s/ks", dir);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(p, sizeof(p), "%s/ks/data.mdb", dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, tok_pristine, tok_pristine_len), (ssize_t)tok_pristine_len);
    close(fd);
    tok_conf(dir);
}

typedef CK_RV (*tok_scenario_fn)(tok_ctx *ctx);

static CK_RV tsc_info(tok_ctx *ctx)
{
    CK_TOKEN_INFO info;
    return tok_token_info(ctx, 1, &info);
}

/* The free slot (2): a present, uninitialized token; a list not read is a
 * device error, not "no such slot" (tok_free_slot_id answered 0). */
static CK_RV tsc_free_info(tok_ctx *ctx)
{
    CK_TOKEN_INFO info;
    CK_RV rv = tok_token_info(ctx, 2, &info);
    if (rv == CKR_SLOT_ID_INVALID)
        fail_msg("the free slot's token info answered CKR_SLOT_ID_INVALID");
    return rv;
}

static CK_RV tsc_slots(tok_ctx *ctx)
{
    CK_SLOT_ID *ids = NULL;
    CK_ULONG n = 0;
    CK_RV rv = tok_slot_list(ctx, &ids, &n);
    if (rv == CKR_OK)
        assert_int_equal(n, 2); /* token 1 and the free slot */
    free(ids);
    return rv;
}

static CK_RV tsc_rows(tok_ctx *ctx)
{
    tok_token_row *rows = NULL;
    size_t n = 0;
    CK_RV rv = tok_token_rows(ctx, &rows, &n);
    if (rv == CKR_OK) {
        assert_int_equal(n, 1);
        assert_int_equal(rows[0].objects, 2);
    }
    free(rows);
    return rv;
}

static CK_RV tsc_read(tok_ctx *ctx)
{
    tok_attrs a = TOK_ATTRS_INIT;
    CK_RV rv = tok_obj_read(ctx, &pub_rw, tok_oids[1], &a);
    tok_attrs_free(&a);
    return rv;
}

static CK_RV tsc_find(tok_ctx *ctx)
{
    CK_ATTRIBUTE t[] = {{CKA_LABEL, (void *)"one", 3}};
    uint64_t *found = NULL;
    size_t n = 0;
    CK_RV rv = tok_obj_candidates(ctx, 1, t, 1, &found, &n);
    if (rv == CKR_OK) {
        assert_int_equal(n, 1);
        assert_int_equal(found[0], tok_oids[0]);
    }
    free(found);
    return rv;
}

/* C_WaitForSlotEvent's first look at the slots (the open's slot watch). */
static CK_RV tsc_watch(tok_ctx *ctx)
{
    tok_slot_watch *w = NULL;
    CK_RV rv = tok_slot_watch_new(ctx, &w);
    tok_slot_watch_free(w);
    return rv;
}

static CK_RV tsc_create(tok_ctx *ctx)
{
    uint64_t oid = 0;
    return store_public(ctx, "three", &oid);
}

static CK_RV tsc_destroy(tok_ctx *ctx) { return tok_obj_destroy(ctx, &pub_rw, tok_oids[0]); }

static CK_RV tsc_verify_index(tok_ctx *ctx)
{
    unsigned long long missing = 0;
    long long checked = tok_verify_index(ctx, NULL, NULL, &missing);
    assert_int_equal(missing, 0); /* an entry not read is not a missing entry */
    return checked < 0 ? CKR_DEVICE_ERROR : CKR_OK;
}

static long tok_run_once(const char *name, tok_scenario_fn fn, bool writes, long n)
{
    char dir[300];
    tok_ctx *ctx = NULL;
    CK_RV rv;

    tok_fresh_copy(dir);
    log_clear();
    if (!fn) {
        fault_arm(n);
        rv = tok_ctx_open(0, &ctx);
        fault_disarm();
        if (rv != CKR_OK) {
            ctx = NULL;
            const tok_open_error *e = tok_ctx_error();
            if (n && e->rc != KS_EIO)
                fail_msg("%s, call %ld failing: the open failed with %s, not the input/output error: %s", name, n,
                         ks_strerror(e->rc), e->err.msg);
            const char *w = damage_in(e->err.msg);
            if (w)
                fail_msg("%s, call %ld failing: the error reports damage (\"%s\"): %s", name, n, w, e->err.msg);
        }
    } else {
        assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
        fault_arm(n);
        rv = fn(ctx);
        fault_disarm();
    }
    long calls = fault_calls;
    if (n == 0) {
        if (rv != CKR_OK)
            fail_msg("%s without a fault: CK_RV 0x%lx", name, (unsigned long)rv);
    } else {
        if (!fault_fired)
            fail_msg("%s: call %ld was never made (%ld calls): the scenario is not repeatable", name, n, calls);
        if (fn && rv != CKR_DEVICE_ERROR)
            fail_msg("%s, call %ld failing: CK_RV 0x%lx, not CKR_DEVICE_ERROR", name, n, (unsigned long)rv);
        if (!fn && rv == CKR_OK)
            fail_msg("%s, call %ld failing: the open succeeded", name, n);
    }
    log_check(name, n);
    if (!ctx)
        assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    if (n != 0 || !writes) {
        uint8_t fp[32];
        uint64_t checked = 0, failed = 0;
        unsigned long long missing = 0;
        fingerprint(tok_ctx_store(ctx), fp);
        if (memcmp(fp, tok_pristine_fp, sizeof(fp)) != 0)
            fail_msg("%s, call %ld failing: the keystore was changed by a failed operation", name, n);
        assert_int_equal(ks_verify(tok_ctx_store(ctx), verify_cb, NULL, &checked, &failed), KS_OK);
        assert_int_equal(failed, 0);
        assert_int_equal(tok_verify_index(ctx, NULL, NULL, &missing), 2);
        assert_int_equal(missing, 0);
    }
    log_check(name, n);
    tok_ctx_close(ctx);
    rm_rf(dir);
    return calls;
}

static void tok_run_scenario(const char *name, tok_scenario_fn fn, bool writes)
{
    long count = tok_run_once(name, fn, writes, 0);
    assert_true(count > 0);
    for (long n = 1; n <= count; n++)
        tok_run_once(name, fn, writes, n);
    print_message("%s: %ld fault points\n", name, count);
}

static void test_tok_open(void **state)
{
    (void)state;
    tok_run_scenario("tok_open", NULL, false);
}

#define TOK_SCENARIO(fn, writes)                                                                                      \
    static void test_tok_##fn(void **state)                                                                          \
    {                                                                                                                 \
        (void)state;                                                                                                  \
        tok_run_scenario("tok_" #fn, tsc_##fn, writes);                                                               \
    }
TOK_SCENARIO(info, false)
TOK_SCENARIO(free_info, false)
TOK_SCENARIO(slots, false)
TOK_SCENARIO(rows, false)
TOK_SCENARIO(read, false)
TOK_SCENARIO(find, false)
TOK_SCENARIO(watch, false)
TOK_SCENARIO(verify_index, false)
TOK_SCENARIO(create, true)
TOK_SCENARIO(destroy, true)

/* ---- an application's reads, failing once ------------------------------------
 * The storage fails read call N once, then answers again (a database
 * connection lost mid-read whose read could not go on over another): the
 * token layer's reads for an application's call run again from a new
 * transaction (read_again in tok_token.c), so the call answers as it does
 * without a fault, and logs nothing of damage. */

static CK_RV tsc_match(tok_ctx *ctx)
{
    CK_ATTRIBUTE t[] = {{CKA_LABEL, (void *)"one", 3}};
    bool match = false;
    CK_RV rv = tok_obj_match(ctx, &pub_rw, tok_oids[0], t, 1, &match);
    if (rv == CKR_OK && !match)
        fail_msg("tok_obj_match: object one does not match its own label");
    return rv;
}

/* A data object asked for as a key: read, then refused as no key. */
static CK_RV tsc_key(tok_ctx *ctx)
{
    tok_key *k = NULL;
    CK_RV rv = tok_obj_key(ctx, &pub_rw, tok_oids[0], &k);
    tok_key_unref(k);
    return rv == CKR_OBJECT_HANDLE_INVALID ? CKR_OK : rv == CKR_OK ? CKR_GENERAL_ERROR : rv;
}

static void tok_transient(const char *name, tok_scenario_fn fn)
{
    char dir[300];
    tok_ctx *ctx = NULL;
    long count;

    tok_fresh_copy(dir);
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    fault_once = true;
    fault_arm(0);
    fault_at = 1000000; /* counting only */
    assert_int_equal(fn(ctx), CKR_OK);
    count = fault_calls;
    fault_disarm();
    tok_ctx_close(ctx);
    rm_rf(dir);
    assert_true(count > 0);
    for (long n = 1; n <= count; n++) {
        tok_fresh_copy(dir);
        log_clear();
        assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
        fault_arm(n);
        CK_RV rv = fn(ctx);
        fault_disarm();
        if (!fault_fired)
            fail_msg("%s: call %ld was never made (%ld calls)", name, n, count);
        if (rv != CKR_OK)
            fail_msg("%s, call %ld failing once: CK_RV 0x%lx, not the answer without a fault", name, n,
                     (unsigned long)rv);
        log_check(name, n);
        tok_ctx_close(ctx);
        rm_rf(dir);
    }
    fault_once = false;
    print_message("%s, failing once: %ld fault points, each answered\n", name, count);
}

static void test_tok_reads_transient(void **state)
{
    (void)state;
    tok_transient("tok_read", tsc_read);
    tok_transient("tok_find", tsc_find);
    tok_transient("tok_match", tsc_match);
    tok_transient("tok_key", tsc_key);
    tok_transient("tok_watch", tsc_watch);
}


/* ---- hostile: a private key's reads failing once, the user logged in ------
 * The key is built, cached and handed out through the retries; a caller not
 * logged in never gets it, a second read comes from the cache, a find over
 * every object (a cursor, no index) failing mid-way starts over. */

static const tok_access user_rw = {.slot = 1, .rw = true, .who = CKU_USER};
static const tok_access nobody = {.slot = 1, .rw = false, .who = (CK_USER_TYPE)-1};
static uint64_t hk_priv, hk_pub;

static uint64_t store_aes(tok_ctx *ctx, bool priv, const char *label)
{
    static const uint8_t v[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL yes = CK_TRUE, pv = priv ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &yes, 1},
                        {CKA_PRIVATE, &pv, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_LABEL, (void *)label, strlen(label)},
                        {CKA_VALUE, (void *)v, sizeof(v)}};
    tok_attrs obj = TOK_ATTRS_INIT;
    uint64_t oid = 0;
    assert_int_equal(tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, t, 7, &obj),
                     CKR_OK);
    assert_int_equal(tok_obj_store(ctx, &user_rw, &obj, &oid), CKR_OK);
    tok_attrs_free(&obj);
    return oid;
}

static CK_RV hsc_all(tok_ctx *ctx)
{
    CK_RV rv;
    tok_key *k = NULL, *k2 = NULL;
    tok_attrs a = TOK_ATTRS_INIT;
    uint64_t *found = NULL;
    size_t n = 0;
    bool match = false;
    CK_ATTRIBUTE lt[] = {{CKA_LABEL, (void *)"hk-priv", 7}};

    if ((rv = tok_obj_key(ctx, &nobody, hk_priv, &k)) != CKR_OBJECT_HANDLE_INVALID)
        fail_msg("private key to a caller not logged in: 0x%lx", (unsigned long)rv);
    assert_null(k);
    if ((rv = tok_obj_key(ctx, &user_rw, hk_priv, &k)) != CKR_OK)
        return rv;
    assert_non_null(k);
    assert_true(tok_key_private(k));
    if ((rv = tok_obj_key(ctx, &nobody, hk_priv, &k2)) != CKR_OBJECT_HANDLE_INVALID)
        fail_msg("cached private key to a caller not logged in: 0x%lx", (unsigned long)rv);
    assert_null(k2);
    rv = tok_obj_key(ctx, &user_rw, hk_priv, &k2);
    if (rv == CKR_OK)
        assert_ptr_equal(k, k2); /* the cache's */
    tok_key_unref(k2);
    tok_key_unref(k);
    if (rv != CKR_OK)
        return rv;
    if ((rv = tok_obj_key(ctx, &user_rw, hk_pub, &k)) != CKR_OK)
        return rv;
    assert_false(tok_key_private(k));
    tok_key_unref(k);
    if ((rv = tok_obj_read(ctx, &nobody, hk_priv, &a)) != CKR_OBJECT_HANDLE_INVALID)
        fail_msg("private object read by a caller not logged in: 0x%lx", (unsigned long)rv);
    assert_int_equal(a.n, 0);
    if ((rv = tok_obj_read(ctx, &user_rw, hk_priv, &a)) != CKR_OK)
        return rv;
    assert_true(tok_attrs_find(&a, CKA_VALUE) != NULL);
    tok_attrs_free(&a);
    if ((rv = tok_obj_match(ctx, &nobody, hk_priv, lt, 1, &match)) != CKR_OK)
        return rv;
    if (match)
        fail_msg("private object matched for a caller not logged in");
    if ((rv = tok_obj_match(ctx, &user_rw, hk_priv, lt, 1, &match)) != CKR_OK)
        return rv;
    assert_true(match);
    if ((rv = tok_obj_candidates(ctx, 1, NULL, 0, &found, &n)) != CKR_OK)
        return rv;
    free(found);
    if (n != 4)
        fail_msg("find over every object: %zu found, not 4", n);
    return CKR_OK;
}

static long hostile_once(long n)
{
    char dir[300];
    tok_ctx *ctx = NULL;
    long calls;

    tok_fresh_copy(dir);
    log_clear();
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    assert_int_equal(tok_login_check(ctx, 1, CKU_SO, (const uint8_t *)"12345678", 8), CKR_OK);
    assert_int_equal(tok_pin_init(ctx, 1, (const uint8_t *)"userpin1", 8), CKR_OK);
    assert_int_equal(tok_login_check(ctx, 1, CKU_USER, (const uint8_t *)"userpin1", 8), CKR_OK);
    hk_priv = store_aes(ctx, true, "hk-priv");
    hk_pub = store_aes(ctx, false, "hk-pub");
    fault_once = true;
    fault_arm(n ? n : 1000000);
    CK_RV rv = hsc_all(ctx);
    calls = fault_calls;
    bool fired = fault_fired;
    fault_disarm();
    fault_once = false;
    if (n && !fired)
        fail_msg("hostile: call %ld was never made", n);
    if (rv != CKR_OK)
        fail_msg("hostile, call %ld failing once: CK_RV 0x%lx, not the answer without a fault", n, (unsigned long)rv);
    log_check("hostile", n);
    tok_ctx_close(ctx);
    rm_rf(dir);
    return calls;
}

static void test_tok_private_reads_transient(void **state)
{
    (void)state;
    long count = hostile_once(0);
    assert_true(count > 0);
    for (long n = 1; n <= count; n++)
        hostile_once(n);
    print_message("hostile private reads, failing once: %ld fault points\n", count);
}


/* A damaged record is damage: read once, logged once, answered
 * CKR_DEVICE_ERROR (not run again as a storage failure). */
static int log_count(const char *needle)
{
    uint8_t *buf;
    size_t len;
    int n = 0;
    read_file(logpath, &buf, &len);
    char *s = realloc(buf, len + 1);
    assert_non_null(s);
    s[len] = 0;
    for (const char *p = s; (p = strstr(p, needle)); p++)
        n++;
    free(s);
    return n;
}

static void test_tok_damage_not_retried(void **state)
{
    (void)state;
    char dir[300];
    tok_ctx *ctx = NULL;
    tok_attrs a = TOK_ATTRS_INIT;
    tok_key *k = NULL;
    bool match = true;
    CK_ATTRIBUTE lt[] = {{CKA_LABEL, (void *)"hk-pub", 6}};

    tok_fresh_copy(dir);
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    assert_int_equal(tok_login_check(ctx, 1, CKU_SO, (const uint8_t *)"12345678", 8), CKR_OK);
    assert_int_equal(tok_pin_init(ctx, 1, (const uint8_t *)"userpin1", 8), CKR_OK);
    assert_int_equal(tok_login_check(ctx, 1, CKU_USER, (const uint8_t *)"userpin1", 8), CKR_OK);
    hk_pub = store_aes(ctx, false, "hk-pub");
    damage_objects = true;

    log_clear();
    damage_gets = 0;
    assert_int_equal(tok_obj_read(ctx, &user_rw, hk_pub, &a), CKR_DEVICE_ERROR);
    assert_int_equal(a.n, 0);
    assert_int_equal(damage_gets, 1);
    assert_int_equal(log_count("cannot be unsealed"), 1);

    log_clear();
    damage_gets = 0;
    assert_int_equal(tok_obj_key(ctx, &user_rw, hk_pub, &k), CKR_DEVICE_ERROR);
    assert_null(k);
    assert_int_equal(log_count("cannot be unsealed"), 1);
    assert_int_equal(damage_gets, 2); /* the stamp and the record, once each */

    log_clear();
    damage_gets = 0;
    assert_int_equal(tok_obj_match(ctx, &user_rw, hk_pub, lt, 1, &match), CKR_OK);
    assert_false(match);
    assert_int_equal(damage_gets, 1);
    assert_int_equal(log_count("cannot be unsealed"), 1);

    damage_objects = false;
    tok_ctx_close(ctx);
    rm_rf(dir);
}

/* ---- writes run again after a lost connection (ops->lost) ------------------- */

static CK_FLAGS so_flags(tok_ctx *ctx)
{
    CK_TOKEN_INFO info;
    assert_int_equal(tok_token_info(ctx, 1, &info), CKR_OK);
    return info.flags & (CKF_SO_PIN_COUNT_LOW | CKF_SO_PIN_FINAL_TRY | CKF_SO_PIN_LOCKED);
}

/* One wrong SO PIN whose write loses its connection at write call n (0:
 * none): the attempt counts once, whatever ks_write ran again. Returns the
 * write calls made. */
static long lost_wrong_pin_once(long n)
{
    char dir[300];
    tok_ctx *ctx;
    tok_fresh_copy(dir);
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    for (unsigned long i = 0; i + 2 < TOK_MAX_PIN_TRIES_TEST; i++)
        assert_int_equal(tok_login_check(ctx, 1, CKU_SO, (const uint8_t *)"00000000", 8), CKR_PIN_INCORRECT);
    assert_int_equal(so_flags(ctx), CKF_SO_PIN_COUNT_LOW); /* MAX - 2 failures */
    wl_calls = 0;
    wl_at = n;
    wl_fired = false;
    wl_armed = true;
    CK_RV rv = tok_login_check(ctx, 1, CKU_SO, (const uint8_t *)"00000000", 8);
    wl_armed = false;
    long calls = wl_calls;
    if (n && !wl_fired)
        fail_msg("wrong PIN, write call %ld losing: never made (%ld calls)", n, calls);
    if (rv != CKR_PIN_INCORRECT)
        fail_msg("wrong PIN, write call %ld losing its connection: 0x%lx, not CKR_PIN_INCORRECT (the write was "
                 "not run again)", n, (unsigned long)rv);
    CK_FLAGS f = so_flags(ctx);
    if (f != (CKF_SO_PIN_COUNT_LOW | CKF_SO_PIN_FINAL_TRY))
        fail_msg("wrong PIN, write call %ld losing its connection: flags 0x%lx: the attempt was %s", n,
                 (unsigned long)f, (f & CKF_SO_PIN_LOCKED) ? "counted twice (the PIN is locked)" : "not counted");
    /* The right PIN still logs in (one try left), and resets the count. */
    assert_int_equal(tok_login_check(ctx, 1, CKU_SO, (const uint8_t *)"12345678", 8), CKR_OK);
    assert_int_equal(so_flags(ctx), 0);
    tok_ctx_close(ctx);
    rm_rf(dir);
    return calls;
}

static void test_tok_lost_write_pin(void **state)
{
    (void)state;
    long count = lost_wrong_pin_once(0);
    assert_true(count > 0);
    for (long n = 1; n <= count; n++)
        lost_wrong_pin_once(n);
    print_message("wrong PIN: %ld write points lost once\n", count);
}

/* An object stored while its write loses its connection once: exactly one
 * object more, under the id handed out, readable. */
static long lost_create_once(long n)
{
    char dir[300];
    tok_ctx *ctx;
    ks_info before, after;
    uint64_t oid = 0;
    tok_fresh_copy(dir);
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    assert_int_equal(ks_get_info(tok_ctx_store(ctx), &before), KS_OK);
    wl_calls = 0;
    wl_at = n;
    wl_fired = false;
    wl_armed = true;
    CK_RV rv = store_public(ctx, "three", &oid);
    wl_armed = false;
    long calls = wl_calls;
    if (n && !wl_fired)
        fail_msg("create, write call %ld losing: never made (%ld calls)", n, calls);
    if (rv != CKR_OK)
        fail_msg("create, write call %ld losing its connection: 0x%lx (not run again)", n, (unsigned long)rv);
    assert_int_equal(ks_get_info(tok_ctx_store(ctx), &after), KS_OK);
    if (after.n_objects != before.n_objects + 1)
        fail_msg("create, write call %ld losing its connection: %llu objects more, not 1", n,
                 (unsigned long long)(after.n_objects - before.n_objects));
    tok_attrs back = TOK_ATTRS_INIT;
    assert_int_equal(tok_obj_read(ctx, &pub_rw, oid, &back), CKR_OK);
    tok_attrs_free(&back);
    uint64_t checked = 0, failed = 0;
    assert_int_equal(ks_verify(tok_ctx_store(ctx), verify_cb, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    tok_ctx_close(ctx);
    rm_rf(dir);
    return calls;
}

static void test_tok_lost_write_create(void **state)
{
    (void)state;
    long count = lost_create_once(0);
    assert_true(count > 0);
    for (long n = 1; n <= count; n++)
        lost_create_once(n);
    print_message("create: %ld write points lost once\n", count);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open),        cmocka_unit_test(test_open_transient),        cmocka_unit_test(test_read_obj),   cmocka_unit_test(test_find),
        cmocka_unit_test(test_foreach),     cmocka_unit_test(test_token_get),  cmocka_unit_test(test_token_list),
        cmocka_unit_test(test_info),        cmocka_unit_test(test_verify),     cmocka_unit_test(test_token_put),
        cmocka_unit_test(test_token_new),   cmocka_unit_test(test_obj_create), cmocka_unit_test(test_obj_update),
        cmocka_unit_test(test_obj_delete),  cmocka_unit_test(test_token_del),
        cmocka_unit_test_setup(test_rot_rewrap, rot_setup), cmocka_unit_test(test_rot_commit),
        cmocka_unit_test_setup(test_tok_open, tok_group_setup),
        cmocka_unit_test(test_tok_lost_write_pin), cmocka_unit_test(test_tok_lost_write_create),
        cmocka_unit_test(test_tok_info),    cmocka_unit_test(test_tok_free_info), cmocka_unit_test(test_tok_slots),
        cmocka_unit_test(test_tok_rows),
        cmocka_unit_test(test_tok_read),    cmocka_unit_test(test_tok_reads_transient), cmocka_unit_test(test_tok_private_reads_transient), cmocka_unit_test(test_tok_damage_not_retried),    cmocka_unit_test(test_tok_find), cmocka_unit_test(test_tok_watch),   cmocka_unit_test(test_tok_verify_index),
        cmocka_unit_test(test_tok_create),  cmocka_unit_test(test_tok_destroy),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
