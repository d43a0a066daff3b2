/* Unit tests for the keystore layer: record sealing, configuration, master
 * keys, the LMDB store (tokens, objects, indexes, map growth, tampering,
 * wrong key, fork). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>

#include "keystore/ks.h"
#include "keystore/ks_internal.h"

/* ---- fixtures ------------------------------------------------------------ */

typedef struct {
    char dir[256];
    ks_mkey mk;
    ks_store *st;
} fx;

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void rm_rf(const char *dir) { nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    ks_err err = {{0}};
    snprintf(f->dir, sizeof(f->dir), "/tmp/p11mk-ks-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    ks_mkey_default(&f->mk);
    assert_int_equal(ks_open(f->dir, &f->mk, KS_OPEN_CREATE, &f->st, &err), KS_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    ks_close(f->st);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    fchmod(fd, mode);
    close(fd);
}

/* ---- records ------------------------------------------------------------- */

static void test_record_roundtrip_and_binding(void **state)
{
    (void)state;
    uint8_t key[32] = {1}, key2[32] = {2}, ksid[16] = {3}, ksid2[16] = {4};
    const uint8_t msg[] = "secret attribute bytes";
    uint8_t *rec, *pt;
    size_t reclen, ptlen;

    assert_int_equal(ks_rec_seal(key, ksid, KS_KIND_OBJECT, 7, 1, 42, msg, sizeof(msg), &rec, &reclen), KS_OK);
    assert_int_equal(reclen, sizeof(msg) + KS_REC_OVERHEAD);
    assert_null(memmem(rec, reclen, "secret", 6)); /* no plaintext at rest */

    assert_int_equal(ks_rec_open(key, ksid, KS_KIND_OBJECT, 1, 42, rec, reclen, &pt, &ptlen), KS_OK);
    assert_int_equal(ptlen, sizeof(msg));
    assert_memory_equal(pt, msg, sizeof(msg));
    ks_buf_free(pt, ptlen);

    uint8_t kind;
    uint32_t epoch;
    assert_int_equal(ks_rec_header(rec, reclen, &kind, &epoch), KS_OK);
    assert_int_equal(kind, KS_KIND_OBJECT);
    assert_int_equal(epoch, 7);

    /* Wrong binding of any kind fails. */
    assert_int_equal(ks_rec_open(key2, ksid, KS_KIND_OBJECT, 1, 42, rec, reclen, &pt, &ptlen), KS_ECORRUPT);
    assert_int_equal(ks_rec_open(key, ksid2, KS_KIND_OBJECT, 1, 42, rec, reclen, &pt, &ptlen), KS_ECORRUPT);
    assert_int_equal(ks_rec_open(key, ksid, KS_KIND_OBJECT, 2, 42, rec, reclen, &pt, &ptlen), KS_ECORRUPT);
    assert_int_equal(ks_rec_open(key, ksid, KS_KIND_OBJECT, 1, 43, rec, reclen, &pt, &ptlen), KS_ECORRUPT);
    assert_int_equal(ks_rec_open(key, ksid, KS_KIND_TOKEN, 1, 42, rec, reclen, &pt, &ptlen), KS_ECORRUPT);

    /* Every single-byte edit is detected (header, nonce, ciphertext, tag). */
    for (size_t i = 0; i < reclen; i++) {
        rec[i] ^= 0x01;
        int rc = ks_rec_open(key, ksid, KS_KIND_OBJECT, 1, 42, rec, reclen, &pt, &ptlen);
        assert_true(rc == KS_ECORRUPT || rc == KS_EVERSION);
        rec[i] ^= 0x01;
    }
    /* The epoch in the header is authenticated. */
    rec[7] ^= 1;
    assert_int_equal(ks_rec_open(key, ksid, KS_KIND_OBJECT, 1, 42, rec, reclen, &pt, &ptlen), KS_ECORRUPT);
    rec[7] ^= 1;
    /* Truncation. */
    assert_int_equal(ks_rec_open(key, ksid, KS_KIND_OBJECT, 1, 42, rec, KS_REC_OVERHEAD - 1, &pt, &ptlen),
                     KS_ECORRUPT);
    assert_int_equal(ks_rec_open(key, ksid, KS_KIND_OBJECT, 1, 42, rec, reclen - 1, &pt, &ptlen), KS_ECORRUPT);
    free(rec);

    /* Two seals of the same plaintext differ (random nonce). */
    uint8_t *r1, *r2;
    size_t l1, l2;
    assert_int_equal(ks_rec_seal(key, ksid, KS_KIND_OBJECT, 1, 1, 1, msg, sizeof(msg), &r1, &l1), KS_OK);
    assert_int_equal(ks_rec_seal(key, ksid, KS_KIND_OBJECT, 1, 1, 1, msg, sizeof(msg), &r2, &l2), KS_OK);
    assert_memory_not_equal(r1, r2, l1);
    free(r1);
    free(r2);
}

static void test_strerror_covers_codes(void **state)
{
    (void)state;
    for (int c = KS_OK; c >= KS_EBUSY; c--)
        assert_string_not_equal(ks_strerror(c), "unknown error");
    assert_string_equal(ks_strerror(-999), "unknown error");
}

/* ---- master keys --------------------------------------------------------- */

static void test_mkey_default_and_kcv(void **state)
{
    (void)state;
    ks_mkey a, b;
    uint8_t k1[KS_KCV_LEN], k2[KS_KCV_LEN];
    char hex[2 * KS_KCV_LEN + 1];
    ks_mkey_default(&a);
    ks_mkey_default(&b);
    assert_true(a.is_default);
    assert_memory_equal(a.key, b.key, KS_MK_LEN); /* the same on every install */
    ks_mkey_kcv(&a, k1);
    b.key[0] ^= 1;
    ks_mkey_kcv(&b, k2);
    assert_memory_not_equal(k1, k2, KS_KCV_LEN);
    ks_kcv_hex(k1, hex);
    assert_int_equal(strlen(hex), 16);
    ks_mkey_clear(&a);
    for (size_t i = 0; i < KS_MK_LEN; i++)
        assert_int_equal(a.key[i], 0);
}

static void test_mkey_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-mk-XXXXXX", path[300], path2[300];
    ks_config cfg;
    ks_mkey mk, mk2;
    ks_err err = {{0}};
    uint8_t raw[40] = {0};

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/master.key", dir);
    assert_int_equal(ks_mkey_generate_file(path, &mk, &err), KS_OK);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(sb.st_size, 32);
    /* Never overwrites. */
    assert_int_equal(ks_mkey_generate_file(path, NULL, &err), KS_EEXIST);

    ks_config_defaults(&cfg);
    free(cfg.master_key);
    cfg.master_key = strdup(path);
    assert_int_equal(ks_mkey_load(&cfg, &mk2, &err), KS_OK);
    assert_false(mk2.is_default);
    assert_memory_equal(mk.key, mk2.key, KS_MK_LEN);

    /* Group/world readable: refused with the fix in the message. */
    chmod(path, 0644);
    err.msg[0] = 0;
    assert_int_equal(ks_mkey_load(&cfg, &mk2, &err), KS_EPERM);
    assert_non_null(strstr(err.msg, "chmod 600"));
    /* ... unless the configuration allows group read. */
    chmod(path, 0640);
    cfg.key_file_mode = 0640;
    assert_int_equal(ks_mkey_load(&cfg, &mk2, &err), KS_OK);
    cfg.key_file_mode = 0600;

    /* Truncated and oversized files. */
    snprintf(path2, sizeof(path2), "%s/short.key", dir);
    write_file(path2, raw, 31, 0600);
    free(cfg.master_key);
    cfg.master_key = strdup(path2);
    assert_int_equal(ks_mkey_load(&cfg, &mk2, &err), KS_EINVAL);
    assert_non_null(strstr(err.msg, "truncated"));
    write_file(path2, raw, 40, 0600);
    assert_int_equal(ks_mkey_load(&cfg, &mk2, &err), KS_EINVAL);
    /* Missing file. */
    unlink(path2);
    assert_int_equal(ks_mkey_load(&cfg, &mk2, &err), KS_ENOTFOUND);
    assert_non_null(strstr(err.msg, path2));

    ks_config_free(&cfg);
    unlink(path);
    rmdir(dir);
}

/* ---- configuration ------------------------------------------------------- */

static void test_config_parse(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-cf-XXXXXX", path[300];
    ks_config cfg;
    ks_err err = {{0}};

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/p11mk.conf", dir);
    const char good[] = "# comment\n\nkeystore = store\nmaster_key=/etc/p11mk/mk.key  # trailing\n"
                        "log = stderr\nlog_level = debug\nkey_file_mode = 0640\n";
    write_file(path, good, sizeof(good) - 1, 0644);
    assert_int_equal(ks_config_load_file(&cfg, path, &err), KS_OK);
    char want[320];
    snprintf(want, sizeof(want), "%s/store", dir); /* relative to the config file */
    assert_string_equal(cfg.keystore, want);
    assert_string_equal(cfg.master_key, "/etc/p11mk/mk.key");
    assert_string_equal(cfg.log, "stderr");
    assert_int_equal(cfg.log_level, KS_LOG_DEBUG);
    assert_int_equal(cfg.key_file_mode, 0640);
    assert_string_equal(cfg.source, path);
    ks_config_free(&cfg);

    /* Through P11MK_CONF. */
    setenv("P11MK_CONF", path, 1);
    assert_int_equal(ks_config_load(&cfg, &err), KS_OK);
    assert_string_equal(cfg.source, path);
    ks_config_free(&cfg);

    const struct {
        const char *text;
        const char *expect;
    } bad[] = {
        {"keystore = /x\nkeystor = /y\n", ":2: unknown key 'keystor'"},
        {"just words\n", ":1: expected 'key = value'"},
        {"log_level = loud\n", ":1: log_level 'loud'"},
        {"key_file_mode = 0999\n", ":1: key_file_mode"},
        {"master_key =\n", ":1: key 'master_key' has an empty value"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, bad[i].text, strlen(bad[i].text), 0644);
        err.msg[0] = 0;
        assert_int_equal(ks_config_load(&cfg, &err), KS_ECONFIG);
        assert_non_null(strstr(err.msg, path));
        assert_non_null(strstr(err.msg, bad[i].expect));
    }
    /* P11MK_CONF naming a missing file is an error, not a silent fallback. */
    unlink(path);
    assert_int_equal(ks_config_load(&cfg, &err), KS_ECONFIG);
    unsetenv("P11MK_CONF");

    /* Embedded defaults. */
    setenv("XDG_CONFIG_HOME", dir, 1);
    setenv("XDG_DATA_HOME", dir, 1);
    if (access("/etc/p11mk/p11mk.conf", F_OK) != 0) {
        assert_int_equal(ks_config_load(&cfg, &err), KS_OK);
        assert_null(cfg.source);
        snprintf(want, sizeof(want), "%s/p11mk", dir);
        assert_string_equal(cfg.keystore, want);
        assert_string_equal(cfg.master_key, "default");
        assert_int_equal(cfg.log_level, KS_LOG_WARN);
        ks_config_free(&cfg);
    }
    unsetenv("XDG_CONFIG_HOME");
    unsetenv("XDG_DATA_HOME");
    rmdir(dir);
}

/* ---- store --------------------------------------------------------------- */

typedef struct {
    uint32_t tid;
    uint64_t oid;
    const char *data;
    bool update; /* rewrite a->oid instead of allocating a new id (fn must be repeatable) */
} put_arg;

static int put_fn(ks_txn *t, void *arg)
{
    put_arg *a = arg;
    int rc = KS_OK;
    if (!a->tid) {
        rc = ks_token_new_id(t, &a->tid);
        if (rc == KS_OK)
            rc = ks_token_put(t, a->tid, (const uint8_t *)"token", 5);
    }
    if (rc == KS_OK && a->data) {
        if (!a->update)
            rc = ks_obj_new_id(t, &a->oid);
        if (rc == KS_OK)
            rc = ks_obj_put(t, a->tid, a->oid, (const uint8_t *)a->data, strlen(a->data));
        if (rc == KS_OK)
            rc = ks_idx_add(t, a->tid, 3 /* CKA_LABEL */, a->data, strlen(a->data), a->oid);
    }
    return rc;
}

static int collect_cb(uint64_t oid, void *arg)
{
    uint64_t *v = arg;
    v[++v[0]] = oid;
    return v[0] >= 15 ? 1 : 0;
}

static char *obj_str(ks_store *st, uint32_t tid, uint64_t oid, int *rcp)
{
    ks_txn *t;
    uint8_t *b = NULL;
    size_t l = 0;
    char *s = NULL;
    assert_int_equal(ks_read_begin(st, &t), KS_OK);
    *rcp = ks_obj_get(t, tid, oid, &b, &l);
    ks_read_end(t);
    if (*rcp == KS_OK) {
        s = strndup((char *)b, l);
        ks_buf_free(b, l);
    }
    return s;
}

static void test_store_tokens_objects(void **state)
{
    fx *f = *state;
    put_arg a = {0, 0, "first", false}, b = {0, 0, "second", false};
    ks_txn *t;
    int rc;

    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    assert_int_equal(a.tid, 1);
    b.tid = a.tid;
    assert_int_equal(ks_write(f->st, put_fn, &b), KS_OK);
    assert_true(b.oid > a.oid);

    char *s = obj_str(f->st, a.tid, a.oid, &rc);
    assert_int_equal(rc, KS_OK);
    assert_string_equal(s, "first");
    free(s);

    assert_int_equal(ks_read_begin(f->st, &t), KS_OK);
    uint32_t *ids;
    size_t n;
    assert_int_equal(ks_token_list(t, &ids, &n), KS_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], a.tid);
    free(ids);
    uint64_t cnt;
    assert_int_equal(ks_token_count_objects(t, a.tid, &cnt), KS_OK);
    assert_int_equal(cnt, 2);
    uint64_t found[16] = {0};
    assert_int_equal(ks_idx_lookup(t, a.tid, 3, "second", 6, collect_cb, found), KS_OK);
    assert_int_equal(found[0], 1);
    assert_int_equal(found[1], b.oid);
    memset(found, 0, sizeof(found));
    assert_int_equal(ks_idx_lookup(t, a.tid, 3, "nothing", 7, collect_cb, found), KS_OK);
    assert_int_equal(found[0], 0);
    /* Same value under another attribute type is another index key. */
    assert_int_equal(ks_idx_lookup(t, a.tid, 0x102, "second", 6, collect_cb, found), KS_OK);
    assert_int_equal(found[0], 0);
    ks_stamp s1;
    assert_int_equal(ks_obj_stamp(t, a.tid, a.oid, &s1), KS_OK);
    assert_int_equal(s1.epoch, ks_epoch(f->st));
    assert_int_equal(ks_obj_get(t, a.tid, 999, (uint8_t **)&s, (size_t *)&n), KS_ENOTFOUND);
    assert_int_equal(ks_obj_get(NULL, a.tid, a.oid, (uint8_t **)&s, (size_t *)&n), KS_EINVAL);
    ks_read_end(t);

    /* A rewrite changes the stamp. */
    a.data = "first, changed";
    a.update = true;
    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    ks_stamp s2;
    assert_int_equal(ks_read_begin(f->st, &t), KS_OK);
    assert_int_equal(ks_obj_stamp(t, a.tid, a.oid, &s2), KS_OK);
    ks_read_end(t);
    assert_memory_not_equal(s1.tag, s2.tag, 16);

    /* Info. */
    ks_info info;
    assert_int_equal(ks_get_info(f->st, &info), KS_OK);
    assert_int_equal(info.format_version, 1);
    assert_int_equal(info.epoch, 1);
    assert_int_equal(info.n_tokens, 1);
    assert_int_equal(info.n_objects, 2);
    assert_string_equal(ks_path(f->st), f->dir);
}

