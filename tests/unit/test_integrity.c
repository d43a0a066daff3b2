/* Metadata that decides behaviour is authenticated: a tamper suite over the
 * stored records (keystore/ks_tamper.h). For each metadata record and database: delete it,
 * zero it, set counters back, replay an older copy. In every case nothing is
 * re-created or overwritten, the keystore never serves wrong data, and
 * ks_verify names the problem. Also: a format 1 keystore is read as before
 * and upgraded by its first write. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "keystore/ks_internal.h"
#include "keystore/ks_tamper.h"
#include "tests/unit/ks_test_util.h"

typedef struct {
    char dir[128];
    ks_mkey key;
    uint32_t tid;
    uint64_t oids[8];
    size_t n;
} fx;



static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    snprintf(f->dir, sizeof(f->dir), "/tmp/p11mk-int-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(RAND_bytes(f->key.key, KS_MK_LEN), 1);
    assert_int_equal(ks_open(f->dir, &f->key, KS_OPEN_CREATE, &st, &err), KS_OK);
    for (int i = 0; i < 5; i++) {
        char l[16];
        snprintf(l, sizeof(l), "object-%d", i);
        put_arg a = {.tid = f->tid, .data = strdup(l)};
        assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
        free((char *)a.data);
        f->tid = a.tid;
        f->oids[f->n++] = a.oid;
    }
    ks_close(st);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    rm_rf(f->dir);
    free(f);
    return 0;
}

/* ---- raw access to the stored records (the keystore must be closed) ---- */

typedef struct {
    ks_tamper *t;
} raw;

static void raw_begin(fx *f, raw *r)
{
    assert_int_equal(ks_tamper_open(f->dir, 0, &r->t), KS_OK);
}

static void raw_end(raw *r)
{
    assert_int_equal(ks_tamper_commit(r->t), KS_OK);
}

static void raw_get(raw *r, const char *db, const void *key, size_t klen, uint8_t **val, size_t *len)
{
    assert_int_equal(ks_tamper_get(r->t, db, key, klen, val, len), KS_OK);
}

static void raw_put(raw *r, const char *db, const void *key, size_t klen, const void *val, size_t len)
{
    assert_int_equal(ks_tamper_put(r->t, db, key, klen, val, len), KS_OK);
}

static void raw_del(raw *r, const char *db, const void *key, size_t klen)
{
    assert_int_equal(ks_tamper_del(r->t, db, key, klen), KS_OK);
}

/* ---- helpers ---- */

static ks_store *reopen(fx *f, int want)
{
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    assert_int_equal(ks_open(f->dir, &f->key, KS_OPEN_CREATE, &st, &err), want);
    return st;
}

static char problems[4096];
static void collect(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg)
{
    (void)arg;
    size_t n = strlen(problems);
    snprintf(problems + n, sizeof(problems) - n, "%c %u %llu %d %s\n", kind, token, (unsigned long long)oid, err,
             what ? what : "");
}

static uint64_t verify(ks_store *st)
{
    uint64_t checked = 0, failed = 0;
    problems[0] = '\0';
    assert_int_equal(ks_verify(st, collect, NULL, &checked, &failed), KS_OK);
    return failed;
}

static void ksid_of(fx *f, uint8_t out[16])
{
    raw r;
    uint8_t *v;
    size_t l;
    raw_begin(f, &r);
    raw_get(&r, "meta", "ksid", 4, &v, &l);
    assert_int_equal(l, 16);
    memcpy(out, v, 16);
    free(v);
    raw_end(&r);
}

/* ---- the cases ---- */

static void test_clean_keystore_verifies(void **state)
{
    fx *f = *state;
    ks_store *st = reopen(f, KS_OK);
    assert_int_equal(verify(st), 0);
    ks_info info;
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.format_version, KS_FORMAT);
    ks_close(st);
}

