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
#include <sys/mman.h>
#include <sys/stat.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


#include <openssl/evp.h>

#include "keystore/ks.h"
#include "keystore/ks_internal.h"
#include "keystore/ks_lmdb_pages.h"
#include "keystore/ks_tamper.h"
#include "tests/unit/ks_test_util.h"

/* ---- fixtures ------------------------------------------------------------ */

typedef struct {
    char dir[256];
    ks_mkey mk;
    ks_store *st;
} fx;


static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    ks_err err = KS_ERR_INIT;
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

static char *read_text(const char *path)
{
    static char buf[1024];
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    assert_true(n >= 0);
    buf[n] = '\0';
    return strdup(buf);
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
    for (int c = KS_OK; c >= KS_EBADFILE; c--)
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
    ks_err err = KS_ERR_INIT;
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
    ks_err err = KS_ERR_INIT;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/p11mk.conf", dir);
    const char good[] = "# comment\n\nkeystore = store\nmaster_key=/etc/p11mk/mk.key  # trailing\n"
                        "log = stderr\nlog_level = debug\nkey_file_mode = 0640\nlegacy_mechanisms = yes\n"
                        "backend = lmdb\n";
    write_file(path, good, sizeof(good) - 1, 0644);
    assert_int_equal(ks_config_load_file(&cfg, path, &err), KS_OK);
    char want[320];
    snprintf(want, sizeof(want), "%s/store", dir); /* relative to the config file */
    assert_string_equal(cfg.keystore, want);
    assert_string_equal(cfg.master_key, "/etc/p11mk/mk.key");
    assert_string_equal(cfg.log, "stderr");
    assert_int_equal(cfg.log_level, KS_LOG_DEBUG);
    assert_int_equal(cfg.key_file_mode, 0640);
    assert_true(cfg.legacy_mechanisms);
    assert_string_equal(cfg.backend, "lmdb");
    assert_string_equal(cfg.source, path);
    ks_config_free(&cfg);
    const char off[] = "legacy_mechanisms = no\n";
    write_file(path, off, sizeof(off) - 1, 0644);
    assert_int_equal(ks_config_load_file(&cfg, path, &err), KS_OK);
    assert_false(cfg.legacy_mechanisms);
    assert_null(cfg.backend); /* not set: lmdb */
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
        {"legacy_mechanisms = true\n", ":1: legacy_mechanisms 'true' is not one of no, yes"},
        {"legacy_mechanisms = yes\nlegacy_mechanisms = no\n", ":2: key 'legacy_mechanisms' is set twice"},
        {"keystore = /x\nbackend = postgresql\n", "backend = postgresql needs postgresql = <libpq connection string>"},
        {"backend = mysql\n", ":1: backend 'mysql' is not built in (this p11mk has: lmdb, postgresql)"},
        {"backend = LMDB\n", ":1: backend 'LMDB' is not built in (this p11mk has: lmdb, postgresql)"},
        {"backend = postgresql\npostgresql = dbname=x password=secret\n", "holds a password and the file is readable"},
        {"postgresql = a\npostgresql = b\n", ":2: key 'postgresql' is set twice"},
        {"backend = lmdb\nbackend = lmdb\n", ":2: key 'backend' is set twice"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, bad[i].text, strlen(bad[i].text), 0644);
        err.msg[0] = 0;
        assert_int_equal(ks_config_load(&cfg, &err), KS_ECONFIG);
        assert_non_null(strstr(err.msg, path));
        assert_non_null(strstr(err.msg, bad[i].expect));
    }
    /* A NUL byte or an over-long line is refused where it is, not read as a
     * cut-short line (and the rest of a long line as lines of its own). */
    static char line[6000];
    const char nul[] = "keystore = /x\0/y\nmaster_key = k\n";
    write_file(path, nul, sizeof(nul) - 1, 0644);
    assert_int_equal(ks_config_load(&cfg, &err), KS_ECONFIG);
    assert_non_null(strstr(err.msg, ":1: the line holds a NUL byte"));
    for (size_t n = 4094; n <= 5000; n += 906) {
        memset(line, 'x', sizeof(line));
        line[0] = '#';
        memcpy(line + n, "\nkeystore = /z\n", 15);
        write_file(path, line, n + 15, 0644);
        err.msg[0] = 0;
        assert_int_equal(ks_config_load(&cfg, &err), n == 4094 ? KS_OK : KS_ECONFIG);
        if (n == 4094) {
            assert_string_equal(cfg.keystore, "/z");
            ks_config_free(&cfg);
        } else {
            assert_non_null(strstr(err.msg, ":1: the line is too long"));
        }
    }
    /* Rewriting master_key copies every other line as it is, and stops at
     * a line the loader would refuse, the file left unchanged. */
    const char keep[] = "keystore = /k\n# note\nmaster_key = old\nlog = stderr";
    write_file(path, keep, sizeof(keep) - 1, 0600);
    assert_int_equal(ks_config_write_master_key(path, "/new.key", "/k", &err), KS_OK);
    char *back = read_text(path);
    assert_string_equal(back, "keystore = /k\n# note\nmaster_key = /new.key\nlog = stderr\n");
    free(back);
    write_file(path, nul, sizeof(nul) - 1, 0600);
    assert_int_equal(ks_config_write_master_key(path, "/new.key", "/k", &err), KS_ECONFIG);
    assert_non_null(strstr(err.msg, "holds a NUL byte"));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, sizeof(nul) - 1);

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
        assert_false(cfg.legacy_mechanisms);
        ks_config_free(&cfg);
    }
    unsetenv("XDG_CONFIG_HOME");
    unsetenv("XDG_DATA_HOME");
    rmdir(dir);
}

/* ---- store --------------------------------------------------------------- */


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

static uint64_t idx_find(ks_store *st, uint32_t tid, const char *v)
{
    uint64_t found[16] = {0};
    ks_txn *t;

    assert_int_equal(ks_read_begin(st, &t), KS_OK);
    assert_int_equal(ks_idx_lookup(t, tid, 3, v, strlen(v), collect_cb, found), KS_OK);
    ks_read_end(t);
    assert_true(found[0] <= 1);
    return found[0] ? found[1] : 0;
}

/* The index MAC contexts given back after use and taken again (re-keyed
 * from their saved state) compute what a fresh duplicate of the keyed
 * context computes: entries written with reused contexts are found by a
 * store opened afresh (no spare yet), and the other way round. */