static int idx_del_fn(ks_txn *t, void *arg)
{
    put_arg *a = arg;
    int rc = ks_idx_del(t, a->tid, 3, a->data, strlen(a->data), a->oid);
    if (rc == KS_OK)
        rc = ks_obj_del(t, a->tid, a->oid);
    return rc;
}

static int tok_del_fn(ks_txn *t, void *arg) { return ks_token_del(t, ((put_arg *)arg)->tid); }

static void test_index_maintenance(void **state)
{
    fx *f = *state;
    put_arg objs[10];
    ks_txn *t;
    uint64_t found[16];

    for (int i = 0; i < 10; i++) {
        objs[i] = (put_arg){i ? objs[0].tid : 0, 0, i % 2 ? "odd" : "even", false};
        assert_int_equal(ks_write(f->st, put_fn, &objs[i]), KS_OK);
    }
    assert_int_equal(ks_read_begin(f->st, &t), KS_OK);
    memset(found, 0, sizeof(found));
    assert_int_equal(ks_idx_lookup(t, objs[0].tid, 3, "odd", 3, collect_cb, found), KS_OK);
    assert_int_equal(found[0], 5);
    ks_read_end(t);

    /* Remove one: index and object both go. */
    assert_int_equal(ks_write(f->st, idx_del_fn, &objs[1]), KS_OK);
    assert_int_equal(ks_read_begin(f->st, &t), KS_OK);
    memset(found, 0, sizeof(found));
    assert_int_equal(ks_idx_lookup(t, objs[0].tid, 3, "odd", 3, collect_cb, found), KS_OK);
    assert_int_equal(found[0], 4);
    for (uint64_t i = 1; i <= found[0]; i++)
        assert_int_not_equal(found[i], objs[1].oid);
    ks_read_end(t);

    /* A second token, then delete the first with everything it had. */
    put_arg other = {0, 0, "odd", false};
    assert_int_equal(ks_write(f->st, put_fn, &other), KS_OK);
    assert_int_not_equal(other.tid, objs[0].tid);
    assert_int_equal(ks_write(f->st, tok_del_fn, &objs[0]), KS_OK);
    assert_int_equal(ks_read_begin(f->st, &t), KS_OK);
    memset(found, 0, sizeof(found));
    assert_int_equal(ks_idx_lookup(t, objs[0].tid, 3, "odd", 3, collect_cb, found), KS_OK);
    assert_int_equal(found[0], 0);
    uint64_t cnt = 9;
    assert_int_equal(ks_token_count_objects(t, objs[0].tid, &cnt), KS_OK);
    assert_int_equal(cnt, 0);
    assert_int_equal(ks_idx_lookup(t, other.tid, 3, "odd", 3, collect_cb, found), KS_OK);
    assert_int_equal(found[0], 1);
    uint8_t *b;
    size_t l;
    assert_int_equal(ks_token_get(t, objs[0].tid, &b, &l), KS_ENOTFOUND);
    assert_int_equal(ks_token_get(t, other.tid, &b, &l), KS_OK);
    ks_buf_free(b, l);
    ks_read_end(t);
}