static void test_missing_format_is_damage_not_a_new_keystore(void **state)
{
    fx *f = *state;
    uint8_t before[16], after[16];
    raw r;
    ksid_of(f, before);
    raw_begin(f, &r);
    raw_del(&r, "meta", "format", 6);
    raw_end(&r);
    assert_null(reopen(f, KS_ECORRUPT)); /* with KS_OPEN_CREATE, as C_Initialize opens */
    ksid_of(f, after);
    assert_memory_equal(before, after, 16); /* nothing was written over it */
}

static void test_dropped_database_is_damage(void **state)
{
    fx *f = *state;
    raw r;
    raw_begin(f, &r);
    assert_int_equal(ks_tamper_drop(r.t, "objects"), KS_OK);
    raw_end(&r);
    assert_null(reopen(f, KS_ECORRUPT));
    raw_begin(f, &r);
    uint64_t n;
    assert_int_equal(ks_tamper_count(r.t, "objects", &n), KS_ENOTFOUND); /* not re-created */
    raw_end(&r);
}

static void test_counter_set_back_never_overwrites(void **state)
{
    fx *f = *state;
    raw r;
    uint8_t *old;
    size_t oldlen;
    /* A copy of the anchor from when the counter was lower ... */
    raw_begin(f, &r);
    raw_get(&r, "meta", "state", 5, &old, &oldlen);
    raw_end(&r);
    ks_store *st = reopen(f, KS_OK);
    put_arg a = {.tid = f->tid, .data = "newer"};
    assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
    ks_close(st);
    /* ... put back: the next create would reuse the newest id. */
    raw_begin(f, &r);
    raw_put(&r, "meta", "state", 5, old, oldlen);
    raw_end(&r);
    free(old);
    st = reopen(f, KS_OK);
    put_arg b = {.tid = f->tid, .data = "collides"};
    assert_int_equal(ks_write(st, put_fn, &b), KS_ECORRUPT);
    assert_int_equal(read_obj(st, f->tid, a.oid), KS_OK); /* the object is intact */
    ks_txn *t;
    uint8_t *blob;
    size_t len;
    assert_int_equal(ks_read_begin(st, &t), KS_OK);
    assert_int_equal(ks_obj_get(t, f->tid, a.oid, &blob, &len), KS_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(blob, "newer", 5);
    ks_buf_free(blob, len);
    ks_read_end(t);
    assert_true(verify(st) >= 1);
    assert_non_null(strstr(problems, "id counter"));
    ks_close(st);
}

/* An index entry (its value is the object id it points at) of this object. */
static int pointing_at(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, void *arg)
{
    (void)key;
    (void)klen;
    return vlen == 8 && ks_get_be64(val) == *(const uint64_t *)arg ? KS_TAMPER_DELETE : KS_TAMPER_NEXT;
}

static void test_deleted_object_and_its_index_entries(void **state)
{
    fx *f = *state;
    raw r;
    uint8_t kb[12];
    ks_be32(kb, f->tid);
    ks_be64(kb + 4, f->oids[2]);
    raw_begin(f, &r);
    raw_del(&r, "objects", kb, 12);
    /* and every index entry pointing at it */
    uint64_t before, after;
    assert_int_equal(ks_tamper_count(r.t, "index", &before), KS_OK);
    assert_int_equal(ks_tamper_foreach(r.t, "index", pointing_at, &f->oids[2]), KS_OK);
    assert_int_equal(ks_tamper_count(r.t, "index", &after), KS_OK);
    assert_int_equal(after, before - 1); /* its one label entry */
    raw_end(&r);
    ks_store *st = reopen(f, KS_OK); /* served: the other objects are fine */
    assert_int_equal(read_obj(st, f->tid, f->oids[0]), KS_OK);
    assert_int_equal(read_obj(st, f->tid, f->oids[2]), KS_ENOTFOUND);
    assert_true(verify(st) >= 1);
    assert_non_null(strstr(problems, "records were deleted"));
    ks_close(st);
}

static void test_deleted_state_is_damage(void **state)
{
    fx *f = *state;
    raw r;
    raw_begin(f, &r);
    raw_del(&r, "meta", "state", 5);
    raw_end(&r);
    assert_null(reopen(f, KS_ECORRUPT)); /* never "idle, auto-update off" by default */
}

static void test_edited_state_is_damage(void **state)
{
    fx *f = *state;
    raw r;
    uint8_t *v;
    size_t l;
    raw_begin(f, &r);
    raw_get(&r, "meta", "state", 5, &v, &l);
    v[l / 2] ^= 1;
    raw_put(&r, "meta", "state", 5, v, l);
    raw_end(&r);
    free(v);
    assert_null(reopen(f, KS_ECORRUPT));
}

static void test_generation_deleted_or_zeroed(void **state)
{
    fx *f = *state;
    for (int variant = 0; variant < 2; variant++) {
        raw r;
        uint8_t zero[8] = {0};
        raw_begin(f, &r);
        if (variant == 0)
            raw_del(&r, "meta", "gen", 3);
        else
            raw_put(&r, "meta", "gen", 3, zero, 8);
        raw_end(&r);
        ks_store *st = reopen(f, KS_OK);
        assert_int_equal(read_obj(st, f->tid, f->oids[1]), KS_OK);
        assert_true(verify(st) >= 1);
        assert_non_null(strstr(problems, "generation counter"));
        /* The next step that advances the generation writes both copies again. */
        assert_int_equal(ks_rot_set_auto(st, 0), KS_OK);
        ks_mkey k2;
        ks_err err = KS_ERR_INIT;
        assert_int_equal(RAND_bytes(k2.key, KS_MK_LEN), 1);
        assert_int_equal(ks_rekey(st, &k2, 0, &err), KS_OK);
        assert_int_equal(verify(st), 0);
        ks_close(st);
        f->key = k2;
    }
}

static void test_token_under_malformed_key(void **state)
{
    fx *f = *state;
    raw r;
    uint8_t *v;
    size_t l;
    uint8_t kb[4], bad[5] = {0, 0, 0, 9, 9};
    ks_be32(kb, f->tid);
    raw_begin(f, &r);
    raw_get(&r, "tokens", kb, 4, &v, &l);
    raw_put(&r, "tokens", bad, 5, v, l);
    raw_end(&r);
    free(v);
    ks_store *st = reopen(f, KS_OK);
    assert_true(verify(st) >= 1);
    assert_non_null(strstr(problems, "malformed key"));
    ks_close(st);
}

static void test_added_object_record(void **state)
{
    fx *f = *state;
    raw r;
    uint8_t *v;
    size_t l;
    uint8_t kb[12], kb2[12];
    ks_be32(kb, f->tid);
    ks_be64(kb + 4, f->oids[1]);
    ks_be32(kb2, f->tid);
    ks_be64(kb2 + 4, 999);
    raw_begin(f, &r);
    raw_get(&r, "objects", kb, 12, &v, &l); /* a copy under another id (it will not open: bound to its id) */
    raw_put(&r, "objects", kb2, 12, v, l);
    raw_end(&r);
    free(v);
    ks_store *st = reopen(f, KS_OK);
    assert_int_equal(read_obj(st, f->tid, 999), KS_ECORRUPT);
    assert_true(verify(st) >= 2); /* fails to open, and the set is not the one vouched for */
    assert_non_null(strstr(problems, "records were added"));
    ks_close(st);
}


typedef struct {
    uint32_t tid;
    uint64_t oid;
    const char *data;
} upd_arg;

static int token_update_fn(ks_txn *t, void *arg)
{
    return ks_token_put(t, ((upd_arg *)arg)->tid, (const uint8_t *)"token, changed", 14);
}

static int obj_update_fn(ks_txn *t, void *arg)
{
    upd_arg *a = arg;
    return ks_obj_put(t, a->tid, a->oid, (const uint8_t *)a->data, strlen(a->data));
}

/* An older copy of the token record (its PINs and failure counts) put back:
 * refused at once, never used. */
static void test_token_record_replayed(void **state)
{
    fx *f = *state;
    raw r;
    uint8_t kb[4], *old;
    size_t oldlen;
    ks_be32(kb, f->tid);
    raw_begin(f, &r);
    raw_get(&r, "tokens", kb, 4, &old, &oldlen);
    raw_end(&r);
    ks_store *st = reopen(f, KS_OK);
    upd_arg a = {f->tid, 0, NULL};
    assert_int_equal(ks_write(st, token_update_fn, &a), KS_OK);
    ks_close(st);
    raw_begin(f, &r);
    raw_put(&r, "tokens", kb, 4, old, oldlen);
    raw_end(&r);
    free(old);
    st = reopen(f, KS_OK);
    ks_txn *t;
    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(ks_read_begin(st, &t), KS_OK);
    assert_int_equal(ks_token_get(t, f->tid, &blob, &len), KS_ECORRUPT);
    ks_read_end(t);
    assert_true(verify(st) >= 1);
    assert_non_null(strstr(problems, "older copy was put back"));
    ks_close(st);
}

/* An older copy of an object record put back: verify names it (the set the
 * anchor vouches for holds each record's tag). */
static void test_object_record_replayed(void **state)
{
    fx *f = *state;
    raw r;
    uint8_t kb[12], *old;
    size_t oldlen;
    ks_be32(kb, f->tid);
    ks_be64(kb + 4, f->oids[3]);
    raw_begin(f, &r);
    raw_get(&r, "objects", kb, 12, &old, &oldlen);
    raw_end(&r);
    ks_store *st = reopen(f, KS_OK);
    upd_arg a = {f->tid, f->oids[3], "object-3, now sensitive"};
    assert_int_equal(ks_write(st, obj_update_fn, &a), KS_OK);
    assert_int_equal(verify(st), 0);
    ks_close(st);
    raw_begin(f, &r);
    raw_put(&r, "objects", kb, 12, old, oldlen);
    raw_end(&r);
    free(old);
    st = reopen(f, KS_OK);
    assert_true(verify(st) >= 1);
    assert_non_null(strstr(problems, "older copies put back"));
    ks_close(st);
}

/* A format 1 keystore (a version 1 state record, plain counters): read as
 * before, upgraded by the first write, verified afterwards. */
static void test_format1_upgrade(void **state)
{
    fx *f = *state;
    ks_store *st = reopen(f, KS_OK);
    ks_info info;
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    uint8_t reckey[32], pt[40] = {1, KS_ROT_IDLE}, *rec;
    size_t reclen;
    assert_int_equal(ks_rec_key(&f->key, info.keystore_id, info.epoch, reckey), KS_OK);
    ks_be32(pt + 2, info.epoch);
    assert_int_equal(ks_rec_seal(reckey, info.keystore_id, KS_KIND_META, info.epoch, 0, 1, pt, sizeof(pt), &rec,
                                 &reclen), KS_OK);
    ks_close(st);
    raw r;
    uint8_t be[8];
    raw_begin(f, &r);
    raw_put(&r, "meta", "state", 5, rec, reclen);
    ks_be32(be, 1);
    raw_put(&r, "meta", "format", 6, be, 4);
    ks_be64(be, f->oids[f->n - 1] + 1);
    raw_put(&r, "meta", "next_oid", 8, be, 8);
    raw_end(&r);
    free(rec);
    st = reopen(f, KS_OK);
    uint64_t n = 0;
    ks_txn *t;
    assert_int_equal(ks_read_begin(st, &t), KS_OK);
    assert_int_equal(ks_token_count_objects(t, f->tid, &n), KS_OK); /* counted, as format 1 did */
    ks_read_end(t);
    assert_int_equal(n, 5);
    put_arg a = {.tid = f->tid, .data = "after upgrade"};
    assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
    assert_int_equal(a.oid, f->oids[f->n - 1] + 1); /* the plain counter was carried over */
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.format_version, KS_FORMAT);
    assert_int_equal(verify(st), 0);
    ks_close(st);
    raw_begin(f, &r);
    uint8_t *v;
    size_t l;
    assert_int_equal(ks_tamper_get(r.t, "meta", "next_oid", 8, &v, &l), KS_ENOTFOUND); /* only the anchor counts now */
    raw_end(&r);
}