static void test_index_mac_reuse(void **state)
{
    fx *f = *state;
    put_arg a = {0, 0, "alpha", false}, b = {0, 0, "beta", false}, c = {0, 0, "gamma", false};
    ks_err err = KS_ERR_INIT;

    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    assert_non_null(atomic_load(&f->st->idx_spare[0])); /* given back, kept */
    b.tid = c.tid = a.tid;
    assert_int_equal(ks_write(f->st, put_fn, &b), KS_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(idx_find(f->st, a.tid, "alpha"), a.oid);
        assert_int_equal(idx_find(f->st, a.tid, "beta"), b.oid);
        assert_int_equal(idx_find(f->st, a.tid, "delta"), 0);
    }
    ks_close(f->st);
    assert_int_equal(ks_open(f->dir, &f->mk, 0, &f->st, &err), KS_OK);
    for (int i = 0; i < KS_IDX_SPARE; i++)
        assert_null(atomic_load(&f->st->idx_spare[i]));
    assert_int_equal(idx_find(f->st, a.tid, "beta"), b.oid); /* a fresh duplicate */
    assert_int_equal(idx_find(f->st, a.tid, "alpha"), a.oid);
    assert_int_equal(ks_write(f->st, put_fn, &c), KS_OK);
    ks_close(f->st);
    assert_int_equal(ks_open(f->dir, &f->mk, 0, &f->st, &err), KS_OK);
    assert_int_equal(idx_find(f->st, a.tid, "gamma"), c.oid);
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
    assert_int_equal(info.format_version, 2);
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

static char verify_kinds[16];
static void kind_cb(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg)
{
    (void)token, (void)oid, (void)err, (void)arg;
    size_t n = strlen(verify_kinds);
    if (n + 1 < sizeof(verify_kinds))
        verify_kinds[n] = kind, verify_kinds[n + 1] = '\0';
}

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
    /* Deleted token ids are not given again; its incarnation moved on. */
    uint32_t next = 0;
    uint64_t inc = 0;
    assert_int_equal(ks_token_new_id(t, &next), KS_OK);
    assert_true(next > other.tid && next > objs[0].tid);
    assert_int_equal(ks_token_incarnation(t, objs[0].tid, &inc), KS_OK);
    assert_int_equal(inc, 1);
    assert_int_equal(ks_token_incarnation(t, other.tid, &inc), KS_OK);
    assert_int_equal(inc, 0);
    assert_int_equal(ks_token_exists(t, objs[0].tid), KS_ENOTFOUND);
    assert_int_equal(ks_token_exists(t, other.tid), KS_OK);
    ks_read_end(t);

    /* An object for a token that does not exist is refused; nothing is written. */
    uint64_t checked, failed;
    put_arg orphan = {objs[0].tid, 0, "orphan", false};
    assert_int_equal(ks_write(f->st, put_fn, &orphan), KS_ECORRUPT);
    verify_kinds[0] = 0;
    assert_int_equal(ks_verify(f->st, kind_cb, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
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

    /* Edit the stored records directly: swap a and b, flip a byte of c. */
    ks_tamper *raw;
    assert_int_equal(ks_tamper_open(f->dir, 0, &raw), KS_OK);
    uint8_t ka[12], kb[12], kc[12];
    ks_tamper_object_key(ka, a.tid, a.oid);
    ks_tamper_object_key(kb, b.tid, b.oid);
    ks_tamper_object_key(kc, c.tid, c.oid);
    uint8_t *ca, *cb, *cc;
    size_t la, lb, lc;
    assert_int_equal(ks_tamper_get(raw, KS_TAMPER_OBJECTS, ka, 12, &ca, &la), KS_OK);
    assert_int_equal(ks_tamper_get(raw, KS_TAMPER_OBJECTS, kb, 12, &cb, &lb), KS_OK);
    assert_int_equal(ks_tamper_get(raw, KS_TAMPER_OBJECTS, kc, 12, &cc, &lc), KS_OK);
    cc[lc / 2] ^= 0x40;
    assert_int_equal(ks_tamper_put(raw, KS_TAMPER_OBJECTS, ka, 12, cb, lb), KS_OK);
    assert_int_equal(ks_tamper_put(raw, KS_TAMPER_OBJECTS, kb, 12, ca, la), KS_OK);
    assert_int_equal(ks_tamper_put(raw, KS_TAMPER_OBJECTS, kc, 12, cc, lc), KS_OK);
    assert_int_equal(ks_tamper_commit(raw), KS_OK);
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
    ks_err err = KS_ERR_INIT;
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
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.map_size, 262144); /* the small map was taken: the growth below is real */
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

/* Backups by one process while another grows the map: each adopts the new
 * size and copies (LMDB says MDB_MAP_RESIZED when the map grew between the
 * backup's page check and its copy: the copy failed, found by a hostile
 * test with backups while applications grew the map). */
static void test_backup_while_map_grows(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-growbk-XXXXXX", bak[64];
    ks_mkey mk;
    ks_store *st;
    ks_err err;
    char data[2048];
    int up[2];

    assert_non_null(mkdtemp(dir));
    snprintf(bak, sizeof(bak), "%s.bak", dir);
    setenv("P11MK_MAPSIZE_INIT", "65536", 1);
    ks_mkey_default(&mk);
    assert_int_equal(ks_open(dir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    assert_int_equal(pipe(up), 0);
    pid_t c = fork();
    assert_true(c >= 0);
    if (c == 0) { /* backups until the parent has grown the map 32 times over */
        ks_store *cs;
        ks_err cerr = KS_ERR_INIT;
        ks_info ci;
        int n = 0;
        if (ks_open(dir, &mk, 0, &cs, &cerr) != KS_OK || write(up[1], "o", 1) != 1)
            _exit(2);
        do {
            if (ks_backup(cs, bak, NULL, &cerr) != KS_OK) {
                fprintf(stderr, "backup %d: %s\n", n, cerr.msg);
                _exit(1);
            }
            unlink(bak);
            n++;
        } while (ks_get_info(cs, &ci) == KS_OK && ci.map_size < 65536 * 32);
        _exit(n > 1 ? 0 : 3);
    }
    char b;
    assert_int_equal(read(up[0], &b, 1), 1); /* the child has the small map */
    unsetenv("P11MK_MAPSIZE_INIT");
    memset(data, 'a', sizeof(data) - 1);
    data[sizeof(data) - 1] = 0;
    put_arg a = {0, 0, data, false};
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < 3000 && (done = waitpid(c, &status, WNOHANG)) == 0; i++) {
        data[i % 2000] = (char)('b' + i % 20);
        assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
    }
    if (done == 0)
        assert_int_equal(waitpid(c, &status, 0), c);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(up[0]), close(up[1]);
    ks_close(st);
    unlink(bak);
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

/* ---- the writer gate ------------------------------------------------------ */

/* A writer that holds its transaction open until told, in a child: it says
 * "h" (or, with fork_keeper, the pid of a child it forked mid-write, which
 * then sleeps) on `up`, waits for a byte on `go`, then commits. */
typedef struct {
    int up, go;
    bool fork_keeper;
} hold_arg;

static int hold_fn(ks_txn *t, void *arg)
{
    hold_arg *h = arg;
    put_arg a = {0, 0, "held", false};
    pid_t keeper = 0;
    char b;
    if (h->fork_keeper && (keeper = fork()) == 0) {
        sleep(60); /* a child that lives on with everything its parent had open */
        _exit(0);
    }
    if (write(h->up, &keeper, sizeof(keeper)) != sizeof(keeper) || read(h->go, &b, 1) != 1)
        _exit(3);
    return put_fn(t, &a);
}

static pid_t spawn_holder(const char *dir, const ks_mkey *mk, bool fork_keeper, int *go_w, pid_t *keeper)
{
    int up[2], go[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ks_store *st;
        ks_err err;
        hold_arg h = {up[1], go[0], fork_keeper};
        close(up[0]);
        close(go[1]);
        if (ks_open(dir, mk, 0, &st, &err) != KS_OK)
            _exit(2);
        _exit(ks_write(st, hold_fn, &h) == KS_OK ? 0 : 1);
    }
    close(up[1]);
    close(go[0]);
    assert_int_equal(read(up[0], keeper, sizeof(*keeper)), sizeof(*keeper));
    close(up[0]);
    *go_w = go[1];
    return pid;
}

static pid_t spawn_writer(const char *dir, const ks_mkey *mk)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ks_store *st;
        ks_err err;
        put_arg a = {0, 0, "waited", false};
        if (ks_open(dir, mk, 0, &st, &err) != KS_OK)
            _exit(2);
        _exit(ks_write(st, put_fn, &a) == KS_OK ? 0 : 1);
    }
    return pid;
}

/* Is pid asleep in a system call that waits for a lock (fcntl, futex)? */
static bool waits_for_lock(pid_t pid)
{
    char p[64], b[64] = {0};
    snprintf(p, sizeof(p), "/proc/%d/syscall", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    bool got = fgets(b, sizeof(b), f) != NULL;
    fclose(f);
    return got && (strncmp(b, "72 ", 3) == 0 || strncmp(b, "202 ", 4) == 0);
}

/* The child's exit status, or -1 when it did not end within secs (then killed). */
static int end_within(pid_t pid, int secs)
{
    int status;
    for (int i = 0; i < secs * 50; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

/* LMDB 0.9's lock file on glibc: the writer's mutex at offset 64 (a robust
 * pthread mutex; the lock word first). A process
 * with LMDB open must not open and close lock.mdb itself (closing any
 * descriptor of it drops the process's fcntl locks, LMDB's among them: the
 * next opener would take the file as unused and reset it), so what is done
 * to the file is done in a child. */
#define LOCK_WMUTEX 64

/* In a child: the lock word at off has owner's thread id (0 when not),
 * then its waiters bit cleared (the wake-up a killed waiter took). */
static int lockword_lose_wakeup(const char *dir, size_t off, pid_t owner)
{
    pid_t c = fork();
    assert_true(c >= 0);
    if (c == 0) {
        char lp[300];
        snprintf(lp, sizeof(lp), "%s/lock.mdb", dir);
        int fd = open(lp, O_RDWR);
        char *m = fd >= 0 ? mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
        if (m == MAP_FAILED)
            _exit(2);
        uint32_t *w = (uint32_t *)(m + off);
        if ((__atomic_load_n(w, __ATOMIC_SEQ_CST) & 0x3fffffffu) != (uint32_t)owner)
            _exit(1);
        __atomic_fetch_and(w, 0x7fffffffu, __ATOMIC_SEQ_CST);
        _exit(0);
    }
    return end_within(c, 20);
}

/* Wait until pid sleeps in a lock's wait, seen 10 times running. */
static void wait_asleep(pid_t pid)
{
    int asleep = 0;
    for (int i = 0; i < 1000 && asleep < 10; i++) {
        asleep = waits_for_lock(pid) ? asleep + 1 : 0;
        usleep(10000);
    }
    assert_int_equal(asleep, 10);
}

/* A writer waiting for another's write goes on when that one ends, however
 * it ends. LMDB's writer lock loses a wake-up when a waiter woken to take it
 * is killed first: the word is left without its waiters bit, the next
 * unlock wakes nobody. That state is made here by hand (the bit cleared
 * while the holder holds it): a writer asleep on LMDB's lock would sleep
 * on; one at the gate (ks_lmdb.c) does not. Then the holder killed, and
 * killed after forking a child that lives on. */
static void test_writer_gate(void **state)
{
    fx *f = *state;
    for (int round = 0; round < 3; round++) {
        int go;
        pid_t keeper = 0;
        pid_t h = spawn_holder(f->dir, &f->mk, round == 2, &go, &keeper);
        pid_t w = spawn_writer(f->dir, &f->mk);
        wait_asleep(w);
        if (round == 0) {
            /* the holder owns LMDB's writer lock (the offset is right); the wake-up lost */
            assert_int_equal(lockword_lose_wakeup(f->dir, LOCK_WMUTEX, h), 0);
            assert_int_equal(write(go, "g", 1), 1);
            assert_int_equal(end_within(h, 20), 0);
        } else {
            kill(h, SIGKILL); /* round 2: its child lives on */
            int status;
            assert_int_equal(waitpid(h, &status, 0), h);
        }
        close(go);
        int wrc = end_within(w, 20);
        if (keeper > 0)
            kill(keeper, SIGKILL); /* not our child: reaped by init */
        assert_int_equal(wrc, 0);
    }
}

/* ---- rotation -------------------------------------------------------------- */

typedef struct {
    char dir[256], keyfile[300];
    ks_mkey k1, k2;
    ks_store *st;
    uint32_t tid;
    uint64_t oids[64];
    size_t n;
} rot_fx;

static ks_mkey key_from_file(const char *path)
{
    ks_config cfg;
    ks_mkey mk;
    ks_err err;
    ks_config_defaults(&cfg);
    free(cfg.master_key);
    cfg.master_key = strdup(path);
    assert_int_equal(ks_mkey_load(&cfg, &mk, &err), KS_OK);
    ks_config_free(&cfg);
    return mk;
}

static void save_regs(const char *path, const ks_mkey *cur, const ks_mkey *nxt, const ks_mkey *old)
{
    ks_registers r;
    ks_err err;
    memset(&r, 0, sizeof(r));
    r.current = *cur;
    if (nxt) {
        r.has_new = true;
        r.staged = *nxt;
    }
    if (old)
        assert_int_equal(ks_reg_insert_old(&r, 0, old->key, 1, 0, false), KS_OK);
    assert_int_equal(ks_reg_save(path, &r, &err), KS_OK);
    ks_reg_clear(&r);
}

static int rot_setup(void **state)
{
    rot_fx *f = calloc(1, sizeof(*f));
    ks_err err;
    snprintf(f->dir, sizeof(f->dir), "/tmp/p11mk-rot-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->keyfile, sizeof(f->keyfile), "%s/master.key", f->dir);
    assert_int_equal(ks_mkey_generate(&f->k1), KS_OK);
    assert_int_equal(ks_mkey_generate(&f->k2), KS_OK);
    save_regs(f->keyfile, &f->k1, NULL, NULL);
    ks_mkey mk = key_from_file(f->keyfile);
    char ksdir[300];
    snprintf(ksdir, sizeof(ksdir), "%s/ks", f->dir);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &f->st, &err), KS_OK);
    put_arg a = {0, 0, "object-0", false};
    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    f->tid = a.tid;
    f->oids[f->n++] = a.oid;
    for (int i = 1; i < 20; i++) {
        char l[32];
        snprintf(l, sizeof(l), "object-%d", i);
        put_arg b = {f->tid, 0, l, false};
        assert_int_equal(ks_write(f->st, put_fn, &b), KS_OK);
        f->oids[f->n++] = b.oid;
    }
    *state = f;
    return 0;
}

static int rot_teardown(void **state)
{
    rot_fx *f = *state;
    ks_close(f->st);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static uint64_t count_at(ks_store *st, uint32_t epoch)
{
    uint32_t ep[8];
    uint64_t cnt[8];
    size_t nf;
    assert_int_equal(ks_rot_count(st, ep, cnt, 8, &nf), KS_OK);
    for (size_t i = 0; i < nf; i++)
        if (ep[i] == epoch)
            return cnt[i];
    return 0;
}

static void all_readable(rot_fx *f, ks_store *st)
{
    for (size_t i = 0; i < f->n; i++) {
        int rc;
        char *s = obj_str(st, f->tid, f->oids[i], &rc);
        assert_int_equal(rc, KS_OK);
        assert_non_null(strstr(s, "object-"));
        free(s);
    }
}

static int stop_after_first(const ks_rot_progress *p, void *arg)
{
    (void)p;
    return ++*(int *)arg >= 1;
}

static void test_rotation_cycle(void **state)
{
    rot_fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_info info;

    /* The key file gains NEW first, then the keystore stages it. */
    save_regs(f->keyfile, &f->k1, &f->k2, NULL);
    assert_int_equal(ks_rot_stage(f->st, &f->k2, 0, &err), KS_OK);
    assert_int_equal(ks_get_info(f->st, &info), KS_OK);
    assert_int_equal(info.rot_state, KS_ROT_STAGED);
    assert_int_equal(info.epoch, 1);
    assert_int_equal(info.new_epoch, 2);
    err.msg[0] = 0;
    assert_int_equal(ks_rot_stage(f->st, &f->k2, 0, &err), KS_ESTATE);
    assert_non_null(strstr(err.msg, "already staged"));

    /* Writes go under NEW at once. */
    put_arg a = {f->tid, 0, "object-written-while-staged", false};
    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    f->oids[f->n++] = a.oid;
    assert_int_equal(count_at(f->st, 2), 1);
    assert_int_equal(count_at(f->st, 1), 21); /* 20 objects + the token */

    err.msg[0] = 0;
    assert_int_equal(ks_rot_commit(f->st, false, 0, &err), KS_ESTATE);
    assert_non_null(strstr(err.msg, "rewrap"));

    /* An interrupted rewrap resumes. */
    int calls = 0;
    assert_int_equal(ks_rot_rewrap(f->st, 5, stop_after_first, &calls, NULL, NULL, &err), KS_OK);
    assert_int_equal(ks_get_info(f->st, &info), KS_OK);
    assert_int_equal(info.rot_state, KS_ROT_REWRAP);
    assert_true(count_at(f->st, 1) > 0);
    all_readable(f, f->st);
    assert_int_equal(ks_rot_rewrap(f->st, 5, NULL, NULL, NULL, NULL, &err), KS_OK);
    assert_int_equal(ks_get_info(f->st, &info), KS_OK);
    assert_int_equal(info.rot_state, KS_ROT_READY);
    assert_int_equal(count_at(f->st, 1), 0);
    all_readable(f, f->st);

    assert_int_equal(ks_rot_commit(f->st, false, 0, &err), KS_OK);
    assert_int_equal(ks_get_info(f->st, &info), KS_OK);
    assert_int_equal(info.epoch, 2);
    assert_int_equal(info.rot_state, KS_ROT_IDLE);
    assert_int_equal(ks_epoch(f->st), 2);
    all_readable(f, f->st);
    uint64_t checked, failed;
    assert_int_equal(ks_verify(f->st, NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    assert_int_equal(checked, 22);
    assert_int_equal(ks_rot_commit(f->st, false, 0, &err), KS_ESTATE);
    assert_int_equal(ks_rot_abort(f->st, 0, NULL, NULL, NULL, &err), KS_ESTATE);

    /* The registers move on; the retired key alone opens nothing. */
    save_regs(f->keyfile, &f->k2, NULL, &f->k1);
    char ksdir[300];
    snprintf(ksdir, sizeof(ksdir), "%s/ks", f->dir);
    ks_close(f->st);
    f->st = NULL;
    ks_store *st;
    assert_int_equal(ks_open(ksdir, &f->k1, 0, &st, &err), KS_EWRONGKEY);
    ks_mkey mk = key_from_file(f->keyfile);
    assert_int_equal(ks_open(ksdir, &mk, 0, &f->st, &err), KS_OK);
    all_readable(f, f->st);
    /* A crash between the keystore commit and the key file update: the old
     * registers (CURRENT=k1, NEW=k2) still open the keystore. */
    ks_close(f->st);
    save_regs(f->keyfile, &f->k1, &f->k2, NULL);
    mk = key_from_file(f->keyfile);
    assert_int_equal(ks_open(ksdir, &mk, 0, &f->st, &err), KS_OK);
    all_readable(f, f->st);
}

/* Objects whose values lie on overflow pages (over about 2 KiB), next to
 * small ones on the same leaf, resealed many to a transaction. LMDB
 * replaces such a value by deleting its node and adding it again with the
 * key it is given: a key that pointed into the leaf, already copied once in
 * the transaction, had moved by then, and the record went in under a few
 * bytes of its neighbour (found by a hostile test: rotations while
 * applications wrote left objects missing and a record under a garbage id).
 * The key each batch resumes after was read the same way, and records
 * between were skipped: left under the old key, or under an aborted one.
 * Both passes, in batches: rewrap, then a second rotation aborted half-way
 * and undone. */
typedef struct {
    uint32_t tid;
    uint64_t oid;
    size_t len;
} big_arg;

static int big_put_fn(ks_txn *t, void *arg)
{
    big_arg *a = arg;
    uint8_t *b = malloc(a->len);
    if (!b)
        return KS_ENOMEM;
    int rc = ks_obj_new_id(t, &a->oid);
    if (rc == KS_OK) {
        memset(b, 'x', a->len);
        snprintf((char *)b, a->len, "object-%llu", (unsigned long long)a->oid);
        b[strlen((char *)b)] = 'x';
        rc = ks_obj_create(t, a->tid, a->oid, b, a->len);
    }
    free(b);
    return rc;
}

static void big_all_readable(rot_fx *f, ks_store *st, const size_t *lens)
{
    for (size_t i = 0; i < f->n; i++) {
        ks_txn *t;
        uint8_t *b = NULL;
        size_t l = 0;
        char want[40];
        assert_int_equal(ks_read_begin(st, &t), KS_OK);
        assert_int_equal(ks_obj_get(t, f->tid, f->oids[i], &b, &l), KS_OK);
        ks_read_end(t);
        if (lens[i]) {
            assert_int_equal(l, lens[i]);
            snprintf(want, sizeof(want), "object-%llu", (unsigned long long)f->oids[i]);
            assert_memory_equal(b, want, strlen(want));
        }
        ks_buf_free(b, l);
    }
}

static void test_rotation_big_values(void **state)
{
    rot_fx *f = *state;
    ks_err err = KS_ERR_INIT;
    size_t lens[64] = {0};
    for (int i = 0; i < 40 && f->n < 64; i++) {
        big_arg a = {f->tid, 0, i % 3 ? 3000 + 37 * (size_t)i : 200};
        assert_int_equal(ks_write(f->st, big_put_fn, &a), KS_OK);
        lens[f->n] = a.len;
        f->oids[f->n++] = a.oid;
    }
    uint64_t checked, failed;
    save_regs(f->keyfile, &f->k1, &f->k2, NULL);
    assert_int_equal(ks_rot_stage(f->st, &f->k2, 0, &err), KS_OK);
    /* in batches: each resumes after the last key the one before did, which
     * was read from the leaf after LMDB had moved it and skipped records */
    assert_int_equal(ks_rot_rewrap(f->st, 7, NULL, NULL, NULL, NULL, &err), KS_OK);
    assert_int_equal(count_at(f->st, 1), 0);
    big_all_readable(f, f->st, lens);
    assert_int_equal(ks_verify(f->st, NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    assert_int_equal(ks_rot_commit(f->st, false, 0, &err), KS_OK);
    save_regs(f->keyfile, &f->k2, NULL, &f->k1);

    ks_mkey k3;
    assert_int_equal(ks_mkey_generate(&k3), KS_OK);
    save_regs(f->keyfile, &f->k2, &k3, &f->k1);
    assert_int_equal(ks_rot_stage(f->st, &k3, 0, &err), KS_OK);
    int calls = 0;
    assert_int_equal(ks_rot_rewrap(f->st, 30, stop_after_first, &calls, NULL, NULL, &err), KS_OK);
    assert_int_equal(ks_rot_abort(f->st, 7, NULL, NULL, NULL, &err), KS_OK);
    assert_int_equal(count_at(f->st, 3), 0);
    big_all_readable(f, f->st, lens);
    assert_int_equal(ks_verify(f->st, NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    assert_int_equal(checked, f->n + 1);
}

static void test_rotation_abort(void **state)
{
    rot_fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_info info;

    save_regs(f->keyfile, &f->k1, &f->k2, NULL);
    assert_int_equal(ks_rot_stage(f->st, &f->k2, 0, &err), KS_OK);
    int calls = 0;
    assert_int_equal(ks_rot_rewrap(f->st, 4, stop_after_first, &calls, NULL, NULL, &err), KS_OK);
    put_arg a = {f->tid, 0, "object-new", false};
    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    f->oids[f->n++] = a.oid;
    assert_true(count_at(f->st, 2) > 1);
    assert_int_equal(ks_rot_abort(f->st, 3, NULL, NULL, NULL, &err), KS_OK);
    assert_int_equal(ks_get_info(f->st, &info), KS_OK);
    assert_int_equal(info.rot_state, KS_ROT_IDLE);
    assert_int_equal(info.epoch, 1);
    assert_int_equal(info.new_epoch, 0);
    assert_int_equal(count_at(f->st, 2), 0);
    all_readable(f, f->st);
    /* New writes are under CURRENT again, and the same epoch can be staged anew. */
    put_arg b = {f->tid, 0, "object-after-abort", false};
    assert_int_equal(ks_write(f->st, put_fn, &b), KS_OK);
    f->oids[f->n++] = b.oid;
    assert_int_equal(count_at(f->st, 2), 0);
    ks_mkey k3;
    assert_int_equal(ks_mkey_generate(&k3), KS_OK);
    save_regs(f->keyfile, &f->k1, &k3, NULL);
    assert_int_equal(ks_rot_stage(f->st, &k3, 0, &err), KS_OK);
    assert_int_equal(ks_rot_rewrap(f->st, 0, NULL, NULL, NULL, NULL, &err), KS_OK);
    assert_int_equal(ks_rot_commit(f->st, false, 0, &err), KS_OK);
    all_readable(f, f->st);
    /* Staging the current key is refused. */
    assert_int_equal(ks_rot_stage(f->st, &k3, 0, &err), KS_EINVAL);
}

/* Wait (at most 10 s) until *counter reaches want. */
static bool wait_count(volatile unsigned long *counter, unsigned long want)
{
    for (int i = 0; i < 10000 && *counter < want; i++)
        usleep(1000);
    return *counter >= want;
}

/* Another process keeps writing and reading through the whole rotation and
 * follows the epoch without reopening. */

static void test_rotation_with_concurrent_process(void **state)
{
    rot_fx *f = *state;
    ks_err err;
    char ksdir[300];
    int pipefd[2];
    /* The child's writes, counted where the parent sees them: in all, under
     * epoch 1, under epoch 2. The parent moves to each rotation step only
     * once the child has written since the last one, so the writes overlap
     * the stage, the rewrap and the commit. */
    volatile unsigned long *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(w != MAP_FAILED);
    snprintf(ksdir, sizeof(ksdir), "%s/ks", f->dir);
    save_regs(f->keyfile, &f->k1, &f->k2, NULL);
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pipefd[1]);
        ks_store *st;
        ks_mkey mk = key_from_file(f->keyfile);
        if (ks_open(ksdir, &mk, 0, &st, &err) != KS_OK)
            _exit(10);
        int fails = 0, writes = 0;
        char c;
        fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
        while (read(pipefd[0], &c, 1) != 0) {
            char l[48];
            snprintf(l, sizeof(l), "object-child-%d", writes);
            put_arg a = {f->tid, 0, l, false};
            if (ks_write(st, put_fn, &a) != KS_OK)
                fails++;
            uint32_t e = ks_epoch(st); /* the epoch that write committed under */
            int rc;
            char *s = obj_str(st, f->tid, a.oid, &rc);
            if (rc != KS_OK || !s || strcmp(s, l) != 0)
                fails++;
            free(s);
            s = obj_str(st, f->tid, f->oids[writes % f->n], &rc);
            if (rc != KS_OK)
                fails++;
            free(s);
            writes++;
            w[e == 1 ? 1 : e == 2 ? 2 : 3]++;
            w[0]++;
        }
        ks_close(st);
        _exit(fails ? 1 : w[3] ? 3 : (w[1] && w[2] ? 0 : 2));
    }
    close(pipefd[0]);
    assert_true(wait_count(&w[0], 5));
    assert_int_equal(ks_rot_stage(f->st, &f->k2, 0, &err), KS_OK);
    assert_true(wait_count(&w[0], w[0] + 5));
    assert_int_equal(ks_rot_rewrap(f->st, 3, NULL, NULL, NULL, NULL, &err), KS_OK);
    assert_true(wait_count(&w[0], w[0] + 5));
    assert_int_equal(ks_rot_commit(f->st, false, 0, &err), KS_OK);
    save_regs(f->keyfile, &f->k2, NULL, &f->k1);
    assert_true(wait_count(&w[2], 5)); /* the child went on under the new epoch */
    close(pipefd[1]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    printf("second process: %lu writes under epoch 1 (before and during the rotation), %lu under epoch 2\n", w[1],
           w[2]);
    munmap((void *)w, 4096);
    uint64_t checked, failed;
    assert_int_equal(ks_verify(f->st, NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    assert_int_equal(count_at(f->st, 1), 0);
}

/* In a child that is about to be killed: once `after` records are resealed,
 * tell the parent (which then kills this process at a random moment of the
 * transactions that follow) and go on working. */
typedef struct {
    int fd;
    uint64_t after;
    bool told;
} tell_arg;

static int tell_parent_after(const ks_rot_progress *p, void *arg)
{
    tell_arg *t = arg;
    if (!t->told && p->done >= t->after) {
        t->told = true;
        if (write(t->fd, "w", 1) != 1)
            _exit(11);
    }
    return 0;
}

/* kill -9 in the middle of rewrap and abort, many times: running the step
 * again always finishes it, and nothing is lost. Each kill waits until the
 * child has resealed a few records and then comes at a random moment of the
 * transactions that follow; afterwards the records are under both epochs and
 * fewer remain under the one the step moves them from than before the round
 * (the kill landed mid-way), which most rounds must show. */
static void test_rotation_crash_resume(void **state)
{
    rot_fx *f = *state;
    ks_err err;
    char ksdir[300];
    const int rounds = 12;
    int landed = 0;
    snprintf(ksdir, sizeof(ksdir), "%s/ks", f->dir);
    /* More records so that a pass takes a while. */
    for (int i = 0; i < 300; i++) {
        put_arg a = {f->tid, 0, "object-bulk", false};
        assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    }
    save_regs(f->keyfile, &f->k1, &f->k2, NULL);
    assert_int_equal(ks_rot_stage(f->st, &f->k2, 0, &err), KS_OK);
    ks_close(f->st);
    f->st = NULL;
    srand((unsigned)time(NULL));
    for (int round = 0; round < rounds; round++) {
        bool aborting = round == 6;
        uint32_t from = aborting ? 2 : 1, to = aborting ? 1 : 2;
        ks_store *st;
        ks_mkey mk = key_from_file(f->keyfile);
        assert_int_equal(ks_open(ksdir, &mk, 0, &st, &err), KS_OK);
        uint64_t before = count_at(st, from);
        ks_close(st);
        int pipefd[2];
        assert_int_equal(pipe(pipefd), 0);
        tell_arg t = {pipefd[1], 1 + (uint64_t)(rand() % 16), false};
        useconds_t delay = (useconds_t)(rand() % 1000);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pipefd[0]);
            if (ks_open(ksdir, &mk, 0, &st, &err) != KS_OK)
                _exit(10);
            int rc = aborting ? ks_rot_abort(st, 1, tell_parent_after, &t, NULL, &err)
                              : ks_rot_rewrap(st, 1, tell_parent_after, &t, NULL, NULL, &err);
            _exit(rc == KS_OK ? 0 : 1);
        }
        close(pipefd[1]);
        char c;
        ssize_t told = read(pipefd[0], &c, 1); /* 0: the child ended before it got that far */
        close(pipefd[0]);
        if (told == 1)
            usleep(delay);
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        /* Killed, or finished before the kill: anything else is a failure. */
        bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        if (!killed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fail_msg("round %d: the %s child ended with %s %d", round, aborting ? "abort" : "rewrap",
                     WIFEXITED(status) ? "exit status" : "signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? WTERMSIG(status) : status);
        assert_int_equal(ks_open(ksdir, &mk, 0, &st, &err), KS_OK);
        uint64_t left = count_at(st, from), moved = count_at(st, to);
        if (killed && told == 1 && left < before && left > 0 && moved > 0)
            landed++;
        if (aborting) { /* finish the abort (unless the child did), then stage again */
            ks_info info;
            assert_int_equal(ks_get_info(st, &info), KS_OK);
            if (info.rot_state != KS_ROT_IDLE)
                assert_int_equal(ks_rot_abort(st, 0, NULL, NULL, NULL, &err), KS_OK);
            assert_int_equal(count_at(st, 2), 0);
            assert_int_equal(ks_rot_stage(st, &f->k2, 0, &err), KS_OK);
        }
        ks_close(st);
    }
    print_message("%d of %d kill -9 landed mid-way through rewrap/abort\n", landed, rounds);
    assert_true(landed >= rounds * 3 / 4);
    ks_mkey mk = key_from_file(f->keyfile);
    assert_int_equal(ks_open(ksdir, &mk, 0, &f->st, &err), KS_OK);
    assert_int_equal(ks_rot_rewrap(f->st, 0, NULL, NULL, NULL, NULL, &err), KS_OK);
    assert_int_equal(ks_rot_commit(f->st, false, 0, &err), KS_OK);
    uint64_t checked, failed;
    assert_int_equal(ks_verify(f->st, NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    assert_int_equal(checked, 321);
    all_readable(f, f->st);
}

static void test_registers_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-reg-XXXXXX", path[300];
    ks_mkey a, b, c;
    ks_registers r;
    ks_err err = KS_ERR_INIT;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/regs", dir);
    assert_int_equal(ks_mkey_generate(&a), KS_OK);
    assert_int_equal(ks_mkey_generate(&b), KS_OK);
    assert_memory_not_equal(a.key, b.key, KS_MK_LEN);
    assert_int_equal(ks_mkey_from_passphrase("correct horse battery", 21, &c), KS_OK);
    ks_mkey c2;
    assert_int_equal(ks_mkey_from_passphrase("correct horse battery", 21, &c2), KS_OK);
    assert_memory_equal(c.key, c2.key, KS_MK_LEN); /* deterministic across hosts */
    save_regs(path, &a, &b, &c);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(ks_reg_load(path, 0600, &r, &err), KS_OK);
    assert_memory_equal(r.current.key, a.key, KS_MK_LEN);
    assert_true(r.has_new);
    assert_memory_equal(r.staged.key, b.key, KS_MK_LEN);
    assert_int_equal(r.n_old, 1);
    assert_memory_equal(r.old[0].key, c.key, KS_MK_LEN);
    ks_reg_clear(&r);
    /* Truncated or edited files are refused with a clear message. */
    int fd = open(path, O_RDWR);
    off_t size = lseek(fd, 0, SEEK_END);
    assert_int_equal(ftruncate(fd, size - 10), 0);
    close(fd);
    err.msg[0] = 0;
    assert_int_equal(ks_reg_load(path, 0600, &r, &err), KS_EINVAL);
    assert_non_null(strstr(err.msg, "damaged or truncated"));
    save_regs(path, &a, NULL, NULL);
    fd = open(path, O_RDWR);
    char ch;
    assert_int_equal(pread(fd, &ch, 1, 80), 1);
    ch = ch == 'a' ? 'b' : 'a';
    assert_int_equal(pwrite(fd, &ch, 1, 80), 1);
    close(fd);
    assert_int_equal(ks_reg_load(path, 0600, &r, &err), KS_EINVAL);
    unlink(path);
    rmdir(dir);
}

/* Rewrites the key file at path with its first line starting with `from`
 * replaced by `to` (NULL: removed; "+..." appended after it instead) and a
 * correct checksum: what a hand edit or a hostile writer with write access
 * to the file can produce. */
static void edit_regs(const char *path, const char *from, const char *to)
{
    char text[4096], out[4096];
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f), len = 0;
    fclose(f);
    text[n] = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "check ", 6) == 0)
            break;
        bool hit = from && strncmp(line, from, strlen(from)) == 0;
        if (hit)
            from = NULL; /* the first such line only */
        if (!hit || (to && to[0] == '+'))
            len += (size_t)snprintf(out + len, sizeof(out) - len, "%s\n", line);
        if (hit && to)
            len += (size_t)snprintf(out + len, sizeof(out) - len, "%s\n", to[0] == '+' ? to + 1 : to);
    }
    assert_null(from); /* the line was there */
    unsigned char sum[32];
    size_t sl = 0;
    assert_true(EVP_Q_digest(NULL, "SHA256", NULL, out, len, sum, &sl));
    len += (size_t)snprintf(out + len, sizeof(out) - len, "check ");
    for (int i = 0; i < 8; i++)
        len += (size_t)snprintf(out + len, sizeof(out) - len, "%02x", sum[i]);
    len += (size_t)snprintf(out + len, sizeof(out) - len, "\n");
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(out, 1, len, f), len);
    fclose(f);
}

/* The identity lines (`# keystore`, `# made-for`): written and read back;
 * a second one, or one whose value is not hex, makes the file refused (it
 * decides which keystore the file serves); one of another length is an
 * ordinary comment; nothing after the checksum. */
static void test_registers_identity_lines(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-regid-XXXXXX", path[300];
    ks_registers r;
    ks_err err = KS_ERR_INIT;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/regs", dir);
    memset(&r, 0, sizeof(r));
    assert_int_equal(ks_mkey_generate(&r.current), KS_OK);
    r.has_owner = true;
    memset(r.owner, 0xa5, sizeof(r.owner));
    r.has_made_for = true;
    memset(r.made_for, 0x3c, sizeof(r.made_for));
    assert_int_equal(ks_reg_save(path, &r, &err), KS_OK);
    ks_registers back;
    assert_int_equal(ks_reg_load(path, 0600, &back, &err), KS_OK);
    assert_true(back.has_owner && back.has_made_for);
    assert_memory_equal(back.owner, r.owner, sizeof(r.owner));
    assert_memory_equal(back.made_for, r.made_for, sizeof(r.made_for));
    assert_memory_equal(back.current.key, r.current.key, KS_MK_LEN);
    ks_reg_clear(&back);

    const char *own = "# keystore a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";
    static const struct {
        const char *from, *to;
        int rc;
        bool owner;
    } cases[] = {
        {"# keystore ", NULL, KS_OK, false},                                          /* unbound */
        {"# keystore ", "+# keystore a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5", KS_EINVAL, 0}, /* twice */
        {"# keystore ", "+# keystore 00000000000000000000000000000000", KS_EINVAL, 0}, /* two owners */
        {"# made-for ", "+# made-for 3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c", KS_EINVAL, 0},
        {"# keystore ", "# keystore a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5zz", KS_EINVAL, 0}, /* not hex */
        {"# keystore ", "# keystore a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5 ", KS_OK, false}, /* a comment */
        {"# keystore ", "# keystore a5a5", KS_OK, false},
        {"# keystore ", "# keystore of the payments team", KS_OK, false},
        {"# keystore ", "#keystore a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5", KS_OK, false},
        {"# keystore ", "# keystore A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5", KS_OK, true}, /* upper case */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(ks_reg_save(path, &r, &err), KS_OK);
        edit_regs(path, cases[i].from, cases[i].to);
        memset(&back, 0, sizeof(back));
        err.msg[0] = 0;
        int rc = ks_reg_load(path, 0600, &back, &err);
        if (rc != cases[i].rc)
            fail_msg("case %zu (%s): %d, want %d (%s)", i, cases[i].to ? cases[i].to : "removed", rc, cases[i].rc,
                     err.msg);
        if (rc == KS_OK) {
            assert_int_equal(back.has_owner, cases[i].owner);
            if (cases[i].owner)
                assert_memory_equal(back.owner, r.owner, sizeof(r.owner));
            assert_memory_equal(back.current.key, r.current.key, KS_MK_LEN);
        } else {
            assert_non_null(strstr(err.msg, "damaged"));
        }
        ks_reg_clear(&back);
    }
    /* A line after the checksum, even a well-formed identity, is refused. */
    assert_int_equal(ks_reg_save(path, &r, &err), KS_OK);
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fprintf(f, "%s\n", own);
    fclose(f);
    assert_int_equal(ks_reg_load(path, 0600, &back, &err), KS_EINVAL);
    ks_reg_clear(&r);
    unlink(path);
    rmdir(dir);
}

/* A damaged data.mdb (a flipped bit on disk, a hostile writer, a file cut
 * short while mapped) makes LMDB read outside its map; reading it reports
 * damage (an error) instead of killing the process (keystore/ks_fault.h).
 * Each damaged copy is opened read-only and read through in a child, which
 * must exit, not die of a signal or hang; the whole damage must be noticed
 * (an error somewhere) when the file is cut short. Writes on a damaged file
 * are not covered (README: LMDB writes into pages whose header it trusts). */
enum { DMG_OBJS = 400 };

static int count_oid(uint64_t oid, void *arg)
{
    (void)oid;
    ++*(uint64_t *)arg;
    return 0;
}

/* 0: every read succeeded; 1: some read or the open reported an error. */
static int read_all(const char *ksdir, const ks_mkey *mk, uint32_t tid, const uint64_t *oids, int cut_to)
{
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    int errors = 0;
    if (ks_open(ksdir, mk, KS_OPEN_RDONLY, &st, &err) != KS_OK)
        return 1;
    if (cut_to > 0) { /* cut short while open and mapped */
        char data[400];
        snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
        if (truncate(data, cut_to) != 0)
            _exit(3);
    }
    for (int i = 0; i < DMG_OBJS; i++)
        errors |= read_obj(st, tid, oids[i]) != KS_OK;
    uint64_t n = 0, found = 0;
    ks_txn *t;
    if (ks_read_begin(st, &t) == KS_OK) { /* a walk of the objects' tree, and the index's */
        errors |= ks_obj_foreach(t, tid, count_oid, &n) != KS_OK || n != DMG_OBJS;
        errors |= ks_idx_lookup(t, tid, 3, "object-7", 8, count_oid, &found) != KS_OK;
        ks_read_end(t);
    } else {
        errors = 1;
    }
    ks_close(st);
    return errors;
}

/* Runs read_all in a child: its exit status (0 or 1), or -signal. */
typedef struct {
    const char *ksdir;
    const ks_mkey *mk;
    uint32_t tid;
    const uint64_t *oids;
    int cut_to;
    const char *kept;
} dmg_arg;

static int read_all_fn(void *p)
{
    dmg_arg *a = p;
    return read_all(a->ksdir, a->mk, a->tid, a->oids, a->cut_to);
}

static int read_all_child(const char *ksdir, const ks_mkey *mk, uint32_t tid, const uint64_t *oids, int cut_to)
{
    dmg_arg a = {ksdir, mk, tid, oids, cut_to, NULL};
    return in_child(read_all_fn, &a, 20);
}

/* Writes kept's bytes into data in place (the same inode, as a repair of
 * a file some process has mapped would); false on any failure. */
static bool bytes_back(const char *kept, const char *data)
{
    FILE *a = fopen(kept, "rb"), *b = fopen(data, "r+b");
    char buf[65536];
    size_t n;
    bool ok = a && b;
    while (ok && (n = fread(buf, 1, sizeof(buf), a)) > 0)
        ok = fwrite(buf, 1, n, b) == n;
    if (a)
        fclose(a);
    if (b && fclose(b) != 0)
        ok = false;
    return ok;
}

/* In a child: the file cut to nothing while open, 1,100 reads and a write
 * fail; the bytes put back, reads and writes work again in this process
 * (no reader slot kept by a failed start, no writer's lock left held). */
static int cut_then_back(const char *ksdir, const ks_mkey *mk, uint32_t tid, const uint64_t *oids, const char *kept)
{
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    char data[400];
    snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
    if (ks_open(ksdir, mk, 0, &st, &err) != KS_OK)
        return 2;
    if (truncate(data, 0) != 0)
        return 3;
    (void)ks_commit_seq(st); /* its reading of the meta pages faults, in a frame */
    for (int i = 0; i < 1100; i++)
        if (read_obj(st, tid, oids[i % DMG_OBJS]) == KS_OK)
            return 4;
    put_arg w = {tid, 0, "written while cut", false};
    if (ks_write(st, put_fn, &w) == KS_OK)
        return 5;
    if (!bytes_back(kept, data))
        return 6;
    for (int i = 0; i < 20; i++)
        if (read_obj(st, tid, oids[i]) != KS_OK)
            return 7;
    put_arg w2 = {tid, 0, "written after", false};
    if (ks_write(st, put_fn, &w2) != KS_OK)
        return 8;
    /* Cut to its meta pages and one more: a write's own walk faults (in the
     * write transaction, undone by its abort); back, it writes again. */
    if (truncate(data, 3 * 4096) != 0)
        return 3;
    put_arg w3 = {tid, 0, "written while cut to 3 pages", false};
    if (ks_write(st, put_fn, &w3) == KS_OK)
        return 9;
    if (!bytes_back(kept, data))
        return 6;
    put_arg w4 = {tid, 0, "written after the second cut", false};
    if (ks_write(st, put_fn, &w4) != KS_OK)
        return 10;
    ks_close(st);
    return 0;
}

static int cut_then_back_fn(void *p)
{
    dmg_arg *a = p;
    return cut_then_back(a->ksdir, a->mk, a->tid, a->oids, a->kept);
}

static void test_damaged_file_is_reported(void **state)
{
    (void)state;
#ifdef __SANITIZE_THREAD__
    /* Under TSan the forked reader of a file cut short dies of SIGBUS (the
     * frame does not get it; TSan's signal handling was not looked into):
     * covered by the other builds, ASan's included. */
    skip();
#endif
    char dir[] = "/tmp/p11mk-dmg-XXXXXX", ksdir[300], keep[300], data[320], kept[320];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey mk;
    static uint64_t oids[DMG_OBJS];
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    snprintf(keep, sizeof(keep), "%s/good.mdb", dir);
    snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
    snprintf(kept, sizeof(kept), "%s", keep);
    assert_int_equal(ks_mkey_from_passphrase("damage", 6, &mk), KS_OK);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    put_arg a = {0, 0, NULL, false};
    assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
    for (int i = 0; i < DMG_OBJS; i++) {
        char l[96];
        snprintf(l, sizeof(l), "object-%d with a label long enough to fill pages %040d", i, i);
        put_arg b = {a.tid, 0, l, false};
        assert_int_equal(ks_write(st, put_fn, &b), KS_OK);
        oids[i] = b.oid;
    }
    ks_close(st);
    copy_file(data, kept, 0600);
    struct stat sb;
    assert_int_equal(stat(kept, &sb), 0);
    off_t size = sb.st_size;
    assert_true(size >= 16 * 4096);

    assert_int_equal(read_all_child(ksdir, &mk, a.tid, oids, 0), 0); /* the good file reads through */
    /* Cut to half before it is opened, and to three pages while it is mapped. */
    assert_int_equal(truncate(data, size / 2), 0);
    assert_int_equal(read_all_child(ksdir, &mk, a.tid, oids, 0), 1);
    copy_file(kept, data, 0600);
    assert_int_equal(read_all_child(ksdir, &mk, a.tid, oids, 3 * 4096), 1);

    copy_file(kept, data, 0600);
    dmg_arg ca = {ksdir, &mk, a.tid, oids, 0, kept};
    assert_int_equal(in_child(cut_then_back_fn, &ca, 30), 0);

    /* Random damage, most of it in page headers, where it leads LMDB astray. */
    unsigned seed = 20261201, died = 0, reported = 0;
    int fd = -1;
    for (int round = 0; round < 300; round++) {
        copy_file(kept, data, 0600);
        fd = open(data, O_RDWR);
        assert_true(fd >= 0);
        int flips = 1 + (int)(rand_r(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            off_t page = (off_t)(rand_r(&seed) % (unsigned)(size / 4096)), at;
            if (page < 2)
                page = 2; /* the meta pages: LMDB checks those itself */
            at = page * 4096 + (rand_r(&seed) % 2 ? (off_t)(rand_r(&seed) % 64) : (off_t)(rand_r(&seed) % 4096));
            uint8_t byte = (uint8_t)rand_r(&seed);
            assert_int_equal(pwrite(fd, &byte, 1, at), 1);
        }
        close(fd);
        int r = read_all_child(ksdir, &mk, a.tid, oids, 0);
        if (r < 0) {
            died++;
            fprintf(stderr, "round %d: the reader died of signal %d\n", round, -r);
        }
        reported += r == 1;
    }
    fprintf(stderr, "300 damaged copies: %u reported damage, %u died\n", reported, died);
    assert_int_equal(died, 0);
    assert_true(reported > 0);
    rm_rf(dir);
}

/* One field of a page header or of a node edited (keystore/ks_lmdb_pages.h): before
 * the page checks, LMDB's copy of such a page for a write ran past its heap
 * block (glibc aborted: "double free or corruption"; ASan: an overflow in
 * memcpy). Each edit is made on a copy; in a child the store is opened for
 * writing and asked for what the module's writes do (an object created and
 * indexed, one replaced, one deleted with its index entries, a value
 * removed from and added to a key of many values, a value on overflow pages
 * replaced, then the token wiped). The child must end by itself; a write refused must be one
 * that verify reports the file damaged for, and a backup of that file
 * (whose compacting walk copies branch pages as a write does) must end by
 * itself too. */
enum { PG_OBJS = 400 };
typedef struct {
    const char *ksdir;
    const ks_mkey *mk;
    uint32_t tid;
    const uint64_t *oids;
    uint64_t big;
    int round;
    bool backup; /* pg_check_child: a backup too */
} pg_arg;

static int pg_write_fn(ks_txn *t, void *arg)
{
    pg_arg *a = arg;
    uint64_t oid, gone = a->oids[(a->round * 7) % PG_OBJS], kept = a->oids[(a->round * 11 + 1) % PG_OBJS];
    static uint8_t bigval[9000];
    char l[64];
    int rc = ks_obj_new_id(t, &oid);
    snprintf(l, sizeof(l), "written %d", a->round);
    if (rc == KS_OK)
        rc = ks_obj_create(t, a->tid, oid, (const uint8_t *)l, strlen(l));
    if (rc == KS_OK)
        rc = ks_idx_add(t, a->tid, 3, l, strlen(l), oid);
    if (rc == KS_OK)
        rc = ks_idx_add(t, a->tid, 0, "shared", 6, oid);
    if (rc == KS_OK)
        rc = ks_obj_put(t, a->tid, kept, (const uint8_t *)"replaced", 8);
    if (rc == KS_OK)
        rc = ks_obj_del(t, a->tid, gone);
    if (rc == KS_OK)
        rc = ks_idx_del(t, a->tid, 0, "shared", 6, gone);
    if (rc == KS_OK) {
        memset(bigval, a->round & 0xff, sizeof(bigval));
        rc = ks_obj_put(t, a->tid, a->big, bigval, sizeof(bigval) - (size_t)a->round % 3000);
    }
    return rc;
}

static int pg_wipe_fn(ks_txn *t, void *arg)
{
    pg_arg *a = arg;
    return ks_token_del(t, a->tid); /* every record of the token, in key order, in one transaction */
}

/* 0: the writes went through; 1: one was refused; 2: not opened. The
 * token's re-initialization comes last, in a transaction of its own. */
static int pg_write_child(void *p)
{
    pg_arg *a = p;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    if (ks_open(a->ksdir, a->mk, 0, &st, &err) != KS_OK)
        return 2;
    int rc = ks_write(st, pg_write_fn, a), wrc = ks_write(st, pg_wipe_fn, a);
    ks_close(st);
    return rc == KS_OK && wrc == KS_OK ? 0 : 1;
}

static void file_finding(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg)
{
    (void)token, (void)oid, (void)err, (void)what;
    if (kind == 'F')
        ++*(int *)arg;
}

static int pg_filler(ks_txn *t, void *arg)
{
    pg_arg *a = arg;
    static uint8_t bigval[9000];
    char l[96];
    int rc = KS_OK;
    if (!a->tid && ((rc = ks_token_new_id(t, &a->tid)) != KS_OK ||
                    (rc = ks_token_put(t, a->tid, (const uint8_t *)"token", 5)) != KS_OK))
        return rc;
    uint64_t *oids = (uint64_t *)a->oids;
    for (int i = 0; rc == KS_OK && i < PG_OBJS; i++) {
        snprintf(l, sizeof(l), "object-%d with a label long enough to fill pages %030d", i, i);
        if ((rc = ks_obj_new_id(t, &oids[i])) == KS_OK &&
            (rc = ks_obj_create(t, a->tid, oids[i], (const uint8_t *)l, strlen(l))) == KS_OK &&
            (rc = ks_idx_add(t, a->tid, 3, l, strlen(l), oids[i])) == KS_OK)
            rc = ks_idx_add(t, a->tid, 0, "shared", 6, oids[i]); /* one key, a tree of 400 values */
    }
    memset(bigval, 0x5a, sizeof(bigval));
    if (rc == KS_OK && (rc = ks_obj_new_id(t, &a->big)) == KS_OK)
        rc = ks_obj_create(t, a->tid, a->big, bigval, sizeof(bigval)); /* on overflow pages */
    return rc;
}

/* In a child (a fault there must not reach cmocka's handlers): bit 0 when
 * verify reports the file damaged (a finding about the file, or a read
 * that failed), bit 1 when a backup of it (with a->backup) was refused. */
static int pg_check_child(void *p)
{
    pg_arg *a = p;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    int found = 0, bits = 0;
    uint64_t checked = 0, failed = 0;
    char bak[400];
    if (ks_open(a->ksdir, a->mk, KS_OPEN_RDONLY, &st, &err) != KS_OK)
        return 3;
    if (ks_verify(st, file_finding, &found, &checked, &failed) != KS_OK || found)
        bits |= 1;
    if (a->backup) {
        snprintf(bak, sizeof(bak), "%s/../copy-%d.bak", a->ksdir, a->round);
        if (ks_backup(st, bak, NULL, &err) != KS_OK)
            bits |= 2;
        unlink(bak);
    }
    ks_close(st);
    return bits;
}

/* One edit of a page: a header field set to v, or (node, true) a field of
 * one of its nodes increased by v, or (node, PG_ADD) a header field
 * increased by v. */
enum { PG_ADD = 2 };
typedef struct {
    unsigned at;
    uint16_t v;
    int node;
} pg_edit;
static const pg_edit pg_edits[] = {
    {12, 0xfff0, false}, {14, 16, false}, {14, 4090, false}, {12, 3000, false}, /* lower, upper */
    {12, 16, false},     {12, 0xfffe, PG_ADD},                                  /* no node left, one fewer */
    {10, 0x01, false},   {10, 0x02, false},   {10, 0x12, false},                /* flags: branch, leaf, dirty leaf */
    {0, 7, false},       {16, 4094, false},                                     /* page number, a node pointer */
    {0, 200, true},      {0, 2, true},                                          /* a node's size grown over the next */
    {6, 2, true},        {4, 4, true},                                          /* its key size, F_DUPDATA */
};

/* Makes edit ed on page pg of data; false when the page has no node for a
 * node edit (an overflow page, a page of fixed-size values, a free one). */
static bool pg_edit_apply(const char *data, unsigned pg, const pg_edit *ed)
{
    uint8_t page[4096];
    uint16_t v = ed->v, lower, ptr, old;
    unsigned at = ed->at;
    int fd = open(data, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, page, sizeof(page), (off_t)pg * 4096), (ssize_t)sizeof(page));
    if (ed->node == true) {
        memcpy(&lower, page + 12, 2);
        unsigned n = lower >= 16 && lower <= 4096 ? (lower - 16u) / 2 : 0;
        if (!n || (page[10] & 0x20) || !(page[10] & 0x03)) {
            close(fd);
            return false;
        }
        memcpy(&ptr, page + 16 + 2 * (pg % n), 2);
        if (ptr < 16 || ptr > 4096 - 8) {
            close(fd);
            return false;
        }
        at = ptr + ed->at;
        memcpy(&old, page + at, 2);
        v = (uint16_t)(old + ed->v);
    } else if (ed->node == PG_ADD) {
        memcpy(&old, page + at, 2);
        v = (uint16_t)(old + ed->v);
    }
    assert_int_equal(pwrite(fd, &v, 2, (off_t)pg * 4096 + at), 2);
    close(fd);
    return true;
}

static void test_damaged_pages_refuse_writes(void **state)
{
    (void)state;
#ifdef __SANITIZE_THREAD__
    /* Some edits (a node's F_DUPDATA, edit 12) make a read fault before any
     * write, and under TSan the fault frame catches the first fault of a
     * process but not the second (as test_damaged_file_is_reported): the
     * child dies of SIGSEGV where the other builds report the damage.
     * Covered by the other builds, ASan's included; every write under TSan
     * runs the page checks. */
    skip();
#endif
    char dir[] = "/tmp/p11mk-pages-XXXXXX", ksdir[300], data[320], kept[320];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey mk;
    static uint64_t oids[PG_OBJS];
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
    snprintf(kept, sizeof(kept), "%s/good.mdb", dir);
    assert_int_equal(ks_mkey_from_passphrase("pages", 5, &mk), KS_OK);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    pg_arg a = {ksdir, &mk, 0, oids, 0, 0, false};
    assert_int_equal(ks_write(st, pg_filler, &a), KS_OK);
    ks_close(st);
    copy_file(data, kept, 0600);
    assert_int_equal(in_child(pg_write_child, &a, 20), 0); /* the undamaged file takes the writes */
    struct stat sb;
    assert_int_equal(stat(kept, &sb), 0);
    unsigned pages = (unsigned)(sb.st_size / 4096);
    int died = 0, refused = 0, unreported = 0, backups_refused = 0, backups = 0;
    /* Under ASan every other page (a fork costs ten times as much there;
     * the other builds take every page). */
    unsigned stride = 1;
#if defined(__SANITIZE_ADDRESS__)
    stride = 2;
#endif
    for (unsigned pg = 2; pg < pages; pg += stride) {
        a.backup = true; /* for the first refused write of each page */
        for (size_t e = 0; e < sizeof(pg_edits) / sizeof(pg_edits[0]); e++) {
            copy_file(kept, data, 0600);
            if (!pg_edit_apply(data, pg, &pg_edits[e]))
                continue;
            a.round = (int)(pg * 16 + e);
            int r = in_child(pg_write_child, &a, 20);
            if (r < 0) {
                died++;
                fprintf(stderr, "page %u, edit %zu: the writer died of signal %d\n", pg, e, -r);
                continue;
            }
            if (r != 1)
                continue;
            refused++;
            /* verify says why (the edit is put back in the file the child left) */
            copy_file(kept, data, 0600);
            assert_true(pg_edit_apply(data, pg, &pg_edits[e]));
            /* a backup reads the same pages (its compacting walk copies branch pages by their bounds) */
            int c = in_child(pg_check_child, &a, 20);
            if (c < 0) {
                died++;
                fprintf(stderr, "page %u, edit %zu: verify or the backup died of signal %d\n", pg, e, -c);
                continue;
            }
            if (!(c & 1)) {
                unreported++;
                fprintf(stderr, "page %u, edit %zu: a write refused, verify found the file sound\n", pg, e);
            }
            backups += a.backup;
            backups_refused += a.backup && (c & 2);
            a.backup = false;
        }
    }
    fprintf(stderr, "%u pages x %zu edits: %d writes refused, %d died, %d refused unreported, %d of %d backups refused\n",
            (pages - 2 + stride - 1) / stride, sizeof(pg_edits) / sizeof(pg_edits[0]), refused, died, unreported,
            backups_refused, backups);
    assert_int_equal(died, 0);
    assert_true(refused > 0);
    assert_int_equal(unreported, 0);
    assert_int_equal(backups_refused, backups); /* a damaged file is not copied */
    rm_rf(dir);
}

/* The token's records deleted in one transaction (0), refused (1). */
static int walk_wipe_child(void *p)
{
    pg_arg *a = p;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    if (ks_open(a->ksdir, a->mk, 0, &st, &err) != KS_OK)
        return 2;
    int rc = ks_write(st, pg_wipe_fn, a);
    ks_close(st);
    return rc == KS_OK ? 0 : 1;
}

/* The staged rotation's rewrap, whole (0), refused (1). */
static int walk_rewrap_child(void *p)
{
    pg_arg *a = p;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    if (ks_open(a->ksdir, a->mk, 0, &st, &err) != KS_OK)
        return 2;
    int rc = ks_rot_rewrap(st, 50, NULL, NULL, NULL, NULL, &err);
    ks_close(st);
    return rc == KS_OK ? 0 : 1;
}

/* Writes that walk a table with a cursor and change what it stands on: a
 * token's deletion (a search for the token's prefix, then key after key)
 * and a rotation's rewrap (each record replaced where the walk found it).
 * Every leaf of the objects table damaged in turn (its pointer array's end
 * past the page; its first node pointer at the page's end): each must be
 * refused. The deletion's checks covered the keys its search returned, not
 * the pages the search for the prefix read: the damaged first leaf sent it
 * into other bytes, and the delete copied that page into LMDB's heap (the
 * writer died of heap corruption) or the deletion ended there, reported
 * done (2 of 3 runs failed so before the fix). A rewrap's walk was refused
 * already: a record reached through a damaged page fails its
 * authentication or its leaf's check. */
static void test_damaged_walks_refuse_writes(void **state)
{
    (void)state;
#ifdef __SANITIZE_THREAD__
    skip(); /* a fault frame's second fault: see test_damaged_pages_refuse_writes */
#endif
    char dir[] = "/tmp/p11mk-walks-XXXXXX", ksdir[300], data[320], kept[320], keyfile[320];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey k1, k2;
    static uint64_t oids[PG_OBJS];
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
    snprintf(kept, sizeof(kept), "%s/good.mdb", dir);
    snprintf(keyfile, sizeof(keyfile), "%s/master.key", dir);
    assert_int_equal(ks_mkey_generate(&k1), KS_OK);
    assert_int_equal(ks_mkey_generate(&k2), KS_OK);
    save_regs(keyfile, &k1, NULL, NULL);
    ks_mkey mk = key_from_file(keyfile);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    pg_arg a = {ksdir, &mk, 0, oids, 0, 0, false};
    assert_int_equal(ks_write(st, pg_filler, &a), KS_OK);
    save_regs(keyfile, &k1, &k2, NULL);
    assert_int_equal(ks_rot_stage(st, &k2, 0, &err), KS_OK);
    ks_close(st);
    mk = key_from_file(keyfile); /* with the staged key */
    copy_file(data, kept, 0600);
    assert_int_equal(in_child(walk_rewrap_child, &a, 20), 0); /* the undamaged file: both go through */
    copy_file(kept, data, 0600);
    assert_int_equal(in_child(walk_wipe_child, &a, 20), 0);
    /* The objects table's leaves: a leaf whose first key is the token's
     * 4 bytes and an object id's 8 (big-endian). */
    struct stat sb;
    assert_int_equal(stat(kept, &sb), 0);
    int fd = open(kept, O_RDONLY);
    assert_true(fd >= 0);
    unsigned leaves = 0, died = 0, passed = 0;
    static const pg_edit edits[] = {{12, 0xfff0, false}, {16, 4094, false}, {12, 16, false}, {12, 0xfffe, PG_ADD}};
    for (unsigned pg = 2; pg < (unsigned)(sb.st_size / 4096); pg++) {
        uint8_t page[4096], tb[4] = {(uint8_t)(a.tid >> 24), (uint8_t)(a.tid >> 16), (uint8_t)(a.tid >> 8),
                                     (uint8_t)a.tid};
        uint16_t flags, lower, ptr, ksize;
        assert_int_equal(pread(fd, page, sizeof(page), (off_t)pg * 4096), (ssize_t)sizeof(page));
        memcpy(&flags, page + 10, 2);
        memcpy(&lower, page + 12, 2);
        memcpy(&ptr, page + 16, 2);
        if (flags != 0x02 || lower < 18 || ptr < 16 || ptr > 4096 - 8 - 12)
            continue;
        memcpy(&ksize, page + ptr + 6, 2);
        if (ksize != 12 || memcmp(page + ptr + 8, tb, 4) != 0)
            continue;
        leaves++;
        for (size_t e = 0; e < sizeof(edits) / sizeof(edits[0]); e++) {
            int (*const kids[])(void *) = {walk_wipe_child, walk_rewrap_child};
            for (size_t c = 0; c < 2; c++) {
                copy_file(kept, data, 0600);
                assert_true(pg_edit_apply(data, pg, &edits[e]));
                int r = in_child(kids[c], &a, 20);
                if (r < 0)
                    died++;
                else if (r == 0)
                    passed++;
                if (r <= 0)
                    fprintf(stderr, "page %u, edit %zu: the %s %s\n", pg, e, c ? "rewrap" : "token's deletion",
                            r < 0 ? "died" : "went through");
            }
        }
    }
    close(fd);
    fprintf(stderr, "%u leaves of objects x %zu edits x 2 walks: %u died, %u went through\n", leaves,
            sizeof(edits) / sizeof(edits[0]), died, passed);
    assert_true(leaves >= 10);
    assert_int_equal(died, 0);
    assert_int_equal(passed, 0);
    ks_mkey_clear(&k1);
    ks_mkey_clear(&k2);
    rm_rf(dir);
}

/* verify's finding in a child: 1 when it names the free-page lists (what
 * a write cannot see), 2 for another finding, 0 for none, 3: not opened. */
static void free_finding(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg)
{
    (void)token, (void)oid, (void)err;
    if (kind == 'F')
        *(int *)arg = strstr(what, "free-page lists") && strstr(what, "writes are not refused") ? 1 : 2;
}

static int free_verify_child(void *p)
{
    pg_arg *a = p;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    int found = 0;
    uint64_t checked = 0, failed = 0;
    if (ks_open(a->ksdir, a->mk, KS_OPEN_RDONLY, &st, &err) != KS_OK)
        return 3;
    int rc = ks_verify(st, free_finding, &found, &checked, &failed);
    ks_close(st);
    return rc == KS_OK ? found : 4;
}

/* The free-page table's first list of two or more pages in data (the newer
 * meta page's tree, one leaf): its offset in the file; *main_root: the main
 * table's root page. 0: none. */
static off_t free_list_at(const char *data, uint64_t *main_root)
{
    uint8_t pg[4096];
    uint64_t txn[2], best = 0, root;
    uint16_t depth, lower, ptr, ksize, flags, lo;
    int fd = open(data, O_RDONLY);
    assert_true(fd >= 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pread(fd, pg, sizeof(pg), (off_t)i * 4096), (ssize_t)sizeof(pg));
        memcpy(&txn[i], pg + 144, 8); /* MDB_meta: mm_txnid after the two MDB_db and mm_last_pg */
    }
    assert_int_equal(pread(fd, pg, sizeof(pg), txn[1] > txn[0] ? 4096 : 0), (ssize_t)sizeof(pg));
    memcpy(&depth, pg + 40 + 6, 2);  /* the free-page table's MDB_db: md_depth */
    memcpy(&root, pg + 40 + 40, 8);  /* md_root */
    memcpy(main_root, pg + 88 + 40, 8);
    if (depth != 1) {
        close(fd);
        return 0;
    }
    assert_int_equal(pread(fd, pg, sizeof(pg), (off_t)(root * 4096)), (ssize_t)sizeof(pg));
    close(fd);
    memcpy(&lower, pg + 12, 2);
    for (unsigned i = 0; i < (lower - 16u) / 2 && !best; i++) {
        memcpy(&ptr, pg + 16 + 2 * i, 2);
        memcpy(&lo, pg + ptr, 2);
        memcpy(&flags, pg + ptr + 4, 2);
        memcpy(&ksize, pg + ptr + 6, 2);
        uint64_t count;
        memcpy(&count, pg + ptr + 8 + ksize, 8);
        if (!(flags & 0x01) && lo >= 24 && count >= 2) /* inline (not F_BIGDATA): the count, then the pages */
            best = root * 4096 + ptr + 8 + ksize;
    }
    return (off_t)best;
}

/* A free-page list that names a page a table uses, or a page twice: LMDB
 * would hand that page to the next writer, which would write over a record
 * (or two writers the same page). A write cannot see it (it reads the
 * tables it changes, not all of them); verify reads every page and reports
 * it, saying that writes are not refused. An undamaged file: no finding. */
static void test_free_list_damage_is_reported(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-freel-XXXXXX", ksdir[300], data[320], kept[320];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey mk;
    static uint64_t oids[PG_OBJS];
    uint64_t main_root = 0, first, second;
    off_t at = 0;
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
    snprintf(kept, sizeof(kept), "%s/good.mdb", dir);
    assert_int_equal(ks_mkey_from_passphrase("freel", 5, &mk), KS_OK);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    pg_arg a = {ksdir, &mk, 0, oids, 0, 0, false};
    assert_int_equal(ks_write(st, pg_filler, &a), KS_OK);
    /* writes that free pages, until the last commit left a list of two or more */
    for (a.round = 1; a.round < 40 && !at; a.round++) {
        assert_int_equal(ks_write(st, pg_write_fn, &a), KS_OK);
        ks_close(st);
        at = free_list_at(data, &main_root);
        assert_int_equal(ks_open(ksdir, &mk, 0, &st, &err), KS_OK);
    }
    ks_close(st);
    assert_true(at > 0);
    assert_int_equal(in_child(free_verify_child, &a, 30), 0); /* sound: nothing to report */
    copy_file(data, kept, 0600);

    int fd = open(data, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &first, 8, at + 8), 8);
    assert_int_equal(pread(fd, &second, 8, at + 16), 8);
    assert_int_equal(pwrite(fd, &main_root, 8, at + 8), 8); /* names the main table's root */
    close(fd);
    assert_int_equal(in_child(free_verify_child, &a, 30), 1);

    copy_file(kept, data, 0600);
    fd = open(data, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, &first, 8, at + 16), 8); /* one page twice */
    close(fd);
    assert_int_equal(in_child(free_verify_child, &a, 30), 1);
    rm_rf(dir);
}

/* Many objects, in one transaction (busy_fill); then, in busy_writer,
 * one of them rewritten with its index entry per transaction, until killed. */
#define BUSY_OBJS 6000
static int busy_fill(ks_txn *t, void *arg)
{
    put_arg *a = arg;
    char l[128];
    int rc = put_fn(t, a);
    for (int i = 0; rc == KS_OK && i < BUSY_OBJS; i++) {
        snprintf(l, sizeof(l), "busy object %d, a label to take some room %040d", i, i);
        a->data = l;
        a->update = false;
        rc = put_fn(t, a);
    }
    a->data = NULL;
    return rc;
}

static void busy_writer(const char *ksdir, const ks_mkey *mk, uint32_t tid, uint64_t last)
{
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    char l[80];
    if (ks_open(ksdir, mk, 0, &st, &err) != KS_OK)
        _exit(2);
    for (unsigned n = 0;; n++) {
        snprintf(l, sizeof(l), "rewritten %u", n);
        put_arg a = {tid, last - n % BUSY_OBJS, l, true};
        if (ks_write(st, put_fn, &a) != KS_OK)
            _exit(3);
        if (n == 0) /* the first commit is in: the parent may start */
            kill(getppid(), SIGUSR2);
    }
}

static void busy_ready(int sig) { (void)sig; }

/* verify and backups read every page of a snapshot while other processes
 * commit. Their snapshot holds its tree's pages, not its meta page, which
 * the second commit after it writes again: the page checks read the meta
 * page once, at the start (a hostile tester saw backups and verify under
 * two writers report "a branch node naming a page outside the file": a
 * page count read from the snapshot's meta page, a root from a later
 * commit's). No finding, no backup refused, under a writer committing
 * without pause (on tmpfs when there is one: many commits per walk). */
static void test_page_checks_under_writers(void **state)
{
    (void)state;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    char dir[300], ksdir[320], bak[340];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey mk;
    snprintf(dir, sizeof(dir), "%s/p11mk-busy-XXXXXX", base);
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    assert_int_equal(ks_mkey_from_passphrase("busy", 4, &mk), KS_OK);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    put_arg a = {0};
    assert_int_equal(ks_write(st, busy_fill, &a), KS_OK);

    sigset_t usr2, old;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    struct sigaction sa = {.sa_handler = busy_ready}, osa;
    sigaction(SIGUSR2, &sa, &osa);
    sigprocmask(SIG_BLOCK, &usr2, &old);
    pid_t w = fork();
    assert_true(w >= 0);
    if (w == 0)
        busy_writer(ksdir, &mk, a.tid, a.oid);
    int sig = 0;
    sigwait(&usr2, &sig);
    sigprocmask(SIG_SETMASK, &old, NULL);
    sigaction(SIGUSR2, &osa, NULL);

    int found = 0, refused = 0, rounds = 20;
#if defined(__SANITIZE_ADDRESS__)
    rounds = 8; /* ten times slower there; the other builds take 20 */
#endif
    for (int i = 0; i < rounds; i++) {
        uint64_t checked = 0, failed = 0;
        int f = 0;
        assert_int_equal(ks_verify(st, file_finding, &f, &checked, &failed), KS_OK);
        found += f;
        snprintf(bak, sizeof(bak), "%s/copy-%d.bak", dir, i);
        int rc = ks_backup(st, bak, NULL, &err);
        if (rc != KS_OK) {
            refused++;
            fprintf(stderr, "backup %d refused: %s\n", i, err.msg);
        }
        unlink(bak);
    }
    int status = 0;
    bool writer_alive = waitpid(w, &status, WNOHANG) == 0;
    kill(w, SIGKILL);
    waitpid(w, NULL, 0);
    ks_close(st);
    fprintf(stderr, "%d verify runs and backups under a writer: %d findings, %d backups refused\n", rounds, found,
            refused);
    assert_true(writer_alive); /* it wrote all along */
    assert_int_equal(found, 0);
    assert_int_equal(refused, 0);
    rm_rf(dir);
}

static int export_child(void *p)
{
    pg_arg *a = p;
    ks_store *st = NULL;
    ks_err err = KS_ERR_INIT;
    char out[400];
    snprintf(out, sizeof(out), "%s/../export-%d.mdb", a->ksdir, a->round);
    if (ks_open(a->ksdir, a->mk, 0, &st, &err) != KS_OK)
        return 2;
    int rc = ks_export_default(st, out, &err);
    ks_close(st);
    return rc == KS_OK ? 0 : 1;
}

/* An export reseals a scratch copy of the keystore under the built-in
 * default key. Killed at any point, it must leave nothing in the keystore's
 * directory that the default key opens (a copy of the directory, taken
 * without the key file, would then give the public objects to anyone: a
 * hostile tester found export.tmp left so). Exports of 6,000 objects are
 * killed after 1 to 120 ms; what is left is opened with the default key. */
static void test_killed_export_leaves_no_default_copy(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-expk-XXXXXX", ksdir[300], left[320], side[340], cmd[1400];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey mk, dk;
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    snprintf(left, sizeof(left), "%s/export.tmp", ksdir);
    snprintf(side, sizeof(side), "%s/side", dir);
    assert_int_equal(ks_mkey_generate(&mk), KS_OK);
    ks_mkey_default(&dk);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    put_arg a = {0};
    assert_int_equal(ks_write(st, busy_fill, &a), KS_OK);
    ks_close(st);
    pg_arg ea = {ksdir, &mk, 0, NULL, 0, 0, false};
    assert_int_equal(in_child(export_child, &ea, 60), 0); /* a whole export works */
    int leftovers = 0, opened = 0, rounds = 24;
#if defined(__SANITIZE_ADDRESS__)
    rounds = 8; /* ten times slower there; the other builds take 24 */
#endif
    for (int r = 1; r <= rounds; r++) {
        ea.round = r;
        pid_t c = fork();
        assert_true(c >= 0);
        if (c == 0)
            _exit(export_child(&ea));
        usleep((useconds_t)(1000 + (r * 5000) % 120000));
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
        struct stat sb;
        if (stat(left, &sb) != 0)
            continue;
        leftovers++;
        rm_rf(side);
        snprintf(cmd, sizeof(cmd), "cp -r '%s' '%s' && rm -f '%s/lock.mdb' '%s/users.lock'", left, side, side, side);
        assert_int_equal(system(cmd), 0);
        ks_store *cp = NULL;
        if (ks_open(side, &dk, KS_OPEN_COPY, &cp, &err) == KS_OK) {
            opened++;
            fprintf(stderr, "round %d: the export's leftover opens with the default key\n", r);
            ks_close(cp);
        }
    }
    fprintf(stderr, "%d exports killed: %d left a scratch copy, %d of those opened with the default key\n", rounds,
            leftovers, opened);
    assert_int_equal(opened, 0);
    ks_mkey_clear(&mk);
    ks_mkey_clear(&dk);
    rm_rf(dir);
}

/* A reader's snapshot whose meta page a later commit already rewrote (its
 * reader held up while two or more commits ran, the file grown past this
 * process's map meanwhile: a hostile tester stopped verify there and got
 * "a meta page naming more pages than are mapped" on a sound keystore):
 * not damage, a new snapshot (v.moved). A write transaction's view reads
 * the meta page as it is (LMDB's writer lock keeps it). */
static void put_meta(uint8_t *map, unsigned pg, uint64_t txnid, uint64_t last)
{
    uint8_t *m = map + pg * 4096;
    uint64_t pgno = pg;
    uint16_t flags = 0x08; /* P_META */
    uint32_t magic = 0xBEEFC0DEu, version = 1;
    memset(m, 0, 4096);
    memcpy(m, &pgno, 8);
    memcpy(m + 10, &flags, 2);
    memcpy(m + 16, &magic, 4);
    memcpy(m + 20, &version, 4);
    memcpy(m + 136, &last, 8);
    memcpy(m + 144, &txnid, 8);
}

static void test_snapshot_meta_moved(void **state)
{
    (void)state;
    static uint8_t map[4 * 4096];
    lp_view v;
    put_meta(map, 0, 4, 2);
    put_meta(map, 1, 5, 3);
    assert_true(lp_view_init(&v, map, sizeof(map), 4096, 6, true)); /* snapshot 5: its own meta page */
    assert_int_equal(v.npages, 4);
    put_meta(map, 1, 7, 9); /* commits 6 and 7 ran: page 1 is 7's, naming pages past the map */
    assert_false(lp_view_init(&v, map, sizeof(map), 4096, 6, true));
    assert_true(v.moved);
    put_meta(map, 1, 7, 3);
    assert_true(lp_view_init(&v, map, sizeof(map), 4096, 8, false)); /* a write transaction after 7 */
    assert_false(v.moved);
}

/* A file whose page count LMDB's compacting copy does not expect (a page
 * leak: the meta pages name 3 pages more than the trees and the free list
 * hold) still backs up: copied as it is, every record opens in the copy. */
/* A file LMDB made in an environment opened with MDB_NOSUBDIR (mdb_copy -n,
 * mdb_load -n) keeps that flag in the free-page table's record: LMDB's own
 * copy, not damage (a hostile tester: writes were refused, verify exit 5). */
/* The reader table: a read left open while commits go on is named, with its
 * process and how far behind it is (status tells the admin: a process
 * stopped inside a read makes the file grow with every write; a hostile
 * tester saw 10 MB become 88 MB over 15 rotations). */
static void test_readers_name_the_oldest(void **state)
{
    fx *f = *state;
    ks_readers_info ri;
    ks_txn *t;
    put_arg a = {0, 0, "pinned", false};

    assert_int_equal(ks_write(f->st, put_fn, &a), KS_OK);
    assert_int_equal(ks_readers(f->st, &ri), KS_OK);
    assert_int_equal(ri.oldest_behind, 0);
    assert_int_equal(ks_read_begin(f->st, &t), KS_OK);
    for (int i = 0; i < 12; i++) {
        put_arg b = {a.tid, 0, "later", false};
        assert_int_equal(ks_write(f->st, put_fn, &b), KS_OK);
    }
    assert_int_equal(ks_readers(f->st, &ri), KS_OK);
    assert_true(ri.active >= 1);
    assert_int_equal(ri.oldest_pid, (long)getpid());
    assert_true(ri.oldest_behind >= 12);
    ks_read_end(t);
    assert_int_equal(ks_readers(f->st, &ri), KS_OK);
    assert_int_equal(ri.active, 0);
    assert_int_equal(ri.oldest_behind, 0);
}

static void test_nosubdir_copy_is_sound(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-nosubdir-XXXXXX", ksdir[300], data[320];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey mk;
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
    assert_int_equal(ks_mkey_from_passphrase("nosubdir", 8, &mk), KS_OK);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    put_arg a = {0, 0, "before", false};
    assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
    ks_close(st);
    int fd = open(data, O_RDWR);
    assert_true(fd >= 0);
    for (int m = 0; m < 2; m++) { /* both meta pages: md_flags of the free-page table, at 44 */
        uint16_t f;
        assert_int_equal(pread(fd, &f, 2, (off_t)m * 4096 + 44), 2);
        assert_int_equal(f, 0x08);
        f |= 0x4000;
        assert_int_equal(pwrite(fd, &f, 2, (off_t)m * 4096 + 44), 2);
    }
    close(fd);
    assert_int_equal(ks_open(ksdir, &mk, 0, &st, &err), KS_OK);
    put_arg b = {a.tid, 0, "after", false};
    assert_int_equal(ks_write(st, put_fn, &b), KS_OK);
    assert_int_equal(read_obj(st, a.tid, a.oid), KS_OK);
    assert_int_equal(read_obj(st, b.tid, b.oid), KS_OK);
    ks_close(st);
    rm_rf(dir);
}

static void test_backup_of_leaky_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/p11mk-leak-XXXXXX", ksdir[300], data[320], bak[320], back[320];
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey mk;
    assert_non_null(mkdtemp(dir));
    snprintf(ksdir, sizeof(ksdir), "%s/ks", dir);
    snprintf(data, sizeof(data), "%s/data.mdb", ksdir);
    snprintf(bak, sizeof(bak), "%s/copy.bak", dir);
    snprintf(back, sizeof(back), "%s/back", dir);
    assert_int_equal(ks_mkey_generate(&mk), KS_OK);
    assert_int_equal(ks_open(ksdir, &mk, KS_OPEN_CREATE, &st, &err), KS_OK);
    put_arg a = {0, 0, "leaky", false};
    assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
    ks_close(st);
    int fd = open(data, O_RDWR);
    assert_true(fd >= 0);
    for (off_t meta = 0; meta < 2; meta++) { /* mm_last_pg of both meta pages, 3 more */
        uint64_t last;
        assert_int_equal(pread(fd, &last, 8, meta * 4096 + 136), 8);
        last += 3;
        assert_int_equal(pwrite(fd, &last, 8, meta * 4096 + 136), 8);
    }
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    assert_int_equal(ftruncate(fd, sb.st_size + 3 * 4096), 0);
    close(fd);
    assert_int_equal(ks_open(ksdir, &mk, 0, &st, &err), KS_OK);
    ks_info info;
    err.msg[0] = 0;
    if (ks_backup(st, bak, &info, &err) != KS_OK)
        fail_msg("backup: %s", err.msg);
    ks_close(st);
    /* The copy opens, and holds the object. */
    assert_int_equal(mkdir(back, 0700), 0);
    char to[340];
    snprintf(to, sizeof(to), "%s/data.mdb", back);
    copy_file(bak, to, 0600);
    assert_int_equal(ks_open(back, &mk, KS_OPEN_RDONLY, &st, &err), KS_OK);
    assert_int_equal(read_obj(st, a.tid, a.oid), KS_OK);
    ks_close(st);
    rm_rf(dir);
}

/* Memory for secrets: every size from the pool's classes and past them
 * (pages of their own), 16-byte aligned, zeroed, writable to the last byte,
 * excluded from dumps (/proc/self/smaps "dd" flag), reused after free, from
 * several threads at once, and usable in a fork child. */
static bool in_dontdump_vma(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    uintptr_t a = (uintptr_t)p, lo = 0, hi = 0;
    bool in = false, dd = false;
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long x, y;
        if (sscanf(line, "%lx-%lx ", &x, &y) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            lo = x;
            hi = y;
            in = a >= lo && a < hi;
        } else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            dd = strstr(line, " dd") != NULL;
            break;
        }
    }
    if (f)
        fclose(f);
    return dd;
}

static void *secmem_worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    void *held[64] = {0};
    for (int i = 0; i < 20000; i++) {
        int k = (int)(rand_r(&seed) % 64);
        if (held[k]) {
            assert_int_equal(((uint8_t *)held[k])[0], (uint8_t)k);
            ks_secmem_free(held[k]);
            held[k] = NULL;
        } else {
            size_t n = 1 + rand_r(&seed) % 3000;
            held[k] = ks_secmem_alloc(n);
            assert_non_null(held[k]);
            memset(held[k], k, n);
        }
    }
    for (int k = 0; k < 64; k++)
        ks_secmem_free(held[k]);
    return NULL;
}

static void test_secmem(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 31, 32, 33, 64, 100, 256, 1000, 2048, 2049, 4096, 70000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
        uint8_t *p = ks_secmem_alloc(sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        for (size_t j = 0; j < sizes[i]; j++)
            assert_int_equal(p[j], 0);
        memset(p, 0xa5, sizes[i]);
        assert_true(in_dontdump_vma(p));
        ks_secmem_free(p);
    }
    uint8_t *a = ks_secmem_alloc(40);
    memset(a, 0x5a, 40);
    ks_secmem_free(a);
    uint8_t *b = ks_secmem_alloc(40); /* the slot just freed, cleansed */
    assert_ptr_equal(a, b);
    for (int j = 0; j < 40; j++)
        assert_int_equal(b[j], 0);
    ks_secmem_free(b);
    ks_secmem_free(NULL);

    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, secmem_worker, (void *)(i + 1)), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);

    uint8_t *held = ks_secmem_alloc(100);
    memset(held, 7, 100);
    pid_t pid = fork();
    if (pid == 0) {
        uint8_t *c = ks_secmem_alloc(100);
        int ok = c && held[99] == 7 && in_dontdump_vma(held);
        ks_secmem_free(c);
        ks_secmem_free(held);
        _exit(ok ? 0 : 1);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ks_secmem_free(held);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_roundtrip_and_binding),
        cmocka_unit_test_setup_teardown(test_index_mac_reuse, setup, teardown),
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
        cmocka_unit_test(test_backup_while_map_grows),
        cmocka_unit_test_setup_teardown(test_fork_child_reopens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_gate, setup, teardown),
        cmocka_unit_test(test_registers_file),
        cmocka_unit_test(test_registers_identity_lines),
        cmocka_unit_test(test_damaged_file_is_reported),
        cmocka_unit_test(test_damaged_pages_refuse_writes),
        cmocka_unit_test(test_damaged_walks_refuse_writes),
        cmocka_unit_test(test_nosubdir_copy_is_sound),
        cmocka_unit_test_setup_teardown(test_readers_name_the_oldest, setup, teardown),
        cmocka_unit_test(test_free_list_damage_is_reported),
        cmocka_unit_test(test_page_checks_under_writers),
        cmocka_unit_test(test_snapshot_meta_moved),
        cmocka_unit_test(test_killed_export_leaves_no_default_copy),
        cmocka_unit_test(test_backup_of_leaky_file),
        cmocka_unit_test(test_secmem),
        cmocka_unit_test_setup_teardown(test_rotation_cycle, rot_setup, rot_teardown),
        cmocka_unit_test_setup_teardown(test_rotation_abort, rot_setup, rot_teardown),
        cmocka_unit_test_setup_teardown(test_rotation_big_values, rot_setup, rot_teardown),
        cmocka_unit_test_setup_teardown(test_rotation_with_concurrent_process, rot_setup, rot_teardown),
        cmocka_unit_test_setup_teardown(test_rotation_crash_resume, rot_setup, rot_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