/* Records edited or swapped on disk are detected; other objects still work. */
static void test_tamper_and_swap(void **state)
{
    fx *f = *state;
    put_arg a = {0, 0, "alpha", false}, b = {0, 0, "bravo", false}, c = {0, 0, "charlie", false};
    int rc;

    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    b.tid = c.tid = a.tid;
    assert_int_equal(ks_write(f->st, put_fn, &b), KS_OK);
    assert_int_equal(ks_write(f->st, put_fn, &c), KS_OK);
    ks_close(f->st);
    f->st = NULL;

    /* Edit the files with LMDB directly: swap a and b, flip a byte of c. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "objects", 0, &dbi), 0);
    uint8_t ka[12], kb[12], kc[12];
    ks_be32(ka, a.tid); ks_be64(ka + 4, a.oid);
    ks_be32(kb, b.tid); ks_be64(kb + 4, b.oid);
    ks_be32(kc, c.tid); ks_be64(kc + 4, c.oid);
    MDB_val k1 = {12, ka}, k2 = {12, kb}, k3 = {12, kc}, v1, v2, v3;
    assert_int_equal(mdb_get(txn, dbi, &k1, &v1), 0);
    assert_int_equal(mdb_get(txn, dbi, &k2, &v2), 0);
    assert_int_equal(mdb_get(txn, dbi, &k3, &v3), 0);
    uint8_t *ca = malloc(v1.mv_size), *cb = malloc(v2.mv_size), *cc = malloc(v3.mv_size);
    memcpy(ca, v1.mv_data, v1.mv_size);
    memcpy(cb, v2.mv_data, v2.mv_size);
    memcpy(cc, v3.mv_data, v3.mv_size);
    cc[v3.mv_size / 2] ^= 0x40;
    MDB_val n1 = {v2.mv_size, cb}, n2 = {v1.mv_size, ca}, n3 = {v3.mv_size, cc};
    assert_int_equal(mdb_put(txn, dbi, &k1, &n1, 0), 0);
    assert_int_equal(mdb_put(txn, dbi, &k2, &n2, 0), 0);
    assert_int_equal(mdb_put(txn, dbi, &k3, &n3, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(ca); free(cb); free(cc);

    ks_err err;
    assert_int_equal(ks_open(f->dir, &f->mk, 0, &f->st, &err), KS_OK);
    char *s = obj_str(f->st, a.tid, a.oid, &rc);
    assert_null(s);
    assert_int_equal(rc, KS_ECORRUPT);
    s = obj_str(f->st, b.tid, b.oid, &rc);
    assert_int_equal(rc, KS_ECORRUPT);
    s = obj_str(f->st, c.tid, c.oid, &rc);
    assert_int_equal(rc, KS_ECORRUPT);

    /* Other objects written later still work. */
    put_arg d = {a.tid, 0, "delta", false};
    assert_int_equal(ks_write(f->st, put_fn, &d), KS_OK);
    s = obj_str(f->st, d.tid, d.oid, &rc);
    assert_int_equal(rc, KS_OK);
    assert_string_equal(s, "delta");
    free(s);
}