/* Damage of the metadata the open reads is said as damage, never as a read
 * that failed: the open fails with a verdict (KS_ECORRUPT, KS_EVERSION,
 * KS_EWRONGKEY), and its message is one line that names the damage (or the
 * key or format) and says nothing of trying again or of the storage's disk
 * or connection (ks_read_failed, ks_read_error). */
typedef enum { T_DEL, T_FLIP, T_SET } tamper_op;
static const struct {
    const char *what;
    tamper_op op;
    const char *key;
    size_t klen;
    const char *val; /* T_SET */
    size_t vlen;
    int want;
    const char *says; /* a word the message must hold */
} damages[] = {
    {"format deleted", T_DEL, "format", 6, NULL, 0, KS_ECORRUPT, "restore"},
    {"format 99", T_SET, "format", 6, "\0\0\0\x63", 4, KS_EVERSION, "format version"},
    {"ksid deleted", T_DEL, "ksid", 4, NULL, 0, KS_ECORRUPT, "restore"},
    {"epoch deleted", T_DEL, "epoch", 5, NULL, 0, KS_ECORRUPT, "restore"},
    {"epoch pointed at 7", T_SET, "epoch", 5, "\0\0\0\x07", 4, KS_ECORRUPT, "restore"},
    {"state deleted", T_DEL, "state", 5, NULL, 0, KS_ECORRUPT, "restore"},
    {"state flipped", T_FLIP, "state", 5, NULL, 0, KS_ECORRUPT, "restore"},
    {"idxkey deleted", T_DEL, "idxkey", 6, NULL, 0, KS_ECORRUPT, "restore"},
    {"idxkey flipped", T_FLIP, "idxkey", 6, NULL, 0, KS_ECORRUPT, "restore"},
};

static void check_damage_msg(const char *what, int rc, int want, const char *msg, const char *says)
{
    if (rc != want)
        fail_msg("%s: open gave %s (%d), not %s: %s", what, ks_strerror(rc), rc, ks_strerror(want), msg);
    if (!msg[0] || strchr(msg, '\n'))
        fail_msg("%s: the message is empty or not one line: '%s'", what, msg);
    if (strstr(msg, "try again") || strstr(msg, "cannot read") || strstr(msg, "database connection"))
        fail_msg("%s: damage said as a failed read: %s", what, msg);
    if (!strstr(msg, says))
        fail_msg("%s: the message does not say '%s': %s", what, says, msg);
}

/* A read that failed says what to do: the storage to check when it did not
 * answer, memory when there was none (not the storage's fault). */
static void test_read_failure_advice(void **state)
{
    (void)state;
    ks_err err = KS_ERR_INIT;
    assert_int_equal(ks_read_error(&err, "/ks", "its metadata", KS_EIO), KS_EIO);
    assert_non_null(strstr(err.msg, "check the keystore's storage"));
    assert_non_null(strstr(err.msg, "nothing was changed"));
    assert_int_equal(ks_read_error(&err, "/ks", "its metadata", KS_ENOMEM), KS_ENOMEM);
    assert_null(strstr(err.msg, "storage"));
    assert_non_null(strstr(err.msg, "memory to spare"));
    assert_null(strchr(err.msg, '\n'));
}