static void test_wrong_key_and_missing(void **state)
{
    fx *f = *state;
    ks_mkey other;
    ks_store *st2;
    ks_err err = {{0}};
    char want[17], have[17];
    uint8_t kcv[KS_KCV_LEN];

    ks_close(f->st);
    f->st = NULL;
    memset(&other, 0, sizeof(other));
    memset(other.key, 0x5a, sizeof(other.key));
    snprintf(other.source, sizeof(other.source), "/etc/p11mk/other.key");
    assert_int_equal(ks_open(f->dir, &other, 0, &st2, &err), KS_EWRONGKEY);
    ks_mkey_kcv(&f->mk, kcv);
    ks_kcv_hex(kcv, want);
    ks_mkey_kcv(&other, kcv);
    ks_kcv_hex(kcv, have);
    assert_non_null(strstr(err.msg, want));
    assert_non_null(strstr(err.msg, have));
    assert_non_null(strstr(err.msg, "/etc/p11mk/other.key"));

    /* While open under the right key, a second open under another key is refused. */
    assert_int_equal(ks_open(f->dir, &f->mk, 0, &f->st, &err), KS_OK);
    assert_int_equal(ks_open(f->dir, &other, 0, &st2, &err), KS_EWRONGKEY);
    /* ... and under the same key it is shared. */
    assert_int_equal(ks_open(f->dir, &f->mk, 0, &st2, &err), KS_OK);
    assert_ptr_equal(st2, f->st);
    ks_close(st2);

    char missing[300];
    snprintf(missing, sizeof(missing), "%s/nope", f->dir);
    err.msg[0] = 0;
    assert_int_equal(ks_open(missing, &f->mk, 0, &st2, &err), KS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "p11mk-admin init"));
    /* An existing empty directory without CREATE. */
    mkdir(missing, 0700);
    err.msg[0] = 0;
    assert_int_equal(ks_open(missing, &f->mk, 0, &st2, &err), KS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "p11mk-admin init"));
    /* A file where a directory should be. */
    char file[320];
    snprintf(file, sizeof(file), "%s/plain", f->dir);
    write_file(file, "x", 1, 0600);
    assert_int_equal(ks_open(file, &f->mk, KS_OPEN_CREATE, &st2, &err), KS_EINVAL);
    assert_int_equal(ks_open(NULL, &f->mk, 0, &st2, &err), KS_EINVAL);

    /* Files are private. */
    char data[320];
    struct stat sb;
    snprintf(data, sizeof(data), "%s/data.mdb", f->dir);
    assert_int_equal(stat(data, &sb), 0);
    assert_int_equal(sb.st_mode & 077, 0);
}