static void test_damage_said_as_damage(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(damages) / sizeof(damages[0]); i++) {
        void *s = NULL;
        assert_int_equal(setup(&s), 0);
        fx *f = s;
        raw r;
        raw_begin(f, &r);
        if (damages[i].op == T_DEL) {
            raw_del(&r, "meta", damages[i].key, damages[i].klen);
        } else if (damages[i].op == T_SET) {
            raw_put(&r, "meta", damages[i].key, damages[i].klen, damages[i].val, damages[i].vlen);
        } else {
            uint8_t *v;
            size_t l;
            raw_get(&r, "meta", damages[i].key, damages[i].klen, &v, &l);
            v[l / 2] ^= 0x04;
            raw_put(&r, "meta", damages[i].key, damages[i].klen, v, l);
            free(v);
        }
        raw_end(&r);
        ks_store *st = NULL;
        ks_err err = KS_ERR_INIT;
        int rc = ks_open(f->dir, &f->key, KS_OPEN_CREATE, &st, &err);
        if (st)
            ks_close(st);
        check_damage_msg(damages[i].what, rc, damages[i].want, err.msg, damages[i].says);
        teardown(&s);
    }

    /* The wrong master key. */
    void *s = NULL;
    assert_int_equal(setup(&s), 0);
    fx *f = s;
    ks_mkey other = f->key;
    other.key[0] ^= 1;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    int rc = ks_open(f->dir, &other, 0, &st, &err);
    if (st)
        ks_close(st);
    check_damage_msg("wrong master key", rc, KS_EWRONGKEY, err.msg, "check value");
    teardown(&s);
}