static void test_readonly_store(void **state)
{
    fx *f = *state;
    ks_store *st2;
    ks_err err;
    put_arg a = {0, 0, "x", false};
    ks_close(f->st);
    f->st = NULL;
    assert_int_equal(ks_open(f->dir, &f->mk, KS_OPEN_RDONLY, &st2, &err), KS_OK);
    assert_int_equal(ks_write(st2, put_fn, &a), KS_EROFS);
    ks_close(st2);
    if (geteuid() != 0) {
        /* A directory this user cannot write is served read-only. */
        chmod(f->dir, 0500);
        assert_int_equal(ks_open(f->dir, &f->mk, 0, &st2, &err), KS_OK);
        assert_int_equal(ks_write(st2, put_fn, &a), KS_EROFS);
        ks_close(st2);
        chmod(f->dir, 0700);
    }
    assert_int_equal(ks_open(f->dir, &f->mk, 0, &f->st, &err), KS_OK);
}

/* A tiny initial map must grow instead of failing with MDB_MAP_FULL. */
static void test_map_growth(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-grow-XXXXXX";
    ks_mkey mk;
    ks_store *st;
    ks_err err;
    ks_info info;
    char data[2048];

    assert_non_null(mkdtemp(dir));
    setenv("P11MK_MAPSIZE_INIT", "262144", 1);
    ks_mkey_default(&mk);
    assert_int_equal(ks_open(dir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    unsetenv("P11MK_MAPSIZE_INIT");
    memset(data, 'a', sizeof(data) - 1);
    data[sizeof(data) - 1] = 0;
    put_arg a = {0, 0, data, false};
    for (int i = 0; i < 2000; i++) {
        data[i % 2000] = (char)('b' + i % 20);
        assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
    }
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.n_objects, 2000);
    assert_true(info.map_size > 262144 * 4);
    int rc;
    char *s = obj_str(st, a.tid, a.oid, &rc);
    assert_int_equal(rc, KS_OK);
    assert_string_equal(s, data);
    free(s);
    ks_close(st);
    rm_rf(dir);
}

/* After fork the child opens its own environment and sees the data. */
static void test_fork_child_reopens(void **state)
{
    fx *f = *state;
    put_arg a = {0, 0, "from parent", false};
    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ks_store *st;
        ks_err err;
        int rc, ok = 1;
        /* The inherited handle is abandoned, not closed. */
        ks_close(f->st);
        if (ks_open(f->dir, &f->mk, 0, &st, &err) != KS_OK || st == f->st)
            _exit(2);
        char *s = obj_str(st, a.tid, a.oid, &rc);
        ok = s && strcmp(s, "from parent") == 0;
        free(s);
        put_arg b = {a.tid, 0, "from child", false};
        ok = ok && ks_write(st, put_fn, &b) == KS_OK;
        ks_close(st);
        _exit(ok ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* The parent still works and sees the child's object. */
    ks_txn *t;
    uint64_t found[16] = {0};
    assert_int_equal(ks_read_begin(f->st, &t), KS_OK);
    assert_int_equal(ks_idx_lookup(t, a.tid, 3, "from child", 10, collect_cb, found), KS_OK);
    ks_read_end(t);
    assert_int_equal(found[0], 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_roundtrip_and_binding),
        cmocka_unit_test(test_strerror_covers_codes),
        cmocka_unit_test(test_mkey_default_and_kcv),
        cmocka_unit_test(test_mkey_file),
        cmocka_unit_test(test_config_parse),
        cmocka_unit_test_setup_teardown(test_store_tokens_objects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_maintenance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_and_swap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key_and_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_store, setup, teardown),
        cmocka_unit_test(test_map_growth),
        cmocka_unit_test_setup_teardown(test_fork_child_reopens, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