/* The plain check value of the current epoch edited or deleted: the key
 * that opens the sealed state is the epoch's key, so the keystore opens
 * under it and serves; the damage is logged (naming the plain and the
 * authenticated value) and reported by verify, never answered as a wrong
 * master key. A really wrong key is still refused, naming check values. */
static void test_plain_kcv_damage_reported(void **state)
{
    (void)state;
    for (int deleted = 0; deleted < 2; deleted++) {
        void *s = NULL;
        assert_int_equal(setup(&s), 0);
        fx *f = s;
        char logpath[sizeof(f->dir) + 16], buf[8192] = {0};
        raw r;
        uint8_t *v;
        size_t l;
        raw_begin(f, &r);
        if (deleted) {
            raw_del(&r, "meta", "kcv\0\0\0\x01", 7);
        } else {
            raw_get(&r, "meta", "kcv\0\0\0\x01", 7, &v, &l);
            v[0] ^= 0x40;
            raw_put(&r, "meta", "kcv\0\0\0\x01", 7, v, l);
            free(v);
        }
        raw_end(&r);
        snprintf(logpath, sizeof(logpath), "%s/log", f->dir);
        ks_log_setup(logpath, KS_LOG_ERROR, "test");
        ks_store *st = reopen(f, KS_OK);
        ks_log_setup("stderr", KS_LOG_ERROR, "test");
        FILE *lf = fopen(logpath, "r");
        assert_non_null(lf);
        assert_true(fread(buf, 1, sizeof(buf) - 1, lf) > 0);
        fclose(lf);
        if (!strstr(buf, "plain check value of the current epoch 1") || !strstr(buf, "authenticated one") ||
            !strstr(buf, deleted ? "missing" : "verify"))
            fail_msg("deleted=%d: the damage is not logged as such: %s", deleted, buf);
        uint64_t n = 0;
        ks_txn *t;
        assert_int_equal(ks_read_begin(st, &t), KS_OK);
        assert_int_equal(ks_token_count_objects(t, f->tid, &n), KS_OK);
        ks_read_end(t);
        assert_int_equal(n, 5);
        assert_true(verify(st) > 0);
        if (!strstr(problems, "check value"))
            fail_msg("deleted=%d: verify does not name the check value: %s", deleted, problems);
        ks_close(st);

        ks_mkey other = f->key;
        other.key[0] ^= 1;
        ks_err err = KS_ERR_INIT;
        st = NULL;
        int rc = ks_open(f->dir, &other, 0, &st, &err);
        if (st)
            ks_close(st);
        check_damage_msg(deleted ? "kcv deleted, wrong key" : "kcv changed, wrong key", rc,
                         deleted ? KS_ECORRUPT : KS_EWRONGKEY, err.msg, deleted ? "restore" : "check value");
        teardown(&s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_damage_said_as_damage),
        cmocka_unit_test(test_read_failure_advice),
        cmocka_unit_test(test_plain_kcv_damage_reported),
        cmocka_unit_test_setup_teardown(test_clean_keystore_verifies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_format_is_damage_not_a_new_keystore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_database_is_damage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_set_back_never_overwrites, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_object_and_its_index_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_state_is_damage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edited_state_is_damage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_generation_deleted_or_zeroed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_under_malformed_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_added_object_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_record_replayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_record_replayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format1_upgrade, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
